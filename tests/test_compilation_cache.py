"""The persistent compilation cache: a second process loads the first's compiled programs and draws
the same numbers; the switch and the folder rules."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kgmm_bayes import compilation_cache

SCRIPT = textwrap.dedent("""
    import json
    import sys
    import time
    import jax
    import numpy as np
    import kgmm_bayes
    from kgmm_bayes.bayes.sampler import SamplerConfig, build_prior, initial_values, run_nuts
    from kgmm_bayes.partition import fit_partition

    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(1) if event == "/jax/compilation_cache/cache_hits" else None)
    assert kgmm_bayes.enable_compilation_cache(sys.argv[1]) is not None
    from kgmm_bayes.compilation_cache import JaxWork
    work, clock = JaxWork(), time.perf_counter()
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-1.0, 0.6, (2000, 1)), rng.normal(1.2, 0.4, (2000, 1))])
    part = fit_partition(jax.random.key(0), x, num_cells=100, num_components=2)
    prior = build_prior(part, 5.0, 0.25, 1.0, 2.0)
    config = SamplerConfig(chains=2, warmup=40, draws=20, map_starts=2, map_steps=50)
    post = run_nuts(jax.random.key(3), part.points, part.counts, prior, initial_values(part), config)
    np.save(sys.argv[2], np.concatenate([post.weights.ravel(), post.means.ravel(), post.cov_chol.ravel()]))
    wall, measured = time.perf_counter() - clock, work.mark()
    print("work", json.dumps(dict(measured, wall=wall)))
    print("hits", len(hits))
""")


def _run(tmp_path, name):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the user's own JAX cache would be kept instead
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "cache"), str(tmp_path / name)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    work = json.loads(out.stdout.split("work")[1].split("\n")[0])
    return int(out.stdout.split("hits")[-1]), np.load(tmp_path / name), work


def test_a_second_process_loads_the_compiled_programs_and_draws_the_same_numbers(tmp_path):
    hits_first, first, work_first = _run(tmp_path, "first.npy")  # hits here: a program compiled again in the process
    programs = len(list((tmp_path / "cache").glob("*-cache")))  # one file per program (and its -atime)
    assert programs > 10  # MAP searches, the Hessian, NUTS, ...
    hits_second, second, work_second = _run(tmp_path, "second.npy")
    assert hits_second >= hits_first + programs - 1  # every kept program loaded, none compiled and added
    # JaxWork counts the same hits as a listener of the process's own, and its seconds fit in the wall time
    assert (work_first["cache_hits"], work_second["cache_hits"]) == (hits_first, hits_second)
    for work in (work_first, work_second):
        assert 0 < work["tracing"] and 0 < work["compiling"] and work["tracing"] + work["compiling"] <= work["wall"]
    # loading a program is cheaper than compiling it: the second process spends less of its time on it
    assert work_second["compiling"] < work_first["compiling"]
    assert len(list((tmp_path / "cache").glob("*-cache"))) == programs
    np.testing.assert_array_equal(first, second)


def test_union_seconds_counts_nested_and_overlapping_spans_once():
    union = compilation_cache._union_seconds
    assert union([]) == 0.0
    assert union([(0.0, 1.0), (2.0, 2.5)]) == 1.5  # apart: summed
    assert union([(0.0, 4.0), (1.0, 2.0)]) == 4.0  # a function traced inside another's trace: once
    assert union([(3.0, 5.0), (0.0, 1.0), (0.5, 3.5)]) == 5.0  # overlapping (threads), in any order
    assert union([(2.0, 1.0)]) == 0.0  # the wall clock stepped back during the span


def test_tracing_is_counted_outside_compiling_so_the_two_fit_in_the_wall_time():
    import jax
    import jax.numpy as jnp
    import time

    def f(x):
        with jax.ensure_compile_time_eval():  # values computed while tracing: compiles inside a tracing span
            offset = jnp.sum(jnp.arange(7.0) ** 2)
        return jnp.sin(x) + offset

    work = compilation_cache.JaxWork()
    start = time.perf_counter()
    jax.jit(f)(jnp.ones(13)).block_until_ready()
    wall = time.perf_counter() - start
    measured = work.mark()
    assert measured["tracing"] > 0 and measured["compiling"] > 0
    assert measured["tracing"] + measured["compiling"] <= wall
    assert work.mark() == {"tracing": 0.0, "compiling": 0.0, "cache_hits": 0}  # nothing since


def test_the_switch_and_the_folder(tmp_path, monkeypatch):
    import jax

    if jax.config.jax_compilation_cache_dir:
        pytest.skip("a JAX compilation cache is configured in this environment; enable() keeps it")
    monkeypatch.setenv(compilation_cache.ENV, "off")
    assert compilation_cache.enable() is None
    monkeypatch.setenv(compilation_cache.ENV, "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache.default_dir() == tmp_path / "xdg" / "kgmm-bayes" / "jax"
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.warns(RuntimeWarning, match="compilation cache off: cannot use"):
        assert compilation_cache.enable(blocked / "cache") is None
    assert blocked.read_text() == "not a folder"
