"""Distances between two samples of points, with the noise floor that tells what "close" means.

Two finite samples of the same distribution are never at distance 0; the noise floor is the
distance between two independent data samples of the same size, and a model is judged by its
distance as a multiple of that floor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .checks import positive_int

Tensor = torch.Tensor


def _check_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x, y = torch.as_tensor(x).double(), torch.as_tensor(y).double()
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must be point sets (n, D) and (m, D) of equal D, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("samples must be finite, got NaN or inf (did sampling diverge?)")
    return x, y


def sliced_wasserstein(
    x: Tensor, y: Tensor, n_projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """Sliced 2-Wasserstein distance: sqrt of the mean over random directions of W_2^2 of the 1D projections.

    Rabin et al. 2011. x, y: (n, D) with equal n (1D W_2 between equal-size samples is the
    distance between sorted values).
    """
    x, y = _check_pair(x, y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"sliced_wasserstein needs equal sample sizes, got {x.shape[0]} and {y.shape[0]}")
    dirs = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, py = (x @ dirs).sort(dim=0).values, (y @ dirs).sort(dim=0).values
    return float(((px - py) ** 2).mean().sqrt())


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo 2013), V-statistic form."""
    x, y = _check_pair(x, y)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def noise_floor(
    draw: Callable[[int, torch.Generator], Tensor],
    n: int,
    metric: Callable = sliced_wasserstein,
    repeats: int = 5,
    seed: int = 0,
) -> float:
    """Mean distance between two independent data samples of size n: what a perfect model would score.

    draw(n, generator) -> (n, D) samples of the data distribution.
    """
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(repeats):
        a, b = draw(n, g), draw(n, g)
        values.append(metric(a, b, generator=g) if metric is sliced_wasserstein else metric(a, b))
    return float(sum(values) / len(values))


def energy_floor(draw: Callable[[int, torch.Generator], Tensor], n: int, seed: int = 0, pairs: int = 200_000) -> float:
    """The expected energy distance between two independent data samples of size n, in closed form.

    For i.i.d. samples the V-statistic of :func:`energy_distance` has mean 2 E|X - X'| / n exactly (the
    cross term has mean E|X - X'|, each within-sample term (1 - 1/n) of it); E|X - X'| is estimated from
    ``pairs`` independent pairs, far more precisely than by averaging a few data-vs-data distances.
    """
    g = torch.Generator().manual_seed(seed)
    a, b = torch.as_tensor(draw(pairs, g)).double(), torch.as_tensor(draw(pairs, g)).double()
    return float(2 * (a - b).norm(dim=1).mean() / n)


def compare_to_data(
    samples: Tensor | Sequence[Tensor],
    draw: Callable[[int, torch.Generator], Tensor],
    seed: int = 0,
    references: int = 1,
) -> dict:
    """Sliced Wasserstein and energy distance of ``samples`` to fresh data, each with its noise floor and ratio.

    ``samples``: one set (n, D), or a list of independent sets of equal n (e.g. the same sampler run with
    several seeds). Every set is compared with ``references`` independent data draws of size n and the
    distances are averaged over sets and draws. Both kinds of averaging matter: at n = 2,000 on two moons
    a *perfect* model (data compared with data) scored energy-distance ratios from 0.49 to 1.29 with one set
    of samples and 5 reference draws (12 trials), and from 0.79 to 1.32 as the mean over 5 sets (6 trials).
    """
    references = positive_int(references, "references")
    sets = [samples] if isinstance(samples, Tensor) else list(samples)
    if not sets or any(not isinstance(x, Tensor) or x.ndim != 2 for x in sets):
        raise ValueError("samples must be a tensor (n, D) or a non-empty list of them")
    n = sets[0].shape[0]
    if any(x.shape != sets[0].shape for x in sets):
        raise ValueError(f"sample sets must share one shape, got {[tuple(x.shape) for x in sets]}")
    g = torch.Generator().manual_seed(seed + 1)
    sws, eds = [], []
    for k, x in enumerate(sets):
        for r in range(references):
            ref = draw(n, g)
            sws.append(sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(seed + 1000 * r + k)))
            eds.append(energy_distance(x, ref))
    sw, ed = sum(sws) / len(sws), sum(eds) / len(eds)
    sw_floor = noise_floor(draw, n, sliced_wasserstein, repeats=10, seed=seed)
    ed_floor = energy_floor(draw, n, seed=seed)
    return {
        "n": n,
        "sets": len(sets),
        "references": references,
        "sliced_wasserstein": sw,
        "sw_floor": sw_floor,
        "sw_ratio": sw / sw_floor,
        "energy_distance": ed,
        "ed_floor": ed_floor,
        "ed_ratio": ed / ed_floor,
    }
