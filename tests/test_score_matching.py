"""The held-out score-matching gap (kgmm_bayes.bayes.score_matching) against analytic answers.

On a standard Gaussian in d = 2 the score is ``-x``; the field ``s_a(x) = -a x`` has Hyvarinen score
``H(s_a) = E[a^2 |x|^2 - 2 a d] = 2 a^2 - 4 a`` and Fisher divergence ``J(s_a) = 2 (1 - a)^2``, so
``H(s_a) - H(s_1) = J(s_a)`` exactly.  Per snapshot, ``a^2 |x|^2`` has variance ``a^4 2 d = 4 a^4``,
which sets the tolerances below (5 standard errors).
"""
import math

import jax
import numpy as np
import pytest

from kgmm_bayes.bayes.coarsening import choose_zeta, error_terms, posterior_score_variance
from kgmm_bayes.bayes.score_matching import FisherGap, fisher_gap, hyvarinen_terms, train_reference

D = 2
N = 20_000
STEPS = 1500  # enough for the network to learn a Gaussian's score; keeps the test short


def gaussian(seed, n=N):
    return np.random.default_rng(seed).normal(size=(n, D))


def scaled(a):
    def fields(x):  # score and divergence of s_a(x) = -a x
        return -a * x, np.full(len(x), -a * D)
    return fields


def test_hyvarinen_terms_are_exact_for_a_linear_field():
    x = gaussian(0, 1000)
    for a in (0.5, 1.0, 1.7):
        terms = np.asarray(hyvarinen_terms(lambda xi: -a * xi, x))
        np.testing.assert_allclose(terms, a**2 * np.sum(x**2, axis=1) - 2 * a * D, rtol=1e-12, atol=1e-12)


def test_hyvarinen_differences_estimate_the_fisher_divergence():
    x = gaussian(1)
    h = {a: float(np.mean(hyvarinen_terms(lambda xi, a=a: -a * xi, x))) for a in (0.6, 1.0)}
    se = math.sqrt(4 * (0.6**4 + 1.0)) / math.sqrt(N)  # a bound on the difference's standard error
    assert h[0.6] - h[1.0] == pytest.approx(2 * (1 - 0.6) ** 2, abs=5 * se)


@pytest.fixture(scope="module")
def reference():
    return train_reference(jax.random.key(0), gaussian(2), steps=STEPS)


def test_the_reference_network_learns_a_gaussian_score(reference):
    x = gaussian(3, 2000)
    s = np.asarray(jax.vmap(reference)(x))
    fisher = float(np.mean(np.sum((s + x) ** 2, axis=1)))
    assert fisher < 0.05 * float(np.mean(np.sum(x**2, axis=1)))  # within 5% of E|s|^2 = 2


def test_gap_bounds_the_error_of_a_biased_estimate_and_nearly_attains_it():
    x = gaussian(4)
    exact = 2 * (1 - 0.6) ** 2  # J(s_0.6) = 0.32
    gap = fisher_gap(jax.random.key(1), x, scaled(0.6), steps=STEPS)
    assert isinstance(gap, FisherGap) and gap.snapshots == N // 2
    # a lower bound: J(s_K) - J(s_ref) <= J(s_K), up to its noise; tight: the network is near the truth
    assert gap.gap <= exact + 5 * gap.se
    assert gap.gap >= 0.8 * exact - 5 * gap.se
    assert gap.bound == pytest.approx(max(gap.gap - gap.se, 0.0), rel=1e-12)
    se = math.sqrt(4 * (0.6**4 + 1.0)) / math.sqrt(N // 2)
    assert 0.2 * se < gap.se < 5 * se  # batch means on independent snapshots: about the iid standard error


def test_gap_of_the_true_score_is_not_positive_beyond_its_noise():
    gap = fisher_gap(jax.random.key(2), gaussian(5), scaled(1.0), steps=STEPS)
    assert gap.gap <= 3 * gap.se
    assert gap.bound <= 2 * gap.se


def test_choose_zeta_makes_the_variance_at_least_the_score_matching_bound():
    rng = np.random.default_rng(6)
    points = np.linspace(-2.0, 2.0, 41)[:, None]
    counts = np.exp(-0.5 * points[:, 0] ** 2)
    x = rng.normal(size=(N, 1))  # well specified: no mixture bias, so the gap's bound decides
    draws = 1e-2 * rng.normal(size=(4000, len(points), 1))
    wide_logp = 1e3 * rng.normal(size=(4000, len(points)))
    v = posterior_score_variance(draws, counts)
    bound = 9.0 * v
    choice = choose_zeta(draws, wide_logp, points, counts, x, 1, seed=0,
                         score_gap=FisherGap(gap=bound + 0.1 * v, se=0.1 * v, bound=bound, reference_loss=0.0,
                                             snapshots=N // 2))
    inflation, bias2 = error_terms(x, 1, points, counts, seed=0)["score"]
    assert choice.zeta == pytest.approx(v / max(v * inflation + bias2, bound), rel=1e-12)
    assert choice.zeta == pytest.approx(1 / 9, rel=1e-12)
    assert choice.score_matching_bound == bound and choice.limited_by == "score"


def test_too_few_snapshots_measure_no_gap():
    from kgmm_bayes.bayes.score_matching import MIN_SNAPSHOTS

    assert fisher_gap(jax.random.key(3), gaussian(7, 2 * MIN_SNAPSHOTS - 1), scaled(0.6), steps=10) is None


def test_a_reported_bound_leaves_zeta_alone():
    rng = np.random.default_rng(6)
    points = np.linspace(-2.0, 2.0, 41)[:, None]
    counts = np.exp(-0.5 * points[:, 0] ** 2)
    x = rng.normal(size=(N, 1))
    draws = 1e-2 * rng.normal(size=(4000, len(points), 1))
    wide_logp = 1e3 * rng.normal(size=(4000, len(points)))
    gap = FisherGap(gap=1.0, se=0.01, bound=0.99, reference_loss=0.0, snapshots=N // 2)
    used = choose_zeta(draws, wide_logp, points, counts, x, 1, seed=0, score_gap=gap)
    reported = choose_zeta(draws, wide_logp, points, counts, x, 1, seed=0, score_gap=gap, use_gap=False)
    plain = choose_zeta(draws, wide_logp, points, counts, x, 1, seed=0)
    assert reported.zeta == plain.zeta and used.zeta < 0.01
    assert reported.score_matching_bound == 0.99 and not reported.bound_used and used.bound_used
