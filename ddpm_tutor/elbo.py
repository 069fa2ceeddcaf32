"""The evidence lower bound of a diffusion model, in closed form for Gaussian data and by Monte Carlo.

The bound (Luo 2022, eq. 58; Ho et al. 2020, eq. 5), in nats, for one data point x_0:

    ELBO(x_0) = E_{q(x_1|x_0)}[log p(x_0 | x_1)]                                (reconstruction)
                - KL(q(x_T | x_0) || N(0, I))                                      (prior matching)
                - sum_{t=2}^T E_{q(x_t|x_0)} KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))   (denoising matching)

Two independent ways to compute it:

* :func:`continuous_elbo_terms` -- Monte Carlo over x_t for any model (:mod:`ddpm_tutor.bound`), built only
  from the library's ``q_posterior``, ``p_mean_variance`` and ``normal_kl``, with a *continuous* Gaussian decoder
  p(x_0 | x_1) = N(x_0; mu_theta(x_1, 1), sigma_1^2) (the discretised decoder of ``losses`` needs image
  data on 256 levels; 1D/2D toy data is continuous).
* :func:`gaussian_elbo_terms` -- exact, for 1D data x_0 ~ N(m, s^2) and a *linear Gaussian* reverse model
  p(x_{t-1} | x_t) = N(A_t x_t + B_t, C_t). Every expectation over x_t given x_0 is then a Gaussian
  moment. Two such models are provided: :func:`exact_reverse` (the true reverse conditionals
  q(x_{t-1} | x_t), the best Gaussian model there is) and :func:`ddpm_reverse` (DDPM's model with the
  ideal mean E[mu_tilde | x_t] and the fixed variance beta_t or beta_tilde_t).

Arrays of per-step quantities have length T and follow the package's indexing: entry i is the paper's
step t = i + 1 (see :mod:`ddpm_tutor.schedules`); entry 0 describes p(x_0 | x_1), the decoder.
All computations are float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .checks import generator_arg
from .diffusion import VarType, reverse_variance
from .schedules import Schedule

Tensor = torch.Tensor
LOG_2PI = math.log(2 * math.pi)

__all__ = [
    "gaussian_log_likelihood",
    "prior_kl",
    "data_marginal",
    "exact_reverse",
    "ddpm_reverse",
    "gaussian_elbo_terms",
    "expected_gaussian_elbo_terms",
    "model_marginal",
    "exact_log_likelihood",
    "continuous_elbo_terms",
    "vp_linear_schedule",
]


def _check_data_params(m: float, s: float) -> tuple[float, float]:
    m, s = float(m), float(s)
    if not math.isfinite(m):
        raise ValueError(f"the data mean m must be finite, got {m!r}")
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"the data standard deviation s must be a positive number, got {s!r}")
    return m, s


def gaussian_log_likelihood(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(x; mean, e^log_var) per element, in nats (broadcasting). The continuous decoder's density."""
    return -0.5 * (LOG_2PI + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def prior_kl(sched: Schedule, x0: Tensor) -> Tensor:
    """Prior matching term KL(q(x_T | x_0) || N(0, 1)) per element, in nats (Luo 2022, eq. 58).

    q(x_T | x_0) = N(sqrt(bar alpha_T) x_0, 1 - bar alpha_T), so the KL is
    (bar alpha_T x_0^2 - bar alpha_T - log(1 - bar alpha_T)) / 2.
    """
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    ab = sched.alpha_bar[-1]
    return 0.5 * (ab * x0**2 - ab - torch.log1p(-ab))


def data_marginal(sched: Schedule, m: float, s: float) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_t) for data N(m, s^2), for t = 0..T (length T + 1; entry 0 is the data).

    x_t = sqrt(bar alpha_t) x_0 + sqrt(1 - bar alpha_t) eps gives
    N(sqrt(bar alpha_t) m, bar alpha_t s^2 + 1 - bar alpha_t).
    """
    m, s = _check_data_params(m, s)
    ab = torch.cat([torch.ones(1, dtype=torch.float64), sched.alpha_bar])
    return ab.sqrt() * m, ab * s**2 + 1 - ab


def exact_reverse(sched: Schedule, m: float, s: float) -> dict[str, Tensor]:
    """The true reverse conditionals q(x_{t-1} | x_t) = N(A_t x_t + B_t, C_t) for data N(m, s^2).

    (x_{t-1}, x_t) is jointly Gaussian with Cov = sqrt(alpha_t) v_{t-1} (x_t = sqrt(alpha_t) x_{t-1} + noise),
    so Gaussian conditioning gives A_t = sqrt(alpha_t) v_{t-1} / v_t, B_t = mu_{t-1} - A_t mu_t and
    C_t = v_{t-1} - alpha_t v_{t-1}^2 / v_t, with (mu_t, v_t) from :func:`data_marginal`.
    Returns dict(A, B, C), each (T,), entry i for the paper's step i + 1.
    """
    mu, v = data_marginal(sched, m, s)
    A = sched.alpha.sqrt() * v[:-1] / v[1:]
    B = mu[:-1] - A * mu[1:]
    C = v[:-1] - sched.alpha * v[:-1] ** 2 / v[1:]
    return {"A": A, "B": B, "C": C}


def ddpm_reverse(sched: Schedule, m: float, s: float, var_type: VarType = "fixed_small") -> dict[str, Tensor]:
    """DDPM's reverse model for data N(m, s^2) with the ideal network: N(A_t x_t + B_t, sigma_t^2).

    The mean is mu_tilde(x0_hat, x_t) with x0_hat = E[x_0 | x_t] = m + sqrt(bar alpha_t) s^2 / v_t (x_t - mu_t)
    (Ho et al. 2020, eq. 7 and 11), the variance sigma_t^2 is ``reverse_variance`` (beta_tilde_t for
    "fixed_small", beta_t for "fixed_large"; both use beta_tilde_2 at t = 1, whose decoder would otherwise
    have zero width, as the paper's code does). Returns dict(A, B, C), each (T,).
    """
    mu, v = data_marginal(sched, m, s)
    ab = sched.alpha_bar
    gain = ab.sqrt() * s**2 / v[1:]  # E[x0 | x_t] = m + gain (x_t - mu_t)
    c0, cx = sched.posterior_coef_x0, sched.posterior_coef_xt
    A = c0 * gain + cx
    B = c0 * (m - gain * mu[1:])
    t = torch.arange(sched.T)
    _, log_var = reverse_variance(sched, t, torch.zeros(sched.T, dtype=torch.float64), var_type)
    return {"A": A, "B": B, "C": log_var.exp()}


def _check_reverse(sched: Schedule, reverse: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    try:
        A, B, C = (torch.as_tensor(reverse[k], dtype=torch.float64) for k in ("A", "B", "C"))
    except (KeyError, TypeError) as err:
        raise ValueError("reverse must be a dict with entries A, B, C (see exact_reverse)") from err
    for name, val in zip("ABC", (A, B, C)):
        if val.shape != (sched.T,):
            raise ValueError(f"reverse[{name!r}] must have shape (T,) = ({sched.T},), got {tuple(val.shape)}")
    if not (C > 0).all():
        raise ValueError("reverse['C'] (the variances) must all be positive")
    return A, B, C


def gaussian_elbo_terms(sched: Schedule, reverse: dict[str, Tensor], x0: Tensor) -> dict[str, Tensor]:
    """Exact bound terms (nats) at each x_0 for a linear Gaussian reverse model p(x_{t-1}|x_t) = N(A x_t + B, C).

    With x_t | x_0 ~ N(sqrt(ab_t) x_0, 1 - ab_t) and the posterior mean mu_tilde = c0 x_0 + cx x_t, the
    mean difference mu_tilde - (A x_t + B) is Gaussian given x_0, so every expectation is closed-form:

    * reconstruction  E log N(x_0; A_1 x_1 + B_1, C_1)
      = -(log(2 pi C_1) + ((1 - A_1 sqrt(ab_1)) x_0 - B_1)^2 / C_1 + A_1^2 (1 - ab_1) / C_1) / 2;
    * denoising, t >= 2: E KL = (log(C_t / bt_t) + bt_t / C_t - 1 + (d_t^2 + (cx - A_t)^2 (1 - ab_t)) / C_t) / 2
      with d_t = (c0 + (cx - A_t) sqrt(ab_t)) x_0 - B_t;
    * prior: :func:`prior_kl`.

    x0: (n,). Returns dict(reconstruction (n,), prior (n,), denoising (n, T) with column 0 zero,
    elbo (n,)) where elbo = reconstruction - prior - denoising.sum(1).
    """
    A, B, C = _check_reverse(sched, reverse)
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    if x0.ndim != 1:
        raise ValueError(f"x0 must be a 1-D tensor of scalar data points (n,), got shape {tuple(x0.shape)}")
    ab, bt = sched.alpha_bar, sched.beta_tilde
    c0, cx = sched.posterior_coef_x0, sched.posterior_coef_xt
    x = x0[:, None]
    resid = (1 - A[0] * ab[0].sqrt()) * x0 - B[0]
    recon = -0.5 * (LOG_2PI + C[0].log() + (resid**2 + A[0] ** 2 * (1 - ab[0])) / C[0])
    d = (c0 + (cx - A) * ab.sqrt()) * x - B
    kl = 0.5 * (torch.log(C / bt) + bt / C - 1 + (d**2 + (cx - A) ** 2 * (1 - ab)) / C)
    kl[:, 0] = 0.0  # t = 1 is the decoder, not a KL term
    prior = prior_kl(sched, x0)
    return {"reconstruction": recon, "prior": prior, "denoising": kl, "elbo": recon - prior - kl.sum(dim=1)}


def expected_gaussian_elbo_terms(sched: Schedule, reverse: dict[str, Tensor], m: float, s: float) -> dict[str, Tensor]:
    """The terms of :func:`gaussian_elbo_terms` averaged over x_0 ~ N(m, s^2), exactly.

    Every term is a quadratic polynomial in x_0, and for a quadratic f, E f(x_0) = (f(m + s) + f(m - s)) / 2
    exactly (both sides are f(m) + f''(m) s^2 / 2). Returns the same keys with the x_0 axis averaged out
    (scalars, and denoising of shape (T,)).
    """
    m, s = _check_data_params(m, s)
    terms = gaussian_elbo_terms(sched, reverse, torch.tensor([m + s, m - s], dtype=torch.float64))
    return {k: v.mean(dim=0) for k, v in terms.items()}


def model_marginal(sched: Schedule, reverse: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Mean and variance of the model's own p(x_0) for a linear Gaussian reverse chain from x_T ~ N(0, 1).

    x_{t-1} = A_t x_t + B_t + sqrt(C_t) z maps N(mu, v) to N(A_t mu + B_t, A_t^2 v + C_t); start at N(0, 1).
    The model's exact log-likelihood log p_theta(x_0) is then a Gaussian log density: the bound must lie below it.
    """
    A, B, C = _check_reverse(sched, reverse)
    mean, var = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    for i in range(sched.T - 1, -1, -1):
        mean, var = A[i] * mean + B[i], A[i] ** 2 * var + C[i]
    return mean, var


def exact_log_likelihood(x0: Tensor, m: float, s: float) -> Tensor:
    """log N(x_0; m, s^2): the true log-likelihood of the data distribution, in nats."""
    m, s = _check_data_params(m, s)
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    return gaussian_log_likelihood(
        x0, torch.tensor(m, dtype=torch.float64), torch.tensor(2 * math.log(s), dtype=torch.float64)
    )


def continuous_elbo_terms(
    model: Callable[[Tensor, Tensor], Tensor],
    sched: Schedule,
    x0: Tensor,
    *,
    generator: torch.Generator | None = None,
    var_type: VarType = "fixed_small",
    k: int | None = None,
) -> dict[str, Tensor]:
    """Monte Carlo bound terms (nats per example) for continuous data, from the library's own pieces.

    :func:`ddpm_tutor.bound.vlb` with the continuous decoder L_0 = -log N(x_0; mu_theta(x_1, 1), sigma_1^2)
    (sigma_1^2 the clipped beta_tilde_2 for both variance choices, as Ho et al.'s likelihood code: beta_tilde_1
    = 0 would make the density degenerate), the KL terms by ``normal_kl`` of ``q_posterior`` and
    ``p_mean_variance``, one x_t ~ q(x_t | x_0) per term and example, and L_T exactly (:func:`prior_kl`);
    per-dimension values times the number of dimensions. ``model``: a Denoiser or a plain eps model(x_t, t).
    x0: (B, ...) float. ``k``: None for all T steps, or stratified sampling of k - 1 of the steps 1..T-1 (the
    others are NaN in ``terms``; ``elbo`` is the unbiased estimate). Returns dict(terms (B, T), prior (B,),
    elbo (B,)), elbo = -(prior + sum of terms).
    """
    generator = generator_arg(generator)
    from .bound import vlb  # bound builds on this module

    r = vlb(model, sched, x0, k=k, var_types=(var_type,), decoder="continuous", units="nats", generator=generator)
    D = x0[0].numel()
    terms = torch.full((x0.shape[0], sched.T), float("nan"), dtype=torch.float64)
    terms[:, r["steps"]] = r[var_type]["terms"] * D
    return {"terms": terms, "prior": r["prior"] * D, "elbo": -r[var_type]["total"] * D}


def vp_linear_schedule(T: int, beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
    """The paper's linear schedule as one continuous-time process, sampled at T steps.

    bar alpha(tau) = exp(-(beta_min tau + (beta_max - beta_min) tau^2 / 2)) for tau in (0, 1], and
    bar alpha_t = bar alpha(t / T): beta_t is then about beta(t/T) / T with beta(tau) linear from beta_min to
    beta_max, so T = 1000 gives beta from 1e-4 to 0.02 like Ho et al. 2020 (each beta_t within 2.1e-4 of theirs). Unlike
    rescaling beta, every T describes the same noising process, which makes "more steps" a fair comparison
    (the continuous-time view of Kingma et al. 2021).
    """
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T!r}")
    if not 0 < beta_min < beta_max:
        raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min!r}, {beta_max!r}")
    tau = torch.arange(1, T + 1, dtype=torch.float64) / T
    return Schedule.from_alpha_bar(
        torch.exp(-(beta_min * tau + 0.5 * (beta_max - beta_min) * tau**2)), name=f"vp_linear({T})"
    )
