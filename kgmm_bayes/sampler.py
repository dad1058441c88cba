"""NUTS sampling of the Bayesian mixture, started from the partition.

Chains run in parallel across host devices when there are enough of them
(``kgmm_bayes`` sets the host device count to the number of CPU cores before
JAX initialises), and one after another otherwise.  Every chain starts at the
partition (centroids, cluster spreads and correlations, cluster fractions)
with a small independent jitter in unconstrained space, so that the
between-chain diagnostics mean something.
"""
from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import unconstrain_fn

from .mixture import MixturePrior, expected_quadratic_features, mixture_model, quadratic_features
from .partition import Partition

__all__ = ["SamplerConfig", "PosteriorSamples", "build_prior", "initial_values", "run_nuts"]


class SamplerConfig(NamedTuple):
    chains: int = 2
    warmup: int = 500
    draws: int = 500
    target_accept: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    init_jitter: float = 0.05
    progress: bool = False


class PosteriorSamples(NamedTuple):
    """Posterior draws with leading ``(chain, draw)`` axes, z-scored coordinates."""

    weights: np.ndarray  # (C, S, K)
    means: np.ndarray  # (C, S, K, d)
    cov_chol: np.ndarray  # (C, S, K, d, d)
    sites: dict  # every sampled site, by name
    sample_stats: dict  # diverging, num_steps, tree_depth, accept_prob, energy, potential_energy
    wall_time: float

    @property
    def num_chains(self) -> int:
        return self.weights.shape[0]

    def flat(self):
        """``(weights, means, cov_chol)`` with chains and draws merged into one axis."""
        def merge(a):
            return a.reshape((-1,) + a.shape[2:])
        return merge(self.weights), merge(self.means), merge(self.cov_chol)


def build_prior(partition: Partition, dirichlet_alpha: float, mean_scale: float,
                scale_prior: float, lkj_eta: float) -> MixturePrior:
    """Priors centred on the partition; means scaled by ``mean_scale`` x cluster spread."""
    return MixturePrior(centroids=jnp.asarray(partition.centroids),
                        mean_scales=jnp.asarray(mean_scale * partition.spreads),
                        dirichlet_alpha=float(dirichlet_alpha), scale_prior=float(scale_prior),
                        lkj_eta=float(lkj_eta))


def initial_values(partition: Partition) -> dict:
    """Constrained initial values of the sampled sites, read off the partition."""
    cov = partition.covariances
    spreads = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    init = {"weights": partition.fractions, "means": partition.centroids, "scales": spreads}
    if cov.shape[-1] > 1:
        corr = cov / (spreads[:, :, None] * spreads[:, None, :])
        init["corr_chol"] = np.linalg.cholesky(corr)
    return {name: jnp.asarray(value) for name, value in init.items()}


def _chain_method(chains: int) -> str:
    return "parallel" if chains <= jax.local_device_count() else "sequential"


def run_nuts(key, points, counts, prior: MixturePrior, init: dict, config: SamplerConfig,
             point_covariances=None) -> PosteriorSamples:
    """Sample the mixture posterior with NUTS on weighted points ``(M, d)``.

    With ``point_covariances`` ``(M, d, d)`` the points are cells (a coreset) entering
    through their means and within-cell covariances (:func:`expected_quadratic_features`).
    """
    if point_covariances is None:
        features = quadratic_features(jnp.asarray(points))
    else:
        features = expected_quadratic_features(points, point_covariances)
    counts = jnp.asarray(counts)
    model_args = (features, counts, prior)
    init_unconstrained = unconstrain_fn(mixture_model, model_args, {}, init)
    jitter_key, run_key = jax.random.split(key)
    leaves, treedef = jax.tree_util.tree_flatten(init_unconstrained)
    jitter_keys = jax.random.split(jitter_key, len(leaves))
    init_params = jax.tree_util.tree_unflatten(treedef, [
        leaf[None] + config.init_jitter * jax.random.normal(k, (config.chains,) + leaf.shape, leaf.dtype)
        for leaf, k in zip(leaves, jitter_keys)
    ])
    kernel = NUTS(mixture_model, target_accept_prob=config.target_accept,
                  max_tree_depth=config.max_tree_depth, dense_mass=config.dense_mass)
    mcmc = MCMC(kernel, num_warmup=config.warmup, num_samples=config.draws,
                num_chains=config.chains, chain_method=_chain_method(config.chains),
                progress_bar=config.progress)
    start = time.perf_counter()
    mcmc.run(run_key, *model_args, init_params=init_params,
             extra_fields=("diverging", "num_steps", "accept_prob", "energy", "potential_energy"))
    sites = {name: np.asarray(value) for name, value in mcmc.get_samples(group_by_chain=True).items()}
    wall = time.perf_counter() - start
    extra = {name: np.asarray(value) for name, value in mcmc.get_extra_fields(group_by_chain=True).items()}
    extra["tree_depth"] = np.ceil(np.log2(extra["num_steps"] + 1.0)).astype(np.int64)
    cov_chol = sites["cov_chol"]
    return PosteriorSamples(weights=sites["weights"], means=sites["means"], cov_chol=cov_chol,
                            sites=sites, sample_stats=extra, wall_time=wall)
