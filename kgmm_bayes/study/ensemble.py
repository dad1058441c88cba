"""The study's ensemble stage: a posterior ensemble of reduced-order models (DESIGN.md, step 6).

S posterior draws, one Langevin model each (the draw's closed-form mixture score,
or an interpolant per draw trained together), all run in one ``lax.scan``
(:mod:`kgmm_bayes.rom.ensemble`); per-member statistics, their median and credible
bands, and the relative entropy as a distribution.  Part of the study runner,
called by :mod:`kgmm_bayes.study.run`.

In the data's time (a fitted mobility, :mod:`kgmm_bayes.study.dynamics`) each member has its own
mobility, fitted from the training trajectories with its draw's score and corrected by the study's
rate factor, and runs on the study model's schedule (a snapshot per data interval) for at least
:data:`~kgmm_bayes.study.dynamics.ENSEMBLE_ROWS_PER_LAG` correlation windows: the members'
correlation functions and decorrelation times give their credible bands.

Where the study model's score is corrected by score matching (:mod:`kgmm_bayes.bayes.correction`), every
member's score is too, each with its own draw of the correction's coefficients (their sampling error over
the training snapshots' blocks), in its drift and its mobility: the bands are around the corrected model.
"""
from __future__ import annotations

import math
import time
import warnings

import jax
import numpy as np

from ..bayes.correction import correction_arrays, corrected_members, theta_draws
from ..data.systems import get_system
from ..spec import data_interval_of
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
from ..data.stream import StreamedData
from .dynamics import ENSEMBLE_ROWS_PER_LAG, member_dynamics, member_mobilities
from .figures import plot_ensemble_acf, plot_ensemble_marginals, plot_relative_entropy
from .outputs import _checksum, stage_key

__all__ = ["ensemble_stage", "reference_series"]


def reference_series(spec: Spec, reference, user_data):
    """The reference as time series ``(runs, n, d)``, the time between its snapshots and a label; or None.

    :func:`prepare_data` flattens a built-in system's reference run ``(members, n, d)``
    member by member, so it reshapes back exactly (systems with their own simulator,
    e.g. Kuramoto-Sivashinsky's shift augmentation, have no such structure: None).
    User data: the held-out part of the array, cut as :func:`split_members` cuts it,
    with lags in snapshots, or in the data's time when ``[data] interval`` is given.
    """
    ds = spec.data
    if isinstance(user_data, StreamedData):  # the held-out series kept in memory
        interval = data_interval_of(ds)
        return (user_data.reference_sample, 1.0 if interval is None else interval,
                "held-out data, whole series sampled" + (" (lag in snapshots)" if interval is None else ""))
    if user_data is not None:
        interval = data_interval_of(ds)
        members, n, _ = user_data.shape
        fraction = ds.heldout_fraction
        if fraction <= 0:
            series = user_data
        elif members >= 5:
            series = user_data[members - max(1, int(round(members * fraction))):]
        else:
            series = user_data[:, n - max(1, int(round(n * fraction))):]
        if interval is None:
            return series, 1.0, "held-out data (lag in snapshots)"
        return series, interval, "held-out data (data time units)"
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
                   chain_weights=None, dynamics=None, schedule=None, series=None, correction=None):
    """Posterior ensemble of reduced-order models: ``ensemble.npz``, three figures; returns the metrics
    block and the stage's arrays.  With ``dynamics`` (:class:`~kgmm_bayes.study.dynamics.Dynamics`),
    the study model's ``schedule`` ``(dt, thin)`` and the z-scored training ``series``, the members run
    in the data's time, each with its own mobility.  ``correction``: the study model's applied score
    correction, added to every member's score with the member's own draw of its coefficients."""
    es, lg = spec.ensemble, spec.langevin
    dt, thin, steps, burn_in, max_lag, lag_time = lg.dt, es.thin, es.steps, es.burn_in, es.max_lag, lg.dt * es.thin
    draws = select_draws(post, es.members, chain_weights)
    drift_key, start_key, run_key = jax.random.split(key, 3)
    thetas = None if correction is None else theta_draws(correction, jax.random.fold_in(key, 4), len(draws[0]))
    mobility = None
    if dynamics is not None:  # each member's own mobility, on its own bootstrap of the trajectories
        mobility = member_mobilities(dynamics, series, draws, jax.random.fold_in(key, 3),
                                     None if correction is None else (correction, thetas))
        (dt, thin), max_lag, lag_time = schedule, len(dynamics.lags) - 1, dynamics.interval
        # the study model's step keeps its stiffness; a member with a larger mobility gets a shorter step
        stiffer = max(np.linalg.norm(m, 2) for m in mobility) / np.linalg.norm(dynamics.phi, 2)
        if stiffer > 1.0:
            thin = math.ceil(thin * stiffer)
            dt = dynamics.interval / thin
        steps = thin * max(es.steps // thin, ENSEMBLE_ROWS_PER_LAG * (max_lag + 1))
        burn_in = max(es.burn_in, thin * max_lag)  # at least one correlation window
    skey = stage_key("ensemble", post_key, spec.section_json("ensemble"), lg.dt, lg.box, spec.metrics.grid_points,
                     spec.section_json("interpolant") if es.drift == "interpolant" else "",
                     *(() if chain_weights is None else (np.asarray(chain_weights).tolist(),)),
                     *(() if correction is None else (_checksum(correction_arrays(correction)),)),
                     *(() if mobility is None else (mobility.tobytes().hex(), dt, thin, steps, burn_in, max_lag)))
    arrays = out.load_stage("ensemble", skey)
    was_cached = arrays is not None
    if not was_cached:
        start = time.perf_counter()
        if es.drift == "interpolant":
            itp = spec.interpolant
            drift_fn, params, losses = interpolant_members(drift_key, draws, part.points, part.counts, itp.hidden,
                                                           itp.steps, itp.learning_rate)
        else:
            (drift_fn, params), losses = mixture_members(draws), None
        drift_fn, params = corrected_members(drift_fn, params, correction, thetas)
        x0, _ = initial_particles(start_key, part.points, part.counts, es.particles)  # one start shared by the members
        run = simulate_ensemble(run_key, drift_fn, params, x0, dt, steps, burn_in, thin, lg.box,
                                progress=progress, mobility=mobility)
        stats = member_statistics(run, max_lag, lag_time, data.reference, spec.metrics.grid_points,
                                  transform=data.zscore.inverse)
        arrays = {**stats._asdict(), "escaped": run.escaped, "non_finite": run.non_finite,
                  "simulation_wall_time": np.asarray(run.wall_time), "dt": np.asarray(dt),
                  "steps": np.asarray(steps), "burn_in": np.asarray(burn_in), "thin": np.asarray(thin)}
        if mobility is not None:
            arrays["member_correlation"], arrays["member_decorrelation_time"] = member_dynamics(
                run.samples, run.alive, max_lag, dynamics.interval)
            arrays["member_mobility"] = mobility
        arrays["reference_pdf"] = np.array([gaussian_kde_1d(data.reference[:, i], stats.grid[i])
                                            for i in range(stats.grid.shape[0])])
        ref = reference_series(spec, data.reference, user_data)
        if ref is not None:
            arrays["reference_acf"] = autocorrelation(ref[0], min(max_lag, ref[0].shape[1] - 1))
            arrays["reference_lags"] = ref[1] * np.arange(len(arrays["reference_acf"]))
            arrays["reference_acf_label"] = np.asarray(ref[2])
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
    steps, burn_in = int(arrays["steps"]), int(arrays["burn_in"])
    members = len(draws[0])  # es.members, or fewer where a heavy stacked chain has too few draws
    particle_steps = members * es.particles * (steps + burn_in)
    block = {
        "members": int(members), "drift": es.drift, "particles_per_member": int(es.particles),
        "mobility": "identity" if dynamics is None else "fitted, one per member",
        # the model's score correction, each member with its own draw of the coefficients (none: not applied)
        "score_correction": None if correction is None else f"{len(correction.centres)} bumps, a draw per member",
        "steps": steps, "burn_in": burn_in, "thin": int(arrays["thin"]), "dt": float(arrays["dt"]),
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
        block["warning"] = (f"ensemble: {int(lost.sum())} of {members * es.particles} particles left the box "
                            f"or became non-finite, in {int(np.sum(lost > 0))} of {members} members")
        warnings.warn(block["warning"], RuntimeWarning, stacklevel=3)
    return block, arrays
