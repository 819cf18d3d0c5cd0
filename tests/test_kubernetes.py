"""deploy/kubernetes, validated offline: Kubernetes objects against the API's schemas (kubernetes-validate),
KEDA's ScaledObjects against a schema of KEDA's documented fields, and what ties them to the service."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from imageclf.core.redis_clients import sentinel_nodes
from tests.helpers import ROOT

DEPLOY = ROOT / "deploy" / "kubernetes"
KUBERNETES = latest_version()

# KEDA's ScaledObject (keda.sh/v1alpha1) as its documentation describes it: the fields used here and their types.
_TRIGGER = {
    "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
    "properties": {
        "type": {"enum": ["redis", "redis-sentinel", "redis-cluster"]},
        "name": {"type": "string"},
        "metadata": {
            "type": "object", "required": ["listName", "listLength"], "additionalProperties": False,
            "properties": {**{k: {"type": "string"} for k in (
                "address", "addresses", "host", "port", "hosts", "ports", "sentinelMaster", "listName",
                "listLength", "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl",
                "addressesFromEnv", "sentinelMasterFromEnv", "passwordFromEnv", "usernameFromEnv")},
                "listLength": {"type": "string", "pattern": "^[1-9][0-9]*$"}},
        },
        "authenticationRef": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
    },
}
SCALED_OBJECT = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "required": ["scaleTargetRef", "triggers"], "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                   "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                                                  "apiVersion": {"type": "string"}}},
                **{k: {"type": "integer", "minimum": 0} for k in (
                    "minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod", "idleReplicaCount",
                    "initialCooldownPeriod")},
                "triggers": {"type": "array", "minItems": 1, "items": _TRIGGER},
                "advanced": {"type": "object"},
                "fallback": {"type": "object"},
            },
        },
    },
}


def documents() -> list[tuple[str, dict]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = kustomization["resources"] + ["worker-cpu.yaml"]  # the CPU worker: the alternative to worker-gpu
    return [(name, doc) for name in files for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == kind}


@pytest.mark.parametrize("name,doc", documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_every_object_validates(name, doc):
    if doc["kind"] == "ScaledObject":
        jsonschema.validate(doc, SCALED_OBJECT)
    else:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_validators_catch_mistakes():
    deployment = copy.deepcopy(by_kind("Deployment")["api"])
    deployment["spec"]["replica"] = 2  # a typo of replicas
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    scaled = copy.deepcopy(by_kind("ScaledObject")["decoder"])
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 4  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, SCALED_OBJECT)


def test_probes_gpus_shutdown_and_auth():
    deployments = by_kind("Deployment")
    api = deployments["api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    grpc = deployments["grpc"]["spec"]["template"]["spec"]["containers"][0]
    assert grpc["readinessProbe"]["grpc"] == {"port": 8001}  # grpc.health.v1, service "": what /readyz checks
    assert grpc["livenessProbe"]["grpc"] == {"port": 8001, "service": "liveness"}
    gpu = deployments["worker-gpu"]["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert "--concurrency 1" in " ".join(gpu["containers"][0]["command"])
    cpu = deployments["worker-cpu"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in str(cpu)
    for worker in (gpu, cpu, deployments["decoder"]["spec"]["template"]["spec"]):
        assert worker["terminationGracePeriodSeconds"] >= 60  # a warm shutdown finishes the running batch
    flower = deployments["flower"]["spec"]["template"]["spec"]["containers"][0]
    assert "--basic-auth=${FLOWER_BASIC_AUTH}" in " ".join(flower["command"])
    assert flower["env"][0]["valueFrom"]["secretKeyRef"]["key"] == "FLOWER_BASIC_AUTH"
    assert by_kind("StatefulSet")["redis"]["spec"]["replicas"] == 3


def test_keda_scales_each_worker_on_its_model_queues_through_the_same_sentinels():
    config = by_kind("ConfigMap")["imageclf"]["data"]
    nodes, _, _ = sentinel_nodes(config["REDIS_URL"])
    addresses = ",".join(f"{host}:{port}" for host, port in nodes)
    model = config["MODEL"]
    deployments = by_kind("Deployment")
    expected = {"worker-gpu": {f"interactive.{model}", f"bulk.{model}"},
                "worker-cpu": {f"interactive.{model}", f"bulk.{model}"}, "decoder": {"jobs"}}
    scaled = by_kind("ScaledObject")
    assert set(scaled) == set(expected)
    for name, lists in expected.items():
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
        assert {t["metadata"]["listName"] for t in spec["triggers"]} == lists
        for trigger in spec["triggers"]:
            assert trigger["type"] == "redis-sentinel"
            assert trigger["metadata"]["addresses"] == addresses
            assert trigger["metadata"]["sentinelMaster"] == config["REDIS_SENTINEL_MASTER"]
