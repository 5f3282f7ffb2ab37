"""Great Expectations validation of telemetry batches: one test per rule, plus quarantine."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FIXED_END, FleetFactory

from core.settings import Settings
from pipelines.validation import (
    BatchValidationError,
    ValidationLimits,
    build_expectation_suite,
    load_validation_limits,
    validate_batch,
)

END = FIXED_END
START = END - pd.Timedelta(days=1)


@pytest.fixture
def clean_batch(make_fleet: FleetFactory) -> pd.DataFrame:
    """Three services, one day at 1 minute (the services are renamed api, web, db)."""
    fleet = make_fleet(services=3, days=1)
    names = dict(zip(sorted(fleet["service"].unique()), ("api", "web", "db"), strict=True))
    return fleet.assign(service=fleet["service"].map(names)).sort_values(
        ["service", "ts"], ignore_index=True
    )


def stage(settings: Settings, frame: pd.DataFrame, name: str = "batch_0001.parquet") -> Path:
    settings.staging_dir.mkdir(parents=True, exist_ok=True)
    path = settings.staging_dir / name
    frame.to_parquet(path, index=False)
    return path


def rows_of(frame: pd.DataFrame, service: str) -> pd.Index:
    return frame.index[frame["service"] == service]


def test_clean_batch_passes_and_stays(settings: Settings, clean_batch: pd.DataFrame) -> None:
    path = stage(settings, clean_batch)
    assert validate_batch(settings, path, START, END) == path
    assert path.exists()
    assert not settings.quarantine_dir.exists() or not any(settings.quarantine_dir.iterdir())


def test_suite_lists_every_rule() -> None:
    suite = build_expectation_suite(START, END, ValidationLimits())
    rules = {(e.meta["rule"], getattr(e, "column", None)) for e in suite.expectations}
    for rule in ("schema", "unique_keys"):
        assert rule in {r for r, _ in rules}
    for column in ("requests", "cpu", "latency_p95_ms", "errors"):
        assert ("non_negative", column) in rules
        assert ("max_value", column) in rules
        assert ("type", column) in rules
    assert {
        ("not_null", "service"),
        ("not_null", "ts"),
        ("in_interval", "ts"),
        ("max_gap", "gap_minutes"),
    } <= rules


def test_limits_come_from_params(settings: Settings) -> None:
    limits = load_validation_limits(settings)
    assert limits.max_gap_minutes == 30
    assert limits.max_latency_ms == 600000


def negative_cpu(frame: pd.DataFrame) -> pd.DataFrame:
    rows = rows_of(frame, "web")[100:103]
    frame.loc[rows, "cpu"] = -0.5
    return frame


def huge_latency(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[rows_of(frame, "db")[7], "latency_p95_ms"] = 5.0e6
    return frame


def duplicate_key(frame: pd.DataFrame) -> pd.DataFrame:
    row = rows_of(frame, "api")[50]
    frame.loc[row + 1, "ts"] = frame.loc[row, "ts"]
    return frame


def null_service(frame: pd.DataFrame) -> pd.DataFrame:
    frame["service"] = frame["service"].astype(object)
    frame.loc[rows_of(frame, "web")[20], "service"] = None
    return frame


def escaping_service(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[rows_of(frame, "web")[10:13], "service"] = "../escape"
    return frame


def null_ts(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[rows_of(frame, "db")[30], "ts"] = pd.NaT
    return frame


def gap(frame: pd.DataFrame) -> pd.DataFrame:
    rows = rows_of(frame, "db")[600:645]  # 45 missing minutes -> 46 min between two rows
    return frame.drop(index=rows)


def outside_interval(frame: pd.DataFrame) -> pd.DataFrame:
    rows = rows_of(frame, "api")[-2:]
    frame.loc[rows, "ts"] = frame.loc[rows, "ts"] + pd.Timedelta(hours=2)
    return frame


def string_requests(frame: pd.DataFrame) -> pd.DataFrame:
    frame["requests"] = frame["requests"].map(lambda v: f"{v:.1f}")
    return frame


# case -> (mutation, expectation type, rule, column, service named in the message)
CASES: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], str, str, str, str | None]] = {
    "non_negative": (
        negative_cpu,
        "expect_column_values_to_be_between",
        "non_negative",
        "cpu",
        "web",
    ),
    "max_value": (
        huge_latency,
        "expect_column_values_to_be_between",
        "max_value",
        "latency_p95_ms",
        "db",
    ),
    "unique_keys": (
        duplicate_key,
        "expect_compound_columns_to_be_unique",
        "unique_keys",
        "['service', 'ts']",
        "api",
    ),
    "not_null_service": (
        null_service,
        "expect_column_values_to_not_be_null",
        "not_null",
        "service",
        "<null>",
    ),
    "service_name": (
        escaping_service,
        "expect_column_values_to_match_regex",
        "service_name",
        "service",
        "../escape",
    ),
    "not_null_ts": (null_ts, "expect_column_values_to_not_be_null", "not_null", "ts", "db"),
    "max_gap": (gap, "expect_column_values_to_be_between", "max_gap", "gap_minutes", "db"),
    "in_interval": (
        outside_interval,
        "expect_column_values_to_be_between",
        "in_interval",
        "ts",
        "api",
    ),
    "type": (string_requests, "expect_column_values_to_be_in_type_list", "type", "requests", "web"),
}


def expected_rows(original: pd.DataFrame, mutated: pd.DataFrame, case: str) -> list[int]:
    """Row positions the message must name for each case, within the case's service."""
    if case == "max_gap":
        after_gap = original.loc[rows_of(original, "db")[645], "ts"]
        bad = (mutated["service"] == "db") & (mutated["ts"] == after_gap)
    elif case == "unique_keys":
        bad = mutated.duplicated(["service", "ts"], keep=False)
    elif case == "type":
        bad = mutated["service"] == "web"
    else:
        bad = {
            "non_negative": mutated["cpu"] < 0,
            "max_value": mutated["latency_p95_ms"] > 1e6,
            "not_null_service": mutated["service"].isna(),
            "service_name": mutated["service"] == "../escape",
            "not_null_ts": mutated["ts"].isna(),
            "in_interval": mutated["ts"] >= END,
        }[case]
    return [int(i) for i in np.flatnonzero(bad.to_numpy())]


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_failure_names_expectation_rows_and_quarantines(
    case: str, settings: Settings, clean_batch: pd.DataFrame
) -> None:
    mutate, expectation, rule, column, service = CASES[case]
    mutated = mutate(clean_batch.copy()).reset_index(drop=True)
    path = stage(settings, mutated)
    bad_rows = expected_rows(clean_batch, mutated.copy(), case)
    assert bad_rows

    with pytest.raises(BatchValidationError) as caught:
        validate_batch(settings, path, START, END)

    line = next(f for f in caught.value.failures if f"[{rule}]" in f and column in f)
    message = str(caught.value)
    assert line in message
    assert line.startswith(expectation)
    assert f"service {service!r}" in line
    first, last = bad_rows[0], bad_rows[-1]
    assert f"service {service!r}: rows {first}–{last} ({len(bad_rows)} row(s))" in line
    if case not in {"not_null_ts"}:
        assert mutated.loc[first, "ts"].isoformat() in line
    # Quarantined with its report, and nothing else written anywhere under home.
    assert not path.exists()
    assert sorted(p.name for p in settings.quarantine_dir.iterdir()) == [
        "batch_0001.parquet",
        "batch_0001.report.json",
    ]
    assert sorted(p.name for p in settings.home.iterdir()) == ["quarantine", "staging"]
    assert not any(settings.staging_dir.iterdir())
    report = json.loads(caught.value.report_path.read_text())
    assert line in report["failures"]
    pd.testing.assert_frame_equal(pd.read_parquet(caught.value.quarantined_path), mutated)


def test_missing_column_names_schema_rule(settings: Settings, clean_batch: pd.DataFrame) -> None:
    path = stage(settings, clean_batch.drop(columns=["requests"]))
    with pytest.raises(BatchValidationError) as caught:
        validate_batch(settings, path, START, END)
    message = str(caught.value)
    assert "expect_table_columns_to_match_set [schema]" in message
    assert "missing column(s) ['requests']" in message
    assert (settings.quarantine_dir / path.name).exists()
    assert not path.exists()


def test_optional_metrics_may_be_absent(settings: Settings, clean_batch: pd.DataFrame) -> None:
    path = stage(settings, clean_batch.drop(columns=["cpu", "errors"]))
    assert validate_batch(settings, path, START, END) == path
    broken = clean_batch.drop(columns=["errors"])
    broken.loc[rows_of(broken, "web")[3], "cpu"] = -1.0
    with pytest.raises(BatchValidationError, match=r"\[non_negative\] column 'cpu'"):
        validate_batch(settings, stage(settings, broken, "b2.parquet"), START, END)


def test_naive_timestamps_fail_type_rule(settings: Settings, clean_batch: pd.DataFrame) -> None:
    naive = clean_batch.assign(ts=clean_batch["ts"].dt.tz_localize(None))
    path = stage(settings, naive)
    with pytest.raises(BatchValidationError, match=r"\[type\] column 'ts'"):
        validate_batch(settings, path, START, END)


def test_empty_interval_is_rejected(settings: Settings, clean_batch: pd.DataFrame) -> None:
    path = stage(settings, clean_batch)
    with pytest.raises(ValueError, match="interval is empty"):
        validate_batch(settings, path, END, START)
    assert path.exists()


def test_a_request_only_trace_is_validated_on_requests(settings, make_fleet) -> None:
    from pipelines.telemetry import stage_frame
    from pipelines.validation import BatchValidationError, validate_batch

    fleet = make_fleet(services=1, days=1)
    trace = fleet[["service", "ts", "requests"]]
    start, end = fleet["ts"].min(), fleet["ts"].max() + pd.Timedelta(minutes=1)
    assert validate_batch(settings, stage_frame(settings, trace, start, end), start, end).exists()
    broken = trace.assign(requests=trace["requests"].where(trace.index != 5, -3.0))
    with pytest.raises(BatchValidationError, match="non_negative.*'requests'"):
        validate_batch(settings, stage_frame(settings, broken, start, end), start, end)
    with pytest.raises(BatchValidationError, match=r"schema.*missing column\(s\) \[.*'requests'"):
        validate_batch(
            settings, stage_frame(settings, fleet[["service", "ts", "cpu"]], start, end), start, end
        )


def test_two_bad_batches_for_the_same_interval_are_both_kept(settings, make_fleet) -> None:
    from pipelines.telemetry import stage_frame
    from pipelines.validation import BatchValidationError, validate_batch

    fleet = make_fleet(services=1, days=1)
    start, end = fleet["ts"].min(), fleet["ts"].max() + pd.Timedelta(minutes=1)
    negative = fleet.assign(requests=-1.0)
    duplicated = pd.concat([fleet, fleet.head(1)], ignore_index=True)
    kept = []
    for bad in (negative, duplicated):
        with pytest.raises(BatchValidationError) as caught:
            validate_batch(settings, stage_frame(settings, bad, start, end), start, end)
        kept.append(caught.value.quarantined_path)
    assert kept[0] != kept[1] and all(p.exists() for p in kept)
    assert (pd.read_parquet(kept[0])["requests"] == -1.0).all()
    assert len(pd.read_parquet(kept[1])) == len(fleet) + 1
    assert len(list(settings.quarantine_dir.glob("*.report.json"))) == 2
