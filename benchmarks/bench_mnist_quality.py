"""Sample quality of the MNIST U-Net against training CPU time (a printed table, never pass/fail).

Trains the book's MNIST recipe (the shipped model's: `python -m ddpm_tutor train mnist --conditional`,
settings from TrainConfig.mnist() in ddpm_tutor/train.py) and, every --every steps, draws --n unconditional
digits (null label) with DDIM (eta = 0, --ddim-steps steps) from the EMA weights and measures them with the
package's digit classifier: mean confidence, class balance (entropy / log 10), and the Frechet distance of
its penultimate features to the 500 offline test digits (with the real-digit floor at the same n).

    python benchmarks/bench_mnist_quality.py [--steps 600] [--every 100] [--n 200] [--threads N]

CPU seconds are process CPU time of the training steps only (evaluation excluded); wall seconds likewise.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="total steps (default: the recipe's)")
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--n", type=int, default=200, help="samples per evaluation")
    p.add_argument("--ddim-steps", dest="ddim_steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ddpm_tutor.classifier import features, frechet_distance, gaussian_stats, load_digit_classifier, sample_quality
    from ddpm_tutor.data.images import load_mnist
    from ddpm_tutor.diffusion import Denoiser
    from ddpm_tutor.models.unet import UNet, UNetConfig
    from ddpm_tutor.samplers import ddim_sample
    from ddpm_tutor.schedules import Schedule
    from ddpm_tutor.train import TrainConfig, Trainer

    x, y = load_mnist(train=True)
    x_test, _ = load_mnist(train=False)
    cfg = TrainConfig.mnist(seed=args.seed, p_uncond=0.1, **({"steps": args.steps} if args.steps else {}))
    recipe = cfg
    torch.manual_seed(args.seed)
    model = UNet(UNetConfig.mnist(num_classes=10))
    trainer = Trainer(
        model,
        Schedule.linear(1000),
        x,
        cfg,
        labels=y,
        device="cpu",
        model_spec={"kind": "unet", "config": model.config.to_dict()},
    )
    clf = load_digit_classifier()
    ref = gaussian_stats(features(clf, x_test))
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[: args.n]
    floor = frechet_distance(*gaussian_stats(features(clf, x[idx])), *ref)

    print(f"# {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(
        f"# machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at start"
    )
    print(
        f"# recipe: {recipe}; n = {args.n} samples, DDIM {args.ddim_steps} steps; real-digit Frechet floor {floor:.2f}"
    )
    print(
        f"{'step':>6s} {'cpu_min':>8s} {'wall_min':>9s} {'loss':>7s} {'confidence':>11s} {'balance':>8s} "
        f"{'frechet':>8s}"
    )
    cpu = wall = 0.0
    while trainer.step < cfg.steps:
        target = min(cfg.steps, trainer.step + args.every)
        c0, w0 = time.process_time(), time.perf_counter()
        trainer.run(target, progress=False)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        ema = Denoiser(trainer.ema_model, trainer.sched, cfg.parameterization).eval().unconditional()
        samples = ddim_sample(
            ema,
            trainer.sched,
            (args.n, 1, 28, 28),
            steps=args.ddim_steps,
            generator=torch.Generator().manual_seed(2),
            clip_x0=True,
        )
        q = sample_quality(clf, samples, reference=x_test)
        loss = sum(trainer.losses[-50:]) / len(trainer.losses[-50:])
        print(
            f"{trainer.step:6d} {cpu / 60:8.2f} {wall / 60:9.2f} {loss:7.4f} {q['confidence']:11.3f} "
            f"{q['balance']:8.3f} {q['frechet']:8.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
