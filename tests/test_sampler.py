"""NUTS on a small but real mixture posterior: recovery of a known mixture, chains on devices."""
import jax
import numpy as np

import kgmm_bayes  # noqa: F401
from kgmm_bayes.data import ZScore
from kgmm_bayes.diagnostics import convergence_summary, to_inference_data
from kgmm_bayes.partition import fit_partition
from kgmm_bayes.sampler import SamplerConfig, build_prior, initial_values, run_nuts


def test_recovers_two_component_mixture_and_runs_chains_in_parallel():
    assert jax.local_device_count() >= 2  # set by kgmm_bayes before JAX initialises
    rng = np.random.default_rng(0)
    n = 4000
    true_w = np.array([0.3, 0.7])
    labels = rng.random(n) < true_w[0]
    x = np.where(labels, rng.normal(-2.0, 0.5, n), rng.normal(1.0, 0.8, n))[:, None]
    zs = ZScore.fit(x)
    z = zs.forward(x)
    part = fit_partition(jax.random.key(0), z, num_cells=400, num_components=2)
    prior = build_prior(part, dirichlet_alpha=2.0, mean_scale=0.25, scale_prior=1.0, lkj_eta=2.0)
    post = run_nuts(jax.random.key(1), part.points, part.counts, prior, initial_values(part),
                    SamplerConfig(chains=2, warmup=300, draws=300))
    assert post.weights.shape == (2, 300, 2) and post.cov_chol.shape == (2, 300, 2, 1, 1)
    # label-invariant recovery: sorted weights and the component of the smaller weight
    w = np.sort(post.weights.reshape(-1, 2), axis=1)
    post_sd = w.std(axis=0)
    # binomial sampling error of the weight (the coreset keeps the counts of all n points)
    binom_sd = np.sqrt(0.3 * 0.7 / n)
    assert abs(w[:, 0].mean() - 0.3) < 5 * max(post_sd[0], binom_sd)
    np.testing.assert_allclose(post_sd[0], binom_sd, rtol=0.5)
    small = np.argmin(post.weights, axis=-1)
    mu_small = np.take_along_axis(post.means[..., 0], small[..., None], axis=-1)[..., 0]
    sd_small = np.take_along_axis(post.cov_chol[..., 0, 0], small[..., None], axis=-1)[..., 0]
    mu_true = (-2.0 - zs.mean[0]) / zs.std[0]
    sd_true = 0.5 / zs.std[0]
    assert abs(mu_small.mean() - mu_true) < 5 * mu_small.std() + 0.02  # + cell quantisation
    assert abs(sd_small.mean() - sd_true) / sd_true < 0.05
    idata = to_inference_data(post, zs, part.points, part.counts)
    summary = convergence_summary(idata)
    assert summary["divergences"] == 0
    assert summary["max_r_hat"] < 1.05 and summary["min_ess_bulk"] > 100
    for name in ("weights", "means", "cov_chol", "probe_log_density", "probe_score", "sorted_weights"):
        assert name in idata.posterior
    np.testing.assert_allclose(idata.constant_data["zscore_std"].values, zs.std)
