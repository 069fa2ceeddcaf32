"""Denoising networks: model(x_t, t) -> prediction. They know nothing of schedules."""
from .mlp import MLPConfig, MLPDenoiser, timestep_embedding  # noqa: F401
