r"""The interpolant against the score it learns, on a finished study's posterior.

For a study folder (``kgmm-bayes run ... --out FOLDER``; or a shipped study's name or a spec, which
is run first into a temporary folder, with ``--settings`` TOML overriding its sections), each
variant ``snapshots:steps:hidden`` (``hidden`` as ``256x256x256``) trains the network as the study would with those
``[interpolant]`` settings (:func:`kgmm_bayes.study.stages.interpolant_training_set`: the cell
centres, plus that many training snapshots with the posterior-mean score there in closed form) and
reports:

* its error against the posterior-mean score at the study's 4,096 held-out training snapshots
  (never trained on), as the relative RMS ``sqrt(sum |f - s|^2 / sum |s|^2)``, and the same at the
  points it trained on;
* with ``--simulate``: the relative entropy (mean over marginals, against the reference data) of the
  reduced-order model driven by it, in Langevin time with the spec's ``[langevin]`` schedule and one
  key for every variant (common random numbers);
* wall times: training targets and fit, and the model's run.

The first row is the baseline measured in the same run: the study's own ``[interpolant]`` settings
retrained with the benchmark's key; the ratio column is each row's held-out error over it.

    python benchmarks/bench_interpolant.py FOLDER 0:4000:128x64 10000:8000:256x256x256 --simulate
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import tomllib
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from kgmm_bayes import load_result, load_spec, run_study
from kgmm_bayes.bayes.score import posterior_mean_score
from kgmm_bayes.metrics import marginal_relative_entropies
from kgmm_bayes.rom.interpolant import fit_interpolant
from kgmm_bayes.study.stages import heldout_indices, interpolant_training_set


def relative_rms(pred, target, weights=None):
    w = np.ones(len(target)) if weights is None else np.asarray(weights, np.float64)
    return float(np.sqrt(np.sum(w[:, None] * (pred - target) ** 2) / np.sum(w[:, None] * target**2)))


def study_result(target: str, settings: str, prefix: str):
    """A finished study's folder loaded, or a study (name or spec file) run first into a temporary
    folder with ``settings`` (TOML, ``\\n`` for newlines) overriding its sections."""
    if os.path.isdir(target):
        return load_result(target)
    overrides = tomllib.loads(settings.replace("\\n", "\n")) if settings else None
    return run_study(load_spec(target, overrides), tempfile.mkdtemp(prefix=prefix))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a study's output folder, or a study name / spec to run first")
    parser.add_argument("variants", nargs="*", help="snapshots:steps:hidden, e.g. 10000:8000:256x256x256")
    parser.add_argument("--simulate", action="store_true", help="also run the reduced-order model of each")
    parser.add_argument("--key", type=int, default=7)
    parser.add_argument("--settings", default="", help="spec sections overriding a study run first (TOML, \\n)")
    args = parser.parse_args()

    res = study_result(args.folder, args.settings, "bench-interpolant-")
    spec, itp = res.spec, res.spec.interpolant
    z = res.zscore.forward(res.data.train)
    held = z[heldout_indices(len(z))]
    draws = res.drift_draws  # the draws the study's interpolant learnt
    held_target = posterior_mean_score(*draws, held)
    summary = SimpleNamespace(mean=posterior_mean_score(*draws, res.partition.points))
    lg = spec.langevin
    study = f"{itp.snapshots}:{itp.steps}:{'x'.join(str(h) for h in itp.hidden)}"
    print(f"study {spec.study.name}: {len(res.partition.points)} cells, {len(z)} training snapshots, "
          f"{len(res.draws[0])} draws; study relative entropy {res.metrics['relative_entropy']['mean']:.5f} "
          f"(floor {res.metrics['relative_entropy']['data_floor_mean']:.2e})", flush=True)
    rows, base = [], None
    for variant in [study] + list(args.variants):
        snapshots, steps, hidden = variant.split(":")
        sp = spec._replace(interpolant=itp._replace(snapshots=int(snapshots), steps=int(steps),
                                                    hidden=tuple(int(h) for h in hidden.split("x"))))
        t0 = time.perf_counter()
        points, targets, weights = interpolant_training_set(sp, res.partition, summary, draws, z)
        t_targets = time.perf_counter() - t0
        it = sp.interpolant
        net = fit_interpolant(jax.random.key(args.key), points, targets, weights, it.hidden, it.steps,
                              it.learning_rate, batch=it.batch if len(points) > len(res.partition.points) else 0)
        t_fit = time.perf_counter() - t0 - t_targets
        train_err = relative_rms(np.asarray(net(jnp.asarray(points, jnp.float32)), np.float64), targets, weights)
        held_err = relative_rms(np.asarray(net(jnp.asarray(held, jnp.float32)), np.float64), held_target)
        base = held_err if base is None else base
        re, t_sim = float("nan"), 0.0
        if args.simulate:
            t1 = time.perf_counter()
            paths = res._replace(interpolant=net).simulate(lg.particles, lg.steps, dt=lg.dt, key=jax.random.key(5),
                                                           burn_in=lg.burn_in, thin=lg.thin)
            samples = paths.reshape(-1, paths.shape[-1])
            samples = samples[np.all(np.isfinite(samples), axis=1)]
            re = float(marginal_relative_entropies(res.data.reference, samples, spec.metrics.grid_points).mean())
            t_sim = time.perf_counter() - t1
        rows.append((("study settings " if variant == study else "") + variant, train_err, held_err,
                     held_err / base, re, t_targets, t_fit, t_sim))
        print(f"  done {variant}", flush=True)
    print()
    print("| variant (snapshots:steps:hidden) | train rel RMS | held-out rel RMS | ratio | model RE | targets s "
          "| fit s | model s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, tr, he, ratio, re, ta, fi, si in rows:
        print(f"| {name} | {tr:.3f} | {he:.3f} | {ratio:.2f} | {re:.5f} | {ta:.1f} | {fi:.1f} | {si:.1f} |")


if __name__ == "__main__":
    main()
