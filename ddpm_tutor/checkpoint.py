"""Checkpoints: their format, atomic writes, weights_only reads, and the models rebuilt from them.

Every file the package writes for a diffusion model is a dict with "format": FORMAT and

- "model_spec": {"kind": "mlp" | "unet", "config": the model config as plain types, "data": what it was
  trained on}, from which :func:`build_model` rebuilds the network;
- "schedule": {"name", "beta" (T,)};
- "ema": the state dict of ``torch.optim.swa_utils.AveragedModel`` (the EMA weights under EMA_PREFIX,
  plus its "n_averaged" counter): the weights to sample from;
- "train_config" (TrainConfig as a dict; its "parameterization" says what the network predicts), "step",
  "losses".

A training checkpoint (``Trainer.save``) adds what resuming needs ("model", "opt", "lr_sched",
"generator", "torch_rng"); an export (:func:`export_weights`) drops that and adds "notes". Each says which it is
in "kind": "train" or "export" (files written before that entry are told apart by their keys). A digit classifier
(:mod:`ddpm_tutor.classifier`) is a dict with "format": CLASSIFIER_FORMAT, "config", "state_dict" and "meta".

Every dict :func:`save_checkpoint` writes also holds "checksum", the SHA-256 of its tensors
(:func:`tensor_checksum`), which :func:`load_checkpoint` verifies. A file that cannot be read as a checkpoint
(text, cut short, damaged, a pickle of other objects) raises one :class:`CheckpointError` that says why.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from .checks import device_arg
from .device import default_device
from .models.mlp import MLPConfig, MLPDenoiser
from .models.unet import UNet, UNetConfig
from .schedules import Schedule

FORMAT = "ddpm_tutor/1"  # the "format" entry of every checkpoint the package writes (training and exported)
CLASSIFIER_FORMAT = "ddpm_tutor/classifier/1"  # the "format" entry of a digit classifier (classifier.save_classifier)
KINDS = {FORMAT: "checkpoint", CLASSIFIER_FORMAT: "digit classifier"}  # what each format holds, for messages
# AveragedModel keeps its averaged copy as the submodule ``module``, so the EMA state dict's keys carry this prefix
EMA_PREFIX = "module."
MODEL_KEYS = ("model_spec", "schedule", "ema")  # what every checkpoint holds: enough to rebuild the EMA model
# what a training checkpoint adds, to resume bit-for-bit
RESUME_KEYS = MODEL_KEYS + ("model", "opt", "lr_sched", "generator", "torch_rng", "step", "losses")
MODELS = {"mlp": (MLPConfig, MLPDenoiser), "unet": (UNetConfig, UNet)}  # model_spec "kind" -> (config, network)
# the "kind" entry of a FORMAT checkpoint -> what it is, for messages
CHECKPOINT_KINDS = {
    "train": "training checkpoint (made by Trainer.save)",
    "export": "sampling export (made by export_weights)",
}
ZIP_MAGIC = b"PK\x03\x04"  # the first bytes of every file torch.save writes (a zip archive)
# a temp file of write_atomic whose process is gone and that was not written to for this long is an orphan
STALE_TEMP_AGE = 60.0  # seconds
# what to try when a file is not a checkpoint, by the likely cause
CUT_SHORT = (
    "it may have been cut short by an interrupted save, copy or download: copy it again from its source, "
    "or use the run's checkpoint.pt"
)
OTHER_FILE = (
    "it may be a different kind of file: pass a checkpoint written by `python -m ddpm_tutor train` "
    "(runs/<name>/checkpoint.pt) or by export_weights"
)


class CheckpointError(ValueError):
    """A file or state that is not a ddpm_tutor checkpoint (or not the kind a loader needs); the message says why.

    The one error every loader here raises for a bad file, whatever torch.load raised underneath."""


class CheckpointPickleError(CheckpointError, pickle.UnpicklingError):
    """The CheckpointError of a file torch.load refused with UnpicklingError; it is one too, so that code which
    caught that (before CheckpointError) still does."""


def checkpoint_kind(state: dict) -> str | None:
    """What a FORMAT checkpoint is: "train" (it resumes), "export" (sampling only) or None (neither).

    Its "kind" entry says it; a file written before that entry is a training checkpoint if it holds the
    optimiser state, an export if it holds at least what sampling needs."""
    if "kind" in state:
        return state["kind"]
    if "opt" in state:
        return "train"
    return "export" if all(k in state for k in MODEL_KEYS) else None


def check_format(
    state: dict, source: str | os.PathLike = "the checkpoint", keys: tuple[str, ...] = (), fmt: str = FORMAT
) -> dict:
    """Return ``state`` if its "format" is ``fmt`` (FORMAT or CLASSIFIER_FORMAT) and it holds ``keys``; else a
    CheckpointError that says what it is instead (an export where a training checkpoint is needed, say)."""
    what = KINDS[fmt]
    if not isinstance(state, dict) or state.get("format") != fmt:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{source} is not a ddpm_tutor {what}: expected format {fmt!r}, found {found!r}")
    missing = [k for k in keys if k not in state]
    if not missing:
        return state
    without = ", ".join(map(repr, missing))
    if fmt == FORMAT and checkpoint_kind(state) == "export" and ("opt" in missing or "model" in missing):
        got = f"{source} is a {CHECKPOINT_KINDS['export']}, not a training checkpoint"
        if "opt" in missing:
            raise CheckpointError(
                f"{got}: it has no optimiser state to resume (it is without {without}); train from scratch or "
                "resume from the run's checkpoint.pt"
            )
        raise CheckpointError(
            f"{got}: it keeps only the EMA weights (it is without {without}); load those (ema=True, the default) "
            "or use the run's checkpoint.pt"
        )
    raise CheckpointError(
        f"{source} is not a ddpm_tutor {what} (format {fmt!r}, but without {without}): expected the keys "
        f"{', '.join(map(repr, keys))}; it may have been written by other code"
    )


def _temp_name(path: Path) -> re.Pattern:
    """The names of write_atomic's temp files for ``path``: ".<name>.<pid>.<random>.tmp" (without the pid
    before it was in the name)."""
    return re.compile(re.escape(f".{path.name}.") + r"(?:(\d+)\.)?[^.]+\.tmp")


def _process_runs(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True when that cannot be told)."""
    if os.name != "posix":
        return True  # Windows' os.kill(pid, 0) would stop the process, not ask about it
    try:
        os.kill(pid, 0)  # signal 0: no signal sent, only the check that the process exists
    except ProcessLookupError:
        return False
    except (OverflowError, ValueError):
        return False  # not a pid this system could have given
    except PermissionError:
        return True  # it runs, under another user
    return True


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files a killed :func:`write_atomic` left next to ``path``; return those removed.

    A temp file of ``path`` (in its folder, named ".<name>.<pid>.<random>.tmp") is stale when no process
    ``pid`` runs on this machine and it was not written to for STALE_TEMP_AGE seconds; a temp file named
    without a pid (by versions before it was in the name) when it was not written to for that long. A save in
    progress is never removed: its process runs, and it writes all the time (which also protects a save from
    another machine sharing the folder, whose pid means nothing here). Other files, and the temp files of other
    targets, are left alone. write_atomic calls this before each write; call it at the start of a run to free
    the space at once."""
    path = Path(path)
    pattern, now, removed = _temp_name(path), time.time(), []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:  # no folder yet: nothing to clean
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < STALE_TEMP_AGE:
                continue
            if match[1] is not None and _process_runs(int(match[1])):
                continue
            os.unlink(entry.path)
        except OSError:  # gone already (another process cleaned it) or not ours to remove: leave it
            continue
        removed.append(Path(entry.path))
    return removed


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temp file next to ``path``, then rename it to ``path``: a crash or Ctrl-C
    never leaves half a file, and an existing file is replaced only by a complete one.

    The temp file's name carries this process's pid, so that a later write_atomic to ``path`` can tell the
    temp files of a killed process from those being written, and remove them (:func:`clean_stale_temps`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    umask = os.umask(0)  # mkstemp makes the file private (0600); give it the mode a plain open() would
    os.umask(umask)
    try:
        # os.chmod on the name, not os.fchmod on fd: Python has os.fchmod on Windows only from 3.13
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _tensor_digest(t: torch.Tensor) -> bytes:
    """The SHA-256 of a tensor's bytes (b"" for a sparse tensor, which counts by its dtype and shape only)."""
    if t.layout != torch.strided:
        return b""
    # viewed as bytes: every dtype (bfloat16 too) hashes without a conversion, and NumPy lends the buffer
    return hashlib.sha256(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).digest()


def tensor_checksum(obj) -> str:
    """The SHA-256 of the tensors in ``obj`` (nested dicts, lists and tuples), as "sha256:<hex digest>".

    Each tensor counts with its place (the keys and indices leading to it), dtype, shape and the SHA-256 of its
    bytes, dict keys in sorted order, so the digest does not depend on the order a dict was filled in nor on
    the device. Other values (numbers, strings) do not count, nor does a top-level "checksum" entry (where the
    digest is kept)."""
    leaves = []  # (place, tensor) in the canonical order

    def visit(value, where: str) -> None:
        if isinstance(value, torch.Tensor):
            leaves.append((where, value))
        elif isinstance(value, dict):
            for k in sorted(value, key=repr):  # repr: keys of mixed types (the optimiser's ints) sort too
                if not (where == "" and k == "checksum"):
                    visit(value[k], f"{where}/{k!r}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(v, f"{where}/{i}")

    visit(obj, "")
    # hashlib lets go of the GIL on buffers over 2 KiB: the tensors hash in parallel on the cores that are free
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = pool.map(_tensor_digest, [t for _, t in leaves])
    h = hashlib.sha256()
    for (where, t), digest in zip(leaves, digests):
        h.update(f"{where}|{t.dtype}|{tuple(t.shape)}|".encode() + digest)
    return f"sha256:{h.hexdigest()}"


def save_checkpoint(obj: dict, path: str | os.PathLike) -> Path:
    """Write ``obj`` (tensors, dicts, lists, numbers, strings) to ``path`` atomically (see write_atomic).

    A dict is written with its "checksum" (:func:`tensor_checksum`), and a FORMAT checkpoint with its "kind"
    ("train" or "export", see :func:`checkpoint_kind`) unless it names it; ``obj`` itself is not changed."""
    if isinstance(obj, dict):
        obj, kind = dict(obj), checkpoint_kind(obj)
        if obj.get("format") == FORMAT and kind is not None:
            obj["kind"] = kind
        obj["checksum"] = tensor_checksum(obj)
    return write_atomic(path, lambda f: torch.save(obj, f))


def _unreadable(path: Path, err: Exception) -> tuple[str, str] | None:
    """Why torch.load failed on ``path`` with ``err``, as (reason, what to try); None when the file is a sound
    torch.save archive, so that the error is not the file's (a device it cannot map to, say)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:  # unreadable (permissions): the original error says it best
        return None
    if size == 0:
        return "the file is empty", CUT_SHORT
    if not head.startswith(ZIP_MAGIC):
        if ZIP_MAGIC.startswith(head):
            return f"only the first {size} B of a zip archive", CUT_SHORT
        if head.startswith(b"\x80"):
            return "a pickle, not the zip archive torch.save writes", OTHER_FILE
        return f"not a file torch.save writes: it starts with {head!r}", OTHER_FILE
    try:
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist()):
                return "a zip archive, but not one torch.save writes", OTHER_FILE
            damaged = z.testzip()  # the first record whose bytes fail their CRC
    except Exception:  # whatever the zip reader stumbles on: the archive is not sound
        return f"an incomplete or damaged zip archive of {size:,} B", CUT_SHORT
    if damaged is not None:
        return f"a damaged zip archive: its record {damaged} fails its CRC check", CUT_SHORT
    if isinstance(err, RuntimeError) and "PytorchStreamReader" in str(err) or isinstance(err, UnicodeDecodeError):
        # torch's zip reader checks headers that Python's passes over (their version fields, say), and reads
        # records (the serialization id) where a damaged header points
        return f"a damaged zip archive of {size:,} B: torch's zip reader refused its headers", CUT_SHORT
    if isinstance(err, pickle.UnpicklingError):
        # the first sentence of torch's refusal names the object; the rest is advice we do not pass on
        detail = str(err).partition("WeightsUnpickler error:")[2].strip().split(". ")[0].split("\n")[0]
        reason = "it holds objects other than tensors and plain data, which a safe load refuses"
        return (
            f"{reason}: {detail}" if detail and "weights_only" not in detail else reason,
            "ddpm_tutor saves only tensors and plain data, so other code wrote this file; it was not loaded, "
            "as loading it could run that code",
        )
    return None


_STORAGE = re.compile(r"(?:.*/)?data/\d+")  # the records of tensor bytes in a torch.save archive


def _damaged_record(path: Path) -> str | None:
    """The first record of the archive at ``path``, other than the tensors' bytes, whose bytes fail their CRC-32
    (None if none does). torch.load does not check CRCs, and the "checksum" covers the tensors only: this covers
    the pickle (every number, string and key of the file), the rest of it."""
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not _STORAGE.fullmatch(info.filename):
                    try:
                        z.read(info)  # raises BadZipFile on a CRC mismatch
                    except Exception:  # whatever the zip reader stumbles on: the record is not sound
                        return info.filename
    except Exception:  # torch.load read it, yet Python's zip reader cannot: damaged
        return "(the directory)"
    return None


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``: plain data only, no code runs.

    A file that is not a checkpoint (text, cut short, damaged, a pickle of other objects) raises a
    CheckpointError that says why, whatever torch.load raised; so does a dict whose tensors do not match the
    "checksum" saved with them (a file without one, from before it was saved, loads unchecked)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        why = _unreadable(path, err)
        if why is None:
            raise
        error = CheckpointPickleError if isinstance(err, pickle.UnpicklingError) else CheckpointError
        # from None: torch's own message would advise weights_only=False, which runs whatever the file holds
        raise error(f"{path} is not a ddpm_tutor checkpoint ({why[0]}): {why[1]}") from None
    damaged = _damaged_record(path)
    if damaged is not None:
        raise CheckpointError(
            f"{path} is not a ddpm_tutor checkpoint (a damaged zip archive: its record {damaged} fails its CRC "
            f"check): {CUT_SHORT}"
        )
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a ddpm_tutor checkpoint (it holds a {type(obj).__name__}, not a dict)")
    if "checksum" in obj and obj["checksum"] != tensor_checksum(obj):
        raise CheckpointError(
            f"{path} is not a ddpm_tutor checkpoint (its tensors do not match the checksum saved with them): the "
            "file was altered or damaged after it was written (a failing disk, a faulty copy); copy it again from "
            "its source, or use another checkpoint"
        )
    return obj


def read_checkpoint(path: str | os.PathLike, keys: tuple[str, ...] = MODEL_KEYS) -> dict:
    """:func:`load_checkpoint`, then :func:`check_format`: a ddpm_tutor checkpoint that holds ``keys``."""
    return check_format(load_checkpoint(path), path, keys)


def model_config(spec: dict):
    """The config dataclass (MLPConfig or UNetConfig) of a model spec {"kind": ..., "config": {...}}."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind not in MODELS:
        raise ValueError(f"model_spec must be a dict whose kind is one of {tuple(MODELS)}, got kind {kind!r}")
    config_cls = MODELS[kind][0]
    try:
        return config_cls(**spec.get("config", {}))
    except TypeError as err:  # an unknown or missing field
        raise ValueError(f"model_spec's config does not fit {config_cls.__name__}: {err}") from err


def build_model(spec: dict) -> nn.Module:
    """Rebuild a network (freshly initialised) from its spec {"kind": "mlp" | "unet", "config": {...}}."""
    return MODELS[spec["kind"]][1](model_config(spec))


def model_spec_of(model: nn.Module) -> dict:
    """The spec {"kind", "config"} :func:`build_model` rebuilds ``model`` from ({} for a network it does not know)."""
    for kind, (_, net_cls) in MODELS.items():
        if type(model) is net_cls:
            return {"kind": kind, "config": model.config_dict()}
    return {}


def sample_shape(spec: dict) -> tuple[int, ...]:
    """The shape of one sample of the model ``spec`` describes: (data_dim,) for the MLP, (C, H, W) for the
    U-Net."""
    c = model_config(spec)
    return (c.data_dim,) if spec["kind"] == "mlp" else (c.in_channels, c.image_size, c.image_size)


def ema_weights(ema_state: dict) -> dict:
    """The model's state dict inside an AveragedModel's (the EMA_PREFIX keys, prefix removed)."""
    weights = {k[len(EMA_PREFIX) :]: v for k, v in ema_state.items() if k.startswith(EMA_PREFIX)}
    if not weights:
        raise ValueError(f"the checkpoint's EMA state holds no weights (no key starts with {EMA_PREFIX!r})")
    return weights


def schedule_of(state: dict) -> Schedule:
    """The noise schedule a checkpoint was trained under."""
    return Schedule(state["schedule"]["beta"], name=state["schedule"]["name"])


def load_model(
    path: str | os.PathLike, *, ema: bool = True, device=None, as_eps: bool = True
) -> tuple[nn.Module, Schedule, dict]:
    """Load a trained model (EMA weights by default) and its schedule from a checkpoint, in eval mode.

    Returns (model, sched, state), state the whole file. With ``as_eps`` (the default) the network comes
    wrapped in a :class:`~ddpm_tutor.diffusion.Denoiser` that knows what it predicts (eps, x0, v or the score)
    and its null label, and answers with eps_hat like every sampler expects; ``as_eps=False`` returns the bare
    network (its output is then ``state["train_config"]["parameterization"]``). ``ema=False`` needs a training
    checkpoint (the raw weights, "model"; an export keeps only the EMA).
    """
    state = read_checkpoint(path, MODEL_KEYS if ema else MODEL_KEYS + ("model",))
    model = build_model(state["model_spec"])
    model.load_state_dict(ema_weights(state["ema"]) if ema else state["model"])
    model.to(device_arg(device, default=default_device())).eval()
    sched = schedule_of(state)
    parameterization = state.get("train_config", {}).get("parameterization", "eps")
    if as_eps:
        from .diffusion import Denoiser

        model = Denoiser(model, sched, parameterization).eval()
    return model, sched, state


def export_weights(
    trainer_checkpoint: str | os.PathLike, out_path: str | os.PathLike, *, notes: dict | None = None
) -> Path:
    """Keep what sampling needs from a training checkpoint: EMA weights, model spec, schedule, training
    config, step and loss curve (and ``notes``). Drops the raw weights, optimiser and random state."""
    if Path(out_path).resolve() == Path(trainer_checkpoint).resolve():
        # an export keeps no optimiser or raw weights: written over the training checkpoint, it ends the run
        raise ValueError(
            f"export_weights would overwrite the training checkpoint {trainer_checkpoint}: choose another out_path"
        )
    state = read_checkpoint(trainer_checkpoint)
    out = {
        "format": FORMAT,
        "kind": "export",
        "model_spec": state["model_spec"],
        "schedule": state["schedule"],
        "ema": state["ema"],
        "train_config": state.get("train_config", {}),
        "step": int(state.get("step", 0)),
        "losses": torch.as_tensor(state.get("losses", []), dtype=torch.float32),
        "notes": dict(notes or {}),
    }
    return save_checkpoint(out, out_path)
