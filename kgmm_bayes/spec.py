"""Study specifications: TOML files in ``models/``, validated before anything runs.

A spec has the sections below; every key is optional except that ``[data]``
needs either ``system`` (a built-in system) or ``path`` (a trajectory file,
relative paths resolved from the spec's folder).  Unknown sections or keys,
wrong types and out-of-range values raise :class:`SpecError` with a one-line
message naming the key.  The schema *is* the ``NamedTuple`` classes here:
their fields are the allowed keys, their defaults the defaults.
"""
from __future__ import annotations

import json
import math
import os
import re
import reprlib
import sys
from typing import NamedTuple, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .data.systems import SYSTEMS
from .errors import InputError

__all__ = ["SpecError", "Spec", "load_spec", "spec_from_dict", "DEFAULT_STUDY", "EnsembleSection", "data_interval_of",
           "uses_mobility", "trains_interpolant"]


class SpecError(InputError):
    """A study spec is invalid; the message names the key."""


class StudySection(NamedTuple):
    name: str = "study"
    seed: int = 0
    description: str = ""


class DataSection(NamedTuple):
    system: Optional[str] = None
    path: Optional[str] = None
    variable: Optional[str] = None  # netCDF variable name
    members: Optional[int] = None  # built-in systems: ensemble size (system default)
    steps: Optional[int] = None
    thin: Optional[int] = None
    burn_in: Optional[int] = None
    dt: Optional[float] = None
    heldout_fraction: float = 0.2  # user data: share held out as the reference set
    variables: tuple = ()  # the variables' names, for figures and reports (default x0, x1, ...)
    # user data: physical time between consecutive snapshots of a member (built-in systems: dt x thin);
    # None: time scales (mobility, correlation functions, responses) are not available
    interval: Optional[float] = None
    # a file too large to hold: "auto" streams it in blocks (kgmm_bayes.data.stream) when it is a zarr store, a
    # folder of .npy pieces, or a .npy / .nc file of more than 2,000,000 snapshots; "always"; "never"
    streaming: str = "auto"
    # the streamed passes on a dask.distributed cluster: a scheduler's address (tcp://host:port), or "local"
    # for a local cluster; "" (default): the environment variable KGMM_BAYES_SCHEDULER, else this process
    scheduler: str = ""


class PartitionSection(NamedTuple):
    cells: int = 2000  # fine cells: score-target points and weighted coreset
    coreset: bool = True  # False: the likelihood uses every snapshot
    # the coarse cluster bisecting K-means splits next (kgmm_bayes.partition.SPLITS): "size", the one of most cells
    # (cells hold similar counts: about the most populous); "inertia", the one of largest inertia (greedy K-means:
    # components reach a heavy tail)
    split: str = "size"


class MixtureSection(NamedTuple):
    components: Optional[int] = None  # None: 10 for a built-in system, chosen from the data for user data
    select_components: tuple = ()  # candidate K: the study fits each and keeps the best by PSIS-LOO
    dirichlet_alpha: float = 5.0  # pseudo-counts: keeps components from dying (funnels, extra modes)
    mean_scale: float = 0.25  # prior sd of each mean, in units of its cluster spread
    scale_prior: float = 1.0  # HalfCauchy scale of component standard deviations
    lkj_eta: float = 2.0
    # coarsened posterior (Miller & Dunson 2019): "auto" picks alpha from the data (kgmm_bayes.bayes.coarsening),
    # a number fixes alpha (the effective sample size the posterior levels off at), "off": standard posterior
    coarsening: object = "auto"
    # with "auto": "stein": the score's squared bias is also measured as the cross-fitted score-matching gap of
    # a linear correction by Gaussian bumps (kgmm_bayes.bayes.score_matching.stein_gap) and used where it is
    # significant; "report": that gap is measured and reported only (the richer mixture alone sets the bias);
    # "score_matching": a held-out network's gap is a floor on the error (it can coarsen a lot:
    # Kuramoto-Sivashinsky D = 4 then loses accuracy, relative entropy 0.015 vs 0.005)
    coarsening_bound: str = "stein"


class SamplerSection(NamedTuple):
    chains: int = 4
    warmup: int = 500
    draws: int = 400  # per chain: 1,600 draws give the default study r_hat <= 1.01 over NUTS keys (models/reduced_1d.toml)
    target_accept: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False  # true: the same as metric = "dense" (the older spelling)
    metric: str = "auto"  # "dense" up to 50 parameters at 500 warmup iterations (sampler.resolved_metric), else
    # "diagonal"; or "diagonal", "dense" (from the Laplace covariance, whitened beyond 100 parameters, unsharded),
    # "laplace" (the Laplace covariance fixed)
    map_starts: int = 8  # chains start at the best of this many MAP searches; 0: at the partition
    map_steps: int = 1000
    shard_data: bool = False  # split the likelihood's points over all devices (chains then run in turn)
    chain_starts: str = "best"  # "spread": chains at the best distinct MAP optima within 10 nats; "distinct":
    # at the best distinct ones however far below the best (stacked when in several modes)
    # the chains label-invariant r_hat > 1.01 faults on (diagnostics.drifting_chains) run on from their last draw,
    # their draws so far then counting as warmup, at most this many times
    extend: int = 0
    # cells of the likelihood NUTS samples: "auto", the coarsest merge of the partition's cells whose log-likelihood
    # gap has sd <= 0.1 nats over Laplace draws at the MAP (rechecked on the draws at 0.2; to first order posterior
    # means move by at most that many posterior sds; kgmm_bayes.bayes.coreset; no merge without MAP searches or
    # with coreset = false); a number: that many merged cells, unchecked (the partition's cells or more: the cells)
    likelihood_cells: object = "auto"
    # the precision of that likelihood: "auto", float32 where its gap to the cells' float64 likelihood keeps the same
    # bound (sd <= 0.1 nats over the Laplace draws, rechecked on the draws at 0.2); "float64"; "float32" (unchecked)
    likelihood_precision: str = "auto"
    # the coarsening's second posterior starts where the first one's chains ended (sampler.run_nuts' warm); false:
    # from MAP optima, the first one's polished at its own zeta (run_nuts' map_from)
    warm_start: bool = True
    # the coarsening's first posterior, which gives the standard posterior's score variance, the score-matching gap
    # and the model's drift where a second, more coarsened posterior is sampled: "nuts"; or "laplace", the Laplace
    # approximation at the MAP optima the chains would start at (stacked as they are), NUTS only for the posterior kept
    first_posterior: str = "nuts"
    # the posterior the coarsening keeps, whose draws set the bands: "nuts"; or "laplace", its Laplace approximation
    # at MAP optima of its own (the first posterior's polished at its zeta), stacked as chains are: no NUTS at all
    # with first_posterior = "laplace" too.  Where the first posterior is the one kept (no more coarsening asked for),
    # it stays as first_posterior sampled it
    kept_posterior: str = "nuts"


class ScoreSection(NamedTuple):
    band: float = 0.9
    max_draws: int = 1000  # draws (thinned across chains) used for score summaries


class InterpolantSection(NamedTuple):
    hidden: tuple = (128, 64)
    steps: int = 4000
    learning_rate: float = 3e-3
    # training snapshots the network also learns from, with the posterior-mean score there in closed form
    # (evenly spaced outside the held-out blocks, an eighth of the series); 0: the cell centres alone
    snapshots: int = 0
    batch: int = 2048  # with snapshots: points per Adam step (drawn by weight) once there are more than this
    # the targets: "auto", the posterior-mean score corrected by score matching in a basis of Gaussian bumps where
    # that lowers Hyvarinen's score cross-validated over blocks of the training snapshots
    # (kgmm_bayes.bayes.correction; the network then learns at 20,000 training snapshots at least); "off": the
    # posterior-mean score.  The "mixture" drift adds the same correction to the posterior-predictive score, the
    # posterior ensemble's members each a draw of it (its sampling error); the score bands stay the posterior's.
    # A significant correction is used unless two pilot runs of the model, with and without it, say it does worse
    # (by more than two standard errors) against the training data (kgmm_bayes.study.stages.correction_check_stage;
    # metrics.json interpolant.correction.model_check); with the "interpolant" drift the pilots run the networks
    # trained on the uncorrected and the corrected targets, and the model keeps the one the check chose (no third
    # training).
    # Model relative entropy, 3 model runs, uncorrected -> "auto": Kuramoto-Sivashinsky D = 4 0.0047 -> 0.0005,
    # four-well 0.00044 -> 0.00015, triad 0.00044 -> 0.00048, Lorenz-63 0.00039 -> 0.00039 (README,
    # "Comparison"); the default study: no correction the data support; Lorenz-96 (one run) 0.0019 -> 0.047: a
    # significant decrease of Hyvarinen's score does not guarantee a better model, hence the model's check above
    # (which drops it there; its spec turns it off, saving the fit and the pilots)
    correction: str = "auto"
    # "auto": the network is trained where a model runs on it ([langevin] drift = "interpolant"); with the
    # "mixture" drift no model uses it, and it is not trained (Lorenz-96: 86 s of a 387 s study).  "always": trained
    # whatever the drift, for Result.score(drift="interpolant") and Result.simulate(drift="interpolant")
    train: str = "auto"


class LangevinSection(NamedTuple):
    drift: str = "interpolant"  # or "mixture": the posterior-predictive mixture score
    # the "mixture" drift pools this many posterior draws (evenly spaced among the study's; 0: all of them).
    # Lorenz-96, one standard posterior, 200 particles: relative entropy 0.0072 with 16 draws, 0.0073 with 64
    mixture_draws: int = 16
    particles: int = 1000
    dt: float = 0.005
    steps: int = 40000
    burn_in: int = 2000
    thin: int = 200  # 1 time unit at dt = 0.005: snapshots nearly independent
    # |x_i| <= box in z-scored units: a particle leaving it is lost (counted; a diverging drift).  "auto": twice the
    # training data's largest |z|, at least AUTO_BOX_MIN (kgmm_bayes.study.checks.resolved_box): a fixed box of 10
    # cut the default study's heavy tail (its data reach z = 9.8 in training and 12.6 in the reference)
    box: object = "auto"
    # "auto": "fitted" when the data's interval is known and resolves their correlation (every coordinate's
    # lag-one autocorrelation > 0), else "identity"; "fitted": dx = Phi s dt + Sigma dW
    # with Phi fitted from the data's lagged statistics (kgmm_bayes.rom.mobility), time in the data's units
    mobility: str = "auto"


class MetricsSection(NamedTuple):
    grid_points: int = 2048


class EnsembleSection(NamedTuple):
    """Posterior ensemble of reduced-order models (:mod:`kgmm_bayes.rom.ensemble`); uses [langevin] dt and box
    (in the data's time the study model's schedule, and a mobility per member)."""

    members: int = 0  # posterior draws, one model each; 0: no ensemble
    drift: str = "mixture"  # the draw's closed-form mixture score, or "interpolant": an MLP per draw
    particles: int = 100  # per member
    steps: int = 20000  # after burn-in (in the data's time: at least; 8 correlation windows at least)
    burn_in: int = 2000  # (in the data's time: at least one correlation window)
    # a snapshot every thin steps, ACF lags in snapshots: the lag spacing is dt * thin (Langevin time only; in
    # the data's time a snapshot per data interval, lags over five of the data's decorrelation times)
    thin: int = 20
    max_lag: int = 50


BASELINES = ("kgmm", "dsm", "sklearn")


class BaselinesSection(NamedTuple):
    """The baselines of ``kgmm-bayes compare`` (defaults: the KGMM authors' settings, SYSTEMS.md)."""

    which: tuple = BASELINES  # any of "kgmm" (classic KGMM), "dsm" (denoising score matching), "sklearn"
    sigma: float = 0.05  # noise level of classic KGMM and DSM, z-scored units
    min_leaf_probability: float = 1e-3  # classic KGMM: leaves = round(1 / min_leaf_probability)
    max_passes: int = 150  # classic KGMM: noisy passes at most
    tolerance: float = 0.1  # classic KGMM: stop when the cluster means of z change by less (relative)
    dsm_epochs: int = 200
    dsm_batch: int = 512
    dsm_learning_rate: float = 1e-3
    dsm_checkpoints: int = 4  # DSM evaluated after every dsm_epochs / dsm_checkpoints epochs
    dsm_ema: float = 0.999  # DSM's network: the moving average of its parameters with this decay per Adam step
    # (kgmm_bayes.baselines.fit_dsm); 0: the parameters themselves, whose model wandered (default study, seeds 0-3,
    # relative entropy 0.0011-0.0099; with the average 0.0022-0.0041: README, "Comparison")
    sklearn_components: int = 0  # 0: as many as [mixture] components
    sklearn_max_iter: int = 100  # scikit-learn's own default
    model_runs: int = 1  # every estimator's model run this many times (the study's key, then keys folded from it)
    # F > 0: every estimator's model is scored against an independent run of the built-in system with F times the
    # training data's members (kgmm_bayes.study.compare.long_reference_run; the study's own metrics keep its
    # reference set), whose own sampling noise is 1 / F of a training-size set's: on the default study that set's
    # (its floor 0.0007) is as large as the estimators' differences (0.0001) and ordered two drifts the other way
    # (README "Comparison"); 0: the study's reference set
    long_reference: int = 0


SECTIONS = {
    "study": StudySection, "data": DataSection, "partition": PartitionSection,
    "mixture": MixtureSection, "sampler": SamplerSection, "score": ScoreSection,
    "interpolant": InterpolantSection, "langevin": LangevinSection, "metrics": MetricsSection,
    "baselines": BaselinesSection, "ensemble": EnsembleSection,
}

POSITIVE_INT = {
    ("data", "members"), ("data", "steps"), ("data", "thin"), ("partition", "cells"),
    ("mixture", "components"), ("sampler", "chains"), ("sampler", "warmup"), ("sampler", "draws"),
    ("sampler", "max_tree_depth"), ("sampler", "map_steps"), ("score", "max_draws"), ("interpolant", "steps"),
    ("interpolant", "batch"), ("langevin", "particles"), ("langevin", "steps"), ("langevin", "thin"),
    ("metrics", "grid_points"), ("baselines", "max_passes"), ("baselines", "dsm_epochs"),
    ("baselines", "dsm_batch"), ("baselines", "dsm_checkpoints"), ("baselines", "sklearn_max_iter"),
    ("baselines", "model_runs"),
    ("ensemble", "particles"), ("ensemble", "steps"), ("ensemble", "thin"), ("ensemble", "max_lag"),
}
NON_NEGATIVE_INT = {("study", "seed"), ("data", "burn_in"), ("interpolant", "snapshots"), ("langevin", "burn_in"), ("sampler", "map_starts"),
                    ("sampler", "extend"), ("baselines", "sklearn_components"), ("ensemble", "members"), ("ensemble", "burn_in"),
                    ("langevin", "mixture_draws"), ("baselines", "long_reference")}
POSITIVE_FLOAT = {
    ("data", "dt"), ("data", "interval"), ("mixture", "dirichlet_alpha"), ("mixture", "mean_scale"),
    ("mixture", "scale_prior"), ("mixture", "lkj_eta"), ("interpolant", "learning_rate"),
    ("langevin", "dt"), ("baselines", "sigma"), ("baselines", "tolerance"),
    ("baselines", "dsm_learning_rate"),
}
OPEN_UNIT = {("sampler", "target_accept"), ("score", "band"), ("baselines", "min_leaf_probability")}

WHERE_IT_RUNS = {("data", "scheduler")}  # keys that say where a study runs, not what it computes
COMPARE_ONLY = ("baselines",)  # sections only `kgmm-bayes compare` reads: not part of a study folder's identity
# keys added after study, compare and calibrate folders were written: at these values they are left out of
# Spec.to_dict (and so of a folder's identity and of the stage keys), so that a folder written before them still
# holds the same study and its cached stages
LATER_DEFAULTS = {("partition", "split"): "size", ("sampler", "warm_start"): True,
                  ("interpolant", "correction"): "off", ("sampler", "kept_posterior"): "nuts",
                  ("interpolant", "train"): "auto", ("baselines", "long_reference"): 0}
SPLIT_VALUES = ("size", "inertia")  # [partition] split: kgmm_bayes.partition.SPLITS
_ABSENT = object()


def _stated(name: str, section) -> dict:
    """A section's keys and values less :data:`LATER_DEFAULTS` at their defaults."""
    return {k: v for k, v in section._asdict().items() if LATER_DEFAULTS.get((name, k), _ABSENT) != v}


SYSTEM_COMPONENTS = 10  # [mixture] components of a built-in system's study that does not set it
DEFAULT_STUDY = {"study": {"name": "reduced_1d"}, "data": {"system": "reduced_1d"},
                 "partition": {"split": "inertia"}, "mixture": {"components": 8}, "interpolant": {"correction": "off"},
                 "baselines": {"sklearn_components": 10}}  # as models/reduced_1d.toml

MAX_INT = 2**63 - 1  # integer keys: the int64 range (jax.random.key(seed) overflows above it)
MAX_SEED = 2**62 - 1  # seeds: calibrate and compare derive seeds by adding to the study's
MAX_MODEL_RUNS = 100  # [baselines] model_runs: each run costs a Langevin run per estimator
MAX_LONG_REFERENCE = 100  # [baselines] long_reference: the run is held in memory, F times the training data
MAX_RUN_LENGTH = 100  # compare --run-length: each model run's samples are held in memory, L times the spec's
MAX_SPEC_BYTES = 2**20  # a spec is a few kilobytes; more is not a spec
# dots outside strings and comments (dotted keys, decimals): tomllib's memory is quadratic in a key's
# parts (a 200 kB line of 'a.a.a...' takes tens of GB)
MAX_SPEC_DOTS = 1000

_show = reprlib.Repr()  # values in messages: short and safe on deeply nested input
_show.maxstring, _show.maxother, _show.maxlevel, _show.maxlist, _show.maxdict = 80, 80, 3, 8, 8
_show.maxlong = 80


class Spec(NamedTuple):
    study: StudySection
    data: DataSection
    partition: PartitionSection
    mixture: MixtureSection
    sampler: SamplerSection
    score: ScoreSection
    interpolant: InterpolantSection
    langevin: LangevinSection
    metrics: MetricsSection
    baselines: BaselinesSection = BaselinesSection()
    ensemble: EnsembleSection = EnsembleSection()

    def to_dict(self) -> dict:
        """Every section's keys, less :data:`LATER_DEFAULTS` at their defaults (what folders and stage keys
        written before those keys existed computed)."""
        return {name: _stated(name, getattr(self, name)) for name in SECTIONS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=list)

    def section_json(self, *names) -> str:
        """Sections as JSON for stage keys: what they compute, not where (:data:`WHERE_IT_RUNS` left out)."""
        return json.dumps({n: {k: v for k, v in _stated(n, getattr(self, n)).items() if (n, k) not in WHERE_IT_RUNS}
                           for n in names}, sort_keys=True, default=list)

    def identity(self) -> dict:
        """:meth:`to_dict` less :data:`WHERE_IT_RUNS` and the sections a study does not read
        (:data:`COMPARE_ONLY`): what an output folder's study is."""
        return {n: {k: v for k, v in sec.items() if (n, k) not in WHERE_IT_RUNS}
                for n, sec in self.to_dict().items() if n not in COMPARE_ONLY}


def _check_value(section: str, key: str, value, default):
    where = f"[{section}] {key}"
    if key == "hidden":
        if (not isinstance(value, (list, tuple)) or not value
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
            raise SpecError(f"{where} must be a non-empty list of positive integers, got {_show.repr(value)}")
        return tuple(value)
    if (section, key) == ("mixture", "select_components"):
        if (not isinstance(value, (list, tuple))
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
                or len(set(value)) != len(value)):  # element types first: set() of lists raises
            raise SpecError(f"{where} must be a list of distinct positive integers, got {_show.repr(value)}")
        return tuple(value)
    if (section, key) == ("mixture", "coarsening"):
        if value in ("auto", "off"):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise SpecError(f"{where} must be \"auto\", \"off\" or a positive number (alpha), got {_show.repr(value)}")
        return float(value)
    if (section, key) == ("langevin", "box"):
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise SpecError(f"{where} must be \"auto\" or a positive number (z-scored units), got {_show.repr(value)}")
        return float(value)
    if (section, key) == ("sampler", "likelihood_cells"):
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_INT:
            raise SpecError(f"{where} must be \"auto\" or a positive integer, got {_show.repr(value)}")
        return value
    if (section, key) == ("data", "variables"):
        if (not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value)
                or len(set(value)) != len(value)):
            raise SpecError(f"{where} must be a list of distinct non-empty names, got {_show.repr(value)}")
        return tuple(value)
    if (section, key) == ("baselines", "which"):
        if (not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value)
                or not set(value) <= set(BASELINES) or len(set(value)) != len(value)):
            raise SpecError(f"{where} must be a list of distinct names from {list(BASELINES)}, got {_show.repr(value)}")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SpecError(f"{where} must be true or false, got {_show.repr(value)}")
        return value
    expects_int = (section, key) in POSITIVE_INT | NON_NEGATIVE_INT
    expects_float = (section, key) in POSITIVE_FLOAT | OPEN_UNIT or isinstance(default, float)
    if expects_int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where} must be an integer, got {_show.repr(value)}")
        if (section, key) == ("study", "seed") and value > MAX_SEED:
            raise SpecError(f"{where} must be <= 2**62 - 1 = {MAX_SEED} (derived seeds add to it), "
                            f"got {_show.repr(value)}")
        if value > MAX_INT:
            raise SpecError(f"{where} must be <= 2**63 - 1 = {MAX_INT}, got {_show.repr(value)}")
        if (section, key) in POSITIVE_INT and value <= 0:
            raise SpecError(f"{where} must be positive, got {value}")
        if (section, key) in NON_NEGATIVE_INT and value < 0:
            raise SpecError(f"{where} must be >= 0, got {value}")
        return value
    if expects_float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SpecError(f"{where} must be a finite number, got {_show.repr(value)}")
        value = float(value)
        if (section, key) in POSITIVE_FLOAT and value <= 0:
            raise SpecError(f"{where} must be positive, got {value}")
        if (section, key) in OPEN_UNIT and not 0 < value < 1:
            raise SpecError(f"{where} must lie strictly between 0 and 1, got {value}")
        return value
    if not isinstance(value, str):
        raise SpecError(f"{where} must be a string, got {_show.repr(value)}")
    return value


def data_interval_of(data: DataSection) -> Optional[float]:
    """Physical time between consecutive snapshots of a member: ``[data] interval`` for user data,
    ``dt x thin`` for a built-in system with dynamics; None when unknown (or no dynamics)."""
    if data.system is None:
        return data.interval
    system = SYSTEMS[data.system]
    if not system.timed:
        return None
    return (system.dt if data.dt is None else data.dt) * (system.thin if data.thin is None else data.thin)


def uses_mobility(spec: "Spec") -> bool:
    """Whether the reduced-order model may run with a fitted mobility, in the data's time: with
    ``"auto"`` the study still keeps Langevin time where the data decorrelate within one interval
    (:func:`kgmm_bayes.study.dynamics.unresolved_coordinates`)."""
    mode = spec.langevin.mobility
    return mode == "fitted" or (mode == "auto" and data_interval_of(spec.data) is not None)


def trains_interpolant(spec: "Spec") -> bool:
    """Whether a study trains the interpolant (``[interpolant] train``): where its model's drift is the network,
    or where asked to ("always")."""
    return spec.interpolant.train == "always" or spec.langevin.drift == "interpolant"


def spec_from_dict(raw: dict, base_dir: str | None = None, default_name: str = "study",
                   data_given: bool = False) -> Spec:
    """Validate a parsed spec and fill defaults; relative data paths resolve from ``base_dir``.

    ``data_given``: the data come as an array (:func:`kgmm_bayes.fit`), so
    ``[data]`` must name neither a system nor a path.
    """
    if not isinstance(raw, dict):
        raise SpecError("a spec must be a table of sections")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise SpecError(f"unknown spec section(s) {unknown}; allowed: {sorted(SECTIONS)}")
    sections = {}
    for name, cls in SECTIONS.items():
        given = raw.get(name, {})
        if not isinstance(given, dict):
            raise SpecError(f"[{name}] must be a table, got {_show.repr(given)}")
        extra = sorted(set(given) - set(cls._fields))
        if extra:
            raise SpecError(f"unknown key(s) {extra} in [{name}]; allowed: {list(cls._fields)}")
        values = {}
        for key, default in cls._field_defaults.items():
            if key in given:
                values[key] = _check_value(name, key, given[key], default)
        sections[name] = cls(**values)
    study = sections["study"]
    if "name" not in raw.get("study", {}):
        sections["study"] = study._replace(name=default_name)
    name = sections["study"].name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise SpecError(f"[study] name must be letters, digits, '.', '_' or '-' (it names the output "
                        f"folder), got {name!r}")
    data = sections["data"]
    if data_given:
        if data.system is not None or data.path is not None:
            raise SpecError("[data] system/path cannot be given together with a data array")
    elif (data.system is None) == (data.path is None):
        raise SpecError("[data] needs exactly one of 'system' (a built-in system) or 'path' (a data file)")
    if data.system is not None and data.system not in SYSTEMS:
        raise SpecError(f"[data] system {data.system!r} is unknown; expected one of {sorted(SYSTEMS)}")
    if data.path is not None:
        path = data.path if os.path.isabs(data.path) or base_dir is None else os.path.join(base_dir, data.path)
        sections["data"] = data._replace(path=os.path.abspath(path))
    if not 0 <= data.heldout_fraction < 1:
        raise SpecError(f"[data] heldout_fraction must be in [0, 1), got {data.heldout_fraction}")
    if data.streaming not in ("auto", "always", "never"):
        raise SpecError(f"[data] streaming must be 'auto', 'always' or 'never', got {data.streaming!r}")
    if (data.streaming == "always" or data.scheduler) and data.path is None:
        raise SpecError("[data] streaming and scheduler apply to a data file ([data] path)")
    if sections["partition"].split not in SPLIT_VALUES:
        raise SpecError(f"[partition] split must be {' or '.join(map(repr, SPLIT_VALUES))}, "
                        f"got {sections['partition'].split!r}")
    if sections["mixture"].coarsening_bound not in ("stein", "report", "score_matching"):
        raise SpecError("[mixture] coarsening_bound must be 'stein', 'report' or 'score_matching', got "
                        f"{sections['mixture'].coarsening_bound!r}")
    if sections["sampler"].dense_mass and raw.get("sampler", {}).get("metric") in ("diagonal", "laplace"):
        raise SpecError(f"[sampler] dense_mass = true contradicts metric = '{sections['sampler'].metric}'; "
                        "give only metric")
    if sections["sampler"].metric not in ("auto", "diagonal", "dense", "laplace"):
        raise SpecError("[sampler] metric must be 'auto', 'diagonal', 'dense' or 'laplace', "
                        f"got {sections['sampler'].metric!r}")
    for field in ("first_posterior", "kept_posterior"):
        way = getattr(sections["sampler"], field)
        if way not in ("nuts", "laplace"):
            raise SpecError(f"[sampler] {field} must be 'nuts' or 'laplace', got {way!r}")
        if way == "laplace" and sections["sampler"].map_starts == 0:
            raise SpecError(f"[sampler] {field} = 'laplace' is centred on MAP optima; it needs map_starts > 0")
    if sections["sampler"].likelihood_precision not in ("auto", "float64", "float32"):
        raise SpecError("[sampler] likelihood_precision must be 'auto', 'float64' or 'float32', "
                        f"got {sections['sampler'].likelihood_precision!r}")
    if sections["interpolant"].correction not in ("auto", "off"):
        raise SpecError(f"[interpolant] correction must be 'auto' or 'off', got {sections['interpolant'].correction!r}")
    if sections["interpolant"].train not in ("auto", "always"):
        raise SpecError(f"[interpolant] train must be 'auto' or 'always', got {sections['interpolant'].train!r}")
    if sections["sampler"].chain_starts not in ("best", "spread", "distinct"):
        raise SpecError("[sampler] chain_starts must be 'best', 'spread' or 'distinct', "
                        f"got {sections['sampler'].chain_starts!r}")
    if sections["sampler"].chain_starts != "best" and sections["sampler"].map_starts == 0:
        raise SpecError(f"[sampler] chain_starts = {sections['sampler'].chain_starts!r} starts chains at MAP optima; "
                        "it needs map_starts > 0")
    if sections["sampler"].chain_starts != "best" and not sections["partition"].coreset:
        raise SpecError(f"[sampler] chain_starts = {sections['sampler'].chain_starts!r} puts chains in several modes, "
                        "which are stacked by the cells' log-likelihood; it needs [partition] coreset = true")
    if data.interval is not None and data.system is not None:
        raise SpecError("[data] interval is set by the built-in system (dt x thin); remove it")
    mobility = sections["langevin"].mobility
    if mobility not in ("auto", "fitted", "identity"):
        raise SpecError(f"[langevin] mobility must be 'auto', 'fitted' or 'identity', got {mobility!r}")
    if mobility == "fitted" and data_interval_of(data) is None:
        raise SpecError("[langevin] mobility = 'fitted' needs the data's time: set [data] interval "
                        "(the time between consecutive snapshots)")
    if sections["langevin"].drift not in ("interpolant", "mixture"):
        raise SpecError(f"[langevin] drift must be 'interpolant' or 'mixture', got {sections['langevin'].drift!r}")
    if sections["mixture"].select_components and not sections["partition"].coreset:
        raise SpecError("[mixture] select_components needs [partition] coreset = true (PSIS-LOO over cells)")
    too_many = [k for k in sections["mixture"].select_components if k > sections["partition"].cells]
    if too_many:
        raise SpecError(f"[mixture] select_components {too_many} exceed [partition] cells "
                        f"({sections['partition'].cells})")
    if sections["mixture"].components is None and data.system is not None:
        sections["mixture"] = sections["mixture"]._replace(components=SYSTEM_COMPONENTS)
    if sections["mixture"].components is not None and sections["partition"].cells < sections["mixture"].components:
        raise SpecError(f"[partition] cells ({sections['partition'].cells}) must be >= "
                        f"[mixture] components ({sections['mixture'].components})")
    likelihood_cells = sections["sampler"].likelihood_cells
    largest_k = max([sections["mixture"].components or 1, *sections["mixture"].select_components])
    if likelihood_cells != "auto" and likelihood_cells < largest_k:
        raise SpecError(f"[sampler] likelihood_cells ({likelihood_cells}) must be >= the mixture's components "
                        f"({largest_k})")
    ensemble = sections["ensemble"]
    if ensemble.drift not in ("interpolant", "mixture"):
        raise SpecError(f"[ensemble] drift must be 'mixture' or 'interpolant', got {ensemble.drift!r}")
    if ensemble.members > sections["sampler"].chains * sections["sampler"].draws:
        raise SpecError(f"[ensemble] members ({ensemble.members}) must be <= [sampler] chains x draws "
                        f"({sections['sampler'].chains * sections['sampler'].draws})")
    if ensemble.max_lag >= ensemble.steps // ensemble.thin:
        raise SpecError(f"[ensemble] max_lag ({ensemble.max_lag}) must be < steps // thin "
                        f"({ensemble.steps // ensemble.thin} snapshots)")
    baselines = sections["baselines"]
    if not 0 <= baselines.dsm_ema < 1:
        raise SpecError(f"[baselines] dsm_ema must be in [0, 1), got {baselines.dsm_ema}")
    if baselines.dsm_checkpoints > baselines.dsm_epochs:
        raise SpecError(f"[baselines] dsm_checkpoints ({baselines.dsm_checkpoints}) must be <= "
                        f"dsm_epochs ({baselines.dsm_epochs})")
    if baselines.model_runs > MAX_MODEL_RUNS:
        raise SpecError(f"[baselines] model_runs must be at most {MAX_MODEL_RUNS}, got {baselines.model_runs}")
    if baselines.long_reference > MAX_LONG_REFERENCE:
        raise SpecError(f"[baselines] long_reference must be at most {MAX_LONG_REFERENCE}, got "
                        f"{baselines.long_reference}")
    if baselines.long_reference and data.system is None:
        raise SpecError("[baselines] long_reference needs a built-in system to run again; your own data "
                        "([data] path) have none: set it to 0")
    return Spec(**sections)


def _merged(raw: dict, overrides: dict | None) -> dict:
    """``raw`` with each section's keys updated from ``overrides`` (``{section: {key: value}}``)."""
    if overrides is None:
        return raw
    if not isinstance(overrides, dict):
        raise SpecError(f"overrides must be a dict of sections, got {type(overrides).__name__}")
    merged = {name: dict(section) if isinstance(section, dict) else section for name, section in raw.items()}
    for name, section in overrides.items():
        if not isinstance(section, dict):
            raise SpecError(f"override of [{name}] must be a table (dict), got {_show.repr(section)}")
        base = merged.get(name, {})
        merged[name] = {**(base if isinstance(base, dict) else {}), **section}
    return merged


_SPEC_TOKEN = re.compile(r'"""|\'\'\'|["\'#.]')
_STRING_END = {'"""': re.compile(r'\\.|"""', re.S), "'''": re.compile(r"'''"),
               '"': re.compile(r'\\.|"|\n'), "'": re.compile(r"'|\n")}


def _dots_outside_strings(text: str) -> int:
    """Count ``.`` outside strings and comments: a bound on dotted keys before tomllib sees them."""
    count, pos = 0, 0
    while True:
        token = _SPEC_TOKEN.search(text, pos)
        if token is None:
            return count
        kind, pos = token.group(), token.end()
        if kind == ".":
            count += 1
        elif kind == "#":
            end = text.find("\n", pos)
            pos = len(text) if end < 0 else end
        else:
            while True:  # skip the string; escapes only in basic strings
                end = _STRING_END[kind].search(text, pos)
                if end is None:
                    return count  # unterminated: tomllib reports it
                pos = end.end()
                if not end.group().startswith("\\"):
                    break


SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")  # installed with the package


def shipped_studies() -> dict:
    """The studies shipped with the package, ``{name: path}`` (``kgmm-bayes list``)."""
    if not os.path.isdir(SHIPPED_DIR):
        return {}
    return {name[:-5]: os.path.join(SHIPPED_DIR, name) for name in sorted(os.listdir(SHIPPED_DIR))
            if name.endswith(".toml")}


def resolve_spec_path(path: str | os.PathLike) -> str:
    """A spec file's path: ``path`` itself when it exists, else the shipped study it names
    (``lorenz63`` or ``lorenz63.toml``, with no folder); otherwise ``path`` unchanged."""
    path = os.fspath(path)
    if os.path.exists(path) or os.path.dirname(path):
        return path
    name = path[:-5] if path.endswith(".toml") else path
    return shipped_studies().get(name, path)


def load_spec(path: str | os.PathLike | None, overrides: dict | None = None) -> Spec:
    """Read and validate a TOML spec; ``None`` gives the default study (reduced 1D).

    ``path``: a TOML file, or the name of a shipped study (:func:`shipped_studies`) when no
    file of that name exists.

    ``overrides`` (``{section: {key: value}}``, e.g. ``{"sampler": {"draws": 200}}``)
    replace single keys of the file before validation, so they are checked like the file.
    """
    if path is None:
        return spec_from_dict(_merged(DEFAULT_STUDY, overrides))
    path = resolve_spec_path(path)
    if not os.path.exists(path):
        shipped = ", ".join(shipped_studies()) or "none"
        raise SpecError(f"spec file {path!r} does not exist and names no shipped study ({shipped})")
    if os.path.isdir(path):
        raise SpecError(f"spec path {path!r} is a folder, expected a TOML file")
    try:
        with open(path, "rb") as fh:
            payload = fh.read(MAX_SPEC_BYTES + 1)  # bounded: a device or a huge file is never read whole
    except OSError as err:
        raise SpecError(f"spec file {path!r} could not be read ({err.strerror or type(err).__name__})") from None
    if len(payload) > MAX_SPEC_BYTES:
        raise SpecError(f"spec file {path!r} is larger than {MAX_SPEC_BYTES} bytes; is it a TOML spec?")
    try:
        text = payload.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SpecError(f"spec file {path!r} is not UTF-8 text (byte {err.start})") from None
    dots = _dots_outside_strings(text)
    if dots > MAX_SPEC_DOTS:
        raise SpecError(f"spec file {path!r} has {dots} dotted-key or decimal dots outside strings (at most "
                        f"{MAX_SPEC_DOTS}); is it a TOML spec?")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"spec file {path!r} is not valid TOML: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise SpecError(f"spec file {path!r} is nested too deeply to be a TOML spec") from None
    except (ValueError, MemoryError) as err:  # e.g. an integer literal past Python's digit limit
        reason = " ".join(str(err).split()) or type(err).__name__
        reason = reason if len(reason) <= 120 else reason[:117] + "..."
        raise SpecError(f"spec file {path!r} is not valid TOML ({reason})") from None
    stem = os.path.splitext(os.path.basename(path))[0]
    return spec_from_dict(_merged(raw, overrides), base_dir=os.path.dirname(os.path.abspath(path)), default_name=stem)
