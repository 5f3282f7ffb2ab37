"""The first hour in a browser: ``forescale up`` on free ports, its UIs in headless Chromium.

One module-scoped stack (a small synthetic fleet in a temporary ``FORESCALE_HOME``, started the
way ``make run`` starts it) serves every test; Playwright drives Debian's Chromium
(``/usr/bin/chromium``, no browser download). Every page is kept as a screenshot under
``$FORESCALE_TEST_ARTIFACTS`` (default ``tests/artifacts/``). The last test presses Ctrl-C while a
retrain runs and checks the stack stops in order and marks the interrupted run.

Run apart from the fast suite: ``make test-browser`` (``pytest -m browser``).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from core.settings import REPO_ROOT
from pipelines.local_stack import (
    AIRFLOW_USER,
    INTERRUPTED_NOTE,
    PASSWORDS_FILE,
    RETRAIN_DAG,
    mlflow_ui_url,
)

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DAG_IDS = ("telemetry_ingest", "drift_monitor", "forecast_retrain", "schedule_publish")
FIRST_RUNS_DONE = "first runs done"
STACK_SERVICES = 2
STACK_DAYS = 10


@dataclass
class RunningStack:
    """A ``forescale up`` started by the tests.

    Attributes:
        process: The ``forescale up`` process.
        home: Its ``FORESCALE_HOME``.
        urls: Base URL of ``airflow``, ``mlflow`` and ``api``.
        output: File receiving its terminal output.
        password: The Airflow admin password.
    """

    process: subprocess.Popen[bytes]
    home: Path
    urls: dict[str, str]
    output: Path
    password: str = ""

    def airflow(self) -> httpx.Client:
        """An Airflow REST client logged in as the admin (use it in a ``with`` block)."""
        response = httpx.post(
            f"{self.urls['airflow']}/auth/token",
            json={"username": AIRFLOW_USER, "password": self.password},
            timeout=30.0,
        )
        response.raise_for_status()
        return httpx.Client(
            base_url=self.urls["airflow"],
            timeout=30.0,
            headers={"Authorization": f"Bearer {response.json()['access_token']}"},
        )

    def stop(self) -> int:
        """Press Ctrl-C (SIGINT) and wait for the stack to exit; returns its exit code.

        The stack bounds its own stop (each group of children gets SIGKILL after a grace period).
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.process.wait()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _artifacts_dir() -> Path:
    folder = Path(os.environ.get("FORESCALE_TEST_ARTIFACTS", REPO_ROOT / "tests" / "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _stack_params(home: Path) -> Path:
    """The repository's params.yaml for a small fleet, LightGBM as the only family.

    Every champion then has a SHAP plot (the other families have none); the product runs this
    file as it is.
    """
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["training"]["models"] = ["lightgbm"]
    # The ingest DAG's synthetic source generates this fleet: the same services as the seed.
    params["fleet"].update(services=STACK_SERVICES, days=STACK_DAYS)
    path = home / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="module")
def stack() -> Iterator[RunningStack]:
    """``forescale up`` with two synthetic services, waited on until its first runs are done."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)")
    home = Path(tempfile.mkdtemp(prefix="forescale-browser-"))
    airflow_port, mlflow_port, api_port = _free_ports(3)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW", "MLFLOW_", "FORESCALE_"))
    }
    env.update(
        {
            "FORESCALE_HOME": str(home),
            "AIRFLOW_HOME": str(home / "airflow"),
            "FORESCALE_PARAMS_FILE": str(_stack_params(home)),
            "FORESCALE_AIRFLOW_PORT": str(airflow_port),
            "FORESCALE_MLFLOW_PORT": str(mlflow_port),
            "FORESCALE_API_PORT": str(api_port),
            "FORESCALE_DEV": "1",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
        }
    )
    output = _artifacts_dir() / "forescale-up.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "forescale"),
                "up",
                "--services",
                str(STACK_SERVICES),
                "--days",
                str(STACK_DAYS),
            ],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=str(REPO_ROOT),
        )
    running = RunningStack(
        process,
        home,
        {
            "airflow": f"http://127.0.0.1:{airflow_port}",
            "mlflow": f"http://127.0.0.1:{mlflow_port}",
            "api": f"http://127.0.0.1:{api_port}",
        },
        output,
    )
    try:
        # forescale up bounds its own waits (health, each first run), then says it is done.
        while FIRST_RUNS_DONE not in output.read_text(errors="replace"):
            if process.poll() is not None:
                pytest.fail(
                    f"forescale up did not finish its first runs (exit code "
                    f"{process.poll()}); its output:\n{output.read_text()[-4000:]}"
                )
            time.sleep(3.0)
        passwords = yaml.safe_load((home / "airflow" / PASSWORDS_FILE).read_text())
        running.password = str(passwords[AIRFLOW_USER])
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser(stack: RunningStack) -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright, with a fresh profile."""
    from playwright.sync_api import sync_playwright

    with (
        tempfile.TemporaryDirectory(prefix="forescale-chromium-") as profile,
        sync_playwright() as playwright,
    ):
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900},
        )
        yield context
        context.close()


def _screenshot(page: Any, name: str) -> Path:
    path = _artifacts_dir() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _airflow_page(browser: Any, stack: RunningStack, path: str) -> Any:
    """An Airflow UI page, logged in with the admin's token cookie."""
    with stack.airflow() as client:
        token = client.headers["Authorization"].removeprefix("Bearer ")
    browser.add_cookies([{"name": "_token", "value": token, "url": stack.urls["airflow"]}])
    page = browser.new_page()
    page.goto(f"{stack.urls['airflow']}{path}")
    return page


def test_airflow_home_reports_every_component_healthy(browser: Any, stack: RunningStack) -> None:
    health = httpx.get(f"{stack.urls['airflow']}/api/v2/monitor/health", timeout=30).json()
    assert {name: part["status"] for name, part in health.items()} == {
        "metadatabase": "healthy",
        "scheduler": "healthy",
        "triggerer": "healthy",
        "dag_processor": "healthy",
    }
    page = _airflow_page(browser, stack, "/")
    page.get_by_text("Triggerer").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    _screenshot(page, "airflow-home")
    page.close()


def test_airflow_dag_list_shows_the_four_dags_with_a_successful_run(
    browser: Any, stack: RunningStack
) -> None:
    with stack.airflow() as client:
        for dag_id in DAG_IDS:
            runs = client.get(
                f"/api/v2/dags/{dag_id}/dagRuns", params={"state": "success", "limit": 1}
            ).json()
            assert runs["total_entries"] >= 1, f"{dag_id} has no successful run"
    page = _airflow_page(browser, stack, "/dags")
    for dag_id in DAG_IDS:
        page.get_by_text(dag_id, exact=True).first.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    _screenshot(page, "airflow-dags")
    page.close()


def test_task_logs_show_our_info_lines_and_no_error_for_a_registration(
    stack: RunningStack,
) -> None:
    logs = stack.home / "airflow" / "logs" / f"dag_id={RETRAIN_DAG}"
    text = "\n".join(path.read_text() for path in logs.rglob("*.log"))
    registered = [line for line in text.splitlines() if "Successfully registered model" in line]
    assert registered, "no registration line in the retrain's task logs"
    assert all('"level":"info"' in line for line in registered), registered[:2]
    assert '"logger":"pipelines.training"' in text  # our INFO lines reach the task log
    chatter = [
        line
        for line in text.splitlines()
        if '"level":"info"' in line and re.search(r'"logger":"(feast|great_expectations)', line)
    ]
    assert not chatter, chatter[:2]


def _mlflow_json(stack: RunningStack, path: str, **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{stack.urls['mlflow']}/api/2.0/mlflow/{path}", params=params, timeout=30)
    response.raise_for_status()
    return dict(response.json())


def test_mlflow_models_show_champions_and_their_forecast_and_shap_plots(
    browser: Any, stack: RunningStack
) -> None:
    models = _mlflow_json(stack, "registered-models/search")["registered_models"]
    forecasters = sorted(
        m["name"]
        for m in models
        if m["name"].startswith("forescale-") and m["name"] != "forescale-anomaly"
    )
    assert len(forecasters) == 2
    name = forecasters[0]
    version = _mlflow_json(stack, "registered-models/alias", name=name, alias="champion")[
        "model_version"
    ]

    page = browser.new_page()
    page.goto(mlflow_ui_url(stack.urls["mlflow"], "models"))
    page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
    _screenshot(page, "mlflow-models")
    page.goto(mlflow_ui_url(stack.urls["mlflow"], f"models/{name}"))
    page.get_by_text("@ champion").or_(page.get_by_text("champion", exact=True)).first.wait_for(
        timeout=60_000
    )
    _screenshot(page, "mlflow-model-champion")

    run = _mlflow_json(stack, "runs/get", run_id=version["run_id"])["run"]
    experiment = run["info"]["experiment_id"]
    page.close()
    for artifact in ("forecast_vs_actual.png", "shap_summary.png"):
        # A fresh page per artifact: the UI keeps its selected file across hash-only changes.
        page = browser.new_page()
        page.goto(
            mlflow_ui_url(
                stack.urls["mlflow"],
                f"experiments/{experiment}/runs/{version['run_id']}/artifacts/{artifact}",
            )
        )
        image = page.locator(f"img[alt='{artifact}']").first
        image.wait_for(state="visible", timeout=60_000)
        assert image.evaluate("img => img.complete && img.naturalWidth > 0")
        page.wait_for_timeout(500)
        _screenshot(page, f"mlflow-{Path(artifact).stem}")
        page.close()


def test_mlflow_experiment_opens_on_training_runs(browser: Any, stack: RunningStack) -> None:
    experiment = _mlflow_json(
        stack, "experiments/get-by-name", experiment_name="forescale-forecasting"
    )["experiment"]
    page = browser.new_page()
    page.goto(mlflow_ui_url(stack.urls["mlflow"], f"experiments/{experiment['experiment_id']}"))
    # The training runs table, not the GenAI view's empty traces.
    page.get_by_text(re.compile(r"^retrain ")).first.wait_for(timeout=60_000)
    _screenshot(page, "mlflow-training-runs")
    page.close()

    page = browser.new_page()
    page.goto(f"{stack.urls['api']}/docs")
    try:
        page.locator(".opblock").first.wait_for(timeout=20_000)
    finally:
        _screenshot(page, "api-docs")
    assert page.get_by_text("/v1/services").count() >= 1
    page.close()


def test_ctrl_c_stops_in_order_and_marks_the_interrupted_run(stack: RunningStack) -> None:
    with stack.airflow() as client:
        response = client.post(
            f"/api/v2/dags/{RETRAIN_DAG}/dagRuns",
            json={"logical_date": None, "conf": {"reason": "manual"}},
        )
        response.raise_for_status()
        run_id = response.json()["dag_run_id"]
        state = "queued"
        while state == "queued":
            time.sleep(1.0)
            state = client.get(f"/api/v2/dags/{RETRAIN_DAG}/dagRuns/{run_id}").json()["state"]
        assert state == "running"
    scheduler_log = stack.home / "logs" / "airflow-scheduler.log"
    tracebacks_before = scheduler_log.read_text(errors="replace").count("Traceback")

    assert stack.stop() == 0
    output = stack.output.read_text(errors="replace")
    assert "Traceback" not in output
    stops = [line for line in output.splitlines() if "stopping " in line]
    assert [line.split("stopping ", 1)[1] for line in stops] == [
        "airflow-scheduler, airflow-triggerer, airflow-dag-processor",
        "airflow-api-server",
        "mlflow",
        "api",
    ]
    assert f"{RETRAIN_DAG}/{run_id}" in output  # named among the runs marked failed
    assert scheduler_log.read_text(errors="replace").count("Traceback") == tracebacks_before

    with sqlite3.connect(stack.home / "airflow" / "airflow.db") as db:
        state = db.execute(
            "SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", (RETRAIN_DAG, run_id)
        ).fetchone()[0]
        notes = [
            row[0]
            for row in db.execute(
                "SELECT n.content FROM dag_run_note n JOIN dag_run r ON r.id = n.dag_run_id "
                "WHERE r.dag_id = ? AND r.run_id = ?",
                (RETRAIN_DAG, run_id),
            )
        ]
        unfinished = db.execute(
            "SELECT count(*) FROM dag_run WHERE state IN ('queued', 'running')"
        ).fetchone()[0]
    assert state == "failed"
    assert notes == [INTERRUPTED_NOTE.format(state="running")]
    assert unfinished == 0
