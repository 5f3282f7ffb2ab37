"""Per-service scaling settings from ``params.yaml``.

Every service gets ``service_defaults``; a service named under ``services`` overrides any of those
fields. Unknown keys are refused, so a typo in ``params.yaml`` fails loudly instead of being
silently ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.params import describe_validation_error, load_params

DEFAULTS_SECTION = "service_defaults"
SERVICES_SECTION = "services"
Mode = Literal["shadow", "active"]
SHADOW: Mode = "shadow"
ACTIVE: Mode = "active"
DEFAULT_MODE: Mode = SHADOW
"""A service nobody has decided about is served the reactive floor (docs/decisions/0006)."""

LOG = logging.getLogger(__name__)
_WARNED: set[str] = set()  # deprecation warnings already logged (once per file and section)


def migrate_dry_run(settings: Any, where: str = "settings") -> Any:
    """Read the deprecated ``dry_run`` setting as ``mode`` (``true`` -> shadow, ``false`` -> active).

    Args:
        settings: One mapping of service settings (anything else is returned as is).
        where: What the mapping is, for messages (e.g. ``services.checkout``).

    Returns:
        The mapping with ``dry_run`` replaced by ``mode``.

    Raises:
        ValueError: If ``dry_run`` is not a boolean or contradicts a ``mode`` beside it.
    """
    if not isinstance(settings, dict) or "dry_run" not in settings:
        return settings
    migrated = dict(settings)
    dry_run = migrated.pop("dry_run")
    if not isinstance(dry_run, bool):
        raise ValueError(f"{where}.dry_run: must be true or false, got {dry_run!r}")  # noqa: TRY004
    mode = SHADOW if dry_run else ACTIVE
    if migrated.get("mode", mode) != mode:
        raise ValueError(
            f"{where}: dry_run {str(dry_run).lower()} contradicts mode {migrated['mode']!r}; "
            "dry_run is deprecated, keep only mode"
        )
    if where not in _WARNED:
        _WARNED.add(where)
        LOG.warning("%s: dry_run is deprecated, read as mode: %s", where, mode)
    migrated["mode"] = mode
    return migrated


class HpaScalingPolicy(BaseModel):
    """One ``HPAScalingPolicy``: how much may change per period.

    Attributes:
        type: ``Pods`` (a number of pods) or ``Percent`` (a share of the current count).
        value: The pods or percent allowed per period.
        period_seconds: The period, 1 s to 30 min as Kubernetes allows.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["Pods", "Percent"]
    value: int = Field(gt=0)
    period_seconds: int = Field(gt=0, le=1800)


class HpaScalingRules(BaseModel):
    """One direction of ``spec.behavior`` (``HPAScalingRules``).

    Attributes:
        stabilization_window_seconds: Past recommendations considered (0 to one hour).
        select_policy: ``Max`` (the policy allowing the largest change), ``Min`` or
            ``Disabled`` (no change in this direction).
        policies: The policies.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    stabilization_window_seconds: int = Field(ge=0, le=3600)
    select_policy: Literal["Max", "Min", "Disabled"] = "Max"
    policies: tuple[HpaScalingPolicy, ...] = Field(min_length=1)


def _default_scale_up() -> HpaScalingRules:
    """Kubernetes' default scale-up: no window, ``max(100 %, 4 pods)`` per 15 s."""
    return HpaScalingRules(
        stabilization_window_seconds=0,
        policies=(
            HpaScalingPolicy(type="Percent", value=100, period_seconds=15),
            HpaScalingPolicy(type="Pods", value=4, period_seconds=15),
        ),
    )


def _default_scale_down() -> HpaScalingRules:
    """Kubernetes' default scale-down: a 300 s window, then up to 100 % per 15 s."""
    return HpaScalingRules(
        stabilization_window_seconds=300,
        policies=(HpaScalingPolicy(type="Percent", value=100, period_seconds=15),),
    )


class HpaSettings(BaseModel):
    """The service's own Horizontal Pod Autoscaler: the reactive autoscaler Forescale sits beside.

    In the shipped KEDA ``ScaledObject`` it is the ``cpu`` trigger next to the schedule's
    ``metrics-api`` trigger; KEDA's HPA runs the larger of the two proposals, so the pods never
    fall below what this HPA alone would run (except by start-up timing). The shadow scorecard
    (``forescale scorecard``) replays the service's telemetry under exactly this HPA, so these are
    the settings the service runs today; defaults are Kubernetes' own.

    Attributes:
        target_utilization: The CPU utilisation the HPA keeps the pods at, in (0, 1] (the
            ``cpu`` trigger's ``value`` in percent).
        min_replicas: ``spec.minReplicas`` (Kubernetes' default 1).
        max_replicas: ``spec.maxReplicas``.
        tolerance: The controller's tolerance around the target (Kubernetes' default 0.1).
        scale_up: ``spec.behavior.scaleUp`` (default: no window, 100 % or 4 pods per 15 s).
        scale_down: ``spec.behavior.scaleDown`` (default: 300 s window, 100 % per 15 s).
        pod_startup_seconds: Seconds from a pod's creation until it serves; ``None``: the
            service's ``startup_seconds``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_utilization: float = Field(default=0.7, gt=0, le=1)
    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(default=100, ge=1)
    tolerance: float = Field(default=0.1, ge=0, lt=1)
    scale_up: HpaScalingRules = Field(default_factory=_default_scale_up)
    scale_down: HpaScalingRules = Field(default_factory=_default_scale_down)
    pod_startup_seconds: int | None = Field(default=None, ge=0, le=3600)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> HpaSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"hpa.min_replicas ({self.min_replicas}) exceeds hpa.max_replicas "
                f"({self.max_replicas})"
            )
        return self


class ServiceConfig(BaseModel):
    """Scaling settings of one service.

    Attributes:
        capacity_per_replica: Requests/s one pod serves at 100 % utilisation.
        target_utilization: Share of a pod's capacity the schedule plans to use, in (0, 1].
        min_replicas: Fewest pods ever recommended; at least 1, so neither a schedule nor the
            fallback ever lets the autoscaler take a live service to zero.
        max_replicas: Most pods ever recommended.
        startup_seconds: Pod start-up lead time: the served value covers this much of the future
            (at most a day).
        scale_down_delay_minutes: How long a planned scale-down is held back.
        prewarm_minutes: Extra lead before a rise of the median forecast, on top of
            ``startup_seconds``: pods for the median's need start this much earlier.
        max_surge_per_step: Most pods added in one schedule step.
        risk: Accepted probability of running short (0.1 -> plan on the 0.9 quantile).
        mode: ``shadow``: schedules are published and scored but the API serves the reactive
            floor; ``active``: the API serves the schedule. With ``gate.auto`` on this is the
            starting mode, which the go-live gate then moves (:mod:`core.gate`). The deprecated
            ``dry_run: true``/``false`` is read as ``shadow``/``active``.
        hpa: The service's own HPA (:class:`HpaSettings`), the reactive lower bound.
    """

    @property
    def pod_startup_seconds(self) -> int:
        """Seconds a new pod takes to serve: ``hpa.pod_startup_seconds`` or ``startup_seconds``."""
        if self.hpa.pod_startup_seconds is not None:
            return self.hpa.pod_startup_seconds
        return self.startup_seconds

    model_config = ConfigDict(extra="forbid", frozen=True)

    capacity_per_replica: float = Field(default=50.0, gt=0)
    target_utilization: float = Field(default=0.7, gt=0, le=1)
    min_replicas: int = Field(default=2, ge=1)
    max_replicas: int = Field(default=100, ge=1)
    startup_seconds: int = Field(default=120, ge=0, le=86_400)
    scale_down_delay_minutes: int = Field(default=15, ge=0)
    prewarm_minutes: int = Field(default=15, ge=0, le=1440)
    max_surge_per_step: int = Field(default=10, ge=1)
    risk: float = Field(default=0.1, gt=0, lt=1)
    mode: Mode = DEFAULT_MODE
    hpa: HpaSettings = Field(default_factory=HpaSettings)

    @model_validator(mode="before")
    @classmethod
    def _dry_run_alias(cls, data: Any) -> Any:
        return migrate_dry_run(data)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> ServiceConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        return self


def _mapping(params: dict[str, Any], name: str, params_file: Path) -> dict[str, Any]:
    value = params.get(name) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{params_file}: '{name}' must be a mapping, got {type(value).__name__}")  # noqa: TRY004 (contract: ValueError)
    return value


def _merge(defaults: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``defaults``; sub-blocks (``hpa``, ``hpa.scale_down``) field by field."""
    merged = {**defaults, **override}
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(override.get(key), dict):
            merged[key] = _merge(value, override[key])
    return merged


def _build(params_file: Path, name: str, defaults: dict[str, Any], override: Any) -> ServiceConfig:
    if override is None:
        override = {}
    if not isinstance(override, dict):
        raise ValueError(f"{params_file}: services.{name} must be a mapping of settings")  # noqa: TRY004
    defaults = migrate_dry_run(defaults, f"{params_file}: {DEFAULTS_SECTION}")
    override = migrate_dry_run(override, f"{params_file}: {SERVICES_SECTION}.{name}")
    merged = _merge(defaults, override)
    try:
        return ServiceConfig(**merged)
    except ValidationError as error:
        problems = describe_validation_error(error, root="settings", found=False)
        raise ValueError(
            f"{params_file}: invalid settings for service {name!r}: {problems}"
        ) from error


def check_service_sections(
    params_file: Path, defaults: dict[str, Any], services: dict[str, Any]
) -> None:
    """Validate ``service_defaults`` and every entry of ``services`` (called when parsing).

    Args:
        params_file: Path of ``params.yaml`` (for messages).
        defaults: The ``service_defaults`` mapping.
        services: The ``services`` mapping.

    Raises:
        ValueError: If a service's settings are invalid (names the service and the field).
    """
    _build(params_file, DEFAULTS_SECTION, defaults, {})
    for name, override in services.items():
        _build(params_file, str(name), defaults, override)


def load_service_configs(params_file: Path) -> dict[str, ServiceConfig]:
    """Settings of every service named under ``services`` in the parameters file.

    Args:
        params_file: Path of ``params.yaml``.

    Returns:
        Service name -> its merged settings (defaults overridden by the service's own entry).

    Raises:
        ValueError: If the file is missing, a section is not a mapping, or a service's settings
            are invalid (the message names the service and the field).
    """
    params = load_params(Path(params_file))
    defaults = _mapping(params, DEFAULTS_SECTION, params_file)
    services = _mapping(params, SERVICES_SECTION, params_file)
    _build(params_file, DEFAULTS_SECTION, defaults, {})
    return {
        str(name): _build(params_file, str(name), defaults, override)
        for name, override in services.items()
    }


def default_service_config(params_file: Path) -> ServiceConfig:
    """The settings a service not named under ``services`` gets (``service_defaults`` alone).

    Args:
        params_file: Path of ``params.yaml``.

    Returns:
        The default settings.

    Raises:
        ValueError: If the file is missing or ``service_defaults`` is invalid.
    """
    params = load_params(Path(params_file))
    return _build(
        params_file, DEFAULTS_SECTION, _mapping(params, DEFAULTS_SECTION, params_file), {}
    )


def service_config(params_file: Path, name: str) -> ServiceConfig:
    """Settings of one service: its own entry merged over ``service_defaults``.

    Args:
        params_file: Path of ``params.yaml``.
        name: Service name; a service without its own entry gets the defaults.

    Returns:
        The merged settings.

    Raises:
        ValueError: If the file or the service's settings are invalid.
    """
    configs = load_service_configs(params_file)
    return configs[name] if name in configs else default_service_config(params_file)
