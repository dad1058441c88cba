"""What a study checks before it starts: the seed, the user's data, and whether the data can
support the spec's mixture.  NumPy only: bad input fails here, before JAX and before disk."""
from __future__ import annotations

import warnings

from ..data.trajectory import load_trajectory, validate_snapshots
from ..errors import InputError
from ..spec import MAX_SEED, Spec

__all__ = ["check_seed", "load_user_data", "mixture_parameters", "check_sizes", "LARGE_DIMENSION"]

# The largest dimension sampled on 2 CPU cores in a shipped study is 8; the cost of a NUTS gradient grows
# like K d^3 and its compile time steeply with d.
LARGE_DIMENSION = 16


def check_seed(seed) -> int:
    """The seed as an int in ``[0, MAX_SEED]`` (JAX keys take a signed 64-bit seed; derived seeds add to it)."""
    seed = int(seed)
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"--seed must be between 0 and {MAX_SEED} (2**62 - 1), got {seed}")
    return seed


def load_user_data(spec: Spec, array=None):
    """The user's snapshots ``(members, n, d)``, validated with NumPy only; ``None`` for a system."""
    if array is not None:
        return validate_snapshots(array, name="data")
    if spec.data.path is not None:
        return validate_snapshots(load_trajectory(spec.data.path, spec.data.variable),
                                  name=f"data file {spec.data.path!r}")
    return None


def mixture_parameters(k: int, d: int) -> int:
    """Free parameters of a K-component full-covariance Gaussian mixture in d dimensions."""
    return k * (d + d * (d + 1) // 2) + k - 1


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
