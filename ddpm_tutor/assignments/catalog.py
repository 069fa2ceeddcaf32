"""What each exercise of the book teaches and what it is worth: the one table an instructor edits.

Everything else about an exercise (its chapter, title, text, solution, whether it asks for code and which
checker grades it) is read from the chapter notebooks, so it is written once. ``tests/test_assignments.py``
checks that this table names exactly the exercises the chapters have: a new, removed or renamed exercise
label fails there, not in a class.
"""

from __future__ import annotations

from typing import NamedTuple


class Meta(NamedTuple):
    """The instructor's view of one exercise: the learning goal and the points it is worth."""

    goal: str
    points: int


# label -> Meta. Points: 2 for a function the autograder checks or a derivation in several parts, 1 otherwise.
EXERCISES: dict[str, Meta] = {
    # Part I.1 augmentation
    "ex-aug-qsample": Meta("Sample x_t from x_0 in one jump (the closed-form marginal)", 2),
    "ex-aug-jump": Meta("Derive the strided marginal q(x_t | x_s) by the same induction", 1),
    "ex-aug-forget": Meta("Relate a schedule's betas to how fast the chain forgets the data", 1),
    "ex-aug-ve": Meta("Contrast variance-preserving and variance-exploding chains", 1),
    # Part I.2 objective
    "ex-obj-posterior": Meta("Compute the forward posterior q(x_{t-1} | x_t, x_0)", 2),
    "ex-obj-eps-form": Meta("Rewrite the posterior mean through the noise (why predict eps)", 1),
    "ex-obj-when": Meta("Explain when Rao-Blackwellised targets reduce variance", 1),
    # Part I.3 tying and weighting
    "ex-tw-vlb": Meta("Derive the bound's per-step weight on the noise error", 2),
    "ex-tw-simplify": Meta("Express the bound's weight through the SNR", 2),
    "ex-tw-untied": Meta("Explain why weights matter only when parameters are tied", 1),
    "ex-tw-importance": Meta("Use importance sampling over t to cut the loss variance", 1),
    # Part I.4 the model
    "ex-model-optvar": Meta("Compute the optimal reverse variance for Gaussian data", 2),
    "ex-model-reversible": Meta("Show that the chain is reversible for standard normal data", 1),
    "ex-model-which": Meta("Choose the fixed reverse variance from the data's spread", 1),
    # Part I.5 parameterisation
    "ex-p1c5-1": Meta("Convert eps, x0, v and score outputs to x0_hat", 2),
    "ex-p1c5-2": Meta("Apply Tweedie's formula to one Gaussian", 2),
    "ex-p1c5-3": Meta("Compare the implicit weights of the eps, x0 and v losses", 2),
    # Part I.6 schedule
    "ex-p1c6-1": Meta("Implement the cosine schedule from its definition", 2),
    "ex-p1c6-2": Meta("Size T for the linear schedule from the prior term", 2),
    "ex-p1c6-3": Meta("Explain the cosine schedule's offset s", 2),
    # Part I.7 putting it together
    "ex-p1c7-1": Meta("Implement one DDIM step, deterministic and stochastic", 2),
    "ex-p1c7-2": Meta("Show that DDIM with eta = 1 is the ancestral sampler", 1),
    "ex-p1c7-3": Meta("Diagnose where few-step samples go wrong (experiment)", 1),
    # Part II.1 ELBO
    "ex-p2elbo-prior": Meta("Compute the prior matching term L_T and its size", 2),
    "ex-p2elbo-jensen": Meta("Derive the ELBO by Jensen and identify its slack", 1),
    "ex-p2elbo-large": Meta("Show when the large reverse variance is optimal", 1),
    "ex-p2elbo-consistency": Meta("Find the slip in the consistency form of the bound", 2),
    # Part II.2 three objectives
    "ex-p2obj-tweedie": Meta("Compute E[x_0 | x_t] from the score (Tweedie)", 2),
    "ex-p2obj-snr": Meta("Write the bound's weight as a difference of SNRs", 1),
    "ex-p2obj-weights": Meta("Read the weightings hidden in each 'simple' loss", 1),
    "ex-p2obj-gauss": Meta("Check Tweedie's formula against Gaussian conditioning", 1),
    # Part II.3 score and Langevin
    "ex-p2sl-update": Meta("Implement one step of Langevin dynamics", 2),
    "ex-p2sl-dsm": Meta("Solve denoising score matching for Gaussian data", 1),
    "ex-p2sl-one-step": Meta("Explain why DDPM needs one Langevin step per level", 1),
    "ex-p2sl-ula-d": Meta("Find the stationary law of discretised Langevin in D dimensions", 1),
    # Part II.4 guidance
    "ex-p2guid-cfg": Meta("Implement classifier-free guidance", 2),
    "ex-p2guid-cg": Meta("Implement classifier guidance in the noise parameterisation", 2),
    "ex-p2guid-noise": Meta("Explain why a guiding classifier must see noisy inputs", 1),
    "ex-p2guid-negative": Meta("Interpret negative and fractional guidance scales", 1),
    # Part II.5 progressive coding
    "ex-p2code-rate": Meta("Compute the running rate of progressive transmission", 2),
    "ex-p2code-post": Meta("Compute the distortion of the exact denoiser for Gaussian data", 2),
    "ex-p2code-optimal": Meta("Show that the exact denoiser minimises the rate", 1),
    "ex-p2code-l0": Meta("Explain the discrete decoder L_0 for continuous data", 1),
    # Part III.1 MNIST
    "ex-mnist-temb": Meta("Count the time embedding's parameters", 1),
    "ex-mnist-attn": Meta("Estimate the cost of self-attention by resolution", 1),
    "ex-mnist-zero": Meta("Predict what an untrained U-Net samples and why that helps", 1),
    "ex-mnist-resblock": Meta("Count the parameters of a U-Net residual block", 2),
    # Part III.2 fast sampling
    "ex-fast-eta1": Meta("Recover the DDPM posterior variance from DDIM's sigma", 1),
    "ex-fast-latent": Meta("Use deterministic DDIM as an encoder (interpolation)", 1),
    "ex-fast-cost": Meta("Trade sampling steps against sample quality", 1),
    "ex-fast-step": Meta("Implement the deterministic DDIM step for images", 2),
    # Part III.3 likelihood
    "ex-lik-prior": Meta("Derive and estimate the prior term for images", 1),
    "ex-lik-nats": Meta("Convert a bound between nats per image and bits per dimension", 1),
    "ex-lik-toll": Meta("Compare the two reverse variances' terms of the bound", 1),
    "ex-lik-mc": Meta("Show that the stratified bound estimate is unbiased; read its SE", 2),
    "ex-lik-code": Meta("Compute the prior term in bits per dimension", 2),
    # Part III.4 guided MNIST
    "ex-guided-tilt": Meta("Identify the density that guided sampling targets", 1),
    "ex-guided-dropout": Meta("Explain why classifier-free guidance needs label dropout", 1),
    "ex-guided-cost": Meta("Weigh guided steps against unguided steps at equal compute", 1),
    "ex-guided-code": Meta("Implement the guided noise prediction for MNIST", 2),
    # Part III.5 the paper's model
    "ex-paper-attention": Meta("Compare the cost of self-attention at two resolutions", 1),
    "ex-paper-ema": Meta("Quantify the memory of an exponential moving average of weights", 2),
}
