"""The coarsening's second posterior: started cold (its own MAP searches, Laplace metric) against started warm
(where the first posterior ended), each in a fresh process.

For one study (a spec file or a shipped study's name; its data, partition, key and coarsening), each process
runs ``kgmm_bayes.study.stages.sample_posterior`` as a study does, with the compilation cache off: the
first posterior, its error terms and gap, then the second posterior either way.  Only the second is compared
(the first is the same run in both; the model's drift comes from it, so the model does not change).
Reported per way: the second posterior's wall time (its MAP searches and compilation included, as a study
pays them), mean leapfrog steps per iteration, gradients of its sampling phase, divergences, min bulk ESS of
the label-invariant probes, worst r_hat, ESS per second, and ESS per second over the cold way's; "warm start
used" says whether the sampler took it (it ignores it with the Laplace metric, fixed or whitened; a spec's
``[sampler] warm_start = false`` is overridden here, so that its study can be measured both ways).  A study
whose coarsening samples one posterior has nothing to compare and says so.

    python benchmarks/bench_warm_start.py four_well_2d      # about 2 minutes
    python benchmarks/bench_warm_start.py lorenz63          # about 11 minutes
    python benchmarks/bench_warm_start.py four_well_2d --keys 4 --warm-warmup 250   # about 12 minutes

``--settings``: TOML overriding the study's sections (``\\n`` for newlines).  ``--keys N``: NUTS keys 0..N-1
(key 0 the study's own, key k its ``fold_in(key, k)``, the key that key 0's second posterior also uses; their
targets differ, so their chains do not; the data and partition stay the study's), one row per key and way, then
per way the median wall, min ESS and ESS/s ratio, the worst r_hat (over all chains, and within the modes the chains
stacked in) and how many keys exceed r_hat 1.01.  ``--warm-warmup W``: a third way, warm with W warmup iterations
instead of the study's (the metric resolved at W, as a study with that warmup would).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WAYS = ("cold", "warm")


def one_way(spec_name: str, way: str, settings: str = "", key_index: int = 0) -> dict:
    """The second posterior's figures, started ``way`` ("cold", "warm" or "warm:W", warm with W warmup
    iterations), NUTS key ``key_index``; ``{}`` when the study samples one posterior."""
    import kgmm_bayes  # noqa: F401  (float64 on, host devices)
    import jax
    import numpy as np

    import tomllib

    from bench_reproducibility import study_partition
    from kgmm_bayes.spec import load_spec
    from kgmm_bayes.bayes.diagnostics import convergence_summary, independent_starts, to_inference_data
    from kgmm_bayes.study import stages

    spec = load_spec(spec_name, tomllib.loads(settings.replace("\\n", "\n")) if settings else None)
    # (a spec may turn it off; "cold" passes none); the warm start is from a NUTS first posterior
    spec = spec._replace(sampler=spec.sampler._replace(warm_start=True, first_posterior="nuts"))
    data, z, part = study_partition(spec)
    mcmc_key = stages.study_keys(spec.study.seed)[3]  # (data, reference, partition, mcmc, ...)
    if key_index:
        mcmc_key = jax.random.fold_in(mcmc_key, key_index)
    run_nuts, seconds = stages.run_nuts, []

    def timed(*args, warm=None, **kwargs):
        if warm is not None and way.startswith("warm:"):  # (key, points, counts, prior, init, config)
            args = args[:5] + (args[5]._replace(warmup=int(way[len("warm:"):])),) + args[6:]
        start = time.perf_counter()
        post = run_nuts(*args, warm=warm if way.startswith("warm") else None, **kwargs)
        seconds.append((warm is not None, time.perf_counter() - start, post))
        return post

    stages.run_nuts = timed
    try:
        _, coarsening = stages.sample_posterior(spec, mcmc_key, part, z)
    finally:
        stages.run_nuts = run_nuts
    second = [(s, p) for after, s, p in seconds if after]
    if not second:
        return {}
    wall, post = second[0]
    idata = to_inference_data(post, data.zscore, part.points, part.counts, point_covariances=part.cell_covariances,
                              log_likelihood=spec.partition.coreset, likelihood_power=coarsening.zeta)  # as a study
    summary = convergence_summary(idata, spec.score.band, independent_starts(post))
    return {"wall": wall, "steps": float(np.mean(post.sample_stats["num_steps"])),
            "gradients": int(np.sum(post.sample_stats["num_steps"])), "divergences": summary["divergences"],
            "min_ess": summary["min_ess_bulk"], "r_hat": summary["max_r_hat"], "mode_r_hat": summary.get("max_mode_r_hat"),
            "warm": "warm_start" in post.sample_stats}


def _worst(values):
    """The largest of the values that are known (None: none is)."""
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _r_hat(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default="four_well_2d", help="spec file or shipped study name")
    parser.add_argument("--settings", default="", help="spec sections overriding the study's (TOML, \\n)")
    parser.add_argument("--keys", type=int, default=1, help="NUTS keys 0..N-1 (default 1: the study's own)")
    parser.add_argument("--warm-warmup", type=int, help="also warm with this many warmup iterations")
    parser.add_argument("--way", help=argparse.SUPPRESS)  # one process's way (internal)
    parser.add_argument("--key-index", type=int, default=0, help=argparse.SUPPRESS)  # its key (internal)
    args = parser.parse_args(argv)
    if args.keys < 1 or (args.warm_warmup is not None and args.warm_warmup < 1):
        parser.error("--keys and --warm-warmup must be positive")
    if args.way:
        print("RESULT " + json.dumps(one_way(args.spec, args.way, args.settings, args.key_index)))
        return 0
    ways = WAYS + (() if args.warm_warmup is None else (f"warm:{args.warm_warmup}",))
    env = dict(os.environ, KGMM_BAYES_COMPILATION_CACHE="off")
    results = {}  # (key, way) -> figures
    for k in range(args.keys):
        for way in ways:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), args.spec, "--way", way, "--settings",
                                  args.settings, "--key-index", str(k)], env=env, capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode or not lines:
                sys.exit(f"bench_warm_start: the {way} run (key {k}) failed: {out.stderr.strip().splitlines()[-1:]}")
            results[k, way] = json.loads(lines[-1][len("RESULT "):])
            if not results[k, way]:  # the first posterior (its key's) asked for no second one
                break
        if not results[k, "cold"]:
            print(f"{args.spec}, key {k}: its coarsening samples one posterior; no second posterior to start warm")
            results = {kw: r for kw, r in results.items() if kw[0] != k}
    if not results:
        return 0
    keys = sorted({k for k, _ in results})
    print(f"second posterior of {args.spec} (fresh process each, compilation cache off)")
    print("| key | start | warm start used | wall s | steps/iteration | gradients | divergences | min ESS | r_hat "
          "| r_hat within modes | ESS/s | ESS/s ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = {way: [] for way in ways}
    for (k, way), r in results.items():
        rate = r["min_ess"] / r["wall"]
        ratios[way].append(rate / (results[k, "cold"]["min_ess"] / results[k, "cold"]["wall"]))
        print(f"| {k} | {way} | {'yes' if r['warm'] else 'no'} | {r['wall']:.1f} | {r['steps']:.1f} | "
              f"{r['gradients']:,} | {r['divergences']} | {r['min_ess']:.0f} | {r['r_hat']:.4f} | {_r_hat(r['mode_r_hat'])} "
              f"| {rate:.2f} | {ratios[way][-1]:.2f} |")
    if len(keys) > 1:
        print(f"\nover {len(keys)} keys")
        print("| start | median wall s | median min ESS | worst r_hat | keys with r_hat > 1.01 | worst r_hat within modes "
              "| median ESS/s ratio |")
        print("|---|---|---|---|---|---|---|")
        for way in ways:
            rows = [results[k, way] for k in keys]
            print(f"| {way} | {statistics.median(r['wall'] for r in rows):.1f} | "
                  f"{statistics.median(r['min_ess'] for r in rows):.0f} | {max(r['r_hat'] for r in rows):.4f} | "
                  f"{sum(r['r_hat'] > 1.01 for r in rows)} | {_r_hat(_worst(r['mode_r_hat'] for r in rows))} | "
                  f"{statistics.median(ratios[way]):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
