"""One sampler, several MNIST checkpoints, every sample axis: the table that located the cause of grainy DDIM digits.

Each checkpoint (a training checkpoint or an export; class-conditional models are sampled with labels drawn
uniformly) is sampled with the same x_T by the given sampler, and judged by ``ddpm_tutor.quality`` against the
500 offline test digits, beside real training digits at the same n. It also prints each model's mean squared
eps error on 128 test digits at a few t, the error the sampler inherits. Prints a table, never pass/fail.

    python benchmarks/bench_mnist_ablation.py runs/a/checkpoint.pt runs/b/checkpoint.pt [--n 128] [--sampler ddim-50]

The runs of the ablation were made with ``python -m ddpm_tutor train mnist --conditional --device cpu`` and
the flags the model card lists.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys

import torch


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--sampler", default="ddim-50", help="ddim-S (S steps, eta 0) or ddpm (1000 steps)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from ddpm_tutor.data.images import load_mnist
    from ddpm_tutor.diffusion import q_sample
    from ddpm_tutor.quality import image_quality
    from ddpm_tutor.samplers import ddim_sample, ddpm_sample
    from ddpm_tutor.train import load_model

    print(f"# {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(
        f"# machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}"
    )
    x_test, y_test = load_mnist(train=False)
    x_train, _ = load_mnist(train=True)
    axes = ("frechet_clf", "frechet_rand", "border", "grey", "confidence", "balance", "accuracy")
    print("| model | " + " | ".join(axes) + " | eps MSE at t = 1, 21, 201, 701 |")
    print("|---" * (len(axes) + 2) + "|")
    real = x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed))[: args.n]]
    q = image_quality(real, x_test)
    print("| real training digits | " + " | ".join(f"{q[k]:.4g}" if k in q else "-" for k in axes) + " | - |")
    for path in args.checkpoints:
        model, sched, state = load_model(path, device="cpu")  # a Denoiser: answers with eps whatever it predicts
        k = model.null_label
        y = torch.randint(0, k, (args.n,), generator=torch.Generator().manual_seed(args.seed + 1)) if k else None
        f = model if y is None else model.with_labels(y)
        g = torch.Generator().manual_seed(args.seed)
        shape = (args.n, 1, 28, 28)
        if args.sampler == "ddpm":
            x = ddpm_sample(f, sched, shape, clip_x0=True, generator=g)
        else:
            x = ddim_sample(f, sched, shape, steps=int(args.sampler.split("-")[1]), clip_x0=True, generator=g)
        q = image_quality(x, x_test, labels=y)
        mse, gm = [], torch.Generator().manual_seed(args.seed + 2)
        for step in (0, 20, 200, 700):
            t = torch.full((128,), step)
            eps = torch.randn(x_test[:128].shape, generator=gm)
            x_t = q_sample(sched, x_test[:128], t, eps)
            out = model(x_t, t) if k is None else model.with_labels(y_test[:128])(x_t, t)
            mse.append(f"{((out - eps) ** 2).mean():.3f}")
        tc = state["train_config"]
        name = f"{path} ({tc['parameterization']}, {tc['weighting']}, {state['step']} steps, batch {tc['batch_size']})"
        print(
            f"| {name} | " + " | ".join(f"{q[k]:.4g}" if k in q else "-" for k in axes) + f" | {', '.join(mse)} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
