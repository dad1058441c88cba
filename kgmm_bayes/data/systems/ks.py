r"""Kuramoto-Sivashinsky reference system (shared/SYSTEMS.md, system 6) and its statistics.

The field :math:`u(x, t)` on the periodic domain :math:`[0, L)`, :math:`L = 34`, obeys

.. math::
    u_t + u u_x + u_{xx} + u_{xxxx} = 0 .

With :math:`N = 64` grid points and wavenumbers :math:`k_n = 2 \pi n / L`, the Fourier
coefficients :math:`\hat u_n` satisfy :math:`\hat u_t = \mathcal L \hat u + \mathcal N(\hat u)`,

.. math::
    \mathcal L_n = k_n^2 - k_n^4, \qquad
    \mathcal N_n(\hat u) = -\tfrac{i k_n}{2}\, \mathrm{FFT}\big[(\mathrm{IFFT}\, \hat u)^2\big]_n ,

the nonlinear term dealiased by the 2/3 rule (modes :math:`n > N/3` zeroed before and after
the product).  Time stepping is ETDRK4 (Cox & Matthews 2002) with the :math:`\varphi`-function
coefficients evaluated by contour integrals over :math:`M = 32` points of the upper half of the
unit circle around each :math:`h \mathcal L_n` (Kassam & Trefethen 2005, SIAM J. Sci. Comput.
26(4), eq. 2.5 and section 5).  The spatial mean (:math:`n = 0`) is conserved exactly.

Data (section 6 of SYSTEMS.md): an ensemble of members, each from a small random field drawn
from the key, run through a transient of >= 1000 time units; every ``thin`` steps the field
minus its spatial mean is sampled at every ``stride``-th grid point (``D = N / stride``), for
every offset ``0 .. stride - 1`` of the sampling grid (translation invariance), so each field
gives ``stride`` snapshots.

The statistics of such series (one-point PDF, two-point PDFs, decorrelation times) are in
:mod:`kgmm_bayes.metrics.series`.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .base import System

__all__ = ["KS_LENGTH", "KS_GRID", "EtdCoefficients", "etdrk4_coefficients", "ks_rhs",
           "ks_integrate", "ks_fields", "reduce_fields", "simulate_ks", "ks_system", "fine_reference_series"]

KS_LENGTH = 34.0
KS_GRID = 64
_CONTOUR_POINTS = 32  # upper half circle: the full-circle average with 64 points


class EtdCoefficients(NamedTuple):
    """ETDRK4 coefficients per rfft mode, shape ``(N // 2 + 1,)`` each."""

    E: np.ndarray  # exp(h L)
    E2: np.ndarray  # exp(h L / 2)
    Q: np.ndarray  # (h / 2) phi_1(h L / 2) = (exp(h L / 2) - 1) / L
    f1: np.ndarray
    f2: np.ndarray
    f3: np.ndarray
    g: np.ndarray  # -i k / 2, dealiased (complex)
    mask: np.ndarray  # 2/3-rule mask (float)


def _wavenumbers(n_grid: int, length: float) -> np.ndarray:
    return 2.0 * np.pi / length * np.arange(n_grid // 2 + 1)


def _dealias_mask(n_grid: int) -> np.ndarray:
    return (np.arange(n_grid // 2 + 1) <= n_grid // 3).astype(np.float64)


def etdrk4_coefficients(dt: float, n_grid: int = KS_GRID, length: float = KS_LENGTH,
                        contour_points: int = _CONTOUR_POINTS) -> EtdCoefficients:
    r"""ETDRK4 coefficients for KS by contour integration (Kassam & Trefethen 2005).

    With :math:`z = h \mathcal L_n` and :math:`r_m = e^{i \pi (m - 1/2) / M}`,
    :math:`Q = h\, \mathrm{Re}\langle (e^{z_m/2} - 1)/z_m \rangle`,
    :math:`f_1 = h\, \mathrm{Re}\langle (-4 - z_m + e^{z_m}(4 - 3 z_m + z_m^2))/z_m^3 \rangle`,
    :math:`f_2 = h\, \mathrm{Re}\langle (2 + z_m + e^{z_m}(z_m - 2))/z_m^3 \rangle`,
    :math:`f_3 = h\, \mathrm{Re}\langle (-4 - 3 z_m - z_m^2 + e^{z_m}(4 - z_m))/z_m^3 \rangle`,
    averages over :math:`z_m = z + r_m`, which avoids the cancellation of the direct formulas.
    """
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt}")
    if n_grid < 8 or n_grid % 2:
        raise ValueError(f"n_grid must be even and >= 8, got {n_grid}")
    k = _wavenumbers(n_grid, length)
    lin = k**2 - k**4
    z = dt * lin[:, None] + np.exp(1j * np.pi * (np.arange(1, contour_points + 1) - 0.5)
                                    / contour_points)[None, :]
    ez = np.exp(z)
    mean = lambda a: np.real(a.mean(axis=1))  # noqa: E731
    mask = _dealias_mask(n_grid)
    return EtdCoefficients(
        E=np.exp(dt * lin), E2=np.exp(dt * lin / 2),
        Q=dt * mean((np.exp(z / 2) - 1) / z),
        f1=dt * mean((-4 - z + ez * (4 - 3 * z + z**2)) / z**3),
        f2=dt * mean((2 + z + ez * (z - 2)) / z**3),
        f3=dt * mean((-4 - 3 * z - z**2 + ez * (4 - z)) / z**3),
        g=-0.5j * k * mask, mask=mask)


def _nonlinear(c: EtdCoefficients, v, n_grid):
    u = jnp.fft.irfft(v * c.mask, n=n_grid, axis=-1)
    return c.g * jnp.fft.rfft(u * u, axis=-1)


def _etdrk4_step(c: EtdCoefficients, n_grid, v):
    nv = _nonlinear(c, v, n_grid)
    a = c.E2 * v + c.Q * nv
    na = _nonlinear(c, a, n_grid)
    b = c.E2 * v + c.Q * na
    nb = _nonlinear(c, b, n_grid)
    cc = c.E2 * a + c.Q * (2 * nb - nv)
    nc = _nonlinear(c, cc, n_grid)
    return c.E * v + nv * c.f1 + 2 * (na + nb) * c.f2 + nc * c.f3


def ks_rhs(u, length: float = KS_LENGTH):
    """Semi-discrete right-hand side ``-u u_x - u_xx - u_xxxx`` (pseudo-spectral, dealiased).

    ``u`` has shape ``(..., N)`` on the uniform grid; this is the drift of the
    ``System`` entry, for reference (the simulator steps in Fourier space).
    """
    u = jnp.asarray(u)
    n_grid = u.shape[-1]
    k = _wavenumbers(n_grid, length)
    mask = _dealias_mask(n_grid)
    v = jnp.fft.rfft(u, axis=-1)
    w = jnp.fft.irfft(v * mask, n=n_grid, axis=-1)
    rhs = (k**2 - k**4) * v - 0.5j * k * mask * jnp.fft.rfft(w * w, axis=-1)
    return jnp.fft.irfft(rhs, n=n_grid, axis=-1)


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _integrate(u0, dt, steps, thin, length):
    n_grid = u0.shape[-1]
    c = EtdCoefficients(*(jnp.asarray(a) for a in etdrk4_coefficients(dt, n_grid, length)))
    step = lambda v, _: (_etdrk4_step(c, n_grid, v), None)  # noqa: E731

    def block(v, _):
        v, _ = jax.lax.scan(step, v, None, length=thin)
        return v, jnp.fft.irfft(v, n=n_grid, axis=-1)

    _, fields = jax.lax.scan(block, jnp.fft.rfft(u0, axis=-1), None, length=steps // thin)
    return jnp.moveaxis(fields, 0, -2)


def ks_integrate(u0, dt: float, steps: int, thin: int | None = None, length: float = KS_LENGTH):
    """ETDRK4 run of KS from ``u0`` (shape ``(..., N)``, float64).

    Returns the fields every ``thin`` steps, shape ``(..., steps // thin, N)``; with
    ``thin=None`` only the final field, shape ``(..., N)``.
    """
    steps = int(steps)
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    final = thin is None
    thin = steps if final else int(thin)
    if thin <= 0 or thin > steps:
        raise ValueError(f"thin must be in [1, steps], got {thin}")
    fields = _integrate(jnp.asarray(u0, dtype=jnp.float64), float(dt), steps, thin, float(length))
    return fields[..., -1, :] if final else fields


def ks_fields(key, members: int, n_snap: int, thin: int, burn_in: int, dt: float,
              n_grid: int = KS_GRID, length: float = KS_LENGTH, amplitude: float = 0.1):
    """KS fields ``(members, n_snap, N)`` after ``burn_in`` steps, one every ``thin`` steps.

    Member ``m`` starts from white noise of standard deviation ``amplitude`` on the grid
    (drawn from ``key``, mean removed), so members are independent.
    """
    u0 = amplitude * jax.random.normal(key, (members, n_grid), dtype=jnp.float64)
    u0 = u0 - u0.mean(axis=-1, keepdims=True)
    if burn_in > 0:
        u0 = ks_integrate(u0, dt, burn_in, length=length)
    return ks_integrate(u0, dt, n_snap * thin, thin, length=length)


def reduce_fields(fields, stride: int) -> np.ndarray:
    """Reduced, shift-augmented coordinates from fields ``(members, n, N)``.

    The spatial mean of each field is removed; then for each offset ``o = 0 .. stride - 1``
    the coordinates are ``u(x_{o + stride j})``, ``j = 0 .. N / stride - 1``.  Output shape
    ``(members, stride * n, N / stride)``, offset-major: rows ``o n .. (o + 1) n - 1`` are the
    time series of offset ``o`` (reshape to ``(members, stride, n, D)`` to recover it).
    """
    fields = np.asarray(fields)
    members, n, n_grid = fields.shape
    if stride <= 0 or n_grid % stride:
        raise ValueError(f"stride must divide the grid size {n_grid}, got {stride}")
    fields = fields - fields.mean(axis=-1, keepdims=True)
    blocks = fields.reshape(members, n, n_grid // stride, stride)  # [..., j, o] = u(o + stride j)
    return np.moveaxis(blocks, -1, 1).reshape(members, stride * n, n_grid // stride)


def simulate_ks(key, system, members, n_snap, thin, burn_in, dt, dtype, *, stride):
    """``System.simulator`` for KS: ``(members, stride * n_snap, 64 // stride)`` in ``dtype``."""
    fields = ks_fields(key, members, n_snap, thin, burn_in, dt)
    return reduce_fields(fields, stride).astype(dtype)


def ks_system(name: str, stride: int, members: int, fields_per_member: int):
    """The ``System`` entry for KS sampled at every ``stride``-th grid point.

    dt = 0.25; a transient of 4000 steps (1000 time units) dropped; a field every 80 steps
    (20 time units: the pointwise ACF is ~0.5 there and the decorrelation time, dominated
    by the slow drift of the 4-cell pattern, ~70 time units); ``stride`` snapshots per field.
    ``x0`` is unused: members start from random fields drawn from the key.
    """
    thin = 80
    return System(name=name, dim=KS_GRID // stride, noise_dim=0, drift=ks_rhs, diffusion=_no_noise,
                  x0=(), dt=0.25, members=members, steps=fields_per_member * thin, thin=thin,
                  burn_in=4_000, score=None, observe=tuple(range(0, KS_GRID, stride)),
                  state_dim=KS_GRID, simulator=partial(simulate_ks, stride=stride))


def _no_noise(u):
    return jnp.zeros((u.shape[-1], 0), dtype=u.dtype)


def fine_reference_series(key, system, time_units: float = 500.0, spacing: float = 1.0, members: int = 16,
                          burn_in_time: float = 1000.0) -> np.ndarray:
    """Reduced KS series ``(members * stride, n, D)`` sampled every ``spacing`` time units.

    The study's data are fields 20 time units apart, too coarse to resolve the
    decorrelation time; this is an independent run (``key``) of ``members`` fields after a
    transient of ``burn_in_time``, for the decorrelation time of the data.
    """
    stride = KS_GRID // system.dim
    thin = max(1, int(round(spacing / system.dt)))
    n_snap = int(round(time_units / (thin * system.dt)))
    fields = ks_fields(key, members, n_snap, thin, int(round(burn_in_time / system.dt)), system.dt)
    reduced = reduce_fields(np.asarray(fields), stride)  # (members, stride * n, D), offset-major
    return reduced.reshape(members * stride, n_snap, system.dim)
