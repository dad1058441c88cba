"""The stages of a study (DESIGN.md, "The pipeline"), each cached in the output folder by a hash
of its inputs (:mod:`kgmm_bayes.study.outputs`).

data -> partition (-> choice of K) -> posterior -> scores -> interpolant -> Langevin model.
Each stage function takes the keys and upstream results it needs and returns its result
with the stage key the next stage hashes; :mod:`kgmm_bayes.study.run` chains them.
"""
from __future__ import annotations

import json
import math
import sys
import time
import warnings
from typing import NamedTuple

import jax
import numpy as np

from .._picks import evenly_spaced
from .._version import __version__
from ..bayes.correction import correction_arrays, correction_from_arrays, corrected_drift, fit_correction
from ..bayes.coarsening import (
    OFF,
    Coarsening,
    choose_zeta,
    error_terms,
    needs_variance,
    zeta_from_alpha,
    zeta_without_variance,
)
from ..bayes.diagnostics import (
    convergence_summary,
    drifting_chains,
    independent_starts,
    to_inference_data,
    with_chain_weights,
)
from ..bayes.sampler import (
    KnownHessians,
    PosteriorSamples,
    SamplerConfig,
    build_prior,
    initial_values,
    laplace_posterior,
    run_nuts,
)
from ..bayes.score import (
    MEAN_SCORE_CHUNK,
    ChainDraws,
    ScoreSummary,
    band_with_bias,
    predictive_drift,
    score_draws,
    posterior_mean_fields,
    pad_rows,
    posterior_mean_score,
    summarize_scores,
    thin_draws,
)
from ..bayes.score_matching import STEIN_LADDER, field_from_stats, field_stats, fisher_gap, stein_gap
from ..bayes.selection import select_components
from ..data.systems import get_system, simulate
from ..data.stream import StreamedData
from ..data.trajectory import StudyData, split_members, train_series_length
from ..data.zscore import ZScore
from ..files import atomic_write_bytes, json_floats
from ..metrics.density import BinnedDensity, binned_density, marginal_relative_entropies
from ..partition import Partition, fit_fine, fit_partition, partition_from_cells
from ..rom.interpolant import (
    fit_interpolant,
    interpolant_arrays,
    interpolant_from_arrays,
)
from ..rom.langevin import (
    LangevinResult,
    initial_particles,
    max_jacobian_eigenvalue,
    simulate_langevin,
)
from ..spec import Spec
from .checks import screening_spec
from .dynamics import rom_schedule
from .outputs import OutputFolder, _checksum, stage_key
from .report import STIFFNESS_LIMIT

__all__ = ["STAGE_SCHEMA", "StudyData", "study_keys", "langevin_start", "prepare_data", "sample_posterior",
           "partition_stage", "posterior_stage", "choose_components", "score_stage", "interpolant_stage",
           "interpolant_training_set", "SnapshotScores", "interpolant_snapshot_rows", "correction_stage",
           "correction_check_stage", "CorrectionCheck",
           "heldout_indices", "HELDOUT_POINTS", "langevin_stage", "ScoreStage", "LangevinStage", "stacked_weights",
           "model_drift", "model_draws", "rom_relative_entropies"]

# Part of every stage key: raise it whenever what a stage computes or stores changes (2: coreset
# cells enter through their moments; Partition gained cell_covariances. 3: stage files carry a
# SHA-256 of their arrays; the posterior stage holds its coarsening. 4: the coarsening's error
# estimate has the held-out score-matching gap. 6: MAP searches polished by L-BFGS; one posterior
# where zeta needs no standard posterior. 7: the coarsening's scikit-learn seed no longer follows the
# NUTS key. 8: the interpolant's snapshots come from outside held-out blocks, batches from a float64
# running sum). 9: the coarsening's bias also from the bumps' score-matching gap (coarsening_bound "stein").
# 10: the bumps' gap over a ladder of bump counts, 16 blocks, 3 standard errors (2 for 100 bumps).
# 11: the posterior keeps its mean's local error field (score_bias_* in sample_stats) for the score band.
# 12: the bumps' gap and field add back the posterior mean's own projected sampling variance.
# 13: a second posterior keeps the first one's draws (model_* in sample_stats), which drive the model.
# 14: the chains' start jitter drawn on the host (kgmm_bayes._keys.host_rng); a second posterior starts where the
# first one's chains ended (run_nuts' warm): other draws from the same key.
STAGE_SCHEMA = 14
GAP_DRAWS = 64  # posterior draws whose mean score the score-matching gap is measured for


def study_keys(seed: int):
    """The study's named keys ``(data, reference, partition, mcmc, train, langevin)``: one seed, split once."""
    return tuple(jax.random.split(jax.random.key(seed), 6))


def langevin_start(langevin_key, part: Partition, particles: int):
    """Initial particles drawn from the partition's cells by count, and the key of the run's noise."""
    return initial_particles(langevin_key, part.points, part.counts, particles)


def log(progress, message):
    if progress:
        print(f"[kgmm-bayes] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data
def _data_from_arrays(cached):
    train, reference = cached["train"], cached["reference"]
    if train.ndim != 2 or reference.ndim != 2 or not np.issubdtype(train.dtype, np.floating):
        raise ValueError(f"data arrays of shapes {train.shape}, {reference.shape}")
    return train, reference


def prepare_data(spec: Spec, data_key, reference_key, out: OutputFolder | None = None,
                 user_data=None) -> StudyData:
    """Training and reference sets: held-out user data, or two independent system runs."""
    ds = spec.data
    if isinstance(user_data, StreamedData):
        found, d = user_data.scan, user_data.shape[-1]
        series = user_data.train_sample
        return StudyData(series.reshape(-1, d), user_data.reference_sample.reshape(-1, d),
                         ZScore(found.train.mean, found.train.std()), None, source=ds.path,
                         series_length=series.shape[1] if ds.interval is not None else None, stream=user_data)
    if user_data is not None:
        train, reference = split_members(user_data, ds.heldout_fraction)
        if reference is None:
            reference = train
        length = train_series_length(user_data.shape, ds.heldout_fraction) if ds.interval is not None else None
        return StudyData(train, reference, ZScore.fit(train), None, source=ds.path or "array", series_length=length)
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
    length = None
    if system.timed:  # every member (every KS offset) is a series of steps // thin snapshots
        length = (system.steps if ds.steps is None else ds.steps) // (system.thin if ds.thin is None else ds.thin)
    return StudyData(train, reference, ZScore.fit(train), system.score, source=f"system {system.name}",
                     series_length=length)


# ---------------------------------------------------------------- partition
def partition_stage(spec, out, key, z, cells, upstream, data: StudyData | None = None):
    """The partition of the z-scored snapshots ``z``; of every snapshot on disk when ``data`` is
    streamed (the fine cells from the second pass, cached apart from K; their marginals go to ``data``)."""
    split = spec.partition.split
    # the split joins the key as Spec.to_dict states it (not at its LATER_DEFAULTS value): older folders keep theirs
    stated = spec.to_dict()["partition"]
    skey = stage_key("partition", upstream, cells, spec.mixture.components,
                     *((stated["split"],) if "split" in stated else ()))
    if data is not None and data.stream is not None:
        fine_key, coarse_key = jax.random.split(key)
        ckey = stage_key("cells", upstream, cells)
        cached = out.load_stage("cells", ckey)
        seconds = None  # the pass's time, when it ran in this run
        if cached is None:
            stream = data.stream
            fine = fit_fine(fine_key, data.zscore.forward(stream.scan.fit_sample), cells,
                            max((spec.mixture.components, *spec.mixture.select_components)))
            passed = stream.cells(data.zscore, fine.predict, fine.n_clusters)
            cached = {"counts": passed.counts, "sums": passed.sums, "second": passed.second,
                      **marginals_to_arrays("train", passed.train_marginals),
                      **({} if passed.heldout_marginals is None
                         else marginals_to_arrays("heldout", passed.heldout_marginals))}
            out.save_stage("cells", ckey, cached)
            seconds = passed.wall_time
        data.set_marginals(marginals_from_arrays("train", cached),
                           marginals_from_arrays("heldout", cached) if "heldout_lo" in cached else None, seconds)
        part = partition_from_cells(coarse_key, cached["counts"], cached["sums"], cached["second"],
                                    spec.mixture.components, split=split)
        return part, skey
    cached = out.load_stage("partition", skey, build=lambda a: Partition(**a))
    if cached is not None:
        return cached, skey
    part = fit_partition(key, z, cells, spec.mixture.components, split=split)
    out.save_stage("partition", skey, part._asdict())
    return part, skey


_MARGINAL_FIELDS = ("lo", "step", "points", "n", "bandwidth", "low", "high")


def marginals_to_arrays(prefix, marginals):
    """Binned marginals as stage arrays (``prefix_lo`` ... per coordinate, ``prefix_bins_i``)."""
    arrays = {f"{prefix}_{f}": np.array([getattr(m, f) for m in marginals], np.float64) for f in _MARGINAL_FIELDS}
    arrays.update({f"{prefix}_bins_{i}": m.counts for i, m in enumerate(marginals)})
    return arrays


def marginals_from_arrays(prefix, arrays):
    fields = [arrays[f"{prefix}_{f}"] for f in _MARGINAL_FIELDS]
    return [BinnedDensity(lo, step, int(points), arrays[f"{prefix}_bins_{i}"], int(n), bw, low, high)
            for i, (lo, step, points, n, bw, low, high) in enumerate(zip(*fields))]


# ---------------------------------------------------------------- posterior
COARSENING_SEED = 0  # scikit-learn's seed for the coarsening's maximum-likelihood fits


def coarsening_seed() -> int:
    """The scikit-learn seed of the coarsening's maximum-likelihood fits: :data:`COARSENING_SEED`,
    whatever the posterior's key, so that ``zeta`` is a function of the data alone (the same data
    sampled with other NUTS keys get the same coarsening; with the key's bits, KS D = 4 got 0.935,
    0.813 and 0.934 for keys 0, 1 and 2)."""
    return COARSENING_SEED


def sample_posterior(spec: Spec, key, part: Partition, z, progress: bool = False):
    """NUTS on the spec's mixture posterior: the partition's cells as a weighted coreset (their
    moments), or every z-scored snapshot with ``[partition] coreset = false``; returns
    ``(posterior, coarsening)``.

    ``[mixture] coarsening``: every count times ``zeta = alpha / (alpha + N)``
    (:mod:`kgmm_bayes.bayes.coarsening`).  With ``"auto"`` the error terms come first; where
    ``zeta`` needs the standard posterior's score variance (a squared bias, or the score-matching
    floor) the standard posterior (sampled with ``key``, as with ``"off"``) gives it, and the
    coarsened posterior is sampled (with ``fold_in(key, 1)``) only when ``zeta < 1``.  Otherwise
    ``zeta = 1 / R`` and only the kept posterior is sampled, with the same key it would get after
    a standard one; with ``[mixture] coarsening_bound = "stein"`` a significant bias that the bumps'
    score-matching gap then finds asks for a second, more coarsened posterior.  A well-specified fit
    costs one posterior and keeps its numbers.  A second posterior starts where the first ended unless
    ``[sampler] warm_start = false`` (``run_nuts``' ``warm``: each chain at its own chain's last draw, its
    metric the first's spread times the ratio of the two zetas), without MAP searches of its own (except with
    the Laplace metric, fixed or whitened, whose covariance only a MAP search gives).  Where it does search (no
    warm start, or a Laplace first posterior), its MAP searches are the first one's optima polished at its own
    zeta (``run_nuts``' ``map_from``), not searches afresh from the partition's values.
    ``z``: the snapshots in their time order (the error estimate fits contiguous blocks of them).
    """
    snapshots = int(round(float(np.sum(part.counts))))  # all of them (z may be a streamed study's sample)
    if spec.partition.coreset:
        points, counts, covs = part.points, part.counts, part.cell_covariances
    else:
        points, counts, covs = z, np.ones(len(z)), None
    m = spec.mixture
    prior = build_prior(part, m.dirichlet_alpha, m.mean_scale, m.scale_prior, m.lkj_eta)
    config = SamplerConfig(**spec.sampler._asdict(), progress=progress)

    def drifting(post):  # chains that convergence_summary would fault on r_hat: run_nuts runs them on
        return drifting_chains(post, part.points, part.counts, stacks=spec.partition.coreset)

    def scaled(zeta):  # the likelihood's counts at zeta
        return counts if zeta == 1.0 else np.asarray(counts, np.float64) * zeta

    known = []  # the Hessians a Laplace first posterior computed at its refined optima (KnownHessians), if any

    def run(run_key, zeta, after=None, first=None, way=spec.sampler.kept_posterior, keep=False):
        # after: (first posterior, its zeta), where this one starts (warm start); else a first posterior's MAP optima,
        # polished at zeta, are its MAP searches' (map_from), with its Hessians; way: "nuts", or "laplace" (its Laplace
        # approximation), the kept posterior's by default; keep: a Laplace posterior keeps its Hessians in its stats
        warm = None if after is None else (after[0], after[1] / zeta)
        map_from = None if first is None else first.sample_stats.get("map_optima")
        hessians = known[0] if first is not None and known else None
        if way == "laplace":
            return laplace_posterior(run_key, points, scaled(zeta), prior, initial_values(part), config,
                                     point_covariances=covs, map_from=map_from, known=hessians, keep_hessians=keep)
        return run_nuts(run_key, points, scaled(zeta), prior, initial_values(part), config, point_covariances=covs,
                        drifting=drifting, warm=warm, map_from=map_from, known=hessians)

    if m.coarsening == "off":
        return run(key, 1.0), OFF
    if m.coarsening != "auto":
        zeta = zeta_from_alpha(float(m.coarsening), snapshots)
        return run(key, zeta), Coarsening(method="fixed", zeta=zeta, alpha=float(m.coarsening))
    start = time.perf_counter()
    sk_seed = coarsening_seed()
    mode = m.coarsening_bound  # "stein" (the default), "report" or "score_matching"
    use_gap, as_bias = mode != "report", mode != "score_matching"
    terms = error_terms(z, m.components, part.points, part.counts, seed=sk_seed)

    bump_bases = {}  # placed once on these cells, for the first and any second posterior

    def gap_of(post, zeta, ladder=STEIN_LADDER, keep_field=False):  # the score-matching gap of a posterior's mean
        draws = thin_draws(post, GAP_DRAWS)  # score (sampled at zeta): bumps or a network
        if as_bias:  # the draws' spread times R zeta: the mean's own sampling variance, which the bumps read low by
            return stein_gap(z, lambda x: posterior_mean_score(*draws, x), part.points, part.counts, seed=sk_seed,
                             ladder=ladder, bases=bump_bases, draw_scores=lambda x: score_draws(*draws, x)[0],
                             spread_factor=terms["score"][0] * zeta, keep_field=keep_field)
        return fisher_gap(jax.random.fold_in(key, 2), z, lambda x: posterior_mean_fields(*draws, x))

    def kept(post, gap, first, zeta, first_zeta, gap_from):  # the posterior kept (sampled at zeta), with its mean's
        # local error field and, when a second posterior was sampled, the first one's draws that drive the model;
        # gap_from: the posterior whose mean the gap was measured on
        stats = dict(post.sample_stats)
        stats.pop("map_optima", None)  # (searches, P): only a second posterior of this fit needed them
        if post is not first:
            stats.update(model_draw_stats(first, first_zeta, part, spec.partition.coreset))
        if "laplace" in gap_from.sample_stats:  # the gap and zeta's variance came from a Laplace first posterior
            stats["first_posterior"] = np.asarray("laplace")
        if mode == "stein" and gap is not None and gap.field is not None:  # ("stein": the score band's)
            field = gap.field
            if post is not gap_from:  # the field of the kept posterior's mean, on the same bumps
                field = gap_of(post, zeta, (len(field.centres),), keep_field=True).field
            stats.update(field_stats(field))
        return post._replace(sample_stats=stats, wall_time=time.perf_counter() - start)

    def choice_from(post, gap, tempered):
        scores, logps = score_draws(*thin_draws(post, spec.score.max_draws), part.points)
        return choose_zeta(scores, logps, part.points, part.counts, z, m.components, seed=sk_seed, score_gap=gap,
                           use_gap=use_gap, snapshots=snapshots, terms=terms, tempered=tempered, gap_as_bias=as_bias)

    laplace = spec.sampler.first_posterior == "laplace"
    # a Laplace first posterior at the zeta kept is the kept posterior's Laplace approximation already
    rerun = not (laplace and spec.sampler.kept_posterior == "laplace")

    def first_run(run_key, zeta):  # the first posterior: NUTS, or the Laplace approximation at the chains' optima
        post = run(run_key, zeta, way=spec.sampler.first_posterior, keep=True)
        if "map_hessians" not in post.sample_stats:  # (NUTS)
            return post
        stats = dict(post.sample_stats)  # its Hessians, for a second posterior started at its optima (not kept)
        known.append(KnownHessians(stats.pop("map_hessian_rows"), stats.pop("map_hessians"), scaled(zeta)))
        return post._replace(sample_stats=stats)

    def variance_from(choice, zeta):  # where v came from when the first posterior is not the one kept
        if laplace:
            return choice._replace(variance_from="Laplace approximation" + (" x its zeta" if zeta < 1.0 else ""))
        return choice._replace(variance_from="first posterior x its zeta") if zeta < 1.0 else choice

    if not needs_variance(terms, mode == "score_matching"):
        # no bias the richer mixture sees: zeta = 1 / R whatever the posterior's variance, so the posterior is
        # sampled at once with the key it would get after a standard one; only a bias the bumps then find
        # (mode "stein") asks for a second, more coarsened posterior
        zeta = zeta_without_variance(terms)
        first_key = key if zeta == 1.0 else jax.random.fold_in(key, 1)
        first = post = measured = first_run(first_key, zeta)
        gap = gap_of(first, zeta)
        choice = choice_from(first, gap, zeta)
        if choice.zeta < zeta:  # a Laplace first posterior's draws are no chains to start a second one from
            post = run(jax.random.fold_in(key, 1 if zeta == 1.0 else 3), choice.zeta,
                       after=None if laplace else (first, zeta), first=first)
            choice = variance_from(choice, zeta)
        elif laplace:  # the posterior kept is sampled at the first one's zeta, and drives the model too
            if rerun:
                first = post = run(first_key, zeta, first=first)
            choice = variance_from(choice, zeta)
        return kept(post, gap, first, choice.zeta, zeta, measured), choice
    first = post = measured = first_run(key, 1.0)
    gap = gap_of(first, 1.0)
    choice = choice_from(first, gap, 1.0)
    if choice.zeta < 1.0:
        post = run(jax.random.fold_in(key, 1), choice.zeta, after=None if laplace else (first, 1.0), first=first)
    elif laplace and rerun:
        first = post = run(key, 1.0, first=first)
    if laplace:
        choice = variance_from(choice, 1.0)
    return kept(post, gap, first, choice.zeta, 1.0, measured), choice


# The reduced-order model's drift when the coarsening sampled two posteriors: the first (standard, or at 1 / R)
# posterior's draws, not the kept one's.  The kept posterior's likelihood counts zeta N snapshots, so its mean is
# pulled towards the prior by 1 / zeta more; its draws set the bands, the first one's mean the model.  Measured
# (kgmm-bayes run, seed 0, same Langevin noise; README "What a band means"): relative entropy with the first
# posterior's draws against the kept one's, four-well (zeta 0.630 then 0.103) 0.000419 against 0.000612 (classic
# KGMM 0.000489), triad 0.000451 against 0.000574, Lorenz-96 (zeta 1 then 0.0109, older code: now 0.287) 0.00254
# against 0.00955, Lorenz-63 (zeta 0.937 then 0.132, the first posterior's 16 chains stacked; the interpolant drift) 0.000698 against
# 0.000705.
MODEL_DRAW_FIELDS = ("model_weights", "model_means", "model_cov_chol")


def decrement_summary(decrements) -> tuple:
    """``(largest, not optima)`` of Newton-refined centres' half decrements (:func:`~kgmm_bayes.bayes.sampler.newton_refine`):
    the largest finite one (nats above its optimum; nan where none is finite) and how many are ``nan`` (no positive
    definite Hessian, not refined)."""
    decrements = np.asarray(decrements, np.float64)
    finite = decrements[np.isfinite(decrements)]
    return float(finite.max()) if finite.size else float("nan"), int(np.sum(~np.isfinite(decrements)))


def model_draw_stats(post, zeta: float, part: Partition, coreset: bool) -> dict:
    """``post``'s draws (with their chain axis), the chains' stacking weights (from ``post``'s own convergence
    summary, as :func:`score_stage` weighs the kept posterior's chains), its worst r_hat within modes and the zeta
    it was sampled at, as ``sample_stats`` entries of the kept posterior (its stage keeps them)."""
    idata = to_inference_data(post, ZScore(np.zeros(part.points.shape[1]), np.ones(part.points.shape[1])),
                              part.points, part.counts, point_covariances=part.cell_covariances,
                              log_likelihood=coreset, likelihood_power=zeta)
    convergence = convergence_summary(idata, independent=independent_starts(post))  # no band: no stored figure uses it
    weights = stacked_weights(convergence)
    chains = post.weights.shape[0]
    stats = {name: np.asarray(a) for name, a in zip(MODEL_DRAW_FIELDS, (post.weights, post.means, post.cov_chol))}
    stats["model_chain_weights"] = np.full(chains, 1.0 / chains) if weights is None else np.asarray(weights)
    stats["model_stacked"] = np.asarray(weights is not None)
    r_hat = convergence.get("max_mode_r_hat", convergence.get("max_r_hat"))
    stats["model_max_r_hat"] = np.asarray(np.nan if r_hat is None else float(r_hat))
    stats["model_zeta"] = np.asarray(float(zeta))
    if "laplace_newton_decrement" in post.sample_stats:  # a Laplace posterior: how far its centres are from optima
        largest, not_optima = decrement_summary(post.sample_stats["laplace_newton_decrement"])
        stats["model_newton_decrement"] = np.asarray(largest)
        stats["model_centres_not_optima"] = np.asarray(not_optima)
    return stats


def model_draws(post, draws, max_draws: int) -> tuple:
    """``(draws, zeta or None)``: the draws that drive the reduced-order model, ``post``'s first posterior's (at
    most ``max_draws``, thinned within chains by their stacking weights; kept by :func:`model_draw_stats`), or
    ``draws`` (the study's own) when only one posterior was sampled."""
    stats = post.sample_stats
    if MODEL_DRAW_FIELDS[0] not in stats:
        return draws, None
    chains = ChainDraws(*(np.asarray(stats[name]) for name in MODEL_DRAW_FIELDS))
    weights = np.asarray(stats["model_chain_weights"]) if bool(stats["model_stacked"]) else None
    return thin_draws(chains, max_draws, chain_weights=weights), float(stats["model_zeta"])


def _posterior_from_arrays(cached):
    sites = {k[5:]: v for k, v in cached.items() if k.startswith("site_")}
    stats = {k[5:]: v for k, v in cached.items() if k.startswith("stat_")}
    coarsening = {k: (math.inf if v is None and k == "alpha" else math.nan if v is None else v)
                  for k, v in json.loads(str(cached["coarsening"])).items()}
    return (PosteriorSamples(sites["weights"], sites["means"], sites["cov_chol"], sites, stats,
                             float(cached["wall_time"])), Coarsening(**coarsening))


def posterior_stage(spec, out, key, part, z, upstream, progress):
    """``((posterior, coarsening), stage key, read from the cache)``."""
    # [score] max_draws: the coarsening's choice of zeta reads the draws thinned at it ([score] band changes no
    # stored array of the stage)
    max_draws = spec.score.max_draws if spec.mixture.coarsening == "auto" else None
    skey = stage_key("posterior", upstream, spec.section_json("mixture", "sampler", "partition"), max_draws)
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


def choose_components(spec: Spec, out, partition_key, mcmc_key, z, zscore, cells, upstream, progress,
                      screening: bool = False, data: StudyData | None = None):
    """Fit a posterior for each ``[mixture] select_components`` K (cached stages), keep the best by
    PSIS-LOO; returns the spec with ``components`` set to it, the selection, whether the best
    posterior came from the cache, and its InferenceData.  The fine cells do not depend on K, so the
    candidates' LOO terms are over the same cells.  ``screening``: the candidates are sampled with
    :func:`~kgmm_bayes.study.checks.screening_spec`'s shorter chains and the chosen K again in full."""
    candidates, cached, seconds = {}, {}, {}
    for k in spec.mixture.select_components:
        # candidates are compared by the standard posterior: PSIS-LOO's importance ratios are those of the
        # untempered likelihood; the chosen K is then fitted with the spec's coarsening.  They take NUTS's draws
        # (kept_posterior = "laplace" aside): the ratios are against the posterior itself, not an approximation
        spec_k = spec._replace(mixture=spec.mixture._replace(components=k, select_components=(), coarsening="off"),
                               sampler=spec.sampler._replace(kept_posterior="nuts"))
        spec_k = screening_spec(spec_k) if screening else spec_k
        log(progress, f"model selection: K = {k}")
        part_k, part_key = partition_stage(spec_k, out, partition_key, z, cells, upstream, data)
        (post_k, _), _, cached[k] = posterior_stage(spec_k, out, mcmc_key, part_k, z, part_key, progress)
        seconds[k] = float(post_k.wall_time)  # its first run's, when read back
        candidates[k] = to_inference_data(post_k, zscore, part_k.points, part_k.counts,
                                          point_covariances=part_k.cell_covariances)
    reused = spec.mixture.coarsening == "off" and not screening  # else the chosen K is sampled again, in full
    selection = select_components(candidates)._replace(posterior_s=seconds, reused_best=reused)
    if selection.table is not None:
        atomic_write_bytes(out.path("model_selection.csv"), selection.table.to_csv().encode())
    best = spec._replace(mixture=spec.mixture._replace(components=selection.best, select_components=()))
    if not reused:
        return best, selection, None, None
    return best, selection, cached[selection.best], candidates[selection.best]


# ---------------------------------------------------------------- scores
def stacked_weights(convergence: dict):
    """The chains' stacking weights when the chains settled in several modes, else ``None`` (equal)."""
    modes = convergence.get("chain_modes")
    return np.asarray(modes["chain_weights"]) if modes and modes["stacked"] else None


class ScoreStage(NamedTuple):
    """The posterior as the rest of the study uses it."""

    idata: object  # arviz.InferenceData
    convergence: dict  # convergence_summary, with the coarsening and the MAP search
    draws: tuple  # (weights, means, cov_chol), at most [score] max_draws
    summary: ScoreSummary  # score band at the partition's points
    score_bias: object = None  # the posterior mean's local error field (BiasField) widening the band, or None
    quantiles: object = None  # the draws' quantile band at the partition's points, before that widening (ScoreSummary)


def likelihood_coreset(stats: dict, cells: int) -> dict:
    """What the sampler's likelihood was (:mod:`kgmm_bayes.bayes.coreset`), for ``metrics.json``:
    ``likelihood_cells``, and where they are merged cells, the sd over the draws of the log-likelihood
    gap to the partition's cells, the sizes tried with their Laplace-draw sd, and a merge rejected on
    the draws (the cells then sampled themselves); the likelihood's precision (``likelihood_precision``) and,
    where "auto" tried float32, its gap's sd over the Laplace draws."""
    def finite(value):
        return float(value) if np.isfinite(value) else None

    sampled = int(stats.get("likelihood_cells", cells))
    out = {"likelihood_cells": sampled, "likelihood_merged": sampled < cells,
           "likelihood_precision": str(stats.get("likelihood_precision", "float64"))}
    if "likelihood_precision_gap" in stats:
        out["likelihood_precision_gap_sd"] = finite(stats["likelihood_precision_gap"])
    if "likelihood_gap" in stats:
        out["likelihood_gap_sd"] = finite(np.std(stats["likelihood_gap"]))
    if "likelihood_ladder" in stats:
        out["likelihood_ladder"] = [[int(c), finite(sd)] for c, sd in np.asarray(stats["likelihood_ladder"])]
    if "likelihood_rejected" in stats:
        rejected_cells, rejected_sd = np.asarray(stats["likelihood_rejected"])
        out["likelihood_rejected"] = {"cells": int(rejected_cells), "gap_sd": finite(rejected_sd)}
    return out


def score_stage(spec: Spec, post, coarsening, part: Partition, zscore, idata=None) -> ScoreStage:
    """Diagnostics of the posterior and its score band at the cells; ``idata``: already built while
    choosing K.  Convergence warnings are issued here."""
    # pointwise log-likelihood terms (for az.loo) when the likelihood's observations are the cells
    if idata is None:
        idata = to_inference_data(post, zscore, part.points, part.counts, point_covariances=part.cell_covariances,
                                  log_likelihood=spec.partition.coreset, likelihood_power=coarsening.zeta)
    convergence = convergence_summary(idata, spec.score.band, independent_starts(post))
    convergence["coarsening"] = coarsening.to_json()
    if "map_potential_energies" in post.sample_stats:
        optima = np.sort(-np.asarray(post.sample_stats["map_potential_energies"]))[::-1]
        convergence["map_search_log_posteriors"] = json_floats(optima)  # best first
        convergence["chain_starts"] = spec.sampler.chain_starts
    if "start_optima" in post.sample_stats:  # "spread" or "distinct": how many distinct optima the chains start at
        convergence["distinct_starts"] = int(np.unique(post.sample_stats["start_optima"]).size)
    if "first_posterior" in post.sample_stats:  # zeta's variance and the gap from a Laplace first posterior
        convergence["first_posterior"] = str(post.sample_stats["first_posterior"])
    if "laplace_newton_decrement" in post.sample_stats:  # the kept posterior by its Laplace approximation: no NUTS
        convergence["kept_posterior"] = "laplace"
    for centres in ("laplace", "whitening"):  # a Laplace posterior's centres, or chains whitened each at its own
        # optimum: the largest half Newton decrement (nats above the optimum) left at them, and how many had no
        # positive definite Hessian
        if f"{centres}_newton_decrement" in post.sample_stats:
            largest, not_optima = decrement_summary(post.sample_stats[f"{centres}_newton_decrement"])
            convergence[f"{centres}_newton_decrement"] = json_floats(largest)
            convergence[f"{centres}_centres_not_optima"] = not_optima
    if "warm_start" in post.sample_stats:  # a second posterior, started where the first one's chains ended
        convergence["warm_start"] = True
    if "metric" in post.sample_stats:  # the metric NUTS ran in (sampler.resolved_metric)
        convergence["metric"] = str(post.sample_stats["metric"])
    if "continuations" in post.sample_stats:  # [sampler] extend: how often each chain's draws were replaced
        convergence["continuations"] = [int(c) for c in post.sample_stats["continuations"]]
    if spec.partition.coreset:  # (without it NUTS sampled every snapshot)
        convergence.update(likelihood_coreset(post.sample_stats, len(part.points)))
    for message in convergence["warnings"]:
        warnings.warn(f"posterior: {message}", RuntimeWarning, stacklevel=3)
    weights = stacked_weights(convergence)
    if weights is not None:  # chains in several modes: every band uses their stacked mixture
        idata = with_chain_weights(idata, weights)
    draws = thin_draws(post, spec.score.max_draws, chain_weights=weights)
    scores, logps = score_draws(*draws, part.points)
    quantiles = summarize_scores(scores, logps, spec.score.band)
    field = field_from_stats(post.sample_stats)
    if field is None:
        return ScoreStage(idata, convergence, draws, quantiles, quantiles=quantiles)
    cross = field.estimate(part.points)
    summary = band_with_bias(quantiles, np.maximum(cross, 0.0))  # as field.squared
    # how much of the band the local bias decides (metrics.json, report.md): the local estimate's count-weighted
    # mean (about the bumps' gap) and its mean with negative values (noise) counted as 0, as the band uses it
    w = np.asarray(part.counts, np.float64) / np.sum(part.counts)
    widened = (summary.upper - summary.lower) > (quantiles.upper - quantiles.lower)
    convergence["score_bias"] = {"bumps": int(len(field.centres)),
                                 "widened_fraction": float(np.sum(w[:, None] * widened) / widened.shape[1]),
                                 "mean_squared_bias": float(np.sum(w * cross.sum(axis=1))),
                                 "mean_squared_bias_clipped": float(np.sum(w * np.maximum(cross, 0.0).sum(axis=1)))}
    return ScoreStage(idata, convergence, draws, summary, field, quantiles)


def with_local_bias(post, summary: ScoreSummary, points, divisor=1.0) -> ScoreSummary:
    """``summary`` (the draws' quantile band at ``points``, z-scored) with each half-width at least the local bias
    of the posterior mean (its bumps' error field, kept with the posterior by the coarsening's ``"stein"`` rule
    where significant; :func:`~kgmm_bayes.bayes.score.band_with_bias`).  ``divisor``: the z-score's sd, for a
    ``summary`` in physical units."""
    field = field_from_stats(post.sample_stats)
    if field is None:
        return summary
    return band_with_bias(summary, field.squared(points) / np.square(divisor))


# ---------------------------------------------------------------- interpolant
HELDOUT_POINTS = 4096  # training snapshots at which the interpolant's error is measured
HELDOUT_BLOCKS = (64, 8)  # ... taken from every 8th of 64 contiguous blocks of the training snapshots


def _heldout_blocks(n: int) -> np.ndarray:
    """Every index of the held-out blocks: blocks 4, 12, 20, ... of :data:`HELDOUT_BLOCKS`' 64
    contiguous pieces of ``range(n)`` (an eighth of the snapshots, spread through the data)."""
    blocks, every = HELDOUT_BLOCKS
    edges = np.linspace(0, n, blocks + 1).round().astype(int)
    return np.concatenate([np.arange(edges[b], edges[b + 1]) for b in range(every // 2, blocks, every)])


def heldout_indices(n: int) -> np.ndarray:
    """Indices of the (up to) :data:`HELDOUT_POINTS` training snapshots at which the interpolant's error
    is measured: evenly spaced through the held-out blocks (:func:`_heldout_blocks`), contiguous pieces
    of the time series that the network never trains on, so that no training snapshot is a near
    neighbour in time of a held-out one except at a block's two ends."""
    held = _heldout_blocks(n)
    if len(held) == 0:  # a few dozen snapshots or fewer, where rounding left the blocks empty: every 8th one
        held = np.arange(HELDOUT_BLOCKS[1] // 2, n, HELDOUT_BLOCKS[1])
    return held[evenly_spaced(len(held), HELDOUT_POINTS)] \
        if len(held) else held


def interpolant_snapshot_rows(n: int, count: int) -> np.ndarray:
    """The rows of up to ``count`` training snapshots for the interpolant, evenly spaced through ``n`` snapshots
    outside the held-out blocks (:func:`_heldout_blocks`; with none, outside :func:`heldout_indices`)."""
    if count <= 0 or n == 0:
        return np.zeros(0, np.intp)
    held = _heldout_blocks(n)
    held = held if len(held) else heldout_indices(n)
    free = np.setdiff1d(np.arange(n), held, assume_unique=True)
    return free[evenly_spaced(len(free), count)] if len(free) else np.zeros(0, np.intp)


def interpolant_snapshots(z, count: int) -> np.ndarray:
    """Up to ``count`` training snapshots for the interpolant (:func:`interpolant_snapshot_rows` of ``z``)."""
    z = np.asarray(z)
    return z[interpolant_snapshot_rows(len(z), count)]


class SnapshotScores:
    """The posterior-mean score of ``draws`` at the training snapshots ``z`` ``(N, d)``, by row numbers:
    ``scores[rows]`` ``(len(rows), d)``, each row computed once however many stages ask for it (the correction's
    fit asks for every snapshot, then the interpolants' training snapshots and the held-out error reuse them).
    Every row is computed by the one program of ``N``'s chunk size (:func:`posterior_mean_score`'s for all of
    ``z``; fewer rows padded to it), so its bits do not depend on which rows were asked for first: a run resumed
    with some stages read back gives the same numbers."""

    def __init__(self, draws, z):
        self.draws, self.z = draws, np.asarray(z)
        self.values = np.empty(self.z.shape, np.float64)
        self.known = np.zeros(len(self.z), bool)
        self.chunk = min(MEAN_SCORE_CHUNK, 1 << int(np.ceil(np.log2(max(len(self.z), 1)))))

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, np.intp)
        missing = np.unique(rows[~self.known[rows]])
        if len(missing):
            points = pad_rows(self.z[missing], self.chunk)
            self.values[missing] = posterior_mean_score(*self.draws, points, chunk=self.chunk)[:len(missing)]
            self.known[missing] = True
        return self.values[rows]


def correction_stage(spec: Spec, out, upstream, draws, z, seed: int, scores: SnapshotScores | None = None):
    """``(correction, seconds, read from the cache)``: the score-matching correction of the posterior-mean score
    of ``draws`` on the training snapshots ``z`` (:func:`~kgmm_bayes.bayes.correction.fit_correction`;
    ``[interpolant] correction``), ``None`` with ``"off"`` or too few snapshots; ``seconds``: the fit's (the run
    which computed it, when read back).  ``scores``: that score at ``z``'s rows (:class:`SnapshotScores`), kept
    for the stages after."""
    if spec.interpolant.correction == "off":
        return None, 0.0, False
    ckey = stage_key("correction", upstream, spec.interpolant.correction, seed, "spread")  # with its sampling error
    cached = out.load_stage("correction", ckey, build=lambda a: (
        correction_from_arrays(a) if "theta" in a else None, float(a["wall_time"])))
    if cached is not None:
        return (*cached, True)
    start = time.perf_counter()
    correction = fit_correction(z, None, seed=seed, scores=SnapshotScores(draws, z) if scores is None else scores)
    seconds = time.perf_counter() - start
    out.save_stage("correction", ckey, {**({} if correction is None else correction_arrays(correction)),
                                        "wall_time": np.asarray(seconds)})
    return correction, seconds, False


# The corrected model's check (:func:`correction_check_stage`): two pilot runs of the model's own drift (the mixture
# drift, or the network trained on each set of targets), a fraction of the model's run each.  A significant
# cross-validated decrease of Hyvarinen's score did not make a better model on Lorenz-96 (2,000 bumps, decrease 408
# +- 4.6: relative entropy 0.0019 -> 0.047, dt x the drift's largest Jacobian eigenvalue 0.63 -> 1.15), so the model
# itself is tried before the correction is used.
CHECK_PARTICLES = 256  # at most: the model's first ones
CHECK_FRACTION = 8  # the pilots' sampling steps and thinning are the model's over this (its burn-in whole)
CHECK_BATCHES = 8  # groups of the pilots' particles whose paired differences give the difference's standard error


class CorrectionCheck(NamedTuple):
    """Pilot runs of the reduced-order model without and with the correction, judged against the training data."""

    uncorrected: float  # mean over coordinates of the marginal relative entropy (inf: fewer than 2 samples kept)
    corrected: float
    # standard error of corrected - uncorrected over the pilots' particles (their starts and noise): the sd of the
    # difference over CHECK_BATCHES groups of them / sqrt(groups); inf where a group kept no samples
    difference_se: float
    lost: tuple  # particles lost (escaped or non-finite): (uncorrected, corrected)
    particles: int
    steps: int  # after the burn-in
    seconds: float

    @property
    def kept(self) -> bool:
        """The correction is used: its pilot lost no more particles and is not farther from the training data by more
        than two standard errors (the correction lowered Hyvarinen's score significantly: within the pilots' noise
        that evidence stands)."""
        return self.lost[1] <= self.lost[0] and not self.corrected - self.uncorrected > 2 * self.difference_se

    def to_json(self) -> dict:
        return {"uncorrected_relative_entropy": json_floats(self.uncorrected),
                "corrected_relative_entropy": json_floats(self.corrected),
                "difference_se": json_floats(self.difference_se), "lost_particles": list(self.lost),
                "particles": self.particles, "steps": self.steps, "seconds": self.seconds, "kept": self.kept}


def rom_relative_entropies(rom: LangevinResult, zscore: ZScore, reference, grid_points: int,
                           binned: bool = False, matched: bool = False) -> np.ndarray:
    """``(d,)``: the marginal relative entropies of a model run's kept samples (z-scored) against ``reference``
    (physical samples or binned marginals); NaN where fewer than two samples were kept.  ``binned``: the samples'
    densities binned KDEs (:func:`~kgmm_bayes.metrics.density.binned_density`) whatever their number.
    ``matched``: the reference smoothed as a set of the model's size (a long run's samples; ``relative_entropy``)."""
    kept = rom.kept_samples()
    if len(kept) < 2:
        return np.full(rom.samples.shape[-1], np.nan)
    model = zscore.inverse(kept.astype(np.float64))
    if binned:
        model = [binned_density(column) for column in model.T]
    return marginal_relative_entropies(reference, model, grid_points, matched=matched)


def _pilot_relative_entropies(rom: LangevinResult, data: StudyData, grid_points: int) -> np.ndarray:
    """``(1 + CHECK_BATCHES,)``: the mean of :func:`rom_relative_entropies` against the training data over all the
    particles, then over each of :data:`CHECK_BATCHES` groups of them (every ``CHECK_BATCHES``-th particle; binned
    KDEs of the group and of the data, for the standard error alone); inf without samples."""
    train = data.train_density()
    values = [rom_relative_entropies(rom, data.zscore, train, grid_points)]
    reference = train if isinstance(train, list) else [binned_density(c) for c in np.asarray(train).T]
    for b in range(CHECK_BATCHES):
        group = rom._replace(samples=rom.samples[:, b::CHECK_BATCHES], alive=rom.alive[b::CHECK_BATCHES])
        values.append(rom_relative_entropies(group, data.zscore, reference, grid_points, binned=True))
    return np.asarray([math.inf if np.isnan(v).any() else float(np.mean(v)) for v in values])


def _difference_se(plain: np.ndarray, corrected: np.ndarray) -> float:
    """Standard error of the difference of two pilots' relative entropies from their groups' paired differences
    (:func:`_pilot_relative_entropies`' rows 1 on): their sd / sqrt(groups); inf where a group has none."""
    diff = corrected[1:] - plain[1:]
    return float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if np.isfinite(diff).all() else math.inf


def correction_check_stage(spec: Spec, out, key, part: Partition, data: StudyData, drifts, correction, upstream):
    """``(check, read from the cache)``: :class:`CorrectionCheck` of an applied ``correction`` of the posterior-mean
    score.  ``drifts``: the model's drift without and with it, two ``(drift_fn, drift_params)`` (:func:`model_drift`:
    the posterior-predictive mixture score, or the interpolant trained on each set of targets); ``upstream`` must
    name them (the posterior, and the networks' stage keys).  Both pilots run in Langevin time at the spec's ``dt``
    (a fitted mobility keeps ``dt`` x the drift's largest Jacobian eigenvalue, so the time stepping's error is the
    same), from the same starting particles with the same noise: at most :data:`CHECK_PARTICLES` particles, the
    spec's burn-in and 1/:data:`CHECK_FRACTION` of its sampling steps and thinning.  Each is judged by its
    marginals' relative entropy against the training data (the model's metric, which uses the held-out
    reference: not seen here), their difference with a standard error from :data:`CHECK_BATCHES` groups of the
    particles (:attr:`CorrectionCheck.kept`)."""
    lg = spec.langevin
    particles = min(lg.particles, CHECK_PARTICLES)
    thin = max(1, lg.thin // CHECK_FRACTION)
    steps = max(thin, lg.steps // CHECK_FRACTION // thin * thin)
    ckey = stage_key("correction_check", upstream, _checksum(correction_arrays(correction)),
                     spec.section_json("langevin"), spec.section_json("metrics"), particles, thin, steps, CHECK_BATCHES)
    cached = out.load_stage("correction_check", ckey, build=lambda a: CorrectionCheck(
        float(a["uncorrected"]), float(a["corrected"]), float(a["difference_se"]), tuple(int(v) for v in a["lost"]),
        particles, steps, float(a["seconds"])))
    if cached is not None:
        return cached, True
    start = time.perf_counter()
    x0, run_key = langevin_start(key, part, particles)
    results = []
    for drift_fn, drift_params in drifts:
        rom = simulate_langevin(run_key, drift_fn, drift_params, x0, lg.dt, steps, lg.burn_in, thin, lg.box)
        results.append((_pilot_relative_entropies(rom, data, spec.metrics.grid_points),
                        rom.escaped + rom.non_finite))
    (plain, plain_lost), (corrected, corrected_lost) = results
    check = CorrectionCheck(float(plain[0]), float(corrected[0]), _difference_se(plain, corrected),
                            (plain_lost, corrected_lost), particles, steps, time.perf_counter() - start)
    out.save_stage("correction_check", ckey, {"uncorrected": np.asarray(check.uncorrected),
                                              "corrected": np.asarray(check.corrected),
                                              "difference_se": np.asarray(check.difference_se),
                                              "lost": np.asarray(check.lost), "seconds": np.asarray(check.seconds)})
    return check, False


# training snapshots the interpolant learns an applied correction at, at least: its bumps can be narrower than the
# cells' spacing (Kuramoto-Sivashinsky D = 4, 2,000 bumps: model relative entropy 0.0104 trained at the cells alone,
# 0.000495 with 20,000 snapshots; uncorrected 0.0047)
CORRECTED_SNAPSHOTS = 20_000


def interpolant_training_set(spec: Spec, part: Partition, summary: ScoreSummary, draws, z, correction=None,
                             scores: SnapshotScores | None = None):
    """``(points, targets, weights)``: the cell centres with the posterior-mean score (``summary.mean``,
    corrected where there is a ``correction``, an applied one), weighted by their counts, and ``[interpolant]
    snapshots`` training snapshots (:data:`CORRECTED_SNAPSHOTS` at least with a ``correction``) with the
    posterior-mean score there (closed form over the same draws, plus the correction; from ``scores`` where
    given: :class:`SnapshotScores` of the same draws and ``z``), each snapshot's weight ``1 / snapshots``: cells
    and snapshots carry half the loss each, both estimates of the mean squared error over the data."""
    counts = np.asarray(part.counts, np.float64)
    z = np.asarray(z)
    rows = interpolant_snapshot_rows(
        len(z), max(spec.interpolant.snapshots, 0 if correction is None else CORRECTED_SNAPSHOTS))
    if len(rows) == 0:
        return part.points, summary.mean, part.counts
    snaps = z[rows]
    targets = (SnapshotScores(draws, z) if scores is None else scores)[rows]
    if correction is not None:
        targets = targets + correction(snaps)
    return (np.concatenate([part.points, snaps]), np.concatenate([summary.mean, targets]),
            np.concatenate([counts / counts.sum(), np.full(len(snaps), 1.0 / len(snaps))]))


def interpolant_stage(spec: Spec, out, key, part: Partition, summary: ScoreSummary, upstream, progress,
                      draws, z, correction=None, scores: SnapshotScores | None = None):
    """``(interpolant, stage key, read from the cache, seconds)``: the network fitted to the posterior-mean score
    at the cell centres and (``[interpolant] snapshots``) at training snapshots ``z`` (``draws``: the
    posterior draws the summary came from); ``seconds``: the training's, kept with the cache entry, so a run that
    reads it back reports the run which computed it (``None`` for entries written before it was kept)."""
    ikey = stage_key("interpolant", upstream, spec.section_json("interpolant", "score"))
    cached = out.load_stage("interpolant", ikey, build=lambda a: (
        interpolant_from_arrays(a), float(a["wall_time"]) if "wall_time" in a else None))
    if cached is not None:
        return cached[0], ikey, True, cached[1]
    start = time.perf_counter()
    itp = spec.interpolant
    points, targets, weights = interpolant_training_set(spec, part, summary, draws, z, correction, scores)
    interp = fit_interpolant(key, points, targets, weights, itp.hidden, itp.steps, itp.learning_rate,
                             progress=progress, batch=itp.batch if len(points) > len(part.points) else 0)
    seconds = time.perf_counter() - start
    out.save_stage("interpolant", ikey, {**interpolant_arrays(interp), "wall_time": np.asarray(seconds)})
    return interp, ikey, False, seconds


# ---------------------------------------------------------------- Langevin model
class LangevinStage(NamedTuple):
    rom: LangevinResult
    stiffness: float  # dt x max |eigenvalue of the drift Jacobian| at the cells
    cached: bool
    dt: float  # the run's schedule: the spec's, or rom_schedule's with a fitted mobility
    thin: int
    steps: int


def _langevin_from_arrays(cached) -> LangevinResult:
    return LangevinResult(samples=cached["samples"], alive=cached["alive"], escaped=int(cached["escaped"]),
                          non_finite=int(cached["non_finite"]), wall_time=float(cached["wall_time"]))


def model_drift(spec: Spec, interp, draws, correction=None):
    """``(drift_fn, drift_params)`` of the reduced-order model: the interpolant or the
    posterior-predictive mixture score (``[langevin] drift``), the latter plus ``correction`` where it is applied
    (the interpolant learnt it: :func:`interpolant_training_set`)."""
    if spec.langevin.drift == "interpolant":
        return interp.apply_fn(), interp.params
    return corrected_drift(*predictive_drift(draws, count=spec.langevin.mixture_draws), correction)


def langevin_stage(spec: Spec, out, key, part: Partition, interp, draws, upstream, progress,
                   dynamics=None, particles=None, subsample: int = 1, correction=None) -> LangevinStage:
    """The reduced-order model ``dx = s(x) dt + sqrt(2) dW``, its drift the interpolant or the
    posterior-predictive mixture score (``[langevin] drift``); with ``dynamics``
    (:class:`kgmm_bayes.study.dynamics.Dynamics`) ``dx = Phi s dt + Sigma dW`` in the data's time,
    a snapshot every data interval (:func:`kgmm_bayes.study.dynamics.rom_schedule`).  A pilot run:
    ``particles``, the first this many of the run's starting particles, and ``subsample`` snapshots per
    data interval where the schedule's steps allow (the stage's ``thin`` is then the snapshots')."""
    lg = spec.langevin
    particles = lg.particles if particles is None else int(particles)
    drift_fn, drift_params = model_drift(spec, interp, draws, correction)
    dt, thin, steps, mobility = lg.dt, lg.thin, lg.steps, None
    if dynamics is None:
        stiffness = lg.dt * max_jacobian_eigenvalue(drift_fn, drift_params, part.points)
    else:
        dt, thin, steps, stiffness = rom_schedule(lg, dynamics.interval, dynamics.phi, drift_fn, drift_params,
                                                  part.points, min_rows=2 * len(dynamics.lags))
        mobility = dynamics.phi
        thin = max(1, thin // max(1, int(subsample)))  # steps stays a multiple of it only if it divides thin
        steps = steps // thin * thin
    if stiffness > STIFFNESS_LIMIT:
        warnings.warn(f"langevin: dt x max |eigenvalue of the drift Jacobian| = {stiffness:.2f} at the data "
                      "(Euler-Maruyama is unstable above 2): lower [langevin] dt", RuntimeWarning, stacklevel=3)
    lkey = stage_key("langevin", upstream, spec.section_json("langevin"),
                     "" if mobility is None else np.asarray(mobility, np.float64).tobytes().hex(), dt, thin, steps,
                     *(() if particles == lg.particles else (particles,)))
    cached = out.load_stage("langevin", lkey, build=_langevin_from_arrays)
    if cached is not None:
        return LangevinStage(cached, stiffness, True, dt, thin, steps)
    x0, run_key = langevin_start(key, part, lg.particles)
    x0 = x0[:particles]
    rom = simulate_langevin(run_key, drift_fn, drift_params, x0, dt, steps, lg.burn_in, thin, lg.box,
                            progress=progress, mobility=mobility)
    out.save_stage("langevin", lkey, rom._asdict())
    return LangevinStage(rom, stiffness, False, dt, thin, steps)
