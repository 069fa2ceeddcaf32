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
from .samplers import SPACINGS
from .train import AMP_MODES


class UsageError(Exception):
    """A command line that cannot run as asked; main() reports it as argparse does (usage, one line, status 2)."""


class _UsageExit(SystemExit):
    """Exit status 2 whose str() is the message (already on stderr), so that in-process callers of main() see it."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose errors keep their message in the SystemExit (status 2, usage and message on stderr)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        text = f"{self.prog}: error: {message}"
        print(text, file=sys.stderr)
        raise _UsageExit(text)


# argparse types: a bad value is reported by argparse itself, "error: argument --steps: must be an integer >= 1,
# got '0'", with exit status 2, instead of failing later with a traceback (or running with it)
def _int_at_least(least: int):
    """An argparse type: an integer >= ``least``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least:
            raise argparse.ArgumentTypeError(f"must be an integer >= {least}, got {text!r}")
        return value

    return parse


def _float_where(expected: str, ok):
    """An argparse type: a float for which ``ok(value)`` holds, ``expected`` saying which in the message."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan  # nan fails every comparison: refused by every check below
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


POSITIVE_INT = _int_at_least(1)
SEED_MAX = 2**32 - 1  # numpy's range; torch's manual_seed overflows above 2**64 (and evaluate adds 100 per set)


def SEED(text: str) -> int:
    """An argparse type: a seed, an integer in 0..2**32 - 1."""
    value = _int_at_least(0)(text)
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..{SEED_MAX}, got {text!r}")
    return value


NON_NEGATIVE_INT = _int_at_least(0)
POSITIVE_FINITE = _float_where("a finite number > 0", lambda v: 0 < v < math.inf)
NON_NEGATIVE_FINITE = _float_where("a finite number >= 0", lambda v: 0 <= v < math.inf)
POSITIVE_OR_INF = _float_where("a number > 0 (inf allowed)", lambda v: v > 0)
ZERO_TO_ONE = _float_where("a number in [0, 1]", lambda v: 0 <= v <= 1)
ZERO_TO_BELOW_ONE = _float_where("a number in [0, 1)", lambda v: 0 <= v < 1)
ABOVE_ZERO_TO_ONE = _float_where("a number in (0, 1]", lambda v: 0 < v <= 1)


def _check_device(name: str | None) -> None:
    """Refuse a --device this machine does not have (None, the default, picks one that it has)."""
    if name is None:
        return
    have = ["cpu"]
    if torch.cuda.is_available():
        have += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        have.append("mps")
    if name not in have:
        raise UsageError(f"argument --device: this machine has no device {name!r}; it has {', '.join(have)}")


def _flag(dest: str) -> str:
    """The option of an argparse dest: n_terms -> --n-terms."""
    return "--" + dest.replace("_", "-")


def _refuse_given(args, dests, why: str) -> None:
    """Refuse the options among ``dests`` the user gave (not None): they do not apply, ``why`` says why."""
    given = [_flag(d) for d in dests if getattr(args, d, None) is not None]
    if given:
        raise UsageError(f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} not apply {why}")


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
        raise UsageError(f"--dataset must be one of {', '.join(TOY2D)}, got {args.dataset!r}")
    n_data = 50_000 if args.n_data is None else args.n_data
    data = toy2d(args.dataset, n_data, torch.Generator().manual_seed(args.seed))
    model = MLPDenoiser(MLPConfig(hidden=args.hidden))
    # n_train too (as for mnist): the points are drawn again from --seed on --resume, and must be as many
    spec = {
        "kind": "mlp",
        "config": model.config_dict(),
        "data": {"kind": "toy2d", "name": args.dataset, "n_train": n_data},
    }
    return data, None, model, spec


def _mnist_setup(args):
    from .data.images import load_mnist
    from .models.unet import UNet, UNetConfig

    x, y = load_mnist(train=True)
    if args.n_data is not None and args.n_data < len(x):  # a subset (first n digits), e.g. for quick tests
        x, y = x[: args.n_data], y[: args.n_data]
    cfg = UNetConfig.mnist(num_classes=10 if args.conditional else None, **_dropout(args))
    model = UNet(cfg)
    spec = {"kind": "unet", "config": cfg.to_dict(), "data": {"kind": "mnist", "n_train": len(x)}}
    return x, (y if args.conditional else None), model, spec


def _cifar10_setup(args):
    """CIFAR-10's 50,000 training images in memory, (N, 3, 32, 32) in [-1, 1], and the paper's U-Net."""
    from .data import images
    from .models.unet import UNet, UNetConfig

    try:
        x, y = images.cifar10_tensors(train=True)
    except images.DatasetUnavailableError as err:
        raise UsageError(f"train cifar10: {err}") from None
    if args.n_data is not None and args.n_data < len(x):  # a subset (the first n images), e.g. for quick tests
        x, y = x[: args.n_data], y[: args.n_data]
    cfg = UNetConfig.ddpm_cifar10(num_classes=10 if args.conditional else None, **_dropout(args))
    model = UNet(cfg)
    spec = {"kind": "unet", "config": cfg.to_dict(), "data": {"kind": "cifar10", "n_train": len(x)}}
    return x, (y if args.conditional else None), model, spec


def _dropout(args) -> dict:
    """The U-Net config's dropout that --dropout asks for ({}: the model's own default)."""
    return {} if args.dropout is None else {"dropout": args.dropout}


SETUPS = {"toy2d": _toy_setup, "mnist": _mnist_setup, "cifar10": _cifar10_setup}  # data and model of each kind


# The options of `train` that define a run (argparse dests). Each is recorded in the checkpoint: --resume takes
# those left out from it and refuses any given with another value (the run would no longer be the saved one).
RUN_OPTIONS = ("dataset", "n_data", "hidden", "conditional", "dropout", "schedule", "T", "seed")
CONFIG_OPTIONS = (  # the ones that are TrainConfig fields; left out of a new run, the recipe's values
    "steps",
    "batch_size",
    "lr",
    "ema_decay",
    "warmup",
    "amp",
    "weighting",
    "min_snr_gamma",
    "parameterization",
    "grad_clip",
    "hflip",
    "p_small_t",
    "small_t_frac",
)
# what the other run options default to in a new run (argparse's default is None, to see what the user gave)
TRAIN_DEFAULTS = dict(dataset="moons", hidden=96, conditional=False, schedule="linear", T=1000, seed=0)


def _saved_run(state: dict) -> dict:
    """The `train` options (dest -> value) of the run saved in a training checkpoint, as far as it records them."""
    from .train import TrainConfig

    spec, sched = state["model_spec"], state["schedule"]
    data = spec.get("data", {})
    cfg = TrainConfig.from_dict(state.get("train_config", {}))
    run = {k: getattr(cfg, k) for k in (*CONFIG_OPTIONS, "seed")}
    run.update(kind=data.get("kind"), schedule=sched["name"], T=len(sched["beta"]))
    if "n_train" in data:  # runs of toy2d saved before it was recorded: their --n-data cannot be checked
        run["n_data"] = data["n_train"]
    if data.get("kind") == "toy2d":
        run.update(dataset=data["name"], hidden=spec["config"]["hidden"], conditional=False)
    elif data.get("kind") in ("mnist", "cifar10"):
        run.update(conditional=spec["config"].get("num_classes") is not None, dropout=spec["config"].get("dropout"))
    return run


def _show(value) -> str:
    """An option's value for a message (a switch as on/off)."""
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def _refuse_changes(saved: dict, asked: dict) -> None:
    """Refuse a --resume whose options (dest -> value, those the user gave) differ from the saved run's."""
    differ = [k for k, v in asked.items() if k in saved and saved[k] != v]
    if not differ:
        return
    listed = ", ".join(f"{_flag(k)} {_show(saved[k])} (saved) vs {_show(asked[k])} (asked)" for k in differ)
    why = (
        " (--steps cannot change: the learning rate decays to 0 along a cosine laid out over the run's total steps, "
        "so a resumed run of other length would not be the run it claims to be)"
        if "steps" in differ
        else ""
    )
    raise UsageError(
        f"--resume continues the saved run exactly; these options differ from it: {listed}. Leave them out to "
        f"continue, or start a new run with another --out{why}"
    )


def cmd_train(args) -> int:
    """`train`, in one process or in each of torchrun's (WORLD_SIZE, RANK and LOCAL_RANK in the environment)."""
    from . import distributed

    try:
        world = distributed.world_from_env()
        device = distributed.device_for(world, args.device)
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        return _train(args, world, device)
    finally:
        distributed.destroy()


def _train(args, world, device) -> int:
    from . import distributed
    from .checkpoint import RESUME_KEYS, read_checkpoint
    from .schedules import Schedule
    from .train import TrainConfig, Trainer

    say = print if world.main else lambda *_: None  # one process speaks for all
    if args.kind == "toy2d":
        why = "to toy2d: they are options of the image models (mnist, cifar10)"
        _refuse_given(args, ("conditional", "dropout", "hflip"), why)
    else:
        _refuse_given(args, ("dataset", "hidden"), f"to {args.kind}: they choose the 2-D data set and the MLP's width")
    asked = {k: getattr(args, k) for k in (*RUN_OPTIONS, *CONFIG_OPTIONS) if getattr(args, k) is not None}
    dataset = args.dataset or TRAIN_DEFAULTS["dataset"]
    out = Path(args.out or f"runs/{dataset if args.kind == 'toy2d' else args.kind}")
    ckpt = out / "checkpoint.pt"
    # refuse before the first step what would fail (or silently restart) only at the end
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder: choose a folder for the run")
    if args.resume and not ckpt.exists():
        raise UsageError(f"--resume: there is no {ckpt} to continue (check --out); leave out --resume to start a run")
    if ckpt.exists() and not args.resume:
        raise UsageError(f"{ckpt} exists: pass --resume to continue it, or choose another --out")
    state = saved = None
    if args.resume:
        try:
            state = read_checkpoint(ckpt, RESUME_KEYS)
        except ValueError as err:
            raise UsageError(f"--resume: {err}") from None
        saved = _saved_run(state)
        if saved["kind"] != args.kind:
            raise UsageError(f"--resume: {ckpt} is a run of {saved['kind'] or 'unrecorded data'}, not of {args.kind}")
        for k in RUN_OPTIONS + CONFIG_OPTIONS:  # left out: the saved run's own value
            if getattr(args, k) is None and k in saved:
                setattr(args, k, saved[k])
    for k, value in TRAIN_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, value)

    if saved is not None:
        cfg = TrainConfig.from_dict(state["train_config"])  # the saved run's, down to the fields no option sets
    else:
        over = {k: getattr(args, k) for k in CONFIG_OPTIONS if getattr(args, k) is not None}
        # the recipes live next to TrainConfig (TrainConfig.toy2d, .mnist, .cifar10); options override them
        recipe = getattr(TrainConfig, args.kind)
        try:
            cfg = recipe(**over, seed=args.seed, p_uncond=0.1 if args.conditional else 0.0)
        except ValueError as err:
            raise UsageError(str(err)) from None
    try:
        distributed.share(cfg.batch_size, world)
    except ValueError as err:
        raise UsageError(f"--batch-size under torchrun: {err}") from None

    # every process has checked the command line before any joins the group (and so before any writes)
    distributed.init(world, device)
    torch.manual_seed(args.seed)  # the same initial weights in every process
    with distributed.main_first(world):  # a download happens once
        data, labels, model, spec = SETUPS[args.kind](args)
    if saved is not None:
        # mnist's --n-data beyond the 60,000 digits means all of them: compare what the run would train on
        _refuse_changes(saved, {**asked, **({"n_data": len(data)} if "n_data" in asked else {})})
    if "min_snr_gamma" in asked and cfg.weighting != "min_snr":
        raise UsageError(f"--min-snr-gamma does not apply to --weighting {cfg.weighting}: it is min_snr's gamma")
    sched = Schedule.get(args.schedule, args.T)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the shapes never change: time the convolution kernels once
    try:
        trainer = Trainer(model, sched, data, cfg, labels=labels, device=device, model_spec=spec, compile=args.compile)
        if state is not None:
            trainer.load_state_dict(state)
    except ValueError as err:
        raise UsageError(f"--resume: {err}" if state is not None else str(err)) from None
    if state is not None:
        say(f"resumed {ckpt} at step {trainer.step}")
        if trainer.step >= cfg.steps:
            say(f"{ckpt} has run all its {cfg.steps} steps: nothing to do (a longer run is a new run, another --out)")
            return 0
    n_params = sum(p.numel() for p in model.parameters())
    where = f"{trainer.device}"
    if world.launched:
        import torch.distributed as dist

        where = f"{world.size} process(es) over {dist.get_backend()}, each on {device.type}"
    say(
        f"training {spec['kind']} ({n_params:,} parameters) on {args.kind} for {cfg.steps} steps "
        f"on {where}{' with bf16 autocast' if trainer.autocast else ''}; checkpoint: {ckpt}, log: {out / 'log.jsonl'}"
    )
    t0 = time.perf_counter()
    try:
        trainer.run(
            progress=not args.quiet,
            checkpoint=ckpt,
            checkpoint_every=args.checkpoint_every,
            log=out / "log.jsonl",
            log_every=args.log_every,
        )
    except FloatingPointError as e:  # diverged (e.g. too high an --lr): the last checkpoint, if any, is kept
        raise SystemExit(f"train: {e}") from None
    say(
        f"done in {time.perf_counter() - t0:.1f} s; final loss (mean of last 100 steps) "
        f"{sum(trainer.losses[-100:]) / len(trainer.losses[-100:]):.4f}"
    )
    return 0


def _draw_samples(model, sched, spec, n, args, device, labels=None, guidance=0.0, seed=None, generator=None):
    """n samples by args.sampler from seed (default args.seed), or from ``generator`` (which goes on where the
    previous batch left it); labels (n,) make a conditional model draw those classes, with CFG scale guidance."""
    from .checkpoint import model_config, sample_shape
    from .samplers import ddim_sample, ddpm_sample

    shape = (n, *sample_shape(spec))
    g = generator if generator is not None else torch.Generator().manual_seed(args.seed if seed is None else seed)
    clip = spec["kind"] == "unet"  # images live in [-1, 1]; 2D toy data does not
    if labels is not None:
        from .guidance import cfg_model

        # scale 0 is the plain conditional model, so guided and unguided draws share this one path
        model = cfg_model(model, labels.to(device), guidance, null_label=model_config(spec).num_classes)
    if args.sampler == "ddpm":
        return ddpm_sample(model, sched, shape, generator=g, device=device, var_type=args.var_type, clip_x0=clip)
    return ddim_sample(
        model,
        sched,
        shape,
        steps=args.steps,
        eta=args.eta,
        spacing=args.spacing,
        generator=g,
        device=device,
        clip_x0=clip,
    )


SAMPLE_SUFFIXES = (".png", ".npy", ".pt")
# What a plain `sample` draws, per model kind, when --n / --sampler are not given. 2-D points are cheap;
# 1000 ancestral U-Net steps for thousands of digits take hours on a CPU, so images get a few, by DDIM.
SAMPLE_DEFAULTS = {"mlp": dict(n=2000, sampler="ddpm"), "unet": dict(n=64, sampler="ddim")}
DDIM_STEPS = 50  # default --steps of `sample` (capped at the model's T)
# Default --spacing of DDIM per model kind, measured by benchmarks/bench_ddim_spacing.py and the MNIST model card: on
# all four 2-D datasets 50 quadratic steps came closer to the data than 50 leading ones on both distances (moons,
# seeds 0-2: energy distance 1.40/1.27/1.73 against 1.52/1.38/1.93 times the noise floor); on MNIST leading
# was better on every axis (grey pixels 0.077 against 0.111 at n = 256).
DDIM_SPACING = {"mlp": "quadratic", "unet": "leading"}


def _check_sample_flags(args) -> None:
    """Refuse flags that are wrong whatever the checkpoint, before it is even loaded."""
    if args.out is not None and Path(args.out).suffix.lower() not in SAMPLE_SUFFIXES:
        raise UsageError(
            f"--out must end in .png (a picture), .npy (the raw samples) or .pt (samples, labels and "
            f"settings), got {args.out!r}"
        )


def _load(checkpoint, device):
    """load_model, a missing or foreign file reported as a usage error (no traceback)."""
    from .checkpoint import load_model

    try:
        return load_model(checkpoint, device=device)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"--checkpoint: {err}") from None


def _fill_sample_defaults(args, kind: str, T: int) -> None:
    """Fill in the sampling flags the user left out, by model kind; refuse those the sampler does not use, and
    --steps beyond T."""
    default_sampler = args.sampler is None
    for key, value in SAMPLE_DEFAULTS[kind].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    how = f" (the default for {'2-D models' if kind == 'mlp' else 'images'})" if default_sampler else ""
    if args.sampler == "ddpm":
        _refuse_given(
            args,
            ("steps", "eta", "spacing"),
            f"to --sampler ddpm{how}, which runs all T steps with no eta: they are for --sampler ddim",
        )
    else:
        _refuse_given(args, ("var_type",), f"to --sampler ddim{how}: its variance is set by --eta")
    if args.steps is None:
        args.steps = min(DDIM_STEPS, T)
    if args.eta is None:
        args.eta = 0.0
    if args.spacing is None:
        args.spacing = DDIM_SPACING[kind]
    if args.var_type is None:
        args.var_type = "fixed_small"
    if args.sampler == "ddim" and not 1 <= args.steps <= T:
        raise UsageError(f"--steps must be in 1..{T} (this model's T) for ddim, got {args.steps}")


def _sample_labels(arg, num_classes, n: int, seed: int, checkpoint) -> torch.Tensor | None:
    """The (n,) int64 labels asked for by --labels (None for an unconditional model)."""
    if num_classes is None:
        if arg is not None:
            raise UsageError(
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
        raise UsageError(f"--labels must be a class 0..{num_classes - 1} or 'uniform', got {arg!r}")
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
    steps = (
        f"{args.steps} DDIM steps ({args.spacing} spacing), eta {args.eta:g}"
        if args.sampler == "ddim"
        else f"{sched.T} steps"
    )
    if labels is None:
        return f"{args.n} samples by {args.sampler} ({steps}), unconditional"
    which = (
        f"labels uniform over 0..{num_classes - 1}"
        if (args.labels or "uniform").strip() == "uniform"
        else f"label {int(labels[0])}"
    )
    return f"{args.n} samples by {args.sampler} ({steps}), {which}, guidance {args.guidance:g}"


def cmd_sample(args) -> int:
    from .checkpoint import model_config

    _check_sample_flags(args)
    device = torch.device(args.device) if args.device else default_device()
    model, sched, state = _load_or_pretrained(args.checkpoint, device)
    spec = state["model_spec"]
    if spec["kind"] == "mlp":
        _one_thread_for_small_models()
    _fill_sample_defaults(args, spec["kind"], sched.T)
    num_classes = model_config(spec).num_classes
    labels = _sample_labels(args.labels, num_classes, args.n, args.seed, args.checkpoint)
    if args.guidance is not None and labels is None:
        raise UsageError(f"--guidance needs a class-conditional model, but {args.checkpoint} is unconditional")
    args.guidance = 0.0 if args.guidance is None else args.guidance
    out = Path(args.out or Path(args.checkpoint).with_name(f"samples_{args.sampler}.png"))
    t0 = time.perf_counter()
    x = _draw_samples(model, sched, spec, args.n, args, device, labels=labels, guidance=args.guidance).cpu()
    seconds = time.perf_counter() - t0
    ddim = args.sampler == "ddim"
    meta = {
        # a file, or the name of a pretrained model (mnist, ddpm-cifar10) that is not a file here
        "checkpoint": str(Path(args.checkpoint).resolve()) if Path(args.checkpoint).exists() else args.checkpoint,
        "sampler": args.sampler,
        "steps": args.steps if ddim else sched.T,
        "eta": args.eta if ddim else None,
        "spacing": args.spacing if ddim else None,
        "var_type": None if ddim else args.var_type,
        "guidance": args.guidance,
        "seed": args.seed,
        "n": args.n,
    }
    _write_samples(out, x, labels, meta, spec, args)
    print(f"{_describe(args, sched, labels, num_classes)}, in {seconds:.1f} s; wrote {out}")
    return 0


def _load_or_pretrained(checkpoint, device):
    """_load, or load_pretrained for a name of pretrained.PRETRAINED / HUB that is not a file here."""
    from .pretrained import HUB, PRETRAINED, HubUnavailableError, load_pretrained

    if checkpoint not in (*PRETRAINED, *HUB) or Path(checkpoint).exists():
        return _load(checkpoint, device)
    try:
        return load_pretrained(checkpoint, device=device)
    except (HubUnavailableError, ImportError, OSError, ValueError) as err:
        raise UsageError(f"--checkpoint {checkpoint}: {err}") from None


FID_BATCH = 250  # default --batch-size of `evaluate --fid`: samples per batch (and images per Inception pass)


def _evaluate_fid(model, sched, spec, args, device) -> int:
    """`evaluate --fid N [--is]`: FID (and IS) of N samples against the model's training set (fid.py)."""
    from . import fid
    from .checkpoint import model_config
    from .data.images import DatasetUnavailableError

    _refuse_given(args, ("n", "n_terms"), "with --fid: they set bits/dim; --fid N sets how many samples FID takes")
    dataset = spec.get("data", {}).get("kind")
    if dataset not in fid.DATASETS:
        raise UsageError(
            f"--fid needs a model of {' or '.join(fid.DATASETS)} (its real images are the reference), but "
            f"{args.checkpoint} models {dataset or 'unrecorded data'}"
        )
    _fill_sample_defaults(args, "unet", sched.T)
    n = args.n = args.fid
    num_classes = model_config(spec).num_classes
    labels = _sample_labels(None, num_classes, n, args.seed, args.checkpoint)  # a conditional model: uniform
    done = 0

    def sample_fn(b, g):
        nonlocal done
        y = None if labels is None else labels[done : done + b]
        done += b
        return _draw_samples(model, sched, spec, b, args, device, labels=y, generator=g)

    t0 = time.perf_counter()
    try:
        real = fid.real_stats(dataset, device=device)
        r = fid.fid_is(
            sample_fn,
            n,
            real=real,
            inception_score=bool(getattr(args, "is")),  # "is" is a keyword: no args.is
            batch=args.batch_size or FID_BATCH,
            seed=args.seed,
            amp=args.amp or "auto",
            device=device,
        )
    except (DatasetUnavailableError, fid.InceptionUnavailableError, ImportError) as err:
        raise UsageError(f"--fid: {err}") from None
    args.labels, args.guidance = None, 0.0  # what _describe reads: evaluate draws uniform labels, unguided
    bf16 = " with bf16 autocast" if r["autocast"] else ""
    seconds = time.perf_counter() - t0
    print(f"{_describe(args, sched, labels, num_classes)}{bf16}; with the features, in {seconds:.1f} s")
    print(f"FID {r['fid']:.2f} at n = {n} samples, against {r['n_real']:,} real {dataset} training images")
    if r["is_mean"] is not None:
        print(f"IS {r['is_mean']:.2f} +- {r['is_std']:.2f} at n = {n} samples ({fid.IS_SPLITS} splits)")
    if n < fid.FID_N:
        print(
            f"FID at n = {n} samples is biased upward relative to the usual n = {fid.FID_N:,} (and IS moves with n "
            "too): numbers at different n are not comparable"
        )
    return 0


def cmd_evaluate(args) -> int:
    device = torch.device(args.device) if args.device else default_device()
    model, sched, state = _load_or_pretrained(args.checkpoint, device)
    spec = state["model_spec"]
    if spec["kind"] == "mlp":
        why = f"to a 2-D model ({args.checkpoint}): FID and IS are for image models"
        _refuse_given(args, ("fid", "is", "batch_size", "amp"), why)
        _refuse_given(args, ("n_terms",), f"to a 2-D model ({args.checkpoint}): it sets bits/dim, for image models")
        _one_thread_for_small_models()
        from .data import checkerboard_off_fraction, toy2d
        from .metrics import compare_to_data

        _fill_sample_defaults(args, "mlp", sched.T)
        sets = 5 if args.sets is None else args.sets
        references = 5 if args.references is None else args.references
        # several independent sets of samples: one set's luck (e.g. its split between the moons) moves the
        # distances as much as the model's errors do, and more reference draws cannot average that away
        xs = [
            _draw_samples(model, sched, spec, args.n, args, device, seed=args.seed + 100 * k).cpu() for k in range(sets)
        ]
        name = spec["data"]["name"]
        r = compare_to_data(xs, lambda n, g: toy2d(name, n, g), seed=args.seed, references=references)
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

    _refuse_given(args, ("sets", "references"), f"to an image model ({args.checkpoint}): they are for 2-D models")
    if args.fid is not None:
        return _evaluate_fid(model, sched, spec, args, device)
    _refuse_given(args, ("is", "batch_size", "amp"), "without --fid N: they set the FID run")
    _refuse_given(
        args,
        ("sampler", "steps", "eta", "spacing"),
        f"to an image model ({args.checkpoint}) without --fid: its bits/dim draws no samples",
    )
    T = sched.T
    if args.n_terms is not None and not min(2, T) <= args.n_terms <= T:
        raise UsageError(f"--n-terms must be in {min(2, T)}..{T} (this model's T) for bits/dim, got {args.n_terms}")
    var_type = "fixed_small" if args.var_type is None else args.var_type
    if spec.get("data", {}).get("kind") == "cifar10":  # bits/dim on the test images of the model's data
        from .data.images import DatasetUnavailableError, to_model_range
        from .fid import real_images

        try:
            x = to_model_range(real_images("cifar10", "test"))
        except DatasetUnavailableError as err:
            raise UsageError(f"bits/dim: {err}") from None
    else:
        x, _ = load_mnist(train=False)
    x = x[: 5000 if args.n is None else args.n].to(device)
    r = bits_per_dim(
        model,
        sched,
        x,
        var_type=var_type,
        n_terms=args.n_terms,
        generator=torch.Generator().manual_seed(args.seed),
    )
    terms = "all" if args.n_terms is None else args.n_terms
    print(
        f"bits/dim on {len(x)} test images ({terms} of {T} terms, var_type={var_type}): "
        f"{r['total'].mean():.3f} +- {r['se']:.3f} (standard error over the images and the drawn steps)"
    )
    return 0


RESUME_HELP = (
    "continue the run in --out exactly, to its saved --steps: options left out take its values; one given with "
    "another value is refused, --steps too (the lr's cosine decay is laid out over them)"
)


def build_parser() -> argparse.ArgumentParser:
    # default=None for every option whose default depends on something (the recipe, the model, a resumed run) or
    # that may not apply: None says "not given", and the commands fill in the defaults the help texts state
    p = _Parser(prog="python -m ddpm_tutor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model (progress bar, EMA, checkpoints, --resume)")
    t.add_argument("kind", choices=list(SETUPS))
    t.add_argument("--dataset", help="toy2d: moons (the default), swiss_roll, 8gaussians or checkerboard")
    t.add_argument("--out", help="run folder (default runs/<dataset> for toy2d, else runs/<kind>)")
    t.add_argument("--steps", type=POSITIVE_INT, help="optimiser steps in total (default: the recipe's)")
    t.add_argument("--batch-size", dest="batch_size", type=POSITIVE_INT, help="default: the recipe's")
    t.add_argument("--lr", type=POSITIVE_FINITE, help="peak learning rate (default: the recipe's)")
    t.add_argument("--schedule", choices=["linear", "cosine"], help="noise schedule (default linear)")
    t.add_argument("--T", type=POSITIVE_INT, help="diffusion steps (default 1000)")
    t.add_argument(
        "--n-data",
        dest="n_data",
        type=POSITIVE_INT,
        default=None,
        help="toy2d: points in the training set (default 50,000); mnist, cifar10: use only the first N images",
    )
    t.add_argument("--ema-decay", dest="ema_decay", type=ZERO_TO_BELOW_ONE, help="EMA decay of the weights, in [0, 1)")
    t.add_argument("--warmup", type=NON_NEGATIVE_INT, help="steps of learning-rate warmup (0: none)")
    t.add_argument("--amp", choices=AMP_MODES, help="bfloat16 autocast of the forward pass")
    t.add_argument("--weighting", choices=WEIGHTINGS, help="loss weighting over t (see losses.eps_weight)")
    t.add_argument(
        "--min-snr-gamma",
        dest="min_snr_gamma",
        type=POSITIVE_OR_INF,
        help="gamma of --weighting min_snr (default 5; inf: the eps error unweighted, L_simple)",
    )
    t.add_argument("--parameterization", choices=PARAMETERIZATIONS, help="what the network predicts")
    t.add_argument(
        "--p-small-t",
        dest="p_small_t",
        type=ZERO_TO_BELOW_ONE,
        help="probability of drawing t from the nearly clean steps (--small-t-frac) instead of all T, loss not "
        "reweighted (see losses.sample_t; default: the recipe's, 0 = uniform t)",
    )
    t.add_argument(
        "--small-t-frac",
        dest="small_t_frac",
        type=ABOVE_ZERO_TO_ONE,
        help="the nearly clean steps of --p-small-t: this share of the chain's first steps (default 0.05: 50 of 1000)",
    )
    t.add_argument(
        "--hidden",
        type=POSITIVE_INT,
        help="toy2d: MLP width (default 96: as good as 128 on two moons at about 60%% of the time per step)",
    )
    t.add_argument(
        "--conditional",
        action="store_true",
        default=None,
        help="mnist, cifar10: class-conditional with label dropout",
    )
    t.add_argument(
        "--dropout",
        type=ZERO_TO_BELOW_ONE,
        help="mnist, cifar10: dropout in the U-Net's residual blocks (default 0 for mnist, the paper's 0.1 for "
        "cifar10)",
    )
    t.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mnist, cifar10: random horizontal flips of the images (default: on for cifar10, as in the paper)",
    )
    t.add_argument(
        "--grad-clip",
        dest="grad_clip",
        type=NON_NEGATIVE_FINITE,
        help="max global gradient norm (default 1.0, the paper's; 0: no clipping)",
    )
    t.add_argument(
        "--checkpoint-every",
        dest="checkpoint_every",
        type=NON_NEGATIVE_INT,
        default=1000,
        help="save every N steps (default 1000; 0: only at the end)",
    )
    t.add_argument("--resume", action="store_true", help=RESUME_HELP)
    t.add_argument("--seed", type=SEED, help="default 0")
    t.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda when there is one, else cpu)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument(
        "--log-every",
        dest="log_every",
        type=POSITIVE_INT,
        default=100,
        help="every N steps the losses come from the device (to check them, move the bar, and add a line to "
        "<out>/log.jsonl: step, loss, lr, steps_per_s, elapsed_s); default 100",
    )
    t.add_argument("--compile", action="store_true", help="run the model through torch.compile (worth it on a GPU)")
    t.set_defaults(func=cmd_train, parser=t)
    for name, func, helptext in (
        (
            "sample",
            cmd_sample,
            "draw samples; write a PNG, the raw samples (.npy) or samples with labels and settings (.pt)",
        ),
        ("evaluate", cmd_evaluate, "2D: distances to data vs the noise floor; images: bits/dim"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument(
            "--checkpoint",
            required=True,
            help="a checkpoint file"
            + (", or mnist (shipped) or ddpm-cifar10 (Ho et al.'s)" if name == "evaluate" else ""),
        )
        if name == "sample":  # defaults by model kind, filled in once the checkpoint is loaded
            s.add_argument(
                "--n",
                type=POSITIVE_INT,
                default=None,
                help="number of samples (default: 2000 for 2-D models, 64 for images)",
            )
            s.add_argument(
                "--sampler",
                default=None,
                choices=["ddpm", "ddim"],
                help="default: ddpm for 2-D models; ddim for images, since ancestral sampling takes "
                "all T steps (T = 1000 unless trained with another --T: hours for thousands "
                "of digits on a CPU)",
            )
        else:
            s.add_argument(
                "--n",
                type=POSITIVE_INT,
                default=None,
                help="2-D: samples per set (default 2000); images: test images for bits/dim (default "
                "5000, or all there are)",
            )
            s.add_argument("--sampler", default=None, choices=["ddpm", "ddim"], help="2D: default ddpm")
        s.add_argument(
            "--steps",
            type=POSITIVE_INT,
            default=None,
            help=f"--sampler ddim only: DDIM steps (default {DDIM_STEPS}, or the model's T if smaller)",
        )
        s.add_argument(
            "--eta",
            type=ZERO_TO_ONE,
            help="--sampler ddim only: DDIM eta in [0, 1] (default 0, deterministic; 1 is DDPM-like)",
        )
        s.add_argument(
            "--spacing",
            choices=SPACINGS,
            help="--sampler ddim only: which steps DDIM visits (leading: every T/steps-th from 0, the default "
            "for images; quadratic: Song et al.'s CIFAR-10 spacing, dense at low noise, the default for 2-D "
            "models; trailing: from T-1 down)",
        )
        s.add_argument(
            "--var-type",
            dest="var_type",
            choices=["fixed_small", "fixed_large"],
            help="--sampler ddpm (and bits/dim) only: the reverse variance (default fixed_small)",
        )
        if name == "evaluate":
            s.add_argument(
                "--n-terms",
                dest="n_terms",
                type=POSITIVE_INT,
                default=None,
                help="images only: Monte Carlo terms of bits/dim (default: all T)",
            )
            s.add_argument(
                "--references",
                type=POSITIVE_INT,
                help="2D: independent data draws each sample set is compared with (default 5)",
            )
            s.add_argument(
                "--sets",
                type=POSITIVE_INT,
                help="2D: independent sets of samples (seeds --seed + 100 k) the distances are averaged over "
                "(default 5)",
            )
            s.add_argument(
                "--fid",
                type=_int_at_least(2),
                metavar="N",
                help="images: FID of N samples (by --sampler) against the model's training set (CIFAR-10 or MNIST), "
                "with torch-fidelity's InceptionV3 (weights download once); papers use N = 50,000",
            )
            s.add_argument(
                "--is",
                dest="is",  # not inception_score: refusals name an option by its dest (_flag)
                action="store_true",
                default=None,
                help="with --fid: the Inception Score of the same samples too",
            )
            s.add_argument(
                "--batch-size",
                dest="batch_size",
                type=POSITIVE_INT,
                help=f"with --fid: samples drawn at once (default {FID_BATCH})",
            )
            s.add_argument(
                "--amp",
                choices=AMP_MODES,
                help="with --fid: bf16 autocast of the sampling (default auto: where the device computes it natively)",
            )
        s.add_argument("--seed", type=SEED, default=0)
        s.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda when there is one, else cpu)")
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
                type=NON_NEGATIVE_FINITE,
                default=None,
                help="class-conditional models only: classifier-free guidance scale w >= 0 (Ho & Salimans 2022): "
                "eps = (1 + w) eps(x, y) - w eps(x, no label); 0 (the default) is the plain conditional model",
            )
        s.set_defaults(func=func, parser=s)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_device(args.device)
        return args.func(args)
    except UsageError as err:  # a command line that cannot run as asked: one line and status 2, as argparse does
        args.parser.error(str(err))


if __name__ == "__main__":
    sys.exit(main())
