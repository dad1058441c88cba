"""Trajectory data: loading, validation and splitting into training and held-out members.

All checks here run on NumPy arrays before any JAX tracing and raise
:class:`InputError` (a ``ValueError``) with a one-line message naming the
offending argument.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import InputError

__all__ = [
    "as_series",
    "load_trajectory",
    "validate_snapshots",
    "as_members",
    "split_members",
    "StudyData",
]

SUPPORTED_SUFFIXES = (".npy", ".csv", ".nc")
MAX_CSV_LINE = 2**20  # characters: far above any row of d numbers; a longer line is not a CSV of snapshots


def _load_csv(path: str) -> np.ndarray:
    rows = []
    ncols = None
    first_content = True
    with open(path, "r", encoding="utf-8-sig", errors="strict") as fh:  # -sig: Excel's byte-order mark
        lineno = 0
        while True:
            line = fh.readline(MAX_CSV_LINE + 1)  # bounded: a file without newlines is never read whole
            if not line:
                break
            lineno += 1
            if len(line) > MAX_CSV_LINE:
                raise InputError(f"data file {path!r}: line {lineno} is longer than {MAX_CSV_LINE} characters; "
                                 "expected one snapshot per line")
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            fields = [f.strip() for f in text.split(",")]
            is_first, first_content = first_content, False
            try:
                values = [float(f) for f in fields]
            except ValueError:
                if is_first and not any(_is_number(f) for f in fields):
                    continue  # a header line: names only
                raise InputError(
                    f"data file {path!r}: non-numeric value on line {lineno}: {text[:60]!r}"
                ) from None
            if ncols is None:
                ncols = len(values)
            elif len(values) != ncols:
                raise InputError(
                    f"data file {path!r}: ragged CSV, line {lineno} has {len(values)} "
                    f"columns, expected {ncols}"
                )
            rows.append(values)
    if not rows:
        raise InputError(f"data file {path!r} holds no numeric rows")
    return np.asarray(rows, dtype=np.float64)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_netcdf(path: str, variable: str | None) -> np.ndarray:
    import xarray as xr

    try:
        ds = xr.open_dataset(path, engine="h5netcdf")
    except Exception as err:  # noqa: BLE001 - any reader failure is bad input
        raise InputError(f"data file {path!r} is not a readable netCDF file ({type(err).__name__})") from None
    with ds:
        names = list(ds.data_vars)
        if variable is None:
            if len(names) != 1:
                raise InputError(
                    f"data file {path!r} holds variables {names}; name one with [data] variable"
                )
            variable = names[0]
        if variable not in ds.data_vars:
            raise InputError(f"data file {path!r} has no variable {variable!r}; it has {names}")
        return np.asarray(ds[variable].values)


def load_trajectory(path: str | os.PathLike, variable: str | None = None) -> np.ndarray:
    """Load a trajectory file as a float64 array of shape ``(n, d)`` or ``(members, n, d)``.

    Supported: ``.npy`` (loaded without pickle), ``.csv`` (comma separated,
    one snapshot per row, an optional header line) and ``.nc`` (netCDF, one
    data variable or the one named by ``variable``).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"data file {path!r} does not exist")
    if os.path.isdir(path):
        raise InputError(f"data path {path!r} is a folder, expected a file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(
            f"data file {path!r} has unsupported type {suffix!r}; expected one of {SUPPORTED_SUFFIXES}"
        )
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if not isinstance(arr, np.ndarray):  # np.load opens a zip archive whatever the suffix
                arr.close()
                raise InputError(f"data file {path!r} is a .npz archive, not a .npy array")
        elif suffix == ".csv":
            arr = _load_csv(path)
        else:
            arr = _load_netcdf(path, variable)
    except InputError:
        raise
    except UnicodeDecodeError:
        raise InputError(f"data file {path!r} is not a text CSV file") from None
    except MemoryError:
        raise InputError(f"data file {path!r} is too large to load into memory") from None
    except (ValueError, EOFError, OSError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise InputError(f"data file {path!r} could not be read: {reason}") from None
    if arr.dtype.kind not in "biuf":
        raise InputError(f"data file {path!r} holds non-numeric values (dtype {arr.dtype})")
    return np.asarray(arr, dtype=np.float64)


def validate_snapshots(x, name: str = "data", min_snapshots: int = 2) -> np.ndarray:
    """Check a snapshot array and return it as float64 ``(members, n, d)``.

    Accepts ``(n,)`` (one coordinate), ``(n, d)`` and ``(members, n, d)``.
    """
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a numeric array") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(
            f"{name} must have shape (n, d) or (members, n, d), got shape {np.shape(x)}"
        )
    members, n, d = arr.shape
    if members == 0 or n == 0 or d == 0:
        raise InputError(f"{name} is empty (shape {np.shape(x)})")
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise InputError(f"{name} holds {bad} NaN or infinite values")
    if np.max(np.abs(arr)) > 1e150:
        raise InputError(f"{name} holds values too large to standardise (max |x| = {np.max(np.abs(arr)):.3g})")
    if members * n < min_snapshots:
        raise InputError(f"{name} has {members * n} snapshots, need at least {min_snapshots}")
    flat = arr.reshape(-1, d)
    spread = flat.std(axis=0)
    scale = np.maximum(np.abs(flat).max(axis=0), 1e-300)
    constant = np.flatnonzero(spread <= 1e-12 * scale)
    if constant.size:
        raise InputError(f"{name} has constant coordinate(s) {constant.tolist()}; they carry no density")
    return arr


def as_members(x) -> np.ndarray:
    """View ``(n, d)`` as ``(1, n, d)``; leave ``(members, n, d)`` alone."""
    arr = np.asarray(x)
    return arr[None] if arr.ndim == 2 else arr


def train_series_length(shape, heldout_fraction: float) -> int:
    """Snapshots per training time series of user data ``(members, n, d)`` split by :func:`split_members`."""
    members, n, _ = shape
    if heldout_fraction <= 0 or members >= 5:
        return n
    return n - max(1, int(round(n * heldout_fraction)))


def split_members(arr: np.ndarray, heldout_fraction: float):
    """Split ``(members, n, d)`` into training and held-out snapshot sets ``(n_i, d)``.

    With several members the last ``heldout_fraction`` of members is held out
    (independent trajectories); with one member the last part in time is.
    Returns ``(train, heldout)``; ``heldout`` is ``None`` when the fraction is 0.
    """
    members, n, d = arr.shape
    if heldout_fraction <= 0:
        return arr.reshape(-1, d), None
    if members >= 5:
        n_out = max(1, int(round(members * heldout_fraction)))
        return arr[: members - n_out].reshape(-1, d), arr[members - n_out :].reshape(-1, d)
    n_out = max(1, int(round(n * heldout_fraction)))
    return arr[:, : n - n_out].reshape(-1, d), arr[:, n - n_out :].reshape(-1, d)


class StudyData:
    """Training and reference snapshots ``(n, d)`` in physical units, with the transform.

    ``series_length``: the training snapshots are consecutive time series of this many snapshots
    each, one data interval apart (``train.reshape(-1, series_length, d)``); None: no time order.

    ``stream``: data streamed from disk (:class:`~kgmm_bayes.data.stream.StreamedData`); ``train`` and
    ``reference`` are then its in-memory samples of whole series, and the marginals that the metrics
    compare against are binned over every snapshot by the partition's pass (:meth:`set_marginals`).
    """

    def __init__(self, train, reference, zscore, analytic_score=None, source="", series_length=None, stream=None):
        self.train = train
        self.reference = reference
        self.zscore = zscore
        self.analytic_score = analytic_score
        self.source = source
        self.series_length = series_length
        self.stream = stream
        self.train_marginals = self.reference_marginals = None
        self.cell_pass_time = None
        # the reference is a long run of the system, scored against smoothed as each set it is compared with
        # (relative_entropy's matched; kgmm_bayes.study.compare.with_long_reference)
        self.reference_matched = False

    @property
    def snapshots(self) -> int:
        """Training snapshots (all of them, streamed or not)."""
        return len(self.train) if self.stream is None else self.stream.snapshots

    @property
    def reference_snapshots(self) -> int:
        return len(self.reference) if self.stream is None else self.stream.reference_snapshots

    def set_marginals(self, train, heldout, seconds=None):
        """The binned marginals of every training / held-out snapshot (``heldout`` None: the training set's)."""
        self.train_marginals, self.reference_marginals = train, train if heldout is None else heldout
        self.cell_pass_time = seconds

    def reference_density(self):
        """What a model's marginals are compared with: binned over every held-out snapshot when streamed."""
        return self.reference if self.reference_marginals is None else self.reference_marginals

    def train_density(self):
        return self.train if self.train_marginals is None else self.train_marginals

    def train_series(self, z=None):
        """The training snapshots (or ``z``, aligned with them) as ``(series, series_length, d)``."""
        return as_series(self.train if z is None else z, self.series_length)


def as_series(x, series_length):
    """Snapshots ``(n, d)`` as consecutive time series ``(n / series_length, series_length, d)``; None
    without a ``series_length``."""
    x = np.asarray(x)
    return None if series_length is None else x.reshape(-1, series_length, x.shape[-1])
