"""Stage 3: the Feast feature store (offline source, registry, materialization, retrieval).

The declarations live in the repository's ``features/`` folder (``definitions.py`` and the
``feature_store.yaml`` template); every piece of Feast state lives under
``settings.feature_repo_dir``: the rendered ``feature_store.yaml``, the file registry and the
SQLite online store (or Redis when ``settings.online_store == "redis"``). The offline source is
a folder under ``settings.offline_dir`` holding one Parquet file per UTC day of
``event_timestamp`` (:func:`offline_source_path`), written by :func:`update_offline_features`
and read by Feast's DuckDB offline store, which reads every ``*.parquet`` file of the folder as
one table. An update rewrites only the days whose rows it changes.

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
import shutil
import string
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

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
    write_parquet_atomically,
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
OFFLINE_SOURCE = "service_features"
"""The offline source folder, relative to ``settings.offline_dir`` (as declared in definitions.py)."""
LEGACY_OFFLINE_FILE = "service_features.parquet"
"""The single-file offline source of earlier homes, relative to ``settings.offline_dir``."""

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
    """Folder of the offline source (``features/definitions.py`` declares it relative).

    It holds one Parquet file per UTC day of ``event_timestamp``, named ``YYYY-MM-DD.parquet``,
    with every service's rows of that day sorted by (service, event_timestamp); Feast reads all
    of them as one table. Files being written are named ``.YYYY-MM-DD.parquet.partial`` and are
    never read.

    Args:
        settings: Runtime settings.

    Returns:
        The folder under ``settings.offline_dir``.
    """
    return settings.offline_dir / OFFLINE_SOURCE


def offline_day_files(settings: Settings) -> dict[date, Path]:
    """The day files of the offline source.

    Args:
        settings: Runtime settings.

    Returns:
        UTC day -> its Parquet file, in day order (empty when the source holds no file).
    """
    folder = offline_source_path(settings)
    if not folder.is_dir():
        return {}
    days = {date.fromisoformat(path.stem): path for path in folder.glob("*.parquet")}
    return dict(sorted(days.items()))


def _write_offline_day(folder: Path, day: date, rows: pd.DataFrame) -> None:
    """Replace one day file of the offline source atomically (temporary file, then rename).

    Args:
        folder: The offline source folder (:func:`offline_source_path`) or one being built.
        day: The UTC day of every row's ``event_timestamp``.
        rows: The day's rows of all services; an empty frame removes the day file.
    """
    path = folder / f"{day.isoformat()}.parquet"
    if rows.empty:
        path.unlink(missing_ok=True)
        return
    rows = rows.sort_values([SERVICE, EVENT_TIMESTAMP], ignore_index=True)
    rows[EVENT_TIMESTAMP] = rows[EVENT_TIMESTAMP].astype(TS_DTYPE)
    write_parquet_atomically(rows, path)


def _split_by_day(features: pd.DataFrame) -> dict[date, pd.DataFrame]:
    """Rows of an offline frame grouped by the UTC day of their ``event_timestamp``."""
    stamps = pd.to_datetime(features[EVENT_TIMESTAMP], utc=True).dt.tz_convert(None)
    days = stamps.dt.floor("D").to_numpy()  # naive UTC datetime64, not one object per row
    return {pd.Timestamp(day).date(): rows for day, rows in features.groupby(days, sort=True)}


def migrate_offline_source(settings: Settings) -> bool:
    """Split the single-file offline source of an earlier home into the day-file folder.

    The folder appears complete or not at all (written aside, then renamed). The old file is
    left in place for the readers whose registry still names it; :func:`apply_features` removes
    it once the registry names the folder.

    Args:
        settings: Runtime settings.

    Returns:
        Whether the folder was created from the old file.
    """
    legacy = settings.offline_dir / LEGACY_OFFLINE_FILE
    folder = offline_source_path(settings)
    if not legacy.exists() or folder.exists():
        return False
    aside = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir(parents=True)
    for day, rows in _split_by_day(pd.read_parquet(legacy)).items():
        _write_offline_day(aside, day, rows)
    try:
        os.rename(aside, folder)
    except OSError:  # another process migrated meanwhile: its folder holds the same rows
        shutil.rmtree(aside, ignore_errors=True)
        return False
    return True


def apply_features(settings: Settings) -> bool:
    """Register the declared entity, source, feature views and service (``feast apply``).

    The registry records, as a tag of its Feast project (``APPLIED_TAG``), the fingerprint of
    what it was last applied from (:func:`applied_fingerprint`: the ``feature_store.yaml`` and
    the declarations). The registry is only written when that fingerprint differs from the
    current one, a declared object is missing from the registry, or a registered feature view or
    feature service is no longer declared (it is deleted, as ``feast apply`` does); otherwise
    the registry file and the online store are left untouched.

    A home whose offline source is still the single file of earlier versions gets the day-file
    folder first (:func:`migrate_offline_source`), and the old file is removed once the registry
    names the folder.

    Args:
        settings: Runtime settings.

    Returns:
        Whether the registry was written.
    """
    from feast import Project

    migrate_offline_source(settings)
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
        written = False
    else:
        stamp = Project(name=store.project, tags={APPLIED_TAG: fingerprint})
        store.apply([stamp, *declared], objects_to_delete=stale, partial=not stale)
        written = True
    if offline_source_path(settings).exists():
        (settings.offline_dir / LEGACY_OFFLINE_FILE).unlink(missing_ok=True)
    return written


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

    Only the day files whose rows change are rewritten (:func:`offline_source_path`); a
    recomputed row replaces the source's row of the same (service, event_timestamp). A home
    with the single-file source of earlier versions is migrated first
    (:func:`migrate_offline_source`).

    Args:
        settings: Runtime settings.
        services: Services to recompute (all stored services when omitted); the rows of other
            services already in the source are kept.
        since: Only telemetry from this instant on is new (e.g. the ingest interval's start): the
            rows of steps ending after it are recomputed from the last ``FEATURE_LOOKBACK`` of
            telemetry and the older rows are kept, which gives the same source as a full
            recomputation while rewriting only the days from ``since`` on (one day file for an
            interval within a day). ``None`` recomputes everything.

    Returns:
        The offline source folder (Parquet day files, ``event_timestamp`` as
        ``timestamp[us, UTC]``).

    Raises:
        ValueError: If there is no stored telemetry for the requested services.
    """
    migrate_offline_source(settings)
    existing = offline_day_files(settings)
    since_ts = utc_timestamp(since) if since is not None and existing else None
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
    folder = offline_source_path(settings)
    new_days = _split_by_day(features)
    if services is None and since_ts is None:  # a full recomputation: every day is rewritten
        for day, rows in new_days.items():
            _write_offline_day(folder, day, rows)
        for day in existing.keys() - new_days.keys():
            existing[day].unlink(missing_ok=True)
        return folder
    # Days that may hold rows being replaced: those from `since` on, or all for a service rebuild.
    touched = {d for d in existing if since_ts is None or d >= since_ts.date()}
    for day in sorted(touched | new_days.keys()):
        new = new_days.get(day, features.iloc[:0])
        if day not in existing:
            _write_offline_day(folder, day, new)
            continue
        old = pd.read_parquet(existing[day])
        keep = ~old[SERVICE].isin(recomputed)
        if since_ts is not None:
            keep |= old[EVENT_TIMESTAMP] <= since_ts
        if new.empty and keep.all():
            continue
        _write_offline_day(folder, day, pd.concat([old[keep], new], ignore_index=True))
    return folder


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
    days = offline_day_files(settings)
    if not days:
        raise ValueError(f"offline source {path} holds no rows: run update_offline_features")
    first_day = next(iter(days.values()))
    first = pq.read_table(first_day, columns=[EVENT_TIMESTAMP]).column(0).to_pandas().min()
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

    The value of the step ``[ts, ts + step)`` is the step aggregate Feast holds stamped at the
    step's end, so it uses telemetry of that step only and a row never sees later data.
    Training, publishing and the anomaly stage all call this.

    The rows are read with the offline store's range scan (``pull_all_from_table_or_query``),
    linear in the rows of the window, not with a point-in-time join of an entity row per
    service and step. Both give the same rows: with ``service_5min``'s one-second TTL the join
    serves exactly the row stamped at the step's end, and the offline source holds one row per
    service and step end (:func:`update_offline_features`); a row off the step grid, which the
    join would not serve either, is left out (ADR 0004).

    Args:
        settings: Runtime settings.
        services: Services to include.
        start: First step (rounded up to the step grid).
        end: End of the window (exclusive): the last step is the one ending at or before it.

    Returns:
        Long frame ``service, ts, requests`` sorted by (service, ts), one row per step with a
        value (steps without telemetry are left out).

    Raises:
        ValueError: If ``services`` is empty, the window holds no step, or the offline source
            holds two rows for one service and step.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    from feast.infra.offline_stores.offline_utils import get_offline_store_from_config

    if not services:
        raise ValueError("model_inputs needs at least one service")
    step = pd.Timedelta(minutes=settings.step_minutes)
    first_step, end_utc = utc_timestamp(start).ceil(step), utc_timestamp(end)
    if first_step + step > end_utc:
        raise ValueError(f"window [{start}, {end}) holds no {settings.step_minutes}-minute step")
    feature = input_feature(settings)
    store = feature_store(settings)
    view = store.get_feature_view(STEP_VIEW)
    source = view.batch_source
    table = (
        get_offline_store_from_config(store.config.offline_store)
        .pull_all_from_table_or_query(
            config=store.config,
            data_source=source,
            join_key_columns=[SERVICE],
            feature_name_columns=[feature],
            timestamp_field=source.timestamp_field,
            created_timestamp_column=source.created_timestamp_column or None,
            start_date=(first_step + step).to_pydatetime(),
            end_date=end_utc.to_pydatetime(),
        )
        .to_arrow()
    )
    # The scan holds every service's rows of the window: keep the asked ones before pandas.
    asked = pa.array(sorted({str(s) for s in services}), type=pa.string())
    table = table.filter(pc.is_in(table[SERVICE].cast(pa.string()), value_set=asked))
    frame = table.to_pandas()
    stamps = pd.to_datetime(frame[source.timestamp_field], utc=True)
    on_grid = ((stamps - first_step) % step) == pd.Timedelta(0)
    frame = frame[on_grid & frame[feature].notna()]
    stamps = stamps[frame.index]
    out = pd.DataFrame(
        {
            SERVICE: frame[SERVICE].astype(str),
            TS: (stamps - step).astype(TS_DTYPE),
            REQUESTS: frame[feature].astype(float),
        }
    )
    doubled = out.duplicated([SERVICE, TS], keep=False)
    if doubled.any():
        first = out[doubled].iloc[0]
        raise ValueError(
            f"the offline source {offline_source_path(settings)} holds {int(doubled.sum())} rows "
            f"for steps that must have one, e.g. {first[SERVICE]!r} at {first[TS] + step}: "
            "rebuild it (forescale features update)"
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
