"""Rolling-origin backtests: splits that never leak the future, and per-fold error tables.

A split is ``(train_end, test_start, test_end)``: the model sees rows with ``ts <= train_end``
only, and is scored on ``test_start <= ts <= test_end``. Because ``test_start`` is the first
timestamp after ``train_end`` on the sorted grid, ``train_end < test_start`` always holds, which
is the no-leakage guarantee (checked by :func:`rolling_origin_splits` and asserted in tests).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from core.schema import SERVICE, TARGET, TS, quantile_column, require_columns
from models.base import Forecaster
from models.metrics import coverage, mae, pinball_loss, relative_mae, smape
from models.naive import SeasonalNaiveForecaster

Split = tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]


def rolling_origin_splits(
    timestamps_or_frame: pd.DataFrame | pd.Series | pd.DatetimeIndex | Sequence[pd.Timestamp],
    n_folds: int,
    horizon: int,
    step: int | None = None,
) -> list[Split]:
    """Forecast origins walking back from the end of the data, oldest fold first.

    Fold ``k`` (of ``n_folds``) tests on ``horizon`` consecutive timestamps ending
    ``(n_folds - 1 - k) * step`` timestamps before the last one; it trains on everything before.

    Args:
        timestamps_or_frame: Timestamps, or a frame with a ``ts`` column (all services pooled).
        n_folds: Number of origins.
        horizon: Test length in timestamps.
        step: Timestamps between consecutive origins (default ``horizon``: disjoint tests).

    Returns:
        ``[(train_end, test_start, test_end), ...]`` with ``train_end < test_start <= test_end``.

    Raises:
        ValueError: If the data is too short for the requested folds (at least one training
            timestamp is required before the first test window).
    """
    if n_folds < 1 or horizon < 1:
        raise ValueError(f"n_folds and horizon must be >= 1, got {n_folds} and {horizon}")
    step = horizon if step is None else step
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if isinstance(timestamps_or_frame, pd.DataFrame):
        require_columns(timestamps_or_frame, (TS,), "backtest history")
        raw = timestamps_or_frame[TS]
    else:
        raw = timestamps_or_frame
    stamps = pd.DatetimeIndex(pd.unique(pd.Series(raw))).sort_values()
    n = len(stamps)
    first_train_end = n - 1 - (n_folds - 1) * step - horizon
    if first_train_end < 0:
        raise ValueError(
            f"{n} timestamps are too few for {n_folds} folds of horizon {horizon} every {step}"
        )
    splits: list[Split] = []
    for fold in range(n_folds):
        test_end_index = n - 1 - (n_folds - 1 - fold) * step
        test_start_index = test_end_index - horizon + 1
        train_end, test_start = stamps[test_start_index - 1], stamps[test_start_index]
        if not train_end < test_start:  # pragma: no cover - guaranteed by sorting
            raise AssertionError("leaking split")
        splits.append((train_end, test_start, stamps[test_end_index]))
    return splits


def backtest_forecasts(
    model_factory: Callable[[], Forecaster],
    history: pd.DataFrame,
    n_folds: int,
    horizon: int,
    step: int | None = None,
    target: str = TARGET,
    quantiles: Sequence[float] = (0.5, 0.9),
) -> pd.DataFrame:
    """Fit a fresh model per fold on the past only and return its forecasts joined to actuals.

    Args:
        model_factory: Builds an unfitted forecaster.
        history: Long frame ``service, ts, target``.
        n_folds: Number of origins.
        horizon: Steps per test window.
        step: Steps between origins (default ``horizon``).
        target: Column to forecast.
        quantiles: Quantiles to predict.

    Returns:
        Rows ``fold, service, ts, horizon_step, y, naive, p50, p90, ...`` for every test point
        with an actual; ``naive`` is the seasonal-naive (one season earlier) forecast.
    """
    require_columns(history, (SERVICE, TS, target), "backtest history")
    splits = rolling_origin_splits(history, n_folds, horizon, step)
    rows: list[pd.DataFrame] = []
    for fold, (train_end, test_start, test_end) in enumerate(splits):
        train = history[history[TS] <= train_end]
        test = history[(history[TS] >= test_start) & (history[TS] <= test_end)]
        model = model_factory().fit(train, target=target)
        forecast = model.predict(horizon, quantiles=quantiles)
        actual = test[[SERVICE, TS, target]].rename(columns={target: "y"})
        joined = forecast.merge(actual, on=[SERVICE, TS], how="inner")
        # The yardstick is the seasonal-naive forecaster itself (same grid, gap filling and
        # clipping as the product's naive family), so the naive family scores exactly 1.0.
        naive = (
            SeasonalNaiveForecaster()
            .fit(train, target=target)
            .predict(horizon, quantiles=(0.5,))
            .rename(columns={quantile_column(0.5): "naive"})
        )
        naive = naive.assign(naive_index=naive.groupby(SERVICE).cumcount())
        forecast_index = forecast.assign(naive_index=forecast.groupby(SERVICE).cumcount())
        joined = joined.merge(
            forecast_index[[SERVICE, TS, "naive_index"]], on=[SERVICE, TS], how="left"
        ).merge(naive[[SERVICE, "naive_index", "naive"]], on=[SERVICE, "naive_index"], how="left")
        joined["horizon_step"] = joined["naive_index"] + 1
        joined.insert(0, "fold", fold)
        joined["train_end"] = train_end
        rows.append(joined.drop(columns="naive_index"))
    return pd.concat(rows, ignore_index=True)


def score_forecasts(
    forecasts: pd.DataFrame, quantiles: Sequence[float] = (0.5, 0.9)
) -> pd.DataFrame:
    """Per-fold per-service errors of a :func:`backtest_forecasts` frame.

    Returns:
        Rows ``fold, service, n, mae, smape, relative_mae, coverage_p.., pinball_p..``.
    """
    records = []
    for (fold, service), group in forecasts.groupby(["fold", SERVICE], sort=True):
        y, p50 = group["y"].to_numpy(float), group[quantile_column(0.5)].to_numpy(float)
        record: dict[str, object] = {
            "fold": fold,
            SERVICE: service,
            "train_end": group["train_end"].iloc[0],
            "n": len(group),
            "mae": mae(y, p50),
            "smape": smape(y, p50),
            "relative_mae": relative_mae(y, p50, group["naive"].to_numpy(float)),
        }
        for q in quantiles:
            column = quantile_column(q)
            record[f"coverage_{column}"] = coverage(y, group[column].to_numpy(float))
            record[f"pinball_{column}"] = pinball_loss(y, group[column].to_numpy(float), q)
        records.append(record)
    return pd.DataFrame.from_records(records)


def backtest(
    model_factory: Callable[[], Forecaster],
    history: pd.DataFrame,
    n_folds: int,
    horizon: int,
    step: int | None = None,
    target: str = TARGET,
    quantiles: Sequence[float] = (0.5, 0.9),
) -> pd.DataFrame:
    """Rolling-origin backtest: per-fold per-service errors (see :func:`score_forecasts`).

    Args:
        model_factory: Builds an unfitted forecaster.
        history: Long frame ``service, ts, target``.
        n_folds: Number of origins.
        horizon: Steps per test window.
        step: Steps between origins (default ``horizon``).
        target: Column to forecast.
        quantiles: Quantiles to predict and score.

    Returns:
        One row per (fold, service) with the error metrics.
    """
    forecasts = backtest_forecasts(
        model_factory, history, n_folds, horizon, step, target, quantiles
    )
    return score_forecasts(forecasts, quantiles)


def summarize_backtest(scores: pd.DataFrame) -> dict[str, float]:
    """Overall figures of a :func:`backtest` table (means over folds and services).

    Returns:
        ``{metric: mean}`` for every numeric metric column.
    """
    numeric = scores.drop(columns=["fold", "n"], errors="ignore").select_dtypes(include=[np.number])
    return {column: float(numeric[column].mean()) for column in numeric.columns}
