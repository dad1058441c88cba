"""The study's ensemble stage: a posterior ensemble of reduced-order models (DESIGN.md, step 6).

S posterior draws, one Langevin model each (the draw's closed-form mixture score,
or an interpolant per draw trained together), all run in one ``lax.scan``
(:mod:`kgmm_bayes.rom.ensemble`); per-member statistics, their median and credible
bands, and the relative entropy as a distribution.  Part of the study runner,
called by :mod:`kgmm_bayes.study.run`.
"""
from __future__ import annotations

import time
import warnings

import jax
import numpy as np

from ..data.systems import get_system
from ..files import atomic_write_bytes, json_floats, npz_bytes
from ..metrics import gaussian_kde_1d
from ..rom.ensemble import (
    autocorrelation,
    bands,
    entropy_distribution,
    interpolant_members,
    member_statistics,
    mixture_members,
    select_draws,
    simulate_ensemble,
)
from ..rom.langevin import initial_particles
from ..spec import Spec
from .figures import plot_ensemble_acf, plot_ensemble_marginals, plot_relative_entropy
from .outputs import stage_key

__all__ = ["ensemble_stage", "reference_series"]


def reference_series(spec: Spec, reference, user_data):
    """The reference as time series ``(runs, n, d)``, the time between its snapshots and a label; or None.

    :func:`prepare_data` flattens a built-in system's reference run ``(members, n, d)``
    member by member, so it reshapes back exactly (systems with their own simulator,
    e.g. Kuramoto-Sivashinsky's shift augmentation, have no such structure: None).
    User data: the held-out part of the array, cut as :func:`split_members` cuts it,
    with lags in snapshots.
    """
    ds = spec.data
    if user_data is not None:
        members, n, _ = user_data.shape
        fraction = ds.heldout_fraction
        if fraction <= 0:
            series = user_data
        elif members >= 5:
            series = user_data[members - max(1, int(round(members * fraction))):]
        else:
            series = user_data[:, n - max(1, int(round(n * fraction))):]
        return series, 1.0, "held-out data (lag in snapshots)"
    system = get_system(ds.system)
    if system.simulator is not None:
        return None
    pick = lambda given, default: default if given is None else given  # noqa: E731
    members, thin = pick(ds.members, system.members), pick(ds.thin, system.thin)
    n = pick(ds.steps, system.steps) // thin
    if len(reference) != members * n:
        return None
    return reference.reshape(members, n, -1), pick(ds.dt, system.dt) * thin, "reference (system time units)"


def ensemble_stage(spec: Spec, out, key, post, part, data, user_data, post_key, floor, progress,
                   chain_weights=None):
    """Posterior ensemble of reduced-order models: ``ensemble.npz``, three figures, the metrics block."""
    es, lg = spec.ensemble, spec.langevin
    skey = stage_key("ensemble", post_key, spec.section_json("ensemble"), lg.dt, lg.box, spec.metrics.grid_points,
                     spec.section_json("interpolant") if es.drift == "interpolant" else "",
                     *(() if chain_weights is None else (np.asarray(chain_weights).tolist(),)))
    arrays = out.load_stage("ensemble", skey)
    was_cached = arrays is not None
    if not was_cached:
        start = time.perf_counter()
        draws = select_draws(post, es.members, chain_weights)
        drift_key, start_key, run_key = jax.random.split(key, 3)
        if es.drift == "interpolant":
            itp = spec.interpolant
            drift_fn, params, losses = interpolant_members(drift_key, draws, part.points, part.counts, itp.hidden,
                                                           itp.steps, itp.learning_rate)
        else:
            (drift_fn, params), losses = mixture_members(draws), None
        x0, _ = initial_particles(start_key, part.points, part.counts, es.particles)  # one start shared by the members
        run = simulate_ensemble(run_key, drift_fn, params, x0, lg.dt, es.steps, es.burn_in, es.thin, lg.box,
                                progress=progress)
        stats = member_statistics(run, es.max_lag, lg.dt * es.thin, data.reference, spec.metrics.grid_points,
                                  transform=data.zscore.inverse)
        arrays = {**stats._asdict(), "escaped": run.escaped, "non_finite": run.non_finite,
                  "simulation_wall_time": np.asarray(run.wall_time)}
        arrays["reference_pdf"] = np.array([gaussian_kde_1d(data.reference[:, i], stats.grid[i])
                                            for i in range(stats.grid.shape[0])])
        series = reference_series(spec, data.reference, user_data)
        if series is not None:
            arrays["reference_acf"] = autocorrelation(series[0], min(es.max_lag, series[0].shape[1] - 1))
            arrays["reference_lags"] = series[1] * np.arange(len(arrays["reference_acf"]))
            arrays["reference_acf_label"] = np.asarray(series[2])
        if losses is not None:
            arrays["interpolant_final_loss"] = np.asarray(losses)
        arrays["wall_time"] = np.asarray(time.perf_counter() - start)
        out.save_stage("ensemble", skey, arrays)
    atomic_write_bytes(out.path("ensemble.npz"), npz_bytes(arrays))
    rel = arrays["relative_entropy"]
    names = spec.data.variables or None
    dist = entropy_distribution(rel)
    plot_ensemble_marginals(out.path("figures", "ensemble_marginals.png"), arrays["grid"], bands(arrays["pdf"]),
                            arrays["reference_pdf"], dist["per_marginal"]["median"], names=names)
    has_acf = "reference_acf" in arrays
    plot_ensemble_acf(out.path("figures", "ensemble_acf.png"), arrays["lags"], bands(arrays["acf"]),
                      arrays["reference_lags"] if has_acf else None, arrays["reference_acf"] if has_acf else None,
                      str(arrays["reference_acf_label"]) if has_acf else "reference", names=names)
    plot_relative_entropy(out.path("figures", "relative_entropy.png"), rel, floor, names=names)
    particle_steps = es.members * es.particles * (es.steps + es.burn_in)
    block = {
        "members": int(es.members), "drift": es.drift, "particles_per_member": int(es.particles),
        "steps": int(es.steps), "burn_in": int(es.burn_in), "thin": int(es.thin), "dt": float(lg.dt),
        "relative_entropy": {"band": 0.9, **{which: {q: json_floats(v) for q, v in quantiles.items()}
                                             for which, quantiles in dist.items()}},
        "moments": {name: {q: json_floats(v) for q, v in bands(arrays[name])._asdict().items()}
                    for name in ("mean", "variance", "skewness", "kurtosis")},
        "wall_time": float(arrays["wall_time"]),
        "particle_steps_per_second": float(particle_steps / max(float(arrays["simulation_wall_time"]), 1e-9)),
        "escaped_per_member": [int(v) for v in arrays["escaped"]],
        "non_finite_per_member": [int(v) for v in arrays["non_finite"]],
        "reference_acf": str(arrays["reference_acf_label"]) if has_acf else None,
        "cached": was_cached,
    }
    if "interpolant_final_loss" in arrays:
        block["interpolant_final_loss_median"] = float(np.median(arrays["interpolant_final_loss"]))
    lost = arrays["escaped"] + arrays["non_finite"]
    if np.any(lost):
        block["warning"] = (f"ensemble: {int(lost.sum())} of {es.members * es.particles} particles left the box "
                            f"or became non-finite, in {int(np.sum(lost > 0))} of {es.members} members")
        warnings.warn(block["warning"], RuntimeWarning, stacklevel=3)
    return block
