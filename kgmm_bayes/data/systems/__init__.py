"""Built-in reference systems (shared/SYSTEMS.md): the SDE integrator (:mod:`.base`), the
Kuramoto-Sivashinsky solver (:mod:`.ks`) and the catalogue of named systems (:mod:`.catalog`)."""
from .base import System, simulate
from .catalog import (
           LORENZ96_PARAMS,
           SYSTEMS,
           get_system,
           lorenz96_drift,
           triad_diffusion,
           triad_drift,
)

__all__ = ["System", "SYSTEMS", "get_system", "simulate", "triad_drift", "triad_diffusion",
           "lorenz96_drift", "LORENZ96_PARAMS"]
