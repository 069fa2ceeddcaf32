"""Argument checks shared by the package; each raises ValueError naming what it expected and what it got.

- :func:`positive_int`: an int >= 1 (a size, a count of steps), optionally at most ``most``;
- :func:`batch_steps`: step indices t for a batch of B: one index, or a tensor of shape (B,);
- :func:`step_indices`: integer step indices in 0..T-1 (index i is the paper's step i+1);
- :func:`image_range`: a finite floating tensor in [-1, 1], the model's range for images (x / 127.5 - 1);
- :func:`class_labels` and :func:`null_labels`: labels 0..C of a network with C classes, C being the null label
  ("no label", used by classifier-free guidance);
- :func:`real_in_range`: a real number (not a bool, NaN or tensor) in [lo, hi], such as DDIM's eta in [0, 1] (or
  an open end, such as a beta in (0, 1));
- :func:`floating_like`: a floating-point tensor of exactly the shape of another (noise, a network's output);
- :func:`flag`: True or False, nothing else (a string such as "no" is truthy);
- :func:`generator_arg` and :func:`device_arg`: a torch.Generator (or None), and a device this machine has.

Nothing here casts, clips or broadcasts silently: a check returns its input, or says what it does to it.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

Tensor = torch.Tensor


def positive_int(value, name: str, most: int | None = None) -> int:
    """``value`` as an int if it is an integer >= 1 (and <= ``most`` when given): a Python or numpy integer;
    bools, floats and tensors are refused."""
    integer = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if not integer or value < 1 or (most is not None and value > most):
        expected = "a positive integer (an integer >= 1)" if most is None else f"an integer in 1..{most}"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def _as_steps(t, device=None) -> Tensor:
    """``torch.as_tensor(t)``, with a message naming t for what cannot be a tensor (None, a string)."""
    if isinstance(t, (list, tuple)) and not t:  # no steps, for an empty batch: as_tensor would make them float32
        return torch.zeros(0, dtype=torch.long, device=device)
    try:
        return torch.as_tensor(t, device=device)
    except (TypeError, ValueError, RuntimeError):
        if torch.is_tensor(t):  # a tensor that cannot move to ``device``: not t's value at fault
            raise
        raise ValueError(
            f"t must hold integer step indices (an int or an integer tensor), got {type(t).__name__} {t!r}"
        ) from None


def batch_steps(t, B: int, device=None, batch: str = "the batch") -> Tensor:
    """Step indices t as a (B,) tensor on ``device``: a (B,) tensor unchanged but for the device, or one index
    repeated B times (an expanded view). The dtype is kept; ``batch`` names what B comes from, for the message."""
    t = _as_steps(t, device)
    if t.ndim == 0:
        return t.expand(B)
    if t.shape != (B,):
        raise ValueError(
            f"t must have shape (B,) to match {batch}, i.e. shape ({B},), or be one step index; "
            f"got shape {tuple(t.shape)}"
        )
    return t


def step_indices(t, T: int | None = None) -> Tensor:
    """Return t (any shape) as int64 if it holds integer step indices in 0..T-1.

    With T None only t >= 0 is checked: a network knows no schedule, so it cannot know T.
    """
    t = _as_steps(t)
    top = "T-1" if T is None else T - 1
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"t must hold integer step indices in 0..{top}, got dtype {t.dtype}")
    if t.numel():
        message = f"t must lie in 0..{top} (index i is the paper's step i+1)"
        if on_accelerator(t):  # checked on the device, without making the host wait for it (see on_accelerator)
            torch._assert_async((t >= 0).all() & ((t <= T - 1).all() if T is not None else True), message)
            return t.long()
        lo, hi = (int(v) for v in torch.aminmax(t))  # one pass over t: this runs at every sampler step
        if lo < 0 or (T is not None and hi > T - 1):
            raise ValueError(f"{message}, got range {lo}..{hi}")
    return t.long()


def on_accelerator(x: Tensor) -> bool:
    """Whether ``x`` lives on a GPU (any device but the CPU): there a value check runs as a device-side assert.

    Reading a value back (``int(t.max())``) makes the host wait for the device, at every training and sampling
    step. On a GPU the range checks of step indices and labels therefore run on the device
    (``torch._assert_async``): a bad value still stops the program, with the check's message in the CUDA error,
    but only when the device reaches it. On the CPU the checks raise a ValueError with the values at fault.
    """
    return x.device.type != "cpu"


def image_range(x, name: str = "x", tol: float = 0.0) -> Tensor:
    """Return ``x`` if it is a finite floating tensor with every value in [-1 - tol, 1 + tol]; any shape."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        got = f"dtype {x.dtype}" if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} must be a floating-point tensor with values in [-1, 1], got {got}")
    if x.numel() == 0:
        return x
    if not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"{name} must be finite with values in [-1, 1], but it holds "
            f"{int((~torch.isfinite(x)).sum())} NaN/inf values"
        )
    lo, hi = (float(v) for v in torch.aminmax(x))
    if lo < -1.0 - tol or hi > 1.0 + tol:
        raise ValueError(
            f"{name} must lie in [-1, 1] (images scaled as x / 127.5 - 1; nothing is clipped "
            f"silently: clamp with x.clamp(-1, 1) yourself where you mean to), "
            f"got values in [{lo:.4g}, {hi:.4g}]"
        )
    return x


def class_labels(y, B: int, num_classes: int) -> Tensor:
    """Return ``y`` if it is an integer tensor of shape (B,) with labels 0..num_classes (the last is the null
    label)."""
    if not torch.is_tensor(y) or y.shape != (B,) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        got = f"shape {tuple(y.shape)} and dtype {y.dtype}" if torch.is_tensor(y) else type(y).__name__
        raise ValueError(
            f"y must be an integer tensor of shape ({B},) with labels 0..{num_classes} "
            f"({num_classes} is the null label, 'no label'), got {got}"
        )
    if B and on_accelerator(y):
        message = f"y must hold labels 0..{num_classes} ({num_classes} is the null label, 'no label')"
        torch._assert_async((y >= 0).all() & (y <= num_classes).all(), message)
        return y
    if B and (int(y.min()) < 0 or int(y.max()) > num_classes):
        raise ValueError(
            f"y must hold labels 0..{num_classes} ({num_classes} is the null label, 'no label'), "
            f"got values in [{int(y.min())}, {int(y.max())}]"
        )
    return y


def null_labels(B: int, num_classes: int, device=None) -> Tensor:
    """The null label ("no label") of a network with ``num_classes`` classes, which reserves the index
    num_classes for it, for a batch of B: (B,) int64."""
    return torch.full((B,), num_classes, dtype=torch.long, device=device)


def real_in_range(
    value, name: str, lo: float, hi: float, note: str = "", *, open_lo: bool = False, open_hi: bool = False
) -> float:
    """Return ``value`` as a float if it is a real number with lo <= value <= hi (lo < value with ``open_lo``,
    value < hi with ``open_hi``); bools, NaN, strings and tensors are refused. ``note`` (e.g. " (0 is
    deterministic DDIM)") follows the range in the message."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if number:
        v = float(value)
        above = lo < v if open_lo else lo <= v  # NaN fails every comparison
        below = v < hi if open_hi else v <= hi
    if not number or not (above and below):
        got = repr(value) if number else f"{type(value).__name__} {value!r}"
        raise ValueError(
            f"{name} must be {'>' if open_lo else '>='} {lo:g} and {'<' if open_hi else '<='} {hi:g}{note}, got {got}"
        )
    return float(value)


def floating_like(value, like: Tensor, name: str, like_name: str) -> Tensor:
    """Return ``value`` if it is a floating-point tensor of exactly ``like``'s shape (nothing is broadcast or cast
    silently); ``like_name`` names ``like`` in the message."""
    if not torch.is_tensor(value) or not value.is_floating_point():
        got = f"dtype {value.dtype}" if torch.is_tensor(value) else type(value).__name__
        raise ValueError(
            f"{name} must be a floating-point tensor of the shape of {like_name} {tuple(like.shape)}, got {got}"
        )
    if value.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {like_name} {tuple(like.shape)}, got {tuple(value.shape)}")
    return value


def flag(value, name: str) -> bool:
    """Return ``value`` if it is True or False; 0, 1, strings and tensors are refused."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def generator_arg(generator, name: str = "generator") -> torch.Generator | None:
    """Return ``generator`` if it is a torch.Generator or None; a seed (an int) or a numpy generator is refused."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{name} must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, "
            f"got {type(generator).__name__} {generator!r}"
        )
    return generator


def device_arg(device, default: str = "cpu") -> torch.device:
    """``device`` (a string such as "cuda:0", or a torch.device; None: ``default``) as a torch.device this machine
    has; an unknown name or a CUDA/MPS device that is not there is refused by name."""
    if device is None:
        device = default
    try:
        out = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must be a device name such as 'cpu', 'cuda', 'cuda:0' or 'mps' (or a torch.device), got {device!r}"
        ) from None
    if out.type == "cuda" and not (
        torch.cuda.is_available() and (out.index is None or out.index < torch.cuda.device_count())
    ):
        raise ValueError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA devices; use 'cpu' or one it has"
        )
    if out.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use 'cpu'")
    return out
