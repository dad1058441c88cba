"""The fitted result of a study, for notebooks and the ``score`` command."""
from __future__ import annotations

import io
import json
import os
from typing import Any, NamedTuple, Optional

import jax.numpy as jnp
import numpy as np

from .bayes.score import ScoreSummary, score_draws, summarize_scores
from .data.zscore import ZScore
from .errors import InputError

__all__ = ["BayesianKGMM", "load_result", "score_to_file"]

SCORE_CHUNK = 4096  # points per score evaluation at most (a power of two)
SCORE_CHUNK_ELEMENTS = 2**22  # and draws * chunk * K * d at most: the (S, chunk, K, d) float64 intermediates


class BayesianKGMM(NamedTuple):
    """A fitted Bayesian KGMM: posterior, score summaries, interpolant, reduced-order model.

    Scores from :meth:`score` are in physical units; everything stored is in
    z-scored coordinates with ``zscore`` to convert.
    """

    spec: Any
    zscore: ZScore
    inference_data: Any  # arviz.InferenceData
    partition: Any
    target_summary: Optional[ScoreSummary]  # at the score-target points, z-scored
    interpolant: Any
    rom_samples: np.ndarray  # (n, d) physical units
    metrics: dict
    out_dir: Optional[str]
    draws: tuple  # (weights, means, cov_chol) of the draws used for scores

    def _points(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        d = len(self.zscore.mean)
        if x.ndim == 1 and d == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != d:
            raise InputError(f"points must have shape (n, {d}), got {np.shape(x)}")
        if not np.all(np.isfinite(x)):
            raise InputError("points hold NaN or infinite values")
        return x

    def score(self, x, band: float = 0.9, chunk: Optional[int] = None) -> ScoreSummary:
        """Posterior score summary at points ``x`` ``(n, d)`` in physical units.

        Evaluated ``chunk`` points at a time (default :func:`score_chunk`), each chunk
        summarised on its own (every summary is per point), so memory stays bounded
        for any ``n`` and the result equals a single evaluation of all points.
        """
        x = self._points(x)
        if not 0 < band < 1:
            raise InputError(f"band must lie strictly between 0 and 1, got {band}")
        d = x.shape[1]
        parts = [summarize_scores(s, lp, band) for s, lp in self._blocks(x, chunk)]
        std = self.zscore.std

        def joined(field):
            arrays = [getattr(p, field) for p in parts]
            return (np.concatenate(arrays) if arrays else np.zeros((0, d))) / std
        return ScoreSummary(mean=joined("mean"), std=joined("std"), lower=joined("lower"),
                            upper=joined("upper"), predictive=joined("predictive"), band=band)

    def score_draws(self, x, chunk: Optional[int] = None) -> np.ndarray:
        """Each posterior draw's mixture score at ``x`` ``(n, d)``: ``(draws, n, d)``, physical units.

        The result itself takes ``draws * n * d * 8`` bytes, so memory grows with ``n``
        here; the evaluation runs in chunks as :meth:`score` does.  For summaries over
        many points use :meth:`score`, whose memory is bounded.
        """
        x = self._points(x)
        blocks = [s for s, _ in self._blocks(x, chunk)]
        scores = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(self.draws[0]), 0, x.shape[1]))
        return scores / self.zscore.std

    def _blocks(self, x, chunk: Optional[int] = None):
        """``(scores (S, m, d), log densities (S, m))`` of the draws, chunk by chunk of ``x`` (physical).

        Every chunk is padded to the same size, so the jitted evaluation compiles once.
        """
        z = self.zscore.forward(x)
        n, d = z.shape
        chunk = score_chunk(n, self.draws) if chunk is None else int(chunk)
        if chunk < 1:
            raise InputError(f"chunk must be a positive integer, got {chunk}")
        draws = tuple(jnp.asarray(a) for a in self.draws)
        for start in range(0, n, chunk):
            block = z[start:start + chunk]
            m = len(block)
            if m < chunk:
                block = np.concatenate([block, np.zeros((chunk - m, d), dtype=block.dtype)])
            scores, logps = score_draws(*draws, block, chunk=chunk)
            yield scores[:, :m], logps[:, :m]

    def interpolant_score(self, x) -> np.ndarray:
        """The interpolant's score at ``x`` ``(n, d)``, physical units."""
        z = self.zscore.forward(np.asarray(x, dtype=np.float64))
        return np.asarray(self.interpolant(jnp.asarray(z, jnp.float32)), np.float64) / self.zscore.std


def score_chunk(n: int, draws) -> int:
    """Points per score evaluation: a power of two, at most :data:`SCORE_CHUNK`, with
    ``draws * chunk * K * d`` at most :data:`SCORE_CHUNK_ELEMENTS`, and no larger than
    ``n`` rounded up to a power of two (few compiled shapes, little padding)."""
    _, means, _ = draws
    s, k, d = np.shape(means)[-3:] if np.ndim(means) >= 3 else (1, 1, 1)
    chunk = max(1, min(int(SCORE_CHUNK), int(SCORE_CHUNK_ELEMENTS) // max(1, s * k * d)))
    chunk = 1 << (chunk.bit_length() - 1)
    return max(1, min(chunk, 1 << max(0, int(n) - 1).bit_length()))


def _reason(err: BaseException) -> str:
    """An exception as one short line."""
    from .errors import one_line as _one_line

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

    from .bayes.diagnostics import posterior_from_idata, zscore_from_idata

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


def _read_interpolant(out_dir: str, d: int):
    from .rom.interpolant import interpolant_from_arrays

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


def load_result(out_dir) -> BayesianKGMM:
    """Read a study's output folder (posterior, interpolant, samples, metrics).

    A missing or damaged file raises :class:`InputError` naming it, never a traceback;
    the cheap files are read first and the interpolant's network is built last.
    """
    out_dir = os.fspath(out_dir)
    needed = ["posterior.nc", "interpolant.npz", "rom_samples.npy", "metrics.json"]
    if not os.path.isdir(out_dir):
        raise InputError(f"study folder {out_dir!r} does not exist")
    missing = [n for n in needed if not os.path.exists(os.path.join(out_dir, n))]
    if missing:
        raise InputError(f"study folder {out_dir!r} lacks {missing}; is it the output of 'kgmm-bayes run'?")
    metrics = _read_metrics(out_dir)
    rom_samples = _read_rom_samples(out_dir)
    idata, zscore, (w, m, L) = _read_posterior(out_dir)
    d = m.shape[-1]
    if rom_samples.shape[1] != d:
        raise _damaged(out_dir, "rom_samples.npy", f"shape {rom_samples.shape}, the posterior has {d} coordinates")
    interpolant = _read_interpolant(out_dir, d)
    return BayesianKGMM(spec=None, zscore=zscore, inference_data=idata, partition=None,
                        target_summary=None, interpolant=interpolant, rom_samples=rom_samples,
                        metrics=metrics, out_dir=out_dir, draws=(w, m, L))


def score_to_file(study_dir, points_path, out_path, band: float = 0.9) -> int:
    """The ``score`` command: score a study at the points of a ``.npy`` file, write a ``.npz``.

    Writes arrays ``mean``, ``lower``, ``upper``, ``std`` and ``predictive`` (physical
    units) to ``out_path`` atomically; returns the number of points.  Every check on
    the arguments runs before the study is loaded, and ``out_path`` may not lie inside
    the study folder (a score file there could replace one of the study's own files).
    """
    from .data.trajectory import load_trajectory
    from .files import atomic_write_bytes

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
    buf = io.BytesIO()
    np.savez(buf, mean=summary.mean, lower=summary.lower, upper=summary.upper, std=summary.std,
             predictive=summary.predictive)
    try:
        atomic_write_bytes(out_path, buf.getvalue())
    except OSError as err:
        raise InputError(f"--out {out_path!r} could not be written ({_reason(err)})") from None
    return len(summary.mean)
