"""The shadow scorecard: every service's stored telemetry replayed against its own autoscaler.

For each service and each of the last ``days`` complete UTC days before ``as_of``, the service's
own load per minute (the stored telemetry, :func:`pipelines.telemetry.read_telemetry`) is
replayed on the cluster simulator (:mod:`core.simulation`) under four policies:

* ``hpa``: the service's own HPA as it runs today (``hpa`` settings: target, bounds, tolerance,
  behaviour, pod start-up time);
* ``forescale``: what Forescale served. From the first schedule published for the service on,
  the schedule in force at each minute (the newest one published by then), read through
  :mod:`core.serving_rule`, the API's rule: the largest planned count over the next
  ``startup_seconds``, the fallback ``max(no floor, min_replicas)`` when the schedule is stale
  or does not cover the minute. A service's ``dry_run`` does not apply: the scorecard scores the
  schedule, which is what shadow mode is for. Before the first publication the shipped profile
  is walked forward (:mod:`pipelines.walk_forward`: the training stage's decision on the
  history before the period, a forecast every 5 minutes from the same feature reader as
  publication). Either way KEDA runs the larger of the served value and the ``cpu`` trigger at
  the HPA's target, with the shipped ScaledObject's ``behavior``
  (:func:`core.simulation.keda_behavior`), within ``min_replicas``/``max_replicas``;
* ``last_week``: the pods the load of a week earlier needed at the HPA's target (the most over
  the next start-up time), through the same KEDA ``cpu`` trigger;
* ``static_peak``: the period's peak load at 100 % utilisation, all the time.

Capacity per replica is the service's ``capacity_per_replica`` (load one pod serves at 100 %, in
the unit of the forecast target). Pods start serving ``hpa.pod_startup_seconds`` after they are
requested (the service's ``startup_seconds`` when unset). Surges are found on the whole period
and counted on the day of their onset. A day the service had less history before it than
training needs (:func:`pipelines.training.history_shortfall`) is ``not_enough_history`` and
carries no figures.

The cards are written as JSON under ``artifacts/scorecards/<as_of>/`` with the per-minute
replays, stored for the API (:func:`store_scorecards`) and logged to MLflow with one plot per
service (:func:`log_scorecard`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.schema import (
    SERVICE,
    TARGET,
    TS,
    by_service,
    path_under,
    utc_timestamp,
    validate_service_name,
)
from core.scorecard import (
    FORESCALE,
    HPA,
    LAST_WEEK,
    POLICIES,
    STATIC_PEAK,
    PolicyFigures,
    ScorecardDay,
)
from core.service_config import ServiceConfig, service_config
from core.serving_rule import clamp_replicas, fallback_replicas, planned_max_at
from core.settings import Settings
from core.simulation import (
    ReplayResult,
    direct_controller,
    hpa_behavior,
    hpa_controller,
    keda_behavior,
    keda_controller,
    simulate,
    surge_onsets,
    window_figures,
)

if TYPE_CHECKING:
    from serving.store import ScheduleStore

Progress = Callable[[str], None]
DAY_MINUTES = 24 * 60
WEEK_MINUTES = 7 * DAY_MINUTES
EXPERIMENT = "forescale-scorecard"
RUN_FOLDER_FORMAT = "%Y%m%dT%H%M"
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


@dataclass
class ServiceReplay:
    """One service's replayed period (what the plot and the timeline show).

    Attributes:
        service: The service.
        start: First replayed minute (UTC).
        load: Load per minute.
        capacity: Load one ready pod serves.
        runs: Policy -> its replay.
        served: What Forescale's ``metrics-api`` trigger read per minute.
        published: Per minute, whether a published schedule was in force (else walked forward).
    """

    service: str
    start: pd.Timestamp
    load: np.ndarray
    capacity: float
    runs: dict[str, ReplayResult]
    served: np.ndarray
    published: np.ndarray


# --------------------------------------------------------------------------------------------
# Inputs


def scored_days(as_of: pd.Timestamp, days: int) -> list[date]:
    """The ``days`` complete UTC days before ``as_of``, oldest first.

    Raises:
        ValueError: If ``days`` is below 1.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    last = utc_timestamp(as_of).floor("D") - pd.Timedelta(days=1)
    return [(last - pd.Timedelta(days=back)).date() for back in range(days - 1, -1, -1)]


def minute_load(telemetry: pd.DataFrame, start: pd.Timestamp, minutes: int) -> np.ndarray:
    """One service's load per minute over ``[start, start + minutes)``.

    Rows are floored to the minute and averaged; a coarser series holds each value over its
    step, gaps are interpolated linearly, negative values clipped to 0 (the replay benchmark's
    reading of a trace).

    Args:
        telemetry: ``ts`` and ``requests`` of one service.
        start: First minute.
        minutes: Minutes wanted.

    Returns:
        Load per minute (NaN everywhere when the service has no telemetry there).
    """
    grid = pd.date_range(start, periods=minutes, freq="min")
    rows = telemetry.dropna(subset=[TARGET])
    if rows.empty:
        return np.full(minutes, np.nan)
    stamps = pd.to_datetime(rows[TS], utc=True).dt.floor("min")
    series = pd.Series(rows[TARGET].to_numpy(dtype=float), index=pd.DatetimeIndex(stamps))
    series = series.groupby(level=0).mean().sort_index()
    full = pd.date_range(min(series.index[0], grid[0]), max(series.index[-1], grid[-1]), freq="min")
    steps = series.index.to_series().diff().dropna()
    step = steps.mode().iloc[0] if len(steps) else pd.Timedelta(minutes=1)
    per_minute = series.reindex(full)
    if step > pd.Timedelta(minutes=1):
        per_minute = per_minute.ffill(limit=int(step / pd.Timedelta(minutes=1)) - 1)
    per_minute = per_minute.interpolate(limit_direction="both").clip(lower=0.0)
    return per_minute.reindex(grid).to_numpy(dtype=float)


def published_schedules(
    settings: Settings,
    service: str,
    start: pd.Timestamp,
    end: pd.Timestamp,
    store: ScheduleStore | None = None,
) -> list[Any]:
    """The schedules published for a service that were in force in ``[start, end)``, oldest
    first: every version published before ``end`` back to the newest one published by ``start``
    (:meth:`serving.store.ScheduleStore.schedules_in_force`, one read for the whole period).

    A schedule is in force from its publication (``generated_at``) until the next one.

    Args:
        settings: Runtime settings.
        service: The service.
        start: Period start.
        end: Period end.
        store: An open :class:`serving.store.ScheduleStore` to read (default: the settings'
            schedule store, opened and closed for this read).

    Returns:
        The schedules (:class:`serving.schemas.Schedule`).
    """
    from serving.store import ScheduleStore

    own = store is None
    reader = ScheduleStore(settings.schedule_db) if own else store
    try:
        return reader.schedules_in_force(
            service, utc_timestamp(start).to_pydatetime(), utc_timestamp(end).to_pydatetime()
        )
    finally:
        if own:
            reader.dispose()


def _us(stamps: Any) -> np.ndarray:
    """Microseconds since the epoch of UTC timestamps."""
    index = pd.DatetimeIndex(pd.to_datetime(stamps, utc=True))
    return np.asarray((index - _EPOCH) // pd.Timedelta(microseconds=1), dtype=np.int64)


def schedule_served(
    schedules: Sequence[Any], start: pd.Timestamp, minutes: int, config: ServiceConfig
) -> np.ndarray:
    """What the API's rule served at every minute from the published schedules.

    Args:
        schedules: :func:`published_schedules`, oldest first.
        start: First minute.
        minutes: Minutes of the period.
        config: The service's settings (``startup_seconds``, bounds).

    Returns:
        Replicas per minute; -1 before the first publication.
    """
    served = np.full(minutes, -1, dtype=np.int64)
    instants = _us(pd.date_range(start, periods=minutes, freq="min"))
    lead_us = int(config.startup_seconds * 1_000_000)
    fallback = fallback_replicas(None, config.min_replicas, config.max_replicas)
    published = [int(_us([s.generated_at])[0]) for s in schedules]
    for index, schedule in enumerate(schedules):
        until = published[index + 1] if index + 1 < len(schedules) else None
        mask = instants >= published[index]
        if until is not None:
            mask &= instants < until
        if not mask.any():
            continue
        steps = sorted(schedule.steps, key=lambda step: step.ts)
        planned = planned_max_at(
            _us([step.ts for step in steps]),
            np.array([step.replicas for step in steps], dtype=np.int64),
            int(schedule.step_seconds * 1_000_000),
            instants[mask],
            lead_us,
        )
        stale = instants[mask] > int(_us([schedule.valid_until])[0])
        planned = np.where((planned < 0) | stale, fallback, planned)
        served[mask] = [
            clamp_replicas(v, config.min_replicas, config.max_replicas) for v in planned
        ]
    return served


def schedule_forecasts(schedules: Sequence[Any]) -> pd.DataFrame:
    """``issued, ts, p50, p90`` of the forecasts behind published schedules."""
    rows = [
        (utc_timestamp(s.generated_at), step.ts, step.forecast_p50, step.forecast_p90)
        for s in schedules
        for step in s.steps
        if step.forecast_p50 is not None and step.forecast_p90 is not None
    ]
    frame = pd.DataFrame(rows, columns=["issued", TS, "p50", "p90"])
    frame[TS] = pd.to_datetime(frame[TS], utc=True)
    return frame


def coverage(forecasts: pd.DataFrame, actuals: pd.DataFrame) -> pd.DataFrame:
    """Per step, the newest forecast issued by the step's start, beside the actual value.

    Args:
        forecasts: ``issued, ts, p50, p90``.
        actuals: ``ts`` and ``requests`` of one service (forecast steps).

    Returns:
        ``ts, requests, p50, p90`` of the steps that had a forecast.
    """
    if forecasts.empty or actuals.empty:
        return pd.DataFrame(columns=[TS, TARGET, "p50", "p90"])
    known = forecasts[pd.to_datetime(forecasts["issued"], utc=True) <= forecasts[TS]]
    newest = known.sort_values(["issued"], kind="stable").drop_duplicates(TS, keep="last")
    actual = actuals[[TS, TARGET]].assign(**{TS: pd.to_datetime(actuals[TS], utc=True)})
    return actual.merge(newest[[TS, "p50", "p90"]], on=TS, how="inner")


def last_week_need(
    load: np.ndarray,
    week_before: np.ndarray,
    capacity: float,
    target: float,
    delay: float,
    bounds: tuple[int, int],
) -> np.ndarray:
    """Pods the load of a week earlier needed at ``target``, the most over the next start-up
    time (the ``last_week`` trigger); ``bounds[0]`` where nothing is known a week earlier."""
    need = np.ceil(np.nan_to_num(week_before, nan=0.0) / (capacity * target) - 1e-9)
    ahead = math.ceil(delay)
    padded = np.r_[need, np.full(ahead, need[-1] if len(need) else 0.0)]
    forward = pd.Series(padded[::-1]).rolling(ahead + 1, min_periods=1).max().to_numpy()[::-1]
    return forward[: len(load)].clip(bounds[0], bounds[1]).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Replay


def replay_service(
    service: str,
    load: np.ndarray,
    week_before: np.ndarray,
    start: pd.Timestamp,
    config: ServiceConfig,
    served: np.ndarray,
    published: np.ndarray,
    behavior: Any = None,
) -> ServiceReplay:
    """Replay one service's period under its HPA, Forescale and the baselines.

    Args:
        service: The service.
        load: Load per minute of the period (no NaN).
        week_before: Load per minute a week earlier (NaN where unknown).
        start: First minute.
        config: Its settings.
        served: What Forescale's ``metrics-api`` trigger read per minute.
        published: Per minute, whether that came from a published schedule.
        behavior: KEDA's ``behavior`` (default: the shipped ScaledObject's).

    Returns:
        The replays.
    """
    hpa = config.hpa
    cap = config.capacity_per_replica
    delay = config.pod_startup_seconds / 60.0
    keda = behavior if behavior is not None else keda_behavior()
    hpa_bounds = (hpa.min_replicas, hpa.max_replicas)

    def clamp(value: float, bounds: tuple[int, int]) -> int:
        return max(bounds[0], min(bounds[1], int(value)))

    start_hpa = clamp(math.ceil(load[0] / (cap * hpa.target_utilization) - 1e-9), hpa_bounds)
    runs = {
        HPA: simulate(
            load,
            cap,
            delay,
            start_hpa,
            hpa_controller(
                load,
                cap,
                hpa.target_utilization,
                min_replicas=hpa.min_replicas,
                max_replicas=hpa.max_replicas,
                behavior=hpa_behavior(hpa),
                tolerance=hpa.tolerance,
            ),
        )
    }
    ours = (config.min_replicas, config.max_replicas)
    first = max(int(served[0]), math.ceil(load[0] / (cap * hpa.target_utilization) - 1e-9))
    runs[FORESCALE] = simulate(
        load,
        cap,
        delay,
        clamp(first, ours),
        keda_controller(
            served,
            load,
            cap,
            hpa.target_utilization,
            keda,
            min_replicas=config.min_replicas,
            max_replicas=config.max_replicas,
        ),
    )
    week = last_week_need(load, week_before, cap, hpa.target_utilization, delay, hpa_bounds)
    runs[LAST_WEEK] = simulate(
        load,
        cap,
        delay,
        clamp(max(start_hpa, int(week[0])), hpa_bounds),
        keda_controller(
            week,
            load,
            cap,
            hpa.target_utilization,
            keda,
            min_replicas=hpa.min_replicas,
            max_replicas=hpa.max_replicas,
        ),
    )
    peak = clamp(math.ceil(float(np.max(load)) / cap - 1e-9), ours)
    runs[STATIC_PEAK] = simulate(
        load, cap, delay, peak, direct_controller(np.full(len(load), peak, dtype=np.int64))
    )
    return ServiceReplay(service, start, load, cap, runs, served, published)


def day_cards(
    replay: ServiceReplay,
    days: Sequence[date],
    history_steps: Mapping[date, int],
    needed_steps: int,
    steps_per_day: int,
    shortfall: Mapping[date, str],
    covered: pd.DataFrame,
    generated_at: datetime,
) -> list[ScorecardDay]:
    """The scorecard days of one replayed service.

    Args:
        replay: The service's replay (``None`` figures for cold days are not computed).
        days: The days, oldest first (the replay starts at the first one's midnight).
        history_steps: Day -> distinct forecast steps of history the service had before it.
        needed_steps: Steps training needs (``TrainingConfig.min_history_steps``).
        steps_per_day: Forecast steps a day.
        shortfall: Day -> the cold-start reason, for days without enough history.
        covered: :func:`coverage` rows of Forescale's forecasts.
        generated_at: When the scorecard is written.

    Returns:
        One card per day.
    """
    onsets = surge_onsets(replay.load)
    cards = []
    for index, day in enumerate(days):
        common = {
            "service": replay.service,
            "day": day,
            "generated_at": generated_at,
            "history_days": round(history_steps.get(day, 0) / steps_per_day, 3),
            "needed_days": round(needed_steps / steps_per_day, 3),
        }
        if day in shortfall:
            cards.append(ScorecardDay(**common, status="not_enough_history", reason=shortfall[day]))
            continue
        first, stop = index * DAY_MINUTES, (index + 1) * DAY_MINUTES
        policies: dict[str, PolicyFigures] = {}
        for name in POLICIES:
            figures = window_figures(
                replay.runs[name], replay.load, replay.capacity, onsets, first, stop
            )
            extra: dict[str, Any] = {}
            if name == FORESCALE:
                day_start = replay.start + pd.Timedelta(days=index)
                rows = covered[
                    (covered[TS] >= day_start) & (covered[TS] < day_start + pd.Timedelta(days=1))
                ]
                if len(rows):
                    extra["p50_coverage"] = float(np.mean(rows[TARGET] <= rows["p50"]))
                    extra["p90_coverage"] = float(np.mean(rows[TARGET] <= rows["p90"]))
                extra["source"] = float(np.mean(replay.published[first:stop]))
            lead = figures["median_lead_minutes"]
            policies[name] = PolicyFigures(
                short_minutes=figures["short_minutes"],
                pod_hours=figures["pod_hours"],
                scaling_actions=figures["scaling_actions"],
                median_lead_minutes=None if math.isnan(lead) else lead,
                surges=figures["surges"],
                **extra,
            )
        cards.append(ScorecardDay(**common, status="scored", policies=policies))
    return cards


# --------------------------------------------------------------------------------------------
# The stage


def score_services(
    settings: Settings,
    services: Sequence[str],
    days: Sequence[date],
    generated_at: datetime,
    progress: Progress = lambda _: None,
) -> tuple[list[ScorecardDay], dict[str, ServiceReplay]]:
    """Scorecard days of some services (one walk-forward shard).

    Args:
        settings: Runtime settings.
        services: The services (they share one clock, as a training shard does).
        days: The UTC days to score, consecutive, oldest first.
        generated_at: When the scorecard is written.
        progress: Called with a line per step.

    Returns:
        The cards, and the replays of the services that had figures.
    """
    from core.params import section
    from pipelines.publish import HISTORY_DAYS_FOR_FORECAST, recent_history
    from pipelines.telemetry import read_telemetry
    from pipelines.training import TrainingConfig, history_shortfall
    from pipelines.walk_forward import FORECAST_STEP, rolling_forecasts, served_targets
    from serving.store import ScheduleStore

    if pd.Timedelta(minutes=settings.step_minutes) != FORECAST_STEP:
        raise ValueError(
            f"the scorecard walks the product forward in {FORECAST_STEP} steps; "
            f"settings.step_minutes is {settings.step_minutes}"
        )
    training = TrainingConfig.from_params(settings)
    schedule = section(settings.params_file, "schedule")
    tail_days = float(schedule.get("tail_days", 0) or 0)
    blend = bool(schedule.get("blend_with_persistence", False))
    start = pd.Timestamp(days[0], tz="UTC")
    end = pd.Timestamp(days[-1], tz="UTC") + pd.Timedelta(days=1)
    minutes = len(days) * DAY_MINUTES
    lookback = max(training.history_days, HISTORY_DAYS_FOR_FORECAST) + 1
    progress(f"reading features of {len(services)} service(s), {lookback} days before {start}")
    try:
        steps = recent_history(settings, list(services), end, days=len(days) + lookback)
    except ValueError:
        steps = pd.DataFrame(columns=[SERVICE, TS, TARGET])
    telemetry = read_telemetry(settings, services, start - pd.Timedelta(days=7), end)

    configs = {s: service_config(settings.params_file, s) for s in services}
    shortfall: dict[str, dict[date, str]] = {}
    history_steps: dict[str, dict[date, int]] = {}
    own_steps = by_service(steps)
    for service in services:
        own = own_steps.get(service, steps.iloc[0:0])
        shortfall[service], history_steps[service] = {}, {}
        for day in days:
            day_start = pd.Timestamp(day, tz="UTC")
            before = own[
                (own[TS] + FORECAST_STEP <= day_start)
                & (own[TS] >= day_start - pd.Timedelta(days=training.history_days))
            ]
            history_steps[service][day] = int(before[TS].nunique())
            reason = history_shortfall(before, training).get(service)
            if before.empty:
                reason = (
                    f"not enough history (0.0 of "
                    f"{training.min_history_steps / training.steps_per_day:.0f} days)"
                )
            if reason is not None:
                shortfall[service][day] = reason

    loads: dict[str, np.ndarray] = {}
    weeks: dict[str, np.ndarray] = {}
    schedules: dict[str, list[Any]] = {}
    store = ScheduleStore(settings.schedule_db)
    own_telemetry = by_service(telemetry)
    try:
        for service in services:
            own = own_telemetry.get(service, telemetry.iloc[0:0])
            load = minute_load(own, start, minutes)
            if len(shortfall[service]) == len(days) or np.isnan(load).all():
                continue
            loads[service] = np.nan_to_num(load, nan=0.0)
            week_start = start - pd.Timedelta(days=7)
            earlier = minute_load(own, week_start, minutes)
            known = pd.date_range(week_start, periods=minutes, freq="min") >= own[TS].min()
            weeks[service] = np.where(known, earlier, np.nan)
            schedules[service] = published_schedules(settings, service, start, end, store)
    finally:
        store.dispose()

    served: dict[str, np.ndarray] = {}
    for service in loads:
        served[service] = schedule_served(schedules[service], start, minutes, configs[service])
    # Before a service's first publication, the shipped profile walked forward serves it.
    spans = {s: int(np.sum(served[s] < 0)) for s in loads if (served[s] < 0).any()}
    walked = pd.DataFrame(columns=["offset", SERVICE, TS, "p50", "p90"])
    if spans:
        frames = {s: own_steps.get(s, steps.iloc[0:0]).reset_index(drop=True) for s in spans}
        progress(f"walking the shipped profile forward for {len(spans)} service(s)")
        walked = rolling_forecasts(frames, {s: start for s in spans}, spans, training, progress)
        own_walked = by_service(walked)
        for service, span in spans.items():
            own = own_walked.get(service, walked.iloc[0:0])
            served[service][:span] = served_targets(
                own, start, span, configs[service], tail_days, frames[service], blend
            )

    cards: list[ScorecardDay] = []
    replays: dict[str, ServiceReplay] = {}
    behavior = keda_behavior()
    for service in services:
        if service not in loads:
            cold = {
                day: shortfall[service].get(day) or f"no telemetry on {day} (not enough history)"
                for day in days
            }
            cards += [
                ScorecardDay(
                    service=service,
                    day=day,
                    generated_at=generated_at,
                    status="not_enough_history",
                    reason=cold[day],
                    history_days=round(history_steps[service][day] / training.steps_per_day, 3),
                    needed_days=round(training.min_history_steps / training.steps_per_day, 3),
                )
                for day in days
            ]
            continue
        progress(f"replaying {service}")
        published = np.zeros(minutes, dtype=bool)
        if schedules[service]:
            first = int(_us([schedules[service][0].generated_at])[0])
            instants = _us(pd.date_range(start, periods=minutes, freq="min"))
            published = instants >= first
        replay = replay_service(
            service,
            loads[service],
            weeks[service],
            start,
            configs[service],
            served[service],
            published,
            behavior,
        )
        replays[service] = replay
        own_walk = walked[walked[SERVICE] == service]
        forecasts = pd.concat(
            [
                pd.DataFrame(
                    {
                        "issued": start + pd.to_timedelta(own_walk["offset"].astype(int), "min"),
                        TS: pd.to_datetime(own_walk[TS], utc=True),
                        "p50": own_walk.get("p50", np.nan),
                        "p90": own_walk.get("p90", np.nan),
                    }
                ),
                schedule_forecasts(schedules[service]),
            ],
            ignore_index=True,
        ).dropna(subset=["p50", "p90"])
        actual = steps[(steps[SERVICE] == service) & (steps[TS] >= start) & (steps[TS] < end)]
        cards += day_cards(
            replay,
            days,
            history_steps[service],
            training.min_history_steps,
            training.steps_per_day,
            shortfall[service],
            coverage(forecasts, actual),
            generated_at,
        )
    return cards, replays


def store_scorecards(settings: Settings, cards: Sequence[ScorecardDay]) -> None:
    """Store the cards where ``GET /v1/services/{service}/scorecard`` and the gate read them.

    Args:
        settings: Runtime settings.
        cards: The cards.
    """
    from serving.store import ScheduleStore

    store = ScheduleStore(settings.schedule_db)
    try:
        store.save_scorecards(cards)
    finally:
        store.dispose()


def fleet_summary(cards: Sequence[ScorecardDay]) -> list[dict[str, Any]]:
    """Per service, the scored days' totals of the HPA and Forescale.

    Args:
        cards: Scorecard days.

    Returns:
        Per service (sorted): ``service``, ``scored_days``, ``days``, ``status`` (the newest
        day's, with its ``reason``), ``hpa_short_minutes``, ``forescale_short_minutes``,
        ``hpa_pod_hours``, ``forescale_pod_hours``, ``pod_hours_vs_hpa`` (Forescale's as a share
        of the HPA's), ``hpa_median_lead_minutes`` and ``forescale_median_lead_minutes`` (median
        of the days' medians) and ``published_share`` (of Forescale's minutes).
    """
    rows = []
    by_service: dict[str, list[ScorecardDay]] = {}
    for card in cards:
        by_service.setdefault(card.service, []).append(card)
    for service in sorted(by_service):
        own = sorted(by_service[service], key=lambda c: c.day)
        scored = [c for c in own if c.status == "scored"]
        row: dict[str, Any] = {
            "service": service,
            "days": len(own),
            "scored_days": len(scored),
            "status": own[-1].status,
            "reason": own[-1].reason,
        }
        for name in (HPA, FORESCALE):
            figures = [c.policies[name] for c in scored]
            leads = [f.median_lead_minutes for f in figures if f.median_lead_minutes is not None]
            row[f"{name}_short_minutes"] = sum(f.short_minutes for f in figures)
            row[f"{name}_pod_hours"] = round(sum(f.pod_hours for f in figures), 2)
            row[f"{name}_median_lead_minutes"] = float(np.median(leads)) if leads else None
        row["pod_hours_vs_hpa"] = (
            round(row["forescale_pod_hours"] / row["hpa_pod_hours"], 4)
            if row["hpa_pod_hours"]
            else None
        )
        sources = [c.policies[FORESCALE].source for c in scored]
        known = [s for s in sources if s is not None]
        row["published_share"] = round(float(np.mean(known)), 4) if known else None
        rows.append(row)
    return rows


def timeline(replays: Mapping[str, ServiceReplay]) -> pd.DataFrame:
    """The per-minute replays: ``service, ts, load, capacity, served, published`` and per policy
    ``<policy>_desired`` / ``<policy>_ready``."""
    parts = []
    for service, replay in replays.items():
        part = pd.DataFrame(
            {
                SERVICE: service,
                TS: pd.date_range(replay.start, periods=len(replay.load), freq="min"),
                "load": replay.load,
                "capacity": replay.capacity,
                "served": replay.served,
                "published": replay.published,
            }
        )
        for name, run in replay.runs.items():
            part[f"{name}_desired"] = run.desired
            part[f"{name}_ready"] = run.ready
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def plot_service(path: Path, replay: ServiceReplay) -> Path:
    """PNG of one service's period: load, HPA and Forescale ready replicas, short minutes shaded.

    Args:
        path: Where to write it.
        replay: The service's replay.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stamps = pd.date_range(replay.start, periods=len(replay.load), freq="min")
    fig, load_axis = plt.subplots(figsize=(14, 4.5))
    load_axis.plot(stamps, replay.load, color="black", linewidth=0.6, label="load")
    load_axis.set_ylabel("load")
    pods = load_axis.twinx()
    for name, color in ((HPA, "tab:orange"), (FORESCALE, "tab:blue")):
        run = replay.runs[name]
        pods.step(stamps, run.ready, where="post", color=color, linewidth=0.9, label=f"{name} pods")
        short = replay.load > run.ready * replay.capacity * (1 + 1e-12)
        pods.fill_between(
            stamps,
            0,
            1,
            where=short,
            transform=pods.get_xaxis_transform(),
            color=color,
            alpha=0.25,
            linewidth=0,
            label=f"{name} short ({int(short.sum())} min)",
        )
    pods.set_ylabel("ready replicas")
    handles = load_axis.get_legend_handles_labels()[0] + pods.get_legend_handles_labels()[0]
    labels = load_axis.get_legend_handles_labels()[1] + pods.get_legend_handles_labels()[1]
    load_axis.legend(handles, labels, loc="upper left", fontsize=8, ncol=3)
    load_axis.set_title(f"{replay.service}: shadow scorecard, load and ready pods")
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def log_scorecard(
    settings: Settings,
    document_path: Path,
    rows: Sequence[Mapping[str, Any]],
    plots: Sequence[Path],
) -> str:
    """One MLflow run for a scorecard: the fleet's totals as metrics, the JSON and the plots.

    Args:
        settings: Runtime settings.
        document_path: The scorecard JSON.
        rows: :func:`fleet_summary`.
        plots: One PNG per replayed service.

    Returns:
        The run id.
    """
    import mlflow

    from models.registry import configure_mlflow

    experiment = configure_mlflow(settings, EXPERIMENT)
    try:
        with mlflow.start_run(experiment_id=experiment, run_name=document_path.parent.name) as run:
            document = json.loads(document_path.read_text())
            mlflow.set_tags({"event": "scorecard", "as_of": document["as_of"]})
            mlflow.log_params({"days": document["days"], "services": len(rows)})
            metrics: dict[str, float] = {}
            for row in rows:
                for key in (
                    "hpa_short_minutes",
                    "forescale_short_minutes",
                    "hpa_pod_hours",
                    "forescale_pod_hours",
                ):
                    metrics[f"{row['service']}.{key}"] = float(row[key])
            if metrics:
                mlflow.log_metrics(metrics)
            mlflow.log_artifact(str(document_path), artifact_path="scorecard")
            for plot in plots:
                mlflow.log_artifact(str(plot), artifact_path="plots")
            return str(run.info.run_id)
    finally:
        configure_mlflow(settings)


def run_scorecard(
    settings: Settings,
    days: int = 7,
    as_of: datetime | None = None,
    services: Sequence[str] | None = None,
    progress: Progress = lambda _: None,
    now: datetime | None = None,
    log_to_mlflow: bool = True,
) -> Path:
    """Score every service (or some) on the last ``days`` complete UTC days before ``as_of``.

    Args:
        settings: Runtime settings.
        days: Days to score.
        as_of: The instant scored up to (default: the end of the stored telemetry).
        services: Services to score (default: every service with stored telemetry).
        progress: Called with a line per step.
        now: When the cards are written (default: the clock).
        log_to_mlflow: Log the run (metrics, JSON, plots) to MLflow.

    Returns:
        The scorecard JSON: ``as_of``, ``days``, ``generated_at``, ``seconds``, ``summary``
        (:func:`fleet_summary`), ``cards`` (every :class:`core.scorecard.ScorecardDay`), and
        ``mlflow_run_id``; beside it ``timeline.parquet`` and ``plots/<service>.png``.

    Raises:
        ValueError: If a service name is invalid, no telemetry is stored, or ``days`` < 1.
    """
    from pipelines.telemetry import list_services, resolve_as_of
    from pipelines.training import TrainingConfig

    started = time.perf_counter()
    origin = resolve_as_of(settings, as_of)
    scored = scored_days(origin, days)
    names = [validate_service_name(s) for s in services] if services else list_services(settings)
    if not names:
        raise ValueError(f"no telemetry stored under {settings.telemetry_dir}")
    generated_at = utc_timestamp(now or pd.Timestamp.now(tz="UTC")).to_pydatetime()
    shard_size = TrainingConfig.from_params(settings).shard_size
    cards: list[ScorecardDay] = []
    replays: dict[str, ServiceReplay] = {}
    for first in range(0, len(names), shard_size):
        shard = names[first : first + shard_size]
        shard_cards, shard_replays = score_services(settings, shard, scored, generated_at, progress)
        cards += shard_cards
        replays.update(shard_replays)
    out_dir = settings.artifacts_dir / "scorecards" / f"{origin:{RUN_FOLDER_FORMAT}}"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = fleet_summary(cards)
    plots = [
        plot_service(path_under(out_dir, "plots", f"{service}.png"), replay)
        for service, replay in replays.items()
    ]
    if replays:
        timeline(replays).to_parquet(out_dir / "timeline.parquet", index=False)
    document: dict[str, Any] = {
        "as_of": origin.isoformat(),
        "days": days,
        "generated_at": generated_at.isoformat(),
        "summary": rows,
        "cards": [card.model_dump(mode="json") for card in cards],
    }
    path = out_dir / "scorecard.json"
    document["seconds"] = round(time.perf_counter() - started, 1)
    path.write_text(json.dumps(document, indent=2))
    store_scorecards(settings, cards)
    if log_to_mlflow:
        document["mlflow_run_id"] = log_scorecard(settings, path, rows, plots)
        path.write_text(json.dumps(document, indent=2))
    progress(f"scorecard of {len(names)} service(s) in {document['seconds']} s: {path}")
    return path
