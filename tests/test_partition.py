"""Bisecting K-means partition: exact aggregated statistics, coarse clusters by the K-means objective,
robustness to repeated values."""
import jax
import numpy as np
import pytest
from sklearn.cluster import KMeans

import kgmm_bayes  # noqa: F401
from kgmm_bayes.partition import fit_partition


def test_statistics_are_exact_aggregates():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 0.5, size=(3000, 2)), rng.normal(2, 1.0, size=(2000, 2))])
    part = fit_partition(jax.random.key(0), x, num_cells=200, num_components=4)
    assert part.points.shape == (200, 2) and part.counts.sum() == len(x)
    np.testing.assert_allclose(part.fractions.sum(), 1.0, rtol=1e-14)
    # weighted cell centres reproduce the data mean exactly
    np.testing.assert_allclose(part.counts @ part.points / part.counts.sum(), x.mean(axis=0), rtol=1e-12, atol=1e-12)
    # law of total covariance: mixing cluster means and covariances gives the data covariance
    min_spread = 1e-3
    total = sum(f * (c + np.outer(m, m)) for f, c, m in zip(part.fractions, part.covariances, part.centroids))
    total -= np.outer(x.mean(axis=0), x.mean(axis=0)) + min_spread**2 * np.eye(2)
    np.testing.assert_allclose(total, np.cov(x.T, bias=True), rtol=1e-10, atol=1e-12)
    # each cell belongs to one cluster, and cluster fractions are sums of cell counts
    np.testing.assert_allclose(np.bincount(part.cell_cluster, part.counts) / len(x), part.fractions, rtol=1e-14)


def test_the_inertia_split_follows_the_k_means_objective_into_a_heavy_tail():
    # split = "inertia" bisects the coarse cluster of largest (weighted) inertia: greedy K-means, whose
    # within-cluster variance is close to Lloyd's with restarts, and a centroid reaches the tail.  "size" (the
    # cluster of most cells) keeps clusters of similar mass: several times Lloyd's variance, no centroid there.
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, size=(20_000, 1)) ** 1.5
    lloyd = KMeans(8, n_init=10, random_state=0).fit(x).inertia_ / len(x)  # K-means with restarts, all snapshots
    tail = np.percentile(x, 99)
    for split in ("inertia", "size"):
        part = fit_partition(jax.random.key(0), x, num_cells=500, num_components=8, split=split)
        within = float(np.sum(part.fractions * (part.covariances[:, 0, 0] - 1e-3**2)))  # less the min_spread floor
        assert within >= lloyd * (1 - 1e-9), split  # Lloyd's (all snapshots, 10 restarts) is the better optimum
        if split == "inertia":
            assert within <= 1.25 * lloyd and part.centroids.max() > tail
        else:
            assert within >= 4 * lloyd and part.centroids.max() < tail


def test_an_unknown_split_is_named():
    x = np.random.default_rng(4).normal(size=(400, 1))
    for k in (1, 3):  # also where no coarse split runs
        with pytest.raises(ValueError, match="split must be one of 'size', 'inertia', got 'largest'"):
            fit_partition(jax.random.key(0), x, num_cells=20, num_components=k, split="largest")


def test_repeated_values_do_not_break_fine_partition():
    # snapshots stored with 2 decimals: many identical points, which defeat the default
    # "biggest_inertia" strategy at fine resolution
    rng = np.random.default_rng(1)
    x = np.round(rng.normal(size=(20_000, 1)), 2)
    part = fit_partition(jax.random.key(1), x, num_cells=2000, num_components=10)
    assert part.counts.sum() == len(x) and np.all(part.counts > 0)


def test_rejects_impossible_sizes():
    x = np.random.default_rng(2).normal(size=(100, 1))
    with pytest.raises(ValueError, match="snapshots per cell"):
        fit_partition(jax.random.key(0), x, num_cells=80, num_components=2)
    with pytest.raises(ValueError, match="num_components"):
        fit_partition(jax.random.key(0), x, num_cells=10, num_components=0)
