"""Registry of model families by name: ``MODEL_FAMILIES["lightgbm"]`` is the class to build."""

from __future__ import annotations

from models.base import Forecaster
from models.naive import SeasonalNaiveForecaster

MODEL_FAMILIES: dict[str, type[Forecaster]] = {
    "naive": SeasonalNaiveForecaster,
}
