"""A/B of two commits: one benchmark command run alternately in a worktree of each, medians compared.

    .venv/bin/python -m benchmarks.ab BEFORE AFTER [--rounds 3] -- python -m benchmarks.streaming --events 1000000

Single runs on these machines vary by tens of percent from one minute to the next, so a claim
that one commit is as fast as another needs several runs of each, interleaved (A B, B A, A B...:
a drift of the machine falls on both sides). Each commit gets a detached worktree, cached under
/var/tmp/rt-analytics-ab/<repository>/ (with this checkout's .venv when the requirements are the same, else one
built by its own ./stack); the command runs there, as that commit's code. Every figure the
benchmark reports (benchmarks/report.py) is collected; the table gives each figure's median
(min-max) per commit and after / before.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.report import figures
from common.settings import REPO_ROOT

#: Not under ~/.cache: an older commit's Postgres (run as the postgres user) is started with the
#: worktree as its working directory, and root's home is closed to other users.
CACHE = Path("/var/tmp/rt-analytics-ab")


def worktree(ref: str) -> Path:
    """A detached worktree of `ref` with its own .venv, made once per commit and repository. Per
    repository: a worktree belongs to the repository that made it (a clone's is gone with the clone),
    and its .venv may be that checkout's."""
    git = ["git", "-C", str(REPO_ROOT)]
    sha = subprocess.run(
        [*git, "rev-parse", "--verify", f"{ref}^{{commit}}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    common = subprocess.run(
        [*git, "rev-parse", "--path-format=absolute", "--git-common-dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = CACHE / hashlib.sha256(common.encode()).hexdigest()[:8] / sha[:12]
    if not (path / ".git").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*git, "worktree", "prune"], check=True)  # a folder of it deleted by hand
        subprocess.run([*git, "worktree", "add", "--detach", str(path), sha], check=True)
    venv = path / ".venv"
    if not venv.exists() and requirements(path) == requirements(REPO_ROOT):
        venv.unlink(missing_ok=True)  # a link left dangling
        venv.symlink_to(REPO_ROOT / ".venv")  # the same packages: this checkout's virtualenv serves
    subprocess.run([str(path / "stack"), "ps"], cwd=path, capture_output=True, check=True)  # builds .venv
    return path


def requirements(checkout: Path) -> bytes:
    """What ./stack builds .venv from (its stamp hashes these two files)."""
    return b"".join((checkout / name).read_bytes() for name in ("requirements.txt", "requirements-dev.txt"))


def run(path: Path, command: list[str]) -> dict[str, float]:
    argv = [str(path / ".venv/bin/python"), *command[1:]] if command[0] in ("python", "python3") else command
    proc = subprocess.run(argv, cwd=path, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"ab: {shlex.join(command)} failed in {path} (exit {proc.returncode})")
    return figures(proc.stdout)


def table(before: str, after: str, runs: dict[str, list[dict[str, float]]]) -> list[str]:
    names = [n for n in runs[before][0] if all(n in r for side in runs.values() for r in side)]
    lines = [f"| figure | {before} median (min-max) | {after} median (min-max) | after / before |", "|---|---|---|---|"]
    for name in names:
        cells = []
        for side in (before, after):
            values = [r[name] for r in runs[side]]
            cells.append(f"{statistics.median(values):,.6g} ({min(values):,.6g}-{max(values):,.6g})")
        b, a = (statistics.median(r[name] for r in runs[side]) for side in (before, after))
        ratio = f"{a / b:.2f}" if b else "-"
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {ratio} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        usage="%(prog)s BEFORE AFTER [--rounds N] -- COMMAND...",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each commit, interleaved")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if not command or args.rounds < 1:
        parser.error("give --rounds >= 1 and, after --, the benchmark command")
    paths = {ref: worktree(ref) for ref in (args.before, args.after)}
    runs: dict[str, list[dict[str, float]]] = {ref: [] for ref in paths}
    for i in range(args.rounds):
        order = (args.before, args.after) if i % 2 == 0 else (args.after, args.before)
        for ref in order:
            print(f"round {i + 1}/{args.rounds}: {ref}", flush=True)
            runs[ref].append(run(paths[ref], command))
    print("\n".join(table(args.before, args.after, runs)))


if __name__ == "__main__":
    main()
