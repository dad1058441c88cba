"""Choosing K by PSIS-LOO: three well-separated clusters make K = 3 beat K = 1 by many standard errors."""
import jax
import numpy as np
import pytest

import kgmm_bayes  # noqa: F401
from kgmm_bayes.data import ZScore
from kgmm_bayes.bayes.diagnostics import to_inference_data
from kgmm_bayes.partition import fit_partition
from kgmm_bayes.bayes.sampler import SamplerConfig, build_prior, initial_values, run_nuts
from kgmm_bayes.bayes.selection import select_components


def _posterior(z, zs, k):
    part = fit_partition(jax.random.key(0), z, num_cells=150, num_components=k)
    prior = build_prior(part, dirichlet_alpha=5.0, mean_scale=0.25, scale_prior=1.0, lkj_eta=2.0)
    post = run_nuts(jax.random.key(k), part.points, part.counts, prior, initial_values(part),
                    SamplerConfig(chains=2, warmup=100, draws=100, map_starts=2, map_steps=300),
                    point_covariances=part.cell_covariances)
    return part, to_inference_data(post, zs, part.points, part.counts, point_covariances=part.cell_covariances)


def test_loo_prefers_the_true_number_of_components():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-4.0, 0.5, 1000), rng.normal(0.0, 0.5, 1000), rng.normal(4.0, 0.5, 1000)])[:, None]
    zs = ZScore.fit(x)
    z = zs.forward(x)
    candidates = {}
    for k in (1, 3):
        part, candidates[k] = _posterior(z, zs, k)
    selection = select_components(candidates)
    assert selection.best == 3
    # a single Gaussian cannot fit three separated clusters: the gap is many standard errors wide
    gap = selection.elpd_loo[3] - selection.elpd_loo[1]
    assert gap > 5 * float(selection.table.loc["K=1", "dse"])
    assert list(selection.table.index) == ["K=3", "K=1"]
    assert set(selection.high_pareto_k) == {1, 3}
    assert all(0 <= v <= len(part.points) for v in selection.high_pareto_k.values())
    assert selection.to_json()["best"] == 3

    # a posterior stored without log-likelihood terms is refused, naming the candidate
    candidates[1] = candidates[1].copy()
    del candidates[1].log_likelihood
    with pytest.raises(ValueError, match="K=1"):
        select_components(candidates)


def test_study_picks_k_by_loo_and_continues_with_it(tmp_path, monkeypatch):
    """``[mixture] select_components``: the study fits each candidate, keeps the best, and builds the
    reduced-order model with it; the comparison is written and reported.  With ``kept_posterior = "laplace"`` the
    candidates are still sampled by NUTS (PSIS-LOO's ratios are against the posterior, not an approximation)."""
    import json

    from kgmm_bayes.study import stages

    sampled = []  # (way, K) of every posterior sampled

    def recording(way, function):
        def wrapped(key, points, counts, prior, init, *args, **kwargs):
            sampled.append((way, len(init["weights"])))
            return function(key, points, counts, prior, init, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(stages, "run_nuts", recording("nuts", stages.run_nuts))
    monkeypatch.setattr(stages, "laplace_posterior", recording("laplace", stages.laplace_posterior))

    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(-4.0, 0.5, 1500), rng.normal(0.0, 0.5, 1500), rng.normal(4.0, 0.5, 1500)])
    x = rng.permutation(x).reshape(6, -1, 1)  # 6 members: the last one is held out as the reference
    settings = {"partition": {"cells": 120}, "mixture": {"components": 2, "select_components": [1, 3]},
                "sampler": {"chains": 2, "warmup": 100, "draws": 100, "map_starts": 2, "map_steps": 300,
                            "kept_posterior": "laplace"},
                "score": {"max_draws": 100}, "interpolant": {"hidden": [16], "steps": 200},
                "langevin": {"particles": 50, "steps": 1000, "burn_in": 100, "thin": 100}}
    result = kgmm_bayes.fit(x, settings=settings, out_dir=str(tmp_path / "run"))
    sel = result.metrics["model_selection"]
    assert sel["best"] == 3 and set(sel["elpd_loo"]) == {"1", "3"}
    assert sampled[:2] == [("nuts", 1), ("nuts", 3)]  # the candidates, then the chosen K's coarsening
    assert all(k == 3 for _, k in sampled[2:]) and len(sampled) > 2
    # each candidate's sampling time, for compare's cost; with the default coarsening the chosen K is sampled again
    assert set(sel["posterior_s"]) == {"1", "3"} and min(sel["posterior_s"].values()) > 0
    assert sel["reused_best"] is False
    assert result.inference_data.posterior.sizes["component"] == 3
    assert result.metrics["partition"]["components"] == 3
    assert (tmp_path / "run" / "model_selection.csv").is_file()
    assert "chosen K = 3" in (tmp_path / "run" / "report.md").read_text()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["model_selection"]["best"] == 3
