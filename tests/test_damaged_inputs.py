"""Damaged and hostile inputs end in one-line InputErrors, never tracebacks: a damaged study
folder (load_result), the score command's arguments (score_to_file), bounded-memory scoring,
a CSV without newlines, hostile TOML specs and seeds out of jax.random.key's range."""
import json
import io
import os
import shutil
import warnings

import numpy as np
import pytest

import kgmm_bayes.data.trajectory as data_module
import kgmm_bayes.result as result_module
import kgmm_bayes.spec as spec_module
from kgmm_bayes import InputError, load_result, load_trajectory, run_study
from kgmm_bayes.study.load import score_to_file
from kgmm_bayes.bayes.score import band_with_bias, score_draws, summarize_scores
from kgmm_bayes.spec import SpecError, load_spec, spec_from_dict

TINY_STUDY = {
    "study": {"name": "tiny", "seed": 0},
    "data": {"system": "reduced_1d", "members": 4, "steps": 4000, "thin": 20},
    "partition": {"cells": 60},
    "mixture": {"components": 3},
    "sampler": {"chains": 2, "warmup": 50, "draws": 50},
    "score": {"max_draws": 50},
    "interpolant": {"hidden": [8, 8], "steps": 50},
    "langevin": {"particles": 50, "steps": 500, "burn_in": 50, "thin": 50},
}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "study"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a study this small reports r_hat and escapes
        run_study(spec_from_dict(TINY_STUDY), out_dir=str(out))
    return out


def with_score_bias(folder):
    """A valid local error field (16 blocks, 15 bumps, 8 draws' spread, 1-D) and the metrics that report it, as a study whose bumps'
    gap was significant has them (the tiny study's need not be)."""
    from kgmm_bayes.bayes.score_matching import BiasField, field_stats
    from kgmm_bayes.files import npz_bytes

    rng = np.random.default_rng(3)
    field = BiasField(np.linspace(-2, 2, 15)[:, None], 0.4, rng.normal(size=(16, 15, 1)), rng.normal(size=(8, 15, 1)))
    (folder / "score_bias.npz").write_bytes(npz_bytes(field_stats(field)))
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["posterior"]["score_bias"] = {"bumps": 15, "widened_fraction": 0.5, "mean_squared_bias": 0.1,
                                          "mean_squared_bias_clipped": 0.2}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return field


def with_model_draws(folder):
    """Valid first-posterior draws (5 of them) and the metrics that say they drove the model, as a study whose
    coarsening sampled two posteriors has them (the tiny study's need not)."""
    from kgmm_bayes.files import npz_bytes

    metrics = json.loads((folder / "metrics.json").read_text())
    k, d = metrics["partition"]["components"], metrics["data"]["dim"]
    draws = {"weights": np.full((5, k), 1.0 / k), "means": np.zeros((5, k, d)),
             "cov_chol": np.broadcast_to(np.eye(d), (5, k, d, d)).copy()}
    (folder / "model_draws.npz").write_bytes(npz_bytes(draws))
    metrics["langevin"]["drift_posterior"] = "first"
    (folder / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def study_copy(tiny_study, tmp_path):
    copy = tmp_path / "study"
    shutil.copytree(tiny_study, copy)
    if not (copy / "score_bias.npz").exists():
        with_score_bias(copy)
    if not (copy / "model_draws.npz").exists():
        with_model_draws(copy)
    return copy


def _one_line_error(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message
    return message


# --- damage to one file of a study folder -------------------------------------------------------

def _truncate(path):
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])


def _garbage(path):
    path.write_bytes(b"\x89garbage\x00\xff" * 100)


def _empty(path):
    path.write_bytes(b"")


def _rewrite_idata(path, **changes):
    """Rewrite posterior.nc with groups dropped (``None``) or changed (a function of the group)."""
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = az.from_netcdf(str(path))
        groups = {name: getattr(idata, name).load() for name in idata.groups()}
    for name, change in changes.items():
        groups[name] = None if change is None else change(groups[name])
    os.unlink(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        az.InferenceData(**{k: v for k, v in groups.items() if v is not None}).to_netcdf(str(path))


def _no_posterior(path):
    _rewrite_idata(path, posterior=None)


def _no_constant_data(path):
    _rewrite_idata(path, constant_data=None)


def _no_cov_chol(path):
    _rewrite_idata(path, posterior=lambda ds: ds.drop_vars("cov_chol"))


def _means_one_component_short(path):
    _rewrite_idata(path, posterior=lambda ds: ds.assign(means=ds["means"].isel(component=slice(0, 2))))


def _plain_netcdf(path):
    import xarray as xr

    os.unlink(path)
    xr.Dataset({"x": ("n", np.arange(3.0))}).to_netcdf(str(path), engine="h5netcdf")


def _json(text):
    def damage(path):
        path.write_text(text)
    return damage


def _bytes(payload):
    def damage(path):
        path.write_bytes(payload)
    return damage


def _npz(drop=(), **replace):
    def damage(path):
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files if k not in drop}
        arrays.update(replace)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        path.write_bytes(buf.getvalue())
    return damage


def _npy(value):
    def damage(path):
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=True)
        path.write_bytes(buf.getvalue())
    return damage


def _npz_instead_of_npy(path):
    buf = io.BytesIO()
    np.savez(buf, a=np.ones((3, 1)))
    path.write_bytes(buf.getvalue())


def _huge_header(path):
    """A valid header promising 10**11 rows, followed by four numbers."""
    buf = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**11, 1)}
    np.lib.format.write_array_header_1_0(buf, header)
    path.write_bytes(buf.getvalue() + np.ones(4).tobytes())


DAMAGE = [
    ("posterior.nc", _empty), ("posterior.nc", _garbage), ("posterior.nc", _truncate),
    ("posterior.nc", _no_posterior), ("posterior.nc", _no_constant_data), ("posterior.nc", _no_cov_chol),
    ("posterior.nc", _means_one_component_short), ("posterior.nc", _plain_netcdf),
    ("metrics.json", _empty), ("metrics.json", _json("{not json")), ("metrics.json", _json("[1, 2]")),
    ("metrics.json", _bytes(b'{"a": "\xff\xfe"}')), ("metrics.json", _json("[" * 100000 + "]" * 100000)),
    ("interpolant.npz", _empty), ("interpolant.npz", _garbage), ("interpolant.npz", _truncate),
    ("interpolant.npz", _npz(layer0_kernel=np.array([{"x": 1}], dtype=object))),
    ("interpolant.npz", _npz(drop=("layer1_kernel",))), ("interpolant.npz", _npz(drop=("sizes",))),
    ("interpolant.npz", _npz(layer0_kernel=np.ones((1, 9)))),
    ("interpolant.npz", _npz(sizes=np.array([1, 10**9, 1]))), ("interpolant.npz", _npz(sizes=np.array([2, 8, 8, 2]))),
    ("interpolant.npz", _npz(sizes=np.array(["a", "b"]))), ("interpolant.npz", _npy(np.ones(3))),
    ("interpolant.npz", _npz(final_loss=np.ones(3))),
    ("score_bias.npz", _empty), ("score_bias.npz", _garbage), ("score_bias.npz", _truncate),
    ("score_bias.npz", _npz(drop=("score_bias_coefficients",))), ("score_bias.npz", _npz(drop=("score_bias_width",))),
    ("score_bias.npz", _npz(score_bias_centres=np.ones((3, 2)))), ("score_bias.npz", _npz(score_bias_width=-1.0)),
    ("score_bias.npz", _npz(score_bias_coefficients=np.full((16, 15, 1), np.nan))),
    ("score_bias.npz", _npz(score_bias_coefficients=np.ones((2, 15, 1)))),
    ("score_bias.npz", _npz(score_bias_spread=np.ones((8, 14, 1)))),
    ("score_bias.npz", _npz(score_bias_spread=np.full((8, 15, 1), np.inf))),
    ("model_draws.npz", _empty), ("model_draws.npz", _garbage), ("model_draws.npz", _truncate),
    ("model_draws.npz", _npz(drop=("means",))), ("model_draws.npz", _npz(means=np.zeros((5, 1, 7)))),
    ("model_draws.npz", _npz(cov_chol=np.full((5, 1, 1, 1), np.nan))),
    ("model_draws.npz", _npz(weights=np.array([{"x": 1}], dtype=object))),
    ("rom_samples.npy", _empty), ("rom_samples.npy", _garbage), ("rom_samples.npy", _truncate),
    ("rom_samples.npy", _npy(np.array([{"x": 1}, None], dtype=object))), ("rom_samples.npy", _npy(np.ones(5))),
    ("rom_samples.npy", _npy(np.ones((5, 2)))), ("rom_samples.npy", _npy(np.array([["a"]]))),
    ("rom_samples.npy", _npz_instead_of_npy), ("rom_samples.npy", _huge_header),
]


@pytest.mark.parametrize("name, damage", DAMAGE, ids=[f"{n}-{d.__name__}" for n, d in DAMAGE])
def test_damaged_study_file(study_copy, name, damage):
    damage(study_copy / name)
    with pytest.raises(InputError) as excinfo:
        load_result(study_copy)
    _one_line_error(excinfo, name, "is damaged or not a kgmm-bayes file", str(study_copy))


def test_model_draws_must_match_what_the_metrics_say_drove_the_model(study_copy):
    """The first posterior's draws drive Result.simulate: a lost file, or a file the metrics do not account for,
    is damage, not a silent switch of the model's drift."""
    loaded = load_result(study_copy)
    assert loaded.model_draws is not None and loaded.model_draws[1].shape[0] == 5
    metrics = json.loads((study_copy / "metrics.json").read_text())
    metrics["langevin"]["drift_posterior"] = "kept"
    (study_copy / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(InputError) as excinfo:
        load_result(study_copy)
    _one_line_error(excinfo, "model_draws.npz", "did not come from")
    os.unlink(study_copy / "model_draws.npz")
    assert load_result(study_copy).model_draws is None
    metrics["langevin"]["drift_posterior"] = "first"
    (study_copy / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(InputError) as excinfo:
        load_result(study_copy)
    _one_line_error(excinfo, "model_draws.npz", "missing")


@pytest.mark.parametrize("box", [None, "wide", -1.0, True, float("inf")])
def test_an_auto_box_needs_the_box_the_study_resolved(study_copy, box):
    """[langevin] box = "auto" is resolved from the data when the study runs; Result.simulate reads it back from
    metrics.json: a lost or bad one is damage, not a silent box of 10."""
    assert load_result(study_copy).spec.langevin.box == json.loads((study_copy / "metrics.json").read_text())[
        "langevin"]["box"] >= 10.0
    metrics = json.loads((study_copy / "metrics.json").read_text())
    if box is None:
        del metrics["langevin"]["box"]
    else:
        metrics["langevin"]["box"] = box
    (study_copy / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(InputError) as excinfo:
        load_result(study_copy)
    _one_line_error(excinfo, "metrics.json", "langevin box")


def test_a_lost_score_bias_file_is_damage_when_the_metrics_report_one(study_copy):
    os.unlink(study_copy / "score_bias.npz")  # the band would silently lose its local bias
    with pytest.raises(InputError) as excinfo:
        load_result(study_copy)
    _one_line_error(excinfo, "score_bias.npz", "missing")


def test_folder_holding_a_folder_instead_of_a_file(study_copy):
    os.unlink(study_copy / "posterior.nc")
    os.mkdir(study_copy / "posterior.nc")
    with pytest.raises(InputError) as excinfo:
        load_result(study_copy)
    _one_line_error(excinfo, "posterior.nc")


# --- bounded-memory scoring ---------------------------------------------------------------------

def test_chunked_score_equals_one_evaluation(study_copy):
    result = load_result(study_copy)
    x = np.random.default_rng(1).normal(size=(1037, 1)) * 2  # not a multiple of any chunk
    scores, logps = score_draws(*result.draws, result.zscore.forward(x), chunk=len(x))
    whole = summarize_scores(scores, logps, 0.8)
    assert result.score_bias is not None  # the band is at least the posterior mean's local bias wide
    whole = band_with_bias(whole, result.score_bias.squared(result.zscore.forward(x)))
    assert np.any(whole.upper - whole.lower > summarize_scores(scores, logps, 0.8).upper
                  - summarize_scores(scores, logps, 0.8).lower)  # the field widens the band somewhere
    for chunk in (7, 64, None):
        chunked = result.score(x, band=0.8, chunk=chunk)
        for field in ("mean", "std", "lower", "upper", "predictive"):
            np.testing.assert_allclose(getattr(chunked, field), getattr(whole, field) / result.zscore.std,
                                       rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(result.score_draws(x, chunk=100), scores / result.zscore.std, rtol=1e-12, atol=1e-12)
    assert result.score(x[:0]).mean.shape == (0, 1)


def test_score_chunk_bounds_memory(monkeypatch):
    draws = (np.ones((1000, 10)), np.ones((1000, 10, 2)), np.ones((1000, 10, 2, 2)))
    chunk = result_module.score_chunk(10**6, draws)
    assert chunk & (chunk - 1) == 0 and 1000 * chunk * 10 * 2 <= result_module.SCORE_CHUNK_ELEMENTS
    assert result_module.score_chunk(5, draws) == 8  # small inputs: little padding
    monkeypatch.setattr(result_module, "SCORE_CHUNK", 16)
    assert result_module.score_chunk(10**6, (np.ones((2, 1)), np.ones((2, 1, 1)), None)) == 16


# --- score_to_file ------------------------------------------------------------------------------

@pytest.fixture
def points(tmp_path):
    path = tmp_path / "points.npy"
    np.save(path, np.linspace(-2, 2, 11)[:, None])
    return path


def test_score_to_file_writes_scores(tiny_study, points, tmp_path):
    out = tmp_path / "scores.npz"
    assert score_to_file(tiny_study, points, out, band=0.8) == 11
    with np.load(out) as f:
        assert sorted(f.files) == ["lower", "mean", "predictive", "std", "upper"]
        assert f["mean"].shape == (11, 1) and np.all(f["lower"] <= f["upper"])


def test_score_to_file_refusals(tiny_study, points, tmp_path):
    before = sorted(os.listdir(tiny_study))
    cases = [
        (dict(out_path=tmp_path / "scores.txt"), "--out must name a .npz file"),
        (dict(out_path=tmp_path / "missing" / "scores.npz"), "does not exist"),
        (dict(out_path=tiny_study / "metrics.npz"), "lies inside the study folder"),
        (dict(out_path=tiny_study / "figures" / "s.npz"), "lies inside the study folder"),
        (dict(points_path=tmp_path / "points.csv"), "points file must be .npy"),
        (dict(points_path=tmp_path / "absent.npy"), "does not exist"),
    ]
    os.symlink(tiny_study, tmp_path / "link")
    cases.append((dict(out_path=tmp_path / "link" / "s.npz"), "lies inside the study folder"))
    np.save(tmp_path / "empty.npy", np.zeros((0, 1)))
    cases.append((dict(points_path=tmp_path / "empty.npy"), "holds no points"))
    np.save(tmp_path / "scalar.npy", np.float64(1.0))
    cases.append((dict(points_path=tmp_path / "scalar.npy"), "must hold an array (n, d)"))
    np.save(tmp_path / "nan.npy", np.array([[np.nan]]))
    cases.append((dict(points_path=tmp_path / "nan.npy"), "NaN"))
    np.save(tmp_path / "wide.npy", np.zeros((3, 2)))
    cases.append((dict(points_path=tmp_path / "wide.npy"), "points must have shape (n, 1)"))
    cases.append((dict(band=1.5), "band must lie strictly between 0 and 1"))
    cases.append((dict(study_dir=tmp_path / "nostudy"), "does not exist"))
    for change, text in cases:
        args = dict(study_dir=tiny_study, points_path=points, out_path=tmp_path / "scores.npz", band=0.9)
        args.update(change)
        with pytest.raises(InputError) as excinfo:
            score_to_file(**args)
        _one_line_error(excinfo, text)
        assert not (tmp_path / "scores.npz").exists()
    assert sorted(os.listdir(tiny_study)) == before


# --- data, specs, seeds -------------------------------------------------------------------------

def test_csv_without_newlines_is_refused_after_a_bounded_read(tmp_path, monkeypatch):
    path = tmp_path / "one_line.csv"
    path.write_text(",".join(["1.0"] * 1_000_000))  # 4 MB, no newline
    monkeypatch.setattr(data_module, "MAX_CSV_LINE", 1000)
    with pytest.raises(InputError) as excinfo:
        load_trajectory(path)
    _one_line_error(excinfo, "one_line.csv", "line 1 is longer than 1000 characters")
    short = tmp_path / "short.csv"
    short.write_text("a,b\n" + "1.0,2.0\n" * 5)
    assert load_trajectory(short).shape == (5, 2)


def test_npz_named_npy_is_refused(tmp_path):
    path = tmp_path / "x.npy"
    _npz_instead_of_npy(path)
    with pytest.raises(InputError) as excinfo:
        load_trajectory(path)
    _one_line_error(excinfo, "x.npy", ".npz archive")


BASE_SPEC = '[study]\nname = "tiny"\nseed = 0\n[data]\nsystem = "reduced_1d"\n'


@pytest.mark.parametrize("text, message", [
    ("a = " + "[" * 100000 + "]" * 100000, "nested too deeply"),
    ("a = " + "{b = " * 100000 + "1" + "}" * 100000, "nested too deeply"),
    ("[study]\nname" + ".a" * 100000 + " = 1", "dots outside strings"),
    ("\n".join(f"k{i}" + ".a" * 600 + " = 1" for i in range(3)), "dots outside strings"),
    ("[study]\nseed = " + "9" * 5000, "is not valid TOML"),
    ("# " + "x" * (2**20 + 1), "is larger than"),
    ('a = "\x00"', "is not valid TOML"),
    (b'[study]\nname = "caf\xe9"\n', "is not UTF-8 text"),
    (BASE_SPEC.replace("seed = 0", f"seed = {2**62}"), "[study] seed must be <= 2**62 - 1 = 4611686018427387903"),
    (BASE_SPEC.replace("seed = 0", f"seed = {2**64}"), "[study] seed must be <= 2**62 - 1"),
    (BASE_SPEC + "[mixture]\nselect_components = [[1], [2]]\n", "[mixture] select_components must be a list"),
    (BASE_SPEC.replace('"tiny"', "[" + ", ".join(["1"] * 10000) + "]"), "[study] name must be a string"),
])
def test_hostile_spec(tmp_path, text, message):
    path = tmp_path / "hostile.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SpecError) as excinfo:
        load_spec(path)
    got = _one_line_error(excinfo, message)
    assert len(got) < 400, got
    if "seed" not in message and "[study] name" not in message and "select_components" not in message:
        assert "hostile.toml" in got


def test_ordinary_specs_still_load(tmp_path):
    path = tmp_path / "ok.toml"
    text = BASE_SPEC.replace("seed = 0", f"seed = {2**62 - 1}\n" + 'description = "a.b.c # not a comment \\" still."')
    path.write_bytes(b"\xef\xbb\xbf" + text.encode() + b"[sampler]\ntarget_accept = 0.85 # 0.9.9.9\n")
    spec = load_spec(path)
    assert spec.study.seed == 2**62 - 1 and spec.sampler.target_accept == 0.85
    assert spec_module._dots_outside_strings(path.read_text(encoding="utf-8-sig")) == 1
    import jax

    jax.random.key(spec.study.seed)  # the bound is what jax accepts
    with pytest.raises(OverflowError):
        jax.random.key(2**63)
