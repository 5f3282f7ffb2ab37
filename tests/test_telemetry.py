"""Telemetry sources and the partitioned raw store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.schema import METRICS, REQUESTS, SERVICE, TS, TS_DTYPE
from pipelines.telemetry import (
    FileSource,
    SyntheticFleetSource,
    extract_batch,
    list_services,
    read_telemetry,
    store_batch,
    write_telemetry,
)


def test_fleet_is_long_format_typed_and_seeded(make_fleet) -> None:
    fleet = make_fleet(services=3, days=2)
    assert list(fleet.columns[:2]) == [SERVICE, TS]
    assert set(METRICS) <= set(fleet.columns)
    assert str(fleet[TS].dtype) == TS_DTYPE
    assert fleet.groupby(SERVICE).size().eq(2 * 24 * 60).all()
    assert (fleet[list(METRICS)] >= 0).all().all()
    pd.testing.assert_frame_equal(fleet, make_fleet(services=3, days=2))
    assert not fleet.equals(make_fleet(services=3, days=2, seed=8))


def test_fleet_has_daily_seasonality_and_campaign_surges(make_fleet) -> None:
    fleet = make_fleet(services=1, days=14, step_minutes=5)
    hourly = fleet.groupby(fleet[TS].dt.hour)[REQUESTS].median()
    assert hourly.max() > 2.5 * hourly.min()  # day vs night
    source = SyntheticFleetSource(1, seed=7, step_minutes=5)
    events = source.events(fleet[TS].min(), fleet[TS].max())
    assert not events.empty
    event = events.iloc[0]
    during = fleet[
        (fleet[TS] >= event["start"] + pd.Timedelta(minutes=15)) & (fleet[TS] < event["end"])
    ][REQUESTS].mean()
    same_hours_day_before = fleet[
        (fleet[TS] >= event["start"] - pd.Timedelta(days=1, minutes=-15))
        & (fleet[TS] < event["end"] - pd.Timedelta(days=1))
    ][REQUESTS]
    if not same_hours_day_before.empty:
        assert during > 1.3 * same_hours_day_before.mean()


def test_a_window_fetched_alone_equals_the_same_window_of_a_long_fetch() -> None:
    source = SyntheticFleetSource(2, seed=3)
    start, end = (
        pd.Timestamp("2026-03-01 23:50", tz="UTC"),
        pd.Timestamp("2026-03-02 00:10", tz="UTC"),
    )
    long = source.fetch(start - pd.Timedelta(days=1), end)
    window = long[(long[TS] >= start) & (long[TS] < end)].reset_index(drop=True)
    pd.testing.assert_frame_equal(source.fetch(start, end), window)


def test_store_round_trip_is_partitioned_and_idempotent(settings, make_fleet) -> None:
    fleet = make_fleet(services=2, days=2)
    files = write_telemetry(settings, fleet)
    assert len(files) == 4  # 2 services x 2 days
    assert all("service=" in str(p) and "date=" in str(p) for p in files)
    back = read_telemetry(settings)
    pd.testing.assert_frame_equal(back[fleet.columns], fleet, check_dtype=False)
    write_telemetry(settings, fleet)  # rerun of the same interval
    pd.testing.assert_frame_equal(read_telemetry(settings)[fleet.columns], fleet, check_dtype=False)
    assert list_services(settings) == sorted(fleet[SERVICE].unique())


def test_storing_a_batch_replaces_only_its_interval(settings, make_fleet) -> None:
    fleet = make_fleet(services=1, days=1)
    write_telemetry(settings, fleet)
    start, end = fleet[TS].iloc[100], fleet[TS].iloc[110]
    changed = fleet[(fleet[TS] >= start) & (fleet[TS] < end)].assign(requests=1.0)
    write_telemetry(settings, changed, start, end)
    back = read_telemetry(settings)
    inside = (back[TS] >= start) & (back[TS] < end)
    assert (back.loc[inside, REQUESTS] == 1.0).all() and inside.sum() == 10
    np.testing.assert_allclose(back.loc[~inside, REQUESTS], fleet.loc[~inside.values, REQUESTS])


def test_extract_batch_is_deterministic_per_interval(settings) -> None:
    start, end = (
        pd.Timestamp("2026-05-01 10:00", tz="UTC"),
        pd.Timestamp("2026-05-01 10:05", tz="UTC"),
    )
    first = pd.read_parquet(extract_batch(settings, start, end, "synthetic"))
    path = extract_batch(settings, start, end, "synthetic")
    pd.testing.assert_frame_equal(first, pd.read_parquet(path))
    assert len(first) == 5 * 5  # five services (params.yaml fleet) x five minutes
    store_batch(settings, path)
    assert not path.exists()
    assert len(read_telemetry(settings, start=start, end=end)) == 25


def test_read_telemetry_filters_services_and_time(settings, make_fleet) -> None:
    fleet = make_fleet(services=3, days=2)
    write_telemetry(settings, fleet)
    one = fleet[SERVICE].iloc[0]
    start = fleet[TS].min() + pd.Timedelta(hours=30)
    part = read_telemetry(settings, [one], start=start)
    assert set(part[SERVICE]) == {one} and part[TS].min() == start and len(part) == 18 * 60


def test_file_source_reads_long_format_and_single_traces(tmp_path: Path, make_fleet) -> None:
    fleet = make_fleet(services=2, days=1)
    fleet.to_parquet(tmp_path / "fleet.parquet")
    pd.testing.assert_frame_equal(
        FileSource(tmp_path / "fleet.parquet").read_all()[fleet.columns], fleet, check_dtype=False
    )
    trace = pd.DataFrame(
        {
            "period": pd.date_range("1998-06-01", periods=5, freq="1min").strftime(
                "%Y-%m-%d %H:%M:%S"
            ),
            "count": [60, 120, 180, 240, 300],
        }
    )
    trace.to_csv(tmp_path / "worldcup.csv", index=False)
    frame = FileSource(tmp_path / "worldcup.csv", value_per="minute").read_all()
    assert list(frame[SERVICE].unique()) == ["worldcup"]
    assert frame[REQUESTS].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    unix = pd.DataFrame({"ts": [1_600_000_000, 1_600_000_060], "value": [1.5, 2.5]})
    unix.to_csv(tmp_path / "cpu.csv", index=False)
    frame = FileSource(tmp_path / "cpu.csv", service="node").read_all()
    assert frame[TS].iloc[0] == pd.Timestamp(1_600_000_000, unit="s", tz="UTC")


def test_file_source_names_the_problem(tmp_path: Path) -> None:
    pd.DataFrame({"a": [1], "b": [2], "c": [3]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="bad.csv.*long format"):
        FileSource(tmp_path / "bad.csv").read_all()
    pd.DataFrame({"service": ["x"], "ts": ["2024-01-01"], "cpu": [1.0]}).to_csv(
        tmp_path / "nocpu.csv", index=False
    )
    with pytest.raises(ValueError, match="'requests'"):
        FileSource(tmp_path / "nocpu.csv").read_all()
    with pytest.raises(ValueError, match="does not exist"):
        FileSource(tmp_path / "missing").files()


def test_shared_worldcup_trace_loads_as_one_service() -> None:
    path = (
        Path(__file__).resolve().parents[2]
        / "shared/data/request_traces/worldcup98_requests_per_minute.csv"
    )
    if not path.exists():
        pytest.skip("shared data not present")
    frame = FileSource(path, service="worldcup98", value_per="minute").read_all()
    assert frame[SERVICE].unique().tolist() == ["worldcup98"]
    assert len(frame) == 125_300 and frame[TS].is_monotonic_increasing
