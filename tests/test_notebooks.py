"""The notebooks in notebooks/: each runs end to end in a real Jupyter kernel in the smoke
configuration (KGMM_BAYES_SMOKE=1), and each is committed without outputs, so none can drift
from the API or show stale results."""
import sys
import time
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = [
    "quickstart.ipynb",
    "potential_systems.ipynb",
    "lorenz_type.ipynb",
    "kuramoto_sivashinsky.ipynb",
    "posterior_diagnostics.ipynb",
    "uncertainty.ipynb",
]
# the longest smoke runs (about 30-50 s each) run with `pytest -m slow`, keeping the default suite under 20
# minutes on 2 cores (1,293 s with only the first two here); quickstart and diagnostics stay in the default
SLOW_NOTEBOOKS = ("potential_systems.ipynb", "lorenz_type.ipynb", "kuramoto_sivashinsky.ipynb", "uncertainty.ipynb")
CELL_TIMEOUT_S = 240  # per cell; a smoke notebook takes well under a minute in all


def read(name):
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def test_the_notebook_folder_holds_the_expected_notebooks():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name):
    nb = read(name)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code_cells, "a notebook without code"
    for i, cell in enumerate(code_cells):
        assert cell.outputs == [], f"code cell {i} carries outputs: clear them before committing"
        assert cell.execution_count is None, f"code cell {i} carries an execution count"
    assert "KGMM_BAYES_SMOKE" in code_cells[0].source, "the first code cell must read KGMM_BAYES_SMOKE"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One working folder for all notebooks, as for a user running them side by side: the
    notebooks on the default study share its output folder (and its stage cache)."""
    return tmp_path_factory.mktemp("notebooks")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_NOTEBOOKS else n
                                  for n in NOTEBOOKS])
def test_notebook_runs_in_smoke_configuration(name, workdir, monkeypatch):
    nb = read(name)
    # which Python ran the kernel: it must be this environment's (the tests' own interpreter)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    monkeypatch.setenv("KGMM_BAYES_SMOKE", "1")  # the kernel inherits the environment
    # the kernels share JAX's persistent compilation cache (compiled programs, not results): most
    # of a smoke notebook's time is XLA compilation, much of it the same small programs each time
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(workdir / "jax-cache"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    elapsed = time.perf_counter() - start
    print(f"{name}: {elapsed:.1f} s")
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors
    prefix = "".join(out.get("text", "") for out in nb.cells[-1].outputs).strip()
    assert Path(prefix).resolve() == Path(sys.prefix).resolve(), \
        f"the python3 kernel ran {prefix}, not this environment ({sys.prefix})"
    images = [out for cell in nb.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert images, "no inline figure: plots did not reach the notebook (matplotlib backend?)"
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert "smoke configuration" in "".join(out.get("text", "") for out in first.outputs), \
        "the notebook did not run in the smoke configuration"
