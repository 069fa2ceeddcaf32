"""The Part II (chapters 4-5) self-checks accept right answers, reject wrong ones with a useful message,
and treat a stub that raises NotImplementedError as not attempted yet."""

import pytest
import torch

from ddpm_tutor import coding
from ddpm_tutor.data import mixtures
from ddpm_tutor.exercises import CheckFailed
from ddpm_tutor.exercises import part2_late as E


def _stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize(
    "check", [E.check_cfg_eps, E.check_classifier_guidance_eps, E.check_cumulative_rate, E.check_posterior_std]
)
def test_stub_is_not_attempted(check, capsys):
    assert check(_stub) is None
    assert "not attempted" in capsys.readouterr().out


def test_cfg_eps():
    assert E.check_cfg_eps(lambda c, u, w: (1 + w) * c - w * u)
    assert E.check_cfg_eps(lambda c, u, w: c + w * (c - u))  # the same, written as a correction
    with pytest.raises(CheckFailed, match="swapped"):
        E.check_cfg_eps(lambda c, u, w: (1 + w) * u - w * c)
    with pytest.raises(CheckFailed, match="other convention"):
        E.check_cfg_eps(lambda c, u, w: u + w * (c - u))
    with pytest.raises(CheckFailed, match="raised ZeroDivisionError"):
        E.check_cfg_eps(lambda c, u, w: 1 / 0)


def test_cfg_eps_names_w_instead_of_one_plus_w():
    with pytest.raises(CheckFailed, match=r"cfg_eps at w = 3\.0.*w instead of 1 \+ w"):
        E.check_cfg_eps(lambda c, u, w: w * c - w * u)


def test_cfg_eps_checker_accepts_the_library_rule():
    from ddpm_tutor.guidance import cfg_model

    def library_cfg(c, u, w):  # cfg_model driven by a fake network: eps_cond for labels, eps_uncond for the null label
        fake = lambda x, t, y: torch.cat([c, u]) if len(y) == 2 * len(c) else c  # noqa: E731
        return cfg_model(fake, 0, w, null_label=3)(c, torch.zeros(len(c), dtype=torch.long))

    assert "correct" in E.check_cfg_eps(library_cfg)


def test_cfg_eps_agrees_with_the_library():
    from ddpm_tutor.guidance import cfg_model

    model = lambda x, t, y: torch.where(y[:, None] == 3, -x, 2 * x)  # noqa: E731
    x = torch.randn(4, 2)
    got = cfg_model(model, 0, 1.5, 3)(x, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(got, E.cfg_eps_reference(2 * x, -x, 1.5))


def test_classifier_guidance_eps():
    assert E.check_classifier_guidance_eps(E.classifier_guidance_eps_reference)
    with pytest.raises(CheckFailed, match="sign is flipped"):
        E.check_classifier_guidance_eps(lambda e, g, ab, s: e + s * (1 - ab).sqrt()[:, None] * g)
    with pytest.raises(CheckFailed, match="square root"):
        E.check_classifier_guidance_eps(lambda e, g, ab, s: e - s * (1 - ab)[:, None] * g)


def test_cumulative_rate_agrees_with_coding():
    assert E.check_cumulative_rate(E.cumulative_rate_reference)
    with pytest.raises(CheckFailed, match="included kl"):
        E.check_cumulative_rate(lambda p, kl: p[:, None] + kl.flip(1).cumsum(1).flip(1))
    with pytest.raises(CheckFailed, match="prior term"):
        E.check_cumulative_rate(lambda p, kl: kl.flip(1).cumsum(1).flip(1) - kl)
    # the reference is what coding.rate_distortion reports
    from ddpm_tutor.data.mixtures import GaussianMixture
    from ddpm_tutor.schedules import Schedule

    sched = Schedule.linear(20, 1e-3, 0.2)
    mix = GaussianMixture.ring(k=3, radius=1.0, std=0.2)
    rd = coding.rate_distortion(
        mix.eps_model(sched), sched, mix.sample(10, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1)
    )
    assert torch.allclose(E.cumulative_rate_reference(rd["prior"], rd["kl"]), rd["rate_per_example"])


def test_posterior_std():
    assert E.check_posterior_std(lambda ab, s2: mixtures.gaussian_posterior_std(ab, s2))
    with pytest.raises(CheckFailed, match="variance, not the standard deviation"):
        E.check_posterior_std(lambda ab, s2: s2 * (1 - ab) / (ab * s2 + 1 - ab))
    with pytest.raises(CheckFailed, match="forward noise"):
        E.check_posterior_std(lambda ab, s2: (1 - ab).sqrt())
