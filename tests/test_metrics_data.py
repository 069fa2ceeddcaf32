import pytest
import torch

from ddpm_tutor.data import TOY2D, GaussianMixture, checkerboard_off_fraction, toy2d
from ddpm_tutor.metrics import compare_to_data, energy_distance, energy_floor, noise_floor, sliced_wasserstein


def test_sliced_wasserstein_of_a_shift_is_the_shift(gen):
    x = torch.randn(4000, 2, generator=gen, dtype=torch.float64)
    # shifting by d moves every 1D projection by d.u; the mean of (d.u)^2 over unit u in 2D is |d|^2 / 2
    d = torch.tensor([0.6, 0.8], dtype=torch.float64)
    sw = sliced_wasserstein(x, x + d, n_projections=4000, generator=gen)
    assert sw == pytest.approx((1.0 / 2) ** 0.5, rel=0.03)
    assert sliced_wasserstein(x, x, generator=gen) == 0.0


def test_energy_distance_detects_difference_and_floor(gen):
    draw = lambda n, g: torch.randn(n, 2, generator=g, dtype=torch.float64)
    floor = noise_floor(draw, 1000, energy_distance)
    far = energy_distance(draw(1000, gen), draw(1000, gen) * 1.5)
    assert far > 5 * floor > 0
    r = compare_to_data(draw(1000, gen), draw)
    assert r["sw_ratio"] < 2.5 and r["ed_ratio"] < 4
    with pytest.raises(ValueError, match="finite"):
        energy_distance(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="equal sample sizes"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(4, 2))


def test_averaging_over_reference_draws_shrinks_the_spread(gen):
    draw = lambda n, g: torch.randn(n, 2, generator=g, dtype=torch.float64)
    samples = draw(500, gen)
    one = [compare_to_data(samples, draw, seed=s)["ed_ratio"] for s in range(8)]
    five = [compare_to_data(samples, draw, seed=s, references=5)["ed_ratio"] for s in range(8)]
    assert torch.tensor(five).std() < 0.7 * torch.tensor(one).std()
    with pytest.raises(ValueError, match="positive integer"):
        compare_to_data(samples, draw, references=0)


@pytest.mark.parametrize("name", TOY2D)
def test_toy_draws_are_independent_samples(name):
    # E[energy distance] between two i.i.d. samples of size n is 2 E|X - X'| / n; draws whose points are more
    # regular than independent ones (e.g. evenly spaced along a curve) come out far below it
    draw = lambda n, g: toy2d(name, n, g)
    g = torch.Generator().manual_seed(4)
    values = torch.tensor([energy_distance(draw(400, g), draw(400, g)) for _ in range(200)])
    assert values.mean() == pytest.approx(
        energy_floor(draw, 400), rel=4 * float(values.std() / values.mean()) / 200**0.5
    )


def test_averaging_over_sample_sets_brings_a_perfect_model_to_its_floor():
    # data compared with data: the ratio's spread from one set of samples to the next is the metric's own
    # noise, which more reference draws cannot remove but more sample sets do
    draw = lambda n, g: toy2d("moons", n, g)
    g = torch.Generator().manual_seed(3)
    one = [compare_to_data(draw(300, g), draw, seed=s, references=2)["energy_distance"] for s in range(16)]
    five = [compare_to_data([draw(300, g) for _ in range(5)], draw, seed=s, references=2) for s in range(16)]
    # the mean over 16 trials of 5 sets: its standard error is about 0.06 for energy and 0.03 for SW
    assert torch.tensor([r["energy_distance"] for r in five]).std() < 0.7 * torch.tensor(one).std()
    assert sum(r["ed_ratio"] for r in five) / len(five) == pytest.approx(1, abs=0.2)
    assert sum(r["sw_ratio"] for r in five) / len(five) == pytest.approx(1, abs=0.2)
    with pytest.raises(ValueError, match="share one shape"):
        compare_to_data([draw(500, g), draw(400, g)], draw)
    with pytest.raises(ValueError, match="non-empty list"):
        compare_to_data([], draw)


def test_checkerboard_off_fraction_counts_points_off_the_dark_squares():
    assert checkerboard_off_fraction(toy2d("checkerboard", 4000, torch.Generator().manual_seed(0))) == 0.0
    # uniform on the board: half the area is light squares
    u = (torch.rand(20000, 2, generator=torch.Generator().manual_seed(1)) * 4 - 2) * 0.75
    assert checkerboard_off_fraction(u) == pytest.approx(0.5, abs=0.02)
    # the centres of a light square (cell (1, 0)) and of a dark one (cell (0, 0)), and a point off the board
    pts = (torch.tensor([[1.5, 0.5], [0.5, 0.5], [5.0, 0.5]]) - 2) * 0.75
    assert checkerboard_off_fraction(pts) == pytest.approx(2 / 3)


@pytest.mark.parametrize("name", TOY2D)
def test_toy2d_shapes_and_reproducible(name):
    a = toy2d(name, 500, torch.Generator().manual_seed(0))
    b = toy2d(name, 500, torch.Generator().manual_seed(0))
    assert a.shape == (500, 2) and torch.equal(a, b)
    assert 0.3 < a.std() < 1.5


def test_toy2d_bad_input():
    with pytest.raises(ValueError, match="name must be one of"):
        toy2d("spiral", 10)
    with pytest.raises(ValueError, match="positive integer"):
        toy2d("moons", 0)


def test_mixture_score_against_autograd_and_tweedie(gen):
    gm = GaussianMixture(
        torch.tensor([0.3, 0.7]),
        torch.tensor([[0.0, 1.0], [1.0, -1.0]]),
        torch.stack([torch.tensor([[0.3, 0.1], [0.1, 0.2]]), 0.1 * torch.eye(2)]),
    )
    x = torch.randn(50, 2, generator=gen, dtype=torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(x).sum(), x)
    assert torch.allclose(gm.score(x.detach()), grad, atol=1e-10)
    # Tweedie: E[x0 | x_t] = (x_t + (1 - a) score_t(x_t)) / sqrt(a), against Gaussian conditioning
    a = 0.4
    xt = x.detach()
    tweedie = (xt + (1 - a) * gm.diffused(a).score(xt)) / a**0.5
    assert torch.allclose(gm.posterior_mean_x0(xt, a), tweedie, atol=1e-10)
    # the log density integrates to one on a grid
    g = torch.linspace(-4, 5, 400, dtype=torch.float64)
    X, Y = torch.meshgrid(g, g, indexing="ij")
    dens = gm.log_prob(torch.stack([X.flatten(), Y.flatten()], 1)).exp().sum() * (g[1] - g[0]) ** 2
    assert dens.item() == pytest.approx(1.0, abs=1e-3)


def test_mixture_bad_input():
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture(torch.ones(1), torch.zeros(1, 2), -torch.eye(2)[None])
    with pytest.raises(ValueError, match=r"covs must have shape \(K, D, D\)"):
        GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(3)[None])
    with pytest.raises(ValueError, match=r"alpha_bar must lie in \(0, 1\]"):
        GaussianMixture.ring().diffused(0.0)
