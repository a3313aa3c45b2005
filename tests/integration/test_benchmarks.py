"""The benchmark scripts run to the end and print every figure they promise. Tiny sizes: a smoke run
that keeps the scripts working; its numbers are not judged (docs/benchmarks.md has the real runs).
Those that measure a whole stack run on test_stack.py's (tests/support/benchmark_figures.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks import postgres_ceiling
from tests.support.benchmark_figures import BENCHMARKS, ON_THE_TIERS_POSTGRES, missing
from tests.support.ephemeral import ROOT


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_prints_every_figure(name):
    args, figures = BENCHMARKS[name]
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert missing(proc.stdout, figures) == [], proc.stdout


@pytest.mark.parametrize("name", sorted(ON_THE_TIERS_POSTGRES))
def test_benchmark_on_the_tiers_postgres_prints_every_figure(stack, capsys, name):
    args, figures = ON_THE_TIERS_POSTGRES[name]
    {"postgres_ceiling": postgres_ceiling.main}[name](args, stack)
    out = capsys.readouterr().out
    assert missing(out, figures) == [], out


def test_ab_runs_each_commit_in_turn_and_compares_the_medians():
    """benchmarks.ab on one commit under two names: the machinery (a worktree, its virtualenv,
    interleaved runs, the figures read back) with a command whose figures are known."""
    demo = "from benchmarks.report import report; report('answer, 2 runs', '42 ms'); print('not a figure')"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ab", "HEAD", "HEAD~0", "--rounds", "2", "--", "python", "-c", demo],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rounds = [line for line in proc.stdout.splitlines() if line.startswith("round ")]
    assert rounds == ["round 1/2: HEAD", "round 1/2: HEAD~0", "round 2/2: HEAD~0", "round 2/2: HEAD"]
    assert proc.stdout.splitlines()[-1] == "| answer, 2 runs | 42 (42-42) | 42 (42-42) | 1.00 |"
