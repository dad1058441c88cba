r"""Posterior ensembles of the reduced-order model (DESIGN.md, "Reduced-order model").

S posterior draws :math:`\theta_1, \dots, \theta_S`, thinned evenly across chains,
each give one Langevin model in z-scored coordinates,

.. math::

    dx^{(s)} = s_{\theta_s}(x^{(s)})\,dt + \sqrt{2}\,dW^{(s)}, \qquad s = 1, \dots, S,

with drift the closed-form mixture score of the draw (default: exact for the draw)
or an MLP trained on that draw's score targets at the cell points (all S trained
together, ``vmap`` over parameters in one optax loop).  All members x particles are
integrated by Euler-Maruyama in one ``lax.scan``: :func:`simulate_ensemble` is the
``vmap`` over ``(key, drift parameters, x0)`` of :func:`kgmm_bayes.rom.langevin.trajectory`,
so escapes are counted and frozen per member exactly as in
:func:`~kgmm_bayes.rom.langevin.simulate_langevin`, and member ``s`` draws the noise of a
single run with key ``member_keys(key, S)[s]``.

Per member, over the particles that stayed in the box: marginal PDFs (Gaussian KDE,
Scott's rule) on one common grid, mean, variance, skewness, kurtosis (3 for a
Gaussian), the autocorrelation function of each coordinate from the particle time
series (``(time, particle)`` structure kept), and the relative entropy of each
marginal against the reference (:func:`kgmm_bayes.metrics.marginal_relative_entropies`).
Across members: the median with 50% and 90% equal-tailed credible bands; the
relative entropy as a distribution (median, 5% and 95% quantiles).
"""
from __future__ import annotations

import time
from functools import partial
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..bayes.score import coefficient_score, score_coefficients, score_draws
from ..bayes.stacking import draw_allocation, draw_picks
from ..metrics import gaussian_kde_1d, marginal_relative_entropies
from ..metrics.series import lag_products
from ..progress import bar
from .interpolant import fit_interpolant_ensemble
from .langevin import check_settings, mobility_noise, trajectory, with_mobility

__all__ = ["EnsembleRun", "MemberStatistics", "Band", "select_draws", "member_keys", "mixture_members",
           "interpolant_members", "simulate_ensemble", "autocorrelation", "member_statistics", "bands",
           "entropy_distribution", "BAND_QUANTILES"]

# median, 50% band, 90% band
BAND_QUANTILES = (0.5, 0.25, 0.75, 0.05, 0.95)


class EnsembleRun(NamedTuple):
    samples: np.ndarray  # (S, n_snapshots, P, d) z-scored; escaped particles excluded by `alive`
    alive: np.ndarray  # (S, P)
    escaped: np.ndarray  # (S,) particles that left the box, per member
    non_finite: np.ndarray  # (S,) particles that became NaN/Inf, per member
    wall_time: float


class MemberStatistics(NamedTuple):
    """Per-member statistics of the kept samples (leading axis: member)."""

    grid: np.ndarray  # (d, G) common grid of the marginal PDFs
    pdf: np.ndarray  # (S, d, G)
    mean: np.ndarray  # (S, d)
    variance: np.ndarray  # (S, d)
    skewness: np.ndarray  # (S, d)
    kurtosis: np.ndarray  # (S, d), 3 for a Gaussian
    lags: np.ndarray  # (L + 1,) lag in model time units
    acf: np.ndarray  # (S, L + 1, d)
    relative_entropy: np.ndarray  # (S, d) reference || member; NaN without a reference


class Band(NamedTuple):
    """Median and equal-tailed 50% / 90% credible bands across members."""

    median: np.ndarray
    lower50: np.ndarray
    upper50: np.ndarray
    lower90: np.ndarray
    upper90: np.ndarray


def select_draws(posterior, members: int, chain_weights=None):
    """``members`` draws ``(weights, means, cov_chol)``, each with a leading member axis.

    Chains share the members as evenly as possible (the first ``members % chains``
    chains give one more), or in proportion to ``chain_weights`` (stacked chains,
    :func:`kgmm_bayes.bayes.stacking.draw_allocation`: fewer members when the heaviest
    chain has too few draws for its share); within a chain the draws are
    evenly spaced, so the ensemble spans every chain and the whole of each.
    """
    chains, draws = posterior.weights.shape[:2]
    if not 1 <= members <= chains * draws:
        raise ValueError(f"ensemble members must be in [1, {chains * draws}] (chains x draws), got {members}")
    if chain_weights is None:
        takes = [members // chains + (c < members % chains) for c in range(chains)]
    else:
        takes = draw_allocation(chain_weights, members, draws)
    chain_idx, draw_idx = draw_picks(takes, draws)
    return tuple(np.asarray(a)[chain_idx, draw_idx] for a in (posterior.weights, posterior.means, posterior.cov_chol))


def member_keys(key, members: int):
    """The keys ``(S,)`` of the members' runs: member ``s`` of :func:`simulate_ensemble` uses ``[s]``."""
    return jax.random.split(key, members)


def mixture_members(draws, dtype=jnp.float32):
    """Closed-form mixture-score drifts, one per draw ``(weights (S, K), means, cov_chol)``.

    Returns ``(drift_fn, member_params)`` for :func:`simulate_ensemble`: each draw's
    :class:`~kgmm_bayes.bayes.score.ScoreCoefficients`, computed once in the draws' precision
    and cast to ``dtype``, so a step costs dense products rather than triangular solves.
    """
    return coefficient_score, score_coefficients(*draws, dtype=dtype)


def interpolant_members(key, draws, points, counts, hidden, steps: int, learning_rate: float):
    """MLP drifts, one per draw, trained together on each draw's score targets at ``points``.

    Returns ``(drift_fn, member_params, final_losses (S,))`` for :func:`simulate_ensemble`.
    """
    targets, _ = score_draws(*draws, points)  # (S, M, d)
    keys = member_keys(key, targets.shape[0])
    interp, losses = fit_interpolant_ensemble(keys, points, targets, counts, hidden, steps, learning_rate)
    return interp.apply_fn(), interp.params, losses


@partial(jax.jit, static_argnums=(0, 4, 5, 6, 9, 10))
def _run_members(drift_fn, keys, member_params, x0, n_snap, thin, burn_in, dt, box, progress, member_batch,
                 noise_chol=None):
    def one(args):
        k, p, x, chol = args
        return trajectory(drift_fn, k, p, x, n_snap, thin, burn_in, dt, box, progress, chol)
    args = (keys, member_params, x0, noise_chol)
    if member_batch is None:
        return jax.vmap(lambda *a: one(a))(*args)
    # batches of member_batch members, vmapped, one batch after another (smaller working set)
    return jax.lax.map(one, args, batch_size=member_batch)


def simulate_ensemble(key, drift_fn: Callable, member_params, x0, dt: float, steps: int, burn_in: int,
                      thin: int, box: float = 10.0, progress: bool = False,
                      member_batch: Optional[int] = None, mobility=None) -> EnsembleRun:
    """Simulate ``dx = drift_fn(member_params[s], x) dt + sqrt(2) dW`` for every member at once,
    or with ``mobility`` ``(S, d, d)``, one ``Phi`` per member: ``dx = Phi_s drift dt + Sigma_s dW``,
    ``Sigma_s Sigma_s^T = 2 sym(Phi_s)``.

    ``member_params``: a pytree whose leaves carry a leading member axis ``S``;
    ``x0``: ``(P, d)`` shared starting particles or ``(S, P, d)``.  All members x
    particles run in one ``lax.scan`` (``vmap`` over members inside the step);
    member ``s`` equals ``simulate_langevin(member_keys(key, S)[s], drift_fn,
    member_params[s], x0[s], ..., mobility=mobility[s])``.  ``member_batch``: ``None`` vmaps all members in
    each step; a number runs batches of that many members one after another
    (``lax.map``), the same numbers with a smaller working set.
    """
    n_snap = check_settings(dt, steps, burn_in, thin, box)
    leaves = jax.tree.leaves(member_params)
    if not leaves:
        raise ValueError("member_params holds no arrays")
    members = int(np.shape(leaves[0])[0])
    if any(np.shape(leaf)[:1] != (members,) for leaf in leaves):
        raise ValueError("every leaf of member_params needs the same leading member axis")
    x0 = jnp.asarray(x0, dtype=jnp.float32)
    if x0.ndim == 2:
        x0 = jnp.broadcast_to(x0, (members, *x0.shape))
    if x0.ndim != 3 or x0.shape[0] != members:
        raise ValueError(f"x0 must be (P, d) or ({members}, P, d), got {tuple(x0.shape)}")
    noise = None
    if mobility is not None:
        mobility = np.asarray(mobility, np.float64)
        if mobility.shape != (members, x0.shape[2], x0.shape[2]):
            raise ValueError(f"mobility must be ({members}, {x0.shape[2]}, {x0.shape[2]}), got {mobility.shape}")
        noise = jnp.asarray(np.stack([mobility_noise(phi) for phi in mobility]), jnp.float32)
        drift_fn, member_params = with_mobility(drift_fn), (member_params, jnp.asarray(mobility, jnp.float32))
    start = time.perf_counter()
    with bar(f"simulating {members} ensemble members (snapshots after burn-in)", n_snap, progress):
        snaps, alive, finite = _run_members(drift_fn, member_keys(key, members), member_params, x0, n_snap,
                                            int(thin), int(burn_in), jnp.float32(dt), jnp.float32(box),
                                            bool(progress), None if member_batch is None else int(member_batch),
                                            noise)
        snaps = np.asarray(snaps)
    wall = time.perf_counter() - start
    alive = np.asarray(alive)
    non_finite = np.sum(~np.asarray(finite), axis=1)
    return EnsembleRun(samples=snaps, alive=alive, escaped=np.sum(~alive, axis=1) - non_finite,
                       non_finite=non_finite, wall_time=wall)


def autocorrelation(series, max_lag: int, mean=None, variance=None) -> np.ndarray:
    """Autocorrelation ``(max_lag + 1, d)`` of stationary series ``(B, T, d)`` (B independent runs).

    ``acf(l) = sum_{b, t < T - l} (x_bt - m)(x_b,t+l - m) / (B (T - l) v)`` with the
    stationary mean ``m`` and variance ``v`` (estimated from all of ``series`` unless
    given); lagged products by zero-padded FFT, float64.
    """
    x = np.asarray(series, dtype=np.float64)
    n_series, length, _ = x.shape
    if not 0 <= max_lag < length:
        raise ValueError(f"max_lag must be in [0, {length - 1}] for series of length {length}, got {max_lag}")
    mean = x.mean(axis=(0, 1)) if mean is None else mean
    variance = np.mean((x - mean)**2, axis=(0, 1)) if variance is None else variance
    lagged = lag_products(x, max_lag, mean)
    counts = n_series * (length - np.arange(max_lag + 1))
    return lagged / counts[:, None] / variance


def member_statistics(run: EnsembleRun, max_lag: int, lag_time: float, reference=None, grid_points: int = 2048,
                      pdf_points: int = 256, transform: Optional[Callable] = None) -> MemberStatistics:
    """Per-member statistics of an ensemble run (see the module docstring).

    ``lag_time``: model time between snapshots (``dt * thin``).  ``transform`` maps
    z-scored samples to the units of ``reference`` ``(n, d)`` (e.g. ``ZScore.inverse``);
    PDFs and moments are in those units, the ACFs are unit-free.
    """
    members, length, _, d = run.samples.shape
    transform = (lambda a: a) if transform is None else transform
    kept = [np.asarray(transform(run.samples[s][:, run.alive[s]].astype(np.float64))) for s in range(members)]
    nan = np.full(d, np.nan)
    mean, variance, skewness, kurtosis, acf, rel_ent = [], [], [], [], [], []
    for x in kept:  # (T, P_alive, d)
        flat = x.reshape(-1, d)
        if len(flat) < 2:
            for out in (mean, variance, skewness, kurtosis, rel_ent):
                out.append(nan)
            acf.append(np.full((max_lag + 1, d), np.nan))
            continue
        m = flat.mean(axis=0)
        c = flat - m
        v = np.mean(c**2, axis=0)
        mean.append(m)
        variance.append(v)
        skewness.append(np.mean(c**3, axis=0) / v**1.5)
        kurtosis.append(np.mean(c**4, axis=0) / v**2)
        acf.append(autocorrelation(np.swapaxes(x, 0, 1), max_lag, m, v))
        rel_ent.append(nan if reference is None else marginal_relative_entropies(reference, flat, grid_points))
    spans = [np.asarray(reference)] if reference is not None else []
    spans += [x.reshape(-1, d) for x in kept if x.size]
    lo = np.min([s.min(axis=0) for s in spans], axis=0) if spans else np.full(d, -1.0)
    hi = np.max([s.max(axis=0) for s in spans], axis=0) if spans else np.full(d, 1.0)
    grid = np.linspace(lo, hi, pdf_points).T  # (d, G)
    pdf = np.array([[gaussian_kde_1d(x[..., i], grid[i]) if x.shape[1] * length >= 2 else np.full(pdf_points, np.nan)
                     for i in range(d)] for x in kept])
    return MemberStatistics(grid=grid, pdf=pdf, mean=np.array(mean), variance=np.array(variance),
                            skewness=np.array(skewness), kurtosis=np.array(kurtosis),
                            lags=lag_time * np.arange(max_lag + 1), acf=np.array(acf),
                            relative_entropy=np.array(rel_ent))


def bands(values, axis: int = 0) -> Band:
    """Median and 50% / 90% equal-tailed bands of ``values`` across ``axis`` (NaN members ignored)."""
    q = np.nanquantile(np.asarray(values, dtype=np.float64), BAND_QUANTILES, axis=axis)
    return Band(*q)


def entropy_distribution(relative_entropy) -> dict:
    """Median, 5% and 95% quantiles across members of ``(S, d)`` relative entropies, per marginal and of the mean."""
    rel = np.asarray(relative_entropy, dtype=np.float64)
    per = np.nanquantile(rel, [0.5, 0.05, 0.95], axis=0)
    mean = np.nanquantile(rel.mean(axis=1), [0.5, 0.05, 0.95])
    return {"per_marginal": {"median": per[0], "q05": per[1], "q95": per[2]},
            "mean": {"median": mean[0], "q05": mean[1], "q95": mean[2]}}
