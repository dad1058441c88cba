"""The 2-D score-field figure: the grid and its score summaries (analytic Gaussian, band widths
growing away from the data, thinning), the PNG it writes and its dimension check."""
import matplotlib.image
import numpy as np
import pytest

from kgmm_bayes.data import ZScore  # importing the package enables float64, as for the other test modules
from kgmm_bayes.study.figures import plot_score_field, score_field

ZS = ZScore(mean=np.array([5.0, -3.0]), std=np.array([2.0, 0.5]))


def gaussian_draws(n_draws, mean_z, chol_z):
    """``n_draws`` identical draws of a one-component mixture (z-scored coordinates)."""
    return (np.ones((n_draws, 1)), np.broadcast_to(mean_z, (n_draws, 1, 2)).copy(),
            np.broadcast_to(chol_z, (n_draws, 1, 2, 2)).copy())


def spread_draws(rng, n_draws):
    """One-component draws near N(0, I) (z-scored) whose means and scales vary across draws."""
    means = 0.05 * rng.normal(size=(n_draws, 1, 2))
    scales = np.exp(0.1 * rng.normal(size=(n_draws, 1, 1, 1)))
    return np.ones((n_draws, 1)), means, scales * np.eye(2)


def test_identical_gaussian_draws_give_the_analytic_score_and_zero_band_width():
    mean_z = np.array([0.3, -0.2])
    chol_z = np.array([[1.2, 0.0], [0.4, 0.7]])
    draws = gaussian_draws(30, mean_z, chol_z)
    # the same Gaussian in physical units: x = mean + std * z
    mu = ZS.mean + ZS.std * mean_z
    cov = np.diag(ZS.std) @ chol_z @ chol_z.T @ np.diag(ZS.std)
    data = np.random.default_rng(0).multivariate_normal(mu, cov, size=3000)

    field = score_field(draws, ZS, data, band=0.9, grid_points=21)

    assert field.x.shape == (21,) and field.y.shape == (21,)
    assert field.mean.shape == (21, 21, 2) and field.width.shape == (21, 21)
    assert field.mean.dtype == np.float64
    # the grid covers the central 99% of each coordinate of the data, with a margin
    lo, hi = np.quantile(data, [0.005, 0.995], axis=0)
    assert field.x[0] < lo[0] and field.x[-1] > hi[0] and field.y[0] < lo[1] and field.y[-1] > hi[1]
    assert field.x[-1] - field.x[0] < 1.2 * (hi[0] - lo[0])
    # entry [j, i] is at (x[i], y[j]); the analytic score -cov^{-1} (x - mu), physical units
    gx, gy = np.meshgrid(field.x, field.y)
    resid = np.stack([gx, gy], axis=-1) - mu
    expected = -np.einsum("ij,abj->abi", np.linalg.inv(cov), resid)
    np.testing.assert_allclose(field.mean, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())
    np.testing.assert_array_equal(field.width, 0.0)
    np.testing.assert_array_equal(field.lower, field.upper)


def test_a_local_bias_widens_zero_width_bands_to_z_times_the_bias_in_physical_units():
    """Identical draws (no posterior spread) and a bias field whose blocks all agree, ``c(x) = g(x) (1, 1)``: its
    cross-fit is ``g(x)^2``, so the band is ``2 z g(x)`` wide per coordinate, divided by the z-score's sd."""
    from scipy.stats import norm

    from kgmm_bayes.bayes.score_matching import BiasField

    draws = gaussian_draws(30, np.zeros(2), np.eye(2))
    data = ZS.inverse(np.random.default_rng(4).normal(size=(2000, 2)))
    bias = BiasField(np.zeros((1, 2)), 1.0, np.ones((16, 1, 2)))
    field = score_field(draws, ZS, data, band=0.9, grid_points=11, score_bias=bias)
    gx, gy = np.meshgrid(field.x, field.y)
    z = ZS.forward(np.stack([gx.ravel(), gy.ravel()], axis=-1))
    g = np.exp(-np.sum(z ** 2, axis=-1) / 2).reshape(gx.shape)
    expected = 2 * norm.ppf(0.95) * g[..., None] / ZS.std
    np.testing.assert_allclose(field.upper - field.lower, expected, rtol=1e-10)
    np.testing.assert_allclose(field.mean - field.lower, field.upper - field.mean, rtol=1e-10)


def test_band_width_grows_away_from_the_data():
    rng = np.random.default_rng(1)
    data = ZS.inverse(rng.normal(size=(4000, 2)))  # the data sit around the draws' common centre
    draws = spread_draws(rng, 300)
    field = score_field(draws, ZS, data, band=0.9, grid_points=31)

    assert field.draws == 200  # thinned evenly to max_draws
    gx, gy = np.meshgrid(field.x, field.y)
    radius = np.linalg.norm(ZS.forward(np.stack([gx, gy], axis=-1)), axis=-1)  # in data standard deviations
    inner, outer = field.width[radius < 1.0], field.width[radius > 2.5]
    assert inner.size and outer.size
    assert np.median(outer) > 2.0 * np.median(inner)
    assert np.corrcoef(radius.ravel(), field.width.ravel())[0, 1] > 0.8
    # along each axis through the centre (both directions) the width grows once clear of the data
    j0, i0 = np.argmin(np.abs(field.y - ZS.mean[1])), np.argmin(np.abs(field.x - ZS.mean[0]))
    for ray in (field.width[j0, i0 + 3:], field.width[j0, i0 - 3::-1],
                field.width[j0 + 3:, i0], field.width[j0 - 3::-1, i0]):
        assert np.all(np.diff(ray) > 0)
    # a band of more credible mass is at least as wide everywhere, and wider on the whole
    wider = score_field(draws, ZS, data, band=0.99, grid_points=31)
    assert np.all(wider.width >= field.width - 1e-12) and wider.width.mean() > field.width.mean()


def test_draws_are_thinned_to_max_draws():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(500, 2))
    zs = ZScore.fit(data)
    assert score_field(spread_draws(rng, 57), zs, data, grid_points=8, max_draws=10).draws == 10
    assert score_field(spread_draws(rng, 7), zs, data, grid_points=8, max_draws=10).draws == 7


def test_plot_score_field_writes_a_two_panel_png(tmp_path):
    rng = np.random.default_rng(3)
    data = ZS.inverse(rng.normal(size=(2000, 2)))
    path = tmp_path / "score_field.png"
    plot_score_field(str(path), spread_draws(rng, 100), ZS, data, band=0.9, grid_points=24)
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(raw) > 20_000
    image = matplotlib.image.imread(str(path))
    height, width = image.shape[:2]
    assert width > 1.5 * height  # two panels side by side
    assert image[..., :3].std() > 0.05  # not a blank canvas


@pytest.mark.parametrize("d", [1, 3])
def test_score_field_needs_two_dimensions(tmp_path, d):
    rng = np.random.default_rng(d)
    data = rng.normal(size=(300, d))
    draws = (np.ones((5, 1)), np.zeros((5, 1, d)), np.broadcast_to(np.eye(d), (5, 1, d, d)).copy())
    zs = ZScore.fit(data)
    with pytest.raises(ValueError, match=f"2-dimensional.*dimension {d}"):
        plot_score_field(str(tmp_path / "f.png"), draws, zs, data)
    with pytest.raises(ValueError, match="2-dimensional"):
        score_field(draws, zs, data)
    assert not (tmp_path / "f.png").exists()


def test_band_outside_the_unit_interval_is_refused():
    data = np.random.default_rng(4).normal(size=(300, 2))
    draws = gaussian_draws(4, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="band"):
        score_field(draws, ZScore.fit(data), data, band=1.5)
