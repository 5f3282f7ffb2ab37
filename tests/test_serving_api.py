"""The serving API against hostile input: tokens and scopes, limits, idempotency, the in-memory
plan view, offline docs, and Schemathesis (``--checks all``) on the real app in-process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import schemathesis
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema

from core.service_config import ServiceConfig
from core.serving_rule import next_window_change, planned_max_at
from core.settings import DEV_READ_TOKEN, DEV_WRITE_TOKEN, REPO_ROOT
from serving.access import MAX_BODY_BYTES
from serving.answers import ReadyAnswers
from serving.app import create_app
from serving.plans import PlanView, ServicePlan
from serving.recommend import recommend
from serving.schemas import MAX_STEPS, Recommendation, Schedule, SchedulePublish
from serving.store import FloorReading, ScheduleStore
from tests.serving_fixtures import (
    READ_TOKEN,
    SERVICE_PARAMS,
    TOKEN,
    auth,
    schedule_body,
    serving_settings,
)

NOW = datetime(2026, 11, 16, 12, 0, tzinfo=UTC)


class Clock:
    """A settable clock (wall time for the app, or monotonic seconds for the plan view)."""

    def __init__(self, now: object) -> None:
        self.now = now

    def __call__(self) -> object:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def app(tmp_path: Path, clock: Clock) -> Iterator[FastAPI]:
    application = create_app(serving_settings(tmp_path), clock=clock)
    yield application
    application.state.plans.join_background_refresh()
    application.state.store.dispose()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def publish(client: TestClient, service: str, body: dict, **headers: str) -> httpx.Response:
    return client.put(f"/v1/services/{service}/schedule", json=body, headers={**auth(), **headers})


def recommendation(client: TestClient, service: str = "checkout") -> dict:
    response = client.get(f"/v1/services/{service}/recommendation", headers=auth(READ_TOKEN))
    assert response.status_code == 200, response.text
    return response.json()


# ---- Schemathesis ------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, READ_TOKEN, TOKEN], ids=["no-token", "read", "write"])
def test_schemathesis_finds_no_failure(tmp_path: Path, token: str | None) -> None:
    """Every Schemathesis phase and check on the real app in-process: what
    ``schemathesis run .../openapi.json --checks all`` does, with the repository's config."""
    application = create_app(serving_settings(tmp_path))
    config = SchemathesisConfig.from_path(REPO_ROOT / "schemathesis.toml")
    config.update(seed=19, max_failures=None)
    config.projects.override.checks.update(included_check_names=["all"])
    config.projects.override.generation.update(max_examples=25)
    if token is not None:
        config.projects.override.update(headers={"Authorization": f"Bearer {token}"})
    schema = schemathesis.openapi.from_asgi("/openapi.json", application, config=config)
    failures: set[tuple[str, str, str]] = set()
    scenarios = 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            scenarios += 1
            for nodes in event.recorder.checks.values():
                failures.update(
                    (event.recorder.label, node.name, str(node.failure_info.failure.title))
                    for node in nodes
                    if node.status.name == "FAILURE" and node.failure_info is not None
                )
        elif isinstance(event, events.NonFatalError | events.FatalError):
            failures.add(("engine", type(event).__name__, str(event.info)[:500]))
    application.state.store.dispose()
    assert scenarios >= 9
    assert not failures, sorted(failures)


# ---- tokens ------------------------------------------------------------------------------------


def test_every_route_but_health_and_docs_needs_a_token(client: TestClient) -> None:
    for path in ("/v1/services", "/v1/services/checkout/recommendation", "/metrics"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=auth("not-the-token")).status_code == 401, path
        assert client.get(path, headers=auth(READ_TOKEN)).status_code == 200, path
        assert client.get(path, headers=auth(TOKEN)).status_code == 200, path
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_read_token_cannot_write(client: TestClient) -> None:
    body = schedule_body(NOW, [3])
    response = client.put("/v1/services/checkout/schedule", json=body, headers=auth(READ_TOKEN))
    assert response.status_code == 403
    assert "insufficient_scope" in response.headers["WWW-Authenticate"]
    floor = client.put(
        "/v1/services/checkout/live-floor", json={"replicas": 3}, headers=auth(READ_TOKEN)
    )
    assert floor.status_code == 403


def test_unauthenticated_malformed_body_gets_401_not_validation_details(
    client: TestClient,
) -> None:
    for content in (b"{not json", b'{"steps": "x"}', b"x" * (MAX_BODY_BYTES + 10)):
        response = client.put(
            "/v1/services/checkout/schedule",
            content=content,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 401
        assert response.json() == {"detail": "missing bearer token"}


@pytest.mark.parametrize(
    ("tokens", "words"),
    [
        ({}, "FORESCALE_API_TOKEN is a known default"),
        ({"api_token": SecretStr("change-me")}, "FORESCALE_API_TOKEN is a known default"),
        ({"api_token": SecretStr(TOKEN)}, "FORESCALE_API_READ_TOKEN is a known default"),
        (
            {"api_token": SecretStr(TOKEN), "api_read_token": SecretStr("short")},
            "FORESCALE_API_READ_TOKEN is shorter than 16",
        ),
        (
            {"api_token": SecretStr(TOKEN), "api_read_token": SecretStr(TOKEN)},
            "needs its own token",
        ),
    ],
)
def test_start_is_refused_with_default_or_weak_tokens(
    tmp_path: Path, tokens: dict, words: str
) -> None:
    settings = serving_settings(tmp_path).model_copy(
        update={
            "api_token": SecretStr(DEV_WRITE_TOKEN),
            "api_read_token": SecretStr(DEV_READ_TOKEN),
        }
    )
    with pytest.raises(ValueError, match=words):
        create_app(settings.model_copy(update=tokens))


def test_dev_mode_accepts_the_default_tokens(tmp_path: Path) -> None:
    settings = serving_settings(tmp_path).model_copy(
        update={
            "api_token": SecretStr(DEV_WRITE_TOKEN),
            "api_read_token": SecretStr(DEV_READ_TOKEN),
            "dev": True,
        }
    )
    application = create_app(settings)
    with TestClient(application) as client:
        response = client.get("/v1/services", headers=auth(DEV_READ_TOKEN))
        assert response.status_code == 200
    application.state.store.dispose()


# ---- limits and types --------------------------------------------------------------------------


def _mutated(mutate) -> dict:
    body = schedule_body(NOW, [3, 4, 5])
    mutate(body)
    return body


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (_mutated(lambda b: b["steps"][0].update(replicas=True)), ["body", "steps", 0, "replicas"]),
        (_mutated(lambda b: b["steps"][0].update(replicas="7")), ["body", "steps", 0, "replicas"]),
        (
            _mutated(lambda b: b["steps"][0].update(replicas=2**63)),
            ["body", "steps", 0, "replicas"],
        ),
        (_mutated(lambda b: b.update(step_seconds=1e20)), ["body", "step_seconds"]),
        (_mutated(lambda b: b.update(step_seconds=10**12)), ["body", "step_seconds"]),
        (_mutated(lambda b: b.update(dry_run="yes")), ["body", "dry_run"]),
        (_mutated(lambda b: b.update(model_version="m" * 10_000)), ["body", "model_version"]),
        (
            _mutated(lambda b: b["steps"][2].update(ts="9999-12-31T23:58:00Z")),
            ["body", "steps", 2, "ts"],
        ),
        (_mutated(lambda b: b.update(generated_at=1_700_000_000)), ["body", "generated_at"]),
        (
            _mutated(lambda b: b.update(steps=b["steps"] * (MAX_STEPS // 3 + 1))),
            ["body", "steps"],
        ),
    ],
)
def test_out_of_bounds_schedules_are_422(client: TestClient, body: dict, loc: list) -> None:
    response = publish(client, "checkout", body)
    assert response.status_code == 422, response.text
    assert any(error["loc"] == loc for error in response.json()["detail"]), response.json()
    assert all("input" not in error for error in response.json()["detail"])


def test_nan_and_huge_numbers_never_500(client: TestClient) -> None:
    body = json.dumps(schedule_body(NOW, [3, 4])).replace('"replicas": 3', '"replicas": NaN')
    response = client.put(
        "/v1/services/checkout/schedule",
        content=body,
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "steps", 0, "replicas"]
    floor = client.put("/v1/services/checkout/live-floor", json={"replicas": 2**63}, headers=auth())
    assert floor.status_code == 422
    read = client.get(
        "/v1/services/checkout/schedule",
        params={"version": 2**63},
        headers=auth(READ_TOKEN),
    )
    assert read.status_code == 422
    far = client.get(
        "/v1/services/checkout/anomalies",
        params={"start": "0001-01-01T00:00:00+05:00"},
        headers=auth(READ_TOKEN),
    )
    assert far.status_code == 200


def test_body_over_the_limit_is_413_before_parsing(client: TestClient) -> None:
    response = client.put(
        "/v1/services/checkout/schedule",
        content=b" " * (MAX_BODY_BYTES + 1),
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert response.status_code == 413


def test_a_week_of_minute_steps_is_accepted_and_served(client: TestClient) -> None:
    body = schedule_body(NOW, [5] * MAX_STEPS, valid_for=timedelta(days=7), step_seconds=60)
    assert len(json.dumps(body)) < MAX_BODY_BYTES
    assert publish(client, "checkout", body).status_code == 201
    assert recommendation(client)["replicas"] == 5


# ---- the fallback never says 0 -----------------------------------------------------------------


def test_min_replicas_zero_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="min_replicas"):
        ServiceConfig(min_replicas=0)
    params = json.loads(json.dumps(SERVICE_PARAMS))
    params["services"]["checkout"]["min_replicas"] = 0
    settings = serving_settings(tmp_path)
    settings.params_file.write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="checkout.*min_replicas"):
        create_app(settings)


def test_stale_zero_schedule_serves_at_least_one(client: TestClient, clock: Clock) -> None:
    assert publish(client, "search", schedule_body(NOW, [0] * 24)).status_code == 201
    assert recommendation(client, "search")["replicas"] == 2  # min_replicas of service_defaults
    clock.now = NOW + timedelta(hours=3)
    stale = recommendation(client, "search")
    assert stale["source"] == "fallback" and stale["replicas"] >= 1


# ---- idempotency -------------------------------------------------------------------------------


def test_idempotency_key_stores_one_version(client: TestClient) -> None:
    body = schedule_body(NOW, [3, 4])
    first = publish(client, "checkout", body, **{"Idempotency-Key": "run-42"})
    again = publish(client, "checkout", body, **{"Idempotency-Key": "run-42"})
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.json() == again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = schedule_body(NOW, [9, 9])
    conflict = publish(client, "checkout", other, **{"Idempotency-Key": "run-42"})
    assert conflict.status_code == 409 and "run-42" in conflict.json()["detail"]
    assert (
        publish(client, "checkout", other, **{"Idempotency-Key": "run-43"}).json()["version"] == 2
    )
    assert publish(client, "search", body, **{"Idempotency-Key": "run-42"}).json()["version"] == 1
    assert publish(client, "checkout", body).json()["version"] == 3  # no key: a new version
    bad = publish(client, "checkout", body, **{"Idempotency-Key": "x" * 200})
    assert bad.status_code == 422


# ---- the in-memory plan view -------------------------------------------------------------------


def test_recommendation_follows_publishes_floors_and_staleness(
    client: TestClient, clock: Clock
) -> None:
    assert publish(client, "checkout", schedule_body(NOW, [4] * 24)).status_code == 201
    assert recommendation(client)["replicas"] == 4
    assert publish(client, "checkout", schedule_body(NOW, [7] * 24)).status_code == 201
    assert recommendation(client)["replicas"] == 7  # this process's publish: at once
    floor = {"replicas": 11, "ts": NOW.isoformat()}
    assert client.put("/v1/services/checkout/live-floor", json=floor, headers=auth()).status_code
    assert recommendation(client)["replicas"] == 11
    clock.now = NOW + timedelta(hours=2, seconds=1)  # valid for 2 h: stale now, no refresh needed
    assert recommendation(client)["source"] == "fallback"


class ComputedRecommendations:
    """Counts the recommendations the app computes (the real rule runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        monkeypatch.setattr("serving.app.recommend", self)

    def __call__(self, *args: object) -> Recommendation:
        self.count += 1
        return recommend(*args)  # type: ignore[arg-type]


def served(app: FastAPI, client: TestClient) -> dict:
    """The recommendation for "checkout" now, checked against one computed afresh."""
    response = client.get("/v1/services/checkout/recommendation", headers=auth(READ_TOKEN))
    assert response.status_code == 200, response.text
    kept = app.state.answers
    app.state.answers = ReadyAnswers()
    fresh = client.get("/v1/services/checkout/recommendation", headers=auth(READ_TOKEN))
    app.state.answers = kept
    assert response.content == fresh.content
    assert response.headers["content-type"] == fresh.headers["content-type"] == "application/json"
    return response.json()


def test_a_kept_answer_changes_exactly_at_its_boundaries(
    app: FastAPI, client: TestClient, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    computed = ComputedRecommendations(monkeypatch)
    # Lead 120 s; 5-minute steps 3, 3, 9, 3, ...; the 9 enters the window at NOW + 480 s.
    assert publish(client, "checkout", schedule_body(NOW, [3, 3, 9] + [3] * 27)).status_code == 201
    first = served(app, client)
    assert (first["replicas"], first["source"], first["ts"]) == (
        3,
        "schedule",
        "2026-11-16T12:00:00Z",
    )
    computations = computed.count
    clock.now = NOW + timedelta(seconds=170, microseconds=1)
    answer = served(app, client)
    assert (answer["replicas"], answer["ts"]) == (3, "2026-11-16T12:02:50.000001Z")
    assert computed.count == computations + 1  # the kept answer was sent; only the check computed
    clock.now = NOW + timedelta(seconds=480, microseconds=-1)
    assert served(app, client)["replicas"] == 3
    clock.now = NOW + timedelta(seconds=480)  # the 9 enters the window
    assert served(app, client)["replicas"] == 9
    clock.now = NOW + timedelta(seconds=900, microseconds=-1)  # the 9 is in force until 900 s
    assert served(app, client)["replicas"] == 9
    clock.now = NOW + timedelta(seconds=900)  # ... and has left it
    assert served(app, client)["replicas"] == 3
    # A live floor written through the API: at once; it raises the plan while it is fresh.
    floor = {"replicas": 11, "ts": clock.now.isoformat()}
    assert client.put("/v1/services/checkout/live-floor", json=floor, headers=auth()).status_code
    assert served(app, client)["source"] == "floor"
    clock.now += timedelta(minutes=10, microseconds=-1)
    assert served(app, client)["replicas"] == 11
    clock.now += timedelta(microseconds=1)  # the floor has aged out
    assert served(app, client)["source"] == "schedule"
    # valid_until (NOW + 2 h) is still fresh; a microsecond later the fallback is served.
    clock.now = NOW + timedelta(hours=2)
    assert served(app, client)["source"] == "schedule"
    clock.now = NOW + timedelta(hours=2, microseconds=1)
    stale = served(app, client)
    assert (stale["source"], stale["stale"]) == ("fallback", True)
    # A publish through the API: at once.
    assert publish(client, "checkout", schedule_body(clock.now, [8] * 24)).status_code == 201
    assert served(app, client)["replicas"] == 8


def test_the_next_window_change_is_the_first_instant_answering_otherwise() -> None:
    starts = [0, 300, 600, 1200]
    replicas = [3, 5, 9, 4]
    for lead in (0, 120, 450):
        for instant in range(-600, 1600, 7):
            change = next_window_change(starts, 300, instant, lead)
            now = planned_max_at(starts, replicas, 300, [instant], lead)[0]
            expected = next(
                (
                    later
                    for later in range(instant + 1, 2000)
                    if planned_max_at(starts, replicas, 300, [later], lead)[0] != now
                ),
                None,
            )
            # Never after the real change (it may come earlier: then the answer is recomputed).
            assert change is not None if expected is not None else True
            if expected is not None:
                assert change is not None and instant < change <= expected


def test_writes_of_other_processes_reach_the_view(app: FastAPI, client: TestClient) -> None:
    ticks = Clock(0.0)
    view = PlanView(app.state.store, refresh_seconds=1.0, monotonic=ticks)
    app.state.plans = view
    assert publish(client, "checkout", schedule_body(NOW, [4] * 24)).status_code == 201
    assert recommendation(client)["replicas"] == 4
    # The pipeline (or another replica) writes straight into the store.
    other = ScheduleStore(app.state.store.url)
    other.publish("checkout", SchedulePublish(**schedule_body(NOW, [9] * 24)))
    other.set_live_floor("search", 5, NOW)
    other.dispose()
    assert recommendation(client)["replicas"] == 4  # checked less than a second ago
    ticks.now = 1.5
    recommendation(client)  # starts the check in the background, answers from memory
    view.join_background_refresh()
    assert recommendation(client)["replicas"] == 9
    assert recommendation(client, "search")["source"] == "fallback"  # known by its floor now
    assert view.refresh() is False  # nothing changed since


def test_store_revision_moves_with_every_served_write(tmp_path: Path) -> None:
    store = ScheduleStore(f"sqlite:///{tmp_path / 'store.db'}")
    assert store.revision() == 0
    store.publish("checkout", SchedulePublish(**schedule_body(NOW, [3])))
    store.set_live_floor("checkout", 4, NOW)
    store.publish_many({"a": SchedulePublish(**schedule_body(NOW, [3]))})
    assert store.revision() == 3
    store.dispose()


@settings(max_examples=300, deadline=None)
@given(
    replicas=st.lists(st.integers(0, 60), min_size=1, max_size=30),
    step_seconds=st.sampled_from([60, 300, 900]),
    offset=st.integers(-7_200, 36_000),
    valid_for=st.integers(1, 40_000),
    startup=st.integers(0, 3_600),
    floor=st.none() | st.tuples(st.integers(0, 80), st.integers(0, 1_200)),
    dry_run=st.booleans(),
)
def test_the_windowed_schedule_gives_the_whole_schedules_answer(
    replicas: list[int],
    step_seconds: int,
    offset: int,
    valid_for: int,
    startup: int,
    floor: tuple[int, int] | None,
    dry_run: bool,
) -> None:
    body = schedule_body(
        NOW, replicas, valid_for=timedelta(seconds=valid_for), step_seconds=step_seconds
    )
    schedule = Schedule(service="checkout", version=1, created_at=NOW, **body)
    config = ServiceConfig(
        startup_seconds=startup, max_replicas=50, mode="shadow" if dry_run else "active"
    )
    now = NOW + timedelta(seconds=offset)
    reading = None if floor is None else FloorReading(now - timedelta(seconds=floor[1]), floor[0])
    plan = ServicePlan.of("checkout", 1, NOW, schedule)
    windowed = plan.schedule_around(now, now + timedelta(seconds=startup))
    assert recommend("checkout", windowed, reading, config, now) == recommend(
        "checkout", schedule, reading, config, now
    )


# ---- docs --------------------------------------------------------------------------------------


def test_docs_load_nothing_from_outside(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "http://" not in page.text and "https://" not in page.text
    assets = [
        part.split('"')[0] for part in page.text.split('src="')[1:] + page.text.split('href="')[1:]
    ]
    assert any(asset.endswith(".js") for asset in assets)
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    listed = client.get("/openapi.json").json()["components"]["schemas"]["ServiceSummary"]
    assert "service_defaults" in listed["properties"]["configured"]["description"]
