"""The console script on bad input: exit status 2, one ``kgmm-bayes: error:`` line, no traceback,
and an existing output folder left byte for byte as it was.

Each case runs ``python -m kgmm_bayes.cli`` in a subprocess (a few seconds of imports each);
every case must fail before any sampling.  ``run`` cases pass ``--quiet`` so that stderr holds
nothing but the error; the default (progress) mode is checked separately at the end.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

TIMEOUT = 240  # generous: a loaded 2-core machine; the cases themselves stop within seconds
SYSTEM_SPEC = '[data]\nsystem = "reduced_1d"\n'


def run_cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "kgmm_bayes.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=TIMEOUT)


def snapshot(folder):
    """Every file and folder under ``folder`` with the bytes of each file."""
    tree = {}
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        tree[rel + "/"] = sorted(dirs)
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                tree[os.path.join(rel, name)] = fh.read()
    return tree


def make_previous_output(folder):
    folder.mkdir()
    (folder / "metrics.json").write_text('{"study": "an earlier study", "relative_entropy": 0.125}\n')
    (folder / "spec.json").write_text('{"spec": {"study": {"name": "an earlier study"}}, "seed": 7}')
    (folder / "figures").mkdir()
    (folder / "figures" / "score.png").write_bytes(b"\x89PNG not really")


def _data_spec(tmp_path, arr, name="traj.npy"):
    np.save(tmp_path / name, arr)
    (tmp_path / "spec.toml").write_text(f'[data]\npath = "{name}"\n')


def _nan_data(tmp_path):
    a = np.random.default_rng(0).normal(size=(200, 2))
    a[17, 1] = np.nan
    _data_spec(tmp_path, a)


# Each case: (id, setup(tmp_path) or None, argv, words the message must hold, watched output folder or None).
# "prev" (an earlier kgmm-bayes output) exists in every case's tmp_path.
CASES = [
    ("spec-missing", None,
     ["run", "missing.toml", "--out", "prev", "--quiet"], ["missing.toml", "does not exist"], "prev"),
    ("spec-unknown-key", lambda p: (p / "spec.toml").write_text(SYSTEM_SPEC + "[sampler]\nbogus_key = 3\n"),
     ["run", "spec.toml", "--out", "prev", "--quiet"], ["bogus_key", "[sampler]"], "prev"),
    # --force: get past the output-folder check so the data check itself is exercised;
    # the earlier output must still survive the failed run untouched
    ("data-nan", _nan_data,
     ["run", "spec.toml", "--out", "prev", "--force", "--quiet"], ["traj.npy", "nan"], "prev"),
    ("data-rank-4", lambda p: _data_spec(p, np.ones((2, 3, 4, 5))),
     ["run", "spec.toml", "--out", "prev", "--force", "--quiet"], ["traj.npy", "shape"], "prev"),
    ("data-fewer-snapshots-than-components",
     lambda p: _data_spec(p, np.random.default_rng(1).normal(size=(8, 2))),
     ["run", "spec.toml", "--out", "prev", "--force", "--quiet"], ["components"], "prev"),
    ("data-path-is-folder",
     lambda p: ((p / "datadir").mkdir(), (p / "spec.toml").write_text('[data]\npath = "datadir"\n')),
     ["run", "spec.toml", "--out", "prev", "--force", "--quiet"], ["datadir", "folder"], "prev"),
    ("out-holds-other-study", lambda p: (p / "spec.toml").write_text(SYSTEM_SPEC),
     ["run", "spec.toml", "--out", "prev", "--quiet"], ["prev", "--force"], "prev"),
    ("out-not-a-study",
     lambda p: ((p / "mine").mkdir(), (p / "mine" / "notes.txt").write_text("my own files\n")),
     ["run", "--out", "mine", "--quiet"], ["mine", "holds no kgmm-bayes result"], "mine"),
    ("out-not-a-study-force",
     lambda p: ((p / "mine").mkdir(), (p / "mine" / "notes.txt").write_text("my own files\n")),
     ["run", "--out", "mine", "--force", "--quiet"], ["mine", "never replaces"], "mine"),
    ("seed-beyond-64-bits", None, ["run", "--seed", str(2**64), "--out", "prev", "--quiet"], ["--seed", "2**62"], "prev"),
    ("seed-negative", None, ["run", "--seed", "-1", "--out", "prev", "--quiet"], ["--seed", "-1"], "prev"),
    ("score-missing-study", lambda p: np.save(p / "points.npy", np.zeros((4, 1))),
     ["score", "nostudy", "points.npy", "--out", "scores.npz"], ["nostudy", "does not exist"], None),
    ("score-points-not-npy", lambda p: (p / "points.csv").write_text("0.5\n1.5\n"),
     ["score", "prev", "points.csv", "--out", "scores.npz"], ["points.csv", ".npy"], "prev"),
    ("score-out-inside-study", lambda p: np.save(p / "points.npy", np.zeros((4, 1))),
     ["score", "prev", "points.npy", "--out", "prev/interpolant.npz"], ["inside the study folder"], "prev"),
    ("score-empty-points", lambda p: np.save(p / "points.npy", np.zeros((0, 1))),
     ["score", "prev", "points.npy", "--out", "scores.npz"], ["points.npy", "no points"], "prev"),
    ("score-out-folder-missing", lambda p: np.save(p / "points.npy", np.zeros((4, 1))),
     ["score", "prev", "points.npy", "--out", "nowhere/scores.npz"], ["nowhere", "does not exist"], "prev"),
    ("no-arguments", None, [], ["required"], None),
    ("unknown-subcommand", None, ["frobnicate", "--out", "prev"], ["invalid choice", "frobnicate"], "prev"),
    ("score-missing-arguments", None, ["score", "prev"], ["required", "points"], "prev"),
]


@pytest.mark.parametrize("case_id, setup, argv, words, watched", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(tmp_path, case_id, setup, argv, words, watched):
    make_previous_output(tmp_path / "prev")
    if setup is not None:
        setup(tmp_path)
    before = snapshot(tmp_path / watched) if watched else None
    entries_before = set(os.listdir(tmp_path))

    proc = run_cli(argv, tmp_path)

    assert "Traceback" not in proc.stdout and "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kgmm-bayes: error:"), proc.stderr
    message = lines[0].lower()
    for word in words:
        assert word.lower() in message, (word, lines[0])
    if case_id.startswith("out-not-a-study"):
        assert "--force" not in message  # a folder of the user's files: --force would not help
    assert proc.stdout == ""
    if watched:
        assert snapshot(tmp_path / watched) == before
    # a refused run creates nothing: no output folder, no '<out>.partial' staging folder, no scores file
    assert set(os.listdir(tmp_path)) == entries_before


# --------------------------------------------------------------------------- default (progress) mode

@pytest.fixture(scope="module")
def bad_data_default_run(tmp_path_factory):
    """One bad-data run as a user types it: no --quiet, no --force, a fresh --out."""
    tmp = tmp_path_factory.mktemp("progress")
    _nan_data(tmp)
    before = set(os.listdir(tmp))
    proc = run_cli(["run", "spec.toml", "--out", "fresh"], tmp)
    return proc, before, set(os.listdir(tmp))


def test_default_mode_bad_data_exit_2_and_error_last(bad_data_default_run):
    proc, _, _ = bad_data_default_run
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and lines[-1].startswith("kgmm-bayes: error:") and "nan" in lines[-1].lower()
    assert sum(line.startswith("kgmm-bayes: error:") for line in lines) == 1


def test_default_mode_bad_data_stderr_is_one_line(bad_data_default_run):
    proc, _, _ = bad_data_default_run
    # the data are checked before the first progress line is printed
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


def test_failed_run_leaves_no_staging_folder(bad_data_default_run):
    proc, before, after = bad_data_default_run
    assert proc.returncode == 2
    assert after == before, sorted(after - before)  # neither 'fresh' nor 'fresh.partial'


# --------------------------------------------------------------------------- every bad spec and file, in process

def _spec_cli_cases():
    from test_spec import BAD_SPECS

    return [pytest.param("spec", case_id, text, words, id=f"spec-{case_id}") for case_id, text, words in BAD_SPECS]


def _file_cli_cases():
    from test_data import BAD_INPUTS

    return [pytest.param("file", case_id, setup, words, id=f"file-{case_id}") for case_id, setup, words in BAD_INPUTS
            if not case_id.startswith(("nan", "plus-", "minus-", "empty-", "rank-", "constant", "single", "huge",
                                       "not-numeric"))]  # array cases: no file to name (their CLI twins are above)


@pytest.mark.parametrize("kind, case_id, case, words", _spec_cli_cases() + _file_cli_cases())
def test_every_bad_spec_and_data_file_fails_cleanly_through_the_cli(tmp_path, monkeypatch, capsys, kind, case_id,
                                                                    case, words):
    """Every bad spec of tests/test_spec.py and every bad data file of tests/test_data.py, through
    ``kgmm_bayes.cli.main`` in this process (they fail before any JAX work): exit 2, one error line
    naming the problem, and an earlier output folder (``--force`` given) left byte for byte as it was."""
    from kgmm_bayes.cli import main

    monkeypatch.chdir(tmp_path)
    make_previous_output(tmp_path / "prev")
    spec = tmp_path / "spec.toml"
    if kind == "spec":
        from test_spec import write_bad_spec

        write_bad_spec(spec, case_id, case)
    else:
        _, filename = case(tmp_path)
        variable = '\nvariable = "nope"' if case_id == "nc-missing-variable" else ""
        spec.write_text(f'[data]\npath = "{filename}"{variable}\n')
    before = snapshot(tmp_path / "prev")
    entries_before = set(os.listdir(tmp_path))
    capsys.readouterr()

    status = main(["run", "spec.toml", "--out", "prev", "--force", "--quiet"])

    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kgmm-bayes: error:"), err
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    assert snapshot(tmp_path / "prev") == before
    assert set(os.listdir(tmp_path)) == entries_before
