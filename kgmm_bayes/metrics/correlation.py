"""Lagged moments of time series ``(members, n, d)``: correlation matrix functions and the
cross moments ``E[x(t + tau) y(t)^T]`` that mobilities and responses are made of.

All pairs ``(i, j)`` are kept, not only the diagonal: a non-reversible system has
``C_ij(tau) != C_ji(tau)``.  Averages run over members and over every time ``t`` with
``t + tau`` inside the member (``n - k`` pairs at lag ``k``: unbiased for a stationary series).
"""
from __future__ import annotations

import numpy as np

__all__ = ["lagged_moments", "correlation_functions"]


def _series(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must have shape (members, n, d) or (n, d), got {np.shape(a)}")
    return a


def lagged_moments(x, y, max_lag: int, weights=None) -> np.ndarray:
    """``E[x(t + k) y(t)^T]`` for ``k = 0 .. max_lag``: ``(max_lag + 1, d, e)``.

    ``x`` ``(members, n, d)`` and ``y`` ``(members, n, e)`` are aligned in time (``y`` is often a
    function of ``x``, e.g. its score).  Computed with zero-padded FFTs (linear correlation).
    ``weights`` ``(members,)``: non-negative weights of the members (a bootstrap's; integer weights
    are the same as repeating members), default all 1.
    """
    x, y = _series(x, "x"), _series(y, "y")
    if x.shape[:2] != y.shape[:2]:
        raise ValueError(f"x and y must share (members, n), got {x.shape[:2]} and {y.shape[:2]}")
    members, n, _ = x.shape
    max_lag = int(max_lag)
    if not 0 <= max_lag < n:
        raise ValueError(f"max_lag must be in [0, {n - 1}] for {n} snapshots per member, got {max_lag}")
    size = 1 << int(np.ceil(np.log2(2 * n)))
    w = np.ones(members) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (members,) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError(f"weights must be ({members},), non-negative and not all zero")
    # sum_t x(t + k) y(t): the correlation of x with y is irfft(fx * conj(fy)) at lag k >= 0; members in
    # batches whose spectra take about 64 MB, so the memory does not grow with the members
    batch = max(1, (1 << 26) // (16 * size * (x.shape[2] + y.shape[2])))
    spectrum = 0.0
    for lo in range(0, members, batch):
        fx = np.fft.rfft(x[lo:lo + batch], n=size, axis=1)  # (m, F, d)
        fy = np.fft.rfft(y[lo:lo + batch], n=size, axis=1)  # (m, F, e)
        spectrum = spectrum + np.einsum("m,mfi,mfj->fij", w[lo:lo + batch], fx, np.conj(fy))
    cross = np.fft.irfft(spectrum, n=size, axis=0)[:max_lag + 1]
    pairs = w.sum() * (n - np.arange(max_lag + 1))
    return cross / pairs[:, None, None]


def correlation_functions(x, max_lag: int) -> np.ndarray:
    """``C_ij(k) = corr(x_i(t + k), x_j(t))`` for ``k = 0 .. max_lag``: ``(max_lag + 1, d, d)``
    (deviations from the pooled mean, divided by the pooled standard deviations)."""
    x = _series(x, "x")
    dev = x - x.mean(axis=(0, 1))
    sd = dev.reshape(-1, dev.shape[-1]).std(axis=0)
    if np.any(sd == 0):
        raise ValueError("correlation_functions: a coordinate is constant")
    return lagged_moments(dev, dev, max_lag) / np.outer(sd, sd)
