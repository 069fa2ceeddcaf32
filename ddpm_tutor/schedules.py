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

from .checks import positive_int, real_in_range, step_indices

Tensor = torch.Tensor
MAX_T = 1_000_000  # the most steps a schedule may have: eleven float64 tables of T entries (88 MB at this T)
# bar alpha may not fall below float64's smallest normal number: 1 / SNR (the "x0" loss weight) and
# log bar alpha stay finite, and consecutive products stay strictly decreasing
MIN_ALPHA_BAR = torch.finfo(torch.float64).tiny
TABLES = (  # the names Schedule.at gathers from
    "beta",
    "alpha",
    "alpha_bar",
    "alpha_bar_prev",
    "beta_tilde",
    "log_beta_tilde_clipped",
    "posterior_coef_x0",
    "posterior_coef_xt",
    "snr",
    "log_snr",
)


def _check_T(T) -> int:
    T = positive_int(T, "T")
    if T > MAX_T:
        raise ValueError(f"T must be at most {MAX_T:,} (each table holds T float64 entries), got {T!r}")
    return T


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
    alpha_bar = torch.cumprod(1.0 - beta, dim=0)
    if alpha_bar[-1] < MIN_ALPHA_BAR:
        i = int((alpha_bar < MIN_ALPHA_BAR).nonzero()[0])
        raise ValueError(
            f"beta is too large for its length: bar alpha = prod(1 - beta) must stay above {MIN_ALPHA_BAR:.3g} "
            f"(float64's smallest normal number), but falls to {alpha_bar[i].item():.3g} at step index {i} of "
            f"{beta.numel()}; use fewer steps or smaller betas"
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
        T = _check_T(T)
        beta_1 = real_in_range(beta_1, "beta_1", 0.0, 1.0, open_lo=True, open_hi=True)
        beta_T = real_in_range(beta_T, "beta_T", 0.0, 1.0, open_lo=True, open_hi=True)
        if T == 1:
            beta = torch.tensor([beta_1], dtype=torch.float64)
        else:
            beta = torch.linspace(beta_1, beta_T, T, dtype=torch.float64)
        return cls._made_by(f"Schedule.linear(T={T}, beta_1={beta_1!r}, beta_T={beta_T!r})", beta, "linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
        """Cosine schedule: bar alpha(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2).

        Nichol & Dhariwal 2021, eq. 17; beta clipped at ``max_beta`` as there.
        """
        T = _check_T(T)
        s = real_in_range(s, "s", 0.0, math.inf, " (the offset of t/T, 0.008 in the paper)", open_hi=True)
        max_beta = real_in_range(max_beta, "max_beta", 0.0, 1.0, open_lo=True, open_hi=True)
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        beta = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls._made_by(f"Schedule.cosine(T={T}, s={s!r}, max_beta={max_beta!r})", beta, "cosine")

    @classmethod
    def _made_by(cls, call: str, beta: Tensor, name: str) -> Schedule:
        """``cls(beta, name)``, an invalid beta reported with the ``call`` that made it (its arguments at fault)."""
        try:
            return cls(beta, name=name)
        except ValueError as err:
            raise ValueError(f"{call} gives no valid schedule: {err}") from None

    @classmethod
    def from_alpha_bar(cls, alpha_bar, name: str = "custom") -> Schedule:
        """Schedule whose cumulative products are the given strictly decreasing ``alpha_bar`` in (0, 1)."""
        try:
            ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"alpha_bar must be a 1-D sequence of numbers, got {type(alpha_bar).__name__}") from None
        if ab.ndim != 1 or ab.numel() < 1:
            raise ValueError(f"alpha_bar must be a non-empty 1-D table, got shape {tuple(ab.shape)}")
        prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        return cls._made_by("Schedule.from_alpha_bar(alpha_bar) (strictly decreasing in (0, 1))", 1 - ab / prev, name)

    @classmethod
    def get(cls, name: str, T: int = 1000) -> Schedule:
        """Schedule by name: ``"linear"`` (the paper's, scaled to keep bar alpha_T roughly when T != 1000) or
        ``"cosine"``."""
        if name == "linear":
            # Scaling beta by 1000/T (Nichol & Dhariwal 2021) keeps the sum of the betas, so bar alpha_T stays
            # roughly where it was (2.0e-5 at T = 100, 4.0e-5 at T = 1000, 4.2e-5 at T = 4000). It does not keep
            # the first step: SNR(1) = 1/beta_1 - 1 scales with T/1000 (about 1e3 at T = 100, 1e4 at T = 1000).
            scale = 1000 / _check_T(T)
            return cls.linear(T, 1e-4 * scale, min(0.02 * scale, 0.999))
        if name == "cosine":
            return cls.cosine(_check_T(T))
        raise ValueError(f"schedule name must be 'linear' or 'cosine', got {name!r}")

    # use ----------------------------------------------------------------------------
    def at(self, table: str | Tensor, t: Tensor, x: Tensor) -> Tensor:
        """Gather ``table[t]`` and shape it to broadcast against ``x`` (batch first).

        t: integer tensor of shape (B,) or scalar; returns shape (B, 1, ..., 1) in x's dtype and device.
        ``table``: the name of one of the tables (TABLES) or a 1-D tensor of T values; x: a floating-point tensor.
        """
        if not torch.is_tensor(x) or not x.is_floating_point():
            got = f"dtype {x.dtype}" if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must be a floating-point tensor (the table is cast to its dtype), got {got}")
        if isinstance(table, str):
            if table not in TABLES:
                raise ValueError(f"table must be one of {TABLES} or a 1-D tensor, got {table!r}")
            key = (table, x.device, x.dtype)
            values = self._cast.get(key)
            if values is None:
                values = self._cast[key] = getattr(self, table).to(device=x.device, dtype=x.dtype)
        elif torch.is_tensor(table) and table.ndim == 1:
            values = table.to(x.device)
        else:
            got = f"shape {tuple(table.shape)}" if torch.is_tensor(table) else type(table).__name__
            raise ValueError(f"table must be one of {TABLES} or a 1-D tensor, got {got}")
        t = step_indices(t, values.numel())
        if t.ndim and (x.ndim == 0 or t.shape != x.shape[:1]):  # (1,) against a batch of B would broadcast
            raise ValueError(
                f"t must be one step index or have shape (B,) to match x of shape {tuple(x.shape)}"
                f"{f', i.e. shape ({x.shape[0]},)' if x.ndim else ''}; got shape {tuple(t.shape)}"
            )
        out = values[t.to(x.device)]
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        return out.reshape(out.shape + (1,) * (x.ndim - out.ndim))
