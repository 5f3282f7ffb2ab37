"""Scaling policy: forecast quantiles -> replicas per schedule step.

For every service and every forecast step the policy

1. picks the demand level ``q`` the service must absorb so that the chance of running short is
   at most ``config.risk``: ``q`` is the forecast quantile at probability ``1 - risk``
   (:func:`quantile_at`, see there how quantiles between or beyond the forecast columns are
   obtained), or, when the service's own recent forecast errors are known, ``p50 + k * (p90 -
   p50)`` with ``k`` the empirical ``1 - risk`` quantile of those errors per horizon step
   (:func:`tail_factors`: the risk as the service's record says, not as the model's tail shape
   says);
2. converts it to pods: ``ceil(q / (capacity_per_replica * target_utilization))``, clamped to
   ``[min_replicas, max_replicas]``;
3. scales up early: the replicas of a step are the largest need over the next
   ``startup_seconds`` (pods are requested one start-up time before they are needed), and at
   least the largest *median* need over the next ``startup_seconds + prewarm_minutes``: a surge
   in the forecast is pre-warmed ``prewarm_minutes`` ahead at its median level, reaching the risk
   quantile's level one start-up time ahead;
4. honours the surge limit: no two consecutive steps differ by more than
   ``max_surge_per_step`` pods upwards; a rise larger than that starts earlier instead of later;
5. scales down late and in steps: a lower need takes effect only after
   ``scale_down_delay_minutes`` and then removes at most ``SCALE_DOWN_FRACTION`` of the pods
   (at least one) per step;
6. never plans below the reactive floor when live metrics are given (``live_floor``).

With ``persistence`` (:class:`Persistence`), step 1's level is first blended with the last
observed load: ``last + w * (level - last)``, with ``w`` per horizon step the weight that
minimised the squared error of that blend on the service's own recent forecasts
(:func:`persistence_weights`, the Bates-Granger combination of the forecast with "the load stays
as it is", which is what the reactive autoscaler assumes). A forecast that does not beat
persistence gets ``w = 0`` and the schedule plans the current load, leaving surges to the HPA
beside it; a forecast that does gets its full say.

Every stage is a non-decreasing function of its input, so more forecast load (every quantile
raised, the upper ones at least as much as the median) never yields fewer replicas at any step
(tested in ``tests/test_policy.py``). A higher median under an unchanged p90 is a *narrower*
forecast and may plan fewer pods, with the normal tail as with tail factors above 1.

The schedule's ``replicas`` at ``ts`` are the pods to *request* at ``ts``. What the API serves at
time ``now`` is the most replicas planned over ``[now, now + lead]`` (:mod:`core.serving_rule`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from statistics import NormalDist
from typing import Protocol

import numpy as np
import pandas as pd

from core.schema import (
    REPLICAS,
    SERVICE,
    TS,
    normalize_ts,
    quantile_column,
    require_columns,
    utc_timestamp,
)

SCALE_DOWN_FRACTION = 0.2  # most pods removed per step once the scale-down delay has passed
SCHEDULE_COLUMNS: tuple[str, ...] = (
    SERVICE,
    TS,
    REPLICAS,
    "forecast_p50",
    "forecast_p90",
    "quantile_used",
    "planned_load",
    "tail_factor",
    "persistence_weight",
    "last_load",
)
TAIL_MIN_ERRORS = 50  # fewest past errors of one horizon step to use that step's own quantile
TAIL_MIN_TOTAL = 288  # fewest past errors to calibrate at all (2 h of 12-step forecasts)
TAIL_MAX_FACTOR = 10.0
"""Largest tail factor planned: ``p50 + 10 x (p90 - p50)``, about eight times the normal tail's
p95 distance. A guard against forecasts whose interval collapsed (p90 = p50, e.g. clipped at
zero load), whose errors are huge in units of that spread; it never binds in the replay (the
largest factor there is 9.6)."""
_EPSILON = 1e-9  # absorbs float noise in ceil(): 2.0000000001 pods is 2 pods
RECORD_HORIZON_STEPS = 12
"""Horizon steps of each forecast that enter its service's error record: the first hour, the
steps that decide what is served until the next publications. Later steps are planned on the
pooled tail and weight of these (:func:`tail_factors`, :func:`persistence_weights`)."""
RECORD_REFRESH_US = 3_600_000_000
"""The error record is refreshed on every whole UTC hour (:func:`record_refresh_us`)."""
LAST_LOAD_MAX_AGE_US = 86_400_000_000
"""A forecast's "last load" (for :func:`persistence_weights`) is the load of the latest step
that ended by its issue time and less than a day before it; NaN when there is none."""


@dataclass(frozen=True)
class Persistence:
    """The last observed load and the forecast's weight against it, per horizon step.

    Attributes:
        last: The service's load in the last complete step before the forecast's first step.
        weights: :func:`persistence_weights` per horizon step (the last one repeats).
    """

    last: float
    weights: np.ndarray


class ScalingSettings(Protocol):
    """What the policy reads from a service's configuration (``core.service_config``)."""

    capacity_per_replica: float
    target_utilization: float
    min_replicas: int
    max_replicas: int
    startup_seconds: int
    scale_down_delay_minutes: int
    max_surge_per_step: int
    risk: float
    prewarm_minutes: int


def forecast_quantiles(forecast: pd.DataFrame) -> dict[float, str]:
    """The quantile columns of a forecast frame, by probability.

    Args:
        forecast: A frame with columns such as ``p50``, ``p90``, ``p97.5``.

    Returns:
        Probability -> column name, sorted by probability.
    """
    found: dict[float, str] = {}
    for column in forecast.columns:
        if not (isinstance(column, str) and column.startswith("p")):
            continue
        try:
            level = float(column[1:]) / 100.0
        except ValueError:
            continue
        if 0.0 < level < 1.0 and quantile_column(level) == column:
            found[level] = column
    return dict(sorted(found.items()))


def quantile_at(forecast: pd.DataFrame, level: float) -> np.ndarray:
    """The forecast value at probability ``level`` for every row.

    An exact column is used when present. Between two columns the value is interpolated linearly
    in probability (``p80`` from ``p50`` and ``p90`` is ``p50 + 0.75 * (p90 - p50)``). Beyond the
    outermost columns it is extrapolated with a normal tail fitted to the two outermost columns
    (``p95`` from ``p50`` and ``p90`` is ``p50 + (p90 - p50) * z(0.95) / z(0.9)`` for
    ``p50``/``p90``), never below the nearest column. With one column, that column is used.

    Args:
        forecast: Forecast frame with at least one ``p..`` column.
        level: Probability in (0, 1).

    Returns:
        One value per row (float array).

    Raises:
        ValueError: If the frame has no quantile column.
    """
    columns = forecast_quantiles(forecast)
    if not columns:
        raise ValueError(
            f"forecast has no quantile column (p50, p90, ...); it has {list(forecast.columns)}"
        )
    return quantile_from_levels(
        {q: forecast[c].to_numpy(dtype=float) for q, c in columns.items()}, level
    )


def quantile_from_levels(values: Mapping[float, np.ndarray], level: float) -> np.ndarray:
    """:func:`quantile_at` on arrays: probability -> values per row, at least one level.

    Args:
        values: Quantile level -> forecast values (one array per level, same length).
        level: Probability in (0, 1).

    Returns:
        One value per row (float array), as :func:`quantile_at` explains.

    Raises:
        ValueError: If no level is given.
    """
    if not values:
        raise ValueError("no forecast quantile to read a level from")
    levels = sorted(values)
    level = next((q for q in levels if math.isclose(q, level, abs_tol=1e-9)), level)
    if level in values:
        return values[level]
    if len(levels) == 1:
        return values[levels[0]]
    if levels[0] < level < levels[-1]:
        upper = next(q for q in levels if q > level)
        lower = max(q for q in levels if q < level)
        weight = (level - lower) / (upper - lower)
        return values[lower] + weight * (values[upper] - values[lower])
    normal = NormalDist()
    low_q, high_q = (levels[-2], levels[-1]) if level > levels[-1] else (levels[0], levels[1])
    spread = (values[high_q] - values[low_q]) / (normal.inv_cdf(high_q) - normal.inv_cdf(low_q))
    extrapolated = values[high_q] + spread * (normal.inv_cdf(level) - normal.inv_cdf(high_q))
    if level > levels[-1]:
        return np.maximum(extrapolated, values[levels[-1]])
    return np.minimum(
        values[low_q] + spread * (normal.inv_cdf(level) - normal.inv_cdf(low_q)), values[levels[0]]
    )


def replicas_for_load(load: np.ndarray | float, config: ScalingSettings) -> np.ndarray:
    """Pods needed for a load at the target utilisation, clamped to the service's bounds.

    Args:
        load: Requests/s (array or scalar).
        config: Service settings.

    Returns:
        Integer array ``clip(ceil(load / (capacity * target_utilization)), min, max)``.
    """
    per_pod = config.capacity_per_replica * config.target_utilization
    raw = np.ceil(np.maximum(np.asarray(load, dtype=float), 0.0) / per_pod - _EPSILON)
    return np.clip(raw, config.min_replicas, config.max_replicas).astype(np.int64)


def _steps(duration: pd.Timedelta, step: pd.Timedelta) -> int:
    return math.ceil(duration / step - _EPSILON) if duration > pd.Timedelta(0) else 0


def _forward_window_max(values: np.ndarray, steps: int) -> np.ndarray:
    """``out[i] = max(values[i : i + steps + 1])`` (shorter at the end)."""
    out = values.copy()
    for shift in range(1, min(steps, len(values) - 1) + 1):
        out[:-shift] = np.maximum(out[:-shift], values[shift:])
    return out


def _backward_window_max(values: np.ndarray, steps: int) -> np.ndarray:
    """``out[i] = max(values[i - steps : i + 1])`` (shorter at the start)."""
    return _forward_window_max(values[::-1], steps)[::-1]


def _limit_surge(values: np.ndarray, max_surge: int) -> np.ndarray:
    """Raise earlier steps so that no step adds more than ``max_surge`` pods."""
    out = values.copy()
    for i in range(len(out) - 2, -1, -1):
        out[i] = max(out[i], out[i + 1] - max_surge)
    return out


def _step_down(values: np.ndarray) -> np.ndarray:
    """Remove at most ``SCALE_DOWN_FRACTION`` of the pods (at least one) per step."""
    out = values.copy()
    for i in range(1, len(out)):
        floor = out[i - 1] - max(1, math.ceil(out[i - 1] * SCALE_DOWN_FRACTION - _EPSILON))
        out[i] = max(out[i], floor)
    return out


def plan_service(
    load: np.ndarray,
    step: pd.Timedelta,
    config: ScalingSettings,
    live_floor: int | None = None,
    median: np.ndarray | None = None,
) -> np.ndarray:
    """Replicas per step for one service's load level (the quantile already chosen).

    Args:
        load: Requests/s to absorb at each step (the risk quantile), oldest first.
        step: Spacing of the steps.
        config: Service settings.
        live_floor: Pods needed by the live load now; raises the first step (and, through the
            scale-down delay, the steps after it).
        median: The median forecast per step, pre-warmed ``config.prewarm_minutes`` ahead of the
            start-up lead; ``load`` is used when omitted.

    Returns:
        Integer replicas per step.
    """
    need = replicas_for_load(load, config)
    if live_floor is not None and len(need):
        need[0] = max(need[0], min(int(live_floor), config.max_replicas))
    startup = pd.Timedelta(seconds=config.startup_seconds)
    prewarm_need = replicas_for_load(load if median is None else median, config)
    early = np.maximum(
        _forward_window_max(need, _steps(startup, step)),
        _forward_window_max(
            prewarm_need, _steps(startup + pd.Timedelta(minutes=config.prewarm_minutes), step)
        ),
    )
    limited = _limit_surge(early, config.max_surge_per_step)
    held = _backward_window_max(
        limited, _steps(pd.Timedelta(minutes=config.scale_down_delay_minutes), step)
    )
    return np.clip(_step_down(held), config.min_replicas, config.max_replicas)


def plan_quantiles(
    quantiles: Mapping[float, np.ndarray],
    step: pd.Timedelta,
    config: ScalingSettings,
    live_floor: int | None = None,
    tail: np.ndarray | None = None,
    persistence: Persistence | None = None,
) -> np.ndarray:
    """Replicas per step for one service's forecast quantiles (the core of :func:`plan_replicas`).

    Plans the ``1 - config.risk`` quantile (:func:`quantile_from_levels`), or with ``tail``
    ``p50 + tail * (p90 - p50)``, with :func:`plan_service`, pre-warming on the median.

    Args:
        quantiles: Quantile level -> forecast per step, oldest first, at a regular ``step``.
        step: Spacing of the steps.
        config: Service settings.
        live_floor: Pods needed by the live load now (see :func:`plan_service`).
        tail: Empirical tail factors per horizon step (:func:`tail_factors` at ``1 - risk``);
            the last one is repeated beyond its length. Needs the ``0.5`` and ``0.9`` levels.
        persistence: Blend the levels with the last observed load (module docstring).

    Returns:
        Integer replicas per step.

    Raises:
        ValueError: As :func:`risk_load` (a ``tail`` without the ``0.5`` and ``0.9`` levels,
            or empty, negative or not finite).
    """
    return _replicas_and_load(quantiles, step, config, live_floor, tail, persistence)[0]


def _replicas_and_load(
    quantiles: Mapping[float, np.ndarray],
    step: pd.Timedelta,
    config: ScalingSettings,
    live_floor: int | None,
    tail: np.ndarray | None,
    persistence: Persistence | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`plan_quantiles`'s replicas and the :func:`risk_load` they were sized on."""
    level = 1.0 - config.risk
    load = risk_load(quantiles, level, tail)
    median = quantile_from_levels(quantiles, 0.5) if level > 0.5 else load
    if persistence is not None:
        load = blend_with_persistence(load, persistence)
        median = blend_with_persistence(median, persistence)
    return plan_service(load, step, config, live_floor, median), load


def blend_with_persistence(values: np.ndarray, persistence: Persistence) -> np.ndarray:
    """``last + w * (values - last)`` per step (``w`` from ``persistence``, the last repeats).

    Args:
        values: A level per forecast step.
        persistence: The last observed load and the weights.

    Returns:
        The blended levels, never below 0.
    """
    values = np.asarray(values, dtype=float)
    weights = per_step(persistence.weights, len(values))
    return np.maximum(persistence.last + weights * (values - persistence.last), 0.0)


def persistence_weights(
    actual: np.ndarray,
    forecast: np.ndarray,
    last: np.ndarray,
    horizon_steps: np.ndarray,
    steps: int,
    min_errors: int = TAIL_MIN_ERRORS,
    min_total: int = TAIL_MIN_TOTAL,
) -> np.ndarray | None:
    """The forecast's weight against persistence per horizon step, from its own record.

    For each horizon step, ``w`` minimises the squared error of ``last + w * (forecast -
    last)`` over the past forecasts of that step (the Bates-Granger weight of two forecasts),
    clipped to [0, 1]: ``w = sum(e_p * (e_p - e_f)) / sum((e_p - e_f) ** 2)`` with ``e_f =
    actual - forecast`` and ``e_p = actual - last``. Steps with fewer than ``min_errors``
    records use the weight of all steps pooled; where forecast and persistence never differ,
    ``w = 1``.

    Args:
        actual: What happened at each past forecast step (NaN where unknown).
        forecast: The level that was planned on at that step (e.g. the p50).
        last: The load of the last complete step when that forecast was issued.
        horizon_steps: The horizon step of each record (1 = the first step ahead).
        steps: Horizon steps to return (1..steps).
        min_errors: Fewest records of a step to use its own weight.
        min_total: Fewest records in all to weigh at all.

    Returns:
        ``steps`` weights in [0, 1]; ``None`` when fewer than ``min_total`` records are known.

    Raises:
        ValueError: If the arrays differ in length.
    """
    arrays = [np.asarray(a, dtype=float) for a in (actual, forecast, last)]
    horizon_steps = np.asarray(horizon_steps)
    if any(a.shape != horizon_steps.shape for a in arrays):
        raise ValueError(
            "actual, forecast, last and horizon_steps differ in length: "
            f"{[a.shape for a in arrays]} and {horizon_steps.shape}"
        )
    actual_, forecast_, last_ = arrays
    known = np.isfinite(actual_) & np.isfinite(forecast_) & np.isfinite(last_)
    e_f = (actual_ - forecast_)[known]
    e_p = (actual_ - last_)[known]
    horizon_steps = horizon_steps[known]
    if e_f.size < max(min_total, 1):
        return None

    def weight(f: np.ndarray, p: np.ndarray) -> float:
        gap = p - f
        denominator = float(np.dot(gap, gap))
        if denominator <= 0.0:
            return 1.0
        return float(np.clip(np.dot(p, gap) / denominator, 0.0, 1.0))

    pooled = weight(e_f, e_p)
    weights = np.full(steps, pooled)
    for step_ahead in range(1, steps + 1):
        own = horizon_steps == step_ahead
        if int(own.sum()) >= min_errors:
            weights[step_ahead - 1] = weight(e_f[own], e_p[own])
    return weights


def risk_load(
    quantiles: Mapping[float, np.ndarray], level: float, tail: np.ndarray | None = None
) -> np.ndarray:
    """The load to plan for at probability ``level``: what :func:`plan_quantiles` sizes pods on.

    Args:
        quantiles: Quantile level -> forecast per step.
        level: Probability in (0, 1), ``1 - risk``.
        tail: Empirical tail factors per horizon step (:func:`tail_factors`); without them the
            forecast's own quantile at ``level`` (:func:`quantile_from_levels`).

    Returns:
        One load per step: the quantile, or ``p50 + tail * (p90 - p50)``.

    Raises:
        ValueError: If ``tail`` is given without the ``0.5`` and ``0.9`` levels, or is empty,
            negative or not finite.
    """
    if tail is None:
        return quantile_from_levels(quantiles, level)
    if 0.5 not in quantiles or 0.9 not in quantiles:
        raise ValueError(
            f"empirical tail factors need the p50 and p90 forecasts; got {sorted(quantiles)}"
        )
    factors = np.asarray(tail, dtype=float)
    bad = np.flatnonzero(~np.isfinite(factors) | (factors < 0))
    if factors.size == 0 or bad.size:
        raise ValueError(
            f"tail factors must be finite and at least 0 (one per horizon step); got "
            f"{factors.size} values, bad at steps {(bad + 1).tolist()[:5]}"
        )
    return empirical_quantile(quantiles[0.5], quantiles[0.9], factors)


def standardized_errors(actual: np.ndarray, p50: np.ndarray, p90: np.ndarray) -> np.ndarray:
    """Forecast errors in units of the forecast's own spread: ``(actual - p50) / (p90 - p50)``.

    A value of 1 is an actual at the p90. The spread is floored at a millionth of the median
    (and 1e-9), so a collapsed interval gives large but finite values.

    Args:
        actual: What happened, per forecast step (NaN where unknown).
        p50: The forecast median.
        p90: The forecast p90.

    Returns:
        One value per step (NaN where ``actual`` is).
    """
    p50 = np.asarray(p50, dtype=float)
    spread = np.maximum(np.asarray(p90, dtype=float) - p50, 1e-9 + 1e-6 * np.abs(p50))
    return (np.asarray(actual, dtype=float) - p50) / spread


def record_refresh_us(instant_us: int) -> int:
    """The error-record refresh a publication at ``instant_us`` plans on.

    The record a publication reads holds the errors of forecast steps that ended by the latest
    whole UTC hour at or before it and within ``schedule.tail_days`` of that hour; the product
    (:mod:`pipelines.forecast_record`) and the replay (:mod:`pipelines.walk_forward`) both
    call this.

    Args:
        instant_us: The publication, in microseconds since the epoch.

    Returns:
        The refresh instant, in microseconds since the epoch.
    """
    return instant_us // RECORD_REFRESH_US * RECORD_REFRESH_US


def in_record_window(step_ends_us: np.ndarray, refresh_us: int, days: float) -> np.ndarray:
    """Which rows of an error record a publication plans on.

    Args:
        step_ends_us: When each row's forecast step ended, in microseconds since the epoch.
        refresh_us: The publication's :func:`record_refresh_us`.
        days: ``schedule.tail_days``.

    Returns:
        A boolean mask: the steps that ended by the refresh and within ``days`` of it.
    """
    ends = np.asarray(step_ends_us, dtype=np.int64)
    return (ends <= refresh_us) & (ends > refresh_us - int(days * 86_400_000_000))


def tail_factors(
    errors: np.ndarray,
    horizon_steps: np.ndarray,
    level: float,
    steps: int,
    min_errors: int = TAIL_MIN_ERRORS,
    min_total: int = TAIL_MIN_TOTAL,
) -> np.ndarray | None:
    """The empirical ``level`` quantile of standardized errors per horizon step.

    Split conformal calibration of the forecast's upper tail on the service's own past: planning
    ``p50 + k * (p90 - p50)`` with these ``k`` is short on ``1 - level`` of the steps of that
    past. Horizon steps with fewer than ``min_errors`` errors use the quantile over all steps.

    Args:
        errors: :func:`standardized_errors` of past forecasts (NaNs are ignored).
        horizon_steps: The horizon step (1 = the first step ahead) of each error.
        level: Probability in (0, 1), ``1 - risk``.
        steps: Horizon steps to return (1..steps).
        min_errors: Fewest errors of a step to use its own quantile.
        min_total: Fewest errors in all to calibrate at all.

    Returns:
        ``steps`` factors in ``[0, TAIL_MAX_FACTOR]``; ``None`` when fewer than ``min_total``
        errors are known (too short a record: plan on the forecast's quantiles instead).

    Raises:
        ValueError: If ``level`` is outside (0, 1) or the arrays differ in length.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    errors = np.asarray(errors, dtype=float)
    horizon_steps = np.asarray(horizon_steps)
    if errors.shape != horizon_steps.shape:
        raise ValueError(
            f"errors ({errors.shape}) and horizon_steps ({horizon_steps.shape}) differ in length"
        )
    known = np.isfinite(errors)
    errors, horizon_steps = errors[known], horizon_steps[known]
    if errors.size < max(min_total, 1):
        return None
    pooled = float(np.quantile(errors, level))
    factors = np.full(steps, pooled)
    for step_ahead in range(1, steps + 1):
        own = errors[horizon_steps == step_ahead]
        if own.size >= min_errors:
            factors[step_ahead - 1] = float(np.quantile(own, level))
    return np.clip(factors, 0.0, TAIL_MAX_FACTOR)


def empirical_quantile(p50: np.ndarray, p90: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """``p50 + tail * (p90 - p50)`` per step, never below 0 (the last factor repeats)."""
    p50 = np.asarray(p50, dtype=float)
    spread = np.maximum(np.asarray(p90, dtype=float) - p50, 0.0)
    return np.maximum(p50 + per_step(tail, len(p50)) * spread, 0.0)


def per_step(factors: np.ndarray, steps: int) -> np.ndarray:
    """``factors`` stretched to ``steps`` values, the last one repeated (or cut)."""
    factors = np.asarray(factors, dtype=float)
    return factors[np.minimum(np.arange(steps), len(factors) - 1)]


def plan_replicas(
    forecast: pd.DataFrame,
    config: ScalingSettings | Mapping[str, ScalingSettings],
    now: datetime | pd.Timestamp | None = None,
    live_floor: int | Mapping[str, int] | None = None,
    tail: np.ndarray | Mapping[str, np.ndarray | None] | None = None,
    persistence: Persistence | Mapping[str, Persistence | None] | None = None,
) -> pd.DataFrame:
    """Turn forecast quantiles into a replica schedule.

    Args:
        forecast: ``service``, ``ts`` and quantile columns (``p50``, ``p90``, ...) at a regular
            step per service.
        config: One service configuration for every service, or a mapping service -> config.
        now: Drop the steps that end before this instant (the step holding ``now`` stays).
        live_floor: Pods the live load needs now (``reactive_floor``); one value for every
            service or a mapping service -> pods. The first planned step is never below it.
        tail: Empirical tail factors per horizon step (:func:`tail_factors`), for every service
            or a mapping service -> factors (``None`` or absent: the forecast's quantiles); the
            first factor is for the forecast's first step (before ``now`` drops any).
        persistence: The last observed load and the forecast's weights against it
            (:class:`Persistence`), for every service or a mapping service -> it (``None`` or
            absent: the forecast alone); its first weight is for the forecast's first step.

    Returns:
        ``service``, ``ts``, ``replicas`` (pods to request at ``ts``), ``forecast_p50``,
        ``forecast_p90`` (NaN when absent), ``quantile_used`` (the probability planned on,
        ``1 - risk``), ``planned_load`` (the load the pods are sized for, :func:`risk_load`) and
        ``tail_factor`` (the empirical tail factor used, NaN when planned on the forecast's
        quantiles), ``persistence_weight`` and ``last_load`` (the blend with persistence, NaN
        without one).

    Raises:
        ValueError: If a column is missing, a service has no config, a quantile is negative or
            not finite (naming the service and the rows), or timestamps repeat.
    """
    require_columns(forecast, (SERVICE, TS), "forecast")
    if not forecast_quantiles(forecast):
        raise ValueError(
            f"forecast has no quantile column (p50, p90, ...); it has {list(forecast.columns)}"
        )
    frame = forecast.copy()
    frame[TS] = normalize_ts(frame[TS]).array
    frame = frame.sort_values([SERVICE, TS], kind="stable").reset_index(drop=True)
    parts = []
    for service, group in frame.groupby(SERVICE, sort=True):
        service_config = _config_for(config, str(service))
        group = group.reset_index(drop=True)
        _check_forecast(group, str(service))
        step = _service_step(group, str(service), service_config)
        dropped = 0
        if now is not None:
            start = utc_timestamp(now)
            kept = group[TS] + step > start
            dropped = int((~kept).sum())
            group = group[kept].reset_index(drop=True)
            if group.empty:
                continue
        level = 1.0 - service_config.risk
        floor = live_floor.get(str(service)) if isinstance(live_floor, Mapping) else live_floor
        factors = tail.get(str(service)) if isinstance(tail, Mapping) else tail
        if factors is not None:
            factors = _from_step(factors, dropped)
        blend = persistence.get(str(service)) if isinstance(persistence, Mapping) else persistence
        if blend is not None:
            blend = Persistence(blend.last, _from_step(blend.weights, dropped))
        quantiles = {
            q: group[c].to_numpy(dtype=float) for q, c in forecast_quantiles(group).items()
        }
        replicas, load = _replicas_and_load(quantiles, step, service_config, floor, factors, blend)
        parts.append(
            pd.DataFrame(
                {
                    SERVICE: str(service),
                    TS: group[TS],
                    REPLICAS: replicas.astype(np.int64),
                    "forecast_p50": group["p50"].to_numpy(float) if "p50" in group else np.nan,
                    "forecast_p90": group["p90"].to_numpy(float) if "p90" in group else np.nan,
                    "quantile_used": level,
                    "planned_load": load,
                    "tail_factor": np.nan if factors is None else per_step(factors, len(group)),
                    "persistence_weight": (
                        np.nan if blend is None else per_step(blend.weights, len(group))
                    ),
                    "last_load": np.nan if blend is None else blend.last,
                }
            )
        )
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in SCHEDULE_COLUMNS})
    return pd.concat(parts, ignore_index=True)[list(SCHEDULE_COLUMNS)]


def _from_step(values: np.ndarray, dropped: int) -> np.ndarray:
    """Per-step values from the first step ``now`` keeps (the last one stays)."""
    values = np.asarray(values)
    return values[min(dropped, len(values) - 1) :] if dropped else values


def _config_for(
    config: ScalingSettings | Mapping[str, ScalingSettings], service: str
) -> ScalingSettings:
    if isinstance(config, Mapping):
        if service not in config:
            raise ValueError(f"no scaling configuration for service {service!r}")
        return config[service]
    return config


def _check_forecast(group: pd.DataFrame, service: str) -> None:
    for column in forecast_quantiles(group).values():
        values = group[column].to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
        if bad.size:
            raise ValueError(
                f"forecast for service {service!r}: column {column!r} is negative or not finite "
                f"in rows {bad[0]}..{bad[-1]} ({bad.size} rows)"
            )
    stamps = group[TS].to_numpy(dtype="datetime64[us]")
    repeated = np.flatnonzero(pd.Index(stamps).duplicated())
    if repeated.size:
        raise ValueError(
            f"forecast for service {service!r}: column 'ts' repeats in rows "
            f"{repeated[0]}..{repeated[-1]}"
        )


def _service_step(group: pd.DataFrame, service: str, config: ScalingSettings) -> pd.Timedelta:
    if len(group) < 2:
        return pd.Timedelta(minutes=5)
    diffs = np.diff(group[TS].to_numpy(dtype="datetime64[us]").astype(np.int64))
    values, counts = np.unique(diffs, return_counts=True)
    step_us = int(values[np.argmax(counts)])  # the most common spacing (the smallest on a tie)
    step = pd.Timedelta(microseconds=step_us)
    irregular = np.flatnonzero(diffs != step_us)
    if irregular.size:
        first = int(irregular[0]) + 1
        raise ValueError(
            f"forecast for service {service!r}: column 'ts' is not at a regular {step} step "
            f"(rows {first}..{int(irregular[-1]) + 1})"
        )
    return step


def reactive_floor(live_load: float, config: ScalingSettings) -> int:
    """Pods the live load needs right now at the target utilisation (the reactive floor).

    Args:
        live_load: Current requests/s of the service.
        config: Service settings.

    Returns:
        ``ceil(live_load / (capacity * target_utilization))`` clamped to the service's bounds.
    """
    return int(replicas_for_load(live_load, config))
