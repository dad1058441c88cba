"""Mobility, correlation functions and responses against the exact answers of an Ornstein-Uhlenbeck
process with a non-symmetric drift matrix (kgmm_bayes.rom.mobility, kgmm_bayes.metrics.correlation).

``dx = A x dt + B dW`` with stationary covariance ``S`` (``A S + S A^T + B B^T = 0``) is sampled
exactly at interval ``h`` (``x_{k+1} = e^{Ah} x_k + eta``, ``eta ~ N(0, S - e^{Ah} S e^{A^T h})``), so
the only errors are sampling errors.  Exact answers: score ``-S^-1 x``, mobility ``Phi = -A S``,
covariance function ``E[x(t + tau) x(t)^T] = e^{A tau} S``, impulse response ``e^{A tau}``.
Tolerances: ``TOL`` standard errors, the standard errors from the spread over independent groups
of members.
"""
import numpy as np
import pytest
from scipy.linalg import expm, solve_continuous_lyapunov

from kgmm_bayes.metrics.correlation import correlation_functions, lagged_moments
from kgmm_bayes.rom.mobility import (derivative_weights, fit_mobility, impulse_responses, noise_factor,
                                     second_moment_responses, step_responses, to_physical)

A = np.array([[-1.0, 1.2], [-0.6, -1.5]])  # non-normal, non-symmetric: a non-reversible process
BBT = np.array([[2.0, 0.3], [0.3, 1.0]])
S = solve_continuous_lyapunov(A, -BBT)
H = 0.05
MEMBERS, N, GROUPS = 64, 4000, 8
TOL = 4.0


def ou(seed, members=MEMBERS, n=N, h=H):
    rng = np.random.default_rng(seed)
    e = expm(A * h)
    q = np.linalg.cholesky(S - e @ S @ e.T)
    x = np.empty((members, n, 2))
    x[:, 0] = rng.normal(size=(members, 2)) @ np.linalg.cholesky(S).T
    for k in range(1, n):
        x[:, k] = x[:, k - 1] @ e.T + rng.normal(size=(members, 2)) @ q.T
    return x


def score(x):
    return -x @ np.linalg.inv(S)  # S is symmetric


@pytest.fixture(scope="module")
def data():
    return ou(0)


def grouped(fn, x):
    """The estimate on all members, and its standard error from GROUPS independent groups."""
    parts = np.stack([fn(g) for g in np.split(x, GROUPS)])
    return fn(x), parts.std(axis=0, ddof=1) / np.sqrt(GROUPS)


def test_derivative_weights_are_the_finite_difference_stencils():
    np.testing.assert_allclose(derivative_weights(1), [-1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(derivative_weights(2), [-1.5, 2.0, -0.5], atol=1e-12)
    np.testing.assert_allclose(derivative_weights(3), [-11 / 6, 3.0, -1.5, 1 / 3], atol=1e-12)
    t = np.arange(5.0)
    for order in (1, 2, 3, 4):  # exact for polynomials of degree <= order
        poly = 0.3 + 1.7 * t + 0.2 * t**2 * (order >= 2) - 0.05 * t**order
        want = 1.7 - 0.05 * (order == 1)
        assert np.dot(derivative_weights(order), poly[:order + 1]) == pytest.approx(want, abs=1e-10)


def test_lagged_moments_equal_the_direct_sums():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(3, 50, 2)), rng.normal(size=(3, 50, 3))
    got = lagged_moments(x, y, 7)
    for k in range(8):
        want = np.einsum("mti,mtj->ij", x[:, k:], y[:, :50 - k]) / (3 * (50 - k))
        np.testing.assert_allclose(got[k], want, rtol=1e-12, atol=1e-13)


def test_member_weights_are_repeated_members():
    # integer weights are the same as repeating members, in every lagged average and in Phi
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(3, 40, 2)), rng.normal(size=(3, 40, 2))
    for t in range(1, 40):  # AR(1) members: the lag-one propagator has a real logarithm
        x[:, t] += 0.8 * x[:, t - 1]
    weights = np.array([2.0, 0.0, 1.0])
    repeated = np.concatenate([x[:1], x[:1], x[2:]]), np.concatenate([y[:1], y[:1], y[2:]])
    np.testing.assert_allclose(lagged_moments(x, y, 5, weights), lagged_moments(*repeated, 5), rtol=1e-12, atol=1e-14)
    for method in ("derivative", "log"):
        np.testing.assert_allclose(fit_mobility(x, -x, 0.1, method=method, weights=weights).phi,
                                   fit_mobility(repeated[0], -repeated[0], 0.1, method=method).phi, rtol=1e-10)
    with pytest.raises(ValueError, match="weights must be"):
        lagged_moments(x, y, 5, np.array([1.0, -1.0, 1.0]))


def test_mobility_of_a_non_reversible_ou_process_is_minus_a_s(data):
    phi, se = grouped(lambda x: fit_mobility(x, score(x), H).phi, data)
    exact = -A @ S
    assert np.all(np.abs(phi - exact) <= 3 * se), (phi, exact, se)  # issue 16: within 3 standard errors
    assert np.abs(exact - exact.T).max() > 0.5  # the antisymmetric part is there to be recovered
    # the one-step difference is biased by O(h): at a coarse interval it misses where order 2 does not
    coarse = ou(2, members=32, n=4000, h=0.25)
    err = {o: np.abs(fit_mobility(coarse, score(coarse), 0.25, order=o).phi - exact).max() for o in (1, 2)}
    assert err[2] < 0.5 * err[1]
    # the matrix logarithm of the lag-one propagator is exact for linear dynamics at any interval
    log_phi, log_se = grouped(lambda x: fit_mobility(x, score(x), 0.25, method="log").phi, coarse)
    assert np.all(np.abs(log_phi - exact) <= TOL * log_se)
    assert np.abs(log_phi - exact).max() < 0.5 * err[2]


def test_noise_factor_gives_the_ou_noise():
    sigma = noise_factor(-A @ S)
    np.testing.assert_allclose(sigma @ sigma.T, BBT, rtol=1e-10)
    with pytest.raises(ValueError, match="not positive definite"):
        noise_factor(np.array([[1.0, 0.0], [0.0, -0.1]]))


def test_correlation_functions_match_the_analytic_ones(data):
    lags = 40
    corr, se = grouped(lambda x: correlation_functions(x, lags), data)
    sd = np.sqrt(np.diag(S))
    exact = np.stack([expm(A * H * k) @ S for k in range(lags + 1)]) / np.outer(sd, sd)
    assert np.all(np.abs(corr - exact) <= TOL * se + 1e-3)
    assert np.abs(exact[10] - exact[10].T).max() > 0.05  # C_ij != C_ji: the pairs matter


def test_impulse_and_step_responses_match_the_analytic_ones(data):
    lags = 40
    resp, se = grouped(lambda x: impulse_responses(x, score(x), lags), data)
    exact = np.stack([expm(A * H * k) for k in range(lags + 1)])
    assert np.all(np.abs(resp - exact) <= TOL * se + 1e-3)
    steps = step_responses(exact, H)
    # the integral of e^{A t} from 0 to T is A^-1 (e^{AT} - I); trapezoid error O(h^2)
    np.testing.assert_allclose(steps[-1], np.linalg.solve(A, exact[-1] - np.eye(2)), atol=5e-3)
    # the second moments of a centred Gaussian process do not respond at linear order
    second, se2 = grouped(lambda x: second_moment_responses(x, score(x), lags), data)
    assert np.all(np.abs(second) <= TOL * se2 + 1e-3)


def test_to_physical_scales_mobility_and_responses():
    std = np.array([2.0, 0.5])
    phi, resp = to_physical(std, np.eye(2), np.ones((3, 2, 2)))
    np.testing.assert_allclose(phi, np.diag(std**2))
    np.testing.assert_allclose(resp[0], [[1.0, 4.0], [0.25, 1.0]])


def test_misaligned_inputs_are_refused():
    with pytest.raises(ValueError, match="share the shape"):
        fit_mobility(np.zeros((2, 10, 2)), np.zeros((2, 9, 2)), 0.1)
    with pytest.raises(ValueError, match="interval must be positive"):
        fit_mobility(np.zeros((2, 10, 2)), np.zeros((2, 10, 2)), 0.0)
    with pytest.raises(ValueError, match="max_lag"):
        lagged_moments(np.zeros((1, 5, 1)), np.zeros((1, 5, 1)), 5)


def test_langevin_model_with_the_fitted_mobility_has_the_ou_correlation_functions(data):
    import jax

    from kgmm_bayes.rom.langevin import simulate_langevin

    phi = fit_mobility(data, score(data), H).phi
    prec = np.linalg.inv(S)
    x0 = np.random.default_rng(3).normal(size=(2048, 2)) @ np.linalg.cholesky(S).T
    dt, thin = 0.0025, 20  # snapshots H apart; Euler-Maruyama's bias O(dt) is below the tolerance
    run = simulate_langevin(jax.random.key(0), _linear_score, -prec, x0, dt, 400 * thin, 0, thin, box=50.0,
                            mobility=phi)
    paths = np.swapaxes(run.samples, 0, 1).astype(np.float64)  # (particles, n, d)
    lags = 30
    corr, se = grouped(lambda x: correlation_functions(x, lags), paths)
    sd = np.sqrt(np.diag(S))
    exact = np.stack([expm(A * H * k) @ S for k in range(lags + 1)]) / np.outer(sd, sd)
    assert np.all(np.abs(corr - exact) <= TOL * se + 0.006), np.abs(corr - exact).max()  # + EM bias O(dt)
    # without the mobility (Phi = I) the clock and the rotation are wrong: far outside the band
    plain = simulate_langevin(jax.random.key(0), _linear_score, -prec, x0, dt, 400 * thin, 0, thin, box=50.0)
    wrong = correlation_functions(np.swapaxes(plain.samples, 0, 1).astype(np.float64), lags)
    assert np.abs(wrong - exact).max() > 0.2


def _linear_score(prec, x):
    return x @ prec.T


def test_too_coarse_an_interval_falls_back_to_a_valid_mobility():
    from kgmm_bayes.study.dynamics import robust_mobility

    rng = np.random.default_rng(4)
    x = np.zeros((8, 3000, 1))  # an anti-correlated series: the lag-one propagator is negative, no real log
    for k in range(1, 3000):
        x[:, k] = -0.8 * x[:, k - 1] + 0.6 * rng.normal(size=(8, 1))
    s = -x / x.var()
    with pytest.raises(ValueError, match="negative eigenvalue"):
        fit_mobility(x, s, 1.0, method="log")
    phi, method = robust_mobility(x, s, 1.0)
    assert method.startswith("derivative") and phi[0, 0] > 0
    phi, method = robust_mobility(ou(0, members=8, n=2000), score(ou(0, members=8, n=2000)), H)
    assert method == "log" and np.abs(phi + A @ S).max() < 0.2  # linear data keep the exact estimator
