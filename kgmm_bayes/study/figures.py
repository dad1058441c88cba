"""Figures of a study (PNG, drawn on matplotlib Figure objects without pyplot), in physical units."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from matplotlib.figure import (
    Figure,  # figures drawn without pyplot: no backend is switched
)

from .._picks import evenly_spaced
from ..bayes.correction import model_score_band
from ..bayes.score import band_with_bias, score_draws, summarize_scores
from ..data.labelled import variable_names
from ..metrics import gaussian_kde_1d

__all__ = ["plot_score", "plot_score_field", "score_field", "ScoreField", "plot_marginals",
           "plot_ensemble_marginals", "plot_ensemble_acf", "plot_relative_entropy", "plot_dynamics"]


def _axes_row(d, width, height):
    """A figure with one row of ``d`` axes, ``width x height`` inches each."""
    fig = Figure(figsize=(width * d, height))
    return fig, fig.subplots(1, d, squeeze=False)[0]


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_score(path, points, summary, counts, interpolant_score=None, true_score=None, band=0.9, names=None):
    """Posterior-mean score with its band at the target points, per coordinate.

    1-D: curves over x.  d > 1: each score component against its coordinate,
    points coloured by band width (a projection: the field depends on all
    coordinates).
    """
    d = points.shape[1]
    names = variable_names(names, d)
    fig, axes = _axes_row(d, 5.2, 4)
    for i, ax in enumerate(axes):
        if d == 1:
            order = np.argsort(points[:, 0])
            x = points[order, 0]
            ax.fill_between(x, summary.lower[order, 0], summary.upper[order, 0], color="C0", alpha=0.3,
                            label=f"{int(band * 100)}% band")
            ax.plot(x, summary.mean[order, 0], color="C0", label="posterior mean")
            if interpolant_score is not None:
                ax.plot(x, interpolant_score[order, 0], color="C2", ls="--", label="interpolant")
            if true_score is not None:
                ax.plot(x, true_score[order, 0], color="k", lw=1, label="analytic")
            ax.set_xlabel(names[0])
            ax.set_ylabel("score")
            ax.legend(fontsize=8)
        else:
            width = summary.upper[:, i] - summary.lower[:, i]
            ref = true_score[:, i] if true_score is not None else points[:, i]
            sc = ax.scatter(ref, summary.mean[:, i], c=width, s=4, cmap="viridis")
            fig.colorbar(sc, ax=ax, label=f"{int(band * 100)}% band width")
            if true_score is not None:
                lim = [np.min(ref), np.max(ref)]
                ax.plot(lim, lim, "k-", lw=0.8)
                ax.set_xlabel(f"analytic score {names[i]}")
            else:
                ax.set_xlabel(names[i])
            ax.set_ylabel(f"posterior-mean score {names[i]}")
    _save(fig, path)


class ScoreField(NamedTuple):
    """Posterior score of a 2-D model on a regular grid, physical units.

    Arrays over the grid are ``(ny, nx, ...)``: entry ``[j, i]`` is at ``(x[i], y[j])``
    (the layout of ``meshgrid``, ``streamplot`` and ``pcolormesh``).
    """

    x: np.ndarray  # (nx,) grid of coordinate 0
    y: np.ndarray  # (ny,) grid of coordinate 1
    mean: np.ndarray  # (ny, nx, 2) posterior-mean score
    lower: np.ndarray  # (ny, nx, 2) lower end of the credible band, per component
    upper: np.ndarray  # (ny, nx, 2) upper end
    width: np.ndarray  # (ny, nx) band width summed over the 2 components
    band: float  # credible mass of [lower, upper]
    draws: int  # posterior draws used (after thinning)


def _check_2d(data, means):
    d_data, d_model = np.shape(data)[-1], np.shape(means)[-1]
    if d_data != 2 or d_model != 2:
        raise ValueError(f"score field figure needs 2-dimensional data and model; got data of dimension "
                         f"{d_data} and a model of dimension {d_model} (use plot_score for other dimensions)")


def score_field(draws, zscore, data, band=0.9, grid_points=48, max_draws=200, quantiles=(0.005, 0.995),
                pad=0.05, score_bias=None, correction=None):
    """Posterior score field over a grid covering 2-D ``data`` (physical units), see :class:`ScoreField`.
    ``score_bias``: the posterior's :class:`~kgmm_bayes.bayes.score_matching.BiasField`, if it has one (the band
    is then at least the local bias wide, as the study's score band); ``correction``: the posterior-mean score's
    applied :class:`~kgmm_bayes.bayes.correction.ScoreCorrection`, if any (the field and band of the corrected
    score, :func:`~kgmm_bayes.bayes.correction.model_score_band`: the draws' band moved by it and widened by its
    sampling error, in the local bias's place).

    ``draws`` = ``(weights (S, K), means (S, K, 2), cov_chol (S, K, 2, 2))`` in z-scored
    coordinates, thinned evenly to at most ``max_draws``.  The grid spans the
    ``quantiles`` range of each coordinate of ``data`` widened by ``pad`` of that range on
    each side, ``grid_points`` points per coordinate.
    """
    weights, means, cov_chol = (np.asarray(a) for a in draws)
    data = np.asarray(data, dtype=np.float64)
    _check_2d(data, means)
    if not 0.0 < band < 1.0:
        raise ValueError(f"band must lie in (0, 1); got {band}")
    data = data.reshape(-1, 2)
    n_draws = len(weights)
    keep = evenly_spaced(n_draws, max(1, int(max_draws)))
    weights, means, cov_chol = weights[keep], means[keep], cov_chol[keep]
    lo, hi = np.quantile(data, quantiles, axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    lo, hi = lo - pad * span, hi + pad * span
    x = np.linspace(lo[0], hi[0], grid_points)
    y = np.linspace(lo[1], hi[1], grid_points)
    points = np.stack([g.ravel() for g in np.meshgrid(x, y)], axis=-1)  # (ny * nx, 2), x fastest
    scores, logps = score_draws(weights, means, cov_chol, zscore.forward(points))
    quantiles = summarize_scores(scores, logps, band)

    def widen(q):  # the posterior mean's local bias (kgmm_bayes.bayes.score.band_with_bias)
        return q if score_bias is None else band_with_bias(q, score_bias.squared(zscore.forward(points)))

    summary = model_score_band(quantiles, widen, correction, zscore.forward(points))
    std = np.asarray(zscore.std)
    shape = (len(y), len(x), 2)
    mean, lower, upper = (np.reshape(a / std, shape) for a in (summary.mean, summary.lower, summary.upper))
    return ScoreField(x=x, y=y, mean=mean, lower=lower, upper=upper, width=np.sum(upper - lower, axis=-1),
                      band=band, draws=len(keep))


def _data_density(data, x, y, max_points=2000):
    """Gaussian KDE of 2-D ``data`` on the grid ``(len(y), len(x))`` (Scott bandwidth, evenly
    strided subsample), the density levels (ascending) whose contours enclose about 99%, 90%
    and 50% of the data, and those masses as labels."""
    data = data[evenly_spaced(len(data), max_points)]
    h = np.maximum(data.std(axis=0), 1e-12) * len(data) ** (-1.0 / 6.0)

    def kde(px, py):
        ex = np.exp(-0.5 * ((px[:, None] - data[None, :, 0]) / h[0]) ** 2)
        ey = np.exp(-0.5 * ((py[:, None] - data[None, :, 1]) / h[1]) ** 2)
        return (ex * ey).mean(axis=1) / (2.0 * np.pi * h[0] * h[1])

    gx, gy = np.meshgrid(x, y)
    density = kde(gx.ravel(), gy.ravel()).reshape(gx.shape)
    at_data = kde(data[:, 0], data[:, 1])
    levels, names = [], []
    for level, name in zip(np.quantile(at_data, [0.01, 0.1, 0.5]), ["99%", "90%", "50%"]):
        if not levels or level > levels[-1]:  # the mass inside the contour of density `level`
            levels.append(level)
            names.append(name)
    return density, np.array(levels), names


def plot_score_field(path, draws, zscore, data, band=0.9, grid_points=48, max_draws=200, names=None,
                     score_bias=None, correction=None):
    """Score field of a 2-D model over its data, physical units: two panels.

    Left: posterior-mean score as streamlines coloured by its magnitude, over the data
    density (grey, filled contours enclosing about 99%, 90% and 50% of the data).
    Right: width of the ``band`` credible interval of the score, summed over both
    components, with the same data-density contours as lines: bands widen away from data.
    Arguments as :func:`score_field`; ``ValueError`` unless the data and model are 2-D.
    """
    field = score_field(draws, zscore, data, band, grid_points, max_draws, score_bias=score_bias,
                        correction=correction)
    data = np.asarray(data, dtype=np.float64).reshape(-1, 2)
    density, levels, level_names = _data_density(data, field.x, field.y)
    extent = (field.x[0], field.x[-1], field.y[0], field.y[-1])
    pct = f"{band * 100:g}%"
    fig, (left, right) = _axes_row(2, 5.6, 4.6)

    top = max(density.max(), levels[-1]) * 1.01
    left.contourf(field.x, field.y, density, levels=np.append(levels, top), cmap="Greys", alpha=0.45,
                  vmin=0.0, vmax=1.6 * top)
    magnitude = np.linalg.norm(field.mean, axis=-1)
    stream = left.streamplot(field.x, field.y, field.mean[..., 0], field.mean[..., 1], color=magnitude,
                             cmap="plasma", density=1.2, linewidth=0.9, arrowsize=0.9)
    fig.colorbar(stream.lines, ax=left, label="|posterior-mean score|")
    left.set_title(f"posterior-mean score ({field.draws} draws); grey: data", fontsize=9)

    mesh = right.pcolormesh(field.x, field.y, field.width, cmap="viridis", shading="auto")
    fig.colorbar(mesh, ax=right, label=f"{pct} band width, summed over both components")
    lines = right.contour(field.x, field.y, density, levels=levels, colors="w", linewidths=0.9)
    right.clabel(lines, fmt=lambda v: level_names[int(np.argmin(np.abs(levels - v)))], fontsize=7)
    right.set_title(f"{pct} band width of the score; lines: data (mass inside)", fontsize=9)
    for ax in (left, right):
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_xlabel(variable_names(names, 2)[0])
        ax.set_ylabel(variable_names(names, 2)[1])
    _save(fig, path)


def plot_marginals(path, reference, model, relative_entropies, grid_points=512, names=None):
    """Marginal PDFs of the reduced-order model against the reference, per coordinate."""
    d = reference.shape[1]
    names = variable_names(names, d)
    fig, axes = _axes_row(d, 4.5, 3.6)
    for i, ax in enumerate(axes):
        lo = min(reference[:, i].min(), model[:, i].min())
        hi = max(reference[:, i].max(), model[:, i].max())
        grid = np.linspace(lo, hi, grid_points)
        ax.plot(grid, gaussian_kde_1d(reference[:, i], grid), "k-", label="reference")
        ax.plot(grid, gaussian_kde_1d(model[:, i], grid), "C1--", label="reduced-order model")
        ax.set_title(f"{names[i]}: relative entropy {relative_entropies[i]:.2e}", fontsize=9)
        ax.set_xlabel(names[i])
        ax.set_ylabel("pdf")
        ax.legend(fontsize=8)
    _save(fig, path)


def _band_fill(ax, x, band, color, label):
    """Median curve with shaded 90% (light) and 50% (dark) credible bands."""
    ax.fill_between(x, band.lower90, band.upper90, color=color, alpha=0.2, lw=0, label="90% band")
    ax.fill_between(x, band.lower50, band.upper50, color=color, alpha=0.4, lw=0, label="50% band")
    ax.plot(x, band.median, color=color, lw=1.4, label=label)


def plot_ensemble_marginals(path, grid, pdf_band, reference_pdf, entropy_median=None, names=None):
    """Posterior-ensemble marginal PDFs (median, 50%/90% bands, ``(d, G)`` each) against the reference."""
    d = grid.shape[0]
    names = variable_names(names, d)
    fig, axes = _axes_row(d, 4.5, 3.6)
    for i, ax in enumerate(axes):
        _band_fill(ax, grid[i], type(pdf_band)(*(b[i] for b in pdf_band)), "C1", "ensemble median")
        if reference_pdf is not None:
            ax.plot(grid[i], reference_pdf[i], "k-", lw=1, label="reference")
        if entropy_median is not None:
            ax.set_title(f"{names[i]}: median relative entropy {entropy_median[i]:.2e}", fontsize=9)
        ax.set_xlabel(names[i])
        ax.set_ylabel("pdf")
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_ensemble_acf(path, lags, acf_band, reference_lags=None, reference_acf=None, reference_label="reference",
                      names=None):
    """Ensemble autocorrelation functions (bands ``(L + 1, d)``) against the reference's, per coordinate.

    Both are drawn against lag in their own time units (the model's is Langevin time).
    """
    d = acf_band.median.shape[-1]
    names = variable_names(names, d)
    fig, axes = _axes_row(d, 4.5, 3.4)
    for i, ax in enumerate(axes):
        _band_fill(ax, lags, type(acf_band)(*(b[:, i] for b in acf_band)), "C0", "ensemble median")
        if reference_acf is not None:
            keep = reference_lags <= lags[-1]
            ax.plot(reference_lags[keep], reference_acf[keep, i], "k.-", lw=1, label=reference_label)
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_xlabel("lag (model: Langevin time)")
        ax.set_ylabel(f"ACF of {names[i]}")
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_relative_entropy(path, relative_entropy, floor=None, names=None):
    """Per-member relative entropies ``(S, d)``: one strip per marginal and for their mean,
    with the median and the 5%-95% range marked (log scale)."""
    rel = np.asarray(relative_entropy, dtype=np.float64)
    columns = [rel[:, i] for i in range(rel.shape[1])] + [rel.mean(axis=1)]
    labels = list(variable_names(names, rel.shape[1])) + ["mean"]
    fig = Figure(figsize=(1.3 * len(columns) + 2.5, 3.6))
    ax = fig.subplots()
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, rel.shape[0])
    for j, values in enumerate(columns):
        ok = np.isfinite(values) & (values > 0)
        ax.scatter(j + jitter[ok], values[ok], s=10, color="C0", alpha=0.6)
        if ok.any():
            lo, med, hi = np.quantile(values[ok], [0.05, 0.5, 0.95])
            ax.plot([j, j], [lo, hi], color="k", lw=2)
            ax.plot([j - 0.25, j + 0.25], [med, med], color="C3", lw=2)
    if floor is not None:
        ax.axhline(floor, color="0.5", ls="--", lw=1, label="sampling floor (data vs reference, mean)")
        ax.legend(fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(columns)), labels)
    ax.set_ylabel("relative entropy (reference || member)")
    ax.set_title(f"{rel.shape[0]} posterior members: median (red), 5%-95% (black)", fontsize=9)
    _save(fig, path)


MAX_PAIRS_SHOWN = 4  # dynamics figures show the pairs (i, j) of the first few coordinates


def _pair_figure(path, d, draw, title, xlabel):
    """A grid of the pairs (i, j) of the first :data:`MAX_PAIRS_SHOWN` coordinates: ``draw(ax, i, j)``
    fills a panel, ``title(i, j)`` names it; the zero line and the first panel's legend are added."""
    shown = min(d, MAX_PAIRS_SHOWN)
    fig = Figure(figsize=(3.2 * shown, 2.6 * shown))
    axes = np.asarray(fig.subplots(shown, shown, squeeze=False))
    for i in range(shown):
        for j in range(shown):
            ax = axes[i, j]
            draw(ax, i, j)
            ax.axhline(0.0, color="0.7", lw=0.6)
            ax.set_title(title(i, j), fontsize=8)
            ax.set_xlabel(xlabel)
    axes[0, 0].legend(fontsize=7)
    _save(fig, path)


def plot_dynamics(folder, arrays: dict, names=None):
    """``correlations.png`` (``C_ij(tau)`` of the data and, where simulated, of the model, with the
    posterior ensemble's band where there is one) and ``responses.png`` (impulse responses ``R_ij(t)``
    with their credible band), in physical time."""
    import os

    lags, data_c = arrays["lags"], arrays["data_correlation"]
    d = data_c.shape[1]
    names = variable_names(names, d)

    def correlation(ax, i, j):
        ax.plot(lags, data_c[:, i, j], "k-", label="data")
        if "model_correlation_lower" in arrays:
            ax.fill_between(lags, arrays["model_correlation_lower"][:, i, j], arrays["model_correlation_upper"][:, i, j],
                            color="C1", alpha=0.25, lw=0, label="posterior ensemble band")
        if "model_correlation" in arrays:
            ax.plot(lags, arrays["model_correlation"][:, i, j], "C1--", label="reduced-order model")

    def response(ax, i, j):
        ax.fill_between(lags, arrays["lower"][:, i, j], arrays["upper"][:, i, j], color="C0", alpha=0.3, lw=0,
                        label="credible band")
        ax.plot(lags, arrays["mean"][:, i, j], "C0-", label="posterior mean")

    _pair_figure(os.path.join(folder, "correlations.png"), d, correlation,
                 lambda i, j: f"corr({names[i]}(t + tau), {names[j]}(t))", "tau")
    _pair_figure(os.path.join(folder, "responses.png"), d, response,
                 lambda i, j: f"response of {names[i]} to an impulse in {names[j]}", "t")
