"""Settings: `.env` defaults, the environment on top, and one clear line per bad value."""

import subprocess
import sys

import pytest

from common.settings import REPO_ROOT, Settings, load_settings


def test_env_file_gives_the_defaults():
    s = Settings()
    assert (s.kafka_topic, s.postgres_port, s.consumer_db_user) == ("user_events", 5432, "stream_consumer")


def test_the_environment_wins_over_env_file(monkeypatch):
    monkeypatch.setenv("POSTGRES_PORT", "15432")
    monkeypatch.setenv("KAFKA_TOPIC", "other_events")
    s = Settings()
    assert (s.postgres_port, s.kafka_topic) == (15432, "other_events")


def test_invalid_values_exit_2_with_one_line_per_variable(monkeypatch, capsys):
    monkeypatch.setenv("POSTGRES_PORT", "not-a-port")
    monkeypatch.setenv("KAFKA_PARTITIONS", "0")
    with pytest.raises(SystemExit) as info:
        load_settings()
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2
    assert len(err) == 2 and all(line.startswith("error: invalid setting ") for line in err)


@pytest.mark.parametrize("types", ["", " , ", "view,,click", "view, Click", "view;click", "view,click\n"])
def test_collector_event_types_are_types_the_contract_allows(monkeypatch, types):
    monkeypatch.setenv("COLLECTOR_EVENT_TYPES", types)
    with pytest.raises(SystemExit):
        load_settings()


def test_collector_event_types_are_a_comma_separated_list(monkeypatch):
    monkeypatch.setenv("COLLECTOR_EVENT_TYPES", "view, click ,signup")
    assert Settings().collector_event_types == "view, click ,signup"


def test_producer_refuses_bad_configuration_without_a_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "kafka_producer", "--events", "1"],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin", "PRODUCER_RATE": "-5"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == "error: invalid setting PRODUCER_RATE='-5': Input should be greater than or equal to 0"
    )
