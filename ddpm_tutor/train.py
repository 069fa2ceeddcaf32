"""One training loop for every model: AdamW, warmup, gradient clipping, EMA, seeded, resumable.

Ho et al. 2020, Algorithm 1: draw x_0, t ~ U{1..T}, eps ~ N(0, I); step on the loss of
model(q_sample(x_0, t, eps), t). Everything random comes from one CPU torch.Generator whose state
is checkpointed, so a resumed run continues bit-for-bit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from .checkpoint import (  # noqa: F401 - they live in checkpoint.py
    FORMAT,
    RESUME_KEYS,
    build_model,
    check_format,
    clean_stale_temps,
    load_checkpoint,
    load_model,
    model_spec_of,
    read_checkpoint,
    save_checkpoint,
)
from .checks import positive_int
from .device import default_device
from .diffusion import PARAMETERIZATIONS, Denoiser
from .losses import WEIGHTINGS, check_min_snr_gamma, diffusion_loss
from .schedules import Schedule

Tensor = torch.Tensor


AMP_MODES = ("off", "bf16", "auto")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products in hardware (not by emulation)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        try:
            return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN's bf16 query
            return False
    return False


@dataclass
class TrainConfig:
    """Training settings; the defaults suit the 2D MLP."""

    steps: int = 4000  # optimiser steps in total
    batch_size: int = 512  # examples per step (drawn with replacement)
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup: int = 100  # steps of linear learning-rate warmup from 0 (the paper: 5000 for CIFAR-10)
    grad_clip: float = 1.0  # max global gradient norm (the paper's value)
    ema_decay: float = 0.995  # EMA of the weights (the paper: 0.9999 over 800k steps)
    seed: int = 0  # seeds the generator behind batches, t and noise
    parameterization: str = "eps"  # what the network predicts: eps, x0, v or score
    weighting: str = "simple"  # loss weighting over t: simple, x0, min_snr or vlb (see losses.eps_weight)
    min_snr_gamma: float = 5.0  # gamma of the min_snr weighting (Hang et al. 2023's value; inf: eps's L_simple)
    p_uncond: float = 0.0  # probability of dropping a label to the null class (classifier-free guidance)
    cosine_decay: bool = False  # decay the learning rate to 0 along a cosine after warmup
    # bfloat16 autocast of the forward pass (weights, optimiser, EMA and the loss stay float32): "off", "bf16",
    # or "auto" = bf16 only where the hardware computes it natively (AVX512-BF16/AMX CPUs, Ampere+ GPUs),
    # where it makes a small U-Net's step about 1.6x faster
    amp: str = "off"

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            setattr(self, name, positive_int(getattr(self, name), name))  # a numpy int becomes an int
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        # a negative clip norm flips every gradient (gradient ascent); negative warmup or decay are meaningless
        for name in ("grad_clip", "warmup", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0 (0 turns it off), got {value!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {self.parameterization!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        check_min_snr_gamma(self.min_snr_gamma)
        if not 0 <= self.p_uncond < 1:
            raise ValueError(f"p_uncond must lie in [0, 1), got {self.p_uncond!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")

    @classmethod
    def toy2d(cls, **overrides) -> TrainConfig:
        """The recipe of ``python -m ddpm_tutor train toy2d`` (the 2-D MLP); ``overrides`` replace fields.

        v-prediction: with eps-prediction deterministic DDIM threw points far off the data (|x| up to 100 on
        data of unit scale: errors of eps_hat at high noise, amplified in x0_hat), while ancestral sampling was
        about as good with either (benchmarks/bench_toy2d.py and the CLI's ``evaluate``). 4,500 steps at lr 4e-3
        with the CLI's 96-wide MLP train in 44 s on one core, against 72 to 80 s for the former 6,000 steps at
        lr 3e-3, 128 wide. Their DDPM samples were as close to the data on seeds 0, 1 and 2; DDIM-50's energy
        distance too on seeds 0 and 1, but worse on seed 2 (1.93 against 1.63 times the noise floor).
        """
        recipe = dict(
            steps=4500, batch_size=512, lr=4e-3, warmup=100, ema_decay=0.995, cosine_decay=True, parameterization="v"
        )
        return cls(**{**recipe, **overrides})

    @classmethod
    def mnist(cls, **overrides) -> TrainConfig:
        """The recipe of ``python -m ddpm_tutor train mnist`` and of the shipped ``checkpoints/mnist_unet.pt``.

        v-prediction (Salimans & Ho 2022): an eps-network's small errors at high noise become large errors of
        x0_hat = (x_t - sqrt(1 - ab) eps_hat) / sqrt(ab), which deterministic DDIM keeps as grey, grainy
        backgrounds; a v-network's do not. Its plain mean squared error, i.e. the eps error weighted by
        1 + 1/SNR (Salimans & Ho's "SNR+1" weighting), keeps the nearly clean steps that the min-SNR-5 weighting
        of the previous recipe turned down: at equal steps it cut bits/dim from 3.80 to 2.40 and made the
        samples follow their labels more often (0.74 to 0.86 at DDIM-50), the pixel axes unchanged (the model
        card's table). A high learning rate with a cosine decay to zero, a short EMA window for a short CPU
        run, bf16 autocast where the hardware has it, and batch 32 (at equal CPU, steps of 32 beat half as
        many of 64 on every axis). 1,350 steps: 14.7 CPU-minutes on one core of a CPU without bf16.
        """
        recipe = dict(
            steps=1350,
            batch_size=32,
            lr=2e-3,
            warmup=100,
            ema_decay=0.995,
            cosine_decay=True,
            amp="auto",
            weighting="simple",
            parameterization="v",
        )
        return cls(**{**recipe, **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _network(spec: dict) -> dict:
    """The part of a model spec that fixes the network (its kind and config; {} when unknown)."""
    return {k: spec[k] for k in ("kind", "config") if k in spec}


class Trainer:
    """Trains ``model`` on a data tensor (N, ...) and optional labels (N,) under ``sched``.

    ``model_spec`` (kind and config dict; by default derived from the model) is stored in checkpoints so that
    `checkpoint.load_model` can rebuild it.
    """

    def __init__(
        self,
        model: nn.Module,
        sched: Schedule,
        data: Tensor,
        config: TrainConfig | None = None,
        *,
        labels: Tensor | None = None,
        device=None,
        model_spec: dict | None = None,
    ):
        self.config = config or TrainConfig()
        if not isinstance(data, Tensor) or data.ndim < 2 or data.shape[0] < 1:
            raise ValueError(f"data must be a tensor (N, ...) with N >= 1, got {getattr(data, 'shape', type(data))}")
        if not torch.isfinite(data).all():
            raise ValueError("data must be finite, got NaN or inf")
        if labels is not None and (labels.shape != data.shape[:1]):
            raise ValueError(f"labels must have shape ({data.shape[0]},), got {tuple(labels.shape)}")
        if self.config.p_uncond > 0 and labels is None:
            raise ValueError("p_uncond > 0 (label dropout) needs labels")
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device)
        self.sched = sched
        self.data = data
        self.labels = labels
        self.model_spec = model_spec or model_spec_of(model)
        c = self.config
        torch.manual_seed(c.seed)  # dropout draws from the global generator
        self.generator = torch.Generator().manual_seed(c.seed)
        # the fused kernel (one pass over all parameters) where torch has one: ~13% of a 2-D MLP's step on a CPU
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay, fused=self.device.type in ("cpu", "cuda")
        )
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(c.ema_decay), use_buffers=True)
        self.autocast = c.amp == "bf16" or (c.amp == "auto" and native_bf16(self.device))
        self.step = 0
        self.losses: list[float] = []

    def _lr_factor(self, step: int) -> float:
        c = self.config
        warm = min(1.0, (step + 1) / c.warmup) if c.warmup > 0 else 1.0
        if not c.cosine_decay:
            return warm
        progress = min(1.0, max(0.0, (step - c.warmup) / max(1, c.steps - c.warmup)))
        return warm * 0.5 * (1 + math.cos(math.pi * progress))

    def _batch(self) -> tuple[Tensor, Tensor | None]:
        c, g = self.config, self.generator
        idx = torch.randint(0, self.data.shape[0], (c.batch_size,), generator=g)
        x0 = self.data[idx]
        y = None
        if self.labels is not None:
            y = self.labels[idx].clone()
            if c.p_uncond > 0:
                drop = torch.rand(c.batch_size, generator=g) < c.p_uncond
                y[drop] = self.model_spec.get("config", {}).get("num_classes", int(self.labels.max()) + 1)
        return x0, y

    def train_step(self) -> float:
        """One optimiser step; returns the batch loss."""
        c, g = self.config, self.generator
        self.model.train()
        x0, y = self._batch()
        t = torch.randint(0, self.sched.T, (x0.shape[0],), generator=g)
        eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        x0, t, eps = x0.to(self.device), t.to(self.device), eps.to(self.device)
        model = Denoiser(self.model, self.sched, c.parameterization)
        if y is not None:
            model = model.with_labels(y.to(self.device))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = diffusion_loss(
                model, self.sched, x0, t=t, eps=eps, weighting=c.weighting, min_snr_gamma=c.min_snr_gamma
            ).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss.item()} at step {self.step}: training stopped. Lower the learning rate "
                f"(now {self.opt.param_groups[0]['lr']:.3g}) or check the data for extreme values."
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.opt.step()
        self.lr_sched.step()
        self.ema.update_parameters(self.model)
        self.step += 1
        value = loss.item()
        self.losses.append(value)
        return value

    def run(
        self,
        steps: int | None = None,
        *,
        progress: bool = True,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 0,
    ) -> list[float]:
        """Train until ``steps`` in total (default: config.steps), saving to ``checkpoint`` every
        ``checkpoint_every`` steps and at the end. Returns the losses of all steps so far."""
        target = self.config.steps if steps is None else steps
        if target < self.step:
            raise ValueError(f"steps={target} is before the current step {self.step}")
        if checkpoint is not None:  # temp files of saves that a killed run left behind: each a full checkpoint
            clean_stale_temps(checkpoint)
        bar = tqdm(total=target, initial=self.step, disable=not progress, desc="train", mininterval=1.0)
        while self.step < target:
            self.train_step()
            bar.update(1)
            if self.step % 50 == 0:
                bar.set_postfix(loss=f"{sum(self.losses[-50:]) / len(self.losses[-50:]):.4f}")
            if checkpoint and checkpoint_every and self.step % checkpoint_every == 0:
                self.save(checkpoint)
        bar.close()
        if checkpoint:
            self.save(checkpoint)
        return self.losses

    @property
    def ema_model(self) -> nn.Module:
        """The EMA weights as a plain model (the one to sample from)."""
        return self.ema.module

    def state_dict(self) -> dict:
        return {
            "format": FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "lr_sched": self.lr_sched.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "losses": list(self.losses),
            "train_config": asdict(self.config),
            "model_spec": self.model_spec,
            "schedule": {"name": self.sched.name, "beta": self.sched.beta},
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the run saved in ``state``; refused (ValueError) unless this trainer has its schedule, network
        and TrainConfig."""
        check_format(state, "the state to resume from", RESUME_KEYS)
        if not torch.equal(state["schedule"]["beta"], self.sched.beta):
            raise ValueError("the checkpoint was trained under a different schedule than the one given")
        saved_net, my_net = _network(state["model_spec"]), _network(self.model_spec)
        if saved_net and my_net and saved_net != my_net:
            raise ValueError(f"the checkpoint's network {saved_net} is not this trainer's {my_net}")
        if "train_config" in state:
            # Another config would mix two runs: the optimiser's state brings the saved lr and weight decay back,
            # while batches, EMA and the lr's warmup and decay would follow this one; and the next save would
            # record settings the weights were not trained with.
            saved, mine = asdict(TrainConfig.from_dict(state["train_config"])), asdict(self.config)
            differ = [f"{k} {saved[k]!r} (saved) vs {mine[k]!r} (this trainer's)" for k in mine if saved[k] != mine[k]]
            if differ:
                raise ValueError(
                    f"the checkpoint's run has other training settings: {', '.join(differ)}; to continue it, "
                    f"build the Trainer with TrainConfig.from_dict(state['train_config'])"
                )
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.lr_sched.load_state_dict(state["lr_sched"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.losses = list(state["losses"])

    def save(self, path: str | Path) -> Path:
        """Atomic checkpoint of everything needed to resume bit-for-bit."""
        return save_checkpoint(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        self.load_state_dict(read_checkpoint(path, RESUME_KEYS))  # an export is refused by name
