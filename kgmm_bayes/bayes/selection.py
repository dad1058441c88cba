r"""Choosing the number of mixture components K by PSIS-LOO (arviz).

For each candidate K the posterior's pointwise log-likelihood terms
``c_m log p(x_m | theta)`` (one per weighted point: a coreset cell or a snapshot,
see :func:`kgmm_bayes.bayes.diagnostics.pointwise_log_likelihood`) give the
Pareto-smoothed importance-sampling estimate of the expected log predictive
density of leaving one point out,

.. math::

    \widehat{\mathrm{elpd}}_{\mathrm{loo}} = \sum_m \log
    \frac{\sum_s w_m^{(s)} p(x_m \mid \theta_s)^{c_m}}{\sum_s w_m^{(s)}},

with smoothed weights ``w``.  On a coreset a "point" is a whole cell of ``c_m``
snapshots, so this is leave-one-cell-out; all candidates share the same cells,
so their estimates are comparable.  The candidate with the highest estimate is
chosen; Pareto ``k > 0.7`` at any point means the estimate is unreliable there,
which is counted and reported rather than hidden.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import arviz as az
import numpy as np

__all__ = ["ComponentSelection", "select_components", "PARETO_K_LIMIT"]

PARETO_K_LIMIT = 0.7


class ComponentSelection(NamedTuple):
    best: int  # the chosen K
    table: object  # az.compare's DataFrame, indexed "K=<k>"
    elpd_loo: dict  # K -> estimate
    se: dict  # K -> standard error of the estimate
    high_pareto_k: dict  # K -> number of points with Pareto k > PARETO_K_LIMIT
    warnings: list
    # K -> seconds its posterior took to sample (its first run's, when read back from the stage cache); set by the
    # study, which also says whether the chosen K's posterior was reused as the study's own
    posterior_s: dict | None = None
    reused_best: bool = False

    def to_json(self) -> dict:
        out = {"best": int(self.best), "elpd_loo": {str(k): float(v) for k, v in self.elpd_loo.items()},
               "se": {str(k): float(v) for k, v in self.se.items()},
               "high_pareto_k": {str(k): int(v) for k, v in self.high_pareto_k.items()},
               "warnings": list(self.warnings)}
        if self.posterior_s is not None:
            out.update(posterior_s={str(k): float(v) for k, v in self.posterior_s.items()},
                       reused_best=bool(self.reused_best))
        return out


def select_components(idatas: dict) -> ComponentSelection:
    """PSIS-LOO of each candidate's posterior (``{K: InferenceData with log_likelihood}``); best K."""
    if len(idatas) < 1:
        raise ValueError("select_components needs at least one candidate posterior")
    for k, idata in idatas.items():
        if "log_likelihood" not in idata.groups():
            raise ValueError(f"the posterior for K={k} has no log_likelihood group (coreset = false?)")
    elpd, se, high, notes = {}, {}, {}, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, idata in idatas.items():
            loo = az.loo(idata, pointwise=True)
            elpd[k], se[k] = float(loo.elpd_loo), float(loo.se)
            pareto = np.asarray(loo.pareto_k)
            high[k] = int(np.sum(pareto > PARETO_K_LIMIT))
            if high[k]:
                notes.append(f"K={k}: {high[k]} of {pareto.size} points have Pareto k > {PARETO_K_LIMIT}; "
                             "PSIS-LOO is unreliable there")
        table = az.compare({f"K={k}": idata for k, idata in idatas.items()}, ic="loo") if len(idatas) > 1 else None
    best = max(elpd, key=elpd.get)
    return ComponentSelection(best=int(best), table=table, elpd_loo=elpd, se=se, high_pareto_k=high, warnings=notes)
