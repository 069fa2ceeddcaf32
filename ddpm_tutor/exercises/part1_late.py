"""Self-checks for Part I, chapters 5-7: parameterisation, the schedule, and sampling.

Every ``check_*`` here follows the protocol of :mod:`ddpm_tutor.exercises`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..diffusion import PARAMETERIZATIONS, to_x0_eps
from ..samplers import ddim_step
from ..schedules import Schedule
from ._check import attempt as _call
from ._check import diagnose as _diagnose

Tensor = torch.Tensor

__all__ = [
    "check_to_x0",
    "check_cosine_alpha_bar",
    "check_ddim_step",
    "ddim_step_reference",
    "cosine_alpha_bar_reference",
    "to_x0_reference",
]


# --- chapter 5: parameterisation ------------------------------------------------------------------
def to_x0_reference(sched: Schedule, x_t: Tensor, t: Tensor, out: Tensor, parameterization: str) -> Tensor:
    """The library's answer to the chapter 5 exercise: x0_hat from a network output of any parameterisation."""
    return to_x0_eps(sched, x_t, t, out, parameterization)[0]


_TO_X0_HINTS = {
    "eps": "For eps: x0_hat = (x_t - sqrt(1 - bar alpha_t) eps_hat) / sqrt(bar alpha_t).",
    "x0": "For x0: the network output is x0_hat itself.",
    "v": "For v: x0_hat = sqrt(bar alpha_t) x_t - sqrt(1 - bar alpha_t) v_hat (the rotation, inverted).",
    "score": "For score: eps_hat = -sqrt(1 - bar alpha_t) score_hat, then as for eps.",
}


def check_to_x0(fn: Callable) -> str | None:
    """Check ``fn(sched, x_t, t, out, parameterization) -> x0_hat`` for eps, x0, v and score.

    Uses the paper's linear schedule (T = 1000) and steps from the first (index 0) to the last (999).
    """
    name = "to_x0"
    sched = Schedule.linear(1000)
    g = torch.Generator().manual_seed(5)
    t = torch.tensor([0, 1, 10, 250, 600, 999])
    x_t = torch.randn(6, 2, generator=g, dtype=torch.float64)
    out = torch.randn(6, 2, generator=g, dtype=torch.float64)
    ab, a = sched.at("alpha_bar", t, x_t), sched.at("alpha", t, x_t)
    for p in PARAMETERIZATIONS:
        ok, got = _call(fn, name, sched, x_t, t, out, p)
        if not ok:
            return None
        expected = to_x0_reference(sched, x_t, t, out, p)
        mistakes = {
            "you used alpha_t = 1 - beta_t where bar alpha_t (the cumulative product) belongs": _with_table(
                x_t, out, a, p
            ),
            "a sign is flipped (check the sign in front of the noise or v term)": _with_table(x_t, -out, ab, p),
            "you returned the network output unchanged (that is right only for the x0 parameterisation)": out,
        }
        if p == "x0":
            mistakes.pop("you returned the network output unchanged (that is right only for the x0 parameterisation)")
        _diagnose(f"{name} ({p!r} parameterisation)", got, expected, mistakes, _TO_X0_HINTS[p], 1e-5, 1e-4)
    msg = f"{name}: correct for all four parameterisations ({', '.join(PARAMETERIZATIONS)})"
    print(msg)
    return msg


def _with_table(x_t: Tensor, out: Tensor, ab: Tensor, p: str) -> Tensor:
    """x0_hat computed with an arbitrary table in place of bar alpha (to recognise mistakes)."""
    if p == "eps":
        return (x_t - (1 - ab).sqrt() * out) / ab.sqrt()
    if p == "x0":
        return out
    if p == "v":
        return ab.sqrt() * x_t - (1 - ab).sqrt() * out
    return (x_t + (1 - ab) * out) / ab.sqrt()


# --- chapter 6: the schedule ----------------------------------------------------------------------
def cosine_alpha_bar_reference(T: int, s: float = 0.008) -> Tensor:
    """The library's cosine bar alpha_1..bar alpha_T (beta clipped at 0.999, as Nichol & Dhariwal do)."""
    return Schedule.cosine(T, s).alpha_bar


def _cos_f(t: Tensor, T: int, s: float, square: bool = True) -> Tensor:
    c = torch.cos((t / T + s) / (1 + s) * math.pi / 2)
    return c**2 if square else c


def check_cosine_alpha_bar(fn: Callable) -> str | None:
    """Check ``fn(T, s) -> bar alpha`` of shape (T,) for the paper's t = 1..T (index 0 is t = 1).

    The library clips each beta at 0.999, which changes only the last value (by less than 1e-4);
    the unclipped closed form f(t)/f(0) is accepted too.
    """
    name = "cosine_alpha_bar"
    for T, s in [(10, 0.008), (1000, 0.008), (50, 0.1)]:
        ok, got = _call(fn, name, T, s)
        if not ok:
            return None
        t = torch.arange(1, T + 1, dtype=torch.float64)
        f0 = _cos_f(torch.zeros(()), T, s)
        mistakes = {
            "you used t = 0, ..., T-1 where the paper's t = 1, ..., T belongs (your first value is 1)": _cos_f(
                t - 1, T, s
            )
            / f0,
            "you forgot to divide by f(0)": _cos_f(t, T, s),
            "you forgot to square the cosine": _cos_f(t, T, s, square=False) / _cos_f(torch.zeros(()), T, s, False),
            "you left out the offset s": _cos_f(t, T, 0.0),
        }
        _diagnose(
            f"{name} (T={T}, s={s})",
            got,
            cosine_alpha_bar_reference(T, s),
            mistakes,
            "bar alpha_t = f(t)/f(0) with f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), t = 1..T.",
            1e-4,
            1e-6,
        )
    msg = f"{name}: correct for T = 10, 1000, 50 and s = 0.008, 0.1"
    print(msg)
    return msg


# --- chapter 7: a DDIM step -----------------------------------------------------------------------
def ddim_step_reference(
    x_t: Tensor,
    eps_hat: Tensor,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    eta: float = 0.0,
    noise: Tensor | None = None,
) -> Tensor:
    """The library's DDIM update (samplers.ddim_step) written in terms of the two bar alphas.

    ``alpha_bar_prev = 1`` means the step to x_0.
    """
    if alpha_bar_prev >= 1.0:
        sched, t, t_prev = Schedule.from_alpha_bar([alpha_bar_t]), 0, -1
    else:
        sched, t, t_prev = Schedule.from_alpha_bar([alpha_bar_prev, alpha_bar_t]), 1, 0
    B = x_t.shape[0]
    x_prev, _ = ddim_step(sched, x_t, torch.full((B,), t), torch.full((B,), t_prev), eps_hat, noise, eta=eta)
    return x_prev


def check_ddim_step(fn: Callable) -> str | None:
    """Check ``fn(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, eta=0.0, noise=None) -> x_prev``.

    Cases: deterministic steps (eta = 0) in the middle of the chain and to x_0, then eta = 1 and 0.5.
    """
    name = "ddim_step"
    sched = Schedule.linear(1000)
    g = torch.Generator().manual_seed(7)
    x_t = torch.randn(5, 2, generator=g, dtype=torch.float64)
    eps_hat = torch.randn(5, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(5, 2, generator=g, dtype=torch.float64)
    ab = sched.alpha_bar
    cases = [
        (f"eta=0, from t={i + 1} to t={j + 1}", float(ab[i]), float(ab[j]), 0.0) for i, j in [(500, 480), (80, 20)]
    ]
    cases.append(("eta=0, last step to x_0 (bar alpha_prev = 1)", float(ab[19]), 1.0, 0.0))
    cases += [(f"eta={eta}, from t=501 to t=481", float(ab[500]), float(ab[480]), eta) for eta in (1.0, 0.5)]
    for label, a_t, a_prev, eta in cases:
        ok, got = _call(fn, name, x_t.clone(), eps_hat.clone(), a_t, a_prev, eta=eta, noise=noise.clone())
        if not ok:
            return None
        expected = ddim_step_reference(x_t, eps_hat, a_t, a_prev, eta=eta, noise=noise)
        x0_hat = (x_t - math.sqrt(1 - a_t) * eps_hat) / math.sqrt(a_t)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        swapped = _ddim_plain(x_t, eps_hat, a_prev, a_t, eta, noise) if a_prev < 1 else x_t * float("nan")
        no_sigma = math.sqrt(a_prev) * x0_hat + math.sqrt(1 - a_prev) * eps_hat + sigma * noise
        no_noise = math.sqrt(a_prev) * x0_hat + math.sqrt(max(0.0, 1 - a_prev - sigma**2)) * eps_hat
        mistakes = {
            "you left sigma^2 out of the direction term: it should be sqrt(1 - bar alpha_prev - sigma^2) eps_hat": (
                no_sigma
            ),
            "you forgot the fresh noise sigma z (needed when eta > 0)": no_noise,
            "you swapped bar alpha_t and bar alpha_prev": swapped,
            "you returned x0_hat instead of x_prev": x0_hat,
        }
        hint = (
            "x0_hat = (x_t - sqrt(1 - ab_t) eps_hat)/sqrt(ab_t); sigma = eta sqrt((1 - ab_prev)/(1 - ab_t)) "
            "sqrt(1 - ab_t/ab_prev); x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat "
            "+ sigma z (Song et al. 2021, eq. 12 and 16)."
        )
        _diagnose(f"{name} ({label})", got, expected, mistakes, hint, 1e-6, 1e-5)
    msg = f"{name}: correct for eta = 0 (including the last step to x_0), eta = 1 and eta = 0.5"
    print(msg)
    return msg


def _ddim_plain(x_t, eps_hat, a_t, a_prev, eta, noise):
    x0_hat = (x_t - math.sqrt(1 - a_t) * eps_hat) / math.sqrt(a_t)
    sigma2 = eta**2 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    return (
        math.sqrt(a_prev) * x0_hat
        + math.sqrt(max(0.0, 1 - a_prev - sigma2)) * eps_hat
        + math.sqrt(max(0.0, sigma2)) * noise
    )
