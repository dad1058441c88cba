"""Reading a study's output folder back: :func:`load_result` and the ``score`` command.

Every file is checked as it is read; a missing or damaged one raises :class:`InputError`
naming it.  The result keeps the fitted spec, the partition and a handle to the data:
a built-in system's snapshots come from the folder's stage cache (simulated again from
the seed if the cache was removed), a data file's from the file, an array's from the
``data.npy`` the study wrote.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from ..bayes.correction import correction_from_arrays
from ..bayes.diagnostics import chain_weights
from ..bayes.score import ChainDraws, thin_draws
from ..bayes.score_matching import field_from_stats
from ..data.stream import SAMPLE_SNAPSHOTS, open_source, read_sample, split_segments
from ..data.trajectory import as_series, load_trajectory, split_members, train_series_length, validate_snapshots
from ..data.zscore import ZScore
from ..errors import InputError
from ..errors import one_line as _one_line
from ..files import atomic_write_bytes, npz_bytes
from ..partition import Partition
from ..result import BayesianKGMM
from ..spec import spec_from_dict
from .outputs import SPEC_FILE, StageReader
from .report import correction_used
from .stages import prepare_data, study_keys

__all__ = ["load_result", "score_to_file", "PARTITION_FILE", "SCORE_BIAS_FILE", "DATA_FILE", "MODEL_DRAWS_FILE",
           "CORRECTION_FILE"]


PARTITION_FILE = "partition.npz"
CORRECTION_FILE = "score_correction.npz"  # the model score's score-matching correction (kgmm_bayes.bayes.correction)
SCORE_BIAS_FILE = "score_bias.npz"  # the posterior mean's local error field (kgmm_bayes.bayes.score_matching)
# the first posterior's draws, which drove the model where the coarsening sampled two (kgmm_bayes.study.stages)
MODEL_DRAWS_FILE = "model_draws.npz"
DATA_FILE = "data.npy"  # an array given to kgmm_bayes.fit, as given


def _reason(err: BaseException) -> str:
    """An exception as one short line."""
    text = _one_line(err) if str(err).strip() else ""
    if "mmap length is greater than file size" in text:
        text = "truncated: shorter than its header says"
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _damaged(out_dir: str, name: str, reason) -> InputError:
    if isinstance(reason, BaseException):
        reason = _reason(reason)
    reason = " ".join(str(reason).split())
    return InputError(f"study folder {out_dir!r}: {name} is damaged or not a kgmm-bayes file ({reason})")


def _read_metrics(out_dir: str) -> dict:
    name = "metrics.json"
    try:
        with open(os.path.join(out_dir, name), encoding="utf-8") as fh:
            metrics = json.load(fh)
    except Exception as err:  # noqa: BLE001 - JSON, encoding, nesting or OS errors: all damage
        raise _damaged(out_dir, name, err) from None
    if not isinstance(metrics, dict):
        raise _damaged(out_dir, name, f"holds a JSON {type(metrics).__name__}, expected an object")
    return metrics


def _read_rom_samples(out_dir: str) -> np.ndarray:
    name = "rom_samples.npy"
    try:  # memory-mapped first: a header that promises more data than the file holds fails here
        mapped = np.load(os.path.join(out_dir, name), mmap_mode="r", allow_pickle=False)
        if not isinstance(mapped, np.ndarray):
            if hasattr(mapped, "close"):
                mapped.close()
            raise ValueError("a .npz archive, not a .npy array")
        if mapped.dtype.kind not in "iuf":
            raise ValueError(f"dtype {mapped.dtype}, expected numbers")
        if mapped.ndim != 2:
            raise ValueError(f"shape {mapped.shape}, expected (n, d)")
        samples = np.array(mapped)
        del mapped
    except Exception as err:  # noqa: BLE001 - any reader failure is damage
        raise _damaged(out_dir, name, err) from None
    return samples


def _read_posterior(out_dir: str):
    import warnings

    import arviz as az

    from ..bayes.diagnostics import posterior_from_idata, zscore_from_idata

    name = "posterior.nc"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = az.from_netcdf(os.path.join(out_dir, name))
            weights, means, cov_chol = posterior_from_idata(idata)  # lazy: the values are read here
            zscore = zscore_from_idata(idata)
        for label, arr in (("weights", weights), ("means", means), ("cov_chol", cov_chol),
                           ("zscore_mean", zscore.mean), ("zscore_std", zscore.std)):
            if arr.dtype.kind not in "iuf":
                raise ValueError(f"{label} has dtype {arr.dtype}, expected numbers")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{label} holds NaN or infinite values")
        if weights.ndim != 2 or means.ndim != 3 or cov_chol.ndim != 4:
            raise ValueError(f"posterior shapes weights {weights.shape}, means {means.shape}, "
                             f"cov_chol {cov_chol.shape} are not (chain, draw, K, ...)")
        s, k, d = means.shape
        if s == 0 or k == 0 or d == 0 or weights.shape != (s, k) or cov_chol.shape != (s, k, d, d):
            raise ValueError(f"posterior shapes weights {weights.shape}, means {means.shape}, "
                             f"cov_chol {cov_chol.shape} do not agree")
        if zscore.mean.shape != (d,) or zscore.std.shape != (d,) or not np.all(zscore.std > 0):
            raise ValueError(f"z-score mean {zscore.mean.shape} / std {zscore.std.shape} do not fit "
                             f"{d} coordinates or std <= 0")
    except Exception as err:  # noqa: BLE001 - netCDF/HDF5/arviz errors of any kind, missing groups: damage
        raise _damaged(out_dir, name, err) from None
    zscore = ZScore(mean=np.asarray(zscore.mean, np.float64), std=np.asarray(zscore.std, np.float64))
    return idata, zscore, (weights, means, cov_chol)


def interpolant_trained(metrics: dict) -> bool:
    """Whether the study trained an interpolant (metrics.json ``interpolant.trained``; every study before
    ``[interpolant] train`` did)."""
    block = metrics.get("interpolant")
    return not isinstance(block, dict) or block.get("trained", True) is not False


def _read_interpolant(out_dir: str, d: int):
    from ..rom.interpolant import interpolant_from_arrays

    name = "interpolant.npz"
    try:  # interpolant_from_arrays checks sizes, layers, shapes and dtypes before building the network
        with np.load(os.path.join(out_dir, name), allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
        sizes = [int(v) for v in np.asarray(arrays["sizes"]).ravel()] if "sizes" in arrays else None
        if sizes is not None and (sizes[0] != d or sizes[-1] != d):
            raise ValueError(f"layer sizes {sizes} do not fit {d} coordinates")
        return interpolant_from_arrays(arrays, f"interpolant file {os.path.join(out_dir, name)}")
    except Exception as err:  # noqa: BLE001 - zip, npy, pickle, key or shape errors: all damage
        raise _damaged(out_dir, name, err) from None


def _read_spec(out_dir: str, metrics: dict):
    """The spec as fitted (the chosen K when the study chose one) and the seed, from ``spec.json``."""
    name = SPEC_FILE
    try:
        with open(os.path.join(out_dir, name), encoding="utf-8") as fh:
            saved = json.load(fh)
        raw = {section: {k: v for k, v in values.items() if v is not None}
               for section, values in saved["spec"].items()}
        if "langevin" in raw and "mixture_draws" not in raw["langevin"]:
            raw["langevin"]["mixture_draws"] = 0  # written before it existed: the mixture drift pooled every draw
        data_given = "system" not in raw.get("data", {}) and "path" not in raw.get("data", {})
        spec = spec_from_dict(raw, data_given=data_given)
        seed = int(saved["seed"])
    except Exception as err:  # noqa: BLE001 - JSON, keys, validation: all damage
        raise _damaged(out_dir, name, err) from None
    if spec.langevin.box == "auto":  # the box the study resolved from its data (kgmm_bayes.study.checks.resolved_box)
        langevin = metrics.get("langevin")
        box = langevin.get("box") if isinstance(langevin, dict) else None
        if not isinstance(box, (int, float)) or isinstance(box, bool) or not 0 < box < math.inf:
            raise _damaged(out_dir, "metrics.json", ValueError(f"langevin box {box!r} is not a positive number"))
        spec = spec._replace(langevin=spec.langevin._replace(box=float(box)))
    if "model_selection" in metrics:
        chosen = int(metrics.get("partition", {}).get("components", spec.mixture.components))
        spec = spec._replace(mixture=spec.mixture._replace(components=chosen, select_components=()))
    return spec, seed


def _read_partition(out_dir: str, d: int):
    """The partition (z-scored), or ``None`` for folders written before it was kept."""
    path = os.path.join(out_dir, PARTITION_FILE)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: np.asarray(f[key]) for key in f.files}
        part = Partition(**arrays)
        m, k = len(part.points), len(part.centroids)
        shapes = {"points": (m, d), "counts": (m,), "cell_covariances": (m, d, d), "centroids": (k, d),
                  "spreads": (k, d), "covariances": (k, d, d), "fractions": (k,), "cell_cluster": (m,)}
        for field, shape in shapes.items():
            if getattr(part, field).shape != shape:
                raise ValueError(f"{field} has shape {getattr(part, field).shape}, expected {shape}")
    except Exception as err:  # noqa: BLE001 - zip, npy, missing or extra fields, shapes: all damage
        raise _damaged(out_dir, PARTITION_FILE, err) from None
    return part


def _read_score_bias(out_dir: str, d: int, metrics: dict):
    """The posterior mean's local error field, or ``None`` (a study without one, or written before it was kept);
    a study whose metrics say it had one and whose file is gone is damaged."""
    path = os.path.join(out_dir, SCORE_BIAS_FILE)
    if not os.path.exists(path):
        if (metrics.get("posterior") or {}).get("score_bias"):
            raise _damaged(out_dir, SCORE_BIAS_FILE, "missing, although metrics.json reports the score band's "
                                                     "local bias")
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            field = field_from_stats({key: np.asarray(f[key]) for key in f.files})
        if field is None:
            raise ValueError("no score_bias_coefficients")
        j = len(field.centres)
        if (field.centres.shape != (j, d) or field.coefficients.ndim != 3 or field.coefficients.shape[1:] != (j, d)
                or len(field.coefficients) < 3 or not field.width > 0 or not np.isfinite(field.width)):
            raise ValueError(f"centres {field.centres.shape}, coefficients {field.coefficients.shape}, "
                             f"width {field.width} for {d} coordinates")
        if field.spread is not None and (field.spread.ndim != 3 or field.spread.shape[1:] != (j, d)
                                         or len(field.spread) < 2):
            raise ValueError(f"spread {field.spread.shape} for {j} bumps and {d} coordinates")
        if not (np.all(np.isfinite(field.centres)) and np.all(np.isfinite(field.coefficients))
                and (field.spread is None or np.all(np.isfinite(field.spread)))):
            raise ValueError("non-finite centres, coefficients or spread")
    except Exception as err:  # noqa: BLE001 - zip, npy, missing fields, shapes: all damage
        raise _damaged(out_dir, SCORE_BIAS_FILE, err) from None
    return field


def _read_correction(out_dir: str, d: int, metrics: dict):
    """The model score's applied correction, or ``None`` (none applied, or a study written before it existed); a
    study whose metrics say one was applied and whose file is gone is damaged."""
    path = os.path.join(out_dir, CORRECTION_FILE)
    applied = correction_used((metrics.get("interpolant") or {}).get("correction"))
    if not os.path.exists(path):
        if applied:
            raise _damaged(out_dir, CORRECTION_FILE, "missing, although metrics.json says the model's score was "
                                                     "corrected")
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            correction = correction_from_arrays(f)
        j = len(correction.centres)
        if correction.centres.shape != (j, d) or correction.theta.shape != (j, d) or not correction.width > 0:
            raise ValueError(f"centres {correction.centres.shape}, theta {correction.theta.shape}, width "
                             f"{correction.width} for {d} coordinates")
        spread = correction.spread  # absent from studies written before it was kept
        if spread is not None and (spread.ndim != 3 or spread.shape[1:] != (j, d)):
            raise ValueError(f"spread {spread.shape} for {j} bumps and {d} coordinates")
        if not (np.all(np.isfinite(correction.centres)) and np.all(np.isfinite(correction.theta))
                and np.isfinite(correction.width) and (spread is None or np.all(np.isfinite(spread)))):
            raise ValueError("non-finite centres, coefficients, spread or width")
    except Exception as err:  # noqa: BLE001 - zip, npy, missing fields, shapes: all damage
        raise _damaged(out_dir, CORRECTION_FILE, err) from None
    return correction


def _read_model_draws(out_dir: str, k: int, d: int, metrics: dict):
    """The draws that drove the model where they are not the posterior's (``None``: the posterior's); a study whose
    metrics say its model came from a first posterior and whose file is gone is damaged."""
    path = os.path.join(out_dir, MODEL_DRAWS_FILE)
    first = (metrics.get("langevin") or {}).get("drift_posterior") == "first"
    if not os.path.exists(path):
        if first:
            raise _damaged(out_dir, MODEL_DRAWS_FILE, "missing, although metrics.json says the model's drift came "
                                                      "from the first posterior")
        return None
    if not first:
        raise _damaged(out_dir, MODEL_DRAWS_FILE, "present, although metrics.json says the model's drift did not "
                                                  "come from a first posterior")
    try:
        with np.load(path, allow_pickle=False) as f:
            w, m, L = (np.asarray(f[name], np.float64) for name in ("weights", "means", "cov_chol"))
        s = len(w)
        if w.shape != (s, k) or m.shape != (s, k, d) or L.shape != (s, k, d, d) or s < 1:
            raise ValueError(f"weights {w.shape}, means {m.shape}, cov_chol {L.shape} for {k} components "
                             f"and {d} coordinates")
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(m)) and np.all(np.isfinite(L))):
            raise ValueError("non-finite draws")
    except Exception as err:  # noqa: BLE001 - zip, npy, missing fields, shapes: all damage
        raise _damaged(out_dir, MODEL_DRAWS_FILE, err) from None
    return w, m, L


class StoredData:
    """A loaded study's training and reference snapshots ``(n, d)``, physical units, read from their
    source on first use: a system's from the folder's stage cache (simulated again from the seed
    without it), a data file's from the file named in the spec, an array's from ``data.npy``."""

    def __init__(self, out_dir: str, spec, seed: int, metrics: dict):
        self._out_dir, self._spec, self._seed = out_dir, spec, seed
        self._expected = (metrics.get("data", {}).get("train_snapshots"),
                          metrics.get("data", {}).get("reference_snapshots"))
        self.source = metrics.get("data", {}).get("source", "")
        self._streamed = "streamed" in metrics.get("data", {})
        self._arrays, self._series_length = None, None

    def _load(self):
        if self._arrays is not None:
            return self._arrays
        ds = self._spec.data
        if ds.system is not None:
            data_key, reference_key = study_keys(self._seed)[:2]
            study_data = prepare_data(self._spec, data_key, reference_key, StageReader(self._out_dir))
            train, reference = study_data.train, study_data.reference
            self._series_length = study_data.series_length
        elif self._streamed:  # too large to hold: the in-memory samples of whole series the study kept
            source = open_source(ds.path, ds.variable)
            segments = split_segments(source.shape, ds.heldout_fraction)
            sizes = [sum(b - a for _, a, b in segs or segments[0]) for segs in segments]
            if sizes != list(self._expected):
                raise InputError(f"data {ds.path!r} now gives {sizes[0]} training and {sizes[1]} reference "
                                 f"snapshots, the study used {self._expected[0]} and {self._expected[1]}: "
                                 "it changed since the study ran")
            train, reference = (read_sample(source, segs or segments[0], SAMPLE_SNAPSHOTS) for segs in segments)
            source.close()
            self._series_length = None if ds.interval is None else train.shape[1]
            train, reference = train.reshape(-1, source.shape[-1]), reference.reshape(-1, source.shape[-1])
        else:
            if ds.path is not None:
                where = f"data file {ds.path!r}"
                raw = validate_snapshots(load_trajectory(ds.path, ds.variable), name=where)
            else:
                where = f"{os.path.join(self._out_dir, DATA_FILE)!r}"
                try:
                    raw = np.load(os.path.join(self._out_dir, DATA_FILE), allow_pickle=False)
                except Exception as err:  # noqa: BLE001 - missing, truncated or pickled: damage
                    raise _damaged(self._out_dir, DATA_FILE, err) from None
                raw = validate_snapshots(raw, name=where)
            train, reference = split_members(raw, ds.heldout_fraction)
            reference = train if reference is None else reference
            self._series_length = (None if ds.interval is None else  # validate_snapshots: (members, n, d)
                                   train_series_length(raw.shape, ds.heldout_fraction))
            if (len(train), len(reference)) != tuple(self._expected):
                raise InputError(f"{where} now gives {len(train)} training and {len(reference)} reference "
                                 f"snapshots, the study used {self._expected[0]} and {self._expected[1]}: "
                                 "it changed since the study ran")
        self._arrays = (train, reference)
        return self._arrays

    @property
    def train(self) -> np.ndarray:
        return self._load()[0]

    @property
    def reference(self) -> np.ndarray:
        return self._load()[1]

    @property
    def series_length(self):
        """Snapshots per training time series (one data interval apart); None without the data's time."""
        self._load()
        return self._series_length

    def train_series(self, z=None):
        """The training snapshots (or ``z``, aligned with them) as ``(series, series_length, d)``, the
        trajectories the study's lagged statistics used; None without the data's time."""
        return as_series(self.train if z is None else z, self.series_length)


def load_result(out_dir) -> BayesianKGMM:
    """Read a study's output folder (spec, partition, posterior, interpolant, samples, metrics).

    A missing or damaged file raises :class:`InputError` naming it, never a traceback;
    the cheap files are read first and the interpolant's network is built last.  The
    training and reference data are read from their source when first used (``result.data``).
    """
    out_dir = os.fspath(out_dir)
    needed = ["posterior.nc", "interpolant.npz", "rom_samples.npy", "metrics.json", SPEC_FILE]
    if not os.path.isdir(out_dir):
        raise InputError(f"study folder {out_dir!r} does not exist")
    missing = [n for n in needed if not os.path.exists(os.path.join(out_dir, n))]
    metrics = _read_metrics(out_dir) if missing in ([], ["interpolant.npz"]) else None
    trained = metrics is None or interpolant_trained(metrics)
    if not trained:  # no network where the study trained none (metrics.json says so)
        missing = [n for n in missing if n != "interpolant.npz"]
    if missing:
        raise InputError(f"study folder {out_dir!r} lacks {missing}; is it the output of 'kgmm-bayes run'?")
    spec, seed = _read_spec(out_dir, metrics)
    rom_samples = _read_rom_samples(out_dir)
    idata, zscore, (w, m, L) = _read_posterior(out_dir)
    d = m.shape[-1]
    if rom_samples.shape[1] != d:
        raise _damaged(out_dir, "rom_samples.npy", f"shape {rom_samples.shape}, the posterior has {d} coordinates")
    partition = _read_partition(out_dir, d)
    interpolant = _read_interpolant(out_dir, d) if trained else None
    # the draws the study used: at most [score] max_draws, thinned within each chain as it thinned them
    chains = int(idata.posterior.sizes["chain"])
    draws = thin_draws(ChainDraws(*(a.reshape((chains, -1) + a.shape[1:]) for a in (w, m, L))), spec.score.max_draws,
                       chain_weights=chain_weights(idata))
    return BayesianKGMM(spec=spec, zscore=zscore, inference_data=idata, partition=partition,
                        target_summary=None, interpolant=interpolant, rom_samples=rom_samples,
                        metrics=metrics, out_dir=out_dir, draws=draws,
                        data=StoredData(out_dir, spec, seed, metrics), score_bias=_read_score_bias(out_dir, d, metrics),
                        model_draws=_read_model_draws(out_dir, w.shape[-1], d, metrics),
                        correction=_read_correction(out_dir, d, metrics))


def score_to_file(study_dir, points_path, out_path, band: float = 0.9) -> int:
    """The ``score`` command: score a study at the points of a ``.npy`` file, write a ``.npz``.

    Writes arrays ``mean``, ``lower``, ``upper``, ``std`` and ``predictive`` (physical
    units) to ``out_path`` atomically; returns the number of points.  Every check on
    the arguments runs before the study is loaded, and ``out_path`` may not lie inside
    the study folder (a score file there could replace one of the study's own files).
    """
    study_dir, points_path, out_path = (os.fspath(p) for p in (study_dir, points_path, out_path))
    if not out_path.endswith(".npz"):
        raise InputError(f"--out must name a .npz file, got {out_path!r}")
    out_folder = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_folder):
        raise InputError(f"--out folder {out_folder!r} does not exist")
    real_out, real_study = os.path.realpath(out_path), os.path.realpath(study_dir)
    if os.path.commonpath([real_out, real_study]) == real_study:
        raise InputError(f"--out {out_path!r} lies inside the study folder {study_dir!r}; write scores elsewhere")
    if os.path.isdir(out_path):
        raise InputError(f"--out {out_path!r} is a folder, expected a .npz file name")
    if not os.access(out_folder, os.W_OK | os.X_OK):
        raise InputError(f"--out folder {out_folder!r} is not writable")
    if not points_path.endswith(".npy"):
        raise InputError(f"points file must be .npy, got {points_path!r}")
    points = load_trajectory(points_path)
    if points.ndim not in (1, 2):
        raise InputError(f"points file {points_path!r} must hold an array (n, d), got shape {points.shape}")
    if points.shape[0] == 0:
        raise InputError(f"points file {points_path!r} holds no points (shape {points.shape})")
    if not np.all(np.isfinite(points)):
        raise InputError(f"points file {points_path!r} holds NaN or infinite values")
    if not 0 < band < 1:
        raise InputError(f"band must lie strictly between 0 and 1, got {band}")
    summary = load_result(study_dir).score(points, band=band)
    payload = npz_bytes({"mean": summary.mean, "lower": summary.lower, "upper": summary.upper, "std": summary.std,
                         "predictive": summary.predictive})
    try:
        atomic_write_bytes(out_path, payload)
    except OSError as err:
        raise InputError(f"--out {out_path!r} could not be written ({_reason(err)})") from None
    return len(summary.mean)
