"""Progressive coding: the variational bound as a code length, and the rate-distortion of the reverse chain.

Ho et al. 2020, sec. 4.3 and Algorithms 3-4. A sender who knows x_0 transmits x_T ~ q(x_T | x_0) with the
prior p(x_T), then x_{T-1}, ..., x_1, each drawn from the posterior q(x_{t-1} | x_t, x_0) and coded with
the model's p_theta(x_{t-1} | x_t). With relative-entropy coding each step costs KL(q || p_theta) bits on
average, so after receiving x_t the receiver has paid

    rate(t) = L_T + sum_{s = t+1}^{T} L_{s-1},   L_{s-1} = KL(q(x_{s-1} | x_s, x_0) || p_theta(x_{s-1} | x_s)),

and can already guess x_0 by x0_hat(x_t) = (x_t - sqrt(1 - bar alpha_t) eps_theta(x_t, t)) / sqrt(bar alpha_t)
(eq. 15), at distortion RMSE(t) = sqrt(||x_0 - x0_hat||^2 / D). All rates are in bits per dimension.

Progressive generation (Figure 7: copies of one x_t finished with fresh noise) is the ancestral sampler started
at step t, ``samplers.ddpm_sample(model, sched, x_t.shape, x_T=x_t, t_start=t)``; the exact distortion of
Gaussian-mixture data is ``data.mixtures.mixture_posterior_x0_cov``.

Time indices follow :mod:`ddpm_tutor.schedules`: array entry i (0..T-1) belongs to the paper's step i+1,
i.e. to the moment the receiver holds x_{i+1}.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .checks import generator_arg
from .diffusion import VarType, as_denoiser, p_mean_variance, q_mean_variance, q_posterior
from .losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl, prior_bpd
from .schedules import Schedule

Tensor = torch.Tensor
LOG2 = math.log(2.0)


def _noise(shape, generator, dtype) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=dtype)


@torch.no_grad()
def rate_distortion(
    model: Callable[..., Tensor],
    sched: Schedule,
    x0: Tensor,
    generator: torch.Generator | None = None,
    *,
    var_type: VarType = "fixed_small",
    discrete_decoder: bool = False,
) -> dict:
    """Run Algorithm 3 of Ho et al. 2020 on a batch x0 (B, ...) and measure rate and distortion at every step.

    The sender's chain is drawn top-down as in the algorithm: x_T ~ q(x_T | x_0), then
    x_{t-1} ~ q(x_{t-1} | x_t, x_0) (the same joint law as running the forward chain). At each x_t the KL
    term and the receiver's x0_hat are evaluated on that one trajectory. ``model``: a Denoiser or an eps model.

    Returns a dict (rates in bits per dimension; arrays over steps indexed i = 0..T-1 = the paper's t = i+1):

    - ``kl`` (B, T): L_i = KL(q(x_i | x_{i+1}, x_0) || p(x_i | x_{i+1})) paid when going from x_{i+1} to x_i,
      for i >= 1; column 0 is 0 (the last step, to x_0, is the decoder term, see ``l0``);
    - ``prior`` (B,): L_T = KL(q(x_T | x_0) || N(0, I));
    - ``rate`` (T,): mean over the batch of the rate paid once x_{i+1} is held: prior + sum_{j > i} kl[:, j];
    - ``rate_per_example`` (B, T);
    - ``total_rate`` (B,): prior + all KL terms = the bound's L_T + L_{T-1} + ... + L_1;
    - ``mse`` (B, T): per-example mean squared error of x0_hat(x_{i+1}) against x_0 (per dimension);
    - ``distortion`` (T,): RMSE sqrt(mean over batch and dimensions of the squared error) on the data scale;
    - ``distortion_255`` (T,): the same times 127.5, i.e. on [0, 255] for images scaled to [-1, 1];
    - ``l0`` (B,) or None: -log2 p(x_0 | x_1) per dimension under the discretised decoder (only with
      ``discrete_decoder=True``, which needs data on the 256 levels of [-1, 1]);
    - ``t`` (T,) step indices, ``dims`` (D, the number of dimensions per example).
    """
    generator = generator_arg(generator)
    if not isinstance(x0, Tensor) or x0.ndim < 2:
        raise ValueError(f"x0 must be a batch of shape (B, D, ...), got {getattr(x0, 'shape', type(x0))}")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 must be finite, got NaN or inf")
    B, T = x0.shape[0], sched.T
    dims = x0[0].numel()
    den = as_denoiser(model, sched)
    kl = torch.zeros(B, T, dtype=torch.float64)
    mse = torch.zeros(B, T, dtype=torch.float64)
    l0 = None

    t_last = torch.full((B,), T - 1, dtype=torch.long, device=x0.device)
    mean_T, var_T = q_mean_variance(sched, x0, t_last)
    x = mean_T + var_T.sqrt() * _noise(x0.shape, generator, x0.dtype).to(x0.device)
    for i in range(T - 1, -1, -1):
        t = torch.full((B,), i, dtype=torch.long, device=x0.device)
        p = p_mean_variance(den, sched, x, t, var_type=var_type)
        mse[:, i] = mean_flat((p["x0_hat"] - x0) ** 2).double().cpu()
        if i >= 1:
            mu_tilde, beta_tilde, log_bt = q_posterior(sched, x0, x, t)
            kl[:, i] = (mean_flat(normal_kl(mu_tilde, log_bt, p["mean"], p["log_variance"])) / LOG2).double().cpu()
            x = mu_tilde + beta_tilde.sqrt() * _noise(x0.shape, generator, x0.dtype).to(x0.device)
        elif discrete_decoder:
            l0 = (
                (-mean_flat(discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])) / LOG2)
                .double()
                .cpu()
            )
    prior = prior_bpd(sched, x0).double().cpu()
    # rate once x_{i+1} is held: prior + kl[j] for j > i  (reverse cumulative sum, shifted by one)
    after = torch.flip(torch.cumsum(torch.flip(kl, [1]), 1), [1]) - kl
    rate_pe = prior[:, None] + after
    distortion = mse.mean(dim=0).sqrt()
    return {
        "t": torch.arange(T),
        "kl": kl,
        "prior": prior,
        "rate": rate_pe.mean(dim=0),
        "rate_per_example": rate_pe,
        "total_rate": prior + kl.sum(dim=1),
        "mse": mse,
        "distortion": distortion,
        "distortion_255": 127.5 * distortion,
        "l0": l0,
        "dims": dims,
    }
