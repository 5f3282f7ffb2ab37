"""The whole pipeline once, in-process: telemetry -> validation -> features -> training -> schedule.

This is what ``forescale pipeline run`` and ``dvc repro`` execute without a scheduler; the Airflow
DAGs call the same stage functions one task at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.schema import utc_timestamp
from core.settings import Settings

Progress = Callable[[str], None]


TRAINED = "trained"
NOT_TRAINED = "not_trained"


@dataclass(frozen=True)
class ServiceSummary:
    """One line of the run summary.

    A service training left out (``status`` ``not_trained``, a cold start) has no family, model
    or schedule: ``family`` and ``model_version`` are empty, ``backtest_error`` is NaN,
    ``peak_replicas`` 0, and ``reason`` says why (e.g. ``"not enough history (2.0 of 4 days)"``).
    """

    service: str
    family: str
    model_version: str
    promoted: bool
    backtest_error: float
    peak_replicas: int
    schedule_version: int | None
    status: str = TRAINED
    reason: str = ""

    @classmethod
    def not_trained(cls, service: str, reason: str) -> ServiceSummary:
        """The summary of a service training left out."""
        return cls(service, "", "", False, float("nan"), 0, None, NOT_TRAINED, reason)


def summary_records(summaries: list[ServiceSummary]) -> list[dict[str, object]]:
    """The run summary as JSON records (what ``forescale pipeline run --json`` writes).

    Args:
        summaries: One summary per service.

    Returns:
        Per service: ``service``, ``status`` (``trained`` or ``not_trained``), ``reason`` (why
        not trained, else empty), ``family``, ``version`` (the registered version number),
        ``backtest_error``, ``promoted`` and ``peak_replicas``; ``family``, ``version`` and
        ``backtest_error`` are null for a service that was not trained.
    """
    return [
        {
            "service": s.service,
            "status": s.status,
            "reason": s.reason,
            "family": s.family or None,
            "version": s.model_version.rpartition("/")[2] or None,
            "backtest_error": None if s.status != TRAINED else float(s.backtest_error),
            "promoted": bool(s.promoted),
            "peak_replicas": int(s.peak_replicas),
        }
        for s in summaries
    ]


def ingest_frame(
    settings: Settings, frame: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp
) -> list[Path]:
    """Validate a frame as one batch and store it (quarantined and raised if invalid).

    Args:
        settings: Runtime settings.
        frame: Long-format telemetry.
        start: Batch interval start.
        end: Batch interval end (exclusive).

    Returns:
        The day files written.
    """
    from pipelines.telemetry import stage_frame, store_batch
    from pipelines.validation import validate_batch

    batch = stage_frame(settings, frame, start, end)
    return store_batch(settings, validate_batch(settings, batch, start, end))


def store_and_featurize(
    settings: Settings, frame: pd.DataFrame, step: pd.Timedelta, progress: Progress = lambda _: None
) -> pd.Timestamp:
    """Validate and store a frame of telemetry, then apply, update and materialize the features.

    Args:
        settings: Runtime settings.
        frame: Long-format telemetry.
        step: The frame's resolution (its interval ends one step after the last row).
        progress: Called with one line per step.

    Returns:
        The end of the stored interval.
    """
    from pipelines.features import apply_features, materialize_features, update_offline_features

    start, end = frame["ts"].min(), frame["ts"].max() + step
    progress(f"validating and storing {len(frame):,} rows ({start} .. {end})")
    ingest_frame(settings, frame, start, end)
    progress("feature store: apply, offline aggregates, materialize")
    apply_features(settings)
    update_offline_features(settings)
    materialize_features(settings, end.to_pydatetime())
    return end


def run_pipeline(
    settings: Settings,
    services: int = 5,
    days: int = 14,
    source_dir: Path | None = None,
    step_minutes: int = 1,
    seed: int = 42,
    progress: Progress = lambda _: None,
    run_end: pd.Timestamp | None = None,
) -> list[ServiceSummary]:
    """Run every stage once on a synthetic fleet (or on files) and publish the schedules.

    Args:
        settings: Runtime settings (state goes under ``settings.home``).
        services: Number of synthetic services (ignored with ``source_dir``).
        days: Days of synthetic history ending now (ignored with ``source_dir``).
        source_dir: Import these CSV/Parquet files instead of generating a fleet.
        step_minutes: Resolution of the synthetic telemetry.
        seed: Seed of the synthetic fleet.
        progress: Called with one line per step, for the terminal.
        run_end: The instant the run acts at: the synthetic history ends there and the schedules are
            published as of it (default: now). Tests pin it so that nothing depends on the hour.

    Returns:
        One summary per service.
    """
    from pipelines.anomalies import score_anomalies, train_anomaly_model
    from pipelines.publish import build_schedules, forecast_shard, publish_schedules
    from pipelines.telemetry import FileSource, generate_fleet
    from pipelines.training import plan_shards, train_shard

    settings.ensure_dirs()
    if source_dir is not None:
        progress(f"reading telemetry files under {source_dir}")
        frame = FileSource(source_dir).read_all()
    else:
        progress(f"generating {services} services x {days} days at {step_minutes}-minute steps")
        frame = generate_fleet(services, days, step_minutes=step_minutes, seed=seed, end=run_end)
    end = store_and_featurize(settings, frame, pd.Timedelta(minutes=step_minutes), progress)
    start = frame["ts"].min()

    progress("anomaly detector: backtest, register, score the history")
    train_anomaly_model(settings, as_of=end)
    flagged = pd.read_parquet(score_anomalies(settings, start, end))
    progress(
        f"{int(flagged['is_anomaly'].sum())} anomalous 5-minute points flagged "
        "(excluded from training)"
    )

    clock = utc_timestamp(run_end) if run_end is not None else pd.Timestamp.now(tz="UTC")
    publishable = end > clock - pd.Timedelta(hours=1)
    if not publishable:
        progress(
            f"the data ends at {end}, in the past: schedules are built but not published "
            "(the API only accepts schedules for the future)"
        )
    shards = plan_shards(settings)
    summaries: list[ServiceSummary] = []
    trained: dict[str, dict] = {}
    cold: dict[str, str] = {}
    for index, shard in enumerate(shards, 1):
        progress(f"training shard {index}/{len(shards)}: {', '.join(shard)}")
        result = json.loads(
            train_shard(settings, shard, reason="manual", as_of=end, progress=progress).read_text()
        )
        trained.update({r["service"]: r for r in result["services"]})
        cold.update(result.get("not_trained") or {})
    if cold:
        progress(
            f"{len(cold)} service(s) not trained (cold start, served the reactive floor): "
            + "; ".join(f"{service}: {why}" for service, why in sorted(cold.items()))
        )
    for index, shard in enumerate(shards, 1):
        progress(f"scheduling shard {index}/{len(shards)}")
        schedules = build_schedules(settings, forecast_shard(settings, shard, as_of=end))
        published = (
            json.loads(
                publish_schedules(
                    settings, schedules, as_of=clock, now=clock.to_pydatetime()
                ).read_text()
            )
            if publishable
            else _unpublished_summary(schedules)
        )
        for service in shard:
            if service not in trained:
                summaries.append(
                    ServiceSummary.not_trained(service, cold.get(service, "not trained"))
                )
                continue
            t, p = trained[service], published[service]
            summaries.append(
                ServiceSummary(
                    service,
                    t["family"],
                    p["model_version"],
                    t["promoted"],
                    t["backtest_error"],
                    p["peak_replicas"],
                    p["version"],
                )
            )
    return summaries


def _unpublished_summary(schedules_path: Path) -> dict[str, dict]:
    """What publish_schedules would report, for schedules that are not published."""
    schedules = pd.read_parquet(schedules_path)
    if schedules.empty:
        return {}
    return {
        str(service): {
            "model_version": str(rows["model_version"].iloc[0]),
            "peak_replicas": int(rows["replicas"].max()),
            "version": None,
        }
        for service, rows in schedules.groupby("service")
    }
