import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpm_tutor.schedules import Schedule


def test_linear_matches_paper_endpoints():
    s = Schedule.linear()
    assert s.T == 1000 and s.beta.dtype == torch.float64
    assert s.beta[0].item() == pytest.approx(1e-4) and s.beta[-1].item() == pytest.approx(0.02)
    # derived tables from their definitions, computed independently with Python floats
    ab = 1.0
    ab_list = []
    for b in s.beta.tolist():
        ab *= 1 - b
        ab_list.append(ab)
    assert torch.allclose(s.alpha_bar, torch.tensor(ab_list, dtype=torch.float64), rtol=1e-12)
    assert s.alpha_bar_prev[0] == 1 and torch.equal(s.alpha_bar_prev[1:], s.alpha_bar[:-1])
    i = 500
    bt = s.beta[i] * (1 - s.alpha_bar[i - 1]) / (1 - s.alpha_bar[i])
    assert s.beta_tilde[i].item() == pytest.approx(bt.item(), rel=1e-12)
    assert s.snr[i].item() == pytest.approx((s.alpha_bar[i] / (1 - s.alpha_bar[i])).item(), rel=1e-12)
    assert torch.allclose(s.log_snr, s.snr.log(), rtol=1e-10)
    # the paper's bar alpha_T is about 4e-5: x_T is almost pure noise
    assert 1e-5 < s.alpha_bar[-1] < 1e-4


def test_cosine_closed_form():
    T, s_ = 1000, 0.008
    s = Schedule.cosine(T)
    f = lambda t: math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2
    for i in [0, 10, 500, 900]:  # below the beta clip at 0.999
        assert s.alpha_bar[i].item() == pytest.approx(f(i + 1) / f(0), rel=1e-9)
    assert s.beta.max() <= 0.999


def test_posterior_coefficients_reproduce_mean_identity():
    s = Schedule.cosine(50)
    # mu_tilde(x_t, x_0) with x_0 from eps equals (x_t - beta/sqrt(1-ab) eps)/sqrt(alpha)  (Ho et al. eq. 10)
    for i in range(1, 50):
        c0, ct = s.posterior_coef_x0[i], s.posterior_coef_xt[i]
        ab, a, b = s.alpha_bar[i], s.alpha[i], s.beta[i]
        # x_0 = (x_t - sqrt(1-ab) eps)/sqrt(ab): coefficient on x_t and eps
        coef_xt = c0 / ab.sqrt() + ct
        coef_eps = -c0 * (1 - ab).sqrt() / ab.sqrt()
        assert coef_xt.item() == pytest.approx((1 / a.sqrt()).item(), rel=1e-10)
        assert coef_eps.item() == pytest.approx((-b / ((1 - ab).sqrt() * a.sqrt())).item(), rel=1e-10)


def test_get_scales_linear_schedule():
    s = Schedule.get("linear", 100)
    assert s.beta[0].item() == pytest.approx(1e-3) and s.beta[-1].item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="'linear' or 'cosine'"):
        Schedule.get("quadratic")


@pytest.mark.parametrize(
    "beta, msg",
    [
        ([0.1, 1.0], r"open interval \(0, 1\)"),
        ([0.0, 0.1], r"open interval \(0, 1\)"),
        ([-0.1], r"open interval \(0, 1\)"),
        ([0.1, float("nan")], "finite"),
        ([], "at least one"),
        ([[0.1, 0.2]], "1-D"),
        ("abc", "1-D sequence of numbers"),
    ],
)
def test_invalid_beta_raises(beta, msg):
    with pytest.raises(ValueError, match=msg):
        Schedule(beta if not isinstance(beta, list) else torch.tensor(beta, dtype=torch.float64))


@pytest.mark.parametrize("T", [0, -5, 2.5, True])
def test_invalid_T_raises(T):
    with pytest.raises(ValueError, match="T must be a positive integer"):
        Schedule.linear(T)
    with pytest.raises(ValueError, match="T must be a positive integer"):
        Schedule.cosine(T)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.floats(min_value=-2, max_value=2), st.just(float("nan"))), min_size=1, max_size=20))
def test_any_beta_is_accepted_iff_valid(values):
    valid = all(0 < v < 1 and 1.0 - v < 1.0 for v in values)
    if valid:
        s = Schedule(torch.tensor(values, dtype=torch.float64))
        assert (s.alpha_bar > 0).all() and (s.alpha_bar[1:] <= s.alpha_bar[:-1]).all()
        assert (s.beta_tilde <= s.beta + 1e-15).all()  # beta_tilde is at most beta
    else:
        with pytest.raises(ValueError):
            Schedule(torch.tensor(values, dtype=torch.float64))


def test_at_refuses_out_of_range_and_float_t():
    s = Schedule.linear(10)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        s.at("alpha_bar", torch.tensor([10]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"0\.\.9"):
        s.at("alpha_bar", torch.tensor([-1]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="integer step indices"):
        s.at("alpha_bar", torch.tensor([1.0]), torch.zeros(1, 2))
