"""kgmm-bayes: Bayesian KGMM score estimation and Langevin reduced-order models.

The subpackages follow the data's path: ``data`` (trajectories, z-score, built-in
systems) -> ``partition`` -> ``bayes`` (mixture posterior, scores and their bands) ->
``rom`` (interpolant, Langevin model, posterior ensembles) -> ``metrics``; ``study``
chains them from a spec into an output folder; ``result``, ``api`` and ``cli`` are
the user's entry points.  Imports run one way, from the top of this list's reverse
(``tests/test_layout.py`` enforces it).

Importing the package, before JAX initialises, (1) exposes one CPU device per
core so that NUTS chains run in parallel (unless ``XLA_FLAGS`` already sets a
device count), and (2) enables float64, which the posterior's Cholesky
algebra and the tested identities need; speed-critical stages (simulation,
interpolant, Langevin model) cast to float32 themselves.
"""
import os as _os

if "xla_force_host_platform_device_count" not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "")
                                + f" --xla_force_host_platform_device_count={_os.cpu_count() or 1}").strip()

import jax as _jax  # noqa: E402

_jax.config.update("jax_enable_x64", True)

from ._version import __version__  # noqa: E402
from .api import fit  # noqa: E402
from .compilation_cache import enable as enable_compilation_cache  # noqa: E402
from .data import InputError, ZScore, load_trajectory  # noqa: E402
from .result import BayesianKGMM  # noqa: E402
from .spec import Spec, SpecError, load_spec, spec_from_dict  # noqa: E402
from .study import load_result, run_study  # noqa: E402

__all__ = ["fit", "enable_compilation_cache", "run_study", "load_spec", "spec_from_dict", "load_result", "BayesianKGMM", "Spec",
           "SpecError", "InputError", "ZScore", "load_trajectory", "__version__"]
