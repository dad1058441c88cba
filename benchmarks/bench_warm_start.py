"""The coarsening's second posterior: started cold (its own MAP searches, Laplace metric) against started warm
(where the first posterior ended), each in a fresh process.

For one study (a spec file or a shipped study's name; its data, partition, key and coarsening), each process
runs ``kgmm_bayes.study.stages.sample_posterior`` as a study does, with the compilation cache off: the
first posterior, its error terms and gap, then the second posterior either way.  Only the second is compared
(the first is the same run in both; the model's drift comes from it, so the model does not change).
Reported per way: the second posterior's wall time (its MAP searches and compilation included, as a study
pays them), mean leapfrog steps per iteration, gradients of its sampling phase, divergences, min bulk ESS of
the label-invariant probes, worst r_hat, ESS per second, and ESS per second over the cold way's; "warm start
used" says whether the sampler took it (it ignores it with the Laplace metric, fixed or whitened).  A study
whose coarsening samples one posterior has nothing to compare and says so.

    python benchmarks/bench_warm_start.py four_well_2d      # about 2 minutes
    python benchmarks/bench_warm_start.py lorenz63          # about 11 minutes

``--settings``: TOML overriding the study's sections (``\\n`` for newlines).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WAYS = ("cold", "warm")


def one_way(spec_name: str, way: str, settings: str = "") -> dict:
    """The second posterior's figures, started ``way``; ``{}`` when the study samples one posterior."""
    import kgmm_bayes  # noqa: F401  (float64 on, host devices)
    import numpy as np

    import tomllib

    from bench_reproducibility import study_partition
    from kgmm_bayes.spec import load_spec
    from kgmm_bayes.bayes.diagnostics import convergence_summary, independent_starts, to_inference_data
    from kgmm_bayes.study import stages

    spec = load_spec(spec_name, tomllib.loads(settings.replace("\\n", "\n")) if settings else None)
    data, z, part = study_partition(spec)
    mcmc_key = stages.study_keys(spec.study.seed)[3]  # (data, reference, partition, mcmc, ...)
    run_nuts, seconds = stages.run_nuts, []

    def timed(*args, warm=None, **kwargs):
        start = time.perf_counter()
        post = run_nuts(*args, warm=warm if way == "warm" else None, **kwargs)
        seconds.append((warm is not None, time.perf_counter() - start, post))
        return post

    stages.run_nuts = timed
    try:
        stages.sample_posterior(spec, mcmc_key, part, z)
    finally:
        stages.run_nuts = run_nuts
    second = [(s, p) for after, s, p in seconds if after]
    if not second:
        return {}
    wall, post = second[0]
    idata = to_inference_data(post, data.zscore, part.points, part.counts, point_covariances=part.cell_covariances)
    summary = convergence_summary(idata, spec.score.band, independent_starts(post))
    return {"wall": wall, "steps": float(np.mean(post.sample_stats["num_steps"])),
            "gradients": int(np.sum(post.sample_stats["num_steps"])), "divergences": summary["divergences"],
            "min_ess": summary["min_ess_bulk"], "r_hat": summary["max_r_hat"],
            "warm": "warm_start" in post.sample_stats}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default="four_well_2d", help="spec file or shipped study name")
    parser.add_argument("--settings", default="", help="spec sections overriding the study's (TOML, \\n)")
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # one process's way (internal)
    args = parser.parse_args(argv)
    if args.way:
        print("RESULT " + json.dumps(one_way(args.spec, args.way, args.settings)))
        return 0
    env = dict(os.environ, KGMM_BAYES_COMPILATION_CACHE="off")
    results = {}
    for way in WAYS:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), args.spec, "--way", way, "--settings",
                              args.settings], env=env, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            sys.exit(f"bench_warm_start: the {way} run failed: {out.stderr.strip().splitlines()[-1:]}")
        results[way] = json.loads(lines[-1][len("RESULT "):])
    if not results["cold"]:
        print(f"{args.spec}: its coarsening samples one posterior; no second posterior to start warm")
        return 0
    base = results["cold"]["min_ess"] / results["cold"]["wall"]
    print(f"second posterior of {args.spec} (fresh process each, compilation cache off)")
    print("| start | warm start used | wall s | steps/iteration | gradients | divergences | min ESS | r_hat | ESS/s "
          "| ESS/s ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for way, r in results.items():
        rate = r["min_ess"] / r["wall"]
        print(f"| {way} | {'yes' if r['warm'] else 'no'} | {r['wall']:.1f} | {r['steps']:.1f} | {r['gradients']:,} | {r['divergences']} | {r['min_ess']:.0f} "
              f"| {r['r_hat']:.4f} | {rate:.2f} | {rate / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
