"""Request and response bodies of the serving API.

A schedule is a list of steps; step ``i`` is in force from its ``ts`` until the next step's ``ts``
(the last one for ``step_seconds``). All timestamps are timezone-aware and returned in UTC.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from core.scorecard import ScorecardDay

SERVICE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,126}$"
RecommendationSource = Literal["schedule", "floor", "fallback", "dry_run", "shadow"]
ServiceMode = Literal["shadow", "active"]
DAY_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"

MAX_STEPS = 10_080  # one week of one-minute steps
MAX_REPLICAS = 100_000
MAX_STEP_SECONDS = 86_400
MAX_MODEL_VERSION_LENGTH = 256
MAX_VERSION = 2**31 - 1  # versions are 32-bit integers in every supported database
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,128}$"  # 1-128 visible ASCII characters
EARLIEST_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_INSTANT = datetime(9000, 1, 1, tzinfo=UTC)


RFC3339_DATE_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


def _date_time_input(value: Any) -> Any:
    """Let only RFC 3339 date-time strings (or datetimes, from Python) through.

    Pydantic alone would also take numbers (Unix seconds), bare dates and naive strings.
    """
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and RFC3339_DATE_TIME.match(value):
        return value
    raise ValueError(
        "must be an RFC 3339 date-time with a timezone offset, e.g. 2026-11-16T12:00:00Z"
    )


def _json_integer(value: Any) -> Any:
    """Let only JSON numbers through to an integer field: no booleans, no strings."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON integer")  # noqa: TRY004 (pydantic reports ValueError)
    return value


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as error:
        raise ValueError(f"timestamp {value.isoformat()} is out of range") from error


def to_utc(value: datetime) -> datetime:
    """An aware instant in UTC, inside the range a schedule may use.

    Args:
        value: A timezone-aware instant.

    Returns:
        The same instant with ``tzinfo=UTC``.

    Raises:
        ValueError: If it lies before :data:`EARLIEST_INSTANT` or not before
            :data:`LATEST_INSTANT` (far enough from the calendar's ends that adding a step or a
            start-up lead never overflows).
    """
    instant = _utc(value)
    if not EARLIEST_INSTANT <= instant < LATEST_INSTANT:
        raise ValueError(
            f"timestamp {instant.isoformat()} must lie in [{EARLIEST_INSTANT.isoformat()}, "
            f"{LATEST_INSTANT.isoformat()})"
        )
    return instant


def query_instant(value: datetime) -> datetime:
    """A query bound in UTC; an instant too close to the calendar's ends to be converted is
    replaced by that end (it bounds nothing either way)."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        extreme = datetime.min if value.year == 1 else datetime.max
        return extreme.replace(tzinfo=UTC)


UTCInstant = Annotated[AwareDatetime, BeforeValidator(_date_time_input), AfterValidator(to_utc)]
"""A timezone-aware instant in the accepted range, converted to UTC."""
AnyUTCInstant = Annotated[AwareDatetime, BeforeValidator(_date_time_input), AfterValidator(_utc)]
"""A timezone-aware instant, converted to UTC."""
QueryInstant = Annotated[
    AwareDatetime, BeforeValidator(_date_time_input), AfterValidator(query_instant)
]
"""A timezone-aware instant in a query string, converted to UTC."""
Replicas = Annotated[int, Field(ge=0, le=MAX_REPLICAS), BeforeValidator(_json_integer)]


class ScheduleStep(BaseModel):
    """One step of a replica schedule.

    Attributes:
        ts: Start of the step (timezone-aware).
        replicas: Replicas planned from ``ts`` on.
        forecast_p50: Median forecast of requests/s for the step, if known.
        forecast_p90: 0.9 quantile forecast of requests/s for the step, if known.
    """

    model_config = ConfigDict(extra="forbid")

    ts: UTCInstant
    replicas: Replicas
    forecast_p50: float | None = Field(default=None, strict=True)
    forecast_p90: float | None = Field(default=None, strict=True)

    @field_validator("forecast_p50", "forecast_p90")
    @classmethod
    def _nan_is_missing(cls, value: float | None) -> float | None:
        if value is None or math.isnan(value):
            return None
        if math.isinf(value):
            raise ValueError(f"forecast must be finite, got {value}")
        return value


class SchedulePublish(BaseModel):
    """The body of ``PUT /v1/services/{service}/schedule``.

    Attributes:
        model_version: Model (registry name and version) that produced the forecast.
        generated_at: When the schedule was computed.
        valid_until: After this instant the schedule is stale and is no longer served.
        step_seconds: Length of one step.
        dry_run: Publish for display only: the API serves the reactive floor.
        steps: Non-empty, strictly increasing in ``ts``.
    """

    model_config = ConfigDict(extra="forbid")

    model_version: str = Field(min_length=1, max_length=MAX_MODEL_VERSION_LENGTH)
    generated_at: UTCInstant
    valid_until: UTCInstant
    step_seconds: Annotated[int, BeforeValidator(_json_integer)] = Field(
        default=300, gt=0, le=MAX_STEP_SECONDS
    )
    dry_run: bool = Field(default=False, strict=True)
    steps: list[ScheduleStep] = Field(min_length=1, max_length=MAX_STEPS)

    @field_validator("steps")
    @classmethod
    def _strictly_increasing(cls, steps: list[ScheduleStep]) -> list[ScheduleStep]:
        for index in range(1, len(steps)):
            if steps[index].ts <= steps[index - 1].ts:
                raise ValueError(
                    f"step timestamps must be strictly increasing: steps[{index}].ts "
                    f"{steps[index].ts.isoformat()} is not after steps[{index - 1}].ts "
                    f"{steps[index - 1].ts.isoformat()}"
                )
        return steps

    @model_validator(mode="after")
    def _valid_until_after_generated(self) -> SchedulePublish:
        if self.valid_until <= self.generated_at:
            raise ValueError(
                f"valid_until ({self.valid_until.isoformat()}) must be after generated_at "
                f"({self.generated_at.isoformat()})"
            )
        return self

    @property
    def ends_at(self) -> datetime:
        """End of the last step."""
        return self.steps[-1].ts + timedelta(seconds=self.step_seconds)


class Schedule(SchedulePublish):
    """A stored, versioned schedule as the API returns it.

    Attributes:
        service: Service the schedule is for.
        version: Per-service version, 1 for the first publish, +1 for each later one.
        created_at: When the store accepted it.
    """

    service: str
    version: int = Field(ge=1)
    created_at: UTCInstant

    @classmethod
    def of_stored(cls, header: StoredHeader, steps: list[ScheduleStep]) -> Schedule:
        """A schedule rebuilt from parts validated when it was published, not validated again.

        Args:
            header: Every field but the steps (a store row, a served plan).
            steps: The steps, already valid.

        Returns:
            The schedule.
        """
        return cls.model_construct(
            service=header.service,
            version=header.version,
            created_at=header.created_at,
            model_version=header.model_version,
            generated_at=header.generated_at,
            valid_until=header.valid_until,
            step_seconds=header.step_seconds,
            dry_run=header.dry_run,
            steps=steps,
        )


class StoredHeader(Protocol):
    """The fields of a stored schedule besides its steps (:meth:`Schedule.of_stored`)."""

    @property
    def service(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def model_version(self) -> str: ...
    @property
    def generated_at(self) -> datetime: ...
    @property
    def valid_until(self) -> datetime: ...
    @property
    def step_seconds(self) -> int: ...
    @property
    def dry_run(self) -> bool: ...


class PublishResult(BaseModel):
    """Response of a successful publish."""

    service: str
    version: int
    created_at: datetime


class LiveFloor(BaseModel):
    """The reactive floor: replicas the live load needs now (``PUT .../live-floor``).

    Attributes:
        replicas: Replicas the current load needs.
        ts: When it was measured; the server's clock when omitted.
    """

    model_config = ConfigDict(extra="forbid")

    replicas: Replicas
    ts: AnyUTCInstant | None = None


class Recommendation(BaseModel):
    """What an autoscaler should run now (KEDA ``metrics-api`` with ``valueLocation: replicas``).

    Attributes:
        service: The service.
        replicas: Replicas to run now; never below the configured minimum.
        source: ``schedule`` (planned value), ``floor`` (live load needs more than planned),
            ``fallback`` (no usable schedule, e.g. a cold start), ``shadow`` (the service is in
            shadow mode: the reactive floor), ``dry_run`` (the schedule was published for
            display only: the reactive floor).
        mode: The service's mode: ``shadow`` or ``active`` (:mod:`core.gate`).
        stale: True when no fresh schedule backs the value.
        ts: The instant the recommendation is for.
        valid_until: Validity end of the schedule used, if any.
        schedule_version: Version of the schedule used, if any.
        model_version: Model that produced that schedule, if any.
        reason: Human-readable explanation of the value.
    """

    service: str
    replicas: int = Field(ge=1)
    source: RecommendationSource
    mode: ServiceMode
    stale: bool
    ts: datetime
    valid_until: datetime | None = None
    schedule_version: int | None = None
    model_version: str | None = None
    reason: str


class ServiceSummary(BaseModel):
    """One entry of ``GET /v1/services``.

    Attributes:
        name: The service.
        latest_version: Its newest schedule version; None before its first publish.
        configured: True when ``params.yaml`` names the service under ``services``; False when
            it only has published schedules and is scaled with ``service_defaults``.
    """

    name: str
    latest_version: int | None = Field(
        description="Newest schedule version; null before the first publish"
    )
    configured: bool = Field(
        description=(
            "true: params.yaml names the service under `services` (its own settings); false: "
            "it only has published schedules and is scaled with `service_defaults`"
        )
    )


class ServiceList(BaseModel):
    """Response of ``GET /v1/services``."""

    services: list[ServiceSummary]


class Anomaly(BaseModel):
    """One scored telemetry point."""

    service: str
    ts: datetime
    score: float
    is_anomaly: bool


class AnomalyList(BaseModel):
    """Response of ``GET /v1/services/{service}/anomalies``."""

    service: str
    anomalies: list[Anomaly]


class Explanation(BaseModel):
    """Response of ``GET /v1/services/{service}/explanation``."""

    service: str
    schedule_version: int
    explanation: dict[str, Any]


class ErrorMessage(BaseModel):
    """An error answer (401, 403, 404, 409, 413, 503)."""

    detail: str


class ModeChangeRecord(BaseModel):
    """One move of the go-live gate.

    Attributes:
        ts: When the gate moved the service.
        from_mode: The mode it left.
        to_mode: The mode it entered.
        reason: Why (the scorecard days and figures behind the move).
    """

    ts: datetime
    from_mode: ServiceMode
    to_mode: ServiceMode
    reason: str


class ScorecardAnswer(BaseModel):
    """Response of ``GET /v1/services/{service}/scorecard``.

    Attributes:
        service: The service.
        scorecard: The scorecard day (the latest, or the day asked for).
        mode: The mode the service is served in now.
        mode_set_by: ``params.yaml`` (its ``mode``) or ``gate`` (the go-live gate's last move,
            with ``gate.auto`` on).
        gate_auto: Whether the gate moves services itself (``gate.auto``).
        mode_history: Every move of the gate for the service, newest first.
    """

    service: str
    scorecard: ScorecardDay
    mode: ServiceMode
    mode_set_by: Literal["params.yaml", "gate"]
    gate_auto: bool
    mode_history: list[ModeChangeRecord]
