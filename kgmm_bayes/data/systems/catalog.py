"""The built-in reference systems of shared/SYSTEMS.md: drifts, diffusions, analytic scores and
default simulation settings, by name (:data:`SYSTEMS`, :func:`get_system`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import ks
from .base import System

__all__ = ["SYSTEMS", "get_system", "triad_drift", "triad_diffusion", "lorenz96_drift", "LORENZ96_PARAMS"]


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


# ---------------------------------------------------------------- a true Gaussian mixture (control)
# Three components in 2D: data drawn from it are what the Bayesian mixture assumes (with K = 3),
# the well-specified control of `kgmm-bayes calibrate`.  Snapshots are independent draws.
MIXTURE_2D = dict(
    weights=np.array([0.3, 0.45, 0.25]),
    means=np.array([[-1.5, 0.0], [1.2, 0.8], [0.5, -1.5]]),
    covariances=np.array([[[0.30, 0.10], [0.10, 0.20]],
                          [[0.25, -0.12], [-0.12, 0.40]],
                          [[0.20, 0.00], [0.00, 0.15]]]),
)


def _mixture_2d_score(x):
    x = jnp.asarray(x)
    prec = jnp.asarray(np.linalg.inv(MIXTURE_2D["covariances"]), x.dtype)
    resid = x[..., None, :] - jnp.asarray(MIXTURE_2D["means"], x.dtype)  # (..., K, 2)
    quad = jnp.einsum("...ki,kij,...kj->...k", resid, prec, resid)
    logdet = np.log(np.linalg.det(MIXTURE_2D["covariances"]))
    log_w = jnp.log(jnp.asarray(MIXTURE_2D["weights"], x.dtype)) - 0.5 * quad - 0.5 * jnp.asarray(logdet, x.dtype)
    resp = jax.nn.softmax(log_w, axis=-1)
    return -jnp.einsum("...k,kij,...kj->...i", resp, prec, resid)


def _mixture_2d_draws(key, system, members, n_snap, thin, burn_in, dt, dtype):
    """Independent draws from :data:`MIXTURE_2D` ``(members, n_snap, 2)``."""
    pick_key, noise_key = jax.random.split(key)
    shape = (members, n_snap)
    comp = jax.random.choice(pick_key, 3, shape, p=jnp.asarray(MIXTURE_2D["weights"]))
    chol = jnp.asarray(np.linalg.cholesky(MIXTURE_2D["covariances"]), dtype)
    xi = jax.random.normal(noise_key, shape + (2,), dtype)
    return jnp.asarray(MIXTURE_2D["means"], dtype)[comp] + jnp.einsum("mnij,mnj->mni", chol[comp], xi)


# ---------------------------------------------------------------- Lorenz-63
def _lorenz63_drift(v, sigma=10.0, rho=28.0, beta=8.0 / 3.0):
    x, y, z = v[0], v[1], v[2]
    return jnp.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z])


def _lorenz63_diffusion(v):
    return 5.0 * jnp.eye(3, dtype=v.dtype)


# ---------------------------------------------------------------- triad 3D
def triad_drift(u):
    """Triad drift ``f(u) = (-0.2 u1 - 0.4 u2 + u3, -0.2 u2 + 0.4 u1, -2 u3)`` (SYSTEMS.md, 4).

    Linear, ``f(u) = A u``; the nonlinearity of the model is in its noise.
    """
    return jnp.stack([-0.2 * u[0] - 0.4 * u[1] + u[2], -0.2 * u[1] + 0.4 * u[0], -2.0 * u[2]])


def triad_diffusion(u):
    """Triad noise ``G(u) = diag(0.3, 0.3, 1.5 (tanh(u1) + 1))``: multiplicative on ``u3``."""
    return jnp.diag(jnp.stack([jnp.full_like(u[0], 0.3), jnp.full_like(u[0], 0.3),
                               1.5 * (jnp.tanh(u[0]) + 1.0)]))


# ---------------------------------------------------------------- two-scale Lorenz-96
LORENZ96_PARAMS = dict(K=4, J=10, F=6.0, nu=1.0, c=10.0, b=10.0, noise=0.2)


def lorenz96_drift(state, K=4, J=10, F=6.0, nu=1.0, c=10.0, b=10.0):
    r"""Two-scale Lorenz-96 (SYSTEMS.md, 5); ``state = (X_1..X_K, Y_11..Y_1J, ..., Y_K1..Y_KJ)``.

    .. math::
        \dot X_k = -X_{k-1}(X_{k-2} - X_{k+1}) - \nu X_k + F + (c/b) \sum_j Y_{k,j},

        \dot Y_{k,j} = -c b Y_{k,j+1}(Y_{k,j+2} - Y_{k,j-1}) - c \nu Y_{k,j} + (c/b) X_k,

    indices periodic: ``k`` modulo ``K``, and ``j`` modulo ``J`` within each sector ``k``
    (as in the KGMM authors' reference code; Lorenz 1996 chains the sectors instead).
    """
    x, y = state[:K], state[K:].reshape(K, J)
    dx = -jnp.roll(x, 1) * (jnp.roll(x, 2) - jnp.roll(x, -1)) - nu * x + F + (c / b) * y.sum(axis=1)
    dy = (-c * b * jnp.roll(y, -1, axis=1) * (jnp.roll(y, -2, axis=1) - jnp.roll(y, 1, axis=1))
          - c * nu * y + (c / b) * x[:, None])
    return jnp.concatenate([dx, dy.reshape(-1)])


def _lorenz96_diffusion(state):
    return LORENZ96_PARAMS["noise"] * jnp.eye(state.shape[0], dtype=state.dtype)


# small deterministic asymmetric start (the authors draw 0.01 * randn once)
_L96_X0 = tuple(float(v) for v in 0.01 * np.sin(1.0 + 2.0 * np.arange(44)))

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
    "mixture_2d": System(
        name="mixture_2d", dim=2, noise_dim=2,
        drift=_mixture_2d_score, diffusion=_four_well_diffusion, x0=(0.0, 0.0),
        dt=0.01, members=100, steps=1_000, thin=1, burn_in=0,
        score=_mixture_2d_score, simulator=_mixture_2d_draws, timed=False,
    ),
    "lorenz63": System(
        name="lorenz63", dim=3, noise_dim=3,
        drift=_lorenz63_drift, diffusion=_lorenz63_diffusion, x0=(1.0, 1.5, 1.8),
        dt=0.01, members=100, steps=100_000, thin=100, burn_in=1_000,
        score=None,
    ),
    # A snapshot every 10 time units (ACF there: u1 -0.07, u2 -0.13, u3 0.00; the first zero
    # of the u1, u2 ACFs is near 4 time units); 1000 x 100 = 1e5 snapshots.
    "triad_3d": System(
        name="triad_3d", dim=3, noise_dim=3,
        drift=triad_drift, diffusion=triad_diffusion, x0=(0.0, 0.0, 0.0),
        dt=0.01, members=1000, steps=100_000, thin=1000, burn_in=2_000,
        score=None,
    ),
    # Euler-Maruyama is unstable at SYSTEMS.md's dt = 0.005 (fast advection c b Y ~ 100 per
    # time unit): members diverge within ~2 time units at dt = 0.002 and some still do at
    # 0.001.  RK4 for the drift + Maruyama noise is stable at dt = 0.005 and matches the
    # dt = 0.0025 statistics.  A snapshot every 0.5 time units (past the first zero of the
    # slow ACF; the 4-variable wave keeps a weak long memory); 200 x 500 = 1e5 snapshots.
    "lorenz96_slow": System(
        name="lorenz96_slow", dim=4, noise_dim=44,
        drift=lorenz96_drift, diffusion=_lorenz96_diffusion, x0=_L96_X0,
        dt=0.005, members=200, steps=50_000, thin=100, burn_in=4_000,
        score=None, observe=(0, 1, 2, 3), state_dim=44, scheme="rk4_maruyama",
    ),
    # 100 members x 63 fields x 16 offsets = 100,800 snapshots of D = 4
    "ks_d4": ks.ks_system("ks_d4", stride=16, members=100, fields_per_member=63),
    # 100 members x 125 fields x 8 offsets = 100,000 snapshots of D = 8
    "ks_d8": ks.ks_system("ks_d8", stride=8, members=100, fields_per_member=125),
}


def get_system(name: str) -> System:
    """The built-in system called ``name``; raises ``ValueError`` listing the known names."""
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; expected one of {sorted(SYSTEMS)}")
    return SYSTEMS[name]


