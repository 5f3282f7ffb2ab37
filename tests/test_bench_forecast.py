"""The forecast benchmark's summaries (medians and means over traces, M4 medians in the report)
and its M4 loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.forecast import (
    hourly_level_oracle,
    load_m4,
    markdown_report,
    summarize_ops,
)


def per_trace_rows() -> pd.DataFrame:
    """Three traces of one method; one outlier pulls the mean, not the median."""
    rows = []
    for trace, one_hour, day in (("a", 0.5, 0.7), ("b", 0.6, 0.8), ("c", 2.2, 1.5)):
        rows.append(
            {
                "method": "LightGBM",
                "trace": trace,
                "relative_mae_1h": one_hour,
                "relative_mae_24h": day,
                "mape_1h": 10.0,
                "mape_24h": 20.0,
                "coverage_p90": 0.9,
                "wall_seconds": 1.0,
                "peak_mib": 5.0,
            }
        )
    return pd.DataFrame(rows)


def test_ops_summary_reports_the_mean_next_to_the_median() -> None:
    (summary,) = summarize_ops(per_trace_rows())
    assert summary["relative_mae_1h_median"] == pytest.approx(0.6)
    assert summary["relative_mae_1h_mean"] == pytest.approx(1.1)
    assert summary["relative_mae_24h_median"] == pytest.approx(0.8)
    assert summary["relative_mae_24h_mean"] == pytest.approx(1.0)
    assert summary["share_beating_snaive_1h"] == pytest.approx(2 / 3)
    report = markdown_report([], [summary])
    assert "| LightGBM | 3 | 0.600 / 1.100 | 0.800 / 1.000 | 67% |" in report


def test_m4_report_shows_the_median_over_series_next_to_the_mean() -> None:
    record = {
        "dataset": "m4_hourly",
        "method": "LightGBM",
        "series": 200,
        "smape": 9.5,
        "smape_median": 5.25,
        "mase": 0.81,
        "mase_median": 0.69,
        "owa": 0.404,
        "coverage_p90": 0.9,
        "wall_seconds": 100.0,
        "wall_seconds_per_series_mean": 0.5,
        "peak_mib": 300.0,
    }
    report = markdown_report([record], [])
    assert "| m4_hourly | LightGBM | 200 | 9.500 / 5.250 | 0.810 / 0.690 | 0.404 |" in report


def test_load_m4_without_a_test_path_reads_the_training_file_only(tmp_path: Path) -> None:
    train = tmp_path / "m4_train.csv"
    pd.DataFrame({"unique_id": ["H1"] * 3 + ["H2"] * 2, "ds": [1, 2, 3, 1, 2], "y": 1.0}).to_csv(
        train, index=False
    )
    history, test = load_m4(train, None)
    assert test.empty and list(test.columns) == list(history.columns)
    ends = history.groupby("service")["ts"].max()
    assert ends["H1"] == ends["H2"]  # every training part ends at the same instant


def test_level_oracle_forecasts_each_hour_as_the_median_of_its_actuals() -> None:
    origin = pd.Timestamp("2026-01-01 00:00", tz="UTC")
    step = pd.Timedelta(minutes=20)  # 3 steps per hour
    stamps = origin + step * np.array([1, 2, 3, 4, 6])  # step 5 is missing
    future = pd.DataFrame({"service": "t", "ts": stamps, "requests": [1.0, 5.0, 3.0, 10.0, 20.0]})
    oracle = hourly_level_oracle(future, origin, step, steps_hour=3)
    assert oracle["horizon_step"].tolist() == [1, 2, 3, 4, 6]
    assert oracle["p50"].tolist() == [3.0, 3.0, 3.0, 15.0, 15.0]
    assert oracle["p90"].isna().all()
    assert oracle["ts"].tolist() == stamps.tolist()


def test_a_method_without_p90_reports_no_coverage() -> None:
    rows = per_trace_rows().assign(method="oracle", coverage_p90=float("nan"))
    (summary,) = summarize_ops(rows)
    assert np.isnan(summary["coverage_p90_median"]) and np.isnan(summary["coverage_p90_mean"])
    assert summary["relative_mae_1h_median"] == pytest.approx(0.6)
    assert "| — / — |" in markdown_report([], [summary])


def test_the_bench_runs_the_forecasters_a_params_file_configures(tmp_path: Path) -> None:
    import yaml

    from benchmarks.forecast import M4_PARAMS, OPS_PARAMS, bench_methods
    from models.lgbm_model import LightGBMForecaster

    assert set(bench_methods(OPS_PARAMS)) == {"prophet", "lightgbm", "ensemble"}
    assert "ensemble" in bench_methods(M4_PARAMS)
    params = yaml.safe_load(OPS_PARAMS.read_text())
    params["training"]["models"] = ["lightgbm", "naive"]
    params["training"]["model_params"]["lightgbm"]["num_leaves"] = 7
    custom = tmp_path / "params.yaml"
    custom.write_text(yaml.safe_dump(params))
    methods = bench_methods(custom)
    assert list(methods) == ["lightgbm"]  # naive is the sNaive yardstick, scored anyway
    model = methods["lightgbm"]()
    assert isinstance(model, LightGBMForecaster) and model.num_leaves == 7
    params["training"]["model_params"]["lightgbm"]["leaves"] = 7
    custom.write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="takes no setting"):
        bench_methods(custom)


def test_the_report_page_has_a_row_per_trace_and_merges_runs() -> None:
    from benchmarks.forecast import merge_reports, report_document

    rows = per_trace_rows().assign(origins=4).to_dict(orient="records")
    first = {
        "m4": [],
        "ops": [],
        "ops_per_trace": rows[:2],
        "wall_seconds": 10.0,
        "data_dir": "/x/cpu",
        "params_file": "params.yaml",
        "m4_params_file": "m4.yaml",
    }
    second = {**first, "ops_per_trace": rows[2:], "data_dir": "/x/rest"}
    merged = merge_reports([first, second])
    assert merged["wall_seconds"] == 20.0 and len(merged["ops_per_trace"]) == 3
    (summary,) = merged["ops"]
    assert summary["relative_mae_24h_mean"] == pytest.approx(1.0)
    page = report_document(merged)
    assert "| c | 4 | 1.500 (2.200) |" in page
    assert "- data: 3 ops traces, 0 M4 Hourly series" in page
    with pytest.raises(ValueError, match="different params files"):
        merge_reports([first, {**second, "params_file": "other.yaml"}])
