"""Weights of diffusers' UNet2DModel (the released google/ddpm-cifar10-32 layout) into our `UNet`.

The released model is the paper's CIFAR-10 network converted from the original TensorFlow checkpoint; its
diffusers configuration (config.json of google/ddpm-cifar10-32, defaults from diffusers' UNet2DModel) is
`DDPM_CIFAR10_DIFFUSERS_CONFIG`. Only the architecture family our U-Net implements is accepted; anything
else raises a ValueError naming the setting. `load_diffusers_ddpm` reads a whole model (UNet2DModel and its
DDPMScheduler config) from the hub or a local folder: our U-Net's weights, Schedule and parameterisation.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..schedules import Schedule
from .unet import UNet, UNetConfig

DDPM_CIFAR10_REPO = "google/ddpm-cifar10-32"

# The released model's UNet2DModel arguments. Attention sits at 16x16: down level 1 (32 -> 16) and, since
# the up path runs 4 -> 8 -> 16 -> 32, up level 2. Dropout is not in the released config (diffusers' default 0.0).
DDPM_CIFAR10_DIFFUSERS_CONFIG: dict = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    center_input_sample=False,
    time_embedding_type="positional",
    flip_sin_to_cos=False,  # [sin, cos] order, as the original get_timestep_embedding
    freq_shift=1,  # frequencies 10000^(-k/(half-1)), as the original
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    mid_block_scale_factor=1,
    downsample_padding=0,  # pad (0, 1, 0, 1) then a stride-2 conv: TensorFlow's SAME padding
    act_fn="silu",
    attention_head_dim=None,  # one head of all channels
    norm_num_groups=32,
    norm_eps=1e-6,
    resnet_time_scale_shift="default",
    add_attention=True,
    dropout=0.0,
)

# Settings our U-Net hard-codes, and the diffusers value they correspond to (None: any of the listed values).
_REQUIRED = {
    "center_input_sample": (False,),
    "time_embedding_type": ("positional",),
    "flip_sin_to_cos": (False,),
    "freq_shift": (1,),
    "mid_block_scale_factor": (1,),
    "downsample_padding": (0,),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "mid_block_type": ("UNetMidBlock2D",),
    "act_fn": ("silu", "swish"),
    "norm_eps": (1e-6,),
    "resnet_time_scale_shift": ("default",),
    "add_attention": (True,),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "attn_norm_num_groups": (None,),
}


def config_from_diffusers(dcfg: Mapping[str, Any]) -> UNetConfig:
    """Our UNetConfig for a diffusers UNet2DModel config; ValueError for a setting our U-Net does not implement."""
    cfg = {**DDPM_CIFAR10_DIFFUSERS_CONFIG, **dict(dcfg)}
    for key, allowed in _REQUIRED.items():
        if key in cfg and cfg[key] not in allowed:
            raise ValueError(f"diffusers config {key}={cfg[key]!r} is not supported: expected one of {allowed}")
    boc = tuple(int(c) for c in cfg["block_out_channels"])
    ch = boc[0]
    if any(c % ch for c in boc):
        raise ValueError(f"block_out_channels must be multiples of the first, got {boc}")
    if cfg.get("time_embedding_dim") not in (None, 4 * ch):
        raise ValueError(f"time_embedding_dim must be None or 4 * {ch}, got {cfg['time_embedding_dim']}")
    size = cfg["sample_size"]
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ValueError(f"only square images are supported, got sample_size={size}")
        size = size[0]
    size = int(size)
    n = len(boc)
    down, up = tuple(cfg["down_block_types"]), tuple(cfg["up_block_types"])
    if (
        len(down) != n
        or len(up) != n
        or set(down) - {"DownBlock2D", "AttnDownBlock2D"}
        or set(up) - {"UpBlock2D", "AttnUpBlock2D"}
    ):
        raise ValueError(
            f"expected {n} DownBlock2D/AttnDownBlock2D and {n} UpBlock2D/AttnUpBlock2D blocks, got {down} and {up}"
        )
    attn_levels = [i for i, b in enumerate(down) if b == "AttnDownBlock2D"]
    # our attention is per resolution, so the up path must mirror the down path
    mirrored = tuple("AttnUpBlock2D" if (n - 1 - i) in attn_levels else "UpBlock2D" for i in range(n))
    if up != mirrored:
        raise ValueError(f"up_block_types must mirror down_block_types {down}: expected {mirrored}, got {up}")
    head_dim = cfg.get("attention_head_dim")
    for i in attn_levels + [n - 1]:  # the middle block's attention has boc[-1] channels
        if head_dim not in (None, boc[i]):
            raise ValueError(
                f"only single-head attention is supported: attention_head_dim must be None or {boc[i]}, got {head_dim}"
            )
    return UNetConfig(
        image_size=size,
        in_channels=int(cfg["in_channels"]),
        out_channels=int(cfg["out_channels"]),
        ch=ch,
        ch_mult=tuple(c // ch for c in boc),
        num_res_blocks=int(cfg["layers_per_block"]),
        attn_resolutions=tuple(size // 2**i for i in attn_levels),
        dropout=float(cfg.get("dropout", 0.0)),
        num_groups=int(cfg["norm_num_groups"]),
    )


# diffusers name -> ours, inside a residual block / an attention block
_RES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "time_emb_proj": "temb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "skip",
}
_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_TOP = {
    "conv_in": "conv_in",
    "conv_norm_out": "norm_out",
    "conv_out": "conv_out",
    "time_embedding.linear_1": "time_mlp.0",
    "time_embedding.linear_2": "time_mlp.2",
}


def _rename(key: str) -> str:
    """Our parameter name for one of diffusers' UNet2DModel names (KeyError if it has no counterpart)."""
    module, _, leaf = key.rpartition(".")
    if module in _TOP:
        return f"{_TOP[module]}.{leaf}"
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", module)
    if m:
        path, i, kind, j, sub = m.groups()
        table, ours = (_RES, "res") if kind == "resnets" else (_ATTN, "attn")
        return f"{path}.{i}.{ours}.{j}.{table[sub]}.{leaf}"
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(?:downsamplers|upsamplers)\.0\.conv", module)
    if m:
        return f"{m.group(1)}.{m.group(2)}.resample.conv.{leaf}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", module)
    if m:
        kind, j, sub = m.groups()
        if kind == "resnets":
            return f"mid_res{int(j) + 1}.{_RES[sub]}.{leaf}"
        return f"mid_attn.{_ATTN[sub]}.{leaf}"
    raise KeyError(key)


def unet_from_diffusers(source, config: Mapping[str, Any] | None = None) -> tuple[UNetConfig, dict]:
    """Convert a diffusers UNet2DModel (or its state dict) to (UNetConfig, state dict of our `UNet`).

    source: a UNet2DModel (its own config is used) or a state dict, with `config` its UNet2DModel arguments
    (default: the released CIFAR-10 model's, DDPM_CIFAR10_DIFFUSERS_CONFIG). Only names change; every
    tensor keeps its shape and values. Load with
    `UNet(cfg).load_state_dict(sd)` (strict: every weight must be accounted for).
    """
    if hasattr(source, "state_dict") and hasattr(source, "config"):
        dcfg = dict(source.config) if config is None else dict(config)
        sd = source.state_dict()
    elif isinstance(source, Mapping):
        dcfg = dict(DDPM_CIFAR10_DIFFUSERS_CONFIG if config is None else config)
        sd = source
    else:
        raise ValueError(f"source must be a diffusers UNet2DModel or a state dict, got {type(source).__name__}")
    ucfg = config_from_diffusers(dcfg)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        ours = UNet(ucfg).state_dict()
    out = {}
    for key, value in sd.items():
        try:
            name = _rename(key)
        except KeyError:
            raise ValueError(f"diffusers weight {key!r} has no counterpart in our UNet") from None
        if name not in ours:
            raise ValueError(f"diffusers weight {key!r} maps to {name!r}, which our UNet for {ucfg} lacks")
        if value.shape != ours[name].shape:
            raise ValueError(
                f"diffusers weight {key!r} has shape {tuple(value.shape)}, expected "
                f"{tuple(ours[name].shape)} for our {name!r}"
            )
        out[name] = value.detach().clone()
    missing = sorted(set(ours) - set(out))
    if missing:
        raise ValueError(f"the diffusers weights lack {len(missing)} of ours, e.g. {missing[:3]}")
    return ucfg, out


def load_ddpm_cifar10_pretrained(
    repo_id: str = DDPM_CIFAR10_REPO, device: str | torch.device = "cpu", **from_pretrained_kwargs
) -> UNet:
    """The released DDPM CIFAR-10 weights (Ho et al. 2020, via the Hugging Face hub) in our UNet, in eval mode.

    Needs a network (Colab) and the `diffusers` package; downloads about 143 MB once. Never used in tests.
    """
    try:
        from diffusers import UNet2DModel
    except ImportError as e:  # diffusers is a test/book requirement, not a runtime dependency
        raise ImportError("loading the released weights needs diffusers: pip install diffusers") from e
    source = UNet2DModel.from_pretrained(repo_id, **from_pretrained_kwargs)
    cfg, sd = unet_from_diffusers(source)
    model = UNet(cfg)
    model.load_state_dict(sd, strict=True)
    return model.to(device).eval()


# diffusers' DDPMScheduler prediction_type -> our parameterization (diffusion.PARAMETERIZATIONS)
_PREDICTION = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def schedule_from_diffusers(scfg: Mapping[str, Any]) -> tuple[Schedule, str]:
    """(our Schedule, our parameterization) for a diffusers DDPMScheduler config (its scheduler_config.json).

    beta_schedule "linear" is Schedule.linear(T, beta_start, beta_end) in float64 (diffusers rounds it to float32),
    "squaredcos_cap_v2" Schedule.cosine(T), trained_betas the table itself. A setting our Schedule cannot
    represent (another beta_schedule, rescale_betas_zero_snr's bar alpha_T = 0) or a prediction_type our
    Denoiser does not know raises a ValueError naming it.
    """
    scfg = dict(scfg)
    T = int(scfg.get("num_train_timesteps", 1000))
    prediction = scfg.get("prediction_type", "epsilon")
    if prediction not in _PREDICTION:
        raise ValueError(
            f"scheduler prediction_type={prediction!r} is not supported: expected one of {tuple(_PREDICTION)}"
        )
    if scfg.get("rescale_betas_zero_snr"):
        raise ValueError(
            "scheduler rescale_betas_zero_snr=True is not supported: it sets bar alpha_T = 0 (infinite noise)"
        )
    kind = scfg.get("beta_schedule", "linear")
    if scfg.get("trained_betas") is not None:
        sched = Schedule(torch.as_tensor(scfg["trained_betas"], dtype=torch.float64), name="trained")
    elif kind == "linear":
        sched = Schedule.linear(T, float(scfg.get("beta_start", 1e-4)), float(scfg.get("beta_end", 0.02)))
    elif kind == "squaredcos_cap_v2":
        sched = Schedule.cosine(T)
    else:
        raise ValueError(
            f"scheduler beta_schedule={kind!r} is not supported: expected one of"
            f" 'linear', 'squaredcos_cap_v2' or trained_betas"
        )
    if sched.T != T:
        raise ValueError(f"scheduler trained_betas has {sched.T} entries, but num_train_timesteps={T}")
    return sched, _PREDICTION[prediction]


def _subfolder(source: str, name: str, filename: str) -> str | None:
    """Where ``filename`` lies in a local diffusers folder: its root (None) or the pipeline's ``name`` subfolder.
    A hub id: the root, the layout of the google/ddpm-* repos."""
    root = Path(source).expanduser()
    if root.is_dir() and not (root / filename).is_file() and (root / name / filename).is_file():
        return name
    return None


def _offline() -> bool:
    """Whether the Hugging Face hub may not be reached: HF_HUB_OFFLINE set now or when huggingface_hub loaded."""
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


class HubUnavailableError(RuntimeError):
    """A Hugging Face hub model that is neither a local folder, nor in the local cache, nor downloadable here."""


def _plain(cfg: Mapping[str, Any]) -> dict:
    """The entries of a diffusers config that a weights_only checkpoint holds (numbers, strings, their lists)."""
    scalar = (type(None), bool, int, float, str)
    out = {}
    for k, v in dict(cfg).items():
        if isinstance(v, scalar):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, scalar) for x in v):
            out[k] = list(v)
    return out


def load_diffusers_ddpm(source: str | os.PathLike = DDPM_CIFAR10_REPO) -> dict:
    """A diffusers DDPM (UNet2DModel + DDPMScheduler) from a hub id or a local folder, as our pieces:
    {"unet_config": UNetConfig, "state_dict": ours, "schedule": Schedule, "parameterization": str, "notes": dict}.

    The folder holds config.json + weights and scheduler_config.json, at its root (google/ddpm-cifar10-32) or in
    unet/ and scheduler/ (a saved pipeline). Without a scheduler config the paper's Schedule.linear(1000) is used.
    A hub id needs a network the first time (huggingface_hub caches it); offline and not cached, this raises a
    HubUnavailableError that says so.
    """
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError as e:  # diffusers is a test/book requirement, not a runtime dependency
        raise ImportError("loading a diffusers model needs diffusers: pip install diffusers") from e
    local = Path(source).expanduser().is_dir()
    source = str(Path(source).expanduser()) if local else str(source)
    if not local and source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"no diffusers model folder at {source}")
    offline = not local and _offline()
    if offline:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(source, "config.json"), str):
            raise HubUnavailableError(
                f"{source!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: loading it needs a network "
                "once (e.g. Colab); after that it loads offline"
            )
    try:
        unet = UNet2DModel.from_pretrained(
            source,
            subfolder=_subfolder(source, "unet", "config.json"),
            local_files_only=offline,
            low_cpu_mem_usage=False,  # without the accelerate package diffusers says it falls back to this
        )
    except OSError as e:  # diffusers reports a failed download as a missing file: say what it needs
        if local:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise HubUnavailableError(
            f"could not load {source!r} from the Hugging Face hub ({first}): it is not in the local cache, and "
            "downloading it needs a network (e.g. Colab; the released CIFAR-10 model is about 143 MB, once)"
        ) from None
    ucfg, sd = unet_from_diffusers(unet)
    sub = _subfolder(source, "scheduler", "scheduler_config.json")
    if local and not (Path(source) / (sub or "") / "scheduler_config.json").is_file():
        scfg = None
    else:
        try:
            scfg = dict(DDPMScheduler.from_pretrained(source, subfolder=sub, local_files_only=offline).config)
        except OSError:  # the weights came, so the hub answers: the repo has no scheduler config
            scfg = None
    sched, parameterization = schedule_from_diffusers(scfg) if scfg is not None else (Schedule.linear(1000), "eps")
    notes = {
        "source": source,
        "diffusers_config": _plain(unet.config),
        "scheduler_config": "missing: the paper's linear 1e-4..0.02, T = 1000" if scfg is None else _plain(scfg),
    }
    return {
        "unet_config": ucfg,
        "state_dict": sd,
        "schedule": sched,
        "parameterization": parameterization,
        "notes": notes,
    }
