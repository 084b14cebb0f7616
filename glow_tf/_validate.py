"""Argument checks shared by every module: one rule for integers, seeds, numbers and choices.

Integers may be Python or NumPy integers (``np.int64(10)`` is accepted wherever ``10``
is); booleans are rejected even though ``bool`` subclasses ``int``. Every failure is a
``ValueError`` whose message names the argument, the bad value and what is valid.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

__all__ = ["integer", "positive_int", "seed", "number", "choice"]


def integer(value, what: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python ``int``, or ``ValueError`` unless it is an integer in ``[minimum, maximum]``.

    Args:
      value: the argument (a Python or NumPy integer; not a bool or a float).
      what: its name in the message (``"num_classes"``, ``"config.train.batch_size"``).
      minimum: smallest valid value, or None.
      maximum: largest valid value, or None.
    """
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok:
        ok = (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        if minimum is not None and maximum is not None:
            valid = f"an integer in {minimum}..{maximum}"
        elif minimum is not None:
            valid = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        elif maximum is not None:
            valid = f"an integer <= {maximum}"
        else:
            valid = "an integer"
        raise ValueError(f"{what} must be {valid}, got {value!r}.")
    return int(value)


def positive_int(value, what: str) -> int:
    """``integer(value, what, minimum=1)``."""
    return integer(value, what, minimum=1)


def seed(value, what: str = "seed") -> int:
    """A random seed: ``integer(value, what, minimum=0)``."""
    return integer(value, what, minimum=0)


def number(
    value, what: str, low: float = -math.inf, high: float = math.inf, low_open: bool = False, high_open: bool = False
) -> float:
    """``value`` as a finite ``float`` in the interval ``[low, high]`` (ends optionally open), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}.")
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        if high == math.inf:
            valid = f"> {low:g}" if low_open else f">= {low:g}"
        else:
            valid = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{what} must be {valid}, got {value!r}.")
    return float(value)


def choice(value, valid: Sequence, what: str):
    """``value`` if it is one of ``valid``, else ``ValueError`` listing them."""
    if isinstance(value, bool) or value not in tuple(valid):
        raise ValueError(f"Unknown {what} {value!r}; valid: {', '.join(map(str, valid))}.")
    return value
