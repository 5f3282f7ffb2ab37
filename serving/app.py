"""The serving API: versioned replica schedules and the replica count KEDA reads.

Build it with :func:`create_app` (nothing happens at import); run it with :func:`run_server`.
Routes stay thin: the rules live in :mod:`serving.recommend`, storage in :mod:`serving.store`,
tokens and body limits in :mod:`serving.access`, the in-memory view the recommendation is
answered from in :mod:`serving.plans`.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path as FilePath
from typing import Annotated, Any

import yaml
from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    Header,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
)
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from core.params import GateSection, load_config
from core.service_config import ServiceConfig, default_service_config, load_service_configs
from core.settings import Settings, get_settings
from serving.access import (
    READ_RESPONSES,
    STORE_DOWN,
    UNKNOWN_SERVICE,
    WRITE_RESPONSES,
    AccessTokens,
    ReadRoute,
    WriteRoute,
    document_access,
)
from serving.answers import ReadyAnswers
from serving.plans import PlanView
from serving.recommend import (
    GATE_ORIGIN,
    PARAMS_ORIGIN,
    fallback_recommendation,
    publish_problems,
    recommend,
    recommendation_expires_at,
    served_mode,
)
from serving.schemas import (
    DAY_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_VERSION,
    SERVICE_NAME_PATTERN,
    AnomalyList,
    ErrorMessage,
    Explanation,
    LiveFloor,
    ModeChangeRecord,
    PublishResult,
    QueryInstant,
    Recommendation,
    Schedule,
    SchedulePublish,
    ScorecardAnswer,
    ServiceList,
    ServiceSummary,
)
from serving.store import FloorReading, IdempotencyConflict, ScheduleStore

logger = logging.getLogger(__name__)

STORE_ERRORS = (SQLAlchemyError, OSError)
ServiceName = Annotated[
    str, Path(pattern=SERVICE_NAME_PATTERN, description="Service name", examples=["checkout"])
]
_SERVICE_NAME = re.compile(SERVICE_NAME_PATTERN)
SERVICE_PARAMETER = {
    "name": "service",
    "in": "path",
    "required": True,
    "description": "Service name",
    "schema": {"type": "string", "pattern": SERVICE_NAME_PATTERN, "title": "Service"},
    "examples": {"checkout": {"value": "checkout"}},
}
INVALID_SERVICE_NAME = {
    "description": "Invalid service name",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    },
}
VersionQuery = Annotated[
    int | None, Query(ge=1, le=MAX_VERSION, description="Version; latest if omitted")
]


class ServiceDirectory:
    """Per-service settings from ``params.yaml``, re-read when the file changes.

    Args:
        params_file: Path of ``params.yaml``.
        check_seconds: How often at most the file's modification time is looked at.
    """

    def __init__(self, params_file: FilePath, check_seconds: float = 1.0) -> None:
        self.params_file = FilePath(params_file)
        self.check_seconds = check_seconds
        self._checked_at = float("-inf")
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._configured: dict[str, ServiceConfig] = {}
        self._default = ServiceConfig()
        self._gate = GateSection()
        self._refresh()

    def _refresh(self) -> None:
        """Re-read the file when it changed; after a good first read, a broken edit keeps the
        last good settings (logged) so recommendations never fail over a params typo."""
        checked_at = time.monotonic()
        if self._mtime is not None and checked_at - self._checked_at < self.check_seconds:
            return
        self._checked_at = checked_at
        try:
            mtime = self.params_file.stat().st_mtime
            if mtime == self._mtime:
                return
            with self._lock:
                configured = load_service_configs(self.params_file)
                default = default_service_config(self.params_file)
                gate = load_config(self.params_file).gate
                self._configured, self._default, self._gate = configured, default, gate
                self._mtime = mtime
        except (OSError, ValueError, yaml.YAMLError) as error:
            if self._mtime is None:
                raise ValueError(f"cannot load service settings: {error}") from error
            logger.exception(
                "re-reading %s failed; keeping the last good settings", self.params_file
            )

    def configured(self) -> dict[str, ServiceConfig]:
        """Services named under ``services`` -> their settings."""
        self._refresh()
        return dict(self._configured)

    def is_configured(self, service: str) -> bool:
        """Whether the service is named under ``services``."""
        self._refresh()
        return service in self._configured

    def config(self, service: str) -> ServiceConfig:
        """Settings of a service (the defaults for a service without its own entry)."""
        self._refresh()
        return self._configured.get(service, self._default)

    def gate(self) -> GateSection:
        """The go-live gate's settings (``gate``); re-read with the services' settings, so a
        changed ``gate.auto`` also gives every service new settings objects."""
        self._refresh()
        return self._gate


class ServingMetrics:
    """Prometheus metrics of one app, in the app's own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.recommended_replicas = Gauge(
            "forescale_recommended_replicas",
            "Replicas last recommended for the service",
            ["service"],
            registry=self.registry,
        )
        self.schedule_stale = Gauge(
            "forescale_schedule_stale",
            "1 when the last recommendation had no fresh schedule behind it",
            ["service"],
            registry=self.registry,
        )
        self.schedule_age_seconds = Gauge(
            "forescale_schedule_age_seconds",
            "Seconds since the served schedule was generated",
            ["service"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "forescale_recommendation_fallbacks",
            "Recommendations served from the fallback (no usable schedule)",
            ["service"],
            registry=self.registry,
        )
        self._by_service: dict[str, tuple[Any, Any, Any, Any]] = {}
        self.publishes = Counter(
            "forescale_schedule_publishes",
            "Schedules published",
            ["service"],
            registry=self.registry,
        )

    def children(self, service: str) -> tuple[Any, Any, Any, Any]:
        """A service's replicas, stale and schedule-age gauges and its fallback counter."""
        children = self._by_service.get(service)
        if children is None:
            children = (
                self.recommended_replicas.labels(service),
                self.schedule_stale.labels(service),
                self.schedule_age_seconds.labels(service),
                self.fallbacks.labels(service),
            )
            self._by_service[service] = children
        return children

    def observe(self, recommendation: Recommendation, schedule: Schedule | None) -> None:
        """Record a served recommendation."""
        replicas, stale, age, fallbacks = self.children(recommendation.service)
        replicas.set(recommendation.replicas)
        stale.set(1 if recommendation.stale else 0)
        if schedule is not None:
            age.set((recommendation.ts - schedule.generated_at).total_seconds())
        if recommendation.source == "fallback":
            fallbacks.inc()


# ---- dependencies ------------------------------------------------------------------------------
# They never block, so they are ``async``: FastAPI runs them on the event loop instead of sending
# each one through the thread pool.


def utc_now() -> datetime:
    """The current instant (UTC): the app's clock unless ``create_app`` is given another."""
    return datetime.now(UTC)


async def get_store(request: Request) -> ScheduleStore:
    """The app's schedule store."""
    return request.app.state.store


async def get_services(request: Request) -> ServiceDirectory:
    """The app's per-service settings."""
    return request.app.state.services


async def get_metrics(request: Request) -> ServingMetrics:
    """The app's metrics."""
    return request.app.state.metrics


async def get_plans(request: Request) -> PlanView:
    """The app's in-memory view of the served plans."""
    return request.app.state.plans


async def get_now(request: Request) -> datetime:
    """The current instant on the app's clock."""
    return request.app.state.clock()


StoreDep = Annotated[ScheduleStore, Depends(get_store)]
ServicesDep = Annotated[ServiceDirectory, Depends(get_services)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
PlansDep = Annotated[PlanView, Depends(get_plans)]
NowDep = Annotated[datetime, Depends(get_now)]


def _unknown_service(service: str) -> HTTPException:
    return HTTPException(
        404,
        f"unknown service {service!r}: no schedule was ever published for it and "
        "params.yaml does not configure it",
    )


def _require_known(store: ScheduleStore, services: ServiceDirectory, service: str) -> None:
    if not services.is_configured(service) and not store.has_schedule(service):
        raise _unknown_service(service)


# ---- routes ------------------------------------------------------------------------------------


def ready_recommendation(scope: Scope) -> bytes | None:
    """The kept answer of ``GET .../recommendation``, when the request may have it at once.

    That is: the ``Authorization`` header is exactly ``Bearer <read or write token>`` and the
    service's kept answer still holds (:class:`serving.answers.ReadyAnswers`). Anything else
    (no or another token, an unknown service or invalid name, an answer to compute) goes through
    the route as usual.

    Args:
        scope: The ASGI scope of a ``GET`` the route matched.

    Returns:
        The JSON body, or None.
    """
    state = scope["app"].state
    header = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
    read_header, write_header = state.bearer_headers
    # Both compared, in constant time, whichever matches.
    if not (
        secrets.compare_digest(header, read_header) | secrets.compare_digest(header, write_header)
    ):
        return None
    service: str = scope["path_params"]["service"]
    plans: PlanView = state.plans
    found = plans.cached(service)
    if found is None:
        return None
    last_move, cold_start = plans.context(service)
    answers: ReadyAnswers = state.answers
    return answers.answer(
        service,
        found[1],
        found[2],
        state.services.config(service),
        last_move,
        cold_start,
        state.clock(),
    )


class RecommendationRoute(ReadRoute):
    """The read route KEDA polls: a kept answer is sent straight away."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the kept answer when there is one, else handle the request as any route."""
        if scope["method"] == "GET":
            body = ready_recommendation(scope)
            if body is not None:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-length", str(len(body)).encode()),
                            (b"content-type", b"application/json"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await super().handle(scope, receive, send)


recommendation_router = APIRouter(
    prefix="/v1", route_class=RecommendationRoute, responses=READ_RESPONSES
)
read_router = APIRouter(prefix="/v1", route_class=ReadRoute, responses=READ_RESPONSES)
write_router = APIRouter(prefix="/v1", route_class=WriteRoute, responses=WRITE_RESPONSES)
ops_router = APIRouter(route_class=ReadRoute, responses=READ_RESPONSES)


@read_router.get("/services", response_model=ServiceList, tags=["schedules"], responses=STORE_DOWN)
def list_services(store: StoreDep, services: ServicesDep) -> ServiceList:
    """Every service that has a schedule or is configured in params.yaml.

    ``configured`` says whether params.yaml names the service under ``services``; a service
    that only has published schedules is scaled with ``service_defaults``.
    """
    versions = store.latest_versions()
    configured = services.configured()
    names = sorted(set(versions) | set(configured))
    return ServiceList(
        services=[
            ServiceSummary(
                name=name, latest_version=versions.get(name), configured=name in configured
            )
            for name in names
        ]
    )


@read_router.get(
    "/services/{service}/schedule",
    response_model=Schedule,
    tags=["schedules"],
    responses={**UNKNOWN_SERVICE, **STORE_DOWN},
)
def read_schedule(
    service: ServiceName, store: StoreDep, services: ServicesDep, version: VersionQuery = None
) -> Schedule:
    """The latest schedule of a service, or one version of it."""
    schedule = store.get(service, version)
    if schedule is not None:
        return schedule
    _require_known(store, services, service)
    if version is None:
        raise HTTPException(404, f"service {service!r} has no published schedule yet")
    raise HTTPException(404, f"service {service!r} has no schedule version {version}")


@write_router.put(
    "/services/{service}/schedule",
    response_model=PublishResult,
    status_code=201,
    tags=["schedules"],
    responses={
        409: {"model": ErrorMessage, "description": "Idempotency key used for another body"},
        **STORE_DOWN,
    },
)
def publish_schedule(
    service: ServiceName,
    body: SchedulePublish,
    response: Response,
    store: StoreDep,
    plans: PlansDep,
    metrics: MetricsDep,
    now: NowDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description=(
                "Client key of this publish (1-128 visible ASCII characters): a retry with the "
                "same key and body returns the version the first attempt stored "
                "(`Idempotent-Replayed: true`) instead of storing a duplicate; the same key "
                "with another body is 409"
            ),
        ),
    ] = None,
) -> PublishResult:
    """Publish a new schedule version (write token)."""
    problems = publish_problems(body, now)
    if problems:
        raise HTTPException(
            422,
            [
                {"loc": ["body", *location], "msg": message, "type": "value_error"}
                for location, message in problems
            ],
        )
    if idempotency_key is None:
        version = store.publish(service, body)
        stored = store.get(service, version)
        created_at = stored.created_at if stored is not None else now
        replayed = False
    else:
        try:
            outcome = store.publish_once(service, body, idempotency_key)
        except IdempotencyConflict as error:
            raise HTTPException(409, str(error)) from error
        version, created_at, replayed = outcome.version, outcome.created_at, outcome.replayed
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        plans.published(service, version, created_at, body)
        metrics.publishes.labels(service).inc()
    return PublishResult(service=service, version=version, created_at=created_at)


@recommendation_router.get(
    "/services/{service}/recommendation",
    response_model=Recommendation,
    tags=["scaling"],
    responses={**UNKNOWN_SERVICE, 422: INVALID_SERVICE_NAME},
    openapi_extra={"parameters": [SERVICE_PARAMETER]},
)
async def read_recommendation(request: Request) -> Response:
    """Replicas to run now (KEDA metrics-api: ``valueLocation: replicas``). Never an error for a
    known service: without a usable schedule it serves the configured minimum or the live floor.

    Answered from memory: a schedule published through this API is served at once, one written
    straight into the store (the pipeline, another replica) within a second.
    """
    # The hottest route reads its one path parameter itself: FastAPI's parameter machinery
    # would cost about a third of the request.
    service: str = request.path_params["service"]
    if _SERVICE_NAME.match(service) is None:
        return JSONResponse(
            {
                "detail": [
                    {
                        "loc": ["path", "service"],
                        "msg": f"String should match pattern '{SERVICE_NAME_PATTERN}'",
                        "type": "string_pattern_mismatch",
                    }
                ]
            },
            status_code=422,
        )
    state = request.app.state
    now: datetime = state.clock()
    services: ServiceDirectory = state.services
    metrics: ServingMetrics = state.metrics
    plans: PlanView = state.plans
    config = services.config(service)
    auto = services.gate().auto
    try:
        found = plans.cached(service)
        if found is None:
            found = await run_in_threadpool(plans.lookup, service)
    except STORE_ERRORS as error:
        logger.exception("reading the schedule of %s failed; serving the fallback", service)
        last_move, _ = plans.context(service)
        result = fallback_recommendation(
            service,
            config,
            now,
            f"schedule store unavailable ({type(error).__name__})",
            mode=served_mode(config, last_move, auto).mode,
        )
        metrics.observe(result, None)
        return Response(result.model_dump_json(), media_type="application/json")
    known, plan, floor = found
    if not known and not services.is_configured(service):
        raise _unknown_service(service)
    last_move, cold_start = plans.context(service)
    schedule = (
        None
        if plan is None
        else plan.schedule_around(now, now + timedelta(seconds=config.startup_seconds))
    )
    result = recommend(
        service,
        schedule,
        floor,
        config,
        now,
        served_mode(config, last_move, auto),
        cold_start.reason if cold_start is not None else None,
    )
    metrics.observe(result, schedule)
    _, _, age_gauge, fallback_counter = metrics.children(service)
    answers: ReadyAnswers = state.answers
    body = answers.keep(
        result,
        plan,
        floor,
        config,
        last_move,
        cold_start,
        recommendation_expires_at(result, plan, floor, config, now),
        age_gauge,
        fallback_counter,
    )
    return Response(body, media_type="application/json")


@write_router.put(
    "/services/{service}/live-floor",
    response_model=LiveFloor,
    tags=["scaling"],
    responses={**UNKNOWN_SERVICE, **STORE_DOWN},
)
def put_live_floor(
    service: ServiceName,
    body: LiveFloor,
    store: StoreDep,
    plans: PlansDep,
    services: ServicesDep,
    now: NowDep,
) -> LiveFloor:
    """Record the replicas the live load needs now (write token)."""
    _require_known(store, services, service)
    reading = FloorReading(ts=body.ts or now, replicas=body.replicas)
    store.set_live_floor(service, reading.replicas, reading.ts)
    plans.floor_recorded(service, reading)
    return LiveFloor(replicas=reading.replicas, ts=reading.ts)


@read_router.get(
    "/services/{service}/anomalies",
    response_model=AnomalyList,
    tags=["insights"],
    responses={**UNKNOWN_SERVICE, **STORE_DOWN},
)
def read_anomalies(
    service: ServiceName,
    store: StoreDep,
    services: ServicesDep,
    start: Annotated[
        QueryInstant | None, Query(description="Inclusive start (UTC if naive)")
    ] = None,
    end: Annotated[QueryInstant | None, Query(description="Exclusive end (UTC if naive)")] = None,
) -> AnomalyList:
    """Scored telemetry points of a service in ``[start, end)``."""
    _require_known(store, services, service)
    return AnomalyList(service=service, anomalies=store.anomalies(service, start, end))


@read_router.get(
    "/services/{service}/explanation",
    response_model=Explanation,
    tags=["insights"],
    responses={**UNKNOWN_SERVICE, **STORE_DOWN},
)
def read_explanation(
    service: ServiceName,
    store: StoreDep,
    services: ServicesDep,
    version: Annotated[
        int | None, Query(ge=1, le=MAX_VERSION, description="Schedule version")
    ] = None,
) -> Explanation:
    """The explanation of a schedule version (the newest explained one by default)."""
    _require_known(store, services, service)
    found = store.get_explanation(service, version)
    if found is None:
        which = "any schedule" if version is None else f"schedule version {version}"
        raise HTTPException(404, f"service {service!r} has no explanation for {which}")
    schedule_version, explanation = found
    return Explanation(service=service, schedule_version=schedule_version, explanation=explanation)


@read_router.get(
    "/services/{service}/scorecard",
    response_model=ScorecardAnswer,
    tags=["insights"],
    responses={**UNKNOWN_SERVICE, **STORE_DOWN},
)
def read_scorecard(
    service: ServiceName,
    store: StoreDep,
    services: ServicesDep,
    day: Annotated[
        str | None,
        Query(
            pattern=DAY_PATTERN,
            description="UTC day (YYYY-MM-DD); the latest scored day if omitted",
            examples=["2026-11-15"],
            json_schema_extra={"format": "date"},
        ),
    ] = None,
) -> ScorecardAnswer:
    """The shadow scorecard of a service (the latest day, or one day), with the mode it is
    served in and every move of the go-live gate. Read from the store: nothing is replayed."""
    wanted: date | None = None
    if day is not None:
        try:
            wanted = date.fromisoformat(day)
        except ValueError as error:
            raise HTTPException(
                422,
                [
                    {
                        "loc": ["query", "day"],
                        "msg": f"not a calendar day: {error}",
                        "type": "value_error",
                    }
                ],
            ) from error
    if wanted is None:
        card = store.latest_scorecard(service)
    else:
        found = store.scorecards(service, wanted)
        card = found[0] if found else None
    if card is None:
        if wanted is None or store.latest_scorecard(service) is None:
            _require_known(store, services, service)
            raise HTTPException(
                404,
                f"service {service!r} has no scorecard yet: the scorecard stage writes one per "
                "day once it has replayed a day of its telemetry",
            )
        raise HTTPException(404, f"service {service!r} has no scorecard for {wanted}")
    history = store.mode_history(service)
    auto = services.gate().auto
    served = served_mode(services.config(service), history[0] if history else None, auto)
    return ScorecardAnswer(
        service=service,
        scorecard=card,
        mode=served.mode,
        mode_set_by=GATE_ORIGIN if served.set_by == GATE_ORIGIN else PARAMS_ORIGIN,
        gate_auto=auto,
        mode_history=[
            ModeChangeRecord(
                ts=move.ts,
                from_mode=move.from_mode,
                to_mode=move.to_mode,
                reason=move.reason,
            )
            for move in history
        ],
    )


@ops_router.get(
    "/metrics",
    tags=["ops"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition of this app's registry (read token)."""
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def healthz(request: Request) -> dict[str, Any]:
    """Liveness/readiness: 200 while the process serves; reports whether the store answers.

    A store outage does not fail the probe: recommendations then serve the fallback, which is
    better for the autoscaler than no endpoint at all.
    """
    store: ScheduleStore = request.app.state.store
    try:
        store.ping()
        store_status = "ok"
    except STORE_ERRORS as error:
        logger.warning("schedule store ping failed: %s", error)
        store_status = f"unavailable: {type(error).__name__}"
    return {"status": "ok" if store_status == "ok" else "degraded", "store": store_status}


def store_unavailable(request: Request, error: Exception) -> JSONResponse:
    """503 for a route that needs the store while it fails (the recommendation never does)."""
    logger.error("%s %s: schedule store error: %s", request.method, request.url.path, error)
    return JSONResponse(
        {"detail": f"schedule store unavailable: {type(error).__name__}"}, status_code=503
    )


def invalid_request(request: Request, error: Exception) -> JSONResponse:
    """422 naming each invalid field; the offending input is not echoed back (it may be huge,
    or a NaN that JSON cannot carry)."""
    assert isinstance(error, RequestValidationError)
    details = [
        {
            "loc": list(item.get("loc", ())),
            "msg": str(item.get("msg", "")),
            "type": str(item.get("type", "")),
        }
        for item in error.errors()
    ]
    return JSONResponse({"detail": details}, status_code=422)


async def method_not_allowed(request: Request, error: Exception) -> Response:
    """405 whose ``Allow`` lists every method of the path (its routes may sit in two routers)."""
    assert isinstance(error, StarletteHTTPException)
    if error.status_code != 405:
        return await http_exception_handler(request, error)
    path = request.scope["path"]
    allowed = sorted(
        {
            method
            for route in request.app.routes
            if isinstance(route, Route) and route.methods and route.path_regex.match(path)
            for method in route.methods
        }
    )
    return JSONResponse(
        {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(allowed)}
    )


def create_app(
    settings: Settings | None = None, clock: Callable[[], datetime] | None = None
) -> FastAPI:
    """Build the serving app.

    Args:
        settings: Runtime settings (``schedule_db``, the API tokens, ``params_file``, ``dev``);
            read from the environment when None.
        clock: The current instant (UTC); the system clock when None. Tests pin it.

    Returns:
        The FastAPI app; its store is created lazily (tables on first request).

    Raises:
        ValueError: If a token is a known default or too short outside dev mode, the two tokens
            are equal, or ``params.yaml`` is missing or invalid.
    """
    settings = settings or get_settings()
    problems = settings.api_token_problems()
    if problems:
        raise ValueError("the API refuses to start: " + "; ".join(problems))
    app = FastAPIOffline(
        title="Forescale serving",
        version="1",
        description=(
            "Versioned replica schedules and the replica count KEDA reads. `GET` routes and "
            "`/metrics` need the read token (FORESCALE_API_READ_TOKEN) or the write token, "
            "`PUT` routes the write token (FORESCALE_API_TOKEN)."
        ),
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.tokens = AccessTokens.of(settings)
    app.state.clock = clock or utc_now
    app.state.store = ScheduleStore(settings.schedule_db)
    app.state.plans = PlanView(app.state.store)
    app.state.services = ServiceDirectory(settings.params_file)
    app.state.metrics = ServingMetrics()
    app.state.answers = ReadyAnswers()
    app.state.bearer_headers = (
        b"Bearer " + app.state.tokens.read,
        b"Bearer " + app.state.tokens.write,
    )
    app.include_router(recommendation_router)
    app.include_router(read_router)
    app.include_router(write_router)
    app.include_router(ops_router)
    for error_type in STORE_ERRORS:
        app.add_exception_handler(error_type, store_unavailable)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, method_not_allowed)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["ops"])
    # KEDA's route is matched first: every route before it costs each poll a regex match.
    routes = app.router.routes
    routes.sort(key=lambda route: getattr(route, "name", "") != "read_recommendation")
    document_access(app)
    return app


def run_server(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the API with uvicorn until interrupted (``forescale serve``).

    Args:
        settings: Runtime settings.
        host: Interface to bind.
        port: TCP port.
    """
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
