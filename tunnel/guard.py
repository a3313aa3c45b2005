"""Refuses to open the public tunnel while any secret of the stack is weak, then starts cloudflared.

It is the entrypoint of the cloudflared image this repository builds (tunnel/Dockerfile: the
official cloudflared binary beside Python), so the check runs on every start of the tunnel: the
first `up`, a restart after a crash or a Docker daemon restart, `up --no-deps cloudflared`.

    guard.py cloudflared tunnel --url http://superset:8088 ...   check, then exec the command
    guard.py                                                     check only (exit 0 or 1)

Checked: every variable whose name holds PASSWORD or SECRET (compose passes each of them, the
superuser's POSTGRES_PASSWORD first: Superset shares a network with a superuser), and at least
the ones in REQUIRED. Refused: unset, a development default (CHANGE-ME, a well-known value),
shorter than its minimum, or of low entropy (a repeated or sequential pattern, one kind of
character). The secrets are removed from the environment cloudflared gets: the internet-facing
process never holds them.

Standard library only.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping, Sequence

#: the marker `.env` puts in every development default
DEV_MARKER = re.compile(r"change[-_ ]?me", re.IGNORECASE)
#: well-known values: Superset's own sample keys and the usual first guesses
KNOWN_DEFAULTS = frozenset(
    {
        "CHANGE_ME_TO_A_COMPLEX_RANDOM_SECRET",
        "thisISaSECRET_1234",
        "TEST_NON_DEV_SECRET",
        "\\2\\1thisismyscretkey\\1\\2\\e\\y\\y\\h",
        "superset",
        "admin",
        "password",
        "secret",
        "postgres",
        "airflow",
    }
)
#: checked even when missing from the environment (then refused as not set)
REQUIRED = (
    "POSTGRES_PASSWORD",
    "SUPERSET_SECRET_KEY",
    "SUPERSET_ADMIN_PASSWORD",
    "SUPERSET_DB_PASSWORD",
    "AIRFLOW_ADMIN_PASSWORD",
    "AIRFLOW_JWT_SECRET",
)
SECRET_NAME = re.compile(r"PASSWORD|SECRET")
#: signing keys (names with SECRET) / passwords: minimum length and estimated bits
KEY_MIN = (32, 128.0)
PASSWORD_MIN = (12, 64.0)
#: printable ASCII by class: how many symbols a character of each class is drawn from
CLASSES = ((re.compile(r"[a-z]"), 26), (re.compile(r"[A-Z]"), 26), (re.compile(r"[0-9]"), 10))
SYMBOLS = 33
#: a repeat of an earlier stretch this long or longer costs nothing
MIN_REPEAT = 3


def pool_size(value: str) -> int:
    """How many symbols each character seems drawn from: the sizes of the classes used."""
    size = sum(n for pattern, n in CLASSES if pattern.search(value))
    if any(not any(p.fullmatch(c) for p, _ in CLASSES) for c in value):
        size += SYMBOLS if value.isascii() else 100  # beyond ASCII: a larger, unknown alphabet
    return max(size, 1)


def surprising_characters(value: str) -> int:
    """The characters a guesser could not predict from the ones before: a character that repeats
    an earlier stretch of 3+ characters (abcabc, aaaa) or continues a run with the same step as
    the two before it (abc, 123, 9876) is predictable."""
    count, i = 0, 0
    while i < len(value):
        repeat = 0
        for start in range(i):  # longest earlier match; it may overlap the current position
            length = 0
            while i + length < len(value) and value[start + length] == value[i + length]:
                length += 1
            repeat = max(repeat, length)
        if repeat >= MIN_REPEAT:
            i += repeat
            continue
        if i >= 2 and ord(value[i]) - ord(value[i - 1]) == ord(value[i - 1]) - ord(value[i - 2]):
            i += 1
            continue
        count += 1
        i += 1
    return count


def entropy_bits(value: str) -> float:
    """Estimated bits of a secret: log2(pool) for each surprising character. A heuristic in the
    spirit of password meters: it can't see dictionary words, it does see patterns and length."""
    return surprising_characters(value) * math.log2(pool_size(value))


def checked_names(env: Mapping[str, str]) -> list[str]:
    return sorted(set(REQUIRED) | {name for name in env if SECRET_NAME.search(name)})


def problem(name: str, value: str) -> str | None:
    """Why this secret must not be published; None when it may."""
    min_length, min_bits = KEY_MIN if "SECRET" in name else PASSWORD_MIN
    if not value:
        return f"{name} is not set"
    if DEV_MARKER.search(value) or value in KNOWN_DEFAULTS:
        return f"{name} is still a development default"
    if len(value) < min_length:
        return f"{name} is shorter than {min_length} characters"
    if (bits := entropy_bits(value)) < min_bits:
        return f"{name} is too predictable (~{bits:.0f} bits, {min_bits:.0f} wanted: use a random value, not a pattern)"
    return None


def problems(env: Mapping[str, str]) -> list[str]:
    """Why these settings must not be published; empty when they may."""
    return [p for name in checked_names(env) if (p := problem(name, env.get(name, "")))]


def mode(env: Mapping[str, str]) -> str:
    return "named tunnel" if env.get("TUNNEL_TOKEN") else "quick tunnel (random trycloudflare.com URL)"


def main(argv: Sequence[str] = (), env: Mapping[str, str] = os.environ) -> int:
    found = problems(env)
    if found:
        print("tunnel-guard: refusing to publish Superset:", file=sys.stderr)
        for line in found:
            print(f"  - {line}", file=sys.stderr)
        print(
            "tunnel-guard: set new values in .env (e.g. `openssl rand -base64 42` for a key, "
            "`openssl rand -base64 18` for a password), then `docker compose --profile public up -d` again.",
            file=sys.stderr,
        )
        return 1
    print(f"tunnel-guard: {len(checked_names(env))} secrets checked; starting a {mode(env)} to Superset only.")
    if argv:
        sys.stdout.flush()
        clean = {k: v for k, v in env.items() if k not in checked_names(env)}
        os.execvpe(argv[0], list(argv), clean)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
