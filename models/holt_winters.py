"""Double-seasonal Holt-Winters (Taylor, 2003) on ``log1p(y)``: a fast statistical forecaster.

A level plus a daily and a weekly seasonal component, each updated by exponential smoothing of
the one-step error, on the log scale (so the seasonal patterns are multiplicative):

    forecast[t]  = level[t-1] + day[t - season] + week[t - 7 * season]
    error[t]     = log1p(y[t]) - forecast[t]
    level[t]     = level[t-1] + alpha * error[t]
    day[t]       = day[t - season] + gamma_day * error[t]
    week[t]      = week[t - 7 * season] + gamma_week * error[t]

The first week initialises the state (its mean is the level, its mean day the daily component,
the rest the weekly one). Smoothing parameters are fixed, not fitted per series: chosen on the
M4 Hourly training parts, where fitting them to one-step errors did much worse at 48 steps.
Services are smoothed together when their histories have the same length (one numpy pass over
time for all of them), so 200 series take well under a second.

It is a different kind of model from the global trees (local, linear, no features), which is
what makes it useful in a median combination with them, although it is weaker alone.
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
from models.naive import seasonal_naive_path


def double_seasonal_components(
    log_values: np.ndarray,
    season: int,
    horizon: int,
    alpha: float,
    gamma_day: float,
    gamma_week: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run the smoothing over series of equal length; the forecast's components (log scale).

    The forecast of ``horizon`` steps is ``level[:, None] + day + week``.

    Args:
        log_values: ``(n_series, n_steps)`` on the log scale, ``n_steps >= 7 * season + 1``.
        season: Steps per day.
        horizon: Steps to forecast.
        alpha: Level smoothing.
        gamma_day: Daily-component smoothing.
        gamma_week: Weekly-component smoothing.

    Returns:
        ``(level, day, week, errors)``: the final level ``(n_series,)``, the daily and weekly
        components of each forecast step ``(n_series, horizon)``, and the one-step errors
        ``(n_series, n_steps - 7 * season)``.
    """
    y = np.asarray(log_values, dtype=float)
    n, steps = y.shape
    week = 7 * season
    first = y[:, :week]
    level = first.mean(axis=1)
    day = (first.reshape(n, 7, season).mean(axis=1) - level[:, None]).copy()
    weekly = first - level[:, None] - np.tile(day, (1, 7))
    errors = np.empty((n, steps - week))
    for t in range(week, steps):
        d, w = t % season, t % week
        error = y[:, t] - (level + day[:, d] + weekly[:, w])
        level = level + alpha * error
        day[:, d] += gamma_day * error
        weekly[:, w] += gamma_week * error
        errors[:, t - week] = error
    future = np.arange(steps, steps + horizon)
    return level, day[:, future % season], weekly[:, future % week], errors


class DoubleSeasonalHoltWintersForecaster(Forecaster):
    """Daily + weekly Holt-Winters on ``log1p(y)`` per service, with fixed smoothing parameters.

    Services with less than two weeks of history get the seasonal-naive forecast (one week
    initialises the state, the smoothing needs at least another). Quantiles other than the
    median add the empirical quantile of the last two weeks' one-step errors on the log scale (a
    rough interval, 0.84 coverage for the p90 on the M4 training part; the M4 combination uses
    the median only).

    Args:
        alpha: Level smoothing, in [0, 1].
        gamma_day: Daily-component smoothing, in [0, 1].
        gamma_week: Weekly-component smoothing, in [0, 1].
        season_steps: Steps per day; inferred from the step when ``None``.
        max_growth: Cap every forecast at this many times the service's largest value (the
            log scale turns a drifting level into an exponential).

    Raises:
        ValueError: For smoothing parameters outside [0, 1] or a ``max_growth`` that is not
            positive.
    """

    name: ClassVar[str] = "holt_winters"

    def __init__(
        self,
        alpha: float = 0.05,
        gamma_day: float = 0.1,
        gamma_week: float = 0.2,
        season_steps: int | None = None,
        max_growth: float = 3.0,
    ) -> None:
        for label, value in (
            ("alpha", alpha),
            ("gamma_day", gamma_day),
            ("gamma_week", gamma_week),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{label} must be within [0, 1], got {value}")
        if not max_growth > 0:
            raise ValueError(f"max_growth must be positive, got {max_growth}")
        self.alpha = alpha
        self.gamma_day = gamma_day
        self.gamma_week = gamma_week
        self.season_steps = season_steps
        self.max_growth = max_growth
        self.step_: pd.Timedelta | None = None
        self.season_: int = 1
        self.target_: str = TARGET
        self.history_: pd.DataFrame | None = None

    def fit(
        self, history: pd.DataFrame, target: str = TARGET
    ) -> DoubleSeasonalHoltWintersForecaster:
        """Store each service's history on a regular grid (see :meth:`Forecaster.fit`).

        The smoothing itself runs in :meth:`predict` (it takes well under a second), so a
        fresh history there is used as it is.
        """
        self.target_ = target
        self.step_ = infer_step(history) if len(history) > 1 else pd.Timedelta(hours=1)
        self.season_ = self.season_steps or season_steps_for(self.step_)
        self.history_ = prepare_history(history, target, self.step_)
        return self

    def predict(
        self,
        horizon: int,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        history: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Forecast every service (see :meth:`Forecaster.predict`).

        Raises:
            ValueError: If called before ``fit``.
        """
        frame = self._history(history, "predict")
        levels = check_quantiles(quantiles)
        series = {
            str(service): group[Y].to_numpy(dtype=float)
            for service, group in frame.groupby(SERVICE, sort=True)
        }
        last_ts = frame.groupby(SERVICE, sort=True)[TS].max()
        paths = self._paths(series, horizon, levels)
        parts = []
        for service, values in paths.items():
            out = pd.DataFrame(
                {SERVICE: service, TS: future_timestamps(last_ts[service], self.step_, horizon)}
            )
            for q, path in zip(levels, values, strict=True):
                out[quantile_column(q)] = path
            parts.append(out)
        result = pd.concat(parts, ignore_index=True)
        result[TS] = result[TS].astype(frame[TS].dtype)
        return finalize_quantiles(result, levels)

    def components(self, horizon: int, history: pd.DataFrame | None = None) -> pd.DataFrame:
        """The median forecast's components per step, on the log scale (for explanations).

        ``log1p(forecast) = level + daily + weekly`` before the growth cap, so
        ``exp(daily) - 1`` is the daily pattern's effect relative to the level.

        Args:
            horizon: Steps to forecast.
            history: Forecast from this history instead of the fitted one.

        Returns:
            ``service, ts, level, daily, weekly`` for every service with at least two weeks of
            history (the others are forecast by seasonal naive and have no components).

        Raises:
            ValueError: If called before ``fit``.
        """
        frame = self._history(history, "components")
        parts = []
        for service, group in frame.groupby(SERVICE, sort=True):
            values = group[Y].to_numpy(dtype=float)
            if not self._smoothable(values):
                continue
            level, day, week, _ = double_seasonal_components(
                np.log1p(values)[None, :],
                self.season_,
                horizon,
                self.alpha,
                self.gamma_day,
                self.gamma_week,
            )
            parts.append(
                pd.DataFrame(
                    {
                        SERVICE: str(service),
                        TS: future_timestamps(group[TS].max(), self.step_, horizon),
                        "level": level[0],
                        "daily": day[0],
                        "weekly": week[0],
                    }
                )
            )
        columns = [SERVICE, TS, "level", "daily", "weekly"]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)

    def _history(self, history: pd.DataFrame | None, caller: str) -> pd.DataFrame:
        """The fitted history, or ``history`` on the fitted grid; an error before ``fit``."""
        if self.history_ is None or self.step_ is None:
            raise ValueError(f"DoubleSeasonalHoltWintersForecaster.{caller} called before fit")
        if history is None:
            return self.history_
        return prepare_history(history, self.target_, self.step_)

    def _smoothable(self, values: np.ndarray) -> bool:
        """Two weeks at least: one initialises the state, the smoothing needs another."""
        return values.size >= 2 * 7 * self.season_

    def _paths(
        self, series: dict[str, np.ndarray], horizon: int, levels: tuple[float, ...]
    ) -> dict[str, list[np.ndarray]]:
        """One forecast path per quantile level and service; equal lengths smoothed together."""
        week = 7 * self.season_
        by_length: dict[int, list[str]] = {}
        paths: dict[str, list[np.ndarray]] = {}
        for service, values in series.items():
            if not self._smoothable(values):
                point = seasonal_naive_path(values, self.season_, horizon)
                paths[service] = [point for _ in levels]
            else:
                by_length.setdefault(values.size, []).append(service)
        for services in by_length.values():
            log_values = np.log1p(np.vstack([series[s] for s in services]))
            level, day, week_part, errors = double_seasonal_components(
                log_values, self.season_, horizon, self.alpha, self.gamma_day, self.gamma_week
            )
            forecast = level[:, None] + day + week_part
            recent = errors[:, -2 * week :]
            for row, service in enumerate(services):
                cap = self.max_growth * float(series[service].max())
                paths[service] = []
                for q in levels:
                    offset = float(np.quantile(recent[row], q)) if q != 0.5 else 0.0
                    log_path = np.minimum(forecast[row] + offset, np.log1p(cap))
                    paths[service].append(np.expm1(log_path))
        return {service: paths[service] for service in series}
