"""Forecast accuracy metrics (M4 definitions where they exist) and quantile diagnostics.

All functions take array-likes and return a float. Conventions follow the M4 competition's
``Benchmarks and Evaluation.R``: sMAPE in percent (0..200), MASE scaled by the in-sample mean
absolute seasonal difference, OWA as the mean of the two ratios to Naive2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from core.schema import SERVICE, TARGET, TS


def _pair(actual: ArrayLike, forecast: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(actual, dtype=float).ravel()
    f = np.asarray(forecast, dtype=float).ravel()
    if y.shape != f.shape:
        raise ValueError(f"actual has {y.size} values but forecast has {f.size}")
    if y.size == 0:
        raise ValueError("metrics need at least one value")
    return y, f


def mae(actual: ArrayLike, forecast: ArrayLike) -> float:
    """Mean absolute error."""
    y, f = _pair(actual, forecast)
    return float(np.mean(np.abs(y - f)))


def smape(actual: ArrayLike, forecast: ArrayLike) -> float:
    """Symmetric MAPE in percent: mean of ``200 |y - f| / (|y| + |f|)``; 0/0 counts as 0."""
    y, f = _pair(actual, forecast)
    denominator = np.abs(y) + np.abs(f)
    ratio = np.divide(2.0 * np.abs(y - f), denominator, out=np.zeros_like(y), where=denominator > 0)
    return float(100.0 * np.mean(ratio))


def mape(actual: ArrayLike, forecast: ArrayLike, min_abs_actual: float = 0.0) -> float:
    """MAPE in percent over the points whose ``|actual| > min_abs_actual``.

    Args:
        actual: Observed values.
        forecast: Forecast values.
        min_abs_actual: Points with an actual at or below this magnitude are skipped.

    Returns:
        The MAPE, or NaN when no point qualifies.
    """
    y, f = _pair(actual, forecast)
    keep = np.abs(y) > max(min_abs_actual, 0.0)
    if not keep.any():
        return float("nan")
    return float(100.0 * np.mean(np.abs(y[keep] - f[keep]) / np.abs(y[keep])))


def mase_scale(insample: ArrayLike, season: int) -> float:
    """In-sample mean absolute seasonal difference ``mean |x[t] - x[t - season]|``.

    Args:
        insample: Training values, oldest first.
        season: Seasonal lag (1 for non-seasonal data).

    Returns:
        The scale.

    Raises:
        ValueError: If the history is not longer than ``season``.
    """
    x = np.asarray(insample, dtype=float).ravel()
    if x.size <= season:
        raise ValueError(f"MASE needs more than {season} in-sample values, got {x.size}")
    return float(np.mean(np.abs(x[season:] - x[:-season])))


def mase(actual: ArrayLike, forecast: ArrayLike, insample: ArrayLike, season: int) -> float:
    """Mean absolute scaled error (M4): MAE divided by :func:`mase_scale` of the history."""
    return mae(actual, forecast) / mase_scale(insample, season)


def owa(smape_value: float, mase_value: float, smape_naive2: float, mase_naive2: float) -> float:
    """Overall weighted average (M4): ``(sMAPE / sMAPE_Naive2 + MASE / MASE_Naive2) / 2``.

    Each input must already be averaged over the same set of series.
    """
    return 0.5 * (smape_value / smape_naive2 + mase_value / mase_naive2)


def relative_mae(actual: ArrayLike, forecast: ArrayLike, baseline: ArrayLike) -> float:
    """``sum |y - f| / sum |y - baseline|`` (below 1 means better than the baseline).

    Returns:
        The ratio; ``inf`` if the baseline is perfect and the forecast is not, NaN if both are.
    """
    y, f = _pair(actual, forecast)
    _, b = _pair(actual, baseline)
    numerator = float(np.sum(np.abs(y - f)))
    denominator = float(np.sum(np.abs(y - b)))
    if denominator == 0.0:
        return float("nan") if numerator == 0.0 else float("inf")
    return numerator / denominator


def coverage(actual: ArrayLike, upper: ArrayLike) -> float:
    """Share of actuals at or below an upper quantile forecast (target: the quantile level)."""
    y, u = _pair(actual, upper)
    return float(np.mean(y <= u))


def pinball_loss(actual: ArrayLike, quantile_forecast: ArrayLike, quantile: float) -> float:
    """Mean pinball (quantile) loss ``max(q (y - f), (q - 1) (y - f))``.

    Args:
        actual: Observed values.
        quantile_forecast: Forecast of the ``quantile``.
        quantile: Level in (0, 1).

    Returns:
        The mean loss.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    y, f = _pair(actual, quantile_forecast)
    diff = y - f
    return float(np.mean(np.maximum(quantile * diff, (quantile - 1.0) * diff)))


def live_errors(forecasts: pd.DataFrame, actuals: pd.DataFrame) -> dict[str, tuple[float, int]]:
    """The live error of served forecasts: relative MAE against "same step yesterday".

    The one definition of a model's live error (the rollback guard and the drift monitor both
    use it): the MAE of the ``p50`` forecast over the MAE of the seasonal-naive forecast (the
    actual one day earlier), over the steps that have an actual and a naive value.

    Args:
        forecasts: Long frame ``service, ts, p50`` at the forecast step.
        actuals: Long frame ``service, ts, requests`` at the same step (each step's target),
            covering the forecast steps and the day before them.

    Returns:
        ``{service: (relative MAE, steps compared)}`` for services with a finite error.
    """
    keys = [SERVICE, TS]
    if forecasts.empty or actuals.empty:
        return {}
    stepped = actuals[[SERVICE, TS, TARGET]].copy()
    stepped[TS] = pd.to_datetime(stepped[TS], utc=True)
    naive = stepped.assign(**{TS: stepped[TS] + pd.Timedelta(days=1)}).rename(
        columns={TARGET: "naive"}
    )
    predicted = forecasts[[SERVICE, TS, "p50"]].copy()
    predicted[TS] = pd.to_datetime(predicted[TS], utc=True)
    joined = stepped.merge(predicted, on=keys).merge(naive, on=keys)
    errors: dict[str, tuple[float, int]] = {}
    for service, rows in joined.groupby(SERVICE):
        error = relative_mae(rows[TARGET], rows["p50"], rows["naive"])
        if np.isfinite(error):
            errors[str(service)] = (float(error), len(rows))
    return errors
