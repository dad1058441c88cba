"""The Euler-Maruyama Langevin model: stationary statistics, escapes, non-finite drift."""
import jax
import jax.numpy as jnp
import numpy as np

import kgmm_bayes  # noqa: F401
from kgmm_bayes.rom.langevin import simulate_langevin


def ou_drift(params, x):
    return -params * x


def test_ou_stationary_statistics():
    # dx = -x dt + sqrt(2) dW has N(0, 1) as stationary law; Euler-Maruyama's discrete chain
    # x' = (1 - dt) x + sqrt(2 dt) xi has exact stationary variance 2 / (2 - dt).
    particles, dt = 20_000, 0.01
    x0 = jnp.zeros((particles, 2))
    res = simulate_langevin(jax.random.key(0), ou_drift, jnp.float32(1.0), x0, dt=dt, steps=500,
                            burn_in=1000, thin=500)
    last = res.samples[-1]  # one snapshot: the particles are independent
    assert res.samples.shape == (1, particles, 2)
    assert res.escaped == 0 and res.non_finite == 0
    var_exact = 2.0 / (2.0 - dt)
    se_mean = np.sqrt(var_exact / particles)
    se_var = var_exact * np.sqrt(2.0 / particles)
    assert np.all(np.abs(last.mean(axis=0)) < 5 * se_mean)
    assert np.all(np.abs(last.var(axis=0) - var_exact) < 5 * se_var)


def test_escaped_particles_are_counted_not_reset():
    x0 = jnp.concatenate([jnp.zeros((50, 1)), jnp.full((50, 1), 4.0)])
    # anti-restoring drift outside |x| > 3: particles started at 4 run away to the box at 10
    drift = lambda p, x: jnp.where(jnp.abs(x) > 3.0, p * x, -x)  # noqa: E731
    res = simulate_langevin(jax.random.key(1), drift, jnp.float32(5.0), x0, dt=0.01, steps=200, burn_in=0,
                            thin=100, box=10.0)
    assert res.escaped >= 45 and res.non_finite == 0
    assert np.sum(~res.alive) == res.escaped
    assert res.kept_samples().shape == (2 * int(np.sum(res.alive)), 1)
    assert np.all(np.abs(res.kept_samples()) <= 10.0)
    # frozen at their last position inside the box, far out, not reset towards the data
    frozen = np.abs(res.samples[-1][~res.alive])
    assert np.all((frozen > 3.0) & (frozen <= 10.0))


def test_non_finite_drift_is_reported():
    x0 = jnp.linspace(-1, 1, 10)[:, None]
    drift = lambda p, x: jnp.where(x > 0.5, jnp.nan, -x)  # noqa: E731
    res = simulate_langevin(jax.random.key(2), drift, jnp.float32(0.0), x0, dt=0.01, steps=100, burn_in=0, thin=50)
    assert res.non_finite >= 1
    assert np.all(np.isfinite(res.kept_samples()))


def test_a_box_that_is_not_a_number_is_refused_before_tracing():
    import pytest

    # a spec's [langevin] box = "auto" is resolved from the data by the study; passed on as it is, it is named
    for box in ("auto", True):
        with pytest.raises(ValueError, match="langevin box must be a number.*resolved_box"):
            simulate_langevin(jax.random.key(0), ou_drift, jnp.float32(1.0), jnp.zeros((4, 1)), dt=0.01, steps=10,
                              burn_in=0, thin=5, box=box)
