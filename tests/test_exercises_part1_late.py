"""The self-checks of Part I, chapters 5-7, accept the library's answers and reject wrong ones by name."""

import math

import pytest
import torch

from ddpm_tutor.exercises import CheckFailed
from ddpm_tutor.exercises.part1_late import (
    check_cosine_alpha_bar,
    check_ddim_step,
    check_to_x0,
    cosine_alpha_bar_reference,
    ddim_step_reference,
    to_x0_reference,
)


# --- to_x0 --------------------------------------------------------------------------------------
def _to_x0_by_hand(sched, x_t, t, out, p):
    """x0_hat written out from the beta table alone (not through the library's conversions)."""
    ab = torch.cumprod(1 - sched.beta.double(), 0)[t].reshape(-1, *([1] * (x_t.ndim - 1)))
    eps = {"eps": out, "score": -(1 - ab).sqrt() * out}.get(p)
    if eps is not None:
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    return out if p == "x0" else ab.sqrt() * x_t - (1 - ab).sqrt() * out  # v


def test_to_x0_accepts_a_right_solution_and_rejects_a_slightly_wrong_one(capsys):
    assert "correct" in check_to_x0(_to_x0_by_hand)
    assert "correct" in capsys.readouterr().out

    def off_by_a_little(sched, x_t, t, out, p):  # negative control: no known mistake, 0.1% off for score only
        x0 = _to_x0_by_hand(sched, x_t, t, out, p)
        return x0 * 1.001 if p == "score" else x0

    with pytest.raises(CheckFailed, match=r"'score' parameterisation"):
        check_to_x0(off_by_a_little)


def test_to_x0_stub_is_not_attempted(capsys):
    def stub(*args):
        raise NotImplementedError

    assert check_to_x0(stub) is None
    assert "not attempted" in capsys.readouterr().out


def test_to_x0_names_the_wrong_parameterisation():
    def wrong_v(sched, x_t, t, out, p):
        if p == "v":  # sign error in the v branch only
            ab = sched.at("alpha_bar", t, x_t)
            return ab.sqrt() * x_t + (1 - ab).sqrt() * out
        return to_x0_reference(sched, x_t, t, out, p)

    with pytest.raises(CheckFailed, match=r"'v' parameterisation.*sign"):
        check_to_x0(wrong_v)


def test_to_x0_recognises_alpha_for_alpha_bar():
    def uses_alpha(sched, x_t, t, out, p):
        a = sched.at("alpha", t, x_t)
        if p == "eps":
            return (x_t - (1 - a).sqrt() * out) / a.sqrt()
        return to_x0_reference(sched, x_t, t, out, p)

    with pytest.raises(CheckFailed, match=r"'eps' parameterisation.*alpha_t = 1 - beta_t"):
        check_to_x0(uses_alpha)


def test_to_x0_accepts_the_reference_and_names_the_eps_branch_without_square_roots():
    assert "correct" in check_to_x0(to_x0_reference)

    def no_square_roots(sched, x_t, t, out, p):  # forgets the square roots in the eps branch only
        ab = sched.at("alpha_bar", t, x_t)
        return (x_t - (1 - ab) * out) / ab if p == "eps" else to_x0_reference(sched, x_t, t, out, p)

    with pytest.raises(CheckFailed, match=r"to_x0 \('eps' parameterisation\)"):
        check_to_x0(no_square_roots)


def test_to_x0_reports_crash():
    def crashes(sched, x_t, t, out, p):
        return x_t @ torch.ones(3)

    with pytest.raises(CheckFailed, match="raised RuntimeError"):
        check_to_x0(crashes)


# --- cosine alpha_bar -----------------------------------------------------------------------------
def _closed_form(T, s, offset=0):
    f = lambda t: torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    t = torch.arange(1, T + 1, dtype=torch.float64) - offset
    return f(t) / f(torch.zeros((), dtype=torch.float64))


def test_cosine_accepts_the_unclipped_closed_form_and_rejects_another_offset():
    assert "correct" in check_cosine_alpha_bar(lambda T, s: _closed_form(T, s))
    # negative control: the right formula with s 10% off is no known mistake, and still wrong
    with pytest.raises(CheckFailed, match=r"T=10, s=0\.008"):
        check_cosine_alpha_bar(lambda T, s: _closed_form(T, 1.1 * s))
    # the library's reference differs from the closed form only in its clipped last value
    ref, closed = cosine_alpha_bar_reference(1000), _closed_form(1000, 0.008)
    torch.testing.assert_close(ref[:-1].double(), closed[:-1], rtol=1e-5, atol=1e-7)


def test_cosine_accepts_the_reference_and_rejects_the_linear_schedule():
    from ddpm_tutor.schedules import Schedule

    assert "correct" in check_cosine_alpha_bar(cosine_alpha_bar_reference)
    with pytest.raises(CheckFailed, match=r"cosine_alpha_bar \(T=10, s=0\.008\).*f\(t\)/f\(0\)"):
        check_cosine_alpha_bar(lambda T, s=0.008: Schedule.linear(T).alpha_bar)


def test_cosine_recognises_off_by_one():
    with pytest.raises(CheckFailed, match=r"T=10.*index \(0,\).*t = 0, \.\.\., T-1"):
        check_cosine_alpha_bar(lambda T, s: _closed_form(T, s, offset=1))


def test_cosine_recognises_missing_normalisation():
    def unnormalised(T, s):
        t = torch.arange(1, T + 1, dtype=torch.float64)
        return torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    with pytest.raises(CheckFailed, match="divide by f\\(0\\)"):
        check_cosine_alpha_bar(unnormalised)


def test_cosine_rejects_wrong_shape():
    with pytest.raises(CheckFailed, match="shape"):
        check_cosine_alpha_bar(lambda T, s: _closed_form(T, s)[:-1])


# --- DDIM step ----------------------------------------------------------------------------------
def _ddim_by_hand(x_t, eps_hat, a_t, a_prev, eta=0.0, noise=None):
    """Song et al. 2021, eq. 12 and 16, written out."""
    x0 = (x_t - math.sqrt(1 - a_t) * eps_hat) / math.sqrt(a_t)
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    out = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps_hat
    return out + sigma * noise if eta > 0 else out


def test_ddim_accepts_a_right_solution_and_rejects_a_slightly_wrong_one(capsys):
    assert "correct" in check_ddim_step(_ddim_by_hand)
    assert "not attempted" not in capsys.readouterr().out

    def eta_squared(x_t, eps_hat, a_t, a_prev, eta=0.0, noise=None):  # negative control: right for eta 0 and 1 only
        return _ddim_by_hand(x_t, eps_hat, a_t, a_prev, eta**2, noise)

    with pytest.raises(CheckFailed, match=r"eta=0\.5"):
        check_ddim_step(eta_squared)


def test_ddim_accepts_the_reference_and_rejects_a_step_that_ignores_eta(capsys):
    assert "correct" in check_ddim_step(ddim_step_reference)

    def ignores_eta(x_t, eps_hat, a_t, a_prev, eta=0.0, noise=None):  # right at eta = 0, deterministic always
        return ddim_step_reference(x_t, eps_hat, a_t, a_prev, eta=0.0)

    with pytest.raises(CheckFailed, match=r"ddim_step \(eta=1\.0, from t=501 to t=481\)"):
        check_ddim_step(ignores_eta)
    assert "ddim_step (eta=0, last step to x_0" in capsys.readouterr().out  # the eta = 0 cases passed first


def test_ddim_reference_matches_the_sampler_formula():
    x, e = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    a_t, a_prev = 0.3, 0.5
    x0 = (x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
    expected = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * e
    torch.testing.assert_close(ddim_step_reference(x, e, a_t, a_prev), expected)
    torch.testing.assert_close(ddim_step_reference(x, e, a_t, 1.0), x0)


def test_ddim_stub_is_not_attempted(capsys):
    def stub(x_t, eps_hat, a_t, a_prev, eta=0.0, noise=None):
        raise NotImplementedError

    assert check_ddim_step(stub) is None
    assert "not attempted" in capsys.readouterr().out


def test_ddim_names_missing_sigma_in_direction():
    def no_sigma_in_direction(x_t, eps_hat, a_t, a_prev, eta=0.0, noise=None):
        x0 = (x_t - math.sqrt(1 - a_t) * eps_hat) / math.sqrt(a_t)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        out = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps_hat
        return out + sigma * noise if eta > 0 else out

    with pytest.raises(CheckFailed, match=r"eta=1\.0.*sigma\^2 out of the direction term"):
        check_ddim_step(no_sigma_in_direction)


def test_ddim_names_deterministic_mistake():
    def returns_x0(x_t, eps_hat, a_t, a_prev, eta=0.0, noise=None):
        return (x_t - math.sqrt(1 - a_t) * eps_hat) / math.sqrt(a_t)

    with pytest.raises(CheckFailed, match=r"eta=0, from t=501 to t=481.*x0_hat instead of x_prev"):
        check_ddim_step(returns_x0)
