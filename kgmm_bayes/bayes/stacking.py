r"""Chains that settle in different modes: grouping them into modes and stacking them.

A mixture posterior has many local modes; NUTS chains started apart can each stay in one.
When they do, the chains are not draws of one distribution and pooling them with equal
weights is arbitrary.  Following Yao, Vehtari & Gelman ("Stacking for non-mixing Bayesian
computations", JMLR 23, 2022), each chain is treated as its own approximate posterior and
the chains are combined with the weights that maximise the leave-one-out predictive density
of the data:

.. math::

    \max_{w \in \Delta_C} \sum_m c_m \log \sum_k w_k \, p_k(x_m \mid x_{-m}),

where :math:`p_k(x_m \mid x_{-m})` is chain :math:`k`'s PSIS-LOO predictive density of one
snapshot of cell :math:`m` (importance ratios :math:`1/p(x_m \mid \theta)` over the chain's
draws, Pareto-smoothed) and the cell count :math:`c_m` weights the cell as that many
snapshots (arviz's ``stacking`` takes no observation weights).  The objective is concave in
:math:`w`; it is maximised by the EM fixed point
:math:`w_k \leftarrow \sum_m c_m\, r_{km} / \sum_m c_m`,
:math:`r_{km} = w_k p_{km} / \sum_j w_j p_{jm}`.

Modes: two chains belong to one mode when the label-invariant r_hat of the two of them is
below :data:`SAME_MODE_R_HAT` (single linkage).  r_hat within each mode says whether the
chains of a mode mix; r_hat over all chains says whether there is more than one mode.

Whether a stacked result can be trusted is not a question r_hat answers: chains at distinct
optima are not meant to agree, and which modes a run finds is itself random.  The question is
the one the result must pass, reproducibility: would another run (other NUTS keys, so other
MAP searches, other chains) give the same stacked posterior mean?  :func:`stacked_mean_error`
answers it from one run, treating the chains as independent units (which they are when each
starts at its own MAP search's optimum, ``chain_starts = "distinct"``; chains that start at one
optimum, reached by several searches, are one unit with their summed weight): the standard error of
the weighted mean of the units' means, ``sqrt(sum_c w_c^2 (m_c - m)^2 / (1 - 2 w_c + sum_j w_j^2))``
(``C / (C - 1)`` for equal weights), holds both each chain's own Monte Carlo error (a drifting
chain's mean is off) and the chance of which modes were found.  The weights are treated as
fixed although they are fitted to the same chains, and with few chains the covariance over
the probes is estimated from few units: both make the prediction low rather than high.  On Lorenz-63
(16 chains) it is at most 0.075 band widths at the probes and predicts that two runs differ by up
to 0.11-0.12 band widths; keys 0, 1, 2 differed by at most 0.097.  On Kuramoto-Sivashinsky D = 4
(16 chains, 7.3 effective) it predicts 0.34; keys 0, 1, 2 differed by at most 0.24.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import arviz as az
import numpy as np
import scipy.stats

from .._picks import evenly_spaced
from ..files import json_floats

__all__ = ["SAME_MODE_R_HAT", "ChainModes", "chain_loo_densities", "stacking_weights", "chain_modes",
           "draw_allocation", "draw_picks", "stacked_mean_error", "r_hat_of", "rank_r_hat", "linked_groups",
           "REPRODUCIBLE_BAND_FRACTION"]

SAME_MODE_R_HAT = 1.05  # pairwise label-invariant r_hat below this: the two chains sample one mode
# two runs' stacked posterior means may differ by at most this fraction of the band width (issue 13's
# definition of a converged multimodal study) ...
REPRODUCIBLE_BAND_FRACTION = 0.25
EM_STEPS = 2000
EM_TOLERANCE = 1e-12


class ChainModes(NamedTuple):
    """Chains grouped into modes, each mode's r_hat, and the chains' stacking weights."""

    modes: tuple  # tuple of tuples of chain indices, by decreasing total weight
    mode_r_hat: tuple  # label-invariant r_hat within each mode (split r_hat for a one-chain mode)
    weights: np.ndarray  # (chains,) stacking weights, summing to 1
    stacked: bool  # True when the weights come from stacking (more than one mode), False: equal
    max_pareto_k: float  # worst PSIS shape over cells and chains (NaN if not stacked)

    def to_json(self) -> dict:
        """For ``metrics.json``: NaN (a one-chain mode too short for r_hat, no stacking) as null."""
        return {"modes": [list(m) for m in self.modes],
                "mode_r_hat": [json_floats(v) for v in self.mode_r_hat],
                "chain_weights": [float(v) for v in self.weights],
                "stacked": bool(self.stacked),
                "max_pareto_k": json_floats(self.max_pareto_k)}


GPD_PRIOR_B = 3.0  # Zhang & Stephens' (2009) prior on the grid of b = -k / sigma, as arviz uses it
GPD_PRIOR_K = 10.0  # and its weakly informative prior pulling k towards 0.5 (Vehtari et al.)
PSIS_ROWS = 256  # rows per block of psis_log_weights (the GPD fit's grid x tail x rows arrays)


def _gpd_fit(tails):
    """Zhang & Stephens' (2009) estimate of the generalised Pareto distribution of each row of ``tails``
    ``(rows, n)`` (exceedances over the cutoff, ascending): ``(k, sigma)``, ``(rows,)`` each, with k shrunk
    towards 0.5 by :data:`GPD_PRIOR_K` pseudo-observations, as PSIS (Vehtari et al.) estimates it."""
    rows, n = tails.shape
    grid = 30 + int(n ** 0.5)
    b = 1.0 - np.sqrt(grid / (np.arange(1, grid + 1, dtype=np.float64) - 0.5))
    b = b[None, :] / (GPD_PRIOR_B * tails[:, int(n / 4 + 0.5) - 1])[:, None] + (1.0 / tails[:, -1])[:, None]
    k = np.log1p(-b[:, :, None] * tails[:, None, :]).mean(axis=2)  # (rows, grid)
    profile = n * (np.log(-(b / k)) - k - 1.0)  # the profile log-likelihood at each b
    weights = 1.0 / np.exp(profile[:, None, :] - profile[:, :, None]).sum(axis=2)
    weights = np.where(weights >= 10 * np.finfo(np.float64).eps, weights, 0.0)  # negligible ones dropped
    weights /= weights.sum(axis=1, keepdims=True)
    b_post = np.sum(b * weights, axis=1)
    k_post = np.log1p(-b_post[:, None] * tails).mean(axis=1)
    sigma = -k_post / b_post
    return (n * k_post + 0.5 * GPD_PRIOR_K) / (n + GPD_PRIOR_K), sigma


def _gpd_quantiles(probs, k, sigma):
    """Quantiles ``probs`` ``(n,)`` of generalised Pareto distributions ``(k, sigma)`` ``(rows,)``: ``(rows, n)``
    (NaN where sigma <= 0)."""
    k, sigma = k[:, None], sigma[:, None]
    small = np.abs(k) < np.finfo(np.float64).eps
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(small, -np.log1p(-probs)[None, :], np.expm1(-k * np.log1p(-probs)[None, :]) / k) * sigma
    return np.where(sigma > 0, q, np.nan)


def psis_log_weights(log_ratios):
    """Pareto-smoothed importance sampling (Vehtari, Simpson, Gelman, Yao & Gabry, JMLR 25, 2024) of every row
    of ``log_ratios`` ``(rows, draws)`` at once: ``(log_weights, k)``, the normalised smoothed log weights and
    each row's Pareto k, as ``arviz.psislw`` gives them row by row (equal to 1e-10, except that draws whose
    ratios tie within the tail may get each other's weights; arviz loops over the rows in Python: 0.22 s for
    2,000 rows of 250 draws against 0.07 s).  The ``ceil(min(0.2 S, 3 sqrt(S)))`` largest ratios of S draws
    are the tail; rows where the values above the cutoff are not exactly those (ties at the cutoff, ratios
    below the smallest normal float) are handed to arviz."""
    raw = np.asarray(log_ratios, np.float64)
    if raw.ndim != 2:
        raise ValueError(f"log_ratios must be (rows, draws), got shape {raw.shape}")
    rows, n = raw.shape
    x = raw - raw.max(axis=1, keepdims=True)
    tail = int(np.ceil(min(0.2 * n, 3 * np.sqrt(n))))
    k = np.full(rows, np.inf)
    regular = np.zeros(rows, bool)
    if tail < n:
        order = np.argsort(x, axis=1)
        ordered = np.take_along_axis(x, order, axis=1)
        cutoff = np.maximum(ordered[:, -tail - 1], np.log(np.finfo(np.float64).tiny))
        regular = np.sum(x > cutoff[:, None], axis=1) == tail
    if tail > 4:  # else k stays inf and the ratios unsmoothed, as arviz leaves them
        regular_rows = np.flatnonzero(regular)
        for block in np.array_split(regular_rows, max(1, -(-len(regular_rows) // PSIS_ROWS))):
            if not len(block):
                continue
            shift = np.exp(cutoff[block])
            k_b, sigma = _gpd_fit(np.exp(ordered[block, -tail:]) - shift[:, None])
            k[block] = k_b
            fit = np.isfinite(k_b)  # smoothed where k is finite
            at = block[fit]
            smooth = np.log(_gpd_quantiles(np.arange(0.5, tail) / tail, k_b[fit], sigma[fit]) + shift[fit, None])
            rows_at = x[at]
            np.put_along_axis(rows_at, order[at, -tail:], smooth, axis=1)
            x[at] = np.minimum(rows_at, 0.0)
    for r in np.flatnonzero(~regular):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            weights, k_r = az.psislw(raw[r])
        x[r], k[r] = np.asarray(weights), float(k_r)
    top = x.max(axis=1, keepdims=True)
    return x - (np.log(np.exp(x - top).sum(axis=1, keepdims=True)) + top), k


def chain_loo_densities(cell_log_lik, counts, power: float = 1.0):
    """Each chain's PSIS-LOO log predictive density of one snapshot of each cell.

    ``cell_log_lik`` ``(chains, draws, M)``: the cells' log-likelihood terms ``c_m log p(x_m | theta)``
    (``posterior.nc``'s ``log_likelihood``); ``counts`` ``(M,)``.  ``power``: the likelihood's power in
    the posterior the draws come from (the coarsening's ``zeta``): one snapshot enters it as
    ``p(x_m | theta)^zeta``, so leaving it out reweights the draws by ``p(x_m | theta)^-zeta`` (the full
    ratio ``1 / p`` would remove ``1 / zeta`` snapshots' worth of evidence, and its heavier tail shows
    as Pareto k near 1), while the predictive density stays ``p(x_m | theta)``.
    Returns ``(lpd (chains, M), pareto_k (chains, M))``.
    """
    cell_log_lik = np.asarray(cell_log_lik, np.float64)
    counts = np.asarray(counts, np.float64)
    if cell_log_lik.ndim != 3 or cell_log_lik.shape[2] != counts.shape[0]:
        raise ValueError(f"cell_log_lik must be (chains, draws, {counts.shape[0]}), got {cell_log_lik.shape}")
    point = cell_log_lik / counts  # log p(x_m | theta): one snapshot of the cell
    lpd, khat = [], []
    for chain in point:  # (draws, M): a chain's cells at once
        log_w, k = psis_log_weights(-power * chain.T)  # (M, draws), normalised
        terms = log_w + chain.T
        top = terms.max(axis=1, keepdims=True)
        lpd.append(top[:, 0] + np.log(np.exp(terms - top).sum(axis=1)))
        khat.append(k)
    return np.asarray(lpd), np.asarray(khat)


def stacking_weights(lpd, counts) -> np.ndarray:
    """Simplex weights maximising ``sum_m c_m log sum_k w_k exp(lpd[k, m])`` (EM, from equal weights)."""
    lpd = np.asarray(lpd, np.float64)
    counts = np.asarray(counts, np.float64)
    dens = np.exp(lpd - lpd.max(axis=0, keepdims=True))  # (chains, M); a per-cell scale leaves w unchanged
    w = np.full(lpd.shape[0], 1.0 / lpd.shape[0])
    total = counts.sum()
    for _ in range(EM_STEPS):
        mix = w @ dens
        new = w * (dens @ (counts / mix)) / total
        new /= new.sum()
        if np.max(np.abs(new - w)) < EM_TOLERANCE:
            w = new
            break
        w = new
    return w


def _probe_array(probes) -> np.ndarray:
    """``(chains, draws, V)``: every variable of ``probes`` (a Dataset with ``chain`` and ``draw`` dimensions), its
    values flattened after those two."""
    chains, draws = int(probes.sizes["chain"]), int(probes.sizes["draw"])
    return np.concatenate([np.asarray(probes[v].transpose("chain", "draw", ...).values, np.float64)
                           .reshape(chains, draws, -1) for v in probes.data_vars], axis=2)


def _normal_scores(x) -> np.ndarray:
    """The values of ``x (..., chains, draws, V)`` rank-normalised per column, pooled over chains and draws (each
    of the leading axes apart): average ranks, then ``Phi^-1((r - 3/8) / (n + 1/4))`` (Blom)."""
    flat = x.reshape(x.shape[:-3] + (-1, x.shape[-1]))
    ranks = scipy.stats.rankdata(flat, method="average", axis=-2)
    return scipy.stats.norm.ppf((ranks - 0.375) / (flat.shape[-2] + 0.25)).reshape(x.shape)


def _split_r_hat(x) -> np.ndarray:
    """The classic r_hat of ``x (..., chains, draws, V)`` per column ``(..., V)``."""
    n = x.shape[-2]
    between = n * np.var(x.mean(axis=-2), axis=-2, ddof=1)
    within = np.mean(np.var(x, axis=-2, ddof=1), axis=-2)
    return np.sqrt((between / within + n - 1) / n)


def rank_r_hat(x) -> np.ndarray:
    """Rank-normalised split r_hat (Vehtari, Gelman, Simpson, Carpenter & Buerkner, Bayesian Analysis 16, 2021;
    arviz's ``rhat``, ``method="rank"``) of ``x (..., chains, draws, V)``, per column ``(..., V)`` (each of the leading
    axes apart): the larger of the bulk r_hat (split chains, rank-normalised) and the tail r_hat (the same, of the
    distances from the median); NaN for a column with a NaN or of one value.  All columns at once, in plain numpy:
    arviz takes tens of milliseconds per call, and grouping 48 chains into modes asks for over a thousand pairs
    (Kuramoto-Sivashinsky D = 4: 46 s)."""
    x = np.asarray(x, np.float64)
    half = x.shape[-2] // 2
    split = np.concatenate([x[..., :half, :], x[..., x.shape[-2] - half:, :]], axis=-3)
    pooled = split.reshape(split.shape[:-3] + (-1, split.shape[-1]))
    folded = np.abs(split - np.median(pooled, axis=-2)[..., None, None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.maximum(_split_r_hat(_normal_scores(split)), _split_r_hat(_normal_scores(folded)))
    return np.where(np.isnan(x).any(axis=(-3, -2)), np.nan, out)


def _witness_r_hats(values, pairs) -> np.ndarray:
    """For each pair of chains in ``pairs (B, 2)``: :func:`rank_r_hat` of the one column of ``values (chains, draws,
    V)`` in which the two chains' means lie furthest apart (in their pooled within-chain sds), all pairs at once
    ``(B,)``.  A lower bound of the pair's :func:`_max_r_hat` (a largest over columns; NaN where that column has
    none), which is all :func:`chain_modes` needs to tell most pairs apart: at or above
    :data:`SAME_MODE_R_HAT`, the pair is two modes without the other columns."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        return np.zeros(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean, var = np.mean(values, axis=1), np.var(values, axis=1)
        apart = (mean[pairs[:, 0]] - mean[pairs[:, 1]]) ** 2 / (var[pairs[:, 0]] + var[pairs[:, 1]])
    column = np.argmax(np.where(np.isnan(apart), -np.inf, apart), axis=1)
    picked = values[pairs[:, :, None], np.arange(values.shape[1])[None, None, :], column[:, None, None]]  # (B, 2, draws)
    return rank_r_hat(picked[..., None])[:, 0]


def _max_r_hat(values, chains) -> float:
    """The largest :func:`rank_r_hat` over the columns of ``values (chains, draws, V)`` for ``chains``; for one
    chain, over its two halves as two chains (split r_hat); columns without one are left out (NaN if none has one)."""
    sub = values[list(chains)]
    if len(chains) == 1:
        half = sub.shape[1] // 2
        sub = np.concatenate([sub[:, :half], sub[:, half:2 * half]], axis=0)
    per_column = rank_r_hat(sub)
    return float(np.nanmax(per_column)) if np.isfinite(per_column).any() else float("nan")


def r_hat_of(post, chains) -> float:
    """Label-invariant r_hat over ``chains`` of the probes ``post`` (an xarray Dataset with ``chain`` and ``draw``
    dimensions); for one chain, over its two halves (split r_hat)."""
    return _max_r_hat(_probe_array(post), chains)


def linked_groups(n: int, linked) -> list[tuple]:
    """``range(n)`` grouped by single linkage: the pairs ``i < j`` in order, each asked ``linked(i, j)`` only while
    ``i`` and ``j`` are in different groups, and joined where it says so.  The groups, each in increasing order, by
    their smallest member."""
    parent = list(range(n))

    def root(c):
        while parent[c] != c:
            c = parent[c]
        return c

    for i in range(n):
        for j in range(i + 1, n):
            if root(i) != root(j) and linked(i, j):
                parent[root(j)] = root(i)
    groups = {}
    for c in range(n):
        groups.setdefault(root(c), []).append(c)
    return [tuple(g) for g in groups.values()]


def chain_modes(probes, cell_log_lik=None, counts=None, power: float = 1.0) -> ChainModes:
    """Group chains into modes by their label-invariant ``probes`` (an xarray Dataset with ``chain``
    and ``draw`` dimensions) and, when there is more than one mode and the cells' log-likelihood
    terms are given, stack the chains; otherwise the chains share equal weights.  ``power``: the
    likelihood's power in the sampled posterior (:func:`chain_loo_densities`)."""
    chains = int(probes.sizes["chain"])
    values = _probe_array(probes)
    pairs = [(i, j) for i in range(chains) for j in range(i + 1, chains)]
    # a pair whose most separated column alone has r_hat >= SAME_MODE_R_HAT is two modes whatever the other columns
    # say (their largest is at least that): every column's only for the others.  The same modes and r_hats; on 2 cores
    # (benchmarks/bench_chain_modes.py --posterior, December 2026) Kuramoto-Sivashinsky D = 4's 64 Laplace chains (63
    # modes) 0.33 s against 8.75 s with every pair's every column, its 48 NUTS chains (32 modes) 0.44 s against 4.72 s,
    # Lorenz-63's 16 Laplace chains (13 modes) 0.10 s against 1.04 s; chain_modes runs twice in a study's run
    witness = dict(zip(pairs, _witness_r_hats(values, pairs)))
    modes = linked_groups(chains, lambda i, j: not witness[i, j] >= SAME_MODE_R_HAT
                          and _max_r_hat(values, (i, j)) < SAME_MODE_R_HAT)
    weights, stacked, max_k = np.full(chains, 1.0 / chains), False, float("nan")
    if len(modes) > 1 and cell_log_lik is not None:
        lpd, khat = chain_loo_densities(cell_log_lik, counts, power)
        weights, stacked, max_k = stacking_weights(lpd, counts), True, float(np.max(khat))
    modes.sort(key=lambda m: (-float(weights[list(m)].sum()), m))
    return ChainModes(tuple(modes), tuple(_max_r_hat(values, m) for m in modes), weights, stacked, max_k)


def draw_allocation(weights, total: int, available: int) -> np.ndarray:
    """Draws to take from each chain, ``(chains,)`` summing to ``total`` (at most ``available`` each):
    proportional to ``weights``, by largest remainder, so the thinned draws are the weighted mixture
    of the chains.  Where the heaviest chain's share would exceed its ``available`` draws the total
    shrinks until it does not: filling up with other chains' draws would move weight to them."""
    weights = np.asarray(weights, np.float64)
    if not (np.all(np.isfinite(weights)) and np.all(weights >= 0) and weights.sum() > 0):
        raise ValueError(f"chain weights must be finite, non-negative and not all zero, got {weights}")
    weights = weights / weights.sum()
    total = int(min(total, np.floor(available / weights.max() + 1e-9)))
    share = weights * total
    take = np.minimum(np.floor(share).astype(int), available)
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    i = 0
    while take.sum() < total:
        c = order[i % len(order)]
        if take[c] < available and weights[c] > 0:
            take[c] += 1
        i += 1
    return take


def draw_picks(takes, draws: int):
    """``(chain indices, draw indices)`` of ``takes[c]`` draws evenly spaced within each chain of ``draws``."""
    picks = [(c, i) for c, take in enumerate(takes) if take
             for i in evenly_spaced(draws, take)]
    return tuple(np.asarray(v) for v in zip(*picks))


def stacked_mean_error(chain_values, weights, band: float, seed: int = 0, units=None) -> dict:
    """How far another run's stacked mean may lie from this one's, in band widths.

    ``chain_values`` ``(chains, draws, ...)``: a label-invariant quantity per draw (the score at the
    probe points); ``weights`` ``(chains,)``: the stacking weights.  ``units`` ``(chains,)``: labels of
    the independent units (the MAP optimum each chain started at: chains that share one are one unit,
    their weighted mean its mean, their summed weight its weight); ``None``: every chain is one.
    Returns the standard error of the
    stacked mean with the units as independent (module docstring) over the width of the
    stacked ``band`` (its central credible interval), the worst over the quantity's entries
    (``max_se_over_width``), and ``expected_max_difference``: the mean over 4,000 simulations of
    the largest ``|difference|`` between two independent runs' means over the entries, in width
    units, the difference normal with twice the covariance over the entries that the same units
    estimate for one run's mean (entries move together: that largest difference is smaller than
    for independent entries of the same standard errors).
    """
    x = np.asarray(chain_values, np.float64)
    chains, draws = x.shape[:2]
    w_chains = np.asarray(weights, np.float64)
    w_chains = w_chains / w_chains.sum()
    chain_means = x.mean(axis=1).reshape(chains, -1)
    labels = np.arange(chains) if units is None else np.asarray(units)
    if labels.shape != (chains,):
        raise ValueError(f"units must label each of the {chains} chains, got shape {labels.shape}")
    groups = [np.flatnonzero(labels == u) for u in np.unique(labels)]
    w = np.array([w_chains[g].sum() for g in groups])  # the units' weights and weighted means
    unit_means = np.stack([w_chains[g] @ chain_means[g] / max(w_chains[g].sum(), np.finfo(np.float64).tiny)
                           for g in groups])
    mean = w @ unit_means
    # unit c's residual m_c - m has variance (1 - 2 w_c + sum w^2) s^2 when the unit means scatter
    # independently with variance s^2, so dividing by it makes sum_c w_c^2 r_c^2 unbiased for the variance
    # of the weighted mean, sum_c w_c^2 s^2 (equal weights: the factor C / (C - 1))
    scaled = w[:, None] * (unit_means - mean) / np.sqrt(np.maximum(1.0 - 2.0 * w + np.sum(w ** 2), 1e-12))[:, None]
    se = np.sqrt(np.sum(scaled ** 2, axis=0))
    pooled = x[draw_picks(draw_allocation(w_chains, chains * draws, draws), draws)].reshape(-1, mean.size)  # stacked
    tail = 0.5 * (1.0 - band)
    lo, hi = np.quantile(pooled, [tail, 1.0 - tail], axis=0)
    width = np.maximum(hi - lo, np.finfo(np.float64).tiny)
    ratio = se / width
    # two runs' difference, normal with twice the estimate's covariance over the entries (a mode found or
    # missed moves every probe at once): sqrt(2) sum_c g_c (scaled residual of unit c), g_c iid N(0, 1)
    g = np.random.default_rng(seed).standard_normal((4000, len(groups)))
    diffs = np.sqrt(2.0) * g @ scaled / width
    # the standard error is the square root of an estimate from few units: E[sqrt(chi2_nu / nu)] < 1 biases
    # the prediction low; nu = (sum w^2)^2 / sum w^4 - 1 (Satterthwaite; C - 1 for equal weights)
    nu = max(np.sum(w ** 2) ** 2 / np.sum(w ** 4) - 1.0, 1.0)
    shrink = math.exp(0.5 * math.log(2.0 / nu) + math.lgamma(0.5 * (nu + 1.0)) - math.lgamma(0.5 * nu))
    expected = float(np.mean(np.max(np.abs(diffs), axis=1))) / shrink
    out = {"max_se_over_width": ratio.max(), "median_se_over_width": np.median(ratio),
           "expected_max_difference": expected, "effective_chains": 1.0 / np.sum(w ** 2), "units": len(groups)}
    return {k: json_floats(v) for k, v in out.items()}  # None where not finite (non-finite probe scores)
