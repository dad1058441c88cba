"""The fitted result of a study, for notebooks and the ``score`` command."""
from __future__ import annotations

import json
import os
from typing import Any, NamedTuple, Optional

import jax.numpy as jnp
import numpy as np

from .data import InputError, ZScore
from .score import ScoreSummary, coefficient_score, mixture_score, score_coefficients, score_draws, summarize_scores

__all__ = ["BayesianKGMM", "load_result", "thin_draws", "predictive_score_fn", "predictive_drift"]


def thin_draws(posterior, max_draws: int):
    """At most ``max_draws`` draws, evenly thinned within each chain, chains merged."""
    chains, draws = posterior.weights.shape[:2]
    per_chain = max(1, min(draws, max_draws // chains))
    idx = np.linspace(0, draws - 1, per_chain).round().astype(int)

    def take(a):
        a = a[:, idx]
        return a.reshape((-1,) + a.shape[2:])
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


def predictive_drift(draws, dtype=jnp.float32):
    """``(drift_fn, drift_params)`` of the posterior-predictive score for a Langevin run.

    The same function as :func:`predictive_score_fn`, with the pooled S*K-component
    mixture's :class:`~kgmm_bayes.score.ScoreCoefficients` computed once (in the draws'
    precision, then cast to ``dtype``), so each step is two dense matrix products.
    """
    return coefficient_score, score_coefficients(*_pooled(tuple(np.asarray(a) for a in draws)), dtype=dtype)


class BayesianKGMM(NamedTuple):
    """A fitted Bayesian KGMM: posterior, score summaries, interpolant, reduced-order model.

    Scores from :meth:`score` are in physical units; everything stored is in
    z-scored coordinates with ``zscore`` to convert.
    """

    spec: Any
    zscore: ZScore
    inference_data: Any  # arviz.InferenceData
    partition: Any
    target_summary: Optional[ScoreSummary]  # at the score-target points, z-scored
    interpolant: Any
    rom_samples: np.ndarray  # (n, d) physical units
    metrics: dict
    out_dir: Optional[str]
    draws: tuple  # (weights, means, cov_chol) of the draws used for scores

    def _points(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        d = len(self.zscore.mean)
        if x.ndim == 1 and d == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != d:
            raise InputError(f"points must have shape (n, {d}), got {np.shape(x)}")
        if not np.all(np.isfinite(x)):
            raise InputError("points hold NaN or infinite values")
        return x

    def score(self, x, band: float = 0.9) -> ScoreSummary:
        """Posterior score summary at points ``x`` ``(n, d)`` in physical units."""
        x = self._points(x)
        if not 0 < band < 1:
            raise InputError(f"band must lie strictly between 0 and 1, got {band}")
        scores, logps = score_draws(*self.draws, self.zscore.forward(x))
        summary = summarize_scores(scores, logps, band)
        std = self.zscore.std
        return ScoreSummary(mean=summary.mean / std, std=summary.std / std, lower=summary.lower / std,
                            upper=summary.upper / std, predictive=summary.predictive / std, band=band)

    def score_draws(self, x) -> np.ndarray:
        """Each posterior draw's mixture score at ``x`` ``(n, d)``: ``(draws, n, d)``, physical units."""
        scores, _ = score_draws(*self.draws, self.zscore.forward(self._points(x)))
        return np.asarray(scores) / self.zscore.std

    def interpolant_score(self, x) -> np.ndarray:
        """The interpolant's score at ``x`` ``(n, d)``, physical units."""
        z = self.zscore.forward(np.asarray(x, dtype=np.float64))
        return np.asarray(self.interpolant(jnp.asarray(z, jnp.float32)), np.float64) / self.zscore.std


def load_result(out_dir) -> BayesianKGMM:
    """Read a study's output folder (posterior, interpolant, samples, metrics)."""
    import warnings

    import arviz as az

    from .diagnostics import posterior_from_idata, zscore_from_idata
    from .interpolant import load_interpolant

    out_dir = os.fspath(out_dir)
    needed = ["posterior.nc", "interpolant.npz", "rom_samples.npy", "metrics.json"]
    if not os.path.isdir(out_dir):
        raise InputError(f"study folder {out_dir!r} does not exist")
    missing = [n for n in needed if not os.path.exists(os.path.join(out_dir, n))]
    if missing:
        raise InputError(f"study folder {out_dir!r} lacks {missing}; is it the output of 'kgmm-bayes run'?")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        idata = az.from_netcdf(os.path.join(out_dir, "posterior.nc"))
    with open(os.path.join(out_dir, "metrics.json"), encoding="utf-8") as fh:
        metrics = json.load(fh)
    w, m, L = posterior_from_idata(idata)
    return BayesianKGMM(spec=None, zscore=zscore_from_idata(idata), inference_data=idata, partition=None,
                        target_summary=None, interpolant=load_interpolant(os.path.join(out_dir, "interpolant.npz")),
                        rom_samples=np.load(os.path.join(out_dir, "rom_samples.npy"), allow_pickle=False),
                        metrics=metrics, out_dir=out_dir, draws=(w, m, L))
