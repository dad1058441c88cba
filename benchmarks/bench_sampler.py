"""NUTS on mixtures: the straightforward model against this project's sampler, same run.

Straightforward model (how users write it today, per the issue "Fast posterior sampling"):
Dirichlet(1) weights, means ~ MVN(K-means centroid, 0.1 I), HalfCauchy(1) x LKJ(1) covariances,
``MixtureSameFamily`` likelihood on every snapshot, numpyro's default ``init_to_uniform``.

This project: the Bayesian KGMM sampler as run by a study: bisecting K-means partition,
cell-moment coreset likelihood as one dense matrix product, the study's default priors
(Dirichlet(5), means ~ N(centroid, (0.25 spread)^2)), chains started at the best MAP search.

Both run the same number of chains on the same z-scored data, using both cores: the
straightforward model's chains one after another (numpyro's default without
``set_host_device_count``), each spread over the cores by XLA; ours in parallel, one per device.  Reported per sampler: wall
time (compilation included, as a user waits for it), leapfrog steps (gradient evaluations) of
the sampling phase, mean steps per iteration, divergences, min bulk ESS of the
label-invariant probes (log density and score at fixed probe points, sorted weights), ESS
per second, and the ratio of ESS/s to the straightforward model's.

    python benchmarks/bench_sampler.py                       # both cases
    python benchmarks/bench_sampler.py --case four_well --snapshots 2000 --components 8  # minutes

``--metric-studies``: the NUTS metric and likelihood instead, on shipped studies (or spec files).  For
each study: its data, partition, priors and sampler settings, and the ``zeta`` its coarsening would
sample at first (the error terms; 1 where it would first sample the standard posterior; ``--zeta`` sets
it, e.g. to the zeta a study's metrics.json reports); then the same run (same key) several ways
(``--variants``): 0, the oldest default (a diagonal metric adapted from the Laplace variances at the
best of the Adam MAP searches, the partition's cells); 1, the same with each MAP search polished by
L-BFGS; 2, the dense metric on the cells; 3, the diagonal metric on the merged cells
``kgmm_bayes.bayes.coreset`` chooses (the default before the dense metric); 4, the dense metric on the
merged cells (from the Laplace covariance at the polished MAP, adapted by numpyro; Laplace-whitened
coordinates with a diagonal adapted there beyond 100 parameters), ``metric = "auto"``'s choice up to
50 parameters; 5, the Laplace covariance kept fixed; 6, the default (``metric = "auto"``, merged cells, the
likelihood in float32 where its gap allows: ``likelihood_precision = "auto"``); 7, the same in float64.  The
metric NUTS ran in is printed in brackets (``resolved_metric``), the likelihood's precision after its cells.  Reported per row: wall (MAP search, compilation and every chain), leapfrog
steps of the sampling phase, steps per iteration, min label-invariant ESS, ESS/s, and ESS/s over the
first row's.  The first row of a process also pays the process's one-time compilations.

    python benchmarks/bench_sampler.py --metric-studies reduced_1d lorenz63

``--chain-methods parallel vectorized``: each variant with each way of running the chains.  On this project's
2-core CPU machine (December 2026), Lorenz-63's first posterior (variant 3, zeta 0.937, 16 chains, 2,000 cells):
rounds of two parallel chains 243.6 s (133 steps per iteration); all 16 vectorised still running at 450 s
(stopped): in lockstep every iteration costs the longest chain's trajectory.
"""
from __future__ import annotations

import argparse
import time
import warnings

import kgmm_bayes  # noqa: F401
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS
from sklearn.cluster import KMeans

from kgmm_bayes.data import systems
from kgmm_bayes.data import ZScore
from kgmm_bayes.bayes.diagnostics import convergence_summary, probe_points, to_inference_data
from kgmm_bayes.bayes.mixture import cov_cholesky
from kgmm_bayes.partition import fit_partition
from kgmm_bayes.spec import MixtureSection
from kgmm_bayes.bayes.sampler import PosteriorSamples, SamplerConfig, build_prior, initial_values, run_nuts

CASES = {
    # name: (system, snapshots, components)
    "four_well": ("four_well_2d", 20_000, 16),
    "reduced_1d": ("reduced_1d", 50_000, 10),
}


def straightforward_model(x, centroids):
    k, d = centroids.shape
    weights = numpyro.sample("weights", dist.Dirichlet(jnp.ones(k)))
    means = numpyro.sample("means", dist.MultivariateNormal(centroids, 0.1 * jnp.eye(d)).to_event(1))
    scales = numpyro.sample("scales", dist.HalfCauchy(jnp.ones((k, d))).to_event(2))
    if d > 1:
        corr_chol = numpyro.sample("corr_chol", dist.LKJCholesky(d, 1.0).expand([k]).to_event(1))
    else:
        corr_chol = jnp.ones((k, 1, 1))
    cov_chol = numpyro.deterministic("cov_chol", cov_cholesky(scales, corr_chol))
    numpyro.sample("obs", dist.MixtureSameFamily(dist.Categorical(probs=weights),
                                                 dist.MultivariateNormal(means, scale_tril=cov_chol)), obs=x)


def run_straightforward(key, z, k, chains, warmup, draws):
    centroids = KMeans(n_clusters=k, n_init=1, random_state=0).fit(z).cluster_centers_
    # Sequential chains, as numpyro runs them for a user who has not set a host device count;
    # XLA then spreads each chain's batched triangular solves over all cores.  (Parallel chains
    # deadlock here: each device's LAPACK trsm over the N points waits, inside XLA's intra-op
    # pool, for helper tasks that the other device's trsm keeps from running, a jaxlib bug.)
    mcmc = MCMC(NUTS(straightforward_model), num_warmup=warmup, num_samples=draws, num_chains=chains,
                chain_method="sequential", progress_bar=False)
    start = time.perf_counter()
    mcmc.run(key, jnp.asarray(z), jnp.asarray(centroids), extra_fields=("diverging", "num_steps", "accept_prob",
                                                                          "energy", "potential_energy"))
    samples = {n: np.asarray(v) for n, v in mcmc.get_samples(group_by_chain=True).items()}
    wall = time.perf_counter() - start
    stats = {n: np.asarray(v) for n, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    stats["tree_depth"] = np.ceil(np.log2(stats["num_steps"] + 1.0)).astype(np.int64)
    return PosteriorSamples(samples["weights"], samples["means"], samples["cov_chol"], samples, stats, wall)


def summarise(label, post, zs, probes, points, counts, zeta=1.0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conv = convergence_summary(to_inference_data(post, zs, points, counts, probes=probes, likelihood_power=zeta))
    steps = post.sample_stats["num_steps"]
    ess = conv["min_ess_bulk"]
    draws = post.weights.shape[0] * post.weights.shape[1]
    return dict(sampler=label, wall_s=post.wall_time, grads=int(steps.sum()), steps_per_iter=float(steps.mean()),
                divergences=conv["divergences"], min_ess=ess, r_hat=conv["max_r_hat"],
                mode_r_hat=conv.get("max_mode_r_hat") or conv["max_r_hat"],
                ess_per_s=ess / post.wall_time, best_ess_per_s=max(ess, draws) / post.wall_time)


COLUMNS = ("case", "N", "K", "D", "sampler", "iterations", "wall_s", "grads", "steps/iter", "divergences",
           "min_ess", "r_hat", "ess/s", "best-case ess/s", "ratio", "ratio vs best case")


def print_row(case, n, k, d, iterations, r, baseline):
    """One table row; ratios are ESS/s over the straightforward model's measured ESS/s, and over its
    best case: every one of its draws independent, ESS/s = draws / wall (what a longer run could reach
    at most), which keeps the ratio honest when a baseline run is too short for a reliable ESS."""
    ratio = r["ess_per_s"] / baseline["ess_per_s"] if baseline else float("nan")
    ratio_best = r["ess_per_s"] / baseline["best_ess_per_s"] if baseline else float("nan")
    print(f"| {case} | {n} | {k} | {d} | {r['sampler']} | {iterations}+{iterations} | {r['wall_s']:.1f} | "
          f"{r['grads']} | {r['steps_per_iter']:.0f} | {r['divergences']} | {r['min_ess']:.0f} | {r['r_hat']:.3f} | "
          f"{r['ess_per_s']:.3f} | {r['best_ess_per_s']:.3f} | {ratio:.1f} | {ratio_best:.1f} |", flush=True)


POLISH = SamplerConfig().map_polish
VARIANTS = (  # (label, [sampler] metric, L-BFGS iterations after the MAP search's Adam steps, likelihood:
    # "cells" = the partition's cells, "auto" = the merge kgmm_bayes.bayes.coreset chooses; its precision)
    ("diagonal, Adam MAP, cells (oldest default)", "diagonal", 0, "cells", "float64"),
    ("diagonal, polished MAP, cells (default before the merge)", "diagonal", POLISH, "cells", "float64"),
    ("dense, polished MAP, cells", "dense", POLISH, "cells", "float64"),
    ("diagonal, polished MAP, merged cells (default before the dense metric)", "diagonal", POLISH, "auto", "float64"),
    ("dense, polished MAP, merged cells (\"auto\" up to 50 parameters)", "dense", POLISH, "auto", "float64"),
    ("Laplace covariance fixed, polished MAP, merged cells", "laplace", POLISH, "auto", "float64"),
    ("auto metric, merged cells, float32 where its gap allows (the default)", "auto", POLISH, "auto", "auto"),
    ("auto metric, merged cells, float64 (the default before float32)", "auto", POLISH, "auto", "float64"),
)
METRIC_COLUMNS = ("study", "N", "K", "D", "zeta", "metric", "chains x (warmup+draws)", "likelihood cells (gap sd)",
                  "wall_s", "grads", "steps/iter", "divergences", "min_ess", "r_hat", "r_hat within modes", "ess/s",
                  "ratio")


def metric_studies(args):
    """One row per (study, metric): the study's own posterior, diagonal against dense metric."""
    from bench_reproducibility import spec_with, study_partition

    from kgmm_bayes.bayes.coarsening import error_terms, needs_variance, zeta_from_alpha, zeta_without_variance
    from kgmm_bayes.study.stages import coarsening_seed

    print(f"device: {jax.devices()[0].device_kind} x {jax.local_device_count()}")
    print("| " + " | ".join(METRIC_COLUMNS) + " |")
    print("|" + "---|" * len(METRIC_COLUMNS), flush=True)
    for name in args.metric_studies:
        spec = spec_with(name, {"data": {"members": args.members}, "sampler": {"warmup": args.warmup,
                                                                               "draws": args.draws}})
        _, z, part = study_partition(spec)
        m, k = spec.mixture, spec.mixture.components
        zeta = 1.0
        if args.zeta is not None:
            zeta = args.zeta
        elif m.coarsening == "auto":
            terms = error_terms(z, k, part.points, part.counts, seed=coarsening_seed())
            zeta = 1.0 if needs_variance(terms, m.coarsening_bound == "score_matching") else zeta_without_variance(terms)
        elif m.coarsening != "off":
            zeta = zeta_from_alpha(float(m.coarsening), len(z))
        prior = build_prior(part, m.dirichlet_alpha, m.mean_scale, m.scale_prior, m.lkj_eta)
        zs = ZScore(np.zeros(z.shape[1]), np.ones(z.shape[1]))
        probes = probe_points(part.points, part.counts)
        base = None
        for (metric, kind, polish, likelihood, precision), method, depth in [
                (VARIANTS[i], c, t) for i in args.variants for c in args.chain_methods for t in args.max_tree_depths]:
            config = SamplerConfig(**spec.sampler._asdict())._replace(
                metric=kind, dense_mass=False, map_polish=polish, chain_method=method,
                likelihood_cells=len(part.points) if likelihood == "cells" else likelihood,
                likelihood_precision=precision)
            if depth is not None:
                config = config._replace(max_tree_depth=depth)
            if len(args.chain_methods) > 1:
                metric = f"{metric}, chains {method}"
            if len(args.max_tree_depths) > 1:
                metric = f"{metric}, max tree depth {config.max_tree_depth}"
            post = run_nuts(jax.random.key(args.seed), part.points, part.counts * zeta, prior, initial_values(part),
                            config, point_covariances=part.cell_covariances)
            r = summarise(metric, post, zs, probes, part.points, part.counts, zeta)
            base = base or r
            stats = post.sample_stats
            cells = (f"{int(stats['likelihood_cells'])} ({np.std(stats['likelihood_gap']):.3f})"
                     if "likelihood_cells" in stats else f"{len(part.points)} (cells)")
            cells += f" {stats['likelihood_precision']}"
            print(f"| {spec.study.name} | {len(z)} | {k} | {z.shape[1]} | {zeta:.3f} | {metric} [{stats['metric']}] | "
                  f"{config.chains} x ({config.warmup}+{config.draws}) | {cells} | {r['wall_s']:.1f} | {r['grads']} | "
                  f"{r['steps_per_iter']:.1f} | {r['divergences']} | {r['min_ess']:.0f} | {r['r_hat']:.3f} | "
                  f"{r['mode_r_hat']:.3f} | {r['ess_per_s']:.1f} | {r['ess_per_s'] / base['ess_per_s']:.2f} |", flush=True)


def main(args):
    if args.metric_studies:
        return metric_studies(args)
    print(f"device: {jax.devices()[0].device_kind} x {jax.local_device_count()}, chains {args.chains}")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS), flush=True)
    for case in args.case:
        system, n, k = CASES[case]
        n = args.snapshots or n
        k = args.components or k
        sysm = systems.get_system(system)
        keys = jax.random.split(jax.random.key(args.seed), 4)
        members = 100
        steps = n // members * sysm.thin
        x = systems.simulate(keys[0], sysm, members=members, steps=steps).reshape(-1, sysm.dim).astype(np.float64)
        zs = ZScore.fit(x)
        z = zs.forward(x)
        part = fit_partition(keys[1], z, min(2000, n // 2), k)
        probes = probe_points(part.points, part.counts)

        base = run_straightforward(keys[2], z, k, args.chains, args.baseline_iterations, args.baseline_iterations)
        baseline = summarise("straightforward", base, zs, probes, part.points, part.counts)
        print_row(case, n, k, sysm.dim, args.baseline_iterations, baseline, baseline)

        m = MixtureSection()  # the study defaults
        prior = build_prior(part, m.dirichlet_alpha, m.mean_scale, m.scale_prior, m.lkj_eta)
        ours = run_nuts(keys[3], part.points, part.counts, prior, initial_values(part),
                        SamplerConfig(chains=args.chains, warmup=args.iterations, draws=args.iterations),
                        point_covariances=part.cell_covariances)
        print_row(case, n, k, sysm.dim, args.iterations,
                  summarise("kgmm_bayes", ours, zs, probes, part.points, part.counts), baseline)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=500, help="warmup = draws for kgmm_bayes")
    parser.add_argument("--baseline-iterations", type=int, default=500, help="warmup = draws, straightforward")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--snapshots", type=int, default=None, help="override N (e.g. 2000 for a quick run)")
    parser.add_argument("--components", type=int, default=None, help="override K")
    parser.add_argument("--metric-studies", nargs="+", default=None,
                        help="old and new sampler defaults and the dense metric on these studies' posteriors")
    parser.add_argument("--members", type=int, default=None, help="--metric-studies: fewer members (built-in systems)")
    parser.add_argument("--variants", type=int, nargs="+", default=[3, 4],
                        help="--metric-studies: which rows (0 oldest default, 1 cells before the merge, 2 dense metric on "
                             "the cells, 3 merged cells with the diagonal metric, the default before the dense metric, "
                             "4 merged cells with the dense metric (whitened beyond 100 parameters), the default up to "
                             "50, 5 the Laplace covariance fixed, 6 the default: auto metric, merged cells, float32 "
                             "where its gap allows, 7 the same in float64)")
    parser.add_argument("--zeta", type=float, default=None,
                        help="--metric-studies: sample likelihood^zeta at this zeta (a study's coarsening, from its "
                             "metrics.json) instead of the error terms' first choice")
    parser.add_argument("--chain-methods", nargs="+", default=["auto"],
                        choices=("auto", "parallel", "vectorized", "sequential"),
                        help="--metric-studies: each variant with each of these chain methods (sampler.chain_plan; "
                             "auto on CPU: rounds of one chain per device, in parallel)")
    parser.add_argument("--max-tree-depths", type=int, nargs="+", default=[None],
                        help="--metric-studies: each variant with each of these NUTS tree depth caps ([sampler] "
                             "max_tree_depth; default the spec's)")
    parser.add_argument("--warmup", type=int, default=None, help="--metric-studies: override [sampler] warmup")
    parser.add_argument("--draws", type=int, default=None, help="--metric-studies: override [sampler] draws")
    main(parser.parse_args())
