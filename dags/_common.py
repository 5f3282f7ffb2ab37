"""Wiring shared by the Forescale DAGs: default arguments, the drift asset, the run's interval.

Kept tiny on purpose: DAG files only wire tasks; every task body is one call into ``pipelines``.
Nothing here reads settings or touches the disk at import time.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import pendulum
from airflow.sdk import Asset

OWNER = "forescale"
START_DATE = pendulum.datetime(2024, 1, 1, tz="UTC")

# Loggers whose INFO lines belong in task logs: ours and Airflow's own task lines.
TASK_LOG_NAMESPACES = frozenset(
    {"pipelines", "models", "core", "features", "serving", "dags", "airflow", "task"}
)


class _OwnInfoOnly(logging.Filter):
    """Pass warnings and errors of every logger, INFO lines only of :data:`TASK_LOG_NAMESPACES`."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether the record goes into the task log."""
        return (
            record.levelno >= logging.WARNING or record.name.split(".", 1)[0] in TASK_LOG_NAMESPACES
        )


def quiet_library_logs(context: Any = None) -> None:
    """Keep the libraries' INFO chatter (Feast, Great Expectations, ...) out of task logs.

    Runs before every task (``pre_execute`` in :data:`DEFAULT_ARGS`): Airflow's task logs are at
    INFO so the pipeline's own progress lines show, and this filter drops the INFO lines of
    other libraries.

    Args:
        context: The task's context (unused).
    """
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
            handler.addFilter(_OwnInfoOnly())


DEFAULT_ARGS: dict[str, Any] = {
    "owner": OWNER,
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "pre_execute": quiet_library_logs,
}

# Emitted by drift_monitor when a service drifts; forecast_retrain is scheduled on it.
# extra: {"services": [...], "report": "<html path>", "result": "<json path>", "reason": "..."}
DRIFT_ASSET = Asset(name="forescale_drift", uri="forescale://drift")


def run_interval(
    data_interval_start: datetime | None,
    data_interval_end: datetime | None,
    run_after: datetime | None,
    minutes: int,
) -> tuple[datetime, datetime]:
    """The data interval a task works on, also for a manual run that has none.

    Scheduled runs use their data interval, so a rerun works on exactly the same rows. A manual
    run without a logical date gets the last whole ``minutes`` interval before it was triggered.

    Args:
        data_interval_start: The run's ``data_interval_start`` (may be ``None``).
        data_interval_end: The run's ``data_interval_end`` (may be ``None``).
        run_after: The run's ``run_after`` (used when there is no interval).
        minutes: Interval length of the DAG's schedule.

    Returns:
        ``(start, end)`` as UTC datetimes, ``start < end``.

    Raises:
        ValueError: If there is neither an interval nor a ``run_after``.
    """
    if (
        data_interval_start is not None
        and data_interval_end is not None
        and (data_interval_start < data_interval_end)
    ):
        return data_interval_start, data_interval_end
    anchor = data_interval_end or run_after
    if anchor is None:
        raise ValueError("the run has neither a data interval nor a run_after time")
    anchor = pendulum.instance(anchor).in_timezone("UTC")
    end = anchor.replace(second=0, microsecond=0).subtract(minutes=anchor.minute % minutes)
    return end.subtract(minutes=minutes), end


def current_interval(minutes: int) -> tuple[datetime, datetime]:
    """:func:`run_interval` of the task instance that is running (call it inside a task).

    Args:
        minutes: Interval length of the DAG's schedule.

    Returns:
        ``(start, end)`` as UTC datetimes.
    """
    from airflow.sdk import get_current_context

    context = get_current_context()
    return run_interval(
        context.get("data_interval_start"),
        context.get("data_interval_end"),
        context["dag_run"].run_after,
        minutes,
    )


def forescale_settings() -> Any:
    """``core.settings.get_settings()``, read when a task runs (never at DAG parse time)."""
    from core.settings import get_settings

    return get_settings()
