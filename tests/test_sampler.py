"""NUTS on a small but real mixture posterior: recovery of a known mixture, chains on devices."""
import functools

import arviz as az
import jax
import pytest
import numpy as np

import kgmm_bayes  # noqa: F401
from kgmm_bayes.data import ZScore
from kgmm_bayes.bayes.diagnostics import convergence_summary, to_inference_data
from kgmm_bayes.partition import fit_partition
from kgmm_bayes.bayes.sampler import SamplerConfig, build_prior, initial_values, run_nuts


@pytest.mark.parametrize("metric", ["auto", "diagonal"])
def test_recovers_two_component_mixture_and_runs_chains_in_parallel(metric):
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
                    SamplerConfig(chains=2, warmup=300, draws=300, metric=metric))
    assert post.weights.shape == (2, 300, 2) and post.cov_chol.shape == (2, 300, 2, 1, 1)
    assert str(post.sample_stats["metric"]) == {"auto": "dense", "diagonal": "diagonal"}[metric]  # 5 parameters
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
    # per-cell log-likelihood terms: each draw's terms sum to the likelihood the sampler used
    from kgmm_bayes.bayes.mixture import mixture_loglik_dense, quadratic_features

    terms = idata.log_likelihood["cells"].values
    assert terms.shape == (2, 300, len(part.points)) and terms.dtype == np.float32
    for chain, draw in ((0, 0), (1, 299)):
        total = mixture_loglik_dense(quadratic_features(part.points), part.counts, post.weights[chain, draw],
                                     post.means[chain, draw], post.cov_chol[chain, draw])
        assert float(terms[chain, draw].astype(np.float64).sum()) == pytest.approx(float(total), rel=1e-5)
    np.testing.assert_array_equal(idata.observed_data["cells"].values, part.points)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == len(part.points)
    assert len(summary["bfmi_per_chain"]) == 2 and min(summary["bfmi_per_chain"]) > 0.3


def _two_component_problem(n=4000):
    rng = np.random.default_rng(0)
    labels = rng.random(n) < 0.3
    x = np.where(labels, rng.normal(-2.0, 0.5, n), rng.normal(1.0, 0.8, n))[:, None]
    zs = ZScore.fit(x)
    part = fit_partition(jax.random.key(0), zs.forward(x), num_cells=400, num_components=2)
    prior = build_prior(part, dirichlet_alpha=2.0, mean_scale=0.25, scale_prior=1.0, lkj_eta=2.0)
    return zs, part, prior


def test_resolved_metric():
    """``metric = "auto"``: dense where numpyro's last slow warmup window holds DENSE_DRAWS_PER_PARAMETER draws
    per parameter (50 parameters at 500 warmup iterations, whose last slow window is 200 draws; 12 at 200),
    diagonal elsewhere; "dense" becomes whitened coordinates beyond DENSE_ADAPTATION_MAX unless the rows are
    sharded; dense_mass is the old spelling of "dense"."""
    from kgmm_bayes.bayes.sampler import DENSE_ADAPTATION_MAX, DENSE_DRAWS_PER_PARAMETER, last_slow_window, resolved_metric

    assert (last_slow_window(500), last_slow_window(200), last_slow_window(10)) == (200, 50, 0)
    assert DENSE_DRAWS_PER_PARAMETER == 4
    assert resolved_metric("auto", 29, 500) == "dense" and resolved_metric("auto", 50, 500) == "dense"
    assert resolved_metric("auto", 51, 500) == "diagonal" and resolved_metric("auto", 319, 500) == "diagonal"
    assert resolved_metric("auto", 12, 200) == "dense" and resolved_metric("auto", 13, 200) == "diagonal"
    assert resolved_metric("auto", 5, 10) == "diagonal"  # no slow window at all
    assert resolved_metric("diagonal", 29, 500) == "diagonal"
    assert resolved_metric("dense", DENSE_ADAPTATION_MAX, 500) == "dense"
    assert resolved_metric("dense", DENSE_ADAPTATION_MAX + 1, 500) == "whitened"
    assert resolved_metric("dense", DENSE_ADAPTATION_MAX + 1, 500, sharded=True) == "dense"
    assert resolved_metric("auto", 319, 500, dense_mass=True) == "whitened"
    assert resolved_metric("laplace", 29, 500) == "laplace" and resolved_metric("laplace", 319, 500, sharded=True) == "laplace"
    with pytest.raises(ValueError, match="metric must be one of"):
        resolved_metric("Dense", 29, 500)


@pytest.mark.parametrize("metric", ["dense", "laplace"])
def test_whitened_dense_metric_samples_the_same_posterior(metric, monkeypatch):
    """Beyond DENSE_ADAPTATION_MAX parameters the dense metric runs NUTS in Laplace-whitened coordinates
    and maps the draws back; so does the fixed Laplace metric ("laplace", no adaptation but the step size).
    Forced here on a small posterior: every returned draw's potential, recomputed
    from its constrained sites, equals the potential the sampler recorded (an exact identity: the map back
    is right), and the weight is recovered within its binomial error, as with the diagonal metric."""
    from numpyro.infer.util import potential_energy, unconstrain_fn

    import kgmm_bayes.bayes.sampler as sampler
    from kgmm_bayes.bayes.mixture import expected_quadratic_features, mixture_model

    zs, part, prior = _two_component_problem()
    monkeypatch.setattr(sampler, "DENSE_ADAPTATION_MAX", 0)
    post = run_nuts(jax.random.key(1), part.points, part.counts, prior, initial_values(part),
                    SamplerConfig(chains=2, warmup=200, draws=200, metric=metric, likelihood_cells=len(part.points)),
                    point_covariances=part.cell_covariances)  # the cells' own likelihood, not a merge of them
    assert str(post.sample_stats["metric"]) == {"dense": "whitened", "laplace": "laplace"}[metric]
    assert post.weights.shape == (2, 200, 2) and int(post.sample_stats["diverging"].sum()) == 0
    args = (expected_quadratic_features(part.points, part.cell_covariances), jax.numpy.asarray(part.counts), prior)
    for chain, draw in ((0, 0), (1, 123)):
        sites = {k: post.sites[k][chain, draw] for k in ("weights", "means", "scales")}
        energy = potential_energy(mixture_model, args, {}, unconstrain_fn(mixture_model, args, {}, sites))
        assert float(energy) == pytest.approx(float(post.sample_stats["potential_energy"][chain, draw]), rel=1e-10)
    w = np.sort(post.weights.reshape(-1, 2), axis=1)[:, 0]
    assert abs(w.mean() - 0.3) < 5 * max(w.std(), np.sqrt(0.21 / 4000))


@pytest.mark.parametrize("threads", [1, 2])
def test_map_search_polished_by_lbfgs_reaches_a_stationary_point(threads, monkeypatch):
    """Adam's steps find the basin, L-BFGS its optimum: the polished optimum's potential is no higher than
    Adam's alone, and its gradient vanishes (float64); the starts polished one after another or shared among
    threads, with the same optima to the last bit."""
    import kgmm_bayes.bayes.sampler as sampler

    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import potential_energy, unconstrain_fn

    from kgmm_bayes.bayes.mixture import expected_quadratic_features, mixture_model
    from kgmm_bayes.bayes.sampler import find_map

    _, part, prior = _two_component_problem()
    args = (expected_quadratic_features(part.points, part.cell_covariances), jax.numpy.asarray(part.counts), prior)
    init = unconstrain_fn(mixture_model, args, {}, initial_values(part))
    adam_best, adam = find_map(jax.random.key(2), args, init, 4, 30, polish=0)
    monkeypatch.setattr(sampler, "POLISH_THREADS", 1)
    _, alone, alone_all = find_map(jax.random.key(2), args, init, 4, 30, polish=500, return_all=True)
    monkeypatch.setattr(sampler, "POLISH_THREADS", threads)
    best, polished, polished_all = find_map(jax.random.key(2), args, init, 4, 30, polish=500, return_all=True)
    assert polished.min() <= adam.min() + 1e-9
    np.testing.assert_array_equal(polished, alone)
    for key in polished_all:
        np.testing.assert_array_equal(np.asarray(polished_all[key]), np.asarray(alone_all[key]))

    def grad_norm(params):
        flat, unravel = ravel_pytree(params)
        return float(np.linalg.norm(jax.grad(lambda v: potential_energy(mixture_model, args, {}, unravel(v)))(flat)))

    # the potential is ~1e4 (4,000 snapshots); L-BFGS stops once an iteration gains < 1e-13 of it
    assert grad_norm(best) < 1e-4 and grad_norm(best) < 1e-2 * grad_norm(adam_best)


def test_polish_whitened_by_the_hessian_reaches_an_ill_conditioned_optimum_in_a_few_iterations():
    """``polish_optima(whiten=True)``: L-BFGS in coordinates whitened by each start's clipped inverse Hessian.  On a
    quadratic whose curvatures span 1e0-1e6 (rotated) plus a small quartic, five iterations bring starts to the
    optimum (within 1e-8) where the plain polish's five leave them as far off as they started (it needs about 50);
    the energies returned are the potential at the points returned, never above the start's; the roots whiten
    (``R^T H R = 1``; ``R R^T`` the clipped inverse: a negative curvature gets variance 1; a Hessian not finite leaves
    the plain coordinates); a start whose potential is not finite comes back as it was; with ``split = False`` the
    plain polish runs."""
    from kgmm_bayes.bayes.sampler import polish_optima, whitening_roots

    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    a = q @ np.diag(np.logspace(0, 6, 6)) @ q.T
    optimum = np.array([0.5, -1.0, 2.0, 0.0, 1.5, -0.5])

    def potential(p):
        d = p["v"] - optimum
        return 0.5 * d @ jax.numpy.asarray(a) @ d + 1e-3 * jax.numpy.sum(d ** 4)

    starts = optimum + 0.3 * rng.standard_normal((4, 6))
    batch = {"v": jax.numpy.asarray(starts)}
    white, e_white = polish_optima(potential, batch, 5, whiten=True)
    plain, e_plain = polish_optima(potential, batch, 5)
    err_white = np.abs(np.asarray(white["v"]) - optimum).max()
    err_plain = np.abs(np.asarray(plain["v"]) - optimum).max()
    assert err_white < 1e-8 and err_plain > 0.1
    for points, energies in ((white, e_white), (plain, e_plain)):
        np.testing.assert_allclose(energies, [float(potential({"v": v})) for v in np.asarray(points["v"])], rtol=1e-12)
        assert (energies <= [float(potential({"v": jax.numpy.asarray(v)})) for v in starts]).all()
    # the roots whiten: R^T H R = 1 where every curvature is at least 1 (the quadratic's); a negative one gets variance 1
    root = whitening_roots(a[None])[0]
    np.testing.assert_allclose(root.T @ a @ root, np.eye(6), atol=1e-9)
    # a start where the potential is not finite is given back as it was, with an infinite energy; with split = False
    # (rows sharded over the devices) whiten is ignored: the plain polish, to the last bit
    def guarded(p):
        return jax.numpy.where(p["v"][0] > 5.0, jax.numpy.nan, potential(p))

    bad = np.vstack([starts[:1], starts[1:2] + np.array([10.0, 0, 0, 0, 0, 0])])
    out, energies = polish_optima(guarded, {"v": jax.numpy.asarray(bad)}, 5, whiten=True)
    np.testing.assert_array_equal(np.asarray(out["v"])[1], bad[1])
    assert energies[1] == np.inf and np.abs(np.asarray(out["v"])[0] - optimum).max() < 1e-8
    unsplit, e_unsplit = polish_optima(potential, batch, 5, split=False, whiten=True)
    alone, e_alone = polish_optima(potential, batch, 5, split=False)
    np.testing.assert_array_equal(np.asarray(unsplit["v"]), np.asarray(alone["v"]))
    np.testing.assert_array_equal(e_unsplit, e_alone)
    h = np.diag([4.0, -2.0, 1e6])
    root = whitening_roots(h[None])[0]
    np.testing.assert_allclose(root @ root.T, np.diag([0.25, 1.0, 1e-6]), atol=1e-15)
    np.testing.assert_array_equal(whitening_roots(np.full((1, 3, 3), np.nan))[0], np.eye(3))  # not finite: plain


@pytest.mark.parametrize("n", [1, 3, 4])
def test_batches_split_over_devices_keep_their_order(n):
    """find_map's Adam steps of many starts run split over the devices (padded to a multiple of them), with an
    argument shared by every entry: every entry comes back in its place, as the one-device program gives it."""
    from kgmm_bayes.bayes.sampler import _over_devices

    tree = {"a": jax.numpy.arange(n * 3, dtype=jax.numpy.float64).reshape(n, 3), "b": jax.numpy.arange(n) + 0.5}
    batched = jax.vmap(lambda p, c: {"a": p["a"] * p["b"] + jax.numpy.sum(p["a"]) * c, "b": -p["b"]}, in_axes=(0, None))
    out, expected = _over_devices(batched)(tree, 2.0), jax.jit(batched)(tree, 2.0)
    for key in tree:
        assert out[key].shape == tree[key].shape
        np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(expected[key]))
        assert out[key].sharding.is_fully_replicated and len(out[key].sharding.device_set) == 1  # a plain array


def test_chain_rounds():
    from kgmm_bayes.bayes.sampler import chain_rounds

    assert chain_rounds(4, 2) == [2, 2]
    assert chain_rounds(3, 2) == [2, 1]
    assert chain_rounds(2, 8) == [2]
    assert chain_rounds(1, 2) == [1]


def test_more_chains_than_devices_run_in_rounds():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(-1.0, 0.3, 600), rng.normal(1.0, 0.3, 600)])[:, None]
    part = fit_partition(jax.random.key(0), x, num_cells=100, num_components=2)
    prior = build_prior(part, dirichlet_alpha=2.0, mean_scale=0.25, scale_prior=1.0, lkj_eta=2.0)
    chains = jax.local_device_count() + 1  # one full round and one single chain
    post = run_nuts(jax.random.key(2), part.points, part.counts, prior, initial_values(part),
                    SamplerConfig(chains=chains, warmup=100, draws=100), point_covariances=part.cell_covariances)
    assert post.weights.shape == (chains, 100, 2)
    assert post.sample_stats["diverging"].shape == (chains, 100)
    # every chain is its own Markov chain: no two share a draw
    flat = post.weights[..., 0]
    assert len({tuple(np.round(c, 12)) for c in flat}) == chains
    # and they sample the same posterior: sorted-weight means agree within Monte Carlo error
    w_small = np.sort(post.weights, axis=-1)[..., 0]
    spread = w_small.mean(axis=1)
    assert np.ptp(spread) < 6 * w_small.std() / np.sqrt(100 / 10)


def test_map_search_finds_the_higher_mode_and_chains_start_there():
    """Two well-separated clusters of unequal size, two components started swapped in weight:
    the MAP search must end at the optimum, whose log posterior no start exceeds."""
    from kgmm_bayes.bayes.mixture import quadratic_features
    from kgmm_bayes.bayes.sampler import find_map
    from numpyro.infer.util import unconstrain_fn

    from kgmm_bayes.bayes.mixture import mixture_model

    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(-2.0, 0.3, 300), rng.normal(2.0, 0.5, 900)])[:, None]
    part = fit_partition(jax.random.key(0), x, num_cells=120, num_components=2)
    prior = build_prior(part, dirichlet_alpha=2.0, mean_scale=0.25, scale_prior=1.0, lkj_eta=2.0)
    args = (quadratic_features(part.points), part.counts, prior)
    init = unconstrain_fn(mixture_model, args, {}, initial_values(part))
    best, energies = find_map(jax.random.key(3), args, init, starts=6, steps=800)
    assert energies.shape == (6,)
    assert np.isfinite(energies).sum() >= 5
    from numpyro.infer.util import constrain_fn, potential_energy

    at_best = float(potential_energy(mixture_model, args, {}, best))
    assert at_best == pytest.approx(np.min(energies), rel=1e-9)
    # at the optimum the gradient vanishes (Adam's basin, polished by L-BFGS)
    grads = jax.grad(lambda p: potential_energy(mixture_model, args, {}, p))(best)
    assert max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(grads)) < 1e-5
    # and the weights match the cluster sizes (MAP of a well-separated mixture)
    w = np.sort(np.asarray(constrain_fn(mixture_model, args, {}, best)["weights"]))
    np.testing.assert_allclose(w, [0.25, 0.75], atol=0.02)
    # each start's search is its own: split over the devices (the default) or on one, the same Adam steps
    split = find_map(jax.random.key(3), args, init, starts=6, steps=800, polish=0)[1]
    whole = find_map(jax.random.key(3), args, init, starts=6, steps=800, polish=0, split=False)[1]
    np.testing.assert_allclose(split, whole, rtol=1e-10)


def test_sharded_likelihood_equals_unsharded_and_splits_rows():
    """Rows padded to a multiple of the device count with zero counts: the same log likelihood
    and gradient in float64, each device holding its block of rows."""
    from kgmm_bayes.bayes.mixture import mixture_loglik_dense, quadratic_features
    from kgmm_bayes.bayes.sampler import shard_rows

    n_dev = jax.local_device_count()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2 * n_dev * 50 + 1, 2))  # not a multiple of the device count
    counts = rng.integers(1, 9, len(x)).astype(float)
    feats = quadratic_features(x)
    weights = np.array([0.3, 0.7])
    means = np.array([[-1.0, 0.0], [1.0, 0.5]])
    chol = np.array([[[1.0, 0.0], [0.3, 0.8]], [[0.7, 0.0], [-0.2, 1.1]]])
    f_sh, c_sh = shard_rows(feats, counts)
    rows = -(-len(x) // n_dev)
    assert [s.data.shape for s in f_sh.addressable_shards] == [(rows, feats.shape[1])] * n_dev
    assert len({s.device for s in f_sh.addressable_shards}) == n_dev

    def loglik(f, c, m):
        return mixture_loglik_dense(f, c, weights, m, chol)

    value, grad = jax.value_and_grad(loglik, argnums=2)(feats, counts, means)
    value_sh, grad_sh = jax.jit(jax.value_and_grad(loglik, argnums=2))(f_sh, c_sh, means)
    assert float(value_sh) == pytest.approx(float(value), rel=1e-12)
    np.testing.assert_allclose(grad_sh, grad, rtol=1e-10)


def test_run_nuts_with_sharded_data_samples_the_posterior():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(-1.0, 0.3, 600), rng.normal(1.0, 0.3, 600)])[:, None]
    part = fit_partition(jax.random.key(0), x, num_cells=100, num_components=2)
    prior = build_prior(part, dirichlet_alpha=2.0, mean_scale=0.25, scale_prior=1.0, lkj_eta=2.0)
    post = run_nuts(jax.random.key(2), x, np.ones(len(x)), prior, initial_values(part),
                    SamplerConfig(chains=2, warmup=100, draws=100, shard_data=True))
    assert post.weights.shape == (2, 100, 2)
    assert int(post.sample_stats["diverging"].sum()) == 0
    # two equal clusters of 600: the smaller sorted weight sits within a few binomial sds of 1/2
    w_small = np.sort(post.weights, axis=-1)[..., 0]
    assert abs(w_small.mean() - 0.5) < 5 * np.sqrt(0.25 / len(x))
    assert not np.allclose(post.weights[0], post.weights[1])  # two independent chains


def test_chain_plan():
    from kgmm_bayes.bayes.sampler import chain_plan

    assert chain_plan(4, 2, "cpu") == [(2, "parallel"), (2, "parallel")]
    assert chain_plan(3, 2, "cpu") == [(2, "parallel"), (1, "sequential")]
    assert chain_plan(4, 1, "gpu") == [(4, "vectorized")]  # one accelerator: all chains at once
    assert chain_plan(4, 2, "gpu") == [(2, "parallel"), (2, "parallel")]  # one chain per GPU
    assert chain_plan(3, 2, "cpu", sharded=True) == [(1, "sequential")] * 3
    assert chain_plan(2, 8, "cpu", method="vectorized") == [(2, "vectorized")]
    with pytest.raises(ValueError, match="chain_method"):
        chain_plan(2, 2, "cpu", method="pmap")


def test_laplace_scales_are_the_inverse_sqrt_hessian_diagonal():
    """Exact identity in float64: a quadratic potential 0.5 v^T A v over a pytree has H = A,
    so the scales are 1/sqrt(A_ii); a negative diagonal entry gives inf."""
    from jax.flatten_util import ravel_pytree

    from kgmm_bayes.bayes.sampler import laplace_scales

    rng = np.random.default_rng(3)
    params = {"a": np.zeros((2, 3)), "b": np.zeros(4)}
    flat, unravel = ravel_pytree(params)
    root = rng.normal(size=(10, 10))
    matrix = root @ root.T + 0.5 * np.eye(10)
    matrix[7, 7] = -1.0  # not positive: no Laplace scale along it
    potential = lambda p: 0.5 * ravel_pytree(p)[0] @ matrix @ ravel_pytree(p)[0]  # noqa: E731
    at = unravel(jax.numpy.asarray(rng.normal(size=10)))
    got, _ = ravel_pytree(laplace_scales(potential, at))
    assert got.dtype == np.float64
    expected = 1.0 / np.sqrt(np.where(np.diag(matrix) > 0, np.diag(matrix), np.nan))
    np.testing.assert_allclose(np.asarray(got)[np.arange(10) != 7], expected[np.arange(10) != 7], rtol=1e-13)
    assert np.isinf(got[7])


def test_laplace_covariance_is_the_inverse_hessian_with_flat_directions_capped():
    """Exact identity in float64: for 0.5 v^T A v with A positive definite (eigenvalues above 1) the
    dense metric is A^-1; an eigen-direction of A made negative, or flatter than the cap (variance 4),
    gets the capped variance (1) instead, the others keep theirs."""
    from jax.flatten_util import ravel_pytree

    from kgmm_bayes.bayes.sampler import laplace_covariance

    rng = np.random.default_rng(4)
    params = {"a": np.zeros((2, 3)), "b": np.zeros(4)}
    flat, unravel = ravel_pytree(params)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    lam = np.exp(rng.uniform(0.1, 4.0, size=10))
    matrix = (q * lam) @ q.T
    potential = lambda p: 0.5 * ravel_pytree(p)[0] @ matrix @ ravel_pytree(p)[0]  # noqa: E731
    at = unravel(jax.numpy.asarray(rng.normal(size=10)))
    got = np.asarray(laplace_covariance(potential, at))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, np.linalg.inv(matrix), rtol=1e-10, atol=1e-13)
    lam_bad = lam.copy()
    lam_bad[3], lam_bad[6] = -2.0, 0.25
    potential_bad = lambda p: 0.5 * ravel_pytree(p)[0] @ ((q * lam_bad) @ q.T) @ ravel_pytree(p)[0]  # noqa: E731
    got_bad, root, inverse = (np.asarray(a) for a in laplace_covariance(potential_bad, at, root=True))
    np.testing.assert_allclose(got_bad, (q * np.where(lam_bad > 1, 1.0 / lam_bad, 1.0)) @ q.T, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(root @ root.T, got_bad, rtol=1e-10, atol=1e-13)  # a square root, and its inverse
    np.testing.assert_allclose(inverse @ root, np.eye(10), atol=1e-10)


def test_r_hat_warning_names_the_chain_in_another_mode():
    """Four chains of iid draws; chain 2 shifted by 5 sd on one probe: r_hat flags it and the warning
    names chain 2, the probe and the gap in mean log posterior."""
    rng = np.random.default_rng(7)
    c, s = 4, 400
    probe_ld = rng.normal(0.0, 1.0, (c, s, 8))
    probe_ld[2, :, 5] += 5.0
    lp = rng.normal(-100.0, 3.0, (c, s))
    lp[2] -= 9.0
    idata = az.from_dict(
        posterior={"probe_log_density": probe_ld, "probe_score": rng.normal(size=(c, s, 8, 1)),
                   "sorted_weights": rng.dirichlet(np.ones(3), (c, s))},
        sample_stats={"diverging": np.zeros((c, s), bool), "n_steps": np.full((c, s), 7), "lp": lp,
                      "energy": rng.normal(size=(c, s)) * 3.0})
    summary = convergence_summary(idata)
    assert summary["max_r_hat"] > 1.5
    np.testing.assert_allclose(summary["chain_mean_log_posterior"], lp.mean(axis=1), rtol=1e-12)
    (message,) = [w for w in summary["warnings"] if "r_hat" in w]
    assert "chain 2 is the odd one: probe_log_density[5]" in message
    assert f"{lp.mean(axis=1).max() - lp[2].mean():.1f} nats below" in message


def test_distinct_chain_starts_record_the_optima_each_chain_starts_at():
    from kgmm_bayes.bayes.sampler import spread_starts

    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(-2.0, 0.3, 300), rng.normal(2.0, 0.5, 900)])[:, None]
    part = fit_partition(jax.random.key(0), x, num_cells=120, num_components=2)
    prior = build_prior(part, dirichlet_alpha=2.0, mean_scale=0.25, scale_prior=1.0, lkj_eta=2.0)
    config = SamplerConfig(chains=2, warmup=10, draws=10, map_starts=4, map_steps=50, chain_starts="distinct")
    post = run_nuts(jax.random.key(1), part.points, part.counts, prior, initial_values(part), config)
    energies = post.sample_stats["map_potential_energies"]
    np.testing.assert_array_equal(post.sample_stats["start_optima"], spread_starts(None, energies, 2, np.inf))


@pytest.mark.slow  # about a minute: three NUTS runs and two continuations
def test_flagged_chains_run_on_and_their_draws_are_replaced():
    """``extend``: the round holding a chain the ``drifting`` check flags runs on from its last state
    (no warmup: the adapted step size is kept), its draws replaced by as many new ones; other rounds
    keep theirs; at most ``extend`` continuations; the continued chains still sample the posterior
    the others do.  A round of parallel chains and a round of one chain are both run on."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(-1.0, 0.3, 600), rng.normal(1.0, 0.3, 600)])[:, None]
    part = fit_partition(jax.random.key(0), x, num_cells=100, num_components=2)
    prior = build_prior(part, dirichlet_alpha=2.0, mean_scale=0.25, scale_prior=1.0, lkj_eta=2.0)
    devices = jax.local_device_count()
    chains = devices + 1  # one full round and a last round of one chain
    seen, steps = [], []

    def drifting(post):
        seen.append(post.weights.copy())
        steps.append(post.sample_stats["step_size"].copy())
        return [0] if len(seen) == 1 else [chains - 1, chains - 1]  # then the last chain (named twice: once run)

    post = run_nuts(jax.random.key(2), part.points, part.counts, prior, initial_values(part),
                    SamplerConfig(chains=chains, warmup=100, draws=100, extend=2),
                    point_covariances=part.cell_covariances, drifting=drifting)
    assert len(seen) == 2  # checked before each continuation, never after the last
    np.testing.assert_array_equal(post.sample_stats["continuations"], [1] * chains)
    assert post.weights.shape == (chains, 100, 2) and post.sample_stats["num_steps"].shape == (chains, 100)
    first, second = seen
    # the first round ran on: new draws (the first may be the old last one, where NUTS can stay put)
    assert not np.any(np.isin(second[:devices, 1:], first[:devices]))
    np.testing.assert_array_equal(second[-1], first[-1])  # the last round did not
    assert not np.any(np.isin(post.weights[devices:, 1:], second[devices:]))  # then the last round ran on
    np.testing.assert_array_equal(post.weights[:devices], second[:devices])
    # continuations, not fresh runs: every chain keeps the step size its warmup adapted
    assert np.all(np.ptp(steps[0], axis=1) == 0.0)
    np.testing.assert_array_equal(post.sample_stats["step_size"], steps[0])
    w_small = np.sort(post.weights, axis=-1)[..., 0]
    spread = w_small.mean(axis=1)
    assert np.ptp(spread) < 6 * w_small.std() / np.sqrt(100 / 10)
    # without a check, or with extend = 0, nothing runs on and nothing is recorded
    plain = run_nuts(jax.random.key(2), part.points, part.counts, prior, initial_values(part),
                     SamplerConfig(chains=chains, warmup=100, draws=100),
                     point_covariances=part.cell_covariances, drifting=drifting)
    assert len(seen) == 2 and "continuations" not in plain.sample_stats
    np.testing.assert_array_equal(plain.weights, first)  # the same first draws: extend changes nothing before


def test_drifting_chains_are_those_convergence_summary_would_fault_on_r_hat():
    """Four chains of iid draws around one mixture: none flagged; all four when one of them drifts a
    little, staying in their mode.  A fourth whose means drift far lands in a mode of its own: stacked
    chains from one start, the drifting one (alone, its halves disagree); stacked chains at distinct
    optima, none (judged by reproducibility); unstacked, all four."""
    from kgmm_bayes.bayes.diagnostics import drifting_chains
    from kgmm_bayes.bayes.sampler import PosteriorSamples

    rng = np.random.default_rng(3)
    c, s = 4, 1000
    means = np.array([-1.0, 1.0])[None, None, :, None] + 0.01 * rng.normal(size=(c, s, 2, 1))
    weights = np.broadcast_to(np.array([0.4, 0.6]), (c, s, 2)).copy()
    chol = np.ones((c, s, 2, 1, 1))
    points = np.linspace(-2.0, 2.0, 50)[:, None]
    counts = np.ones(50)

    def samples(m, stats=None):
        return PosteriorSamples(weights, m, chol, {}, stats or {}, 0.0)

    assert drifting_chains(samples(means), points, counts) == []
    slightly = means.copy()
    slightly[3, :, 0, 0] += np.linspace(0.0, 0.007, s)  # under one sd of the means: one mode, r_hat over 1.01
    assert drifting_chains(samples(slightly), points, counts) == [0, 1, 2, 3]
    drifted = means.copy()
    drifted[3, :, 0, 0] += np.linspace(0.0, 0.5, s)
    assert drifting_chains(samples(drifted), points, counts) == [3]
    distinct = {"start_optima": np.array([4, 0, 7, 2])}
    assert drifting_chains(samples(drifted, distinct), points, counts) == []
    assert drifting_chains(samples(drifted, distinct), points, counts, stacks=False) == [0, 1, 2, 3]


def test_report_names_the_chains_that_ran_on():
    from kgmm_bayes.study.report import continuation_lines

    assert continuation_lines(None) == [] and continuation_lines([0, 0, 0]) == []
    (line,) = continuation_lines([0, 2, 0, 1])
    assert line.endswith("chain 1 2 times, chain 3 1 time")


def test_report_says_a_second_posterior_started_where_the_first_ended():
    from kgmm_bayes.study.report import warm_start_lines

    assert warm_start_lines({}) == [] and warm_start_lines({"distinct_starts": 3}) == []
    (line,) = warm_start_lines({"warm_start": True, "distinct_starts": 11})
    assert "where the first posterior's chains ended" in line and line.endswith("(theirs started at 11 distinct MAP optima)")
    (line,) = warm_start_lines({"warm_start": True})
    assert line.endswith("with no MAP search of their own")


def test_report_says_a_laplace_kept_posterior_ran_no_sampler():
    from kgmm_bayes.study.report import sampled_line

    nuts = {"chains": 4, "draws": 500, "divergences": 2, "mean_steps_per_iteration": 31.25, "metric": "dense"}
    assert sampled_line(nuts).startswith("- 4 chains x 500 draws; divergences 2; mean leapfrog steps per iteration")
    line = sampled_line({**nuts, "kept_posterior": "laplace", "laplace_newton_decrement": 2.5e-05,
                         "laplace_centres_not_optima": 1})
    assert line.startswith("- no sampler: the Laplace approximation at 4 MAP optima") and "leapfrog" not in line
    assert "2.5e-05 nats above its optimum, 1 without a positive definite Hessian), 500 independent draws" in line


def test_jittered_copies_draw_the_asked_noise_from_the_key():
    # _jittered draws its noise on the host from the key's bits: copies of the tree plus N(0, scale^2) per
    # coordinate (the sample's mean and sd within 5 standard errors of n = 20,000 copies), the first copy kept
    # exact when asked, the same key giving the same numbers (typed and raw keys alike) and another key others
    from kgmm_bayes.bayes.sampler import _jittered

    tree = {"a": np.array([1.0, -2.0]), "b": np.array([[0.5, 3.0, -1.0]])}
    scale = {"a": np.array([0.1, 2.0]), "b": np.array([[1e-3, 0.5, 1.0]])}
    n = 20_000
    out = _jittered(jax.random.key(3), tree, n, scale, keep_first=True)
    for name in tree:
        noise = np.asarray(out[name]) - tree[name][None]
        assert out[name].shape == (n,) + tree[name].shape
        np.testing.assert_array_equal(noise[0], 0.0)
        rest = noise[1:] / scale[name][None]
        assert np.all(np.abs(rest.mean(axis=0)) < 5 / np.sqrt(n - 1))
        assert np.all(np.abs(rest.std(axis=0) - 1.0) < 5 / np.sqrt(2 * (n - 1)))
    again = _jittered(jax.random.key(3), tree, n, scale, keep_first=True)
    np.testing.assert_array_equal(np.asarray(again["b"]), np.asarray(out["b"]))
    raw = _jittered(jax.random.key_data(jax.random.key(3)), tree, n, scale, keep_first=True)
    np.testing.assert_array_equal(np.asarray(raw["a"]), np.asarray(out["a"]))
    other = _jittered(jax.random.key(4), tree, 3, 0.5)
    assert not np.allclose(np.asarray(other["a"])[0], tree["a"])
    assert not np.allclose(np.asarray(other["a"]), np.asarray(out["a"])[:3])


def test_a_warm_start_begins_at_the_first_posterior_s_draws_and_samples_its_own_posterior(monkeypatch):
    """A second posterior of the same model at a quarter of the likelihood (the coarsening's kept posterior
    after its first) started warm (run_nuts' ``warm``): its chains start at the first's last draws and its
    metric is the first's pooled within-chain spread (shrunk as numpyro shrinks its own) times 4 (identities,
    checked against the transforms written out by hand and against what NUTS and the chains were given), no
    MAP search runs, and it samples its own, wider posterior: the weight's sd doubles (the ratio 2 within 25%:
    each sd comes from 400 draws of ESS in the hundreds, a few % error each), its mean stays within 5
    binomial sds of zeta N = 1000 snapshots."""
    from jax.flatten_util import ravel_pytree

    import kgmm_bayes.bayes.sampler as sampler
    from kgmm_bayes.bayes.mixture import mixture_model, quadratic_features
    from kgmm_bayes.bayes.sampler import warm_start_values

    zs, part, prior = _two_component_problem()
    config = SamplerConfig(chains=2, warmup=200, draws=200)
    first = run_nuts(jax.random.key(1), part.points, part.counts, prior, initial_values(part), config)
    args = (quadratic_features(jax.numpy.asarray(part.points)), jax.numpy.asarray(part.counts), prior)
    last, metric = warm_start_values(first, mixture_model, args, ("weights", "means", "scales"), 4.0, dense=False)
    # ravel_pytree's order: means (2), scales (2), weights (stick-breaking: 1)
    w = first.sites["weights"]
    u = np.concatenate([first.sites["means"].reshape(2, 200, 2), np.log(first.sites["scales"]).reshape(2, 200, 2),
                        np.log(w[..., :1] / w[..., 1:])], axis=-1)
    np.testing.assert_allclose(last, u[:, -1], rtol=1e-10, atol=1e-12)
    n = 2 * 199
    pooled = np.mean(np.var(u, axis=1, ddof=1), axis=0)
    np.testing.assert_allclose(metric, 4.0 * (n / (n + 5) * pooled + 1e-3 * 5 / (n + 5)), rtol=1e-10)
    _, dense = warm_start_values(first, mixture_model, args, ("weights", "means", "scales"), 4.0, dense=True)
    np.testing.assert_allclose(np.diag(dense), metric, rtol=1e-12)
    pooled_cov = np.mean([np.cov(u[c].T) for c in range(2)], axis=0)
    np.testing.assert_allclose(dense, 4.0 * (n / (n + 5) * pooled_cov + 1e-3 * 5 / (n + 5) * np.eye(5)), rtol=1e-10)

    given = {"init_params": []}  # what NUTS and the chains were given
    real_nuts, real_run = sampler.NUTS, sampler.MCMC.run

    def nuts(*a, **kw):
        given["inverse_mass_matrix"] = kw.get("inverse_mass_matrix")
        return real_nuts(*a, **kw)

    def run(self, *a, init_params=None, **kw):
        given["init_params"].append(init_params)
        return real_run(self, *a, init_params=init_params, **kw)

    monkeypatch.setattr(sampler, "NUTS", nuts)
    monkeypatch.setattr(sampler.MCMC, "run", run)
    counts = np.asarray(part.counts) * 0.25
    second = run_nuts(jax.random.key(2), part.points, counts, prior, initial_values(part), config, warm=(first, 4.0))
    np.testing.assert_allclose(np.asarray(given["inverse_mass_matrix"]), dense, rtol=1e-12)  # "auto": dense here
    starts = np.stack([ravel_pytree({k: v[c] for k, v in p.items()})[0] for p in given["init_params"]
                       for c in range(len(p["means"]))])
    np.testing.assert_allclose(starts, last, rtol=1e-12)
    assert bool(second.sample_stats["warm_start"]) and "map_potential_energies" not in second.sample_stats
    assert "map_potential_energies" in first.sample_stats and "warm_start" not in first.sample_stats
    small_first = np.sort(first.weights.reshape(-1, 2), axis=1)[:, 0]
    small = np.sort(second.weights.reshape(-1, 2), axis=1)[:, 0]
    assert abs(small.mean() - 0.3) < 5 * np.sqrt(0.21 / 1000)
    assert abs(small.std() / small_first.std() - 2.0) < 0.5
    assert int(second.sample_stats["diverging"].sum()) == 0


def test_a_warm_start_is_ignored_where_the_laplace_covariance_defines_the_metric():
    """The fixed Laplace metric and whitened coordinates need the MAP search's Laplace covariance: a warm start
    is ignored there (the MAP searches run), as it is for another number of chains and with ``[sampler]
    warm_start = false``."""
    from kgmm_bayes.bayes.sampler import PosteriorSamples

    zs, part, prior = _two_component_problem()
    config = SamplerConfig(chains=2, warmup=20, draws=20, map_starts=2, map_steps=20)
    draws = np.broadcast_to(np.array([0.3, 0.7]), (2, 20, 2))
    stub = PosteriorSamples(draws, None, None, {}, {}, 0.0)  # never read: the warm start is dropped first
    for metric, chains, warm_start in (("laplace", 2, True), ("diagonal", 3, True), ("diagonal", 2, False)):
        post = run_nuts(jax.random.key(2), part.points, part.counts, prior, initial_values(part),
                        config._replace(metric=metric, chains=chains, warm_start=warm_start), warm=(stub, 4.0))
        assert "warm_start" not in post.sample_stats and "map_potential_energies" in post.sample_stats


def test_hessians_at_a_batch_of_points_are_each_point_s_hessian():
    """Exact identity in float64: the potential sum_i a_i cosh(v_i) + (c . v)^2 over a pytree has the Hessian
    diag(a cosh v) + 2 c c^T; hessian_matrices gives it at each of three points (split over the devices), and
    hessian_matrix at one of them."""
    from jax.flatten_util import ravel_pytree

    from kgmm_bayes.bayes.sampler import hessian_matrices, hessian_matrix

    rng = np.random.default_rng(5)
    a, c = rng.uniform(0.5, 2.0, 7), rng.normal(size=7)

    def potential(p):
        v = ravel_pytree(p)[0]
        return jax.numpy.sum(a * jax.numpy.cosh(v)) + (c @ v) ** 2

    points = rng.normal(size=(3, 7))
    batch = {"x": jax.numpy.asarray(points[:, :4].reshape(3, 2, 2)), "y": jax.numpy.asarray(points[:, 4:])}
    got = hessian_matrices(potential, batch)
    expected = np.stack([np.diag(a * np.cosh(p)) + 2.0 * np.outer(c, c) for p in points])
    assert got.shape == (3, 7, 7) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    one = hessian_matrix(potential, jax.tree_util.tree_map(lambda leaf: leaf[1], batch))
    np.testing.assert_allclose(one, expected[1], rtol=1e-12, atol=1e-12)


def test_a_kept_polish_search_is_compiled_for_each_data_shape():
    """The L-BFGS polish of a BoundPotential keeps its compiled search by the data's shapes: data of another size
    (another number of cells) get their own program, not the first one's, and each polish reaches its data's optimum
    (the potential sum((v - mean(data))^2), minimised at v = mean(data) in every coordinate)."""
    from kgmm_bayes.bayes import sampler

    def fn(p, data):
        return jax.numpy.sum((p["v"] - jax.numpy.mean(data)) ** 2)

    for data in (jax.numpy.asarray([1.0, 2.0, 4.5]), jax.numpy.asarray([-1.0, 0.5, 2.0, 3.0, 6.0])):
        starts = {"v": jax.numpy.asarray(np.random.default_rng(len(data)).normal(size=(3, 2)))}
        out, energies = sampler.polish_optima(sampler.BoundPotential(fn, data), starts, 50)
        np.testing.assert_allclose(np.asarray(out["v"]), float(np.mean(data)), atol=1e-7)
        np.testing.assert_allclose(energies, 0.0, atol=1e-13)


def test_programs_kept_for_a_bound_potential_read_each_call_s_data():
    """A BoundPotential's programs (sampler._program) are kept by its function and shapes, and its data are an
    argument: the same program, called with other data (another zeta, another data set), gives those data's
    Hessians, Newton optima and values, exactly as a closure over them does (float64 identities: the potential
    sum_i a_i cosh(v_i) + (c . v)^2 of data (a, c), Hessian diag(a cosh v) + 2 c c^T, optimum where
    a sinh(v) + 2 c (c . v) = 0)."""
    from jax.flatten_util import ravel_pytree

    from kgmm_bayes.bayes import sampler

    def fn(p, data):
        a, c = data
        v = ravel_pytree(p)[0]
        return jax.numpy.sum(a * jax.numpy.cosh(v)) + (c @ v) ** 2

    rng = np.random.default_rng(9)
    points = rng.normal(size=(3, 5))
    batch = {"x": jax.numpy.asarray(points[:, :2]), "y": jax.numpy.asarray(points[:, 2:])}
    for _ in range(2):  # (another data set each time, through the same kept programs)
        a, c = rng.uniform(0.5, 2.0, 5), 0.3 * rng.normal(size=5)
        bound = sampler.BoundPotential(fn, (jax.numpy.asarray(a), jax.numpy.asarray(c)))
        got = sampler.hessian_matrices(bound, batch)
        expected = np.stack([np.diag(a * np.cosh(p)) + 2.0 * np.outer(c, c) for p in points])
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
        out, _, _, values = sampler.newton_refine(bound, batch, got, steps=100, tolerance=1e-20)
        flat = np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(out))
        # (Newton stops where the potential no longer resolves a decrease: |gradient| ~ sqrt(eps |f| |H|) ~ 1e-7)
        np.testing.assert_allclose(a * np.sinh(flat) + 2.0 * np.outer(flat @ c, c), 0.0, atol=1e-6)
        np.testing.assert_allclose(values, [float(bound(jax.tree_util.tree_map(lambda leaf: leaf[i], out)))
                                            for i in range(3)], rtol=1e-14)
    # the Hessians, the values and gradients, the values: each made once for both data sets
    assert sorted(key[0] for key in sampler._PROGRAMS if key[1] is fn) == ["hessians", "values", "values and gradients"]


@pytest.mark.parametrize("chain_starts", ["best", "distinct"])
def test_a_laplace_posterior_draws_the_gaussian_at_each_chain_s_optimum(chain_starts):
    """``laplace_posterior``: each chain's draws, mapped back to unconstrained space and whitened by the Laplace
    covariance at its optimum (the MAP search recorded in ``start_optima``), are independent standard normals:
    their mean is within 4 / sqrt(n) of 0 and their variance within 4 sqrt(2 / n) of 1 (n = chains x draws per
    optimum); chains sharing an optimum hold different draws; ``potential_energy`` is the potential at the draws."""
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import unconstrain_fn

    from kgmm_bayes.bayes.mixture import expected_quadratic_features, mixture_model
    from kgmm_bayes.bayes.sampler import (_potential, find_map, hessian_matrix, laplace_covariance,
                                          laplace_posterior, spread_starts)

    zs, part, prior = _two_component_problem()
    config = SamplerConfig(chains=4, draws=500, map_starts=4, map_steps=300, chain_starts=chain_starts)
    post = laplace_posterior(jax.random.key(2), part.points, part.counts, prior, initial_values(part), config,
                             point_covariances=part.cell_covariances)
    assert post.weights.shape == (4, 500, 2) and bool(post.sample_stats["laplace"])
    assert not post.sample_stats["diverging"].any() and not post.sample_stats["num_steps"].any()
    model = mixture_model
    args = (expected_quadratic_features(part.points, part.cell_covariances), jax.numpy.asarray(part.counts), prior)
    init = jax.jit(lambda values: unconstrain_fn(model, args, {}, values))(initial_values(part))
    # the same MAP searches (laplace_posterior's key split: draws, then MAP)
    _, energies, optima = find_map(jax.random.split(jax.random.key(2))[1], args, init, 4, 300, model=model,
                                   return_all=True)
    np.testing.assert_allclose(post.sample_stats["map_potential_energies"], energies, rtol=1e-9)
    picks = np.asarray(post.sample_stats["start_optima"])
    if chain_starts == "best":
        assert (picks == np.argmin(energies)).all()
    else:
        np.testing.assert_array_equal(picks, spread_starts(None, energies, 4, np.inf))
    sites = {name: post.sites[name] for name in ("weights", "means", "scales")}
    flat = np.asarray(jax.vmap(jax.vmap(lambda s: ravel_pytree(unconstrain_fn(model, args, {}, s))[0]))(sites))
    potential = functools.partial(_potential, model, args)
    for optimum in np.unique(picks):
        at = jax.tree_util.tree_map(lambda leaf: leaf[optimum], optima)
        centre = np.asarray(ravel_pytree(at)[0])
        _, root, inverse = laplace_covariance(None, at, root=True, hessian=hessian_matrix(potential, at))
        u = (flat[picks == optimum].reshape(-1, centre.size) - centre) @ np.asarray(inverse).T
        n = len(u)
        assert np.abs(u.mean(axis=0)).max() < 4 / np.sqrt(n)
        assert np.abs(u.var(axis=0) - 1.0).max() < 4 * np.sqrt(2.0 / n)
    assert len(np.unique(flat.reshape(-1, flat.shape[-1]), axis=0)) == 4 * 500  # no draw repeated across chains
    c, s = 1, 7
    got = float(post.sample_stats["potential_energy"][c, s])
    unravel = ravel_pytree(jax.tree_util.tree_map(lambda leaf: leaf[0], optima))[1]
    assert got == pytest.approx(float(potential(unravel(jax.numpy.asarray(flat[c, s])))), rel=1e-10)


def test_map_searches_from_another_posterior_s_optima_polish_them_to_this_posterior_s_map(monkeypatch):
    """``map_optima(map_from=...)``: another posterior's MAP optima (the coarsening's first, at every count) polished
    at this posterior's counts (0.3 of them) instead of searched for afresh: each polished point is no worse than
    where it started, is a stationary point of this potential, the best reaches the MAP that fresh searches find,
    and the energies are the potential at the optima returned; with ``map_polish = 0`` the fresh searches run."""
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import unconstrain_fn

    from kgmm_bayes.bayes.mixture import expected_quadratic_features, mixture_model
    from kgmm_bayes.bayes.sampler import _potential, map_optima, spread_starts

    _, part, prior = _two_component_problem()
    config = SamplerConfig(chains=4, map_starts=4, map_steps=300, chain_starts="distinct")
    features = expected_quadratic_features(part.points, part.cell_covariances)
    model = mixture_model

    def args(power):
        return features, jax.numpy.asarray(part.counts * power), prior

    init = jax.jit(lambda values: unconstrain_fn(model, args(1.0), {}, values))(initial_values(part))
    first = map_optima(jax.random.key(5), args(1.0), init, config, model)
    flat = first[4]
    assert flat.shape == (4, ravel_pytree(init)[0].size) and flat.dtype == np.float64
    unravel = ravel_pytree(init)[1]
    potential_1 = functools.partial(_potential, model, args(1.0))
    np.testing.assert_allclose([float(potential_1(unravel(jax.numpy.asarray(v)))) for v in flat], first[1], rtol=1e-12)

    potential = functools.partial(_potential, model, args(0.3))
    from kgmm_bayes.bayes import sampler

    def no_search(*args, **kwargs):
        raise AssertionError("searched afresh")

    with monkeypatch.context() as patch:
        patch.setattr(sampler, "find_map", no_search)
        best, energies, picks, starts, polished = map_optima(jax.random.key(6), args(0.3), init, config, model,
                                                             map_from=flat)
    before = np.array([float(potential(unravel(jax.numpy.asarray(v)))) for v in flat])
    after = np.array([float(potential(unravel(jax.numpy.asarray(v)))) for v in polished])
    np.testing.assert_allclose(energies, after, rtol=1e-12)
    assert (after <= before).all() and (after < before - 1e-3).any()  # moved: the optima of counts x 1 are not these
    gradient = jax.grad(lambda v: potential(unravel(v)))
    assert max(float(np.linalg.norm(gradient(jax.numpy.asarray(v)))) for v in polished) < 1e-4
    fresh_best, fresh_energies, *_ = map_optima(jax.random.key(6), args(0.3), init, config, model)
    assert energies.min() == pytest.approx(fresh_energies.min(), rel=1e-9, abs=1e-6)
    np.testing.assert_allclose(ravel_pytree(best)[0], ravel_pytree(fresh_best)[0], atol=1e-4)
    np.testing.assert_array_equal(picks, spread_starts(None, energies, 4, np.inf))
    unpolished = map_optima(jax.random.key(6), args(0.3), init, config._replace(map_polish=0), model, map_from=flat)
    searched = map_optima(jax.random.key(6), args(0.3), init, config._replace(map_polish=0), model)
    np.testing.assert_array_equal(unpolished[1], searched[1])
    with monkeypatch.context() as patch:  # a Laplace posterior at these counts (kept_posterior): the same optima
        patch.setattr(sampler, "find_map", no_search)
        post = sampler.laplace_posterior(jax.random.key(7), part.points, part.counts * 0.3, prior,
                                         initial_values(part), config._replace(draws=10),
                                         point_covariances=part.cell_covariances, map_from=flat)
    np.testing.assert_array_equal(post.sample_stats["start_optima"], picks)
    laplace_energies = np.asarray(post.sample_stats["map_potential_energies"])  # its centres Newton-refined: lower
    assert (laplace_energies <= energies + 1e-8 * np.abs(energies)).all()
    assert (laplace_energies >= energies - 1e-3).all()  # (from stationary points: within a Newton decrement)


def test_hessians_another_posterior_computed_are_rescaled_to_these_counts():
    """``map_hessians``: the potential is linear in the counts, so the Hessians a first posterior computed (counts c)
    give this one's (counts r c) as ``r H_c + (1 - r) H_0`` (H_0 the prior's alone): equal, in float64, to the Hessians
    computed afresh at r c, for r = 0.3 and r = 1 (then the first's exactly); counts not in proportion, or no
    ``known``, compute every Hessian."""
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import unconstrain_fn

    from kgmm_bayes.bayes.mixture import expected_quadratic_features
    from kgmm_bayes.bayes.sampler import (AUTO_BLOCKS_MODEL, KnownHessians, count_ratio, hessian_matrices,
                                          map_hessians, model_potential)

    _, part, prior = _two_component_problem()
    features = expected_quadratic_features(part.points, part.cell_covariances)
    model = AUTO_BLOCKS_MODEL
    counts = np.asarray(part.counts, np.float64)

    def args(c):
        return features, jax.numpy.asarray(c), prior

    init = jax.jit(lambda values: unconstrain_fn(model, args(counts), {}, values))(initial_values(part))
    centre, unravel = ravel_pytree(init)
    flats = np.asarray(centre)[None] + 0.05 * np.random.default_rng(3).normal(size=(3, centre.size))
    points = jax.vmap(unravel)(jax.numpy.asarray(flats))
    first = hessian_matrices(model_potential(model, args(counts)), points)
    known = KnownHessians(np.asarray([0, 2]), first[[0, 2]], counts)
    for r in (0.3, 1.0):
        expected = hessian_matrices(model_potential(model, args(counts * r)), points)
        got = map_hessians(model, args(counts * r), points, known)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-11 * scale)
    np.testing.assert_array_equal(map_hessians(model, args(counts), points, known)[[0, 2]], first[[0, 2]])
    # the known ones are used, not computed again: made zero, rows 0 and 2 are (1 - r) H_0, row 1 computed
    wrong = KnownHessians(np.asarray([0, 2]), np.zeros_like(first[[0, 2]]), counts)
    got = map_hessians(model, args(counts * 0.3), points, wrong)
    prior_only = hessian_matrices(model_potential(model, args(counts * 0.0)), points)
    np.testing.assert_allclose(got[[0, 2]], 0.7 * prior_only[[0, 2]], rtol=1e-12, atol=1e-12 * np.abs(prior_only).max())
    fresh = hessian_matrices(model_potential(model, args(counts * 0.3)), points)[1]
    np.testing.assert_allclose(got[1], fresh, rtol=1e-12, atol=1e-12 * np.abs(fresh).max())
    uneven = counts * np.linspace(0.2, 0.4, len(counts))
    np.testing.assert_array_equal(map_hessians(model, args(uneven), points, wrong),
                                  hessian_matrices(model_potential(model, args(uneven)), points))
    assert count_ratio(counts * 0.3, counts) == pytest.approx(0.3, rel=1e-15)
    assert count_ratio(uneven, counts) is None and count_ratio(counts[:-1], counts) is None
    assert count_ratio(np.where(np.arange(len(counts)) == 0, 0.0, counts), counts) is None  # (a count made zero)


def _quartic():
    """``sum(v^4 / 4 - v^2 / 2) + 0.1 (c.v)^2`` in 3D (minima near +-1 per coordinate) as a potential of ``{"v": v}``,
    its analytic Hessian in ``v`` and its gradient in ``v``."""
    c = np.array([0.3, -0.2, 0.5])

    def potential(p):
        v = p["v"]
        return jax.numpy.sum(v ** 4 / 4 - v ** 2 / 2) + 0.1 * (c @ v) ** 2

    def hessian(v):
        return np.diag(3 * v ** 2 - 1) + 0.2 * np.outer(c, c)

    return potential, hessian, jax.grad(lambda v: potential({"v": v}))


def test_newton_refinement_reaches_the_optimum_and_leaves_saddles_alone():
    """``newton_refine``: on ``sum(v^4 / 4 - v^2 / 2) + 0.1 (c.v)^2`` (minima near +-1 per coordinate), a point
    started at 1.3 reaches the minimum (its gradient below 1e-7, where float64 potentials stop telling steps apart;
    the Hessians returned are the exact ones there, against the analytic Hessian), although every step uses the
    start's Hessian; a point where the Hessian is not positive definite (0.1: curvature 3 v^2 - 1 < 0) is left where
    it is with a ``nan`` decrement.  With the default tolerance the half Newton decrement left is at most 1e-4 nats
    and predicts the potential's remaining excess to within a factor 2."""
    from kgmm_bayes.bayes.sampler import NEWTON_DECREMENT, newton_refine

    potential, hessian, grad = _quartic()
    starts = np.array([[1.3, 1.3, 1.3], [0.1, 0.1, 0.1]])
    points = {"v": jax.numpy.asarray(starts)}
    out, hessians, decrements, values = newton_refine(potential, points, np.stack([hessian(s) for s in starts]),
                                                      steps=100, tolerance=1e-20)
    v = np.asarray(out["v"])
    assert np.linalg.norm(np.asarray(grad(jax.numpy.asarray(v[0])))) < 1e-7
    np.testing.assert_allclose(hessians[0], hessian(v[0]), rtol=1e-12, atol=1e-12)
    assert decrements[0] < 1e-14
    np.testing.assert_allclose(values, [float(potential({"v": jax.numpy.asarray(p)})) for p in v], rtol=1e-14)
    np.testing.assert_array_equal(v[1], starts[1])
    assert np.isnan(decrements[1])
    np.testing.assert_array_equal(hessians[1], hessian(starts[1]))
    # default tolerance: the refinement stops early; the decrement is the predicted excess over the optimum
    out, _, decrements, _ = newton_refine(potential, {"v": jax.numpy.asarray(starts[:1])}, hessian(starts[0])[None])
    excess = float(potential({"v": out["v"][0]})) - float(potential({"v": jax.numpy.asarray(v[0])}))
    assert decrements[0] <= NEWTON_DECREMENT and 0.5 * decrements[0] <= excess <= 2.0 * decrements[0]


def test_newton_refinement_from_far_off_refreshes_its_hessian():
    """``newton_refine`` from a point far from its optimum (``v = 4`` on the quartic above: curvature 47 there, 2 at
    the minimum, so each chord step with the start's Hessian closes about 4% of the gap): one round of 30 chord steps
    leaves it well above the tolerance (and so does any number of rounds with ``refresh`` above that); the default
    rounds, each from the Hessian where the last one stopped, bring it within the tolerance of the minimum (its half
    decrement, the excess over the minimum to within a factor 2), and the Hessian returned is the analytic one there."""
    from kgmm_bayes.bayes.sampler import NEWTON_DECREMENT, NEWTON_STEPS, newton_refine

    potential, hessian, grad = _quartic()
    start = np.array([[4.0, 4.0, 4.0]])
    _, _, once, _ = newton_refine(potential, {"v": jax.numpy.asarray(start)}, hessian(start[0])[None], rounds=1)
    assert once[0] > 100 * NEWTON_DECREMENT
    # a point less than ``refresh`` above its optimum after a round is left there: no further rounds
    _, _, left, _ = newton_refine(potential, {"v": jax.numpy.asarray(start)}, hessian(start[0])[None],
                                  refresh=2 * once[0])
    assert left[0] == once[0]
    out, hessians, decrements, _ = newton_refine(potential, {"v": jax.numpy.asarray(start)}, hessian(start[0])[None])
    v = np.asarray(out["v"][0])
    assert decrements[0] <= NEWTON_DECREMENT and NEWTON_STEPS == 30
    np.testing.assert_allclose(hessians[0], hessian(v), rtol=1e-12, atol=1e-12)
    # the minimum itself (many chord steps from next to it); the decrement predicts the excess left
    best, _, _, _ = newton_refine(potential, out, hessians, steps=100, tolerance=1e-20)
    assert np.linalg.norm(np.asarray(grad(jax.numpy.asarray(best["v"][0])))) < 1e-7
    excess = float(potential({"v": out["v"][0]})) - float(potential({"v": best["v"][0]}))
    assert 0.5 * decrements[0] <= excess <= 2.0 * decrements[0]


def test_newton_refinement_measures_again_only_the_points_that_moved(monkeypatch):
    """``newton_refine`` on a batch (the quartic above): a point far off (4.0: rounds of chord steps), one already at
    its minimum (no step) and one where the Hessian is not positive definite.  The far point ends where it ends
    refined alone, with the analytic Hessian there; the other two keep the Hessians given (the same arrays' values,
    bit for bit) and each round's Hessians are computed at the moved point alone."""
    from kgmm_bayes.bayes import sampler

    potential, hessian, grad = _quartic()
    alone, _, alone_half, alone_f = sampler.newton_refine(
        potential, {"v": jax.numpy.asarray([[4.0, 4.0, 4.0]])}, hessian(np.full(3, 4.0))[None])
    minimum, _, _, _ = sampler.newton_refine(potential, {"v": jax.numpy.asarray([[1.3, 1.3, 1.3]])},
                                             hessian(np.full(3, 1.3))[None], steps=100, tolerance=1e-20)
    starts = np.stack([np.full(3, 4.0), np.asarray(minimum["v"][0]), np.full(3, 0.1)])
    given = np.stack([hessian(v) for v in starts])
    sizes = []
    flat_hessians = sampler._flat_hessians

    def counted(potential, template, flats):
        sizes.append(len(flats))
        return flat_hessians(potential, template, flats)

    monkeypatch.setattr(sampler, "_flat_hessians", counted)
    out, hessians, half, f = sampler.newton_refine(potential, {"v": jax.numpy.asarray(starts)}, given)
    v = np.asarray(out["v"])
    np.testing.assert_allclose(v[0], np.asarray(alone["v"][0]), rtol=1e-14)
    assert half[0] == pytest.approx(alone_half[0], rel=1e-9) and f[0] == pytest.approx(alone_f[0], rel=1e-14)
    np.testing.assert_allclose(hessians[0], hessian(v[0]), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(v[1:], starts[1:])
    np.testing.assert_array_equal(hessians[1:], given[1:])
    assert np.isnan(half[2]) and half[1] < 1e-14
    assert len(sizes) >= 2 and set(sizes) == {1}  # (from far off: more than one round, each at the moved point)


def test_chain_whitening_centres_each_chain_on_its_own_optimum():
    """``chain_whitening`` with chains at distinct optima: on ``(x^2 - 1)^2 + 0.4 x^3 + 2 (y - x / 2)^2`` (minima at
    the roots of ``4 x^2 + 1.2 x - 4``, curvatures ``12 x^2 + 2.4 x - 4`` in x: 6.96 and 9.38), three chains started
    0.05 off the two minima (picks 0, 1, 0) are each centred on their own minimum (within the Newton steps'
    tolerance of the analytic root) and whitened by the exact Laplace covariance there (``L L^T = H^-1``, ``L^-1 L = I``); without starts, one
    whitening at the given point."""
    from kgmm_bayes.bayes.sampler import NEWTON_DECREMENT, chain_whitening, hessian_matrix

    def potential(p):
        x, y = p["x"], p["y"]
        return (x ** 2 - 1) ** 2 + 0.4 * x ** 3 + 2.0 * (y - 0.5 * x) ** 2

    def hessian(x):
        return np.array([[12 * x ** 2 + 2.4 * x - 4 + 1.0, -2.0], [-2.0, 4.0]])

    roots = (-1.2 + np.array([1.0, -1.0]) * np.sqrt(1.44 + 64.0)) / 8.0  # 0.861, -1.161
    starts = {"x": jax.numpy.asarray(roots + 0.05), "y": jax.numpy.asarray(0.5 * roots - 0.05)}
    picks = np.array([0, 1, 0])
    chain_starts = jax.tree_util.tree_map(lambda leaf: leaf[picks], starts)
    centres, chols, inverses, decrements = chain_whitening(potential, None, None, chain_starts, picks)
    assert centres.shape == (3, 2) and chols.shape == inverses.shape == (3, 2, 2) and decrements.shape == (2,)
    for c, k in enumerate(picks):  # within the Newton steps' tolerance of its own minimum, not the other's
        x, y = (float(v) for v in centres[c])
        excess = float(potential({"x": x, "y": y})) - float(potential({"x": roots[k], "y": 0.5 * roots[k]}))
        assert 0.0 <= excess <= 2 * NEWTON_DECREMENT and abs(x - roots[k]) < 0.01
        np.testing.assert_allclose(np.asarray(chols[c] @ chols[c].T), np.linalg.inv(hessian(x)), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(inverses[c] @ chols[c]), np.eye(2), atol=1e-12)
    assert np.all(decrements <= NEWTON_DECREMENT)
    at = {"x": jax.numpy.asarray(roots[1]), "y": jax.numpy.asarray(0.5 * roots[1])}
    centre, chol, _, none = chain_whitening(potential, at, hessian_matrix(potential, at))
    assert centre.shape == (1, 2) and none is None
    np.testing.assert_allclose(np.asarray(chol[0] @ chol[0].T), np.linalg.inv(hessian(roots[1])), rtol=1e-10)


@pytest.mark.parametrize("chain_method", ["auto", "vectorized"])
def test_whitened_chains_map_back_through_their_own_whitening(chain_method, monkeypatch):
    """Each chain of a whitened posterior runs in its own coordinates (``theta = centre_c + L_c u``).  Any affine
    map leaves the posterior as it is, so each chain's centre is moved here by its own offset (0, 0.5, 1 Laplace
    sds along every coordinate): three chains, a round of parallel chains and a round of one on two devices
    ("auto"), or all three vectorised (as on one accelerator).  Every
    draw's potential, recomputed from its constrained sites, equals the potential the sampler recorded (exact
    identity: each chain is mapped back through its own centre), and the weight is recovered within its
    binomial error."""
    from numpyro.infer.util import potential_energy, unconstrain_fn

    import kgmm_bayes.bayes.sampler as sampler
    from kgmm_bayes.bayes.mixture import expected_quadratic_features, mixture_model

    real = sampler.chain_whitening
    moved = []

    def shifted(potential, params, hessian, starts=None, picks=None):
        centres, chols, inverses, decrements = real(potential, params, hessian, starts, picks)
        centres = jax.numpy.broadcast_to(centres, (3, centres.shape[1]))
        chols = jax.numpy.broadcast_to(chols, (3,) + chols.shape[1:])
        inverses = jax.numpy.broadcast_to(inverses, (3,) + inverses.shape[1:])
        sd = np.sqrt(np.diag(np.asarray(chols[0] @ chols[0].T)))
        centres = centres + jax.numpy.asarray(np.outer([0.0, 0.5, 1.0], sd))
        moved.append(np.asarray(centres))
        return centres, chols, inverses, decrements

    zs, part, prior = _two_component_problem()
    monkeypatch.setattr(sampler, "DENSE_ADAPTATION_MAX", 0)
    monkeypatch.setattr(sampler, "chain_whitening", shifted)
    post = run_nuts(jax.random.key(3), part.points, part.counts, prior, initial_values(part),
                    SamplerConfig(chains=3, warmup=200, draws=200, metric="dense", likelihood_cells=len(part.points),
                                  chain_method=chain_method),
                    point_covariances=part.cell_covariances)
    assert len(moved) == 1 and np.ptp(moved[0], axis=0).min() > 0  # three different centres
    assert str(post.sample_stats["metric"]) == "whitened" and int(post.sample_stats["diverging"].sum()) == 0
    args = (expected_quadratic_features(part.points, part.cell_covariances), jax.numpy.asarray(part.counts), prior)
    for chain in range(3):
        for draw in (0, 199):
            sites = {k: post.sites[k][chain, draw] for k in ("weights", "means", "scales")}
            energy = potential_energy(mixture_model, args, {}, unconstrain_fn(mixture_model, args, {}, sites))
            assert float(energy) == pytest.approx(float(post.sample_stats["potential_energy"][chain, draw]), rel=1e-10)
    w = np.sort(post.weights.reshape(-1, 2), axis=1)[:, 0]
    assert abs(w.mean() - 0.3) < 5 * max(w.std(), np.sqrt(0.21 / 600))


def test_laplace_centres_are_optima_even_where_the_polish_stops_early():
    """The Laplace posterior's centres (its ``map_optima`` at the chains' searches) are refined by Newton steps:
    with the L-BFGS polish cut to 3 iterations, each centre's potential is within twice ``NEWTON_DECREMENT`` of the
    optimum that 500 iterations reach from the same search (where 3 iterations alone stop more than 1e-3 nats above
    it), and its half Newton decrement is at most ``NEWTON_DECREMENT``; the searches no chain started at keep the
    polish's energies."""
    from numpyro.infer.util import unconstrain_fn

    from kgmm_bayes.bayes.mixture import expected_quadratic_features, mixture_model
    from kgmm_bayes.bayes.sampler import NEWTON_DECREMENT, find_map, laplace_posterior

    _, part, prior = _two_component_problem()
    config = SamplerConfig(chains=2, draws=50, map_starts=4, map_steps=30, map_polish=3, chain_starts="distinct")
    post = laplace_posterior(jax.random.key(2), part.points, part.counts, prior, initial_values(part), config,
                             point_covariances=part.cell_covariances)
    args = (expected_quadratic_features(part.points, part.cell_covariances), jax.numpy.asarray(part.counts), prior)
    init = jax.jit(lambda values: unconstrain_fn(mixture_model, args, {}, values))(initial_values(part))
    map_key = jax.random.split(jax.random.key(2))[1]
    _, energies = find_map(map_key, args, init, 4, 30, polish=3)
    _, converged = find_map(map_key, args, init, 4, 30, polish=500)
    picks = np.unique(post.sample_stats["start_optima"])
    refined = np.asarray(post.sample_stats["map_potential_energies"])
    decrements = np.asarray(post.sample_stats["laplace_newton_decrement"])
    assert len(decrements) == len(picks) and (decrements <= NEWTON_DECREMENT).all()
    assert (energies[picks] - converged[picks] > 1e-3).all()
    assert (np.abs(refined[picks] - converged[picks]) <= 2 * NEWTON_DECREMENT + 1e-9).all()
    others = np.setdiff1d(np.arange(4), picks)
    np.testing.assert_allclose(refined[others], energies[others], rtol=1e-12)


def test_adam_in_float32_finds_the_float64_optimum():
    """``adam_precision``: float32 Adam steps only where the sampler may take float32 (at least FLOAT32_MIN_WORK of
    work, precision not float64, rows not sharded); ``find_map`` with them, polished in float64, reaches the same
    best optimum as float64 Adam steps; an unknown precision is refused before any tracing."""
    from numpyro.infer.util import unconstrain_fn

    from kgmm_bayes.bayes.mixture import expected_quadratic_features, mixture_model
    from kgmm_bayes.bayes.sampler import FLOAT32_MIN_WORK, adam_precision, find_map

    _, part, prior = _two_component_problem()
    args = (expected_quadratic_features(part.points, part.cell_covariances), jax.numpy.asarray(part.counts), prior)
    rows, features = args[0].shape
    small = SamplerConfig(chains=4, warmup=100, draws=100)
    assert likelihood_work_of(small, rows, features) < FLOAT32_MIN_WORK and adam_precision(args, small) == "float64"
    big = small._replace(chains=int(np.ceil(FLOAT32_MIN_WORK / likelihood_work_of(small, rows, features))) * 4)
    assert adam_precision(args, big) == "float32"
    assert adam_precision(args, big._replace(likelihood_precision="float64")) == "float64"
    assert adam_precision(args, big, split=False) == "float64"
    init = unconstrain_fn(mixture_model, args, {}, initial_values(part))
    _, e64 = find_map(jax.random.key(2), args, init, 4, 300)
    _, e32 = find_map(jax.random.key(2), args, init, 4, 300, adam_precision="float32")
    assert e32.min() == pytest.approx(e64.min(), rel=1e-10, abs=1e-6)
    with pytest.raises(ValueError, match="adam_precision"):
        find_map(jax.random.key(2), args, init, 4, 300, adam_precision="float16")


def likelihood_work_of(config, rows, features):
    from kgmm_bayes.bayes.sampler import likelihood_work

    return likelihood_work(rows, features, 2, config)
