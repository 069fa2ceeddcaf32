"""The variational bound: one term, and one loop that sums or estimates all of them.

Ho et al. 2020, eq. 5: -log p(x_0) <= L = L_T + sum_{t=2}^T L_{t-1} + L_0, with
L_T = KL(q(x_T|x_0) || N(0, I)), L_{t-1} = KL(q(x_{t-1}|x_t, x_0) || p(x_{t-1}|x_t)) and
L_0 = -log p(x_0|x_1), each term in expectation over x_t ~ q(x_t|x_0) (one draw per term and example here).
Code index i is the paper's step t = i + 1 (see :mod:`ddpm_tutor.schedules`): term i >= 1 is L_i, the KL at
step index i, and term 0 is the decoder L_0. The decoder is either the discretised Gaussian of Ho et al.
(sec. 3.3, eq. 13; 8-bit images on 256 levels in [-1, 1]: a code length) or the Gaussian density
N(x_0; mu_theta(x_1, 1), sigma_1^2) (continuous data: a bound on a density, the view of Kingma et al. 2021).
Terms are in nats per dimension; ``units="bpd"`` divides by ln 2 (bits/dim, Ho et al. 2020, Table 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .checks import flag, generator_arg
from .diffusion import VAR_TYPES, as_denoiser, check_model_out, p_mean_variance, q_posterior, q_sample
from .elbo import gaussian_log_likelihood, prior_kl
from .losses import check_image_range, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .schedules import Schedule

Tensor = torch.Tensor
UNITS = {"nats": 1.0, "bpd": 1.0 / math.log(2.0)}  # nats per dim -> units per dim
DECODERS = ("discretized", "continuous")


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def check_levels(x: Tensor) -> None:
    """Refuse data that is not on the 256 levels -1 + 2k/255 of [-1, 1] (what the discretised decoder scores).

    A level may be off by 1e-3 of the spacing, or by float16's rounding of it (0.03 of the spacing near 1);
    bfloat16 is refused: near 1 it rounds to steps as large as the spacing, so its levels are not told apart."""
    check_image_range(x)
    if x.dtype == torch.bfloat16:
        raise ValueError(
            "the discretised decoder needs data in float16 or wider: bfloat16 rounds values near 1 to steps of "
            "0.0078, the spacing of the 256 levels, so it cannot hold them; pass x0.float()"
        )
    if x.numel() == 0:
        return
    off = ((x.double() + 1) * 127.5 - ((x.double() + 1) * 127.5).round()).abs().max()
    if off > max(1e-3, 127.5 * torch.finfo(x.dtype).eps / 2):  # eps / 2: the largest rounding error in [-1, 1]
        raise ValueError(
            f"the discretised decoder needs data on the 256 levels of [-1, 1] (8-bit images scaled "
            f"by x/127.5 - 1), got a value {off.item():.3g} of a level off the grid; use "
            f"decoder='continuous' for continuous data"
        )


def vlb_term(
    model,
    sched: Schedule,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    *,
    var_type: str = "fixed_small",
    decoder: str = "discretized",
    clip_x0: bool = False,
    model_out: Tensor | None = None,
) -> Tensor:
    """One term of the bound in nats per dimension, (B,): L_{t-1} where t > 0, L_0 where t == 0.

    L_{t-1} = KL(q(x_{t-1}|x_t, x_0) || N(mu_theta(x_t, t), sigma_t^2 I)) (Ho et al. 2020, eq. 5);
    L_0 = -log p(x_0|x_1) with the discretised decoder (eq. 13) or the Gaussian density, both with mean
    mu_theta(x_1, 1) and the clipped width sigma_1^2 = beta_tilde_2 (see ``reverse_variance``).
    ``model``: a Denoiser or a plain eps model; ``model_out``, if given, its output at (x_t, t), so that several
    variance choices can share one forward pass. x0, x_t: (B, ...); t: (B,) step indices.
    """
    _check_choice("decoder", decoder, DECODERS)
    flag(clip_x0, "clip_x0")
    p = p_mean_variance(model, sched, x_t, t, var_type=var_type, clip_x0=clip_x0, model_out=model_out)
    mu_tilde, _, log_bt = q_posterior(sched, x0, x_t, t)
    out = mean_flat(normal_kl(mu_tilde, log_bt, p["mean"], p["log_variance"]))
    first = t == 0
    if first.any():  # the decoder replaces the KL where t == 0
        x, mean, log_var = x0[first], p["mean"][first], p["log_variance"].expand_as(x0)[first]
        if decoder == "discretized":
            check_levels(x)
            log_p = discretized_gaussian_log_likelihood(x, mean, 0.5 * log_var)
        else:
            log_p = gaussian_log_likelihood(x, mean, log_var)
        out = out.clone()
        out[first] = -mean_flat(log_p).to(out.dtype)
    return out


def strata(T: int, k: int) -> Tensor:
    """Boundaries b_0 = 1 < b_1 < ... < b_{k-1} = T of the k - 1 strata [b_{h-1}, b_h) of the steps 1..T-1.

    b_h = 1 + floor(h (T - 1) / (k - 1)): contiguous strata whose sizes N_h = b_h - b_{h-1} differ by at most one.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not min(2, T) <= k <= T:
        raise ValueError(f"k (terms evaluated) must be an integer in {min(2, T)}..{T} for T = {T}, got {k!r}")
    if T == 1:
        return torch.ones(1, dtype=torch.long)
    return 1 + torch.arange(k) * (T - 1) // (k - 1)


def draw_steps(T: int, k: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The k step indices the estimator evaluates and their weights, both (k,).

    Step 0 (L_0, weight 1), then one step s_h drawn uniformly from each stratum of :func:`strata`, weight N_h.
    At k = T every stratum is one step: all steps, weight 1, and the generator is not used.
    """
    generator = generator_arg(generator)
    b = strata(T, k)
    sizes = b[1:] - b[:-1]
    if k == T:
        return torch.arange(T), torch.ones(T, dtype=torch.float64)
    u = torch.rand(k - 1, generator=generator, dtype=torch.float64)
    s = b[:-1] + torch.minimum((u * sizes).long(), sizes - 1)
    return torch.cat([torch.zeros(1, dtype=torch.long), s]), torch.cat([torch.ones(1), sizes]).double()


def stratified_estimate(terms: Tensor, weights: Tensor, prior: Tensor | float = 0.0) -> dict:
    """The bound from the terms at the drawn steps: hat L = L_T + L_0 + sum_h N_h L_{s_h}, with standard errors.

    ``terms`` (B, k): column 0 is L_0, column h the term at the step s_h drawn in stratum h (the same steps for
    every example), ``weights`` (k,) = (1, N_1, ..., N_{k-1}) from :func:`draw_steps`, ``prior`` L_T, (B,).

    Unbiased: E[N_h L_{s_h}] = sum_{s in stratum h} L_s, so E hat L is the full sum of eq. 5. Its variance over
    the steps, sum_h N_h^2 sigma_h^2 (sigma_h^2 the variance of the terms within stratum h), needs two draws per
    stratum; with one, adjacent strata are collapsed into groups g of m = 2 (3 for the last if k - 1 is odd),
    and with Y_h = N_h L_{s_h} (averaged over the batch)

        v = sum_g m / (m - 1) sum_{h in g} (Y_h - mean_g Y)^2,

    the "collapsed strata" estimator (Cochran 1977, Sampling Techniques, 3rd ed., ch. 5A, strata with one unit
    each). E v = sum_h N_h^2 sigma_h^2 + sum_g m / (m - 1) sum_{h in g} (E Y_h - mean_g E Y)^2: conservative,
    by the spread of the true stratum sums within each group. Strata of one step are exact; a group of
    only those adds 0, so k = T has error 0; a single stratum of several steps (k = 2) gives NaN.
    Returns dict(total (B,) float64, mean (float, over the batch), se_steps (over the choice of steps,
    sqrt v), se_images (std of total / sqrt B) and se = sqrt(se_steps^2 + se_images^2)).
    """
    terms = torch.as_tensor(terms, dtype=torch.float64)
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if terms.ndim != 2 or weights.shape != terms.shape[1:]:
        raise ValueError(f"terms must be (B, k) and weights (k,), got {tuple(terms.shape)} and {tuple(weights.shape)}")
    total = torch.as_tensor(prior, dtype=torch.float64) + terms @ weights
    Y, N = weights[1:] * terms[:, 1:].mean(0), weights[1:]
    H = len(Y)
    groups = [[h, h + 1] for h in range(0, H - 1, 2)]  # adjacent strata: the terms vary smoothly with t
    if H % 2 and H > 1:
        groups[-1].append(H - 1)
    if H == 1:
        var = 0.0 if N[0] == 1 else float("nan")
    else:
        var = sum(float(len(g) / (len(g) - 1) * ((Y[g] - Y[g].mean()) ** 2).sum()) for g in groups if (N[g] > 1).any())
    B = terms.shape[0]
    se_images = float(total.std()) / math.sqrt(B) if B > 1 else float("nan")
    se_steps = math.sqrt(var)
    return {
        "total": total,
        "mean": float(total.mean()),
        "se_steps": se_steps,
        "se_images": se_images,
        "se": math.sqrt(se_steps**2 + se_images**2),
    }


@torch.no_grad()
def vlb(
    model,
    sched: Schedule,
    x0: Tensor,
    *,
    k: int | None = None,
    var_types: Sequence[str] = ("fixed_small",),
    decoder: str = "discretized",
    units: str = "bpd",
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
) -> dict:
    """The bound of eq. 5 (Ho et al. 2020) for each example: all T terms (``k=None`` or T), or L_T and L_0 exactly
    and the other T - 1 terms by stratified sampling of k - 1 steps (:func:`draw_steps`, :func:`stratified_estimate`).

    ``model``: a :class:`~ddpm_tutor.diffusion.Denoiser` (labels fixed by ``with_labels`` or ``unconditional``) or
    a plain eps model. The network runs once per drawn step; every variance choice in ``var_types`` is scored on
    that output and on the same noise (a paired comparison). ``units``: "bpd" (bits/dim) or "nats" (per dim).
    ``decoder``: "discretized" (x0 on the 256 levels of [-1, 1]) or "continuous". x0: (B, ...) float.
    Returns dict(steps (k,), weights (k,), prior (B,), and for each var_type a dict with terms (B, k) and the
    entries of :func:`stratified_estimate`), all float64 on the CPU.
    """
    generator = generator_arg(generator)
    _check_choice("units", units, UNITS)
    _check_choice("decoder", decoder, DECODERS)
    if not isinstance(x0, Tensor) or x0.ndim < 1 or not x0.is_floating_point():
        raise ValueError(
            f"x0 must be a float tensor of shape (B, ...), got {getattr(x0, 'dtype', type(x0))} "
            f"{tuple(getattr(x0, 'shape', ()))}"
        )
    if x0.shape[0] == 0:
        raise ValueError(f"x0 must hold at least one example, got shape {tuple(x0.shape)}")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 must be finite, got NaN or inf")
    if decoder == "discretized":
        check_levels(x0)
    flag(clip_x0, "clip_x0")
    var_types = (var_types,) if isinstance(var_types, str) else tuple(var_types)
    if not var_types or any(v not in VAR_TYPES for v in var_types):
        raise ValueError(f"var_types must name one or more of {VAR_TYPES}, got {var_types!r}")
    steps, weights = draw_steps(sched.T, sched.T if k is None else k, generator)
    B, scale = x0.shape[0], UNITS[units]
    den = as_denoiser(model, sched)
    terms = {v: torch.empty(B, len(steps), dtype=torch.float64) for v in var_types}
    for j, step in enumerate(steps.tolist()):
        t = torch.full((B,), step, dtype=torch.long, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x_t = q_sample(sched, x0, t, eps)
        out = check_model_out(den.model_out(x_t, t), x_t)
        if not bool(torch.isfinite(out).all()):  # the bound of a network that outputs NaN would be NaN
            raise ValueError(
                f"the model's output must be finite, but at step index {step} it holds "
                f"{int((~torch.isfinite(out)).sum())} NaN/inf values"
            )
        for v in var_types:
            terms[v][:, j] = (
                vlb_term(den, sched, x0, x_t, t, var_type=v, decoder=decoder, clip_x0=clip_x0, model_out=out)
                .double()
                .cpu()
                * scale
            )
    prior = mean_flat(prior_kl(sched, x0)).cpu() * scale
    result = {"steps": steps, "weights": weights, "prior": prior}
    for v in var_types:
        result[v] = {"terms": terms[v], **stratified_estimate(terms[v], weights, prior)}
    return result
