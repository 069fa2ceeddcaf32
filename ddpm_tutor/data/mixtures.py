"""Gaussian mixtures whose diffused marginals, scores and denoisers are known in closed form.

If x_0 ~ sum_k w_k N(m_k, S_k) then x_t = sqrt(a) x_0 + sqrt(1 - a) eps (a = bar alpha_t) is again a
mixture, sum_k w_k N(sqrt(a) m_k, a S_k + (1 - a) I) (Ho et al. 2020, eq. 4 applied per component),
so its score and E[x_0 | x_t] are exact: the reference every sampler and loss is checked against.
All computations in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

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
    def isotropic(cls, weights, means, stds) -> "GaussianMixture":
        """Mixture with covariances std_k^2 I."""
        m = torch.as_tensor(means, dtype=torch.float64)
        s = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)
        if s.numel() == 1:
            s = s.expand(m.shape[0])
        eye = torch.eye(m.shape[1], dtype=torch.float64)
        return cls(torch.as_tensor(weights, dtype=torch.float64), m, s[:, None, None] ** 2 * eye)

    @classmethod
    def ring(cls, k: int = 8, radius: float = 1.5, std: float = 0.15) -> "GaussianMixture":
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
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + (torch.linalg.cholesky(self.covs)[k] @ z[..., None])[..., 0]
        return (x, k) if return_labels else x

    def diffused(self, alpha_bar: float) -> "GaussianMixture":
        """The marginal of x_t when bar alpha_t = alpha_bar: components N(sqrt(a) m_k, a S_k + (1-a) I)."""
        a = float(alpha_bar)
        if not 0 < a <= 1:
            raise ValueError(f"alpha_bar must lie in (0, 1], got {alpha_bar!r}")
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, a ** 0.5 * self.means, a * self.covs + (1 - a) * eye)

    def _component_log_probs(self, x: Tensor) -> Tensor:
        x = self._check_x(x)
        dist = torch.distributions.MultivariateNormal(self.means, covariance_matrix=self.covs)
        return dist.log_prob(x[:, None, :]) + self.weights.log()  # (n, K)

    def _check_x(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x).to(torch.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}), got {tuple(x.shape)}")
        return x

    def log_prob(self, x: Tensor) -> Tensor:
        """log density (n,) at points x (n, D)."""
        return torch.logsumexp(self._component_log_probs(x), dim=1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior component probabilities p(k | x), (n, K)."""
        return torch.softmax(self._component_log_probs(x), dim=1)

    def score(self, x: Tensor) -> Tensor:
        """grad_x log p(x) = sum_k r_k(x) S_k^{-1} (m_k - x), shape (n, D)."""
        x = self._check_x(x)
        r = self.responsibilities(x)
        diff = self.means[None] - x[:, None, :]  # (n, K, D)
        per = torch.linalg.solve(self.covs[None], diff[..., None])[..., 0]
        return (r[..., None] * per).sum(dim=1)

    def posterior_mean_x0(self, x_t: Tensor, alpha_bar: float) -> Tensor:
        """E[x_0 | x_t] computed component by component with Gaussian conditioning (not Tweedie).

        For component k: E[x_0 | x_t, k] = m_k + sqrt(a) S_k (a S_k + (1-a) I)^{-1} (x_t - sqrt(a) m_k),
        weighted by p(k | x_t) under the diffused mixture. Returns (n, D).
        """
        a = float(alpha_bar)
        x_t = self._check_x(x_t)
        diffused = self.diffused(a)
        r = diffused.responsibilities(x_t)
        resid = x_t[:, None, :] - a ** 0.5 * self.means[None]  # (n, K, D)
        gain = torch.linalg.solve(diffused.covs[None], resid[..., None])[..., 0]
        cond = self.means[None] + a ** 0.5 * (self.covs[None] @ gain[..., None])[..., 0]
        return (r[..., None] * cond).sum(dim=1)

    def eps_model(self, sched):
        """An exact noise predictor model(x_t, t) = -sqrt(1 - bar alpha_t) grad log q_t(x_t) for this data.

        Plugged into any sampler it is the ideal network: what training converges to with infinite capacity.
        """
        def model(x_t: Tensor, t: Tensor) -> Tensor:
            t = torch.as_tensor(t)
            out = torch.empty_like(x_t, dtype=torch.float64)
            for step in t.unique().tolist():
                idx = t == step
                a = float(sched.alpha_bar[step])
                out[idx] = -(1 - a) ** 0.5 * self.diffused(a).score(x_t[idx])
            return out.to(x_t.dtype)
        return model
