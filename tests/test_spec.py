"""Study specs (kgmm_bayes.spec): shipped models, defaults, path resolution and rejected specs."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kgmm_bayes.data import InputError
from kgmm_bayes.spec import (
    DataSection,
    InterpolantSection,
    LangevinSection,
    MetricsSection,
    MixtureSection,
    PartitionSection,
    SamplerSection,
    ScoreSection,
    Spec,
    SpecError,
    StudySection,
    load_spec,
    spec_from_dict,
)
from kgmm_bayes.spec import SECTIONS  # every section a spec may have ([baselines] and [ensemble] too)

MODELS = Path(__file__).parents[1] / "models"
MODEL_FILES = sorted(MODELS.glob("*.toml"))
SECTION_CLASSES = {
    "study": StudySection, "data": DataSection, "partition": PartitionSection, "mixture": MixtureSection,
    "sampler": SamplerSection, "score": ScoreSection, "interpolant": InterpolantSection,
    "langevin": LangevinSection, "metrics": MetricsSection,
}
SYSTEM = {"data": {"system": "reduced_1d"}}


def _one_line(message: str) -> bool:
    return bool(message) and "\n" not in message and message == message.strip()


# --------------------------------------------------------------------------- shipped specs

def test_models_folder_has_specs():
    assert {p.stem for p in MODEL_FILES} >= {"reduced_1d", "four_well_2d", "lorenz63"}


@pytest.mark.parametrize("path", MODEL_FILES, ids=[p.stem for p in MODEL_FILES])
def test_model_spec_loads(path):
    spec = load_spec(path)
    assert isinstance(spec, Spec)
    assert spec.study.name == path.stem
    assert spec.data.system == path.stem and spec.data.path is None
    assert spec.partition.cells >= spec.mixture.components
    for name, cls in SECTION_CLASSES.items():
        assert isinstance(getattr(spec, name), cls)


def test_model_spec_values_are_read():
    spec = load_spec(MODELS / "lorenz63.toml")
    assert spec.mixture.components == 32
    assert spec.interpolant.hidden == (128, 64)
    assert spec.langevin.thin == 200


def test_default_study_equals_reduced_1d_spec():
    default = load_spec(None)
    shipped = load_spec(MODELS / "reduced_1d.toml")
    for name in SECTION_CLASSES:
        if name == "study":
            assert default.study._replace(description="") == shipped.study._replace(description="")
        else:
            assert getattr(default, name) == getattr(shipped, name), name
    assert default.study.name == "reduced_1d"


def test_default_study_is_same_when_loaded_by_relative_path(monkeypatch):
    monkeypatch.chdir(MODELS.parent)
    assert load_spec("models/reduced_1d.toml") == load_spec(MODELS / "reduced_1d.toml")


# --------------------------------------------------------------------------- minimal spec and paths

def test_minimal_spec_resolves_path_and_uses_defaults(tmp_path, monkeypatch):
    folder = tmp_path / "specs"
    folder.mkdir()
    spec_file = folder / "mini.toml"
    spec_file.write_text('[data]\npath = "traj.npy"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths resolve from the spec's folder, not the cwd
    spec = load_spec(spec_file)
    expected = os.path.abspath(os.path.join(folder, "traj.npy"))
    assert os.path.isabs(spec.data.path)
    assert spec.data.path == expected
    assert spec.data == DataSection(path=expected)
    assert spec.study == StudySection(name="mini")  # the default name is the file's stem
    for name, cls in SECTION_CLASSES.items():
        if name not in ("study", "data"):
            assert getattr(spec, name) == cls(), name


def test_relative_spec_path_and_parent_data_path(tmp_path, monkeypatch):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "s.toml").write_text('[data]\npath = "../data/traj.csv"\n')
    monkeypatch.chdir(tmp_path)
    spec = load_spec("specs/s.toml")
    assert spec.data.path == os.path.join(os.path.abspath(tmp_path), "data", "traj.csv")


def test_absolute_data_path_kept(tmp_path):
    target = os.path.abspath(tmp_path / "abs.npy")
    (tmp_path / "s.toml").write_text(f"[data]\npath = '{target}'\n")  # TOML literal string
    assert load_spec(tmp_path / "s.toml").data.path == target


def test_int_given_for_float_is_converted():
    spec = spec_from_dict({**SYSTEM, "mixture": {"dirichlet_alpha": 3}, "interpolant": {"hidden": [8]}})
    assert spec.mixture.dirichlet_alpha == 3.0 and isinstance(spec.mixture.dirichlet_alpha, float)
    assert spec.interpolant.hidden == (8,)


# --------------------------------------------------------------------------- bad specs

SYS = '[data]\nsystem = "reduced_1d"\n'

BAD_SPECS = [
    ("study-name-with-path", '[study]\nname = "../elsewhere"\n[data]\nsystem = "reduced_1d"\n', ["[study] name"]),
    ("study-name-empty", '[study]\nname = ""\n[data]\nsystem = "reduced_1d"\n', ["[study] name"]),
    ("unknown-section", SYS + "[bogus]\nx = 1\n", ["bogus"]),
    ("unknown-key", SYS + "[sampler]\nbogus_key = 1\n", ["bogus_key", "[sampler]"]),
    ("section-not-table", "study = 3\n" + SYS, ["[study]"]),
    ("string-for-int", SYS + '[sampler]\ndraws = "500"\n', ["[sampler] draws"]),
    ("float-for-int", SYS + "[sampler]\ndraws = 1.5\n", ["[sampler] draws"]),
    ("integral-float-for-int", SYS + "[sampler]\nwarmup = 500.0\n", ["[sampler] warmup"]),
    ("bool-for-int", SYS + "[sampler]\nchains = true\n", ["[sampler] chains"]),
    ("int-for-bool", SYS + "[partition]\ncoreset = 1\n", ["[partition] coreset"]),
    ("int-for-string", "[study]\nname = 3\n" + SYS, ["[study] name"]),
    ("hidden-negative", SYS + "[interpolant]\nhidden = [128, -64]\n", ["[interpolant] hidden"]),
    ("hidden-empty", SYS + "[interpolant]\nhidden = []\n", ["[interpolant] hidden"]),
    ("hidden-float", SYS + "[interpolant]\nhidden = [128.0]\n", ["[interpolant] hidden"]),
    ("hidden-not-list", SYS + "[interpolant]\nhidden = 128\n", ["[interpolant] hidden"]),
    ("negative-draws", SYS + "[sampler]\ndraws = -1\n", ["[sampler] draws"]),
    ("negative-extend", SYS + "[sampler]\nextend = -1\n", ["[sampler] extend"]),
    ("zero-components", SYS + "[mixture]\ncomponents = 0\n", ["[mixture] components"]),
    ("split-unknown", SYS + '[partition]\nsplit = "largest"\n', ["[partition] split", "'inertia'", "'largest'"]),
    ("chain-starts-unknown", SYS + '[sampler]\nchain_starts = "random"\n', ["[sampler] chain_starts", "spread"]),
    ("distinct-without-map", SYS + '[sampler]\nchain_starts = "distinct"\nmap_starts = 0\n',
     ["[sampler] chain_starts", "map_starts > 0"]),
    ("first-posterior-unknown", SYS + '[sampler]\nfirst_posterior = "vi"\n', ["[sampler] first_posterior", "'laplace'"]),
    ("laplace-first-without-map", SYS + '[sampler]\nfirst_posterior = "laplace"\nmap_starts = 0\n',
     ["[sampler] first_posterior", "map_starts > 0"]),
    ("kept-posterior-unknown", SYS + '[sampler]\nkept_posterior = "vi"\n', ["[sampler] kept_posterior", "'laplace'"]),
    ("interpolant-train-unknown", SYS + '[interpolant]\ntrain = "never"\n', ["[interpolant] train", "'always'"]),
    ("laplace-kept-without-map", SYS + '[sampler]\nkept_posterior = "laplace"\nmap_starts = 0\n',
     ["[sampler] kept_posterior", "map_starts > 0"]),
    ("distinct-without-coreset", SYS + '[partition]\ncoreset = false\n[sampler]\nchain_starts = "distinct"\n',
     ["chain_starts", "coreset = true"]),
    ("variables-repeated", '[data]\nsystem = "reduced_1d"\nvariables = ["u", "u"]\n', ["[data] variables"]),
    ("negative-seed", "[study]\nseed = -1\n" + SYS, ["[study] seed"]),
    ("both-system-and-path", '[data]\nsystem = "reduced_1d"\npath = "x.npy"\n', ["[data]", "system", "path"]),
    ("neither-system-nor-path", '[study]\nname = "x"\n', ["[data]", "system", "path"]),
    ("unknown-system", '[data]\nsystem = "no_such_system"\n', ["[data] system", "no_such_system"]),
    ("heldout-one", '[data]\npath = "x.npy"\nheldout_fraction = 1.0\n', ["[data] heldout_fraction"]),
    ("heldout-negative", '[data]\npath = "x.npy"\nheldout_fraction = -0.1\n', ["[data] heldout_fraction"]),
    ("target-accept-one", SYS + "[sampler]\ntarget_accept = 1.0\n", ["[sampler] target_accept"]),
    ("band-zero", SYS + "[score]\nband = 0\n", ["[score] band"]),
    ("nan-float", SYS + "[mixture]\nlkj_eta = nan\n", ["[mixture] lkj_eta"]),
    ("inf-float", SYS + "[langevin]\ndt = inf\n", ["[langevin] dt"]),
    ("negative-float", SYS + "[langevin]\nbox = -1.0\n", ["[langevin] box"]),
    ("box-word", SYS + '[langevin]\nbox = "wide"\n', ["[langevin] box", "auto", "wide"]),
    ("box-nan", SYS + "[langevin]\nbox = nan\n", ["[langevin] box"]),
    ("drift-foo", SYS + '[langevin]\ndrift = "foo"\n', ["[langevin] drift", "foo"]),
    ("cells-below-components", SYS + "[partition]\ncells = 5\n[mixture]\ncomponents = 6\n",
     ["[partition] cells", "[mixture] components"]),
    ("invalid-toml", "[data\nsystem = 'reduced_1d'\n", ["spec.toml", "toml"]),
    ("duplicate-key", SYS + 'system = "lorenz63"\n', ["spec.toml", "toml"]),
    ("not-utf8", b"[data]\nsystem = \"\xff\xfe\"\n", ["spec.toml", "toml"]),
    ("folder", None, ["spec.toml", "folder"]),
    ("missing", None, ["spec.toml", "does not exist"]),
]


def write_bad_spec(path, case_id, text):
    """Put a BAD_SPECS case at ``path``: a folder, raw bytes, text, or nothing (missing)."""
    if case_id == "folder":
        path.mkdir()
    elif isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)


@pytest.mark.parametrize("case_id, text, expected", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_raises_one_line_spec_error(tmp_path, case_id, text, expected):
    path = tmp_path / "spec.toml"
    write_bad_spec(path, case_id, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert isinstance(info.value, InputError)
    message = str(info.value)
    assert _one_line(message), message
    for part in expected:
        assert part.lower() in message.lower(), (part, message)


def test_spec_from_dict_rejects_non_table():
    with pytest.raises(SpecError):
        spec_from_dict(["data"])


def test_data_given_excludes_system_and_path():
    spec = spec_from_dict({}, data_given=True)
    assert spec.data.system is None and spec.data.path is None
    with pytest.raises(SpecError, match=r"\[data\]"):
        spec_from_dict(SYSTEM, data_given=True)


# --------------------------------------------------------------------------- property-based

POSITIVE_INT_FIELDS = [
    ("data", "members"), ("data", "steps"), ("data", "thin"), ("partition", "cells"),
    ("mixture", "components"), ("sampler", "chains"), ("sampler", "warmup"), ("sampler", "draws"),
    ("sampler", "max_tree_depth"), ("score", "max_draws"), ("interpolant", "steps"),
    ("langevin", "particles"), ("langevin", "steps"), ("langevin", "thin"), ("metrics", "grid_points"),
]
NON_NEGATIVE_INT_FIELDS = [("study", "seed"), ("data", "burn_in"), ("langevin", "burn_in"), ("langevin", "mixture_draws")]
FAST = settings(max_examples=50, deadline=None, database=None)


def _raw_with(section, key, value):
    raw = {"data": {"system": "reduced_1d"}}
    raw.setdefault(section, {})[key] = value
    # keep the cross-check cells >= components satisfied whatever the value
    if (section, key) == ("partition", "cells"):
        raw["mixture"] = {"components": 1}
    if (section, key) == ("mixture", "components"):
        raw["partition"] = {"cells": max(value, 1)}
    return raw


@FAST
@given(field=st.sampled_from(POSITIVE_INT_FIELDS), value=st.integers(min_value=-10**6, max_value=10**12))
def test_positive_int_fields(field, value):
    section, key = field
    raw = _raw_with(section, key, value)
    if value > 0:
        spec = spec_from_dict(raw)
        assert getattr(getattr(spec, section), key) == value
        # nothing else moved: every other field of that section keeps its default
        skip = {key, "system"}
        others = {k: v for k, v in getattr(spec, section)._asdict().items() if k not in skip}
        defaults = {k: v for k, v in SECTION_CLASSES[section]()._asdict().items() if k not in skip}
        assert others == defaults
    else:
        with pytest.raises(SpecError) as info:
            spec_from_dict(raw)
        assert f"[{section}] {key}" in str(info.value) and _one_line(str(info.value))


@FAST
@given(field=st.sampled_from(NON_NEGATIVE_INT_FIELDS), value=st.integers(min_value=-10**6, max_value=10**12))
def test_non_negative_int_fields(field, value):
    section, key = field
    raw = _raw_with(section, key, value)
    if value >= 0:
        assert getattr(getattr(spec_from_dict(raw), section), key) == value
    else:
        with pytest.raises(SpecError, match=rf"\[{section}\] {key}"):
            spec_from_dict(raw)


@FAST
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_open_unit_float(value):
    raw = _raw_with("sampler", "target_accept", value)
    if math.isfinite(value) and 0 < value < 1:
        assert spec_from_dict(raw).sampler.target_accept == value
    else:
        with pytest.raises(SpecError, match=r"\[sampler\] target_accept"):
            spec_from_dict(raw)


@FAST
@given(name=st.text(max_size=20).filter(lambda s: s not in SECTIONS))  # hypothesis tries the source's strings too
def test_unknown_section_always_rejected(name):
    raw = {"data": {"system": "reduced_1d"}, name: {}}
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw)
    assert _one_line(str(info.value)) and repr(name) in str(info.value)


@FAST
@given(section=st.sampled_from(sorted(SECTION_CLASSES)), key=st.text(max_size=20))
def test_unknown_key_always_rejected(section, key):
    assume(key not in SECTION_CLASSES[section]._fields)
    raw = {"data": {"system": "reduced_1d"}}
    raw.setdefault(section, {})[key] = 1
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw)
    assert _one_line(str(info.value)) and f"[{section}]" in str(info.value)


def test_sampler_section_defaults_match_sampler_config():
    """The [sampler] section and the sampler's own config must not drift apart."""
    from kgmm_bayes.bayes.sampler import SamplerConfig
    from kgmm_bayes.spec import SamplerSection

    shared = set(SamplerSection._fields) & set(SamplerConfig._fields)
    assert shared == set(SamplerSection._fields)  # every spec key reaches the sampler
    for name in shared:
        assert SamplerSection._field_defaults[name] == SamplerConfig._field_defaults[name], name


def test_overrides_replace_single_keys_and_are_validated():
    spec = load_spec(MODELS / "lorenz63.toml", overrides={"sampler": {"draws": 200}, "ensemble": {"members": 0}})
    assert spec.sampler.draws == 200 and spec.sampler.warmup == 250  # the file's other keys kept
    assert spec.mixture.components == 32 and spec.ensemble.members == 0
    assert load_spec(None, overrides={"mixture": {"components": 4}}).mixture.components == 4
    assert load_spec(None, overrides={"mixture": {"components": 4}}).data.system == "reduced_1d"
    with pytest.raises(SpecError, match=r"\[sampler\] draws must be"):
        load_spec(MODELS / "lorenz63.toml", overrides={"sampler": {"draws": 0}})
    with pytest.raises(SpecError, match="unknown key"):
        load_spec(None, overrides={"sampler": {"drawz": 10}})
    with pytest.raises(SpecError, match=r"override of \[sampler\] must be a table"):
        load_spec(None, overrides={"sampler": 10})
    assert load_spec(MODELS / "lorenz63.toml") == load_spec(MODELS / "lorenz63.toml", overrides={})
    assert load_spec(None, overrides={"sampler": {"metric": "dense"}}).sampler.metric == "dense"
    with pytest.raises(SpecError, match=r"\[sampler\] metric must be 'auto', 'diagonal', 'dense' or 'laplace'"):
        load_spec(None, overrides={"sampler": {"metric": "Dense"}})
    with pytest.raises(SpecError, match=r"dense_mass = true contradicts metric = 'diagonal'"):
        load_spec(None, overrides={"sampler": {"metric": "diagonal", "dense_mass": True}})
    with pytest.raises(SpecError, match=r"dense_mass = true contradicts metric = 'laplace'"):
        load_spec(None, overrides={"sampler": {"metric": "laplace", "dense_mass": True}})


def test_k_is_10_for_a_system_and_chosen_from_the_data_for_user_data(tmp_path):
    from kgmm_bayes.study.checks import AUTO_CANDIDATES, auto_components, screening_spec

    assert spec_from_dict({"data": {"system": "four_well_2d"}}).mixture.components == 10
    user = spec_from_dict({"data": {"path": str(tmp_path / "x.npy")}})
    assert user.mixture.components is None
    # 4800 snapshots in 2D: every candidate has >= 20 snapshots per parameter (6K - 1 parameters)
    chosen = auto_components(user, 4800, 2)
    assert chosen.mixture.select_components == AUTO_CANDIDATES == (4, 8, 16, 32)
    # 1000 snapshots in 3D: 10K - 1 parameters; K = 4 is the only one with 20 per parameter
    small = auto_components(user, 1000, 3)
    assert small.mixture.components == 4 and small.mixture.select_components == ()
    # fewer cells than 10 per component rule out the large K
    few_cells = auto_components(user._replace(partition=user.partition._replace(cells=100)), 4800, 2)
    assert few_cells.mixture.select_components == (4, 8)
    given = spec_from_dict({"data": {"path": str(tmp_path / "x.npy")}, "mixture": {"components": 6}})
    assert auto_components(given, 4800, 2) == given
    quick = screening_spec(user)
    assert (quick.sampler.warmup, quick.sampler.draws) == (200, 200) and quick.sampler.chains == user.sampler.chains


def test_an_auto_box_is_twice_the_training_data_s_largest_z_and_at_least_10():
    import types

    import numpy as np

    from kgmm_bayes.data import ZScore
    from kgmm_bayes.data.stream import _moments
    from kgmm_bayes.data.trajectory import StudyData
    from kgmm_bayes.study.checks import resolved_box

    spec = spec_from_dict({"data": {"system": "triad_3d"}})
    assert spec.langevin.box == "auto"
    rng = np.random.default_rng(0)
    train = rng.normal(size=(500, 3)) * [1.0, 2.0, 0.5] + [3.0, -1.0, 0.0]
    train[17, 1] = 30.0  # a heavy tail in coordinate 1: its z there is the largest
    zscore = ZScore.fit(train)
    z17 = (30.0 - zscore.mean[1]) / zscore.std[1]
    data = StudyData(train, train, zscore)
    assert z17 > 10 and resolved_box(spec, data).langevin.box == pytest.approx(2 * z17, rel=1e-14)
    # streamed data: every training snapshot's minima and maxima from the first pass give the same box
    streamed = StudyData(train[100:150], train[100:150], zscore,  # a sample without the outlier (row 17)
                         stream=types.SimpleNamespace(scan=types.SimpleNamespace(train=_moments(train))))
    assert resolved_box(spec, streamed).langevin.box == resolved_box(spec, data).langevin.box
    # Gaussian data reach |z| of about 3-4: the box stays at 10; a number is kept as it is
    calm = StudyData(train[:, [0, 2]], train[:, [0, 2]], ZScore.fit(train[:, [0, 2]]))
    assert resolved_box(spec, calm).langevin.box == 10.0
    fixed = spec_from_dict({"data": {"system": "triad_3d"}, "langevin": {"box": 4}})
    assert fixed.langevin.box == 4.0 and resolved_box(fixed, data) == fixed


def test_a_study_s_identity_leaves_out_the_sections_only_compare_reads():
    # [baselines] (compare's alone) does not make another study: a study folder accepts the same study run with
    # other baselines or model runs; any section the study reads does
    base = {"data": {"system": "reduced_1d"}}
    plain = spec_from_dict(base)
    assert plain.identity() == spec_from_dict({**base, "baselines": {"model_runs": 5, "sigma": 0.1}}).identity()
    assert "baselines" not in plain.identity() and "baselines" in plain.to_dict()
    assert plain.identity() != spec_from_dict({**base, "sampler": {"draws": 300}}).identity()


def test_a_key_added_later_leaves_the_identity_of_older_folders_alone_at_its_default():
    # [partition] split came after study folders were written: at "size" (what they ran) it is not in the identity
    # a folder's study is checked against; any other value makes another study
    base = {"data": {"system": "reduced_1d"}}
    plain = spec_from_dict(base)
    assert plain.partition.split == "size" and "split" not in plain.identity()["partition"]
    assert plain.identity() == spec_from_dict({**base, "partition": {"split": "size"}}).identity()
    inertia = spec_from_dict({**base, "partition": {"split": "inertia"}})
    assert inertia.identity()["partition"]["split"] == "inertia" and inertia.identity() != plain.identity()
    # the same for compare's and calibrate's folders (to_dict) and the stage keys (section_json): the partition
    # section at "size" reads as it did before the key existed
    assert plain.to_dict()["partition"] == {"cells": 2000, "coreset": True}
    assert plain.section_json("partition") == '{"partition": {"cells": 2000, "coreset": true}}'
    assert '"split": "inertia"' in inertia.section_json("partition") and "split" in inertia.to_dict()["partition"]
    # [sampler] warm_start (true: the computation before the key existed) likewise; false is part of the identity
    assert plain.sampler.warm_start is True and "warm_start" not in plain.section_json("sampler")
    cold = spec_from_dict({**base, "sampler": {"warm_start": False}})
    assert cold.identity()["sampler"]["warm_start"] is False and cold.identity() != plain.identity()
    assert '"warm_start": false' in cold.section_json("sampler")
    with pytest.raises(SpecError, match=r"warm_start must be true or false"):
        spec_from_dict({**base, "sampler": {"warm_start": "no"}})
    # [sampler] kept_posterior at "nuts" (what ran before the key existed) likewise
    assert plain.sampler.kept_posterior == "nuts" and "kept_posterior" not in plain.section_json("sampler")
    assert "kept_posterior" not in plain.identity()["sampler"]
    kept = spec_from_dict({**base, "sampler": {"kept_posterior": "laplace"}})
    assert kept.identity()["sampler"]["kept_posterior"] == "laplace" and kept.identity() != plain.identity()
    # [interpolant] train at "auto" likewise (before it, a study trained its network whatever the drift; at "auto" a
    # "mixture" drift study trains none: the folder's study is the same, its posterior and model read back)
    assert plain.interpolant.train == "auto" and "train" not in plain.section_json("interpolant")
    always = spec_from_dict({**base, "interpolant": {"train": "always"}})
    assert always.identity()["interpolant"]["train"] == "always" and always.identity() != plain.identity()


def test_the_spec_s_split_values_are_the_partition_s():
    from kgmm_bayes.partition import SPLITS
    from kgmm_bayes.spec import SPLIT_VALUES
    assert SPLIT_VALUES == tuple(SPLITS)


def test_the_default_study_is_the_shipped_reduced_1d_spec():
    # `kgmm-bayes run` without a spec runs DEFAULT_STUDY: the same study as models/reduced_1d.toml (only the
    # description, which changes no number, differs)
    default, shipped = load_spec(None), load_spec("reduced_1d")
    assert default._replace(study=shipped.study) == shipped
    assert default.mixture.components == shipped.mixture.components == 8
