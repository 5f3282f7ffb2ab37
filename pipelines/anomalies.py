"""Anomaly stage: train, backtest and register the detector; score new telemetry online.

The detector (:class:`models.anomaly.AnomalyDetector`) scores each 5-minute point of a service's
request rate from that point and its past only. It is one global registered model,
``forescale-anomaly``, with its own ``champion`` alias.

*Backtest.* Known anomalies are injected into a copy of the last days of each service of a fixed
sample (:func:`backtest_sample`, ``anomaly.backtest_services``): a spike, a level drop and a
dropout to zero; the detector scores the copy online after the real history.
Its error is the share of injected events it misses (no flag within ``detect_within`` steps of
the onset) plus ``false_alarm_cost`` per false alarm per day on the untouched series. A new
version becomes champion only if its error is lower than the champion's on the same data.

*Scoring.* :func:`score_anomalies` (a task of ``telemetry_ingest``) scores the points of an
interval after the service's recent history and writes them to the serving store, where the API
exposes them and training skips flagged points.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa

from core.params import load_config
from core.schema import SERVICE, TARGET, TS, TS_DTYPE, path_under, write_parquet_atomically
from core.settings import Settings
from models.anomaly import IS_ANOMALY, AnomalyDetector, DetectorSettings
from models.registry import (
    RegisteredVersion,
    configure_mlflow,
    promote,
    tag_version,
    version_by_alias,
)

log = logging.getLogger(__name__)

ANOMALY_MODEL = "forescale-anomaly"
ANOMALY_EXPERIMENT = "forescale-anomaly"


@dataclass(frozen=True)
class AnomalyConfig:
    """The ``anomaly`` section of params.yaml (the detector's settings are its ``detector``)."""

    threshold: float
    context_days: int
    backtest_days: int
    backtest_services: int
    detect_within: int
    false_alarm_cost: float
    backfill_hours: float
    detector: DetectorSettings

    @classmethod
    def from_params(cls, settings: Settings) -> AnomalyConfig:
        """Read the section of the runtime's parameters file."""
        return cls.from_file(settings.params_file)

    @classmethod
    def from_file(cls, params_file: Path) -> AnomalyConfig:
        """Read the section (defaults where a key is absent).

        Raises:
            ValueError: If the file is unreadable or a detector setting is unknown or invalid.
        """
        params = load_config(params_file).anomaly
        return cls(
            threshold=params.threshold,
            context_days=params.context_days,
            backtest_days=params.backtest_days,
            backtest_services=params.backtest_services,
            detect_within=params.detect_within_steps,
            false_alarm_cost=params.false_alarm_cost,
            backfill_hours=params.backfill_hours,
            detector=DetectorSettings.from_mapping(
                params.detector, f"{params_file}: anomaly.detector"
            ),
        )

    def new_detector(self) -> AnomalyDetector:
        """A detector with these settings and threshold (the product's and the benchmark's)."""
        return AnomalyDetector(settings=self.detector, threshold=self.threshold)


class DetectorPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper: input long-format telemetry, output scores and flags."""

    def load_context(self, context: Any) -> None:
        """Load the detector from the model's artifacts."""
        self.detector = AnomalyDetector.load(Path(context.artifacts["detector"]))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Score the rows (online, each from its past within the input)."""
        return self.detector.score(model_input, update_context=False)


def inject_anomalies(series: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, list[int]]:
    """Copy one service's rows with a spike, a level drop and a dropout injected.

    Args:
        series: One service's rows (``ts``, ``requests``) in time order, at least 60 rows.
        seed: Where in the series the events go.

    Returns:
        The modified copy and the row positions where each event starts.

    Raises:
        ValueError: If the series is too short to hold three separated events.
    """
    n = len(series)
    if n < 60:
        raise ValueError(f"need at least 60 rows to inject anomalies, got {n}")
    rng = np.random.default_rng(seed)
    third = n // 3
    onsets = [int(rng.integers(k * third + 5, (k + 1) * third - 15)) for k in range(3)]
    values = series[TARGET].to_numpy(float).copy()
    values[onsets[0] : onsets[0] + 3] *= 4.0  # spike
    values[onsets[1] : onsets[1] + 12] *= 0.3  # level drop for an hour
    values[onsets[2] : onsets[2] + 12] = 0.0  # dropout for an hour
    return series.assign(**{TARGET: values}), onsets


def backtest_detector(
    detector: AnomalyDetector, history: pd.DataFrame, config: AnomalyConfig
) -> dict[str, float]:
    """Error of a detector on injected anomalies and false alarms (see module docstring).

    Args:
        detector: The detector to evaluate (its settings and threshold).
        history: Long frame ``service, ts, requests`` at 5 minutes.
        config: Anomaly parameters.

    Returns:
        ``recall``, ``false_alarms_per_day`` and ``error`` (lower is better).
    """
    split = history[TS].max() - pd.Timedelta(days=config.backtest_days)
    past, recent = history[history[TS] <= split], history[history[TS] > split]
    hits, events, false_alarms = 0, 0, 0
    for index, (service, rows) in enumerate(recent.groupby(SERVICE, sort=True)):
        rows = rows.reset_index(drop=True)
        context = past[past[SERVICE] == service]
        clean = _scored(detector, context, rows)
        false_alarms += int(clean[IS_ANOMALY].sum())
        injected, onsets = inject_anomalies(rows, seed=index)
        flags = _scored(detector, context, injected)[IS_ANOMALY].to_numpy()
        for onset in onsets:
            events += 1
            hits += bool(flags[onset : onset + config.detect_within].any())
    days = config.backtest_days * max(recent[SERVICE].nunique(), 1)
    recall = hits / events if events else float("nan")
    per_day = false_alarms / days
    return {
        "recall": recall,
        "false_alarms_per_day": per_day,
        "error": (1 - recall) + config.false_alarm_cost * per_day,
    }


def backtest_sample(services: Sequence[str], size: int) -> list[str]:
    """The services the detector is backtested on: at most ``size``, a fixed sample.

    The detector is one model for the fleet, so its backtest needs a sample of services, not
    every one. A service's place in the order is the SHA-256 of its name: the same services
    are chosen from run to run, and adding services replaces a sampled one only when the new
    name sorts earlier.

    Args:
        services: Every service.
        size: Most services in the sample.

    Returns:
        The chosen services, sorted by name.
    """
    ranked = sorted(set(services), key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    return sorted(ranked[:size])


def _scored(detector: AnomalyDetector, context: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    probe = AnomalyDetector(detector.settings, detector.threshold, TARGET)
    if not context.empty:
        probe.fit(context)
    return probe.score(rows.assign(**{SERVICE: rows[SERVICE].iloc[0]}))


def train_anomaly_model(
    settings: Settings, services: Sequence[str] | None = None, as_of: datetime | None = None
) -> Path:
    """Backtest the detector, register it, and promote it if it beats the champion.

    Args:
        settings: Runtime settings.
        services: The fleet (default: all with telemetry); the backtest runs on a fixed sample
            of at most ``anomaly.backtest_services`` of them (:func:`backtest_sample`).
        as_of: End of the history (default: end of stored telemetry).

    Returns:
        Path of a JSON summary.
    """
    from pipelines.publish import recent_history
    from pipelines.telemetry import list_services, resolve_as_of

    config = AnomalyConfig.from_params(settings)
    end = resolve_as_of(settings, as_of)
    names = list(services) if services is not None else list_services(settings)
    sample = backtest_sample(names, config.backtest_services)
    history = recent_history(settings, sample, end, days=config.context_days)
    candidate = config.new_detector()
    figures = backtest_detector(candidate, history, config)
    configure_mlflow(settings, ANOMALY_EXPERIMENT)
    with mlflow.start_run(run_name="anomaly detector"):
        mlflow.log_params(
            {
                "threshold": config.threshold,
                "detector": candidate.name,
                "services": len(names),
                "backtest_services": len(sample),
                **{f"setting_{k}": v for k, v in vars(candidate.settings).items()},
            }
        )
        mlflow.log_metrics(figures)
        registered = _log_detector(candidate, figures["error"])
        current = version_by_alias(ANOMALY_MODEL)
        champion_error = None
        if current is not None:
            champion_error = backtest_detector(_load_detector(current), history, config)["error"]
        promoted = champion_error is None or figures["error"] < champion_error
        if promoted:
            promote(registered)
        mlflow.set_tag("promoted", str(promoted))
    out = settings.artifacts_dir / "anomaly" / f"{end:%Y%m%dT%H%M}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "version": registered.label,
                "promoted": promoted,
                "champion_error": champion_error,
                **figures,
            },
            indent=2,
        )
    )
    return out


def _log_detector(detector: AnomalyDetector, error: float) -> RegisteredVersion:
    from models.registry import log_registered_pyfunc

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "detector"
        AnomalyDetector(detector.settings, detector.threshold, detector.target).save(path)
        version = log_registered_pyfunc(
            ANOMALY_MODEL, "detector", DetectorPyfunc(), {"detector": str(path)}
        )
    return tag_version(ANOMALY_MODEL, version, detector.name, error)


def _load_detector(version: RegisteredVersion) -> AnomalyDetector:
    model = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
    return model.unwrap_python_model().detector


def score_anomalies(
    settings: Settings, start: datetime, end: datetime, services: Sequence[str] | None = None
) -> Path:
    """Score the 5-minute points up to ``end`` with the champion detector and store them.

    Each service is scored from ``start``, or from earlier when it has unscored points: after
    its last scored point, at most ``anomaly.backfill_hours`` back. So the first run after a
    detector is promoted, or after downtime, catches up instead of leaving a hole.

    The detector keeps each service's context (its last ``anomaly.context_days`` of rows and
    what scoring computed for them) in the state folder between runs, so a run reads only the
    last ``anomaly.backfill_hours`` of telemetry and computes only the new rows. A service whose
    context is missing, or does not end with that window of its stored telemetry row for row
    (a new champion, rows that changed in it), is scored after its last
    ``anomaly.context_days`` of telemetry instead; a change to older stored rows is not looked
    for (their scores were given when they were new). Each service's context is saved as it is
    scored and the run's scores are stored at the end, in one transaction: a run that fails in
    between leaves contexts ahead of the store, and the next run rebuilds those services from
    their stored telemetry.

    Args:
        settings: Runtime settings.
        start: Interval start.
        end: Interval end (exclusive).
        services: Services to score (default: all with telemetry).

    Returns:
        Path of a Parquet file with ``service, ts, score, is_anomaly`` (empty when no detector
        has been promoted yet).
    """
    from pipelines.features import model_inputs
    from pipelines.telemetry import list_services
    from serving.store import ScheduleStore

    start_ts, end_ts = pd.Timestamp(start), pd.Timestamp(end)
    out = settings.artifacts_dir / "anomaly" / "scores" / f"{start_ts:%Y%m%dT%H%M}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    empty = pd.DataFrame(columns=[SERVICE, TS, "score", IS_ANOMALY])
    configure_mlflow(settings, ANOMALY_EXPERIMENT)
    current = version_by_alias(ANOMALY_MODEL)
    if current is None:
        empty.to_parquet(out)
        return out
    detector = _load_detector(current)
    config = AnomalyConfig.from_params(settings)
    names = list(services) if services is not None else list_services(settings)
    state = _scoring_state_dir(settings, current)
    store = ScheduleStore(settings.schedule_db)
    parts = []

    kept_from = end_ts - pd.Timedelta(days=config.context_days)
    window = pd.Timedelta(hours=config.backfill_hours)
    recent = model_inputs(settings, names, end_ts - window, end_ts)
    begins = _first_unscored(store, names, start_ts, end_ts, window, settings.step_minutes)
    without_context: dict[str, pd.Timestamp] = {}
    for service, rows in recent.groupby(SERVICE, sort=True):
        service = str(service)
        begin = begins[service]
        fresh = rows[rows[TS] >= begin].reset_index(drop=True)
        if fresh.empty:
            continue
        _load_context(detector, state, service)
        if detector.context_continues(service, rows[rows[TS] < begin]):
            parts.append(_score_and_keep(detector, state, service, fresh, kept_from))
        else:
            detector.context.pop(service, None)
            without_context[service] = begin
    if without_context:
        history = model_inputs(settings, list(without_context), kept_from, end_ts)
        for service, rows in history.groupby(SERVICE, sort=True):
            begin = without_context[str(service)]
            detector.set_context(str(service), rows[rows[TS] < begin])
            fresh = rows[rows[TS] >= begin].reset_index(drop=True)
            parts.append(_score_and_keep(detector, state, str(service), fresh, kept_from))
    scored = pd.concat(parts, ignore_index=True).sort_values([SERVICE, TS]) if parts else empty
    store.record_anomalies_of(
        {
            str(service): [
                {
                    "ts": r.ts.to_pydatetime(),
                    "score": float(r.score),
                    "is_anomaly": bool(r.is_anomaly),
                }
                for r in rows.itertuples()
            ]
            for service, rows in scored.groupby(SERVICE, sort=True)
        }
    )
    scored.to_parquet(out, index=False)
    return out


def _scoring_state_dir(settings: Settings, version: RegisteredVersion) -> Path:
    """Where the champion detector keeps each service's scoring context between runs.

    One folder per registered detector (its version and the run that logged it); folders of
    other detectors are deleted (a new champion starts from the stored history).
    """
    root = settings.artifacts_dir / "anomaly" / "state"
    current = path_under(root, f"v{version.version}-{version.run_id or 'unknown'}")
    if root.is_dir():
        for folder in root.iterdir():
            if folder != current:
                shutil.rmtree(folder, ignore_errors=True)
    current.mkdir(parents=True, exist_ok=True)
    return current


def _load_context(detector: AnomalyDetector, state: Path, service: str) -> None:
    """Give the detector the service's context saved by the previous run, if any (a file that
    cannot be read as one is logged, deleted and treated as missing)."""
    file = path_under(state, f"{service}.parquet")
    if not file.is_file():
        return
    try:
        context = pd.read_parquet(file)
        context[TS] = context[TS].astype(TS_DTYPE)
        if detector.target not in context:
            raise ValueError(f"no {detector.target!r} column")
    except (OSError, ValueError, KeyError, pa.ArrowException) as err:
        log.warning("%s: unreadable anomaly scoring context %s (%s): rebuilt", service, file, err)
        file.unlink(missing_ok=True)
        return
    detector.context[service] = context


def _score_and_keep(
    detector: AnomalyDetector,
    state: Path,
    service: str,
    fresh: pd.DataFrame,
    kept_from: pd.Timestamp,
) -> pd.DataFrame:
    """Score a service's new rows after its context and keep the context's rows from
    ``kept_from`` on for the next run (the span a run without a kept context reads).

    Returns:
        The scores (``service, ts, score, is_anomaly``).
    """
    scores = detector.score(fresh)
    context = detector.context.pop(service)
    write_parquet_atomically(
        context[context[TS] >= kept_from].reset_index(drop=True),
        path_under(state, f"{service}.parquet"),
    )
    return scores


def _first_unscored(
    store: Any,
    services: Sequence[str],
    start: pd.Timestamp,
    end: pd.Timestamp,
    backfill: pd.Timedelta,
    step_minutes: int,
) -> dict[str, pd.Timestamp]:
    """Where scoring of each service starts: ``start``, or its first unscored point of the
    ``backfill`` before ``end`` if earlier (one read of the store for all services)."""
    earliest = end - backfill
    latest = store.last_scored(services, earliest.to_pydatetime(), end.to_pydatetime())
    step = pd.Timedelta(minutes=step_minutes)
    return {
        str(service): min(start, pd.Timestamp(latest[service]) + step)
        if service in latest
        else min(start, earliest)
        for service in services
    }
