"""Self-checks for Part II, chapters 1-3: the ELBO, the three objectives and Tweedie's formula, Langevin.

Each ``check_*`` takes the learner's function, runs it on a few cases and compares with the library.
A function that still raises ``NotImplementedError`` counts as "not attempted yet": a line is printed
and ``None`` returned, so an executed notebook never errors on an empty exercise. A wrong answer raises
:class:`~ddpm_tutor.exercises.CheckFailed` saying where it first goes wrong.
"""

from __future__ import annotations

import torch

from ..data.mixtures import GaussianMixture
from ..elbo import prior_kl
from ..langevin import langevin_update
from ..schedules import Schedule
from ._check import attempt, check_close

__all__ = ["check_prior_kl", "check_tweedie", "check_langevin_update"]


def check_prior_kl(fn) -> str | None:
    """Check ``fn(alpha_bar_T, x0) -> KL(q(x_T | x_0) || N(0, 1))`` per element, in nats (chapter II.1)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, generator=g, dtype=torch.float64) * 1.5
    cases = [
        ("paper's linear schedule, T = 1000", Schedule.linear(1000)),
        ("a short schedule, T = 5", Schedule.get("linear", 5)),
        ("a noisy end point, bar alpha_T = 0.3", Schedule.from_alpha_bar([0.6, 0.3])),
    ]
    for label, sched in cases:
        ok, got = attempt(fn, "prior_kl", float(sched.alpha_bar[-1]), x0.clone())
        if not ok:
            return None
        check_close(
            f"prior_kl ({label})",
            got,
            prior_kl(sched, x0),
            atol=1e-9,
            rtol=1e-6,
            hint="KL(N(mu1, v1) || N(0, 1)) = (v1 + mu1^2 - 1 - log v1) / 2 with mu1 = sqrt(ab) x0, v1 = 1 - ab.",
        )
    msg = "prior_kl: correct on all three schedules"
    print(msg)
    return msg


def check_tweedie(fn) -> str | None:
    """Check ``fn(x_t, alpha_bar, score) -> E[x_0 | x_t]`` by Tweedie's formula (chapter II.2).

    Compared with the exact posterior mean of a Gaussian mixture computed by Gaussian conditioning.
    """
    gm = GaussianMixture(
        torch.tensor([0.3, 0.7]),
        torch.tensor([[-1.0, 0.5], [1.2, -0.3]]),
        torch.tensor([[[0.2, 0.05], [0.05, 0.1]], [[0.1, 0.0], [0.0, 0.3]]]),
    )
    g = torch.Generator().manual_seed(1)
    for a in (0.98, 0.5, 0.05):
        x_t = gm.diffused(a).sample(8, g)
        score = gm.diffused(a).score(x_t)
        ok, got = attempt(fn, "tweedie", x_t.clone(), a, score.clone())
        if not ok:
            return None
        check_close(
            f"tweedie (alpha_bar = {a})",
            got,
            gm.posterior_mean_x0(x_t, a),
            atol=1e-8,
            rtol=1e-6,
            hint="E[sqrt(ab) x_0 | x_t] = x_t + (1 - ab) * score; then divide by sqrt(ab).",
        )
    msg = "tweedie: correct at alpha_bar = 0.98, 0.5 and 0.05"
    print(msg)
    return msg


def check_langevin_update(fn) -> str | None:
    """Check ``fn(x, score, step_size, noise) -> x'``, one step of Langevin dynamics (chapter II.3)."""
    g = torch.Generator().manual_seed(2)
    for h in (0.1, 0.01, 2.5):
        x, s, z = (torch.randn(5, 2, generator=g, dtype=torch.float64) for _ in range(3))
        ok, got = attempt(fn, "langevin_update", x.clone(), s.clone(), h, z.clone())
        if not ok:
            return None
        check_close(
            f"langevin_update (step size {h})",
            got,
            langevin_update(x, s, h, z),
            atol=1e-10,
            hint="x + (h / 2) * score + sqrt(h) * noise: the drift uses half the step, the noise its square root.",
        )
    msg = "langevin_update: correct for step sizes 0.1, 0.01 and 2.5"
    print(msg)
    return msg
