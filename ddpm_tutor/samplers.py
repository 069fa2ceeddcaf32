"""Samplers: ancestral DDPM and DDIM, as plain functions of a model, a schedule and a torch.Generator.

The model is a :class:`~ddpm_tutor.diffusion.Denoiser` (which knows what its network predicts and which labels
it passes) or a plain eps model(x_t, t).

Each sampler has a ``*_steps`` generator that yields every intermediate state (for players and
plots) and a wrapper that returns the final sample. A step function (``ddpm_step``, ``ddim_step``)
does one update given the network output and the noise, so it can be checked against other code.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .checks import batch_steps, device_arg, flag, generator_arg, positive_int, real_in_range, step_indices
from .diffusion import VAR_TYPES, Parameterization, VarType, as_denoiser, check_model_out, p_from_prediction, to_x0_eps
from .schedules import Schedule

Tensor = torch.Tensor
Model = Callable[[Tensor, Tensor], Tensor]


@dataclass
class SamplerState:
    """One state of the reverse chain.

    t: the step index of x in the package's convention (the paper's step t + 1; t = -1 means x_0, the final
    sample). x0_hat: the prediction of x_0 made on the way to x, i.e. from the previous state (None for x_T).
    x0_hat_paper_t: the paper's step (1..T) at which x0_hat was made: the network saw x_t at that step. For the
    ancestral sampler it is ``paper_t + 1``; for DDIM it is the paper's step of the previous state of the
    subsequence. None when x0_hat is None.
    """

    t: int
    x: Tensor
    x0_hat: Tensor | None = None
    x0_hat_paper_t: int | None = None

    @property
    def paper_t(self) -> int:
        """The paper's step of x: T, ..., 1 for x_T, ..., x_1 and 0 for the final sample x_0."""
        return self.t + 1


def _noise(shape, generator, device, dtype) -> Tensor:
    # Drawn on the generator's device then moved, so a CPU generator gives the same numbers on any device.
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def _check_shape_dtype(shape, dtype) -> tuple[int, ...]:
    """The samples' shape as a tuple of positive ints (B, ...), and a floating dtype; refused otherwise."""
    ok = isinstance(shape, (tuple, list, torch.Size)) and len(shape) >= 1
    ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
    if not ok:
        raise ValueError(f"shape must be a tuple of positive ints (B, ...), e.g. (64, 2), got {shape!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype (e.g. torch.float32), got {dtype!r}")
    return tuple(shape)


def _check_x_T(x_T: Tensor | None, shape: Sequence[int]) -> None:
    if x_T is None:
        return
    if not torch.is_tensor(x_T) or not x_T.is_floating_point():
        got = f"dtype {x_T.dtype}" if torch.is_tensor(x_T) else type(x_T).__name__
        raise ValueError(f"x_T must be a floating-point tensor of shape {tuple(shape)}, got {got}")
    if tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T must have the shape {tuple(shape)}, got {tuple(x_T.shape)}")
    if not bool(torch.isfinite(x_T).all()):  # NaN or inf would run silently through every step
        raise ValueError("x_T must be finite, got NaN or inf values")


def _check_noise(noise, x_t: Tensor) -> None:
    # one draw per sample: noise of shape (1, ...) would broadcast and give every sample the same noise
    if not torch.is_tensor(noise) or not noise.is_floating_point() or noise.shape != x_t.shape:
        got = f"shape {tuple(noise.shape)} and dtype {noise.dtype}" if torch.is_tensor(noise) else type(noise).__name__
        raise ValueError(
            f"noise must be a floating-point tensor of exactly the shape of x_t {tuple(x_t.shape)}, one draw per "
            f"sample (it is not broadcast), got {got}"
        )


_ETA_NOTE = " (Song et al. 2021: 0 is deterministic DDIM, 1 is DDPM-like)"


def _span(v: Tensor) -> str:
    lo, hi = (int(a) for a in torch.aminmax(v))
    return str(lo) if lo == hi else f"{lo}..{hi}"


def _check_t_prev(t_prev, t: Tensor, T: int, B: int, eta: float) -> Tensor:
    """t_prev as a tensor on t's device: one step index or (B,) of them in -1..T-1, each below t when eta > 0 and
    never equal to it."""
    t_prev = torch.as_tensor(t_prev, device=t.device)
    integer = not (t_prev.is_floating_point() or t_prev.is_complex() or t_prev.dtype == torch.bool)
    if not integer or (t_prev.ndim and t_prev.shape != (B,)):
        raise ValueError(
            f"t_prev must be one integer step index or a tensor of shape ({B},) of them, in -1..{T - 1} "
            f"(-1 means the step to x_0), got dtype {t_prev.dtype} and shape {tuple(t_prev.shape)}"
        )
    out_of_range = (t_prev < -1) | (t_prev > T - 1)
    wrong_way = (t_prev >= t) if eta > 0 else (t_prev == t)
    if not t_prev.numel() or not bool((out_of_range | wrong_way).any()):  # one sync: this runs at every step
        return t_prev
    if bool(out_of_range.any()):
        raise ValueError(f"t_prev must lie in -1..{T - 1} (-1 means the step to x_0), got {_span(t_prev)}")
    top = f"{int(t.min()) - 1}" if t.numel() and int(t.min()) == int(t.max()) else "t-1"
    if eta > 0:
        raise ValueError(
            f"t_prev must lie in -1..{top}, below t (-1 means the step to x_0; only deterministic DDIM, eta = 0, "
            f"may step up from t, to invert the sampler), got t_prev {_span(t_prev)} at t {_span(t)} with eta {eta:g}"
        )
    raise ValueError(
        f"t_prev must differ from t: lie in -1..{top} (-1 means the step to x_0), or above t to run "
        f"deterministic DDIM backwards; got t_prev {_span(t_prev)} at t {_span(t)}"
    )


def ddpm_step(
    sched: Schedule,
    x_t: Tensor,
    t: Tensor,
    model_out: Tensor,
    noise: Tensor,
    *,
    parameterization: Parameterization = "eps",
    var_type: VarType = "fixed_small",
    clip_x0: bool = False,
) -> tuple[Tensor, Tensor]:
    """One ancestral step x_{t-1} = mu_theta(x_t, t) + sigma_t z, with no noise at the last step (t = 0).

    Ho et al. 2020, Algorithm 2, line 4. ``model_out`` is the network's output at (x_t, t), which predicts
    ``parameterization`` (eps_hat by default). ``noise``: z of exactly the shape of x_t (B, ...), one draw per
    sample. Returns (x_{t-1}, x0_hat).
    """
    flag(clip_x0, "clip_x0")
    if not torch.is_tensor(t) and not isinstance(t, bool):  # a plain int or list of step indices
        t = torch.as_tensor(t, device=x_t.device)
    check_model_out(model_out, x_t)
    _check_noise(noise, x_t)
    # float16/bfloat16 in, the step in float32: at high noise bar alpha underflows float16 (the cosine schedule's
    # last steps) and x0_hat = x_t / sqrt(bar alpha) becomes inf, its posterior weight 0: 0 * inf = NaN
    dtype = x_t.dtype
    work = torch.promote_types(dtype, torch.float32)
    x_t, model_out, noise = x_t.to(work), model_out.to(work), noise.to(work)
    x0_hat, eps_hat = to_x0_eps(sched, x_t, t, model_out, parameterization)
    p = p_from_prediction(sched, x_t, t, x0_hat, eps_hat, var_type=var_type, clip_x0=clip_x0)
    nonzero = (t != 0).to(work).reshape((-1,) + (1,) * (x_t.ndim - 1))
    return (p["mean"] + nonzero * p["variance"].sqrt() * noise).to(dtype), p["x0_hat"].to(dtype)


def ddpm_steps(
    model: Model,
    sched: Schedule,
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device=None,
    var_type: VarType = "fixed_small",
    clip_x0: bool = False,
    x_T: Tensor | None = None,
    t_start: int | None = None,
    dtype=torch.float32,
) -> Iterator[SamplerState]:
    """Yield x_T, x_{T-1}, ..., x_0 of the ancestral sampler (Ho et al. 2020, Algorithm 2).

    States are SamplerState(t, x, x0_hat, x0_hat_paper_t) where t is the step index of x (T-1 ... 0, then -1
    for x_0) and x0_hat was predicted from the previous state, at the paper's step x0_hat_paper_t = t + 2.
    With ``t_start`` the chain starts from ``x_T`` held at that step index (the paper's t_start + 1) instead
    of at T - 1: copies of one x_t finished with fresh noise (Ho et al. 2020, Figure 7).
    """
    den = as_denoiser(model, sched)
    device, generator = device_arg(device), generator_arg(generator)
    flag(clip_x0, "clip_x0")
    if var_type not in VAR_TYPES:
        raise ValueError(f"var_type must be one of {VAR_TYPES}, got {var_type!r}")
    if t_start is None:
        t_start = sched.T - 1
    else:
        is_bool = isinstance(t_start, bool) or getattr(t_start, "dtype", None) == torch.bool
        try:  # an int or an integer tensor of one element; a float (tensor) is refused, not truncated by int()
            index = None if is_bool else operator.index(t_start)
        except TypeError:
            index = None
        if index is None or not 0 <= index < sched.T:
            raise ValueError(f"t_start must be a step index in 0..{sched.T - 1}, got {t_start!r}")
        if x_T is None:
            raise ValueError("t_start needs x_T, the state to start from at that step")
        t_start = index
    shape = _check_shape_dtype(shape, dtype)
    _check_x_T(x_T, shape)
    x = _noise(tuple(shape), generator, device, dtype) if x_T is None else x_T.to(device)
    yield SamplerState(t_start, x)
    for step in range(t_start, -1, -1):
        t = batch_steps(step, x.shape[0], device)
        with torch.no_grad():
            out = den.model_out(x, t)
        z = _noise(x.shape, generator, device, x.dtype) if step > 0 else torch.zeros_like(x)
        # the step gets t as one number: every row shares it, and one table lookup beats B of them
        x, x0_hat = ddpm_step(
            sched,
            x,
            torch.tensor(step, device=device),
            out,
            z,
            parameterization=den.parameterization,
            var_type=var_type,
            clip_x0=clip_x0,
        )
        yield SamplerState(step - 1, x, x0_hat, x0_hat_paper_t=step + 1)


def ddpm_sample(model: Model, sched: Schedule, shape: Sequence[int], **kwargs) -> Tensor:
    """Run the ancestral sampler to the end and return x_0 of shape ``shape``. Keywords as ddpm_steps."""
    for state in ddpm_steps(model, sched, shape, **kwargs):
        pass
    return state.x


SPACINGS = ("leading", "trailing", "quadratic")


def ddim_timesteps(T: int, steps: int, spacing: str = "leading") -> list[int]:
    """Step indices of a DDIM subsequence of ``steps`` distinct steps, largest first.

    leading: (steps-1)k, ..., k, 0 with k = T // steps (Song et al. 2021, sec. 4.2 and appendix D.2, "linear";
    diffusers' "leading"); trailing: T-1, T-1-k, ..., k-1 with k = T / steps rounded (Lin et al. 2024, sec. 3.3;
    diffusers' "trailing"); quadratic: floor((i sqrt(0.8 T) / (steps-1))^2) for i = 0..steps-1, the
    spacing Song et al. used for CIFAR-10 (appendix D.2 and their code), dense at low noise and starting at
    0.8 T; where two would coincide near 0 the later is moved up by one so that all ``steps`` are distinct.
    """
    T = positive_int(T, "T")
    steps = positive_int(steps, "steps", most=T)
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if spacing == "leading":
        k = T // steps
        return [i * k for i in range(steps)][::-1]
    if spacing == "trailing":
        return [round(T - i * T / steps) - 1 for i in range(steps)]
    root = math.sqrt(0.8 * T)  # as numpy.linspace(0, root, steps) ** 2, whose last point is root exactly
    ts: list[int] = []
    for i in range(steps):
        r = root if i == steps - 1 else i * (root / max(steps - 1, 1))
        ts.append(max(int(r * r), ts[-1] + 1 if ts else 0))
    if ts[-1] > T - 1:  # only when steps is close to T: fall back to the last steps below T
        ts = list(range(T - steps, T))
    return ts[::-1]


def ddim_step(
    sched: Schedule,
    x_t: Tensor,
    t: Tensor,
    t_prev: Tensor,
    model_out: Tensor,
    noise: Tensor | None,
    *,
    eta: float = 0.0,
    parameterization: Parameterization = "eps",
    clip_x0: bool = False,
) -> tuple[Tensor, Tensor]:
    """One DDIM update from step t to step t_prev < t (t_prev = -1 means to x_0, where bar alpha = 1).

    x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - ab_prev)/(1 - ab)) sqrt(1 - ab/ab_prev)  (Song et al. 2021, eq. 12 and 16), eta in [0, 1].
    With eta = 0, t_prev > t runs the deterministic update backwards (encoding x_0 into x_T, Song et al. sec. 5.4).
    t, t_prev: one step index or (B,); ``noise``: z of exactly the shape of x_t (B, ...), needed when eta > 0.
    Returns (x_prev, x0_hat).
    """
    eta = real_in_range(eta, "eta", 0.0, 1.0, _ETA_NOTE)
    flag(clip_x0, "clip_x0")
    x0_hat, eps_hat = to_x0_eps(sched, x_t, t, model_out, parameterization)
    if noise is not None:
        _check_noise(noise, x_t)
    # the coefficients in the schedule's float64, cast at the end: in float16, bar alpha near 1 rounds to 1 and
    # sigma (and the eps re-derived from a clipped x0_hat) would be 0/0
    wide = x_t.new_zeros((), dtype=torch.float64).expand(x_t.shape)
    ab = sched.at("alpha_bar", t, wide)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        eps_hat = (x_t - ab.sqrt().to(x_t.dtype) * x0_hat) / (1 - ab).sqrt().to(x_t.dtype)
    t_prev = _check_t_prev(t_prev, torch.as_tensor(t, device=x_t.device), sched.T, x_t.shape[0], eta)
    ab_prev = sched.at("alpha_bar", t_prev.clamp(min=0), wide)
    ab_prev = torch.where((t_prev < 0).reshape(ab_prev.shape), 1.0, ab_prev)  # the step to x_0: bar alpha = 1
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp(min=0).sqrt()
    c_x0, c_eps = ab_prev.sqrt().to(x_t.dtype), (1 - ab_prev - sigma**2).clamp(min=0).sqrt().to(x_t.dtype)
    sigma = sigma.to(x_t.dtype)
    x_prev = c_x0 * x0_hat + c_eps * eps_hat
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise of the shape of x_t")
        x_prev = x_prev + sigma * noise
    return x_prev, x0_hat


def ddim_steps(
    model: Model,
    sched: Schedule,
    shape: Sequence[int],
    *,
    steps: int = 50,
    eta: float = 0.0,
    timesteps: Sequence[int] | None = None,
    spacing: str = "leading",
    generator: torch.Generator | None = None,
    device=None,
    clip_x0: bool = False,
    x_T: Tensor | None = None,
    dtype=torch.float32,
) -> Iterator[SamplerState]:
    """Yield the states of DDIM over a subsequence of steps (Song et al. 2021, eq. 12).

    ``timesteps`` (decreasing step indices) overrides ``steps`` (an int in 1..T) and ``spacing``; the default
    is ``ddim_timesteps(T, steps, spacing)``. ``eta`` in [0, 1]: 0 is deterministic; 1 with steps = T is the
    ancestral sampler with var_type "fixed_small".
    """
    den = as_denoiser(model, sched)
    device, generator = device_arg(device), generator_arg(generator)
    eta = real_in_range(eta, "eta", 0.0, 1.0, _ETA_NOTE)
    flag(clip_x0, "clip_x0")
    ts = list(timesteps) if timesteps is not None else ddim_timesteps(sched.T, steps, spacing)
    if not ts:
        raise ValueError("timesteps must hold at least one step index, got an empty sequence")
    step_indices(torch.tensor(ts), sched.T)
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly decreasing, got {ts[:6]}...")
    shape = _check_shape_dtype(shape, dtype)
    _check_x_T(x_T, shape)
    x = _noise(tuple(shape), generator, device, dtype) if x_T is None else x_T.to(device)
    yield SamplerState(ts[0], x)
    for i, step in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        t = batch_steps(step, x.shape[0], device)
        with torch.no_grad():
            out = den.model_out(x, t)
        z = _noise(x.shape, generator, device, x.dtype) if eta > 0 else None
        x, x0_hat = ddim_step(
            sched,
            x,
            torch.tensor(step, device=device),
            torch.tensor(prev, device=device),
            out,
            z,
            eta=eta,
            parameterization=den.parameterization,
            clip_x0=clip_x0,
        )
        yield SamplerState(prev, x, x0_hat, x0_hat_paper_t=step + 1)


def ddim_sample(model: Model, sched: Schedule, shape: Sequence[int], **kwargs) -> Tensor:
    """Run DDIM to the end and return x_0 of shape ``shape``. Keywords as ddim_steps."""
    for state in ddim_steps(model, sched, shape, **kwargs):
        pass
    return state.x


def sample(model: Model, sched: Schedule, shape: Sequence[int], *, sampler: str = "ddpm", **kwargs) -> Tensor:
    """Dispatch to ``ddpm_sample`` or ``ddim_sample`` by name."""
    if sampler == "ddpm":
        return ddpm_sample(model, sched, shape, **kwargs)
    if sampler == "ddim":
        return ddim_sample(model, sched, shape, **kwargs)
    raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
