"""Distances between two samples of points, with the noise floor that tells what "close" means.

Two finite samples of the same distribution are never at distance 0; the noise floor is the
distance between two independent data samples of the same size, and a model is judged by its
distance as a multiple of that floor.
"""
from __future__ import annotations

from typing import Callable

import torch

Tensor = torch.Tensor


def _check_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x, y = torch.as_tensor(x).double(), torch.as_tensor(y).double()
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be point sets (n, D) and (m, D) of equal D, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("samples must be finite, got NaN or inf (did sampling diverge?)")
    return x, y


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256,
                       generator: torch.Generator | None = None) -> float:
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


def noise_floor(draw: Callable[[int, torch.Generator], Tensor], n: int, metric: Callable = sliced_wasserstein,
                repeats: int = 5, seed: int = 0) -> float:
    """Mean distance between two independent data samples of size n: what a perfect model would score.

    draw(n, generator) -> (n, D) samples of the data distribution.
    """
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(repeats):
        a, b = draw(n, g), draw(n, g)
        values.append(metric(a, b, generator=g) if metric is sliced_wasserstein else metric(a, b))
    return float(sum(values) / len(values))


def compare_to_data(samples: Tensor, draw: Callable[[int, torch.Generator], Tensor], seed: int = 0,
                    references: int = 1) -> dict:
    """Sliced Wasserstein and energy distance of ``samples`` to fresh data, each with its noise floor and ratio.

    The distances are averaged over ``references`` independent data draws of the samples' size (one draw
    is itself noisy: at n = 2,000 the ratio moves by about 0.2 from draw to draw).
    """
    if isinstance(references, bool) or not isinstance(references, int) or references < 1:
        raise ValueError(f"references must be a positive integer, got {references!r}")
    n = samples.shape[0]
    g = torch.Generator().manual_seed(seed + 1)
    sws, eds = [], []
    for r in range(references):
        ref = draw(n, g)
        sws.append(sliced_wasserstein(samples, ref, generator=torch.Generator().manual_seed(seed + 1000 * r)))
        eds.append(energy_distance(samples, ref))
    sw, ed = sum(sws) / references, sum(eds) / references
    sw_floor = noise_floor(draw, n, sliced_wasserstein, seed=seed)
    ed_floor = noise_floor(draw, n, energy_distance, seed=seed)
    return {"n": n, "references": references, "sliced_wasserstein": sw, "sw_floor": sw_floor,
            "sw_ratio": sw / sw_floor, "energy_distance": ed, "ed_floor": ed_floor, "ed_ratio": ed / ed_floor}
