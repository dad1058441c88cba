"""Reference dynamical systems (shared/SYSTEMS.md), simulated with Euler-Maruyama.

Each system is an Ito SDE ``dX = f(X) dt + G(X) dW`` integrated as

    X_{n+1} = X_n + f(X_n) dt + G(X_n) sqrt(dt) xi_n,   xi_n ~ N(0, I),

for an ensemble of independent members (``vmap``) with time stepping in
``lax.scan``; a burn-in is dropped and a snapshot kept every ``thin`` steps.
Where the stationary density is known, ``score`` gives ``grad log p`` in
physical coordinates.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["System", "SYSTEMS", "get_system", "simulate"]


class System(NamedTuple):
    """A reference SDE with its default simulation settings."""

    name: str
    dim: int
    noise_dim: int
    drift: Callable  # x (d,) -> (d,)
    diffusion: Callable  # x (d,) -> (d, noise_dim)
    x0: tuple
    dt: float
    members: int
    steps: int  # steps per member after burn-in
    thin: int
    burn_in: int
    score: Optional[Callable] = None  # x (..., d) -> (..., d), physical units


# ---------------------------------------------------------------- reduced 1D
_L11, _L12, _L13 = -2.0, 0.2, 0.1
_G2, _G3, _S2, _S3, _I, _EPS = 0.6, 0.4, 1.2, 0.8, 1.0, 0.1
_A1 = _L11 + _EPS * (_I**2 * _S2**2 / (2 * _G2**2) - _L12**2 / _G2 - _L13**2 / _G3)
_B1 = -2 * _EPS * _L12 * _I / _G2
_C1 = _EPS * _I**2 / _G2
_BB = -np.sqrt(_EPS) * _I * _S2 / _G2
_AA = -_L12 * _BB / _I
_FT = _AA * _BB / 2
_SS = np.sqrt(_EPS) * _L13 * _S3 / _G3
REDUCED_1D_PARAMS = dict(a=_A1, b=_B1, c=_C1, A=_AA, B=_BB, F_tilde=_FT, s=_SS)


def _reduced_1d_drift(x):
    return -_FT + _A1 * x + _B1 * x**2 - _C1 * x**3


def _reduced_1d_diffusion(x):
    return jnp.stack([_AA - _BB * x, jnp.full_like(x, _SS)], axis=-1)  # (1, 2)


def _reduced_1d_score(x):
    x = jnp.asarray(x)
    f = _reduced_1d_drift(x)
    g2 = (_AA - _BB * x) ** 2 + _SS**2
    return 2.0 * (f + _BB * (_AA - _BB * x)) / g2


# ---------------------------------------------------------------- four-well 2D
_A4 = np.array([1.0, 1.2])
_B4 = np.array([0.6, 0.3])


def four_well_potential(x):
    x = jnp.asarray(x)
    return jnp.sum((x + _A4) ** 2 * (x - _A4) ** 2 + _B4 * x, axis=-1)


def _four_well_score(x):
    x = jnp.asarray(x)
    return -(4.0 * x * (x**2 - _A4**2) + _B4)


def _four_well_diffusion(x):
    return jnp.sqrt(2.0) * jnp.eye(2, dtype=x.dtype)


# ---------------------------------------------------------------- Lorenz-63
def _lorenz63_drift(v, sigma=10.0, rho=28.0, beta=8.0 / 3.0):
    x, y, z = v[0], v[1], v[2]
    return jnp.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z])


def _lorenz63_diffusion(v):
    return 5.0 * jnp.eye(3, dtype=v.dtype)


SYSTEMS = {
    "reduced_1d": System(
        name="reduced_1d", dim=1, noise_dim=2,
        drift=_reduced_1d_drift, diffusion=_reduced_1d_diffusion, x0=(0.0,),
        dt=0.01, members=100, steps=50_000, thin=100, burn_in=1_000,
        score=_reduced_1d_score,
    ),
    "four_well_2d": System(
        name="four_well_2d", dim=2, noise_dim=2,
        drift=_four_well_score, diffusion=_four_well_diffusion, x0=(0.0, 0.0),
        dt=0.01, members=100, steps=50_000, thin=50, burn_in=1_000,
        score=_four_well_score,
    ),
    "lorenz63": System(
        name="lorenz63", dim=3, noise_dim=3,
        drift=_lorenz63_drift, diffusion=_lorenz63_diffusion, x0=(1.0, 1.5, 1.8),
        dt=0.01, members=100, steps=100_000, thin=100, burn_in=1_000,
        score=None,
    ),
}


def get_system(name: str) -> System:
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; expected one of {sorted(SYSTEMS)}")
    return SYSTEMS[name]


def simulate(key, system: System, members: int | None = None, steps: int | None = None,
             thin: int | None = None, burn_in: int | None = None, dt: float | None = None,
             dtype=jnp.float32) -> np.ndarray:
    """Simulate an ensemble; returns snapshots of shape ``(members, steps // thin, dim)``.

    Members start at ``system.x0`` (Lorenz-63: the paper's initial state) and
    decorrelate through their independent noise during the burn-in.
    """
    members = system.members if members is None else int(members)
    steps = system.steps if steps is None else int(steps)
    thin = system.thin if thin is None else int(thin)
    burn_in = system.burn_in if burn_in is None else int(burn_in)
    dt = system.dt if dt is None else float(dt)
    for label, value in (("members", members), ("steps", steps), ("thin", thin)):
        if value <= 0:
            raise ValueError(f"{label} must be positive, got {value}")
    if burn_in < 0:
        raise ValueError(f"burn_in must be >= 0, got {burn_in}")
    n_snap = steps // thin
    if n_snap == 0:
        raise ValueError(f"steps ({steps}) must be at least thin ({thin})")
    return np.asarray(_simulate_jit(key, system.drift, system.diffusion, system.dim,
                                    system.noise_dim, tuple(system.x0), members, n_snap,
                                    thin, burn_in, dt, jnp.dtype(dtype)))


def _em_step(drift, diffusion, dt, x, xi):
    increment = drift(x) * dt + diffusion(x) @ xi * jnp.sqrt(dt)
    return x + increment.astype(x.dtype)


@partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11))
def _simulate_jit(key, drift, diffusion, dim, noise_dim, x0, members, n_snap, thin,
                  burn_in, dt, dtype):
    step = jax.vmap(lambda x, xi: _em_step(drift, diffusion, dt, x, xi))
    burn_key, run_key = jax.random.split(key)
    x = jnp.broadcast_to(jnp.asarray(x0, dtype=dtype), (members, dim))

    def one_step(x, k):
        xi = jax.random.normal(k, (members, noise_dim), dtype=dtype)
        return step(x, xi), None

    if burn_in > 0:
        x, _ = jax.lax.scan(one_step, x, jax.random.split(burn_key, burn_in))

    def one_snapshot(x, k):
        x, _ = jax.lax.scan(one_step, x, jax.random.split(k, thin))
        return x, x

    _, snaps = jax.lax.scan(one_snapshot, x, jax.random.split(run_key, n_snap))
    return jnp.swapaxes(snaps, 0, 1)  # (members, n_snap, dim)
