"""The dense mixture likelihood against numpyro's MixtureSameFamily, in float64."""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import log_density

import kgmm_bayes  # noqa: F401  (enables float64)
from kgmm_bayes.bayes.mixture import (MixturePrior, component_coefficients, loglik_from_coefficients, mixture_loglik_dense,
                                mixture_model, quadratic_features)


def random_mixture(rng, k, d):
    weights = rng.dirichlet(np.ones(k))
    means = rng.normal(size=(k, d))
    a = rng.normal(size=(k, d, d))
    cov = a @ np.swapaxes(a, 1, 2) + 0.3 * np.eye(d)
    return weights, means, np.linalg.cholesky(cov)


def reference_loglik(x, counts, weights, means, chol):
    mix = dist.MixtureSameFamily(dist.Categorical(probs=weights),
                                 dist.MultivariateNormal(means, scale_tril=chol))
    return jnp.sum(counts * mix.log_prob(x))


@pytest.mark.parametrize("d", [1, 2, 3])
def test_dense_loglik_equals_mixture_same_family(d):
    rng = np.random.default_rng(d)
    weights, means, chol = random_mixture(rng, 5, d)
    x = 2.5 * rng.normal(size=(300, d))
    counts = rng.integers(1, 20, size=300).astype(float)
    dense = mixture_loglik_dense(quadratic_features(x), counts, weights, means, chol)
    ref = reference_loglik(x, counts, weights, means, chol)
    assert float(dense) == pytest.approx(float(ref), rel=1e-10, abs=1e-10)


def test_dense_loglik_gradient_equals_reference_gradient():
    rng = np.random.default_rng(7)
    weights, means, chol = random_mixture(rng, 4, 2)
    x = rng.normal(size=(200, 2))
    counts = np.ones(200)
    feats = quadratic_features(x)
    g_dense = jax.grad(lambda m, c: mixture_loglik_dense(feats, counts, weights, m, c), argnums=(0, 1))(means, chol)
    g_ref = jax.grad(lambda m, c: reference_loglik(x, counts, weights, m, c), argnums=(0, 1))(means, chol)
    for a, b in zip(g_dense, g_ref):
        np.testing.assert_allclose(np.tril(a) if a.ndim == 3 else a, np.tril(b) if b.ndim == 3 else b,
                                   rtol=1e-9, atol=1e-9)


def plain_loglik(features, counts, gamma):
    return jnp.sum(counts * jax.nn.logsumexp(features @ gamma, axis=-1))


@pytest.mark.parametrize("block_rows", [None, 100, 128])
def test_fused_derivative_equals_autodiff_of_the_plain_expression(block_rows):
    """Value, gradient (in Gamma, features and counts) and Hessian-vector products of the fused
    likelihood equal those of the plain logsumexp expression, in one block and in blocks of rows
    (500 rows: 5 blocks of 100, or 3 of 128 and a remainder of 116)."""
    rng = np.random.default_rng(3)
    weights, means, chol = random_mixture(rng, 6, 3)
    feats = quadratic_features(2.0 * rng.normal(size=(500, 3)))
    counts = jnp.asarray(rng.integers(1, 9, size=500).astype(float))
    gamma = component_coefficients(weights, means, chol)
    fused = lambda f, c, g: loglik_from_coefficients(f, c, g, block_rows)  # noqa: E731
    assert float(fused(feats, counts, gamma)) == pytest.approx(float(plain_loglik(feats, counts, gamma)), rel=1e-13)
    for got, want in zip(jax.grad(fused, argnums=(0, 1, 2))(feats, counts, gamma),
                         jax.grad(plain_loglik, argnums=(0, 1, 2))(feats, counts, gamma)):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11 * float(jnp.max(jnp.abs(want))))
    direction = jnp.asarray(rng.normal(size=gamma.shape))  # the sampler's Laplace scales: forward-over-reverse
    hvp = lambda f: jax.jvp(jax.grad(lambda g: f(feats, counts, g)), (gamma,), (direction,))[1]  # noqa: E731
    want = hvp(plain_loglik)
    np.testing.assert_allclose(hvp(fused), want, rtol=1e-10, atol=1e-10 * float(jnp.max(jnp.abs(want))))


def test_float32_features_compute_the_likelihood_in_float32_and_return_float64():
    """The sampler's float32 likelihood: float32 features with float64 Gamma and counts give float64 value and
    gradient within float32's rounding of the float64 ones (in blocks and in one), the HVP too."""
    rng = np.random.default_rng(9)
    weights, means, chol = random_mixture(rng, 5, 3)
    feats = quadratic_features(1.5 * rng.normal(size=(700, 3)))
    counts = jnp.asarray(rng.integers(1, 40, size=700).astype(float))
    gamma = component_coefficients(weights, means, chol)
    single = feats.astype(jnp.float32)
    for rows in (None, 256):
        value, grad = jax.value_and_grad(loglik_from_coefficients, argnums=2)(feats, counts, gamma, rows)
        value32, grad32 = jax.value_and_grad(loglik_from_coefficients, argnums=2)(single, counts, gamma, rows)
        assert value32.dtype == grad32.dtype == jnp.float64
        # each row's log density is a sum of terms up to |phi| |gamma| in size, rounded at 2^-24 of it
        scale = float(jnp.sum(counts * jnp.max(jnp.abs(feats) @ jnp.abs(gamma), axis=1)))
        assert abs(float(value32) - float(value)) < 8 * 2.0 ** -24 * scale
        assert abs(float(value32) - float(value)) > 0  # computed in float32 indeed
        np.testing.assert_allclose(grad32, grad, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(grad))))


def test_blocked_loglik_accepts_counts_of_another_dtype():
    """float32 features and Gamma with float64 or integer counts, in blocks: same value and gradient
    as one block (float32 tolerances)."""
    rng = np.random.default_rng(5)
    feats = quadratic_features(jnp.asarray(rng.normal(size=(600, 2)), jnp.float32))
    gamma = jnp.asarray(0.1 * rng.normal(size=(feats.shape[1], 4)), jnp.float32)
    for counts in (jnp.asarray(rng.integers(1, 5, size=600)), jnp.asarray(rng.uniform(1, 5, size=600))):
        blocked = jax.value_and_grad(loglik_from_coefficients, argnums=2)(feats, counts, gamma, 256)
        single = jax.value_and_grad(loglik_from_coefficients, argnums=2)(feats, counts, gamma, None)
        assert float(blocked[0]) == pytest.approx(float(single[0]), rel=1e-5)
        np.testing.assert_allclose(blocked[1], single[1], rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(single[1]))))
    # the data's derivative with integer counts (no tangent for them)
    counts = jnp.asarray(rng.integers(1, 5, size=600))
    np.testing.assert_allclose(jax.grad(loglik_from_coefficients)(feats, counts, gamma, 256),
                               jax.grad(plain_loglik)(feats, counts, gamma), rtol=1e-4, atol=1e-3)


def test_fused_loglik_is_minus_inf_where_every_component_is():
    feats = quadratic_features(jnp.ones((4, 2)))
    gamma = jnp.full((feats.shape[1], 3), -jnp.inf)
    assert float(loglik_from_coefficients(feats, jnp.ones(4), gamma, None)) == -np.inf
    # float32 features take the (K, rows) layout: the same -inf, no nan
    assert float(loglik_from_coefficients(feats.astype(jnp.float32), jnp.ones(4), gamma, None)) == -np.inf


def test_float32_component_layout_equals_the_row_layout():
    """float32 features' log densities laid out (K, rows) give the value and gradient of the (rows, K) layout in
    the same precision, to float32's rounding (sums taken in another order), with float64 Gamma and counts."""
    from kgmm_bayes.bayes import mixture

    rng = np.random.default_rng(13)
    weights, means, chol = random_mixture(rng, 7, 3)
    feats = quadratic_features(1.5 * rng.normal(size=(900, 3))).astype(jnp.float32)
    counts = jnp.asarray(rng.integers(1, 40, size=900).astype(float))
    gamma = component_coefficients(weights, means, chol)
    by_row = mixture._block_terms_by_row(feats, counts, gamma.astype(jnp.float32), jnp.float64)
    by_component = mixture._block_terms(feats, counts, gamma)
    assert by_component[0].dtype == by_component[1].dtype == jnp.float64
    scale = float(jnp.sum(counts * jnp.max(jnp.abs(feats) @ jnp.abs(gamma), axis=1)))
    assert abs(float(by_component[0]) - float(by_row[0])) < 8 * 2.0 ** -24 * scale
    np.testing.assert_allclose(by_component[1], by_row[1], rtol=1e-5,
                               atol=1e-5 * float(jnp.max(jnp.abs(by_row[1]))))
    # and the other layout's gradient is the derivative of its own value: the plain expression's, in float64
    want = jax.grad(plain_loglik, argnums=2)(feats.astype(jnp.float64), counts, gamma)
    np.testing.assert_allclose(by_component[1], want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))


def test_large_float32_blocks_keep_the_row_layout(monkeypatch):
    """float32 blocks of more than COMPONENT_LAYOUT_MAX log densities are computed in the (rows, K) layout (the
    (K, rows) one is several times slower there): the same numbers as it, bit for bit."""
    from kgmm_bayes.bayes import mixture

    rng = np.random.default_rng(17)
    feats = quadratic_features(rng.normal(size=(300, 2))).astype(jnp.float32)
    counts = jnp.asarray(rng.uniform(1, 5, size=300))
    gamma = jnp.asarray(0.1 * rng.normal(size=(feats.shape[1], 4)))
    by_row = mixture._block_terms_by_row(feats, counts, gamma.astype(jnp.float32), jnp.float64)
    monkeypatch.setattr(mixture, "COMPONENT_LAYOUT_MAX", 300 * 4 - 1)
    got = mixture._block_terms(feats, counts, gamma)
    assert float(got[0]) == float(by_row[0])
    np.testing.assert_array_equal(got[1], by_row[1])


@pytest.mark.parametrize("d", [1, 2])
def test_model_log_density_is_prior_plus_likelihood(d):
    rng = np.random.default_rng(11 + d)
    k = 3
    weights, means, chol = random_mixture(rng, k, d)
    scales = np.sqrt(np.sum(chol**2, axis=-1))
    corr_chol = chol / scales[:, :, None]
    x = rng.normal(size=(50, d))
    counts = rng.integers(1, 4, size=50).astype(float)
    prior = MixturePrior(centroids=jnp.asarray(rng.normal(size=(k, d))), mean_scales=jnp.full((k, d), 0.7),
                         dirichlet_alpha=2.0, scale_prior=1.0, lkj_eta=2.0)
    params = {"weights": weights, "means": means, "scales": scales}
    if d > 1:
        params["corr_chol"] = corr_chol
    got, _ = log_density(mixture_model, (quadratic_features(x), counts, prior), {}, params)
    expected = (dist.Dirichlet(jnp.full(k, 2.0)).log_prob(weights)
                + dist.Normal(prior.centroids, prior.mean_scales).log_prob(means).sum()
                + dist.HalfCauchy(1.0).log_prob(scales).sum()
                + reference_loglik(x, counts, weights, means, chol))
    if d > 1:
        expected += dist.LKJCholesky(d, 2.0).log_prob(corr_chol).sum()
    assert float(got) == pytest.approx(float(expected), rel=1e-10)


def test_cell_moment_features_bound_the_exact_cell_loglik():
    """Cells entering through mean and covariance: exact for one component, a Jensen lower
    bound of the cell-averaged mixture log-likelihood otherwise."""
    from kgmm_bayes.bayes.mixture import expected_quadratic_features

    rng = np.random.default_rng(21)
    d, cells = 2, 6
    raw = [rng.normal(size=(int(rng.integers(3, 30)), d)) * 0.3 + rng.normal(size=d) for _ in range(cells)]
    means = np.stack([c.mean(axis=0) for c in raw])
    covs = np.stack([np.cov(c.T, bias=True) for c in raw])
    counts = np.array([len(c) for c in raw], dtype=float)
    feats = expected_quadratic_features(means, covs)
    allx = np.concatenate(raw)
    for k in (1, 3):
        w, mu, chol = random_mixture(rng, k, d)
        coreset = float(mixture_loglik_dense(feats, counts, w, mu, chol))
        exact = float(reference_loglik(allx, np.ones(len(allx)), w, mu, chol))
        if k == 1:
            assert coreset == pytest.approx(exact, rel=1e-11)
        else:
            assert coreset <= exact + 1e-9


@pytest.mark.parametrize("d", [1, 2, 3, 8, 9])
def test_precision_factors_invert_the_cholesky_factor(d):
    """Unrolled forward substitution (d <= 8) and the LAPACK path (d > 8): W L = I, batched."""
    from kgmm_bayes.bayes.mixture import UNROLLED_MAX_DIM, precision_factors

    rng = np.random.default_rng(10 + d)
    _, _, chol = random_mixture(rng, 6, d)
    chol = np.stack([chol, 0.5 * chol])  # two leading batch axes
    w = np.asarray(precision_factors(jnp.asarray(chol)))
    eye = np.broadcast_to(np.eye(d), chol.shape)
    np.testing.assert_allclose(w @ chol, eye, atol=1e-12)
    np.testing.assert_array_equal(np.triu(w, 1), 0.0)
    assert (d > UNROLLED_MAX_DIM) == (d == 9)
