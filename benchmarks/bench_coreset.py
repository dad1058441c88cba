"""How far is the coreset posterior from the full-data posterior?

Same data, same partition, same priors, same sampler settings; two likelihoods:

* ``full``: every z-scored snapshot, unit counts (``[partition] coreset = false``);
* ``coreset``: the M fine cells, counts as weights, each cell through its mean and
  within-cell covariance (the default).

At the score-target points it reports the posterior-mean score difference in units of the
full-data posterior standard deviation (density-weighted median and 90th percentile over
points and coordinates), the ratio of posterior standard deviations (coreset / full), the
relative score error of each against the analytic score, and wall times.

    python benchmarks/bench_coreset.py --system reduced_1d
"""
from __future__ import annotations

import argparse

import kgmm_bayes  # noqa: F401
import jax
import numpy as np

from kgmm_bayes.data import systems
from kgmm_bayes.data import ZScore
from kgmm_bayes.metrics import weighted_score_error
from kgmm_bayes.partition import fit_partition
from kgmm_bayes.bayes.score import thin_draws
from kgmm_bayes.bayes.sampler import SamplerConfig, build_prior, initial_values, run_nuts
from kgmm_bayes.bayes.score import score_draws, summarize_scores
from kgmm_bayes.spec import MixtureSection

COMPONENTS = {"reduced_1d": 10, "four_well_2d": 16, "lorenz63": 32}


def weighted_quantile(values, weights, q):
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, q * cum[-1])])


def main(args):
    sysm = systems.get_system(args.system)
    keys = jax.random.split(jax.random.key(args.seed), 4)
    x = systems.simulate(keys[0], sysm, members=args.members).reshape(-1, sysm.dim).astype(np.float64)
    zs = ZScore.fit(x)
    z = zs.forward(x)
    k = COMPONENTS[args.system]
    part = fit_partition(keys[1], z, args.cells, k)
    m = MixtureSection()  # the study defaults
    prior = build_prior(part, m.dirichlet_alpha, m.mean_scale, m.scale_prior, m.lkj_eta)
    # the partition's cells themselves (not the merge of them a study may sample: kgmm_bayes.bayes.coreset)
    config = SamplerConfig(chains=args.chains, warmup=args.iterations, draws=args.iterations,
                           likelihood_cells=len(part.points))
    results = {}
    for label, (points, counts, covs) in {
        "coreset": (part.points, part.counts, part.cell_covariances),
        "full": (z, np.ones(len(z)), None),
    }.items():
        post = run_nuts(keys[2], points, counts, prior, initial_values(part), config, point_covariances=covs)
        scores, logps = score_draws(*thin_draws(post, 1000), part.points)
        results[label] = (post, summarize_scores(scores, logps, 0.9))
    full, core = results["full"][1], results["coreset"][1]
    w = np.repeat(part.counts, sysm.dim)
    z_diff = (np.abs(core.mean - full.mean) / full.std).ravel()
    sd_ratio = (core.std / full.std).ravel()
    print(f"system {args.system}: N = {len(z)}, cells = {len(part.points)}, K = {k}, "
          f"{args.chains} chains x ({args.iterations} + {args.iterations})")
    print("| quantity | value |")
    print("|---|---|")
    print(f"| wall s, full data | {results['full'][0].wall_time:.1f} |")
    print(f"| wall s, coreset | {results['coreset'][0].wall_time:.1f} |")
    print(f"| steps/iter full / coreset | {results['full'][0].sample_stats['num_steps'].mean():.0f} / "
          f"{results['coreset'][0].sample_stats['num_steps'].mean():.0f} |")
    print(f"| abs(mean difference) / full sd: weighted median | {weighted_quantile(z_diff, w, 0.5):.2f} |")
    print(f"| abs(mean difference) / full sd: weighted 90% | {weighted_quantile(z_diff, w, 0.9):.2f} |")
    print(f"| sd ratio coreset / full: weighted median | {weighted_quantile(sd_ratio, w, 0.5):.2f} |")
    if sysm.score is not None:
        truth = zs.score_to_zscored(np.asarray(sysm.score(zs.inverse(part.points))))
        print(f"| relative score error vs analytic, full | {weighted_score_error(full.mean, truth, part.counts):.4f} |")
        print(f"| relative score error vs analytic, coreset | {weighted_score_error(core.mean, truth, part.counts):.4f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=sorted(COMPONENTS), default="reduced_1d")
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=None, help="ensemble size (default: the system's)")
    main(parser.parse_args())
