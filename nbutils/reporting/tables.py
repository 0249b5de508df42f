"""Numbers and tables formatted for reading, in notebooks and their HTML reports (no raw dicts or reprs).

    tables.count(2810)                         # "2,810"
    tables.percent(81.27)                      # "81.3 %" (percentages here are already 0-100)
    tables.significant(0.458194)               # "0.4582" (4 significant digits)
    tables.share(190, 3000)                    # "6.3 %"
    tables.duration(209.4)                     # "3.5 min"
    tables.breakdown({"http_404": 81, "timeout": 4})         # "http_404 81, timeout 4"
    tables.counts_table({"http_404": 81, "timeout": 4}, "kind", "urls")   # kind, urls, share
    tables.facts_table({"rows": 15000, "bytes per second": 1.5e6})         # a two-column table
    tables.formatted(frame, percent_columns=["accuracy"])                  # a DataFrame as a Styler

Every stage's one-sentence `headline` (summary.json) is built from these, so a report, its index page and the
notebook say the same numbers the same way.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from functools import partial

import pandas as pd

MISSING = "–"


def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def count(n) -> str:
    """An integer count with thousands separators: 2810 -> "2,810" (None / NaN -> "–")."""
    return MISSING if _missing(n) else f"{int(round(float(n))):,}"


def number(value, decimals: int = 1) -> str:
    """A float with `decimals` places and thousands separators: 1234.567 -> "1,234.6"."""
    return MISSING if _missing(value) else f"{float(value):,.{decimals}f}"


def significant(value, digits: int = 4) -> str:
    """A float to `digits` significant digits: 0.458194 -> "0.4582", 5.0 -> "5"; from 10,000 up in full with
    separators and one decimal (123456.0 -> "123,456.0"), below 0.001 in e-notation (1.234e-05)."""
    if _missing(value):
        return MISSING
    value = float(value)
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.{digits}g}"
    return f"{value:,.1f}" if abs(value) >= 1e4 else f"{value:.{digits - 1}e}"


def percent(value, decimals: int = 1) -> str:
    """A percentage already on 0-100: 81.25 -> "81.3 %" (None / NaN -> "–")."""
    return MISSING if _missing(value) else f"{float(value):,.{decimals}f} %"


def share(part, whole, decimals: int = 1) -> str:
    """`part` as a percentage of `whole`: share(190, 3000) -> "6.3 %" ("–" when `whole` is 0)."""
    return percent(100.0 * part / whole, decimals) if whole else MISSING


def duration(seconds) -> str:
    """Seconds for reading: 42 -> "42 s", 209.4 -> "3.5 min", 5400 -> "1.5 h"."""
    if _missing(seconds):
        return MISSING
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def size_in_bytes(n) -> str:
    """A byte count for reading: 5226726 -> "5.2 MB" (powers of 1000)."""
    if _missing(n):
        return MISSING
    n = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"  # pragma: no cover - the loop returns at GB


def readable(value, decimals: int = 1) -> str:
    """Any summary value as text: counts with separators, floats with `decimals` places, booleans as yes / no,
    lists joined with commas, a nested mapping as "key value, key value" (never a repr)."""
    if _missing(value):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return count(value)
    if isinstance(value, numbers.Real):
        return number(value, decimals)
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {readable(v, decimals)}" for k, v in value.items()) or MISSING
    if isinstance(value, (list, tuple, set)):
        return ", ".join(readable(v, decimals) for v in value) or MISSING
    return str(value)


def ordered_counts(counts: Mapping) -> list[tuple[str, int]]:
    """(name, count) pairs, largest first; equal counts in name order."""
    return sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda kv: (-kv[1], kv[0]))


def breakdown(counts: Mapping, limit: int = 4, label=str) -> str:
    """Counts in words, largest first: "http_404 81, bad_content_type 51, others 22" (at most `limit` named;
    `label` turns a key into its name)."""
    pairs = ordered_counts(counts)
    named = [f"{label(k)} {count(v)}" for k, v in pairs[:limit]]
    rest = sum(v for _, v in pairs[limit:])
    if len(pairs) > limit:
        named.append(f"others {count(rest)}")
    return ", ".join(named)


# -----------------------------------------------------------------------------
# tables


def formatted(
    table: pd.DataFrame,
    decimals: int = 1,
    column_decimals: dict | None = None,
    percent_columns: Iterable[str] = (),
    count_columns: Iterable[str] = (),
    readable_headers: bool = False,
    hide_index: bool = False,
):
    """`table` as a Styler for reading: floats with `decimals` places (or `column_decimals[column]`),
    integers with thousands separators, `percent_columns` (already 0-100) as "81.3 %", `count_columns`
    (counts that are floats because of a missing value) as "2,810", missing values as "–".

    `readable_headers` writes column and index names with spaces for underscores ("n_single_object" ->
    "n single object"); `hide_index` leaves out a plain 0..n-1 index.
    """
    column_decimals = column_decimals or {}
    percent_columns, count_columns = set(percent_columns), set(count_columns)
    unknown = (percent_columns | count_columns | set(column_decimals)) - set(table.columns)
    if unknown:
        raise KeyError(f"formatted: no column {sorted(map(str, unknown))} in {list(map(str, table.columns))}")
    formats = {}
    for c in table.columns:
        places = column_decimals.get(c, decimals)
        if c in percent_columns:
            formats[c] = partial(percent, decimals=places)
        elif c in count_columns or (
            pd.api.types.is_integer_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])
        ):
            formats[c] = count
        elif pd.api.types.is_float_dtype(table[c]):
            formats[c] = partial(number, decimals=places)
        elif table[c].dtype == object:
            formats[c] = partial(readable, decimals=places)
    if readable_headers:
        formats = {_header(c): f for c, f in formats.items()}
        table = table.rename(columns=_header)
        table.index = table.index.set_names(
            [_header(n) if n is not None else None for n in table.index.names]
        )
    styler = table.style.format(formats, na_rep=MISSING)
    if hide_index:
        styler = styler.hide(axis="index")
    return styler


def _header(value) -> str:
    return str(value).replace("_", " ") if isinstance(value, str) else str(value)


def counts_table(
    counts: Mapping, key: str = "kind", unit: str = "count", total: int | None = None, label=str
):
    """A small table of `counts` (name -> count), largest first: `key`, `unit` ("2,810") and its share of
    `total` (default: their sum) as "6.3 %". `label` turns a name into what the table shows."""
    pairs = ordered_counts(counts)
    whole = total if total is not None else sum(v for _, v in pairs)
    frame = pd.DataFrame(
        {
            key: [label(k) for k, _ in pairs],
            unit: pd.Series([v for _, v in pairs], dtype="int64"),
            "share": pd.Series([100.0 * v / whole if whole else math.nan for _, v in pairs], dtype="float64"),
        }
    )
    return formatted(frame, percent_columns=["share"], hide_index=True)


def facts_table(facts: Mapping, decimals: int = 1, header: str = ""):
    """A two-column table of `facts` (label -> value), each value `readable` (a nested mapping becomes
    "key value, key value", a str is shown as given, so pre-formatted values such as "3.5 min" pass through)."""
    frame = pd.DataFrame(
        {header: [readable(v, decimals) for v in facts.values()]},
        index=pd.Index([str(k) for k in facts]),
    )
    return frame.style.hide(axis="columns") if header == "" else frame.style


def nested_table(mapping: Mapping, key: str = "", value: str = "value", decimals: int = 1):
    """A nested mapping as a two-column table, one row per leaf: an inner mapping's rows are grouped under
    its key ("decoding", then "  preset", "  num_beams", ...), never shown as dotted keys or a dict."""
    rows: list[tuple[str, str]] = []

    def walk(m: Mapping, depth: int) -> None:
        for k, v in m.items():
            name = "\u2003" * depth + str(k)  # em spaces keep the indent in HTML
            if isinstance(v, Mapping) and v:
                rows.append((name, ""))
                walk(v, depth + 1)
            else:
                rows.append((name, readable(v, decimals)))

    walk(mapping, 0)
    frame = pd.DataFrame(rows, columns=[key or "item", value])
    return frame.style.hide(axis="index")
