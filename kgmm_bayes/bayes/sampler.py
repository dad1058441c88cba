"""NUTS sampling of the Bayesian mixture, started from the partition.

Chains run in parallel across devices (``kgmm_bayes`` sets the host device
count to the number of CPU cores before JAX initialises); with more chains than
devices they run in rounds of device-parallel chains.  Every chain starts at the
partition (centroids, cluster spreads and correlations, cluster fractions),
or by default at the best of several MAP searches started there
(:func:`find_map`), with a small independent jitter in unconstrained space so
that the between-chain diagnostics mean something.  With ``chain_starts =
"spread"`` each chain starts at one of the best distinct optima within
:data:`SPREAD_NATS` of the best instead, and with ``"distinct"`` at one of the
best distinct optima however far below (:func:`spread_starts`), so that chains
settle in different modes, which :mod:`kgmm_bayes.bayes.stacking` then weighs.
A second posterior of the same model (the coarsening's kept one) can instead start
where a first one ended (``run_nuts``' ``warm``), each chain at its own chain's last draw.

With ``shard_data`` the likelihood's points are instead split by rows over all
devices (``jax.sharding``): each device holds ``M / devices`` rows of the
feature matrix, XLA partitions ``Phi @ Gamma`` and the logsumexp row-wise and
all-reduces the sum, so data too large for one device still fit; the chains
then run one after another, each on all devices.
"""
from __future__ import annotations

import contextlib
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

from .._cpus import worker_threads
from .._devices import over_devices as _over_devices
from .._keys import host_rng
from ..partition import Partition, _seed_from_key
from ..progress import bar, tick
from . import coreset as _coreset
from .mixture import MixturePrior, likelihood_features, mixture_model

__all__ = ["SamplerConfig", "PosteriorSamples", "build_prior", "initial_values", "run_nuts", "laplace_posterior",
           "chain_rounds", "chain_plan", "shard_rows"]


class SamplerConfig(NamedTuple):
    chains: int = 4
    warmup: int = 500
    draws: int = 400  # per chain, as [sampler] draws
    target_accept: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False  # true: metric = "dense"
    metric: str = "auto"  # resolved_metric: "dense" up to 50 parameters (500 warmup iterations), "diagonal" beyond; or
    # "diagonal"; "dense" (whitened coordinates beyond DENSE_ADAPTATION_MAX parameters); "laplace": the Laplace
    # covariance at the start point kept fixed (warmup tunes the step size alone)
    init_jitter: float = 0.05  # chains start at the start point + N(0, min(init_jitter, Laplace sd)^2) noise
    map_starts: int = 8  # > 0: start chains at the best of this many MAP searches (find_map)
    map_steps: int = 1000
    map_polish: int = 500  # L-BFGS iterations after the Adam steps of each MAP search (0: Adam alone)
    chain_starts: str = "best"  # "best": every chain at the best MAP optimum; "spread": at the best distinct ones
    # within SPREAD_NATS; "distinct": at the best distinct ones, however far below the best
    shard_data: bool = False  # rows of the likelihood split over all devices (chains run in turn)
    laplace_metric: bool = True  # warmup starts in the Laplace metric, not the identity (whitened, "laplace": always)
    chain_method: str = "auto"  # "auto" (see chain_plan), "parallel", "vectorized" or "sequential"
    # at most this many continuations of chains the ``drifting`` check of run_nuts flags: their draws so far
    # become warmup (adaptation frozen) and as many new draws replace them
    extend: int = 0
    # cells of the likelihood's coreset: "auto" (the coarsest merge of the cells whose log-likelihood gap has sd
    # <= 0.1 nats over Laplace draws at the MAP, rechecked on the draws at 0.2: to first order posterior means move
    # by at most that many posterior sds; kgmm_bayes.bayes.coreset; never without MAP searches), or a number of
    # merged cells (unchecked; >= the cells: the cells themselves)
    likelihood_cells: object = "auto"
    # the precision of the likelihood NUTS samples (PRECISIONS): "auto", float32 where the sampled likelihood's gap to
    # the cells' in float64 keeps sd <= 0.1 nats over the same Laplace draws (and on the draws at 0.2, as a merge
    # is checked; the MAP searches, Hessian and starts stay float64); "float64"; "float32" (unchecked)
    likelihood_precision: str = "auto"
    warm_start: bool = True  # false: run_nuts ignores ``warm`` (a second posterior from MAP optima: ``map_from``)
    # the coarsening's first posterior (kgmm_bayes.study.stages.sample_posterior): "nuts", or "laplace"
    # (laplace_posterior: the Laplace approximation at the optima the chains would start at, stacked as they are)
    first_posterior: str = "nuts"
    # the posterior the coarsening keeps (the bands'): "nuts", or "laplace" (laplace_posterior at its own MAP optima)
    kept_posterior: str = "nuts"
    progress: bool = False


class PosteriorSamples(NamedTuple):
    """Posterior draws with leading ``(chain, draw)`` axes, z-scored coordinates."""

    weights: np.ndarray  # (C, S, K)
    means: np.ndarray  # (C, S, K, d)
    cov_chol: np.ndarray  # (C, S, K, d, d)
    sites: dict  # every sampled site, by name
    sample_stats: dict  # diverging, num_steps, tree_depth, accept_prob, energy, potential_energy
    wall_time: float

    @property
    def num_chains(self) -> int:
        return self.weights.shape[0]

    def flat(self):
        """``(weights, means, cov_chol)`` with chains and draws merged into one axis."""
        def merge(a):
            return a.reshape((-1,) + a.shape[2:])
        return merge(self.weights), merge(self.means), merge(self.cov_chol)


def build_prior(partition: Partition, dirichlet_alpha: float, mean_scale: float,
                scale_prior: float, lkj_eta: float) -> MixturePrior:
    """Priors centred on the partition; means scaled by ``mean_scale`` x cluster spread."""
    return MixturePrior(centroids=jnp.asarray(partition.centroids),
                        mean_scales=jnp.asarray(mean_scale * partition.spreads),
                        dirichlet_alpha=float(dirichlet_alpha), scale_prior=float(scale_prior),
                        lkj_eta=float(lkj_eta))


def initial_values(partition: Partition) -> dict:
    """Constrained initial values of the sampled sites, read off the partition."""
    cov = partition.covariances
    spreads = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    init = {"weights": partition.fractions, "means": partition.centroids, "scales": spreads}
    if cov.shape[-1] > 1:
        corr = cov / (spreads[:, :, None] * spreads[:, None, :])
        init["corr_chol"] = np.linalg.cholesky(corr)
    return {name: jnp.asarray(value) for name, value in init.items()}


def chain_rounds(chains: int, devices: int) -> list[int]:
    """Chains per round: rounds of ``devices`` chains run in parallel, the rest in a last round."""
    per_round = max(1, min(chains, devices))
    rounds = [per_round] * (chains // per_round)
    if chains % per_round:
        rounds.append(chains % per_round)
    return rounds


def chain_plan(chains: int, devices: int, backend: str, method: str = "auto", sharded: bool = False):
    """How chains run: a list of ``(chains_in_round, numpyro chain_method)``.

    ``auto``: with sharded data, one chain at a time (each spans every device); on a
    single accelerator, all chains at once, vectorised (an accelerator step costs about
    the same for one chain as for four); otherwise rounds of one chain per device, in
    parallel (:func:`chain_rounds`).
    """
    if method not in ("auto", "parallel", "vectorized", "sequential"):
        raise ValueError(f"chain_method must be auto, parallel, vectorized or sequential, got {method!r}")
    if method == "auto":
        if sharded:
            method = "sequential"
        elif devices == 1 and backend != "cpu" and chains > 1:
            method = "vectorized"
        else:
            method = "parallel"
    if method == "sequential":
        return [(1, "sequential")] * chains
    if method == "vectorized":
        return [(chains, "vectorized" if chains > 1 else "sequential")]
    return [(n, "parallel" if n > 1 else "sequential") for n in chain_rounds(chains, devices)]


def shard_rows(features, counts, devices=None):
    """Split weighted points by rows over ``devices`` (default: all local devices).

    Rows are padded to a multiple of the device count with zero features and zero
    counts, which add exactly nothing to ``sum_m c_m logsumexp_k(phi_m^T gamma_k)``.
    Returns ``(features, counts)`` as arrays sharded along their first axis.
    """
    devices = jax.local_devices() if devices is None else list(devices)
    n_dev = len(devices)
    pad = (-features.shape[0]) % n_dev
    features = jnp.pad(jnp.asarray(features), ((0, pad), (0, 0)))
    counts = jnp.pad(jnp.asarray(counts), (0, pad))
    mesh = Mesh(np.array(devices), ("data",))
    return (jax.device_put(features, NamedSharding(mesh, PartitionSpec("data", None))),
            jax.device_put(counts, NamedSharding(mesh, PartitionSpec("data"))))


def _jittered(key, tree, copies: int, scale, keep_first: bool = False):
    """``copies`` copies of a pytree (new leading axis) plus independent N(0, scale^2) noise.

    ``scale``: a number, or a pytree like ``tree`` of per-coordinate scales.  The noise is drawn on
    the host (:func:`kgmm_bayes._keys.host_rng`): JAX compiled a normal draw per leaf shape, and the additions, 20-30
    small programs, 1.8 s of a cold posterior on the default study (1.8 s again as one fused program)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    scales = (jax.tree_util.tree_leaves(scale) if isinstance(scale, dict)
              else [scale] * len(leaves))
    rng = host_rng(key)
    noisy = []
    for leaf, sd in zip(leaves, scales):
        leaf = np.asarray(leaf)
        noise = np.asarray(sd, leaf.dtype) * rng.standard_normal((copies,) + leaf.shape).astype(leaf.dtype)
        if keep_first:
            noise[0] = 0.0
        noisy.append(jnp.asarray(leaf[None] + noise))
    return jax.tree_util.tree_unflatten(treedef, noisy)


def laplace_scales(potential, params: dict, hessian=None) -> dict:
    """Per-coordinate sd of the Laplace approximation of ``exp(-potential)`` at ``params``.

    ``1 / sqrt(H_ii)`` with ``H`` the Hessian of ``potential`` (a function of the pytree
    ``params``): the diagonal of :func:`hessian_matrix` (``hessian``, when already computed; a
    diagonal alone would cost the same Hessian-vector products); ``inf`` where the curvature is
    not positive.
    """
    if hessian is None:
        hessian = hessian_matrix(potential, params)
    h = np.diagonal(np.asarray(hessian))
    return _host_unravel(params, np.where(h > 0, 1.0 / np.sqrt(np.where(h > 0, h, 1.0)), np.inf))


def _host_unravel(tree, flat) -> dict:
    """``flat`` ``(..., P)`` (in ravel_pytree's order of ``tree``'s leaves) as a pytree like ``tree`` with the
    leading axes of ``flat``: split and reshaped on the host (run op by op, JAX compiled a program per step, and
    a jitted ``unravel`` is a new closure, compiled again, at every call)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    flat = np.asarray(flat)
    parts = np.split(flat, np.cumsum([np.size(leaf) for leaf in leaves])[:-1], axis=-1)
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(part.reshape(flat.shape[:-1] + np.shape(leaf)),
                                                              jnp.result_type(leaf))
                                                  for part, leaf in zip(parts, leaves)])


def hessian_matrix(potential, params: dict) -> np.ndarray:
    """The Hessian ``(P, P)`` of ``potential`` at ``params`` (flattened unconstrained parameters, as
    numpyro ravels them), one Hessian-vector product per coordinate, symmetrised, float64."""
    return hessian_matrices(potential, jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf)[None], params))[0]


HESSIAN_CHUNK = 4  # hessian_matrices computes this many points per device at a time (one compiled shape for any number)


def hessian_matrices(potential, batch: dict) -> np.ndarray:
    """:func:`hessian_matrix` at each of ``batch``'s points (pytrees with a leading axis ``B``): ``(B, P, P)``
    (:func:`_flat_hessians`)."""
    return _flat_hessians(potential, jax.tree_util.tree_map(lambda leaf: leaf[0], batch),
                          np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(batch)))


def _flat_hessians(potential, template, flats) -> np.ndarray:
    """The Hessians ``(B, P, P)`` at ``flats`` ``(B, P)`` (``template``: one point's pytree), in one compiled program
    (:func:`_program`), the points split over the devices, :data:`HESSIAN_CHUNK` per device at a time (one point
    alone: on one device), so that the same program serves any number of points: :func:`newton_refine`'s moved
    points."""
    def build(fn, unravel):
        def hessians(flats, args):
            grad = jax.grad(lambda v: fn(unravel(v), args))
            eye = jnp.eye(flats.shape[-1], dtype=flats.dtype)
            return jax.lax.map(lambda flat: jax.lax.map(lambda e: jax.jvp(grad, (flat,), (e,))[1], eye), flats)

        return _over_devices(hessians)

    program, args = _program("hessians", potential, template, build)
    size = 1 if len(flats) == 1 else HESSIAN_CHUNK * jax.local_device_count()
    h = np.asarray(_chunked(program, np.asarray(flats), args, size), np.float64)
    return 0.5 * (h + np.swapaxes(h, 1, 2))


def laplace_covariance(potential, params: dict, max_variance: float = 1.0, min_ratio: float = 1e-12,
                       root: bool = False, hessian=None):
    """Dense covariance ``(P, P)`` of the Laplace approximation of ``exp(-potential)`` at ``params``.

    ``H^-1`` (``H``: :func:`hessian_matrix`, or ``hessian`` when already computed) through its
    eigenvectors, each eigenvalue's variance ``1 / lambda`` clipped to ``max_variance`` (directions of
    zero or negative curvature get ``max_variance``: they are prior-dominated, e.g. a dead component's
    parameters, and no wider than the unconstrained prior's scale) and from below to ``min_ratio``
    times the largest, so that the matrix stays well conditioned.  ``root``: also its Cholesky factor
    ``R`` (``R R^T`` = the covariance) and ``R^-1``, for whitened coordinates (the diagonal adapted in
    them depends on which square root).
    """
    h = hessian_matrix(potential, params) if hessian is None else np.asarray(hessian, np.float64)
    cov = _clipped_covariance(h, max_variance, min_ratio)
    if root:
        import scipy.linalg

        chol = np.linalg.cholesky(cov)
        return (jnp.asarray(cov), jnp.asarray(chol),
                jnp.asarray(scipy.linalg.solve_triangular(chol, np.eye(len(chol)), lower=True)))
    return jnp.asarray(cov)


def _clipped_covariance(hessian, max_variance: float = 1.0, min_ratio: float = 1e-12) -> np.ndarray:
    """:func:`laplace_covariance`'s covariance ``(P, P)`` of ``hessian`` (float64), symmetrised, on the host."""
    var, vec = _clipped_variances(hessian, max_variance, min_ratio)
    cov = (vec * var) @ vec.T
    return 0.5 * (cov + cov.T)


def _clipped_variances(hessian, max_variance: float = 1.0, min_ratio: float = 1e-12):
    """``(variances (P,), eigenvectors (P, P))`` of the clipped inverse of ``hessian``, as
    :func:`laplace_covariance` takes them."""
    lam, vec = np.linalg.eigh(np.asarray(hessian, np.float64))
    safe = np.where(lam > 0, lam, 1.0)
    var = np.where(lam > 0, np.minimum(1.0 / safe, max_variance), max_variance)
    return np.maximum(var, min_ratio * var.max()), vec


def whitening_roots(hessians) -> np.ndarray:
    """``(B, P, P)``: for each of ``hessians`` a square root ``R`` of its clipped inverse (:func:`laplace_covariance`'s
    covariance ``R R^T``; eigenvectors times root variances, no Cholesky factor needed): in ``v = v0 + R w`` that
    Hessian is the identity where its curvature is at least ``1 / max_variance`` = 1 (weaker, flat and negative
    directions keep unit scale); where it is not finite, ``R = 1`` (the plain coordinates)."""
    return np.stack([_whitening_root(h) for h in np.asarray(hessians, np.float64)])


def _whitening_root(hessian) -> np.ndarray:
    """:func:`whitening_roots`' ``R`` for one Hessian ``(P, P)``."""
    if not np.all(np.isfinite(hessian)):
        return np.eye(len(hessian))
    var, vec = _clipped_variances(hessian)
    return vec * np.sqrt(var)


SPREAD_NATS = 10.0  # "spread" chain starts: MAP optima at most this far below the best in log posterior


def spread_starts(params, energies, chains: int, window: float = SPREAD_NATS):
    """Indices ``(chains,)`` of MAP optima to start the chains at: the distinct optima within
    ``window`` nats of the best, best first, in turn (an optimum several starts reached counts once)."""
    energies = np.asarray(energies)
    order = [int(i) for i in np.argsort(energies)
             if np.isfinite(energies[i]) and energies[i] <= energies.min() + window]
    distinct = []
    for i in order:
        if all(abs(energies[i] - energies[j]) > 1e-6 * max(1.0, abs(energies[j])) for j in distinct):
            distinct.append(i)
    return np.asarray([distinct[c % len(distinct)] for c in range(chains)])


DENSE_ADAPTATION_MAX = 100  # parameters: numpyro adapts a dense metric up to this many; whitened diagonal beyond
METRICS = ("auto", "diagonal", "dense", "laplace")
# metric = "auto": dense where numpyro's last slow warmup window, from whose draws it estimates the dense matrix,
# holds at least this many draws per parameter (200 draws of a 500-iteration warmup: up to 50 parameters).  The
# default study at K = 10 (P = 29, 7 per parameter): the dense metric takes 40-52 leapfrog steps per iteration against
# 106-116, run_nuts 2 s shorter at 0.85-1.2x the ESS per second (NUTS keys 0-3).  Four-well (P = 95, 2 per
# parameter): it halves the steps, run_nuts 1-5 s shorter of 26, at 0.8-1.0x the ESS per second, and did worse
# on the key whose chains leave their mode (min ESS 34 against 124).
DENSE_DRAWS_PER_PARAMETER = 4
# Beyond 50 parameters a dense block per component (its mean, scales, correlation and stick-breaking coordinate,
# adapted as one dense matrix with the entries between blocks dropped) was measured and not kept: within a mode it
# is the better metric (Lorenz-63, zeta 0.125, 4 chains at the best optimum: 60 steps per iteration against 89, min
# ESS 67 against 25; triad: min ESS 636 against 437 at equal steps), but the chains that fail are those that change
# modes, which blocks do not prevent: four-well keys 0-3 min ESS 1048 / 1357 / 98 / 82 against the diagonal's
# 684 / 124 / 1069 / 1044 (keys 0, 1 with numpyro's own one-site-per-block metric), and Lorenz-63's 16 chains
# at distinct optima min ESS 53, r_hat 1.22 against 245, 1.05.


PRECISIONS = ("auto", "float64", "float32")


def last_slow_window(warmup: int) -> int:
    """Draws in numpyro's last slow adaptation window of a ``warmup``-iteration warmup (0: none)."""
    from numpyro.infer.hmc_util import build_adaptation_schedule

    schedule = build_adaptation_schedule(int(warmup))
    return schedule[-2].end - schedule[-2].start + 1 if len(schedule) >= 3 else 0


def resolved_metric(metric: str, n_params: int, warmup: int, sharded: bool = False, dense_mass: bool = False) -> str:
    """The metric NUTS runs in, from ``[sampler] metric``, the number of unconstrained parameters and the
    warmup's length:

    - ``"diagonal"``: a diagonal adapted by numpyro, from the Laplace variances at the start point;
    - ``"dense"``: a dense matrix adapted by numpyro, from the Laplace covariance;
    - ``"whitened"``: NUTS in Laplace-whitened coordinates with a diagonal adapted there (a dense metric
      beyond ``DENSE_ADAPTATION_MAX`` parameters, unsharded);
    - ``"laplace"``: the Laplace covariance kept fixed (whitened coordinates unless sharded), warmup tuning
      the step size alone.

    ``"auto"`` (the default) is ``"dense"`` where the last slow warmup window holds at least
    ``DENSE_DRAWS_PER_PARAMETER`` draws per parameter (up to 50 parameters with 500 warmup iterations, 12
    with 200) and ``"diagonal"`` elsewhere (benchmarks/bench_sampler.py --metric-studies)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if dense_mass and metric in ("auto", "diagonal"):
        metric = "dense"
    if metric == "auto":
        metric = "dense" if last_slow_window(warmup) >= DENSE_DRAWS_PER_PARAMETER * n_params else "diagonal"
    if metric == "dense" and not sharded and n_params > DENSE_ADAPTATION_MAX:
        return "whitened"
    return metric
POLISH_GRADIENT = 1e-8  # L-BFGS stops when the gradient's norm (potential per unconstrained or whitened unit) is below this ...
POLISH_DECREASE = 1e-13  # ... or when an iteration lowers the potential by less than this fraction of it
POLISH_MEMORY = 10  # L-BFGS's memory (scipy's maxcor, its default): the past steps its inverse Hessian is built from
# The progress display counts NUTS iterations from inside the compiled chains (a host callback) only for samplers
# of at least this much work (likelihood rows x quadratic features x components x chain iterations): JAX's
# persistent compilation cache cannot keep a program holding a host callback, so the ticking chains are compiled
# afresh in every process (about 3 s on the default study, 6.8e7 of work, whose rounds take 3 s each).  Smaller
# samplers show one step per round of chains.  About 7x the default study: a minute of sampling on 2 cores.
TICKING_MIN_WORK = 5e8
# "auto" precision tries float32 only for samplers of at least this much work: it saved nothing on the default study
# (6e7: posterior 10.1-10.5 s against 9.7 s in float64, its extra checks included), 1.10x on the triad (1.9e9),
# 1.25x on Kuramoto-Sivashinsky D = 4, 1.34-1.50x on Lorenz-63 (5e9), with the likelihood laid out (rows, K) in
# both precisions.  Once float32 took the (K, rows) layout (mixture._block_terms_by_component) it paid on four-well
# too (7.7e8, below the 1e9 this was before: posterior 23.3 s against 32.8 s in float64, kgmm-bayes run, seed 0)
FLOAT32_MIN_WORK = 3e8
# The MAP searches' L-BFGS polish: each start's whole search is one call of one compiled program (lbfgs_search:
# optax's L-BFGS in a lax.while_loop), the starts shared among this many threads (a running program releases the
# interpreter): the usable CPUs, at most 4 (_cpus.worker_threads; measured on 2).  Until 6 December 2026 scipy's
# L-BFGS-B drove a jitted value and gradient there: its driver held the interpreter for about 0.16 ms of each
# evaluation (0.35 ms alone), so two threads took 0.41-0.46 ms per evaluation.  The same Adam end points
# (benchmarks/bench_polish.py lorenz63: 32 searches at zeta 0.937, 2 cores): 3.75 s against scipy's 10.54 s, the same
# optima after Newton refinement (the chains' 16: 15 distinct, one without a positive definite Hessian, their sum above
# the best 460.2 nats against 459.4); every search takes all 500 iterations either way (the ridges), whatever the
# memory (30 past steps: 3.97 s, no better optima).  Before scipy, optax's L-BFGS ran vmapped over all starts in one
# program (split over the devices), the starts in lockstep, each iteration's line search as long as the slowest
# start's (Kuramoto-Sivashinsky D = 4's 96 starts: 62 s, against 23 s with scipy on two threads;
# benchmarks/bench_posterior_overheads.py times the vmapped way against this one)
POLISH_THREADS = worker_threads()
# A second posterior's MAP searches start at a first posterior's optima (map_optima's map_from): there each start's
# Hessian at this posterior is close to its optimum's, and L-BFGS in the coordinates it whitens (polish_optima's
# whiten) converges in 22-304 iterations (Lorenz-63's 32, median 48) where the plain polish stops at its 500 on the
# ridges.  Lorenz-63's kept posterior (benchmarks/bench_map_from.py lorenz63 --zetas 0.937 0.1485 --cache, one
# process per way, 2 cores, with scipy's L-BFGS-B, before 6 December 2026): 3.5 s with the 32 Hessians against 7.1 s, then 1.2 s against 5.3 s for the chains' 16
# distinct optima's Newton refinement (the plain polish leaves them up to 0.29 nats above their optima, the whitened
# 1.6e-7), the same best optimum; kgmm-bayes run lorenz63: the posterior 40.0 s against 47.5 s, the same model and
# zeta, bands 1.008x as wide.  From Adam's end points (find_map) the Hessians are far from their optima's: whitened
# there, 17 of Lorenz-63's 32 searches still took all 500 iterations (12.4 s against 7.6 s with the Hessians), so
# those are polished plainly; nor does whitening pay after 50 or 150 plain iterations (8.9 s and 7.3 s against 8.5 s,
# and more of the searches end at the same optima: after Newton refinement the 8th-16th best distinct optima are
# 5-24 nats higher than the plain polish's).  Kuramoto-Sivashinsky D = 4 (P = 479, 128 searches): no time gained that
# this machine resolves (sample_posterior 160.8 s whitened against 150-171 s plain, one process), the same model,
# every kept centre at an optimum (6 of 64 had no positive definite Hessian before),
# but the stacking then weighs fewer of them: 8.8 effective chains against 15.3, the stacked mean's predicted largest
# difference 0.21 band widths against 0.17 (0.25 is a fault).  Rows sharded over the devices (split = False) keep the
# plain polish: the Hessians would copy them to every device.


def likelihood_work(rows: int, features: int, components: int, config: SamplerConfig) -> float:
    """The sampler's likelihood work: rows x quadratic features x components x chain iterations."""
    return float(rows) * features * components * config.chains * (config.warmup + config.draws)


def lbfgs_search(f, w0, max_steps: int, start):
    """``(w, f(w))``: ``f`` (a scalar function of a flat vector, traced) minimised from ``w0`` (where ``f`` is
    ``start``) by optax's L-BFGS (memory :data:`POLISH_MEMORY`, zoom line search) in one ``lax.while_loop``: at most
    ``max_steps`` iterations, stopping early at a vanishing gradient (:data:`POLISH_GRADIENT`), once an iteration
    lowers ``f`` by less than :data:`POLISH_DECREASE` of it, or at a non-finite point (the last finite one kept).
    ``f(w)`` is the line search's own value there: ``f`` appears in the program only in the gradient and the line
    search (each copy of a mixture's potential adds seconds to the compilation)."""
    import optax

    solver = optax.lbfgs(memory_size=POLISH_MEMORY)
    value_and_grad = optax.value_and_grad_from_state(f)

    def body(carry):
        w, state, _, last = carry
        value, grad = value_and_grad(w, state=state)
        updates, state = solver.update(grad, state, w, value=value, grad=grad, value_fn=f)
        new = optax.apply_updates(w, updates)
        new_value = optax.tree_utils.tree_get(state, "value")
        finite = jnp.all(jnp.isfinite(new)) & jnp.isfinite(new_value)
        stalled = ~(new_value < last - POLISH_DECREASE * jnp.abs(last))
        return jnp.where(finite, new, w), state, ~finite | stalled, jnp.where(finite, new_value, last)

    def cond(carry):
        _, state, stop, _ = carry
        count = optax.tree_utils.tree_get(state, "count")
        grad = optax.tree_utils.tree_get(state, "grad")
        return ~stop & ((count == 0) | ((count < max_steps) & (optax.tree_utils.tree_norm(grad) > POLISH_GRADIENT)))

    w, _, _, value = jax.lax.while_loop(cond, body, (w0, solver.init(w0), jnp.asarray(False),
                                                     jnp.asarray(start, w0.dtype)))
    return w, value


def _lbfgs(potential, batch, max_steps: int, threads: int = 1, hessians=None, args=None):
    """Each point of ``batch`` (a pytree with a leading axis) moved to a nearby minimum of ``potential``
    by L-BFGS (:func:`lbfgs_search`, each point's whole search one call of one compiled program): at most
    ``max_steps`` iterations, stopping early at a vanishing gradient (:data:`POLISH_GRADIENT`) or once an
    iteration lowers the potential by less than :data:`POLISH_DECREASE` of it.  A point is never made
    worse: a non-finite or higher result gives the point back.  The points are shared among ``threads``
    threads (the program compiled first, in this one); each point's polish is the same whichever thread runs
    it.  ``hessians`` ``(B, P, P)``: point ``i``'s L-BFGS runs in the coordinates ``w`` of ``v = v_i + R_i w``,
    ``R_i`` :func:`whitening_roots`' root of ``hessians[i]`` (computed in the point's thread, an argument of the
    program; from ``w = 0``; the tolerances apply there).  ``args``: the data the potential reads,
    ``potential(params, args)``, an argument of the compiled program rather than constants in it, so that one program
    (its compilation about 4 s on Lorenz-63, loaded from JAX's cache in 0.1 s) serves every posterior of the same
    shapes: another zeta, other data; ``None``: ``potential(params)``.

    Returns ``(points, potentials)``: the polished batch and each point's potential there (non-finite where
    the potential is)."""
    # flattened and rebuilt on the host, in ravel_pytree's order (run op by op, JAX compiled a program per step)
    leaves, treedef = jax.tree_util.tree_flatten(batch)
    leaves = [np.asarray(leaf) for leaf in leaves]
    flats = np.asarray(np.concatenate([leaf.reshape(len(leaf), -1) for leaf in leaves], axis=1), np.float64)
    first = jax.tree_util.tree_unflatten(treedef, [leaf[0] for leaf in leaves])
    bound = potential if args is None else BoundPotential(potential, args)

    def searching(fn, unravel):  # the search, compiled for these data's shapes
        def plain(v, start, data):
            return lbfgs_search(lambda u: fn(unravel(u), data), v, max_steps, start)

        def whitened(v, start, root, data):
            w, end = lbfgs_search(lambda u: fn(unravel(v + root @ u), data), jnp.zeros_like(v), max_steps, start)
            return v + root @ w, end

        if hessians is None:
            return jax.jit(plain).lower(flats[0], starts[0], data).compile()
        return jax.jit(whitened).lower(flats[0], starts[0], np.eye(flats.shape[1]), data).compile()

    # traced and compiled here: the threads then only run them (numpyro's tracing is not thread-safe)
    values, data = _program("values", bound, first, functools.partial(_batched, batch=len(flats)), len(flats))
    starts = np.asarray(values(flats, data), np.float64)
    # (compiled for the data's shapes: a kept search is keyed by them too)
    signature = [(np.shape(a), str(getattr(a, "dtype", type(a).__name__))) for a in jax.tree_util.tree_leaves(data)]
    search, _ = _program("whitened search" if hessians is not None else "search", bound, first, searching, max_steps,
                         str(jax.tree_util.tree_structure(data)), tuple(signature))

    def polished(i):
        flat, start = flats[i], starts[i]
        if hessians is None:
            x, end = search(flat, start, data)
        else:
            x, end = search(flat, start, _whitening_root(np.asarray(hessians[i], np.float64)), data)
        end = float(end)
        moved = np.isfinite(start) and np.isfinite(end) and end <= start
        return (np.asarray(x, np.float64), end) if moved else (flat, float(start))

    threads = max(1, min(int(threads), len(flats)))
    # each start's whitening root (an eigendecomposition) with BLAS on one thread: its own threads spin against XLA's
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1) if hessians is not None else contextlib.nullcontext():
        if threads == 1:
            done = [polished(i) for i in range(len(flats))]
        else:
            with ThreadPoolExecutor(threads) as pool:
                done = list(pool.map(polished, range(len(flats))))
    return _host_unravel(first, np.stack([x for x, _ in done])), np.asarray([e for _, e in done])


def find_map(key, model_args, init_unconstrained: dict, starts: int, steps: int, jitter: float = 0.3,
             learning_rate: float = 0.02, model=mixture_model, return_all: bool = False, polish: int = 500,
             split: bool = True, adam_precision: str = "float64"):
    """Best of ``starts`` MAP searches (unconstrained space).

    Starts are the partition's values jittered by ``jitter``; all run at once (``vmap``, split over the
    devices unless ``split`` is false: rows sharded over the devices stay where they are):
    ``steps`` Adam steps in one ``lax.scan`` find each start's basin, then at most
    ``polish`` L-BFGS iterations reach its optimum (:func:`polish_optima`).
    Adam alone stops on the flat ridges of a mixture's posterior (default study: 4.4 nats
    below the optimum after 1,000 steps, where the Laplace approximation means nothing).
    Mixture posteriors have many local modes; modes whose log posterior differs by tens
    of nats differ in mass by factors like ``exp(-20)``, so chains are best started in the
    highest one found rather than wherever a random start lands.  Returns the best point
    and the final potential of every start.

    ``adam_precision = "float32"``: the Adam steps compute the likelihood in float32 (its (K, rows) layout); they
    only find each start's basin, and the polish, always in float64, reaches its optimum.
    """
    import optax

    potential = _potential_of(model)  # potential(params, args)
    if adam_precision not in ("float64", "float32"):
        raise ValueError(f"adam_precision must be float64 or float32, got {adam_precision!r}")
    adam_args = model_args if adam_precision == "float64" else \
        (jnp.asarray(model_args[0], jnp.float32),) + tuple(model_args[1:])
    starts_tree = _jittered(key, init_unconstrained, starts, jitter, keep_first=True)
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05))
    value_and_grad = jax.vmap(jax.value_and_grad(lambda params: potential(params, adam_args)))

    def optimise(params):
        def step(carry, _):
            params, state = carry
            _, grads = value_and_grad(params)
            updates, state = jax.vmap(optimizer.update)(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, jax.vmap(optimizer.init)(params)), None, length=steps)
        return params

    # the starts split over the devices as the polish's are (32 starts, 2,000 cells x 32 components in 3D as Lorenz-63's,
    # 1,000 Adam steps: 5.2 s on two devices against 7.4 s on one)
    params = _over_devices(lambda tree, _: optimise(tree))(starts_tree, ()) if split else jax.jit(optimise)(starts_tree)
    params, energies = polish_optima(potential, params, polish, split, args=model_args)
    best = int(np.argmin(energies))
    if return_all:
        return jax.tree_util.tree_map(lambda leaf: leaf[best], params), energies, params
    return jax.tree_util.tree_map(lambda leaf: leaf[best], params), energies


def polish_optima(potential, params, polish: int, split: bool = True, whiten: bool = False, args=None,
                  hessians=None):
    """``params`` (a pytree with a leading axis of starts) moved to nearby minima of ``potential`` by at most
    ``polish`` L-BFGS iterations each (:func:`_lbfgs` on the host, on :data:`POLISH_THREADS` threads unless ``split`` is
    false: rows sharded over the devices are polished one start at a time; ``polish = 0``: left where they are).
    ``whiten`` (with ``split``): each start's L-BFGS runs in coordinates whitened by the clipped inverse Hessian there
    (:func:`whitening_roots`; the Hessians split over the devices), for starts near optima, where it is close to the
    optimum's (:func:`map_optima`'s ``map_from``).
    ``args``: the data, ``potential(params, args)`` (:func:`_lbfgs`'s); ``None``: ``potential(params)``.
    ``hessians`` ``(B, P, P)``: the Hessians at ``params`` when already known (:func:`map_hessians`), for ``whiten``.
    Returns ``(params, energies)``, the potential at each (``inf`` where it is not finite)."""
    bound = potential if args is None else BoundPotential(potential, args)
    if polish > 0:  # the polish's own final potentials (no program for them)
        if not (whiten and split):
            hessians = None
        elif hessians is None:
            hessians = hessian_matrices(bound, params)
        params, energies = _lbfgs(potential, params, polish, threads=POLISH_THREADS if split else 1, hessians=hessians,
                                  args=args)
    else:
        energies = np.asarray(jax.jit(jax.vmap(bound))(params))
    return params, np.where(np.isfinite(energies), energies, np.inf)


class _TickingNUTS(NUTS):
    """NUTS that reports each chain's iteration to the open progress bar (:mod:`kgmm_bayes.progress`)
    from inside the compiled sampler, instead of numpyro's progress bar, whose callback is bound to one
    run's bars and so cannot serve the parallel chains' program reused by later rounds
    (:class:`_ReusedPmap`).  Parallel chains report the same iteration count; the bar keeps the
    furthest."""

    def __init__(self, *args, every: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        self._every = every

    def sample(self, state, model_args, model_kwargs):
        state = super().sample(state, model_args, model_kwargs)
        tick(jnp.max(state.i), self._every)  # vectorized chains: one count per chain, all equal
        return state


def _round_label(first: int, n_round: int, chains: int, prefix: str = "") -> str:
    chain_range = f"chain {first + 1}" if n_round == 1 else f"chains {first + 1}-{first + n_round}"
    return f"NUTS {prefix}{chain_range} of {chains}"


class _ReusedPmap:
    """numpyro's ``"parallel"`` chain method (``jax.pmap``), compiled once for every round of one
    :class:`~numpyro.infer.MCMC`: numpyro wraps each run's chain function in a new ``functools.partial``
    and ``pmap``s it afresh, which compiles the whole warmup-and-sampling program again for every round of
    chains (about 3 s each on the default study).  The chain function of a round differs from the first
    round's only in what it is called with (keys, starts), so its first ``pmap`` serves every later
    round of the same phase (numpyro's collection window: a continuation's sampling-only run compiles its
    own).

    ``per_chain = k``: the model's last ``k`` arguments differ between chains (each chain's own whitening, with
    ``jit_model_args``, so that the sampling steps read them from the chain's state): ``rows`` (set before each
    run) holds them with a leading axis of the round's chains, and they replace the run's own last ``k``
    arguments chain by chain.  ``transform``: ``jax.pmap`` (chains on devices) or ``jax.vmap`` (vectorised)."""

    def __init__(self, mcmc, per_chain: int = 0, transform=None):
        self._mcmc = mcmc  # the MCMC using this chain method
        self._compiled = {}
        self._per_chain = int(per_chain)
        self._transform = jax.pmap if transform is None else transform
        self.rows = ()

    def __call__(self, chain_fn):
        keywords = getattr(chain_fn, "keywords", {})
        args = tuple(keywords.get("args", ()))
        shared = args[:len(args) - self._per_chain]
        params = (tuple(sorted(self._mcmc._collection_params.items())),
                  tuple(id(a) for a in shared),  # the same data objects in every round
                  keywords.get("collect_fields"), keywords.get("remove_sites"))
        if params not in self._compiled:
            if self._per_chain:
                def one_chain(map_args, *rows):
                    return chain_fn.func(map_args, **dict(keywords, args=shared + rows))
                self._compiled[params] = self._transform(one_chain)
            else:
                self._compiled[params] = self._transform(chain_fn)
        compiled = self._compiled[params]
        if self._per_chain:
            rows = tuple(self.rows)
            return lambda map_args: compiled(map_args, *rows)
        return compiled


def laplace_draws(key, model, model_args, params: dict, hessian, draws: int):
    """``draws`` draws of the Laplace approximation at ``params`` (unconstrained; ``hessian`` from
    :func:`hessian_matrix`, clipped as in :func:`laplace_covariance`), as the model's constrained
    ``(weights, means, cov_chol)``."""
    batch = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf)[None], params)
    u = _laplace_flat(key, batch, np.asarray(hessian)[None], draws)[0]
    sites = _constrained_sites(model, model_args, ravel_pytree(params)[1], u)
    return sites["weights"], sites["means"], sites["cov_chol"]


def _laplace_flat(key, batch: dict, hessians, draws: int) -> np.ndarray:
    """``(B, draws, P)``: flat unconstrained draws of the Laplace approximation at each of ``batch``'s ``B`` points
    (``hessians`` ``(B, P, P)``, clipped as in :func:`laplace_covariance`); the normal draws on the host
    (``host_rng``): no program compiled for them."""
    flats = np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(batch))
    # the Cholesky factors of laplace_covariance's covariances, on the host (its root=True, less the inverse factor
    # and the device copies no draw needs: bench_posterior_overheads.py's roots row, the same bits)
    roots = np.stack([np.linalg.cholesky(_clipped_covariance(np.asarray(h, np.float64))) for h in hessians])
    z = host_rng(key).standard_normal((len(flats), draws, flats.shape[1])).astype(flats.dtype)
    return flats[:, None, :] + np.matmul(z, np.swapaxes(roots, 1, 2))


def _constrained_sites(model, model_args, unravel, flat) -> dict:
    """The model's constrained and deterministic sites at flat unconstrained points ``(n, P)`` (one program per model
    and shapes: :func:`_program`)."""
    def build(_, unravel):
        return jax.jit(jax.vmap(lambda v, args: constrain_fn(model, args, {}, unravel(v), return_deterministic=True),
                                in_axes=(0, None)))

    template = unravel(jnp.zeros(np.shape(flat)[-1], np.result_type(flat)))
    program, args = _program("constrained sites", model_potential(model, model_args), template, build)
    return program(jnp.asarray(flat), args)


def adam_precision(model_args, config: SamplerConfig, split: bool = True) -> str:
    """The MAP searches' Adam steps in float32 where the sampler itself may take float32 (``likelihood_precision``
    not ``"float64"``, at least :data:`FLOAT32_MIN_WORK` of sampler work) and the rows are not sharded.  With the same
    Adam endpoints polished in float64 (``find_map``, key 0, 2 cores): Lorenz-63's 32 searches, Adam 6.2-7.1 s against
    3.8-3.9 s, the polish 8.1-8.2 s against 9.0-9.1 s; Kuramoto-Sivashinsky D = 4's 96, 25.0-25.5 s against 12.3-12.8 s
    and 22.4-27.4 s against 23.7-26.0 s; the same best optimum on both (to 0.006 nats on Lorenz-63, whose polish
    stops at its 500 iterations)."""
    features = model_args[0]
    if config.likelihood_precision == "float64" or not split or features.dtype != jnp.float64:
        return "float64"
    work = likelihood_work(*features.shape[-2:], model_args[2].centroids.shape[0], config)
    return "float32" if work >= FLOAT32_MIN_WORK else "float64"


class KnownHessians(NamedTuple):
    """The Hessians a first posterior of the same model computed at some of its MAP optima (a Laplace posterior's
    refined centres), for a second posterior started there (:func:`map_optima`'s ``map_from``): ``rows`` ``(D,)``, the
    optima's rows in ``map_from``; ``hessians`` ``(D, P, P)`` there; ``counts``, that posterior's likelihood counts."""
    rows: np.ndarray
    hessians: np.ndarray
    counts: np.ndarray


def count_ratio(counts, other) -> float | None:
    """``r`` where ``counts = r other`` entry by entry (to a relative 1e-12: one count vector times two zetas), else
    ``None``."""
    c, o = np.asarray(counts, np.float64), np.asarray(other, np.float64)
    if c.shape != o.shape or not np.all(np.isfinite(c)) or not np.all(np.isfinite(o)) or np.any((c == 0) != (o == 0)):
        return None
    nonzero = o != 0
    if not nonzero.any():
        return None
    ratios = c[nonzero] / o[nonzero]
    r = float(np.median(ratios))
    return r if r > 0 and np.all(np.abs(ratios - r) <= 1e-12 * r) else None


def map_hessians(model, model_args, points, known: KnownHessians | None = None) -> np.ndarray:
    """The Hessians ``(B, P, P)`` of ``model``'s potential with ``model_args`` at ``points`` (a pytree with a leading
    axis ``B``; :func:`hessian_matrices`), those ``known`` holds from another posterior of the same model with counts
    in proportion to these rescaled rather than computed again.  The potential is linear in the counts, ``U_c(theta) =
    U_0(theta) - sum_m c_m l_m(theta)`` (``U_0``: the prior's, Jacobians included), so with counts ``r c``
    ``H_rc = r H_c + (1 - r) H_0``, and ``H_0`` takes one likelihood row with count zero: Hessian-vector products of
    the prior alone.  Kuramoto-Sivashinsky D = 4's kept posterior: 64 of its 128 starts' Hessians (5 s of likelihood
    passes) come from its first posterior's Newton refinement."""
    features, counts = model_args[0], model_args[1]
    ratio = None if known is None else count_ratio(counts, known.counts)
    size = len(jax.tree_util.tree_leaves(points)[0])
    rows = np.asarray([], int) if ratio is None else np.asarray(known.rows, int)
    others = np.setdiff1d(np.arange(size), rows)
    bound = model_potential(model, model_args)
    if not len(rows):
        return hessian_matrices(bound, points)
    h = np.asarray(known.hessians, np.float64)
    if ratio != 1.0:  # (r H_c + (1 - r) H_0: the prior's Hessians at those points)
        prior_args = (features[:1], jnp.zeros((1,), jnp.result_type(counts)), *model_args[2:])
        prior_h = hessian_matrices(model_potential(model, prior_args),
                                   jax.tree_util.tree_map(lambda leaf: leaf[rows], points))
        h = ratio * h + (1.0 - ratio) * prior_h
    out = np.empty((size,) + h.shape[1:])
    out[rows] = h
    if len(others):
        out[others] = hessian_matrices(bound, jax.tree_util.tree_map(lambda leaf: leaf[others], points))
    return out


def map_optima(key, model_args, init_unconstrained: dict, config: SamplerConfig, model, split: bool = True,
               map_from=None, whiten: bool = True, known: KnownHessians | None = None):
    """``config.map_starts`` MAP searches (:func:`find_map`) and the optima the chains start at: ``(best,
    energies (starts,), picks, starts, optima)``; ``picks`` (the search each chain starts at, ``(chains,)``) and
    ``starts`` (their optima, a pytree with a leading chain axis) are ``None`` with ``chain_starts = "best"``;
    ``optima``: every search's optimum, flat and unconstrained ``(searches, P)``, as ``map_from`` takes them.

    ``map_from``: the flat optima of another posterior of the same model (the coarsening's first, whose likelihood
    counts the snapshots another number of times): polished at this one (:func:`polish_optima`) instead of searched
    for from the partition's values, one search each; ignored with ``map_polish = 0``, which could not move them.
    With ``whiten`` (and ``split``) each one's L-BFGS runs in coordinates whitened by its Hessian at this posterior
    (the comment at :data:`POLISH_THREADS` says why); ``known``: Hessians the first posterior already computed at
    some of ``map_from`` (:func:`map_hessians`)."""
    if map_from is not None and config.map_polish > 0:
        centre, unravel = ravel_pytree(init_unconstrained)
        points = jax.vmap(unravel)(jnp.asarray(map_from, centre.dtype))
        hessians = map_hessians(model, model_args, points, known) if whiten and split else None
        optima, energies = polish_optima(_potential_of(model), points, config.map_polish,
                                         split, whiten=whiten, args=model_args, hessians=hessians)
        best = jax.tree_util.tree_map(lambda leaf: leaf[int(np.argmin(energies))], optima)
    else:
        best, energies, optima = find_map(key, model_args, init_unconstrained, config.map_starts, config.map_steps,
                                          model=model, return_all=True, polish=config.map_polish, split=split,
                                          adam_precision=adam_precision(model_args, config, split))
    flat = np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(optima), np.float64)
    if config.chain_starts not in ("spread", "distinct"):
        return best, energies, None, None, flat
    picks = spread_starts(optima, energies, config.chains,
                          SPREAD_NATS if config.chain_starts == "spread" else np.inf)
    return best, energies, picks, jax.tree_util.tree_map(lambda leaf: leaf[picks], optima), flat


NEWTON_STEPS = 30  # at most this many Newton steps (the start's Hessian) refine each Laplace centre (newton_refine)
NEWTON_DECREMENT = 1e-4  # ... until half its Newton decrement (nats) is below this: within 0.014 sd of the optimum
# ... and while a point is still more than NEWTON_REFRESH nats above it (0.14 sd off) when its chord steps stop, the
# Hessians where they stopped start another round of them, up to NEWTON_ROUNDS rounds in all: from far off the start's
# Hessian is a poor one (Kuramoto-Sivashinsky D = 4's kept Laplace posterior: one of 48 centres left 0.235 nats above
# its optimum by one round, 4.6e-5 by more).  Rounds for every point above NEWTON_DECREMENT cost Lorenz-63's first
# posterior 4 s more (four more Hessians) for one centre left 0.0031 nats (0.08 sd) above its optimum.
NEWTON_ROUNDS = 4
NEWTON_REFRESH = 1e-2
NEWTON_BATCH = 16  # points whose potential (and gradient) one pass of newton_refine's programs computes at once


def newton_refine(potential, points, hessians, steps: int = NEWTON_STEPS, tolerance: float = NEWTON_DECREMENT,
                  rounds: int = NEWTON_ROUNDS, refresh: float = NEWTON_REFRESH):
    """Each of ``points`` (a pytree with a leading axis ``B``) moved to its optimum of ``potential`` by Newton steps
    with the Hessian at the point it started from (``hessians`` ``(B, P, P)``, :func:`hessian_matrices`).

    The MAP searches' L-BFGS polish stops at its iteration limit on flat ridges: on Lorenz-63 (32 searches, 500
    iterations) 13 of 16 distinct optima were 0.006-0.6 nats above the optimum that 3,000 iterations reach, up to
    1.25 Mahalanobis units (4 marginal sds) away from it, where a Laplace approximation centred there is off by
    a band's width.  Each step is ``-H^-1 g`` (halved up to three times until the potential decreases); with the
    start's Hessian kept (no Hessian per step: a chord method, which converges to where the gradient vanishes, the
    faster the closer that Hessian is to the optimum's) the steps stop once half the Newton decrement ``g^T H^-1 g /
    2`` (nats: how far above its optimum the point is predicted to be) is at most ``tolerance``, or after ``steps``.
    Points whose Hessian is not positive definite (no optimum nearby) do not move.  Each step runs on the points still
    above the tolerance at once (in chunks of one compiled shape, whatever moves), and only the points the last step
    moved are measured again; then one Hessian at every point that moved (the others keep theirs: the same points).
    Where a point is still more than ``refresh`` (at least ``tolerance``) above its optimum there (the start's Hessian
    too far from its optimum's for the chord steps to get there), those Hessians start another round of chord steps,
    up to ``rounds`` rounds in all.  Kuramoto-Sivashinsky D = 4 (64 optima, P = 479; ``sample_posterior``, 2 cores):
    the first posterior's refinement 6.9 s against 18.2 s when every point was measured at every step and given new
    Hessians at every round (21 of 64 moved in the first round, 2 in the second), the kept one's 4.2 s against 16.4 s
    (one moved, over 41 steps in two rounds); the same optima.

    Returns ``(points, hessians, decrements, potentials)``: the refined points, the Hessians there, each point's half
    Newton decrement in them (``nan`` where the Hessian is not positive definite) and the potential there."""
    first = jax.tree_util.tree_map(lambda leaf: leaf[0], points)
    flats = np.array(jax.vmap(lambda p: ravel_pytree(p)[0])(points), np.float64)
    # in chunks of points, as laplace_posterior's energies (each point's likelihood holds rows x components); only the
    # points that moved are evaluated again (Kuramoto-Sivashinsky D = 4's kept posterior: one of 64 moved, in 41 steps)
    grads, args = _program("values and gradients", potential, first, functools.partial(_batched, gradient=True),
                           NEWTON_BATCH)
    energies, _ = _program("values", potential, first, _batched, NEWTON_BATCH)
    halvings = np.asarray([1.0, 0.5, 0.25, 0.125])

    def factor(hessian):  # the Cholesky factor, None where not positive definite
        try:
            return np.linalg.cholesky(hessian)
        except np.linalg.LinAlgError:
            return None

    def newton(rows):  # values, steps -H^-1 g and half decrements (nan: no step) at flats[rows], into f, step, half
        value, g = (np.asarray(a, np.float64) for a in _chunked(grads, flats[rows], args, NEWTON_BATCH))
        f[rows] = value
        for i, gi in zip(rows, g):
            if chols[i] is None:
                step[i], half[i] = 0.0, np.nan
            else:
                step[i] = -scipy.linalg.cho_solve((chols[i], True), gi)
                half[i] = -0.5 * float(gi @ step[i])

    hessians = np.array(hessians, np.float64)
    chols = [factor(h) for h in hessians]
    f, step, half = np.empty(len(flats)), np.zeros_like(flats), np.empty(len(flats))
    newton(np.arange(len(flats)))
    for _ in range(rounds):  # each round: chord steps, then the Hessians where they ended (as returned)
        moved = np.zeros(len(flats), bool)
        changed = np.asarray([], int)  # the points the last step moved: measured again before the next
        for _ in range(steps):
            if len(changed):
                newton(changed)
            active = np.flatnonzero(np.isfinite(half) & (half > tolerance) & np.isfinite(f))
            if not len(active):
                break
            trials = flats[active][None] + halvings[:, None, None] * step[active][None]  # (halvings, active, P)
            tried = np.asarray(_chunked(energies, trials.reshape(-1, flats.shape[1]), args, NEWTON_BATCH),
                               np.float64).reshape(len(halvings), -1)
            better = np.isfinite(tried) & (tried < f[active][None])
            if not better.any():
                break
            changed = active[better.any(axis=0)]
            for j in np.flatnonzero(better.any(axis=0)):
                flats[active[j]] = trials[int(np.argmax(better[:, j])), j]
            moved[changed] = True
        if not moved.any():  # the last pass measured these points with the Hessians there
            break
        again = np.flatnonzero(moved)  # the Hessians where the moved points ended; the others' stay theirs
        hessians[again] = _flat_hessians(potential, first, flats[again])
        for i in again:
            chols[i] = factor(hessians[i])
        newton(again)
        if not (np.isfinite(half) & (half > max(refresh, tolerance))).any():
            break
    return _host_unravel(first, flats), hessians, half, f


def _chunked(program, flats, args, size: int):
    """``program(chunk, args)`` over ``flats`` ``(n, P)`` in chunks of ``size`` points (the last padded with copies of
    its last point), its outputs (arrays, or a tuple of them, with a leading axis) joined and cut to ``n``: one compiled
    shape serves any number of points."""
    n = len(flats)
    padded = np.concatenate([flats, np.repeat(flats[-1:], (-n) % size, axis=0)])
    parts = [program(jnp.asarray(padded[i:i + size]), args) for i in range(0, len(padded), size)]
    return jax.tree_util.tree_map(lambda *leaves: np.concatenate([np.asarray(leaf) for leaf in leaves])[:n], *parts)


def _batched(fn, unravel, gradient: bool = False, batch: int = NEWTON_BATCH):
    """A compiled ``(flats (B, P), args) -> potentials (B,)`` (with ``gradient``, ``(potentials, gradients (B, P))``)
    of ``fn(params, args)``, ``batch`` points at a time (each point's likelihood holds rows x components)."""
    def one(v, args):
        return fn(unravel(v), args)

    each = jax.value_and_grad(one) if gradient else one
    return jax.jit(lambda vs, args: jax.lax.map(lambda v: each(v, args), vs, batch_size=batch))


class RefinedOptima(NamedTuple):
    """The distinct MAP optima some chains start at, each refined by :func:`newton_refine` (``refine_optima``)."""
    first_of: np.ndarray  # (D,): the first chain at each distinct optimum
    which: np.ndarray  # (chains,): each chain's distinct optimum
    points: dict  # the refined optima, a pytree with a leading axis D
    hessians: np.ndarray  # (D, P, P) there
    decrements: np.ndarray  # (D,) half Newton decrements left (nan: not positive definite, not moved)
    potentials: np.ndarray  # (D,)


def refine_optima(potential, starts, picks) -> RefinedOptima:
    """Each distinct optimum of ``starts`` (the chains' optima, a pytree with a leading chain axis, from MAP searches
    ``picks`` ``(chains,)``) once, refined by Newton steps from its own Hessian (:func:`newton_refine`)."""
    _, first_of, which = np.unique(np.asarray(picks), return_index=True, return_inverse=True)
    at = jax.tree_util.tree_map(lambda leaf: leaf[first_of], starts)
    return RefinedOptima(first_of, which, *newton_refine(potential, at, hessian_matrices(potential, at)))


def laplace_posterior(key, points, counts, prior: MixturePrior, init: dict, config: SamplerConfig,
                      point_covariances=None, map_from=None, known: KnownHessians | None = None,
                      keep_hessians: bool = False) -> PosteriorSamples:
    """The Laplace approximation of the mixture posterior at the MAP optima :func:`run_nuts`' chains would start
    at, shaped as its draws: chain ``c`` holds ``config.draws`` independent draws of the Gaussian (in
    unconstrained space, the inverse Hessian of the potential clipped as in :func:`laplace_covariance`) at its
    optimum: the best one for every chain with ``chain_starts = "best"``, each chain's own with ``"spread"`` or
    ``"distinct"`` (then stacked as chains in several modes are).  Each optimum a chain uses is first refined by
    Newton steps (:func:`newton_refine`; ``sample_stats["laplace_newton_decrement"]``, one per distinct optimum,
    says how far above its optimum, in nats, each centre is left), and ``map_optima`` and ``map_potential_energies``
    hold the refined ones.  The likelihood is the cells' (or points') in
    float64, as the MAP searches'.  No sampler runs: ``sample_stats`` holds no divergences or steps (zeros),
    ``potential_energy`` the potential at each draw, ``laplace = True``, and the MAP searches' energies and the
    chains' optima as :func:`run_nuts` keeps them.  The coarsening's first posterior with ``[sampler]
    first_posterior = "laplace"`` (:func:`kgmm_bayes.study.stages.sample_posterior`), and the one kept with
    ``kept_posterior = "laplace"``, whose optima are another posterior's (``map_from``, as :func:`map_optima` takes
    them) polished at its own counts, with ``known`` Hessians there (:func:`map_optima`'s).  ``keep_hessians``:
    ``sample_stats`` also holds ``map_hessians`` ``(D, P, P)``, the Hessians at the refined optima, and
    ``map_hessian_rows``, their rows in ``map_optima`` (a second posterior's :class:`KnownHessians`)."""
    if config.map_starts < 1:
        raise ValueError("a Laplace posterior is centred on MAP optima: it needs map_starts > 0")
    features = likelihood_features(points, point_covariances)
    model = AUTO_BLOCKS_MODEL
    model_args = (features, jnp.asarray(counts), prior)
    start = time.perf_counter()
    draw_key, map_key = jax.random.split(key)
    init_unconstrained = jax.jit(lambda values: unconstrain_fn(model, model_args, {}, values))(init)
    best, energies, picks, starts, optima = map_optima(map_key, model_args, init_unconstrained, config, model,
                                                       map_from=map_from, known=known)
    if picks is None:  # every chain at the best optimum
        picks = np.full(config.chains, int(np.argmin(energies)))
        starts = jax.tree_util.tree_map(lambda leaf: jnp.broadcast_to(leaf, (config.chains,) + leaf.shape), best)
    picks = np.asarray(picks)
    potential = model_potential(model, model_args)
    first_of, inverse, at, hessians, decrements, refined_energies = refine_optima(potential, starts, picks)
    refined = np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(at), np.float64)
    searches = np.asarray(picks)[first_of]  # the MAP search each distinct optimum came from, now refined
    optima = np.array(optima)
    optima[searches] = refined
    energies = np.array(energies)
    energies[searches] = refined_energies
    per_optimum = _laplace_flat(draw_key, at, hessians, config.draws * np.bincount(inverse).max())
    # chain c: the next config.draws of its optimum's draws (chains sharing an optimum take disjoint draws)
    rank = np.array([np.sum(inverse[:c] == inverse[c]) for c in range(len(picks))])
    flat = np.stack([per_optimum[inverse[c], rank[c] * config.draws:(rank[c] + 1) * config.draws]
                     for c in range(len(picks))])
    unravel = ravel_pytree(best)[1]
    merged = flat.reshape((-1, flat.shape[-1]))
    sites = {k: np.asarray(v).reshape(flat.shape[:2] + v.shape[1:])
             for k, v in _constrained_sites(model, model_args, unravel, merged).items()}
    energy_of, args = _program("values", potential, best, functools.partial(_batched, batch=64), 64)
    energy = np.asarray(energy_of(jnp.asarray(merged), args)).reshape(flat.shape[:2])  # (in batches of draws)
    zeros = np.zeros(flat.shape[:2], np.int64)
    stats = {"diverging": zeros.astype(bool), "num_steps": zeros, "tree_depth": zeros,
             "accept_prob": np.ones(flat.shape[:2]), "energy": energy, "potential_energy": energy,
             "map_potential_energies": energies, "map_optima": optima, "start_optima": picks,
             "laplace": np.asarray(True), "laplace_newton_decrement": decrements}
    if keep_hessians:
        stats.update(map_hessians=hessians, map_hessian_rows=searches)
    return PosteriorSamples(weights=sites["weights"], means=sites["means"], cov_chol=sites["cov_chol"],
                            sites=sites, sample_stats=stats, wall_time=time.perf_counter() - start)


def _potential(model, model_args, params):
    return potential_energy(model, model_args, {}, params)


def _potential_of_args(model, params, model_args):  # _potential with the data last: potential(params, args)
    return _potential(model, model_args, params)


@functools.lru_cache(maxsize=None)
def _potential_of(model):
    """``potential(params, args)`` of ``model`` (:func:`_potential_of_args`), the same object for the same model, as
    :func:`_program` keys its programs by."""
    return functools.partial(_potential_of_args, model)


# The mixture models the samplers build, the same objects at every call (the shared programs are keyed by them)
AUTO_BLOCKS_MODEL = functools.partial(mixture_model, block_rows="auto")
ONE_BLOCK_MODEL = functools.partial(mixture_model, block_rows=None)


class BoundPotential:
    """``fn(params, args)`` as a potential of ``params`` alone (callable as one), its data ``args`` kept apart: the
    compiled programs made from it (:func:`hessian_matrices`, :func:`newton_refine`, the Laplace posterior's
    energies) take ``args`` as an argument, not as constants, and are kept (:func:`_program`), so that one program
    per ``fn`` and shape serves every data set and zeta.  The coarsening's first and kept posteriors then trace each
    once: a posterior traced about a dozen (0.1-0.4 s each on Lorenz-63), some of them again at each Newton round."""

    __slots__ = ("fn", "args")

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __call__(self, params):
        return self.fn(params, self.args)


def model_potential(model, model_args) -> BoundPotential:
    """``model``'s potential energy at its unconstrained parameters, given ``model_args``."""
    return BoundPotential(_potential_of(model), model_args)


_PROGRAMS: dict = {}  # _program's, oldest first
PROGRAMS_KEPT = 64  # at most this many (each a traced and compiled program, no data: about 1 MB each)


def _program(kind: str, potential, template, build, *static):
    """``(program, args)``: ``build(fn, unravel)`` (a compiled function of its inputs and of ``args``; ``unravel``:
    ``ravel_pytree``'s for ``template``, one point's pytree), to be called as ``program(..., args)`` where
    ``potential`` is ``fn(params, args)``.  For a :class:`BoundPotential` it is kept, by ``kind``, ``fn``, the
    template's structure and shapes and ``static``, for every later call (its ``args`` passed in); any other potential
    (a function of ``params`` alone) gets a new program, with ``args = ()``."""
    if not isinstance(potential, BoundPotential):
        return build(lambda params, _: potential(params), ravel_pytree(template)[1]), ()
    leaves, treedef = jax.tree_util.tree_flatten(template)
    key = (kind, potential.fn, treedef, tuple((np.shape(leaf), jnp.result_type(leaf).name) for leaf in leaves), static)
    program = _PROGRAMS.pop(key, None)  # (put back last: the most recently used last)
    if program is None:
        program = build(potential.fn, ravel_pytree(template)[1])
        while len(_PROGRAMS) >= PROGRAMS_KEPT:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
    _PROGRAMS[key] = program
    return program, potential.args


def _whitened_model(model, model_args, centre, chol, unravel):
    """The posterior of ``model`` in whitened coordinates ``u`` (``theta = centre + chol @ u``, flat
    unconstrained parameters; ``chol`` any square root of the Laplace covariance): an improper flat site plus the model's potential as a factor (the linear
    map's Jacobian is a constant).  The model's own sites are hidden from the sampler (``block``)."""
    import numpyro
    import numpyro.distributions as dist

    u = numpyro.sample("u", dist.ImproperUniform(dist.constraints.real_vector, (), (centre.size,)))
    with numpyro.handlers.block():
        energy = _potential(model, model_args, unravel(centre + chol @ u))
    numpyro.factor("posterior", -energy)


def _unwhitener(model, model_args, unravel):
    """A compiled function of whitened draws ``u`` ``(C, S, P)``, ``centres`` ``(C, P)`` and ``chols`` ``(C, P, P)``:
    the model's constrained and deterministic sites of chain ``c``'s draws through its own ``centres[c]`` and
    ``chols[c]``, with leading ``(C, S)`` axes.  Made once per sampler, so that its rounds of chains share one
    program (made per round, each round traced and compiled it again: 0.3 s a round on Lorenz-63)."""
    def one(v, centre, chol):
        return constrain_fn(model, model_args, {}, unravel(centre + chol @ v), return_deterministic=True)

    return jax.jit(jax.vmap(jax.vmap(one, in_axes=(0, None, None))))


def chain_whitening(potential, params: dict, hessian, starts=None, picks=None):
    """Each chain's whitening for NUTS in Laplace-whitened coordinates: ``(centres (C, P), chols (C, P, P),
    inverses (C, P, P), decrements)``, ``theta = centres[c] + chols[c] @ u`` for chain ``c``.

    Without ``starts`` (every chain at the best MAP optimum ``params``, whose Hessian is ``hessian``) one
    whitening, the Laplace covariance's Cholesky factor there (:func:`laplace_covariance`), serves every chain
    (``C = 1``; ``decrements`` is ``None``).  With ``starts`` (the chains' own optima, a pytree with a leading
    chain axis, from MAP searches ``picks``) each distinct optimum is first refined by Newton steps
    (:func:`newton_refine`: the L-BFGS polish stops short of it on flat ridges) and each chain is whitened by its
    own optimum's Laplace covariance; ``decrements``: each distinct optimum's half Newton decrement left.

    Measured on Lorenz-63 (P = 319; 16 chains at distinct optima, zeta 0.145-0.151, 250 warmup and 250 draws;
    ``metric = "dense"``, NUTS keys 0, 1, 2): each chain whitened by its own optimum, min bulk ESS 73 / 58 / 68, r_hat
    within modes 1.22 / 1.39 / 1.28, the stacked mean's predicted error 0.019 / 0.050 / 0.064 band widths, 0 / 0 / 1
    divergent transitions, 48.6 / 45.4 / 38.0 leapfrog steps per iteration; every chain whitened by the best
    optimum's (before), 48 / 61 / 70, 1.39 / 1.85 / 1.20, 0.056 / 0.042 / 0.072, 3 / 0 / 0, 46.0 / 40.7 / 56.7: no
    difference three keys resolve, at about 6 s more (the Hessians and Newton steps).  The diagonal metric (the
    study's, key 0): 99.8 steps, ESS 94, 1.04, 0.013.  One chain at each of three refined optima (the Laplace
    covariance fixed against the diagonal, float64): 15-31 steps against 73-127, min bulk ESS 112-124 against 7-210;
    but together the whitened chains stay at their own optima (4-9 modes of chains against the diagonal's 2) and some
    drift within them."""
    if starts is None:
        _, chol, inverse = laplace_covariance(potential, params, root=True, hessian=hessian)
        return (ravel_pytree(params)[0][None], jnp.asarray(chol)[None], jnp.asarray(inverse)[None], None)
    _, which, at, hessians, decrements, _ = refine_optima(potential, starts, picks)
    roots = [laplace_covariance(potential, None, root=True, hessian=h)[1:] for h in hessians]
    centres = np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(at), np.float64)[which]
    chols = np.stack([np.asarray(roots[j][0]) for j in which])
    inverses = np.stack([np.asarray(roots[j][1]) for j in which])
    return jnp.asarray(centres), jnp.asarray(chols), jnp.asarray(inverses), decrements


def warm_start_values(post: PosteriorSamples, model, model_args, names, scale: float, dense: bool):
    """Where a second posterior of the same model starts when a first one was sampled (the coarsening's kept
    posterior after its first, :func:`kgmm_bayes.study.stages.sample_posterior`): each chain's last draw of
    ``post`` in unconstrained space ``(chains, P)``, and the pooled within-chain covariance of all its draws
    (``dense``, as a diagonal matrix when the draws are too few for it to have full rank; else its diagonal),
    shrunk towards 1e-3 as numpyro shrinks the metrics it adapts, times ``scale``, as NUTS's initial inverse
    metric.  The variances of a posterior whose likelihood counts ``zeta`` times the snapshots are about
    ``1 / zeta`` times larger, so ``scale`` is the first posterior's zeta over the second's.  ``names``: the
    model's sampled sites."""
    chains, draws = post.weights.shape[:2]
    if draws < 2:
        raise ValueError(f"a warm start needs at least 2 draws per chain, got {draws}")
    sites = {n: jnp.asarray(np.reshape(post.sites[n], (chains * draws,) + np.shape(post.sites[n])[2:])) for n in names}
    flat = jax.jit(jax.vmap(lambda v: ravel_pytree(unconstrain_fn(model, model_args, {}, v))[0]))(sites)
    u = np.asarray(flat, np.float64).reshape(chains, draws, -1)
    centred = u - u.mean(axis=1, keepdims=True)
    n = chains * (draws - 1)
    shrinkage = 1e-3 * 5.0 / (n + 5.0)  # the covariance times n / (n + 5), plus this (numpyro's, Stan's)
    if dense:
        metric = np.einsum("csp,csq->pq", centred, centred) / (n + 5.0)
        if n <= u.shape[-1]:  # too few draws for a full-rank covariance: its diagonal
            metric = np.diag(np.diag(metric))
        metric = metric + shrinkage * np.eye(u.shape[-1])
    else:
        metric = np.sum(centred ** 2, axis=(0, 1)) / (n + 5.0) + shrinkage
    return u[:, -1], float(scale) * metric


def run_nuts(key, points, counts, prior: MixturePrior, init: dict, config: SamplerConfig,
             point_covariances=None, drifting=None, warm=None, map_from=None,
             known: KnownHessians | None = None) -> PosteriorSamples:
    """Sample the mixture posterior with NUTS on weighted points ``(M, d)``.

    With ``point_covariances`` ``(M, d, d)`` the points are cells (a coreset) entering
    through their means and within-cell covariances (:func:`~kgmm_bayes.bayes.mixture.expected_quadratic_features`).

    ``drifting``: a function of the draws (a :class:`PosteriorSamples`) returning the chains whose
    draws are not yet stationary.  Up to ``config.extend`` times, the rounds holding such chains
    run on from their last state with the adapted step size and metric (numpyro's
    ``post_warmup_state``): their draws so far count as warmup and as many new draws replace them
    (every chain keeps ``config.draws``).  ``sample_stats["continuations"]`` ``(chains,)`` counts
    how many times each chain's draws were replaced.

    ``warm``: ``(post, scale)``, a posterior of the same model already sampled with as many chains (the
    coarsening's first posterior) and the ratio of its likelihood power to this one's.  Each chain then starts
    at its own chain's last draw and warmup starts in ``post``'s pooled within-chain covariance times
    ``scale`` (:func:`warm_start_values`), instead of at MAP searches in their Laplace metric: no MAP
    search, Hessian or pilot draws are computed.  Where ``post`` sampled merged cells ("auto"), this posterior
    samples as many (merged with its own key), rechecked on its draws as a choice of the cells is.  Ignored
    with ``metric = "laplace"`` and in whitened coordinates (a dense metric beyond
    :data:`DENSE_ADAPTATION_MAX` parameters), which the Laplace covariance defines, when the chains
    differ in number, and with ``config.warm_start`` false; ``laplace_metric`` does not apply to it.
    ``sample_stats["start_optima"]`` stays ``post``'s: each chain is still the unit of the MAP optimum its first chain started at.

    ``map_from``: another posterior's MAP optima (its ``sample_stats["map_optima"]``, ``(searches, P)``), which the
    MAP searches polish at this posterior instead of searching afresh (:func:`map_optima`); not used by a warm
    start, which searches for none.  ``sample_stats["map_optima"]`` holds this posterior's own.  ``known``: Hessians
    that posterior computed at some of them (:func:`map_hessians`).
    """
    if config.likelihood_precision not in PRECISIONS:
        raise ValueError(f"likelihood_precision must be one of {PRECISIONS}, got {config.likelihood_precision!r}")
    if config.likelihood_cells != "auto" and (isinstance(config.likelihood_cells, bool)
                                              or not isinstance(config.likelihood_cells, (int, np.integer))
                                              or config.likelihood_cells < 1):
        raise ValueError(f"likelihood_cells must be \"auto\" or a positive integer, got {config.likelihood_cells!r}")
    features = likelihood_features(points, point_covariances)
    counts = jnp.asarray(counts)
    sharded = config.shard_data and jax.local_device_count() > 1
    if sharded:
        features, counts = shard_rows(features, counts)
    # Blocks of rows keep the likelihood's passes in cache; sharded rows stay one block
    # (re-blocking them would gather rows across devices).
    model = ONE_BLOCK_MODEL if sharded else AUTO_BLOCKS_MODEL
    model_args = (features, counts, prior)
    start = time.perf_counter()  # the MAP search is part of the fit's cost
    init_unconstrained = jax.jit(lambda values: unconstrain_fn(model, model_args, {}, values))(init)
    metric = resolved_metric(config.metric, ravel_pytree(init_unconstrained)[0].size, config.warmup, sharded,
                             config.dense_mass)
    dense = metric != "diagonal"
    fixed = metric == "laplace"
    whiten = metric == "whitened" or (fixed and not sharded)
    if warm is not None and (whiten or fixed or warm[0].num_chains != config.chains or not config.warm_start):
        warm = None  # the fixed metric and whitened coordinates are the Laplace covariance's; other chains, other units
    jitter_key, run_key, map_key = jax.random.split(key, 3)
    map_energies, starts, picks, optima = None, None, None, None
    warm_inverse = None
    if warm is not None:
        last, warm_inverse = warm_start_values(warm[0], model, model_args, tuple(init), warm[1], dense)
        starts = jax.vmap(ravel_pytree(init_unconstrained)[1])(jnp.asarray(last))
        if "start_optima" in warm[0].sample_stats:
            picks = np.asarray(warm[0].sample_stats["start_optima"])
    elif config.map_starts > 0:
        init_unconstrained, map_energies, picks, starts, optima = map_optima(
            map_key, model_args, init_unconstrained, config, model, split=not sharded, map_from=map_from,
            known=known)
    # Chains start within the posterior's width of the start point: the Laplace sd, at most
    # init_jitter.  A fixed jitter of 0.05 is tens of posterior sds for a mean fitted on 1e5
    # snapshots: chains then fall back from far off and can land in another local mode.
    potential = functools.partial(_potential, model, model_args) if sharded else model_potential(model, model_args)
    cells = None if point_covariances is None or sharded else _coreset.Coreset(
        np.asarray(points, np.float64), np.asarray(counts, np.float64), np.asarray(point_covariances, np.float64))
    choose = cells is not None and config.likelihood_cells == "auto" and config.map_starts > 0 and warm is None
    # a warm start samples as many cells as its first posterior did, rechecked on the draws as a choice is
    warm_cells = None
    if warm is not None and cells is not None and config.likelihood_cells == "auto":
        warm_cells = int(warm[0].sample_stats.get("likelihood_cells", len(cells.points)))
    # the dense metric and the coreset's choice need the whole Hessian: computed once, its diagonal gives the
    # scales too (laplace_scales would compute it anyway)
    hessian = hessian_matrix(potential, init_unconstrained) if warm is None and (dense or choose) else None
    sd = None if warm is not None else laplace_scales(potential, init_unconstrained, hessian=hessian)
    # The likelihood NUTS samples: the cells, or a coarser merge of them (kgmm_bayes.bayes.coreset) that moves
    # posterior means by about a tenth of their sd at most (first order; 0.2 as rechecked on the draws); the MAP
    # search, the metric and the starts use the cells.
    merged, ladder_table = cells, None
    if choose:
        pilot = laplace_draws(jax.random.fold_in(map_key, 1), model, model_args, init_unconstrained, hessian,
                              _coreset.PILOT_DRAWS)
        merged, ladder_table = _coreset.choose_cells(cells, prior.centroids.shape[0], pilot,
                                                     _seed_from_key(jax.random.fold_in(map_key, 2)))
    elif cells is not None and (warm_cells or config.likelihood_cells) != "auto" and \
            int(warm_cells or config.likelihood_cells) < len(cells.points):
        merged = _coreset.merge_cells(*cells, int(warm_cells or config.likelihood_cells),
                                      _seed_from_key(jax.random.fold_in(map_key, 2)))
    # The likelihood's precision ([sampler] likelihood_precision): float32 computes its value and gradient in
    # about two thirds of the time (Lorenz-63's 2,000 cells x 32 components: 145 against 214 us, one thread); "auto"
    # takes it where the gap of the float32 likelihood (merged or not) to the cells' float64 one keeps the merge's
    # bound over the same Laplace draws, and rechecks it on the draws as a merge is rechecked
    precision, precision_sd = config.likelihood_precision, None
    if precision == "auto":
        precision = "float64"
        if choose and likelihood_work(len(merged.points), features.shape[-1], prior.centroids.shape[0],
                                      config) >= FLOAT32_MIN_WORK:
            precision_sd = float(np.std(_coreset.loglik_gaps(cells, merged, *pilot, dtype=np.float32)))
            precision = "float32" if precision_sd <= _coreset.GAP_SD else "float64"
        elif warm is not None and cells is not None and config.likelihood_cells == "auto":
            precision = str(warm[0].sample_stats.get("likelihood_precision", "float64"))  # rechecked as its cells
    dtype = np.float32 if precision == "float32" else np.float64
    if merged is cells and dtype == np.float64:
        sample_args = model_args
    else:
        sampled = model_args[0] if merged is cells else merged.features()
        sample_args = (jnp.asarray(sampled, dtype), jnp.asarray(model_args[1] if merged is cells else merged.counts),
                       prior)
    if warm is not None:  # each chain at its own chain's last draw
        init_params = starts
    else:
        scale = jax.tree_util.tree_map(lambda v: np.minimum(np.asarray(v), config.init_jitter), sd)
        init_params = _jittered(jitter_key, init_unconstrained, config.chains, scale)
    if starts is not None and warm is None:  # each chain at its own optimum, with the same jitter
        init_params = jax.tree_util.tree_map(lambda s, p, c: s + (p - c[None]), starts, init_params,
                                             init_unconstrained)
    centre, unravel = ravel_pytree(init_unconstrained)
    # The metric ([sampler] metric).  Dense: warmup starts in the Laplace covariance at the start point
    # and adapts from there.  Up to DENSE_ADAPTATION_MAX parameters numpyro adapts the dense matrix
    # itself; beyond, NUTS runs in the Laplace-whitened coordinates u (theta = theta* + L u, L L^T the
    # Laplace covariance) and adapts a diagonal there (the metric L D L^T): a dense matrix re-estimated
    # from the first windows' 25-100 draws is worse than none at large P (Lorenz-63, P = 319: 42 leapfrog
    # steps per iteration in the Laplace metric, 270-390 once numpyro re-estimated it).  The Laplace
    # metric kept fixed misses the directions in which a mixture's posterior is far wider than its
    # curvature at the mode (default study at K = 10, P = 29: whitened by it, the posterior's variances span 0.07-40).
    # "auto" (resolved_metric) takes the dense metric up to 50 parameters (500 warmup iterations), the diagonal beyond
    # (benchmarks/bench_sampler.py --metric-studies): on Lorenz-63 (P = 319) at its coarsened zeta 0.125,
    # the whitened metric takes 45 steps per iteration against 91 but its min ESS is 69 against 245 (r_hat
    # within modes 1.79 against 1.14), and the fixed Laplace metric 44 steps, min ESS 48.  Those chains start at
    # 11 distinct optima, all whitened by the best one's Laplace covariance; but whitening each optimum by its own
    # does not settle it: 4 chains at the best optimum (same zeta, key 0) take 31 steps whitened, min ESS 78,
    # against 89 steps, min ESS 25 diagonal; 2 chains at each of two other optima, whitened by their own, min
    # ESS 16 and 3 against 42 and 73 diagonal.  At zeta 1 the
    # whitened chains diverged (28-139 divergences) and split into modes (r_hat within modes 1.24-1.27).
    # Those optima were the L-BFGS polish's, up to 1.25 Mahalanobis units short of the optimum.  Refined by Newton
    # steps, each chain whitened by its own optimum does as well as all by the best one's over three keys (no
    # difference they resolve; chain_whitening), not as well as the diagonal.  Chains at distinct optima are
    # whitened each by its own: the best optimum's covariance says nothing of another optimum's geometry.
    # the progress display: reported from inside the compiled chains (numpyro's own bar is off) for long samplers,
    # else by rounds of chains (TICKING_MIN_WORK)
    work = likelihood_work(*sample_args[0].shape[-2:], prior.centroids.shape[0], config)
    nuts = functools.partial(_TickingNUTS, every=max(1, (config.warmup + config.draws) // 100)) \
        if config.progress and work >= TICKING_MIN_WORK else NUTS
    whitening_decrements = None
    if whiten:  # each chain in its own optimum's whitened coordinates (chain_whitening), or all in the best's
        centres, chols, inverses, whitening_decrements = chain_whitening(potential, init_unconstrained, hessian,
                                                                         starts, picks)
        own = np.arange(config.chains) if len(centres) > 1 else np.zeros(config.chains, np.int64)
        # each chain at its (refined) optimum plus the jitter it was given about its MAP search's optimum
        reference = jnp.broadcast_to(centre, (config.chains, centre.size)) if starts is None else \
            jax.vmap(lambda p: ravel_pytree(p)[0])(starts)
        offsets = jax.vmap(lambda p: ravel_pytree(p)[0])(init_params) - reference
        init_params = {"u": jnp.einsum("cpq,cq->cp", inverses[own], offsets)}
        # the data are the model's constants (as arguments the chains would carry them through their loop, and a
        # float32 gradient of Lorenz-63's likelihood took 371 against 225-286 us); the whitening is its arguments
        unwhiten = _unwhitener(model, sample_args, unravel)  # draws back to the model's sites, chain by chain
        kernel = nuts(functools.partial(_whitened_model, model, sample_args, unravel=unravel),
                      target_accept_prob=config.target_accept, max_tree_depth=config.max_tree_depth,
                      adapt_mass_matrix=not fixed)
        centres, chols = centres[own], chols[own]  # (chains, P), (chains, P, P)
        run_args = (centres[0], chols[0])  # a round of several chains: each chain's own replaces them
    else:
        # A warm start's first warmup window runs in the first posterior's spread (warm_start_values).  Otherwise
        # the first warmup window runs in the Laplace metric instead of the identity: with the identity,
        # steps sized for the widest coordinates throw chains out of the start's mode along the narrowest
        # (posterior sds of means ~1e-3 at 1e5 snapshots).  Diagonal: the Laplace variances, at most 1.
        inverse_mass = None
        if warm_inverse is not None:
            inverse_mass = jnp.asarray(warm_inverse)
        elif dense and (config.laplace_metric or fixed):  # a fixed metric is always the Laplace covariance
            inverse_mass = laplace_covariance(potential, init_unconstrained, hessian=hessian)
        elif config.laplace_metric:
            inverse_mass = ravel_pytree(jax.tree_util.tree_map(lambda v: jnp.clip(v, 1e-8, 1.0) ** 2, sd))[0]
        kernel = nuts(model, target_accept_prob=config.target_accept, inverse_mass_matrix=inverse_mass,
                      max_tree_depth=config.max_tree_depth, dense_mass=dense, adapt_mass_matrix=not fixed)
        run_args = sample_args
    fields = ("diverging", "num_steps", "accept_prob", "energy", "potential_energy", "adapt_state.step_size")
    site_parts, extra_parts, states = [], [], []
    first = 0
    # More chains than devices: rounds of device-parallel chains (numpyro alone would run
    # them all one after another); one MCMC object per round size, so compilation is reused.
    samplers = {}
    # Sharded data: every device holds part of every chain's likelihood, so chains run in turn,
    # with the data passed as traced arguments (jit_model_args) so that their sharding is kept.
    rounds = chain_plan(config.chains, jax.local_device_count(), jax.default_backend(), config.chain_method,
                        sharded)

    def round_args(first_r, n_round):  # the model's arguments for a round's chains: a whitened round of several
        # takes each chain's own whitening from its chain method (_ReusedPmap's rows, set_rows)
        return (centres[first_r], chols[first_r]) if whiten and n_round == 1 else run_args

    def set_rows(mcmc, first_r, n_round):
        if whiten and n_round > 1:
            mcmc.chain_method.rows = (centres[first_r:first_r + n_round], chols[first_r:first_r + n_round])

    def collect(mcmc, first_r, n_round):  # one round's draws (the model's sites) and extra fields, as numpy arrays
        samples = mcmc.get_samples(group_by_chain=True)
        if whiten:  # back to the model's sites: theta = theta_c + L_c u, constrained
            samples = unwhiten(samples["u"], centres[first_r:first_r + n_round], chols[first_r:first_r + n_round])
        extra = {k.replace("adapt_state.", ""): np.asarray(v)  # step_size: the adapted step of each draw
                 for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
        return {k: np.asarray(v) for k, v in samples.items()}, extra

    for round_key, (n_round, method) in zip(jax.random.split(run_key, len(rounds)), rounds):
        if n_round not in samplers:
            # whitened chains read their own whitening from their state (jit_model_args), as sharded data are kept
            samplers[n_round] = MCMC(kernel, num_warmup=config.warmup, num_samples=config.draws,
                                     num_chains=n_round, chain_method=method,
                                     progress_bar=False, jit_model_args=sharded or whiten)
            # Set after construction (the constructor would warn about a callable chain method).
            if whiten and n_round > 1:  # each chain its own whitening: on devices, or vectorised
                samplers[n_round].chain_method = _ReusedPmap(samplers[n_round], per_chain=2,
                                                             transform=jax.vmap if method == "vectorized" else None)
            elif method == "parallel":
                samplers[n_round].chain_method = _ReusedPmap(samplers[n_round])
        mcmc = samplers[n_round]
        init_round = jax.tree_util.tree_map(lambda leaf: leaf[first:first + n_round], init_params)
        if n_round == 1:
            init_round = jax.tree_util.tree_map(lambda leaf: leaf[0], init_round)
        set_rows(mcmc, first, n_round)
        with bar(_round_label(first, n_round, config.chains), config.warmup + config.draws, config.progress):
            mcmc.run(round_key, *round_args(first, n_round), init_params=init_round, extra_fields=fields)
            jax.block_until_ready(mcmc.last_state)  # every tick reported while the round's bar is open
        sites_r, extra_r = collect(mcmc, first, n_round)
        site_parts.append(sites_r)
        extra_parts.append(extra_r)
        states.append(mcmc.last_state)
        first += n_round
    continuations = np.zeros(config.chains, np.int64)
    firsts = np.cumsum([0] + [n for n, _ in rounds])  # each round's first chain

    def assembled():
        sites = {k: np.concatenate([part[k] for part in site_parts]) for k in site_parts[0]}
        extra = {k: np.concatenate([part[k] for part in extra_parts]) for k in extra_parts[0]}
        extra["tree_depth"] = np.ceil(np.log2(extra["num_steps"] + 1.0)).astype(np.int64)
        extra["metric"] = np.asarray(metric)  # resolved_metric's name
        extra["likelihood_precision"] = np.asarray(precision)
        if precision_sd is not None:  # sd of the float32 likelihood's gap over the Laplace draws
            extra["likelihood_precision_gap"] = np.asarray(precision_sd)
        if map_energies is not None:
            extra["map_potential_energies"] = map_energies  # (starts,), one per MAP search
            extra["map_optima"] = optima  # (starts, P): their optima, flat and unconstrained
        if picks is not None:
            extra["start_optima"] = np.asarray(picks)  # (chains,): the MAP search each chain started at
        if warm is not None:
            extra["warm_start"] = np.asarray(True)  # started at another posterior's draws (no MAP search)
        if whitening_decrements is not None:  # each distinct optimum's half Newton decrement left (chain_whitening)
            extra["whitening_newton_decrement"] = np.asarray(whitening_decrements, np.float64)
        if config.extend > 0:
            extra["continuations"] = continuations.copy()
        return PosteriorSamples(weights=sites["weights"], means=sites["means"], cov_chol=sites["cov_chol"],
                                sites=sites, sample_stats=extra, wall_time=time.perf_counter() - start)

    post = assembled()
    for _ in range(config.extend if drifting is not None else 0):
        flagged = {int(c) for c in drifting(post)}
        if not flagged:
            break
        for r, (n_round, _method) in enumerate(rounds):
            chains_r = range(firsts[r], firsts[r] + n_round)
            if not flagged.intersection(chains_r):
                continue
            mcmc = samplers[n_round]
            mcmc.post_warmup_state = states[r]  # no warmup: on from the last draw, adaptation kept
            done = config.warmup + config.draws * (1 + int(continuations[firsts[r]]))  # the chains' iterations
            set_rows(mcmc, firsts[r], n_round)
            with bar(_round_label(firsts[r], n_round, config.chains, "more draws: "), done + config.draws,
                     config.progress, initial=done):
                mcmc.run(states[r].rng_key, *round_args(firsts[r], n_round), extra_fields=fields)
                jax.block_until_ready(mcmc.last_state)
            mcmc.post_warmup_state = None
            site_parts[r], extra_parts[r] = collect(mcmc, firsts[r], n_round)
            states[r] = mcmc.last_state
            continuations[list(chains_r)] += 1
        post = assembled()
    if cells is None or (merged is cells and dtype == np.float64):  # the cells themselves, in float64
        if ladder_table is None:
            return post
        return post._replace(sample_stats=dict(post.sample_stats,
                                               likelihood_ladder=np.asarray(ladder_table, np.float64)))
    # the gap D = loglik_cells - loglik_merged (in its precision) at every draw: its sd bounds how far any posterior
    # mean moved
    gaps = _coreset.loglik_gaps(cells, merged, *post.flat(), dtype=dtype).reshape(post.weights.shape[:2])
    checked = choose or warm_cells or (config.likelihood_precision == "auto" and dtype == np.float32)
    if checked and not np.std(gaps) <= 2 * _coreset.GAP_SD:  # misjudged: the cells themselves, in float64
        post = run_nuts(key, points, counts, prior, init, config._replace(likelihood_cells=len(cells.points),
                                                                          likelihood_precision="float64"),
                        point_covariances=point_covariances, drifting=drifting, warm=warm, map_from=map_from,
                        known=known)
        stats = dict(post.sample_stats, likelihood_rejected=np.asarray([len(merged.points), np.std(gaps)]))
        if ladder_table is not None:
            stats["likelihood_ladder"] = np.asarray(ladder_table, np.float64)
        return post._replace(sample_stats=stats, wall_time=time.perf_counter() - start)
    # the potential (lp in posterior.nc) on the cells' scale, as the MAP searches' are: U_cells = U_merged - D
    # ("energy", the Hamiltonian NUTS conserved, stays the merged one's: BFMI is about the chains' moves)
    stats = dict(post.sample_stats, likelihood_cells=np.asarray(len(merged.points)), likelihood_gap=gaps,
                 potential_energy=post.sample_stats["potential_energy"] - gaps)
    if ladder_table is not None:
        stats["likelihood_ladder"] = np.asarray(ladder_table, np.float64)  # (cells, sd of the gap) tried
    return post._replace(sample_stats=stats, wall_time=time.perf_counter() - start)
