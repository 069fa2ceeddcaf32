"""Properties over the public API and the command line's arguments (issue 13, last item).

For any input the outcome is either a correct result (checked against an independent float64 computation where
there is one) or a ValueError/TypeError (a usage error with status 2 on the command line) whose message names the
argument at fault, raised by ddpm_tutor itself: never a NaN, a silent broadcast, a traceback from inside torch, or
a lost run. Hypothesis explores the inputs; every run draws the same examples (``derandomize``) and keeps no
database in the repository.

Each case draws valid arguments and then, most of the time, spoils one of them ("the fault"), so that valid and
invalid inputs are both well explored; whether the input is valid is then decided from the arguments alone, by
the rules the docstrings state, not from the fault drawn. No input is left out: where the library still failed a
property, a strategy used to leave that input out under a ``KNOWN:`` comment; none is left.
A diverging ``train`` (too high an --lr) may end with status 1 and one line starting "train:"; its run folder
then holds only what a save reached before it diverged.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import numbers
import os
import re
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ddpm_tutor import cli
from ddpm_tutor.bound import vlb
from ddpm_tutor.checkpoint import CheckpointError, load_checkpoint, load_model, read_checkpoint
from ddpm_tutor.diffusion import VAR_TYPES, q_mean_variance, q_posterior, q_sample, q_step
from ddpm_tutor.losses import WEIGHTINGS, diffusion_loss, eps_weight
from ddpm_tutor.samplers import SPACINGS, ddim_sample, ddim_step, ddim_timesteps, ddpm_sample, ddpm_step
from ddpm_tutor.schedules import MAX_T, TABLES, Schedule

SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
# reproducible in CI (the same examples on every run) and nothing written to .hypothesis/
PROFILE = settings(derandomize=True, database=None, deadline=None, suppress_health_check=SUPPRESS)
CHEAP = settings(PROFILE, max_examples=40)  # pure functions on tiny tensors
MEDIUM = settings(PROFILE, max_examples=25)  # samplers, the bound, file loads
CLI = settings(PROFILE, max_examples=12)  # whole command lines (train)
CLI_FAST = settings(PROFILE, max_examples=25)  # sample and evaluate: a tiny model, a few samples

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
NOT_FLOATS = (torch.int64, torch.bool)
# the rounding of one operation in each dtype; assert_close allows 8 of them
TOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 2e-6, torch.float64: 1e-13}
SCHEDULES = {
    "linear(10)": Schedule.linear(10),
    "cosine(10)": Schedule.cosine(10),
    "get(linear, 7)": Schedule.get("linear", 7),
    "linear(1)": Schedule.linear(1),
    "cosine(2)": Schedule.cosine(2),
}
SCHED_NAMES = st.sampled_from(sorted(SCHEDULES))


# --- helpers ---------------------------------------------------------------------------------------------------
def _names(message: str, *names: str) -> bool:
    """Whether ``message`` names one of ``names`` as a word ("t" is not "t_prev")."""
    return any(re.search(rf"(?<!\w){re.escape(n)}(?!\w)", message) for n in names)


def refused(call, *names: str) -> Exception:
    """Run ``call``, which must raise a ValueError/TypeError naming one of ``names``, raised in ddpm_tutor's own
    code (not from inside torch); return it."""
    try:
        call()
    except (ValueError, TypeError) as err:
        last = traceback.extract_tb(err.__traceback__)[-1].filename
        assert f"{os.sep}ddpm_tutor{os.sep}" in last and "site-packages" not in last, (last, err)
        assert _names(str(err), *names), f"{err!r} does not name any of {names}"
        return err
    raise AssertionError(f"accepted; expected an error naming one of {names}")


def outcome(call, valid: bool, *names: str):
    """The result of ``call`` if ``valid``; else assert that it is refused with a message naming one of ``names``
    (and return None)."""
    if valid:
        event("valid input: a result")
        return call()
    event("invalid input: refused")
    refused(call, *names)
    return None


def fault(draw, *args: str, valid_share: int = 2) -> str | None:
    """Which argument to spoil: None (all valid) in about valid_share / (valid_share + 1) of the cases."""
    return draw(st.sampled_from([None] * (valid_share * len(args)) + list(args)))


def is_int(value, lo=None, hi=None) -> bool:
    """A Python or numpy integer (not a bool) in [lo, hi]."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    return ok and (lo is None or value >= lo) and (hi is None or value <= hi)


def is_real(value, lo, hi, open_lo=False, open_hi=False) -> bool:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    v = float(value)
    return (lo < v if open_lo else lo <= v) and (v < hi if open_hi else v <= hi)


def finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def tensor_of(shape, dtype, seed) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if dtype == torch.bool:
        return x > 0
    if not dtype.is_floating_point:
        return (x * 3).round().to(dtype)
    return x.to(dtype)


def fits(value, x: torch.Tensor) -> bool:
    """Whether ``value`` is a floating-point tensor of exactly x's shape."""
    return torch.is_tensor(value) and value.is_floating_point() and value.shape == x.shape


def col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against x."""
    return v.reshape(v.shape + (1,) * (x.ndim - 1))


def lowest(*xs: torch.Tensor):
    """The least precise of the floating dtypes of xs."""
    return max((x.dtype for x in xs), key=lambda d: TOL[d])


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype, scale: float = 1.0) -> None:
    """got (any dtype) against a float64 reference, within the rounding of ``dtype``."""
    tol = TOL[dtype] * 8
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * max(scale, 1.0))


def eps_model(x, t):
    return 0.1 * x


# --- tensors as callers pass them ----------------------------------------------------------------------------------
GOOD_T = ["batch", "batch", "one tensor", "int", "list"]
BAD_T = ["-1", "T", "float", "bool", "short", "column", "none", "str"]


@st.composite
def steps_for(draw, B: int, T: int, bad: bool):
    """(t, whether it is valid, the step of each example as a (B,) long tensor or None): step indices t for a
    batch of B and a schedule of T steps, of a valid kind unless ``bad``."""
    kind = draw(st.sampled_from(BAD_T if bad else GOOD_T))
    idx = torch.tensor(draw(st.lists(st.integers(0, T - 1), min_size=B, max_size=B)), dtype=torch.long)
    one = draw(st.integers(0, T - 1))
    if kind == "batch":
        return idx.to(draw(st.sampled_from([torch.int64, torch.int32, torch.uint8]))), True, idx
    if kind == "one tensor":
        return torch.tensor(one), True, torch.full((B,), one)
    if kind == "int":
        return one, True, torch.full((B,), one)
    if kind == "list":
        return idx.tolist(), True, idx
    if kind in ("-1", "T"):  # out of range, unless there are no examples (B = 0)
        return torch.full((B,), -1 if kind == "-1" else T), B == 0, idx if B == 0 else None
    if kind == "float":
        return idx.float(), False, None
    if kind == "bool":
        return torch.zeros(B, dtype=torch.bool), False, None
    if kind == "short":  # (1,) would broadcast over the batch; B + 1 would not fit
        return torch.zeros(1 if B > 1 else 2, dtype=torch.long), False, None
    if kind == "column":
        return idx[:, None], False, None
    return (None if kind == "none" else "3"), False, None


@st.composite
def batches(draw, bad: bool = False, min_B: int = 1):
    """A batch (B, ...) of 0 to 2 trailing dims: floating point, or (if ``bad``) integer or bool."""
    B = draw(st.integers(min_B, 4))
    shape = (B, *draw(st.lists(st.integers(1, 3), max_size=2)))
    return tensor_of(shape, draw(st.sampled_from(NOT_FLOATS if bad else FLOATS)), draw(st.integers(0, 2**32 - 1)))


@st.composite
def like(draw, x: torch.Tensor, bad: bool = False):
    """A floating-point tensor of x's shape; if ``bad``, one of another shape or dtype, or not a tensor."""
    seed = draw(st.integers(0, 2**32 - 1))
    if not bad:
        return tensor_of(x.shape, draw(st.sampled_from(FLOATS)), seed)
    kind = draw(st.sampled_from(["batch of 1", "extra dim", "not float", "list", "none"]))
    if kind == "batch of 1" and x.shape[0] > 1:  # would broadcast over the batch
        return tensor_of((1, *x.shape[1:]), torch.float32, seed)
    if kind in ("extra dim", "batch of 1"):
        return tensor_of((*x.shape, 1), torch.float32, seed)
    if kind == "not float":
        return tensor_of(x.shape, draw(st.sampled_from(NOT_FLOATS)), seed)
    return torch.zeros(x.shape).tolist() if kind == "list" else None


# === 1. schedules ================================================================================================
GOOD_T_VALUES = st.integers(1, 60)
BAD_T_VALUES = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=MAX_T + 1),
    st.sampled_from([True, False, 1.0, 2.5, "10", None]),
    st.floats(allow_nan=True, allow_infinity=True),
)
GOOD_BETAS = st.floats(min_value=1e-6, max_value=0.999)
BAD_BETAS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda b: not 0 < b < 1),
    st.sampled_from([0, 1, True, "0.1", None, torch.tensor(0.1)]),
)


def assert_schedule(s: Schedule, T: int) -> None:
    """A valid schedule: T betas in (0, 1), bar alpha strictly decreasing in (0, 1), every table finite float64."""
    assert s.T == T
    for name in TABLES:
        table = getattr(s, name)
        assert table.dtype == torch.float64 and table.shape == (T,) and finite(table), name
    assert bool(((s.beta > 0) & (s.beta < 1)).all())
    ab = s.alpha_bar
    assert bool((ab > 0).all()) and bool((ab < 1).all()) and bool((ab[1:] < ab[:-1]).all())
    assert s.alpha_bar_prev[0] == 1 and torch.equal(s.alpha_bar_prev[1:], ab[:-1])
    # bar alpha is the running product of 1 - beta, computed here in plain Python
    prod, want = 1.0, []
    for b in s.beta.tolist():
        prod *= 1.0 - b
        want.append(prod)
    torch.testing.assert_close(ab, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=0)


@st.composite
def schedule_args(draw, *names: str, good: dict, bad: dict):
    spoil = fault(draw, *names, valid_share=1)
    return [draw(bad[n] if n == spoil else good[n]) for n in names]


def _made(call, ok: bool, *names: str):
    """A schedule made by ``call``; valid arguments may still make none (betas below 1e-16, or bar alpha
    underflowing), which must be refused too, naming the arguments."""
    try:
        s = call()
    except (ValueError, TypeError):
        event("refused")
        refused(call, *names)
        return None
    assert ok, "accepted invalid arguments"
    event("a schedule")
    return s


@CHEAP
@given(
    schedule_args(
        "T",
        "beta_1",
        "beta_T",
        good={"T": GOOD_T_VALUES, "beta_1": GOOD_BETAS, "beta_T": GOOD_BETAS},
        bad={"T": BAD_T_VALUES, "beta_1": BAD_BETAS, "beta_T": BAD_BETAS},
    )
)
def test_linear_schedule_is_valid_or_refused_naming_its_argument(args):
    T, beta_1, beta_T = args
    ok = is_int(T, 1, MAX_T) and is_real(beta_1, 0, 1, True, True) and is_real(beta_T, 0, 1, True, True)
    s = _made(lambda: Schedule.linear(T, beta_1, beta_T), ok, "T", "beta_1", "beta_T")
    if s is not None:
        assert_schedule(s, T)
        assert s.beta[0].item() == pytest.approx(beta_1, rel=1e-12)


@CHEAP
@given(
    schedule_args(
        "T",
        "s",
        "max_beta",
        good={"T": GOOD_T_VALUES, "s": st.floats(0, 1), "max_beta": GOOD_BETAS},
        bad={
            "T": BAD_T_VALUES,
            "s": st.one_of(st.floats(max_value=-1e-300), st.sampled_from([math.nan, math.inf, 1e300, "s", None])),
            "max_beta": BAD_BETAS,
        },
    )
)
def test_cosine_schedule_is_valid_or_refused_naming_its_argument(args):
    T, s, max_beta = args
    ok = is_int(T, 1, MAX_T) and is_real(s, 0, math.inf, open_hi=True) and is_real(max_beta, 0, 1, True, True)
    sched = _made(lambda: Schedule.cosine(T, s, max_beta), ok, "T", "s", "max_beta")
    if sched is not None:
        assert_schedule(sched, T)
        assert float(sched.beta.max()) <= float(max_beta)


@CHEAP
@given(
    schedule_args(
        "name",
        "T",
        good={"name": st.sampled_from(["linear", "cosine"]), "T": st.one_of(GOOD_T_VALUES, st.integers(1, MAX_T))},
        bad={"name": st.sampled_from(["Linear", "", None, 3]), "T": BAD_T_VALUES},
    )
)
def test_schedule_get_is_valid_or_refused(args):
    name, T = args
    sched = outcome(lambda: Schedule.get(name, T), name in ("linear", "cosine") and is_int(T, 1, MAX_T), "T", "name")
    if sched is not None:
        assert_schedule(sched, T)


@CHEAP
@given(n=st.integers(1, 3000), b=st.floats(1e-3, 0.999))
def test_a_table_of_betas_whose_bar_alpha_underflows_is_refused(n, b):
    log_ab = n * math.log1p(-b)  # log bar alpha_T
    floor = math.log(torch.finfo(torch.float64).tiny)
    if abs(log_ab - floor) < 1e-6 * abs(floor):
        return  # too close to the boundary for this estimate to tell
    s = outcome(lambda: Schedule(torch.full((n,), b, dtype=torch.float64)), log_ab > floor, "beta")
    if s is not None:
        assert_schedule(s, n)


@st.composite
def at_calls(draw):
    sched = SCHEDULES[draw(SCHED_NAMES)]
    spoil = fault(draw, "table", "x", "t", valid_share=1)
    bad_tables = st.sampled_from(["foo", "T", "name", "_cast", "", torch.ones(2, 2)])
    table = draw(bad_tables if spoil == "table" else st.one_of(st.sampled_from(TABLES), st.just(sched.alpha)))
    x = draw(batches(bad=spoil == "x"))
    t, t_ok, idx = draw(steps_for(x.shape[0], sched.T, bad=spoil == "t"))
    return sched, table, x, t, t_ok, idx


@CHEAP
@given(at_calls())
def test_schedule_at_gathers_and_shapes_or_refuses(case):
    sched, table, x, t, t_ok, idx = case
    is_table = table in TABLES if isinstance(table, str) else table.ndim == 1
    out = outcome(lambda: sched.at(table, t, x), is_table and x.is_floating_point() and t_ok, "table", "t", "x")
    if out is None:
        return
    values = getattr(sched, table) if isinstance(table, str) else table
    assert out.dtype == x.dtype and out.device == x.device
    if torch.as_tensor(t).ndim == 0:  # one step for every example
        assert out.shape == (1,) * x.ndim
        want = values[int(torch.as_tensor(t))].expand(out.shape)
    else:
        assert out.shape == (x.shape[0],) + (1,) * (x.ndim - 1)
        want = col(values[idx], x)
    torch.testing.assert_close(out, want.to(x.dtype))  # the float64 table cast once, nothing else


# === 2. the forward process ======================================================================================
@st.composite
def forward_cases(draw):
    sched = SCHEDULES[draw(SCHED_NAMES)]
    spoil = fault(draw, "x", "t", "other")
    x = draw(batches(bad=spoil == "x"))
    t, t_ok, idx = draw(steps_for(x.shape[0], sched.T, bad=spoil == "t"))
    return sched, x, t, t_ok, idx, draw(like(x, bad=spoil == "other"))


@CHEAP
@given(forward_cases())
def test_q_sample_is_eq_4_or_refused(case):
    sched, x0, t, t_ok, idx, eps = case
    out = outcome(
        lambda: q_sample(sched, x0, t, eps), x0.is_floating_point() and t_ok and fits(eps, x0), "x0", "t", "eps"
    )
    if out is None:
        return
    assert out.shape == x0.shape and out.dtype == torch.promote_types(x0.dtype, eps.dtype) and finite(out)
    ab = col(sched.alpha_bar[idx], x0)
    want = ab.sqrt() * x0.double() + (1 - ab).sqrt() * eps.double()
    assert_close(out, want, lowest(x0, eps), scale=float(x0.abs().max() + eps.abs().max()))


@CHEAP
@given(forward_cases())
def test_q_step_is_eq_2_or_refused(case):
    sched, x, t, t_ok, idx, eps = case
    out = outcome(
        lambda: q_step(sched, x, t, eps), x.is_floating_point() and t_ok and fits(eps, x), "x_prev", "t", "eps"
    )
    if out is None:
        return
    assert out.shape == x.shape and finite(out)
    beta = col(sched.beta[idx], x)
    want = (1 - beta).sqrt() * x.double() + beta.sqrt() * eps.double()
    assert_close(out, want, lowest(x, eps), scale=float(x.abs().max() + eps.abs().max()))


@CHEAP
@given(forward_cases())
def test_q_mean_variance_and_q_posterior_are_eq_4_and_7_or_refused(case):
    sched, x_t, t, t_ok, idx, x0 = case
    mean_var = outcome(lambda: q_mean_variance(sched, x_t, t), x_t.is_floating_point() and t_ok, "x0", "t")
    if mean_var is not None:
        mean, var = mean_var
        ab = col(sched.alpha_bar[idx], x_t)
        assert mean.shape == x_t.shape and finite(mean) and finite(var)
        assert_close(mean, ab.sqrt() * x_t.double(), x_t.dtype, scale=float(x_t.abs().max()))
        assert_close(var.expand(x_t.shape[:1] + var.shape[1:]), 1 - ab, x_t.dtype)
    valid = x_t.is_floating_point() and t_ok and fits(x0, x_t)
    post = outcome(lambda: q_posterior(sched, x0, x_t, t), valid, "x0", "x_t", "t")
    if post is None:
        return
    mu, bt, log_bt = post
    assert mu.shape == x_t.shape and finite(mu) and finite(bt) and finite(log_bt)
    # eq. 7 from beta and bar alpha alone, in float64
    beta, ab = sched.beta[idx], sched.alpha_bar[idx]
    ab_prev = torch.where(idx > 0, sched.alpha_bar[(idx - 1).clamp(min=0)], torch.ones((), dtype=torch.float64))
    c0 = col(ab_prev.sqrt() * beta / (1 - ab), x_t)
    ct = col((1 - beta).sqrt() * (1 - ab_prev) / (1 - ab), x_t)
    scale = float(x0.abs().max() + x_t.abs().max())
    assert_close(mu, c0 * x0.double() + ct * x_t.double(), lowest(x0, x_t), scale=scale)
    assert_close(bt.expand(x_t.shape[:1] + bt.shape[1:]), col((1 - ab_prev) / (1 - ab) * beta, x_t), x_t.dtype)


# === 3. losses and the bound ======================================================================================
GOOD_MODELS = {"eps": eps_model, "float64 out": lambda x, t: 0.1 * x.double()}
BAD_MODELS = {  # each one's output is not an eps prediction of x_t's shape (for some x_t)
    "(B, 1) out": lambda x, t: x[:, :1],
    "(1, ...) out": lambda x, t: x[:1],
    "int out": lambda x, t: torch.zeros(x.shape, dtype=torch.long),
    "tuple out": lambda x, t: (x,),
    "nan out": lambda x, t: x * math.nan,
}
MODELS = {**GOOD_MODELS, **BAD_MODELS}
GOOD_GAMMAS = st.one_of(st.floats(min_value=1e-3, max_value=1e6), st.just(math.inf), st.integers(1, 10))
BAD_GAMMAS = st.one_of(st.floats(max_value=0), st.sampled_from([math.nan, True, "5", None]))


def model_fits(model, x: torch.Tensor) -> bool:
    """Whether ``model``'s output for x_t of x's shape is a finite floating-point tensor of that shape."""
    x = torch.zeros(x.shape)
    try:
        out = model(x, torch.zeros(x.shape[:1], dtype=torch.long))
    except IndexError:  # x[:, :1] of a 1-D x: the function refuses such an x before its model runs
        return False
    return fits(out, x) and finite(out)


def snr_weight(weighting: str, snr, gamma, beta, ab, log_bt_clipped) -> torch.Tensor:
    """The weight on the eps error, from its definition (losses.eps_weight's docstring), in float64."""
    if weighting == "simple":
        return torch.ones_like(snr)
    if weighting == "x0":
        return 1 / snr
    if weighting == "min_snr":
        return snr.clamp(max=float(gamma)) / snr
    return beta**2 / (2 * log_bt_clipped.exp() * (1 - beta) * (1 - ab))


@st.composite
def loss_cases(draw):
    sched = SCHEDULES[draw(SCHED_NAMES)]
    spoil = fault(draw, "x0 dtype", "x0 not finite", "x0 1-D", "t", "eps", "model", "weighting", "gamma")
    x0 = draw(batches(bad=spoil == "x0 dtype", min_B=0))
    if spoil == "x0 1-D":
        x0 = x0.flatten()
    if x0.shape[0] and x0.ndim > 1 and x0.dtype.is_floating_point and (spoil == "x0 not finite" or x0.ndim < 2):
        x0 = x0.clone()
        x0.view(-1)[draw(st.integers(0, x0.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    t, t_ok, idx = draw(steps_for(x0.shape[0], sched.T, bad=spoil == "t"))
    eps = draw(like(x0, bad=spoil == "eps"))
    model = draw(st.sampled_from(sorted(BAD_MODELS if spoil == "model" else GOOD_MODELS)))
    weighting = draw(st.sampled_from(("l1", "SIMPLE") if spoil == "weighting" else WEIGHTINGS))
    gamma = draw(BAD_GAMMAS if spoil == "gamma" else GOOD_GAMMAS)
    return sched, x0, t, t_ok, idx, eps, model, weighting, gamma


@CHEAP
@given(loss_cases())
def test_diffusion_loss_is_finite_and_right_or_refused(case):
    sched, x0, t, t_ok, idx, eps, model_name, weighting, gamma = case
    model = MODELS[model_name]
    # NaN out, NaN in: a model that outputs NaN gives a NaN loss (the trainer stops on it, naming the step)
    model_ok = model_fits(model, x0) or model_name == "nan out" and x0.ndim >= 2
    x0_ok = x0.ndim >= 2 and x0.is_floating_point() and finite(x0) and x0.shape[1:].numel() > 0
    gamma_ok = weighting == "simple" or is_real(gamma, 0, math.inf, open_lo=True)
    valid = x0_ok and t_ok and fits(eps, x0) and weighting in WEIGHTINGS and gamma_ok and model_ok
    call = lambda: diffusion_loss(model, sched, x0, t=t, eps=eps, weighting=weighting, min_snr_gamma=gamma)
    loss = outcome(call, valid, "x0", "t", "eps", "model output", "weighting", "min_snr_gamma")
    if loss is None or model_name == "nan out":
        return
    assert loss.shape == (x0.shape[0],) and finite(loss) and loss.is_floating_point()
    if x0.shape[0] == 0:
        return
    # the same loss from the definitions, in float64
    ab, beta = col(sched.alpha_bar[idx], x0), col(sched.beta[idx], x0)
    x_t = ab.sqrt() * x0.double() + (1 - ab).sqrt() * eps.double()
    w = snr_weight(weighting, ab / (1 - ab), gamma, beta, ab, col(sched.log_beta_tilde_clipped[idx], x0))
    want = (w * (0.1 * x_t - eps.double()) ** 2).flatten(1).mean(1)
    assert_close(loss, want, lowest(x0, eps), scale=float(want.abs().max()) * 10)
    # t and eps drawn by the function: finite, of shape (B,)
    drawn = diffusion_loss(model, sched, x0, weighting=weighting, min_snr_gamma=gamma)
    assert drawn.shape == (x0.shape[0],) and finite(drawn)


@st.composite
def weight_cases(draw):
    sched = SCHEDULES[draw(SCHED_NAMES)]
    spoil = fault(draw, "x", "t", "weighting", "gamma", "var_type")
    x = draw(batches(bad=spoil == "x"))
    t, t_ok, idx = draw(steps_for(x.shape[0], sched.T, bad=spoil == "t"))
    weighting = draw(st.sampled_from(("l1", None) if spoil == "weighting" else WEIGHTINGS))
    gamma = draw(BAD_GAMMAS if spoil == "gamma" else GOOD_GAMMAS)
    var_type = draw(st.sampled_from(("learned",) if spoil == "var_type" else VAR_TYPES))
    return sched, x, t, t_ok, idx, weighting, gamma, var_type


@CHEAP
@given(weight_cases())
def test_eps_weight_is_positive_finite_and_float32_at_least(case):
    sched, x, t, t_ok, idx, weighting, gamma, var_type = case
    valid = x.is_floating_point() and t_ok and weighting in WEIGHTINGS and is_real(gamma, 0, math.inf, open_lo=True)
    valid = valid and (var_type in VAR_TYPES or weighting != "vlb")  # var_type is vlb's only
    call = lambda: eps_weight(sched, t, x, weighting, var_type, min_snr_gamma=gamma)
    w = outcome(call, valid, "x", "t", "weighting", "min_snr_gamma", "var_type")
    if w is None:
        return
    assert w.dtype == torch.promote_types(x.dtype, torch.float32) and finite(w) and bool((w > 0).all())
    snr = col(sched.snr[idx], x)
    if weighting in ("x0", "min_snr"):
        want = 1 / snr if weighting == "x0" else snr.clamp(max=float(gamma)) / snr
        torch.testing.assert_close(w.expand(snr.shape).double(), want, rtol=1e-5, atol=0)
    if weighting == "simple" or weighting == "min_snr" and gamma == math.inf:
        assert bool((w == 1).all())


def on_levels(shape, seed) -> torch.Tensor:
    """Data on the 256 levels of [-1, 1], as 8-bit images become."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g).double() / 127.5 - 1


@st.composite
def vlb_cases(draw):
    sched = SCHEDULES[draw(SCHED_NAMES)]
    spoil = fault(draw, "x0 dtype", "x0 empty", "x0 off the levels", "k", "var_types", "decoder", "model")
    B = 0 if spoil == "x0 empty" else draw(st.integers(1, 3))
    x0 = on_levels((B, draw(st.integers(1, 3))), draw(st.integers(0, 2**32 - 1)))
    if spoil == "x0 off the levels":
        x0 = x0 + 0.5 / 127.5 * (x0 < 1)
    if spoil == "x0 dtype":
        x0 = x0.bfloat16() if draw(st.booleans()) else (x0 * 127.5).round().long()
    else:
        x0 = x0.to(draw(st.sampled_from([torch.float16, torch.float32, torch.float64])))
    good_k = st.one_of(st.none(), st.integers(min(2, sched.T), sched.T))
    k = draw(st.one_of(st.integers(-1, 12), st.sampled_from([True, 2.0, "3"])) if spoil == "k" else good_k)
    var_types = draw(
        st.sampled_from([(), ("learned",), ("fixed_small", "fixed_large", "learned")])
        if spoil == "var_types"
        else st.one_of(st.sampled_from(VAR_TYPES), st.lists(st.sampled_from(VAR_TYPES), min_size=1, unique=True))
    )
    decoder = draw(st.sampled_from(["logistic", ""] if spoil == "decoder" else ["discretized", "continuous"]))
    model = draw(st.sampled_from(sorted(BAD_MODELS if spoil == "model" else GOOD_MODELS)))
    return sched, x0, k, var_types, decoder, model


@MEDIUM
@given(vlb_cases())
def test_vlb_with_few_terms_is_finite_or_refused(case):
    sched, x0, k, var_types, decoder, model_name = case
    vts = (var_types,) if isinstance(var_types, str) else tuple(var_types)
    level = (x0.double() + 1) * 127.5
    on_grid = bool(((level - level.round()).abs() < 0.1).all())
    # the discretised decoder scores data on the levels only, which bfloat16 cannot hold apart near 1
    on_levels_ok = decoder != "discretized" or (x0.dtype != torch.bfloat16 and on_grid)
    x0_ok = x0.shape[0] > 0 and x0.is_floating_point() and on_levels_ok
    k_ok = k is None or is_int(k, min(2, sched.T), sched.T)
    valid = x0_ok and k_ok and bool(vts) and set(vts) <= set(VAR_TYPES) and decoder in ("discretized", "continuous")
    valid = valid and model_fits(MODELS[model_name], x0)  # the bound of a NaN output is refused too
    call = lambda: vlb(MODELS[model_name], sched, x0, k=k, var_types=var_types, decoder=decoder)
    r = outcome(call, valid, "x0", "k", "var_types", "decoder", "model output", "model's output", "bfloat16", "data")
    if r is None:
        return
    steps = sched.T if k is None else k
    assert r["steps"].shape == (steps,) and finite(r["prior"]) and r["prior"].shape == x0.shape[:1]
    for v in vts:
        assert r[v]["terms"].shape == (x0.shape[0], steps) and finite(r[v]["terms"])
        assert r[v]["total"].shape == x0.shape[:1] and finite(r[v]["total"])


# === 4. samplers =================================================================================================
@CHEAP
@given(
    T=st.one_of(st.integers(1, 300), st.integers(1, 300), st.sampled_from([0, -1, True, 10.0, "10", None])),
    steps=st.one_of(
        st.integers(1, 300), st.integers(-2, 310).map(np.int64), st.sampled_from([True, np.bool_(True), 2.0, "5", None])
    ),
    spacing=st.one_of(st.sampled_from(SPACINGS), st.sampled_from(("linear", ""))),
)
def test_ddim_timesteps_are_distinct_decreasing_steps_in_range_or_refused(T, steps, spacing):
    valid = is_int(T, 1) and is_int(steps, 1, T) and spacing in SPACINGS
    ts = outcome(lambda: ddim_timesteps(T, steps, spacing), valid, "T", "steps", "spacing")
    if ts is None:
        return
    assert len(ts) == steps and all(is_int(s, 0, T - 1) for s in ts) and all(a > b for a, b in zip(ts, ts[1:]))


# Any generator and device: a bad one is refused by name (a seed for a Generator, 'gpu', a CUDA this machine lacks).
HALF = (torch.float16, torch.bfloat16)
BAD_GENERATORS = st.sampled_from([3, "0", 0.5, __import__("numpy").random.default_rng(0)])
BAD_DEVICES = st.sampled_from(["gpu", "cuda:99", "", 3.5, "mps:0" if not torch.backends.mps.is_available() else "gpu"])
SHAPES = st.one_of(
    st.tuples(st.integers(1, 3), st.integers(1, 3)),
    st.lists(st.integers(1, 3), min_size=1, max_size=3).flatmap(
        lambda s: st.sampled_from([tuple(s), list(s), torch.Size(s)])
    ),
)
BAD_SHAPES = st.sampled_from([(-1, 2), (2, 0), (), [], 3, None, "2, 2", (3.0, 2), (True, 2), (2, None)])
BAD_DTYPES = st.sampled_from([*NOT_FLOATS, torch.complex64, "float32", None, float])
GOOD_ETAS = st.one_of(st.floats(0, 1), st.sampled_from([0, 1]))
BAD_ETAS = st.one_of(st.floats(min_value=1.0, exclude_min=True), st.sampled_from([-0.1, math.nan, True, "0.5", None]))


@st.composite
def x_T_for(draw, shape, bad: bool, floats=FLOATS):
    if not bad:
        dtype = draw(st.sampled_from(floats))
        return draw(st.one_of(st.none(), st.just(tensor_of(shape, dtype, draw(st.integers(0, 99))))))
    kind = draw(st.sampled_from(["other batch", "int", "list", "nan", "inf"]))
    if kind == "other batch":
        return torch.zeros((shape[0] + 1, *shape[1:]))
    if kind in ("nan", "inf"):  # one value spoilt, of any floating dtype
        x = tensor_of(shape, draw(st.sampled_from(FLOATS)), 0)
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = math.nan if kind == "nan" else -math.inf
        return x
    return torch.zeros(shape, dtype=torch.long) if kind == "int" else torch.zeros(shape).tolist()


def shape_ok(shape) -> bool:
    """The samplers' rule: a tuple (or list, torch.Size) of one or more ints >= 1."""
    return isinstance(shape, (tuple, list, torch.Size)) and len(shape) >= 1 and all(is_int(n, 1) for n in shape)


def x_T_ok(x_T, shape) -> bool:
    """x_T (for a valid shape): None, or a finite floating-point tensor of that shape."""
    if x_T is None:
        return True
    return torch.is_tensor(x_T) and x_T.is_floating_point() and x_T.shape == tuple(shape) and finite(x_T)


def shape_dtype_for(draw, spoil, floats=FLOATS):
    """(a valid shape to draw x_T for, the shape passed, the dtype passed): one of them spoilt if ``spoil`` says."""
    shape = draw(SHAPES)
    passed = draw(BAD_SHAPES) if spoil == "shape" else shape
    return tuple(shape), passed, draw(BAD_DTYPES if spoil == "dtype" else st.sampled_from(floats))


@st.composite
def ddim_cases(draw):
    sched = SCHEDULES[draw(SCHED_NAMES)]
    spoil = fault(draw, "steps", "eta", "spacing", "x_T", "clip_x0", "shape", "dtype", "generator", "device")
    clip = draw(st.sampled_from(["no", 0, None] if spoil == "clip_x0" else [False, True]))
    floats = FLOATS
    shape, passed, dtype = shape_dtype_for(draw, spoil, floats)
    bad_steps = st.one_of(st.sampled_from([0, -1, sched.T + 1, True, 2.0, None, "2"]))
    steps = draw(bad_steps if spoil == "steps" else st.integers(1, sched.T))
    eta = draw(BAD_ETAS if spoil == "eta" else GOOD_ETAS)
    spacing = draw(st.sampled_from(("uniform", None) if spoil == "spacing" else SPACINGS))
    x_T = draw(x_T_for(shape, bad=spoil == "x_T", floats=floats))
    where = generator_device(draw, spoil)
    return sched, passed, steps, eta, spacing, x_T, clip, dtype, where


def generator_device(draw, spoil) -> dict:
    """generator= and device= for a sampler: valid ones (None, a seeded CPU generator, "cpu") unless spoilt."""
    gen = draw(BAD_GENERATORS) if spoil == "generator" else torch.Generator().manual_seed(0)
    device = draw(BAD_DEVICES) if spoil == "device" else draw(st.sampled_from([None, "cpu", torch.device("cpu")]))
    return dict(generator=gen, device=device)


def generator_device_ok(where) -> bool:
    return isinstance(where["generator"], torch.Generator) and (
        where["device"] is None or torch.device(where["device"]).type == "cpu"
    )


@MEDIUM
@given(ddim_cases())
def test_ddim_sample_is_finite_of_its_shape_or_refused(case):
    sched, shape, steps, eta, spacing, x_T, clip, dtype, where = case
    valid = is_int(steps, 1, sched.T) and is_real(eta, 0, 1) and spacing in SPACINGS and isinstance(clip, bool)
    valid = valid and shape_ok(shape) and isinstance(dtype, torch.dtype) and dtype.is_floating_point
    valid = valid and x_T_ok(x_T, shape) and generator_device_ok(where)
    kw = dict(steps=steps, eta=eta, spacing=spacing, clip_x0=clip, x_T=x_T, dtype=dtype, **where)
    names = "steps", "eta", "spacing", "x_T", "clip_x0", "shape", "dtype", "generator", "device"
    x = outcome(lambda: ddim_sample(eps_model, sched, shape, **kw), valid, *names)
    if x is not None:
        assert x.shape == tuple(shape) and finite(x) and x.dtype == (dtype if x_T is None else x_T.dtype)


@st.composite
def ddpm_cases(draw):
    sched = SCHEDULES[draw(SCHED_NAMES)]
    spoil = fault(draw, "var_type", "clip_x0", "x_T", "t_start", "shape", "dtype", "generator", "device")
    shape, passed, dtype = shape_dtype_for(draw, spoil)
    var_type = draw(st.sampled_from(("learned", None) if spoil == "var_type" else VAR_TYPES))
    clip = draw(st.sampled_from(["no", 1] if spoil == "clip_x0" else [False, True]))
    x_T = draw(x_T_for(shape, bad=spoil == "x_T"))
    good_start = st.none() if x_T is None else st.one_of(st.none(), st.integers(0, sched.T - 1))
    t_start = draw(st.sampled_from([-1, sched.T, 2.0, True]) if spoil == "t_start" else good_start)
    return sched, passed, var_type, clip, x_T, t_start, dtype, generator_device(draw, spoil)


@MEDIUM
@given(ddpm_cases())
def test_ddpm_sample_is_finite_of_its_shape_or_refused(case):
    sched, shape, var_type, clip, x_T, t_start, dtype, where = case
    t_start_ok = t_start is None or (is_int(t_start, 0, sched.T - 1) and x_T is not None)
    valid = var_type in VAR_TYPES and isinstance(clip, bool) and t_start_ok
    valid = valid and shape_ok(shape) and isinstance(dtype, torch.dtype) and dtype.is_floating_point
    valid = valid and x_T_ok(x_T, shape) and generator_device_ok(where)
    kw = dict(var_type=var_type, clip_x0=clip, x_T=x_T, t_start=t_start, dtype=dtype, **where)
    names = "var_type", "clip_x0", "x_T", "t_start", "shape", "dtype", "generator", "device"
    x = outcome(lambda: ddpm_sample(eps_model, sched, shape, **kw), valid, *names)
    if x is not None:
        assert x.shape == tuple(shape) and finite(x) and x.dtype == (dtype if x_T is None else x_T.dtype)


@st.composite
def step_cases(draw):
    """Arguments of ddim_step and ddpm_step (x_t of any floating dtype, t of any kind steps_for draws)."""
    sched = SCHEDULES[draw(SCHED_NAMES)]
    spoil = fault(draw, "x_t", "t", "t_prev", "model output", "noise", "eta", "var_type")
    x = draw(batches(bad=spoil == "x_t"))
    B = x.shape[0]
    t, t_ok, idx = draw(steps_for(B, sched.T, bad=spoil == "t"))
    eta = draw(BAD_ETAS if spoil == "eta" else GOOD_ETAS)
    if spoil == "t_prev":
        t_prev = draw(st.sampled_from([torch.tensor(-2), torch.tensor(sched.T), torch.tensor(0.5), None, "1"]))
        t_prev = draw(st.sampled_from([t_prev, torch.zeros(B + 1, dtype=torch.long)]))
    else:  # below t (to x_0 at -1), or any other step with deterministic DDIM
        top = int(idx.min()) - 1 if idx is not None else sched.T - 1
        above = is_real(eta, 0, 0) and draw(st.booleans())
        one = st.integers(-1, sched.T - 1) if above or top < -1 else st.integers(-1, top)
        t_prev = torch.tensor(draw(one))
        if draw(st.booleans()) and idx is not None and not above:
            t_prev = torch.tensor([draw(st.integers(-1, int(i) - 1)) for i in idx])
    out = draw(like(x, bad=spoil == "model output"))
    noise = draw(like(x, bad=True) if spoil == "noise" else st.one_of(like(x), like(x), st.none()))
    var_type = draw(st.sampled_from(("learned",) if spoil == "var_type" else VAR_TYPES))
    return sched, x, t, t_ok, idx, t_prev, out, noise, eta, var_type


def t_prev_ok(t_prev, idx, B, T, eta) -> bool:
    """ddim_step's rule: one step or (B,) of them in -1..T-1, below t (or, with eta = 0, only not equal to it)."""
    if not torch.is_tensor(t_prev) or t_prev.dtype != torch.long or t_prev.shape not in ((), (B,)):
        return False
    if not bool(((t_prev >= -1) & (t_prev < T)).all()):
        return False
    if idx is None or not is_real(eta, 0, 1):
        return True  # refused for t or eta anyway
    return bool((t_prev < idx).all() if float(eta) > 0 else (t_prev != idx).all())


@MEDIUM
@given(step_cases())
def test_ddim_step_is_finite_or_refused(case):
    sched, x, t, t_ok, idx, t_prev, out, noise, eta, _ = case
    noise_ok = fits(noise, x) or (noise is None and is_real(eta, 0, 0))
    valid = x.is_floating_point() and t_ok and t_prev_ok(t_prev, idx, x.shape[0], sched.T, eta) and fits(out, x)
    valid = valid and noise_ok and is_real(eta, 0, 1)
    call = lambda: ddim_step(sched, x, t, t_prev, out, noise, eta=eta)
    got = outcome(call, valid, "x_t", "t", "t_prev", "model output", "noise", "eta")
    if got is not None:
        assert got[0].shape == x.shape and finite(got[0]) and finite(got[1])


@MEDIUM
@given(step_cases())
def test_ddpm_step_is_finite_or_refused(case):
    sched, x, t, t_ok, _, _, out, noise, _, var_type = case
    valid = x.is_floating_point() and t_ok and fits(out, x) and fits(noise, x) and var_type in VAR_TYPES
    call = lambda: ddpm_step(sched, x, t, out, noise, var_type=var_type)
    got = outcome(call, valid, "x_t", "t", "model output", "noise", "var_type")
    if got is not None:
        assert got[0].shape == x.shape and finite(got[0]) and finite(got[1])


# === 5. checkpoints ==============================================================================================
def _same(a, b) -> bool:
    """Deep equality, tensors by dtype, shape and every bit."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A tiny trained 2-D run, made once by the command line: (its checkpoint, the folder to write files in)."""
    root = tmp_path_factory.mktemp("properties")
    assert run_cli("train", *TINY, "--out", root / "run") == 0
    return root / "run" / "checkpoint.pt", root


@pytest.fixture(scope="module")
def saved(toy_run):
    ckpt, root = toy_run
    return ckpt.read_bytes(), load_checkpoint(ckpt), root


def _loads_exactly_or_is_refused(path: Path, ref: dict) -> None:
    for load in (load_checkpoint, read_checkpoint, lambda p: load_model(p, device="cpu")):
        try:
            got = load(path)
        except (CheckpointError, FileNotFoundError) as err:
            assert isinstance(err, ValueError) or isinstance(err, FileNotFoundError)
            assert "weights_only=False" not in str(err)
            continue
        except Exception as err:  # noqa: BLE001 - any other exception is the failure this property looks for
            raise AssertionError(f"{load} raised {type(err).__name__}: {err}") from err
        state = got[2] if isinstance(got, tuple) else got
        assert _same(state, ref), "loaded, with other content than was saved"


@MEDIUM
@given(data=st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: b"PK\x03\x04" + b)))
def test_arbitrary_bytes_are_refused_with_a_checkpoint_error(saved, data):
    _, ref, root = saved
    path = root / "arbitrary.pt"
    path.write_bytes(data)
    _loads_exactly_or_is_refused(path, ref)


@MEDIUM
@given(cut=st.integers(0, 10**9))
def test_a_checkpoint_cut_short_anywhere_is_refused(saved, cut):
    good, ref, root = saved
    path = root / "cut.pt"
    path.write_bytes(good[: cut % len(good)])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    _loads_exactly_or_is_refused(path, ref)


@settings(PROFILE, max_examples=60)
@given(at=st.integers(0, 10**9), mask=st.integers(1, 255))
def test_a_checkpoint_with_a_byte_changed_anywhere_loads_as_saved_or_is_refused(saved, at, mask):
    good, ref, root = saved
    data = bytearray(good)
    data[at % len(data)] ^= mask
    path = root / "flipped.pt"
    path.write_bytes(bytes(data))
    _loads_exactly_or_is_refused(path, ref)


# === 6. the command line =========================================================================================
TINY = ["toy2d", "--dataset", "8gaussians", "--n-data", "64", "--hidden", "8", "--T", "10", "--steps", "2", "--quiet"]


RUNS = itertools.count()  # a fresh --out for every command line


def run_cli(*argv) -> int:
    """`python -m ddpm_tutor *argv` in this process, output swallowed, the global random state left as it was."""
    with torch.random.fork_rng(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return cli.main([str(a) for a in argv])


def cli_outcome(argv, given: list[str], may_diverge: bool = False) -> str | None:
    """Run a command line: None if it succeeded (status 0), else its usage error's message, which must name one of
    the options ``given``. Any exception but SystemExit(2) escaping main() fails; but if ``may_diverge`` (train),
    so may a run that diverged: status 1 and one line starting "train: the loss became", which is returned."""
    try:
        rc = run_cli(*argv)
    except SystemExit as err:
        message = str(err)
        if may_diverge and err.code == message and message.startswith("train: the loss became "):
            assert "\n" not in message, message
            event("diverged (status 1)")
            return message
        assert err.code == 2, f"exit status {err.code!r}: {err}"
        message = str(err)
        assert "\n" not in message and _names(message, *given), message
        event("refused (status 2)")
        return message
    except BaseException as err:  # noqa: BLE001 - any other exception is the failure this property looks for
        raise AssertionError(f"{type(err).__name__} escaped main({argv}): {err}") from err
    assert rc == 0
    event("ran (status 0)")
    return None


ALL_INTS, ALL_FLOATS = st.integers(), st.floats(allow_nan=True, allow_infinity=True)


def values(good, ints=ALL_INTS, floats=ALL_FLOATS):
    """Option values as a user might type them: half of them from ``good`` (values the option takes), the rest any
    integer, float (nan, inf) or short text."""
    return st.one_of(good, ints, floats, st.text(max_size=5), good, good).map(str)


def small(good, hi: int):
    # sizes and counts bounded above: a valid huge value is a long run, not a failure
    return values(good, st.integers(max_value=hi), st.one_of(st.floats(max_value=hi), st.just(math.nan)))


def choice(good, bad):
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(bad))


# a seed lies in 0..2**32 - 1; the rest of the integers (negative, or past 2**32, 2**63, 2**64) are usage errors
SEED_EDGES = [-1, 2**32 - 1, 2**32, 2**63, 2**64, -(2**63) - 1]
SEEDS = values(st.one_of(st.integers(0, 2**32 - 1), st.sampled_from(SEED_EDGES)))
UNIT = st.floats(0, 1)
TRAIN_OPTIONS = {
    "--steps": small(st.integers(1, 3), 3),
    "--batch-size": small(st.integers(1, 64), 64),
    "--lr": values(st.one_of(st.floats(1e-6, 1.0), st.floats(1.0, 1e308), st.sampled_from([1e30, 1e308]))),
    "--T": small(st.integers(1, 20), 20),
    "--n-data": small(st.integers(1, 100), 100),
    "--ema-decay": values(st.floats(0, 0.9999)),
    "--warmup": values(st.integers(0, 5)),
    "--min-snr-gamma": values(st.one_of(st.floats(0.01, 100), st.just(math.inf))),
    "--hidden": small(st.integers(1, 16), 16),
    "--checkpoint-every": values(st.integers(0, 3)),
    "--seed": SEEDS,
    "--weighting": choice(WEIGHTINGS, ["l2", ""]),
    "--schedule": choice(["linear", "cosine"], ["quadratic"]),
    "--parameterization": choice(["eps", "x0", "v", "score"], ["noise"]),
}


@st.composite
def options(draw, table: dict) -> list[str]:
    names = draw(st.lists(st.sampled_from(sorted(table)), min_size=1, max_size=3, unique=True))
    argv = []
    for name in names:
        argv += [name, draw(table[name])]
    return argv


@st.composite
def sampling_options(draw, table: dict, ddim_only: list[str], ddpm_only: list[str], never: list[str]) -> list[str]:
    """Options of `sample` or `evaluate`: a sampler (or the default, ddpm for 2-D models) with up to two options
    that apply to it, and now and then one from anywhere (``never`` apply to the 2-D model), which may not."""
    sampler = draw(st.sampled_from(["ddpm", "ddim", None]))
    common = sorted(set(table) - set(ddim_only) - set(ddpm_only) - {"--sampler"} - set(never))
    pool = common + (ddim_only if sampler == "ddim" else ddpm_only)
    names = draw(st.lists(st.sampled_from(pool), max_size=2, unique=True))
    if draw(st.integers(0, 2)) == 0:
        names.append(draw(st.sampled_from(sorted(set(table) - set(names)))))
    argv = [] if sampler is None else ["--sampler", sampler]
    for name in names:
        argv += [name, draw(table[name])]
    return argv


def _option_names(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith("--")]


@CLI
@example(opts=["--lr", "1e308"])
@example(opts=["--lr", "1e30", "--checkpoint-every", "1"])
@example(opts=["--seed", str(2**64)])
@given(opts=options(TRAIN_OPTIONS))
def test_train_runs_or_refuses_naming_an_option_and_writes_nothing_then(toy_run, opts):
    _, root = toy_run
    out = root / f"train-{next(RUNS)}"
    given = [*_option_names(opts), "--out", "--resume"]
    message = cli_outcome(["train", *TINY, *opts, "--out", out], given, may_diverge=True)
    if message is not None and message.startswith("train:"):
        # diverged after `step` steps: the run holds the last save (every --checkpoint-every steps) if one came
        # before, else nothing (the final save is never reached)
        step = int(re.search(r"at step (\d+)", message).group(1))
        every = int(dict(zip(opts[::2], opts[1::2])).get("--checkpoint-every", "1000"))  # a valid value: it ran
        if every == 0 or step < every:
            assert not out.exists(), f"a run that diverged before a save left {sorted(out.rglob('*'))}"
        else:
            assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]
            state = load_checkpoint(out / "checkpoint.pt")
            assert state["step"] == step - step % every and all(math.isfinite(v) for v in state["losses"])
        return
    if message is not None:
        assert not out.exists(), f"a refused run left {sorted(p.name for p in out.rglob('*'))}"
        return
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == state["train_config"]["steps"] and all(math.isfinite(v) for v in state["losses"])


@CLI
@given(opts=options(TRAIN_OPTIONS), resume=st.booleans())
def test_train_into_an_existing_run_never_changes_its_checkpoint(toy_run, opts, resume):
    ckpt, _ = toy_run
    before = ckpt.read_bytes()
    argv = ["train", "toy2d", *opts, "--quiet", "--out", ckpt.parent, *(["--resume"] if resume else [])]
    cli_outcome(argv, [*_option_names(opts), "--out", "--resume"], may_diverge=True)
    assert ckpt.read_bytes() == before  # a finished run: refused, or nothing to do


SAMPLE_OPTIONS = {
    "--n": small(st.integers(1, 64), 64),
    "--steps": small(st.integers(1, 10), 12),
    "--eta": values(UNIT),
    "--seed": SEEDS,
    "--guidance": values(st.floats(0, 10)),  # refused: the model is unconditional
    "--sampler": choice(["ddpm", "ddim"], ["euler"]),
    "--spacing": choice(SPACINGS, ["linear"]),
    "--var-type": choice(VAR_TYPES, ["learned"]),
    "--labels": st.one_of(st.sampled_from(["3", "uniform"]), st.text(max_size=4)),  # refused: unconditional
}
SAMPLE_DDIM, SAMPLE_DDPM = ["--steps", "--eta", "--spacing"], ["--var-type"]


@CLI_FAST
@given(
    opts=sampling_options(SAMPLE_OPTIONS, SAMPLE_DDIM, SAMPLE_DDPM, ["--guidance", "--labels"]),
    suffix=st.sampled_from([".npy", ".pt", ".png", ".jpg", ""]),
)
def test_sample_writes_its_file_or_refuses_naming_an_option(toy_run, opts, suffix):
    ckpt, root = toy_run
    out = root / f"samples-{next(RUNS)}{suffix}"
    message = cli_outcome(["sample", "--checkpoint", ckpt, *opts, "--out", out], [*_option_names(opts), "--out"])
    if message is not None:
        assert not out.exists()
        return
    assert out.is_file() and out.stat().st_size > 0
    if suffix == ".npy":
        import numpy as np

        x = np.load(out)
        assert np.isfinite(x).all() and x.shape[1] == 2


EVALUATE_OPTIONS = {
    "--n": small(st.integers(1, 64), 64),
    "--sets": small(st.integers(1, 2), 2),
    "--references": small(st.integers(1, 2), 2),
    "--steps": small(st.integers(1, 10), 12),
    "--eta": values(UNIT),
    "--seed": SEEDS,
    "--n-terms": small(st.integers(2, 10), 12),  # refused: the model is 2-D
    "--sampler": choice(["ddpm", "ddim"], ["euler"]),
    "--var-type": choice(VAR_TYPES, ["learned"]),
    "--spacing": choice(SPACINGS, ["linear"]),
}


@CLI_FAST
@given(opts=sampling_options(EVALUATE_OPTIONS, SAMPLE_DDIM, SAMPLE_DDPM, ["--n-terms"]))
def test_evaluate_reports_or_refuses_naming_an_option(toy_run, opts):
    ckpt, _ = toy_run
    small_run = ["--n", "32", "--sets", "1", "--references", "1"]  # given first: the drawn options win
    cli_outcome(["evaluate", "--checkpoint", ckpt, *small_run, *opts], _option_names(opts))


# === regressions: inputs that failed these properties, fixed with them ===========================================
def _flipped_pickle(good: bytes) -> bytes:
    """The checkpoint with one byte of its pickle (data.pkl: every number, string and key) changed."""
    data = bytearray(good)
    at = good.index(b"initial_lr") + len(b"initial_lr") + 6  # inside the float that follows the key
    data[at] ^= 0x10
    return bytes(data)


REGRESSIONS = [  # (what failed, the call, the names its error must hold); each raised something else before
    ("torch TypeError", lambda: Schedule.linear(10, "a"), ["beta_1"]),
    ("torch RuntimeError", lambda: Schedule.linear(10, torch.tensor([0.1, 0.2])), ["beta_1"]),
    ("silently ignored", lambda: Schedule.linear(1, 0.5, "x"), ["beta_T"]),
    ("message without s", lambda: Schedule.cosine(10, -0.5), ["s"]),
    ("Python TypeError", lambda: Schedule.cosine(10, "a"), ["s"]),
    ("Python TypeError", lambda: Schedule.cosine(10, 0.008, "a"), ["max_beta"]),
    ("message without s", lambda: Schedule.cosine(10, 1e300), ["s"]),
    ("torch ValueError (overflow)", lambda: Schedule.linear(10**20), ["T"]),
    ("bar alpha 0, log SNR -inf", lambda: Schedule(torch.full((1100,), 0.5, dtype=torch.float64)), ["beta"]),
    ("torch TypeError", lambda: Schedule.from_alpha_bar("abc"), ["alpha_bar"]),
    ("AttributeError", lambda: Schedule.linear(10).at("foo", 0, torch.zeros(2, 1)), ["table"]),
    ("AttributeError", lambda: Schedule.linear(10).at("beta", 0, [0.0, 1.0]), ["x"]),
    ("int64 table of 0s", lambda: Schedule.linear(10).at("alpha_bar", 0, torch.zeros(2, 1, dtype=torch.long)), ["x"]),
    ("silent broadcast", lambda: Schedule.linear(10).at("beta", torch.tensor([3]), torch.zeros(4, 2)), ["t"]),
    ("torch RuntimeError", lambda: q_sample(Schedule.linear(10), torch.zeros(2, 1), None, torch.zeros(2, 1)), ["t"]),
    ("torch TypeError", lambda: q_sample(Schedule.linear(10), torch.zeros(2, 1), "3", torch.zeros(2, 1)), ["t"]),
    ("AttributeError", lambda: q_sample(Schedule.linear(10), torch.zeros(2, 1), 0, None), ["eps"]),
    ("int eps accepted", lambda: q_step(Schedule.linear(10), torch.zeros(2, 1), 0, torch.zeros(2, 1).long()), ["eps"]),
    (
        "int x0 accepted",
        lambda: q_posterior(Schedule.linear(10), torch.zeros(2, 1).long(), torch.zeros(2, 1), 0),
        ["x0"],
    ),
    ("AttributeError", lambda: q_sample(None, torch.zeros(2, 1), 0, torch.zeros(2, 1)), ["sched"]),
    (
        "AttributeError",
        lambda: diffusion_loss(lambda x, t: (x,), Schedule.linear(10), torch.zeros(2, 1)),
        ["model output"],
    ),
    (
        "int output accepted",
        lambda: diffusion_loss(lambda x, t: x.long(), Schedule.linear(10), torch.zeros(2, 1)),
        ["model output"],
    ),
    ("NotImplementedError", lambda: diffusion_loss(eps_model, Schedule.linear(10), torch.zeros(2, 1).long()), ["x0"]),
    ("NaN loss", lambda: diffusion_loss(eps_model, Schedule.linear(10), torch.full((2, 1), math.nan)), ["x0"]),
    ("RuntimeError from reshape", lambda: diffusion_loss(eps_model, Schedule.linear(10), torch.zeros(2, 0)), ["x0"]),
    ("torch RuntimeError", lambda: vlb(eps_model, Schedule.linear(10), torch.zeros(0, 2), k=3), ["x0"]),
    (
        "NaN bound",
        lambda: vlb(lambda x, t: x * math.nan, Schedule.linear(10), torch.ones(2, 2), k=3),
        ["model's output"],
    ),
    ("empty result", lambda: vlb(eps_model, Schedule.linear(10), torch.ones(2, 2), k=3, var_types=()), ["var_types"]),
    ("'no' clipped", lambda: vlb(eps_model, Schedule.linear(10), torch.ones(2, 2), k=3, clip_x0="no"), ["clip_x0"]),
    ("bfloat16 levels", lambda: vlb(eps_model, Schedule.linear(10), torch.ones(2, 2).bfloat16(), k=3), ["bfloat16"]),
    ("AttributeError", lambda: ddim_step(Schedule.linear(10), torch.zeros(2, 1), 5, 2, (1,), None), ["model output"]),
    (
        "inf from an int x_t",
        lambda: ddim_step(Schedule.linear(10), torch.zeros(2, 1).long(), 5, 2, torch.zeros(2, 1), None),
        ["x_t"],
    ),
    (
        "torch RuntimeError",
        lambda: ddpm_step(
            Schedule.linear(10), torch.zeros(3, 1), torch.tensor([5, 5]), torch.zeros(3, 1), torch.zeros(3, 1)
        ),
        ["t"],
    ),
]


@pytest.mark.parametrize("what, call, names", REGRESSIONS, ids=[r[0] for r in REGRESSIONS])
def test_regressions_are_refused_naming_their_argument(what, call, names):
    refused(call, *names)


def test_regressions_that_now_work():
    sched = Schedule.linear(10)
    # float16 data: the weights of x0/min_snr/vlb came out inf/NaN (1/SNR of cosine(1000) overflows float16)
    cos, x0 = Schedule.cosine(1000), torch.randn(4, 2).half()
    for weighting in WEIGHTINGS:
        loss = diffusion_loss(eps_model, cos, x0, t=torch.tensor([0, 1, 998, 999]), weighting=weighting)
        assert finite(loss), weighting
    # numpy numbers are numbers: min_snr_gamma=np.float32(5) was refused
    import numpy as np

    loss = diffusion_loss(eps_model, sched, x0.float(), weighting="min_snr", min_snr_gamma=np.float32(5))
    assert finite(loss)
    # an empty batch: mean_flat raised a RuntimeError; now an empty loss
    assert diffusion_loss(eps_model, sched, torch.zeros(0, 2)).shape == (0,)
    # float16 data on the 256 levels was refused as off the grid (float16 rounds them by up to 0.03 of a level)
    r = vlb(eps_model, sched, on_levels((3, 2), 0).half(), k=3)
    assert finite(r["fixed_small"]["total"])
    # float16 DDIM: sigma was 0/0 wherever bar alpha rounds to 1 in float16 (the paper's linear(1000)), NaN at any eta
    x = torch.tensor([1.541]).half()
    got = ddim_step(Schedule.linear(1), x, torch.tensor([0]), torch.tensor(-1), 0.1 * x, None)
    assert finite(got[0]) and got[0].dtype == torch.float16
    for eta in (0.0, 1.0):
        gen = torch.Generator().manual_seed(0)
        x = ddim_sample(eps_model, Schedule.linear(1000), (4, 2), steps=20, eta=eta, dtype=torch.float16, generator=gen)
        assert finite(x) and x.dtype == torch.float16
    # a Python int step: ddpm_step raised AttributeError ('bool' object has no attribute 'to')
    x = torch.randn(3, 2)
    assert finite(ddpm_step(sched, x, 5, 0.1 * x, torch.zeros_like(x))[0])


def test_checkpoint_regressions(saved):
    good, ref, root = saved
    # a changed byte in the pickle loaded silently (torch.load checks no CRC; the checksum covers tensors only)
    path = root / "regression.pt"
    path.write_bytes(_flipped_pickle(good))
    with pytest.raises(CheckpointError, match=r"\(a damaged zip archive: its record .*data\.pkl fails its CRC check"):
        load_checkpoint(path)
    # a changed byte in a header of the zip's central directory, which Python's zip reader passes over, raised
    # torch's RuntimeError "PytorchStreamReader failed reading zip archive" (its version fields, say) or a
    # UnicodeDecodeError (byte 38 of the last entry: torch then decodes other bytes as the serialization id)
    directory = good.rindex(b"PK\x01\x02")  # the last central directory entry
    refused = 0
    for at in range(directory + 4, directory + 46):  # its fixed-size header
        data = bytearray(good)
        data[at] ^= 0xFF
        path.write_bytes(bytes(data))
        try:
            _loads_exactly_or_is_refused(path, ref)
            load_checkpoint(path)
        except CheckpointError:
            refused += 1
    assert refused > 0
