"""Feast declarations for Forescale: the ``service`` entity and its feature views.

Declarations only: no I/O, no settings. ``pipelines.features.apply_features`` registers these
objects in the per-home Feast repository (``settings.feature_repo_dir``) and resolves the source's
relative ``path`` against ``settings.offline_dir``; ``pipelines.features.update_offline_features``
writes that file.

Every row of the offline source is stamped with ``event_timestamp`` = the END of a 5-minute step
and holds only values computed from telemetry strictly before that instant, so a point-in-time
join at entity time ``T`` never sees data from ``T`` onwards:

* ``service_5min``: aggregates of the step ``[event_timestamp - 5 min, event_timestamp)``.
* ``service_rolling``: statistics of the 5-minute request means over the hour / day before
  ``event_timestamp``, and the request mean of the step that starts one day / one week before
  ``event_timestamp`` (the same time of day / week as the step being forecast).
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, String

# How stale a row may be and still be served in a point-in-time join: up to two missing steps.
# Each entity row is range-joined with every row inside the TTL, so a longer TTL makes
# training_frame proportionally slower (1 h: 13 rows per entity row and view; 15 min: 4).
TTL = timedelta(minutes=15)

service = Entity(
    name="service",
    join_keys=["service"],
    value_type=ValueType.STRING,
    description="A scaled Kubernetes service (the telemetry's `service` column).",
)

service_features_source = FileSource(
    name="service_features",
    path="service_features.parquet",
    timestamp_field="event_timestamp",
    description="5-minute telemetry aggregates and rolling statistics, one row per service and "
    "5-minute step; relative to settings.offline_dir.",
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

service_rolling = FeatureView(
    name="service_rolling",
    entities=[service],
    ttl=TTL,
    schema=[
        Field(name="service", dtype=String),
        Field(name="requests_mean_1h", dtype=Float64),
        Field(name="requests_std_1h", dtype=Float64),
        Field(name="requests_mean_24h", dtype=Float64),
        Field(name="requests_std_24h", dtype=Float64),
        Field(name="requests_lag_1d", dtype=Float64, description="same step yesterday"),
        Field(name="requests_lag_7d", dtype=Float64, description="same step last week"),
    ],
    source=service_features_source,
    online=True,
    description="Rolling request statistics and seasonal lags.",
)

forecasting_features = FeatureService(
    name="forecasting",
    features=[service_5min, service_rolling],
    description="Every feature the forecasters use.",
)
