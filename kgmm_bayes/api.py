"""Python entry point for notebooks: the whole pipeline on an array."""
from __future__ import annotations

from .result import BayesianKGMM
from .spec import spec_from_dict

__all__ = ["fit"]


def fit(x, settings: dict | None = None, out_dir: str | None = None, seed: int = 0,
        progress: bool = False, force: bool = False) -> BayesianKGMM:
    """Fit the Bayesian KGMM to snapshots ``x`` ``(n, d)`` or ``(members, n, d)`` and build its
    Langevin reduced-order model.

    ``settings`` holds spec sections as a dict, e.g.
    ``{"mixture": {"components": 8}, "sampler": {"draws": 300}}``; ``[data]``
    may only set ``heldout_fraction``.  Outputs are written as by
    ``kgmm-bayes run`` into ``out_dir`` (default ``kgmm-runs/<name>``).
    """
    from .study.run import run_study

    spec = spec_from_dict(dict(settings or {}), default_name="array", data_given=True)
    return run_study(spec, out_dir=out_dir, seed=seed, progress=progress, force=force, data=x)
