"""Stage 3: the Feast feature store (offline source, registry, materialization, retrieval).

The declarations live in the repository's ``features/`` folder (``definitions.py`` and the
``feature_store.yaml`` template); every piece of Feast state lives under
``settings.feature_repo_dir``: the rendered ``feature_store.yaml``, the file registry and the
SQLite online store (or Redis when ``settings.online_store == "redis"``). The offline source is
one Parquet file under ``settings.offline_dir`` written by :func:`update_offline_features` and
read by Feast's DuckDB offline store.

Feature rows are stamped with the END of their 5-minute step and only use telemetry from before
that instant (see ``features/definitions.py``). The forecasters' input is the series of each
step's target (``training.target``: the step's mean request rate or its busiest minute):
:func:`model_inputs` reads it from Feast, point in time, for training and for publishing alike,
so both see the same values; the online store serves the same row at the forecast origin
(:func:`online_features`, tested for parity). The lags, rolling and calendar features of that
series are computed inside each forecaster from the series it is given.
"""

from __future__ import annotations

import hashlib
import os
import string
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from core.schema import (
    CPU,
    ERRORS,
    LATENCY_P95,
    METRICS,
    REQUESTS,
    SERVICE,
    TS,
    TS_DTYPE,
    require_columns,
    utc_timestamp,
)
from core.settings import REPO_ROOT, Settings
from pipelines.telemetry import read_telemetry

if TYPE_CHECKING:
    from feast import FeatureStore
    from google.protobuf.message import Message

DEFINITIONS_DIR = REPO_ROOT / "features"
"""The repository's Feast declarations (``definitions.py``, ``feature_store.yaml`` template)."""

APPLIED_TAG = "forescale_applied_sha256"
"""Tag of the Feast project: fingerprint of the configuration and declarations last applied."""
EVENT_TIMESTAMP = "event_timestamp"
FEATURE_SERVICE = "forecasting"
OFFLINE_FILE = "service_features.parquet"
"""The offline source, relative to ``settings.offline_dir`` (as declared in definitions.py)."""

STEP_VIEW = "service_5min"
AGGREGATES: dict[str, tuple[str, str]] = {
    "requests_mean": (REQUESTS, "mean"),
    "requests_max": (REQUESTS, "peak"),
    "cpu_mean": (CPU, "mean"),
    "latency_p95_max": (LATENCY_P95, "peak"),
    "errors_mean": (ERRORS, "mean"),
}
"""Feature -> (telemetry metric, step aggregation of :func:`core.steps.aggregate_steps`)."""
AGGREGATE_FEATURES: tuple[str, ...] = tuple(AGGREGATES)


def render_feature_store_yaml(settings: Settings) -> Path:
    """Write this home's ``feature_store.yaml`` from the template in ``features/``.

    ``${FEATURE_REPO_DIR}`` becomes ``settings.feature_repo_dir``; with
    ``settings.online_store == "redis"`` the online store becomes Redis at
    ``settings.redis_connection``. The file is only rewritten when its content changes.

    Args:
        settings: Runtime settings.

    Returns:
        The rendered file's path.
    """
    template = string.Template((DEFINITIONS_DIR / "feature_store.yaml").read_text())
    config = yaml.safe_load(template.substitute(FEATURE_REPO_DIR=str(settings.feature_repo_dir)))
    if settings.online_store == "redis":
        config["online_store"] = {
            "type": "redis",
            "connection_string": settings.redis_connection,
        }
    text = yaml.safe_dump(config, sort_keys=False)
    settings.feature_repo_dir.mkdir(parents=True, exist_ok=True)
    path = settings.feature_repo_dir / "feature_store.yaml"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def feature_store(settings: Settings) -> FeatureStore:
    """Open the Feast store of this home (rendering its configuration first).

    Args:
        settings: Runtime settings.

    Returns:
        A ``feast.FeatureStore`` rooted at ``settings.feature_repo_dir``.
    """
    from feast import FeatureStore

    render_feature_store_yaml(settings)
    return FeatureStore(repo_path=str(settings.feature_repo_dir))


def load_definitions(settings: Settings) -> list[Any]:
    """Load the Feast objects declared in ``features/definitions.py`` for this home.

    The module is loaded afresh on every call, and the relative paths of its file sources are
    resolved against ``settings.offline_dir``.

    Args:
        settings: Runtime settings.

    Returns:
        The entities, data sources, feature views and feature services, in that order.
    """
    from feast import Entity, FeatureService, FeatureView, FileSource

    module = _definitions_module()
    objects = list(vars(module).values())
    sources = [o for o in objects if isinstance(o, FileSource)]
    for source in sources:
        if not Path(source.file_options.uri).is_absolute():
            source.file_options.uri = str(settings.offline_dir / source.file_options.uri)
    return [
        *[o for o in objects if isinstance(o, Entity)],
        *sources,
        *[o for o in objects if isinstance(o, FeatureView)],
        *[o for o in objects if isinstance(o, FeatureService)],
    ]


def offline_source_path(settings: Settings) -> Path:
    """Path of the offline source file (``features/definitions.py`` declares it relative).

    Args:
        settings: Runtime settings.

    Returns:
        The Parquet file under ``settings.offline_dir``.
    """
    return settings.offline_dir / OFFLINE_FILE


def apply_features(settings: Settings) -> bool:
    """Register the declared entity, source, feature views and service (``feast apply``).

    The registry records, as a tag of its Feast project (``APPLIED_TAG``), the fingerprint of
    what it was last applied from (:func:`applied_fingerprint`: the ``feature_store.yaml`` and
    the declarations). The registry is only written when that fingerprint differs from the
    current one, a declared object is missing from the registry, or a registered feature view or
    feature service is no longer declared (it is deleted, as ``feast apply`` does); otherwise
    the registry file and the online store are left untouched.

    Args:
        settings: Runtime settings.

    Returns:
        Whether the registry was written.
    """
    from feast import Project

    store = feature_store(settings)
    declared = load_definitions(settings)
    fingerprint = applied_fingerprint(settings, declared)
    names = {_definition_key(o) for o in declared}
    registered = [
        *store.list_entities(),
        *store.list_data_sources(),
        *store.list_feature_views(),
        *store.list_feature_services(),
    ]
    stale = [
        o
        for o in registered
        if type(o).__name__ in {"FeatureView", "FeatureService"} and _definition_key(o) not in names
    ]
    project = next((p for p in store.list_projects() if p.name == store.project), None)
    if (
        project is not None
        and project.tags.get(APPLIED_TAG) == fingerprint
        and not stale
        and names <= {_definition_key(o) for o in registered}
    ):
        return False
    stamp = Project(name=store.project, tags={APPLIED_TAG: fingerprint})
    store.apply([stamp, *declared], objects_to_delete=stale, partial=not stale)
    return True


def applied_fingerprint(settings: Settings, declared: Sequence[Any]) -> str:
    """Fingerprint of this home's Feast configuration and declared objects.

    Covers the rendered ``feature_store.yaml`` (registry, online and offline stores) and the
    specification of every declared object as declared: its ``spec`` (the whole proto for a data
    source) without the ``project`` and ``meta`` fields (creation and update times) at any depth,
    serialized deterministically. Two loads of unchanged declarations give the same fingerprint.

    Args:
        settings: Runtime settings.
        declared: The objects of :func:`load_definitions`.

    Returns:
        A SHA-256 hex digest.
    """
    digest = hashlib.sha256((settings.feature_repo_dir / "feature_store.yaml").read_bytes())
    for definition in sorted(declared, key=_definition_key):
        proto = definition.to_proto()
        spec = proto.spec if "spec" in proto.DESCRIPTOR.fields_by_name else proto
        _drop_bookkeeping(spec)
        digest.update(repr(_definition_key(definition)).encode())
        digest.update(spec.SerializeToString(deterministic=True))
    return digest.hexdigest()


def _definition_key(definition: Any) -> tuple[str, str]:
    """(kind, name) of a Feast object; data sources are one kind whatever their class."""
    from feast.data_source import DataSource

    kind = "DataSource" if isinstance(definition, DataSource) else type(definition).__name__
    return kind, str(definition.name)


def _drop_bookkeeping(message: Message) -> None:
    """Clear the ``project`` and ``meta`` fields of a proto message and of every nested one."""
    for field, value in message.ListFields():
        if field.name in {"project", "meta"}:
            message.ClearField(field.name)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for item in value if field.is_repeated else [value]:
                _drop_bookkeeping(item)


def compute_service_features(telemetry: pd.DataFrame, step_minutes: int = 5) -> pd.DataFrame:
    """Aggregate raw telemetry to steps (:func:`core.steps.aggregate_steps`, one rule).

    One row per service and step; ``event_timestamp`` is the END of the step and every value in
    the row uses telemetry from before it (see ``features/definitions.py``).

    Args:
        telemetry: Long-format telemetry at any resolution finer than or equal to the step.
        step_minutes: Step length in minutes.

    Returns:
        ``service, event_timestamp`` (``timestamp[us, UTC]``) and the feature columns, sorted.

    Metrics other than ``requests`` are optional (a request-rate trace has only that one); their
    features are NaN for telemetry without them.

    Raises:
        ValueError: If ``service``, ``ts`` or ``requests`` is missing.
    """
    from core.steps import aggregate_steps

    require_columns(telemetry, (SERVICE, TS, REQUESTS), "telemetry")
    step = pd.Timedelta(minutes=step_minutes)
    raw = telemetry.reindex(columns=[SERVICE, TS, *METRICS])
    raw[SERVICE] = raw[SERVICE].astype(str)
    keys = [SERVICE, TS]
    features: pd.DataFrame | None = None
    for name, (metric, how) in AGGREGATES.items():
        part = aggregate_steps(raw, step, how, column=metric).rename(columns={metric: name})
        features = part if features is None else features.merge(part, on=keys, how="outer")
    assert features is not None
    features = features.reindex(columns=[*keys, *AGGREGATE_FEATURES])
    features[EVENT_TIMESTAMP] = (pd.to_datetime(features[TS], utc=True) + step).astype(TS_DTYPE)
    features = features.drop(columns=TS)[[SERVICE, EVENT_TIMESTAMP, *AGGREGATE_FEATURES]]
    features[SERVICE] = features[SERVICE].astype(str)
    features[list(AGGREGATE_FEATURES)] = features[list(AGGREGATE_FEATURES)].astype(float)
    return features.sort_values([SERVICE, EVENT_TIMESTAMP], ignore_index=True)


# How far back the rows of a step look: the step itself, with a margin.
FEATURE_LOOKBACK = pd.Timedelta(hours=1)


def update_offline_features(
    settings: Settings, services: Sequence[str] | None = None, since: datetime | None = None
) -> Path:
    """Recompute the offline source from the stored raw telemetry.

    Args:
        settings: Runtime settings.
        services: Services to recompute (all stored services when omitted); the rows of other
            services already in the file are kept.
        since: Only telemetry from this instant on is new (e.g. the ingest interval's start): the
            rows of steps ending after it are recomputed from the last ``FEATURE_LOOKBACK`` of
            telemetry and the older rows are kept, which gives the same file as a full
            recomputation at a fraction of the cost. ``None`` recomputes everything.

    Returns:
        The offline source file (Parquet, ``event_timestamp`` as ``timestamp[us, UTC]``).

    Raises:
        ValueError: If there is no stored telemetry for the requested services.
    """
    path = offline_source_path(settings)
    since_ts = utc_timestamp(since) if since is not None and path.exists() else None
    telemetry = read_telemetry(
        settings, services=services, start=None if since_ts is None else since_ts - FEATURE_LOOKBACK
    )
    if telemetry.empty:
        raise ValueError(
            f"no stored telemetry under {settings.telemetry_dir} for services "
            f"{list(services) if services is not None else 'all'}"
        )
    missing = sorted(set(services or ()) - set(telemetry[SERVICE].unique()))
    if missing:
        raise ValueError(
            f"no stored telemetry under {settings.telemetry_dir} for service(s) {missing}"
        )
    features = compute_service_features(telemetry, settings.step_minutes)
    recomputed = sorted(telemetry[SERVICE].unique())
    if since_ts is not None:
        features = features[features[EVENT_TIMESTAMP] > since_ts]
    if path.exists() and (services is not None or since_ts is not None):
        old = pd.read_parquet(path)
        keep = ~old[SERVICE].isin(recomputed)
        if since_ts is not None:
            keep |= old[EVENT_TIMESTAMP] <= since_ts
        features = pd.concat([old[keep], features], ignore_index=True)
        features = features.sort_values([SERVICE, EVENT_TIMESTAMP], ignore_index=True)
        features[EVENT_TIMESTAMP] = features[EVENT_TIMESTAMP].astype(TS_DTYPE)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    features.to_parquet(partial, index=False)
    os.replace(partial, path)
    return path


def materialize_features(settings: Settings, end: datetime) -> None:
    """Load the latest feature values up to ``end`` into the online store.

    The first call materializes everything from the offline source's first row (Feast's
    ``materialize_incremental`` would start at now - ttl and load nothing from historical data);
    later calls continue incrementally from where the previous one stopped.

    Args:
        settings: Runtime settings.
        end: Materialize the feature rows stamped at or before this instant (Feast's bound is
            inclusive), i.e. those built from telemetry before ``end``.

    Raises:
        ValueError: If the offline source does not exist or starts after ``end``.
    """
    end_utc = utc_timestamp(end).to_pydatetime()
    store = feature_store(settings)
    already = any(view.materialization_intervals for view in store.list_feature_views())
    if already:
        store.materialize_incremental(end_date=end_utc)
        return
    path = offline_source_path(settings)
    if not path.exists():
        raise ValueError(f"offline source {path} does not exist: run update_offline_features")
    first = pq.read_table(path, columns=[EVENT_TIMESTAMP]).column(0).to_pandas().min()
    if pd.isna(first) or first >= end_utc:
        raise ValueError(f"offline source {path} has no rows before {end_utc.isoformat()}")
    store.materialize(start_date=first.to_pydatetime(), end_date=end_utc)


def input_feature(settings: Settings) -> str:
    """The Feast feature that is a step's forecast target (``training.target``).

    Args:
        settings: Runtime settings.

    Returns:
        ``requests_mean`` (target ``mean``) or ``requests_max`` (target ``peak``).
    """
    from core.params import forecast_target

    return "requests_max" if forecast_target(settings.params_file) == "peak" else "requests_mean"


def model_inputs(
    settings: Settings, services: Sequence[str], start: datetime, end: datetime
) -> pd.DataFrame:
    """The forecasters' input series for every step of ``[start, end)``, read from Feast.

    The value of the step ``[ts, ts + step)`` is the step aggregate Feast serves at the step's
    end (a point-in-time join of the entity rows ``(service, ts + step)``), so it uses telemetry
    of that step only and a row never sees later data. Training and publishing both call this.

    Args:
        settings: Runtime settings.
        services: Services to include.
        start: First step (rounded up to the step grid).
        end: End of the window (exclusive): the last step is the one ending at or before it.

    Returns:
        Long frame ``service, ts, requests`` sorted by (service, ts), one row per step with a
        value (steps without telemetry are left out).

    Raises:
        ValueError: If ``services`` is empty or the window holds no step.
    """
    if not services:
        raise ValueError("model_inputs needs at least one service")
    step = pd.Timedelta(minutes=settings.step_minutes)
    first_step, end_utc = utc_timestamp(start).ceil(step), utc_timestamp(end)
    if first_step + step > end_utc:
        raise ValueError(f"window [{start}, {end}) holds no {settings.step_minutes}-minute step")
    ends = pd.date_range(first_step + step, end_utc, freq=step, inclusive="both")
    names = np.asarray([str(s) for s in services], dtype=object)
    entities = pd.DataFrame(
        {
            SERVICE: np.repeat(names, len(ends)),
            EVENT_TIMESTAMP: pd.DatetimeIndex(np.tile(ends.tz_convert(None).to_numpy(), len(names)))
            .tz_localize("UTC")
            .astype(TS_DTYPE),
        }
    )
    feature = input_feature(settings)
    store = feature_store(settings)
    frame = store.get_historical_features(
        entity_df=entities, features=[f"{STEP_VIEW}:{feature}"]
    ).to_df()
    # The TTL is one step: a served row older than the entity's step is another step's value.
    frame = frame.dropna(subset=[feature])
    stamps = pd.to_datetime(frame[EVENT_TIMESTAMP], utc=True)
    out = pd.DataFrame(
        {
            SERVICE: frame[SERVICE].astype(str),
            TS: (stamps - step).astype(TS_DTYPE),
            REQUESTS: frame[feature].astype(float),
        }
    )
    return out.sort_values([SERVICE, TS], ignore_index=True)


def online_features(settings: Settings, services: Sequence[str]) -> pd.DataFrame:
    """The latest materialized feature values of some services.

    Args:
        settings: Runtime settings.
        services: Services to look up.

    Returns:
        One row per service, in the given order: ``service`` and the features (NaN when a
        service has no materialized value).

    Raises:
        ValueError: If ``services`` is empty.
    """
    if not services:
        raise ValueError("online_features needs at least one service")
    store = feature_store(settings)
    frame = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICE),
        entity_rows=[{SERVICE: str(s)} for s in services],
    ).to_df()
    features = list(AGGREGATE_FEATURES)
    frame[features] = frame[features].astype(float)  # missing values come back as None
    return frame[[SERVICE, *features]]


def _definitions_module() -> ModuleType:
    """Execute ``features/definitions.py`` as a fresh module (no bytecode cache written there)."""
    path = DEFINITIONS_DIR / "definitions.py"
    module = ModuleType("forescale_feature_definitions")
    module.__file__ = str(path)
    exec(compile(path.read_text(), str(path), "exec"), module.__dict__)  # noqa: S102
    return module
