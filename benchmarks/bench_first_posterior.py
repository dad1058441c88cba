"""The coarsening's first posterior: NUTS against its Laplace approximation (``[sampler] first_posterior``), each way
in a fresh process.

For one study (a spec file or a shipped study's name; its data, partition, key and coarsening), each process runs
``kgmm_bayes.study.stages.sample_posterior`` as a study does, with the compilation cache off, its spec's
``first_posterior`` set to the way measured.  The first posterior gives the standard posterior's score variance
``v`` (which sets ``zeta``), the score-matching gap and, where a second posterior is sampled, the model's drift;
NUTS then samples the posterior kept.  Reported per way: the whole coarsening's wall time (error terms, both
posteriors, gaps; MAP searches and compilation included, as a study pays them), the first posterior's wall time,
``v`` and its ratio to NUTS's, ``zeta``, and the posterior kept: NUTS's gradients over both posteriors, min bulk
ESS of the label-invariant probes, r_hat within the modes its chains settled in; the last column is the NUTS way's
coarsening wall time over this way's.  The model's accuracy is not measured here: run the study both ways
(``kgmm-bayes run``) for that.

    python benchmarks/bench_first_posterior.py four_well_2d      # about 3 minutes
    python benchmarks/bench_first_posterior.py lorenz63          # about 8 minutes

``--settings``: TOML overriding the study's sections (``\\n`` for newlines).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WAYS = ("nuts", "laplace")


def one_way(spec_name: str, way: str, settings: str = "") -> dict:
    """The coarsening's figures with the first posterior sampled ``way``."""
    import kgmm_bayes  # noqa: F401  (float64 on, host devices)
    import numpy as np
    import tomllib

    from bench_reproducibility import study_partition
    from kgmm_bayes.bayes.diagnostics import convergence_summary, independent_starts, to_inference_data
    from kgmm_bayes.spec import load_spec
    from kgmm_bayes.study import stages

    spec = load_spec(spec_name, tomllib.loads(settings.replace("\\n", "\n")) if settings else None)
    spec = spec._replace(sampler=spec.sampler._replace(first_posterior=way))
    data, z, part = study_partition(spec)
    mcmc_key = stages.study_keys(spec.study.seed)[3]  # (data, reference, partition, mcmc, ...)
    runs = []  # (kind, seconds, posterior) of every posterior sampled, in order

    def timed(kind, sample):
        def wrapped(*args, **kwargs):
            start = time.perf_counter()
            post = sample(*args, **kwargs)
            runs.append((kind, time.perf_counter() - start, post))
            return post
        return wrapped

    originals = stages.run_nuts, stages.laplace_posterior
    stages.run_nuts, stages.laplace_posterior = timed("nuts", originals[0]), timed("laplace", originals[1])
    start = time.perf_counter()
    try:
        post, coarsening = stages.sample_posterior(spec, mcmc_key, part, z)
    finally:
        stages.run_nuts, stages.laplace_posterior = originals
    wall = time.perf_counter() - start
    idata = to_inference_data(post, data.zscore, part.points, part.counts, point_covariances=part.cell_covariances,
                              log_likelihood=spec.partition.coreset, likelihood_power=coarsening.zeta)  # as a study
    summary = convergence_summary(idata, spec.score.band, independent_starts(post))
    return {"wall": wall, "first": runs[0][1], "posteriors": len(runs), "v": coarsening.posterior_variance,
            "zeta": coarsening.zeta, "gradients": int(sum(np.sum(p.sample_stats["num_steps"]) for _, _, p in runs)),
            "min_ess": summary["min_ess_bulk"], "r_hat": summary.get("max_mode_r_hat", summary["max_r_hat"])}


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
            sys.exit(f"bench_first_posterior: the {way} run failed: {out.stderr.strip().splitlines()[-1:]}")
        results[way] = json.loads(lines[-1][len("RESULT "):])
    base = results["nuts"]
    print(f"the coarsening of {args.spec}, its first posterior each way (fresh process each, compilation cache off)")
    print("| first posterior | coarsening s | first s | posteriors | v | v / NUTS's | zeta | NUTS gradients | min ESS "
          "| r_hat within modes | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for way, r in results.items():
        r_hat = "n/a" if r["r_hat"] is None else f"{r['r_hat']:.4f}"
        print(f"| {way} | {r['wall']:.1f} | {r['first']:.1f} | {r['posteriors']} | {r['v']:.4g} | "
              f"{r['v'] / base['v']:.3f} | {r['zeta']:.4f} | {r['gradients']:,} | {r['min_ess']:.0f} | {r_hat} | "
              f"{base['wall'] / r['wall']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
