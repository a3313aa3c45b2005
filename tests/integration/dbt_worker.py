"""Runs dbt commands one after another in one process, for the dbt harness (dbt_harness.Dbt).

Run by the dbt virtualenv's Python (it imports dbt, not this repository). Each line on stdin is a
JSON list of dbt's arguments; each answer on stdout is one JSON line, {"returncode": ..., "output":
...}, as the `dbt` command would have exited and printed. A `dbt` process per command spends about
2 s importing dbt before it starts; the tests run hundreds of commands.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys


def main() -> None:
    # Not this folder: dbt imports every top-level module named dbt_* as a possible plugin, and
    # dbt_harness.py is the tests' (it imports what the dbt virtualenv does not have).
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
    from dbt.cli.main import dbtRunner

    # Answers go to the real stdout; anything else written to fd 1 (not through sys.stdout, which
    # each command's capture replaces) goes to stderr instead of into an answer.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for line in sys.stdin:
        args = json.loads(line)
        output = io.StringIO()
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            result = dbtRunner().invoke(args)
        # the `dbt` command's exit codes: 0 success, 1 a failure dbt handled (a test failed, a model
        # errored), 2 an error it did not
        code = 0 if result.success else (2 if result.exception is not None else 1)
        if result.exception is not None:
            output.write(f"\n{type(result.exception).__name__}: {result.exception}\n")
        answers.write(json.dumps({"returncode": code, "output": output.getvalue()}) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
