"""The study runner: one reduced-order model built end to end from a spec.

Stages (DESIGN.md, "The pipeline"): data -> partition -> posterior -> score
summaries -> interpolant -> Langevin model -> metrics, figures, report.  One
seed becomes one key, split once into named keys.  Each costly stage is cached
by a hash of its inputs (see :mod:`kgmm_bayes.outputs`).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from . import __version__
from .data import InputError, ZScore, load_trajectory, split_members, validate_snapshots
from .diagnostics import convergence_summary, netcdf_bytes, plot_diagnostics, probe_summary, to_inference_data
from .figures import plot_marginals, plot_score, plot_score_field
from .interpolant import fit_interpolant, interpolant_arrays, interpolant_from_arrays, save_interpolant
from .langevin import LangevinResult, initial_particles, max_jacobian_eigenvalue, simulate_langevin
from .metrics import band_coverage, marginal_relative_entropies, weighted_score_error
from .outputs import OutputFolder, atomic_write_bytes, json_floats as _json_floats, stage_key
from .partition import Partition, fit_partition
from .report import STIFFNESS_LIMIT, numerical_faults, write_report
from .result import BayesianKGMM, predictive_drift, thin_draws
from .sampler import PosteriorSamples, SamplerConfig, build_prior, initial_values, run_nuts
from .score import score_draws, summarize_scores
from .selection import select_components
from .spec import MAX_SEED, Spec
from .study_ensemble import ensemble_stage
from .systems import get_system, simulate

__all__ = ["run_study", "prepare_data", "StudyData", "check_seed"]


# Part of every stage key: raise it whenever what a stage computes or stores changes (2: coreset
# cells enter through their moments; Partition gained cell_covariances. 3: stage files carry a
# SHA-256 of their arrays; the posterior stage holds its coarsening).
STAGE_SCHEMA = 3


class StudyData:
    """Training and reference snapshots ``(n, d)`` in physical units, with the transform."""

    def __init__(self, train, reference, zscore, analytic_score=None, source=""):
        self.train = train
        self.reference = reference
        self.zscore = zscore
        self.analytic_score = analytic_score
        self.source = source


def study_keys(seed: int):
    """The study's named keys ``(data, reference, partition, mcmc, train, langevin)``: one seed, split once."""
    return tuple(jax.random.split(jax.random.key(seed), 6))


def langevin_start(langevin_key, part: Partition, particles: int):
    """Initial particles drawn from the partition's cells by count, and the key of the run's noise."""
    return initial_particles(langevin_key, part.points, part.counts, particles)


def _log(progress, message):
    if progress:
        print(f"[kgmm-bayes] {message}", file=sys.stderr, flush=True)


def load_user_data(spec: Spec, array=None):
    """The user's snapshots ``(members, n, d)``, validated with NumPy only; ``None`` for a system."""
    if array is not None:
        return validate_snapshots(array, name="data")
    if spec.data.path is not None:
        return validate_snapshots(load_trajectory(spec.data.path, spec.data.variable),
                                  name=f"data file {spec.data.path!r}")
    return None


def _data_from_arrays(cached):
    train, reference = cached["train"], cached["reference"]
    if train.ndim != 2 or reference.ndim != 2 or not np.issubdtype(train.dtype, np.floating):
        raise ValueError(f"data arrays of shapes {train.shape}, {reference.shape}")
    return train, reference


def prepare_data(spec: Spec, data_key, reference_key, out: OutputFolder | None = None,
                 user_data=None) -> StudyData:
    """Training and reference sets: held-out user data, or two independent system runs."""
    ds = spec.data
    if user_data is not None:
        train, reference = split_members(user_data, ds.heldout_fraction)
        if reference is None:
            reference = train
        return StudyData(train, reference, ZScore.fit(train), None, source=ds.path or "array")
    system = get_system(ds.system)
    settings = dict(members=ds.members, steps=ds.steps, thin=ds.thin, burn_in=ds.burn_in, dt=ds.dt)
    key = stage_key("data", spec.section_json("data"), str(jax.random.key_data(data_key)), __version__, STAGE_SCHEMA)
    cached = out.load_stage("data", key, build=_data_from_arrays) if out is not None else None
    if cached is None:
        train = simulate(data_key, system, **settings).reshape(-1, system.dim).astype(np.float64)
        reference = simulate(reference_key, system, **settings).reshape(-1, system.dim).astype(np.float64)
        if out is not None:
            out.save_stage("data", key, {"train": train, "reference": reference})
    else:
        train, reference = cached
    return StudyData(train, reference, ZScore.fit(train), system.score, source=f"system {system.name}")


# The largest dimension sampled on 2 CPU cores in a shipped study is 8; the cost of a NUTS gradient grows
# like K d^3 and its compile time steeply with d.
LARGE_DIMENSION = 16


def check_seed(seed) -> int:
    """The seed as an int in ``[0, MAX_SEED]`` (JAX keys take a signed 64-bit seed; derived seeds add to it)."""
    seed = int(seed)
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"--seed must be between 0 and {MAX_SEED} (2**62 - 1), got {seed}")
    return seed


def mixture_parameters(k: int, d: int) -> int:
    """Free parameters of a K-component full-covariance Gaussian mixture in d dimensions."""
    return k * (d + d * (d + 1) // 2) + k - 1


def _check_sizes(spec: Spec, n: int, d: int) -> int:
    """Cells actually used; raises if the data cannot support the spec, warns when it will be slow."""
    k = max((spec.mixture.components,) + tuple(spec.mixture.select_components))
    if n < k:
        raise InputError(f"data has {n} snapshots, fewer than [mixture] components = {k}")
    cells = min(spec.partition.cells, n // 2)
    if cells < k:
        raise InputError(f"data has {n} snapshots: too few for {k} components "
                         f"(need at least {2 * k})")
    params = mixture_parameters(k, d)
    if params > n:
        raise InputError(f"a {k}-component mixture in d = {d} dimensions has {params} parameters, more than the "
                         f"{n} training snapshots: lower [mixture] components or give more data")
    if d > LARGE_DIMENSION:
        warnings.warn(f"data have d = {d} dimensions: the mixture has {params} parameters and NUTS compile time "
                      f"and cost grow steeply with d (shipped studies have d <= 8); expect a long run",
                      RuntimeWarning, stacklevel=3)
    return cells


def _partition_stage(spec, out, key, z, cells, upstream):
    skey = stage_key("partition", upstream, cells, spec.mixture.components)
    cached = out.load_stage("partition", skey, build=lambda a: Partition(**a))
    if cached is not None:
        return cached, skey
    part = fit_partition(key, z, cells, spec.mixture.components)
    out.save_stage("partition", skey, part._asdict())
    return part, skey


def sample_posterior(spec: Spec, key, part: Partition, z, progress: bool = False):
    """NUTS on the spec's mixture posterior: the partition's cells as a weighted coreset (their
    moments), or every z-scored snapshot with ``[partition] coreset = false``; returns
    ``(posterior, coarsening)``.

    ``[mixture] coarsening``: every count times ``zeta = alpha / (alpha + N)``
    (:mod:`kgmm_bayes.coarsening`).  With ``"auto"`` the standard posterior (sampled
    with ``key``, as with ``"off"``) gives the score variance that ``alpha`` is chosen
    from, and the coarsened posterior is sampled (with ``fold_in(key, 1)``) only when
    ``zeta < 1``, so a well-specified fit costs one posterior and keeps its numbers.
    ``z``: the snapshots in their time order (the error estimate splits them in halves).
    """
    from .coarsening import OFF, Coarsening, choose_zeta, zeta_from_alpha

    if spec.partition.coreset:
        points, counts, covs = part.points, part.counts, part.cell_covariances
    else:
        points, counts, covs = z, np.ones(len(z)), None
    m = spec.mixture
    prior = build_prior(part, m.dirichlet_alpha, m.mean_scale, m.scale_prior, m.lkj_eta)
    config = SamplerConfig(**spec.sampler._asdict(), progress=progress)

    def run(run_key, zeta):
        scaled = counts if zeta == 1.0 else np.asarray(counts, np.float64) * zeta
        return run_nuts(run_key, points, scaled, prior, initial_values(part), config, point_covariances=covs)

    if m.coarsening == "off":
        return run(key, 1.0), OFF
    if m.coarsening != "auto":
        zeta = zeta_from_alpha(float(m.coarsening), len(z))
        return run(key, zeta), Coarsening(method="fixed", zeta=zeta, alpha=float(m.coarsening))
    start = time.perf_counter()
    standard = run(key, 1.0)
    scores, logps = score_draws(*thin_draws(standard, spec.score.max_draws), part.points)
    sk_seed = int(np.asarray(jax.random.key_data(key)).ravel()[-1] % (2**31 - 1))
    choice = choose_zeta(scores, logps, part.points, part.counts, z, m.components, seed=sk_seed)
    if choice.zeta == 1.0:
        return standard, choice
    post = run(jax.random.fold_in(key, 1), choice.zeta)
    return post._replace(wall_time=time.perf_counter() - start), choice


def _posterior_from_arrays(cached):
    from .coarsening import Coarsening

    sites = {k[5:]: v for k, v in cached.items() if k.startswith("site_")}
    stats = {k[5:]: v for k, v in cached.items() if k.startswith("stat_")}
    coarsening = {k: (math.inf if v is None and k == "alpha" else math.nan if v is None else v)
                  for k, v in json.loads(str(cached["coarsening"])).items()}
    return (PosteriorSamples(sites["weights"], sites["means"], sites["cov_chol"], sites, stats,
                             float(cached["wall_time"])), Coarsening(**coarsening))


def _posterior_stage(spec, out, key, part, z, upstream, progress):
    skey = stage_key("posterior", upstream, spec.section_json("mixture", "sampler", "partition"))
    cached = out.load_stage("posterior", skey, build=_posterior_from_arrays)
    if cached is not None:
        return cached, skey, True
    post, coarsening = sample_posterior(spec, key, part, z, progress)
    arrays = {f"site_{k}": v for k, v in post.sites.items()}
    arrays.update({f"stat_{k}": v for k, v in post.sample_stats.items()})
    arrays["wall_time"] = np.asarray(post.wall_time)
    arrays["coarsening"] = np.asarray(json.dumps(coarsening.to_json()))
    out.save_stage("posterior", skey, arrays)
    return (post, coarsening), skey, False


def _select_components(spec: Spec, out, partition_key, mcmc_key, z, zscore, cells, upstream, progress):
    """Fit a posterior for each ``[mixture] select_components`` K (cached stages), keep the best by
    PSIS-LOO; returns the spec with ``components`` set to it, the selection, whether the best
    posterior came from the cache, and its InferenceData.  The fine cells do not depend on K, so the candidates' LOO terms
    are over the same cells."""
    candidates, cached = {}, {}
    for k in spec.mixture.select_components:
        # candidates are compared by the standard posterior: PSIS-LOO's importance ratios are those of the
        # untempered likelihood; the chosen K is then fitted with the spec's coarsening
        spec_k = spec._replace(mixture=spec.mixture._replace(components=k, select_components=(), coarsening="off"))
        _log(progress, f"model selection: K = {k}")
        part_k, part_key = _partition_stage(spec_k, out, partition_key, z, cells, upstream)
        (post_k, _), _, cached[k] = _posterior_stage(spec_k, out, mcmc_key, part_k, z, part_key, progress)
        candidates[k] = to_inference_data(post_k, zscore, part_k.points, part_k.counts,
                                          point_covariances=part_k.cell_covariances)
    selection = select_components(candidates)
    if selection.table is not None:
        atomic_write_bytes(out.path("model_selection.csv"), selection.table.to_csv().encode())
    best = spec._replace(mixture=spec.mixture._replace(components=selection.best, select_components=()))
    if best.mixture.coarsening != "off":  # the chosen K's posterior is sampled again, coarsened
        return best, selection, None, None
    return best, selection, cached[selection.best], candidates[selection.best]


def _langevin_from_arrays(cached) -> LangevinResult:
    return LangevinResult(samples=cached["samples"], alive=cached["alive"], escaped=int(cached["escaped"]),
                          non_finite=int(cached["non_finite"]), wall_time=float(cached["wall_time"]))


def run_study(spec: Spec, out_dir: str | None = None, seed: int | None = None, progress: bool = False,
              force: bool = False, data=None) -> BayesianKGMM:
    """Run a study end to end and write its output folder; returns the fitted result.

    ``data``: an array ``(n, d)`` or ``(members, n, d)`` used instead of the
    spec's ``[data]`` source (see :func:`kgmm_bayes.fit`).
    """
    seed = check_seed(spec.study.seed if seed is None else seed)
    user_data = load_user_data(spec, data)  # bad user data fail here, before JAX and disk
    data_hash = ""
    if user_data is not None:
        data_hash = hashlib.sha256(np.ascontiguousarray(user_data).tobytes()).hexdigest()
        train_size, _ = split_members(user_data[..., :1], spec.data.heldout_fraction)
        _check_sizes(spec, len(train_size), user_data.shape[-1])
    if out_dir is None:
        out_dir = os.path.join("kgmm-runs", spec.study.name)
    with OutputFolder(out_dir, json.dumps({"spec": spec.to_dict(), "seed": seed}, sort_keys=True,
                                          default=list), force=force) as out:
        return _run_stages(spec, out, seed, user_data, data_hash, progress)


def _run_stages(spec: Spec, out: OutputFolder, seed: int, user_data, data_hash: str, progress: bool) -> BayesianKGMM:
    """The stages of :func:`run_study` inside its locked output folder, ending with the commit."""
    timings, cached_stages = {}, []
    total_start = time.perf_counter()
    data_key, reference_key, partition_key, mcmc_key, train_key, langevin_key = study_keys(seed)

    start = time.perf_counter()
    _log(progress, f"data: {spec.data.system or spec.data.path}")
    data = prepare_data(spec, data_key, reference_key, out, user_data=user_data)
    cells = _check_sizes(spec, len(data.train), data.train.shape[1])
    z = data.zscore.forward(data.train)
    upstream = stage_key(spec.section_json("data"), seed, __version__, STAGE_SCHEMA, data_hash)
    timings["data"] = time.perf_counter() - start

    selection, best_idata = None, None
    if spec.mixture.select_components:
        start = time.perf_counter()
        spec, selection, best_cached, best_idata = _select_components(spec, out, partition_key, mcmc_key, z, data.zscore, cells,
                                                          upstream, progress)
        timings["model_selection"] = time.perf_counter() - start

    start = time.perf_counter()
    _log(progress, f"partition: {len(z)} snapshots -> {cells} cells, {spec.mixture.components} components")
    part, part_key = _partition_stage(spec, out, partition_key, z, cells, upstream)
    timings["partition"] = time.perf_counter() - start

    _log(progress, f"posterior: NUTS, {spec.sampler.chains} chains x ({spec.sampler.warmup} + "
                   f"{spec.sampler.draws}) on {len(part.points) if spec.partition.coreset else len(z)} points")
    start = time.perf_counter()
    (post, coarsening), post_key, was_cached = _posterior_stage(spec, out, mcmc_key, part, z, part_key, progress)
    timings["posterior"] = post.wall_time if was_cached else time.perf_counter() - start
    if best_idata is not None:  # computed (or read back) while choosing K
        was_cached = best_cached
        timings["posterior"] = post.wall_time
    if was_cached:
        cached_stages.append("posterior")

    start = time.perf_counter()
    # pointwise log-likelihood terms (for az.loo) when the likelihood's observations are the cells
    idata = best_idata if best_idata is not None else to_inference_data(
        post, data.zscore, part.points, part.counts, point_covariances=part.cell_covariances,
        log_likelihood=spec.partition.coreset)
    convergence = convergence_summary(idata)
    convergence["coarsening"] = coarsening.to_json()
    if "map_potential_energies" in post.sample_stats:
        optima = np.sort(-np.asarray(post.sample_stats["map_potential_energies"]))[::-1]
        convergence["map_search_log_posteriors"] = _json_floats(optima)  # best first; chains start at the best
    for message in convergence["warnings"]:
        warnings.warn(f"posterior: {message}", RuntimeWarning, stacklevel=3)
    draws = thin_draws(post, spec.score.max_draws)
    scores, logps = score_draws(*draws, part.points)
    summary = summarize_scores(scores, logps, spec.score.band)
    timings["score"] = time.perf_counter() - start

    start = time.perf_counter()
    _log(progress, "interpolant: training")
    ikey = stage_key("interpolant", post_key, spec.section_json("interpolant", "score"))
    interp = out.load_stage("interpolant", ikey, build=interpolant_from_arrays)
    if interp is None:
        interp = fit_interpolant(train_key, part.points, summary.mean, part.counts,
                                 spec.interpolant.hidden, spec.interpolant.steps,
                                 spec.interpolant.learning_rate, progress=progress)
        out.save_stage("interpolant", ikey, interpolant_arrays(interp))
    else:
        cached_stages.append("interpolant")
    timings["interpolant"] = time.perf_counter() - start

    start = time.perf_counter()
    lg = spec.langevin
    _log(progress, f"langevin: {lg.particles} particles x {lg.burn_in + lg.steps} steps (drift: {lg.drift})")
    if lg.drift == "interpolant":
        drift_fn, drift_params = interp.apply_fn(), interp.params
    else:
        drift_fn, drift_params = predictive_drift(draws)
    stiffness = lg.dt * max_jacobian_eigenvalue(drift_fn, drift_params, part.points)
    if stiffness > STIFFNESS_LIMIT:
        warnings.warn(f"langevin: dt x max |eigenvalue of the drift Jacobian| = {stiffness:.2f} at the data "
                      "(Euler-Maruyama is unstable above 2): lower [langevin] dt", RuntimeWarning, stacklevel=3)
    lkey = stage_key("langevin", ikey, spec.section_json("langevin"))
    cached = out.load_stage("langevin", lkey, build=_langevin_from_arrays)
    if cached is None:
        x0, run_key = langevin_start(langevin_key, part, lg.particles)
        rom = simulate_langevin(run_key, drift_fn, drift_params, x0, lg.dt, lg.steps, lg.burn_in, lg.thin, lg.box,
                                progress=progress)
        out.save_stage("langevin", lkey, rom._asdict())
    else:
        rom = cached
        cached_stages.append("langevin")
    timings["langevin"] = rom.wall_time if "langevin" in cached_stages else time.perf_counter() - start

    floor = marginal_relative_entropies(data.reference, data.train, spec.metrics.grid_points)  # data vs data
    if spec.ensemble.members > 0:
        start = time.perf_counter()
        es = spec.ensemble
        _log(progress, f"ensemble: {es.members} posterior members x {es.particles} particles x "
                       f"{es.burn_in + es.steps} steps (drift: {es.drift})")
        ensemble_metrics = ensemble_stage(spec, out, jax.random.fold_in(langevin_key, 1), post, part, data,
                                           user_data, post_key, float(floor.mean()), progress)
        timings["ensemble"] = time.perf_counter() - start

    start = time.perf_counter()
    _log(progress, "metrics, figures, report")
    kept = rom.kept_samples()
    rom_phys = data.zscore.inverse(kept.astype(np.float64))
    if len(kept) >= 2:
        rel_ent = marginal_relative_entropies(data.reference, rom_phys, spec.metrics.grid_points)
    else:  # reported, not hidden: the model has no stationary samples to compare
        rel_ent = np.full(z.shape[1], np.nan)
    interp_at_points = np.asarray(interp(jnp.asarray(part.points, jnp.float32)), dtype=np.float64)
    metrics = {
        "study": spec.study.name, "seed": seed, "version": __version__,
        "data": {"source": data.source, "train_snapshots": int(len(data.train)),
                 "reference_snapshots": int(len(data.reference)), "dim": int(z.shape[1])},
        "partition": {"cells": int(len(part.points)), "components": int(len(part.centroids))},
        "relative_entropy": {"per_marginal": _json_floats(rel_ent), "mean": _json_floats(rel_ent.mean()),
                             "data_floor_per_marginal": floor.tolist(), "data_floor_mean": float(floor.mean())},
        "posterior": convergence,
        "interpolant": {"final_loss": interp.final_loss,
                        "relative_error_vs_posterior_mean": weighted_score_error(interp_at_points, summary.mean, part.counts)},
        "langevin": {"particles": int(lg.particles), "escaped": rom.escaped, "non_finite": rom.non_finite,
                     "kept_samples": int(len(kept)), "drift": lg.drift,
                     "dt_times_max_jacobian_eigenvalue": stiffness,
                     "particle_steps_per_second": float(lg.particles * (lg.steps + lg.burn_in) / max(rom.wall_time, 1e-9))},
        "cached_stages": cached_stages,
    }
    if selection is not None:
        metrics["model_selection"] = selection.to_json()
    if spec.ensemble.members > 0:
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
            "relative_error_interpolant": weighted_score_error(interp_at_points, true_at_points, part.counts),
            "band_coverage": band_coverage(true_at_points, summary.lower, summary.upper, part.counts),
        }
    if rom.escaped or rom.non_finite:
        message = (f"langevin: {rom.escaped} of {lg.particles} particles left the box |x| <= {lg.box}, "
                   f"{rom.non_finite} became non-finite")
        metrics["langevin"]["warning"] = message
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    # ---- write outputs into the staging folder, then swap it into place
    # netCDF built in memory, then one atomic write: a full disk is an OSError, never an HDF5 crash
    atomic_write_bytes(out.path("posterior.nc"), netcdf_bytes(idata))
    atomic_write_bytes(out.path("diagnostics.csv"), probe_summary(idata).to_csv().encode())
    save_interpolant(out.path("interpolant.npz"), interp)
    buffer = io.BytesIO()
    np.save(buffer, rom_phys)
    atomic_write_bytes(out.path("rom_samples.npy"), buffer.getvalue())
    std = data.zscore.std
    plot_score(out.path("figures", "score.png"), data.zscore.inverse(part.points),
               summary._replace(mean=summary.mean / std, lower=summary.lower / std, upper=summary.upper / std),
               part.counts, interp_at_points / std,
               None if true_at_points is None else true_at_points / std, spec.score.band)
    if z.shape[1] == 2:
        plot_score_field(out.path("figures", "score_field.png"), draws, data.zscore, data.train, spec.score.band)
    if len(kept) >= 2:
        plot_marginals(out.path("figures", "marginals.png"), data.reference, rom_phys, rel_ent)
    plot_diagnostics(out.path("figures"), idata)
    timings["metrics"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - total_start
    metrics["timings"] = timings
    metrics["faults"] = numerical_faults(metrics)  # what --strict turns into a non-zero exit
    atomic_write_bytes(out.path("metrics.json"), json.dumps(metrics, indent=2).encode())
    write_report(out.path("report.md"), spec, metrics)
    final = out.commit()
    _log(progress, f"done in {timings['total']:.1f} s -> {final}")
    return BayesianKGMM(spec=spec, zscore=data.zscore, inference_data=idata, partition=part,
                        target_summary=summary, interpolant=interp, rom_samples=rom_phys,
                        metrics=metrics, out_dir=final, draws=draws)
