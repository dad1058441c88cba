r"""The Langevin reduced-order model (DESIGN.md, "Reduced-order model").

In z-scored coordinates the model is

.. math::

    dx = s(x)\,dt + \sqrt{2}\,dW,

whose stationary density is :math:`p` when :math:`s = \nabla \log p`.  It is
integrated by Euler-Maruyama, :math:`x_{n+1} = x_n + s(x_n)\,\Delta t +
\sqrt{2\Delta t}\,\xi_n`, for all particles at once inside one ``lax.scan``;
a burn-in is dropped and a snapshot kept every ``thin`` steps.

With a mobility :math:`\Phi` (:mod:`kgmm_bayes.rom.mobility`) the model is
:math:`dx = \Phi s(x)\,dt + \Sigma\,dW` with :math:`\Sigma\Sigma^T = 2\,\mathrm{sym}(\Phi)`, the same
stationary density in the data's time; ``mobility=None`` is :math:`\Phi = I`.

A particle that leaves the box ``|x_i| <= box`` or becomes non-finite is
frozen where it was, flagged, counted and excluded from the samples: it is
never silently reset.
"""
from __future__ import annotations

import functools
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..progress import bar, tick
from .mobility import noise_factor

__all__ = ["LangevinResult", "simulate_langevin", "max_jacobian_eigenvalue", "with_mobility", "mobility_noise", "jit_drift"]


class LangevinResult(NamedTuple):
    samples: np.ndarray  # (n_snapshots, particles, d); escaped particles excluded by `alive`
    alive: np.ndarray  # (particles,) False for particles that escaped the box or became NaN
    escaped: int  # particles that left the box
    non_finite: int  # particles that became NaN/Inf
    wall_time: float

    def kept_samples(self) -> np.ndarray:
        """Snapshots of the particles that stayed in the box, as ``(n, d)``."""
        return self.samples[:, self.alive].reshape(-1, self.samples.shape[-1])


def trajectory(drift_fn: Callable, key, drift_params, x0, n_snap, thin, burn_in, dt, box, progress,
               noise_chol=None):
    """The traced simulation of one model: ``(snapshots (n_snap, P, d), alive (P,), finite (P,))``.

    ``noise_chol`` ``(d, d)``: the noise is ``sqrt(2 dt) L xi`` (``L L^T = sym(Phi)``); None: ``L = I``.

    Not jitted: :func:`simulate_langevin` jits it as is and the posterior ensemble
    (:mod:`kgmm_bayes.rom.ensemble`) jits its ``vmap`` over ``(key, drift_params, x0)``,
    which batches the step inside the one ``lax.scan``, so member ``s`` of an
    ensemble draws exactly the noise of a single run with key ``s``.
    """
    particles, d = x0.shape
    scale = jnp.sqrt(2.0 * dt).astype(x0.dtype)

    def step(carry, k):
        x, alive, finite = carry
        xi = jax.random.normal(k, x.shape, x.dtype)
        if noise_chol is not None:
            xi = xi @ noise_chol.T.astype(x.dtype)
        proposal = x + drift_fn(drift_params, x).astype(x.dtype) * dt + scale * xi
        ok_finite = jnp.all(jnp.isfinite(proposal), axis=-1)
        ok_box = jnp.all(jnp.abs(proposal) <= box, axis=-1)
        finite = finite & (ok_finite | ~alive)
        alive = alive & ok_finite & ok_box
        return (jnp.where(alive[:, None], proposal, x), alive, finite), None

    burn_key, run_key = jax.random.split(key)
    init = (x0, jnp.ones(particles, bool), jnp.ones(particles, bool))
    if burn_in > 0:
        init, _ = jax.lax.scan(step, init, jax.random.split(burn_key, burn_in))

    def snapshot(carry, inputs):
        k, i = inputs
        carry, _ = jax.lax.scan(step, carry, jax.random.split(k, thin))
        if progress:
            tick(i + 1, max(1, n_snap // 100))
        return carry, carry[0]

    (x, alive, finite), snaps = jax.lax.scan(snapshot, init, (jax.random.split(run_key, n_snap), jnp.arange(n_snap)))
    return snaps, alive, finite


_run = partial(jax.jit, static_argnums=(0, 4, 5, 6, 9))(trajectory)


def check_settings(dt, steps: int, burn_in: int, thin: int, box) -> int:
    """Validate Langevin settings before tracing; returns the number of snapshots kept."""
    if isinstance(box, (str, bool)):  # a spec's [langevin] box = "auto" is resolved by the study
        raise ValueError(f"langevin box must be a number (z-scored units), got {box!r}: a spec's \"auto\" is resolved "
                         "from the data by kgmm_bayes.study.checks.resolved_box")
    for label, value in (("dt", dt), ("steps", steps), ("thin", thin), ("box", box)):
        if not value > 0:
            raise ValueError(f"langevin {label} must be positive, got {value}")
    if burn_in < 0:
        raise ValueError(f"langevin burn_in must be >= 0, got {burn_in}")
    n_snap = int(steps) // int(thin)
    if n_snap < 1:
        raise ValueError(f"langevin steps ({steps}) must be at least thin ({thin})")
    return n_snap


@functools.lru_cache(maxsize=None)
def with_mobility(drift_fn: Callable) -> Callable:
    """The drift ``Phi s(x)`` of parameters ``(params, Phi)`` for a score ``drift_fn(params, x)``
    (one function object per ``drift_fn``, so jitted consumers compile once)."""
    def drift(params, x):
        inner, phi = params
        return drift_fn(inner, x) @ phi.T.astype(x.dtype)
    return drift


def mobility_noise(phi) -> np.ndarray:
    """``L`` with ``L L^T = sym(Phi)`` (the noise ``sqrt(2 dt) L xi`` has covariance ``2 sym(Phi) dt``)."""
    return noise_factor(phi) / np.sqrt(2.0)


def simulate_langevin(key, drift_fn: Callable, drift_params, x0, dt: float, steps: int,
                      burn_in: int, thin: int, box: float = 10.0, progress: bool = False,
                      mobility=None) -> LangevinResult:
    """Simulate ``dx = drift_fn(drift_params, x) dt + sqrt(2) dW`` from particles ``x0`` ``(P, d)``,
    or with ``mobility`` ``Phi`` ``(d, d)``: ``dx = Phi drift dt + Sigma dW``, ``Sigma Sigma^T = 2 sym(Phi)``.

    ``drift_fn`` must be a pure function of ``(drift_params, x)`` with ``x`` of
    shape ``(P, d)``; it is static under ``jit``, so pass the same function
    object to reuse the compiled simulation.
    """
    import time

    n_snap = check_settings(dt, steps, burn_in, thin, box)
    x0 = jnp.asarray(x0, dtype=jnp.float32)
    noise = None
    if mobility is not None:
        noise = jnp.asarray(mobility_noise(mobility), jnp.float32)
        drift_fn, drift_params = with_mobility(drift_fn), (drift_params, jnp.asarray(mobility, jnp.float32))
    start = time.perf_counter()
    with bar("simulating reduced-order model (snapshots after burn-in)", n_snap, progress):
        snaps, alive, finite = _run(drift_fn, key, drift_params, x0, n_snap, int(thin), int(burn_in),
                                    jnp.float32(dt), jnp.float32(box), bool(progress), noise)
    snaps = np.asarray(snaps)
    wall = time.perf_counter() - start
    alive = np.asarray(alive)
    non_finite = int(np.sum(~np.asarray(finite)))
    return LangevinResult(samples=snaps, alive=alive, escaped=int(np.sum(~alive)) - non_finite,
                          non_finite=non_finite, wall_time=wall)


def max_jacobian_eigenvalue(drift_fn: Callable, drift_params, points) -> float:
    """Largest ``|eigenvalue|`` of the drift's Jacobian over ``points`` ``(n, d)``.

    Euler-Maruyama on ``dx = s(x) dt`` is linearly stable where ``dt |lambda| < 2``
    for the Jacobian's eigenvalues ``lambda``: ``dt`` times this number says how
    close a step size is to that limit.
    """
    x = jnp.asarray(points, dtype=jnp.float32)
    jac = _jacobians(drift_fn)(drift_params, x)
    return float(np.max(np.abs(np.linalg.eigvals(np.asarray(jac, dtype=np.float64)))))


@functools.lru_cache(maxsize=64)
def jit_drift(drift_fn: Callable):
    """``drift_fn`` compiled, once per drift function object (evaluations outside the simulation)."""
    return jax.jit(drift_fn)


@functools.lru_cache(maxsize=64)
def _jacobians(drift_fn: Callable):
    """The drift's Jacobians at points, compiled once per drift function (op by op, each call compiled a dozen
    small programs; a new jitted closure per call compiled the whole again)."""
    return jax.jit(jax.vmap(lambda params, xi: jax.jacfwd(lambda y: drift_fn(params, y[None])[0])(xi),
                            in_axes=(None, 0)))


def initial_particles(key, points, counts, particles: int):
    """``particles`` starting points drawn from weighted ``points`` by count, and the key left for the noise."""
    init_key, run_key = jax.random.split(key)
    counts = np.asarray(counts, dtype=np.float64)
    pick = _choice(init_key, jnp.asarray(counts / counts.sum()), int(particles))
    return np.asarray(points)[np.asarray(pick)], run_key


@functools.partial(jax.jit, static_argnums=2)
def _choice(key, p, size: int):  # one program (op by op, jax.random.choice compiled nine: 0.6 s on a cold start)
    return jax.random.choice(key, p.shape[0], (size,), p=p)
