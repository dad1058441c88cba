r"""The Bayesian Gaussian mixture (DESIGN.md, "Posterior"), as a numpyro model.

.. math::

    w &\sim \mathrm{Dirichlet}(\alpha 1_K), \qquad
    \mu_k \sim \mathcal N(c_k, \mathrm{diag}(\tau s_k)^2), \\
    \sigma_{k,i} &\sim \mathrm{HalfCauchy}(\beta), \qquad
    L_k \sim \mathrm{LKJCholesky}(d, \eta), \qquad
    \Sigma_k = \mathrm{diag}(\sigma_k) L_k L_k^\top \mathrm{diag}(\sigma_k), \\
    \log p(x_{1:M}) &= \sum_m c_m \log \sum_k w_k \mathcal N(x_m; \mu_k, \Sigma_k),

with ``c_k, s_k`` the bisecting K-means centroids and spreads and ``c_m`` the
counts of the weighted points: all snapshots with unit counts, or the cells of
the fine partition (a coreset), each entering through its mean *and*
within-cell covariance (:func:`expected_quadratic_features`).

The likelihood is dense linear algebra: with ``P_k = \Sigma_k^{-1}`` the log
density of component ``k`` is a linear function of the fixed features
``phi(x) = [1, x_i, x_i x_j (i <= j)]``,

.. math::

    \log w_k \mathcal N(x; \mu_k, \Sigma_k) = \phi(x)^\top \gamma_k,

so all ``M x K`` log densities are one matrix product ``Phi @ Gamma`` per
gradient, followed by a logsumexp over components.  The features are computed
once per data set; ``Gamma`` costs K small triangular inversions.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.custom_derivatives import SymbolicZero

__all__ = [
    "MixturePrior",
    "quadratic_features",
    "expected_quadratic_features",
    "likelihood_features",
    "component_coefficients",
    "precision_terms",
    "mixture_loglik_dense",
    "loglik_from_coefficients",
    "loglik_plain",
    "block_rows_for",
    "mixture_model",
    "cov_cholesky",
    "precision_factors",
]

LOG_2PI = float(np.log(2.0 * np.pi))


class MixturePrior(NamedTuple):
    """Prior hyperparameters; arrays in z-scored coordinates."""

    centroids: jnp.ndarray  # (K, d)
    mean_scales: jnp.ndarray  # (K, d), standard deviation of mu_k around c_k
    dirichlet_alpha: float
    scale_prior: float  # HalfCauchy scale of sigma_k,i
    lkj_eta: float


def quadratic_features(x):
    """``phi(x) = [1, x_1..x_d, x_i x_j for i <= j]``, shape ``(n, 1 + d + d(d+1)/2)``."""
    x = jnp.asarray(x)
    d = x.shape[-1]
    iu, ju = np.triu_indices(d)
    quad = x[:, iu] * x[:, ju]
    return jnp.concatenate([jnp.ones_like(x[:, :1]), x, quad], axis=1)


def expected_quadratic_features(means, covariances):
    """Cell-averaged features ``E[phi(x)] = [1, m, m_i m_j + S_ij]`` of cells with means ``(M, d)``
    and within-cell covariances ``(M, d, d)``.

    Because ``log w_k N(x; mu_k, Sigma_k) = phi(x)^T gamma_k`` is linear in ``phi``,
    ``E_cell[phi]^T gamma_k`` is the exact cell average of each component's log
    density, and ``logsumexp_k`` of it is a lower bound (Jensen) on the cell average of
    the mixture log density, tight when cells are small against components.  Unlike
    point masses at the cell centres it keeps a component from collapsing onto one
    heavily weighted cell: a component narrower than a cell pays ``-tr(P_k S_m) / 2``.

    The cells are data (concrete arrays), so the features are computed in numpy, the same
    floats as op by op in JAX, which would compile each operation again for every new number
    of cells (about 0.2-0.5 s; the sampler's merged cells have their own number).
    """
    means = np.asarray(means, np.float64)
    covariances = np.asarray(covariances, np.float64)
    d = means.shape[-1]
    iu, ju = np.triu_indices(d)
    quad = means[:, iu] * means[:, ju] + covariances[:, iu, ju]
    return jnp.asarray(np.concatenate([np.ones((len(means), 1)), means, quad], axis=1))


def likelihood_features(points, point_covariances=None):
    """The likelihood's features of ``points`` ``(M, d)``: :func:`quadratic_features` of snapshots, or with
    ``point_covariances`` ``(M, d, d)`` the cells' :func:`expected_quadratic_features`."""
    if point_covariances is None:
        return quadratic_features(jnp.asarray(points))
    return expected_quadratic_features(points, point_covariances)


def cov_cholesky(scales, corr_chol):
    """``diag(sigma) L``: the Cholesky factor of ``Sigma``; shapes ``(K, d)``, ``(K, d, d)``."""
    return scales[..., :, None] * corr_chol


UNROLLED_MAX_DIM = 8


def precision_factors(cov_chol):
    """``W = L^{-1}`` (lower triangular), so ``P = W^T W``; batched over leading axes.

    Up to ``UNROLLED_MAX_DIM`` dimensions the inverse is forward substitution written
    out row by row, ``W_i = (e_i - sum_{k<i} L_ik W_k) / L_ii``, in plain array
    operations: cheaper than LAPACK for tiny matrices, and it keeps LAPACK's batched
    ``trsm`` (which waits on XLA's intra-op thread pool) out of chains that run in
    parallel on CPU devices, where such waits can deadlock.
    """
    d = cov_chol.shape[-1]
    if d > UNROLLED_MAX_DIM:
        eye = jnp.broadcast_to(jnp.eye(d, dtype=cov_chol.dtype), cov_chol.shape)
        return jax.scipy.linalg.solve_triangular(cov_chol, eye, lower=True)
    eye = jnp.eye(d, dtype=cov_chol.dtype)
    rows = []
    for i in range(d):
        acc = jnp.broadcast_to(eye[i], cov_chol.shape[:-1])
        for k in range(i):
            acc = acc - cov_chol[..., i, k, None] * rows[k]
        rows.append(acc / cov_chol[..., i, i, None])
    return jnp.stack(rows, axis=-2)


def precision_terms(means, cov_chol):
    """Precisions ``P_k = Sigma_k^{-1}`` ``(K, d, d)`` and ``P_k mu_k`` ``(K, d)``."""
    w_inv = precision_factors(cov_chol)  # (K, d, d)
    prec = jnp.einsum("kji,kjl->kil", w_inv, w_inv)  # W^T W
    return prec, jnp.einsum("kij,kj->ki", prec, means)


def component_coefficients(weights, means, cov_chol, terms=None):
    """Coefficients ``Gamma`` ``(F, K)`` with ``phi(x) @ Gamma = log w_k N(x; mu_k, Sigma_k)``.

    ``terms``: :func:`precision_terms` of ``(means, cov_chol)`` when the caller has them already.
    """
    d = means.shape[-1]
    prec, prec_mu = precision_terms(means, cov_chol) if terms is None else terms
    log_det_chol = jnp.sum(jnp.log(jnp.diagonal(cov_chol, axis1=-2, axis2=-1)), axis=-1)
    const = (jnp.log(weights) - 0.5 * jnp.sum(means * prec_mu, axis=-1) - log_det_chol
             - 0.5 * d * LOG_2PI)
    iu, ju = np.triu_indices(d)
    quad = jnp.where(iu == ju, -0.5, -1.0) * prec[:, iu, ju]  # (K, d(d+1)/2)
    return jnp.concatenate([const[:, None], prec_mu, quad], axis=1).T


#: Rows of the likelihood are taken in blocks whose ``(rows, K)`` log densities fill
#: about this many bytes (the size of a core's L2 cache here), so that the max, the
#: exponentials and the weighted softmax of a block are computed while it is in cache.
BLOCK_BYTES = 4 * 2**20
#: float32 blocks of at most this many log densities (rows x K, 1 MiB) are laid out (K, rows)
#: (:func:`_block_terms_by_component`); larger ones are slower so, and keep (rows, K) (one core: 16,000 rows x 16
#: components 1.80x faster, 20,000 x 16 0.34x; the whole gradient of 100,000 snapshots x 32 components in blocks
#: of 32,768 rows 8.6x slower; ``bench_gradient.py``, its ``--layouts`` with ``--layout-cases``).
COMPONENT_LAYOUT_MAX = 2**18


def block_rows_for(k: int, dtype) -> int:
    """Rows per block of the likelihood for ``k`` components in ``dtype`` (see :data:`BLOCK_BYTES`)."""
    return max(1024, BLOCK_BYTES // (k * jnp.dtype(dtype).itemsize))


def _block_terms(features, counts, gamma):
    """Value and ``gamma``-gradient of ``sum_m c_m logsumexp_k (Phi @ Gamma)_mk`` on a block of rows.

    The gradient is ``Phi^T (c * softmax(Phi @ Gamma))``: the softmax comes from the same
    exponentials as the value, so each entry is exponentiated once.

    The block is computed in the features' precision (float32 features: the sampler's
    ``likelihood_precision``, :func:`~kgmm_bayes.bayes.sampler.run_nuts`), the value and gradient
    returned in ``gamma``'s, each row's term weighted by its count in that precision.
    """
    out = gamma.dtype
    gamma = gamma.astype(features.dtype)
    if features.dtype == jnp.float32 and features.shape[0] * gamma.shape[1] <= COMPONENT_LAYOUT_MAX:
        return _block_terms_by_component(features, counts, gamma, out)
    return _block_terms_by_row(features, counts, gamma, out)


def _block_terms_by_row(features, counts, gamma, out):
    """:func:`_block_terms` with the log densities laid out ``(rows, K)``: float64's faster layout."""
    log_comp = features @ gamma  # (rows, K)
    top = jnp.max(log_comp, axis=1, keepdims=True)
    # Rows where every component has log density -inf get -inf (not nan) as their value.
    top = jax.lax.stop_gradient(jnp.maximum(top, jnp.finfo(log_comp.dtype).min))
    scaled = jnp.exp(log_comp - top)
    total = jnp.sum(scaled, axis=1, keepdims=True)
    value = jnp.sum(counts * (top[:, 0] + jnp.log(total[:, 0])).astype(out))
    return value, (features.T @ (scaled * (counts[:, None].astype(features.dtype) / total))).astype(out)


def _block_terms_by_component(features, counts, gamma, out):
    """:func:`_block_terms` in float32, with the log densities laid out ``(K, rows)`` (rows contiguous).

    XLA's CPU code is faster so in float32: the whole potential's value and gradient on one core (as each NUTS
    chain runs) 1.48-1.54x on Lorenz-63's 2,000 cells x 32 components, 1.35x in four dimensions, 1.33x at K = 24,
    1.93x in two dimensions at K = 16, 1.21x in five at K = 32, 1.30x on 500 merged cells.  In float64 it is
    0.91-0.99x at 2,000 cells, so float64 keeps the ``(rows, K)`` layout
    (``taskset -c 0 python benchmarks/bench_gradient.py --layouts``), as do blocks of more than
    :data:`COMPONENT_LAYOUT_MAX` log densities."""
    by_row = features.T  # (F, rows)
    log_comp = gamma.T @ by_row  # (K, rows)
    top = jnp.max(log_comp, axis=0, keepdims=True)
    top = jax.lax.stop_gradient(jnp.maximum(top, jnp.finfo(log_comp.dtype).min))
    scaled = jnp.exp(log_comp - top)
    total = jnp.sum(scaled, axis=0, keepdims=True)
    value = jnp.sum(counts * (top[0] + jnp.log(total[0])).astype(out))
    weighted = scaled * (counts[None, :].astype(features.dtype) / total)  # (K, rows)
    return value, jax.lax.dot_general(by_row, weighted, (((1,), (1,)), ((), ()))).astype(out)


def _loglik_and_grad(features, counts, gamma, block_rows):
    """:func:`_block_terms` summed over blocks of ``block_rows`` rows (``lax.scan``), the rest last."""
    n = features.shape[0]
    blocks = n // block_rows if block_rows else 0
    if blocks < 2:
        return _block_terms(features, counts, gamma)
    head = blocks * block_rows

    def add_block(carry, block):
        value, grad = _block_terms(*block, gamma)
        return (carry[0] + value, carry[1] + grad), None

    stacked = (features[:head].reshape(blocks, block_rows, -1), counts[:head].reshape(blocks, block_rows))
    # The carry takes the blocks' own dtypes (counts may be of another float type than Gamma).
    shapes = jax.eval_shape(_block_terms, stacked[0][0], stacked[1][0], gamma)
    zero = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    (value, grad), _ = jax.lax.scan(add_block, zero, stacked)
    if head < n:
        tail_value, tail_grad = _block_terms(features[head:], counts[head:], gamma)
        value, grad = value + tail_value, grad + tail_grad
    return value, grad


def loglik_plain(features, counts, gamma):
    """The same value as :func:`loglik_from_coefficients`, written plainly: under autodiff, the
    unfused derivative (the benchmarks' comparison, and the rule's derivative in the data)."""
    return jnp.sum(counts * jax.nn.logsumexp(features @ gamma, axis=-1))


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def loglik_from_coefficients(features, counts, gamma, block_rows=None):
    """``sum_m counts_m logsumexp_k (features @ gamma)_mk``, with a fused derivative in ``gamma``.

    Differentiated, the value and ``d/d gamma`` come from one pass over the rows
    (:func:`_block_terms`): autodiff of the plain expression instead runs over the
    ``(M, K)`` log densities several times more (max, exponentials, sums, the softmax,
    the cotangent).  ``block_rows``: rows per block (``None``: one block); blocks keep
    those passes in cache.  Higher derivatives (the sampler's Hessian-vector products)
    differentiate the fused rule itself.
    """
    return _loglik_and_grad(features, counts, gamma, block_rows)[0]


def _loglik_jvp(block_rows, primals, tangents):
    features, counts, gamma = primals
    value, grad = _loglik_and_grad(features, counts, gamma, block_rows)
    tangent = jnp.zeros((), value.dtype)
    if not isinstance(tangents[2], SymbolicZero):
        tangent = tangent + jnp.sum(grad * tangents[2])
    # The data are constants in the sampler; where they are perturbed, their part of the
    # derivative is the plain expression's.
    moving = [i for i in (0, 1) if not isinstance(tangents[i], SymbolicZero)]
    if moving:
        def plain(*values):
            args = list(primals[:2])
            for i, v in zip(moving, values):
                args[i] = v
            return loglik_plain(args[0], args[1], gamma)

        tangent = tangent + jax.jvp(plain, tuple(primals[i] for i in moving),
                                    tuple(tangents[i] for i in moving))[1]
    return value, tangent


loglik_from_coefficients.defjvp(_loglik_jvp, symbolic_zeros=True)


def mixture_loglik_dense(features, counts, weights, means, cov_chol, block_rows="auto"):
    """``sum_m counts_m log sum_k w_k N(x_m; mu_k, Sigma_k)`` from precomputed features.

    ``block_rows``: ``"auto"`` (:func:`block_rows_for`), an int, or ``None`` for one
    block (rows sharded over devices must not be re-blocked).
    """
    gamma = component_coefficients(weights, means, cov_chol)  # (F, K)
    if block_rows == "auto":
        block_rows = block_rows_for(gamma.shape[1], gamma.dtype)
    return loglik_from_coefficients(features, counts, gamma, block_rows)


def mixture_model(features, counts, prior: MixturePrior, block_rows="auto"):
    """numpyro model of the Bayesian mixture on weighted points (see module docstring).

    ``features`` are :func:`quadratic_features` of the points and ``counts``
    their weights; the number of components and dimension come from the prior.
    ``block_rows``: as in :func:`mixture_loglik_dense`.
    """
    k, d = prior.centroids.shape
    # validate_args=False: the prior's parameters come from the spec's checked numbers and the partition's floored
    # spreads (a hand-built MixturePrior is not checked); numpyro's checks would run eagerly whenever the model is
    # run outside a compiled program (numpyro's initialisation), each compiling small programs (0.5 s of a cold
    # posterior on the default study)
    weights = numpyro.sample("weights", dist.Dirichlet(jnp.full((k,), prior.dirichlet_alpha), validate_args=False))
    means = numpyro.sample("means", dist.Normal(prior.centroids, prior.mean_scales, validate_args=False).to_event(2))
    scales = numpyro.sample("scales", dist.HalfCauchy(jnp.full((k, d), prior.scale_prior),
                                                      validate_args=False).to_event(2))
    if d > 1:
        corr_chol = numpyro.sample("corr_chol", dist.LKJCholesky(d, prior.lkj_eta, validate_args=False)
                                   .expand([k]).to_event(1))
    else:
        corr_chol = jnp.ones((k, 1, 1), dtype=scales.dtype)
    cov_chol = numpyro.deterministic("cov_chol", cov_cholesky(scales, corr_chol))
    numpyro.factor("loglik", mixture_loglik_dense(features, counts, weights, means, cov_chol, block_rows))
