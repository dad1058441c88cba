"""Metrics (DESIGN.md, "Metrics"; SYSTEMS.md, "How the authors compared").

Relative entropy of one-dimensional marginals, exactly as the KGMM authors
computed it: both densities by Gaussian KDE (Scott's rule, as
``scipy.stats.gaussian_kde``), evaluated on one uniform grid of 2048 points
spanning both sample sets, renormalised, floored at 1e-10, and

    D_KL(p || q) = sum_j p_j log(p_j / q_j) dx

by a Riemann sum, with ``p`` the reference and ``q`` the model.

Scott's bandwidth shrinks as ``n^(-1/5)``, so two sample sets of different sizes are smoothed
differently, and that difference alone adds to their relative entropy wherever the density curves
sharply: a tenth of a long run of Kuramoto-Sivashinsky D = 4 scored against the whole run gives 0.00106,
seven times the 0.00014 between two disjoint tenths.  ``matched=True`` (a long run scored against sets
of another size) smooths the reference as Scott's rule would a set of the model's size (the reference's
own standard deviation times ``n_model^(-1/5)``), so that both sides carry the same smoothing, as two
sets of one size do.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["gaussian_kde_1d", "scott_bandwidth", "relative_entropy", "marginal_relative_entropies", "BinnedDensity",
           "kde_mesh", "linear_bins", "binned_density",
           "weighted_score_error", "band_coverage"]


_BLOCK = 1024  # samples per inner step: (grid x 1024) stays in cache
_CHUNK = 64 * _BLOCK  # samples per compiled call: one compiled shape for every n


@jax.jit
def _kde_chunk(samples, grid, bandwidth):
    def body(total, block):
        z = (grid[:, None] - block[None, :]) / bandwidth
        return total + jnp.sum(jnp.exp(-0.5 * z * z), axis=1), None

    total, _ = jax.lax.scan(body, jnp.zeros_like(grid), samples.reshape(-1, _BLOCK))
    return total


_EXACT_MAX = 20_000  # above this many samples the KDE is binned (O(n + mesh log mesh) instead of O(n grid))
_MESH_STEP = 1e-3  # binned KDE: mesh spacing in bandwidths; error O(step^2), ~1e-7 of the peak


def scott_bandwidth(samples, n: int | None = None) -> float:
    """Scott's bandwidth ``std(ddof=1) n^(-1/5)`` of 1-D ``samples``, for ``n`` samples (default: their number)."""
    samples = np.asarray(samples, dtype=np.float64).ravel()
    return float(samples.std(ddof=1) * (samples.size if n is None else int(n)) ** (-0.2))


def gaussian_kde_1d(samples, grid, bandwidth: float | None = None) -> np.ndarray:
    """Gaussian KDE with Scott's bandwidth ``std(ddof=1) n^(-1/5)`` (or ``bandwidth``) at ``grid`` (float64).

    Up to ``_EXACT_MAX`` samples, the exact sum of kernels.  Beyond, linear binning onto a
    uniform mesh ``_MESH_STEP`` bandwidths fine, an FFT convolution with the kernel and
    linear interpolation to ``grid`` (the standard binned KDE): the same density to about
    1e-7 of its peak (tested against the exact sum), at a cost that does not grow with
    ``n x len(grid)`` (posterior ensembles evaluate hundreds of KDEs of 1e5+ samples).
    """
    samples = np.asarray(samples, dtype=np.float64).ravel()
    n = samples.size
    bandwidth = scott_bandwidth(samples) if bandwidth is None else float(bandwidth)
    if n > _EXACT_MAX:
        return _binned_kde(samples, np.asarray(grid, dtype=np.float64), bandwidth)
    return _exact_kde(samples, grid, bandwidth)


def _exact_kde(samples, grid, bandwidth) -> np.ndarray:
    n = samples.size
    grid = jnp.asarray(grid, dtype=jnp.float64)
    padded = np.full(-(-n // _CHUNK) * _CHUNK, np.inf)  # exp(-inf) adds exactly 0
    padded[:n] = samples
    total = np.zeros(grid.shape[0])
    for start in range(0, padded.size, _CHUNK):
        total += np.asarray(_kde_chunk(jnp.asarray(padded[start:start + _CHUNK]), grid, bandwidth))
    return total / (n * bandwidth * np.sqrt(2.0 * np.pi))


def _binned_kde(samples, grid, bandwidth) -> np.ndarray:
    reach = 8.0 * bandwidth  # the kernel below exp(-32) ~ 1e-14 is left out
    mesh = kde_mesh(min(samples.min(), grid.min()) - reach, max(samples.max(), grid.max()) + reach, bandwidth)
    return BinnedDensity(*mesh, linear_bins(samples, *mesh), samples.size, bandwidth).pdf(grid)


def binned_density(samples) -> "BinnedDensity":
    """The Gaussian KDE of 1-D ``samples`` (Scott's bandwidth) binned once on a mesh over their range and 8
    bandwidths either side: evaluated on many grids at the cost of one binning and one FFT (the binned KDE
    :func:`gaussian_kde_1d` uses beyond ``_EXACT_MAX`` samples, to about 1e-7 of its peak)."""
    samples = np.asarray(samples, dtype=np.float64).ravel()
    bandwidth = scott_bandwidth(samples)
    reach = 8.0 * bandwidth
    mesh = kde_mesh(samples.min() - reach, samples.max() + reach, bandwidth)
    return BinnedDensity(*mesh, linear_bins(samples, *mesh), samples.size, bandwidth)


def kde_mesh(lo, hi, bandwidth, mesh_step=_MESH_STEP):
    """``(lo, step, points)`` of a uniform mesh over ``[lo, hi]`` ``mesh_step`` bandwidths fine (at most 2^22)."""
    points = int(np.clip(np.ceil((hi - lo) / (mesh_step * bandwidth)) + 1, 64, 2**22))
    return float(lo), float((hi - lo) / (points - 1)), points


def linear_bins(samples, lo, step, points) -> np.ndarray:
    """Linear binning: each sample splits its unit mass between its two mesh neighbours ``(points,)``."""
    pos = (np.asarray(samples, np.float64).ravel() - lo) / step
    left = np.clip(np.floor(pos).astype(np.int64), 0, points - 2)
    frac = np.clip(pos - left, 0.0, 1.0)
    return (np.bincount(left, weights=1.0 - frac, minlength=points)
            + np.bincount(left + 1, weights=frac, minlength=points))


class BinnedDensity:
    """A Gaussian KDE from linear-binning counts on a uniform mesh (the standard binned KDE): what a
    pass over data of any size accumulates in place of the samples; ``pdf(grid)`` is 0 off the mesh,
    which spans the samples and 8 bandwidths either side."""

    def __init__(self, lo, step, points, counts, n, bandwidth, low=None, high=None):
        self.lo, self.step, self.points = float(lo), float(step), int(points)
        self.counts, self.n, self.bandwidth = np.asarray(counts, np.float64), int(n), float(bandwidth)
        reach = 8.0 * self.bandwidth
        self.low = self.lo + reach if low is None else float(low)  # the samples' range
        self.high = self.lo + self.step * (self.points - 1) - reach if high is None else float(high)
        self._density = None

    def pdf(self, grid) -> np.ndarray:
        if self._density is None:
            step, bandwidth = self.step, self.bandwidth
            half = min(int(np.ceil(8.0 * bandwidth / step)), self.points - 1)
            kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * step / bandwidth) ** 2)
            size = 1 << int(np.ceil(np.log2(self.points + kernel.size - 1)))
            conv = np.fft.irfft(np.fft.rfft(self.counts, size) * np.fft.rfft(kernel, size), size)
            self._density = np.maximum(conv[half:half + self.points], 0.0) / (
                self.n * bandwidth * np.sqrt(2.0 * np.pi))
        mesh = self.lo + self.step * np.arange(self.points)
        return np.interp(np.asarray(grid, np.float64), mesh, self._density, left=0.0, right=0.0)

    def min(self):
        return self.low

    def max(self):
        return self.high


def relative_entropy(reference, model, grid_points: int = 2048, floor: float = 1e-10, matched: bool = False) -> float:
    """``D_KL(reference || model)`` of two 1-D sample sets (see module docstring); either may be a
    :class:`BinnedDensity` (data streamed in blocks) in place of its samples.  ``matched``: the reference
    (samples) smoothed at Scott's bandwidth for the model's number of samples (module docstring)."""
    reference, model = (x if isinstance(x, BinnedDensity) else np.asarray(x, dtype=np.float64).ravel()
                        for x in (reference, model))
    if matched and isinstance(reference, BinnedDensity):
        raise ValueError("a matched relative entropy smooths the reference's samples: a binned reference has its "
                         "bandwidth already")
    lo = min(reference.min(), model.min())
    hi = max(reference.max(), model.max())
    grid = np.linspace(lo, hi, grid_points)
    dx = grid[1] - grid[0]
    if matched:  # the reference's samples at the model's Scott bandwidth
        p = gaussian_kde_1d(reference, grid, scott_bandwidth(
            reference, model.n if isinstance(model, BinnedDensity) else model.size))
    else:
        p = reference.pdf(grid) if isinstance(reference, BinnedDensity) else gaussian_kde_1d(reference, grid)
    q = model.pdf(grid) if isinstance(model, BinnedDensity) else gaussian_kde_1d(model, grid)
    p = np.maximum(p / (p.sum() * dx), floor)
    q = np.maximum(q / (q.sum() * dx), floor)
    return float(np.sum(p * np.log(p / q)) * dx)


def marginal_relative_entropies(reference, model, grid_points: int = 2048, matched: bool = False) -> np.ndarray:
    """Relative entropy of each coordinate's marginal, ``(d,)``; ``reference`` (or ``model``) is
    samples ``(n, d)`` or one :class:`BinnedDensity` per coordinate; ``matched`` as :func:`relative_entropy`'s."""
    def columns(x):
        return list(x) if isinstance(x, (list, tuple)) else [np.asarray(x)[:, i] for i in range(np.shape(x)[1])]

    return np.array([relative_entropy(r, m, grid_points, matched=matched)
                     for r, m in zip(columns(reference), columns(model))])


def weighted_score_error(predicted, truth, weights) -> float:
    """Density-weighted relative squared error ``sum w |pred - true|^2 / sum w |true|^2``."""
    weights = np.asarray(weights, dtype=np.float64)
    num = np.sum(weights * np.sum((np.asarray(predicted) - truth) ** 2, axis=-1))
    den = np.sum(weights * np.sum(np.asarray(truth) ** 2, axis=-1))
    return float(num / den)


def band_coverage(truth, lower, upper, weights) -> float:
    """Density-weighted fraction of (point, coordinate) pairs with ``lower <= truth <= upper``."""
    inside = (np.asarray(truth) >= lower) & (np.asarray(truth) <= upper)
    weights = np.asarray(weights, dtype=np.float64)
    return float(np.sum(weights[:, None] * inside) / (np.sum(weights) * inside.shape[-1]))
