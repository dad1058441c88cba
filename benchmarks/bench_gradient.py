"""Cost of one gradient of the mixture log-likelihood: dense vs MixtureSameFamily vs the floor.

For each case (N points, K components, D dimensions) and dtype, times the jitted gradient
(with respect to weights, means and covariance Cholesky factors) of

* ``dense``: this project's likelihood, ``logsumexp(Phi @ Gamma(theta))`` with fixed
  quadratic features ``Phi`` (kgmm_bayes.bayes.mixture.mixture_loglik_dense): value and
  derivative in ``Gamma`` from one pass over cache-sized blocks of rows;
* ``autodiff``: the same expression differentiated by plain autodiff (the dense form
  before the fused derivative), for comparison;
* ``mixture_same_family``: ``numpyro.distributions.MixtureSameFamily`` of
  ``MultivariateNormal(scale_tril=L)``, the straightforward model;
* ``floor``: the dense matrix products alone that any gradient of the dense form must do,
  the forward product ``Phi @ Gamma`` (N x F by F x K) and the backward product
  ``Phi^T @ G`` (F x N by N x K), measured as one jitted function of the same shapes.

Each timing is the median over repeats of ``block_until_ready`` after a warm-up call.
Prints one table with the ratios dense/floor, autodiff/dense and mixture_same_family/dense.

    python benchmarks/bench_gradient.py [--repeats 30]

``--layouts``: the whole potential's value and gradient as NUTS evaluates it (the numpyro model: prior,
transforms and the cells' likelihood; ``LOOP`` gradients in one compiled loop, the best of ``--repeats // 6``
loops) with the likelihood's log densities laid out ``(rows, K)`` (the baseline, float64's layout) against
``(K, rows)`` (float32's, ``kgmm_bayes.bayes.mixture._block_terms_by_component``), in float32 and float64
features, on the shapes of the shipped studies' likelihoods (2,000 cells; K and D of Lorenz-63, Kuramoto-Sivashinsky
D = 4, the triad, four-well, Lorenz-96 slow; 500 merged cells; the default study's merged cells), with the
two layouts' largest relative difference in value and gradient.  Run it on one core, as each NUTS chain runs
(``taskset -c 0 python benchmarks/bench_gradient.py --layouts``): on two, XLA's threads make each compiled
program's time vary from one compilation to the next (Lorenz-63's float64 row layout 189-302 us).
"""
from __future__ import annotations

import argparse
import time

import kgmm_bayes  # noqa: F401  (float64 on, host devices)
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from kgmm_bayes.bayes.mixture import component_coefficients, loglik_plain, mixture_loglik_dense, quadratic_features

CASES = [(20_000, 16, 2), (100_000, 32, 3)]
LAYOUT_CASES = [(2000, 32, 3), (2000, 32, 4), (2000, 24, 3), (2000, 16, 2), (2000, 32, 5), (500, 32, 3), (200, 8, 1)]
LOOP = 300


def median_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def make_case(n, k, d, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    weights = rng.dirichlet(np.full(k, 2.0))
    means = rng.normal(size=(k, d))
    a = rng.normal(size=(k, d, d)) * 0.3
    chol = np.linalg.cholesky(a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(d))
    cast = lambda v: jnp.asarray(v, dtype=dtype)  # noqa: E731
    return cast(x), cast(weights), cast(means), cast(chol)


def parse_cases(given, default):
    """``"N,K,D"`` strings as integer triples; ``default`` where none are given."""
    return default if given is None else [tuple(int(v) for v in c.split(",")) for c in given]


def potential_loop_time(m, k, d, dtype, loops: int):
    """Seconds per value and gradient of the mixture model's potential on ``m`` random cells, and the value and
    gradient at the model's initial point."""
    import functools

    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import initialize_model

    from kgmm_bayes.bayes.mixture import MixturePrior, expected_quadratic_features, mixture_model

    rng = np.random.default_rng(0)
    prior = MixturePrior(jnp.asarray(rng.normal(size=(k, d))), jnp.full((k, d), 0.3), 1.0, 1.0, 2.0)
    feats = jnp.asarray(expected_quadratic_features(rng.normal(size=(m, d)), np.broadcast_to(0.01 * np.eye(d), (m, d, d))),
                        dtype)
    counts = jnp.asarray(rng.uniform(1.0, 100.0, size=m), dtype)
    info = initialize_model(jax.random.PRNGKey(0), functools.partial(mixture_model, block_rows="auto"),
                            model_args=(feats, counts, prior))
    flat, unravel = ravel_pytree(info.param_info.z)
    value_and_grad = jax.value_and_grad(lambda v: info.potential_fn(unravel(v)))

    def loop(v):
        def body(_, carry):
            v, acc = carry
            value, grad = value_and_grad(v)
            return v - 1e-9 * grad, acc + value
        return jax.lax.fori_loop(0, LOOP, body, (v, jnp.zeros((), v.dtype)))

    looped = jax.jit(loop)
    jax.block_until_ready(looped(flat))
    best = float("inf")
    for _ in range(loops):
        start = time.perf_counter()
        jax.block_until_ready(looped(flat))
        best = min(best, (time.perf_counter() - start) / LOOP)
    value, grad = jax.jit(value_and_grad)(flat)
    return best, float(value), np.asarray(grad)


def layouts(args):
    from kgmm_bayes.bayes import mixture

    chosen = mixture._block_terms  # the layout by the features' dtype

    def forced(layout):
        return lambda features, counts, gamma: layout(features, counts, gamma.astype(features.dtype), gamma.dtype)

    print(f"device: {jax.devices()[0].device_kind}, {jax.local_device_count()} device(s)")
    header = ("cells", "K", "D", "features", "(rows, K) us", "(K, rows) us", "ratio", "rel. diff value",
              "rel. diff gradient")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header), flush=True)
    for m, k, d in parse_cases(args.layout_cases, LAYOUT_CASES):
        for dtype in (jnp.float32, jnp.float64):
            timed = {}
            for name, layout in (("row", mixture._block_terms_by_row), ("component", mixture._block_terms_by_component)):
                mixture._block_terms = forced(layout)
                try:
                    timed[name] = potential_loop_time(m, k, d, dtype, max(1, args.repeats // 6))
                finally:
                    mixture._block_terms = chosen
            (t_row, v_row, g_row), (t_comp, v_comp, g_comp) = timed["row"], timed["component"]
            print(f"| {m} | {k} | {d} | {jnp.dtype(dtype).name} | {t_row * 1e6:.1f} | {t_comp * 1e6:.1f} | "
                  f"{t_row / t_comp:.2f} | {abs(v_comp - v_row) / abs(v_row):.1e} | "
                  f"{np.max(np.abs(g_comp - g_row)) / np.max(np.abs(g_row)):.1e} |", flush=True)


def main(args):
    if args.layouts:
        return layouts(args)
    rows = []
    for n, k, d in parse_cases(args.cases, CASES):
        for dtype in (jnp.float32, jnp.float64):
            x, w, mu, chol = make_case(n, k, d, dtype)
            feats = quadratic_features(x)
            counts = jnp.ones(n, dtype=dtype)

            dense = jax.jit(jax.grad(lambda w, m, c: mixture_loglik_dense(feats, counts, w, m, c), argnums=(0, 1, 2)))

            autodiff = jax.jit(jax.grad(lambda w, m, c: loglik_plain(feats, counts, component_coefficients(w, m, c)),
                                        argnums=(0, 1, 2)))

            def msf_loglik(w, m, c):
                mix = dist.MixtureSameFamily(dist.Categorical(probs=w), dist.MultivariateNormal(m, scale_tril=c))
                return jnp.sum(mix.log_prob(x))

            msf = jax.jit(jax.grad(msf_loglik, argnums=(0, 1, 2)))
            gamma = jnp.asarray(np.random.default_rng(1).normal(size=(feats.shape[1], k)), dtype=dtype)
            cotangent = jnp.asarray(np.random.default_rng(2).normal(size=(n, k)), dtype=dtype)
            floor = jax.jit(lambda f, g, ct: (f @ g, f.T @ ct))

            t_dense = median_time(dense, w, mu, chol, repeats=args.repeats)
            t_auto = median_time(autodiff, w, mu, chol, repeats=args.repeats)
            t_msf = median_time(msf, w, mu, chol, repeats=args.repeats)
            t_floor = median_time(floor, feats, gamma, cotangent, repeats=args.repeats)
            rows.append((n, k, d, jnp.dtype(dtype).name, t_floor, t_dense, t_auto, t_msf))

    print(f"device: {jax.devices()[0].device_kind}, {jax.local_device_count()} device(s)")
    header = ("N", "K", "D", "dtype", "floor_us", "dense_us", "autodiff_us", "msf_us", "dense/floor",
              "autodiff/dense", "msf/dense")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for n, k, d, dt, tf, td, ta, tm in rows:
        print(f"| {n} | {k} | {d} | {dt} | {tf * 1e6:.0f} | {td * 1e6:.0f} | {ta * 1e6:.0f} | {tm * 1e6:.0f} | "
              f"{td / tf:.2f} | {ta / td:.2f} | {tm / td:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--cases", nargs="+", default=None, help="N,K,D triples (default: the issue's two)")
    parser.add_argument("--layouts", action="store_true",
                        help="the potential's gradient with the likelihood in (rows, K) against (K, rows) layout")
    parser.add_argument("--layout-cases", nargs="+", default=None,
                        help="--layouts: cells,K,D triples (default: the shipped studies' shapes)")
    main(parser.parse_args())
