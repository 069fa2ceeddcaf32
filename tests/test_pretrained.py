import subprocess
import sys

import pytest
import torch

from ddpm_tutor.checkpoint import load_checkpoint
from ddpm_tutor.models.unet import UNet, UNetConfig
from ddpm_tutor.pretrained import CHECKPOINT_DIR, export_weights, load_pretrained
from ddpm_tutor.schedules import Schedule
from ddpm_tutor.train import TrainConfig, Trainer, load_model

TINY = dict(ch=8, ch_mult=(1, 2), attn_resolutions=(14,), num_groups=4, num_classes=10)


def _trainer(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 28, 28, generator=g) * 2 - 1
    y = torch.randint(0, 10, (16,), generator=g)
    cfg = UNetConfig.mnist(**TINY)
    model = UNet(cfg)
    tr = Trainer(
        model,
        Schedule.linear(50),
        x,
        TrainConfig(steps=2, batch_size=4, p_uncond=0.1),
        labels=y,
        device="cpu",
        model_spec={"kind": "unet", "config": cfg.to_dict()},
    )
    tr.run(progress=False)
    return tr, tr.save(tmp_path / "train.pt")


def test_export_round_trip(tmp_path):
    tr, ckpt = _trainer(tmp_path)
    out = export_weights(ckpt, tmp_path / "small.pt", notes={"command": "test"})
    small = torch.load(out, weights_only=True)
    assert {"format", "model_spec", "schedule", "ema", "train_config", "notes"} <= set(small)
    assert "opt" not in small and "model" not in small
    assert out.stat().st_size < ckpt.stat().st_size
    model, sched, state = load_model(out, device="cpu")
    assert state["notes"] == {"command": "test"} and state["step"] == 2
    torch.testing.assert_close(sched.beta, tr.sched.beta)
    x = torch.randn(2, 1, 28, 28)
    t = torch.tensor([3, 40])
    y = torch.tensor([1, 10])
    with torch.no_grad():
        torch.testing.assert_close(model.with_labels(y)(x, t), tr.ema_model.eval()(x, t, y))
    assert model.null_label == 10 and model.parameterization == "eps"


def test_shipped_mnist_model_loads():
    path = CHECKPOINT_DIR / "mnist_unet.pt"
    assert path.stat().st_size < 10 * 2**20
    assert load_checkpoint(path)["format"] == "ddpm_tutor/1"
    model, sched, meta = load_pretrained("mnist", device="cpu")
    assert sched.T == 1000 and meta["model_spec"]["config"]["num_classes"] == 10
    assert (CHECKPOINT_DIR / "mnist_unet.md").is_file()
    with torch.no_grad():
        out = model.with_labels(torch.tensor([3, 10]))(torch.zeros(2, 1, 28, 28), torch.tensor([0, 999]))
    assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all()
    assert model.null_label == 10 and model.parameterization == meta["train_config"]["parameterization"]


def test_cli_train_mnist_two_steps(tmp_path):
    """`python -m ddpm_tutor train mnist` runs offline on a subset (--n-data) and writes a checkpoint."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ddpm_tutor",
            "train",
            "mnist",
            "--conditional",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--n-data",
            "64",
            "--T",
            "50",
            "--quiet",
            "--out",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    state = load_checkpoint(tmp_path / "m" / "checkpoint.pt")
    assert state["step"] == 2 and state["train_config"]["p_uncond"] == 0.1
    assert state["model_spec"]["kind"] == "unet" and state["model_spec"]["data"]["n_train"] == 64


def test_shipped_mnist_model_is_the_recipe_its_card_names():
    """The shipped file was made by `train mnist --conditional` with the recipe TrainConfig.mnist(), ran all of
    its steps, and its model card states that step count."""
    from dataclasses import asdict

    from ddpm_tutor.train import TrainConfig

    _, _, meta = load_pretrained("mnist", device="cpu")
    recipe = asdict(TrainConfig.mnist(seed=0, p_uncond=0.1))
    # fields added to TrainConfig later take their defaults, which must be the values the run used
    assert asdict(TrainConfig.from_dict(meta["train_config"])) == recipe
    assert meta["step"] == recipe["steps"] == len(meta["losses"])
    card = (CHECKPOINT_DIR / "mnist_unet.md").read_text()
    assert f"{meta['step']:,} steps" in card


def test_files_of_another_format_are_refused_by_every_loader(tmp_path):
    from ddpm_tutor.checkpoint import save_checkpoint
    from ddpm_tutor.models import MLPDenoiser
    from ddpm_tutor.schedules import Schedule
    from ddpm_tutor.train import TrainConfig, Trainer, load_model

    path = save_checkpoint({"format": "someone_else/2", "ema": {}}, tmp_path / "other.pt")
    for load in (
        lambda: load_model(path),
        lambda: export_weights(path, tmp_path / "out.pt"),
        lambda: Trainer(MLPDenoiser(), Schedule.linear(10), torch.zeros(4, 2), TrainConfig(steps=1), device="cpu").load(
            path
        ),
    ):
        with pytest.raises(ValueError, match=r"expected format 'ddpm_tutor/1', found 'someone_else/2'"):
            load()
    assert not (tmp_path / "out.pt").exists()  # nothing half-written in its place


def test_shipped_digit_classifier_loads():
    from ddpm_tutor.checkpoint import CLASSIFIER_FORMAT
    from ddpm_tutor.classifier import load_digit_classifier

    assert CLASSIFIER_FORMAT == "ddpm_tutor/classifier/1"  # the tag of the shipped file: changing it orphans the file
    assert load_checkpoint(CHECKPOINT_DIR / "mnist_classifier.pt")["format"] == CLASSIFIER_FORMAT
    clf = load_digit_classifier()
    assert not clf.training
    with torch.no_grad():
        logits = clf(torch.zeros(2, 1, 28, 28))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_classifier_and_diffusion_checkpoints_refuse_each_other():
    """checkpoint.check_format guards both formats: each loader names the format it expected and the one it found."""
    from ddpm_tutor.classifier import load_classifier

    with pytest.raises(
        ValueError,
        match=r"not a ddpm_tutor digit classifier: expected format "
        r"'ddpm_tutor/classifier/1', found 'ddpm_tutor/1'",
    ):
        load_classifier(CHECKPOINT_DIR / "mnist_unet.pt")
    with pytest.raises(
        ValueError,
        match=r"not a ddpm_tutor checkpoint: expected format 'ddpm_tutor/1', "
        r"found 'ddpm_tutor/classifier/1'",
    ):
        load_model(CHECKPOINT_DIR / "mnist_classifier.pt")


def test_sample_shape_and_model_come_from_the_spec():
    from ddpm_tutor.checkpoint import build_model, model_config, sample_shape
    from ddpm_tutor.models import MLPConfig, MLPDenoiser

    unet = {"kind": "unet", "config": UNetConfig.mnist(**TINY).to_dict()}
    assert sample_shape(unet) == (1, 28, 28) and model_config(unet).num_classes == 10
    assert isinstance(build_model(unet), UNet) and build_model(unet).config == UNetConfig.mnist(**TINY)
    mlp = {"kind": "mlp", "config": MLPConfig(data_dim=3, hidden=8).__dict__}
    assert sample_shape(mlp) == (3,) and isinstance(build_model(mlp), MLPDenoiser)
    assert sample_shape({"kind": "mlp", "config": {}}) == (2,)  # a field left out takes the config's default
    with pytest.raises(ValueError, match=r"kind is one of \('mlp', 'unet'\), got kind 'gan'"):
        sample_shape({"kind": "gan", "config": {}})
    with pytest.raises(ValueError, match="does not fit MLPConfig.*width"):
        build_model({"kind": "mlp", "config": {"width": 8}})


def test_checkpoints_without_what_a_loader_needs_are_refused(tmp_path):
    from ddpm_tutor.checkpoint import FORMAT, ema_weights, save_checkpoint

    path = save_checkpoint({"format": FORMAT, "model_spec": {"kind": "mlp", "config": {}}}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"without 'schedule', 'ema'"):
        load_model(path)
    tr, ckpt = _trainer(tmp_path)
    small = export_weights(ckpt, tmp_path / "small.pt")
    with pytest.raises(ValueError, match="without 'model'"):  # an export keeps only the EMA weights
        load_model(small, ema=False)
    with pytest.raises(ValueError, match="without 'model', 'opt'"):  # nor can a run resume from it
        tr.load(small)
    with pytest.raises(ValueError, match="no key starts with 'module.'"):
        ema_weights(tr.model.state_dict())


def test_the_cards_hand_copied_numbers_are_the_quality_files():
    """The model card's weighting table and per-class sentence were copied from the benchmark's output: each
    value must be the quality file's, at the precision printed."""
    import re

    from ddpm_tutor.pretrained import quality_results

    q = quality_results("mnist")
    card = (CHECKPOINT_DIR / "mnist_unet.md").read_text()
    table = card.split("## Why the plain v loss")[1].split("\n## ")[0]
    rows = {"min-SNR-5": "ours_minsnr", "**plain v loss**": "ours_v_simple_1400", "eps's L_simple": "ours_eps_lsimple"}
    for start, role in rows.items():
        (line,) = [ln for ln in table.splitlines() if ln.startswith(f"| {start}")]
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")][1:]
        d, bpd = q[role]["DDIM-50"], q[role]["bpd"]
        want = [f"{d['frechet_clf']:.2f}", f"{d['frechet_rand']:.2f}", f"{d['border']:.4f}", f"{d['grey']:.4f}"]
        want += [f"{d['confidence']:.3f}", f"{d['accuracy']:.3f}", f"{bpd['bpd']:.2f} ± {bpd['se']:.2f}"]
        assert cells == want, (role, cells, want)
    # the table of the mixture of steps: DDIM-50 and DDPM-1000, each row a role of the quality file
    mix = card.split("## Why more draws of the nearly clean steps")[1].split("\n## ")[0]
    rows = {
        "0 (": "ours_uniform_t",
        "0.2 |": "ours_mix02",
        "0.3 |": "ours_mix03",
        "0.5 |": "ours_mix05",
        "**this model": "ours",
        "diffusers": "diffusers_ema",
        "uniform t, 1,280 steps": "ours_uniform_t_1280",  # one row: DDPM-1000 at n = 256 only
        "2,560 steps": "ours_2560",  # DDIM-50, and DDPM-1000 at n = 256
        "2,400 steps, bf16": "ours_bf16_2400",  # likewise
    }
    seen = 0
    for line in mix.splitlines():
        cells = [c.strip().strip("*").strip() for c in line.strip().strip("|").split("|")]
        role = next((r for start, r in rows.items() if line.startswith(f"| {start}")), None)
        if role is None:
            continue
        sampler = cells[1]
        # a row at a second n is keyed with it (bench_vs_diffusers --n-in-key): DDPM-1000@256 beside DDPM-1000
        at_n = f"{sampler}@{cells[2]}"
        d = q[role][at_n] if at_n in q[role] else q[role][sampler]
        want = [sampler, str(d["n"]), f"{d['frechet_clf']:.2f}", f"{d['frechet_rand']:.2f}", f"{d['border']:.4f}"]
        want += [f"{d['grey']:.4f}", f"{d['confidence']:.3f}", f"{d['accuracy']:.3f}" if "accuracy" in d else "-"]
        want += [f"{q[role]['bpd']['bpd']:.3f} ± {q[role]['bpd']['se']:.3f}" if "bpd" in q[role] else "-"]
        assert cells[1:] == want, (role, cells, want)
        seen += 1
    # six roles with both samplers; this model, the baseline and uniform t at 1,280 steps at n = 256; 2,560 steps
    # and 2,400 in bf16 with both
    assert seen == 2 * 6 + 3 + 2 * 2, seen
    # the verdict's DDPM-1000 sentence at n = 256: this model against the baseline (real digits in brackets)
    flat = " ".join(card.split())
    num = r"(\d+\.\d+)"
    pair, real = f"{num} against {num}", rf"\({num}\)"  # this model against the baseline, (real digits)
    three = f"{pair} {real}"
    said = re.search(
        rf"classifier Frechet {three}, \*\*random-net Frechet {pair}\*\* {real}, bright frame pixels {three}, "
        rf"grey pixels {three}, confidence {three}, balance {three}; label accuracy {num}",
        flat,
    )
    assert said, "the verdict's n = 256 sentence (classifier Frechet ... label accuracy) is not where the test reads it"
    a, b, r = q["ours"]["DDPM-1000@256"], q["diffusers_ema"]["DDPM-1000@256"], q["real"]["n=256"]
    assert a["n"] == b["n"] == r["n"] == 256
    want = []
    for k, f in (("frechet_clf", ".2f"), ("frechet_rand", ".2f"), ("border", ".4f"), ("grey", ".4f")):
        want += [format(d[k], f) for d in (a, b, r)]
    for k in ("confidence", "balance"):
        want += [format(d[k], ".3f") for d in (a, b, r)]
    assert list(said.groups()) == want + [f"{a['accuracy']:.3f}"], (said.groups(), want)
    paired = q["diffusers_ema"]["bpd_paired"]
    assert paired["minus"] == "ours" and paired["n"] == q["ours"]["bpd"]["n"] == q["diffusers_ema"]["bpd"]["n"]
    assert f"baseline minus this model, is {paired['mean']:.3f} ± {paired['se']:.3f}" in flat
    # the bullet on uniform t at 1,280 steps quotes its DDPM-1000 row at n = 256 beside this model's and the baseline's
    u = q["ours_uniform_t_1280"]["DDPM-1000@256"]
    fr, gr = (lambda d: f"{d['frechet_rand']:.2f}"), (lambda d: f"{d['grey']:.4f}")
    assert f"reached {fr(u)} against this model's {fr(a)} (baseline {fr(b)}, real digits {fr(r)})" in flat
    assert f"did not move ({gr(u)} against {gr(a)}; baseline {gr(b)})" in flat
    assert f"classifier's distance ({u['frechet_clf']:.2f} against {a['frechet_clf']:.2f})" in flat
    assert u["confidence"] > a["confidence"] and u["accuracy"] > a["accuracy"]  # "confidence and label accuracy"
    # the bullet on twice the steps: its DDPM-1000 row at n = 256, its DDIM-50 row and its paired bits/dim
    L, L50, o50 = q["ours_2560"]["DDPM-1000@256"], q["ours_2560"]["DDIM-50"], q["ours"]["DDIM-50"]
    pl = q["ours_2560"]["bpd_paired"]
    assert pl["minus"] == "ours" and pl["n"] == q["ours"]["bpd"]["n"] == q["ours_2560"]["bpd"]["n"]
    said = f"reached a random-net distance of {fr(L)} against this model's {fr(a)} with DDPM-1000 (baseline {fr(b)}"
    assert f"{said}, real digits {fr(r)})" in flat
    assert f"grey pixels {gr(L)} against {gr(a)} (baseline {gr(b)})" in flat
    assert f"classifier's distance ({L['frechet_clf']:.2f} against {b['frechet_clf']:.2f})" in flat
    assert f"bright frame pixels ({L['border']:.4f} against {b['border']:.4f})" in flat
    assert f"confidence ({L['confidence']:.3f} against {b['confidence']:.3f})" in flat
    bl = q["ours_2560"]["bpd"]
    said = f"bits/dim: {bl['bpd']:.3f} ± {bl['se']:.3f}, and on the same 32 digits {pl['mean']:.3f} ± {pl['se']:.3f}"
    assert f"{said} against" in flat
    assert f"the baseline's paired difference is {paired['mean']:.3f} ± {paired['se']:.3f}" in flat
    said = (
        f"classifier distance {L50['frechet_clf']:.2f} against {o50['frechet_clf']:.2f}, random net {fr(L50)} against "
        f"{fr(o50)}, grey pixels {gr(L50)} against {gr(o50)}, "
        f"label accuracy {L50['accuracy']:.3f} against {o50['accuracy']:.3f}"
    )
    assert said in flat, said
    better = {"frechet_clf": -1, "frechet_rand": -1, "border": -1, "grey": -1, "confidence": 1, "accuracy": 1}
    assert all(s * (L50[k] - o50[k]) > 0 for k, s in better.items())  # "on every axis" with DDIM-50
    assert L["frechet_rand"] > b["frechet_rand"] and pl["mean"] < paired["mean"]  # still behind there; ahead in bits
    assert f"closed most of it (random-net {fr(L)}, grey pixels {gr(L)}:" in flat
    # the bullet on bf16 autocast: DDIM-20 / DDIM-50 / DDPM-1000 at n = 256, bf16 against this model's float32
    keys = ("DDIM-20", "DDIM-50", "DDPM-1000@256")
    h, o = [q["ours_bf16"][k] for k in keys], [q["ours"][k] for k in keys]
    assert all(d["n"] == 256 for d in h + o)

    def three(rows, key, f):
        return " / ".join(format(d[key], f) for d in rows)

    for key, name, f in (
        ("frechet_clf", "classifier Frechet", ".2f"),
        ("frechet_rand", "random-net", ".2f"),
        ("grey", "grey pixels", ".4f"),
        ("accuracy", "label accuracy", ".3f"),
    ):
        said = f"{name} {three(h, key, f)} against {three(o, key, f)}"
        assert said in flat, said
    # the bullet on 2,400 steps in bf16: its DDPM-1000 row at n = 256 against the baseline, ahead of this model
    B, pb = q["ours_bf16_2400"], q["ours_bf16_2400"]["bpd_paired"]
    Bd = B["DDPM-1000@256"]
    assert pb["minus"] == "ours" and pb["n"] == B["bpd"]["n"] == q["ours"]["bpd"]["n"]
    assert f"random-net distance of {fr(Bd)} (baseline {fr(b)}) and grey pixels {gr(Bd)} (baseline {gr(b)})" in flat
    assert f"classifier's distance ({Bd['frechet_clf']:.2f} against {b['frechet_clf']:.2f}) and confidence" in flat
    assert f"confidence ({Bd['confidence']:.3f} against {b['confidence']:.3f})" in flat
    assert f"level on bright frame pixels ({Bd['border']:.4f} against {b['border']:.4f})" in flat
    bb = B["bpd"]
    said = f"bits/dim {bb['bpd']:.3f} ± {bb['se']:.3f}, and {pb['mean']:.3f} ± {pb['se']:.3f} against this model"
    assert said in flat, said
    for k, mine in (("DDIM-20", "DDIM-20"), ("DDIM-50", "DDIM-50"), ("DDPM-1000@256", "DDPM-1000@256")):
        x, y = B[k], q["ours"][mine]  # "ahead of this model with DDIM-20, DDIM-50 and DDPM-1000 on ..."
        assert all(s * (x[a] - y[a]) > 0 for a, s in better.items()), k
    assert pb["mean"] < 0 and Bd["frechet_rand"] > b["frechet_rand"]  # ahead in bits/dim; behind on the random net
    assert f"the random-net distance still stays behind ({fr(Bd)}:" in flat  # the verdict's DDPM-1000 sentence
    ours = q["ours"]["DDIM-50"]
    per_class = re.search(r"per class at DDIM-50: ([0-9., ]+) for 0 to 9", card.replace("\n", " "))[1]
    assert per_class.strip(" ,") == ", ".join(f"{a:.2f}" for a in ours["accuracy_per_class"])
    counts = re.search(r"Predicted classes of its 256 DDIM-50 samples: ([0-9, ]+) for 0 to 9", card.replace("\n", " "))
    assert counts[1].strip(" ,") == ", ".join(str(c) for c in ours["class_counts"])


# --- the paper's CIFAR-10 model from diffusers (google/ddpm-cifar10-32), through a local folder of its layout ----
diffusers_or_skip = pytest.mark.skipif(
    __import__("importlib").util.find_spec("diffusers") is None, reason="diffusers is a test requirement"
)


@pytest.fixture(scope="module")
def tiny_hub_model(tmp_path_factory):
    """A small UNet2DModel of the released architecture family (narrower, one block per level), every weight
    redrawn so that zero-initialised layers hide nothing, saved with its DDPMScheduler as the hub repo is: flat."""
    from diffusers import DDPMScheduler, UNet2DModel

    from ddpm_tutor.models.convert import DDPM_CIFAR10_DIFFUSERS_CONFIG

    cfg = {**DDPM_CIFAR10_DIFFUSERS_CONFIG, "block_out_channels": (16, 32, 32, 32), "norm_num_groups": 8}
    torch.manual_seed(0)
    net = UNet2DModel(**{**cfg, "layers_per_block": 1}).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.05)
    folder = tmp_path_factory.mktemp("hub") / "ddpm-tiny"
    net.save_pretrained(folder)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    scheduler.save_pretrained(folder)
    return folder, net, scheduler


@diffusers_or_skip
@pytest.mark.parametrize("layout", ["flat", "pipeline"])
def test_hub_model_converts_to_the_same_function_and_schedule(tiny_hub_model, tmp_path, layout):
    import shutil

    folder, net, scheduler = tiny_hub_model
    if layout == "pipeline":  # a saved DDPMPipeline keeps them in unet/ and scheduler/
        shutil.copytree(folder, tmp_path / "p" / "unet", ignore=shutil.ignore_patterns("scheduler_config.json"))
        (tmp_path / "p" / "scheduler").mkdir()
        shutil.copy(folder / "scheduler_config.json", tmp_path / "p" / "scheduler")
        folder = tmp_path / "p"
    model, sched, meta = load_pretrained("ddpm-cifar10", device="cpu", repo_id=folder)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 417, 999])
    with torch.no_grad():
        ref, out = net(x, t).sample, model(x, t)
    assert ref.abs().max() > 0.1 and model.parameterization == "eps" and model.null_label is None
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(sched.beta.float(), scheduler.betas, rtol=1e-6, atol=0)
    assert torch.equal(sched.beta, Schedule.linear(1000).beta)  # the paper's, in float64: not diffusers' rounding
    assert meta["model_spec"]["data"] == {"kind": "cifar10"} and meta["notes"]["source"] == str(folder)
    assert meta["notes"]["scheduler_config"]["beta_schedule"] == "linear" and "ema" not in meta


@diffusers_or_skip
def test_hub_model_without_scheduler_config_gets_the_papers_schedule(tiny_hub_model, tmp_path):
    import shutil

    folder = shutil.copytree(tiny_hub_model[0], tmp_path / "bare", ignore=shutil.ignore_patterns("scheduler*"))
    _, sched, meta = load_pretrained("ddpm-cifar10", device="cpu", repo_id=folder)
    assert torch.equal(sched.beta, Schedule.linear(1000).beta) and "missing" in meta["notes"]["scheduler_config"]
    with pytest.raises(ValueError, match="repo_id applies to the hub models ddpm-cifar10, not to the shipped 'mnist'"):
        load_pretrained("mnist", repo_id=folder)


@diffusers_or_skip
def test_scheduler_configs_our_schedule_cannot_represent_are_refused():
    from diffusers import DDPMScheduler

    from ddpm_tutor.models.convert import schedule_from_diffusers

    cosine = DDPMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    sched, parameterization = schedule_from_diffusers(cosine.config)
    assert parameterization == "v" and torch.allclose(sched.beta.float(), cosine.betas, rtol=1e-5, atol=1e-7)
    for change, message in (
        (dict(beta_schedule="scaled_linear"), "beta_schedule='scaled_linear' is not supported"),
        (dict(rescale_betas_zero_snr=True), "rescale_betas_zero_snr=True is not supported"),
        (dict(prediction_type="flow"), "prediction_type='flow' is not supported"),
    ):
        with pytest.raises(ValueError, match=message):
            schedule_from_diffusers({**DDPMScheduler().config, **change})


@diffusers_or_skip
def test_hub_model_offline_and_not_cached_says_it_needs_a_network(tmp_path, monkeypatch):
    from ddpm_tutor import pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pretrained, "CACHE_DIR", tmp_path)
    with pytest.raises(pretrained.HubUnavailableError, match=r"'nobody/no-such-ddpm' is not in the Hugging Face cache.*"
                       r"needs a network once \(e\.g\. Colab\)"):  # fmt: skip
        load_pretrained("ddpm-cifar10", repo_id="nobody/no-such-ddpm")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@diffusers_or_skip
def test_a_hub_conversion_is_kept_and_then_needs_no_diffusers(tiny_hub_model, tmp_path, monkeypatch):
    """The first load of a hub id converts and keeps an export under CACHE_DIR; the next reads that (the converter
    is not called), a damaged kept file is converted again."""
    from ddpm_tutor import pretrained
    from ddpm_tutor.models import convert

    folder, net, _ = tiny_hub_model
    real, calls = convert.load_diffusers_ddpm, []
    monkeypatch.setattr(convert, "load_diffusers_ddpm", lambda repo: calls.append(repo) or real(folder))
    monkeypatch.setattr(pretrained, "CACHE_DIR", tmp_path)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([5, 600])
    first, _, _ = load_pretrained("ddpm-cifar10", device="cpu", repo_id="someone/tiny-ddpm")
    kept = pretrained.hub_cache_path("ddpm-cifar10", "someone/tiny-ddpm")
    assert calls == ["someone/tiny-ddpm"] and kept.is_file() and kept.parent == tmp_path / "pretrained"
    assert load_checkpoint(kept)["kind"] == "export"
    second, sched, meta = load_pretrained("ddpm-cifar10", device="cpu", repo_id="someone/tiny-ddpm")
    assert len(calls) == 1
    with torch.no_grad():
        torch.testing.assert_close(second(x, t), net(x, t).sample, atol=1e-5, rtol=1e-5)
        assert torch.equal(second(x, t), first(x, t))
    kept.write_bytes(kept.read_bytes()[:1000])  # cut short
    load_pretrained("ddpm-cifar10", device="cpu", repo_id="someone/tiny-ddpm")
    assert len(calls) == 2 and load_checkpoint(kept)["kind"] == "export"
