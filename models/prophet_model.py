"""Prophet per service: daily/weekly seasonality, a surge calendar as holidays, parallel fits.

Anomalous spikes are removed before fitting (Prophet treats missing rows natively), the
forecast is floored at zero, and upper quantiles come from the empirical quantiles of the
in-sample residuals added to ``yhat`` (cheaper and more stable than Prophet's sampled intervals).
Because Prophet is a function of time, ``predict(history=...)`` forecasts the steps after the new
history's end with the fitted model, without refitting.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from core.schema import SERVICE, TARGET, TS, quantile_column
from models.base import DEFAULT_QUANTILES, Forecaster, infer_step
from models.features import (
    DAY,
    FILLED,
    Steps,
    Y,
    check_quantiles,
    check_steps,
    finalize_quantiles,
    future_timestamps,
    prepare_history,
    robust_clip,
    season_steps_for,
    steps_of,
)

SURGE_COLUMNS = ("holiday", "ds")


def _quiet_prophet() -> None:
    """Silence cmdstanpy and prophet loggers (cmdstanpy resets levels, so disable it)."""
    logging.getLogger("cmdstanpy").disabled = True
    logging.getLogger("prophet").setLevel(logging.WARNING)


def _fit_one(
    service: str,
    frame: pd.DataFrame,
    options: dict[str, Any],
    surges: pd.DataFrame | None,
    quantiles: tuple[float, ...],
) -> tuple[str, Any, dict[float, float]]:
    """Fit one service's Prophet model; returns it with its residual quantile offsets."""
    from prophet import Prophet

    _quiet_prophet()
    model = Prophet(holidays=surges, uncertainty_samples=0, **options)
    model.fit(frame)
    fitted = model.predict(frame[["ds"]])["yhat"].to_numpy()
    residuals = frame["y"].to_numpy() - fitted
    residuals = residuals[np.isfinite(residuals)]
    offsets = {
        q: float(np.quantile(residuals, q)) if residuals.size and q != 0.5 else 0.0
        for q in quantiles
    }
    return service, model, offsets


class ProphetForecaster(Forecaster):
    """One Prophet model per service, fitted in parallel processes.

    Args:
        quantiles: Quantile levels whose residual offsets are estimated at fit.
        surge_calendar: Known events as a Prophet holidays frame (``holiday``, ``ds`` and
            optionally ``lower_window``, ``upper_window``), applied to every service.
        daily: Fit a daily seasonality.
        weekly: Fit a weekly seasonality (``None``: when the history spans two weeks).
        changepoint_prior_scale: Trend flexibility.
        seasonality_mode: ``"additive"`` or ``"multiplicative"``.
        max_history: Fit on at most this many recent steps (or this duration, ``"28D"``) per
            service.
        clip_outliers: Drop anomalous spikes (see ``robust_clip``) before fitting.
        n_jobs: Processes for fitting services in parallel (1 = in process).
    """

    name: ClassVar[str] = "prophet"

    def __init__(
        self,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        surge_calendar: pd.DataFrame | None = None,
        daily: bool = True,
        weekly: bool | None = None,
        changepoint_prior_scale: float = 0.05,
        seasonality_mode: str = "additive",
        max_history: Steps = None,
        clip_outliers: bool = True,
        n_jobs: int = 1,
    ) -> None:
        if surge_calendar is not None:
            missing = [c for c in SURGE_COLUMNS if c not in surge_calendar.columns]
            if missing:
                raise ValueError(f"surge_calendar is missing column(s) {missing}")
        self.quantiles = check_quantiles(quantiles)
        self.surge_calendar = surge_calendar
        self.daily = daily
        self.weekly = weekly
        self.changepoint_prior_scale = changepoint_prior_scale
        self.seasonality_mode = seasonality_mode
        self.max_history = check_steps(max_history, "max_history")
        self.clip_outliers = clip_outliers
        self.n_jobs = n_jobs
        self.target_: str = TARGET
        self.step_: pd.Timedelta | None = None
        self.models_: dict[str, Any] = {}
        self.offsets_: dict[str, dict[float, float]] = {}
        self.last_ts_: dict[str, pd.Timestamp] = {}
        self.ts_dtype_: Any = None

    def _surges(self) -> pd.DataFrame | None:
        if self.surge_calendar is None:
            return None
        surges = self.surge_calendar.copy()
        surges["ds"] = pd.to_datetime(surges["ds"], utc=True).dt.tz_localize(None)
        return surges

    def fit(self, history: pd.DataFrame, target: str = TARGET) -> ProphetForecaster:
        """Fit one Prophet model per service (see :meth:`Forecaster.fit`)."""
        self.target_ = target
        self.step_ = infer_step(history) if len(history) > 1 else pd.Timedelta(hours=1)
        season = season_steps_for(self.step_)
        prepared = prepare_history(history, target, self.step_)
        self.ts_dtype_ = prepared[TS].dtype
        if self.max_history:
            keep = steps_of(self.max_history, self.step_)
            prepared = prepared.groupby(SERVICE, sort=True).tail(keep)
        jobs = []
        for service, group in prepared.groupby(SERVICE, sort=True):
            values = group[Y].to_numpy(dtype=float)
            cleaned = robust_clip(values, season) if self.clip_outliers else values
            frame = pd.DataFrame({"ds": group[TS].dt.tz_localize(None).to_numpy(), "y": values})
            drop = group[FILLED].to_numpy() | (cleaned != values)
            frame.loc[drop, "y"] = np.nan  # Prophet skips missing rows
            if frame["y"].notna().sum() < 2:
                frame["y"] = values
            span = group[TS].iloc[-1] - group[TS].iloc[0]
            weekly = self.weekly if self.weekly is not None else span >= 14 * DAY
            options = {
                "daily_seasonality": self.daily and self.step_ < DAY and span >= 2 * DAY,
                "weekly_seasonality": bool(weekly),
                "yearly_seasonality": False,
                "changepoint_prior_scale": self.changepoint_prior_scale,
                "seasonality_mode": self.seasonality_mode,
            }
            jobs.append((str(service), frame, options))
            self.last_ts_[str(service)] = group[TS].iloc[-1]
        surges = self._surges()
        if self.n_jobs > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=self.n_jobs) as pool:
                results = list(
                    pool.map(
                        _fit_one,
                        *zip(*[(s, f, o, surges, self.quantiles) for s, f, o in jobs], strict=True),
                    )
                )
        else:
            results = [_fit_one(s, f, o, surges, self.quantiles) for s, f, o in jobs]
        self.models_ = {service: model for service, model, _ in results}
        self.offsets_ = {service: offsets for service, _, offsets in results}
        return self

    def predict(
        self,
        horizon: int,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        history: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Forecast the steps after each service's (possibly newer) history end.

        Raises:
            ValueError: If called before ``fit``, for an unfitted service or quantile.
        """
        if not self.models_ or self.step_ is None:
            raise ValueError("ProphetForecaster.predict called before fit")
        levels = check_quantiles(quantiles)
        missing = [q for q in levels if q not in self.quantiles]
        if missing:
            raise ValueError(f"quantiles {missing} were not fitted; fitted: {self.quantiles}")
        last_ts = dict(self.last_ts_)
        if history is not None:
            prepared = prepare_history(history, self.target_, self.step_)
            last_ts = {str(s): g[TS].iloc[-1] for s, g in prepared.groupby(SERVICE, sort=True)}
            unknown = sorted(set(last_ts) - set(self.models_))
            if unknown:
                raise ValueError(f"services {unknown} were not fitted by this Prophet forecaster")
        _quiet_prophet()
        parts = []
        for service, last in sorted(last_ts.items()):
            future = future_timestamps(last, self.step_, horizon)
            yhat = (
                self.models_[service]
                .predict(pd.DataFrame({"ds": future.tz_localize(None)}))["yhat"]
                .to_numpy()
            )
            out = pd.DataFrame({SERVICE: service, TS: future})
            for q in levels:
                out[quantile_column(q)] = yhat + self.offsets_[service][q]
            parts.append(out)
        result = pd.concat(parts, ignore_index=True)
        result[TS] = result[TS].astype(self.ts_dtype_)
        return finalize_quantiles(result, levels)
