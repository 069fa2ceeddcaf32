"""Schedules and single sampler steps against diffusers' DDPMScheduler and DDIMScheduler (a test-only reference)."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402

from ddpm_tutor.samplers import ddim_step, ddim_timesteps, ddpm_step  # noqa: E402
from ddpm_tutor.schedules import Schedule  # noqa: E402


def test_linear_schedule_matches_diffusers():
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    ours = Schedule.linear()
    assert torch.allclose(ours.beta.float(), ref.betas, rtol=1e-6)
    assert torch.allclose(ours.alpha_bar.float(), ref.alphas_cumprod, rtol=1e-5)


def test_cosine_schedule_matches_diffusers():
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    ours = Schedule.cosine(1000)
    assert torch.allclose(ours.beta.float(), ref.betas, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("step", [999, 500, 1, 0])
def test_ddpm_step_matches_diffusers(var_type, clip, step):
    ref = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        variance_type=var_type,
        clip_sample=clip,
        prediction_type="epsilon",
    )
    sched = Schedule(ref.betas.double())  # the same float32-rounded betas, so only the step is compared
    g = torch.Generator().manual_seed(step)
    x = torch.randn(4, 3, 8, 8, generator=g)
    eps_hat = torch.randn(4, 3, 8, 8, generator=g)
    expected = ref.step(eps_hat, step, x, generator=torch.Generator().manual_seed(7)).prev_sample
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    got, _ = ddpm_step(sched, x, torch.full((4,), step), eps_hat, noise, var_type=var_type, clip_x0=clip)
    assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_steps_match_diffusers(steps, eta):
    ref = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )
    ref.set_timesteps(steps)
    sched = Schedule(ref.betas.double())
    assert ref.timesteps.tolist() == ddim_timesteps(1000, steps)
    ts = ddim_timesteps(1000, steps)
    g = torch.Generator().manual_seed(steps)
    for i in [0, len(ts) // 2, len(ts) - 1]:
        t, prev = ts[i], (ts[i + 1] if i + 1 < len(ts) else -1)
        x = torch.randn(2, 3, 4, 4, generator=g)
        eps_hat = torch.randn(2, 3, 4, 4, generator=g)
        expected = ref.step(eps_hat, t, x, eta=eta, generator=torch.Generator().manual_seed(3)).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
        got, _ = ddim_step(sched, x, torch.full((2,), t), torch.full((2,), prev), eps_hat, noise, eta=eta)
        assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4), (t, prev)
