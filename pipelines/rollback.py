"""Live rollback: move ``champion`` back when the model in service does worse than its predecessor.

For each service, the forecasts the champion actually served over the last ``rollback.window_hours``
(the newest forecast issued before each step, from ``artifacts/forecasts``) are compared with the
telemetry that arrived. Their error, as relative MAE against seasonal naive (the same measure as
the backtest), is the champion's *live error*. If it exceeds the previous champion's backtest error
by more than ``rollback.margin`` (a fraction), the ``champion`` alias moves back to the previous
version and the event is logged to MLflow and to ``artifacts/rollbacks.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from core.params import load_params
from core.schema import SERVICE, TS, quantile_column
from core.settings import Settings
from models.metrics import live_errors
from models.registry import CHAMPION, PREVIOUS, champion, configure_mlflow
from pipelines.publish import issued_forecasts

ROLLBACK_EXPERIMENT = "forescale-rollbacks"


@dataclass(frozen=True)
class RollbackDecision:
    """What the check found for one service."""

    service: str
    champion: str | None
    previous: str | None
    live_error: float | None
    previous_backtest_error: float | None
    points: int
    rolled_back: bool
    reason: str


def served_forecasts(
    settings: Settings, service: str, model_label: str, start: pd.Timestamp, end: pd.Timestamp
) -> pd.DataFrame:
    """The forecast in force for each step of ``[start, end)``: the newest one issued before it.

    Args:
        settings: Runtime settings.
        service: Service name.
        model_label: Keep forecasts made by this model version only (``name/version``).
        start: First step.
        end: End of the window (exclusive).

    Returns:
        Rows ``ts, p50, issued`` (empty if none).
    """
    forecasts = issued_forecasts(settings, start - pd.Timedelta(days=1), end, [service])
    forecasts = forecasts[forecasts["model_version"] == model_label]
    if forecasts.empty:
        return pd.DataFrame(columns=[TS, "p50", "issued"])
    forecasts = forecasts[
        (forecasts[TS] >= start) & (forecasts[TS] < end) & (forecasts[TS] >= forecasts["issued"])
    ]
    newest = forecasts.sort_values("issued").groupby(TS, as_index=False).last()
    return newest[[TS, quantile_column(0.5), "issued"]]


def live_error(
    settings: Settings, service: str, model_label: str, now: pd.Timestamp, window_hours: float
) -> tuple[float | None, int]:
    """Relative MAE (vs seasonal naive) of the forecasts a model served in the last hours.

    Args:
        settings: Runtime settings.
        service: Service name.
        model_label: The model version (``name/version``).
        now: End of the window.
        window_hours: Window length.

    Returns:
        ``(error, points)``; error is None when no served forecast met an actual.
    """
    from pipelines.publish import recent_history

    start = now - pd.Timedelta(hours=window_hours)
    served = served_forecasts(settings, service, model_label, start, now)
    actual = recent_history(settings, [service], now, days=int(np.ceil(window_hours / 24)) + 1)
    error = live_errors(served.assign(**{SERVICE: service}), actual).get(service)
    return (None, 0) if error is None else error


def check_rollbacks(
    settings: Settings, services: Sequence[str] | None = None, now: datetime | None = None
) -> Path:
    """Roll back every service whose champion's live error is too much worse than its predecessor.

    Args:
        settings: Runtime settings.
        services: Services to check (default: every service with telemetry).
        now: End of the live window (default: now).

    Returns:
        Path of a JSON file with one decision per service.
    """
    from pipelines.telemetry import list_services

    params = load_params(settings.params_file).get("rollback", {}) or {}
    window = float(params.get("window_hours", 6))
    margin = float(params.get("margin", 0.2))
    min_points = int(params.get("min_points", 12))
    stamp = (
        pd.Timestamp(now, tz="UTC")
        if now is not None and pd.Timestamp(now).tzinfo is None
        else pd.Timestamp(now if now is not None else pd.Timestamp.now(tz="UTC"))
    )
    configure_mlflow(settings)
    decisions = []
    for service in services if services is not None else list_services(settings):
        decisions.append(_decide(settings, service, stamp, window, margin, min_points))
    out = settings.artifacts_dir / "rollbacks" / f"{stamp:%Y%m%dT%H%M}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([asdict(d) for d in decisions], indent=2))
    return out


def _decide(
    settings: Settings,
    service: str,
    now: pd.Timestamp,
    window: float,
    margin: float,
    min_points: int,
) -> RollbackDecision:
    current, previous = champion(service), champion(service, PREVIOUS)
    if current is None or previous is None:
        return RollbackDecision(
            service,
            current.label if current else None,
            None,
            None,
            None,
            0,
            False,
            "no previous champion to roll back to",
        )
    error, points = live_error(settings, service, current.label, now, window)
    limit = previous.backtest_error * (1 + margin)
    rolled_back = False
    if error is None or points < min_points:
        reason = f"only {points} served steps with actuals (need {min_points})"
    elif error <= limit:
        reason = f"live error {error:.3f} within {limit:.3f}"
    else:
        rolled_back = True
        reason = (
            f"live error {error:.3f} over {window:g} h exceeds previous champion's backtest error "
            f"{previous.backtest_error:.3f} by more than {margin:.0%}; champion moved back to "
            f"{previous.label}"
        )
    decision = RollbackDecision(
        service,
        current.label,
        previous.label,
        error,
        previous.backtest_error,
        points,
        rolled_back,
        reason,
    )
    if rolled_back:
        client = MlflowClient()
        client.set_registered_model_alias(current.name, CHAMPION, previous.version)
        client.set_registered_model_alias(current.name, PREVIOUS, current.version)
        _log_event(settings, decision)
    return decision


def _log_event(settings: Settings, decision: RollbackDecision) -> None:
    experiment = configure_mlflow(settings, ROLLBACK_EXPERIMENT)
    with mlflow.start_run(experiment_id=experiment, run_name=f"rollback {decision.service}"):
        mlflow.set_tags(
            {
                "event": "rollback",
                "service": decision.service,
                "from": decision.champion or "",
                "to": decision.previous or "",
                "reason": decision.reason,
            }
        )
        mlflow.log_metrics(
            {
                "live_error": decision.live_error or float("nan"),
                "previous_backtest_error": decision.previous_backtest_error or float("nan"),
            }
        )
    configure_mlflow(settings)
    with (settings.artifacts_dir / "rollbacks.jsonl").open("a") as handle:
        handle.write(json.dumps(asdict(decision)) + "\n")
