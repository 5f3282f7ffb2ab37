"""Global LightGBM forecaster: one model per quantile across all services, direct multi-horizon.

Rows are (service, origin, horizon) triples sampled from each service's history; features come
from :func:`models.features.build_features` and are scaled by the service's level at the origin,
so big and small services share one model. The target is the scaled value ``horizon`` steps
ahead, and each quantile gets its own LightGBM model with the quantile (pinball) objective.
Upper quantiles are calibrated on the last window of the training history (split-conformal
shift of the scaled residuals), so their empirical coverage matches their level.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import lightgbm as lgb
import numpy as np
import pandas as pd

from core.schema import SERVICE, TARGET, TS, quantile_column
from models.base import DEFAULT_QUANTILES, Forecaster, infer_step
from models.features import (
    DAY,
    Steps,
    Y,
    build_features,
    check_quantiles,
    check_steps,
    finalize_quantiles,
    future_timestamps,
    prepare_history,
    robust_clip,
    season_steps_for,
    steps_of,
)

TRANSFORMS = ("none", "log")
ANCHORS = ("median", "mean", "last", "recent", "week", "season")


class LightGBMForecaster(Forecaster):
    """Global direct multi-horizon LightGBM with per-quantile models.

    Args:
        quantiles: Quantile levels to train (``predict`` may ask for any subset).
        max_horizon: Longest horizon sampled in training (steps or a duration such as
            ``"1h"``); default one season.
        season_steps: Steps per season; one day of steps when ``None``.
        n_estimators: Boosting rounds per quantile model.
        learning_rate: LightGBM learning rate.
        num_leaves: LightGBM ``num_leaves``.
        min_data_in_leaf: LightGBM ``min_data_in_leaf``.
        samples_per_series: Training rows sampled per service.
        max_rows: Most training rows one fit samples over all its services (``None``: no
            limit): each service gets ``min(samples_per_series, max_rows // services)`` rows,
            at least one, so the boosting cost of a fit stays bounded however many services
            it covers (the features are still built per service).
        max_history: Keep at most this many recent steps (or this duration, ``"28D"``) per
            service (``None``: all).
        use_calendar: Add hour-of-day / day-of-week of the target (off when timestamps are
            synthetic, e.g. M4 step indices).
        weekly: Use weekly lags (``None``: when the step is below one day).
        clip_outliers: Replace anomalous spikes in the training history (see ``robust_clip``).
        calibrate: Shift upper quantiles by a split-conformal correction.
        num_threads: LightGBM threads.
        seed: Random seed for sampling and LightGBM.
        anchor: Scaled baseline the trees correct (see :meth:`_anchor`): ``"median"`` or
            ``"mean"`` of the same-phase lags plus the current deviation, the ``"last"`` value,
            or the ``"recent"`` mean (of the last ``min(12, season / 4)`` steps: less noisy
            than the last value, a better level for short horizons on noisy series), last
            ``"week"``'s value plus the weekly change, or the ``"season"``: the value one season
            before the target (the seasonal-naive forecast, which the trees then correct).
        n_seasonal_lags: Same-phase lags (one per past season) among the features.
        n_recent_lags: Most recent values among the features.
        target_transform: ``"none"``, or ``"log"`` to model ``log1p(y)`` (multiplicative
            patterns become additive; the forecast is transformed back, quantiles stay
            quantiles).
        calibration_windows: Held-out windows the upper quantiles are calibrated on: the
            calibration model is fitted before the first and scored on each (origins
            ``calibration_stride`` steps apart, ``max_horizon`` steps each). One window is noisy
            (its residuals are strongly correlated); later windows are scored by a model that
            is a little staler than the final one, which errs on the side of coverage.
        calibration_stride: Steps (or a duration) between calibration origins (default
            ``max_horizon``).
        smooth_features: Add smoothed levels (EWMAs, a short rolling median) and the expected
            seasonal change from origin to target to the features (see
            :func:`models.features.build_features`).
        max_growth: Cap every forecast at this many times the largest value of the service's
            history it is made from (``None``: no cap). A guard against an extrapolating
            anchor: on the log scale a correction of a few units is a factor of a hundred.

    Raises:
        ValueError: For an unknown anchor or transform, lag counts below 1, calibration
            windows / stride below 1, or a ``max_growth`` that is not positive.
    """

    name: ClassVar[str] = "lightgbm"
    max_rows: int | None = None  # models saved before the row budget existed load without one

    def __init__(
        self,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        max_horizon: Steps = None,
        season_steps: int | None = None,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_data_in_leaf: int = 50,
        samples_per_series: int = 2000,
        max_rows: int | None = None,
        max_history: Steps = None,
        use_calendar: bool = True,
        weekly: bool | None = None,
        clip_outliers: bool = True,
        calibrate: bool = True,
        num_threads: int = 2,
        seed: int = 0,
        anchor: str = "median",
        n_seasonal_lags: int = 4,
        n_recent_lags: int = 6,
        target_transform: str = "none",
        calibration_windows: int = 1,
        calibration_stride: Steps = None,
        smooth_features: bool = False,
        max_growth: float | None = None,
    ) -> None:
        if max_growth is not None and not max_growth > 0:
            raise ValueError(f"max_growth must be positive, got {max_growth}")
        self.max_growth = max_growth
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
        if max_rows is not None and (
            isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1
        ):
            raise ValueError(f"max_rows must be a whole number of at least 1, got {max_rows!r}")
        if calibration_windows < 1:
            raise ValueError(f"calibration_windows must be at least 1, got {calibration_windows}")
        check_steps(calibration_stride, "calibration_stride")
        check_steps(max_horizon, "max_horizon")
        check_steps(max_history, "max_history")
        self.calibration_windows = calibration_windows
        self.calibration_stride = calibration_stride
        self.smooth_features = smooth_features
        if target_transform not in TRANSFORMS:
            raise ValueError(
                f"target_transform must be one of {TRANSFORMS}, got {target_transform!r}"
            )
        if n_seasonal_lags < 1 or n_recent_lags < 1:
            raise ValueError(
                f"n_seasonal_lags and n_recent_lags must be at least 1, got "
                f"{n_seasonal_lags} and {n_recent_lags}"
            )
        self.anchor = anchor
        self.n_seasonal_lags = n_seasonal_lags
        self.n_recent_lags = n_recent_lags
        self.target_transform = target_transform
        self.quantiles = check_quantiles(quantiles)
        self.max_horizon = max_horizon
        self.season_steps = season_steps
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_data_in_leaf = min_data_in_leaf
        self.samples_per_series = samples_per_series
        self.max_rows = max_rows
        self.max_history = max_history
        self.use_calendar = use_calendar
        self.weekly = weekly
        self.clip_outliers = clip_outliers
        self.calibrate = calibrate
        self.num_threads = num_threads
        self.seed = seed
        self.target_: str = TARGET
        self.step_: pd.Timedelta | None = None
        self.season_: int = 1
        self.week_: int | None = None
        self.horizon_: int = 1
        self.models_: dict[float, lgb.Booster] = {}
        self.offsets_: dict[float, float] = {}
        self.feature_names_: list[str] = []
        self.history_: pd.DataFrame | None = None

    # ------------------------------------------------------------------ training
    def _lgb_params(self, quantile: float) -> dict[str, Any]:
        return {
            "objective": "quantile",
            "alpha": quantile,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": 0.9,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "num_threads": self.num_threads,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }

    def _features(
        self,
        values: np.ndarray,
        origins: np.ndarray,
        horizons: np.ndarray,
        target_times: pd.DatetimeIndex | None,
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """:func:`build_features` with this model's season, week and lag counts."""
        return build_features(
            values,
            origins,
            horizons,
            self.season_,
            self.week_,
            target_times if self.use_calendar else None,
            n_seasonal_lags=self.n_seasonal_lags,
            n_recent_lags=self.n_recent_lags,
            smooth_features=self.smooth_features,
        )

    def _times(self, times: pd.DatetimeIndex, positions: np.ndarray) -> pd.DatetimeIndex | None:
        """Target timestamps for the calendar features, only when the model uses them."""
        return times[positions] if self.use_calendar else None

    def _transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Apply the target transform to ``frame[y]``."""
        if self.target_transform == "none":
            return frame
        out = frame.copy()
        out[Y] = np.log1p(out[Y].to_numpy(dtype=float))
        return out

    def _untransform(self, values: np.ndarray) -> np.ndarray:
        """Back from the transformed target to the target."""
        if self.target_transform == "none":
            return values
        return np.expm1(np.clip(values, 0.0, 50.0))

    def rows_per_series(self, services: int) -> int:
        """Training rows sampled per service in a fit over ``services`` services."""
        if self.max_rows is None or services < 1:
            return self.samples_per_series
        return max(1, min(self.samples_per_series, self.max_rows // services))

    def _sample_rows(
        self,
        values: np.ndarray,
        times: pd.DatetimeIndex,
        rng: np.random.Generator,
        last: int,
        n: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Features, scales and targets of ``n`` sampled (origin, horizon) pairs with
        target <= last (fewer where a pair would end after it)."""
        first_origin = min(self.season_, max(1, last // 2))
        if last - 1 < first_origin:
            empty = np.empty((0, 0))
            return empty, np.empty(0), np.empty(0), np.empty(0, dtype=np.int64)
        origins = rng.integers(first_origin, last, size=n)  # origin <= last - 1
        # Half the rows at uniform horizons, half skewed to short ones (log-uniform).
        uniform = rng.integers(1, self.horizon_ + 1, size=n)
        short = np.exp(rng.uniform(0.0, np.log(self.horizon_ + 1), size=n)).astype(np.int64)
        horizons = np.where(rng.random(n) < 0.5, uniform, np.clip(short, 1, self.horizon_))
        keep = origins + horizons <= last
        origins, horizons = origins[keep], horizons[keep]
        clean = robust_clip(values[: last + 1], self.season_) if self.clip_outliers else values
        features, scale, _ = self._features(
            clean, origins, horizons, self._times(times, origins + horizons)
        )
        target = clean[origins + horizons] / scale - self._anchor(features)
        return features, scale, target, horizons

    def _anchor(self, features: np.ndarray) -> np.ndarray:
        """Scaled baseline the model corrects: seasonal profile plus the current deviation.

        The profile is the mean of the same-phase lags at the target; the deviation is how far
        the last value sits from the profile at the origin (a seasonal random walk); without a
        full season of history, the last value.

        Learning a correction instead of the level lets trees follow levels never seen in
        training (trees cannot extrapolate).
        """
        names = self.feature_names_ or []
        if not names:
            raise ValueError("feature names unknown before fit")
        if self.anchor == "last":
            return np.nan_to_num(features[:, names.index("lag_0")], nan=0.0)
        if self.anchor == "season":
            yesterday = features[:, names.index("season_lag_0")]
            last = features[:, names.index("lag_0")]
            return np.nan_to_num(np.where(np.isfinite(yesterday), yesterday, last), nan=0.0)
        if self.anchor == "recent":
            return np.nan_to_num(features[:, names.index("mean_short")], nan=0.0)
        if self.anchor == "week" and "week_lag" in names:
            weekly = features[:, names.index("week_lag")] + features[:, names.index("dev_week")]
            seasonal = self._seasonal_anchor(features, "mean")
            return np.nan_to_num(np.where(np.isfinite(weekly), weekly, seasonal), nan=0.0)
        return self._seasonal_anchor(features, "median" if self.anchor == "median" else "mean")

    def _seasonal_anchor(self, features: np.ndarray, kind: str) -> np.ndarray:
        """Mean or median of the same-phase lags plus the deviation now (else the last value)."""
        names = self.feature_names_
        seasonal = features[:, names.index(f"season_lag_{kind}")]
        deviation = features[
            :, names.index("deviation_now" + ("_median" if kind == "median" else ""))
        ]
        last = features[:, names.index("lag_0")]
        anchor = np.where(np.isfinite(seasonal), seasonal + np.nan_to_num(deviation), last)
        return np.nan_to_num(anchor, nan=0.0)

    def _train(self, quantile: float, features: np.ndarray, targets: np.ndarray) -> lgb.Booster:
        dataset = lgb.Dataset(features, targets, feature_name=self.feature_names_)
        return lgb.train(self._lgb_params(quantile), dataset, num_boost_round=self.n_estimators)

    def fit(self, history: pd.DataFrame, target: str = TARGET) -> LightGBMForecaster:
        """Train one LightGBM model per quantile on all services (see :meth:`Forecaster.fit`)."""
        self.target_ = target
        self.step_ = infer_step(history) if len(history) > 1 else pd.Timedelta(hours=1)
        self.season_ = self.season_steps or season_steps_for(self.step_)
        weekly = self.weekly if self.weekly is not None else self.step_ < DAY
        self.week_ = 7 * self.season_ if weekly else None
        self.horizon_ = steps_of(self.max_horizon, self.step_) or self.season_
        frame = prepare_history(history, target, self.step_)
        if self.max_history:
            frame = frame.groupby(SERVICE, sort=True).tail(steps_of(self.max_history, self.step_))
        frame = self._transform(frame)
        _, _, self.feature_names_ = self._features(
            np.ones(3), np.array([2]), np.array([1]), pd.DatetimeIndex([pd.Timestamp("2000-01-01")])
        )
        rng = np.random.default_rng(self.seed)
        per_series = self.rows_per_series(frame[SERVICE].nunique())
        train_x, train_y, cut_x, cut_y, calib_x, calib_y = [], [], [], [], [], []
        for _, group in frame.groupby(SERVICE, sort=True):
            values = group[Y].to_numpy(dtype=float)
            times = pd.DatetimeIndex(group[TS])
            x, _, y, _ = self._sample_rows(values, times, rng, values.size - 1, per_series)
            if x.size:
                train_x.append(x)
                train_y.append(y)
            holdout = self.horizon_
            stride = steps_of(self.calibration_stride, self.step_) or self.horizon_
            span = holdout + (self.calibration_windows - 1) * stride
            if self.calibrate and values.size > 3 * self.horizon_ + span:
                # Calibration: a model fitted before the held-out windows, scored on them.
                cut = values.size - 1 - span
                x, _, y, _ = self._sample_rows(values, times, rng, cut, per_series)
                if x.size:
                    cut_x.append(x)
                    cut_y.append(y)
                for window in range(self.calibration_windows):
                    origin = cut + window * stride
                    origins = np.full(holdout, origin)
                    horizons = np.arange(1, holdout + 1)
                    clean = values[: origin + 1]
                    if self.clip_outliers:
                        clean = robust_clip(clean, self.season_)
                    cx, cs, _ = self._features(
                        clean, origins, horizons, self._times(times, origins + horizons)
                    )
                    calib_x.append(cx)
                    calib_y.append(values[origins + horizons] / cs - self._anchor(cx))
        if not train_x:
            raise ValueError(
                f"no service has enough history to train LightGBM (need more than "
                f"{min(self.season_, 2)} steps)"
            )
        self.models_ = {}
        self.offsets_ = {}
        for q in self.quantiles:
            self.models_[q] = self._train(q, np.vstack(train_x), np.concatenate(train_y))
            self.offsets_[q] = 0.0
            if cut_x and q > 0.5:
                # Split-conformal: shift so that a share q of held-out residuals is covered.
                cut_model = self._train(q, np.vstack(cut_x), np.concatenate(cut_y))
                held_out = np.vstack(calib_x)
                residual = np.concatenate(calib_y) - cut_model.predict(
                    held_out, num_threads=self.num_threads
                )
                self.offsets_[q] = float(np.quantile(residual, q))
        keep = max(self.week_ or 0, self.season_) * 2 + self.season_
        self.history_ = frame.groupby(SERVICE, sort=True).tail(keep).reset_index(drop=True)
        return self

    # ---------------------------------------------------------------- prediction
    def predict(
        self,
        horizon: int,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        history: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Forecast every service from its latest history (see :meth:`Forecaster.predict`).

        Raises:
            ValueError: If called before ``fit`` or for a quantile that was not trained.
        """
        if not self.models_ or self.step_ is None or self.history_ is None:
            raise ValueError("LightGBMForecaster.predict called before fit")
        levels = check_quantiles(quantiles)
        missing = [q for q in levels if q not in self.models_]
        if missing:
            raise ValueError(f"quantiles {missing} were not trained; trained: {self.quantiles}")
        out, features, scale = self.forecast_design(horizon, history)
        anchor = self._anchor(features)
        cap = self._growth_cap(out, history)
        for q in levels:
            raw = self.models_[q].predict(features, num_threads=self.num_threads)
            scaled = (raw + self.offsets_.get(q, 0.0) + anchor) * scale
            out[quantile_column(q)] = np.minimum(self._untransform(scaled), cap)
        return finalize_quantiles(out, levels)

    def _growth_cap(self, rows: pd.DataFrame, history: pd.DataFrame | None) -> np.ndarray:
        """Per forecast row: ``max_growth`` x the largest value of its service's history."""
        if self.max_growth is None or self.history_ is None:
            return np.full(len(rows), np.inf)
        if history is not None:
            largest = (
                pd.to_numeric(history[self.target_], errors="coerce")
                .groupby(history[SERVICE].astype(str))
                .max()
            )
        else:
            kept = self.history_.groupby(SERVICE)[Y].max()
            largest = pd.Series(self._untransform(kept.to_numpy()), index=kept.index.astype(str))
        found = rows[SERVICE].astype(str).map(largest).to_numpy(dtype=float)
        return np.where(np.isfinite(found), self.max_growth * found, np.inf)

    def forecast_design(
        self, horizon: int, history: pd.DataFrame | None = None
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """The rows, design matrix and scales behind a forecast of the next ``horizon`` steps.

        Args:
            horizon: Steps ahead.
            history: Newer history (default: the history kept at fit).

        Returns:
            ``(keys, features, scale)``: ``service, ts`` per row, the matrix (columns
            ``feature_names_``), and the per-row scale that turns model output into the target.

        Raises:
            ValueError: If called before ``fit``.
        """
        if self.step_ is None or self.history_ is None:
            raise ValueError("LightGBMForecaster.forecast_design called before fit")
        frame = (
            self._transform(prepare_history(history, self.target_, self.step_))
            if history is not None
            else self.history_
        )
        blocks, scales, keys = [], [], []
        for service, group in frame.groupby(SERVICE, sort=True):
            values = group[Y].to_numpy(dtype=float)
            origins = np.full(horizon, values.size - 1)
            horizons = np.arange(1, horizon + 1)
            future = future_timestamps(group[TS].iloc[-1], self.step_, horizon)
            clean = robust_clip(values, self.season_) if self.clip_outliers else values
            features, scale, _ = self._features(clean, origins, horizons, future)
            blocks.append(features)
            scales.append(scale)
            keys.append(pd.DataFrame({SERVICE: service, TS: future}))
        out = pd.concat(keys, ignore_index=True)
        out[TS] = out[TS].astype(frame[TS].dtype)
        return out, np.vstack(blocks), np.concatenate(scales)
