"""Each service's forecast error record: what its schedule's risk and blend are planned on.

With ``schedule.tail_days`` above 0, :func:`pipelines.publish.build_schedules` plans each
service on the errors of its own recent forecasts (:func:`core.policy.tail_factors`,
:func:`core.policy.persistence_weights`). The record holds, for every forecast issued, its
first :data:`core.policy.RECORD_HORIZON_STEPS` steps that ended by the latest whole UTC hour
(:func:`core.policy.record_refresh_us`) and within ``tail_days`` of it, whichever champion
issued them: the record the replay benchmark plans on (:mod:`pipelines.walk_forward`).

It is kept per service in ``artifacts/forecast_record/<service>.parquet``, written whole or not
at all, and extended once an hour: the first publication after a whole hour adds the errors of
the steps that ended since the previous refresh, and again those of the hour before it (steps
whose telemetry came late), reading the forecasts issued in the three hours before and the
telemetry of those steps; it drops what is older than ``tail_days``, and the other publications
of the hour read it as it is. A publication costs one small file per service, whatever the
length of the record. A record that is missing, unreadable, kept for fewer days than
``tail_days`` asks, or refreshed later than the publication's hour (a rerun of an earlier
interval) is rebuilt from the forecast folders that :func:`pipelines.publish.prune_runs` keeps.
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

from core.policy import (
    LAST_LOAD_MAX_AGE_US,
    RECORD_HORIZON_STEPS,
    RECORD_REFRESH_US,
    in_record_window,
    record_refresh_us,
    standardized_errors,
)
from core.schema import (
    SERVICE,
    TARGET,
    TS,
    TS_DTYPE,
    epoch_us,
    path_under,
    validate_service_name,
    write_parquet_atomically,
)
from core.settings import Settings

LOG = logging.getLogger(__name__)
RECORD_FOLDER = "forecast_record"
REFRESHED_KEY = "forescale.record_refreshed"
DAYS_KEY = "forescale.record_days"
LATE_TELEMETRY = pd.Timedelta(microseconds=RECORD_REFRESH_US)
"""How late a step's telemetry may come and still enter the record: each extension computes
the hour before the previous refresh again."""
RECORD_COLUMNS = ("issued", TS, "horizon_step", "error", "actual", "p50", "last")
"""A record's columns: the forecast's issue time, the forecast step, its horizon step (1 = the
first step of the forecast), the standardized error (:func:`core.policy.standardized_errors`),
what happened, the forecast median, and the load of the last step that had ended when the
forecast was issued (NaN when none within a day)."""


def record_refresh(instant: pd.Timestamp) -> pd.Timestamp:
    """The refresh of the record that a publication at ``instant`` plans on (a whole UTC hour).

    Args:
        instant: The publication (the forecast's issue time).

    Returns:
        :func:`core.policy.record_refresh_us` of the instant, as a UTC timestamp.
    """
    return pd.Timestamp(record_refresh_us(epoch_us(instant)), unit="us", tz="UTC")


def _epoch_us_of(stamps: pd.Series) -> np.ndarray:
    """Microseconds since the epoch of UTC timestamps."""
    return stamps.astype(TS_DTYPE).to_numpy(dtype="datetime64[us]").astype(np.int64)


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
        refresh]`` (:func:`core.policy.in_record_window`), sorted by issue time and horizon
        step (no rows while none is known).

    Raises:
        ValueError: If a service name is invalid.
    """
    refresh = record_refresh(issued)
    window_start = refresh - pd.Timedelta(days=days)
    step = pd.Timedelta(minutes=settings.step_minutes)
    records: dict[str, pd.DataFrame] = {}
    stale: dict[pd.Timestamp, list[str]] = {}
    for service in services:
        kept, through, kept_days = _read_record(settings, service)
        if through is not None and (through > refresh or kept_days < days):
            LOG.info(
                "%s: forecast error record refreshed to %s over %s days, this publication "
                "plans on %s over %s days: rebuilt",
                service,
                through,
                kept_days,
                refresh,
                days,
            )
            kept, through = _empty_record(), None
        records[service] = kept
        if through is None or through < refresh:
            since = window_start if through is None else max(through - LATE_TELEMETRY, window_start)
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
            combined = combined.drop_duplicates(["issued", "horizon_step"], keep="last")
            combined = combined[combined[TS] + step > window_start]
            combined = combined.sort_values(["issued", "horizon_step"], kind="stable")
            records[service] = combined.reset_index(drop=True)
            write_parquet_atomically(
                records[service],
                _record_path(settings, service),
                metadata={REFRESHED_KEY: refresh.isoformat(), DAYS_KEY: repr(float(days))},
            )
    refresh_us = epoch_us(refresh)
    return {
        service: frame[in_record_window(_epoch_us_of(frame[TS] + step), refresh_us, days)]
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
    issued = issued_forecasts(
        settings,
        since - lookahead,
        until,
        services,
        file_name=shard_file,
        max_horizon_step=RECORD_HORIZON_STEPS,
    )
    if not issued.empty:
        ends = issued[TS] + step
        issued = issued[
            (issued["horizon_step"] <= RECORD_HORIZON_STEPS) & (ends > since) & (ends <= until)
        ]
    if issued.empty or not {"p50", "p90"} <= set(issued.columns):
        return pd.DataFrame(columns=columns)
    first = since - lookahead - pd.Timedelta(microseconds=LAST_LOAD_MAX_AGE_US)
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
        tolerance=pd.Timedelta(microseconds=LAST_LOAD_MAX_AGE_US - 1),
    )
    joined["issued"] = joined["issued"].astype(TS_DTYPE)
    return joined.rename(columns={TARGET: "actual"})[columns]


def _record_path(settings: Settings, service: str) -> Path:
    """Where a service's record is kept (inside the artifacts folder; the name is checked)."""
    name = validate_service_name(service)
    return path_under(settings.artifacts_dir / RECORD_FOLDER, f"{name}.parquet")


def _empty_record() -> pd.DataFrame:
    """A record without rows, typed."""
    return pd.DataFrame(
        {
            "issued": pd.Series(dtype=TS_DTYPE),
            TS: pd.Series(dtype=TS_DTYPE),
            "horizon_step": pd.Series(dtype="int64"),
            **{name: pd.Series(dtype=float) for name in ("error", "actual", "p50", "last")},
        }
    )


def _read_record(
    settings: Settings, service: str
) -> tuple[pd.DataFrame, pd.Timestamp | None, float]:
    """A service's kept record, the refresh it was extended to and the days it keeps
    (``None`` and 0 when there is no readable one: a file that cannot be read as a record is
    logged and rebuilt)."""
    path = _record_path(settings, service)
    if not path.is_file():
        return _empty_record(), None, 0.0
    try:
        table = pq.read_table(path)
        metadata = table.schema.metadata or {}
        refreshed, kept_days = metadata.get(REFRESHED_KEY.encode()), metadata.get(DAYS_KEY.encode())
        if refreshed is None or kept_days is None:
            raise ValueError(f"no {REFRESHED_KEY} or {DAYS_KEY} in its metadata")
        frame = table.to_pandas()
        missing = [c for c in RECORD_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"missing column(s) {missing}")
        for column in ("issued", TS):
            frame[column] = frame[column].astype(TS_DTYPE)
        frame["horizon_step"] = frame["horizon_step"].astype(np.int64)
        through = pd.Timestamp(refreshed.decode())
        days = float(kept_days.decode())
        if through.tzinfo is None or not math.isfinite(days):
            raise ValueError(f"refresh {refreshed!r} or days {kept_days!r} is not valid")
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as err:
        LOG.warning("%s: unreadable forecast error record %s (%s): rebuilt", service, path, err)
        return _empty_record(), None, 0.0
    return frame[list(RECORD_COLUMNS)], through.tz_convert("UTC"), days
