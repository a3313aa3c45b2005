"""The Kubernetes tier: deploy/kubernetes/ rendered as `kubectl apply -k` would render it, with no
cluster and no service. Its tools and schemas are downloaded once into the shared cache
(artifacts.py); a run after that is offline."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from common.settings import ENV_FILE, env_file_values
from deploy.kubernetes.generate import generate
from tests.kubernetes import artifacts

DEPLOY = artifacts.DEPLOY


def render(env_file: Path, workdir: Path) -> list[dict]:
    """deploy/kubernetes/ copied to `workdir`, its generated/ written from `env_file`, built by kustomize."""
    tree = workdir / "kubernetes"
    shutil.copytree(DEPLOY, tree, ignore=shutil.ignore_patterns("generated", "__pycache__"))
    generate(env_file, tree / "generated")
    built = subprocess.run([str(artifacts.kustomize()), "build", str(tree)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def build(folder: Path) -> list[dict]:
    built = subprocess.run([str(artifacts.kustomize()), "build", str(folder)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


@pytest.fixture(scope="session")
def env() -> dict[str, str]:
    return env_file_values(ENV_FILE)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> list[dict]:
    """Every object of the kustomization, from the checkout's .env."""
    return render(ENV_FILE, tmp_path_factory.mktemp("render"))


@pytest.fixture(scope="session")
def applications() -> list[dict]:
    """The Argo CD Applications (deploy/kubernetes/argocd/)."""
    return build(DEPLOY / "argocd")


@pytest.fixture(scope="session")
def crd_schemas() -> dict[tuple[str, str], dict]:
    return artifacts.crd_schemas()


def containers(obj: dict) -> list[dict]:
    """The containers (init containers too) of a workload or a CloudNativePG/Strimzi-free pod spec."""
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if obj["kind"] in ("Deployment", "Job", "StatefulSet") else {}
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict], kind: str, name: str) -> dict:
    """The object of that kind and name (a generated one with the content hash kustomize appends)."""
    pattern = re.compile(rf"{re.escape(name)}(-[a-z0-9]{{10}})?")
    (found,) = [o for o in objects if o["kind"] == kind and pattern.fullmatch(o["metadata"]["name"])]
    return found
