"""The charts Argo CD installs (deploy/kubernetes/argocd/): pinned, and their values kept to this
repository's settings. The charts themselves are not rendered here (chart repositories are not
reachable from these machines) and their values.schema.json could not be obtained from a reachable
registry: README.md says what that leaves unverified."""

from __future__ import annotations

import re

import pytest
import yaml

from common.settings import REPO_ROOT
from tests.kubernetes.conftest import DEPLOY

VALUES = DEPLOY / "argocd" / "values"
#: chart -> the values paths of every pod it runs that must state requests and limits
BOUNDED = {
    "airflow": ["scheduler", "dagProcessor", "apiServer", "migrateDatabaseJob"],
    "trino": ["coordinator", "worker"],
    "superset": ["supersetNode", "init"],
}


def values(chart: str) -> dict:
    return yaml.safe_load((VALUES / f"{chart}.yaml").read_text())


def dig(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def test_each_chart_is_pinned_to_one_version_with_values_beside_it(applications):
    for app in applications:
        (chart,) = [s for s in app["spec"]["sources"] if "chart" in s]
        assert re.fullmatch(r"\d+\.\d+\.\d+", chart["targetRevision"]), app["metadata"]["name"]
        for file in chart["helm"]["valueFiles"]:
            assert (REPO_ROOT / file.removeprefix("$values/")).is_file(), file
    assert {a["metadata"]["name"] for a in applications} == set(BOUNDED)


@pytest.mark.parametrize("chart", sorted(BOUNDED))
def test_every_chart_pod_has_requests_and_limits(chart):
    tree = values(chart)
    for path in BOUNDED[chart]:
        resources = dig(tree, path)["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"]), path


@pytest.mark.parametrize("chart", ["airflow", "superset"])
def test_the_project_images_of_the_charts_take_the_kustomization_tag(chart):
    images = yaml.safe_load((DEPLOY / "images.yaml").read_text())["data"]
    image = values(chart)["images"]["airflow"] if chart == "airflow" else values(chart)["image"]
    assert (image["repository"], image["tag"]) == (f"{images['registry']}/rt-analytics-{chart}", images["tag"])


def test_trino_runs_the_version_of_env(env):
    assert values("trino")["image"]["tag"] == env["TRINO_VERSION"]


def properties(path) -> dict[str, str]:
    lines = [ln.split("=", 1) for ln in path.read_text().splitlines() if "=" in ln and not ln.startswith("#")]
    return {k.strip(): v.strip() for k, v in lines}


def test_trino_nodes_keep_the_limits_of_trino_etc():
    """The chart writes config.properties itself; per node the limits are trino/etc's."""
    etc = properties(REPO_ROOT / "trino" / "etc" / "config.properties")
    tree = values("trino")
    extra = dict(p.split("=", 1) for p in tree["additionalConfigProperties"])
    assert tree["server"]["config"]["query"]["maxMemory"] == etc["query.max-memory"]
    for node in ("coordinator", "worker"):
        assert dig(tree, f"{node}.config.query.maxMemoryPerNode") == etc["query.max-memory-per-node"]
        assert dig(tree, f"{node}.config.memory.heapHeadroomPerNode") == etc["memory.heap-headroom-per-node"]
        jvm = (REPO_ROOT / "trino" / "etc" / "jvm.config").read_text()
        assert f"-Xmx{dig(tree, f'{node}.jvm.maxHeapSize')}" in jvm.splitlines()
    for key in ("query.max-total-memory", "query.max-execution-time", "task.concurrency", "task.max-worker-threads"):
        assert extra[key] == etc[key], key


def test_trino_reads_the_catalogs_and_rules_of_trino_etc():
    """trino/etc's catalog files are mounted (the kustomization's ConfigMaps), and its rules named."""
    tree = values("trino")
    mounts = {m["configMap"]: m["path"] for m in tree["configMounts"]}
    extra = dict(p.split("=", 1) for p in tree["additionalConfigProperties"])
    assert extra["catalog.config-dir"] == mounts["trino-catalogs"]
    assert extra["resource-groups.config-file"] == mounts["trino-rules"] + "/resource-groups.json"
    assert extra["security.config-file"] == mounts["trino-rules"] + "/access-control.json"
    etc = properties(REPO_ROOT / "trino" / "etc" / "catalog" / "kafka.properties")
    assert mounts["trino-kafka-tables"] == "/etc/trino/" + etc["kafka.table-description-dir"].removeprefix("etc/")
    assert tree["catalogs"] == {}
