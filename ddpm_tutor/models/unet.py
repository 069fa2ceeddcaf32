"""The U-Net of Ho et al. 2020 (appendix B), one configurable class for MNIST and the paper's CIFAR-10 model.

model(x_t (B, C, H, W), t (B,) integer step indices, y (B,) labels or None) -> prediction of x_t's shape.
The network knows nothing of schedules or of what its output means (eps, x0, v ...).

Layout (resolution r halves at each level going down, doubles going up):
  conv_in -> [level: num_res_blocks x (ResBlock, attention if r in attn_resolutions), down-sample]
  -> middle (ResBlock, attention, ResBlock)
  -> [level: (num_res_blocks + 1) x (ResBlock on concat(h, skip), attention if r in attn_resolutions), up-sample]
  -> GroupNorm, SiLU, conv_out.
Every output of the down path (conv_in, each block, each down-sample) is a skip consumed once by the up path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import batch_steps, class_labels, null_labels, positive_int, step_indices
from .mlp import timestep_embedding

Tensor = torch.Tensor

# GroupNorm epsilon of the original TensorFlow code (tf.contrib.layers.group_norm uses 1e-6).
NORM_EPS = 1e-6


@dataclass
class UNetConfig:
    """Sizes of the U-Net. The defaults are the paper's CIFAR-10 model (see `ddpm_cifar10`)."""

    image_size: int = 32  # height = width of the input; must be divisible by 2**(len(ch_mult) - 1)
    in_channels: int = 3  # channels of x_t (3 for RGB)
    out_channels: int = 3  # channels of the prediction (= in_channels for eps, x0 or v prediction)
    ch: int = 128  # base width; level i has ch * ch_mult[i] channels; the time embedding has ch, its MLP 4 ch
    ch_mult: tuple = (1, 2, 2, 2)  # one multiplier per resolution level (32, 16, 8, 4 for CIFAR-10)
    num_res_blocks: int = 2  # residual blocks per level going down (one more going up)
    attn_resolutions: tuple = (16,)  # resolutions (side length) whose blocks get self-attention
    dropout: float = 0.1  # dropout inside every residual block (paper: 0.1 on CIFAR-10)
    num_classes: int | None = None  # class-conditional when set; label num_classes is the "null" label (guidance)
    num_groups: int = 32  # GroupNorm groups (paper: 32); must divide every channel count

    def __post_init__(self):
        # lists come back from JSON / checkpoints; keep tuples so configs compare and hash alike
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        for name in ("image_size", "in_channels", "out_channels", "ch", "num_res_blocks", "num_groups"):
            setattr(self, name, positive_int(getattr(self, name), f"UNetConfig.{name}"))
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"UNetConfig.ch_mult must be a non-empty tuple of positive integers, got {self.ch_mult}")
        factor = 2 ** (len(self.ch_mult) - 1)
        if self.image_size % factor:
            # SAME-padded stride-2 convs give ceil(r/2); up-sampling doubles, so an odd size would not come back
            raise ValueError(
                f"UNetConfig.image_size must be divisible by 2**(len(ch_mult)-1) = {factor}, got {self.image_size}"
            )
        bad = [c for c in {self.ch * m for m in self.ch_mult} if c % self.num_groups]
        if bad:
            raise ValueError(
                f"UNetConfig.num_groups={self.num_groups} must divide every level's channel count "
                f"ch * ch_mult = {[self.ch * m for m in self.ch_mult]}"
            )
        unknown = sorted(set(self.attn_resolutions) - set(self.resolutions))
        if unknown:
            raise ValueError(
                f"UNetConfig.attn_resolutions {unknown} are not among the levels' resolutions {self.resolutions}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise ValueError(f"UNetConfig.num_classes must be None or a positive integer, got {self.num_classes!r}")

    @property
    def resolutions(self) -> tuple:
        """Side length at each level: image_size, image_size/2, ..."""
        return tuple(self.image_size // 2**i for i in range(len(self.ch_mult)))

    @classmethod
    def ddpm_cifar10(cls, **overrides) -> UNetConfig:
        """The paper's CIFAR-10 model: 35,746,307 parameters (Ho et al. 2020, appendix B)."""
        base = dict(
            image_size=32,
            in_channels=3,
            out_channels=3,
            ch=128,
            ch_mult=(1, 2, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(16,),
            dropout=0.1,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def mnist(cls, **overrides) -> UNetConfig:
        """A small model for 28x28 digits that trains usefully on two CPU cores in minutes.

        Levels 28 -> 14 -> 7 with 32, 64, 64 channels, one residual block per level going down (two going up):
        1,112,801 parameters. Attention only at 7x7 (49 positions), where it is cheap. No dropout: CPU budgets
        stop training long before a model this size overfits, and dropout slows early progress (and costs
        about 10% of a CPU step). On 2 CPU cores a training step at batch 64 takes about 0.6 s.
        """
        base = dict(
            image_size=28,
            in_channels=1,
            out_channels=1,
            ch=32,
            ch_mult=(1, 2, 2),
            num_res_blocks=1,
            attn_resolutions=(7,),
            dropout=0.0,
        )
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        """The config as plain types (for checkpoints); UNetConfig(**d) rebuilds it."""
        d = asdict(self)
        d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return d


def _zero(module: nn.Module) -> nn.Module:
    # Ho et al. initialise the layers that close a residual branch at (near) zero, so every block starts
    # as the identity and the whole network starts by predicting 0.
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    module.zero_init = True  # so UNet._init_weights leaves it at zero
    return module


class ResBlock(nn.Module):
    """Wide-ResNet block: x + conv(drop(act(norm(conv(act(norm(x))) + dense(act(temb)))))).

    Ho et al. 2020, appendix B (their resnet_block). x: (B, C_in, H, W), temb_act = SiLU(temb): (B, E)
    -> (B, C_out, H, W). A 1x1 conv maps the shortcut when C_in != C_out.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb_act: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(temb_act)[:, :, None, None]  # the step enters as a per-channel bias
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions: x + proj(softmax(q k^T / sqrt(C)) v).

    Ho et al. 2020, appendix B (their attn_block); q, k, v, proj are 1x1 projections of GroupNorm(x), i.e.
    dense layers over the channels at every position (nn.Linear: PyTorch's CPU 1x1 conv is much slower).
    x: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, eps=NORM_EPS)
        self.q = nn.Linear(ch, ch)
        self.k = nn.Linear(ch, ch)
        self.v = nn.Linear(ch, ch)
        self.proj_out = _zero(nn.Linear(ch, ch))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).reshape(B, C, H * W).transpose(1, 2)  # (B, H*W, C): positions are the sequence
        q, k, v = (m(h)[:, None] for m in (self.q, self.k, self.v))  # (B, 1 head, H*W, C)
        a = F.scaled_dot_product_attention(q, k, v)[:, 0]  # default scale is C^-1/2, as in the paper's code
        return x + self.proj_out(a).transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    """3x3 conv with stride 2 and TensorFlow "SAME" padding: pad right and bottom by one.

    (B, C, H, W) -> (B, C, H/2, W/2).
    """

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        # TF's SAME padding for an even size, kernel 3, stride 2 puts the one padded row/column at the end;
        # symmetric padding=1 would shift the sampling grid by a pixel and not match the released weights.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv. (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the U-Net: residual blocks, each followed by attention or nothing, then a resampler."""

    def __init__(self, blocks: list, attns: list, resample: nn.Module | None):
        super().__init__()
        self.res = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)  # nn.Identity where the level has no attention, so indices line up
        self.resample = resample if resample is not None else nn.Identity()


class UNet(nn.Module):
    """The DDPM U-Net: (x_t (B, C, H, W), t (B,) integer, y (B,) or None) -> (B, out_channels, H, W).

    Ho et al. 2020, appendix B; see the module docstring for the layout. The time embedding is the
    sinusoidal embedding of the integer index t (0..T-1, the package's convention) as in the original code,
    then Linear(ch, 4ch), SiLU, Linear(4ch, 4ch). With num_classes set, an embedding of y is added to it;
    y = num_classes (or y=None) is the "null" label used for classifier-free guidance.
    """

    def __init__(self, config: UNetConfig | None = None, **overrides):
        super().__init__()
        if config is None:
            config = UNetConfig(**overrides)
        elif overrides:
            config = UNetConfig(**{**config.to_dict(), **overrides})
        self.config = c = config
        temb_dim = 4 * c.ch
        self.time_mlp = nn.Sequential(nn.Linear(c.ch, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.label_emb = nn.Embedding(c.num_classes + 1, temb_dim) if c.num_classes else None
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)

        def block(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, temb_dim, c.dropout, c.num_groups)

        def attn(o: int, r: int) -> nn.Module:
            return AttnBlock(o, c.num_groups) if r in c.attn_resolutions else nn.Identity()

        n_levels = len(c.ch_mult)
        skips = [c.ch]  # channel count of every skip, in the order the down path produces them
        h = c.ch
        self.down = nn.ModuleList()
        for i, (mult, r) in enumerate(zip(c.ch_mult, c.resolutions)):
            blocks, attns = [], []
            for _ in range(c.num_res_blocks):
                blocks.append(block(h, c.ch * mult))
                h = c.ch * mult
                attns.append(attn(h, r))
                skips.append(h)
            last = i == n_levels - 1
            self.down.append(Level(blocks, attns, None if last else Downsample(h)))
            if not last:
                skips.append(h)

        self.mid_res1 = block(h, h)
        self.mid_attn = AttnBlock(h, c.num_groups)
        self.mid_res2 = block(h, h)

        self.up = nn.ModuleList()  # in order of use: lowest resolution first
        for i in reversed(range(n_levels)):
            mult, r = c.ch_mult[i], c.resolutions[i]
            blocks, attns = [], []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(block(h + skips.pop(), c.ch * mult))
                h = c.ch * mult
                attns.append(attn(h, r))
            self.up.append(Level(blocks, attns, Upsample(h) if i > 0 else None))
        assert not skips, "every skip is consumed exactly once"

        self.norm_out = nn.GroupNorm(c.num_groups, h, eps=NORM_EPS)
        self.conv_out = _zero(nn.Conv2d(h, c.out_channels, 3, padding=1))
        self._init_weights()

    def _init_weights(self) -> None:
        # The original code initialises every conv and dense layer with variance scaling (fan_avg, uniform,
        # scale 1) = Xavier-uniform and zero biases; the residual-closing layers stay at zero.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not getattr(m, "zero_init", False):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def _check_inputs(self, x: Tensor, t, y: Tensor | None) -> tuple:
        c = self.config
        expected = f"(B, {c.in_channels}, {c.image_size}, {c.image_size})"
        if not torch.is_tensor(x) or x.ndim != 4 or tuple(x.shape[1:]) != (c.in_channels, c.image_size, c.image_size):
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x_t must be a tensor of shape {expected}, got {got}")
        if not x.is_floating_point():
            raise ValueError(f"x_t must be a floating-point tensor of shape {expected}, got dtype {x.dtype}")
        B = x.shape[0]
        # integer steps >= 0 of shape (B,); the network knows no schedule, so it cannot check t < T
        t = step_indices(batch_steps(t, B, x.device, batch=f"x_t of shape {tuple(x.shape)}"))
        if self.label_emb is None:
            if y is not None:
                raise ValueError("this model is unconditional (num_classes=None) but labels y were given")
        else:
            y = class_labels(null_labels(B, c.num_classes, x.device) if y is None else y, B, c.num_classes)
        return t, y

    def forward(self, x: Tensor, t, y: Tensor | None = None) -> Tensor:
        t, y = self._check_inputs(x, t, y)
        temb = self.time_mlp(timestep_embedding(t, self.config.ch).to(x.dtype))
        if self.label_emb is not None:
            temb = temb + self.label_emb(y)
        temb_act = F.silu(temb)  # every block applies SiLU before its projection: compute it once

        hs = [self.conv_in(x)]
        for level in self.down:
            for res, attn in zip(level.res, level.attn):
                hs.append(attn(res(hs[-1], temb_act)))
            if not isinstance(level.resample, nn.Identity):
                hs.append(level.resample(hs[-1]))

        h = hs[-1]
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, temb_act)), temb_act)

        for level in self.up:
            for res, attn in zip(level.res, level.attn):
                h = attn(res(torch.cat([h, hs.pop()], dim=1), temb_act))
            h = level.resample(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def config_dict(self) -> dict:
        """The config as plain types (for checkpoints)."""
        return self.config.to_dict()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _n(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_table(model: UNet) -> list[dict]:
    """Where a U-Net's parameters are: one row per part, in the order the input flows through them.

    Each row: part (name), resolution (side length, None for the time embedding), channels (out), blocks
    (residual blocks; attention ones counted in attention), and the parameters of its residual blocks, its
    attention, its resampler and in total. The totals add up to ``count_parameters(model)``.
    """
    if not isinstance(model, UNet):
        raise TypeError(f"model must be a UNet, got {type(model).__name__}")
    c = model.config
    rows = [dict(part="time embedding (sinusoid -> MLP)", resolution=None, channels=4 * c.ch, blocks=0,
                 res=0, attention=0, resample=0, total=_n(model.time_mlp))]  # fmt: skip
    if model.label_emb is not None:
        rows.append(dict(part="label embedding", resolution=None, channels=4 * c.ch, blocks=0, res=0, attention=0,
                         resample=0, total=_n(model.label_emb)))  # fmt: skip
    rows.append(dict(part="conv_in", resolution=c.image_size, channels=c.ch, blocks=0, res=0, attention=0,
                     resample=0, total=_n(model.conv_in)))  # fmt: skip

    def level_row(part: str, level: Level, r: int) -> dict:
        res, att, rs = _n(level.res), _n(level.attn), _n(level.resample)
        ch = level.res[-1].conv2.out_channels
        return dict(part=part, resolution=r, channels=ch, blocks=len(level.res), res=res, attention=att,
                    resample=rs, total=res + att + rs)  # fmt: skip

    for i, (level, r) in enumerate(zip(model.down, c.resolutions)):
        rows.append(level_row(f"down {i + 1}", level, r))
    mid_res, mid_att = _n(model.mid_res1) + _n(model.mid_res2), _n(model.mid_attn)
    rows.append(dict(part="middle", resolution=c.resolutions[-1], channels=model.mid_res1.conv2.out_channels,
                     blocks=2, res=mid_res, attention=mid_att, resample=0, total=mid_res + mid_att))  # fmt: skip
    for level, r in zip(model.up, reversed(c.resolutions)):
        rows.append(level_row(f"up at {r}x{r}", level, r))
    rows.append(dict(part="output (GroupNorm, conv_out)", resolution=c.image_size, channels=c.out_channels, blocks=0,
                     res=0, attention=0, resample=0, total=_n(model.norm_out) + _n(model.conv_out)))  # fmt: skip
    return rows
