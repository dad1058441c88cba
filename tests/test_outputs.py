"""Fault injection on output folders: what --force may replace, the lock, a kill at each step of the
commit, every kind of stage-cache damage, a full disk or a read-only folder.

Most cases drive :class:`kgmm_bayes.study.outputs.OutputFolder` directly (no JAX): a "result" is a few
files written into the staging folder.  The CLI cases at the end run the real command.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from kgmm_bayes.study import outputs
from kgmm_bayes.data import InputError
from kgmm_bayes.study.outputs import MANIFEST, CacheWarning, OutputFolder, read_stage_file
from test_cli_errors import snapshot as tree  # every file under a folder with its bytes

SPEC_A = json.dumps({"spec": {"study": {"name": "a"}}, "seed": 0})
SPEC_B = json.dumps({"spec": {"study": {"name": "b"}}, "seed": 1})


def write_result(out: OutputFolder, label: str) -> None:
    """A small complete result: a stage and two output files carrying ``label``."""
    out.save_stage("data", "k1", {"x": np.arange(5.0), "label": np.asarray(label)})
    with open(out.path("metrics.json"), "w") as fh:
        json.dump({"label": label}, fh)
    with open(out.path("figures", "a.png"), "wb") as fh:
        fh.write(label.encode())


def make_result(path, spec=SPEC_A, label="first"):
    with OutputFolder(str(path), spec) as out:
        write_result(out, label)
        out.commit()


def label_of(path):
    with open(os.path.join(path, "metrics.json")) as fh:
        return json.load(fh)["label"]


def litter(parent):
    return sorted(n for n in os.listdir(parent) if n.endswith((".partial", ".old", ".lock")))


# --------------------------------------------------------------------------- what may be replaced

def test_force_never_replaces_a_folder_of_user_files(tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work\n")
    (mine / "data").mkdir()
    (mine / "data" / "run.npy").write_bytes(b"123")
    before = tree(mine)
    for force in (False, True):
        with pytest.raises(InputError) as err:
            OutputFolder(str(mine), SPEC_A, force=force)
        message = str(err.value)
        assert "holds no kgmm-bayes result" in message and "--force" not in message
        assert tree(mine) == before
        assert sorted(os.listdir(tmp_path)) == ["thesis"]


def test_force_replaces_another_study_and_refuses_without_it(tmp_path):
    make_result(tmp_path / "out", SPEC_A, "first")
    with pytest.raises(InputError, match="holds a different study.*--force"):
        OutputFolder(str(tmp_path / "out"), SPEC_B)
    assert label_of(tmp_path / "out") == "first"
    with OutputFolder(str(tmp_path / "out"), SPEC_B, force=True) as out:
        write_result(out, "second")
        out.commit()
    assert label_of(tmp_path / "out") == "second"
    assert litter(tmp_path) == []


def test_a_result_with_user_files_added_is_never_replaced(tmp_path):
    make_result(tmp_path / "out", SPEC_A)
    (tmp_path / "out" / "my_notes.txt").write_text("notes about this run\n")
    before = tree(tmp_path / "out")
    for spec, force in ((SPEC_A, False), (SPEC_B, True)):  # a rerun of the same study, and --force
        with pytest.raises(InputError, match="not part of its kgmm-bayes result.*my_notes.txt"):
            OutputFolder(str(tmp_path / "out"), spec, force=force)
    assert tree(tmp_path / "out") == before
    assert litter(tmp_path) == []


def test_empty_folder_and_a_result_of_a_version_without_manifest_are_replaceable(tmp_path):
    (tmp_path / "empty").mkdir()
    make_result(tmp_path / "empty")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "spec.json").write_text(SPEC_A)
    (legacy / "metrics.json").write_text('{"label": "legacy"}')
    (legacy / "figures").mkdir()
    (legacy / "figures" / "score.png").write_bytes(b"png")
    with OutputFolder(str(legacy), SPEC_A) as out:
        write_result(out, "new")
        out.commit()
    assert label_of(legacy) == "new" and os.path.exists(legacy / MANIFEST)


def test_a_foreign_partial_folder_is_not_deleted(tmp_path):
    (tmp_path / "out.partial").mkdir()
    (tmp_path / "out.partial" / "precious.txt").write_text("not ours")
    with pytest.raises(InputError, match="not a kgmm-bayes staging folder"):
        OutputFolder(str(tmp_path / "out"), SPEC_A)
    assert (tmp_path / "out.partial" / "precious.txt").read_text() == "not ours"


# --------------------------------------------------------------------------- the lock

def test_a_second_run_into_a_locked_folder_ends_at_once_naming_the_owner(tmp_path):
    make_result(tmp_path / "out")
    before = tree(tmp_path / "out")
    with OutputFolder(str(tmp_path / "out"), SPEC_A) as first:
        for spec, force in ((SPEC_A, False), (SPEC_B, True)):
            with pytest.raises(InputError) as err:
                OutputFolder(str(tmp_path / "out"), spec, force=force)
            assert f"process {os.getpid()}" in str(err.value) and "in use" in str(err.value)
        write_result(first, "second")
        first.commit()
    assert label_of(tmp_path / "out") == "second" and before != tree(tmp_path / "out")
    assert litter(tmp_path) == []


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "out.lock").write_text(dead.stdout)  # a lock file whose owner no longer runs
    make_result(tmp_path / "out")
    assert label_of(tmp_path / "out") == "first" and litter(tmp_path) == []


def test_a_lock_held_by_a_killed_process_is_taken_over(tmp_path):
    code = ("import os, sys; from kgmm_bayes.study.outputs import OutputFolder; "
            f"o = OutputFolder({str(tmp_path / 'out')!r}, {SPEC_A!r}); os._exit(9)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 9 and os.path.exists(tmp_path / "out.lock")  # killed holding the lock
    make_result(tmp_path / "out")
    assert label_of(tmp_path / "out") == "first" and litter(tmp_path) == []


# --------------------------------------------------------------------------- a kill at each step of the commit

class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no handler of the code under test catches it."""


# step -> (what is patched, which call dies, the result a rerun must find)
KILL_STEPS = {
    "before-manifest": ("replace", 1, "first"),       # the new result is not complete yet
    "after-manifest": ("replace", 2, "second"),       # complete, old result still in place
    "between-renames": ("replace", 3, "second"),      # old moved aside, new not yet in place
    "removing-old": ("rmtree", 1, "second"),          # new in place, old half removed
}


@pytest.mark.parametrize("step", list(KILL_STEPS))
def test_a_kill_at_each_commit_step_is_repaired_by_the_next_run(tmp_path, monkeypatch, step):
    what, die_at, expected = KILL_STEPS[step]
    make_result(tmp_path / "out", SPEC_A, "first")
    out = OutputFolder(str(tmp_path / "out"), SPEC_A)
    write_result(out, "second")
    calls = {"n": 0}
    real = {"replace": os.replace, "rmtree": outputs.shutil.rmtree}[what]

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == die_at:
            if what == "rmtree":  # die half way: one file of the old folder already gone
                os.unlink(os.path.join(args[0], "metrics.json"))
            raise Killed
        return real(*args, **kwargs)

    if what == "replace":
        monkeypatch.setattr(outputs.os, "replace", dying)
    else:
        monkeypatch.setattr(outputs.shutil, "rmtree", dying)
    with pytest.raises(Killed):
        out.commit()
    monkeypatch.undo()
    (tmp_path / "out.lock").write_text("999999999\n")  # a killed run leaves its lock file (unlocked)

    # reading the folder: the newest complete result, after the next run's repair
    rerun = OutputFolder(str(tmp_path / "out"), SPEC_A)
    assert label_of(tmp_path / "out") == expected
    assert not os.path.exists(tmp_path / "out.old")
    rerun.load_stage("data", "k1")
    write_result(rerun, "third")
    rerun.commit()
    assert label_of(tmp_path / "out") == "third"
    assert litter(tmp_path) == []


def test_a_failed_run_removes_its_staging_folder_unless_it_holds_completed_stages(tmp_path):
    make_result(tmp_path / "out")
    before = tree(tmp_path / "out")
    with pytest.raises(RuntimeError):
        with OutputFolder(str(tmp_path / "out"), SPEC_A):
            raise RuntimeError("a figure failed")
    assert litter(tmp_path) == [] and tree(tmp_path / "out") == before
    with pytest.raises(RuntimeError) as err:
        with OutputFolder(str(tmp_path / "fresh"), SPEC_B) as out:
            out.save_stage("posterior", "k", {"x": np.ones(3)})
            raise RuntimeError("killed later")
    assert "completed stages kept" in err.value.kgmm_note
    assert litter(tmp_path) == ["fresh.partial"] and not os.path.exists(tmp_path / "fresh")
    with OutputFolder(str(tmp_path / "fresh"), SPEC_B) as out:  # the next run resumes from it
        np.testing.assert_array_equal(out.load_stage("posterior", "k")["x"], np.ones(3))
        out.commit()
    assert litter(tmp_path) == []


def test_a_failed_run_keeps_a_nested_study_s_result_and_its_kept_stages(tmp_path):
    """compare's layout: a study folder inside the comparison's staging folder, with no stage of the comparison's
    own.  A failure after the study (a baseline) must keep the finished study; a failure inside it (a kill during
    its posterior) must keep the stages it completed; the next run resumes from either."""
    with pytest.raises(RuntimeError) as err:
        with OutputFolder(str(tmp_path / "cmp"), SPEC_A) as out:
            make_result(out.path("bayesian"), SPEC_B, "finished")
            raise RuntimeError("a baseline failed")
    assert "completed stages kept" in err.value.kgmm_note
    assert litter(tmp_path) == ["cmp.partial"]
    staging = tmp_path / "cmp.partial"
    assert label_of(staging / "bayesian") == "finished" and (staging / "bayesian" / MANIFEST).is_file()
    assert litter(staging) == []
    with OutputFolder(str(tmp_path / "cmp"), SPEC_A) as out:  # the next run finds the study whole
        with OutputFolder(out.path("bayesian"), SPEC_B) as inner:
            assert inner.load_stage("data", "k1")["label"] == "finished"
            write_result(inner, "finished")
            inner.commit()
        out.commit()
    assert litter(tmp_path) == [] and label_of(tmp_path / "cmp" / "bayesian") == "finished"

    with pytest.raises(RuntimeError):
        with OutputFolder(str(tmp_path / "cmp2"), SPEC_A) as out:
            with OutputFolder(out.path("bayesian"), SPEC_B) as inner:
                inner.save_stage("posterior", "k", {"x": np.arange(4.0)})
                raise RuntimeError("killed during the study")
    assert litter(tmp_path) == ["cmp2.partial"]
    assert litter(tmp_path / "cmp2.partial") == ["bayesian.partial"]
    with OutputFolder(str(tmp_path / "cmp2"), SPEC_A) as out:
        with OutputFolder(out.path("bayesian"), SPEC_B) as inner:
            np.testing.assert_array_equal(inner.load_stage("posterior", "k")["x"], np.arange(4.0))
            write_result(inner, "resumed")
            inner.commit()
        out.commit()
    assert litter(tmp_path) == [] and label_of(tmp_path / "cmp2" / "bayesian") == "resumed"

    with pytest.raises(RuntimeError):  # a nested folder holding nothing finished is not kept
        with OutputFolder(str(tmp_path / "cmp3"), SPEC_A) as out:
            with OutputFolder(out.path("bayesian"), SPEC_B):
                raise RuntimeError("failed before any stage")
    assert litter(tmp_path) == [] and not os.path.exists(tmp_path / "cmp3")


# --------------------------------------------------------------------------- stage-cache damage

def _damage(path, kind):
    if kind == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif kind == "empty":
        open(path, "wb").close()
    elif kind == "garbage":
        open(path, "wb").write(os.urandom(500))
    elif kind == "flipped-byte":  # a valid zip whose array bytes changed: only the checksum sees it
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        arrays["x"] = arrays["x"].copy()
        arrays["x"][2] += 1e-12
        np.savez(path, **arrays)
    elif kind == "wrong-keys":
        np.savez(path, y=np.arange(3.0))
    elif kind == "object-array":
        np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    elif kind == "no-checksum":  # a plain npz, as versions before the checksum wrote
        np.savez(path, x=np.arange(5.0))
    else:
        raise ValueError(kind)


DAMAGE = ["truncated", "empty", "garbage", "flipped-byte", "wrong-keys", "object-array", "no-checksum"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_stage_entry_is_reported_in_one_warning_and_recomputed(tmp_path, kind):
    with OutputFolder(str(tmp_path / "out"), SPEC_A) as out:
        out.save_stage("data", "k1", {"x": np.arange(5.0)})
        path = out.path(".stages", "data-k1.npz")
        _damage(path, kind)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert out.load_stage("data", "k1") is None
        messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
        assert len(messages) == 1 and "data-k1.npz" in messages[0] and "recomputing" in messages[0]
        assert "\n" not in messages[0] and not os.path.exists(path)
        out.save_stage("data", "k1", {"x": np.arange(5.0)})  # the recomputed entry reads back
        np.testing.assert_array_equal(out.load_stage("data", "k1")["x"], np.arange(5.0))
        out.commit()


def test_a_stage_entry_its_builder_rejects_is_recomputed(tmp_path):
    path = tmp_path / "s.npz"
    with OutputFolder(str(tmp_path / "out"), SPEC_A) as out:
        out.save_stage("partition", "k", {"points": np.ones(3)})
        os.replace(out.path(".stages", "partition-k.npz"), path)
        out.commit()

    def build(arrays):
        return arrays["counts"]  # a stage of another schema: KeyError

    with pytest.warns(CacheWarning, match="counts"):
        assert read_stage_file(str(path), build) is None


def test_a_damaged_entry_in_the_previous_result_is_recomputed_not_fatal(tmp_path):
    make_result(tmp_path / "out")
    _damage(str(tmp_path / "out" / ".stages" / "data-k1.npz"), "truncated")
    with OutputFolder(str(tmp_path / "out"), SPEC_A) as out:
        with pytest.warns(CacheWarning):
            assert out.load_stage("data", "k1") is None
        write_result(out, "again")
        out.commit()
    assert label_of(tmp_path / "out") == "again"


# --------------------------------------------------------------------------- full disk, read-only folder

@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_write_error_leaves_the_previous_result_and_no_temporary_file(tmp_path, monkeypatch, error):
    make_result(tmp_path / "out")
    before = tree(tmp_path / "out")
    real_fdopen = os.fdopen

    class FailingFile:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()
            return False

        def write(self, payload):
            self.fh.write(payload[: len(payload) // 3])
            raise OSError(error, os.strerror(error), self.fh.name)

    with pytest.raises(OSError) as err:
        with OutputFolder(str(tmp_path / "out"), SPEC_B, force=True) as out:
            monkeypatch.setattr(outputs.os, "fdopen", lambda *a, **k: FailingFile(real_fdopen(*a, **k)))
            write_result(out, "second")
            out.commit()
    monkeypatch.undo()
    assert err.value.errno == error
    assert tree(tmp_path / "out") == before
    assert litter(tmp_path) == []


# --------------------------------------------------------------------------- through the command line

TINY = """
[study]
name = "tiny"
[data]
system = "reduced_1d"
members = 4
steps = 4000
thin = 20
[partition]
cells = 60
[mixture]
components = 3
[sampler]
chains = 2
warmup = 50
draws = 50
[score]
max_draws = 50
[interpolant]
hidden = [8, 8]
steps = 50
[langevin]
particles = 50
steps = 500
burn_in = 50
thin = 50
"""


def cli(args, cwd, **kw):
    return subprocess.Popen([sys.executable, "-m", "kgmm_bayes.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_cli_locked_folder_one_line_exit_2(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    with OutputFolder(str(tmp_path / "out"), SPEC_A):
        proc = cli(["run", "tiny.toml", "--out", "out", "--force", "--quiet"], tmp_path)
        out, err = proc.communicate(timeout=240)
    assert proc.returncode == 2 and out == "", err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kgmm-bayes: error:") and f"process {os.getpid()}" in lines[0]


def _consistent(folder):
    """A committed result whose parts agree: spec, metrics and manifest of one run."""
    spec = json.load(open(os.path.join(folder, "spec.json")))
    metrics = json.load(open(os.path.join(folder, "metrics.json")))
    manifest = json.load(open(os.path.join(folder, MANIFEST)))
    present = sorted(os.path.relpath(os.path.join(r, n), folder) for r, _, ns in os.walk(folder) for n in ns)
    assert spec["seed"] == metrics["seed"]
    assert sorted(manifest["files"] + [MANIFEST]) == present
    return spec["seed"]


TRIALS = int(os.environ.get("KGMM_CONCURRENCY_TRIALS", "1"))


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(TRIALS))
def test_two_runs_started_together_into_one_folder(tmp_path, trial):
    """Two real runs at once (same seed, different seeds, with and without --force, by trial number):
    never a traceback, one wins, the other ends with one line, and the folder's parts agree.
    ``KGMM_CONCURRENCY_TRIALS=20`` runs the measurement of the closing note."""
    (tmp_path / "tiny.toml").write_text(TINY)
    variant = trial % 4
    seeds = (0, 0) if variant == 0 else (0, 1)
    forces = [(False, False), (False, False), (True, True), (False, True)][variant]
    if trial % 2:
        make_args = ["run", "tiny.toml", "--out", "out", "--quiet", "--seed", "0"]
        assert subprocess.run([sys.executable, "-m", "kgmm_bayes.cli", *make_args], cwd=tmp_path,
                              capture_output=True, timeout=600).returncode == 0  # an earlier result in place
    procs = [cli(["run", "tiny.toml", "--out", "out", "--quiet", "--seed", str(s)] + (["--force"] if f else []),
                 tmp_path) for s, f in zip(seeds, forces)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    for out, err, code in results:
        assert "Traceback" not in out + err, err
        assert code in (0, 2), (code, err)
        if code == 2:
            errors = [ln for ln in err.splitlines() if ln.startswith("kgmm-bayes: error:")]
            assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert any(code == 0 for _, _, code in results)
    assert _consistent(tmp_path / "out") in seeds
    assert litter(tmp_path) == []


@pytest.fixture
def small_filesystem(tmp_path):
    """A 150 KiB tmpfs: a real full disk (root only; skipped where mounting is not permitted)."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_cli_full_disk_one_line_exit_2(tmp_path, small_filesystem):
    (tmp_path / "tiny.toml").write_text(TINY)
    proc = cli(["run", "tiny.toml", "--out", str(small_filesystem / "out"), "--quiet"], tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("kgmm-bayes: error:")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert "No space left on device" in errors[0]
    # nothing half-written: what is left is the staging folder's completed stages, each verifiable
    left = sorted(os.path.relpath(os.path.join(r, n), small_filesystem) for r, _, ns in os.walk(small_filesystem)
                  for n in ns)
    assert not os.path.exists(small_filesystem / "out") and not os.path.exists(small_filesystem / "out.lock")
    for rel in left:
        assert rel.startswith("out.partial/"), left
        assert rel in ("out.partial/spec.json",) or rel.startswith("out.partial/.stages/"), left
        if rel.endswith(".npz"):
            assert read_stage_file(str(small_filesystem / rel)) is not None
    if left:
        assert "completed stages kept" in errors[0]


def test_a_study_saved_before_mixture_draws_existed_loads_with_every_draw(tmp_path):
    """The mixture drift pooled every draw before ``[langevin] mixture_draws``: a folder written then loads with 0
    (all draws), so ``result.simulate(drift="mixture")`` reruns the model it ran; a current folder keeps its value."""
    from kgmm_bayes.spec import load_spec
    from kgmm_bayes.study.load import _read_spec

    spec = load_spec("lorenz96_slow")
    saved = {"spec": spec.identity(), "seed": 3}
    saved["spec"]["langevin"]["box"] = 10.0  # folders of then stated the box ("auto" came later)
    (tmp_path / "spec.json").write_text(json.dumps(saved, default=list))
    assert _read_spec(str(tmp_path), {})[0].langevin.mixture_draws == 16
    del saved["spec"]["langevin"]["mixture_draws"]
    (tmp_path / "spec.json").write_text(json.dumps(saved, default=list))
    loaded, seed = _read_spec(str(tmp_path), {})
    assert loaded.langevin.mixture_draws == 0 and seed == 3 and loaded.langevin.drift == "mixture"
