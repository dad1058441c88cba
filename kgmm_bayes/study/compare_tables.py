"""The comparison's outputs: one row per estimator, as JSON, CSV, markdown and figures."""
from __future__ import annotations

import csv
import io
from typing import NamedTuple, Optional

import numpy as np

__all__ = ["EstimatorRow", "KS_SPACING", "row_dict", "comparison_csv", "comparison_markdown", "plot_comparison",
           "plot_ks", "finite_or_none", "over_runs_text"]

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


def finite_or_none(value):
    return None if value is None or not np.isfinite(value) else float(value)


def _stages(rows) -> list:
    names = []
    for r in rows:
        names += [s for s in r.timings if s not in names]
    return names


def row_dict(r: EstimatorRow) -> dict:
    return {"estimator": r.estimator, "wall_s": r.wall_s, "timings": r.timings,
            "relative_entropy_mean": finite_or_none(r.relative_entropy_mean),
            "relative_entropy": [finite_or_none(v) for v in r.relative_entropy],
            "score_error": finite_or_none(r.score_error), "band_coverage": finite_or_none(r.band_coverage),
            "langevin_s": r.langevin_s, "escaped": r.escaped, "info": r.info}


def row_from_dict(d: dict) -> EstimatorRow:
    """The :class:`EstimatorRow` of :func:`row_dict`'s (JSON-decoded) dict: ``None`` marginals back to NaN."""
    return EstimatorRow(d["estimator"], d["timings"],
                        np.array([np.nan if v is None else v for v in d["relative_entropy"]], dtype=np.float64),
                        d["score_error"], d["band_coverage"], d["langevin_s"], d["escaped"], d["info"])


def compiling_text(r: EstimatorRow, unit: str = "") -> str:
    """`` (x compiling)`` after an estimator's wall time: the part that went to JAX's compiling, ``compiling or
    loading`` where programs came from the compilation cache (JAX's compile spans cover both); empty when not
    measured."""
    seconds = r.info.get("jax_compiling_s")
    if seconds is None:
        return ""
    return f" ({seconds:.1f}{unit} compiling{' or loading' if r.info.get('jax_cache_hits') else ''})"


def over_runs_text(r: EstimatorRow) -> str:
    """``mean ± s.e.`` over an estimator's model runs, ``(k of N runs)`` appended when some had no finite figure;
    ``—`` with one run."""
    runs = r.info.get("model_runs")
    if not runs:
        return "—"
    return (f"{_g(runs['relative_entropy_mean_over_runs'])} ± {_g(runs['standard_error'], 2)}"
            + (f" ({runs['finite_runs']} of {runs['runs']} runs)" if runs["finite_runs"] < runs["runs"] else ""))


def minus_bayesian_text(r: EstimatorRow) -> str:
    """``+d ± s.e.``: the mean over the model runs of this estimator's figure minus the Bayesian one's (paired)."""
    runs = r.info.get("model_runs") or {}
    if runs.get("minus_bayesian_mean") is None:
        return "—"
    return f"{runs['minus_bayesian_mean']:+.3g} ± {_g(runs.get('minus_bayesian_standard_error'), 2)}"


def comparison_csv(rows, dsm_reach) -> str:
    stages = _stages(rows)
    d = len(rows[0].relative_entropy)
    run_fields = ("runs", "finite_runs", "relative_entropy_mean_over_runs", "standard_error", "minus_bayesian_mean",
                  "minus_bayesian_standard_error")
    runs = any(r.info.get("model_runs") for r in rows)
    header = (["estimator", "wall_s", "relative_entropy_mean"] + [f"time_{s}_s" for s in stages]
              + [f"relative_entropy_x{i}" for i in range(d)]
              + ["score_error", "band_coverage", "langevin_s", "escaped", "time_to_bayesian_s"]
              + (["model_runs", "finite_model_runs", "relative_entropy_mean_over_runs",
                  "relative_entropy_standard_error", "minus_bayesian_mean", "minus_bayesian_standard_error"]
                 if runs else []))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)

    def fmt(v):
        return "" if v is None or not np.isfinite(v) else repr(float(v))

    for r in rows:
        reach = dsm_reach["reached_at_s"] if r.estimator == "dsm" and dsm_reach else None
        over = r.info.get("model_runs")
        writer.writerow([r.estimator, fmt(r.wall_s), fmt(r.relative_entropy_mean)]
                        + [fmt(r.timings.get(s)) for s in stages] + [fmt(v) for v in r.relative_entropy]
                        + [fmt(r.score_error), fmt(r.band_coverage), fmt(r.langevin_s), r.escaped, fmt(reach)]
                        + ([] if not runs else [""] * len(run_fields) if not over else
                           [over["runs"], over["finite_runs"]] + [fmt(over.get(f)) for f in run_fields[2:]]))
    return buf.getvalue()


def _g(v, digits=3):
    return "—" if v is None or not np.isfinite(v) else f"{v:.{digits}g}"


def _dsm_average(ema) -> str:
    return f", its network the moving average of the parameters (decay {ema:g} per step)" if ema else ""


def comparison_markdown(rows, dsm_reach, payload) -> str:
    d = len(rows[0].relative_entropy)
    runs = next((r.info["model_runs"]["runs"] for r in rows if r.info.get("model_runs")), None)
    head = (["estimator", "wall s", "stages (s)", "rel. entropy (mean)"]
            + ([f"over {runs} model runs (± s.e.)", "minus Bayesian, paired (± s.e.)"] if runs else [])
            + ([f"x{i}" for i in range(d)] if d > 1 else [])
            + ["score error", "band coverage", "Langevin s", "particles lost"])
    long_reference = payload.get("long_reference") or 0
    scored = (f"{payload['train_snapshots']} training snapshots, D = {payload['dim']}; every model scored against an "
              f"independent run of the system with {long_reference} times the training data's members "
              f"({payload['reference_snapshots']} snapshots, not the study's reference set), against which the "
              f"training set's relative entropy is {_g(payload['data_floor_relative_entropy_mean'])}."
              if long_reference else
              f"{payload['train_snapshots']} training and {payload['reference_snapshots']} reference snapshots, "
              f"D = {payload['dim']}; relative entropy of two independent data sets (sampling floor): "
              f"{_g(payload['data_floor_relative_entropy_mean'])}.")
    lines = [f"# Comparison: {payload['study']} (seed {payload['seed']})", "", scored, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        stages = ", ".join(f"{s} {v:.1f}" for s, v in r.timings.items())
        cells = ([r.estimator, f"{r.wall_s:.1f}{compiling_text(r)}", stages, _g(r.relative_entropy_mean)]
                 + ([over_runs_text(r), minus_bayesian_text(r)] if runs else [])
                 + ([_g(v) for v in r.relative_entropy] if d > 1 else [])
                 + [_g(r.score_error), _g(r.band_coverage), f"{r.langevin_s:.1f}", str(r.escaped)])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Wall time: building the score, compilation included (in brackets: JAX's compiling, or loading "
              "compiled programs from the cache); the Langevin run is apart (Langevin s: the model's run, in the "
              "data's time with its pilot and any rerun for the rate). "
              "Score error: density-weighted relative squared error against the analytic score at the "
              "Bayesian score-target points (the cell centres the Bayesian interpolant was trained on; the "
              "baselines never saw them as such). Band coverage: share of those points inside the Bayesian "
              f"{int(rows[0].info.get('band', 0.9) * 100)}% band. Particles lost: left the box or became "
              "non-finite; the relative entropy uses the others."]
    lines += _cost_markdown(rows)
    if runs:
        lines += ["", (f"Model runs: each estimator's model was run {runs} times, the first with the study's Langevin "
                       "key and the others from further starting particles and noise, the same for every estimator, "
                       "on the first run's schedule; the column gives the mean over the runs of each run's mean "
                       "relative entropy and its standard error (the sd over runs / sqrt(runs)): the spread over "
                       "Langevin starts and noise of one fitted model, not over the baselines' seeds or the posterior's "
                       "NUTS key. Runs without a finite figure (every particle lost) are left out and counted (k of N "
                       "runs). The next column is the mean over the runs of the estimator's figure minus the Bayesian "
                       "model's in the same run (same starts and noise) with its standard error: negative where the "
                       "estimator is better. The other columns (Langevin s too) and figures/comparison.png are the first "
                       "run's.")]
    if "model_selection" in rows[0].timings:
        lines += ["", ("K was chosen from the data: the Bayesian model_selection time is the sampling of the candidate "
                       "posteriors the study did not keep (their first runs' seconds), apart from its own posterior; "
                       "the baselines were given the chosen K for nothing.")]
    cached = rows[0].info.get("cached_stages")
    if cached:
        lines += ["", f"Bayesian stages read from the stage cache: {', '.join(cached)} (their times are "
                  "those of the run which computed them, except an interpolant cached by an earlier version; on such a "
                  "rerun the partition's time is its load time)."]
    if payload.get("read_back"):
        lines += ["", f"Read back from this comparison's stage cache, as an earlier run of the same comparison (one that "
                  f"stopped, or an identical one) computed them, with that run's times: "
                  f"{', '.join(payload['read_back'])}."]
    b = payload["baselines"]
    lines += ["", f"Baselines: sigma = {b['sigma']}, classic KGMM with round(1/{b['min_leaf_probability']}) leaves "
              f"and at most {b['max_passes']} noisy passes (relative tolerance {b['tolerance']}); DSM "
              f"{b['dsm_epochs']} epochs, batch {b['dsm_batch']}, Adam {b['dsm_learning_rate']}"
              f"{_dsm_average(b['dsm_ema'])}; both networks "
              "as the Bayesian interpolant ([interpolant]); scikit-learn BayesianGaussianMixture (full "
              f"covariances, max_iter {b['sklearn_max_iter']})."]
    if payload.get("ks_data_decorrelation_time") is not None:
        lines += ["", "## Kuramoto-Sivashinsky statistics", "",
                  "Pooled one-point PDF (relative entropy as for the marginals; L1 distance of histograms), "
                  "L1 distance of the two-point PDFs P(u_i, u_i+s) pooled over i, and the decorrelation time "
                  "(ACF integrated to its first zero) in model time over the data's in KS time; model time is "
                  "the data's time where the models run with a fitted mobility (data: "
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
                         + " | ".join(_g(k["two_point_l1"][str(s)]) for s in (1, 2, 3))
                         + f" | {_g(float(np.mean(k['decorrelation_time_model'])))} | "
                         f"{_g(float(np.mean(k['decorrelation_time_ratio_model_over_data'])))} |")
    lines += _data_time_markdown(rows)
    if dsm_reach:
        target = dsm_reach["bayesian_relative_entropy_mean"]

        def lost(n):  # none lost: nothing said
            return f" ({n} of {dsm_reach['particles']} particles lost)" if n else ""
        curve = ", ".join(f"{p['epochs']} epochs ({p['training_s']:.1f} s): {_g(p['relative_entropy_mean'])}"
                          f"{lost(p['particles_lost'])}" for p in dsm_reach["checkpoints"])
        verdict = (f"DSM reaches it after {dsm_reach['reached_at_epochs']} epochs, {dsm_reach['reached_at_s']:.1f} s "
                   "of training." if dsm_reach["reached_at_s"] is not None else
                   f"DSM does not reach it within its budget of {dsm_reach['budget_epochs']} epochs.")
        lines += ["", f"DSM against time (quarter-length Langevin runs, {dsm_reach['langevin_steps']} steps): "
                  f"Bayesian {_g(target)}{lost(dsm_reach['bayesian_particles_lost'])}; DSM {curve}. {verdict}"]
    return "\n".join(lines) + "\n"


def _cost_markdown(rows) -> list:
    """The Bayesian estimator's wall against classic KGMM's, and its posterior's (the candidates' posteriors too,
    where K was chosen) against classic KGMM's whole wall; nothing without both rows."""
    by_name = {r.estimator: r for r in rows}
    bayes, kgmm = by_name.get("bayesian"), by_name.get("kgmm")
    if bayes is None or kgmm is None or not kgmm.wall_s > 0:
        return []
    posterior = sum(bayes.timings.get(s, 0.0) for s in ("posterior", "model_selection"))
    chosen = " with the candidates' for K" if "model_selection" in bayes.timings else ""
    return ["", f"Cost against classic KGMM: the Bayesian estimator's wall is {bayes.wall_s / kgmm.wall_s:.2f} times "
            f"classic KGMM's ({bayes.wall_s:.1f} s against {kgmm.wall_s:.1f} s); its posterior{chosen} alone "
            f"({posterior:.1f} s) is {posterior / kgmm.wall_s:.2f} times classic KGMM's whole wall."]


def _data_time_markdown(rows) -> list:
    """The section on the models in the data's time (each estimator's own fitted mobility); none without."""
    if not any("dynamics" in r.info for r in rows):
        return []
    truth = any("response_relative_error_vs_true_score" in r.info.get("dynamics", {}) for r in rows)
    lines = ["", "## In the data's time", "",
             "Each estimator's score gets its own mobility Phi = M V^-1 from the training trajectories (the "
             "estimator's bias at the data's interval removed by indirect inference), its model runs on a schedule "
             "made the same way with the same rate correction c (to the data's decorrelation times) and the "
             f"Bayesian model's number of snapshots per particle ({rows[0].info.get('model_snapshots', '—')}, one "
             "interval apart: the same span of the data's time and the same sample size for the relative entropy, "
             "whose estimate falls with it), and "
             "its responses R_ij(t) = -E[x_i(t) s_j(x(0))] are averaged over the same trajectories.", "",
             "| estimator | mobility (physical units) | rate factor c | decorrelation time model / data | "
             "correlation rel. error | response rel. difference from Bayesian mean | response inside Bayesian band"
             + (" | response rel. error vs true score's |" if truth else " |"),
             "|---|---|---|---|---|---|---|" + ("---|" if truth else "")]
    for r in rows:
        dyn = r.info.get("dynamics")
        if dyn is None:
            lines.append(f"| {r.estimator} |" + " — |" * (7 if truth else 6))
            continue
        phi = "[" + "; ".join(", ".join(f"{v:.3g}" for v in row) for row in dyn["mobility"]) + "]"
        ratio = ", ".join(f"{v:.3g}" for v in dyn.get("decorrelation_time_ratio", [])) or "—"
        cells = [r.estimator, phi, _g(dyn["mobility_time_scale"]), ratio, _g(dyn.get("correlation_relative_error")),
                 _g(dyn["response_relative_difference_from_bayesian"]), _g(dyn["response_inside_bayesian_band"])]
        if truth:
            cells.append(_g(dyn.get("response_relative_error_vs_true_score")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_comparison(path, rows, dsm_reach):
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


def plot_ks(path, rows, data_tau):
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
        l1 = [r.info["ks"]["two_point_l1"][str(s)] for s in (1, 2, 3)]
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
