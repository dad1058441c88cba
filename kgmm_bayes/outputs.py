"""Output folders: staged writes, an atomic swap at the end, and a stage cache.

A study writes everything into ``<out>.partial`` and only when all outputs
exist renames it over ``<out>``: a crash or a kill never leaves ``<out>``
half-overwritten.  Each pipeline stage stores its result as a plain ``.npz``
under ``.stages/`` named by a hash of its inputs (spec sections, seed,
upstream stages), so a stage whose inputs have not changed is read back
instead of recomputed, from either folder; this is also how an interrupted
study resumes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from .data import InputError

__all__ = ["OutputFolder", "atomic_write_bytes", "stage_key", "json_floats"]

SPEC_FILE = "spec.json"
STAGES = ".stages"


def _read_text(path: str):
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def json_floats(values):
    """Floats for metrics.json, with NaN written as null (JSON has no NaN)."""
    arr = np.asarray(values, dtype=np.float64)
    out = [None if not np.isfinite(v) else float(v) for v in arr.ravel()]
    return out[0] if arr.ndim == 0 else out


def stage_key(*parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def atomic_write_bytes(path: str, payload: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class OutputFolder:
    """The staging folder of one study run and the final folder it replaces."""

    def __init__(self, out_dir: str, spec_json: str, force: bool = False):
        self.final = os.path.abspath(out_dir)
        self.staging = self.final.rstrip(os.sep) + ".partial"
        self.spec_json = spec_json
        if os.path.exists(self.final) and not os.path.isdir(self.final):
            raise InputError(f"--out {out_dir!r} exists and is not a folder")
        if os.path.isdir(self.final) and os.listdir(self.final) and not force:
            spec_path = os.path.join(self.final, SPEC_FILE)
            if not os.path.exists(spec_path):
                raise InputError(f"output folder {out_dir!r} is not empty and holds no kgmm-bayes study; "
                                 "choose another --out or pass --force")
            if _read_text(spec_path) != spec_json:
                raise InputError(f"output folder {out_dir!r} holds a different study; "
                                 "choose another --out or pass --force")
        parent = os.path.dirname(self.final)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, exist_ok=True)
        if os.path.isdir(self.staging) and _read_text(os.path.join(self.staging, SPEC_FILE)) != spec_json:
            shutil.rmtree(self.staging)  # our own leftover from another study: nothing to resume
        os.makedirs(os.path.join(self.staging, STAGES), exist_ok=True)
        os.makedirs(os.path.join(self.staging, "figures"), exist_ok=True)
        atomic_write_bytes(os.path.join(self.staging, SPEC_FILE), spec_json.encode())
        self.used_stages: set[str] = set()

    def path(self, *names) -> str:
        return os.path.join(self.staging, *names)

    def _stage_file(self, stage: str, key: str) -> str:
        return f"{stage}-{key}.npz"

    def load_stage(self, stage: str, key: str):
        name = self._stage_file(stage, key)
        for folder in (self.staging, self.final):
            path = os.path.join(folder, STAGES, name)
            if os.path.exists(path):
                with np.load(path, allow_pickle=False) as f:
                    arrays = {k: f[k] for k in f.files}
                self.used_stages.add(name)
                if folder == self.final:
                    shutil.copy2(path, os.path.join(self.staging, STAGES, name))
                return arrays
        return None

    def save_stage(self, stage: str, key: str, arrays: dict) -> None:
        name = self._stage_file(stage, key)
        path = os.path.join(self.staging, STAGES, name)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".npz")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
        self.used_stages.add(name)

    def commit(self) -> str:
        """Drop unused stage files and swap the staging folder into place."""
        stage_dir = os.path.join(self.staging, STAGES)
        for name in os.listdir(stage_dir):
            if name not in self.used_stages:
                os.unlink(os.path.join(stage_dir, name))
        old = None
        if os.path.exists(self.final):
            old = self.final.rstrip(os.sep) + ".old"
            if os.path.exists(old):
                shutil.rmtree(old)
            os.replace(self.final, old)
        os.replace(self.staging, self.final)
        if old is not None:
            shutil.rmtree(old)
        return self.final
