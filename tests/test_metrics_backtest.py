"""Metrics against hand-computed values, the Naive2 benchmark, and the rolling-origin splitter."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from models.backtest import backtest, backtest_forecasts, rolling_origin_splits
from models.base import Forecaster
from models.metrics import (
    coverage,
    mae,
    mape,
    mase,
    owa,
    pinball_loss,
    relative_mae,
    smape,
)
from models.naive import (
    SeasonalNaiveForecaster,
    multiplicative_seasonal_indices,
    naive2_path,
    seasonality_test,
)


def test_mae_smape_mape_by_hand() -> None:
    y, f = [10.0, 20.0, 0.0], [12.0, 15.0, 0.0]
    assert mae(y, f) == pytest.approx((2 + 5 + 0) / 3)
    # sMAPE: 200*2/22, 200*5/35, 0/0 -> 0
    assert smape(y, f) == pytest.approx((400 / 22 + 1000 / 35 + 0) / 3)
    # MAPE skips the zero actual: (2/10 + 5/20) / 2 * 100
    assert mape(y, f) == pytest.approx(22.5)
    assert np.isnan(mape([0.0], [1.0]))


def test_mase_and_owa_by_hand() -> None:
    insample = [1.0, 2.0, 3.0, 5.0, 6.0, 7.0]  # season 3: diffs 4, 4, 4 -> scale 4
    assert mase([10.0, 10.0], [8.0, 14.0], insample, season=3) == pytest.approx(3.0 / 4.0)
    assert owa(10.0, 1.0, 20.0, 2.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="more than 3"):
        mase([1.0], [1.0], [1.0, 2.0, 3.0], season=3)


def test_relative_mae_coverage_pinball_by_hand() -> None:
    y = [10.0, 10.0, 10.0, 10.0]
    assert relative_mae(y, [11, 9, 10, 10], [12, 8, 10, 14]) == pytest.approx(2 / 8)
    assert relative_mae(y, y, y) != relative_mae(y, y, y)  # NaN when both are perfect
    assert coverage(y, [9, 10, 11, 12]) == pytest.approx(0.75)
    # q=0.9: under-forecast by 2 costs 1.8, over-forecast by 2 costs 0.2
    assert pinball_loss([10.0, 10.0], [8.0, 12.0], 0.9) == pytest.approx((1.8 + 0.2) / 2)
    with pytest.raises(ValueError, match="forecast has"):
        mae([1.0, 2.0], [1.0])


def test_naive2_deseasonalises_a_multiplicative_series() -> None:
    season = 4
    pattern = np.array([0.5, 1.0, 1.5, 1.0])
    values = np.tile(pattern, 6) * 100.0
    assert seasonality_test(values, season)
    np.testing.assert_allclose(multiplicative_seasonal_indices(values, season)[:4], pattern)
    np.testing.assert_allclose(naive2_path(values, season, 6), [50, 100, 150, 100, 50, 100])
    flat = np.random.default_rng(0).normal(100, 1, 40)
    assert not seasonality_test(flat, season)
    np.testing.assert_allclose(naive2_path(flat, season, 3), np.full(3, flat[-1]))


def test_rolling_origin_splits_are_disjoint_and_leak_free() -> None:
    stamps = pd.date_range("2026-01-01", periods=20, freq="h", tz="UTC")
    splits = rolling_origin_splits(stamps, n_folds=3, horizon=4, step=2)
    assert [s[2] for s in splits] == [stamps[15], stamps[17], stamps[19]]
    for train_end, test_start, test_end in splits:
        assert train_end < test_start <= test_end
        assert stamps.get_loc(test_start) == stamps.get_loc(train_end) + 1
        assert stamps.get_loc(test_end) - stamps.get_loc(test_start) == 3
    with pytest.raises(ValueError, match="too few"):
        rolling_origin_splits(stamps, n_folds=10, horizon=4, step=2)


class _RecordingNaive(SeasonalNaiveForecaster):
    """Seasonal naive that records the last timestamp it was fitted on."""

    seen_until: ClassVar[list[pd.Timestamp]] = []

    def fit(self, history: pd.DataFrame, target: str = "requests") -> Forecaster:
        _RecordingNaive.seen_until.append(history["ts"].max())
        return super().fit(history, target)


def test_backtest_never_shows_the_model_a_future_point() -> None:
    ts = pd.date_range("2026-01-01", periods=24 * 6, freq="h", tz="UTC")
    rng = np.random.default_rng(1)
    values = 50 + 20 * np.sin(np.arange(ts.size) * 2 * np.pi / 24) + rng.normal(0, 2, ts.size)
    history = pd.concat(
        [
            pd.DataFrame({"service": "a", "ts": ts, "requests": values}),
            pd.DataFrame({"service": "b", "ts": ts, "requests": values * 3}),
        ]
    )
    _RecordingNaive.seen_until = []
    forecasts = backtest_forecasts(_RecordingNaive, history, n_folds=3, horizon=12)
    assert len(_RecordingNaive.seen_until) == 3
    for fold, seen in enumerate(_RecordingNaive.seen_until):
        tested = forecasts.loc[forecasts["fold"] == fold, "ts"]
        assert seen < tested.min()
        assert set(forecasts.loc[forecasts["fold"] == fold, "horizon_step"]) == set(range(1, 13))
    # The seasonal naive forecaster is its own baseline: relative MAE exactly 1.
    scores = backtest(SeasonalNaiveForecaster, history, n_folds=3, horizon=12)
    assert len(scores) == 6
    np.testing.assert_allclose(scores["relative_mae"], 1.0)


def test_log_backtest_writes_overall_metrics_and_the_per_series_table(tmp_path: Path) -> None:
    import mlflow

    from models.tracking import log_backtest

    ts = pd.date_range("2026-01-01", periods=24 * 5, freq="h", tz="UTC")
    values = 50 + 20 * np.sin(np.arange(ts.size) * 2 * np.pi / 24)
    history = pd.concat(
        [
            pd.DataFrame({"service": "a", "ts": ts, "requests": values}),
            pd.DataFrame({"service": "b", "ts": ts, "requests": values * 2 + 1}),
        ]
    )
    scores = backtest(SeasonalNaiveForecaster, history, n_folds=2, horizon=6)
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("bt", artifact_location=(tmp_path / "a").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            overall = log_backtest(scores, prefix="naive")
        logged = mlflow.get_run(run.info.run_id).data
    finally:
        mlflow.set_tracking_uri(previous_uri)
    assert logged.metrics["naive.relative_mae"] == pytest.approx(1.0)
    assert not [key for key in logged.metrics if key.startswith(("naive.a.", "naive.b."))]
    artifact = tmp_path / "a" / run.info.run_id / "artifacts" / "naive_backtest.json"
    table = pd.read_json(artifact, orient="split")
    assert table[table["service"] == "b"]["mae"].mean() == pytest.approx(
        scores[scores.service == "b"].mae.mean()
    )
    assert "naive.coverage_p90" in overall
    assert logged.params["naive.folds"] == "2"
    with pytest.raises(ValueError, match="active MLflow run"):
        log_backtest(scores)
