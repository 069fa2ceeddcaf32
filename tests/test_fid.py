"""FID and IS (ddpm_tutor.fid, torchmetrics) against closed forms, the real-statistics cache, and `evaluate --fid`.

Small stand-in feature modules take the Inception network's place (torchmetrics accepts any nn.Module), so no
weights are downloaded; the Inception path itself is checked only for its offline error."""

import math
import re
import urllib.error

import numpy as np
import pytest
import torch
from torch import nn

from ddpm_tutor import fid, pretrained
from ddpm_tutor.checkpoint import FORMAT, save_checkpoint
from ddpm_tutor.classifier import frechet_distance, gaussian_stats
from ddpm_tutor.cli import main
from ddpm_tutor.data import images
from ddpm_tutor.data.images import to_model_range


class Linear(nn.Module):
    """uint8 (B, 3, H, W) -> features (B, F): a fixed random linear map of the pixels / 255 (counts its calls)."""

    def __init__(self, pixels: int, features: int = 6, seed: int = 0, scale: float = 1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(pixels, features, generator=g, dtype=torch.float64) * scale / pixels**0.5
        self.register_buffer("w", w)
        self.num_features, self.calls = features, 0

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3  # what torch-fidelity's InceptionV3 takes
        self.calls += 1
        return (x.double() / 255).flatten(1) @ self.w


def u8(n, c=3, size=8, seed=0, high=256):
    return torch.randint(0, high, (n, c, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_torchmetrics_fid_is_the_closed_form_frechet_distance():
    feat = Linear(3 * 8 * 8)
    a, b = u8(300, seed=1), u8(200, seed=2, high=200)  # two different distributions
    r = fid.fid_is(to_model_range(a), real=to_model_range(b), feature=feat, inception_score=False, device="cpu")
    want = frechet_distance(*gaussian_stats(feat(b)), *gaussian_stats(feat(a)))
    assert want > 0.01 and r["fid"] == pytest.approx(want, rel=1e-6)
    assert r["n"] == 300 and r["n_real"] == 200 and r["is_mean"] is None


def test_fid_of_a_set_against_itself_and_against_its_shift():
    feat = Linear(3 * 8 * 8)
    a = u8(400, seed=3, high=200)
    same = fid.fid_is(to_model_range(a), real=to_model_range(a), feature=feat, inception_score=False, device="cpu")
    assert abs(same["fid"]) < 1e-8
    # +40 grey levels shift every linear feature by 40/255 * (sum of its weights) and keep the covariance:
    # FID = |mu_1 - mu_2|^2 exactly
    shifted = fid.fid_is(to_model_range(a + 40), real=to_model_range(a), feature=feat, inception_score=False)
    assert shifted["fid"] == pytest.approx(float(((40 / 255) * feat.w.sum(0)).square().sum()), rel=1e-8)


def test_inception_score_is_exp_of_the_mean_kl_to_the_marginal():
    logits = Linear(3 * 8 * 8, features=5, seed=4)
    x = u8(120, seed=5)
    r = fid.fid_is(to_model_range(x), real=to_model_range(u8(10)), feature=Linear(192), is_feature=logits, is_splits=1)
    p = torch.softmax(logits(x), 1).numpy()  # p(y|x), (N, 5)
    marginal = p.mean(0)
    want = math.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1)))
    assert want > 1.01 and r["is_mean"] == pytest.approx(want, rel=1e-6)


def test_samples_from_a_sample_fn_come_in_batches_from_one_generator_and_grey_becomes_rgb():
    """sample_fn(b, g) is called on batches adding up to n; the result equals the same samples given at once.
    One channel images go in repeated to three (the stand-in asserts 3 channels)."""
    sizes = []

    def sample_fn(b, g):
        sizes.append(b)
        return torch.rand(b, 1, 8, 8, generator=g) * 2.2 - 1.1  # overshoots [-1, 1] a little: clamped

    feat = Linear(3 * 8 * 8)
    real = to_model_range(u8(50, c=1, seed=6))
    r = fid.fid_is(sample_fn, 10, real=real, feature=feat, inception_score=False, batch=4, seed=7, amp="off")
    assert sizes == [4, 4, 2]
    g = torch.Generator().manual_seed(7)
    x = torch.cat([torch.rand(b, 1, 8, 8, generator=g) * 2.2 - 1.1 for b in (4, 4, 2)]).clamp(-1, 1)
    whole = fid.fid_is(x, real=real, feature=feat, inception_score=False)
    assert r["fid"] == pytest.approx(whole["fid"], rel=1e-12) and r["n"] == 10 and not r["autocast"]
    assert whole["fid"] == pytest.approx(
        frechet_distance(*gaussian_stats(feat(images.from_model_range(real).expand(-1, 3, -1, -1))),
                         *gaussian_stats(feat(images.from_model_range(x).expand(-1, 3, -1, -1)))),
        rel=1e-6,
    )  # fmt: skip


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_sampling_runs_under_inference_mode_and_the_asked_autocast(amp):
    seen = []

    def sample_fn(b, g):
        seen.append((torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu")))
        w = torch.ones(8, 8)
        return (torch.rand(b, 3, 8, 8, generator=g) @ w / 8 * 2 - 1).clamp(-1, 1)  # bf16 under autocast

    r = fid.fid_is(sample_fn, 6, real=to_model_range(u8(8)), feature=Linear(192), inception_score=False, amp=amp)
    assert seen == [(True, amp == "bf16")] and r["autocast"] == (amp == "bf16") and math.isfinite(r["fid"])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(samples=torch.zeros(1, 3, 8, 8)), ValueError, "n must be an integer >= 2"),
        (dict(samples=torch.zeros(4, 3, 8, 8), n=5), ValueError, "n=5 exceeds the 4 samples"),
        (dict(samples=torch.zeros(4, 2, 8, 8)), ValueError, r"\(B, 1 or 3, H, W\)"),
        (dict(samples=torch.full((4, 3, 8, 8), float("nan"))), ValueError, "NaN"),
        (dict(samples=lambda b, g: torch.zeros(b, 3, 8, 8)), ValueError, "n .* is required with a sample_fn"),
        (dict(samples=lambda b, g: torch.zeros(1, 3, 8, 8), n=4), ValueError, "must return 4 images"),
        (dict(samples=torch.zeros(4, 3, 8, 8), amp="fp16"), ValueError, "amp must be one of"),
        (dict(samples="images"), TypeError, "samples must be a tensor"),
    ],
)
def test_bad_samples_are_refused(kwargs, error, message):
    real = to_model_range(u8(8))
    with pytest.raises(error, match=message):
        fid.fid_is(**{"n": None, **kwargs}, real=real, feature=Linear(192), inception_score=False)
    with pytest.raises(ValueError, match="must lie in"):  # real images beyond [-1, 1] are not clamped, refused
        fid.fid_is(torch.zeros(4, 3, 8, 8), real=real * 1.5, feature=Linear(192), inception_score=False)


def test_real_statistics_are_computed_once_and_kept(tmp_path, monkeypatch):
    real = u8(64, seed=8)
    loads = []
    monkeypatch.setattr(fid, "real_images", lambda dataset, split="train": loads.append(dataset) or real)
    feat = Linear(192)
    first = fid.real_stats("cifar10", feature=feat, cache_dir=tmp_path, batch=16, progress=False, device="cpu")
    assert feat.calls == 4 and loads == ["cifar10"] and first["num"] == 64
    (path,) = tmp_path.iterdir()
    assert path == fid.stats_path("cifar10", "train", None, feat, tmp_path)
    again = fid.real_stats("cifar10", feature=feat, cache_dir=tmp_path, progress=False)
    assert feat.calls == 4 and loads == ["cifar10"]  # read from disk: neither the images nor the features again
    samples = to_model_range(u8(32, seed=9))
    r1 = fid.fid_is(samples, real=first, feature=feat, inception_score=False)
    r2 = fid.fid_is(samples, real=again, feature=feat, inception_score=False)
    direct = fid.fid_is(samples, real=to_model_range(real), feature=feat, inception_score=False)
    assert r1["fid"] == r2["fid"] == pytest.approx(direct["fid"], rel=1e-12)
    # another n, split or feature extractor is another file
    fid.real_stats("cifar10", n=32, feature=feat, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.iterdir())) == 2 and loads == ["cifar10"] * 2
    with pytest.raises(ValueError, match="real statistics of feature"):
        fid.fid_is(samples, real=first, feature=Linear(192, seed=1), inception_score=False)


def test_a_damaged_statistics_file_is_computed_again(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "real_images", lambda dataset, split="train": u8(20, seed=10))
    feat = Linear(192)
    good = fid.real_stats("mnist", feature=feat, cache_dir=tmp_path, progress=False)
    path = fid.stats_path("mnist", "train", None, feat, tmp_path)
    path.write_bytes(path.read_bytes()[:500])  # cut short, as by an interrupted copy
    with pytest.warns(UserWarning, match="not a ddpm_tutor checkpoint.*computing the real statistics again"):
        redone = fid.real_stats("mnist", feature=feat, cache_dir=tmp_path, progress=False)
    assert feat.calls == 2 and torch.equal(redone["cov_sum"], good["cov_sum"])
    assert fid.real_stats("mnist", feature=feat, cache_dir=tmp_path, progress=False)["num"] == 20  # rewritten whole
    assert feat.calls == 2


def test_missing_inception_weights_offline_is_one_clear_error(monkeypatch, tmp_path):
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tfi, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    for make in (lambda: fid.inception("logits_unbiased"), lambda: fid._fid_metric(None, "cpu")):
        with pytest.raises(fid.InceptionUnavailableError) as err:
            make()
        text = str(err.value)
        assert fid.INCEPTION_FILE in text and str(tmp_path / "checkpoints") in text and "network" in text
        assert "Name or service not known" in text and "\n" not in text


# --- the command line ---------------------------------------------------------------------------------------
def _export(path, spec, T=20):
    """A sampling export in the package's format (what export_weights writes) of a model with random weights."""
    from ddpm_tutor.checkpoint import build_model
    from ddpm_tutor.schedules import Schedule

    torch.manual_seed(0)
    net = build_model(spec)
    with torch.no_grad():  # every weight redrawn: zero-initialised layers (the output, the labels) would hide the model
        for p in net.parameters():
            p.normal_(0.0, 0.05)
    ema = {**{f"module.{k}": v for k, v in net.state_dict().items()}, "n_averaged": torch.tensor(1)}
    schedule = {"name": "linear", "beta": Schedule.get("linear", T).beta}
    state = {"format": FORMAT, "kind": "export", "model_spec": spec, "schedule": schedule, "ema": ema}
    state["train_config"] = {"parameterization": "eps"}
    return save_checkpoint(state, path)


def _tiny_mnist(path, num_classes=None):
    from ddpm_tutor.models.unet import UNetConfig

    cfg = UNetConfig.mnist(ch=8, ch_mult=(1, 2), attn_resolutions=(), num_groups=4, num_classes=num_classes)
    return _export(path, {"kind": "unet", "config": cfg.to_dict(), "data": {"kind": "mnist"}})


@pytest.fixture
def tiny_mnist(tmp_path):
    return _tiny_mnist(tmp_path / "tiny.pt")


@pytest.fixture
def standins(tmp_path, monkeypatch):
    """40 random "digits" as MNIST's training set, stand-in feature modules for the Inception network, and the
    cache under tmp_path. Returns (real uint8 images, FID features)."""
    real = u8(40, c=1, size=28, seed=11)
    monkeypatch.setattr(images, "load_mnist", lambda root=None, train=True, **kw: (to_model_range(real), None))
    monkeypatch.setattr(pretrained, "CACHE_DIR", tmp_path / "cache")
    # scaled up so that FID is in the hundreds: its 2 printed decimals then test it to about 1e-5
    feat, logits = Linear(3 * 28 * 28, features=4, scale=40.0), Linear(3 * 28 * 28, features=3, seed=1)
    monkeypatch.setattr(fid, "inception", lambda feature="2048": logits if feature == "logits_unbiased" else feat)
    monkeypatch.setattr(fid, "_fid_metric", lambda f, d, real=fid._fid_metric: real(feat if f is None else f, d))
    return real, feat


def _fid_of(x, real, feat):
    """The closed-form FID of samples x in [-1, 1] against uint8 one-channel real images, on feat."""
    rgb = images.from_model_range(x.clamp(-1, 1)).expand(-1, 3, -1, -1)
    return frechet_distance(*gaussian_stats(feat(real.expand(-1, 3, -1, -1))), *gaussian_stats(feat(rgb)))


def test_evaluate_fid_and_is_of_a_tiny_mnist_model(tiny_mnist, standins, tmp_path, capsys):
    from ddpm_tutor.samplers import ddim_sample
    from ddpm_tutor.train import load_model

    real, feat = standins
    args = ["evaluate", "--checkpoint", str(tiny_mnist), "--device", "cpu", "--fid", "12", "--is", "--steps", "2"]
    assert main([*args, "--amp", "off"]) == 0
    out = capsys.readouterr().out
    fid_line = re.search(r"FID ([0-9.]+) at n = 12 samples, against 40 real mnist training images", out)
    is_line = re.search(r"IS ([0-9.]+) \+- ([0-9.]+) at n = 12 samples \(10 splits\)", out)
    assert fid_line and is_line and "biased upward relative to the usual n = 50,000" in out
    # the same 12 samples drawn here: DDIM, 2 leading steps, eta 0, one generator seeded with --seed 0
    model, sched, _ = load_model(tiny_mnist, device="cpu")
    g = torch.Generator().manual_seed(0)
    x = ddim_sample(model, sched, (12, 1, 28, 28), steps=2, eta=0.0, spacing="leading", generator=g, clip_x0=True)
    want = _fid_of(x, real, feat)
    assert want > 100 and float(fid_line[1]) == pytest.approx(want, abs=0.006)
    assert len(list((tmp_path / "cache" / "fid_stats").iterdir())) == 1  # the real statistics, kept


def test_evaluate_fid_of_a_conditional_model_draws_uniform_labels_batch_by_batch(standins, tmp_path, capsys):
    """Labels uniform over the classes, drawn from --seed + 1 as `sample` draws them, each batch its slice."""
    from ddpm_tutor.samplers import ddim_sample
    from ddpm_tutor.train import load_model

    real, feat = standins
    ckpt = _tiny_mnist(tmp_path / "cond.pt", num_classes=10)
    argv = ["--fid", "6", "--batch-size", "4", "--steps", "2", "--seed", "3", "--amp", "off", "--device", "cpu"]
    assert main(["evaluate", "--checkpoint", str(ckpt), *argv]) == 0
    out = capsys.readouterr().out
    assert "6 samples by ddim (2 DDIM steps (leading spacing), eta 0), labels uniform over 0..9, guidance 0" in out
    model, sched, _ = load_model(ckpt, device="cpu")
    labels = torch.randint(0, 10, (6,), generator=torch.Generator().manual_seed(4))

    def draw(*batches):
        g = torch.Generator().manual_seed(3)
        return torch.cat(
            [
                ddim_sample(model.with_labels(y), sched, (len(y), 1, 28, 28), steps=2, eta=0.0, spacing="leading",
                            generator=g, clip_x0=True)
                for y in batches
            ]
        )  # fmt: skip

    want = _fid_of(draw(labels[:4], labels[4:]), real, feat)
    assert float(re.search(r"FID ([0-9.]+) at n = 6 samples", out)[1]) == pytest.approx(want, abs=0.006)
    assert abs(_fid_of(draw(labels[:4], labels[:2]), real, feat) - want) > 0.1  # the labels matter this much


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--is"], "--is does not apply without --fid N"),
        (["--fid", "10", "--n", "5"], "--n does not apply with --fid"),
        (["--fid", "1"], "argument --fid: must be an integer >= 2"),
        (["--fid", "10", "--sets", "2"], "--sets does not apply to an image model"),
    ],
)
def test_evaluate_refuses_fid_flags_that_do_not_fit(tiny_mnist, flags, message):
    with pytest.raises(SystemExit, match=re.escape(message)) as exit_:
        main(["evaluate", "--checkpoint", str(tiny_mnist), "--device", "cpu", *flags])
    assert exit_.value.code == 2


def test_fid_of_a_2d_model_is_a_usage_error(tmp_path):
    from ddpm_tutor.models import MLPConfig

    toy = _export(tmp_path / "toy.pt", {"kind": "mlp", "config": MLPConfig(hidden=8).__dict__, "data": {}})
    with pytest.raises(SystemExit, match=r"--fid does not apply to a 2-D model .*: FID and IS are for image models"):
        main(["evaluate", "--checkpoint", str(toy), "--fid", "100"])


def test_fid_without_the_real_images_offline_says_where_to_put_them(tmp_path, monkeypatch, capsys):
    from ddpm_tutor.models.unet import UNetConfig

    cfg = UNetConfig(image_size=8, ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_groups=4)
    ckpt = _export(tmp_path / "c.pt", {"kind": "unet", "config": cfg.to_dict(), "data": {"kind": "cifar10"}})
    monkeypatch.setattr(images, "DEFAULT_ROOT", str(tmp_path / "data"))
    real_load = images.load_cifar10
    monkeypatch.setattr(images, "load_cifar10", lambda root, **kw: real_load(root, **{**kw, "download": False}))
    monkeypatch.setattr(pretrained, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--checkpoint", str(ckpt), "--fid", "10", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and "--fid: CIFAR-10 is not under" in err
    assert "cifar-10-python.tar.gz" in err and str(tmp_path / "data") in err


def test_a_pretrained_hub_model_offline_is_a_usage_error(tmp_path, monkeypatch, capsys):
    pytest.importorskip("diffusers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pretrained, "CACHE_DIR", tmp_path)
    monkeypatch.setitem(pretrained.HUB, "ddpm-cifar10", ("nobody/no-such-ddpm", "cifar10"))
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--checkpoint", "ddpm-cifar10", "--fid", "10", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and "--checkpoint ddpm-cifar10:" in err and "needs a network" in err


def test_sample_takes_a_pretrained_name(tmp_path, monkeypatch, capsys):
    """`sample --checkpoint mnist` draws from the shipped model, as `evaluate` does; its meta names the model."""
    monkeypatch.chdir(tmp_path)  # no file called "mnist" here
    out = tmp_path / "s.pt"
    assert (
        main(["sample", "--checkpoint", "mnist", "--n", "2", "--steps", "2", "--out", str(out), "--device", "cpu"]) == 0
    )
    saved = torch.load(out, weights_only=True)
    assert saved["samples"].shape == (2, 1, 28, 28) and saved["meta"]["checkpoint"] == "mnist"
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--checkpoint", "no-such-model", "--n", "2", "--device", "cpu"])
    assert exit_.value.code == 2
