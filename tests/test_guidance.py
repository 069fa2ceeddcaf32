"""Classifier and classifier-free guidance against closed forms for Gaussian-mixture data.

The references here are independent of the code under test: log-densities of the diffused mixtures
(GaussianMixture.log_prob) differentiated by central finite differences, and Bayes' rule written out.
"""

import functools
import math

import pytest
import torch

from ddpm_tutor import guidance as G
from ddpm_tutor.data import mixtures as M
from ddpm_tutor.data.mixtures import GaussianMixture
from ddpm_tutor.diffusion import Denoiser
from ddpm_tutor.models import NoisyClassifier, train_noisy_classifier
from ddpm_tutor.models.mlp import MLPConfig, MLPDenoiser
from ddpm_tutor.samplers import ddim_sample
from ddpm_tutor.schedules import Schedule


def _triangle(std=0.55):
    ang = torch.tensor([90.0, 210.0, 330.0], dtype=torch.float64) * math.pi / 180
    return GaussianMixture.isotropic(torch.tensor([1.0, 2.0, 1.5]), torch.stack([ang.cos(), ang.sin()], 1), std)


def _grouped():
    """Four components, two classes (0, 1, 0, 1): classes with two modes each, unequal covariances."""
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    covs = torch.stack(
        [
            torch.tensor([[0.2, 0.05], [0.05, 0.1]]),
            0.15 * torch.eye(2),
            torch.tensor([[0.1, -0.03], [-0.03, 0.25]]),
            0.3 * torch.eye(2),
        ]
    ).double()
    return GaussianMixture(torch.tensor([1.0, 1.0, 2.0, 1.0]), means, covs), torch.tensor([0, 1, 0, 1])


def _fd_grad(f, x, h=1e-5):
    """Central finite differences of a function (n, D) -> (n,), coordinate by coordinate."""
    out = torch.empty_like(x)
    for d in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, d] = h
        out[:, d] = (f(x + e) - f(x - e)) / (2 * h)
    return out


def _log_class_prob(mix, classes, a, x, y):
    """log p(y | x_t) by Bayes' rule from the class-conditional log-densities (independent of the code)."""
    c = torch.arange(mix.n_components) if classes is None else classes
    prior = torch.stack([mix.weights[c == k].sum() for k in range(int(c.max()) + 1)])
    cond = torch.stack([M.class_mixture(mix, k, classes).diffused(a).log_prob(x) for k in range(len(prior))], 1)
    return (cond + prior.log()).gather(1, y[:, None])[:, 0] - mix.diffused(a).log_prob(x)


@pytest.mark.parametrize("case", ["triangle", "grouped"])
def test_class_posterior_and_its_gradient(case, gen):
    mix, classes = (_triangle(), None) if case == "triangle" else _grouped()
    sched = Schedule.linear(1000)
    x = 1.5 * torch.randn(64, 2, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 1000, (64,), generator=gen)
    C = M.n_classes(mix, classes)
    y = torch.randint(0, C, (64,), generator=gen)
    # exact classifier (mixed steps in one batch) = Bayes' rule
    logits = M.exact_classifier(mix, sched, classes)(x, t)
    for i in range(0, 64, 7):
        a = float(sched.alpha_bar[t[i]])
        ref = torch.stack([_log_class_prob(mix, classes, a, x[i : i + 1], torch.tensor([k])) for k in range(C)], 1)
        assert torch.allclose(logits[i : i + 1], ref, atol=1e-10)
        assert torch.allclose(M.mixture_class_posterior(mix, x[i : i + 1], a, classes), ref.exp(), atol=1e-10)
    # gradient: autograd through the classifier = closed form = finite differences of log p(y | x_t)
    a = float(sched.alpha_bar[300])
    t300 = torch.full((64,), 300)
    closed = M.mixture_class_grad(mix, x, a, y, classes)
    auto = G.classifier_grad(M.exact_classifier(mix, sched, classes), x, t300, y)
    fd = _fd_grad(lambda z: _log_class_prob(mix, classes, a, z, y), x)
    assert torch.allclose(closed, fd, atol=1e-6)
    assert torch.allclose(auto, closed, atol=1e-10)


@pytest.mark.parametrize("case", ["triangle", "grouped"])
@pytest.mark.parametrize("w", [0.0, 0.5, 2.0, 7.5])
def test_cfg_and_classifier_guidance_equal_the_tilted_score(case, w, gen):
    """With exact models: (1+w) eps(x|y) - w eps(x) = eps - (1+w) sqrt(1-ab) grad log p(y|x)
    = -sqrt(1-ab) grad log[p(x|y)^(1+w) / p(x)^w], the last by finite differences of log-densities."""
    mix, classes = (_triangle(), None) if case == "triangle" else _grouped()
    sched = Schedule.linear(1000)
    C = M.n_classes(mix, classes)
    for step in (0, 250, 700):
        a = float(sched.alpha_bar[step])
        x = 1.5 * torch.randn(40, 2, generator=gen, dtype=torch.float64)
        y = torch.randint(0, C, (40,), generator=gen)
        t = torch.full((40,), step)
        sd = math.sqrt(1 - a)

        parts = [M.class_mixture(mix, k, classes).diffused(a) for k in range(C)]

        def log_tilted(z):
            cond = torch.stack([parts[k].log_prob(z) for k in range(C)], 1).gather(1, y[:, None])[:, 0]
            return (1 + w) * cond - w * mix.diffused(a).log_prob(z)

        ref = -sd * _fd_grad(log_tilted, x)
        cond_model = M.exact_conditional_eps_model(mix, sched, classes)
        cfg = G.cfg_model(cond_model, y, w, null_label=C)(x, t)
        cg = G.classifier_guided_model(mix.eps_model(sched), M.exact_classifier(mix, sched, classes), y, 1 + w, sched)(
            x, t
        )
        # classifier guidance of the *conditional* model with scale w is the same tilt
        cg_cond = G.classifier_guided_model(
            functools.partial(cond_model, y=y), M.exact_classifier(mix, sched, classes), y, w, sched
        )(x, t)
        tilted = -sd * M.tilted_score(mix, x, a, y, 1 + w, classes)
        assert torch.allclose(ref, tilted, atol=1e-5 * (1 + w))
        for got in (cfg, cg, cg_cond):
            assert torch.allclose(got, tilted, atol=1e-12 * (1 + w), rtol=1e-10)


def test_cfg_endpoints_and_batching(gen):
    torch.manual_seed(0)
    net = MLPDenoiser(MLPConfig(num_classes=3)).eval()
    x = torch.randn(16, 2, generator=gen)
    t = torch.randint(0, 1000, (16,), generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    with torch.no_grad():
        cond, unc = net(x, t, y), net(x, t, torch.full((16,), 3))
        assert torch.allclose(G.cfg_model(net, y, 0.0, 3)(x, t), cond)
        assert torch.allclose(G.cfg_model(net, y, -1.0, 3)(x, t), unc, atol=1e-6)
        assert torch.allclose(G.cfg_model(net, y, 2.5, 3)(x, t), 3.5 * cond - 2.5 * unc, atol=1e-5)
        # one label for the whole batch, and a scalar t
        assert torch.allclose(
            G.cfg_model(net, 1, 2.0, 3)(x, torch.tensor(5)),
            3 * net(x, torch.full((16,), 5), torch.ones(16, dtype=torch.long))
            - 2 * net(x, torch.full((16,), 5), torch.full((16,), 3)),
            atol=1e-5,
        )


def test_cfg_of_a_denoiser_uses_its_null_label_and_parameterization(gen):
    """A v-predicting network in a Denoiser: CFG combines its eps_hat, with the null label it knows."""
    torch.manual_seed(0)
    sched = Schedule.linear(1000)
    net = MLPDenoiser(MLPConfig(num_classes=3)).eval()
    den = Denoiser(net, sched, "v")
    x = torch.randn(16, 2, generator=gen)
    t = torch.randint(0, 1000, (16,), generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    ab = sched.alpha_bar[t].float()[:, None]
    with torch.no_grad():
        v_c, v_u = net(x, t, y), net(x, t, torch.full((16,), 3))
        eps_c, eps_u = (1 - ab).sqrt() * x + ab.sqrt() * v_c, (1 - ab).sqrt() * x + ab.sqrt() * v_u
        torch.testing.assert_close(G.cfg_model(den, y, 0.0)(x, t), eps_c)
        torch.testing.assert_close(G.cfg_model(den, y, 2.0)(x, t), 3 * eps_c - 2 * eps_u, rtol=1e-5, atol=1e-5)
        flat = lambda a, s: torch.zeros(a.shape[0], 2)  # noqa: E731  a classifier with no opinion
        torch.testing.assert_close(G.classifier_guided_model(den.unconditional(), flat, 0, 0.0, sched)(x, t), eps_u)
    with pytest.raises(ValueError, match="unconditional"):
        G.cfg_model(Denoiser(MLPDenoiser(), sched), y, 1.0)
    with pytest.raises(ValueError, match="differs from the Denoiser's null label 3"):
        G.cfg_model(den, y, 1.0, null_label=0)
    with pytest.raises(ValueError, match="needs its null_label"):
        G.cfg_model(net, y, 1.0)


def test_classifier_guidance_scale_zero_is_the_model(gen):
    sched = Schedule.linear(1000)
    mix = _triangle()
    x = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    t = torch.full((8,), 10)
    base = mix.eps_model(sched)
    got = G.classifier_guided_model(base, M.exact_classifier(mix, sched), 0, 0.0, sched)(x, t)
    assert torch.equal(got, base(x, t))


def test_guided_sampling_sharpens_classes(gen):
    """Driven by the exact models through DDIM, guidance raises the exact classifier's confidence and
    shrinks the spread, while w = 0 samples the class-conditional mixture itself."""
    mix = _triangle()
    sched = Schedule.linear(1000)
    cond = M.exact_conditional_eps_model(mix, sched)
    n = 1500
    y = torch.arange(n) % 3
    stats = {}
    for w in (0.0, 1.0, 4.0):
        g = torch.Generator().manual_seed(7)
        x = ddim_sample(G.cfg_model(cond, y, w, 3), sched, (n, 2), steps=50, generator=g, dtype=torch.float64)
        stats[w] = G.guidance_metrics(mix, x, y)
    # w = 0: the fraction of class-y samples that the Bayes classifier assigns to y is the Bayes accuracy
    per_class = [
        M.mixture_class_posterior(mix, M.class_mixture(mix, k).sample(50_000, torch.Generator().manual_seed(k)), 1.0)[
            :, k
        ]
        .mean()
        .item()
        for k in range(3)
    ]
    conf_w0 = sum(per_class) / 3  # y is balanced in the test, so the reference averages the classes equally
    assert abs(stats[0.0]["confidence"] - conf_w0) < 4 * 0.3 / math.sqrt(n)
    assert 0.5 < conf_w0 < 0.95
    assert stats[0.0]["confidence"] < stats[1.0]["confidence"] < stats[4.0]["confidence"]
    assert stats[0.0]["diversity"] > stats[1.0]["diversity"] > stats[4.0]["diversity"]
    assert stats[4.0]["accuracy"] > 0.99


def test_noisy_classifier_learns_the_bayes_posterior(gen):
    torch.manual_seed(0)
    mix = _triangle()
    sched = Schedule.linear(1000)
    x, y = mix.sample(4000, gen, return_labels=True)
    clf = NoisyClassifier(num_classes=3, hidden=64, n_layers=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small MLP: one thread is fastest, and much faster on a shared machine
    try:
        losses = train_noisy_classifier(clf, sched, x.float(), y, 400, gen, batch_size=256)
    finally:
        torch.set_num_threads(threads)
    assert len(losses) == 400 and losses[-1] < losses[0]
    # near the data the learned posterior is close to the exact one; at t = T it is close to the prior
    for step, tol in ((0, 0.08), (999, 0.05)):
        xt = mix.diffused(float(sched.alpha_bar[step])).sample(2000, gen).float()
        with torch.no_grad():
            p = torch.softmax(clf(xt, torch.full((2000,), step)), 1).double()
        exact = M.mixture_class_posterior(mix, xt.double(), float(sched.alpha_bar[step]))
        assert (p - exact).abs().sum(1).mean() < 2 * tol, (step, (p - exact).abs().sum(1).mean())
    # its gradient drives classifier guidance without error inside no_grad (as the samplers call it)
    model = G.classifier_guided_model(mix.eps_model(sched), clf, 0, 2.0, sched)
    with torch.no_grad():
        out = model(torch.randn(5, 2), torch.full((5,), 100))
    assert out.shape == (5, 2) and torch.isfinite(out).all()


def test_train_noisy_classifier_is_reproducible():
    mix = _triangle()
    sched = Schedule.linear(100)
    x, y = mix.sample(500, torch.Generator().manual_seed(0), return_labels=True)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        clf = NoisyClassifier(num_classes=3, hidden=32)
        runs.append(train_noisy_classifier(clf, sched, x, y, 20, torch.Generator().manual_seed(5), batch_size=64))
    assert runs[0] == runs[1]


def test_grouped_classes_helpers():
    mix, classes = _grouped()
    assert M.n_classes(mix, classes) == 2
    assert torch.allclose(M.class_prior(mix, classes), torch.tensor([0.6, 0.4], dtype=torch.float64))
    sub = M.class_mixture(mix, 0, classes)
    assert sub.n_components == 2 and torch.allclose(sub.weights, torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    # p(y | x_t) sums to one
    x = torch.randn(10, 2, dtype=torch.float64)
    assert torch.allclose(M.mixture_class_posterior(mix, x, 0.5, classes).sum(1), torch.ones(10, dtype=torch.float64))


def test_bad_inputs_are_refused():
    mix = _triangle()
    sched = Schedule.linear(10)
    with pytest.raises(ValueError, match="classes"):
        M.n_classes(mix, [0, 2, 2])
    with pytest.raises(ValueError, match="classes"):
        M.n_classes(mix, [0, 1])
    with pytest.raises(ValueError, match="shape"):
        G.cfg_model(mix.eps_model, torch.zeros(3, dtype=torch.long), 1.0, 3)(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        G.cfg_model(None, 0, float("nan"), 3)
    with pytest.raises(ValueError, match="labels must lie"):
        G.classifier_guided_model(mix.eps_model(sched), M.exact_classifier(mix, sched), 5, 1.0, sched)(
            torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="null label"):
        M.exact_conditional_eps_model(mix, sched)(
            torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), torch.tensor([0, 7])
        )
    with pytest.raises(ValueError, match="at least 2"):
        NoisyClassifier(num_classes=1)
