"""Figures of a study (PNG, drawn on matplotlib Figure objects without pyplot), in physical units."""
from __future__ import annotations

from matplotlib.figure import Figure  # figures drawn without pyplot: no backend is switched
import numpy as np

from .metrics import gaussian_kde_1d

__all__ = ["plot_score", "plot_marginals", "plot_ensemble_marginals", "plot_ensemble_acf",
           "plot_relative_entropy"]


def _axes_row(d, width, height):
    """A figure with one row of ``d`` axes, ``width x height`` inches each."""
    fig = Figure(figsize=(width * d, height))
    return fig, fig.subplots(1, d, squeeze=False)[0]


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_score(path, points, summary, counts, interpolant_score=None, true_score=None, band=0.9):
    """Posterior-mean score with its band at the target points, per coordinate.

    1-D: curves over x.  d > 1: each score component against its coordinate,
    points coloured by band width (a projection: the field depends on all
    coordinates).
    """
    d = points.shape[1]
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
            ax.set_xlabel("x")
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
                ax.set_xlabel(f"analytic score {i}")
            else:
                ax.set_xlabel(f"x{i}")
            ax.set_ylabel(f"posterior-mean score {i}")
    _save(fig, path)


def plot_marginals(path, reference, model, relative_entropies, grid_points=512):
    """Marginal PDFs of the reduced-order model against the reference, per coordinate."""
    d = reference.shape[1]
    fig, axes = _axes_row(d, 4.5, 3.6)
    for i, ax in enumerate(axes):
        lo = min(reference[:, i].min(), model[:, i].min())
        hi = max(reference[:, i].max(), model[:, i].max())
        grid = np.linspace(lo, hi, grid_points)
        ax.plot(grid, gaussian_kde_1d(reference[:, i], grid), "k-", label="reference")
        ax.plot(grid, gaussian_kde_1d(model[:, i], grid), "C1--", label="reduced-order model")
        ax.set_title(f"x{i}: relative entropy {relative_entropies[i]:.2e}", fontsize=9)
        ax.set_xlabel(f"x{i}")
        ax.set_ylabel("pdf")
        ax.legend(fontsize=8)
    _save(fig, path)


def _band_fill(ax, x, band, color, label):
    """Median curve with shaded 90% (light) and 50% (dark) credible bands."""
    ax.fill_between(x, band.lower90, band.upper90, color=color, alpha=0.2, lw=0, label="90% band")
    ax.fill_between(x, band.lower50, band.upper50, color=color, alpha=0.4, lw=0, label="50% band")
    ax.plot(x, band.median, color=color, lw=1.4, label=label)


def plot_ensemble_marginals(path, grid, pdf_band, reference_pdf, entropy_median=None):
    """Posterior-ensemble marginal PDFs (median, 50%/90% bands, ``(d, G)`` each) against the reference."""
    d = grid.shape[0]
    fig, axes = _axes_row(d, 4.5, 3.6)
    for i, ax in enumerate(axes):
        _band_fill(ax, grid[i], type(pdf_band)(*(b[i] for b in pdf_band)), "C1", "ensemble median")
        if reference_pdf is not None:
            ax.plot(grid[i], reference_pdf[i], "k-", lw=1, label="reference")
        if entropy_median is not None:
            ax.set_title(f"x{i}: median relative entropy {entropy_median[i]:.2e}", fontsize=9)
        ax.set_xlabel(f"x{i}")
        ax.set_ylabel("pdf")
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_ensemble_acf(path, lags, acf_band, reference_lags=None, reference_acf=None, reference_label="reference"):
    """Ensemble autocorrelation functions (bands ``(L + 1, d)``) against the reference's, per coordinate.

    Both are drawn against lag in their own time units (the model's is Langevin time).
    """
    d = acf_band.median.shape[-1]
    fig, axes = _axes_row(d, 4.5, 3.4)
    for i, ax in enumerate(axes):
        _band_fill(ax, lags, type(acf_band)(*(b[:, i] for b in acf_band)), "C0", "ensemble median")
        if reference_acf is not None:
            keep = reference_lags <= lags[-1]
            ax.plot(reference_lags[keep], reference_acf[keep, i], "k.-", lw=1, label=reference_label)
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_xlabel("lag (model: Langevin time)")
        ax.set_ylabel(f"ACF of x{i}")
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_relative_entropy(path, relative_entropy, floor=None):
    """Per-member relative entropies ``(S, d)``: one strip per marginal and for their mean,
    with the median and the 5%-95% range marked (log scale)."""
    rel = np.asarray(relative_entropy, dtype=np.float64)
    columns = [rel[:, i] for i in range(rel.shape[1])] + [rel.mean(axis=1)]
    labels = [f"x{i}" for i in range(rel.shape[1])] + ["mean"]
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
