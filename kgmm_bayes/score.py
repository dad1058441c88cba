r"""Closed-form scores of mixture draws and their posterior summaries (DESIGN.md, "Score").

For one posterior draw :math:`\theta = (w, \mu, \Sigma)` with responsibilities
:math:`r_k(x) \propto w_k \mathcal N(x; \mu_k, \Sigma_k)` and precisions
:math:`P_k = \Sigma_k^{-1} = W_k^\top W_k` (``W_k = L_k^{-1}``):

.. math::

    s_\theta(x) = -\sum_k r_k(x) P_k (x - \mu_k), \qquad
    \nabla\cdot s_\theta(x) = \sum_k r_k(x)\big(|P_k (x-\mu_k)|^2 - \mathrm{tr} P_k\big)
                              - |s_\theta(x)|^2 .

Both are invariant to relabelling components, so draws are never averaged in
parameter space, only in score space.  Over draws we report the posterior mean
of :math:`s_\theta`, its standard deviation, an equal-tailed credible band and
the score of the posterior-predictive density
:math:`E[p_\theta s_\theta] / E[p_\theta]`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .mixture import LOG_2PI, precision_factors

__all__ = ["mixture_score", "mixture_log_density", "mixture_divergence", "ScoreSummary",
           "score_draws", "summarize_scores"]


def _whitened(weights, means, cov_chol, x):
    """Per-component whitened residuals and log joint densities for points ``(n, d)``."""
    w_inv = precision_factors(cov_chol)  # (K, d, d)
    resid = x[:, None, :] - means[None]  # (n, K, d)
    white = jnp.einsum("kij,nkj->nki", w_inv, resid)  # W (x - mu)
    log_det = jnp.sum(jnp.log(jnp.diagonal(cov_chol, axis1=-2, axis2=-1)), axis=-1)
    log_joint = (jnp.log(weights) - 0.5 * jnp.sum(white**2, axis=-1) - log_det
                 - 0.5 * x.shape[-1] * LOG_2PI)  # (n, K)
    prec_resid = jnp.einsum("kji,nkj->nki", w_inv, white)  # W^T W (x - mu)
    return w_inv, log_joint, prec_resid


def mixture_log_density(weights, means, cov_chol, x):
    """``log p_theta(x)`` for points ``(n, d)``."""
    _, log_joint, _ = _whitened(weights, means, cov_chol, x)
    return jax.nn.logsumexp(log_joint, axis=-1)


def mixture_score(weights, means, cov_chol, x):
    """Score ``(n, d)`` and log density ``(n,)`` of one mixture draw at points ``(n, d)``."""
    _, log_joint, prec_resid = _whitened(weights, means, cov_chol, x)
    log_p = jax.nn.logsumexp(log_joint, axis=-1)
    resp = jnp.exp(log_joint - log_p[:, None])
    return -jnp.einsum("nk,nki->ni", resp, prec_resid), log_p


def mixture_divergence(weights, means, cov_chol, x):
    """Divergence of the score, ``(n,)``."""
    w_inv, log_joint, prec_resid = _whitened(weights, means, cov_chol, x)
    log_p = jax.nn.logsumexp(log_joint, axis=-1)
    resp = jnp.exp(log_joint - log_p[:, None])
    score = -jnp.einsum("nk,nki->ni", resp, prec_resid)
    trace_prec = jnp.sum(w_inv**2, axis=(-2, -1))  # tr W^T W
    per_comp = jnp.sum(prec_resid**2, axis=-1) - trace_prec[None]
    return jnp.sum(resp * per_comp, axis=-1) - jnp.sum(score**2, axis=-1)


@jax.jit
def _scores_of_draws(weights, means, cov_chol, x):
    return jax.vmap(mixture_score, in_axes=(0, 0, 0, None))(weights, means, cov_chol, x)


def score_draws(weights, means, cov_chol, x, chunk: int = 2048):
    """Scores ``(S, n, d)`` and log densities ``(S, n)`` of S draws, in chunks of points."""
    x = np.asarray(x)
    scores, logps = [], []
    for start in range(0, len(x), chunk):
        block = jnp.asarray(x[start:start + chunk])
        s, lp = _scores_of_draws(weights, means, cov_chol, block)
        scores.append(np.asarray(s))
        logps.append(np.asarray(lp))
    return np.concatenate(scores, axis=1), np.concatenate(logps, axis=1)


class ScoreSummary(NamedTuple):
    """Posterior summaries of the score at points ``(n, d)``."""

    mean: np.ndarray
    std: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    predictive: np.ndarray  # score of the posterior-predictive density
    band: float  # credible mass of [lower, upper]


def summarize_scores(scores, log_densities, band: float = 0.9) -> ScoreSummary:
    """Summaries over draws of scores ``(S, n, d)`` with log densities ``(S, n)``."""
    tail = 0.5 * (1.0 - band)
    lower, upper = np.quantile(scores, [tail, 1.0 - tail], axis=0)
    lw = log_densities - log_densities.max(axis=0, keepdims=True)
    pw = np.exp(lw)
    pw /= pw.sum(axis=0, keepdims=True)
    predictive = np.einsum("sn,snd->nd", pw, scores)
    return ScoreSummary(mean=scores.mean(axis=0), std=scores.std(axis=0), lower=lower,
                        upper=upper, predictive=predictive, band=band)
