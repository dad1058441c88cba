"""How close a model's statistics are to the data's: densities and distances (:mod:`.density`),
time-series statistics (:mod:`.series`)."""
from .density import (
                      band_coverage,
                      gaussian_kde_1d,
                      marginal_relative_entropies,
                      relative_entropy,
                      weighted_score_error,
)
from .series import decorrelation_time, ks_statistics, one_point_pdf, two_point_pdfs

__all__ = ["gaussian_kde_1d", "relative_entropy", "marginal_relative_entropies", "weighted_score_error",
           "band_coverage", "one_point_pdf", "two_point_pdfs", "decorrelation_time", "ks_statistics"]
