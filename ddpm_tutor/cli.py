"""Command line: ``python -m ddpm_tutor train|sample|evaluate``.

python -m ddpm_tutor train toy2d --dataset moons --out runs/moons
python -m ddpm_tutor sample --checkpoint runs/moons/checkpoint.pt --sampler ddim --steps 50
python -m ddpm_tutor evaluate --checkpoint runs/moons/checkpoint.pt
python -m ddpm_tutor train mnist --out runs/mnist
python -m ddpm_tutor train mnist --conditional --out runs/mnist_cond
python -m ddpm_tutor sample --checkpoint runs/mnist_cond/checkpoint.pt --labels 3 --guidance 2 --out threes.pt
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

from .device import default_device
from .diffusion import PARAMETERIZATIONS
from .losses import WEIGHTINGS
from .train import AMP_MODES


def _one_thread_for_small_models() -> None:
    """One intra-op thread for the 2-D MLP, unless OMP_NUM_THREADS says otherwise.

    Its matrices are too small to split across cores, and idle threads that spin on a busy second core made a
    training step up to 5x slower (2-core machine, another job running: 69 ms instead of 14 ms).
    """
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def _toy_setup(args):
    from .data import TOY2D, toy2d
    from .models import MLPConfig, MLPDenoiser

    _one_thread_for_small_models()
    if args.dataset not in TOY2D:
        raise SystemExit(f"--dataset must be one of {', '.join(TOY2D)}, got {args.dataset!r}")
    n_data = 50_000 if args.n_data is None else args.n_data
    data = toy2d(args.dataset, n_data, torch.Generator().manual_seed(args.seed))
    model = MLPDenoiser(MLPConfig(hidden=args.hidden))
    spec = {"kind": "mlp", "config": model.config_dict(), "data": {"kind": "toy2d", "name": args.dataset}}
    return data, None, model, spec


def _mnist_setup(args):
    from .data.images import load_mnist
    from .models.unet import UNet, UNetConfig

    x, y = load_mnist(train=True)
    if args.n_data is not None and args.n_data < len(x):  # a subset (first n digits), e.g. for quick tests
        x, y = x[: args.n_data], y[: args.n_data]
    cfg = UNetConfig.mnist(num_classes=10 if args.conditional else None)
    model = UNet(cfg)
    spec = {"kind": "unet", "config": cfg.to_dict(), "data": {"kind": "mnist", "n_train": len(x)}}
    return x, (y if args.conditional else None), model, spec


def cmd_train(args) -> int:
    from .schedules import Schedule
    from .train import TrainConfig, Trainer

    torch.manual_seed(args.seed)
    data, labels, model, spec = (_toy_setup if args.kind == "toy2d" else _mnist_setup)(args)
    over = {
        k: getattr(args, k)
        for k in (
            "steps",
            "batch_size",
            "lr",
            "ema_decay",
            "warmup",
            "amp",
            "weighting",
            "min_snr_gamma",
            "parameterization",
        )
        if getattr(args, k, None) is not None
    }
    # the recipes live next to TrainConfig (TrainConfig.toy2d, TrainConfig.mnist); flags override them
    recipe = TrainConfig.toy2d if args.kind == "toy2d" else TrainConfig.mnist
    cfg = recipe(**over, seed=args.seed, p_uncond=0.1 if labels is not None else 0.0)
    sched = Schedule.get(args.schedule, args.T)
    out = Path(args.out or f"runs/{args.dataset if args.kind == 'toy2d' else args.kind}")
    ckpt = out / "checkpoint.pt"
    # refuse before the first step what would fail (or silently restart) only at the end
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out} is a file, not a folder: choose a folder for the run")
    if args.resume and not ckpt.exists():
        raise SystemExit(f"--resume: there is no {ckpt} to continue (check --out); leave out --resume to start a run")
    trainer = Trainer(model, sched, data, cfg, labels=labels, device=args.device or default_device(), model_spec=spec)
    if ckpt.exists():
        if not args.resume:
            raise SystemExit(f"{ckpt} exists: pass --resume to continue it, or choose another --out")
        trainer.load(ckpt)
        print(f"resumed {ckpt} at step {trainer.step}")
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"training {spec['kind']} ({n_params:,} parameters) on {args.kind} for {cfg.steps} steps "
        f"on {trainer.device}{' with bf16 autocast' if trainer.autocast else ''}; checkpoint: {ckpt}"
    )
    t0 = time.perf_counter()
    trainer.run(progress=not args.quiet, checkpoint=ckpt, checkpoint_every=args.checkpoint_every)
    print(
        f"done in {time.perf_counter() - t0:.1f} s; final loss (mean of last 100 steps) "
        f"{sum(trainer.losses[-100:]) / len(trainer.losses[-100:]):.4f}"
    )
    return 0


def _draw_samples(model, sched, spec, n, args, device, labels=None, guidance=0.0, seed=None):
    """n samples by args.sampler from seed (default args.seed); labels (n,) make a conditional model draw those
    classes, with CFG scale guidance."""
    from .checkpoint import model_config, sample_shape
    from .samplers import ddim_sample, ddpm_sample

    shape = (n, *sample_shape(spec))
    g = torch.Generator().manual_seed(args.seed if seed is None else seed)
    clip = spec["kind"] == "unet"  # images live in [-1, 1]; 2D toy data does not
    if labels is not None:
        from .guidance import cfg_model

        # scale 0 is the plain conditional model, so guided and unguided draws share this one path
        model = cfg_model(model, labels.to(device), guidance, null_label=model_config(spec).num_classes)
    if args.sampler == "ddpm":
        return ddpm_sample(model, sched, shape, generator=g, device=device, var_type=args.var_type, clip_x0=clip)
    return ddim_sample(model, sched, shape, steps=args.steps, eta=args.eta, generator=g, device=device, clip_x0=clip)


SAMPLE_SUFFIXES = (".png", ".npy", ".pt")
# What a plain `sample` draws, per model kind, when --n / --sampler are not given. 2-D points are cheap;
# 1000 ancestral U-Net steps for thousands of digits take hours on a CPU, so images get a few, by DDIM.
SAMPLE_DEFAULTS = {"mlp": dict(n=2000, sampler="ddpm"), "unet": dict(n=64, sampler="ddim")}
DDIM_STEPS = 50  # default --steps of `sample` (capped at the model's T)


def _check_sample_flags(args) -> None:
    """Refuse flags that are wrong whatever the checkpoint, before it is even loaded."""
    if args.out is not None and Path(args.out).suffix.lower() not in SAMPLE_SUFFIXES:
        raise SystemExit(
            f"--out must end in .png (a picture), .npy (the raw samples) or .pt (samples, labels and "
            f"settings), got {args.out!r}"
        )
    if args.n is not None and args.n < 1:
        raise SystemExit(f"--n must be at least 1, got {args.n}")
    if not args.eta >= 0:  # also refuses nan
        raise SystemExit(f"--eta must be >= 0 (0 is deterministic DDIM, 1 is DDPM-like), got {args.eta}")
    if not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise SystemExit(
            f"--guidance must be a finite number >= 0 (0 is the plain conditional model), got {args.guidance}"
        )


def _fill_sample_defaults(args, kind: str, T: int) -> None:
    """Fill in --n, --sampler and --steps the user left out, by model kind, and check --steps against T."""
    for key, value in SAMPLE_DEFAULTS[kind].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps is None:
        args.steps = min(DDIM_STEPS, T)
    if args.sampler == "ddim" and not 1 <= args.steps <= T:
        raise SystemExit(f"--steps must be in 1..{T} (this model's T) for ddim, got {args.steps}")


def _sample_labels(arg, num_classes, n: int, seed: int, checkpoint) -> torch.Tensor | None:
    """The (n,) int64 labels asked for by --labels (None for an unconditional model)."""
    if num_classes is None:
        if arg is not None:
            raise SystemExit(
                f"--labels needs a class-conditional model, but {checkpoint} is unconditional "
                f"(`train mnist --conditional` makes a conditional one)"
            )
        return None
    arg = "uniform" if arg is None else arg.strip()
    if arg == "uniform":
        # Their own generator: the same --seed gives the same labels, yet they do not reuse the random
        # numbers that become the starting noise (drawn from a generator seeded with --seed itself).
        return torch.randint(0, num_classes, (n,), generator=torch.Generator().manual_seed(seed + 1))
    try:
        label = int(arg)
    except ValueError:
        label = None
    if label is None or not 0 <= label < num_classes:
        raise SystemExit(f"--labels must be a class 0..{num_classes - 1} or 'uniform', got {arg!r}")
    return torch.full((n,), label, dtype=torch.long)


def _scatter_figure(x, spec, args):
    """2-D samples next to fresh data: data | samples."""
    from matplotlib.figure import Figure  # no pyplot: nothing global changes, no backend is needed

    from .data import toy2d

    data = toy2d(spec["data"]["name"], args.n, torch.Generator().manual_seed(args.seed + 1))
    fig = Figure(figsize=(8, 4), layout="tight")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, pts, title in zip(axes, (data, x), (f"data: {spec['data']['name']}", f"samples: {args.sampler}")):
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        ax.set_title(title)
        ax.set_aspect("equal")
    return fig


def _write_samples(out: Path, x, labels, meta: dict, spec, args) -> None:
    from .checkpoint import write_atomic

    suffix = out.suffix.lower()
    if suffix == ".npy":
        import numpy as np

        write_atomic(out, lambda f: np.save(f, x.numpy(), allow_pickle=False))
    elif suffix == ".pt":
        write_atomic(out, lambda f: torch.save({"samples": x, "labels": labels, "meta": meta}, f))
    elif spec["kind"] == "mlp":
        fig = _scatter_figure(x, spec, args)
        write_atomic(out, lambda f: fig.savefig(f, format="png", dpi=120))
    else:  # images in [-1, 1] as one grid; save_image maps [-1, 1] to [0, 255], clamping
        from torchvision.utils import save_image

        write_atomic(
            out,
            lambda f: save_image(
                x, f, format="png", nrow=max(1, int(args.n**0.5)), normalize=True, value_range=(-1, 1)
            ),
        )


def _describe(args, sched, labels, num_classes) -> str:
    steps = f"{args.steps} DDIM steps, eta {args.eta:g}" if args.sampler == "ddim" else f"{sched.T} steps"
    if labels is None:
        return f"{args.n} samples by {args.sampler} ({steps}), unconditional"
    which = (
        f"labels uniform over 0..{num_classes - 1}"
        if (args.labels or "uniform").strip() == "uniform"
        else f"label {int(labels[0])}"
    )
    return f"{args.n} samples by {args.sampler} ({steps}), {which}, guidance {args.guidance:g}"


def cmd_sample(args) -> int:
    from .checkpoint import load_model, model_config

    _check_sample_flags(args)
    device = torch.device(args.device) if args.device else default_device()
    model, sched, state = load_model(args.checkpoint, device=device)
    spec = state["model_spec"]
    if spec["kind"] == "mlp":
        _one_thread_for_small_models()
    _fill_sample_defaults(args, spec["kind"], sched.T)
    num_classes = model_config(spec).num_classes
    labels = _sample_labels(args.labels, num_classes, args.n, args.seed, args.checkpoint)
    if args.guidance > 0 and labels is None:
        raise SystemExit(f"--guidance needs a class-conditional model, but {args.checkpoint} is unconditional")
    out = Path(args.out or Path(args.checkpoint).with_name(f"samples_{args.sampler}.png"))
    t0 = time.perf_counter()
    x = _draw_samples(model, sched, spec, args.n, args, device, labels=labels, guidance=args.guidance).cpu()
    seconds = time.perf_counter() - t0
    ddim = args.sampler == "ddim"
    meta = {
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "sampler": args.sampler,
        "steps": args.steps if ddim else sched.T,
        "eta": args.eta if ddim else None,
        "var_type": None if ddim else args.var_type,
        "guidance": args.guidance,
        "seed": args.seed,
        "n": args.n,
    }
    _write_samples(out, x, labels, meta, spec, args)
    print(f"{_describe(args, sched, labels, num_classes)}, in {seconds:.1f} s; wrote {out}")
    return 0


def cmd_evaluate(args) -> int:
    from .checkpoint import load_model

    for flag in ("n", "sets", "references"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise SystemExit(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    device = torch.device(args.device) if args.device else default_device()
    model, sched, state = load_model(args.checkpoint, device=device)
    spec = state["model_spec"]
    if spec["kind"] == "mlp":
        _one_thread_for_small_models()
        from .data import checkerboard_off_fraction, toy2d
        from .metrics import compare_to_data

        n = 2000 if args.n is None else args.n
        # several independent sets of samples: one set's luck (e.g. its split between the moons) moves the
        # distances as much as the model's errors do, and more reference draws cannot average that away
        xs = [
            _draw_samples(model, sched, spec, n, args, device, seed=args.seed + 100 * k).cpu() for k in range(args.sets)
        ]
        name = spec["data"]["name"]
        r = compare_to_data(xs, lambda n, g: toy2d(name, n, g), seed=args.seed, references=args.references)
        print(
            f"n={r['n']} sampler={args.sampler}, mean over {r['sets']} sample sets x {r['references']} data "
            f"draws: sliced Wasserstein {r['sliced_wasserstein']:.4f} (data-vs-data floor {r['sw_floor']:.4f}, "
            f"ratio {r['sw_ratio']:.2f}); energy distance {r['energy_distance']:.2e} (floor {r['ed_floor']:.2e}, "
            f"ratio {r['ed_ratio']:.2f})"
        )
        x = torch.cat(xs)
        if name == "checkerboard":
            print(f"samples off the dark squares: {checkerboard_off_fraction(x):.4f} (data: 0)")
        return 0
    from .data.images import load_mnist
    from .losses import bits_per_dim

    x, _ = load_mnist(train=False)
    x = x[: 5000 if args.n is None else args.n].to(device)
    r = bits_per_dim(
        model,
        sched,
        x,
        var_type=args.var_type,
        n_terms=args.n_terms,
        generator=torch.Generator().manual_seed(args.seed),
    )
    terms = "all" if args.n_terms is None else args.n_terms
    print(
        f"bits/dim on {len(x)} test images ({terms} of {sched.T} terms, var_type={args.var_type}): "
        f"{r['total'].mean():.3f} +- {r['se']:.3f} (standard error over the images and the drawn steps)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ddpm_tutor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    t.add_argument(
        "--n-data",
        dest="n_data",
        type=int,
        default=None,
        help="toy2d: points in the training set (default 50,000); mnist: use only the first N digits",
    )
    t.add_argument("--ema-decay", dest="ema_decay", type=float, help="EMA decay of the weights")
    t.add_argument("--warmup", type=int, help="steps of learning-rate warmup")
    t.add_argument("--amp", choices=AMP_MODES, help="bfloat16 autocast of the forward pass")
    t.add_argument("--weighting", choices=WEIGHTINGS, help="loss weighting over t (see losses.eps_weight)")
    t.add_argument(
        "--min-snr-gamma",
        dest="min_snr_gamma",
        type=float,
        help="gamma of --weighting min_snr (default 5; inf: the eps error unweighted, L_simple)",
    )
    t.add_argument("--parameterization", choices=PARAMETERIZATIONS, help="what the network predicts")
    t.add_argument(
        "--hidden",
        type=int,
        default=96,
        help="toy2d: MLP width (default 96: as good as 128 on two moons at about 60%% of the time per step)",
    )
    t.add_argument("--conditional", action="store_true", help="mnist: class-conditional with label dropout")
    t.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=1000)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
    for name, func, helptext in (
        (
            "sample",
            cmd_sample,
            "draw samples; write a PNG, the raw samples (.npy) or samples with labels and settings (.pt)",
        ),
        ("evaluate", cmd_evaluate, "2D: distances to data vs the noise floor; images: bits/dim"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--checkpoint", required=True)
        if name == "sample":  # defaults by model kind, filled in once the checkpoint is loaded
            s.add_argument(
                "--n", type=int, default=None, help="number of samples (default: 2000 for 2-D models, 64 for images)"
            )
            s.add_argument(
                "--sampler",
                default=None,
                choices=["ddpm", "ddim"],
                help="default: ddpm for 2-D models; ddim for images, since ancestral sampling takes "
                "all T steps (T = 1000 unless trained with another --T: hours for thousands "
                "of digits on a CPU)",
            )
            s.add_argument(
                "--steps",
                type=int,
                default=None,
                help=f"DDIM steps (default {DDIM_STEPS}, or the model's T if smaller)",
            )
        else:
            s.add_argument(
                "--n",
                type=int,
                default=None,
                help="2-D: samples per set (default 2000); images: test images for bits/dim (default "
                "5000, or all there are)",
            )
            s.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim"])
            s.add_argument("--steps", type=int, default=50, help="DDIM steps")
        s.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
        s.add_argument("--var-type", dest="var_type", default="fixed_small", choices=["fixed_small", "fixed_large"])
        s.add_argument("--n-terms", dest="n_terms", type=int, default=None, help="bits/dim: Monte Carlo terms")
        if name == "evaluate":
            s.add_argument(
                "--references", type=int, default=5, help="2D: independent data draws each sample set is compared with"
            )
            s.add_argument(
                "--sets",
                type=int,
                default=5,
                help="2D: independent sets of samples (seeds --seed + 100 k) the distances are averaged over",
            )
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--device")
        if name == "sample":
            s.add_argument(
                "--out",
                help="where to write: .png a picture (default: samples_<sampler>.png next to "
                "the checkpoint); .npy the samples exactly as the sampler returns them, "
                "float32 (n, D) or (n, C, H, W), unclamped; .pt a dict of samples, "
                "labels and meta (the settings)",
            )
            s.add_argument(
                "--labels",
                help="class-conditional models only: a class 0..K-1 for every sample, or "
                "'uniform' (the default), classes drawn at random, reproducibly from "
                "--seed",
            )
            s.add_argument(
                "--guidance",
                type=float,
                default=0.0,
                help="classifier-free guidance scale w >= 0 (Ho & Salimans 2022): eps = (1 + w) "
                "eps(x, y) - w eps(x, no label); 0 (the default) is the plain conditional model",
            )
        s.set_defaults(func=func)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
