"""``kgmm-bayes compare`` end to end on a tiny reduced-1D study, through the console script:
the four estimators on the same data, finite metrics, the figure, the Bayesian sub-study; and
bad input ending with one error line before anything runs."""
from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
from test_study import run_cli  # the console script in a subprocess

TINY = """
[study]
name = "tiny_1d"
seed = 2

[data]
system = "reduced_1d"
members = 10
steps = 20000
thin = 100

[partition]
cells = 100

[mixture]
components = 3

[sampler]
chains = 2
warmup = 100
draws = 100
map_starts = 1
map_steps = 100

[score]
max_draws = 100

[interpolant]
hidden = [16, 16]
steps = 200

[langevin]
particles = 100
steps = 1000
burn_in = 100
thin = 100

[baselines]
min_leaf_probability = 0.05
max_passes = 10
dsm_epochs = 4
dsm_batch = 256
dsm_checkpoints = 2
sklearn_max_iter = 30
"""


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    (folder / "tiny.toml").write_text(TINY)
    proc = run_cli("compare", "tiny.toml", "--out", "cmp", "--quiet", "--model-runs", "3", cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "cmp", proc


def test_comparison_table_has_every_estimator_with_finite_metrics(tiny_compare):
    out, proc = tiny_compare
    with open(out / "comparison.csv", newline="") as fh:
        rows = {row["estimator"]: row for row in csv.DictReader(fh)}
    assert list(rows) == ["bayesian", "kgmm", "dsm", "sklearn"]
    for name, row in rows.items():
        assert float(row["wall_s"]) > 0, name
        assert np.isfinite(float(row["relative_entropy_mean"])), name
        assert float(row["relative_entropy_x0"]) == float(row["relative_entropy_mean"])  # D = 1
        assert 0 <= float(row["score_error"]) < 1, name  # the reduced 1D model has an analytic score
        assert (row["band_coverage"] != "") == (name == "bayesian")
    # per-stage times add up to the wall time
    for name, row in rows.items():
        stages = sum(float(v) for k, v in row.items() if k.startswith("time_") and k != "time_to_bayesian_s" and v)
        assert stages == pytest.approx(float(row["wall_s"]), rel=1e-9), name
    assert float(rows["kgmm"]["time_clustering_s"]) > 0 and float(rows["kgmm"]["time_training_s"]) > 0
    assert float(rows["bayesian"]["time_posterior_s"]) > 0
    # the Bayesian row is the study in <out>/bayesian
    metrics = json.loads((out / "bayesian" / "metrics.json").read_text())
    assert float(rows["bayesian"]["relative_entropy_mean"]) == pytest.approx(metrics["relative_entropy"]["mean"])
    assert float(rows["bayesian"]["band_coverage"]) == pytest.approx(metrics["score"]["band_coverage"])
    # its cost is the study's own clock, stage by stage (K was given: no model selection to count)
    for stage in ("partition", "posterior", "score", "correction", "interpolant"):
        assert float(rows["bayesian"][f"time_{stage}_s"]) == metrics["timings"][stage], stage
    assert not rows["bayesian"].get("time_model_selection_s")
    for name in rows:
        assert name in proc.stdout
    # each estimator's JAX compiling is part of its wall time, and comparison.md states it beside the wall
    payload = json.loads((out / "comparison.json").read_text())
    table = (out / "comparison.md").read_text()
    for row in payload["estimators"]:
        info = row["info"]
        assert 0 <= info["jax_compiling_s"] and info["jax_tracing_s"] + info["jax_compiling_s"] <= row["wall_s"] + 0.01
        how = "compiling or loading" if info["jax_cache_hits"] else "compiling"  # programs from the cache
        assert f"| {row['estimator']} | {row['wall_s']:.1f} ({info['jax_compiling_s']:.1f} {how}) |" in table
        assert f"{row['estimator']:>9}: wall {row['wall_s']:7.1f} s ({info['jax_compiling_s']:.1f} s {how})" \
            in proc.stdout
    bayes = payload["estimators"][0]["info"]
    assert bayes["jax_compiling_s"] > 0
    assert bayes["jax_compiling_s"] == pytest.approx(sum(metrics["jax_work"][s]["compiling"] for s in
                                                         ("partition", "posterior", "score", "correction",
                                                          "interpolant")), rel=1e-12)


def test_comparison_outputs_exist(tiny_compare):
    out, _ = tiny_compare
    assert (out / "figures" / "comparison.png").stat().st_size > 10_000
    table = (out / "comparison.md").read_text()
    assert table.count("\n| ") >= 5  # header and four estimators
    assert "DSM" in table and ("reaches it" in table or "does not reach it" in table)
    assert "moving average of the parameters (decay 0.999 per step)" in table  # [baselines] dsm_ema's default
    payload = json.loads((out / "comparison.json").read_text())
    assert next(r for r in payload["estimators"] if r["estimator"] == "dsm")["info"]["ema"] == 0.999
    reach = payload["dsm_reach"]
    assert [c["epochs"] for c in reach["checkpoints"]] == [2, 4]
    assert reach["particles"] == 100 and 0 <= reach["bayesian_particles_lost"] <= 100
    assert all(0 <= c["particles_lost"] <= 100 for c in reach["checkpoints"])
    assert payload["train_snapshots"] == 10 * 200  # the Bayesian study's training set
    assert not (out.parent / "cmp.partial").exists()


def test_every_estimator_gets_its_own_mobility_and_responses_in_the_data_time(tiny_compare):
    # the reduced 1D system has an interval (dt x thin = 1): each estimator's score gets a mobility, a model
    # in the data's time and fluctuation-dissipation responses, the latter also scored against the analytic
    # score's on the same trajectories
    out, _ = tiny_compare
    payload = json.loads((out / "comparison.json").read_text())
    bayes_dir = out / "bayesian"
    bayes_metrics = json.loads((bayes_dir / "metrics.json").read_text())["dynamics"]
    for row in payload["estimators"]:
        dyn = row["info"]["dynamics"]
        phi = np.asarray(dyn["mobility"])
        assert phi.shape == (1, 1) and phi[0, 0] > 0, row["estimator"]
        assert dyn["mobility_time_scale"] > 0 and np.isfinite(dyn["correlation_relative_error"])
        assert 0 <= dyn["response_inside_bayesian_band"] <= 1
        # every score here is a fair estimate of the same system: responses within a factor of the truth's size
        assert dyn["response_relative_error_vs_true_score"] < 1.0, row["estimator"]
    # every model makes the Bayesian model's number of snapshots (the relative entropy's sample size), whatever its
    # own step: the study's run has it from [langevin] steps and its thinning
    run = json.loads((bayes_dir / "metrics.json").read_text())["langevin"]
    counts = {row["estimator"]: row["info"]["model_snapshots"] for row in payload["estimators"]}
    assert set(counts.values()) == {run["steps"] // run["thin"]}, counts
    bayes = payload["estimators"][0]["info"]["dynamics"]
    assert bayes["response_relative_difference_from_bayesian"] == 0.0
    assert bayes["mobility"] == bayes_metrics["mobility"]
    assert "## In the data's time" in (out / "comparison.md").read_text()


def test_model_runs_give_each_estimator_a_mean_and_its_standard_error(tiny_compare):
    # --model-runs 3 ([baselines] model_runs): the study's run and two more from further starts and noise
    out, proc = tiny_compare
    payload = json.loads((out / "comparison.json").read_text())
    with open(out / "comparison.csv", newline="") as fh:
        rows = {row["estimator"]: row for row in csv.DictReader(fh)}
    firsts = set()
    for row in payload["estimators"]:
        runs = row["info"]["model_runs"]
        per_run = np.array(runs["relative_entropy_mean_per_run"], np.float64)
        assert runs["runs"] == 3 and per_run.shape == (3,) and np.all(np.isfinite(per_run)), row["estimator"]
        assert per_run[0] == row["relative_entropy_mean"]  # the first run is the table's
        assert len(set(per_run)) == 3  # other starts and noise: other numbers
        lost = runs["particles_lost_per_run"]  # every run's, the first the table's column
        assert len(lost) == 3 and lost[0] == row["escaped"] and all(isinstance(v, int) and v >= 0 for v in lost)
        assert runs["relative_entropy_mean_over_runs"] == pytest.approx(per_run.mean(), rel=1e-12)
        assert runs["standard_error"] == pytest.approx(per_run.std(ddof=1) / np.sqrt(3), rel=1e-12)
        csv_row = rows[row["estimator"]]
        assert float(csv_row["relative_entropy_mean_over_runs"]) == runs["relative_entropy_mean_over_runs"]
        assert int(csv_row["model_runs"]) == 3
        firsts.add(tuple(per_run[1:]))
        if row["estimator"] != "bayesian":  # paired with the Bayesian model's runs from the same starts
            bayes = np.array(payload["estimators"][0]["info"]["model_runs"]["relative_entropy_mean_per_run"])
            assert runs["minus_bayesian_mean"] == pytest.approx(np.mean(per_run - bayes), rel=1e-12, abs=1e-15)
            assert runs["minus_bayesian_standard_error"] == pytest.approx(
                np.std(per_run - bayes, ddof=1) / np.sqrt(3), rel=1e-12)
    assert len(firsts) == 4  # each estimator's own model
    assert "over 3 model runs" in (out / "comparison.md").read_text()
    assert proc.stdout.count("over 3 model runs") == 4


def test_a_model_run_from_the_study_s_own_start_reproduces_the_first_run(tiny_compare, tmp_path, monkeypatch):
    # the further runs use the first run's model: its schedule (with 400 particles the rate is measured on a
    # pilot of 100 first), its mobility in the data's time, its drift; started where the study's run started
    # they give its numbers again
    import jax

    from kgmm_bayes.baselines import fit_sklearn
    from kgmm_bayes.spec import load_spec
    from kgmm_bayes.study import compare
    from kgmm_bayes.study.compare import _data_time, _evaluate, study_model_runs
    from kgmm_bayes.study.dynamics import PILOT_MIN_PARTICLES, run_in_data_time
    from kgmm_bayes.study.run import run_study
    from kgmm_bayes.study.stages import langevin_start, study_keys

    out, _ = tiny_compare
    again = tmp_path / "again"
    shutil.copytree(out / "bayesian", again)  # the study again from its stage cache, its model with more particles
    particles = 4 * PILOT_MIN_PARTICLES
    result = run_study(load_spec(out.parent / "tiny.toml", {"langevin": {"particles": particles}}),
                       out_dir=str(again), force=True)
    spec, data, part = result.spec, result.data, result.partition
    langevin_key = study_keys(spec.study.seed)[5]
    own = langevin_start(langevin_key, part, particles)
    assert result.metrics["langevin"]["mobility"] == "fitted"
    runs = study_model_runs(result, data, [own])
    first, rerun = runs["relative_entropy_mean_per_run"]
    assert rerun == pytest.approx(first, rel=1e-9)  # the mobility went through physical units and back
    assert runs["particles_lost_per_run"][1] == runs["particles_lost_per_run"][0] == (
        result.metrics["langevin"]["escaped"] + result.metrics["langevin"]["non_finite"])
    other = study_model_runs(result, data, [langevin_start(jax.random.fold_in(langevin_key, 1), part, particles)])
    assert other["relative_entropy_mean_per_run"][1] != first

    z = data.zscore.forward(data.train)
    fit = fit_sklearn(jax.random.key(5), z, 3, 30)
    walls = []  # every run the model makes for its first figure: the pilot for the rate, the full run, any rerun

    def recorded(simulate, dyn, particles):
        def run(*args, **kwargs):
            rom, spacing = simulate(*args, **kwargs)
            walls.append(rom.wall_time)
            return rom, spacing
        return run_in_data_time(run, dyn, particles)

    monkeypatch.setattr(compare, "run_in_data_time", recorded)
    row = _evaluate("sklearn", fit.drift_fn, fit.drift_params, fit.timings, data, spec, *own, part.points,
                    part.counts, None, fit.info, data_time=_data_time(result, data, z, spec,
                                                                      jax.random.fold_in(langevin_key, 3)),
                    starts=[own])
    first, rerun = row.info["model_runs"]["relative_entropy_mean_per_run"]
    assert rerun == first
    assert row.info["model_runs"]["particles_lost_per_run"] == [row.escaped] * 2
    # its Langevin seconds count them all, as the study's Langevin stage does (not the last run's alone)
    assert len(walls) >= 2 and row.langevin_s >= sum(walls)


@pytest.mark.slow  # about 55 s on 2 cores: the default suite's margin to 20 minutes (a study's own resume stays in it)
def test_a_stopped_comparison_resumes_after_the_last_estimator_it_finished(tiny_compare, tmp_path, monkeypatch):
    # each estimator's row is kept in <out>.partial/.stages as it finishes: a baseline that fails (a kill, hours
    # into a Lorenz-96 comparison) loses only itself; the next run reads the others back, with the numbers and
    # seconds of the run that computed them, and never fits them again
    from kgmm_bayes.spec import load_spec
    from kgmm_bayes.study import compare

    out, _ = tiny_compare
    spec = load_spec(out.parent / "tiny.toml", {"baselines": {"model_runs": 3}})
    kept = sorted(p.name.split("-")[1] for p in (out / ".stages").glob("compare-*"))
    assert kept == ["bayesian", "dsm", "kgmm", "sklearn"]  # a finished comparison keeps them: a rerun reads them
    target, staging = tmp_path / "cmp", tmp_path / "cmp.partial"
    (staging / ".stages").mkdir(parents=True)  # a comparison stopped after its Bayesian study, as it keeps itself
    shutil.copy(out / "spec.json", staging / "spec.json")
    shutil.copytree(out / "bayesian", staging / "bayesian")

    def fails(*args, **kwargs):
        raise RuntimeError("stopped during the sklearn baseline")

    computed, evaluate_row = {}, compare._evaluate  # the rows of the run that stops, as it computed them

    def evaluate(name, *args, **kwargs):
        computed[name] = evaluate_row(name, *args, **kwargs)
        return computed[name]

    with monkeypatch.context() as m:
        m.setattr(compare, "fit_sklearn", fails)
        m.setattr(compare, "_evaluate", evaluate)
        with pytest.raises(RuntimeError, match="stopped during"):
            compare.compare_study(spec, out_dir=str(target))
    assert not target.exists()
    assert sorted(p.name.split("-")[1] for p in (staging / ".stages").glob("compare-*")) == ["bayesian", "dsm", "kgmm"]

    with monkeypatch.context() as m:
        m.setattr(compare, "fit_kgmm", fails)  # read back, never fitted again
        m.setattr(compare, "fit_dsm", fails)
        resumed = compare.compare_study(spec, out_dir=str(target))
    assert not staging.exists()
    payload = json.loads((target / "comparison.json").read_text())
    assert payload["read_back"] == ["bayesian model runs", "kgmm", "dsm"]
    assert "Read back from this comparison's stage cache" in (target / "comparison.md").read_text()
    first = {r["estimator"]: r for r in json.loads((out / "comparison.json").read_text())["estimators"]}
    for row in resumed.rows:  # same seed, same machine: the numbers of the uninterrupted run, whichever run made them
        assert row.info["model_runs"]["relative_entropy_per_run"] == first[row.estimator]["info"]["model_runs"][
            "relative_entropy_per_run"]
        np.testing.assert_array_equal(row.relative_entropy, np.array(first[row.estimator]["relative_entropy"],
                                                                     dtype=np.float64))
    for row in resumed.rows[1:3]:  # read back with the seconds of the run that computed them, not refitted
        assert (row.estimator, row.timings, row.langevin_s) == (
            row.estimator, computed[row.estimator].timings, computed[row.estimator].langevin_s)
    reach = json.loads((out / "comparison.json").read_text())["dsm_reach"]
    assert [c["relative_entropy_mean"] for c in payload["dsm_reach"]["checkpoints"]] == [
        c["relative_entropy_mean"] for c in reach["checkpoints"]]

    # which baselines run, and in which order, is not in a row's key: each baseline draws from its own key stream,
    # so a rerun that reorders them and drops one (--force: the folder's spec changes) reads the others back and
    # fits nothing
    fewer = load_spec(out.parent / "tiny.toml", {"baselines": {"model_runs": 3, "which": ["sklearn", "kgmm"]}})
    with monkeypatch.context() as m:
        for fit in ("fit_kgmm", "fit_dsm", "fit_sklearn"):
            m.setattr(compare, fit, fails)
        reordered = compare.compare_study(fewer, out_dir=str(target), force=True)
    assert json.loads((target / "comparison.json").read_text())["read_back"] == [
        "bayesian model runs", "sklearn", "kgmm"]
    assert [r.estimator for r in reordered.rows] == ["bayesian", "sklearn", "kgmm"]
    for row in reordered.rows:
        np.testing.assert_array_equal(row.relative_entropy, np.array(first[row.estimator]["relative_entropy"],
                                                                     dtype=np.float64))


def test_a_long_reference_scores_every_model_against_an_independent_run_of_the_system(tiny_compare, tmp_path):
    """``--long-reference 2``: the same fits scored against an independent run of the system with twice the training
    members (``long_reference_run``, the keys of seed 2**31 - 1) instead of the study's reference set: the Bayesian
    model's first figure is its run's relative entropy against that run, computed here again; every estimator's runs
    are paired on it; the floor line is the training set's against it.  The long run is smoothed as a set of the scored
    set's size (``matched``), not at its own narrower bandwidth."""
    from kgmm_bayes import load_result
    from kgmm_bayes.metrics.density import marginal_relative_entropies
    from kgmm_bayes.spec import load_spec
    from kgmm_bayes.study.compare import long_reference_run

    out, _ = tiny_compare
    proc = run_cli("compare", str(out.parent / "tiny.toml"), "--out", "long", "--quiet", "--model-runs", "2",
                   "--long-reference", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((tmp_path / "long" / "comparison.json").read_text())
    plain = json.loads((out / "comparison.json").read_text())
    spec = load_spec(out.parent / "tiny.toml")
    long = long_reference_run(spec, 2).reshape(-1, 1)
    result = load_result(tmp_path / "long" / "bayesian")
    assert payload["long_reference"] == 2 and payload["reference_snapshots"] == len(long)
    assert len(long) == 2 * len(result.data.train)
    assert not np.allclose(long[:len(result.data.train)], result.data.train)  # independent of the training run
    assert not np.allclose(long[:len(result.data.reference)], result.data.reference)  # ... and of the reference set
    bayes = payload["estimators"][0]
    expected = marginal_relative_entropies(long, result.rom_samples, spec.metrics.grid_points, matched=True)
    np.testing.assert_allclose(bayes["relative_entropy"], expected, rtol=1e-12)
    unmatched = marginal_relative_entropies(long, result.rom_samples, spec.metrics.grid_points)
    assert not np.allclose(unmatched, expected, rtol=1e-3)  # the smoothing matters at these sizes
    assert bayes["info"]["model_runs"]["relative_entropy_per_run"][0] == pytest.approx(list(expected), rel=1e-12)
    floor = np.mean(marginal_relative_entropies(long, result.data.train, spec.metrics.grid_points, matched=True))
    assert payload["data_floor_relative_entropy_mean"] == pytest.approx(floor, rel=1e-12)
    # the same fits (the same study, the same models' first runs) as the comparison against the reference set
    np.testing.assert_array_equal(result.rom_samples, load_result(out / "bayesian").rom_samples)
    assert bayes["relative_entropy"] != plain["estimators"][0]["relative_entropy"]
    for row in payload["estimators"][1:]:
        runs = row["info"]["model_runs"]
        assert runs["runs"] == 2 and runs["minus_bayesian_mean"] is not None
    text = (tmp_path / "long" / "comparison.md").read_text()
    assert "independent run of the system with 2 times the training data's members" in text


def test_only_a_long_reference_is_scored_smoothed_as_each_model_run():
    """``with_long_reference`` marks its copy of the data (the caller's stays as it was), and
    ``scored_relative_entropies``, which every model run of a comparison is scored by, smooths the reference as the
    run's set exactly where the data are so marked."""
    from kgmm_bayes.data.trajectory import StudyData
    from kgmm_bayes.data.zscore import ZScore
    from kgmm_bayes.metrics.density import marginal_relative_entropies
    from kgmm_bayes.spec import load_spec
    from kgmm_bayes.study.compare import scored_relative_entropies, with_long_reference

    rng = np.random.default_rng(2)
    train, reference = rng.normal(size=(4_000, 1)), rng.normal(size=(40_000, 1))
    data = StudyData(train, reference, ZScore.fit(train))
    spec = load_spec("reduced_1d")
    assert with_long_reference(data, spec) is data and not data.reference_matched  # long_reference = 0: as it is

    class Run:  # the two things scoring reads of a LangevinResult
        samples = rng.normal(size=(10, 300, 1))

        def kept_samples(self):
            return self.samples.reshape(-1, 1)

    run, grid = Run(), spec.metrics.grid_points
    model = data.zscore.inverse(run.kept_samples())
    plain = marginal_relative_entropies(reference, model, grid)
    np.testing.assert_allclose(scored_relative_entropies(run, data, spec), plain, rtol=1e-12)
    data.reference_matched = True
    matched = marginal_relative_entropies(reference, model, grid, matched=True)
    np.testing.assert_allclose(scored_relative_entropies(run, data, spec), matched, rtol=1e-12)
    assert not np.allclose(matched, plain, rtol=1e-3)


def test_model_run_summary_counts_runs_that_lost_every_particle_apart():
    from kgmm_bayes.study.compare import model_run_summary

    per_run = np.array([[1e-3, 3e-3], [2e-3, 2e-3], [np.nan, np.nan], [4e-3, 4e-3]])
    summary = model_run_summary(per_run)
    assert summary["runs"] == 4 and summary["finite_runs"] == 3
    assert summary["relative_entropy_mean_per_run"] == [2e-3, 2e-3, None, 4e-3]
    assert summary["relative_entropy_mean_over_runs"] == pytest.approx(8e-3 / 3, rel=1e-14)
    sd = np.sqrt(((2e-3 - 8e-3 / 3) ** 2 * 2 + (4e-3 - 8e-3 / 3) ** 2) / 2)
    assert summary["standard_error"] == pytest.approx(sd / np.sqrt(3), rel=1e-12)
    assert model_run_summary(per_run[2:3])["standard_error"] is None
    assert model_run_summary(per_run[:1])["standard_error"] is None  # one run: no spread
    # each run's lost particles, the third run's every one of 200
    assert "particles_lost_per_run" not in summary
    assert model_run_summary(per_run, np.array([3, 0, 200, 1]))["particles_lost_per_run"] == [3, 0, 200, 1]


def _payload(dim: int) -> dict:
    """comparison.json's fields that the tables read, for rows made up in a test."""
    return {"study": "s", "seed": 0, "train_snapshots": 1, "reference_snapshots": 1, "dim": dim,
            "data_floor_relative_entropy_mean": 1e-4, "baselines": {
                "sigma": 0.05, "min_leaf_probability": 1e-3, "max_passes": 1, "tolerance": 0.1,
                "dsm_epochs": 1, "dsm_batch": 1, "dsm_learning_rate": 1e-3, "dsm_ema": 0.0, "sklearn_max_iter": 1}}


def test_dsm_reach_names_the_particles_a_short_run_lost():
    """A checkpoint whose short run lost particles has its relative entropy over the others: the text says how
    many, and says nothing where none were lost."""
    from kgmm_bayes.study.compare_tables import EstimatorRow, comparison_markdown

    rows = [EstimatorRow(n, {"fit": 1.0}, np.array([2e-3]), None, None, 1.0, 0, {}) for n in ("bayesian", "dsm")]
    reach = {"langevin_steps": 100, "bayesian_relative_entropy_mean": 2e-3, "bayesian_particles_lost": 0,
             "particles": 500, "budget_epochs": 20, "reached_at_s": 2.0, "reached_at_epochs": 20, "checkpoints": [
                 {"epochs": 10, "training_s": 1.0, "relative_entropy_mean": 0.03, "particles_lost": 7},
                 {"epochs": 20, "training_s": 2.0, "relative_entropy_mean": 1e-3, "particles_lost": 0}]}
    text = comparison_markdown(rows, reach, _payload(1))
    assert "Bayesian 0.002; DSM 10 epochs (1.0 s): 0.03 (7 of 500 particles lost), 20 epochs (2.0 s): 0.001." in text


def test_a_row_read_back_from_the_stage_cache_makes_the_same_tables(tmp_path):
    """A kept row comes back as JSON decodes it (lists for arrays, strings for keys, None for NaN): the tables
    and the KS figure read it as they read the row that was computed."""
    from scipy.signal import lfilter

    from kgmm_bayes.metrics import series as ts
    from kgmm_bayes.study.compare_tables import (
        EstimatorRow,
        comparison_csv,
        comparison_markdown,
        plot_ks,
        row_dict,
        row_from_dict,
    )

    series = lfilter([0.6], [1, -0.8], np.random.default_rng(3).normal(size=(4, 600, 3)), axis=1)[:, 50:]
    tau = ts.decorrelation_time(series, 0.5)
    ks = ts.ks_statistics(series.reshape(-1, 3), series + 0.3, 0.5, tau, grid_points=256)
    fresh = EstimatorRow("kgmm", {"fit": 1.5, "setup": 0.25}, np.array([1e-3, np.nan, 2e-3]), 0.02, None, 3.0, 1,
                         {"ks": ks, "model_snapshots": 550})
    decoded = row_from_dict(json.loads(json.dumps(row_dict(fresh), default=list)))
    np.testing.assert_array_equal(decoded.relative_entropy, fresh.relative_entropy)  # NaN where it was
    bayes = fresh._replace(estimator="bayesian", band_coverage=0.9)
    payload = dict(_payload(3), ks_data_decorrelation_time=list(tau))
    table = comparison_markdown([bayes, decoded], None, payload)
    assert table == comparison_markdown([bayes, fresh], None, payload) and "two-point L1" in table
    assert comparison_csv([bayes, decoded], None) == comparison_csv([bayes, fresh], None)
    plot_ks(tmp_path / "ks.png", [bayes, decoded], tau)
    assert (tmp_path / "ks.png").stat().st_size > 10_000


def test_bayesian_cost_counts_choosing_k_once():
    """Where K was chosen from the data, the candidates' posteriors are part of the Bayesian cost; the chosen K's is
    not counted twice when the study reused it, and is counted when the study sampled its own posterior again."""
    from kgmm_bayes.study.compare import BAYESIAN_STAGES, bayesian_timings

    timings = {"data": 9.0, "partition": 1.0, "posterior": 20.0, "score": 2.0, "interpolant": 5.0, "langevin": 7.0,
               "model_selection": 0.5}  # the selection read back from the cache: its wall is a load time
    plain = bayesian_timings({"timings": timings})
    # no K chosen: the three stages and the network (trained: the model runs on it), nothing else
    assert plain == {**{s: timings[s] for s in BAYESIAN_STAGES}, "interpolant": 5.0} and len(plain) == 4
    no_network = {k: v for k, v in timings.items() if k != "interpolant"}  # the "mixture" drift: none trained
    assert bayesian_timings({"timings": no_network}) == {s: timings[s] for s in BAYESIAN_STAGES}
    chosen = {"best": 8, "posterior_s": {"4": 11.0, "8": 20.0, "16": 40.0}, "reused_best": True}
    reused = bayesian_timings({"timings": timings, "model_selection": chosen})
    assert reused["model_selection"] == 51.0 and reused["posterior"] == 20.0
    again = bayesian_timings({"timings": timings, "model_selection": dict(chosen, reused_best=False)})
    assert again["model_selection"] == 71.0
    older = bayesian_timings({"timings": timings, "model_selection": {"best": 8}})  # written before the seconds
    assert older["model_selection"] == 0.5
    corrected = bayesian_timings({"timings": dict(timings, correction=3.0)})  # [interpolant] correction ran
    assert corrected == {**plain, "correction": 3.0}


def test_cost_line_gives_the_bayesian_wall_and_its_posterior_over_classic_kgmm_s():
    """The issue's cost figure, read off the rows of the same comparison: the Bayesian wall over classic KGMM's, and
    the posterior stage (the candidates' posteriors counted where K was chosen) over classic KGMM's whole wall."""
    from kgmm_bayes.study.compare_tables import EstimatorRow, comparison_markdown

    def row(name, timings):
        return EstimatorRow(name, timings, np.array([2e-3]), None, None, 1.0, 0, {})

    bayes = row("bayesian", {"partition": 1.5, "posterior": 9.0, "score": 0.5, "interpolant": 5.0})
    kgmm = row("kgmm", {"clustering": 1.5, "training": 2.5, "setup": 0.0})
    text = comparison_markdown([bayes, kgmm, row("sklearn", {"fitting": 3.0})], None, _payload(1))
    assert ("Cost against classic KGMM: the Bayesian estimator's wall is 4.00 times classic KGMM's (16.0 s against "
            "4.0 s); its posterior alone (9.0 s) is 2.25 times classic KGMM's whole wall.") in text
    chosen = bayes._replace(timings={**bayes.timings, "model_selection": 3.0})
    text = comparison_markdown([chosen, kgmm], None, _payload(1))
    assert "wall is 4.75 times" in text and "its posterior with the candidates' for K alone (12.0 s) is 3.00 times" in text
    # without classic KGMM in the comparison (or with no time for it) there is nothing to divide by
    assert "Cost against" not in comparison_markdown([bayes, row("sklearn", {"fitting": 3.0})], None, _payload(1))
    assert "Cost against" not in comparison_markdown([bayes, row("kgmm", {"fit": 0.0})], None, _payload(1))


def test_tables_gain_the_model_runs_columns_only_with_more_than_one_run():
    from kgmm_bayes.study.compare import model_run_summary, paired_with_bayesian
    from kgmm_bayes.study.compare_tables import (
        EstimatorRow,
        comparison_csv,
        comparison_markdown,
    )

    def row(name, info):
        return EstimatorRow(name, {"fit": 1.0}, np.array([2e-3]), None, None, 1.0, 0, info)

    payload = _payload(1)
    plain = [row("bayesian", {}), row("sklearn", {})]
    assert "model_runs" not in comparison_csv(plain, None) and "model runs" not in comparison_markdown(plain, None, payload)
    runs = [row("bayesian", {"model_runs": model_run_summary([[2e-3], [4e-3]])}),
            row("sklearn", {"model_runs": model_run_summary([[3e-3], [np.nan]])})]
    paired_with_bayesian(runs)
    assert runs[1].info["model_runs"]["minus_bayesian_mean"] == pytest.approx(1e-3, rel=1e-12)  # the run both have
    assert runs[1].info["model_runs"]["minus_bayesian_standard_error"] is None
    with io.StringIO(comparison_csv(runs, None)) as fh:
        table = {r["estimator"]: r for r in csv.DictReader(fh)}
    assert table["bayesian"]["model_runs"] == "2" and float(table["bayesian"]["relative_entropy_mean_over_runs"]) == 3e-3
    assert table["sklearn"]["finite_model_runs"] == "1" and table["sklearn"]["relative_entropy_standard_error"] == ""
    assert float(table["sklearn"]["minus_bayesian_mean"]) == pytest.approx(1e-3, rel=1e-12)
    text = comparison_markdown(runs, None, payload)
    assert "| over 2 model runs (± s.e.) |" in text
    assert "| 0.003 ± 0.001 | — |" in text and "| 0.003 ± — (1 of 2 runs) | +0.001 ± — |" in text


def test_compare_bad_input_one_line(tmp_path, monkeypatch, capsys):
    from kgmm_bayes.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my own files\n")
    (tmp_path / "s.toml").write_text('[data]\nsystem = "reduced_1d"\n[baselines]\nwhich = ["bogus"]\n')
    (tmp_path / "ok.toml").write_text('[data]\nsystem = "reduced_1d"\n')
    np.save(tmp_path / "own.npy", np.random.default_rng(0).normal(size=(2000, 1)))
    (tmp_path / "own.toml").write_text('[data]\npath = "own.npy"\n')
    for args, words in ((["compare", "missing.toml"], ["missing.toml"]),
                        (["compare", "s.toml"], ["[baselines] which", "bogus"]),
                        (["compare", "ok.toml", "--out", "mine", "--quiet"], ["mine", "holds no kgmm-bayes result"]),
                        (["compare", "ok.toml", "--seed", "-3", "--quiet"], ["--seed"]),
                        (["compare", "ok.toml", "--model-runs", "0", "--quiet"], ["--model-runs", "got 0"]),
                        (["compare", "ok.toml", "--model-runs", "101", "--quiet"], ["--model-runs", "got 101"]),
                        (["compare", "ok.toml", "--long-reference", "-1", "--quiet"], ["--long-reference", "got -1"]),
                        (["compare", "ok.toml", "--long-reference", "101", "--quiet"], ["--long-reference", "got 101"]),
                        (["compare", "ok.toml", "--run-length", "0", "--quiet"], ["--run-length", "got 0"]),
                        (["compare", "ok.toml", "--run-length", "101", "--quiet"], ["--run-length", "got 101"]),
                        (["compare", "own.toml", "--long-reference", "2", "--quiet"],
                         ["[baselines] long_reference", "built-in system"])):
        assert main(args) == 2
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("kgmm-bayes: error:"), captured.err
        assert all(w in lines[0] for w in words), lines[0]
        assert captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "ok.toml", "own.npy", "own.toml", "s.toml"]
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_run_length_lengthens_every_model_run_and_nothing_else(tmp_path, monkeypatch):
    """``--run-length L``: the comparison runs on the spec with L times its ``[langevin] steps`` (so the Bayesian
    study's own run and every model run, which take their schedule from it, are L times as long); every other key
    as the file says, the other flags' overrides kept; L = 1 is the spec itself."""
    from kgmm_bayes.cli import main
    from kgmm_bayes.spec import load_spec
    from kgmm_bayes.study import compare

    seen = []
    monkeypatch.setattr(compare, "compare_study", lambda spec, **kw: seen.append(spec) or compare.Comparison(
        rows=[], dsm_reach=None, out_dir=str(tmp_path)))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.toml").write_text('[data]\nsystem = "reduced_1d"\n[langevin]\nsteps = 3000\nthin = 100\n')
    assert main(["compare", "ok.toml", "--run-length", "10", "--model-runs", "3", "--quiet"]) == 0
    assert main(["compare", "ok.toml", "--run-length", "1", "--quiet"]) == 0
    plain = load_spec(tmp_path / "ok.toml")
    assert seen[0].langevin.steps == 30000 and plain.langevin.steps == 3000
    assert seen[0].baselines.model_runs == 3
    assert seen[0]._replace(langevin=plain.langevin, baselines=plain.baselines) == plain
    assert seen[0].langevin._replace(steps=3000) == plain.langevin
    assert seen[1] == plain
