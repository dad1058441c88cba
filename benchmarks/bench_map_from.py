"""A second posterior's MAP searches: searched for afresh against the first posterior's optima polished at its own
zeta (``run_nuts``' ``map_from``, what the coarsening does since December 2026), each way in a fresh process.

For one study (a spec file or a shipped study's name; its data, partition and ``[sampler]`` MAP settings), each
process first runs the study's MAP searches (``sampler.map_optima``) on the cells with their counts times
``--zetas``' first value, as the coarsening's first posterior does, then the second posterior's at the second
value: ``fresh``, its own ``map_starts`` Adam and L-BFGS searches from the partition's values (what the code did
before); ``polished``, the first searches' optima polished by L-BFGS at the second zeta (what it did until December
2026); ``whitened``, the same polish in coordinates whitened by each optimum's Hessian at the second zeta, the
Hessians' cost included; ``reused`` (what it does now), the same, with the Hessians at the first posterior's refined
optima rescaled to the second zeta (``sampler.map_hessians``) rather than computed again.  The first searches' optima
the chains start at are first Newton-refined, as a Laplace first posterior does (not timed).  Reported per way, for
the second searches only (MAP searches and their compilation, as a study pays them; the compilation cache off unless
``--cache``): wall time, the best potential (lower is better), how many distinct optima the chains could start at
(``chain_starts = "distinct"``, at most ``[sampler] chains``), the spread of their potentials above the best, how far
above its own optimum the worst of them is left (half its Newton decrement) and how many have no positive definite
Hessian; the speed-up is the fresh way's wall time over this way's, then with the time the distinct optima's Newton
refinement takes added (``sampler.refine_optima``, as a Laplace posterior centred there pays it). The posterior's
draws are not sampled here: ``kgmm-bayes run`` the study for that.

    python benchmarks/bench_map_from.py lorenz63 --zetas 0.937 0.151 --cache     # about 2 minutes; run it twice:
    # with a cold cache the first way compiles programs (the refinement's) that the later ways then load
    python benchmarks/bench_map_from.py four_well_2d --zetas 0.630 0.133

``--settings``: TOML overriding the study's sections (``\\n`` for newlines).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WAYS = ("fresh", "polished", "whitened", "reused")


def one_way(spec_name: str, way: str, zetas, settings: str = "") -> dict:
    """The second MAP searches' figures, done ``way``."""
    import functools

    import kgmm_bayes  # noqa: F401  (float64 on, host devices)
    if os.environ.get("KGMM_BAYES_COMPILATION_CACHE") != "off":  # --cache
        kgmm_bayes.enable_compilation_cache()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import tomllib
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import unconstrain_fn

    from bench_reproducibility import study_partition
    from kgmm_bayes.bayes.mixture import likelihood_features
    from kgmm_bayes.bayes import sampler
    from kgmm_bayes.bayes.sampler import SamplerConfig, build_prior, initial_values, map_optima, spread_starts
    from kgmm_bayes.spec import load_spec
    from kgmm_bayes.study import stages

    spec = load_spec(spec_name, tomllib.loads(settings.replace("\\n", "\n")) if settings else None)
    _, _, part = study_partition(spec)
    m = spec.mixture
    prior = build_prior(part, m.dirichlet_alpha, m.mean_scale, m.scale_prior, m.lkj_eta)
    config = SamplerConfig(**spec.sampler._asdict())
    features = likelihood_features(part.points, part.cell_covariances)
    model = sampler.AUTO_BLOCKS_MODEL

    def args(zeta):
        return features, jnp.asarray(np.asarray(part.counts, np.float64) * zeta), prior

    init = jax.jit(lambda values: unconstrain_fn(model, args(zetas[0]), {}, values))(initial_values(part))
    key = stages.study_keys(spec.study.seed)[3]  # the study's MCMC key (data, reference, partition, mcmc, ...)
    _, first_energies, picks, starts, first_optima = map_optima(jax.random.fold_in(key, 0), args(zetas[0]), init,
                                                                config, model)
    if picks is None:  # every chain at the best optimum
        picks = np.asarray([int(np.argmin(first_energies))])
        starts = jax.vmap(ravel_pytree(init)[1])(jnp.asarray(first_optima[picks]))
    # the chains' distinct optima Newton-refined, as a Laplace first posterior does (not timed): their Hessians are the
    # ones the "reused" way takes
    refined = sampler.refine_optima(sampler.model_potential(model, args(zetas[0])), starts, np.asarray(picks))
    rows = np.asarray(picks)[refined.first_of]
    first_optima = np.array(first_optima)
    first_optima[rows] = np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(refined.points))
    known = sampler.KnownHessians(rows, refined.hessians, np.asarray(args(zetas[0])[1]))
    start = time.perf_counter()
    _, energies, _, _, optima = map_optima(jax.random.fold_in(key, 1), args(zetas[1]), init, config, model,
                                           map_from=None if way == "fresh" else first_optima,
                                           whiten=way in ("whitened", "reused"),
                                           known=known if way == "reused" else None)
    wall = time.perf_counter() - start
    distinct = np.unique(spread_starts(None, energies, config.chains, np.inf))
    above = energies[distinct] - energies.min()
    potential = functools.partial(sampler._potential, model, args(zetas[1]))
    unravel = ravel_pytree(init)[1]
    at = jax.vmap(unravel)(jnp.asarray(optima[distinct]))
    start = time.perf_counter()  # the chains' optima Newton-refined, as a Laplace posterior centred there does
    sampler.refine_optima(potential, at, distinct)
    refine = time.perf_counter() - start
    # how far above its own optimum each chain's start is left (half its Newton decrement, nats, nan where the Hessian
    # is not positive definite: newton_refine without steps; after the timing)
    halves = sampler.newton_refine(potential, at, sampler.hessian_matrices(potential, at), steps=0)[2]
    return {"wall": wall, "best": float(energies.min()), "distinct": int(len(distinct)),
            "spread": float(above.max()), "searches": int(len(energies)), "decrement": float(np.nanmax(halves)),
            "not_optima": int(np.sum(np.isnan(halves))), "refine": refine}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default="four_well_2d", help="spec file or shipped study name")
    parser.add_argument("--zetas", type=float, nargs=2, default=(1.0, 0.15), metavar=("FIRST", "SECOND"),
                        help="the two posteriors' likelihood powers (default 1.0 0.15)")
    parser.add_argument("--settings", default="", help="spec sections overriding the study's (TOML, \\n)")
    parser.add_argument("--cache", action="store_true",
                        help="JAX's persistent compilation cache on (as a study's later runs; default off)")
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # one process's way (internal)
    args = parser.parse_args(argv)
    if not all(0 < z <= 1 for z in args.zetas):
        parser.error(f"--zetas must lie in (0, 1], got {args.zetas}")
    if args.way:
        print("RESULT " + json.dumps(one_way(args.spec, args.way, args.zetas, args.settings)))
        return 0
    env = dict(os.environ) if args.cache else dict(os.environ, KGMM_BAYES_COMPILATION_CACHE="off")
    results = {}
    for way in WAYS:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), args.spec, "--way", way, "--zetas",
                              *map(str, args.zetas), "--settings", args.settings], env=env, capture_output=True,
                             text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            sys.exit(f"bench_map_from: the {way} run failed: {out.stderr.strip().splitlines()[-1:]}")
        results[way] = json.loads(lines[-1][len("RESULT "):])
    base = results["fresh"]
    print(f"the second MAP searches of {args.spec} at zeta {args.zetas[1]} after the first at {args.zetas[0]} "
          f"(fresh process each, compilation cache {'on' if args.cache else 'off'})")
    print("| second searches | searches | wall s | best potential | minus fresh's | distinct optima "
          "| their spread, nats | largest half Newton decrement left, nats | not optima | speed-up "
          "| their Newton refinement s | speed-up with it |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for way, r in results.items():
        print(f"| {way} | {r['searches']} | {r['wall']:.1f} | {r['best']:.3f} | {r['best'] - base['best']:.3f} | "
              f"{r['distinct']} | {r['spread']:.2f} | {r['decrement']:.2g} | {r['not_optima']} | "
              f"{base['wall'] / r['wall']:.2f} | {r['refine']:.1f} | "
              f"{(base['wall'] + base['refine']) / (r['wall'] + r['refine']):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
