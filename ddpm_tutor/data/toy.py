"""Two-dimensional toy data sets, scaled to roughly unit variance."""

from __future__ import annotations

import math

import torch
from sklearn import datasets as skd

from ..checks import generator_arg, positive_int

Tensor = torch.Tensor
TOY2D = ("moons", "swiss_roll", "8gaussians", "checkerboard")


def _seed_from(generator: torch.Generator | None) -> int:
    # scikit-learn wants an int seed; derive it from the torch generator so one seed drives everything
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def toy2d(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n points (n, 2) float32 of a named 2D toy distribution, centred and scaled to about unit std.

    moons are the two half circles of scikit-learn's make_moons with noise 0.05, drawn independently;
    swiss_roll comes from scikit-learn (make_swiss_roll); 8gaussians is a ring of
    eight narrow Gaussians; checkerboard is uniform on the dark squares of a 4x4 board.
    """
    generator = generator_arg(generator)
    n = positive_int(n, "n")
    if name == "moons":
        # drawn here rather than by scikit-learn's make_moons, which places the points at evenly spaced angles
        # and splits them n/2 : n/2: its draws are more regular than independent samples, so two of them agree
        # better than any sampler can, and a perfect sampler scored an energy distance about 2x that "floor"
        n_outer = int(torch.binomial(torch.tensor(float(n)), torch.tensor(0.5), generator=generator))
        angle = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
        outer = torch.arange(n) < n_outer
        x = torch.stack(
            [
                torch.where(outer, torch.cos(angle), 1 - torch.cos(angle)),
                torch.where(outer, torch.sin(angle), 0.5 - torch.sin(angle)),
            ],
            dim=1,
        )
        x = x + 0.05 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
        x = x[torch.randperm(n, generator=generator)].float()
        return (x - torch.tensor([0.5, 0.25])) / torch.tensor([0.87, 0.5]) * 0.8
    if name == "swiss_roll":
        x, _ = skd.make_swiss_roll(n, noise=0.3, random_state=_seed_from(generator))
        return torch.as_tensor(x[:, [0, 2]], dtype=torch.float32) / 7.5
    if name == "8gaussians":
        k = torch.randint(0, 8, (n,), generator=generator)
        angle = k.float() * (2 * math.pi / 8)
        centres = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) * 1.5
        return centres + 0.1 * torch.randn(n, 2, generator=generator)
    if name == "checkerboard":
        u = torch.rand(n, 2, generator=generator) * 4  # cell coordinates in [0, 4)
        cell = u.floor()
        # move points on light squares one cell to the right (wrapping) so all land on dark squares
        light = (cell.sum(dim=1) % 2) == 1
        u[light, 0] = (u[light, 0] + 1) % 4
        return (u - 2) * 0.75
    raise ValueError(f"name must be one of {TOY2D}, got {name!r}")


def checkerboard_off_fraction(x: Tensor) -> float:
    """Fraction of points (n, 2) off the dark squares of :func:`toy2d`'s checkerboard (0 for its data).

    Distances between point sets barely see rounded corners of the squares; this counts the samples that
    fall on light squares or outside the board, which a perfect sampler never draws.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim != 2 or x.shape[1] != 2 or x.shape[0] < 1:
        raise ValueError(f"x must be points (n, 2), got {tuple(x.shape)}")
    u = x / 0.75 + 2  # back to cell coordinates in [0, 4)
    cell = u.floor()
    inside = ((u >= 0) & (u < 4)).all(dim=1)
    dark = (cell.sum(dim=1) % 2) == 0
    return float(1 - (inside & dark).double().mean())
