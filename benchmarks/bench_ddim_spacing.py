"""Which steps should 50-step DDIM visit on 2-D data? Leading, trailing and quadratic spacing against DDPM.

Run: .venv/bin/python benchmarks/bench_ddim_spacing.py [--out runs/bench_ddim_spacing] [--steps 50]
For each dataset (moons with seeds 0, 1 and 2; swiss_roll, 8gaussians and checkerboard with seed 0) it trains
the README's command (`python -m ddpm_tutor train toy2d --dataset D --seed S`, the recipe's defaults; skipped
when the run exists) and scores, with the CLI's own `evaluate` (5 sample sets of n = 2,000 x 5 data draws), the
1000-step ancestral sampler and DDIM (eta 0) with each spacing. Prints the command, the machine and a table of
sliced Wasserstein and energy distance as multiples of the data-vs-data noise floor; writes results.json.
This is what the CLI's default --spacing per model kind rests on (``cli.DDIM_SPACING``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

RUNS = [("moons", 0), ("moons", 1), ("moons", 2), ("swiss_roll", 0), ("8gaussians", 0), ("checkerboard", 0)]
SAMPLERS = {
    "DDPM-1000": ["--sampler", "ddpm"],
    "DDIM leading": ["--sampler", "ddim", "--spacing", "leading"],
    "DDIM trailing": ["--sampler", "ddim", "--spacing", "trailing"],
    "DDIM quadratic": ["--sampler", "ddim", "--spacing", "quadratic"],
}


def cli(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "ddpm_tutor", *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"`python -m ddpm_tutor {' '.join(args)}` failed:\n{r.stderr}")
    return r.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_ddim_spacing")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    args = p.parse_args()
    out = Path(args.out)
    print("command:", " ".join(shlex.quote(a) for a in ["python", *sys.argv]))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, one thread per run")
    print(f"\nratio to the noise floor (1.00 = as close as a second draw of the data), n = 2,000, DDIM-{args.steps}")
    print("| data | seed | sampler | sliced Wasserstein | energy distance |\n|---|---|---|---|---|")
    results = {}
    for data, seed in RUNS:
        run = out / f"{data}_s{seed}"
        if not (run / "checkpoint.pt").exists():
            cli("train", "toy2d", "--dataset", data, "--seed", str(seed), "--out", str(run), "--quiet")
        for name, flags in SAMPLERS.items():
            steps = ["--steps", str(args.steps)] if "ddim" in flags else []
            text = cli("evaluate", "--checkpoint", str(run / "checkpoint.pt"), *flags, *steps)
            sw, ed = (float(v) for v in re.findall(r"ratio ([0-9.]+)", text)[:2])
            results[f"{data}|{seed}|{name}"] = {"sw_ratio": sw, "ed_ratio": ed}
            print(f"| {data} | {seed} | {name} | {sw:.2f} | {ed:.2f} |", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
