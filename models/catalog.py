"""Registry of model families by name: ``MODEL_FAMILIES["lightgbm"]`` is the class to build."""

from __future__ import annotations

from models.base import Forecaster
from models.ensemble import EnsembleForecaster
from models.holt_winters import DoubleSeasonalHoltWintersForecaster
from models.lgbm_model import LightGBMForecaster
from models.naive import SeasonalNaiveForecaster
from models.prophet_model import ProphetForecaster

MODEL_FAMILIES: dict[str, type[Forecaster]] = {
    SeasonalNaiveForecaster.name: SeasonalNaiveForecaster,
    ProphetForecaster.name: ProphetForecaster,
    LightGBMForecaster.name: LightGBMForecaster,
    EnsembleForecaster.name: EnsembleForecaster,
    DoubleSeasonalHoltWintersForecaster.name: DoubleSeasonalHoltWintersForecaster,
}
