"""Sample quality per CPU-minute: our MNIST recipe against a diffusers UNet2DModel trained as its users do.

Two trainings run side by side, each in its own process with one thread (one core each on a 2-core CPU):

* ours: the package's own command, ``python -m ddpm_tutor train mnist --conditional`` (the recipe of the
  shipped checkpoint, ``TrainConfig.mnist()`` in ddpm_tutor/train.py);
* baseline: diffusers' ``UNet2DModel`` (block_out_channels (32, 64, 64), one layer per block, attention
  at 7x7, about 1.1M parameters) trained as diffusers' own unconditional example does: ``DDPMScheduler
  .add_noise``, MSE on the noise, gradient clipping at 1.0, an ``EMAModel`` of the weights (warm-up power
  3/4, at most 0.9999), AdamW lr 1e-3, batch 64, 3,000 steps. Raw and EMA weights are both saved and judged.

Both see the same offline digits (``load_mnist(train=True)``). Then every model is sampled identically with
each of DDIM-20, DDIM-50 (eta = 0) and ancestral DDPM-1000, all clipping x0 to [-1, 1], the same x_T, and
judged on independent axes (``ddpm_tutor.quality``): Frechet distance in the digit classifier's features
and in a random conv net's features, background and half-tone pixel fractions, classifier confidence and
class balance, the label accuracy for class-conditional samples, and bits/dim of test digits. Each axis
has the real-digit value at the same n beside it. Sample grids are saved in --out/grids; numbers in
--out/results.json. A class-conditional model of ours is sampled with labels drawn uniformly (a sample of
p(x), since the digits are balanced); it uses labels the baseline never sees, which the table says.
CPU minutes are the training process's user + system time, start-up and data loading included.

    python benchmarks/bench_vs_diffusers.py                     # both trainings, then the comparison
    python benchmarks/bench_vs_diffusers.py --only diffusers    # one leg (e.g. to rerun it)
    python benchmarks/bench_vs_diffusers.py --only evaluate     # compare the saved runs again

Prints tables; never pass/fail. Runs go to --out (default runs/bench_vs_diffusers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

BASELINE = dict(
    steps=3000, batch_size=64, lr=1e-3, grad_clip=1.0, ema_max_decay=0.9999, ema_power=0.75, eval_at=(1000, 2000, 3000)
)


def diffusers_baseline_model():
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )


def train_diffusers(out: Path, seed: int) -> None:
    """The baseline leg: a diffusers training loop as its users run it, saving raw and EMA weights at eval_at.

    As diffusers' own example (examples/unconditional_image_generation/train_unconditional.py): EMAModel with
    warm-up (decay 1 - (1 + step)^-3/4, capped at 0.9999) and gradient clipping at norm 1.0. The learning
    rate (AdamW 1e-3, constant) is higher than the example's 1e-4, which is meant for much longer runs.
    """
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    from ddpm_tutor.checkpoint import save_checkpoint
    from ddpm_tutor.data.images import load_mnist

    x, _ = load_mnist(train=True)
    torch.manual_seed(seed)
    model = diffusers_baseline_model().train()
    ema = EMAModel(
        model.parameters(),
        decay=BASELINE["ema_max_decay"],
        use_ema_warmup=True,
        inv_gamma=1.0,
        power=BASELINE["ema_power"],
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000)  # linear 1e-4 .. 0.02, the paper's schedule
    opt = torch.optim.AdamW(model.parameters(), lr=BASELINE["lr"])
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(1, BASELINE["steps"] + 1):
        x0 = x[torch.randint(0, len(x), (BASELINE["batch_size"],), generator=g)]
        t = torch.randint(0, 1000, (len(x0),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        loss = F.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), BASELINE["grad_clip"])
        opt.step()
        ema.step(model.parameters())
        losses.append(loss.item())
        if step in BASELINE["eval_at"]:
            r = resource.getrusage(resource.RUSAGE_SELF)
            ema_model = diffusers_baseline_model()
            ema.copy_to(ema_model.parameters())
            save_checkpoint(
                {
                    "state_dict": model.state_dict(),
                    "ema_state_dict": ema_model.state_dict(),
                    "ema_decay": ema.get_decay(ema.optimization_step),
                    "step": step,
                    "losses": losses,
                    "cpu_s": r.ru_utime + r.ru_stime,
                },
                out / f"diffusers_{step}.pt",
            )
            print(
                f"diffusers step {step}: loss(last 100) {sum(losses[-100:]) / 100:.4f}, "
                f"cpu {(r.ru_utime + r.ru_stime) / 60:.1f} min",
                flush=True,
            )


# The second peer, lucidrains' denoising-diffusion-pytorch (pip install denoising-diffusion-pytorch==2.3.4),
# with its README's network for small images and the defaults of its GaussianDiffusion (v-prediction, sigmoid
# schedule, T = 1000) and Trainer (Adam betas (0.9, 0.99), EMA 0.995 updated every 10 steps, gradient clipping
# at 1.0). Changed for MNIST on a CPU, as for the diffusers baseline: batch 64 (the other legs' batch), lr 1e-3
# instead of 1e-4 (meant for 100k-step GPU runs), no horizontal flips (digits are not mirror-symmetric). It
# trains until its process has used cpu_s CPU-seconds, the CPU our recipe takes, and reports the steps it made.
PEER = dict(
    batch_size=64, lr=1e-3, adam_betas=(0.9, 0.99), ema_decay=0.995, ema_update_every=10, grad_clip=1.0, cpu_s=15 * 60
)


def peer_model():
    """lucidrains' Unet(dim=32, dim_mults=(1, 2, 2)) for one channel inside its GaussianDiffusion (defaults)."""
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    return GaussianDiffusion(Unet(dim=32, dim_mults=(1, 2, 2), channels=1), image_size=28, timesteps=1000)


def train_peer(out: Path, seed: int) -> None:
    """The second peer's leg: its own loss (``GaussianDiffusion.forward``), optimiser and EMA as its Trainer
    sets them up, on the same digits (its data convention: pixels in [0, 1]), for the CPU budget PEER["cpu_s"]."""
    from ema_pytorch import EMA

    from ddpm_tutor.checkpoint import save_checkpoint
    from ddpm_tutor.data.images import load_mnist

    x, _ = load_mnist(train=True)
    x = (x + 1) / 2
    torch.manual_seed(seed)
    diffusion = peer_model().train()
    opt = torch.optim.Adam(diffusion.parameters(), lr=PEER["lr"], betas=PEER["adam_betas"])
    ema = EMA(diffusion, beta=PEER["ema_decay"], update_every=PEER["ema_update_every"])
    g = torch.Generator().manual_seed(seed)
    losses, step = [], 0
    while time.process_time() < PEER["cpu_s"]:
        loss = diffusion(x[torch.randint(0, len(x), (PEER["batch_size"],), generator=g)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), PEER["grad_clip"])
        opt.step()
        ema.update()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(
                f"peer step {step}: loss(last 50) {sum(losses[-50:]) / 50:.4f}, cpu {time.process_time() / 60:.1f} min",
                flush=True,
            )
    r = resource.getrusage(resource.RUSAGE_SELF)
    save_checkpoint(
        {
            "state_dict": diffusion.state_dict(),
            "ema_state_dict": ema.ema_model.state_dict(),
            "step": step,
            "losses": losses,
            "cpu_s": r.ru_utime + r.ru_stime,
            "recipe": PEER,
        },
        out / "peer.pt",
    )
    print(f"peer: {step} steps in {(r.ru_utime + r.ru_stime) / 60:.1f} CPU-min", flush=True)


def peer_sampler(diffusion):
    """Sample the peer with its own samplers, as its users do: its DDIM (eta 0, its spacing) for DDIM-k and its
    ancestral p_sample_loop for DDPM-1000; torch's global generator seeded by ``seed``. Returns [-1, 1] images."""

    def draw(kind: str, kw: dict, n: int, seed: int) -> torch.Tensor:
        diffusion.sampling_timesteps = (
            kw.get("steps", diffusion.num_timesteps) if kind == "ddim" else diffusion.num_timesteps
        )
        diffusion.is_ddim_sampling = diffusion.sampling_timesteps < diffusion.num_timesteps
        torch.manual_seed(seed)
        return diffusion.sample(batch_size=n) * 2 - 1  # it returns [0, 1] (auto_normalize)

    return draw


def run_leg(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def timed_legs(legs: dict[str, list[str]], out: Path) -> dict[str, dict]:
    """Start every leg at once; return each one's wall and CPU time (from its rusage at exit)."""
    procs = {name: (run_leg(cmd, out / f"{name}.log"), time.perf_counter()) for name, cmd in legs.items()}
    result = {}
    for name, (proc, start) in procs.items():
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"{name} leg failed (exit {proc.returncode}); see {out / (name + '.log')}")
        result[name] = {
            "wall_s": time.perf_counter() - start,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "cmd": " ".join(shlex.quote(c) for c in legs[name]),
        }
        print(
            f"{name}: {result[name]['cpu_s'] / 60:.1f} CPU-min, {result[name]['wall_s'] / 60:.1f} wall-min", flush=True
        )
    return result


def load_models(out: Path, n: int, seed: int, only: str | None = None) -> dict:
    """name -> (model(x, t) -> eps_hat, training CPU seconds, labels or None, bpd_fn) for every saved run.

    A class-conditional model of ours is sampled with labels drawn uniformly from 0..9 (exactly a sample of
    p(x) when classes are balanced, as the training digits are: 450 per class); it uses labels the baseline
    never sees, which the table says. bpd_fn(x, labels) is the model for the likelihood of test digits.
    """
    from ddpm_tutor.checkpoint import load_checkpoint
    from ddpm_tutor.train import load_model

    times = {p.stem[len("time_") :]: json.loads(p.read_text()) for p in out.glob("time_*.json")}
    models = {}
    # ours_eps: our recipe with --parameterization eps (the ablation that found the cause of grainy DDIM digits)
    # every run of ours in a subfolder: the legs above, and recipes trained with `python -m ddpm_tutor train mnist
    # ... --out <out>/<name>` to compare with them
    for leg in sorted(p.parent.name for p in out.glob("*/checkpoint.pt")):
        net, sched, state = load_model(out / leg / "checkpoint.pt", device="cpu")
        name = f"{leg} ({state['step']} steps, batch {state['train_config']['batch_size']})"
        cpu_s = times.get(leg, {}).get("cpu_s")

        def eps_hat(x, t, y, m=net):  # load_model's Denoiser answers with eps whatever the network predicts
            return m(x, t) if y is None else m.with_labels(y)(x, t)

        if net.null_label is None:
            models[name] = (
                (lambda x, t, f=eps_hat: f(x, t, None)),
                cpu_s,
                None,
                lambda x, t, y, f=eps_hat: f(x, t, None),
            )
        else:
            y = torch.randint(0, net.null_label, (n,), generator=torch.Generator().manual_seed(seed + 1))
            models[name + ", y ~ U{0..9}"] = (
                (lambda x, t, f=eps_hat, y=y: f(x, t, y[: x.shape[0]])),
                cpu_s,
                y,
                eps_hat,
            )
    for step in BASELINE["eval_at"]:
        path = out / f"diffusers_{step}.pt"
        if not path.exists():
            continue
        ck = load_checkpoint(path)
        for key, label in (("ema_state_dict", f"EMA {ck.get('ema_decay', 0):.4f}"), ("state_dict", "raw weights")):
            if key not in ck:
                continue
            m = diffusers_baseline_model().eval()
            m.load_state_dict(ck[key])
            fn = lambda x, t, mm=m: mm(x, t).sample
            models[f"diffusers UNet2DModel ({step} steps, batch 64), {label}"] = (
                fn,
                ck["cpu_s"],
                None,
                lambda x, t, y, f=fn: f(x, t),
            )
    if (out / "peer.pt").exists():
        ck = load_checkpoint(out / "peer.pt")
        for key, label in (("ema_state_dict", f"EMA {PEER['ema_decay']}"), ("state_dict", "raw weights")):
            d = peer_model().eval()
            d.load_state_dict(ck[key])
            models[f"denoising-diffusion-pytorch Unet ({ck['step']} steps, batch 64), {label}"] = (
                None,
                ck["cpu_s"],
                None,
                None,
                peer_sampler(d),
            )
    if only:
        models = {k: v for k, v in models.items() if any(o in k for o in only.split(","))}
    return models


SAMPLERS = {  # name -> (sampler, keywords); all clip x0 to [-1, 1] as the paper's sampler does
    "DDIM-20": ("ddim", dict(steps=20)),
    "DDIM-50": ("ddim", dict(steps=50)),
    "DDPM-1000": ("ddpm", {}),
}
AXES = ("frechet_clf", "frechet_rand", "border", "grey", "confidence", "balance")


@torch.no_grad()
def evaluate(
    out: Path,
    n: int,
    n_ddpm: int,
    samplers: list[str],
    seed: int,
    bpd_n: int,
    bpd_terms: int,
    only: str | None,
    n_in_key: bool = False,
) -> None:
    """Every model x sampler on every axis of ddpm_tutor.quality, the real-digit row at the same n, bits/dim
    of the test digits; grids in out/grids, all numbers in out/results.json. Samples are the sampler's output
    as it is (the classifier clamps to [-1, 1] before judging, nothing else touches them). ``n_in_key``: key
    each sample row "model|sampler@n" (e.g. DDPM-1000@256), so that a row at a second n sits beside the first
    instead of replacing it."""
    from torchvision.utils import save_image

    from ddpm_tutor.data.images import load_mnist
    from ddpm_tutor.losses import bits_per_dim
    from ddpm_tutor.quality import image_quality
    from ddpm_tutor.samplers import sample
    from ddpm_tutor.schedules import Schedule

    sched = Schedule.linear(1000)
    x_test, y_test = load_mnist(train=False)
    x_train, y_train = load_mnist(train=True)
    models = load_models(out, n, seed, only)
    (out / "grids").mkdir(exist_ok=True)
    # one file per --models selection, so that evaluations of different models can run at the same time;
    # table() and export() read them all
    tag = "".join(c if c.isalnum() else "_" for c in only) if only else ""
    results_path = out / (f"results_{tag}.json" if tag else "results.json")
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
    results["_meta"] = {
        "command": command,  # this file's last evaluation; each entry names its own
        "machine": machine(),
        "reference": f"the {len(x_test)} offline test digits",
    }

    def fmt(q):
        return " | ".join(
            f"{q[k]:.4f}"
            if k in ("border", "grey")
            else f"{q[k]:.3f}"
            if k in ("confidence", "balance")
            else f"{q[k]:.2f}"
            for k in AXES
        )

    print(
        f"\nreference: the {len(x_test)} offline test digits; samples clip x0 to [-1, 1] and are not "
        f"post-processed; border = pixels > 0.1 in the 3-pixel frame, grey = pixels in (0.05, 0.5)"
    )
    print(
        "| model | training CPU-min | sampler | n | Frechet (classifier) | Frechet (random conv) | border | grey "
        "| confidence | balance | label accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for sampler_name in samplers:
        kind, kw = SAMPLERS[sampler_name]
        size = n_ddpm if kind == "ddpm" else n
        idx = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[:size]
        q = image_quality(x_train[idx], x_test, labels=y_train[idx])  # label accuracy: the classifier's own
        results[f"real training digits|n={size}"] = q
        print(f"| real training digits | - | - | {size} | {fmt(q)} | {q['accuracy']:.3f} |", flush=True)
        for name, (fn, cpu_s, labels, _, *own) in models.items():
            t0 = time.perf_counter()
            if own:  # a peer sampled with its own sampler
                x = own[0](kind, kw, size, seed)
            else:
                x = sample(
                    fn,
                    sched,
                    (size, 1, 28, 28),
                    sampler=kind,
                    clip_x0=True,
                    generator=torch.Generator().manual_seed(seed),
                    **kw,
                )
            q = image_quality(x, x_test, labels=None if labels is None else labels[:size])
            q.update(sampler=sampler_name, cpu_s=cpu_s, sample_s=time.perf_counter() - t0, command=command)
            what = f"{sampler_name}@{size}" if n_in_key else sampler_name
            results[f"{name}|{what}"] = q
            slug = "".join(c if c.isalnum() else "_" for c in f"{name}_{what}")
            save_image((x[:64].clamp(-1, 1) + 1) / 2, out / "grids" / f"{slug}.png", nrow=8, padding=1)
            cpu = f"{cpu_s / 60:.1f}" if cpu_s else "?"
            acc = f"{q['accuracy']:.3f}" if "accuracy" in q else "-"
            print(f"| {name} | {cpu} | {sampler_name} | {size} | {fmt(q)} | {acc} |", flush=True)
            results_path.write_text(json.dumps(results, indent=1))
    if bpd_n:
        print(
            f"\nbits/dim of {bpd_n} test digits ({bpd_terms} of 1000 terms: L_0 and L_T exact, the rest an "
            f"unbiased stratified estimate; +- is the standard error over digits and steps)"
        )
        x, y = x_test[:bpd_n], y_test[:bpd_n]
        for name, (_, _, _labels, bpd_fn, *_own) in models.items():
            if bpd_fn is None:  # a peer on its own schedule: not measured here
                continue
            r = bits_per_dim(
                lambda a, t, f=bpd_fn: f(a, t, y),
                sched,
                x,
                n_terms=bpd_terms,
                generator=torch.Generator().manual_seed(seed),
            )
            value, se = float(r["total"].mean()), r["se"]  # over the drawn steps and the digits
            results[f"{name}|bpd"] = {
                "bpd": value,
                "se": se,
                "n": bpd_n,
                "terms": bpd_terms,
                "command": command,
                "per_digit": r["total"].tolist(),  # the same digits and seed for every model: paired differences
            }
            print(f"{name}: {value:.3f} +- {se:.3f} bits/dim", flush=True)
            results_path.write_text(json.dumps(results, indent=1))  # after each model: a long run may be stopped


def read_results(out: Path, sources: dict | None = None) -> dict:
    """Every results*.json in ``out``, merged (the file of the latest evaluation wins a key). ``sources``, if
    given, receives key -> the command of the evaluation that measured it."""
    merged = {}
    for path in sorted(out.glob("results*.json"), key=lambda p: p.stat().st_mtime):
        found = json.loads(path.read_text())
        merged.update(found)
        if sources is not None:
            last = f"not recorded; the last evaluation into {path.name} was: {found['_meta']['command']}"
            sources.update({k: v.get("command", last) for k, v in found.items() if k != "_meta"})
    return merged


def table(out: Path) -> str:
    """The saved results as one markdown table (every model x sampler row, real digits at each n, bits/dim)."""
    results = read_results(out)
    lines = [
        "| model | training CPU-min | sampler | n | Frechet (classifier) | Frechet (random conv) | bright frame px "
        "| grey px | confidence | balance | label accuracy | bits/dim |",
        "|---|" * 1 + "---|" * 11,
    ]

    def row(name, q, sampler, cpu_s, bpd):
        cpu = f"{cpu_s / 60:.1f}" if cpu_s else "-"
        acc = f"{q['accuracy']:.3f}" if "accuracy" in q else "-"
        bpd = f"{bpd['bpd']:.2f} ± {bpd['se']:.2f}" if bpd else "-"
        return (
            f"| {name} | {cpu} | {sampler} | {q['n']} | {q['frechet_clf']:.2f} | {q['frechet_rand']:.2f} | "
            f"{q['border']:.4f} | {q['grey']:.4f} | {q['confidence']:.3f} | {q['balance']:.3f} | {acc} | {bpd} |"
        )

    def sampler_of(what: str) -> str:  # "DDPM-1000@256" (a row keyed with its n) -> "DDPM-1000"
        return what.split("@")[0]

    kept = {k.partition("|")[2] for k in results if sampler_of(k.partition("|")[2]) in SAMPLERS}
    for what in sorted(kept, key=lambda w: (list(SAMPLERS).index(sampler_of(w)), w)):
        sampler = sampler_of(what)
        models = [k for k in results if k.endswith(f"|{what}")]
        n = results[models[0]]["n"]
        if f"real training digits|n={n}" in results:
            lines.append(row("real training digits", results[f"real training digits|n={n}"], sampler, None, None))
        for key in sorted(models):
            name = key.split("|")[0]
            lines.append(row(name, results[key], sampler, results[key].get("cpu_s"), results.get(f"{name}|bpd")))
    lines += paired_bpd(results)
    return "\n".join(lines)


def paired_bpd(results: dict) -> list[str]:
    """Bits/dim of every model against every other measured on the same test digits (per-digit values saved):
    the mean of the per-digit differences and its standard error, which the shared digits make far smaller
    than the two standard errors of the means."""
    have = {k.split("|")[0]: v for k, v in results.items() if k.endswith("|bpd") and "per_digit" in v}
    lines = []
    for a in sorted(have):
        for b in sorted(have):
            da, db = have[a], have[b]
            if a >= b or da["n"] != db["n"] or da["terms"] != db["terms"]:
                continue
            diff = torch.tensor(da["per_digit"], dtype=torch.float64) - torch.tensor(db["per_digit"]).double()
            se = float(diff.std() / len(diff) ** 0.5)
            lines.append(f"paired bits/dim, {a} minus {b}: {float(diff.mean()):+.3f} ± {se:.3f} ({len(diff)} digits)")
    return ["", *lines] if lines else []


def export(out: Path, dest: Path, legs: dict[str, str], carry: list[str] = ()) -> None:
    """The numbers the book and the model card quote, by role: {role | "diffusers_ema" | "diffusers_raw" |
    "peer_ema" | "peer_raw" | "real": {sampler or "bpd": axes}}. ``legs`` maps each role of ours to its run
    folder, e.g. {"ours": "ours", "ours_eps": "ours_eps"} ("ours" is the shipped model); the diffusers
    baseline is taken after its last step. ``carry``: roles copied as they are from the file already at
    ``dest`` (runs evaluated earlier into another --out, e.g. the baselines; "new=old" renames one, e.g. the
    model a new one replaces), listed in _meta["carried"]; _meta["measured_by"] names the evaluation command
    of every number (per role and sampler). A role both carried and found in ``out`` is an error."""
    from ddpm_tutor.checkpoint import write_atomic

    before = json.loads(dest.read_text()) if carry else {}
    carry = dict((c.split("=") * 2)[:2] for c in carry)  # "new=old" renames a carried role; "role" keeps its name
    missing = [r for r in carry.values() if r not in before]
    if missing:
        raise SystemExit(f"--carry: {dest} has no role {', '.join(missing)} (it has {', '.join(sorted(before))})")
    sources: dict = {}
    results = read_results(out, sources)
    last = max(BASELINE["eval_at"])
    roles = {role: (lambda k, leg=leg: k.startswith(f"{leg} (") and "y ~ U" in k) for role, leg in legs.items()}
    roles.update(
        {
            "diffusers_ema": lambda k: f"({last} steps" in k and "EMA" in k and k.startswith("diffusers"),
            "diffusers_raw": lambda k: f"({last} steps" in k and "raw weights" in k and k.startswith("diffusers"),
            "peer_ema": lambda k: k.startswith("denoising-diffusion-pytorch") and "EMA" in k,
            "peer_raw": lambda k: k.startswith("denoising-diffusion-pytorch") and "raw weights" in k,
        }
    )
    meta = {k: v for k, v in results["_meta"].items() if k != "command"}  # one command each, in "measured_by"
    shipped = {"_meta": {**meta, "models": {}, "measured_by": {}}}
    for key, value in results.items():
        name, _, what = key.partition("|")
        if name == "real training digits":
            shipped.setdefault("real", {})[what] = value
            continue
        for role, match in roles.items():
            if match(name):
                shipped.setdefault(role, {})[what] = value
                shipped["_meta"]["models"][role] = name
                shipped["_meta"]["measured_by"].setdefault(role, {})[what] = sources[key]
    clash = [r for r in carry if r in shipped]
    if clash:
        raise SystemExit(f"--carry: {', '.join(clash)} measured in {out} too; carry a role or measure it, not both")
    old_meta = before.get("_meta", {})
    for role, was in carry.items():
        shipped[role] = before[was]
        shipped["_meta"]["models"][role] = old_meta["models"][was]
        # files exported before "measured_by" existed name one command for all: the last evaluation's
        shipped["_meta"]["measured_by"][role] = old_meta.get("measured_by", {}).get(was) or (
            f"evaluated into another --out; that file's last evaluation was: {old_meta['command']}"
        )
        shipped["_meta"].setdefault("carried", []).append(role)
    write_atomic(dest, lambda f: f.write(json.dumps(shipped, indent=1).encode()))


def machine() -> str:
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--only",
        choices=["ours", "ours_uncond", "diffusers", "peer", "evaluate", "table", "export"],
        default=None,
        help="one training leg; evaluate (the saved runs again); table (print results.json)",
    )
    p.add_argument("--out", default="runs/bench_vs_diffusers")
    p.add_argument("--n", type=int, default=256, help="samples per model for the DDIM rows")
    p.add_argument("--n-ddpm", dest="n_ddpm", type=int, default=100, help="samples per model for DDPM-1000")
    p.add_argument("--samplers", default=",".join(SAMPLERS), help=f"comma-separated, of {', '.join(SAMPLERS)}")
    p.add_argument(
        "--models", default=None, help="evaluate only models whose name contains one of these comma-separated strings"
    )
    p.add_argument(
        "--n-in-key",
        action="store_true",
        help="key each sample row by sampler and n (DDPM-1000@256), beside the rows at another n",
    )
    p.add_argument("--bpd-n", dest="bpd_n", type=int, default=100, help="test digits for bits/dim (0: skip)")
    p.add_argument("--bpd-terms", dest="bpd_terms", type=int, default=50, help="terms of the bound drawn")
    p.add_argument("--export", default=None, help="also copy results.json here (the shipped model's numbers)")
    p.add_argument(
        "--roles",
        default="ours=ours,ours_eps=ours_eps",
        help="with --export: role=run folder pairs for our models (role ours is the shipped model)",
    )
    p.add_argument(
        "--carry",
        default="",
        help="with --export: comma-separated roles kept as they are from the file already there (runs evaluated "
        "into another --out, e.g. diffusers_ema,diffusers_raw,peer_ema,peer_raw); new=old renames one",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the evaluation")
    p.add_argument("--_leg", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out)
    carry = [r for r in args.carry.split(",") if r]
    torch.set_num_threads(args.threads)  # before the header, which states the threads
    if args._leg == "diffusers":
        train_diffusers(out, args.seed)
        return 0
    if args._leg == "peer":
        train_peer(out, args.seed)
        return 0
    if args.only == "table":
        print(table(out))
        return 0
    if args.only == "export":  # the saved results, by role, to --export
        export(out, Path(args.export), dict(pair.split("=") for pair in args.roles.split(",")), carry)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    print(f"# {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"# machine: {machine()}; load average at start {os.getloadavg()[0]:.2f}", flush=True)
    legs = {}
    if args.only in (None, "ours"):
        if (out / "ours").exists():
            raise SystemExit(f"{out / 'ours'} exists: remove it to train our leg again")
        legs["ours"] = [
            sys.executable,
            "-m",
            "ddpm_tutor",
            "train",
            "mnist",
            "--conditional",
            "--quiet",
            "--out",
            str(out / "ours"),
            "--seed",
            str(args.seed),
            "--device",
            "cpu",
        ]
    if args.only == "ours_uncond":  # the same recipe without labels (a like-for-like unconditional model)
        if (out / "ours_uncond").exists():
            raise SystemExit(f"{out / 'ours_uncond'} exists: remove it to train this leg again")
        legs["ours_uncond"] = [
            sys.executable,
            "-m",
            "ddpm_tutor",
            "train",
            "mnist",
            "--quiet",
            "--out",
            str(out / "ours_uncond"),
            "--seed",
            str(args.seed),
            "--device",
            "cpu",
        ]
    if args.only in (None, "diffusers"):
        legs["diffusers"] = [
            sys.executable,
            __file__,
            "--out",
            str(out),
            "--seed",
            str(args.seed),
            "--_leg",
            "diffusers",
        ]
    if args.only == "peer":
        legs["peer"] = [sys.executable, __file__, "--out", str(out), "--seed", str(args.seed), "--_leg", "peer"]
    if legs:
        for leg, measured in timed_legs(legs, out).items():  # one file per leg: legs may end at the same time
            (out / f"time_{leg}.json").write_text(json.dumps(measured, indent=1))
    evaluate(
        out,
        args.n,
        args.n_ddpm,
        [s for s in args.samplers.split(",") if s],
        args.seed,
        args.bpd_n,
        args.bpd_terms,
        args.models,
        args.n_in_key,
    )
    if args.export:
        export(out, Path(args.export), dict(pair.split("=") for pair in args.roles.split(",")), carry)
        print(f"wrote {args.export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
