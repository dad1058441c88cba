"""``kgmm-bayes compare``: the Bayesian estimator against the baselines on one study (issue 4).

The Bayesian study runs as usual (:func:`kgmm_bayes.study.run_study`, into
``<out>/bayesian``); each baseline of :mod:`kgmm_bayes.baselines` is then fitted
to the *same* z-scored training snapshots, its score drives the *same* Langevin
model (the spec's ``[langevin]`` settings, the same initial particles and the same
noise), and it is measured by the same metrics: relative entropy of each marginal
against the same reference set, density-weighted score error against the
analytic score at the Bayesian score-target points (where the system has one),
and, for the Bayesian estimator only, the coverage of its credible band.

For Kuramoto-Sivashinsky studies each estimator's model is also measured by the
KS statistics (:func:`kgmm_bayes.metrics.series.ks_statistics`): the pooled one-point PDF, the
two-point PDFs at separations 1-3 and the decorrelation time of each coordinate,
against the data's (the latter from a finely sampled independent run);
``figures/ks_statistics.png`` shows them.

Wall time counts what builds the score (Bayesian: partition, posterior, score
summaries, interpolant; classic KGMM: clustering with the noisy passes, network
training; DSM: training; scikit-learn: fitting), compilation included; the
Langevin run is reported apart.  For DSM, the models kept every
``dsm_epochs / dsm_checkpoints`` epochs are each run through a quarter-length
Langevin model, and so is the Bayesian drift: the first checkpoint whose mean
relative entropy is no worse than the Bayesian one gives the DSM training time
needed to reach it.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..baselines import BaselineFit, fit_dsm, fit_kgmm, fit_sklearn
from ..bayes.score import predictive_drift
from ..data.systems import get_system
from ..data.systems.ks import fine_reference_series
from ..files import atomic_write_bytes
from ..metrics import marginal_relative_entropies, weighted_score_error
from ..metrics.series import decorrelation_time, ks_statistics
from ..rom.langevin import max_jacobian_eigenvalue, simulate_langevin
from ..spec import BASELINES, Spec
from .checks import check_seed, load_user_data
from .outputs import OutputFolder, StageReader
from .run import run_study
from .stages import StudyData, langevin_start, prepare_data, study_keys

__all__ = ["EstimatorRow", "Comparison", "compare_study"]

BAYESIAN_STAGES = ("partition", "posterior", "score", "interpolant")
KS_SPACING = 1.0  # time units between the snapshots of the KS decorrelation-time reference run


class EstimatorRow(NamedTuple):
    """One estimator's line of the comparison."""

    estimator: str
    timings: dict  # stage -> wall seconds
    relative_entropy: np.ndarray  # (d,) per marginal, NaN without stationary samples
    score_error: Optional[float]  # None without an analytic score
    band_coverage: Optional[float]  # Bayesian only
    langevin_s: float
    escaped: int  # particles that left the box or became non-finite
    info: dict

    @property
    def wall_s(self) -> float:
        return float(sum(self.timings.values()))

    @property
    def relative_entropy_mean(self) -> float:
        return float(np.mean(self.relative_entropy))


class Comparison(NamedTuple):
    rows: list  # EstimatorRow, Bayesian first
    dsm_reach: Optional[dict]  # checkpoints and the training time DSM needs to reach the Bayesian estimator
    out_dir: str


def _log(progress, message):
    if progress:
        print(f"[kgmm-bayes compare] {message}", file=sys.stderr, flush=True)


def _finite_or_none(value):
    return None if value is None or not np.isfinite(value) else float(value)


def _rom_relative_entropy(data: StudyData, rom, grid_points) -> np.ndarray:
    kept = rom.kept_samples()
    if len(kept) < 2:
        return np.full(data.train.shape[1], np.nan)
    return marginal_relative_entropies(data.reference, data.zscore.inverse(kept.astype(np.float64)), grid_points)


def _ks_block(data: StudyData, series, spec, data_tau) -> dict:
    """KS statistics of a model's series ``(particles, n_snap, D)`` (physical units) against the data's."""
    lg = spec.langevin
    return ks_statistics(data.reference, series, lg.dt * lg.thin, data_tau, grid_points=spec.metrics.grid_points)


def _evaluate(fit_name, drift_fn, drift_params, timings, data, spec, x0, run_key, points, counts, truth, info,
              band=None, ks_tau=None):
    """Langevin model and metrics of one drift."""
    lg = spec.langevin
    rom = simulate_langevin(run_key, drift_fn, drift_params, x0, lg.dt, lg.steps, lg.burn_in, lg.thin, lg.box)
    rel_ent = _rom_relative_entropy(data, rom, spec.metrics.grid_points)
    info = dict(info or {})
    if ks_tau is not None and rom.alive.any():
        series = data.zscore.inverse(np.swapaxes(rom.samples[:, rom.alive], 0, 1).astype(np.float64))
        info["ks"] = _ks_block(data, series, spec, ks_tau)
    error = None
    if truth is not None:
        predicted = np.asarray(drift_fn(drift_params, jnp.asarray(points, jnp.float32)), dtype=np.float64)
        error = weighted_score_error(predicted, truth, counts)
    info["dt_times_max_jacobian_eigenvalue"] = lg.dt * max_jacobian_eigenvalue(drift_fn, drift_params, points)
    return EstimatorRow(fit_name, timings, rel_ent, error, band, rom.wall_time, rom.escaped + rom.non_finite, info)


def _fit_baseline(name, key, z, spec) -> BaselineFit:
    b, itp = spec.baselines, spec.interpolant
    if name == "kgmm":
        return fit_kgmm(key, z, b.sigma, b.min_leaf_probability, b.max_passes, b.tolerance, itp.hidden, itp.steps,
                        itp.learning_rate)
    if name == "dsm":
        return fit_dsm(key, z, b.sigma, itp.hidden, b.dsm_epochs, b.dsm_batch, b.dsm_learning_rate,
                       b.dsm_checkpoints)
    return fit_sklearn(key, z, b.sklearn_components or spec.mixture.components, b.sklearn_max_iter)


def _dsm_reach(fit: BaselineFit, bayes_drift, data, spec, x0, run_key) -> dict:
    """Quarter-length Langevin runs of every DSM checkpoint and of the Bayesian drift."""
    lg = spec.langevin
    steps = max(lg.thin, (lg.steps // 4) // lg.thin * lg.thin)

    def mean_rel_ent(drift_fn, params):
        rom = simulate_langevin(run_key, drift_fn, params, x0, lg.dt, steps, lg.burn_in, lg.thin, lg.box)
        return float(np.mean(_rom_relative_entropy(data, rom, spec.metrics.grid_points)))

    target = mean_rel_ent(*bayes_drift)
    points = [{"epochs": c.epochs, "training_s": c.wall_time,
               "relative_entropy_mean": mean_rel_ent(fit.drift_fn, c.params)} for c in fit.checkpoints]
    reached = next((p for p in points if p["relative_entropy_mean"] <= target), None)
    return {"langevin_steps": int(steps), "bayesian_relative_entropy_mean": target, "checkpoints": points,
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
    user_data = load_user_data(spec, data)  # bad user data fail here, before JAX and disk
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
    data_key, reference_key, _, _, _, langevin_key = study_keys(seed)
    data = prepare_data(spec, data_key, reference_key, StageReader(result.out_dir), user_data=user_data)
    z = data.zscore.forward(data.train)
    part = result.partition
    x0, run_key = langevin_start(langevin_key, part, spec.langevin.particles)
    truth = None
    if data.analytic_score is not None:
        truth = data.zscore.score_to_zscored(
            np.asarray(data.analytic_score(data.zscore.inverse(part.points)), dtype=np.float64))

    m = result.metrics
    if spec.langevin.drift == "interpolant":
        bayes_drift = (result.interpolant.apply_fn(), result.interpolant.params)
    else:
        bayes_drift = predictive_drift(result.draws)
    bayes_error = None
    if truth is not None:
        predicted = np.asarray(bayes_drift[0](bayes_drift[1], jnp.asarray(part.points, jnp.float32)), np.float64)
        bayes_error = weighted_score_error(predicted, truth, part.counts)
    rel = m["relative_entropy"]["per_marginal"]
    rows = [EstimatorRow("bayesian", {s: float(m["timings"][s]) for s in BAYESIAN_STAGES},
                         np.array([np.nan if v is None else v for v in rel], dtype=np.float64), bayes_error,
                         m.get("score", {}).get("band_coverage"), float(m["timings"]["langevin"]),
                         int(m["langevin"]["escaped"] + m["langevin"]["non_finite"]),
                         {"cached_stages": m["cached_stages"], "band": spec.score.band,
                          "dt_times_max_jacobian_eigenvalue": m["langevin"]["dt_times_max_jacobian_eigenvalue"]})]
    ks_tau = None
    system = get_system(spec.data.system) if user_data is None else None
    if system is not None and system.name.startswith("ks_"):
        _log(progress, "KS: a finely sampled reference run for the decorrelation times")
        series = fine_reference_series(jax.random.fold_in(reference_key, 7), system)
        ks_tau = decorrelation_time(series, KS_SPACING)
        lg = spec.langevin
        rom = result.rom_samples  # kept particles, time-major: (n_snap * particles, D)
        if len(rom):
            rows[0].info["ks"] = _ks_block(data, np.swapaxes(rom.reshape(lg.steps // lg.thin, -1, rom.shape[1]), 0, 1),
                                           spec, ks_tau)

    baseline_keys = study_keys(seed + 1_000_003)  # a stream apart from the study's; one key per baseline name
    dsm_reach = None
    for name in spec.baselines.which:
        _log(progress, f"baseline {name}")
        fit = _fit_baseline(name, baseline_keys[BASELINES.index(name)], z, spec)
        rows.append(_evaluate(name, fit.drift_fn, fit.drift_params, fit.timings, data, spec, x0, run_key,
                              part.points, part.counts, truth, fit.info, ks_tau=ks_tau))
        if name == "dsm":
            _log(progress, f"dsm: {len(fit.checkpoints)} checkpoints, quarter-length Langevin runs")
            dsm_reach = _dsm_reach(fit, bayes_drift, data, spec, x0, run_key)

    if ks_tau is not None:
        _plot_ks(out.path("figures", "ks_statistics.png"), rows, ks_tau)
    payload = {"study": spec.study.name, "seed": seed, "dim": int(z.shape[1]),
               "ks_data_decorrelation_time": None if ks_tau is None else [float(v) for v in ks_tau],
               "train_snapshots": int(len(z)), "reference_snapshots": int(len(data.reference)),
               "data_floor_relative_entropy_mean": m["relative_entropy"]["data_floor_mean"],
               "baselines": spec.baselines._asdict(),
               "estimators": [_row_dict(r) for r in rows], "dsm_reach": dsm_reach}
    atomic_write_bytes(out.path("comparison.json"), json.dumps(payload, indent=2, default=list).encode())
    atomic_write_bytes(out.path("comparison.csv"), _csv(rows, dsm_reach).encode())
    atomic_write_bytes(out.path("comparison.md"), _markdown(rows, dsm_reach, payload).encode())
    _plot(out.path("figures", "comparison.png"), rows, dsm_reach)
    final = out.commit()
    _log(progress, f"done -> {final}")
    return Comparison(rows=rows, dsm_reach=dsm_reach, out_dir=final)


# --------------------------------------------------------------------------- outputs

def _stages(rows) -> list:
    names = []
    for r in rows:
        names += [s for s in r.timings if s not in names]
    return names


def _row_dict(r: EstimatorRow) -> dict:
    return {"estimator": r.estimator, "wall_s": r.wall_s, "timings": r.timings,
            "relative_entropy_mean": _finite_or_none(r.relative_entropy_mean),
            "relative_entropy": [_finite_or_none(v) for v in r.relative_entropy],
            "score_error": _finite_or_none(r.score_error), "band_coverage": _finite_or_none(r.band_coverage),
            "langevin_s": r.langevin_s, "escaped": r.escaped, "info": r.info}


def _csv(rows, dsm_reach) -> str:
    stages = _stages(rows)
    d = len(rows[0].relative_entropy)
    header = (["estimator", "wall_s", "relative_entropy_mean"] + [f"time_{s}_s" for s in stages]
              + [f"relative_entropy_x{i}" for i in range(d)]
              + ["score_error", "band_coverage", "langevin_s", "escaped", "time_to_bayesian_s"])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)

    def fmt(v):
        return "" if v is None or not np.isfinite(v) else repr(float(v))

    for r in rows:
        reach = dsm_reach["reached_at_s"] if r.estimator == "dsm" and dsm_reach else None
        writer.writerow([r.estimator, fmt(r.wall_s), fmt(r.relative_entropy_mean)]
                        + [fmt(r.timings.get(s)) for s in stages] + [fmt(v) for v in r.relative_entropy]
                        + [fmt(r.score_error), fmt(r.band_coverage), fmt(r.langevin_s), r.escaped, fmt(reach)])
    return buf.getvalue()


def _g(v, digits=3):
    return "—" if v is None or not np.isfinite(v) else f"{v:.{digits}g}"


def _markdown(rows, dsm_reach, payload) -> str:
    d = len(rows[0].relative_entropy)
    head = (["estimator", "wall s", "stages (s)", "rel. entropy (mean)"]
            + ([f"x{i}" for i in range(d)] if d > 1 else [])
            + ["score error", "band coverage", "Langevin s", "particles lost"])
    lines = [f"# Comparison: {payload['study']} (seed {payload['seed']})", "",
             f"{payload['train_snapshots']} training and {payload['reference_snapshots']} reference snapshots, "
             f"D = {payload['dim']}; relative entropy of two independent data sets (sampling floor): "
             f"{_g(payload['data_floor_relative_entropy_mean'])}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        stages = ", ".join(f"{s} {v:.1f}" for s, v in r.timings.items())
        cells = ([r.estimator, f"{r.wall_s:.1f}", stages, _g(r.relative_entropy_mean)]
                 + ([_g(v) for v in r.relative_entropy] if d > 1 else [])
                 + [_g(r.score_error), _g(r.band_coverage), f"{r.langevin_s:.1f}", str(r.escaped)])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Wall time: building the score, compilation included; the Langevin run is apart. "
              "Score error: density-weighted relative squared error against the analytic score at the "
              "Bayesian score-target points. Band coverage: share of those points inside the Bayesian "
              f"{int(rows[0].info.get('band', 0.9) * 100)}% band. Particles lost: left the box or became "
              "non-finite; the relative entropy uses the others."]
    cached = rows[0].info.get("cached_stages")
    if cached:
        lines += ["", f"Bayesian stages read from the stage cache: {', '.join(cached)} (the posterior's time is "
                  "that of the run which computed it; the others are load times)."]
    b = payload["baselines"]
    lines += ["", f"Baselines: sigma = {b['sigma']}, classic KGMM with round(1/{b['min_leaf_probability']}) leaves "
              f"and at most {b['max_passes']} noisy passes (relative tolerance {b['tolerance']}); DSM "
              f"{b['dsm_epochs']} epochs, batch {b['dsm_batch']}, Adam {b['dsm_learning_rate']}; both networks "
              "as the Bayesian interpolant ([interpolant]); scikit-learn BayesianGaussianMixture (full "
              f"covariances, max_iter {b['sklearn_max_iter']})."]
    if payload.get("ks_data_decorrelation_time") is not None:
        lines += ["", "## Kuramoto-Sivashinsky statistics", "",
                  "Pooled one-point PDF (relative entropy as for the marginals; L1 distance of histograms), "
                  "L1 distance of the two-point PDFs P(u_i, u_i+s) pooled over i, and the decorrelation time "
                  "(ACF integrated to its first zero) in model time over the data's in KS time (data: "
                  + ", ".join(f"{v:.3g}" for v in payload["ks_data_decorrelation_time"])
                  + f", from a run sampled every {KS_SPACING:g} time units).", "",
                  "| estimator | one-point rel. entropy | one-point L1 | two-point L1, s = 1 | s = 2 | s = 3 "
                  "| decorrelation time (model) | model / data |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            k = r.info.get("ks")
            if k is None:
                lines.append(f"| {r.estimator} | — | — | — | — | — | — | — |")
                continue
            lines.append(f"| {r.estimator} | {_g(k['one_point_relative_entropy'])} | {_g(k['one_point_l1'])} | "
                         + " | ".join(_g(k["two_point_l1"][s]) for s in (1, 2, 3))
                         + f" | {_g(float(np.mean(k['decorrelation_time_model'])))} | "
                         f"{_g(float(np.mean(k['decorrelation_time_ratio_model_over_data'])))} |")
    if dsm_reach:
        target = dsm_reach["bayesian_relative_entropy_mean"]
        curve = ", ".join(f"{p['epochs']} epochs ({p['training_s']:.1f} s): {_g(p['relative_entropy_mean'])}"
                          for p in dsm_reach["checkpoints"])
        verdict = (f"DSM reaches it after {dsm_reach['reached_at_epochs']} epochs, {dsm_reach['reached_at_s']:.1f} s "
                   "of training." if dsm_reach["reached_at_s"] is not None else
                   f"DSM does not reach it within its budget of {dsm_reach['budget_epochs']} epochs.")
        lines += ["", f"DSM against time (quarter-length Langevin runs, {dsm_reach['langevin_steps']} steps): "
                  f"Bayesian {_g(target)}; DSM {curve}. {verdict}"]
    return "\n".join(lines) + "\n"


def _plot(path, rows, dsm_reach):
    from matplotlib.figure import Figure  # drawn without pyplot: no backend is switched

    stages = _stages(rows)
    names = [r.estimator for r in rows]
    fig = Figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3)
    ax = axes[0]
    left = np.zeros(len(rows))
    for j, s in enumerate(stages):
        widths = np.array([r.timings.get(s, 0.0) for r in rows])
        ax.barh(names, widths, left=left, color=f"C{j}", label=s)
        left += widths
    ax.invert_yaxis()
    ax.set_xlabel("wall time (s)")
    ax.set_title("cost of the score, by stage", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[1]
    d = len(rows[0].relative_entropy)
    labels = [f"x{i}" for i in range(d)] + ["mean"]
    width = 0.8 / len(rows)
    for k, r in enumerate(rows):
        values = np.append(r.relative_entropy, r.relative_entropy_mean)
        ax.bar(np.arange(d + 1) + k * width, np.where(np.isfinite(values), values, 0.0), width, label=r.estimator)
    ax.set_xticks(np.arange(d + 1) + 0.4 - width / 2, labels)
    ax.set_yscale("log")
    ax.set_ylabel("relative entropy")
    ax.set_title("relative entropy per marginal", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[2]
    for k, r in enumerate(rows):
        if np.isfinite(r.relative_entropy_mean):
            ax.scatter([r.wall_s], [r.relative_entropy_mean], color=f"C{k}", label=r.estimator, zorder=3)
    if dsm_reach:
        t = [p["training_s"] for p in dsm_reach["checkpoints"]]
        v = [p["relative_entropy_mean"] for p in dsm_reach["checkpoints"]]
        ax.plot(t, v, "k.--", lw=0.8, label="dsm checkpoints (short runs)")
        ax.axhline(dsm_reach["bayesian_relative_entropy_mean"], color="C0", ls=":", lw=0.8,
                   label="bayesian (short run)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("mean relative entropy")
    ax.set_title("relative entropy against cost", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_ks(path, rows, data_tau):
    """KS statistics per estimator: pooled one-point PDFs, two-point L1 distances, decorrelation times."""
    from matplotlib.figure import Figure  # drawn without pyplot: no backend is switched

    fig = Figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3)
    measured = [(k, r) for k, r in enumerate(rows) if "ks" in r.info]
    for n, (k, r) in enumerate(measured):
        pdf = r.info["ks"]["one_point_pdf"]
        centres = 0.5 * (np.asarray(pdf["edges"][1:]) + np.asarray(pdf["edges"][:-1]))
        if n == 0:
            axes[0].semilogy(centres, np.maximum(pdf["reference"], 1e-6), "k", lw=1.5, label="data")
        axes[0].semilogy(centres, np.maximum(pdf["model"], 1e-6), color=f"C{k}", lw=1, label=r.estimator)
    axes[0].set_xlabel("u (pooled over coordinates)")
    axes[0].set_ylabel("one-point PDF")
    axes[0].set_title("pooled one-point PDF", fontsize=10)
    axes[0].legend(fontsize=7)
    width = 0.8 / max(1, len(measured))
    for n, (k, r) in enumerate(measured):
        l1 = [r.info["ks"]["two_point_l1"][s] for s in (1, 2, 3)]
        axes[1].bar(np.arange(3) + n * width, l1, width, color=f"C{k}", label=r.estimator)
        tau = r.info["ks"]["decorrelation_time_ratio_model_over_data"]
        axes[2].bar(np.arange(len(tau)) + n * width, tau, width, color=f"C{k}", label=r.estimator)
    axes[1].set_xticks(np.arange(3) + 0.4 - width / 2, ["s = 1", "s = 2", "s = 3"])
    axes[1].set_ylabel("L1 distance to the data's two-point PDF")
    axes[1].set_title("two-point PDFs P(u_i, u_i+s)", fontsize=10)
    axes[1].legend(fontsize=7)
    d = len(data_tau)
    axes[2].set_xticks(np.arange(d) + 0.4 - width / 2, [f"u{i}" for i in range(d)])
    axes[2].set_ylabel("decorrelation time: model (model time) / data (KS time)")
    axes[2].set_title("decorrelation times, data: " + ", ".join(f"{v:.2g}" for v in data_tau), fontsize=10)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
