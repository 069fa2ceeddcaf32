"""Self-checks for Part I, chapters 1-4 (augmentation, objective, tying and weighting, the model).

Each ``check_*`` function calls the learner's function on fixed inputs, compares it with a reference
computed here *independently of the library* (in float64, by Gaussian conditioning), and either prints
a success line or raises :class:`~ddpm_tutor.exercises.CheckFailed` saying where the answer first goes
wrong and which common slip it looks like. A function that still raises ``NotImplementedError`` is
reported as "not attempted yet" (a printed line, no exception), so a book with untouched stubs runs.

Time indexing is the package's (see :mod:`ddpm_tutor.schedules`): an integer ``t`` in 0..T-1 is the
paper's step t+1, so "x_{t-1}" of the paper is the state with ``alpha_bar_prev[t]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..schedules import Schedule
from ._check import CheckFailed, attempt, check_close

Tensor = torch.Tensor

__all__ = [
    "posterior_by_conditioning",
    "vlb_weight_from_kl",
    "optimal_reverse_variance",
    "check_q_sample",
    "check_posterior",
    "check_vlb_weight",
    "check_optimal_variance",
]


# --- independent references ---------------------------------------------------------------------
def _tables(sched: Schedule, t: Tensor) -> dict[str, Tensor]:
    """beta_t, alpha_t, bar alpha_t and bar alpha_{t-1} at indices t (float64, shape (B,)), from beta alone."""
    beta = sched.beta.double()
    alpha_bar = torch.cumprod(1.0 - beta, dim=0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    t = torch.as_tensor(t).long()
    return {"beta": beta[t], "alpha": 1.0 - beta[t], "alpha_bar": alpha_bar[t], "alpha_bar_prev": prev[t]}


def _col(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def posterior_by_conditioning(sched: Schedule, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """q(x_{t-1} | x_t, x_0) by conditioning the joint Gaussian of (x_{t-1}, x_t) given x_0.

    Given x_0, x_{t-1} ~ N(sqrt(ab') x_0, (1 - ab') I) and x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps, so
    Var(x_{t-1}) = 1 - ab', Cov(x_{t-1}, x_t) = sqrt(alpha_t)(1 - ab'), Var(x_t) = 1 - ab_t, and
    mean = sqrt(ab') x_0 + Cov/Var(x_t) (x_t - sqrt(ab_t) x_0), variance = Var(x_{t-1}) - Cov^2/Var(x_t).
    Float64; returns (mean (B, ...), variance (B,)). Well defined at t = 0 too (mean x_0, variance 0).
    """
    x0, x_t = torch.as_tensor(x0).double(), torch.as_tensor(x_t).double()
    p = _tables(sched, t)
    v_prev = 1.0 - p["alpha_bar_prev"]
    cov = p["alpha"].sqrt() * v_prev
    v_t = 1.0 - p["alpha_bar"]
    gain = cov / v_t
    mean = _col(p["alpha_bar_prev"].sqrt(), x0) * x0 + _col(gain, x0) * (x_t - _col(p["alpha_bar"].sqrt(), x0) * x0)
    return mean, v_prev - cov * gain


def vlb_weight_from_kl(sched: Schedule, t: Tensor, sigma2: Tensor) -> Tensor:
    """The weight w_t with KL(q(x_{t-1}|x_t,x_0) || N(mu_theta, sigma2)) = w_t (eps - eps_hat)^2 + const, per dim.

    Computed from the KL's mean term (mu_tilde - mu_theta)^2 / (2 sigma2), with mu_tilde from
    :func:`posterior_by_conditioning` at x_0 and mu_theta at x0_hat = (x_t - sqrt(1 - ab) eps_hat)/sqrt(ab), for a
    unit difference eps - eps_hat (the KL is quadratic in it). Returns (B,) float64.
    """
    t = torch.as_tensor(t).long()
    p = _tables(sched, t)
    x_t = torch.zeros(t.shape[0], 1, dtype=torch.float64)
    eps, eps_hat = torch.ones_like(x_t), torch.zeros_like(x_t)
    x0 = (x_t - _col((1 - p["alpha_bar"]).sqrt(), x_t) * eps) / _col(p["alpha_bar"].sqrt(), x_t)
    x0_hat = (x_t - _col((1 - p["alpha_bar"]).sqrt(), x_t) * eps_hat) / _col(p["alpha_bar"].sqrt(), x_t)
    mu_tilde, _ = posterior_by_conditioning(sched, x0, x_t, t)
    mu_theta, _ = posterior_by_conditioning(sched, x0_hat, x_t, t)
    return ((mu_tilde - mu_theta) ** 2)[:, 0] / (2.0 * torch.as_tensor(sigma2, dtype=torch.float64))


def optimal_reverse_variance(sched: Schedule, t: Tensor, s2) -> Tensor:
    """Var(x_{t-1} | x_t) when the data is 1-D Gaussian N(m, s2): conditioning the joint of (x_{t-1}, x_t).

    x_{t-1} ~ N(sqrt(ab') m, v) with v = ab' s2 + 1 - ab'; x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps, so
    Var(x_{t-1} | x_t) = v - alpha_t v^2 / (alpha_t v + beta_t) = v beta_t / (alpha_t v + beta_t). (B,) float64.
    """
    p = _tables(sched, t)
    v = p["alpha_bar_prev"] * torch.as_tensor(s2, dtype=torch.float64) + 1.0 - p["alpha_bar_prev"]
    return v * p["beta"] / (p["alpha"] * v + p["beta"])


# --- helpers ------------------------------------------------------------------------------------
def _as64(name: str, x, shape) -> Tensor:
    try:
        x = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise CheckFailed(f"{name}: expected a tensor, got {type(x).__name__}") from err
    try:
        return torch.broadcast_to(x.double(), shape)
    except RuntimeError as err:
        raise CheckFailed(
            f"{name}: expected a tensor broadcastable to shape {tuple(shape)}, got {tuple(x.shape)}"
        ) from err


def _diagnose(got: Tensor, candidates: dict[str, Tensor]) -> str:
    """Name the first candidate slip that reproduces ``got`` (all float64, same shape), or ''."""
    for text, value in candidates.items():
        if got.shape == value.shape and torch.allclose(got, value, rtol=1e-5, atol=1e-8):
            return f"It looks like you {text}."
    return ""


def _sched() -> Schedule:
    return Schedule.linear(1000)


T_PROBE = torch.tensor([0, 1, 9, 99, 499, 999])


# --- chapter 1 ----------------------------------------------------------------------------------
def check_q_sample(fn: Callable) -> str | None:
    """Check ``fn(sched, x0, t, eps) -> x_t``, the jump x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps.

    Probes the coefficient of x_0 (with eps = 0) and of eps (with x_0 = 0) separately, then the sum.
    """
    sched, t = _sched(), T_PROBE
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(len(t), 3, generator=g, dtype=torch.float64)
    eps = torch.randn(len(t), 3, generator=g, dtype=torch.float64)
    p = _tables(sched, t)
    col = lambda v: _col(v, x0)  # noqa: E731
    ok, out = attempt(fn, "q_sample", sched, x0, t, torch.zeros_like(x0))
    if not ok:
        return None
    got = _as64("x_t with eps = 0", out, x0.shape)
    mean_coef = col(p["alpha_bar"].sqrt())
    hint = _diagnose(
        got,
        {
            "used alpha_t (one step) instead of alpha_bar_t (the product over steps 1..t)": col(p["alpha"].sqrt()) * x0,
            "forgot the square root on alpha_bar_t": col(p["alpha_bar"]) * x0,
            "used alpha_bar_{t-1} (off by one step; index t already means the paper's step t+1)": col(
                p["alpha_bar_prev"].sqrt()
            )
            * x0,
        },
    )
    check_close(
        "coefficient of x_0 (probed with eps = 0)",
        got,
        mean_coef * x0,
        atol=1e-6,
        rtol=1e-5,
        hint=hint or "With eps = 0, x_t should be sqrt(alpha_bar_t) x_0.",
    )
    _, out = attempt(fn, "q_sample", sched, torch.zeros_like(x0), t, eps)
    got = _as64("x_t with x_0 = 0", out, x0.shape)
    hint = _diagnose(
        got,
        {
            "forgot the square root on 1 - alpha_bar_t (the noise *variance* is 1 - alpha_bar_t)": col(
                1 - p["alpha_bar"]
            )
            * eps,
            "used beta_t (one step's noise) instead of 1 - alpha_bar_t": col(p["beta"].sqrt()) * eps,
            "used 1 - alpha_bar_{t-1} (off by one step)": col((1 - p["alpha_bar_prev"]).sqrt()) * eps,
        },
    )
    check_close(
        "coefficient of eps (probed with x_0 = 0)",
        got,
        col((1 - p["alpha_bar"]).sqrt()) * eps,
        atol=1e-6,
        rtol=1e-5,
        hint=hint or "With x_0 = 0, x_t should be sqrt(1 - alpha_bar_t) eps.",
    )
    _, out = attempt(fn, "q_sample", sched, x0, t, eps)
    expected = mean_coef * x0 + col((1 - p["alpha_bar"]).sqrt()) * eps
    return check_close(
        "q_sample (x_0 and eps together)",
        _as64("x_t", out, x0.shape),
        expected,
        atol=1e-6,
        rtol=1e-5,
        hint="Each part is right alone but not their sum: is x_t linear?",
    )


# --- chapter 2 ----------------------------------------------------------------------------------
def check_posterior(fn: Callable) -> str | None:
    """Check ``fn(sched, x0, x_t, t) -> (mu_tilde, beta_tilde)`` (extra outputs are ignored).

    ``beta_tilde`` may have shape (B,), (B, 1) or x's shape. The reference is Gaussian conditioning of the
    joint of (x_{t-1}, x_t) given x_0 (:func:`posterior_by_conditioning`), not the library's formula.
    """
    sched, t = _sched(), T_PROBE
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(len(t), 3, generator=g, dtype=torch.float64)
    x_t = torch.randn(len(t), 3, generator=g, dtype=torch.float64)
    p = _tables(sched, t)
    col = lambda v: _col(v, x0)  # noqa: E731

    def run(a, b):
        ok, out = attempt(fn, "q_posterior", sched, a, b, t)
        if not ok:
            return None
        if not isinstance(out, (tuple, list)) or len(out) < 2:
            raise CheckFailed("your function must return a pair (mu_tilde, beta_tilde)")
        mean = _as64("mu_tilde", out[0], x0.shape)
        var = torch.as_tensor(out[1]).double()
        var = _as64(
            "beta_tilde", var.reshape(var.shape + (1,) * (x0.ndim - var.ndim)) if var.ndim < x0.ndim else var, x0.shape
        )
        return mean, var

    res = run(x0, torch.zeros_like(x_t))
    if res is None:
        return None
    ref_mean, ref_var = posterior_by_conditioning(sched, x0, torch.zeros_like(x_t), t)
    coef_x0 = col(p["beta"] * p["alpha_bar_prev"].sqrt() / (1 - p["alpha_bar"]))
    coef_xt = col((1 - p["alpha_bar_prev"]) * p["alpha"].sqrt() / (1 - p["alpha_bar"]))
    hint = _diagnose(
        res[0],
        {
            "swapped the two coefficients (the one on x_0 carries beta_t)": coef_xt * x0,
            "used sqrt(alpha_bar_t) where sqrt(alpha_bar_{t-1}) belongs": col(
                p["beta"] * p["alpha_bar"].sqrt() / (1 - p["alpha_bar"])
            )
            * x0,
        },
    )
    check_close(
        "coefficient of x_0 in mu_tilde (probed with x_t = 0)",
        res[0],
        ref_mean,
        hint=hint or "With x_t = 0, mu_tilde should be beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t) x_0.",
    )
    mean, _ = run(torch.zeros_like(x0), x_t)
    ref_mean, _ = posterior_by_conditioning(sched, torch.zeros_like(x0), x_t, t)
    hint = _diagnose(
        mean,
        {
            "swapped the two coefficients (the one on x_t carries sqrt(alpha_t))": coef_x0 * x_t,
            "used 1 - alpha_bar_t in the numerator where 1 - alpha_bar_{t-1} belongs": col(p["alpha"].sqrt()) * x_t,
        },
    )
    check_close(
        "coefficient of x_t in mu_tilde (probed with x_0 = 0)",
        mean,
        ref_mean,
        hint=hint or "With x_0 = 0, mu_tilde should be sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t.",
    )
    mean, var = run(x0, x_t)
    ref_mean, ref_var = posterior_by_conditioning(sched, x0, x_t, t)
    check_close("mu_tilde (x_0 and x_t together)", mean, ref_mean)
    hint = _diagnose(
        var,
        {
            "returned beta_t, the forward step's variance, not the posterior's": col(p["beta"]).expand_as(var),
            "used (1 - alpha_bar_t)/(1 - alpha_bar_{t-1}) upside down": col(
                p["beta"] * (1 - p["alpha_bar"]) / (1 - p["alpha_bar_prev"]).clamp(min=1e-300)
            ).expand_as(var),
        },
    )
    return check_close(
        "beta_tilde",
        var,
        col(ref_var).expand_as(var),
        atol=1e-9,
        rtol=1e-5,
        hint=hint or "beta_tilde should be beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t).",
    )


# --- chapter 3 ----------------------------------------------------------------------------------
def check_vlb_weight(fn: Callable) -> str | None:
    """Check ``fn(sched, t, sigma2) -> w`` (B,): the weight of ||eps - eps_hat||^2 in the bound's term L_{t-1}.

    Ho et al. 2020, eq. 12: w = beta_t^2 / (2 sigma2 alpha_t (1 - bar alpha_t)). The reference is the KL's
    mean term computed from the posterior means (:func:`vlb_weight_from_kl`). t >= 1 (index), any sigma2 > 0.
    """
    sched = _sched()
    t = torch.tensor([1, 2, 9, 99, 499, 999])
    p = _tables(sched, t)
    beta_tilde = p["beta"] * (1 - p["alpha_bar_prev"]) / (1 - p["alpha_bar"])
    for label, sigma2 in (
        ("sigma2 = beta_t (fixed large)", p["beta"]),
        ("sigma2 = beta_tilde_t (fixed small)", beta_tilde),
        ("sigma2 = 0.01 for every t", torch.full_like(p["beta"], 0.01)),
    ):
        ok, out = attempt(fn, "vlb_weight", sched, t, sigma2)
        if not ok:
            return None
        got = _as64(f"w with {label}", out, t.shape)
        ref = vlb_weight_from_kl(sched, t, sigma2)
        hint = _diagnose(
            got,
            {
                "left out the 1/2 of the Gaussian log-density": 2 * ref,
                "used alpha_bar_t where alpha_t belongs (the 1/sqrt(alpha_t) of the mean)": ref
                * p["alpha"]
                / p["alpha_bar"],
                "used beta_t instead of beta_t^2 in the numerator": ref / p["beta"],
                "left out sigma_t^2 (the KL divides the squared mean difference by the reverse variance)": ref * sigma2,
            },
        )
        check_close(
            f"vlb weight with {label}",
            got,
            ref,
            atol=1e-12,
            rtol=1e-6,
            hint=hint or "w should be beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)).",
        )
    msg = "check_vlb_weight: correct for all three variance choices"
    print(msg)
    return msg


# --- chapter 4 ----------------------------------------------------------------------------------
def check_optimal_variance(fn: Callable) -> str | None:
    """Check ``fn(sched, t, s2) -> Var(x_{t-1} | x_t)`` (B,) for 1-D Gaussian data N(m, s2).

    Probes point-mass data (s2 = 0: the answer is beta_tilde_t), standard normal data (s2 = 1: beta_t),
    then s2 = 0.25 and s2 = 4.
    """
    sched, t = _sched(), T_PROBE
    p = _tables(sched, t)
    beta_tilde = p["beta"] * (1 - p["alpha_bar_prev"]) / (1 - p["alpha_bar"])
    hints = {
        0.0: "For point-mass data (s2 = 0) x_0 is known, so Var(x_{t-1} | x_t) = beta_tilde_t.",
        1.0: "For N(0, 1) data every x_t is N(0, 1), and the reverse variance is exactly beta_t.",
        0.25: "",
        4.0: "",
    }
    for s2, base in hints.items():
        ok, out = attempt(fn, "optimal_variance", sched, t, torch.tensor(s2, dtype=torch.float64))
        if not ok:
            return None
        got = _as64(f"Var(x_(t-1) | x_t) for s2 = {s2}", out, t.shape)
        v = p["alpha_bar_prev"] * s2 + 1 - p["alpha_bar_prev"]
        hint = (
            _diagnose(
                got,
                {
                    "returned Var(x_{t-1}) without conditioning on x_t": v,
                    "used the data variance s2 for x_{t-1} (forgot that x_{t-1} is itself diffused)": s2
                    * p["beta"]
                    / (p["alpha"] * s2 + p["beta"])
                    if s2 > 0
                    else torch.zeros_like(v),
                },
            )
            or base
        )
        check_close(
            f"Var(x_(t-1) | x_t) for s2 = {s2}",
            got,
            optimal_reverse_variance(sched, t, s2),
            atol=1e-12,
            rtol=1e-6,
            hint=hint or "Condition the joint Gaussian of (x_{t-1}, x_t).",
        )
    if not torch.all(beta_tilde <= optimal_reverse_variance(sched, t, 0.25) + 1e-15):
        raise CheckFailed("internal: reference out of order")  # pragma: no cover
    msg = "check_optimal_variance: correct for all four data variances"
    print(msg)
    return msg
