"""Sample quality of generated digits on axes that do not share a blind spot.

A classifier trained on clean digits judges shapes but barely sees a speckled background, so it is never
the only judge. :func:`image_quality` reports, each against real digits at the same n:

- ``frechet_clf``: Frechet distance in the package's digit classifier's features (shapes, classes);
- ``frechet_rand``: Frechet distance in the features of a randomly initialised, never trained conv net
  (:class:`RandomFeatures`). Nothing taught it to ignore texture: its first layer is a bank of local
  filters whose rectified responses, averaged over the image, measure exactly the high-frequency energy
  that background speckle adds (``tests/test_quality.py`` checks that it sees speckle the classifier misses);
- ``border``: fraction of pixels brighter than 0.1 (on the [0, 1] scale) in the 3-pixel frame, where real
  digits are almost always black; ``grey``: fraction of all pixels in (0.05, 0.5), the half-tones that
  noise leaves behind (real digits are nearly binary).

Bits/dim on test digits (:func:`ddpm_tutor.losses.bits_per_dim`) is the fourth axis; it judges the model,
not a sample, so benchmarks compute it beside this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

BORDER = 3  # width of the frame whose pixels should be background
BRIGHT = 0.1  # a frame pixel above this (0..1 scale) is not background
GREY = (0.05, 0.5)  # half-tone range (0..1 scale)
# mean ReLU responses are small numbers; x10 puts two real-digit samples of n = 256 near 1 rather than 0.01
FEATURE_SCALE = 10.0


def _check_images(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 1 or x.shape[0] < 2:
        raise ValueError(f"expected images (N >= 2, 1, H, W) in [-1, 1], got {getattr(x, 'shape', type(x))}")
    if not torch.isfinite(x).all():
        raise ValueError("images must be finite, got NaN or inf (did sampling diverge?)")
    return x.detach().float().cpu()


def pixel_stats(x: Tensor) -> dict:
    """Background and half-tone statistics of images (N, 1, H, W) in [-1, 1].

    border: fraction of pixels in the BORDER-pixel frame above BRIGHT on the [0, 1] scale;
    grey: fraction of all pixels in the open range GREY. Returns floats.
    """
    x = (_check_images(x) + 1) / 2
    frame = torch.ones_like(x[0, 0], dtype=torch.bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    return {
        "border": float((x[:, :, frame] > BRIGHT).float().mean()),
        "grey": float(((x > GREY[0]) & (x < GREY[1])).float().mean()),
    }


class RandomFeatures(nn.Module):
    """A fixed, randomly initialised conv net: image (N, 1, H, W) -> 160 texture-and-shape features.

    Three 3x3 conv + ReLU layers (32, 64, 64 channels; the last two with stride 2), each layer's responses
    averaged over positions; the first layer's spatial mean is taken at full resolution, so single-pixel
    speckle moves it. Seeded, so every run and machine computes the same features.
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(1, 32, 3, padding=1),
                nn.Conv2d(32, 64, 3, stride=2, padding=1),
                nn.Conv2d(64, 64, 3, stride=2, padding=1),
            ]
        )
        for conv in self.convs:  # He-normal weights from our own generator, zero bias
            fan_in = conv.in_channels * 9
            conv.weight.data = torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5
            conv.bias.data.zero_()
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        feats, h = [], x
        for conv in self.convs:
            h = F.relu(conv(h))
            feats.append(h.mean(dim=(2, 3)))
        return torch.cat(feats, dim=1)


def random_feature_frechet(samples: Tensor, reference: Tensor, seed: int = 0) -> float:
    """Frechet distance between samples and reference in :class:`RandomFeatures` space (both (N, 1, H, W))."""
    from .classifier import frechet_distance, gaussian_stats

    net = RandomFeatures(seed)
    a = torch.cat([net(b) for b in _check_images(samples).split(500)]).double() * FEATURE_SCALE
    b = torch.cat([net(b) for b in _check_images(reference).split(500)]).double() * FEATURE_SCALE
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def image_quality(samples: Tensor, reference: Tensor, classifier=None, labels: Tensor | None = None) -> dict:
    """Every sample axis of the module docstring for ``samples`` against real ``reference`` digits.

    Also confidence, balance and class counts from the classifier (default: the shipped one) and, with
    requested ``labels``, the accuracy and per-class accuracy of the labels asked for.
    """
    from .classifier import load_digit_classifier, sample_quality

    clf = classifier if classifier is not None else load_digit_classifier()
    q = sample_quality(clf, samples, reference=reference, labels=labels)
    out = {
        "n": q["n"],
        "frechet_clf": q["frechet"],
        "frechet_rand": random_feature_frechet(samples, reference),
        **pixel_stats(samples),
        "confidence": q["confidence"],
        "balance": q["balance"],
        "class_counts": q["class_counts"],
    }
    if labels is not None:
        out["accuracy"], out["accuracy_per_class"] = q["accuracy"], q["accuracy_per_class"]
    return out
