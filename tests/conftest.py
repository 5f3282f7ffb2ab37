"""Shared test fixtures: an isolated Forescale home and small seeded synthetic fleets."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from core.settings import REPO_ROOT, Settings, get_settings
from pipelines.telemetry import generate_fleet

FIXED_END = pd.Timestamp("2026-11-16 00:00", tz="UTC")  # a Monday


def pytest_configure(config: pytest.Config) -> None:
    """Keep Airflow, MLflow and friends out of the user's home directory for the whole run."""
    base = Path(tempfile.mkdtemp(prefix="forescale-tests-"))
    os.environ.setdefault("AIRFLOW_HOME", str(base / "airflow"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow-default.db'}")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose home is a fresh temporary directory."""
    monkeypatch.setenv("FORESCALE_HOME", str(tmp_path / "home"))
    return get_settings(home=tmp_path / "home")


FleetFactory = Callable[..., pd.DataFrame]


@pytest.fixture
def make_fleet() -> FleetFactory:
    """Build a small seeded synthetic fleet ending at a fixed Monday midnight."""

    def factory(
        services: int = 2,
        days: int = 3,
        step_minutes: int = 1,
        seed: int = 7,
        end: pd.Timestamp = FIXED_END,
    ) -> pd.DataFrame:
        return generate_fleet(services, days, step_minutes=step_minutes, seed=seed, end=end)

    return factory


def settings_with_params(home: Path, **sections: dict) -> Settings:
    """Settings for ``home`` with a private params.yaml: the repository's, with ``sections`` merged.

    Args:
        home: The Forescale home (created).
        **sections: Top-level sections whose keys replace the repository's values.

    Returns:
        Settings reading that params file.
    """
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for name, values in sections.items():
        params[name] = {**(params.get(name) or {}), **values}
    home.mkdir(parents=True, exist_ok=True)
    (home / "params.yaml").write_text(yaml.safe_dump(params))
    return get_settings(home=home, params_file=home / "params.yaml")
