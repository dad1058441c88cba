"""Work split over the local devices (on CPU, the host devices ``kgmm_bayes`` makes: one per core)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def over_devices(batched):
    """``batched`` (a function of a pytree with a leading batch axis and of ``args``, the same for every entry) as
    ``run(tree, args)``: the batch split over the local devices, at most one per entry (``pmap``; padded with copies
    of the last entry to a multiple of their number); one device: ``jit``.  ``args``, and whatever ``batched``
    closes over, is copied to every device: only for data that fit on each (``find_map``'s ``split``).  Its jit
    and pmaps are made once, for every call of ``run``."""
    single, parallel = jax.jit(batched), {}

    def run(tree, args):
        n = jax.tree_util.tree_leaves(tree)[0].shape[0]
        devices = min(jax.local_device_count(), n)
        if devices == 1:
            return single(tree, args)
        per = -(-n // devices)

        def split(leaf):
            padded = jnp.concatenate([leaf, jnp.repeat(leaf[-1:], per * devices - n, axis=0)])
            return padded.reshape((devices, per) + leaf.shape[1:])

        if devices not in parallel:
            parallel[devices] = jax.pmap(batched, in_axes=(0, None), devices=jax.local_devices()[:devices])
        out = parallel[devices](jax.tree_util.tree_map(split, tree), args)
        # gathered to the host and back as plain arrays: no sharding over the devices follows them into the chains
        return jax.tree_util.tree_map(
            lambda leaf: jnp.asarray(np.asarray(leaf).reshape((devices * per,) + leaf.shape[2:])[:n]), out)

    return run
