"""Request and response bodies of the serving API.

A schedule is a list of steps; step ``i`` is in force from its ``ts`` until the next step's ``ts``
(the last one for ``step_seconds``). All timestamps are timezone-aware and returned in UTC.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

SERVICE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,126}$"
RecommendationSource = Literal["schedule", "floor", "fallback", "dry_run"]


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


class ScheduleStep(BaseModel):
    """One step of a replica schedule.

    Attributes:
        ts: Start of the step (timezone-aware).
        replicas: Replicas planned from ``ts`` on.
        forecast_p50: Median forecast of requests/s for the step, if known.
        forecast_p90: 0.9 quantile forecast of requests/s for the step, if known.
    """

    model_config = ConfigDict(extra="forbid")

    ts: AwareDatetime
    replicas: int
    forecast_p50: float | None = None
    forecast_p90: float | None = None

    @field_validator("ts")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return _to_utc(value)

    @field_validator("replicas")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"replicas must be a non-negative integer, got {value}")
        return value

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

    model_version: str = Field(min_length=1)
    generated_at: AwareDatetime
    valid_until: AwareDatetime
    step_seconds: int = Field(default=300, gt=0)
    dry_run: bool = False
    steps: list[ScheduleStep] = Field(min_length=1)

    @field_validator("generated_at", "valid_until")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return _to_utc(value)

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
    created_at: AwareDatetime

    @field_validator("created_at")
    @classmethod
    def _created_utc(cls, value: datetime) -> datetime:
        return _to_utc(value)


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

    replicas: int
    ts: AwareDatetime | None = None

    @field_validator("replicas")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"replicas must be a non-negative integer, got {value}")
        return value

    @field_validator("ts")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _to_utc(value)


class Recommendation(BaseModel):
    """What an autoscaler should run now (KEDA ``metrics-api`` with ``valueLocation: replicas``).

    Attributes:
        service: The service.
        replicas: Replicas to run now; never below the configured minimum.
        source: ``schedule`` (planned value), ``floor`` (live load needs more than planned),
            ``fallback`` (no usable schedule), ``dry_run`` (forecast-only service).
        stale: True when no fresh schedule backs the value.
        ts: The instant the recommendation is for.
        valid_until: Validity end of the schedule used, if any.
        schedule_version: Version of the schedule used, if any.
        model_version: Model that produced that schedule, if any.
        reason: Human-readable explanation of the value.
    """

    service: str
    replicas: int = Field(ge=0)
    source: RecommendationSource
    stale: bool
    ts: datetime
    valid_until: datetime | None = None
    schedule_version: int | None = None
    model_version: str | None = None
    reason: str


class ServiceSummary(BaseModel):
    """One entry of ``GET /v1/services``."""

    name: str
    latest_version: int | None = Field(
        description="Version of the latest published schedule; null: none published yet."
    )
    configured: bool = Field(
        description="True when params.yaml names the service under `services:` with settings of "
        "its own; false when `service_defaults` apply to it (as for every demo service)."
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
