"""The z-score transform every estimator works in.

Every estimator works in z-scored coordinates ``x~ = (x - mean) / std`` (per
coordinate).  Scores transform covariantly: if ``s`` is the score of the
physical density then the score of the z-scored density is

    s~(x~) = std * s(mean + std * x~),

so ``s(x) = s~((x - mean) / std) / std``.  The transform is kept with every
result so outputs can be given in physical units.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["ZScore"]


class ZScore(NamedTuple):
    """Per-coordinate affine transform ``x~ = (x - mean) / std``."""

    mean: np.ndarray  # (d,)
    std: np.ndarray  # (d,)

    @classmethod
    def fit(cls, x: np.ndarray) -> "ZScore":
        x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
        return cls(mean=x.mean(axis=0), std=x.std(axis=0))

    def forward(self, x):
        return (x - self.mean) / self.std

    def inverse(self, z):
        return z * self.std + self.mean

    def score_to_physical(self, score_z):
        """Score in z-scored coordinates -> score in physical coordinates."""
        return score_z / self.std

    def score_to_zscored(self, score_phys):
        return score_phys * self.std
