"""Terms of the variational bound for both reverse variances at once, and Monte Carlo error bars.

``losses.bits_per_dim`` evaluates the network once per term for one variance choice. The network's
output does not depend on the variance choice (only the Gaussian's width does), so comparing
"fixed_small" (sigma_t^2 = beta_tilde_t) with "fixed_large" (sigma_t^2 = beta_t) needs one forward pass per
term, not two: :func:`vlb_terms` evaluates the model once per step and scores every variance choice with
``losses.vlb_term_bpd`` on that output.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .diffusion import as_denoiser, q_sample
from .losses import check_image_range, prior_bpd, vlb_term_bpd
from .schedules import Schedule

Tensor = torch.Tensor


@torch.no_grad()
def vlb_terms(model, sched: Schedule, x0: Tensor, *, ts: Sequence[int] | None = None,
              var_types: Sequence[str] = ("fixed_small", "fixed_large"), generator: torch.Generator | None = None,
              clip_x0: bool = False) -> dict:
    """Bits/dim of the bound's terms L_{t} at step indices ``ts`` (default all T) for each variance choice.

    ``model``: a :class:`~ddpm_tutor.diffusion.Denoiser` (labels fixed by ``with_labels`` or ``unconditional``)
    or a plain eps model. Returns {"ts": (k,) long, "prior": (B,), var_type: (B, k) float64 for each var_type}.
    The noise for each step is drawn once from ``generator`` and shared by all variance choices (a paired
    comparison).
    """
    check_image_range(x0)
    B = x0.shape[0]
    ts = torch.arange(sched.T) if ts is None else torch.as_tensor(list(ts), dtype=torch.long)
    den = as_denoiser(model, sched)
    out = {v: torch.empty(B, len(ts), dtype=torch.float64) for v in var_types}
    for j, step in enumerate(ts.tolist()):
        t = torch.full((B,), step, dtype=torch.long, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x_t = q_sample(sched, x0, t, eps)
        pred = den.model_out(x_t, t)
        for v in var_types:
            out[v][:, j] = vlb_term_bpd(den, sched, x0, x_t, t, var_type=v, clip_x0=clip_x0,
                                        model_out=pred)["bpd"].double().cpu()
    out["ts"] = ts
    out["prior"] = prior_bpd(sched, x0).double().cpu()
    return out


def mc_total(terms: Tensor, T: int, prior: Tensor | float = 0.0) -> dict:
    """Monte Carlo estimate of the bound from k of T terms drawn uniformly without replacement.

    ``terms`` (B, k): the drawn terms for B images (the same k steps for every image). Returns the batch
    mean of prior + (T / k) sum of terms, and its standard error over the choice of steps (with the
    finite-population correction 1 - k/T, so drawing all T terms has error 0).
    """
    terms = torch.as_tensor(terms, dtype=torch.float64)
    if terms.ndim != 2 or terms.shape[1] < 1:
        raise ValueError(f"terms must be (B, k) with k >= 1, got {tuple(terms.shape)}")
    k = terms.shape[1]
    if k > T:
        raise ValueError(f"k = {k} terms cannot exceed T = {T}")
    per_step = terms.mean(0)  # (k,) batch-mean term at each drawn step
    mean = float(torch.as_tensor(prior, dtype=torch.float64).mean()) + T * float(per_step.mean())
    var = float(per_step.var()) if k > 1 else float("nan")
    se = T * math.sqrt(max(0.0, 1 - k / T) * var / k) if k > 1 else float("nan")
    return {"mean": mean, "se": se, "k": k}
