"""Samplers driven by the exact score of a Gaussian mixture must reproduce the mixture."""

import pytest
import torch

from ddpm_tutor.data import GaussianMixture
from ddpm_tutor.diffusion import Denoiser, to_x0_eps
from ddpm_tutor.metrics import noise_floor, sliced_wasserstein
from ddpm_tutor.samplers import ddim_sample, ddim_steps, ddim_timesteps, ddpm_sample, ddpm_step, ddpm_steps, sample
from ddpm_tutor.schedules import Schedule

N = 2000


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture(
        torch.tensor([0.5, 0.3, 0.2]),
        torch.tensor([[-1.5, 0.0], [1.0, 1.0], [1.0, -1.2]]),
        torch.stack(
            [torch.tensor([[0.10, 0.05], [0.05, 0.08]]), 0.05 * torch.eye(2), torch.tensor([[0.2, -0.1], [-0.1, 0.1]])]
        ),
    )


@pytest.fixture(scope="module")
def floor(mixture):
    return noise_floor(lambda n, g: mixture.sample(n, g), N, repeats=8)


def _ratio(x, mixture, floor):
    ref = mixture.sample(N, torch.Generator().manual_seed(99))
    return sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(5)) / floor


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
def test_ddpm_with_exact_score_reproduces_mixture(mixture, floor, var_type):
    sched = Schedule.linear()
    x = ddpm_sample(
        mixture.eps_model(sched),
        sched,
        (N, 2),
        generator=torch.Generator().manual_seed(0),
        var_type=var_type,
        dtype=torch.float64,
    )
    assert _ratio(x, mixture, floor) < 2.0
    # the mode weights are right too: assign each sample to its most likely component
    k = mixture.responsibilities(x).argmax(1)
    freq = torch.bincount(k, minlength=3).double() / N
    assert torch.allclose(freq, mixture.weights, atol=4 * (0.25 / N) ** 0.5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_50_steps_with_exact_score_reproduces_mixture(mixture, floor, eta):
    sched = Schedule.linear()
    x = ddim_sample(
        mixture.eps_model(sched),
        sched,
        (N, 2),
        steps=50,
        eta=eta,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    assert _ratio(x, mixture, floor) < 2.0


def test_a_wrong_score_is_detected(mixture, floor):
    """The test above can fail: a sampler fed a mixture with shifted means lands far from the data."""
    sched = Schedule.linear()
    wrong = GaussianMixture(mixture.weights, mixture.means + 0.5, mixture.covs)
    x = ddim_sample(
        wrong.eps_model(sched), sched, (N, 2), steps=50, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    assert _ratio(x, mixture, floor) > 3.0


def test_steps_yield_every_state_and_are_reproducible(mixture):
    sched = Schedule.linear(50)
    model = mixture.eps_model(sched)
    states = list(ddpm_steps(model, sched, (8, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert [s.t for s in states] == list(range(49, -2, -1))
    again = ddpm_sample(model, sched, (8, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(states[-1].x, again)
    # DDIM with eta = 0 is a deterministic map of x_T
    xT = torch.randn(8, 2, dtype=torch.float64)
    a = ddim_sample(model, sched, (8, 2), steps=10, x_T=xT, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(model, sched, (8, 2), steps=10, x_T=xT, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    states = list(ddim_steps(model, sched, (8, 2), steps=5, dtype=torch.float64))
    assert [s.t for s in states] == ddim_timesteps(50, 5) + [-1]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_states_carry_the_step_of_their_x0_prediction(mixture, sampler):
    """Each state's x0_hat is the network's prediction from the previous state, at the paper's step x0_hat_paper_t."""
    sched = Schedule.linear(50)
    model = mixture.eps_model(sched)
    if sampler == "ddpm":
        states = list(ddpm_steps(model, sched, (8, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    else:
        states = list(
            ddim_steps(model, sched, (8, 2), steps=7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        )
    first = 50 if sampler == "ddpm" else ddim_timesteps(50, 7)[0] + 1  # the paper's step of x_T's state
    assert states[0].x0_hat is None and states[0].x0_hat_paper_t is None and states[0].paper_t == first
    assert states[-1].paper_t == 0
    for before, after in zip(states, states[1:]):
        assert after.x0_hat_paper_t == before.paper_t  # predicted from `before`'s x, at its step
        if sampler == "ddpm":
            assert after.x0_hat_paper_t == after.paper_t + 1
        t_idx = torch.full((8,), after.x0_hat_paper_t - 1)
        x0_hat, _ = to_x0_eps(sched, before.x, t_idx, model(before.x, t_idx), "eps")
        torch.testing.assert_close(after.x0_hat, x0_hat)


def test_sampler_bad_inputs():
    sched = Schedule.linear(20)
    model = lambda x, t: torch.zeros_like(x)
    with pytest.raises(ValueError, match="steps must be an integer in 1..20"):
        ddim_sample(model, sched, (2, 2), steps=0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        ddim_sample(model, sched, (2, 2), timesteps=[5, 10])
    with pytest.raises(ValueError, match="'ddpm' or 'ddim'"):
        sample(model, sched, (2, 2), sampler="euler")
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ddim_sample(model, sched, (2, 2), steps=4, eta=-1.0)


def _continue_from_reference(model, sched, x_t, t_start, generator):
    """The loop coding.continue_from ran before it became ddpm_steps(t_start=...), written out."""
    x = x_t
    for i in range(t_start, -1, -1):
        t = torch.full((x.shape[0],), i, dtype=torch.long)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype) if i > 0 else torch.zeros_like(x)
        x, _ = ddpm_step(sched, x, t, model(x, t), z)
    return x


@pytest.mark.parametrize("t_start", [0, 7, 29])
def test_ddpm_started_at_step_k_is_the_old_continue_from(mixture, t_start):
    sched = Schedule.linear(30, 1e-3, 0.2)
    model = mixture.eps_model(sched)
    x_t = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    want = _continue_from_reference(model, sched, x_t, t_start, torch.Generator().manual_seed(4))
    got = ddpm_sample(model, sched, x_t.shape, x_T=x_t, t_start=t_start, generator=torch.Generator().manual_seed(4))
    assert torch.equal(got, want)
    states = list(ddpm_steps(model, sched, x_t.shape, x_T=x_t, t_start=t_start))
    assert [s.t for s in states] == list(range(t_start, -2, -1))
    # started at T - 1 it is the ordinary sampler from x_T
    full = ddpm_sample(model, sched, x_t.shape, x_T=x_t, generator=torch.Generator().manual_seed(4))
    assert torch.equal(
        ddpm_sample(model, sched, x_t.shape, x_T=x_t, t_start=29, generator=torch.Generator().manual_seed(4)), full
    )


def test_samplers_take_a_denoiser_of_any_parameterization(mixture):
    """A v-predicting network wrapped in a Denoiser samples exactly like its eps-predicting twin."""
    sched = Schedule.linear(25, 1e-3, 0.2)
    eps_model = mixture.eps_model(sched)

    def v_net(x, t):  # the same ideal network, answering with v = (eps - sqrt(1 - ab) x_t) / sqrt(ab)
        ab = sched.alpha_bar[t][:, None].to(x.dtype)
        return (eps_model(x, t) - (1 - ab).sqrt() * x) / ab.sqrt()

    den = Denoiser(v_net, sched, "v")
    for sampler in (ddpm_sample, lambda m, s, shape, **kw: ddim_sample(m, s, shape, steps=5, **kw)):
        a = sampler(eps_model, sched, (50, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        b = sampler(den, sched, (50, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_t_start_bad_inputs():
    sched = Schedule.linear(20)
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match=r"t_start must be a step index in 0..19"):
        ddpm_sample(model, sched, (2, 2), x_T=torch.zeros(2, 2), t_start=20)
    with pytest.raises(ValueError, match="t_start needs x_T"):
        ddpm_sample(model, sched, (2, 2), t_start=5)
    with pytest.raises(ValueError, match=r"x_T must have the shape \(3, 2\)"):
        ddpm_sample(model, sched, (3, 2), x_T=torch.zeros(2, 2))


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 7, 20, 50, 1000])
def test_ddim_spacings_match_diffusers(spacing, steps):
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    assert ddim_timesteps(1000, steps, spacing) == ref.timesteps.tolist()


@pytest.mark.parametrize("steps", [2, 10, 50, 200, 999])
def test_ddim_quadratic_spacing_is_song_et_als(steps):
    import numpy as np

    ts = ddim_timesteps(1000, steps, "quadratic")[::-1]
    song = (np.linspace(0, np.sqrt(1000 * 0.8), steps) ** 2).astype(int).tolist()  # their code, appendix D.2
    assert len(ts) == len(set(ts)) == steps and ts == sorted(ts) and 0 <= ts[0] and ts[-1] <= 999
    # equal to theirs except where theirs would repeat (or fall below) the step before: there ours is one above it
    for i in range(steps):
        assert ts[i] == song[i] or (i > 0 and song[i] <= ts[i - 1] and ts[i] == ts[i - 1] + 1), (i, ts[i], song[i])
    if steps <= 50:  # collisions only among the first few, near t = 0
        assert sum(a != b for a, b in zip(ts, song)) <= 3
    with pytest.raises(ValueError, match="spacing must be one of"):
        ddim_timesteps(1000, 10, "linear")
