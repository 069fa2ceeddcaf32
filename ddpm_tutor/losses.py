"""Training losses and the variational bound in bits per dimension.

Ho et al. 2020, eq. 5 (the bound L = L_T + sum L_{t-1} + L_0), eq. 14 (L_simple), sec. 3.3 (decoder).
Shapes: data x0 is (B, ...); per-example results are (B,).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Literal

import torch

from .checks import device_arg, generator_arg, image_range
from .diffusion import VarType, as_denoiser, check_model_out, q_mean_variance, q_sample, reverse_variance, target_for
from .schedules import Schedule

Tensor = torch.Tensor
Weighting = Literal["simple", "x0", "min_snr", "vlb"]
WEIGHTINGS = ("simple", "x0", "min_snr", "vlb")


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch: (B, ...) -> (B,) (empty for an empty batch)."""
    return x.reshape(x.shape[0], -1 if x.numel() else 0).mean(dim=1)


def small_t_of(small_t_frac: float, T: int) -> int:
    """The nearly clean steps of a mixture (see `sample_t`) as a count: the first small_t_frac of the chain's T
    steps, at least one (the first 5% is 50 steps of 1000, 1 of 20)."""
    if isinstance(small_t_frac, bool) or not isinstance(small_t_frac, numbers.Real) or not 0 < small_t_frac <= 1:
        raise ValueError(f"small_t_frac must lie in (0, 1] (a share of the chain's steps), got {small_t_frac!r}")
    return max(1, round(small_t_frac * T))


def check_small_t(p_small: float, small_t: int, T: int | None = None) -> None:
    """Refuse a mixture of steps (see `sample_t`) that is not one: p_small outside [0, 1), small_t not in 1..T."""
    if isinstance(p_small, bool) or not isinstance(p_small, numbers.Real) or not 0 <= p_small < 1:
        raise ValueError(f"p_small_t must lie in [0, 1) (0: t uniform), got {p_small!r}")
    if isinstance(small_t, bool) or not isinstance(small_t, numbers.Integral) or small_t < 1:
        raise ValueError(f"small_t must be an integer >= 1 (the steps 0..small_t-1), got {small_t!r}")
    if T is not None and p_small > 0 and small_t > T:  # unused at p_small = 0 (the default 50 of a 10-step chain)
        raise ValueError(
            f"small_t must be at most T = {T} (the steps 0..small_t-1 are steps of the chain), got {small_t}"
        )


def sample_t(
    batch: int,
    T: int,
    generator: torch.Generator | None = None,
    device=None,
    *,
    p_small: float = 0.0,
    small_t: int = 50,
) -> Tensor:
    """Steps (batch,): uniform on 0..T-1 (Ho et al. 2020, Algorithm 1, line 3), or with ``p_small`` > 0 a mixture:
    with probability p_small uniform on the nearly clean steps 0..small_t-1, else uniform on 0..T-1.

    The loss is not reweighted for the mixture, so the objective changes: in expectation every step's loss counts
    T p(t) times its count under uniform t, i.e. 1 - p_small + p_small T / small_t on t < small_t and 1 - p_small
    above (with 0.3 and 50 of 1000: 6.7 and 0.7). The nearly clean steps are where the variational bound's terms
    are largest (Ho et al. 2020, eq. 5), so the mixture buys bits/dim with training signal taken from the noisy
    steps. With p_small = 0 the draw is exactly the uniform one (the same numbers from the same generator).
    """
    generator = generator_arg(generator)
    check_small_t(p_small, small_t, T)
    dev = None if device is None else device_arg(device)
    t = torch.randint(0, T, (batch,), generator=generator, device=dev)
    if p_small == 0:
        return t
    small = torch.randint(0, small_t, (batch,), generator=generator, device=dev)
    pick = torch.rand(batch, generator=generator, device=dev) < p_small
    return torch.where(pick, small, t)


def check_min_snr_gamma(gamma) -> float:
    """Return gamma of the min_snr weighting if it is a real number > 0 (inf allowed: the eps error unweighted);
    a negative one would give negative weights."""
    real = isinstance(gamma, numbers.Real) and not isinstance(gamma, bool)
    if not (real and gamma > 0):  # NaN fails the comparison
        raise ValueError(f"min_snr_gamma must be a number > 0 (inf allowed), got {gamma!r}")
    return float(gamma)


def eps_weight(
    sched: Schedule,
    t: Tensor,
    x: Tensor,
    weighting: Weighting,
    var_type: VarType = "fixed_small",
    min_snr_gamma: float = 5.0,
) -> Tensor:
    """Weight w_t on the per-pixel eps error ||eps - eps_hat||^2 for each weighting.

    Since ||eps - eps_hat||^2 = SNR(t) ||x_0 - x0_hat||^2, every weighting is an SNR weighting:
    simple: 1, i.e. the x_0 error weighted by SNR(t) (L_simple, Ho et al. 2020, eq. 14);
    x0: 1/SNR(t), i.e. the plain x_0 error (Turner et al. 2024, sec. 3);
    min_snr: min(SNR, gamma)/SNR, the x_0 error weighted by min(SNR, gamma) (Hang et al. 2023; gamma = inf is
    simple);
    vlb: beta_t^2 / (2 sigma_t^2 alpha_t (1 - bar alpha_t)), the true bound's weight (Ho et al. 2020, eq. 12).
    Returns (B, 1, ..., 1), in x's dtype but float32 at least (1/SNR and beta_t^2 overflow or underflow float16).
    """
    check_min_snr_gamma(min_snr_gamma)
    if not torch.is_tensor(x) or not x.is_floating_point():
        got = f"dtype {x.dtype}" if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x must be a floating-point tensor of shape (B, ...), got {got}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    x = x if x.dtype == dtype else torch.empty((), dtype=dtype, device=x.device).expand(x.shape)  # no copy of x
    snr = sched.at("snr", t, x)
    if weighting == "simple":
        return torch.ones_like(snr)
    if weighting == "x0":
        return 1.0 / snr
    if weighting == "min_snr":
        return snr.clamp(max=min_snr_gamma) / snr
    if weighting == "vlb":
        # the clipped variance: beta_tilde is 0 at the first step, where the bound has the decoder L_0 instead
        _, log_var = reverse_variance(sched, t, x, var_type)
        var = log_var.exp()
        beta, alpha, ab = sched.at("beta", t, x), sched.at("alpha", t, x), sched.at("alpha_bar", t, x)
        return beta**2 / (2.0 * var * alpha * (1.0 - ab))
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def diffusion_loss(
    model: Callable[[Tensor, Tensor], Tensor],
    sched: Schedule,
    x0: Tensor,
    *,
    generator: torch.Generator | None = None,
    weighting: Weighting = "simple",
    t: Tensor | None = None,
    eps: Tensor | None = None,
    min_snr_gamma: float = 5.0,
    check_data: bool = True,
) -> Tensor:
    """Per-example training loss at a random step (B,): Algorithm 1 of Ho et al. 2020, generalised.

    ``model``: a :class:`~ddpm_tutor.diffusion.Denoiser` (its parameterisation says what the network predicts;
    labels fixed by ``with_labels``) or a plain eps model. With weighting "simple" and any parameterisation the
    loss is the plain mean squared error of the network's own target (eps, x0, v or score). Other weightings
    are stated on the eps error ||eps - eps_hat||^2, whatever the network predicts, so that the same weighting
    means the same objective for every parameterisation (Turner et al. 2024, sec. 3 and 5).
    ``check_data=False`` skips the check that x0 is finite, for a caller that checked its data set once: on a
    GPU that check makes the CPU wait for the device at every call.
    """
    generator = generator_arg(generator)
    if not isinstance(sched, Schedule):
        raise ValueError(f"sched must be a Schedule (e.g. Schedule.linear(1000)), got {type(sched).__name__}")
    if not isinstance(x0, Tensor) or x0.ndim < 2:
        raise ValueError(f"x0 must be a batch of shape (B, D, ...), got {getattr(x0, 'shape', type(x0))}")
    if not x0.is_floating_point():
        raise ValueError(f"x0 must be a floating-point tensor (e.g. x.float() / 127.5 - 1), got dtype {x0.dtype}")
    if x0.numel() == 0 and x0.shape[0] > 0:
        raise ValueError(f"x0 must hold at least one value per example, got shape {tuple(x0.shape)}")
    if check_data and not bool(torch.isfinite(x0).all()):
        raise ValueError(f"x0 must be finite, but it holds {int((~torch.isfinite(x0)).sum())} NaN/inf values")
    if weighting not in WEIGHTINGS:  # before the network runs
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    B = x0.shape[0]
    if t is None:
        t = sample_t(B, sched.T, generator, x0.device)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    den = as_denoiser(model, sched)
    x_t = q_sample(sched, x0, t, eps)
    out = check_model_out(den.model_out(x_t, t), x_t)  # (B, 1) against (B, 2) would broadcast
    if weighting == "simple":
        return mean_flat((out - target_for(sched, x0, t, eps, den.parameterization)) ** 2)
    _, eps_hat = den.predict(x_t, t, out)
    w = eps_weight(sched, t, x0, weighting, min_snr_gamma=min_snr_gamma)
    return mean_flat(w * (eps - eps_hat) ** 2)


def l_simple(model, sched: Schedule, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """L_simple = E_{t, eps} ||eps - eps_theta(x_t, t)||^2, mean over pixels (Ho et al. 2020, eq. 14). Returns (B,)."""
    generator = generator_arg(generator)
    return diffusion_loss(model, sched, x0, generator=generator, weighting="simple")


# --- the variational bound --------------------------------------------------------------------
def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats (broadcasting)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x: Tensor) -> Tensor:
    return torch.special.ndtr(x)


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log p(x) of data on 256 levels in [-1, 1] under a Gaussian integrated over each bin.

    Ho et al. 2020, eq. 13: bins of width 2/255 around each level; the outermost bins extend to
    -inf and +inf so the 256 probabilities sum to 1. x must hold the levels -1 + 2k/255.
    Returns per-element log-probabilities in nats.
    """
    if x.shape != mean.shape:
        raise ValueError(f"x and mean must have the same shape, got {tuple(x.shape)} and {tuple(mean.shape)}")
    check_image_range(x)
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12)))
    )


def check_image_range(x: Tensor) -> None:
    """Refuse data outside [-1, 1] (images must be scaled by x/127.5 - 1 first), with 1e-6 of slack for round-off."""
    image_range(x, "data", tol=1e-6)


def prior_bpd(sched: Schedule, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) in bits per dimension (B,). Ho et al. 2020, eq. 5."""
    t = torch.full((x0.shape[0],), sched.T - 1, dtype=torch.long, device=x0.device)
    mean, var = q_mean_variance(sched, x0, t)
    kl = normal_kl(mean, torch.log(var).expand_as(mean), torch.zeros_like(mean), torch.zeros_like(mean))
    return mean_flat(kl) / math.log(2.0)


def bits_per_dim(
    model,
    sched: Schedule,
    x0: Tensor,
    *,
    var_type: VarType = "fixed_small",
    clip_x0: bool = False,
    n_terms: int | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    """The negative variational bound of 8-bit images in bits per dimension (Ho et al. 2020, eq. 5, Table 2).

    :func:`ddpm_tutor.bound.vlb` for one variance choice: all T terms (``n_terms=None``), or L_T and L_0 exactly
    and the rest by stratified sampling of n_terms - 1 steps (unbiased). x0: (B, ...) on the 256 levels of
    [-1, 1]. Returns dict(total (B,), prior (B,), terms (B, T) with NaN where a step was not drawn, n_terms,
    se_steps, se_images, se).
    """
    generator = generator_arg(generator)
    from .bound import vlb  # bound builds on this module

    r = vlb(model, sched, x0, k=n_terms, var_types=(var_type,), generator=generator, clip_x0=clip_x0)
    terms = torch.full((x0.shape[0], sched.T), float("nan"), dtype=torch.float64)
    terms[:, r["steps"]] = r[var_type]["terms"]
    return {
        "terms": terms,
        "prior": r["prior"],
        "n_terms": len(r["steps"]),
        **{key: r[var_type][key] for key in ("total", "se_steps", "se_images", "se")},
    }
