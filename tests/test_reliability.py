"""Regression tests for inputs that used to give a wrong answer or lose a run without an error (issue 13)."""

import subprocess
import sys

import pytest
import torch

from ddpm_tutor.checkpoint import export_weights, load_checkpoint
from ddpm_tutor.diffusion import q_mean_variance, q_sample, q_step
from ddpm_tutor.losses import diffusion_loss
from ddpm_tutor.models import MLPDenoiser
from ddpm_tutor.schedules import Schedule
from ddpm_tutor.train import TrainConfig, Trainer


def test_a_model_output_of_the_wrong_shape_is_refused_not_broadcast():
    x0 = torch.randn(8, 2)
    with pytest.raises(ValueError, match=r"output must have the shape of x_t \(8, 2\), got \(8, 1\)"):
        diffusion_loss(lambda x, t: x[:, :1] * 0, Schedule.linear(), x0)
    # the right shape still trains: a finite per-example loss
    assert diffusion_loss(lambda x, t: x * 0, Schedule.linear(), x0).shape == (8,)


def test_integer_data_is_refused_where_a_schedule_quantity_meets_it():
    sched, t = Schedule.linear(), torch.tensor([0])
    x = torch.full((1, 1, 2, 2), 200, dtype=torch.uint8)  # alpha_bar cast to uint8 used to give 0
    for call in (
        lambda: q_sample(sched, x, t, torch.zeros(1, 1, 2, 2)),
        lambda: q_step(sched, x, t, torch.zeros(1, 1, 2, 2)),
        lambda: q_mean_variance(sched, x, t),
    ):
        with pytest.raises(ValueError, match="floating-point tensor"):
            call()
    # the same pixels scaled to floats go through, with the value of eq. 4
    xf = x.float() / 127.5 - 1
    expected = sched.alpha_bar[0].sqrt().float() * xf
    torch.testing.assert_close(q_sample(sched, xf, t, torch.zeros_like(xf)), expected)


def test_q_step_refuses_noise_of_another_shape():
    with pytest.raises(ValueError, match=r"eps must have the shape of x_prev \(4, 2\)"):
        q_step(Schedule.linear(), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.randn(1, 2))


@pytest.mark.parametrize("name,value", [("grad_clip", -1.0), ("warmup", -3), ("weight_decay", -0.1), ("warmup", True)])
def test_train_config_refuses_negative_clip_warmup_and_decay(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a number >= 0"):
        TrainConfig(**{name: value})
    TrainConfig(**{name: 0})  # 0 turns each off


def test_export_over_its_own_training_checkpoint_is_refused(tmp_path):
    tr = Trainer(MLPDenoiser(hidden=8), Schedule.linear(10), torch.randn(16, 2), TrainConfig(steps=2), device="cpu")
    tr.run(progress=False, checkpoint=tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="would overwrite the training checkpoint"):
        export_weights(tmp_path / "checkpoint.pt", tmp_path / "." / "checkpoint.pt")
    assert "opt" in load_checkpoint(tmp_path / "checkpoint.pt")  # still a resumable training checkpoint


def _train(tmp_path, *args):
    cmd = [sys.executable, "-m", "ddpm_tutor", "train", "toy2d", "--dataset", "8gaussians", "--steps", "3"]
    return subprocess.run(
        [*cmd, "--n-data", "64", "--hidden", "8", "--T", "10", "--quiet", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )


def test_cli_resume_of_a_missing_run_and_out_on_a_file_are_refused_before_training(tmp_path):
    r = _train(tmp_path, "--out", "runs/typo", "--resume")
    assert r.returncode != 0 and "there is no runs/typo/checkpoint.pt to continue" in r.stderr, r.stderr
    assert not (tmp_path / "runs" / "typo").exists()  # nothing was trained or written
    (tmp_path / "afile").write_text("not a folder")
    r = _train(tmp_path, "--out", "afile")
    assert r.returncode != 0 and "is a file, not a folder" in r.stderr, r.stderr
    assert (tmp_path / "afile").read_text() == "not a folder"


@pytest.mark.parametrize("gamma", [0, -5.0, True, "5"])
def test_min_snr_gamma_must_be_positive(gamma):
    with pytest.raises(ValueError, match="min_snr_gamma must be a number > 0"):
        TrainConfig(weighting="min_snr", min_snr_gamma=gamma)
    with pytest.raises(ValueError, match="min_snr_gamma must be a number > 0"):
        diffusion_loss(
            lambda x, t: x * 0, Schedule.linear(), torch.randn(4, 2), weighting="min_snr", min_snr_gamma=gamma
        )


def test_min_snr_gamma_inf_is_the_eps_error_unweighted_and_gamma_is_used():
    sched, x0 = Schedule.linear(), torch.randn(64, 2)
    t, eps = torch.arange(0, 1000, 1000 // 64)[:64], torch.randn(64, 2)
    model = lambda x, t: 0.5 * x  # noqa: E731
    simple = diffusion_loss(model, sched, x0, t=t, eps=eps, weighting="simple")
    inf = diffusion_loss(model, sched, x0, t=t, eps=eps, weighting="min_snr", min_snr_gamma=float("inf"))
    torch.testing.assert_close(inf, simple)
    five = diffusion_loss(model, sched, x0, t=t, eps=eps, weighting="min_snr", min_snr_gamma=5.0)
    snr = sched.snr[t].float()
    torch.testing.assert_close(five, simple * (snr.clamp(max=5.0) / snr))
