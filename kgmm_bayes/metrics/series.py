"""Statistics of time series ``(members, n, D)``: one- and two-point PDFs, decorrelation times,
and the one/two-point comparison of a reduced-order model's series with the data's (used for
Kuramoto-Sivashinsky, where no score is known)."""
from __future__ import annotations

import numpy as np

from .density import relative_entropy

__all__ = ["one_point_pdf", "two_point_pdfs", "decorrelation_time", "integrated_time", "lag_products",
           "ks_statistics"]


def _check_samples(samples, name="samples") -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 3:
        raise ValueError(f"{name} must have shape (members, n, D), got {samples.shape}")
    return samples


def _edges(samples, edges, bins):
    if edges is None:
        return np.linspace(samples.min(), samples.max(), int(bins) + 1)
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("edges must be a strictly increasing 1-D array of at least 2 values")
    return edges


def one_point_pdf(samples, edges=None, bins: int = 100):
    """One-point PDF pooled over all coordinates, as a histogram density.

    Parameters
    ----------
    samples : array (members, n, D)
    edges : array (n_bins + 1,), optional
        Common bin edges (pass the same edges for the reference and a model); default:
        ``bins`` equal bins spanning the data.

    Returns
    -------
    density : array (n_bins,)
        ``count / (total * width)``: integrates to the fraction of samples inside ``edges``
        (1 with the default edges).
    edges : array (n_bins + 1,)
    """
    samples = _check_samples(samples)
    edges = _edges(samples, edges, bins)
    counts, _ = np.histogram(samples.ravel(), bins=edges)
    return counts / (samples.size * np.diff(edges)), edges


def two_point_pdfs(samples, edges=None, bins: int = 50, lags=(1, 2, 3)):
    r"""Two-point PDFs :math:`P(u_i, u_{i+d})`, pooled over :math:`i`, index periodic mod ``D``.

    Returns ``density`` of shape ``(len(lags), n_bins, n_bins)`` (first axis of each
    histogram: :math:`u_i`; second: :math:`u_{i+d}`) on the common ``edges`` for both axes,
    normalised like :func:`one_point_pdf`, and ``edges``.
    """
    samples = _check_samples(samples)
    edges = _edges(samples, edges, bins)
    flat = samples.reshape(-1, samples.shape[-1])
    area = np.outer(np.diff(edges), np.diff(edges))
    out = []
    for lag in lags:
        if int(lag) != lag:
            raise ValueError(f"lags must be integers, got {lag!r}")
        first, second = flat.ravel(), np.roll(flat, -int(lag), axis=1).ravel()
        counts, _, _ = np.histogram2d(first, second, bins=(edges, edges))
        out.append(counts / (first.size * area))
    return np.stack(out), edges


def decorrelation_time(samples, spacing: float) -> np.ndarray:
    r"""Decorrelation time per coordinate: the ACF integrated up to its first zero crossing.

    The autocovariance :math:`C(k) = \frac1{M (n - k)}\sum_m \sum_{t < n-k} \tilde x_{m,t}\,
    \tilde x_{m,t+k}` (deviations from the pooled mean; every lag averaged over its own pairs, so
    series of different lengths are compared without a taper) gives :math:`\rho(k) = C(k)/C(0)`;
    with :math:`K` the first lag where :math:`\rho \le 0` (``n`` if none), the trapezoid
    rule truncated there gives :math:`\tau = \Delta\,[\tfrac12 + \sum_{k=1}^{K-1} \rho(k)]`,
    so for an AR(1) series :math:`\rho(k) = \phi^k`,
    :math:`\tau \to \Delta (1 + \phi) / (2 (1 - \phi))`.

    Parameters
    ----------
    samples : array (members, n, D)
        Independent members of stationary time series.
    spacing : float
        Time between consecutive snapshots.

    Returns
    -------
    array (D,)
    """
    samples = _check_samples(samples)
    if not spacing > 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    members, n, _ = samples.shape
    if n < 2:
        raise ValueError(f"need at least 2 snapshots per member, got {n}")
    acov = lag_products(samples, n - 1, samples.mean(axis=(0, 1))) / members / (n - np.arange(n))[:, None]
    return np.array([integrated_time(r, spacing) for r in (acov / acov[0]).T])


def lag_products(series, max_lag: int, mean) -> np.ndarray:
    """``sum_{m, t < n - k} (x_mt - mean)(x_m,t+k - mean)`` per coordinate, ``k = 0 .. max_lag``:
    ``(max_lag + 1, d)`` from series ``(members, n, d)``, by zero-padded FFT (linear correlation) over
    batches of members whose spectra take about 64 MB, so the memory does not grow with the members."""
    members, n, d = series.shape
    size = 1 << int(np.ceil(np.log2(2 * n)))
    batch = max(1, (1 << 26) // (16 * size * d))
    total = 0.0
    for lo in range(0, members, batch):
        spec = np.fft.rfft(np.asarray(series[lo:lo + batch], np.float64) - mean, n=size, axis=1)
        total = total + np.fft.irfft(np.abs(spec) ** 2, n=size, axis=1)[:, :max_lag + 1].sum(axis=0)
    return total


def integrated_time(rho, spacing: float) -> float:
    """``spacing x (1/2 + sum of rho(k), k = 1 .. K - 1)`` with ``K`` the first lag where ``rho <= 0``
    (all lags if none): the decorrelation time of an autocorrelation function ``rho`` ``(n,)``."""
    rho = np.asarray(rho, np.float64)
    nonpositive = np.flatnonzero(rho <= 0)
    cut = nonpositive[0] if nonpositive.size else len(rho)
    return float(spacing * (0.5 + rho[1:cut].sum()))


def ks_statistics(reference, model_series, model_spacing: float, data_tau, bins: int = 120, bins2: int = 60,
                  lags=(1, 2, 3), grid_points: int = 2048, matched: bool = False) -> dict:
    """A reduced-order model's KS statistics against the data's.

    ``reference`` ``(n, D)``: the study's reference snapshots; ``model_series``
    ``(particles, n_snap, D)`` in physical units, ``model_spacing`` model time apart;
    ``data_tau`` ``(D,)``: the data's decorrelation times (:func:`decorrelation_time` of
    :func:`fine_reference_series`).  Returns the pooled one-point PDF's relative entropy
    (KDE, as the marginals) and L1 distance (histograms on common edges), the L1
    distance of the two-point PDFs at each separation in ``lags`` (keyed by the separation as a string, as
    JSON writes it: a comparison row read back from its stage cache reads the same), and the model's
    decorrelation time per coordinate with its ratio to the data's.  ``matched``: the one-point relative entropy
    with the reference smoothed as a set of the model's size (a long run; :func:`~kgmm_bayes.metrics.density.
    relative_entropy`).
    """
    ref = np.asarray(reference, dtype=np.float64)[None]
    model = _check_samples(model_series, "model_series")
    lo, hi = min(ref.min(), model.min()), max(ref.max(), model.max())
    pad = 0.05 * (hi - lo)
    edges = np.linspace(lo - pad, hi + pad, bins + 1)
    p_ref, _ = one_point_pdf(ref, edges)
    p_mod, _ = one_point_pdf(model, edges)
    edges2 = np.linspace(lo - pad, hi + pad, bins2 + 1)
    pp_ref, _ = two_point_pdfs(ref, edges2, lags=lags)
    pp_mod, _ = two_point_pdfs(model, edges2, lags=lags)
    area = np.outer(np.diff(edges2), np.diff(edges2))
    tau = decorrelation_time(model, model_spacing)
    return {"one_point_relative_entropy": relative_entropy(ref.ravel(), model.ravel(), grid_points, matched=matched),
            "one_point_l1": float(np.sum(np.abs(p_ref - p_mod) * np.diff(edges))),
            "two_point_l1": {str(int(lag)): float(np.sum(np.abs(pp_ref[j] - pp_mod[j]) * area)) for j, lag in enumerate(lags)},
            "decorrelation_time_model": [float(v) for v in tau],
            "decorrelation_time_ratio_model_over_data": [float(v) for v in tau / np.asarray(data_tau)],
            "one_point_pdf": {"edges": edges.tolist(), "reference": p_ref.tolist(), "model": p_mod.tolist()}}
