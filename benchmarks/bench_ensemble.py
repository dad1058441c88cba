"""Does the posterior ensemble cost at most S single-member runs?

The reduced-order model of S posterior draws (mixture-score drifts, K components in d
dimensions), all members x particles in one ``lax.scan`` (:func:`simulate_ensemble`),
against the baseline measured in the same run: one single-member run
(:func:`simulate_langevin`, same particles, steps and drift) times S.  The drift is the
study's (:func:`kgmm_bayes.rom.ensemble.mixture_members`: each draw's score as dense products
of precomputed coefficients); the first line also times one member with the closed-form
score evaluated from the draw itself (whitened residuals, the drift before coefficients).
All timed after a compiling warm-up call, best of ``--repeats``; reported as
particle-steps per second and the ratio ensemble / (S x single) (below 1: batching pays).
Defaults: the Lorenz-63 study's ensemble (K = 32, d = 3, 100 particles per member).

    python benchmarks/bench_ensemble.py --members 1,8,32
    python benchmarks/bench_ensemble.py --members 1,8,32 --drift interpolant   # one MLP per member
"""
from __future__ import annotations

import argparse
import time

import kgmm_bayes  # noqa: F401
import jax
import jax.numpy as jnp

from kgmm_bayes.rom.ensemble import interpolant_members, mixture_members, simulate_ensemble
from kgmm_bayes.rom.langevin import simulate_langevin
from kgmm_bayes.bayes.score import mixture_score


def random_draws(key, members, components, dim):
    """Mixture draws ``(weights, means, cov_chol)`` with a leading member axis, float32."""
    k_w, k_m, k_s = jax.random.split(key, 3)
    weights = jax.random.dirichlet(k_w, jnp.full(components, 5.0), (members,))
    means = jax.random.normal(k_m, (members, components, dim))
    scales = jax.random.uniform(k_s, (members, components, dim), minval=0.5, maxval=1.0)
    cov_chol = jax.vmap(jax.vmap(jnp.diag))(scales)
    return tuple(jnp.asarray(a, jnp.float32) for a in (weights, means, cov_chol))


def residual_drift(draw, x):
    """The closed-form score evaluated from the draw (triangular inverses and residuals every step)."""
    return mixture_score(*draw, x)[0]


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
    work = args.particles * args.steps
    if args.drift == "mixture":
        drift, coeffs = mixture_members(draws)
    else:  # one MLP per draw, as [ensemble] drift = "interpolant" trains them (the cost does not depend on training)
        points = jax.random.normal(x0_key, (256, args.dim))
        drift, coeffs, _ = interpolant_members(draw_key, draws, points, jnp.ones(256), tuple(args.hidden), 1, 1e-3)
    one = jax.tree.map(lambda a: a[0], coeffs)
    single = best_time(lambda: simulate_langevin(run_key, drift, one, x0, **settings), args.repeats)
    print(f"device: {jax.devices()[0].platform}, drift {args.drift}, K = {args.components}, d = {args.dim}, "
          f"{args.particles} particles x {args.steps} steps per member")
    if args.drift == "mixture":
        residual = best_time(lambda: simulate_langevin(run_key, residual_drift, jax.tree.map(lambda a: a[0], draws),
                                                       x0, **settings), args.repeats)
        print(f"one member: {work / single:.3g} particle-steps/s with coefficients, {work / residual:.3g} with "
              f"whitened residuals ({residual / single:.1f}x slower)")
    print("| members S | members per batch | S x single run (s) | ensemble (s) | baseline particle-steps/s | "
          "ensemble particle-steps/s | ratio ensemble / (S x single) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    batches = [None if b == "all" else int(b) for b in args.member_batch.split(",")]
    for members in sizes:
        params = jax.tree.map(lambda a: a[:members], coeffs)
        baseline = members * single
        for batch in batches:
            if batch is not None and batch >= members:
                continue
            ensemble = best_time(lambda: simulate_ensemble(run_key, drift, params, x0, **settings,
                                                           member_batch=batch), args.repeats)
            print(f"| {members} | {'all' if batch is None else batch} | {baseline:.3f} | {ensemble:.3f} | "
                  f"{members * work / baseline:.3g} | {members * work / ensemble:.3g} | {ensemble / baseline:.2f} |",
                  flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="1,8,32", help="comma-separated ensemble sizes S")
    parser.add_argument("--particles", type=int, default=100)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--components", type=int, default=32)
    parser.add_argument("--dim", type=int, default=3)
    parser.add_argument("--drift", choices=("mixture", "interpolant"), default="mixture")
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 64], help="interpolant hidden widths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--member-batch", default="all,4",
                        help="comma-separated members per batch: 'all' (one vmap) or a number (lax.map batches)")
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
