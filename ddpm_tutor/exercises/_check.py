"""The comparison behind every self-check: a clear verdict, and where the answer first differs."""

from __future__ import annotations

from collections.abc import Callable

import torch


class CheckFailed(AssertionError):
    """A learner's answer differs from the reference; the message says where."""


def check_close(name: str, got, expected, *, atol: float = 1e-6, rtol: float = 1e-5, hint: str = "") -> str:
    """Compare a learner's result with the reference; raise CheckFailed naming the first bad entry.

    Returns a one-line success message (also printed), so a notebook cell shows what passed.
    """
    expected = torch.as_tensor(expected)
    try:
        got = torch.as_tensor(got)
    except (TypeError, ValueError, RuntimeError) as err:
        raise CheckFailed(f"{name}: expected a tensor like {tuple(expected.shape)}, got {type(got).__name__}") from err
    if got.shape != expected.shape:
        raise CheckFailed(f"{name}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}. {hint}".strip())
    got64, exp64 = got.double().cpu(), expected.double().cpu()
    if not torch.isfinite(got64).all():
        idx = tuple(int(i) for i in torch.nonzero(~torch.isfinite(got64))[0])
        raise CheckFailed(f"{name}: your result has NaN or inf at index {idx}. {hint}".strip())
    bad = ~torch.isclose(got64, exp64, atol=atol, rtol=rtol)
    if bad.any():
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        n_bad = int(bad.sum())
        raise CheckFailed(
            f"{name}: {n_bad} of {bad.numel()} entries differ; first at index {idx}: "
            f"got {got64[idx].item():.6g}, expected {exp64[idx].item():.6g}. {hint}".strip()
        )
    msg = f"{name}: correct ({got.numel()} values match the reference)"
    print(msg)
    return msg


def attempt(fn: Callable, name: str, *args, **kwargs):
    """Run a learner's function: (True, result); (False, None) with a printed line while it is still a stub
    (raises NotImplementedError); a crash becomes a CheckFailed that names the error."""
    try:
        return True, fn(*args, **kwargs)
    except NotImplementedError:
        print(f"{name}: not attempted yet (the function still raises NotImplementedError)")
        return False, None
    except CheckFailed:
        raise
    except Exception as err:  # the learner's code crashed: say so, keep the original error attached
        raise CheckFailed(f"{name}: your function raised {type(err).__name__}: {err}") from err


def matches(got, candidate, atol=1e-6, rtol=1e-5) -> bool:
    """Whether ``got`` is finite and close to ``candidate`` (used to recognise known mistakes)."""
    try:
        got = torch.as_tensor(got).double()
    except (TypeError, ValueError, RuntimeError):
        return False
    candidate = torch.as_tensor(candidate).double()
    return (
        got.shape == candidate.shape
        and bool(torch.isfinite(got).all())
        and bool(torch.allclose(got, candidate, atol=atol, rtol=rtol))
    )


def diagnose(name: str, got, expected, mistakes: dict, hint: str, atol: float = 1e-6, rtol: float = 1e-5) -> str:
    """check_close, but if the answer is wrong and matches a known mistake, say which one."""
    try:
        return check_close(name, got, expected, atol=atol, rtol=rtol, hint=hint)
    except CheckFailed as err:
        for why, candidate in mistakes.items():
            if matches(got, candidate, atol=atol, rtol=rtol):
                raise CheckFailed(f"{err} It looks like {why}.") from None
        raise
