"""Reading ``params.yaml``, the one configuration file for the pipeline and the services.

The file is parsed once per version (path, size and modification time) into
:class:`ForescaleConfig`: every section is a validated model, and an unknown key anywhere is
refused with the file and the key's path, so a typo fails loudly instead of being ignored.
Everything that reads parameters goes through :func:`load_config` (or :func:`section` /
:func:`load_params`, which return its validated values as plain mappings).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    """A section of ``params.yaml``: unknown keys are refused, values are checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetSection(_Section):
    """The synthetic demo fleet (``forescale telemetry generate``)."""

    services: int = Field(default=5, ge=1)
    days: int = Field(default=14, ge=1)
    step_minutes: int = Field(default=1, ge=1, le=60)
    seed: int = 42


class ValidationSection(_Section):
    """Plausibility limits of a telemetry batch."""

    max_gap_minutes: float = Field(default=30.0, gt=0)
    max_requests_per_second: float = Field(default=1.0e6, gt=0)
    max_cpu_cores: float = Field(default=1.0e4, gt=0)
    max_latency_ms: float = Field(default=600_000.0, gt=0)


FORECAST_TARGETS: dict[str, str] = {"mean": "mean", "peak": "max"}
"""What a forecast step's value is -> how 1-minute telemetry is aggregated to it: ``mean``, the
step's mean request rate; ``peak``, its busiest minute (what the pods must absorb)."""


class TrainingSection(_Section):
    """Forecaster training: families, windows, backtests."""

    target: Literal["mean", "peak"] = "mean"
    horizon_hours: int = Field(default=24, ge=1)
    backtest_folds: int = Field(default=3, ge=1)
    backtest_horizon_hours: int = Field(default=24, ge=1)
    history_days: int = Field(default=28, ge=1)
    shard_size: int = Field(default=250, ge=1)
    models: list[str] = Field(
        default_factory=lambda: ["prophet", "lightgbm", "naive"], min_length=1
    )
    quantiles: list[float] = Field(default_factory=lambda: [0.5, 0.9], min_length=1)
    model_params: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _quantiles_in_range(self) -> TrainingSection:
        if any(not 0 < q < 1 for q in self.quantiles) or 0.5 not in self.quantiles:
            raise ValueError(f"quantiles must lie in (0, 1) and include 0.5, got {self.quantiles}")
        return self


class ScheduleSection(_Section):
    """Schedule publication."""

    validity_hours: float = Field(default=2.0, gt=0)
    horizon_hours: int = Field(default=24, ge=1)
    tail_days: float = Field(default=3.0, ge=0)
    blend_with_persistence: bool = False
    keep_days: float = Field(default=7.0, gt=0)


class DriftSection(_Section):
    """The hourly drift monitor."""

    current_hours: float = Field(default=24.0, gt=0)
    reference_weeks: int = Field(default=2, ge=1)
    metrics: list[str] = Field(default_factory=lambda: ["requests", "cpu", "latency_p95_ms"])
    min_drifted_metrics: int = Field(default=1, ge=1)
    method: str | None = "wasserstein"
    threshold: float | None = 0.5
    error_tolerance: float = Field(default=0.5, ge=0)
    min_rows: int = Field(default=30, ge=1)
    cooldown_hours: float = Field(default=24.0, gt=0)


class IngestSection(_Section):
    """Where telemetry comes from."""

    source: str = "synthetic"
    value_per: Literal["second", "minute", "step"] = "second"
    promql: dict[str, str] | None = None


class RollbackSection(_Section):
    """Live rollback of a champion whose served forecasts go bad."""

    window_hours: float = Field(default=6.0, gt=0)
    margin: float = Field(default=0.2, ge=0)
    min_points: int = Field(default=12, ge=1)


class AnomalySection(_Section):
    """The anomaly detector."""

    threshold: float = Field(default=0.32, ge=0, le=1)
    detector: dict[str, Any] = Field(default_factory=dict)
    context_days: int = Field(default=21, ge=1)
    backtest_days: int = Field(default=2, ge=1)
    backtest_services: int = Field(default=50, ge=1)
    detect_within_steps: int = Field(default=6, ge=1)
    false_alarm_cost: float = Field(default=0.05, ge=0)
    backfill_hours: float = Field(default=24.0, gt=0)


class GateSection(_Section):
    """The go-live gate (:mod:`core.gate`): when a service moves between ``shadow`` and ``active``.

    Attributes:
        auto: Let the gate move services (``False``: it only proposes moves; ``params.yaml``'s
            ``mode`` alone decides what is served).
        pass_days: Consecutive passing scorecard days that move a ``shadow`` service to
            ``active``.
        fail_days: Consecutive failing scorecard days that move an ``active`` service back to
            ``shadow``.
        pod_hour_budget: Extra pod-hours over the HPA's a passing day may use, as a share of the
            HPA's (:func:`core.scorecard.day_passes`).
    """

    auto: bool = False
    pass_days: int = Field(default=7, ge=1, le=366)
    fail_days: int = Field(default=2, ge=1, le=366)
    pod_hour_budget: float = Field(default=0.05, ge=0, le=10)


class ForescaleConfig(_Section):
    """The whole ``params.yaml``, validated.

    ``service_defaults`` and ``services`` are checked by building every service's
    :class:`core.service_config.ServiceConfig`.
    """

    fleet: FleetSection = Field(default_factory=FleetSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    service_defaults: dict[str, Any] = Field(default_factory=dict)
    services: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    drift: DriftSection = Field(default_factory=DriftSection)
    ingest: IngestSection = Field(default_factory=IngestSection)
    rollback: RollbackSection = Field(default_factory=RollbackSection)
    anomaly: AnomalySection = Field(default_factory=AnomalySection)
    gate: GateSection = Field(default_factory=GateSection)


def describe_validation_error(
    error: ValidationError, root: str = "file", found: bool = True
) -> str:
    """One clause per problem of a pydantic validation error: the key's path and what is wrong.

    Args:
        error: The validation error.
        root: What a problem of the whole input (an empty path) is named.
        found: Also give the value found, and say ``unknown key`` for a key that is not allowed;
            otherwise pydantic's message alone.

    Returns:
        The clauses, joined by ``"; "``.
    """
    clauses = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or root
        if not found:
            clauses.append(f"{where}: {item['msg']}")
        elif item["type"] == "extra_forbidden":
            clauses.append(f"{where}: unknown key")
        else:
            clauses.append(f"{where}: {item['msg']}, got {repr(item.get('input'))[:80]}")
    return "; ".join(clauses)


@functools.lru_cache(maxsize=32)
def _parse(path: Path, size: int, mtime_ns: int) -> ForescaleConfig:
    """Parse and validate one version of a parameters file (cached by size and mtime)."""
    del size, mtime_ns  # part of the cache key only
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"parameters file {path} is not valid YAML: {err}") from err
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(  # noqa: TRY004 - bad file content is bad input, not a caller's type error
            f"parameters file {path} must hold a mapping at the top level"
        )
    try:
        config = ForescaleConfig.model_validate(raw)
    except ValidationError as error:
        raise ValueError(f"parameters file {path}: {describe_validation_error(error)}") from error
    from core.service_config import check_service_sections

    check_service_sections(path, config.service_defaults, config.services)
    return config


def load_config(params_file: Path) -> ForescaleConfig:
    """The validated configuration of a parameters file (parsed once per file version).

    Args:
        params_file: Path of ``params.yaml``.

    Returns:
        The configuration; sections absent from the file take their defaults.

    Raises:
        ValueError: If the file is missing, is not YAML, or has an unknown key or a bad value
            (the message names the file and the key's path).
    """
    path = Path(params_file).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"parameters file {params_file} does not exist")
    stat = path.stat()
    return _parse(path, stat.st_size, stat.st_mtime_ns)


def load_params(params_file: Path) -> dict[str, Any]:
    """The validated parameters as a plain mapping (every section, defaults filled in).

    Args:
        params_file: Path of ``params.yaml``.

    Returns:
        A fresh mapping (callers may change it).

    Raises:
        ValueError: As :func:`load_config`.
    """
    return load_config(params_file).model_dump()


def section(params_file: Path, name: str) -> dict[str, Any]:
    """One validated top-level section of the parameters file.

    Args:
        params_file: Path of ``params.yaml``.
        name: Section name, e.g. ``training``.

    Returns:
        The section's values (defaults filled in).

    Raises:
        ValueError: If the file is invalid or there is no such section.
    """
    values = load_params(params_file)
    if name not in values:
        raise ValueError(f"{params_file}: there is no '{name}' section")
    return values[name]


def forecast_target(params_file: Path) -> str:
    """``training.target`` of the parameters file: ``mean`` (default) or ``peak``.

    Args:
        params_file: Path of ``params.yaml``.

    Returns:
        The forecast target.

    Raises:
        ValueError: If the file is invalid.
    """
    return load_config(params_file).training.target
