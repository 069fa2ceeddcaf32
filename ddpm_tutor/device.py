"""Where computations run by default: CUDA when present, else the CPU."""

from __future__ import annotations

import torch


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU: the one question behind every default device (tests force it here)."""
    return torch.cuda.is_available()


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    # through cuda_available, looked up at each call: forcing it reaches every caller (budget.announce, the
    # chapters' setup cells, Trainer, fid), however they imported this function
    return torch.device("cuda" if cuda_available() else "cpu")
