"""Samplers: ancestral DDPM and DDIM, as plain functions of a model, a schedule and a torch.Generator.

The model is a :class:`~ddpm_tutor.diffusion.Denoiser` (which knows what its network predicts and which labels
it passes) or a plain eps model(x_t, t).

Each sampler has a ``*_steps`` generator that yields every intermediate state (for players and
plots) and a wrapper that returns the final sample. A step function (``ddpm_step``, ``ddim_step``)
does one update given the network output and the noise, so it can be checked against other code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .checks import batch_steps, positive_int, step_indices
from .diffusion import Parameterization, VarType, as_denoiser, p_from_prediction, to_x0_eps
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


def _check_x_T(x_T: Tensor | None, shape: Sequence[int]) -> None:
    if x_T is not None and tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T must have the shape {tuple(shape)}, got {tuple(x_T.shape)}")


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
    ``parameterization`` (eps_hat by default). Returns (x_{t-1}, x0_hat).
    """
    x0_hat, eps_hat = to_x0_eps(sched, x_t, t, model_out, parameterization)
    p = p_from_prediction(sched, x_t, t, x0_hat, eps_hat, var_type=var_type, clip_x0=clip_x0)
    nonzero = (t != 0).to(x_t.dtype).reshape((-1,) + (1,) * (x_t.ndim - 1))
    return p["mean"] + nonzero * p["variance"].sqrt() * noise, p["x0_hat"]


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
    device = torch.device(device) if device is not None else torch.device("cpu")
    if t_start is None:
        t_start = sched.T - 1
    elif isinstance(t_start, bool) or not hasattr(t_start, "__index__") or not 0 <= int(t_start) < sched.T:
        raise ValueError(f"t_start must be a step index in 0..{sched.T - 1}, got {t_start!r}")
    elif x_T is None:
        raise ValueError("t_start needs x_T, the state to start from at that step")
    t_start = int(t_start)
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


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """Evenly spaced step indices for a DDIM subsequence, largest first: (steps-1)k, ..., k, 0 with k = T // steps.

    Song et al. 2021, sec. 4.2 and appendix D.2 ("linear" spacing; diffusers' "leading").
    """
    positive_int(steps, "steps", most=T)
    k = T // steps
    return [i * k for i in range(steps)][::-1]


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
    sigma = eta sqrt((1 - ab_prev)/(1 - ab)) sqrt(1 - ab/ab_prev)  (Song et al. 2021, eq. 12 and 16).
    Returns (x_prev, x0_hat).
    """
    if not 0.0 <= eta:
        raise ValueError(f"eta must be >= 0 (0 is deterministic DDIM, 1 is DDPM-like), got {eta!r}")
    x0_hat, eps_hat = to_x0_eps(sched, x_t, t, model_out, parameterization)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        eps_hat = (x_t - sched.at("alpha_bar", t, x_t).sqrt() * x0_hat) / (1 - sched.at("alpha_bar", t, x_t)).sqrt()
    ab = sched.at("alpha_bar", t, x_t)
    t_prev = torch.as_tensor(t_prev, device=x_t.device)
    if int(t_prev.min()) < -1:
        raise ValueError(f"t_prev must lie in -1..{sched.T - 1} (-1 is x_0), got {int(t_prev.min())}")
    last = (t_prev < 0).reshape(ab.shape) if t_prev.ndim else t_prev < 0  # the step to x_0, where bar alpha = 1
    ab_prev = torch.where(last, 1.0, sched.at("alpha_bar", t_prev.clamp(min=0), x_t))
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp(min=0).sqrt()
    x_prev = ab_prev.sqrt() * x0_hat + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps_hat
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
    generator: torch.Generator | None = None,
    device=None,
    clip_x0: bool = False,
    x_T: Tensor | None = None,
    dtype=torch.float32,
) -> Iterator[SamplerState]:
    """Yield the states of DDIM over a subsequence of steps (Song et al. 2021, eq. 12).

    ``timesteps`` (decreasing step indices) overrides ``steps``; the default is ``ddim_timesteps(T, steps)``.
    """
    den = as_denoiser(model, sched)
    device = torch.device(device) if device is not None else torch.device("cpu")
    ts = list(timesteps) if timesteps is not None else ddim_timesteps(sched.T, steps)
    step_indices(torch.tensor(ts), sched.T)
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly decreasing, got {ts[:6]}...")
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
