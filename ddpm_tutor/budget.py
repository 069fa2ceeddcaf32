"""The one switch for how much compute a chapter spends: DDPM_TUTOR_BUDGET = ci | book | full.

ci: seconds per chapter (tests); book: minutes per chapter on a CPU (the default without a GPU, and the HTML
build); full: the paper's settings on a GPU (the default where torch sees a CUDA GPU, as in Colab's GPU runtime).
Chapters read it only through :func:`get_budget` / :func:`pick`.
"""

from __future__ import annotations

import os

from .device import default_device

BUDGETS = ("ci", "book", "full")
ENV_VAR = "DDPM_TUTOR_BUDGET"


def get_budget() -> str:
    """The budget named by the environment variable DDPM_TUTOR_BUDGET; unset, ``"full"`` where there is a CUDA GPU
    (a learner in Colab with a GPU runtime gets the paper's settings) and ``"book"`` elsewhere."""
    from . import device  # looked up at each call, so that tests can force the GPU's presence

    value = os.environ.get(ENV_VAR, "full" if device.cuda_available() else "book").strip().lower()
    if value not in BUDGETS:
        raise ValueError(f"{ENV_VAR} must be one of {BUDGETS}, got {value!r}")
    return value


def pick(*, ci, book, full=None, budget: str | None = None):
    """The value for the current budget; ``full`` defaults to ``book`` when not given."""
    budget = budget or get_budget()
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    return {"ci": ci, "book": book, "full": book if full is None else full}[budget]


def announce(*, device=None, **settings) -> str:
    """Print (and return) one line naming the budget, the device and the chapter's chosen settings.

    ``device``: the device the chapter computes on, when it is not :func:`default_device`'s choice: a chapter of
    closed forms and small sums passes ``"cpu"``, and where there is a GPU the line says that it is left idle.
    """
    import torch

    chosen = default_device() if device is None else torch.device(device)
    extra = ", ".join(f"{k}={v}" for k, v in settings.items())
    line = f"budget={get_budget()} device={chosen.type}" + (f" | {extra}" if extra else "")
    if chosen.type == "cpu" and default_device().type != "cpu":
        line += " (a GPU is here; this chapter's computations are small and run on the CPU)"
    if ENV_VAR not in os.environ and get_budget() == "full":  # chosen for the reader: say so, and how to change it
        line += f" (full: a GPU is here; set {ENV_VAR}=book for the CPU sizes)"
    print(line)
    return line
