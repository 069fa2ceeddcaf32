"""Noise schedules: the beta table and every quantity derived from it.

Time indexing, stated once for the whole package
------------------------------------------------
The paper counts diffusion steps t = 1, ..., T. In code, an integer ``t`` in
``0, ..., T-1`` is an index into the tables below and stands for the paper's
step ``t + 1``. So ``beta[0]`` is the paper's beta_1 and ``alpha_bar[T-1]`` is
the paper's bar alpha_T. This is the convention of the original DDPM code,
improved-diffusion and ``diffusers``, and it is what networks see as their time
input (0..999 for T = 1000). ``alpha_bar_prev[t]`` is bar alpha of the step
before (``alpha_bar_prev[0] = 1``: x_0 is the data).

All tables are computed in float64 and cast to the data's dtype when used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .checks import positive_int, step_indices

Tensor = torch.Tensor


def _check_beta(beta: Tensor) -> Tensor:
    if not isinstance(beta, Tensor):
        try:
            beta = torch.as_tensor(beta, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"beta must be a 1-D sequence of numbers, got {type(beta).__name__}") from err
    beta = beta.detach().to(device="cpu", dtype=torch.float64)
    if beta.ndim != 1:
        raise ValueError(f"beta must be a 1-D table of length T, got shape {tuple(beta.shape)}")
    if beta.numel() < 1:
        raise ValueError("beta must have at least one entry (T >= 1), got an empty table")
    if not torch.isfinite(beta).all():
        raise ValueError("beta must be finite, got NaN or inf")
    if not ((beta > 0) & (beta < 1)).all():
        bad = beta[(beta <= 0) | (beta >= 1)]
        raise ValueError(f"every beta must lie in the open interval (0, 1), got e.g. {bad[0].item()!r}")
    if ((1.0 - beta) == 1.0).any():
        raise ValueError(
            f"every beta must be large enough that 1 - beta < 1 in float64 (about 1e-16 or more), "
            f"got {beta.min().item()!r}"
        )
    return beta


@dataclass(frozen=True)
class Schedule:
    """A variance schedule beta_1..beta_T and its derived tables (float64, shape (T,)).

    Ho et al. 2020, eq. 4 (q(x_t | x_0)), eq. 6-7 (posterior); Kingma et al. 2021 (SNR).
    """

    beta: Tensor
    name: str = "custom"
    alpha: Tensor = field(init=False, repr=False)
    alpha_bar: Tensor = field(init=False, repr=False)
    alpha_bar_prev: Tensor = field(init=False, repr=False)
    beta_tilde: Tensor = field(init=False, repr=False)
    # log beta_tilde with the t=1 entry (which is 0) replaced by that of t=2, as in the paper's code
    log_beta_tilde_clipped: Tensor = field(init=False, repr=False)
    # mu_tilde = coef_x0 * x_0 + coef_xt * x_t  (Ho et al. 2020, eq. 7)
    posterior_coef_x0: Tensor = field(init=False, repr=False)
    posterior_coef_xt: Tensor = field(init=False, repr=False)
    snr: Tensor = field(init=False, repr=False)
    log_snr: Tensor = field(init=False, repr=False)
    # tables already moved to a (device, dtype): samplers gather from them at every one of T steps
    _cast: dict = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self):
        beta = _check_beta(self.beta)
        alpha = 1.0 - beta
        alpha_bar = torch.cumprod(alpha, dim=0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        beta_tilde = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        log_bt = torch.log(torch.cat([beta_tilde[1:2], beta_tilde[1:]])) if len(beta) > 1 else torch.log(beta)
        set_ = object.__setattr__
        set_(self, "beta", beta)
        set_(self, "alpha", alpha)
        set_(self, "alpha_bar", alpha_bar)
        set_(self, "alpha_bar_prev", alpha_bar_prev)
        set_(self, "beta_tilde", beta_tilde)
        set_(self, "log_beta_tilde_clipped", log_bt)
        set_(self, "posterior_coef_x0", beta * alpha_bar_prev.sqrt() / (1.0 - alpha_bar))
        set_(self, "posterior_coef_xt", (1.0 - alpha_bar_prev) * alpha.sqrt() / (1.0 - alpha_bar))
        set_(self, "snr", alpha_bar / (1.0 - alpha_bar))
        set_(self, "log_snr", torch.log(alpha_bar) - torch.log1p(-alpha_bar))

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return self.beta.numel()

    # constructors -----------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> Schedule:
        """The paper's linear schedule: beta_t from beta_1 to beta_T (Ho et al. 2020, sec. 4)."""
        T = positive_int(T, "T")
        if T == 1:
            return cls(torch.tensor([beta_1], dtype=torch.float64), name="linear")
        return cls(torch.linspace(beta_1, beta_T, T, dtype=torch.float64), name="linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
        """Cosine schedule: bar alpha(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2).

        Nichol & Dhariwal 2021, eq. 17; beta clipped at ``max_beta`` as there.
        """
        T = positive_int(T, "T")
        if not (0 < max_beta < 1):
            raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        beta = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls(beta, name="cosine")

    @classmethod
    def from_alpha_bar(cls, alpha_bar, name: str = "custom") -> Schedule:
        """Schedule whose cumulative products are the given strictly decreasing ``alpha_bar`` in (0, 1)."""
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
        if ab.ndim != 1 or ab.numel() < 1:
            raise ValueError(f"alpha_bar must be a non-empty 1-D table, got shape {tuple(ab.shape)}")
        prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        return cls(1 - ab / prev, name=name)

    @classmethod
    def get(cls, name: str, T: int = 1000) -> Schedule:
        """Schedule by name: ``"linear"`` (the paper's, scaled to keep bar alpha_T roughly when T != 1000) or
        ``"cosine"``."""
        if name == "linear":
            # Scaling beta by 1000/T (Nichol & Dhariwal 2021) keeps the sum of the betas, so bar alpha_T stays
            # roughly where it was (2.0e-5 at T = 100, 4.0e-5 at T = 1000, 4.2e-5 at T = 4000). It does not keep
            # the first step: SNR(1) = 1/beta_1 - 1 scales with T/1000 (about 1e3 at T = 100, 1e4 at T = 1000).
            scale = 1000 / positive_int(T, "T")
            return cls.linear(T, 1e-4 * scale, min(0.02 * scale, 0.999))
        if name == "cosine":
            return cls.cosine(T)
        raise ValueError(f"schedule name must be 'linear' or 'cosine', got {name!r}")

    # use ----------------------------------------------------------------------------
    def at(self, table: str | Tensor, t: Tensor, x: Tensor) -> Tensor:
        """Gather ``table[t]`` and shape it to broadcast against ``x`` (batch first).

        t: integer tensor of shape (B,) or scalar; returns shape (B, 1, ..., 1) in x's dtype and device.
        """
        if isinstance(table, str):
            key = (table, x.device, x.dtype)
            values = self._cast.get(key)
            if values is None:
                values = self._cast[key] = getattr(self, table).to(device=x.device, dtype=x.dtype)
        else:
            values = table.to(x.device)
        t = step_indices(t, values.numel())
        out = values[t.to(x.device)]
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        return out.reshape(out.shape + (1,) * (x.ndim - out.ndim))
