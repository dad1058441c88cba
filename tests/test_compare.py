"""``kgmm-bayes compare`` end to end on a tiny reduced-1D study, through the console script:
the four estimators on the same data, finite metrics, the figure, the Bayesian sub-study; and
bad input ending with one error line before anything runs."""
from __future__ import annotations

import csv
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
    for name in rows:
        assert name in proc.stdout


def test_comparison_outputs_exist(tiny_compare):
    out, _ = tiny_compare
    assert (out / "figures" / "comparison.png").stat().st_size > 10_000
    table = (out / "comparison.md").read_text()
    assert table.count("\n| ") >= 5  # header and four estimators
    assert "DSM" in table and ("reaches it" in table or "does not reach it" in table)
    payload = json.loads((out / "comparison.json").read_text())
    reach = payload["dsm_reach"]
    assert [c["epochs"] for c in reach["checkpoints"]] == [2, 4]
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
        assert runs["relative_entropy_mean_over_runs"] == pytest.approx(per_run.mean(), rel=1e-12)
        assert runs["standard_error"] == pytest.approx(per_run.std(ddof=1) / np.sqrt(3), rel=1e-12)
        csv_row = rows[row["estimator"]]
        assert float(csv_row["relative_entropy_mean_over_runs"]) == runs["relative_entropy_mean_over_runs"]
        assert int(csv_row["model_runs"]) == 3
        firsts.add(tuple(per_run[1:]))
    assert len(firsts) == 4  # each estimator's own model
    assert "over 3 model runs" in (out / "comparison.md").read_text()
    assert proc.stdout.count("over 3 model runs") == 4


def test_a_model_run_from_the_study_s_own_start_reproduces_the_first_run(tiny_compare, tmp_path):
    # the further runs use the first run's model: its schedule (the full run's, not the pilot's), its mobility
    # in the data's time, its drift; started where the study's run started they give its numbers again
    import jax

    from kgmm_bayes.baselines import fit_sklearn
    from kgmm_bayes.spec import load_spec
    from kgmm_bayes.study.compare import _data_time, _evaluate, _model_runs
    from kgmm_bayes.study.run import run_study
    from kgmm_bayes.study.stages import langevin_start, model_drift, study_keys

    out, _ = tiny_compare
    again = tmp_path / "again"
    shutil.copytree(out / "bayesian", again)  # the study again, from its stage cache
    result = run_study(load_spec(out.parent / "tiny.toml"), out_dir=str(again), force=True)
    spec, data, part = result.spec, result.data, result.partition
    langevin_key = study_keys(spec.study.seed)[5]
    own = langevin_start(langevin_key, part, spec.langevin.particles)
    run = result.metrics["langevin"]
    assert run["mobility"] == "fitted"
    bayes = _model_runs(data, spec, *model_drift(spec, result.interpolant, result.drift_draws),
                        result.metrics["relative_entropy"]["per_marginal"], [own], run["dt"], run["steps"],
                        run["thin"], result._mobility("fitted", 1))
    first, again = bayes["relative_entropy_mean_per_run"]
    assert again == pytest.approx(first, rel=1e-9)  # the mobility went through physical units and back

    z = data.zscore.forward(data.train)
    fit = fit_sklearn(jax.random.key(5), z, 3, 30)
    row = _evaluate("sklearn", fit.drift_fn, fit.drift_params, fit.timings, data, spec, *own, part.points,
                    part.counts, None, fit.info, data_time=_data_time(result, data, z, spec,
                                                                      jax.random.fold_in(langevin_key, 3)),
                    starts=[own])
    first, again = row.info["model_runs"]["relative_entropy_mean_per_run"]
    assert again == first


def test_compare_bad_input_one_line(tmp_path, monkeypatch, capsys):
    from kgmm_bayes.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my own files\n")
    (tmp_path / "s.toml").write_text('[data]\nsystem = "reduced_1d"\n[baselines]\nwhich = ["bogus"]\n')
    (tmp_path / "ok.toml").write_text('[data]\nsystem = "reduced_1d"\n')
    for args, words in ((["compare", "missing.toml"], ["missing.toml"]),
                        (["compare", "s.toml"], ["[baselines] which", "bogus"]),
                        (["compare", "ok.toml", "--out", "mine", "--quiet"], ["mine", "holds no kgmm-bayes result"]),
                        (["compare", "ok.toml", "--seed", "-3", "--quiet"], ["--seed"]),
                        (["compare", "ok.toml", "--model-runs", "0", "--quiet"], ["[baselines] model_runs"])):
        assert main(args) == 2
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("kgmm-bayes: error:"), captured.err
        assert all(w in lines[0] for w in words), lines[0]
        assert captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "ok.toml", "s.toml"]
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
