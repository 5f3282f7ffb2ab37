"""Seasonal-naive baseline: repeat the last season; quantiles from seasonal-difference residuals.

It is the fallback of the ensemble for short histories and the yardstick of every benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pandas as pd

from core.schema import SERVICE, TARGET, TS, quantile_column
from models.base import DEFAULT_QUANTILES, Forecaster, infer_step
from models.features import (
    Y,
    check_quantiles,
    finalize_quantiles,
    future_timestamps,
    prepare_history,
    season_steps_for,
)


class SeasonalNaiveForecaster(Forecaster):
    """Forecast ``y[t + h] = y[t + h - k * season]`` (the last observed season, repeated).

    Quantiles other than the median add the empirical quantile of the in-sample seasonal
    differences ``y[t] - y[t - season]`` (over at most ``residual_seasons`` seasons).

    Args:
        season_steps: Steps per season; inferred as one day of steps when ``None``.
        residual_seasons: How many recent seasons of residuals the quantiles use.
    """

    name: ClassVar[str] = "naive"

    def __init__(self, season_steps: int | None = None, residual_seasons: int = 14) -> None:
        if season_steps is not None and season_steps < 1:
            raise ValueError(f"season_steps must be at least 1, got {season_steps}")
        self.season_steps = season_steps
        self.residual_seasons = residual_seasons
        self.step_: pd.Timedelta | None = None
        self.season_: int | None = None
        self.target_: str = TARGET
        self.history_: pd.DataFrame | None = None

    def fit(self, history: pd.DataFrame, target: str = TARGET) -> SeasonalNaiveForecaster:
        """Store the recent history of each service (see :meth:`Forecaster.fit`)."""
        self.step_ = infer_step(history) if len(history) > 1 else pd.Timedelta(hours=1)
        self.season_ = self.season_steps or season_steps_for(self.step_)
        self.target_ = target
        prepared = prepare_history(history, target, self.step_)
        self.history_ = self._tail(prepared)
        return self

    def _tail(self, prepared: pd.DataFrame) -> pd.DataFrame:
        assert self.season_ is not None
        keep = self.season_ * (self.residual_seasons + 1)
        return prepared.groupby(SERVICE, sort=True).tail(keep).reset_index(drop=True)

    def predict(
        self,
        horizon: int,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        history: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Repeat each service's last season (see :meth:`Forecaster.predict`)."""
        if self.history_ is None or self.step_ is None or self.season_ is None:
            raise ValueError("SeasonalNaiveForecaster.predict called before fit")
        levels = check_quantiles(quantiles)
        frame = (
            self._tail(prepare_history(history, self.target_, self.step_))
            if history is not None
            else self.history_
        )
        parts = []
        for service, group in frame.groupby(SERVICE, sort=True):
            values = group[Y].to_numpy(dtype=float)
            point = seasonal_naive_path(values, self.season_, horizon)
            out = pd.DataFrame(
                {SERVICE: service, TS: future_timestamps(group[TS].iloc[-1], self.step_, horizon)}
            )
            residuals = seasonal_residuals(values, self.season_)
            for q in levels:
                offset = float(np.quantile(residuals, q)) if residuals.size and q != 0.5 else 0.0
                out[quantile_column(q)] = point + offset
            parts.append(finalize_quantiles(out, levels))
        result = pd.concat(parts, ignore_index=True)
        result[TS] = result[TS].astype(frame[TS].dtype)
        return result


def seasonal_naive_path(values: np.ndarray, season: int, horizon: int) -> np.ndarray:
    """The seasonal-naive forecast of ``horizon`` steps after ``values``.

    Args:
        values: Observed history, oldest first.
        season: Steps per season; when the history is shorter, the last value is repeated.
        horizon: Steps to forecast.

    Returns:
        ``horizon`` values: the last season repeated (or the last value).
    """
    if values.size == 0:
        raise ValueError("cannot forecast from an empty history")
    if values.size < season:
        return np.full(horizon, float(values[-1]))
    last_season = values[-season:]
    return np.resize(last_season, horizon).astype(float)


def seasonal_residuals(values: np.ndarray, season: int) -> np.ndarray:
    """In-sample seasonal differences ``y[t] - y[t - season]`` (first differences if too short).

    Args:
        values: Observed history, oldest first.
        season: Steps per season.

    Returns:
        The differences (possibly empty).
    """
    lag = season if values.size > season else 1
    if values.size <= lag:
        return np.empty(0)
    return values[lag:] - values[:-lag]


def seasonality_test(values: np.ndarray, season: int) -> bool:
    """The M4 90 % autocorrelation test for seasonality at lag ``season``.

    Follows ``SeasonalityTest`` in the M4 ``Benchmarks and Evaluation.R``: seasonal when
    ``|acf[season]| > 1.645 / sqrt(n) * sqrt(1 + 2 * sum(acf[1..season-1]^2))`` and the series
    holds at least three seasons.

    Args:
        values: Observed history, oldest first.
        season: Seasonal lag.

    Returns:
        Whether the series is treated as seasonal.
    """
    x = np.asarray(values, dtype=float)
    if season <= 1 or x.size < 3 * season:
        return False
    centred = x - x.mean()
    denominator = float(np.sum(centred**2))
    if denominator == 0.0:
        return False
    acf = np.array(
        [
            np.sum(centred[lag:] * centred[: x.size - lag]) / denominator
            for lag in range(1, season + 1)
        ]
    )
    limit = 1.645 / np.sqrt(x.size) * np.sqrt(1.0 + 2.0 * np.sum(acf[: season - 1] ** 2))
    return bool(abs(acf[season - 1]) > limit)


def multiplicative_seasonal_indices(values: np.ndarray, season: int) -> np.ndarray:
    """Seasonal index of every in-sample position by classical multiplicative decomposition.

    Matches R's ``decompose(type = "multiplicative")``: a centred moving average trend
    (``2 x season`` for even seasons), ratio to trend averaged per season position, indices
    normalised to mean 1.

    Args:
        values: Observed history, oldest first (at least two seasons, all positive).
        season: Steps per season.

    Returns:
        One index per observation.
    """
    x = np.asarray(values, dtype=float)
    if season % 2 == 0:
        weights = np.r_[0.5, np.ones(season - 1), 0.5] / season
    else:
        weights = np.ones(season) / season
    half = len(weights) // 2
    trend = np.full(x.size, np.nan)
    trend[half : x.size - half] = np.convolve(x, weights, mode="valid")
    ratio = x / trend
    figure = np.array([np.nanmean(ratio[i::season]) for i in range(season)])
    figure = figure / figure.mean()
    return np.resize(figure, x.size)


def naive2_path(values: np.ndarray, season: int, horizon: int) -> np.ndarray:
    """The M4 Naive2 forecast: naive on seasonally adjusted data when the series is seasonal.

    Args:
        values: Observed history, oldest first.
        season: Steps per season.
        horizon: Steps to forecast.

    Returns:
        ``horizon`` forecast values.
    """
    x = np.asarray(values, dtype=float)
    if not seasonality_test(x, season):
        return np.full(horizon, x[-1])
    indices = multiplicative_seasonal_indices(x, season)
    adjusted_last = x[-1] / indices[-1]
    return adjusted_last * np.resize(indices[-season:], horizon)
