"""The one exception type users see: a single line naming the file, tensor or step at fault, and the checks of a
setting's value that raise it (every setting is checked where it enters, before any work)."""

from __future__ import annotations

import math


class RlcastError(Exception):
    """Bad input or an impossible request. The CLI prints it as one line and exits non-zero."""


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` when it is an integer (not a bool) in [minimum, maximum], else an RlcastError naming the setting
    `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RlcastError(f"{name} must be an integer (got {value!r:.60})")
    if minimum is not None and value < minimum:
        raise RlcastError(f"{name} must be >= {minimum} (got {value})")
    if maximum is not None and value > maximum:
        shown = value if value.bit_length() < 64 else f"about 2^{value.bit_length() - 1}"
        raise RlcastError(f"{name} must be <= {maximum} (got {shown})")
    return value


def check_number(value, name: str, low: float | None = None, high: float | None = None,
                 above: bool = False) -> float:
    """`value` when it is a finite number in [low, high] (`above`: > low), else an RlcastError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RlcastError(f"{name} must be a finite number (got {value!r})")
    if low is not None and (value <= low if above else value < low):
        raise RlcastError(f"{name} must be {'>' if above else '>='} {low:g} (got {value:g})")
    if high is not None and value > high:
        raise RlcastError(f"{name} must be <= {high:g} (got {value:g})")
    return value
