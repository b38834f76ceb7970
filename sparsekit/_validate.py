"""Parameter checks shared by every pattern, solver and command.

Every check raises ``ValueError`` whose message names the parameter and the allowed range, so that a
bad value stops at the call that received it instead of surfacing later as a wrong mask.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"in [{low}, {high}]"
    if low is not None:
        return f">= {low}"
    if high is not None:
        return f"<= {high}"
    return ""


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as ``int`` if it is an integer within ``[low, high]``; raise otherwise."""
    allowed = _range_text(low, high)
    if isinstance(value, bool | np.bool_) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}".replace("  ", " "))
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer {allowed}, got {value}")
    return value


def check_fraction(name: str, value: object) -> float:
    """Return ``value`` as ``float`` if it is a real number in ``[0, 1]`` (NaN is refused)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value}")
    return value


def check_size(n: object, name: str = "n") -> int:
    """A sequence length: an integer >= 1."""
    return check_int(name, n, low=1)


def int_arg(low: int):
    """An ``argparse`` type: an integer ``>= low``, with a one-line message otherwise."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse
