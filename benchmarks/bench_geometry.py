"""Why NUTS needs long trajectories: a study's posterior against its Laplace approximation, direction by direction.

NUTS's step size is set by where the posterior curves most, and its trajectories must reach across the
posterior's widest directions.  An adapted dense metric removes linear correlations and scales, but not a
posterior whose curvature changes from place to place: there the draws spread far wider than the curvature at the
mode says, in some directions, and long trajectories of small steps follow.  For a finished study (or a shipped
study run first), this compares the draws' covariance in NUTS's unconstrained coordinates with the Laplace
covariance (the inverse Hessian of the potential at the best of ``--starts`` MAP searches on the study's cells,
counts times the study's zeta) through the generalised eigenproblem of the two: each row is a combination of
the parameters (unit norm), the baseline its Laplace variance, the ratio the posterior's variance over it (1 for a Gaussian posterior), with
the draws' excess kurtosis along it (0 for a Gaussian) and the parameters it combines (``means[k,i]``,
``scales[k,i]`` as log scales, ``weights[j]`` as numpyro's stick-breaking coordinates).  The study's mean
leapfrog steps per iteration are printed with them.

    python benchmarks/bench_geometry.py reduced_1d          # runs the default study first (about a minute)
    python benchmarks/bench_geometry.py kgmm-runs/reduced_1d --rows 8
"""
from __future__ import annotations

import argparse
import functools

import kgmm_bayes  # noqa: F401
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.util import unconstrain_fn

from kgmm_bayes.bayes.mixture import expected_quadratic_features, mixture_model
from kgmm_bayes.bayes.sampler import _potential, build_prior, find_map, hessian_matrix, initial_values
from kgmm_bayes.errors import InputError

from bench_interpolant import study_result


def parameter_names(params: dict) -> list:
    """Names of the entries of ``ravel_pytree(params)``, in its order."""
    names = []
    for site in sorted(params):
        shape = np.shape(params[site])
        label = "log " + site if site == "scales" else site
        names += [f"{label}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a finished study's output folder, or a study to run first")
    parser.add_argument("--settings", default="", help="spec sections overriding a study run first (TOML, \\n)")
    parser.add_argument("--starts", type=int, default=8, help="MAP searches for the Laplace point")
    parser.add_argument("--rows", type=int, default=6, help="directions shown at each end of the spectrum")
    args = parser.parse_args(argv)
    result = study_result(args.folder, args.settings, "bench-geometry-")
    spec, part, idata = result.spec, result.partition, result.inference_data
    if part is None:
        raise SystemExit(f"{args.folder}: the study keeps no partition (an older version's folder)")
    metrics = result.metrics
    zeta = float(metrics["posterior"]["coarsening"]["zeta"])
    m = spec.mixture
    prior = build_prior(part, m.dirichlet_alpha, m.mean_scale, m.scale_prior, m.lkj_eta)
    model = functools.partial(mixture_model, block_rows="auto")
    model_args = (expected_quadratic_features(part.points, part.cell_covariances),
                  jnp.asarray(np.asarray(part.counts, np.float64) * zeta), prior)
    start = unconstrain_fn(model, model_args, {}, initial_values(part))
    best, _ = find_map(jax.random.key(0), model_args, start, args.starts, spec.sampler.map_steps, model=model)
    laplace = np.linalg.inv(hessian_matrix(functools.partial(_potential, model, model_args), best))
    _, unravel = ravel_pytree(best)
    names = parameter_names(best)

    post = idata.posterior
    sites = [s for s in ("weights", "means", "scales", "corr_chol") if s in post]
    values = {s: np.asarray(post[s].values) for s in sites}
    chains, draws = values["weights"].shape[:2]
    flat = jax.jit(jax.vmap(lambda v: ravel_pytree(unconstrain_fn(model, model_args, {}, v))[0]))
    x = np.asarray(flat({s: jnp.asarray(v.reshape((chains * draws,) + v.shape[2:])) for s, v in values.items()}))
    centred = x - x.mean(axis=0)
    # generalised eigenproblem: directions L v (L L^T the Laplace covariance), ratios = eigenvalues of L^-1 S L^-T
    chol = np.linalg.cholesky(laplace)
    whitened = np.linalg.solve(chol, centred.T).T
    ratios, vectors = np.linalg.eigh(np.cov(whitened.T))
    along = whitened @ vectors
    kurtosis = np.mean(along ** 4, axis=0) / np.mean(along ** 2, axis=0) ** 2 - 3.0
    steps = float(np.mean(np.asarray(idata.sample_stats["n_steps"].values)))
    print(f"study {spec.study.name} ({args.folder}): {len(names)} unconstrained parameters, {chains} chains x "
          f"{draws} draws, zeta {zeta:.3g}, metric {metrics['posterior'].get('metric', '?')}, "
          f"mean leapfrog steps per iteration {steps:.1f}")
    print(f"posterior variance over Laplace variance: {ratios.min():.3g} to {ratios.max():.3g} "
          f"(condition of the ratio {ratios.max() / ratios.min():.3g}); draws' excess kurtosis along the "
          f"directions {kurtosis.min():.2f} to {kurtosis.max():.2f}")
    print("| direction | Laplace variance (baseline) | posterior variance | ratio | excess kurtosis | loads on |")
    print("| --- | --- | --- | --- | --- | --- |")
    order = np.argsort(ratios)[::-1]
    shown = list(order[:args.rows]) + [i for i in order[-args.rows:] if i not in order[:args.rows]]
    covariance = np.cov(centred.T)
    for i in shown:
        # the combination w^T theta with w = L^-T v: Laplace variance w^T (L L^T) w = 1, posterior variance ratio
        w = np.linalg.solve(chol.T, vectors[:, i])
        w = w / np.linalg.norm(w)
        lap_var, post_var = float(w @ laplace @ w), float(w @ covariance @ w)
        top = np.argsort(-np.abs(w))[:4]
        loads = ", ".join(f"{names[j]} {w[j]:+.2f}" for j in top)
        print(f"| {int(np.where(order == i)[0][0]) + 1} | {lap_var:.3g} | {post_var:.3g} | {post_var / lap_var:.3g} | "
              f"{kurtosis[i]:.2f} | {loads} |")


if __name__ == "__main__":
    try:
        main()
    except InputError as exc:
        raise SystemExit(str(exc))
