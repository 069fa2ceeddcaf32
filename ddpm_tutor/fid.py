"""FID and Inception Score of generated images, computed by torchmetrics.

FID (Heusel et al. 2017) fits Gaussians N(mu_r, S_r), N(mu_g, S_g) to features of real and generated images and
reports their Frechet distance |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^{1/2}) (the formula of
:func:`ddpm_tutor.classifier.frechet_distance`). The Inception Score (Salimans et al. 2016) is
exp(E_x KL(p(y|x) || p(y))) over the classes of the same network, averaged over 10 splits of the samples.

The features are those of the original TensorFlow FID code: torch-fidelity's port of its InceptionV3 (2048-d
pool features; 1008 logits for IS), images resized to 299x299 by TF1's bilinear rule, so numbers at n = 50,000
compare with published ones (DDPM on CIFAR-10: FID 3.17, IS 9.46, Ho et al. 2020, table 1). Fewer samples bias
FID upward: numbers at different n are not comparable. Its weights (91 MB) download once into torch.hub's
folder; offline without them an InceptionUnavailableError says what to put where.

    stats = real_stats("cifar10")                        # once per data set, kept under CACHE_DIR/fid_stats
    r = fid_is(sample_fn, 50_000, real=stats)            # sample_fn(b, generator) -> (b, 3, 32, 32) in [-1, 1]
    r["fid"], r["is_mean"], r["is_std"], r["n"]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, tensor_checksum

Tensor = torch.Tensor
FID_N = 50_000  # the sample count of published FIDs (and of Ho et al. 2020's)
IS_SPLITS = 10  # the Inception Score is averaged over this many splits of the samples (Salimans et al. 2016)
STATS_FORMAT = "ddpm_tutor/fid_stats/1"  # the "format" entry of a file of real statistics
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file of the TF Inception weights
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
DATASETS = ("cifar10", "mnist")  # what real_images loads


class InceptionUnavailableError(RuntimeError):
    """The Inception network's weights are neither on disk nor downloadable here."""


def _need_torch_fidelity() -> None:
    try:
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
    except ImportError as e:
        raise ImportError("FID and IS need torchmetrics: pip install torchmetrics torch-fidelity") from e
    if not _TORCH_FIDELITY_AVAILABLE:
        raise ImportError("FID and IS need torch-fidelity (its InceptionV3): pip install torch-fidelity")


def _with_inception_weights(make: Callable[[], nn.Module]) -> nn.Module:
    """``make()``, which loads the Inception weights; a failed download reported as InceptionUnavailableError."""
    _need_torch_fidelity()
    where = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return make()
    except (OSError, RuntimeError) as e:  # urllib's URLError is an OSError; a cut-short file a RuntimeError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise InceptionUnavailableError(
            f"FID's Inception network needs its weights {INCEPTION_FILE} (91 MB) in {where}, downloaded on first "
            f"use from {INCEPTION_URL}, which failed here ({first}): run once where there is a network (e.g. "
            f"Colab), or put that file into {where}"
        ) from None


def inception(feature: str = "2048") -> nn.Module:
    """torch-fidelity's InceptionV3 (as torchmetrics wraps it), giving ``feature``: "2048" (pool features, FID)
    or "logits_unbiased" (the 1008 logits, IS). Input uint8 (B, 3, H, W), resized to 299x299 by TF1's bilinear
    rule, as in torch-fidelity and the original FID code (torchmetrics' default, antialias=True, differs)."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    return _with_inception_weights(
        lambda: NoTrainInceptionV3(name="inception-v3-compat", features_list=[feature], antialias=False)
    )


def feature_key(feature: nn.Module | None) -> str:
    """What names a feature extractor in the real statistics' file name: the default Inception's name, else the
    module's ``cache_key`` attribute, else its class name and the checksum of its weights."""
    if feature is None:
        return "inception-v3-compat-2048"
    key = getattr(feature, "cache_key", None)
    if key is None:
        key = f"{type(feature).__name__}-{tensor_checksum(feature.state_dict()).split(':')[1][:12]}"
    return str(key)


def real_images(dataset: str, split: str = "train") -> Tensor:
    """The real images of ``dataset`` ("cifar10" or "mnist") as uint8 (N, C, H, W): CIFAR-10 through
    load_cifar10 (50,000 train / 10,000 test), MNIST through load_mnist without its 5,000-digit fallback (FID
    against other digits would not be MNIST's). Offline and not on disk: DatasetUnavailableError."""
    from .data import images

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if dataset == "cifar10":
        ds = images.load_cifar10(images.DEFAULT_ROOT, train=split == "train", flip=False)
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) uint8 as stored
    if dataset == "mnist":
        try:
            x, _ = images.load_mnist(images.DEFAULT_ROOT, train=split == "train", fallback=False)
        except images.DatasetUnavailableError:
            where = Path(images.DEFAULT_ROOT).expanduser() / "MNIST" / "raw"
            raise images.DatasetUnavailableError(
                f"MNIST is not under {where} and could not be downloaded: run where there is a network (e.g. "
                f"Colab), or put its four files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) into {where}"
            ) from None
        return images.from_model_range(x)
    raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")


def to_inception_input(x: Tensor) -> Tensor:
    """Images (B, C, H, W) in the model range [-1, 1] -> uint8 (B, 3, H, W): round((x + 1) * 127.5) exactly
    (data.images.from_model_range), one channel repeated three times. Out-of-range values raise."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B, 1 or 3, H, W), got shape {tuple(x.shape)}")
    from .data.images import from_model_range

    u8 = x if x.dtype == torch.uint8 else from_model_range(x.float())
    return u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8


def _fid_metric(feature: nn.Module | None, device):
    """torchmetrics' FID on ``feature`` (default: 2048 Inception pool features, TF1's resize as :func:`inception`)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if feature is None:
        return _with_inception_weights(lambda: FrechetInceptionDistance(feature=2048, antialias=False)).to(device)
    return FrechetInceptionDistance(feature=feature).to(device)


def _batches(total: int, batch: int):
    return [min(batch, total - i) for i in range(0, total, batch)]


def stats_path(dataset: str, split: str, n: int | None, feature: nn.Module | None, cache_dir=None) -> Path:
    """The file that keeps the real statistics of (dataset, split, n, feature extractor)."""
    if cache_dir is None:
        from .pretrained import CACHE_DIR

        cache_dir = CACHE_DIR / "fid_stats"
    return Path(cache_dir) / f"{dataset}-{split}-{'all' if n is None else n}-{feature_key(feature)}.pt"


def real_stats(
    dataset: str,
    *,
    split: str = "train",
    n: int | None = None,
    feature: nn.Module | None = None,
    batch: int = 250,
    device=None,
    cache_dir=None,
    progress: bool = True,
) -> dict:
    """Feature sums of the first ``n`` (default: all) real images of ``dataset``: {"sum" (F,), "cov_sum" (F, F)
    float64, "num", "key"}, torchmetrics' real-image state. Computed once and kept at :func:`stats_path` (atomic
    write, weights_only read); a kept file that fails its checks is computed again, with a warning."""
    from .device import default_device

    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 2):
        raise ValueError(f"n must be None (all images) or an integer >= 2, got {n!r}")
    key = {"dataset": dataset, "split": split, "n": n, "feature": feature_key(feature)}
    path = stats_path(dataset, split, n, feature, cache_dir)
    if path.is_file():
        try:
            state = load_checkpoint(path)
            if state.get("format") != STATS_FORMAT or state.get("key") != key:
                raise CheckpointError(f"{path} holds other statistics than {key}")
            return state
        except CheckpointError as err:
            warnings.warn(f"{err}; computing the real statistics again", stacklevel=2)
    device = torch.device(device) if device else default_device()
    x = real_images(dataset, split)
    if n is not None:
        if n > len(x):
            raise ValueError(f"n={n} exceeds the {len(x)} {split} images of {dataset}")
        x = x[:n]
    metric = _fid_metric(feature, device)
    from tqdm.auto import tqdm

    with torch.inference_mode():
        i = 0
        for b in tqdm(_batches(len(x), batch), desc=f"real {dataset} features", disable=not progress):
            metric.update(to_inception_input(x[i : i + b]).to(device), real=True)
            i += b
    state = {
        "format": STATS_FORMAT,
        "key": key,
        "sum": metric.real_features_sum.cpu(),
        "cov_sum": metric.real_features_cov_sum.cpu(),
        "num": int(metric.real_features_num_samples),
    }
    save_checkpoint(state, path)
    return state


def fid_is(
    samples: Tensor | Callable[[int, torch.Generator], Tensor],
    n: int | None = None,
    *,
    real: dict | Tensor,
    feature: nn.Module | None = None,
    is_feature: nn.Module | None = None,
    inception_score: bool = True,
    is_splits: int = IS_SPLITS,
    batch: int = 250,
    seed: int = 0,
    amp: str = "auto",
    device=None,
    progress: bool = True,
) -> dict:
    """FID (and IS) of ``n`` generated images against ``real``: {"fid", "is_mean", "is_std", "n", "n_real",
    "autocast"} (IS entries None without ``inception_score``).

    samples: images (N, C, H, W) in [-1, 1] (the first n of them), or ``sample_fn(b, generator)`` returning b
    images in [-1, 1], called on batches of at most ``batch`` that add up to n, with one generator seeded by
    ``seed``; samples are clamped to [-1, 1] (a sampler's last step may overshoot), then made uint8 exactly.
    Sampling runs under torch.inference_mode, with bf16 autocast where the device computes it natively
    (``amp`` "auto"; "bf16" always, "off" never), and a progress bar. real: :func:`real_stats`' dict, or real
    images (M, C, H, W) in [-1, 1]. feature / is_feature: the FID / IS feature modules (uint8 input; default
    torch-fidelity's InceptionV3, :func:`inception`).
    """
    from tqdm.auto import tqdm

    from .device import default_device
    from .train import AMP_MODES, native_bf16

    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if torch.is_tensor(samples):
        if samples.ndim != 4:
            raise ValueError(f"samples must be images (N, C, H, W), got shape {tuple(samples.shape)}")
        n = len(samples) if n is None else n
        if n > len(samples):
            raise ValueError(f"n={n} exceeds the {len(samples)} samples given")
    elif not callable(samples):
        raise TypeError(f"samples must be a tensor of images or sample_fn(b, generator), got {type(samples).__name__}")
    elif n is None:
        raise ValueError("n (how many samples to draw) is required with a sample_fn")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (FID needs a covariance), got {n!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    device = torch.device(device) if device else default_device()
    autocast = amp == "bf16" or (amp == "auto" and native_bf16(device))

    fid = _fid_metric(feature, device)
    if isinstance(real, dict):
        if real.get("key", {}).get("feature", feature_key(feature)) != feature_key(feature):
            raise ValueError(f"real statistics of feature {real['key']['feature']!r}, not {feature_key(feature)!r}")
        fid.real_features_sum = real["sum"].to(device)
        fid.real_features_cov_sum = real["cov_sum"].to(device)
        fid.real_features_num_samples = torch.tensor(int(real["num"]), device=device)
    elif torch.is_tensor(real):
        with torch.inference_mode():
            for i in range(0, len(real), batch):
                fid.update(to_inception_input(real[i : i + batch]).to(device), real=True)
    else:
        raise TypeError(f"real must be real_stats' dict or real images (M, C, H, W), got {type(real).__name__}")
    isc = None
    if inception_score:
        from torchmetrics.image.inception import InceptionScore

        with warnings.catch_warnings():  # it keeps every logit vector: n x 1008 floats, 200 MB at n = 50,000
            warnings.filterwarnings("ignore", message=".*will save all extracted features")
            isc = InceptionScore(
                feature=inception("logits_unbiased") if is_feature is None else is_feature, splits=is_splits
            ).to(device)

    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        i = 0
        for b in tqdm(_batches(n, batch), desc="FID samples", disable=not progress):
            if torch.is_tensor(samples):
                x = samples[i : i + b].to(device)
            else:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    x = samples(b, g)
                if not torch.is_tensor(x) or x.shape[0] != b:
                    raise ValueError(f"sample_fn({b}, generator) must return {b} images, got {getattr(x, 'shape', x)}")
            u8 = to_inception_input(x.float().clamp(-1, 1)).to(device)
            fid.update(u8, real=False)
            if isc is not None:
                isc.update(u8)
            i += b
        out = {"fid": float(fid.compute()), "is_mean": None, "is_std": None, "n": n}
        if isc is not None:
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                torch.manual_seed(seed)  # IS shuffles the samples into its splits: the same splits each time
                warnings.filterwarnings("ignore", message="std\\(\\): degrees of freedom")  # one split: std NaN
                mean, std = isc.compute()
            out.update(is_mean=float(mean), is_std=float(std))
    out.update(n_real=int(fid.real_features_num_samples), autocast=autocast)
    return out
