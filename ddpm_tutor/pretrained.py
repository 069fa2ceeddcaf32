"""Trained models shipped with the package: small exports of training checkpoints.

A training checkpoint (``Trainer.save``) holds everything needed to resume: the weights, their EMA, the
optimiser's moments, the random state. To *use* a model only the EMA weights, the model spec and the
schedule are needed, which is what :func:`~ddpm_tutor.checkpoint.export_weights` keeps (plus the training
config, the loss curve and free-form notes). The result is still a ``"ddpm_tutor/1"`` checkpoint, read by the
one loader :func:`ddpm_tutor.checkpoint.load_model`.

    model, sched, meta = load_pretrained("mnist")   # the class-conditional MNIST U-Net (label 10 = null)

Each shipped file has a model card next to it (``checkpoints/<name>.md``) with the exact command that made it.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import export_weights, load_model  # noqa: F401 - export_weights: importable from here too

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
PRETRAINED = {"mnist": "mnist_unet.pt"}  # name -> file in CHECKPOINT_DIR


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
