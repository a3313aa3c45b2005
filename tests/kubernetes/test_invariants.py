"""What must hold of the rendered kustomization beyond its schemas: one configuration (.env, the
repository's own files), secrets kept apart, the consumer group bounded by the partitions, every
container bounded and unprivileged, probes that the code answers."""

from __future__ import annotations

import base64
import importlib.util
import re

import yaml

from common.settings import REPO_ROOT
from common.topics import topic_configs
from deploy.kubernetes.generate import is_secret
from tests.kubernetes.conftest import DEPLOY, containers, named, of_kind, render

#: the containers of the project's own images (the rest run the engines' official images)
OWN_IMAGE = re.compile(r"/rt-analytics-[a-z]+:")


def secret_values(rendered: list[dict]) -> set[str]:
    """The values of .env's secrets, as the Secret rt-secrets holds them (the other Secrets hold them
    again in other shapes, beside names that are no secret: user names)."""
    secret = named(rendered, "Secret", "rt-secrets")
    return {v for v in (base64.b64decode(v).decode() for v in secret["data"].values()) if v}


# --- the consumer group ------------------------------------------------------------------------


def test_consumer_replicas_never_exceed_the_partition_count(rendered, env):
    scaled = named(rendered, "ScaledObject", "stream-consumer")
    deployment = named(rendered, "Deployment", "stream-consumer")
    partitions = int(env["KAFKA_PARTITIONS"])
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, partitions)
    assert deployment["spec"]["replicas"] <= partitions


def test_the_consumer_maximum_follows_kafka_partitions(tmp_path, env):
    """KAFKA_PARTITIONS is read, not written down twice: another value gives another maximum."""
    other = tmp_path / ".env"
    other.write_text("".join(f"{k}={v}\n" for k, v in {**env, "KAFKA_PARTITIONS": "3"}.items()))
    objects = render(other, tmp_path)
    assert named(objects, "ScaledObject", "stream-consumer")["spec"]["maxReplicaCount"] == 3
    assert {t["spec"]["partitions"] for t in of_kind(objects, "KafkaTopic")} == {3}


def test_the_consumer_scales_on_its_group_lag_of_the_events_topic(rendered, env):
    (trigger,) = named(rendered, "ScaledObject", "stream-consumer")["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert (trigger["metadata"]["topic"], trigger["metadata"]["consumerGroup"]) == (
        env["KAFKA_TOPIC"],
        env["KAFKA_CONSUMER_GROUP"],
    )


def test_a_consumer_waiting_for_postgres_is_unready_not_restarted(rendered):
    """/healthz says 503 while the consumer is stalled on Postgres: readiness may use it, liveness
    must not (a restart does not bring Postgres back, and costs the group a rebalance)."""
    (container,) = containers(named(rendered, "Deployment", "stream-consumer"))
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] != "/healthz"


def test_the_consumer_has_time_to_finish_its_open_batch(rendered, env):
    """SIGTERM commits the open batch (at most CONSUMER_BATCH_MAX_MS of events) and leaves the group;
    the grace period covers that with a wide margin."""
    spec = named(rendered, "Deployment", "stream-consumer")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= 30 + int(env["CONSUMER_BATCH_MAX_MS"]) / 1000


def test_a_disruption_budget_keeps_consumers(rendered):
    pdb = named(rendered, "PodDisruptionBudget", "stream-consumer")
    pod_labels = named(rendered, "Deployment", "stream-consumer")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


# --- topics, Postgres, Prometheus: the repository's own declarations ---------------------------


def test_kafka_topics_are_common_topics(rendered, env):
    declared = topic_configs(env["KAFKA_TOPIC"], env["KAFKA_PROFILES_TOPIC"])
    topics = {t["spec"]["topicName"]: t["spec"]["config"] for t in of_kind(rendered, "KafkaTopic")}
    assert topics == declared
    assert {t["spec"]["partitions"] for t in of_kind(rendered, "KafkaTopic")} == {int(env["KAFKA_PARTITIONS"])}


def test_postgres_is_set_up_by_the_init_sql_compose_runs(rendered):
    data = named(rendered, "ConfigMap", "postgres-init")["data"]
    init = REPO_ROOT / "postgres" / "init"
    expected = {"10-init.sh": (init / "10-init.sh").read_text()}
    expected |= {p.name: p.read_text() for p in (init / "sql").glob("*.sql")}
    assert data == expected


def test_postgres_has_a_primary_and_a_replica(rendered, env):
    cluster = named(rendered, "Cluster", "rt-postgres")
    assert cluster["spec"]["instances"] == 2
    assert cluster["spec"]["imageName"].endswith(":" + env["POSTGRES_VERSION"])
    initdb = cluster["spec"]["bootstrap"]["initdb"]
    assert (initdb["database"], initdb["owner"]) == (env["POSTGRES_DB"], env["POSTGRES_USER"])


def test_the_alert_rules_are_monitoring_alerts_yml(rendered):
    (rule,) = of_kind(rendered, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load((REPO_ROOT / "monitoring" / "alerts.yml").read_text())["groups"]


def scrape_jobs(rendered: list[dict]) -> set[str]:
    jobs = set()
    for monitor in [*of_kind(rendered, "PodMonitor"), *of_kind(rendered, "ServiceMonitor")]:
        endpoints = monitor["spec"].get("podMetricsEndpoints") or monitor["spec"].get("endpoints")
        for endpoint in endpoints:
            jobs |= {r["replacement"] for r in endpoint.get("relabelings", []) if r.get("targetLabel") == "job"}
    return jobs


def test_every_job_prometheus_yml_scrapes_is_scraped_under_its_name(rendered):
    """The alerts name jobs (up{job="stream_consumer"}): the cluster's targets keep compose's job names.
    Prometheus and Alertmanager themselves are the Prometheus Operator's to scrape."""
    config = yaml.safe_load((REPO_ROOT / "monitoring" / "prometheus.yml").read_text())
    wanted = {job["job_name"] for job in config["scrape_configs"]} - {"prometheus", "alertmanager"}
    assert wanted <= scrape_jobs(rendered)


def test_every_metrics_port_has_a_monitor(rendered):
    monitored = set()
    for monitor in [*of_kind(rendered, "PodMonitor"), *of_kind(rendered, "ServiceMonitor")]:
        monitored.add(tuple(sorted(monitor["spec"]["selector"]["matchLabels"].items())))
    for deployment in of_kind(rendered, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if any(p.get("name") == "metrics" for c in containers(deployment) for p in c.get("ports", [])):
            assert any(set(m) <= set(labels.items()) for m in monitored), deployment["metadata"]["name"]


# --- one configuration, secrets apart ----------------------------------------------------------


def test_every_setting_of_env_is_in_the_configmap_or_the_secret_never_both(rendered, env):
    config = named(rendered, "ConfigMap", "rt-config")["data"]
    secret = named(rendered, "Secret", "rt-secrets")["data"]
    assert set(config) | set(secret) == set(env)
    assert set(config) & set(secret) == set()
    assert all(is_secret(k) for k in secret) and not any(is_secret(k) for k in config)


def test_the_secret_holds_what_the_tunnel_guard_checks_and_the_tokens(rendered, env):
    """The names tunnel/guard.py treats as secrets, and the tunnel tokens, are never settings."""
    spec = importlib.util.spec_from_file_location("guard", REPO_ROOT / "tunnel" / "guard.py")
    assert spec and spec.loader
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    secret = named(rendered, "Secret", "rt-secrets")["data"]
    wanted = {k for k in env if guard.SECRET_NAME.search(k) or k.endswith("_TOKEN")}
    assert wanted and wanted <= set(secret)


def test_no_secret_value_is_in_any_configmap(rendered):
    secrets = secret_values(rendered)
    leaks = {
        (cm["metadata"]["name"], key)
        for cm in of_kind(rendered, "ConfigMap")
        for key, value in (cm.get("data") or {}).items()
        if any(s in value for s in secrets)
    }
    assert leaks == set()


def test_no_secret_value_is_in_the_chart_values(rendered):
    secrets = secret_values(rendered)
    values = {p.name: p.read_text() for p in (DEPLOY / "argocd").rglob("*.yaml")}
    assert {name for name, text in values.items() if any(s in text for s in secrets)} == set()


# --- every container ---------------------------------------------------------------------------


def all_containers(rendered: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{o['kind']}/{o['metadata']['name']}", c) for o in rendered for c in containers(o)]


def test_every_container_has_requests_and_limits(rendered):
    missing = [
        name
        for name, c in all_containers(rendered)
        if not {"cpu", "memory"} <= set(c.get("resources", {}).get("requests", {}))
        or not {"cpu", "memory"} <= set(c.get("resources", {}).get("limits", {}))
    ]
    assert missing == []


def test_every_operator_managed_pod_has_requests_and_limits(rendered):
    """Kafka's nodes and entity operator, Postgres' instances: the operators pass these on."""
    bounded = [named(rendered, "KafkaNodePool", "dual-role")["spec"]["resources"]]
    bounded += [v["resources"] for v in named(rendered, "Kafka", "rt-kafka")["spec"]["entityOperator"].values()]
    bounded.append(named(rendered, "Cluster", "rt-postgres")["spec"]["resources"])
    assert all({"cpu", "memory"} <= set(r["requests"]) and {"cpu", "memory"} <= set(r["limits"]) for r in bounded)


def test_every_container_runs_unprivileged_on_a_read_only_root(rendered):
    loose = []
    for obj in rendered:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for c in containers(obj):
            security = c.get("securityContext", {})
            if not (
                pod.get("securityContext", {}).get("runAsNonRoot")
                and security.get("readOnlyRootFilesystem")
                and security.get("allowPrivilegeEscalation") is False
                and security.get("capabilities", {}).get("drop") == ["ALL"]
            ):
                loose.append(f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}")
    assert loose == []


def served_paths(package: str) -> str:
    """The code a `python -m <package>` container runs: its package and common/ (the shared server)."""
    files = [*(REPO_ROOT / package.replace(".", "/")).rglob("*.py"), *(REPO_ROOT / "common").rglob("*.py")]
    return "\n".join(f.read_text() for f in files)


def test_every_probe_path_exists_in_the_code(rendered):
    unanswered = []
    for name, c in all_containers(rendered):
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            path = c.get(probe, {}).get("httpGet", {}).get("path")
            if path is None:
                continue
            command = c.get("command", [])
            assert command[:2] == ["python", "-m"], f"{name}: an HTTP probe on a program this repository does not own"
            if f'"{path}"' not in served_paths(command[2]):
                unanswered.append(f"{name} {probe} {path}")
    assert unanswered == []


# --- images and versions from one setting ------------------------------------------------------


def test_the_project_images_take_one_registry_and_one_tag(rendered):
    images = yaml.safe_load((DEPLOY / "images.yaml").read_text())["data"]
    own = [c["image"] for _, c in all_containers(rendered) if OWN_IMAGE.search(c["image"])]
    wanted = re.compile(rf"{re.escape(images['registry'])}/rt-analytics-[a-z]+:{re.escape(images['tag'])}")
    assert own and [i for i in own if not wanted.fullmatch(i)] == []


def test_the_engines_run_the_versions_of_env(rendered, env):
    assert named(rendered, "Kafka", "rt-kafka")["spec"]["kafka"]["version"] == env["KAFKA_VERSION"]
    psql = containers(named(rendered, "Job", "postgres-init"))[0]
    assert psql["image"] == f"postgres:{env['POSTGRES_VERSION']}"


#: keys of the charts' values whose value names a ConfigMap or a Secret
REFERENCE_KEYS = {"configMap", "secretName", "metadataSecretName", "apiSecretKeySecretName", "jwtSecretName"}
REFERENCE_PARENTS = {"configMapRef", "secretRef", "configMapKeyRef", "secretKeyRef"}


def references(value, parent: str = "") -> set[str]:
    """The ConfigMaps and Secrets a chart's values name."""
    if isinstance(value, dict):
        found = {
            v
            for k, v in value.items()
            if isinstance(v, str) and (k in REFERENCE_KEYS or (k == "name" and parent in REFERENCE_PARENTS))
        }
        return found | {r for k, v in value.items() for r in references(v, k)}
    if isinstance(value, list):
        if parent == "envFromSecrets":  # Superset's chart: a list of Secret names
            return {v for v in value if isinstance(v, str)}
        return {r for v in value for r in references(v, parent)}
    if isinstance(value, str) and parent == "extraEnvFrom":  # a YAML string in Airflow's chart
        return references(yaml.safe_load(value), parent)
    return set()


def test_every_configmap_and_secret_the_charts_name_is_generated(rendered):
    """The charts (argocd/values/) read .env's settings and trino/etc/ from the kustomization's objects."""
    generated = {o["metadata"]["name"] for o in [*of_kind(rendered, "ConfigMap"), *of_kind(rendered, "Secret")]}
    named_by_charts = set()
    for path in (DEPLOY / "argocd" / "values").glob("*.yaml"):
        named_by_charts |= references(yaml.safe_load(path.read_text()))
    assert {"rt-config", "rt-secrets", "trino-catalogs", "airflow-metadata"} <= named_by_charts
    assert named_by_charts - generated == set()
