"""Guidance: steering a diffusion model towards a class y at sampling time.

Bayes' rule for the noisy marginals, grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t), and the
identity eps = -sqrt(1 - bar alpha_t) grad log p(x_t) turn a class posterior into a correction of eps:

- classifier guidance (Dhariwal & Nichol 2021, sec. 4.2, eq. 14 and Algorithm 2, the eps form):
  eps_guided = eps(x_t, t) - s sqrt(1 - bar alpha_t) grad_x log p_phi(y | x_t, t);
- classifier-free guidance (Ho & Salimans 2022, eq. 6):
  eps_guided = (1 + w) eps(x_t, t, y) - w eps(x_t, t, null).

Both take a :class:`~ddpm_tutor.diffusion.Denoiser` (or a plain eps model) and return plain eps models
``model(x_t, t)``, so every sampler in :mod:`ddpm_tutor.samplers` runs them. For a Gaussian mixture whose classes
are groups of components every guided quantity is known in closed form (:mod:`ddpm_tutor.data.mixtures`:
``mixture_class_posterior``, ``tilted_score``, ``exact_conditional_eps_model``, ``exact_classifier``), which is
what the tests check against; the noise-aware classifier is :class:`ddpm_tutor.models.NoisyClassifier`.

Time indices follow :mod:`ddpm_tutor.schedules`: integer t in 0..T-1 is the paper's step t+1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .checks import batch_steps
from .data.mixtures import GaussianMixture, mixture_class_posterior
from .diffusion import Denoiser, as_denoiser, expand_labels
from .schedules import Schedule

Tensor = torch.Tensor
Model = Callable[[Tensor, Tensor], Tensor]


def _check_scale(scale) -> float:
    scale = float(scale)
    if not torch.isfinite(torch.tensor(scale)):
        raise ValueError(f"the guidance scale must be a finite number, got {scale!r}")
    return scale


# --- the two guided models ------------------------------------------------------------------------
def classifier_grad(classifier: Callable[[Tensor, Tensor], Tensor], x_t: Tensor, t: Tensor, y) -> Tensor:
    """grad_x log p(y | x_t, t) of a classifier returning logits (B, K), by autograd. Returns (B, ...)."""
    B = x_t.shape[0]
    y = expand_labels(y, B, x_t.device)
    t = batch_steps(t, B, x_t.device).long()
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        logits = classifier(x, t)
        if logits.ndim != 2 or logits.shape[0] != B:
            raise ValueError(f"the classifier must return logits of shape ({B}, K), got {tuple(logits.shape)}")
        if int(y.max()) >= logits.shape[1] or int(y.min()) < 0:
            raise ValueError(
                f"labels must lie in 0..{logits.shape[1] - 1} for a classifier with {logits.shape[1]} classes"
            )
        log_p = torch.log_softmax(logits, dim=1).gather(1, y[:, None]).sum()
        (grad,) = torch.autograd.grad(log_p, x)
    return grad.detach()


def classifier_guided_model(
    model: Model, classifier: Callable[[Tensor, Tensor], Tensor], y, scale: float, sched: Schedule
) -> Model:
    """Classifier guidance as a plain eps model (Dhariwal & Nichol 2021, eq. 14 and Algorithm 2):

        eps_guided(x_t, t) = eps(x_t, t) - scale * sqrt(1 - bar alpha_t) * grad_x log p(y | x_t, t).

    ``model``: a :class:`~ddpm_tutor.diffusion.Denoiser` (unconditional, or conditional with its labels fixed by
    ``with_labels``) or a plain eps model(x_t, t); ``classifier(x_t, t)`` returns logits (B, K) and must be
    differentiable in x_t; ``y`` is one label or (B,) labels. This is the score of p(x_t) p(y | x_t)^scale, times
    -sqrt(1 - bar alpha_t).
    """
    scale = _check_scale(scale)
    den = as_denoiser(model, sched)

    def guided(x_t: Tensor, t: Tensor) -> Tensor:
        t = batch_steps(t, x_t.shape[0], x_t.device).long()
        with torch.no_grad():
            eps = den(x_t, t)
        if scale == 0.0:
            return eps
        grad = classifier_grad(classifier, x_t, t, y)
        sd = (1.0 - sched.at("alpha_bar", t, x_t)).sqrt()
        return eps - scale * sd * grad.to(eps.dtype)

    return guided


def cfg_model(model: Denoiser | Callable[..., Tensor], y, scale: float, null_label: int | None = None) -> Model:
    """Classifier-free guidance as a plain eps model (Ho & Salimans 2022, eq. 6):

        eps_guided(x_t, t) = (1 + scale) * eps(x_t, t, y) - scale * eps(x_t, t, null_label).

    ``model``: a class-conditional :class:`~ddpm_tutor.diffusion.Denoiser` of one network trained with label
    dropout (it knows its null label, the "no label" class), or a plain conditional eps model(x_t, t, y) with its
    ``null_label``. ``y``: one label or (B,) labels. scale = 0 is the conditional model, scale = -1 the
    unconditional one. Both predictions come from one batched call.
    """
    scale = _check_scale(scale)
    if isinstance(model, Denoiser):
        if model.null_label is None:
            raise ValueError(
                "cfg_model needs a class-conditional network, but this Denoiser's is unconditional (null_label=None)"
            )
        if null_label is not None and int(null_label) != model.null_label:
            raise ValueError(f"null_label={null_label} differs from the Denoiser's null label {model.null_label}")
        null_label = model.null_label

        def call(x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
            return model.with_labels(labels)(x_t, t)
    elif null_label is None:
        raise ValueError("cfg_model of a plain conditional model(x_t, t, y) needs its null_label")
    else:
        call = model

    def guided(x_t: Tensor, t: Tensor) -> Tensor:
        B = x_t.shape[0]
        t = batch_steps(t, B, x_t.device).long()
        yy = expand_labels(y, B, x_t.device)
        if scale == 0.0:
            return call(x_t, t, yy)
        null = torch.full_like(yy, int(null_label))
        out = call(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([yy, null]))
        eps_c, eps_u = out[:B], out[B:]
        return (1.0 + scale) * eps_c - scale * eps_u

    return guided


@torch.no_grad()
def guidance_metrics(
    mixture: GaussianMixture, samples: Tensor, y, classes=None, tail: float = 1e-3
) -> dict[str, float]:
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
    y = expand_labels(y, x.shape[0], "cpu")
    post = mixture_class_posterior(mixture, x, 1.0, classes)
    acc = (post.argmax(dim=1) == y).double().mean().item()
    conf = post.gather(1, y[:, None]).mean().item()
    D = mixture.dim
    z = -torch.special.ndtri(torch.tensor(float(tail), dtype=torch.float64)).item()
    r2 = D * (1 - 2 / (9 * D) + z * (2 / (9 * D)) ** 0.5) ** 3
    diff = x[:, None, :] - mixture.means[None]
    maha = (diff * torch.linalg.solve(mixture.covs[None], diff[..., None])[..., 0]).sum(-1)  # (n, K)
    inside = (maha <= r2).any(dim=1)
    spreads = [
        x[(y == k) & inside].var(dim=0).mean().sqrt().item()
        for k in y.unique().tolist()
        if int(((y == k) & inside).sum()) > 1
    ]
    return {
        "accuracy": acc,
        "confidence": conf,
        "off_support": 1.0 - inside.double().mean().item(),
        "diversity": float(sum(spreads) / max(len(spreads), 1)),
    }
