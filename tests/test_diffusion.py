import math

import pytest
import torch

from ddpm_tutor import diffusion as D
from ddpm_tutor.schedules import Schedule


def test_closed_form_matches_iterated_chain(gen):
    """q(x_t | x_0) in closed form (eq. 4) against t steps of the one-step chain (eq. 2), Monte Carlo."""
    sched = Schedule.linear(200, 1e-3, 0.05)
    n = 50_000
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64).expand(n, 2)
    x = x0.clone()
    for step in range(sched.T):
        x = D.q_step(sched, x, torch.full((n,), step), torch.randn(n, 2, generator=gen, dtype=torch.float64))
        if step in (0, 9, 99, 199):
            mean, var = D.q_mean_variance(sched, x0[:1], torch.tensor([step]))
            # tolerances: 5 standard errors of the sample mean and of the sample variance
            se_mean = (var.sqrt() / math.sqrt(n)).item()
            se_var = (var * math.sqrt(2 / (n - 1))).item()
            assert torch.allclose(x.mean(0), mean[0], atol=5 * se_mean)
            assert torch.allclose(x.var(0), var[0].expand(2), atol=5 * se_var)
            # and the closed-form sampler draws the same law
            xs = D.q_sample(sched, x0, torch.full((n,), step), torch.randn(n, 2, generator=gen, dtype=torch.float64))
            assert torch.allclose(xs.mean(0), mean[0], atol=5 * se_mean)
            assert torch.allclose(xs.var(0), var[0].expand(2), atol=5 * se_var)


def _bayes_posterior(beta_t, ab_prev, x0, x_t):
    """q(x_{t-1} | x_t, x_0) by conditioning the joint Gaussian of (x_{t-1}, x_t) given x_0 (float64)."""
    m1 = math.sqrt(ab_prev) * x0  # mean of x_{t-1}
    v1 = 1 - ab_prev  # variance of x_{t-1}
    a = math.sqrt(1 - beta_t)
    m2 = a * m1  # mean of x_t
    v2 = a * a * v1 + beta_t  # variance of x_t
    c12 = a * v1  # covariance of x_{t-1} and x_t
    mean = m1 + c12 / v2 * (x_t - m2)
    var = v1 - c12 * c12 / v2
    return mean, var


@pytest.mark.parametrize("sched", [Schedule.linear(), Schedule.cosine(100)])
def test_posterior_matches_bayes_rule(sched, gen):
    B = 64
    x0 = torch.randn(B, 3, generator=gen, dtype=torch.float64)
    x_t = torch.randn(B, 3, generator=gen, dtype=torch.float64)
    t = torch.randint(1, sched.T, (B,), generator=gen)
    mu, var, logvar = D.q_posterior(sched, x0, x_t, t)
    for i in range(B):
        k = int(t[i])
        m_ref, v_ref = _bayes_posterior(sched.beta[k].item(), sched.alpha_bar_prev[k].item(), x0[i], x_t[i])
        assert torch.allclose(mu[i], m_ref, rtol=1e-9, atol=1e-12)
        assert var[i].item() == pytest.approx(v_ref, rel=1e-9)
        assert logvar[i].item() == pytest.approx(math.log(v_ref), rel=1e-9)
    # at the first step the posterior is a point mass at x_0
    mu0, var0, _ = D.q_posterior(sched, x0, x_t, torch.zeros(B, dtype=torch.long))
    assert torch.allclose(mu0, x0) and (var0 == 0).all()


@pytest.mark.parametrize("param", D.PARAMETERIZATIONS)
def test_parameterizations_round_trip(param, gen):
    sched = Schedule.cosine(100)
    x0 = torch.randn(32, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(32, 4, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 100, (32,), generator=gen)
    x_t = D.q_sample(sched, x0, t, eps)
    target = D.target_for(sched, x0, t, eps, param)
    x0_hat, eps_hat = D.to_x0_eps(sched, x_t, t, target, param)
    assert torch.allclose(x0_hat, x0, atol=1e-8) and torch.allclose(eps_hat, eps, atol=1e-8)


def test_p_mean_variance_with_true_eps_is_posterior(gen):
    """Plugging the true noise into the model gives exactly q's posterior mean (Ho et al. eq. 10-11)."""
    sched = Schedule.linear()
    x0 = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 1000, (16,), generator=gen)
    x_t = D.q_sample(sched, x0, t, eps)
    p = D.p_mean_variance(lambda x, s: eps, sched, x_t, t, var_type="fixed_large")
    mu, _, _ = D.q_posterior(sched, x0, x_t, t)
    assert torch.allclose(p["mean"], mu, atol=1e-9)
    assert torch.allclose(p["variance"][t > 0].flatten(), sched.beta[t[t > 0]])
    # eq. 11 form of the mean
    a, b, ab = (sched.at(n, t, x_t) for n in ("alpha", "beta", "alpha_bar"))
    assert torch.allclose(p["mean"], (x_t - b / (1 - ab).sqrt() * eps) / a.sqrt(), atol=1e-9)


def test_clip_x0_clips_prediction():
    sched = Schedule.linear(10)
    x_t = torch.full((2, 3), 5.0)
    p = D.p_mean_variance(lambda x, s: torch.zeros_like(x), sched, x_t, torch.tensor([3, 3]), clip_x0=True)
    assert p["x0_hat"].max() == 1.0


def test_bad_inputs():
    sched = Schedule.linear(10)
    with pytest.raises(ValueError, match="shape of x0"):
        D.q_sample(sched, torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        D.q_sample(sched, torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="parameterization must be one of"):
        D.to_x0_eps(sched, torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(4, 2), "noise")
    with pytest.raises(ValueError, match="var_type must be one of"):
        D.reverse_variance(sched, torch.zeros(4, dtype=torch.long), torch.zeros(4, 2), "learned")
    with pytest.raises(ValueError, match="model output must have the shape"):
        D.to_x0_eps(sched, torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(4, 3))


# --- the Denoiser ---------------------------------------------------------------------------------------
class _Recorder(torch.nn.Module):
    """A fixed 'network' out = W x + t/10, which records the labels it was given."""

    def __init__(self, num_classes=None):
        super().__init__()
        self.W = torch.tensor([[0.7, -0.2], [0.1, 0.4]], dtype=torch.float64)
        self.seen = []
        self.config = type("Config", (), {"num_classes": num_classes})()

    def forward(self, x, t, y=None):
        self.seen.append(None if y is None else y.clone())
        return x @ self.W.T + t[:, None].double() / 10


@pytest.mark.parametrize("param", D.PARAMETERIZATIONS)
def test_denoiser_answers_the_closed_forms(param, gen):
    sched = Schedule.cosine(50)
    x_t = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 50, (6,), generator=gen)
    net = _Recorder()
    den = D.Denoiser(net, sched, param)
    out = net(x_t, t)
    ab = sched.alpha_bar[t][:, None]
    # the conversions written out (Salimans & Ho 2022, sec. 4; Luo 2022, eq. 151), not via to_x0_eps
    eps = {
        "eps": out,
        "x0": (x_t - ab.sqrt() * out) / (1 - ab).sqrt(),
        "v": (1 - ab).sqrt() * x_t + ab.sqrt() * out,
        "score": -(1 - ab).sqrt() * out,
    }[param]
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    torch.testing.assert_close(den.eps_hat(x_t, t), eps)
    torch.testing.assert_close(den(x_t, t), eps)
    torch.testing.assert_close(den.x0_hat(x_t, t), x0)
    torch.testing.assert_close(den.score(x_t, t), -eps / (1 - ab).sqrt())
    x0_lib, eps_lib = D.to_x0_eps(sched, x_t, t, out, param)
    torch.testing.assert_close(den.predict(x_t, t), (x0_lib, eps_lib), rtol=0, atol=0)


def test_denoiser_labels_reach_the_network(gen):
    sched = Schedule.linear(20)
    net = _Recorder(num_classes=3)
    den = D.Denoiser(net, sched, "v")
    assert den.null_label == 3  # from the network's config
    x, t = torch.randn(4, 2, generator=gen, dtype=torch.float64), torch.full((4,), 7)
    den(x, t)
    assert net.seen[-1] is None  # no labels fixed: the network's own default
    y = torch.tensor([0, 2, 1, 1])
    den.with_labels(y)(x, t)
    assert torch.equal(net.seen[-1], y)
    den.with_labels(2).x0_hat(x, t)
    assert torch.equal(net.seen[-1], torch.full((4,), 2))
    den.unconditional().score(x, t)
    assert torch.equal(net.seen[-1], torch.full((4,), 3))
    assert den.with_labels(y).parameterization == "v" and den.with_labels(y).net is net
    assert D.Denoiser(_Recorder(), sched).unconditional()(x, t).shape == (4, 2)


def test_a_plain_eps_callable_is_a_denoiser(gen):
    sched = Schedule.linear(20)
    x, t = torch.randn(4, 2, generator=gen), torch.full((4,), 5)
    fn = lambda x_t, t: 0.5 * x_t  # noqa: E731
    den = D.as_denoiser(fn, sched)
    assert isinstance(den, D.Denoiser) and den.parameterization == "eps" and den.null_label is None
    torch.testing.assert_close(den(x, t), 0.5 * x)
    assert D.as_denoiser(den, sched) is den
    p = D.p_mean_variance(fn, sched, x, t)
    torch.testing.assert_close(p["eps_hat"], 0.5 * x)


def test_denoiser_bad_inputs():
    sched = Schedule.linear(20)
    x, t = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="parameterization must be one of"):
        D.Denoiser(_Recorder(), sched, "noise")
    with pytest.raises(ValueError, match="unconditional"):
        D.Denoiser(_Recorder(), sched).with_labels(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        D.Denoiser(_Recorder(3), sched).with_labels(torch.zeros(3, dtype=torch.long))(x, t)
    with pytest.raises(ValueError, match="integers"):
        D.Denoiser(_Recorder(3), sched).with_labels(torch.zeros(4))(x, t)
    with pytest.raises(ValueError, match="reserves label 3"):
        D.Denoiser(_Recorder(3), sched, null_label=0)
    with pytest.raises(ValueError, match="schedule"):
        D.as_denoiser(D.Denoiser(_Recorder(), Schedule.linear(30)), sched)
    with pytest.raises(ValueError, match="needs a model or its output"):
        D.p_mean_variance(None, sched, x, t)
