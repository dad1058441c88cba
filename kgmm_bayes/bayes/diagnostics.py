"""Posterior diagnostics with arviz, on label-invariant quantities.

Mixture components can swap labels between chains, so r_hat and ESS of the
sampled sites (``means``, ``scales`` ...) say little.  Convergence is judged on
quantities that do not depend on labels: the log density and each score
component at fixed probe points, and the sorted weights.  They are stored in
the posterior group as ``probe_log_density``, ``probe_score`` and
``sorted_weights`` beside the sampled sites and ``weights``, ``means`` and
``cov_chol`` (the Cholesky factor of each component covariance), all in
z-scored coordinates; the z-score transform is stored in ``constant_data``.

The other groups: ``sample_stats`` (divergences, leapfrog steps, tree depth,
acceptance, energy, log posterior), ``observed_data`` (the weighted points the
likelihood saw: cells of the coreset, or snapshots) and ``log_likelihood``
(``cells``: each weighted point's log-likelihood term ``c_m log p(x_m | theta)``
per draw, the cell-moment form for a coreset, so that the terms sum to the
model's log-likelihood; float32), which PSIS-LOO (``az.loo``) reads.  A coarsened posterior (likelihood
to the power ``zeta``) keeps that power in ``constant_data["likelihood_power"]``: its leave-one-out ratios
are ``p^-zeta`` (``kgmm_bayes.bayes.stacking.chain_loo_densities``), while ``az.loo`` would use ``1 / p``.
"""
from __future__ import annotations

import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np

from ..data.zscore import ZScore
from ..files import json_floats
from .mixture import component_coefficients, likelihood_features
from .sampler import PosteriorSamples
from .score import score_draws
from .stacking import REPRODUCIBLE_BAND_FRACTION, chain_modes, r_hat_of, stacked_mean_error

__all__ = ["probe_points", "to_inference_data", "netcdf_bytes", "convergence_summary", "probe_summary",
           "drifting_chains", "independent_starts", "likelihood_power", "MAX_R_HAT",
           "with_chain_weights", "chain_weights",
           "zscore_from_idata", "posterior_from_idata", "pointwise_log_likelihood", "plot_diagnostics"]

PROBE_VARS = ["probe_log_density", "probe_score", "sorted_weights"]
MAX_R_HAT = 1.01  # label-invariant r_hat over the chains of one mode above this is a convergence fault
MIN_EFFECTIVE_CHAINS = 4  # 1 / sum(w^2) of stacked chains at distinct optima: fewer cannot judge reproducibility
# The q-quantile of a mixture (1 - w) G + w H lies between G's (q - w) / (1 - w) and q / (1 - w) quantiles,
# whatever H: chains of total stacking weight below this move a band's level by less than one point
NEGLIGIBLE_WEIGHT = 0.01


def probe_points(points, counts, num: int = 8) -> np.ndarray:
    """Probe points: the weighted cells nearest the count-weighted quantiles of the first axis
    mixed over every coordinate, so probes sit where the data are."""
    points = np.asarray(points)
    order = np.argsort(points @ np.linspace(1.0, 0.5, points.shape[1]))
    cum = np.cumsum(np.asarray(counts)[order])
    targets = (np.arange(num) + 0.5) / num * cum[-1]
    return points[order[np.searchsorted(cum, targets)]]


@jax.jit
def _cell_terms(features, counts, weights, means, cov_chol):
    def one(w, m, c):
        return counts * jax.nn.logsumexp(features @ component_coefficients(w, m, c), axis=-1)
    return jax.lax.map(lambda draw: one(*draw), (weights, means, cov_chol), batch_size=64)


def pointwise_log_likelihood(posterior: PosteriorSamples, points, counts, point_covariances=None) -> np.ndarray:
    """``c_m log p(x_m | theta_s)`` ``(chains, draws, M)``: the likelihood's terms, per draw.

    With ``point_covariances`` the points are coreset cells and the term is the
    cell-moment form the sampler uses; the terms of one draw sum to its log-likelihood.
    """
    features = likelihood_features(points, point_covariances)
    w, m, L = posterior.flat()
    terms = _cell_terms(features, jnp.asarray(counts, features.dtype), jnp.asarray(w), jnp.asarray(m),
                        jnp.asarray(L))
    return np.asarray(terms).reshape(posterior.weights.shape[:2] + (-1,))


def netcdf_bytes(idata) -> bytes:
    """``idata`` as the bytes of a netCDF-4 file (``az.from_netcdf`` reads it), built in memory: the
    caller writes them atomically, so a full disk is an ``OSError`` instead of a failed HDF5 flush."""
    import io

    buffer = io.BytesIO()
    idata.to_datatree().to_netcdf(buffer, engine="h5netcdf")
    return buffer.getvalue()


PROBE_DIMS = {"sorted_weights": ["rank"], "probe_log_density": ["probe"], "probe_score": ["probe", "dim"]}


def _probe_values(posterior: PosteriorSamples, probes) -> dict:
    """The label-invariant quantities :data:`PROBE_VARS`, ``(chains, draws, ...)``."""
    chains, draws = posterior.weights.shape[:2]
    scores, logps = score_draws(*posterior.flat(), probes)
    return {"sorted_weights": np.sort(posterior.weights, axis=-1)[..., ::-1],
            "probe_log_density": np.asarray(logps).reshape(chains, draws, -1),
            "probe_score": np.asarray(scores).reshape(chains, draws, -1, posterior.means.shape[-1])}


def to_inference_data(posterior: PosteriorSamples, zscore: ZScore, points, counts,
                      probes=None, point_covariances=None, log_likelihood: bool = True,
                      likelihood_power: float = 1.0) -> az.InferenceData:
    """arviz InferenceData of a mixture posterior (see module docstring).  ``likelihood_power``: the
    coarsening's ``zeta`` the posterior was sampled at (``constant_data["likelihood_power"]``; the
    chains' stacking reweights left-out snapshots by it)."""
    if probes is None:
        probes = probe_points(points, counts)
    data = dict(posterior.sites)
    data["weights"] = posterior.weights
    data["means"] = posterior.means
    data["cov_chol"] = posterior.cov_chol
    data.update(_probe_values(posterior, probes))
    dims = {
        "weights": ["component"], "means": ["component", "dim"],
        "scales": ["component", "dim"], "corr_chol": ["component", "dim", "dim_"],
        "cov_chol": ["component", "dim", "dim_"], **PROBE_DIMS,
    }
    stats = posterior.sample_stats
    sample_stats = {
        "diverging": stats["diverging"].astype(bool), "n_steps": stats["num_steps"],
        "tree_depth": stats["tree_depth"], "acceptance_rate": stats["accept_prob"],
        "energy": stats["energy"], "lp": -stats["potential_energy"],
    }
    extra = {}
    if log_likelihood:
        extra["log_likelihood"] = {"cells": pointwise_log_likelihood(posterior, points, counts,
                                                                     point_covariances).astype(np.float32)}
        extra["observed_data"] = {"cells": np.asarray(points)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        idata = az.from_dict(
            posterior=data, sample_stats=sample_stats, **extra,
            constant_data={"zscore_mean": np.asarray(zscore.mean), "zscore_std": np.asarray(zscore.std),
                           "probe_points": np.asarray(probes), "points": np.asarray(points),
                           "counts": np.asarray(counts), "likelihood_power": np.asarray(float(likelihood_power))},
            dims={**dims, "zscore_mean": ["dim"], "zscore_std": ["dim"], "cells": ["point"],
                  "probe_points": ["probe", "dim"], "points": ["point", "dim"], "counts": ["point"]},
            attrs={"coordinates": "z-scored: x_z = (x - zscore_mean) / zscore_std",
                   "library": "kgmm_bayes"},
        )
    return idata


def likelihood_power(idata: az.InferenceData) -> float:
    """The coarsening's ``zeta`` the posterior was sampled at (1 for a ``posterior.nc`` written before it
    was kept)."""
    if "constant_data" in idata.groups() and "likelihood_power" in idata.constant_data:
        return float(np.ravel(idata.constant_data["likelihood_power"].values)[0])  # arviz may give it a dim
    return 1.0


def with_chain_weights(idata: az.InferenceData, weights) -> az.InferenceData:
    """``idata`` with the chains' weights (stacking, or equal) in ``constant_data["chain_weights"]``."""
    idata.constant_data = idata.constant_data.assign(chain_weights=(("chain",), np.asarray(weights, np.float64)))
    return idata


def chain_weights(idata: az.InferenceData):
    """The chains' weights stored by :func:`with_chain_weights`, or ``None`` (equal weights)."""
    if "constant_data" in idata.groups() and "chain_weights" in idata.constant_data:
        return np.asarray(idata.constant_data["chain_weights"].values, np.float64)
    return None


def independent_starts(posterior: PosteriorSamples) -> np.ndarray | None:
    """The MAP search whose optimum each chain started at ``(chains,)``, when the chains started at two or
    more distinct optima (``chain_starts = "distinct"`` or ``"spread"``), else ``None``: the units of the
    stacked result's reproducibility (:func:`~kgmm_bayes.bayes.stacking.stacked_mean_error`).  Optima come
    from independent searches, so each is an independent unit; chains that share one (fewer distinct optima
    than chains: several searches converged to the same point) are one unit together."""
    starts = posterior.sample_stats.get("start_optima")
    if starts is None or np.unique(starts).size < 2:
        return None
    return np.asarray(starts)


def convergence_summary(idata: az.InferenceData, band: float = 0.9, independent=None) -> dict:
    """Worst label-invariant r_hat and ESS, the divergence count, and the chains' modes.

    With more than one chain, chains are grouped into modes and, when they settled in
    several, stacked (:mod:`kgmm_bayes.bayes.stacking`): ``chain_modes`` holds the modes,
    r_hat within each and the chains' weights.  r_hat over all chains then measures how far
    apart the modes are.  When the chains started at distinct MAP optima (``independent``: the optimum
    of each chain, see :func:`independent_starts`; chains sharing one form one unit) the fault of a
    stacked result is that it is not reproducible: ``stacked_mean_error`` (the probe scores' Monte
    Carlo error with the optima as independent units, against the width of the ``band``) predicts that
    another run's stacked mean would
    differ by more than :data:`~kgmm_bayes.bayes.stacking.REPRODUCIBLE_BAND_FRACTION` of the
    band width, or there are fewer than :data:`MIN_EFFECTIVE_CHAINS` effective chains to judge it
    by.  r_hat within each mode is then reported, not a fault: chains that drift within a basin
    show up in that error in proportion to their weight.  Chains that all started at one point
    are not independent units (which modes they find says nothing of which another search would):
    r_hat within a mode above :data:`MAX_R_HAT` stays their fault.  Stacked chains whose total weight
    is below :data:`NEGLIGIBLE_WEIGHT` cannot move a band's level by a point, however poor their
    draws: the energy BFMI and divergent transitions of the lightest faulty chains, while their
    total weight stays below it, are notes, not faults."""
    post = idata.posterior[PROBE_VARS]
    chains = idata.posterior.sizes["chain"]
    out = {"divergences": int(idata.sample_stats["diverging"].sum()),
           "mean_steps_per_iteration": float(idata.sample_stats["n_steps"].mean()),
           "chains": int(chains), "draws": int(idata.posterior.sizes["draw"])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ess_bulk = az.ess(post, method="bulk")
        ess_tail = az.ess(post, method="tail")
        out["min_ess_bulk"] = float(min(float(ess_bulk[v].min()) for v in PROBE_VARS))
        out["min_ess_tail"] = float(min(float(ess_tail[v].min()) for v in PROBE_VARS))
        if chains > 1:
            rhat = az.rhat(post)
            out["max_r_hat"] = float(max(float(rhat[v].max()) for v in PROBE_VARS))
        else:
            out["max_r_hat"] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bfmi = np.atleast_1d(az.bfmi(idata))
    out["bfmi_per_chain"] = [float(v) for v in bfmi]
    warn, notes = [], []
    lp = idata.sample_stats["lp"].values  # (chain, draw) log posterior (unnormalised)
    out["chain_mean_log_posterior"] = [float(v) for v in lp.mean(axis=1)]
    modes = None
    if chains > 1:
        has_ll = "log_likelihood" in idata.groups() and "cells" in idata.log_likelihood
        modes = chain_modes(post, idata.log_likelihood["cells"].values if has_ll else None,
                            idata.constant_data["counts"].values if has_ll else None, likelihood_power(idata))
        out["chain_modes"] = modes.to_json()
        out["max_mode_r_hat"] = json_floats(np.nanmax(modes.mode_r_hat) if np.any(np.isfinite(modes.mode_r_hat))
                                            else np.nan)
    stacked = modes is not None and modes.stacked
    # stacked chains of total weight w move any quantile of the stacked mixture by at most w in probability,
    # however wrong their draws: below NEGLIGIBLE_WEIGHT their energy BFMI or divergences cannot move a band's
    # level by a point
    diverging = idata.sample_stats["diverging"].values.reshape(chains, -1).sum(axis=1)
    counted = np.ones(chains, bool)
    if stacked:  # the lightest faulty chains, while their total weight stays below NEGLIGIBLE_WEIGHT
        weights = np.asarray(modes.weights)
        faulty = np.flatnonzero((bfmi < 0.3) | (diverging > 0))
        light = faulty[np.argsort(weights[faulty], kind="stable")]
        light = light[np.cumsum(weights[light]) < NEGLIGIBLE_WEIGHT]
        counted[light] = False
    negligible = (f"whose total stacking weight (below {NEGLIGIBLE_WEIGHT:g}) moves no band's level by more than "
                  f"{100 * NEGLIGIBLE_WEIGHT:g} point")
    if np.any(bfmi[counted] < 0.3):
        warn.append(f"energy BFMI {np.min(bfmi[counted]):.2f} < 0.3: momentum resampling explores the energy poorly")
    poor = np.flatnonzero(~counted & (bfmi < 0.3))
    if poor.size:
        notes.append(f"energy BFMI {np.min(bfmi[poor]):.2f} < 0.3 in chains {poor.tolist()}, {negligible}")
    if diverging[counted].sum() > 0:
        warn.append(f"{int(diverging[counted].sum())} divergent transitions")
    if diverging[~counted].sum() > 0:
        notes.append(f"{int(diverging[~counted].sum())} divergent transitions in chains "
                     f"{np.flatnonzero(~counted & (diverging > 0)).tolist()}, {negligible}")
    if stacked and independent is not None and independent is not False:
        # chains at distinct optima, combined by stacking: the combined result must be reproducible (True: every
        # chain at its own optimum; labels: chains at one optimum are one unit)
        error = stacked_mean_error(post["probe_score"].values, modes.weights, band,
                                   units=None if independent is True else independent)
        out["stacked_mean_error"] = error
        predicted, units = error["expected_max_difference"], error["effective_chains"]
        if predicted is None:
            warn.append("the stacked posterior's reproducibility cannot be judged: non-finite probe scores")
        elif units < MIN_EFFECTIVE_CHAINS:
            warn.append(f"the stacked posterior's reproducibility cannot be judged: {units:.1f} effective chains "
                        f"(chains at one optimum count as one; at least {MIN_EFFECTIVE_CHAINS} needed); run more "
                        "chains at distinct optima")
        elif predicted > REPRODUCIBLE_BAND_FRACTION:
            warn.append(f"the stacked posterior is not reproducible: its Monte Carlo error (optima as independent "
                        f"units, {units:.1f} effective) predicts that another run's mean score at the probes differs "
                        f"by about {predicted:.2f} band widths at most (> {REPRODUCIBLE_BAND_FRACTION:g}); more chains "
                        "at distinct optima would narrow it")
    elif stacked:
        # chains from one start, combined by stacking: each mode must mix within itself
        if out["max_mode_r_hat"] is not None and out["max_mode_r_hat"] > MAX_R_HAT:
            worst = modes.modes[int(np.nanargmax(modes.mode_r_hat))]
            what = (f"split r_hat {out['max_mode_r_hat']:.3f} > {MAX_R_HAT} of chain {worst[0]}, alone in its mode: "
                    "its halves disagree (it mixes too slowly)" if len(worst) == 1 else
                    f"label-invariant r_hat {out['max_mode_r_hat']:.3f} > {MAX_R_HAT} within the mode of chains "
                    f"{list(worst)}: its chains disagree or mix too slowly")
            warn.append(what)
    elif chains > 1 and out["max_r_hat"] > MAX_R_HAT:
        warn.append(f"label-invariant r_hat {out['max_r_hat']:.3f} > {MAX_R_HAT}: chains disagree "
                    f"({_odd_chain(post, rhat, lp)})")
    if chains == 1:
        warn.append("one chain: r_hat cannot be computed")
    out["warnings"] = warn
    out["notes"] = notes
    return out


def drifting_chains(posterior: PosteriorSamples, points, counts, stacks: bool = True) -> list[int]:
    """The chains :func:`convergence_summary` would fault on r_hat above :data:`MAX_R_HAT`: with the
    chains in one mode (:func:`~kgmm_bayes.bayes.stacking.chain_modes`, by the label-invariant
    probes), or in several that will not be stacked (``stacks`` false: no per-cell log-likelihood),
    all of them when r_hat over them exceeds it; stacked chains from one start, those of each mode
    whose r_hat within it does; stacked chains at two or more distinct optima, none (their result is judged by
    its reproducibility, which more chains improve, not longer ones).  ``run_nuts``'s ``drifting``
    check: these chains are run on."""
    if posterior.num_chains < 2:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        idata = az.from_dict(posterior=_probe_values(posterior, probe_points(points, counts)), dims=PROBE_DIMS)
    probes = idata.posterior[PROBE_VARS]  # r_hat is scale-free: the z-scored probes serve
    modes = chain_modes(probes)
    if stacks and len(modes.modes) > 1:
        if independent_starts(posterior) is not None:
            return []
        return sorted(c for mode, r_hat in zip(modes.modes, modes.mode_r_hat) if r_hat > MAX_R_HAT for c in mode)
    chains = list(range(posterior.num_chains))
    return chains if r_hat_of(probes, chains) > MAX_R_HAT else []


def _odd_chain(post, rhat, lp) -> str:
    """Which chain disagrees most on the worst probe, by how much, and where its log posterior sits."""
    name = max(PROBE_VARS, key=lambda v: float(rhat[v].max()))
    values = post[name].values.reshape(post[name].shape[:2] + (-1,))  # (chain, draw, n)
    worst = int(np.argmax(rhat[name].values.ravel()))
    series = values[..., worst]
    means = series.mean(axis=1)
    others = np.array([np.delete(means, c).mean() for c in range(len(means))])
    chain = int(np.argmax(np.abs(means - others)))
    gap = lp.mean(axis=1).max() - lp[chain].mean()
    index = ", ".join(str(int(i)) for i in np.unravel_index(worst, rhat[name].shape))
    return (f"chain {chain} is the odd one: {name}[{index}] averages {means[chain]:.4g} there against "
            f"{others[chain]:.4g} in the others (within-chain sd {series.std(axis=1).mean():.2g}); its mean log "
            f"posterior is {gap:.1f} nats below the best chain's: chains settled in different local modes "
            "or mix too slowly")


def probe_summary(idata: az.InferenceData):
    """arviz summary (mean, sd, HDI, MCSE, bulk/tail ESS, r_hat) of the label-invariant probes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.summary(idata, var_names=PROBE_VARS, round_to="none")


def zscore_from_idata(idata: az.InferenceData) -> ZScore:
    return ZScore(mean=np.asarray(idata.constant_data["zscore_mean"].values),
                  std=np.asarray(idata.constant_data["zscore_std"].values))


def posterior_from_idata(idata: az.InferenceData):
    """``(weights, means, cov_chol)`` with chains and draws merged, from a stored posterior."""
    def flat(name):
        arr = np.asarray(idata.posterior[name].values)
        return arr.reshape((-1,) + arr.shape[2:])
    return flat("weights"), flat("means"), flat("cov_chol")


def plot_diagnostics(folder: str, idata: az.InferenceData, max_probes: int = 4) -> list[str]:
    """Trace and rank plots of label-invariant probes, and the energy plot (with BFMI); PNG files
    ``trace.png``, ``rank.png``, ``energy.png`` in ``folder``; returns their paths.  Drawn on
    matplotlib ``Figure`` objects, without pyplot, so no plotting backend is switched."""
    import os

    from matplotlib.figure import Figure

    n = min(max_probes, idata.posterior.sizes["probe"])
    sel = {"probe": list(range(n))}
    title = "log density at probe points (label-invariant)"
    trace = Figure(figsize=(10, 2.1 * n))
    rank = Figure(figsize=(3.6 * n, 3.2))
    energy = Figure(figsize=(5.5, 3.8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        az.plot_trace(idata, var_names=["probe_log_density"], coords=sel, compact=False, axes=trace.subplots(n, 2))
        az.plot_rank(idata, var_names=["probe_log_density"], coords=sel, ax=np.atleast_1d(rank.subplots(1, n)))
        az.plot_energy(idata, ax=energy.subplots())
    paths = []
    for name, fig in (("trace", trace), ("rank", rank), ("energy", energy)):
        if name != "energy":
            fig.suptitle(f"{name}: {title}")
        fig.tight_layout(rect=(0, 0, 1, 0.94))
        paths.append(os.path.join(folder, f"{name}.png"))
        fig.savefig(paths[-1], dpi=90)
    return paths
