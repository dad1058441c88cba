"""Closed-form mixture scores against automatic differentiation, in float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kgmm_bayes  # noqa: F401
from kgmm_bayes.bayes.score import predictive_drift, predictive_score_fn
from kgmm_bayes.bayes.score import (coefficient_score, mixture_divergence, mixture_log_density, mixture_score,
                              posterior_mean_score, score_coefficients, score_draws,
                              summarize_scores)
from test_mixture import random_mixture


@pytest.mark.parametrize("d", [1, 2, 3])
def test_score_and_divergence_match_autodiff(d):
    rng = np.random.default_rng(d)
    w, mu, chol = random_mixture(rng, 4, d)
    x = 1.5 * rng.normal(size=(40, d))
    score, log_p = mixture_score(w, mu, chol, x)
    logp_one = lambda xi: mixture_log_density(w, mu, chol, xi[None])[0]  # noqa: E731
    grad = jax.vmap(jax.grad(logp_one))(jnp.asarray(x))
    np.testing.assert_allclose(score, grad, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(log_p, jax.vmap(logp_one)(jnp.asarray(x)), rtol=1e-12)
    score_one = lambda xi: mixture_score(w, mu, chol, xi[None])[0][0]  # noqa: E731
    jac = jax.vmap(jax.jacfwd(score_one))(jnp.asarray(x))
    np.testing.assert_allclose(mixture_divergence(w, mu, chol, x), jnp.trace(jac, axis1=1, axis2=2),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_coefficient_score_is_the_closed_form_score(d):
    """The expanded quadratic form (the Langevin drift) against the whitened-residual form, float64;
    with a leading member axis each member's coefficients are its own draw's."""
    rng = np.random.default_rng(10 + d)
    draws = [random_mixture(rng, 4, d) for _ in range(3)]
    x = 1.5 * rng.normal(size=(40, d))
    stacked = score_coefficients(*(np.stack(parts) for parts in zip(*draws)))
    for s, draw in enumerate(draws):
        expected, _ = mixture_score(*draw, x)
        np.testing.assert_allclose(coefficient_score(score_coefficients(*draw), jnp.asarray(x)), expected,
                                   rtol=1e-10, atol=1e-10)
        member = jax.tree.map(lambda a: a[s], stacked)
        np.testing.assert_allclose(coefficient_score(member, jnp.asarray(x)), expected, rtol=1e-10, atol=1e-10)
    # score_draws and posterior_mean_score (the dense form, in chunks, the last one padded) against it,
    # log densities included, at points up to 6 sds out
    w, mu, chol = (np.stack(parts) for parts in zip(*draws))
    far = np.concatenate([x, 6.0 * rng.normal(size=(13, d))])
    scores, logps = score_draws(w, mu, chol, far, chunk=16)
    closed = [mixture_score(*draw, far) for draw in draws]
    np.testing.assert_allclose(scores, np.stack([c[0] for c in closed]), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(logps, np.stack([c[1] for c in closed]), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(posterior_mean_score(w, mu, chol, far, chunk=16), np.mean([c[0] for c in closed], axis=0),
                               rtol=1e-10, atol=1e-10)


def test_score_is_invariant_to_relabelling():
    rng = np.random.default_rng(3)
    w, mu, chol = random_mixture(rng, 5, 2)
    x = rng.normal(size=(30, 2))
    perm = rng.permutation(5)
    a, _ = mixture_score(w, mu, chol, x)
    b, _ = mixture_score(w[perm], mu[perm], chol[perm], x)
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


def test_predictive_score_is_gradient_of_log_mean_density():
    rng = np.random.default_rng(5)
    draws = [random_mixture(rng, 3, 2) for _ in range(6)]
    w, mu, chol = (np.stack(parts) for parts in zip(*draws))
    x = rng.normal(size=(25, 2))

    def log_mean_density(xi):
        logs = jax.vmap(lambda a, b, c: mixture_log_density(a, b, c, xi[None])[0])(w, mu, chol)
        return jax.nn.logsumexp(logs) - jnp.log(len(logs))

    expected = jax.vmap(jax.grad(log_mean_density))(jnp.asarray(x))
    scores, logps = score_draws(w, mu, chol, x, chunk=10)  # chunked on purpose
    summary = summarize_scores(scores, logps, band=0.9)
    np.testing.assert_allclose(summary.predictive, expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(predictive_score_fn((w, mu, chol), jnp.asarray(x)), expected, rtol=1e-9, atol=1e-9)
    drift_fn, coeffs = predictive_drift((w, mu, chol), dtype=jnp.float64)  # the Langevin drift, same function
    np.testing.assert_allclose(drift_fn(coeffs, jnp.asarray(x)), expected, rtol=1e-9, atol=1e-9)
    # [langevin] mixture_draws: the predictive score of that many evenly spaced draws (0 or more than S: all)
    picks = [0, 2, 3, 5]  # np.linspace(0, 5, 4).round()
    sub = predictive_score_fn((w[picks], mu[picks], chol[picks]), jnp.asarray(x))
    drift_fn, coeffs = predictive_drift((w, mu, chol), dtype=jnp.float64, count=4)
    np.testing.assert_allclose(drift_fn(coeffs, jnp.asarray(x)), sub, rtol=1e-9, atol=1e-9)
    assert np.max(np.abs(sub - expected)) > 1e-3  # the subset is another mixture
    for every in (0, 6, 50):
        drift_fn, coeffs = predictive_drift((w, mu, chol), dtype=jnp.float64, count=every)
        np.testing.assert_allclose(drift_fn(coeffs, jnp.asarray(x)), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(summary.mean, scores.mean(axis=0), rtol=1e-12)
    assert np.all(summary.lower <= summary.mean + 1e-12) and np.all(summary.mean <= summary.upper + 1e-12)
    # the band is the equal-tailed quantile interval of the draws
    np.testing.assert_allclose(summary.lower, np.quantile(scores, 0.05, axis=0), rtol=1e-12)
