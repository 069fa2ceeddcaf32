import pytest
import torch

from ddpm_tutor.classifier import frechet_distance, gaussian_stats
from ddpm_tutor.data.images import load_mnist
from ddpm_tutor.quality import RandomFeatures, image_quality, pixel_stats, random_feature_frechet


def test_pixel_stats_count_what_they_say():
    x = -torch.ones(4, 1, 28, 28)
    assert pixel_stats(x) == {"border": 0.0, "grey": 0.0}
    x[0, 0, 0, 0] = 0.0  # 0.5 on the [0, 1] scale: bright, but not in (0.05, 0.5)
    x[1, 0, 14, 14] = -0.5  # 0.25: grey, inside the frame
    x[2, 0, 27, 5] = -0.85  # 0.075: grey and (not) bright: 0.075 < 0.1
    x[3, 0, 2, 20] = -0.7  # 0.15: a bright frame pixel that is also grey
    frame = 28 * 28 - 22 * 22
    s = pixel_stats(x)
    assert s["border"] == pytest.approx(2 / (4 * frame))
    assert s["grey"] == pytest.approx(3 / (4 * 28 * 28))


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match=r"\(N >= 2, 1, H, W\)"):
        pixel_stats(torch.zeros(4, 28, 28))
    with pytest.raises(ValueError, match="finite"):
        random_feature_frechet(torch.full((4, 1, 28, 28), float("nan")), torch.zeros(4, 1, 28, 28))


def test_random_features_are_fixed_by_the_seed():
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert torch.equal(RandomFeatures(0)(x), RandomFeatures(0)(x))
    assert not torch.equal(RandomFeatures(0)(x), RandomFeatures(1)(x))


@pytest.fixture(scope="module")
def digits():
    x, y = load_mnist(train=True, download=False)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(x), generator=g)
    return x[idx[:300]], x[idx[300:600]], y[idx[:300]]


def test_random_features_see_speckle_that_the_classifier_misses(digits):
    a, ref, _ = digits
    g = torch.Generator().manual_seed(1)
    speckled = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(-1, 1)  # a faint grainy background
    clean = image_quality(a, ref)
    noisy = image_quality(speckled, ref)
    # the random features see it many times more strongly than the classifier does ...
    clf_ratio = noisy["frechet_clf"] / clean["frechet_clf"]
    rand_ratio = noisy["frechet_rand"] / clean["frechet_rand"]
    assert rand_ratio > 5 and rand_ratio > 4 * clf_ratio, (rand_ratio, clf_ratio)
    # ... and so do the pixel statistics
    assert noisy["border"] > 3 * clean["border"] and noisy["grey"] > 2 * clean["grey"]


def test_random_feature_frechet_is_the_frechet_distance_of_those_features(digits):
    a, ref, _ = digits
    net = RandomFeatures(0)
    fa, fr = net(a).double() * 10, net(ref).double() * 10
    assert random_feature_frechet(a, ref) == pytest.approx(
        frechet_distance(*gaussian_stats(fa), *gaussian_stats(fr)), rel=1e-9
    )


def test_label_accuracy_per_class(digits):
    a, ref, y = digits
    wrong = y.clone()
    wrong[y == 3] = 5  # ask for a 5 wherever the digit is a 3
    q = image_quality(a, ref, labels=wrong)
    assert q["accuracy_per_class"][3] != q["accuracy_per_class"][3]  # no 3 was asked for: NaN
    assert q["accuracy_per_class"][5] < 0.7  # the 5s asked for are now partly 3s
    assert min(q["accuracy_per_class"][k] for k in (0, 1, 2, 4, 6, 7, 8, 9)) > 0.85
    assert sum(q["class_counts"]) == len(a)
