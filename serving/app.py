"""The serving API: versioned replica schedules and the replica count KEDA reads.

Build it with :func:`create_app` (nothing happens at import); run it with :func:`run_server`.
Routes stay thin: the rules live in :mod:`serving.recommend`, storage in :mod:`serving.store`.
"""

from __future__ import annotations

import logging
import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from sqlalchemy.exc import SQLAlchemyError

from core.service_config import ServiceConfig, default_service_config, load_service_configs
from core.settings import Settings, get_settings
from serving.recommend import fallback_recommendation, publish_problems, recommend
from serving.schemas import (
    SERVICE_NAME_PATTERN,
    AnomalyList,
    Explanation,
    LiveFloor,
    PublishResult,
    Recommendation,
    Schedule,
    SchedulePublish,
    ServiceList,
    ServiceSummary,
)
from serving.store import FloorReading, ScheduleStore

logger = logging.getLogger(__name__)

STORE_ERRORS = (SQLAlchemyError, OSError)
ServiceName = Annotated[
    str, Path(pattern=SERVICE_NAME_PATTERN, description="Service name", examples=["checkout"])
]


class ServiceDirectory:
    """Per-service settings from ``params.yaml``, re-read when the file changes.

    Args:
        params_file: Path of ``params.yaml``.
    """

    def __init__(self, params_file: FilePath) -> None:
        self.params_file = FilePath(params_file)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._configured: dict[str, ServiceConfig] = {}
        self._default = ServiceConfig()
        self._refresh()

    def _refresh(self) -> None:
        """Re-read the file when it changed; after a good first read, a broken edit keeps the
        last good settings (logged) so recommendations never fail over a params typo."""
        try:
            mtime = self.params_file.stat().st_mtime
            if mtime == self._mtime:
                return
            with self._lock:
                configured = load_service_configs(self.params_file)
                default = default_service_config(self.params_file)
                self._configured, self._default, self._mtime = configured, default, mtime
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
        self.publishes = Counter(
            "forescale_schedule_publishes",
            "Schedules published",
            ["service"],
            registry=self.registry,
        )

    def observe(self, recommendation: Recommendation, schedule: Schedule | None) -> None:
        """Record a served recommendation."""
        service = recommendation.service
        self.recommended_replicas.labels(service).set(recommendation.replicas)
        self.schedule_stale.labels(service).set(1 if recommendation.stale else 0)
        if schedule is not None:
            age = (recommendation.ts - schedule.generated_at).total_seconds()
            self.schedule_age_seconds.labels(service).set(age)
        if recommendation.source == "fallback":
            self.fallbacks.labels(service).inc()


# ---- dependencies ------------------------------------------------------------------------------
# They never block, so they are ``async``: FastAPI runs them on the event loop instead of sending
# each one through the thread pool (one hop per request instead of six).

_bearer = HTTPBearer(auto_error=False, description="The API token (FORESCALE_API_TOKEN)")


async def get_store(request: Request) -> ScheduleStore:
    """The app's schedule store."""
    return request.app.state.store


async def get_services(request: Request) -> ServiceDirectory:
    """The app's per-service settings."""
    return request.app.state.services


async def get_metrics(request: Request) -> ServingMetrics:
    """The app's metrics."""
    return request.app.state.metrics


async def get_now() -> datetime:
    """The current instant (UTC); a dependency so tests can pin the clock."""
    return datetime.now(UTC)


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse the request with 401 unless it carries the configured bearer token."""
    expected = request.app.state.settings.api_token.get_secret_value()
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers=challenge)
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(
            401,
            "invalid bearer token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


StoreDep = Annotated[ScheduleStore, Depends(get_store)]
ServicesDep = Annotated[ServiceDirectory, Depends(get_services)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
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


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ---- routes ------------------------------------------------------------------------------------

router = APIRouter(prefix="/v1")


@router.get("/services", response_model=ServiceList, tags=["schedules"])
def list_services(store: StoreDep, services: ServicesDep) -> ServiceList:
    """Every service that has a schedule or is configured in params.yaml."""
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


@router.get("/services/{service}/schedule", response_model=Schedule, tags=["schedules"])
def read_schedule(
    service: ServiceName,
    store: StoreDep,
    services: ServicesDep,
    version: Annotated[int | None, Query(ge=1, description="Version; latest if omitted")] = None,
) -> Schedule:
    """The latest schedule of a service, or one version of it."""
    schedule = store.get(service, version)
    if schedule is not None:
        return schedule
    _require_known(store, services, service)
    if version is None:
        raise HTTPException(404, f"service {service!r} has no published schedule yet")
    raise HTTPException(404, f"service {service!r} has no schedule version {version}")


@router.put(
    "/services/{service}/schedule",
    response_model=PublishResult,
    status_code=201,
    tags=["schedules"],
    dependencies=[Depends(require_token)],
)
def publish_schedule(
    service: ServiceName,
    body: SchedulePublish,
    store: StoreDep,
    metrics: MetricsDep,
    now: NowDep,
) -> PublishResult:
    """Publish a new schedule version (bearer token required)."""
    problems = publish_problems(body, now)
    if problems:
        raise HTTPException(
            422,
            [
                {"loc": ["body", *location], "msg": message, "type": "value_error"}
                for location, message in problems
            ],
        )
    version = store.publish(service, body)
    metrics.publishes.labels(service).inc()
    stored = store.get(service, version)
    created_at = stored.created_at if stored is not None else now
    return PublishResult(service=service, version=version, created_at=created_at)


@router.get("/services/{service}/recommendation", response_model=Recommendation, tags=["scaling"])
def read_recommendation(
    service: ServiceName,
    store: StoreDep,
    services: ServicesDep,
    metrics: MetricsDep,
    now: NowDep,
) -> Recommendation:
    """Replicas to run now (KEDA metrics-api: ``valueLocation: replicas``). Never an error for a
    known service: without a usable schedule it serves the configured minimum or the live floor.
    """
    config = services.config(service)
    try:
        schedule = store.latest(service)
        floor = store.get_live_floor(service)
    except STORE_ERRORS as error:
        logger.exception("reading the schedule of %s failed; serving the fallback", service)
        result = fallback_recommendation(
            service, config, now, f"schedule store unavailable ({type(error).__name__})"
        )
        metrics.observe(result, None)
        return result
    if schedule is None and floor is None and not services.is_configured(service):
        raise _unknown_service(service)
    result = recommend(service, schedule, floor, config, now)
    metrics.observe(result, schedule)
    return result


@router.put(
    "/services/{service}/live-floor",
    response_model=LiveFloor,
    tags=["scaling"],
    dependencies=[Depends(require_token)],
)
def put_live_floor(
    service: ServiceName, body: LiveFloor, store: StoreDep, services: ServicesDep, now: NowDep
) -> LiveFloor:
    """Record the replicas the live load needs now (bearer token required)."""
    _require_known(store, services, service)
    reading = FloorReading(ts=body.ts or now, replicas=body.replicas)
    store.set_live_floor(service, reading.replicas, reading.ts)
    return LiveFloor(replicas=reading.replicas, ts=reading.ts)


@router.get("/services/{service}/anomalies", response_model=AnomalyList, tags=["insights"])
def read_anomalies(
    service: ServiceName,
    store: StoreDep,
    services: ServicesDep,
    start: Annotated[datetime | None, Query(description="Inclusive start (UTC if naive)")] = None,
    end: Annotated[datetime | None, Query(description="Exclusive end (UTC if naive)")] = None,
) -> AnomalyList:
    """Scored telemetry points of a service in ``[start, end)``."""
    _require_known(store, services, service)
    return AnomalyList(
        service=service, anomalies=store.anomalies(service, _aware(start), _aware(end))
    )


@router.get("/services/{service}/explanation", response_model=Explanation, tags=["insights"])
def read_explanation(
    service: ServiceName,
    store: StoreDep,
    services: ServicesDep,
    version: Annotated[int | None, Query(ge=1, description="Schedule version")] = None,
) -> Explanation:
    """The explanation of a schedule version (the newest explained one by default)."""
    _require_known(store, services, service)
    found = store.get_explanation(service, version)
    if found is None:
        which = "any schedule" if version is None else f"schedule version {version}"
        raise HTTPException(404, f"service {service!r} has no explanation for {which}")
    schedule_version, explanation = found
    return Explanation(service=service, schedule_version=schedule_version, explanation=explanation)


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


def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition of this app's registry."""
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def store_unavailable(request: Request, error: Exception) -> JSONResponse:
    """503 for a route that needs the store while it fails (the recommendation never does)."""
    logger.error("%s %s: schedule store error: %s", request.method, request.url.path, error)
    return JSONResponse(
        {"detail": f"schedule store unavailable: {type(error).__name__}"}, status_code=503
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the serving app.

    Args:
        settings: Runtime settings (``schedule_db``, ``api_token``, ``params_file``); read from
            the environment when None.

    Returns:
        The FastAPI app; its store is created lazily (tables on first request).

    Raises:
        ValueError: If ``params.yaml`` is missing or its service settings are invalid.
    """
    settings = settings or get_settings()
    app = FastAPI(
        title="Forescale serving",
        version="1",
        description="Versioned replica schedules and the replica count KEDA reads.",
    )
    app.state.settings = settings
    app.state.store = ScheduleStore(settings.schedule_db)
    app.state.services = ServiceDirectory(settings.params_file)
    app.state.metrics = ServingMetrics()
    app.include_router(router)
    for error_type in STORE_ERRORS:
        app.add_exception_handler(error_type, store_unavailable)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["ops"])
    app.add_api_route(
        "/metrics", metrics_endpoint, methods=["GET"], tags=["ops"], response_class=Response
    )
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
