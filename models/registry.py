"""MLflow registry helpers: log a forecaster as a pyfunc, promote it, load the champion.

Every service has its own registered model, ``forescale-<service>``; the version in service carries
the alias ``champion``. The previous champion is remembered in the alias ``previous-champion`` so a
live rollback can move ``champion`` back.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from core.schema import validate_service_name
from core.settings import Settings
from models.base import Forecaster
from models.persistence import load_object, saved_digest

CHAMPION = "champion"
PREVIOUS = "previous-champion"
EXPERIMENT = "forescale-forecasting"
BACKTEST_TAG = "backtest_error"
FAMILY_TAG = "model_family"
RUN_TAG = "service_run"
"""Version tag: the run that registered the version (a service's own run in training, with its
backtest metrics and plots; the model itself may be logged once in its shard's run)."""

PIP_REQUIREMENTS = [
    "pandas",
    "numpy",
    "pyarrow",
    "lightgbm==4.7.0",
    "prophet==1.5.0",
    "pydantic-settings",
]

log = logging.getLogger(__name__)


def registered_name(service: str, kind: str = "forecaster") -> str:
    """Registered model name of a service, e.g. ``forescale-checkout``.

    Args:
        service: Service name.
        kind: ``forecaster`` or ``anomaly``.

    Raises:
        ValueError: If the service name is invalid (see
            :func:`core.schema.validate_service_name`).
    """
    validate_service_name(service)
    return f"forescale-{service}" if kind == "forecaster" else f"forescale-{kind}-{service}"


class ForecasterPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper: input is long-format history, output the quantile forecast.

    ``params`` of ``predict`` may hold ``horizon`` (steps, default 288) and ``quantiles``
    (comma-separated, default ``0.5,0.9``).
    """

    def load_context(self, context: Any) -> None:
        """Load the saved forecaster from the model's artifacts (shared within
        :func:`forecasters_shared`)."""
        path = Path(context.artifacts["forecaster"])
        shared = _SHARED_LOADS.get()
        if shared is None:
            self.forecaster: Forecaster = load_object(path, Forecaster)
            return
        digest = saved_digest(path)
        if digest not in shared.forecasters:
            shared.forecasters[digest] = load_object(path, Forecaster)
        self.forecaster = shared.forecasters[digest]

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Forecast from the given history."""
        params = params or {}
        quantiles = tuple(float(q) for q in str(params.get("quantiles", "0.5,0.9")).split(","))
        return self.forecaster.predict(
            int(params.get("horizon", 288)),
            quantiles,
            history=model_input if len(model_input) else None,
        )


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version and the backtest error it was registered with."""

    name: str
    version: str
    family: str
    backtest_error: float
    run_id: str | None
    source: str | None = None  # the logged model it points at (``models:/<model id>``), if known

    @property
    def label(self) -> str:
        """``name/version``, the model version string published with a schedule."""
        return f"{self.name}/{self.version}"


def configure_mlflow(settings: Settings, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the configured tracking store and create the experiment if needed.

    Args:
        settings: Runtime settings.
        experiment: Experiment name.

    Returns:
        The experiment id.
    """
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        mlflow.set_experiment(experiment_id=found.experiment_id)
        return found.experiment_id
    location: str | None = (settings.mlflow_artifacts_dir / experiment).as_uri()
    if settings.tracking_uri.startswith(("http://", "https://", "databricks")):
        location = None  # a tracking server chooses (and proxies) its own artifact store
    # Classic ML experiment: the MLflow UI opens on runs and models, not on GenAI traces.
    experiment_id = client.create_experiment(
        experiment,
        artifact_location=location,
        tags={"mlflow.experimentKind": "custom_model_development"},
    )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


class _LinesToLog(io.TextIOBase):
    """A text stream that logs each complete line it is written at INFO."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger
        self.pending = ""

    def writable(self) -> bool:
        """Always: this is an output stream."""
        return True

    def write(self, text: str) -> int:
        """Log the complete lines of ``text``; keep a trailing partial line for later."""
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if line.strip():
                self.logger.info("%s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        """Log a pending partial line."""
        if self.pending.strip():
            self.logger.info("%s", self.pending.rstrip())
        self.pending = ""


@contextlib.contextmanager
def mlflow_messages_as_logs() -> Iterator[None]:
    """Log what MLflow prints on stderr meanwhile at INFO, through this module's logger.

    MLflow prints ``Successfully registered model ...`` and ``Created version ...`` on stderr,
    which Airflow's task logs show as errors.
    """
    stream = _LinesToLog(log)
    with contextlib.redirect_stderr(stream):
        try:
            yield
        finally:
            stream.flush()


def log_registered_pyfunc(
    name: str | None,
    artifact_name: str,
    python_model: mlflow.pyfunc.PythonModel,
    artifacts: dict[str, str],
) -> str:
    """Log a pyfunc model in the active run and, with a ``name``, register it as a new version.

    Args:
        name: Registered model name (``None``: log only).
        artifact_name: Name of the model inside the run.
        python_model: The pyfunc wrapper.
        artifacts: Files the wrapper loads, ``{key: local path}``.

    Returns:
        The new version number, or the logged model's URI when ``name`` is ``None``.
    """
    with mlflow_messages_as_logs():
        info = mlflow.pyfunc.log_model(
            name=artifact_name,
            python_model=python_model,
            artifacts=artifacts,
            pip_requirements=PIP_REQUIREMENTS,
            registered_model_name=name,
        )
    return str(info.model_uri if name is None else info.registered_model_version)


def log_shared_forecaster(model: Forecaster, artifact_name: str = "model") -> str:
    """Log a fitted forecaster once in the active run, for one or many services' versions.

    A model fitted on a shard of services (a global LightGBM, an ensemble) is stored once and
    each service that chose it gets a registered version pointing at it
    (:func:`register_forecaster`): the registry grows by a version per service, the artifact
    store by a model per shard and family.

    Args:
        model: The fitted forecaster.
        artifact_name: Name of the model inside the run (unique within the run).

    Returns:
        The logged model's URI, for :func:`register_forecaster`.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "forecaster"
        model.save(path)
        return log_registered_pyfunc(
            None, artifact_name, ForecasterPyfunc(), {"forecaster": str(path)}
        )


def register_forecaster(
    model_uri: str, service: str, family: str, backtest_error: float
) -> RegisteredVersion:
    """Register a logged forecaster as a new version of a service's model.

    The version's run is the active run (a service's own run in training, with its backtest
    metrics and plots), not the run the shared model was logged in.

    Args:
        model_uri: From :func:`log_shared_forecaster` (``models:/<model id>``).
        service: The service.
        family: The model family (a version tag).
        backtest_error: The service's rolling-origin backtest error (lower is better).

    Returns:
        The new registered version (not yet promoted).
    """
    name = registered_name(service)
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    run = mlflow.active_run()
    version = client.create_model_version(
        name,
        source=model_uri,
        run_id=run.info.run_id if run else None,
        model_id=model_uri.removeprefix("models:/"),
    )
    return tag_version(name, str(version.version), family, backtest_error)


def log_forecaster(model: Forecaster, service: str, backtest_error: float) -> RegisteredVersion:
    """Log a fitted forecaster in the active run and register it as a new version of one
    service's model (:func:`log_shared_forecaster`, then :func:`register_forecaster`).

    Args:
        model: The fitted forecaster.
        service: The service it forecasts.
        backtest_error: Its rolling-origin backtest error (lower is better).

    Returns:
        The new registered version (not yet promoted).
    """
    return register_forecaster(log_shared_forecaster(model), service, model.name, backtest_error)


def version_by_alias(name: str, alias: str = CHAMPION) -> RegisteredVersion | None:
    """The version of a registered model holding ``alias``, or ``None`` if there is none."""
    try:
        mv = MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return RegisteredVersion(
        name,
        str(mv.version),
        mv.tags.get(FAMILY_TAG, "unknown"),
        float(mv.tags.get(BACKTEST_TAG, "nan")),
        mv.run_id,
        mv.source,
    )


def champion(
    service: str, alias: str = CHAMPION, kind: str = "forecaster"
) -> RegisteredVersion | None:
    """The version of a service's model holding ``alias`` (default ``champion``), or ``None``."""
    return version_by_alias(registered_name(service, kind), alias)


def promote(candidate: RegisteredVersion) -> None:
    """Give ``candidate`` the champion alias, remembering the old champion as previous."""
    current = version_by_alias(candidate.name)
    client = MlflowClient()
    if current is not None and current.version != candidate.version:
        client.set_registered_model_alias(candidate.name, PREVIOUS, current.version)
    client.set_registered_model_alias(candidate.name, CHAMPION, candidate.version)


def tag_version(name: str, version: str, family: str, backtest_error: float) -> RegisteredVersion:
    """Record family and backtest error on a new registered version.

    Args:
        name: Registered model name.
        version: The version just created.
        family: Model family.
        backtest_error: Its backtest error (lower is better).

    Returns:
        The registered version.
    """
    client = MlflowClient()
    client.set_model_version_tag(name, version, BACKTEST_TAG, f"{backtest_error:.6g}")
    client.set_model_version_tag(name, version, FAMILY_TAG, family)
    run = mlflow.active_run()
    if run is not None:
        client.set_model_version_tag(name, version, RUN_TAG, run.info.run_id)
    return RegisteredVersion(
        name, version, family, backtest_error, run.info.run_id if run else None
    )


@dataclass
class _SharedLoads:
    """What :func:`forecasters_shared` keeps: forecasters by saved digest, and whether MLflow's
    environment check ran."""

    forecasters: dict[str, Forecaster]
    checked: bool = False
    by_source: dict[str, Forecaster] = field(default_factory=dict)


_SHARED_LOADS: ContextVar[_SharedLoads | None] = ContextVar("shared_forecaster_loads", default=None)


@contextlib.contextmanager
def forecasters_shared() -> Iterator[None]:
    """Within the block, registered versions holding byte-identical forecasters load as one object.

    Training logs the model it fitted on a shard once and registers it for each service that
    chose it (:func:`log_shared_forecaster`), so a shard's services hold a few distinct
    forecasters.
    Within the block each distinct one is unpickled once and the versions share it, which is safe
    because forecasting and explaining never change a fitted forecaster; a version pointing at a
    logged model already loaded in the block (its ``source``) is not even fetched again from the
    artifact store. MLflow's check of the
    model's requirements and Python version against this environment (a warning on mismatch)
    runs on the block's first load only: :func:`log_shared_forecaster` logs every model with
    :data:`PIP_REQUIREMENTS`. Outside the block every load is independent.
    """
    token = _SHARED_LOADS.set(_SharedLoads({}))
    try:
        yield
    finally:
        _SHARED_LOADS.reset(token)


def load_forecaster(version: RegisteredVersion) -> Forecaster:
    """Load the forecaster object behind a registered version.

    Args:
        version: A registered version (e.g. from :func:`champion`).

    Returns:
        The fitted forecaster (within :func:`forecasters_shared`, possibly the object another
        version with the same saved forecaster loaded).
    """
    shared = _SHARED_LOADS.get()
    if shared is not None and version.source in shared.by_source:
        return shared.by_source[version.source]
    checked = shared is not None and shared.checked
    pyfunc = mlflow.pyfunc.load_model(
        f"models:/{version.name}/{version.version}", suppress_warnings=checked
    )
    forecaster: Forecaster = pyfunc.unwrap_python_model().forecaster
    if shared is not None:
        shared.checked = True
        if version.source is not None:
            shared.by_source[version.source] = forecaster
    return forecaster


def load_version(label: str) -> Forecaster:
    """Load a forecaster from its ``name/version`` label (as published with a schedule).

    Args:
        label: e.g. ``forescale-checkout/3``.

    Returns:
        The fitted forecaster.

    Raises:
        ValueError: If the label is not ``name/version``.
    """
    name, _, version = label.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"model version label must be 'name/version', got {label!r}")
    return load_forecaster(RegisteredVersion(name, version, "unknown", float("nan"), None))
