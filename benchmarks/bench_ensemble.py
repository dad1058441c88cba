"""Does the posterior ensemble cost at most S single-member runs?

The reduced-order model of S posterior draws (mixture-score drifts, K components in d
dimensions), all members x particles in one ``lax.scan`` (:func:`simulate_ensemble`),
against the baseline measured in the same run: one single-member run
(:func:`simulate_langevin`, same particles and steps) times S.  Both are timed after a
compiling warm-up call, best of ``--repeats``; reported as particle-steps per second
and the ratio ensemble / (S x single) (below 1: batching pays).

    python benchmarks/bench_ensemble.py --members 1,8,32
"""
from __future__ import annotations

import argparse
import time

import kgmm_bayes  # noqa: F401
import jax
import jax.numpy as jnp

from kgmm_bayes.ensemble import mixture_drift, simulate_ensemble
from kgmm_bayes.langevin import simulate_langevin


def random_draws(key, members, components, dim):
    """Mixture draws ``(weights, means, cov_chol)`` with a leading member axis, float32."""
    k_w, k_m, k_s = jax.random.split(key, 3)
    weights = jax.random.dirichlet(k_w, jnp.full(components, 5.0), (members,))
    means = jax.random.normal(k_m, (members, components, dim))
    scales = jax.random.uniform(k_s, (members, components, dim), minval=0.5, maxval=1.0)
    cov_chol = jax.vmap(jax.vmap(jnp.diag))(scales)
    return tuple(jnp.asarray(a, jnp.float32) for a in (weights, means, cov_chol))


def best_time(fn, repeats):
    fn()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(args):
    key = jax.random.key(args.seed)
    draw_key, x0_key, run_key = jax.random.split(key, 3)
    settings = dict(dt=0.005, steps=args.steps, burn_in=0, thin=max(1, args.steps // 10))
    x0 = jax.random.normal(x0_key, (args.particles, args.dim))
    sizes = [int(s) for s in args.members.split(",")]
    draws = random_draws(draw_key, max(sizes), args.components, args.dim)
    one = jax.tree.map(lambda a: a[0], draws)
    single = best_time(lambda: simulate_langevin(run_key, mixture_drift, one, x0, **settings), args.repeats)
    work = args.particles * args.steps
    print(f"device: {jax.devices()[0].platform}, K = {args.components}, d = {args.dim}, "
          f"{args.particles} particles x {args.steps} steps per member")
    print("| members S | members per batch | S x single run (s) | ensemble (s) | baseline particle-steps/s | "
          "ensemble particle-steps/s | ratio ensemble / (S x single) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    batches = [None if b == "all" else int(b) for b in args.member_batch.split(",")]
    for members in sizes:
        params = jax.tree.map(lambda a: a[:members], draws)
        baseline = members * single
        for batch in batches:
            if batch is not None and batch >= members:
                continue
            ensemble = best_time(lambda: simulate_ensemble(run_key, mixture_drift, params, x0, **settings,
                                                           member_batch=batch), args.repeats)
            print(f"| {members} | {'all' if batch is None else batch} | {baseline:.3f} | {ensemble:.3f} | "
                  f"{members * work / baseline:.3g} | {members * work / ensemble:.3g} | {ensemble / baseline:.2f} |",
                  flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="1,8,32", help="comma-separated ensemble sizes S")
    parser.add_argument("--particles", type=int, default=200)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--dim", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--member-batch", default="all,4",
                        help="comma-separated members per batch: 'all' (one vmap) or a number (lax.map batches)")
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
