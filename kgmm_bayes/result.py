"""The fitted result of a study: the object a notebook works with.

:class:`BayesianKGMM` holds the posterior draws, the interpolant, the reduced-order
model's samples, the spec, the partition and the data, and evaluates in physical units,
each with its posterior band: the score (:meth:`~BayesianKGMM.score`), the log density
(:meth:`~BayesianKGMM.log_density`) and the divergence of the score
(:meth:`~BayesianKGMM.divergence`); :meth:`~BayesianKGMM.simulate` reruns the Langevin
model, alone or as a posterior ensemble.  :func:`kgmm_bayes.load_result` reads one back
from its output folder.
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ._picks import evenly_spaced
from .bayes.correction import corrected_drift, corrected_members, model_score_band, theta_draws
from .bayes.score import (
    ScoreSummary,
    band_around,
    band_with_bias,
    field_draws,
    physical_draws,
    predictive_drift,
    score_draws,
    summarize_divergences,
    summarize_log_densities,
    summarize_scores,
)
from .data.labelled import variable_names
from .data.zscore import ZScore
from .errors import InputError
from .rom.ensemble import mixture_members, simulate_ensemble
from .rom.langevin import initial_particles, simulate_langevin

__all__ = ["BayesianKGMM", "score_chunk"]

SCORE_CHUNK = 4096  # points per score evaluation at most (a power of two)
SCORE_CHUNK_ELEMENTS = 2**22  # and draws * chunk * K * d at most: the (S, chunk, K, d) float64 intermediates
DRIFTS = ("interpolant", "mixture")


class BayesianKGMM(NamedTuple):
    """A fitted Bayesian KGMM: posterior, score summaries, interpolant, reduced-order model.

    Evaluations (:meth:`score`, :meth:`log_density`, :meth:`divergence`, :meth:`simulate`)
    take and return physical units; what is stored is in z-scored coordinates, with
    ``zscore`` to convert.  ``data`` holds ``train`` and ``reference`` snapshots ``(n, d)``
    in physical units (read lazily from their source for a loaded result), or is ``None``.
    """

    spec: Any  # kgmm_bayes.Spec as fitted (with the chosen number of components)
    zscore: ZScore
    inference_data: Any  # arviz.InferenceData
    partition: Any  # kgmm_bayes.partition.Partition (z-scored), or None for folders of older versions
    target_summary: Optional[ScoreSummary]  # at the score-target points, z-scored
    interpolant: Any
    rom_samples: np.ndarray  # (n, d) physical units
    metrics: dict
    out_dir: Optional[str]
    draws: tuple  # (weights, means, cov_chol) of the draws used for scores
    data: Any = None  # .train, .reference (n, d) physical units, .source; None if not kept
    score_bias: Any = None  # the posterior mean's local error field (BiasField, z-scored), widening score bands
    # (weights, means, cov_chol) of the first posterior where the coarsening sampled two: the draws the study's
    # model drift came from (the interpolant's targets, the "mixture" drift); None: ``draws``
    model_draws: Any = None
    # the model score's score-matching correction where applied (kgmm_bayes.bayes.correction.ScoreCorrection): the
    # interpolant learnt it; the "mixture" drift adds it
    correction: Any = None

    @property
    def drift_draws(self) -> tuple:
        """The draws the study's model drift came from: ``model_draws``, or ``draws`` where one posterior was
        sampled."""
        return self.draws if self.model_draws is None else self.model_draws

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

    def score(self, x, band: float = 0.9, chunk: Optional[int] = None, drift: str = "mixture") -> ScoreSummary:
        """Posterior score summary at points ``x`` ``(n, d)`` in physical units.

        ``mean``, ``std``, ``lower``/``upper`` (equal-tailed ``band``) over the draws' scores,
        and ``predictive``: the score of the posterior-predictive density.

        ``drift="interpolant"``: the band of what an interpolant-driven reduced-order model
        uses: centred on the interpolant, each half-width widened by its held-out error
        (``metrics["interpolant"]["heldout_rms_error"]``, measured at training snapshots the
        network did not see), added in quadrature (:func:`kgmm_bayes.bayes.score.band_around`).

        A study with the default coarsening keeps its posterior mean's local error field
        (``score_bias``, :class:`~kgmm_bayes.bayes.score_matching.BiasField`): each half-width is then at
        least ``z`` times that local bias (:func:`~kgmm_bayes.bayes.score.band_with_bias`), before the
        interpolant's error is added for ``drift="interpolant"``.

        Where the study applied a score-matching correction to the posterior-mean score (``correction``, which
        the model's drift carries), the band is that of the corrected score: moved by the correction at ``x``
        (``mean`` and ``predictive``), each half-width of the draws' band widened in quadrature by the correction's
        own sampling error, in the local bias's place (:func:`~kgmm_bayes.bayes.correction.model_score_band`), and
        before the interpolant's error.

        Evaluated ``chunk`` points at a time (default :func:`score_chunk`), each chunk
        summarised on its own (every summary is per point), so memory stays bounded
        for any ``n`` and the result equals a single evaluation of all points.
        """
        x = self._points(x)
        if not 0 < band < 1:
            raise InputError(f"band must lie strictly between 0 and 1, got {band}")
        if drift not in DRIFTS:
            raise InputError(f"drift must be one of {DRIFTS}, got {drift!r}")
        error = None
        if drift == "interpolant":
            self._network()
            error = (self.metrics or {}).get("interpolant", {}).get("heldout_rms_error")
            if error is None or None in error:
                raise InputError("this result has no held-out interpolant error (metrics of an older version): "
                                 "no interpolant band")
        std = self.zscore.std
        parts = [summarize_scores(s, lp, band) for s, lp in self._blocks(x, chunk)]
        quantiles = _joined(parts, (x.shape[1],), band, divisor=std)

        def widen(q):  # at least the local bias wide, as the study's band (band_with_bias)
            if self.score_bias is None:
                return q
            return band_with_bias(q, self.score_bias.squared(self.zscore.forward(x)) / np.square(std))

        summary = model_score_band(quantiles, widen, self.correction, self.zscore.forward(x), std)
        if error is None:
            return summary
        return band_around(summary, self.interpolant_score(x), np.asarray(error, np.float64) / std)

    def score_draws(self, x, chunk: Optional[int] = None) -> np.ndarray:
        """Each posterior draw's mixture score at ``x`` ``(n, d)``: ``(draws, n, d)``, physical units.

        The result itself takes ``draws * n * d * 8`` bytes, so memory grows with ``n``
        here; the evaluation runs in chunks as :meth:`score` does.  For summaries over
        many points use :meth:`score`, whose memory is bounded.
        """
        x = self._points(x)
        blocks = [s for s, _ in self._blocks(x, chunk)]
        scores = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(self.draws[0]), 0, x.shape[1]))
        return scores / self.zscore.std

    def _chunks(self, x, chunk: Optional[int], evaluate):
        """``evaluate(block)`` chunk by chunk of the points ``x`` (each output's axis 1 is the points),
        trimmed to the real points.  Every chunk is padded to the same size with copies of its first
        point, so the jitted evaluation compiles once and the padding's values stay finite."""
        chunk = score_chunk(len(x), self.draws) if chunk is None else int(chunk)
        if chunk < 1:
            raise InputError(f"chunk must be a positive integer, got {chunk}")
        for start in range(0, len(x), chunk):
            block = x[start:start + chunk]
            m = len(block)
            if m < chunk:
                block = np.concatenate([block, np.repeat(block[:1], chunk - m, axis=0)])
            yield tuple(a[:, :m] for a in evaluate(block, chunk))

    def _blocks(self, x, chunk: Optional[int] = None):
        """``(scores (S, m, d), log densities (S, m))`` of the draws (z-scored), chunk by chunk of ``x`` (physical)."""
        draws = tuple(jnp.asarray(a) for a in self.draws)
        return self._chunks(self.zscore.forward(x), chunk, lambda block, n: score_draws(*draws, block, chunk=n))

    def interpolant_score(self, x) -> np.ndarray:
        """The interpolant's score at ``x`` ``(n, d)``, physical units."""
        network = self._network()
        z = self.zscore.forward(self._points(x))
        return np.asarray(network(jnp.asarray(z, jnp.float32)), np.float64) / self.zscore.std

    def _network(self):
        """The interpolant; :class:`InputError` where the study trained none (``[interpolant] train``)."""
        if self.interpolant is None:
            raise InputError("this study trained no interpolant (its model's drift is the mixture score; "
                             "[interpolant] train = 'always' trains one): use drift='mixture'")
        return self.interpolant

    def _summary(self, x, band, chunk, summarize) -> ScoreSummary:
        """``summarize(scores, log densities, divergences)`` of the draws in physical coordinates, chunk by chunk."""
        x = self._points(x)
        if not 0 < band < 1:
            raise InputError(f"band must lie strictly between 0 and 1, got {band}")
        draws = tuple(jnp.asarray(a) for a in physical_draws(self.draws, self.zscore.mean, self.zscore.std))
        parts = [summarize(*fields) for fields in
                 self._chunks(x, chunk, lambda block, n: field_draws(*draws, block, chunk=n))]
        return _joined(parts, (), band)

    def log_density(self, x, band: float = 0.9, chunk: Optional[int] = None) -> ScoreSummary:
        """Posterior summary of ``log p(x)`` at ``x`` ``(n, d)``, physical units (a density in ``x``).

        ``mean``, ``std``, ``lower``/``upper`` (equal-tailed ``band``) over the draws' log
        densities, and ``predictive``: the log of the posterior-predictive density
        ``mean_s p_s(x)``.  Each draw's mixture is normalised, so ``exp`` of it integrates to 1.
        """
        return self._summary(x, band, chunk, lambda s, lp, dv: summarize_log_densities(lp, band))

    def divergence(self, x, band: float = 0.9, chunk: Optional[int] = None) -> ScoreSummary:
        """Posterior summary of the score's divergence ``div s(x) = laplacian log p(x)`` at ``x`` ``(n, d)``,
        physical units; ``predictive``: the divergence of the posterior-predictive density's score."""
        return self._summary(x, band, chunk, lambda s, lp, dv: summarize_divergences(dv, s, lp, band))

    @property
    def variables(self) -> tuple:
        """The variables' names: the spec's ``[data] variables`` (an xarray input's variable
        coordinate), or ``x0 .. x{d-1}``."""
        return variable_names(getattr(getattr(self.spec, "data", None), "variables", ()), len(self.zscore.mean))

    def dataset(self):
        """The result's arrays that have natural coordinates, as an ``xarray.Dataset``.

        ``rom_samples`` ``(sample, variable)``; with a posterior ensemble in the output folder
        (``ensemble.npz``), each member's marginal PDFs ``ensemble_pdf`` ``(member, variable, point)``
        on the grid ``grid`` ``(variable, point)``, its autocorrelation functions ``ensemble_acf``
        ``(member, lag, variable)`` over ``lag`` (Langevin time), the reference's (``reference_acf``
        over ``reference_lag``, the reference's own time unit) and PDF, and the relative entropies
        ``(member, variable)``.  Physical units throughout.
        """
        import os

        import xarray as xr

        names = list(self.variables)
        ds = xr.Dataset({"rom_samples": (("sample", "variable"), np.asarray(self.rom_samples))},
                        coords={"variable": names})
        path = None if self.out_dir is None else os.path.join(self.out_dir, "ensemble.npz")
        if path is not None and os.path.exists(path):
            with np.load(path, allow_pickle=False) as f:
                ens = {k: f[k] for k in f.files}
            ds = ds.assign_coords(lag=ens["lags"], grid=(("variable", "point"), ens["grid"]))
            ds["ensemble_pdf"] = (("member", "variable", "point"), ens["pdf"])
            ds["reference_pdf"] = (("variable", "point"), ens["reference_pdf"])
            ds["ensemble_acf"] = (("member", "lag", "variable"), ens["acf"])
            ds["ensemble_relative_entropy"] = (("member", "variable"), ens["relative_entropy"])
            if "reference_acf" in ens:
                ds = ds.assign_coords(reference_lag=ens["reference_lags"])
                ds["reference_acf"] = (("reference_lag", "variable"), ens["reference_acf"])
        return ds

    def _responses_file(self) -> dict:
        import os

        path = None if self.out_dir is None else os.path.join(self.out_dir, "responses.npz")
        if path is None or not os.path.exists(path):
            raise InputError("this result has no responses.npz: the data's time was not known ([data] interval), "
                             "did not resolve the data's correlation, or [langevin] mobility = 'identity'")
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}

    def responses(self, kind: str = "impulse"):
        """The system's linear responses (fluctuation-dissipation, one estimate per posterior draw), physical
        units: an ``xarray.Dataset`` with ``mean``, ``lower``, ``upper`` over ``(lag, variable, perturbed)``;
        entry ``[t, i, j]`` is the response of ``x_i`` at time ``t`` to a unit impulse in ``x_j`` at 0.
        ``kind``: ``"impulse"``, ``"step"`` (its time integral) or ``"second"`` (of ``E[x_i^2]``)."""
        import xarray as xr

        prefix = {"impulse": "", "step": "step_", "second": "second_"}.get(kind)
        if prefix is None:
            raise InputError(f"kind must be 'impulse', 'step' or 'second', got {kind!r}")
        arrays = self._responses_file()
        dims = ("lag", "variable", "perturbed")
        return xr.Dataset({name: (dims, arrays[prefix + name]) for name in ("mean", "lower", "upper")},
                          coords={"lag": arrays["lags"], "variable": list(self.variables),
                                  "perturbed": list(self.variables)},
                          attrs={"band": float(getattr(getattr(self.spec, "score", None), "band", 0.9)),
                                 "lag": "the data's time"})

    def correlations(self):
        """Correlation matrix functions ``C_ij(tau) = corr(x_i(t + tau), x_j(t))`` of the data
        (``data``) and of the reduced-order model (``model``, where it was simulated), with the
        posterior ensemble's median and band (``model_median``, ``model_lower``, ``model_upper``) where
        the study ran one, as an ``xarray.Dataset`` over ``(lag, variable, lagged_with)``, ``lag`` in
        the data's time."""
        import xarray as xr

        arrays = self._responses_file()
        dims = ("lag", "variable", "lagged_with")
        data = {"data": (dims, arrays["data_correlation"])}
        for name in ("model", "model_median", "model_lower", "model_upper"):
            if name.replace("model", "model_correlation") in arrays:
                data[name] = (dims, arrays[name.replace("model", "model_correlation")])
        return xr.Dataset(data, coords={"lag": arrays["lags"], "variable": list(self.variables),
                                        "lagged_with": list(self.variables)})

    def simulate(self, particles: int, steps: int, dt: Optional[float] = None, drift: Optional[str] = None,
                 key=None, burn_in: int = 0, thin: int = 1, members: int = 0, x0=None,
                 box: Optional[float] = None, as_xarray: bool = False, mobility=None):
        r"""Rerun the reduced-order model :math:`dz = s(z)\,dt + \sqrt 2\,dW` (z-scored coordinates),
        or with a mobility :math:`dz = \Phi s(z)\,dt + \Sigma\,dW` in the data's time.

        Parameters
        ----------
        particles, steps, burn_in, thin : int
            Particles per model; steps kept after ``burn_in`` steps, one snapshot every ``thin``.
        dt : float, optional
            Euler-Maruyama step in the model's time (default: the spec's ``[langevin] dt``).
        drift : {"interpolant", "mixture"}, optional
            The network, or the posterior-predictive mixture score (closed form) of the spec's
            ``[langevin] mixture_draws`` draws, as the study's model pools them (the first posterior's
            draws where the study sampled two: ``model_draws``).  Default: the study's own
            (``[langevin] drift``; "interpolant" for a result without a spec).
        key : jax PRNG key or int
            Required: the run's randomness (an int is made into ``jax.random.key``).
        members : int
            0: one model. ``S > 0``: a posterior ensemble of ``S`` models, member ``s`` driven
            by draw ``s``'s own mixture score (``drift`` must be ``"mixture"``).
        x0 : array (particles, d), optional
            Starting points, physical units; default: drawn from the partition's cells by count
            (from the study's samples if the partition is not kept), with ``key``.
        box : float, optional
            Particles leaving ``|z_i| <= box`` are frozen and flagged (default: the spec's).
        as_xarray : bool
            Return an ``xarray.DataArray`` with dimensions ``([member,] time, particle, variable)``,
            ``time`` in the model's time after the burn-in.
        mobility : None, "fitted" or array (d, d)
            None: :math:`\Phi = I` (Langevin time).  "fitted": the study's fitted mobility
            (``metrics.json`` ``dynamics.mobility``; ``dt`` is then in the data's time); an array: a
            mobility in physical units (its symmetric part positive definite).

        Returns
        -------
        array ``(steps // thin, particles, d)``, or ``(members, steps // thin, particles, d)``,
        physical units.  Particles that left the box or became non-finite are NaN (a warning
        says how many).  With the study's settings and its Langevin key this reproduces
        ``rom_samples``.
        """
        if key is None:
            raise InputError("simulate needs key= (a jax.random.key or an int seed)")
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            key = jax.random.key(int(key))
        lg = getattr(self.spec, "langevin", None)
        if drift is None:
            drift = getattr(lg, "drift", "interpolant")
        if drift not in DRIFTS:
            raise InputError(f"drift must be one of {DRIFTS}, got {drift!r}")
        if dt is None:
            if lg is None:
                raise InputError("simulate needs dt= (this result has no spec to take it from)")
            dt = lg.dt
        box = (lg.box if lg is not None else 10.0) if box is None else box
        for label, value, kind in (("particles", particles, int), ("steps", steps, int), ("thin", thin, int),
                                   ("burn_in", burn_in, int), ("members", members, int),
                                   ("dt", dt, float), ("box", box, float)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer) if kind is int
                                                         else (int, float, np.integer, np.floating)):
                raise InputError(f"{label} must be a number, got {value!r}")
            if (value < 0 if label in ("burn_in", "members") else not value > 0):
                raise InputError(f"{label} must be {'>= 0' if label in ('burn_in', 'members') else 'positive'}, "
                                 f"got {value}")
        if steps < thin:
            raise InputError(f"steps ({steps}) must be at least thin ({thin})")
        if drift == "interpolant" and not members:
            self._network()
        if members and drift != "mixture":
            raise InputError("a posterior ensemble (members > 0) is driven by each draw's mixture score: "
                             "use drift='mixture'")
        if members > len(self.draws[0]):
            raise InputError(f"members must be at most the {len(self.draws[0])} posterior draws kept, got {members}")
        d = len(self.zscore.mean)
        phi = self._mobility(mobility, d)
        if phi is not None and members:
            raise InputError("mobility= is for one model (members = 0); the ensemble runs in Langevin time")
        if x0 is None:
            x0, run_key = self._start(key, int(particles))
        else:
            x0 = np.asarray(x0, dtype=np.float64)
            if x0.shape != (particles, d) or not np.all(np.isfinite(x0)):
                raise InputError(f"x0 must be finite with shape ({particles}, {d}), got {np.shape(x0)}")
            x0, run_key = self.zscore.forward(x0), key
        if members:
            picks = evenly_spaced(len(self.draws[0]), members)
            drift_fn, params = mixture_members(tuple(np.asarray(a)[picks] for a in self.draws))
            if self.correction is not None:  # each member with its own draw of the model's score correction
                drift_fn, params = corrected_members(drift_fn, params, self.correction, theta_draws(
                    self.correction, jax.random.fold_in(run_key, 1), members))
            run = simulate_ensemble(run_key, drift_fn, params, x0, dt, steps, burn_in, thin, box)
            paths = np.where(run.alive[:, None, :, None], run.samples, np.nan)
            lost = int(np.sum(~run.alive))
        else:
            drift_fn, params = ((self.interpolant.apply_fn(), self.interpolant.params) if drift == "interpolant"
                                else corrected_drift(*predictive_drift(self.drift_draws,
                                                                       count=getattr(lg, "mixture_draws", 0)),
                                                     self.correction))
            run = simulate_langevin(run_key, drift_fn, params, x0, dt, steps, burn_in, thin, box, mobility=phi)
            paths = np.where(run.alive[None, :, None], run.samples, np.nan)
            lost = int(np.sum(~run.alive))
        if lost:
            warnings.warn(f"simulate: {lost} particle path(s) left the box |z| <= {box} or became non-finite "
                          "(returned as NaN)", RuntimeWarning, stacklevel=2)
        paths = self.zscore.inverse(paths.astype(np.float64))
        if not as_xarray:
            return paths
        import xarray as xr

        dims = ("member",) * bool(members) + ("time", "particle", "variable")
        times = float(dt) * int(thin) * np.arange(1, paths.shape[-3] + 1)
        return xr.DataArray(paths, dims=dims, name="rom_paths",
                            coords={"time": times, "variable": list(self.variables)},
                            attrs={"time": "model (Langevin) time after the burn-in" if phi is None else
                                   "the data's time after the burn-in", "units": "physical"})

    def _mobility(self, mobility, d: int):
        """The mobility in z-scored coordinates (``D^-1 Phi D^-1``, ``D = diag(std)``), or None."""
        if mobility is None:
            return None
        if isinstance(mobility, str):
            dyn = (self.metrics or {}).get("dynamics") or {}
            if mobility != "fitted":
                raise InputError(f"mobility must be None, 'fitted' or a (d, d) array, got {mobility!r}")
            if not dyn.get("available"):
                raise InputError("mobility='fitted': this result has no fitted mobility: "
                                 + dyn.get("why", "no data interval"))
            mobility = dyn["mobility"]
        phi = np.asarray(mobility, np.float64)
        if phi.shape != (d, d) or not np.all(np.isfinite(phi)):
            raise InputError(f"mobility must be a finite ({d}, {d}) array, got shape {phi.shape}")
        std = np.asarray(self.zscore.std, np.float64)
        phi = phi / std[:, None] / std[None, :]
        if np.linalg.eigvalsh(phi + phi.T).min() <= 0:
            raise InputError("mobility: its symmetric part is not positive definite")
        return phi

    def _start(self, key, particles: int):
        """Starting particles (z-scored) drawn with ``key`` as the study draws them, and the key left for the noise."""
        if self.partition is not None:
            return initial_particles(key, self.partition.points, self.partition.counts, particles)
        samples = self.zscore.forward(np.asarray(self.rom_samples, np.float64))
        return initial_particles(key, samples, np.ones(len(samples)), particles)


def _joined(parts, shape: tuple, band: float, divisor=1.0) -> ScoreSummary:
    """Per-chunk summaries joined along the points (``shape``: one point's), divided by ``divisor``."""
    def field(name):
        arrays = [getattr(p, name) for p in parts]
        return (np.concatenate(arrays) if arrays else np.zeros((0,) + shape)) / divisor
    return ScoreSummary(mean=field("mean"), std=field("std"), lower=field("lower"), upper=field("upper"),
                        predictive=field("predictive"), band=band)


def score_chunk(n: int, draws) -> int:
    """Points per score evaluation: a power of two, at most :data:`SCORE_CHUNK`, with
    ``draws * chunk * K * d`` at most :data:`SCORE_CHUNK_ELEMENTS`, and no larger than
    ``n`` rounded up to a power of two (few compiled shapes, little padding)."""
    _, means, _ = draws
    s, k, d = np.shape(means)[-3:] if np.ndim(means) >= 3 else (1, 1, 1)
    chunk = max(1, min(int(SCORE_CHUNK), int(SCORE_CHUNK_ELEMENTS) // max(1, s * k * d)))
    chunk = 1 << (chunk.bit_length() - 1)
    return max(1, min(chunk, 1 << max(0, int(n) - 1).bit_length()))


