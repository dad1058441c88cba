"""A study's reduced-order model against an independent long run of the true system.

The study's own relative entropy compares the model with the reference set, an independent run
of the training set's size: that figure carries the reference set's own sampling noise.  Here the
model (``rom_samples.npy`` of a finished study folder) is compared with a run of the same system
``--factor`` times as long, simulated with the keys of seed 2**31 - 1 (no shipped study's), and set
against the sampling floor: the relative entropy between two independent data sets of the training
size (the reference set against the training set, as the study's own floor, and ``--factor // 2``
disjoint pairs cut from the long run; the floor is their mean).  Both sides of the floor carry
sampling noise while the long run carries little, so the training set's own relative entropy
against the long run is printed as well: the stricter yardstick.  Also measured against the long run: draws straight from the
posterior-predictive mixture of the draws that drive the model (``BayesianKGMM.drift_draws``, as many as
the ``"mixture"`` drift pools, all of them for the interpolant's; as many samples as the model's; no
interpolant, no time step) and
the training set itself.  Each of those is scored against the long run smoothed as a set of its own size
(``matched``, ``kgmm_bayes.metrics.density``): at its own, narrower, Scott bandwidth the long run alone would add
0.001 to a training-size set of Kuramoto-Sivashinsky D = 4 (seven times the floor).  The floor's pairs and the
study's own figure compare sets of about one size, unmatched.  Built-in systems only (user
data have no true system to re-run).

    python benchmarks/bench_floor.py kgmm-runs/reduced_1d --factor 10
    python benchmarks/bench_floor.py reduced_1d   # a shipped study (or spec file), run first

A study name or spec file (not a folder) is run first into a temporary folder, with
``--settings`` TOML overriding its sections.

Rows: estimator, mean marginal relative entropy against the long run, per marginal, and the
ratio to the floor (the baseline row).  The issue's goal: the model within 2x of the floor.

``--runs N`` adds a second table: the study's fitted drifts (the interpolant where one was trained, and the
posterior-predictive mixture of ``[langevin] mixture_draws`` draws, with the study's score correction where it made
one, as ``BayesianKGMM.simulate`` runs them) and scikit-learn's variational mixture (fitted as ``kgmm-bayes compare``
fits it: the same key, K and iterations), each run ``N`` times in Langevin time (the spec's ``[langevin]`` schedule and
box), run ``r`` of every drift from the same starting particles (drawn from the cells by count) and the same noise;
each run's relative entropy against the long run.  Rows: the mean over the runs with its standard error, and the
paired difference from scikit-learn's (the baseline row) in the same runs.  One reference set of the training size
carries sampling noise as large as the differences between close models (the default study: floor 0.0007,
differences 0.0001); the long run carries a tenth of it.

    python benchmarks/bench_floor.py kgmm-runs/reduced_1d --runs 8
    python benchmarks/bench_floor.py kgmm-runs/reduced_1d --runs 3 --length 10 --factor 20

``--length L`` makes each of those runs L times the spec's ``[langevin] steps`` (after the same burn-in): the
relative entropy of a run carries its own samples' noise as well as the drift's bias, and at the spec's length that
noise is as large as close drifts' differences (the default study's drifts all near 0.0006 against the long run).
"""
from __future__ import annotations

import argparse
import time

import kgmm_bayes  # noqa: F401
import jax
import numpy as np

from kgmm_bayes.baselines import fit_sklearn
from kgmm_bayes.bayes.score import evenly_spaced_draws
from kgmm_bayes.data.systems import get_system
from kgmm_bayes.errors import InputError
from kgmm_bayes.metrics.density import marginal_relative_entropies
from kgmm_bayes.rom.langevin import initial_particles, simulate_langevin
from kgmm_bayes.spec import BASELINES, load_spec, shipped_studies
from kgmm_bayes.study.compare import LONG_REFERENCE_KEY, long_reference_run
from kgmm_bayes.study.stages import model_drift, study_keys

from bench_interpolant import study_result


def model_mixture(result):
    """The draws whose posterior-predictive mixture the study's model follows: the ``"mixture"`` drift's
    ``[langevin] mixture_draws`` of ``drift_draws``, or all of them (the interpolant learns their mean)."""
    lg = result.spec.langevin
    return evenly_spaced_draws(result.drift_draws, lg.mixture_draws if lg.drift == "mixture" else 0)


def predictive_samples(key, draws, zscore, n: int) -> np.ndarray:
    """``n`` draws from the posterior-predictive mixture (physical units): a posterior draw
    uniformly, a component by its weight, then that Gaussian."""
    weights, means, cov_chol = (np.asarray(a) for a in draws)
    k_draw, k_comp, k_noise = jax.random.split(key, 3)
    s = np.asarray(jax.random.randint(k_draw, (n,), 0, weights.shape[0]))
    c = np.asarray(jax.random.categorical(k_comp, np.log(np.maximum(weights[s], 1e-300))))
    eps = np.asarray(jax.random.normal(k_noise, (n, means.shape[-1]), dtype=np.float64))
    z = means[s, c] + np.einsum("nij,nj->ni", cov_chol[s, c], eps)
    return zscore.inverse(z)


def sklearn_components(result, given: int = 0) -> int:
    """scikit-learn's K as ``kgmm-bayes compare`` fits it: ``given``, else the study's ``[baselines]
    sklearn_components`` (a study folder keeps no ``[baselines]``: then the shipped study's of the same name), else its
    ``[mixture] components``."""
    if given:
        return given
    k = result.spec.baselines.sklearn_components
    if not k and result.spec.study.name in shipped_studies():
        k = load_spec(result.spec.study.name).baselines.sklearn_components
    return k or result.spec.mixture.components


def drift_runs(result, long_run, runs: int, k_sklearn: int, length: int = 1) -> list:
    """``[(name, relative entropies (runs,))]``: the study's drifts and scikit-learn's (``k_sklearn`` components), each
    run ``runs`` times in Langevin time, run ``r`` of each from the same particles and noise, against ``long_run``
    (physical units); each run ``length`` times the spec's ``[langevin] steps`` (after the same burn-in, which
    ``simulate_langevin`` runs apart), so that its samples' own noise falls below the drifts' differences."""
    spec = result.spec
    lg, b = spec.langevin, spec.baselines
    ways = (["interpolant"] if result.interpolant is not None else []) + ["mixture"]
    drifts = [("Bayesian, interpolant drift" if way == "interpolant" else
               f"Bayesian, mixture drift ({lg.mixture_draws} draws)",
               model_drift(spec._replace(langevin=lg._replace(drift=way)), result.interpolant, result.drift_draws,
                           result.correction)) for way in ways]
    z = result.zscore.forward(result.data.train)
    baseline_key = study_keys(spec.study.seed + 1_000_003)[BASELINES.index("sklearn")]  # as compare's
    sk = fit_sklearn(baseline_key, z, k_sklearn, b.sklearn_max_iter)
    drifts.append((f"scikit-learn (K = {k_sklearn})", (sk.drift_fn, sk.drift_params)))
    box = float(result.metrics["langevin"]["box"])
    out = {name: [] for name, _ in drifts}
    for r in range(runs):
        x0, run_key = initial_particles(jax.random.fold_in(jax.random.key(LONG_REFERENCE_KEY), r),
                                        result.partition.points, result.partition.counts, lg.particles)
        for name, (fn, params) in drifts:
            run = simulate_langevin(run_key, fn, params, x0, lg.dt, length * lg.steps, lg.burn_in, lg.thin, box)
            kept = result.zscore.inverse(run.kept_samples())
            out[name].append(float(np.mean(marginal_relative_entropies(long_run, kept, spec.metrics.grid_points,
                                                                       matched=True))))
    return [(name, np.asarray(values)) for name, values in out.items()]


def print_drift_runs(rows, length: int = 1) -> None:
    """The ``--runs`` table: each drift's mean and standard error over the runs, and minus scikit-learn's (the last
    row, the baseline) paired over the runs (``length``: the runs' length, in the spec's)."""
    base = rows[-1][1]

    def mean_se(v):
        return f"{v.mean():.4g} ± {v.std(ddof=1) / np.sqrt(len(v)):.2g}" if len(v) > 1 else f"{v.mean():.4g}"

    print(f"drifts in Langevin time against the long run, {len(base)} runs each (the same starts and noise per run)"
          + (f", each {length} times the spec's length" if length > 1 else ""))
    print("| drift | relative entropy (mean ± s.e.) | minus scikit-learn, paired | ratio to scikit-learn |")
    print("| --- | --- | --- | --- |")
    for name, values in rows:
        print(f"| {name} | {mean_se(values)} | {mean_se(values - base)} | {values.mean() / base.mean():.2f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a finished study's output folder, or a study to run (built-in systems)")
    parser.add_argument("--factor", type=int, default=10, help="the long run's members, in training sets")
    parser.add_argument("--settings", default="", help="spec sections overriding a study run first (TOML, \\n)")
    parser.add_argument("--runs", type=int, default=0,
                        help="also run the study's drifts and scikit-learn's this many times each (second table)")
    parser.add_argument("--sklearn-components", type=int, default=0,
                        help="scikit-learn's K in the second table (default: as kgmm-bayes compare fits it)")
    parser.add_argument("--length", type=int, default=1,
                        help="the second table's runs this many times the spec's [langevin] steps (after its burn-in)")
    args = parser.parse_args(argv)
    if args.runs < 0 or args.runs == 1:
        raise SystemExit("--runs must be 0 (no second table) or at least 2 (a standard error needs two runs)")
    if args.length < 1:
        raise SystemExit("--length must be at least 1 (the runs' length, in the spec's [langevin] steps)")
    if args.factor < 2:
        raise SystemExit("--factor must be at least 2 (the floor needs a pair of training-size sets)")
    result = study_result(args.folder, args.settings, "bench-floor-")
    ds = result.spec.data
    if ds.system is None:
        raise SystemExit(f"{args.folder}: user data have no true system to re-run")
    system = get_system(ds.system)
    train, reference = result.data.train, result.data.reference
    n = len(train)
    members = system.members if ds.members is None else ds.members
    start = time.perf_counter()
    _, predictive_key = jax.random.split(jax.random.key(LONG_REFERENCE_KEY))
    long = long_reference_run(result.spec, args.factor)
    long_run = long.reshape(-1, system.dim)
    simulated = time.perf_counter() - start
    # disjoint training-size sets of whole members from the long run
    pieces = [long[i * members:(i + 1) * members].reshape(-1, system.dim) for i in range(args.factor)]
    grid = result.spec.metrics.grid_points

    def rel(reference_set, model_set, matched=False):  # matched: the long run smoothed as a set of the other's size
        return marginal_relative_entropies(reference_set, model_set, grid, matched=matched)

    pairs = [(reference, train)] + [(pieces[2 * i], pieces[2 * i + 1]) for i in range(args.factor // 2)]
    floors = np.asarray([rel(a, b) for a, b in pairs])
    floor = floors.mean(axis=0)
    rows = [("floor: two independent training-size sets (mean of %d pairs)" % len(pairs), floor),
            ("reduced-order model (rom_samples.npy)", rel(long_run, result.rom_samples, True)),
            ("posterior-predictive mixture draws (of the draws that drive the model)",
             rel(long_run, predictive_samples(predictive_key, model_mixture(result), result.zscore,
                                              len(result.rom_samples)), True)),
            ("training set", rel(long_run, train, True)),
            ("study's own figure: model vs reference set", rel(reference, result.rom_samples))]
    print(f"study {result.spec.study.name} ({args.folder}): {n} training snapshots; long run {len(long_run)} "
          f"snapshots ({members * args.factor} members, key {LONG_REFERENCE_KEY}, simulated in {simulated:.1f} s)")
    print(f"floor pairs: {', '.join(f'{np.mean(f):.3g}' for f in floors)}")
    print("| against the long run | relative entropy (mean) | per marginal | ratio to floor |")
    print("| --- | --- | --- | --- |")
    for name, re in rows:
        per = ", ".join(f"{v:.3g}" for v in re)
        print(f"| {name} | {np.mean(re):.4g} | {per} | {np.mean(re) / np.mean(floor):.2f} |")
    if args.runs:
        print()
        print_drift_runs(drift_runs(result, long_run, args.runs, sklearn_components(result, args.sklearn_components),
                                    args.length), args.length)


if __name__ == "__main__":
    try:
        main()
    except InputError as exc:
        raise SystemExit(str(exc))
