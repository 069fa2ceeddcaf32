"""torchrun / DistributedDataParallel on the CPU (gloo): 2 processes train what 1 process trains, a killed
2-process run resumes on any number of processes, and a batch that does not split evenly is refused."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddpm_tutor import cli, distributed
from ddpm_tutor.checkpoint import load_checkpoint

STEPS = 60  # long enough that the run is still going when the test kills it after its first checkpoint (step 10)
TINY = ["toy2d", "--dataset", "8gaussians", "--n-data", "256", "--hidden", "16", "--T", "50", "--batch-size", "16"]
RUN = [*TINY, "--steps", str(STEPS), "--checkpoint-every", "10", "--log-every", "5", "--quiet", "--device", "cpu"]


def torchrun(*argv, wait=True):
    """`torchrun --nproc_per_node=2 --standalone -m ddpm_tutor train *argv`, in a process group of its own."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "ddpm_tutor"]
    proc = subprocess.Popen(
        [*cmd, "train", *map(str, argv)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if wait:
        proc.out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    return proc


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux: /proc/<pid>/task/<tid>/children)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in map(int, (task / "children").read_text().split()):
                found += [child, *_descendants(child)]
    return found


def assert_same_run(ckpt, ref, exact=False):
    """The run in ``ckpt`` ended where the run in ``ref`` did: step, losses, weights and EMA weights."""
    got, want = load_checkpoint(ckpt), load_checkpoint(ref)
    assert got["step"] == want["step"] == STEPS
    close = dict(atol=0, rtol=0) if exact else dict(atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(want["losses"]), **close)
    for part in ("model", "ema"):
        assert got[part].keys() == want[part].keys()
        for name, value in want[part].items():
            torch.testing.assert_close(got[part][name], value, **close, msg=f"{part} {name}")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    with torch.random.fork_rng():
        assert cli.main(["train", *RUN, "--out", str(out)]) == 0
    return out / "checkpoint.pt"


def test_two_processes_killed_and_resumed_train_what_one_process_trains(one_process, tmp_path):
    """Each of 2 processes takes half of every global batch and DDP averages the halves' gradients: the gradient
    of the whole batch, up to float rounding. Killed (SIGKILL of torchrun and its workers) after its first
    checkpoint and resumed with --resume, on 2 processes or on 1, the run ends where one uninterrupted process
    does (a resume that lost any state, the generator's say, would be far off: the tolerance is 1e-5)."""
    out = tmp_path / "two"
    ckpt = out / "checkpoint.pt"
    proc = torchrun(*RUN, "--out", out, wait=False)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists():  # write_atomic renames a complete file into place
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.01)
        # the launcher and both workers at once: torchrun starts its workers in sessions of their own, out of
        # reach of a signal to the launcher's process group, so each process is named
        for pid in [proc.pid, *_descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert 0 < load_checkpoint(ckpt)["step"] < STEPS  # killed mid-run: the resumes have steps left to do
    shutil.copytree(out, tmp_path / "one")

    resumed = torchrun("toy2d", "--resume", "--log-every", "5", "--quiet", "--out", out)
    assert "on 2 process(es) over gloo, each on cpu" in resumed.out  # DDP's process group, on the CPU
    assert_same_run(ckpt, one_process)
    # one log line per log point: those the killed run wrote past its checkpoint were dropped on resuming
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(5, STEPS + 1, 5))

    with torch.random.fork_rng():  # the same checkpoint resumed by one process
        assert cli.main(["train", "toy2d", "--resume", "--quiet", "--out", str(tmp_path / "one")]) == 0
    assert_same_run(tmp_path / "one" / "checkpoint.pt", one_process)


def test_a_batch_that_does_not_split_evenly_is_refused(tmp_path, monkeypatch, capsys):
    """Under torchrun (its environment) --batch-size must split into equal shares: a usage error, exit 2, before
    the process joins the group (so the test needs no second process) and before anything is written."""
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        cli.main(
            ["train", *TINY, "--batch-size", "15", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "r")]
        )
    assert info.value.code == 2
    assert "batch_size 15 must be divisible by the number of processes 2" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_each_process_takes_its_own_contiguous_share():
    shares = [distributed.share(12, distributed.World(rank, 3)) for rank in range(3)]
    assert [list(range(12))[s] for s in shares] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert distributed.share(12, distributed.World()) == slice(0, 12)
    with pytest.raises(ValueError, match="batch_size 10 must be divisible by the number of processes 4"):
        distributed.share(10, distributed.World(0, 4))


def test_torchrun_environment_is_read_and_checked():
    assert distributed.world_from_env({}) == distributed.World(0, 1, 0)
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}
    assert distributed.world_from_env(env) == distributed.World(3, 4, 1, launched=True)
    # torchrun with one process: it still joins a process group (the code path of N processes)
    assert distributed.world_from_env({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}).launched
    with pytest.raises(ValueError, match="inconsistent: WORLD_SIZE=2, RANK=2"):
        distributed.world_from_env({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        distributed.world_from_env({"WORLD_SIZE": "two"})
