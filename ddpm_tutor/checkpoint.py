"""Checkpoints: written atomically (temp file, then rename) and read with weights_only=True."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import torch

FORMAT = "ddpm_tutor/1"  # the "format" entry of every checkpoint the package writes (training and exported)


def check_format(state: dict, source: str | os.PathLike = "the checkpoint") -> dict:
    """Return ``state`` if it is a ddpm_tutor checkpoint (its "format" is FORMAT); else a clear ValueError."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{source} is not a ddpm_tutor checkpoint: expected format {FORMAT!r}, found {found!r}")
    return state


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temp file next to ``path``, then rename it to ``path``: a crash or Ctrl-C
    never leaves half a file, and an existing file is replaced only by a complete one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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


def save_checkpoint(obj: dict, path: str | os.PathLike) -> Path:
    """Write ``obj`` (tensors, dicts, lists, numbers, strings) to ``path`` atomically (see write_atomic)."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``: plain data only, no code runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    obj = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a ddpm_tutor checkpoint (expected a dict, got {type(obj).__name__})")
    return obj
