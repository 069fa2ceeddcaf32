"""Sample quality per CPU-minute: our MNIST recipe against a plain diffusers UNet2DModel baseline.

Two trainings run side by side, each in its own process with one thread (one core each on a 2-core CPU):

* ours: the package's own command, ``python -m ddpm_tutor train mnist --conditional`` (the recipe of the
  shipped checkpoint, ``TRAIN_DEFAULTS["mnist"]`` in ddpm_tutor/cli.py);
* baseline: diffusers' ``UNet2DModel`` (block_out_channels (32, 64, 64), one layer per block, attention
  at 7x7, about 1.1M parameters) trained the textbook way: ``DDPMScheduler.add_noise``, MSE on the noise,
  AdamW lr 1e-3, batch 64, 3,000 steps, no EMA.

Both see the same offline digits (``load_mnist(train=True)``). Then both are sampled identically:
unconditional (ours with the null label), the package's DDIM sampler (eta = 0, clip x0) with the same
x_T and the same number of steps, the same number of samples, and judged by the package's digit
classifier (mean confidence, class balance, Frechet distance of its features to the 500 test digits).
CPU minutes are the training process's user + system time, start-up and data loading included.

    python benchmarks/bench_vs_diffusers.py                     # both trainings, then the comparison
    python benchmarks/bench_vs_diffusers.py --only diffusers    # one leg (e.g. to rerun it)
    python benchmarks/bench_vs_diffusers.py --only evaluate     # compare the two saved runs again

Prints tables; never pass/fail. Runs go to --out (default runs/bench_vs_diffusers).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

BASELINE = dict(steps=3000, batch_size=64, lr=1e-3, eval_at=(1000, 2000, 3000))


def diffusers_baseline_model():
    from diffusers import UNet2DModel
    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def train_diffusers(out: Path, seed: int) -> None:
    """The baseline leg: a plain diffusers training loop, saving the weights at each of eval_at."""
    from diffusers import DDPMScheduler

    from ddpm_tutor.checkpoint import save_checkpoint
    from ddpm_tutor.data.images import load_mnist
    x, _ = load_mnist(train=True)
    torch.manual_seed(seed)
    model = diffusers_baseline_model().train()
    scheduler = DDPMScheduler(num_train_timesteps=1000)  # linear 1e-4 .. 0.02, the paper's schedule
    opt = torch.optim.AdamW(model.parameters(), lr=BASELINE["lr"])
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(1, BASELINE["steps"] + 1):
        x0 = x[torch.randint(0, len(x), (BASELINE["batch_size"],), generator=g)]
        t = torch.randint(0, 1000, (len(x0),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        loss = F.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step in BASELINE["eval_at"]:
            r = resource.getrusage(resource.RUSAGE_SELF)
            save_checkpoint({"state_dict": model.state_dict(), "step": step, "losses": losses,
                             "cpu_s": r.ru_utime + r.ru_stime}, out / f"diffusers_{step}.pt")
            print(f"diffusers step {step}: loss(last 100) {sum(losses[-100:]) / 100:.4f}, "
                  f"cpu {(r.ru_utime + r.ru_stime) / 60:.1f} min", flush=True)


def run_leg(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def timed_legs(legs: dict[str, list[str]], out: Path) -> dict[str, dict]:
    """Start every leg at once; return each one's wall and CPU time (from its rusage at exit)."""
    procs = {name: (run_leg(cmd, out / f"{name}.log"), time.perf_counter()) for name, cmd in legs.items()}
    result = {}
    for name, (proc, start) in procs.items():
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"{name} leg failed (exit {proc.returncode}); see {out / (name + '.log')}")
        result[name] = {"wall_s": time.perf_counter() - start, "cpu_s": usage.ru_utime + usage.ru_stime,
                        "cmd": " ".join(shlex.quote(c) for c in legs[name])}
        print(f"{name}: {result[name]['cpu_s'] / 60:.1f} CPU-min, {result[name]['wall_s'] / 60:.1f} wall-min",
              flush=True)
    return result


@torch.no_grad()
def evaluate(out: Path, n: int, steps_list: list[int], seed: int) -> None:
    from ddpm_tutor.checkpoint import load_checkpoint
    from ddpm_tutor.classifier import load_digit_classifier, sample_quality
    from ddpm_tutor.data.images import load_mnist
    from ddpm_tutor.samplers import ddim_sample
    from ddpm_tutor.schedules import Schedule
    from ddpm_tutor.train import load_model

    clf = load_digit_classifier()
    x_test, _ = load_mnist(train=False)
    sched = Schedule.linear(1000)
    times = json.loads((out / "times.json").read_text()) if (out / "times.json").exists() else {}

    models = {}
    for leg in ("ours", "ours_uncond"):
        if not (out / leg / "checkpoint.pt").exists():
            continue
        net, net_sched, state = load_model(out / leg / "checkpoint.pt", device="cpu")
        if not torch.equal(net_sched.beta, sched.beta):
            raise SystemExit(f"{leg} was not trained under the linear T=1000 schedule the baseline uses")
        name = f"{leg} ({state['step']} steps, batch {state['train_config']['batch_size']})"
        cpu_s = times.get(leg, {}).get("cpu_s")
        k = net.config.num_classes
        if k is None:
            models[name] = (net, cpu_s)
            continue
        # a class-conditional model sampled without a class: the null label (what guidance calls the
        # unconditional model, trained on a tenth of the batches) ...
        models[name + ", null label"] = ((lambda m, k: lambda x, t: m(x, t, torch.full((x.shape[0],), k)))(net, k),
                                         cpu_s)
        # ... or y ~ uniform over the classes, then x ~ p(x | y): exactly a sample of p(x) when classes are
        # balanced (they are: 450 per class). It uses the labels the baseline never sees; reported apart.
        y = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed + 1))
        models[name + ", y ~ U{0..9}"] = ((lambda m, y: lambda x, t: m(x, t, y[: x.shape[0]]))(net, y), cpu_s)
    for step in BASELINE["eval_at"]:
        path = out / f"diffusers_{step}.pt"
        if not path.exists():
            continue
        ck = load_checkpoint(path)
        m = diffusers_baseline_model().eval()
        m.load_state_dict(ck["state_dict"])
        models[f"diffusers UNet2DModel ({step} steps, batch 64)"] = (
            (lambda mm: lambda x, t: mm(x, t).sample)(m), ck["cpu_s"])

    print(f"\nunconditional samples, n = {n} each, DDIM eta 0 with clip x0, same x_T; "
          f"classifier {clf.__class__.__name__}; reference: the {len(x_test)} offline test digits")
    x_train, _ = load_mnist(train=True)
    real = x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[:n]]
    q = sample_quality(clf, real, reference=x_test)
    print(f"real training digits (n = {len(real)}): confidence {q['confidence']:.3f}, "
          f"balance {q['balance']:.3f}, Frechet {q['frechet']:.2f} (the floor at this n)")
    print(f"| model | training CPU-min | DDIM steps | confidence | balance | Frechet |")
    print(f"|---|---|---|---|---|---|")
    for steps in steps_list:
        for name, (fn, cpu_s) in models.items():
            x = ddim_sample(fn, sched, (n, 1, 28, 28), steps=steps, clip_x0=True,
                            generator=torch.Generator().manual_seed(seed))
            q = sample_quality(clf, x, reference=x_test)
            cpu = f"{cpu_s / 60:.1f}" if cpu_s else "?"
            print(f"| {name} | {cpu} | {steps} | {q['confidence']:.3f} | {q['balance']:.3f} | "
                  f"{q['frechet']:.2f} |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["ours", "ours_uncond", "diffusers", "evaluate"], default=None)
    p.add_argument("--out", default="runs/bench_vs_diffusers")
    p.add_argument("--n", type=int, default=500, help="samples per model and setting")
    p.add_argument("--ddim-steps", dest="ddim_steps", default="20,50", help="comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the evaluation")
    p.add_argument("--_leg", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out)
    if args._leg == "diffusers":
        train_diffusers(out, args.seed)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    print(f"# {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"# machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}; load average at start {os.getloadavg()[0]:.2f}", flush=True)
    legs = {}
    if args.only in (None, "ours"):
        if (out / "ours").exists():
            raise SystemExit(f"{out / 'ours'} exists: remove it to train our leg again")
        legs["ours"] = [sys.executable, "-m", "ddpm_tutor", "train", "mnist", "--conditional", "--quiet",
                        "--out", str(out / "ours"), "--seed", str(args.seed), "--device", "cpu"]
    if args.only == "ours_uncond":  # the same recipe without labels (a like-for-like unconditional model)
        if (out / "ours_uncond").exists():
            raise SystemExit(f"{out / 'ours_uncond'} exists: remove it to train this leg again")
        legs["ours_uncond"] = [sys.executable, "-m", "ddpm_tutor", "train", "mnist", "--quiet",
                               "--out", str(out / "ours_uncond"), "--seed", str(args.seed), "--device", "cpu"]
    if args.only in (None, "diffusers"):
        legs["diffusers"] = [sys.executable, __file__, "--out", str(out), "--seed", str(args.seed),
                             "--_leg", "diffusers"]
    if legs:
        measured = timed_legs(legs, out)
        times_path = out / "times.json"  # read only now: another leg may have written it meanwhile
        times = {**(json.loads(times_path.read_text()) if times_path.exists() else {}), **measured}
        times_path.write_text(json.dumps(times, indent=1))
    torch.set_num_threads(args.threads)
    evaluate(out, args.n, [int(s) for s in args.ddim_steps.split(",")], args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
