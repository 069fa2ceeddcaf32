"""A noise-aware classifier p_phi(y | x_t, t) for low-dimensional data, and its training on noisy data.

Classifier guidance (Dhariwal & Nichol 2021, sec. 4) needs p(y | x_t) at every noise level, so the classifier
sees the step t and is trained on x_t = q_sample(x_0, t, eps), never only on clean data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..checks import batch_steps, device_arg, generator_arg, positive_int
from ..diffusion import q_sample
from ..schedules import Schedule
from .mlp import timestep_embedding

Tensor = torch.Tensor


@dataclass
class ClassifierConfig:
    """Sizes of the noise-aware MLP classifier."""

    data_dim: int = 2  # dimension D of each data point
    num_classes: int = 3  # number of classes K (logits (B, K))
    hidden: int = 128  # width of the hidden layers
    n_layers: int = 3  # hidden layers, each Linear-SiLU with the time embedding added
    t_dim: int = 64  # size of the sinusoidal time embedding


class NoisyClassifier(nn.Module):
    """An MLP p_phi(y | x_t, t): (x_t (B, D), t (B,)) -> logits (B, K).

    It sees the step t (through the sinusoidal embedding of the denoiser) because p(y | x_t) changes with
    the noise level: it must be trained on x_t, not on clean data (Dhariwal & Nichol 2021, sec. 4).
    """

    def __init__(self, config: ClassifierConfig | None = None, **overrides):
        super().__init__()
        self.config = config or ClassifierConfig(**overrides)
        c = self.config
        if c.num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {c.num_classes}")
        self.inp = nn.Linear(c.data_dim, c.hidden)
        self.t_mlp = nn.Sequential(nn.Linear(c.t_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.layers = nn.ModuleList(nn.Linear(c.hidden, c.hidden) for _ in range(c.n_layers))
        self.out = nn.Linear(c.hidden, c.num_classes)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        c = self.config
        if x.ndim != 2 or x.shape[1] != c.data_dim:
            raise ValueError(f"x must have shape (B, {c.data_dim}), got {tuple(x.shape)}")
        t = batch_steps(t, x.shape[0], x.device).long()
        emb = self.t_mlp(timestep_embedding(t, c.t_dim))
        h = self.inp(x)
        for layer in self.layers:
            h = h + layer(self.act(h + emb))
        return self.out(self.act(h))

    def config_dict(self) -> dict:
        return asdict(self.config)


def train_noisy_classifier(
    classifier: nn.Module,
    sched: Schedule,
    x: Tensor,
    y: Tensor,
    steps: int,
    generator: torch.Generator,
    *,
    batch_size: int = 512,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    device=None,
) -> list[float]:
    """Train ``classifier`` by cross-entropy on noisy data: x_t = q_sample(x_0, t, eps), t ~ U{0..T-1}.

    x: (N, D) clean data, y: (N,) labels. All randomness comes from ``generator`` (CPU). Returns the
    per-step losses (nats). The classifier is left in eval mode.
    """
    generator = generator_arg(generator)
    steps = positive_int(steps, "steps")
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"x must be (N, D) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    device = device_arg(device, default=next(classifier.parameters()).device)
    classifier.to(device).train()
    opt = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=generator)
        t = torch.randint(0, sched.T, (batch_size,), generator=generator)
        eps = torch.randn(batch_size, x.shape[1], generator=generator)
        x_t = q_sample(sched, x[idx], t, eps).to(device)
        loss = nn.functional.cross_entropy(classifier(x_t, t.to(device)), y[idx].to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the classifier's loss became {loss.item()}: lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        losses.append(loss.item())
    classifier.eval()
    return losses
