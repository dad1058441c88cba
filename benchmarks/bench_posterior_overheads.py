"""The posterior stage's work around NUTS: each piece the old way and the new way, same run, same inputs.

For one study (a spec file or a shipped study's name; its data, partition and priors at its seed):

1. ``error_terms``: the coarsening's maximum-likelihood fits (K on contiguous and scattered blocks, the richer
   references) by scikit-learn's ``GaussianMixture`` one after another, BLAS free to use every core (the old way),
   against the same on ``worker_threads()`` threads with BLAS on one thread each (until 6 December 2026), and
   against every block of a K at once by compiled EM (``em.fit_mixtures``, now); after one untimed run (the EM and
   the score all ways share compiled once).  Threads must not change the terms beyond 1e-12, the compiled EM (the
   same EM, its sums in another order) beyond 1e-9, with the same reference.  Then every richer reference fitted
   (``ladder=False``, the old way) against the ladder (each only where BIC preferred the one before it): identical
   terms, except where 2K lost to K and 4K beat K (the rules' one difference).
2. The L-BFGS polish of ``--starts`` MAP searches (Adam's ``--adam`` steps first, as ``find_map``): optax's
   L-BFGS vmapped over all starts in one program, split over the devices (the old way, until December 2026:
   the starts move in lockstep), against the same search one start after another, each start's one call of
   one compiled program, on ``sampler.POLISH_THREADS`` threads (``sampler.polish_optima``; until 6 December
   2026 scipy's L-BFGS-B ran there: ``bench_polish.py`` times it).  Compilation is included in
   both, as a study pays it.  Likewise the Adam steps themselves (``find_map(..., polish=0)``, all starts on one device
   against split over the devices).
3. The Cholesky roots of ``--hessians`` Laplace covariances (the best optimum's Hessian, as many times), which a
   Laplace posterior's draws take: ``laplace_covariance(..., root=True)``, which also inverts the factor and copies
   both to the device (the old way, until December 2026), against ``_laplace_flat``'s on the host.  Then
   the posterior-mean score of ``--draws`` draws at ``--points`` snapshots (the bumps' gap and the
   interpolant's training targets): each draw's score by whitened residuals (``mixture_score``, the old
   way), against the dense coefficient form summed over draws (``posterior_mean_score``).  The draws are
   Laplace draws at the best optimum of row 2; both ways compiled before they are timed.
4. ``--cell-draws`` draws' scores and log densities at the cells (the coarsening's choice and the score
   stage, ``score_draws``): whitened residuals against the dense form, in the same chunks of points.
5. The chains' PSIS-LOO densities of the cells (``stacking.chain_loo_densities``, the chains' modes and
   stacking weights) of those draws, taken as ``--psis-chains`` chains: ``arviz.psislw`` on each chain
   (looping over the cells in Python, the old way) against every cell of a chain at once
   (``stacking.psis_log_weights``).

Each row: seconds the old way, the new way, their ratio, and the check; a failed check exits with status 1.

    python benchmarks/bench_posterior_overheads.py lorenz63
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import time

import kgmm_bayes  # noqa: F401
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.util import potential_energy, unconstrain_fn

from kgmm_bayes._cpus import worker_threads
from kgmm_bayes.bayes import coarsening, sampler
from kgmm_bayes.bayes.mixture import expected_quadratic_features, mixture_model
from kgmm_bayes.bayes.sampler import build_prior, initial_values
from kgmm_bayes.bayes.score import _in_chunks, mixture_score, posterior_mean_score, score_draws
from kgmm_bayes.bayes.stacking import chain_loo_densities

from bench_reproducibility import spec_with, study_partition


FAILED = []


def sklearn_fit_scores(blocks, k, points, seed, padded=0, threads=1, blas=None):
    """``coarsening._fit_scores`` by scikit-learn's ``GaussianMixture``, as the coarsening fitted until 6 December
    2026: one block per fit on ``threads`` threads, BLAS limited to ``blas`` threads (``None``: free)."""
    from concurrent.futures import ThreadPoolExecutor

    import threadpoolctl
    from sklearn.mixture import GaussianMixture

    def one(block):
        gm = GaussianMixture(n_components=k, covariance_type="full", reg_covar=coarsening.REG_COVAR, max_iter=300,
                             random_state=seed, init_params="k-means++").fit(block)
        return coarsening._fitted_scores(gm.weights_, gm.means_, gm.covariances_, gm.bic(block), points, padded)

    limits = contextlib.nullcontext() if blas is None else threadpoolctl.threadpool_limits(limits=blas)
    with limits, ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, list(blocks)))


def _terms_gap(a: dict, b: dict) -> float:
    """The largest relative difference between two error_terms results' terms."""
    gap = 0.0
    for name in ("score", "log density"):
        ref = np.asarray(b[name], float)
        gap = max(gap, float(np.max(np.abs(np.asarray(a[name], float) - ref) / np.maximum(np.abs(ref), 1e-300))))
    return gap


def _check(ok: bool, text: str) -> str:
    """The check's text; a failed check is remembered and makes the script exit with status 1."""
    if not ok:
        FAILED.append(text)
    return text if ok else f"FAILED: {text}"


def _timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


_RESIDUAL_DRAWS = jax.jit(jax.vmap(mixture_score, in_axes=(0, 0, 0, None)))  # the old score_draws' program


def residual_mean_score(weights, means, cov_chol, x, chunk: int = 2048):
    """The old posterior-mean score: every draw's score by whitened residuals, in the old chunks of points
    (blocks of ``chunk``, each in ``_in_chunks``' memory-bounded pieces), averaged over draws."""
    return np.concatenate([_in_chunks(_RESIDUAL_DRAWS, (weights, means, cov_chol), x[i:i + chunk], chunk)[0].mean(axis=0)
                           for i in range(0, len(x), chunk)])


def old_laplace_covariance_root(hessian):
    """``laplace_covariance(None, None, root=True, hessian=hessian)`` as it was until December 2026, whose factor
    (``[1]``) a Laplace posterior's draws took: the clipped covariance copied to the device and back, the factor
    inverted too, all three returned on the device."""
    import scipy.linalg

    var, vec = sampler._clipped_variances(np.asarray(hessian, np.float64))
    cov = (vec * var) @ vec.T
    cov = jnp.asarray(0.5 * (cov + cov.T))
    chol = np.linalg.cholesky(np.asarray(cov))
    return cov, jnp.asarray(chol), jnp.asarray(scipy.linalg.solve_triangular(chol, np.eye(len(chol)), lower=True))


def traced_lbfgs(potential, params, max_steps: int):
    """The old polish of one start, traced so that ``vmap`` polishes all starts at once: the polish's own search
    (``sampler.lbfgs_search``: optax's L-BFGS in one loop), never worse than ``params``."""
    flat, unravel = ravel_pytree(params)
    start = potential(params)
    out, end = sampler.lbfgs_search(lambda v: potential(unravel(v)), flat, max_steps, start)
    return unravel(jnp.where(jnp.isfinite(start) & jnp.isfinite(end) & (end <= start), out, flat))


def arviz_loo_densities(cell_log_lik, counts):
    """``stacking.chain_loo_densities`` as it was (power 1): ``arviz.psislw`` on each chain's cells."""
    import warnings

    import arviz as az

    point = np.asarray(cell_log_lik, np.float64) / np.asarray(counts, np.float64)
    lpd, khat = [], []
    for chain in point:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            log_w, k = az.psislw(-chain.T)
        terms = np.asarray(log_w) + chain.T
        top = terms.max(axis=1, keepdims=True)
        lpd.append(top[:, 0] + np.log(np.exp(terms - top).sum(axis=1)))
        khat.append(np.asarray(k))
    return np.asarray(lpd), np.asarray(khat)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default="lorenz63", help="spec file or shipped study name")
    parser.add_argument("--members", type=int, default=None, help="smaller data (built-in systems)")
    parser.add_argument("--cells", type=int, default=None)
    parser.add_argument("--components", type=int, default=None)
    parser.add_argument("--draws", type=int, default=64, help="draws of the posterior-mean score (the gap's 64)")
    parser.add_argument("--points", type=int, default=100_000, help="snapshots it is evaluated at (at most the data's)")
    parser.add_argument("--cell-draws", type=int, default=1000, help="draws scored at the cells ([score] max_draws)")
    parser.add_argument("--starts", type=int, default=None, help="MAP searches (default: the spec's map_starts)")
    parser.add_argument("--adam", type=int, default=None, help="Adam steps before the polish (default: the spec's)")
    parser.add_argument("--hessians", type=int, default=16, help="Hessians whose Laplace roots item 3 times (a "
                        "Laplace posterior's distinct optima: Lorenz-63's 16, Kuramoto-Sivashinsky D = 4's 64)")
    parser.add_argument("--psis-chains", type=int, default=4, help="chains the cell draws are split into (row 5)")
    args = parser.parse_args(argv)
    spec = spec_with(args.spec, {"data": {"members": args.members}, "partition": {"cells": args.cells},
                                 "mixture": {"components": args.components}})
    _, z, part = study_partition(spec)
    k = spec.mixture.components
    rows = []

    # 1. the error terms' fits
    coarsening.error_terms(z, k, part.points, part.counts, seed=0)  # untimed: compiles the EM and the shared score
    fit = coarsening._fit_scores
    try:
        coarsening._fit_scores = functools.partial(sklearn_fit_scores, threads=1, blas=None)
        old_s, old = _timed(lambda: coarsening.error_terms(z, k, part.points, part.counts, seed=0))
        coarsening._fit_scores = functools.partial(sklearn_fit_scores, threads=worker_threads(), blas=1)
        threaded_s, threaded = _timed(lambda: coarsening.error_terms(z, k, part.points, part.counts, seed=0))
    finally:
        coarsening._fit_scores = fit
    new_s, new = _timed(lambda: coarsening.error_terms(z, k, part.points, part.counts, seed=0))
    rows.append((f"error_terms: scikit-learn's fits on {worker_threads()} threads, BLAS on one thread each (until 6 "
                 "December 2026)", old_s, threaded_s, _check(_terms_gap(threaded, old) <= 1e-12,
                                                            f"largest relative difference {_terms_gap(threaded, old):.1e}")))
    rows.append(("error_terms: the fits of each K at once by compiled EM (em.fit_mixtures)", old_s, new_s,
                 _check(new["reference"] == old["reference"] and _terms_gap(new, old) <= 1e-9,
                        f"largest relative difference {_terms_gap(new, old):.1e}")))
    every_s, every = _timed(lambda: coarsening.error_terms(z, k, part.points, part.counts, seed=0, ladder=False))
    # the ladder's rule differs from BIC's best of every reference only where 2K lost to K and a richer one beat it
    same = every == new
    rows.append(("error_terms: the richer references as a ladder (old: every one fitted)",
                 every_s, new_s, _check(same or (new["reference"] == 0 and every["reference"] > 2 * k),
                                        "identical terms" if same else
                                        f"references {every['reference']} against {new['reference']} (the rule's "
                                        "one difference)")))

    # 3. the MAP searches' polish (first: its optimum gives the draws of row 2)
    m = spec.mixture
    prior = build_prior(part, m.dirichlet_alpha, m.mean_scale, m.scale_prior, m.lkj_eta)
    model = functools.partial(mixture_model, block_rows="auto")
    model_args = (expected_quadratic_features(part.points, part.cell_covariances), jnp.asarray(part.counts), prior)
    init = unconstrain_fn(model, model_args, {}, initial_values(part))
    starts = args.starts or max(spec.sampler.map_starts, 2)
    adam = args.adam if args.adam is not None else spec.sampler.map_steps
    whole_s, (_, e_whole, _) = _timed(lambda: sampler.find_map(jax.random.key(0), model_args, init, starts, adam,
                                                                model=model, return_all=True, polish=0, split=False))
    split_s, (_, e_split, searched) = _timed(lambda: sampler.find_map(jax.random.key(0), model_args, init, starts,
                                                                       adam, model=model, return_all=True, polish=0))
    gap = float(np.max(np.abs(e_whole - e_split) / np.abs(e_whole)))
    rows.append((f"Adam steps of {starts} MAP searches, {adam} each ({jax.local_device_count()} devices, compilation "
                 "included)", whole_s, split_s, _check(gap <= 1e-9, f"largest relative potential difference {gap:.1e}")))

    def potential(params):
        return potential_energy(model, model_args, {}, params)

    polish = sampler.SamplerConfig().map_polish  # find_map's polish (not a spec setting)
    batched = jax.vmap(lambda p: traced_lbfgs(potential, p, polish))
    old_s, old = _timed(lambda: sampler._over_devices(lambda tree, _: batched(tree))(searched, ()))
    e_old = np.asarray(jax.vmap(potential)(old))
    new_s, (split, e_split) = _timed(lambda: sampler.polish_optima(potential, searched, polish))
    rows.append((f"L-BFGS polish of {starts} MAP searches (old: vmapped, {jax.local_device_count()} devices; new: "
                 f"each start one call, {sampler.POLISH_THREADS} threads; compilation included)", old_s, new_s,
                 _check(abs(e_old.min() - e_split.min()) <= 1e-6 * abs(e_old.min()),
                        f"best potential {e_old.min():.6f} / {e_split.min():.6f}")))

    # 2. the posterior-mean score of Laplace draws at the best optimum
    best = jax.tree_util.tree_map(lambda leaf: leaf[int(np.argmin(e_split))], split)
    hessian = sampler.hessian_matrix(potential, best)
    hessians = np.broadcast_to(hessian, (args.hessians,) + hessian.shape)
    old_s, old = _timed(lambda: np.stack([np.asarray(old_laplace_covariance_root(h)[1]) for h in hessians]))
    new_s, new = _timed(lambda: np.stack([np.linalg.cholesky(sampler._clipped_covariance(h)) for h in hessians]))
    rows.append((f"the Laplace draws' roots of {args.hessians} Hessians (old: laplace_covariance's root=True as it was; "
                 "new: _laplace_flat's, no inverse factor)", old_s, new_s,
                 _check(np.array_equal(old, new), "the same bits" if np.array_equal(old, new)
                        else f"largest difference {np.max(np.abs(old - new)):.1e}")))
    w, mu, chol = sampler.laplace_draws(jax.random.key(1), model, model_args, best, hessian, args.draws)
    w, mu, chol = (np.asarray(a, np.float64) for a in (w, mu, chol))
    x = np.asarray(z[:args.points], np.float64)
    residual_mean_score(w, mu, chol, x)  # untimed: both ways compiled first, so the rows time the work alone
    posterior_mean_score(w, mu, chol, x)
    old_s, old = _timed(lambda: residual_mean_score(w, mu, chol, x))
    new_s, new = _timed(lambda: posterior_mean_score(w, mu, chol, x))
    rel = float(np.max(np.linalg.norm(old - new, axis=1) / np.maximum(np.linalg.norm(old, axis=1), 1e-12)))
    rows.append((f"posterior-mean score, {args.draws} draws at {len(x):,} snapshots", old_s, new_s,
                    _check(rel < 1e-9, f"max relative difference {rel:.1e}")))
    w, mu, chol = (np.asarray(a, np.float64) for a in sampler.laplace_draws(jax.random.key(2), model, model_args,
                                                                              best, hessian, args.cell_draws))
    residual_draws = _RESIDUAL_DRAWS
    _in_chunks(residual_draws, (w, mu, chol), part.points, 2048)  # untimed, as above
    score_draws(w, mu, chol, part.points)
    old_s, old = _timed(lambda: _in_chunks(residual_draws, (w, mu, chol), part.points, 2048))
    new_s, new = _timed(lambda: score_draws(w, mu, chol, part.points))
    rel = float(np.max(np.abs(old[0] - new[0]) / np.maximum(np.abs(old[0]), 1.0)))
    rows.append((f"draws' scores and log densities, {args.cell_draws} draws at the {len(part.points):,} cells",
                    old_s, new_s, _check(rel < 1e-9 and np.allclose(old[1], new[1], rtol=1e-12, atol=1e-9),
                                         f"largest score difference over max(1, abs(score)) {rel:.1e}")))

    # 5. PSIS-LOO of the cells per chain: those draws as chains, each cell's log-likelihood term c_m log p(x_m | theta)
    chains = args.psis_chains
    cell_ll = (np.asarray(part.counts, np.float64) * new[1][: len(new[1]) // chains * chains]).reshape(
        chains, -1, len(part.points))
    old_s, old = _timed(lambda: arviz_loo_densities(cell_ll, part.counts))
    new_s, new = _timed(lambda: chain_loo_densities(cell_ll, part.counts))
    diff = float(max(np.max(np.abs(old[0] - new[0])), np.max(np.abs(old[1] - new[1]))))
    rows.append((f"PSIS-LOO densities of {chains} chains x {cell_ll.shape[1]} draws at the {len(part.points):,} cells",
                 old_s, new_s, _check(diff < 1e-9, f"largest difference (log density, k) {diff:.1e}")))

    print_table(f"study {spec.study.name}: K = {k}, {len(z):,} snapshots, {len(part.points)} cells, "
                f"P = {ravel_pytree(init)[0].size}", rows)


def print_table(title: str, rows):
    """``title``, then the table of ``rows`` ``(piece, old seconds, new seconds, check)``; exits with status 1
    where a check failed (:func:`_check`)."""
    print(title)
    print("| piece | old way s | new way s | old / new | check |")
    print("| --- | --- | --- | --- | --- |")
    for name, old_s, new_s, check in rows:
        print(f"| {name} | {old_s:.2f} | {new_s:.2f} | {old_s / new_s:.2f} | {check} |")
    if FAILED:
        raise SystemExit(f"checks failed: {'; '.join(FAILED)}")


if __name__ == "__main__":
    main()
