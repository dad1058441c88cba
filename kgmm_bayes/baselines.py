r"""Baselines of the Bayesian estimator (DESIGN.md, "The pipeline"; issue 4).

All three work on z-scored snapshots ``z`` ``(n, d)`` and return a
:class:`BaselineFit` whose ``drift_fn(drift_params, x)`` is the estimated score,
usable as the drift of :func:`kgmm_bayes.rom.langevin.simulate_langevin` exactly like
the Bayesian interpolant.

**Classic KGMM** (Giorgini, Bischoff & Souza, arXiv 2503.18054, Sec. 2).  Noisy
copies :math:`\tilde x = \mu + \sigma z` of the data, :math:`z \sim N(0, I)`.  By
Tweedie's formula the score of the smoothed density :math:`p_\sigma = p * N(0, \sigma^2 I)`
and its divergence are conditional moments of the noise,

.. math::

    s_\sigma(\tilde x) = -E[z \mid \tilde x] / \sigma, \qquad
    \nabla\cdot s_\sigma(\tilde x) = (E[|z|^2 \mid \tilde x] - d) / \sigma^2 - |s_\sigma(\tilde x)|^2,

estimated per cell of a bisecting K-means partition built on one noisy draw,
with ``round(1 / min_leaf_probability)`` leaves (the largest leaf is split first,
so every leaf ends near that probability).  Fresh noisy passes are assigned to
the nearest centre and their statistics accumulated until the cluster means of
``z`` change by less than ``tolerance`` (relative Frobenius norm) or after
``max_passes`` passes; the cell centres are the accumulated means of
:math:`\tilde x` (as in the authors' code).  An MLP (:mod:`kgmm_bayes.rom.interpolant`,
the Bayesian estimator's network) is fitted to the targets with counts as weights.

**Denoising score matching** (Vincent 2011): the same MLP trained by Adam on
:math:`E\,|s(\mu + \sigma z) + z/\sigma|^2` with fresh noise every epoch; its
minimiser is the same :math:`s_\sigma`.  With ``ema`` the network kept has the moving average of the
parameters over the training's steps.

**Variational Gaussian mixture**: scikit-learn's ``BayesianGaussianMixture``;
its fitted mixture's score is closed form (:func:`kgmm_bayes.bayes.score.mixture_score`).
"""
from __future__ import annotations

import time
import warnings
from functools import partial
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.cluster import BisectingKMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import pairwise_distances_argmin
from sklearn.mixture import BayesianGaussianMixture

from .bayes.score import coefficient_score, score_coefficients
from .rom.interpolant import MLP, Interpolant, fit_interpolant

__all__ = ["KGMMTargets", "DSMCheckpoint", "BaselineFit", "kgmm_targets", "fit_kgmm", "fit_dsm",
           "fit_sklearn"]


class KGMMTargets(NamedTuple):
    """Classic KGMM score targets at the cell centres (z-scored coordinates)."""

    centres: np.ndarray  # (M, d) accumulated means of the noisy points of each cell
    leaf_centres: np.ndarray  # (M, d) bisecting K-means centres: each noisy point joins the nearest
    score: np.ndarray  # (M, d) -E[z | cell] / sigma
    divergence: np.ndarray  # (M,) (E[|z|^2 | cell] - d) / sigma^2 - |score|^2
    counts: np.ndarray  # (M,) noisy points accumulated in each cell over all passes
    mean_noise: np.ndarray  # (M, d) E[z | cell]
    passes: int
    relative_change: float  # of the cluster means of z over the last pass
    sigma: float


class DSMCheckpoint(NamedTuple):
    epochs: int
    wall_time: float  # training seconds up to this checkpoint (compilation included)
    params: Any
    loss: float  # mean loss over the last epoch


class BaselineFit(NamedTuple):
    """A fitted baseline: the drift for the Langevin model and the cost of each stage."""

    name: str
    drift_fn: Callable  # (drift_params, x (n, d)) -> score (n, d), static under jit
    drift_params: Any
    timings: dict  # stage -> wall seconds
    targets: Optional[KGMMTargets] = None  # classic KGMM only
    checkpoints: tuple = ()  # DSM only: DSMCheckpoint per evaluation point
    mixture: Optional[tuple] = None  # sklearn only: (weights, means, cov_chol), float64
    model: Any = None  # sklearn only: the fitted BayesianGaussianMixture
    info: Optional[dict] = None  # what the fit reports (leaves, passes, iterations, loss)


def _seed(key) -> int:
    return int(jax.random.randint(key, (), 0, 2**31 - 1))


def _check_z(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or len(z) < 2:
        raise ValueError(f"z must be snapshots (n >= 2, d), got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("z holds NaN or infinite values")
    return z


def _positive(name, value):
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")


# --------------------------------------------------------------------------- classic KGMM

def _accumulate(rng, z, centres, sigma, max_passes, tolerance):
    """Noisy passes until the cluster means of z settle: sums of 1, z, |z|^2, x~ per cell.

    Each pass assigns ``z + sigma * noise`` to the nearest centre (scikit-learn's chunked
    BLAS ``pairwise_distances_argmin``) and adds its statistics with ``bincount``.
    """
    k, d = centres.shape
    count, sum_z, sum_z2, sum_x = np.zeros(k), np.zeros((k, d)), np.zeros(k), np.zeros((k, d))
    old_mean, change, passes = np.zeros((k, d)), np.inf, 0
    while passes < max_passes and (passes < 2 or change >= tolerance):
        noise = rng.standard_normal(z.shape)
        x = z + sigma * noise
        label = pairwise_distances_argmin(x, centres)
        count += np.bincount(label, minlength=k)
        sum_z2 += np.bincount(label, weights=np.sum(noise**2, axis=-1), minlength=k)
        for i in range(d):
            sum_z[:, i] += np.bincount(label, weights=noise[:, i], minlength=k)
            sum_x[:, i] += np.bincount(label, weights=x[:, i], minlength=k)
        mean = sum_z / np.maximum(count, 1.0)[:, None]
        change = float(np.linalg.norm(mean - old_mean) / max(np.linalg.norm(mean), 1e-300))
        old_mean, passes = mean, passes + 1
    return (count, sum_z, sum_z2, sum_x), passes, change


def kgmm_targets(key, z, sigma: float = 0.05, min_leaf_probability: float = 1e-3, max_passes: int = 150,
                 tolerance: float = 0.1, num_leaves: Optional[int] = None) -> KGMMTargets:
    """Classic KGMM score and divergence targets of snapshots ``z`` ``(n, d)`` (module docstring).

    ``num_leaves`` overrides ``round(1 / min_leaf_probability)``; at most ``n // 2`` leaves.
    """
    z = _check_z(z)
    _positive("sigma", sigma)
    _positive("tolerance", tolerance)
    if not 0 < min_leaf_probability < 1:
        raise ValueError(f"min_leaf_probability must lie strictly between 0 and 1, got {min_leaf_probability}")
    if int(max_passes) < 1:
        raise ValueError(f"max_passes must be >= 1, got {max_passes}")
    n, d = z.shape
    leaves = int(round(1.0 / min_leaf_probability)) if num_leaves is None else int(num_leaves)
    leaves = max(1, min(leaves, n // 2))
    draw_key, tree_key, pass_key = jax.random.split(key, 3)
    first = z + sigma * np.asarray(jax.random.normal(draw_key, z.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        tree = BisectingKMeans(n_clusters=leaves, bisecting_strategy="largest_cluster", n_init=1,
                               random_state=_seed(tree_key)).fit(first)
    sums, passes, change = _accumulate(np.random.default_rng(_seed(pass_key)), z, tree.cluster_centers_,
                                       float(sigma), int(max_passes), float(tolerance))
    count, sum_z, sum_z2, sum_x = sums
    keep = count > 0
    count, sum_z, sum_z2, sum_x = count[keep], sum_z[keep], sum_z2[keep], sum_x[keep]
    mean_noise = sum_z / count[:, None]
    score = -mean_noise / sigma
    divergence = (sum_z2 / count - d) / sigma**2 - np.sum(score**2, axis=-1)
    return KGMMTargets(centres=sum_x / count[:, None], leaf_centres=tree.cluster_centers_[keep], score=score,
                       divergence=divergence, counts=count,
                       mean_noise=mean_noise, passes=int(passes), relative_change=float(change),
                       sigma=float(sigma))


def fit_kgmm(key, z, sigma: float = 0.05, min_leaf_probability: float = 1e-3, max_passes: int = 150,
             tolerance: float = 0.1, hidden=(128, 64), steps: int = 4000, learning_rate: float = 3e-3,
             progress: bool = False) -> BaselineFit:
    """Classic KGMM: targets by :func:`kgmm_targets`, then the count-weighted MLP interpolant."""
    target_key, train_key = jax.random.split(key)
    start = time.perf_counter()
    targets = kgmm_targets(target_key, z, sigma, min_leaf_probability, max_passes, tolerance)
    clustering = time.perf_counter() - start
    start = time.perf_counter()
    interp = fit_interpolant(train_key, targets.centres, targets.score, targets.counts, hidden, steps,
                             learning_rate, progress=progress)
    training = time.perf_counter() - start
    info = {"leaves": int(len(targets.counts)), "passes": targets.passes,
            "relative_change": targets.relative_change, "final_loss": interp.final_loss}
    return BaselineFit("kgmm", interp.apply_fn(), interp.params, {"clustering": clustering, "training": training},
                       targets=targets, info=info)


# --------------------------------------------------------------------------- denoising score matching

@partial(jax.jit, static_argnums=(0, 4, 5, 7))
def _dsm_epochs(graphdef, carry, epoch_keys, z, batch_size, learning_rate, sigma, ema):
    """One epoch of minibatch Adam on the DSM loss per key of ``epoch_keys``, fresh noise and order every epoch.
    ``carry``: ``(params, opt_state, average)``; ``ema`` > 0: ``average`` is the moving average of the parameters
    over the steps, started at zero (:func:`_ema_debiased`), else ``None``."""
    optimizer = optax.adam(learning_rate)
    n, d = z.shape
    batches = n // batch_size

    def loss_fn(p, noisy, noise):
        pred = nnx.merge(graphdef, p)(noisy)
        return jnp.mean(jnp.sum((pred + noise / sigma) ** 2, axis=-1))

    def batch_step(carry, batch):
        p, state, average = carry
        x, noise = batch
        loss, grads = jax.value_and_grad(loss_fn)(p, x + sigma * noise, noise)
        updates, state = optimizer.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        if ema > 0:
            average = jax.tree_util.tree_map(lambda a, q: ema * a + (1 - ema) * q, average, p)
        return (p, state, average), loss

    def epoch(carry, k):
        order_key, noise_key = jax.random.split(k)
        x = z[jax.random.permutation(order_key, n)[:batches * batch_size]].reshape(batches, batch_size, d)
        noise = jax.random.normal(noise_key, x.shape, x.dtype)
        carry, losses = jax.lax.scan(batch_step, carry, (x, noise))
        return carry, jnp.mean(losses)

    return jax.lax.scan(epoch, carry, epoch_keys)


def _ema_debiased(average, steps: int, decay: float):
    """A moving average started at zero, divided by the weight its terms carry, ``1 - decay^steps``."""
    return jax.tree_util.tree_map(lambda a: a / (1 - decay ** steps), average)


def fit_dsm(key, z, sigma: float = 0.05, hidden=(128, 64), epochs: int = 200, batch_size: int = 512,
            learning_rate: float = 1e-3, checkpoints: int = 1, ema: float = 0.0) -> BaselineFit:
    """Denoising score matching with the interpolant's MLP; networks kept at ``checkpoints``
    evenly spaced epochs (the last at ``epochs``).  ``batch_size`` is capped at ``n``.  Each epoch has its own
    key, whatever the checkpoints: a checkpoint at epoch e is the fit of ``epochs = e``, and keeping checkpoints
    does not change the final fit.

    ``ema`` in (0, 1): the network kept (at checkpoints, and as the fit) has the exponential moving average of the
    parameters over Adam's steps with that decay, bias-corrected, as score-based models are commonly trained
    (Song & Ermon 2020): the parameters themselves wander between epochs (one training on the default study,
    checked every 5 epochs: relative error against the analytic score 0.006-0.17, non-monotone).  0: the
    parameters."""
    z = _check_z(z)
    _positive("sigma", sigma)
    _positive("learning_rate", learning_rate)
    epochs, checkpoints, ema = int(epochs), int(checkpoints), float(ema)
    if epochs < 1 or not 1 <= checkpoints <= epochs:
        raise ValueError(f"need epochs >= 1 and 1 <= checkpoints <= epochs, got {epochs} and {checkpoints}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must be in [0, 1), got {ema}")
    batch_size = min(int(batch_size), len(z))
    d = z.shape[1]
    sizes = (d, *[int(h) for h in hidden], d)
    init_key, train_key = jax.random.split(key)
    graphdef, params = nnx.split(MLP(sizes, rngs=nnx.Rngs(_seed(init_key))))
    opt_state = optax.adam(float(learning_rate)).init(params)
    carry = (params, opt_state, jax.tree_util.tree_map(jnp.zeros_like, params) if ema > 0 else None)
    batches = len(z) // batch_size  # Adam steps per epoch
    z32 = jnp.asarray(z, dtype=jnp.float32)
    per = epochs // checkpoints
    lengths = [per] * (checkpoints - 1) + [epochs - per * (checkpoints - 1)]
    saved, done, elapsed = [], 0, 0.0
    epoch_keys = jax.random.split(train_key, epochs)
    for length in lengths:
        start = time.perf_counter()
        carry, losses = _dsm_epochs(graphdef, carry, epoch_keys[done:done + length], z32, batch_size,
                                    float(learning_rate), jnp.float32(sigma), ema)
        losses = np.asarray(losses)  # waits for the computation
        done += length
        params = _ema_debiased(carry[2], done * batches, ema) if ema > 0 else carry[0]
        jax.block_until_ready(params)
        elapsed += time.perf_counter() - start
        saved.append(DSMCheckpoint(epochs=done, wall_time=elapsed, params=params, loss=float(losses[-1])))
    interp = Interpolant(graphdef=graphdef, params=params, sizes=sizes, final_loss=saved[-1].loss)
    info = {"epochs": epochs, "batch_size": batch_size, "final_loss": saved[-1].loss, "ema": ema}
    return BaselineFit("dsm", interp.apply_fn(), params, {"training": elapsed}, checkpoints=tuple(saved), info=info)


# --------------------------------------------------------------------------- scikit-learn variational mixture

def fit_sklearn(key, z, components: int = 10, max_iter: int = 100) -> BaselineFit:
    """scikit-learn ``BayesianGaussianMixture`` (full covariances, Dirichlet-process weights).

    The mixture is the one scikit-learn evaluates: means ``means_``, covariances
    ``covariances_`` and, as weights, its effective ones (the expected log weights under
    the variational posterior plus its per-component corrections, read off
    ``_estimate_weighted_log_prob`` at each mean), so the score is exactly the gradient of
    ``score_samples`` and the responsibilities are ``predict_proba``'s.
    """
    z = _check_z(z)
    if int(components) < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        bgm = BayesianGaussianMixture(n_components=min(int(components), len(z)), covariance_type="full",
                                      max_iter=int(max_iter), random_state=_seed(key)).fit(z)
    fitting = time.perf_counter() - start
    means = np.asarray(bgm.means_, dtype=np.float64)
    cov_chol = np.linalg.cholesky(bgm.covariances_)
    d = means.shape[1]
    log_norm_at_mean = -0.5 * d * np.log(2 * np.pi) - np.sum(np.log(np.diagonal(cov_chol, axis1=1, axis2=2)), axis=1)
    log_weights = np.diagonal(bgm._estimate_weighted_log_prob(means)) - log_norm_at_mean
    weights = np.exp(log_weights - log_weights.max())
    mixture = (weights / weights.sum(), means, cov_chol)
    info = {"components": int(len(bgm.weights_)), "converged": bool(bgm.converged_), "iterations": int(bgm.n_iter_),
            "effective_components": int(np.sum(bgm.weights_ > 1e-3))}
    return BaselineFit("sklearn", coefficient_score, score_coefficients(*mixture, dtype=jnp.float32),
                       {"fitting": fitting}, mixture=mixture, model=bgm, info=info)
