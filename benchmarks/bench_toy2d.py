"""Two moons on this CPU: training time to reach the noise floor, and the sampler's overhead.

Run: .venv/bin/python benchmarks/bench_toy2d.py [--max-steps 8000] [--n 2000]
Prints a table (not a test): (1) training time on one core (evaluation excluded) until the EMA model's DDPM
and DDIM-50 samples are within 1.5x of the data-vs-data floor on sliced Wasserstein and energy distance;
(2) the sampler's wall time divided by the time of the bare network forward passes it makes, for DDPM (1000
steps) and DDIM (50 steps).

    .venv/bin/python benchmarks/bench_toy2d.py --seeds 0 1 2 3 4 [--out runs/bench_toy2d]

runs the README's command, ``python -m ddpm_tutor train toy2d --dataset moons`` with its defaults, once per
``--seed``, and judges each run with the CLI's own ``evaluate`` (DDPM-1000, then DDIM-50 with the 2-D default
spacing; n = 2,000, 5 sample sets x 5 data draws): a table of training seconds and ratios to the noise floor.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch
from bench_ddim_spacing import cli  # python -m ddpm_tutor on one core, as a reader runs it

from ddpm_tutor.data import toy2d
from ddpm_tutor.diffusion import Denoiser
from ddpm_tutor.metrics import compare_to_data
from ddpm_tutor.models import MLPDenoiser
from ddpm_tutor.samplers import ddim_sample, ddim_timesteps, ddpm_sample
from ddpm_tutor.schedules import Schedule
from ddpm_tutor.train import TrainConfig, Trainer


def machine() -> str:
    return (
        f"{platform.platform()} | {os.cpu_count()} CPUs | torch {torch.__version__} "
        f"({torch.get_num_threads()} threads) | python {platform.python_version()}"
    )


def draw(n, g):
    return toy2d("moons", n, g)


def train_to_floor(args) -> list[tuple]:
    sched = Schedule.linear()
    data = toy2d("moons", 50_000, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = MLPDenoiser(hidden=96)  # the width `train toy2d` uses by default
    cfg = TrainConfig.toy2d(steps=args.max_steps)  # the CLI's recipe, longer
    trainer = Trainer(model, sched, data, cfg, device="cpu")
    rows, train_time = [], 0.0
    for target in args.eval_at:
        t0 = time.perf_counter()
        trainer.run(target, progress=False)
        train_time += time.perf_counter() - t0
        net = Denoiser(trainer.ema_model, sched, cfg.parameterization).eval()
        # 5 independent sets of samples x 5 data draws each, as `evaluate` does (one set alone is too noisy)
        with torch.no_grad():
            xs = [
                ddpm_sample(net, sched, (args.n, 2), generator=torch.Generator().manual_seed(1 + k)) for k in range(5)
            ]
            r = compare_to_data(xs, draw, references=5)
            xs = [
                ddim_sample(net, sched, (args.n, 2), steps=50, generator=torch.Generator().manual_seed(1 + k))
                for k in range(5)
            ]
            r_ddim = compare_to_data(xs, draw, references=5)
        rows.append((target, train_time, r["sw_ratio"], r["ed_ratio"], r_ddim["sw_ratio"], r_ddim["ed_ratio"]))
        print(
            f"  step {target:>6}: train {train_time:6.1f} s  DDPM: SW/floor {r['sw_ratio']:.2f}  "
            f"energy/floor {r['ed_ratio']:.2f}; DDIM-50: SW/floor {r_ddim['sw_ratio']:.2f}  "
            f"energy/floor {r_ddim['ed_ratio']:.2f} (5 sample sets x 5 data draws)",
            flush=True,
        )
        if max(rows[-1][2:]) <= 1.5:
            break
    return rows


def overhead(args) -> list[tuple]:
    sched = Schedule.linear()
    model = MLPDenoiser(hidden=96).eval()  # the width `train toy2d` uses by default
    rows = []
    for name, n_calls, run in (
        (
            "ddpm 1000 steps",
            1000,
            lambda: ddpm_sample(model, sched, (args.n, 2), generator=torch.Generator().manual_seed(0)),
        ),
        (
            "ddim 50 steps",
            50,
            lambda: ddim_sample(model, sched, (args.n, 2), steps=50, generator=torch.Generator().manual_seed(0)),
        ),
    ):
        ts = list(range(999, -1, -1)) if n_calls == 1000 else ddim_timesteps(1000, 50)
        x = torch.randn(args.n, 2)
        t_batches = [torch.full((args.n,), s, dtype=torch.long) for s in ts]

        def bare(x=x, t_batches=t_batches):
            with torch.no_grad():
                for t in t_batches:
                    model(x, t)

        best_bare, best_run = float("inf"), float("inf")
        for _ in range(args.repeats):  # interleaved, best of, in this process's CPU time: robust to other load
            t0 = time.process_time()
            bare()
            best_bare = min(best_bare, time.process_time() - t0)
            t0 = time.process_time()
            run()
            best_run = min(best_run, time.process_time() - t0)
        rows.append((name, best_run, best_bare, best_run / best_bare))
    return rows


README_TRAIN = ("train", "toy2d", "--dataset", "moons", "--quiet")  # the README's command, its defaults


def readme_seeds(args) -> None:
    """The README's command once per seed, each run judged by the CLI's evaluate with DDPM-1000 and DDIM-50."""
    print("| seed | training s | DDPM SW / floor | DDPM energy / floor | DDIM-50 SW / floor | DDIM-50 energy / floor |")
    print("|---|---|---|---|---|---|")
    worst = []
    for seed in args.seeds:
        out = Path(args.out) / f"moons_seed{seed}"
        if out.exists():
            raise SystemExit(f"{out} exists: remove it, or give another --out")
        log = cli(*README_TRAIN, "--seed", str(seed), "--out", str(out))
        train_s = float(re.search(r"done in ([0-9.]+) s", log)[1])  # the CLI's training time, start-up excluded
        ratios = []
        for sampler in ("ddpm", "ddim"):
            text = cli("evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--sampler", sampler)
            ratios += [float(v) for v in re.findall(r"ratio ([0-9.]+)", text)[:2]]  # sliced W, energy
        worst.append(max(ratios))
        print(f"| {seed} | {train_s:.1f} | " + " | ".join(f"{v:.2f}" for v in ratios) + " |", flush=True)
    print(f"worst ratio over the seeds: {max(worst):.2f} (the target: 1.5)")


def main():
    torch.set_num_threads(1)  # as the CLI trains 2-D models: one core
    p = argparse.ArgumentParser()
    p.add_argument("--max-steps", type=int, default=10_000)
    p.add_argument("--eval-at", type=int, nargs="+", default=[1000, 2000, 3000, 4000, 5000, 6000, 8000, 10_000])
    p.add_argument("--n", type=int, default=2000, help="samples per evaluation and batch of the sampler")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--overhead-only", action="store_true", help="skip the training part")
    p.add_argument("--seeds", type=int, nargs="+", help="instead: the README's command with each --seed, judged")
    p.add_argument("--out", default="runs/bench_toy2d", help="with --seeds: the runs' folder")
    args = p.parse_args()
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"machine: {machine()}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    if args.seeds:
        readme_seeds(args)
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
        return
    if args.overhead_only:
        for name, run_s, bare_s, ratio in overhead(args):
            print(
                f"| {name}, n={args.n}: sampler / bare forward passes | {run_s:.3f} s / {bare_s:.3f} s = {ratio:.3f} |"
            )
        return
    n_params = sum(p.numel() for p in MLPDenoiser(hidden=96).parameters())
    print(f"training to 1.5x the noise floor (two moons, MLP {n_params:,} params, recipe {TrainConfig.toy2d()}):")
    rows = train_to_floor(args)
    reached = [r for r in rows if max(r[2:]) <= 1.5]
    print("| result | value |\n|---|---|")
    if reached:
        print(
            f"| training time until DDPM and DDIM-50 are within 1.5x of the floor on SW and energy | "
            f"{reached[0][1]:.1f} s ({reached[0][0]} steps) |"
        )
    else:
        print(
            f"| training time until DDPM and DDIM-50 are within 1.5x of the floor on SW and energy | not reached "
            f"in {rows[-1][0]} steps ({rows[-1][1]:.1f} s, worst ratio {max(rows[-1][2:]):.2f}) |"
        )
    for name, run_s, bare_s, ratio in overhead(args):
        print(f"| {name}, n={args.n}: sampler / bare forward passes | {run_s:.3f} s / {bare_s:.3f} s = {ratio:.3f} |")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
