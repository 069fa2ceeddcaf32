"""The one switch for how much compute a chapter spends: DDPM_TUTOR_BUDGET = ci | book | full.

ci: seconds per chapter (tests); book: minutes per chapter on a CPU (the default, and the HTML build);
full: the paper's settings on a GPU. Chapters read it only through :func:`get_budget` / :func:`pick`.
"""

from __future__ import annotations

import os

from .device import default_device

BUDGETS = ("ci", "book", "full")
ENV_VAR = "DDPM_TUTOR_BUDGET"


def get_budget() -> str:
    """The budget named by the environment variable DDPM_TUTOR_BUDGET (default ``"book"``)."""
    value = os.environ.get(ENV_VAR, "book").strip().lower()
    if value not in BUDGETS:
        raise ValueError(f"{ENV_VAR} must be one of {BUDGETS}, got {value!r}")
    return value


def pick(*, ci, book, full=None, budget: str | None = None):
    """The value for the current budget; ``full`` defaults to ``book`` when not given."""
    budget = budget or get_budget()
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    return {"ci": ci, "book": book, "full": book if full is None else full}[budget]


def announce(**settings) -> str:
    """Print (and return) one line naming the budget, the device and the chapter's chosen settings."""
    extra = ", ".join(f"{k}={v}" for k, v in settings.items())
    line = f"budget={get_budget()} device={default_device().type}" + (f" | {extra}" if extra else "")
    print(line)
    return line
