"""The deployment files: compose.yaml against the Compose specification's schema,
deploy/kubernetes against Kubernetes' schemas (kubernetes-validate), deploy/kserve
against KServe's own CRD schemas (tests/data/kserve, see its VERSION)."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema

ROOT = Path(__file__).resolve().parents[2]
KSERVE_SCHEMAS = ROOT / "tests" / "data" / "kserve"
SEED_LIMITS = {"cpus": "0.5", "memory": "128M"}
SERVERS = ("python-api-pkl", "python-api-onnx", "ligeiro")


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def compose_errors(document: dict[str, Any]) -> list[str]:
    schema = get_builtin_schema("vendor.compose-spec")
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [e.message for e in validator.iter_errors(document)]


def test_compose_file_is_valid_compose() -> None:
    assert compose_errors(documents(ROOT / "compose.yaml")[0]) == []


def test_compose_broken_field_fails_with_the_schema_message() -> None:
    document = documents(ROOT / "compose.yaml")[0]
    document["services"]["ligeiro"]["deploy"] = {"resources": {"limits": {"cpu": "0.5"}}}
    assert compose_errors(document) == [
        "'cpu' does not match any of the regexes: '^x-'"
    ]


def test_compose_servers_have_the_seed_limits() -> None:
    services = documents(ROOT / "compose.yaml")[0]["services"]
    for name in SERVERS:
        assert services[name]["deploy"]["resources"]["limits"] == SEED_LIMITS, name
    assert services["ligeiro"]["environment"]["LIGEIRO_MODEL_NAME"] == "iris"
    for path in ("deploy/compose/prometheus.yml", "deploy/grafana/ligeiro-dashboard.json"):
        assert (ROOT / path).is_file()


K8S_FILES = sorted(
    p for p in (ROOT / "deploy" / "kubernetes").glob("*.yaml") if p.name != "kustomization.yaml"
)


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_kubernetes_manifest_is_valid(path: Path) -> None:
    for document in documents(path):
        kubernetes_validate.validate(document, "1.37.0", strict=True)


def test_kubernetes_broken_field_fails_with_the_schema_message() -> None:
    (deployment,) = documents(ROOT / "deploy" / "kubernetes" / "deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limit"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="'limit' was unexpected"):
        kubernetes_validate.validate(deployment, "1.37.0", strict=True)


def test_kubernetes_deployment_limits_and_drain_agree() -> None:
    (deployment,) = documents(ROOT / "deploy" / "kubernetes" / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    limits = {"cpu": "500m", "memory": "128Mi"}
    assert container["resources"] == {"requests": limits, "limits": limits}
    env = {e["name"]: e["value"] for e in container["env"]}
    drain = float(env["LIGEIRO_GRACEFUL_TIMEOUT_S"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop + drain < pod["terminationGracePeriodSeconds"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


def strict(schema: Any) -> Any:
    """The CRD schema as kubectl's strict field validation reads it: an unknown field
    is an error (a structural schema alone would prune it)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def kserve_errors(document: dict[str, Any]) -> list[str]:
    version = document["apiVersion"].split("/")[1]
    path = KSERVE_SCHEMAS / f"{document['kind']}-{version}.json.gz"
    schema = strict(json.loads(gzip.decompress(path.read_bytes())))
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


KSERVE_FILES = sorted((ROOT / "deploy" / "kserve").glob("*.yaml"))


@pytest.mark.parametrize("path", KSERVE_FILES, ids=lambda p: p.name)
def test_kserve_manifest_is_valid_against_kserve_crds(path: Path) -> None:
    assert (KSERVE_SCHEMAS / "VERSION").read_text().startswith("kserve v0.20.0")
    for document in documents(path):
        assert document["apiVersion"].startswith("serving.kserve.io/")
        assert kserve_errors(document) == []


def test_kserve_broken_field_fails_with_the_schema_message() -> None:
    (runtime,) = documents(ROOT / "deploy" / "kserve" / "servingruntime.yaml")
    broken = copy.deepcopy(runtime)
    broken["spec"]["supportedModelFormats"][0]["autoselect"] = True
    assert kserve_errors(broken) == [
        "spec.supportedModelFormats.0: Additional properties are not allowed "
        "('autoselect' was unexpected)"
    ]
    broken = copy.deepcopy(runtime)
    broken["spec"]["protocolVersions"] = "v2"
    assert kserve_errors(broken) == ["spec.protocolVersions: 'v2' is not of type 'array'"]


def test_kserve_runtime_is_what_kserve_users_expect() -> None:
    (runtime,) = documents(ROOT / "deploy" / "kserve" / "servingruntime.yaml")
    spec = runtime["spec"]
    assert {"name": "onnx", "version": "1", "autoSelect": True, "priority": 2} in spec[
        "supportedModelFormats"
    ]
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    (container,) = spec["containers"]
    assert container["args"][:2] == ["/mnt/models", "--model-name={{.Name}}"]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"
