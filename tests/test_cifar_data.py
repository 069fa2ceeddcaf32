"""CIFAR-10 for `train cifar10`: a tiny CIFAR-10 in the real cifar-10-batches-py format, read by torchvision's own
CIFAR10 class (only its md5 check of the real files is replaced), comes through exactly; the paper's recipe and
model; random flips drawn from the trainer's generator; offline without the data, one line and exit 2."""

import argparse
import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar

from ddpm_tutor import cli
from ddpm_tutor.checkpoint import load_checkpoint
from ddpm_tutor.data import images
from ddpm_tutor.models.unet import UNetConfig, count_parameters
from ddpm_tutor.schedules import Schedule
from ddpm_tutor.train import TrainConfig, Trainer

BATCHES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
PER_BATCH = 3  # images in each file (the real ones hold 10,000)
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root) -> dict:
    """cifar-10-batches-py as the Toronto archive holds it: pickled dicts whose "data" is uint8 (n, 3072), each
    row the red, green and blue 32x32 planes in row-major order, and whose "labels" are ints 0..9."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in BATCHES:
        data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        if name == "data_batch_1":  # two pixels placed by hand, to find again in (C, H, W)
            data[0, 31] = 255  # red, row 0, column 31: the top right corner
            data[0, 1024 + 32 * 5 + 2] = 0  # green, row 5, column 2
        labels = [int(v) for v in rng.integers(0, 10, size=PER_BATCH)]
        entry = {"batch_label": name, "labels": labels, "data": data, "filenames": [f"{name}_{i}.png" for i in labels]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": NAMES, "num_cases_per_batch": PER_BATCH, "num_vis": 3072}, f, protocol=2)
    return written


@pytest.fixture
def tiny_cifar(tmp_path, monkeypatch):
    """A tiny CIFAR-10 under the default data root; torchvision's md5 check (of the real files) only asks that
    each file is there."""
    root = tmp_path / "data"
    written = write_cifar10(root)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    monkeypatch.setattr(images, "DEFAULT_ROOT", str(root))
    return written


def test_cifar10_comes_through_torchvision_exactly(tiny_cifar):
    x, y = images.cifar10_tensors(train=True)
    raw = np.concatenate([tiny_cifar[name][0] for name in BATCHES[:5]])
    assert x.shape == (5 * PER_BATCH, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
    # pixel p in 0..255 is p / 127.5 - 1 (Ho et al. 2020, sec. 4), each plane in the row-major order of the format
    expected = torch.from_numpy(raw.reshape(-1, 3, 32, 32).astype(np.float32)) / 127.5 - 1
    assert torch.equal(x, expected)
    assert x[0, 0, 0, 31] == 1.0 and x[0, 1, 5, 2] == -1.0 and x.min() >= -1 and x.max() <= 1
    assert y.dtype == torch.int64 and y.tolist() == sum((tiny_cifar[name][1] for name in BATCHES[:5]), [])
    x_test, y_test = images.cifar10_tensors(train=False)
    assert torch.equal(x_test, torch.from_numpy(tiny_cifar["test_batch"][0].reshape(-1, 3, 32, 32)) / 127.5 - 1)
    assert y_test.tolist() == tiny_cifar["test_batch"][1]


def test_train_cifar10_runs_offline_on_the_files(tiny_cifar, tmp_path, monkeypatch):
    """`train cifar10` (the paper's recipe; a tiny U-Net in place of the paper's 35.7M-parameter one, so that
    two steps take a second): it trains on the first --n-data images and records what it trained with."""
    tiny = UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,))
    monkeypatch.setattr(
        UNetConfig, "ddpm_cifar10", classmethod(lambda cls, **over: UNetConfig(**{**tiny.to_dict(), **over}))
    )
    out = tmp_path / "run"
    argv = ["train", "cifar10", "--n-data", "7", "--steps", "2", "--batch-size", "4", "--T", "10", "--quiet"]
    with torch.random.fork_rng():
        assert cli.main([*argv, "--dropout", "0.2", "--device", "cpu", "--out", str(out)]) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 2 and len(state["losses"]) == 2
    assert state["model_spec"]["data"] == {"kind": "cifar10", "n_train": 7}
    assert state["model_spec"]["config"] == {**tiny.to_dict(), "dropout": 0.2}
    assert state["train_config"] == {**TrainConfig.cifar10().__dict__, "steps": 2, "batch_size": 4}
    assert [line.split(",")[0] for line in (out / "log.jsonl").read_text().splitlines()] == ['{"step": 2']


def test_the_preset_is_the_papers():
    """Ho et al. 2020, appendix B, and their scripts/run_cifar.py: Adam at 2e-4 with a 5,000-step warmup, gradient
    norm clipped at 1, batch 128, EMA 0.9999, random flips, 800k steps of L_simple on eps, no decay."""
    c = TrainConfig.cifar10()
    paper = dict(lr=2e-4, weight_decay=0.0, warmup=5000, grad_clip=1.0, batch_size=128, ema_decay=0.9999, hflip=True)
    paper.update(steps=800_000, parameterization="eps", weighting="simple", cosine_decay=False)
    assert {k: getattr(c, k) for k in paper} == paper
    assert c.amp == "auto"  # ours: bf16 where the hardware has it


def test_train_cifar10_builds_the_papers_model(tiny_cifar):
    args = argparse.Namespace(n_data=4, conditional=None, dropout=None)
    x, labels, model, spec = cli._cifar10_setup(args)
    assert x.shape == (4, 3, 32, 32) and labels is None
    assert count_parameters(model) == 35_746_307  # the paper's "35.7M"; tests/test_unet.py ties it to diffusers
    assert spec["config"] == UNetConfig().to_dict() and spec["config"]["dropout"] == 0.1


def test_random_flips_are_mirror_images_drawn_from_the_seed():
    image = torch.linspace(-1, 1, 3 * 4 * 4).reshape(1, 3, 4, 4)  # no two columns alike: a flip shows
    data = image.expand(8, -1, -1, -1).clone()

    def batches(hflip, global_seed=0):
        cfg = TrainConfig(batch_size=64, hflip=hflip, seed=5)
        tr = Trainer(torch.nn.Linear(1, 1), Schedule.linear(10), data, cfg, device="cpu")
        torch.manual_seed(global_seed)
        return torch.cat([tr._batch()[0] for _ in range(3)])

    x = batches(True)
    flipped = (x == image.flip(-1)).flatten(1).all(1)
    assert (flipped | (x == image).flatten(1).all(1)).all()  # each example whole, mirrored or not
    assert 0.35 < flipped.float().mean() < 0.65  # about half of 192 (a fair coin: 0.5 +- 0.036)
    assert torch.equal(batches(True, global_seed=1), x)  # from the trainer's seeded generator, not torch's global one
    assert not (batches(False) == image.flip(-1)).flatten(1).all(1).any()
    with pytest.raises(ValueError, match=r"hflip flips images \(N, C, H, W\)"):
        Trainer(torch.nn.Linear(2, 2), Schedule.linear(10), torch.zeros(4, 2), TrainConfig(hflip=True), device="cpu")


def test_offline_without_cifar10_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    monkeypatch.setattr(images, "DEFAULT_ROOT", str(tmp_path / "data"))
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "cifar10", "--steps", "1", "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("python -m ddpm_tutor train: error: train cifar10: CIFAR-10 is not under ")
    assert "cifar-10-python.tar.gz" in last and "cifar-10-batches-py" in last and str(tmp_path / "data") in last
    assert not (tmp_path / "run").exists()
