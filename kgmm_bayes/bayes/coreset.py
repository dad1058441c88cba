"""A likelihood coreset coarser than the score-target cells, used where it cannot be told apart.

The fine cells of the partition (``[partition] cells``, 2,000 by default) are the score-target
points, and with their moments a coreset of the likelihood (:func:`~kgmm_bayes.bayes.mixture.
expected_quadratic_features`).  Each NUTS gradient costs a pass over every row of that coreset, so
on data where 2,000 cells are far finer than the mixture's components (the default study: one
dimension, 10 components) most of the sampler's time buys nothing.

Merging neighbouring cells (weighted K-means on the cell centres) keeps the data's exact count,
mean and second moment per merged cell, and the merged likelihood is again a Jensen lower bound of
the fine one.  The posteriors differ by the factor ``exp(D(theta))``, ``D = loglik_fine -
loglik_merged`` (prior and Jacobian cancel).  For any posterior expectation,
``|E_fine f - E_merged f| = |Cov_merged(f, e^D)| / E_merged e^D <= sd(f) sd(e^D) / E(e^D)``, which
is ``sd(f) sd(D)`` to first order: with ``sd(D) <= GAP_SD`` over the posterior, no posterior mean
moves by more than a tenth of its posterior standard deviation (a 90% band is 3.3 of them wide).

:func:`choose_cells` measures ``sd(D)`` over draws of the Laplace approximation at the MAP point
for a ladder of coarser coresets (each :data:`LADDER` times fewer cells) and keeps the coarsest one
before the first that fails.  The sampler checks ``sd(D)`` again on its own draws
(:func:`loglik_gaps`) and samples again with the fine cells if it exceeds twice the bound.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .mixture import expected_quadratic_features, mixture_loglik_dense

__all__ = ["GAP_SD", "LADDER", "MIN_CELLS", "PILOT_DRAWS", "Coreset", "merge_cells", "ladder", "choose_cells",
           "loglik_gaps"]

GAP_SD = 0.1  # largest sd of the log-likelihood gap over the posterior: means move by <= 0.1 posterior sd
LADDER = math.sqrt(2.0)  # each candidate has this many times fewer cells than the one before
MIN_CELLS = 10  # per component: no coarser coreset is tried
PILOT_DRAWS = 256  # Laplace draws the gap's sd is measured on


class Coreset(NamedTuple):
    """Weighted cells of the likelihood: means ``(L, d)``, counts ``(L,)``, within-cell covariances."""

    points: np.ndarray
    counts: np.ndarray
    covariances: np.ndarray

    def features(self):
        """:func:`~kgmm_bayes.bayes.mixture.expected_quadratic_features` of the cells."""
        return expected_quadratic_features(self.points, self.covariances)


def merge_cells(points, counts, covariances, cells: int, seed: int) -> Coreset:
    """``cells`` merged cells (at most: empty ones are dropped) from fine cells ``(M, d)``: weighted
    K-means on the cell centres (scikit-learn, weights = counts), then each merged cell's exact
    count, mean and covariance from its members' moments (the within-cell and between-cell parts)."""
    from sklearn.cluster import KMeans

    points, counts, covariances = (np.asarray(a, np.float64) for a in (points, counts, covariances))
    if cells >= len(points):
        return Coreset(points, counts, covariances)
    labels = KMeans(n_clusters=cells, n_init=1, random_state=seed).fit(points, sample_weight=counts).labels_
    d = points.shape[1]
    total = np.bincount(labels, weights=counts, minlength=cells)
    sums = np.zeros((cells, d))
    np.add.at(sums, labels, counts[:, None] * points)
    second = np.zeros((cells, d, d))
    np.add.at(second, labels, counts[:, None, None] * (covariances + points[:, :, None] * points[:, None, :]))
    keep = total > 0
    total, sums, second = total[keep], sums[keep], second[keep]
    means = sums / total[:, None]
    cov = second / total[:, None, None] - means[:, :, None] * means[:, None, :]
    return Coreset(means, total, 0.5 * (cov + np.swapaxes(cov, 1, 2)))


def ladder(cells: int, components: int) -> list[int]:
    """Candidate sizes below ``cells``, each :data:`LADDER` times smaller, down to
    :data:`MIN_CELLS` per component (largest first)."""
    floor = MIN_CELLS * components
    sizes, size = [], cells / LADDER
    while int(round(size)) >= floor:
        sizes.append(int(round(size)))
        size /= LADDER
    return sizes


def _padded(features, counts, rows: int):
    """Rows of zero count appended (in numpy: a JAX pad would compile for every new number of rows)."""
    pad = rows - features.shape[0]
    return np.pad(np.asarray(features), ((0, pad), (0, 0))), np.pad(np.asarray(counts), (0, pad))


@jax.jit
def _gaps(fine_features, fine_counts, features, counts, weights, means, cov_chol):
    def one(draw):
        w, m, c = draw
        return (mixture_loglik_dense(fine_features, fine_counts, w, m, c, None)
                - mixture_loglik_dense(features, counts, w, m, c, None))
    return jax.lax.map(one, (weights, means, cov_chol), batch_size=64)


def loglik_gaps(fine: Coreset, merged: Coreset, weights, means, cov_chol, dtype=np.float64):
    """``D = loglik_fine - loglik_merged`` ``(S,)`` at each of ``S`` mixtures (constrained draws), the merged
    likelihood computed in ``dtype`` (float32: the sampler's ``likelihood_precision``; the fine one in float64).
    The merged rows are padded with zero counts to the fine rows' number, so that every merged
    coreset of the same fine one uses one compiled function (per ``dtype``)."""
    fine_f = fine.features()
    merged_f, merged_c = _padded(np.asarray(merged.features(), dtype), merged.counts, fine_f.shape[0])
    return np.asarray(_gaps(fine_f, jnp.asarray(fine.counts), merged_f, merged_c, jnp.asarray(weights),
                            jnp.asarray(means), jnp.asarray(cov_chol)))


def choose_cells(fine: Coreset, components: int, draws, seed: int, gap_sd: float = GAP_SD):
    """The coarsest merged coreset whose log-likelihood gap to ``fine`` has ``sd <= gap_sd`` over
    ``draws`` (constrained ``(weights, means, cov_chol)``, e.g. Laplace draws at the MAP point), trying
    :func:`ladder`'s sizes from the largest and stopping at the first that fails.  Returns
    ``(coreset, table)``: ``table`` lists ``(cells, sd)`` of every size tried."""
    best, table = fine, [(len(fine.points), 0.0)]
    for size in ladder(len(fine.points), components):
        merged = merge_cells(*fine, size, seed)
        sd = float(np.std(loglik_gaps(fine, merged, *draws)))
        table.append((len(merged.points), sd))
        if not np.isfinite(sd) or sd > gap_sd:
            break
        best = merged
    return best, table
