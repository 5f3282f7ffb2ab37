"""Feast declarations for Forescale: the ``service`` entity and its feature views.

Declarations only: no I/O, no settings. ``pipelines.features.apply_features`` registers these
objects in the per-home Feast repository (``settings.feature_repo_dir``) and resolves the source's
relative ``path`` against ``settings.offline_dir``; ``pipelines.features.update_offline_features``
writes that folder of Parquet files (its layout: ``pipelines.features.offline_source_path``),
which Feast's DuckDB offline store reads as one table.

Every row of the offline source is stamped with ``event_timestamp`` = the END of a 5-minute step
and holds only values computed from telemetry strictly before that instant, so a point-in-time
join at entity time ``T`` never sees data from ``T`` onwards:

* ``service_5min``: aggregates of the step ``[event_timestamp - 5 min, event_timestamp)``; the
  forecasters' input series is its ``requests_mean`` (or ``requests_max`` for a ``peak`` target).
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64, String

# How stale a row may be and still be served in a point-in-time join: a step's value is served
# at the step's end only, never for a later step that has no telemetry of its own.
TTL = timedelta(seconds=1)

service = Entity(
    name="service",
    join_keys=["service"],
    value_type=ValueType.STRING,
    description="A scaled Kubernetes service (the telemetry's `service` column).",
)

service_features_source = FileSource(
    name="service_features",
    path="service_features",
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    description="5-minute telemetry aggregates, one row per service and "
    "5-minute step; a folder of Parquet files relative to settings.offline_dir.",
)

service_5min = FeatureView(
    name="service_5min",
    entities=[service],
    ttl=TTL,
    schema=[
        Field(name="service", dtype=String),
        Field(name="requests_mean", dtype=Float64, description="mean request rate, req/s"),
        Field(name="requests_max", dtype=Float64, description="max 1-minute request rate"),
        Field(name="cpu_mean", dtype=Float64, description="mean CPU cores in use"),
        Field(name="latency_p95_max", dtype=Float64, description="max 1-minute p95 latency, ms"),
        Field(name="errors_mean", dtype=Float64, description="mean error rate, req/s"),
    ],
    source=service_features_source,
    online=True,
    description="Aggregates of the last complete 5-minute step.",
)

forecasting_features = FeatureService(
    name="forecasting",
    features=[service_5min],
    description="The step aggregates; the forecasters' input series is one of them.",
)
