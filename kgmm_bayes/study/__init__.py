"""A study from a spec: its stages and their cache (:mod:`.stages`), the run that chains them
(:mod:`.run`), the output folder (:mod:`.outputs`), the report and figures, the posterior
ensemble stage (:mod:`.ensemble`), and the comparison (:mod:`.compare`) and calibration
(:mod:`.calibrate`) studies built on it."""
from .load import load_result
from .run import run_study

__all__ = ["run_study", "load_result"]
