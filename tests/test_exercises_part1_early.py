"""Self-checks of Part I, chapters 1-4: each accepts the reference and rejects a wrong answer, naming where.

Also checks the independent references in ddpm_tutor.exercises.part1_early against the library.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_tutor.diffusion import q_posterior, q_sample, reverse_variance
from ddpm_tutor.exercises import CheckFailed
from ddpm_tutor.exercises.part1_early import (
    check_optimal_variance,
    check_posterior,
    check_q_sample,
    check_vlb_weight,
    optimal_reverse_variance,
    posterior_by_conditioning,
    vlb_weight_from_kl,
)
from ddpm_tutor.losses import eps_weight
from ddpm_tutor.schedules import Schedule


def _not_implemented(*args):
    raise NotImplementedError


def _vlb_weight(sched, t, sigma2):
    return sched.beta[t] ** 2 / (2 * sigma2 * sched.alpha[t] * (1 - sched.alpha_bar[t]))


def _opt_var(sched, t, s2):
    v = sched.alpha_bar_prev[t] * s2 + 1 - sched.alpha_bar_prev[t]
    return v * sched.beta[t] / (sched.alpha[t] * v + sched.beta[t])


# --- references ---------------------------------------------------------------------------------
def test_posterior_by_conditioning_matches_library():
    s = Schedule.linear(1000)
    g = torch.Generator().manual_seed(0)
    t = torch.arange(1000)
    x0, xt = (
        torch.randn(1000, 2, generator=g, dtype=torch.float64),
        torch.randn(1000, 2, generator=g, dtype=torch.float64),
    )
    mu, var, _ = q_posterior(s, x0, xt, t)
    mu_ref, var_ref = posterior_by_conditioning(s, x0, xt, t)
    assert torch.allclose(mu, mu_ref, atol=1e-10)
    assert torch.allclose(var[:, 0], var_ref, atol=1e-14)


def test_vlb_weight_reference_matches_library_for_t_at_least_2():
    s = Schedule.cosine(200)
    t = torch.arange(1, 200)
    x = torch.zeros(199, 1, dtype=torch.float64)
    for var_type in ("fixed_small", "fixed_large"):
        sigma2, _ = reverse_variance(s, t, x, var_type)
        assert torch.allclose(
            eps_weight(s, t, x, "vlb", var_type=var_type)[:, 0], vlb_weight_from_kl(s, t, sigma2[:, 0]), rtol=1e-9
        )


def test_optimal_variance_extremes_and_monte_carlo():
    s = Schedule.linear(1000)
    t = torch.arange(1000)
    assert torch.allclose(optimal_reverse_variance(s, t, 0.0), s.beta_tilde, atol=1e-15)
    assert torch.allclose(optimal_reverse_variance(s, t, 1.0), s.beta, rtol=1e-12)
    # Monte Carlo: residual variance of the regression of x_{t-1} on x_t for data N(0.5, 0.2)
    g = torch.Generator().manual_seed(1)
    n, i, s2 = 200_000, 30, 0.2
    x0 = 0.5 + math.sqrt(s2) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    xp = q_sample(s, x0, torch.full((n,), i - 1), torch.randn(n, 1, generator=g, dtype=torch.float64))
    xt = s.alpha[i].sqrt() * xp + s.beta[i].sqrt() * torch.randn(n, 1, generator=g, dtype=torch.float64)
    A = torch.cat([xt, torch.ones_like(xt)], 1)
    resid = xp - A @ torch.linalg.lstsq(A, xp).solution
    assert abs(resid.var().item() / optimal_reverse_variance(s, torch.tensor([i]), s2).item() - 1) < 0.02


# --- checkers accept references -----------------------------------------------------------------
def test_checkers_accept_the_references(capsys):
    assert check_q_sample(q_sample)
    assert check_posterior(q_posterior)  # extra outputs ignored
    assert check_posterior(lambda s, x0, xt, t: (q_posterior(s, x0, xt, t)[0], q_posterior(s, x0, xt, t)[1][:, 0]))
    assert check_vlb_weight(_vlb_weight)
    assert check_optimal_variance(_opt_var)
    assert check_optimal_variance(optimal_reverse_variance)
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("checker", [check_q_sample, check_posterior, check_vlb_weight, check_optimal_variance])
def test_not_implemented_is_not_attempted(checker, capsys):
    assert checker(_not_implemented) is None
    assert "not attempted yet" in capsys.readouterr().out


# --- checkers reject wrong answers with a pointer -----------------------------------------------
@pytest.mark.parametrize(
    "wrong, where",
    [
        (
            lambda s, x0, t, e: s.at("alpha", t, x0).sqrt() * x0 + (1 - s.at("alpha_bar", t, x0)).sqrt() * e,
            r"alpha_t \(one step\) instead of alpha_bar_t",
        ),
        (  # both coefficients wrong (moved from chapter 1's hidden cell): the x_0 probe names alpha_t
            lambda s, x0, t, e: s.at("alpha", t, x0).sqrt() * x0 + s.at("alpha_bar", t, x0).sqrt() * e,
            r"coefficient of x_0.*alpha_t \(one step\) instead of alpha_bar_t",
        ),
        (
            lambda s, x0, t, e: s.at("alpha_bar", t, x0) * x0 + (1 - s.at("alpha_bar", t, x0)).sqrt() * e,
            "square root on alpha_bar_t",
        ),
        (
            lambda s, x0, t, e: s.at("alpha_bar", t, x0).sqrt() * x0 + (1 - s.at("alpha_bar", t, x0)) * e,
            "coefficient of eps",
        ),
        (
            lambda s, x0, t, e: s.at("alpha_bar_prev", t, x0).sqrt() * x0 + (1 - s.at("alpha_bar", t, x0)).sqrt() * e,
            "off by one",
        ),
    ],
)
def test_check_q_sample_rejects(wrong, where):
    with pytest.raises(CheckFailed, match=where):
        check_q_sample(wrong)


def _swap(s, x0, xt, t):
    return q_posterior(s, xt, x0, t)[:2]


@pytest.mark.parametrize(
    "wrong, where",
    [
        (_swap, "swapped the two coefficients"),
        (lambda s, x0, xt, t: (q_posterior(s, x0, xt, t)[0], s.at("beta", t, xt)), "forward step's variance"),
        (
            lambda s, x0, xt, t: (q_posterior(s, x0, xt, t)[0] + 0.01 * xt, q_posterior(s, x0, xt, t)[1]),
            "coefficient of x_t in mu_tilde",
        ),
        (lambda s, x0, xt, t: (q_posterior(s, x0, xt, t)[0][:, :1], q_posterior(s, x0, xt, t)[1]), "mu_tilde"),
        (lambda s, x0, xt, t: q_posterior(s, x0, xt, t)[0], "pair"),
    ],
)
def test_check_posterior_rejects(wrong, where):
    with pytest.raises(CheckFailed, match=where):
        check_posterior(wrong)


@pytest.mark.parametrize(
    "wrong, where",
    [
        (lambda s, t, v: 2 * _vlb_weight(s, t, v), "1/2"),
        (lambda s, t, v: s.beta[t] ** 2 / (2 * v * s.alpha_bar[t] * (1 - s.alpha_bar[t])), "alpha_bar_t where alpha_t"),
        (lambda s, t, v: s.beta[t] / (2 * v * s.alpha[t] * (1 - s.alpha_bar[t])), "beta_t\\^2"),
        (lambda s, t, v: s.beta[t] ** 2 / (2 * s.alpha[t] * (1 - s.alpha_bar[t])), "sigma_t\\^2"),
    ],
)
def test_check_vlb_weight_rejects(wrong, where):
    with pytest.raises(CheckFailed, match=where):
        check_vlb_weight(wrong)


@pytest.mark.parametrize(
    "wrong, where",
    [
        (lambda s, t, s2: s.beta[t], "s2 = 0.0.*point-mass"),
        (lambda s, t, s2: s.beta_tilde[t], "s2 = 1.0.*beta_t"),
        (lambda s, t, s2: s.alpha_bar_prev[t] * s2 + 1 - s.alpha_bar_prev[t], "without conditioning"),
    ],
)
def test_check_optimal_variance_rejects(wrong, where):
    with pytest.raises(CheckFailed, match=where):
        check_optimal_variance(wrong)


def test_checker_reports_other_errors_of_the_learner():
    def broken(*args):
        raise KeyError("oops")

    with pytest.raises(CheckFailed, match="raised KeyError"):
        check_q_sample(broken)
