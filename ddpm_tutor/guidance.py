"""Guidance: steering a diffusion model towards a class y at sampling time.

Bayes' rule for the noisy marginals, grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t), and the
identity eps = -sqrt(1 - bar alpha_t) grad log p(x_t) turn a class posterior into a correction of eps:

- classifier guidance (Dhariwal & Nichol 2021, sec. 4.2, eq. 14 and Algorithm 2, the eps form):
  eps_guided = eps(x_t, t) - s sqrt(1 - bar alpha_t) grad_x log p_phi(y | x_t, t);
- classifier-free guidance (Ho & Salimans 2022, eq. 6):
  eps_guided = (1 + w) eps(x_t, t, y) - w eps(x_t, t, null).

Both return plain ``model(x_t, t)`` callables, so every sampler in :mod:`ddpm_tutor.samplers` runs them.
For a Gaussian mixture whose classes are groups of components, every guided quantity is known in closed
form (:func:`mixture_class_posterior`, :func:`mixture_conditional_score`, :func:`tilted_score`,
:func:`exact_conditional_eps_model`, :func:`exact_classifier`), which is what the tests check against.

Time indices follow :mod:`ddpm_tutor.schedules`: integer t in 0..T-1 is the paper's step t+1.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from .data.mixtures import GaussianMixture
from .models.mlp import timestep_embedding
from .schedules import Schedule

Tensor = torch.Tensor
Model = Callable[[Tensor, Tensor], Tensor]


def _labels(y, B: int, device) -> Tensor:
    y = torch.as_tensor(y, device=device, dtype=torch.long)
    if y.ndim == 0:
        y = y.expand(B)
    if y.shape != (B,):
        raise ValueError(f"y must be one label or a tensor of shape ({B},), got shape {tuple(y.shape)}")
    return y


def _t_batch(t, B: int, device) -> Tensor:
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(B)
    if t.shape != (B,):
        raise ValueError(f"t must be one step index or a tensor of shape ({B},), got shape {tuple(t.shape)}")
    return t.long()


def _check_scale(scale) -> float:
    scale = float(scale)
    if not torch.isfinite(torch.tensor(scale)):
        raise ValueError(f"the guidance scale must be a finite number, got {scale!r}")
    return scale


# --- the two guided models ------------------------------------------------------------------------
def classifier_grad(classifier: Callable[[Tensor, Tensor], Tensor], x_t: Tensor, t: Tensor, y) -> Tensor:
    """grad_x log p(y | x_t, t) of a classifier returning logits (B, K), by autograd. Returns (B, ...)."""
    B = x_t.shape[0]
    y = _labels(y, B, x_t.device)
    t = _t_batch(t, B, x_t.device)
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        logits = classifier(x, t)
        if logits.ndim != 2 or logits.shape[0] != B:
            raise ValueError(f"the classifier must return logits of shape ({B}, K), got {tuple(logits.shape)}")
        if int(y.max()) >= logits.shape[1] or int(y.min()) < 0:
            raise ValueError(f"labels must lie in 0..{logits.shape[1] - 1} for a classifier with "
                             f"{logits.shape[1]} classes")
        log_p = torch.log_softmax(logits, dim=1).gather(1, y[:, None]).sum()
        (grad,) = torch.autograd.grad(log_p, x)
    return grad.detach()


def classifier_guided_model(model: Model, classifier: Callable[[Tensor, Tensor], Tensor], y, scale: float,
                            sched: Schedule) -> Model:
    """Classifier guidance as a plain eps model (Dhariwal & Nichol 2021, eq. 14 and Algorithm 2):

        eps_guided(x_t, t) = eps(x_t, t) - scale * sqrt(1 - bar alpha_t) * grad_x log p(y | x_t, t).

    ``model(x_t, t)`` predicts eps (unconditional, or a conditional model with y fixed, e.g. with
    ``functools.partial``); ``classifier(x_t, t)`` returns logits (B, K) and must be differentiable in x_t;
    ``y`` is one label or (B,) labels. This is the score of p(x_t) p(y | x_t)^scale, times -sqrt(1 - bar alpha_t).
    """
    scale = _check_scale(scale)

    def guided(x_t: Tensor, t: Tensor) -> Tensor:
        t = _t_batch(t, x_t.shape[0], x_t.device)
        with torch.no_grad():
            eps = model(x_t, t)
        if scale == 0.0:
            return eps
        grad = classifier_grad(classifier, x_t, t, y)
        sd = (1.0 - sched.at("alpha_bar", t, x_t)).sqrt()
        return eps - scale * sd * grad.to(eps.dtype)

    return guided


def cfg_model(model: Callable[..., Tensor], y, scale: float, null_label: int) -> Model:
    """Classifier-free guidance as a plain eps model (Ho & Salimans 2022, eq. 6):

        eps_guided(x_t, t) = (1 + scale) * eps(x_t, t, y) - scale * eps(x_t, t, null_label).

    ``model(x_t, t, y)`` is one conditional network trained with label dropout (``null_label`` is the
    "no label" class; for :class:`~ddpm_tutor.models.MLPDenoiser` it is ``num_classes``). scale = 0 is the
    conditional model, scale = -1 the unconditional one. Both predictions come from one batched call.
    """
    scale = _check_scale(scale)

    def guided(x_t: Tensor, t: Tensor) -> Tensor:
        B = x_t.shape[0]
        t = _t_batch(t, B, x_t.device)
        yy = _labels(y, B, x_t.device)
        if scale == 0.0:
            return model(x_t, t, yy)
        null = torch.full_like(yy, int(null_label))
        out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([yy, null]))
        eps_c, eps_u = out[:B], out[B:]
        return (1.0 + scale) * eps_c - scale * eps_u

    return guided


# --- a noise-aware classifier for low-dimensional data --------------------------------------------
@dataclass
class ClassifierConfig:
    """Sizes of the noise-aware MLP classifier."""

    data_dim: int = 2  # dimension D of each data point
    num_classes: int = 3  # number of classes K (logits (B, K))
    hidden: int = 128  # width of the hidden layers
    n_layers: int = 3  # hidden layers, each Linear-SiLU with the time embedding added
    t_dim: int = 64  # size of the sinusoidal time embedding


class NoisyClassifier(nn.Module):
    """An MLP p_phi(y | x_t, t): (x_t (B, D), t (B,)) -> logits (B, K).

    It sees the step t (through the sinusoidal embedding of the denoiser) because p(y | x_t) changes with
    the noise level: it must be trained on x_t, not on clean data (Dhariwal & Nichol 2021, sec. 4).
    """

    def __init__(self, config: ClassifierConfig | None = None, **overrides):
        super().__init__()
        self.config = config or ClassifierConfig(**overrides)
        c = self.config
        if c.num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {c.num_classes}")
        self.inp = nn.Linear(c.data_dim, c.hidden)
        self.t_mlp = nn.Sequential(nn.Linear(c.t_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.layers = nn.ModuleList(nn.Linear(c.hidden, c.hidden) for _ in range(c.n_layers))
        self.out = nn.Linear(c.hidden, c.num_classes)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        c = self.config
        if x.ndim != 2 or x.shape[1] != c.data_dim:
            raise ValueError(f"x must have shape (B, {c.data_dim}), got {tuple(x.shape)}")
        t = _t_batch(t, x.shape[0], x.device)
        emb = self.t_mlp(timestep_embedding(t, c.t_dim))
        h = self.inp(x)
        for layer in self.layers:
            h = h + layer(self.act(h + emb))
        return self.out(self.act(h))

    def config_dict(self) -> dict:
        return asdict(self.config)


def train_noisy_classifier(classifier: nn.Module, sched: Schedule, x: Tensor, y: Tensor, steps: int,
                           generator: torch.Generator, *, batch_size: int = 512, lr: float = 2e-3,
                           weight_decay: float = 0.0, device=None) -> list[float]:
    """Train ``classifier`` by cross-entropy on noisy data: x_t = q_sample(x_0, t, eps), t ~ U{0..T-1}.

    x: (N, D) clean data, y: (N,) labels. All randomness comes from ``generator`` (CPU). Returns the
    per-step losses (nats). The classifier is left in eval mode.
    """
    from .diffusion import q_sample

    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"x must be (N, D) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    device = torch.device(device) if device is not None else next(classifier.parameters()).device
    classifier.to(device).train()
    opt = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=generator)
        t = torch.randint(0, sched.T, (batch_size,), generator=generator)
        eps = torch.randn(batch_size, x.shape[1], generator=generator)
        x_t = q_sample(sched, x[idx], t, eps).to(device)
        loss = nn.functional.cross_entropy(classifier(x_t, t.to(device)), y[idx].to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the classifier's loss became {loss.item()}: lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        losses.append(loss.item())
    classifier.eval()
    return losses


# --- exact guided quantities for a Gaussian mixture -----------------------------------------------
def _classes(mixture: GaussianMixture, classes) -> Tensor:
    K = mixture.n_components
    if classes is None:
        return torch.arange(K)
    c = torch.as_tensor(classes, dtype=torch.long)
    if c.shape != (K,) or int(c.min()) < 0:
        raise ValueError(f"classes must give a non-negative class label to each of the {K} components, "
                         f"got shape {tuple(c.shape)}")
    n = int(c.max()) + 1
    missing = sorted(set(range(n)) - set(c.tolist()))
    if missing:
        raise ValueError(f"classes 0..{n - 1} must each own at least one component; missing {missing}")
    return c


def n_classes(mixture: GaussianMixture, classes=None) -> int:
    """Number of classes when component k has class ``classes[k]`` (default: one class per component)."""
    return int(_classes(mixture, classes).max()) + 1


def class_mixture(mixture: GaussianMixture, y: int, classes=None) -> GaussianMixture:
    """p(x_0 | y): the mixture of the components whose class is y, weights renormalised."""
    c = _classes(mixture, classes)
    keep = c == int(y)
    if not keep.any():
        raise ValueError(f"no component has class {y}")
    return GaussianMixture(mixture.weights[keep], mixture.means[keep], mixture.covs[keep])


def class_prior(mixture: GaussianMixture, classes=None) -> Tensor:
    """p(y) = total weight of the components of class y, shape (C,)."""
    c = _classes(mixture, classes)
    return torch.zeros(int(c.max()) + 1, dtype=torch.float64).index_add_(0, c, mixture.weights)


def mixture_class_posterior(mixture: GaussianMixture, x_t: Tensor, alpha_bar: float, classes=None) -> Tensor:
    """Exact p(y | x_t) (n, C): the responsibilities of the diffused mixture, summed over each class."""
    c = _classes(mixture, classes)
    r = mixture.diffused(alpha_bar).responsibilities(x_t)
    return torch.zeros(r.shape[0], int(c.max()) + 1, dtype=r.dtype).index_add_(1, c, r)


def mixture_conditional_score(mixture: GaussianMixture, x_t: Tensor, alpha_bar: float, y, classes=None) -> Tensor:
    """Exact grad log p(x_t | y) (n, D): the score of the diffused class-y mixture. ``y``: int or (n,) labels."""
    x_t = torch.as_tensor(x_t, dtype=torch.float64)
    y = _labels(y, x_t.shape[0], "cpu")
    out = torch.empty_like(x_t)
    for label in y.unique().tolist():
        idx = y == label
        out[idx] = class_mixture(mixture, label, classes).diffused(alpha_bar).score(x_t[idx])
    return out


def mixture_class_grad(mixture: GaussianMixture, x_t: Tensor, alpha_bar: float, y, classes=None) -> Tensor:
    """Exact grad log p(y | x_t) = grad log p(x_t | y) - grad log p(x_t) (Bayes' rule; p(y) has no gradient)."""
    x_t = torch.as_tensor(x_t, dtype=torch.float64)
    return (mixture_conditional_score(mixture, x_t, alpha_bar, y, classes)
            - mixture.diffused(alpha_bar).score(x_t))


def tilted_score(mixture: GaussianMixture, x_t: Tensor, alpha_bar: float, y, gamma: float, classes=None) -> Tensor:
    """grad log [p(x_t) p(y | x_t)^gamma] = grad log p(x_t) + gamma grad log p(y | x_t), in closed form.

    gamma = 0: unconditional; gamma = 1: conditional p(x_t | y); classifier-free guidance with scale w is
    gamma = 1 + w, equivalently grad log [p(x_t | y)^(1 + w) / p(x_t)^w].
    """
    x_t = torch.as_tensor(x_t, dtype=torch.float64)
    return mixture.diffused(alpha_bar).score(x_t) + float(gamma) * mixture_class_grad(mixture, x_t, alpha_bar, y,
                                                                                       classes)


def exact_conditional_eps_model(mixture: GaussianMixture, sched: Schedule, classes=None,
                                null_label: int | None = None) -> Callable[..., Tensor]:
    """The ideal conditional noise predictor model(x_t, t, y) = -sqrt(1 - bar alpha_t) grad log p(x_t | y).

    Labels equal to ``null_label`` (default: the number of classes C, as for MLPDenoiser) get the
    unconditional eps, -sqrt(1 - bar alpha_t) grad log p(x_t): what a CFG network with label dropout
    converges to with infinite capacity.
    """
    C = n_classes(mixture, classes)
    null = C if null_label is None else int(null_label)
    parts = [class_mixture(mixture, k, classes) for k in range(C)]

    def model(x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        B = x_t.shape[0]
        t = _t_batch(t, B, "cpu")
        y = torch.full((B,), null, dtype=torch.long) if y is None else _labels(y, B, "cpu").cpu()
        x64 = x_t.detach().cpu().to(torch.float64)
        out = torch.empty_like(x64)
        for step in t.unique().tolist():
            a = float(sched.alpha_bar[step])
            for label in y[t.cpu() == step].unique().tolist():
                idx = (t.cpu() == step) & (y == label)
                if label == null:
                    s = mixture.diffused(a).score(x64[idx])
                elif 0 <= label < C:
                    s = parts[label].diffused(a).score(x64[idx])
                else:
                    raise ValueError(f"labels must lie in 0..{C - 1} or be the null label {null}, got {label}")
                out[idx] = -(1 - a) ** 0.5 * s
        return out.to(device=x_t.device, dtype=x_t.dtype)

    return model


def exact_classifier(mixture: GaussianMixture, sched: Schedule, classes=None) -> Callable[[Tensor, Tensor], Tensor]:
    """The ideal noise-aware classifier: classifier(x_t, t) -> log p(y | x_t) (B, C) as logits.

    Differentiable in x_t (autograd through the mixture's log-densities), so it can drive
    :func:`classifier_guided_model`; its gradient equals :func:`mixture_class_grad`.
    """
    C = n_classes(mixture, classes)
    parts = [class_mixture(mixture, k, classes) for k in range(C)]
    log_prior = class_prior(mixture, classes).log()

    def classifier(x_t: Tensor, t: Tensor) -> Tensor:
        B = x_t.shape[0]
        t = _t_batch(t, B, "cpu")
        x64 = x_t.to(torch.float64)
        rows, order = [], []
        for step in t.unique().tolist():
            idx = torch.nonzero(t == step)[:, 0]
            a = float(sched.alpha_bar[step])
            # log p(x_t | k) + log p(k), normalised over k: Bayes' rule, differentiable in x_t
            joint = torch.stack([parts[k].diffused(a).log_prob(x64[idx.to(x_t.device)]) for k in range(C)], dim=1)
            rows.append(torch.log_softmax(joint + log_prior.to(joint.device), dim=1))
            order.append(idx)
        out = torch.cat(rows)[torch.argsort(torch.cat(order)).to(x_t.device)]
        return out.to(x_t.dtype)

    return classifier


@torch.no_grad()
def guidance_metrics(mixture: GaussianMixture, samples: Tensor, y, classes=None,
                     tail: float = 1e-3) -> dict[str, float]:
    """How strongly samples meant for class y belong to it, and what guidance costs, under the exact mixture.

    - accuracy: fraction with argmax_k p(k | x) = y under the exact clean-data classifier;
    - confidence: mean p(y | x);
    - off_support: fraction of samples outside every component's central (1 - tail) ellipsoid (squared
      Mahalanobis distance above the chi-square quantile, Wilson-Hilferty approximation): samples no
      component of the data would plausibly produce;
    - diversity: sqrt of the mean per-coordinate variance of the in-support samples of each class,
      averaged over classes (outliers are counted by off_support, not here).
    """
    x = torch.as_tensor(samples, dtype=torch.float64)
    y = _labels(y, x.shape[0], "cpu")
    post = mixture_class_posterior(mixture, x, 1.0, classes)
    acc = (post.argmax(dim=1) == y).double().mean().item()
    conf = post.gather(1, y[:, None]).mean().item()
    D = mixture.dim
    z = -torch.special.ndtri(torch.tensor(float(tail), dtype=torch.float64)).item()
    r2 = D * (1 - 2 / (9 * D) + z * (2 / (9 * D)) ** 0.5) ** 3
    diff = x[:, None, :] - mixture.means[None]
    maha = (diff * torch.linalg.solve(mixture.covs[None], diff[..., None])[..., 0]).sum(-1)  # (n, K)
    inside = (maha <= r2).any(dim=1)
    spreads = [x[(y == k) & inside].var(dim=0).mean().sqrt().item() for k in y.unique().tolist()
               if int(((y == k) & inside).sum()) > 1]
    return {"accuracy": acc, "confidence": conf, "off_support": 1.0 - inside.double().mean().item(),
            "diversity": float(sum(spreads) / max(len(spreads), 1))}
