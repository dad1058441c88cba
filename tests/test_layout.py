"""The package's layout: imports run one way, down the pipeline, and never in a cycle.

Every ``import`` of a package module (at module level or inside a function) is read from
the source with :mod:`ast`.  A module may import from its own layer or the layers below;
within a layer the module graph must still be acyclic.
"""
import ast
import pathlib

import pytest

import kgmm_bayes

PACKAGE = pathlib.Path(kgmm_bayes.__file__).parent

# Bottom to top: the data's path through the pipeline, then what sits on it.
LAYERS = [
    {"errors", "files", "progress", "compilation_cache", "_version", "_picks", "_keys", "_cpus", "_devices"},  # foundations
    {"data", "metrics"},  # trajectories, z-score, systems; distances and time-series statistics
    {"spec", "partition"},
    {"bayes"},  # mixture posterior, scores and their bands
    {"rom"},  # interpolant, Langevin model, posterior ensembles
    {"baselines"},
    {"result"},
    {"study"},  # stages, output folder, report, figures, compare, calibrate
    {"api"},
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: pathlib.Path, modules) -> set:
    """Package modules that ``name`` imports (dotted, relative to the package; "" is the package root)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
            elif node.module and (node.module == "kgmm_bayes" or node.module.startswith("kgmm_bayes.")):
                base, node_module = [], node.module.split(".", 1)[1] if "." in node.module else None
                target = node_module
                found |= _resolve(base, target, node.names, modules)
                continue
            else:
                continue
            found |= _resolve(base, node.module, node.names, modules)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kgmm_bayes."):
                    found.add(alias.name.split(".", 1)[1])
                elif alias.name == "kgmm_bayes":
                    found.add("")
    return found


def _resolve(base, module, names, modules) -> set:
    target = ".".join(base + (module.split(".") if module else []))
    found = set()
    for alias in names:  # "from . import ks" imports a module, not a name of the package
        sub = f"{target}.{alias.name}" if target else alias.name
        found.add(sub if sub in modules else target)
    return found


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(name: str) -> int:
    top = name.split(".")[0]
    if top == "":
        return len(LAYERS)  # the package root re-exports the public API: above everything
    return RANK[top]


def test_every_module_has_a_layer():
    unplaced = sorted({n.split(".")[0] for n in _modules() if n and n.split(".")[0] not in RANK})
    assert not unplaced, f"modules with no layer in tests/test_layout.py: {unplaced}"


def test_imports_run_down_the_layers():
    upward = [f"{src} imports {dst}" for src, dsts in _graph().items() for dst in dsts
              if _layer(dst) > _layer(src)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("source, expected", [
    ("from ...study.run import run_study\n", {"study.run"}),
    ("from . import ks\n", {"data.systems.ks"}),
    ("def f():\n    from ...result import BayesianKGMM\n", {"result"}),
    ("import kgmm_bayes.cli\n", {"cli"}),
])
def test_the_checker_sees_relative_absolute_and_function_level_imports(tmp_path, source, expected):
    # a file placed as kgmm_bayes/data/systems/<x>.py would be; the checker must resolve what it imports
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert _imports("data.systems.probe", path, _modules()) == expected


def test_a_planted_upward_import_is_caught():
    graph = _graph()
    graph["bayes.score"] = graph["bayes.score"] | {"study.run"}
    upward = [(s, d) for s, ds in graph.items() for d in ds if _layer(d) > _layer(s)]
    assert ("bayes.score", "study.run") in upward
