"""Errors that name what is at fault, and the small checks that raise them.

`DataError` is bad input data: its message names the file (and the row or column) at fault.
`ValueError` is a bad parameter: its message names the parameter.
"""

from __future__ import annotations

import numbers


class DataError(ValueError):
    """Bad input data. The message names the file (and row or column) at fault."""


def short_error(error: BaseException, limit: int = 200, with_type: bool = True) -> str:
    """One line describing `error`, at most `limit` characters: "TypeName: message" (or just the message)."""
    message = " ".join(str(error).split())
    text = f"{type(error).__name__}: {message}" if with_type else message or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_int(value) -> bool:
    """True for Python and numpy integers, False for bools (True is an int to Python, never a count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int) -> int:
    """Return `value` as an int, or raise ValueError naming `name` if it is not an integer >= minimum."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)
