"""The replica count served for "now": schedule, live floor, fallback and shadow rules.

Rules, in order:

1. Shadow (the service's mode, :func:`served_mode`) or a dry-run schedule (its ``dry_run``):
   serve the reactive floor only, ``max(last known floor, min_replicas)``; the schedule stays
   readable (and is scored).
2. No schedule (a cold start says why: not enough history), a stale one (``now > valid_until``)
   or one that does not cover ``now``: fall back to ``max(last known floor, min_replicas)`` with
   ``stale: true``.
3. Otherwise the planned value is the largest replica count planned over
   ``[now, now + startup_seconds]`` (a pod started now is ready at the window's end), raised to the
   live floor when one is fresh (younger than :data:`FLOOR_MAX_AGE`).

The result is always clamped to ``[min_replicas, max_replicas]``: an autoscaler reading it never
scales to zero because of missing data. The rules themselves live in :mod:`core.serving_rule`
(the replay benchmark serves with the same code).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from core.gate import effective_mode
from core.service_config import SHADOW, Mode, ServiceConfig
from core.serving_rule import (
    clamp_replicas,
    fallback_replicas,
    is_stale,
    next_window_change,
    planned_max,
)
from serving.plans import ServicePlan, instant_of_microseconds, microseconds_since_epoch
from serving.schemas import Recommendation, RecommendationSource, Schedule, SchedulePublish
from serving.store import FloorReading, ModeChange

FLOOR_MAX_AGE = timedelta(minutes=10)
PARAMS_ORIGIN = "params.yaml"
GATE_ORIGIN = "gate"


@dataclass(frozen=True)
class ServedMode:
    """The mode a service is served in, and what set it.

    Attributes:
        mode: ``shadow`` or ``active``.
        set_by: ``params.yaml`` or ``gate``.
        why: For the gate, when and why it moved the service.
    """

    mode: Mode
    set_by: str = PARAMS_ORIGIN
    why: str = ""

    def describe(self) -> str:
        """E.g. ``"shadow mode (params.yaml)"``."""
        origin = self.set_by if not self.why else f"{self.set_by}: {self.why}"
        return f"{self.mode} mode ({origin})"


def served_mode(config: ServiceConfig, last_move: ModeChange | None, auto: bool) -> ServedMode:
    """The mode a service is served in (:func:`core.gate.effective_mode`).

    Args:
        config: Its settings (``mode`` from ``params.yaml``).
        last_move: The gate's last recorded move for it, or None.
        auto: ``gate.auto``.

    Returns:
        The mode and what set it.
    """
    recorded = last_move.to_mode if last_move is not None else None
    mode = effective_mode(config.mode, recorded, auto)  # type: ignore[arg-type]
    if auto and last_move is not None:
        return ServedMode(
            mode, GATE_ORIGIN, f"moved {last_move.ts.isoformat()}, {last_move.reason}"
        )
    return ServedMode(mode)


def planned_replicas(schedule: Schedule, start: datetime, end: datetime) -> int | None:
    """Largest replica count the schedule plans at any instant of ``[start, end]``.

    Step ``i`` is in force over ``[ts_i, ts_{i+1})``; the last step over
    ``[ts_last, ts_last + step_seconds)`` (:func:`core.serving_rule.planned_max`).

    Args:
        schedule: The schedule.
        start: Window start (aware).
        end: Window end (aware), not before ``start``.

    Returns:
        The maximum, or None if no step is in force anywhere in the window.
    """
    steps = [(step.ts, step.replicas) for step in schedule.steps]
    return planned_max(steps, schedule.step_seconds, start, end)


def floor_is_fresh(floor: FloorReading | None, now: datetime) -> bool:
    """Whether a live floor reading is recent enough to raise the planned value."""
    return floor is not None and now - floor.ts < FLOOR_MAX_AGE


def _clamp(value: int, config: ServiceConfig) -> int:
    return clamp_replicas(value, config.min_replicas, config.max_replicas)


def _schedule_fields(schedule: Schedule | None) -> dict[str, Any]:
    """The schedule's identity in a recommendation (all None without a schedule)."""
    if schedule is None:
        return {"valid_until": None, "schedule_version": None, "model_version": None}
    return {
        "valid_until": schedule.valid_until,
        "schedule_version": schedule.version,
        "model_version": schedule.model_version,
    }


def fallback_recommendation(
    service: str,
    config: ServiceConfig,
    now: datetime,
    reason: str,
    floor: FloorReading | None = None,
    schedule: Schedule | None = None,
    mode: Mode | None = None,
) -> Recommendation:
    """The safe value when no usable schedule exists: ``max(last known floor, min_replicas)``.

    Args:
        service: Service name.
        config: The service's settings.
        now: The instant the value is for.
        reason: Why the fallback is used; the floor used is appended.
        floor: Last known live floor, whatever its age.
        schedule: The unusable schedule, if any (its version is reported).
        mode: The service's mode (``config.mode`` when None).

    Returns:
        A ``fallback`` recommendation with ``stale: true``.
    """
    replicas = fallback_replicas(
        floor.replicas if floor is not None else None, config.min_replicas, config.max_replicas
    )
    floor_text = (
        f"last known live floor {floor.replicas} at {floor.ts.isoformat()}"
        if floor is not None
        else "no live floor recorded"
    )
    return Recommendation(
        service=service,
        replicas=replicas,
        source="fallback",
        mode=mode or config.mode,
        stale=True,
        ts=now,
        **_schedule_fields(schedule),
        reason=f"{reason}; serving max({floor_text}, min_replicas {config.min_replicas})",
    )


def recommend(
    service: str,
    schedule: Schedule | None,
    floor: FloorReading | None,
    config: ServiceConfig,
    now: datetime,
    mode: ServedMode | None = None,
    cold_start: str | None = None,
) -> Recommendation:
    """Replicas to run now for one service.

    Args:
        service: Service name.
        schedule: Its latest schedule, or None if it never had one.
        floor: Its latest live floor, or None.
        config: Its settings (``min_replicas``, ``max_replicas``, ``startup_seconds``,
            ``mode``).
        now: The current instant (aware).
        mode: The mode it is served in (:func:`served_mode`); ``config.mode`` when None.
        cold_start: Why training left it out (e.g. ``"not enough history (2.0 of 4 days)"``),
            or None.

    Returns:
        The recommendation; see the module docstring for the rules.
    """
    served = mode or ServedMode(config.mode)
    stale = schedule is None or is_stale(schedule.valid_until, now)
    cold = (
        f"cold start, {cold_start}: no schedule yet"
        if schedule is None and cold_start is not None
        else None
    )
    if served.mode == SHADOW or (schedule is not None and schedule.dry_run):
        shadow = served.mode == SHADOW
        why = (
            f"{served.describe()}: schedules are published and scored, not served"
            if shadow
            else "schedule is a dry run"
        )
        if cold is not None:
            why += f"; {cold}"
        floor_replicas = floor.replicas if floor is not None else 0
        return Recommendation(
            service=service,
            replicas=fallback_replicas(floor_replicas, config.min_replicas, config.max_replicas),
            source="shadow" if shadow else "dry_run",
            mode=served.mode,
            stale=stale,
            ts=now,
            **_schedule_fields(schedule),
            reason=(
                f"{why}; serving the reactive floor only, max(live floor {floor_replicas}, "
                f"min_replicas {config.min_replicas})"
            ),
        )
    if schedule is None:
        return fallback_recommendation(
            service, config, now, cold or "no schedule published", floor, mode=served.mode
        )
    if stale:
        return fallback_recommendation(
            service,
            config,
            now,
            f"schedule version {schedule.version} is stale (valid until "
            f"{schedule.valid_until.isoformat()})",
            floor,
            schedule,
            mode=served.mode,
        )
    lead = timedelta(seconds=config.startup_seconds)
    planned = planned_replicas(schedule, now, now + lead)
    if planned is None:
        return fallback_recommendation(
            service,
            config,
            now,
            f"schedule version {schedule.version} does not cover {now.isoformat()} "
            f"(steps {schedule.steps[0].ts.isoformat()} to {schedule.ends_at.isoformat()})",
            floor,
            schedule,
            mode=served.mode,
        )
    source: RecommendationSource = "schedule"
    reason = (
        f"max planned replicas over the next {config.startup_seconds} s start-up lead "
        f"(schedule version {schedule.version})"
    )
    value = planned
    if floor_is_fresh(floor, now) and floor is not None and floor.replicas > planned:
        value = floor.replicas
        source = "floor"
        reason = (
            f"live floor {floor.replicas} (at {floor.ts.isoformat()}) exceeds the planned "
            f"{planned} of schedule version {schedule.version}"
        )
    clamped = _clamp(value, config)
    if clamped != value:
        reason += f"; clamped to [{config.min_replicas}, {config.max_replicas}]"
    return Recommendation(
        service=service,
        replicas=clamped,
        source=source,
        mode=served.mode,
        stale=False,
        ts=now,
        **_schedule_fields(schedule),
        reason=reason,
    )


def recommendation_expires_at(
    result: Recommendation,
    plan: ServicePlan | None,
    floor: FloorReading | None,
    config: ServiceConfig,
    now: datetime,
) -> datetime | None:
    """The first instant at which :func:`recommend` may answer otherwise than ``result``.

    With the same schedule, live floor and settings, every instant before it gets the same
    recommendation (but for ``ts``): the schedule does not turn stale, no step enters or leaves
    the start-up window and the live floor does not age out before then.

    Args:
        result: What :func:`recommend` answered at ``now`` for these inputs.
        plan: The schedule it was given (as the plan view holds it), or None.
        floor: The live floor it was given, or None.
        config: The settings it was given.
        now: The instant it answered for.

    Returns:
        That instant; ``now`` when the answer names ``now`` itself (a schedule that does not
        cover it); None when it never changes with time alone.
    """
    if plan is None or is_stale(plan.valid_until, now):
        return None  # a missing or stale schedule stays so: fallback or dry run, not timed
    turns_stale = plan.valid_until + timedelta(microseconds=1)
    if result.source in ("shadow", "dry_run"):
        return turns_stale
    if result.source == "fallback":
        return now
    changes = [turns_stale]
    window_change = next_window_change(
        plan.starts,
        plan.step_seconds * 1_000_000,
        microseconds_since_epoch(now),
        config.startup_seconds * 1_000_000,
    )
    if window_change is not None:
        changes.append(instant_of_microseconds(window_change))
    if floor is not None and floor_is_fresh(floor, now):
        changes.append(floor.ts + FLOOR_MAX_AGE)
    return min(changes)


def publish_problems(schedule: SchedulePublish, now: datetime) -> list[tuple[tuple, str]]:
    """Reasons a schedule must not be published at ``now`` (beyond its own validation).

    A schedule whose last step starts before ``now``, or whose ``valid_until`` is already past,
    plans nothing useful and is refused.

    Args:
        schedule: The schedule to publish.
        now: The current instant (aware).

    Returns:
        ``(location, message)`` pairs (location as in a FastAPI error ``loc`` without ``body``);
        empty when the schedule is acceptable.
    """
    problems: list[tuple[tuple, str]] = []
    last = schedule.steps[-1]
    if last.ts < now:
        problems.append(
            (
                ("steps", len(schedule.steps) - 1, "ts"),
                (
                    f"schedule is in the past: its last step starts {last.ts.isoformat()}, "
                    f"before now ({now.isoformat()})"
                ),
            )
        )
    if schedule.valid_until <= now:
        problems.append(
            (
                ("valid_until",),
                (
                    f"valid_until {schedule.valid_until.isoformat()} is already past "
                    f"(now {now.isoformat()})"
                ),
            )
        )
    return problems
