"""Training speed of our MNIST U-Net against diffusers' UNet2DModel of the same architecture.

Both networks get the same batches, the same AdamW and L_simple (MSE of the output against the noise).
The diffusers model is built in the equivalent configuration and its weights are converted into ours,
so the two compute the same function (checked below) and only the implementations differ.

    python benchmarks/bench_unet.py [--batch 64] [--steps 20] [--threads N]

The models alternate step by step and medians are reported. Where the CPU computes bfloat16 natively,
a third row times our U-Net with the bf16 autocast that the MNIST recipe (amp="auto") uses.
Prints a table (never pass/fail): timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ddpm_tutor.models import UNet, UNetConfig, count_parameters, unet_from_diffusers
from ddpm_tutor.train import native_bf16


def diffusers_config_for(cfg: UNetConfig) -> dict:
    """UNet2DModel arguments of the architecture `cfg` describes (single-head attention, TF SAME down-sampling)."""
    n = len(cfg.ch_mult)
    attn = [r in cfg.attn_resolutions for r in cfg.resolutions]
    return dict(
        sample_size=cfg.image_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult),
        layers_per_block=cfg.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if attn[n - 1 - i] else "UpBlock2D" for i in range(n)),
        attention_head_dim=None,
        norm_num_groups=cfg.num_groups,
        norm_eps=1e-6,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        dropout=cfg.dropout,
        act_fn="silu",
    )


class Trainer:
    """One model with its AdamW; step() runs one step of L_simple on a batch and returns its seconds."""

    def __init__(self, model, call, bf16: bool = False):
        self.model, self.call, self.bf16 = model.train(), call, bf16
        self.opt = torch.optim.AdamW(model.parameters(), lr=2e-4)

    def step(self, x, t, eps) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.call(self.model, x, t)
        loss = F.mse_loss(out.float(), eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import UNet2DModel

    print("command:", " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv))
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    if hasattr(os, "getloadavg"):
        print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))

    cfg = UNetConfig.mnist()
    torch.manual_seed(0)
    theirs = UNet2DModel(**diffusers_config_for(cfg))
    ours = UNet(cfg)
    # same weights, so both run the same function; check it before timing anything
    ours.load_state_dict(unet_from_diffusers(theirs)[1])
    g = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.rand(args.batch, 1, 28, 28, generator=g) * 2 - 1,
            torch.randint(0, 1000, (args.batch,), generator=g),
            torch.randn(args.batch, 1, 28, 28, generator=g),
        )
        for _ in range(args.warmup + args.steps)
    ]
    theirs.eval()
    ours.eval()
    with torch.no_grad():  # diffusers does not zero-initialise, so equal outputs here are not trivial
        x, t, _ = batches[0]
        diff = (theirs(x, t).sample - ours(x, t)).abs().max().item()
    print(
        f"parameters: ours {count_parameters(ours):,}, diffusers {count_parameters(theirs):,}; "
        f"max |output difference| {diff:.2e}"
    )

    trainers = {
        "ddpm_tutor UNet": Trainer(ours, lambda m, x, t: m(x, t)),
        "diffusers UNet2DModel": Trainer(theirs, lambda m, x, t: m(x, t).sample),
    }
    if native_bf16(torch.device("cpu")):  # what the MNIST recipe (amp="auto") uses on this CPU
        twin = UNet(cfg)
        twin.load_state_dict(ours.state_dict())
        trainers["ddpm_tutor UNet, bf16 autocast"] = Trainer(twin, lambda m, x, t: m(x, t), bf16=True)
    times = {name: [] for name in trainers}
    # interleave the two models step by step, so a change in machine load hits both alike; report medians
    for i, batch in enumerate(batches):
        for name, trainer in trainers.items():
            sec = trainer.step(*batch)
            if i >= args.warmup:
                times[name].append(sec)
    print(f"\nMNIST preset, batch {args.batch}, {args.steps} timed steps each (AdamW, L_simple), median:")
    width = max(len(name) for name in times) + 2
    print(f"{'model':<{width}}{'s/step':>10}{'steps/s':>10}{'images/s':>10}")
    for name, ts in times.items():
        sec = statistics.median(ts)
        print(f"{name:<{width}}{sec:>10.3f}{1 / sec:>10.2f}{args.batch / sec:>10.0f}")


if __name__ == "__main__":
    main()
