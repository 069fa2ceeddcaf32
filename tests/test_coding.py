"""Rate and distortion of progressive coding against closed forms (Gaussian data, exact model)."""

import math

import pytest
import torch

from ddpm_tutor import coding
from ddpm_tutor.data import mixtures
from ddpm_tutor.data.mixtures import GaussianMixture
from ddpm_tutor.samplers import ddpm_sample
from ddpm_tutor.schedules import Schedule


def _gaussian_1d(s):
    return GaussianMixture.isotropic(torch.ones(1), torch.zeros(1, 1), s)


def test_gaussian_data_distortion_and_kl_closed_forms(gen):
    """x_0 ~ N(0, s^2), exact eps model: x0_hat = E[x_0 | x_t], so the RMSE is the posterior std
    sqrt(s^2 (1-a) / (a s^2 + 1 - a)) at every step, and each KL term has expectation
    c_t^2 Var[x_0 | x_t] / (2 beta_tilde_t) nats (c_t the posterior's coefficient of x_0)."""
    s, n = 0.5, 4000
    sched = Schedule.linear(200, 1e-3, 0.05)
    mix = _gaussian_1d(s)
    x0 = mix.sample(n, gen)
    rd = coding.rate_distortion(mix.eps_model(sched), sched, x0, gen)
    a = sched.alpha_bar
    v = s * s * (1 - a) / (a * s * s + 1 - a)  # written out, not via mixtures.gaussian_posterior_std
    assert torch.allclose(mixtures.gaussian_posterior_std(a, s * s), v.sqrt())
    # squared errors are v * chi^2_1: relative standard error of their mean is sqrt(2/n)
    assert torch.allclose(rd["mse"].mean(0), v, rtol=5 * math.sqrt(2 / n))
    c = sched.beta * sched.alpha_bar_prev.sqrt() / (1 - a)
    bt = sched.beta * (1 - sched.alpha_bar_prev) / (1 - a)
    expected_kl = (c**2 * v / (2 * bt))[1:] / math.log(2)
    assert torch.allclose(rd["kl"].mean(0)[1:], expected_kl, rtol=5 * math.sqrt(2 / n))
    assert (rd["kl"][:, 0] == 0).all()
    # prior: KL(N(sqrt(a_T) x0, 1 - a_T) || N(0, 1)) per example, in bits
    aT = a[-1]
    prior = 0.5 * (aT * x0[:, 0] ** 2 + (1 - aT) - 1 - torch.log(1 - aT)) / math.log(2)
    assert torch.allclose(rd["prior"], prior, atol=1e-12)
    # the rate is cumulative: prior + the KL terms already paid; its end is the bound's KL sum
    assert torch.allclose(rd["rate"][-1], prior.mean())
    assert torch.allclose(rd["rate"][0], rd["total_rate"].mean())
    assert torch.allclose(rd["total_rate"], prior + rd["kl"].sum(1))
    assert (rd["rate"][:-1] >= rd["rate"][1:]).all()
    assert torch.allclose(rd["distortion_255"], 127.5 * rd["distortion"])


def test_kl_terms_match_a_direct_gaussian_kl(gen):
    """Each KL term against the scalar formula log(s2/s1) + (s1^2 + (m1-m2)^2)/(2 s2^2) - 1/2 on the
    sender's own trajectory, rebuilt here step by step with the same random numbers."""
    sched = Schedule.linear(30, 1e-2, 0.2)
    mix = GaussianMixture.isotropic(torch.ones(2), torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), 0.3)
    x0 = mix.sample(50, gen)
    model = mix.eps_model(sched)
    g1 = torch.Generator().manual_seed(99)
    for var_type in ("fixed_small", "fixed_large"):
        rd = coding.rate_distortion(model, sched, x0, torch.Generator().manual_seed(99), var_type=var_type)
        g1 = torch.Generator().manual_seed(99)
        a = sched.alpha_bar
        x = a[-1].sqrt() * x0 + (1 - a[-1]).sqrt() * torch.randn(x0.shape, generator=g1, dtype=x0.dtype)
        for i in range(sched.T - 1, 0, -1):
            ab, ab_prev, beta = a[i], a[i - 1], sched.beta[i]
            eps = model(x, torch.full((50,), i))
            x0_hat = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
            assert torch.allclose(rd["mse"][:, i], ((x0_hat - x0) ** 2).mean(1), atol=1e-12)
            coef0, coeft = beta * ab_prev.sqrt() / (1 - ab), (1 - ab_prev) * (1 - beta).sqrt() / (1 - ab)
            m1, m2 = coef0 * x0 + coeft * x, coef0 * x0_hat + coeft * x
            v1 = beta * (1 - ab_prev) / (1 - ab)
            v2 = v1 if var_type == "fixed_small" else beta
            kl = (0.5 * torch.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5).mean(1) / math.log(2)
            assert torch.allclose(rd["kl"][:, i], kl, atol=1e-10, rtol=1e-8)
            x = m1 + v1.sqrt() * torch.randn(x0.shape, generator=g1, dtype=x0.dtype)


def test_mixture_distortion_is_the_posterior_spread_and_decreases(gen):
    """For mixture data and the exact model, E||x_0 - x0_hat||^2 / D = E tr Cov[x_0 | x_t] / D; the
    posterior covariance is checked against Monte Carlo, and the distortion falls along the chain."""
    sched = Schedule.linear(100, 1e-3, 0.1)
    mix = GaussianMixture.ring(k=4, radius=1.0, std=0.3)
    n = 3000
    x0 = mix.sample(n, gen)
    rd = coding.rate_distortion(mix.eps_model(sched), sched, x0, gen)
    # posterior covariance by Monte Carlo at one x_t: sample the joint, keep x_0 whose x_t falls near it
    a = float(sched.alpha_bar[40])
    big = mix.sample(400_000, gen)
    xt = a**0.5 * big + (1 - a) ** 0.5 * torch.randn(big.shape, generator=gen, dtype=torch.float64)
    point = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    near = (xt - point).norm(dim=1) < 0.05
    mean, cov = mixtures.mixture_posterior_x0_cov(mix, point, a)
    assert torch.allclose(mean, mix.posterior_mean_x0(point, a), atol=1e-12)
    sel = big[near]
    assert torch.allclose(sel.mean(0), mean[0], atol=0.05)
    assert torch.allclose(torch.cov(sel.T), cov[0], atol=0.04)
    # distortion: RMSE^2 = mean over examples of tr Cov[x_0 | x_t] / D, within MC error
    for i in (5, 30, 60, 99):
        ab = float(sched.alpha_bar[i])
        # fresh x_t ~ q(x_t | x_0) have the same law as the sender's trajectory at step i
        x_t = ab**0.5 * x0 + (1 - ab) ** 0.5 * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        _, cov = mixtures.mixture_posterior_x0_cov(mix, x_t, ab)
        expected = cov.diagonal(dim1=1, dim2=2).mean(1).mean()
        assert abs(rd["mse"][:, i].mean() - expected) < 0.08 * expected + 1e-3
    d = rd["distortion"]
    assert (d[10::10] > d[:-10:10]).all()


def test_l0_is_the_discretised_gaussian_likelihood_by_numerical_integration(gen):
    """L_0 = -log2 p(x_0 | x_1) per dimension, p(x_0 | x_1) = N(x0_hat, sigma_1^2) integrated over each level's
    bin of width 2/255, the outermost bins open-ended (Ho et al. 2020, eq. 13). A model whose x0_hat is a known
    constant c makes the decoder independent of the random x_1: its mean is c (mu_tilde at the first step is
    x0_hat), its variance beta_tilde of the paper's step 2 (the clipped log-variance of the paper's code), here
    from the beta table alone; the bins are integrated by the trapezoid rule."""
    sched = Schedule.linear(20, 1e-3, 0.3)
    levels = torch.tensor([128, 135, 140, 150, 0, 1, 254, 255], dtype=torch.float64)
    x0 = (levels / 127.5 - 1).reshape(1, 1, 2, 4).expand(3, 1, 2, 4).clone()
    c = torch.tensor([0.1, 0.1, 0.1, 0.1, -0.97, -0.97, 0.97, 0.97], dtype=torch.float64).reshape(1, 1, 2, 4)
    ab = torch.cumprod(1 - sched.beta, 0)

    def constant_x0(x, t):  # the eps that makes x0_hat = (x - sqrt(1 - ab) eps) / sqrt(ab) equal c
        a = ab[t].reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * c) / (1 - a).sqrt()

    sigma = (sched.beta[1] * (1 - ab[0]) / (1 - ab[1])).sqrt()
    log_p = []
    for x, m in zip((levels / 127.5 - 1).tolist(), c.flatten().tolist()):
        lo = m - 40 * sigma if x == -1 else x - 1 / 255  # -inf: 40 sigma hold all the mass in float64
        hi = m + 40 * sigma if x == 1 else x + 1 / 255
        u = torch.linspace(float(lo), float(hi), 200_001, dtype=torch.float64)
        pdf = torch.exp(-0.5 * ((u - m) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        log_p.append(math.log(torch.trapezoid(pdf, u)))
    expected = -sum(log_p) / len(log_p) / math.log(2)
    assert 1 < expected < 20  # every bin has a probability far from 0 and from 1: the comparison means something
    for var_type in ("fixed_small", "fixed_large"):  # both use beta_tilde at the first step, as the paper's code
        rd = coding.rate_distortion(constant_x0, sched, x0, gen, var_type=var_type, discrete_decoder=True)
        torch.testing.assert_close(rd["l0"], torch.full((3,), expected, dtype=torch.float64), rtol=1e-6, atol=0)


def test_discrete_decoder_and_images(gen):
    sched = Schedule.linear(20, 1e-3, 0.3)
    x0 = torch.randint(0, 256, (4, 1, 3, 3), generator=gen).double() / 127.5 - 1
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    rd = coding.rate_distortion(model, sched, x0, gen, discrete_decoder=True)
    assert rd["l0"].shape == (4,) and (rd["l0"] > 0).all() and rd["dims"] == 9
    assert rd["rate"].shape == (20,) and rd["kl"].shape == (4, 20)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        coding.rate_distortion(model, sched, 3 * x0, gen, discrete_decoder=True)
    with pytest.raises(ValueError, match="finite"):
        coding.rate_distortion(model, sched, x0 * float("nan"), gen)


def test_finishing_copies_of_x_t_shares_more_when_t_is_small(gen):
    """Ho et al. 2020, Figure 7: the ancestral sampler started at step t (samplers.ddpm_sample with t_start)."""
    sched = Schedule.linear(100, 1e-3, 0.1)
    mix = GaussianMixture.ring(k=4, radius=1.0, std=0.2)
    model = mix.eps_model(sched)
    spread = []
    for t_start in (10, 50, 99):
        ab = float(sched.alpha_bar[t_start])
        x0 = mix.sample(1, gen).expand(500, 2)
        x_t = ab**0.5 * x0[:1] + (1 - ab) ** 0.5 * torch.randn(1, 2, generator=gen, dtype=torch.float64)
        out = ddpm_sample(model, sched, (500, 2), x_T=x_t.expand(500, 2).clone(), t_start=t_start, generator=gen)
        spread.append(out.var(0).sum().sqrt().item())
    assert spread[0] < spread[1] < spread[2]
