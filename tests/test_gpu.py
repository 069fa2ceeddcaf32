"""What only a GPU can show: bf16 tracks float32, a torchrun step over NCCL, the samplers on CUDA equal the CPU.

Marked ``gpu``: skipped without CUDA (the reason is shown), run by ``pytest -m gpu`` and by
``benchmarks/gpu_check.py``. Each CUDA check whose code path also runs on the CPU has its CPU twin here, run
everywhere (bf16 autocast on the CPU; the gloo twin of the torchrun step is tests/test_distributed.py).
"""

import subprocess
import sys

import pytest
import torch

from ddpm_tutor.diffusion import Denoiser
from ddpm_tutor.losses import diffusion_loss
from ddpm_tutor.models.unet import UNet, UNetConfig
from ddpm_tutor.samplers import ddim_sample, ddpm_sample
from ddpm_tutor.schedules import Schedule

SMALL = UNetConfig.ddpm_cifar10(ch=32, ch_mult=(1, 2), image_size=16, attn_resolutions=(8,), num_groups=8, dropout=0.0)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _loss_and_grads(model, sched, x0, t, eps, bf16: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = diffusion_loss(Denoiser(model, sched, "eps"), sched, x0, t=t, eps=eps).mean()
    loss.backward()
    return loss.detach().float(), torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("device", DEVICES)
def test_a_bf16_training_step_tracks_float32(device):
    torch.manual_seed(0)
    model = UNet(SMALL).to(device)
    for p in model.parameters():  # the zero-initialised output layers would make most gradients exactly 0
        p.data.add_(0.02 * torch.randn_like(p))
    sched, g = Schedule.linear(1000), torch.Generator().manual_seed(1)
    x0 = (torch.rand(16, 3, 16, 16, generator=g) * 2 - 1).to(device)
    t = torch.randint(0, 1000, (16,), generator=g).to(device)
    eps = torch.randn(16, 3, 16, 16, generator=g).to(device)
    loss32, g32 = _loss_and_grads(model, sched, x0, t, eps, bf16=False)
    loss16, g16 = _loss_and_grads(model, sched, x0, t, eps, bf16=True)
    assert abs(float(loss16 - loss32)) < 0.02 * float(loss32), (loss16, loss32)
    cosine = torch.nn.functional.cosine_similarity(g16.double(), g32.double(), dim=0)
    assert cosine > 0.99, float(cosine)
    assert abs(float(g16.norm() / g32.norm()) - 1) < 0.05


@pytest.mark.gpu
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samplers_on_cuda_equal_the_cpu(sampler):
    torch.manual_seed(0)
    model = UNet(SMALL).eval()
    for p in model.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    sched = Schedule.linear(50)
    shape = (8, 3, 16, 16)
    run = ddim_sample if sampler == "ddim" else ddpm_sample
    kw = dict(steps=10) if sampler == "ddim" else {}
    out = {}
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # float32 on both sides
    try:
        for device in ("cpu", "cuda"):
            den = Denoiser(model.to(device), sched, "eps")
            g = torch.Generator().manual_seed(3)  # a CPU generator: the same noise on both devices
            with torch.no_grad():
                out[device] = run(den, sched, shape, generator=g, device=device, **kw).cpu()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    torch.testing.assert_close(out["cuda"], out["cpu"], atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
def test_one_torchrun_step_over_nccl(tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "ddpm_tutor",
        "train", "toy2d", "--steps", "2", "--batch-size", "8", "--n-data", "64", "--device", "cuda", "--quiet",
        "--out", str(tmp_path / "run"),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "nccl" in res.stdout, res.stdout
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
