"""History preparation and the lag / rolling / calendar feature builder shared by the models.

All models work on a per-service regular grid: :func:`prepare_history` validates a long frame and
returns ``service, ts, y`` on a gap-free grid (missing steps interpolated, flagged in ``filled``).
:func:`build_features` turns such a frame into the design matrix of the LightGBM model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipelines.schema import SERVICE, TS, quantile_column, require_columns, to_long

Y = "y"
FILLED = "filled"
DAY = pd.Timedelta(days=1)
WEEK = pd.Timedelta(days=7)


def season_steps_for(step: pd.Timedelta, period: pd.Timedelta = DAY) -> int:
    """Number of steps in one seasonal period (one day by default), at least 1.

    Args:
        step: Time between two rows.
        period: Length of the season.

    Returns:
        ``period // step`` (at least 1).
    """
    if step <= pd.Timedelta(0):
        raise ValueError(f"time step must be positive, got {step}")
    return max(1, int(period // step))


def prepare_history(history: pd.DataFrame, target: str, step: pd.Timedelta) -> pd.DataFrame:
    """Validate long-format history and put every service on a regular ``step`` grid.

    Duplicated timestamps are averaged; missing steps are linearly interpolated (and flagged in
    the ``filled`` column) so gaps never shift lags. Negative values are clipped to zero.

    Args:
        history: Rows of ``service``, ``ts`` and ``target``.
        target: Column to forecast.
        step: The grid step.

    Returns:
        A frame ``service, ts, y, filled`` sorted by service and time.

    Raises:
        ValueError: If columns are missing, the frame is empty, or a service has infinite values
            or no finite value at all.
    """
    require_columns(history, (SERVICE, TS, target), "history")
    if history.empty:
        raise ValueError("history has no rows")
    frame = to_long(history, [target]).rename(columns={target: Y})
    frame[Y] = pd.to_numeric(frame[Y], errors="coerce").astype(float)
    parts: list[pd.DataFrame] = []
    for service, group in frame.groupby(SERVICE, sort=True):
        values = group[Y].to_numpy()
        if np.isinf(values).any():
            rows = np.flatnonzero(np.isinf(values))
            raise ValueError(
                f"service {service!r}: column {target!r} has infinite values "
                f"at rows {rows.min()}..{rows.max()} of that service"
            )
        if not np.isfinite(values).any():
            raise ValueError(f"service {service!r}: column {target!r} has no finite value")
        series = group.groupby(TS)[Y].mean()
        start, end = series.index.min(), series.index.max()
        grid = pd.date_range(start, end, freq=step)
        aligned = series.reindex(series.index.union(grid)).interpolate(method="time")
        aligned = aligned.reindex(grid).ffill().bfill()
        filled = ~grid.isin(series.dropna().index)
        parts.append(
            pd.DataFrame(
                {
                    SERVICE: service,
                    TS: grid,
                    Y: np.clip(aligned.to_numpy(dtype=float), 0.0, None),
                    FILLED: filled,
                }
            )
        )
    out = pd.concat(parts, ignore_index=True)
    out[TS] = out[TS].astype(frame[TS].dtype)
    return out


def future_timestamps(last_ts: pd.Timestamp, step: pd.Timedelta, horizon: int) -> pd.DatetimeIndex:
    """The ``horizon`` timestamps following ``last_ts``.

    Args:
        last_ts: Last observed timestamp.
        step: Grid step.
        horizon: Number of steps.

    Returns:
        A DatetimeIndex of length ``horizon``.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1, got {horizon}")
    return pd.date_range(last_ts + step, periods=horizon, freq=step)


def finalize_quantiles(frame: pd.DataFrame, quantiles: Sequence[float]) -> pd.DataFrame:
    """Make quantile columns non-negative and monotone in the quantile level (in place).

    Args:
        frame: Forecast frame with one ``p..`` column per quantile.
        quantiles: The quantile levels present.

    Returns:
        The same frame, with sorted, clipped quantile columns.
    """
    levels = sorted(float(q) for q in quantiles)
    columns = [quantile_column(q) for q in levels]
    values = np.clip(frame[columns].to_numpy(dtype=float), 0.0, None)
    values = np.nan_to_num(values, nan=0.0)
    frame[columns] = np.maximum.accumulate(values, axis=1)
    return frame


def check_quantiles(quantiles: Sequence[float]) -> tuple[float, ...]:
    """Validate quantile levels (each strictly between 0 and 1) and return them as a tuple.

    Args:
        quantiles: Requested quantile levels.

    Returns:
        The levels as floats.
    """
    levels = tuple(float(q) for q in quantiles)
    if not levels:
        raise ValueError("at least one quantile is required")
    for q in levels:
        quantile_column(q)
    return levels
