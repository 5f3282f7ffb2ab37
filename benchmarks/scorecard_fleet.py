"""`forescale bench scorecard`: how long one daily scorecard takes for a fleet in steady state.

Steady state: every service had a schedule published every 5 minutes over the scored day (the
``schedule_publish`` interval), so the scorecard replays published schedules only and walks
nothing forward. The home must hold telemetry and features already (``forescale telemetry
generate`` then ``forescale features apply`` and ``features update``).

:func:`publish_day` fills the schedule store through the product's own publish path
(:func:`serving.client.publish_schedules_to_store`, one transaction per 5-minute round for the
whole fleet, each round checked against its own publication instant). Each round's schedules are
24 h of 5-minute steps (``schedule.horizon_hours``) valid for ``schedule.validity_hours``, their
replicas planned by :func:`core.policy.plan_replicas` on the stored step values as ``p50`` and
1.2 times them as ``p90``: the scorecard's cost does not depend on how good the forecast is.
Explanations are not published (the scorecard does not read them).

:func:`time_scorecard` then times :func:`pipelines.scorecard.run_scorecard` for that one day,
with its MLflow run as the daily DAG logs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd

from core.params import section
from core.schema import SERVICE, TARGET, TS
from core.service_config import service_config
from core.settings import Settings

STEP = pd.Timedelta(minutes=5)
P90_FACTOR = 1.2


def publish_day(
    settings: Settings,
    day: date,
    services: list[str],
    progress: Callable[[str], None] = lambda _: None,
) -> int:
    """Publish a schedule for every service every 5 minutes of ``day`` (UTC).

    Args:
        settings: Runtime settings (a home with features of ``services`` over the day and the
            next one).
        day: The day.
        services: The services.
        progress: Called with a line now and then.

    Returns:
        Schedules published.

    Raises:
        ValueError: If the day already has schedules, or a service has no step values there.
    """
    from core.policy import plan_replicas
    from pipelines.features import model_inputs
    from pipelines.publish import schedule_steps
    from serving.client import publish_schedules_to_store
    from serving.schemas import SchedulePublish
    from serving.store import ScheduleStore

    start = pd.Timestamp(day, tz="UTC")
    end = start + pd.Timedelta(days=1)
    store = ScheduleStore(settings.schedule_db)
    try:
        if any(store.schedules_in_force(s, start, end) for s in services):
            raise ValueError(f"schedules are already published on {day} in {settings.home}")
    finally:
        store.dispose()
    schedule = section(settings.params_file, "schedule")
    horizon = pd.Timedelta(hours=float(schedule.get("horizon_hours", 24)))
    validity = pd.Timedelta(hours=float(schedule.get("validity_hours", 2)))
    steps = model_inputs(settings, services, start.to_pydatetime(), (end + horizon).to_pydatetime())
    grid = pd.date_range(start, end + horizon, freq=STEP, inclusive="left")
    plans: dict[str, pd.DataFrame] = {}
    for service in services:
        own = steps[steps[SERVICE] == service].set_index(TS)[TARGET]
        if own.empty:
            raise ValueError(f"{service}: no step values from {start} on in {settings.home}")
        values = own.reindex(grid).ffill().bfill().to_numpy(dtype=float)
        forecast = pd.DataFrame(
            {SERVICE: service, TS: grid, "p50": values, "p90": values * P90_FACTOR}
        )
        plans[service] = plan_replicas(forecast, service_config(settings.params_file, service))
    per_round = int(horizon / STEP)
    published = 0
    for index, instant in enumerate(pd.date_range(start, end, freq=STEP, inclusive="left")):
        bodies = {}
        for service, plan in plans.items():
            rows = plan.iloc[index : index + per_round]
            bodies[service] = SchedulePublish(
                model_version="bench/1",
                generated_at=instant.to_pydatetime(),
                valid_until=(instant + validity).to_pydatetime(),
                step_seconds=int(STEP.total_seconds()),
                steps=schedule_steps(rows),
            )
        publish_schedules_to_store(settings, bodies, now=instant.to_pydatetime())
        published += len(bodies)
        if index % 48 == 47:
            progress(f"published {published} schedules (to {instant + STEP:%H:%M})")
    return published


def time_scorecard(settings: Settings, day: date, log_to_mlflow: bool = True) -> dict[str, Any]:
    """Time the scorecard of ``day`` for every stored service.

    Args:
        settings: Runtime settings.
        day: The scored day (UTC).
        log_to_mlflow: Log the scorecard's MLflow run, as the daily DAG does.

    Returns:
        ``services``, ``seconds`` (the call), ``seconds_per_service``, ``scorecard_seconds``
        (the scorecard's own figure, before storing and MLflow), ``published_share`` (mean of
        the services') and ``path``.
    """
    import json

    from pipelines.scorecard import run_scorecard

    as_of = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
    began = time.perf_counter()
    path = run_scorecard(settings, days=1, as_of=as_of, log_to_mlflow=log_to_mlflow)
    seconds = time.perf_counter() - began
    document = json.loads(path.read_text())
    rows = document["summary"]
    shares = [r["published_share"] for r in rows if r["published_share"] is not None]
    return {
        "day": day.isoformat(),
        "services": len(rows),
        "scored_services": sum(1 for r in rows if r["scored_days"]),
        "seconds": round(seconds, 1),
        "seconds_per_service": round(seconds / max(len(rows), 1), 3),
        "scorecard_seconds": document["seconds"],
        "published_share": round(sum(shares) / len(shares), 4) if shares else None,
        "path": str(path),
    }
