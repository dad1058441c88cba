"""A first posterior's MAP polish (``sampler.polish_optima`` from Adam's end points, as ``find_map`` runs it): the
way it ran until 6 December 2026, the way it runs now and what else was tried, from the same end points in one
process.

For one study (a spec file or a shipped study's name; its data, partition and ``[sampler]`` MAP settings), the
likelihood's counts times the coarsening's first zeta (``1 / R`` from the error terms, where no bias asks for the
standard posterior's variance; else 1), ``map_starts`` Adam searches (``find_map`` without its polish), then each way
polishes the same end points, at most ``[sampler] map_polish`` iterations each:

- ``scipy (before)``: scipy's L-BFGS-B on the host (memory 10; the same gradient and decrease tolerances), one
  jitted value and gradient per evaluation, the starts shared among :data:`~kgmm_bayes.bayes.sampler.POLISH_THREADS`
  threads: the baseline;
- ``now``: optax's L-BFGS (``sampler.lbfgs_search``), each start's whole search one call of one compiled program,
  on the same threads: no interpreter between evaluations (scipy's driver held it for about 0.16 ms of each);
- ``now, memory 30``: L-BFGS keeping 30 past steps instead of 10;
- ``now, threads + 1``: one thread more than CPUs;
- ``now, budget 300``: at most 300 iterations.

Reported per way: the polish's wall time (each way run twice, the second reported: its program traced and loaded
from the compilation cache as a study's second run loads it) and the baseline's over it (above 1: faster), scipy's
evaluations of the potential and searches stopped at the iteration limit, the best potential, and then the chains'
optima (``chain_starts``'s picks, at most ``[sampler] chains``) refined by Newton steps as a Laplace posterior refines
them (``sampler.refine_optima``): how many distinct optima they reach (potentials 1e-6 apart, relative), how many have
no positive definite Hessian, and the sum of their potentials above the best (the model's Laplace centres: lower is
better; the same optima give the same sum).

    python benchmarks/bench_polish.py lorenz63      # about 5 minutes on 2 cores

``--settings``: TOML overriding the study's sections (``\\n`` for newlines).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def scipy_polish(potential, flats, unravel, max_steps: int, threads: int):
    """The polish as it ran until 6 December 2026: scipy's L-BFGS-B per start, ``(points (B, P), energies, iterations,
    evaluations)``; a start is never made worse."""
    import jax
    import jax.numpy as jnp
    import scipy.optimize

    from kgmm_bayes.bayes.sampler import POLISH_DECREASE, POLISH_GRADIENT

    def packed(v):
        value, grad = jax.value_and_grad(lambda u: potential(unravel(u)))(v)
        return jnp.concatenate([value[None], grad])

    value_and_grad = jax.jit(packed)
    starting = [np.asarray(value_and_grad(flat), np.float64) for flat in flats]  # compiled in this thread

    def fun(v):
        both = np.asarray(value_and_grad(v), np.float64)
        value, grad = float(both[0]), both[1:]
        return (value, grad) if np.isfinite(value) and np.all(np.isfinite(grad)) else (np.inf, np.zeros_like(grad))

    def polished(i):
        start = float(starting[i][0]) if np.all(np.isfinite(starting[i])) else np.inf
        res = scipy.optimize.minimize(fun, flats[i], jac=True, method="L-BFGS-B",
                                      options={"maxiter": max_steps, "gtol": POLISH_GRADIENT, "ftol": POLISH_DECREASE})
        moved = np.isfinite(res.fun) and res.fun <= start
        return (res.x, float(res.fun)) if moved else (flats[i], float(starting[i][0])), res.nit, res.nfev

    with ThreadPoolExecutor(threads) as pool:
        done = list(pool.map(polished, range(len(flats))))
    return (np.stack([d[0][0] for d in done]), np.asarray([d[0][1] for d in done]),
            np.asarray([d[1] for d in done]), int(sum(d[2] for d in done)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", nargs="?", default="lorenz63", help="a spec file or a shipped study's name")
    parser.add_argument("--settings", default="", help="spec sections overriding the study's (TOML, \\n)")
    args = parser.parse_args()

    import kgmm_bayes
    kgmm_bayes.enable_compilation_cache()
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import unconstrain_fn

    from bench_reproducibility import study_partition
    from kgmm_bayes.bayes import sampler
    from kgmm_bayes.bayes.coarsening import error_terms, needs_variance, zeta_without_variance
    from kgmm_bayes.bayes.mixture import likelihood_features, mixture_model
    from kgmm_bayes.spec import load_spec
    from kgmm_bayes.study.stages import coarsening_seed

    spec = load_spec(args.study, tomllib.loads(args.settings.replace("\\n", "\n")) if args.settings else None)
    _, z, part = study_partition(spec)
    m = spec.mixture
    terms = error_terms(z, m.components, part.points, part.counts, seed=coarsening_seed())
    zeta = 1.0 if needs_variance(terms) else zeta_without_variance(terms)
    config = sampler.SamplerConfig(**spec.sampler._asdict())
    prior = sampler.build_prior(part, m.dirichlet_alpha, m.mean_scale, m.scale_prior, m.lkj_eta)
    model = functools.partial(mixture_model, block_rows="auto")
    model_args = (likelihood_features(part.points, part.cell_covariances), jnp.asarray(part.counts * zeta), prior)
    init = jax.jit(lambda values: unconstrain_fn(model, model_args, {}, values))(sampler.initial_values(part))
    map_key = jax.random.split(jax.random.key(spec.study.seed))[1]  # laplace_posterior's
    _, _, ends = sampler.find_map(map_key, model_args, init, config.map_starts, config.map_steps, model=model,
                                  return_all=True, polish=0,
                                  adam_precision=sampler.adam_precision(model_args, config))
    potential = functools.partial(sampler._potential, model, model_args)
    flats = np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(ends), np.float64)
    unravel = ravel_pytree(jax.tree_util.tree_map(lambda leaf: leaf[0], ends))[1]

    @contextlib.contextmanager
    def setting(name, value):
        saved = getattr(sampler, name)
        setattr(sampler, name, value)
        try:
            yield
        finally:
            setattr(sampler, name, saved)

    def now(polish=config.map_polish):
        points, energies = sampler.polish_optima(potential, ends, polish)
        return points, energies, None, None

    def before():
        out, energies, iterations, evaluations = scipy_polish(potential, flats, unravel, config.map_polish,
                                                              sampler.POLISH_THREADS)
        return jax.vmap(unravel)(jnp.asarray(out)), np.where(np.isfinite(energies), energies, np.inf), iterations, \
            evaluations

    threads = sampler.POLISH_THREADS
    ways = [("scipy (before)", before, contextlib.nullcontext, config.map_polish),
            ("now", now, contextlib.nullcontext, config.map_polish),
            ("now, memory 30", now, lambda: setting("POLISH_MEMORY", 30), config.map_polish),
            (f"now, threads {threads + 1}", now, lambda: setting("POLISH_THREADS", threads + 1), config.map_polish),
            ("now, budget 300", lambda: now(300), contextlib.nullcontext, 300)]
    print(f"{args.study}: {config.map_starts} MAP searches at zeta {zeta:.4f} ({len(part.points)} cells x "
          f"{m.components} components, P = {flats.shape[1]}), Adam's {config.map_steps} steps, then the polish "
          f"({threads} threads):")
    print("| way | polish s | ratio | evaluations | searches at the limit | best potential | distinct optima "
          "refined | not optima | their sum above the best |")
    print("|---|---|---|---|---|---|---|---|---|")
    baseline = None
    for name, way, context, limit in ways:
        for _ in range(2):  # the second timed: the way's program loaded from the compilation cache
            with context():
                start = time.perf_counter()
                points, energies, iterations, evaluations = way()
                wall = time.perf_counter() - start
        baseline = baseline or wall
        if config.chain_starts in ("spread", "distinct"):  # as map_optima picks them
            picks = sampler.spread_starts(points, energies, config.chains,
                                          sampler.SPREAD_NATS if config.chain_starts == "spread" else np.inf)
        else:
            picks = np.full(config.chains, int(np.argmin(energies)))
        refined = sampler.refine_optima(potential, jax.tree_util.tree_map(lambda leaf: leaf[picks], points), picks)
        e = np.sort(np.asarray(refined.potentials, np.float64))
        distinct = 1 + int(np.sum(np.diff(e) > 1e-6 * np.abs(e[1:])))
        at_limit = "-" if iterations is None else f"{int(np.sum(iterations >= limit))} of {len(iterations)} ({limit})"
        print(f"| {name} | {wall:.2f} | {baseline / wall:.2f} | {'-' if evaluations is None else evaluations} | "
              f"{at_limit} | {np.min(energies):.3f} | {distinct} of {len(e)} | "
              f"{int(np.sum(~np.isfinite(refined.decrements)))} | {float(np.sum(e - e[0])):.2f} |", flush=True)


if __name__ == "__main__":
    main()
