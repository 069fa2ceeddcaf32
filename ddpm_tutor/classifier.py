"""A small digit classifier that judges generated MNIST samples, and the numbers it gives.

A generative model of digits is good when its samples look like digits, in the right proportions, and
as varied as real ones. With no human in the loop we ask a classifier trained on real digits:

- ``confidence``: mean max-softmax probability of the samples (a blob that is no digit gets a low one);
- ``balance``: entropy of the predicted-class histogram divided by log(10) (1 = every class equally often);
- ``frechet``: the Frechet distance between Gaussians fitted to the classifier's penultimate features of
  the samples and of real test digits (FID's recipe, Heusel et al. 2017, with this classifier in place of
  the Inception network, so its values are comparable only with each other, never with published FIDs);
- ``accuracy``: for class-conditional samples, how often the classifier agrees with the requested label.

The classifier is deliberately tiny (about 0.1 M parameters): it trains on the 4,500 offline training
digits in seconds and reaches about 97% test accuracy. A trained copy ships with the package
(``ddpm_tutor/checkpoints/mnist_classifier.pt``, see :func:`load_digit_classifier`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CLASSIFIER_FORMAT, check_format, load_checkpoint, save_checkpoint
from .checks import device_arg, image_range, positive_int

Tensor = torch.Tensor


@dataclass
class DigitClassifierConfig:
    """Sizes of :class:`DigitClassifier`."""

    c1: int = 16  # channels of the first conv (28x28)
    c2: int = 32  # channels of the second conv (14x14)
    features: int = 64  # width of the penultimate layer (the features of the Frechet distance)
    num_classes: int = 10


class DigitClassifier(nn.Module):
    """conv 3x3 -> ReLU -> max-pool -> conv 3x3 -> ReLU -> max-pool -> dense -> ReLU (features) -> dense.

    Input (B, 1, 28, 28) in [-1, 1]; ``forward`` returns logits (B, 10), ``features`` the (B, features)
    penultimate activations.
    """

    def __init__(self, config: DigitClassifierConfig | None = None):
        super().__init__()
        self.config = c = config or DigitClassifierConfig()
        self.conv1 = nn.Conv2d(1, c.c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c.c1, c.c2, 3, padding=1)
        self.fc = nn.Linear(c.c2 * 7 * 7, c.features)
        self.head = nn.Linear(c.features, c.num_classes)

    def features(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"DigitClassifier expects images (B, 1, 28, 28) in [-1, 1], got {tuple(x.shape)}")
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _shift(x: Tensor, g: torch.Generator, max_shift: int) -> Tensor:
    """Random translations by up to max_shift pixels (background -1 fills in): cheap augmentation."""
    if max_shift <= 0:
        return x
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    out = torch.empty_like(x)
    H, W = x.shape[-2:]
    k = 2 * max_shift + 1
    code = torch.randint(0, k * k, (x.shape[0],), generator=g)  # one (dy, dx) per image
    for c in code.unique().tolist():
        sel = code == c
        dy, dx = divmod(c, k)
        out[sel] = pad[sel, :, dy : dy + H, dx : dx + W]
    return out


def train_digit_classifier(
    x: Tensor,
    y: Tensor,
    *,
    steps: int = 600,
    batch_size: int = 128,
    lr: float = 2e-3,
    max_shift: int = 2,
    seed: int = 0,
    config: DigitClassifierConfig | None = None,
    device=None,
) -> DigitClassifier:
    """Train a :class:`DigitClassifier` on images x (N, 1, 28, 28) in [-1, 1] and labels y (N,) with Adam
    (cosine-decayed learning rate, random shifts of up to ``max_shift`` pixels). Returns it in eval mode."""
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"x must be images (N, 1, 28, 28), got {tuple(x.shape)}")
    if y.shape != x.shape[:1]:
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    image_range(x, "x")
    steps = positive_int(steps, "steps")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier(config).to(device_arg(device))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=g)
        xb = _shift(x[idx], g, max_shift).to(next(model.parameters()).device)
        loss = F.cross_entropy(model(xb), y[idx].to(xb.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def _batched(fn, x: Tensor, batch: int = 500) -> Tensor:
    return torch.cat([fn(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


@torch.no_grad()
def accuracy(classifier: DigitClassifier, x: Tensor, y: Tensor) -> float:
    """Fraction of x that the classifier labels y."""
    dev = next(classifier.parameters()).device
    pred = _batched(lambda b: classifier(b.to(dev)).argmax(1).cpu(), x)
    return float((pred == y.cpu()).float().mean())


@torch.no_grad()
def features(classifier: DigitClassifier, x: Tensor) -> Tensor:
    """Penultimate features (N, F) as float64 (what the Frechet distance compares)."""
    dev = next(classifier.parameters()).device
    return _batched(lambda b: classifier.features(b.to(dev)).cpu(), x).double()


def gaussian_stats(f: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of features (N, F), as float64 numpy arrays (N >= 2)."""
    f = torch.as_tensor(f, dtype=torch.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, F) with N >= 2, got {tuple(f.shape)}")
    a = f.numpy()
    return a.mean(0), np.cov(a, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet (2-Wasserstein squared) distance between N(mu1, sigma1) and N(mu2, sigma2):

        |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})

    (Dowson & Landau 1982; the formula of FID, Heusel et al. 2017). Uses scipy.linalg.sqrtm; a tiny ridge
    is added when the product is singular, and the imaginary round-off of sqrtm is dropped.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not match: mu {mu1.shape} {mu2.shape}, sigma {s1.shape} {s2.shape}")
    import warnings

    with warnings.catch_warnings():  # singular products (few samples, or identical sets) are expected here
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            ridge = np.eye(s1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((s1 + ridge) @ (s2 + ridge))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean), 0.0))


@torch.no_grad()
def sample_quality(
    classifier: DigitClassifier, samples: Tensor, reference: Tensor | None = None, labels: Tensor | None = None
) -> dict:
    """Quality numbers of generated digits ``samples`` (N, 1, 28, 28) in [-1, 1] (clamped first):

    confidence (mean max softmax), balance (entropy of predicted classes / log 10), class_counts,
    frechet (vs ``reference`` real digits, if given), accuracy and accuracy_per_class (vs requested ``labels``,
    if given).
    """
    dev = next(classifier.parameters()).device
    x = samples.detach().float().clamp(-1, 1).cpu()
    probs = _batched(lambda b: classifier(b.to(dev)).softmax(1).cpu(), x)
    pred = probs.argmax(1)
    counts = torch.bincount(pred, minlength=probs.shape[1])
    p = counts.double() / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    out = {
        "n": int(x.shape[0]),
        "confidence": float(probs.max(1).values.mean()),
        "balance": entropy / math.log(probs.shape[1]),
        "class_counts": counts.tolist(),
    }
    if reference is not None:
        out["frechet"] = frechet_distance(
            *gaussian_stats(features(classifier, x)), *gaussian_stats(features(classifier, reference.float()))
        )
    if labels is not None:
        labels = labels.cpu()
        out["accuracy"] = float((pred == labels).float().mean())
        # NaN for a class that was not asked for
        out["accuracy_per_class"] = [
            float((pred[labels == k] == k).float().mean()) if (labels == k).any() else float("nan")
            for k in range(probs.shape[1])
        ]
    return out


def save_classifier(classifier: DigitClassifier, path, meta: dict | None = None) -> Path:
    """Write the classifier (config + weights + meta) atomically; read it with :func:`load_classifier`."""
    state = {
        "format": CLASSIFIER_FORMAT,
        "config": asdict(classifier.config),
        "state_dict": {k: v.detach().cpu() for k, v in classifier.state_dict().items()},
        "meta": dict(meta or {}),
    }
    return save_checkpoint(state, path)


def load_classifier(path, device=None) -> DigitClassifier:
    """Read a classifier written by :func:`save_classifier` (weights_only load), in eval mode."""
    state = check_format(load_checkpoint(path), path, ("config", "state_dict"), fmt=CLASSIFIER_FORMAT)
    model = DigitClassifier(DigitClassifierConfig(**state["config"]))
    model.load_state_dict(state["state_dict"])
    model.meta = state.get("meta", {})
    return model.to(device_arg(device)).eval()


def load_digit_classifier(device=None) -> DigitClassifier:
    """The classifier shipped with the package (trained on the 4,500 offline training digits)."""
    from .pretrained import CHECKPOINT_DIR

    return load_classifier(CHECKPOINT_DIR / "mnist_classifier.pt", device=device)
