"""Reference systems: constants of SYSTEMS.md, analytic scores, simulated statistics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kgmm_bayes  # noqa: F401
from kgmm_bayes import systems


def test_reduced_1d_constants_match_systems_md():
    p = systems.REDUCED_1D_PARAMS
    expected = dict(a=-1.80917, b=-0.066667, c=0.166667, B=-0.632456, A=0.126491, F_tilde=-0.04, s=0.0632456)
    for name, value in expected.items():
        printed = repr(value).split(".")[1]  # SYSTEMS.md rounds to the printed digit
        assert p[name] == pytest.approx(value, abs=0.5 * 10 ** -len(printed)), name


def test_reduced_1d_score_is_zero_flux_solution():
    # Stationary Fokker-Planck with zero flux: f p - 1/2 d(g^2 p)/dx = 0, g^2 = sum of squared
    # diffusion entries, so d log p / dx = (2 f - d(g^2)/dx) / g^2.  g^2 is differentiated by JAX.
    sysm = systems.get_system("reduced_1d")
    g2 = lambda x: jnp.sum(sysm.diffusion(jnp.atleast_1d(x)) ** 2)  # noqa: E731
    x = jnp.linspace(-0.3, 0.6, 37)
    expected = jax.vmap(lambda xi: (2 * sysm.drift(xi) - jax.grad(g2)(xi)) / g2(xi))(x)
    np.testing.assert_allclose(sysm.score(x), expected, rtol=1e-12, atol=1e-12)


def test_four_well_score_is_minus_grad_potential():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(20, 2)))
    expected = -jax.vmap(jax.grad(systems.four_well_potential))(x)
    np.testing.assert_allclose(systems.get_system("four_well_2d").score(x), expected, rtol=1e-12, atol=1e-12)


def _stationary_moments_1d(score, lo, hi, n=20001):
    """Mean and variance of p = exp(int score) by quadrature on a fine grid."""
    x = np.linspace(lo, hi, n)
    s = np.asarray(score(jnp.asarray(x)))
    log_p = np.concatenate([[0.0], np.cumsum(0.5 * (s[1:] + s[:-1]) * np.diff(x))])
    p = np.exp(log_p - log_p.max())
    p /= np.trapezoid(p, x)
    mean = np.trapezoid(x * p, x)
    return mean, np.trapezoid((x - mean) ** 2 * p, x)


def test_reduced_1d_simulation_matches_stationary_density():
    sysm = systems.get_system("reduced_1d")
    snaps = systems.simulate(jax.random.key(0), sysm, members=200, steps=20_000, thin=100, dtype=jnp.float64)
    assert snaps.shape == (200, 200, 1)
    mean, var = _stationary_moments_1d(sysm.score, -1.0, 2.0)
    member_means = snaps[..., 0].mean(axis=1)
    member_vars = snaps[..., 0].var(axis=1)
    # members are independent: standard errors from their spread
    se_mean = member_means.std(ddof=1) / np.sqrt(len(member_means))
    se_var = member_vars.std(ddof=1) / np.sqrt(len(member_vars))
    assert abs(member_means.mean() - mean) < 5 * se_mean
    # Euler-Maruyama at dt = 0.01 biases the variance by O(dt * |a|) ~ 2%: allow it explicitly
    assert abs(member_vars.mean() - var) < 5 * se_var + 0.03 * var


def test_simulate_rejects_bad_sizes():
    sysm = systems.get_system("lorenz63")
    with pytest.raises(ValueError, match="members"):
        systems.simulate(jax.random.key(0), sysm, members=0)
    with pytest.raises(ValueError, match="thin"):
        systems.simulate(jax.random.key(0), sysm, steps=10, thin=100)
    with pytest.raises(ValueError, match="unknown system"):
        systems.get_system("lorenz96")
