"""Schedule stage: champion forecast -> replica schedule -> published to the serving store.

Three steps, each one Airflow task of ``schedule_publish`` and one CLI command:

1. :func:`forecast_shard` loads each service's ``champion`` from MLflow, forecasts the next
   ``schedule.horizon_hours`` from the latest validated telemetry (5-minute steps) and finds
   what drives the forecast's peaks while the model and its inputs are loaded.
2. :func:`build_schedules` turns the forecast quantiles into replicas with the per-service policy
   (:mod:`core.policy`).
3. :func:`publish_schedules` writes each schedule atomically into the store the serving API reads,
   versioned with the model version that made it, plus its explanation (the peaks' drivers in
   words with the replicas).

Outputs are partitioned by ``as_of`` (the data interval end), so a rerun for the same interval
writes the same files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.params import section
from core.schema import (
    SERVICE,
    TARGET,
    TS,
    by_service,
    path_under,
    quantile_column,
    utc_timestamp,
    validate_service_name,
    write_parquet_atomically,
)
from core.settings import Settings
from models.base import services_by_model
from models.explain import peak_drivers
from models.registry import champion, configure_mlflow, forecasters_shared, load_forecaster
from pipelines.telemetry import resolve_as_of

if TYPE_CHECKING:
    from serving.schemas import ScheduleStep

LOG = logging.getLogger(__name__)
RUN_FOLDER_FORMAT = "%Y%m%dT%H%M"  # artifacts/<kind>/<run time>/, e.g. a forecast's issue time
HISTORY_DAYS_FOR_FORECAST = 8  # enough for weekly lags of the LightGBM features
PEAK_DRIVERS_KEY = "forescale.peak_drivers"  # forecast and schedule files' metadata: JSON


def _run_dir(settings: Settings, kind: str, as_of: pd.Timestamp) -> Path:
    path = settings.artifacts_dir / kind / f"{as_of:{RUN_FOLDER_FORMAT}}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run_time(run_dir: Path) -> pd.Timestamp | None:
    """The time a :func:`_run_dir` folder is named by (``None`` for any other name)."""
    try:
        return pd.Timestamp(datetime.strptime(run_dir.name, RUN_FOLDER_FORMAT), tz="UTC")
    except ValueError:
        return None


def recent_history(
    settings: Settings,
    services: Sequence[str],
    as_of: pd.Timestamp,
    days: int = HISTORY_DAYS_FOR_FORECAST,
) -> pd.DataFrame:
    """The forecasters' input series of the last ``days`` before ``as_of``, from Feast.

    The same reader as training's (:func:`pipelines.features.model_inputs`), so a forecast is
    made from exactly the values the model was trained on.

    Args:
        settings: Runtime settings.
        services: Services to read.
        as_of: End of the history (exclusive).
        days: How much history to read.

    Returns:
        Long frame ``service, ts, requests`` at ``settings.step_minutes`` resolution: each step's
        mean, or its busiest minute when ``training.target`` is ``peak``.
    """
    from pipelines.features import model_inputs

    return model_inputs(settings, services, as_of - pd.Timedelta(days=days), as_of)


def forecast_shard(
    settings: Settings, services: Sequence[str], as_of: datetime | None = None
) -> Path:
    """Forecast every service of a shard with its champion.

    A service without a champion (a cold start: training left it out for lack of history, see
    ``not_trained`` in the training summary) is skipped with a log line; the serving API serves
    it the reactive floor and says why.

    Services whose champions are the same fitted model (a shard's global model) are forecast in
    one call: a forecaster forecasts each service from that service's own history only.

    Args:
        settings: Runtime settings.
        services: The shard's services.
        as_of: Forecast origin (default: end of stored telemetry).

    Returns:
        Path of a Parquet file: ``service, ts, p50, p90, ..., model_version`` (no rows, same
        columns, when no service of the shard has a champion); its metadata holds each
        service's :func:`models.explain.peak_drivers` (:func:`recorded_peak_drivers`).

    Raises:
        ValueError: If the shard is empty, a service name is invalid, a service with a
            champion has no recent telemetry, or a champion forecasts no step of its service.
    """
    services = [validate_service_name(s) for s in services]
    if not services:
        raise ValueError("forecast_shard needs at least one service")
    configure_mlflow(settings)
    origin = resolve_as_of(settings, as_of)
    params = section(settings.params_file, "schedule")
    horizon = int(params.get("horizon_hours", 24)) * 60 // settings.step_minutes
    quantiles = tuple(
        float(q) for q in section(settings.params_file, "training").get("quantiles", [0.5, 0.9])
    )
    champions = {service: champion(service) for service in services}
    for service, version in champions.items():
        if version is None:
            LOG.info("%s: no champion model (not trained yet): no forecast, skipped", service)
    ready = {service: version for service, version in champions.items() if version is not None}
    frames = []
    drivers: dict[str, dict] = {}
    history = recent_history(settings, list(ready), origin) if ready else pd.DataFrame()
    present = set(history[SERVICE].astype(str).unique()) if ready else set()
    for service in ready:
        if service not in present:
            raise ValueError(
                f"service {service!r} has no telemetry in the "
                f"{HISTORY_DAYS_FOR_FORECAST} days before {origin}"
            )
    with forecasters_shared():
        models = {service: load_forecaster(version) for service, version in ready.items()}
        for model, group in services_by_model(models):
            together = history[history[SERVICE].isin(group)].reset_index(drop=True)
            forecast = model.predict(horizon, quantiles, history=together)
            own_forecast = by_service(forecast)
            for service in group:
                if service not in own_forecast:
                    raise ValueError(f"the champion {ready[service].label} forecast no step")
                frames.append(own_forecast[service].assign(model_version=ready[service].label))
            try:
                drivers.update(peak_drivers(model, together, forecast))
            except Exception:  # the forecasts stand; publication explains these services again
                LOG.exception("explaining the forecasts of %s failed", ", ".join(group))
    out = path_under(_run_dir(settings, "forecasts", origin), f"{services[0]}.parquet")
    frame = pd.concat(frames, ignore_index=True) if frames else empty_forecast(quantiles)
    write_parquet_atomically(frame, out, {PEAK_DRIVERS_KEY: json.dumps(drivers)})
    return out


def recorded_peak_drivers(path: Path) -> dict[str, dict]:
    """The peaks' drivers a forecast or schedules file carries, per service.

    Args:
        path: A file of :func:`forecast_shard` or :func:`build_schedules`.

    Returns:
        Service -> :func:`models.explain.peak_drivers` (empty for a file written without them).
    """
    return json.loads(_recorded_peak_drivers_json(path))


def _recorded_peak_drivers_json(path: Path) -> str:
    """The JSON text of :func:`recorded_peak_drivers` as the file holds it (``{}`` if none)."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    recorded = metadata.get(PEAK_DRIVERS_KEY.encode())
    return recorded.decode() if recorded else "{}"


def empty_forecast(quantiles: Sequence[float]) -> pd.DataFrame:
    """A forecast file's frame without rows: ``service, ts, p<q>..., model_version``, typed."""
    columns: dict[str, pd.Series] = {
        SERVICE: pd.Series(dtype=object),
        TS: pd.Series(dtype="datetime64[ns, UTC]"),
    }
    for quantile in quantiles:
        columns[quantile_column(quantile)] = pd.Series(dtype=float)
    columns["model_version"] = pd.Series(dtype=object)
    return pd.DataFrame(columns)


def issued_forecasts(
    settings: Settings,
    start: pd.Timestamp,
    end: pd.Timestamp,
    services: Sequence[str] | None = None,
    file_name: str | None = None,
    max_horizon_step: int | None = None,
) -> pd.DataFrame:
    """The forecasts :func:`forecast_shard` issued in ``[start, end)``, as they were written.

    Args:
        settings: Runtime settings.
        start: Earliest issue time.
        end: Latest issue time (exclusive).
        services: Keep these services only (all when ``None``).
        file_name: With ``services``, the name of the file in each issue folder that holds them
            (a shard's file); the folder's other files are read only for the services it lacks.
        max_horizon_step: Keep each forecast's first steps only, up to this one (all when
            ``None``); they are dropped file by file, so days of forecasts of a large shard
            never sit in memory whole.

    Returns:
        The forecast rows plus ``issued`` and ``horizon_step`` (1 = the first step of its
        forecast); empty (with those columns) when none was issued.
    """
    frames = []
    for run_dir in sorted((settings.artifacts_dir / "forecasts").glob("*")):
        issued = _run_time(run_dir)
        if issued is None or not start <= issued < end:
            continue
        for frame in _issue_folder_rows(run_dir, services, file_name):
            if not frame.empty:
                frame = frame.sort_values([SERVICE, TS], kind="stable")
                frame = frame.assign(
                    issued=issued, horizon_step=frame.groupby(SERVICE).cumcount() + 1
                )
                if max_horizon_step is not None:
                    frame = frame[frame["horizon_step"] <= max_horizon_step]
                frames.append(frame)
    if not frames:
        return pd.DataFrame(
            columns=[SERVICE, TS, "p50", "p90", "model_version", "issued", "horizon_step"]
        )
    return pd.concat(frames, ignore_index=True)


def _issue_folder_rows(
    run_dir: Path, services: Sequence[str] | None, file_name: str | None
) -> list[pd.DataFrame]:
    """The rows of ``services`` (all when ``None``) in one issue folder's forecast files; with
    ``file_name``, that file first and the others only for the services it does not hold."""
    paths = sorted(run_dir.glob("*.parquet"), key=lambda path: (path.name != file_name, path))
    wanted = None if services is None else set(services)
    frames = []
    for path in paths:
        filters = None if wanted is None else [(SERVICE, "in", sorted(wanted))]
        frame = pd.read_parquet(path, filters=filters)
        frames.append(frame)
        if file_name is not None and wanted is not None:
            wanted -= set(frame[SERVICE].unique())
            if not wanted:
                break
    return frames


def last_complete_step(
    settings: Settings, services: Sequence[str], as_of: pd.Timestamp
) -> dict[str, float]:
    """Each service's load in the latest step that ended by ``as_of`` less than a day before it
    (services without one are left out): the "load stays as it is" forecast that
    :func:`core.policy.persistence_weights` weighs the model against.

    Args:
        settings: Runtime settings.
        services: Services to read.
        as_of: The forecast's issue time.

    Returns:
        Service -> load.
    """
    recent = recent_history(settings, services, as_of, days=1)
    recent = recent[recent[TS] >= as_of - pd.Timedelta(days=1)]
    if recent.empty:
        return {}
    ended = recent.sort_values(TS).groupby(SERVICE).tail(1)
    return {str(s): float(v) for s, v in zip(ended[SERVICE], ended[TARGET], strict=True)}


def build_schedules(settings: Settings, forecast_path: Path | str) -> Path:
    """Turn a forecast file into replica schedules with each service's scaling settings.

    With ``schedule.tail_days`` above 0, each service's risk quantile is planned on the empirical
    tail of its own forecasts' errors over those days, as of the latest whole hour
    (:func:`pipelines.forecast_record.service_records`, :func:`core.policy.tail_factors`), once
    two hours of them are known; until then, and with 0, on the forecast's quantiles. With
    ``schedule.blend_with_persistence`` the plan is also blended with the last complete step's
    load by the weights of the same record (:func:`core.policy.persistence_weights`).

    Args:
        settings: Runtime settings.
        forecast_path: A file written by :func:`forecast_shard` (its folder names the issue
            time).

    Returns:
        Path of a Parquet file: the columns of :func:`core.policy.plan_replicas`
        (``service, ts, replicas, forecast_p50, forecast_p90, quantile_used, planned_load,
        tail_factor``) and ``model_version``; its metadata carries the forecast file's peak
        drivers on to :func:`publish_schedules`.

    Raises:
        ValueError: If ``tail_days`` is on and the file is not in a folder named by its issue
            time, as :func:`forecast_shard` writes it.
    """
    from core.policy import Persistence, persistence_weights, plan_replicas, tail_factors
    from core.service_config import service_config
    from pipelines.forecast_record import service_records

    forecast_path = Path(forecast_path)
    forecast = pd.read_parquet(forecast_path)
    schedule = section(settings.params_file, "schedule")
    tail_days = float(schedule.get("tail_days", 0))
    blend = bool(schedule.get("blend_with_persistence", False)) and tail_days > 0
    records: dict[str, pd.DataFrame] = {}
    last_now: dict[str, float] = {}
    if forecast.empty:
        tail_days = 0.0  # nothing to plan: no error record to read
        blend = False
    if tail_days > 0 and not {"p50", "p90"} <= set(forecast.columns):
        LOG.warning(
            "schedule.tail_days is %s but %s has no p50/p90 forecast "
            "(training.quantiles): planning on the forecast's quantiles",
            tail_days,
            forecast_path,
        )
    elif tail_days > 0:
        issued = _run_time(forecast_path.parent)
        if issued is None:
            raise ValueError(
                f"{forecast_path}: schedule.tail_days needs the forecast's issue time as its "
                f"folder name ({RUN_FOLDER_FORMAT}, as forecast_shard writes it)"
            )
        services = sorted(str(s) for s in forecast[SERVICE].unique())
        records = service_records(
            settings, services, issued, tail_days, shard_file=forecast_path.name
        )
        if blend:
            last_now = last_complete_step(settings, services, issued)
    frames = []
    for service, rows in forecast.groupby(SERVICE, sort=True):
        config = service_config(settings.params_file, str(service))
        version = rows["model_version"].iloc[0]
        own = records.get(str(service))
        tail = None
        if own is not None:
            tail = tail_factors(
                own["error"].to_numpy(float),
                own["horizon_step"].to_numpy(),
                1.0 - config.risk,
                len(rows),
            )
        persistence = None
        if own is not None and blend and str(service) in last_now:
            weights = persistence_weights(
                own["actual"].to_numpy(float),
                own["p50"].to_numpy(float),
                own["last"].to_numpy(float),
                own["horizon_step"].to_numpy(),
                len(rows),
            )
            if weights is not None:
                persistence = Persistence(last_now[str(service)], weights)
        plan = plan_replicas(
            rows.drop(columns="model_version"), config, tail=tail, persistence=persistence
        )
        frames.append(plan.assign(model_version=version))
    out = forecast_path.parent.parent.parent / "schedules" / forecast_path.parent.name
    out.mkdir(parents=True, exist_ok=True)
    path = out / forecast_path.name
    write_parquet_atomically(
        pd.concat(frames, ignore_index=True) if frames else empty_schedules(),
        path,
        {PEAK_DRIVERS_KEY: _recorded_peak_drivers_json(forecast_path)},
    )
    return path


def empty_schedules() -> pd.DataFrame:
    """A schedules file's frame without rows (the columns of :func:`build_schedules`), typed."""
    return pd.DataFrame(
        {
            SERVICE: pd.Series(dtype=object),
            TS: pd.Series(dtype="datetime64[ns, UTC]"),
            "replicas": pd.Series(dtype="int64"),
            "forecast_p50": pd.Series(dtype=float),
            "forecast_p90": pd.Series(dtype=float),
            "quantile_used": pd.Series(dtype=float),
            "planned_load": pd.Series(dtype=float),
            "tail_factor": pd.Series(dtype=float),
            "persistence_weight": pd.Series(dtype=float),
            "last_load": pd.Series(dtype=float),
            "model_version": pd.Series(dtype=object),
        }
    )


def schedule_steps(rows: pd.DataFrame) -> list[ScheduleStep]:
    """A planned schedule's rows (``ts, replicas, forecast_p50, forecast_p90``) as API steps.

    Args:
        rows: One service's rows of :func:`build_schedules`.

    Returns:
        The steps, in row order.
    """
    from serving.schemas import ScheduleStep

    return [
        ScheduleStep(
            ts=r.ts,
            replicas=int(r.replicas),
            forecast_p50=float(r.forecast_p50),
            forecast_p90=float(r.forecast_p90),
        )
        for r in rows.itertuples()
    ]


def publish_schedules(
    settings: Settings,
    schedules_path: Path | str,
    as_of: datetime | None = None,
    now: datetime | None = None,
) -> Path:
    """Publish the schedules of a file to the serving store, with their explanations.

    All services of the file are published in one transaction (each gets its next version), so a
    failure leaves every served schedule as it was. The explanations put the peak drivers the
    file carries (found at the forecast's issue) in words; a service without them (a file written
    by an earlier version) is explained by :func:`explain_schedule`.

    Args:
        settings: Runtime settings.
        schedules_path: A file written by :func:`build_schedules`.
        as_of: Publication time (default: now); a schedule is valid for
            ``schedule.validity_hours`` after it.
        now: The instant the store checks that the schedules are not in the past (default: the
            clock); a run on a pinned clock passes its own instant.

    Returns:
        Path of a JSON summary: per service the published version, model version and peak
        (empty when the file holds no schedule).
    """
    from serving.client import publish_schedules_to_store
    from serving.schemas import SchedulePublish

    schedules_path = Path(schedules_path)
    schedules = pd.read_parquet(schedules_path)
    validity = pd.Timedelta(
        hours=float(section(settings.params_file, "schedule").get("validity_hours", 2))
    )
    now = pd.Timestamp(as_of) if as_of is not None else pd.Timestamp.now(tz="UTC")
    bodies: dict[str, SchedulePublish] = {}
    explanations: dict[str, dict] = {}
    drivers = recorded_peak_drivers(schedules_path)
    with forecasters_shared():
        for service, rows in schedules.groupby(SERVICE, sort=True):
            name = str(service)
            steps = schedule_steps(rows)
            bodies[name] = SchedulePublish(
                model_version=str(rows["model_version"].iloc[0]),
                generated_at=now.to_pydatetime(),
                valid_until=(max(now, rows[TS].min()) + validity).to_pydatetime(),
                step_seconds=settings.step_minutes * 60,
                steps=steps,
            )
            explanations[name] = explain_schedule(settings, rows, drivers.get(name))
    if bodies:
        versions = publish_schedules_to_store(
            settings, bodies, explanations, now=now or pd.Timestamp.now(tz="UTC").to_pydatetime()
        )
    else:
        LOG.info(
            "%s holds no schedule (no service had a champion): nothing published", schedules_path
        )
        versions = {}
    summary = {
        name: {
            "version": versions[name],
            "model_version": body.model_version,
            "peak_replicas": max(step.replicas for step in body.steps),
            "steps": len(body.steps),
            "explanation": explanations[name]["summary"],
        }
        for name, body in bodies.items()
    }
    out = schedules_path.with_suffix(".published.json")
    out.write_text(json.dumps(summary, indent=2))
    return out


def prune_runs(settings: Settings, now: datetime | None = None) -> list[Path]:
    """Delete forecast and schedule run folders older than ``schedule.keep_days``.

    Publication writes one folder of each every 5 minutes; the tail calibration
    (``schedule.tail_days``) and the rollback check (``rollback.window_hours`` plus a day) read
    the recent ones, so ``keep_days`` must cover both.

    Args:
        settings: Runtime settings.
        now: The reference instant (default: now).

    Returns:
        The deleted folders, oldest first.

    Raises:
        ValueError: If ``schedule.keep_days`` is shorter than what the tail calibration or the
            rollback check reads.
    """
    import shutil

    schedule = section(settings.params_file, "schedule")
    keep_days = float(schedule.get("keep_days", 7))
    tail_days = float(schedule.get("tail_days", 0))
    rollback_days = float(section(settings.params_file, "rollback").get("window_hours", 6)) / 24 + 1
    rebuild_days = tail_days + 2 / 24 if tail_days > 0 else 0.0  # the error record's rebuild
    if keep_days < max(rebuild_days, rollback_days):
        raise ValueError(
            f"schedule.keep_days is {keep_days}, but schedule.tail_days ({tail_days}, plus 2 "
            f"hours to rebuild the error record) and the rollback check ({rollback_days:.2f} "
            f"days) read older forecasts: keep at least "
            f"{max(rebuild_days, rollback_days):.2f} days"
        )
    cutoff = utc_timestamp(now if now is not None else pd.Timestamp.now(tz="UTC"))
    cutoff -= pd.Timedelta(days=keep_days)
    deleted = []
    for kind in ("forecasts", "schedules"):
        for run_dir in sorted((settings.artifacts_dir / kind).glob("*")):
            made = _run_time(run_dir)
            if made is not None and run_dir.is_dir() and made < cutoff:
                shutil.rmtree(run_dir)
                deleted.append(run_dir)
    return deleted


def explain_schedule(
    settings: Settings, schedule: pd.DataFrame, drivers: dict | None = None
) -> dict:
    """Explain one service's schedule: the drivers of its forecast at the peak steps.

    Args:
        settings: Runtime settings.
        schedule: One service's rows of a :func:`build_schedules` file.
        drivers: The :func:`models.explain.peak_drivers` recorded with its forecast; without
            them, found again from the model version that made it and the history before the
            schedule's first step.

    Returns:
        The explanation document served at ``/v1/services/{service}/explanation``.
    """
    from models.explain import explain_peaks, explanation_in_words

    label = str(schedule["model_version"].iloc[0])
    service = str(schedule[SERVICE].iloc[0])
    if drivers is None:
        from models.registry import load_version

        configure_mlflow(settings)
        history = recent_history(settings, [service], schedule[TS].min())
        document = explain_peaks(load_version(label), history, schedule)
    else:
        document = explanation_in_words(drivers, schedule)
    return {
        "service": service,
        "model_version": label,
        "sizing": sizing_in_words(schedule),
        **document,
    }


def sizing_in_words(schedule: pd.DataFrame) -> str:
    """What one service's pods were sized for, in words (from :func:`build_schedules` columns).

    Args:
        schedule: One service's rows with ``quantile_used``, ``tail_factor``, ``forecast_p50``,
            ``forecast_p90`` and ``planned_load``.

    Returns:
        E.g. ``"risk 0.1: p50 + 1.70 x (p90 - p50) at the first step (the 90% quantile of its
        own recent errors; the forecast's tail would give 1.00); 130.2 req/s at the first
        step"``.
    """
    from statistics import NormalDist

    level = float(schedule["quantile_used"].iloc[0])
    first = schedule.sort_values(TS).iloc[0]
    factor = first["tail_factor"]
    normal = NormalDist().inv_cdf(level) / NormalDist().inv_cdf(0.9)
    if pd.isna(factor):
        basis = f"the forecast's own {100 * level:.3g}% quantile"
    else:
        basis = (
            f"p50 + {factor:.2f} x (p90 - p50) at the first step (the {100 * level:.3g}% "
            f"quantile of its own recent errors; the forecast's tail would give "
            f"{normal:.2f})"
        )
    words = f"risk {1 - level:.3g}: {basis}; {first['planned_load']:.1f} req/s at the first step"
    weight = first.get("persistence_weight", np.nan)
    if not pd.isna(weight):
        words += (
            f", blended with the last load ({first['last_load']:.1f} req/s) at weight "
            f"{weight:.2f} for the forecast (its least-squares weight against persistence on "
            "its own recent forecasts)"
        )
    return words
