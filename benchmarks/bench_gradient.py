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


def main(args):
    rows = []
    for n, k, d in (CASES if args.cases is None else [tuple(int(v) for v in c.split(",")) for c in args.cases]):
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
    main(parser.parse_args())
