"""The result object's evaluations against exact identities, on a result built from known draws.

``log_density``, ``divergence`` and ``score`` of a :class:`BayesianKGMM` are checked in
physical units against an independent computation: SciPy's multivariate normal densities
for the log density, JAX autodiff of that log density for the score and the Laplacian.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

import kgmm_bayes  # noqa: F401  (float64)
from kgmm_bayes.data import ZScore
from kgmm_bayes.errors import InputError
from kgmm_bayes.result import BayesianKGMM

S, K, D = 5, 3, 2


def _result():
    rng = np.random.default_rng(11)
    weights = rng.dirichlet(np.ones(K), size=S)
    means = rng.normal(size=(S, K, D))
    a = rng.normal(size=(S, K, D, D)) * 0.3
    covs = a @ np.swapaxes(a, -1, -2) + 0.4 * np.eye(D)
    chol = np.linalg.cholesky(covs)
    zscore = ZScore(mean=np.array([3.0, -2.0]), std=np.array([2.0, 0.5]))
    result = BayesianKGMM(spec=None, zscore=zscore, inference_data=None, partition=None, target_summary=None,
                          interpolant=None, rom_samples=np.zeros((4, D)), metrics={}, out_dir=None,
                          draws=(weights, means, chol))
    return result, weights, means, covs


def _physical_log_densities(x, weights, means, covs, zscore):
    """Each draw's log density of x (physical), from SciPy: z-scored mixture plus the Jacobian."""
    z = zscore.forward(x)
    out = np.empty((S, len(x)))
    for s in range(S):
        dens = sum(weights[s, k] * multivariate_normal(means[s, k], covs[s, k]).pdf(z) for k in range(K))
        out[s] = np.log(dens) - np.sum(np.log(zscore.std))
    return out


def _jax_log_density(x, weights, means, covs, zscore):
    """log p_s(x) for one point x (physical), differentiable, in JAX."""
    z = (x - zscore.mean) / zscore.std
    prec = jnp.linalg.inv(covs)
    resid = z[None] - means
    quad = jnp.einsum("ki,kij,kj->k", resid, prec, resid)
    logdet = jnp.linalg.slogdet(covs)[1]
    comps = jnp.log(weights) - 0.5 * quad - 0.5 * logdet - 0.5 * D * jnp.log(2 * jnp.pi)
    return jax.nn.logsumexp(comps) - jnp.sum(jnp.log(zscore.std))


POINTS = np.array([[3.0, -2.0], [1.0, -1.5], [6.0, -2.6], [2.5, -1.0], [-1.0, -2.2]])


def test_log_density_matches_scipy_and_its_predictive_is_the_mean_density():
    result, weights, means, covs = _result()
    ref = _physical_log_densities(POINTS, weights, means, covs, result.zscore)
    summary = result.log_density(POINTS, band=0.8)
    np.testing.assert_allclose(summary.mean, ref.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(summary.std, ref.std(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(summary.lower, np.quantile(ref, 0.1, axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(summary.upper, np.quantile(ref, 0.9, axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(summary.predictive, np.log(np.exp(ref).mean(axis=0)), rtol=1e-12, atol=1e-12)


def test_score_and_divergence_match_autodiff_of_the_log_density():
    result, weights, means, covs = _result()
    covs_j = jnp.asarray(covs)
    per_draw = [lambda x, s=s: _jax_log_density(x, weights[s], means[s], covs_j[s], result.zscore) for s in range(S)]
    grads = np.stack([np.stack([np.asarray(jax.grad(f)(jnp.asarray(p))) for p in POINTS]) for f in per_draw])
    laps = np.stack([[float(jnp.trace(jax.hessian(f)(jnp.asarray(p)))) for p in POINTS] for f in per_draw])
    score = result.score(POINTS)
    np.testing.assert_allclose(score.mean, grads.mean(axis=0), rtol=1e-10, atol=1e-10)
    div = result.divergence(POINTS)
    np.testing.assert_allclose(div.mean, laps.mean(axis=0), rtol=1e-10, atol=1e-10)

    def predictive(x):  # log of the posterior-predictive density mean_s p_s(x)
        return jax.nn.logsumexp(jnp.stack([f(x) for f in per_draw])) - jnp.log(S)
    pred_grad = np.stack([np.asarray(jax.grad(predictive)(jnp.asarray(p))) for p in POINTS])
    pred_lap = np.array([float(jnp.trace(jax.hessian(predictive)(jnp.asarray(p)))) for p in POINTS])
    np.testing.assert_allclose(score.predictive, pred_grad, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(div.predictive, pred_lap, rtol=1e-10, atol=1e-10)


def test_log_density_integrates_to_one_in_physical_units():
    # a 1D result: the predictive density exp(log_density) over a fine grid sums to 1
    rng = np.random.default_rng(2)
    w = rng.dirichlet(np.ones(3), size=4)
    mu = rng.normal(size=(4, 3, 1))
    chol = np.abs(rng.normal(size=(4, 3, 1, 1))) * 0.5 + 0.2
    result = BayesianKGMM(spec=None, zscore=ZScore(np.array([10.0]), np.array([3.0])), inference_data=None,
                          partition=None, target_summary=None, interpolant=None, rom_samples=np.zeros((2, 1)),
                          metrics={}, out_dir=None, draws=(w, mu, chol))
    grid = np.linspace(-20.0, 40.0, 60_001)
    dens = np.exp(result.log_density(grid[:, None]).predictive)
    assert abs(np.trapezoid(dens, grid) - 1.0) < 1e-9


def test_chunked_evaluation_equals_one_pass():
    result, *_ = _result()
    x = np.random.default_rng(4).normal(size=(37, D)) + result.zscore.mean
    whole, parts = result.divergence(x, chunk=64), result.divergence(x, chunk=8)
    np.testing.assert_allclose(parts.mean, whole.mean, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(result.log_density(x, chunk=5).lower, result.log_density(x).lower,
                               rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("call, message", [
    (lambda r: r.log_density(np.zeros((3, 5))), "points must have shape"),
    (lambda r: r.divergence(np.array([[np.nan, 0.0]])), "NaN"),
    (lambda r: r.log_density(POINTS, band=1.0), "band"),
    (lambda r: r.simulate(10, 100, dt=0.01), "key"),
    (lambda r: r.simulate(10, 100, key=0), "dt"),
    (lambda r: r.simulate(10, 100, dt=0.01, key=0, drift="network"), "drift"),
    (lambda r: r.simulate(10, 100, dt=0.01, key=0, members=3), "drift='mixture'"),
    (lambda r: r.simulate(10, 100, dt=0.01, key=0, members=99, drift="mixture"), "members"),
    (lambda r: r.simulate(0, 100, dt=0.01, key=0), "particles"),
    (lambda r: r.simulate(10, 5, dt=0.01, key=0, thin=10), "steps"),
    (lambda r: r.simulate(10, 100, dt=0.01, key=0, drift="mixture", x0=np.zeros((3, 2))), "x0"),
])
def test_bad_arguments_give_one_line_errors(call, message):
    result, *_ = _result()
    with pytest.raises(InputError, match=message) as err:
        call(result)
    assert "\n" not in str(err.value)


def test_simulate_mixture_ensemble_member_equals_a_single_run_of_its_draw():
    result, weights, means, covs = _result()
    x0 = np.tile(result.zscore.mean, (6, 1))
    ens = result.simulate(6, 200, dt=0.01, key=7, drift="mixture", members=S, x0=x0, thin=10)
    assert ens.shape == (S, 20, 6, D)
    single = BayesianKGMM(**{**result._asdict(), "draws": (weights[2:3], means[2:3], np.linalg.cholesky(covs[2:3]))})
    # member s of an ensemble draws the noise of a single run with key split(key, S)[s]
    alone = single.simulate(6, 200, dt=0.01, key=jax.random.split(jax.random.key(7), S)[2], drift="mixture",
                            x0=x0, thin=10)
    np.testing.assert_allclose(ens[2], alone, rtol=1e-5, atol=1e-5)


def test_simulate_corrected_ensemble_member_equals_a_corrected_single_run():
    from kgmm_bayes.bayes.correction import ScoreCorrection

    result, weights, means, covs = _result()
    rng = np.random.default_rng(12)
    c = ScoreCorrection(centres=rng.normal(size=(4, D)), width=0.7, theta=rng.normal(size=(4, D)), ridge=0.0,
                        decrease=1.0, se=0.1, ladder=())  # no spread kept: every member adds theta itself
    x0 = np.tile(result.zscore.mean, (6, 1))
    corrected = BayesianKGMM(**{**result._asdict(), "correction": c})
    ens = corrected.simulate(6, 200, dt=0.01, key=7, drift="mixture", members=S, x0=x0, thin=10)
    single = BayesianKGMM(**{**corrected._asdict(),
                             "draws": (weights[2:3], means[2:3], np.linalg.cholesky(covs[2:3]))})
    alone = single.simulate(6, 200, dt=0.01, key=jax.random.split(jax.random.key(7), S)[2], drift="mixture",
                            x0=x0, thin=10)
    np.testing.assert_allclose(ens[2], alone, rtol=1e-5, atol=1e-5)
    plain = result.simulate(6, 200, dt=0.01, key=7, drift="mixture", members=S, x0=x0, thin=10)
    assert np.max(np.abs(plain[2] - ens[2])) > 0.1  # the correction moved the member


def test_the_interpolant_band_is_the_posterior_band_recentred_and_widened_by_its_error():
    from scipy.stats import norm

    result, *_ = _result()
    shift = np.array([0.3, -0.2])
    result = result._replace(interpolant=lambda z: jnp.asarray(z) * 0.0 + shift,
                             metrics={"interpolant": {"heldout_rms_error": [0.1, 0.4]}})
    post, band = result.score(POINTS, band=0.8), result.score(POINTS, band=0.8, drift="interpolant")
    center = shift / result.zscore.std  # the interpolant's score in physical units
    np.testing.assert_allclose(band.mean, np.broadcast_to(center, band.mean.shape), rtol=1e-6)
    extra = (norm.ppf(0.9) * np.array([0.1, 0.4]) / result.zscore.std) ** 2
    np.testing.assert_allclose(band.upper - band.mean, np.sqrt((post.upper - post.mean) ** 2 + extra), rtol=1e-10)
    np.testing.assert_allclose(band.mean - band.lower, np.sqrt((post.mean - post.lower) ** 2 + extra), rtol=1e-10)
    no_error = result._replace(metrics={"interpolant": {"heldout_rms_error": [0.0, 0.0]}})
    same = no_error.score(POINTS, drift="interpolant")
    np.testing.assert_allclose(same.upper - same.lower, result.score(POINTS).upper - result.score(POINTS).lower,
                               rtol=1e-12)
    with pytest.raises(InputError, match="held-out interpolant error"):
        result._replace(metrics={}).score(POINTS, drift="interpolant")


def test_a_corrected_results_score_band_is_the_corrected_score_with_the_corrections_error():
    # where the study applied a correction the band is centred on the corrected score (what the model's drift
    # runs), mean and predictive both moved by c(z(x)) / std exactly, each half-width widened in quadrature by the
    # correction's sd; the interpolant's band is built on that one
    from scipy.stats import norm

    from kgmm_bayes.bayes.correction import ScoreCorrection

    result, *_ = _result()
    rng = np.random.default_rng(13)
    c = ScoreCorrection(centres=rng.normal(size=(4, D)), width=0.9, theta=rng.normal(size=(4, D)), ridge=0.0,
                        decrease=1.0, se=0.1, ladder=(), spread=0.2 * rng.normal(size=(16, 4, D)))
    corrected = result._replace(correction=c)
    plain, band = result.score(POINTS, band=0.8), corrected.score(POINTS, band=0.8)
    z, std = result.zscore.forward(POINTS), result.zscore.std
    np.testing.assert_allclose(band.mean, plain.mean + c(z) / std, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(band.predictive, plain.predictive + c(z) / std, rtol=1e-12, atol=1e-12)
    sd = c.sd_at(z) / std
    assert np.all(sd > 0)
    np.testing.assert_allclose(band.std, np.sqrt(plain.std ** 2 + sd ** 2), rtol=1e-12)
    extra = (norm.ppf(0.9) * sd) ** 2
    np.testing.assert_allclose(band.upper - band.mean, np.sqrt((plain.upper - plain.mean) ** 2 + extra), rtol=1e-10)
    np.testing.assert_allclose(band.mean - band.lower, np.sqrt((plain.mean - plain.lower) ** 2 + extra), rtol=1e-10)
    shift = np.array([0.3, -0.2])
    metrics = {"interpolant": {"heldout_rms_error": [0.1, 0.4]}}
    interp = corrected._replace(interpolant=lambda q: jnp.asarray(q) * 0.0 + shift, metrics=metrics)
    ib = interp.score(POINTS, band=0.8, drift="interpolant")
    extra_i = (norm.ppf(0.9) * np.array([0.1, 0.4]) / std) ** 2
    np.testing.assert_allclose(ib.upper - ib.mean, np.sqrt((band.upper - band.mean) ** 2 + extra_i), rtol=1e-10)
    unapplied = result._replace(correction=c._replace(applied=False)).score(POINTS, band=0.8)
    np.testing.assert_array_equal(unapplied.mean, plain.mean)
