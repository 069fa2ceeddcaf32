"""Gaussian mixtures whose diffused marginals, scores and denoisers are known in closed form.

If x_0 ~ sum_k w_k N(m_k, S_k) then x_t = sqrt(a) x_0 + sqrt(1 - a) eps (a = bar alpha_t) is again a
mixture, sum_k w_k N(sqrt(a) m_k, a S_k + (1 - a) I) (Ho et al. 2020, eq. 4 applied per component),
so its score and E[x_0 | x_t] are exact: the reference every sampler and loss is checked against.
All computations in float64.
"""
from __future__ import annotations

import math
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
        return self._trusted(self.weights, a ** 0.5 * self.means, a * self.covs + (1 - a) * eye)

    @classmethod
    def _trusted(cls, weights: Tensor, means: Tensor, covs: Tensor) -> "GaussianMixture":
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
            if t.ndim == 0 or bool((t == t.flatten()[0]).all()):  # samplers ask for one step at a time
                a = float(sched.alpha_bar[int(t.flatten()[0])])
                return (-(1 - a) ** 0.5 * self.diffused(a).score(x_t)).to(x_t.dtype)
            out = torch.empty_like(x_t, dtype=torch.float64)
            for step in t.unique().tolist():
                idx = t == step
                a = float(sched.alpha_bar[step])
                out[idx] = -(1 - a) ** 0.5 * self.diffused(a).score(x_t[idx])
            return out.to(x_t.dtype)
        return model
