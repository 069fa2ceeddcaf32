"""Command line: ``python -m ddpm_tutor train|sample|evaluate``.

  python -m ddpm_tutor train toy2d --dataset moons --out runs/moons
  python -m ddpm_tutor sample --checkpoint runs/moons/checkpoint.pt --sampler ddim --steps 50
  python -m ddpm_tutor evaluate --checkpoint runs/moons/checkpoint.pt
  python -m ddpm_tutor train mnist --out runs/mnist
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .budget import default_device
from .train import AMP_MODES


def _toy_setup(args):
    from .data import TOY2D, toy2d
    from .models import MLPConfig, MLPDenoiser
    if args.dataset not in TOY2D:
        raise SystemExit(f"--dataset must be one of {', '.join(TOY2D)}, got {args.dataset!r}")
    n_data = 50_000 if args.n_data is None else args.n_data
    data = toy2d(args.dataset, n_data, torch.Generator().manual_seed(args.seed))
    model = MLPDenoiser(MLPConfig(hidden=args.hidden))
    spec = {"kind": "mlp", "config": model.config_dict(), "data": {"kind": "toy2d", "name": args.dataset}}
    return data, None, model, spec, None


def _mnist_setup(args):
    from .data.images import load_mnist
    from .models.unet import UNet, UNetConfig
    x, y = load_mnist(train=True)
    if args.n_data is not None and args.n_data < len(x):  # a subset (first n digits), e.g. for quick tests
        x, y = x[: args.n_data], y[: args.n_data]
    cfg = UNetConfig.mnist(num_classes=10 if args.conditional else None)
    model = UNet(cfg)
    spec = {"kind": "unet", "config": cfg.to_dict(), "data": {"kind": "mnist", "n_train": len(x)}}
    return x, (y if args.conditional else None), model, spec, None


TRAIN_DEFAULTS = {  # per data kind: the settings a plain `train` uses (each can be overridden by a flag)
    "toy2d": dict(steps=6000, batch_size=512, lr=3e-3, warmup=100, ema_decay=0.995, cosine_decay=True),
    # MNIST: the recipe of the shipped checkpoint ddpm_tutor/checkpoints/mnist_unet.pt (see its model card):
    # a short CPU run wants a high learning rate, a short EMA window, a cosine decay to zero, the min-SNR-5
    # weighting (Hang et al. 2023: the many easy low-noise steps stop dominating the gradient) and bf16 autocast
    # where the hardware has it: about 14 CPU-minutes on one core of an AVX512-BF16 CPU.
    "mnist": dict(steps=1350, batch_size=64, lr=2e-3, warmup=50, ema_decay=0.995, cosine_decay=True, amp="auto",
                  weighting="min_snr"),
}


def cmd_train(args) -> int:
    from .schedules import Schedule
    from .train import TrainConfig, Trainer
    torch.manual_seed(args.seed)
    data, labels, model, spec, augment = (_toy_setup if args.kind == "toy2d" else _mnist_setup)(args)
    over = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "ema_decay", "warmup", "amp")
            if getattr(args, k, None) is not None}
    cfg = TrainConfig(**{**TRAIN_DEFAULTS[args.kind], **over, "seed": args.seed,
                         "p_uncond": 0.1 if labels is not None else 0.0})
    sched = Schedule.get(args.schedule, args.T)
    out = Path(args.out or f"runs/{args.dataset if args.kind == 'toy2d' else args.kind}")
    ckpt = out / "checkpoint.pt"
    trainer = Trainer(model, sched, data, cfg, labels=labels, device=args.device or default_device(),
                      model_spec=spec, augment=augment)
    if ckpt.exists():
        if not args.resume:
            raise SystemExit(f"{ckpt} exists: pass --resume to continue it, or choose another --out")
        trainer.load(ckpt)
        print(f"resumed {ckpt} at step {trainer.step}")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"training {spec['kind']} ({n_params:,} parameters) on {args.kind} for {cfg.steps} steps "
          f"on {trainer.device}{' with bf16 autocast' if trainer.autocast else ''}; checkpoint: {ckpt}")
    t0 = time.perf_counter()
    trainer.run(progress=not args.quiet, checkpoint=ckpt, checkpoint_every=args.checkpoint_every)
    print(f"done in {time.perf_counter() - t0:.1f} s; final loss (mean of last 100 steps) "
          f"{sum(trainer.losses[-100:]) / len(trainer.losses[-100:]):.4f}")
    return 0


def _draw_samples(model, sched, spec, n, args, device):
    from .samplers import ddim_sample, ddpm_sample
    shape = (n, spec["config"]["data_dim"]) if spec["kind"] == "mlp" else \
        (n, spec["config"]["in_channels"], spec["config"]["image_size"], spec["config"]["image_size"])
    g = torch.Generator().manual_seed(args.seed)
    clip = spec["kind"] == "unet"  # images live in [-1, 1]; 2D toy data does not
    if args.sampler == "ddpm":
        return ddpm_sample(model, sched, shape, generator=g, device=device, var_type=args.var_type, clip_x0=clip)
    return ddim_sample(model, sched, shape, steps=args.steps, eta=args.eta, generator=g, device=device, clip_x0=clip)


def cmd_sample(args) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .train import load_model
    device = torch.device(args.device) if args.device else default_device()
    model, sched, state = load_model(args.checkpoint, device=device)
    spec = state["model_spec"]
    t0 = time.perf_counter()
    x = _draw_samples(model, sched, spec, args.n, args, device).cpu()
    print(f"{args.n} samples with {args.sampler} in {time.perf_counter() - t0:.1f} s")
    out = Path(args.out or Path(args.checkpoint).with_name(f"samples_{args.sampler}.png"))
    if spec["kind"] == "mlp":
        from .data import toy2d
        data = toy2d(spec["data"]["name"], args.n, torch.Generator().manual_seed(args.seed + 1))
        fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
        for ax, pts, title in zip(axes, (data, x), (f"data: {spec['data']['name']}", f"samples: {args.sampler}")):
            ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
            ax.set_title(title)
            ax.set_aspect("equal")
    else:
        from torchvision.utils import make_grid
        grid = make_grid((x.clamp(-1, 1) + 1) / 2, nrow=int(args.n ** 0.5))
        fig, ax = plt.subplots(figsize=(6, 6))
        ax.imshow(grid.permute(1, 2, 0).numpy())
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    return 0


def cmd_evaluate(args) -> int:
    from .train import load_model
    device = torch.device(args.device) if args.device else default_device()
    model, sched, state = load_model(args.checkpoint, device=device)
    spec = state["model_spec"]
    if spec["kind"] == "mlp":
        from .data import toy2d
        from .metrics import compare_to_data
        x = _draw_samples(model, sched, spec, args.n, args, device).cpu()
        r = compare_to_data(x, lambda n, g: toy2d(spec["data"]["name"], n, g), seed=args.seed)
        print(f"n={r['n']} sampler={args.sampler}: sliced Wasserstein {r['sliced_wasserstein']:.4f} "
              f"(data-vs-data floor {r['sw_floor']:.4f}, ratio {r['sw_ratio']:.2f}); energy distance "
              f"{r['energy_distance']:.2e} (floor {r['ed_floor']:.2e}, ratio {r['ed_ratio']:.2f})")
        return 0
    from .data.images import load_mnist
    from .losses import bits_per_dim
    x, _ = load_mnist(train=False)
    x = x[: args.n].to(device)
    r = bits_per_dim(model, sched, x, var_type=args.var_type, n_terms=args.n_terms,
                     generator=torch.Generator().manual_seed(args.seed))
    terms = "all" if args.n_terms is None else args.n_terms
    print(f"bits/dim on {len(x)} test images ({terms} of {sched.T} terms, var_type={args.var_type}): "
          f"{r['total'].mean():.3f} +- {r['total'].std() / len(x) ** 0.5:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ddpm_tutor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model (progress bar, EMA, checkpoints, --resume)")
    t.add_argument("kind", choices=["toy2d", "mnist"])
    t.add_argument("--dataset", default="moons", help="toy2d: moons, swiss_roll, 8gaussians or checkerboard")
    t.add_argument("--out", help="run folder (default runs/<dataset>)")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", dest="batch_size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--schedule", default="linear", choices=["linear", "cosine"])
    t.add_argument("--T", type=int, default=1000)
    t.add_argument("--n-data", dest="n_data", type=int, default=None,
                   help="toy2d: points in the training set (default 50,000); mnist: use only the first N digits")
    t.add_argument("--ema-decay", dest="ema_decay", type=float, help="EMA decay of the weights")
    t.add_argument("--warmup", type=int, help="steps of learning-rate warmup")
    t.add_argument("--amp", choices=AMP_MODES, help="bfloat16 autocast of the forward pass")
    t.add_argument("--hidden", type=int, default=128, help="toy2d: MLP width")
    t.add_argument("--conditional", action="store_true", help="mnist: class-conditional with label dropout")
    t.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=1000)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
    for name, func, helptext in (("sample", cmd_sample, "draw samples and write a PNG"),
                                 ("evaluate", cmd_evaluate, "2D: distances to data vs the noise floor; "
                                                           "images: bits/dim")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--checkpoint", required=True)
        s.add_argument("--n", type=int, default=2000 if name == "sample" else 5000)
        s.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim"])
        s.add_argument("--steps", type=int, default=50, help="DDIM steps")
        s.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
        s.add_argument("--var-type", dest="var_type", default="fixed_small", choices=["fixed_small", "fixed_large"])
        s.add_argument("--n-terms", dest="n_terms", type=int, default=None, help="bits/dim: Monte Carlo terms")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--device")
        if name == "sample":
            s.add_argument("--out", help="PNG path (default: next to the checkpoint)")
        s.set_defaults(func=func)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
