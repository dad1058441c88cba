"""How far is the mixture's score from the truth?  A held-out score-matching gap.

The coarsened posterior needs the squared error of the estimated score against the
truth.  A richer Gaussian mixture is a poor yardstick: on the four-well system a
K = 16 mixture is within 0.003 nats of the true density (richer mixtures do not
beat it on held-out likelihood) while its score is 25% off, in ripples that only
the score shows.  The score's own error is measured by Hyvarinen's score
(Hyvarinen 2005, "Estimation of non-normalized statistical models by score matching")

    H(s) = E_p[ |s(x)|^2 + 2 div s(x) ] = E_p|s - grad log p|^2 - E_p|grad log p|^2,

an expectation over the data that needs no truth: for two score fields,
``H(s_K) - H(s_ref) = J(s_K) - J(s_ref)`` with ``J`` the Fisher divergence from the
truth, so ``H(s_K) - H(s_ref) <= J(s_K)``: a lower bound on the mixture's squared
error whatever the reference.  The reference is a small network trained by implicit
score matching (minimising ``H`` over the network, Hyvarinen 2005) on the first half
of the snapshots in time order; both ``H`` are evaluated on the second half (held out
for the network).  The bound is tight where the network is close to the truth (on
four-well data of 1e5 snapshots its Fisher divergence is 0.05, the K = 16 posterior
mean's 0.37), and it never claims more error than there is, up to its noise: its
standard error comes from batch means of the per-snapshot differences in time order,
so autocorrelation is accounted for, and one standard error is taken off.  The
estimate was fitted to all snapshots, the held-out half included, so its ``H`` there
is slightly optimistic: the bound errs on the low side.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .._picks import evenly_spaced

__all__ = ["FisherGap", "BiasField", "field_stats", "field_from_stats", "train_reference", "hyvarinen_terms", "fisher_gap", "stein_gap", "REFERENCE_STEPS"]

REFERENCE_WIDTH = 64  # hidden units of each of the network's layers
REFERENCE_DEPTH = 3  # hidden layers
REFERENCE_STEPS = 3000  # Adam steps of implicit score matching (cosine schedule)
REFERENCE_LEARNING_RATE = 1e-2
REFERENCE_BATCH = 256  # snapshots per step
MAX_SNAPSHOTS = 50_000  # per half: the gap's noise is then well below the posterior's variance
BATCHES = 20  # batch means over the held-out half (time order) for the standard error
MIN_SNAPSHOTS = 2500  # per half: with fewer the network cannot beat the mixture (no gap is measured)
LOWER_SE = 1.0  # the gap kept is its estimate less this many standard errors (at least 0)


class FisherGap(NamedTuple):
    """``gap``: ``H(s_K) - H(s_ref)`` on held-out snapshots (z-scored units, summed over
    coordinates), ``se`` its standard error, ``bound = max(gap - LOWER_SE se, 0)``."""

    gap: float
    se: float
    bound: float
    reference_loss: float  # H(s_ref) on the held-out half (the network's gap)
    snapshots: int  # snapshots used
    basis: int = 0  # the bumps' gap: how many bumps (per coordinate) the chosen basis has
    threshold: float = 3.0  # ... and the standard errors it must exceed to be significant (SIGNIFICANT_SE, PRIMARY_SE)
    # the bumps' gap: the error field per block of that basis where its gap is significant (else None), for the
    # score band's local bias (BiasField.squared)
    field: "BiasField | None" = None
    # the bumps' gap: the fit's own sampling variance projected on the bumps, added to the cross-fitted estimate
    # (included in ``gap``; 0 when no posterior draws were given)
    correction: float = 0.0


class BiasField(NamedTuple):
    """The score's error ``s_K - grad log p`` as the bumps see it, once per block of the snapshots:
    ``c_a(x) = sum_j g_j(x) theta_aj`` with ``theta_a = A^-1 b_a`` (:func:`stein_gap`).  The cross-fitted
    product of two non-adjacent blocks' fields has no noise term, so its mean over pairs estimates the
    projected error's square at ``x`` (:meth:`cross_products`) for a fixed score; for a score fitted to these
    snapshots, its squared bias there less its own sampling variance, which ``spread`` puts back
    (:meth:`fit_variance`)."""

    centres: np.ndarray  # (J, d) bump centres (z-scored units)
    width: float  # the bumps' common width
    coefficients: np.ndarray  # (blocks, J, d): theta_a of each block
    # (S, J, d) or None: A^-1 times each posterior draw's projection of its deviation from the posterior mean,
    # scaled so that the mean over draws of (g(x) spread_k)^2 is the fit's projected sampling variance at x
    spread: np.ndarray | None = None

    def squared(self, x) -> np.ndarray:
        """``(n, d)``: :meth:`estimate` at least 0: the local squared bias of the score (projected on the
        bumps) at the points ``x`` ``(n, d)``."""
        return np.maximum(self.estimate(x), 0.0)

    def estimate(self, x) -> np.ndarray:
        """``(n, d)``: :meth:`cross_products` plus :meth:`fit_variance`, before clipping at 0 (its mean over
        the snapshots the field was estimated on is the bumps' gap, up to the Gram matrix's ridge)."""
        out = self.cross_products(x)
        return out if self.spread is None else out + self.fit_variance(x)

    def fit_variance(self, x) -> np.ndarray:
        """``(n, d)``: the mean over the draws of ``(g(x) spread_k)^2``, the posterior mean's own sampling
        variance projected on the bumps (0 without ``spread``)."""
        x = np.asarray(x, np.float64)
        if self.spread is None:
            return np.zeros_like(x)
        out = np.empty_like(x)
        centre_sq = np.sum(self.centres ** 2, axis=-1)
        draws, n_basis, d = self.spread.shape
        spread = self.spread.transpose(1, 0, 2).reshape(n_basis, draws * d)  # one matrix product per chunk
        for i in range(0, len(x), STEIN_CHUNK):
            g = _bumps(x[i:i + STEIN_CHUNK], self.centres, centre_sq, self.width)
            out[i:i + STEIN_CHUNK] = np.mean(((g @ spread) ** 2).reshape(len(g), draws, d), axis=1)
        return out

    def cross_products(self, x) -> np.ndarray:
        """``(n, d)``: the mean over pairs of non-adjacent blocks of ``c_a(x) c_c(x)`` per coordinate (its mean
        over the snapshots the field was estimated on is the gap before the fit's variance is added back)."""
        x = np.asarray(x, np.float64)
        blocks = len(self.coefficients)
        if blocks < 3:
            raise ValueError(f"a bias field needs at least 3 blocks (a pair two apart), got {blocks}")
        pairs = blocks * (blocks - 1) // 2 - (blocks - 1)
        out = np.empty_like(x)
        centre_sq = np.sum(self.centres ** 2, axis=-1)
        for i in range(0, len(x), STEIN_CHUNK):
            g = _bumps(x[i:i + STEIN_CHUNK], self.centres, centre_sq, self.width)
            c = np.einsum("nj,ajk->ank", g, self.coefficients)  # (blocks, n, d)
            total = c.sum(axis=0)
            # sum over a < c - 1 of c_a c_c = (total^2 - sum c_a^2) / 2 - sum of adjacent products
            out[i:i + STEIN_CHUNK] = (0.5 * (total ** 2 - np.sum(c ** 2, axis=0))
                                      - np.sum(c[1:] * c[:-1], axis=0)) / pairs
        return out


class _Net(nnx.Module):
    """The reference network, in float32: its training takes half the time it takes in float64 (3.7 s
    against 7.8 s for the default study's 25,000 snapshots on 2 cores), and the gap it measures is a
    difference of held-out means whose standard error is many orders above float32's rounding."""

    def __init__(self, d: int, *, rngs: nnx.Rngs):
        sizes = [d] + [REFERENCE_WIDTH] * REFERENCE_DEPTH + [d]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs, param_dtype=jnp.float32, dtype=jnp.float32)
                                for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = nnx.softplus(layer(x))
        return self.layers[-1](x)


def hyvarinen_terms(score_fn, x):
    """Per-point ``|s(x)|^2 + 2 div s(x)`` ``(n,)`` of a score function of one point ``(d,) -> (d,)``."""
    def one(xi):
        return jnp.sum(score_fn(xi) ** 2) + 2.0 * jnp.trace(jax.jacfwd(score_fn)(xi))
    return jax.vmap(one)(x)


def train_reference(key, z, steps: int = REFERENCE_STEPS):
    """A network score, a function of one point ``(d,) -> (d,)``, trained by implicit score
    matching (minimising the mean of :func:`hyvarinen_terms`) on ``z`` ``(n, d)``."""
    z = jnp.asarray(z, jnp.float32)
    init_key, batch_key = jax.random.split(key)
    graphdef, params = nnx.split(_Net(z.shape[1], rngs=nnx.Rngs(params=init_key)))
    opt = optax.adam(optax.cosine_decay_schedule(REFERENCE_LEARNING_RATE, steps))

    def loss(p, xb):
        model = nnx.merge(graphdef, p)
        return jnp.mean(hyvarinen_terms(lambda xi: model(xi[None])[0], xb))

    def step(carry, k):
        p, state = carry
        value, grads = jax.value_and_grad(loss)(p, z[jax.random.randint(k, (REFERENCE_BATCH,), 0, z.shape[0])])
        updates, state = opt.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), value

    (params, _), _ = jax.jit(lambda p, s, ks: jax.lax.scan(step, (p, s), ks))(
        params, opt.init(params), jax.random.split(batch_key, steps))
    model = nnx.merge(graphdef, params)
    return lambda xi: model(xi[None])[0]


def fisher_gap(key, z, estimate_fields, steps: int = REFERENCE_STEPS) -> FisherGap | None:
    """The held-out gap ``H(s_K) - H(s_ref)`` (see the module docstring); None with fewer than
    ``2 MIN_SNAPSHOTS`` snapshots.

    ``z`` ``(N, d)``: the z-scored snapshots in time order; ``estimate_fields(x)`` gives the
    estimate's score ``(n, d)`` and its divergence ``(n,)`` at points ``(n, d)``.
    """
    z = np.asarray(z, np.float64)
    half = len(z) // 2
    if half < MIN_SNAPSHOTS:
        return None
    train, test = z[:half][-MAX_SNAPSHOTS:], z[half:][:MAX_SNAPSHOTS]
    test_s, test_div = estimate_fields(test)
    reference = train_reference(key, train, steps)
    h_ref = np.asarray(jax.jit(lambda x: hyvarinen_terms(reference, x))(jnp.asarray(test)))
    diff = np.sum(np.asarray(test_s) ** 2, axis=-1) + 2.0 * np.asarray(test_div) - h_ref
    usable = len(diff) // BATCHES * BATCHES
    means = diff[:usable].reshape(BATCHES, -1).mean(axis=1)
    gap, se = float(diff.mean()), float(means.std(ddof=1) / np.sqrt(BATCHES))
    return FisherGap(gap=gap, se=se, bound=max(gap - LOWER_SE * se, 0.0), reference_loss=float(h_ref.mean()),
                     snapshots=len(test))


# ---------------------------------------------------------------- the linear, cross-fitted gap
# bump counts tried (each at most a quarter of the cells); among the significant ones (PRIMARY_SE, SIGNIFICANT_SE
# below) the largest lower limit ``gap - SIGNIFICANT_SE se`` is kept.  Measured on calibrate-like data (dt / 10,
# iid snapshots; maximum-likelihood K-mixtures; 3 data seeds, 16 blocks): on four-well at N = 1e5 the ladder sees
# 0.76-0.92 of a K = 16 fit's squared error, 100 bumps alone 0.58-0.69; on reduced_1d at 1e5 0.81-0.92 of a K = 10
# fit's, where 100 bumps alone were never significant.  The analytic score's gap was never significant (0 of 12
# data sets), where 8 blocks and 2 se for every size had 3 false positives (one of 157 times the error, from
# narrow bumps in reduced_1d's heavy tails)
STEIN_LADDER = (25, 50, 100, 200, 400)
STEIN_WIDTH = 1.5  # bump width, in median distances between neighbouring bump centres
STEIN_BLOCKS = 16  # contiguous blocks of the snapshots in time order (the jackknife's 15 degrees of freedom)
STEIN_MAX_SNAPSHOTS = 200_000  # evenly spaced in time beyond this
STEIN_RIDGE = 1e-6  # added to the bumps' Gram matrix, relative to its mean diagonal
STEIN_CHUNK = 4096  # snapshots per pass (bounded memory)
STEIN_SPREAD_SNAPSHOTS = 20_000  # snapshots (evenly spaced) on which the draws' spread is projected on the bumps
# the gap enters zeta only above this many standard errors, and the ladder's size is chosen by it: the t
# quantile of the jackknife over 16 blocks (15 degrees of freedom) for a one-sided 2.5% test, Bonferroni over
# the ladder's five sizes (2.95)
SIGNIFICANT_SE = 3.0
# ... except the primary basis (the single basis before the ladder), tested at this many: for a score with no error
# the chance of a false bias (one-sided, t with 15 degrees of freedom) is spent between it (3.2%) and the other
# four sizes (0.45% each): 5.0% in all
PRIMARY_BASIS = 100
PRIMARY_SE = 2.0


def _bump_basis(points, counts, n_basis: int, seed: int):
    from sklearn.cluster import KMeans

    centres = KMeans(n_basis, n_init=1, random_state=seed).fit(points, sample_weight=counts).cluster_centers_
    gaps = np.sqrt(np.sum((centres[:, None] - centres[None]) ** 2, axis=-1))
    np.fill_diagonal(gaps, np.inf)
    return centres, STEIN_WIDTH * float(np.median(gaps.min(axis=1)))


def field_stats(field: BiasField) -> dict:
    """``field`` as arrays for a posterior's ``sample_stats`` (kept with the posterior's stage)."""
    stats = {"score_bias_centres": np.asarray(field.centres), "score_bias_width": np.asarray(float(field.width)),
             "score_bias_coefficients": np.asarray(field.coefficients)}
    if field.spread is not None:
        stats["score_bias_spread"] = np.asarray(field.spread)
    return stats


def field_from_stats(stats) -> BiasField | None:
    """The :class:`BiasField` kept in ``stats`` by :func:`field_stats`, or ``None``."""
    if "score_bias_coefficients" not in stats:
        return None
    spread = stats.get("score_bias_spread")
    return BiasField(np.asarray(stats["score_bias_centres"], np.float64), float(stats["score_bias_width"]),
                     np.asarray(stats["score_bias_coefficients"], np.float64),
                     None if spread is None else np.asarray(spread, np.float64))


# No bump is below exp(-BUMP_FLOOR) (1.8e-154, just above the square root of float64's smallest normal number): no bump,
# nor the product of two, is then a subnormal number, whose arithmetic on x86 takes the BLAS products that use the
# bumps 2-3 times as long (16 Gram products of 3,125 standard normal snapshots in 1D at 200 and 400 bumps, about 1% of
# them subnormal: 0.32 s against 0.11 s and 0.30 s against 0.15 s; the default study's gap: benchmarks/
# bench_correction.py, row 4).  What is changed is below 2e-154 where a bump's largest value is 1: far below float64's
# rounding of the sums it enters.
BUMP_FLOOR = 354.0


def _bumps(x, centres, centre_sq, width: float, buffers=None):
    """``(n, J)``: the Gaussian bumps at ``centres`` evaluated at ``x`` ``(n, d)``: ``exp(-max(|x|^2 + |c|^2 - 2 x.c,
    0) / (2 width^2))``, every step after the first two in place.  ``buffers``: two ``(m, J)`` arrays, ``m >= n``
    (:func:`_chunk_buffers`), whose first ``n`` rows take the sum and the product, so that a loop over chunks makes no
    new ``(n, J)`` array (the result is a view of the first buffer); without them two are made, where the expression
    written out made seven, each 65 MB at 4,096 x 2,000, whose page faults cost more than the arithmetic
    (``benchmarks/bench_correction.py``, row 1).  The same operations in the same order: the same bits, except that
    a bump below ``exp(-BUMP_FLOOR)`` is ``exp(-BUMP_FLOOR)`` (:data:`BUMP_FLOOR`; the squared distance clipped to
    ``2 width^2 BUMP_FLOOR`` where it was clipped to at least 0: no pass more)."""
    n = len(x)
    sq = np.add(np.sum(x ** 2, axis=-1)[:, None], centre_sq[None], out=None if buffers is None else buffers[0][:n])
    sq -= np.matmul(2.0 * x, centres.T, out=None if buffers is None else buffers[1][:n])
    np.clip(sq, 0.0, 2 * width * width * BUMP_FLOOR, out=sq)
    np.negative(sq, out=sq)
    sq /= 2 * width * width
    return np.exp(sq, out=sq)


def _chunk_buffers(n_basis: int, rows: int = STEIN_CHUNK):
    """Two ``(rows, J)`` arrays for :func:`_bumps`' ``buffers``."""
    return np.empty((rows, n_basis)), np.empty((rows, n_basis))


def _block_moments(z, s, centres, width: float, blocks: int):
    """Per block: ``b_a`` ``(blocks, J, d)`` and ``A_a`` ``(blocks, J, J)`` (means over the block's snapshots); each
    chunk's bumps and Gram product in arrays made once (:func:`_chunk_buffers`)."""
    n_basis, d = len(centres), z.shape[1]
    step = len(z) // blocks
    b = np.zeros((blocks, n_basis, d))
    gram = np.zeros((blocks, n_basis, n_basis))
    centre_sq = np.sum(centres ** 2, axis=-1)
    buffers, product = _chunk_buffers(n_basis, min(STEIN_CHUNK, step)), np.empty((n_basis, n_basis))
    for a in range(blocks):
        for i in range(a * step, (a + 1) * step, STEIN_CHUNK):
            x = z[i:min(i + STEIN_CHUNK, (a + 1) * step)]
            g = _bumps(x, centres, centre_sq, width, buffers)
            b[a] += g.T @ s[i:i + len(x)] - (g.T @ x - g.sum(axis=0)[:, None] * centres) / (width * width)
            gram[a] += np.matmul(g.T, g, out=product)
    return b / step, gram / step


def _cross_fitted(z, s, centres, width: float, blocks: int):
    """``(gap, se, theta)``: the mean over pairs of non-adjacent blocks of ``b_a^T A^-1 b_c``, its jackknife
    standard error over blocks, and each block's ``A^-1 b_a`` ``(blocks, J, d)``, for bumps at ``centres``
    (see :func:`stein_gap`)."""
    n_basis, d = len(centres), z.shape[1]
    b, grams = _block_moments(z, s, centres, width, blocks)
    gram = grams.mean(axis=0)
    gram += STEIN_RIDGE * np.trace(gram) / n_basis * np.eye(n_basis)
    solved = np.linalg.solve(gram, b.transpose(1, 0, 2).reshape(n_basis, -1)).reshape(n_basis, blocks, d)
    cross = np.einsum("ajk,jck->ac", b, solved)  # (blocks, blocks): b_a^T A^-1 b_c
    pairs = [(a, c) for a in range(blocks) for c in range(a + 2, blocks)]  # non-adjacent: independent noise
    gap = float(np.mean([cross[a, c] for a, c in pairs]))
    left_out = np.array([np.mean([cross[a, c] for a, c in pairs if j not in (a, c)]) for j in range(blocks)])
    return gap, float(np.sqrt((blocks - 1) / blocks * np.sum((left_out - left_out.mean()) ** 2))), \
        solved.transpose(1, 0, 2), gram


def _fit_spread(x, flat, draws: int, centres, width: float, gram, factor: float):
    """``(S, J, d)``: ``A^-1`` times each draw's deviation from the posterior mean projected on the bumps,
    ``E_x[g(x) (s_k - s_mean)(x)]`` over the snapshots ``x`` ``(n, d)`` (``flat`` ``(n, S d)``: the ``draws``
    deviations side by side, so each chunk is one matrix product), scaled by ``sqrt(factor S / (S - 1))`` so
    that the mean over draws of its square form is ``factor`` times the draws' projected variance (see
    :func:`stein_gap`)."""
    n_basis, d = len(centres), x.shape[1]
    projected = np.zeros((n_basis, draws * d))
    centre_sq = np.sum(centres ** 2, axis=-1)
    for i in range(0, len(x), STEIN_CHUNK):
        g = _bumps(x[i:i + STEIN_CHUNK], centres, centre_sq, width)
        projected += g.T @ flat[i:i + STEIN_CHUNK]
    solved = np.linalg.solve(gram, projected / len(x))
    return np.sqrt(factor * draws / (draws - 1)) * solved.reshape(n_basis, draws, d).transpose(1, 0, 2)


def stein_gap(z, score_fn, points, counts, seed: int = 0, blocks: int = STEIN_BLOCKS,
              ladder=STEIN_LADDER, bases: dict | None = None, draw_scores=None,
              spread_factor: float = 1.0, keep_field: bool = False) -> FisherGap | None:
    """The score-matching gap ``H(s_K) - H(s_K + G theta*)`` of a linear correction by Gaussian bumps
    ``G``, cross-fitted over contiguous blocks of the snapshots: for a fixed score field an estimate,
    unbiased up to the blocks' dependence, of ``b^T A^-1 b``, the squared error of ``s_K`` projected on
    the bumps
    (``b_jk = E_p[(s_K - grad log p)_k g_j] = E_p[s_K,k g_j + d_k g_j]`` by Stein's identity, ``A`` the
    bumps' Gram matrix), so at most the squared error ``E_p|s_K - grad log p|^2``; None with too few
    snapshots or cells.

    Unlike :func:`fisher_gap`, no network is trained: the reference is the best linear correction, in
    closed form.  ``b`` is estimated on each block; the mean over pairs of non-adjacent blocks of
    ``b_a^T A^-1 b_c`` has no noise term (independent blocks), and its standard error is the jackknife
    over blocks.  A score fitted to these same snapshots follows every block's noise, so for it that
    mean reads low: for a fit with sampling error ``e`` and bias ``beta`` it estimates
    ``beta^T A^-1 beta - E[e^T A^-1 e]``, not the squared error ``beta^T A^-1 beta + E[e^T A^-1 e]``
    (a Gaussian location fit with one constant bump: ``-1/N`` where the squared error is ``1/N``).
    ``draw_scores(x)``: the posterior draws' scores ``(S, n, d)``, whose mean is ``score_fn``; their spread
    projected on the bumps, times ``spread_factor`` (the fit's sampling variance over the draws' variance:
    the autocorrelation inflation times the zeta the draws were sampled at), estimates ``E[e^T A^-1 e]``
    (on up to :data:`STEIN_SPREAD_SNAPSHOTS` snapshots) and is added to the gap (``correction``); the gap
    then estimates the squared bias ``beta^T A^-1 beta``, to first order (terms of order bumps / snapshots
    per block remain: a 50-bump fit of 24,000 Gaussian snapshots, raw -0.021, corrected -0.0005 +- 0.0008).
    A richer
    basis sees more of the error and is noisier, so each bump count of ``ladder`` is tried; among those
    significant (:data:`PRIMARY_BASIS` bumps above :data:`PRIMARY_SE` standard errors, the others above
    :data:`SIGNIFICANT_SE`) the one with the largest lower limit ``gap - SIGNIFICANT_SE se`` is kept: the
    richest basis the data resolve (with none significant, the largest lower limit, for the report).
    ``score_fn(x)``: the estimate's score ``(n, d)`` at all the snapshots used ``(n, d)``, in bounded
    memory (:func:`~kgmm_bayes.bayes.score.posterior_mean_score` works in chunks).
    The bumps sit at a weighted K-means of the cells ``points`` (``counts``); ``bases``, a dict kept by the
    caller for these cells and ``seed``, keeps the placements (by bump count) for a later call.
    ``keep_field``: the chosen basis keeps its field even when no gap is significant (a second posterior's
    field, on the bumps whose gap was significant for the first)."""
    z = np.asarray(z, np.float64)
    if len(z) > STEIN_MAX_SNAPSHOTS:
        # (truncated, not rounded as kgmm_bayes._picks.evenly_spaced: kept so that studies' gaps stay as measured)
        z = z[np.linspace(0, len(z) - 1, STEIN_MAX_SNAPSHOTS).astype(np.int64)]
    step = len(z) // blocks
    sizes = sorted({min(n, len(points) // 4) for n in ladder if min(n, len(points) // 4) >= 2 and step >= n})
    if not sizes or blocks < 4:
        return None
    z = z[:step * blocks]
    s = np.asarray(score_fn(z), np.float64)
    points, counts = np.asarray(points, np.float64), np.asarray(counts, np.float64)
    primary, tried = min(PRIMARY_BASIS, len(points) // 4), []
    bases = {} if bases is None else bases
    flat = sample = None
    if draw_scores is not None:  # the draws' deviations from their mean, on evenly spaced snapshots, as (n, S d)
        sample = z[evenly_spaced(len(z), STEIN_SPREAD_SNAPSHOTS)]
        deviations = np.asarray(draw_scores(sample), np.float64)
        draws = len(deviations)
        flat = (deviations - deviations.mean(axis=0)).transpose(1, 0, 2).reshape(len(sample), -1)
    for n_basis in sizes:
        if n_basis not in bases:
            bases[n_basis] = _bump_basis(points, counts, n_basis, seed)
        gap, se, theta, gram = _cross_fitted(z, s, *bases[n_basis], blocks)
        spread, correction = None, 0.0
        if flat is not None and draws > 1:
            spread = _fit_spread(sample, flat, draws, *bases[n_basis], gram, spread_factor)
            correction = float(np.mean(np.einsum("sjk,ji,sik->s", spread, gram, spread)))
        gap += correction
        tried.append(FisherGap(gap=gap, se=se, bound=max(gap - LOWER_SE * se, 0.0), reference_loss=math.nan,
                               snapshots=len(z), basis=n_basis,
                               threshold=PRIMARY_SE if n_basis == primary else SIGNIFICANT_SE,
                               field=BiasField(*bases[n_basis], theta, spread), correction=correction))
    significant = [g for g in tried if g.gap > g.threshold * g.se]
    chosen = max(significant or tried, key=lambda g: g.gap - SIGNIFICANT_SE * g.se)
    if not significant and not keep_field:  # no bias the data show: no local field (pointwise, noise alone)
        chosen = chosen._replace(field=None)
    return chosen
