import math

import pytest
import torch

from ddpm_tutor import losses as L
from ddpm_tutor.bound import vlb_term
from ddpm_tutor.diffusion import q_sample
from ddpm_tutor.schedules import Schedule

LEVELS = torch.linspace(-1, 1, 256, dtype=torch.float64)  # the 256 data levels -1 + 2k/255


@pytest.mark.parametrize("mean, log_scale", [(0.0, -3.0), (0.37, -6.0), (-0.99, -1.0), (1.2, -4.0), (0.0, 1.0)])
def test_decoder_probabilities_sum_to_one(mean, log_scale):
    x = LEVELS
    logp = L.discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    # interior bins: the Gaussian's mass between bin edges, computed with math.erf
    sd = math.exp(log_scale)
    cdf = lambda v: 0.5 * (1 + math.erf((v - mean) / (sd * math.sqrt(2))))
    k = 100
    expected = cdf(LEVELS[k].item() + 1 / 255) - cdf(LEVELS[k].item() - 1 / 255)
    if expected > 1e-10:
        assert logp[k].exp().item() == pytest.approx(expected, rel=1e-6)


def test_decoder_refuses_unscaled_data():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        L.discretized_gaussian_log_likelihood(torch.tensor([0.0, 255.0]), torch.zeros(2), torch.zeros(2))


def test_prior_term_of_paper_schedule_is_about_1e_5_bits_per_dim():
    sched = Schedule.linear()
    x0 = LEVELS[torch.randint(0, 256, (64, 3 * 32 * 32), generator=torch.Generator().manual_seed(0))]
    bpd = L.prior_bpd(sched, x0)
    assert 1e-6 < bpd.mean().item() < 1e-4
    # closed form for one dimension: KL(N(sqrt(ab) x, 1-ab) || N(0, 1)) / ln 2
    ab = sched.alpha_bar[-1].item()
    kl = 0.5 * (-math.log(1 - ab) + (1 - ab) + ab * (x0**2).mean(1) - 1) / math.log(2)
    assert torch.allclose(bpd, kl, rtol=1e-6)


def test_normal_kl_against_monte_carlo(gen):
    m1, s1, m2, s2 = 0.3, 0.7, -0.2, 1.3
    x = m1 + s1 * torch.randn(400_000, generator=gen, dtype=torch.float64)
    log_ratio = (-0.5 * ((x - m1) / s1) ** 2 - math.log(s1)) - (-0.5 * ((x - m2) / s2) ** 2 - math.log(s2))
    kl = L.normal_kl(torch.tensor(m1), torch.tensor(2 * math.log(s1)), torch.tensor(m2), torch.tensor(2 * math.log(s2)))
    assert kl.item() == pytest.approx(log_ratio.mean().item(), abs=5 * log_ratio.std().item() / 400_000**0.5)


def test_weightings_agree_with_their_definitions(gen):
    sched = Schedule.linear()
    x0 = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    t = torch.randint(1, 1000, (64,), generator=gen)
    model = lambda x, s: 0.9 * eps  # a fixed, slightly wrong noise prediction
    x_t = q_sample(sched, x0, t, eps)
    eps_err = L.mean_flat((eps - 0.9 * eps) ** 2)
    from ddpm_tutor.diffusion import x0_from_eps

    x0_err = L.mean_flat((x0 - x0_from_eps(sched, x_t, t, 0.9 * eps)) ** 2)
    simple = L.diffusion_loss(model, sched, x0, t=t, eps=eps, weighting="simple")
    x0w = L.diffusion_loss(model, sched, x0, t=t, eps=eps, weighting="x0")
    assert torch.allclose(simple, eps_err) and torch.allclose(x0w, x0_err, rtol=1e-8)
    assert torch.allclose(simple, sched.snr[t] * x0_err, rtol=1e-8)  # ||eps err|| = SNR ||x0 err||
    # vlb weighting times the eps error equals the KL term of the bound (in nats per dim)
    vlb = L.diffusion_loss(model, sched, x0, t=t, eps=eps, weighting="vlb")
    assert torch.allclose(vlb, vlb_term(model, sched, x0, x_t, t), rtol=1e-6)
    # finite at the first step too (beta_tilde_1 = 0 there; the clipped variance is used)
    w0 = L.eps_weight(sched, torch.tensor([0, 1]), x0[:2], "vlb")
    assert torch.isfinite(w0).all() and 0 < w0[0].item() < 2 * w0[1].item()
    with pytest.raises(ValueError, match="weighting must be one of"):
        L.diffusion_loss(model, sched, x0, weighting="snr2")


def test_bits_per_dim_sum_and_monte_carlo(gen):
    """The full sum over T terms against its Monte Carlo estimate; a perfect denoiser has a small bound."""
    sched = Schedule.linear(100, 1e-3, 0.2)
    x0 = LEVELS[torch.randint(0, 256, (8, 6), generator=gen)].float()
    model = lambda x, t: torch.zeros_like(x)  # predicts no noise at all
    full = L.bits_per_dim(model, sched, x0, generator=torch.Generator().manual_seed(0))
    assert full["n_terms"] == 100 and not torch.isnan(full["terms"]).any()
    assert torch.allclose(full["total"], full["prior"] + full["terms"].sum(1))
    ests = torch.stack(
        [
            L.bits_per_dim(model, sched, x0, n_terms=20, generator=torch.Generator().manual_seed(s))["total"]
            for s in range(30)
        ]
    )
    # the estimator is unbiased: its mean over draws is near the exact sum (tolerance from its spread)
    assert torch.allclose(ests.mean(0), full["total"], atol=(4 * ests.std(0) / 30**0.5).max().item() + 1e-3)
    with pytest.raises(ValueError, match="must be an integer in 2..100"):
        L.bits_per_dim(model, sched, x0, n_terms=0)


def test_nan_data_refused():
    with pytest.raises(ValueError, match="finite"):
        L.check_image_range(torch.tensor([0.0, float("nan")]))


def test_sample_t_uniform_is_algorithm_1_draw_for_draw():
    """p_small = 0 draws exactly torch.randint(0, T) from the same generator (old runs reproduce bit for bit)."""
    a = L.sample_t(4096, 1000, torch.Generator().manual_seed(5))
    b = torch.randint(0, 1000, (4096,), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_sample_t_mixture_has_the_stated_law():
    """With p_small = 0.3, small_t = 50, T = 1000: P(t = k) = 0.3/50 + 0.7/1000 for k < 50, 0.7/1000 above.
    A chi-square test over 20 bins (the 50 small steps in 10 bins, the rest in 10) at n = 400,000."""
    T, p, k, n = 1000, 0.3, 50, 400_000
    t = L.sample_t(n, T, torch.Generator().manual_seed(0), p_small=p, small_t=k)
    assert t.min() >= 0 and t.max() <= T - 1
    law = torch.full((T,), (1 - p) / T, dtype=torch.float64)
    law[:k] += p / k
    edges = [*range(0, k, 5), *range(k, T + 1, 95)]  # 10 bins of 5 small steps, 10 of 95 steps
    observed = torch.tensor([((t >= a) & (t < b)).sum().item() for a, b in zip(edges, edges[1:])], dtype=torch.float64)
    expected = torch.tensor([law[a:b].sum().item() * n for a, b in zip(edges, edges[1:])])
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 45, chi2  # 19 degrees of freedom: P(chi2 > 45) is about 7e-4
    # the share of nearly clean steps, the mixture's point: 0.3 + 0.7 * 0.05 = 0.335, not the uniform 0.05
    assert abs((t < k).double().mean().item() - 0.335) < 0.005
    # and the test can fail: the uniform draw is far from this law
    u = L.sample_t(n, T, torch.Generator().manual_seed(0))
    assert (
        (torch.tensor([((u >= a) & (u < b)).sum().item() for a, b in zip(edges, edges[1:])]) - expected) ** 2 / expected
    ).sum() > 1000


def test_sample_t_mixture_is_the_uniform_loss_reweighted_by_t_p_of_t():
    """In expectation the unweighted loss under the mixture is the uniform-t loss weighted by T p(t), which is
    1 - p + p T / k below k and 1 - p above (6.7 and 0.7 here, as the docstring states): checked on a per-step
    loss f(t) = (t / T)^2 against the closed form of the mixture and against the Monte Carlo mean."""
    T, p, k = 1000, 0.3, 50
    f = (torch.arange(T, dtype=torch.float64) / T) ** 2
    weights = torch.full((T,), 1 - p, dtype=torch.float64)
    weights[:k] += p * T / k
    assert weights[0].item() == pytest.approx(6.7) and weights[-1].item() == pytest.approx(0.7)
    mixture = (1 - p) * f.mean() + p * f[:k].mean()
    assert (weights * f).mean().item() == pytest.approx(mixture.item(), rel=1e-12)
    t = L.sample_t(400_000, T, torch.Generator().manual_seed(1), p_small=p, small_t=k)
    assert abs(f[t].mean().item() - mixture.item()) < 2e-3  # the standard error is about 5e-4
    assert abs(f.mean().item() - mixture.item()) > 0.05  # the uniform loss is another objective


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(p_small=1.0), r"p_small_t must lie in \[0, 1\)"),
        (dict(p_small=-0.1), r"p_small_t must lie in \[0, 1\)"),
        (dict(p_small=True), r"p_small_t must lie in \[0, 1\)"),
        (dict(p_small=0.3, small_t=0), "small_t must be an integer >= 1"),
        (dict(p_small=0.3, small_t=2.5), "small_t must be an integer >= 1"),
        (dict(p_small=0.3, small_t=11), "small_t must be at most T = 10"),
    ],
)
def test_sample_t_refuses_a_mixture_that_is_not_one(kw, match):
    with pytest.raises(ValueError, match=match):
        L.sample_t(4, 10, **kw)
