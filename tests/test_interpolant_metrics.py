"""Interpolant training and safe storage; relative entropy and score metrics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import gaussian_kde

import kgmm_bayes  # noqa: F401
from kgmm_bayes.rom.interpolant import fit_interpolant, load_interpolant, save_interpolant
from kgmm_bayes.metrics import density as metrics
from kgmm_bayes.metrics.density import _exact_kde, band_coverage, gaussian_kde_1d, relative_entropy, weighted_score_error


def test_interpolant_fits_smooth_field_and_round_trips(tmp_path):
    x = np.linspace(-2, 2, 400)[:, None]
    y = np.concatenate([x - x**3, np.sin(2 * x)], axis=1)
    w = np.exp(-x[:, 0] ** 2)
    interp = fit_interpolant(jax.random.key(0), x, y, w, hidden=(64, 32), steps=3000, learning_rate=3e-3)
    pred = np.asarray(interp(jnp.asarray(x, jnp.float32)))
    assert weighted_score_error(pred, y, w) < 1e-3
    path = tmp_path / "interp.npz"
    save_interpolant(path, interp)
    with np.load(path, allow_pickle=False) as f:  # plain arrays only
        assert all(f[name].dtype != object for name in f.files)
    again = load_interpolant(path)
    assert again.sizes == (1, 64, 32, 2)
    np.testing.assert_array_equal(np.asarray(again(jnp.asarray(x, jnp.float32))), pred)


def test_kde_matches_scipy():
    rng = np.random.default_rng(0)
    samples = rng.standard_t(5, size=70_001)  # more than one chunk, ragged tail
    grid = np.linspace(-8, 8, 301)
    scipy_kde = gaussian_kde(samples)(grid)
    bandwidth = samples.std(ddof=1) * samples.size ** (-0.2)
    np.testing.assert_allclose(_exact_kde(samples, grid, bandwidth), scipy_kde, rtol=1e-10, atol=1e-14)
    # the public function bins this many samples: the same density to 1e-6 of its peak
    np.testing.assert_allclose(gaussian_kde_1d(samples, grid), scipy_kde, rtol=0, atol=1e-6 * scipy_kde.max())
    few = samples[:5_000]  # exact below the binning threshold
    np.testing.assert_allclose(gaussian_kde_1d(few, grid), gaussian_kde(few)(grid), rtol=1e-10, atol=1e-14)


def test_binned_kde_keeps_relative_entropy():
    """Binned and exact KDEs give the same relative entropy (to 1e-5 relative) on a bimodal pair."""
    rng = np.random.default_rng(3)
    n = 60_000
    p = np.concatenate([rng.normal(-2, 0.3, n // 2), rng.normal(1.5, 0.8, n // 2)])
    q = np.concatenate([rng.normal(-1.9, 0.35, n // 2), rng.normal(1.4, 0.9, n // 2)])
    binned = relative_entropy(p, q)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metrics, "_EXACT_MAX", 10**9)
        exact = relative_entropy(p, q)
    assert binned == pytest.approx(exact, rel=1e-5)


def test_a_binned_density_is_the_kde_on_any_grid():
    """binned_density: one binning of the samples, evaluated on grids of other ranges (within and beyond the samples),
    is the exact KDE to 1e-6 of its peak; its relative entropy that of the samples to 1e-5 relative."""
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(-2, 0.3, 2_000), rng.normal(1.5, 0.8, 2_000)])
    y = rng.normal(0.0, 1.5, 3_000)
    density = metrics.binned_density(x)
    bandwidth = x.std(ddof=1) * x.size ** (-0.2)
    for lo, hi in ((-3.0, 2.0), (x.min() - 3.0, x.max() + 3.0)):
        grid = np.linspace(lo, hi, 1_001)
        exact = _exact_kde(x, grid, bandwidth)
        np.testing.assert_allclose(density.pdf(grid), exact, rtol=0, atol=1e-6 * exact.max())
    assert relative_entropy(density, metrics.binned_density(y)) == pytest.approx(relative_entropy(x, y), rel=1e-5)


def test_relative_entropy_of_gaussians():
    rng = np.random.default_rng(1)
    n = 20_000
    p, q = rng.normal(0.0, 1.0, n), rng.normal(0.5, 1.0, n)
    assert relative_entropy(p, p) == pytest.approx(0.0, abs=1e-12)
    # KDE smoothing widens both densities by the same bandwidth h = n^(-1/5) (unit variance):
    # KL(N(0, 1 + h^2) || N(0.5, 1 + h^2)) = 0.125 / (1 + h^2)
    h2 = n ** (-0.4)
    # sampling error of the estimate: sd ~ sqrt(2 * 0.125 / n) + its KDE variance, far below 0.01
    assert relative_entropy(p, q) == pytest.approx(0.125 / (1 + h2), abs=0.01)


def test_relative_entropy_of_a_perfect_model_falls_with_its_sample_size():
    """Why compare gives every estimator's model the same number of snapshots: draws of the reference's own density
    score a relative entropy that shrinks with their number (the kernel estimate's bias and noise), at the size of
    the estimators' differences.  Two-Gaussian density, 200,000 reference draws, 20 repeats per size; the gap
    between 25,000 and 50,000 draws is many of its standard errors (measured 0.0011 +- 0.00005 against 0.00041 +-
    0.00002)."""
    rng = np.random.default_rng(0)

    def draw(n):
        return np.where(rng.random(n) < 0.5, rng.normal(-1.5, 0.6, n), rng.normal(1.5, 0.6, n))

    ref = draw(200_000)
    small, large = (np.array([relative_entropy(ref, draw(n)) for _ in range(20)]) for n in (25_000, 50_000))
    gap = small.mean() - large.mean()
    se = np.sqrt(small.var(ddof=1) / 20 + large.var(ddof=1) / 20)
    assert gap > 6 * se and gap > 2e-4, (small.mean(), large.mean(), se)


def test_a_matched_relative_entropy_leaves_out_the_long_runs_narrower_smoothing():
    """A set scored against a run ten times its size from the same density: Scott's bandwidths differ by 10^(1/5), and
    with each set smoothed at its own the figure is that difference's relative entropy (two narrow Gaussians, each
    smoothed: KL(f * N(0, h_long^2) || f * N(0, h_set^2)), computed here by quadrature, 0.04), not the set's sampling
    error; ``matched`` smooths the long run at the set's bandwidth and leaves the sampling error alone (its scale,
    about the effective number of kernel widths over 2n, is 1e-4 at these sizes: bound 20 times that)."""
    rng = np.random.default_rng(5)

    def draw(n):
        return np.where(rng.random(n) < 0.5, rng.normal(-1.5, 0.15, n), rng.normal(1.5, 0.15, n))

    long, sample = draw(400_000), draw(40_000)
    h_long, h_set = metrics.scott_bandwidth(long), metrics.scott_bandwidth(sample)
    assert metrics.scott_bandwidth(long, sample.size) == pytest.approx(long.std(ddof=1) * 40_000 ** -0.2, rel=1e-14)
    x = np.linspace(-4.0, 4.0, 200_001)

    def smoothed(h):
        var = 0.15**2 + h**2
        return sum(0.5 * np.exp(-0.5 * (x - m) ** 2 / var) / np.sqrt(2 * np.pi * var) for m in (-1.5, 1.5))

    p, q = smoothed(h_long), smoothed(h_set)
    bias = float(np.sum(p * np.log(p / q)) * (x[1] - x[0]))
    assert 0.03 < bias < 0.06
    assert relative_entropy(long, sample) == pytest.approx(bias, rel=0.05)
    assert relative_entropy(long, sample, matched=True) < 2e-3
    # matched is the long run's KDE at the set's Scott bandwidth, as a plain relative entropy computes it
    grid = np.linspace(min(long.min(), sample.min()), max(long.max(), sample.max()), 2048)
    dx = grid[1] - grid[0]
    pm = gaussian_kde_1d(long, grid, metrics.scott_bandwidth(long, sample.size))
    qm = gaussian_kde_1d(sample, grid)
    pm, qm = (np.maximum(v / (v.sum() * dx), 1e-10) for v in (pm, qm))
    assert relative_entropy(long, sample, matched=True) == pytest.approx(float(np.sum(pm * np.log(pm / qm)) * dx),
                                                                         rel=1e-12)
    other = draw(40_000)  # equal sizes: the same bandwidth either way, up to the two sets' standard deviations
    assert relative_entropy(other, sample, matched=True) == pytest.approx(relative_entropy(other, sample), rel=1e-3)
    with pytest.raises(ValueError, match="binned reference"):
        relative_entropy(metrics.binned_density(long), sample, matched=True)


def test_score_error_and_coverage_definitions():
    truth = np.array([[1.0, 0.0], [0.0, 2.0]])
    pred = np.array([[1.5, 0.0], [0.0, 2.0]])
    w = np.array([2.0, 1.0])
    assert weighted_score_error(pred, truth, w) == pytest.approx(2 * 0.25 / (2 * 1 + 1 * 4))
    lower, upper = truth - 0.1, truth + 0.1
    upper[1, 1] = 1.0  # one of four pairs outside, on the point of weight 1
    assert band_coverage(truth, lower, upper, w) == pytest.approx((2 * 2 + 1 * 1) / (3 * 2))


def test_minibatch_training_draws_points_by_weight(monkeypatch):
    """Batches drawn in proportion to the weights: points of weight 0 (with wild targets) are never
    drawn (their running sum is flat), the rest are fitted; the same key gives the same network."""
    from kgmm_bayes.rom import interpolant as module

    calls = []
    train = module._train
    monkeypatch.setattr(module, "_train", lambda *a: calls.append(a[8:]) or train(*a))
    x = np.linspace(-2, 2, 3000)[:, None]
    y = np.sin(2 * x)
    w = np.exp(-x[:, 0] ** 2)
    junk = np.arange(len(x)) % 3 == 0  # a third of the points: weight 0, target 100
    y_all, w_all = np.where(junk[:, None], 100.0, y), np.where(junk, 0.0, w)
    fit = lambda: fit_interpolant(jax.random.key(1), x, y_all, w_all, hidden=(32, 32), steps=2000,
                                  learning_rate=3e-3, batch=256)
    interp = fit()
    pred = np.asarray(interp(jnp.asarray(x, jnp.float32)), np.float64)
    assert weighted_score_error(pred[~junk], y[~junk], w[~junk]) < 2e-2
    np.testing.assert_array_equal(np.asarray(fit()(jnp.asarray(x, jnp.float32))), pred)
    assert [c[0] for c in calls] == [256, 256]  # the batched loop ran
    full = np.sum(w_all * np.sum((np.asarray(interp(jnp.asarray(x, jnp.float32)), np.float64) - y_all) ** 2, axis=-1))
    assert interp.final_loss == pytest.approx(full / w_all.sum(), rel=1e-4)  # over every point, not the last batch
    cdf = np.asarray(calls[0][2])
    assert np.all(np.diff(cdf) >= 0) and cdf[-1] == 1.0
    assert np.all(np.diff(np.concatenate([[0.0], cdf]))[junk] == 0)  # weight 0: never drawn


def test_interpolant_snapshots_leave_out_the_heldout_ones():
    from kgmm_bayes.bayes.score import posterior_mean_score, score_draws
    from kgmm_bayes.study.stages import HELDOUT_POINTS, _heldout_blocks, heldout_indices, interpolant_snapshots

    n = 64 * HELDOUT_POINTS // 4 + 7  # held-out blocks of about HELDOUT_POINTS / 2 snapshots each
    z = np.arange(n, dtype=np.float64)[:, None]  # a snapshot's value is its index
    blocks = _heldout_blocks(n)
    assert abs(len(blocks) - n / 8) <= 8 and len(np.unique(blocks)) == len(blocks)
    held = heldout_indices(n)
    assert len(held) == HELDOUT_POINTS and np.isin(held, blocks).all()
    assert held.min() < n / 8 and held.max() > 7 * n / 8  # spread through the data
    picked = interpolant_snapshots(z, 5000)[:, 0].astype(int)
    assert len(picked) == 5000 and len(np.unique(picked)) == 5000
    assert not np.isin(picked, blocks).any()
    assert len(interpolant_snapshots(z, 10 * n)) == n - len(blocks)  # every snapshot outside the blocks
    assert len(interpolant_snapshots(z, 0)) == 0
    for m in (16, 50):  # fewer snapshots than blocks (16: rounding leaves them empty): some held out, none picked
        small = heldout_indices(m)
        assert 0 < len(small) and not np.isin(interpolant_snapshots(z[:m], m)[:, 0], small).any()
    # the posterior-mean score in chunks: the mean of the draws' scores
    rng = np.random.default_rng(0)
    S, K, d = 5, 3, 2
    weights = rng.dirichlet(np.ones(K), size=S)
    means = rng.normal(size=(S, K, d))
    chol = np.tile(np.eye(d), (S, K, 1, 1)) * rng.uniform(0.5, 1.5, size=(S, K, 1, 1))
    x = rng.normal(size=(301, d))
    np.testing.assert_allclose(posterior_mean_score(weights, means, chol, x, chunk=64),
                               score_draws(weights, means, chol, x)[0].mean(axis=0), rtol=1e-12, atol=1e-12)


def test_training_set_gives_cells_and_snapshots_half_the_loss_each():
    from types import SimpleNamespace

    from kgmm_bayes.bayes.score import posterior_mean_score
    from kgmm_bayes.spec import spec_from_dict
    from kgmm_bayes.study.stages import interpolant_snapshots, interpolant_training_set

    rng = np.random.default_rng(4)
    S, K, d = 3, 2, 2
    draws = (rng.dirichlet(np.ones(K), size=S), rng.normal(size=(S, K, d)), np.tile(np.eye(d), (S, K, 1, 1)))
    z = rng.normal(size=(5000, d))
    part = SimpleNamespace(points=rng.normal(size=(40, d)), counts=rng.integers(1, 200, size=40).astype(float))
    summary = SimpleNamespace(mean=posterior_mean_score(*draws, part.points))
    spec = spec_from_dict({"data": {"path": "unused.npy"}, "interpolant": {"snapshots": 700}})
    points, targets, weights = interpolant_training_set(spec, part, summary, draws, z)
    assert points.shape == (740, d) and targets.shape == (740, d)
    np.testing.assert_allclose([weights[:40].sum(), weights[40:].sum()], [1.0, 1.0], rtol=1e-12)
    np.testing.assert_allclose(weights[:40], part.counts / part.counts.sum(), rtol=1e-12)
    np.testing.assert_array_equal(points[40:], interpolant_snapshots(z, 700))
    np.testing.assert_allclose(targets[40:], posterior_mean_score(*draws, points[40:]), rtol=1e-12)
    none = spec_from_dict({"data": {"path": "unused.npy"}})  # the default: the cells alone, as before
    cells = interpolant_training_set(none, part, summary, draws, z)
    assert cells[0] is part.points and cells[2] is part.counts


def test_snapshot_scores_compute_each_row_once(monkeypatch):
    # SnapshotScores[rows]: the posterior-mean score at z[rows], each row computed once however often it is asked
    # for (the correction's fit, then the interpolants' snapshots and the held-out error), in the order asked, by
    # the one program of z's chunk size whatever was asked first (a resumed run's numbers are the same)
    from types import SimpleNamespace

    from kgmm_bayes.bayes.score import posterior_mean_score
    from kgmm_bayes.spec import spec_from_dict
    from kgmm_bayes.study import stages

    rng = np.random.default_rng(6)
    S, K, d = 3, 2, 2
    draws = (rng.dirichlet(np.ones(K), size=S), rng.normal(size=(S, K, d)), np.tile(np.eye(d), (S, K, 1, 1)))
    z = rng.normal(size=(3000, d))
    everything = stages.SnapshotScores(draws, z)[np.arange(len(z))]  # all rows in one call, as the correction asks
    computed = []

    def counted(*args, chunk):
        computed.append((len(args[-1]), chunk))
        return posterior_mean_score(*args, chunk=chunk)

    monkeypatch.setattr(stages, "posterior_mean_score", counted)
    scores = stages.SnapshotScores(draws, z)
    assert scores.chunk == 4096  # 3,000 snapshots: the next power of two
    rows = np.array([2999, 5, 5, 17, 0])
    np.testing.assert_array_equal(scores[rows], everything[rows])  # the same bits as when asked for with the rest
    np.testing.assert_allclose(scores[rows], posterior_mean_score(*draws, z[rows]), rtol=1e-12, atol=1e-15)
    assert computed == [(4096, 4096)] and scores.known.sum() == 4  # 5 asked for twice: computed once
    part = stages.interpolant_snapshot_rows(len(z), 700)
    first = scores[part]
    np.testing.assert_array_equal(first, everything[part])
    assert len(computed) == 2 and scores.known.sum() == 4 + 700 - int(np.isin(part, rows).sum())  # only new rows
    np.testing.assert_array_equal(scores[part], first)
    np.testing.assert_array_equal(scores[rows[::-1]], scores[rows][::-1])
    assert len(computed) == 2  # nothing computed again
    spec = spec_from_dict({"data": {"path": "unused.npy"}, "interpolant": {"snapshots": 700}})
    part_ns = SimpleNamespace(points=z[:10], counts=np.ones(10))
    summary = SimpleNamespace(mean=np.zeros((10, d)))
    _, targets, _ = stages.interpolant_training_set(spec, part_ns, summary, draws, z, scores=scores)
    np.testing.assert_array_equal(targets[10:], first)
    assert len(computed) == 2  # the training set read them


def test_corrected_targets_and_the_correction_stage():
    from types import SimpleNamespace

    from kgmm_bayes.bayes.score import posterior_mean_score
    from kgmm_bayes.spec import spec_from_dict
    from kgmm_bayes.study.stages import correction_stage, interpolant_training_set

    rng = np.random.default_rng(5)
    draws = (np.ones((1, 1)), np.zeros((1, 1, 2)), np.tile(1.5 * np.eye(2), (1, 1, 1, 1)))  # one N(0, 2.25 I)
    z = rng.normal(size=(16_000, 2))  # N(0, I): the draws' score -x / 2.25 is off by a factor 2.25
    stored = {}
    out = SimpleNamespace(load_stage=lambda stage, key, build: build(stored[key]) if key in stored else None,
                          save_stage=lambda stage, key, arrays: stored.__setitem__(key, arrays))
    spec = spec_from_dict({"data": {"path": "unused.npy"}, "interpolant": {"snapshots": 300, "correction": "auto"}})
    correction, _, cached = correction_stage(spec, out, "up", draws, z, seed=0)
    assert correction.applied and not cached and len(stored) == 1
    again, _, cached = correction_stage(spec, out, "up", draws, z, seed=0)
    assert cached and np.array_equal(again.theta, correction.theta)
    held = rng.normal(size=(2000, 2))
    before = np.mean(np.sum((posterior_mean_score(*draws, held) + held) ** 2, axis=1))
    after = np.mean(np.sum((posterior_mean_score(*draws, held) + correction(held) + held) ** 2, axis=1))
    assert after < 0.1 * before
    part = SimpleNamespace(points=rng.normal(size=(30, 2)), counts=np.ones(30))
    summary = SimpleNamespace(mean=posterior_mean_score(*draws, part.points) + correction(part.points))
    points, targets, _ = interpolant_training_set(spec, part, summary, draws, z, correction)
    assert len(points) == 30 + 14_000  # the snapshots outside the held-out blocks (20,000 asked for: all of them)
    np.testing.assert_allclose(targets[30:], posterior_mean_score(*draws, points[30:]) + correction(points[30:]),
                               rtol=1e-12)
    off = spec_from_dict({"data": {"path": "unused.npy"}, "interpolant": {"correction": "off"}})  # nothing cached
    assert correction_stage(off, out, "up", draws, z, seed=0) == (None, 0.0, False) and len(stored) == 1
