"""How many CPUs this process may run on (a container's share can be smaller than the host's cores)."""
from __future__ import annotations

import os

MAX_WORKER_THREADS = 4  # the MAP polish was measured on 2; more is untried


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the platform has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def worker_threads() -> int:
    """Threads for host work done in parallel (the MAP searches' L-BFGS polishes): the usable CPUs, at most
    :data:`MAX_WORKER_THREADS`."""
    return min(MAX_WORKER_THREADS, usable_cpus())
