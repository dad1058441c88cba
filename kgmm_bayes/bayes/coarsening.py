"""The coarsened posterior: bands that keep their promise when the mixture is not the truth.

A K-component Gaussian mixture is almost never the data's density.  The standard
posterior then concentrates on the best K-component mixture at rate ``N^-1/2`` while
its error against the truth stays: at large N its bands cover the truth less and less
(four-well: 0.90 at N = 1e3, 0.39 at 1e5).  Autocorrelated snapshots make it worse:
N correlated snapshots carry less information than the posterior believes.

Following Miller & Dunson ("Robust Bayesian inference via coarsening", JASA 2019)
the likelihood is raised to ``zeta = alpha / (alpha + N)`` (with the coreset: every
cell count times ``zeta``), so the posterior's effective sample size levels off at
``alpha``.  ``alpha`` is chosen from the data by a plug-in rule that asks the band
to be as wide as the estimate's actual error:

* ``v`` = the standard (``zeta = 1``) posterior's variance of the score at the cells,
  count-weighted; the coarsened posterior's is ``v / zeta`` (variance ~ 1 / effective N);
* the error of the estimate is its sampling variance plus its squared bias, ``v R + b^2``:

  - ``R``, the autocorrelation inflation: N correlated snapshots carry the information of
    N / R independent ones.  K-mixture fits (maximum likelihood, EM as scikit-learn's) on ``BLOCKS``
    contiguous blocks of the snapshots in time order vary R times more than fits on blocks of
    the same size drawn at random (at least 1: the ratio cancels the fits' own small-sample
    noise, which the regularised posterior does not have);
  - ``b^2``, the squared bias of the K-mixture against the truth: on each contiguous block the
    gap between the K-mixture fit and a richer reference fit (2K components where the Bayesian
    information criterion summed over the blocks prefers them to K, and then 4K where it prefers
    those to 2K; if 2K does not beat K, ``b = 0``),
    squared after averaging over blocks, less its own noise (the across-block variance of the
    gap over the number of blocks), at least 0;

* by default (``[mixture] coarsening_bound = "stein"``) the score's ``b^2`` is the larger of the
  richer mixture's and the score-matching gap of :func:`.score_matching.stein_gap` where that gap is
  significant (above 2 standard errors with 100 bumps, 3 with the ladder's other sizes): the squared
  error of the posterior-mean score projected on Gaussian bumps, measured by Stein's identity on the
  snapshots themselves (no truth needed) and cross-fitted over blocks of them in time order, so their
  noise and autocorrelation do not enter it.
  It sees what a richer mixture cannot: a mixture close to the density in likelihood whose score
  ripples (four-well: K = 16 is within 0.003 nats of the true density, its score 25% off);
* ``zeta = min(1, v / (v R + b^2))``: the coarsened posterior's variance equals the error.  (With
  ``coarsening_bound = "score_matching"``, ``zeta = min(1, v / max(v R + b^2, g))`` instead, ``g`` the
  held-out gap of a network trained by score matching, a floor on the error.)  The same ratio is
  formed for the log density at the cells (the band of the stationary PDF), and the smaller ``zeta``
  of the two is used.

With a well-specified mixture (``b = 0``) and independent snapshots (``R ~ 1``), ``zeta ~ 1``:
the standard posterior is kept (zeta above ``KEEP_STANDARD`` counts as 1).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

__all__ = ["Coarsening", "zeta_from_alpha", "alpha_from_zeta", "error_terms", "needs_variance",
           "zeta_without_variance", "posterior_score_variance", "choose_zeta", "with_gap", "significant_gap", "OFF"]

REFERENCE_FACTORS = (2, 4)  # reference mixtures: these many times K components, up while BIC prefers each ...
REG_COVAR = 1e-4  # added to covariances of the maximum-likelihood fits (z-scored units): no spikes
MIN_POINTS_PER_COMPONENT = 5  # a block's K-mixture fit needs this many snapshots per component
POINTS_PER_REFERENCE_COMPONENT = 50  # ... with at least this many snapshots of a block per component
KEEP_STANDARD = 0.95  # zeta above this: the band would widen by < 2.6%; the standard posterior is kept
BLOCKS = 4  # contiguous blocks of the snapshots: independent fits whose spread is the sampling variance
MAX_BLOCK = 50_000  # snapshots per block used by the maximum-likelihood fits


class Coarsening(NamedTuple):
    """How the posterior was coarsened; ``zeta = 1`` is the standard posterior.

    The variances and squared biases are count-weighted means over the cells, in z-scored
    units, for the score (summed over coordinates) and for the log density.
    """

    method: str  # "auto", "fixed" or "off"
    zeta: float
    alpha: float  # effective sample size at which the posterior levels off (inf: none)
    posterior_variance: float = math.nan  # v: the standard posterior's variance of the score
    autocorrelation_inflation: float = math.nan  # R: the fit's variance over that of independent snapshots
    squared_bias: float = math.nan  # of the K-mixture's score against the reference's
    posterior_variance_log_density: float = math.nan  # the same three for the log density
    autocorrelation_inflation_log_density: float = math.nan
    squared_bias_log_density: float = math.nan
    reference_components: int = 0
    limited_by: str = ""  # "score" or "log density": which asked for the smaller zeta
    score_matching_gap: float = math.nan  # g before its noise margin: H(posterior mean) - H(reference)
    score_matching_se: float = math.nan  # its standard error
    score_matching_bound: float = math.nan  # g = max(gap - se, 0), a lower bound on the score's squared error
    bound_used: bool = False  # whether the gap entered zeta ([mixture] coarsening_bound "stein" / "score_matching")
    # the gap's reference: "bumps" (the best linear correction by Gaussian bumps, cross-fitted over blocks;
    # enters as a squared bias where significant) or "network" (held-out, a floor on the error)
    score_matching_reference: str = ""
    score_matching_basis: int = 0  # the bumps' gap: bumps per coordinate of the basis the ladder chose
    score_matching_threshold: float = math.nan  # ... and the standard errors it had to exceed to be significant
    # ... and the posterior mean's own projected sampling variance added back to it (included in the gap)
    score_matching_correction: float = math.nan
    # "standard posterior": v from the standard posterior's draws; "kept posterior x zeta": zeta needed no v
    # (no bias, no floor), so only the kept posterior was sampled and v is zeta times its variance; "first
    # posterior x its zeta": that posterior (at 1 / R) gave v, then the bumps' bias asked for a smaller zeta
    variance_from: str = "standard posterior"
    def to_json(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self._asdict().items()}


OFF = Coarsening(method="off", zeta=1.0, alpha=math.inf)


def zeta_from_alpha(alpha: float, n: int) -> float:
    return 1.0 if not math.isfinite(alpha) else float(alpha / (alpha + n))


def alpha_from_zeta(zeta: float, n: int) -> float:
    return math.inf if zeta >= 1.0 else float(zeta * n / (1.0 - zeta))


@functools.cache
def _jitted_mixture_score():
    """:func:`~kgmm_bayes.bayes.score.mixture_score` compiled: one program per shape (the fits pad K), instead of one per
    operation and K when run op by op (about 2.5 s of the default study's error terms)."""
    import jax

    from .score import mixture_score

    return jax.jit(mixture_score)


def _fit_scores(blocks, k: int, points, seed: int, padded: int = 0) -> list:
    """For each of ``blocks`` (snapshots ``(B, N, d)``, blocks of one size): score ``(M, d)`` and log density
    ``(M, 1)`` at ``points``, and the BIC on the block, of a maximum-likelihood K-component mixture fitted to it
    (:func:`~kgmm_bayes.bayes.em.fit_mixtures`: scikit-learn's ``GaussianMixture`` with full covariances, k-means++
    seeds at ``random_state = seed``, compiled; every block at once), as :func:`_fitted_scores` evaluates them."""
    from .em import fit_mixtures

    fits = fit_mixtures(blocks, k, seed, reg_covar=REG_COVAR, max_iter=300)
    return [_fitted_scores(w, m, c, bic, points, padded)
            for w, m, c, bic in zip(fits.weights, fits.means, fits.covariances, fits.bic)]


def _fitted_scores(weights, means, covariances, bic: float, points, padded: int = 0) -> tuple:
    """``(score (M, d), log density (M, 1), bic)`` at ``points`` of the mixture ``(weights (K,), means (K, d),
    covariances (K, d, d))``.  ``padded`` (at least K): evaluated with that many components, the extra ones of weight
    0 (they add nothing), so that fits of different K share one compiled program."""
    import jax.numpy as jnp

    k, d = np.shape(means)
    extra = max(int(padded) - k, 0)
    weights = np.concatenate([weights, np.zeros(extra)])
    means = np.concatenate([means, np.zeros((extra, d))])
    chol = np.concatenate([np.linalg.cholesky(covariances), np.broadcast_to(np.eye(d), (extra, d, d))])
    score, logp = _jitted_mixture_score()(jnp.asarray(weights), jnp.asarray(means), jnp.asarray(chol),
                                          jnp.asarray(points))
    return np.asarray(score, np.float64), np.asarray(logp, np.float64)[:, None], float(bic)


def error_terms(z, k: int, points, counts, seed: int = 0, blocks: int = BLOCKS, ladder: bool = True) -> dict:
    """Autocorrelation inflation and squared bias of the K-mixture's score and log density at
    ``points`` (count-weighted means over points, summed over coordinates), from ``blocks`` blocks of
    the snapshots ``z`` ``(N, d)`` in their time order (see the module docstring).

    Returns ``{"score": (inflation, bias2), "log density": (inflation, bias2), "reference": K_ref}``:
    the inflation is the across-block variance of K-mixture fits on contiguous blocks over that on
    blocks of the same size drawn at random (both maximum likelihood, so their small-sample noise
    cancels in the ratio), at least 1; ``K_ref = 0``: no richer mixture is preferred by BIC, the
    biases are 0.  The richer mixtures are a ladder (:data:`REFERENCE_FACTORS` times K): each is fitted only where
    BIC preferred the one before it (the first to K).  ``ladder = False``: every one is fitted and BIC takes the
    best of those that beat K (the rule before the ladder; the same terms unless 2K loses to K and 4K beats it;
    ``benchmarks/bench_posterior_overheads.py`` times both).
    """
    z = np.asarray(z, np.float64)
    step = len(z) // blocks
    size = min(step, MAX_BLOCK)
    if size < MIN_POINTS_PER_COMPONENT * k:  # too few snapshots per block to fit K components: no evidence
        return {"reference": 0, "score": (1.0, 0.0), "log density": (1.0, 0.0)}
    contiguous = [z[j * step:j * step + size] for j in range(blocks)]
    shuffled = z[np.random.default_rng(seed).permutation(len(z))]
    scattered = [shuffled[j * step:j * step + size] for j in range(blocks)]
    w = np.asarray(counts, np.float64)
    w = w / w.sum()

    def mean_sq(values):  # count-weighted mean over points of the squared norm over coordinates
        return float(np.sum(w * np.sum(values ** 2, axis=-1)))

    def spread(fits):  # count-weighted mean of the across-block variance (unbiased, ddof = 1)
        return float(np.sum(w * np.sum(np.var(fits, axis=0, ddof=1), axis=-1)))

    references = []  # the richer mixtures tried, in REFERENCE_FACTORS order
    for factor in REFERENCE_FACTORS:
        k_ref = min(factor * k, size // POINTS_PER_REFERENCE_COMPONENT)
        if k_ref > k and k_ref not in references:
            references.append(k_ref)
    _jitted_mixture_score()
    padded = max([k, *references])  # every fit evaluated with as many components: one compiled program

    def fitted(jobs):  # [(block, K)]: the fits of each K at once (em.fit_mixtures), in the jobs' order
        done = [None] * len(jobs)
        for kk in dict.fromkeys(kk for _, kk in jobs):
            at = [i for i, (_, ki) in enumerate(jobs) if ki == kk]
            for i, fit in zip(at, _fit_scores(np.stack([jobs[i][0] for i in at]), kk, points, seed, padded=padded)):
                done[i] = fit
        return done

    # K on both kinds of blocks and the first reference on the contiguous ones at once; each further reference
    # only where BIC preferred the one before it (a ladder: on Lorenz-63, K = 32, BIC prefers 32 to 64 by 11,000
    # summed over the blocks, and the four 128-component fits were half of the fits' work, 11.9 s against 5.8 s)
    first = references if not ladder else references[:1]
    done = fitted([(part, k) for part in contiguous + scattered] + [(part, r) for r in first for part in contiguous])
    fits, iid_fits = done[:blocks], done[blocks:2 * blocks]
    # the reference: the richer mixture that BIC prefers on the blocks; none preferred to K: no measurable bias
    best_k, best_bic, best = k, sum(f[2] for f in fits), None
    for j, k_ref in enumerate(references):
        ref = done[(2 + j) * blocks:(3 + j) * blocks] if j < len(first) else \
            fitted([(part, k_ref) for part in contiguous])
        bic = sum(f[2] for f in ref)
        if bic < best_bic:
            best_k, best_bic, best = k_ref, bic, ref
        elif ladder:  # BIC prefers the smaller mixture: no richer one is tried
            break
    out = {"reference": best_k if best is not None else 0}
    for name, col in (("score", 0), ("log density", 1)):
        a = np.stack([f[col] for f in fits])  # (blocks, M, q)
        iid = spread(np.stack([f[col] for f in iid_fits]))
        inflation = max(1.0, spread(a) / iid) if iid > 0 else 1.0
        bias2 = 0.0
        if best is not None:
            gap = a - np.stack([f[col] for f in best])
            bias2 = max(mean_sq(gap.mean(axis=0)) - spread(gap) / blocks, 0.0)  # the mean gap's square, less its noise
        out[name] = (inflation, bias2)
    return out


def posterior_score_variance(posterior_scores, counts) -> float:
    """Count-weighted mean over cells of the score's posterior variance, summed over coordinates."""
    w = np.asarray(counts, np.float64)
    return float(np.sum(w / w.sum() * np.sum(np.asarray(posterior_scores, np.float64).var(axis=0), axis=1)))


def significant_gap(score_gap) -> float:
    """The bumps' gap (:func:`~.score_matching.stein_gap`) where it exceeds its basis' threshold
    (``score_gap.threshold`` standard errors), else 0: a squared bias of the score that the data show."""
    if score_gap is None or not score_gap.gap > score_gap.threshold * score_gap.se:
        return 0.0
    return float(score_gap.gap)


def needs_variance(terms: dict, use_gap: bool = False) -> bool:
    """Whether ``zeta`` depends on the standard posterior's variance ``v``: only through a squared bias
    or the score-matching floor.  Without either, ``zeta = 1 / R`` (the autocorrelation alone), so the
    coarsened posterior can be sampled straight away."""
    return bool(use_gap) or any(terms[name][1] > 0 for name in ("score", "log density"))


def _ratios(v: dict, terms: dict, floor: dict) -> dict:
    """``min(1, v / max(v R + b^2, g))`` for the score and the log density; exactly ``1 / R`` where
    ``b^2 = 0`` and there is no floor (``v`` cancels)."""
    ratios = {}
    for name in ("score", "log density"):
        inflation, bias2 = terms[name]
        if bias2 <= 0 and floor[name] <= 0:
            ratios[name] = min(1.0, 1.0 / inflation)
            continue
        error = max(v[name] * inflation + bias2, floor[name])
        ratios[name] = 1.0 if error <= 0 or not math.isfinite(error) else min(1.0, v[name] / error)
    return ratios


def _kept(zeta: float) -> float:
    """``zeta``, or 1 (the standard posterior kept) above :data:`KEEP_STANDARD`."""
    return 1.0 if zeta > KEEP_STANDARD else float(zeta)


def zeta_without_variance(terms: dict) -> float:
    """``zeta`` when :func:`needs_variance` is false: the smaller ``1 / R``, 1 above ``KEEP_STANDARD``."""
    return _kept(min(min(1.0, 1.0 / terms[name][0]) for name in ("score", "log density")))


def choose_zeta(posterior_scores, posterior_log_densities, points, counts, z, k: int, seed: int = 0,
                score_gap=None, use_gap: bool = True, snapshots: int | None = None, terms: dict | None = None,
                tempered: float = 1.0, gap_as_bias: bool = False) -> Coarsening:
    """The plug-in ``zeta = v / (v R + b^2)``, the smaller for the score and for the log density, from
    the standard posterior's draws at the cells ``points`` ``(M, d)`` (scores ``(S, M, d)``, log
    densities ``(S, M)``) with ``counts`` ``(M,)``, and the snapshots ``z`` ``(N, d)`` in time order.
    ``score_gap``: a :class:`~.score_matching.FisherGap`, reported; with ``use_gap`` the score's error is
    then at least its bound. ``snapshots``: the data's size N (default ``len(z)``; more when ``z`` is a
    sample of the data, as in a streamed study).  ``terms``: :func:`error_terms`, when already computed.
    ``tempered``: the ``zeta`` the draws were sampled at (a coarsened posterior's variance is ``v / zeta``,
    so ``v`` is ``tempered`` times the draws' variance).  ``gap_as_bias``: ``score_gap`` is the bumps' gap
    (:func:`~.score_matching.stein_gap`), used, where significant (:func:`significant_gap`), as the score's
    squared bias if larger than the richer mixture's; otherwise (a network's gap) its bound is a floor."""
    if terms is None:
        terms = error_terms(z, k, points, counts, seed)
    floor = {"score": score_gap.bound if score_gap is not None and use_gap and not gap_as_bias else 0.0,
             "log density": 0.0}
    bumps_larger = gap_as_bias and use_gap and significant_gap(score_gap) > terms["score"][1]
    if bumps_larger:  # the bumps see more bias than the richer mixture
        terms = dict(terms, score=(terms["score"][0], significant_gap(score_gap)))
    v = {"score": tempered * posterior_score_variance(posterior_scores, counts),
         "log density": tempered * posterior_score_variance(np.asarray(posterior_log_densities)[..., None], counts)}
    ratios = _ratios(v, terms, floor)
    limited_by = min(ratios, key=ratios.get)
    zeta = _kept(ratios[limited_by])
    choice = Coarsening(method="auto", zeta=float(zeta), alpha=alpha_from_zeta(zeta, len(z) if snapshots is None else snapshots),
                      posterior_variance=v["score"], autocorrelation_inflation=terms["score"][0],
                      squared_bias=terms["score"][1], posterior_variance_log_density=v["log density"],
                      autocorrelation_inflation_log_density=terms["log density"][0],
                      squared_bias_log_density=terms["log density"][1],
                      reference_components=int(terms["reference"]), limited_by=limited_by if zeta < 1 else "",
                      variance_from="standard posterior" if tempered == 1.0 else "kept posterior x zeta")
    used = bumps_larger if gap_as_bias else use_gap
    return choice if score_gap is None else with_gap(choice, score_gap, used=used,
                                                     reference="bumps" if gap_as_bias else "network")


def with_gap(choice: Coarsening, score_gap, used: bool = False, reference: str = "bumps") -> Coarsening:
    """``choice`` with the score-matching gap reported (``score_gap``: a FisherGap, or ``None``:
    not measured); ``used``: whether it entered ``zeta``; ``reference``: "bumps" or "network"."""
    if score_gap is None:
        return choice
    return choice._replace(score_matching_gap=score_gap.gap, score_matching_se=score_gap.se,
                           score_matching_bound=score_gap.bound, bound_used=bool(used),
                           score_matching_reference=reference, score_matching_basis=int(score_gap.basis),
                           score_matching_threshold=float(score_gap.threshold),
                           score_matching_correction=float(score_gap.correction))
