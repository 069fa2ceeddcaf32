import math

import pytest

from ddpm_tutor.exercises import CheckFailed
from ddpm_tutor.exercises import part3 as ex


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize(
    "check,reference",
    [
        (ex.check_resblock_params, ex.resblock_params_reference),
        (ex.check_ddim_step, ex.ddim_step_reference),
        (ex.check_prior_bpd, ex.prior_bpd_reference),
        (ex.check_guided_eps, ex.guided_eps_reference),
    ],
)
def test_reference_passes_and_stub_is_not_attempted(check, reference, capsys):
    assert check(reference)
    assert check(stub) is None
    assert "not attempted" in capsys.readouterr().out


def test_resblock_closed_form_and_mistakes():
    def count(i, o, e):  # two GroupNorms, two 3x3 convs, the time projection, the 1x1 shortcut
        return 2 * i + 2 * o + (9 * i * o + o) + (9 * o * o + o) + (e * o + o) + (i * o + o if i != o else 0)

    assert ex.check_resblock_params(count)
    with pytest.raises(CheckFailed, match="shortcut"):
        ex.check_resblock_params(lambda i, o, e: count(i, o, e) - (i * o + o if i != o else 0))


def test_wrong_answers_are_caught():
    with pytest.raises(CheckFailed, match="x0_hat"):
        ex.check_ddim_step(lambda ab, abp, x, e: (x - (1 - ab).sqrt() * e) / ab.sqrt())
    with pytest.raises(CheckFailed, match="nats"):
        ex.check_prior_bpd(lambda ab, x0: ex.prior_bpd_reference(ab, x0) * math.log(2))
    with pytest.raises(CheckFailed, match="interpolation"):
        ex.check_guided_eps(lambda c, u, w: w * c + (1 - w) * u)
    with pytest.raises(CheckFailed, match="raised"):
        ex.check_guided_eps(lambda c, u, w: c.no_such_method())


@pytest.mark.parametrize(
    "check,wrong,where",
    [
        (ex.check_resblock_params, lambda i, o, e: 9 * i * o + 9 * o * o, r"resblock_params\(32, 32, 128\)"),
        (ex.check_ddim_step, lambda ab, abp, x, e: abp.sqrt() * x, r"ddim_step \(t index 999 -> 949\)"),
        (ex.check_guided_eps, lambda c, u, w: c + w * u, r"guided_eps \(w = 1\.0\)"),
    ],
)
def test_other_wrong_answers_are_caught(check, wrong, where):
    # the weights of the two 3x3 convolutions alone; x_prev without the eps direction; eps_c + w eps_u
    with pytest.raises(CheckFailed, match=where):
        check(wrong)
