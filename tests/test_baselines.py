"""Baselines (kgmm_bayes.baselines) against truth: classic KGMM targets against their exact
conditional moments and the analytic smoothed score, the scikit-learn mixture's score against
an independent formula and finite differences of ``score_samples``, DSM against the smoothed
score of a Gaussian; and the ``[baselines]`` spec section."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm

from kgmm_bayes.baselines import fit_dsm, fit_sklearn, kgmm_targets
from kgmm_bayes.bayes.score import mixture_score
from kgmm_bayes.spec import BaselinesSection, SpecError, spec_from_dict


def _gaussian_1d(n, seed=0):
    z = np.random.default_rng(seed).normal(size=(n, 1))
    return (z - z.mean()) / z.std()  # z-scored: mean 0, variance 1 exactly


@pytest.fixture(scope="module")
def data_1d():
    return _gaussian_1d(20_000)


# --------------------------------------------------------------------------- classic KGMM

def _exact_cell_moments(mu, leaf_centres, sigma):
    """Exact E[z | cell], E[z^2 | cell], E[z^4 | cell] for x~ = mu + sigma z, mu the data, 1-D
    nearest-centre cells (intervals between midpoints of the sorted centres)."""
    c = leaf_centres[:, 0]
    order = np.argsort(c)
    mids = 0.5 * (c[order][1:] + c[order][:-1])
    edges = np.concatenate([[-np.inf], mids, [np.inf]])
    lo = np.empty_like(c)
    hi = np.empty_like(c)
    lo[order], hi[order] = edges[:-1], edges[1:]
    a = (lo[:, None] - mu[None, :, 0]) / sigma  # (cells, n)
    b = (hi[:, None] - mu[None, :, 0]) / sigma
    pa, pb = norm.pdf(a), norm.pdf(b)
    with np.errstate(invalid="ignore"):  # inf * 0 at the outer edges: those terms are 0
        a_pa = np.nan_to_num(a * pa)
        b_pb = np.nan_to_num(b * pb)
        a3_pa = np.nan_to_num(a**3 * pa)
        b3_pb = np.nan_to_num(b**3 * pb)
    mass = np.sum(norm.cdf(b) - norm.cdf(a), axis=1)
    m1 = np.sum(pa - pb, axis=1) / mass
    m2 = 1.0 + np.sum(a_pa - b_pb, axis=1) / mass
    m4 = 3.0 * m2 + np.sum(a3_pa - b3_pb, axis=1) / mass
    return m1, m2, m4


def test_kgmm_targets_match_exact_conditional_moments(data_1d):
    """Given the data, each cell's E[z] and E[|z|^2] have closed forms (Gaussian integrals over
    the cell's interval); the estimates must lie within 5 Monte Carlo standard errors of them,
    with standard errors sqrt(Var / count) from the exact conditional moments."""
    sigma = 0.05
    t = kgmm_targets(jax.random.key(0), data_1d, sigma, min_leaf_probability=1 / 16, max_passes=30, tolerance=1e-12)
    assert t.passes == 30 and len(t.counts) == 16
    assert t.counts.sum() == 30 * len(data_1d)
    m1, m2, m4 = _exact_cell_moments(data_1d, t.leaf_centres, sigma)
    se1 = np.sqrt((m2 - m1**2) / t.counts)
    np.testing.assert_array_less(np.abs(t.mean_noise[:, 0] - m1), 5 * se1)
    np.testing.assert_allclose(t.score, -t.mean_noise / sigma, rtol=1e-14)
    z2 = (t.divergence + np.sum(t.score**2, axis=1)) * sigma**2 + 1.0  # invert the divergence formula
    se2 = np.sqrt((m4 - m2**2) / t.counts)
    np.testing.assert_array_less(np.abs(z2 - m2), 5 * se2)


def test_kgmm_targets_converge_to_smoothed_gaussian_score(data_1d):
    """Population: x~ ~ N(0, 1 + sigma^2), so E[z | x~] = sigma x~ / (1 + sigma^2) is linear and the
    cell target equals the smoothed score -c / (1 + sigma^2) at the cell's mean c exactly.  What
    remains is noise: Monte Carlo (count noisy points) plus the sampling of the data themselves
    (count / passes points per cell); each contributes at most 1/sqrt(its size) to E[z | cell]."""
    sigma = 0.5
    t = kgmm_targets(jax.random.key(1), data_1d, sigma, min_leaf_probability=1 / 16, max_passes=40, tolerance=1e-3)
    truth = -t.centres / (1 + sigma**2)
    tol = 5 * np.sqrt(1 / t.counts + t.passes / t.counts) / sigma
    np.testing.assert_array_less(np.abs(t.score - truth)[:, 0], tol)
    assert np.max(np.abs(truth)) > 5 * np.median(tol)  # the check has teeth: scores span well beyond it
    # divergence of the smoothed score: -1 / (1 + sigma^2) everywhere
    assert abs(np.average(t.divergence, weights=t.counts) + 1 / (1 + sigma**2)) < 0.1


def test_kgmm_tolerance_stops_passes_early(data_1d):
    t = kgmm_targets(jax.random.key(2), data_1d, 0.05, min_leaf_probability=1 / 16, max_passes=500, tolerance=0.1)
    assert 2 <= t.passes < 500 and t.relative_change < 0.1


@pytest.mark.parametrize("kwargs, word", [
    ({"sigma": 0.0}, "sigma"), ({"min_leaf_probability": 1.0}, "min_leaf_probability"),
    ({"max_passes": 0}, "max_passes"), ({"tolerance": -1.0}, "tolerance")])
def test_kgmm_targets_reject_bad_arguments(data_1d, kwargs, word):
    with pytest.raises(ValueError, match=word):
        kgmm_targets(jax.random.key(0), data_1d, **kwargs)


def test_baselines_reject_non_finite_data():
    z = np.zeros((10, 1))
    z[3] = np.nan
    for fit in (lambda: kgmm_targets(jax.random.key(0), z), lambda: fit_sklearn(jax.random.key(0), z),
                lambda: fit_dsm(jax.random.key(0), z)):
        with pytest.raises(ValueError, match="NaN"):
            fit()


# --------------------------------------------------------------------------- scikit-learn mixture

@pytest.fixture(scope="module")
def sklearn_fit():
    rng = np.random.default_rng(3)
    z = np.concatenate([rng.normal([-1.0, 0.5], [0.4, 0.7], size=(1500, 2)),
                        rng.multivariate_normal([1.2, -0.3], [[0.5, 0.2], [0.2, 0.3]], size=2500)])
    return fit_sklearn(jax.random.key(4), z, components=4, max_iter=200), rng.normal(size=(50, 2)) * 1.5


def test_sklearn_score_is_the_fitted_mixture_score(sklearn_fit):
    """Independent formula: responsibilities from scikit-learn's predict_proba, precisions by
    inverting covariances_; float64 throughout."""
    fit, x = sklearn_fit
    weights, means, cov_chol = fit.mixture
    ours = np.asarray(mixture_score(weights, means, cov_chol, x)[0])
    resp = fit.model.predict_proba(x)
    precisions = np.linalg.inv(fit.model.covariances_)
    truth = -np.einsum("nk,kij,nkj->ni", resp, precisions, x[:, None, :] - fit.model.means_[None])
    np.testing.assert_allclose(ours, truth, rtol=1e-10, atol=1e-10)
    # and its responsibilities are scikit-learn's: the density is the one it evaluates
    dens = np.stack([w * multivariate_normal(m, c @ c.T).pdf(x) for w, m, c in zip(weights, means, cov_chol)], 1)
    np.testing.assert_allclose(dens / dens.sum(1, keepdims=True), resp, rtol=1e-8, atol=1e-12)


def test_sklearn_score_matches_finite_differences_of_score_samples(sklearn_fit):
    fit, x = sklearn_fit
    h = 1e-5
    fd = np.stack([(fit.model.score_samples(x + h * e) - fit.model.score_samples(x - h * e)) / (2 * h)
                   for e in np.eye(2)], axis=1)
    ours = np.asarray(mixture_score(*fit.mixture, x)[0])
    np.testing.assert_allclose(ours, fd, rtol=1e-6, atol=1e-6)
    drift = np.asarray(fit.drift_fn(fit.drift_params, x.astype(np.float32)))  # the float32 Langevin drift
    np.testing.assert_allclose(drift, ours, rtol=1e-3, atol=1e-3)
    assert set(fit.timings) == {"fitting"}


# --------------------------------------------------------------------------- denoising score matching

@pytest.mark.parametrize("ema", [0.0, 0.99])
def test_dsm_learns_the_smoothed_gaussian_score(ema):
    """The DSM loss is minimised by the smoothed score -x / (1 + sigma^2).  Tolerance: relative
    L2 error (over the data) below 0.1, against ~1 for the untrained network; the noise left
    after 1,280 Adam steps with batch 256 and per-sample target variance 1/sigma^2 = 4 is
    ~ (4 / (256 * 1280))^(1/2) ~ 0.004 per unit, far below it.  The same for the moving average of the
    parameters over the last ~100 steps."""
    sigma = 0.5
    z = _gaussian_1d(4096, seed=5)
    fit = fit_dsm(jax.random.key(6), z, sigma, hidden=(32, 32), epochs=80, batch_size=256, learning_rate=3e-3,
                  checkpoints=2, ema=ema)
    pred = np.asarray(fit.drift_fn(fit.drift_params, z.astype(np.float32)), dtype=np.float64)
    truth = -z / (1 + sigma**2)
    error = np.sqrt(np.mean((pred - truth) ** 2) / np.mean(truth**2))
    assert error < 0.1, error
    assert [c.epochs for c in fit.checkpoints] == [40, 80]
    assert 0 < fit.checkpoints[0].wall_time < fit.checkpoints[1].wall_time == fit.timings["training"]


def test_dsm_checkpoints_do_not_change_the_fit():
    """Each epoch has its own key: the fit with checkpoints ends where the fit without them does, and a
    checkpoint at epoch e is the fit of e epochs, to the bit (the reach curve of ``compare`` is one
    training, not several)."""
    z = _gaussian_1d(1024, seed=3)
    kwargs = dict(hidden=(8, 8), batch_size=128, learning_rate=3e-3)
    whole = fit_dsm(jax.random.key(1), z, 0.5, epochs=6, checkpoints=1, **kwargs)
    kept = fit_dsm(jax.random.key(1), z, 0.5, epochs=6, checkpoints=3, **kwargs)
    short = fit_dsm(jax.random.key(1), z, 0.5, epochs=4, checkpoints=1, **kwargs)
    assert [c.epochs for c in kept.checkpoints] == [2, 4, 6]
    same = jax.tree_util.tree_map(np.array_equal, whole.drift_params, kept.drift_params)
    assert all(jax.tree_util.tree_leaves(same))
    same = jax.tree_util.tree_map(np.array_equal, short.drift_params, kept.checkpoints[1].params)
    assert all(jax.tree_util.tree_leaves(same))
    other = fit_dsm(jax.random.key(2), z, 0.5, epochs=6, checkpoints=1, **kwargs)  # the check can fail
    assert not all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, whole.drift_params,
                                                                    other.drift_params)))


def test_dsm_moving_average_is_the_bias_corrected_average_of_the_steps():
    """One batch per epoch, so one Adam step per epoch, and the parameters' path does not depend on the average:
    with decay d the network kept after one step is that step's parameters p1, after two (d p1 + p2) / (1 + d),
    each from the fits without the average (float32 arithmetic: rtol 1e-5)."""
    z = _gaussian_1d(256, seed=7)
    kwargs = dict(hidden=(8, 8), batch_size=256, learning_rate=3e-2)
    p1 = fit_dsm(jax.random.key(3), z, 0.5, epochs=1, **kwargs).drift_params
    p2 = fit_dsm(jax.random.key(3), z, 0.5, epochs=2, **kwargs).drift_params
    averaged = fit_dsm(jax.random.key(3), z, 0.5, epochs=2, checkpoints=2, ema=0.5, **kwargs)
    assert averaged.info["ema"] == 0.5
    leaves = jax.tree_util.tree_leaves
    for got, want in zip(leaves(averaged.checkpoints[0].params), leaves(p1)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)
    expected = jax.tree_util.tree_map(lambda a, b: (0.5 * np.asarray(a) + np.asarray(b)) / 1.5, p1, p2)
    for got, want in zip(leaves(averaged.drift_params), leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)
    assert not np.allclose(leaves(averaged.drift_params)[-1], leaves(p2)[-1])  # the check can fail


@pytest.mark.parametrize("ema", [-0.1, 1.0])
def test_dsm_rejects_a_bad_moving_average(ema):
    with pytest.raises(ValueError, match="ema"):
        fit_dsm(jax.random.key(0), _gaussian_1d(100), ema=ema)


# --------------------------------------------------------------------------- [baselines] spec section

SYSTEM = {"data": {"system": "reduced_1d"}}


def test_baselines_section_defaults_are_the_authors_settings():
    spec = spec_from_dict(SYSTEM)
    assert spec.baselines == BaselinesSection()
    assert spec.baselines.which == ("kgmm", "dsm", "sklearn")
    assert spec.baselines.sigma == 0.05 and spec.baselines.min_leaf_probability == 1e-3
    custom = spec_from_dict({**SYSTEM, "baselines": {"which": ["dsm"], "sigma": 0.1, "dsm_epochs": 50}})
    assert custom.baselines.which == ("dsm",) and custom.baselines.sigma == 0.1
    assert "baselines" in custom.to_dict()


@pytest.mark.parametrize("values, words", [
    ({"bogus": 1}, ["bogus", "[baselines]"]),
    ({"which": ["kgmm", "nope"]}, ["[baselines] which", "nope"]),
    ({"which": ["dsm", "dsm"]}, ["[baselines] which"]),
    ({"which": "kgmm"}, ["[baselines] which"]),
    ({"sigma": 0}, ["[baselines] sigma"]),
    ({"sigma": -0.1}, ["[baselines] sigma"]),
    ({"min_leaf_probability": 1.0}, ["[baselines] min_leaf_probability"]),
    ({"max_passes": 0}, ["[baselines] max_passes"]),
    ({"tolerance": float("nan")}, ["[baselines] tolerance"]),
    ({"dsm_epochs": 2.5}, ["[baselines] dsm_epochs"]),
    ({"dsm_batch": True}, ["[baselines] dsm_batch"]),
    ({"dsm_checkpoints": 10, "dsm_epochs": 5}, ["[baselines] dsm_checkpoints", "dsm_epochs"]),
    ({"dsm_ema": 1.0}, ["[baselines] dsm_ema"]),
    ({"dsm_ema": -0.1}, ["[baselines] dsm_ema"]),
    ({"dsm_ema": float("nan")}, ["[baselines] dsm_ema"]),
    ({"sklearn_components": -1}, ["[baselines] sklearn_components"]),
    ({"model_runs": 0}, ["[baselines] model_runs"]),
    ({"model_runs": 2.0}, ["[baselines] model_runs"]),
    ({"model_runs": 101}, ["[baselines] model_runs", "100"]),
])
def test_bad_baselines_section_raises_one_line(values, words):
    with pytest.raises(SpecError) as info:
        spec_from_dict({**SYSTEM, "baselines": values})
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)
