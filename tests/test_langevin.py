"""Langevin and annealed Langevin dynamics driven by exact scores reproduce the target distributions."""

import math

import pytest
import torch

from ddpm_tutor.data import GaussianMixture
from ddpm_tutor.langevin import (
    LangevinState,
    annealed_langevin,
    geometric_sigmas,
    langevin_steps,
    langevin_update,
    smoothed_mixture,
)


def test_update_is_the_formula():
    g = torch.Generator().manual_seed(0)
    x, s, z = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    assert torch.allclose(langevin_update(x, s, 0.04, z), x + 0.02 * s + 0.2 * z, atol=1e-15)


def test_1d_gaussian_mean_and_variance():
    # For N(mu, s^2) the chain x' = x - (h/2)(x - mu)/s^2 + sqrt(h) z is an AR(1) process with stationary
    # law N(mu, s^2 / (1 - h / (4 s^2))): Langevin is right up to this O(h) bias.
    mu, s, h, n = 1.0, 0.5, 0.01, 20_000
    g = torch.Generator().manual_seed(0)
    x0 = 3.0 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    x = langevin_steps(lambda x: -(x - mu) / s**2, x0, h, 600, g)
    var_ula = s**2 / (1 - h / (4 * s**2))
    assert abs(x.mean() - mu) < 5 * math.sqrt(var_ula / n)
    assert abs(x.var() - var_ula) < 5 * var_ula * math.sqrt(2 / n)
    assert abs(x.var() - s**2) < 5 * var_ula * math.sqrt(2 / n) + (var_ula - s**2) * 1.01


def test_2d_gaussian_mean_and_covariance():
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    P = torch.linalg.inv(cov)
    h, n = 0.02, 20_000
    g = torch.Generator().manual_seed(1)
    x = langevin_steps(lambda x: -(x - mu) @ P, torch.randn(n, 2, generator=g, dtype=torch.float64), h, 800, g)
    cov_ula = cov @ torch.linalg.inv(torch.eye(2, dtype=torch.float64) - h * P / 4)  # stationary law of the chain
    assert ((x.mean(0) - mu).abs() < 5 * (cov_ula.diagonal() / n).sqrt()).all()
    emp = torch.cov(x.T)
    tol = 5 * math.sqrt(2 / n) * cov_ula.diagonal().max()
    assert (emp - cov_ula).abs().max() < tol, (emp, cov_ula)


def _song_ermon_mixture():
    # Song & Ermon 2019, sec. 3.2.2: 1/5 N((-5, -5), I) + 4/5 N((5, 5), I)
    return GaussianMixture.isotropic([0.2, 0.8], [[-5.0, -5.0], [5.0, 5.0]], 1.0)


def test_annealed_langevin_recovers_weights_that_plain_langevin_misses():
    gm = _song_ermon_mixture()
    sigmas = geometric_sigmas(20.0, 1.0, 10)
    smoothed = [smoothed_mixture(gm, float(s)) for s in sigmas]
    n = 4000
    g = torch.Generator().manual_seed(0)
    x0 = 16 * torch.rand(n, 2, generator=g, dtype=torch.float64) - 8  # uniform on [-8, 8]^2
    x_ann = annealed_langevin(lambda x, i: smoothed[i].score(x), x0, sigmas, 100, 0.1, g)
    x_plain = langevin_steps(smoothed[-1].score, x0, 0.1, 300, g)
    frac_ann = (x_ann.sum(1) > 0).double().mean().item()
    frac_plain = (x_plain.sum(1) > 0).double().mean().item()
    se = math.sqrt(0.2 * 0.8 / n)
    assert abs(frac_ann - 0.8) < 5 * se, frac_ann
    assert abs(frac_plain - 0.5) < 5 * math.sqrt(0.25 / n), frac_plain  # stuck where it started: half and half
    # the modes themselves are right: the mean of each cluster is near its centre
    right = x_ann[x_ann.sum(1) > 0]
    assert ((right.mean(0) - 5).abs() < 0.2).all()


def test_smoothed_mixture_is_the_convolution():
    gm = _song_ermon_mixture()
    g = torch.Generator().manual_seed(2)
    n, sigma = 200_000, 1.5
    x = gm.sample(n, g) + sigma * torch.randn(n, 2, generator=g, dtype=torch.float64)
    sm = smoothed_mixture(gm, sigma)
    assert torch.allclose(
        torch.cov(x.T),
        sm.covs.mul(sm.weights[:, None, None]).sum(0)
        + (sm.weights[:, None, None] * sm.means[:, :, None] * sm.means[:, None, :]).sum(0)
        - torch.outer(x.mean(0), x.mean(0)),
        atol=0.3,
    )
    # and the same as DDPM's diffused marginal after undoing its shrinking by sqrt(a): both add noise
    a = 1 / (1 + sigma**2)
    d = gm.diffused(a)
    y = torch.randn(5, 2, generator=g, dtype=torch.float64)
    # p_sigma(y) with y = x_t / sqrt(a): score_sigma(y) = sqrt(a) score_t(sqrt(a) y)
    assert torch.allclose(sm.score(y), math.sqrt(a) * d.score(math.sqrt(a) * y), atol=1e-12)


def test_intermediates_and_reproducibility():
    gm = _song_ermon_mixture()
    sigmas = [4.0, 2.0, 1.0]
    sm = [smoothed_mixture(gm, s) for s in sigmas]
    x0 = torch.zeros(10, 2, dtype=torch.float64)
    states = list(
        annealed_langevin(
            lambda x, i: sm[i].score(x), x0, sigmas, 5, 0.1, torch.Generator().manual_seed(3), yield_intermediates=True
        )
    )
    assert len(states) == 3 * 6 and all(isinstance(s, LangevinState) for s in states)
    assert states[0].step == 0 and states[-1].level == 2 and states[-1].sigma == 1.0
    final = annealed_langevin(lambda x, i: sm[i].score(x), x0, sigmas, 5, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(final, states[-1].x)
    assert torch.equal(x0, torch.zeros(10, 2, dtype=torch.float64))  # the input is not modified


def test_geometric_sigmas():
    s = geometric_sigmas(10.0, 0.1, 5)
    assert torch.allclose(s, torch.tensor([10.0, 10**0.5, 1.0, 10**-0.5, 0.1], dtype=torch.float64))


def test_bad_input_is_refused():
    score = lambda x: -x  # noqa: E731
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="step_size"):
        langevin_steps(score, x, 0.0, 10)
    with pytest.raises(ValueError, match="n_steps"):
        langevin_steps(score, x, 0.1, 0)
    with pytest.raises(ValueError, match="float tensor"):
        langevin_steps(score, torch.zeros(4, 2, dtype=torch.long), 0.1, 5)
    with pytest.raises(ValueError, match="shape of x"):
        langevin_steps(lambda x: x[:, :1], x, 0.1, 5)
    with pytest.raises(ValueError, match="decreasing"):
        annealed_langevin(lambda x, i: -x, x, [1.0, 2.0], 5, 0.1)
    with pytest.raises(ValueError, match="positive"):
        annealed_langevin(lambda x, i: -x, x, [1.0, -2.0], 5, 0.1)
    with pytest.raises(ValueError, match="eps_step"):
        annealed_langevin(lambda x, i: -x, x, [2.0, 1.0], 5, -0.1)
    with pytest.raises(FloatingPointError, match="diverged"):
        langevin_steps(lambda x: -100 * x, torch.ones(4, 2), 1.0, 2000)
    with pytest.raises(ValueError, match="sigma_max"):
        geometric_sigmas(0.1, 1.0, 3)
