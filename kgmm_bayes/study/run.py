"""The study runner: one reduced-order model built end to end from a spec.

:func:`run_study` checks its input, takes the output folder, and runs the stages of
:mod:`kgmm_bayes.study.stages` in order: data -> (choice of K) -> partition -> posterior ->
scores -> interpolant -> Langevin model -> (posterior ensemble) -> metrics, figures, report.
One seed becomes one key, split once into named keys.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .._picks import evenly_spaced
from .._version import __version__
from ..compilation_cache import JaxWork
from ..bayes.correction import correction_arrays, model_score_band, theta_draws
from ..bayes.diagnostics import netcdf_bytes, plot_diagnostics, probe_summary
from ..bayes.score import ScoreSummary, band_around, posterior_mean_score
from ..bayes.score_matching import field_stats
from ..data.stream import StreamedData
from ..partition import BLOCK
from ..files import atomic_write_bytes, json_floats, npy_bytes, npz_bytes
from ..metrics import band_coverage, decorrelation_time, marginal_relative_entropies, weighted_score_error
from ..result import BayesianKGMM
from ..rom.interpolant import save_interpolant
from ..spec import Spec, data_interval_of, trains_interpolant, uses_mobility
from .checks import (
    SCREENING_DRAWS,
    auto_components,
    check_seed,
    check_sizes,
    data_size,
    load_user_data,
    resolved_box,
)
from .dynamics import (DYNAMICS_DRAWS, dynamics_metrics, dynamics_outputs, fit_dynamics, indirect_correction,
                       run_in_data_time, unresolved_coordinates)
from .ensemble import ensemble_stage
from .figures import plot_dynamics, plot_marginals, plot_score, plot_score_field
from .load import CORRECTION_FILE, DATA_FILE, MODEL_DRAWS_FILE, PARTITION_FILE, SCORE_BIAS_FILE
from .outputs import OutputFolder, stage_key
from .report import numerical_faults, write_report
from .stages import (
    STAGE_SCHEMA,
    SnapshotScores,
    choose_components,
    correction_check_stage,
    correction_stage,
    heldout_indices,
    interpolant_stage,
    langevin_stage,
    log,
    model_draws,
    model_drift,
    partition_stage,
    posterior_stage,
    prepare_data,
    score_stage,
    stacked_weights,
    study_keys,
)

__all__ = ["run_study"]


def posterior_plan(spec: Spec) -> str:
    """How the posterior stage samples, for the progress log: NUTS chains, or Laplace approximations at MAP optima
    (``[sampler] first_posterior`` / ``kept_posterior``; with ``[mixture] coarsening = "auto"`` a first posterior,
    then a second where the coarsening asks for one, or the kept way's where it differs from the first's)."""
    s = spec.sampler

    def way(name):
        if name == "nuts":
            return f"NUTS, {s.chains} chains x ({s.warmup} + {s.draws})"
        return f"Laplace approximations at the MAP optima of {s.map_starts} searches, {s.chains} x {s.draws} draws"

    if spec.mixture.coarsening != "auto" or s.first_posterior == s.kept_posterior:
        return way(s.kept_posterior)  # one way (coarsening "auto": one posterior or two of it)
    if s.first_posterior == "laplace":  # the kept posterior is NUTS whatever zeta the coarsening chooses
        return f"first {way('laplace')}; kept {way('nuts')}"
    return f"first {way('nuts')}; a second one, where the coarsening asks for it, {way('laplace')}"


def run_study(spec: Spec, out_dir: str | None = None, seed: int | None = None, progress: bool = False,
              force: bool = False, data=None) -> BayesianKGMM:
    """Run a study end to end and write its output folder; returns the fitted result.

    ``data``: an array ``(n, d)`` or ``(members, n, d)`` used instead of the
    spec's ``[data]`` source (see :func:`kgmm_bayes.fit`).
    """
    seed = check_seed(spec.study.seed if seed is None else seed)
    user_data = load_user_data(spec, data, progress)  # bad user data fail here, before JAX and disk
    try:
        data_hash, fitted = user_data_hash(user_data), spec
        if user_data is not None:
            n_train, d = data_size(user_data, spec.data.heldout_fraction)
            fitted = auto_components(spec, n_train, d)  # no K given: chosen from the data
            check_sizes(fitted, n_train, d)
        if out_dir is None:
            out_dir = os.path.join("kgmm-runs", spec.study.name)
        with OutputFolder(out_dir, json.dumps({"spec": spec.identity(), "seed": seed}, sort_keys=True,
                                              default=list), force=force) as out:
            return _run_stages(fitted, out, seed, user_data, data_hash, progress,
                               screening=spec.mixture.components is None and bool(fitted.mixture.select_components))
    finally:
        if isinstance(user_data, StreamedData) and user_data is not data:
            user_data.close()


def user_data_hash(user_data) -> str:
    """What names user data in stage keys: a streamed scan's digest, an array's SHA-256; "" for a built-in
    system's data (they follow from the spec's ``[data]`` and the seed, which the keys hold)."""
    if isinstance(user_data, StreamedData):
        return user_data.scan.digest
    if user_data is None:
        return ""
    return hashlib.sha256(np.ascontiguousarray(user_data).tobytes()).hexdigest()


class _Clock:
    """Wall seconds per stage, in the order the stages ran, and of the stages timed in this run how many went
    to JAX's tracing and compiling (:class:`~kgmm_bayes.compilation_cache.JaxWork`): not the posterior or
    Langevin stage or interpolant read from the cache, or the posterior taken from model selection, which keep
    their first run's seconds; a re-timed stage read from the cache (the partition, the ensemble, an interpolant
    cached before its seconds were kept) counts its loading."""

    def __init__(self):
        self.timings, self.jax, self.total_start, self.start = {}, {}, time.perf_counter(), None
        self._stage_work, self._whole_work = JaxWork(), JaxWork()

    def __call__(self, stage, seconds=None):
        work = self._stage_work.mark()
        if seconds is None and work is not None:
            self.jax[stage] = work
        self.timings[stage] = time.perf_counter() - self.start if seconds is None else seconds
        self.start = time.perf_counter()

    def begin(self):
        self._stage_work.mark()
        self.start = time.perf_counter()

    def jax_work(self) -> dict:
        """``{stage: {"tracing", "compiling", "cache_hits"}}`` with the whole run's as ``"total"`` (empty where JAX
        has no time-span events)."""
        whole = self._whole_work.mark()
        return {} if whole is None else dict(self.jax, total=whole)


def _run_stages(spec: Spec, out: OutputFolder, seed: int, user_data, data_hash: str, progress: bool,
                screening: bool = False) -> BayesianKGMM:
    """The stages of :func:`run_study` inside its locked output folder, ending with the commit;
    ``screening``: K is chosen from the data among ``select_components`` on short chains."""
    clock, cached_stages = _Clock(), []
    data_key, reference_key, partition_key, mcmc_key, train_key, langevin_key = study_keys(seed)

    clock.begin()
    log(progress, f"data: {spec.data.system or spec.data.path}")
    data = prepare_data(spec, data_key, reference_key, out, user_data=user_data)
    cells = check_sizes(spec, data.snapshots, data.train.shape[1])
    spec = resolved_box(spec, data)  # [langevin] box = "auto": from the training data's range
    z = data.zscore.forward(data.train)
    upstream = stage_key(spec.section_json("data"), seed, __version__, STAGE_SCHEMA, data_hash)
    clock("data")
    if data.stream is not None:
        clock.timings["data_pass_1"] = data.stream.scan.wall_time  # validation, moments, digest, fit subsample

    selection, best_idata = None, None
    if spec.mixture.select_components:
        clock.begin()
        spec, selection, best_cached, best_idata = choose_components(
            spec, out, partition_key, mcmc_key, z, data.zscore, cells, upstream, progress, screening=screening,
            data=data)
        clock("model_selection")

    clock.begin()
    log(progress, f"partition: {data.snapshots} snapshots -> {cells} cells, {spec.mixture.components} components")
    part, part_key = partition_stage(spec, out, partition_key, z, cells, upstream, data)
    clock("partition")
    if data.stream is not None:
        data.stream.close()  # the passes over the data are done: the cluster's workers go
    if data.cell_pass_time is not None:
        clock.timings["data_pass_2"] = data.cell_pass_time  # cells and binned marginals (cached: its first run)

    log(progress, f"posterior: {posterior_plan(spec)} on "
                  f"{len(part.points) if spec.partition.coreset else len(z)} points")
    (post, coarsening), post_key, was_cached = posterior_stage(spec, out, mcmc_key, part, z, part_key, progress)
    if best_idata is not None:  # computed (or read back) while choosing K
        was_cached = best_cached
    clock("posterior", post.wall_time if was_cached or best_idata is not None else None)
    if was_cached:
        cached_stages.append("posterior")

    fit = score_stage(spec, post, coarsening, part, data.zscore, idata=best_idata)
    # the model's drift: from the first posterior's draws where the coarsening sampled two (stages.model_draws);
    # the bands, the ensemble and the responses' bands from the kept posterior's
    drive, drive_zeta = model_draws(post, fit.draws, spec.score.max_draws)
    targets = fit.summary if drive_zeta is None else fit.summary._replace(
        mean=np.asarray(posterior_mean_score(*drive, part.points)))
    clock("score")

    # the interpolant's targets: the posterior-mean score corrected by score matching where the data support it
    scores = SnapshotScores(drive, z)  # the posterior-mean score at the training snapshots, each computed once
    fitted, correction_s, correction_cached = correction_stage(spec, out, post_key, drive, z, seed, scores)
    if spec.interpolant.correction != "off":
        clock("correction", correction_s if correction_cached else None)
        if correction_cached:
            cached_stages.append("correction")
    correction, check, interp_upstream = None, None, post_key
    dropped = stage_key(post_key, "correction dropped by its model check")  # the uncorrected network's upstream
    candidates = {}  # the interpolant drift's check: the network trained on each set of targets, by "corrected"
    if fitted is not None and fitted.applied:  # the model tried with and without it: used unless it does worse
        corrected_targets = targets._replace(mean=np.asarray(targets.mean) + fitted(part.points))
        check_upstream = (post_key, spec.langevin.drift)
        if spec.langevin.drift == "interpolant":  # the check runs the model's own drift: both networks
            log(progress, "interpolant: training on the posterior-mean score without and with the correction")
            for corrected, (goal, up, used) in ((False, (targets, dropped, None)),
                                                (True, (corrected_targets, post_key, fitted))):
                candidates[corrected] = interpolant_stage(spec, out, train_key, part, goal, up, progress,
                                                          draws=drive, z=z, correction=used, scores=scores)
            seconds = [c[3] for c in candidates.values()]
            clock("interpolant", sum(seconds) if all(c[2] for c in candidates.values()) and None not in seconds
                  else None)
            check_upstream += tuple(c[1] for c in candidates.values())
        clock.begin()
        log(progress, f"correction: {len(fitted.centres)} bumps; pilot runs of the model with and without it")
        drifts = [model_drift(spec, candidates[False][0] if candidates else None, drive),
                  model_drift(spec, candidates[True][0] if candidates else None, drive, fitted)]
        check, check_cached = correction_check_stage(spec, out, jax.random.fold_in(langevin_key, 6), part, data,
                                                     drifts, fitted, stage_key(*check_upstream))
        clock("correction_check", check.seconds if check_cached else None)
        if check_cached:
            cached_stages.append("correction_check")
        if check.kept:
            correction = fitted  # what the model uses from here on
            targets = corrected_targets
        else:
            interp_upstream = dropped

    if candidates:  # trained for the check: the one it chose
        interp, ikey, interp_cached, interp_s = candidates[correction is not None]
        if all(c[2] for c in candidates.values()):
            cached_stages.append("interpolant")
    elif trains_interpolant(spec):
        log(progress, "interpolant: training")
        interp, ikey, interp_cached, interp_s = interpolant_stage(spec, out, train_key, part, targets,
                                                                  interp_upstream, progress, draws=drive, z=z,
                                                                  correction=correction, scores=scores)
        if interp_cached:
            cached_stages.append("interpolant")
        clock("interpolant", interp_s if interp_cached else None)  # read back: the run which trained it
    else:  # the "mixture" drift: no model runs on a network ([interpolant] train = "auto"), none is trained
        # the model's upstream as the network's would be: the posterior, the correction's setting and verdict
        interp, ikey = None, stage_key("no interpolant", interp_upstream, spec.section_json("interpolant", "score"))

    dynamics, unresolved = None, []
    if uses_mobility(spec) and data.series_length is not None:
        series, interval = data.train_series(z), data_interval_of(spec.data)
        if spec.langevin.mobility == "auto":
            unresolved = unresolved_coordinates(series, interval)
        if unresolved:
            log(progress, f"dynamics: the data decorrelate within one interval in coordinates {unresolved}: "
                          "no mobility is identified, the model runs in Langevin time")
        else:
            log(progress, "dynamics: mobility and responses from the training trajectories")
            drift_fn, drift_params = model_drift(spec, interp, drive, correction)
            picks = evenly_spaced(len(fit.draws[0]), DYNAMICS_DRAWS)
            dynamics = fit_dynamics(series, interval, drift_fn, drift_params,
                                    tuple(np.asarray(a)[picks] for a in fit.draws), key=jax.random.fold_in(langevin_key, 2),
                                    corrections=None if correction is None else (correction, theta_draws(
                                        correction, jax.random.fold_in(langevin_key, 5), len(picks))))
            dynamics = indirect_correction(dynamics, jax.random.fold_in(langevin_key, 3), series, drift_fn,
                                           drift_params, spec.langevin, part.points)
            clock("dynamics")

    lg = spec.langevin
    log(progress, f"langevin: {lg.particles} particles (drift: {lg.drift}"
                  + (", fitted mobility, data time)" if dynamics is not None else ")"))

    def simulate(dyn, particles=None, subsample=1):
        if dyn is not None and dyn.time_scale != 1.0 and particles is None:
            log(progress, f"langevin: the model's clock corrected by {dyn.time_scale:.3g} to the data's")
        stage = langevin_stage(spec, out, langevin_key, part, interp, drive, ikey, progress, dynamics=dyn,
                               particles=particles, subsample=subsample, correction=correction)
        runs.append(stage)
        if particles is None:
            stages.append(stage)
        return stage.rom, stage.dt * stage.thin

    stages, runs = [], []  # the full runs; every run (a data-time pilot and any rerun for the rate too)
    if dynamics is None:
        simulate(None)
    else:
        _, dynamics = run_in_data_time(simulate, dynamics, lg.particles)
    langevin = stages[-1]
    if langevin.cached:
        cached_stages.append("langevin")
    # read back: the runs' recorded walls, the pilot's included, as the stage counted them when it ran them
    clock("langevin", sum(r.rom.wall_time for r in runs) if langevin.cached else None)

    floor = marginal_relative_entropies(data.reference_density(), data.train_density(),  # data vs data
                                        spec.metrics.grid_points)
    ensemble_metrics, members = None, None
    if spec.ensemble.members > 0:
        es = spec.ensemble
        log(progress, f"ensemble: {es.members} posterior members x {es.particles} particles (drift: {es.drift}"
                      + (", a fitted mobility each, data time)" if dynamics is not None else ")"))
        ensemble_metrics, ensemble_arrays = ensemble_stage(
            spec, out, jax.random.fold_in(langevin_key, 1), post, part, data, user_data, post_key,
            float(floor.mean()), progress, chain_weights=stacked_weights(fit.convergence), dynamics=dynamics,
            schedule=(langevin.dt, langevin.thin), series=None if dynamics is None else data.train_series(z),
            correction=correction)
        if "member_correlation" in ensemble_arrays:
            members = tuple(ensemble_arrays[k] for k in ("member_correlation", "member_decorrelation_time",
                                                         "member_mobility"))
        clock("ensemble")

    log(progress, "metrics, figures, report")
    # which posterior's draws drove the model (metrics.json langevin), with the first posterior's mixing
    drift_metrics = {"drift_posterior": "kept" if drive_zeta is None else "first",
                     "drift_posterior_zeta": float(coarsening.zeta if drive_zeta is None else drive_zeta)}
    if drive_zeta is not None:
        drift_metrics.update(drift_posterior_max_r_hat=json_floats(float(post.sample_stats["model_max_r_hat"])),
                             drift_posterior_stacked=bool(post.sample_stats["model_stacked"]),
                             drift_posterior_laplace=str(post.sample_stats.get("first_posterior", "")) == "laplace")
        if "model_newton_decrement" in post.sample_stats:  # the Laplace centres: nats above their optima, at most
            drift_metrics.update(  # (sampler.newton_refine), and how many have no optimum nearby (not refined)
                drift_posterior_newton_decrement=json_floats(float(post.sample_stats["model_newton_decrement"])),
                drift_posterior_centres_not_optima=int(post.sample_stats["model_centres_not_optima"]))
    evaluation = _evaluate(spec, seed, data, z, part, fit, interp, langevin, floor, selection, ensemble_metrics,
                           cached_stages, dynamics, members, unresolved, drive=(drive, targets.mean, drift_metrics),
                           correction=correction, scores=scores, correction_report=None if fitted is None else {
                               **fitted.to_json(), **({} if check is None else {"model_check": check.to_json()})})
    metrics, rom_phys = evaluation.metrics, evaluation.rom_samples
    if screening:
        metrics["model_selection"]["chosen_from_data"] = {
            "why": "no [mixture] components given for user data",
            "candidates": [int(k) for k in selection.elpd_loo], "screening_warmup_and_draws": SCREENING_DRAWS}
    _write_outputs(out, spec, data, part, fit, interp, evaluation, None if drive_zeta is None else drive, correction)
    if user_data is not None and spec.data.path is None:  # an array given to fit(): kept, as given
        atomic_write_bytes(out.path(DATA_FILE), npy_bytes(user_data))
    clock("metrics")
    # the total counts a streamed study's first pass, which ran before the output folder was taken
    clock.timings["total"] = time.perf_counter() - clock.total_start + clock.timings.get("data_pass_1", 0.0)
    metrics["timings"] = clock.timings
    metrics["jax_work"] = clock.jax_work()  # seconds of each timed stage spent tracing and compiling
    metrics["faults"] = numerical_faults(metrics)  # what --strict turns into a non-zero exit
    atomic_write_bytes(out.path("metrics.json"), json.dumps(metrics, indent=2).encode())
    write_report(out.path("report.md"), spec, metrics)
    final = out.commit()
    log(progress, f"done in {clock.timings['total']:.1f} s -> {final}")
    return BayesianKGMM(spec=spec, zscore=data.zscore, inference_data=fit.idata, partition=part,
                        target_summary=fit.summary, interpolant=interp, rom_samples=rom_phys,
                        metrics=metrics, out_dir=final, draws=fit.draws, data=data, score_bias=fit.score_bias,
                        model_draws=None if drive_zeta is None else drive, correction=correction)


class _Evaluation(NamedTuple):
    metrics: dict  # metrics.json, less its timings and faults
    dynamics: Optional[dict]  # responses.npz's arrays (physical units), None without the data's time
    rom_paths: Optional[np.ndarray]  # (T, particles, d) physical, one data interval apart; None without it
    rom_samples: np.ndarray  # the model's stationary samples (n, d), physical units
    relative_entropy: np.ndarray  # (d,) per marginal, NaN without samples
    interpolant_at_points: Optional[np.ndarray]  # (cells, d), z-scored; None where no interpolant is trained
    true_at_points: Optional[np.ndarray]  # (cells, d), z-scored; None without an analytic score
    model_band: ScoreSummary  # the score band at the cells of the score the model uses (z-scored; model_score_band)


def _evaluate(spec, seed, data, z, part, fit, interp, langevin, floor, selection, ensemble_metrics,
              cached_stages, dynamics=None, members=None, unresolved=(), drive=None, correction=None,
              correction_report=None, scores=None) -> _Evaluation:
    """The model against the data (and the truth where known); ``drive``: ``(draws, mean score at the cells,
    langevin metrics)`` of the posterior whose draws drove the model (:func:`~kgmm_bayes.study.stages.model_draws`;
    ``None``: the study's own draws); ``scores``: :class:`~kgmm_bayes.study.stages.SnapshotScores` of those draws
    at ``z``."""
    rom, lg, summary = langevin.rom, spec.langevin, fit.summary
    kept = rom.kept_samples()
    rom_phys = data.zscore.inverse(kept.astype(np.float64))
    if len(kept) >= 2:
        rel_ent = marginal_relative_entropies(data.reference_density(), rom_phys, spec.metrics.grid_points)
    else:  # reported, not hidden: the model has no stationary samples to compare
        rel_ent = np.full(z.shape[1], np.nan)
    # the draws the model came from and the posterior-mean score the interpolant learnt
    drive_draws, learnt_mean, drift_metrics = (fit.draws, summary.mean, {}) if drive is None else drive
    # the band of the score the model uses: the posterior's, or its draws' moved by an applied correction and widened
    # by its error
    model_band = model_score_band(fit.quantiles, lambda _: summary, correction, part.points)
    # its targets' score-matching correction (kgmm_bayes.bayes.correction), when fitted
    correction_block = {} if correction_report is None else {"correction": correction_report}
    if interp is None:
        interp_at_points = interp_band = None
        interp_metrics = {"trained": False, **correction_block,
                          "why": "no model runs on it: [langevin] drift = 'mixture' ([interpolant] train = 'auto'; "
                                 "'always' trains it)"}
    else:
        interp_at_points = np.asarray(interp(jnp.asarray(part.points, jnp.float32)), dtype=np.float64)
        interp_error, interp_relative = interpolant_heldout_error(interp, drive_draws, z, correction, scores)
        interp_band = band_around(model_band, interp_at_points, interp_error)
        interp_metrics = {"final_loss": interp.final_loss,
                          "relative_error_vs_posterior_mean": weighted_score_error(interp_at_points, learnt_mean,
                                                                                   part.counts),
                          # at held-out training snapshots (never trained on), z-scored units: the
                          # error term of the interpolant's band (result.score(x, drift="interpolant"))
                          "heldout_rms_error": json_floats(interp_error),
                          # sqrt(sum |f - s|^2 / sum |s|^2) there (relative_error_vs_posterior_mean is the
                          # count-weighted ratio at the cells, not its square root)
                          "heldout_relative_rms_error": json_floats(interp_relative),
                          **correction_block}
    metrics = {
        "study": spec.study.name, "seed": seed, "version": __version__,
        "data": {"source": data.source, "train_snapshots": int(data.snapshots),
                 "reference_snapshots": int(data.reference_snapshots), "dim": int(z.shape[1]),
                 **({} if data.stream is None else {"streamed": streamed_summary(data)})},
        "partition": {"cells": int(len(part.points)), "components": int(len(part.centroids))},
        "relative_entropy": {"per_marginal": json_floats(rel_ent), "mean": json_floats(rel_ent.mean()),
                             "data_floor_per_marginal": floor.tolist(), "data_floor_mean": float(floor.mean())},
        "posterior": fit.convergence,
        "interpolant": interp_metrics,
        "langevin": {"particles": int(lg.particles), "box": float(lg.box), "escaped": rom.escaped,
                     "non_finite": rom.non_finite,
                     "kept_samples": int(len(kept)), "drift": lg.drift,
                     **drift_metrics,
                     "mobility": "identity" if dynamics is None else "fitted",
                     # the run's schedule (with a fitted mobility: in the data's time, a snapshot per interval)
                     "dt": langevin.dt, "thin": int(langevin.thin), "steps": int(langevin.steps),
                     "dt_times_max_jacobian_eigenvalue": langevin.stiffness,
                     "particle_steps_per_second": float(lg.particles * (langevin.steps + lg.burn_in)
                                                        / max(rom.wall_time, 1e-9))},
        "cached_stages": cached_stages,
    }
    if selection is not None:
        metrics["model_selection"] = selection.to_json()
    if ensemble_metrics is not None:
        metrics["ensemble"] = ensemble_metrics
        if ensemble_metrics["cached"]:
            cached_stages.append("ensemble")
    true_at_points = None
    if data.analytic_score is not None:
        true_at_points = data.zscore.score_to_zscored(
            np.asarray(data.analytic_score(data.zscore.inverse(part.points)), dtype=np.float64))
        metrics["score"] = {
            "band": spec.score.band,
            "relative_error_posterior_mean": weighted_score_error(summary.mean, true_at_points, part.counts),
            "relative_error_predictive": weighted_score_error(summary.predictive, true_at_points, part.counts),
            "band_coverage": band_coverage(true_at_points, summary.lower, summary.upper, part.counts),
        }
        if interp is not None:
            metrics["score"].update({
                "relative_error_interpolant": weighted_score_error(interp_at_points, true_at_points, part.counts),
                "band_coverage_interpolant": band_coverage(true_at_points, interp_band.lower, interp_band.upper,
                                                           part.counts)})
        if model_band is not summary:  # the corrected score's error and band (Result.score's)
            metrics["score"].update({
                "relative_error_corrected": weighted_score_error(model_band.mean, true_at_points, part.counts),
                "band_coverage_corrected": band_coverage(true_at_points, model_band.lower, model_band.upper,
                                                         part.counts)})
    if rom.escaped or rom.non_finite:
        message = (f"langevin: {rom.escaped} of {lg.particles} particles left the box |x| <= {lg.box:.4g}, "
                   f"{rom.non_finite} became non-finite")
        metrics["langevin"]["warning"] = message
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    arrays, paths = None, None
    if dynamics is None:
        why = "[langevin] mobility = 'identity'"
        if data_interval_of(spec.data) is None:
            why = "no data interval: time scales are not available"
        elif unresolved:
            names = [(spec.data.variables or [])[i] if i < len(spec.data.variables or []) else f"x{i}"
                     for i in unresolved]
            why = (f"the data's lag-one autocorrelation is <= 0 in {', '.join(names)}: the interval "
                   f"({data_interval_of(spec.data):g}) is longer than their correlation, so no mobility is "
                   "identified ([langevin] mobility = 'auto'; 'fitted' forces one)")
        metrics["dynamics"] = {"available": False, "why": why}
    else:
        alive = rom.samples[:, rom.alive].astype(np.float64)  # (T, P, d) z-scored, one interval apart
        series = np.swapaxes(alive, 0, 1)
        simulated = len(alive) > 1 and alive.shape[1] > 0  # rows to correlate, and particles that stayed
        arrays = dynamics_outputs(dynamics, data.zscore.std, spec.score.band, series if simulated else None,
                                  members=members)
        model_tau = decorrelation_time(series, dynamics.interval) if simulated else None
        metrics["dynamics"] = {"available": True, **dynamics_metrics(dynamics, arrays, model_tau, spec.score.band),
                               "rom_paths_rows": int(len(alive))}
        paths = data.zscore.inverse(alive)
    return _Evaluation(metrics, arrays, paths, rom_phys, rel_ent, interp_at_points, true_at_points, model_band)


def streamed_summary(data) -> dict:
    """What the streamed passes did, for ``metrics.json``."""
    stream = data.stream
    return {"blocks_of": BLOCK, "shape": list(stream.shape), "source_kind": stream.source.kind,
            "scheduler": stream.scheduler or "this process",
            "partition_fitted_on": int(len(stream.scan.fit_sample)),
            "in_memory_sample": {"train_series": list(stream.train_sample.shape[:2]),
                                 "reference_series": list(stream.reference_sample.shape[:2]),
                                 "used_by": "time-ordered statistics (mobility, responses), the coarsening's "
                                            "error terms, the interpolant's training snapshots and held-out "
                                            "checks, figures, ensemble"},
            "marginals": "binned KDE over every snapshot (relative entropy, data floor)"}


def interpolant_heldout_error(interp, draws, z, correction=None, scores=None):
    """``(rms (d,), relative)``: the interpolant's RMS error per coordinate (z-scored) against its target, the
    posterior-mean score (plus ``correction``, an applied one: :mod:`kgmm_bayes.bayes.correction`) at up to
    :data:`~kgmm_bayes.study.stages.HELDOUT_POINTS` training snapshots of the held-out blocks
    (:func:`~kgmm_bayes.study.stages.heldout_indices`: the network never trains on them), and the relative RMS
    error there, ``sqrt(sum |f - s|^2 / sum |s|^2)``; ``scores``: the posterior-mean score of ``draws`` at ``z``'s
    rows where already computed (:class:`~kgmm_bayes.study.stages.SnapshotScores`)."""
    rows = heldout_indices(len(z))
    pts = np.asarray(z)[rows]
    if len(pts) == 0:  # nothing held out (a handful of snapshots): no measure, not a perfect one
        return np.full(np.shape(z)[-1], np.nan), float("nan")
    target = np.asarray((SnapshotScores(draws, z) if scores is None else scores)[rows])
    if correction is not None:
        target = target + correction(pts)
    error = np.asarray(interp(jnp.asarray(pts, jnp.float32)), np.float64) - target
    return np.sqrt(np.mean(error**2, axis=0)), float(np.sqrt(np.sum(error**2) / max(np.sum(target**2), 1e-300)))


def _write_outputs(out, spec, data, part, fit, interp, evaluation: _Evaluation, drive=None, correction=None):
    """The study's files, written into the staging folder (one atomic write each); the commit swaps it in.
    ``drive``: the first posterior's draws that drove the model, where the coarsening sampled two; ``correction``:
    the model score's applied score-matching correction, or None."""
    rom_phys, interp_at_points, true_at_points = (evaluation.rom_samples, evaluation.interpolant_at_points,
                                                  evaluation.true_at_points)
    # netCDF built in memory, then one atomic write: a full disk is an OSError, never an HDF5 crash
    atomic_write_bytes(out.path("posterior.nc"), netcdf_bytes(fit.idata))
    atomic_write_bytes(out.path("diagnostics.csv"), probe_summary(fit.idata).to_csv().encode())
    if interp is not None:  # trained ([interpolant] train)
        save_interpolant(out.path("interpolant.npz"), interp)
    atomic_write_bytes(out.path(PARTITION_FILE), npz_bytes(part._asdict()))
    atomic_write_bytes(out.path("rom_samples.npy"), npy_bytes(rom_phys))
    if fit.score_bias is not None:
        atomic_write_bytes(out.path(SCORE_BIAS_FILE), npz_bytes(field_stats(fit.score_bias)))
    if correction is not None:
        atomic_write_bytes(out.path(CORRECTION_FILE), npz_bytes(correction_arrays(correction)))
    if drive is not None:
        atomic_write_bytes(out.path(MODEL_DRAWS_FILE), npz_bytes(dict(zip(("weights", "means", "cov_chol"), drive))))
    if evaluation.dynamics is not None:
        atomic_write_bytes(out.path("responses.npz"), npz_bytes(evaluation.dynamics))
        atomic_write_bytes(out.path("rom_paths.npy"), npy_bytes(evaluation.rom_paths))
        plot_dynamics(out.path("figures"), evaluation.dynamics, names=spec.data.variables or None)
    std, summary = data.zscore.std, evaluation.model_band
    names = spec.data.variables or None
    plot_score(out.path("figures", "score.png"), data.zscore.inverse(part.points),
               summary._replace(mean=summary.mean / std, lower=summary.lower / std, upper=summary.upper / std),
               part.counts, None if interp_at_points is None else interp_at_points / std,
               None if true_at_points is None else true_at_points / std, spec.score.band, names=names)
    if part.points.shape[1] == 2:
        plot_score_field(out.path("figures", "score_field.png"), fit.draws, data.zscore, data.train, spec.score.band,
                         names=names, score_bias=fit.score_bias, correction=correction)
    if len(rom_phys) >= 2:
        plot_marginals(out.path("figures", "marginals.png"), data.reference, rom_phys, evaluation.relative_entropy,
                       names=names)
    plot_diagnostics(out.path("figures"), fit.idata)
