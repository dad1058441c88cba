r"""A study's mixture against point fits of the same number of components, over seeds.

``kgmm-bayes compare`` fits each baseline once, with one seed.  On a likelihood with many local
optima (Lorenz-96, Lorenz-63: 32 components) a point fit's relative entropy depends on the optimum its
seed lands in, so one compare cannot tell a worse estimator from a worse draw.  Here the mixtures
themselves are compared, sampled directly (no interpolant, no time step, so what differs is the
density alone):

* the study's model: the posterior-predictive mixture of the draws that drive its reduced-order model
  (``BayesianKGMM.drift_draws``: the first posterior's where the coarsening sampled two), as many of them
  evenly spaced as its ``"mixture"`` drift pools (``[langevin] mixture_draws``; ``--draws`` to change);
  and the kept posterior's (the bands'), where it is another;
* scikit-learn's ``BayesianGaussianMixture`` (compare's baseline, :func:`kgmm_bayes.baselines.fit_sklearn`
  with the spec's ``[baselines]`` settings) and ``GaussianMixture`` (maximum likelihood by EM on every
  training snapshot), ``--seeds`` seeds each;
* the equal-weight average of the EM fits: what averaging over optima alone gives.

Columns: the relative entropy (mean over marginals, against the reference set; as many samples as
the study's ``rom_samples.npy``, key fixed), the mean held-out log density per reference snapshot
(z-scored units; higher is better) and the ratio of the relative entropy to the baseline, the mean
over the ``BayesianGaussianMixture`` seeds measured in the same run.  A last row gives the spread of a
fixed mixture's relative entropy over ``--resamples`` sample sets: the figure's own sampling noise.

    python benchmarks/bench_mixture_fits.py kgmm-runs/lorenz96_slow --seeds 4
    python benchmarks/bench_mixture_fits.py lorenz96_slow   # a shipped study (or spec file), run first
"""
from __future__ import annotations

import argparse
import time
import warnings

import kgmm_bayes  # noqa: F401
import jax
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from kgmm_bayes.baselines import fit_sklearn
from kgmm_bayes.bayes.score import evenly_spaced_draws, score_draws
from kgmm_bayes.errors import InputError
from kgmm_bayes.metrics.density import marginal_relative_entropies

from bench_floor import predictive_samples
from bench_interpolant import study_result

BENCH_KEY = 20261201  # the samples' and the fits' keys: none of a study's


def heldout_log_density(draws, z) -> float:
    """Mean over ``z`` of the log density of the equal-weight mixture of the draws."""
    logps = score_draws(*draws, z)[1]  # (S, n)
    return float(np.mean(np.logaddexp.reduce(logps, axis=0) - np.log(len(logps))))


def point(weights, means, covariances):
    """One mixture as a single draw ``(1, ...)``."""
    return (np.asarray(weights)[None] / np.sum(weights), np.asarray(means)[None],
            np.linalg.cholesky(np.asarray(covariances))[None])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a finished study's output folder, or a study to run first")
    parser.add_argument("--seeds", type=int, default=4, help="seeds of each point fit")
    parser.add_argument("--draws", type=int, default=None,
                        help="posterior draws pooled (evenly spaced; 0: all); default [langevin] mixture_draws")
    parser.add_argument("--resamples", type=int, default=3, help="sample sets of one mixture: the figure's noise")
    parser.add_argument("--settings", default="", help="spec sections overriding a study run first (TOML, \\n)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.resamples < 1:
        raise SystemExit("--seeds and --resamples must be at least 1")
    result = study_result(args.folder, args.settings, "bench-mixture-fits-")
    zscore, k = result.zscore, result.spec.mixture.components
    count = result.spec.langevin.mixture_draws if args.draws is None else args.draws
    baselines = result.spec.baselines
    k_fits = baselines.sklearn_components or k  # the point fits' components, as compare's
    train, reference = result.data.train, result.data.reference
    z, z_ref = (np.asarray(zscore.forward(a), np.float64) for a in (train, reference))
    n = len(result.rom_samples)
    sample_key, fit_key = jax.random.split(jax.random.key(BENCH_KEY))
    grid = result.spec.metrics.grid_points

    def measure(draws):
        re = marginal_relative_entropies(reference, predictive_samples(sample_key, draws, zscore, n), grid)
        return float(np.mean(re)), heldout_log_density(draws, z_ref)

    rows = []  # (name, relative entropy, held-out log density, fit seconds)
    model = evenly_spaced_draws(result.drift_draws, count)  # as the "mixture" drift picks them
    rows.append((f"study's model: posterior-predictive mixture of {len(model[0])} drift draws", *measure(model), None))
    if result.model_draws is not None:
        kept = evenly_spaced_draws(result.draws, count)
        rows.append((f"study's kept posterior (the bands'), {len(kept[0])} draws", *measure(kept), None))
    families = {"scikit-learn BayesianGaussianMixture": [], "scikit-learn GaussianMixture (EM)": []}
    em_fits = []
    for seed in range(args.seeds):
        key = jax.random.fold_in(fit_key, seed)
        start = time.perf_counter()
        fit = fit_sklearn(key, z, k_fits, baselines.sklearn_max_iter)
        seconds = time.perf_counter() - start
        values = measure(tuple(np.asarray(a)[None] for a in fit.mixture))
        families["scikit-learn BayesianGaussianMixture"].append(values)
        rows.append((f"scikit-learn BayesianGaussianMixture, seed {seed}", *values, seconds))
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=ConvergenceWarning)
            em = GaussianMixture(k_fits, covariance_type="full", max_iter=500,
                                 random_state=int(jax.random.randint(key, (), 0, 2**31 - 1))).fit(z)
        seconds = time.perf_counter() - start
        em_fits.append(point(em.weights_, em.means_, em.covariances_))
        values = measure(em_fits[-1])
        families["scikit-learn GaussianMixture (EM)"].append(values)
        rows.append((f"scikit-learn GaussianMixture (EM), seed {seed}", *values, seconds))
    pooled = tuple(np.concatenate(parts) for parts in zip(*em_fits))
    rows.append((f"equal-weight average of the {args.seeds} EM fits", *measure(pooled), None))
    baseline = float(np.mean([v[0] for v in families["scikit-learn BayesianGaussianMixture"]]))

    noise = [np.mean(marginal_relative_entropies(
        reference, predictive_samples(jax.random.fold_in(sample_key, i + 1), model, zscore, n), grid))
        for i in range(args.resamples)]
    print(f"study {result.spec.study.name} ({args.folder}): K = {k} (point fits {k_fits}), {len(z)} training and "
          f"{len(z_ref)} reference snapshots, {n} samples per mixture")
    print("| mixture | relative entropy (mean) | held-out log density per snapshot | ratio to baseline | fit (s) |")
    print("| --- | --- | --- | --- | --- |")
    for name, re, ll, seconds in rows:
        fit = "" if seconds is None else f"{seconds:.1f}"
        print(f"| {name} | {re:.4g} | {ll:.4f} | {re / baseline:.2f} | {fit} |")
    for name, values in families.items():
        res = [v[0] for v in values]
        print(f"| {name}: min / mean / max over {len(res)} seeds | {min(res):.4g} / {np.mean(res):.4g} / "
              f"{max(res):.4g} | {np.mean([v[1] for v in values]):.4f} (mean) | {np.mean(res) / baseline:.2f} | |")
    print(f"| the model's mixture, {args.resamples} other sample sets (sampling noise) | "
          f"{min(noise):.4g} .. {max(noise):.4g} | | | |")


if __name__ == "__main__":
    try:
        main()
    except InputError as exc:
        raise SystemExit(str(exc))
