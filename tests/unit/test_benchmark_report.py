"""A benchmark's figure lines read back as printed (benchmarks/report.py), as benchmarks.ab reads them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from benchmarks.ab import table
from benchmarks.report import figure_line, figures

#: figure names as the benchmarks write them: words, numbers with separators, single spaces
names = st.lists(
    st.from_regex(r"[A-Za-z0-9(][A-Za-z0-9_,.:/()→=+-]{0,12}", fullmatch=True), min_size=1, max_size=8
).map(" ".join)


@given(st.dictionaries(names, st.integers(0, 10**9), min_size=1, max_size=5), st.sampled_from(["", "/s", " ms / 3 ms"]))
def test_every_figure_line_reads_back_as_its_name_and_leading_number(numbers, unit):
    output = "\n".join(["header line", *(figure_line(n, f"{v:,}{unit}") for n, v in numbers.items()), "footer"])
    assert figures(output) == {n: float(v) for n, v in numbers.items()}


def test_lines_that_are_not_figures_are_left_out():
    assert figures("producer\n  alerts fired  none\nload average 1.2; 2 cores\n") == {}


def test_the_table_gives_medians_ranges_and_the_ratio_of_the_figures_both_sides_have():
    runs = {"A": [{"x": 10.0, "only A": 1.0}, {"x": 30.0, "only A": 1.0}, {"x": 20.0, "only A": 1.0}]}
    runs["B"] = [{"x": 25.0}, {"x": 35.0}, {"x": 30.0}]
    assert table("A", "B", runs)[2:] == ["| x | 20 (10-30) | 30 (25-35) | 1.50 |"]
