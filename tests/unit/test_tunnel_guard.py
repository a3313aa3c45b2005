"""tunnel/guard.py: the public tunnel starts only when every secret of the stack is strong, and
cloudflared then runs without them."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import secrets
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_compose import ROOT, dotenv

GUARD = ROOT / "tunnel" / "guard.py"
spec = importlib.util.spec_from_file_location("tunnel_guard", GUARD)
guard = importlib.util.module_from_spec(spec)
spec.loader.exec_module(guard)

ENV = dotenv()
SECRET_NAMES = sorted({k for k in ENV if guard.SECRET_NAME.search(k)} | set(guard.REQUIRED))
KEY_NAMES = [n for n in SECRET_NAMES if "SECRET" in n]
PASSWORD_NAMES = [n for n in SECRET_NAMES if "SECRET" not in n]
#: random-looking, fixed (base64 of a hash): what `openssl rand -base64 32` gives
STRONG = {name: base64.b64encode(hashlib.sha256(name.encode()).digest()).decode() for name in SECRET_NAMES}
PRINTABLE = st.characters(min_codepoint=33, max_codepoint=126)


def run(*command: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GUARD), *command], env=env, capture_output=True, text=True, timeout=30)


def test_strong_secrets_let_the_tunnel_start():
    assert guard.problems(STRONG) == []


@pytest.mark.parametrize("name", [n for n in SECRET_NAMES if n in ENV])
def test_each_development_default_of_env_is_refused(name):
    assert guard.problems({**STRONG, name: ENV[name]}) == [f"{name} is still a development default"]


@pytest.mark.parametrize("name", guard.REQUIRED)
def test_a_missing_database_or_admin_secret_is_refused(name):
    env = {k: v for k, v in STRONG.items() if k != name}
    assert guard.problems(env) == [f"{name} is not set"]


def test_a_secret_added_to_env_later_is_checked_too():
    assert guard.problems({**STRONG, "REPORTING_DB_PASSWORD": "reporting"}) == [
        "REPORTING_DB_PASSWORD is shorter than 12 characters"
    ]


@pytest.mark.parametrize("value", ["superset", "admin", "CHANGE_ME_TO_A_COMPLEX_RANDOM_SECRET", "thisISaSECRET_1234"])
def test_well_known_values_are_refused(value):
    assert guard.problem("SUPERSET_SECRET_KEY", value) == "SUPERSET_SECRET_KEY is still a development default"


@pytest.mark.parametrize(("name", "length"), [("SUPERSET_SECRET_KEY", 32), ("POSTGRES_PASSWORD", 12)])
def test_a_random_value_one_character_short_is_refused(name, length):
    assert guard.problem(name, STRONG[name][: length - 1]) == f"{name} is shorter than {length} characters"


@pytest.mark.parametrize(
    "value",
    ["a" * 40, "abcdefghijklmnopqrstuvwxyzabcdefghij", "Password1Password1Password1Password1", "0123456789" * 4],
    ids=["one-letter", "alphabet", "repeated-word", "digits-in-order"],
)
def test_long_but_predictable_values_are_refused(value):
    assert "is too predictable" in guard.problem("SUPERSET_SECRET_KEY", value)


@given(unit=st.text(PRINTABLE, min_size=1, max_size=4), repeats=st.integers(min_value=3, max_value=60))
def test_any_short_unit_repeated_is_refused_whatever_its_length(unit, repeats):
    value = unit * max(repeats, 40 // len(unit))
    assert guard.problem("POSTGRES_PASSWORD", value) is not None


@given(
    start=st.integers(min_value=33, max_value=126),
    step=st.integers(min_value=-3, max_value=3),
    length=st.integers(min_value=12, max_value=80),
)
def test_any_run_of_evenly_spaced_characters_is_refused(start, step, length):
    value = "".join(chr(33 + (start - 33 + i * step) % 94) for i in range(length))
    assert guard.problem("AIRFLOW_ADMIN_PASSWORD", value) is not None


@given(st.text(PRINTABLE, max_size=60))
def test_the_estimate_never_exceeds_a_uniform_draw_from_the_classes_used(value):
    assert 0 <= guard.entropy_bits(value) <= len(value) * guard.math.log2(guard.pool_size(value)) + 1e-9


@given(padding=st.text(PRINTABLE, max_size=40))
def test_appending_to_a_strong_secret_never_makes_it_refused(padding):
    assert guard.problem("SUPERSET_SECRET_KEY", STRONG["SUPERSET_SECRET_KEY"] + padding) is None


def test_values_from_the_documented_commands_are_accepted():
    """`openssl rand -base64 42` for keys, `openssl rand -base64 18` for passwords, many draws."""
    keys = [base64.b64encode(secrets.token_bytes(42)).decode() for _ in range(300)]
    passwords = [base64.b64encode(secrets.token_bytes(18)).decode() for _ in range(300)]
    refused = [k for k in keys if guard.problem("SUPERSET_SECRET_KEY", k)]
    refused += [p for p in passwords if guard.problem("POSTGRES_PASSWORD", p)]
    assert refused == []


def test_every_weak_secret_is_named_in_one_refusal():
    result = run(**{**STRONG, "POSTGRES_PASSWORD": ENV["POSTGRES_PASSWORD"], "SUPERSET_SECRET_KEY": "x" * 40})
    assert result.returncode == 1
    assert "POSTGRES_PASSWORD is still a development default" in result.stderr
    assert "SUPERSET_SECRET_KEY is too predictable" in result.stderr


def test_the_command_runs_without_the_secrets_in_its_environment():
    show_env = "import json, os; print(json.dumps(sorted(os.environ)))"
    result = run(sys.executable, "-c", show_env, **STRONG, TUNNEL_TOKEN="t0k")
    assert result.returncode == 0, result.stderr
    names = json.loads(result.stdout.splitlines()[-1])
    assert "TUNNEL_TOKEN" in names and not set(SECRET_NAMES) & set(names)


def test_the_command_never_runs_when_a_secret_is_weak(tmp_path):
    marker = tmp_path / "started"
    result = run(sys.executable, "-c", f"open({str(marker)!r}, 'w')", **{**STRONG, "SUPERSET_ADMIN_PASSWORD": "admin"})
    assert result.returncode == 1 and not marker.exists()


def test_the_guard_says_which_tunnel_it_starts():
    assert "quick tunnel" in run(**STRONG).stdout and "named tunnel" in run(**STRONG, TUNNEL_TOKEN="t0k").stdout
