"""The one-line error text and the integer and column checks every stage uses."""

import numpy as np
import pandas as pd
import pytest

from nbutils.errors import DataError, check_columns, check_int, is_int, short_error


def test_short_error_is_one_line_with_the_type():
    error = OSError("cannot open\n  /data/a.jpg:\tpermission   denied")
    assert short_error(error) == "OSError: cannot open /data/a.jpg: permission denied"
    assert short_error(error, with_type=False) == "cannot open /data/a.jpg: permission denied"
    assert short_error(DataError("x.csv: row 3")) == "DataError: x.csv: row 3"


def test_short_error_cuts_long_messages_to_the_limit():
    error = ValueError("word " * 100)
    text = short_error(error, limit=40)
    assert len(text) == 40 and text == ("ValueError: " + " ".join(["word"] * 100))[:37] + "..."
    exact = ValueError("x" * 28)  # "ValueError: " + 28 characters is exactly 40: kept whole
    assert short_error(exact, limit=40) == "ValueError: " + "x" * 28
    assert len(short_error(ValueError("y" * 500))) == 200  # the default limit


def test_short_error_without_a_message_names_the_type():
    assert short_error(TimeoutError(), with_type=False) == "TimeoutError"
    assert short_error(KeyError("key"), with_type=False) == "'key'"


@pytest.mark.parametrize(
    "value, expected",
    [
        (0, True),
        (-3, True),
        (10**20, True),
        (np.int64(5), True),
        (np.uint8(5), True),
        (True, False),
        (np.bool_(True), False),
        (3.0, False),
        (np.float64(3), False),
        ("3", False),
        (None, False),
    ],
)
def test_is_int(value, expected):
    assert is_int(value) is expected


def test_check_int_returns_a_plain_int_or_names_the_parameter():
    assert check_int("workers", 4, 1) == 4
    value = check_int("workers", np.int64(2), 1)
    assert value == 2 and type(value) is int
    assert check_int("retries", 0, 0) == 0
    for bad in (0, -1, True, 2.0, "2", None):
        with pytest.raises(ValueError) as err:
            check_int("workers", bad, 1)
        assert str(err.value) == f"workers must be an integer >= 1; got {bad!r}"


def test_check_columns_names_the_table_the_missing_columns_and_what_it_has():
    check_columns(pd.DataFrame({"url": [], "text": []}), ("url", "text"), "manifest")  # fine
    with pytest.raises(
        DataError, match=r"^m.csv: missing column\(s\) \['text'\]; it has \['url'\] \(hint\)$"
    ):
        check_columns(pd.DataFrame({"url": []}), ("url", "text"), "m.csv", " (hint)")
    with pytest.raises(DataError, match="table must be a pandas DataFrame, got list"):
        check_columns([], ("url",), "table")
