"""The samplers refuse bad input with a message naming the argument, instead of a silently wrong sample.

Each test fails on the code before the checks (it accepted the input, or failed with a message naming another
argument), and checks that the valid boundary cases still work and give the right answer.
"""

import math

import pytest
import torch

from ddpm_tutor.checks import flag, real_in_range
from ddpm_tutor.diffusion import p_mean_variance, to_x0_eps
from ddpm_tutor.samplers import ddim_sample, ddim_step, ddim_steps, ddpm_sample, ddpm_step, ddpm_steps
from ddpm_tutor.schedules import Schedule

SCHED = Schedule.linear(10)
ETA_MSG = r"eta must be >= 0 and <= 1"


def gaussian_eps(sched):
    """The exact eps model of data N(0, I): x_t ~ N(0, I), so eps_hat = sqrt(1 - bar alpha_t) x_t."""
    return lambda x, t: (1 - sched.alpha_bar[t]).sqrt().to(x.dtype).reshape(-1, *(1,) * (x.ndim - 1)) * x


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("eta", [math.inf, 1.5, 1.0 + 1e-9, -0.1, math.nan, True, "0.5", None, torch.tensor(0.5)])
def test_ddim_eta_outside_0_1_or_not_a_number_is_refused(eta):
    model = gaussian_eps(SCHED)
    with pytest.raises(ValueError, match=ETA_MSG):
        ddim_sample(model, SCHED, (3, 2), steps=5, eta=eta, generator=_gen())
    with pytest.raises(ValueError, match=ETA_MSG):
        next(ddim_steps(model, SCHED, (3, 2), steps=5, eta=eta))  # before the first state, x_T
    x = torch.randn(3, 2, generator=_gen(1))
    with pytest.raises(ValueError, match=ETA_MSG):
        ddim_step(SCHED, x, torch.tensor(5), torch.tensor(2), model(x, torch.tensor([5])), torch.randn(3, 2), eta=eta)


def test_ddim_eta_0_and_1_are_accepted_and_eta_1_on_the_full_grid_is_the_ancestral_sampler():
    sched = Schedule.get("linear", 100)  # the paper's betas scaled to T = 100, to keep the full grid fast
    model = gaussian_eps(sched)
    x_T = torch.randn(4, 2, generator=_gen(1), dtype=torch.float64)
    # eta = 0: deterministic in x_T, whatever the generator
    a = ddim_sample(model, sched, (4, 2), steps=20, eta=0, x_T=x_T, generator=_gen(0))
    b = ddim_sample(model, sched, (4, 2), steps=20, eta=0.0, x_T=x_T, generator=_gen(5))
    assert torch.isfinite(a).all() and torch.equal(a, b)
    with pytest.raises(ValueError, match=ETA_MSG):  # just above 1 is refused, 1 itself is accepted below
        ddim_sample(model, sched, (4, 2), steps=20, eta=1.0 + 1e-9, x_T=x_T)
    # eta = 1 on all T steps: sigma^2 = beta_tilde_t and the mean is mu_tilde, the same noise draws as DDPM
    # (an int eta is a number too); DDPM adds noise, so a DDIM that ignored eta would not match
    ddim = ddim_sample(model, sched, (4, 2), steps=100, eta=1, x_T=x_T, generator=_gen(0))
    ddpm = ddpm_sample(model, sched, (4, 2), var_type="fixed_small", x_T=x_T, generator=_gen(0))
    assert torch.isfinite(ddim).all()
    assert torch.allclose(ddim, ddpm, rtol=1e-8, atol=1e-8)


def test_ddim_step_refuses_t_prev_out_of_range_or_not_below_t():
    model = gaussian_eps(SCHED)
    x = torch.randn(3, 2, generator=_gen(1))
    t = torch.tensor(5)
    out, z = model(x, t.expand(3)), torch.randn(3, 2, generator=_gen(2))
    with pytest.raises(ValueError, match=r"t_prev must lie in -1\.\.9 .*got -2"):
        ddim_step(SCHED, x, t, torch.tensor(-2), out, z, eta=0.5)
    with pytest.raises(ValueError, match=r"t_prev must lie in -1\.\.9 .*got 10"):
        ddim_step(SCHED, x, t, torch.tensor(10), out, z, eta=0.0)
    for t_prev, eta in [(5, 0.5), (7, 0.5), (5, 0.0), (5, 1.0)]:  # a step to t itself, or up with noise
        with pytest.raises(ValueError, match=r"t_prev must (lie in -1\.\.4, below t|differ from t: lie in -1\.\.4)"):
            ddim_step(SCHED, x, t, torch.tensor(t_prev), out, z, eta=eta)
    with pytest.raises(ValueError, match=r"t_prev must lie in -1\.\.4, below t .*got t_prev 3\.\.5 at t 5"):
        ddim_step(SCHED, x, t.expand(3), torch.tensor([4, 5, 3]), out, z, eta=0.5)  # one sample's t_prev is bad
    with pytest.raises(ValueError, match=r"t_prev must be one integer step index .*dtype torch\.float32"):
        ddim_step(SCHED, x, t, torch.tensor(2.5), out, z, eta=0.0)
    with pytest.raises(ValueError, match=r"t_prev must be one integer step index or a tensor of shape \(3,\)"):
        ddim_step(SCHED, x, t, torch.tensor([2, 2]), out, z, eta=0.0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_to_t_prev_minus_1_still_gives_x0_hat_and_deterministic_steps_still_invert(eta):
    model = gaussian_eps(SCHED)
    x = torch.randn(3, 2, generator=_gen(1), dtype=torch.float64)
    z = torch.randn(3, 2, generator=_gen(2), dtype=torch.float64)
    t = torch.tensor(4)
    x_prev, x0_hat = ddim_step(SCHED, x, t, torch.tensor(-1), model(x, t.expand(3)), z, eta=eta)
    assert torch.equal(x_prev, x0_hat)  # bar alpha = 1 at x_0 and sigma = 0 there
    assert torch.allclose(x0_hat, to_x0_eps(SCHED, x, t.expand(3), model(x, t.expand(3)))[0], rtol=1e-7, atol=1e-7)
    with pytest.raises(ValueError, match=r"t_prev must (lie in -1\.\.3, below t|differ from t: lie in -1\.\.3)"):
        ddim_step(SCHED, x, t, t, model(x, t.expand(3)), z, eta=eta)  # -1 is x_0, but t_prev = t is nothing
    # eta = 0 steps up (DDIM inversion, as book/part3/02_fast_sampling runs it) and back down to x
    eps = torch.randn(3, 2, generator=_gen(3), dtype=torch.float64)
    up, _ = ddim_step(SCHED, x, torch.tensor(2), torch.tensor(7), eps, None, eta=0.0)
    down, _ = ddim_step(SCHED, up, torch.tensor(7), torch.tensor(2), eps, None, eta=0.0)
    assert torch.allclose(down, x, rtol=1e-7, atol=1e-7)


def test_noise_of_another_shape_than_x_t_is_refused_not_broadcast():
    model = gaussian_eps(SCHED)
    x = torch.randn(4, 2, generator=_gen(1))
    t = torch.tensor(5)
    out = model(x, t.expand(4))
    for bad in [torch.randn(1, 2), torch.randn(2), torch.randn(4, 2, 1), torch.zeros(4, 2, dtype=torch.long)]:
        with pytest.raises(ValueError, match=r"noise must be a floating-point tensor of exactly the shape of x_t"):
            ddpm_step(SCHED, x, t, out, bad)
        for eta in (0.0, 0.5):  # with eta = 0 noise given is unused, but a wrong one is still a mistake
            with pytest.raises(ValueError, match=r"noise must be .*exactly the shape of x_t \(4, 2\)"):
                ddim_step(SCHED, x, t, torch.tensor(2), out, bad, eta=eta)


def test_noise_of_the_exact_shape_is_used_one_draw_per_sample():
    model = gaussian_eps(SCHED)
    x = torch.randn(1, 2, generator=_gen(1), dtype=torch.float64).expand(4, 2).clone()  # four copies of one x_t
    z = torch.randn(4, 2, generator=_gen(2), dtype=torch.float64)
    t = torch.tensor(5)
    out = model(x, t.expand(4))
    with pytest.raises(ValueError, match=r"noise must be .*exactly the shape of x_t \(4, 2\)"):
        ddpm_step(SCHED, x, t, out, z[:1])  # one row of it would be shared by all four samples
    got, _ = ddpm_step(SCHED, x, t, out, z)
    p = p_mean_variance(None, SCHED, x, t.expand(4), model_out=out)
    assert torch.allclose(got, p["mean"] + p["variance"].sqrt() * z, rtol=1e-7, atol=1e-7)
    assert len({tuple(r.tolist()) for r in got}) == 4  # per-sample noise: four different samples
    got_ddim, _ = ddim_step(SCHED, x, t, torch.tensor(2), out, z, eta=1.0)
    assert len({tuple(r.tolist()) for r in got_ddim}) == 4
    # and the samplers draw a different z for every sample
    x_T = torch.zeros(5, 2, dtype=torch.float64)
    for x0 in (
        ddpm_sample(model, SCHED, (5, 2), x_T=x_T, generator=_gen(0)),
        ddim_sample(model, SCHED, (5, 2), steps=5, eta=1.0, x_T=x_T, generator=_gen(0)),
    ):
        assert len({tuple(r.tolist()) for r in x0}) == 5


def test_x_T_must_be_a_floating_tensor_of_exactly_shape():
    model = gaussian_eps(SCHED)
    for run in [  # every path that takes x_T: ddpm, ddim, and ddpm started at t_start
        lambda **kw: ddpm_sample(model, SCHED, (3, 2), **kw),
        lambda **kw: ddim_sample(model, SCHED, (3, 2), steps=5, **kw),
        lambda **kw: ddpm_sample(model, SCHED, (3, 2), t_start=4, **kw),
    ]:
        for bad in [torch.zeros(1, 2), torch.zeros(2, 3), torch.zeros(3, 2, 1)]:
            with pytest.raises(ValueError, match=r"x_T must have the shape \(3, 2\)"):
                run(x_T=bad)
        with pytest.raises(
            ValueError, match=r"x_T must be a floating-point tensor of shape \(3, 2\), got dtype torch.int64"
        ):
            run(x_T=torch.zeros(3, 2, dtype=torch.long))
        with pytest.raises(ValueError, match=r"x_T must be a floating-point tensor .*got list"):
            run(x_T=[[0.0, 0.0]] * 3)
    # the exact shape is accepted and is the first state; float64 is kept
    x_T = torch.randn(3, 2, generator=_gen(1), dtype=torch.float64)
    for states in (
        list(ddpm_steps(model, SCHED, (3, 2), x_T=x_T)),
        list(ddim_steps(model, SCHED, (3, 2), steps=5, x_T=x_T)),
    ):
        assert torch.equal(states[0].x, x_T) and states[-1].x.dtype == torch.float64
        assert torch.isfinite(states[-1].x).all()


def test_clip_x0_t_start_var_type_steps_and_timesteps_are_checked_up_front():
    model = gaussian_eps(SCHED)
    x = torch.randn(3, 2, generator=_gen(1))
    t, z = torch.tensor(5), torch.randn(3, 2, generator=_gen(2))
    for bad in ["no", 0, 1, torch.tensor(True), None]:
        with pytest.raises(ValueError, match="clip_x0 must be True or False"):
            ddpm_sample(model, SCHED, (3, 2), clip_x0=bad)
        with pytest.raises(ValueError, match="clip_x0 must be True or False"):
            ddim_sample(model, SCHED, (3, 2), steps=5, clip_x0=bad)
        with pytest.raises(ValueError, match="clip_x0 must be True or False"):
            ddpm_step(SCHED, x, t, model(x, t.expand(3)), z, clip_x0=bad)
        with pytest.raises(ValueError, match="clip_x0 must be True or False"):
            ddim_step(SCHED, x, t, torch.tensor(2), model(x, t.expand(3)), None, clip_x0=bad)
    # a float t_start was truncated by int(); a bool is refused too
    x_T = torch.randn(3, 2, generator=_gen(3), dtype=torch.float64)
    for bad in [torch.tensor(3.5), 3.0, torch.tensor(True), True, 10, -1]:
        with pytest.raises(ValueError, match=r"t_start must be a step index in 0\.\.9"):
            ddpm_sample(model, SCHED, (3, 2), x_T=x_T, t_start=bad)
    # var_type is refused before the first state is yielded
    with pytest.raises(ValueError, match=r"var_type must be one of \('fixed_small', 'fixed_large'\)"):
        next(ddpm_steps(model, SCHED, (3, 2), var_type="learned"))
    for bad in [True, 0, 11, 2.0, "5"]:
        with pytest.raises(ValueError, match=r"steps must be an integer in 1\.\.10"):
            ddim_sample(model, SCHED, (3, 2), steps=bad)
    with pytest.raises(ValueError, match="timesteps must hold at least one step index"):
        ddim_sample(model, SCHED, (3, 2), timesteps=[])
    # the valid boundary values still work, and give the right answer
    a = ddpm_sample(model, SCHED, (3, 2), x_T=x_T, t_start=torch.tensor(3), generator=_gen(4))
    b = ddpm_sample(model, SCHED, (3, 2), x_T=x_T, t_start=3, generator=_gen(4))
    assert torch.equal(a, b)
    assert [s.t for s in ddpm_steps(model, SCHED, (3, 2), x_T=x_T, t_start=0)] == [0, -1]
    for clip in (False, True):
        for var_type in ("fixed_small", "fixed_large"):
            assert torch.isfinite(
                ddpm_sample(model, SCHED, (3, 2), var_type=var_type, clip_x0=clip, generator=_gen())
            ).all()
    for steps in (1, 10):
        states = list(ddim_steps(model, SCHED, (3, 2), steps=steps, clip_x0=True, x_T=x_T))
        assert len(states) == steps + 1 and torch.isfinite(states[-1].x).all()


def test_the_new_checks_helpers():
    assert real_in_range(0, "eta", 0.0, 1.0) == 0.0 and real_in_range(1, "eta", 0.0, 1.0) == 1.0
    assert isinstance(real_in_range(1, "eta", 0.0, 1.0), float)
    for bad in [math.nan, math.inf, -1e-12, 1 + 1e-12, False, "0", torch.tensor(0.5)]:
        with pytest.raises(ValueError, match=r"eta must be >= 0 and <= 1 \(a note\), got"):
            real_in_range(bad, "eta", 0.0, 1.0, " (a note)")
    assert flag(True, "clip_x0") is True and flag(False, "clip_x0") is False
    with pytest.raises(ValueError, match="clip_x0 must be True or False, got str 'False'"):
        flag("False", "clip_x0")


@pytest.mark.parametrize("shape", [(-1, 2), (), 3, (3.0, 2), (2, True)])
def test_a_bad_shape_is_refused_by_both_samplers(shape):
    for draw, kw in ((ddpm_sample, {}), (ddim_sample, {"steps": 2})):
        with pytest.raises(ValueError, match="shape must be a tuple of positive ints"):
            draw(lambda x, t: 0.1 * x, Schedule.linear(10), shape, **kw)


def test_integer_dtype_and_non_finite_x_T_are_refused():
    sched = Schedule.linear(10)
    with pytest.raises(ValueError, match="dtype must be a floating-point torch dtype"):
        ddim_sample(lambda x, t: 0.1 * x, sched, (2, 2), steps=2, dtype=torch.long)
    with pytest.raises(ValueError, match="x_T must be finite"):
        ddpm_sample(lambda x, t: 0.1 * x, sched, (2, 2), x_T=torch.full((2, 2), float("nan")))


def test_float16_ddim_is_finite_and_close_to_float32():
    """bar alpha near 1 rounds to 1 in float16: the step's coefficients are computed in float64 (sigma was 0/0)."""
    sched, g = Schedule.linear(1000), lambda: torch.Generator().manual_seed(0)
    for eta in (0.0, 1.0):
        x16 = ddim_sample(lambda x, t: 0.1 * x, sched, (4, 2), steps=50, eta=eta, dtype=torch.float16, generator=g())
        x32 = ddim_sample(lambda x, t: 0.1 * x, sched, (4, 2), steps=50, eta=eta, generator=g())
        assert bool(torch.isfinite(x16).all())
        assert torch.allclose(x16.float(), x32, rtol=2e-2, atol=1e-2), (x16, x32)


def test_ddpm_step_takes_a_plain_int_step():
    sched, x = Schedule.linear(10), torch.randn(3, 2)
    z = torch.randn(3, 2)
    a = ddpm_step(sched, x, 5, 0.1 * x, z)[0]
    b = ddpm_step(sched, x, torch.tensor(5), 0.1 * x, z)[0]
    assert torch.equal(a, b)


def test_float16_ddpm_on_the_cosine_schedule_is_finite_and_matches_float64():
    # bar alpha of cosine(1000)'s last steps underflows float16: x0_hat was inf and 0 * inf made the chain NaN
    sched = Schedule.cosine(1000)
    model = gaussian_eps(sched)
    x = torch.randn(4, 2, generator=_gen(3))
    z = torch.randn(4, 2, generator=_gen(4))
    for t in (999, 998, 500, 1):
        tt = torch.tensor(t)
        wide = ddpm_step(sched, x.double(), tt, model(x.double(), tt.expand(4)), z.double())[0]
        half = ddpm_step(sched, x.half(), tt, model(x.half(), tt.expand(4)), z.half())[0]
        assert half.dtype == torch.float16 and torch.isfinite(half).all()
        torch.testing.assert_close(half.double(), wide, atol=2e-2, rtol=2e-2)
    x0 = ddpm_sample(model, sched, (64, 2), generator=_gen(5), dtype=torch.float16)
    assert x0.dtype == torch.float16 and torch.isfinite(x0).all()
    assert 0.7 < float(x0.float().std()) < 1.3  # the exact model of N(0, I) data samples N(0, I)


@pytest.mark.parametrize("sampler", [ddpm_sample, ddim_sample])
@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(generator=3), "generator must be a torch.Generator"),
        (dict(generator="0"), "generator must be a torch.Generator"),
        (dict(device="gpu"), "device must be a device name"),
        (dict(device="cuda:99"), "CUDA devices"),
    ],
)
def test_a_bad_generator_or_device_is_refused_by_name(sampler, kw, message):
    with pytest.raises((TypeError, ValueError), match=message):
        sampler(gaussian_eps(SCHED), SCHED, (2, 2), **kw)


def test_numpy_integers_are_taken_as_integers():
    import numpy as np

    from ddpm_tutor.samplers import ddim_timesteps
    from ddpm_tutor.train import TrainConfig

    assert ddim_timesteps(np.int64(100), np.int64(10)) == ddim_timesteps(100, 10)
    cfg = TrainConfig(steps=np.int64(7), batch_size=np.int32(4))
    assert (cfg.steps, cfg.batch_size) == (7, 4) and type(cfg.steps) is int  # plain ints: checkpoints load them
    with pytest.raises(ValueError, match="steps must be"):
        ddim_timesteps(100, np.bool_(True))
    x = ddim_sample(gaussian_eps(SCHED), SCHED, (3, 2), steps=np.int64(5), generator=_gen())
    assert x.shape == (3, 2) and torch.isfinite(x).all()


def test_loaders_and_trainers_refuse_a_device_this_machine_lacks():
    from ddpm_tutor.classifier import load_digit_classifier
    from ddpm_tutor.losses import sample_t
    from ddpm_tutor.pretrained import load_pretrained

    for call in (
        lambda: load_pretrained("mnist", device="gpu"),
        lambda: load_digit_classifier(device="gpu"),
        lambda: sample_t(3, 10, device="gpu"),
    ):
        with pytest.raises(ValueError, match="device must be a device name"):
            call()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA devices"):
            load_digit_classifier(device="cuda")


def test_on_a_gpu_step_and_label_checks_are_device_side_asserts(monkeypatch):
    # the GPU branch of the checks (no host sync), run on the CPU, where torch._assert_async raises at once
    import ddpm_tutor.checks as checks

    monkeypatch.setattr(checks, "on_accelerator", lambda x: True)
    assert checks.step_indices(torch.tensor([0, 9]), 10).tolist() == [0, 9]
    assert checks.class_labels(torch.tensor([0, 10]), 2, 10).tolist() == [0, 10]
    with pytest.raises(RuntimeError, match=r"t must lie in 0\.\.9"):
        checks.step_indices(torch.tensor([3, 10]), 10)
    with pytest.raises(RuntimeError, match=r"t must lie in 0\.\.T-1"):
        checks.step_indices(torch.tensor([-1]))
    with pytest.raises(RuntimeError, match=r"y must hold labels 0\.\.10"):
        checks.class_labels(torch.tensor([0, 11]), 2, 10)
    with pytest.raises(ValueError, match="integer step indices"):  # dtype and shape: still ValueErrors
        checks.step_indices(torch.tensor([0.5]), 10)
