"""Neural interpolant of the score (DESIGN.md, "Interpolant").

A flax (nnx) MLP with swish activations, trained with optax Adam on a cosine
schedule to minimise the count-weighted squared error

    L(theta) = sum_m c_m |f_theta(x_m) - s_m|^2 / sum_m c_m

between the network and the posterior-mean score targets ``s_m`` at the
score-target points ``x_m``.  Training is full batch inside one ``lax.scan``.
Parameters are saved as a ``.npz`` of plain arrays (no pickle) with the
layer sizes, and loaded with ``allow_pickle=False``.
"""
from __future__ import annotations

import functools
import os
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ..files import atomic_write_bytes, npz_bytes
from ..progress import bar, tick

__all__ = ["MLP", "Interpolant", "fit_interpolant", "fit_interpolant_ensemble", "save_interpolant",
           "load_interpolant", "interpolant_arrays", "interpolant_from_arrays"]


class MLP(nnx.Module):
    """``sizes[0] -> hidden... -> sizes[-1]`` with swish between layers."""

    def __init__(self, sizes, *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = nnx.swish(layer(x))
        return self.layers[-1](x)


class Interpolant(NamedTuple):
    """A trained MLP as (graph definition, parameters); callable on ``(n, d)`` points."""

    graphdef: Any
    params: Any
    sizes: tuple
    final_loss: float

    def __call__(self, x):
        return _jitted_apply(self.graphdef)(self.params, x)  # compiled: op by op, each layer compiled its own programs

    def apply_fn(self):
        """A pure function ``(params, x) -> score`` for use inside ``jit``/``scan``.

        The same function object is returned for equal graph definitions, so jitted
        consumers that take it as a static argument compile once.
        """
        return _apply_fn(self.graphdef)


@functools.lru_cache(maxsize=32)
def _apply_fn(graphdef):
    return lambda params, x: nnx.merge(graphdef, params)(x)


@functools.lru_cache(maxsize=32)
def _jitted_apply(graphdef):
    return jax.jit(_apply_fn(graphdef))


def _init(key, sizes):
    """A new MLP's (graph definition, parameters); the parameters drawn in one compiled program (op by op, each
    layer's draws compiled their own: 0.8 s on a cold start)."""
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    sizes = tuple(int(s) for s in sizes)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: MLP(sizes, rngs=nnx.Rngs(0))))
    return graphdef, _init_params(sizes)(jax.random.key(seed))


@functools.lru_cache(maxsize=32)
def _init_params(sizes):
    return jax.jit(lambda key: nnx.state(MLP(sizes, rngs=nnx.Rngs(key))))


def _train_loop(graphdef, params, x, y, weights, steps, learning_rate, progress, batch=0, batch_key=None,
                cdf=None):
    """The traced training loop of one MLP (jitted by :func:`_train`, vmapped by the ensemble).

    ``batch`` 0: full batch, the loss weighted by ``weights``.  Otherwise each step draws ``batch``
    points with probabilities ``weights / sum(weights)`` (with replacement, the key
    ``fold_in(batch_key, step)``) and takes their plain mean: the same loss in expectation.  ``cdf``:
    the weights' normalised running sum, made on the host in float64 (:func:`_batch_cdf`), so it never
    decreases and a point of weight 0 is never drawn.
    """
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.01))
    weights = weights / jnp.sum(weights)

    def loss_fn(p, i):
        if not batch:
            pred = nnx.merge(graphdef, p)(x)
            return jnp.sum(weights * jnp.sum((pred - y) ** 2, axis=-1))
        u = jax.random.uniform(jax.random.fold_in(batch_key, i), (batch,), dtype=cdf.dtype)  # [0, 1)
        idx = jnp.minimum(jnp.searchsorted(cdf, u, side="right"), x.shape[0] - 1)
        pred = nnx.merge(graphdef, p)(x[idx])
        return jnp.mean(jnp.sum((pred - y[idx]) ** 2, axis=-1))

    def step(carry, i):
        p, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(p, i)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        if progress:
            tick(i + 1, max(1, steps // 100))
        return (optax.apply_updates(p, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), jnp.arange(steps))
    return params, losses


_train = partial(jax.jit, static_argnums=(0, 5, 6, 7, 8))(_train_loop)


# S MLPs in one optax loop: parameters, targets and weights batched, points shared
_train_ensemble = partial(jax.jit, static_argnums=(0, 5, 6))(
    lambda graphdef, params, x, y, weights, steps, learning_rate: jax.vmap(
        lambda p, t, w: _train_loop(graphdef, p, x, t, w, steps, learning_rate, False))(params, y, weights))


FINAL_LOSS_CHUNK = 65536  # points per forward pass of the batched fit's final loss


def _batch_cdf(weights) -> np.ndarray:
    """``cumsum(w) / sum(w)`` in float64 (the package runs JAX with float64), last entry exactly 1:
    non-decreasing, flat over weight-0 points, and a weight of 1e-7 of the total still drawn with
    about its probability (float32 would round it by up to a quarter)."""
    cdf = np.cumsum(np.asarray(weights, np.float64))
    return cdf / cdf[-1]


def fit_interpolant(key, points, targets, weights, hidden=(128, 64), steps: int = 3000,
                    learning_rate: float = 3e-3, progress: bool = False, batch: int = 0) -> Interpolant:
    """Fit the MLP to ``targets`` ``(M, d)`` at ``points`` ``(M, d)`` with ``weights`` ``(M,)``.

    ``batch``: with more than this many points, each Adam step uses ``batch`` points drawn in
    proportion to ``weights`` (the key split into the network's and the batches'); 0 or
    ``M <= batch``: full batch, the network drawn from ``key`` itself.
    """
    points = jnp.asarray(points, dtype=jnp.float32)
    targets = jnp.asarray(targets, dtype=jnp.float32)
    weights = jnp.asarray(weights, dtype=jnp.float32)
    d = points.shape[-1]
    sizes = (d, *[int(h) for h in hidden], targets.shape[-1])
    batch = int(batch) if 0 < int(batch) < points.shape[0] else 0
    batch_key = cdf = None
    if batch:
        key, batch_key = jax.random.split(key)
        cdf = jnp.asarray(_batch_cdf(weights))
    graphdef, params = _init(key, sizes)
    with bar("training interpolant", int(steps), progress):
        params, losses = _train(graphdef, params, points, targets, weights, int(steps), float(learning_rate),
                                bool(progress), batch, batch_key, cdf)
    final = float(losses[-1])
    if batch:  # the last batch's loss is noisy: the weighted loss over every point instead (in chunks)
        net, total = nnx.merge(graphdef, params), 0.0
        for i in range(0, points.shape[0], FINAL_LOSS_CHUNK):
            pred = net(points[i:i + FINAL_LOSS_CHUNK])
            total += float(jnp.sum(weights[i:i + FINAL_LOSS_CHUNK]
                                   * jnp.sum((pred - targets[i:i + FINAL_LOSS_CHUNK]) ** 2, axis=-1)))
        final = total / float(jnp.sum(weights))
    return Interpolant(graphdef=graphdef, params=params, sizes=sizes, final_loss=final)


def fit_interpolant_ensemble(keys, points, targets, weights, hidden=(128, 64), steps: int = 3000,
                             learning_rate: float = 3e-3):
    """Fit S MLPs together, member ``s`` to ``targets[s]`` ``(M, d)`` with ``weights[s]`` ``(M,)``.

    ``keys`` ``(S,)``: member ``s`` starts from the parameters :func:`fit_interpolant`
    draws with ``keys[s]`` and follows the same full-batch Adam steps, all members in
    one ``lax.scan`` (``vmap`` over parameters), so it equals a separate fit with that
    key to float tolerance.  ``weights`` may be ``(M,)``, shared by all members.
    Returns ``(interpolant, final_losses (S,))``: one :class:`Interpolant` whose
    ``params`` carry a leading member axis (apply it member by member with ``jax.vmap``
    over ``interpolant.apply_fn()``).
    """
    points = jnp.asarray(points, dtype=jnp.float32)
    targets = jnp.asarray(targets, dtype=jnp.float32)
    members = targets.shape[0]
    weights = jnp.broadcast_to(jnp.asarray(weights, dtype=jnp.float32), targets.shape[:2])
    if len(keys) != members:
        raise ValueError(f"fit_interpolant_ensemble: {len(keys)} keys for {members} members")
    d = points.shape[-1]
    sizes = (d, *[int(h) for h in hidden], targets.shape[-1])
    inits = [_init(k, sizes) for k in keys]
    graphdef = inits[0][0]
    params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[p for _, p in inits])
    params, losses = _train_ensemble(graphdef, params, points, targets, weights, int(steps), float(learning_rate))
    final = np.asarray(losses[:, -1], dtype=np.float64)
    return Interpolant(graphdef=graphdef, params=params, sizes=sizes, final_loss=float(np.median(final))), final


def _flat_params(params) -> dict:
    pure = nnx.to_pure_dict(params)
    return {f"layer{i}_{name}": np.asarray(arr)
            for i, layer in pure["layers"].items() for name, arr in layer.items()}


def interpolant_arrays(interpolant: Interpolant) -> dict:
    """Sizes and parameters as plain arrays (what :func:`save_interpolant` writes)."""
    arrays = _flat_params(interpolant.params)
    arrays["sizes"] = np.asarray(interpolant.sizes, dtype=np.int64)
    arrays["final_loss"] = np.asarray(interpolant.final_loss)
    return arrays


def interpolant_from_arrays(arrays: dict, source: str = "interpolant") -> Interpolant:
    """The interpolant of :func:`interpolant_arrays`; ``ValueError`` naming ``source`` when the arrays do
    not describe one (missing layers, wrong shapes or sizes)."""
    try:
        sizes = tuple(int(s) for s in np.asarray(arrays["sizes"]).ravel())
        final_loss = float(arrays["final_loss"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{source}: no valid 'sizes'/'final_loss' ({err})") from None
    if len(sizes) < 2 or min(sizes) < 1 or max(sizes) > 1 << 16:
        raise ValueError(f"{source}: invalid layer sizes {sizes}")
    graphdef, params = _init(jax.random.key(0), sizes)
    pure = nnx.to_pure_dict(params)
    for i, layer in pure["layers"].items():
        for name in layer:
            stored = arrays.get(f"layer{i}_{name}")
            if stored is None:
                raise ValueError(f"{source}: layer {i} {name} is missing")
            if stored.shape != layer[name].shape or not np.issubdtype(stored.dtype, np.floating):
                raise ValueError(f"{source}: layer {i} {name} has shape {stored.shape} ({stored.dtype}), "
                                 f"expected {layer[name].shape}")
            layer[name] = jnp.asarray(stored)
    nnx.replace_by_pure_dict(params, pure)
    return Interpolant(graphdef=graphdef, params=params, sizes=sizes, final_loss=final_loss)


def save_interpolant(path, interpolant: Interpolant) -> None:
    """Write sizes and parameters as plain arrays to ``path`` (``.npz``)."""
    atomic_write_bytes(os.fspath(path), npz_bytes(interpolant_arrays(interpolant)))  # never half a file


def load_interpolant(path) -> Interpolant:
    """Read an interpolant written by :func:`save_interpolant` (never unpickles)."""
    with np.load(os.fspath(path), allow_pickle=False) as f:
        arrays = {name: f[name] for name in f.files}
    return interpolant_from_arrays(arrays, f"interpolant file {path}")
