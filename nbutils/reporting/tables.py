"""Tables formatted for reading in notebooks and their HTML reports (pandas Styler, no raw dicts)."""

from __future__ import annotations

import pandas as pd


def formatted(table: pd.DataFrame, decimals: int = 1, column_decimals: dict | None = None):
    """`table` as a Styler: floats with `decimals` places (or `column_decimals[column]`), integers with
    thousands separators.

    Percentages in this workbench are already 0-100, so one decimal (the default) is what reports show.
    """
    column_decimals = column_decimals or {}
    formats = {
        c: f"{{:,.{column_decimals.get(c, decimals)}f}}"
        for c in table.columns
        if pd.api.types.is_float_dtype(table[c])
    }
    formats.update({c: "{:,}" for c in table.columns if pd.api.types.is_integer_dtype(table[c])})
    return table.style.format(formats, na_rep="–")
