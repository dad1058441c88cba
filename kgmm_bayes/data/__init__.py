"""The data's path into the pipeline: trajectories read and validated (:mod:`.trajectory`), the
z-score transform (:mod:`.zscore`), and the built-in reference systems (:mod:`.systems`)."""
from ..errors import InputError
from .trajectory import (
    StudyData,
    as_members,
    load_trajectory,
    split_members,
    validate_snapshots,
)
from .zscore import ZScore

__all__ = ["InputError", "ZScore", "load_trajectory", "validate_snapshots", "as_members", "split_members", "StudyData"]
