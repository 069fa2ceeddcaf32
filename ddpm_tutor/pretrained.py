"""Trained models shipped with the package: small exports of training checkpoints.

A training checkpoint (``Trainer.save``) holds everything needed to resume: the weights, their EMA, the
optimiser's moments, the random state. To *use* a model only the EMA weights, the model spec and the
schedule are needed, which is what :func:`export_weights` keeps (plus the training config, the loss curve
and free-form notes). The result is still a ``"ddpm_tutor/1"`` checkpoint, so
:func:`ddpm_tutor.train.load_model` reads it too.

    model, sched, meta = load_pretrained("mnist")   # the class-conditional MNIST U-Net (label 10 = null)

Each shipped file has a model card next to it (``checkpoints/<name>.md``) with the exact command that made it.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoint import FORMAT, check_format, load_checkpoint, save_checkpoint

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
PRETRAINED = {"mnist": "mnist_unet.pt"}  # name -> file in CHECKPOINT_DIR


def export_weights(trainer_checkpoint: str | os.PathLike, out_path: str | os.PathLike, *,
                   notes: dict | None = None) -> Path:
    """Keep what sampling needs from a training checkpoint: EMA weights, model spec, schedule, training
    config, step and loss curve (and ``notes``). Drops the raw weights, optimiser and random state."""
    state = check_format(load_checkpoint(trainer_checkpoint), trainer_checkpoint)
    ema = {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in state["ema"].items()}
    out = {
        "format": FORMAT,
        "model_spec": state["model_spec"],
        "schedule": state["schedule"],
        "ema": ema,
        "train_config": state.get("train_config", {}),
        "step": int(state.get("step", 0)),
        "losses": torch.tensor(state.get("losses", []), dtype=torch.float32),
        "notes": dict(notes or {}),
    }
    return save_checkpoint(out, out_path)


def pretrained_path(name: str = "mnist") -> Path:
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; available: {', '.join(PRETRAINED)}")
    path = CHECKPOINT_DIR / PRETRAINED[name]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall ddpm_tutor (the file ships with the package)")
    return path


def load_pretrained(name: str = "mnist", device=None):
    """(model, sched, meta): the shipped EMA model in eval mode, its schedule, and the rest of the file
    (model_spec, train_config, step, losses, notes)."""
    from .train import load_model
    model, sched, state = load_model(pretrained_path(name), device=device)
    meta = {k: v for k, v in state.items() if k != "ema"}
    return model, sched, meta


def quality_results(name: str = "mnist") -> dict:
    """The measured sample quality of a shipped model, as ``benchmarks/bench_vs_diffusers.py --export`` saved
    it: {"ours" | "diffusers_ema" | "diffusers_raw" | "real": {sampler or "bpd": numbers}, "_meta": {...}}.
    The model card's table and the book's quoted numbers come from this file."""
    import json
    path = pretrained_path(name).with_name(Path(PRETRAINED[name]).stem + "_quality.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall ddpm_tutor (the file ships with the package)")
    return json.loads(path.read_text())
