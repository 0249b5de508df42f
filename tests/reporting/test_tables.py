"""Numbers and tables formatted for reading (nbutils.reporting.tables)."""

import math

import numpy as np
import pandas as pd
import pytest

from nbutils.reporting import tables


def _cells(styler) -> list[list[str]]:
    """The displayed text of every body cell of a Styler, row by row."""
    html = styler.to_html()
    body = html.split("<tbody>")[1]
    rows = body.split("</tr>")[:-1]
    return [[cell.split(">", 1)[1].split("</td>")[0] for cell in row.split("<td")[1:]] for row in rows]


def test_numbers_in_words():
    assert tables.count(2810) == "2,810" and tables.count(np.int64(3_000_000)) == "3,000,000"
    assert tables.count(None) == tables.count(math.nan) == "–"
    assert tables.percent(81.27) == "81.3 %" and tables.percent(0.3745, 2) == "0.37 %"
    assert tables.share(190, 3000) == "6.3 %" and tables.share(1, 0) == "–"
    assert tables.number(1234.567) == "1,234.6" and tables.number(2.0112, 3) == "2.011"
    assert [tables.significant(v) for v in (0.458194, 5.0, 0.0, 5533.4, 123456.0, 0.00001234, None)] == [
        "0.4582", "5", "0", "5533", "123,456.0", "1.234e-05", "–",
    ]  # fmt: skip
    assert [tables.duration(s) for s in (4.26, 42.4, 209.4, 5400)] == ["4.3 s", "42 s", "3.5 min", "1.5 h"]
    assert tables.size_in_bytes(5_226_726) == "5.2 MB" and tables.size_in_bytes(512) == "512 B"


def test_readable_never_gives_a_repr():
    assert tables.readable({"preset": "beam", "num_beams": 4}) == "preset beam, num_beams 4"
    assert tables.readable([1500, 2.25]) == "1,500, 2.2" and tables.readable(True) == "yes"
    assert tables.readable(None) == "–" and tables.readable("as given") == "as given"
    assert "{" not in tables.readable({"a": {"b": 1}})


def test_breakdown_names_the_largest_first_and_counts_the_rest():
    counts = {"timeout": 4, "http_404": 81, "truncated": 18, "too_large": 18, "bad_content_type": 51}
    assert tables.breakdown(counts, limit=3) == "http_404 81, bad_content_type 51, too_large 18, others 22"
    assert tables.breakdown({"a": 1, "b": 2}, limit=3, label=str.upper) == "B 2, A 1"
    assert tables.breakdown({}) == ""


def test_counts_table_has_kind_count_and_share():
    styler = tables.counts_table({"timeout": 4, "http_404": 2_810}, "kind", "urls", total=3000)
    assert list(styler.data.columns) == ["kind", "urls", "share"]
    assert _cells(styler) == [["http_404", "2,810", "93.7 %"], ["timeout", "4", "0.1 %"]]
    assert _cells(tables.counts_table({"a": 1, "b": 3})) == [["b", "3", "75.0 %"], ["a", "1", "25.0 %"]]


def test_formatted_counts_percentages_and_headers():
    frame = pd.DataFrame(
        {
            "n_images": [2810, 12],
            "accuracy": [98.64, math.nan],
            "loss": [0.123456, 2.0],
            "rows": [11500.0, math.nan],  # a count that is float because one is missing
            "name": ["x", None],
        },
        index=pd.Index(["a", "b"], name="split_name"),
    )
    styler = tables.formatted(
        frame, percent_columns=["accuracy"], count_columns=["rows"], readable_headers=True
    )
    assert _cells(styler) == [["2,810", "98.6 %", "0.1", "11,500", "x"], ["12", "–", "2.0", "–", "–"]]
    html = styler.to_html()
    assert "n images" in html and "split name" in html and "n_images" not in html
    assert _cells(tables.formatted(frame[["loss"]], column_decimals={"loss": 3})) == [["0.123"], ["2.000"]]
    with pytest.raises(KeyError, match="no column"):
        tables.formatted(frame, percent_columns=["acc"])


def test_facts_and_nested_tables_are_two_columns_of_text():
    facts = tables.facts_table({"rows": 15000, "time": "3.5 min", "decoding": {"preset": "beam"}})
    assert _cells(facts) == [["15,000"], ["3.5 min"], ["preset beam"]]
    assert "rows" in facts.to_html() and "{" not in "".join(sum(_cells(facts), []))
    nested = tables.nested_table({"steps": 1300, "decoding": {"preset": "beam", "num_beams": 4}})
    rows = _cells(nested)
    assert rows[0] == ["steps", "1,300"] and rows[1] == ["decoding", ""]
    assert rows[2][0].strip("\u2003") == "preset" and rows[2][0].startswith("\u2003") and rows[3][1] == "4"
