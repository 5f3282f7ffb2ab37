"""Drift monitoring: is the fleet still behaving like the data the champion was trained on?

Two checks, run hourly by the ``drift_monitor`` DAG:

* **Data drift** (Evidently ``DataDriftPreset``): recent raw telemetry (the last
  ``drift.current_hours``) against a reference: the champion's training window when it is given,
  else the same hours 1..``drift.reference_weeks`` weeks earlier. Load is strongly daily and
  weekly seasonal, so an unaligned reference (say, the previous 7 days against the last 24 hours)
  flags nearly every service; the week-aligned one does not. Every (service, metric) is
  one column of a wide frame, so one Evidently report covers the fleet; a service has drifted when
  at least ``drift.min_drifted_metrics`` of its columns fail Evidently's per-column drift test.
  The report has one data-drift section per service whose "Dataset Drift" verdict uses that same
  rule, so the report and the decision agree.
* **Forecast-error drift**: the recent error of the published ``p50`` forecasts (relative MAE
  against the seasonal naive, the metric champions are backtested with) against the champion's
  backtest error from the MLflow registry; more than ``1 + drift.error_tolerance`` times the
  backtest error counts as drift.

Guard rail: a service announced as drifted is not announced again for ``drift.cooldown_hours``,
so it gets at most one drift-triggered retrain per cool-down. The ledger of announcements lives
in ``artifacts_dir/drift/announcements.json``.

Outputs per run, partitioned by the window end: ``artifacts_dir/drift/<end>/report.html`` (the
Evidently report headed by the run's decision, also logged to MLflow) and ``result.json`` (see
:func:`run_drift_monitor`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from core.params import FORECAST_TARGETS, forecast_target, load_params
from core.schema import (
    CPU,
    LATENCY_P95,
    METRICS,
    REQUESTS,
    SERVICE,
    TS,
    quantile_column,
    utc_timestamp,
)
from core.settings import Settings
from core.steps import aggregate_steps

DRIFT_SECTION = "drift"
EXPERIMENT_NAME = "forescale-drift"
COLUMN_SEPARATOR = "/"  # wide column name: "<service>/<metric>"
FORECAST_COLUMN = quantile_column(0.5)
ANNOUNCEMENTS_FILE = "announcements.json"

REASON_DRIFT = "drift"
REASON_SCHEDULE = "schedule"
REASON_MANUAL = "manual"


@dataclass(frozen=True)
class DriftConfig:
    """The ``drift:`` section of ``params.yaml``.

    Attributes:
        current_hours: Length of the recent window compared with the reference.
        reference_weeks: Week-aligned reference copies of the recent window (when no champion
            window is given).
        metrics: Telemetry metrics compared.
        min_drifted_metrics: Drifted columns that make a service count as drifted.
        method: Evidently drift method for numeric columns (``None``: Evidently's default).
        threshold: Threshold of that method (``None``: Evidently's default).
        error_tolerance: Allowed relative increase of the forecast error over the backtest error.
        min_rows: Fewest recent rows a service needs to be checked.
        cooldown_hours: At most one drift announcement per service within this many hours.
    """

    current_hours: float = 24.0
    reference_weeks: int = 2
    metrics: tuple[str, ...] = (REQUESTS, CPU, LATENCY_P95)
    min_drifted_metrics: int = 1
    method: str | None = "wasserstein"
    threshold: float | None = 0.5
    error_tolerance: float = 0.5
    min_rows: int = 30
    cooldown_hours: float = 24.0

    @classmethod
    def from_params(cls, params_file: Path) -> DriftConfig:
        """Read the ``drift:`` section (missing keys take the defaults above).

        Args:
            params_file: Path of ``params.yaml``.

        Returns:
            The validated configuration.

        Raises:
            ValueError: On an unknown key, an unknown metric or a non-positive window.
        """
        section = load_params(params_file).get(DRIFT_SECTION) or {}
        if not isinstance(section, dict):
            raise ValueError(f"{params_file}: '{DRIFT_SECTION}' must be a mapping")  # noqa: TRY004
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"{params_file}: unknown key(s) {unknown} in '{DRIFT_SECTION}'")
        values = dict(section)
        if "metrics" in values:
            values["metrics"] = tuple(values["metrics"])
        config = cls(**values)
        bad_metrics = [m for m in config.metrics if m not in METRICS]
        if bad_metrics or not config.metrics:
            raise ValueError(
                f"{params_file}: drift.metrics {list(config.metrics)} must be a "
                f"non-empty subset of {list(METRICS)}"
            )
        for name in ("current_hours", "reference_weeks", "cooldown_hours"):
            if getattr(config, name) <= 0:
                raise ValueError(f"{params_file}: drift.{name} must be positive")
        return config


@dataclass
class DriftResult:
    """What one monitor run found (written to ``result.json``).

    Attributes:
        end: End of the recent window (ISO timestamp).
        drifted_services: Services announced as drifted (after the cool-down).
        report: Path of the Evidently HTML report.
        reason: Human-readable reason, empty when nothing drifted.
        suppressed_services: Drifted services not announced because of the cool-down.
        data_drift: Per drifted service, the metrics whose drift test failed.
        error_drift: Per drifted service, the recent and the backtest forecast error.
        fleet_drift_share: Share of drifted columns over the whole fleet.
        current_window: [start, end) of the recent window.
        reference_window: [start, end) of the reference window.
        checked_services: Services with enough data in both windows.
        mlflow_run_id: The MLflow run the report was logged to.
    """

    end: str
    drifted_services: list[str]
    report: str
    reason: str
    suppressed_services: list[str] = field(default_factory=list)
    data_drift: dict[str, list[str]] = field(default_factory=dict)
    error_drift: dict[str, dict[str, float]] = field(default_factory=dict)
    fleet_drift_share: float = 0.0
    current_window: list[str] = field(default_factory=list)
    reference_window: list[str] = field(default_factory=list)
    checked_services: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None


def partition_name(end: datetime) -> str:
    """Folder name of a run's outputs, e.g. ``20240101T0500Z``."""
    return f"{utc_timestamp(end):%Y%m%dT%H%M}Z"


def drift_dir(settings: Settings) -> Path:
    """Where the monitor writes its reports and its announcement ledger."""
    return settings.artifacts_dir / "drift"


def wide_frame(telemetry: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Pivot long telemetry to one column per (service, metric), named ``<service>/<metric>``.

    Args:
        telemetry: Long-format telemetry.
        metrics: Metric columns to keep.

    Returns:
        A frame indexed by ``ts``; missing rows are NaN.

    Raises:
        ValueError: If a metric column is missing.
    """
    missing = [m for m in metrics if m not in telemetry.columns]
    if missing:
        raise ValueError(f"telemetry is missing metric column(s) {missing}")
    wide = telemetry.pivot_table(index=TS, columns=SERVICE, values=list(metrics), aggfunc="mean")
    wide.columns = [f"{service}{COLUMN_SEPARATOR}{metric}" for metric, service in wide.columns]
    return wide.sort_index(axis=1).astype(float)


def detect_data_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    config: DriftConfig,
    report_path: Path | None = None,
) -> tuple[dict[str, list[str]], float]:
    """Run Evidently's data drift preset, one per service, and read its test statuses.

    Each service's preset judges "Dataset Drift" by the monitor's own rule: detected when at least
    ``config.min_drifted_metrics`` of the service's columns drifted.

    Args:
        reference: Long-format reference telemetry.
        current: Long-format recent telemetry.
        config: Drift configuration (metrics, method, threshold, drift share).
        report_path: Where to save the HTML report, if given.

    Returns:
        ``({service: [drifted metrics]}, fleet share of drifted columns)``; only services with
        at least ``config.min_drifted_metrics`` drifted columns are listed.

    Raises:
        ValueError: If the two frames share no (service, metric) column.
    """
    from evidently import Report
    from evidently.presets import DataDriftPreset

    ref_wide = wide_frame(reference, config.metrics)
    cur_wide = wide_frame(current, config.metrics)
    columns = [
        c
        for c in ref_wide.columns
        if c in set(cur_wide.columns) and ref_wide[c].notna().any() and cur_wide[c].notna().any()
    ]
    if not columns:
        raise ValueError(
            "reference and current telemetry share no (service, metric) column with "
            f"data: reference has {list(ref_wide.columns)[:10]}, current has "
            f"{list(cur_wide.columns)[:10]}"
        )
    by_service_columns: dict[str, list[str]] = {}
    for column in columns:
        by_service_columns.setdefault(column.rsplit(COLUMN_SEPARATOR, 1)[0], []).append(column)
    presets = [
        DataDriftPreset(
            columns=own,
            num_method=config.method,
            num_threshold=config.threshold,
            drift_share=min(1.0, config.min_drifted_metrics / len(own)),
        )
        for own in by_service_columns.values()
    ]
    snapshot = Report(presets, include_tests=True).run(
        current_data=cur_wide[columns].reset_index(drop=True),
        reference_data=ref_wide[columns].reset_index(drop=True),
    )
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(report_path))
    drifted_columns = _failed_drift_columns(snapshot.dict()["tests"])
    by_service: dict[str, list[str]] = {}
    for column in sorted(drifted_columns):
        service, metric = column.rsplit(COLUMN_SEPARATOR, 1)
        by_service.setdefault(service, []).append(metric)
    drifted = {s: m for s, m in by_service.items() if len(m) >= config.min_drifted_metrics}
    return drifted, len(drifted_columns) / len(columns)


def _failed_drift_columns(tests: Sequence[Mapping[str, Any]]) -> set[str]:
    """Columns whose Evidently per-column drift test did not pass."""
    failed: set[str] = set()
    for test in tests:
        column = test.get("metric_config", {}).get("params", {}).get("column")
        if column is None or test.get("id") != "drift":
            continue
        status = str(test.get("status", "")).rsplit(".", 1)[-1].upper()
        if status not in {"SUCCESS", "PASS"}:
            failed.add(column)
    return failed


def forecast_errors(
    forecasts: pd.DataFrame, actuals: pd.DataFrame, step_minutes: int, target: str = "mean"
) -> dict[str, float]:
    """Recent forecast error per service, in the metric the champion was backtested with.

    The error is ``relative_mae`` (see :mod:`models.metrics`): MAE of the ``p50`` forecast over
    the MAE of the seasonal-naive forecast (the actual one day earlier). Actuals are aggregated
    to the forecast step first, as the forecast target is (mean, or busiest minute for
    ``peak``).

    Args:
        forecasts: Long frame ``service, ts, p50``.
        actuals: Long-format raw telemetry with ``requests``, covering the forecast steps and the
            day before them.
        step_minutes: Forecast resolution in minutes.
        target: ``training.target`` (``mean`` or ``peak``).

    Returns:
        ``{service: relative MAE}`` for services with a finite error.

    Raises:
        ValueError: If a required column is missing.
    """
    from models.metrics import live_errors

    for frame, what, columns in (
        (forecasts, "forecasts", (SERVICE, TS, FORECAST_COLUMN)),
        (actuals, "telemetry", (SERVICE, TS, REQUESTS)),
    ):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{what} is missing column(s) {missing}")
    if target not in FORECAST_TARGETS:
        raise ValueError(
            f"forecast target must be one of {sorted(FORECAST_TARGETS)}, got {target!r}"
        )
    if forecasts.empty or actuals.empty:
        return {}
    stepped = aggregate_steps(actuals, f"{step_minutes}min", target, REQUESTS)
    predicted = forecasts[[SERVICE, TS, FORECAST_COLUMN]].rename(columns={FORECAST_COLUMN: "p50"})
    return {service: error for service, (error, _) in live_errors(predicted, stepped).items()}


def recent_forecasts(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    """The freshest published forecast of every (service, step) in ``[start, end)``.

    Reads the files of :func:`pipelines.publish.forecast_shard`
    (``artifacts_dir/forecasts/<origin>/*.parquet``) made before ``end``; for a step forecast
    several times, the forecast from the latest origin wins (the one a schedule was built on).

    Args:
        settings: Runtime settings.
        start: First step.
        end: End of the window (exclusive).

    Returns:
        Long frame ``service, ts, p50`` (empty if no forecast covers the window).
    """
    start_ts, end_ts = utc_timestamp(start), utc_timestamp(end)
    frames = []
    for folder in sorted((settings.artifacts_dir / "forecasts").glob("*T*")):
        try:
            origin = pd.Timestamp(folder.name, tz="UTC")
        except ValueError:
            continue
        if origin >= end_ts:
            continue
        for path in sorted(folder.glob("*.parquet")):
            frame = pd.read_parquet(path, columns=[SERVICE, TS, FORECAST_COLUMN])
            frames.append(frame.assign(_origin=origin))
    if not frames:
        return pd.DataFrame(
            {
                SERVICE: pd.Series(dtype=str),
                TS: pd.Series(dtype="datetime64[us, UTC]"),
                FORECAST_COLUMN: pd.Series(dtype=float),
            }
        )
    frame = pd.concat(frames, ignore_index=True)
    frame[TS] = pd.to_datetime(frame[TS], utc=True)
    frame = frame[(frame[TS] >= start_ts) & (frame[TS] < end_ts) & (frame[TS] >= frame["_origin"])]
    frame = frame.sort_values("_origin").drop_duplicates([SERVICE, TS], keep="last")
    return frame.drop(columns="_origin").sort_values([SERVICE, TS]).reset_index(drop=True)


def champion_errors(settings: Settings, services: Sequence[str]) -> dict[str, float]:
    """The backtest error each service's champion was registered with (MLflow registry).

    Args:
        settings: Runtime settings.
        services: Services to look up; those without a champion are left out.

    Returns:
        ``{service: backtest relative MAE}``.
    """
    from models.registry import champion, configure_mlflow

    configure_mlflow(settings)
    errors = {}
    for service in services:
        version = champion(service)
        if version is not None and math.isfinite(version.backtest_error):
            errors[service] = version.backtest_error
    return errors


def detect_error_drift(
    recent_errors: Mapping[str, float],
    reference_errors: Mapping[str, float],
    tolerance: float,
) -> dict[str, dict[str, float]]:
    """Services whose recent forecast error exceeds the backtest error by more than ``tolerance``.

    Args:
        recent_errors: ``{service: recent relative MAE}``.
        reference_errors: ``{service: champion backtest relative MAE}``.
        tolerance: Allowed relative increase, e.g. 0.5 for +50 %.

    Returns:
        ``{service: {"recent": ..., "reference": ...}}`` for the drifted services.

    Raises:
        ValueError: If a reference error is negative or not finite.
    """
    drifted: dict[str, dict[str, float]] = {}
    for service, recent in sorted(recent_errors.items()):
        if service not in reference_errors:
            continue
        reference = float(reference_errors[service])
        if not math.isfinite(reference) or reference < 0:
            raise ValueError(
                f"service {service!r}: reference error {reference} must be a "
                "finite non-negative number"
            )
        if recent > reference * (1.0 + tolerance):
            drifted[service] = {"recent": float(recent), "reference": reference}
    return drifted


def apply_cooldown(
    ledger: Mapping[str, str],
    drifted: Sequence[str],
    end: datetime,
    cooldown_hours: float,
) -> tuple[list[str], list[str]]:
    """Split drifted services into (announce, suppressed) by the cool-down ledger.

    A service announced at exactly ``end`` (a rerun of the same window) is announced again, so a
    rerun gives the same result.

    Args:
        ledger: ``{service: ISO time of the last announcement}``.
        drifted: Services found drifted in this run.
        end: End of this run's window.
        cooldown_hours: Cool-down length.

    Returns:
        ``(announced, suppressed)``, both sorted.
    """
    end_ts = utc_timestamp(end)
    window = pd.Timedelta(hours=cooldown_hours)
    announced, suppressed = [], []
    for service in sorted(drifted):
        last = ledger.get(service)
        if last is not None and end_ts - window < utc_timestamp(last) < end_ts:
            suppressed.append(service)
        else:
            announced.append(service)
    return announced, suppressed


def run_drift_monitor(
    settings: Settings,
    end: datetime | None = None,
    reference_window: tuple[datetime, datetime] | None = None,
    reference_errors: Mapping[str, float] | None = None,
) -> Path:
    """Compare recent telemetry (and forecast errors) with the reference; write the result.

    Args:
        settings: Runtime settings.
        end: End of the recent window (the DAG's ``data_interval_end``); default: now, or the
            end of the stored telemetry if that is earlier, floored to the hour.
        reference_window: The champion's training window; default: the recent window shifted
            back by 1..``drift.reference_weeks`` weeks.
        reference_errors: ``{service: backtest relative MAE}``; default: each champion's
            backtest error from the MLflow registry. The error check compares it with the
            published forecasts of the recent window (services without either are skipped).

    Returns:
        Path of ``result.json``: ``{end, drifted_services, report, reason, ...}``
        (see :class:`DriftResult`), under ``artifacts_dir/drift/<end>/``.

    Raises:
        ValueError: If there is no telemetry in the recent or the reference window.
    """
    from pipelines.telemetry import read_telemetry

    config = DriftConfig.from_params(settings.params_file)
    end_ts = utc_timestamp(end) if end is not None else default_window_end(settings)
    current_start = end_ts - pd.Timedelta(hours=config.current_hours)
    if reference_window is None:
        weeks = [pd.Timedelta(weeks=k) for k in range(1, config.reference_weeks + 1)]
        ref_start, ref_end = current_start - weeks[-1], end_ts - weeks[0]
        reference = pd.concat(
            [read_telemetry(settings, start=current_start - w, end=end_ts - w) for w in weeks],
            ignore_index=True,
        )
    else:
        ref_start, ref_end = utc_timestamp(reference_window[0]), utc_timestamp(reference_window[1])
        reference = read_telemetry(settings, start=ref_start, end=ref_end)
    current = read_telemetry(settings, start=current_start, end=end_ts)
    if current.empty:
        raise ValueError(
            f"no telemetry in the recent window [{current_start}, {end_ts}) under "
            f"{settings.telemetry_dir}"
        )
    if reference.empty:
        raise ValueError(
            f"no telemetry in the reference window [{ref_start}, {ref_end}) under "
            f"{settings.telemetry_dir}"
        )
    checked = sorted(
        set(_services_with_rows(current, config.min_rows))
        & set(_services_with_rows(reference, config.min_rows))
    )
    if not checked:
        raise ValueError(
            f"no service has {config.min_rows} rows in both the recent window "
            f"[{current_start}, {end_ts}) and the reference [{ref_start}, {ref_end})"
        )
    current = current[current[SERVICE].isin(checked)]
    reference = reference[reference[SERVICE].isin(checked)]

    out_dir = drift_dir(settings) / partition_name(end_ts)
    report_path = out_dir / "report.html"
    data_drift, fleet_share = detect_data_drift(reference, current, config, report_path)
    error_drift: dict[str, dict[str, float]] = {}
    forecasts = recent_forecasts(settings, current_start, end_ts)
    forecasts = forecasts[forecasts[SERVICE].isin(checked)]
    if not forecasts.empty:
        if reference_errors is None:
            reference_errors = champion_errors(settings, sorted(forecasts[SERVICE].unique()))
        actuals = read_telemetry(
            settings,
            sorted(forecasts[SERVICE].unique()),
            start=current_start - pd.Timedelta(days=1),
            end=end_ts,
        )
        recent = forecast_errors(
            forecasts, actuals, settings.step_minutes, forecast_target(settings.params_file)
        )
        error_drift = detect_error_drift(recent, reference_errors, config.error_tolerance)

    ledger_path = drift_dir(settings) / ANNOUNCEMENTS_FILE
    ledger = _read_json(ledger_path, default={})
    announced, suppressed = apply_cooldown(
        ledger, sorted(set(data_drift) | set(error_drift)), end_ts, config.cooldown_hours
    )
    result = DriftResult(
        end=end_ts.isoformat(),
        drifted_services=announced,
        report=str(report_path),
        reason=_describe(announced, data_drift, error_drift),
        suppressed_services=suppressed,
        data_drift={s: data_drift[s] for s in announced + suppressed if s in data_drift},
        error_drift={s: error_drift[s] for s in announced + suppressed if s in error_drift},
        fleet_drift_share=fleet_share,
        current_window=[current_start.isoformat(), end_ts.isoformat()],
        reference_window=[ref_start.isoformat(), ref_end.isoformat()],
        checked_services=checked,
    )
    _head_report_with_decision(report_path, result)
    result.mlflow_run_id = _log_to_mlflow(settings, result, report_path)
    result_path = out_dir / "result.json"
    _write_json(result_path, asdict(result))
    if announced:
        ledger.update({service: end_ts.isoformat() for service in announced})
        _write_json(ledger_path, ledger)
    return result_path


def default_window_end(settings: Settings) -> pd.Timestamp:
    """Now, or the end of the stored telemetry if earlier (imported history), floored to the hour.

    Raises:
        ValueError: If no telemetry is stored.
    """
    from pipelines.telemetry import read_telemetry, telemetry_span

    span = telemetry_span(settings)
    if span is None:
        raise ValueError(f"no telemetry stored under {settings.telemetry_dir}")
    last_day = read_telemetry(settings, start=span[1] - pd.Timedelta(days=1), end=span[1])
    last = last_day[TS].max() + pd.Timedelta(minutes=1) if not last_day.empty else span[1]
    return min(pd.Timestamp.now(tz="UTC"), last).floor("h")


def load_drift_result(result_path: Path | str) -> dict[str, Any]:
    """Read a ``result.json`` written by :func:`run_drift_monitor`.

    Raises:
        ValueError: If the file is missing or lacks ``drifted_services``.
    """
    path = Path(result_path)
    if not path.is_file():
        raise ValueError(f"drift result {path} does not exist")
    result = json.loads(path.read_text())
    if "drifted_services" not in result:
        raise ValueError(f"drift result {path} has no 'drifted_services'")
    return result


def drift_found(result_path: Path | str) -> bool:
    """Whether a monitor run announced at least one drifted service."""
    return bool(load_drift_result(result_path)["drifted_services"])


def drift_event_extra(result_path: Path | str) -> dict[str, Any]:
    """The ``extra`` of the drift asset event: ``{services, report, result, reason}``."""
    result = load_drift_result(result_path)
    return {
        "services": list(result["drifted_services"]),
        "report": result["report"],
        "result": str(result_path),
        "reason": result["reason"],
    }


def resolve_retrain_trigger(
    event_extras: Sequence[Mapping[str, Any]],
    conf: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Why a retrain run started, from its triggering drift events (or its run conf).

    Args:
        event_extras: ``extra`` of every drift asset event that triggered the run, oldest first
            (empty for a time-scheduled run).
        conf: The run's conf; ``{"reason": "drift", "services": [...], "report": "..."}`` lets a
            manual run act like a drift-triggered one.

    Returns:
        ``{"reason": "drift" | "schedule" | "manual", "services": [...] | None,
        "report": str | None}``:
        ``services`` is ``None`` for a full retrain, ``report`` the latest drift report.

    Raises:
        ValueError: If the conf names an unknown reason or ``services`` is not a list.
    """
    if event_extras:
        services = sorted({str(s) for extra in event_extras for s in extra.get("services", [])})
        reports = [str(extra["report"]) for extra in event_extras if extra.get("report")]
        return {
            "reason": REASON_DRIFT,
            "services": services,
            "report": reports[-1] if reports else None,
        }
    conf = dict(conf or {})
    reason = conf.get("reason", REASON_SCHEDULE)
    if reason not in {REASON_DRIFT, REASON_SCHEDULE, REASON_MANUAL}:
        raise ValueError(
            f"run conf reason must be {REASON_DRIFT!r}, {REASON_SCHEDULE!r} or "
            f"{REASON_MANUAL!r}, got {reason!r}"
        )
    services = conf.get("services")
    if services is not None and not isinstance(services, list):
        raise ValueError(f"run conf services must be a list of names, got {services!r}")
    return {
        "reason": reason,
        "services": [str(s) for s in services] if services else None,
        "report": str(conf["report"]) if conf.get("report") else None,
    }


def summarize_retrain(
    settings: Settings,
    run_id: str,
    shard_summaries: Sequence[str | Path],
    trigger: Mapping[str, Any],
) -> Path:
    """Write one JSON summary of a retrain run: why it ran and what each shard wrote.

    Args:
        settings: Runtime settings.
        run_id: The Airflow run id (the summary's partition).
        shard_summaries: Paths returned by :func:`pipelines.training.train_shard`.
        trigger: The output of :func:`resolve_retrain_trigger`.

    Returns:
        Path of ``artifacts_dir/retrain/<run_id>/summary.json``.
    """
    shards = [{"path": str(p), "summary": json.loads(Path(p).read_text())} for p in shard_summaries]
    safe_run_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    path = settings.artifacts_dir / "retrain" / safe_run_id / "summary.json"
    _write_json(path, {"run_id": run_id, **dict(trigger), "shards": shards})
    return path


def _services_with_rows(frame: pd.DataFrame, min_rows: int) -> list[str]:
    counts = frame.groupby(SERVICE).size()
    return [str(s) for s in counts[counts >= min_rows].index]


def _describe(
    announced: Sequence[str],
    data_drift: Mapping[str, Sequence[str]],
    error_drift: Mapping[str, Mapping[str, float]],
) -> str:
    parts = []
    for service in announced:
        causes = []
        if service in data_drift:
            causes.append("data drift in " + ", ".join(data_drift[service]))
        if service in error_drift:
            err = error_drift[service]
            causes.append(f"forecast error {err['recent']:.3f} vs backtest {err['reference']:.3f}")
        parts.append(f"{service}: {'; '.join(causes)}")
    return " | ".join(parts)


def decision_summary(result: DriftResult) -> list[str]:
    """The run's decision in a few sentences, as the report states it above Evidently's sections.

    Args:
        result: The monitor run's result.

    Returns:
        Lines: the verdict, then one line per drifted or suppressed service.
    """
    checked = len(result.checked_services)
    if result.drifted_services:
        verdict = (
            f"Drift detected in {len(result.drifted_services)} of {checked} services "
            f"({', '.join(result.drifted_services)}): a retrain is triggered for them."
        )
    elif result.suppressed_services:
        verdict = (
            f"Drift detected in {len(result.suppressed_services)} of {checked} services, "
            "already announced within the cool-down: no retrain is triggered."
        )
    else:
        verdict = f"No drift in any of the {checked} services checked: no retrain is triggered."
    lines = [verdict]
    lines += [f"{part}." for part in result.reason.split(" | ") if part]
    if result.suppressed_services:
        lines.append(
            _describe(result.suppressed_services, result.data_drift, result.error_drift).replace(
                " | ", "; "
            )
            + " (suppressed by the cool-down)."
        )
    lines.append(
        "Below, Evidently's data-drift section of each service: its Dataset Drift is "
        "detected when at least the configured number of its metrics drifted, the rule "
        "the decision uses. Forecast-error drift is not part of Evidently's sections."
    )
    return lines


def _head_report_with_decision(report_path: Path, result: DriftResult) -> None:
    """Put the run's decision at the top of the Evidently HTML report."""
    import html

    page = report_path.read_text()
    items = "".join(
        f"<p style='margin:4px 0'>{html.escape(line)}</p>" for line in decision_summary(result)
    )
    banner = (
        "<div id='forescale-decision' style='font-family:sans-serif;padding:12px 16px;"
        "margin:8px;border:2px solid #444;border-radius:6px;background:#fffbe6'>"
        f"<h2 style='margin:0 0 6px 0'>Forescale drift decision</h2>{items}</div>"
    )
    start = page.find("<body")
    insert_at = page.find(">", start) + 1 if start >= 0 else 0
    tmp = report_path.with_suffix(".tmp")
    tmp.write_text(page[:insert_at] + banner + page[insert_at:])
    tmp.replace(report_path)


def _log_to_mlflow(settings: Settings, result: DriftResult, report_path: Path) -> str:
    """Log the run's figures and HTML report to MLflow; returns the MLflow run id."""
    import mlflow

    from models.registry import configure_mlflow

    experiment_id = configure_mlflow(settings, EXPERIMENT_NAME)
    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
    run = client.create_run(
        experiment_id,
        run_name=f"drift-{partition_name(utc_timestamp(result.end))}",
        tags={"forescale.window_end": result.end},
    )
    run_id = run.info.run_id
    client.log_metric(run_id, "drifted_services", float(len(result.drifted_services)))
    client.log_metric(run_id, "suppressed_services", float(len(result.suppressed_services)))
    client.log_metric(run_id, "fleet_drift_share", float(result.fleet_drift_share))
    client.log_metric(run_id, "checked_services", float(len(result.checked_services)))
    client.log_artifact(run_id, str(report_path), artifact_path="drift")
    client.set_terminated(run_id)
    return run_id


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    tmp.replace(path)
