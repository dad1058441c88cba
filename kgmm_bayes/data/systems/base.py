"""Reference dynamical systems (shared/SYSTEMS.md), simulated with Euler-Maruyama.

Each system is an Ito SDE ``dX = f(X) dt + G(X) dW`` integrated as

    X_{n+1} = X_n + f(X_n) dt + G(X_n) sqrt(dt) xi_n,   xi_n ~ N(0, I),

for an ensemble of independent members (``vmap``) with time stepping in
``lax.scan``; a burn-in is dropped and a snapshot kept every ``thin`` steps.
Where the stationary density is known, ``score`` gives ``grad log p`` in
physical coordinates.

The simulated state ``X`` has ``state_dim`` coordinates; what is returned is the
observation ``Y = H(X)`` with ``dim`` coordinates: ``observe`` is a tuple of
state indices (``H(X) = X[observe]``), a callable, or ``None`` (``H = id``,
``state_dim = dim``).  Two-scale Lorenz-96 returns its 4 slow variables out of
44.  A system that is not an SDE (Kuramoto-Sivashinsky, :mod:`kgmm_bayes.data.systems.ks`)
brings its own ``simulator``; :func:`simulate` validates the sizes and hands
over to it, so every system returns ``(members, snapshots, dim)``.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["System", "simulate"]


class System(NamedTuple):
    """A reference system with its default simulation settings.

    Attributes
    ----------
    name : str
    dim : int
        Dimension ``D`` of the returned (observed) coordinates.
    noise_dim : int
        Number of independent Wiener processes.
    drift, diffusion : callable
        ``f: (state_dim,) -> (state_dim,)`` and ``G: (state_dim,) -> (state_dim, noise_dim)``.
    x0 : tuple
        Initial state shared by all members (they decorrelate through their noise).
    dt, members, steps, thin, burn_in
        Default simulation settings; ``steps`` counts steps after the burn-in.
    score : callable, optional
        ``grad log p`` of the stationary density of the observation, physical units.
    observe : tuple of int or callable, optional
        Observation ``H``: state indices, or ``(state_dim,) -> (dim,)``; ``None``: all.
    state_dim : int, optional
        Dimension of the simulated state; ``None``: ``dim``.
    simulator : callable, optional
        ``simulator(key, system, members, n_snap, thin, burn_in, dt, dtype) -> (members, n, dim)``
        for systems that are not SDEs; ``None``: the SDE ``scheme`` below.
    scheme : {"euler_maruyama", "rk4_maruyama"}
        ``"rk4_maruyama"``: the drift increment by classical RK4, the noise ``G(X_n) dW_n`` as
        in Euler-Maruyama (Ito-consistent; strong order 1 for additive noise), for stiff
        oscillatory drifts where Euler's step is unstable (two-scale Lorenz-96).
    """

    name: str
    dim: int
    noise_dim: int
    drift: Callable  # x (state_dim,) -> (state_dim,)
    diffusion: Callable  # x (state_dim,) -> (state_dim, noise_dim)
    x0: tuple
    dt: float
    members: int
    steps: int  # steps per member after burn-in
    thin: int
    burn_in: int
    score: Optional[Callable] = None  # x (..., dim) -> (..., dim), physical units
    observe: Union[tuple, Callable, None] = None
    state_dim: Optional[int] = None
    simulator: Optional[Callable] = None
    scheme: str = "euler_maruyama"
    timed: bool = True  # False: snapshots are independent draws, not a trajectory (no time scales)


def _observation(system: System):
    """``(state_dim, H)`` with ``H: (state_dim,) -> (dim,)``; ValueError if inconsistent."""
    state_dim = system.dim if system.state_dim is None else int(system.state_dim)
    observe = system.observe
    if observe is None:
        if state_dim != system.dim:
            raise ValueError(f"system {system.name!r}: state_dim ({state_dim}) differs from dim "
                             f"({system.dim}) but no observe was given")
        return state_dim, None
    if callable(observe):
        if system.state_dim is None:
            raise ValueError(f"system {system.name!r}: a callable observe needs state_dim")
        shape = jax.eval_shape(observe, jax.ShapeDtypeStruct((state_dim,), jnp.float32)).shape
        if shape != (system.dim,):
            raise ValueError(f"system {system.name!r}: observe maps to shape {shape}, "
                             f"expected ({system.dim},)")
        return state_dim, observe
    indices = tuple(int(i) for i in observe)
    if len(indices) != system.dim or not all(0 <= i < state_dim for i in indices):
        raise ValueError(f"system {system.name!r}: observe must hold dim = {system.dim} indices "
                         f"in [0, {state_dim}), got {observe!r}")
    return state_dim, indices


def simulate(key, system: System, members: int | None = None, steps: int | None = None,
             thin: int | None = None, burn_in: int | None = None, dt: float | None = None,
             dtype=jnp.float32) -> np.ndarray:
    """Simulate an ensemble; returns snapshots of shape ``(members, n, system.dim)``.

    For an SDE ``n = steps // thin`` and each snapshot is the observation
    ``H(X)`` of the state (all of it unless ``system.observe`` says otherwise).
    Members start at ``system.x0`` (Lorenz-63: the paper's initial state) and
    decorrelate through their independent noise during the burn-in.  A system
    with its own ``simulator`` (Kuramoto-Sivashinsky) receives the same
    validated settings and may return more snapshots per time step (the KS
    shift augmentation: ``n = stride * (steps // thin)``).
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
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt}")
    n_snap = steps // thin
    if n_snap == 0:
        raise ValueError(f"steps ({steps}) must be at least thin ({thin})")
    if system.simulator is None and system.scheme not in _SCHEMES:
        raise ValueError(f"system {system.name!r}: unknown scheme {system.scheme!r}; "
                         f"expected one of {sorted(_SCHEMES)}")
    if system.simulator is not None:
        return system.simulator(key, system, members, n_snap, thin, burn_in, dt, jnp.dtype(dtype))
    state_dim, observe = _observation(system)
    if len(system.x0) != state_dim:
        raise ValueError(f"system {system.name!r}: x0 has {len(system.x0)} entries, "
                         f"expected state_dim = {state_dim}")
    return np.asarray(_simulate_jit(key, system.drift, system.diffusion, state_dim,
                                    system.noise_dim, tuple(system.x0), members, n_snap,
                                    thin, burn_in, dt, jnp.dtype(dtype), observe, system.scheme))


def _em_step(drift, diffusion, dt, x, xi):
    increment = drift(x) * dt + diffusion(x) @ xi * jnp.sqrt(dt)
    return x + increment.astype(x.dtype)


def _rk4_maruyama_step(drift, diffusion, dt, x, xi):
    k1 = drift(x)
    k2 = drift(x + 0.5 * dt * k1)
    k3 = drift(x + 0.5 * dt * k2)
    k4 = drift(x + dt * k3)
    increment = (k1 + 2 * k2 + 2 * k3 + k4) * (dt / 6) + diffusion(x) @ xi * jnp.sqrt(dt)
    return x + increment.astype(x.dtype)


_SCHEMES = {"euler_maruyama": _em_step, "rk4_maruyama": _rk4_maruyama_step}


@partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13))
def _simulate_jit(key, drift, diffusion, state_dim, noise_dim, x0, members, n_snap, thin,
                  burn_in, dt, dtype, observe, scheme):
    scheme_step = _SCHEMES[scheme]
    step = jax.vmap(lambda x, xi: scheme_step(drift, diffusion, dt, x, xi))
    if observe is None:
        measure = lambda x: x  # noqa: E731
    elif callable(observe):
        measure = jax.vmap(observe)
    else:
        measure = lambda x: x[:, jnp.asarray(observe)]  # noqa: E731
    burn_key, run_key = jax.random.split(key)
    x = jnp.broadcast_to(jnp.asarray(x0, dtype=dtype), (members, state_dim))

    def one_step(x, k):
        xi = jax.random.normal(k, (members, noise_dim), dtype=dtype)
        return step(x, xi), None

    if burn_in > 0:
        x, _ = jax.lax.scan(one_step, x, jax.random.split(burn_key, burn_in))

    def one_snapshot(x, k):
        x, _ = jax.lax.scan(one_step, x, jax.random.split(k, thin))
        return x, measure(x)

    _, snaps = jax.lax.scan(one_snapshot, x, jax.random.split(run_key, n_snap))
    return jnp.swapaxes(snaps, 0, 1)  # (members, n_snap, dim)
