"""Regression tests for checkpoint files a loader cannot use: files that are not checkpoints, checkpoints damaged
in place, temp files a killed save left, and exports where a training checkpoint is needed."""

import os
import pickle
import random
import time

import pytest
import torch

from ddpm_tutor.checkpoint import (
    FORMAT,
    RESUME_KEYS,
    CheckpointError,
    clean_stale_temps,
    export_weights,
    load_checkpoint,
    load_model,
    read_checkpoint,
    save_checkpoint,
    tensor_checksum,
    write_atomic,
)
from ddpm_tutor.models import MLPDenoiser
from ddpm_tutor.schedules import Schedule
from ddpm_tutor.train import TrainConfig, Trainer


def _trainer() -> Trainer:
    return Trainer(MLPDenoiser(hidden=8), Schedule.linear(10), torch.randn(16, 2), TrainConfig(steps=2), device="cpu")


@pytest.fixture
def ckpt(tmp_path):
    """A training checkpoint of two steps of a tiny MLP, written by Trainer.run as a run writes it."""
    path = tmp_path / "checkpoint.pt"
    _trainer().run(progress=False, checkpoint=path)
    return path


def _refused(load, *fragments) -> str:
    """Assert that ``load()`` raises a CheckpointError holding ``fragments`` and no unsafe advice; its message."""
    with pytest.raises(CheckpointError) as info:
        load()
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    for fragment in fragments:
        assert fragment in msg, msg
    assert "weights_only=False" not in msg
    # torch's own error (which advises weights_only=False) is not chained into the traceback either
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__), msg
    return msg


class _NotData:
    """An object of a class a weights_only load refuses to rebuild."""


CUT_SHORT, OTHER_FILE = "it may have been cut short by an interrupted", "it may be a different kind of file"
BAD_FILES = {  # name -> (the file's bytes from a good checkpoint's, what the message says)
    "text": (lambda good: b"step,loss\n1,0.52\n2,0.48\n", ("it starts with b'step,loss", OTHER_FILE)),
    "empty": (lambda good: b"", ("(the file is empty)", CUT_SHORT)),
    "one byte": (lambda good: good[:1], ("(only the first 1 B of a zip archive)", CUT_SHORT)),
    "half": (lambda good: good[: len(good) // 2], ("(an incomplete or damaged zip archive of ", CUT_SHORT)),
    "random": (lambda good: random.Random(0).randbytes(4096), ("not a file torch.save writes", OTHER_FILE)),
    "pickle": (lambda good: pickle.dumps({"w": _NotData()}), ("(a pickle, not the zip archive", OTHER_FILE)),
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's, reading the plain pickle
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_file_that_is_not_a_checkpoint_gets_one_clear_error(ckpt, tmp_path, case):
    """Each used to raise what torch.load met first: KeyError: 101, an empty EOFError, OSError: Invalid argument,
    or an UnpicklingError advising weights_only=False."""
    make, fragments = BAD_FILES[case]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(make(ckpt.read_bytes()))
    # every loader reads through load_checkpoint: `sample` and `evaluate` (load_model), `train --resume`
    # (read_checkpoint), Trainer.load
    for load in (
        lambda: load_checkpoint(bad),
        lambda: load_model(bad, device="cpu"),
        lambda: read_checkpoint(bad, RESUME_KEYS),
        lambda: _trainer().load(bad),
    ):
        msg = _refused(load, *fragments)
        assert msg.startswith(f"{bad} is not a ddpm_tutor checkpoint ("), msg
    with pytest.raises(FileNotFoundError, match="missing.pt"):  # a missing file is still that
        load_checkpoint(tmp_path / "missing.pt")


def test_a_checkpoint_of_objects_a_safe_load_refuses_is_named_not_loaded(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"w": torch.ones(2), "obj": _NotData()}, path)
    msg = _refused(lambda: load_checkpoint(path), "holds objects other than tensors and plain data", "_NotData")
    assert msg.startswith(f"{path} is not a ddpm_tutor checkpoint ("), msg
    with pytest.raises(pickle.UnpicklingError):  # what torch.load raised before: code that caught it still does
        load_checkpoint(path)


def test_a_checkpoint_without_what_a_loader_needs_gets_the_same_error(tmp_path):
    path = save_checkpoint({"format": FORMAT, "model_spec": {"kind": "mlp", "config": {}}}, tmp_path / "bare.pt")
    msg = _refused(lambda: load_model(path), "(format 'ddpm_tutor/1', but without 'schedule', 'ema')")
    assert msg.startswith(f"{path} is not a ddpm_tutor checkpoint ("), msg
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    _refused(lambda: load_checkpoint(tmp_path / "list.pt"), "(it holds a list, not a dict)")


def test_a_checkpoint_damaged_in_place_is_refused_by_its_checksum(ckpt, tmp_path):
    state = load_checkpoint(ckpt)
    assert state["checksum"] == tensor_checksum(state) and state["checksum"].startswith("sha256:")
    weight = max(state["model"].values(), key=torch.Tensor.numel)

    def damage(path):
        """Flip 64 bytes in the middle of the stored bytes of ``weight`` (torch stores tensors uncompressed)."""
        data, raw = bytearray(path.read_bytes()), weight.numpy().tobytes()
        at = data.find(raw)
        assert at > 0 and len(raw) >= 128
        mid = at + len(raw) // 2 - 32
        data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
        path.write_bytes(data)

    # without the checksum (a file written before it was saved) the same damage loads, with other weights
    plain = tmp_path / "plain.pt"
    torch.save({k: v for k, v in state.items() if k != "checksum"}, plain)
    damage(plain)
    assert tensor_checksum(load_checkpoint(plain)) != state["checksum"]
    damage(ckpt)
    msg = _refused(
        lambda: load_checkpoint(ckpt), "its tensors do not match the checksum saved with them", "altered or damaged"
    )
    assert msg.startswith(f"{ckpt} is not a ddpm_tutor checkpoint ("), msg
    _refused(lambda: load_model(ckpt, device="cpu"), "do not match the checksum")


def test_the_checksum_covers_every_tensor_with_its_place_dtype_and_shape():
    a, b = torch.arange(6.0), {"m": torch.ones(2, 3), "s": {0: torch.zeros(3)}}
    base = tensor_checksum({"a": a, "b": b, "n": 1})
    assert tensor_checksum({"b": b, "a": a, "n": 2}) == base  # order of keys and non-tensor values: no matter
    assert tensor_checksum({"a": a, "b": b, "checksum": "x"}) == base  # nor does the entry that keeps it
    for other in (
        {"a": a.reshape(2, 3), "b": b},  # same bytes, other shape
        {"a": a.double(), "b": b},
        {"a": a.clone().index_fill_(0, torch.tensor([3]), 7.0), "b": b},
        {"c": a, "b": b},  # same tensor in another place
        {"a": a, "b": {"m": torch.ones(2, 3), "s": {0: torch.zeros(3), 1: torch.zeros(1)}}},
    ):
        assert tensor_checksum(other) != base
    assert tensor_checksum({"w": torch.ones(3, dtype=torch.bfloat16)}).startswith("sha256:")


def test_a_save_removes_the_temp_files_a_killed_save_left_and_no_other(tmp_path):
    """kill -9 during a save used to leave its temp file (a whole checkpoint) behind for good."""
    dead = 2**22 + 1  # above the largest pid Linux gives (4194304): no process has it
    long_ago = time.time() - 3600

    def temp(name, mtime=long_ago):
        path = tmp_path / name
        path.write_bytes(b"half a checkpoint")
        os.utime(path, (mtime, mtime))
        return path

    stale = [
        temp(f".checkpoint.pt.{dead}.k2j4h5g6.tmp"),
        temp(".checkpoint.pt.a8b7c6d5.tmp"),  # named before the pid was in the name
    ]
    kept = [
        temp(f".checkpoint.pt.{os.getpid()}.zz11yy22.tmp"),  # its process runs: a save in progress
        temp(f".checkpoint.pt.{dead}.fresh123.tmp", mtime=time.time()),  # written to just now
        temp(f".other.pt.{dead}.k2j4h5g6.tmp"),  # another target's
        temp("notes.tmp"),
    ]
    _trainer().save(tmp_path / "checkpoint.pt")
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.pt", *(p.name for p in kept)])
    assert clean_stale_temps(tmp_path / "checkpoint.pt") == []
    # the temp file of a save names its process
    seen = []
    write_atomic(tmp_path / "checkpoint.pt", lambda f: seen.extend(os.listdir(tmp_path)))
    assert any(n.startswith(f".checkpoint.pt.{os.getpid()}.") and n not in [p.name for p in kept] for n in seen)


def test_training_checkpoints_and_exports_say_which_they_are(ckpt, tmp_path):
    small = export_weights(ckpt, tmp_path / "small.pt")
    assert load_checkpoint(ckpt)["kind"] == "train" and load_checkpoint(small)["kind"] == "export"
    msg = _refused(
        lambda: read_checkpoint(small, RESUME_KEYS),
        f"{small} is a sampling export (made by export_weights), not a training checkpoint: it has no optimiser "
        "state to resume",
        "train from scratch or resume from the run's checkpoint.pt",
    )
    assert "without 'model', 'opt'" in msg
    _refused(lambda: _trainer().load(small), "is a sampling export (made by export_weights), not a training checkpoint")
    _refused(
        lambda: load_model(small, ema=False, device="cpu"),
        f"{small} is a sampling export (made by export_weights), not a training checkpoint: it keeps only the EMA",
    )
    # files written before "kind" existed are told apart by their keys, and load as before
    old_export, old_train = tmp_path / "old_export.pt", tmp_path / "old_train.pt"
    for path, new in ((old_export, small), (old_train, ckpt)):
        torch.save({k: v for k, v in load_checkpoint(new).items() if k not in ("kind", "checksum")}, path)
    _refused(lambda: read_checkpoint(old_export, RESUME_KEYS), f"{old_export} is a sampling export")
    load_model(old_export, device="cpu")
    tr = _trainer()
    tr.load(old_train)
    assert tr.step == 2
