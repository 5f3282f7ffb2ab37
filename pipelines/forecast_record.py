"""Each service's forecast error record: what its schedule's risk and blend are planned on.

With ``schedule.tail_days`` above 0, :func:`pipelines.publish.build_schedules` plans each
service on the errors of its own recent forecasts (:func:`core.policy.tail_factors`,
:func:`core.policy.persistence_weights`). The record holds, for every forecast issued, its
first :data:`core.policy.RECORD_HORIZON_STEPS` steps that ended by the latest whole UTC hour
(:func:`core.policy.record_refresh_us`) and within ``tail_days`` of it, whichever champion
issued them: the record the replay benchmark plans on (:mod:`pipelines.walk_forward`).

It is kept per service in ``artifacts/forecast_record/<service>.parquet``, written whole or not
at all, and extended once an hour: the first publication after a whole hour adds the errors of
the steps that ended since the previous refresh (reading the forecasts issued in the two hours
before and the telemetry of those steps), drops those older than ``tail_days``, and the other
publications of the hour read it as it is. A publication costs one small file per service,
whatever the length of the record; a missing or unreadable record is rebuilt from the forecast
folders that :func:`pipelines.publish.prune_runs` keeps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.policy import RECORD_HORIZON_STEPS, record_refresh_us, standardized_errors
from core.schema import SERVICE, TARGET, TS, TS_DTYPE, path_under, write_parquet_atomically
from core.settings import Settings

LOG = logging.getLogger(__name__)
RECORD_FOLDER = "forecast_record"
REFRESHED_KEY = "forescale.record_refreshed"
RECORD_COLUMNS = (TS, "horizon_step", "error", "actual", "p50", "last")
"""A record's columns: the forecast step, its horizon step (1 = the first step ahead), the
standardized error (:func:`core.policy.standardized_errors`), what happened, the forecast
median, and the load of the last step that had ended when the forecast was issued (NaN when
none within a day)."""


def record_refresh(instant: pd.Timestamp) -> pd.Timestamp:
    """The refresh of the record that a publication at ``instant`` plans on (a whole UTC hour).

    Args:
        instant: The publication (the forecast's issue time).

    Returns:
        :func:`core.policy.record_refresh_us` of the instant, as a UTC timestamp.
    """
    stamp = pd.Timestamp(instant).tz_convert("UTC")
    micros = int(stamp.value) // 1000  # .value is in nanoseconds whatever the unit
    return pd.Timestamp(record_refresh_us(micros), unit="us", tz="UTC")


def service_records(
    settings: Settings,
    services: Sequence[str],
    issued: pd.Timestamp,
    days: float,
    shard_file: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Each service's error record as a publication at ``issued`` plans on it.

    Records not refreshed since the latest whole hour are extended first (and written back).

    Args:
        settings: Runtime settings.
        services: The services to read.
        issued: The publication (the forecast's issue time).
        days: ``schedule.tail_days``: how far back errors count.
        shard_file: The name of the shard's forecast file in each issue folder, read first;
            the folder's other files are read only for services it does not hold.

    Returns:
        Service -> :data:`RECORD_COLUMNS` rows whose steps ended in ``(refresh - days,
        refresh]``, sorted by step and horizon step (no rows while none is known).
    """
    refresh = record_refresh(issued)
    window_start = refresh - pd.Timedelta(days=days)
    step = pd.Timedelta(minutes=settings.step_minutes)
    records: dict[str, pd.DataFrame] = {}
    stale: dict[pd.Timestamp, list[str]] = {}
    for service in services:
        kept, through = _read_record(settings, service)
        records[service] = kept
        if through is None or through < refresh:
            since = window_start if through is None else max(through, window_start)
            stale.setdefault(since, []).append(service)
    for since, names in stale.items():
        fresh = new_errors(settings, names, since, refresh, shard_file)
        parts = dict(tuple(fresh.groupby(SERVICE, sort=False))) if not fresh.empty else {}
        for service in names:
            combined = pd.concat(
                [
                    frame
                    for frame in (records[service], parts.get(service))
                    if frame is not None and not frame.empty
                ]
                or [_empty_record()],
                ignore_index=True,
            )[list(RECORD_COLUMNS)]
            combined = combined[combined[TS] + step > window_start]
            combined = combined.sort_values([TS, "horizon_step"], kind="stable")
            records[service] = combined.reset_index(drop=True)
            write_parquet_atomically(
                records[service],
                _record_path(settings, service),
                metadata={REFRESHED_KEY: refresh.isoformat()},
            )
    return {
        service: frame[(frame[TS] + step <= refresh) & (frame[TS] + step > window_start)]
        for service, frame in records.items()
    }


def new_errors(
    settings: Settings,
    services: Sequence[str],
    since: pd.Timestamp,
    until: pd.Timestamp,
    shard_file: str | None = None,
) -> pd.DataFrame:
    """The record rows of the forecast steps that ended in ``(since, until]``.

    Args:
        settings: Runtime settings.
        services: The services to compute.
        since: Steps that ended at or before this are left out.
        until: The refresh: steps that ended later are left out.
        shard_file: See :func:`service_records`.

    Returns:
        ``service`` plus :data:`RECORD_COLUMNS`; steps without telemetry are left out.
    """
    from pipelines.features import model_inputs
    from pipelines.publish import issued_forecasts

    columns = [SERVICE, *RECORD_COLUMNS]
    step = pd.Timedelta(minutes=settings.step_minutes)
    lookahead = step * RECORD_HORIZON_STEPS
    issued = issued_forecasts(settings, since - lookahead, until, services, file_name=shard_file)
    if not issued.empty:
        ends = issued[TS] + step
        issued = issued[
            (issued["horizon_step"] <= RECORD_HORIZON_STEPS) & (ends > since) & (ends <= until)
        ]
    if issued.empty or not {"p50", "p90"} <= set(issued.columns):
        return pd.DataFrame(columns=columns)
    first = since - lookahead - pd.Timedelta(days=1)
    actual = model_inputs(settings, services, first, until)
    if actual.empty:
        return pd.DataFrame(columns=columns)
    issued[TS] = issued[TS].astype(TS_DTYPE)
    joined = issued.merge(actual[[SERVICE, TS, TARGET]], on=[SERVICE, TS], how="inner")
    joined["error"] = standardized_errors(
        joined[TARGET].to_numpy(), joined["p50"].to_numpy(), joined["p90"].to_numpy()
    )
    last = actual[[SERVICE, TS, TARGET]].rename(columns={TS: "issued", TARGET: "last"})
    last["issued"] = (last["issued"] + step).astype(joined["issued"].dtype)
    joined = pd.merge_asof(
        joined.sort_values("issued"),
        last.sort_values("issued"),
        on="issued",
        by=SERVICE,
        direction="backward",
        tolerance=pd.Timedelta(days=1),
    )
    return joined.rename(columns={TARGET: "actual"})[columns]


def _record_path(settings: Settings, service: str) -> Path:
    """Where a service's record is kept (inside the artifacts folder)."""
    return path_under(settings.artifacts_dir / RECORD_FOLDER, f"{service}.parquet")


def _empty_record() -> pd.DataFrame:
    """A record without rows, typed."""
    return pd.DataFrame(
        {
            TS: pd.Series(dtype=TS_DTYPE),
            "horizon_step": pd.Series(dtype="int64"),
            **{name: pd.Series(dtype=float) for name in ("error", "actual", "p50", "last")},
        }
    )


def _read_record(settings: Settings, service: str) -> tuple[pd.DataFrame, pd.Timestamp | None]:
    """A service's kept record and the refresh it was extended to (``None`` when there is no
    readable one: a file that cannot be read as a record is logged and rebuilt)."""
    path = _record_path(settings, service)
    if not path.is_file():
        return _empty_record(), None
    try:
        table = pq.read_table(path)
        refreshed = (table.schema.metadata or {}).get(REFRESHED_KEY.encode())
        if refreshed is None:
            raise ValueError(f"no {REFRESHED_KEY} in its metadata")
        frame = table.to_pandas()
        missing = [c for c in RECORD_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"missing column(s) {missing}")
        frame[TS] = frame[TS].astype(TS_DTYPE)
        through = pd.Timestamp(refreshed.decode())
        if through.tzinfo is None or not math.isfinite(through.timestamp()):
            raise ValueError(f"refresh time {refreshed!r} is not a UTC instant")
    except (OSError, ValueError, KeyError, pa.ArrowException) as err:
        LOG.warning("%s: unreadable forecast error record %s (%s): rebuilt", service, path, err)
        return _empty_record(), None
    frame["horizon_step"] = frame["horizon_step"].astype(np.int64)
    return frame[list(RECORD_COLUMNS)], through.tz_convert("UTC")
