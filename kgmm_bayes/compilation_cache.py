"""JAX's persistent compilation cache for kgmm-bayes's programs.

A study compiles about two hundred XLA programs (MAP searches, the Hessian, NUTS's chains, the
networks, the Langevin model); on the default study that is about a third of the posterior stage's
wall time on 2 CPU cores.  JAX can keep compiled programs on disk and load them instead of compiling
again when the same program (same shapes, same JAX, XLA and machine) comes back in another process
(https://docs.jax.dev/en/latest/persistent_compilation_cache.html); a loaded program is the compiled
one, so the numbers are the same.

The CLI turns the cache on (:func:`enable`); in Python (notebooks) call
``kgmm_bayes.enable_compilation_cache()`` yourself.  Where it lives: the folder named by the
environment variable ``KGMM_BAYES_COMPILATION_CACHE``, else ``$XDG_CACHE_HOME/kgmm-bayes/jax``
(``~/.cache/kgmm-bayes/jax``); ``KGMM_BAYES_COMPILATION_CACHE=off`` turns it off, and a cache the
user set up for JAX (``JAX_COMPILATION_CACHE_DIR``) is left as it is.  Its size is bounded
(:data:`MAX_BYTES`, least recently used programs evicted).  The cache is code JAX will run: keep it
in a folder only you can write.  JAX does not keep programs with host callbacks, which the progress
display puts into the loops it follows (NUTS's chains, the networks' training, the Langevin runs):
with the display on, those compile every run; ``--quiet`` runs load them too.

:class:`JaxWork` measures how much of a stretch of wall time went to JAX's one-time work: tracing
and lowering Python functions, and compiling them (or loading them from this cache), from JAX's own
monitoring events; a study reports it per stage.
"""
from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from pathlib import Path

import jax
from jax import monitoring

__all__ = ["enable", "default_dir", "ENV", "MAX_BYTES", "JaxWork"]

ENV = "KGMM_BAYES_COMPILATION_CACHE"
MAX_BYTES = 1 << 30  # 1 GiB; the default study's programs take about 2 MB
OFF = ("off", "0", "false", "no", "none")


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kgmm-bayes" / "jax"


def enable(path: str | os.PathLike | None = None) -> Path | None:
    """Turn JAX's persistent compilation cache on, in ``path`` (default: the environment variable
    :data:`ENV`, else :func:`default_dir`); returns the folder used, or None when it is off
    (``ENV`` says so, or the folder cannot be made: a one-line warning, and the run goes on compiling
    as usual).  A compilation cache already set for JAX is kept and returned."""
    if not jax.config.jax_enable_compilation_cache:  # turned off for JAX itself
        return None
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return Path(configured)
    setting = os.environ.get(ENV, "")
    if path is None and setting.strip().lower() in OFF:
        return None
    folder = Path(path if path is not None else (setting.strip() or default_dir())).expanduser()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"{folder} is not writable")
    except OSError as err:
        warnings.warn(f"compilation cache off: cannot use {folder} ({err})", RuntimeWarning, stacklevel=2)
        return None
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", str(folder))
    # every program, not only those over a second: most of a study's are 0.05-0.5 s each
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if importlib.util.find_spec("filelock") is not None:  # JAX needs it to bound the cache's size
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    compilation_cache.reset_cache()  # programs compiled before this call had found no cache: look again
    return folder


# JAX's monitoring events (jax._src.dispatch): a function traced to a jaxpr, a jaxpr lowered to an MLIR module,
# a module compiled by XLA or loaded from the persistent cache (the compile event spans both), a cache hit
_TRACING_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def _union_seconds(spans) -> float:
    """Seconds covered by the union of ``(start, end)`` spans: nested spans and spans of concurrent threads
    count once (a span whose end precedes its start, from a step of the wall clock, counts nothing)."""
    total, reach = 0.0, -float("inf")
    for start, end in sorted(spans):
        if end > reach:
            total += max(0.0, end - max(start, reach))
            reach = end
    return total


class JaxWork:
    """Wall seconds that went to JAX's compiling (or loading compiled programs from the cache: JAX's compile
    span covers both) and, apart from that, to tracing and lowering, since the last :meth:`mark`, with the
    persistent cache's hits.  Compile spans can fall inside tracing spans (a value computed while tracing, a
    thread compiling while another traces): tracing is the time tracing spans cover outside compile spans, so
    the two add up to the union of all of them, within the stretch's wall time.

    The listeners are registered once per process and only append to shared lists: a pair per instance would
    pile up on JAX's listener lists.  With a JAX older than its time-span events :attr:`available` is False and
    :meth:`mark` returns None."""

    _lock = threading.Lock()
    _spans: dict = {"tracing": [], "compiling": []}
    _hits: list = []
    _registered = False
    available = hasattr(monitoring, "register_event_time_span_listener")

    def __init__(self):
        if self.available:
            self._register()
        self._cursor = self._position()

    @classmethod
    def _register(cls):
        with cls._lock:
            if cls._registered:
                return

            def on_span(event, start, end, **_):
                if event == _COMPILE_EVENT:
                    cls._spans["compiling"].append((start, end))
                elif event in _TRACING_EVENTS:
                    cls._spans["tracing"].append((start, end))

            def on_event(event, **_):
                if event == _CACHE_HIT_EVENT:
                    cls._hits.append(1)

            monitoring.register_event_time_span_listener(on_span)
            monitoring.register_event_listener(on_event)
            cls._registered = True

    def _position(self):
        return len(self._spans["tracing"]), len(self._spans["compiling"]), len(self._hits)

    def mark(self) -> dict | None:
        """``{"tracing": s, "compiling": s, "cache_hits": n}`` since the last mark (or construction), and the
        next stretch starts; None where JAX has no time-span events."""
        now = self._position()
        (t0, c0, h0), self._cursor = self._cursor, now
        if not self.available:
            return None
        compiling = self._spans["compiling"][c0:now[1]]
        both = _union_seconds(self._spans["tracing"][t0:now[0]] + compiling)
        compiled = _union_seconds(compiling)
        return {"tracing": both - compiled, "compiling": compiled, "cache_hits": now[2] - h0}
