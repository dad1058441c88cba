"""What `pip install .` (not editable) delivers: every module and every shipped study, usable by name
from any directory."""
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

import kgmm_bayes
from kgmm_bayes.spec import SpecError, load_spec, shipped_studies

PACKAGE = pathlib.Path(kgmm_bayes.__file__).parent
ROOT = PACKAGE.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package built as a wheel from a copy of the sources and installed into a fresh folder."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    src.mkdir()
    shutil.copytree(PACKAGE, src / "kgmm_bayes", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            str(src), "-w", str(tmp / "wheel")], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp / "wheel").glob("kgmm_bayes-*.whl"))
    target = tmp / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    return wheel, target


def test_the_wheel_holds_every_module_and_every_shipped_study(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*") if p.suffix in (".py", ".toml")
               and "__pycache__" not in p.parts}
    assert sources and sources <= names, sorted(sources - names)
    assert {f"kgmm_bayes/models/{n}.toml" for n in shipped_studies()} <= names
    assert "lorenz63" in shipped_studies()


def test_shipped_studies_run_by_name_from_an_empty_folder(installed, tmp_path):
    _, target = installed
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", "import kgmm_bayes, kgmm_bayes.cli as c; print(kgmm_bayes.__file__); "
                           "raise SystemExit(c.main(['list']))"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(str(target))  # the installed copy, not the source tree
    assert {line.split()[0] for line in lines[1:-1]} == set(shipped_studies())
    probe = ("import kgmm_bayes.spec as s; sp = s.load_spec('lorenz63'); "
             "print(sp.study.name, sp.data.system, s.resolve_spec_path('lorenz63.toml'))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    name, system, path = proc.stdout.split()
    assert (name, system) == ("lorenz63", "lorenz63") and path.startswith(str(target))


def test_a_file_of_that_name_wins_over_the_shipped_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lorenz63.toml").write_text('[study]\nname = "mine"\n[data]\nsystem = "reduced_1d"\n')
    assert load_spec("lorenz63.toml").study.name == "mine"
    assert load_spec("lorenz63").study.name == "lorenz63"  # no file called "lorenz63": the shipped study
    with pytest.raises(SpecError, match="names no shipped study .*lorenz63"):
        load_spec("lorenz36")
