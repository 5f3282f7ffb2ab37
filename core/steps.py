"""Step aggregation: fine telemetry (e.g. one row a minute) to the forecast step.

A forecast step's value is what ``training.target`` says (:data:`core.params.FORECAST_TARGETS`):
``mean``, the step's mean request rate, or ``peak``, its busiest row. Steps are labelled by their
start (``ts`` floored to the step). Every stage that aggregates the target to steps (the
schedule's recent history, the drift monitor's actuals, the replay benchmark) calls
:func:`aggregate_steps`.
"""

from __future__ import annotations

import pandas as pd

from core.params import FORECAST_TARGETS
from core.schema import SERVICE, TARGET, TS, require_columns


def aggregate_steps(
    telemetry: pd.DataFrame,
    step: pd.Timedelta | str,
    target: str,
    column: str = TARGET,
    min_rows: int = 1,
) -> pd.DataFrame:
    """Aggregate one metric of long-format telemetry to the forecast step.

    Args:
        telemetry: ``service``, ``ts`` (UTC) and ``column``.
        step: The step, e.g. ``"5min"``.
        target: ``training.target``: ``mean`` or ``peak``.
        column: The metric to aggregate.
        min_rows: Fewest rows a step needs to be kept (e.g. 5 for complete 5-minute steps of
            one-minute telemetry).

    Returns:
        ``service, ts, column``: one row per service and step that has a value, sorted.

    Raises:
        ValueError: If ``target`` is unknown or a column is missing.
    """
    if target not in FORECAST_TARGETS:
        raise ValueError(
            f"forecast target must be one of {sorted(FORECAST_TARGETS)}, got {target!r}"
        )
    require_columns(telemetry, (SERVICE, TS, column), "telemetry")
    frame = telemetry[[SERVICE, TS, column]].dropna(subset=[column])
    floored = pd.to_datetime(frame[TS], utc=True).dt.floor(pd.Timedelta(step))
    grouped = frame.assign(**{TS: floored}).groupby([SERVICE, TS], sort=True)[column]
    values = grouped.agg(FORECAST_TARGETS[target])
    if min_rows > 1:
        values = values[grouped.count() >= min_rows]
    return values.reset_index()
