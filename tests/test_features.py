"""Feast feature store: offline features, apply, point-in-time training frames, online reads."""

from __future__ import annotations

import shutil
import socket
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FIXED_END, settings_with_params
from google.protobuf.message import Message

from core.settings import Settings, get_settings
from pipelines import features
from pipelines.features import (
    AGGREGATE_FEATURES,
    DEFINITIONS_DIR,
    apply_features,
    compute_service_features,
    feature_store,
    load_definitions,
    materialize_features,
    model_inputs,
    offline_source_path,
    online_features,
    update_offline_features,
)
from pipelines.telemetry import generate_fleet, read_telemetry, write_telemetry

FEATURES = list(AGGREGATE_FEATURES)
STEP = pd.Timedelta(minutes=5)
END = FIXED_END
START = END - pd.Timedelta(days=2)


def fleet_home(home: Path, suffix: str = "", **overrides: object) -> tuple[Settings, list[str]]:
    """A home with 3 services x 2 days of 1-minute telemetry stored and the offline source built."""
    settings = get_settings(home=home, **overrides)
    fleet = generate_fleet(3, 2, step_minutes=1, seed=7, end=END)
    fleet["service"] = fleet["service"] + suffix
    write_telemetry(settings, fleet, START, END)
    update_offline_features(settings)
    return settings, sorted(fleet["service"].unique())


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list[str]]:
    settings, services = fleet_home(tmp_path_factory.mktemp("features") / "home")
    apply_features(settings)
    return settings, services


def test_step_aggregates_use_only_the_step_they_stamp() -> None:
    ts = pd.date_range("2026-01-01", periods=8 * 24 * 60, freq="1min", tz="UTC")
    minute = np.arange(len(ts), dtype=float)
    raw = pd.DataFrame(
        {
            "service": "svc",
            "ts": ts,
            "requests": minute,
            "cpu": 1.0,
            "latency_p95_ms": minute % 7,
            "errors": 0.5,
        }
    )
    features = compute_service_features(raw).set_index("event_timestamp")
    assert str(features.index.dtype) == "datetime64[us, UTC]"
    at = pd.Timestamp("2026-01-08T00:00Z")  # row of the step [23:55, 00:00)
    row = features.loc[at]
    last_minute = (at - ts[0]) / pd.Timedelta(minutes=1) - 1
    assert row["requests_mean"] == pytest.approx(last_minute - 2)  # mean of the last 5 minutes
    assert row["requests_max"] == last_minute
    assert row["latency_p95_max"] == 6
    assert row["cpu_mean"] == 1.0 and row["errors_mean"] == 0.5


def test_definitions_declare_the_offline_file_and_stay_declarations_only(
    applied: tuple[Settings, list[str]],
) -> None:
    settings, _ = applied
    sources = [o for o in load_definitions(settings) if type(o).__name__ == "FileSource"]
    assert [s.path for s in sources] == [str(offline_source_path(settings))]
    assert sorted(p.name for p in DEFINITIONS_DIR.iterdir()) == [
        ".feastignore",
        "definitions.py",
        "feature_store.yaml",
    ]
    assert sorted(p.name for p in settings.feature_repo_dir.iterdir()) == [
        "feature_store.yaml",
        "online_store.db",
        "registry.db",
    ]


def drop_timestamps(message: Message) -> None:
    """Clear the created/updated timestamps Feast stamps on every (nested) registry object."""
    for field, value in message.ListFields():
        if field.name in {"created_timestamp", "last_updated_timestamp"}:
            message.ClearField(field.name)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for item in value if field.is_repeated else [value]:
                drop_timestamps(item)


def test_apply_is_idempotent(applied: tuple[Settings, list[str]]) -> None:
    settings, _ = applied

    def registered() -> dict[str, bytes]:
        store = feature_store(settings)
        objects = [
            *store.list_entities(),
            *store.list_feature_views(),
            *store.list_feature_services(),
            *store.list_data_sources(),
        ]
        protos = {f"{type(o).__name__}:{o.name}": o.to_proto() for o in objects}
        for proto in protos.values():
            drop_timestamps(proto)
        return {name: proto.SerializeToString(deterministic=True) for name, proto in protos.items()}

    before = registered()
    apply_features(settings)
    assert registered() == before
    assert set(before) == {
        "Entity:service",
        "FeatureView:service_5min",
        "FeatureService:forecasting",
        "FileSource:service_features",
    }


def test_apply_writes_the_registry_only_when_the_declarations_change(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = settings.feature_repo_dir / "registry.db"

    def registry_file() -> tuple[bytes, int]:
        return registry.read_bytes(), registry.stat().st_mtime_ns

    assert apply_features(settings)
    first = registry_file()
    assert not apply_features(settings)
    assert registry_file() == first

    changed = tmp_path / "features"
    shutil.copytree(DEFINITIONS_DIR, changed)
    definitions = changed / "definitions.py"
    original = definitions.read_text()
    description = "Aggregates of the last complete 5-minute step."
    assert description in original
    extra_view = (
        "\nextra_5min = FeatureView(name='extra_5min', entities=[service], ttl=TTL,"
        " schema=[Field(name='requests_mean', dtype=Float64)], source=service_features_source)\n"
    )
    definitions.write_text(original.replace(description, "changed") + extra_view)
    monkeypatch.setattr(features, "DEFINITIONS_DIR", changed)
    assert apply_features(settings)
    assert registry_file() != first
    store = feature_store(settings)
    assert store.get_feature_view("service_5min").description == "changed"
    assert sorted(v.name for v in store.list_feature_views()) == ["extra_5min", "service_5min"]
    assert not apply_features(settings)

    definitions.write_text(original)  # the extra view is no longer declared: it is deleted
    assert apply_features(settings)
    store = feature_store(settings)
    assert [v.name for v in store.list_feature_views()] == ["service_5min"]
    assert store.get_feature_view("service_5min").description == description
    assert not apply_features(settings)


def test_model_inputs_are_point_in_time_correct(applied: tuple[Settings, list[str]]) -> None:
    settings, services = applied
    window_start, window_end = END - pd.Timedelta(days=1), END
    before = model_inputs(settings, services, window_start, window_end)

    steps = pd.date_range(window_start, window_end, freq=STEP, inclusive="left")
    assert len(before) == len(services) * len(steps)
    assert list(before.columns) == ["service", "ts", "requests"]
    assert str(before["ts"].dtype) == "datetime64[us, UTC]"

    # Each step's value is the mean of the raw 1-minute rates over [ts, ts + 5 min).
    raw = read_telemetry(settings, services=[services[0]])
    raw_means = raw.set_index("ts")["requests"].resample(STEP).mean()
    first = before[before["service"] == services[0]].set_index("ts")
    np.testing.assert_allclose(first["requests"], raw_means.reindex(first.index))

    # Change one service's telemetry from `cut` on and rebuild only that service's rows.
    cut = END - pd.Timedelta(hours=10)
    changed = raw.copy()
    later = changed["ts"] >= cut
    changed.loc[later, ["requests", "cpu", "latency_p95_ms", "errors"]] *= 3.0
    write_telemetry(settings, changed[later], cut, END)
    update_offline_features(settings, services=[services[0]])
    after = model_inputs(settings, services, window_start, window_end)

    merged = before.merge(after, on=["service", "ts"], suffixes=("_before", "_after"))
    untouched = (merged["service"] != services[0]) | (merged["ts"] < cut)
    pd.testing.assert_series_equal(
        merged.loc[untouched, "requests_before"],
        merged.loc[untouched, "requests_after"],
        check_names=False,
    )
    np.testing.assert_allclose(
        merged.loc[~untouched, "requests_after"], merged.loc[~untouched, "requests_before"] * 3
    )
    # A window ending earlier sees nothing of later steps.
    early = model_inputs(settings, services, window_start, cut)
    assert early["ts"].max() == cut - STEP


def _point_in_time_inputs(
    settings: Settings, services: list[str], start: pd.Timestamp, end: pd.Timestamp
) -> pd.DataFrame:
    """The reference: Feast's point-in-time join of an entity row per service and step end."""
    first = start.ceil(STEP)
    ends = pd.date_range(first + STEP, end, freq=STEP, inclusive="both")
    entities = pd.DataFrame(
        [(service, stamp) for service in services for stamp in ends],
        columns=["service", "event_timestamp"],
    )
    joined = (
        feature_store(settings)
        .get_historical_features(entity_df=entities, features=["service_5min:requests_mean"])
        .to_df()
        .dropna(subset=["requests_mean"])
    )
    out = pd.DataFrame(
        {
            "service": joined["service"].astype(str),
            "ts": (pd.to_datetime(joined["event_timestamp"], utc=True) - STEP).astype(
                "datetime64[us, UTC]"
            ),
            "requests": joined["requests_mean"].astype(float),
        }
    )
    return out.sort_values(["service", "ts"], ignore_index=True)


def test_model_inputs_are_the_rows_feasts_point_in_time_join_serves(tmp_path: Path) -> None:
    settings, services = fleet_home(tmp_path / "home")
    folder = offline_source_path(settings)
    for path in sorted(folder.glob("*.parquet")):  # service 1 loses an hour of steps
        day = pd.read_parquet(path)
        hole = day["event_timestamp"].between(
            END - pd.Timedelta(hours=3), END - pd.Timedelta(hours=2), inclusive="left"
        )
        day[~hole | (day["service"] != services[1])].to_parquet(path)
    off_grid = day.iloc[[0]].assign(  # 2 minutes after a step end: no step's value
        event_timestamp=END - pd.Timedelta(hours=5) + pd.Timedelta(minutes=2), requests_mean=1e9
    )
    off_grid.to_parquet(folder / "late-row.parquet")
    apply_features(settings)
    start = END - pd.Timedelta(hours=6, minutes=2)  # mid-step: rounded up to the grid
    for chosen in (services, services[1:]):
        inputs = model_inputs(settings, chosen, start, END)
        pd.testing.assert_frame_equal(inputs, _point_in_time_inputs(settings, chosen, start, END))
        assert inputs["requests"].max() < 1e9
    assert len(inputs) == 2 * 72 - 12  # service 1's hour without rows is left out, not filled


def test_two_offline_rows_for_one_step_are_refused_naming_the_source(tmp_path: Path) -> None:
    settings, services = fleet_home(tmp_path / "home")
    folder = offline_source_path(settings)
    day = pd.read_parquet(min(folder.glob("*.parquet")))
    day.iloc[[0]].assign(requests_mean=0.0).to_parquet(folder / "again.parquet")
    apply_features(settings)
    with pytest.raises(ValueError, match=r"holds 2 rows for steps that must have one"):
        model_inputs(settings, services, START, END)


def test_a_step_without_telemetry_has_no_input_value(tmp_path: Path) -> None:
    settings = get_settings(home=tmp_path / "home")
    fleet = generate_fleet(1, 1, step_minutes=1, seed=3, end=END)
    hole = (fleet["ts"] >= END - pd.Timedelta(hours=2)) & (
        fleet["ts"] < END - pd.Timedelta(hours=1)
    )
    write_telemetry(settings, fleet[~hole], END - pd.Timedelta(days=1), END)
    update_offline_features(settings)
    apply_features(settings)
    inputs = model_inputs(settings, ["checkout"], END - pd.Timedelta(hours=3), END)
    assert len(inputs) == 36 - 12  # the hour without telemetry is left out, not filled
    assert (
        not inputs["ts"].between(END - pd.Timedelta(hours=2), END - pd.Timedelta(minutes=65)).any()
    )


def test_the_online_store_serves_the_origins_input_as_training_reads_it(tmp_path: Path) -> None:
    settings, services = fleet_home(tmp_path / "home")
    apply_features(settings)
    origin = END - pd.Timedelta(hours=3)
    materialize_features(settings, origin)
    offline = model_inputs(settings, services, origin - pd.Timedelta(hours=1), origin)
    last = offline.groupby("service").tail(1).set_index("service")["requests"]
    online = online_features(settings, services).set_index("service")["requests_mean"]
    pd.testing.assert_series_equal(online.loc[services], last.loc[services], check_names=False)


def check_materialize_and_online_read(settings: Settings, services: list[str]) -> None:
    apply_features(settings)
    offline = pd.read_parquet(offline_source_path(settings))
    first_end = END - pd.Timedelta(hours=12)
    for end in (first_end, END):  # the first call is a full materialize, the second incremental
        apply_features(settings)  # re-applying keeps the materialization state
        materialize_features(settings, end)
        online = online_features(settings, services).set_index("service")
        latest = (
            offline[offline["event_timestamp"] <= end]
            .sort_values("event_timestamp")
            .groupby("service")
            .tail(1)
            .set_index("service")
        )
        assert list(online.index) == services
        pd.testing.assert_frame_equal(
            online[FEATURES], latest.loc[services, FEATURES], check_dtype=False, check_names=False
        )
    intervals = [
        view.materialization_intervals for view in feature_store(settings).list_feature_views()
    ]
    assert all(len(views) == 2 and views[1][1] == END for views in intervals)


def test_peak_target_labels_each_step_with_its_busiest_minute(tmp_path: Path) -> None:
    from pipelines.publish import recent_history

    home = tmp_path / "home"
    peak = settings_with_params(home, training={"target": "peak"})
    fleet = generate_fleet(2, 2, step_minutes=1, seed=7, end=END)
    write_telemetry(peak, fleet, START, END)
    update_offline_features(peak)
    apply_features(peak)
    services = sorted(fleet["service"].unique())
    frame = model_inputs(peak, services, END - pd.Timedelta(hours=6), END)
    raw = read_telemetry(peak, services=[services[0]])
    busiest = raw.set_index("ts")["requests"].resample(STEP).max()
    first = frame[frame["service"] == services[0]].set_index("ts")
    np.testing.assert_allclose(first["requests"], busiest.reindex(first.index))
    assert (
        first["requests"]
        > raw.set_index("ts")["requests"].resample(STEP).mean().reindex(first.index)
    ).mean() > 0.9
    # The history a schedule is forecast from uses the same target.
    recent = recent_history(peak, [services[0]], END, days=1).set_index("ts")["requests"]
    np.testing.assert_allclose(recent, busiest.reindex(recent.index))


def test_unknown_forecast_target_is_refused(tmp_path: Path) -> None:
    from core.params import forecast_target

    bad = settings_with_params(tmp_path / "home", training={"target": "p99"})
    with pytest.raises(ValueError, match="training.target.*'p99'"):
        forecast_target(bad.params_file)


def test_materialize_then_online_read_sqlite(tmp_path: Path) -> None:
    settings, services = fleet_home(tmp_path / "home")
    check_materialize_and_online_read(settings, services)
    unknown = online_features(settings, ["no-such-service"])
    assert unknown[FEATURES].isna().all(axis=None)


def redis_reachable(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.integration
@pytest.mark.skipif(not redis_reachable(), reason="no Redis on 127.0.0.1:6379")
def test_materialize_then_online_read_redis(tmp_path: Path) -> None:
    # Unique service names keep this run's keys apart from anyone else's on the shared Redis.
    settings, services = fleet_home(
        tmp_path / "home",
        suffix=f"-{uuid.uuid4().hex[:8]}",
        online_store="redis",
        redis_connection="127.0.0.1:6379,db=0",
    )
    check_materialize_and_online_read(settings, services)
    config = (settings.feature_repo_dir / "feature_store.yaml").read_text()
    assert "type: redis" in config
    assert not (settings.feature_repo_dir / "online_store.db").exists()


def test_empty_requests_are_rejected(applied: tuple[Settings, list[str]]) -> None:
    settings, _ = applied
    with pytest.raises(ValueError, match="at least one service"):
        model_inputs(settings, [], START, END)
    with pytest.raises(ValueError, match="holds no 5-minute step"):
        model_inputs(settings, ["x"], END, END)
    with pytest.raises(ValueError, match=r"no stored telemetry .* \['nope'\]"):
        update_offline_features(settings, services=["nope"])


def test_incremental_update_gives_the_same_file_as_a_full_recompute(settings: Settings) -> None:
    fleet = generate_fleet(2, 9, step_minutes=1, seed=5, end=FIXED_END)
    cut = FIXED_END - pd.Timedelta(hours=2)
    write_telemetry(settings, fleet[fleet["ts"] < cut], fleet["ts"].min(), cut)
    path = update_offline_features(settings)
    write_telemetry(settings, fleet[fleet["ts"] >= cut], cut, FIXED_END)
    incremental = pd.read_parquet(update_offline_features(settings, since=cut))
    full = pd.read_parquet(update_offline_features(settings))
    assert path == offline_source_path(settings)
    assert incremental["event_timestamp"].max() == FIXED_END
    pd.testing.assert_frame_equal(incremental, full)


def test_an_update_rewrites_only_the_day_files_it_changes(settings: Settings) -> None:
    fleet = generate_fleet(2, 3, step_minutes=1, seed=5, end=FIXED_END)
    cut = FIXED_END - pd.Timedelta(minutes=10)
    write_telemetry(settings, fleet[fleet["ts"] < cut], fleet["ts"].min(), cut)
    update_offline_features(settings)
    days = features.offline_day_files(settings)
    assert [d.isoformat() for d in days] == ["2026-11-13", "2026-11-14", "2026-11-15"]
    for day, path in days.items():  # each file holds all services' rows of its UTC day only
        rows = pd.read_parquet(path)
        assert set(rows["event_timestamp"].dt.date) == {day}
        assert sorted(rows["service"].unique()) == sorted(fleet["service"].unique())
    before = {day: path.stat().st_ino for day, path in days.items()}

    write_telemetry(settings, fleet[fleet["ts"] >= cut], cut, FIXED_END)
    update_offline_features(settings, since=cut)  # steps ending 23:55 .. 00:00 of the next day
    after = features.offline_day_files(settings)
    assert [d.isoformat() for d in after] == [
        "2026-11-13",
        "2026-11-14",
        "2026-11-15",
        "2026-11-16",
    ]
    unchanged = [d for d in days if after[d].stat().st_ino == before[d]]
    assert [d.isoformat() for d in unchanged] == ["2026-11-13", "2026-11-14"]
    assert not list(offline_source_path(settings).glob(".*"))  # no partial file left behind

    # Rows recomputed from `since` replace the stored ones: no duplicate (service, timestamp).
    incremental = pd.read_parquet(offline_source_path(settings))
    assert not incremental.duplicated(["service", "event_timestamp"]).any()
    update_offline_features(settings)
    full = pd.read_parquet(offline_source_path(settings))
    pd.testing.assert_frame_equal(incremental, full)


def test_a_single_file_offline_source_is_migrated_to_day_files(tmp_path: Path) -> None:
    settings, services = fleet_home(tmp_path / "home")
    folder = offline_source_path(settings)
    expected = pd.read_parquet(folder)
    apply_features(settings)
    expected_inputs = model_inputs(settings, services, START, END)
    # The offline source as earlier versions wrote it: one file of all rows, no folder.
    legacy = settings.offline_dir / features.LEGACY_OFFLINE_FILE
    expected.sort_values(["service", "event_timestamp"]).to_parquet(legacy, index=False)
    shutil.rmtree(folder)

    assert features.migrate_offline_source(settings)
    assert legacy.exists()  # kept for readers whose registry still names it
    pd.testing.assert_frame_equal(pd.read_parquet(folder), expected)
    assert not features.migrate_offline_source(settings)  # once only
    apply_features(settings)
    assert not legacy.exists()
    pd.testing.assert_frame_equal(model_inputs(settings, services, START, END), expected_inputs)
