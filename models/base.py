"""The forecaster interface every model family implements.

A forecaster is fitted on long-format history (``service``, ``ts``, target column) at a regular
step, and predicts the next ``horizon`` steps for every service as quantiles:

    >>> model = SomeForecaster().fit(history)                       # doctest: +SKIP
    >>> forecast = model.predict(horizon=288, quantiles=(0.5, 0.9))  # doctest: +SKIP
    >>> list(forecast.columns)                                       # doctest: +SKIP
    ['service', 'ts', 'p50', 'p90']

``predict`` may be given newer history than ``fit`` saw (e.g. the last day of telemetry) so a
model fitted weekly can forecast from fresh data without refitting; models that cannot use it
ignore it. Quantile columns are monotone (``p50 <= p90``) and non-negative.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Self

import pandas as pd

from core.schema import SERVICE, TARGET, TS
from models.persistence import load_object, save_object

DEFAULT_QUANTILES: tuple[float, ...] = (0.5, 0.9)


class Forecaster(abc.ABC):
    """Base class of all forecasters (Prophet, LightGBM, seasonal naive, ensembles).

    Attributes:
        name: Short identifier of the model family, used in MLflow and reports.
    """

    name: ClassVar[str] = "base"

    @abc.abstractmethod
    def fit(self, history: pd.DataFrame, target: str = TARGET) -> Forecaster:
        """Fit on long-format history.

        Args:
            history: Rows of (``service``, ``ts``, ``target``) at a regular step.
            target: The column to forecast.

        Returns:
            ``self``, fitted.

        Raises:
            ValueError: If the frame lacks the columns or has no rows.
        """

    @abc.abstractmethod
    def predict(
        self,
        horizon: int,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        history: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Forecast ``horizon`` steps after the end of each service's history.

        Args:
            horizon: Number of steps to forecast.
            quantiles: Probabilities to return, each as a ``p<100*q>`` column.
            history: Optional newer history to forecast from; defaults to the fit history.

        Returns:
            A frame with ``service``, ``ts`` and one column per quantile.
        """

    def save(self, path: Path) -> None:
        """Write the fitted model to a directory (a pickle plus a manifest naming the family)."""
        save_object(self, path, self.name)

    @classmethod
    def load(cls, path: Path) -> Self:
        """Read a model written by :meth:`save`, checking it is an instance of this class.

        Raises:
            ValueError: If the directory holds no model or a model of another class.
        """
        return load_object(path, cls)


def infer_step(history: pd.DataFrame) -> pd.Timedelta:
    """The most common spacing of ``ts`` within services.

    Args:
        history: Long-format frame with ``service`` and ``ts``.

    Returns:
        The step as a Timedelta.

    Raises:
        ValueError: If no service has two or more rows.
    """
    diffs = history.sort_values([SERVICE, TS]).groupby(SERVICE)[TS].diff().dropna()
    if diffs.empty:
        raise ValueError("cannot infer the time step: no service has two or more rows")
    return pd.Timedelta(diffs.mode().iloc[0])


def services_by_model(models: Mapping[str, Forecaster]) -> list[tuple[Forecaster, list[str]]]:
    """Services grouped by the forecaster object they share (a shard's global model), in the
    order first seen: the services one ``predict`` call can forecast together.

    Args:
        models: Service -> its loaded forecaster.

    Returns:
        ``(forecaster, services)`` pairs.
    """
    groups: dict[int, tuple[Forecaster, list[str]]] = {}
    for service, model in models.items():
        groups.setdefault(id(model), (model, []))[1].append(service)
    return list(groups.values())
