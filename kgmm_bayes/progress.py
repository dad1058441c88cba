"""Progress display for stages that run inside one ``lax.scan`` (training, simulation).

A jitted stage takes a static ``progress`` flag; when it is set, the scan body
calls :func:`tick` with the step count, which reaches the host through
``jax.debug.callback`` and advances the bar opened by :func:`bar`.  The callback
is one module-level function, so compiled stages are reused across calls; with
the flag off nothing is traced into the computation.
"""
from __future__ import annotations

import contextlib
import sys
import threading

import jax

__all__ = ["bar", "tick"]

_active = []


_lock = threading.Lock()  # parallel chains (one per device) report from their own threads


def _report(step):
    with _lock:
        if _active:
            progress_bar = _active[-1]
            step = int(step)
            if step > progress_bar.n:
                progress_bar.update(step - progress_bar.n)


def tick(step, every: int):
    """Inside a traced loop: report ``step`` to the open bar when ``step % every == 0``."""
    jax.lax.cond(step % every == 0, lambda s: jax.debug.callback(_report, s), lambda s: None, step)


@contextlib.contextmanager
def bar(label: str, total: int, enabled: bool, initial: int = 0):
    """Open a tqdm bar on stderr for the duration of a stage (no-op when disabled); ``initial``: the
    step count the stage's ticks start from (a continued loop)."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    progress_bar = tqdm(total=total, initial=initial, desc=label, file=sys.stderr, mininterval=0.5)
    with _lock:
        _active.append(progress_bar)
    try:
        yield
    finally:
        with _lock:
            _active.remove(progress_bar)
        progress_bar.update(max(0, total - progress_bar.n))
        progress_bar.close()
