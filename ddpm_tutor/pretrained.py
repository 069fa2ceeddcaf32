"""Trained models shipped with the package: small exports of training checkpoints.

A training checkpoint (``Trainer.save``) holds everything needed to resume: the weights, their EMA, the
optimiser's moments, the random state. To *use* a model only the EMA weights, the model spec and the
schedule are needed, which is what :func:`~ddpm_tutor.checkpoint.export_weights` keeps (plus the training
config, the loss curve and free-form notes). The result is still a ``"ddpm_tutor/1"`` checkpoint, read by the
one loader :func:`ddpm_tutor.checkpoint.load_model`.

    model, sched, meta = load_pretrained("mnist")   # the class-conditional MNIST U-Net (label 10 = null)
    model, sched, meta = load_pretrained("ddpm-cifar10")   # Ho et al.'s CIFAR-10 model (diffusers; a network once)

Each shipped file has a model card next to it (``checkpoints/<name>.md``) with the exact command that made it.
The paper's CIFAR-10 model is not shipped (143 MB): it comes from the Hugging Face hub (google/ddpm-cifar10-32)
through diffusers, is converted to our U-Net (:mod:`ddpm_tutor.models.convert`) and kept as an export under
CACHE_DIR, so that later loads need neither diffusers nor a network.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .checkpoint import FORMAT, CheckpointError, export_weights, load_model, save_checkpoint  # noqa: F401
from .models.convert import DDPM_CIFAR10_REPO, HubUnavailableError  # noqa: F401 - the error: importable from here

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
PRETRAINED = {"mnist": "mnist_unet.pt"}  # name -> file in CHECKPOINT_DIR
HUB = {"ddpm-cifar10": (DDPM_CIFAR10_REPO, "cifar10")}  # name -> (default hub id, the data it models)
# where converted hub models (and fid.py's real statistics) are kept; DDPM_TUTOR_CACHE overrides it
CACHE_DIR = Path(os.environ.get("DDPM_TUTOR_CACHE", Path.home() / ".cache" / "ddpm_tutor"))


def pretrained_path(name: str = "mnist") -> Path:
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; available: {', '.join([*PRETRAINED, *HUB])}")
    path = CHECKPOINT_DIR / PRETRAINED[name]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall ddpm_tutor (the file ships with the package)")
    return path


def load_pretrained(name: str = "mnist", device=None, *, repo_id: str | os.PathLike | None = None, cache: bool = True):
    """(model, sched, meta): the EMA model in eval mode (a Denoiser, as load_model returns it), its schedule, and
    the rest of the file (model_spec, train_config, step, losses, notes).

    "mnist" is shipped with the package. "ddpm-cifar10" is converted from diffusers
    (:func:`ddpm_tutor.models.convert.load_diffusers_ddpm`): ``repo_id`` is a hub id (default
    google/ddpm-cifar10-32) or a local folder of the same layout. With ``cache`` a hub id's conversion is kept
    under CACHE_DIR and read from there next time (a kept file that fails its checks is converted again); a local
    folder, which may change, is converted each time. Offline with neither, a HubUnavailableError says so.
    """
    if name not in HUB:
        if repo_id is not None:
            raise ValueError(f"repo_id applies to the hub models {', '.join(HUB)}, not to the shipped {name!r}")
        return _load(pretrained_path(name), device)
    repo_id = HUB[name][0] if repo_id is None else repo_id
    kept = hub_cache_path(name, repo_id) if cache and not Path(repo_id).expanduser().is_dir() else None
    if kept is not None and kept.is_file():
        try:
            return _load(kept, device)
        except CheckpointError:  # cut short or damaged: convert again
            pass
    state = hub_export_state(name, repo_id)
    if kept is not None:
        return _load(save_checkpoint(state, kept), device)
    with tempfile.TemporaryDirectory(prefix="ddpm_tutor_") as tmp:  # the same file and loader as a kept one
        return _load(save_checkpoint(state, Path(tmp) / "export.pt"), device)


def _load(path: Path, device):
    model, sched, state = load_model(path, device=device)
    return model, sched, {k: v for k, v in state.items() if k != "ema"}


def hub_cache_path(name: str, repo_id: str | os.PathLike) -> Path:
    """Where the conversion of hub model ``repo_id`` (loaded as ``name``) is kept."""
    return CACHE_DIR / "pretrained" / f"{name}--{str(repo_id).replace('/', '--')}.pt"


def hub_export_state(name: str, repo_id: str | os.PathLike) -> dict:
    """The export checkpoint (see checkpoint.export_weights) of diffusers model ``repo_id`` converted to our U-Net."""
    from .models.convert import load_diffusers_ddpm

    d = load_diffusers_ddpm(repo_id)
    return {
        "format": FORMAT,
        "kind": "export",
        "model_spec": {"kind": "unet", "config": d["unet_config"].to_dict(), "data": {"kind": HUB[name][1]}},
        "schedule": {"name": d["schedule"].name, "beta": d["schedule"].beta},
        # the released weights are the EMA weights (Ho et al. 2020, appendix B: decay 0.9999); they go under the
        # key prefix of an AveragedModel's state dict, where load_model looks for them
        "ema": {**{f"module.{k}": v for k, v in d["state_dict"].items()}, "n_averaged": torch.tensor(0)},
        "train_config": {"parameterization": d["parameterization"]},
        "step": 0,
        "losses": torch.zeros(0),
        "notes": d["notes"],
    }


def quality_results(name: str = "mnist") -> dict:
    """The measured sample quality of a shipped model, as ``benchmarks/bench_vs_diffusers.py --export`` saved
    it: {"ours" | "diffusers_ema" | "diffusers_raw" | "real": {sampler or "bpd": numbers}, "_meta": {...}}.
    The model card's table and the book's quoted numbers come from this file."""
    import json

    path = pretrained_path(name).with_name(Path(PRETRAINED[name]).stem + "_quality.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall ddpm_tutor (the file ships with the package)")
    return json.loads(path.read_text())
