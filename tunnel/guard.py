"""Refuses to open the public tunnel while any secret of the stack is weak, then starts cloudflared.

It is the entrypoint of the cloudflared image this repository builds (tunnel/Dockerfile: the
official cloudflared binary beside Python and zxcvbn), so the check runs on every start of the
tunnel: the first `up`, a restart after a crash or a Docker daemon restart, `up --no-deps cloudflared`.

    guard.py cloudflared tunnel --url http://superset:8088 ...   check, then exec the command
    guard.py                                                     check only (exit 0 or 1)

Checked: every variable whose name holds PASSWORD or SECRET (compose passes each of them, the
superuser's POSTGRES_PASSWORD first: Superset shares a network with a superuser), and at least
the ones in REQUIRED. Keys are the names with SECRET, passwords the others. Refused, first reason
found:
- not set;
- a development default: CHANGE-ME in any spelling (case, separators such as `change_me`,
  `C-H-A-N-G-E-M-E` or `change me`, Unicode compatibility forms such as fullwidth letters,
  accents, digits for letters such as `ch4nge-m3`);
- a published placeholder: a sample value from the components' own docs (PLACEHOLDERS), compared
  with case, separators and compatibility forms ignored; the longer ones also inside a value;
- shorter than 12 characters (a password) or 32 (a key);
- guessable: fewer than 10^14 guesses (a password) or 10^28 (a key) by zxcvbn's estimate, with
  the other settings in the environment (user and database names) and the project's words as
  the words an attacker tries first. zxcvbn counts a random character as 10 guesses, so a random
  password passes from ~14 characters and a random key from ~28: `openssl rand -base64 18` gives
  24, `openssl rand -base64 42` 56. Both thresholds lie far above zxcvbn's top score (4, from
  10^10 guesses), which admin_password_2024 reaches. Only the first 128 characters are scored
  (zxcvbn's time grows with the cube of the length; more characters can only add guesses).
Every message names the variable and never the value. The secrets are removed from the
environment cloudflared gets: the internet-facing process never holds them.
"""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from collections.abc import Mapping, Sequence

from zxcvbn import zxcvbn

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
#: keys (names with SECRET) / passwords: minimum length, minimum log10 of zxcvbn's guesses
KEY_MIN = (32, 28.0)
PASSWORD_MIN = (12, 14.0)
#: zxcvbn scores this many leading characters (its time grows with the cube of the length)
SCORED_LENGTH = 128
#: words any guess at this stack starts from, beside the environment's other values
PROJECT_WORDS = tuple(
    "analytics behavioral realtime demo dashboard superset airflow trino kafka postgres postgresql dbt "
    "cloudflare cloudflared tunnel collector consumer producer events shop admin monitor".split()
)
#: values used as words: shorter ones save a guesser next to nothing (zxcvbn scores a 1- or
#: 2-character match almost as random), longer ones are tokens or URLs, not words anyone types
USER_INPUT_LENGTH = (3, 64)

#: the marker `.env` puts in every development default, in any spelling: each letter or a digit or
#: sign written for it, up to 3 separators (anything but a letter: `-`, `_`, ` `, `.`) between them
DEV_MARKER = re.compile(r"[^a-z]{0,3}".join((r"[c(<\[{]", "[h#]", "[a4@]", "n", "[g69]", "[e3€]", "m", "[e3€]")))
#: sample values from the components' own docs and default configurations: values a guesser tries
#: first. Compared after normalised() (case, separators, compatibility forms ignored).
PLACEHOLDERS = frozenset(
    {
        # Superset's default or sample SECRET_KEYs, the ones CVE-2023-27524 (a forged session
        # cookie for any instance that kept one) lists: the default of superset/config.py before
        # 1.4.1 (Flask-AppBuilder's template value), as Python reads it and as written in the file
        "\x02\x01thisismyscretkey\x01\x02\\e\\y\\y\\h",
        "\\2\\1thisismyscretkey\\1\\2\\e\\y\\y\\h",
        # superset/config.py's CHANGE_ME_SECRET_KEY since 1.4.1; the Helm chart's
        # (helm/superset/values.yaml) commented SUPERSET_SECRET_KEY and SECRET_KEY examples
        "CHANGE_ME_TO_A_COMPLEX_RANDOM_SECRET",
        # the docs' superset_config.py sample ("Configuring Superset": SECRET_KEY = '...')
        "YOUR_OWN_RANDOM_GENERATED_SECRET_KEY",
        # the repository's docker compose setup (docker/.env: SUPERSET_SECRET_KEY)
        "TEST_NON_DEV_SECRET",
        # the key of Superset's older Helm chart and Kubernetes docs, listed by the CVE as well
        "thisISaSECRET_1234",
        # Superset's docker/.env (DATABASE_PASSWORD, POSTGRES_PASSWORD) and Helm chart
        # (supersetNode.connections.db_pass); the Helm chart's and docs' admin user's password
        "superset",
        "admin",
        # Airflow: secret_key of default_airflow.cfg before 1.10.13 (CVE-2020-17526); the
        # docker-compose.yaml of its docs (POSTGRES_PASSWORD, _AIRFLOW_WWW_USER_PASSWORD)
        "temporary_key",
        "airflow",
        # the official postgres image's docs (`docker run ... -e POSTGRES_PASSWORD=mysecretpassword`,
        # its stack.yml: POSTGRES_PASSWORD: example); the superuser's name
        "mysecretpassword",
        "example",
        "postgres",
        # Kafka's security docs (the SASL/PLAIN and SCRAM JAAS examples)
        "admin-secret",
        "alice-secret",
        # the usual first guesses
        "password",
        "secret",
        # the JDK's default keystore password (cacerts), where Trino's and Kafka's TLS stores start
        "changeit",
    }
)


def folded(value: str) -> str:
    """The value as a reader sees it: Unicode compatibility forms (fullwidth, ligatures, math
    letters) as their plain letters (NFKC), lower case, accents dropped."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", value).casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def normalised(value: str) -> str:
    """folded(), letters and digits only: `Your-Own_Random.Generated SECRET key` is one word."""
    return "".join(c for c in folded(value) if c.isalnum())


#: the placeholders as compared; a value containing one of these long ones is refused too
NORMALISED_PLACEHOLDERS = frozenset(normalised(p) for p in PLACEHOLDERS)
LONG_PLACEHOLDERS = tuple(sorted(p for p in NORMALISED_PLACEHOLDERS if len(p) >= 12))


def is_development_default(value: str) -> bool:
    return DEV_MARKER.search(folded(value)) is not None


def is_placeholder(value: str) -> bool:
    plain = normalised(value)
    return plain in NORMALISED_PLACEHOLDERS or any(p in plain for p in LONG_PLACEHOLDERS)


def checked_names(env: Mapping[str, str]) -> list[str]:
    return sorted(set(REQUIRED) | {name for name in env if SECRET_NAME.search(name)})


def user_inputs(env: Mapping[str, str]) -> list[str]:
    """Words an attacker of this stack tries first: the project's, and the values of the other
    settings the guard is given (user and database names)."""
    secrets = set(checked_names(env))
    low, high = USER_INPUT_LENGTH
    return [*PROJECT_WORDS, *sorted({v for k, v in env.items() if k not in secrets and low <= len(v) <= high})]


def guesses_log10(value: str, words: Sequence[str] = ()) -> float:
    """log10 of the guesses zxcvbn estimates an attacker needs (its first SCORED_LENGTH characters)."""
    scored = value[:SCORED_LENGTH]
    return float(zxcvbn(scored, user_inputs=list(words), max_length=len(scored))["guesses_log10"])


def problem(name: str, value: str, words: Sequence[str] = PROJECT_WORDS) -> str | None:
    """Why this secret must not be published; None when it may. Never contains the value."""
    kind, (min_length, min_log10) = ("key", KEY_MIN) if "SECRET" in name else ("password", PASSWORD_MIN)
    if not value:
        return f"{name} is not set"
    if is_development_default(value):
        return f"{name} is still a development default (it holds CHANGE-ME)"
    if is_placeholder(value):
        return f"{name} is a published placeholder (a sample value from the components' docs)"
    if len(value) < min_length:
        return f"{name} is shorter than {min_length} characters"
    if (found := guesses_log10(value, words)) < min_log10:
        return (
            f"{name} is too guessable for a {kind} (zxcvbn: ~10^{found:.1f} guesses, 10^{min_log10:.0f} wanted; "
            "use a random value, not words, names or patterns)"
        )
    return None


def problems(env: Mapping[str, str]) -> list[str]:
    """Why these settings must not be published; empty when they may."""
    words = user_inputs(env)
    return [p for name in checked_names(env) if (p := problem(name, env.get(name, ""), words))]


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
