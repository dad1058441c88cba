"""Maximum-likelihood Gaussian mixtures by EM, several data sets of one size at once, compiled.

:func:`fit_mixtures` is scikit-learn's ``GaussianMixture(covariance_type="full", init_params="k-means++",
n_init=1)`` step for step: the same k-means++ seeds (scikit-learn's ``kmeans_plusplus``, with the same random
state), the same first responsibilities (each seed alone in its component), the same E and M steps (``reg_covar``
on every covariance's diagonal, ``10 eps`` added to every component's mass), the same stopping rule (the mean
log-likelihood changes by less than ``tol`` from one iteration to the next, or ``max_iter`` iterations) and the same
BIC.  Only the arithmetic's order differs: ``tests/test_em.py`` holds the two to float64 agreement.

Why not scikit-learn itself: its EM iterates in Python, a loop over the components in each step.  The coarsening's
error terms (:func:`kgmm_bayes.bayes.coarsening.error_terms`) fit twelve mixtures of 25,000 snapshots on Lorenz-63,
eight of 32 components and four of 64: 6 s of its posterior's 28 s on two threads, where one compiled EM over all
the blocks of a size takes well under a second (``benchmarks/bench_posterior_overheads.py``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._devices import over_devices

__all__ = ["MixtureFits", "fit_mixtures"]


class MixtureFits(NamedTuple):
    """``B`` fitted mixtures of ``K`` components in ``d`` dimensions."""

    weights: np.ndarray  # (B, K)
    means: np.ndarray  # (B, K, d)
    covariances: np.ndarray  # (B, K, d, d)
    bic: np.ndarray  # (B,): -2 N x mean log-likelihood + parameters x log N, as GaussianMixture.bic
    n_iter: np.ndarray  # (B,): EM iterations run
    converged: np.ndarray  # (B,): stopped by ``tol`` rather than by ``max_iter``


def _precision_cholesky(covariances):
    """``(K, d, d)`` upper factors ``U`` of the precisions (``U U^T = C^-1``), as scikit-learn's
    ``_compute_precision_cholesky``: ``L^-T`` for ``C = L L^T``; ``nan`` where ``C`` is not positive definite."""
    chol = jnp.linalg.cholesky(covariances)
    eye = jnp.broadcast_to(jnp.eye(covariances.shape[-1], dtype=covariances.dtype), covariances.shape)
    return jnp.swapaxes(jax.scipy.linalg.solve_triangular(chol, eye, lower=True), -1, -2)


def _log_prob_norm_and_resp(x, weights, means, prec_chol):
    """Per-snapshot log-likelihood ``(N,)`` and responsibilities ``(N, K)``."""
    d = x.shape[1]
    y = jnp.einsum("nd,kde->nke", x, prec_chol) - jnp.einsum("kd,kde->ke", means, prec_chol)[None]
    log_det = jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)
    weighted = -0.5 * (d * math.log(2.0 * math.pi) + jnp.sum(y * y, axis=-1)) + log_det + jnp.log(weights)
    top = jax.lax.stop_gradient(jnp.max(weighted, axis=1, keepdims=True))
    e = jnp.exp(weighted - top)
    total = jnp.sum(e, axis=1, keepdims=True)
    return (top + jnp.log(total))[:, 0], e / total


def _parameters(x, resp, reg_covar):
    """``(masses (K,), means (K, d), covariances (K, d, d))`` from responsibilities, as scikit-learn's
    ``_estimate_gaussian_parameters`` (full covariances)."""
    d = x.shape[1]
    mass = jnp.sum(resp, axis=0)
    nk = mass + 10.0 * jnp.finfo(resp.dtype).eps
    first = resp.T @ x  # (K, d)
    means = first / nk[:, None]
    # sum_n r_nk (x_n - m_k)(x_n - m_k)^T from the responsibilities' moments about the block's mean (one product over
    # the snapshots, not one per component).  Exact algebra; in floating point it loses about eps |m_k - mean|^2 to
    # rounding, where scikit-learn's sum over residuals does not: nothing for z-scored data (|m_k - mean| of a few
    # units, covariances at least reg_covar = 1e-4 in the coarsening), but a component a thousand sds away from the
    # rest could come out not positive definite (fit_mixtures then raises where scikit-learn fits)
    centre = jnp.mean(x, axis=0)
    xc = x - centre
    second = (resp.T @ (xc[:, :, None] * xc[:, None, :]).reshape(-1, d * d)).reshape(-1, d, d)
    mc = means - centre
    fc = first - mass[:, None] * centre
    scatter = second - mc[:, :, None] * fc[:, None, :] - fc[:, :, None] * mc[:, None, :] \
        + mass[:, None, None] * mc[:, :, None] * mc[:, None, :]
    return nk, means, scatter / nk[:, None, None] + reg_covar * jnp.eye(d, dtype=x.dtype)


def _fit_one(x, seeds, reg_covar, max_iter, tol):
    """EM from the seeds ``(K,)`` (row indices of ``x``): weights, means, covariances, mean log-likelihood at
    them, iterations, converged."""
    n = x.shape[0]
    resp = jnp.zeros((n, seeds.shape[0]), x.dtype).at[seeds, jnp.arange(seeds.shape[0])].set(1.0)
    nk, means, covariances = _parameters(x, resp, reg_covar)
    state = (nk / n, means, covariances, jnp.asarray(-jnp.inf, x.dtype), jnp.asarray(0), jnp.asarray(False))

    def body(state):
        weights, means, covariances, lower, count, _ = state
        norm, resp = _log_prob_norm_and_resp(x, weights, means, _precision_cholesky(covariances))
        nk, means, covariances = _parameters(x, resp, reg_covar)
        bound = jnp.mean(norm)
        return nk / jnp.sum(nk), means, covariances, bound, count + 1, jnp.abs(bound - lower) < tol

    def cond(state):
        return ~state[5] & (state[4] < max_iter)

    weights, means, covariances, _, count, converged = jax.lax.while_loop(cond, body, state)
    norm, _ = _log_prob_norm_and_resp(x, weights, means, _precision_cholesky(covariances))
    return weights, means, covariances, jnp.mean(norm), count, converged


def _fit_batch(tree, args):
    (x, seeds), (reg_covar, max_iter, tol) = tree, args
    # one block after another: vmapped, the blocks' E steps outgrew the cache (8 blocks of 25,000 snapshots, K = 32, on
    # two devices: 1.22 s against 0.3 s)
    return jax.lax.map(lambda pair: _fit_one(*pair, reg_covar, max_iter, tol), (x, seeds))


_fit_many = over_devices(_fit_batch)  # the blocks split over the devices


def fit_mixtures(blocks, k: int, seed: int, reg_covar: float = 1e-6, max_iter: int = 100,
                 tol: float = 1e-3) -> MixtureFits:
    """A ``k``-component maximum-likelihood mixture (full covariances) on each of ``blocks`` ``(B, N, d)``, each
    seeded by scikit-learn's ``kmeans_plusplus`` with ``numpy.random.RandomState(seed)`` (``GaussianMixture``'s
    ``random_state = seed``), all ``B`` fits in one compiled program (float64).  The defaults are
    ``GaussianMixture``'s."""
    from sklearn.cluster import kmeans_plusplus

    x = np.asarray(blocks, np.float64)
    if x.ndim != 3:
        raise ValueError(f"blocks must be (B, N, d), got shape {x.shape}")
    b, n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the block size {n}, got {k}")
    seeds = np.stack([kmeans_plusplus(block, k, random_state=np.random.RandomState(seed))[1] for block in x])
    weights, means, covariances, mean_log_lik, count, converged = (
        np.asarray(a) for a in _fit_many((jnp.asarray(x), jnp.asarray(seeds)),
                                         (float(reg_covar), int(max_iter), float(tol))))
    if not np.all(np.isfinite(mean_log_lik)):  # (scikit-learn raises on the covariance it cannot factor)
        raise ValueError(f"a {k}-component mixture's covariance became singular (a component collapsed onto too few "
                         "snapshots): fit fewer components or raise reg_covar")
    parameters = k * d * (d + 1) / 2 + k * d + k - 1
    bic = -2.0 * mean_log_lik * n + parameters * math.log(n)
    return MixtureFits(weights, means, covariances, bic, count, converged)
