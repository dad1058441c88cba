r"""The reduced-order model in the data's time: a fitted mobility, and responses by fluctuation-dissipation.

**Mobility.**  The effective dynamics

.. math::  dx = \Phi\, s(x)\, dt + \Sigma\, dW, \qquad \Sigma\Sigma^T = 2\,\mathrm{sym}(\Phi),

keeps the stationary density :math:`p` (:math:`s = \nabla\log p`) for any constant :math:`\Phi`
whose symmetric part is positive definite: the antisymmetric part adds a divergence-free flux
(:math:`\nabla\cdot(\Phi_a \nabla p) = 0`).  Its generator applied to :math:`x` is :math:`\Phi s`,
so with :math:`C(\tau) = E[x(t + \tau)\, s(x(t))^T]`

.. math::  \dot C(0^+) = E[\Phi s\, s^T] = \Phi V, \qquad V = E[s s^T], \qquad \Phi = M V^{-1},

with :math:`M = \dot C(0^+)` estimated from the data's trajectories (and :math:`C(0) = -I` by
Stein's identity).  The data are sampled every ``interval`` :math:`\Delta`; two estimators of
:math:`M`:

* ``"derivative"``: the derivative at 0 of the polynomial through :math:`C` at lags
  ``0 .. order`` (``order = 1`` is the one-step difference, biased by :math:`O(\Delta)`;
  ``order = p`` has bias :math:`O(\Delta^p)` and more noise);
* ``"log"``: :math:`M = \frac1\Delta \log\big(C(\Delta) C(0)^{-1}\big)\, C(0)`, exact at any
  :math:`\Delta` when :math:`C(\tau) = e^{A\tau} C(0)` (linear dynamics); for a nonlinear system
  the linear dynamics that matches the data's :math:`C` at lag :math:`\Delta`, which is what a
  coarse interval can resolve.

For an Ornstein-Uhlenbeck process :math:`dx = A x\,dt + B\,dW` with stationary covariance
:math:`S`, :math:`s = -S^{-1}x`, :math:`V = S^{-1}`, :math:`M = -A` and :math:`\Phi = -A S` exactly.

**Responses.**  The linear response of :math:`E[x_i(t)]` to an impulse :math:`\delta x_j` at time 0
is, by the fluctuation-dissipation relation for a system with stationary density :math:`p`,

.. math::  R_{ij}(t) = -E[x_i(t)\, s_j(x(0))],

(for the OU process, :math:`e^{At}`) and that of :math:`E[x_i(t)^2]` is
:math:`-E[x_i(t)^2 s_j(x(0))]`.  Both are averages over the data's own trajectories with the
score of a posterior draw: one estimate per draw, so the response has a credible band.  The
step response is the time integral of the impulse response.

Everything here is in the coordinates given (the package uses z-scored ones);
:func:`to_physical` converts a mobility and responses to physical units.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..metrics.correlation import lagged_moments

__all__ = ["Mobility", "derivative_weights", "fit_mobility", "impulse_responses", "second_moment_responses",
           "step_responses", "noise_factor", "to_physical", "DEFAULT_ORDER"]

DEFAULT_ORDER = 2  # polynomial order of the derivative at lag 0 (bias O(interval^2))


class Mobility(NamedTuple):
    phi: np.ndarray  # (d, d) the mobility, Phi = M V^-1
    m: np.ndarray  # (d, d) the derivative at 0 of E[x(t + tau) s(t)^T]
    v: np.ndarray  # (d, d) E[s s^T]
    min_sym_eigenvalue: float  # smallest eigenvalue of sym(Phi); <= 0: no valid diffusion


def derivative_weights(order: int) -> np.ndarray:
    """Weights ``w`` with ``f'(0) ~ sum_k w_k f(k) / h`` from ``f`` at ``0, h, ..., order h``
    (the derivative of the interpolating polynomial; exact for polynomials of degree ``order``)."""
    order = int(order)
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    k = np.arange(order + 1, dtype=np.float64)
    vander = np.vander(k, increasing=True).T  # rows: powers 0..order, columns: nodes
    rhs = np.zeros(order + 1)
    rhs[1] = 1.0  # d/dt t^p at 0: 1 for p = 1, else 0
    return np.linalg.solve(vander, rhs)


def _aligned(x, scores):
    x, scores = np.asarray(x, np.float64), np.asarray(scores, np.float64)
    if x.ndim == 2:
        x, scores = x[None], scores[None]
    if x.ndim != 3 or x.shape != scores.shape:
        raise ValueError(f"x and scores must share the shape (members, n, d), got {x.shape} and {scores.shape}")
    return x, scores


def fit_mobility(x, scores, interval: float, order: int = DEFAULT_ORDER, method: str = "derivative",
                 weights=None) -> Mobility:
    """``Phi = M V^-1`` from trajectories ``x`` ``(members, n, d)`` sampled every ``interval`` and the
    score at every snapshot, ``scores`` of the same shape; ``method`` "derivative" (of order
    ``order``) or "log" (see the module docstring); ``weights`` ``(members,)`` weigh the members in
    every average (:func:`~kgmm_bayes.metrics.correlation.lagged_moments`)."""
    x, scores = _aligned(x, scores)
    if not interval > 0:
        raise ValueError(f"interval must be positive, got {interval}")
    if method == "derivative":
        c = lagged_moments(x, scores, order, weights)  # (order + 1, d, d)
        m = np.tensordot(derivative_weights(order), c, axes=1) / interval
    elif method == "log":
        from scipy.linalg import logm

        c = lagged_moments(x, scores, 1, weights)
        propagator = np.linalg.solve(c[0].T, c[1].T).T  # C(interval) C(0)^-1
        generator = logm(propagator)
        if np.iscomplexobj(generator):
            if np.abs(generator.imag).max() > 1e-8 * max(1.0, np.abs(generator.real).max()):
                raise ValueError("the lag-one propagator has a negative eigenvalue: no real generator; "
                                 "use method='derivative' or a shorter interval")
            generator = generator.real
        m = generator @ c[0] / interval
    else:
        raise ValueError(f"method must be 'derivative' or 'log', got {method!r}")
    w = np.ones(len(scores)) if weights is None else np.asarray(weights, np.float64)
    v = np.einsum("m,mti,mtj->ij", w, scores, scores) / (w.sum() * scores.shape[1])
    phi = np.linalg.solve(v.T, m.T).T  # M V^-1
    return Mobility(phi=phi, m=m, v=v, min_sym_eigenvalue=float(np.linalg.eigvalsh(0.5 * (phi + phi.T)).min()))


def noise_factor(phi) -> np.ndarray:
    """``Sigma`` lower triangular with ``Sigma Sigma^T = 2 sym(Phi)``; ValueError if sym(Phi) is not
    positive definite."""
    phi = np.asarray(phi, np.float64)
    try:
        return np.linalg.cholesky(phi + phi.T)
    except np.linalg.LinAlgError:
        raise ValueError("the mobility's symmetric part is not positive definite: no diffusion matches it") from None


def impulse_responses(x, scores, max_lag: int) -> np.ndarray:
    """``R_ij(k) = -E[(x_i(t + k) - mean_i) s_j(t)]`` ``(max_lag + 1, d, d)`` (the mean is subtracted
    only to lower the noise: ``E[s] = 0``)."""
    x, scores = _aligned(x, scores)
    return -lagged_moments(x - x.mean(axis=(0, 1)), scores, max_lag)


def second_moment_responses(x, scores, max_lag: int) -> np.ndarray:
    """``-E[(x_i(t + k)^2 - E[x_i^2]) s_j(t)]`` ``(max_lag + 1, d, d)``: the response of the second
    moments ``E[x_i^2]`` to an impulse in ``x_j``."""
    x, scores = _aligned(x, scores)
    sq = x**2
    return -lagged_moments(sq - sq.mean(axis=(0, 1)), scores, max_lag)


def step_responses(impulse, interval: float) -> np.ndarray:
    """Time integral from 0 of impulse responses ``(L, d, d)`` sampled every ``interval`` (trapezoid)."""
    impulse = np.asarray(impulse, np.float64)
    steps = 0.5 * (impulse[1:] + impulse[:-1]) * interval
    return np.concatenate([np.zeros_like(impulse[:1]), np.cumsum(steps, axis=0)])


def to_physical(std, phi=None, responses=None):
    """A mobility and responses of z-scored coordinates ``z = (x - mean) / std`` in physical units:
    ``Phi_x = D Phi_z D`` and ``R_x,ij = std_i R_z,ij / std_j`` (``D = diag(std)``; an impulse of one
    physical unit in ``x_j`` is ``1 / std_j`` in ``z_j``).  Returns ``(phi, responses)``."""
    std = np.asarray(std, np.float64)
    phi_x = None if phi is None else std[:, None] * np.asarray(phi, np.float64) * std[None, :]
    resp_x = None if responses is None else np.asarray(responses, np.float64) * std[:, None] / std[None, :]
    return phi_x, resp_x
