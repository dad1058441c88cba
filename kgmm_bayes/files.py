"""Writing files safely: whole files or none (atomic replace), and floats for JSON."""
from __future__ import annotations

import io
import os
import tempfile

import numpy as np

__all__ = ["atomic_write_bytes", "npy_bytes", "npz_bytes", "json_floats"]


def atomic_write_bytes(path: str, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file in the same folder: a kill or a full disk
    leaves either the old file or the new one, never half a file, and no temporary file behind."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def npy_bytes(array) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (for :func:`atomic_write_bytes`)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz_bytes(arrays: dict) -> bytes:
    """Named arrays as the bytes of an uncompressed ``.npz`` file."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def json_floats(values):
    """Floats for metrics.json, with NaN written as null (JSON has no NaN)."""
    arr = np.asarray(values, dtype=np.float64)
    out = [None if not np.isfinite(v) else float(v) for v in arr.ravel()]
    return out[0] if arr.ndim == 0 else out
