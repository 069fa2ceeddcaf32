"""The U-Net's parameter table adds up, and each part has the parameters of diffusers' corresponding block."""

import pytest
import torch

from ddpm_tutor.models.convert import DDPM_CIFAR10_DIFFUSERS_CONFIG
from ddpm_tutor.models.unet import UNet, UNetConfig, count_parameters, parameter_table

diffusers = pytest.importorskip("diffusers")


def _n(m):
    return sum(p.numel() for p in m.parameters())


def test_the_paper_model_table_matches_diffusers_blocks():
    with torch.device("meta"):
        ours = UNet(UNetConfig.ddpm_cifar10())
    rows = parameter_table(ours)
    assert sum(r["total"] for r in rows) == count_parameters(ours) == 35_746_307  # the paper's model
    for r in rows:
        assert r["total"] == r["res"] + r["attention"] + r["resample"] or r["blocks"] == 0
    with torch.device("meta"):  # no memory or init time: only shapes are needed
        ref = diffusers.UNet2DModel(**DDPM_CIFAR10_DIFFUSERS_CONFIG)
    by_part = {r["part"]: r for r in rows}
    assert by_part["time embedding (sinusoid -> MLP)"]["total"] == _n(ref.time_embedding)
    assert by_part["conv_in"]["total"] == _n(ref.conv_in)
    assert by_part["output (GroupNorm, conv_out)"]["total"] == _n(ref.conv_norm_out) + _n(ref.conv_out)
    assert by_part["middle"]["total"] == _n(ref.mid_block)
    for i, block in enumerate(ref.down_blocks):
        row = by_part[f"down {i + 1}"]
        assert row["total"] == _n(block)
        assert row["attention"] == _n(getattr(block, "attentions", torch.nn.ModuleList()))
        assert row["resample"] == _n(block.downsamplers or torch.nn.ModuleList())
    ups = [r for r in rows if r["part"].startswith("up")]
    assert [r["resolution"] for r in ups] == [4, 8, 16, 32]
    for row, block in zip(ups, ref.up_blocks):
        assert row["total"] == _n(block)
    assert [r["resolution"] for r in rows if r["attention"]] == [16, 4, 16]  # attention at 16x16 and the middle


def test_the_table_of_a_conditional_mnist_model_adds_up_and_a_non_unet_is_refused():
    model = UNet(UNetConfig.mnist(num_classes=10))
    rows = parameter_table(model)
    assert sum(r["total"] for r in rows) == count_parameters(model)
    assert rows[1]["part"] == "label embedding" and rows[1]["total"] == 11 * 4 * 32
    with pytest.raises(TypeError, match="model must be a UNet"):
        parameter_table(torch.nn.Linear(2, 2))
