"""Per-service weighted combination of forecasters, chosen by a rolling-origin backtest.

At fit time every member is backtested on the training history only (``n_folds`` origins, each
``backtest_horizon`` steps, see :mod:`models.backtest`); each service then weights its members by
inverse squared MAE (members much worse than the service's best get weight 0), so a service
whose pattern LightGBM captures uses LightGBM, a noisy one leans on the seasonal naive, and so
on. Services with fewer than ``min_seasons`` seasons of history (new services) fall back to the
seasonal naive forecaster instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from models.backtest import backtest_forecasts
from models.base import DEFAULT_QUANTILES, Forecaster, infer_step
from models.features import check_quantiles, finalize_quantiles, season_steps_for
from models.naive import SeasonalNaiveForecaster
from models.persistence import load_object, save_object
from pipelines.schema import SERVICE, TARGET, TS, quantile_column

NAIVE = "naive"


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
            backtest-fold models are kept and forecast from the fresh history (faster).
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
    ) -> None:
        chosen = dict(members) if members is not None else default_members()
        chosen.setdefault(NAIVE, SeasonalNaiveForecaster)
        self.members = chosen
        self.n_folds = n_folds
        self.backtest_horizon = backtest_horizon
        self.min_seasons = min_seasons
        self.max_ratio = max_ratio
        self.quantiles = check_quantiles(quantiles)
        self.refit = refit
        self.target_: str = TARGET
        self.fitted_: dict[str, Forecaster] = {}
        self.fallback_: SeasonalNaiveForecaster | None = None
        self.weights_: pd.DataFrame = pd.DataFrame()
        self.backtest_: pd.DataFrame = pd.DataFrame()
        self.short_services_: list[str] = []

    def fit(self, history: pd.DataFrame, target: str = TARGET) -> EnsembleForecaster:
        """Backtest the members on ``history``, weight them per service, and fit them.

        Args:
            history: Long frame ``service, ts, target``.
            target: Column to forecast.

        Returns:
            ``self``.
        """
        self.target_ = target
        step = infer_step(history) if len(history) > 1 else pd.Timedelta(hours=1)
        season = season_steps_for(step)
        horizon = self.backtest_horizon or season
        self.fallback_ = SeasonalNaiveForecaster().fit(history, target)
        counts = history.groupby(SERVICE)[TS].nunique()
        needed = max(self.min_seasons * season, 2 * season + self.n_folds * horizon)
        long_services = sorted(str(s) for s in counts[counts >= needed].index)
        self.short_services_ = sorted(str(s) for s in counts.index if str(s) not in long_services)
        self.fitted_ = {}
        if not long_services:
            self.weights_ = pd.DataFrame(columns=[SERVICE, "member", "weight"])
            return self
        long_history = history[history[SERVICE].astype(str).isin(long_services)]
        errors = []
        for member, factory in self.members.items():
            forecasts = backtest_forecasts(
                factory, long_history, self.n_folds, horizon, target=target,
                quantiles=self.quantiles,
            )
            per_service = (
                forecasts.assign(abs_error=(forecasts["y"] - forecasts["p50"]).abs())
                .groupby(SERVICE)["abs_error"]
                .mean()
                .rename("mae")
                .reset_index()
            )
            per_service["member"] = member
            errors.append(per_service)
        self.backtest_ = pd.concat(errors, ignore_index=True)
        self.weights_ = weights_from_errors(self.backtest_, self.max_ratio)
        for member, factory in self.members.items():
            self.fitted_[member] = factory().fit(long_history, target)
        return self

    def predict(
        self,
        horizon: int,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        history: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Weighted member forecasts per service; naive fallback for short histories."""
        if self.fallback_ is None:
            raise ValueError("EnsembleForecaster.predict called before fit")
        levels = check_quantiles(quantiles)
        columns = [quantile_column(q) for q in levels]
        long_services = set(self.weights_[SERVICE]) if not self.weights_.empty else set()
        parts = []
        if history is not None:
            services = set(history[SERVICE].astype(str))
            fresh_long = history[history[SERVICE].astype(str).isin(long_services)]
            fresh_short = history[~history[SERVICE].astype(str).isin(long_services)]
        else:
            services = long_services | set(self.short_services_)
            fresh_long = fresh_short = None
        if long_services & services:
            combined = None
            for member, model in self.fitted_.items():
                forecast = model.predict(horizon, levels, history=fresh_long)
                weighted = forecast.merge(
                    self.weights_[self.weights_["member"] == member][[SERVICE, "weight"]],
                    on=SERVICE,
                    how="inner",
                )
                weighted[columns] = weighted[columns].mul(weighted["weight"], axis=0)
                weighted = weighted[[SERVICE, TS, *columns]]
                combined = (
                    weighted
                    if combined is None
                    else pd.concat([combined, weighted]).groupby([SERVICE, TS], as_index=False).sum()
                )
            if combined is not None:
                parts.append(combined)
        short = sorted(services - long_services)
        if short:
            if fresh_short is not None and not fresh_short.empty:
                naive = self.fallback_.predict(horizon, levels, history=fresh_short)
            else:
                naive = self.fallback_.predict(horizon, levels)
            parts.append(naive[naive[SERVICE].isin(short)][[SERVICE, TS, *columns]])
        result = pd.concat(parts, ignore_index=True).sort_values([SERVICE, TS], kind="stable")
        return finalize_quantiles(result.reset_index(drop=True), levels)

    def save(self, path: Path) -> None:
        """Pickle the ensemble (members included) into ``path``."""
        save_object(self, path, self.name)

    @classmethod
    def load(cls, path: Path) -> EnsembleForecaster:
        """Load an ensemble written by :meth:`save`."""
        return load_object(path, cls)


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
