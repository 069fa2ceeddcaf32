"""The Part II (chapters 1-3) checkers accept the library's answers, reject wrong ones, and treat an
unwritten exercise as not attempted."""

import math

import pytest
import torch

from ddpm_tutor.exercises import CheckFailed
from ddpm_tutor.exercises import part2_early as ex


def prior_kl_right(ab, x0):
    return 0.5 * (ab * x0**2 + (1 - ab) - 1 - math.log(1 - ab))


def prior_kl_wrong(ab, x0):  # forgets the log term
    return 0.5 * (ab * x0**2 - ab)


def tweedie_right(x_t, a, score):
    return (x_t + (1 - a) * score) / math.sqrt(a)


def tweedie_wrong(x_t, a, score):  # uses sqrt(1 - a) instead of (1 - a)
    return (x_t + math.sqrt(1 - a) * score) / math.sqrt(a)


def langevin_right(x, score, h, z):
    return x + h / 2 * score + math.sqrt(h) * z


def langevin_wrong(x, score, h, z):  # the full step in the drift
    return x + h * score + math.sqrt(h) * z


def not_written(*args):
    raise NotImplementedError


@pytest.mark.parametrize(
    "check,right,wrong",
    [
        (ex.check_prior_kl, prior_kl_right, prior_kl_wrong),
        (ex.check_tweedie, tweedie_right, tweedie_wrong),
        (ex.check_langevin_update, langevin_right, langevin_wrong),
    ],
)
def test_checkers(check, right, wrong, capsys):
    assert "correct" in check(right)
    with pytest.raises(CheckFailed):
        check(wrong)
    assert check(not_written) is None
    assert "not attempted" in capsys.readouterr().out


def test_a_crash_is_a_failed_check():
    def crashes(*args):
        raise ZeroDivisionError("oops")

    with pytest.raises(CheckFailed, match="ZeroDivisionError"):
        ex.check_tweedie(crashes)


def test_wrong_shape_is_reported():
    with pytest.raises(CheckFailed, match="shape"):
        ex.check_langevin_update(lambda x, s, h, z: x[:, 0])
    with pytest.raises(CheckFailed):
        ex.check_prior_kl(lambda ab, x0: torch.zeros(3))


def test_checkers_accept_the_library():
    from ddpm_tutor import elbo
    from ddpm_tutor.diffusion import x0_from_eps
    from ddpm_tutor.langevin import langevin_update
    from ddpm_tutor.schedules import Schedule

    assert "correct" in ex.check_prior_kl(lambda ab, x0: elbo.prior_kl(Schedule.from_alpha_bar([ab]), x0))

    def tweedie_by_library(x_t, a, score):  # eps = -sqrt(1 - a) score, then x0 from eps
        t0 = torch.zeros(len(x_t), dtype=torch.long)
        return x0_from_eps(Schedule.from_alpha_bar([a]), x_t, t0, -math.sqrt(1 - a) * score)

    assert "correct" in ex.check_tweedie(tweedie_by_library)
    assert "correct" in ex.check_langevin_update(langevin_update)


def test_tweedie_rejects_a_missing_division_by_sqrt_alpha_bar():
    with pytest.raises(CheckFailed, match=r"tweedie \(alpha_bar = 0\.98\).*then divide by sqrt\(ab\)"):
        ex.check_tweedie(lambda x_t, a, s: x_t + (1 - a) * s)
