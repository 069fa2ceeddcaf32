"""Self-checks for Part II, chapters 4-5: guidance, and progressive coding.

Every ``check_*`` here follows the protocol of :mod:`ddpm_tutor.exercises`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._check import attempt as _call
from ._check import diagnose as _diagnose
from ._check import matches as _matches

Tensor = torch.Tensor

__all__ = [
    "check_cfg_eps",
    "check_classifier_guidance_eps",
    "check_cumulative_rate",
    "check_posterior_std",
    "cfg_eps_reference",
    "classifier_guidance_eps_reference",
    "cumulative_rate_reference",
    "posterior_std_reference",
]


def _quiet(fn, *args):
    """check_close without its success print (for the intermediate cases)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


# --- chapter 4: guidance ---------------------------------------------------------------------------
def cfg_eps_reference(eps_cond: Tensor, eps_uncond: Tensor, w: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): (1 + w) eps(x_t, y) - w eps(x_t)."""
    return (1.0 + w) * eps_cond - w * eps_uncond


def check_cfg_eps(fn: Callable) -> str | None:
    """Check ``fn(eps_cond, eps_uncond, w) -> guided eps`` on random tensors for several w."""
    name = "cfg_eps"
    g = torch.Generator().manual_seed(11)
    ec, eu = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    for w, why in (
        (3.0, "w = 3 must give 4 eps(x_t, y) - 3 eps(x_t)"),
        (0.0, "w = 0 must give the conditional prediction eps(x_t, y) unchanged"),
        (-1.0, "w = -1 must give the unconditional prediction eps(x_t)"),
    ):
        ok, got = _call(fn, name, ec.clone(), eu.clone(), w)
        if not ok:
            return None
        mistakes = {
            "you used w instead of 1 + w on the conditional term (that is w eps_c - w eps_u)": w * ec - w * eu,
            "you swapped the conditional and unconditional predictions": (1 + w) * eu - w * ec,
            "you wrote eps_u + w (eps_c - eps_u), the other convention (scale w + 1 here)": eu + w * (ec - eu),
        }
        mistakes = {k: v for k, v in mistakes.items() if not _matches(v, cfg_eps_reference(ec, eu, w))}
        _quiet(_diagnose, f"{name} at w = {w}", got, cfg_eps_reference(ec, eu, w), mistakes, why)
    msg = f"{name}: correct (w = 3, 0 and -1 all match (1 + w) eps_cond - w eps_uncond)"
    print(msg)
    return msg


def classifier_guidance_eps_reference(eps: Tensor, grad_log_p: Tensor, alpha_bar: Tensor, scale: float) -> Tensor:
    """Classifier guidance in eps form (Dhariwal & Nichol 2021): eps - scale sqrt(1 - ab) grad log p(y | x_t)."""
    ab = torch.as_tensor(alpha_bar, dtype=eps.dtype).reshape(-1, *([1] * (eps.ndim - 1)))
    return eps - scale * (1 - ab).sqrt() * grad_log_p


def check_classifier_guidance_eps(fn: Callable) -> str | None:
    """Check ``fn(eps, grad_log_p, alpha_bar, scale) -> guided eps``; alpha_bar is (B,), the others (B, D)."""
    name = "classifier_guidance_eps"
    g = torch.Generator().manual_seed(12)
    eps = torch.randn(5, 2, generator=g, dtype=torch.float64)
    grad = torch.randn(5, 2, generator=g, dtype=torch.float64)
    ab = torch.tensor([0.99, 0.7, 0.4, 0.1, 0.01], dtype=torch.float64)
    scale = 2.5
    ok, got = _call(fn, name, eps.clone(), grad.clone(), ab.clone(), scale)
    if not ok:
        return None
    sd = (1 - ab).sqrt()[:, None]
    mistakes = {
        "the sign is flipped: guidance *subtracts* scale sqrt(1 - ab) grad from eps, because "
        "eps = -sqrt(1 - ab) score": eps + scale * sd * grad,
        "you used (1 - ab) instead of its square root": eps - scale * (1 - ab)[:, None] * grad,
        "the factor sqrt(1 - ab) is missing": eps - scale * grad,
        "you used sqrt(ab) instead of sqrt(1 - ab)": eps - scale * ab.sqrt()[:, None] * grad,
    }
    return _diagnose(
        name,
        got,
        classifier_guidance_eps_reference(eps, grad, ab, scale),
        mistakes,
        "eps_guided = eps - scale * sqrt(1 - alpha_bar) * grad log p(y | x_t), row by row.",
    )


# --- chapter 5: progressive coding -----------------------------------------------------------------
def cumulative_rate_reference(prior: Tensor, kl: Tensor) -> Tensor:
    """rate[:, i] = prior + sum_{j > i} kl[:, j]: what the receiver has paid once it holds x_{i+1}."""
    after = torch.flip(torch.cumsum(torch.flip(kl, [1]), 1), [1]) - kl
    return prior[:, None] + after


def check_cumulative_rate(fn: Callable) -> str | None:
    """Check ``fn(prior (B,), kl (B, T)) -> rate (B, T)`` with rate[:, i] = prior + sum_{j > i} kl[:, j]."""
    name = "cumulative_rate"
    g = torch.Generator().manual_seed(13)
    B, T = 3, 7
    prior = torch.rand(B, generator=g, dtype=torch.float64)
    kl = torch.rand(B, T, generator=g, dtype=torch.float64)
    kl[:, 0] = 0.0
    ok, got = _call(fn, name, prior.clone(), kl.clone())
    if not ok:
        return None
    rev = torch.flip(torch.cumsum(torch.flip(kl, [1]), 1), [1])
    mistakes = {
        "you included kl[:, i] itself: at index i the receiver holds x_{i+1}, and the term "
        "kl[:, i] is paid only on the way to x_i": prior[:, None] + rev,
        "you summed from the start (forward cumsum): transmission runs from t = T down to 1": prior[:, None]
        + torch.cumsum(kl, 1),
        "the prior term L_T is missing": rev - kl,
    }
    return _diagnose(
        name,
        got,
        cumulative_rate_reference(prior, kl),
        mistakes,
        "The last column (i = T-1, holding x_T) is the prior alone; each step down adds one KL term.",
    )


def posterior_std_reference(alpha_bar: Tensor, s2: float) -> Tensor:
    """sqrt(Var[x_0 | x_t]) for x_0 ~ N(m, s2): sqrt(s2 (1 - ab) / (ab s2 + 1 - ab))."""
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return (s2 * (1 - ab) / (ab * s2 + 1 - ab)).sqrt()


def check_posterior_std(fn: Callable) -> str | None:
    """Check ``fn(alpha_bar (T,), s2) -> sqrt(Var[x_0 | x_t]) (T,)`` for Gaussian data N(m, s2)."""
    name = "posterior_std"
    ab = torch.tensor([0.9999, 0.99, 0.8, 0.5, 0.2, 0.01, 1e-4], dtype=torch.float64)
    for s2 in (0.25, 2.0):
        ok, got = _call(fn, name, ab.clone(), s2)
        if not ok:
            return None
        mistakes = {
            "you returned the variance, not the standard deviation": posterior_std_reference(ab, s2) ** 2,
            "you used the forward noise std sqrt(1 - ab) (that is the spread of x_t given x_0)": (1 - ab).sqrt(),
            "you forgot that x_t = sqrt(ab) x_0 + noise: the denominator is ab s2 + 1 - ab": (
                s2 * (1 - ab) / (s2 + 1 - ab)
            ).sqrt(),
        }
        _quiet(
            _diagnose,
            f"{name} with s2 = {s2}",
            got,
            posterior_std_reference(ab, s2),
            mistakes,
            "Condition the joint Gaussian of (x_0, x_t): Var[x_0 | x_t] = s2 - Cov^2 / Var[x_t].",
        )
    msg = f"{name}: correct (matches sqrt(s2 (1 - ab) / (ab s2 + 1 - ab)) for two data variances)"
    print(msg)
    return msg
