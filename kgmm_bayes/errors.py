"""The package's error and warning classes, and the one-line form every message takes."""
from __future__ import annotations

__all__ = ["InputError", "CacheWarning", "one_line"]


class InputError(ValueError):
    """Bad user input (data, spec or arguments); the message is one line."""


class CacheWarning(RuntimeWarning):
    """A stage cache entry was damaged and is being recomputed."""


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if "allow_pickle" in text:  # numpy's advice to unpickle does not belong in our message
        text = "not a NumPy array file, or one holding pickled Python objects (never unpickled)"
    return text if len(text) <= 160 else text[:157] + "..."
