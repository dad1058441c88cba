"""em.fit_mixtures against scikit-learn's GaussianMixture, whose EM it repeats step for step (float64)."""
import warnings

import numpy as np
import pytest

import kgmm_bayes  # noqa: F401  (float64, host devices)
from kgmm_bayes.bayes.em import fit_mixtures


def _blocks(seed: int, b: int, n: int, d: int) -> np.ndarray:
    """``b`` blocks of ``n`` snapshots of a three-Gaussian mixture in ``d`` dimensions, one correlated."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(3, d))
    which = rng.integers(0, 3, size=(b, n))
    mix = np.linalg.cholesky(np.eye(d) + 0.6 * (np.ones((d, d)) - np.eye(d)))
    return centres[which] + 0.5 * rng.normal(size=(b, n, d)) @ mix.T


@pytest.mark.parametrize("d, k, max_iter", [(2, 4, 300), (3, 7, 300), (3, 7, 3)])
def test_fit_mixtures_is_scikit_learns_gaussian_mixture(d, k, max_iter):
    """Each block's fit: scikit-learn's weights, means and covariances to rounding (float64: 1e-9 after a dozen EM
    steps that each lose a few digits), the same number of iterations and convergence flag (``max_iter = 3``: stopped
    by the limit), the same BIC (relative 1e-10: the log-likelihood at parameters 1e-9 apart)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    blocks = _blocks(d, 3, 1500, d)
    fits = fit_mixtures(blocks, k, seed=5, reg_covar=1e-4, max_iter=max_iter)
    assert fits.weights.shape == (3, k) and fits.means.shape == (3, k, d) and fits.covariances.shape == (3, k, d, d)
    for j, block in enumerate(blocks):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, max_iter=max_iter, random_state=5,
                                 init_params="k-means++").fit(block)
        assert int(fits.n_iter[j]) == gm.n_iter_ and bool(fits.converged[j]) == gm.converged_
        np.testing.assert_allclose(fits.weights[j], gm.weights_, rtol=0, atol=1e-9)
        np.testing.assert_allclose(fits.means[j], gm.means_, rtol=0, atol=1e-9)
        np.testing.assert_allclose(fits.covariances[j], gm.covariances_, rtol=0, atol=1e-9)
        assert fits.bic[j] == pytest.approx(gm.bic(block), rel=1e-10)
    assert not fits.converged.any() if max_iter == 3 else fits.converged.all()


def test_fit_mixtures_rejects_bad_shapes_before_fitting():
    blocks = _blocks(0, 2, 50, 2)
    with pytest.raises(ValueError, match=r"blocks must be \(B, N, d\)"):
        fit_mixtures(blocks[0], 2, seed=0)
    with pytest.raises(ValueError, match="between 1 and the block size 50"):
        fit_mixtures(blocks, 51, seed=0)
