"""Helpers for the serving tests: a params file, schedule bodies, a real uvicorn server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from fastapi import FastAPI
from pydantic import SecretStr

from core.settings import Settings

TOKEN = "test-write-token-5f0c1d"
READ_TOKEN = "test-read-token-9a7e44"

SERVICE_PARAMS: dict[str, Any] = {
    "service_defaults": {
        "capacity_per_replica": 50.0,
        "target_utilization": 0.7,
        "min_replicas": 2,
        "max_replicas": 50,
        "startup_seconds": 120,
        "scale_down_delay_minutes": 15,
        "max_surge_per_step": 10,
        "risk": 0.1,
        "mode": "active",
    },
    "services": {
        "checkout": {"max_replicas": 40},
        "slowstart": {"startup_seconds": 600},
        "shadow": {"mode": "shadow"},
    },
}


def write_params(directory: Path, params: dict[str, Any] | None = None) -> Path:
    """Write a params.yaml with per-service settings and return its path."""
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params or SERVICE_PARAMS))
    return path


def serving_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings with a temporary home, a test params file and the test tokens."""
    values: dict[str, Any] = {
        "home": tmp_path / "home",
        "params_file": write_params(tmp_path),
        "api_token": SecretStr(TOKEN),
        "api_read_token": SecretStr(READ_TOKEN),
    }
    values.update(overrides)
    return Settings(**values)


def schedule_body(
    start: datetime,
    replicas: Sequence[int],
    valid_for: timedelta = timedelta(hours=2),
    step_seconds: int = 300,
    dry_run: bool = False,
    generated_at: datetime | None = None,
) -> dict[str, Any]:
    """A JSON schedule body with one step per replica count, starting at ``start``."""
    generated = generated_at or start
    return {
        "model_version": "forescale-lightgbm/3",
        "generated_at": generated.isoformat(),
        "valid_until": (generated + valid_for).isoformat(),
        "step_seconds": step_seconds,
        "dry_run": dry_run,
        "steps": [
            {
                "ts": (start + timedelta(seconds=index * step_seconds)).isoformat(),
                "replicas": count,
                "forecast_p50": 10.0 * count,
                "forecast_p90": 12.0 * count,
            }
            for index, count in enumerate(replicas)
        ],
    }


def auth(token: str = TOKEN) -> dict[str, str]:
    """An Authorization header (the write token unless told)."""
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def running_server(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn server on a free localhost port; yield its base URL."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    started = threading.Event()
    while thread.is_alive() and not server.started:
        started.wait(0.02)
    if not server.started:
        listener.close()
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()
        listener.close()
