"""Every branch that only a GPU takes, run on the CPU through a seam, against the plain CPU path (issue 15).

Seams: ``device.cuda_available`` (behind every default device: budget.announce, the chapters' setup cells,
Trainer, fid), ``train.native_bf16`` (bf16 autocast under amp="auto"), ``train.channels_last_default`` (NHWC
training), ``checks.on_accelerator`` (device-side range checks); ``distributed.device_for`` reads
``torch.cuda`` itself. What no seam reaches (pinned non-blocking copies, cudnn.benchmark, NCCL) needs a GPU:
tests/test_gpu.py. No tensor goes to CUDA here: forcing "cuda" changes only what is chosen and announced.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn

from ddpm_tutor import budget, checks, device, distributed, fid, train
from ddpm_tutor.data import toy2d
from ddpm_tutor.diffusion import Denoiser
from ddpm_tutor.models import MLPConfig, MLPDenoiser
from ddpm_tutor.models.unet import UNet, UNetConfig
from ddpm_tutor.samplers import ddpm_sample
from ddpm_tutor.schedules import Schedule
from ddpm_tutor.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("part*/*.ipynb"))
# the statements of a setup cell that choose and announce; what follows them loads data and models
CHOOSING = re.compile(r"\bannounce\(|\bdefault_device\(|\bdevice\.type\b")


def force_device(monkeypatch, kind: str) -> None:
    """Make every default device say ``kind`` ("cuda" or "cpu"), whatever this machine has."""
    monkeypatch.setattr(device, "cuda_available", lambda: kind == "cuda")


def test_default_device_follows_the_cuda_seam(monkeypatch):
    assert device.default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    for kind in ("cuda", "cpu"):
        force_device(monkeypatch, kind)
        # budget re-exports default_device (part3/03 calls budget.default_device()): the seam reaches it too
        assert device.default_device() == budget.default_device() == torch.device(kind)


@pytest.mark.parametrize("name", ["ci", "book", "full"])
def test_announce_names_the_budget_and_the_forced_device(monkeypatch, capsys, name):
    monkeypatch.setenv(budget.ENV_VAR, name)
    force_device(monkeypatch, "cuda")
    line = budget.announce(steps=3, scales=[0.0, 1.0])
    assert line == f"budget={name} device=cuda | steps=3, scales=[0.0, 1.0]"
    assert capsys.readouterr().out == line + "\n"
    # a chapter that computes on the CPU says so, and says the GPU it leaves idle; without a GPU, nothing to say
    line = budget.announce(device="cpu", steps=3)
    assert line == f"budget={name} device=cpu | steps=3{CPU_ON_PURPOSE}"
    force_device(monkeypatch, "cpu")
    assert budget.announce(device="cpu", steps=3) == f"budget={name} device=cpu | steps=3"


CPU_ON_PURPOSE = " (a GPU is here; this chapter's computations are small and run on the CPU)"


def _setup_cell(path: Path) -> str:
    """The source of the chapter's first code cell after the Colab install cell, which must announce."""
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert len(code) > 1 and "remove-cell" in code[0].metadata.get("tags", []), f"{path.name}: no install cell"
    source = code[1].source
    assert re.search(r"\bannounce\(", source), f"{path.name}: its first visible code cell does not announce"
    return source


def _choosing_part(source: str) -> list[ast.stmt]:
    """The setup cell's statements up to the last that announces or picks or tests the device."""
    body = ast.parse(source).body
    last = max(i for i, s in enumerate(body) if CHOOSING.search(ast.get_source_segment(source, s)))
    return body[: last + 1]


def _expected_picks(stmts: list[ast.stmt], name: str) -> dict:
    """NAME -> the literal the cell states for budget ``name``, for each ``NAME = [budget.]pick(...)``
    (full falls back to book, as budget.pick documents)."""
    out = {}
    for s in stmts:
        call = s.value if isinstance(s, ast.Assign) and len(s.targets) == 1 else None
        if not (isinstance(call, ast.Call) and isinstance(s.targets[0], ast.Name)):
            continue
        func = call.func
        if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)) != "pick":
            continue
        kw = {k.arg: k.value for k in call.keywords}
        with contextlib.suppress(ValueError):  # a value computed from others is not a literal: not checked
            out[s.targets[0].id] = ast.literal_eval(kw.get(name) or kw["book"])
    return out


def _run_setup(monkeypatch, source: str, stmts: list[ast.stmt], name: str, kind: str) -> tuple[dict, str, list]:
    """Run the choosing part of a setup cell under budget ``name`` with the default device forced to ``kind``:
    its namespace, what it printed, and the thread counts it set (recorded, not applied to this process)."""
    monkeypatch.setenv(budget.ENV_VAR, name)
    force_device(monkeypatch, kind)
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    ns: dict = {"__name__": "__chapter__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(ast.Module(stmts, type_ignores=[]), "<setup cell>", "exec"), ns)
    return ns, out.getvalue(), threads


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_chapter_announces_its_budget_and_the_device_first(monkeypatch, path):
    """Its first output line names the budget and device; under each budget it picks the sizes it states; with
    a GPU forced its device is cuda and it skips its CPU-only thread setting, which the CPU twin takes. A chapter
    announces cuda only if its code uses that device, and one that stays on the CPU says so."""
    source = _setup_cell(path)
    stmts = _choosing_part(source)
    announce = next(
        n for s in stmts for n in ast.walk(s) if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("announce")
    )
    fixed = [k.value.value for k in announce.keywords if k.arg == "device"]
    on = fixed[0] if fixed else "cuda"
    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    uses = len(re.findall(r"device=device\b|\.to\(device\b|\bdevice\)", code))
    # A chapter that announces the GPU puts its work there; one that computes on the CPU says so (device="cpu").
    assert (on == "cuda") == (uses > 0), (path.name, on, uses)
    for name in ("ci", "book", "full"):
        ns, printed, threads_gpu = _run_setup(monkeypatch, source, stmts, name, "cuda")
        for var, value in _expected_picks(stmts, name).items():
            assert ns[var] == value, (path.name, name, var)
        settings = ", ".join(
            f"{k.arg}={eval(ast.unparse(k.value), ns)}" for k in announce.keywords if k.arg != "device"
        )
        first = printed.splitlines()[0] if printed else ""
        line = f"budget={name} device={on}" + (f" | {settings}" if settings else "") + (on == "cpu") * CPU_ON_PURPOSE
        assert first.startswith(line), (path.name, printed)
        if "device" in ns:
            assert ns["device"] == torch.device("cuda"), path.name
    ns, printed, threads_cpu = _run_setup(monkeypatch, source, stmts, "ci", "cpu")
    assert printed.startswith("budget=ci device=cpu"), (path.name, printed)
    cpu_only = len(re.findall(r'if device\.type == "cpu":\s*\n\s*torch\.set_num_threads\(1\)', source))
    assert threads_cpu == threads_gpu + [1] * cpu_only, (path.name, threads_cpu, threads_gpu)


def test_native_bf16_asks_cuda_for_hardware_bf16_only(monkeypatch):
    asked = []

    def is_bf16_supported(**kwargs):
        asked.append(kwargs)
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert train.native_bf16(torch.device("cuda")) is True
    assert asked == [{"including_emulation": False}]  # emulated bf16 is slower than float32: not "native"
    assert train.native_bf16(torch.device("meta")) is False and len(asked) == 1


def _mlp_trainer(**over) -> Trainer:
    torch.manual_seed(0)
    model = MLPDenoiser(MLPConfig(hidden=32, n_blocks=2))
    data = toy2d("moons", 256, torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=4, batch_size=64, lr=1e-3, warmup=2, ema_decay=0.9, seed=3, **over)
    return Trainer(model, Schedule.linear(50), data, cfg, device="cpu")


def test_auto_amp_where_bf16_is_native_takes_the_bf16_path(monkeypatch):
    """On an Ampere+ GPU amp="auto" autocasts (native_bf16 True): forced here, its steps are amp="bf16"'s exactly,
    and track float32's; where bf16 is not native, "auto" is "off" exactly."""
    plain, bf16 = _mlp_trainer(amp="off"), _mlp_trainer(amp="bf16")
    monkeypatch.setattr(train, "native_bf16", lambda d: False)
    auto_off = _mlp_trainer(amp="auto")
    monkeypatch.setattr(train, "native_bf16", lambda d: True)
    auto_on = _mlp_trainer(amp="auto")
    assert auto_on.autocast and bf16.autocast and not auto_off.autocast and not plain.autocast
    for _ in range(3):
        l32, l16, l_on, l_off = (tr.train_step() for tr in (plain, bf16, auto_on, auto_off))
        assert l_on == l16 and l_off == l32 and l16 != l32
        assert abs(l16 - l32) < 0.02 * l32, (l16, l32)
    for a, b in zip(auto_on.model.parameters(), bf16.model.parameters()):
        assert torch.equal(a, b) and a.dtype == torch.float32


class _Features(nn.Module):
    """uint8 images (B, 3, 8, 8) -> 6 fixed random features: a stand-in for Inception (no download)."""

    num_features = 6

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.randn(192, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))

    def forward(self, x):
        return (x.double() / 255).flatten(1) @ self.w


def test_fid_auto_amp_where_bf16_is_native_samples_under_bf16(monkeypatch):
    seen = []

    def sample_fn(b, g):
        seen.append(torch.is_autocast_enabled("cpu"))
        return torch.tanh(torch.randn(b, 3, 8, 8, generator=g) @ torch.ones(8, 8) / 8)  # bf16 under autocast

    real = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    run = dict(real=real, feature=_Features(), inception_score=False, batch=3, seed=2, device="cpu", progress=False)
    bf16 = fid.fid_is(sample_fn, 6, amp="bf16", **run)
    monkeypatch.setattr(train, "native_bf16", lambda d: True)  # fid_is imports it from train at each call
    auto = fid.fid_is(sample_fn, 6, amp="auto", **run)
    assert auto["autocast"] and bf16["autocast"] and seen == [True] * 4  # 6 = 3 + 3: two batches per run
    assert auto["fid"] == bf16["fid"]


SMALL_UNET = UNetConfig.ddpm_cifar10(
    ch=16, ch_mult=(1, 2), image_size=8, attn_resolutions=(4,), num_groups=8, dropout=0.0
)


def _unet_trainer(**kw) -> Trainer:
    torch.manual_seed(0)
    model = UNet(SMALL_UNET)
    for p in model.parameters():  # the zero-initialised output layers would leave most gradients exactly 0
        p.data.add_(0.02 * torch.randn_like(p))
    data = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cfg = TrainConfig(steps=3, batch_size=4, lr=1e-3, warmup=1, ema_decay=0.9, seed=5)
    return Trainer(model, Schedule.linear(100), data, cfg, device="cpu", **kw)


def test_channels_last_training_steps_equal_contiguous_ones(monkeypatch):
    """The default on CUDA for images: NHWC weights and batches. Forced on the CPU, its steps equal NCHW's to
    float32 rounding (the convolutions sum in another order)."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    images, points = torch.zeros(2, 3, 8, 8), torch.zeros(2, 2)
    assert train.channels_last_default(cuda, images) and not train.channels_last_default(cuda, points)
    assert not train.channels_last_default(cpu, images)
    nchw = _unet_trainer()
    monkeypatch.setattr(train, "channels_last_default", lambda d, x: d.type == "cpu" and x.ndim == 4)
    nhwc = _unet_trainer()  # channels_last left to the default, as the chapters and the CLI leave it
    assert nhwc.channels_last and not nchw.channels_last
    conv = nhwc.model.conv_in.weight  # 3x3: NHWC and NCHW strides differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for _ in range(3):
        l1, l2 = nchw.train_step(), nhwc.train_step()
        assert l2 == pytest.approx(l1, rel=1e-5)
        g1, g2 = (torch.cat([p.grad.flatten() for p in tr.model.parameters()]) for tr in (nchw, nhwc))
        torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-6)
    # Adam moves a weight by about lr per step whatever its gradient's size, so rounding noise in a gradient that is
    # 0 in exact arithmetic (the attention key biases: softmax ignores a shift shared by all keys) moves it by a
    # fraction of lr: the weights agree to a tenth of one step, not to float32 rounding
    step = nchw.config.lr / 10
    for (name, a), b in zip(nchw.model.named_parameters(), nhwc.model.parameters()):
        torch.testing.assert_close(b, a, atol=step, rtol=0, msg=name)
    for a, b in zip(nchw.ema.parameters(), nhwc.ema.parameters()):
        torch.testing.assert_close(b, a, atol=step, rtol=0)


def test_device_side_checks_leave_training_and_sampling_unchanged(monkeypatch):
    """On a GPU the step and label checks are device-side asserts (checks.on_accelerator): forced on the CPU, a
    training step and a sampler give bit for bit what the host-side checks give."""
    sched = Schedule.linear(20)

    def run():
        tr = _mlp_trainer()
        losses = [tr.train_step() for _ in range(2)]
        den = Denoiser(tr.model.eval(), sched, "eps")
        with torch.no_grad():
            x = ddpm_sample(den, sched, (32, 2), generator=torch.Generator().manual_seed(4))
        return losses, x

    host_losses, host_x = run()
    calls = []
    monkeypatch.setattr(checks, "on_accelerator", lambda x: calls.append(1) or True)
    dev_losses, dev_x = run()
    assert calls, "the forced branch was never reached"
    assert dev_losses == host_losses and torch.equal(dev_x, host_x)


def test_device_for_under_torchrun_takes_cuda_local_rank(monkeypatch):
    """distributed.device_for reads torch.cuda itself (not device.cuda_available): forced to see two GPUs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    alone, second = distributed.World(), distributed.World(rank=1, size=2, local_rank=1, launched=True)
    assert distributed.device_for(alone, None) == torch.device("cuda")
    assert distributed.device_for(second, None) == distributed.device_for(second, "cuda") == torch.device("cuda", 1)
    assert distributed.device_for(second, "cpu") == torch.device("cpu")  # the gloo twin: every process on the CPU
    with pytest.raises(ValueError, match="each process takes the GPU cuda:LOCAL_RANK"):
        distributed.device_for(second, "cuda:0")
    with pytest.raises(ValueError, match="LOCAL_RANK 2, but this machine has 2 GPUs"):
        distributed.device_for(distributed.World(rank=2, size=3, local_rank=2, launched=True), "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.device_for(second, None) == torch.device("cpu")


@pytest.mark.parametrize("kind", ["cuda", "cpu"])
def test_without_a_budget_set_a_gpu_gets_full_and_says_so(monkeypatch, capsys, kind):
    """Colab with a GPU runtime: DDPM_TUTOR_BUDGET unset gives the paper's settings (full), and the first output
    line says why and how to change it; without a GPU the default stays book. A budget that is set always wins."""
    monkeypatch.delenv(budget.ENV_VAR, raising=False)
    monkeypatch.setattr(device, "cuda_available", lambda: kind == "cuda")
    expected = "full" if kind == "cuda" else "book"
    assert budget.get_budget() == expected
    assert budget.pick(ci=1, book=2, full=3) == (3 if kind == "cuda" else 2)
    line = budget.announce(n=1)
    assert line.startswith(f"budget={expected} device={kind} | n=1")
    assert ("set DDPM_TUTOR_BUDGET=book" in line) == (kind == "cuda")
    monkeypatch.setenv(budget.ENV_VAR, "ci")
    assert budget.get_budget() == "ci" and "set DDPM_TUTOR_BUDGET" not in budget.announce()
