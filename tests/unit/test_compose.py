"""docker-compose.yml, checked without a Docker engine: against the Compose Specification's JSON
schema, its own properties (healthchecks, memory, pinned images, the Kafka image's config), and
what native mode cannot read from it (the versions it installs). What native mode runs, it reads
from this file (native/compose.py; tests/unit/test_native_compose.py)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from common.settings import REPO_ROOT as ROOT
from common.settings import env_file_values
from native.compose import env_file_paths, interpolate

SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
COMPOSE_FILE = ROOT / "docker-compose.yml"
README = ROOT / "README.md"

#: the defaults the issue and README promise
DEFAULT_PORTS = {"SUPERSET_PORT": "8088", "TRINO_PORT": "8083", "AIRFLOW_PORT": "8080", "KAFKA_PORT": "9092"}
DEFAULT_PORTS["POSTGRES_PORT"] = "5432"
DEFAULT_PORTS.update(PROMETHEUS_PORT="9090", ALERTMANAGER_PORT="9095", COLLECTOR_PORT="8090")
#: repository folders (config shared by both modes) -> compose services that must mount them
SHARED_CONFIG = {
    "trino/etc": {"trino"},
    "superset": {"superset", "superset-init"},
    "common": {"superset", "superset-init"},  # common/client_address.py: the rate limits' key
    "airflow/dags": {"airflow-scheduler", "airflow-dag-processor", "airflow-apiserver", "airflow-init"},
    "dbt_project": {"airflow-scheduler", "airflow-dag-processor", "airflow-apiserver", "airflow-init"},
    "postgres/init": {"postgres-init"},
    "monitoring": {"prometheus", "alertmanager-init"},
    "monitoring/postgres_exporter": {"postgres-exporter"},
}
DEV_MARKER = "CHANGE-ME"


def dotenv() -> dict[str, str]:
    return env_file_values(ROOT / ".env")


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return dotenv()


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw, env) -> dict:
    return interpolate(raw, env)


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def is_one_shot(service: dict) -> bool:
    return service.get("restart") == "no"


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(repository path, container path) of each bind mount."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2] if isinstance(volume, str) else (volume["source"], volume["target"])
        if source.startswith("."):
            mounts.append((str(Path(source).as_posix()).removeprefix("./"), target))
    return mounts


def named_volumes(service: dict) -> list[str]:
    return [v.split(":")[0] for v in service.get("volumes", []) if isinstance(v, str) and not v.startswith((".", "/"))]


def native_module(name: str) -> Path:
    return ROOT / "native" / "services" / f"{name}.py"


def pins(requirements: Path) -> dict[str, str]:
    found = {}
    for line in requirements.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;#]+)", line.strip())
        if match:
            found[re.sub(r"\[.*\]", "", match.group(1)).lower().replace("_", "-")] = match.group(2)
    return found


def dockerfiles() -> list[Path]:
    return sorted(p for p in [ROOT / "Dockerfile", *ROOT.glob("*/Dockerfile")] if p.exists())


def build_args(services: dict[str, dict], dockerfile: Path) -> dict[str, str]:
    args: dict[str, str] = {}
    for service in services.values():
        build = service.get("build")
        if build is None:
            continue
        build = {"context": build} if isinstance(build, str) else build
        if (ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve() == dockerfile:
            args.update(build.get("args", {}))
    return args


def base_images(dockerfile: Path, args: dict[str, str]) -> list[str]:
    """The FROM images of a Dockerfile, with ARGs resolved (build args first, then ARG defaults)."""
    scope, images = dict(args), []
    for line in dockerfile.read_text().splitlines():
        line = line.strip()
        if match := re.match(r"ARG\s+(\w+)(?:=(\S+))?", line):
            scope.setdefault(match.group(1), match.group(2) or "")
        elif match := re.match(r"FROM\s+(?:--\S+\s+)*(\S+)", line, re.IGNORECASE):
            images.append(interpolate(match.group(1), scope))
    return images


def image_tag(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else ""


# --- the Compose Specification ------------------------------------------------------------


def test_compose_file_follows_the_compose_specification(compose):
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_file_before_interpolation_follows_the_compose_specification(raw):
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(raw)


def test_every_variable_the_compose_file_uses_is_defined_in_env(raw, env):
    used: set[str] = set()
    interpolate(raw, env, used)
    assert used - env.keys() == set()


# --- one .env ---------------------------------------------------------------------------------


def test_env_gives_the_documented_default_ports(env):
    assert {name: env.get(name) for name in DEFAULT_PORTS} == DEFAULT_PORTS


def test_every_secret_in_env_is_marked_as_a_development_default(env):
    secrets = [k for k in env if re.search(r"PASSWORD|SECRET", k)]
    assert secrets and [k for k in secrets if DEV_MARKER not in env[k]] == []


def test_no_credential_is_written_in_the_compose_file(raw):
    """Passwords, secrets and tokens come from .env only."""
    literal = []
    for name, service in raw["services"].items():
        environment = service.get("environment") or {}
        for key, value in environment.items() if isinstance(environment, dict) else []:
            if (
                re.search(r"PASSWORD|SECRET|TOKEN", key)
                and not key.endswith("_FILE")
                and not re.fullmatch(r"\$\{[A-Z_]+\}", str(value))
            ):
                literal.append(f"{name}: {key}")
    assert literal == []


def test_official_images_take_their_version_from_env(raw):
    images = {name: s["image"] for name, s in raw["services"].items() if "build" not in s and "image" in s}
    assert [f"{n}: {i}" for n, i in images.items() if not re.search(r":\$\{[A-Z_]+_VERSION\}$", i)] == []


# --- images and versions ----------------------------------------------------------------------


def test_every_image_is_pinned_to_a_version(services):
    unpinned = []
    for name, service in services.items():
        image = service.get("image", "")
        if "build" in service:
            continue  # built here; its base image is checked in its Dockerfile
        if image_tag(image) in ("", "latest"):
            unpinned.append(f"{name}: {image!r}")
    assert unpinned == []


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_base_images_are_pinned(dockerfile, services, env):
    images = base_images(dockerfile, interpolate(build_args(services, dockerfile), env))
    assert images and [i for i in images if image_tag(i) in ("", "latest") or "$" in i] == []


def test_kafka_image_is_the_native_kafka_version(services, env):
    pom = (ROOT / "native" / "kafka" / "pom.xml").read_text()
    assert image_tag(services["kafka"]["image"]) == env["KAFKA_VERSION"]
    assert re.search(r"<kafka.version>(.*?)</kafka.version>", pom).group(1) == env["KAFKA_VERSION"]
    assert "KAFKA_VERSION" in native_module("kafka").read_text()


def test_trino_image_is_the_native_trino_version(services, env):
    pom = (ROOT / "native" / "trino" / "pom.xml").read_text()
    assert image_tag(services["trino"]["image"]) == env["TRINO_VERSION"]
    assert re.search(r"<trino.version>(.*?)</trino.version>", pom).group(1) == env["TRINO_VERSION"]


def test_postgres_image_is_the_native_postgres_major_version(services, env):
    """Native mode installs and runs Debian's postgresql-N for the N of POSTGRES_VERSION."""
    assert image_tag(services["postgres"]["image"]) == env["POSTGRES_VERSION"]
    text = native_module("postgres").read_text()
    assert 'ctx["POSTGRES_VERSION"]' in text and 'apt_install(f"postgresql-{major_version(ctx)}")' in text


def test_airflow_image_is_the_native_airflow_version(services, env):
    [image] = base_images(
        ROOT / "airflow" / "Dockerfile", interpolate(build_args(services, ROOT / "airflow" / "Dockerfile"), env)
    )
    assert image == f"apache/airflow:{env['AIRFLOW_VERSION']}-python3.11"
    assert pins(ROOT / "airflow" / "requirements.txt")["apache-airflow"] == env["AIRFLOW_VERSION"]


def test_airflow_image_installs_the_native_requirements_files(services):
    dockerfile = (ROOT / "airflow" / "Dockerfile").read_text()
    assert "COPY dbt_project/requirements.txt" in dockerfile and "/opt/dbt-venv/bin/pip install" in dockerfile
    assert "COPY airflow/requirements.txt" in dockerfile
    assert {"dbt-core", "dbt-postgres"} <= pins(ROOT / "dbt_project" / "requirements.txt").keys()


def test_superset_image_is_the_native_superset_version(services, env):
    dockerfile = ROOT / "superset" / "Dockerfile"
    [image] = base_images(dockerfile, interpolate(build_args(services, dockerfile), env))
    assert image == f"apache/superset:{env['SUPERSET_VERSION']}"
    assert pins(ROOT / "superset" / "requirements.txt")["apache-superset"] == env["SUPERSET_VERSION"]


def test_superset_image_adds_the_native_trino_and_postgres_drivers():
    """The Dockerfile takes these pins from superset/requirements.txt, so they must be there."""
    assert {"trino", "psycopg2-binary"} <= pins(ROOT / "superset" / "requirements.txt").keys()
    assert "^(trino|psycopg2-binary)==" in (ROOT / "superset" / "Dockerfile").read_text()


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("kafka", "KAFKA_VERSION"),
        ("trino", "TRINO_VERSION"),
        ("airflow", "airflow/requirements"),
        ("airflow", "dbt_project/requirements"),
        ("superset", "superset/requirements"),
    ],
)
def test_native_service_installs_the_version_compose_runs(module, source):
    """Native mode downloads by the same .env version or installs the same pinned requirements file."""
    text = native_module(module).read_text()
    folder, _, name = source.partition("/")
    assert source in text or (name and f'"{folder}"' in text and name in text), source


#: compose service -> (Debian package native mode runs instead, the .env variable with its image tag)
MONITORING_IMAGES = {
    "prometheus": ("prometheus", "PROMETHEUS_VERSION"),
    "alertmanager": ("prometheus-alertmanager", "ALERTMANAGER_VERSION"),
    "postgres-exporter": ("prometheus-postgres-exporter", "POSTGRES_EXPORTER_VERSION"),
}


@pytest.mark.parametrize("service", sorted(MONITORING_IMAGES))
def test_monitoring_image_is_the_official_one_at_envs_version(service, raw):
    official = {
        "prometheus": "prom/prometheus",
        "alertmanager": "prom/alertmanager",
        "postgres-exporter": "quay.io/prometheuscommunity/postgres-exporter",
    }
    assert raw["services"][service]["image"] == f"{official[service]}:${{{MONITORING_IMAGES[service][1]}}}"


@pytest.mark.parametrize("service", sorted(MONITORING_IMAGES))
def test_native_monitoring_runs_the_debian_package_of_the_image_version(service, env):
    """Debian bookworm's packages are what native mode runs: their version is the image's tag."""
    from native.context import Context
    from native.services.prometheus import PACKAGES, PrometheusService, binary_version

    PrometheusService().install(Context())  # apt-get install on a fresh machine
    package, var = MONITORING_IMAGES[service]
    assert f"v{binary_version(PACKAGES[package][0])}" == env[var]


@pytest.mark.parametrize(
    ("lock", "package", "version"),
    [
        ("airflow/requirements.lock.txt", "apache-airflow", "AIRFLOW_VERSION"),
        ("superset/requirements.lock.txt", "apache-superset", "SUPERSET_VERSION"),
    ],
)
def test_native_lock_files_pin_the_image_versions(lock, package, version, env):
    assert pins(ROOT / lock)[package] == env[version]


# --- ports ---------------------------------------------------------------------------------


def test_services_publish_their_env_port_on_loopback_only(raw, env):
    """Each published port is bound to 127.0.0.1, on a port .env names (native mode's, too)."""
    published = [(name, port) for name, service in raw["services"].items() for port in service.get("ports") or []]
    matches = [(name, port, re.fullmatch(r"127\.0\.0\.1:\$\{(\w+_PORT)\}:[\w${}]+", port)) for name, port in published]
    wrong = [f"{name}: {port}" for name, port, match in matches if not match or match[1] not in env]
    assert len(published) >= 8 and wrong == []


def test_trino_listens_inside_on_the_port_its_config_names(raw):
    trino = raw["services"]["trino"]
    assert "http-server.http.port=${ENV:TRINO_PORT}" in (ROOT / "trino/etc/config.properties").read_text()
    assert (
        trino["ports"] == ["127.0.0.1:${TRINO_PORT}:${TRINO_PORT}"]
        and trino["environment"]["TRINO_PORT"] == "${TRINO_PORT}"
    )


# --- config files: the same ones, from the same paths ---------------------------------------


def test_every_bind_mounted_path_exists(services):
    mounts = [(name, src) for name, service in services.items() for src, _ in bind_mounts(service)]
    missing = [f"{name}: {src}" for name, src in mounts if not (ROOT / src).exists()]
    assert missing == []


@pytest.mark.parametrize("folder", sorted(SHARED_CONFIG))
def test_shared_config_folder_is_mounted_into_its_services(folder, services):
    assert {n for n, s in services.items() if folder in {src for src, _ in bind_mounts(s)}} >= SHARED_CONFIG[folder]


@pytest.mark.parametrize("service", sorted(SHARED_CONFIG["common"]))
def test_superset_finds_common_above_its_config_folder_as_in_the_checkout(services, service):
    """superset_config.py imports common.client_address from the folder above its own."""
    mounts = {src: target for src, target in bind_mounts(services[service])}
    assert mounts["common"] == str(Path(mounts["superset"]).parent / "common")


def test_files_the_services_use_inside_their_mounts_exist_in_the_repository(services):
    """Paths named in commands or the environment that fall inside a bind mount (superset_config.py,
    the bootstrap script, the guard) must exist in the repository."""
    missing = []
    for name, service in services.items():
        words = [*(service.get("environment") or {}).values()]
        command = service.get("command") or []
        words += shlex.split(command) if isinstance(command, str) else command
        for src, target in bind_mounts(service):
            for word in words:
                for path in re.findall(rf"{re.escape(target)}/[\w./-]+", str(word)):
                    repo_path = ROOT / src / path.removeprefix(target + "/")
                    if repo_path.exists():
                        continue
                    missing.append(f"{name}: {path} -> {repo_path.relative_to(ROOT)}")
    assert missing == []


def test_trino_gets_the_environment_its_config_placeholders_need(services):
    lines = [
        line
        for path in (ROOT / "trino/etc").rglob("*.properties")
        for line in path.read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    needed = set(re.findall(r"\$\{ENV:(\w+)\}", "\n".join(lines)))
    assert needed and needed <= set(services["trino"]["environment"])


def test_trino_kafka_table_reads_the_topic_env_names(env):
    """Compose mounts trino/etc as is, so its Kafka table must name .env's topic."""
    spec = json.loads((ROOT / "trino/etc/kafka/user_events.json").read_text())
    assert spec["topicName"] == env["KAFKA_TOPIC"]


def test_trino_finds_its_resource_groups_where_each_mode_puts_trino_etc(services):
    """resource-groups.properties names the JSON by TRINO_ETC_DIR: compose's trino/etc mount."""
    properties = (ROOT / "trino/etc/resource-groups.properties").read_text()
    assert "resource-groups.config-file=${ENV:TRINO_ETC_DIR}/resource-groups.json" in properties
    assert (ROOT / "trino/etc/resource-groups.json").exists()
    assert ("trino/etc", services["trino"]["environment"]["TRINO_ETC_DIR"]) in bind_mounts(services["trino"])


def test_superset_resource_group_caps_concurrency_and_queue():
    """The group's selector is the user Superset's Trino database connects as (provision.py)."""
    config = json.loads((ROOT / "trino/etc/resource-groups.json").read_text())
    (group,) = [g for g in config["rootGroups"] if g["name"] == "superset"]
    assert "trino://superset@" in (ROOT / "superset/provision.py").read_text()
    assert {"user": "superset", "group": "superset"} in config["selectors"]
    assert 0 < group["hardConcurrencyLimit"] <= 8 and 0 < group["maxQueued"] <= 100


AIRFLOW_SERVICES = ("airflow-init", "airflow-scheduler", "airflow-dag-processor", "airflow-apiserver")
#: Airflow's settings that do not differ between the modes: compose's env_file, read natively too
AIRFLOW_ENV_FILE = ROOT / "airflow" / "airflow.env"


def container_environment(service: dict) -> dict[str, str]:
    """What compose gives a service's container: its env_file(s) in order, `environment` on top."""
    merged: dict[str, str] = {}
    for path in env_file_paths(service, COMPOSE_FILE):
        merged.update(env_file_values(path))
    return {**merged, **{k: str(v) for k, v in (service.get("environment") or {}).items()}}


def required_env(paths: list[Path]) -> set[str]:
    """Variables read without a default: dbt's env_var('X') and Python's os.environ["X"]."""
    names: set[str] = set()
    for path in paths:
        text = path.read_text()
        names |= set(re.findall(r"env_var\(\s*['\"](\w+)['\"]\s*\)", text))
        names |= set(re.findall(r"os\.environ\[\s*['\"](\w+)['\"]\s*\]", text))
    return names


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_gives_dbt_and_the_dags_every_variable_they_require(service, services):
    sources = [*(ROOT / "dbt_project").rglob("*.yml"), *(ROOT / "dbt_project").rglob("*.sql")]
    sources += [*(ROOT / "airflow").rglob("*.py")]
    needed = required_env(sources)
    assert needed, "dbt_project/ and airflow/ read their connection from the environment"
    assert needed - set(container_environment(services[service])) == set()


@pytest.mark.parametrize("service", ["superset", "superset-init"])
def test_superset_gives_its_config_and_provisioning_every_variable_they_require(service, services):
    needed = required_env(sorted((ROOT / "superset").glob("*.py")))
    assert needed, "superset/ reads its secrets from the environment"
    assert needed - set(services[service]["environment"]) == set()


# --- start order, health, state -----------------------------------------------------------


def test_every_long_running_service_has_a_healthcheck(services):
    assert [n for n, s in services.items() if not is_one_shot(s) and not s.get("healthcheck")] == []


def test_dependencies_wait_for_health_or_for_a_finished_job(services):
    wrong = []
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if is_one_shot(services[dep]) else "service_healthy"
            if spec.get("condition") != expected:
                wrong.append(f"{name} -> {dep}: {spec.get('condition')} (want {expected})")
    assert wrong == []


def test_depends_on_is_in_mapping_form_everywhere(raw):
    assert [n for n, s in raw["services"].items() if isinstance(s.get("depends_on", {}), list)] == []


def test_every_service_has_a_memory_limit(services):
    assert [n for n, s in services.items() if not s.get("mem_limit")] == []


def test_stateful_services_keep_their_data_in_named_volumes(compose, services):
    declared = set(compose.get("volumes") or {})
    used = {v for s in services.values() for v in named_volumes(s)}
    assert used <= declared
    for name in ("kafka", "postgres", "trino", "superset", "airflow-scheduler", "prometheus", "alertmanager"):
        assert named_volumes(services[name]), name


def test_consumer_scales_with_replicas_from_env(raw, services):
    assert raw["services"]["stream_consumer"]["deploy"]["replicas"] == "${CONSUMER_REPLICAS}"
    # `--scale` needs no fixed container name and no host port
    assert not any("container_name" in s for s in services.values())
    assert "ports" not in services["stream_consumer"]


def test_one_shot_jobs_provision_topics_databases_airflow_and_superset(services):
    assert {n for n, s in services.items() if is_one_shot(s)} >= {
        "kafka-init",
        "postgres-init",
        "airflow-init",
        "superset-init",
    }


# --- memory stated in README ------------------------------------------------------------------


def mebibytes(limit: str | int) -> float:
    if isinstance(limit, int):
        return limit / 2**20
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([bkmg]?)b?", str(limit).lower()).groups()
    return float(number) * {"b": 2**-20, "k": 2**-10, "m": 1, "g": 1024, "": 2**-20}[unit]


def memory_total(services: dict[str, dict], env: dict[str, str], *, public: bool) -> int:
    total = 0.0
    for service in services.values():
        if is_one_shot(service) or (service.get("profiles") and not public):
            continue
        total += mebibytes(service["mem_limit"]) * int((service.get("deploy") or {}).get("replicas", 1))
    return round(total)


def test_readme_states_the_memory_total_of_the_compose_file(services, env):
    readme = README.read_text()
    assert f"{memory_total(services, env, public=False):,} MiB" in readme
    assert f"{memory_total(services, env, public=True):,} MiB" in readme


def test_readme_documents_the_compose_ports_and_the_public_demo():
    readme = README.read_text()
    for var, port in DEFAULT_PORTS.items():
        assert f"`{var}`" in readme and port in readme
    assert "docker compose --profile public up" in readme and "CLOUDFLARE_TUNNEL_TOKEN" in readme


# --- the public profile: Superset and the demo shop only, never with development secrets ------------
#: tunnel -> (the one service it publishes, its network, its token variable)
TUNNELS = {
    "cloudflared": ("superset", "public", "CLOUDFLARE_TUNNEL_TOKEN"),
    "cloudflared-shop": ("collector", "shop", "CLOUDFLARE_SHOP_TUNNEL_TOKEN"),
}


def test_only_the_tunnels_are_behind_a_profile(services):
    assert {n: s["profiles"] for n, s in services.items() if s.get("profiles")} == {t: ["public"] for t in TUNNELS}


@pytest.mark.parametrize("tunnel", sorted(TUNNELS))
def test_a_tunnel_reaches_what_it_publishes_and_nothing_else(services, tunnel):
    target, network, _ = TUNNELS[tunnel]
    networks = {n: set(s.get("networks") or ["default"]) for n, s in services.items()}
    assert networks[tunnel] == {network}
    assert {n for n, nets in networks.items() if network in nets} == {tunnel, target}
    assert "ports" not in services[tunnel]


@pytest.mark.parametrize("tunnel", sorted(TUNNELS))
def test_a_tunnel_publishes_its_service_by_quick_or_named_tunnel(raw, env, services, tunnel):
    target, _, token = TUNNELS[tunnel]
    command = raw["services"][tunnel]["command"]
    quick = shlex.split(interpolate(command, {**env, token: ""}))
    named = shlex.split(interpolate(command, {**env, token: "t0k"}))
    port = "8088" if target == "superset" else "8090"
    assert [w for w in quick if w.startswith("http")] == [f"http://{target}:{port}"]
    assert quick[0] == "tunnel" and quick[-1] != "run" and named[-1] == "run"
    assert raw["services"][tunnel]["environment"]["TUNNEL_TOKEN"] == f"${{{token}}}"
    assert services[tunnel]["depends_on"] == {target: {"condition": "service_healthy"}}


def dockerfile_instruction(dockerfile: Path, name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in dockerfile.read_text().splitlines() if line.startswith(name + " ")]


def test_cloudflared_starts_through_the_guard_on_every_start(services):
    """The check is the image's entrypoint, so no start of cloudflared can skip it (a restart, a
    Docker daemon restart, `up --no-deps cloudflared`); no one-shot job it could run without."""
    dockerfile = ROOT / "tunnel" / "Dockerfile"
    build = services["cloudflared"]["build"]
    assert (build["context"], build["dockerfile"]) == (".", "tunnel/Dockerfile")
    assert json.loads(dockerfile_instruction(dockerfile, "ENTRYPOINT")[0]) == [
        "python",
        "/opt/tunnel/guard.py",
        "cloudflared",
    ]
    assert "COPY tunnel/guard.py /opt/tunnel/guard.py" in dockerfile.read_text()
    assert services["cloudflared-shop"]["build"] == build


def test_cloudflared_binary_is_the_pinned_official_one(services, env):
    dockerfile = ROOT / "tunnel" / "Dockerfile"
    images = base_images(dockerfile, interpolate(build_args(services, dockerfile), env))
    assert images[0] == f"cloudflare/cloudflared:{env['CLOUDFLARED_VERSION']}"
    assert "COPY --from=cloudflared /usr/local/bin/cloudflared /usr/local/bin/cloudflared" in dockerfile.read_text()


@pytest.mark.parametrize("tunnel", sorted(TUNNELS))
def test_guard_is_given_every_password_and_secret_of_env(raw, env, tunnel):
    secrets = {k for k in env if re.search(r"PASSWORD|SECRET", k)}
    given = raw["services"][tunnel]["environment"]
    assert {k: given.get(k) for k in secrets} == {k: f"${{{k}}}" for k in secrets}


@pytest.mark.parametrize("tunnel", sorted(TUNNELS))
def test_guard_is_given_every_user_and_database_name_of_env(raw, env, tunnel):
    """The words a guess at a password starts from (tunnel/guard.py's zxcvbn user inputs)."""
    names = {k for k in env if re.search(r"_USER$|_DB$", k)}
    given = raw["services"][tunnel]["environment"]
    assert {k: given.get(k) for k in names} == {k: f"${{{k}}}" for k in names}


def run_guard(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tunnel" / "guard.py")], env=env, capture_output=True, text=True, timeout=30
    )


def test_guard_refuses_the_development_defaults_from_env(services):
    result = run_guard(**{k: v for k, v in services["cloudflared"]["environment"].items() if v})
    assert result.returncode == 1 and "POSTGRES_PASSWORD is still a development default" in result.stderr


# --- first-run order and state: what the official images' own logic does with this file --------------


def healthcheck_command(service: dict) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test[1:]) if test[0] == "CMD-SHELL" else shlex.join(test[1:])


#: how a healthcheck reaches its server over the network, by the client it runs
NETWORK_CLIENTS = re.compile(
    r"(\bpg_isready|\bcurl|\bwget|\burlopen|/kafka-broker-api-versions\.sh|/usr/bin/trino|\bcloudflared tunnel)\b"
)
#: healthchecks that do not ask their own server over the network, and why
NOT_A_NETWORK_PROBE = {
    # Airflow's own check: the DagProcessorJob's heartbeat in the metadata database (its address is
    # the metadata URL every Airflow container has)
    "airflow-dag-processor": "airflow jobs check --job-type DagProcessorJob",
}


def test_every_network_healthcheck_names_the_address_it_must_answer_on(services):
    """An implicit address answers for the wrong thing: pg_isready without -h asks the Unix socket
    (where the postgres image's temporary initdb server is ready before TCP is); `localhost` may be
    ::1 first. Every check that asks a server names 127.0.0.1 (and its port)."""
    wrong = []
    for name, service in services.items():
        if not service.get("healthcheck"):
            continue
        command = healthcheck_command(service)
        if name in NOT_A_NETWORK_PROBE:
            assert NOT_A_NETWORK_PROBE[name] in command, name
            continue
        if not NETWORK_CLIENTS.search(command):
            wrong.append(f"{name}: unknown kind of check: {command}")
        elif "localhost" in command or not re.search(r"127\.0\.0\.1(:[\w${}\[\]'\"]+|\s+-p\s+\d+)", command):
            wrong.append(f"{name}: {command}")
    assert wrong == []


def test_postgres_is_healthy_only_once_it_accepts_tcp(services):
    assert re.search(r"pg_isready -h 127\.0\.0\.1 -p 5432\b", healthcheck_command(services["postgres"]))


INIT_SCRIPT = ROOT / "postgres" / "init" / "10-init.sh"


def run_init_script(tmp_path: Path, env: dict[str, str], refusals: int, wait: int = 20):
    """10-init.sh with stand-ins for pg_isready and psql: the server refuses TCP `refusals` times
    (the image's temporary socket-only server, then its restart), then accepts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "pg_isready").write_text(
        "#!/bin/bash\n"
        f'echo "pg_isready $*" >> {calls}\n'
        f"n=$(grep -c ^pg_isready {calls})\n"
        f'if [ "$n" -le {refusals} ]; then echo "$PGHOST:$PGPORT - no response"; exit 2; fi\n'
        'echo "$PGHOST:$PGPORT - accepting connections"\n'
    )
    (bin_dir / "psql").write_text(
        "#!/bin/bash\n"
        f"n=$(grep -c ^pg_isready {calls})\n"
        f'if [ "$n" -le {refusals} ]; then echo "psql: connection refused" >&2; exit 2; fi\n'
        f'echo "psql $*" >> {calls}\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    proc_env = {
        **env,
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PGHOST": "postgres",
        "PGPORT": "5432",
        "POSTGRES_INIT_WAIT": str(wait),
    }
    result = subprocess.run(["bash", str(INIT_SCRIPT)], env=proc_env, capture_output=True, text=True, timeout=60)
    return result, calls.read_text().splitlines() if calls.exists() else []


def test_postgres_init_waits_until_postgres_accepts_tcp(tmp_path, env):
    """postgres-init may start while the image's temporary initdb server listens on its socket only:
    the script waits (and retries) until the server it was given answers over TCP."""
    result, calls = run_init_script(tmp_path, env, refusals=2)
    assert result.returncode == 0, result.stderr
    asked = [c for c in calls if c.startswith("pg_isready")]
    assert len(asked) == 3 and all("-h postgres -p 5432" in c for c in asked)
    assert [c.split()[-1].rsplit("/", 1)[-1] for c in calls if c.startswith("psql")] == [
        "roles.sql",
        "streaming.sql",
        "grants.sql",
    ]


def test_postgres_init_gives_up_with_the_address_it_waited_for(tmp_path, env):
    result, calls = run_init_script(tmp_path, env, refusals=1000, wait=2)
    assert result.returncode == 1
    assert "Postgres at postgres:5432 not accepting connections after 2 s" in result.stderr
    assert not [c for c in calls if c.startswith("psql")]


def test_postgres_init_comment_says_where_compose_mounts_it(services):
    text = INIT_SCRIPT.read_text()
    assert "/docker-entrypoint-initdb.d" not in text
    assert ("postgres/init", "/init") in bind_mounts(services["postgres-init"]) and "mounted at /init" in text


def test_postgres_shared_memory_holds_dbts_work_mem(services):
    """Parallel query workers exchange data in /dev/shm (Docker's default: 64 MB); dbt's role may
    use work_mem per sort or hash, so /dev/shm must hold more than that, several times over."""
    roles = (ROOT / "postgres/init/sql/roles.sql").read_text()
    work_mem = max(mebibytes(m.lower()) for m in re.findall(r"SET work_mem = '(\d+[kMG]B)'", roles))
    assert mebibytes(services["postgres"]["shm_size"]) >= 4 * work_mem


#: the apache/kafka image's data directory: its Dockerfile's `VOLUME` (docker/jvm/Dockerfile)
KAFKA_IMAGE_DATA_DIR = "/var/lib/kafka/data"


def test_kafka_keeps_its_log_on_the_kafka_data_volume(services):
    """The image writes server.properties from the KAFKA_* variables alone: without KAFKA_LOG_DIRS
    the log is /tmp/kafka-logs inside the container, lost with it, and the offsets stored in
    Postgres then point past the end of new, empty topics."""
    kafka = services["kafka"]
    assert f"kafka-data:{KAFKA_IMAGE_DATA_DIR}" in kafka["volumes"]
    assert kafka["environment"]["KAFKA_LOG_DIRS"] == KAFKA_IMAGE_DATA_DIR


def test_kafka_advertises_the_address_its_port_is_published_on(services, env):
    kafka = services["kafka"]
    [published] = kafka["ports"]
    host_ip, host_port, _ = published.split(":")
    advertised = dict(item.split("://") for item in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised["EXTERNAL"] == f"{host_ip}:{host_port}" == f"127.0.0.1:{env['KAFKA_PORT']}"


def kafka_lib() -> Path:
    """The broker's jars native mode downloads (native/services/kafka.py), downloaded if missing
    (once per machine, into the cache `./stack up kafka` uses)."""
    from native.context import Context
    from native.services.kafka import KafkaService

    ctx, kafka = Context(), KafkaService()
    kafka.install(ctx)
    return kafka.home(ctx) / "lib"


def kafka_java(lib: Path) -> list[str]:
    """A small, quick JVM on the broker's jars, for one of Kafka's command-line classes."""
    return [
        "java",
        "-Xmx64m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        f"-Dlog4j2.configurationFile={ROOT / 'native/kafka/log4j2.properties'}",
        "-cp",
        f"{lib}/*",
    ]


def read_properties(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")
    )


@pytest.fixture(scope="module")
def image_server_properties(services, tmp_path_factory) -> Path:
    """server.properties as the apache/kafka image writes it from compose's environment: the image's
    launch script runs `KafkaDockerWrapper setup` (the same class, from the same Kafka version's jars)
    with its defaults (/etc/kafka/docker), mounted (/mnt/shared/config) and final (/opt/kafka/config)
    folders. CLUSTER_ID is left out, so the wrapper stops after writing the files and before it
    formats the log directory (that would be this machine's /var/lib/kafka/data)."""
    lib = kafka_lib()
    folders = tmp_path_factory.mktemp("kafka-image")
    defaults, mounted, final = (folders / name for name in ("defaults", "mounted", "final"))
    for folder in (defaults, mounted, final):
        folder.mkdir()
    # the image's default (Kafka's config/server.properties) is used only when no KAFKA_* is set
    (defaults / "server.properties").write_text("process.roles=broker,controller\nlog.dirs=/tmp/kraft-combined-logs\n")
    environment = {k: str(v) for k, v in services["kafka"]["environment"].items()}
    result = subprocess.run(
        [
            *kafka_java(lib),
            "kafka.docker.KafkaDockerWrapper",
            "setup",
            f"--default-configs-dir={defaults}",
            f"--mounted-configs-dir={mounted}",
            f"--final-configs-dir={final}",
        ],
        env={"PATH": "/usr/bin:/bin", **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "CLUSTER_ID environment variable is not set" in result.stderr, result.stdout + result.stderr
    return final / "server.properties"


def test_kafka_image_writes_its_log_directory_onto_the_volume(image_server_properties):
    props = read_properties(image_server_properties)
    assert props["log.dirs"] == KAFKA_IMAGE_DATA_DIR


def test_kafka_image_config_has_the_listeners_and_quorum_of_the_compose_file(image_server_properties, env):
    props = read_properties(image_server_properties)
    assert props["process.roles"] == "broker,controller" and props["node.id"] == "1"
    assert props["listeners"] == "INTERNAL://:19092,EXTERNAL://:9092,CONTROLLER://:9093"
    assert props["advertised.listeners"] == f"INTERNAL://kafka:19092,EXTERNAL://127.0.0.1:{env['KAFKA_PORT']}"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["controller.quorum.voters"] == "1@kafka:9093"
    assert props["inter.broker.listener.name"] == "INTERNAL"
    assert props["num.partitions"] == env["KAFKA_PARTITIONS"]
    # the JVM's options are not broker settings
    assert not [k for k in props if "opts" in k]


def test_kafka_image_config_is_one_the_broker_accepts(image_server_properties, tmp_path):
    """Kafka's StorageTool validates the whole KafkaConfig before it formats: the image runs it on
    the same file at every start (here with the log directory moved into a temporary folder)."""
    props = read_properties(image_server_properties)
    props["log.dirs"] = str(tmp_path / "data")
    config = tmp_path / "server.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    result = subprocess.run(
        [
            *kafka_java(kafka_lib()),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id=5L6g3nShT-eMCtK--X86sw",
            "-c",
            str(config),
        ],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "data" / "meta.properties").exists()


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_every_airflow_container_signs_with_the_one_secret_key_and_runs_dbt_with_env_threads(service, raw):
    environment = raw["services"][service]["environment"]
    assert environment["AIRFLOW__API__SECRET_KEY"] == "${AIRFLOW_SECRET_KEY}"
    assert environment["DBT_THREADS"] == "${DBT_THREADS}"


# --- airflow/airflow.env: Airflow's constant settings, x-airflow's env_file -----------------------


def shared_airflow_env() -> dict[str, str]:
    return env_file_values(AIRFLOW_ENV_FILE)


def test_shared_airflow_env_states_literal_values_only():
    """One KEY=VALUE a line (or a comment), without quotes or ${...}: docker compose and
    python-dotenv then read the same values from it."""
    lines = [line for line in AIRFLOW_ENV_FILE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines and [line for line in lines if not re.fullmatch(r"[A-Z][A-Z0-9_]*=[^\s$'\"#]+", line)] == []
    assert shared_airflow_env() == dict(line.split("=", 1) for line in lines)


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_every_airflow_container_reads_the_shared_airflow_env(service, raw, services):
    """Listed in the service's env_file (x-airflow's), and no key of it set again in its
    `environment`, which would win over the file."""
    assert AIRFLOW_ENV_FILE in env_file_paths(services[service])
    assert set(shared_airflow_env()) & set(raw["services"][service]["environment"]) == set()
    environment = container_environment(services[service])
    assert {k: environment.get(k) for k in shared_airflow_env()} == shared_airflow_env()


# --- passwords in database URLs -------------------------------------------------------------------

HOSTILE_PASSWORD = "p@ss:w/rd%41#?+ =&"


def test_no_database_url_is_pasted_together_from_env_values(raw):
    """Compose cannot percent-encode: a URL with ${...} in its user or password part breaks on the
    first password with @ : / % # in it."""
    pasted = []
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"://[^/@\s]*\$\{[A-Z_]+\}[^/@\s]*@", str(value)):
                pasted.append(f"{name}: {key}")
    assert pasted == []


def sqlalchemy_python() -> Path | None:
    """A Python with SQLAlchemy (the Airflow or Superset virtualenv native mode installed), if any."""
    from native.context import Context

    found = sorted((Context().cache / "venvs").glob("*/bin/python"))
    for python in found:
        if python.parent.parent.name.startswith(("airflow-", "superset-")):
            return python
    return None


def assert_url_keeps_the_password(url: str, user: str, password: str, database: str) -> None:
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    assert (unquote(parts.username), unquote(parts.password), parts.path) == (user, password, f"/{database}")
    python = sqlalchemy_python()
    if python:  # SQLAlchemy's own parser, as Airflow and Superset use it
        script = (
            "import sys; from sqlalchemy.engine import make_url; "
            "u = make_url(sys.argv[1]); print(u.username, u.password, sep='\\n')"
        )
        parsed = subprocess.run([str(python), "-c", script, url], capture_output=True, text=True, timeout=60)
        assert parsed.stdout.splitlines() == [user, password], parsed.stderr


def test_airflow_metadata_url_keeps_any_password(raw, env):
    """Compose's AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD, run as Airflow runs it (shlex-split, no
    shell) in each Airflow container's environment, with a user and password full of URL delimiters."""
    hostile = {**env, "AIRFLOW_DB_PASSWORD": HOSTILE_PASSWORD, "AIRFLOW_DB_USER": "air:flow@"}
    urls = set()
    for service in AIRFLOW_SERVICES:
        environment = {k: str(v) for k, v in interpolate(raw["services"][service]["environment"], hostile).items()}
        for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC_CMD"):
            argv = shlex.split(environment[key])
            assert argv[0] == "python"
            result = subprocess.run(
                [sys.executable, *argv[1:]], env=environment, capture_output=True, text=True, timeout=30
            )
            assert result.returncode == 0, result.stderr
            urls.add(result.stdout)  # Airflow takes the output as is: no newline after the URL
    [url] = urls
    assert url.startswith("postgresql+psycopg://") and "@postgres:5432/" in url
    assert_url_keeps_the_password(url, "air:flow@", HOSTILE_PASSWORD, env["AIRFLOW_DB"])


@pytest.mark.parametrize("service", ["superset", "superset-init"])
def test_superset_metadata_url_keeps_any_password(service, services, env):
    import importlib.util

    spec = importlib.util.spec_from_file_location("metadata_db", ROOT / "superset" / "metadata_db.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    environment = {**services[service]["environment"], "SUPERSET_DB_PASSWORD": HOSTILE_PASSWORD}
    url = module.metadata_db_uri(environment)
    assert url.startswith("postgresql+psycopg2://") and "@postgres:5432/" in url
    assert_url_keeps_the_password(url, env["SUPERSET_DB_USER"], HOSTILE_PASSWORD, env["SUPERSET_DB"])
    # the rate limits' storage connects with the same URL through libpq (superset/rate_limits.py)
    import psycopg

    libpq = psycopg.conninfo.conninfo_to_dict(url.replace("postgresql+psycopg2://", "postgresql://", 1))
    assert (libpq["user"], libpq["password"], libpq["dbname"]) == (
        env["SUPERSET_DB_USER"],
        HOSTILE_PASSWORD,
        env["SUPERSET_DB"],
    )


# --- memory: healthchecks beside the servers ------------------------------------------------------


def heap_of(options: str) -> float:
    """-Xmx of a JVM option string, MiB."""
    [size] = re.findall(r"-Xmx(\d+[kmgKMG]?)", options)
    return mebibytes(size.lower())


#: service -> how its healthcheck starts a JVM
JVM_HEALTHCHECKS = {"kafka": "kafka-broker-api-versions.sh", "trino": "-jar /usr/bin/trino"}


@pytest.mark.parametrize("service", sorted(JVM_HEALTHCHECKS))
def test_healthcheck_jvms_run_with_a_small_heap_of_their_own(service, services):
    """A check's JVM starts beside the server every few seconds: with a small heap, not a default of
    a quarter of the container's memory, nor the broker's KAFKA_HEAP_OPTS the container has."""
    command = healthcheck_command(services[service])
    assert JVM_HEALTHCHECKS[service] in command
    if service == "kafka":
        [options] = re.findall(r"KAFKA_HEAP_OPTS='([^']*)'", command)
    else:
        options = command.split(" -jar ", 1)[0]
    assert heap_of(options) <= 64


def test_jvm_servers_have_twice_their_heap_as_limit(services):
    """Off-heap memory (metaspace, code cache, threads, GC, direct buffers) and the check's JVM
    need room beside the heap: each JVM server's limit is at least twice its largest heap."""
    heaps = {
        "kafka": heap_of(services["kafka"]["environment"]["KAFKA_HEAP_OPTS"]),
        "trino": heap_of((ROOT / "trino/etc/jvm.config").read_text()),
    }
    assert {n: mebibytes(services[n]["mem_limit"]) >= 2 * h for n, h in heaps.items()} == dict.fromkeys(heaps, True)


def test_a_container_checked_by_the_airflow_cli_has_the_schedulers_memory(services):
    """`airflow jobs check` is a whole Airflow process beside the one it checks."""
    checked = [n for n, s in services.items() if s.get("healthcheck") and "airflow " in healthcheck_command(s)]
    assert checked and {n: services[n]["mem_limit"] for n in checked} == dict.fromkeys(
        checked, services["airflow-scheduler"]["mem_limit"]
    )
