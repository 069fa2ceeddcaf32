"""The forward process, its posterior, and the model's reverse step.

A network is wrapped once, with what it predicts, its schedule and its labels, in a :class:`Denoiser`: the
samplers, the losses and the bound take it (or a plain eps model(x_t, t), which they wrap as one).

Every function takes a :class:`~ddpm_tutor.schedules.Schedule` and integer step
indices ``t`` of shape (B,) in 0..T-1 (index t is the paper's step t+1).
Data ``x`` has shape (B, ...), any number of trailing dimensions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from .checks import batch_steps, floating_like, null_labels
from .schedules import Schedule

Tensor = torch.Tensor
Parameterization = Literal["eps", "x0", "v", "score"]
VarType = Literal["fixed_small", "fixed_large"]
PARAMETERIZATIONS = ("eps", "x0", "v", "score")
VAR_TYPES = ("fixed_small", "fixed_large")


def _check_batch(sched: Schedule, x: Tensor, t: Tensor, name: str = "x") -> None:
    if not isinstance(sched, Schedule):
        raise ValueError(f"sched must be a Schedule (e.g. Schedule.linear(1000)), got {type(sched).__name__}")
    if isinstance(x, Tensor) and not x.is_floating_point():
        # sqrt(alpha_bar) * x would be cast to x's integer dtype (uint8 pixels of 200 come out as 0)
        raise ValueError(
            f"{name} must be a floating-point tensor (images scaled to [-1, 1], e.g. x.float() / 127.5 - 1), "
            f"got dtype {x.dtype}"
        )
    if not isinstance(x, Tensor) or x.ndim < 1:
        got = "a 0-d tensor" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of shape (B, ...), got {got}")
    batch_steps(t, x.shape[0], batch=f"{name} of shape {tuple(x.shape)}")


def check_model_out(out, x_t: Tensor) -> Tensor:
    """Return a network's output ``out`` if it is a floating-point tensor of x_t's shape: (B, 1) against x_t of
    (B, 2) would broadcast into finite, meaningless numbers."""
    return floating_like(out, x_t, "model output", "x_t")


def q_mean_variance(sched: Schedule, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_t | x_0) = N(sqrt(bar alpha_t) x_0, (1 - bar alpha_t) I).

    Ho et al. 2020, eq. 4. Returns mean (B, ...) and variance (B, 1, ..., 1).
    """
    _check_batch(sched, x0, t, "x0")
    return sched.at("alpha_bar", t, x0).sqrt() * x0, 1.0 - sched.at("alpha_bar", t, x0)


def q_sample(sched: Schedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """Jump straight to step t: x_t = sqrt(bar alpha_t) x_0 + sqrt(1 - bar alpha_t) eps.

    Ho et al. 2020, eq. 4 reparameterised. x0, eps: (B, ...); t: (B,). Returns (B, ...).
    """
    _check_batch(sched, x0, t, "x0")
    floating_like(eps, x0, "eps", "x0")
    ab = sched.at("alpha_bar", t, x0)
    return ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps


def q_step(sched: Schedule, x_prev: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """One step of the forward chain: x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps.

    Ho et al. 2020, eq. 2. ``t`` indexes the step being taken (0 for x_0 -> x_1).
    """
    _check_batch(sched, x_prev, t, "x_prev")
    floating_like(eps, x_prev, "eps", "x_prev")
    beta = sched.at("beta", t, x_prev)
    return (1.0 - beta).sqrt() * x_prev + beta.sqrt() * eps


def q_posterior(sched: Schedule, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Posterior q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde I).

    Ho et al. 2020, eq. 6-7. Returns mu_tilde (B, ...), beta_tilde and its clipped log (B, 1, ..., 1).
    """
    _check_batch(sched, x_t, t, "x_t")
    floating_like(x0, x_t, "x0", "x_t")
    mu_tilde = sched.at("posterior_coef_x0", t, x_t) * x0 + sched.at("posterior_coef_xt", t, x_t) * x_t
    return mu_tilde, sched.at("beta_tilde", t, x_t), sched.at("log_beta_tilde_clipped", t, x_t)


# conversions between what a network may predict ------------------------------------------
def x0_from_eps(sched: Schedule, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """x_0 = (x_t - sqrt(1 - bar alpha_t) eps) / sqrt(bar alpha_t)  (Ho et al. 2020, eq. 4 solved for x_0)."""
    ab = sched.at("alpha_bar", t, x_t)
    return (x_t - (1.0 - ab).sqrt() * eps) / ab.sqrt()


def eps_from_x0(sched: Schedule, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
    """eps = (x_t - sqrt(bar alpha_t) x_0) / sqrt(1 - bar alpha_t)."""
    ab = sched.at("alpha_bar", t, x_t)
    return (x_t - ab.sqrt() * x0) / (1.0 - ab).sqrt()


def v_from_x0_eps(sched: Schedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """v = sqrt(bar alpha_t) eps - sqrt(1 - bar alpha_t) x_0  (Salimans & Ho 2022, sec. 4)."""
    ab = sched.at("alpha_bar", t, x0)
    return ab.sqrt() * eps - (1.0 - ab).sqrt() * x0


def score_from_eps(sched: Schedule, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """grad log q(x_t) = -eps / sqrt(1 - bar alpha_t)  (Luo 2022, eq. 151 with Tweedie's formula)."""
    return -eps / (1.0 - sched.at("alpha_bar", t, x_t)).sqrt()


def to_x0_eps(
    sched: Schedule, x_t: Tensor, t: Tensor, out: Tensor, parameterization: Parameterization = "eps"
) -> tuple[Tensor, Tensor]:
    """Turn a network output of any parameterisation into the pair (x0_hat, eps_hat).

    eps: out = eps_hat; x0: out = x0_hat; v: out = v_hat (x_0 = sqrt(ab) x_t - sqrt(1-ab) v);
    score: out = score_hat (eps = -sqrt(1-ab) score).
    """
    _check_batch(sched, x_t, t, "x_t")
    check_model_out(out, x_t)
    ab = sched.at("alpha_bar", t, x_t)
    if parameterization == "eps":
        return x0_from_eps(sched, x_t, t, out), out
    if parameterization == "x0":
        return out, eps_from_x0(sched, x_t, t, out)
    if parameterization == "v":
        x0 = ab.sqrt() * x_t - (1.0 - ab).sqrt() * out
        eps = (1.0 - ab).sqrt() * x_t + ab.sqrt() * out
        return x0, eps
    if parameterization == "score":
        eps = -(1.0 - ab).sqrt() * out
        return x0_from_eps(sched, x_t, t, eps), eps
    raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")


def target_for(sched: Schedule, x0: Tensor, t: Tensor, eps: Tensor, parameterization: Parameterization) -> Tensor:
    """What a network of the given parameterisation should output for (x_0, eps) at step t."""
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    if parameterization == "v":
        return v_from_x0_eps(sched, x0, t, eps)
    if parameterization == "score":
        # the conditional score grad log q(x_t | x_0): the regression target of denoising score matching
        return score_from_eps(sched, x0, t, eps)
    raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")


def reverse_variance(sched: Schedule, t: Tensor, x: Tensor, var_type: VarType) -> tuple[Tensor, Tensor]:
    """sigma_t^2 of p(x_{t-1} | x_t) and its log: beta_tilde ("fixed_small") or beta ("fixed_large").

    Ho et al. 2020, sec. 3.2. "fixed_large" uses beta_tilde at the first step, as the paper's code does,
    so that L_0's decoder has a sensible width. For "fixed_small" at the first step the variance is
    beta_tilde_1 = 0 (the sampler adds no noise there) while the log is clipped to log beta_tilde_2 (what the
    decoder and the KL terms use), again as in the paper's code. Returns two (B, 1, ..., 1) tensors.
    """
    if var_type == "fixed_small":
        return sched.at("beta_tilde", t, x), sched.at("log_beta_tilde_clipped", t, x)
    if var_type == "fixed_large":
        var = torch.cat([sched.beta_tilde[1:2], sched.beta[1:]]) if sched.T > 1 else sched.beta
        v = sched.at(var, t, x)
        return v, v.log()
    raise ValueError(f"var_type must be one of {VAR_TYPES}, got {var_type!r}")


def expand_labels(y, B: int, device) -> Tensor:
    """Class labels for a batch of B: one label (an int or a 0-d tensor) for every row, or a (B,) tensor."""
    y = torch.as_tensor(y, device=device)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels y must be integers, got dtype {y.dtype}")
    if y.ndim == 0:
        y = y.expand(B)
    if y.shape != (B,):
        raise ValueError(f"y must be one label or a tensor of shape ({B},), got shape {tuple(y.shape)}")
    return y.long()


_NULL = object()  # the labels of Denoiser.unconditional(): the null label, repeated to the batch size


class Denoiser(torch.nn.Module):
    """A network with its parameterisation, schedule and labels, answering eps_hat, x0_hat and the score.

    ``net(x_t, t)`` (or ``net(x_t, t, y)`` once labels are fixed) outputs eps, x0, v or the score, as
    ``parameterization`` says; :func:`to_x0_eps` converts it exactly. Calling the Denoiser returns eps_hat, so it
    is a plain eps model ``model(x_t, t)`` too. ``null_label`` is the "no label" class of a class-conditional
    network trained with label dropout (Ho & Salimans 2022); by default the network's ``config.num_classes``
    (our MLP and U-Net reserve that label), None for an unconditional network. x_t: (B, ...), t: (B,).
    """

    def __init__(
        self,
        net: Callable[..., Tensor],
        sched: Schedule,
        parameterization: Parameterization = "eps",
        *,
        null_label: int | None = None,
    ):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
        if isinstance(net, Denoiser):
            raise ValueError("net is already a Denoiser: use it as it is (or its .net)")
        if not callable(net):
            raise ValueError(f"net must be a callable net(x_t, t) -> prediction, got {type(net).__name__}")
        if not isinstance(sched, Schedule):
            raise ValueError(f"sched must be a Schedule, got {type(sched).__name__}")
        classes = getattr(getattr(net, "config", None), "num_classes", None)
        if null_label is None:
            null_label = classes
        elif classes is not None and int(null_label) != classes:
            raise ValueError(f"the network reserves label {classes} for 'no label', got null_label={null_label}")
        self.net, self.sched, self.parameterization = net, sched, parameterization
        self.null_label = None if null_label is None else int(null_label)
        self.y = None  # fixed labels passed to the network: None, _NULL or a label tensor

    @property
    def config(self):
        """The network's config (what rebuilds it)."""
        return self.net.config

    def _labelled(self, y) -> Denoiser:
        if self.null_label is None:
            raise ValueError("this Denoiser's network is unconditional (null_label=None): it takes no labels")
        out = Denoiser(self.net, self.sched, self.parameterization, null_label=self.null_label)
        out.y = y
        return out

    def with_labels(self, y) -> Denoiser:
        """The same network asked for class y: one label, or (B,) labels for a batch of B."""
        if y is None:
            raise ValueError("with_labels needs labels; use unconditional() for the null label")
        y = torch.as_tensor(y)
        if y.ndim > 1:
            raise ValueError(f"y must be one label or a tensor of shape (B,), got shape {tuple(y.shape)}")
        return self._labelled(y)

    def unconditional(self) -> Denoiser:
        """The same network asked for no class (the null label); an unconditional network as it is."""
        return self if self.null_label is None else self._labelled(_NULL)

    def model_out(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The network's raw output (B, ...), in its own parameterisation."""
        if self.y is None:
            return self.net(x_t, t)
        B = x_t.shape[0]
        y = null_labels(B, self.null_label, x_t.device) if self.y is _NULL else expand_labels(self.y, B, x_t.device)
        return self.net(x_t, t, y)

    def predict(self, x_t: Tensor, t: Tensor, model_out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(x0_hat, eps_hat), each (B, ...), from the network's output (computed unless ``model_out`` is given)."""
        out = self.model_out(x_t, t) if model_out is None else model_out
        return to_x0_eps(self.sched, x_t, t, out, self.parameterization)

    def eps_hat(self, x_t: Tensor, t: Tensor) -> Tensor:
        """eps_hat(x_t, t) (B, ...): the network's noise prediction (Ho et al. 2020, eq. 11)."""
        out = self.model_out(x_t, t)
        if self.parameterization != "eps":
            return self.predict(x_t, t, out)[1]
        return check_model_out(out, x_t)

    def x0_hat(self, x_t: Tensor, t: Tensor) -> Tensor:
        """x0_hat(x_t, t) (B, ...) = (x_t - sqrt(1 - bar alpha_t) eps_hat) / sqrt(bar alpha_t) (Ho et al., eq. 15)."""
        return self.predict(x_t, t)[0]

    def score(self, x_t: Tensor, t: Tensor) -> Tensor:
        """score_hat(x_t, t) (B, ...) = -eps_hat / sqrt(1 - bar alpha_t) (Luo 2022, eq. 151)."""
        out = self.model_out(x_t, t)
        if self.parameterization == "score":
            return out
        return score_from_eps(self.sched, x_t, t, self.predict(x_t, t, out)[1])

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.eps_hat(x_t, t)

    def extra_repr(self) -> str:
        labels = "none" if self.y is None else "null" if self.y is _NULL else f"y of shape {tuple(self.y.shape)}"
        return f"parameterization={self.parameterization!r}, null_label={self.null_label}, labels={labels}"


def as_denoiser(model: Callable[..., Tensor], sched: Schedule) -> Denoiser:
    """``model`` as a Denoiser: itself if it is one (its schedule must be ``sched``), else an eps model(x_t, t)."""
    if isinstance(model, Denoiser):
        if model.sched is not sched and (
            model.sched.T != sched.T or not torch.equal(model.sched.alpha_bar, sched.alpha_bar)
        ):
            raise ValueError(
                f"the Denoiser was built for the schedule {model.sched.name!r} (T={model.sched.T}), "
                f"not the one given, {sched.name!r} (T={sched.T})"
            )
        return model
    return Denoiser(model, sched, "eps")


def p_from_prediction(
    sched: Schedule,
    x_t: Tensor,
    t: Tensor,
    x0_hat: Tensor,
    eps_hat: Tensor,
    *,
    var_type: VarType = "fixed_small",
    clip_x0: bool = False,
) -> dict[str, Tensor]:
    """The reverse step p(x_{t-1} | x_t) = N(mu_tilde(x_t, x0_hat), sigma_t^2 I) from a prediction (x0_hat, eps_hat).

    Ho et al. 2020, eq. 7 and 11. With ``clip_x0`` x0_hat is clipped to [-1, 1] before it enters the mean (and
    eps_hat recomputed from it), as the paper's sampler does. Returns a dict with mean, variance, log_variance,
    x0_hat, eps_hat.
    """
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        eps_hat = eps_from_x0(sched, x_t, t, x0_hat)
    mean, _, _ = q_posterior(sched, x0_hat, x_t, t)
    var, log_var = reverse_variance(sched, t, x_t, var_type)
    return {"mean": mean, "variance": var, "log_variance": log_var, "x0_hat": x0_hat, "eps_hat": eps_hat}


def p_mean_variance(
    model: Callable[..., Tensor] | None,
    sched: Schedule,
    x_t: Tensor,
    t: Tensor,
    *,
    var_type: VarType = "fixed_small",
    clip_x0: bool = False,
    model_out: Tensor | None = None,
) -> dict[str, Tensor]:
    """The reverse step p(x_{t-1} | x_t) = N(mean, variance I) made from the model's prediction.

    ``model``: a :class:`Denoiser` or a plain eps model(x_t, t); ``model_out``, if given, is its output at (x_t, t)
    (with ``model=None``: eps_hat). mean = mu_tilde(x_t, x0_hat) (Ho et al. 2020, eq. 7 and 11); see
    :func:`p_from_prediction` for ``clip_x0``. Returns a dict with mean, variance, log_variance, x0_hat, eps_hat,
    model_out.
    """
    _check_batch(sched, x_t, t, "x_t")
    if model is None:
        if model_out is None:
            raise ValueError("p_mean_variance needs a model or its output model_out")
        x0_hat, eps_hat = to_x0_eps(sched, x_t, t, model_out, "eps")
    else:
        den = as_denoiser(model, sched)
        if model_out is None:
            model_out = den.model_out(x_t, t)
        x0_hat, eps_hat = den.predict(x_t, t, model_out)
    p = p_from_prediction(sched, x_t, t, x0_hat, eps_hat, var_type=var_type, clip_x0=clip_x0)
    p["model_out"] = model_out
    return p
