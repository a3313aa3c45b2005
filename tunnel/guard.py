"""Refuses to open the public tunnel while Superset still has a development secret.

Runs as the one-shot `tunnel-guard` service of `docker compose --profile public up`; the
`cloudflared` service starts only if it exits 0 (`service_completed_successfully`). The
cloudflared image has no shell, so the check cannot live in its entrypoint.

    SUPERSET_SECRET_KEY=... SUPERSET_ADMIN_PASSWORD=... python tunnel/guard.py

Standard library only: it runs in the app image, or anywhere with Python 3.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

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
    }
)
MIN_LENGTH = {"SUPERSET_SECRET_KEY": 32, "SUPERSET_ADMIN_PASSWORD": 12}


def problems(env: Mapping[str, str]) -> list[str]:
    """Why these settings must not be published; empty when they may."""
    found = []
    for name, min_length in MIN_LENGTH.items():
        value = env.get(name, "")
        if not value:
            found.append(f"{name} is not set")
        elif DEV_MARKER.search(value) or value in KNOWN_DEFAULTS:
            found.append(f"{name} is still a development default")
        elif len(value) < min_length:
            found.append(f"{name} is shorter than {min_length} characters")
    return found


def mode(env: Mapping[str, str]) -> str:
    return "named tunnel" if env.get("CLOUDFLARE_TUNNEL_TOKEN") else "quick tunnel (random trycloudflare.com URL)"


def main(env: Mapping[str, str] = os.environ) -> int:
    found = problems(env)
    if found:
        print("tunnel-guard: refusing to publish Superset:", file=sys.stderr)
        for problem in found:
            print(f"  - {problem}", file=sys.stderr)
        print(
            "tunnel-guard: set new values in .env (e.g. `openssl rand -base64 42` for the secret key),"
            " then `docker compose --profile public up -d` again.",
            file=sys.stderr,
        )
        return 1
    print(f"tunnel-guard: Superset secrets are not development defaults; starting a {mode(env)} to Superset only.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
