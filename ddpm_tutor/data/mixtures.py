"""Gaussian mixtures whose diffused marginals, scores and denoisers are known in closed form.

If x_0 ~ sum_k w_k N(m_k, S_k) then x_t = sqrt(a) x_0 + sqrt(1 - a) eps (a = bar alpha_t) is again a
mixture, sum_k w_k N(sqrt(a) m_k, a S_k + (1 - a) I) (Ho et al. 2020, eq. 4 applied per component),
so its score and E[x_0 | x_t] are exact: the reference every sampler and loss is checked against.
So are Cov[x_0 | x_t] (the distortion of progressive coding, Ho et al. 2020, sec. 4.3) and, when the classes
are groups of components, p(y | x_t), the conditional scores and every guided score (Dhariwal & Nichol 2021;
Ho & Salimans 2022). All computations in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..checks import batch_steps, generator_arg, null_labels
from ..diffusion import expand_labels

if TYPE_CHECKING:
    from ..schedules import Schedule

Tensor = torch.Tensor


@dataclass(frozen=True)
class GaussianMixture:
    """A mixture of K Gaussians in D dimensions: weights (K,), means (K, D), covariances (K, D, D)."""

    weights: Tensor
    means: Tensor
    covs: Tensor

    def __post_init__(self):
        w = torch.as_tensor(self.weights, dtype=torch.float64)
        m = torch.as_tensor(self.means, dtype=torch.float64)
        c = torch.as_tensor(self.covs, dtype=torch.float64)
        if m.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(m.shape)}")
        K, D = m.shape
        if w.shape != (K,) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be K={K} finite non-negative numbers with a positive sum")
        if c.shape != (K, D, D):
            raise ValueError(f"covs must have shape (K, D, D) = ({K}, {D}, {D}), got {tuple(c.shape)}")
        try:
            torch.linalg.cholesky(c)
        except RuntimeError as err:
            raise ValueError("every covariance must be symmetric positive definite") from err
        object.__setattr__(self, "weights", w / w.sum())
        object.__setattr__(self, "means", m)
        object.__setattr__(self, "covs", c)

    @classmethod
    def isotropic(cls, weights, means, stds) -> GaussianMixture:
        """Mixture with covariances std_k^2 I."""
        m = torch.as_tensor(means, dtype=torch.float64)
        s = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)
        if s.numel() == 1:
            s = s.expand(m.shape[0])
        eye = torch.eye(m.shape[1], dtype=torch.float64)
        return cls(torch.as_tensor(weights, dtype=torch.float64), m, s[:, None, None] ** 2 * eye)

    @classmethod
    def ring(cls, k: int = 8, radius: float = 1.5, std: float = 0.15) -> GaussianMixture:
        """k equal Gaussians on a circle (a 2D example with well-separated modes)."""
        angle = torch.arange(k, dtype=torch.float64) * (2 * torch.pi / k)
        means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
        return cls.isotropic(torch.ones(k), means, std)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        """n draws (n, D) float64 (and their component labels (n,) when asked)."""
        generator = generator_arg(generator)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + (torch.linalg.cholesky(self.covs)[k] @ z[..., None])[..., 0]
        return (x, k) if return_labels else x

    def diffused(self, alpha_bar: float) -> GaussianMixture:
        """The marginal of x_t when bar alpha_t = alpha_bar: components N(sqrt(a) m_k, a S_k + (1-a) I)."""
        a = float(alpha_bar)
        if not 0 < a <= 1:
            raise ValueError(f"alpha_bar must lie in (0, 1], got {alpha_bar!r}")
        eye = torch.eye(self.dim, dtype=torch.float64)
        return self._trusted(self.weights, a**0.5 * self.means, a * self.covs + (1 - a) * eye)

    @classmethod
    def _trusted(cls, weights: Tensor, means: Tensor, covs: Tensor) -> GaussianMixture:
        # for mixtures derived from a validated one: skip the O(K D^3) checks on every sampler step
        obj = object.__new__(cls)
        for name, value in (("weights", weights), ("means", means), ("covs", covs)):
            object.__setattr__(obj, name, value)
        return obj

    def _precisions(self) -> tuple[Tensor, Tensor]:
        # inverse covariances (K, D, D) and log-determinants (K,): K is small, so invert once per call
        return torch.linalg.inv(self.covs), torch.linalg.slogdet(self.covs).logabsdet

    def _check_x(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x).to(torch.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}), got {tuple(x.shape)}")
        return x

    def _log_probs_and_pulls(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """log w_k N(x; m_k, S_k) (n, K) and S_k^{-1} (m_k - x) (n, K, D)."""
        x = self._check_x(x)
        prec, logdet = self._precisions()
        diff = self.means[None] - x[:, None, :]  # (n, K, D)
        pull = torch.einsum("kde,nke->nkd", prec, diff)
        maha = (diff * pull).sum(-1)
        logp = -0.5 * (maha + logdet + self.dim * math.log(2 * math.pi)) + self.weights.log()
        return logp, pull

    def log_prob(self, x: Tensor) -> Tensor:
        """log density (n,) at points x (n, D)."""
        return torch.logsumexp(self._log_probs_and_pulls(x)[0], dim=1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior component probabilities p(k | x), (n, K)."""
        return torch.softmax(self._log_probs_and_pulls(x)[0], dim=1)

    def score(self, x: Tensor) -> Tensor:
        """grad_x log p(x) = sum_k r_k(x) S_k^{-1} (m_k - x), shape (n, D)."""
        logp, pull = self._log_probs_and_pulls(x)
        r = torch.softmax(logp, dim=1)
        return (r[..., None] * pull).sum(dim=1)

    def posterior_mean_x0(self, x_t: Tensor, alpha_bar: float) -> Tensor:
        """E[x_0 | x_t] computed component by component with Gaussian conditioning (not Tweedie).

        For component k: E[x_0 | x_t, k] = m_k + sqrt(a) S_k (a S_k + (1-a) I)^{-1} (x_t - sqrt(a) m_k),
        weighted by p(k | x_t) under the diffused mixture. Returns (n, D).
        """
        a = float(alpha_bar)
        x_t = self._check_x(x_t)
        diffused = self.diffused(a)
        r = diffused.responsibilities(x_t)
        resid = x_t[:, None, :] - a**0.5 * self.means[None]  # (n, K, D)
        gain = torch.linalg.solve(diffused.covs[None], resid[..., None])[..., 0]
        cond = self.means[None] + a**0.5 * (self.covs[None] @ gain[..., None])[..., 0]
        return (r[..., None] * cond).sum(dim=1)

    def eps_model(self, sched):
        """An exact noise predictor model(x_t, t) = -sqrt(1 - bar alpha_t) grad log q_t(x_t) for this data.

        Plugged into any sampler it is the ideal network: what training converges to with infinite capacity.
        """

        def model(x_t: Tensor, t: Tensor) -> Tensor:
            t = torch.as_tensor(t)
            if t.ndim == 0 or bool((t == t.flatten()[0]).all()):  # samplers ask for one step at a time
                a = float(sched.alpha_bar[int(t.flatten()[0])])
                return (-((1 - a) ** 0.5) * self.diffused(a).score(x_t)).to(x_t.dtype)
            out = torch.empty_like(x_t, dtype=torch.float64)
            for step in t.unique().tolist():
                idx = t == step
                a = float(sched.alpha_bar[step])
                out[idx] = -((1 - a) ** 0.5) * self.diffused(a).score(x_t[idx])
            return out.to(x_t.dtype)

        return model


# --- closed forms for the distortion of progressive coding ---------------------------------------
def mixture_posterior_x0_cov(mixture: GaussianMixture, x_t: Tensor, alpha_bar: float) -> tuple[Tensor, Tensor]:
    """Exact E[x_0 | x_t] (n, D) and Cov[x_0 | x_t] (n, D, D) for mixture data, by Gaussian conditioning.

    Per component k (a = bar alpha_t, G_k = a S_k + (1 - a) I):
    E[x_0 | x_t, k] = m_k + sqrt(a) S_k G_k^{-1} (x_t - sqrt(a) m_k),  Cov[x_0 | x_t, k] = S_k - a S_k G_k^{-1} S_k,
    mixed with the responsibilities r_k(x_t) (law of total covariance).
    """
    a = float(alpha_bar)
    x_t = torch.as_tensor(x_t, dtype=torch.float64)
    diffused = mixture.diffused(a)
    r = diffused.responsibilities(x_t)  # (n, K)
    S, G = mixture.covs, diffused.covs
    resid = x_t[:, None, :] - a**0.5 * mixture.means[None]
    gain = torch.linalg.solve(G[None], resid[..., None])[..., 0]
    mk = mixture.means[None] + a**0.5 * (S[None] @ gain[..., None])[..., 0]  # (n, K, D)
    ck = S - a * S @ torch.linalg.solve(G, S)  # (K, D, D)
    mean = (r[..., None] * mk).sum(dim=1)
    second = (r[..., None, None] * (ck[None] + mk[..., :, None] * mk[..., None, :])).sum(dim=1)
    return mean, second - mean[:, :, None] * mean[:, None, :]


def gaussian_posterior_std(alpha_bar, data_var: float) -> Tensor:
    """sqrt(Var[x_0 | x_t]) for scalar Gaussian data x_0 ~ N(m, s^2): sqrt(s^2 (1 - a) / (a s^2 + 1 - a)).

    It does not depend on x_t: for the exact model it is the distortion RMSE at every step.
    """
    a = torch.as_tensor(alpha_bar, dtype=torch.float64)
    s2 = float(data_var)
    return (s2 * (1 - a) / (a * s2 + 1 - a)).sqrt()


# --- classes: groups of components, and the exact guided quantities ------------------------------
def _classes(mixture: GaussianMixture, classes) -> Tensor:
    K = mixture.n_components
    if classes is None:
        return torch.arange(K)
    c = torch.as_tensor(classes, dtype=torch.long)
    if c.shape != (K,) or int(c.min()) < 0:
        raise ValueError(
            f"classes must give a non-negative class label to each of the {K} components, got shape {tuple(c.shape)}"
        )
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
    y = expand_labels(y, x_t.shape[0], "cpu")
    out = torch.empty_like(x_t)
    for label in y.unique().tolist():
        idx = y == label
        out[idx] = class_mixture(mixture, label, classes).diffused(alpha_bar).score(x_t[idx])
    return out


def mixture_class_grad(mixture: GaussianMixture, x_t: Tensor, alpha_bar: float, y, classes=None) -> Tensor:
    """Exact grad log p(y | x_t) = grad log p(x_t | y) - grad log p(x_t) (Bayes' rule; p(y) has no gradient)."""
    x_t = torch.as_tensor(x_t, dtype=torch.float64)
    return mixture_conditional_score(mixture, x_t, alpha_bar, y, classes) - mixture.diffused(alpha_bar).score(x_t)


def tilted_score(mixture: GaussianMixture, x_t: Tensor, alpha_bar: float, y, gamma: float, classes=None) -> Tensor:
    """grad log [p(x_t) p(y | x_t)^gamma] = grad log p(x_t) + gamma grad log p(y | x_t), in closed form.

    gamma = 0: unconditional; gamma = 1: conditional p(x_t | y); classifier-free guidance with scale w is
    gamma = 1 + w, equivalently grad log [p(x_t | y)^(1 + w) / p(x_t)^w].
    """
    x_t = torch.as_tensor(x_t, dtype=torch.float64)
    return mixture.diffused(alpha_bar).score(x_t) + float(gamma) * mixture_class_grad(
        mixture, x_t, alpha_bar, y, classes
    )


def exact_conditional_eps_model(
    mixture: GaussianMixture, sched: Schedule, classes=None, null_label: int | None = None
) -> Callable[..., Tensor]:
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
        t = batch_steps(t, B, "cpu").long()
        y = null_labels(B, null) if y is None else expand_labels(y, B, "cpu").cpu()
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
                out[idx] = -((1 - a) ** 0.5) * s
        return out.to(device=x_t.device, dtype=x_t.dtype)

    return model


def exact_classifier(mixture: GaussianMixture, sched: Schedule, classes=None) -> Callable[[Tensor, Tensor], Tensor]:
    """The ideal noise-aware classifier: classifier(x_t, t) -> log p(y | x_t) (B, C) as logits.

    Differentiable in x_t (autograd through the mixture's log-densities), so it can drive
    :func:`~ddpm_tutor.guidance.classifier_guided_model`; its gradient equals :func:`mixture_class_grad`.
    """
    C = n_classes(mixture, classes)
    parts = [class_mixture(mixture, k, classes) for k in range(C)]
    log_prior = class_prior(mixture, classes).log()

    def classifier(x_t: Tensor, t: Tensor) -> Tensor:
        B = x_t.shape[0]
        t = batch_steps(t, B, "cpu").long()
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
