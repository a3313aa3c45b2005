"""python -m deploy.kubernetes.generate: writes deploy/kubernetes/generated/, the part of the
kustomization that kustomize cannot read from the repository itself.

kustomize reads files below the kustomization's folder only, and cannot split one env file into a
ConfigMap and a Secret. So this writes, from the same sources compose and native mode read:

- `config.env` and `secrets.env`: `.env` split by name (SECRET_NAME: the tunnel guard's rule, plus
  tokens and the webhook URL); `postgres-owner.env`, the owner's login as CloudNativePG wants it;
  `airflow-*`, Airflow's metadata URL, keys and users' passwords as the official chart wants them;
- `kafka-topics.yaml`: the `KafkaTopic`s from common/topics.py's `topic_configs`;
- `prometheusrule.yaml`: the `PrometheusRule` whose groups are monitoring/alerts.yml's;
- `files/`: postgres/init/ and trino/etc/ as they are, for the configMapGenerators.

Nothing in generated/ is committed (.gitignore); run this again after editing any of its sources.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import yaml

from common.settings import ENV_FILE, REPO_ROOT, env_file_values
from common.topics import topic_configs

HERE = Path(__file__).resolve().parent
GENERATED = HERE / "generated"
#: a `.env` name that holds a secret: the tunnel guard's PASSWORD|SECRET (tunnel/guard.py), plus the
#: tunnel tokens and the alert webhook (a URL with its credentials in it)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|WEBHOOK")
#: Strimzi's name for the Kafka cluster (kafka.yaml); KafkaTopics carry it as a label
KAFKA_CLUSTER = "rt-kafka"
#: brokers a topic's partitions are copied to (the KafkaNodePool has 3)
TOPIC_REPLICAS = 3
#: files and folders copied as they are (relative to the repository), for the configMapGenerators
COPIED = ("postgres/init", "trino/etc", "monitoring/postgres_exporter", "airflow/airflow.env")
#: CloudNativePG's primary (postgres.yaml: Cluster rt-postgres)
POSTGRES_SERVICE = "rt-postgres-rw"


def is_secret(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def split_env(values: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(settings, secrets) of one `.env`."""
    config = {k: v for k, v in values.items() if not is_secret(k)}
    secrets = {k: v for k, v in values.items() if is_secret(k)}
    return config, secrets


def env_text(values: dict[str, str]) -> str:
    """KEY=value lines as kustomize's `envs:` reads them (the value is everything after the first `=`,
    unquoted: a multi-line value cannot be written, and is refused)."""
    for key, value in values.items():
        if "\n" in value:
            raise SystemExit(f"generate: {key} holds a newline; kustomize's env files cannot carry it")
    return "".join(f"{k}={v}\n" for k, v in values.items())


def kafka_topics(env: dict[str, str]) -> list[dict]:
    """One KafkaTopic per topic of common/topics.py, with KAFKA_PARTITIONS partitions. Kubernetes
    names allow no `_`: the object is named with `-`, the topic keeps its name (spec.topicName)."""
    partitions = int(env["KAFKA_PARTITIONS"])
    return [
        {
            "apiVersion": "kafka.strimzi.io/v1",
            "kind": "KafkaTopic",
            "metadata": {"name": topic.replace("_", "-").lower(), "labels": {"strimzi.io/cluster": KAFKA_CLUSTER}},
            "spec": {"topicName": topic, "partitions": partitions, "replicas": TOPIC_REPLICAS, "config": config},
        }
        for topic, config in topic_configs(env["KAFKA_TOPIC"], env["KAFKA_PROFILES_TOPIC"]).items()
    ]


def prometheus_rule(alerts: Path = REPO_ROOT / "monitoring" / "alerts.yml") -> dict:
    """monitoring/alerts.yml as a PrometheusRule: the operator's spec.groups is a rules file's groups."""
    groups = yaml.safe_load(alerts.read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "rt-analytics-alerts", "labels": {"app.kubernetes.io/part-of": "rt-analytics"}},
        "spec": {"groups": groups},
    }


def airflow_metadata_url(env: dict[str, str]) -> str:
    """The metadata URL compose's Airflow builds in the container (x-airflow's *_CMD): each part
    percent-encoded, a password with @ : / % or # in it included."""
    from urllib.parse import quote

    user, password, db = (quote(env[k], safe="") for k in ("AIRFLOW_DB_USER", "AIRFLOW_DB_PASSWORD", "AIRFLOW_DB"))
    return f"postgresql+psycopg://{user}:{password}@{POSTGRES_SERVICE}:5432/{db}"


def generate(env_file: Path = ENV_FILE, out: Path = GENERATED) -> Path:
    values = env_file_values(env_file)
    config, secrets = split_env(values)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "config.env").write_text(env_text(config))
    (out / "secrets.env").write_text(env_text(secrets))
    owner = {"username": values["POSTGRES_USER"], "password": values["POSTGRES_PASSWORD"]}
    (out / "postgres-owner.env").write_text(env_text(owner))
    # the official Airflow chart's secrets (data.metadataSecretName, apiSecretKeySecretName, jwtSecretName)
    (out / "airflow-metadata.env").write_text(env_text({"connection": airflow_metadata_url(values)}))
    (out / "airflow-api-secret-key.env").write_text(env_text({"api-secret-key": values["AIRFLOW_SECRET_KEY"]}))
    (out / "airflow-jwt-secret.env").write_text(env_text({"jwt-secret": values["AIRFLOW_JWT_SECRET"]}))
    # SimpleAuthManager's passwords file, as compose's airflow-apiserver writes it at start
    passwords = {values[f"AIRFLOW_{who}_USER"]: values[f"AIRFLOW_{who}_PASSWORD"] for who in ("ADMIN", "MONITOR")}
    (out / "airflow-passwords.json").write_text(json.dumps(passwords))
    (out / "kafka-topics.yaml").write_text(yaml.safe_dump_all(kafka_topics(values), sort_keys=False))
    (out / "prometheusrule.yaml").write_text(yaml.safe_dump(prometheus_rule(), sort_keys=False))
    for name in COPIED:
        source, target = REPO_ROOT / name, out / "files" / name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", type=Path, default=ENV_FILE, help="the settings (default: the checkout's .env)")
    parser.add_argument("--out", type=Path, default=GENERATED, help="where to write (default: %(default)s)")
    args = parser.parse_args()
    print(f"wrote {generate(args.env_file, args.out)}")


if __name__ == "__main__":
    main()
