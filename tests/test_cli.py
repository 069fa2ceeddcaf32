import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddpm_tutor.checkpoint import load_checkpoint
from ddpm_tutor.cli import main
from ddpm_tutor.data import images
from ddpm_tutor.samplers import ddpm_sample
from ddpm_tutor.train import load_model

# a tiny 2-D run: a few seconds
TINY_TOY = ["toy2d", "--dataset", "8gaussians", "--n-data", "500", "--hidden", "16", "--T", "50", "--quiet"]


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ddpm_tutor", *args], cwd=cwd, capture_output=True, text=True)


def test_train_sample_evaluate_toy2d(tmp_path):
    r = run("train", *TINY_TOY, "--steps", "30", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ckpt = tmp_path / "runs" / "8gaussians" / "checkpoint.pt"
    assert load_checkpoint(ckpt)["step"] == 30
    r = run("sample", "--checkpoint", str(ckpt), "--n", "200", "--sampler", "ddim", "--steps", "10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    png = ckpt.with_name("samples_ddim.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run("evaluate", "--checkpoint", str(ckpt), "--n", "200", "--sampler", "ddim", cwd=tmp_path)
    assert r.returncode == 0 and "noise" not in r.stderr and "ratio" in r.stdout
    # an existing run is never overwritten silently; --resume continues it
    r = run("train", "toy2d", "--dataset", "8gaussians", "--steps", "30", "--quiet", cwd=tmp_path)
    assert r.returncode != 0 and "--resume" in r.stderr
    # ... exactly: a finished run has nothing left to do, and its length cannot change (the lr's cosine decay)
    r = run("train", *TINY_TOY, "--resume", cwd=tmp_path)
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stderr
    r = run("train", *TINY_TOY, "--steps", "40", "--resume", cwd=tmp_path)
    assert r.returncode == 2 and "--steps 30 (saved) vs 40 (asked)" in r.stderr
    assert load_checkpoint(ckpt)["step"] == 30


def test_bad_dataset_is_refused(tmp_path):
    r = run("train", "toy2d", "--dataset", "spiral", "--steps", "1", cwd=tmp_path)
    assert r.returncode != 0 and "--dataset must be one of" in r.stderr
    assert not (tmp_path / "runs").exists()


# --- sample: the samples themselves (.npy, .pt), labels and guidance ---------------------------------------
def sample(*args):
    """`sample` in this process (no second torch import), on the CPU so results compare exactly."""
    return main(["sample", "--device", "cpu", *args])


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "run"
    with torch.random.fork_rng():  # training seeds the global generator; other tests keep theirs
        assert main(["train", *TINY_TOY, "--steps", "30", "--device", "cpu", "--out", str(out)]) == 0
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def cond_unet_ckpt(tmp_path_factory):
    # Random "digits" stand in for MNIST: loading the real ones offline costs ~10 s, and only the plumbing of
    # labels and guidance is under test here, not what the digits look like.
    def fake_mnist(train=True):
        g = torch.Generator().manual_seed(0)
        return torch.rand(64, 1, 28, 28, generator=g) * 2 - 1, torch.arange(64) % 10

    out = tmp_path_factory.mktemp("unet") / "run"
    with pytest.MonkeyPatch.context() as mp, torch.random.fork_rng():
        mp.setattr(images, "load_mnist", fake_mnist)
        assert (
            main(
                [
                    "train",
                    "mnist",
                    "--conditional",
                    "--n-data",
                    "64",
                    "--steps",
                    "2",
                    "--batch-size",
                    "8",
                    "--T",
                    "20",
                    "--quiet",
                    "--device",
                    "cpu",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    return out / "checkpoint.pt"


def test_sample_npy_is_exactly_the_samplers_output(toy_ckpt, tmp_path, capsys):
    out = tmp_path / "samples.npy"
    assert sample("--checkpoint", str(toy_ckpt), "--n", "300", "--seed", "7", "--out", str(out)) == 0
    x = np.load(out)
    assert x.dtype == np.float32 and x.shape == (300, 2)
    model, sched, _ = load_model(toy_ckpt, device="cpu")  # the EMA weights, as `sample` uses
    ref = ddpm_sample(model, sched, (300, 2), generator=torch.Generator().manual_seed(7), device="cpu")
    torch.testing.assert_close(torch.from_numpy(x), ref)
    assert np.abs(x).max() > 1  # so the comparison above would catch a clamp to [-1, 1]
    line = capsys.readouterr().out
    assert "300 samples by ddpm (50 steps)" in line and str(out) in line
    assert [p.name for p in tmp_path.iterdir()] == ["samples.npy"]  # no temporary file left behind


def test_sample_pt_and_defaults_2d(toy_ckpt, tmp_path):
    out = tmp_path / "s.pt"
    assert sample("--checkpoint", str(toy_ckpt), "--out", str(out)) == 0  # no --n, --sampler: the 2-D defaults
    d = torch.load(out)
    assert d["samples"].shape == (2000, 2) and d["samples"].dtype == torch.float32 and d["labels"] is None
    assert d["meta"] == {
        "checkpoint": str(toy_ckpt.resolve()),
        "sampler": "ddpm",
        "steps": 50,
        "eta": None,
        "spacing": None,
        "var_type": "fixed_small",
        "guidance": 0.0,
        "seed": 0,
        "n": 2000,
    }
    # the same seed gives the same samples in either format
    assert sample("--checkpoint", str(toy_ckpt), "--n", "2000", "--out", str(tmp_path / "s.npy")) == 0
    assert torch.equal(d["samples"], torch.from_numpy(np.load(tmp_path / "s.npy")))
    assert (
        sample(
            "--checkpoint",
            str(toy_ckpt),
            "--n",
            "10",
            "--sampler",
            "ddim",
            "--steps",
            "5",
            "--eta",
            "0.5",
            "--out",
            str(out),
        )
        == 0
    )
    assert torch.load(out)["meta"] | {"checkpoint": None} == {
        "checkpoint": None,
        "sampler": "ddim",
        "steps": 5,
        "eta": 0.5,
        "spacing": "quadratic",  # the default for 2-D models (cli.DDIM_SPACING)
        "var_type": None,
        "guidance": 0.0,
        "seed": 0,
        "n": 10,
    }


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--out", "samples.jpg"], "--out must end in .png (a picture), .npy"),
        (["--n", "0"], "argument --n: must be an integer >= 1, got '0'"),
        (["--sampler", "ddim", "--eta", "-0.5"], "argument --eta: must be a number in [0, 1]"),
        (["--sampler", "ddim", "--steps", "0"], "argument --steps: must be an integer >= 1"),
        (["--sampler", "ddim", "--steps", "51"], "--steps must be in 1..50"),
        (["--labels", "0"], "--labels needs a class-conditional model"),
        (["--guidance", "1"], "--guidance needs a class-conditional model"),
    ],
)
def test_sample_refuses_bad_flags_and_writes_nothing(toy_ckpt, tmp_path, flags, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        sample("--checkpoint", str(toy_ckpt), "--out", str(tmp_path / "s.npy"), *flags)
    assert list(tmp_path.iterdir()) == []
    assert not list(toy_ckpt.parent.glob("samples*"))


def test_bad_suffix_is_refused_before_the_checkpoint_is_read(tmp_path):
    with pytest.raises(SystemExit, match=r"\.png.*\.npy.*\.pt.*got 'x\.jpeg'"):
        sample("--checkpoint", str(tmp_path / "missing.pt"), "--out", "x.jpeg")


def test_sample_labels_and_guidance_of_a_conditional_unet(cond_unet_ckpt, tmp_path):
    def draw(name, *flags):
        out = tmp_path / name
        assert sample("--checkpoint", str(cond_unet_ckpt), "--steps", "2", "--out", str(out), *flags) == 0
        return torch.load(out)

    threes = draw("threes.pt", "--n", "3", "--labels", "3")
    assert threes["samples"].shape == (3, 1, 28, 28) and threes["meta"]["sampler"] == "ddim"  # the image default
    assert threes["labels"].dtype == torch.int64 and threes["labels"].tolist() == [3, 3, 3]
    guided = draw("guided.pt", "--n", "3", "--labels", "3", "--guidance", "2")
    assert guided["meta"]["guidance"] == 2.0 and guided["labels"].tolist() == [3, 3, 3]
    assert not torch.equal(guided["samples"], threes["samples"])  # the guidance changed the draw

    a, b = draw("a.pt", "--n", "12", "--seed", "5"), draw("b.pt", "--n", "12", "--seed", "5")  # default: uniform
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["samples"], b["samples"])
    assert a["labels"].dtype == torch.int64 and a["labels"].shape == (12,)
    assert 0 <= int(a["labels"].min()) and int(a["labels"].max()) <= 9 and len(a["labels"].unique()) > 1
    other = draw("c.pt", "--n", "12", "--seed", "6", "--labels", "uniform")
    assert not torch.equal(other["labels"], a["labels"])

    for flags, message in (
        (["--labels", "10"], "--labels must be a class 0..9 or 'uniform', got '10'"),
        (["--labels", "all"], "--labels must be a class 0..9 or 'uniform', got 'all'"),
        (["--guidance", "-1"], "argument --guidance: must be a finite number >= 0"),
    ):
        with pytest.raises(SystemExit, match=re.escape(message)):
            draw("refused.pt", "--n", "2", *flags)
    assert not (tmp_path / "refused.pt").exists()


def test_sample_png_of_images_is_the_grid_of_the_samples(cond_unet_ckpt, tmp_path):
    from PIL import Image
    from torchvision.utils import make_grid

    for name in ("s.png", "s.pt"):
        assert (
            sample(
                "--checkpoint",
                str(cond_unet_ckpt),
                "--steps",
                "2",
                "--n",
                "4",
                "--labels",
                "5",
                "--out",
                str(tmp_path / name),
            )
            == 0
        )
    png = torch.tensor(np.array(Image.open(tmp_path / "s.png").convert("L")), dtype=torch.float32)
    grid = make_grid((torch.load(tmp_path / "s.pt")["samples"].clamp(-1, 1) + 1) / 2, nrow=2)[0]  # 2 x 2 digits
    assert png.shape == grid.shape == (2 * 28 + 3 * 2, 2 * 28 + 3 * 2)
    assert (png - 255 * grid).abs().max() <= 1  # one grey level of rounding
