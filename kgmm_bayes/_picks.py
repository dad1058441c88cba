"""Evenly spaced picks: the one idiom for thinning draws, snapshots and points deterministically."""

import numpy as np

__all__ = ["evenly_spaced"]


def evenly_spaced(n: int, count: int) -> np.ndarray:
    """Indices of ``min(n, count)`` picks evenly spaced over ``range(n)``, first and last included.

    Ascending and distinct (the step ``(n - 1) / (count - 1)`` is at least 1, so rounding keeps them
    apart); empty when ``n`` or ``count`` is 0.
    """
    count = min(int(n), int(count))
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.linspace(0, int(n) - 1, count).round().astype(np.int64)
