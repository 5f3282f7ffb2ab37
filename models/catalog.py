"""Registry of model families by name, and the one way to build a configured forecaster.

``MODEL_FAMILIES["lightgbm"]`` is the class of a family; :func:`family_factories` turns the
``training`` section of a params file (``models`` and ``model_params``) into a constructor per
family, the way training and the benchmarks build them. An ensemble's members are configured the
same way, by family and settings::

    model_params:
      ensemble:
        combine: median
        members:
          lightgbm: {family: lightgbm, max_horizon: 1h}
          naive: naive
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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

FAMILY_KEY = "family"


def forecaster_factory(
    family: str,
    params: Mapping[str, Any] | None = None,
    quantiles: Sequence[float] | None = None,
    where: str = "training.model_params",
) -> Callable[[], Forecaster]:
    """A constructor of ``family`` with ``params`` (an ensemble's members built the same way).

    The factory is a ``functools.partial`` (picklable); the settings are checked once here by
    building a forecaster, so a bad setting fails when the params are read, not mid-training.

    Args:
        family: A key of :data:`MODEL_FAMILIES`.
        params: Constructor arguments; for ``ensemble``, ``members`` maps a member name to a
            family name or to ``{family: NAME, <constructor arguments>}``.
        quantiles: Quantile levels given to families that take them, unless ``params`` sets
            them (ensemble members inherit them the same way).
        where: Where the settings come from, for error messages.

    Returns:
        A callable building an unfitted forecaster.

    Raises:
        ValueError: For an unknown family or member family, a nested ensemble, a setting the
            family does not take, or a value it refuses.
    """
    if family not in MODEL_FAMILIES:
        raise ValueError(
            f"{where}: unknown model family {family!r}; known: {sorted(MODEL_FAMILIES)}"
        )
    cls = MODEL_FAMILIES[family]
    kwargs = dict(params or {})
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"{where}.{family}: {cls.__name__} takes no setting(s) {unknown}")
    if quantiles is not None and "quantiles" in accepted:
        kwargs.setdefault("quantiles", tuple(float(q) for q in quantiles))
    if "quantiles" in kwargs:
        kwargs["quantiles"] = tuple(float(q) for q in kwargs["quantiles"])
    if cls is EnsembleForecaster and kwargs.get("members") is not None:
        kwargs["members"] = _member_factories(kwargs["members"], quantiles, f"{where}.{family}")
    factory = functools.partial(cls, **kwargs)
    try:
        factory()
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}.{family}: {err}") from err
    return factory


def _member_factories(
    members: Any, quantiles: Sequence[float] | None, where: str
) -> dict[str, Callable[[], Forecaster]]:
    """Ensemble members (name -> family name or ``{family, settings}``) as factories."""
    if not isinstance(members, Mapping) or not members:
        raise ValueError(f"{where}.members must map member names to families, got {members!r}")
    out: dict[str, Callable[[], Forecaster]] = {}
    for name, spec in members.items():
        if isinstance(spec, str):
            family, settings = spec, {}
        elif isinstance(spec, Mapping) and isinstance(spec.get(FAMILY_KEY), str):
            family = spec[FAMILY_KEY]
            settings = {k: v for k, v in spec.items() if k != FAMILY_KEY}
        else:
            raise ValueError(  # noqa: TRY004 - a bad params file is bad input
                f"{where}.members.{name}: need a family name or {{family: NAME, ...}}, got {spec!r}"
            )
        if family == EnsembleForecaster.name:
            raise ValueError(f"{where}.members.{name}: an ensemble cannot be a member")
        out[str(name)] = forecaster_factory(family, settings, quantiles, f"{where}.members")
    return out


def family_factories(
    training: Mapping[str, Any], where: str = "training"
) -> dict[str, Callable[[], Forecaster]]:
    """One constructor per family of a params file's ``training`` section, in its order.

    Args:
        training: The section: ``models`` (family names), ``model_params`` (settings per
            family) and ``quantiles``.
        where: Where the section comes from, for error messages.

    Returns:
        ``{family: factory}``.

    Raises:
        ValueError: For an unknown family, settings of a family not in ``models``, or a bad
            setting (see :func:`forecaster_factory`).
    """
    families = list(training.get("models") or [])
    if not families or not all(isinstance(f, str) for f in families):
        raise ValueError(f"{where}.models must list model families, got {families!r}")
    unknown = [f for f in families if f not in MODEL_FAMILIES]
    if unknown:
        raise ValueError(
            f"{where}.models names unknown families {unknown}; known: {sorted(MODEL_FAMILIES)}"
        )
    model_params = training.get("model_params") or {}
    if not isinstance(model_params, Mapping):
        raise ValueError(  # noqa: TRY004 - a bad params file is bad input
            f"{where}.model_params must be a mapping, got {model_params!r}"
        )
    quantiles = tuple(float(q) for q in training.get("quantiles", (0.5, 0.9)))
    return {
        family: forecaster_factory(
            family, model_params.get(family) or {}, quantiles, f"{where}.model_params"
        )
        for family in families
    }
