"""Telemetry sources and the raw telemetry store.

Three sources share one interface, :class:`TelemetrySource` (``fetch(start, end)`` returns a
long-format frame of the rows with ``start <= ts < end``):

* :class:`SyntheticFleetSource`: a seeded demo fleet with daily and weekly seasonality, trend,
  noise, planned surges (campaigns) and incidents. Any window is generated the same way whether it
  is fetched alone or as part of a longer one, so 5-minute batches add up to the full series.
* :class:`FileSource`: CSV or Parquet files, in long format (``service, ts, <metrics>``) or as a
  single ``timestamp, value`` trace (e.g. the WorldCup98 requests per minute).
* :class:`PrometheusSource`: ``/api/v1/query_range`` with one PromQL query per metric.

Validated batches are stored as Parquet partitioned by service and day
(``telemetry_dir/service=<s>/date=<YYYY-MM-DD>/part.parquet``); storing a batch replaces the rows of
its interval, so a rerun of the same interval gives the same files.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np
import pandas as pd

from core.schema import (
    CPU,
    ERRORS,
    LATENCY_P95,
    REPLICAS,
    REQUESTS,
    SERVICE,
    TS,
    TS_DTYPE,
    normalize_ts,
    path_under,
    require_columns,
    to_long,
    utc_timestamp,
    validate_service_name,
    write_parquet_atomically,
)
from core.settings import Settings
from pipelines.telemetry_files import read_telemetry_file

logger = logging.getLogger(__name__)

SERVICE_NAMES: tuple[str, ...] = (
    "checkout",
    "search",
    "catalog",
    "payments",
    "auth",
    "cart",
    "recommendations",
    "inventory",
    "shipping",
    "reviews",
    "notifications",
    "profile",
    "pricing",
    "media",
    "gateway",
    "ads",
)


class TelemetrySource(Protocol):
    """Anything that returns long-format telemetry for a half-open time window."""

    def fetch(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Rows with ``start <= ts < end`` in long format."""
        ...


# --------------------------------------------------------------------------- synthetic fleet


@dataclass(frozen=True)
class ServiceProfile:
    """The hidden parameters of one synthetic service."""

    name: str
    base_rps: float
    weekly_trend: float
    weekend_factor: float
    noise: float
    evening_peak: float
    capacity_per_replica: float
    base_latency_ms: float
    cpu_per_request: float


def service_names(n_services: int) -> list[str]:
    """Names of a synthetic fleet of ``n_services`` services (stable for a given count).

    Args:
        n_services: Number of services, at least 1.

    Returns:
        Distinct, readable service names.

    Raises:
        ValueError: If ``n_services`` is smaller than 1.
    """
    if n_services < 1:
        raise ValueError(f"n_services must be at least 1, got {n_services}")
    names = list(SERVICE_NAMES[:n_services])
    names += [f"svc-{i:04d}" for i in range(len(names), n_services)]
    return names


def _stable_seed(*parts: object) -> int:
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _profile(name: str, seed: int) -> ServiceProfile:
    rng = np.random.default_rng(_stable_seed(seed, name, "profile"))
    return ServiceProfile(
        name=name,
        base_rps=float(np.exp(rng.uniform(math.log(20), math.log(800)))),
        weekly_trend=float(rng.uniform(-0.01, 0.04)),
        weekend_factor=float(rng.uniform(0.55, 0.95)),
        noise=float(rng.uniform(0.03, 0.08)),
        evening_peak=float(rng.uniform(0.2, 0.8)),
        capacity_per_replica=float(rng.uniform(30, 80)),
        base_latency_ms=float(rng.uniform(40, 120)),
        cpu_per_request=float(rng.uniform(0.002, 0.01)),
    )


def _day_events(
    profile: ServiceProfile, seed: int, day: pd.Timestamp
) -> list[tuple[str, float, float, float]]:
    """Campaigns and incidents that start on ``day``: (kind, start hour, hours, magnitude)."""
    rng = np.random.default_rng(_stable_seed(seed, profile.name, day.date().isoformat(), "events"))
    events: list[tuple[str, float, float, float]] = []
    if rng.random() < 0.25:  # a planned campaign about twice a week
        events.append(
            (
                "campaign",
                float(rng.uniform(9, 20)),
                float(rng.uniform(1, 3)),
                float(rng.uniform(1.8, 3.5)),
            )
        )
    if rng.random() < 0.08:  # an incident: traffic drops while errors spike
        events.append(
            (
                "incident",
                float(rng.uniform(0, 23)),
                float(rng.uniform(0.2, 0.8)),
                float(rng.uniform(0.05, 0.4)),
            )
        )
    return events


def _daily_shape(hours: np.ndarray, evening_peak: float) -> np.ndarray:
    night = 0.25
    morning = np.exp(-0.5 * ((hours - 11.5) / 2.5) ** 2)
    evening = evening_peak * np.exp(-0.5 * ((hours - 19.5) / 2.0) ** 2)
    return night + (1 - night) * np.clip(morning + evening, 0, None) / (1 + evening_peak * 0.4)


def _synthetic_day(
    profile: ServiceProfile, seed: int, day: pd.Timestamp, step_minutes: int, origin: pd.Timestamp
) -> pd.DataFrame:
    steps = 24 * 60 // step_minutes
    ts = pd.date_range(day, periods=steps, freq=f"{step_minutes}min", tz="UTC")
    hours = ts.hour.to_numpy() + ts.minute.to_numpy() / 60.0
    weeks = (ts - origin).total_seconds().to_numpy() / (7 * 86400)
    weekday = ts.dayofweek.to_numpy()
    rng = np.random.default_rng(
        _stable_seed(seed, profile.name, day.date().isoformat(), step_minutes)
    )

    level = profile.base_rps * (1 + profile.weekly_trend) ** weeks
    load = level * _daily_shape(hours, profile.evening_peak)
    load = load * np.where(weekday >= 5, profile.weekend_factor, 1.0)
    multiplier = np.ones(steps)
    error_rate = np.full(steps, 0.002)
    for offset_days in (-1, 0):  # an event may start late the day before and run past midnight
        event_day = day + pd.Timedelta(days=offset_days)
        for kind, start_h, hours_long, magnitude in _day_events(profile, seed, event_day):
            start = event_day + pd.Timedelta(hours=start_h)
            since = (ts - start).total_seconds().to_numpy() / 3600.0
            active = (since >= 0) & (since < hours_long)
            if kind == "campaign":
                ramp = np.clip(since / (10 / 60), 0, 1)  # ten-minute ramp-up
                multiplier = np.where(active, multiplier * (1 + (magnitude - 1) * ramp), multiplier)
            else:
                multiplier = np.where(active, multiplier * magnitude, multiplier)
                error_rate = np.where(active, 0.2, error_rate)
    noise = rng.lognormal(mean=0.0, sigma=profile.noise, size=steps)
    requests = np.maximum(load * multiplier * noise, 0.0)

    replicas = np.maximum(2, np.ceil(requests / (profile.capacity_per_replica * 0.7)))
    utilisation = requests / (replicas * profile.capacity_per_replica)
    cpu = replicas * 0.05 + requests * profile.cpu_per_request * rng.lognormal(0, 0.03, steps)
    latency = profile.base_latency_ms * (1 + 2.5 * utilisation**4) * rng.lognormal(0, 0.08, steps)
    errors = requests * error_rate * rng.lognormal(0, 0.2, steps)
    return pd.DataFrame(
        {
            SERVICE: profile.name,
            TS: ts,
            REQUESTS: requests,
            CPU: cpu,
            LATENCY_P95: latency,
            ERRORS: errors,
            REPLICAS: replicas.astype("int64"),
        }
    )


class SyntheticFleetSource:
    """A seeded synthetic fleet; the same (seed, service, timestamp) always gives the same row.

    Args:
        n_services: Number of services in the fleet.
        seed: Random seed; two sources with the same seed agree on every row.
        step_minutes: Resolution of the generated telemetry.
        origin: Timestamp at which the trend is 1.0 (defaults to 2024-01-01 UTC).
    """

    def __init__(
        self,
        n_services: int,
        seed: int = 42,
        step_minutes: int = 1,
        origin: pd.Timestamp | None = None,
    ) -> None:
        if step_minutes <= 0 or (24 * 60) % step_minutes:
            raise ValueError(f"step_minutes must divide a day, got {step_minutes}")
        self.services = service_names(n_services)
        self.seed = seed
        self.step_minutes = step_minutes
        self.origin = origin if origin is not None else pd.Timestamp("2024-01-01", tz="UTC")
        self.profiles = [_profile(name, seed) for name in self.services]

    def fetch(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Telemetry of every service for ``start <= ts < end``.

        Args:
            start: Window start (UTC).
            end: Window end (UTC, exclusive).

        Returns:
            Long-format telemetry.
        """
        start, end = utc_timestamp(start), utc_timestamp(end)
        days = pd.date_range(
            start.floor("D"), (end - pd.Timedelta(microseconds=1)).floor("D"), freq="D"
        )
        frames = [
            _synthetic_day(profile, self.seed, day, self.step_minutes, self.origin)
            for profile in self.profiles
            for day in days
        ]
        frame = pd.concat(frames, ignore_index=True)
        frame = frame[(frame[TS] >= start) & (frame[TS] < end)]
        return to_long(frame)

    def events(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """The planned campaigns starting in the window (a surge calendar for the forecasters).

        Args:
            start: Window start (UTC).
            end: Window end (UTC, exclusive).

        Returns:
            Rows of ``service, start, end, magnitude``.
        """
        start, end = utc_timestamp(start), utc_timestamp(end)
        rows = []
        for profile in self.profiles:
            for day in pd.date_range(start.floor("D"), end.ceil("D"), freq="D"):
                for kind, start_h, hours_long, magnitude in _day_events(profile, self.seed, day):
                    begin = day + pd.Timedelta(hours=start_h)
                    if kind == "campaign" and start <= begin < end:
                        rows.append(
                            (profile.name, begin, begin + pd.Timedelta(hours=hours_long), magnitude)
                        )
        return pd.DataFrame(rows, columns=[SERVICE, "start", "end", "magnitude"])


def generate_fleet(
    n_services: int, days: int, step_minutes: int = 1, seed: int = 42, end: datetime | None = None
) -> pd.DataFrame:
    """Telemetry of a synthetic fleet for the ``days`` whole days before ``end``.

    Args:
        n_services: Number of services.
        days: Length of history in days, at least 1.
        step_minutes: Resolution in minutes.
        seed: Random seed.
        end: End of the history (exclusive, floored to the step); defaults to now.

    Returns:
        Long-format telemetry with ``service, ts, requests, cpu, latency_p95_ms, errors, replicas``.

    Raises:
        ValueError: If ``days`` or ``n_services`` is smaller than 1.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    stop = utc_timestamp(end if end is not None else pd.Timestamp.now(tz="UTC")).floor(
        f"{step_minutes}min"
    )
    source = SyntheticFleetSource(n_services, seed=seed, step_minutes=step_minutes)
    return source.fetch(stop - pd.Timedelta(days=days), stop)


# --------------------------------------------------------------------------- files


class FileSource:
    """Telemetry read from CSV or Parquet files.

    A file in long format (``service``, ``ts`` and metric columns) is used as it is. A file with
    one time column and one value column (a single trace such as ``period,count``) becomes one
    service named after the file (or ``service``), its value the ``requests`` metric. Each file is
    read by :func:`pipelines.telemetry_files.read_telemetry_file`, which refuses a bad file naming
    the file, column and rows.

    Args:
        path: A file, or a directory whose ``*.csv`` and ``*.parquet`` files are all read.
        service: Service name for a single-trace file (default: the file name without suffix).
        value_per: ``"second"`` if trace values are per second, ``"minute"`` if they are counts per
            minute (converted to per second), ``"step"`` for counts per row interval.
    """

    def __init__(self, path: Path, service: str | None = None, value_per: str = "second") -> None:
        if value_per not in {"second", "minute", "step"}:
            raise ValueError(f"value_per must be 'second', 'minute' or 'step', got {value_per!r}")
        self.path = Path(path)
        self.service = service
        self.value_per = value_per

    def files(self) -> list[Path]:
        """The files this source reads, sorted.

        Raises:
            ValueError: If the path does not exist or holds no CSV/Parquet file.
        """
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            raise ValueError(f"telemetry path {self.path} does not exist")
        found = sorted(p for p in self.path.rglob("*") if p.suffix in {".csv", ".parquet"})
        if not found:
            raise ValueError(f"no .csv or .parquet file under {self.path}")
        return found

    def read_all(self) -> pd.DataFrame:
        """Every row of every file, in long format."""
        return pd.concat([self._read_file(p) for p in self.files()], ignore_index=True)

    def fetch(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Rows with ``start <= ts < end`` from every file.

        Args:
            start: Window start (UTC).
            end: Window end (UTC, exclusive).

        Returns:
            Long-format telemetry.
        """
        frame = self.read_all()
        frame = frame[(frame[TS] >= utc_timestamp(start)) & (frame[TS] < utc_timestamp(end))]
        return frame.reset_index(drop=True)

    def _read_file(self, path: Path) -> pd.DataFrame:
        telemetry = read_telemetry_file(path, self.service, self.value_per)
        for note in telemetry.notes:
            logger.info(note)
        return to_long(telemetry.frame)


# --------------------------------------------------------------------------- prometheus


DEFAULT_PROMQL: dict[str, str] = {
    REQUESTS: "sum by (service) (rate(http_requests_total[1m]))",
    CPU: "sum by (service) (rate(container_cpu_usage_seconds_total[1m]))",
    LATENCY_P95: "1000 * histogram_quantile(0.95, sum by (service, le) "
    "(rate(http_request_duration_seconds_bucket[5m])))",
    ERRORS: 'sum by (service) (rate(http_requests_total{code=~"5.."}[1m]))',
}


class PrometheusSource:
    """Telemetry from Prometheus' ``query_range`` API, one PromQL query per metric.

    Args:
        url: Base URL of Prometheus, e.g. ``http://127.0.0.1:9090``.
        queries: PromQL per metric; each result series must carry the ``service_label`` label.
        step_seconds: Query resolution.
        service_label: Label that names the service.
        timeout: HTTP timeout in seconds.
        client: Optional ``httpx.Client`` (injected by tests of fault handling).
    """

    def __init__(
        self,
        url: str,
        queries: dict[str, str] | None = None,
        step_seconds: int = 60,
        service_label: str = "service",
        timeout: float = 30.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.queries = dict(queries or DEFAULT_PROMQL)
        if REQUESTS not in self.queries:
            raise ValueError(f"Prometheus queries must include the '{REQUESTS}' metric")
        self.step_seconds = step_seconds
        self.service_label = service_label
        self.client = client or httpx.Client(timeout=timeout)

    def fetch(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Query every metric over ``[start, end)`` and join them by (service, ts).

        Args:
            start: Window start (UTC).
            end: Window end (UTC, exclusive).

        Returns:
            Long-format telemetry.

        Raises:
            ValueError: If Prometheus answers with an error or a series lacks the service label.
            httpx.HTTPError: If Prometheus cannot be reached.
        """
        start, end = utc_timestamp(start), utc_timestamp(end)
        merged: pd.DataFrame | None = None
        for metric, query in self.queries.items():
            frame = self._query_range(metric, query, start, end)
            merged = frame if merged is None else merged.merge(frame, on=[SERVICE, TS], how="outer")
        assert merged is not None
        merged = merged[(merged[TS] >= start) & (merged[TS] < end)]
        return to_long(merged, list(self.queries))

    def _query_range(
        self, metric: str, query: str, start: pd.Timestamp, end: pd.Timestamp
    ) -> pd.DataFrame:
        last = end - pd.Timedelta(seconds=self.step_seconds)
        response = self.client.get(
            f"{self.url}/api/v1/query_range",
            params={
                "query": query,
                "start": start.timestamp(),
                "end": max(last, start).timestamp(),
                "step": self.step_seconds,
            },
        )
        body = (
            response.json()
            if response.headers.get("content-type", "").startswith("application/json")
            else {}
        )
        if response.status_code != 200 or body.get("status") != "success":
            raise ValueError(
                f"Prometheus query for metric '{metric}' failed ({response.status_code}): "
                f"{body.get('error', response.text[:200])}"
            )
        rows = []
        for series in body["data"]["result"]:
            labels = series.get("metric", {})
            if self.service_label not in labels:
                raise ValueError(
                    f"Prometheus series for metric '{metric}' has no '{self.service_label}' "
                    f"label: {labels}"
                )
            for stamp, value in series["values"]:
                rows.append((labels[self.service_label], float(stamp), float(value)))
        frame = pd.DataFrame(rows, columns=[SERVICE, TS, metric])
        frame[TS] = pd.to_datetime(frame[TS], unit="s", utc=True).astype(TS_DTYPE)
        return frame


# --------------------------------------------------------------------------- choosing a source


def make_source(settings: Settings, source: str | None = None) -> TelemetrySource:
    """Build the telemetry source named in ``source`` or in ``params.yaml`` (``ingest.source``).

    Args:
        settings: Runtime settings.
        source: ``synthetic``, ``prometheus`` or ``files:<path>``; ``None`` reads params.yaml.

    Returns:
        The source.

    Raises:
        ValueError: If the name is unknown or Prometheus has no URL.
    """
    from core.params import load_params

    params = load_params(settings.params_file)
    ingest = params.get("ingest", {}) or {}
    name = source or ingest.get("source", "synthetic")
    if name == "synthetic":
        fleet = params.get("fleet", {}) or {}
        return SyntheticFleetSource(
            int(fleet.get("services", 5)),
            seed=int(fleet.get("seed", 42)),
            step_minutes=int(fleet.get("step_minutes", 1)),
        )
    if name == "prometheus":
        if not settings.prometheus_url:
            raise ValueError("source 'prometheus' needs FORESCALE_PROMETHEUS_URL")
        return PrometheusSource(settings.prometheus_url, ingest.get("promql"))
    if name.startswith("files:"):
        return FileSource(
            Path(name.removeprefix("files:")), value_per=str(ingest.get("value_per", "second"))
        )
    raise ValueError(f"unknown telemetry source {name!r}: use synthetic, prometheus or files:<dir>")


# --------------------------------------------------------------------------- the raw store


def batch_name(start: pd.Timestamp, end: pd.Timestamp) -> str:
    """File name of the batch for an interval, e.g. ``batch-20240101T0000-20240101T0005.parquet``."""
    return f"batch-{utc_timestamp(start):%Y%m%dT%H%M%S}-{utc_timestamp(end):%Y%m%dT%H%M%S}.parquet"


def extract_batch(
    settings: Settings, start: datetime, end: datetime, source: str | TelemetrySource | None = None
) -> Path:
    """Extract one interval of telemetry into the staging folder.

    Args:
        settings: Runtime settings.
        start: Interval start.
        end: Interval end (exclusive).
        source: A source, a source name (see :func:`make_source`), or ``None`` for params.yaml.

    Returns:
        Path of the staged Parquet batch (same path for the same interval).

    Raises:
        ValueError: If the interval is empty.
    """
    start_ts, end_ts = utc_timestamp(start), utc_timestamp(end)
    if end_ts <= start_ts:
        raise ValueError(f"empty interval: start {start_ts} is not before end {end_ts}")
    telemetry_source = (
        source
        if source is not None and not isinstance(source, str)
        else make_source(settings, source)
    )
    frame = telemetry_source.fetch(start_ts, end_ts)
    settings.staging_dir.mkdir(parents=True, exist_ok=True)
    path = settings.staging_dir / batch_name(start_ts, end_ts)
    write_parquet_atomically(frame, path)
    return path


def store_batch(settings: Settings, batch_path: Path) -> list[Path]:
    """Move a validated batch into the store, replacing the rows of its interval.

    The batch's interval is read from its name (see :func:`batch_name`); for every (service, day)
    it touches, the day file is rewritten atomically with the old rows outside the interval plus
    the batch's rows, so storing the same batch twice changes nothing.

    Args:
        settings: Runtime settings.
        batch_path: A staged batch that passed validation.

    Returns:
        The day files written.

    Raises:
        ValueError: If a service name is invalid (see :func:`core.schema.validate_service_name`)
            or a day file would resolve outside the telemetry folder; nothing is written then.
    """
    batch = pd.read_parquet(batch_path)
    start, end = _interval_from_name(batch_path)
    written: list[Path] = []
    if not batch.empty:
        batch = to_long(batch)
        batch["_date"] = batch[TS].dt.strftime("%Y-%m-%d")
        groups = [
            (day_file(settings, service, day), rows)
            for (service, day), rows in batch.groupby([SERVICE, "_date"], sort=True)
        ]
        for path, rows in groups:
            rows = rows.drop(columns=["_date", SERVICE])
            if path.exists():
                old = pd.read_parquet(path)
                old = old[(old[TS] < start) | (old[TS] >= end)]
                rows = pd.concat([old, rows], ignore_index=True)
            rows = rows.sort_values(TS).reset_index(drop=True)
            write_parquet_atomically(rows, path)
            written.append(path)
    batch_path.unlink()
    return written


def day_file(settings: Settings, service: str, day: str) -> Path:
    """The stored file of one service-day, ``telemetry/service=<s>/date=<YYYY-MM-DD>/part.parquet``.

    Args:
        settings: Runtime settings.
        service: A valid service name.
        day: ``YYYY-MM-DD``.

    Raises:
        ValueError: If the service name is invalid or the path leaves the telemetry folder.
    """
    return path_under(
        settings.telemetry_dir,
        f"service={validate_service_name(service)}",
        f"date={pd.Timestamp(day):%Y-%m-%d}",
        "part.parquet",
    )


def write_telemetry(
    settings: Settings,
    frame: pd.DataFrame,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[Path]:
    """Stage and store a whole frame as one batch (for imports and the one-shot pipeline).

    Validation is the caller's job: use :func:`pipelines.validation.validate_batch` between
    :func:`stage_frame` and :func:`store_batch` when the data is not trusted.

    Args:
        settings: Runtime settings.
        frame: Long-format telemetry.
        start: Interval start; defaults to the first timestamp.
        end: Interval end; defaults to just after the last timestamp.

    Returns:
        The day files written.
    """
    return store_batch(settings, stage_frame(settings, frame, start, end))


def stage_frame(
    settings: Settings,
    frame: pd.DataFrame,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Path:
    """Write a frame to the staging folder as a batch covering ``[start, end)``.

    Args:
        settings: Runtime settings.
        frame: Long-format telemetry.
        start: Interval start; defaults to the first timestamp.
        end: Interval end; defaults to one microsecond after the last timestamp.

    Returns:
        The staged batch path.

    Raises:
        ValueError: If the frame is empty and no interval is given.
    """
    require_columns(frame, (SERVICE, TS), "telemetry")
    if frame.empty and (start is None or end is None):
        raise ValueError("cannot stage an empty frame without an explicit interval")
    ts = normalize_ts(frame[TS]) if len(frame) else pd.Series(dtype=TS_DTYPE)
    start_ts = utc_timestamp(start) if start is not None else ts.min()
    end_ts = utc_timestamp(end) if end is not None else ts.max() + pd.Timedelta(seconds=1)
    settings.staging_dir.mkdir(parents=True, exist_ok=True)
    path = settings.staging_dir / batch_name(start_ts, end_ts)
    write_parquet_atomically(frame, path)
    return path


def read_telemetry(
    settings: Settings,
    services: Sequence[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pd.DataFrame:
    """Read stored telemetry.

    Args:
        settings: Runtime settings.
        services: Services to read (all when omitted).
        start: Earliest timestamp (inclusive).
        end: Latest timestamp (exclusive).

    Returns:
        Long-format telemetry sorted by (service, ts); empty (with the key columns) if none.
    """
    files = _day_files(settings, services, start, end)
    if not files:
        return pd.DataFrame({SERVICE: pd.Series(dtype=str), TS: pd.Series(dtype=TS_DTYPE)})
    frames = []
    for service, path in files:
        part = pd.read_parquet(path)
        part.insert(0, SERVICE, service)
        frames.append(part)
    frame = pd.concat(frames, ignore_index=True)
    frame[TS] = frame[TS].astype(TS_DTYPE)
    if start is not None:
        frame = frame[frame[TS] >= utc_timestamp(start)]
    if end is not None:
        frame = frame[frame[TS] < utc_timestamp(end)]
    return frame.sort_values([SERVICE, TS], kind="stable").reset_index(drop=True)


def list_services(settings: Settings) -> list[str]:
    """Services with stored telemetry, sorted."""
    if not settings.telemetry_dir.is_dir():
        return []
    return sorted(p.name.removeprefix("service=") for p in settings.telemetry_dir.glob("service=*"))


def telemetry_span(settings: Settings) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """First stored timestamp and the end of the stored data, or None if nothing is stored.

    The end is the step boundary (``settings.step_minutes``) just after the newest stored row,
    the natural "as of" of a training or forecast run.
    """
    days = sorted(
        {p.name.removeprefix("date=") for p in settings.telemetry_dir.glob("service=*/date=*")}
    )
    if not days:
        return None
    first = read_telemetry(
        settings,
        start=pd.Timestamp(days[0], tz="UTC"),
        end=pd.Timestamp(days[0], tz="UTC") + pd.Timedelta(days=1),
    )[TS].min()
    last = read_telemetry(settings, start=pd.Timestamp(days[-1], tz="UTC"))[TS].max()
    end = (last + pd.Timedelta(microseconds=1)).ceil(f"{settings.step_minutes}min")
    return pd.Timestamp(first), pd.Timestamp(end)


def resolve_as_of(settings: Settings, as_of: datetime | None) -> pd.Timestamp:
    """The "as of" instant of a run: ``as_of`` in UTC, or the end of the stored telemetry.

    Raises:
        ValueError: If ``as_of`` is None and no telemetry is stored.
    """
    if as_of is not None:
        return utc_timestamp(as_of)
    span = telemetry_span(settings)
    if span is None:
        raise ValueError(f"no telemetry stored under {settings.telemetry_dir}")
    return span[1]


def _day_files(
    settings: Settings, services: Iterable[str] | None, start: datetime | None, end: datetime | None
) -> list[tuple[str, Path]]:
    wanted = set(services) if services is not None else None
    first_day = utc_timestamp(start).strftime("%Y-%m-%d") if start is not None else None
    last_day = utc_timestamp(end).strftime("%Y-%m-%d") if end is not None else None
    out = []
    for path in sorted(settings.telemetry_dir.glob("service=*/date=*/part.parquet")):
        service = path.parent.parent.name.removeprefix("service=")
        day = path.parent.name.removeprefix("date=")
        if wanted is not None and service not in wanted:
            continue
        if (first_day and day < first_day) or (last_day and day > last_day):
            continue
        out.append((service, path))
    return out


def _interval_from_name(path: Path) -> tuple[pd.Timestamp, pd.Timestamp]:
    try:
        _, start, end = path.stem.split("-")
        return (pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC"))
    except ValueError as err:
        raise ValueError(f"{path.name} is not a batch file name (batch-<start>-<end>)") from err
