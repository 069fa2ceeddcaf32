"""Data: 2D toy sets, exact Gaussian mixtures, and image sets (MNIST, CIFAR-10)."""

from .mixtures import GaussianMixture  # noqa: F401
from .toy import TOY2D, checkerboard_off_fraction, toy2d  # noqa: F401
