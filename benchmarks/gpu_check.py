"""The GPU check of the paper's CIFAR-10 model: training and sampling speed, memory, and the GPU tests.

    python benchmarks/gpu_check.py [--out gpu_check.json]      # one GPU, under 8 minutes on an H100/H200
    python benchmarks/gpu_check.py --smoke                      # a tiny model on whatever device: checks the script

Prints the command, the machine and one table (never pass/fail): training steps/s of the 35.7M-parameter U-Net at
batch 128 on synthetic CIFAR-shaped data (speed does not depend on the pixels) in float32, bf16 autocast, and
bf16 with torch.compile, each with its peak memory; DDIM-100 sampling throughput at batch 1,000 and the time that
gives for 50,000 images; then runs ``pytest -m gpu`` (bf16 tracks float32, a torchrun step over NCCL, the
samplers on CUDA equal the CPU) and prints its summary. The targets of the book's issue 14 are printed beside the
numbers: >= 42 steps/s (twice the paper's 21 on a TPU v3-8, Ho et al. 2020 appendix B), 50,000 DDIM-100 samples
in under 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from ddpm_tutor.diffusion import Denoiser
from ddpm_tutor.models.unet import UNet, UNetConfig, count_parameters
from ddpm_tutor.samplers import ddim_sample
from ddpm_tutor.schedules import Schedule
from ddpm_tutor.train import TrainConfig, Trainer, native_bf16

PAPER_STEPS_PER_S = 21.0  # Ho et al. 2020, appendix B: batch 128 on a TPU v3-8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def train_speed(cfg: UNetConfig, batch: int, steps: int, warmup: int, amp: str, compile: bool, device) -> dict:
    """Steps per second of the Trainer (the paper's recipe) on synthetic data, after ``warmup`` steps."""
    torch.manual_seed(0)
    data = torch.rand(max(4 * batch, 512), 3, cfg.image_size, cfg.image_size) * 2 - 1
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(
        UNet(cfg), Schedule.linear(1000), data, TrainConfig.cifar10(batch_size=batch, amp=amp), device=device,
        compile=compile,
    )  # fmt: skip
    t0 = time.perf_counter()
    trainer.run(warmup, progress=False, log_every=warmup)  # compiles (with compile) and warms up the kernels
    _sync(device)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.run(warmup + steps, progress=False, log_every=steps)  # one sync at the end: the loss check
    _sync(device)
    seconds = time.perf_counter() - t0
    return dict(
        steps_per_s=steps / seconds, warmup_s=first, peak_gb=_peak_gb(device), autocast=trainer.autocast,
        loss=sum(trainer.losses[-steps:]) / steps,
    )  # fmt: skip


def sample_speed(cfg: UNetConfig, batch: int, steps: int, device) -> dict:
    """Images per second of DDIM-``steps`` at ``batch`` under inference_mode, bf16 autocast where native."""
    model = UNet(cfg).to(device).eval()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    den = Denoiser(model, Schedule.linear(1000), "eps")
    bf16 = native_bf16(device)
    g = torch.Generator().manual_seed(0)

    def run(n_steps):
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return ddim_sample(den, den.sched, (batch, 3, cfg.image_size, cfg.image_size), steps=n_steps,
                               generator=g, device=device, clip_x0=True)  # fmt: skip

    run(2)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    x = run(steps)
    _sync(device)
    seconds = time.perf_counter() - t0
    assert torch.isfinite(x).all()
    return dict(images_per_s=batch / seconds, min_for_50k=50_000 / (batch / seconds) / 60, bf16=bf16)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny model and sizes: checks the script in seconds")
    p.add_argument("--device", default=None, help="default: cuda if present (else cpu, with --smoke only)")
    p.add_argument("--out", help="also write the table as JSON here")
    p.add_argument("--no-tests", action="store_true", help="skip pytest -m gpu")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.smoke:
        print("gpu_check: no CUDA device here; run it on a GPU (or --smoke to check the script on a CPU)")
        return 2
    print("command: python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, GPU {gpu}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, bf16 native: {native_bf16(device)}"
    )
    if args.smoke:
        cfg = UNetConfig.ddpm_cifar10(ch=32, ch_mult=(1, 2), attn_resolutions=(16,), image_size=32, num_groups=8)
        batch, steps, warmup, s_batch, s_steps = 4, 2, 1, 8, 2
        modes = [("fp32", "off", False), ("bf16", "bf16", False)]
    else:
        cfg = UNetConfig.ddpm_cifar10()
        batch, steps, warmup, s_batch, s_steps = 128, 50, 10, 1000, 100
        modes = [("fp32", "off", False), ("bf16", "bf16", False), ("bf16+compile", "bf16", True)]
    print(f"model: {count_parameters(UNet(cfg)):,} parameters; training batch {batch}, {steps} timed steps")
    rows = {}
    for name, amp, comp in modes:
        try:
            rows[name] = train_speed(cfg, batch, steps, warmup, amp, comp, device)
        except Exception as err:  # one mode failing (e.g. compile without a compiler) must not hide the others
            rows[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    rows["sampling"] = sample_speed(cfg, s_batch, s_steps, device)
    print("\n| training mode | steps/s | x paper (21) | 800k steps (h) | warm-up s | peak GB | last loss |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, _, _ in modes:
        r = rows[name]
        if "error" in r:
            print(f"| {name} | failed: {r['error']} | | | | | |")
            continue
        peak = "-" if r["peak_gb"] is None else f"{r['peak_gb']:.1f}"
        print(
            f"| {name} | {r['steps_per_s']:.1f} | {r['steps_per_s'] / PAPER_STEPS_PER_S:.2f} | "
            f"{800_000 / r['steps_per_s'] / 3600:.1f} | {r['warmup_s']:.0f} | {peak} | {r['loss']:.3f} |"
        )
    s = rows["sampling"]
    print(
        f"\nsampling: DDIM-{s_steps} at batch {s_batch}{' (bf16)' if s['bf16'] else ''}: {s['images_per_s']:.0f} "
        f"images/s, 50,000 images in {s['min_for_50k']:.1f} min (target < 10)"
    )
    print("targets: training >= 42 steps/s at batch 128 (bf16), i.e. 800k steps in < 5.5 h; 50k DDIM-100 in < 10 min")
    if not args.no_tests and not args.smoke:
        root = Path(__file__).resolve().parents[1]
        res = subprocess.run(
            [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:randomly", "tests/test_gpu.py"],
            cwd=root, capture_output=True, text=True,
        )  # fmt: skip
        tail = res.stdout.strip().splitlines()[-15:]
        print("\npytest -m gpu tests/test_gpu.py:\n" + "\n".join(tail))
        rows["gpu_tests"] = {"returncode": res.returncode, "summary": tail[-1] if tail else ""}
    if args.out:
        Path(args.out).write_text(json.dumps({"device": gpu, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
