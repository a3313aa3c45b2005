"""Superset's metadata database URL, from its parts in the environment (both modes set the same).

Each part is percent-encoded: a password with `@`, `:`, `/`, `%` or `#` in it (`openssl rand
-base64` gives `/` and `+`) would break a URL pasted together from the raw values, as compose's
`${...}` interpolation would."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import quote


def metadata_db_uri(env: Mapping[str, str] = os.environ) -> str:
    return (
        f"postgresql+psycopg2://{quote(env['SUPERSET_DB_USER'], safe='')}:{quote(env['SUPERSET_DB_PASSWORD'], safe='')}"
        f"@{env['POSTGRES_HOST']}:{env['POSTGRES_PORT']}/{quote(env['SUPERSET_DB'], safe='')}"
    )
