"""Every rendered object is valid: core kinds against the Kubernetes schemas of versions.yaml's
version (kubernetes-validate, strict: an unknown field fails), the operators' kinds against the
CRDs of the operator versions versions.yaml pins, made as strict."""

from __future__ import annotations

import jsonschema
import kubernetes_validate
import pytest

from tests.kubernetes.artifacts import VERSIONS

#: API groups whose kinds are the operators' (CRDs), not Kubernetes' own
OPERATOR_GROUPS = {"kafka.strimzi.io", "postgresql.cnpg.io", "keda.sh", "argoproj.io", "monitoring.coreos.com"}


def is_operator_kind(obj: dict) -> bool:
    return obj["apiVersion"].split("/")[0] in OPERATOR_GROUPS


def label(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def core_errors(obj: dict) -> list[str]:
    try:
        kubernetes_validate.validate(obj, VERSIONS["kubernetes"], strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"no Kubernetes {VERSIONS['kubernetes']} schema: {exc}"]
    return []


def crd_errors(obj: dict, schemas: dict) -> list[str]:
    schema = schemas.get((obj["apiVersion"], obj["kind"]))
    if schema is None:
        return [f"no CRD of the pinned operators serves {obj['apiVersion']} {obj['kind']}"]
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def test_core_objects_are_valid_kubernetes(rendered):
    errors = {label(o): core_errors(o) for o in rendered if not is_operator_kind(o)}
    assert {k: v for k, v in errors.items() if v} == {}


def test_operator_objects_match_their_crds(rendered, crd_schemas):
    errors = {label(o): crd_errors(o, crd_schemas) for o in rendered if is_operator_kind(o)}
    assert {k: v for k, v in errors.items() if v} == {}


def test_argo_cd_applications_match_their_crd(applications, crd_schemas):
    errors = {label(o): crd_errors(o, crd_schemas) for o in applications}
    assert {k: v for k, v in errors.items() if v} == {}


@pytest.mark.parametrize(
    "kind", ["Kafka", "KafkaNodePool", "KafkaTopic", "Cluster", "ScaledObject", "PodMonitor", "ServiceMonitor",
             "PrometheusRule", "Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Job"],
)  # fmt: skip
def test_the_kustomization_declares(rendered, kind):
    """What the issue asks for is there (a validator passes an empty list too)."""
    assert kind in {o["kind"] for o in rendered}


def test_a_field_the_schema_does_not_know_fails(rendered, crd_schemas):
    """The strictness the tests above rely on: a misspelt field is an error, not pruned silently."""
    kafka = next(o for o in rendered if o["kind"] == "Kafka")
    wrong = {**kafka, "spec": {**kafka["spec"], "kafka": {**kafka["spec"]["kafka"], "listenres": []}}}
    deployment = next(o for o in rendered if o["kind"] == "Deployment")
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    assert crd_errors(wrong, crd_schemas) and core_errors(typo)
