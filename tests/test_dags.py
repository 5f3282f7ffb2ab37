"""The Airflow DAGs: integrity (DagBag) and end-to-end runs with ``dag.test()`` on a tiny fleet.

The end-to-end part is ONE module-scoped fixture (``runs``): a 2-service synthetic fleet in one
temporary home and one Airflow metadata DB; it runs telemetry_ingest, forecast_retrain,
schedule_publish, drift_monitor on unshifted then shifted telemetry, and forecast_retrain again
with the drift asset events the monitor emitted, attached to the run the way Airflow's scheduler
attaches them to an asset-triggered run. The tests then only read what the runs left behind.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pandas as pd
import pytest
from conftest import settings_with_params

from core.settings import REPO_ROOT, get_settings

DAGS_FOLDER = REPO_ROOT / "dags"
FIXED_END = pd.Timestamp("2026-11-16 00:00", tz="UTC")  # the seeded fleet is generated up to here
END = FIXED_END  # for the interval tests; the end-to-end fleet is moved to end near now
DAG_IDS = {"telemetry_ingest", "forecast_retrain", "schedule_publish", "drift_monitor", "scorecard"}
SHIFTED = "checkout"  # the two-service synthetic fleet is checkout and search
STEADY = "search"


def _airflow_env(airflow_home: Path) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The repository's DAG folder parsed by Airflow's own DagBag."""
    env = _airflow_env(tmp_path_factory.mktemp("airflow-parse"))
    with mock.patch.dict(os.environ, env):
        from airflow.dag_processing.dagbag import DagBag

        return DagBag(dag_folder=str(DAGS_FOLDER))


def test_dags_import_without_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == DAG_IDS


def test_every_dag_follows_the_conventions(dagbag: Any) -> None:
    for dag_id in DAG_IDS:
        dag = dagbag.dags[dag_id]
        assert "forescale" in dag.tags and len(dag.tags) >= 2, dag_id
        assert dag.catchup is False and dag.max_active_runs == 1, dag_id
        assert dag.doc_md and dag_id in dag.doc_md, dag_id
        for task in dag.tasks:
            assert task.retries >= 0 and task.owner == "forescale", (dag_id, task.task_id)
        assert any(task.retries > 0 for task in dag.tasks), dag_id


def test_schedules(dagbag: Any) -> None:
    from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable, CronTriggerTimetable

    expected = {
        "telemetry_ingest": "*/5 * * * *",
        "schedule_publish": "*/5 * * * *",
        "drift_monitor": "0 * * * *",
        "scorecard": "0 4 * * *",
    }
    for dag_id, cron in expected.items():
        timetable = dagbag.dags[dag_id].timetable
        assert isinstance(timetable, CronDataIntervalTimetable), dag_id
        assert timetable.expression == cron, dag_id
    retrain = dagbag.dags["forecast_retrain"].timetable
    assert isinstance(retrain, AssetOrTimeSchedule)
    assert isinstance(retrain.timetable, CronTriggerTimetable)
    assert retrain.timetable.expression == "0 3 * * 1"
    assert [a.name for a in retrain.asset_condition.objects] == ["forescale_drift"]


def test_training_and_publication_are_mapped_over_shards(dagbag: Any) -> None:
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    retrain = dagbag.dags["forecast_retrain"]
    assert isinstance(retrain.get_task("train_shard"), MappedOperator)
    assert retrain.get_task("train_shard").upstream_task_ids == {"plan_shards", "resolve_trigger"}
    publish = dagbag.dags["schedule_publish"]
    for task_id in ("forecast_shard", "build_schedules", "publish_schedules"):
        assert isinstance(publish.get_task(task_id), MappedOperator), task_id
    assert publish.get_task("prune_runs").upstream_task_ids == {"publish_schedules"}


def test_only_the_drift_announcement_emits_the_asset(dagbag: Any) -> None:
    monitor = dagbag.dags["drift_monitor"]
    outlets = {t.task_id: [o.name for o in t.outlets] for t in monitor.tasks}
    assert outlets == {"check_drift": [], "drift_found": [], "announce_drift": ["forescale_drift"]}
    assert monitor.get_task("announce_drift").upstream_task_ids == {"check_drift", "drift_found"}


# --------------------------------------------------------------------------- end to end

TINY_PARAMS = {
    "fleet": {"services": 2, "seed": 42, "step_minutes": 1},
    "training": {
        "backtest_folds": 1,
        "backtest_horizon_hours": 6,
        "history_days": 7,
        "models": ["naive", "lightgbm"],
        "shard_size": 1,
    },
    "schedule": {"horizon_hours": 6},
    "drift": {"reference_weeks": 1},
}


def _state(dag_run: Any) -> dict[str, str]:
    """``{task_id[map_index]: state}`` of a finished run."""
    return {
        (ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"): str(ti.state)
        for ti in dag_run.get_task_instances()
    }


def _run(dag: Any, logical_date: pd.Timestamp, timings: dict[str, float], key: str) -> Any:
    for task in dag.tasks:  # fail fast: dag.test() would otherwise sleep through retry delays
        task.retries = 0
    started = time.monotonic()
    dag_run = dag.test(logical_date=logical_date.to_pydatetime())
    timings[key] = time.monotonic() - started
    logging.getLogger(__name__).info("dag.test %s: %.1f s", key, timings[key])
    return dag_run


def _attach_queued_drift_events(dag_id: str) -> Any:
    """Wrap dag.test's run creation to consume the queued asset events, as the scheduler does.

    ``dag.test()`` always creates a manual run; Airflow's scheduler creates an asset-triggered
    run by linking the queued events to it (``dag_run.consumed_asset_events``), which is what
    the tasks' ``triggering_asset_events`` is read from.
    """
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, DagScheduleAssetReference
    from airflow.models.dagrun import get_or_create_dagrun
    from sqlalchemy import delete, select

    def create(**kwargs: Any) -> Any:
        dag_run = get_or_create_dagrun(**kwargs)
        session = kwargs["session"]
        scheduled = select(DagScheduleAssetReference.asset_id).where(
            DagScheduleAssetReference.dag_id == dag_id
        )
        events = session.scalars(
            select(AssetEvent)
            .where(AssetEvent.asset_id.in_(scheduled))
            .order_by(AssetEvent.timestamp)
        ).all()
        dag_run.consumed_asset_events.extend(events)
        session.execute(delete(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == dag_id))
        session.commit()
        return dag_run

    return mock.patch("airflow.models.dagrun.get_or_create_dagrun", create)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Seed a tiny fleet, then run every DAG once (and the drift path) with ``dag.test()``."""
    base = tmp_path_factory.mktemp("dags-e2e")
    settings = settings_with_params(base / "home", **TINY_PARAMS)
    env = {
        **_airflow_env(base / "airflow"),
        "FORESCALE_HOME": str(settings.home),
        "FORESCALE_PARAMS_FILE": str(settings.params_file),
    }
    with mock.patch.dict(os.environ, env):
        from airflow import settings as airflow_settings
        from airflow.dag_processing.dagbag import DagBag
        from airflow.models.asset import AssetDagRunQueue, AssetEvent
        from airflow.utils.db import resetdb
        from sqlalchemy import select

        from pipelines.features import apply_features, materialize_features, update_offline_features
        from pipelines.run import ingest_frame
        from pipelines.telemetry import generate_fleet, write_telemetry

        airflow_settings.reconfigure_orm()
        resetdb(skip_init=False)
        timings: dict[str, float] = {}
        started = time.monotonic()
        # The same seeded rows every time, moved in time to end at the current hour: published
        # schedules must lie in the future, and drift results must not depend on the day.
        end = pd.Timestamp.now(tz="UTC").floor("h")
        fleet = generate_fleet(2, 9, seed=42, end=FIXED_END)
        fleet["ts"] = fleet["ts"] + (end - FIXED_END)
        ingest_frame(settings, fleet, end - pd.Timedelta(days=9), end)
        apply_features(settings)
        update_offline_features(settings)
        materialize_features(settings, end.to_pydatetime())
        timings["seed"] = time.monotonic() - started
        logging.getLogger(__name__).info("seeded the tiny fleet in %.1f s", timings["seed"])

        dags = DagBag(dag_folder=str(DAGS_FOLDER)).dags
        out: dict[str, Any] = {"settings": settings, "timings": timings, "end": end}
        out["ingest"] = _run(
            dags["telemetry_ingest"], end + pd.Timedelta(minutes=5), timings, "telemetry_ingest"
        )
        out["retrain"] = _run(dags["forecast_retrain"], end, timings, "forecast_retrain")
        out["publish"] = _run(
            dags["schedule_publish"], end + pd.Timedelta(hours=1), timings, "schedule_publish"
        )
        out["calm_monitor"] = _run(dags["drift_monitor"], end, timings, "drift_monitor_calm")

        with airflow_settings.Session() as session:
            out["events_before_shift"] = session.scalars(select(AssetEvent)).all()
        last_day = fleet[fleet["ts"] >= end - pd.Timedelta(days=1)].copy()
        last_day.loc[last_day["service"] == SHIFTED, ["requests", "cpu"]] *= 2.0
        write_telemetry(settings, last_day, end - pd.Timedelta(days=1), end)
        out["drift_monitor"] = _run(
            dags["drift_monitor"], end + pd.Timedelta(hours=1), timings, "drift_monitor_drift"
        )
        with airflow_settings.Session() as session:
            out["events"] = [
                (e.asset.name, dict(e.extra)) for e in session.scalars(select(AssetEvent)).all()
            ]
            out["queued"] = [q.target_dag_id for q in session.scalars(select(AssetDagRunQueue))]
        with _attach_queued_drift_events("forecast_retrain"):
            out["drift_retrain"] = _run(
                dags["forecast_retrain"],
                end + pd.Timedelta(hours=2),
                timings,
                "forecast_retrain_drift",
            )
        yield out


def _xcom(dag_run: Any, task_id: str) -> Any:
    return next(ti for ti in dag_run.get_task_instances() if ti.task_id == task_id).xcom_pull(
        task_ids=task_id
    )


@pytest.mark.slow
def test_ingest_validates_stores_and_materializes_the_interval(runs: dict[str, Any]) -> None:
    from pipelines.telemetry import read_telemetry

    assert set(_state(runs["ingest"]).values()) == {"success"}, _state(runs["ingest"])
    settings = runs["settings"]
    end = runs["end"]
    stored = read_telemetry(settings, start=end, end=end + pd.Timedelta(minutes=5))
    assert len(stored) == 2 * 5 and set(stored["service"]) == {SHIFTED, STEADY}
    assert not list(settings.staging_dir.glob("*.parquet"))


@pytest.mark.slow
def test_scheduled_retrain_trains_every_shard_and_records_the_reason(runs: dict[str, Any]) -> None:
    states = _state(runs["retrain"])
    assert states == {
        "resolve_trigger": "success",
        "plan_shards": "success",
        "train_shard[0]": "success",
        "train_shard[1]": "success",
        "summarize": "success",
        "train_anomaly_model": "success",
    }, states
    summary = json.loads(Path(_xcom(runs["retrain"], "summarize")).read_text())
    assert summary["reason"] == "schedule" and summary["services"] is None
    trained = sorted(
        s["service"] for shard in summary["shards"] for s in shard["summary"]["services"]
    )
    assert trained == [SHIFTED, STEADY]


@pytest.mark.slow
def test_publication_serves_a_schedule_per_service(runs: dict[str, Any]) -> None:
    from serving.store import ScheduleStore

    states = _state(runs["publish"])
    assert set(states.values()) == {"success"} and "check_rollbacks" in states, states
    rollbacks = json.loads(Path(_xcom(runs["publish"], "check_rollbacks")).read_text())
    assert {d["service"] for d in rollbacks} == {SHIFTED, STEADY}
    assert not any(d["rolled_back"] for d in rollbacks)  # first champions: nothing to go back to
    store = ScheduleStore(runs["settings"].schedule_db)
    for service in (SHIFTED, STEADY):
        schedule = store.latest(service)
        assert schedule is not None and len(schedule.steps) == 6 * 12


@pytest.mark.slow
def test_calm_fleet_emits_no_drift_event(runs: dict[str, Any]) -> None:
    states = _state(runs["calm_monitor"])
    assert states == {
        "check_drift": "success",
        "drift_found": "success",
        "announce_drift": "skipped",
    }, states
    assert runs["events_before_shift"] == []


@pytest.mark.slow
def test_shifted_fleet_emits_the_drift_event_that_queues_a_retrain(runs: dict[str, Any]) -> None:
    assert set(_state(runs["drift_monitor"]).values()) == {"success"}
    [(name, extra)] = runs["events"]
    assert name == "forescale_drift" and extra["services"] == [SHIFTED]
    assert Path(extra["report"]).is_file() and extra["report"].endswith("report.html")
    assert runs["queued"] == ["forecast_retrain"]


@pytest.mark.slow
def test_drift_triggered_retrain_trains_only_the_drifted_service(runs: dict[str, Any]) -> None:
    import mlflow

    states = _state(runs["drift_retrain"])
    assert states == {
        "resolve_trigger": "success",
        "plan_shards": "success",
        "train_shard[0]": "success",
        "summarize": "success",
        "train_anomaly_model": "success",
    }, states
    summary = json.loads(Path(_xcom(runs["drift_retrain"], "summarize")).read_text())
    [(_, extra)] = runs["events"]
    assert summary["reason"] == "drift" and summary["services"] == [SHIFTED]
    assert summary["report"] == extra["report"]
    [shard] = summary["shards"]
    assert shard["summary"]["reason"] == "drift"
    client = mlflow.MlflowClient(tracking_uri=runs["settings"].tracking_uri)
    run = client.get_run(shard["summary"]["services"][0]["run_id"])
    assert run.data.tags["reason"] == "drift"


def test_manual_runs_without_an_interval_work_on_the_last_whole_interval() -> None:
    from dags._common import run_interval

    start, end = END.to_pydatetime(), (END + pd.Timedelta(minutes=5)).to_pydatetime()
    assert run_interval(start, end, None, 5) == (start, end)
    run_after = (END + pd.Timedelta(minutes=7, seconds=42)).to_pydatetime()
    assert run_interval(None, None, run_after, 5) == (start, end)
    assert run_interval(end, end, None, 5) == (start, end)  # a trigger timetable's empty interval
    with pytest.raises(ValueError, match="run_after"):
        run_interval(None, None, None, 5)


def test_local_stack_environment(tmp_path: Path) -> None:
    from pipelines.local_stack import StackPorts, service_commands, stack_environment

    ports = StackPorts.from_env({"FORESCALE_AIRFLOW_PORT": "18080"})
    assert (ports.airflow, ports.mlflow, ports.api) == (18080, 5000, 8000)
    with pytest.raises(ValueError, match="FORESCALE_API_PORT"):
        StackPorts.from_env({"FORESCALE_API_PORT": "http"})
    settings = get_settings(home=tmp_path / "home")
    env = stack_environment(settings, ports)
    assert env["AIRFLOW_HOME"] == str(settings.airflow_home)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(DAGS_FOLDER)
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4" and env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith(f"sqlite:///{settings.home}")
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    mlflow = service_commands(settings, ports)["mlflow"]
    assert mlflow[mlflow.index("--backend-store-uri") + 1] == settings.tracking_uri
