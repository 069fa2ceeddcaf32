"""Checkpoints: their format, atomic writes, weights_only reads, and the models rebuilt from them.

Every file the package writes for a diffusion model is a dict with "format": FORMAT and

- "model_spec": {"kind": "mlp" | "unet", "config": the model config as plain types, "data": what it was
  trained on}, from which :func:`build_model` rebuilds the network;
- "schedule": {"name", "beta" (T,)};
- "ema": the state dict of ``torch.optim.swa_utils.AveragedModel`` (the EMA weights under EMA_PREFIX,
  plus its "n_averaged" counter): the weights to sample from;
- "train_config" (TrainConfig as a dict; its "parameterization" says what the network predicts), "step",
  "losses".

A training checkpoint (``Trainer.save``) adds what resuming needs ("model", "opt", "lr_sched",
"generator", "torch_rng"); an export (:func:`export_weights`) drops that and adds "notes". A digit classifier
(:mod:`ddpm_tutor.classifier`) is a dict with "format": CLASSIFIER_FORMAT, "config", "state_dict" and "meta".
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from .device import default_device
from .models.mlp import MLPConfig, MLPDenoiser
from .models.unet import UNet, UNetConfig
from .schedules import Schedule

FORMAT = "ddpm_tutor/1"  # the "format" entry of every checkpoint the package writes (training and exported)
CLASSIFIER_FORMAT = "ddpm_tutor/classifier/1"  # the "format" entry of a digit classifier (classifier.save_classifier)
KINDS = {FORMAT: "checkpoint", CLASSIFIER_FORMAT: "digit classifier"}  # what each format holds, for messages
# AveragedModel keeps its averaged copy as the submodule ``module``, so the EMA state dict's keys carry this prefix
EMA_PREFIX = "module."
MODEL_KEYS = ("model_spec", "schedule", "ema")  # what every checkpoint holds: enough to rebuild the EMA model
# what a training checkpoint adds, to resume bit-for-bit
RESUME_KEYS = MODEL_KEYS + ("model", "opt", "lr_sched", "generator", "torch_rng", "step", "losses")
MODELS = {"mlp": (MLPConfig, MLPDenoiser), "unet": (UNetConfig, UNet)}  # model_spec "kind" -> (config, network)


def check_format(
    state: dict, source: str | os.PathLike = "the checkpoint", keys: tuple[str, ...] = (), fmt: str = FORMAT
) -> dict:
    """Return ``state`` if its "format" is ``fmt`` (FORMAT or CLASSIFIER_FORMAT) and it holds ``keys``; else a
    clear ValueError."""
    if not isinstance(state, dict) or state.get("format") != fmt:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{source} is not a ddpm_tutor {KINDS[fmt]}: expected format {fmt!r}, found {found!r}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(
            f"{source} is a ddpm_tutor checkpoint without {', '.join(map(repr, missing))}: "
            f"expected the keys {', '.join(map(repr, keys))}"
        )
    return state


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temp file next to ``path``, then rename it to ``path``: a crash or Ctrl-C
    never leaves half a file, and an existing file is replaced only by a complete one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)  # mkstemp makes the file private (0600); give it the mode a plain open() would
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(obj: dict, path: str | os.PathLike) -> Path:
    """Write ``obj`` (tensors, dicts, lists, numbers, strings) to ``path`` atomically (see write_atomic)."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``: plain data only, no code runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    obj = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a ddpm_tutor checkpoint (expected a dict, got {type(obj).__name__})")
    return obj


def read_checkpoint(path: str | os.PathLike, keys: tuple[str, ...] = MODEL_KEYS) -> dict:
    """:func:`load_checkpoint`, then :func:`check_format`: a ddpm_tutor checkpoint that holds ``keys``."""
    return check_format(load_checkpoint(path), path, keys)


def model_config(spec: dict):
    """The config dataclass (MLPConfig or UNetConfig) of a model spec {"kind": ..., "config": {...}}."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind not in MODELS:
        raise ValueError(f"model_spec must be a dict whose kind is one of {tuple(MODELS)}, got kind {kind!r}")
    config_cls = MODELS[kind][0]
    try:
        return config_cls(**spec.get("config", {}))
    except TypeError as err:  # an unknown or missing field
        raise ValueError(f"model_spec's config does not fit {config_cls.__name__}: {err}") from err


def build_model(spec: dict) -> nn.Module:
    """Rebuild a network (freshly initialised) from its spec {"kind": "mlp" | "unet", "config": {...}}."""
    return MODELS[spec["kind"]][1](model_config(spec))


def model_spec_of(model: nn.Module) -> dict:
    """The spec {"kind", "config"} :func:`build_model` rebuilds ``model`` from ({} for a network it does not know)."""
    for kind, (_, net_cls) in MODELS.items():
        if type(model) is net_cls:
            return {"kind": kind, "config": model.config_dict()}
    return {}


def sample_shape(spec: dict) -> tuple[int, ...]:
    """The shape of one sample of the model ``spec`` describes: (data_dim,) for the MLP, (C, H, W) for the
    U-Net."""
    c = model_config(spec)
    return (c.data_dim,) if spec["kind"] == "mlp" else (c.in_channels, c.image_size, c.image_size)


def ema_weights(ema_state: dict) -> dict:
    """The model's state dict inside an AveragedModel's (the EMA_PREFIX keys, prefix removed)."""
    weights = {k[len(EMA_PREFIX) :]: v for k, v in ema_state.items() if k.startswith(EMA_PREFIX)}
    if not weights:
        raise ValueError(f"the checkpoint's EMA state holds no weights (no key starts with {EMA_PREFIX!r})")
    return weights


def schedule_of(state: dict) -> Schedule:
    """The noise schedule a checkpoint was trained under."""
    return Schedule(state["schedule"]["beta"], name=state["schedule"]["name"])


def load_model(
    path: str | os.PathLike, *, ema: bool = True, device=None, as_eps: bool = True
) -> tuple[nn.Module, Schedule, dict]:
    """Load a trained model (EMA weights by default) and its schedule from a checkpoint, in eval mode.

    Returns (model, sched, state), state the whole file. With ``as_eps`` (the default) the network comes
    wrapped in a :class:`~ddpm_tutor.diffusion.Denoiser` that knows what it predicts (eps, x0, v or the score)
    and its null label, and answers with eps_hat like every sampler expects; ``as_eps=False`` returns the bare
    network (its output is then ``state["train_config"]["parameterization"]``). ``ema=False`` needs a training
    checkpoint (the raw weights, "model"; an export keeps only the EMA).
    """
    state = read_checkpoint(path, MODEL_KEYS if ema else MODEL_KEYS + ("model",))
    model = build_model(state["model_spec"])
    model.load_state_dict(ema_weights(state["ema"]) if ema else state["model"])
    model.to(device or default_device()).eval()
    sched = schedule_of(state)
    parameterization = state.get("train_config", {}).get("parameterization", "eps")
    if as_eps:
        from .diffusion import Denoiser

        model = Denoiser(model, sched, parameterization).eval()
    return model, sched, state


def export_weights(
    trainer_checkpoint: str | os.PathLike, out_path: str | os.PathLike, *, notes: dict | None = None
) -> Path:
    """Keep what sampling needs from a training checkpoint: EMA weights, model spec, schedule, training
    config, step and loss curve (and ``notes``). Drops the raw weights, optimiser and random state."""
    if Path(out_path).resolve() == Path(trainer_checkpoint).resolve():
        # an export keeps no optimiser or raw weights: written over the training checkpoint, it ends the run
        raise ValueError(
            f"export_weights would overwrite the training checkpoint {trainer_checkpoint}: choose another out_path"
        )
    state = read_checkpoint(trainer_checkpoint)
    out = {
        "format": FORMAT,
        "model_spec": state["model_spec"],
        "schedule": state["schedule"],
        "ema": state["ema"],
        "train_config": state.get("train_config", {}),
        "step": int(state.get("step", 0)),
        "losses": torch.as_tensor(state.get("losses", []), dtype=torch.float32),
        "notes": dict(notes or {}),
    }
    return save_checkpoint(out, out_path)
