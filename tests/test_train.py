import pathlib
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from ddpm_tutor.checkpoint import load_checkpoint, save_checkpoint
from ddpm_tutor.data import toy2d
from ddpm_tutor.diffusion import Denoiser
from ddpm_tutor.models import MLPConfig, MLPDenoiser
from ddpm_tutor.schedules import Schedule
from ddpm_tutor.train import TrainConfig, Trainer, load_model

CFG = dict(steps=40, batch_size=64, lr=1e-3, warmup=5, ema_decay=0.9, seed=3)


def make_trainer(**over):
    torch.manual_seed(0)
    model = MLPDenoiser(MLPConfig(hidden=32, n_blocks=2))
    data = toy2d("moons", 500, torch.Generator().manual_seed(0))
    return Trainer(
        model,
        Schedule.linear(100),
        data,
        TrainConfig(**{**CFG, **over}),
        device="cpu",
        model_spec={"kind": "mlp", "config": model.config_dict()},
    )


RESUME_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_train import make_trainer
    tr = make_trainer(**{over!r})
    torch.manual_seed(12345)  # a different global state: the checkpoint must restore everything that matters
    tr.load({ckpt!r})
    tr.run(progress=False)
    tr.save({out!r})
""")


@pytest.mark.parametrize("over", [{}, {"p_small_t": 0.3, "small_t_frac": 0.1}], ids=["uniform-t", "mixed-t"])
def test_resume_is_bit_for_bit_in_a_fresh_process(tmp_path, over):
    straight = make_trainer(**over)
    straight.run(progress=False)
    half = make_trainer(**over)
    half.run(CFG["steps"] // 2, progress=False, checkpoint=tmp_path / "half.pt")
    script = RESUME_SCRIPT.format(
        tests=str(pathlib.Path(__file__).parent),
        ckpt=str(tmp_path / "half.pt"),
        out=str(tmp_path / "resumed.pt"),
        over=over,
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    resumed = load_checkpoint(tmp_path / "resumed.pt")
    assert resumed["step"] == CFG["steps"]
    for name, ref in straight.model.state_dict().items():
        assert torch.equal(resumed["model"][name], ref), name
    for name, ref in straight.ema.state_dict().items():
        assert torch.equal(resumed["ema"][name], ref), name
    assert resumed["losses"] == straight.losses
    assert resumed["train_config"]["p_small_t"] == over.get("p_small_t", 0.0)
    # and the test can fail: a run resumed without the generator state diverges
    other = make_trainer(**over)
    other.load(tmp_path / "half.pt")
    other.generator.manual_seed(999)
    other.run(progress=False)
    assert not torch.equal(other.model.state_dict()["inp.weight"], straight.model.state_dict()["inp.weight"])


def test_training_reduces_loss_and_load_model_rebuilds(tmp_path):
    tr = make_trainer(steps=300, lr=3e-3)
    losses = tr.run(progress=False, checkpoint=tmp_path / "m.pt")
    assert sum(losses[-50:]) / 50 < 0.8 * sum(losses[:50]) / 50
    model, sched, state = load_model(tmp_path / "m.pt", device="cpu")
    x, t = torch.randn(5, 2), torch.tensor([0, 10, 50, 70, 99])
    with torch.no_grad():
        assert torch.allclose(model(x, t), tr.ema_model.eval()(x, t))
    assert torch.equal(sched.beta, tr.sched.beta)


def test_load_model_answers_with_eps_for_a_v_network(tmp_path):
    """A v-trained network comes back as a Denoiser answering with eps: eps = sqrt(1 - ab) x_t + sqrt(ab) v
    (Salimans & Ho 2022), so samplers written for eps use it unchanged; as_eps=False gives the bare v-network."""
    tr = make_trainer(steps=5, parameterization="v")
    tr.run(progress=False, checkpoint=tmp_path / "v.pt")
    model, sched, state = load_model(tmp_path / "v.pt", device="cpu")
    bare, _, _ = load_model(tmp_path / "v.pt", device="cpu", as_eps=False)
    assert state["train_config"]["parameterization"] == "v" and model.config == bare.config
    x, t = torch.randn(5, 2), torch.tensor([0, 10, 50, 70, 99])
    ab = sched.alpha_bar[t].float()[:, None]
    with torch.no_grad():
        v = bare(x, t)
        torch.testing.assert_close(v, tr.ema_model.eval()(x, t))
        torch.testing.assert_close(model(x, t), (1 - ab).sqrt() * x + ab.sqrt() * v)
    assert isinstance(model, Denoiser) and model.parameterization == "v" and model.null_label is None
    # and an eps-trained network comes back as a Denoiser of parameterisation eps
    make_trainer(steps=2).run(progress=False, checkpoint=tmp_path / "e.pt")
    eps_model, _, _ = load_model(tmp_path / "e.pt", device="cpu")
    assert isinstance(eps_model, Denoiser) and eps_model.parameterization == "eps"
    assert isinstance(eps_model.net, MLPDenoiser)


def test_nan_loss_stops_with_clear_message():
    tr = make_trainer()
    tr.data = tr.data.clone()
    with torch.no_grad():
        tr.model.inp.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss became nan at step 0"):
        tr.train_step()


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"a": torch.ones(3)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint({"a": Boom()}, path)
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(3))  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind
    # a pickle that would run code is refused by weights_only loading
    torch.save({"f": print}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    "over, msg",
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"ema_decay": 1.0}, r"ema_decay must lie in \[0, 1\)"),
        ({"parameterization": "noise"}, "parameterization must be one of"),
        ({"weighting": "snr3"}, "weighting must be one of"),
        ({"amp": "fp16"}, "amp must be one of"),
    ],
)
def test_bad_config(over, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**over)


def test_bad_data():
    model = MLPDenoiser()
    with pytest.raises(ValueError, match="finite"):
        Trainer(model, Schedule.linear(10), torch.tensor([[0.0, float("nan")]]), device="cpu")
    with pytest.raises(ValueError, match="labels must have shape"):
        Trainer(model, Schedule.linear(10), torch.zeros(4, 2), labels=torch.zeros(3, dtype=torch.long), device="cpu")
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        model(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))


def test_bf16_autocast_step_tracks_float32():
    """amp="bf16" runs the forward pass in bfloat16 but keeps weights, EMA and loss in float32, and its
    loss on the same batch agrees with the float32 loss to bfloat16 precision (not exactly)."""
    tr32, tr16 = make_trainer(), make_trainer(amp="bf16")
    assert tr16.autocast and not tr32.autocast
    l32, l16 = tr32.train_step(), tr16.train_step()  # same seed: same batch, t and noise
    assert l16 != l32 and abs(l16 - l32) < 0.02 * l32, (l16, l32)
    for p in (*tr16.model.parameters(), *tr16.ema_model.parameters()):
        assert p.dtype == torch.float32
    losses = tr16.run(progress=False)
    assert sum(losses[-10:]) < sum(losses[:10]), losses  # it still trains


def test_checkpoints_get_the_permissions_of_a_plain_file(tmp_path):
    """write_atomic's temp file is private (mkstemp: 0600); the finished checkpoint gets 0666 minus the umask,
    as torch.save to a path would give it, so a shared run folder stays readable."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = save_checkpoint({"a": torch.ones(1)}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_trainer_draws_t_from_the_configured_mixture(monkeypatch):
    """p_small_t = 0.5, small_t_frac = 0.1 of T = 100: the steps the loss sees are below 10 with probability
    0.5 + 0.5 * 0.1 = 0.55 (uniform t: 0.1); 40 steps of 512 (standard error 0.0035)."""
    import ddpm_tutor.train as train_module

    seen = []
    real = train_module.diffusion_loss

    def spy(*args, t, **kw):
        seen.append(t.clone())
        return real(*args, t=t, **kw)

    monkeypatch.setattr(train_module, "diffusion_loss", spy)
    for over, share in (({"p_small_t": 0.5, "small_t_frac": 0.1}, 0.55), ({}, 0.1)):
        seen.clear()
        make_trainer(**over, batch_size=512).run(progress=False)
        t = torch.cat(seen)
        assert t.numel() == CFG["steps"] * 512 and t.max() < 100
        assert abs((t < 10).double().mean().item() - share) < 0.015, over


def test_mixture_of_steps_is_checked_and_scales_with_the_chain():
    """small_t_frac is a share of the chain: 5% is 50 of 1000 steps and 1 of 10 (at least one step), so a recipe's
    mixture works with any T; values outside (0, 1] and p outside [0, 1) are refused."""
    from ddpm_tutor.losses import small_t_of

    with pytest.raises(ValueError, match=r"p_small_t must lie in \[0, 1\)"):
        TrainConfig(p_small_t=1.0)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"small_t_frac must lie in \(0, 1\]"):
            TrainConfig(p_small_t=0.3, small_t_frac=bad)
    assert [small_t_of(0.05, T) for T in (1000, 100, 20, 10, 1)] == [50, 5, 1, 1, 1]
    assert make_trainer(p_small_t=0.3, small_t_frac=0.05)._small_t == 5  # the schedule has 100 steps
    assert make_trainer(p_small_t=0.3, small_t_frac=1.0)._small_t == 100
