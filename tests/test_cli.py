import subprocess
import sys

import torch

from ddpm_tutor.checkpoint import load_checkpoint


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ddpm_tutor", *args], cwd=cwd, capture_output=True, text=True)


def test_train_sample_evaluate_toy2d(tmp_path):
    r = run("train", "toy2d", "--dataset", "8gaussians", "--steps", "30", "--n-data", "500", "--hidden", "16",
            "--T", "50", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ckpt = tmp_path / "runs" / "8gaussians" / "checkpoint.pt"
    assert load_checkpoint(ckpt)["step"] == 30
    r = run("sample", "--checkpoint", str(ckpt), "--n", "200", "--sampler", "ddim", "--steps", "10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    png = ckpt.with_name("samples_ddim.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run("evaluate", "--checkpoint", str(ckpt), "--n", "200", "--sampler", "ddim", cwd=tmp_path)
    assert r.returncode == 0 and "noise" not in r.stderr and "ratio" in r.stdout
    # an existing run is never overwritten silently; --resume continues it
    r = run("train", "toy2d", "--dataset", "8gaussians", "--steps", "30", "--quiet", cwd=tmp_path)
    assert r.returncode != 0 and "--resume" in r.stderr
    r = run("train", "toy2d", "--dataset", "8gaussians", "--steps", "40", "--n-data", "500", "--hidden", "16",
            "--T", "50", "--quiet", "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(ckpt)["step"] == 40


def test_bad_dataset_is_refused(tmp_path):
    r = run("train", "toy2d", "--dataset", "spiral", "--steps", "1", cwd=tmp_path)
    assert r.returncode != 0 and "--dataset must be one of" in r.stderr
    assert not (tmp_path / "runs").exists()
