r"""Calibration as a new user meets it: a system the package does not ship, a spec naming only the file.

The curved valley ("banana") density, independent of ``kgmm_bayes.data.systems``:

.. math::

    \log p(x, y) = -\frac{x^2}{2} - \frac{(y - a x^2)^2}{2 \sigma^2} + \text{const},

sampled as a trajectory of the overdamped Langevin dynamics :math:`dX = \nabla \log p\, dt +
\sqrt 2\, dW` (Euler-Maruyama here, in NumPy), thinned, written to ``traj.npy``, and fitted with a
spec holding only ``[data] path``.  The truth is exact: :math:`s_x = -x + 2 a x (y - a x^2) /
\sigma^2`, :math:`s_y = -(y - a x^2)/\sigma^2`, and evaluation points are drawn exactly from
:math:`p` (:math:`x \sim N(0, 1)`, :math:`y \mid x \sim N(a x^2, \sigma^2)`).  Per size: the
coverage of the study's score band at those points (and of the interpolant's band), the
posterior-mean score's relative error, the coarsening chosen, wall time.

    python benchmarks/bench_user_calibration.py --sizes 10000 100000
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import kgmm_bayes
from kgmm_bayes.metrics import weighted_score_error

A, SIGMA = 1.0, 0.5


def true_score(p):
    x, y = p[:, 0], p[:, 1]
    r = y - A * x**2
    return np.stack([-x + 2 * A * x * r / SIGMA**2, -r / SIGMA**2], axis=1)


def trajectory(n, members, thin, dt, seed):
    """``(members, n // members, 2)`` snapshots of the Langevin dynamics, after a burn-in."""
    rng = np.random.default_rng(seed)
    state = np.stack([rng.normal(size=members), A + SIGMA * rng.normal(size=members)], axis=1)
    per_member = n // members
    out = np.empty((members, per_member, 2))
    for step in range(2000 + per_member * thin):
        state = state + true_score(state) * dt + np.sqrt(2 * dt) * rng.normal(size=state.shape)
        if step >= 2000 and (step - 2000) % thin == thin - 1:
            out[:, (step - 2000) // thin] = state
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--thin", type=int, default=50, help="Langevin steps (dt = 0.005) between snapshots")
    parser.add_argument("--points", type=int, default=2000, help="evaluation points drawn from p")
    parser.add_argument("--settings", default="", help="extra spec lines (TOML) for quick runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed + 1)
    ex = rng.normal(size=args.points)
    points = np.stack([ex, A * ex**2 + SIGMA * rng.normal(size=args.points)], axis=1)
    truth = true_score(points)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for n in args.sizes:
            traj = trajectory(int(n / (1 - 0.2)), args.members, args.thin, 0.005, args.seed)  # 20% held out
            np.save(os.path.join(folder, "traj.npy"), traj)
            with open(os.path.join(folder, "valley.toml"), "w") as fh:
                fh.write('[data]\npath = "traj.npy"\n' + args.settings.replace("\\n", "\n"))
            start = time.perf_counter()
            result = kgmm_bayes.run_study(kgmm_bayes.load_spec(os.path.join(folder, "valley.toml")),
                                          out_dir=os.path.join(folder, f"run{n}"), seed=args.seed)
            wall = time.perf_counter() - start
            band = result.score(points)
            inside = np.all((truth >= band.lower) & (truth <= band.upper), axis=1)
            iband = result.score(points, drift="interpolant")
            inside_i = np.all((truth >= iband.lower) & (truth <= iband.upper), axis=1)
            covered = np.mean((truth >= band.lower) & (truth <= band.upper))
            error = weighted_score_error(band.mean, truth, np.ones(len(points)))
            c = result.metrics["posterior"]["coarsening"]
            rows.append((n, len(result.data.train), result.metrics["partition"]["components"], covered, inside.mean(),
                         inside_i.mean(), error, np.median(band.upper - band.lower), c["zeta"], wall))
    print("| N | training snapshots | K | coverage (per coordinate) | coverage (both coordinates) | "
          "interpolant band coverage (both) | relative error of the mean | median band width | zeta | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, train, k, cov, both, both_i, err, width, zeta, wall in rows:
        print(f"| {n} | {train} | {k} | {cov:.3f} | {both:.3f} | {both_i:.3f} | {err:.3f} | {width:.3f} | "
              f"{zeta:.3f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
