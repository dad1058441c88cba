"""``kgmm-bayes compare``: the Bayesian estimator against the baselines on one study (issue 4).

The Bayesian study runs as usual (:func:`kgmm_bayes.study.run_study`, into
``<out>/bayesian``); each baseline of :mod:`kgmm_bayes.baselines` is then fitted
to the *same* z-scored training snapshots, its score drives the *same* Langevin
model (the spec's ``[langevin]`` settings, the same initial particles and the same
noise), and it is measured by the same metrics: relative entropy of each marginal
against the same reference set, density-weighted score error against the
analytic score at the Bayesian score-target points (where the system has one),
and, for the Bayesian estimator only, the coverage of its credible band.

In the data's time (a fitted mobility, :mod:`kgmm_bayes.study.dynamics`) every baseline's score gets
what the Bayesian one gets: its own mobility ``Phi = M V^-1`` from the training trajectories, its model
run on the same schedule with the same rate correction, its correlation functions against the data's,
and its fluctuation-dissipation responses, compared with the Bayesian posterior mean and band and,
where the system has an analytic score, with the responses that score gives on the same trajectories.

For Kuramoto-Sivashinsky studies each estimator's model is also measured by the
KS statistics (:func:`kgmm_bayes.metrics.series.ks_statistics`): the pooled one-point PDF, the
two-point PDFs at separations 1-3 and the decorrelation time of each coordinate,
against the data's (the latter from a finely sampled independent run);
``figures/ks_statistics.png`` shows them.

With ``[baselines] model_runs = R > 1`` every estimator's model is run ``R`` times: the study's own run
and ``R - 1`` more on the same schedule (and, in the data's time, the same mobility), each from its own
starting particles and noise, the same for every estimator (:func:`model_run_starts`).  One run's relative
entropy moves with its Langevin key as much as estimators differ (reduced 1D: 0.00102-0.00259 over five keys),
so the table then gives each estimator's mean over the runs and its standard error.  That error is the
spread of one fitted model over Langevin starts and noise only: not over the baselines' seeds or NUTS keys.
Nor over the reference set they are all scored against, whose own sampling noise (an independent run of the
training data's size: the floor) can be as large as the estimators' differences; with ``[baselines] long_reference
= F`` (built-in systems) every model is scored against an independent run of the system with F times the training
data's members instead (:func:`long_reference_run`), the study's own folder keeping its reference set.

Wall time counts what builds the score (Bayesian: partition, posterior, score
summaries, interpolant; classic KGMM: clustering with the noisy passes, network
training; DSM: training; scikit-learn: fitting; for each baseline also its ``setup``, the rest of its fit
call), compilation included (how much of it: ``info.jax_compiling_s``); the
Langevin run is reported apart.  For DSM, the models kept every
``dsm_epochs / dsm_checkpoints`` epochs are each run through a quarter-length
Langevin model, and so is the Bayesian drift: the first checkpoint whose mean
relative entropy is no worse than the Bayesian one gives the DSM training time
needed to reach it.  DSM's networks (row and checkpoints) have the moving average of its parameters over
Adam's steps (``dsm_ema``), as score-based models are commonly trained: the parameters themselves wander.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..baselines import BaselineFit, fit_dsm, fit_kgmm, fit_sklearn
from ..compilation_cache import JaxWork
from ..data.systems import get_system
from ..data.systems.base import simulate
from ..data.systems.ks import fine_reference_series
from ..errors import InputError
from ..files import atomic_write_bytes
from ..metrics import weighted_score_error
from ..metrics.density import marginal_relative_entropies
from ..metrics.series import decorrelation_time, ks_statistics
from ..rom.langevin import jit_drift, max_jacobian_eigenvalue, simulate_langevin
from ..rom.mobility import impulse_responses, to_physical
from .._version import __version__
from ..spec import BASELINES, Spec, data_interval_of
from .checks import check_seed, load_user_data
from .compare_tables import (
    KS_SPACING,
    EstimatorRow,
    comparison_csv,
    comparison_markdown,
    finite_or_none,
    plot_comparison,
    plot_ks,
    row_dict,
    row_from_dict,
)
from .dynamics import (
    dynamics_metrics,
    dynamics_outputs,
    indirect_correction,
    lagged_series,
    point_dynamics,
    rom_schedule,
    run_in_data_time,
)
from .outputs import OutputFolder, _checksum, json_stage, stage_key
from .run import run_study, user_data_hash
from .stages import STAGE_SCHEMA, StudyData, langevin_start, model_drift, rom_relative_entropies, study_keys

__all__ = ["EstimatorRow", "Comparison", "compare_study"]

BAYESIAN_STAGES = ("partition", "posterior", "score")
# counted where the study ran them: the network where a model runs on it ([interpolant] train), the correction
# where fitted ([interpolant] correction)
OPTIONAL_STAGES = ("interpolant", "correction", "correction_check")
# bumped when what a comparison keeps of an estimator in <out>/.stages (its row, its further model runs, DSM's reach)
# changes in content or meaning, so that rows kept by earlier code are recomputed, not mixed with new ones
# 2: a row's Langevin s counts the data-time pilot and any rerun; 3: DSM's epochs each have their own key, and its
# reach counts each short run's particles lost; 4: DSM's network has the moving average of its parameters
# ([baselines] dsm_ema)
COMPARE_ROWS_SCHEMA = 4
MODEL_RUN_OFFSET = 1_000  # the r-th extra model run's key: fold_in(the study's Langevin key, MODEL_RUN_OFFSET + r)
LONG_REFERENCE_KEY = 2**31 - 1  # [baselines] long_reference: its run has the keys of this seed, no shipped study's


class Comparison(NamedTuple):
    rows: list  # EstimatorRow, Bayesian first
    dsm_reach: Optional[dict]  # checkpoints and the training time DSM needs to reach the Bayesian estimator
    out_dir: str


def _log(progress, message):
    if progress:
        print(f"[kgmm-bayes compare] {message}", file=sys.stderr, flush=True)


def _ks_block(data: StudyData, series, spec, data_tau, spacing: float) -> dict:
    """KS statistics of a model's series ``(particles, n_snap, D)`` (physical units, ``spacing`` apart in
    the model's time) against the data's."""
    return ks_statistics(data.reference, series, spacing, data_tau, grid_points=spec.metrics.grid_points,
                         matched=data.reference_matched)


def scored_relative_entropies(rom, data: StudyData, spec: Spec) -> np.ndarray:
    """A model run's marginal relative entropies against the comparison's yardstick, ``data.reference``: the study's
    reference set, or a long run (``data.reference_matched``, :func:`with_long_reference`) smoothed as a set of the
    run's size (Scott's bandwidth falls with the sample count, and a long run's own narrower smoothing would otherwise
    count against every model where the density curves sharply; ``kgmm_bayes.metrics.density``)."""
    return rom_relative_entropies(rom, data.zscore, data.reference, spec.metrics.grid_points,
                                  matched=data.reference_matched)


class _DataTime(NamedTuple):
    """What every estimator's model in the data's time is measured against."""

    series: np.ndarray  # z-scored training trajectories (members, n, d)
    interval: float
    bayes: dict  # the Bayesian study's responses.npz (physical units)
    true_response: Optional[np.ndarray]  # (L, d, d) physical: the analytic score's, on the same trajectories
    key: object  # the study's key of the mobility's indirect correction (the same noise for every estimator)
    snapshots: int  # the Bayesian model's snapshots per particle, one interval apart: every model makes as many


def model_run_starts(langevin_key, part, particles: int, runs: int) -> list:
    """``(x0, run_key)`` of the ``runs - 1`` model runs after the study's own: starting particles and noise
    drawn as the study draws its own (:func:`kgmm_bayes.study.stages.langevin_start`), from keys folded
    out of the study's Langevin key; every estimator's model is rerun from the same ones."""
    return [langevin_start(jax.random.fold_in(langevin_key, MODEL_RUN_OFFSET + r), part, particles)
            for r in range(1, runs)]


def _floats(values) -> np.ndarray:
    """JSON numbers (None where not finite) back as float64, NaN for None."""
    return np.asarray([np.nan if v is None else v for v in values], np.float64)


def _mean_and_se(values):
    """The mean of the finite ``values`` and its standard error (sd / sqrt(count); None below two), as JSON
    numbers (None where not finite), and how many were finite."""
    values = _floats(values)
    finite = values[np.isfinite(values)]
    mean = float(np.mean(finite)) if len(finite) else np.nan
    se = float(np.std(finite, ddof=1) / np.sqrt(len(finite))) if len(finite) > 1 else np.nan
    return finite_or_none(mean), finite_or_none(se), len(finite)


def model_run_summary(per_run, lost=None) -> dict:
    """Each run's mean relative entropy over the marginals, and the mean over the runs with its standard error
    (sd over runs / sqrt(runs)), from every run's per-marginal relative entropies ``per_run`` ``(runs, d)``.
    ``lost``: each run's lost particles, kept as ``particles_lost_per_run``.
    Runs without a finite figure (fewer than two samples kept, e.g. every particle lost) are counted apart
    (``finite_runs``) and left out of the mean and its error, so a model that loses runs shows it."""
    per_run = np.asarray(per_run, np.float64)
    means = per_run.mean(axis=1)
    mean, se, finite = _mean_and_se(means)
    summary = {"runs": len(means), "finite_runs": finite,
               "relative_entropy_mean_per_run": [finite_or_none(v) for v in means],
               "relative_entropy_per_run": [[finite_or_none(v) for v in r] for r in per_run],
               "relative_entropy_mean_over_runs": mean, "standard_error": se}
    if lost is not None:  # each run's particles that left the box or became non-finite (the table's column: the first)
        summary["particles_lost_per_run"] = [int(v) for v in lost]
    return summary


def paired_with_bayesian(rows) -> None:
    """Each baseline's ``model_runs`` gains its runs' differences from the Bayesian model's runs (the same starts
    and noise: paired), as the mean difference (baseline minus Bayesian) and its standard error over the runs
    where both have a figure; in place."""
    bayes = rows[0].info.get("model_runs")
    if not bayes:
        return
    first = _floats(bayes["relative_entropy_mean_per_run"])
    for r in rows[1:]:
        runs = r.info["model_runs"]
        runs["minus_bayesian_mean"], runs["minus_bayesian_standard_error"], _ = _mean_and_se(
            _floats(runs["relative_entropy_mean_per_run"]) - first)


def _model_runs(data, spec, drift_fn, drift_params, first, starts, dt, steps, thin, mobility, first_lost: int) -> dict:
    """:func:`model_run_summary` of a model's runs: ``first`` (the run already made, per marginal; ``first_lost``
    particles lost) and one run from each of ``starts`` on the same schedule (``dt, steps, thin``, ``mobility``; the
    spec's burn-in and box)."""
    lg = spec.langevin
    per_run, lost = [np.asarray(first, np.float64)], [first_lost]
    for x0, run_key in starts:
        rom = simulate_langevin(run_key, drift_fn, drift_params, x0, dt, steps, lg.burn_in, thin, lg.box,
                                mobility=mobility)
        per_run.append(scored_relative_entropies(rom, data, spec))
        lost.append(rom.escaped + rom.non_finite)
    return model_run_summary(per_run, lost)


def study_model_runs(result, data, starts, drift=None, first=None) -> dict:
    """The Bayesian study's model run again from each of ``starts``: its drift (:func:`model_drift`; ``drift``
    when the caller has it already), and the schedule and mobility its Langevin stage used (``metrics.json``
    ``langevin``, ``dynamics.mobility``).  ``first``: the study's own run's relative entropies against
    ``data.reference`` (default: its metrics', against the study's reference set)."""
    spec, run = result.spec, result.metrics["langevin"]
    mobility = result._mobility("fitted", data.train.shape[1]) if run.get("mobility") == "fitted" else None
    drift = model_drift(spec, result.interpolant, result.drift_draws, result.correction) if drift is None else drift
    first = result.metrics["relative_entropy"]["per_marginal"] if first is None else first
    return _model_runs(data, spec, *drift, first, starts, run["dt"], run["steps"], run["thin"], mobility,
                       int(run["escaped"] + run["non_finite"]))


def long_reference_run(spec: Spec, factor: int) -> np.ndarray:
    """``(members, n, d)``: an independent run of the spec's built-in system with ``factor`` times the training data's
    members, physical units, from the keys of seed :data:`LONG_REFERENCE_KEY` (no study's: the same run as
    ``benchmarks/bench_floor.py``'s)."""
    ds = spec.data
    system = get_system(ds.system)
    members = system.members if ds.members is None else ds.members
    long_key, _ = jax.random.split(jax.random.key(LONG_REFERENCE_KEY))
    return np.asarray(simulate(long_key, system, members=members * factor, steps=ds.steps, thin=ds.thin,
                               burn_in=ds.burn_in, dt=ds.dt), np.float64)


def with_long_reference(data: StudyData, spec: Spec, progress: bool = False) -> StudyData:
    """``data`` scored against :func:`long_reference_run` (``[baselines] long_reference`` times the training
    members) instead of its reference set, smoothed as each scored set (``reference_matched``); ``data`` itself where
    that is 0."""
    factor = spec.baselines.long_reference
    if not factor:
        return data
    _log(progress, f"an independent run of {spec.data.system} with {factor} times the training data's members: the "
                   "models' yardstick")
    scored = copy.copy(data)
    scored.reference = long_reference_run(spec, factor).reshape(-1, data.train.shape[1])
    scored.reference_matched = True
    return scored


def _evaluate(fit_name, drift_fn, drift_params, timings, data, spec, x0, run_key, points, counts, truth, info,
              band=None, ks_tau=None, data_time: Optional[_DataTime] = None, starts=()):
    """Langevin model and metrics of one drift (in the data's time with its own mobility, given ``data_time``);
    ``starts``: those of the further model runs (:func:`model_run_starts`)."""
    lg = spec.langevin
    info = dict(info or {})
    if data_time is None:
        rom = simulate_langevin(run_key, drift_fn, drift_params, x0, lg.dt, lg.steps, lg.burn_in, lg.thin, lg.box)
        dt, spacing, langevin_s = lg.dt, lg.dt * lg.thin, rom.wall_time
        schedule = {"dt": lg.dt, "steps": lg.steps, "thin": lg.thin, "mobility": None}
    else:
        dyn = indirect_correction(point_dynamics(data_time.series, data_time.interval, drift_fn, drift_params),
                                  data_time.key, data_time.series, drift_fn, drift_params, lg, points)
        schedule = {}

        def simulate(d, particles=None, subsample=1):
            particles = len(x0) if particles is None else particles
            dt_, thin, steps, stiffness = rom_schedule(lg, d.interval, d.phi, drift_fn, drift_params, points,
                                                       min_rows=2 * len(d.lags), snapshots=data_time.snapshots)
            thin = max(1, thin // subsample)
            schedule.update(dt=dt_, stiffness=stiffness)
            # the further runs' schedule: a full run's (run_in_data_time ends on one; a safeguard, not the pilot's)
            if particles == len(x0) and subsample == 1:
                schedule.update(steps=steps // thin * thin, thin=thin, mobility=d.phi)
            return simulate_langevin(run_key, drift_fn, drift_params, x0[:particles], dt_, steps // thin * thin,
                                     lg.burn_in, thin, lg.box, mobility=d.phi), dt_ * thin

        start = time.perf_counter()  # the pilot, the full run and any rerun, as the study's Langevin stage counts
        rom, dyn = run_in_data_time(simulate, dyn, len(x0))  # the study's pilot: the first of the same starts
        langevin_s = time.perf_counter() - start
        dt, spacing = schedule["dt"], dyn.interval
        info["dt_times_max_jacobian_eigenvalue"] = schedule["stiffness"]  # of Phi s, as the study's
        info["dynamics"] = _dynamics_row(dyn, rom, data, spec, data_time)
    info["model_snapshots"] = _snapshots(schedule)
    rel_ent = scored_relative_entropies(rom, data, spec)
    if starts:  # the last full run's schedule
        info["model_runs"] = _model_runs(data, spec, drift_fn, drift_params, rel_ent, starts, schedule["dt"],
                                         schedule["steps"], schedule["thin"], schedule["mobility"],
                                         rom.escaped + rom.non_finite)
    if ks_tau is not None and rom.alive.any():
        series = data.zscore.inverse(np.swapaxes(rom.samples[:, rom.alive], 0, 1).astype(np.float64))
        info["ks"] = _ks_block(data, series, spec, ks_tau, spacing)
    error = None
    if truth is not None:
        predicted = np.asarray(jit_drift(drift_fn)(drift_params, jnp.asarray(points, jnp.float32)), dtype=np.float64)
        error = weighted_score_error(predicted, truth, counts)
    if data_time is None:
        info["dt_times_max_jacobian_eigenvalue"] = dt * max_jacobian_eigenvalue(drift_fn, drift_params, points)
    return EstimatorRow(fit_name, timings, rel_ent, error, band, langevin_s, rom.escaped + rom.non_finite, info)


def _response_scores(impulse, data_time: _DataTime) -> dict:
    """An impulse response ``(L, d, d)`` (physical) against the Bayesian posterior mean and band and the
    analytic score's: relative differences and the share inside the Bayesian band."""
    bayes = data_time.bayes
    norm = lambda a: float(np.linalg.norm(a))  # noqa: E731
    out = {"response_relative_difference_from_bayesian": norm(impulse - bayes["mean"]) / norm(bayes["mean"]),
           "response_inside_bayesian_band": float(np.mean((bayes["lower"] <= impulse) & (impulse <= bayes["upper"])))}
    if data_time.true_response is not None:
        true = data_time.true_response
        out["response_relative_error_vs_true_score"] = norm(impulse - true) / norm(true)
    return out


def _dynamics_row(dyn, rom, data, spec, data_time: _DataTime) -> dict:
    """A baseline's ``info["dynamics"]``: mobility (physical), rate factor, decorrelation times and correlation
    functions of its model against the data's, and its responses (:func:`_response_scores`)."""
    alive = rom.samples[:, rom.alive].astype(np.float64)
    series = np.swapaxes(alive, 0, 1)
    simulated = len(alive) > 1 and alive.shape[1] > 0
    arrays = dynamics_outputs(dyn, data.zscore.std, spec.score.band, series if simulated else None)
    entry = dynamics_metrics(dyn, arrays, decorrelation_time(series, dyn.interval) if simulated else None,
                             spec.score.band)
    keep = ("mobility", "mobility_method", "mobility_time_scale", "mobility_correction_residuals", "decorrelation_time_model",
            "decorrelation_time_ratio", "correlation_relative_error")
    return {**{k: entry[k] for k in keep if k in entry}, **_response_scores(arrays["mean"], data_time)}


def _data_time(result, data: StudyData, z, spec, key) -> Optional[_DataTime]:
    """The inputs of the baselines' models in the data's time; None when the Bayesian model had none."""
    if not result.metrics.get("dynamics", {}).get("available"):
        return None
    series = data.train_series(z)
    bayes = result._responses_file()
    true_response = None
    if data.analytic_score is not None:
        kept = lagged_series(series)
        true = data.zscore.score_to_zscored(np.asarray(data.analytic_score(data.zscore.inverse(kept)), np.float64))
        true_response = to_physical(data.zscore.std, responses=impulse_responses(kept, true, len(bayes["lags"]) - 1))[1]
    return _DataTime(series, float(data_interval_of(spec.data)), bayes, true_response, key,
                     _snapshots(result.metrics["langevin"]))


def _snapshots(run: dict) -> int:
    """Snapshots per particle of a model run's schedule (``steps``, ``thin``: metrics.json ``langevin``'s keys)."""
    return int(run["steps"]) // int(run["thin"])


def _jax_work_info(work: dict | None) -> dict:
    """An estimator's ``info`` entries for the part of its wall time that went to JAX's tracing and compiling (or
    loading compiled programs from the cache); nothing where JAX could not say (``work`` None)."""
    if work is None:
        return {}
    return {"jax_tracing_s": work["tracing"], "jax_compiling_s": work["compiling"], "jax_cache_hits": work["cache_hits"]}


def bayesian_timings(metrics: dict) -> dict:
    """The Bayesian estimator's cost by stage (metrics.json): :data:`BAYESIAN_STAGES`, :data:`OPTIONAL_STAGES` where
    the study ran them, and where K was chosen from the data, ``model_selection``: the candidates' posteriors (their
    first runs' seconds) less the chosen K's when the study's own posterior reused it, so that no sampling is counted
    twice or left out."""
    timings = {stage: float(metrics["timings"][stage]) for stage in BAYESIAN_STAGES}
    timings.update({stage: float(metrics["timings"][stage]) for stage in OPTIONAL_STAGES
                    if stage in metrics["timings"]})
    selection = metrics.get("model_selection")
    if selection is not None:
        posterior_s = selection.get("posterior_s")
        if posterior_s is None:  # a result written before the candidates' seconds were recorded: the stage's wall
            timings["model_selection"] = float(metrics["timings"].get("model_selection", 0.0))
        else:
            best, reused = str(selection["best"]), bool(selection.get("reused_best"))
            timings["model_selection"] = float(sum(v for k, v in posterior_s.items() if not (reused and k == best)))
    return timings


def _bayesian_jax_work(metrics: dict) -> dict:
    """:func:`_jax_work_info` of the study's :data:`BAYESIAN_STAGES` (metrics.json ``jax_work``); nothing when one of
    them was not timed in this run (read from the cache, or the posterior taken from model selection: their times
    are their first runs')."""
    work = metrics.get("jax_work", {})
    stages = BAYESIAN_STAGES + tuple(s for s in OPTIONAL_STAGES if s in metrics.get("timings", {}))
    if not all(stage in work for stage in stages):
        return {}
    return _jax_work_info({name: sum(work[stage][name] for stage in stages)
                           for name in ("tracing", "compiling", "cache_hits")})


def _fit_baseline(name, key, z, spec) -> BaselineFit:
    b, itp = spec.baselines, spec.interpolant
    if name == "kgmm":
        return fit_kgmm(key, z, b.sigma, b.min_leaf_probability, b.max_passes, b.tolerance, itp.hidden, itp.steps,
                        itp.learning_rate)
    if name == "dsm":
        return fit_dsm(key, z, b.sigma, itp.hidden, b.dsm_epochs, b.dsm_batch, b.dsm_learning_rate,
                       b.dsm_checkpoints, b.dsm_ema)
    return fit_sklearn(key, z, b.sklearn_components or spec.mixture.components, b.sklearn_max_iter)


def _dsm_reach(fit: BaselineFit, bayes_drift, data, spec, x0, run_key) -> dict:
    """Quarter-length Langevin runs of every DSM checkpoint and of the Bayesian drift."""
    lg = spec.langevin
    steps = max(lg.thin, (lg.steps // 4) // lg.thin * lg.thin)

    def short_run(drift_fn, params):  # the mean relative entropy over the particles kept, and the particles lost
        rom = simulate_langevin(run_key, drift_fn, params, x0, lg.dt, steps, lg.burn_in, lg.thin, lg.box)
        rel_ent = scored_relative_entropies(rom, data, spec)
        return float(np.mean(rel_ent)), int(rom.escaped + rom.non_finite)

    target, target_lost = short_run(*bayes_drift)
    points = []
    for c in fit.checkpoints:
        rel_ent, lost = short_run(fit.drift_fn, c.params)
        points.append({"epochs": c.epochs, "training_s": c.wall_time, "relative_entropy_mean": rel_ent,
                       "particles_lost": lost})
    reached = next((p for p in points if p["relative_entropy_mean"] <= target), None)
    return {"langevin_steps": int(steps), "bayesian_relative_entropy_mean": target,
            "bayesian_particles_lost": target_lost, "particles": int(len(x0)), "checkpoints": points,
            "reached_at_s": None if reached is None else reached["training_s"],
            "reached_at_epochs": None if reached is None else reached["epochs"],
            "budget_epochs": int(spec.baselines.dsm_epochs)}


def compare_study(spec: Spec, out_dir: str | None = None, seed: int | None = None, progress: bool = False,
                  force: bool = False, data=None) -> Comparison:
    """Run the Bayesian study and the baselines of ``spec.baselines.which``; write the comparison.

    Writes ``<out>/bayesian`` (a complete study folder), ``comparison.csv``,
    ``comparison.md``, ``comparison.json`` and ``figures/comparison.png``; the
    folder is swapped into place only when everything is written.
    """
    seed = check_seed(spec.study.seed if seed is None else seed)
    ds = spec.data
    if (ds.path is not None and ds.streaming == "always") or ds.scheduler:
        raise InputError("compare fits its baselines in memory: [data] streaming = 'always' and [data] scheduler "
                         "do not apply; remove them")
    user_data = load_user_data(spec, data, streaming=False)  # in memory whatever their size; bad data fail here
    if out_dir is None:
        out_dir = os.path.join("kgmm-runs", f"{spec.study.name}-compare")
    with OutputFolder(out_dir, json.dumps({"compare": spec.to_dict(), "seed": seed}, sort_keys=True, default=list),
                      force=force) as out:
        return _compare_stages(spec, out, seed, user_data, progress, force)


def _compare_stages(spec: Spec, out: OutputFolder, seed: int, user_data, progress: bool, force: bool) -> Comparison:
    """The Bayesian study and the baselines inside the locked output folder, ending with the commit."""
    bayes_dir = out.path("bayesian")
    previous = os.path.join(out.final, "bayesian")
    if os.path.isdir(previous) and not os.path.exists(bayes_dir):
        shutil.copytree(previous, bayes_dir)  # its stage cache: unchanged Bayesian stages are not recomputed

    _log(progress, "bayesian estimator")
    result = run_study(spec, out_dir=bayes_dir, seed=seed, progress=progress, force=force, data=user_data)
    spec, data = result.spec, result.data  # as fitted (K chosen from the data when the spec gave none)
    _, reference_key, _, _, _, langevin_key = study_keys(seed)
    z = data.zscore.forward(data.train)
    part = result.partition
    x0, run_key = langevin_start(langevin_key, part, spec.langevin.particles)
    truth = None
    if data.analytic_score is not None:
        truth = data.zscore.score_to_zscored(
            np.asarray(data.analytic_score(data.zscore.inverse(part.points)), dtype=np.float64))

    m = result.metrics
    bayes_drift = model_drift(spec, result.interpolant, result.drift_draws, result.correction)
    bayes_error = None
    if truth is not None:
        predicted = np.asarray(bayes_drift[0](bayes_drift[1], jnp.asarray(part.points, jnp.float32)), np.float64)
        bayes_error = weighted_score_error(predicted, truth, part.counts)
    rel, floor = m["relative_entropy"]["per_marginal"], m["relative_entropy"]["data_floor_mean"]
    data = with_long_reference(data, spec, progress)
    if data.reference_matched:  # the study's own run and the training set, against the long run
        grid = spec.metrics.grid_points
        rel = (marginal_relative_entropies(data.reference, result.rom_samples, grid, matched=True)
               if len(result.rom_samples) > 1 else np.full(data.train.shape[1], np.nan))
        floor = float(np.mean(marginal_relative_entropies(data.reference, data.train, grid, matched=True)))
    rows = [EstimatorRow("bayesian", bayesian_timings(m),
                         np.array([np.nan if v is None else v for v in rel], dtype=np.float64), bayes_error,
                         m.get("score", {}).get("band_coverage"), float(m["timings"]["langevin"]),
                         int(m["langevin"]["escaped"] + m["langevin"]["non_finite"]),
                         {"cached_stages": m["cached_stages"], "band": spec.score.band,
                          "dt_times_max_jacobian_eigenvalue": m["langevin"]["dt_times_max_jacobian_eigenvalue"],
                          "model_snapshots": _snapshots(m["langevin"]),
                          **_bayesian_jax_work(m)})]
    # what the further model runs and the baselines' rows depend on beyond the spec and seed: the code's version and
    # the rows' layout, the user's data (the held-out members the models are scored against too), the training
    # data and the cells (the models' starting particles); each is kept in <out>/.stages as it finishes, so a
    # comparison that stops (hours on Lorenz-96) resumes after the last estimator it finished. Not on which
    # baselines run, nor in which order: each has its own key stream, so adding, dropping or reordering one
    # refits none of the others
    keyed = spec.to_dict()
    keyed["baselines"] = {k: v for k, v in keyed["baselines"].items() if k != "which"}
    if spec.baselines.long_reference:  # rows against a long run read back only if it was smoothed as each model's set
        keyed["baselines"]["long_reference_smoothing"] = "matched"
    rows_key = stage_key("compare", COMPARE_ROWS_SCHEMA, keyed, seed, __version__, STAGE_SCHEMA,
                         user_data_hash(user_data), _checksum({"z": z, "points": part.points}))
    read_back = []
    starts = model_run_starts(langevin_key, part, spec.langevin.particles, spec.baselines.model_runs)
    if starts:
        runs, cached = json_stage(out, "compare-bayesian-runs", rows_key,
                                  lambda: study_model_runs(result, data, starts, bayes_drift, rows[0].relative_entropy))
        _log(progress, f"bayesian: {len(starts)} more model runs" + (" (read back)" if cached else ""))
        rows[0].info["model_runs"] = runs
        read_back += ["bayesian model runs"] if cached else []
    data_time = _data_time(result, data, z, spec, jax.random.fold_in(langevin_key, 3))
    if data_time is not None:
        keep = ("mobility", "mobility_lower", "mobility_upper", "mobility_method", "mobility_time_scale",
                "decorrelation_time_model", "decorrelation_time_ratio", "correlation_relative_error")
        rows[0].info["dynamics"] = {**{k: m["dynamics"][k] for k in keep if k in m["dynamics"]},
                                    **_response_scores(data_time.bayes["mean"], data_time)}
    ks_tau = None
    system = get_system(spec.data.system) if user_data is None else None
    if system is not None and system.name.startswith("ks_"):
        _log(progress, "KS: a finely sampled reference run for the decorrelation times")
        series = fine_reference_series(jax.random.fold_in(reference_key, 7), system)
        ks_tau = decorrelation_time(series, KS_SPACING)
        run = m["langevin"]  # the run's schedule (in the data's time with a fitted mobility)
        rom = result.rom_samples  # kept particles, time-major: (n_snap * particles, D)
        if len(rom):
            rows[0].info["ks"] = _ks_block(data, np.swapaxes(rom.reshape(_snapshots(run), -1, rom.shape[1]),
                                                             0, 1), spec, ks_tau, run["dt"] * run["thin"])

    baseline_keys = study_keys(seed + 1_000_003)  # a stream apart from the study's; one key per baseline name
    dsm_reach = None
    for name in spec.baselines.which:
        def fit_and_run(name=name):
            _log(progress, f"baseline {name}" + (f" ({len(starts) + 1} model runs)" if starts else ""))
            work, start = JaxWork(), time.perf_counter()
            fit = _fit_baseline(name, baseline_keys[BASELINES.index(name)], z, spec)
            # "setup": the rest of the fit's call, outside its own timers (networks and optimisers set up, the
            # sklearn mixture's score coefficients), compilation included as in the Bayesian stages
            timings = dict(fit.timings, setup=max(0.0, time.perf_counter() - start - sum(fit.timings.values())))
            info = dict(fit.info, **_jax_work_info(work.mark()))
            row = _evaluate(name, fit.drift_fn, fit.drift_params, timings, data, spec, x0, run_key, part.points,
                            part.counts, truth, info, ks_tau=ks_tau, data_time=data_time, starts=starts)
            reach = None
            if name == "dsm":
                _log(progress, f"dsm: {len(fit.checkpoints)} checkpoints, quarter-length Langevin runs")
                reach = _dsm_reach(fit, bayes_drift, data, spec, x0, run_key)
            return {"row": row_dict(row), "dsm_reach": reach}

        kept, cached = json_stage(out, f"compare-{name}", rows_key, fit_and_run)
        if cached:
            _log(progress, f"baseline {name}: read back from an earlier run of this comparison")
            read_back.append(name)
        rows.append(row_from_dict(kept["row"]))
        dsm_reach = kept["dsm_reach"] if name == "dsm" else dsm_reach

    paired_with_bayesian(rows)
    if ks_tau is not None:
        plot_ks(out.path("figures", "ks_statistics.png"), rows, ks_tau)
    payload = {"study": spec.study.name, "seed": seed, "dim": int(z.shape[1]),
               "ks_data_decorrelation_time": None if ks_tau is None else [float(v) for v in ks_tau],
               "train_snapshots": len(z), "reference_snapshots": len(data.reference),
               "data_floor_relative_entropy_mean": floor,
               "long_reference": spec.baselines.long_reference,
               "baselines": spec.baselines._asdict(),
               "estimators": [row_dict(r) for r in rows], "dsm_reach": dsm_reach, "read_back": read_back}
    atomic_write_bytes(out.path("comparison.json"), json.dumps(payload, indent=2, default=list).encode())
    atomic_write_bytes(out.path("comparison.csv"), comparison_csv(rows, dsm_reach).encode())
    atomic_write_bytes(out.path("comparison.md"), comparison_markdown(rows, dsm_reach, payload).encode())
    plot_comparison(out.path("figures", "comparison.png"), rows, dsm_reach)
    final = out.commit()
    _log(progress, f"done -> {final}")
    return Comparison(rows=rows, dsm_reach=dsm_reach, out_dir=final)
