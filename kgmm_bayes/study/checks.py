"""What a study checks before it starts: the seed, the user's data, and whether the data can
support the spec's mixture.  NumPy only: bad input fails here, before JAX and before disk."""
from __future__ import annotations

import warnings

import numpy as np

from ..data.stream import StreamedData, open_source, wants_streaming
from ..data.trajectory import load_trajectory, split_members, validate_snapshots
from ..errors import InputError
from ..spec import MAX_SEED, Spec

__all__ = ["check_seed", "load_user_data", "data_size", "mixture_parameters", "check_sizes", "auto_components", "screening_spec",
           "resolved_box", "LARGE_DIMENSION", "AUTO_CANDIDATES", "AUTO_BOX_MIN", "AUTO_BOX_FACTOR"]

# The largest dimension sampled on 2 CPU cores in a shipped study is 8; the cost of a NUTS gradient grows
# like K d^3 and its compile time steeply with d.
LARGE_DIMENSION = 16
AUTO_CANDIDATES = (4, 8, 16, 32)  # K compared when user data come with no [mixture] components
SNAPSHOTS_PER_PARAMETER = 20
CELLS_PER_COMPONENT = 10
SCREENING_DRAWS = 200
# [langevin] box = "auto": this many times the training data's largest |z|, and at least AUTO_BOX_MIN.  The box only
# catches a diverging drift; a box inside the data's own range cuts the model's tails (default study: training data
# to z = 9.8, the reference to 12.6: with a box of 10 its model lost 1-5 of 1,000 particles a run and scored 0.00111
# +- 0.00009 over five runs, with a box of 30 none and 0.00083 +- 0.00008)
AUTO_BOX_FACTOR = 2.0
AUTO_BOX_MIN = 10.0


def check_seed(seed) -> int:
    """The seed as an int in ``[0, MAX_SEED]`` (JAX keys take a signed 64-bit seed; derived seeds add to it)."""
    seed = int(seed)
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"--seed must be between 0 and {MAX_SEED} (2**62 - 1), got {seed}")
    return seed


def load_user_data(spec: Spec, array=None, progress=False, streaming=True):
    """The user's snapshots ``(members, n, d)``, validated with NumPy only; ``None`` for a system; a
    :class:`~kgmm_bayes.data.stream.StreamedData` (validated by its first pass) for a file streamed
    in blocks (``[data] streaming``; ``streaming`` False: never)."""
    if array is not None:
        return array if isinstance(array, StreamedData) else validate_snapshots(array, name="data")
    ds = spec.data
    if ds.path is not None and streaming and wants_streaming(ds.path, ds.streaming, ds.variable):
        if not spec.partition.coreset:
            raise InputError(f"[partition] coreset = false needs every snapshot in memory; data {ds.path!r} are "
                             "streamed: set [data] streaming = 'never' or keep the coreset")
        return StreamedData(open_source(ds.path, ds.variable), ds.heldout_fraction, ds.scheduler, progress)
    if spec.data.path is not None:
        return validate_snapshots(load_trajectory(spec.data.path, spec.data.variable),
                                  name=f"data file {spec.data.path!r}")
    return None


def mixture_parameters(k: int, d: int) -> int:
    """Free parameters of a K-component full-covariance Gaussian mixture in d dimensions."""
    return k * (d + d * (d + 1) // 2) + k - 1


def auto_components(spec: Spec, n: int, d: int) -> Spec:
    """The spec with K to be chosen from the data when it sets none (user data): candidates
    :data:`AUTO_CANDIDATES` that the data can support (at least :data:`SNAPSHOTS_PER_PARAMETER`
    training snapshots per mixture parameter and :data:`CELLS_PER_COMPONENT` cells per
    component), compared by PSIS-LOO on screening posteriors (:func:`screening_spec`)."""
    m = spec.mixture
    if m.components is not None:
        return spec
    if m.select_components:
        return spec._replace(mixture=m._replace(components=m.select_components[0]))
    cells = min(spec.partition.cells, n // 2)
    fits = tuple(k for k in AUTO_CANDIDATES if mixture_parameters(k, d) * SNAPSHOTS_PER_PARAMETER <= n
                 and k * CELLS_PER_COMPONENT <= cells)
    candidates = fits if len(fits) > 1 else (fits or (AUTO_CANDIDATES[0],))
    return spec._replace(mixture=m._replace(components=candidates[0],
                                            select_components=candidates if len(candidates) > 1 else ()))


def screening_spec(spec: Spec) -> Spec:
    """The sampler of the screening posteriors that compare candidate K: at most
    :data:`SCREENING_DRAWS` warmup and draws per chain (LOO differences between K are many
    nats; the chosen K is then sampled with the spec's own settings)."""
    s = spec.sampler
    return spec._replace(sampler=s._replace(warmup=min(s.warmup, SCREENING_DRAWS), draws=min(s.draws, SCREENING_DRAWS)))


def data_size(user_data, heldout_fraction: float):
    """``(training snapshots, d)`` of user data (an array or streamed)."""
    if isinstance(user_data, StreamedData):
        return user_data.snapshots, user_data.shape[-1]
    train, _ = split_members(user_data[..., :1], heldout_fraction)
    return len(train), user_data.shape[-1]


def check_sizes(spec: Spec, n: int, d: int) -> int:
    """Cells actually used; raises if the data cannot support the spec, warns when it will be slow."""
    k = max((spec.mixture.components,) + tuple(spec.mixture.select_components))
    if n < k:
        raise InputError(f"data has {n} snapshots, fewer than [mixture] components = {k}")
    cells = min(spec.partition.cells, n // 2)
    if cells < k:
        raise InputError(f"data has {n} snapshots: too few for {k} components "
                         f"(need at least {2 * k})")
    params = mixture_parameters(k, d)
    if params > n:
        raise InputError(f"a {k}-component mixture in d = {d} dimensions has {params} parameters, more than the "
                         f"{n} training snapshots: lower [mixture] components or give more data")
    if spec.data.variables and len(spec.data.variables) != d:
        raise InputError(f"[data] variables names {len(spec.data.variables)} variables, the data have {d}")
    if d > LARGE_DIMENSION:
        warnings.warn(f"data have d = {d} dimensions: the mixture has {params} parameters and NUTS compile time "
                      f"and cost grow steeply with d (shipped studies have d <= 8); expect a long run",
                      RuntimeWarning, stacklevel=3)
    return cells


def resolved_box(spec: Spec, data) -> Spec:
    """The spec with ``[langevin] box = "auto"`` replaced by :data:`AUTO_BOX_FACTOR` times the training data's
    largest ``|z|`` (every training snapshot, streamed or not: the first pass's minima and maxima), at least
    :data:`AUTO_BOX_MIN`; a number is kept.  ``data``: the study's :class:`~kgmm_bayes.data.trajectory.StudyData`."""
    lg = spec.langevin
    if lg.box != "auto":
        return spec
    mean, std = np.asarray(data.zscore.mean, np.float64), np.asarray(data.zscore.std, np.float64)
    if data.stream is not None:
        low, high = data.stream.scan.train.low, data.stream.scan.train.high
    else:
        train = np.asarray(data.train, np.float64)
        low, high = train.min(axis=0), train.max(axis=0)
    extent = float(np.max(np.maximum(np.abs(low - mean), np.abs(high - mean)) / std))
    return spec._replace(langevin=lg._replace(box=max(AUTO_BOX_MIN, AUTO_BOX_FACTOR * extent)))
