"""End to end: a small real study through the CLI, the score command, the stage cache,
reproducibility, the Python API on an array and a spec naming only a data file."""
import json
import os
import subprocess
import sys
import warnings

import arviz as az
import numpy as np
import pytest

import kgmm_bayes
from kgmm_bayes import load_result
from kgmm_bayes.data import systems

SMALL_STUDY = """
[study]
name = "small_1d"
seed = 3

[data]
system = "reduced_1d"
members = 20
steps = 20000
thin = 100

[partition]
cells = 300

[mixture]
components = 6

[sampler]
chains = 2
warmup = 200
draws = 200

[score]
max_draws = 200

[interpolant]
hidden = [32, 32]
steps = 500

[langevin]
particles = 200
steps = 4000
burn_in = 400
thin = 200
"""


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "kgmm_bayes.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    (folder / "small.toml").write_text(SMALL_STUDY)
    proc = run_cli("run", "small.toml", "--out", "out", "--quiet", cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, proc


def test_outputs_are_complete_and_loadable(small_run):
    folder, proc = small_run
    out = folder / "out"
    for name in ("metrics.json", "posterior.nc", "interpolant.npz", "rom_samples.npy", "report.md", "diagnostics.csv",
                 "figures/score.png", "figures/marginals.png", "figures/trace.png", "figures/rank.png",
                 "figures/energy.png"):
        assert (out / name).is_file(), name
    # strict JSON: NaN and infinities are written as null
    metrics = json.loads((out / "metrics.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}, not JSON"))
    assert metrics["timings"]["posterior"] > 0
    assert metrics["data"]["train_snapshots"] == 20 * 200
    for key in ("relative_error_posterior_mean", "band_coverage", "band_coverage_interpolant"):
        assert 0 <= metrics["score"][key] <= 1
    # the interpolant's band adds its held-out error to the posterior band: it covers at least as often
    assert metrics["score"]["band_coverage_interpolant"] >= metrics["score"]["band_coverage"] - 0.2
    assert len(metrics["interpolant"]["heldout_rms_error"]) == 1 and metrics["interpolant"]["heldout_rms_error"][0] > 0
    modes = metrics["posterior"]["chain_modes"]
    assert sorted(c for m in modes["modes"] for c in m) == [0, 1]
    assert abs(sum(modes["chain_weights"]) - 1) < 1e-12 and len(modes["mode_r_hat"]) == len(modes["modes"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        idata = az.from_netcdf(out / "posterior.nc")
    post = idata.posterior
    assert post["weights"].shape == (2, 200, 6)
    assert post["means"].shape == (2, 200, 6, 1)
    assert post["cov_chol"].shape == (2, 200, 6, 1, 1)
    np.testing.assert_allclose(post["weights"].sum("component"), 1.0, rtol=1e-12)
    assert "zscore_mean" in idata.constant_data and "zscore_std" in idata.constant_data
    assert bool(idata.sample_stats["diverging"].dtype == bool)
    for name in ("energy", "tree_depth", "n_steps", "lp"):
        assert idata.sample_stats[name].shape == (2, 200)
    assert idata.log_likelihood["cells"].shape == (2, 200, metrics["partition"]["cells"])
    assert idata.observed_data["cells"].shape == (metrics["partition"]["cells"], 1)
    assert len(metrics["posterior"]["bfmi_per_chain"]) == 2
    rom = np.load(out / "rom_samples.npy", allow_pickle=False)
    # physical units: the reduced-order model lives on the data's scale, not the z-scored one
    train_std = idata.constant_data["zscore_std"].values[0]
    assert rom.ndim == 2 and rom.shape[1] == 1
    assert 0.5 < rom.std() / train_std < 2.0
    result = load_result(out)
    x = np.linspace(-1.0, 1.0, 7)[:, None] * train_std + idata.constant_data["zscore_mean"].values
    per_draw = result.score_draws(x)
    assert per_draw.shape == (len(result.draws[0]), 7, 1)
    np.testing.assert_allclose(per_draw.mean(axis=0), result.score(x).mean, rtol=1e-12, atol=1e-12)
    # the default coarsening keeps the posterior mean's local error field where the bumps' gap is significant:
    # the band is then the draws' quantiles, each half-width at least z times the local bias (physical units)
    from scipy.stats import norm

    c = metrics["posterior"]["coarsening"]
    significant = c["score_matching_gap"] > c["score_matching_threshold"] * c["score_matching_se"]
    assert (out / "score_bias.npz").is_file() == significant == (result.score_bias is not None)
    assert ("score_bias" in metrics["posterior"]) == significant
    summary = result.score(x)
    beta = 0.0 if result.score_bias is None else \
        np.sqrt(result.score_bias.squared(result.zscore.forward(x))) / result.zscore.std
    lower, upper = np.quantile(per_draw, [0.05, 0.95], axis=0)
    np.testing.assert_allclose(summary.lower, np.minimum(lower, summary.mean - norm.ppf(0.95) * beta), rtol=1e-10)
    np.testing.assert_allclose(summary.upper, np.maximum(upper, summary.mean + norm.ppf(0.95) * beta), rtol=1e-10)
    if significant:
        bias = metrics["posterior"]["score_bias"]
        assert bias["bumps"] == len(result.score_bias.centres) and bias["mean_squared_bias_clipped"] > 0
        assert "Local bias: the score band" in (out / "report.md").read_text()
    report = (out / "report.md").read_text()
    assert "relative entropy" in report.lower()
    assert f"particles that left the box |z| <= {metrics['langevin']['box']:.4g}: " in report
    assert ("narrower than the error" in report) == (metrics["score"]["band_coverage"] < 0.9 - 0.1)
    assert len(metrics["posterior"]["chain_mean_log_posterior"]) == 2
    # metric = "auto": a 1D mixture has 3K - 1 parameters; 200 warmup iterations end in a slow window of 50 draws,
    # too few for a dense metric beyond 12 parameters; the report says which metric ran
    expected = "dense" if 50 >= 4 * (3 * metrics["partition"]["components"] - 1) else "diagonal"
    assert metrics["posterior"]["metric"] == expected
    from kgmm_bayes.study.report import METRIC_WORDS, _fmt
    steps = metrics["posterior"]["mean_steps_per_iteration"]
    assert f"steps per iteration {_fmt(steps)} ({METRIC_WORDS[expected]})" in report
    header = (out / "diagnostics.csv").read_text().splitlines()[0]
    assert "r_hat" in header and "ess_bulk" in header and "ess_tail" in header
    assert "relative entropy" in proc.stdout
    # each stage's JAX work fits in its wall time (a fresh run: every stage was timed here)
    work = metrics["jax_work"]
    assert set(work) == set(metrics["timings"])
    cache_off = os.environ.get("KGMM_BAYES_COMPILATION_CACHE") == "off" and not os.environ.get("JAX_COMPILATION_CACHE_DIR")
    for stage, w in work.items():
        assert w["tracing"] >= 0 and w["compiling"] >= 0 and (w["cache_hits"] == 0 or not cache_off), stage
        assert w["tracing"] + w["compiling"] <= metrics["timings"][stage] + 0.01, stage
    assert work["posterior"]["tracing"] > 0 and work["posterior"]["compiling"] > 0
    assert work["total"]["compiling"] >= sum(w["compiling"] for s, w in work.items() if s != "total") - 0.01
    posterior = work["posterior"]
    assert f"posterior {metrics['timings']['posterior']:.1f} s ({posterior['compiling']:.1f} s of it compiling" \
        in proc.stdout
    assert (f"| posterior | {metrics['timings']['posterior']:.2f} | {posterior['tracing']:.2f} | "
            f"{posterior['compiling']:.2f} | {posterior['cache_hits']:d} |") in report


def test_a_loaded_result_keeps_spec_partition_and_data_and_reruns_the_model(small_run):
    from kgmm_bayes.spec import load_spec
    from kgmm_bayes.study.stages import study_keys

    folder, _ = small_run
    result = load_result(folder / "out")
    metrics = result.metrics
    # the spec as written, its [langevin] box = "auto" resolved from the training data: twice their largest |z|,
    # at least 10 (the reduced model's right tail reaches beyond 5 standard deviations)
    given = load_spec(folder / "small.toml")
    assert given.langevin.box == "auto"
    extent = np.max(np.abs(result.data.train - result.zscore.mean) / result.zscore.std)
    assert extent > 5.0 and metrics["langevin"]["box"] == pytest.approx(2.0 * extent, rel=1e-12)
    assert result.spec == given._replace(langevin=given.langevin._replace(box=metrics["langevin"]["box"]))
    assert result.partition.points.shape == (metrics["partition"]["cells"], 1)
    assert result.partition.counts.sum() == metrics["data"]["train_snapshots"]
    # the data come back from the folder's stage cache, as the study used them
    assert result.data.train.shape == (metrics["data"]["train_snapshots"], 1)
    assert result.data.reference.shape == (metrics["data"]["reference_snapshots"], 1)
    np.testing.assert_allclose(result.zscore.mean, result.data.train.mean(axis=0), rtol=1e-12)
    # the study's Langevin settings and key reproduce its samples exactly
    lg, run = result.spec.langevin, metrics["langevin"]
    assert run["mobility"] == "fitted"  # a built-in system knows its interval: the model runs in its time
    paths = result.simulate(lg.particles, run["steps"], run["dt"], burn_in=lg.burn_in, thin=run["thin"],
                            key=study_keys(3)[5], mobility="fitted")
    alive = np.all(np.isfinite(paths), axis=(0, 2))
    np.testing.assert_array_equal(paths[:, alive].reshape(-1, 1), result.rom_samples)


def test_score_command_matches_python_api(small_run):
    folder, _ = small_run
    points = np.linspace(-0.1, 0.4, 7)[:, None]
    np.save(folder / "points.npy", points)
    proc = run_cli("score", "out", "points.npy", "--out", "score.npz", cwd=folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(folder / "score.npz", allow_pickle=False) as f:
        mean, lower, upper = f["mean"], f["lower"], f["upper"]
    assert mean.shape == lower.shape == upper.shape == (7, 1)
    assert np.all(lower <= mean) and np.all(mean <= upper)
    result = load_result(folder / "out")
    np.testing.assert_allclose(result.score(points).mean, mean, rtol=1e-12)
    # in physical units the posterior score is close to the analytic score where data are dense
    truth = np.asarray(systems.get_system("reduced_1d").score(points[2:5]))
    scale = np.abs(truth).max()
    assert np.max(np.abs(mean[2:5] - truth)) < 0.25 * scale


def test_rerun_reuses_stages_and_reproduces_numbers(small_run):
    folder, _ = small_run
    before = json.loads((folder / "out" / "metrics.json").read_text())
    proc = run_cli("run", "small.toml", "--out", "out", "--quiet", cwd=folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = json.loads((folder / "out" / "metrics.json").read_text())
    assert set(after["cached_stages"]) == {"posterior", "correction", "interpolant", "langevin"}
    # a stage read back reports the seconds of the run which computed it, not its load time
    (entry,) = (folder / "out" / ".stages").glob("interpolant-*.npz")
    with np.load(entry, allow_pickle=False) as f:
        trained_s = float(f["wall_time"])
    assert after["timings"]["interpolant"] == trained_s and 0 < trained_s <= before["timings"]["interpolant"]
    for key in ("relative_entropy", "score", "posterior", "langevin"):
        assert after[key] == before[key] if key != "langevin" else (
            {k: v for k, v in after[key].items() if k != "particle_steps_per_second"}
            == {k: v for k, v in before[key].items() if k != "particle_steps_per_second"})


def test_posterior_stage_key_follows_what_the_stage_reads():
    """The coarsening ("auto") chooses zeta from the draws thinned at [score] max_draws: changing it asks for a new
    posterior; [score] band (no stored array depends on it) and [langevin] do not, nor max_draws without "auto"."""
    from kgmm_bayes.spec import load_spec
    from kgmm_bayes.study import stages

    class Looked(Exception):
        pass

    class Out:  # records the key the stage looks up, then stops before sampling
        def load_stage(self, name, key, build=None):
            keys.append((name, key))
            raise Looked

    def fewer_draws(spec):
        return spec._replace(score=spec.score._replace(max_draws=spec.score.max_draws // 2))

    base = load_spec(None)
    assert base.mixture.coarsening == "auto"
    off = base._replace(mixture=base.mixture._replace(coarsening="off"))
    variants = [base, fewer_draws(base), base._replace(score=base.score._replace(band=0.8)),
                base._replace(langevin=base.langevin._replace(particles=base.langevin.particles + 1)),
                off, fewer_draws(off)]
    keys = []
    for spec in variants:
        with pytest.raises(Looked):
            stages.posterior_stage(spec, Out(), None, None, None, "upstream", None)
    assert [name for name, _ in keys] == ["posterior"] * len(variants)
    found = [key for _, key in keys]
    assert found[1] != found[0] and found[2] == found[3] == found[0]
    assert found[4] not in found[:4] and found[5] == found[4]


def test_the_progress_log_names_how_the_posterior_is_sampled():
    """The posterior stage's log line names the ways that run: the default study's NUTS chains, Lorenz-63's and
    Kuramoto-Sivashinsky's Laplace approximations (both posteriors), four-well's Laplace then NUTS; with a fixed
    coarsening only the kept posterior's way; NUTS first and a Laplace second only where the coarsening asks for it."""
    from kgmm_bayes.spec import load_spec
    from kgmm_bayes.study.run import posterior_plan

    assert posterior_plan(load_spec(None)) == "NUTS, 4 chains x (500 + 400)"
    assert posterior_plan(load_spec("lorenz63")) == \
        "Laplace approximations at the MAP optima of 32 searches, 16 x 250 draws"
    assert "NUTS" not in posterior_plan(load_spec("ks_d4"))
    four_well = load_spec("four_well_2d")
    assert posterior_plan(four_well) == \
        "first Laplace approximations at the MAP optima of 8 searches, 4 x 500 draws; kept NUTS, 4 chains x (500 + 500)"
    fixed = four_well._replace(mixture=four_well.mixture._replace(coarsening="0.5"))
    assert posterior_plan(fixed) == "NUTS, 4 chains x (500 + 500)"
    swapped = four_well._replace(sampler=four_well.sampler._replace(first_posterior="nuts", kept_posterior="laplace"))
    assert posterior_plan(swapped).startswith("first NUTS, 4 chains x (500 + 500); a second one, where the coarsening")


def test_killed_run_resumes_and_gives_the_same_numbers(small_run, tmp_path):
    """SIGKILL a fresh run of the same spec and seed once its posterior is on disk (it is then
    training the interpolant or simulating): no output folder appears, and the same command
    resumes from the saved stages and reproduces the uninterrupted run's numbers exactly."""
    import os
    import signal
    import time

    folder, _ = small_run
    argv = [sys.executable, "-m", "kgmm_bayes.cli", "run", str(folder / "small.toml"), "--out",
            str(tmp_path / "again"), "--quiet"]
    stages = tmp_path / "again.partial" / ".stages"
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        if stages.is_dir() and any(p.name.startswith("posterior-") for p in stages.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "again").exists()  # nothing half-written where the outputs go
    assert not any(p.name.startswith("langevin-") for p in stages.iterdir())  # killed before the end

    resumed = run_cli(*argv[3:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not (tmp_path / "again.partial").exists()
    first = json.loads((folder / "out" / "metrics.json").read_text())
    second = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert "posterior" in second["cached_stages"] and "langevin" not in second["cached_stages"]
    for key in ("relative_entropy", "score", "posterior", "interpolant"):
        assert second[key] == first[key], key


def test_strict_exits_3_on_numerical_faults_and_still_writes_outputs(small_run, tmp_path):
    """A Langevin box narrower than the data: particles escape, which is counted in metrics.json
    and report.md; --strict turns it into exit status 3 with one error line. The earlier stages
    come from the copied stage cache, so only the reduced-order model is recomputed."""
    import shutil

    folder, proc = small_run
    before = json.loads((folder / "out" / "metrics.json").read_text())
    assert before["faults"] == before["posterior"]["warnings"]  # short chains may disagree: reported too
    assert not any("left the box" in fault for fault in before["faults"])
    shutil.copytree(folder / "out", tmp_path / "out")
    (tmp_path / "narrow.toml").write_text(SMALL_STUDY.replace("thin = 200\n", "thin = 200\nbox = 0.5\n"))
    strict = run_cli("run", "narrow.toml", "--out", "out", "--force", "--quiet", "--strict", cwd=tmp_path)
    assert strict.returncode == 3, strict.stderr[-2000:]
    error = [line for line in strict.stderr.splitlines() if line.startswith("kgmm-bayes: error:")]
    assert len(error) == 1 and "--strict" in error[0] and "left the box" in error[0]
    assert "Traceback" not in strict.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["langevin"]["escaped"] > 0
    assert metrics["faults"] == before["faults"] + [metrics["langevin"]["warning"]]
    assert set(metrics["cached_stages"]) == {"posterior", "correction", "interpolant"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"## Numerical faults: {len(metrics['faults'])}" in report
    assert all(f"- {fault}" in report for fault in metrics["faults"])


def test_different_study_does_not_overwrite_without_force(small_run):
    folder, _ = small_run
    (folder / "other.toml").write_text(SMALL_STUDY.replace("seed = 3", "seed = 4"))
    before = {p.name: p.read_bytes() for p in (folder / "out").iterdir() if p.is_file()}
    proc = run_cli("run", "other.toml", "--out", "out", "--quiet", cwd=folder)
    assert proc.returncode == 2
    assert "different study" in proc.stderr and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in (folder / "out").iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_data_file_spec_with_only_a_path_runs_with_defaults(tmp_path):
    """A user's trajectory file (members, n, d), a spec holding only the [data] path line."""
    import jax

    sysm = systems.get_system("four_well_2d")
    traj = systems.simulate(jax.random.key(5), sysm, members=10, steps=30_000, thin=50)
    np.save(tmp_path / "traj.npy", traj)
    (tmp_path / "mine.toml").write_text('[data]\npath = "traj.npy"\n')
    proc = run_cli("run", "mine.toml", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "kgmm-runs" / "mine" / "metrics.json").read_text())
    # 10 members: 8 for training, 2 held out as the reference set
    assert metrics["data"]["train_snapshots"] == 8 * 600
    assert metrics["data"]["reference_snapshots"] == 2 * 600
    assert "score" not in metrics  # no analytic score for user data
    assert metrics["relative_entropy"]["mean"] < 0.05
    # no [mixture] components: K chosen from the data by PSIS-LOO among the candidates the data support
    chosen = metrics["model_selection"]["chosen_from_data"]
    assert chosen["candidates"] == [4, 8, 16, 32]
    assert metrics["partition"]["components"] == metrics["model_selection"]["best"] in chosen["candidates"]
    elpd = metrics["model_selection"]["elpd_loo"]
    assert elpd[str(metrics["model_selection"]["best"])] == max(elpd.values())
    assert "The spec gave no K" in (tmp_path / "kgmm-runs" / "mine" / "report.md").read_text()


def test_fit_api_on_a_dataarray_and_the_notebook_round_trip(tmp_path):
    """fit on a labelled xarray DataArray (variable dimension only implied: a named 1D series),
    then load_result of its folder: every evaluation gives the same numbers on both objects."""
    import jax
    import xarray as xr

    rng = np.random.default_rng(0)
    # independent draws of the mixture whose score is the truth below (in time order, the two components
    # one after the other look like one long correlated excursion: the coarsening then keeps an effective
    # sample size below 1 and the band is the prior's)
    x = rng.permutation(np.concatenate([rng.normal(-1.5, 0.4, 1500), rng.normal(1.0, 0.6, 2500)]))[:, None] * 3.0 + 10.0
    da = xr.DataArray(x.T, dims=("variable", "time"), coords={"variable": ["temperature"]})
    result = kgmm_bayes.fit(da, settings={
        "partition": {"cells": 200}, "mixture": {"components": 4},
        "sampler": {"warmup": 200, "draws": 200}, "score": {"max_draws": 200},
        "interpolant": {"hidden": [32, 32], "steps": 500},
        "langevin": {"particles": 200, "steps": 4000, "burn_in": 400}},
        out_dir=str(tmp_path / "fit"), seed=1)
    summary = result.score(np.array([[5.5], [13.0]]))
    # analytic score of the generating two-Gaussian mixture, physical units
    comps = [(1500 / 4000, 10.0 - 4.5, 1.2), (2500 / 4000, 13.0, 1.8)]

    def true_score(v):
        dens = [w * np.exp(-0.5 * ((v - m) / s) ** 2) / s for w, m, s in comps]
        grads = [d * -(v - m) / s**2 for d, (w, m, s) in zip(dens, comps)]
        return sum(grads) / sum(dens)

    truth = true_score(np.array([5.5, 13.0]))
    assert np.all(np.abs(summary.mean[:, 0] - truth) < 0.25 * np.abs(truth).max() + 0.1)
    assert result.rom_samples.shape[1] == 1
    assert result.inference_data.posterior["weights"].shape[-1] == 4
    assert result.interpolant_score(np.array([[13.0]])).shape == (1, 1)
    assert result.variables == ("temperature",) and result.spec.data.variables == ("temperature",)
    assert "temperature" in (tmp_path / "fit" / "report.md").read_text()

    loaded = kgmm_bayes.load_result(tmp_path / "fit")
    assert loaded.spec == result.spec and loaded.variables == ("temperature",)
    np.testing.assert_array_equal(loaded.data.train, result.data.train)  # from data.npy, as given
    np.testing.assert_array_equal(loaded.partition.points, result.partition.points)
    pts = np.linspace(4.0, 18.0, 9)[:, None]
    for name in ("score", "log_density", "divergence"):
        a, b = getattr(result, name)(pts), getattr(loaded, name)(pts)
        for field in ("mean", "lower", "upper", "predictive"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-12, atol=1e-12)
    for drift in ("interpolant", "mixture"):
        key = jax.random.key(9)
        np.testing.assert_array_equal(result.simulate(50, 300, key=key, drift=drift, thin=10),
                                      loaded.simulate(50, 300, key=key, drift=drift, thin=10))
    ens = loaded.simulate(20, 200, key=1, drift="mixture", members=4, thin=20, as_xarray=True)
    assert ens.dims == ("member", "time", "particle", "variable") and ens.shape == (4, 10, 20, 1)
    np.testing.assert_array_equal(ens.values, result.simulate(20, 200, key=1, drift="mixture", members=4, thin=20))
    ds = loaded.dataset()
    assert list(ds["variable"].values) == ["temperature"]
    np.testing.assert_array_equal(ds["rom_samples"].values, result.rom_samples)


def test_a_second_posterior_leaves_the_model_s_drift_to_the_first(tmp_path, monkeypatch):
    """Where the coarsening samples two posteriors, the kept (more coarsened) one sets the bands and the first
    one's draws drive the model: the interpolant learns the first posterior's mean (its held-out error in
    metrics.json is measured against that mean, an identity), the draws are written to model_draws.npz and read
    back exactly, the report says so, and a study without the file it reports is damaged."""
    import os

    from kgmm_bayes.bayes.score import posterior_mean_score
    from kgmm_bayes.errors import InputError
    from kgmm_bayes.study import stages
    from kgmm_bayes.study.load import MODEL_DRAWS_FILE
    from kgmm_bayes.study.run import interpolant_heldout_error

    real = stages.choose_zeta
    tempered = []

    def coarser(*args, **kwargs):  # the bias asks for half the first posterior's zeta: a second posterior
        choice = real(*args, **kwargs)
        tempered.append(kwargs["tempered"])
        zeta = kwargs["tempered"] / 2
        return choice._replace(zeta=zeta, alpha=zeta * kwargs["snapshots"] / (1 - zeta))

    monkeypatch.setattr(stages, "choose_zeta", coarser)
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(-2.0, 0.5, 2000), rng.normal(1.0, 0.7, 2000)])[rng.permutation(4000)]
    result = kgmm_bayes.fit(x.reshape(4, -1, 1), settings={
        "partition": {"cells": 200}, "mixture": {"components": 3},
        "sampler": {"chains": 2, "warmup": 200, "draws": 200}, "score": {"max_draws": 200},
        "interpolant": {"hidden": [32, 32], "steps": 500},
        "langevin": {"particles": 100, "steps": 2000, "burn_in": 200}},
        out_dir=str(tmp_path / "fit"), seed=2)
    metrics, out = result.metrics, tmp_path / "fit"
    assert len(tempered) == 1
    assert metrics["langevin"]["drift_posterior"] == "first"
    assert metrics["langevin"]["drift_posterior_zeta"] == tempered[0]
    assert metrics["posterior"]["coarsening"]["zeta"] == pytest.approx(tempered[0] / 2, rel=1e-12)
    w, m, L = result.model_draws
    assert w.shape == (200, 3) and m.shape == (200, 3, 1) and L.shape == (200, 3, 1, 1)
    assert not np.allclose(m, result.draws[1])  # another posterior's draws
    z = result.zscore.forward(result.data.train)
    _, relative = interpolant_heldout_error(result.interpolant, result.model_draws, z)
    assert metrics["interpolant"]["heldout_relative_rms_error"] == pytest.approx(relative, rel=1e-9)
    pts = result.partition.points
    first_mean = posterior_mean_score(*result.model_draws, pts)
    kept_mean = posterior_mean_score(*result.draws, pts)
    learnt = np.asarray(result.interpolant(np.asarray(pts, np.float32)), np.float64)
    assert np.mean((learnt - first_mean) ** 2) < np.mean((learnt - kept_mean) ** 2)
    assert "from the first posterior's draws" in (out / "report.md").read_text()
    loaded = load_result(out)
    for a, b in zip(loaded.model_draws, result.model_draws):
        np.testing.assert_array_equal(a, b)
    os.remove(out / MODEL_DRAWS_FILE)
    with pytest.raises(InputError, match=MODEL_DRAWS_FILE):
        load_result(out)


def test_a_mixture_drift_study_trains_no_interpolant_and_its_result_says_so(tmp_path):
    """With the "mixture" drift no model runs on a network: ``[interpolant] train = "auto"`` trains none.  The folder
    has no interpolant.npz, metrics.json and the report say why, the study's timings have no interpolant stage, the
    folder loads, ``simulate`` with the study's settings and Langevin key (its default drift, the study's) reproduces
    the model's samples exactly, and asking for the interpolant is a one-line error naming it."""
    from kgmm_bayes.errors import InputError
    from kgmm_bayes.spec import trains_interpolant
    from kgmm_bayes.study.compare import bayesian_timings
    from kgmm_bayes.study.stages import study_keys

    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(-2.0, 0.5, 2000), rng.normal(1.0, 0.7, 2000)])[rng.permutation(4000)]
    settings = {"partition": {"cells": 200}, "mixture": {"components": 3},
                "sampler": {"chains": 2, "warmup": 200, "draws": 200}, "score": {"max_draws": 200},
                "interpolant": {"hidden": [32, 32], "steps": 500, "correction": "off"},
                "langevin": {"drift": "mixture", "particles": 100, "steps": 2000, "burn_in": 200}}
    out = tmp_path / "fit"
    result = kgmm_bayes.fit(x.reshape(4, -1, 1), settings=settings, out_dir=str(out), seed=2)
    metrics = result.metrics
    assert not trains_interpolant(result.spec) and result.interpolant is None
    assert not (out / "interpolant.npz").exists() and (out / "rom_samples.npy").exists()
    assert metrics["interpolant"]["trained"] is False and "drift = 'mixture'" in metrics["interpolant"]["why"]
    assert "interpolant" not in metrics["timings"] and "interpolant" not in bayesian_timings(metrics)
    assert bayesian_timings(metrics)["posterior"] == metrics["timings"]["posterior"]
    assert "- Interpolant: not trained, no model runs on it" in (out / "report.md").read_text()
    loaded = load_result(out)
    assert loaded.interpolant is None and loaded.metrics == metrics
    lg, run = result.spec.langevin, metrics["langevin"]
    assert run["drift"] == "mixture" and run["mobility"] == "identity"  # user data without an interval
    paths = loaded.simulate(lg.particles, run["steps"], run["dt"], burn_in=lg.burn_in, thin=run["thin"],
                            key=study_keys(2)[5])
    alive = np.all(np.isfinite(paths), axis=(0, 2))
    np.testing.assert_array_equal(paths[:, alive].reshape(-1, 1), result.rom_samples)
    for ask in (lambda r: r.score(np.zeros((2, 1)), drift="interpolant"), lambda r: r.interpolant_score(np.zeros((2, 1))),
                lambda r: r.simulate(10, 100, key=0, drift="interpolant")):
        for r in (result, loaded):
            with pytest.raises(InputError, match=r"this study trained no interpolant .*\[interpolant\] train = 'always'"):
                ask(r)
    # "always" trains it whatever the drift: the same model (the network drives nothing), now with the network, its
    # file, its errors and its band
    assert trains_interpolant(result.spec._replace(langevin=lg._replace(drift="interpolant")))
    settings["interpolant"]["train"] = "always"
    trained = kgmm_bayes.fit(x.reshape(4, -1, 1), settings=settings, out_dir=str(tmp_path / "always"), seed=2)
    assert trains_interpolant(trained.spec) and (tmp_path / "always" / "interpolant.npz").exists()
    np.testing.assert_array_equal(trained.rom_samples, result.rom_samples)
    assert trained.metrics["interpolant"]["heldout_rms_error"][0] > 0 and "interpolant" in trained.metrics["timings"]
    band = load_result(tmp_path / "always").score(np.array([[0.0], [1.0]]), drift="interpolant")
    np.testing.assert_array_less(band.lower, band.upper)
