"""Argument checks shared by the loaders."""

from __future__ import annotations

import numpy as np


def is_positive_int(value: object) -> bool:
    """True for a Python or numpy integer >= 1 (bool excluded)."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


def require_positive_int(label: str, value: object) -> None:
    """Raise ValueError naming ``label`` unless ``value`` is a positive integer."""
    if not is_positive_int(value):
        raise ValueError(f"{label} must be a positive integer, got {value!r}")
