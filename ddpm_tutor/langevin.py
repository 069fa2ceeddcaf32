"""Langevin dynamics and annealed Langevin dynamics: sampling from a density known only by its score.

Langevin dynamics (unadjusted Langevin algorithm; Song & Ermon 2019, eq. 4) draws from p(x) using only
its score grad_x log p(x):

    x_{k+1} = x_k + (h / 2) grad_x log p(x_k) + sqrt(h) z_k,   z_k ~ N(0, I).                  (1)

As h -> 0 and k -> infinity the law of x_k tends to p. With a finite step h it is slightly off (for a
Gaussian N(mu, s^2) the chain's stationary variance is s^2 / (1 - h / (4 s^2))), and when p has modes
separated by regions of low density it mixes between them so slowly that their relative weights are
not recovered in practice.

Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) runs (1) on a sequence of noise-smoothed
densities p_{sigma_1}, ..., p_{sigma_L} (sigma_1 > ... > sigma_L; p_sigma = p convolved with N(0, sigma^2 I)),
n_steps_each steps at each level, with the step size alpha_i = eps * sigma_i^2 / sigma_L^2, each level
starting where the previous one stopped. The large sigmas connect the modes; the small ones sharpen them.

Every function takes a ``torch.Generator`` so that runs are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .checks import generator_arg, positive_int
from .data.mixtures import GaussianMixture

Tensor = torch.Tensor

__all__ = [
    "langevin_update",
    "langevin_steps",
    "annealed_langevin",
    "LangevinState",
    "geometric_sigmas",
    "smoothed_mixture",
]


def _check_x(x) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim < 1 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor of shape (n, ...), got {getattr(x, 'dtype', type(x))}")
    if not torch.isfinite(x).all():
        raise ValueError("x must be finite, got NaN or inf")
    return x


def _check_step(step_size, what: str = "step_size") -> float:
    try:
        h = float(step_size)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a positive number, got {step_size!r}") from err
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"{what} must be a positive number, got {step_size!r}")
    return h


def _score(score_fn, x: Tensor, *args) -> Tensor:
    s = score_fn(x, *args)
    if not isinstance(s, Tensor) or s.shape != x.shape:
        raise ValueError(
            f"score_fn must return a tensor of the shape of x {tuple(x.shape)}, "
            f"got {tuple(getattr(s, 'shape', ())) or type(s).__name__}"
        )
    return s.to(x.dtype)


def langevin_update(x: Tensor, score: Tensor, step_size: float, noise: Tensor) -> Tensor:
    """One Langevin step, eq. (1): x + (h / 2) score + sqrt(h) noise (Song & Ermon 2019, eq. 4)."""
    h = _check_step(step_size)
    if score.shape != x.shape or noise.shape != x.shape:
        raise ValueError(
            f"score and noise must have the shape of x {tuple(x.shape)}, got "
            f"{tuple(score.shape)} and {tuple(noise.shape)}"
        )
    return x + 0.5 * h * score + math.sqrt(h) * noise


def _noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)


def _check_finite_state(x: Tensor, where: str) -> None:
    if not torch.isfinite(x).all():
        raise FloatingPointError(
            f"Langevin dynamics diverged ({where}): x became NaN or inf. The step size is "
            "too large for this score; lower it."
        )


@torch.no_grad()
def langevin_steps(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run ``n_steps`` steps of Langevin dynamics (eq. 1) from ``x`` and return the final state.

    score_fn(x) -> grad_x log p(x) of x's shape; x: (n, ...) float, each row one independent chain;
    step_size: h > 0 (the variance of the injected noise per step). Raises FloatingPointError if the
    chains diverge (h too large), ValueError on bad input.
    """
    generator = generator_arg(generator)
    x = _check_x(x).clone()
    h = _check_step(step_size)
    n_steps = positive_int(n_steps, "n_steps")
    for k in range(n_steps):
        x = langevin_update(x, _score(score_fn, x), h, _noise_like(x, generator))
    _check_finite_state(x, f"after {n_steps} steps of size {h:g}")
    return x


@dataclass
class LangevinState:
    """A state of annealed Langevin dynamics: x after ``step`` steps (0 = on entry) at noise level ``level``."""

    level: int
    step: int
    sigma: float
    x: Tensor


def _check_sigmas(sigmas) -> Tensor:
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    if s.ndim != 1 or s.numel() < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D sequence, got shape {tuple(s.shape)}")
    if not (torch.isfinite(s).all() and (s > 0).all()):
        raise ValueError("sigmas must be positive finite numbers")
    if s.numel() > 1 and not (s[1:] < s[:-1]).all():
        raise ValueError("sigmas must be strictly decreasing (sigma_1 > ... > sigma_L: from coarse to fine)")
    return s


def _annealed_iter(
    score_fn, x: Tensor, sigmas: Tensor, n_steps_each: int, eps_step: float, generator
) -> Iterator[LangevinState]:
    sigma_L = float(sigmas[-1])
    for i, sigma in enumerate(sigmas.tolist()):
        alpha = eps_step * sigma**2 / sigma_L**2  # Song & Ermon 2019, Algorithm 1, line 3
        yield LangevinState(i, 0, sigma, x)
        for k in range(n_steps_each):
            with torch.no_grad():
                x = langevin_update(x, _score(score_fn, x, i), alpha, _noise_like(x, generator))  # line 6
            yield LangevinState(i, k + 1, sigma, x)
        _check_finite_state(x, f"at level {i} (sigma = {sigma:g}, step size {alpha:g})")


def annealed_langevin(
    score_fn: Callable[[Tensor, int], Tensor],
    x: Tensor,
    sigmas: Sequence[float],
    n_steps_each: int,
    eps_step: float,
    generator: torch.Generator | None = None,
    yield_intermediates: bool = False,
):
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) from the initial points ``x``.

    For i = 1..L: alpha_i = eps_step * sigma_i^2 / sigma_L^2; repeat ``n_steps_each`` times
    x <- x + (alpha_i / 2) score_fn(x, i) + sqrt(alpha_i) z. ``score_fn(x, i)`` is the score of the data
    smoothed by noise of std ``sigmas[i]`` (index i from 0). ``sigmas`` must be strictly decreasing.

    Returns the final x, or, with ``yield_intermediates=True``, an iterator of :class:`LangevinState`
    (every state: on entry to each level, then after each step) for players and plots.
    """
    generator = generator_arg(generator)
    x = _check_x(x).clone()
    s = _check_sigmas(sigmas)
    n_steps_each = positive_int(n_steps_each, "n_steps_each")
    eps_step = _check_step(eps_step, "eps_step")
    it = _annealed_iter(score_fn, x, s, n_steps_each, eps_step, generator)
    if yield_intermediates:
        return it
    state = None
    for state in it:
        pass
    return state.x


def geometric_sigmas(sigma_max: float, sigma_min: float, n_levels: int) -> Tensor:
    """n_levels noise levels from sigma_max down to sigma_min, equally spaced in log (Song & Ermon 2019, sec. 5)."""
    hi, lo = _check_step(sigma_max, "sigma_max"), _check_step(sigma_min, "sigma_min")
    n_levels = positive_int(n_levels, "n_levels")
    if n_levels > 1 and not hi > lo:
        raise ValueError(f"sigma_max must exceed sigma_min, got {sigma_max!r} <= {sigma_min!r}")
    return torch.logspace(math.log10(hi), math.log10(lo), n_levels, dtype=torch.float64)


def smoothed_mixture(mixture: GaussianMixture, sigma: float) -> GaussianMixture:
    """The mixture convolved with N(0, sigma^2 I): the same weights and means, covariances S_k + sigma^2 I.

    This is the density p_sigma whose score annealed Langevin dynamics uses at level sigma (the
    variance-exploding smoothing x + sigma z of Song & Ermon 2019, where DDPM's ``diffused`` also shrinks x).
    """
    sigma = _check_step(sigma, "sigma")
    eye = torch.eye(mixture.dim, dtype=torch.float64)
    return GaussianMixture(mixture.weights, mixture.means, mixture.covs + sigma**2 * eye)
