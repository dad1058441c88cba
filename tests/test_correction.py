"""The score-matching correction of the posterior-mean score (kgmm_bayes.bayes.correction)."""
import jax.numpy as jnp
import numpy as np
import pytest

from kgmm_bayes.bayes.correction import (_block_moments, _cross_validated, _solve, correction_arrays,
                                         correction_from_arrays, fit_correction)
from kgmm_bayes.bayes.score_matching import hyvarinen_terms
from kgmm_bayes.spec import SpecError, spec_from_dict

LADDER = (25, 50)  # small bases: the tests' data are 2-D and a few tens of thousands of snapshots


def _gaussian(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 2))


def test_block_moments_give_hyvarinen_change_exactly():
    # H(s + g theta) - H(s) over a block's snapshots is 2 sum(theta b_a) + sum(theta A_a theta): an identity of the
    # empirical means (Stein's identity is only used in expectation), checked against autodiff's divergence
    rng = np.random.default_rng(0)
    z = rng.standard_normal((800, 2))
    centres, width = rng.standard_normal((7, 2)), 0.8
    theta = rng.standard_normal((7, 2))

    def s(x):
        return -x + 0.3 * jnp.sin(x[..., ::-1])

    def corrected(x):
        g = jnp.exp(-jnp.sum((x[None] - centres) ** 2, axis=-1) / (2 * width ** 2))
        return s(x) + g @ theta

    b, gram = _block_moments(z, np.asarray(s(jnp.asarray(z))), centres, width, blocks=4)
    for a in range(4):
        block = jnp.asarray(z[a * 200:(a + 1) * 200])
        change = float(jnp.mean(hyvarinen_terms(corrected, block) - hyvarinen_terms(s, block)))
        formula = 2.0 * np.sum(theta * b[a]) + np.sum(theta * (gram[a] @ theta))
        assert formula == pytest.approx(change, rel=1e-10, abs=1e-12)


def test_cross_validation_leaves_out_the_block_and_its_neighbours():
    rng = np.random.default_rng(1)
    blocks, n_basis, d = 6, 5, 2
    b = rng.standard_normal((blocks, n_basis, d))
    m = rng.standard_normal((blocks, n_basis, n_basis))
    gram = np.einsum("aij,akj->aik", m, m) + np.eye(n_basis)
    changes = _cross_validated(b, gram, ridge=1e-3)
    for a, kept in ((0, [2, 3, 4, 5]), (3, [0, 1, 5])):
        theta = _solve(gram[kept].mean(axis=0), b[kept].mean(axis=0), 1e-3)
        assert changes[a] == pytest.approx(2 * np.sum(theta * b[a]) + np.sum(theta * (gram[a] @ theta)), rel=1e-12)


def test_correction_repairs_a_wrong_score_and_leaves_the_true_one():
    z = _gaussian(24_000, 2)
    held = _gaussian(4000, 3)

    def wrong(x):  # a Gaussian score with the wrong scale and a shifted centre
        return -(x - 0.3) / 1.5

    c = fit_correction(z, wrong, ladder=LADDER)
    assert c.applied and c.decrease > 2.0 * c.se
    before = np.mean(np.sum((wrong(held) + held) ** 2, axis=1))
    after = np.mean(np.sum((wrong(held) + c(held) + held) ** 2, axis=1))
    assert after < 0.1 * before  # Fisher divergence from the truth, at held-out snapshots of the density
    # the cross-validated decrease estimates the Fisher divergence removed (4 se: its noise, plus the bias of
    # fits on 13 of 16 blocks)
    assert c.decrease == pytest.approx(before - after, abs=4 * c.se + 0.05 * before)

    exact = fit_correction(z, lambda x: -x, ladder=LADDER)
    assert not exact.applied and not np.any(exact.theta)
    assert np.all(exact(held) == 0.0)


def test_correction_round_trips_and_needs_data():
    c = fit_correction(_gaussian(8000, 4), lambda x: -x / 2, ladder=LADDER)
    back = correction_from_arrays(correction_arrays(c))
    x = _gaussian(50, 5)
    np.testing.assert_array_equal(back(x), c(x))
    assert back.to_json() == c.to_json()
    assert fit_correction(_gaussian(300, 6), lambda x: -x, ladder=LADDER) is None  # a block holds < 25 snapshots


def test_bad_correction_setting_is_one_line():
    with pytest.raises(SpecError, match=r"\[interpolant\] correction must be 'auto' or 'off', got 'yes'"):
        spec_from_dict({"data": {"system": "reduced_1d"}, "interpolant": {"correction": "yes"}})


def test_report_says_whether_the_targets_were_corrected():
    from kgmm_bayes.study.report import _correction_words

    c = fit_correction(_gaussian(8000, 4), lambda x: -x / 2, ladder=LADDER).to_json()
    words = _correction_words(c)
    assert words.startswith("; targets: the posterior-mean score corrected by score matching in ")
    assert f"{c['bumps']} Gaussian bumps" in words
    none = _correction_words({**c, "applied": False})
    assert "no score-matching correction the data support" in none
    assert _correction_words(None) == ""


def test_corrected_drift_adds_the_field_exactly():
    import jax.numpy as jnp

    from kgmm_bayes.bayes.correction import corrected_drift

    c = fit_correction(_gaussian(8000, 4), lambda x: -x / 2, ladder=LADDER)
    x = _gaussian(64, 7)

    def base(params, x):
        return -params * x

    fn, params = corrected_drift(base, jnp.asarray(0.5, jnp.float64), c)
    np.testing.assert_allclose(np.asarray(fn(params, jnp.asarray(x))), -0.5 * x + c(x), rtol=1e-12, atol=1e-12)
    assert corrected_drift(base, jnp.asarray(0.5), c)[0] is fn  # one function object: jitted consumers compile once
    off = c._replace(applied=False)
    assert corrected_drift(base, 0.5, off) == (base, 0.5) and corrected_drift(base, 0.5, None) == (base, 0.5)


def test_a_study_folder_keeps_its_correction(tmp_path):
    from kgmm_bayes.files import npz_bytes
    from kgmm_bayes.study.load import CORRECTION_FILE, _read_correction

    c = fit_correction(_gaussian(8000, 4), lambda x: -x / 2, ladder=LADDER)
    metrics = {"interpolant": {"correction": c.to_json()}}
    with pytest.raises(Exception, match="score_correction.npz.*missing"):
        _read_correction(str(tmp_path), 2, metrics)
    (tmp_path / CORRECTION_FILE).write_bytes(npz_bytes(correction_arrays(c)))
    back = _read_correction(str(tmp_path), 2, metrics)
    np.testing.assert_array_equal(back.theta, c.theta)
    with pytest.raises(Exception, match="score_correction.npz.*for 3 coordinates"):
        _read_correction(str(tmp_path), 3, metrics)
