"""The command line refuses what it cannot do as asked, in one line with exit status 2 (issue 13): bad values,
options that do not apply, and a --resume that would not continue the saved run. Each test fails on the code
before: there the same command line ran anyway, or ended in a traceback, or exited with status 1."""

import subprocess
import sys

import pytest
import torch

from ddpm_tutor import cli
from ddpm_tutor.checkpoint import load_checkpoint
from ddpm_tutor.data import images
from ddpm_tutor.models import MLPDenoiser
from ddpm_tutor.schedules import Schedule
from ddpm_tutor.train import TrainConfig, Trainer

# a tiny 2-D run: well under a second per step count here
TINY = ["toy2d", "--dataset", "8gaussians", "--n-data", "64", "--hidden", "8", "--T", "10", "--quiet"]


def main(*argv):
    """`python -m ddpm_tutor *argv` in this process, the global random state left as it was."""
    with torch.random.fork_rng():
        return cli.main([str(a) for a in argv])


def refused(*argv) -> str:
    """The message of a command line that must be refused with exit status 2 (what argparse gives)."""
    with pytest.raises(SystemExit) as info:
        main(*argv)
    assert info.value.code == 2, info.value
    return str(info.value)


def fake_mnist(train=True):
    """16 random "digits" in place of MNIST: offline, and fast enough for old code that went on to train."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(16, 1, 28, 28, generator=g) * 2 - 1, torch.arange(16) % 10


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "run"
    assert main("train", *TINY, "--steps", "3", "--device", "cpu", "--out", out) == 0
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def unet_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("unet") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(images, "load_mnist", fake_mnist)
        argv = ["train", "mnist", "--n-data", "16", "--steps", "1", "--batch-size", "2", "--T", "10", "--quiet"]
        assert main(*argv, "--device", "cpu", "--out", out) == 0
    return out / "checkpoint.pt"


@pytest.fixture
def mnist(monkeypatch):
    monkeypatch.setattr(images, "load_mnist", fake_mnist)


BAD_VALUES = [  # (flags, the message's start); CKPT stands for a 2-D checkpoint
    (["train", *TINY, "--steps", "0"], "argument --steps: must be an integer >= 1, got '0'"),
    (["train", *TINY, "--lr", "nan"], "argument --lr: must be a finite number > 0, got 'nan'"),
    (["train", *TINY, "--lr", "-1"], "argument --lr: must be a finite number > 0"),
    (["train", *TINY, "--checkpoint-every", "-5"], "argument --checkpoint-every: must be an integer >= 0"),
    (["train", *TINY, "--warmup", "-3"], "argument --warmup: must be an integer >= 0"),
    (["train", *TINY, "--hidden", "0"], "argument --hidden: must be an integer >= 1"),
    (["train", *TINY, "--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    (["train", *TINY, "--ema-decay", "1.5"], "argument --ema-decay: must be a number in [0, 1)"),
    (["train", *TINY, "--T", "0"], "argument --T: must be an integer >= 1"),
    (["train", *TINY, "--p-small-t", "1"], "argument --p-small-t: must be a number in [0, 1)"),
    (["train", *TINY, "--small-t-frac", "0"], "argument --small-t-frac: must be a number in (0, 1]"),
    (["train", *TINY, "--n-data", "0"], "argument --n-data: must be an integer >= 1"),
    (["train", *TINY, "--min-snr-gamma", "0"], "argument --min-snr-gamma: must be a number > 0 (inf allowed)"),
    (["train", *TINY, "--device", "cuda:99"], "argument --device: this machine has no device 'cuda:99'"),
    (["train", *TINY, "--device", "gpu"], "argument --device: this machine has no device 'gpu'"),
    (["sample", "--checkpoint", "CKPT", "--n", "-5"], "argument --n: must be an integer >= 1, got '-5'"),
    (
        ["sample", "--checkpoint", "CKPT", "--sampler", "ddim", "--eta", "2"],
        "argument --eta: must be a number in [0, 1]",
    ),
    (["sample", "--checkpoint", "CKPT", "--guidance", "-1"], "argument --guidance: must be a finite number >= 0"),
    (["sample", "--checkpoint", "missing.pt"], "--checkpoint: no checkpoint at missing.pt"),
    (["evaluate", "--checkpoint", "CKPT", "--n", "-5"], "argument --n: must be an integer >= 1"),
    (["evaluate", "--checkpoint", "CKPT", "--n-terms", "0"], "argument --n-terms: must be an integer >= 1"),
    (["evaluate", "--checkpoint", "CKPT", "--sampler", "ddim", "--steps", "11"], "--steps must be in 1..10"),
]


def _ids(cases):
    return [" ".join([a[0], *a[-2:]]) for a, _ in cases]


@pytest.mark.parametrize("argv, message", BAD_VALUES, ids=_ids(BAD_VALUES))
def test_bad_values_are_usage_errors(toy_ckpt, tmp_path, capsys, argv, message):
    # small enough that the code before, which ran some of these, ended soon; given first, so argv's flags win
    small = {"train": ["--out", tmp_path / "run"], "sample": ["--out", tmp_path / "s.npy"]}
    small["evaluate"] = ["--n", "100", "--sets", "1", "--references", "1"]
    argv = [str(toy_ckpt) if a == "CKPT" else a for a in argv]
    text = refused(argv[0], *small[argv[0]], *argv[1:])
    assert f"error: {message}" in text
    assert f"error: {message}" in capsys.readouterr().err  # what a user sees, after the usage line
    assert list(tmp_path.iterdir()) == []


def test_a_usage_error_is_one_line_and_status_2_in_a_fresh_process(tmp_path):
    for flags in (["--lr", "nan"], ["--device", "cuda:99"]):
        r = subprocess.run(
            [sys.executable, "-m", "ddpm_tutor", "train", *TINY, "--steps", "3", *flags],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.splitlines()[-1].startswith(f"python -m ddpm_tutor train: error: argument {flags[0]}: ")
    assert list(tmp_path.iterdir()) == []


NOT_APPLICABLE = [  # (flags, what the message says); CKPT / UNET stand for a 2-D / an image checkpoint
    (["train", *TINY, "--conditional"], "--conditional does not apply to toy2d"),
    (["train", *TINY, "--min-snr-gamma", "3"], "--min-snr-gamma does not apply to --weighting simple"),
    (["train", "mnist", "--dataset", "moons"], "--dataset does not apply to mnist"),
    (["train", "mnist", "--hidden", "8"], "--hidden does not apply to mnist"),
    (["sample", "--checkpoint", "CKPT", "--steps", "5"], "--steps does not apply to --sampler ddpm (the default"),
    (["sample", "--checkpoint", "CKPT", "--sampler", "ddpm", "--eta", "0.5"], "--eta does not apply to --sampler ddpm"),
    (["sample", "--checkpoint", "CKPT", "--sampler", "ddim", "--var-type", "fixed_large"], "--var-type does not"),
    (["sample", "--checkpoint", "CKPT", "--guidance", "0"], "--guidance needs a class-conditional model"),
    (["evaluate", "--checkpoint", "CKPT", "--n-terms", "3"], "--n-terms does not apply to a 2-D model"),
    (["evaluate", "--checkpoint", "UNET", "--sampler", "ddim"], "--sampler does not apply to an image model"),
    (["evaluate", "--checkpoint", "UNET", "--sets", "2"], "--sets does not apply to an image model"),
    (["evaluate", "--checkpoint", "UNET", "--n-terms", "11"], "--n-terms must be in 2..10"),
]


@pytest.mark.parametrize("argv, message", NOT_APPLICABLE, ids=_ids(NOT_APPLICABLE))
def test_options_that_do_not_apply_are_refused(toy_ckpt, unet_ckpt, mnist, tmp_path, argv, message):
    # small enough that the code before, which ran these, ended soon
    small = {
        "train": ["--steps", "1", "--batch-size", "2", "--n-data", "16", "--T", "10", "--out", tmp_path / "r"],
        "sample": ["--out", tmp_path / "s.npy"],
        "evaluate": ["--n", "16", *(["--sets", "1", "--references", "1"] if "CKPT" in argv else [])],
    }
    argv = [{"CKPT": str(toy_ckpt), "UNET": str(unet_ckpt)}.get(a, a) for a in argv]
    assert message in refused(argv[0], *small[argv[0]], *argv[1:])
    assert list(tmp_path.iterdir()) == []


# --- --resume ---------------------------------------------------------------------------------------------------
def _stopped_run(out, monkeypatch, *flags):
    """A run of 6 steps stopped (Ctrl-C) after the checkpoint at step 3."""
    real = Trainer.train_step

    def stop_at_3(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", stop_at_3)
    with pytest.raises(KeyboardInterrupt):
        main("train", *TINY, *flags, "--steps", "6", "--checkpoint-every", "3", "--device", "cpu", "--out", out)
    monkeypatch.setattr(Trainer, "train_step", real)
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    return out / "checkpoint.pt"


def test_resume_continues_a_stopped_run_with_its_own_settings(tmp_path, monkeypatch, capsys):
    flags = ["--lr", "0.01", "--batch-size", "16", "--seed", "3"]
    assert main("train", *TINY, *flags, "--steps", "6", "--device", "cpu", "--out", tmp_path / "straight") == 0
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    for resume in (["toy2d"], ["toy2d", *TINY[1:], *flags, "--steps", "6"]):  # all left out; all given again
        out = tmp_path / f"resumed{len(resume)}"
        ckpt = _stopped_run(out, monkeypatch, *flags)
        assert main("train", *resume, "--quiet", "--device", "cpu", "--out", out, "--resume") == 0
        resumed = load_checkpoint(ckpt)
        assert resumed["step"] == 6 and resumed["losses"] == straight["losses"]
        assert resumed["train_config"] == straight["train_config"]  # what it was trained with, lr 0.01 included
        assert resumed["model_spec"] == straight["model_spec"]
        for name, ref in straight["model"].items():
            assert torch.equal(resumed["model"][name], ref), name
    # a finished run has nothing left to do, and its checkpoint stays as it is
    before = ckpt.read_bytes()
    assert main("train", "toy2d", "--quiet", "--out", out, "--resume") == 0
    assert "has run all its 6 steps: nothing to do" in capsys.readouterr().out
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize(
    "flags, listed",
    [
        # the saved values are the recipe's (TrainConfig.toy2d), which the stopped run used
        (["--lr", "0.01"], f"--lr {TrainConfig.toy2d().lr} (saved) vs 0.01 (asked)"),
        (["--batch-size", "8"], f"--batch-size {TrainConfig.toy2d().batch_size} (saved) vs 8 (asked)"),
        (["--dataset", "moons"], "--dataset 8gaussians (saved) vs moons (asked)"),
        (["--dataset", "moons", "--seed", "1"], "--dataset 8gaussians (saved) vs moons (asked), --seed 0 (saved) vs 1"),
        (["--n-data", "65"], "--n-data 64 (saved) vs 65 (asked)"),
        (["--weighting", "min_snr"], "--weighting simple (saved) vs min_snr (asked)"),
        (["--steps", "12"], "--steps 6 (saved) vs 12 (asked)"),
        (["--p-small-t", "0.3"], "--p-small-t 0.0 (saved) vs 0.3 (asked)"),
    ],
    ids=["lr", "batch-size", "dataset", "dataset+seed", "n-data", "weighting", "steps", "p-small-t"],
)
def test_resume_with_other_settings_is_refused_and_the_checkpoint_kept(tmp_path, monkeypatch, flags, listed):
    ckpt = _stopped_run(tmp_path / "run", monkeypatch)
    before = ckpt.read_bytes()
    text = refused("train", "toy2d", *flags, "--quiet", "--device", "cpu", "--out", tmp_path / "run", "--resume")
    assert "--resume continues the saved run exactly; these options differ from it: " + listed in text
    assert "Leave them out to continue, or start a new run with another --out" in text
    if "--steps" in flags:  # the rule for --steps says why
        assert "the learning rate decays to 0 along a cosine laid out over the run's total steps" in text
    assert ckpt.read_bytes() == before


def test_resume_help_states_the_rule(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "options left out take its values; one given with another value is refused, --steps too" in help_text


def test_trainer_refuses_to_resume_a_run_with_other_settings(tmp_path):
    def trainer(hidden=8, **over):
        cfg = TrainConfig(**{"steps": 4, "batch_size": 8, **over})
        return Trainer(MLPDenoiser(hidden=hidden), Schedule.linear(10), torch.randn(16, 2), cfg, device="cpu")

    trainer().run(2, progress=False, checkpoint=tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"other training settings: lr 0\.002 \(saved\) vs 0\.01 \(this trainer's\)"):
        trainer(lr=0.01).load(tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"steps 4 \(saved\) vs 8"):
        trainer(steps=8).load(tmp_path / "c.pt")
    with pytest.raises(ValueError, match="the checkpoint's network .* is not this trainer's"):
        trainer(hidden=16).load(tmp_path / "c.pt")
    same = trainer()
    same.load(tmp_path / "c.pt")  # its own settings: resumes
    assert same.step == 2


def test_sample_spacing_is_used_recorded_and_refused_for_ddpm(tmp_path):
    """--spacing picks DDIM's steps (a quadratic grid gives other samples than the leading one) and is refused
    where it means nothing (the ancestral sampler runs every step)."""
    ck = tmp_path / "run" / "checkpoint.pt"
    assert main("train", *TINY, "--steps", "3", "--out", ck.parent) == 0
    got = {}
    for spacing in ("leading", "quadratic"):
        out = tmp_path / f"{spacing}.pt"
        argv = ["sample", "--checkpoint", str(ck), "--sampler", "ddim", "--steps", "4", "--n", "8"]
        assert main(*argv, "--spacing", spacing, "--out", out) == 0
        d = torch.load(out)
        assert d["meta"]["spacing"] == spacing
        got[spacing] = d["samples"]
    assert not torch.allclose(got["leading"], got["quadratic"])
    msg = refused("sample", "--checkpoint", ck, "--sampler", "ddpm", "--spacing", "quadratic", "--n", "2")
    assert "--spacing does not apply to --sampler ddpm" in msg


@pytest.mark.parametrize("seed", ["-1", str(2**32), "18446744073709551616"])
def test_a_seed_out_of_range_is_a_usage_error(seed, tmp_path):
    msg = refused("train", *TINY, "--steps", "2", "--seed", seed, "--out", tmp_path / "run")
    assert "argument --seed: must be an integer" in msg
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_ends_with_one_line_not_a_traceback(tmp_path):
    with pytest.raises(SystemExit) as info:
        main("train", *TINY, "--steps", "3", "--lr", "1e30", "--out", tmp_path / "run")
    assert str(info.value).startswith("train: the loss became") and "Lower the learning rate" in str(info.value)
