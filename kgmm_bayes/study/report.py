"""The short markdown report of a study."""
from __future__ import annotations

from ..files import atomic_write_bytes

__all__ = ["write_report", "numerical_faults"]

STIFFNESS_LIMIT = 1.0  # dt x max |eigenvalue of the drift Jacobian| above which the study warns


def numerical_faults(metrics: dict) -> list[str]:
    """One line per numerical fault of a study: divergences, r_hat > 1.01 (posterior warnings),
    Langevin particles (of the model or of its posterior ensemble) that escaped or became non-finite,
    an Euler-Maruyama step near instability."""
    faults = list(metrics["posterior"]["warnings"])
    if metrics["langevin"].get("warning"):
        faults.append(metrics["langevin"]["warning"])
    if metrics.get("ensemble", {}).get("warning"):
        faults.append(metrics["ensemble"]["warning"])
    stiffness = metrics["langevin"].get("dt_times_max_jacobian_eigenvalue")
    if stiffness is not None and stiffness > STIFFNESS_LIMIT:
        faults.append(f"langevin: dt x max |drift Jacobian eigenvalue| = {stiffness:.2f} > {STIFFNESS_LIMIT:g}")
    return faults


def _fmt(value):
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _ensemble_lines(ens: dict) -> list[str]:
    """The report's section on the posterior ensemble of reduced-order models."""
    def span(q):
        return f"{_fmt(q['median'])} [{_fmt(q['q05'])}, {_fmt(q['q95'])}]"

    def band(q, i):
        return f"{_fmt(q['median'][i])} [{_fmt(q['lower90'][i])}, {_fmt(q['upper90'][i])}]"

    re, mom = ens["relative_entropy"], ens["moments"]
    per = re["per_marginal"]
    d = len(per["median"])
    lines = [
        "",
        "## Posterior ensemble of reduced-order models",
        f"- {ens['members']} posterior draws, one model each (drift: {ens['drift']}"
        + (f"; plus the model's score correction, {ens['score_correction']}" if ens.get("score_correction") else "")
        + "), "
        f"{ens['particles_per_member']} particles x {ens['burn_in'] + ens['steps']} steps per member, "
        f"{_fmt(ens['particle_steps_per_second'])} particle-steps/s",
        f"- Relative entropy, median [90% band] across members: mean over marginals {span(re['mean'])}; "
        "per marginal " + ", ".join(span({q: v[i] for q, v in per.items()}) for i in range(d)),
        "- Mean per coordinate, median [90% band]: " + ", ".join(band(mom["mean"], i) for i in range(d)),
        "- Variance per coordinate, median [90% band]: " + ", ".join(band(mom["variance"], i) for i in range(d)),
        f"- Particles that left the box, per member: max {max(ens['escaped_per_member'])}, "
        f"total {sum(ens['escaped_per_member'])}; non-finite: total {sum(ens['non_finite_per_member'])}",
        "- Figures: `figures/ensemble_marginals.png`, `figures/ensemble_acf.png` "
        f"(reference ACF: {ens['reference_acf'] or 'none, the reference has no time structure'}), "
        "`figures/relative_entropy.png`; arrays in `ensemble.npz`",
    ]
    if ens.get("warning"):
        lines.append(f"- **Warning**: {ens['warning']}")
    return lines


def _threshold(c) -> float:
    """The standard errors the bumps' gap had to exceed (2 in results written before it was stored)."""
    return c.get("score_matching_threshold") or 2.0


def _coarsening_lines(c, n, bound_mode: str = "stein") -> list:
    """What the coarsening of the likelihood did, in words (``bound_mode``: ``[mixture] coarsening_bound``)."""
    if not c:
        return []
    if c["method"] == "off":
        return ["- Coarsening: off (the standard posterior; its bands ignore the mixture's misspecification)"]
    if c["method"] == "fixed":
        return [f"- Coarsening: fixed alpha = {_fmt(c['alpha'])}: likelihood^zeta, zeta = {_fmt(c['zeta'])}"]
    source = {"standard posterior": "the standard posterior's score variance",
              "first posterior x its zeta": "the score variance (a first posterior's, sampled at zeta = 1 / inflation "
                                            "before the bumps showed a bias, times that zeta)",
              "Laplace approximation": "the standard posterior's score variance (its Laplace approximation at the "
                                       "MAP optima)",
              "Laplace approximation x its zeta": "the score variance (the Laplace approximation at the MAP optima "
                                                  "of the posterior at zeta = 1 / inflation, times that zeta)"}.get(
        c.get("variance_from", "standard posterior"),
        "the score variance (zeta x the kept posterior's: with no bias, zeta = 1 / inflation needs no standard "
        "posterior)")
    line = (f"- Coarsening (auto): {source} {_fmt(c['posterior_variance'])} "
            f"x autocorrelation inflation {_fmt(c['autocorrelation_inflation'])} + squared bias "
            f"{_fmt(c['squared_bias'])} (against a {c['reference_components'] or 'no richer'}-component reference, "
            f"from {n} snapshots in 4 blocks); log density: {_fmt(c['posterior_variance_log_density'])} x "
            f"{_fmt(c['autocorrelation_inflation_log_density'])} + {_fmt(c['squared_bias_log_density'])}. ")
    if c.get("score_matching_gap") is not None and (c.get("score_matching_reference") or "network") == "network":
        line += (f"The score's error is at least {_fmt(c['score_matching_bound'])}: Hyvarinen's score of the "
                 f"posterior-mean score exceeds a score-matching network's by {_fmt(c['score_matching_gap'])} "
                 f"+- {_fmt(c['score_matching_se'])} on held-out snapshots"
                 + (" (used: [mixture] coarsening_bound = 'score_matching'). " if c.get("bound_used") else ". "))
    elif c.get("score_matching_gap") is not None:
        significant = c["score_matching_gap"] > _threshold(c) * c["score_matching_se"]
        basis = c.get("score_matching_basis")
        correction = c.get("score_matching_correction")
        line += ("The posterior-mean score's squared bias projected on Gaussian bumps (the score-matching gap of "
                 "their best correction, cross-fitted over blocks of snapshots"
                 + (f", with the posterior mean's own projected variance {_fmt(correction)} added back"
                    if correction else "")
                 + (f"; {basis} bumps per coordinate" if basis else "")
                 + (", the richest basis the data resolve" if basis and significant else "")
                 + f") is {_fmt(c['score_matching_gap'])} +- {_fmt(c['score_matching_se'])}")
        if c.get("bound_used"):
            line += ": significant, used as the score's squared bias. "
        elif not significant:
            line += f": not significant (below {_threshold(c):g} standard errors). "
        elif bound_mode == "stein":
            line += ": significant, but below the richer mixture's squared bias, which is used. "
        else:
            line += ("; not used for the band ([mixture] coarsening_bound = 'report')"
                     + (f"; the band's variance of the score ({_fmt(c['posterior_variance'] / c['zeta'])}) is "
                        "below it: the band is too narrow. " if c["score_matching_bound"]
                        > c["posterior_variance"] / c["zeta"] else ". "))
    if c["zeta"] >= 1:
        return [line + "The posterior is as wide as the error: the standard posterior is kept (zeta = 1)."]
    return [line + f"Likelihood^zeta with zeta = {_fmt(c['zeta'])} (set by the {c['limited_by']}): the posterior's "
                   f"effective sample size levels off at alpha = {_fmt(c['alpha'])} snapshots, so its bands carry "
                   "the mixture's own error."]


def _box_words(langevin: dict) -> str:
    """`` |z| <= B`` for the box a study resolved (metrics.json ``langevin.box``; folders before it: nothing)."""
    return f" |z| <= {langevin['box']:.4g}" if isinstance(langevin.get("box"), (int, float)) else ""


def correction_used(correction) -> bool:
    """Whether the model's score carries the score-matching correction (metrics.json ``interpolant.correction``):
    applied (significant) and, where the model was checked with it (``model_check``), kept."""
    return bool(correction and correction.get("applied") and (correction.get("model_check") or {}).get("kept", True))


def _interpolant_line(block: dict) -> str:
    """The report's interpolant line (metrics.json ``interpolant``): its errors, or why none was trained."""
    if block.get("trained", True) is False:  # the correction, where fitted, is the mixture drift's
        return (f"- Interpolant: not trained, {block.get('why', '')}"
                + _correction_words(block.get("correction"), "the mixture drift: the posterior-predictive score"))
    return (f"- Interpolant: relative error against the posterior-mean score at the cells "
            f"{_fmt(block['relative_error_vs_posterior_mean'])}; RMS error at training snapshots it "
            f"did not see {', '.join(_fmt(v) for v in block.get('heldout_rms_error', []))} "
            "(z-scored units; added to the band of the interpolant's score)"
            + (f", relative RMS error there {_fmt(block['heldout_relative_rms_error'])}"
               if "heldout_relative_rms_error" in block else "")
            + _correction_words(block.get("correction")))


def _correction_words(correction, corrected: str = "targets: the posterior-mean score") -> str:
    """The score-matching correction (kgmm_bayes.bayes.correction) of ``corrected`` (the interpolant's targets, or
    the mixture drift where no network was trained), for the report."""
    if not correction:
        return ""
    fit = (f"{correction['bumps']} Gaussian bumps (ridge {_fmt(correction['ridge'])}), Hyvarinen's score lowered by "
           f"{_fmt(correction['decrease'])} ± {_fmt(correction['se'])} cross-validated over blocks of the snapshots")
    if not correction["applied"]:
        return f"; {corrected} (no score-matching correction the data support: best, " + fit + ")"
    check = correction.get("model_check")
    if check is None:  # a study written before the model was checked
        return f"; {corrected} corrected by score matching in " + fit
    lost = check["lost_particles"]
    pilots = (f"pilot runs of the model ({check['particles']} particles, {check['steps']} steps) with and without "
              f"it: relative entropy against the training data {_fmt(check['corrected_relative_entropy'])} and "
              f"{_fmt(check['uncorrected_relative_entropy'])}"
              + (f" (difference ± {_fmt(check['difference_se'])})" if check.get("difference_se") is not None else "")
              + (f", particles lost {lost[1]} and {lost[0]}" if any(lost) else ""))
    if check["kept"]:
        return f"; {corrected} corrected by score matching in " + fit + "; " + pilots
    return (f"; {corrected} (the score-matching correction in " + fit
            + " made a worse model and is not used: " + pilots + ")")


def _drift_posterior_words(langevin: dict) -> str:
    """Which posterior's draws drove the model (kgmm_bayes.study.stages.model_draws)."""
    if langevin.get("drift_posterior") != "first":
        return ""
    source = ("the first posterior's draws (its Laplace approximation at the MAP optima" if
              langevin.get("drift_posterior_laplace") else "the first posterior's draws (sampled")
    return (f", from {source} at zeta = {_fmt(langevin['drift_posterior_zeta'])}): the "
            "kept, more coarsened posterior sets the bands, but its mean is pulled further towards the prior")


METRIC_WORDS = {  # metrics.json posterior.metric (kgmm_bayes.bayes.sampler.resolved_metric)
    "diagonal": "diagonal metric",
    "dense": "dense metric adapted from the Laplace covariance",
    "whitened": "Laplace-whitened coordinates, diagonal metric adapted there",
    "laplace": "the Laplace covariance as a fixed metric",
}


def _score_lines(sc: dict, coarse: bool, components: int) -> list:
    """The report's lines on the score against the analytic one (``metrics["score"]``).  Where the model's score
    carries the score-matching correction, its band (Result.score's) is the one the note judges."""
    lines = ["", "## Score against the analytic score (density-weighted, z-scored units)",
             f"- Relative error: posterior mean {_fmt(sc['relative_error_posterior_mean'])}, "
             f"predictive {_fmt(sc['relative_error_predictive'])}"
             + (f", interpolant {_fmt(sc['relative_error_interpolant'])}" if "relative_error_interpolant" in sc
                else " (no interpolant trained)"),
             f"- Coverage of the {int(sc['band'] * 100)}% band: {_fmt(sc['band_coverage'])}"
             + (f"; of the interpolant's band (its held-out error added): {_fmt(sc.get('band_coverage_interpolant'))}"
                if "relative_error_interpolant" in sc else "")]
    coverage = sc["band_coverage"]
    if "band_coverage_corrected" in sc:
        coverage = sc["band_coverage_corrected"]
        lines.append(f"- Corrected by score matching, as the model's score is: relative error "
                     f"{_fmt(sc['relative_error_corrected'])}, coverage of its band {_fmt(coverage)}")
    if coverage is not None and coverage < sc["band"] - 0.1:
        lines.append("- **Note**: the band is narrower than the error. "
                     + ("The coarsened posterior did not widen it enough here; " if coarse else
                        "It carries the posterior's uncertainty about the mixture's parameters, not the error "
                        f"of approximating the density by a {components}-component mixture ([mixture] coarsening "
                        "is off); ")
                     + "see `kgmm-bayes calibrate`.")
    return lines


def _metric_words(post: dict) -> str:
    """METRIC_WORDS of the metric NUTS ran in; a warm-started posterior's adapted from the first posterior's spread."""
    if post.get("warm_start") and post["metric"] in ("diagonal", "dense"):
        return f"{post['metric']} metric adapted from the first posterior's spread"
    return METRIC_WORDS[post["metric"]]


def sampled_line(post: dict) -> str:
    """How the kept posterior's draws were made: NUTS's chains, or its Laplace approximation's independent draws."""
    if post.get("kept_posterior") == "laplace":
        return (f"- no sampler: the Laplace approximation at {post['chains']} MAP optima (Newton-refined; the largest "
                f"left {_fmt(post.get('laplace_newton_decrement'))} nats above its optimum, "
                f"{post.get('laplace_centres_not_optima', 0)} without a positive definite Hessian), {post['draws']} "
                "independent draws each, as chains; r_hat and ESS below measure how the optima's Gaussians "
                "differ, not mixing")
    return (f"- {post['chains']} chains x {post['draws']} draws; divergences {post['divergences']}; "
            f"mean leapfrog steps per iteration {_fmt(post['mean_steps_per_iteration'])}"
            + (f" ({_metric_words(post)})" if post.get("metric") in METRIC_WORDS else ""))


def likelihood_lines(post: dict) -> list:
    """The likelihood NUTS sampled: merged cells (kgmm_bayes.bayes.coreset), and what that moved."""
    lines = []
    single = post.get("likelihood_precision") == "float32"
    if "likelihood_gap_sd" in post:
        sampled = (f"{post['likelihood_cells']} merged cells (exact counts and moments of the partition's cells)"
                   if post.get("likelihood_merged", True) else f"the partition's {post['likelihood_cells']} cells")
        lines.append(f"- NUTS sampled the likelihood of {sampled}{' in float32' if single else ''}; over the draws "
                     f"its log-likelihood differs from the cells' (in float64) by sd {post['likelihood_gap_sd']:.3f} "
                     f"nats, so no posterior mean moved by more than about that many posterior sds")
    elif len(post.get("likelihood_ladder") or []) > 1 and not post.get("likelihood_rejected"):
        cells, sd = post["likelihood_ladder"][1]
        lines.append(f"- NUTS sampled the likelihood of the partition's {post['likelihood_cells']} cells: merged into "
                     f"{cells}, its log-likelihood would differ by sd {_fmt(sd)} nats over Laplace draws (more than 0.1)")
    if not single and post.get("likelihood_precision_gap_sd") is not None:
        lines.append(f"- the likelihood in float32 was not used: its log-likelihood would differ by sd "
                     f"{_fmt(post['likelihood_precision_gap_sd'])} nats over Laplace draws (more than 0.1)")
    rejected = post.get("likelihood_rejected")
    if rejected:
        lines.append(f"- a merge into {rejected['cells']} cells was rejected on its draws (gap sd "
                     f"{_fmt(rejected['gap_sd'])} nats): the posterior was sampled again on the partition's cells in float64")
    return lines


def continuation_lines(continuations) -> list:
    """The report's line on chains run on by ``[sampler] extend`` (none when none was)."""
    ran_on = [(c, n) for c, n in enumerate(continuations or []) if n > 0]
    if not ran_on:
        return []
    return ["- chains run on because their draws drifted (label-invariant r_hat above 1.01), their earlier "
            "draws then counted as warmup: " + ", ".join(f"chain {c} {n} time{'s' if n > 1 else ''}"
                                                          for c, n in ran_on)]


def warm_start_lines(post: dict) -> list:
    """The report's line on a second posterior started where the first one's chains ended (none otherwise)."""
    if not post.get("warm_start"):
        return []
    n = post.get("distinct_starts")
    optima = "" if not n else f" (theirs started at {n} distinct MAP optim{'um' if n == 1 else 'a'})"
    return ["- the coarsening's second posterior: its chains started where the first posterior's chains ended, "
            "with no MAP search of their own" + optima]


def _dynamics_lines(dyn, names) -> list:
    """The model in the data's time, in words (see kgmm_bayes.study.dynamics)."""
    if not dyn:
        return []
    if not dyn["available"]:
        return ["", "## Time scales", f"- Not available: {dyn['why']} (the model runs in Langevin time)"]
    names = list(names) or [f"x{i}" for i in range(len(dyn["decorrelation_time_data"]))]
    lines = ["", "## Time scales (the data's time; see responses.npz and figures/correlations.png, responses.png)",
             f"- Data interval {_fmt(dyn['interval'])}; mobility Phi = M V^-1 ({dyn['mobility_method']} estimator)"
             + (", its bias at this interval removed by indirect inference (the model's estimate against the "
                "data's, relative residual per iterate " + ", ".join(_fmt(v) for v in dyn["mobility_correction_residuals"])
                + ")" if dyn.get("mobility_correction_residuals") else "")
             + f"; rate corrected by {_fmt(dyn['mobility_time_scale'])} to the data's decorrelation times; "
             f"{dyn['draws']} posterior draws give its band",
             "- Decorrelation times, data: " + ", ".join(f"{n} {_fmt(v)}" for n, v in
                                                         zip(names, dyn["decorrelation_time_data"]))]
    if dyn.get("interval_over_decorrelation_time", 0.0) > 0.5:
        lines += [f"- Warning: the data interval is {_fmt(dyn['interval_over_decorrelation_time'])} x the shortest "
                  "decorrelation time: the snapshots hardly resolve the dynamics, so the mobility, correlation "
                  "functions and responses rest on very few lags; sample the data more finely"]
    if "decorrelation_time_model" in dyn:
        lines += ["- Decorrelation times, model: " + ", ".join(f"{n} {_fmt(v)}" for n, v in
                                                             zip(names, dyn["decorrelation_time_model"]))
                  + " (ratios " + ", ".join(_fmt(v) for v in dyn["decorrelation_time_ratio"]) + ")",
                  f"- Correlation functions C_ij(tau), all pairs, tau up to {_fmt(dyn['max_lag_time'])}: relative "
                  f"error of the model against the data {_fmt(dyn['correlation_relative_error'])}"]
    ens = dyn.get("ensemble")
    if ens is not None and ens.get("correlation_band_holds_data") is not None:
        pct = f"{round(100 * ens['band'])}%"
        lines += [f"- Posterior ensemble ({ens['members']} models, a mobility each): {pct} band of the "
                  "decorrelation times " + ", ".join(
                      f"{n} {_fmt(lo)}-{_fmt(hi)}" + ("" if held else " (misses the data's)") for n, lo, hi, held in
                      zip(names, ens["decorrelation_time_lower"], ens["decorrelation_time_upper"],
                          ens["decorrelation_time_band_holds_data"]))
                  + f"; the correlation functions' {pct} band holds the data's at "
                  f"{_fmt(ens['correlation_band_holds_data'])} of (lag, i, j) (the data's own sampling error "
                  "is not in the band)"]
    return lines


def _timing_lines(metrics: dict) -> list:
    """The wall time table: each stage's seconds and, for stages timed in this run, how many of them went to
    JAX's tracing and compiling (or loading compiled programs from the cache; metrics.json ``jax_work``).  The
    posterior and Langevin stages read from the cache show their first run's seconds ("cached"), as does a
    posterior taken from model selection ("-"); a streamed study's passes over the data are parts of other rows
    (the first pass ran before the study's clock started, and counts in the total only)."""
    work = metrics.get("jax_work", {})
    cached = set(metrics.get("cached_stages", []))
    lines = ["", "## Wall time (s)", "",
             "Tracing and compiling are JAX's one-time work: a later run with the compilation cache on (the CLI's "
             "default) loads the compiled programs instead of compiling them again.", "",
             "| stage | seconds | tracing | compiling or loading | programs from the cache |",
             "| --- | --- | --- | --- | --- |"]
    for stage, seconds in metrics["timings"].items():
        if stage in work:
            w = work[stage]
            rest = f"{w['tracing']:.2f} | {w['compiling']:.2f} | {w['cache_hits']:d}"
        else:
            rest = " | ".join(["cached" if stage in cached else "-"] * 3)
        lines.append(f"| {stage} | {seconds:.2f} | {rest} |")
    return lines


def write_report(path, spec, metrics: dict) -> None:
    re = metrics["relative_entropy"]
    post = metrics["posterior"]
    lines = [
        f"# Study `{metrics['study']}` (seed {metrics['seed']})",
        "",
        f"Data: {metrics['data']['source']}, {metrics['data']['train_snapshots']} training snapshots, "
        f"{metrics['data']['reference_snapshots']} reference snapshots, d = {metrics['data']['dim']}"
        + (f" ({', '.join(spec.data.variables)})." if spec.data.variables else "."),
        f"Partition: {metrics['partition']['cells']} score-target cells, "
        f"{metrics['partition']['components']} mixture components.",
        "",
        "## Reduced-order model",
        "- Relative entropy per marginal (reference || model): "
        + ", ".join((f"{n} " if spec.data.variables else "") + _fmt(v)
                    for n, v in zip(spec.data.variables or re["per_marginal"], re["per_marginal"])) + "; "
        f"mean {_fmt(re['mean'])}",
        f"- Sampling floor (training data vs reference, same metric): mean {_fmt(re['data_floor_mean'])}",
        _interpolant_line(metrics["interpolant"]),
        f"- Drift: {metrics['langevin']['drift']}{_drift_posterior_words(metrics['langevin'])}; particles that left "
        f"the box{_box_words(metrics['langevin'])}: {metrics['langevin']['escaped']}, "
        f"non-finite: {metrics['langevin']['non_finite']}; dt x max |drift Jacobian eigenvalue| = "
        f"{_fmt(metrics['langevin']['dt_times_max_jacobian_eigenvalue'])} (Euler-Maruyama unstable above 2)",
    ]
    if metrics["langevin"].get("warning"):
        lines.append(f"- **Warning**: {metrics['langevin']['warning']}")
    lines += _dynamics_lines(metrics.get("dynamics"), spec.data.variables)
    lines += [
        "",
        "## Posterior (label-invariant diagnostics)",
        sampled_line(post),
        f"- max r_hat {_fmt(post['max_r_hat'])}, min bulk ESS {_fmt(post['min_ess_bulk'])}, "
        f"min tail ESS {_fmt(post['min_ess_tail'])} (log density and score at probe points, sorted weights)",
    ]
    if post.get("map_search_log_posteriors"):
        optima = [v for v in post["map_search_log_posteriors"] if v is not None]
        n, how = post.get("distinct_starts"), post.get("chain_starts", "best")
        if how == "best" or n == 1:
            where = "at the best"
        else:
            where = ("each at one of the " + ("" if n is None else f"{n} ") + "best distinct optima"
                     + (" (within 10 nats of the best)" if how == "spread" else ""))
        lines.append(f"- chains started {where} of {len(post['map_search_log_posteriors'])} MAP searches; "
                     f"optima span {optima[0] - optima[-1]:.1f} nats of log posterior (local modes)")
    lines += warm_start_lines(post)
    lines += likelihood_lines(post)
    modes = post.get("chain_modes")
    if modes and len(modes["modes"]) > 1:
        parts = [f"chains {m} (weight {sum(modes['chain_weights'][c] for c in m):.2f}, r_hat within "
                 f"{_fmt(r)})" for m, r in zip(modes["modes"], modes["mode_r_hat"])]
        how = ("stacked by their leave-one-out predictive density (Yao, Vehtari & Gelman 2022); every band "
               "uses the stacked mixture" if modes["stacked"] else "pooled with equal weights (no per-cell "
               "log-likelihood to stack them)")
        lines.append(f"- chains settled in {len(modes['modes'])} modes: " + "; ".join(parts) + f"; {how}")
    error = post.get("stacked_mean_error")
    if error:
        units = f", {error['units']} distinct MAP optima" if error.get("units") is not None else ""
        lines.append(f"- stacked mean's Monte Carlo error (optima as independent units{units}, "
                     f"{error['effective_chains']:.1f} effective): at most {_fmt(error['max_se_over_width'])} band widths at the probes; another run's "
                     f"mean is expected to differ by up to {_fmt(error['expected_max_difference'])} band widths")
    lines += continuation_lines(post.get("continuations"))
    for warning in post["warnings"]:
        lines.append(f"- **Warning**: {warning}")
    lines += [f"- Note: {note}" for note in post.get("notes", [])]
    lines += _coarsening_lines(post.get("coarsening"), metrics["data"]["train_snapshots"],
                               spec.mixture.coarsening_bound)
    if post.get("score_bias"):
        bias = post["score_bias"]
        clipped = bias.get("mean_squared_bias_clipped")
        lines.append(f"- Local bias: the score band is at least z times the posterior mean's local error as "
                     f"{bias['bumps']} bumps per coordinate see it (cross-fitted over blocks; its square averages "
                     f"{_fmt(bias['mean_squared_bias'])} over the cells, z-scored units"
                     + (f", and {_fmt(clipped)} with its negative values, noise, counted as 0 as the band counts "
                        "them" if clipped is not None else "")
                     + f"); that widened the band at {100 * bias['widened_fraction']:.0f}% of the (cell, coordinate) "
                       "pairs, weighted by the cells' counts.")
    if "score" in metrics:
        lines += _score_lines(metrics["score"], (post.get("coarsening") or {}).get("method") in ("auto", "fixed"),
                              metrics["partition"]["components"])
    if "model_selection" in metrics:
        sel = metrics["model_selection"]
        lines += ["", "## Number of components (PSIS-LOO over cells)",
                  "- " + ", ".join(f"K={k}: elpd_loo {_fmt(v)} (se {_fmt(sel['se'][k])}, "
                                   f"Pareto k > 0.7 at {sel['high_pareto_k'][k]} cells)"
                                   for k, v in sel["elpd_loo"].items()) + f"; chosen K = {sel['best']}"]
        if "chosen_from_data" in sel:
            auto = sel["chosen_from_data"]
            lines.append(f"- The spec gave no K: candidates {auto['candidates']} (those the data can support) were "
                         f"compared on screening posteriors of {auto['screening_warmup_and_draws']} warmup + "
                         f"{auto['screening_warmup_and_draws']} draws per chain, and K = {sel['best']} sampled in full")
        lines += [f"- **Warning**: {note}" for note in sel["warnings"]]
    if "ensemble" in metrics:
        lines += _ensemble_lines(metrics["ensemble"])
    faults = metrics.get("faults", [])
    lines += ["", f"## Numerical faults: {len(faults) if faults else 'none'}"]
    lines += [f"- {fault}" for fault in faults]
    lines += _timing_lines(metrics)
    if metrics["cached_stages"]:
        lines.append(f"\nReused from cache: {', '.join(metrics['cached_stages'])}.")
    lines += ["", "Figures: `figures/score.png`, `figures/marginals.png`; posterior diagnostics "
              "`figures/trace.png`, `figures/rank.png`, `figures/energy.png`."]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
