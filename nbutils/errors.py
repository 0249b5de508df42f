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


def check_columns(table, columns: tuple[str, ...], what: str, hint: str = "") -> None:
    """DataError naming `what` when `table` is not a pandas DataFrame or lacks any of `columns` (then it lists the
    columns the table has, and `hint`: how to read the file with other column names)."""
    import pandas as pd  # imported here: the rest of this module is used where pandas is not needed

    if not isinstance(table, pd.DataFrame):
        raise DataError(f"{what} must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{what}: missing column(s) {missing}; it has {list(table.columns)}{hint}")
