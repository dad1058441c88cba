"""Posterior ensembles of the reduced-order model (kgmm_bayes.rom.ensemble), against exact answers.

A one-component "posterior" has Gaussian draws N(mu_s, diag(sigma_s^2)), whose score
drift is the Ornstein-Uhlenbeck process dx = -(x - mu) / sigma^2 dt + sqrt(2) dW.  Its
Euler-Maruyama chain with a = dt / sigma^2 is the AR(1) recursion
x' - mu = (1 - a)(x - mu) + sqrt(2 dt) xi, with stationary variance 2 sigma^2 / (2 - a)
and autocorrelation rho^k at k snapshots, rho = (1 - a)^thin.  Tolerances are 5 standard
errors from the number of independent samples (AR(1) inflation factors).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kgmm_bayes  # noqa: F401
from kgmm_bayes.rom.ensemble import (bands, entropy_distribution, member_keys, member_statistics, mixture_members,
                                 select_draws, simulate_ensemble)
from kgmm_bayes.rom.interpolant import fit_interpolant, fit_interpolant_ensemble
from kgmm_bayes.rom.langevin import simulate_langevin
from kgmm_bayes.bayes.sampler import PosteriorSamples
from kgmm_bayes.spec import SpecError, spec_from_dict

SIGMA = np.array([[1.0, 1.0], [0.8, 1.25], [1.2, 0.9]])  # per member, per coordinate
MU = np.array([[0.0, 0.0], [1.0, -1.0], [-0.5, 2.0]])
DT, THIN, STEPS, BURN_IN, PARTICLES = 0.02, 10, 2000, 400, 200


def gaussian_members(mu=MU, sigma=SIGMA):
    """One-component mixture draws ``(weights (S, 1), means (S, 1, d), cov_chol (S, 1, d, d))``, float32."""
    members, d = mu.shape
    chol = np.zeros((members, 1, d, d))
    chol[:, 0, np.arange(d), np.arange(d)] = sigma
    return (jnp.ones((members, 1), jnp.float32), jnp.asarray(mu[:, None], jnp.float32), jnp.asarray(chol, jnp.float32))


@pytest.fixture(scope="module")
def gaussian_run():
    params = gaussian_members()
    x0 = jnp.zeros((PARTICLES, 2))
    drift, coeffs = mixture_members(params)
    run = simulate_ensemble(jax.random.key(0), drift, coeffs, x0, DT, STEPS, BURN_IN, THIN)
    return (drift, coeffs), x0, run, member_statistics(run, max_lag=10, lag_time=DT * THIN)


def test_members_match_their_draws_gaussian(gaussian_run):
    _, _, run, stats = gaussian_run
    members, length, particles, _ = run.samples.shape
    assert run.samples.shape == (3, STEPS // THIN, PARTICLES, 2)
    assert np.all(run.escaped == 0) and np.all(run.non_finite == 0)
    a = DT / SIGMA**2
    var_exact = 2 * SIGMA**2 / (2 - a)
    rho = (1 - a) ** THIN
    n = length * particles
    se_mean = np.sqrt(var_exact / n * (1 + rho) / (1 - rho))
    se_var = var_exact * np.sqrt(2 / n * (1 + rho**2) / (1 - rho**2))
    assert np.all(np.abs(stats.mean - MU) < 5 * se_mean)
    assert np.all(np.abs(stats.variance - var_exact) < 5 * se_var)
    assert np.all(np.abs(stats.skewness) < 5 * np.sqrt(6 / n * (1 + rho**3) / (1 - rho**3)))


def test_members_in_batches_give_the_same_numbers(gaussian_run):
    (drift, coeffs), x0, run, _ = gaussian_run
    batched = simulate_ensemble(jax.random.key(0), drift, coeffs, x0, DT, STEPS, BURN_IN, THIN, member_batch=2)
    np.testing.assert_array_equal(batched.samples, run.samples)
    np.testing.assert_array_equal(batched.alive, run.alive)


def test_acf_matches_ou(gaussian_run):
    # each member's ACF is that of its own OU process: exp(-t / sigma^2), in the discrete
    # chain rho^k; for the unit Gaussian member (sigma = 1, the z-scored score -x) exp(-t)
    _, _, run, stats = gaussian_run
    length, particles = run.samples.shape[1:3]
    rho = (1 - DT / SIGMA**2) ** THIN  # (S, d)
    k = np.arange(11)[None, :, None]
    exact = rho[:, None, :] ** k  # (S, L + 1, d)
    r2 = rho[:, None, :] ** 2
    # Bartlett's variance of the sample ACF of an AR(1) series, over independent particles
    bartlett = ((1 + r2) * (1 - r2**k) / (1 - r2) - 2 * k * r2**k) / (length * particles)
    assert np.all(np.abs(stats.acf - exact) < 5 * np.sqrt(bartlett) + 2.0 / (length * particles))
    assert np.allclose(stats.lags, DT * THIN * np.arange(11))
    unit = np.exp(-stats.lags)
    assert np.all(np.abs(stats.acf[0, :, :] - unit[:, None]) < 5 * np.sqrt(bartlett[0]) + DT * 2)


def test_ensemble_equals_separate_runs(gaussian_run):
    (drift, coeffs), x0, run, _ = gaussian_run
    keys = member_keys(jax.random.key(0), 3)
    for s in range(3):
        single = simulate_langevin(keys[s], drift, jax.tree.map(lambda a: a[s], coeffs), x0, DT, STEPS,
                                   BURN_IN, THIN)
        np.testing.assert_allclose(run.samples[s], single.samples, atol=1e-6)
        assert np.array_equal(run.alive[s], single.alive)


def test_ensemble_with_a_mobility_per_member_equals_separate_runs(gaussian_run):
    # dx = Phi_s s(x) dt + Sigma_s dW, a different non-symmetric Phi for each member: member s is the
    # single run with key s and mobility Phi_s (the noise factor vmapped with the drift's parameters)
    (drift, coeffs), x0, _, _ = gaussian_run
    phis = np.array([[[1.0, 0.5], [-0.5, 2.0]], [[0.3, -0.2], [0.2, 0.7]], [[1.5, 0.0], [0.0, 1.5]]])
    run = simulate_ensemble(jax.random.key(3), drift, coeffs, x0, DT, 400, 40, THIN, mobility=phis)
    keys = member_keys(jax.random.key(3), 3)
    for s in range(3):
        single = simulate_langevin(keys[s], drift, jax.tree.map(lambda a: a[s], coeffs), x0, DT, 400, 40, THIN,
                                   mobility=phis[s])
        np.testing.assert_allclose(run.samples[s], single.samples, atol=1e-5)
    with pytest.raises(ValueError, match="mobility must be"):
        simulate_ensemble(jax.random.key(3), drift, coeffs, x0, DT, 400, 40, THIN, mobility=phis[:2])


def test_escapes_are_counted_per_member():
    # member 0 restoring, member 1 pushed out beyond |x| > 3 from its start at 4
    drift = lambda p, x: jnp.where(jnp.abs(x) > 3.0, p * x, -x)  # noqa: E731
    x0 = jnp.full((20, 1), 4.0)
    run = simulate_ensemble(jax.random.key(1), drift, jnp.array([-5.0, 5.0], jnp.float32), x0, 0.01, 200, 0, 100)
    assert run.escaped[0] == 0 and run.escaped[1] >= 18
    assert np.all(run.non_finite == 0)
    frozen = np.abs(run.samples[1, -1][~run.alive[1]])
    assert np.all((frozen > 3.0) & (frozen <= 10.0))  # frozen, not reset


def test_bands_are_ordered_and_entropy_distribution(gaussian_run):
    _, _, _, stats = gaussian_run
    for values in (stats.mean, stats.variance, stats.pdf, stats.acf):
        b = bands(values)
        assert np.all(b.lower90 <= b.lower50) and np.all(b.lower50 <= b.median)
        assert np.all(b.median <= b.upper50) and np.all(b.upper50 <= b.upper90)
    rel = np.random.default_rng(0).gamma(2.0, 0.01, (16, 3))
    dist = entropy_distribution(rel)
    assert np.all(dist["per_marginal"]["q05"] <= dist["per_marginal"]["median"])
    assert np.all(dist["per_marginal"]["median"] <= dist["per_marginal"]["q95"])
    assert dist["mean"]["q05"] <= dist["mean"]["median"] <= dist["mean"]["q95"]


def test_relative_entropy_against_reference(gaussian_run):
    _, _, run, _ = gaussian_run
    reference = np.random.default_rng(1).normal(size=(4000, 2))
    stats = member_statistics(run, max_lag=2, lag_time=1.0, reference=reference, grid_points=256)
    assert stats.relative_entropy.shape == (3, 2)
    # member 0 is the reference's law; the others are shifted: farther from it
    assert np.all(stats.relative_entropy[0] < 0.05)
    assert np.all(stats.relative_entropy[1:].mean(axis=1) > 5 * stats.relative_entropy[0].mean())


def test_select_draws_spans_chains():
    chains, draws, k = 4, 50, 2
    tag = np.arange(chains * draws, dtype=float).reshape(chains, draws)
    weights = np.broadcast_to(tag[..., None], (chains, draws, k))
    post = PosteriorSamples(weights, np.zeros((chains, draws, k, 1)), np.ones((chains, draws, k, 1, 1)), {}, {}, 0.0)
    for members in (1, 6, 32, 200):
        w, m, c = select_draws(post, members)
        assert w.shape == (members, k) and m.shape == (members, k, 1) and c.shape == (members, k, 1, 1)
        assert len(np.unique(w[:, 0])) == members
    w, _, _ = select_draws(post, 8)
    chain_of = (w[:, 0] // draws).astype(int)
    assert np.array_equal(np.bincount(chain_of, minlength=chains), [2, 2, 2, 2])
    with pytest.raises(ValueError, match="members"):
        select_draws(post, chains * draws + 1)


def test_interpolant_ensemble_equals_separate_fits():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(64, 2))
    targets = np.stack([-points / s**2 for s in (1.0, 0.8, 1.3)])
    counts = rng.integers(1, 10, 64).astype(float)
    keys = member_keys(jax.random.key(3), 3)
    together, losses = fit_interpolant_ensemble(keys, points, targets, counts, hidden=(8,), steps=50)
    apply = together.apply_fn()
    x = jnp.asarray(points, jnp.float32)
    for s in range(3):
        alone = fit_interpolant(keys[s], points, targets[s], counts, hidden=(8,), steps=50)
        member = jax.tree.map(lambda a: a[s], together.params)
        np.testing.assert_allclose(apply(member, x), alone(x), rtol=1e-4, atol=1e-5)
        assert losses[s] == pytest.approx(alone.final_loss, rel=1e-4)


BASE = {"data": {"system": "reduced_1d"}}


def test_spec_ensemble_section():
    spec = spec_from_dict(BASE)
    assert spec.ensemble.members == 0 and spec.ensemble.drift == "mixture"
    spec = spec_from_dict({**BASE, "ensemble": {"members": 16, "drift": "interpolant", "max_lag": 10}})
    assert spec.ensemble.members == 16 and spec.ensemble.drift == "interpolant"
    bad = [
        ({"members": -1}, "members"), ({"members": 1.5}, "integer"), ({"drift": "exact"}, "drift"),
        ({"particles": 0}, "particles"), ({"steps": 100, "thin": 10, "max_lag": 10}, "max_lag"),
        ({"members": 10_000}, "members"), ({"burn_in": -1}, "burn_in"), ({"unknown": 1}, "unknown"),
    ]
    for section, word in bad:
        with pytest.raises(SpecError, match=word):
            spec_from_dict({**BASE, "ensemble": section})
