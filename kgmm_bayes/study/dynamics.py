"""The study's reduced-order model in the data's time: mobility, correlation functions, responses.

With the data's interval known (``[data] interval``, or a built-in system's ``dt x thin``):

* the mobility ``Phi`` of the model's drift is fitted from the training trajectories
  (:func:`kgmm_bayes.rom.mobility.fit_mobility`), and one ``Phi`` per posterior draw (its
  mixture score in place of the drift, on its own Bayesian bootstrap of the trajectories) gives the
  mobility's credible band;
* ``M V^-1`` is exact for linear dynamics, but a derivative at lag 0 is what coarse snapshots of
  nonlinear dynamics resolve least; the estimator is biased the same way on the model's paths, so
  :func:`indirect_correction` finds the ``Phi`` whose model gives the data's estimate;
* the model ``dx = Phi s dt + Sigma dW`` runs with snapshots one data interval apart
  (:func:`rom_schedule`), so its correlation functions compare with the data's; what a constant
  mobility cannot match is left to one rate factor that matches the data's decorrelation times
  (:func:`time_scale_factor`, measured on a pilot run; applied when off by more than 2% and by more
  than twice the data's decorrelation times' sampling error, :func:`rate_tolerance`);
* the responses ``R_ij(t) = -E[x_i(t) s_j(x(0))]`` (impulse), their time integral (step) and the
  second moments' response are averages over the training trajectories, one per posterior draw:
  their band is the draws' quantiles, widened by the sampling error of the trajectory average
  (spread over groups of members), which the draws do not see.

All arrays are computed in z-scored units; :func:`dynamics_outputs` converts to physical units.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax.numpy as jnp
import numpy as np
from scipy.stats import norm

from .._keys import host_rng
from .._picks import evenly_spaced
from ..bayes.score import pad_rows, score_draws
from ..metrics.correlation import correlation_functions
from ..metrics.series import decorrelation_time, integrated_time
from ..rom.ensemble import autocorrelation
from ..rom.langevin import jit_drift, max_jacobian_eigenvalue, simulate_langevin, with_mobility
from ..rom.mobility import (fit_mobility, impulse_responses, second_moment_responses, step_responses,
                            to_physical)

__all__ = ["Dynamics", "fit_dynamics", "unresolved_coordinates", "rom_schedule", "dynamics_metrics", "dynamics_outputs", "time_scale_factor",
           "rescaled", "RESCALE_TOLERANCE", "robust_mobility", "member_mobilities", "run_in_data_time",
           "point_dynamics", "indirect_correction", "rescaled_clock", "PILOT_SUBSAMPLE", "PILOT_MIN_PARTICLES", "lagged_series", "draw_mobilities", "member_dynamics",
           "DYNAMICS_DRAWS", "MOBILITY_METHOD", "DECORRELATION_TIMES", "ENSEMBLE_ROWS_PER_LAG"]

DYNAMICS_DRAWS = 32  # posterior draws, each with its own mobility and responses
MOBILITY_METHOD = "log"  # kgmm_bayes.rom.mobility: exact for linear dynamics at any interval
DECORRELATION_TIMES = 5  # correlation functions and responses cover this many of the data's decorrelation times
MAX_LAGS = 400  # ... but at most this many intervals
MAX_SNAPSHOTS = 200_000  # training snapshots used for the lagged moments (whole series, first ones)
CHUNK = 8192
SE_GROUPS = 8  # independent groups of the trajectories for the responses' sampling error
RESCALE_TOLERANCE = 0.02  # the rate is corrected when |log c| exceeds log(1 + this) (the pilot's noise is ~1%)
ENSEMBLE_ROWS_PER_LAG = 8  # a posterior ensemble member runs at least this many times the correlation window
CORRECTION_STARTS = 20_000  # training snapshots from which the model runs one interval (indirect_correction)
CORRECTION_ITERATIONS = 6
CORRECTION_TOLERANCE = 0.01  # stop when the model's estimate is this close to the data's (relative)


class Dynamics(NamedTuple):
    interval: float
    phi: np.ndarray  # (d, d) mobility of the model's drift (z-scored)
    phi_draws: np.ndarray  # (S, d, d) one per posterior draw
    lags: np.ndarray  # (L + 1,) physical time, from 0
    impulse: np.ndarray  # (S, L + 1, d, d) R_ij per draw (z-scored)
    second: np.ndarray  # (S, L + 1, d, d) response of E[x_i^2] per draw (z-scored)
    data_correlation: np.ndarray  # (L + 1, d, d) C_ij of the training trajectories
    data_tau: np.ndarray  # (d,) decorrelation times of the training trajectories (physical time)
    time_scale: float = 1.0  # the rate factor c applied to M V^-1 (time_scale_factor)
    method: str = MOBILITY_METHOD  # the estimator of M used for the model's drift (robust_mobility)
    impulse_se: Optional[np.ndarray] = None  # (L + 1, d, d) sampling standard error of the trajectory average
    second_se: Optional[np.ndarray] = None
    correction: Optional[np.ndarray] = None  # (d, d) K: the estimator's bias removed, Phi = E_data K (indirect_correction)
    correction_residuals: tuple = ()  # |E_model - E_data| / |E_data| at each iterate
    data_tau_se: Optional[np.ndarray] = None  # (d,) sampling standard error of data_tau (groups of members)


def _evaluate(drift_fn, drift_params, z) -> np.ndarray:
    """``drift_fn(drift_params, x)`` at points ``z`` ``(n, d)``, in float32 chunks of :data:`CHUNK` points, the
    last one padded to a power of two: one compiled program per drift and shape (op by op, an interpolant's layers
    compiled about 30 small programs)."""
    fn = jit_drift(drift_fn)
    parts = []
    for i in range(0, len(z), CHUNK):
        block = np.asarray(z[i:i + CHUNK], np.float32)
        size = len(block)
        block = pad_rows(block, min(CHUNK, 1 << max(4, int(np.ceil(np.log2(max(size, 1)))))))
        parts.append(np.asarray(fn(drift_params, jnp.asarray(block)), np.float64)[:size])
    return np.concatenate(parts)


def fit_dynamics(series, interval: float, drift_fn, drift_params, draws, key=None, corrections=None) -> Dynamics:
    """Mobilities, responses and the data's correlation functions from the z-scored training
    ``series`` ``(members, n, d)`` sampled every ``interval``; ``drift_fn(drift_params, x)`` is the
    model's drift (a score), ``draws`` ``(weights, means, cov_chol)`` the posterior draws to use;
    ``key``: each draw's mobility on a Bayesian bootstrap of the trajectories (:func:`draw_mobilities`);
    ``corrections``: each draw's score corrected (:func:`_draw_scores`), as the model's is."""
    dyn = point_dynamics(series, interval, drift_fn, drift_params)
    series, max_lag = lagged_series(series), len(dyn.lags) - 1
    phis, impulse, second, mean_score = [], [], [], 0.0
    weights = _bootstrap_weights(key, series.shape[0], len(draws[0]))
    for s, score in enumerate(_draw_scores(series, draws, corrections)):
        mean_score = mean_score + score / len(draws[0])
        phis.append(_draw_mobility(series, score, interval, None if weights is None else weights[s], dyn.method))
        impulse.append(impulse_responses(series, score, max_lag))
        second.append(second_moment_responses(series, score, max_lag))
    impulse_se, second_se = (_sampling_se(fn, series, mean_score, max_lag)
                             for fn in (impulse_responses, second_moment_responses))
    return dyn._replace(phi_draws=np.stack(phis), impulse=np.stack(impulse), second=np.stack(second),
                        impulse_se=impulse_se, second_se=second_se)


def point_dynamics(series, interval: float, drift_fn, drift_params) -> Dynamics:
    """The dynamics of one score ``drift_fn(drift_params, x)`` (a point estimate: the study model's drift,
    or a baseline's) on the z-scored training ``series``: its mobility and responses (one "draw", no
    band), the data's lags (up to :data:`DECORRELATION_TIMES` decorrelation times), correlation functions
    and decorrelation times; no rate correction yet."""
    series = lagged_series(series)
    members, n, d = series.shape
    tau = decorrelation_time(series, interval)
    max_lag = int(min(n - 1, MAX_LAGS, max(2, math.ceil(DECORRELATION_TIMES * float(np.max(tau)) / interval))))
    score = _evaluate(drift_fn, drift_params, series.reshape(-1, d)).reshape(series.shape)
    phi, method = robust_mobility(series, score, interval)
    blocks = _stretches(series, series)[0]
    tau_se = None
    if blocks.shape[1] >= 2:
        groups = [decorrelation_time(blocks[g], interval) for g in np.array_split(np.arange(len(blocks)), SE_GROUPS)]
        tau_se = np.std(groups, axis=0, ddof=1) / np.sqrt(SE_GROUPS)
    return Dynamics(interval=float(interval), phi=phi, phi_draws=phi[None], method=method,
                    lags=interval * np.arange(max_lag + 1), impulse=impulse_responses(series, score, max_lag)[None],
                    second=second_moment_responses(series, score, max_lag)[None],
                    data_correlation=correlation_functions(series, max_lag), data_tau=tau, data_tau_se=tau_se)


def unresolved_coordinates(series, interval: float) -> list:
    """Coordinates whose lag-one autocorrelation is <= 0 in the z-scored training ``series`` (the first
    :data:`MAX_SNAPSHOTS`): their decorrelation time is half the ``interval`` (the trapezoid rule's least,
    :func:`~kgmm_bayes.metrics.series.decorrelation_time`), so the snapshots say only that the dynamics
    decorrelate within one interval, not how fast; a mobility fitted to them is not identified."""
    tau = decorrelation_time(lagged_series(series), interval)
    return [int(i) for i in np.flatnonzero(tau <= 0.5 * interval * (1 + 1e-9))]


def lagged_series(series) -> np.ndarray:
    """The z-scored training ``series`` ``(members, n, d)`` (float64) that the lagged statistics use:
    whole members, the first ones, up to :data:`MAX_SNAPSHOTS` snapshots."""
    series = np.asarray(series, np.float64)
    keep = max(1, min(len(series), MAX_SNAPSHOTS // series.shape[1]))
    return series[:keep]


def _draw_scores(series, draws, corrections=None):
    """Each draw's mixture score at every snapshot of ``series``, shaped like it (one draw at a time);
    ``corrections``: ``(correction, thetas (S, J, d))``, each draw's score plus the correction with its own
    coefficients (:func:`~kgmm_bayes.bayes.correction.theta_draws`)."""
    flat = series.reshape(-1, series.shape[-1])
    # every draw's correction from one evaluation of the bumps (draw by draw, Kuramoto-Sivashinsky D = 4's 2,000 bumps
    # at its snapshots took 44 s of the 32 draws' scores' 50 s); S x n x d floats, at most 32 x 200,000 x d
    corrected = None if corrections is None else corrections[0].draws_at(flat, corrections[1])
    for s in range(len(draws[0])):
        one = tuple(np.asarray(a)[s:s + 1] for a in draws)
        score = score_draws(*one, flat)[0][0]
        if corrected is not None:
            score = np.asarray(score, np.float64) + corrected[s]
        yield score.reshape(series.shape)


def draw_mobilities(series, interval: float, draws, key=None, method: Optional[str] = None,
                    corrections=None) -> np.ndarray:
    """``(S, d, d)``: the mobility fitted with each draw's mixture score (:func:`robust_mobility`)
    from the series :func:`lagged_series` keeps.  With ``key``, each draw's on its own Bayesian
    bootstrap of the trajectories (Dirichlet(1) weights over independent blocks: the members, or
    :data:`SE_GROUPS` stretches of each when there are fewer members), so that the spread of the
    mobilities holds the lagged statistics' sampling error as well as the score's posterior spread.
    ``corrections``: each draw's score corrected (:func:`_draw_scores`)."""
    series = lagged_series(series)
    weights = _bootstrap_weights(key, series.shape[0], len(draws[0]))
    return np.stack([_draw_mobility(series, score, interval, None if weights is None else weights[s], method)
                     for s, score in enumerate(_draw_scores(series, draws, corrections))])


def member_mobilities(dyn: Dynamics, series, draws, key, corrections=None) -> np.ndarray:
    """``(S, d, d)``: the posterior ensemble's mobilities, each draw's own (:func:`draw_mobilities`, on its
    own bootstrap, its score corrected with ``corrections``) with the study model's corrections
    (:func:`indirect_correction`, the rate factor)."""
    phis = draw_mobilities(series, dyn.interval, draws, key, dyn.method, corrections)
    if dyn.correction is not None:
        phis = np.stack([_floored(phi @ dyn.correction) for phi in phis])
    return phis * dyn.time_scale


def _stretches(series, score, pieces: int = SE_GROUPS):
    """``(series, score)`` as independent blocks: the members when there are at least ``pieces``, else
    each member cut into ``pieces`` contiguous stretches."""
    members, n, d = series.shape
    if members >= pieces:
        return series, score
    length = n // pieces
    cut = lambda a: a[:, :length * pieces].reshape(members * pieces, length, d)  # noqa: E731
    return cut(series), cut(score)


def _bootstrap_weights(key, members: int, draws: int):
    """Dirichlet(1) weights ``(draws, blocks)`` (mean 1) over :func:`_stretches`' blocks; None without a key."""
    if key is None:
        return None
    blocks = members if members >= SE_GROUPS else members * SE_GROUPS
    return host_rng(key).dirichlet(np.ones(blocks), draws) * blocks  # on the host: no program compiled for it


def _draw_mobility(series, score, interval: float, weights=None, method: Optional[str] = None) -> np.ndarray:
    """One draw's mobility, with the study model's estimator ``method`` where it exists for the draw."""
    if weights is not None:
        series, score = _stretches(series, score)
    try:
        return robust_mobility(series, score, interval, weights=weights, method=method)[0]
    except ValueError:
        return robust_mobility(series, score, interval, weights=weights)[0]


def member_dynamics(paths, alive, max_lag: int, interval: float):
    """Per ensemble member: correlation functions ``(S, L + 1, d, d)`` and decorrelation times ``(S, d)``
    of the particles that stayed in the box, from ``paths`` ``(S, T, P, d)`` one data interval apart;
    NaN for a member with no such particle."""
    members, length, _, d = paths.shape
    lags = min(max_lag, length - 1)
    corr, tau = np.full((members, lags + 1, d, d), np.nan), np.full((members, d), np.nan)
    for s in range(members):
        kept = np.swapaxes(paths[s][:, alive[s]], 0, 1).astype(np.float64)
        if len(kept) and length > 1:
            corr[s], tau[s] = correlation_functions(kept, lags), decorrelation_time(kept, interval)
    return corr, tau


ONE_STEP = "derivative (order 1)"


def robust_mobility(series, score, interval: float, weights=None, method: Optional[str] = None):
    """``(Phi, method)``: the matrix-log estimator; where the lag-one propagator has no real logarithm
    (an interval too coarse for the dynamics: correlations have turned negative) the one-step
    difference, which tends to the symmetric ``V^-1 / interval`` as the interval grows; the symmetric
    part's eigenvalues are floored at ``1e-3`` of the largest so that a diffusion matches it.
    ``method``: a method this function returned before (its first words), forced, without the fallback
    (a ValueError where the logarithm does not exist)."""
    forced = None if method is None else (ONE_STEP if method.startswith(ONE_STEP) else MOBILITY_METHOD)
    try:
        if forced == ONE_STEP:
            raise ValueError("one-step difference forced")
        phi, method = fit_mobility(series, score, interval, method=MOBILITY_METHOD, weights=weights).phi, MOBILITY_METHOD
    except ValueError:
        if forced == MOBILITY_METHOD:
            raise
        phi, method = fit_mobility(series, score, interval, order=1, weights=weights).phi, ONE_STEP
    floored = _floored(phi)
    if not np.array_equal(floored, phi):
        method += ", symmetric part floored"
    return floored, method


def _floored(phi) -> np.ndarray:
    """``phi`` with its symmetric part's eigenvalues floored at ``1e-3`` of the largest (unchanged if none is
    below): a diffusion ``Sigma Sigma^T = 2 sym(Phi)`` then matches it."""
    sym, anti = 0.5 * (phi + phi.T), 0.5 * (phi - phi.T)
    values, vectors = np.linalg.eigh(sym)
    floor = 1e-3 * max(float(values.max()), 1e-300)
    if values.min() >= floor:
        return phi
    return (vectors * np.maximum(values, floor)) @ vectors.T + anti


def _sampling_se(response_fn, series, score, max_lag):
    """Standard error of a response's trajectory average: the spread over :data:`SE_GROUPS` groups of
    members (or of contiguous stretches of time when there are fewer members than groups)."""
    if series.shape[0] < SE_GROUPS and series.shape[1] // SE_GROUPS <= max_lag + 1:
        return None
    series, score = _stretches(series, score)
    groups = np.array_split(np.arange(len(series)), SE_GROUPS)
    parts = np.stack([response_fn(series[g], score[g], max_lag) for g in groups])
    return parts.std(axis=0, ddof=1) / np.sqrt(SE_GROUPS)


def time_scale_factor(paths, dyn: Dynamics, spacing: Optional[float] = None) -> float:
    """The factor ``c`` by which the mobility's rate is corrected: ``dx = c Phi s dt + sqrt(c) Sigma dW``
    is the same model on the clock ``c t``, so its autocorrelation becomes ``rho(c t)``.  Per coordinate,
    ``c`` solves ``tau(rho(c k Delta)) = tau_data`` (:func:`rescaled_clock`) with ``rho`` of the model's
    ``paths`` ``(members, T, d)`` sampled every ``spacing`` (default: the data's interval ``Delta``; a
    pilot run samples finer, so that ``rho`` between the data's lags is measured, not interpolated): the
    decorrelation time's estimate at a coarse interval is not proportional to the time scale, so the ratio
    of the two times would miss.  Returns the geometric mean over coordinates.  It corrects what the
    mobility's estimate cannot resolve; 1 for linear dynamics."""
    paths = np.asarray(paths, np.float64)
    spacing = dyn.interval if spacing is None else float(spacing)
    rho = autocorrelation(paths, paths.shape[1] - 1)  # (T, d), each lag over its own pairs
    return float(np.exp(np.mean([math.log(rescaled_clock(r, t, dyn.interval, spacing))
                                 for r, t in zip(rho.T, dyn.data_tau)])))


def rescaled_clock(rho, target: float, interval: float, spacing: Optional[float] = None,
                   bound: float = 100.0) -> float:
    """The ``c`` in ``[1 / bound, bound]`` for which the autocorrelation ``rho`` ``(n,)`` (lags ``spacing``
    apart, default ``interval``) on the clock ``c t``, read at lags one ``interval`` apart, has the
    decorrelation time ``target`` (:func:`~kgmm_bayes.metrics.series.integrated_time`).  Between its lags
    ``rho`` is interpolated log-linearly while positive, linearly across its first zero crossing; the
    time falls as ``c`` grows, so bisection on ``log c``."""
    r = np.asarray(rho, np.float64)
    ratio = interval / (interval if spacing is None else spacing)  # data lags in units of rho's lags
    lags = np.arange(len(r), dtype=np.float64)
    nonpositive = np.flatnonzero(r <= 0)
    cut = int(nonpositive[0]) if nonpositive.size else len(r)
    log_r = np.log(np.clip(r[:cut], 1e-300, None))

    def tau(log_c):
        c = math.exp(log_c)
        at = c * ratio * np.arange(int((len(r) - 1) / (c * ratio)) + 2, dtype=np.float64)
        value = np.zeros_like(at)
        before = at <= cut - 1
        value[before] = np.exp(np.interp(at[before], lags[:cut], log_r))
        if cut < len(r):  # across the crossing: linear from the last positive lag to the first other one
            across = (at > cut - 1) & (at < cut)
            frac = at[across] - (cut - 1)
            value[across] = (1 - frac) * r[cut - 1] + frac * r[cut]
            value[at >= cut] = min(r[cut], 0.0)
        return integrated_time(value, interval)

    lo, hi = -math.log(bound), math.log(bound)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if tau(mid) > target else (lo, mid)
    return math.exp(0.5 * (lo + hi))


def rate_tolerance(dyn: Dynamics) -> float:
    """How far off (relative) the model's decorrelation times may be before its rate is corrected: 2%, or
    twice the data's decorrelation times' relative standard error (mean over coordinates) if that is more,
    so that the rate is not fitted to the data's sampling noise."""
    if dyn.data_tau_se is None:
        return RESCALE_TOLERANCE
    return max(RESCALE_TOLERANCE, 2.0 * float(np.mean(dyn.data_tau_se / dyn.data_tau)))


PILOT_SUBSAMPLE = 8  # a pilot run keeps this many snapshots per data interval (where the schedule allows)
PILOT_MIN_PARTICLES = 100  # ... and has a quarter of the run's particles, at least this many


def run_in_data_time(simulate, dyn: Dynamics, particles: int):
    """``(rom, dyn)``: the model's run in the data's time with the rate corrected (:func:`rescaled`) when its
    decorrelation times are off the data's by more than :data:`RESCALE_TOLERANCE` and by more than twice
    the data's decorrelation times' relative sampling error (:func:`rate_tolerance`; no correction when
    no particle stayed).  ``simulate(dyn, particles=None, subsample=1) -> (rom, spacing)`` runs the model
    (``rom`` with ``alive`` and ``samples`` ``(T, P, d)``, snapshots ``spacing`` apart); the full run has
    ``particles``.  The factor is measured on a pilot (a quarter of the particles, :data:`PILOT_SUBSAMPLE`
    snapshots per interval) and the full run made once; with too few particles for a pilot, on a first
    full run, made again only if the rate changes."""
    pilot = min(particles, max(PILOT_MIN_PARTICLES, particles // 4))
    rom, spacing = simulate(dyn, pilot, PILOT_SUBSAMPLE) if pilot < particles else simulate(dyn)
    if rom.alive.any():
        factor = time_scale_factor(np.swapaxes(rom.samples[:, rom.alive], 0, 1), dyn, spacing)
        if math.isfinite(factor) and abs(math.log(factor)) > math.log1p(rate_tolerance(dyn)):
            dyn = rescaled(dyn, factor)
            return simulate(dyn)[0], dyn
    return (simulate(dyn)[0] if pilot < particles else rom), dyn


def indirect_correction(dyn: Dynamics, key, series, drift_fn, drift_params, lg, points) -> Dynamics:
    """The mobility with the estimator's bias removed by indirect inference.

    ``E`` (:func:`robust_mobility`) applied to snapshots one interval apart is biased for nonlinear
    dynamics (a derivative at lag 0 that a coarse interval does not resolve), but it is biased the same
    way on the model's paths as on the data's.  So the model's mobility is the ``Phi`` for which the
    model's ``E`` equals the data's: starting from ``Phi_0 = E_data`` (``dyn.phi``), the model runs for
    one interval from :data:`CORRECTION_STARTS` training snapshots (stationary states; the same noise at
    every iterate), ``E_model`` is measured on those pairs with the same score, and
    ``Phi <- E_data E_model^-1 Phi`` (exact if ``E(Phi) = Phi B`` for a fixed ``B``).  The iterate
    with the smallest residual ``|E_model - E_data| / |E_data|`` is kept (at most
    :data:`CORRECTION_ITERATIONS`; a residual under :data:`CORRECTION_TOLERANCE` stops).  The draws'
    mobilities get the same correction, ``Phi_s K`` with ``K = E_data^-1 Phi``; every iterate's and
    draw's symmetric part is floored as in :func:`robust_mobility`."""
    series = lagged_series(series)
    flat = series.reshape(-1, series.shape[-1])
    starts = flat[evenly_spaced(len(flat), CORRECTION_STARTS)]
    start_score = _evaluate(drift_fn, drift_params, starts)
    target, phi, best, residuals = dyn.phi, dyn.phi, None, []
    for _ in range(CORRECTION_ITERATIONS):
        dt, thin, _, _ = rom_schedule(lg, dyn.interval, phi, drift_fn, drift_params, points)
        run = simulate_langevin(key, drift_fn, drift_params, starts, dt, thin, 0, thin, lg.box, mobility=phi)
        alive = run.alive
        if alive.sum() < 2:
            break
        ends = run.samples[0][alive].astype(np.float64)
        pairs = np.stack([starts[alive], ends], axis=1)  # (starts, 2, d): two snapshots each
        scores = np.stack([start_score[alive], _evaluate(drift_fn, drift_params, ends)], axis=1)
        try:  # the data's estimator, not a fallback: the two estimates must be the same function
            estimate = robust_mobility(pairs, scores, dyn.interval, method=dyn.method)[0]
        except ValueError:
            break
        residuals.append(float(np.linalg.norm(estimate - target) / np.linalg.norm(target)))
        if best is None or residuals[-1] < best[0]:
            best = (residuals[-1], phi)
        if residuals[-1] < CORRECTION_TOLERANCE:
            break
        phi = _floored(target @ np.linalg.solve(estimate, phi))
        if not np.all(np.isfinite(phi)):
            break
    if best is None:
        return dyn
    correction = np.linalg.solve(target, best[1])
    return dyn._replace(phi=best[1], phi_draws=np.stack([_floored(p @ correction) for p in dyn.phi_draws]),
                        correction=correction,
                        correction_residuals=tuple(residuals))


def rescaled(dyn: Dynamics, factor: float) -> Dynamics:
    """The dynamics with every mobility times ``factor`` (the clock of the model ``factor`` times faster)."""
    return dyn._replace(phi=dyn.phi * factor, phi_draws=dyn.phi_draws * factor, time_scale=dyn.time_scale * factor)


def rom_schedule(lg, interval: float, phi, drift_fn, drift_params, points, min_rows: int = 2,
                 snapshots: int | None = None):
    """``(dt, thin, steps, stiffness)`` of the model with mobility ``phi``: the step is the spec's
    ``[langevin] dt`` scaled so that ``dt x max |eigenvalue|`` of the drift's Jacobian stays what it is
    without the mobility, then shortened so that ``thin`` steps make one data interval; ``steps`` keeps
    the spec's count (a multiple of ``thin``), so the run costs what it did, or makes ``min_rows``
    snapshots if that is more.  ``snapshots``: make that many instead (``compare`` gives every
    estimator's model the Bayesian model's number of snapshots, so the same span of the data's time
    and the same sample size for the relative entropy, whose estimate falls with it)."""
    plain = max_jacobian_eigenvalue(drift_fn, drift_params, points)
    mobile_fn, mobile_params = with_mobility(drift_fn), (drift_params, jnp.asarray(phi, jnp.float32))
    mobile = max_jacobian_eigenvalue(mobile_fn, mobile_params, points)
    dt_max = lg.dt * plain / max(mobile, 1e-300)
    thin = max(1, math.ceil(interval / dt_max))
    dt = interval / thin
    rows = lg.steps // thin if snapshots is None else int(snapshots)
    steps = thin * max(1, min_rows, rows)
    return dt, thin, steps, dt * mobile


def _band(values, band: float, se=None):
    """Mean and ``band`` quantiles over draws (axis 0), each half-width widened in quadrature by the
    normal quantile times ``se`` (the estimate's sampling error, independent of the draws)."""
    tail = 0.5 * (1.0 - band)
    mean = values.mean(axis=0)
    lower, upper = np.quantile(values, [tail, 1.0 - tail], axis=0)
    if se is None:
        return mean, lower, upper
    extra = (norm.ppf(1.0 - tail) * se) ** 2
    return mean, mean - np.sqrt((mean - lower) ** 2 + extra), mean + np.sqrt((upper - mean) ** 2 + extra)


def dynamics_outputs(dyn: Dynamics, std, band: float, paths=None, members=None) -> dict:
    """``responses.npz``'s arrays in physical units: ``lags``; ``mean``, ``lower``, ``upper``
    ``(L, d, d)`` of the impulse response ``R_ij``; the same with prefixes ``step_`` and ``second_``
    (the second moments' response, ``d(E[x_i^2]) / d(impulse in x_j)``, physical units squared over
    units); ``mobility``, ``mobility_lower``, ``mobility_upper``; ``data_correlation`` and, with the
    model's ``paths`` ``(members, T, d)``, ``model_correlation``.  With the posterior ensemble's
    ``members`` ``(correlation (S, L, d, d), decorrelation times (S, d), mobilities (S, d, d))``
    (:func:`member_dynamics`, z-scored): ``model_correlation_median``, ``_lower``, ``_upper`` (the
    members' ``band``), ``ensemble_decorrelation_time`` ``(S, d)`` and ``ensemble_mobility``."""
    std = np.asarray(std, np.float64)
    out = {"lags": dyn.lags}
    second_scale = (std**2)[:, None] / std[None, :]
    impulse = to_physical(std, responses=dyn.impulse)[1]
    impulse_se = None if dyn.impulse_se is None else to_physical(std, responses=dyn.impulse_se)[1]
    step_se = None if impulse_se is None else step_responses(impulse_se, dyn.interval)  # errors taken as correlated
    second_se = None if dyn.second_se is None else dyn.second_se * second_scale
    for prefix, values, se in (("", impulse, impulse_se),
                               ("step_", np.stack([step_responses(r, dyn.interval) for r in impulse]), step_se),
                               ("second_", dyn.second * second_scale, second_se)):
        mean, lower, upper = _band(values, band, se)
        out.update({f"{prefix}mean": mean, f"{prefix}lower": lower, f"{prefix}upper": upper})
    phis = np.stack([to_physical(std, phi=p)[0] for p in dyn.phi_draws])
    out["mobility"] = to_physical(std, phi=dyn.phi)[0]
    _, out["mobility_lower"], out["mobility_upper"] = _band(phis, band)
    out["data_correlation"] = dyn.data_correlation
    if paths is not None:
        out["model_correlation"] = correlation_functions(paths, len(dyn.lags) - 1)
    if members is not None:
        corr, tau, member_phi = members
        tail = 0.5 * (1.0 - band)
        out["model_correlation_median"], out["model_correlation_lower"], out["model_correlation_upper"] = (
            np.nanquantile(corr, [0.5, tail, 1.0 - tail], axis=0))
        out["ensemble_decorrelation_time"] = np.asarray(tau, np.float64)
        out["ensemble_mobility"] = np.stack([to_physical(std, phi=p)[0] for p in member_phi])
    return out


def _ensemble_metrics(dyn: Dynamics, arrays: dict, band: float) -> dict:
    """The posterior ensemble's bands on the model's correlation functions and decorrelation times, and
    how often they hold the data's (correlation entries at lags >= 1, all pairs)."""
    tail = 0.5 * (1.0 - band)
    data_c = arrays["data_correlation"][1:]
    lower, upper = arrays["model_correlation_lower"][1:], arrays["model_correlation_upper"][1:]
    inside = (lower <= data_c) & (data_c <= upper)
    tau = arrays["ensemble_decorrelation_time"]
    if not np.isfinite(tau).any():  # no member kept a particle: nothing to band (the ensemble block says why)
        return {"members": int(len(tau)), "band": band, "correlation_band_holds_data": None}
    median, low, high = np.nanquantile(tau, [0.5, tail, 1.0 - tail], axis=0)
    return {"members": int(len(tau)), "band": band,
            "correlation_band_holds_data": float(np.mean(inside[np.isfinite(lower)])),
            "correlation_band_width_mean": float(np.nanmean(upper - lower)),
            "decorrelation_time_median": median.tolist(), "decorrelation_time_lower": low.tolist(),
            "decorrelation_time_upper": high.tolist(),
            "decorrelation_time_band_holds_data": [bool(lo <= t <= hi) for lo, t, hi in zip(low, dyn.data_tau, high)]}


def dynamics_metrics(dyn: Dynamics, arrays: dict, model_tau: Optional[np.ndarray], band: float = 0.9) -> dict:
    """The ``metrics.json`` entry: interval, mobility with its band, decorrelation times (data,
    model, ratio), the correlation functions' relative error and the responses' extent; with the
    posterior ensemble's arrays (:func:`dynamics_outputs`), their bands under ``ensemble``."""
    entry = {"interval": dyn.interval, "mobility_method": dyn.method, "draws": int(len(dyn.phi_draws)),
             "mobility_time_scale": dyn.time_scale, "mobility_time_scale_tolerance": rate_tolerance(dyn),
             "decorrelation_time_data_se": None if dyn.data_tau_se is None else dyn.data_tau_se.tolist(),
             "mobility_correction": None if dyn.correction is None else dyn.correction.tolist(),
             "mobility_correction_residuals": list(dyn.correction_residuals),
             "mobility": arrays["mobility"].tolist(), "mobility_lower": arrays["mobility_lower"].tolist(),
             "mobility_upper": arrays["mobility_upper"].tolist(),
             "max_lag_time": float(dyn.lags[-1]), "decorrelation_time_data": dyn.data_tau.tolist(),
             # above ~1 the snapshots hardly resolve the dynamics: a coarse interval for correlations and responses
             "interval_over_decorrelation_time": float(dyn.interval / np.min(dyn.data_tau))}
    if model_tau is not None and "model_correlation" in arrays:
        data_c, model_c = arrays["data_correlation"], arrays["model_correlation"]
        entry["decorrelation_time_model"] = np.asarray(model_tau).tolist()
        entry["decorrelation_time_ratio"] = (np.asarray(model_tau) / dyn.data_tau).tolist()
        entry["correlation_relative_error"] = float(np.linalg.norm(model_c - data_c) / np.linalg.norm(data_c))
    if "model_correlation_lower" in arrays:
        entry["ensemble"] = _ensemble_metrics(dyn, arrays, band)
    return entry
