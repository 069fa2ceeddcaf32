"""The U-Net: the paper's CIFAR-10 configuration equals diffusers' UNet2DModel in the released layout."""

import pytest
import torch
import torch.nn.functional as F

from ddpm_tutor.models import UNet, UNetConfig, count_parameters, unet_from_diffusers
from ddpm_tutor.models.convert import DDPM_CIFAR10_DIFFUSERS_CONFIG, config_from_diffusers
from ddpm_tutor.models.unet import Downsample

PAPER_PARAMS = 35_746_307  # Ho et al. 2020: "35.7M"; the count of the released google/ddpm-cifar10-32


@pytest.fixture(scope="module")
def diffusers_unet():
    """diffusers' UNet2DModel in the released configuration, every weight redrawn so zero-inits hide nothing."""
    diffusers = pytest.importorskip("diffusers")  # only the tests that compare with it are skipped without it
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(**DDPM_CIFAR10_DIFFUSERS_CONFIG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model


@pytest.fixture(scope="module")
def converted(diffusers_unet):
    cfg, sd = unet_from_diffusers(diffusers_unet)
    model = UNet(cfg)
    model.load_state_dict(sd, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def cifar_inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 32, 32, generator=g), torch.tensor([3, 871])


def test_converted_weights_give_diffusers_outputs(diffusers_unet, converted, cifar_inputs):
    x, t = cifar_inputs
    with torch.no_grad():
        ref = diffusers_unet(x, t).sample
        out = converted(x, t)
    scale = ref.abs().max().item()
    assert scale > 1e-2  # the perturbed network does not output ~0, so the comparison means something
    assert torch.allclose(out, ref, rtol=0, atol=1e-4 * scale), (out - ref).abs().max().item()


def test_equivalence_test_detects_symmetric_downsampling_padding(converted, diffusers_unet, cifar_inputs, monkeypatch):
    # Negative control: padding=1 on both sides (PyTorch's habit) instead of TF's SAME must be caught.
    monkeypatch.setattr(Downsample, "forward", lambda self, x: self.conv(F.pad(x, (1, 1, 1, 1))))
    x, t = cifar_inputs
    with torch.no_grad():
        ref = diffusers_unet(x, t).sample
        out = converted(x, t)
    assert (out - ref).abs().max().item() > 1e-2 * ref.abs().max().item()


def test_time_embedding_matches_released_model():
    get_timestep_embedding = pytest.importorskip("diffusers.models.embeddings").get_timestep_embedding

    from ddpm_tutor.models.mlp import timestep_embedding

    t = torch.arange(1000)
    ours = timestep_embedding(t, 128)
    ref = get_timestep_embedding(t, 128, flip_sin_to_cos=False, downscale_freq_shift=1)
    assert torch.equal(ours, ref)


def test_paper_preset_has_the_papers_parameter_count(diffusers_unet):
    with torch.device("meta"):  # counting needs shapes only
        assert count_parameters(UNet(UNetConfig.ddpm_cifar10())) == PAPER_PARAMS
    assert count_parameters(diffusers_unet) == PAPER_PARAMS
    # the released config is the paper's model; it was saved for inference, without the training dropout
    assert config_from_diffusers(DDPM_CIFAR10_DIFFUSERS_CONFIG) == UNetConfig.ddpm_cifar10(dropout=0.0)


@pytest.mark.parametrize("preset", ["mnist", "ddpm_cifar10"])
@pytest.mark.parametrize("num_classes", [None, 10])
def test_output_shape(preset, num_classes):
    cfg = getattr(UNetConfig, preset)(num_classes=num_classes)
    model = UNet(cfg).eval()
    x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    y = None if num_classes is None else torch.tensor([0, 9])
    with torch.no_grad():
        out = model(x, torch.tensor([0, 999]), y)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.all(out == 0)  # zero-initialised output conv: a fresh model predicts 0


@pytest.mark.parametrize("num_classes", [None, 10])
def test_output_depends_on_t_and_on_its_own_batch_item_only(num_classes):
    torch.manual_seed(0)
    model = UNet(UNetConfig.mnist(num_classes=num_classes)).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():  # redrawn: the zero-initialised output conv would make every output 0
            p.normal_(0.0, 0.05, generator=g)
        x, t = torch.randn(3, 1, 28, 28, generator=g), torch.tensor([5, 500, 900])
        y = None if num_classes is None else torch.tensor([1, 2, 3])
        out = model(x, t, y)
        assert out.abs().max() > 1e-2
        # the step index reaches the output: item 0 at t = 6 instead of 5, the rest as before
        moved = model(x, torch.tensor([6, 500, 900]), y)
        assert (moved[0] - out[0]).abs().max() > 1e-4 * out[0].abs().max()
        torch.testing.assert_close(moved[1:], out[1:], rtol=1e-5, atol=1e-5)
        # item 0 alone, or next to other images, steps and labels, gives the same output
        others = torch.cat([x[:1], torch.randn(2, 1, 28, 28, generator=g)])
        y2 = None if y is None else torch.tensor([1, 7, 0])
        torch.testing.assert_close(model(others, torch.tensor([5, 20, 999]), y2)[0], out[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x[:1], t[:1], None if y is None else y[:1])[0], out[0], rtol=1e-5, atol=1e-5)


def test_class_labels_change_the_output_and_none_means_null_label():
    torch.manual_seed(0)
    model = UNet(UNetConfig.mnist(num_classes=10)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
        x, t = torch.randn(2, 1, 28, 28), torch.tensor([5, 500])
        out0, out1 = model(x, t, torch.tensor([0, 0])), model(x, t, torch.tensor([1, 1]))
        out_none, out_null = model(x, t), model(x, t, torch.tensor([10, 10]))
    assert (out0 - out1).abs().max() > 1e-3
    assert torch.equal(out_none, out_null)


def _train_steps(model, n_steps, batch):
    """n_steps of AdamW on L_simple (MSE between the output and the noise); returns the losses."""
    c = model.config
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.0)  # no decay: changes come from grads
    x0 = torch.rand(batch, c.in_channels, c.image_size, c.image_size) * 2 - 1
    losses = []
    for _ in range(n_steps):
        eps = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,))
        loss = F.mse_loss(model(0.8 * x0 + 0.6 * eps, t), eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_one_training_step_of_the_paper_model():
    torch.manual_seed(0)
    model = UNet(UNetConfig.ddpm_cifar10()).train()
    before = {k: v.clone() for k, v in model.named_parameters()}
    (loss,) = _train_steps(model, 1, batch=2)
    assert torch.isfinite(torch.tensor(loss))
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    # the zero-initialised output conv blocks every gradient behind it, so exactly it learns first
    assert changed == {"conv_out.weight", "conv_out.bias"}


def test_gradients_reach_every_parameter_within_three_steps():
    # step 1 opens conv_out, step 2 the blocks' last convs and attention outputs, step 3 everything behind them
    torch.manual_seed(0)
    model = UNet(UNetConfig.mnist(num_classes=10, dropout=0.1)).train()
    before = {k: v.clone() for k, v in model.named_parameters()}
    losses = _train_steps(model, 3, batch=4)
    assert all(torch.isfinite(torch.tensor(losses)))
    unchanged = [k for k, v in model.named_parameters() if torch.equal(v, before[k])]
    assert unchanged == []


@pytest.fixture(scope="module")
def mnist_model():
    return UNet(UNetConfig.mnist()).eval()


@pytest.mark.parametrize(
    "x_shape, t, match",
    [
        ((2, 3, 28, 28), [1, 2], r"\(B, 1, 28, 28\)"),  # wrong channel count
        ((2, 1, 32, 32), [1, 2], r"\(B, 1, 28, 28\)"),  # wrong size
        ((1, 28, 28), [1], r"\(B, 1, 28, 28\)"),  # no batch dimension
        ((2, 1, 28, 28), [1, 2, 3], r"shape \(2,\)"),  # batch mismatch
        ((2, 1, 28, 28), [0.5, 2.0], "integer"),  # float t
        ((2, 1, 28, 28), [-1, 2], "0..T-1"),  # negative t
    ],
)
def test_bad_inputs_raise(mnist_model, x_shape, t, match):
    with pytest.raises(ValueError, match=match):
        mnist_model(torch.randn(x_shape), torch.tensor(t))


def test_bad_labels_raise(mnist_model):
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="unconditional"):
        mnist_model(x, t, torch.tensor([1, 2]))
    cond = UNet(UNetConfig.mnist(num_classes=10))
    with pytest.raises(ValueError, match=r"0\.\.10"):
        cond(x, t, torch.tensor([1, 11]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        cond(x, t, torch.tensor([1]))
    with pytest.raises(ValueError, match="floating-point"):
        mnist_model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), t)


def test_scalar_t_is_broadcast(mnist_model):
    x = torch.randn(3, 1, 28, 28)
    assert mnist_model(x, 7).shape == x.shape


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(attn_resolutions=(8,)), "attn_resolutions"),  # 28 -> 14 -> 7 has no 8x8 level
        (dict(image_size=30), "divisible"),
        (dict(ch=40), "num_groups"),
        (dict(dropout=1.0), "dropout"),
        (dict(num_classes=0), "num_classes"),
    ],
)
def test_bad_configs_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig.mnist(**overrides)


def test_config_round_trips_through_plain_types():
    cfg = UNetConfig.mnist(num_classes=10)
    assert UNetConfig(**cfg.to_dict()) == cfg


def test_converter_refuses_what_our_unet_does_not_implement():
    # attention on the up path at 8x8 while the down path has it at 16x16: not the paper's (mirrored) model
    bad_up = dict(
        DDPM_CIFAR10_DIFFUSERS_CONFIG, up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    )
    with pytest.raises(ValueError, match="mirror"):
        config_from_diffusers(bad_up)
    with pytest.raises(ValueError, match="flip_sin_to_cos"):
        config_from_diffusers(dict(DDPM_CIFAR10_DIFFUSERS_CONFIG, flip_sin_to_cos=True))
    with pytest.raises(ValueError, match="downsample_padding"):
        config_from_diffusers(dict(DDPM_CIFAR10_DIFFUSERS_CONFIG, downsample_padding=1))
    with pytest.raises(ValueError, match="single-head"):
        config_from_diffusers(dict(DDPM_CIFAR10_DIFFUSERS_CONFIG, attention_head_dim=8))


def test_converter_refuses_incomplete_or_misshapen_weights(diffusers_unet):
    sd = dict(diffusers_unet.state_dict())
    sd.pop("conv_out.bias")
    with pytest.raises(ValueError, match="lack"):
        unet_from_diffusers(sd)
    sd = dict(diffusers_unet.state_dict())
    sd["conv_in.weight"] = torch.zeros(128, 1, 3, 3)
    with pytest.raises(ValueError, match="shape"):
        unet_from_diffusers(sd)
    sd = dict(diffusers_unet.state_dict(), **{"extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="no counterpart"):
        unet_from_diffusers(sd)
