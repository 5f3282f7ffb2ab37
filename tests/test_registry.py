"""Registry loads (real MLflow): versions of one saved forecaster share one load within a block."""

from __future__ import annotations

from collections.abc import Iterator

import mlflow
import pytest
from conftest import FleetFactory

import models.registry
from core.settings import Settings
from models.base import Forecaster
from models.naive import SeasonalNaiveForecaster
from models.registry import configure_mlflow, forecasters_shared, load_forecaster, log_forecaster


@pytest.fixture
def tracking(settings: Settings) -> Iterator[Settings]:
    """MLflow pointed at the test home's tracking store, restored afterwards."""
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    settings.ensure_dirs()
    configure_mlflow(settings)
    try:
        yield settings
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def test_versions_of_one_saved_forecaster_load_once_within_forecasters_shared(
    tracking: Settings, make_fleet: FleetFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = make_fleet(services=2, days=3, step_minutes=5)
    model = SeasonalNaiveForecaster().fit(history)
    first_service = history[history["service"] == history["service"].iloc[0]]
    other = SeasonalNaiveForecaster().fit(first_service)
    with mlflow.start_run():
        first = log_forecaster(model, "checkout", 0.1)
        second = log_forecaster(model, "search", 0.1)
        third = log_forecaster(other, "ads", 0.1)
    unpickled: list[Forecaster] = []
    load_object = models.registry.load_object

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        unpickled.append(load_object(*args, **kwargs))
        return unpickled[-1]

    monkeypatch.setattr(models.registry, "load_object", counted)
    with forecasters_shared():
        shared = [load_forecaster(v) for v in (first, second, third, first)]
    assert shared[0] is shared[1] is shared[3] and shared[2] is not shared[0]
    assert len(unpickled) == 2
    apart = [load_forecaster(v) for v in (first, second)]
    assert apart[0] is not apart[1] and len(unpickled) == 4
    forecast = shared[0].predict(12, (0.5, 0.9))
    assert forecast.equals(apart[1].predict(12, (0.5, 0.9)))


def test_versions_of_one_logged_model_are_fetched_once_within_forecasters_shared(
    tracking: Settings, make_fleet: FleetFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.registry import (
        champion,
        log_shared_forecaster,
        promote,
        register_forecaster,
    )

    history = make_fleet(services=2, days=3, step_minutes=5)
    model = SeasonalNaiveForecaster().fit(history)
    with mlflow.start_run():
        uri = log_shared_forecaster(model)
        for service in ("checkout", "search"):
            promote(register_forecaster(uri, service, model.name, 0.1))
    versions = [champion(service) for service in ("checkout", "search")]
    assert all(v is not None and v.source == uri for v in versions)
    fetched: list[str] = []
    load_model = mlflow.pyfunc.load_model

    def counted(model_uri: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        fetched.append(model_uri)
        return load_model(model_uri, *args, **kwargs)

    monkeypatch.setattr(mlflow.pyfunc, "load_model", counted)
    with forecasters_shared():
        loaded = [load_forecaster(v) for v in versions if v is not None]
    assert loaded[0] is loaded[1] and len(fetched) == 1
    apart = [load_forecaster(v) for v in versions if v is not None]
    assert apart[0] is not apart[1] and len(fetched) == 3
    assert apart[0].predict(12, (0.5,)).equals(loaded[1].predict(12, (0.5,)))
