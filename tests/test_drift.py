"""Drift monitor: Evidently on shifted and unshifted synthetic fleets, the cool-down, the trigger."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from core.settings import Settings
from pipelines.drift import (
    DriftConfig,
    apply_cooldown,
    detect_data_drift,
    detect_error_drift,
    drift_event_extra,
    drift_found,
    forecast_errors,
    partition_name,
    resolve_retrain_trigger,
    run_drift_monitor,
)
from pipelines.telemetry import generate_fleet, write_telemetry

END = pd.Timestamp("2026-11-16 00:00", tz="UTC")  # a Monday
SHIFTED = "checkout"  # the two-service synthetic fleet is checkout and search
STEADY = "search"


def _config() -> DriftConfig:
    return DriftConfig.from_params(Path(__file__).resolve().parent.parent / "params.yaml")


def _windows(fleet: pd.DataFrame, end: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference, current): the last day, and the same hours one and two weeks earlier."""

    def day(k: int) -> pd.DataFrame:
        stop = end - pd.Timedelta(weeks=k)
        return fleet[(fleet["ts"] >= stop - pd.Timedelta(days=1)) & (fleet["ts"] < stop)]

    return pd.concat([day(1), day(2)], ignore_index=True), day(0).copy()


def _shift(frame: pd.DataFrame, service: str, factor: float) -> pd.DataFrame:
    shifted = frame.copy()
    rows = shifted["service"] == service
    shifted.loc[rows, ["requests", "cpu"]] *= factor
    return shifted


@pytest.fixture(scope="module")
def fleet() -> pd.DataFrame:
    """Two services, 15 days at 1 minute: enough for two week-aligned reference days."""
    return generate_fleet(2, 15, end=END, seed=42)


def test_unshifted_fleet_does_not_drift(fleet: pd.DataFrame, tmp_path: Path) -> None:
    reference, current = _windows(fleet, END)
    drifted, share = detect_data_drift(reference, current, _config(), tmp_path / "r.html")
    assert drifted == {}
    assert share == 0.0
    assert (tmp_path / "r.html").stat().st_size > 10_000


def test_shifted_service_drifts_alone(fleet: pd.DataFrame, tmp_path: Path) -> None:
    reference, current = _windows(fleet, END)
    report = tmp_path / "report.html"
    drifted, share = detect_data_drift(reference, _shift(current, SHIFTED, 2.0), _config(), report)
    assert set(drifted) == {SHIFTED}
    assert {"requests", "cpu"} <= set(drifted[SHIFTED])
    assert 0.0 < share < 1.0
    # One section per service, judged by the monitor's rule: the report says what was decided.
    page = report.read_text()
    assert page.count("Dataset Drift is detected") == 1
    assert page.count("Dataset Drift is NOT detected") == 1


def test_forecast_error_check_flags_only_the_degraded_service(fleet: pd.DataFrame) -> None:
    actual = fleet[fleet["ts"] >= END - pd.Timedelta(days=2)]
    steps = (
        actual.assign(ts=actual["ts"].dt.floor("5min"))
        .groupby(["service", "ts"], as_index=False)["requests"]
        .mean()
    )
    recent = steps[steps["ts"] >= END - pd.Timedelta(days=1)]
    good = recent[recent["service"] == STEADY].assign(p50=lambda f: f["requests"] * 1.01)
    bad = recent[recent["service"] == SHIFTED].assign(p50=lambda f: f["requests"] * 3.0)
    forecasts = pd.concat([good, bad])[["service", "ts", "p50"]]
    errors = forecast_errors(forecasts, actual, step_minutes=5)
    assert errors[STEADY] < 0.5 < errors[SHIFTED]
    drifted = detect_error_drift(errors, {STEADY: 0.4, SHIFTED: 0.4}, tolerance=0.5)
    assert list(drifted) == [SHIFTED]
    assert drifted[SHIFTED]["reference"] == 0.4
    with pytest.raises(ValueError, match="checkout"):
        detect_error_drift(errors, {SHIFTED: float("nan")}, tolerance=0.5)
    with pytest.raises(ValueError, match="p50"):
        forecast_errors(forecasts.drop(columns="p50"), actual, step_minutes=5)


def test_forecast_error_of_a_peak_forecast_is_measured_against_step_peaks(
    fleet: pd.DataFrame,
) -> None:
    actual = fleet[(fleet["ts"] >= END - pd.Timedelta(days=2)) & (fleet["service"] == STEADY)]
    stepped = actual.assign(ts=actual["ts"].dt.floor("5min")).groupby(["service", "ts"])
    peaks = stepped["requests"].max().reset_index()
    recent = peaks[peaks["ts"] >= END - pd.Timedelta(days=1)].rename(columns={"requests": "p50"})
    as_peak = forecast_errors(recent, actual, step_minutes=5, target="peak")
    as_mean = forecast_errors(recent, actual, step_minutes=5, target="mean")
    assert as_peak[STEADY] == pytest.approx(0.0)
    assert as_mean[STEADY] > 0.1
    with pytest.raises(ValueError, match="'p99'"):
        forecast_errors(recent, actual, step_minutes=5, target="p99")


def test_cooldown_suppresses_a_second_announcement_but_not_a_rerun() -> None:
    ledger = {"a": "2026-11-16T00:00:00+00:00", "b": "2026-11-14T00:00:00+00:00"}
    later = END + pd.Timedelta(hours=1)
    assert apply_cooldown(ledger, ["a", "b", "c"], later, 24) == (["b", "c"], ["a"])
    assert apply_cooldown(ledger, ["a"], END, 24) == (["a"], [])  # rerun of the same window
    assert apply_cooldown(ledger, ["a"], END + pd.Timedelta(hours=25), 24) == (["a"], [])


def test_retrain_trigger_reason() -> None:
    extras = [{"services": ["b"], "report": "/r1.html"}, {"services": ["a", "b"], "report": "/r2"}]
    assert resolve_retrain_trigger(extras) == {
        "reason": "drift",
        "services": ["a", "b"],
        "report": "/r2",
    }
    assert resolve_retrain_trigger([], {}) == {
        "reason": "schedule",
        "services": None,
        "report": None,
    }
    manual = resolve_retrain_trigger([], {"reason": "drift", "services": ["a"], "report": "/x"})
    assert manual == {"reason": "drift", "services": ["a"], "report": "/x"}
    with pytest.raises(ValueError, match="reason"):
        resolve_retrain_trigger([], {"reason": "because"})


def test_config_rejects_unknown_keys_and_metrics(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("drift:\n  cooldown_hour: 3\n")
    with pytest.raises(ValueError, match="cooldown_hour"):
        DriftConfig.from_params(bad)
    bad.write_text("drift:\n  metrics: [requests, memory]\n")
    with pytest.raises(ValueError, match="memory"):
        DriftConfig.from_params(bad)


def test_monitor_writes_report_logs_mlflow_and_honours_cooldown(
    settings: Settings, fleet: pd.DataFrame
) -> None:
    with pytest.raises(ValueError, match="no telemetry"):
        run_drift_monitor(settings, end=END)
    recent = fleet["ts"] >= END - pd.Timedelta(days=1)
    shifted = pd.concat([fleet[~recent], _shift(fleet[recent], SHIFTED, 2.0)], ignore_index=True)
    write_telemetry(settings, shifted, END - pd.Timedelta(days=15), END + pd.Timedelta(hours=2))

    path = run_drift_monitor(settings, end=END)
    result = json.loads(path.read_text())
    assert path.parent.name == partition_name(END)
    assert result["drifted_services"] == [SHIFTED]
    assert result["checked_services"] == [SHIFTED, STEADY]
    assert "requests" in result["data_drift"][SHIFTED] and SHIFTED in result["reason"]
    assert Path(result["report"]).is_file() and drift_found(path)
    page = Path(result["report"]).read_text()
    body = page[page.index("<body>") :]  # the decision, then Evidently's sections
    assert body.index("Forescale drift decision") < body.index('<div id="root_metric')
    assert f"Drift detected in 1 of 2 services ({SHIFTED}): a retrain is triggered" in page
    extra = drift_event_extra(path)
    assert extra["services"] == [SHIFTED] and extra["report"] == result["report"]

    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.metrics["drifted_services"] == 1.0
    assert [a.path for a in client.list_artifacts(run.info.run_id, "drift")] == [
        "drift/report.html"
    ]

    assert json.loads(run_drift_monitor(settings, end=END).read_text())["drifted_services"] == [
        SHIFTED
    ]  # a rerun of the same window gives the same answer
    an_hour_later = json.loads(
        run_drift_monitor(settings, end=END + pd.Timedelta(hours=1)).read_text()
    )
    assert an_hour_later["drifted_services"] == []
    assert an_hour_later["suppressed_services"] == [SHIFTED]
    assert not drift_found(
        path.parent.parent / partition_name(END + pd.Timedelta(hours=1)) / "result.json"
    )
    assert np.isfinite(an_hour_later["fleet_drift_share"])
