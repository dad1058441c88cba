"""Trajectories of any size, read in blocks (DESIGN.md, "Data of any size").

A trajectory on disk (``.npy`` memory-mapped, a zarr store or a netCDF file through xarray, or a
folder of ``.npy`` pieces that follow each other in time) is never loaded whole. Two passes over
it do what needs every snapshot:

1. :func:`scan`: validation (every block, before any expensive stage), the moments of the
   training and held-out sets (the z-score, the reference's KDE bandwidth), a digest of the data,
   and an evenly spaced subsample of the training set that the partition is fitted on;
2. :func:`cell_pass`: every training snapshot assigned to its fine cell, the exact cell
   statistics (counts, sums, second moments) and the linear-binning counts of each marginal of
   both sets (:class:`~kgmm_bayes.metrics.density.BinnedDensity`).

Every pass is a fold over fixed blocks of :data:`BLOCK` snapshots in their order, each block's
partial result computed from zero (the second pass folds groups of :data:`GROUP` blocks, then the groups). The same floats come out whatever the storage's chunking and
wherever the blocks run: in this process, or as tasks on a ``dask.distributed`` cluster
(:func:`open_client`), whose partial results are folded here in block order. In-memory arrays go
through the same blocks (:func:`cell_statistics`), so the streamed statistics equal them exactly.
"""
from __future__ import annotations

import copy
import glob
import hashlib
import os
import sys
import time
from typing import NamedTuple, Optional

import numpy as np

from .._picks import evenly_spaced
from ..errors import InputError
from ..metrics.density import BinnedDensity, kde_mesh, linear_bins

__all__ = ["BLOCK", "GROUP", "FIT_SNAPSHOTS", "fit_positions", "cell_statistics", "block_statistics", "Source", "open_source",
           "split_segments", "scan", "Scan", "cell_pass", "CellPass", "read_sample", "open_client", "STREAM_SUFFIXES"]

STREAM_MESH_STEP = 1e-2  # the reference's binned KDE: mesh spacing in bandwidths (error ~1e-5 of the peak)
STREAM_SUFFIXES = (".npy", ".nc", ".zarr")


FIT_SNAPSHOTS = 1_000_000  # the fine partition (kgmm_bayes.partition) is fitted on at most this many snapshots
BLOCK = 1 << 17  # snapshots per block of every pass and of the cell statistics: fixes the order of every sum
GROUP = 8  # blocks per task of the second pass (a cluster's task costs about half a second to send and return)


def fit_positions(n: int, fit_snapshots: int = FIT_SNAPSHOTS) -> np.ndarray:
    """The evenly spaced positions (of ``n`` snapshots in order) that the fine partition is fitted on."""
    return evenly_spaced(n, fit_snapshots)


def block_statistics(z, labels, cells: int):
    """Counts ``(M,)``, sums ``(M, d)`` and second moments ``(M, d, d)`` of one block, from zero."""
    d = z.shape[1]
    counts = np.bincount(labels, minlength=cells).astype(np.float64)
    sums = np.stack([np.bincount(labels, weights=z[:, i], minlength=cells) for i in range(d)], axis=1)
    second = np.empty((cells, d, d))
    for i in range(d):
        for j in range(i, d):
            second[:, i, j] = second[:, j, i] = np.bincount(labels, weights=z[:, i] * z[:, j], minlength=cells)
    return counts, sums, second


def add_statistics(total, part):
    """``total + part`` element by element (statistics or bins of consecutive blocks); ``total`` None: ``part``."""
    return part if total is None else tuple(a + b for a, b in zip(total, part))


def cell_statistics(z, labels, cells: int):
    """The cells' counts, sums and second moments of snapshots ``z`` ``(n, d)``: blocks of :data:`BLOCK`
    snapshots in order, each from zero, folded in groups of :data:`GROUP` blocks and the groups folded in
    order, as the streamed pass over data on disk does (below), so the two give the same floats."""
    total, group = None, GROUP * BLOCK
    for start in range(0, len(z), group):
        part = None
        for lo in range(start, min(start + group, len(z)), BLOCK):
            part = add_statistics(part, block_statistics(z[lo:lo + BLOCK], labels[lo:lo + BLOCK], cells))
        total = add_statistics(total, part)
    return total


# ---------------------------------------------------------------- sources
class Source:
    """A trajectory ``(members, n, d)`` read a slice at a time; picklable (a cluster's workers reopen
    it by path). ``pieces``: for a folder of pieces, the first time index of each (and the end)."""

    def __init__(self, path, kind, shape, variable=None, files=None, starts=None):
        self.path, self.kind, self.shape, self.variable = path, kind, tuple(int(s) for s in shape), variable
        self.files, self.starts = files, starts
        self._handle = self._dataset = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = state["_dataset"] = None
        return state

    @property
    def snapshots(self) -> int:
        return self.shape[0] * self.shape[1]

    def _open(self):
        if self._handle is None:
            if self.kind == "npy":
                self._handle = _npy_layout(self.path)
            elif self.kind in ("zarr", "nc"):
                self._dataset, self._handle = _xarray_variable(self.path, self.kind, self.variable)
        return self._handle

    def close(self):
        """Close the file this process keeps open (xarray's); a later read opens it again."""
        if getattr(self, "_dataset", None) is not None:
            self._dataset.close()
        self._dataset = self._handle = None

    def read(self, first: int, last: int, start: int, stop: int) -> np.ndarray:
        """Snapshots ``start:stop`` of members ``first:last`` as float64 ``(last - first, stop - start, d)``:
        one read of the slab (a zarr or netCDF chunk is decompressed once for all its members)."""
        if self.kind == "pieces":
            parts = []
            i = int(np.searchsorted(self.starts, start, side="right") - 1)
            while i < len(self.files) and self.starts[i] < stop:
                lo, hi = self.starts[i], self.starts[i + 1]
                piece = _as3d(np.load(self.files[i], mmap_mode="r", allow_pickle=False))
                parts.append(np.asarray(piece[first:last, max(start, lo) - lo:min(stop, hi) - lo], np.float64))
                i += 1
            return np.concatenate(parts, axis=1)
        arr = self._open()
        if self.kind != "npy":
            if arr.ndim == 3:
                return np.asarray(arr[first:last, start:stop].values, dtype=np.float64)
            rows = np.asarray(arr[start:stop].values, dtype=np.float64)  # one member: (n,) or (n, d)
            return rows.reshape(1, stop - start, -1)
        offset, dtype, fortran = arr
        _, n, d = self.shape
        if fortran:  # rare: a Fortran-ordered file is read through a map made for this read alone
            return np.asarray(_as3d(np.load(self.path, mmap_mode="r"))[first:last, start:stop], dtype=np.float64)
        # plain reads, not a kept memory map: pages once read do not stay in this process's memory
        if start == 0 and stop == n:  # whole members: one contiguous read
            rows = [(first, last)]
        else:
            rows = [(m, m + 1) for m in range(first, last)]
        out = [np.fromfile(self.path, dtype=dtype, count=(b - a) * (stop - start) * d,
                           offset=offset + (a * n + start) * d * dtype.itemsize).reshape(b - a, stop - start, d)
               for a, b in rows]
        return np.concatenate(out).astype(np.float64)

    def where(self, member: int, index: int) -> str:
        """Where snapshot ``index`` of ``member`` lies, for messages (the piece's file, if pieces)."""
        if self.kind != "pieces":
            return f"member {member}, snapshot {index}"
        i = int(np.searchsorted(self.starts, index, side="right") - 1)
        return (f"piece {i + 1} of {len(self.files)} ({os.path.basename(self.files[i])!r}), member {member}, "
                f"snapshot {index - self.starts[i]} of that piece")


def _npy_layout(path):
    """``(offset of the data, dtype, Fortran order)`` of a ``.npy`` file, from its header."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        _, fortran, dtype = read_header(fh)
        return fh.tell(), np.dtype(dtype), fortran


def _as3d(arr):
    if arr.ndim == 1:
        return arr[None, :, None]
    return arr[None] if arr.ndim == 2 else arr


def _xarray_variable(path, kind, variable):
    import xarray as xr

    try:
        ds = xr.open_zarr(path, chunks=None) if kind == "zarr" else xr.open_dataset(path, engine="h5netcdf",
                                                                                   chunks=None)
    except Exception as err:  # noqa: BLE001 - any reader failure is bad input
        raise InputError(f"data {path!r} is not a readable {'zarr store' if kind == 'zarr' else 'netCDF file'} "
                         f"({type(err).__name__})") from None
    names = list(ds.data_vars)
    if variable is None:
        if len(names) != 1:
            raise InputError(f"data {path!r} holds variables {names}; name one with [data] variable")
        variable = names[0]
    if variable not in ds.data_vars:
        raise InputError(f"data {path!r} has no variable {variable!r}; it has {names}")
    var = ds[variable].variable
    if var.ndim not in (1, 2, 3):
        raise InputError(f"data {path!r}: variable {variable!r} has {var.ndim} dimensions, expected 1 to 3")
    return ds, var


def _shape3(shape):
    """``(members, n, d)`` of an array of shape ``(n,)``, ``(n, d)`` or ``(members, n, d)``."""
    return (1, shape[0], 1) if len(shape) == 1 else (1, *shape) if len(shape) == 2 else tuple(shape)


def open_source(path, variable: Optional[str] = None) -> Source:
    """A :class:`Source` over ``path`` (its shape and type checked, nothing read): ``.npy``, ``.nc``,
    a ``.zarr`` store, or a folder (or glob pattern) of ``.npy`` pieces in time order (sorted by name,
    each ``(n_i, d)`` or ``(members, n_i, d)``)."""
    path = os.fspath(path)
    if not os.path.exists(path) and any(c in path for c in "*?["):
        files = sorted(glob.glob(path))
        if not files:
            raise InputError(f"data pattern {path!r} matches no file")
        return _pieces(path, files)
    if not os.path.exists(path):
        raise InputError(f"data file {path!r} does not exist")
    suffix = os.path.splitext(path.rstrip(os.sep))[1].lower()
    if os.path.isdir(path) and suffix != ".zarr":
        files = sorted(glob.glob(os.path.join(path, "*.npy")))
        if not files:
            raise InputError(f"data folder {path!r} holds no .npy pieces")
        return _pieces(path, files)
    if suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise InputError(f"data file {path!r} could not be read: {reason}") from None
        if not isinstance(arr, np.ndarray):
            raise InputError(f"data file {path!r} is a .npz archive, not a .npy array")
        _check_dtype(path, arr.dtype)
        if arr.ndim not in (1, 2, 3):
            raise InputError(f"data file {path!r} has shape {arr.shape}; expected (n, d) or (members, n, d)")
        source = Source(path, "npy", _as3d(arr).shape)
    elif suffix in (".zarr", ".nc"):
        kind = suffix[1:]
        ds, var = _xarray_variable(path, kind, variable)
        _check_dtype(path, var.dtype)
        source = Source(path, kind, _shape3(var.shape), variable=variable)
        ds.close()
    else:
        raise InputError(f"data {path!r} has unsupported type {suffix!r} for streaming; expected one of "
                         f"{STREAM_SUFFIXES} or a folder of .npy pieces")
    if min(source.shape) == 0:
        raise InputError(f"data {path!r} is empty (shape {source.shape})")
    return source


def _check_dtype(path, dtype):
    if np.dtype(dtype).kind not in "biuf":
        raise InputError(f"data {path!r} holds non-numeric values (dtype {dtype})")


def _pieces(path, files) -> Source:
    shapes = []
    for i, f in enumerate(files):
        where = f"data chunk {i + 1} of {len(files)} ({f!r})"
        try:
            arr = np.load(f, mmap_mode="r", allow_pickle=False)  # the header only
        except (ValueError, OSError, EOFError) as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise InputError(f"{where} could not be read: {reason}") from None
        if not isinstance(arr, np.ndarray) or arr.ndim not in (2, 3):
            raise InputError(f"{where} is not an (n, d) or (members, n, d) array")
        _check_dtype(f, arr.dtype)
        shape = _as3d(arr).shape
        if shapes and (shape[0], shape[2]) != (shapes[0][0], shapes[0][2]):
            raise InputError(f"{where} has {shape[0]} member(s) of dimension {shape[2]}, expected "
                             f"{shapes[0][0]} of dimension {shapes[0][2]} as in the first piece")
        shapes.append(shape)
    starts = np.concatenate([[0], np.cumsum([s[1] for s in shapes])]).astype(np.int64)
    return Source(path, "pieces", (shapes[0][0], int(starts[-1]), shapes[0][2]), files=files, starts=starts)


# ---------------------------------------------------------------- segments and blocks
def split_segments(shape, heldout_fraction: float):
    """``(train, heldout)`` as lists of ``(member, start, stop)``, cut as
    :func:`~kgmm_bayes.data.trajectory.split_members` cuts an array; ``heldout`` is None at fraction 0."""
    members, n, _ = shape
    if heldout_fraction <= 0:
        return [(m, 0, n) for m in range(members)], None
    if members >= 5:
        keep = members - max(1, int(round(members * heldout_fraction)))
        return [(m, 0, n) for m in range(keep)], [(m, 0, n) for m in range(keep, members)]
    cut = n - max(1, int(round(n * heldout_fraction)))
    return [(m, 0, cut) for m in range(members)], [(m, cut, n) for m in range(members)]


def _total(segments) -> int:
    return sum(stop - start for _, start, stop in segments)


def _blocks(segments):
    """The blocks of the flattened ``segments``: ``(position of the first snapshot, runs)``, each run
    ``(first member, last member + 1, start, stop)`` of consecutive members over the same times, in order."""
    blocks, runs, filled, position = [], [], 0, 0
    for member, start, stop in segments:
        while start < stop:
            take = min(stop - start, BLOCK - filled)
            last = runs[-1] if runs else None
            if last and last[1] == member and last[2:] == (start, start + take) and take == stop - start:
                runs[-1] = (last[0], member + 1, start, start + take)
            else:
                runs.append((member, member + 1, start, start + take))
            filled, start = filled + take, start + take
            if filled == BLOCK:
                blocks.append((position, runs))
                position, runs, filled = position + BLOCK, [], 0
    if runs:
        blocks.append((position, runs))
    return blocks


def _read_block(source, runs) -> np.ndarray:
    return np.concatenate([source.read(*run).reshape(-1, source.shape[2]) for run in runs])


def _locate(runs, index):
    """``(member, time index)`` of row ``index`` of a block."""
    for first, last, start, stop in runs:
        size = (last - first) * (stop - start)
        if index < size:
            return first + index // (stop - start), start + index % (stop - start)
        index -= size
    raise IndexError(index)


# ---------------------------------------------------------------- running the blocks
def open_client(address: Optional[str]):
    """A ``dask.distributed`` client: ``address`` a scheduler's (``tcp://host:port``), ``"local"`` a
    local cluster; None: no cluster (the blocks run in this process)."""
    if not address:
        return None
    from dask.distributed import Client, LocalCluster

    if address == "local":
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        try:
            return Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
    try:  # not dask's default client: the study's own file writes stay in this process
        return Client(address, set_as_default=False, timeout=30)
    except (OSError, TimeoutError, ValueError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise InputError(f"[data] scheduler {address!r} could not be reached: {reason}") from None


def _run(fn, tasks, client, progress_label=None):
    """``fn(*task)`` for every task, yielded in task order (on ``client`` when given, in waves)."""
    start, total, last = time.perf_counter(), len(tasks), -1.0
    if client is None:
        results = (fn(*t) for t in tasks)
    else:
        wave = 2 * max(1, sum(client.nthreads().values()))

        def gen():
            for i in range(0, total, wave):
                yield from client.gather(client.map(fn, *zip(*tasks[i:i + wave]), pure=False))
        results = gen()
    for i, result in enumerate(results):
        if progress_label and (i + 1 == total or time.perf_counter() - last > 5.0):
            last = time.perf_counter()
            print(f"[kgmm-bayes] {progress_label}: part {i + 1} of {total} "
                  f"({last - start:.0f} s)", file=sys.stderr, flush=True)
        yield result


# ---------------------------------------------------------------- pass 1: validation, moments, subsample
class Moments(NamedTuple):
    n: int
    mean: np.ndarray
    m2: np.ndarray  # sum of squared deviations from the mean
    low: np.ndarray
    high: np.ndarray

    def merge(self, other: "Moments") -> "Moments":  # Chan et al.'s pairwise update
        n = self.n + other.n
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * (other.n / n), self.m2 + other.m2 + delta**2 * (self.n * other.n / n),
                       np.minimum(self.low, other.low), np.maximum(self.high, other.high))

    def std(self, ddof=0):
        return np.sqrt(self.m2 / (self.n - ddof))


def _moments(x) -> Moments:
    mean = x.mean(axis=0)
    return Moments(len(x), mean, ((x - mean) ** 2).sum(axis=0), x.min(axis=0), x.max(axis=0))


def _scan_block(source, runs, lo, picks, label):
    x = _read_block(source, runs)
    hi = lo + len(x)
    bad = ~np.isfinite(x)
    if bad.any() or (np.abs(x).max() > 1e150):
        first = int(np.flatnonzero(bad.any(axis=1) if bad.any() else (np.abs(x) > 1e150).any(axis=1))[0])
        member, index = _locate(runs, first)
        what = f"{int(bad.sum())} NaN or infinite value(s)" if bad.any() else "a value too large to standardise"
        return ("bad", f"{what}, the first at {source.where(member, index)} ({label} positions {lo}-{hi - 1})")
    return ("ok", _moments(x), hashlib.sha256(np.ascontiguousarray(x).tobytes()).digest(), x[picks - lo])


class Scan(NamedTuple):
    """What :func:`scan` finds: the training and held-out sets' moments, the data's digest and the
    training subsample (physical units) at evenly spaced positions."""

    train: Moments
    heldout: Optional[Moments]
    digest: str
    fit_sample: np.ndarray
    wall_time: float


def scan(source: Source, train, heldout, fit_snapshots: int, client=None, progress=False) -> Scan:
    """Pass 1 over ``source``'s training and held-out ``segments``: raises :class:`InputError` at the
    first bad block, naming it (block i of the pass's total, and the member and snapshot)."""
    start = time.perf_counter()
    if _total(train) < 2:
        raise InputError(f"data {source.path!r} leave {_total(train)} training snapshots after the held-out part, "
                         "need at least 2: lower [data] heldout_fraction")
    digest = hashlib.sha256()
    sets, out, sample = [("training", train), ("held-out", heldout)], {}, []
    n_train = _total(train)
    picks = fit_positions(n_train, fit_snapshots)
    blocks = [(name, lo, runs) for name, segs in sets if segs for lo, runs in _blocks(segs)]
    tasks = [(source, runs, lo, picks[np.searchsorted(picks, lo):np.searchsorted(picks, lo + BLOCK)]
              if name == "training" else picks[:0], name) for name, lo, runs in blocks]
    for i, (result, (name, _, _)) in enumerate(zip(_run(_scan_block, tasks, client,
                                                           progress and "data pass 1 (validation, moments)"),
                                                      blocks)):
        if result[0] == "bad":
            raise InputError(f"data {source.path!r}: block {i + 1} of {len(blocks)} holds {result[1]}")
        _, mom, block_digest, rows = result
        out[name] = mom if name not in out else out[name].merge(mom)
        digest.update(block_digest)
        if len(rows):
            sample.append(rows)
    mom = out["training"]
    constant = np.flatnonzero(mom.std() <= 1e-12 * np.maximum(np.maximum(np.abs(mom.low), np.abs(mom.high)), 1e-300))
    if constant.size:
        raise InputError(f"data {source.path!r} has constant coordinate(s) {constant.tolist()}; they carry no density")
    return Scan(mom, out.get("held-out"), digest.hexdigest(), np.concatenate(sample),
                time.perf_counter() - start)


def read_sample(source: Source, segments, budget: int):
    """At most ``budget`` snapshots of the ``segments`` as whole time series, for the statistics that
    need time order: ``(series, length, d)``, evenly spaced over the members (whole members while
    ``budget`` holds two, else stretches of ``budget // 8``)."""
    length = min(stop - start for _, start, stop in segments)
    if length * 2 > budget:
        length = max(budget // 8, 2)
    per_segment = [(m, s + off, s + off + length) for m, s, e in segments
                   for off in range(0, e - s - length + 1, length)]
    count = max(1, min(len(per_segment), budget // length))
    picks = evenly_spaced(len(per_segment), count)
    return np.stack([source.read(per_segment[i][0], per_segment[i][0] + 1, *per_segment[i][1:])[0] for i in picks])


# ---------------------------------------------------------------- pass 2: cells and marginals
def _cell_group(source, blocks, zscore, predict, cells, meshes):
    """The statistics and marginal bins of consecutive blocks (their runs), folded in order."""
    stats, bins = None, None
    for runs in blocks:
        x = _read_block(source, runs)
        part_bins = [linear_bins(x[:, i], *mesh) for i, mesh in enumerate(meshes)]
        bins = add_statistics(bins, part_bins)
        if predict is not None:
            z = (x - zscore.mean) / zscore.std
            stats = add_statistics(stats, block_statistics(z, np.asarray(predict(z)), cells))
    return stats, bins


def _one_thread(predict):
    """A fitted scikit-learn estimator's ``predict`` on one OpenMP thread, for a cluster's workers: each
    runs its own tasks, and the thread count the estimator fixed when it was fitted here oversubscribes
    the cores (two workers of two threads on two cores: 20 times slower, measured). Labels are unchanged."""
    estimator = getattr(predict, "__self__", None)
    if estimator is None or not hasattr(estimator, "_n_threads"):
        return predict
    estimator = copy.copy(estimator)
    estimator._n_threads = 1
    return estimator.predict


class CellPass(NamedTuple):
    counts: Optional[np.ndarray]
    sums: Optional[np.ndarray]
    second: Optional[np.ndarray]
    train_marginals: list  # one BinnedDensity per coordinate
    heldout_marginals: Optional[list]
    wall_time: float


def marginal_meshes(moments: Moments):
    """Per coordinate ``(lo, step, points, bandwidth)`` of a set's binned KDE (Scott's bandwidth)."""
    bandwidth = moments.std(ddof=1) * moments.n ** (-0.2)
    return [(*kde_mesh(lo - 8 * h, hi + 8 * h, h, STREAM_MESH_STEP), h)
            for lo, hi, h in zip(moments.low, moments.high, bandwidth)]


def cell_pass(source: Source, train, heldout, found: Scan, zscore, predict, cells: int, client=None,
              progress=False) -> CellPass:
    """Pass 2: the training snapshots' cells (``predict(z)`` on z-scored blocks) and their exact
    statistics, and both sets' marginals binned (``predict`` None: the marginals only)."""
    start = time.perf_counter()
    result = {}
    if client is not None and predict is not None:  # the fitted tree sent to each worker once, not with every task
        predict = client.scatter(_one_thread(predict), broadcast=True)
    for name, segs, mom in (("training", train, found.train), ("held-out", heldout, found.heldout)):
        if not segs:
            continue
        meshes = marginal_meshes(mom)
        grids = [m[:3] for m in meshes]
        runs = [r for _, r in _blocks(segs)]
        tasks = [(source, runs[i:i + GROUP], zscore, predict if name == "training" else None, cells, grids)
                 for i in range(0, len(runs), GROUP)]
        stats, bins = None, None
        for part, part_bins in _run(_cell_group, tasks, client, progress and f"data pass 2 ({name} set)"):
            if part is not None:
                stats = add_statistics(stats, part)
            bins = add_statistics(bins, part_bins)
        result[name] = (stats, [BinnedDensity(*mesh[:3], b, mom.n, mesh[3], low, high)
                                for mesh, b, low, high in zip(meshes, bins, mom.low, mom.high)])
    stats, train_marginals = result["training"]
    counts, sums, second = stats if stats is not None else (None, None, None)
    return CellPass(counts, sums, second, train_marginals, result.get("held-out", (None, None))[1],
                    time.perf_counter() - start)


# ---------------------------------------------------------------- a study's streamed data
STREAM_ABOVE = 2_000_000  # [data] streaming = "auto": files of more snapshots are streamed
SAMPLE_SNAPSHOTS = 1_000_000  # whole series kept in memory for what needs time order or raw snapshots


def wants_streaming(path, mode: str, variable=None) -> bool:
    """Whether ``[data] streaming = mode`` streams ``path`` (header only read)."""
    if mode == "never":
        return False
    path = os.fspath(path)
    suffix = os.path.splitext(path.rstrip(os.sep))[1].lower()
    if mode == "always" or os.path.isdir(path) or (not os.path.exists(path) and any(c in path for c in "*?[")):
        return True
    if suffix not in (".npy", ".nc") or not os.path.exists(path):
        return False  # CSV, or a missing file: the in-memory loader says what is wrong
    try:
        return open_source(path, variable).snapshots > STREAM_ABOVE
    except Exception:  # noqa: BLE001 - unreadable here: the in-memory loader gives its own message
        return False


class StreamedData:
    """User data too large to hold, after pass 1 (validated; moments, digest and the partition's fit
    subsample known): its training / held-out segments and in-memory samples of whole series."""

    def __init__(self, source: Source, heldout_fraction: float, scheduler: str = "", progress=False,
                 sample_snapshots: int = SAMPLE_SNAPSHOTS, fit_snapshots: int | None = None):
        self.source, self.progress = source, progress
        self.train_segments, self.heldout_segments = split_segments(source.shape, heldout_fraction)
        address = scheduler or os.environ.get("KGMM_BAYES_SCHEDULER", "")
        self.client = open_client(address)
        self.scheduler = "" if self.client is None else address
        try:
            self.scan = scan(source, self.train_segments, self.heldout_segments,
                             FIT_SNAPSHOTS if fit_snapshots is None else fit_snapshots, self.client, progress)
            self.train_sample = read_sample(source, self.train_segments, sample_snapshots)
            self.reference_sample = read_sample(source, self.heldout_segments or self.train_segments,
                                                sample_snapshots)
        except BaseException:
            self.close()
            raise

    @property
    def shape(self):
        return self.source.shape

    @property
    def snapshots(self) -> int:
        """Training snapshots."""
        return _total(self.train_segments)

    @property
    def reference_snapshots(self) -> int:
        return _total(self.heldout_segments or self.train_segments)

    def cells(self, zscore, predict, cells: int) -> CellPass:
        """Pass 2 (see :func:`cell_pass`)."""
        return cell_pass(self.source, self.train_segments, self.heldout_segments, self.scan, zscore, predict, cells,
                         self.client, self.progress)

    def close(self):
        self.source.close()
        if self.client is not None:
            cluster = getattr(self.client, "cluster", None)
            self.client.close()
            if cluster is not None:
                cluster.close()
            self.client = None
