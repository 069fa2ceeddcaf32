"""An MLP denoiser for low-dimensional data: model(x_t, t) -> prediction of x_t's shape."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..checks import batch_steps, class_labels, null_labels

Tensor = torch.Tensor


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of step indices, [sin(t w_k), cos(t w_k)], w_k = max_period^(-k/(dim/2 - 1)).

    Vaswani et al. 2017, sec. 3.5, as used by Ho et al. 2020 (their code's get_timestep_embedding).
    t: (B,) integer or float; returns (B, dim).
    """
    if dim < 4 or dim % 2:
        raise ValueError(f"embedding dim must be an even integer >= 4, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


@dataclass
class MLPConfig:
    """Sizes of the MLP denoiser."""

    data_dim: int = 2  # dimension D of each data point
    hidden: int = 128  # width of every hidden layer
    n_blocks: int = 3  # residual blocks, each Linear-SiLU-Linear with the time embedding added
    t_dim: int = 64  # size of the sinusoidal time embedding
    num_classes: int | None = None  # class-conditional when set; label num_classes is the "null" label (guidance)


class _Block(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(self.act(self.fc1(self.act(self.norm(h) + emb))))


class MLPDenoiser(nn.Module):
    """Residual MLP taking (x_t (B, D), t (B,), optional labels y (B,)) to a (B, D) prediction.

    The network knows nothing of the schedule or of what its output means (eps, x0, v or score).
    """

    def __init__(self, config: MLPConfig | None = None, **overrides):
        super().__init__()
        self.config = config or MLPConfig(**overrides)
        c = self.config
        self.inp = nn.Linear(c.data_dim, c.hidden)
        self.t_mlp = nn.Sequential(nn.Linear(c.t_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.label_emb = nn.Embedding(c.num_classes + 1, c.hidden) if c.num_classes else None
        self.blocks = nn.ModuleList(_Block(c.hidden) for _ in range(c.n_blocks))
        self.out = nn.Sequential(nn.LayerNorm(c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.data_dim))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        c = self.config
        if x.ndim != 2 or x.shape[1] != c.data_dim:
            raise ValueError(f"x must have shape (B, {c.data_dim}), got {tuple(x.shape)}")
        B = x.shape[0]
        t = batch_steps(t, B, x.device, batch=f"x of shape {tuple(x.shape)}")
        emb = self.t_mlp(timestep_embedding(t, c.t_dim).to(x.dtype))
        if self.label_emb is not None:
            y = class_labels(null_labels(B, c.num_classes, x.device) if y is None else y, B, c.num_classes)
            emb = emb + self.label_emb(y)
        elif y is not None:
            raise ValueError("this model is unconditional (num_classes=None) but labels y were given")
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)

    def config_dict(self) -> dict:
        """The config as plain types (for checkpoints)."""
        return asdict(self.config)
