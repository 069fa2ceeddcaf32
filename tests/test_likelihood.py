import pytest
import torch

from ddpm_tutor.likelihood import mc_total, vlb_terms
from ddpm_tutor.losses import bits_per_dim
from ddpm_tutor.models.unet import UNet, UNetConfig
from ddpm_tutor.schedules import Schedule


def _setup():
    torch.manual_seed(0)
    model = UNet(UNetConfig.mnist(ch=8, ch_mult=(1, 2), attn_resolutions=(14,), num_groups=4)).eval()
    for p in model.conv_out.parameters():  # a non-trivial (random) prediction
        torch.nn.init.normal_(p, std=0.02)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, 256, (3, 1, 28, 28), generator=g).float() / 127.5 - 1
    return model, Schedule.linear(20), x0


def test_vlb_terms_match_bits_per_dim():
    model, sched, x0 = _setup()
    for v in ("fixed_small", "fixed_large"):
        ref = bits_per_dim(model, sched, x0, var_type=v, generator=torch.Generator().manual_seed(5))
        got = vlb_terms(model, sched, x0, generator=torch.Generator().manual_seed(5), var_types=(v,))
        torch.testing.assert_close(got[v], ref["terms"], rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(got["prior"], ref["prior"])
        assert mc_total(got[v], sched.T, got["prior"])["mean"] == pytest.approx(float(ref["total"].mean()), rel=1e-9)
        assert mc_total(got[v], sched.T, got["prior"])["se"] == 0.0  # every term drawn: no MC error


def test_mc_standard_error_is_calibrated():
    g = torch.Generator().manual_seed(0)
    T = 200
    full = torch.rand(2, T, generator=g, dtype=torch.float64) ** 3  # skewed terms
    truth = T * float(full.mean())
    z = []
    for _ in range(400):
        idx = torch.randperm(T, generator=g)[:20]
        r = mc_total(full[:, idx], T)
        z.append((r["mean"] - truth) / r["se"])
    z = torch.tensor(z)
    assert abs(float(z.mean())) < 0.2 and 0.8 < float(z.std()) < 1.25


def test_bad_input():
    with pytest.raises(ValueError):
        mc_total(torch.zeros(3), 10)
    with pytest.raises(ValueError):
        mc_total(torch.zeros(1, 11), 10)
