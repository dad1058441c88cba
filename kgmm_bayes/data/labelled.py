"""Labelled data in and out: trajectories as ``xarray.DataArray`` with named dimensions.

A trajectory is read from its dimension names, in any order: one time dimension, at most
one member dimension (independent runs), at most one variable dimension (whose coordinate
values, if any, name the variables).  Names are matched case-insensitively against
:data:`TIME_DIMS` and :data:`MEMBER_DIMS`; any other single dimension is the variable one.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["TIME_DIMS", "MEMBER_DIMS", "is_dataarray", "from_dataarray", "variable_names"]

TIME_DIMS = ("time", "t", "snapshot", "snapshots", "sample", "samples", "step", "steps")
MEMBER_DIMS = ("member", "members", "ensemble", "realization", "realisation", "run", "runs", "trajectory")


def is_dataarray(x) -> bool:
    """Whether ``x`` is an ``xarray.DataArray`` (without importing xarray for plain arrays)."""
    return type(x).__module__.startswith("xarray") and type(x).__name__ == "DataArray"


def from_dataarray(da):
    """``(values (members, n, d) or (n, d), variable names or ())`` of a trajectory DataArray."""
    dims = [str(d) for d in da.dims]
    time = [d for d in dims if d.lower() in TIME_DIMS]
    member = [d for d in dims if d.lower() in MEMBER_DIMS]
    other = [d for d in dims if d not in time + member]
    if len(time) != 1 or len(member) > 1 or len(other) > 1:
        raise InputError(f"data DataArray has dimensions {tuple(dims)}: expected one time dimension "
                         f"(named one of {TIME_DIMS}), at most one member dimension (one of {MEMBER_DIMS}) "
                         "and at most one variable dimension")
    order = member + time + other
    values = np.asarray(da.transpose(*order).values)
    if other:
        var = other[0]
        names = (tuple(str(v) for v in da.coords[var].values) if var in da.coords
                 else tuple(f"{var}{i}" for i in range(da.sizes[var])))
    else:
        values = values[..., None]
        names = (str(da.name),) if da.name is not None else ()
    return values, names


def variable_names(given, d: int) -> tuple:
    """The variables' names: ``given`` (checked against ``d``), or ``x0 .. x{d-1}``."""
    if not given:
        return tuple(f"x{i}" for i in range(d))
    if len(given) != d:
        raise InputError(f"[data] variables names {len(given)} variables, the data have {d}")
    return tuple(given)
