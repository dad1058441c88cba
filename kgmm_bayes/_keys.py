"""Host-side random draws that follow a JAX key: numpy's generator seeded with the key's bits.

Small draws made outside compiled code (chain starts' jitter, Laplace draws, bootstrap weights) cost no
XLA program this way: run op by op, a JAX normal or Dirichlet draw compiles a program per shape, 0.2-0.5 s
each on a cold start, more than the draws themselves.  The key is still the one split at the boundary, so
the same key gives the same numbers (with the same numpy: NumPy does not promise its generators' streams across
versions, NEP 19, so a study cached under another numpy may not rerun to the same draws).
"""
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["host_rng"]


def host_rng(key) -> np.random.Generator:
    """numpy's generator seeded with the bits of ``key`` (a typed key or a raw ``uint32`` key array)."""
    bits = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return np.random.default_rng(np.asarray(bits, np.uint32).ravel())
