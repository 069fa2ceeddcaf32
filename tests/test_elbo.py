"""The closed-form bound for Gaussian data against independent computations (Bayes' rule on a grid,
quadrature, sampling the model's chain, the library's own KL pieces by Monte Carlo)."""

import math

import numpy as np
import pytest
import torch

from ddpm_tutor import elbo
from ddpm_tutor.data import GaussianMixture
from ddpm_tutor.diffusion import p_mean_variance
from ddpm_tutor.losses import normal_kl
from ddpm_tutor.schedules import Schedule

M, S = 0.5, 0.5


def normal_logpdf(x, mean, var):
    return torch.distributions.Normal(
        torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(var, dtype=torch.float64).sqrt()
    ).log_prob(x)


@pytest.mark.parametrize("step", [0, 3, 17])
def test_exact_reverse_matches_bayes_rule_on_a_grid(step):
    # q(x_{t-1} | x_t) is proportional to q(x_{t-1}) q(x_t | x_{t-1}): normalise it numerically on a grid.
    sched = Schedule.get("linear", 20)
    rev = elbo.exact_reverse(sched, M, S)
    ab_prev = 1.0 if step == 0 else float(sched.alpha_bar[step - 1])
    mean_prev, var_prev = math.sqrt(ab_prev) * M, ab_prev * S**2 + 1 - ab_prev
    beta = float(sched.beta[step])
    grid = torch.linspace(-6, 6, 200001, dtype=torch.float64)
    for x_t in (-1.3, 0.2, 2.0):
        logw = normal_logpdf(grid, mean_prev, var_prev) + normal_logpdf(
            torch.tensor(x_t), math.sqrt(1 - beta) * grid, beta
        )
        w = torch.softmax(logw, 0)
        mean = (w * grid).sum()
        var = (w * (grid - mean) ** 2).sum()
        assert torch.isclose(mean, rev["A"][step] * x_t + rev["B"][step], atol=1e-6)
        assert torch.isclose(var, rev["C"][step], rtol=1e-4)


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
def test_ddpm_reverse_mean_is_the_library_mean_of_the_exact_eps_model(var_type):
    sched = Schedule.get("linear", 50)
    rev = elbo.ddpm_reverse(sched, M, S, var_type)
    model = GaussianMixture.isotropic([1.0], [[M]], [S]).eps_model(sched)
    x = torch.linspace(-2, 2, 7, dtype=torch.float64)[:, None]
    for step in (0, 1, 25, 49):
        t = torch.full((7,), step)
        p = p_mean_variance(model, sched, x, t, var_type=var_type)
        assert torch.allclose(p["mean"][:, 0], rev["A"][step] * x[:, 0] + rev["B"][step], atol=1e-12)
        assert torch.allclose(p["log_variance"][:, 0].exp(), rev["C"][step].expand(7), rtol=1e-12)
    # the ideal DDPM mean is E[mu_tilde | x_t] = E[x_{t-1} | x_t], the exact reverse mean
    ex = elbo.exact_reverse(sched, M, S)
    assert torch.allclose(rev["A"], ex["A"], atol=1e-12) and torch.allclose(rev["B"], ex["B"], atol=1e-12)


def test_optimal_model_bound_is_log_likelihood_minus_prior_mismatch():
    # With p(x_{t-1}|x_t) = q(x_{t-1}|x_t), ELBO(x0) = log q(x0) - E_{q(x_T|x0)}[log q(x_T) - log N(x_T; 0, 1)].
    sched = Schedule.get("linear", 30)
    x0 = torch.linspace(-1.5, 2.5, 9, dtype=torch.float64)
    terms = elbo.gaussian_elbo_terms(sched, elbo.exact_reverse(sched, M, S), x0)
    ab = sched.alpha_bar[-1]
    mu_T, v_T = ab.sqrt() * M, ab * S**2 + 1 - ab
    m_c, v_c = ab.sqrt() * x0, 1 - ab  # q(x_T | x0)
    e_log_qT = -0.5 * (math.log(2 * math.pi) + v_T.log() + ((m_c - mu_T) ** 2 + v_c) / v_T)
    e_log_prior = -0.5 * (math.log(2 * math.pi) + m_c**2 + v_c)
    expected = normal_logpdf(x0, M, S**2) - (e_log_qT - e_log_prior)
    assert torch.allclose(terms["elbo"], expected, atol=1e-9)


@pytest.mark.parametrize("T", [1, 5, 40])
def test_bound_is_below_the_models_exact_log_likelihood(T):
    sched = Schedule.get("linear", T)
    g = torch.Generator().manual_seed(T)
    revs = [
        elbo.exact_reverse(sched, M, S),
        elbo.ddpm_reverse(sched, M, S, "fixed_small"),
        elbo.ddpm_reverse(sched, M, S, "fixed_large"),
        {
            "A": torch.rand(T, generator=g, dtype=torch.float64) + 0.5,
            "B": torch.randn(T, generator=g, dtype=torch.float64),
            "C": torch.rand(T, generator=g, dtype=torch.float64) + 0.1,
        },
    ]
    x0 = torch.linspace(-3, 3, 13, dtype=torch.float64)
    for rev in revs:
        mean, var = elbo.model_marginal(sched, rev)
        gap = normal_logpdf(x0, mean, var) - elbo.gaussian_elbo_terms(sched, rev, x0)["elbo"]
        assert (gap > -1e-9).all(), gap.min()


def test_model_marginal_matches_sampling_the_chain():
    sched = Schedule.get("linear", 10)
    rev = elbo.ddpm_reverse(sched, M, S, "fixed_large")
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x = torch.randn(n, generator=g, dtype=torch.float64)
    for i in range(9, -1, -1):
        x = rev["A"][i] * x + rev["B"][i] + rev["C"][i].sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
    mean, var = elbo.model_marginal(sched, rev)
    assert abs(x.mean() - mean) < 5 * math.sqrt(var / n)
    assert abs(x.var() - var) < 5 * var * math.sqrt(2 / n)


def test_expected_terms_match_gauss_hermite_quadrature():
    sched = Schedule.get("linear", 25)
    rev = elbo.ddpm_reverse(sched, M, S, "fixed_small")
    nodes, weights = np.polynomial.hermite_e.hermegauss(12)  # E f(Z), Z ~ N(0, 1), exact for degree <= 23
    x0 = torch.as_tensor(M + S * nodes)
    w = torch.as_tensor(weights / weights.sum())
    per = elbo.gaussian_elbo_terms(sched, rev, x0)
    avg = elbo.expected_gaussian_elbo_terms(sched, rev, M, S)
    assert torch.isclose(avg["elbo"], (w * per["elbo"]).sum(), atol=1e-10)
    assert torch.allclose(avg["denoising"], (w[:, None] * per["denoising"]).sum(0), atol=1e-10)
    assert torch.isclose(avg["prior"], (w * per["prior"]).sum(), atol=1e-12)


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
def test_monte_carlo_bound_from_library_pieces_matches_closed_form(var_type):
    sched = Schedule.get("linear", 20)
    model = GaussianMixture.isotropic([1.0], [[M]], [S]).eps_model(sched)
    g = torch.Generator().manual_seed(1)
    n = 20_000
    x0 = M + S * torch.randn(n, 1, generator=g, dtype=torch.float64)
    mc = elbo.continuous_elbo_terms(model, sched, x0, generator=g, var_type=var_type)
    cf = elbo.expected_gaussian_elbo_terms(sched, elbo.ddpm_reverse(sched, M, S, var_type), M, S)
    se = mc["elbo"].std() / math.sqrt(n)
    assert abs(mc["elbo"].mean() - cf["elbo"]) < 5 * se
    for i in range(1, 20):
        col = mc["terms"][:, i]
        assert abs(col.mean() - cf["denoising"][i]) < 5 * col.std() / math.sqrt(n) + 1e-12
    col = mc["terms"][:, 0]
    assert abs(col.mean() + cf["reconstruction"]) < 5 * col.std() / math.sqrt(n)
    assert torch.allclose(mc["prior"].mean(), cf["prior"], atol=5 * mc["prior"].std().item() / math.sqrt(n))


def test_prior_kl_and_log_likelihood_match_torch_distributions():
    sched = Schedule.get("linear", 100)
    x0 = torch.linspace(-2, 2, 5, dtype=torch.float64)
    ab = sched.alpha_bar[-1]
    q = torch.distributions.Normal(ab.sqrt() * x0, (1 - ab).sqrt())
    p = torch.distributions.Normal(torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(elbo.prior_kl(sched, x0), torch.distributions.kl_divergence(q, p), atol=1e-12)
    assert torch.allclose(
        elbo.prior_kl(sched, x0),
        normal_kl(
            ab.sqrt() * x0, (1 - ab).log(), torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
        ),
        atol=1e-12,
    )
    lv = torch.tensor(-0.7, dtype=torch.float64)
    assert torch.allclose(
        elbo.gaussian_log_likelihood(x0, 0.3, lv),
        torch.distributions.Normal(0.3, (0.5 * lv).exp()).log_prob(x0),
        atol=1e-12,
    )
    assert torch.allclose(elbo.exact_log_likelihood(x0, M, S), normal_logpdf(x0, M, S**2), atol=1e-12)


def test_stratified_subset_gives_nan_elsewhere_and_works_in_2d():
    sched = Schedule.get("linear", 10)
    gm = GaussianMixture.ring(k=4)
    x0 = gm.sample(64, torch.Generator().manual_seed(0))
    out = elbo.continuous_elbo_terms(gm.eps_model(sched), sched, x0, generator=torch.Generator().manual_seed(1), k=4)
    assert out["terms"].shape == (64, 10) and out["elbo"].shape == (64,)
    drawn = out["terms"][0].isfinite()
    assert drawn[0] and int(drawn.sum()) == 4 and torch.isfinite(out["terms"][:, drawn]).all()
    assert torch.isfinite(out["elbo"]).all()


def test_bad_input_is_refused_with_a_clear_message():
    sched = Schedule.get("linear", 10)
    with pytest.raises(ValueError, match="standard deviation"):
        elbo.exact_reverse(sched, 0.0, -1.0)
    with pytest.raises(ValueError, match="shape"):
        elbo.gaussian_elbo_terms(sched, {"A": torch.ones(3), "B": torch.ones(3), "C": torch.ones(3)}, torch.zeros(2))
    with pytest.raises(ValueError, match="positive"):
        elbo.model_marginal(sched, {"A": torch.ones(10), "B": torch.ones(10), "C": torch.zeros(10)})
    with pytest.raises(ValueError, match=r"k \(terms evaluated\) must be an integer in 2..10"):
        elbo.continuous_elbo_terms(lambda x, t: x, sched, torch.zeros(4, 1), k=11)
    with pytest.raises(ValueError, match="float"):
        elbo.continuous_elbo_terms(lambda x, t: x, sched, torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="1-D"):
        elbo.gaussian_elbo_terms(sched, elbo.exact_reverse(sched, 0, 1), torch.zeros(2, 2))


def test_vp_linear_schedule_is_the_papers_schedule_at_T_1000():
    s = elbo.vp_linear_schedule(1000)
    assert (s.beta - Schedule.linear(1000).beta).abs().max() < 3e-4
    assert abs(s.alpha_bar[-1] - Schedule.linear(1000).alpha_bar[-1]) < 1e-5
    # the same process for every T: bar alpha at the same time tau agrees
    assert torch.isclose(elbo.vp_linear_schedule(10).alpha_bar[4], s.alpha_bar[499], rtol=1e-12)
    with pytest.raises(ValueError, match="T must"):
        elbo.vp_linear_schedule(0)


def test_gap_limits_of_the_fixed_variances():
    # With many steps: fixed_large's gap -> (1 - log 2)/2 (the decoder width beta_tilde_2 ~ beta_1 / 2), and
    # fixed_small's -> that plus gamma/2 (first steps: beta_tilde_t ~ beta (t-1)/t), gamma = Euler's constant.
    sched = elbo.vp_linear_schedule(50_000)
    ex = elbo.exact_reverse(sched, M, S)
    entropy = -0.5 * math.log(2 * math.pi * math.e * S**2)
    gaps = {
        v: entropy - elbo.expected_gaussian_elbo_terms(sched, elbo.ddpm_reverse(sched, M, S, v), M, S)["elbo"]
        for v in ("fixed_small", "fixed_large")
    }
    half_decoder = (1 - math.log(2)) / 2
    assert abs(gaps["fixed_large"] - half_decoder) < 0.005
    assert abs(gaps["fixed_small"] - half_decoder - 0.5772156649 / 2) < 0.015
    assert ex["C"].shape == (50_000,)
