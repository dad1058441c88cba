"""Test-suite set-up: two host devices (as numpyro's CI does), before JAX initialises.

Multi-chain and sharded code paths then run on two devices whatever the core count of
the machine; ``kgmm_bayes`` itself only sets a device count when ``XLA_FLAGS`` has none.
"""
import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()

# The CLI keeps compiled programs in a persistent cache (kgmm_bayes.compilation_cache); tests that call it
# in this process must not write to the user's cache: off unless the environment names a folder.
os.environ.setdefault("KGMM_BAYES_COMPILATION_CACHE", "off")


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one worker per CPU this process may run on, not per core of the host
    (a container's share can be smaller); ``--maxprocesses`` still caps it."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return None  # pytest-xdist's own count
