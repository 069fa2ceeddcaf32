"""Networks: denoisers model(x_t, t) -> prediction, which know nothing of schedules, and a noise-aware classifier."""

from .convert import load_ddpm_cifar10_pretrained, unet_from_diffusers  # noqa: F401
from .mlp import MLPConfig, MLPDenoiser, timestep_embedding  # noqa: F401
from .noisy_classifier import ClassifierConfig, NoisyClassifier, train_noisy_classifier  # noqa: F401
from .unet import UNet, UNetConfig, count_parameters  # noqa: F401
