"""The long-format telemetry contract shared by every stage.

Telemetry is one row per (service, ts): ``service`` (str), ``ts`` (UTC timestamp, microsecond
precision) and the metric columns below. Forecasts are one row per (service, ts) with quantile
columns named ``p50``, ``p90``, ... (see :func:`quantile_column`).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

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

SERVICE_NAME_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
"""A service name is a Kubernetes DNS-1123 label: at most 63 characters, lowercase letters, digits
and ``-``, starting and ending with a letter or digit. It becomes a path (telemetry partitions,
artifacts), a registered model name and a metric label, so nothing else is accepted."""
SERVICE_NAME_RULE = (
    "a service name is 1-63 lowercase letters, digits or '-', starting and ending with a letter "
    "or digit (a Kubernetes DNS-1123 label)"
)


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


def is_service_name(name: object) -> bool:
    """Whether a value is a valid service name (see :data:`SERVICE_NAME_PATTERN`)."""
    return isinstance(name, str) and SERVICE_NAME_PATTERN.fullmatch(name) is not None


def validate_service_name(name: object) -> str:
    """Return the name if it is a valid service name, else raise.

    Args:
        name: A service name from outside (a file, a command line, an HTTP path).

    Returns:
        The name, unchanged.

    Raises:
        ValueError: If the name does not match :data:`SERVICE_NAME_PATTERN`.
    """
    if not is_service_name(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise ValueError(f"invalid service name {shown}: {SERVICE_NAME_RULE}")
    return str(name)


def service_name_from_file(stem: str) -> str:
    """Derive a valid service name from a file name, e.g. ``NASA_http_1995`` -> ``nasa-http-1995``.

    Letters are lowercased, every run of other characters becomes one ``-``, and the result is
    trimmed to 63 characters without a leading or trailing ``-``.

    Args:
        stem: The file name without its suffix.

    Returns:
        A valid service name.

    Raises:
        ValueError: If no letter or digit is left.
    """
    name = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:63].rstrip("-")
    if not name:
        raise ValueError(
            f"cannot derive a service name from the file name {stem!r}: {SERVICE_NAME_RULE}"
        )
    return name


def path_under(root: Path, *parts: str) -> Path:
    """Join ``parts`` below ``root``, refusing any result that resolves outside ``root``.

    Args:
        root: A state directory (e.g. the telemetry or artifacts folder).
        *parts: Path components, some derived from outside input.

    Returns:
        The joined path.

    Raises:
        ValueError: If the resolved path is not inside the resolved ``root``.
    """
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"refusing to write {path}: it resolves outside {root}")
    return path


def write_parquet_atomically(
    frame: pd.DataFrame, path: Path, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``frame`` to ``path`` whole or not at all.

    The rows go to a hidden ``.<name>.<unique>.partial`` file beside ``path`` (which
    ``*.parquet`` globs do not match), renamed over ``path`` once complete; two writers of the
    same file never share a partial file, the last rename wins.

    Args:
        frame: The rows.
        path: The Parquet file to create or replace.
        metadata: Key-value pairs kept in the file's schema metadata (read back with
            ``pyarrow.parquet.read_schema(path).metadata``), e.g. what a file without rows
            still has to say.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.partial")
    try:
        if metadata:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            kept = dict(table.schema.metadata or {})
            kept.update({key.encode(): value.encode() for key, value in metadata.items()})
            pq.write_table(table.replace_schema_metadata(kept), partial)
        else:
            frame.to_parquet(partial, index=False)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def epoch_us(instant: datetime | pd.Timestamp) -> int:
    """Microseconds since the epoch of a tz-aware instant.

    Args:
        instant: The instant.

    Returns:
        Its microseconds since 1970-01-01 UTC.
    """
    return int(pd.Timestamp(instant).tz_convert("UTC").value) // 1000  # .value: nanoseconds


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
        raise ValueError(f"{what} is missing column(s) {missing}; it has {list(frame.columns)}")


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


def by_service(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A long frame's rows per service, split once: filtering the whole frame for each service
    of a shard costs the shard's size squared.

    Args:
        frame: Rows with a ``service`` column.

    Returns:
        Service -> its rows (index and order kept).
    """
    return {str(service): rows for service, rows in frame.groupby(SERVICE, sort=False)}
