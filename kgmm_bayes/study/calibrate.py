"""Calibration of the credible bands: do the 90% bands contain the truth 90% of the time?

For a built-in system with an analytic score, :func:`calibrate` fits the posterior
(the study's partition, priors and sampler) on ``N`` training snapshots, for each
``N`` in ``sizes`` and each of ``seeds`` independent data sets, and measures two
coverages of the ``[score] band`` credible band:

* **score**: at evaluation points drawn from the stationary density (a random
  subset of an independent long run, the same points for every ``N`` and seed),
  the fraction of (point, coordinate) pairs where the analytic score lies inside
  the band of the draws' mixture scores;
* **stationary PDF**: each posterior draw's reduced-order model
  ``dx = grad log p_theta(x) dt + sqrt(2) dW`` has the draw's mixture density
  ``p_theta`` as its exact stationary density (up to the time step), so the
  model's marginal PDFs are the mixture's marginals, in closed form; the
  fraction of a grid, weighted by the true marginal density, where the true
  marginal PDF lies inside the band of the draws' marginal PDFs.  The true
  marginals are computed from the analytic score by integrating it on a grid
  (:func:`true_marginals`, d <= 2).

The training and evaluation data of an SDE system are simulated with the system's step
divided by :data:`REFINE` (same physical times), so that they follow the density whose
score is the analytic one (the integrator's own bias at the systems' step is as large
as the four-well mixture's).

These are the bands of the posterior over the mixture: the interpolant's error
(the study's default Langevin drift) is not in them.  With a misspecified model
(a finite Gaussian mixture for a non-Gaussian density) coverage is expected to
fall as ``N`` grows: the posterior concentrates on the best mixture, not the
truth.  Outputs: ``calibration.csv`` (one row per fit), ``calibration.md``,
``calibration.json`` and ``figures/calibration.png`` (coverage against ``N``).
"""
from __future__ import annotations

import json
import math
import sys
from typing import NamedTuple, Sequence

import jax
import numpy as np

from .._version import __version__
from ..bayes.correction import fit_correction, model_score_band
from ..bayes.diagnostics import convergence_summary, independent_starts, to_inference_data
from ..bayes.score import posterior_mean_score, score_draws, summarize_scores, thin_draws
from ..data.systems import get_system, simulate
from ..data.zscore import ZScore
from ..errors import InputError
from ..files import atomic_write_bytes
from ..partition import fit_partition
from ..spec import Spec
from .checks import check_seed
from .outputs import OutputFolder, stage_key
from .stages import STAGE_SCHEMA, model_draws, sample_posterior, stacked_weights, with_local_bias

__all__ = ["calibrate", "check_calibration_specs", "true_marginals", "mixture_marginals", "CalibrationResult",
           "seed_standard_error",
           "EVAL_POINTS"]

EVAL_POINTS = 2000  # evaluation points of the score coverage, drawn from the stationary density
MARGINAL_GRID = 512  # grid points per coordinate for the true and the mixture marginals
# The SDE step of the calibration data is the system's divided by this (same physical times).  At the
# systems' own step (Euler-Maruyama, dt = 0.01) four-well data do not follow exp(-U): on 1e5 snapshots
# Hyvarinen's score ranks the analytic score no better than a K = 16 posterior mean (difference
# 0.00 +- 0.05, z units) although that mean is 0.56 from it in Fisher divergence, so no band could cover
# the analytic score; at dt / 10 the analytic score is ahead by 0.28 +- 0.03 (Fisher divergence 0.37).
REFINE = 10
# what a fit and its coverages depend on ([interpolant] correction: the corrected score's band)
FIT_SECTIONS = ("data", "partition", "mixture", "sampler", "score", "interpolant")
COLUMNS = ("system", "n", "seed", "cells", "components", "zeta", "alpha", "score_coverage",
           "score_coverage_posterior_band", "score_coverage_corrected", "correction_bumps", "pdf_coverage",
           "score_error_over_sd", "score_band_width", "median_score_band_width", "median_corrected_band_width",
           "pdf_band_width", "max_r_hat",
           "min_ess_bulk", "divergences", "posterior_s")


class CalibrationResult(NamedTuple):
    rows: list  # one dict per (system, n, seed), keys COLUMNS
    out_dir: str


def check_calibration_specs(specs: Sequence[Spec], sizes: Sequence[int], seeds: int) -> None:
    """One-line InputError for anything calibration cannot do, before any JAX work."""
    if not specs:
        raise InputError("calibrate needs at least one spec")
    if seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {seeds}")
    if not sizes:
        raise InputError("--sizes needs at least one data size")
    names = [spec.study.name for spec in specs]
    if len(set(names)) != len(names):
        raise InputError(f"two specs share the study name {sorted(n for n in names if names.count(n) > 1)[0]!r}")
    for spec in specs:
        label = f"spec {spec.study.name!r}"
        if spec.data.system is None:
            raise InputError(f"{label}: calibration needs a built-in system with an analytic score, not a data file")
        system = get_system(spec.data.system)
        if system.score is None:
            raise InputError(f"{label}: system {system.name!r} has no analytic score: nothing to calibrate against")
        if system.dim > 2:
            raise InputError(f"{label}: system {system.name!r} has dimension {system.dim}; the true marginal PDFs "
                             "are computed on a grid for dimension <= 2")
        if spec.mixture.select_components:
            raise InputError(f"{label}: [mixture] select_components is not supported by calibrate; set components")
        for n in sizes:
            if n < 4 * spec.mixture.components:
                raise InputError(f"{label}: data size {n} is too small for {spec.mixture.components} components "
                                 f"(need at least {4 * spec.mixture.components})")


def _cumtrapz(values, x, axis: int):
    """Cumulative trapezoid integral along ``axis``, starting at 0."""
    v = np.moveaxis(values, axis, -1)
    steps = 0.5 * (v[..., 1:] + v[..., :-1]) * np.diff(x)
    return np.moveaxis(np.concatenate([np.zeros(v.shape[:-1] + (1,)), np.cumsum(steps, axis=-1)], axis=-1), -1, axis)


def true_marginals(score_fn, grid) -> np.ndarray:
    """Marginal PDFs ``(d, G)`` of the density whose score is ``score_fn``, on ``grid`` ``(d, G)``, d <= 2.

    ``log p`` is the line integral of the score (a gradient field) on the tensor grid:
    along the first coordinate at the grid's first value of the second, then along the
    second (trapezoid rule, error O(h^2)); the density is normalised on the grid.
    """
    grid = np.asarray(grid, dtype=np.float64)
    d, g = grid.shape
    if d == 1:
        s = np.asarray(score_fn(grid[0][:, None]), dtype=np.float64)[:, 0]
        logp = _cumtrapz(s, grid[0], 0)
        p = np.exp(logp - logp.max())
        return (p / np.trapezoid(p, grid[0]))[None]
    if d != 2:
        raise ValueError(f"true_marginals: dimension {d} > 2")
    xx, yy = np.meshgrid(grid[0], grid[1], indexing="ij")
    s = np.asarray(score_fn(np.stack([xx, yy], axis=-1).reshape(-1, 2)), dtype=np.float64).reshape(g, g, 2)
    logp = _cumtrapz(s[:, 0, 0], grid[0], 0)[:, None] + _cumtrapz(s[..., 1], grid[1], 1)
    p = np.exp(logp - logp.max())
    px, py = np.trapezoid(p, grid[1], axis=1), np.trapezoid(p, grid[0], axis=0)
    return np.stack([px / np.trapezoid(px, grid[0]), py / np.trapezoid(py, grid[1])])


def mixture_marginals(weights, means, cov_chol, zscore: ZScore, grid) -> np.ndarray:
    """Marginal PDFs ``(S, d, G)`` in physical units of mixture draws given in z-scored coordinates."""
    weights, means = np.asarray(weights, np.float64), np.asarray(means, np.float64)
    cov_chol = np.asarray(cov_chol, np.float64)
    var = np.einsum("skij,skij->ski", cov_chol, cov_chol)  # diag(L L^T): (S, K, d)
    std, mu = np.asarray(zscore.std, np.float64), np.asarray(zscore.mean, np.float64)
    loc = mu + std * means  # (S, K, d) physical
    scale = std * np.sqrt(var)
    x = np.asarray(grid, np.float64)[None, None]  # (1, 1, d, G)
    dens = np.exp(-0.5 * ((x - loc[..., None]) / scale[..., None]) ** 2) / (np.sqrt(2 * np.pi) * scale[..., None])
    return np.einsum("sk,skdg->sdg", weights, dens)


def _run_settings(system, spec: Spec) -> dict:
    """``simulate`` settings of the spec's data, the SDE step refined by :data:`REFINE` (same
    physical times): the data then follow the analytic density, not the integrator's."""
    ds = spec.data
    settings = {"steps": system.steps if ds.steps is None else ds.steps,
                "thin": system.thin if ds.thin is None else ds.thin,
                "burn_in": system.burn_in if ds.burn_in is None else ds.burn_in,
                "dt": system.dt if ds.dt is None else ds.dt}
    if system.simulator is not None:  # direct draws (no time step to refine)
        return settings
    return {"steps": settings["steps"] * REFINE, "thin": settings["thin"] * REFINE,
            "burn_in": settings["burn_in"] * REFINE, "dt": settings["dt"] / REFINE}


def _training_set(key, system, spec: Spec, n: int) -> np.ndarray:
    """``n`` snapshots ``(n, d)``: a random subset of a run with enough members (near-independent draws)."""
    run = _run_settings(system, spec)
    members = system.members if spec.data.members is None else spec.data.members
    members = max(members, math.ceil(n / max(1, run["steps"] // run["thin"])))
    sim_key, pick_key = jax.random.split(key)
    x = simulate(sim_key, system, members=members, **run)
    x = np.asarray(x, np.float64).reshape(-1, system.dim)
    return x[np.asarray(jax.random.permutation(pick_key, len(x))[:n])]


def corrected_band(spec: Spec, post, draws, z, quantiles, widened, at, divisor, seed: int):
    """``(band, bumps)``: the score band a study would give at ``at`` (z-scored points) with its score-matching
    correction (``[interpolant] correction``), fitted as a study fits it to the posterior-mean score of the draws
    that drive the model, on the training snapshots ``z``: the draws' band ``quantiles`` (in units of the z-scored
    score over ``divisor``) moved by it and widened by its sampling error, ``widened`` (the band at least the local
    bias wide) where none is applied, with ``bumps`` 0 (:func:`~kgmm_bayes.bayes.correction.model_score_band`).  A
    study's model check (pilot runs of the reduced-order model) may still drop a correction; calibration judges the
    band of the score alone."""
    if spec.interpolant.correction == "off":
        return widened, 0
    drive, _ = model_draws(post, draws, spec.score.max_draws)
    fitted = fit_correction(z, lambda x: posterior_mean_score(*drive, x), seed=seed)
    bumps = int(len(fitted.centres)) if fitted is not None and fitted.applied else 0
    return model_score_band(quantiles, lambda _: widened, fitted, at, divisor=divisor), bumps


def _fit_one(spec: Spec, system, n: int, seed: int, evaluation, grid, truth_pdf, progress) -> dict:
    """Fit the posterior on ``n`` snapshots of data set ``seed``; the coverages of its bands."""
    data_key, partition_key, mcmc_key = jax.random.split(jax.random.key(seed), 3)
    train = _training_set(data_key, system, spec, n)
    zscore = ZScore.fit(train)
    z = zscore.forward(train)
    k = spec.mixture.components
    cells = min(spec.partition.cells, n // 2)
    part = fit_partition(partition_key, z, cells, k, split=spec.partition.split)
    post, coarsening = sample_posterior(spec, mcmc_key, part, z)
    wall = post.wall_time
    conv = convergence_summary(to_inference_data(post, zscore, part.points, part.counts,
                                                 point_covariances=part.cell_covariances,
                                                 likelihood_power=coarsening.zeta), spec.score.band,
                               independent_starts(post))
    draws = thin_draws(post, spec.score.max_draws, chain_weights=stacked_weights(conv))

    at = zscore.forward(evaluation)
    scores, logps = score_draws(*draws, at)
    quantiles = summarize_scores(np.asarray(scores) / zscore.std, np.asarray(logps), spec.score.band)  # physical
    summary = with_local_bias(post, quantiles, at, divisor=zscore.std)
    true_score = np.asarray(system.score(evaluation), np.float64)
    inside = (true_score >= summary.lower) & (true_score <= summary.upper)
    inside_quantiles = (true_score >= quantiles.lower) & (true_score <= quantiles.upper)  # without the local bias
    err_sd = np.abs(true_score - summary.mean) / np.maximum(summary.std, 1e-300)
    corrected, bumps = corrected_band(spec, post, draws, z, quantiles, summary, at, zscore.std, seed)
    inside_corrected = (true_score >= corrected.lower) & (true_score <= corrected.upper)

    pdfs = mixture_marginals(*draws, zscore, grid)  # (S, d, G)
    tail = 0.5 * (1.0 - spec.score.band)
    lo, hi = np.quantile(pdfs, [tail, 1.0 - tail], axis=0)
    pdf_inside = (truth_pdf >= lo) & (truth_pdf <= hi)
    dx = np.diff(grid, axis=1).mean(axis=1, keepdims=True)
    mass = truth_pdf * dx  # density weights of the grid points, per coordinate
    row = {"system": system.name, "n": int(n), "seed": int(seed), "cells": int(len(part.points)), "components": int(k),
           "score_coverage": float(inside.mean()),
           "score_coverage_posterior_band": float(inside_quantiles.mean()),
           "score_coverage_corrected": float(inside_corrected.mean()), "correction_bumps": bumps,
           "median_corrected_band_width": float(np.median(corrected.upper - corrected.lower)),
           "pdf_coverage": float(np.sum(mass * pdf_inside) / np.sum(mass)),
           "score_error_over_sd": float(np.median(err_sd)),
           "score_band_width": float(np.mean(summary.upper - summary.lower)),
           "median_score_band_width": float(np.median(summary.upper - summary.lower)),
           "zeta": float(coarsening.zeta),
           "alpha": float(coarsening.alpha) if math.isfinite(coarsening.alpha) else None,  # None: not coarsened
           "pdf_band_width": float(np.sum(mass * (hi - lo)) / np.sum(mass)),
           "max_r_hat": float(conv["max_r_hat"]), "min_ess_bulk": float(conv["min_ess_bulk"]),
           "divergences": int(conv["divergences"]), "posterior_s": float(wall)}
    if progress:
        print(f"[kgmm-bayes] {system.name} N={n} seed={seed}: zeta {row['zeta']:.3g}, "
              f"score coverage {row['score_coverage']:.3f} (corrected {row['score_coverage_corrected']:.3f}), "
              f"PDF coverage {row['pdf_coverage']:.3f}, r_hat {row['max_r_hat']:.3f}, posterior {wall:.1f} s",
              file=sys.stderr, flush=True)
    return row


def _evaluation_set(spec: Spec, system, reference_seed: int):
    """Evaluation points (from an independent long run), the marginal grid and the true marginals there."""
    sim_key, pick_key = jax.random.split(jax.random.fold_in(jax.random.key(reference_seed), 1))
    ref = np.asarray(simulate(sim_key, system, **_run_settings(system, spec)), np.float64).reshape(-1, system.dim)
    evaluation = ref[np.asarray(jax.random.permutation(pick_key, len(ref))[:EVAL_POINTS])]
    lo, hi = np.quantile(ref, [0.0005, 0.9995], axis=0)
    pad = 0.25 * (hi - lo)
    grid = np.linspace(lo - pad, hi + pad, MARGINAL_GRID).T  # (d, G)
    return evaluation, grid, true_marginals(system.score, grid)


def seed_standard_error(values) -> float | None:
    """Standard error of the mean over seeds (``None`` for one seed).  A seed's coverage is one
    posterior's: its (point, coordinate) pairs share that posterior's error, so coverage varies
    far more between data sets than the pairs' count suggests (the well-specified control at
    N = 1e5 ranged 0.74-1.00 over 15 seeds), and only the spread over seeds measures it."""
    values = np.asarray(values, np.float64)
    return None if len(values) < 2 else float(values.std(ddof=1) / np.sqrt(len(values)))


def _summary_rows(rows):
    """Per (system, n): mean, min and max over seeds of the two coverages."""
    out = []
    for name in dict.fromkeys(r["system"] for r in rows):
        for n in sorted({r["n"] for r in rows if r["system"] == name}):
            group = [r for r in rows if r["system"] == name and r["n"] == n]
            entry = {"system": name, "n": n, "seeds": len(group)}
            for col in ("score_coverage", "score_coverage_posterior_band", "score_coverage_corrected", "pdf_coverage",
                        "score_error_over_sd", "max_r_hat", "zeta", "median_score_band_width",
                        "median_corrected_band_width", "components"):
                if any(r.get(col) is None for r in group):  # rows cached before the column existed
                    entry[col] = None
                    continue
                vals = np.array([r[col] for r in group], dtype=np.float64)
                entry[col] = {"mean": float(vals.mean()), "min": float(vals.min()), "max": float(vals.max()),
                              "se": seed_standard_error(vals)}
            entry["divergences"] = int(sum(r["divergences"] for r in group))
            entry["corrected_seeds"] = int(sum((r.get("correction_bumps") or 0) > 0 for r in group))
            alpha = float(np.median([math.inf if r["alpha"] is None else r["alpha"] for r in group]))
            entry["alpha_median"] = alpha if math.isfinite(alpha) else None
            out.append(entry)
    return out


def _write_markdown(path, rows, band):
    pct = int(round(band * 100))
    lines = [f"# Calibration of the {pct}% credible bands", "",
             f"Nominal coverage {band:g}. Mean over seeds +- its standard error (spread over seeds / sqrt(seeds)), "
             "[min, max] in brackets: one data set's coverage is one posterior's, so it varies between data "
             "sets far more than its number of points suggests. Score: share of (point, "
             f"coordinate) pairs, {EVAL_POINTS} points drawn from the stationary density, where the analytic "
             "score lies in the band. PDF: density-weighted share of the grid where the true marginal PDF lies "
             "in the band of the draws' mixture marginals (the stationary PDFs of the draws' Langevin models). "
             "|error|/sd: median over pairs of |truth - posterior mean| / posterior sd (0.67 for a calibrated "
             "Gaussian posterior). zeta: the coarsening of the likelihood (1: the standard posterior), alpha = "
             "zeta N / (1 - zeta) the effective sample size the posterior levels off at (median over seeds). "
             "Band width: median over pairs of the score band's width (physical units), mean over seeds. "
             "Posterior band alone: the score coverage of the draws' quantile band, before it is widened to the "
             "posterior mean's local bias (kgmm_bayes.bayes.score.band_with_bias). Corrected: the score coverage "
             "of the band a study gives where it corrects the posterior-mean score by score matching ([interpolant] "
             "correction; the draws' band moved by the correction and widened by its sampling error, in the local "
             "bias widening's place), the widened band where no correction is applied; in brackets after it, the "
             "seeds whose fit applied one and the median width of the band (as band width).", "",
             "| system | N | seeds | K | zeta | alpha | score coverage | posterior band alone | corrected | PDF "
             "coverage | band width | abs(error)/sd | max r_hat | divergences |",
             "|---|---:|---:|---:|---:|---:|---|---|---|---|---:|---:|---:|---:|"]
    for e in _summary_rows(rows):
        def cell(col):
            v = e[col]
            if v is None:
                return "-"
            se = "" if v["se"] is None else f" +- {v['se']:.3f}"
            return f"{v['mean']:.3f}{se} [{v['min']:.3f}, {v['max']:.3f}]"
        alpha = e["alpha_median"]
        width = "-" if e["median_corrected_band_width"] is None else f"{e['median_corrected_band_width']['mean']:.3g}"
        lines.append(f"| {e['system']} | {e['n']} | {e['seeds']} | {e['components']['mean']:.0f} "
                     f"| {e['zeta']['mean']:.3g} | {'inf' if alpha is None else f'{alpha:.3g}'} "
                     f"| {cell('score_coverage')} | {cell('score_coverage_posterior_band')} "
                     f"| {cell('score_coverage_corrected')} ({e['corrected_seeds']} of {e['seeds']}; {width}) "
                     f"| {cell('pdf_coverage')} "
                     f"| {e['median_score_band_width']['mean']:.3g} "
                     f"| {e['score_error_over_sd']['mean']:.2f} | {e['max_r_hat']['max']:.3f} | {e['divergences']} |")
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def plot_calibration(path, rows, band):
    """Coverage against N (log axis), one line per system, seeds as dots, the nominal level dashed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, col, title in zip(axes, ("score_coverage", "pdf_coverage"), ("score", "stationary marginal PDF")):
        for i, name in enumerate(dict.fromkeys(r["system"] for r in rows)):
            mine = [r for r in rows if r["system"] == name]
            ns = sorted({r["n"] for r in mine})
            ax.scatter([r["n"] for r in mine], [r[col] for r in mine], color=f"C{i}", s=14, alpha=0.6)
            ax.plot(ns, [np.mean([r[col] for r in mine if r["n"] == n]) for n in ns], color=f"C{i}", marker="o",
                    label=name)
        ax.axhline(band, color="k", ls="--", lw=1, label=f"nominal {band:g}")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("training snapshots N")
        ax.set_ylabel(f"coverage of the {int(round(band * 100))}% band")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def calibrate(specs: Sequence[Spec], sizes: Sequence[int] = (1000, 10000, 100000), seeds: int = 3,
              out_dir: str = "kgmm-runs/calibration", progress: bool = False, force: bool = False,
              first_seed: int | None = None) -> CalibrationResult:
    """Coverage of the credible bands over data sizes and seeds (see the module docstring).

    Data set ``i`` of every size uses seed ``first_seed + i`` (default: the first spec's
    ``[study] seed``); the evaluation points and the true marginals come from an
    independent run (seed ``first_seed + seeds``).  Each fit is cached in the output
    folder's stage cache, so an interrupted calibration resumes where it stopped.
    """
    sizes = [int(n) for n in sizes]
    check_calibration_specs(specs, sizes, seeds)
    first_seed = check_seed(specs[0].study.seed if first_seed is None else first_seed)
    identity = json.dumps({"calibrate": [s.to_dict() for s in specs], "sizes": sizes, "seeds": seeds,
                           "first_seed": first_seed}, sort_keys=True, default=list)
    with OutputFolder(out_dir, identity, force=force) as out:
        return _calibration_rows(specs, sizes, seeds, first_seed, out, progress)


def _calibration_rows(specs, sizes, seeds, first_seed, out, progress) -> CalibrationResult:
    """Every (system, N, seed) fit, cached one by one, and the tables; ends with the commit."""
    band = specs[0].score.band
    rows = []
    for spec in specs:
        system = get_system(spec.data.system)
        evaluation, grid, truth_pdf = _evaluation_set(spec, system, first_seed + seeds)
        for n in sizes:
            for seed in range(first_seed, first_seed + seeds):
                key = stage_key("calibration", spec.section_json(*FIT_SECTIONS), n, seed, first_seed + seeds, REFINE,
                                EVAL_POINTS, MARGINAL_GRID, __version__, STAGE_SCHEMA)
                row = out.load_stage("calibration", key, build=lambda a: dict(json.loads(str(a["row"]))))
                if row is None:
                    row = _fit_one(spec, system, n, seed, evaluation, grid, truth_pdf, progress)
                    out.save_stage("calibration", key, {"row": np.asarray(json.dumps(row))})
                rows.append(row)
    csv = ",".join(COLUMNS) + "\n" + "".join(",".join(str(r.get(c)) for c in COLUMNS) + "\n" for r in rows)
    atomic_write_bytes(out.path("calibration.csv"), csv.encode())
    atomic_write_bytes(out.path("calibration.json"),
                       json.dumps({"band": band, "rows": rows, "summary": _summary_rows(rows)}, indent=2).encode())
    _write_markdown(out.path("calibration.md"), rows, band)
    plot_calibration(out.path("figures", "calibration.png"), rows, band)
    return CalibrationResult(rows=rows, out_dir=out.commit())
