"""Serving API, schedule store and recommendation rules, on real SQLite (and PostgreSQL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from core.service_config import ServiceConfig, load_service_configs, service_config
from serving.app import ServiceDirectory, create_app
from serving.client import publish_schedule_http, publish_schedules_to_store
from serving.recommend import FLOOR_MAX_AGE, planned_replicas, recommend
from serving.schemas import Schedule, SchedulePublish
from serving.store import FloorReading, ScheduleStore
from tests.serving_fixtures import (
    READ_TOKEN,
    TOKEN,
    auth,
    running_server,
    schedule_body,
    serving_settings,
    write_params,
)

NOW = datetime(2026, 11, 16, 12, 0, tzinfo=UTC)
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


class Clock:
    """A settable clock given to ``create_app``."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def app(tmp_path: Path, clock: Clock) -> FastAPI:
    return create_app(serving_settings(tmp_path), clock=clock)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, headers=auth(READ_TOKEN)) as test_client:
        yield test_client
    app.state.store.dispose()


def publish(client: TestClient, service: str, body: dict) -> httpx.Response:
    return client.put(f"/v1/services/{service}/schedule", json=body, headers=auth())


def stored_schedule(service: str, body: dict, version: int = 1) -> Schedule:
    return Schedule(service=service, version=version, created_at=NOW, **body)


# ---- publishing, versions, reading -------------------------------------------------------------


def test_publish_creates_versions_and_reads_latest_or_one(client: TestClient) -> None:
    first = publish(client, "checkout", schedule_body(NOW, [3, 4, 5]))
    second = publish(client, "checkout", schedule_body(NOW, [6, 7, 8]))
    assert (first.status_code, second.status_code) == (201, 201)
    assert (first.json()["version"], second.json()["version"]) == (1, 2)
    assert publish(client, "search", schedule_body(NOW, [2])).json()["version"] == 1

    latest = client.get("/v1/services/checkout/schedule").json()
    assert latest["version"] == 2
    assert [step["replicas"] for step in latest["steps"]] == [6, 7, 8]
    assert latest["steps"][0]["ts"] == "2026-11-16T12:00:00Z"
    old = client.get("/v1/services/checkout/schedule", params={"version": 1}).json()
    assert [step["replicas"] for step in old["steps"]] == [3, 4, 5]
    assert client.get("/v1/services/checkout/schedule", params={"version": 3}).status_code == 404

    listed = {entry["name"]: entry for entry in client.get("/v1/services").json()["services"]}
    assert listed["checkout"] == {"name": "checkout", "latest_version": 2, "configured": True}
    assert listed["search"] == {"name": "search", "latest_version": 1, "configured": False}
    assert listed["shadow"]["latest_version"] is None


@pytest.mark.parametrize(
    ("headers", "error"),
    [({}, "missing bearer token"), (auth("wrong"), "invalid bearer token")],
)
def test_publish_without_valid_token_is_401(app: FastAPI, headers: dict, error: str) -> None:
    with TestClient(app) as client:
        response = client.put(
            "/v1/services/checkout/schedule", json=schedule_body(NOW, [3]), headers=headers
        )
        assert response.status_code == 401
        assert response.json()["detail"] == error
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        floor = client.put(
            "/v1/services/checkout/live-floor", json={"replicas": 4}, headers=headers
        )
        assert floor.status_code == 401
        read = client.get("/v1/services/checkout/schedule", headers=auth(READ_TOKEN))
        assert read.status_code == 404
    app.state.store.dispose()


def test_unknown_service_is_404_everywhere(client: TestClient) -> None:
    for path in ("schedule", "recommendation", "anomalies", "explanation"):
        response = client.get(f"/v1/services/nosuch/{path}")
        assert response.status_code == 404, path
        assert "unknown service 'nosuch'" in response.json()["detail"]
    floor = client.put("/v1/services/nosuch/live-floor", json={"replicas": 3}, headers=auth())
    assert floor.status_code == 404
    # Configured but never published: known, so the recommendation is a fallback, not an error.
    assert client.get("/v1/services/checkout/schedule").status_code == 404
    assert client.get("/v1/services/checkout/recommendation").status_code == 200


@pytest.mark.parametrize(
    ("mutate", "loc", "words"),
    [
        (lambda body: body.pop("model_version"), ["body", "model_version"], "required"),
        (lambda body: body.update(steps=[]), ["body", "steps"], "at least 1"),
        (
            lambda body: body["steps"][1].update(ts="2026-11-16T12:05:00"),
            ["body", "steps", 1, "ts"],
            "timezone",
        ),
        (
            lambda body: body["steps"][2].update(ts=body["steps"][0]["ts"]),
            ["body", "steps"],
            "strictly increasing",
        ),
        (
            lambda body: body["steps"][1].update(replicas=-2),
            ["body", "steps", 1, "replicas"],
            "greater than or equal to 0",
        ),
        (lambda body: body.update(step_seconds=0), ["body", "step_seconds"], "greater than 0"),
    ],
)
def test_malformed_schedule_is_422_naming_the_field(
    client: TestClient, mutate, loc: list, words: str
) -> None:
    body = schedule_body(NOW, [3, 4, 5])
    mutate(body)
    response = publish(client, "checkout", body)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(error["loc"] == loc and words in error["msg"] for error in errors), errors
    assert client.get("/v1/services/checkout/schedule").status_code == 404


def test_schedule_in_the_past_is_refused(client: TestClient) -> None:
    body = schedule_body(NOW - timedelta(hours=3), [3, 4, 5], generated_at=NOW - timedelta(hours=3))
    response = publish(client, "checkout", body)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert errors[0]["loc"] == ["body", "steps", 2, "ts"]
    assert "schedule is in the past" in errors[0]["msg"]
    assert any(error["loc"] == ["body", "valid_until"] for error in errors)
    assert client.get("/v1/services/checkout/schedule").status_code == 404


# ---- recommendation rules ----------------------------------------------------------------------


def test_planned_replicas_uses_step_intervals() -> None:
    schedule = stored_schedule("checkout", schedule_body(NOW, [3, 9, 4]))
    # Step 0 covers [12:00, 12:05), step 1 [12:05, 12:10), step 2 [12:10, 12:15).
    assert planned_replicas(schedule, NOW, NOW + timedelta(minutes=4)) == 3
    assert planned_replicas(schedule, NOW, NOW + timedelta(minutes=5)) == 9
    assert planned_replicas(schedule, NOW + timedelta(minutes=11), NOW + timedelta(hours=1)) == 4
    assert planned_replicas(schedule, NOW + timedelta(minutes=15), NOW + timedelta(hours=1)) is None
    assert planned_replicas(schedule, NOW - timedelta(hours=1), NOW - timedelta(seconds=1)) is None


def test_recommend_takes_max_over_startup_lead() -> None:
    schedule = stored_schedule("checkout", schedule_body(NOW - timedelta(minutes=5), [3, 5, 12]))
    now = NOW + timedelta(minutes=1)
    short = recommend(
        "checkout", schedule, None, ServiceConfig(startup_seconds=120, mode="active"), now
    )
    long = recommend(
        "checkout", schedule, None, ServiceConfig(startup_seconds=300, mode="active"), now
    )
    assert (short.replicas, short.source, short.stale) == (5, "schedule", False)
    assert (long.replicas, long.source) == (12, "schedule")
    clamped = recommend(
        "checkout", schedule, None, ServiceConfig(max_replicas=8, mode="active"), now
    )
    assert clamped.replicas == 5
    capped = recommend(
        "checkout",
        schedule,
        None,
        ServiceConfig(max_replicas=8, startup_seconds=300, mode="active"),
        now,
    )
    assert capped.replicas == 8 and "clamped" in capped.reason


def test_recommend_live_floor_only_when_fresh() -> None:
    schedule = stored_schedule("checkout", schedule_body(NOW, [4, 4]))
    config = ServiceConfig(mode="active")
    fresh = FloorReading(ts=NOW - timedelta(minutes=2), replicas=9)
    old = FloorReading(ts=NOW - FLOOR_MAX_AGE - timedelta(seconds=1), replicas=9)
    low = FloorReading(ts=NOW, replicas=1)
    assert recommend("checkout", schedule, fresh, config, NOW).model_dump(
        include={"replicas", "source"}
    ) == {"replicas": 9, "source": "floor"}
    assert recommend("checkout", schedule, old, config, NOW).replicas == 4
    assert recommend("checkout", schedule, low, config, NOW).source == "schedule"


def test_recommend_fallbacks_never_go_below_minimum() -> None:
    config = ServiceConfig(min_replicas=3, mode="active")
    schedule = stored_schedule("checkout", schedule_body(NOW, [10, 10]))
    missing = recommend("checkout", None, None, config, NOW)
    assert (missing.replicas, missing.source, missing.stale) == (3, "fallback", True)
    assert "no schedule published" in missing.reason
    later = NOW + timedelta(hours=3)
    old_floor = FloorReading(ts=NOW, replicas=7)  # older than 10 min, still the last known one
    stale = recommend("checkout", schedule, old_floor, config, later)
    assert (stale.replicas, stale.source, stale.stale) == (7, "fallback", True)
    assert "stale" in stale.reason and stale.schedule_version == 1
    # Valid but not covering now (the steps ended): fallback, not a silent zero.
    short = stored_schedule("checkout", schedule_body(NOW, [10], valid_for=timedelta(hours=2)))
    uncovered = recommend("checkout", short, None, config, NOW + timedelta(minutes=30))
    assert (uncovered.replicas, uncovered.source) == (3, "fallback")
    assert "does not cover" in uncovered.reason


def test_recommend_dry_run_serves_floor_only() -> None:
    body = schedule_body(NOW, [20, 20], dry_run=True)
    schedule = stored_schedule("checkout", body)
    floor = FloorReading(ts=NOW, replicas=6)
    result = recommend("checkout", schedule, floor, ServiceConfig(mode="active"), NOW)
    assert (result.replicas, result.source, result.stale, result.mode) == (
        6,
        "dry_run",
        False,
        "active",
    )
    configured = recommend(
        "checkout",
        stored_schedule("checkout", schedule_body(NOW, [20])),
        None,
        ServiceConfig(mode="shadow"),
        NOW,
    )
    assert (configured.replicas, configured.source, configured.mode) == (2, "shadow", "shadow")
    assert configured.reason.startswith("shadow mode (params.yaml)")


def test_recommendation_route_lead_window_and_floor(client: TestClient, clock: Clock) -> None:
    body = schedule_body(NOW - timedelta(minutes=5), [3, 5, 12, 4, 4], generated_at=NOW)
    assert publish(client, "checkout", body).status_code == 201
    assert publish(client, "slowstart", body).status_code == 201
    clock.now = NOW + timedelta(minutes=1)

    checkout = client.get("/v1/services/checkout/recommendation").json()
    assert checkout["replicas"] == 5  # startup 120 s: 12:01-12:03 sees only the 12:00 step
    assert checkout["source"] == "schedule" and checkout["stale"] is False
    assert checkout["schedule_version"] == 1
    assert checkout["model_version"] == "forescale-lightgbm/3"
    assert client.get("/v1/services/slowstart/recommendation").json()["replicas"] == 12

    floor = client.put(
        "/v1/services/checkout/live-floor",
        json={"replicas": 9, "ts": clock.now.isoformat()},
        headers=auth(),
    )
    assert floor.status_code == 200 and floor.json()["replicas"] == 9
    raised = client.get("/v1/services/checkout/recommendation").json()
    assert (raised["replicas"], raised["source"]) == (9, "floor")
    clock.now = NOW + timedelta(minutes=12)  # floor now 11 minutes old: ignored
    later = client.get("/v1/services/checkout/recommendation").json()
    assert (later["replicas"], later["source"]) == (4, "schedule")

    bad = client.put("/v1/services/checkout/live-floor", json={"replicas": -1}, headers=auth())
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "replicas"]


def test_stale_schedule_falls_back_with_200_and_metrics(client: TestClient, clock: Clock) -> None:
    assert publish(client, "checkout", schedule_body(NOW, [10] * 48)).status_code == 201
    assert client.get("/v1/services/checkout/recommendation").json()["replicas"] == 10
    client.put(
        "/v1/services/checkout/live-floor",
        json={"replicas": 4, "ts": NOW.isoformat()},
        headers=auth(),
    )
    clock.now = NOW + timedelta(hours=2, minutes=1)  # valid_until was NOW + 2 h
    response = client.get("/v1/services/checkout/recommendation")
    assert response.status_code == 200
    stale = response.json()
    assert (stale["replicas"], stale["source"], stale["stale"]) == (4, "fallback", True)
    assert "stale" in stale["reason"]

    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    lines = metrics.text.splitlines()
    assert 'forescale_schedule_stale{service="checkout"} 1.0' in lines
    assert 'forescale_recommended_replicas{service="checkout"} 4.0' in lines
    assert 'forescale_recommendation_fallbacks_total{service="checkout"} 1.0' in lines
    age = next(line for line in lines if line.startswith("forescale_schedule_age_seconds{"))
    assert float(age.split()[-1]) > 2 * 3600


def test_dry_run_schedule_stays_readable(client: TestClient) -> None:
    assert (
        publish(client, "checkout", schedule_body(NOW, [25, 25], dry_run=True)).status_code == 201
    )
    recommendation = client.get("/v1/services/checkout/recommendation").json()
    assert (recommendation["replicas"], recommendation["source"]) == (2, "dry_run")
    schedule = client.get("/v1/services/checkout/schedule").json()
    assert schedule["dry_run"] is True and schedule["steps"][0]["replicas"] == 25
    # A service in shadow mode in params.yaml ignores a normal schedule too.
    assert publish(client, "shadow", schedule_body(NOW, [25, 25])).status_code == 201
    assert client.get("/v1/services/shadow/recommendation").json()["source"] == "shadow"


def test_store_failure_serves_minimum_not_error(tmp_path: Path, clock: Clock) -> None:
    # Nothing listens on port 9: every query fails with a real driver error.
    settings = serving_settings(
        tmp_path, schedule_db_url="postgresql://postgres@127.0.0.1:9/none?connect_timeout=2"
    )
    application = create_app(settings, clock=clock)
    with TestClient(application, headers=auth(READ_TOKEN)) as test_client:
        response = test_client.get("/v1/services/checkout/recommendation")
        assert response.status_code == 200
        body = response.json()
        assert (body["replicas"], body["source"], body["stale"]) == (2, "fallback", True)
        assert "schedule store unavailable" in body["reason"]
        health = test_client.get("/healthz").json()
        assert health["status"] == "degraded"
        refused = publish(test_client, "checkout", schedule_body(NOW, [3]))
        assert refused.status_code == 503
        assert refused.json()["detail"] == "schedule store unavailable: OperationalError"
        assert test_client.get("/v1/services/checkout/schedule").status_code == 503


# ---- atomicity ---------------------------------------------------------------------------------


def _add_sqlite_fault(url: str, table: str) -> None:
    """Make every insert into ``table`` fail inside the database (a real SQLite trigger)."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            )
        )
    engine.dispose()


def _drop_sqlite_fault(url: str, table: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"DROP TRIGGER fail_{table}"))
    engine.dispose()


def test_failed_publish_leaves_served_schedule_unchanged(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = ScheduleStore(url)
    first = SchedulePublish(**schedule_body(NOW, [3, 3]))
    assert store.publish("checkout", first) == 1
    _add_sqlite_fault(url, "explanations")
    second = SchedulePublish(**schedule_body(NOW, [30, 30]))
    with pytest.raises(IntegrityError, match="injected failure"):
        store.publish("checkout", second, explanation={"top_features": ["hour"]})
    latest = store.latest("checkout")
    assert latest is not None and latest.version == 1 and latest.steps[0].replicas == 3
    assert store.get("checkout", 2) is None
    _drop_sqlite_fault(url, "explanations")
    assert store.publish("checkout", second, explanation={"top_features": ["hour"]}) == 2
    assert store.get_explanation("checkout") == (2, {"top_features": ["hour"]})
    store.dispose()


def test_failed_publish_over_http_keeps_previous_version(client: TestClient, app: FastAPI) -> None:
    assert publish(client, "checkout", schedule_body(NOW, [3, 3])).status_code == 201
    url = app.state.store.url
    _add_sqlite_fault(url, "schedules")
    assert publish(client, "checkout", schedule_body(NOW, [30, 30])).status_code == 503
    served = client.get("/v1/services/checkout/recommendation").json()
    assert (served["replicas"], served["schedule_version"]) == (3, 1)


def test_batch_publish_is_all_or_nothing(tmp_path: Path, clock: Clock) -> None:
    settings = serving_settings(tmp_path)
    good = SchedulePublish(**schedule_body(NOW, [3]))
    past = SchedulePublish(
        **schedule_body(NOW - timedelta(hours=5), [3], generated_at=NOW - timedelta(hours=5))
    )
    with pytest.raises(ValueError, match=r"schedule of service 'search' refused: steps\.0\.ts"):
        publish_schedules_to_store(settings, {"checkout": good, "search": past}, now=NOW)
    store = ScheduleStore(settings.schedule_db)
    assert store.services() == []
    versions = publish_schedules_to_store(
        settings, {"checkout": good, "search": good}, {"search": {"shap": [0.1]}}, now=NOW
    )
    assert versions == {"checkout": 1, "search": 1}
    assert store.get_explanation("search") == (1, {"shap": [0.1]})
    store.dispose()


def publish_concurrently(store: ScheduleStore, threads: int = 4, each: int = 5) -> list[int]:
    """Publish from several threads at once; return every version handed out."""
    body = SchedulePublish(**schedule_body(NOW, [3]))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(store.publish, "checkout", body) for _ in range(threads * each)]
        return sorted(future.result() for future in futures)


def test_concurrent_publishes_get_distinct_versions(tmp_path: Path) -> None:
    store = ScheduleStore(f"sqlite:///{tmp_path / 'store.db'}")
    assert publish_concurrently(store) == list(range(1, 21))
    store.dispose()


# ---- anomalies, explanations -------------------------------------------------------------------


def test_scores_of_many_services_are_stored_all_or_none_and_their_latest_read_at_once(
    tmp_path: Path,
) -> None:
    store = ScheduleStore(f"sqlite:///{tmp_path / 'store.db'}")
    step = timedelta(minutes=5)
    points = {
        service: [
            {"ts": NOW + k * step, "score": 0.1 * k, "is_anomaly": False} for k in range(count)
        ]
        for service, count in (("checkout", 3), ("search", 5), ("ads", 0))
    }
    assert store.record_anomalies_of(points) == 8
    assert store.last_scored(["checkout", "search", "ads", "absent"], NOW, NOW + 4 * step) == {
        "checkout": NOW + 2 * step,
        "search": NOW + 3 * step,
    }
    assert store.last_scored(["search"], NOW + 5 * step, NOW + 9 * step) == {}
    broken = {
        "checkout": [{"ts": NOW + 9 * step, "score": 1.0, "is_anomaly": True}],
        "search": [{"ts": NOW + 9 * step, "score": 1.0}],
    }
    with pytest.raises(ValueError, match="record 0 of 'search' lacks"):
        store.record_anomalies_of(broken)
    assert store.last_scored(["checkout"], NOW, NOW + 10 * step) == {"checkout": NOW + 2 * step}
    assert store.record_anomalies_of({"checkout": [{**points["checkout"][0], "score": 7.0}]}) == 1
    assert [a.score for a in store.anomalies("checkout")] == [7.0, 0.1, 0.2]
    store.dispose()


def test_anomalies_and_explanations_routes(client: TestClient, app: FastAPI) -> None:
    assert publish(client, "checkout", schedule_body(NOW, [3])).status_code == 201
    store: ScheduleStore = app.state.store
    points = [
        {"ts": NOW + timedelta(minutes=5 * i), "score": float(i), "is_anomaly": i == 2}
        for i in range(4)
    ]
    assert store.record_anomalies("checkout", points) == 4
    store.record_anomalies("checkout", [{"ts": NOW, "score": 9.5, "is_anomaly": True}])
    everything = client.get("/v1/services/checkout/anomalies").json()["anomalies"]
    assert [point["score"] for point in everything] == [9.5, 1.0, 2.0, 3.0]
    window = client.get(
        "/v1/services/checkout/anomalies",
        params={"start": "2026-11-16T12:05:00Z", "end": "2026-11-16T12:15:00Z"},
    ).json()["anomalies"]
    assert [(p["score"], p["is_anomaly"]) for p in window] == [(1.0, False), (2.0, True)]
    with pytest.raises(ValueError, match="timezone-aware"):
        store.record_anomalies(
            "checkout", [{"ts": NOW.replace(tzinfo=None), "score": 1, "is_anomaly": False}]
        )

    assert client.get("/v1/services/checkout/explanation").status_code == 404
    store.put_explanation("checkout", 1, {"features": {"hour": 0.4}})
    explained = client.get("/v1/services/checkout/explanation").json()
    assert explained == {
        "service": "checkout",
        "schedule_version": 1,
        "explanation": {"features": {"hour": 0.4}},
    }
    with pytest.raises(ValueError, match="no schedule version 7"):
        store.put_explanation("checkout", 7, {})


def test_health_docs_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "store": "ok"}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/services/{service}/recommendation" in paths
    assert "put" in paths["/v1/services/{service}/schedule"]


# ---- real server -------------------------------------------------------------------------------


def test_real_uvicorn_server_publish_and_recommend(tmp_path: Path) -> None:
    application = create_app(serving_settings(tmp_path))
    now = datetime.now(UTC)
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    schedule = SchedulePublish(**schedule_body(start, [4] * 30, generated_at=now))
    with running_server(application) as base_url:
        assert publish_schedule_http(base_url, TOKEN, "checkout", schedule) == 1
        with pytest.raises(ValueError, match="401"):
            publish_schedule_http(base_url, "wrong", "checkout", schedule)
        response = httpx.get(
            f"{base_url}/v1/services/checkout/recommendation", headers=auth(READ_TOKEN)
        )
        assert response.status_code == 200
        assert response.json()["replicas"] == 4
        assert response.json()["source"] == "schedule"
    application.state.store.dispose()


# ---- service settings --------------------------------------------------------------------------


def test_service_config_merges_defaults_and_rejects_typos(tmp_path: Path) -> None:
    params = write_params(tmp_path)
    configs = load_service_configs(params)
    assert set(configs) == {"checkout", "slowstart", "shadow"}
    assert configs["checkout"].max_replicas == 40 and configs["checkout"].min_replicas == 2
    assert service_config(params, "unlisted") == ServiceConfig(max_replicas=50, mode="active")
    broken = tmp_path / "broken"
    broken.mkdir()
    bad = write_params(broken, {"service_defaults": {}, "services": {"cart": {"max_replicaz": 3}}})
    with pytest.raises(ValueError, match="service 'cart'.*max_replicaz"):
        load_service_configs(bad)
    inverted = tmp_path / "inverted"
    inverted.mkdir()
    bad = write_params(inverted, {"services": {"cart": {"min_replicas": 9, "max_replicas": 3}}})
    with pytest.raises(ValueError, match="min_replicas"):
        service_config(bad, "cart")


def test_params_edits_apply_without_restart(tmp_path: Path, clock: Clock) -> None:
    settings = serving_settings(tmp_path)
    application = create_app(settings, clock=clock)
    params = settings.params_file
    application.state.services = ServiceDirectory(params, check_seconds=0)  # look at every call
    with TestClient(application, headers=auth(READ_TOKEN)) as test_client:
        assert publish(test_client, "checkout", schedule_body(NOW, [9, 9])).status_code == 201
        assert test_client.get("/v1/services/checkout/recommendation").json()["replicas"] == 9
        edited = yaml.safe_load(params.read_text())
        edited["services"]["checkout"]["mode"] = "shadow"
        params.write_text(yaml.safe_dump(edited))
        os.utime(params, (1, 1))  # a distinct mtime, whatever the file system's resolution
        assert test_client.get("/v1/services/checkout/recommendation").json()["source"] == "shadow"
        params.write_text("services: [this is not a mapping")
        os.utime(params, (2, 2))
        kept = test_client.get("/v1/services/checkout/recommendation")
        assert kept.status_code == 200 and kept.json()["source"] == "shadow"
    application.state.store.dispose()
    with pytest.raises(ValueError, match="cannot load service settings"):
        create_app(serving_settings(tmp_path, params_file=tmp_path / "missing.yaml"))


# ---- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema on the local PostgreSQL; skips when the server is unreachable."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_URL, connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as error:
        pytest.skip(f"PostgreSQL at {PG_URL} unreachable: {error}")
    schema = f"forescale_test_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


@pytest.mark.integration
def test_store_on_postgresql(postgres_url: str) -> None:
    store = ScheduleStore(postgres_url)  # plain postgresql:// URL, served through psycopg 3
    raw = schedule_body(NOW, [3, 4])
    raw["steps"][0]["forecast_p50"] = float("nan")  # a missing quantile, as the policy writes it
    body = SchedulePublish(**raw)
    assert [store.publish("checkout", body) for _ in range(3)] == [1, 2, 3]
    latest = store.latest("checkout")
    assert latest is not None and latest.version == 3
    assert latest.steps[1].ts == NOW + timedelta(minutes=5)
    assert latest.valid_until.tzinfo is not None
    assert latest.steps[0].forecast_p50 is None and latest.steps[1].forecast_p50 == 40.0
    store.set_live_floor("checkout", 5, NOW)
    store.set_live_floor("checkout", 6, NOW + timedelta(minutes=1))
    assert store.get_live_floor("checkout") == FloorReading(NOW + timedelta(minutes=1), 6)
    store.record_anomalies("checkout", [{"ts": NOW, "score": 1.5, "is_anomaly": True}])
    assert store.anomalies("checkout", NOW, NOW + timedelta(minutes=1))[0].score == 1.5
    assert store.latest_versions() == {"checkout": 3}
    assert publish_concurrently(store) == list(range(4, 24))
    store.dispose()
