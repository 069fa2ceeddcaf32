"""The one bound loop (ddpm_tutor.bound) against exact sums, the old uniform estimator and closed forms."""

import math

import pytest
import torch

from ddpm_tutor import elbo
from ddpm_tutor.bound import draw_steps, strata, stratified_estimate, vlb, vlb_term
from ddpm_tutor.data import GaussianMixture
from ddpm_tutor.diffusion import q_sample
from ddpm_tutor.losses import bits_per_dim
from ddpm_tutor.schedules import Schedule

T, K = 40, 9  # 8 strata of 4 or 5 steps
LEVELS = torch.linspace(-1, 1, 256, dtype=torch.float64)


def tiny_model(seed=0):
    """A fixed random MLP eps model on 2-pixel images: terms that fall steeply with t, like a real model's."""
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return lambda x, t: net(torch.cat([x, t[:, None].to(x.dtype) / T], 1))


@pytest.fixture(scope="module")
def setup():
    sched = Schedule.get("linear", T)
    x0 = LEVELS[torch.randint(0, 256, (32, 2), generator=torch.Generator().manual_seed(1))]
    model = tiny_model()
    full = vlb(model, sched, x0, var_types=("fixed_small", "fixed_large"), generator=torch.Generator().manual_seed(2))
    return sched, x0, model, full


def replay(terms, prior, k, n, seed, kind):
    """n estimates on a fixed table of all T terms (B, T): the library's stratified draw or the old uniform one."""
    g = torch.Generator().manual_seed(seed)
    est, var = [], []
    for _ in range(n):
        if kind == "stratified":
            s, w = draw_steps(T, k, g)
            r = stratified_estimate(terms[:, s], w, prior)
            est.append(r["mean"])
            var.append(r["se_steps"] ** 2)
        else:  # the old bits_per_dim: L_0 exact, k - 1 of the T - 1 KL steps without replacement, times (T-1)/(k-1)
            s = 1 + torch.randperm(T - 1, generator=g)[: k - 1]
            est.append(float((prior + terms[:, 0] + terms[:, s].sum(1) * (T - 1) / (k - 1)).mean()))
    return torch.tensor(est, dtype=torch.float64), torch.tensor(var, dtype=torch.float64)


def exact_variance(terms, k):
    """Var over the steps of the stratified estimate of the batch mean: sum_h N_h^2 sigma_h^2."""
    b, y = strata(T, k), terms.mean(0)
    return sum(float((b[h + 1] - b[h]) ** 2 * y[b[h] : b[h + 1]].var(unbiased=False)) for h in range(k - 1))


def test_strata_and_draws():
    for k in (2, 3, 9, 17, 39, 40):
        b = strata(T, k)
        sizes = b[1:] - b[:-1]
        assert b[0] == 1 and b[-1] == T and len(sizes) == k - 1 and int(sizes.max() - sizes.min()) <= 1
        s, w = draw_steps(T, k, torch.Generator().manual_seed(k))
        assert s[0] == 0 and w[0] == 1 and torch.equal(w[1:], sizes.double())
        assert ((s[1:] >= b[:-1]) & (s[1:] < b[1:])).all()
    s, w = draw_steps(T, T)
    assert torch.equal(s, torch.arange(T)) and (w == 1).all()
    # uniform within each stratum: every step of stratum 1 (steps 1..4) drawn about equally often
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.stack([draw_steps(T, K, g)[0][1] for _ in range(4000)]), minlength=6)[1:6]
    assert counts[4] == 0 and (counts[:4] - 1000).abs().max() < 120, counts


def test_exact_sum_is_the_sum_of_the_per_term_values(setup):
    sched, x0, model, full = setup
    g = torch.Generator().manual_seed(2)  # replays the loop's noise: one eps per step, in order
    for j in range(T):
        t = torch.full((len(x0),), j, dtype=torch.long)
        x_t = q_sample(sched, x0, t, torch.randn(x0.shape, generator=g, dtype=x0.dtype))
        for v in ("fixed_small", "fixed_large"):
            want = vlb_term(model, sched, x0, x_t, t, var_type=v) / math.log(2)
            torch.testing.assert_close(full[v]["terms"][:, j], want, rtol=1e-12, atol=0)
    for v in ("fixed_small", "fixed_large"):
        r = full[v]
        torch.testing.assert_close(r["total"], full["prior"] + r["terms"].sum(1), rtol=1e-12, atol=0)
        assert r["se_steps"] == 0.0 and r["se"] == pytest.approx(r["se_images"])
    # L_0 (same decoder width) is shared by both variances; the KL terms are not
    torch.testing.assert_close(full["fixed_small"]["terms"][:, 0], full["fixed_large"]["terms"][:, 0])
    assert not torch.allclose(full["fixed_small"]["terms"][:, 1:], full["fixed_large"]["terms"][:, 1:])


def test_stratified_is_unbiased_with_less_variance_than_uniform_and_a_conservative_se(setup):
    _, _, _, full = setup
    terms, prior = full["fixed_small"]["terms"], full["prior"]
    y = terms.mean(0)
    assert y[1] > 10 * y[T // 2 :].mean(), y  # terms that vary with t: what stratification exploits
    exact, n = float(full["fixed_small"]["total"].mean()), 4000
    strat, v = replay(terms, prior, K, n, 0, "stratified")
    unif, _ = replay(terms, prior, K, n, 1, "uniform")
    var = exact_variance(terms, K)
    for est in (strat, unif):  # (b) both unbiased
        assert abs(float(est.mean()) - exact) < 4 * float(est.std()) / math.sqrt(n), (float(est.mean()), exact)
    # the exact variance formula is what the draws show, and stratification beats the uniform draw (c)
    assert float(strat.var()) == pytest.approx(var, rel=0.1)
    assert float(strat.var()) < 0.8 * float(unif.var()), (float(strat.var()), float(unif.var()))
    # (d) the collapsed-strata variance is conservative: on average at least the true variance, and exactly
    # the true variance plus the spread of the true stratum sums within each pair
    b = strata(T, K)
    Y = torch.stack([y[b[h] : b[h + 1]].sum() for h in range(K - 1)])
    bias = sum(float(((Y[h : h + 2] - Y[h : h + 2].mean()) ** 2).sum() * 2) for h in range(0, K - 1, 2))
    assert float(v.mean()) >= 0.95 * float(strat.var())
    assert float(v.mean()) == pytest.approx(var + bias, rel=4 * float(v.std()) / math.sqrt(n) / (var + bias))


def test_loop_estimates_average_to_the_exact_sum(setup):
    """Through the loop (fresh noise and steps each time): stratified estimates centre on the full sum."""
    sched, x0, model, _ = setup
    est = torch.stack(
        [
            bits_per_dim(model, sched, x0, n_terms=K, generator=torch.Generator().manual_seed(s))["total"].mean()
            for s in range(60)
        ]
    )
    full = torch.stack(
        [
            bits_per_dim(model, sched, x0, generator=torch.Generator().manual_seed(1000 + s))["total"].mean()
            for s in range(20)
        ]
    )
    se = math.sqrt(float(est.var()) / len(est) + float(full.var()) / len(full))
    assert abs(float(est.mean() - full.mean())) < 4 * se, (float(est.mean()), float(full.mean()), se)
    one = bits_per_dim(model, sched, x0, n_terms=K, generator=torch.Generator().manual_seed(0))
    assert one["n_terms"] == K and int((~one["terms"][0].isnan()).sum()) == K and one["se_steps"] > 0


def test_nats_and_bits_differ_by_ln2(setup):
    sched, x0, model, _ = setup
    a = vlb(model, sched, x0, k=K, units="nats", generator=torch.Generator().manual_seed(3))
    b = vlb(model, sched, x0, k=K, units="bpd", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a["steps"], b["steps"])
    for key in ("total", "terms"):
        torch.testing.assert_close(a["fixed_small"][key], b["fixed_small"][key] * math.log(2), rtol=1e-12, atol=0)
    torch.testing.assert_close(a["prior"], b["prior"] * math.log(2), rtol=1e-12, atol=0)
    assert a["fixed_small"]["se"] == pytest.approx(b["fixed_small"]["se"] * math.log(2), rel=1e-12)


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
def test_continuous_decoder_matches_the_gaussian_closed_form(var_type):
    """(f) stratified estimates with the continuous decoder against elbo's exact bound for Gaussian data."""
    m, s, n = 0.4, 0.6, 4000
    sched = Schedule.get("linear", T)
    model = GaussianMixture.isotropic([1.0], [[m]], [s]).eps_model(sched)
    truth = -float(elbo.expected_gaussian_elbo_terms(sched, elbo.ddpm_reverse(sched, m, s, var_type), m, s)["elbo"])
    g = torch.Generator().manual_seed(7)
    means, ses = [], []
    for _ in range(12):
        x0 = m + s * torch.randn(n, 1, generator=g, dtype=torch.float64)
        r = vlb(model, sched, x0, k=K, var_types=var_type, decoder="continuous", units="nats", generator=g)[var_type]
        means.append(r["mean"])
        ses.append(r["se"])
    means = torch.tensor(means)
    assert abs(float(means.mean()) - truth) < 4 * float(means.std()) / math.sqrt(len(means)), (means, truth)
    assert float(means.std()) < 1.5 * max(ses), (float(means.std()), ses)  # the reported se is not optimistic
    out = elbo.continuous_elbo_terms(
        model, sched, x0, generator=torch.Generator().manual_seed(1), k=K, var_type=var_type
    )
    assert int(out["terms"][0].isfinite().sum()) == K and out["elbo"].shape == (n,)


def test_bad_input_is_refused_with_a_clear_message(setup):
    sched, x0, model, _ = setup
    with pytest.raises(ValueError, match=r"k \(terms evaluated\) must be an integer in 2..40"):
        vlb(model, sched, x0, k=1)
    with pytest.raises(ValueError, match=r"in 2..40"):
        bits_per_dim(model, sched, x0, n_terms=41)
    off_grid = torch.where(x0 < 0.9, x0 + 0.001, x0)  # inside [-1, 1], between the levels
    with pytest.raises(ValueError, match="256 levels"):
        vlb(model, sched, off_grid)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        vlb(model, sched, x0 * 127.5)
    with pytest.raises(ValueError, match="units must be one of"):
        vlb(model, sched, x0, units="bits")
    with pytest.raises(ValueError, match="decoder must be one of"):
        vlb(model, sched, x0, decoder="discrete")
    with pytest.raises(ValueError, match="float tensor"):
        vlb(model, sched, (x0 * 127.5).long())
    with pytest.raises(ValueError, match="terms must be"):
        stratified_estimate(torch.zeros(3), torch.ones(3))
    # off the grid is fine for the continuous decoder
    r = vlb(model, sched, off_grid, k=K, decoder="continuous", generator=torch.Generator().manual_seed(0))
    assert r["fixed_small"]["total"].isfinite().all()
