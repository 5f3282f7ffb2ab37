"""The go-live gate stage: move services between ``shadow`` and ``active`` on their scorecards.

:func:`apply_gate` reads each service's recent scorecard days from the store, decides with
:func:`core.gate.next_mode`, records every move (with its reason) in the store, from where the
serving API reads it within a second, and logs one MLflow run per evaluation (experiment
``forescale-gate``: per moved service a ``move.<service>`` tag and ``mode.<service>`` metric, the
whole evaluation as ``gate.json``). With ``gate.auto`` off nothing is recorded: the run lists
the moves the gate proposes, and ``params.yaml``'s ``mode`` alone decides what is served.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow

from core.gate import effective_mode, next_mode, streaks
from core.params import load_config
from core.service_config import ACTIVE, default_service_config, load_service_configs
from core.settings import Settings
from models.registry import configure_mlflow
from serving.store import ScheduleStore

LOG = logging.getLogger(__name__)
GATE_EXPERIMENT = "forescale-gate"


@dataclass(frozen=True)
class GateOutcome:
    """The gate's evaluation of one service.

    Attributes:
        service: The service.
        mode: The mode it was in before the evaluation.
        moved_to: The mode the gate moves it to (None: it stays).
        reason: Why it moves, or why it stays.
        applied: Whether the move was recorded (``gate.auto``).
        passing_days: Consecutive passing days ending with its newest scorecard day.
        failing_days: Consecutive failing days ending with its newest scorecard day.
        newest_day: Its newest scorecard day considered (ISO date), if any.
    """

    service: str
    mode: str
    moved_to: str | None
    reason: str
    applied: bool
    passing_days: int
    failing_days: int
    newest_day: str | None


def apply_gate(
    settings: Settings, store: ScheduleStore, as_of: datetime | None = None
) -> list[GateOutcome]:
    """Evaluate the go-live gate for every service with scorecards, and record its moves.

    The days considered are the complete UTC days before ``as_of``'s day, at most
    ``max(gate.pass_days, gate.fail_days) + 1`` of them (a scorecard one day late still counts;
    an older history cannot move a service).

    Args:
        settings: Runtime settings (``params_file``, MLflow).
        store: The store holding the scorecards and the gate's moves.
        as_of: The evaluation instant (aware; default: now).

    Returns:
        One outcome per service with scorecards, sorted by service.

    Raises:
        ValueError: If ``as_of`` is naive or the parameters file is invalid.
    """
    as_of = as_of or datetime.now(UTC)
    if as_of.tzinfo is None:
        raise ValueError(f"as_of {as_of.isoformat()} must be timezone-aware")
    as_of = as_of.astimezone(UTC)
    gate = load_config(settings.params_file).gate
    configured = load_service_configs(settings.params_file)
    default = default_service_config(settings.params_file)
    until = as_of.date() - timedelta(days=1)
    since = until - timedelta(days=max(gate.pass_days, gate.fail_days))
    outcomes: list[GateOutcome] = []
    for service in store.scorecard_services():
        config = configured.get(service, default)
        current = effective_mode(config.mode, store.current_mode(service), gate.auto)  # type: ignore[arg-type]
        cards = store.scorecards(service, since=since, until=until)
        passing, failing = streaks(cards, gate.pod_hour_budget)
        decision = next_mode(current, cards, gate)
        if decision is None:
            needed = gate.pass_days if current != ACTIVE else gate.fail_days
            streak = passing if current != ACTIVE else failing
            kind = "passing" if current != ACTIVE else "failing"
            reason = f"stays {current}: {streak} of {needed} consecutive {kind} days"
        else:
            reason = decision.reason
            if gate.auto:
                store.record_mode_change(service, as_of, current, decision.mode, reason)
                LOG.info("gate: %s %s -> %s: %s", service, current, decision.mode, reason)
            else:
                LOG.info("gate (auto off) proposes %s %s -> %s", service, current, decision.mode)
        outcomes.append(
            GateOutcome(
                service=service,
                mode=current,
                moved_to=None if decision is None else decision.mode,
                reason=reason,
                applied=decision is not None and gate.auto,
                passing_days=passing,
                failing_days=failing,
                newest_day=cards[0].day.isoformat() if cards else None,
            )
        )
    _log_run(settings, as_of, gate.auto, outcomes)
    return outcomes


def _log_run(settings: Settings, as_of: datetime, auto: bool, outcomes: list[GateOutcome]) -> str:
    """One MLflow run for the evaluation; returns its id."""
    experiment = configure_mlflow(settings, GATE_EXPERIMENT)
    moved = [outcome for outcome in outcomes if outcome.moved_to is not None]
    with mlflow.start_run(experiment_id=experiment, run_name=f"gate {as_of:%Y-%m-%d %H:%M}") as run:
        mlflow.set_tags(
            {
                "event": "gate",
                "as_of": as_of.isoformat(),
                "auto": str(auto).lower(),
                "moved": ",".join(o.service for o in moved if o.applied),
                "proposed": ",".join(o.service for o in moved if not o.applied),
            }
        )
        for outcome in moved:
            verb = "moved" if outcome.applied else "proposed"
            mlflow.set_tag(
                f"move.{outcome.service}",
                f"{verb} {outcome.mode} -> {outcome.moved_to}: {outcome.reason}"[:5000],
            )
        metrics = {
            "services_evaluated": float(len(outcomes)),
            "services_moved": float(sum(o.applied for o in moved)),
            "services_proposed": float(sum(not o.applied for o in moved)),
        }
        for outcome in moved:
            metrics[f"mode.{outcome.service}"] = 1.0 if outcome.moved_to == ACTIVE else 0.0
            metrics[f"passing_days.{outcome.service}"] = float(outcome.passing_days)
            metrics[f"failing_days.{outcome.service}"] = float(outcome.failing_days)
        mlflow.log_metrics(metrics)
        mlflow.log_dict(
            {"as_of": as_of.isoformat(), "auto": auto, "services": [asdict(o) for o in outcomes]},
            "gate.json",
        )
        run_id = run.info.run_id
    configure_mlflow(settings)
    out = gate_record_path(settings, as_of)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "as_of": as_of.isoformat(),
                "auto": auto,
                "mlflow_run_id": run_id,
                "services": [asdict(o) for o in outcomes],
            },
            indent=2,
        )
    )
    return run_id


def run_gate(settings: Settings, as_of: datetime | None = None) -> Path:
    """:func:`apply_gate` on the settings' schedule store (the daily scorecard DAG's last task).

    Args:
        settings: Runtime settings.
        as_of: The evaluation instant (aware; default: now).

    Returns:
        The evaluation's JSON under ``artifacts/gate/``.
    """
    as_of = (as_of or datetime.now(UTC)).astimezone(UTC)
    store = ScheduleStore(settings.schedule_db)
    try:
        apply_gate(settings, store, as_of)
    finally:
        store.dispose()
    return gate_record_path(settings, as_of)


def gate_record_path(settings: Settings, as_of: datetime) -> Path:
    """Where the evaluation at ``as_of`` (UTC) is kept: ``artifacts/gate/<as_of>.json``."""
    return settings.artifacts_dir / "gate" / f"{as_of:%Y%m%dT%H%M}.json"
