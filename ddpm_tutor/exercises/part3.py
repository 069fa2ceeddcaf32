"""Self-checks for Part III (images): the U-Net's residual block, DDIM, bits/dim, classifier-free guidance.

Every ``check_*`` here follows the protocol of :mod:`ddpm_tutor.exercises`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._check import CheckFailed, check_close
from ._check import attempt as _call

Tensor = torch.Tensor

__all__ = [
    "check_resblock_params",
    "check_ddim_step",
    "check_prior_bpd",
    "check_guided_eps",
    "resblock_params_reference",
    "ddim_step_reference",
    "prior_bpd_reference",
    "guided_eps_reference",
]


# --- chapter 1: parameters of a residual block ----------------------------------------------------------
def resblock_params_reference(in_ch: int, out_ch: int, temb_dim: int) -> int:
    """Parameters of the U-Net's ResBlock, counted on the module itself."""
    from ..models.unet import ResBlock

    block = ResBlock(in_ch, out_ch, temb_dim, dropout=0.0, groups=min(8, in_ch, out_ch))
    return sum(p.numel() for p in block.parameters())


def check_resblock_params(fn: Callable[[int, int, int], int]) -> str | None:
    """``fn(in_ch, out_ch, temb_dim)`` -> the number of parameters of one residual block."""
    cases = [(32, 32, 128), (32, 64, 128), (64, 32, 128), (128, 256, 512)]
    for in_ch, out_ch, temb in cases:
        ok, got = _call(fn, "resblock_params", in_ch, out_ch, temb)
        if not ok:
            return None
        want = resblock_params_reference(in_ch, out_ch, temb)
        if got != want:
            hint = ""
            skip = in_ch * out_ch + out_ch if in_ch != out_ch else 0
            if got == want - skip:
                hint = " You left out the 1x1 shortcut conv, present when the channel count changes."
            elif got == want - 2 * in_ch - 2 * out_ch:
                hint = " You left out the two GroupNorms' scale and shift."
            elif got == want - (temb * out_ch + out_ch):
                hint = " You left out the projection of the time embedding."
            raise CheckFailed(f"resblock_params({in_ch}, {out_ch}, {temb}): got {got}, expected {want}.{hint}")
    msg = f"resblock_params: correct on {len(cases)} block shapes"
    print(msg)
    return msg


# --- chapter 2: one deterministic DDIM step -------------------------------------------------------------
def ddim_step_reference(alpha_bar_t: Tensor, alpha_bar_prev: Tensor, x_t: Tensor, eps_hat: Tensor) -> Tensor:
    """x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev) eps_hat, x0_hat = (x_t - sqrt(1 - ab) eps_hat) / sqrt(ab)."""
    x0 = (x_t - (1 - alpha_bar_t).sqrt() * eps_hat) / alpha_bar_t.sqrt()
    return alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev).sqrt() * eps_hat


def _ddim_cases():
    from ..samplers import ddim_step
    from ..schedules import Schedule

    sched = Schedule.linear(1000)
    g = torch.Generator().manual_seed(0)
    for t, t_prev in ((999, 949), (500, 480), (20, 0)):
        x_t = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)
        eps = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)
        tt, tp = torch.full((4,), t), torch.full((4,), t_prev)
        want, _ = ddim_step(sched, x_t, tt, tp, eps, None, eta=0.0)
        yield t, t_prev, sched.alpha_bar[t], sched.alpha_bar[t_prev], x_t, eps, want


def check_ddim_step(fn: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]) -> str | None:
    """``fn(alpha_bar_t, alpha_bar_prev, x_t, eps_hat)`` -> x_prev of DDIM with eta = 0."""
    for t, t_prev, ab, ab_prev, x_t, eps, want in _ddim_cases():
        ok, got = _call(fn, "ddim_step", ab, ab_prev, x_t, eps)
        if not ok:
            return None
        name = f"ddim_step (t index {t} -> {t_prev})"
        try:
            check_close(name, got, want, atol=1e-8, rtol=1e-6)
        except CheckFailed as err:
            x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
            if torch.allclose(torch.as_tensor(got, dtype=torch.float64), x0, atol=1e-6):
                raise CheckFailed(
                    f"{err} You returned x0_hat: add back the noise direction sqrt(1 - alpha_bar_prev) eps_hat."
                ) from None
            raise
    msg = "ddim_step: correct on 3 steps (matches ddpm_tutor.samplers.ddim_step with eta = 0)"
    print(msg)
    return msg


# --- chapter 3: the prior term in bits/dim --------------------------------------------------------------
def prior_bpd_reference(alpha_bar_T: Tensor, x0: Tensor) -> Tensor:
    """KL(q(x_T | x_0) || N(0, I)) per image, in bits per dimension, (B,)."""
    mean, var = alpha_bar_T.sqrt() * x0, (1 - alpha_bar_T)
    kl = 0.5 * (var + mean**2 - 1 - torch.log(var))
    return kl.flatten(1).mean(1) / math.log(2)


def check_prior_bpd(fn: Callable[[Tensor, Tensor], Tensor]) -> str | None:
    """``fn(alpha_bar_T, x0)`` -> the prior term KL(q(x_T|x_0) || N(0, I)) in bits/dim per image."""
    from ..losses import prior_bpd
    from ..schedules import Schedule

    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 256, (3, 1, 4, 4), generator=g).double() / 127.5 - 1
    for sched in (Schedule.linear(1000), Schedule.linear(1000, beta_T=0.002)):
        ok, got = _call(fn, "prior_bpd", sched.alpha_bar[-1], x0)
        if not ok:
            return None
        want = prior_bpd(sched, x0)
        try:
            check_close("prior_bpd", got, want, atol=1e-12, rtol=1e-6)
        except CheckFailed as err:
            nats = want * math.log(2)
            if torch.allclose(torch.as_tensor(got, dtype=torch.float64), nats, rtol=1e-6, atol=1e-15):
                raise CheckFailed(f"{err} Your answer is in nats: divide by ln 2.") from None
            raise
    msg = "prior_bpd: correct for two schedules (matches ddpm_tutor.losses.prior_bpd)"
    print(msg)
    return msg


# --- chapter 4: classifier-free guidance ----------------------------------------------------------------
def guided_eps_reference(eps_cond: Tensor, eps_uncond: Tensor, w: float) -> Tensor:
    """(1 + w) eps(x_t, y) - w eps(x_t) (Ho & Salimans 2022, eq. 6)."""
    return (1 + w) * eps_cond - w * eps_uncond


def check_guided_eps(fn: Callable[[Tensor, Tensor, float], Tensor]) -> str | None:
    """``fn(eps_cond, eps_uncond, w)`` -> the guided noise prediction."""
    g = torch.Generator().manual_seed(0)
    ec, eu = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    for w in (0.0, 1.0, 3.5):
        ok, got = _call(fn, "guided_eps", ec, eu, w)
        if not ok:
            return None
        try:
            check_close(f"guided_eps (w = {w})", got, guided_eps_reference(ec, eu, w))
        except CheckFailed as err:
            if torch.allclose(torch.as_tensor(got), w * ec + (1 - w) * eu, atol=1e-6):
                raise CheckFailed(
                    f"{err} That is the interpolation w eps_c + (1 - w) eps_u; this book's w "
                    "is Ho & Salimans' (w = 0 is the plain conditional model)."
                ) from None
            raise
    msg = "guided_eps: correct for w = 0, 1, 3.5"
    print(msg)
    return msg
