"""Is a study's posterior reproducible? The same data, NUTS run with different keys.

For one spec (a file or a shipped study's name), the data, partition and priors are those
of the study's seed; only the NUTS key changes (keys 0, 1, 2 by default).  Each run is
sampled as the study samples it (coarsening included), its chains grouped into modes and
stacked (``kgmm_bayes.bayes.stacking``), and the score band at the study's probe points
(the label-invariant probes of ``posterior.nc``) computed from the stacked draws.  With a Laplace posterior
(``[sampler] first_posterior``, ``kept_posterior``, ``--kept-posterior``) the key also changes its MAP searches and
its Gaussian draws.

The run is called reproducible when every pair of keys gives posterior-mean scores that
differ by less than a quarter of the band width at every probe point and coordinate
(the issue "Uncertainty a scientist can trust", item 3).  One row per key: wall time,
the kept posterior's leapfrog steps per iteration (its draws), its min bulk and tail ESS (label-invariant probes),
r_hat over all chains and within each mode, the modes and their weights; then the
largest difference over band width, with its key pair and probe.

    python benchmarks/bench_reproducibility.py lorenz63 --keys 0 1 2
"""
from __future__ import annotations

import argparse
import itertools
import time

import kgmm_bayes  # noqa: F401
import jax
import numpy as np

from kgmm_bayes.bayes.diagnostics import convergence_summary, independent_starts, probe_points, to_inference_data
from kgmm_bayes.bayes.score import score_draws, summarize_scores, thin_draws
from kgmm_bayes.bayes.stacking import REPRODUCIBLE_BAND_FRACTION as REPRODUCIBLE  # largest |mean_a - mean_b| / width
from kgmm_bayes.spec import load_spec
from kgmm_bayes.study.checks import check_sizes
from kgmm_bayes.study.stages import partition_stage, prepare_data, sample_posterior, stacked_weights, study_keys
from kgmm_bayes.study.outputs import stage_key


def _num(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


class _NoCache:
    def load_stage(self, stage, key, build=None):
        return None

    def save_stage(self, stage, key, arrays):
        pass


def spec_with(name, overrides: dict):
    """The spec (file or shipped study's name) with the ``overrides`` (section -> key -> value) that are
    not None."""
    overrides = {s: {k: v for k, v in d.items() if v is not None} for s, d in overrides.items()}
    return load_spec(name, overrides={s: d for s, d in overrides.items() if d})


def study_partition(spec):
    """The study's data (its seed's), z-scored training snapshots and partition, not cached."""
    seed = spec.study.seed
    data_key, reference_key, partition_key, *_ = study_keys(seed)
    data = prepare_data(spec, data_key, reference_key)
    cells = check_sizes(spec, len(data.train), data.train.shape[1])
    z = data.zscore.forward(data.train)
    part, _ = partition_stage(spec, _NoCache(), partition_key, z, cells, stage_key("bench", seed))
    return data, z, part


def run(spec, keys, save=None):
    data, z, part = study_partition(spec)
    probes = probe_points(part.points, part.counts)
    rows, summaries, saved = [], [], {}
    for key in keys:
        start = time.perf_counter()
        post, coarsening = sample_posterior(spec, jax.random.key(key), part, z)
        wall = time.perf_counter() - start
        idata = to_inference_data(post, data.zscore, part.points, part.counts, point_covariances=part.cell_covariances,
                                  likelihood_power=coarsening.zeta)
        conv = convergence_summary(idata, spec.score.band, independent_starts(post))
        stack_w = stacked_weights(conv)
        draws = thin_draws(post, spec.score.max_draws, chain_weights=stack_w)
        scores, logps = score_draws(*draws, probes)
        summaries.append(summarize_scores(scores, logps, spec.score.band))
        if save:  # every chain's scores at the probes (all its draws, as idata holds them), for offline combinations
            chains = post.weights.shape[0]
            saved[f"key{key}_chain_scores"] = idata.posterior["probe_score"].values
            saved[f"key{key}_chain_weights"] = np.full(chains, 1.0 / chains) if stack_w is None else stack_w
        modes = conv.get("chain_modes", {})
        weights = modes.get("chain_weights", [])
        mode_text = "; ".join(f"{m} w {sum(weights[c] for c in m):.2f} r_hat {_num(r)}"
                              for m, r in zip(modes.get("modes", []), modes.get("mode_r_hat", [])))
        predicted = _num(conv.get("stacked_mean_error", {}).get("expected_max_difference"))
        rows.append((key, wall, coarsening.zeta, f"{float(np.mean(post.sample_stats['num_steps'])):.1f}",
                     _num(conv.get("min_ess_bulk")), _num(conv.get("min_ess_tail")), _num(conv["max_r_hat"]),
                     _num(conv.get("max_mode_r_hat")),
                     mode_text, conv["divergences"], _num(modes.get("max_pareto_k")), predicted, len(conv["warnings"])))
    if save:
        np.savez(save, probes=probes, keys=np.asarray(keys), **saved)
    pairs = []  # (ratio, keys, probe) for every pair of keys
    for (i, a), (j, b) in itertools.combinations(enumerate(summaries), 2):
        width = 0.5 * ((a.upper - a.lower) + (b.upper - b.lower))
        ratio = np.abs(a.mean - b.mean) / width
        pairs.append((float(ratio.max()), (keys[i], keys[j]), int(np.unravel_index(np.argmax(ratio), ratio.shape)[0])))
    return rows, pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="spec file or shipped study name")
    parser.add_argument("--keys", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--members", type=int, default=None, help="smaller data (built-in systems)")
    parser.add_argument("--cells", type=int, default=None)
    parser.add_argument("--components", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--draws", type=int, default=None)
    parser.add_argument("--coarsening", default=None, help='"auto", "off" or alpha (default: the spec\'s)')
    parser.add_argument("--chains", type=int, default=None)
    parser.add_argument("--map-starts", type=int, default=None)
    parser.add_argument("--save", default=None, help="npz file: every chain's scores at the probes, per key")
    parser.add_argument("--chain-starts", default=None, choices=("best", "spread", "distinct"), help="[sampler] chain_starts")
    parser.add_argument("--target-accept", type=float, default=None, help="[sampler] target_accept (NUTS's step size)")
    parser.add_argument("--kept-posterior", default=None, choices=("nuts", "laplace"),
                        help="[sampler] kept_posterior (the posterior the coarsening keeps: NUTS or its Laplace approximation)")
    args = parser.parse_args(argv)
    coarsening = args.coarsening
    if coarsening not in (None, "auto", "off"):
        coarsening = float(coarsening)
    spec = spec_with(args.spec, {"data": {"members": args.members}, "partition": {"cells": args.cells},
                                 "mixture": {"components": args.components, "coarsening": coarsening},
                                 "sampler": {"warmup": args.warmup, "draws": args.draws, "chains": args.chains,
                                             "map_starts": args.map_starts,
                                             "chain_starts": args.chain_starts,
                                             "target_accept": args.target_accept,
                                             "kept_posterior": args.kept_posterior}})
    rows, pairs = run(spec, args.keys, args.save)
    ratio, pair, probe = max(pairs, key=lambda p: p[0])
    print(f"study {spec.study.name}: K = {spec.mixture.components}, {spec.sampler.chains} chains x "
          f"({spec.sampler.warmup} + {spec.sampler.draws}), target_accept {spec.sampler.target_accept}, "
          f"kept posterior {spec.sampler.kept_posterior}, seed {spec.study.seed}")
    header = ("NUTS key", "posterior s", "zeta", "leapfrog steps per iteration (kept posterior's draws)", "min bulk ESS",
              "min tail ESS", "r_hat (all chains)", "max r_hat within a mode", "modes: chains, weight, r_hat",
              "divergences", "max PSIS k", "predicted difference of another run (band widths)", "faults")

    def line(*cells):  # a table row, the cells after those given left empty
        return "| " + " | ".join(str(c) for c in cells) + " |" + " |" * (len(header) - len(cells))

    print(line(*header))
    print(line(*["---"] * len(header)))
    for key, wall, zeta, *rest in rows:
        print(line(key, f"{wall:.1f}", f"{zeta:.3f}", *rest))
    for r, (a, b), p in pairs:
        print(line(f"keys {a} and {b}", f"max abs(mean difference) / band width {r:.3f} (probe {p})"))
    verdict = "reproducible" if ratio < REPRODUCIBLE else "NOT reproducible"
    print(line("max over key pairs of max over probes of abs(mean difference) / band width",
               f"{ratio:.3f} (keys {pair}, probe {probe})", f"threshold {REPRODUCIBLE}", verdict))


if __name__ == "__main__":
    main()
