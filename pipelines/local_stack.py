"""The one-command local stack behind ``make run`` / ``forescale up``.

Everything runs as child processes of this one, with state under ``settings.home``:

* **Airflow 3** (``api-server``, ``scheduler``, ``dag-processor``, ``triggerer``; SQLite metadata DB,
  ``LocalExecutor``, parallelism 4, API on 127.0.0.1) with ``AIRFLOW_HOME=<home>/airflow`` and
  the repository's ``dags/`` folder;
* **MLflow** (``mlflow server``) on the same SQLite store the pipeline writes
  (``settings.tracking_uri``), artifacts under ``<home>/mlartifacts``, job runner off;
* the **schedule API** (``forescale serve``).

Start-up: seed a synthetic fleet's telemetry and feature store, start the three, wait until each
is healthy, then run the DAGs once in a useful order (ingest and drift check, a retrain, and once
the champions exist, the schedule publication), print the URLs and the Airflow login, and keep
running until Ctrl-C.

Ctrl-C stops the children in dependency order: first the Airflow processes that run work
(scheduler, triggerer, DAG processor), while the API server they report to still answers; then
DAG runs left queued or running are marked failed with a note saying the stack was stopped; then
the Airflow API server, MLflow and the schedule API.

Ports come from ``FORESCALE_AIRFLOW_PORT`` (8080), ``FORESCALE_MLFLOW_PORT`` (5000) and
``FORESCALE_API_PORT`` (8000).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from core.settings import REPO_ROOT, Settings

Progress = Callable[[str], None]

AIRFLOW_USER = "admin"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
# The order the DAGs are unpaused in: training needs telemetry and features, publication needs
# the champions training registers. Unpausing a DAG with a data-interval schedule (catchup off)
# runs its latest interval at once; the weekly retrain is triggered by hand.
FIRST_DAGS = ("telemetry_ingest", "drift_monitor")
RETRAIN_DAG = "forecast_retrain"
AFTER_TRAINING_DAGS = ("schedule_publish",)
TERMINAL_STATES = {"success", "failed"}
UNFINISHED_STATES = ("queued", "running")
INTERRUPTED_NOTE = (
    "Interrupted: the local stack (forescale up) was stopped while this run was {state}."
)
# Ctrl-C stops the children group by group: the workers first, the servers they report to last.
STOP_ORDER: tuple[tuple[str, ...], ...] = (
    ("airflow-scheduler", "airflow-triggerer", "airflow-dag-processor"),
    ("airflow-api-server",),
    ("mlflow",),
    ("api",),
)
# Task logs show INFO (our pipeline's progress, Airflow's task lines; dags/_common.py keeps other
# libraries' INFO lines out); Python warnings stay out of them.
QUIET_LOGGERS = "py.warnings=ERROR"
# The MLflow UI starts in its GenAI view unless the URL asks for the model-training one.
MLFLOW_TRAINING_VIEW = "workflowType=machine_learning"


@dataclass(frozen=True)
class StackPorts:
    """TCP ports of the three services (all bound to 127.0.0.1).

    Attributes:
        airflow: Airflow API server and UI.
        mlflow: MLflow tracking server and UI.
        api: Forescale schedule API.
    """

    airflow: int = 8080
    mlflow: int = 5000
    api: int = 8000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackPorts:
        """Ports from ``FORESCALE_AIRFLOW_PORT``, ``FORESCALE_MLFLOW_PORT``, ``FORESCALE_API_PORT``.

        Raises:
            ValueError: If a variable is not a port number.
        """
        env = os.environ if env is None else env
        values = {}
        for name, default in (("airflow", cls.airflow), ("mlflow", cls.mlflow), ("api", cls.api)):
            variable = f"FORESCALE_{name.upper()}_PORT"
            raw = env.get(variable, str(default))
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise ValueError(f"{variable} must be a TCP port number, got {raw!r}")
            values[name] = int(raw)
        return cls(**values)

    @property
    def urls(self) -> dict[str, str]:
        """The UI / API base URL of each service."""
        return {
            "airflow": f"http://127.0.0.1:{self.airflow}",
            "mlflow": f"http://127.0.0.1:{self.mlflow}",
            "api": f"http://127.0.0.1:{self.api}",
        }


@dataclass
class ChildProcess:
    """A started service and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: Any = field(repr=False, default=None)


def stack_environment(settings: Settings, ports: StackPorts) -> dict[str, str]:
    """Environment of every child process of the local stack (see STACK_NOTES).

    Args:
        settings: Runtime settings; ``AIRFLOW_HOME`` is ``settings.airflow_home``.
        ports: Service ports.

    Returns:
        The variables to add to the current environment.
    """
    home = settings.airflow_home
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
        # Unpaused in order by the stack (publication waits for the first champions).
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{ports.airflow}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(ports.airflow),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": ports.urls["airflow"],
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{AIRFLOW_USER}:admin",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__LOGGING__NAMESPACE_LEVELS": QUIET_LOGGERS,
        "PYTHONWARNINGS": "ignore",
        "FORESCALE_HOME": str(settings.home),
        "FORESCALE_MLFLOW_TRACKING_URI": settings.tracking_uri,
        "FORESCALE_SCHEDULE_DB_URL": settings.schedule_db,
        "FORESCALE_PARAMS_FILE": str(settings.params_file),
        # MLflow's job runner adds ~1.3 GB of huey consumers the stack does not use.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }


def service_commands(settings: Settings, ports: StackPorts) -> dict[str, list[str]]:
    """The command line of each child process.

    Args:
        settings: Runtime settings.
        ports: Service ports.

    Returns:
        ``{name: argv}`` for the Airflow API server, scheduler, DAG processor and triggerer
        (deferred tasks; Airflow's home page reports it unhealthy without one), MLflow and the
        schedule API.
    """
    bin_dir = Path(sys.executable).parent
    airflow = str(bin_dir / "airflow")
    return {
        "airflow-api-server": [airflow, "api-server", "--port", str(ports.airflow)],
        "airflow-scheduler": [airflow, "scheduler"],
        "airflow-dag-processor": [airflow, "dag-processor"],
        "airflow-triggerer": [airflow, "triggerer"],
        "mlflow": [
            str(bin_dir / "mlflow"),
            "server",
            "--backend-store-uri",
            settings.tracking_uri,
            "--artifacts-destination",
            settings.mlflow_artifacts_dir.as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(ports.mlflow),
            "--workers",
            "1",
        ],
        "api": [
            str(bin_dir / "forescale"),
            "serve",
            "--dev",
            "--host",
            "127.0.0.1",
            "--port",
            str(ports.api),
        ],
    }


def mlflow_ui_url(base_url: str, page: str = "experiments") -> str:
    """A page of the MLflow UI in its model-training view (runs, metrics, registered models).

    Args:
        base_url: The MLflow server's base URL.
        page: The UI route, e.g. ``experiments`` or ``models``.
    """
    return f"{base_url}/#/{page}?{MLFLOW_TRAINING_VIEW}"


def health_urls(ports: StackPorts) -> dict[str, str]:
    """The URL polled until each service answers 200."""
    urls = ports.urls
    return {
        "airflow": f"{urls['airflow']}/api/v2/monitor/health",
        "mlflow": f"{urls['mlflow']}/health",
        "api": f"{urls['api']}/healthz",
    }


def seed_demo_fleet(settings: Settings, services: int, days: int, progress: Progress) -> None:
    """Generate, validate and store a synthetic fleet's telemetry and fill the feature store.

    Skipped when telemetry is already stored (a second ``make run`` reuses the home).

    Args:
        settings: Runtime settings.
        services: Number of synthetic services.
        days: Days of history ending now.
        progress: Called with one line per step.
    """
    import pandas as pd

    from pipelines.run import store_and_featurize
    from pipelines.telemetry import generate_fleet, list_services

    settings.ensure_dirs()
    if list_services(settings):
        progress(f"reusing the telemetry under {settings.telemetry_dir}")
        return
    progress(f"generating {services} synthetic services x {days} days of 1-minute telemetry")
    store_and_featurize(settings, generate_fleet(services, days), pd.Timedelta(minutes=1), progress)


def start_children(
    commands: Mapping[str, list[str]], env: Mapping[str, str], log_dir: Path
) -> list[ChildProcess]:
    """Start each command in its own process group, output to ``<log_dir>/<name>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    children = []
    for name, argv in commands.items():
        log_path = log_dir / f"{name}.log"
        log_file = log_path.open("ab")
        process = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=str(REPO_ROOT),
            start_new_session=True,
        )
        children.append(ChildProcess(name, process, log_path, log_file))
    return children


def stop_children(children: list[ChildProcess], timeout: float = 20.0) -> None:
    """SIGTERM each child's process group, then SIGKILL whatever is left after ``timeout``."""
    for child in children:
        if child.process.poll() is None:
            _signal_group(child.process, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            child.process.wait(remaining)
        except subprocess.TimeoutExpired:
            _signal_group(child.process, signal.SIGKILL)
            child.process.wait(5)
        if child.log_file is not None:
            child.log_file.close()


def stop_groups(children: list[ChildProcess]) -> list[list[ChildProcess]]:
    """The children grouped in :data:`STOP_ORDER`; a child not named there is stopped last."""
    named = {name for group in STOP_ORDER for name in group}
    by_name = {child.name: child for child in children}
    groups = [[by_name[name] for name in group if name in by_name] for group in STOP_ORDER]
    groups.append([c for c in children if c.name not in named])
    return [group for group in groups if group]


def stop_stack(
    children: list[ChildProcess],
    progress: Progress,
    mark_interrupted: Callable[[], list[str]] | None = None,
    timeout: float = 20.0,
) -> None:
    """Stop the children in dependency order, marking interrupted DAG runs in between.

    The Airflow processes that run work stop first, while the API server they report to still
    answers (no "connection refused" tracebacks); then ``mark_interrupted`` fails the DAG runs
    they left unfinished; then the servers stop, Airflow's API server first.

    Args:
        children: The started children.
        progress: Called with one line per step.
        mark_interrupted: Marks unfinished DAG runs failed; returns their ``dag_id/run_id``.
        timeout: Seconds each group gets after SIGTERM before SIGKILL.
    """
    groups = stop_groups(children)
    for index, group in enumerate(groups):
        progress(f"stopping {', '.join(child.name for child in group)}")
        stop_children(group, timeout)
        if index == 0 and mark_interrupted is not None:
            try:
                marked = mark_interrupted()
            except (httpx.HTTPError, RuntimeError) as error:
                progress(f"could not mark unfinished DAG runs failed: {error}")
            else:
                if marked:
                    progress(
                        f"marked {len(marked)} unfinished DAG run(s) failed: " + ", ".join(marked)
                    )


def wait_healthy(
    urls: Mapping[str, str],
    children: list[ChildProcess],
    progress: Progress,
    timeout: float = 300.0,
) -> dict[str, float]:
    """Poll every health URL until it answers 200; fail fast if a child exits.

    Returns:
        Seconds from the call until each service was healthy.

    Raises:
        RuntimeError: If a child exits or a service is not healthy within ``timeout``; the
            message names the service and its log file.
    """
    started = time.monotonic()
    pending = dict(urls)
    healthy: dict[str, float] = {}
    with httpx.Client(timeout=5.0) as client:
        while pending:
            for child in children:
                if child.process.poll() is not None:
                    raise RuntimeError(
                        f"{child.name} exited with code {child.process.returncode}; "
                        f"see {child.log_path}"
                    )
            for name, url in list(pending.items()):
                try:
                    ok = client.get(url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    healthy[name] = time.monotonic() - started
                    progress(f"{name} is healthy after {healthy[name]:.0f} s")
                    del pending[name]
            if time.monotonic() - started > timeout:
                logs = ", ".join(str(c.log_path) for c in children)
                raise RuntimeError(
                    f"{sorted(pending)} not healthy after {timeout:.0f} s; see the logs: {logs}"
                )
            if pending:
                time.sleep(1.0)
    return healthy


def airflow_password(settings: Settings, timeout: float = 60.0) -> str:
    """The admin password the simple auth manager generated under ``AIRFLOW_HOME``.

    Raises:
        RuntimeError: If the file does not appear within ``timeout`` or has no admin entry.
    """
    path = settings.airflow_home / PASSWORDS_FILE
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if time.monotonic() > deadline:
            raise RuntimeError(f"Airflow did not write {path}")
        time.sleep(0.5)
    passwords = json.loads(path.read_text())
    if AIRFLOW_USER not in passwords:
        raise RuntimeError(f"{path} has no password for {AIRFLOW_USER!r}")
    return str(passwords[AIRFLOW_USER])


class AirflowClient:
    """The few Airflow REST calls the stack needs (``/api/v2``, simple auth manager token)."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=30.0)
        response = self.http.post("/auth/token", json={"username": username, "password": password})
        response.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 180.0) -> None:
        """Wait until the DAG processor has parsed every DAG.

        Raises:
            RuntimeError: If a DAG is missing after ``timeout`` (with the import errors).
        """
        deadline = time.monotonic() + timeout
        missing = list(dag_ids)
        while missing:
            missing = [d for d in missing if self.http.get(f"/api/v2/dags/{d}").status_code != 200]
            if missing and time.monotonic() > deadline:
                errors = self.http.get("/api/v2/importErrors").json()
                raise RuntimeError(
                    f"DAGs {missing} not parsed after {timeout:.0f} s; import errors: {errors}"
                )
            if missing:
                time.sleep(2.0)

    def unpause(self, dag_id: str) -> None:
        """Unpause a DAG (a data-interval DAG then runs its latest interval)."""
        self.http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Start one manual run; returns the run id."""
        response = self.http.post(
            f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf or {})}
        )
        response.raise_for_status()
        return str(response.json()["dag_run_id"])

    def latest_run(self, dag_id: str, timeout: float) -> str | None:
        """The id of the DAG's most recent run, waiting up to ``timeout`` for the scheduler."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.http.get(
                f"/api/v2/dags/{dag_id}/dagRuns", params={"order_by": "-run_after", "limit": 1}
            )
            response.raise_for_status()
            runs = response.json()["dag_runs"]
            if runs:
                return str(runs[0]["dag_run_id"])
            if time.monotonic() > deadline:
                return None
            time.sleep(2.0)

    def run_state(self, dag_id: str, run_id: str) -> str:
        """State of a DAG run (``queued``, ``running``, ``success``, ``failed``)."""
        response = self.http.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        response.raise_for_status()
        return str(response.json()["state"])

    def fail_unfinished_runs(self) -> list[str]:
        """Mark every queued or running DAG run failed, with a note saying why.

        Returns:
            ``dag_id/run_id`` of each run marked.
        """
        response = self.http.get(
            "/api/v2/dags/~/dagRuns", params={"state": list(UNFINISHED_STATES), "limit": 100}
        )
        response.raise_for_status()
        marked = []
        for run in response.json()["dag_runs"]:
            note = INTERRUPTED_NOTE.format(state=run["state"])
            self.http.patch(
                f"/api/v2/dags/{run['dag_id']}/dagRuns/{run['dag_run_id']}",
                json={"state": "failed", "note": note},
            ).raise_for_status()
            marked.append(f"{run['dag_id']}/{run['dag_run_id']}")
        return marked

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        """Poll a run until it finishes or ``timeout`` passes; returns its last state."""
        deadline = time.monotonic() + timeout
        state = self.run_state(dag_id, run_id)
        while state not in TERMINAL_STATES and time.monotonic() < deadline:
            time.sleep(3.0)
            state = self.run_state(dag_id, run_id)
        return state


def run_local_stack(
    settings: Settings,
    services: int = 5,
    days: int = 14,
    progress: Progress | None = None,
    stop_after_start: bool = False,
) -> dict[str, float]:
    """Seed a demo fleet, start Airflow, MLflow and the API, run the DAGs once; wait for Ctrl-C.

    Args:
        settings: Runtime settings (all state under ``settings.home``).
        services: Synthetic services to generate on the first start.
        days: Days of synthetic history on the first start.
        progress: Called with one line per step (default: the terminal, via rich).
        stop_after_start: Return once the first runs are done instead of waiting for Ctrl-C
            (for smoke tests and benchmarks).

    Returns:
        Timings in seconds: ``seed``, ``healthy`` (children started → all healthy),
        ``first_runs`` and per-service ``healthy_<name>``.

    Raises:
        RuntimeError: If a service does not become healthy or a DAG is not parsed.
    """
    if progress is None:
        from rich.console import Console

        console = Console(soft_wrap=True)

        def progress(line: str) -> None:
            console.print(f"[bold cyan]forescale[/] {line}")

    ports = StackPorts.from_env()
    env = stack_environment(settings, ports)
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    started = time.monotonic()
    seed_demo_fleet(settings, services, days, progress)
    timings["seed"] = time.monotonic() - started

    progress("migrating the Airflow metadata database")
    airflow_bin = str(Path(sys.executable).parent / "airflow")
    subprocess.run(
        [airflow_bin, "db", "migrate"],
        env={**os.environ, **env},
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )

    log_dir = settings.home / "logs"
    progress(f"starting Airflow, MLflow and the API (logs in {log_dir})")
    children = start_children(service_commands(settings, ports), env, log_dir)
    previous = _stop_on_signals()
    clients: list[AirflowClient] = []
    try:
        started = time.monotonic()
        healthy = wait_healthy(health_urls(ports), children, progress)
        timings["healthy"] = time.monotonic() - started
        timings.update({f"healthy_{name}": seconds for name, seconds in healthy.items()})

        password = airflow_password(settings)
        urls = ports.urls
        progress(f"Airflow  {urls['airflow']}  (login {AIRFLOW_USER} / {password})")
        progress(
            f"MLflow   {mlflow_ui_url(urls['mlflow'])}  "
            f"(models: {mlflow_ui_url(urls['mlflow'], 'models')})"
        )
        progress(f"API      {urls['api']}/docs  (services: {urls['api']}/v1/services)")
        progress("running the DAGs once (a few minutes); the UIs are usable meanwhile")
        started = time.monotonic()
        clients.append(AirflowClient(ports.urls["airflow"], AIRFLOW_USER, password))
        _first_runs(clients[0], progress)
        timings["first_runs"] = time.monotonic() - started
        progress(f"first runs done in {timings['first_runs']:.0f} s: every UI has content")
        if stop_after_start:
            return timings
        progress("running; press Ctrl-C to stop")
        while all(child.process.poll() is None for child in children):
            time.sleep(1.0)
        exited = [c for c in children if c.process.poll() is not None]
        raise RuntimeError(
            f"{exited[0].name} exited with code {exited[0].process.returncode}; "
            f"see {exited[0].log_path}"
        )
    except KeyboardInterrupt:
        progress("stopping")
        return timings
    finally:
        # A second Ctrl-C must not cut the orderly stop short (or print a traceback).
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        stop_stack(children, progress, clients[0].fail_unfinished_runs if clients else None)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop_on_signals() -> dict[signal.Signals, Any]:
    """Make Ctrl-C, SIGTERM and SIGHUP all stop the stack cleanly (children included).

    SIGINT is handled explicitly too: a process started in the background by a
    non-interactive shell inherits it as ignored.

    Returns:
        The previous handlers, to restore.
    """

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    return {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}


def _first_runs(client: AirflowClient, progress: Progress) -> None:
    """Unpause the DAGs in order and let each run once; publication waits for the champions.

    Unpausing a DAG whose schedule has a past interval (or, for the weekly retrain, a past
    trigger time) makes the scheduler run it at once; a DAG with no run after 20 s is triggered.
    """
    client.wait_for_dags([*FIRST_DAGS, RETRAIN_DAG, *AFTER_TRAINING_DAGS])
    for dag_id in FIRST_DAGS:
        client.unpause(dag_id)
        progress(f"unpaused {dag_id}")
    for dag_id, timeout in ((RETRAIN_DAG, 1800.0), *((d, 600.0) for d in AFTER_TRAINING_DAGS)):
        client.unpause(dag_id)
        run_id = client.latest_run(dag_id, timeout=20.0)
        if run_id is None:
            run_id = client.trigger(dag_id, {"reason": "manual"} if dag_id == RETRAIN_DAG else None)
        progress(f"unpaused {dag_id}; waiting for run {run_id}")
        progress(f"{dag_id}: {client.wait_for_run(dag_id, run_id, timeout=timeout)}")


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
