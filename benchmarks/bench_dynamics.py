r"""The model in the data's time on a nonlinear, non-reversible system the package does not ship.

A gradient flow plus a constant antisymmetric term,

.. math::

    dX = -(I + \gamma J)\,\nabla U(X)\,dt + \sqrt 2\,dW, \qquad
    U(x, y) = (x^2 - 1)^2 + \tfrac12 (y + \tfrac12 x)^2, \qquad J = \begin{pmatrix} 0 & 1 \\ -1 & 0 \end{pmatrix},

has the stationary density :math:`e^{-U}` for any :math:`\gamma` (the antisymmetric part adds a
divergence-free flux) but is not reversible for :math:`\gamma \ne 0`: its correlation functions
are not symmetric.  It is simulated here in NumPy (Euler-Maruyama, a small step), written to
``traj.npy`` with ``[data] interval``, and fitted as user data.  Measured:

* the model's correlation functions ``C_ij(tau)`` (all pairs, up to five of the data's
  decorrelation times) against those of an independent run of the true system ten times as long as
  the data: relative error;
  decorrelation-time ratios per coordinate;
* the posterior ensemble's 90% bands (``[ensemble] members``, one mobility per member): the share
  of the true system's ``C_ij(tau)`` (lags >= 1, all pairs) inside the correlation band, and whether
  the decorrelation-time band holds the true system's;
* the study's impulse responses (fluctuation-dissipation, ``responses.npz``) against the true
  system's, measured by direct perturbation: a copy of each of many stationary states pushed by
  ``eps`` in ``x_j`` and run with the same noise (common random numbers), ``R_ij(t) = (E x_i^eps(t) -
  E x_i(t)) / eps``: relative error and the share of (lag, i, j) where the 90% band holds the
  direct estimate.

    python benchmarks/bench_dynamics.py --snapshots 50000
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import kgmm_bayes
from kgmm_bayes.metrics.correlation import correlation_functions
from kgmm_bayes.metrics.series import decorrelation_time

GAMMA = 1.0
MOBILITY = np.array([[1.0, GAMMA], [-GAMMA, 1.0]])


def grad_u(s):
    x, y = s[..., 0], s[..., 1]
    r = y + 0.5 * x
    return np.stack([4 * x * (x**2 - 1) + 0.5 * r, r], axis=-1)


def run(state, steps, dt, rng, noise=None):
    """Euler-Maruyama from ``state`` ``(..., 2)``; ``noise`` ``(steps, ..., 2)`` reuses given increments."""
    for k in range(steps):
        xi = rng.normal(size=state.shape) if noise is None else noise[k]
        state = state - grad_u(state) @ MOBILITY.T * dt + np.sqrt(2 * dt) * xi
    return state


def trajectory(members, n, thin, dt, seed):
    rng = np.random.default_rng(seed)
    state = run(rng.normal(size=(members, 2)), 5000, dt, rng)
    out = np.empty((members, n, 2))
    for k in range(n):
        state = run(state, thin, dt, rng)
        out[:, k] = state
    return out


def direct_responses(starts, lags, thin, dt, eps, seed):
    """``R_ij(t_k)`` ``(lags + 1, 2, 2)`` by pushing ``x_j`` by ``eps`` with common random numbers."""
    rng = np.random.default_rng(seed)
    out = np.zeros((lags + 1, 2, 2))
    for j in range(2):
        base, pushed = starts.copy(), starts.copy()
        pushed[:, j] += eps
        out[0, :, j] = (pushed - base).mean(axis=0) / eps
        for k in range(1, lags + 1):
            noise = rng.normal(size=(thin,) + starts.shape)
            base, pushed = run(base, thin, dt, rng, noise), run(pushed, thin, dt, rng, noise)
            out[k, :, j] = (pushed - base).mean(axis=0) / eps
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshots", type=int, default=50_000, help="training + held-out snapshots")
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--dt", type=float, default=0.002)
    parser.add_argument("--starts", type=int, default=20_000, help="states pushed for the direct responses")
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--truth-factor", type=int, default=10, help="the true system's run: this many times the data")
    parser.add_argument("--settings", default="[mixture]\\ncomponents = 8\\n[ensemble]\\nmembers = 16\\n",
                        help="extra spec lines (TOML)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    thin = int(round(args.interval / args.dt))
    n = args.snapshots // args.members
    data = trajectory(args.members, n, thin, args.dt, args.seed)
    # independent and ten times longer than the data: the true system's C and decorrelation times, with a
    # sampling error small next to the data's (what a band about the truth is checked against)
    truth_run = trajectory(args.truth_factor * args.members, n, thin, args.dt, args.seed + 1)
    with tempfile.TemporaryDirectory() as folder:
        np.save(os.path.join(folder, "traj.npy"), data)
        with open(os.path.join(folder, "flow.toml"), "w") as fh:
            fh.write(f'[data]\npath = "traj.npy"\ninterval = {args.interval}\n' + args.settings.replace("\\n", "\n"))
        start = time.perf_counter()
        result = kgmm_bayes.run_study(kgmm_bayes.load_spec(os.path.join(folder, "flow.toml")),
                                      out_dir=os.path.join(folder, "run"), seed=args.seed)
        wall = time.perf_counter() - start
        with np.load(os.path.join(folder, "run", "responses.npz")) as f:
            arrays = {k: f[k] for k in f.files}
    dyn = result.metrics["dynamics"]
    lags = len(arrays["lags"]) - 1
    true_c = correlation_functions(truth_run, lags)
    corr_error = np.linalg.norm(arrays["model_correlation"] - true_c) / np.linalg.norm(true_c)
    tau_true = decorrelation_time(truth_run, args.interval)
    starts = truth_run.reshape(-1, 2)[np.random.default_rng(args.seed + 2).permutation(truth_run.shape[0] * n)
                                      [:args.starts]]
    direct = direct_responses(starts, lags, thin, args.dt, args.eps, args.seed + 3)
    resp_error = np.linalg.norm(arrays["mean"] - direct) / np.linalg.norm(direct)
    inside = np.mean((arrays["lower"] <= direct) & (direct <= arrays["upper"]))
    asym = np.abs(true_c - np.swapaxes(true_c, 1, 2)).max()
    print(f"data interval {args.interval}, {lags} lags ({lags * args.interval:.2f} time units = 5 decorrelation "
          f"times); true C_xy - C_yx up to {asym:.3f} (non-reversible)")
    corr_band, tau_band = "-", "-"
    if "model_correlation_lower" in arrays:
        held = (arrays["model_correlation_lower"] <= true_c) & (true_c <= arrays["model_correlation_upper"])
        corr_band = f"{held[1:].mean():.3f} (data's own: {dyn['ensemble']['correlation_band_holds_data']:.3f})"
        ens = dyn["ensemble"]
        tau_band = ", ".join(f"{lo:.3f}-{hi:.3f} ({'holds' if lo <= t <= hi else 'misses'} {t:.3f})" for lo, hi, t in
                             zip(ens["decorrelation_time_lower"], ens["decorrelation_time_upper"], tau_true))
    print("| training snapshots | K | correlation rel. error (vs true system) | decorrelation ratio x, y | "
          "ensemble correlation 90% band holds true C | ensemble decorrelation-time 90% band x, y | "
          "response rel. error (vs direct perturbation) | response 90% band holds direct | rate factor c | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ratio = np.asarray(dyn["decorrelation_time_model"]) / tau_true
    print(f"| {len(result.data.train)} | {result.metrics['partition']['components']} | {corr_error:.3f} | "
          f"{ratio[0]:.3f}, {ratio[1]:.3f} | {corr_band} | {tau_band} | {resp_error:.3f} | {inside:.3f} | "
          f"{dyn['mobility_time_scale']:.3f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
