"""The plain-text table that compare and frontier print (tokenfleet/cli/table.py)."""

import pytest

from tokenfleet.cli.table import Column, format_number, format_percent, render_table


@pytest.mark.parametrize(
    "value, text",
    [
        (1347, "1,347"),
        (2.0, "2"),
        (-7029.917, "-7,030"),
        (15032.11, "15,032"),
        (31.0969, "31.1"),
        (0.5, "0.5"),
        (0.00418258, "0.004183"),
        (3.1e-7, "3.100e-07"),
        (2e15 + 0.5, "2.000e+15"),
        (float("nan"), "nan"),
        (float("-inf"), "-inf"),
    ],
)
def test_numbers_read_as_people_write_them(value, text):
    assert format_number(value) == text


def test_percent_changes_carry_their_sign():
    assert format_percent(100.0) == "+100.0%" and format_percent(-6.07) == "-6.1%"


def test_cells_are_whole_numbers_right_aligned_text_left_missing_as_dash():
    name = "a.figure.name.longer.than.any.header.polars.would.cut"
    table = render_table(
        ["figure", "value", Column("change", format_percent), "note"],
        [[name, 1234567, 12.5, "ok"], ["x", 0.25, None, True]],
    )
    assert table.splitlines() == [
        "figure                                                     value  change  note",
        "a.figure.name.longer.than.any.header.polars.would.cut  1,234,567  +12.5%  ok",
        "x                                                           0.25       -  true",
    ]


def test_a_row_of_the_wrong_length_is_a_bug_not_a_quiet_misalignment():
    with pytest.raises(ValueError):
        render_table(["a", "b"], [[1]])
