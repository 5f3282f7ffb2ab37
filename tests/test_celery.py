"""The distributed engine by configuration alone: Airflow's CeleryExecutor with two workers.

Airflow's metadata DB and MLflow on the machine's PostgreSQL, Celery's broker on its Redis; the
api-server, scheduler, DAG processor and two ``airflow celery worker`` processes are started
here and stopped at the end. A retrain of a four-service fleet (one service per shard) runs end
to end, and its mapped shards are spread over both workers.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import FIXED_END, settings_with_params

from core.settings import Settings, get_settings
from pipelines.local_stack import (
    AirflowClient,
    StackPorts,
    airflow_password,
    service_commands,
    stack_environment,
    start_children,
    stop_children,
    wait_healthy,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POSTGRES = "postgresql://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/3"
WORKERS = ("worker-a", "worker-b")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def celery_environment(
    settings: Settings, ports: StackPorts, metadata_url: str, queue: str
) -> dict[str, str]:
    """What a team sets to move the stack's Airflow onto Celery workers (and nothing else)."""
    return {
        **stack_environment(settings, ports),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        # psycopg 3 drives both the sync and the async engine (no asyncpg needed).
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": metadata_url,
        "AIRFLOW__CELERY__BROKER_URL": REDIS,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata_url,
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
        # Every component must sign and check the task-execution tokens with one secret.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
    }


@pytest.fixture(scope="module")
def databases() -> Iterator[tuple[str, str]]:
    """Fresh PostgreSQL databases for Airflow's metadata and MLflow; dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    redis = pytest.importorskip("redis")
    names = [f"forescale_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("airflow", "mlflow")]
    try:
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True, connect_timeout=3) as admin:
            for name in names:
                admin.execute(f"CREATE DATABASE {name}")
        redis.Redis.from_url(REDIS, socket_connect_timeout=3).ping()
    except (psycopg.OperationalError, redis.exceptions.ConnectionError) as error:
        pytest.skip(f"local PostgreSQL or Redis unreachable: {error}")
    yield (
        f"postgresql+psycopg://postgres@127.0.0.1:5432/{names[0]}",
        f"postgresql+psycopg://postgres@127.0.0.1:5432/{names[1]}",
    )
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        for name in names:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _seed(settings: Settings, end: pd.Timestamp) -> None:
    """A four-service fleet whose history ends at ``end``, validated, stored and featurized."""
    from pipelines.run import store_and_featurize
    from pipelines.telemetry import generate_fleet

    fleet = generate_fleet(4, 9, step_minutes=5, seed=5, end=FIXED_END)
    fleet["ts"] = fleet["ts"] + (end - FIXED_END)
    store_and_featurize(settings, fleet, pd.Timedelta(minutes=5), lambda _: None)


def test_a_retrain_runs_end_to_end_on_two_celery_workers(tmp_path: Path, databases) -> None:
    metadata_url, mlflow_url = databases
    base = settings_with_params(
        tmp_path / "home",
        training={
            "models": ["lightgbm", "naive"],
            "shard_size": 1,
            "backtest_folds": 2,
            "history_days": 8,
        },
    )
    settings = get_settings(
        home=base.home, params_file=base.params_file, mlflow_tracking_uri=mlflow_url
    )
    # Whole days back from now: the daily phase of the fleet is fixed, the run is "now".
    end = FIXED_END + pd.Timedelta(days=(pd.Timestamp.now(tz="UTC") - FIXED_END).days)
    _seed(settings, end)

    ports = StackPorts(airflow=_free_port(), mlflow=_free_port(), api=_free_port())
    queue = f"forescale-{uuid.uuid4().hex[:8]}"
    env = celery_environment(settings, ports, metadata_url, queue)
    airflow = str(Path(sys.executable).parent / "airflow")
    migrated = subprocess.run(
        [airflow, "db", "migrate"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    commands = {
        name: argv
        for name, argv in service_commands(settings, ports).items()
        if name.startswith("airflow")
    }
    for worker in WORKERS:
        commands[f"celery-{worker}"] = [
            airflow,
            "celery",
            "worker",
            "--concurrency",
            "1",
            "--celery-hostname",
            f"{worker}@%h",
            "--queues",
            queue,
        ]
    children = start_children(
        {k: v for k, v in commands.items() if not k.startswith("celery")},
        env,
        settings.home / "logs",
    )
    # The workers log each workload they execute (INFO), which says which worker ran a shard.
    children += start_children(
        {k: v for k, v in commands.items() if k.startswith("celery")},
        {**env, "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"},
        settings.home / "logs",
    )
    try:
        wait_healthy(
            {"airflow": f"http://127.0.0.1:{ports.airflow}/api/v2/monitor/health"},
            children,
            lambda _: None,
        )
        client = AirflowClient(
            f"http://127.0.0.1:{ports.airflow}", "admin", airflow_password(settings)
        )
        client.wait_for_dags(["forecast_retrain"])
        client.unpause("forecast_retrain")
        run_id = client.trigger("forecast_retrain", {"reason": "manual"})
        state = client.wait_for_run("forecast_retrain", run_id, timeout=900)
        instances = client.http.get(
            f"/api/v2/dags/forecast_retrain/dagRuns/{run_id}/taskInstances",
            params={"limit": 100},
        ).json()["task_instances"]
        assert state == "success", [(t["task_id"], t["state"]) for t in instances]
        shards = [t for t in instances if t["task_id"] == "train_shard"]
        assert len(shards) == 4 and all(t["state"] == "success" for t in shards)
        assert {t["queue"] for t in instances} == {queue}
        ran = {
            worker: (settings.home / "logs" / f"celery-{worker}.log").read_text()
            for worker in WORKERS
        }
        shard_ids = {t["id"] for t in shards}
        by_worker = {worker: {i for i in shard_ids if i in log} for worker, log in ran.items()}
        assert all(by_worker.values()), f"shards per worker: {by_worker}"
    finally:
        stop_children(children)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    registered = {m.name for m in client.search_registered_models()}
    assert {f"forescale-{s}" for s in ("checkout", "search")} <= registered
