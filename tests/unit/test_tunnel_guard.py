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


DEFAULT = "is still a development default (it holds CHANGE-ME)"
PLACEHOLDER = "is a published placeholder (a sample value from the components' docs)"


def test_strong_secrets_let_the_tunnel_start():
    assert guard.problems(STRONG) == []


@pytest.mark.parametrize("name", [n for n in SECRET_NAMES if n in ENV])
def test_each_development_default_of_env_is_refused(name):
    assert guard.problems({**STRONG, name: ENV[name]}) == [f"{name} {DEFAULT}"]


@pytest.mark.parametrize("name", guard.REQUIRED)
def test_a_missing_database_or_admin_secret_is_refused(name):
    env = {k: v for k, v in STRONG.items() if k != name}
    assert guard.problems(env) == [f"{name} is not set"]


def test_a_secret_added_to_env_later_is_checked_too():
    assert guard.problems({**STRONG, "REPORTING_DB_PASSWORD": "reporting"}) == [
        "REPORTING_DB_PASSWORD is shorter than 12 characters"
    ]


# --- issue 18: guessable values that the old entropy estimate let through -----------------------


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("SUPERSET_ADMIN_PASSWORD", "admin_password_2024", "is too guessable for a password"),
        ("POSTGRES_PASSWORD", "Password123!Password", "is too guessable for a password"),
        ("SUPERSET_SECRET_KEY", "YOUR_OWN_RANDOM_GENERATED_SECRET_KEY", PLACEHOLDER),
    ],
)
def test_the_guessable_secrets_of_the_issue_are_refused(name, value, why):
    assert why in guard.problems({**STRONG, name: value})[0]


@pytest.mark.parametrize(
    "value",
    [
        "superset-analytics-dashboard-admin-2024",
        "SupersetSecretKeyForTheDemo2024!!",
        "realtime_behavioral_analytics_secret",
        "my-super-secret-superset-signing-key",
    ],
)
def test_a_key_of_words_is_refused_whatever_its_length(value):
    """Keys need 10^28 guesses by zxcvbn: 32+ characters of words and names stay far below."""
    assert len(value) >= 32
    assert guard.problem("SUPERSET_SECRET_KEY", value) is not None
    assert "is too guessable for a key" in guard.problem("SUPERSET_SECRET_KEY", value)


def test_a_random_password_passes_from_the_documented_threshold():
    """zxcvbn counts a random character as 10 guesses: 13 random digits are ~10^13 (refused, though
    longer than the 12-character minimum), 20 are ~10^20 (accepted)."""
    digits = "".join(str(secrets.randbelow(10)) for _ in range(20))
    assert "is too guessable" in guard.problem("AIRFLOW_ADMIN_PASSWORD", digits[:13])
    assert guard.problem("AIRFLOW_ADMIN_PASSWORD", digits) is None


def test_a_password_made_of_the_admins_user_name_is_weaker():
    """The other settings are the words a guess starts from: the same password is accepted beside
    another user name and refused beside its own."""
    password = "zerbinetta_2026!x"
    assert guard.problems({**STRONG, "SUPERSET_ADMIN_USER": "somebody", "SUPERSET_ADMIN_PASSWORD": password}) == []
    refused = guard.problems({**STRONG, "SUPERSET_ADMIN_USER": "zerbinetta", "SUPERSET_ADMIN_PASSWORD": password})
    assert len(refused) == 1 and refused[0].startswith("SUPERSET_ADMIN_PASSWORD is too guessable")


def test_the_settings_given_to_the_guard_are_its_words_and_the_secrets_are_not():
    words = guard.user_inputs({**STRONG, "SUPERSET_ADMIN_USER": "zerbinetta", "TUNNEL_TOKEN": "t" * 200})
    assert "zerbinetta" in words and "analytics" in words
    assert not set(STRONG.values()) & set(words) and "t" * 200 not in words


# --- CHANGE-ME in any spelling ------------------------------------------------------------------


@pytest.mark.parametrize(
    "marker",
    [
        "CHANGE-ME",
        "change_me",
        "Change.Me",
        "C-H-A-N-G-E-M-E",
        "changeme",
        "change me",
        "c_h_a_n_g_e__m_e",
        "ＣＨＡＮＧＥ－ＭＥ",  # fullwidth
        "𝐂𝐇𝐀𝐍𝐆𝐄 𝐌𝐄",  # mathematical bold
        "ch4nge-m3",
        "(h@n9e_m€",
        "chänge-mé",  # accents
        "Ｃhange\u3000Me",  # an ideographic space
    ],
)
def test_change_me_is_refused_in_any_spelling(marker):
    for name in ("SUPERSET_SECRET_KEY", "POSTGRES_PASSWORD"):
        assert guard.problem(name, f"{STRONG[name]}{marker}{STRONG[name]}") == f"{name} {DEFAULT}"


#: how a letter of CHANGE-ME may be written: either case, fullwidth, mathematical bold, with an
#: accent, or a digit or sign read as that letter
def spellings(letter: str) -> st.SearchStrategy[str]:
    forms = [
        letter,
        letter.upper(),
        chr(ord(letter.upper()) + 0xFEE0),  # fullwidth
        chr(0x1D400 + ord(letter.upper()) - ord("A")),  # mathematical bold capital
        chr(0x1D41A + ord(letter) - ord("a")),  # mathematical bold small
        letter + "\u0301",  # a combining acute accent
    ]
    forms += {"c": ["(", "<"], "h": ["#"], "a": ["4", "@"], "g": ["9", "6"], "e": ["3", "€"]}.get(letter, [])
    return st.sampled_from(forms)


SEPARATORS = st.text(st.sampled_from(list(" -_.,:;/|+*~'!?=0123456789") + ["－", "＿", "．", "・"]), max_size=3)


@st.composite
def disguised_change_me(draw) -> str:
    letters = [draw(spellings(c)) for c in "changeme"]
    return "".join(letter + (draw(SEPARATORS) if i < 7 else "") for i, letter in enumerate(letters))


@given(marker=disguised_change_me(), before=st.text(PRINTABLE, max_size=30), after=st.text(PRINTABLE, max_size=30))
def test_any_secret_holding_a_disguised_change_me_is_refused(marker, before, after):
    assert guard.problem("SUPERSET_SECRET_KEY", before + marker + after) == f"SUPERSET_SECRET_KEY {DEFAULT}"


# --- the components' documented placeholders ----------------------------------------------------


@pytest.mark.parametrize("placeholder", sorted(guard.PLACEHOLDERS))
def test_every_documented_placeholder_is_refused_as_key_and_as_password(placeholder):
    """As a placeholder, or first as a development default when it holds CHANGE-ME."""
    why = DEFAULT if guard.is_development_default(placeholder) else PLACEHOLDER
    assert guard.problem("SUPERSET_SECRET_KEY", placeholder) == f"SUPERSET_SECRET_KEY {why}"
    assert guard.problem("AIRFLOW_ADMIN_PASSWORD", placeholder) == f"AIRFLOW_ADMIN_PASSWORD {why}"


@pytest.mark.parametrize(
    "value",
    [
        "your-own-random-generated-secret-key",
        "ＹＯＵＲ＿ＯＷＮ＿ＲＡＮＤＯＭ＿ＧＥＮＥＲＡＴＥＤ＿ＳＥＣＲＥＴ＿ＫＥＹ",
        "Test.Non.Dev.Secret",
        "This Is A Secret 1234",
        "TEMPORARY-KEY",
        "MySecretPassword",
        "my_YOUR_OWN_RANDOM_GENERATED_SECRET_KEY_2024",  # a long one inside a longer value
    ],
)
def test_placeholders_are_refused_in_another_spelling(value):
    assert guard.problem("SUPERSET_SECRET_KEY", value) == f"SUPERSET_SECRET_KEY {PLACEHOLDER}"


def test_a_short_placeholder_inside_a_strong_value_is_no_reason_to_refuse_it():
    """Only the long placeholders are looked for inside a value: `admin` may occur in a random one."""
    assert guard.problem("SUPERSET_SECRET_KEY", STRONG["SUPERSET_SECRET_KEY"] + "admin") is None


# --- patterns zxcvbn sees -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "length"), [("SUPERSET_SECRET_KEY", 32), ("POSTGRES_PASSWORD", 12)])
def test_a_random_value_one_character_short_is_refused(name, length):
    assert guard.problem(name, STRONG[name][: length - 1]) == f"{name} is shorter than {length} characters"


@pytest.mark.parametrize(
    "value",
    ["a" * 40, "abcdefghijklmnopqrstuvwxyzabcdefghij", "Password1Password1Password1Password1", "0123456789" * 4],
    ids=["one-letter", "alphabet", "repeated-word", "digits-in-order"],
)
def test_long_but_predictable_values_are_refused(value):
    assert "is too guessable" in guard.problem("SUPERSET_SECRET_KEY", value)


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


@given(padding=st.text(PRINTABLE, max_size=40))
def test_appending_to_a_strong_secret_never_makes_it_refused(padding):
    assert guard.problem("SUPERSET_SECRET_KEY", STRONG["SUPERSET_SECRET_KEY"] + padding) is None


def test_a_long_value_is_scored_on_its_first_characters_only():
    """zxcvbn's time grows with the cube of the length (1,000 characters: ~40 s); a 10,000-character
    key is checked at once, and a weak start is not hidden by a long random tail."""
    tail = base64.b64encode(secrets.token_bytes(7500)).decode()
    assert guard.problem("SUPERSET_SECRET_KEY", tail) is None
    assert "is too guessable" in guard.problem("SUPERSET_SECRET_KEY", "a" * guard.SCORED_LENGTH + tail)


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
    assert f"POSTGRES_PASSWORD {DEFAULT}" in result.stderr
    assert "SUPERSET_SECRET_KEY is too guessable for a key" in result.stderr


def test_a_refusal_names_each_weak_variable_and_never_prints_a_value():
    weak = {
        "SUPERSET_ADMIN_PASSWORD": "admin_password_2024",
        "POSTGRES_PASSWORD": "Password123!Password",
        "SUPERSET_SECRET_KEY": "YOUR_OWN_RANDOM_GENERATED_SECRET_KEY",
        "AIRFLOW_JWT_SECRET": "jwt_ＣＨＡＮＧＥ－ＭＥ_please",
        "SUPERSET_DB_PASSWORD": "Zq8#kL2",
    }
    result = run(**{**STRONG, **weak})
    assert result.returncode == 1
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("- ")]
    assert sorted(line.split()[1] for line in lines) == sorted(weak)
    output = result.stdout + result.stderr
    assert [v for v in [*weak.values(), *STRONG.values()] if v in output] == []


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
