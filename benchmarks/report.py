"""How every benchmark prints a figure, and how `benchmarks.ab` reads it back.

A figure is one line: two spaces, its name, at least two spaces, its value (a number first, then
any unit or note). Names may hold numbers and single spaces; the double space ends them.
"""

from __future__ import annotations

import re

NAME_WIDTH = 64
LINE = re.compile(r"^  (?P<name>\S.*?)\s{2,}(?P<value>[-+]?\d[\d,]*(?:\.\d+)?)")


def figure_line(name: str, value: str) -> str:
    return f"  {name:<{NAME_WIDTH}}  {value}"


def report(name: str, value: str) -> None:
    print(figure_line(name, value), flush=True)


def figures(output: str) -> dict[str, float]:
    """{name: the number its value starts with} of every figure line of a benchmark's output."""
    found = {}
    for line in output.splitlines():
        if m := LINE.match(line):
            found[m["name"]] = float(m["value"].replace(",", ""))
    return found
