"""Figures of a study (PNG, matplotlib's Agg backend), in physical units."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .metrics import gaussian_kde_1d  # noqa: E402

__all__ = ["plot_score", "plot_marginals"]


def plot_score(path, points, summary, counts, interpolant_score=None, true_score=None, band=0.9):
    """Posterior-mean score with its band at the target points, per coordinate.

    1-D: curves over x.  d > 1: each score component against its coordinate,
    points coloured by band width (a projection: the field depends on all
    coordinates).
    """
    d = points.shape[1]
    fig, axes = plt.subplots(1, d, figsize=(5.2 * d, 4), squeeze=False)
    for i, ax in enumerate(axes[0]):
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_marginals(path, reference, model, relative_entropies, grid_points=512):
    """Marginal PDFs of the reduced-order model against the reference, per coordinate."""
    d = reference.shape[1]
    fig, axes = plt.subplots(1, d, figsize=(4.5 * d, 3.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        lo = min(reference[:, i].min(), model[:, i].min())
        hi = max(reference[:, i].max(), model[:, i].max())
        grid = np.linspace(lo, hi, grid_points)
        ax.plot(grid, gaussian_kde_1d(reference[:, i], grid), "k-", label="reference")
        ax.plot(grid, gaussian_kde_1d(model[:, i], grid), "C1--", label="reduced-order model")
        ax.set_title(f"x{i}: relative entropy {relative_entropies[i]:.2e}", fontsize=9)
        ax.set_xlabel(f"x{i}")
        ax.set_ylabel("pdf")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
