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

from .._picks import evenly_spaced
from .mixture import (
    LOG_2PI,
    component_coefficients,
    precision_factors,
    precision_terms,
    quadratic_features,
)

__all__ = ["mixture_score", "mixture_log_density", "mixture_divergence", "mixture_fields", "ScoreCoefficients",
           "score_coefficients", "coefficient_score", "coefficient_fields", "ScoreSummary", "score_draws", "summarize_scores",
           "thin_draws", "predictive_score_fn", "predictive_drift", "field_draws", "physical_draws", "band_with_bias",
           "summarize_log_densities", "summarize_divergences", "band_around", "posterior_mean_fields",
           "posterior_mean_score", "ChainDraws", "evenly_spaced_draws", "pad_rows"]


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


def mixture_fields(weights, means, cov_chol, x):
    """Score ``(n, d)``, log density ``(n,)`` and divergence of the score ``(n,)`` of one draw."""
    w_inv, log_joint, prec_resid = _whitened(weights, means, cov_chol, x)
    log_p = jax.nn.logsumexp(log_joint, axis=-1)
    resp = jnp.exp(log_joint - log_p[:, None])
    score = -jnp.einsum("nk,nki->ni", resp, prec_resid)
    trace_prec = jnp.sum(w_inv**2, axis=(-2, -1))  # tr W^T W
    per_comp = jnp.sum(prec_resid**2, axis=-1) - trace_prec[None]
    return score, log_p, jnp.sum(resp * per_comp, axis=-1) - jnp.sum(score**2, axis=-1)


def mixture_divergence(weights, means, cov_chol, x):
    """Divergence of the score, ``(n,)``."""
    return mixture_fields(weights, means, cov_chol, x)[2]


class ScoreCoefficients(NamedTuple):
    r"""One mixture's score as dense products, computed once per draw (a drift's parameters).

    ``log w_k N(x; mu_k, Sigma_k) = phi(x) @ gamma`` with the quadratic features
    :math:`\phi(x) = [1, x, x_i x_j]` (:func:`kgmm_bayes.bayes.mixture.quadratic_features`), so
    the responsibilities are ``softmax(phi(x) @ gamma)`` and
    :math:`s(x) = r(x)^\top (P\mu) - (r(x)^\top P)\, x`: two matrix products and a
    ``d x d`` product per point, no triangular solve and no ``(n, K, d)`` residuals.
    Leaves may carry leading member axes.
    """

    gamma: jax.Array  # (F, K)
    prec_mu: jax.Array  # (K, d): P_k mu_k
    prec: jax.Array  # (K, d * d): P_k flattened


def _coefficients(weights, means, cov_chol):
    k, d = means.shape
    prec, prec_mu = precision_terms(means, cov_chol)
    return ScoreCoefficients(component_coefficients(weights, means, cov_chol, (prec, prec_mu)), prec_mu,
                             prec.reshape(k, d * d))


def score_coefficients(weights, means, cov_chol, dtype=None) -> ScoreCoefficients:
    """:class:`ScoreCoefficients` of draws ``(..., K)``, ``(..., K, d)``, ``(..., K, d, d)``.

    Computed in the draws' precision, then cast to ``dtype`` (e.g. ``float32`` for a
    float32 simulation; the expanded quadratic form then loses about
    ``eps * |mu|^2 / sigma^2`` in the log densities, negligible for z-scored data).
    """
    coeffs = _batched_coefficients(*(jnp.asarray(a) for a in (weights, means, cov_chol)))
    return coeffs if dtype is None else ScoreCoefficients(*(a.astype(dtype) for a in coeffs))


@jax.jit
def _batched_coefficients(weights, means, cov_chol):
    # one compiled program per shape (eager, the same steps compiled about 30 small programs: 1 s of a cold posterior)
    fn = _coefficients
    for _ in range(weights.ndim - 1):
        fn = jax.vmap(fn)
    return fn(weights, means, cov_chol)


def _score_from_responsibilities(coeffs: ScoreCoefficients, resp, x):
    d = x.shape[-1]
    weighted_prec = (resp @ coeffs.prec).reshape(-1, d, d)
    return resp @ coeffs.prec_mu - jnp.einsum("nij,nj->ni", weighted_prec, x)


def coefficient_score(coeffs: ScoreCoefficients, x):
    """Score ``(n, d)`` at points ``(n, d)`` from :func:`score_coefficients` (a drift function)."""
    x = x.astype(coeffs.gamma.dtype)
    return _score_from_responsibilities(coeffs, jax.nn.softmax(quadratic_features(x) @ coeffs.gamma, axis=-1), x)


def coefficient_fields(coeffs: ScoreCoefficients, x):
    """Score ``(n, d)`` and log density ``(n,)`` at points ``(n, d)`` from :func:`score_coefficients`."""
    x = x.astype(coeffs.gamma.dtype)
    log_joint = quadratic_features(x) @ coeffs.gamma
    log_p = jax.nn.logsumexp(log_joint, axis=-1)
    return _score_from_responsibilities(coeffs, jnp.exp(log_joint - log_p[:, None]), x), log_p


# Draws' scores and log densities at many points go through the dense form (ScoreCoefficients): one
# (n, F) @ (F, K) product per draw instead of K small triangular products per point, the same numbers to
# ~1e-13 relative in float64 (z-scored data; benchmarks/bench_posterior_overheads.py times both forms).
@jax.jit
def _scores_of_draws(weights, means, cov_chol, x):
    return jax.vmap(coefficient_fields, in_axes=(0, None))(score_coefficients(weights, means, cov_chol), x)


CHUNK_ELEMENTS = 1 << 24  # per chunk of points, S x points x K x d x d at most: about 128 MB per intermediate (the
# whitened residuals' size; the dense form's intermediates, S x points x (2 K + d x d), are smaller)


def pad_rows(block, rows: int) -> np.ndarray:
    """``block`` ``(n, d)`` with its last row repeated up to ``rows`` rows (as it is when it has that many): a
    last chunk of points padded to the others' shape, so that one compiled program serves every chunk (the
    functions evaluated are pointwise; the padding's outputs are dropped)."""
    block = np.asarray(block)
    return block if len(block) >= rows else np.concatenate([block, np.repeat(block[-1:], rows - len(block), axis=0)])


def _in_chunks(evaluate, draws, x, chunk: int):
    """``evaluate(*draws, block)`` over chunks of points ``x``; each output joined along axis 1 (the points).
    The chunk shrinks (by powers of two) so that the draws' intermediates stay bounded: a thousand draws
    of a 3D mixture at 2,048 points at once took 1.3 GB."""
    x = np.asarray(x)
    shape = np.shape(draws[1])  # (S, K, d)
    per_point = int(np.prod(shape)) * shape[-1]
    chunk = int(min(chunk, max(16, 2 ** int(np.log2(max(CHUNK_ELEMENTS // max(per_point, 1), 1))))))
    parts = []
    for i in range(0, len(x), chunk):
        block = x[i:i + chunk]
        size = len(block)
        if size < chunk < len(x):  # the last chunk padded to the others' shape: one program
            block = pad_rows(block, chunk)
        parts.append(tuple(np.asarray(a)[:, :size] for a in evaluate(*draws, jnp.asarray(block))))
    return tuple(np.concatenate([p[j] for p in parts], axis=1) for j in range(len(parts[0])))


def _promoted(draws, x):
    """The draws in the precision of the draws and points together (float32 draws at float64 points: float64)."""
    dtype = np.result_type(*(np.asarray(a).dtype for a in draws), np.asarray(x).dtype)
    return tuple(np.asarray(a, dtype) for a in draws)


def score_draws(weights, means, cov_chol, x, chunk: int = 2048):
    """Scores ``(S, n, d)`` and log densities ``(S, n)`` of S draws, in chunks of points."""
    draws = _promoted((weights, means, cov_chol), x)
    if not len(x):
        return np.zeros((len(draws[0]), 0, np.shape(x)[-1]), draws[1].dtype), np.zeros((len(draws[0]), 0), draws[1].dtype)
    return _in_chunks(_scores_of_draws, draws, x, chunk)


@jax.jit
def _fields_of_draws(weights, means, cov_chol, x):
    return jax.vmap(mixture_fields, in_axes=(0, 0, 0, None))(weights, means, cov_chol, x)


def field_draws(weights, means, cov_chol, x, chunk: int = 2048):
    """Scores ``(S, n, d)``, log densities ``(S, n)`` and divergences ``(S, n)`` of S draws."""
    return _in_chunks(_fields_of_draws, (weights, means, cov_chol), x, chunk)


def posterior_mean_fields(weights, means, cov_chol, x, chunk: int = 2048):
    """The posterior-mean score ``(n, d)`` of S draws at points ``x`` and its divergence ``(n,)``
    (the mean of the draws' divergences), in chunks of points."""
    scores, divs = [], []
    for i in range(0, len(x), chunk):
        s, _, div = field_draws(weights, means, cov_chol, np.asarray(x[i:i + chunk]), chunk)
        scores.append(s.mean(axis=0))
        divs.append(div.mean(axis=0))
    return np.concatenate(scores), np.concatenate(divs)


@jax.jit
def _mean_score_of(coeffs: ScoreCoefficients, x):
    """The mean over draws (the leading axis of ``coeffs``) of their scores at points ``(n, d)``, summed one
    draw after another (memory: one draw's ``(n, K)`` at a time)."""
    def add(total, one):
        return total + coefficient_score(ScoreCoefficients(*one), x), None

    total, _ = jax.lax.scan(add, jnp.zeros(x.shape, coeffs.gamma.dtype), tuple(coeffs))
    return total / coeffs.gamma.shape[0]


MEAN_SCORE_CHUNK = 8192  # points per call of the posterior-mean score (the calls' shapes: this, or fewer points'
# next power of two, so that few programs are compiled)


def posterior_mean_score(weights, means, cov_chol, x, chunk: int = MEAN_SCORE_CHUNK):
    """The posterior-mean score ``(n, d)`` of S draws at points ``x``, in chunks of points (the
    draws' scores are never held for all points at once; the last chunk is padded to the same shape)."""
    x = np.asarray(x)
    if not len(x):
        return np.zeros((0, np.shape(means)[-1]))
    coeffs = score_coefficients(*_promoted((weights, means, cov_chol), x))
    x = x.astype(coeffs.gamma.dtype)
    chunk = min(int(chunk), 1 << int(np.ceil(np.log2(len(x)))))  # fewer points: the next power of two
    parts = []
    for i in range(0, len(x), chunk):
        block = x[i:i + chunk]
        parts.append(np.asarray(_mean_score_of(coeffs, jnp.asarray(pad_rows(block, chunk))))[:len(block)])
    return np.concatenate(parts)


def physical_draws(draws, mean, std):
    """Draws ``(weights, means, cov_chol)`` of z-scored mixtures as mixtures of the physical
    coordinates ``x = mean + std * z``: means ``mean + std mu``, Cholesky factors ``diag(std) L``."""
    weights, means, cov_chol = (np.asarray(a, np.float64) for a in draws)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return weights, mean + std * means, std[:, None] * cov_chol


class ScoreSummary(NamedTuple):
    """Posterior summaries over draws of a quantity at points: the score ``(n, d)``, or a log
    density or divergence ``(n,)``."""

    mean: np.ndarray
    std: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    predictive: np.ndarray  # the same quantity for the posterior-predictive density
    band: float  # credible mass of [lower, upper]


def _band(values, band: float):
    tail = 0.5 * (1.0 - band)
    return np.quantile(values, [tail, 1.0 - tail], axis=0)


def _predictive_weights(log_densities):
    """``p_s(x) / sum_s p_s(x)`` ``(S, n)``: the draws' shares of the posterior-predictive density."""
    pw = np.exp(log_densities - log_densities.max(axis=0, keepdims=True))
    return pw / pw.sum(axis=0, keepdims=True)


def summarize_log_densities(log_densities, band: float = 0.9) -> ScoreSummary:
    """Summaries of log densities ``(S, n)``; the predictive is ``log mean_s p_s(x)``."""
    lower, upper = _band(log_densities, band)
    top = log_densities.max(axis=0)
    predictive = top + np.log(np.mean(np.exp(log_densities - top), axis=0))
    return ScoreSummary(mean=log_densities.mean(axis=0), std=log_densities.std(axis=0), lower=lower,
                        upper=upper, predictive=predictive, band=band)


def summarize_divergences(divergences, scores, log_densities, band: float = 0.9) -> ScoreSummary:
    r"""Summaries of divergences ``(S, n)``; the predictive is the divergence of the predictive score.

    With :math:`\bar p = \mathrm{mean}_s\, p_s` and shares :math:`\pi_s = p_s / \sum_t p_t`,
    :math:`\Delta \bar p / \bar p = \sum_s \pi_s (\nabla\cdot s_s + |s_s|^2)` and
    :math:`\nabla\cdot \bar s = \Delta \bar p / \bar p - |\bar s|^2` with
    :math:`\bar s = \sum_s \pi_s s_s`.
    """
    lower, upper = _band(divergences, band)
    pw = _predictive_weights(log_densities)
    mean_score = np.einsum("sn,snd->nd", pw, scores)
    laplacian_over_p = np.einsum("sn,sn->n", pw, divergences + np.sum(scores**2, axis=-1))
    return ScoreSummary(mean=divergences.mean(axis=0), std=divergences.std(axis=0), lower=lower, upper=upper,
                        predictive=laplacian_over_p - np.sum(mean_score**2, axis=-1), band=band)


def summarize_scores(scores, log_densities, band: float = 0.9) -> ScoreSummary:
    """Summaries over draws of scores ``(S, n, d)`` with log densities ``(S, n)``."""
    lower, upper = _band(scores, band)
    predictive = np.einsum("sn,snd->nd", _predictive_weights(log_densities), scores)
    return ScoreSummary(mean=scores.mean(axis=0), std=scores.std(axis=0), lower=lower,
                        upper=upper, predictive=predictive, band=band)


class ChainDraws(NamedTuple):
    """Stored draws with their ``(chain, draw)`` axes, as :func:`thin_draws` takes them."""

    weights: np.ndarray
    means: np.ndarray
    cov_chol: np.ndarray


def thin_draws(posterior, max_draws: int, chain_weights=None):
    """At most ``max_draws`` draws, evenly thinned within each chain, chains merged.

    ``chain_weights`` ``(chains,)`` (stacking, :mod:`kgmm_bayes.bayes.stacking`): each chain gives
    draws in proportion to its weight, so the merged draws sample the weighted mixture of the
    chains; ``None``: every chain gives the same number.
    """
    from .stacking import draw_allocation, draw_picks

    chains, draws = posterior.weights.shape[:2]
    per_chain = max(1, min(draws, max_draws // chains))
    takes = [per_chain] * chains if chain_weights is None else draw_allocation(chain_weights, per_chain * chains, draws)
    chain_idx, draw_idx = draw_picks(takes, draws)

    def take(a):
        return np.asarray(a)[chain_idx, draw_idx]
    return take(posterior.weights), take(posterior.means), take(posterior.cov_chol)


def _pooled(draws):
    """The average of S mixtures of K components as one mixture of S*K components, weights ``w_sk / S``."""
    weights, means, cov_chol = draws
    d = means.shape[-1]
    return weights.reshape(-1) / weights.shape[0], means.reshape(-1, d), cov_chol.reshape(-1, d, d)


def predictive_score_fn(draws, x):
    """Score of the posterior-predictive density ``mean_s p_s(x)`` at ``x`` ``(n, d)``.

    The average of S mixtures of K components is one mixture of S*K
    components with weights ``w_sk / S``, so its score is closed form.
    """
    score, _ = mixture_score(*_pooled(draws), x)
    return score


def evenly_spaced_draws(draws, count: int = 0) -> tuple:
    """``count`` of the draws ``(S, ...)``, evenly spaced (all of them for ``count`` 0 or at least S): the draws
    the ``"mixture"`` drift pools (``[langevin] mixture_draws``)."""
    draws = tuple(np.asarray(a) for a in draws)
    if 0 < count < len(draws[0]):
        picks = evenly_spaced(len(draws[0]), count)
        draws = tuple(a[picks] for a in draws)
    return draws


def predictive_drift(draws, dtype=jnp.float32, count: int = 0):
    """``(drift_fn, drift_params)`` of the posterior-predictive score for a Langevin run.

    The same function as :func:`predictive_score_fn`, with the pooled S*K-component
    mixture's :class:`ScoreCoefficients` computed once (in the draws'
    precision, then cast to ``dtype``), so each step is two dense matrix products.
    ``count > 0``: only that many of the draws, evenly spaced (``[langevin] mixture_draws``): each step
    costs S*K components.
    """
    return coefficient_score, score_coefficients(*_pooled(evenly_spaced_draws(draws, count)), dtype=dtype)


def band_with_bias(summary: ScoreSummary, squared_bias) -> ScoreSummary:
    """``summary``'s band, each half-width at least the local bias ``beta = sqrt(squared_bias)`` times ``z``,
    the normal quantile of the band (``squared_bias`` per point and coordinate, e.g.
    :meth:`~kgmm_bayes.bayes.score_matching.BiasField.squared`); ``std`` at least ``beta``.

    The coarsened posterior's band already carries the score's squared bias averaged over the data
    (:mod:`kgmm_bayes.bayes.coarsening`); where the bias is concentrated (a Gaussian mixture's tails on a
    quartic potential) the band is widened to it there, and left alone where it is already wider."""
    from scipy.stats import norm

    beta = np.sqrt(np.maximum(np.asarray(squared_bias, np.float64), 0.0))
    half = norm.ppf(0.5 + 0.5 * summary.band) * beta
    return summary._replace(std=np.maximum(summary.std, beta),
                            lower=np.minimum(summary.lower, summary.mean - half),
                            upper=np.maximum(summary.upper, summary.mean + half))


def band_around(summary: ScoreSummary, center, extra_sd) -> ScoreSummary:
    """The posterior band of ``summary`` moved onto ``center`` (e.g. the interpolant, which the
    reduced-order model uses) and widened by an independent error of standard deviation ``extra_sd``
    (per coordinate): each half-width ``h`` becomes ``sqrt(h^2 + (z extra_sd)^2)`` with ``z`` the
    normal quantile of the band, and ``std`` becomes ``sqrt(std^2 + extra_sd^2)``."""
    from scipy.stats import norm

    z = norm.ppf(0.5 + 0.5 * summary.band)
    extra = (z * np.asarray(extra_sd)) ** 2
    center = np.asarray(center)
    return ScoreSummary(mean=center, std=np.sqrt(summary.std**2 + np.asarray(extra_sd) ** 2),
                        lower=center - np.sqrt((summary.mean - summary.lower) ** 2 + extra),
                        upper=center + np.sqrt((summary.upper - summary.mean) ** 2 + extra),
                        predictive=summary.predictive, band=summary.band)
