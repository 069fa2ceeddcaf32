"""One training loop for every model: AdamW, warmup, gradient clipping, EMA, seeded, resumable.

Ho et al. 2020, Algorithm 1: draw x_0, t ~ U{1..T}, eps ~ N(0, I); step on the loss of
model(q_sample(x_0, t, eps), t). Everything random comes from one CPU torch.Generator whose state
is checkpointed, so a resumed run continues bit-for-bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from . import distributed
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
    write_atomic,
)
from .checks import flag, positive_int
from .device import default_device
from .diffusion import PARAMETERIZATIONS, Denoiser
from .losses import WEIGHTINGS, check_min_snr_gamma, check_small_t, diffusion_loss, sample_t, small_t_of
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


def channels_last_default(device: torch.device, data: Tensor) -> bool:
    """Whether to train in NHWC when not told: images (N, C, H, W) on CUDA, the layout of its convolution kernels."""
    return device.type == "cuda" and data.ndim == 4


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
    hflip: bool = False  # flip each image left-right with probability 1/2, drawn from the seeded generator
    # t from a mixture (losses.sample_t): with this probability uniform on the nearly clean steps (below),
    # else uniform on 0..T-1; the loss is not reweighted, so those steps weigh more (0: Algorithm 1's uniform t)
    p_small_t: float = 0.0
    small_t_frac: float = 0.05  # the nearly clean steps: the first 5% of the chain (t < 50 of T = 1000; at least 1)

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
        flag(self.hflip, "hflip")
        check_small_t(self.p_small_t, 1)
        small_t_of(self.small_t_frac, 1)  # its range

    @classmethod
    def toy2d(cls, **overrides) -> TrainConfig:
        """The recipe of ``python -m ddpm_tutor train toy2d`` (the 2-D MLP); ``overrides`` replace fields.

        v-prediction: with eps-prediction deterministic DDIM threw points far off the data (|x| up to 100 on data of
        unit scale: errors of eps_hat at high noise, amplified in x0_hat), while ancestral sampling was about as
        good with either (benchmarks/bench_toy2d.py and the CLI's ``evaluate``). 4,500 steps at lr 4e-3 with the
        CLI's 96-wide MLP. EMA 0.999: with the former 0.995 DDIM-50 missed 1.5 times the noise floor on seed 2
        (energy distance 1.73; 1.41 with 200 steps) while DDPM met it (1.43): the ODE of weights averaged over about
        200 steps was rough, not the distribution wrong; a 1,000-step average smooths it. Batch 384, not 512: as
        close to the data on seeds 0 to 2 (worst ratio 1.43) in 63 s (53 s, the other core idle) instead of 72 to 75
        s of training on one core of the 2-vCPU AMD EPYC of the MNIST model card; 256 and 320 (46 to 58 s) and 4,000
        steps of 384 (54 to 58 s) each left a seed's energy distance at 1.50 to 1.56 times the floor (DDPM or
        DDIM-50).
        ``benchmarks/bench_toy2d.py --seeds 0 1 2 3 4`` runs the README's command per seed and judges it.
        """
        recipe = dict(
            steps=4500, batch_size=384, lr=4e-3, warmup=100, ema_decay=0.999, cosine_decay=True, parameterization="v"
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
        card's table). t is drawn with probability 0.3 from the nearly clean steps (the first 5%: 50 of 1000),
        else from all of them
        (``p_small_t``; not reweighted, so those steps weigh 6.7 times as much): the bound's bits are paid
        there, and at equal steps this cut bits/dim from 2.42 to 2.08, to within about one standard error of
        the diffusers baseline, for a small loss on the sample axes (0.5 lost them at 1000-step sampling; the
        model card's table "Why more draws of the nearly clean steps"). A high learning rate with a cosine
        decay to zero, a short EMA window for a short CPU run, bf16 autocast where the hardware has it, and
        batch 32 (at equal CPU, steps of 32 beat half as many of 64 on every axis). 1,280 steps: 14.7
        CPU-minutes on one core of the 2-vCPU AMD EPYC the model card names (no bf16), timed on a quiet machine.
        """
        recipe = dict(
            steps=1280,
            batch_size=32,
            lr=2e-3,
            warmup=100,
            ema_decay=0.995,
            cosine_decay=True,
            amp="auto",
            weighting="simple",
            parameterization="v",
            p_small_t=0.3,
            small_t_frac=0.05,
        )
        return cls(**{**recipe, **overrides})

    @classmethod
    def cifar10(cls, **overrides) -> TrainConfig:
        """The paper's CIFAR-10 recipe, for ``python -m ddpm_tutor train cifar10`` with the paper's U-Net
        (``UNetConfig()``: 35.7M parameters, dropout 0.1) under the linear schedule, T = 1000.

        Ho et al. 2020, appendix B, and ``train()`` in their released code (hojonathanho/diffusion,
        scripts/run_cifar.py). Adam: AdamW with no weight decay is Adam.
        """
        recipe = dict(
            steps=800_000,  # appendix B: "trained ... for 800K steps"
            batch_size=128,  # appendix B: "batch size to 128 for CIFAR10"; run_cifar.py: total_bs=128
            lr=2e-4,  # appendix B: "learning rate to 2 x 10^-4 without any sweeping"; run_cifar.py: lr=2e-4
            weight_decay=0.0,  # run_cifar.py: optimizer='adam', no weight decay
            warmup=5000,  # run_cifar.py: warmup=5000 (linear, from 0)
            grad_clip=1.0,  # run_cifar.py: grad_clip=1.
            ema_decay=0.9999,  # appendix B: "EMA on model parameters with a decay factor of 0.9999"
            hflip=True,  # appendix B: "random horizontal flips during training for CIFAR10"; run_cifar.py: randflip=1
            parameterization="eps",  # sec. 3.2 / run_cifar.py: model_mean_type='eps'
            weighting="simple",  # L_simple, eq. 14 / run_cifar.py: loss_type='mse'
            cosine_decay=False,  # a constant learning rate after the warmup (their code has no decay)
            amp="auto",  # ours, not the paper's (float32 on TPU v3): bf16 autocast where the hardware has it
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
    `checkpoint.load_model` can rebuild it. ``compile``: run the forward and backward passes through
    ``torch.compile``. ``channels_last`` (default: for images on CUDA): keep 4-D weights and batches in NHWC,
    the layout of the GPU's convolution kernels. Under torchrun (a process group is initialised) the model is
    wrapped in DistributedDataParallel and each process trains on its share of every batch (``distributed.share``).
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
        compile: bool = False,
        channels_last: bool | None = None,
    ):
        self.config = config or TrainConfig()
        if not isinstance(data, Tensor) or data.ndim < 2 or data.shape[0] < 1:
            raise ValueError(f"data must be a tensor (N, ...) with N >= 1, got {getattr(data, 'shape', type(data))}")
        # checked once here, so that the loss need not check each batch (a host-device sync at every step)
        if not torch.isfinite(data).all():
            raise ValueError("data must be finite, got NaN or inf")
        if labels is not None and (labels.shape != data.shape[:1]):
            raise ValueError(f"labels must have shape ({data.shape[0]},), got {tuple(labels.shape)}")
        if self.config.p_uncond > 0 and labels is None:
            raise ValueError("p_uncond > 0 (label dropout) needs labels")
        self._small_t = small_t_of(self.config.small_t_frac, sched.T)  # the nearly clean steps, as a count
        if self.config.hflip and data.ndim != 4:
            raise ValueError(f"hflip flips images (N, C, H, W) left-right, got data of shape {tuple(data.shape)}")
        flag(compile, "compile")
        if channels_last is not None:
            flag(channels_last, "channels_last")
        c = self.config
        self.world = distributed.current()
        self.share = distributed.share(c.batch_size, self.world)  # this process's rows of every global batch
        self.device = torch.device(device) if device is not None else default_device()
        self.channels_last = channels_last_default(self.device, data) if channels_last is None else channels_last
        self.model = model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.sched = sched
        self.model_spec = model_spec or model_spec_of(model)
        # The whole data set on the device, once (CIFAR-10 is 600 MB as float32): a batch is an index into it.
        # For data that fit in memory this beats a DataLoader with workers: no per-item PIL transforms, no
        # host-to-device copy of images, no worker processes to start, and the draws stay on one seeded generator.
        self.data = data.to(self.device)
        self.labels = None if labels is None else labels.to(self.device)
        # the label that dropped labels become (found once: labels.max() on the device would wait for it)
        self._drop_label = None
        if labels is not None and c.p_uncond > 0:
            self._drop_label = self.model_spec.get("config", {}).get("num_classes", int(labels.max()) + 1)
        torch.manual_seed(c.seed + self.world.rank)  # dropout draws from the global generator: its own per process
        self.generator = torch.Generator().manual_seed(c.seed)  # the same on every process: the global batches
        # the fused kernel (one pass over all parameters) where torch has one: ~13% of a 2-D MLP's step on a CPU
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay, fused=self.device.type in ("cpu", "cuda")
        )
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self._ema_update = get_ema_multi_avg_fn(c.ema_decay)
        self.ema = AveragedModel(self.model, multi_avg_fn=self._ema_update, use_buffers=True)
        self._ema_groups: list | None = None  # the EMA's and the model's tensors, paired and grouped (_update_ema)
        self.autocast = c.amp == "bf16" or (c.amp == "auto" and native_bf16(self.device))
        net = self.model
        if self.world.launched:  # under torchrun, with one process too: the same code path as with N
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.net = torch.compile(net) if compile else net  # what a step calls: the model, wrapped
        # DistributedDataParallel hides the network's config, where Denoiser looks for the null label
        self._denoiser_null = getattr(getattr(model, "config", None), "num_classes", None)
        self.step = 0
        self.losses: list[float] = []
        self._pending: list[Tensor] = []  # the losses of the steps since the last log point, still on the device
        self._pending_from = 0  # the step of the first of them
        self._in_run = False

    def _lr_factor(self, step: int) -> float:
        c = self.config
        warm = min(1.0, (step + 1) / c.warmup) if c.warmup > 0 else 1.0
        if not c.cosine_decay:
            return warm
        progress = min(1.0, max(0.0, (step - c.warmup) / max(1, c.steps - c.warmup)))
        return warm * 0.5 * (1 + math.cos(math.pi * progress))

    def _to_device(self, x: Tensor) -> Tensor:
        """x, drawn on the CPU, on the training device; to a GPU through pinned memory, asynchronously: a copy
        from ordinary memory would wait until the GPU has finished all the work queued before it."""
        if self.device.type != "cuda":
            return x.to(self.device)
        return x.pin_memory().to(self.device, non_blocking=True)

    def _batch(self) -> tuple[Tensor, Tensor | None]:
        """This process's share of the next global batch: x0 (b, ...) and labels (b,) or None, on the device.

        Each draw is made for the whole batch, in the same order on every process (indices, label drops, flips),
        from the generator they share; each keeps its rows. So a run does not depend on the number of processes.
        """
        c, g, mine = self.config, self.generator, self.share
        idx = torch.randint(0, self.data.shape[0], (c.batch_size,), generator=g)
        drop = None
        if self.labels is not None and c.p_uncond > 0:
            drop = torch.rand(c.batch_size, generator=g) < c.p_uncond
        flip = torch.rand(c.batch_size, generator=g) < 0.5 if c.hflip else None
        idx = self._to_device(idx[mine])
        x0 = self.data[idx]
        if flip is not None:
            flip = self._to_device(flip[mine]).view(-1, *(1,) * (x0.ndim - 1))
            x0 = torch.where(flip, x0.flip(-1), x0)
        y = None
        if self.labels is not None:
            y = self.labels[idx]
            if drop is not None:  # torch.where, not y[drop] = ...: a boolean index waits for the device
                y = torch.where(self._to_device(drop[mine]), self._drop_label, y)
        return x0, y

    def train_step(self) -> float | None:
        """One optimiser step on this process's share of a global batch (Ho et al. 2020, Algorithm 1).

        Called by itself, it returns the batch loss, and raises FloatingPointError before the weights change if
        that is not finite. Inside :meth:`run` the loss stays on the device (reading it would make the CPU wait
        for the GPU at every step) until the next log point, where the losses since are checked; it returns None.
        """
        c, g, mine = self.config, self.generator, self.share
        self.model.train()
        x0, y = self._batch()
        t = sample_t(c.batch_size, self.sched.T, g, p_small=c.p_small_t, small_t=self._small_t)
        eps = torch.randn((c.batch_size, *x0.shape[1:]), generator=g, dtype=x0.dtype)
        t, eps = self._to_device(t[mine]), self._to_device(eps[mine])
        if self.channels_last:
            nhwc = torch.channels_last
            x0, eps = x0.contiguous(memory_format=nhwc), eps.contiguous(memory_format=nhwc)
        model = Denoiser(self.net, self.sched, c.parameterization, null_label=self._denoiser_null)
        if y is not None:
            model = model.with_labels(y)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = diffusion_loss(
                model,
                self.sched,
                x0,
                t=t,
                eps=eps,
                weighting=c.weighting,
                min_snr_gamma=c.min_snr_gamma,
                check_data=False,
            ).mean()
        if not self._pending:
            self._pending_from = self.step
        self._pending.append(loss.detach())
        value = None if self._in_run else self._flush()[-1]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.opt.step()
        self.lr_sched.step()
        self._update_ema()
        self.step += 1
        return value

    def _update_ema(self) -> None:
        """AveragedModel.update_parameters without its host-device sync (it copies its step counter from the CPU
        to the device at every call): the EMA starts as a copy of the weights, then moves towards them by
        1 - ema_decay per step, with the same foreach kernel."""
        if self._ema_groups is None:  # once: the tensors are updated in place, never replaced
            groups: dict = {}  # (device, dtype) -> (EMA tensors, model tensors), as AveragedModel groups them
            ema, model = self.ema.module, self.model
            for mine, new in zip((*ema.parameters(), *ema.buffers()), (*model.parameters(), *model.buffers())):
                ema_list, new_list = groups.setdefault((mine.device, mine.dtype), ([], []))
                ema_list.append(mine.detach())
                new_list.append(new.detach())
            self._ema_groups = list(groups.values())
        first = bool(self.ema.n_averaged == 0)  # a CPU tensor: no sync
        for ema_list, new_list in self._ema_groups:
            if first:
                for mine, new in zip(ema_list, new_list):
                    mine.copy_(new)
            else:
                self._ema_update(ema_list, new_list, self.ema.n_averaged)
        self.ema.n_averaged += 1

    def _flush(self) -> list[float]:
        """Bring the losses of the steps since the last call to the host (one sync), averaged over the processes,
        and append them to self.losses; FloatingPointError if one of them is not finite."""
        if not self._pending:
            return []
        window = distributed.mean_over_processes(torch.stack(self._pending).float(), self.world)
        first, self._pending = self._pending_from, []
        values = window.tolist()
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            checked = f" (checked together with steps {first}..{first + len(values) - 1})" if len(values) > 1 else ""
            raise FloatingPointError(
                f"the loss became {values[bad]} at step {first + bad}{checked}: training stopped. Lower the learning "
                f"rate (now {self.opt.param_groups[0]['lr']:.3g}) or check the data for extreme values."
            )
        self.losses.extend(values)
        return values

    def run(
        self,
        steps: int | None = None,
        *,
        progress: bool = True,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 0,
        log: str | Path | None = None,
        log_every: int = 100,
    ) -> list[float]:
        """Train until ``steps`` in total (default: config.steps), saving to ``checkpoint`` every
        ``checkpoint_every`` steps and at the end. Returns the losses of all steps so far.

        The losses stay on the device until a checkpoint, a log point (every ``log_every`` steps) or the end. There
        they are checked, join self.losses and move the progress bar; with ``log``, each log point and the end add
        a line to that JSON-lines file: {"step", "loss" (mean since the previous line), "lr" (of the last step),
        "steps_per_s", "elapsed_s" (since this call began)}. Under torchrun every process calls this; rank 0 alone
        writes the checkpoint, the log and the bar.
        """
        positive_int(log_every, "log_every")
        target = self.config.steps if steps is None else steps
        if target < self.step:
            raise ValueError(f"steps={target} is before the current step {self.step}")
        main = self.world.main
        if checkpoint is not None and main:  # temp files of saves that a killed run left behind: each a checkpoint
            clean_stale_temps(checkpoint)
        if log is not None and main:
            _keep_log_until(log, self.step)
        bar = tqdm(total=target, initial=self.step, disable=not (progress and main), desc="train", mininterval=1.0)
        start = last = time.perf_counter()
        window, last_step, saved_at = [], self.step, None  # the losses since the last log line, and its step
        self._in_run = True
        try:
            while self.step < target:
                self.train_step()
                save = bool(checkpoint) and checkpoint_every > 0 and self.step % checkpoint_every == 0
                log_now = self.step % log_every == 0 or self.step == target
                if save or log_now:
                    window += self._flush()
                    bar.update(self.step - bar.n)
                if log_now:
                    now = time.perf_counter()
                    bar.set_postfix(loss=f"{sum(window) / len(window):.4f}")
                    if log is not None and main:
                        line = {
                            "step": self.step,
                            "loss": sum(window) / len(window),
                            "lr": self.config.lr * self._lr_factor(self.step - 1),
                            "steps_per_s": (self.step - last_step) / max(now - last, 1e-9),
                            "elapsed_s": now - start,
                        }
                        Path(log).parent.mkdir(parents=True, exist_ok=True)
                        with open(log, "a") as f:
                            f.write(json.dumps(line) + "\n")
                    window, last, last_step = [], now, self.step
                if save:
                    self.save(checkpoint)
                    saved_at = self.step
        finally:
            self._in_run = False
            bar.close()
        if checkpoint and saved_at != self.step:
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
        if self.world.rank > 0:  # only rank 0's dropout stream is saved: the others start new ones, all apart
            torch.manual_seed(_stream_seed(self.config.seed, self.world.rank, self.step))
        self.losses = list(state["losses"])

    def save(self, path: str | Path) -> Path:
        """Atomic checkpoint of everything needed to resume bit-for-bit. Under torchrun every process calls it:
        the losses come from all of them, rank 0 writes the file, and the others wait until it is written."""
        self._flush()
        if self.world.main:
            save_checkpoint(self.state_dict(), path)
        distributed.barrier(self.world)
        return Path(path)

    def load(self, path: str | Path) -> None:
        self.load_state_dict(read_checkpoint(path, RESUME_KEYS))  # an export is refused by name


def _stream_seed(seed: int, rank: int, step: int) -> int:
    """A seed for the dropout stream of process ``rank`` resumed at ``step``, unlike any other (a 64-bit hash)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{rank}/{step}".encode()).digest()[:8], "little")


def _keep_log_until(log: str | Path, step: int) -> None:
    """Drop the lines of the JSON-lines ``log`` past ``step`` (a killed run logged them; its resumed run, from
    the checkpoint of ``step``, logs them again), and a line cut short by the kill."""
    path = Path(log)
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    if keep != lines:
        write_atomic(path, lambda f: f.write("".join(f"{line}\n" for line in keep).encode()))
