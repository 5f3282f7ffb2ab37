"""The long-format telemetry contract shared by every stage.

Telemetry is one row per (service, ts): ``service`` (str), ``ts`` (UTC timestamp, microsecond
precision) and the metric columns below. Forecasts are one row per (service, ts) with quantile
columns named ``p50``, ``p90``, ... (see :func:`quantile_column`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import pandas as pd

SERVICE = "service"
TS = "ts"
KEYS: tuple[str, str] = (SERVICE, TS)

REQUESTS = "requests"  # requests per second, mean over the row's interval
CPU = "cpu"  # CPU cores in use, summed over the service's pods
LATENCY_P95 = "latency_p95_ms"  # 95th percentile latency in milliseconds
ERRORS = "errors"  # failed requests per second
REPLICAS = "replicas"  # pods running (optional column)

METRICS: tuple[str, ...] = (REQUESTS, CPU, LATENCY_P95, ERRORS)
TARGET = REQUESTS  # what the forecasters predict and the schedule is sized on

TS_DTYPE = "datetime64[us, UTC]"


def quantile_column(quantile: float) -> str:
    """Name of the forecast column for a quantile, e.g. 0.9 -> ``p90``, 0.975 -> ``p97.5``.

    Args:
        quantile: A probability strictly between 0 and 1.

    Returns:
        The column name.

    Raises:
        ValueError: If the quantile is outside (0, 1).
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    return f"p{quantile * 100:g}"


def utc_timestamp(value: datetime | pd.Timestamp | str) -> pd.Timestamp:
    """One instant as a UTC timestamp; a naive value is taken as UTC.

    Args:
        value: A datetime, timestamp or ISO text.

    Returns:
        The instant, tz-aware in UTC.
    """
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def normalize_ts(values: pd.Series | pd.DatetimeIndex) -> pd.Series:
    """Convert timestamps to ``datetime64[us, UTC]``; naive values are taken as UTC.

    Args:
        values: Timestamps as datetimes, strings or a datetime index.

    Returns:
        A Series of UTC timestamps at microsecond precision.
    """
    ts = pd.Series(values)
    if isinstance(ts.dtype, pd.DatetimeTZDtype):  # fast path: already tz-aware, no parsing
        return ts.dt.tz_convert("UTC").astype(TS_DTYPE)
    return pd.to_datetime(ts, utc=True).astype(TS_DTYPE)


def require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str = "frame") -> None:
    """Raise a ``ValueError`` naming every missing column.

    Args:
        frame: The frame to check.
        columns: Columns that must be present.
        what: How to call the frame in the message.

    Raises:
        ValueError: If any column is missing.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} is missing column(s) {missing}; it has {list(frame.columns)}"
        )


def to_long(frame: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Return a clean long-format copy: typed keys, sorted by (service, ts).

    Args:
        frame: A frame with ``service``, ``ts`` and metric columns.
        metrics: Metric columns to keep; all non-key columns when omitted.

    Returns:
        The normalised frame.

    Raises:
        ValueError: If a key column is missing or ``ts`` cannot be parsed.
    """
    require_columns(frame, KEYS, "telemetry")
    keep = list(metrics) if metrics is not None else [c for c in frame.columns if c not in KEYS]
    require_columns(frame, keep, "telemetry")
    out = frame[[SERVICE, TS, *keep]].copy()
    out[SERVICE] = out[SERVICE].astype(str)
    try:
        # ``.array`` keeps the UTC dtype; ``.to_numpy()`` would box every value as an object.
        out[TS] = normalize_ts(out[TS]).array
    except (ValueError, TypeError) as err:
        raise ValueError(f"telemetry column 'ts' cannot be parsed as timestamps: {err}") from err
    return out.sort_values([SERVICE, TS], kind="stable").reset_index(drop=True)
