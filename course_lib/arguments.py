"""Argument checks shared by the course's functions: a bad argument is refused at once with a
message naming it, what was expected and what was given (instead of a confusing error later)."""

from __future__ import annotations

from numbers import Integral


def require_int(name: str, value: object, *, at_least: int = 1, allow_none: bool = False) -> int | None:
    """``value`` if it is an int (not a bool) >= ``at_least`` (or None when ``allow_none``); else
    ValueError: "<name> must be an int >= <at_least>[ or None], got <value!r>".

    NumPy integers are accepted and returned as plain ``int``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < at_least:
        raise ValueError(f"{name} must be an int >= {at_least}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)
