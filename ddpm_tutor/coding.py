"""Progressive coding: the variational bound as a code length, and the rate-distortion of the reverse chain.

Ho et al. 2020, sec. 4.3 and Algorithms 3-4. A sender who knows x_0 transmits x_T ~ q(x_T | x_0) with the
prior p(x_T), then x_{T-1}, ..., x_1, each drawn from the posterior q(x_{t-1} | x_t, x_0) and coded with
the model's p_theta(x_{t-1} | x_t). With relative-entropy coding each step costs KL(q || p_theta) bits on
average, so after receiving x_t the receiver has paid

    rate(t) = L_T + sum_{s = t+1}^{T} L_{s-1},   L_{s-1} = KL(q(x_{s-1} | x_s, x_0) || p_theta(x_{s-1} | x_s)),

and can already guess x_0 by x0_hat(x_t) = (x_t - sqrt(1 - bar alpha_t) eps_theta(x_t, t)) / sqrt(bar alpha_t)
(eq. 15), at distortion RMSE(t) = sqrt(||x_0 - x0_hat||^2 / D). All rates are in bits per dimension.

Time indices follow :mod:`ddpm_tutor.schedules`: array entry i (0..T-1) belongs to the paper's step i+1,
i.e. to the moment the receiver holds x_{i+1}.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .data.mixtures import GaussianMixture
from .diffusion import Parameterization, VarType, p_mean_variance, q_mean_variance, q_posterior
from .losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl, prior_bpd
from .samplers import ddpm_step
from .schedules import Schedule

Tensor = torch.Tensor
LOG2 = math.log(2.0)


def _noise(shape, generator, dtype) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=dtype)


@torch.no_grad()
def rate_distortion(model: Callable[..., Tensor], sched: Schedule, x0: Tensor, generator: torch.Generator | None = None,
                    *, parameterization: Parameterization = "eps", var_type: VarType = "fixed_small",
                    discrete_decoder: bool = False, model_kwargs: dict | None = None) -> dict:
    """Run Algorithm 3 of Ho et al. 2020 on a batch x0 (B, ...) and measure rate and distortion at every step.

    The sender's chain is drawn top-down as in the algorithm: x_T ~ q(x_T | x_0), then
    x_{t-1} ~ q(x_{t-1} | x_t, x_0) (the same joint law as running the forward chain). At each x_t the KL
    term and the receiver's x0_hat are evaluated on that one trajectory.

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
    if not isinstance(x0, Tensor) or x0.ndim < 2:
        raise ValueError(f"x0 must be a batch of shape (B, D, ...), got {getattr(x0, 'shape', type(x0))}")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 must be finite, got NaN or inf")
    B, T = x0.shape[0], sched.T
    dims = x0[0].numel()
    kw = model_kwargs or {}
    fn = (lambda a, b: model(a, b, **kw)) if kw else model
    kl = torch.zeros(B, T, dtype=torch.float64)
    mse = torch.zeros(B, T, dtype=torch.float64)
    l0 = None

    t_last = torch.full((B,), T - 1, dtype=torch.long, device=x0.device)
    mean_T, var_T = q_mean_variance(sched, x0, t_last)
    x = mean_T + var_T.sqrt() * _noise(x0.shape, generator, x0.dtype).to(x0.device)
    for i in range(T - 1, -1, -1):
        t = torch.full((B,), i, dtype=torch.long, device=x0.device)
        p = p_mean_variance(fn, sched, x, t, parameterization=parameterization, var_type=var_type)
        mse[:, i] = mean_flat((p["x0_hat"] - x0) ** 2).double().cpu()
        if i >= 1:
            mu_tilde, beta_tilde, log_bt = q_posterior(sched, x0, x, t)
            kl[:, i] = (mean_flat(normal_kl(mu_tilde, log_bt, p["mean"], p["log_variance"])) / LOG2).double().cpu()
            x = mu_tilde + beta_tilde.sqrt() * _noise(x0.shape, generator, x0.dtype).to(x0.device)
        elif discrete_decoder:
            l0 = (-mean_flat(discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"]))
                  / LOG2).double().cpu()
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


# --- progressive generation ----------------------------------------------------------------------
@torch.no_grad()
def continue_from(model: Callable[[Tensor, Tensor], Tensor], sched: Schedule, x_t: Tensor, t_start: int,
                  generator: torch.Generator | None = None, *, parameterization: Parameterization = "eps",
                  var_type: VarType = "fixed_small") -> Tensor:
    """Finish the ancestral sampler from x_t held at step index ``t_start`` (the paper's t_start + 1) down to x_0.

    Ho et al. 2020, Figure 7: copies of one x_t continued with fresh noise share more of their content
    the smaller t is. ``x_t`` (B, ...); returns x_0 (B, ...).
    """
    if not 0 <= int(t_start) < sched.T:
        raise ValueError(f"t_start must be a step index in 0..{sched.T - 1}, got {t_start!r}")
    x = x_t
    for i in range(int(t_start), -1, -1):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        z = _noise(x.shape, generator, x.dtype).to(x.device) if i > 0 else torch.zeros_like(x)
        x, _ = ddpm_step(sched, x, t, model(x, t), z, parameterization=parameterization, var_type=var_type)
    return x


# --- closed forms for Gaussian-mixture data ---------------------------------------------------------
def mixture_posterior_x0_cov(mixture: GaussianMixture, x_t: Tensor, alpha_bar: float) -> tuple[Tensor, Tensor]:
    """Exact E[x_0 | x_t] (n, D) and Cov[x_0 | x_t] (n, D, D) for mixture data, by Gaussian conditioning.

    Per component k (a = bar alpha_t, G_k = a S_k + (1 - a) I):
    E[x_0 | x_t, k] = m_k + sqrt(a) S_k G_k^{-1} (x_t - sqrt(a) m_k),  Cov[x_0 | x_t, k] = S_k - a S_k G_k^{-1} S_k,
    mixed with the responsibilities r_k(x_t) (law of total covariance).
    """
    a = float(alpha_bar)
    x_t = torch.as_tensor(x_t, dtype=torch.float64)
    diffused = mixture.diffused(a)
    r = diffused.responsibilities(x_t)  # (n, K)
    S, G = mixture.covs, diffused.covs
    resid = x_t[:, None, :] - a ** 0.5 * mixture.means[None]
    gain = torch.linalg.solve(G[None], resid[..., None])[..., 0]
    mk = mixture.means[None] + a ** 0.5 * (S[None] @ gain[..., None])[..., 0]  # (n, K, D)
    ck = S - a * S @ torch.linalg.solve(G, S)  # (K, D, D)
    mean = (r[..., None] * mk).sum(dim=1)
    second = (r[..., None, None] * (ck[None] + mk[..., :, None] * mk[..., None, :])).sum(dim=1)
    return mean, second - mean[:, :, None] * mean[:, None, :]


def gaussian_posterior_std(alpha_bar, data_var: float) -> Tensor:
    """sqrt(Var[x_0 | x_t]) for scalar Gaussian data x_0 ~ N(m, s^2): sqrt(s^2 (1 - a) / (a s^2 + 1 - a)).

    It does not depend on x_t: for the exact model it is the distortion RMSE at every step.
    """
    a = torch.as_tensor(alpha_bar, dtype=torch.float64)
    s2 = float(data_var)
    return (s2 * (1 - a) / (a * s2 + 1 - a)).sqrt()
