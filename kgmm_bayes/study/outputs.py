"""Output folders: a lock, staged writes, a recoverable swap at the end, and a verified stage cache.

A run takes ``<out>.lock`` (an ``flock`` on a file holding the owner's process
id; the kernel drops it when the process dies, so a stale lock from a killed
run is simply taken over), writes everything into ``<out>.partial`` and, when
all outputs exist, writes the manifest ``.kgmm-bayes.json`` (every file of
the result) into it and swaps it into place: ``<out>`` -> ``<out>.old``,
``<out>.partial`` -> ``<out>``, ``<out>.old`` removed.  A kill at any point
of that swap is repaired by the next run into the same folder, which first
finishes it: the newest complete result is what ``<out>`` then holds.

An existing ``<out>`` is replaced only when it is empty or holds a kgmm-bayes
result and nothing else: a folder of the user's own files is never replaced,
``--force`` included, and neither is a result folder to which the user added
files of their own.

Each pipeline stage stores its result as a plain ``.npz`` under ``.stages/``
named by a hash of its inputs (spec sections, seed, upstream stages), with a
SHA-256 of its arrays; a stage whose inputs have not changed is read back
instead of recomputed, from either folder (this is also how an interrupted
study resumes).  An entry that fails its checksum or cannot be rebuilt is
reported in one warning line, deleted and recomputed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import warnings

import numpy as np

from ..errors import CacheWarning, InputError
from ..errors import one_line as _one_line
from ..files import atomic_write_bytes, json_floats, npz_bytes

try:  # POSIX; elsewhere the lock degrades to an exclusive-create file with the owner's pid
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["OutputFolder", "StageReader", "FolderLock", "CacheWarning", "atomic_write_bytes", "stage_key", "json_floats",
           "read_stage_file", "MANIFEST"]

SPEC_FILE = "spec.json"
STAGES = ".stages"
MANIFEST = ".kgmm-bayes.json"
CHECKSUM = "__sha256__"
# Top-level entries written by kgmm-bayes versions that had no manifest: such a folder counts as a
# result (and may be replaced) only if it holds nothing else.
LEGACY_ENTRIES = frozenset({
    SPEC_FILE, STAGES, "figures", "metrics.json", "posterior.nc", "diagnostics.csv", "interpolant.npz",
    "rom_samples.npy", "report.md", "ensemble.npz", "model_selection.csv", "bayesian", "comparison.json",
    "comparison.csv", "comparison.md", "calibration.csv", "calibration.json", "calibration.md"})


def _read_text(path: str):
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError):
        return None


def _read_json(path: str):
    text = _read_text(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def stage_key(*parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _checksum(arrays: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def read_stage_file(path: str, build=None):
    """The arrays of a stage file (``build(arrays)`` if given), or ``None`` when there is none.

    A file that cannot be read, holds object arrays, fails its checksum or that
    ``build`` rejects is reported in one :class:`CacheWarning` line, deleted
    (when the folder is writable) and ``None`` is returned, so the caller
    recomputes it.
    """
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        stored = arrays.pop(CHECKSUM, None)
        if stored is None:
            raise ValueError("no checksum (written by an older version, or not a stage file)")
        if str(stored) != _checksum(arrays):
            raise ValueError("checksum mismatch")
        return arrays if build is None else build(arrays)
    except Exception as err:  # noqa: BLE001 - any damage means: recompute
        warnings.warn(f"stage cache entry {path} is damaged ({_one_line(err)}); recomputing it", CacheWarning,
                      stacklevel=3)
        try:
            os.unlink(path)
        except OSError:
            pass
        return None


def json_stage(out, stage: str, key: str, compute):
    """``(value, read back)``: a JSON value kept as ``stage`` in ``out``'s stage cache (an :class:`OutputFolder`),
    or ``compute()``'s, stored there first (``json.dumps(..., default=list)``).  Either way the value is the one
    decoded from its JSON, so a run that resumes from the entry gets exactly what the run that computed it got."""
    value = out.load_stage(stage, key, build=lambda a: json.loads(str(a["json"])))
    if value is not None:
        return value, True
    text = json.dumps(compute(), default=list)
    out.save_stage(stage, key, {"json": np.asarray(text)})
    return json.loads(text), False


class FolderLock:
    """An exclusive lock on ``path`` held by this process until :meth:`release`.

    ``flock`` on an open file holding the owner's pid: the kernel releases it
    when the owner dies, so a lock file left by a killed run is taken over.
    A lock held by a live process raises :class:`InputError` naming it.
    """

    def __init__(self, path: str, what: str):
        self.path = path
        self.fd = None
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                elif os.path.getsize(path) and self._owner_alive(fd):  # pragma: no cover
                    raise BlockingIOError(errno.EWOULDBLOCK, "locked")
            except BlockingIOError:
                owner = self._owner(fd)
                os.close(fd)
                raise InputError(f"{what} is in use by another kgmm-bayes run (process {owner}, lock {path}); "
                                 "wait for it to finish or choose another --out") from None
            except BaseException:
                os.close(fd)
                raise
            # the holder before us may have removed the file after we opened it: lock the file at ``path``
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())

    @staticmethod
    def _owner(fd) -> str:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, 64).decode(errors="replace").strip()
        except OSError:
            text = ""
        return text if text.isdigit() else "unknown"

    @classmethod
    def _owner_alive(cls, fd) -> bool:  # pragma: no cover - only without fcntl
        owner = cls._owner(fd)
        if not owner.isdigit():
            return False
        try:
            os.kill(int(owner), 0)
        except OSError:
            return False
        return True

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # before unlocking: a waiter that opened this file re-checks the path
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _manifest_files(folder: str) -> list[str]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            rel = os.path.relpath(os.path.join(root, name), folder)
            if rel != MANIFEST:
                files.append(rel.replace(os.sep, "/"))
    return files


def result_files(folder: str):
    """The files of the kgmm-bayes result in ``folder`` (relative paths), or ``None`` if it holds none."""
    manifest = _manifest(folder)
    if manifest is not None:
        return set(manifest["files"]) | {MANIFEST}
    spec = _read_json(os.path.join(folder, SPEC_FILE))
    if isinstance(spec, dict) and ("seed" in spec or "first_seed" in spec):  # staging, or a result without manifest
        return {rel for rel in _manifest_files(folder) if rel.split("/", 1)[0] in LEGACY_ENTRIES}
    return None


def foreign_files(folder: str, own: set) -> list[str]:
    """Files and empty folders under ``folder`` that are not in ``own``."""
    foreign = [rel for rel in _manifest_files(folder) if rel not in own]
    for root, dirs, names in os.walk(folder):
        if not dirs and not names and root != folder:
            foreign.append(os.path.relpath(root, folder).replace(os.sep, "/") + "/")
    return sorted(foreign)


def _manifest(folder: str):
    """The folder's manifest when it is a valid kgmm-bayes one, else ``None``."""
    manifest = _read_json(os.path.join(folder, MANIFEST))
    ok = isinstance(manifest, dict) and manifest.get("tool") == "kgmm-bayes" and isinstance(manifest.get("files"), list)
    return manifest if ok else None


def _is_complete(folder: str) -> bool:
    return os.path.isdir(folder) and _manifest(folder) is not None


def _stage_names(folder: str) -> list[str]:
    """The completed stage entries of a study folder (or its staging folder)."""
    stage_dir = os.path.join(folder, STAGES)
    return [n for n in os.listdir(stage_dir) if not n.startswith(".tmp-")] if os.path.isdir(stage_dir) else []


def _holds_work(folder: str) -> bool:
    """A nested study's folder worth keeping after a failure: a complete result, or a staging folder that its own
    failed run kept for its completed stages."""
    return os.path.isdir(folder) and (_is_complete(folder) or bool(_stage_names(folder)))


def _listing(names, limit=3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class OutputFolder:
    """The locked staging folder of one run and the final folder it replaces.

    Use as a context manager (or call :meth:`commit` / :meth:`abandon`): the
    lock is held from construction until the result is committed or the run
    fails.  On failure the staging folder is removed unless it holds completed
    stages, which the next run resumes from.
    """

    def __init__(self, out_dir: str, spec_json: str, force: bool = False):
        self.final = os.path.abspath(out_dir).rstrip(os.sep)
        self.staging = self.final + ".partial"
        self.old = self.final + ".old"
        self.spec_json = spec_json
        self.used_stages: set[str] = set()
        self.kept_staging = False
        name = repr(out_dir)
        if os.path.exists(self.final) and not os.path.isdir(self.final):
            raise InputError(f"--out {out_dir!r} exists and is not a folder")
        parent = os.path.dirname(self.final)
        try:
            os.makedirs(parent, exist_ok=True)
            self.lock = FolderLock(self.final + ".lock", f"output folder {name}")
        except OSError as err:
            raise InputError(f"cannot write output folder {name}: {err.strerror or _one_line(err)}") from None
        try:
            self._recover()
            self._check_replaceable(name, force)
            if os.path.isdir(self.staging):
                if result_files(self.staging) is None:
                    raise InputError(f"{self.staging!r} exists and is not a kgmm-bayes staging folder; "
                                     "move it away or choose another --out")
                if _read_text(os.path.join(self.staging, SPEC_FILE)) != spec_json:
                    shutil.rmtree(self.staging)  # our own leftover from another study: nothing to resume
            os.makedirs(os.path.join(self.staging, STAGES), exist_ok=True)
            os.makedirs(os.path.join(self.staging, "figures"), exist_ok=True)
            atomic_write_bytes(os.path.join(self.staging, SPEC_FILE), spec_json.encode())
        except BaseException:
            self.lock.release()
            raise

    # ---------------------------------------------------------------- checks and recovery
    def _recover(self) -> None:
        """Finish a swap that a kill interrupted, and remove what a completed swap left behind."""
        if _is_complete(self.staging):  # killed after the manifest was written: the newest complete result
            self._swap()
        elif not os.path.exists(self.final) and _is_complete(self.old):
            os.replace(self.old, self.final)  # killed between the two renames, staging already gone
        if os.path.isdir(self.old) and os.path.exists(self.final) and result_files(self.old) is not None:
            shutil.rmtree(self.old)

    def _check_replaceable(self, name: str, force: bool) -> None:
        if not os.path.isdir(self.final) or not os.listdir(self.final):
            return
        own = result_files(self.final)
        if own is None:
            raise InputError(f"output folder {name} is not empty and holds no kgmm-bayes result; "
                             "kgmm-bayes never replaces such a folder: choose another --out")
        foreign = foreign_files(self.final, own)
        if foreign:
            raise InputError(f"output folder {name} holds files that are not part of its kgmm-bayes result "
                             f"({_listing(foreign)}); move them out or choose another --out")
        if _read_text(os.path.join(self.final, SPEC_FILE)) != self.spec_json and not force:
            raise InputError(f"output folder {name} holds a different study; "
                             "choose another --out or pass --force to replace it")

    # ---------------------------------------------------------------- staging
    def path(self, *names) -> str:
        return os.path.join(self.staging, *names)

    def _stage_file(self, stage: str, key: str) -> str:
        return f"{stage}-{key}.npz"

    def load_stage(self, stage: str, key: str, build=None):
        """The cached arrays of ``stage`` (or ``build(arrays)``), or ``None`` when absent or damaged."""
        name = self._stage_file(stage, key)
        for folder in (self.staging, self.final):
            path = os.path.join(folder, STAGES, name)
            value = read_stage_file(path, build)
            if value is not None:
                self.used_stages.add(name)
                if folder == self.final:
                    shutil.copy2(path, os.path.join(self.staging, STAGES, name))
                return value
        return None

    def save_stage(self, stage: str, key: str, arrays: dict) -> None:
        name = self._stage_file(stage, key)
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        atomic_write_bytes(os.path.join(self.staging, STAGES, name),
                           npz_bytes({**arrays, CHECKSUM: np.asarray(_checksum(arrays))}))
        self.used_stages.add(name)

    # ---------------------------------------------------------------- the end of a run
    def _swap(self) -> None:
        if os.path.exists(self.final):
            if os.path.isdir(self.old):
                shutil.rmtree(self.old)
            os.replace(self.final, self.old)
        os.replace(self.staging, self.final)
        if os.path.isdir(self.old):
            shutil.rmtree(self.old)

    def commit(self) -> str:
        """Drop unused stage files, mark the staging folder complete and swap it into place."""
        try:
            stage_dir = os.path.join(self.staging, STAGES)
            for name in os.listdir(stage_dir):
                if name not in self.used_stages:
                    os.unlink(os.path.join(stage_dir, name))
            manifest = {"tool": "kgmm-bayes", "files": _manifest_files(self.staging)}
            atomic_write_bytes(os.path.join(self.staging, MANIFEST), json.dumps(manifest, indent=1).encode())
            self._swap()
        finally:
            self.lock.release()
        return self.final

    def abandon(self) -> None:
        """After a failure: keep the staging folder only if it holds completed stages (and then only them,
        with any nested study's complete result or kept stages: compare's ``bayesian/``); release the lock."""
        try:
            stage_dir = os.path.join(self.staging, STAGES)
            nested = [n for n in os.listdir(self.staging) if n not in (STAGES, "figures")
                      and _holds_work(os.path.join(self.staging, n))] if os.path.isdir(self.staging) else []
            if (_stage_names(self.staging) or nested) and not _is_complete(self.staging):
                self.kept_staging = True  # the next run resumes from the stages; outputs are rewritten then
                for name in os.listdir(self.staging):
                    path = os.path.join(self.staging, name)
                    if name == "figures":
                        shutil.rmtree(path, ignore_errors=True)
                        os.makedirs(path, exist_ok=True)
                    elif name not in (STAGES, SPEC_FILE, *nested):
                        if os.path.isdir(path):
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            os.unlink(path)
                for name in os.listdir(stage_dir) if os.path.isdir(stage_dir) else []:
                    if name.startswith(".tmp-"):
                        os.unlink(os.path.join(stage_dir, name))
            elif os.path.isdir(self.staging) and not _is_complete(self.staging):
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self.lock.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None and self.lock.fd is not None:
            self.abandon()
            if self.kept_staging:
                try:
                    exc.kgmm_note = f"completed stages kept in {self.staging!r} for the next run"
                except AttributeError:  # pragma: no cover
                    pass
        return False


class StageReader:
    """Read-only view of a finished study's stage cache (``load_stage`` as :class:`OutputFolder`'s;
    ``save_stage`` stores nothing), for a stage that reads a committed result."""

    def __init__(self, folder):
        self.folder = folder

    def load_stage(self, stage, key, build=None):
        return read_stage_file(os.path.join(self.folder, STAGES, f"{stage}-{key}.npz"), build)

    def save_stage(self, stage, key, arrays):
        pass
