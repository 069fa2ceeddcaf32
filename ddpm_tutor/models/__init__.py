"""Denoising networks: model(x_t, t) -> prediction. They know nothing of schedules."""
from .mlp import MLPConfig, MLPDenoiser, timestep_embedding  # noqa: F401
from .unet import UNet, UNetConfig, count_parameters  # noqa: F401
from .convert import load_ddpm_cifar10_pretrained, unet_from_diffusers  # noqa: F401
