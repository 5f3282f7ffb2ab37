"""The Kubernetes/KEDA manifests in serving/deploy: schema, cross-references, and the live API.

The JSON Schema (serving/deploy/keda_scaledobject_schema.json) is written from the KEDA docs
(ScaledObject spec, metrics-api and cpu scalers, TriggerAuthentication secretTargetRef).
"""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest
import yaml
from fastapi.routing import APIRoute
from starlette.routing import compile_path

from serving.app import create_app
from tests.serving_fixtures import (
    READ_TOKEN,
    auth,
    running_server,
    schedule_body,
    serving_settings,
)

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "serving" / "deploy"
SCHEMA_FILE = DEPLOY_DIR / "keda_scaledobject_schema.json"


def load_documents() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(DEPLOY_DIR.glob("*.yaml")):
        documents.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return documents


def of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]


def find(documents: list[dict[str, Any]], kind: str, name: str, namespace: str) -> dict:
    matches = [
        doc
        for doc in of_kind(documents, kind)
        if doc["metadata"]["name"] == name and doc["metadata"].get("namespace") == namespace
    ]
    assert len(matches) == 1, f"expected one {kind} {namespace}/{name}, found {len(matches)}"
    return matches[0]


def gjson_get(document: Any, path: str) -> Any:
    """Resolve a plain GJSON dot path (``a.b.0.c``) as KEDA's metrics-api scaler does."""
    value = document
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(f"GJSON path {path!r}: no {part!r} in {json.dumps(value)[:200]}")
    return value


def metrics_api_triggers(scaled_object: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in scaled_object["spec"]["triggers"] if t["type"] == "metrics-api"]


@pytest.fixture(scope="module")
def documents() -> list[dict[str, Any]]:
    return load_documents()


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_keda_documents_match_the_schema(documents, validator) -> None:
    keda = [doc for doc in documents if doc["apiVersion"].startswith("keda.sh/")]
    assert {doc["kind"] for doc in keda} == {"ScaledObject", "TriggerAuthentication"}
    for doc in keda:
        errors = [error.message for error in validator.iter_errors(doc)]
        assert not errors, f"{doc['kind']} {doc['metadata']['name']}: {errors}"


@pytest.mark.parametrize(
    ("breakage", "words"),
    [
        (lambda so: metrics_api_triggers(so)[0]["metadata"].pop("valueLocation"), "valueLocation"),
        (lambda so: metrics_api_triggers(so)[0]["metadata"].update(targetValue=1), "string"),
        (lambda so: so["spec"]["fallback"].pop("replicas"), "replicas"),
        (lambda so: so["spec"].update(maxReplicas=10), "maxReplicas"),
        (lambda so: metrics_api_triggers(so)[0]["metadata"].update(authMode="token"), "token"),
        (lambda so: metrics_api_triggers(so)[0].update(metricType="Utilization"), "Utilization"),
    ],
)
def test_schema_refuses_broken_scaled_objects(documents, validator, breakage, words) -> None:
    scaled_object = copy.deepcopy(of_kind(documents, "ScaledObject")[0])
    breakage(scaled_object)
    messages = [error.message for error in validator.iter_errors(scaled_object)]
    assert any(words in message for message in messages), messages


def test_scaled_object_wiring(documents) -> None:
    for scaled_object in of_kind(documents, "ScaledObject"):
        spec = scaled_object["spec"]
        namespace = scaled_object["metadata"]["namespace"]
        assert spec["minReplicaCount"] >= 1, "never let KEDA scale a served workload to zero"
        assert spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
        assert {t["type"] for t in spec["triggers"]} == {"metrics-api", "cpu"}
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert {"scaleUp", "scaleDown"} <= set(behavior)

        (trigger,) = metrics_api_triggers(scaled_object)
        metadata = trigger["metadata"]
        assert trigger["metricType"] == "AverageValue"
        assert metadata["valueLocation"] == "replicas"
        assert float(metadata["targetValue"]) == 1.0  # AverageValue / 1 -> HPA runs `replicas`
        assert metadata["authMode"] == "bearer"

        auth_ref = find(
            documents, "TriggerAuthentication", trigger["authenticationRef"]["name"], namespace
        )
        (secret_ref,) = auth_ref["spec"]["secretTargetRef"]
        assert secret_ref["parameter"] == "token"  # the metrics-api bearer parameter
        secret = find(documents, "Secret", secret_ref["name"], namespace)
        assert secret_ref["key"] in secret.get("stringData", secret.get("data", {}))


def test_scaled_object_is_the_reactive_hpa_the_replay_benchmark_replays(documents) -> None:
    from core.service_config import default_service_config
    from core.settings import REPO_ROOT
    from core.simulation import SCALED_OBJECT, HpaBehavior, keda_behavior

    assert SCALED_OBJECT == DEPLOY_DIR / "scaledobject.yaml"
    replayed = keda_behavior()
    default = HpaBehavior()  # the Kubernetes defaults: what the service's own HPA would do
    hpa_target = default_service_config(REPO_ROOT / "params.yaml").hpa.target_utilization
    for scaled_object in of_kind(documents, "ScaledObject"):
        spec = scaled_object["spec"]
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        up, down = behavior["scaleUp"], behavior["scaleDown"]
        assert up["selectPolicy"] == down["selectPolicy"] == "Max"  # what HpaController does
        # Never slower up, never faster down than the HPA it replaces.
        assert set(default.scale_up_policies) <= set(replayed.scale_up_policies)
        assert replayed.scale_down_window_seconds >= default.scale_down_window_seconds
        assert replayed.scale_up_window_seconds <= default.scale_up_window_seconds
        (cpu,) = [t for t in spec["triggers"] if t["type"] == "cpu"]
        assert cpu["metricType"] == "Utilization"
        assert float(cpu["metadata"]["value"]) / 100 == pytest.approx(hpa_target)


def test_trigger_url_points_at_the_serving_service_and_route(documents, tmp_path: Path) -> None:
    service = find(documents, "Service", "forescale-serving", "forescale")
    deployment = find(documents, "Deployment", "forescale-serving", "forescale")
    (port,) = service["spec"]["ports"]
    app = create_app(serving_settings(tmp_path))
    recommendation_route = next(
        route
        for route in app.routes
        if isinstance(route, APIRoute) and route.name == "read_recommendation"
    )
    path_regex, _, _ = compile_path(recommendation_route.path)
    for scaled_object in of_kind(documents, "ScaledObject"):
        url = urlsplit(metrics_api_triggers(scaled_object)[0]["metadata"]["url"])
        assert url.hostname == "forescale-serving.forescale.svc"
        assert url.port == port["port"]
        match = path_regex.match(url.path)
        assert match, f"{url.path} is not a recommendation route"
        assert match["service"] == scaled_object["spec"]["scaleTargetRef"]["name"]

    template = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= template["metadata"]["labels"].items()
    )
    (container,) = template["spec"]["containers"]
    named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["targetPort"] in named_ports
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
        assert container[probe]["httpGet"]["port"] in named_ports
    env = {item["name"]: item for item in container["env"]}
    token_ref = env["FORESCALE_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    secret = find(documents, "Secret", token_ref["name"], "forescale")
    assert token_ref["key"] in secret["stringData"]
    read_ref = env["FORESCALE_API_READ_TOKEN"]["valueFrom"]["secretKeyRef"]
    read_secret = find(documents, "Secret", read_ref["name"], "forescale")
    read_token = read_secret["stringData"][read_ref["key"]]
    assert read_token != secret["stringData"][token_ref["key"]], "the scopes share a token"

    # KEDA's TriggerAuthentication sends the read token, never the write token.
    for scaled_object in of_kind(documents, "ScaledObject"):
        namespace = scaled_object["metadata"]["namespace"]
        trigger = metrics_api_triggers(scaled_object)[0]
        auth_ref = find(
            documents, "TriggerAuthentication", trigger["authenticationRef"]["name"], namespace
        )
        (secret_ref,) = auth_ref["spec"]["secretTargetRef"]
        keda_secret = find(documents, "Secret", secret_ref["name"], namespace)
        assert keda_secret["stringData"][secret_ref["key"]] == read_token


def test_value_location_resolves_in_a_live_response(documents, tmp_path: Path) -> None:
    scaled_object = of_kind(documents, "ScaledObject")[0]
    metadata = metrics_api_triggers(scaled_object)[0]["metadata"]
    service = scaled_object["spec"]["scaleTargetRef"]["name"]
    path = urlsplit(metadata["url"]).path
    app = create_app(serving_settings(tmp_path))
    now = datetime.now(UTC)
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    with running_server(app) as base_url:
        published = httpx.put(
            f"{base_url}/v1/services/{service}/schedule",
            json=schedule_body(start, [7] * 30, generated_at=now),
            headers=auth(),
        )
        assert published.status_code == 201, published.text
        response = httpx.get(f"{base_url}{path}", headers=auth(READ_TOKEN))
    app.state.store.dispose()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    value = gjson_get(response.json(), metadata["valueLocation"])
    # KEDA accepts an unquoted integral JSON number; the HPA then runs ceil(value / target).
    assert isinstance(value, int) and not isinstance(value, bool)
    assert math.ceil(value / float(metadata["targetValue"])) == 7
