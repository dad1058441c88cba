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


# ---------------------------------------------------------------- the bumps' cross-fitted gap (stein_gap)
def _ar1(seed, n, rho):
    """A stationary AR(1) series of standard Gaussian snapshots in D dimensions: correlated in time like a
    trajectory (decorrelation time about (1 + rho) / (1 - rho) snapshots)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n, D)) * math.sqrt(1 - rho**2)
    x = np.empty((n, D))
    x[0] = rng.normal(size=D)
    for t in range(1, n):
        x[t] = rho * x[t - 1] + noise[t]
    return x


def _bumped(amplitude):
    return lambda x: -x + amplitude * np.stack([np.sin(x[:, 0]), np.zeros(len(x))], axis=-1)


def test_stein_gap_of_the_true_score_is_zero_within_its_standard_error_on_correlated_snapshots():
    from kgmm_bayes.bayes.score_matching import stein_gap

    x = _ar1(5, 40_000, 0.9)  # 40,000 snapshots carry about 2,100 independent ones
    cells = gaussian(6, 1000)
    gap = stein_gap(x, _bumped(0.0), cells, np.ones(len(cells)))
    assert abs(gap.gap) < 4 * gap.se  # cross-fitting over non-adjacent blocks: no noise term left
    assert gap.se < 0.05


def test_stein_gap_estimates_the_error_projected_on_the_bumps_and_stays_below_the_error():
    """s = -x + 0.3 sin(x_1) e_1: the squared error is 0.09 E sin^2 = 0.09 (1 - e^-2) / 2 = 0.0389.  The
    population projection b^T A^-1 b on the chosen bumps is computed from 400,000 other snapshots."""
    from kgmm_bayes.bayes import score_matching as sm

    x, cells = gaussian(7, 60_000), gaussian(8, 1000)
    gap = sm.stein_gap(x, _bumped(0.3), cells, np.ones(len(cells)))
    error = 0.09 * (1 - math.exp(-2)) / 2
    assert gap.basis in {min(n, len(cells) // 4) for n in sm.STEIN_LADDER}  # each size capped at cells / 4
    centres, width = sm._bump_basis(cells, np.ones(len(cells)), gap.basis, 0)
    big = gaussian(9, 400_000)
    sq = np.sum(big**2, axis=-1)[:, None] + np.sum(centres**2, axis=-1)[None] - 2.0 * big @ centres.T
    g = np.exp(-np.maximum(sq, 0.0) / (2 * width**2))
    b = g.T @ (0.3 * np.sin(big[:, 0])) / len(big)
    projection = float(b @ np.linalg.solve(g.T @ g / len(big), b))
    assert projection <= error and projection > 0.8 * error  # the bumps see most of this smooth error
    assert gap.gap == pytest.approx(projection, abs=4 * gap.se) and gap.se < 0.01
    assert sm.stein_gap(x[:160], _bumped(0.3), cells, np.ones(len(cells))) is None  # blocks smaller than any basis


def test_a_significant_bumps_gap_is_the_scores_squared_bias_and_an_insignificant_one_is_not():
    rng = np.random.default_rng(6)
    points = np.linspace(-2.0, 2.0, 41)[:, None]
    counts = np.exp(-0.5 * points[:, 0] ** 2)
    x = rng.normal(size=(N, 1))  # Gaussian snapshots, a one-component fit: the richer mixture sees no bias
    draws = 1e-2 * rng.normal(size=(4000, len(points), 1))
    wide_logp = 1e3 * rng.normal(size=(4000, len(points)))
    terms = error_terms(x, 1, points, counts, seed=0)
    assert terms["score"][1] == 0.0
    v = posterior_score_variance(draws, counts)

    def chosen(gap, se):
        return choose_zeta(draws, wide_logp, points, counts, x, 1, seed=0, terms=terms, gap_as_bias=True,
                           score_gap=FisherGap(gap=gap, se=se, bound=max(gap - se, 0.0), reference_loss=math.nan,
                                               snapshots=N))

    significant = chosen(0.01, 0.003)  # 3.3 standard errors
    assert significant.zeta == pytest.approx(v / (v * terms["score"][0] + 0.01), rel=1e-12)
    assert significant.bound_used and significant.score_matching_reference == "bumps"
    assert significant.squared_bias == 0.01
    insignificant = chosen(0.01, 0.004)  # 2.5 standard errors: not enough evidence of a bias
    plain = choose_zeta(draws, wide_logp, points, counts, x, 1, seed=0, terms=terms)
    assert insignificant.zeta == plain.zeta and not insignificant.bound_used
    assert insignificant.score_matching_gap == 0.01  # reported all the same
    richer = dict(terms, score=(terms["score"][0], 0.05))  # the richer mixture sees more: its bias is kept
    kept = choose_zeta(draws, wide_logp, points, counts, x, 1, seed=0, terms=richer, gap_as_bias=True,
                       score_gap=FisherGap(gap=0.01, se=0.003, bound=0.007, reference_loss=math.nan, snapshots=N))
    assert kept.squared_bias == 0.05 and not kept.bound_used


def test_the_ladder_keeps_the_largest_lower_limit_among_significant_bases(monkeypatch):
    """The primary basis (100 bumps) is significant above 2 standard errors, the others above 3; among the
    significant ones the largest ``gap - 3 se`` wins; with none, the largest lower limit is reported."""
    from kgmm_bayes.bayes import score_matching as sm

    x, cells = gaussian(10, 8000), gaussian(11, 1600)  # 400 cells per 4: every size of the ladder

    def chosen(table):
        monkeypatch.setattr(sm, "_cross_fitted", lambda z, s, centres, width, blocks: table[len(centres)] + (None, None))
        return sm.stein_gap(x, _bumped(0.0), cells, np.ones(len(cells)))

    quiet = {25: (0.0, 1.0), 50: (0.0, 1.0), 200: (0.0, 1.0), 400: (0.0, 1.0)}
    primary = chosen({**quiet, 100: (2.5, 1.0)})  # 2.5 se: significant as the primary basis only
    assert (primary.basis, primary.threshold) == (100, 2.0) and primary.gap > primary.threshold * primary.se
    richer = chosen({**quiet, 100: (2.5, 1.0), 200: (6.5, 1.1)})  # 6.5 - 3.3 > 2.5 - 3
    assert (richer.basis, richer.threshold, richer.gap) == (200, 3.0, 6.5)
    none = chosen({**quiet, 50: (2.9, 1.0), 100: (1.5, 1.0)})  # 2.9 se of a non-primary basis: not enough
    assert none.basis == 50 and not none.gap > none.threshold * none.se


def test_bump_bases_kept_by_the_caller_are_placed_once_and_give_the_same_gap(monkeypatch):
    """The first and a second posterior are measured on the same cells: the K-means placements are kept."""
    from kgmm_bayes.bayes import score_matching as sm

    x, cells = gaussian(12, 4000), gaussian(13, 400)
    fresh = sm.stein_gap(x, _bumped(0.3), cells, np.ones(len(cells)))
    bases = {}
    first = sm.stein_gap(x, _bumped(0.3), cells, np.ones(len(cells)), bases=bases)
    assert sorted(bases) == [25, 50, 100] and first._replace(field=None) == fresh._replace(field=None)
    assert (first.field is None) == (fresh.field is None) == (not first.gap > first.threshold * first.se)
    if first.field is not None:
        np.testing.assert_array_equal(first.field.coefficients, fresh.field.coefficients)
    placed = []
    original = sm._bump_basis
    monkeypatch.setattr(sm, "_bump_basis", lambda *a: placed.append(a[2]) or original(*a))
    again = sm.stein_gap(x, _bumped(0.0), cells, np.ones(len(cells)), bases=bases)
    assert placed == [] and again.gap < first.gap


def test_bumps_are_the_gaussian_above_their_floor_and_the_floor_below_it_with_no_subnormal_number():
    from kgmm_bayes.bayes import score_matching as sm

    width = 0.5
    centres = np.array([[0.0, 0.0], [3.0, -1.0]])
    # squared distances to the first centre set the exponents |x - c|^2 / (2 width^2): 0.5, 300, 353.9, 354.1, 700
    # (exp(-700) ~ 1e-304: subnormal products), 1e4 (underflows to 0 anyway)
    exponents = np.array([0.5, 300.0, 353.9, 354.1, 700.0, 1e4])
    x = np.stack([np.sqrt(2 * width ** 2 * exponents), np.zeros(len(exponents))], axis=1)
    buffers = sm._chunk_buffers(len(centres), rows=len(x) + 3)
    for g in (sm._bumps(x, centres, np.sum(centres ** 2, axis=1), width),
              sm._bumps(x, centres, np.sum(centres ** 2, axis=1), width, buffers)):
        exact = np.exp(-np.sum((x[:, None] - centres[None]) ** 2, axis=-1) / (2 * width ** 2))
        above = exact >= np.exp(-sm.BUMP_FLOOR)
        assert above[:3, 0].all() and not above[3:, 0].any()
        np.testing.assert_allclose(g[above], exact[above], rtol=1e-12, atol=0)
        np.testing.assert_allclose(g[~above], np.exp(-sm.BUMP_FLOOR), rtol=1e-12, atol=0)
        assert np.all(g * g >= np.finfo(np.float64).tiny)  # no bump, nor a product of two, is subnormal


def test_the_local_error_field_is_the_cross_fit_of_block_fields_and_averages_to_the_gap():
    """``BiasField.squared`` is the mean over non-adjacent block pairs of ``c_a(x) c_c(x)`` (checked against the
    explicit pairs), clipped at 0; averaged over the snapshots the gap was measured on it is the gap itself
    (``theta_a^T A theta_c = b_a^T A^-1 b_c``, up to the ridge)."""
    from kgmm_bayes.bayes import score_matching as sm

    x, cells = gaussian(14, 16_000), gaussian(15, 1600)
    gap = sm.stein_gap(x, _bumped(0.3), cells, np.ones(len(cells)))
    field = gap.field
    assert gap.gap > gap.threshold * gap.se and len(field.centres) == gap.basis  # significant: its own basis
    probe = gaussian(16, 50)
    g = np.exp(-np.sum((probe[:, None] - field.centres[None]) ** 2, axis=-1) / (2 * field.width ** 2))
    c = np.einsum("nj,ajk->ank", g, field.coefficients)
    blocks = len(c)
    explicit = np.mean([c[a] * c[b] for a in range(blocks) for b in range(a + 2, blocks)], axis=0)
    np.testing.assert_allclose(field.cross_products(probe), explicit, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(field.squared(probe), np.maximum(explicit, 0.0), rtol=1e-10, atol=1e-14)
    assert np.all(field.squared(probe) >= 0.0)
    used = x[:len(x) // sm.STEIN_BLOCKS * sm.STEIN_BLOCKS]
    bumps = np.exp(-np.sum((used[:, None] - field.centres[None]) ** 2, axis=-1) / (2 * field.width ** 2))
    gram = bumps.T @ bumps / len(used)
    ridge = sm.STEIN_RIDGE * np.trace(gram) / len(gram)  # b_a^T (A + ridge)^-1 b_c = theta_a^T (A + ridge) theta_c
    theta = field.coefficients
    ridge_term = np.mean([np.sum(theta[a] * theta[b]) for a in range(blocks) for b in range(a + 2, blocks)]) * ridge
    np.testing.assert_allclose(np.sum(field.cross_products(used).mean(axis=0)) + ridge_term, gap.gap, rtol=1e-8)
    # the error is 0.3 sin(x_1) on the first coordinate only: the field sees it there, much less on the second
    squared = field.squared(used).mean(axis=0)
    assert squared[0] > 5 * squared[1] and 0.5 * 0.0389 < squared[0] < 1.5 * 0.0389
    stats = sm.field_from_stats(sm.field_stats(field))
    np.testing.assert_array_equal(stats.squared(probe), field.squared(probe))
    assert sm.field_from_stats({}) is None


def _bump_fit(x, centres, width, rng, draws):
    """The bumps' own least-squares correction of the score ``-x`` fitted to the snapshots ``x`` (the truth is
    ``-x``: its error is pure sampling noise) and ``draws`` bootstrap refits: ``(fit, draw_scores)``."""
    from kgmm_bayes.bayes import score_matching as sm

    centre_sq = np.sum(centres ** 2, axis=-1)

    def stein_b(z):  # E_z[m g + grad g] for m(z) = -z, (J, d)
        g = sm._bumps(z, centres, centre_sq, width)
        return (g.T @ (-z) - (g.T @ z - g.sum(axis=0)[:, None] * centres) / width ** 2) / len(z)

    g = sm._bumps(x, centres, centre_sq, width)
    gram = g.T @ g / len(x)
    gram += sm.STEIN_RIDGE * np.trace(gram) / len(gram) * np.eye(len(gram))
    thetas = np.stack([np.linalg.solve(gram, stein_b(x[rng.integers(0, len(x), len(x))])) for _ in range(draws)])
    mean = thetas.mean(axis=0)
    return (lambda z: -z - sm._bumps(z, centres, centre_sq, width) @ mean,
            lambda z: -z[None] - np.einsum("nj,sjk->snk", sm._bumps(z, centres, centre_sq, width), thetas))


def test_the_fits_own_variance_added_back_makes_the_gap_of_a_fitted_score_unbiased():
    """A score fitted to the snapshots follows their noise, so the cross-fitted gap reads low by the fit's own
    projected variance; the draws' spread puts it back.  Here the fit is the bumps' own correction of the true
    score (no bias, 100 fitted coefficients) with bootstrap draws: over 12 data sets the raw gap averages
    tens of its standard errors below 0, the corrected one 0 within 3."""
    from kgmm_bayes.bayes import score_matching as sm

    cells, basis = gaussian(20, 400), 50
    centres, width = sm._bump_basis(cells, np.ones(len(cells)), basis, 0)
    raw, corrected = [], []
    for rep in range(12):
        rng = np.random.default_rng(100 + rep)
        x = rng.normal(size=(24_000, D))
        fit, draws = _bump_fit(x, centres, width, rng, 32)
        gap = sm.stein_gap(x, fit, cells, np.ones(len(cells)), ladder=(basis,), bases={basis: (centres, width)},
                           draw_scores=draws)
        assert gap.correction > 0
        raw.append(gap.gap - gap.correction)
        corrected.append(gap.gap)
    se = lambda v: np.std(v, ddof=1) / np.sqrt(len(v))  # noqa: E731
    assert np.mean(raw) < -10 * se(raw)
    assert abs(np.mean(corrected)) < 3 * se(corrected)


def test_the_local_field_with_the_fits_variance_averages_to_the_corrected_gap():
    """``BiasField.estimate`` = cross products + ``fit_variance`` (the mean over draws of ``(g spread_k)^2``,
    checked explicitly); averaged over the snapshots it is the corrected gap, up to the ridge."""
    from kgmm_bayes.bayes import score_matching as sm

    cells, basis = gaussian(21, 400), 25
    centres, width = sm._bump_basis(cells, np.ones(len(cells)), basis, 0)
    x = gaussian(22, 16_000)
    centre_sq, eta = np.sum(centres ** 2, axis=-1), np.random.default_rng(23).normal(size=(16, basis, D)) * 0.05

    def draws(z):  # the biased score 0.3 sin(x_1) e_1 - x, each draw off by its own bump field
        return _bumped(0.3)(z)[None] + np.einsum("nj,sjk->snk", sm._bumps(z, centres, centre_sq, width), eta)

    gap = sm.stein_gap(x, _bumped(0.3), cells, np.ones(len(cells)), ladder=(basis,), bases={basis: (centres, width)},
                       draw_scores=draws, spread_factor=1.5)
    field = gap.field
    assert gap.gap > gap.threshold * gap.se and field.spread.shape == (16, basis, D)
    probe = gaussian(24, 40)
    g = np.exp(-np.sum((probe[:, None] - centres[None]) ** 2, axis=-1) / (2 * width ** 2))
    explicit = np.mean(np.einsum("nj,sjk->snk", g, field.spread) ** 2, axis=0)
    np.testing.assert_allclose(field.fit_variance(probe), explicit, rtol=1e-10)
    np.testing.assert_allclose(field.estimate(probe), field.cross_products(probe) + explicit, rtol=1e-10)
    used = x[:len(x) // sm.STEIN_BLOCKS * sm.STEIN_BLOCKS]
    bumps = np.exp(-np.sum((used[:, None] - centres[None]) ** 2, axis=-1) / (2 * width ** 2))
    gram = bumps.T @ bumps / len(used)
    ridge = sm.STEIN_RIDGE * np.trace(gram) / len(gram)
    theta, spread, blocks = field.coefficients, field.spread, len(field.coefficients)
    ridge_term = ridge * (np.mean([np.sum(theta[a] * theta[b]) for a in range(blocks) for b in range(a + 2, blocks)])
                          + np.mean(np.sum(spread ** 2, axis=(1, 2))))
    np.testing.assert_allclose(np.sum(field.estimate(used).mean(axis=0)) + ridge_term, gap.gap, rtol=1e-8)
    # the spread is the draws' deviations projected and scaled by sqrt(factor S / (S - 1))
    deviations = draws(used[np.linspace(0, len(used) - 1, min(len(used), sm.STEIN_SPREAD_SNAPSHOTS)).round()
                            .astype(np.int64)])
    deviations -= deviations.mean(axis=0)
    sample = used[np.linspace(0, len(used) - 1, min(len(used), sm.STEIN_SPREAD_SNAPSHOTS)).round().astype(np.int64)]
    gs = np.exp(-np.sum((sample[:, None] - centres[None]) ** 2, axis=-1) / (2 * width ** 2))
    projected = np.einsum("nj,snk->sjk", gs, deviations) / len(sample)
    expected = np.mean([np.sum(p * np.linalg.solve(gram + ridge * np.eye(basis), p)) for p in projected]) * 1.5 * 16 / 15
    np.testing.assert_allclose(gap.correction, expected, rtol=1e-8)
    stats = sm.field_from_stats(sm.field_stats(field))
    np.testing.assert_array_equal(stats.spread, field.spread)


def test_a_gap_that_is_not_significant_carries_no_local_field():
    """No bias the data show, no widening: pointwise the field would be noise (in 1-D with 100 narrow bumps its
    clipped square averaged 0.58 on the default study, whose squared error is 0.005)."""
    from kgmm_bayes.bayes.score_matching import stein_gap

    x = _ar1(5, 40_000, 0.9)
    cells = gaussian(6, 1000)
    gap = stein_gap(x, _bumped(0.0), cells, np.ones(len(cells)))
    assert not gap.gap > gap.threshold * gap.se and gap.field is None
    # a second posterior's field is measured on the first's bumps and kept whatever its own significance
    again = stein_gap(x, _bumped(0.0), cells, np.ones(len(cells)), ladder=(gap.basis,), keep_field=True)
    assert again.gap == gap.gap and len(again.field.centres) == gap.basis


def test_a_band_with_bias_is_at_least_z_times_the_local_bias_and_otherwise_unchanged():
    from scipy.stats import norm

    from kgmm_bayes.bayes.score import band_with_bias, summarize_scores

    rng = np.random.default_rng(17)
    scores = rng.normal(size=(400, 30, 2)) * np.array([0.1, 1.0])
    summary = summarize_scores(scores, rng.normal(size=(400, 30)), 0.9)
    bias2 = np.full((30, 2), 0.25)  # beta = 0.5: wider than the first coordinate's band, narrower than the second's
    wide = band_with_bias(summary, bias2)
    z = norm.ppf(0.95)
    np.testing.assert_allclose(wide.mean - wide.lower, np.maximum(summary.mean - summary.lower, z * 0.5), rtol=1e-14)
    np.testing.assert_allclose(wide.upper - wide.mean, np.maximum(summary.upper - summary.mean, z * 0.5), rtol=1e-14)
    np.testing.assert_array_equal(wide.lower[:, 1], summary.lower[:, 1])
    np.testing.assert_array_equal(wide.std, np.maximum(summary.std, 0.5))
    same = band_with_bias(summary, np.zeros((30, 2)))
    for a, b in zip(same, summary):
        np.testing.assert_array_equal(a, b)


def test_evenly_spaced_picks_are_distinct_ascending_and_span_the_range():
    from kgmm_bayes._picks import evenly_spaced

    for n in (0, 1, 2, 7, 100, 1001):
        for count in (0, 1, 2, 3, n - 1, n, n + 5):
            picks = evenly_spaced(n, count)
            assert len(picks) == max(0, min(n, count))
            assert np.all(np.diff(picks) > 0) and (len(picks) == 0 or picks.max() < n)
            if len(picks) >= 2:
                assert (picks[0], picks[-1]) == (0, n - 1)


def test_the_report_says_why_the_bumps_gap_was_or_was_not_used():
    from kgmm_bayes.bayes.coarsening import Coarsening
    from kgmm_bayes.study.report import _coarsening_lines

    base = Coarsening(method="auto", zeta=0.5, alpha=1000.0, posterior_variance=0.01, autocorrelation_inflation=1.0,
                      squared_bias=0.05, reference_components=8, limited_by="score", score_matching_gap=0.02,
                      score_matching_se=0.005, score_matching_bound=0.015, score_matching_reference="bumps",
                      score_matching_basis=200, score_matching_threshold=3.0)

    def said(c, mode="stein"):
        return _coarsening_lines(c.to_json(), 10_000, mode)[0]

    assert "significant, but below the richer mixture's squared bias" in said(base)  # 4 se < 0.05
    assert "200 bumps per coordinate, the richest basis" in said(base)
    assert "own projected variance 0.004 added back" in said(base._replace(score_matching_correction=0.004))
    assert "added back" not in said(base)  # a gap measured before the correction (or without draws)
    assert "used as the score's squared bias" in said(base._replace(bound_used=True))
    weak = said(base._replace(score_matching_se=0.01))  # 2 se of a 3-se basis
    assert "not significant (below 3 standard errors)" in weak and "richest" not in weak
    assert "coarsening_bound = 'report'" in said(base, mode="report")
    old = base.to_json()
    del old["score_matching_basis"], old["score_matching_threshold"]  # metrics.json written before they existed
    assert "bumps per coordinate" not in _coarsening_lines(old, 10_000)[0]
