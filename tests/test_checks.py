"""ddpm_tutor.checks: each check accepts what it should, refuses the rest, and its message names the expectation."""

import pytest
import torch

from ddpm_tutor.checks import batch_steps, class_labels, image_range, null_labels, positive_int, step_indices


@pytest.mark.parametrize("value", [1, 7, 1000])
def test_positive_int_accepts_ints_from_one(value):
    assert positive_int(value, "n") == value


@pytest.mark.parametrize("value", [0, -3, 2.0, "3", None, True, torch.tensor(3)])
def test_positive_int_refuses_the_rest(value):
    with pytest.raises(ValueError, match=r"n must be a positive integer \(an integer >= 1\), got "):
        positive_int(value, "n")


def test_positive_int_with_an_upper_bound():
    assert positive_int(20, "steps", most=20) == 20
    for bad in (0, 21):
        with pytest.raises(ValueError, match=rf"steps must be an integer in 1\.\.20, got {bad}"):
            positive_int(bad, "steps", most=20)


def test_batch_steps_repeats_one_index_and_keeps_a_batch():
    t = batch_steps(3, 4)
    assert t.shape == (4,) and t.tolist() == [3, 3, 3, 3]
    t = batch_steps(torch.tensor(2, dtype=torch.int32), 3)
    assert t.dtype == torch.int32 and t.tolist() == [2, 2, 2]  # no cast: the dtype is the caller's
    given = torch.arange(5)
    assert batch_steps(given, 5) is given
    assert batch_steps(torch.tensor(1.5), 2).dtype == torch.float32  # step_indices refuses floats, not this


@pytest.mark.parametrize("t", [torch.zeros(3, dtype=torch.long), torch.zeros(4, 1, dtype=torch.long), [1, 2]])
def test_batch_steps_refuses_another_shape(t):
    with pytest.raises(
        ValueError,
        match=r"t must have shape \(B,\) to match x of shape \(4, 2\), i\.e\. shape "
        r"\(4,\), or be one step index; got shape",
    ):
        batch_steps(t, 4, batch="x of shape (4, 2)")


def test_step_indices_accepts_integers_in_range_as_int64():
    for t in (
        torch.tensor([0, 9]),
        torch.tensor([3], dtype=torch.int32),
        torch.tensor(5),
        torch.zeros(0, dtype=torch.long),
    ):
        out = step_indices(t, 10)
        assert out.dtype == torch.int64 and torch.equal(out, t.long())
    assert step_indices(torch.tensor([0, 123456])).tolist() == [0, 123456]  # no T: a network knows no schedule


@pytest.mark.parametrize(
    "t, T, match",
    [
        (torch.tensor([10]), 10, r"t must lie in 0\.\.9 \(index i is the paper's step i\+1\), got range 10\.\.10"),
        (torch.tensor([-1, 3]), 10, r"t must lie in 0\.\.9 .*got range -1\.\.3"),
        (torch.tensor([-1]), None, r"t must lie in 0\.\.T-1 .*got range -1\.\.-1"),
        (torch.tensor([1.0]), 10, r"t must hold integer step indices in 0\.\.9, got dtype torch.float32"),
        (torch.tensor([True]), None, r"t must hold integer step indices in 0\.\.T-1, got dtype torch.bool"),
    ],
)
def test_step_indices_refuses_out_of_range_and_non_integers(t, T, match):
    with pytest.raises(ValueError, match=match):
        step_indices(t, T)


def test_image_range_accepts_the_model_range_unchanged():
    for x in (torch.tensor([-1.0, 0.0, 1.0]), torch.rand(2, 1, 3, 3, dtype=torch.float64) * 2 - 1, torch.zeros(0)):
        assert image_range(x) is x
    assert image_range(torch.tensor([1.0 + 1e-7]), tol=1e-6).shape == (1,)  # slack only where asked for


@pytest.mark.parametrize(
    "bad, match",
    [
        (
            torch.tensor([0.0, 1.01]),
            r"x must lie in \[-1, 1\] \(images scaled as x / 127\.5 - 1.*got values in "
            r"\[0, 1\.01\]",
        ),
        (torch.tensor([-1.5, 0.0]), r"x must lie in \[-1, 1\]"),
        (torch.tensor([1.0 + 1e-5]), r"x must lie in \[-1, 1\]"),
        (torch.tensor([0.0, float("nan")]), r"x must be finite with values in \[-1, 1\], but it holds 1 NaN/inf"),
        (torch.tensor([0.0, float("inf")]), "NaN/inf"),
        (torch.tensor([0, 1]), r"x must be a floating-point tensor with values in \[-1, 1\], got dtype torch.int64"),
        (torch.tensor([0, 255], dtype=torch.uint8), "floating-point"),
        ([0.0, 0.5], r"floating-point tensor .*got list"),
    ],
)
def test_image_range_refuses(bad, match):
    with pytest.raises(ValueError, match=match):
        image_range(bad, tol=1e-6)


def test_null_labels_are_the_class_count():
    y = null_labels(3, 10)
    assert y.dtype == torch.int64 and y.tolist() == [10, 10, 10]
    assert torch.equal(class_labels(y, 3, 10), y)  # the null label is a valid label


def test_class_labels_accepts_labels_up_to_the_null_label():
    y = torch.tensor([0, 4, 5])
    assert class_labels(y, 3, 5) is y
    assert class_labels(torch.zeros(0, dtype=torch.long), 0, 5).shape == (0,)


@pytest.mark.parametrize(
    "y, match",
    [
        (
            torch.tensor([0, 6, 1]),
            r"y must hold labels 0\.\.5 \(5 is the null label, 'no label'\), got values in \[0, 6\]",
        ),
        (torch.tensor([-1, 0, 1]), r"got values in \[-1, 1\]"),
        (torch.tensor([0, 1]), r"y must be an integer tensor of shape \(3,\) with labels 0\.\.5 .*got shape \(2,\)"),
        (torch.tensor([0.0, 1.0, 2.0]), r"of shape \(3,\) .*dtype torch.float32"),
        (torch.tensor([True, False, True]), "dtype torch.bool"),
        ([0, 1, 2], r"y must be an integer tensor .*got list"),
    ],
)
def test_class_labels_refuses(y, match):
    with pytest.raises(ValueError, match=match):
        class_labels(y, 3, 5)
