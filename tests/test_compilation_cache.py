"""Importing kgmm_bayes keeps JAX's compiled programs on disk unless told otherwise."""
import os
import subprocess
import sys

import pytest

PRINT = "import kgmm_bayes, jax; print(jax.config.jax_compilation_cache_dir or '')"


def cache_dir(tmp_path, **env):
    environ = {k: v for k, v in os.environ.items()
               if k not in ("KGMM_BAYES_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", PRINT], capture_output=True, text=True, env=environ, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.mark.parametrize("case", ["xdg", "named", "off", "jax_own"])
def test_compilation_cache_folder(tmp_path, case):
    if case == "xdg":
        assert cache_dir(tmp_path, XDG_CACHE_HOME=str(tmp_path)) == str(tmp_path / "kgmm-bayes" / "xla")
        assert (tmp_path / "kgmm-bayes" / "xla").is_dir()
    elif case == "named":
        assert cache_dir(tmp_path, KGMM_BAYES_COMPILATION_CACHE=str(tmp_path / "c")) == str(tmp_path / "c")
    elif case == "off":
        assert cache_dir(tmp_path, KGMM_BAYES_COMPILATION_CACHE="off", XDG_CACHE_HOME=str(tmp_path)) == ""
        assert not (tmp_path / "kgmm-bayes").exists()
    else:  # a folder the user gave JAX itself is kept
        assert cache_dir(tmp_path, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "mine"),
                         XDG_CACHE_HOME=str(tmp_path)) == str(tmp_path / "mine")
