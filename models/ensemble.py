"""Per-service weighted combination of forecasters, chosen by a rolling-origin backtest.

At fit time every member is backtested on the training history only (``n_folds`` origins, each
``backtest_horizon`` steps, see :mod:`models.backtest`); each service then weights its members by
inverse squared MAE, per horizon bucket (members much worse than the service's best get
weight 0), so a service
whose pattern LightGBM captures uses LightGBM, a noisy one leans on the seasonal naive, and so
on. Services with fewer than ``min_seasons`` seasons of history (new services) fall back to the
seasonal naive forecaster instead of failing.

Alternatively the weights are fixed in advance (``weights``, per horizon bucket): no backtest,
each member is fitted once. When one history holds a single series (the backtest would weight
members on one window of that series) or the members are variants of one model, fixed weights
chosen offline are less noisy than backtest weights and half the cost. ``interval_members``
lets point-only members (trained for the median alone) join the combination: the upper and
lower quantiles are the combined median plus the members' own spread around their medians.

A guard (``guard_windows``) keeps the combination from doing much worse than "same time
yesterday": the members are fitted on the history before the last ``guard_windows`` windows of
``guard_horizon`` steps, the combination forecasts each window from the history before it
(rolling origin, strictly past data), and a service whose combined MAE over the windows exceeds
``guard_max_ratio`` x the seasonal naive's MAE on the same steps is forecast by the seasonal
naive. The members are then refitted on the full history (``guard_refit``), or the guard's
members forecast from it (a day staler, half the fits).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import numpy as np
import pandas as pd

from core.schema import SERVICE, TARGET, TS, quantile_column
from models.backtest import rolling_origin_splits
from models.base import DEFAULT_QUANTILES, Forecaster, infer_step
from models.features import (
    Steps,
    check_quantiles,
    check_steps,
    finalize_quantiles,
    season_steps_for,
    steps_of,
)
from models.naive import SeasonalNaiveForecaster

NAIVE = "naive"
COMBINES = ("mean", "median")


def default_members() -> dict[str, Callable[[], Forecaster]]:
    """Seasonal naive + global LightGBM (Prophet is opt-in: it rarely earns weight on ops data)."""
    from models.lgbm_model import LightGBMForecaster

    return {NAIVE: SeasonalNaiveForecaster, "lightgbm": LightGBMForecaster}


class EnsembleForecaster(Forecaster):
    """Weighted per-service ensemble with a seasonal-naive fallback for short histories.

    Args:
        members: Name -> factory of an unfitted forecaster; a ``"naive"`` member is added when
            missing. Default: :func:`default_members`.
        n_folds: Backtest origins used to weight members.
        backtest_horizon: Steps per backtest window (default one season).
        min_seasons: Services with less history than this many seasons use the naive fallback.
        max_ratio: Members whose backtest MAE exceeds ``max_ratio`` x the best get no weight.
        quantiles: Quantile levels to produce.
        refit: Refit members on the full history after the backtest; when ``False`` the
            latest backtest-fold models are kept and forecast from the fresh history (faster).
        bucket_edges: Horizon buckets as fractions of ``backtest_horizon``; members are weighted
            per service and bucket (the best model one hour ahead is often not the best one
            day ahead).
        shrinkage: Pull of each service's weights toward the fleet's (:func:`fleet_weights`):
            0 keeps per-service weights, 1 uses the fleet's for every service. A service's
            weights rest on a few backtest windows and are noisy; the fleet's on all of them.
        weights: Fixed weights instead of the backtest: member -> one weight, or one weight
            per horizon bucket (``len(bucket_edges) + 1`` values). Members left out get weight
            0 and are not fitted (the ``"naive"`` member too); weights are normalised per bucket.
        interval_members: Members whose quantiles other than the median are used: the
            combination's quantile ``q`` is its median plus the weighted mean (over these
            members, per bucket; equal where they all have weight 0 in the bucket) of
            ``member q - member median``; the other members are asked for the median only.
            ``None``: every member's quantiles are combined directly.
        combine: ``"mean"`` (weighted mean of the members) or ``"median"`` (weighted median, see
            :func:`weighted_median`): a member far from the others moves a median only as far
            as the next member, so a weaker model of another kind can join the trees without
            its misses dominating.
        guard_windows: Held-out windows at the end of the history on which each service's
            combination is compared with the seasonal naive (0: no guard; see the module doc).
        guard_horizon: Steps (or a duration, ``"1D"``) per guard window (default: one season).
        guard_max_ratio: A service whose combined MAE over the guard windows exceeds this many
            times the seasonal naive's MAE is forecast by the seasonal naive.
        guard_refit: Refit the members on the whole history after the guard (else the members
            fitted before the guard windows forecast from the whole history).

    Attributes:
        guard_ratios_: Per service, combined MAE / seasonal-naive MAE over the guard windows.
        guarded_services_: Services the guard hands to the seasonal naive.

    Raises:
        ValueError: For a shrinkage outside [0, 1], fixed weights that name unknown members,
            are negative, have the wrong number of buckets or sum to 0 in a bucket, or
            interval members that are unknown or (with fixed weights) not among the weights,
            or an unknown ``combine``, negative guard windows or a guard ratio that is not positive.
    """

    name: ClassVar[str] = "ensemble"

    def __init__(
        self,
        members: Mapping[str, Callable[[], Forecaster]] | None = None,
        n_folds: int = 1,
        backtest_horizon: int | None = None,
        min_seasons: int = 2,
        max_ratio: float = 1.3,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        refit: bool = True,
        bucket_edges: Sequence[float] = (1 / 24, 1 / 4),
        shrinkage: float = 0.0,
        weights: Mapping[str, float | Sequence[float]] | None = None,
        interval_members: Sequence[str] | None = None,
        combine: str = "mean",
        guard_windows: int = 0,
        guard_horizon: Steps = None,
        guard_max_ratio: float = 1.0,
        guard_refit: bool = True,
    ) -> None:
        if guard_windows < 0 or not guard_max_ratio > 0:
            raise ValueError(
                f"guard_windows must be >= 0 and guard_max_ratio > 0, got {guard_windows} and "
                f"{guard_max_ratio}"
            )
        self.guard_windows = int(guard_windows)
        self.guard_horizon = check_steps(guard_horizon, "guard_horizon")
        self.guard_max_ratio = float(guard_max_ratio)
        self.guard_refit = guard_refit
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        self.combine = combine
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be within [0, 1], got {shrinkage}")
        self.shrinkage = shrinkage
        chosen = dict(members) if members is not None else default_members()
        chosen.setdefault(NAIVE, SeasonalNaiveForecaster)
        self.members = chosen
        self.bucket_edges = tuple(bucket_edges)
        self._fixed_weights = (
            self._check_weights(weights, len(self.bucket_edges) + 1) if weights else None
        )
        self.weights = dict(weights) if weights else None
        self.interval_members = tuple(interval_members) if interval_members is not None else None
        self._check_interval_members()
        self.n_folds = n_folds
        self.backtest_horizon = backtest_horizon
        self.min_seasons = min_seasons
        self.max_ratio = max_ratio
        self.quantiles = check_quantiles(quantiles)
        self.refit = refit
        self.horizon_: int = 1
        self.target_: str = TARGET
        self.fitted_: dict[str, Forecaster] = {}
        self.fallback_: SeasonalNaiveForecaster | None = None
        self.weights_: pd.DataFrame = pd.DataFrame()
        self.backtest_: pd.DataFrame = pd.DataFrame()
        self.short_services_: list[str] = []
        self.history_: pd.DataFrame | None = None
        self.guard_ratios_: dict[str, float] = {}
        self.guarded_services_: list[str] = []

    def fit(self, history: pd.DataFrame, target: str = TARGET) -> EnsembleForecaster:
        """Backtest the members on ``history``, weight them per service, and fit them.

        With a guard, the members are fitted before the guard windows and each service's
        combination is checked against the seasonal naive on them (see the module doc).

        Args:
            history: Long frame ``service, ts, target``.
            target: Column to forecast.

        Returns:
            ``self``.
        """
        self.target_ = target
        step = infer_step(history) if len(history) > 1 else pd.Timedelta(hours=1)
        season = season_steps_for(step)
        self.fallback_ = SeasonalNaiveForecaster().fit(history, target)
        self.guard_ratios_, self.guarded_services_ = {}, []
        if not self.guard_windows:
            return self._fit_members(history, target, season)
        window = steps_of(self.guard_horizon, step) or season
        last = history.groupby(SERVICE)[TS].transform("max")
        span = self.guard_windows * window * step
        self._fit_members(history[history[TS] <= last - span], target, season)
        combined = set(self.weights_[SERVICE].astype(str)) if not self.weights_.empty else set()
        long_history = history[history[SERVICE].astype(str).isin(combined)]
        if not combined or not self.fitted_:
            return self
        self.history_ = long_history
        self.guard_ratios_ = self._guard_ratios(long_history, window, step)
        guarded = sorted(
            service
            for service, ratio in self.guard_ratios_.items()
            if not ratio <= self.guard_max_ratio
        )
        if self.guard_refit:
            self._fit_members(history, target, season)
            refitted = set(self.weights_[SERVICE].astype(str)) if not self.weights_.empty else set()
            # A service long enough only with the guard windows was never checked: naive too.
            guarded = sorted(set(guarded) | (refitted - set(self.guard_ratios_)))
            self.history_ = history[history[SERVICE].astype(str).isin(refitted)]
        self.guarded_services_ = guarded
        return self

    def _guard_ratios(
        self, history: pd.DataFrame, window: int, step: pd.Timedelta
    ) -> dict[str, float]:
        """Per service: combined MAE / seasonal-naive MAE over the guard windows."""
        target = self.target_
        last = history.groupby(SERVICE)[TS].transform("max")
        errors = []
        for k in range(self.guard_windows, 0, -1):
            origin = last - k * window * step
            past = history[history[TS] <= origin]
            future = history[(history[TS] > origin) & (history[TS] <= origin + window * step)]
            if past.empty or future.empty:
                continue
            actual = future[[SERVICE, TS, target]].rename(columns={target: "y"})
            median = quantile_column(0.5)
            combined = self._combine(window, (0.5,), past)[[SERVICE, TS, median]]
            naive = SeasonalNaiveForecaster().fit(past, target).predict(window, (0.5,))
            joined = actual.merge(combined, on=[SERVICE, TS]).merge(
                naive.rename(columns={median: "naive"}), on=[SERVICE, TS]
            )
            errors.append(
                pd.DataFrame(
                    {
                        SERVICE: joined[SERVICE].astype(str),
                        "model": (joined["y"] - joined[median]).abs(),
                        "naive": (joined["y"] - joined["naive"]).abs(),
                    }
                )
            )
        if not errors:
            return {}
        sums = pd.concat(errors).groupby(SERVICE)[["model", "naive"]].sum()
        ratios = np.where(
            sums["naive"] > 0,
            sums["model"] / sums["naive"].where(sums["naive"] > 0, 1.0),
            np.where(sums["model"] > 0, np.inf, 1.0),
        )
        return {str(s): float(r) for s, r in zip(sums.index, ratios, strict=True)}

    def _fit_members(self, history: pd.DataFrame, target: str, season: int) -> EnsembleForecaster:
        """Weight (backtest or fixed weights) and fit the members on ``history``."""
        self.horizon_ = self.backtest_horizon or season
        self.history_ = None
        counts = history.groupby(SERVICE)[TS].nunique()
        needed = self.min_seasons * season
        if self._fixed_weights is None:  # the backtest needs room for its folds too
            needed = max(needed, 2 * season + self.n_folds * self.horizon_)
        long_services = sorted(str(s) for s in counts[counts >= needed].index)
        self.short_services_ = sorted(str(s) for s in counts.index if str(s) not in long_services)
        self.fitted_ = {}
        if not long_services:
            self.weights_ = pd.DataFrame(columns=[SERVICE, "member", "bucket", "weight"])
            return self
        long_history = history[history[SERVICE].astype(str).isin(long_services)]
        if self._fixed_weights is not None:
            self.weights_ = pd.DataFrame(
                [
                    {SERVICE: service, "member": member, "bucket": bucket, "weight": weight}
                    for service in long_services
                    for member, per_bucket in self._fixed_weights.items()
                    for bucket, weight in enumerate(per_bucket)
                ]
            )
            self.backtest_ = pd.DataFrame(columns=[SERVICE, "member", "bucket", "mae"])
            for member in self._fixed_weights:
                self.fitted_[member] = self.members[member]().fit(long_history, target)
            self.history_ = None  # every member forecasts from its own fit history
            return self
        splits = rolling_origin_splits(long_history, self.n_folds, self.horizon_)
        errors = []
        for train_end, test_start, test_end in splits:
            train = long_history[long_history[TS] <= train_end]
            test = long_history[(long_history[TS] >= test_start) & (long_history[TS] <= test_end)]
            actual = test[[SERVICE, TS, target]].rename(columns={target: "y"})
            for member, factory in self.members.items():
                model = factory()
                levels = self.quantiles
                if self.interval_members is not None and member not in self.interval_members:
                    levels = (0.5,)  # a point-only member
                if self.refit and hasattr(model, "quantiles"):
                    # Only the median is scored; the refit trains the other quantiles.
                    model.quantiles = levels = (0.5,)
                model = model.fit(train, target)
                forecast = model.predict(self.horizon_, levels)
                forecast["horizon_step"] = forecast.groupby(SERVICE).cumcount() + 1
                joined = forecast.merge(actual, on=[SERVICE, TS], how="inner")
                joined["abs_error"] = (joined["y"] - joined[quantile_column(0.5)]).abs()
                joined["bucket"] = self._bucket(joined["horizon_step"].to_numpy())
                joined["member"] = member
                joined["train_end"] = train_end
                errors.append(joined[[SERVICE, "member", "bucket", "train_end", "abs_error"]])
                if not self.refit:
                    self.fitted_[member] = model  # the latest fold's model
        self.backtest_ = (
            pd.concat(errors, ignore_index=True)
            .groupby([SERVICE, "member", "bucket"], as_index=False)["abs_error"]
            .mean()
            .rename(columns={"abs_error": "mae"})
        )
        self.weights_ = self.weights_from_backtest()
        if self.refit:
            for member, factory in self.members.items():
                self.fitted_[member] = factory().fit(long_history, target)
        else:
            self.history_ = long_history  # fold models forecast from the full history
        return self

    def leading_member(self, service: str) -> tuple[str, Forecaster] | None:
        """The fitted member with the most weight for ``service`` over the day (its last bucket).

        Args:
            service: A service the ensemble was fitted on.

        Returns:
            ``(member name, model)``, or ``None`` when the service is forecast by the seasonal
            naive fallback (a short history or the guard) or only the naive member has weight.
        """
        if service in self.guarded_services_ or self.weights_.empty:
            return None
        own = self.weights_[(self.weights_[SERVICE].astype(str) == service)]
        own = own[(own["bucket"] == own["bucket"].max()) & (own["member"] != NAIVE)]
        own = own[own["weight"] > 0].sort_values("weight", ascending=False, kind="stable")
        for member in own["member"]:
            if member in self.fitted_:
                return str(member), self.fitted_[member]
        return None

    def _check_weights(
        self, weights: Mapping[str, float | Sequence[float]], n_buckets: int
    ) -> dict[str, tuple[float, ...]]:
        """Fixed weights as ``member -> per-bucket weights`` normalised per bucket."""
        unknown = sorted(set(weights) - set(self.members))
        if unknown:
            raise ValueError(
                f"weights name unknown members {unknown}; members: {list(self.members)}"
            )
        table: dict[str, tuple[float, ...]] = {}
        for member, value in weights.items():
            values = (
                (float(value),) * n_buckets
                if isinstance(value, int | float)
                else tuple(float(v) for v in value)
            )
            if len(values) != n_buckets:
                raise ValueError(
                    f"weights of {member!r} need one value or {n_buckets} (one per horizon "
                    f"bucket), got {len(values)}"
                )
            if any(not np.isfinite(v) or v < 0 for v in values):
                raise ValueError(f"weights of {member!r} must be finite and >= 0, got {values}")
            table[member] = values
        totals = np.sum(list(table.values()), axis=0)
        if np.any(totals <= 0):
            raise ValueError(f"fixed weights sum to 0 in some horizon bucket: {weights}")
        return {
            member: tuple(float(v) for v in np.asarray(values) / totals)
            for member, values in table.items()
        }

    def _check_interval_members(self) -> None:
        """Interval members must be members (and listed in the weights when these are fixed)."""
        if self.interval_members is None:
            return
        if not self.interval_members:
            raise ValueError("interval_members must name at least one member (or be None)")
        unknown = sorted(set(self.interval_members) - set(self.members))
        if unknown:
            raise ValueError(f"interval_members names unknown members {unknown}")
        if self._fixed_weights is not None:
            missing = sorted(set(self.interval_members) - set(self._fixed_weights))
            if missing:
                raise ValueError(
                    f"interval_members {missing} are not in the fixed weights (give them a "
                    "weight, 0 for a member that only lends its spread)"
                )

    def weights_from_backtest(self) -> pd.DataFrame:
        """Member weights per service and horizon bucket from ``backtest_`` (see ``fit``).

        Per-service weights (:func:`weights_from_errors`) blended with the fleet's
        (:func:`fleet_weights`) by ``shrinkage``.
        """
        parts = []
        for bucket, group in self.backtest_.groupby("bucket"):
            own = weights_from_errors(group, self.max_ratio)
            if not self.shrinkage:
                parts.append(own.assign(bucket=bucket))
                continue
            fleet = fleet_weights(group, self.max_ratio).rename(columns={"weight": "fleet"})
            both = own.merge(fleet, on="member", how="left").fillna({"fleet": 0.0})
            both["weight"] = (1 - self.shrinkage) * both["weight"] + self.shrinkage * both["fleet"]
            parts.append(both[[SERVICE, "member", "weight"]].assign(bucket=bucket))
        return pd.concat(parts, ignore_index=True)

    def _bucket(self, horizon_steps: np.ndarray) -> np.ndarray:
        """Horizon bucket of each step: 0 up to the first edge, 1 up to the next, ..."""
        edges = [max(1, round(edge * self.horizon_)) for edge in self.bucket_edges]
        return np.searchsorted(np.asarray(edges), horizon_steps, side="left")

    def predict(
        self,
        horizon: int,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        history: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Weighted member forecasts per service and horizon bucket; naive for short histories."""
        if self.fallback_ is None:
            raise ValueError("EnsembleForecaster.predict called before fit")
        levels = check_quantiles(quantiles)
        columns = [quantile_column(q) for q in levels]
        long_services = set(self.weights_[SERVICE]) if not self.weights_.empty else set()
        long_services -= set(self.guarded_services_)
        parts = []
        if history is not None:
            services = set(history[SERVICE].astype(str))
            fresh_long = history[history[SERVICE].astype(str).isin(long_services)]
            fresh_short = history[~history[SERVICE].astype(str).isin(long_services)]
        else:  # every service fitted; those the members could not take get seasonal naive
            services = set(self.fallback_.history_[SERVICE].astype(str))
            fresh_long, fresh_short = self.history_, None
        if long_services & services and self.fitted_:
            combined = self._combine(horizon, levels, fresh_long)
            parts.append(combined[combined[SERVICE].isin(long_services)])
        short = sorted(services - long_services)
        if short:
            if fresh_short is not None and not fresh_short.empty:
                naive = self.fallback_.predict(horizon, levels, history=fresh_short)
            else:
                naive = self.fallback_.predict(horizon, levels)
            parts.append(naive[naive[SERVICE].isin(short)][[SERVICE, TS, *columns]])
        result = pd.concat(parts, ignore_index=True).sort_values([SERVICE, TS], kind="stable")
        result = result.reset_index(drop=True)
        result[TS] = result[TS].astype(self.fallback_.history_[TS].dtype)
        return finalize_quantiles(result, levels)

    def _combine(
        self, horizon: int, levels: tuple[float, ...], history: pd.DataFrame | None
    ) -> pd.DataFrame:
        """Weighted member forecasts of the long services (see ``interval_members``)."""
        columns = [quantile_column(q) for q in levels]
        median = quantile_column(0.5)
        spread_levels = [q for q in levels if q != 0.5]
        frames, interval_frames = [], []
        for member, model in self.fitted_.items():
            spread = self.interval_members is None or member in self.interval_members
            if self.interval_members is None:
                asked = levels
            else:
                asked = tuple(sorted(set(levels) | {0.5})) if spread else (0.5,)
            forecast = model.predict(horizon, asked, history=history)
            forecast["bucket"] = self._bucket((forecast.groupby(SERVICE).cumcount() + 1).to_numpy())
            weights = self.weights_[self.weights_["member"] == member]
            forecast = forecast.merge(
                weights[[SERVICE, "bucket", "weight"]], on=[SERVICE, "bucket"], how="inner"
            )
            frames.append(forecast)
            if spread:
                interval_frames.append(forecast)
        if self.interval_members is None:
            return self._pool(frames, columns)
        # Median from every member; the other quantiles as the interval members' spread around
        # their own medians, added to the combined median.
        out = self._pool(frames, [median])
        if spread_levels:
            spread_columns = [quantile_column(q) for q in spread_levels]
            interval = pd.concat(
                [f[[SERVICE, TS, "weight", median, *spread_columns]] for f in interval_frames]
            )
            total = interval.groupby([SERVICE, TS])["weight"].transform("sum")
            count = interval.groupby([SERVICE, TS])["weight"].transform("size")
            share = np.where(total > 0, interval["weight"] / total.where(total > 0, 1.0), 1 / count)
            for column in spread_columns:
                interval[column] = (interval[column] - interval[median]) * share
            spreads = interval.groupby([SERVICE, TS], as_index=False)[spread_columns].sum()
            out = out.merge(spreads, on=[SERVICE, TS], how="left")
            for column in spread_columns:
                out[column] = out[median] + out[column]
        return out[[SERVICE, TS, *columns]]

    def _pool(self, frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
        """Weighted mean or median (``combine``) of the members' ``columns`` per service and ts."""
        stacked = pd.concat(
            [f[[SERVICE, TS, "weight", *columns]].assign(member=i) for i, f in enumerate(frames)]
        )
        if self.combine == "mean":
            stacked[columns] = stacked[columns].mul(stacked["weight"], axis=0)
            return stacked.groupby([SERVICE, TS], as_index=False)[columns].sum()
        wide = stacked.pivot_table(
            index=[SERVICE, TS], columns="member", values=["weight", *columns], aggfunc="first"
        )
        weights = wide["weight"].fillna(0.0).to_numpy(dtype=float)
        out = wide.index.to_frame(index=False)
        for column in columns:
            out[column] = weighted_median(wide[column].to_numpy(dtype=float), weights)
        return out


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Row-wise weighted median: the value where the sorted members' weights reach half.

    When the cumulative weight is exactly one half at a member, the midpoint of that member and
    the next (so equal weights give the usual median, the mean of the middle two for an even
    count). Missing values (NaN) count with weight 0.

    Args:
        values: ``(rows, members)``.
        weights: ``(rows, members)``, non-negative, a positive sum in every row.

    Returns:
        One value per row.
    """
    weights = np.where(np.isnan(values), 0.0, weights)
    order = np.argsort(np.where(np.isnan(values), np.inf, values), axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    share = np.cumsum(np.take_along_axis(weights, order, axis=1), axis=1)
    share = share / share[:, -1:]
    low = np.argmax(share >= 0.5 - 1e-9, axis=1)[:, None]
    high = np.argmax(share > 0.5 + 1e-9, axis=1)[:, None]
    middle = np.take_along_axis(ordered, low, axis=1) + np.take_along_axis(ordered, high, axis=1)
    return 0.5 * middle[:, 0]


def weights_from_errors(errors: pd.DataFrame, max_ratio: float = 1.3) -> pd.DataFrame:
    """Per-service member weights from backtest MAEs.

    Members within ``max_ratio`` of the service's best MAE get weight ``1 / mae**2``,
    normalised to sum to 1; a perfect member takes all the weight.

    Args:
        errors: Rows ``service, member, mae``.
        max_ratio: Tolerance relative to the best member.

    Returns:
        Rows ``service, member, weight``.
    """
    records = []
    for service, group in errors.groupby(SERVICE, sort=True):
        mae_values = group["mae"].to_numpy(dtype=float)
        mae_values = np.where(np.isfinite(mae_values), mae_values, np.inf)
        best = mae_values.min()
        if best <= 0:
            raw = (mae_values <= 0).astype(float)
        else:
            raw = np.where(mae_values <= max_ratio * best, 1.0 / mae_values**2, 0.0)
        weights = raw / raw.sum()
        for member, weight in zip(group["member"], weights, strict=True):
            records.append({SERVICE: service, "member": member, "weight": float(weight)})
    return pd.DataFrame.from_records(records)


def fleet_weights(errors: pd.DataFrame, max_ratio: float = 1.3) -> pd.DataFrame:
    """Member weights of the whole fleet: each member's MAE relative to each service's best.

    A member's fleet error is the mean over services of ``mae / best mae of the service``
    (services whose best MAE is 0 are left out), so every service counts the same whatever its
    size; the weights then follow :func:`weights_from_errors`.

    Args:
        errors: Rows ``service, member, mae``.
        max_ratio: Tolerance relative to the best member.

    Returns:
        Rows ``member, weight`` (equal weights when no service has a positive best MAE).
    """
    table = errors.pivot_table(index=SERVICE, columns="member", values="mae", aggfunc="mean")
    best = table.min(axis=1)
    relative = table[best > 0].div(best[best > 0], axis=0)
    if relative.empty:
        members = list(table.columns)
        return pd.DataFrame({"member": members, "weight": 1.0 / len(members)})
    fleet = pd.DataFrame(
        {SERVICE: "fleet", "member": relative.columns, "mae": relative.mean().to_numpy()}
    )
    return weights_from_errors(fleet, max_ratio)[["member", "weight"]]
