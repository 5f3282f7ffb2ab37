"""``forescale bench serve``: what KEDA's poll costs, next to the cheapest FastAPI route there is.

One run: publish schedules for many services into a fresh store (the pipeline's own publish),
start ``forescale serve`` on it (the product's server and settings, real tokens), start a bare
FastAPI app whose one route returns fixed bytes under the same uvicorn settings, then load each
with ``wrk`` (the Debian package) in turn: ``GET /v1/services/<one of them>/recommendation`` with
the read token, and the bare route, in alternating rounds (so both see the same background load
of a shared machine). Prints requests/s and p50/p99 latency of both (medians over the rounds)
and their ratios; ``--json`` writes ``{"forescale": {...}, "bare": {...}}`` with ``rps``, ``p50_ms``,
``p99_ms``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import yaml
from fastapi import FastAPI, Response

from core.params import load_params
from core.settings import REPO_ROOT, Settings
from serving.client import publish_schedules_to_store
from serving.schemas import SchedulePublish, ScheduleStep

BARE_BODY = b'{"replicas":3}'
ROUNDS = 3
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def bare_app() -> FastAPI:
    """The yardstick: one ``async`` route returning fixed bytes, nothing else."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/bare")
    async def bare() -> Response:
        return Response(BARE_BODY, media_type="application/json")

    return app


def serve_bare(host: str, port: int) -> None:
    """Serve :func:`bare_app` exactly as ``forescale serve`` serves the API."""
    import uvicorn

    uvicorn.run(bare_app(), host=host, port=port, log_level="info")


def active_params(params_file: Path, home: Path) -> Path:
    """The installation's params file with every service ``active`` (a promoted fleet: the
    route answers from the schedules, not the shadow floor), written under ``home``."""
    params = load_params(Path(params_file))
    params = json.loads(json.dumps(params))
    params["service_defaults"] = {**(params.get("service_defaults") or {}), "mode": "active"}
    path = home / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def service_names(count: int) -> list[str]:
    """The benchmark's service names."""
    return [f"svc-{index:05d}" for index in range(count)]


def publish_fleet(settings: Settings, services: int, steps: int, now: datetime) -> None:
    """Publish one schedule per service (5-minute steps from the last full 5 minutes, valid
    for a day) through the pipeline's publish path."""
    start = now.replace(minute=now.minute - now.minute % 5, second=0, microsecond=0)
    bodies = {}
    for index, name in enumerate(service_names(services)):
        bodies[name] = SchedulePublish(
            model_version="bench/1",
            generated_at=now,
            valid_until=now + timedelta(days=1),
            step_seconds=300,
            steps=[
                ScheduleStep(
                    ts=start + timedelta(minutes=5 * step),
                    replicas=2 + (index + step) % 20,
                    forecast_p50=100.0 + step,
                    forecast_p90=130.0 + step,
                )
                for step in range(steps)
            ],
        )
    publish_schedules_to_store(settings, bodies, now=now)


@contextmanager
def running(command: list[str], env: dict[str, str], health_url: str) -> Iterator[None]:
    """Run a server process until the block ends; wait for its health URL first."""
    process = subprocess.Popen(
        command, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode}")
            try:
                if httpx.get(health_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{health_url} did not answer within 120 s")
            time.sleep(0.2)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _milliseconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match[1]) * _UNITS_MS[match[2]]


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s and p50/p99 latency (ms) from ``wrk --latency`` output.

    Raises:
        ValueError: If the output lacks them, or wrk saw errors (non-2xx answers, socket errors).
    """
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    if rps is None or p50 is None or p99 is None:
        raise ValueError(f"unreadable wrk output:\n{output}")
    for problem in ("Non-2xx or 3xx responses", "Socket errors"):
        if problem in output:
            raise ValueError(f"wrk reported {problem.lower()}:\n{output}")
    return {
        "rps": round(float(rps[1]), 1),
        "p50_ms": round(_milliseconds(p50[1]), 3),
        "p99_ms": round(_milliseconds(p99[1]), 3),
    }


def run_wrk(
    url: str, token: str | None, seconds: int, threads: int, connections: int
) -> dict[str, float]:
    """Load one URL with wrk and read its figures."""
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        *(["-H", f"Authorization: Bearer {token}"] if token else []),
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return parse_wrk(result.stdout)


def run_serve_bench(
    base_settings: Settings,
    services: int = 2000,
    steps: int = 288,
    seconds: int = 15,
    threads: int = 2,
    connections: int = 50,
    json_path: Path | None = None,
) -> dict[str, dict[str, float]]:
    """Measure ``/recommendation`` against the bare route in one run and print both.

    Args:
        base_settings: Settings of this installation (``params_file``); the run uses its own
            temporary home and fresh random tokens.
        services: Services with a published schedule.
        steps: Steps per schedule (288: a day of 5-minute steps).
        seconds: wrk duration of each measurement.
        threads: wrk threads.
        connections: wrk connections.
        json_path: Where to write the figures as JSON.

    Returns:
        ``{"forescale": {...}, "bare": {...}}`` with ``rps``, ``p50_ms``, ``p99_ms``.

    Raises:
        FileNotFoundError: If ``wrk`` is not installed (``apt-get install wrk``).
    """
    if shutil.which("wrk") is None:
        raise FileNotFoundError("wrk is not installed: apt-get install wrk")
    home = Path(tempfile.mkdtemp(prefix="forescale-bench-serve-"))
    read_token, write_token = secrets.token_hex(24), secrets.token_hex(24)
    settings = base_settings.model_copy(
        update={
            "home": home,
            "schedule_db_url": None,
            "dev": False,
            "params_file": active_params(base_settings.params_file, home),
        }
    )
    now = datetime.now(UTC)
    began = time.perf_counter()
    publish_fleet(settings, services, steps, now)
    print(f"published {services} schedules of {steps} steps in {time.perf_counter() - began:.1f} s")
    env = {
        **os.environ,
        "FORESCALE_HOME": str(home),
        "FORESCALE_PARAMS_FILE": str(settings.params_file),
        "FORESCALE_API_TOKEN": write_token,
        "FORESCALE_API_READ_TOKEN": read_token,
        "FORESCALE_DEV": "0",
    }
    env.pop("FORESCALE_SCHEDULE_DB_URL", None)
    api_port, bare_port = _free_port(), _free_port()
    target = service_names(services)[services // 2]
    api = f"http://127.0.0.1:{api_port}"
    bare = f"http://127.0.0.1:{bare_port}"
    api_command = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(api_port)]
    bare_command = [
        sys.executable,
        "-c",
        f"from benchmarks.serve import serve_bare; serve_bare('127.0.0.1', {bare_port})",
    ]
    results: dict[str, dict[str, float]] = {}
    recommendation_url = f"{api}/v1/services/{target}/recommendation"
    with running(api_command, env, f"{api}/healthz"), running(bare_command, env, f"{bare}/bare"):
        answer = httpx.get(recommendation_url, headers={"Authorization": f"Bearer {read_token}"})
        answer.raise_for_status()
        if answer.json()["source"] != "schedule":
            raise RuntimeError(f"{target} is not served from its schedule: {answer.text}")
        targets = (("bare", f"{bare}/bare", None), ("forescale", recommendation_url, read_token))
        for _, url, token in targets:
            run_wrk(url, token, 2, threads, connections)  # warm-up
        # Alternate short rounds so both routes see the same background load of the machine.
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in targets}
        for _ in range(ROUNDS):
            for name, url, token in targets:
                rounds[name].append(
                    run_wrk(url, token, max(1, seconds // ROUNDS), threads, connections)
                )
        for name, measured in rounds.items():
            results[name] = {
                key: round(statistics.median(figures[key] for figures in measured), 3)
                for key in ("rps", "p50_ms", "p99_ms")
            }
    shutil.rmtree(home, ignore_errors=True)
    ordered = {"forescale": results["forescale"], "bare": results["bare"]}
    print(
        f"wrk -t{threads} -c{connections}, {ROUNDS} alternating rounds of "
        f"{max(1, seconds // ROUNDS)} s per route (medians); {services} services with "
        f"{steps}-step schedules; GET /v1/services/{target}/recommendation vs a bare route"
    )
    print("| route | req/s | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for name, figures in ordered.items():
        print(
            f"| {name} | {figures['rps']:.0f} | {figures['p50_ms']:.2f} | {figures['p99_ms']:.2f} |"
        )
    print(
        f"throughput {ordered['forescale']['rps'] / ordered['bare']['rps']:.2f}x the bare route, "
        f"p99 {ordered['forescale']['p99_ms'] / ordered['bare']['p99_ms']:.2f}x"
    )
    if json_path is not None:
        json_path.write_text(json.dumps(ordered, indent=2))
    return ordered
