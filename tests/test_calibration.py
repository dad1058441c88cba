"""Calibration of the credible bands: the true marginals and mixture marginals against closed
forms, bad input refused before any work, and ``kgmm-bayes calibrate`` end to end (outputs,
resume from the stage cache with identical numbers)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from kgmm_bayes.study.calibrate import (COLUMNS, check_calibration_specs, mixture_marginals, seed_standard_error,
                                        true_marginals)
from kgmm_bayes.cli import main
from kgmm_bayes.data import InputError, ZScore
from kgmm_bayes.spec import load_spec, spec_from_dict
from kgmm_bayes.data.systems import get_system
from test_compare import TINY  # its tiny reduced-1D study (seed 2); calibrate reads the fit's sections only


def normal_pdf(x, mean, var):
    return np.exp(-0.5 * (x - mean) ** 2 / var) / np.sqrt(2 * np.pi * var)


def test_true_marginal_1d_gaussian():
    grid = np.linspace(-11.0, 13.0, 2001)[None]  # N(1, 2^2) within +-6 sd
    pdf = true_marginals(lambda x: -(x - 1.0) / 4.0, grid)
    np.testing.assert_allclose(pdf[0], normal_pdf(grid[0], 1.0, 4.0), atol=2e-6)


def test_true_marginals_2d_correlated_gaussian():
    mean = np.array([0.5, -1.0])
    cov = np.array([[1.0, 0.6], [0.6, 2.0]])
    prec = np.linalg.inv(cov)
    sd = np.sqrt(np.diag(cov))
    grid = np.linspace(mean - 7 * sd, mean + 7 * sd, 801).T
    pdf = true_marginals(lambda x: -(x - mean) @ prec, grid)  # prec symmetric
    for i in range(2):
        exact = normal_pdf(grid[i], mean[i], cov[i, i])
        np.testing.assert_allclose(pdf[i], exact, atol=2e-4 * exact.max())


def test_true_marginals_of_the_four_well_system_match_its_potential():
    """Four-well: p ~ exp(-V), V separable, so marginal i ~ exp(-(x^2 - a_i^2)^2 - b_i x) exactly."""
    a, b = np.array([1.0, 1.2]), np.array([0.6, 0.3])
    grid = np.linspace(-2.6, 2.6, 1201)[None].repeat(2, axis=0)
    system = get_system("four_well_2d")
    pdf = true_marginals(lambda x: np.asarray(system.score(x), np.float64), grid)
    for i in range(2):
        exact = np.exp(-((grid[i] ** 2 - a[i] ** 2) ** 2) - b[i] * grid[i])
        exact /= np.trapezoid(exact, grid[i])
        np.testing.assert_allclose(pdf[i], exact, atol=1e-4 * exact.max())


def test_mixture_marginals_in_physical_units():
    zscore = ZScore(mean=np.array([2.0, -1.0]), std=np.array([0.5, 3.0]))
    weights = np.array([[0.3, 0.7]])
    means = np.array([[[0.0, 1.0], [-1.0, 0.5]]])
    chol = np.array([[[[1.0, 0.0], [0.4, 0.8]], [[0.6, 0.0], [-0.3, 1.1]]]])
    grid = np.linspace([-4.0, -20.0], [8.0, 20.0], 1501).T
    pdf = mixture_marginals(weights, means, chol, zscore, grid)
    cov = chol[0] @ np.swapaxes(chol[0], -1, -2)
    for i in range(2):
        exact = sum(weights[0, k] * normal_pdf(grid[i], zscore.mean[i] + zscore.std[i] * means[0, k, i],
                                               zscore.std[i] ** 2 * cov[k, i, i]) for k in range(2))
        np.testing.assert_allclose(pdf[0, i], exact, rtol=1e-12, atol=1e-15)
        assert abs(np.trapezoid(pdf[0, i], grid[i]) - 1.0) < 1e-6


SPEC = {"study": {"name": "cal"}, "data": {"system": "reduced_1d"}, "mixture": {"components": 3}}


@pytest.mark.parametrize("change, sizes, seeds, message", [
    ({"data": {"system": "lorenz63"}}, [1000], 1, "has no analytic score"),
    ({"data": {"path": "x.npy"}}, [1000], 1, "not a data file"),
    ({"mixture": {"components": 3, "select_components": [2, 3]}}, [1000], 1, "select_components"),
    ({}, [11], 1, "too small for 3 components"),
    ({}, [1000], 0, "--seeds must be >= 1"),
    ({}, [], 1, "--sizes needs at least one"),
])
def test_bad_calibration_input_is_refused(change, sizes, seeds, message):
    spec = spec_from_dict({**SPEC, **change})
    with pytest.raises(InputError, match=message):
        check_calibration_specs([spec], sizes, seeds)


def test_two_specs_with_one_name_are_refused():
    spec = spec_from_dict(SPEC)
    with pytest.raises(InputError, match="share the study name 'cal'"):
        check_calibration_specs([spec, spec], [1000], 1)




def test_seed_standard_error_is_the_spread_over_seeds_over_their_root():
    assert seed_standard_error([0.8, 0.9, 1.0]) == pytest.approx(0.1 / np.sqrt(3), rel=1e-12)
    assert seed_standard_error([0.7, 0.7]) == 0.0
    assert seed_standard_error([0.9]) is None  # one seed: no spread to measure


def test_calibrate_end_to_end_and_resume(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(TINY)
    args = ["calibrate", str(tmp_path / "tiny.toml"), "--sizes", "200", "400", "--seeds", "1",
            "--out", str(tmp_path / "cal"), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| reduced_1d | 200 | 1 |" in printed and "| reduced_1d | 400 | 1 |" in printed
    out = tmp_path / "cal"
    with open(out / "calibration.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["n"] for r in rows] == ["200", "400"] and all(r["seed"] == "2" for r in rows)
    assert list(rows[0]) == list(COLUMNS)
    for r in rows:
        for col in ("score_coverage", "score_coverage_posterior_band", "pdf_coverage"):
            assert 0.0 <= float(r[col]) <= 1.0
        # the band widened to the local bias holds the draws' quantile band: it covers at least as often
        assert float(r["score_coverage"]) >= float(r["score_coverage_posterior_band"])
        if int(r["correction_bumps"]) == 0:  # no correction applied: the widened band itself
            assert r["score_coverage_corrected"] == r["score_coverage"]
            assert r["median_corrected_band_width"] == r["median_score_band_width"]
        assert 0.0 <= float(r["score_coverage_corrected"]) <= 1.0
        assert float(r["score_band_width"]) > 0 and float(r["pdf_band_width"]) > 0
        assert int(r["cells"]) == min(100, int(r["n"]) // 2)
    assert (out / "figures" / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = json.loads((out / "calibration.json").read_text())
    assert all(e["score_coverage"]["se"] is None for e in first["summary"])  # one seed

    assert main(args) == 0  # every fit read back from the stage cache: identical numbers
    assert json.loads((out / "calibration.json").read_text())["rows"] == first["rows"]

    capsys.readouterr()
    other = [a if a != "1" else "2" for a in args]  # --seeds 2
    assert main(other) == 2  # another calibration: the folder is refused, not overwritten
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a different study" in err[0]
    assert json.loads((out / "calibration.json").read_text()) == first


def test_the_shipped_specs_are_calibratable():
    models = Path(__file__).resolve().parent.parent / "models"
    specs = [load_spec(models / f"{name}.toml") for name in ("reduced_1d", "four_well_2d")]
    check_calibration_specs(specs, [1000, 10000, 100000], 3)


def test_the_corrected_band_is_the_band_of_the_score_a_study_would_correct():
    """A posterior sure of the wrong score (a N(0, 4) fit to N(0, 1) data, band +- 0.01) covers the truth almost
    nowhere; corrected by score matching on the data, as a study corrects it, its band covers most of it."""
    from kgmm_bayes.bayes.sampler import PosteriorSamples
    from kgmm_bayes.bayes.score import ScoreSummary
    from kgmm_bayes.study.calibrate import corrected_band

    z = np.random.default_rng(5).standard_normal((8000, 1))
    draws = (np.ones((4, 1)), np.zeros((4, 1, 1)), np.full((4, 1, 1, 1), 2.0))  # score -z / 4; the data's: -z
    post = PosteriorSamples(*[d[None] for d in draws], sites={}, sample_stats={}, wall_time=0.0)
    at = np.linspace(-2.5, 2.5, 201)[:, None]
    std = 2.0  # the z-score's sd: the band in physical units
    mean = -at / 4 / std
    summary = ScoreSummary(mean=mean, std=np.full_like(mean, 0.005), lower=mean - 0.01, upper=mean + 0.01,
                           predictive=mean, band=0.9)
    truth = -at / std

    def coverage(band):
        return np.mean((truth >= band.lower) & (truth <= band.upper))

    assert coverage(summary) < 0.05
    widened = summary._replace(lower=summary.lower - 0.01, upper=summary.upper + 0.01)  # a local bias's widening
    band, bumps = corrected_band(spec_from_dict({"data": {"system": "reduced_1d"}}), post, draws, z, summary,
                                 widened, at, std, seed=0)
    assert bumps > 0 and coverage(band) > 0.6
    off = spec_from_dict({"data": {"system": "reduced_1d"}, "interpolant": {"correction": "off"}})
    assert corrected_band(off, post, draws, z, summary, widened, at, std, seed=0) == (widened, 0)
