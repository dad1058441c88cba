"""Python entry point for notebooks: the whole pipeline on an array or an ``xarray.DataArray``."""
from __future__ import annotations

from .data.labelled import from_dataarray, is_dataarray
from .result import BayesianKGMM
from .spec import spec_from_dict
from .study.run import run_study

__all__ = ["fit"]


def fit(x, settings: dict | None = None, out_dir: str | None = None, seed: int = 0,
        progress: bool = False, force: bool = False) -> BayesianKGMM:
    """Fit the Bayesian KGMM to snapshots and build its Langevin reduced-order model.

    ``x``: an array ``(n, d)`` or ``(members, n, d)``, or an ``xarray.DataArray`` with a
    time dimension, optionally a member and a variable dimension, in any order (named as
    :mod:`kgmm_bayes.data.labelled` says); its variable coordinate names the variables in
    figures, report and spec.  ``settings`` holds spec sections as a dict, e.g.
    ``{"mixture": {"components": 8}, "sampler": {"draws": 300}}``; ``[data]`` may only set
    ``heldout_fraction`` and ``variables``.  Outputs are written as by ``kgmm-bayes run``
    into ``out_dir`` (default ``kgmm-runs/<name>``).
    """
    settings = {name: dict(section) if isinstance(section, dict) else section
                for name, section in dict(settings or {}).items()}
    if is_dataarray(x):
        x, names = from_dataarray(x)
        data = settings.setdefault("data", {})
        if names and isinstance(data, dict) and "variables" not in data:
            data["variables"] = list(names)
    spec = spec_from_dict(settings, default_name="array", data_given=True)
    return run_study(spec, out_dir=out_dir, seed=seed, progress=progress, force=force, data=x)
