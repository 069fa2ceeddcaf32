import numpy as np
import pytest
import torch

from ddpm_tutor.classifier import (
    DigitClassifier,
    accuracy,
    frechet_distance,
    gaussian_stats,
    load_classifier,
    sample_quality,
    save_classifier,
    train_digit_classifier,
)


def _toy_digits(n=200, seed=0):
    """Two easily separable 'digit' classes: a bright left half or a bright right half."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = -torch.ones(n, 1, 28, 28)
    x[y == 0, :, :, :14] = 1.0
    x[y == 1, :, :, 14:] = 1.0
    x = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return x, y


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # commuting (diagonal) covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    want = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(want, rel=1e-8)
    # general covariances: zero for identical Gaussians, symmetric, invariant under a rotation of both
    A = rng.normal(size=(4, 4))
    S1 = A @ A.T + np.eye(4)
    B = rng.normal(size=(4, 4))
    S2 = B @ B.T + 0.5 * np.eye(4)
    assert frechet_distance(m1[:4], S1, m1[:4], S1) == pytest.approx(0.0, abs=1e-8)
    d = frechet_distance(m1[:4], S1, m2[:4], S2)
    assert d == pytest.approx(frechet_distance(m2[:4], S2, m1[:4], S1), rel=1e-8)
    Q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    assert d == pytest.approx(frechet_distance(Q @ m1[:4], Q @ S1 @ Q.T, Q @ m2[:4], Q @ S2 @ Q.T), rel=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(m1, S1, m2, S2)


def test_frechet_distance_of_samples_converges():
    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    f2 = 2.0 * torch.randn(20000, 3, generator=g, dtype=torch.float64) + 1.0
    d = frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))
    assert d == pytest.approx(3 * 1.0 + 3 * (2 - 1) ** 2, rel=0.05)


def test_train_classifier_save_load_and_quality(tmp_path):
    x, y = _toy_digits()
    clf = train_digit_classifier(x, y, steps=30, batch_size=32, seed=0)
    assert accuracy(clf, x, y) > 0.95
    path = save_classifier(clf, tmp_path / "c.pt", meta={"note": "toy"})
    clf2 = load_classifier(path)
    assert clf2.meta == {"note": "toy"}
    torch.testing.assert_close(clf(x[:8]), clf2(x[:8]))
    torch.load(path, weights_only=True)  # plain data only
    q = sample_quality(clf, x, reference=x, labels=y)
    assert q["n"] == len(x) and 0 <= q["balance"] <= 1 and q["accuracy"] > 0.95
    assert q["frechet"] == pytest.approx(0.0, abs=1e-6)  # same set: same Gaussian
    assert sum(q["class_counts"]) == len(x) and 0.5 < q["confidence"] <= 1
    # all samples of one class: balance 0
    assert sample_quality(clf, x[y == 0])["balance"] == pytest.approx(0.0, abs=1e-9)


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        DigitClassifier().features(torch.zeros(2, 1, 32, 32))
    x, y = _toy_digits(20)
    with pytest.raises(ValueError):
        train_digit_classifier(x * 2, y, steps=1)
    with pytest.raises(ValueError):
        train_digit_classifier(x, y[:5], steps=1)


def test_shipped_classifier_is_accurate():
    from ddpm_tutor.classifier import load_digit_classifier
    from ddpm_tutor.data.images import load_mnist

    clf = load_digit_classifier()
    x, y = load_mnist(train=False)
    assert accuracy(clf, x, y) > 0.93
