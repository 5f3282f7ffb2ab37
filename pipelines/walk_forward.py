"""The shipped profile walked forward: what the product would have published and served.

At every 5-minute step of a period the walk does what production does: every
:data:`REFIT_MINUTES` the training stage's decision (:func:`pipelines.training.choose_families`
on the ``training.history_days`` before the instant, then the champion rule), every
:data:`PUBLISH_MINUTES` the champion forecasts from the complete steps of the
``HISTORY_DAYS_FOR_FORECAST`` days before the instant (:func:`rolling_forecasts`); each forecast
is planned with :func:`core.policy.plan_quantiles` (on the tail of the trace's error record, the
one the product keeps, when ``schedule.tail_days`` > 0) and served with :mod:`core.serving_rule`
(:func:`served_targets`). The walk forecasts the first hour of each schedule
(:data:`SCHEDULE_LOOKAHEAD_STEPS`): the value served until the next publication depends on no
later step unless a rise exceeds the surge limit times twelve steps.

One engine for the shadow scorecard (:mod:`pipelines.scorecard`, where nothing was published)
and the replay benchmark (``benchmarks/replay.py``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from core.policy import (
    LAST_LOAD_MAX_AGE_US,
    RECORD_HORIZON_STEPS,
    Persistence,
    forecast_quantiles,
    in_record_window,
    persistence_weights,
    plan_quantiles,
    record_refresh_us,
    standardized_errors,
    tail_factors,
)
from core.schema import SERVICE, TARGET, TS, epoch_us, quantile_column
from core.service_config import ServiceConfig
from core.serving_rule import clamp_replicas, fallback_replicas, planned_max_at

FORECAST_STEP = pd.Timedelta(minutes=5)
PUBLISH_MINUTES = 5  # schedule_publish runs every 5 minutes
REFIT_MINUTES = 7 * 24 * 60  # forecast_retrain's weekly schedule (drift retrains are not replayed)
SCHEDULE_LOOKAHEAD_STEPS = RECORD_HORIZON_STEPS  # the first hour: what the record keeps


def rolling_forecasts(
    frames: Mapping[str, pd.DataFrame],
    starts: Mapping[str, pd.Timestamp],
    spans: Mapping[str, int],
    training: Any,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """The forecasts the product would have published over the replayed period.

    For one shard of traces: every ``REFIT_MINUTES`` the training stage's decision
    (:func:`pipelines.training.choose_families` on the ``training.history_days`` before the
    instant, then the champion rule), every ``PUBLISH_MINUTES`` each trace's champion forecasts
    :data:`SCHEDULE_LOOKAHEAD_STEPS` steps from the complete steps of the
    ``HISTORY_DAYS_FOR_FORECAST`` days before the instant.

    Args:
        frames: Trace -> its step frame (:func:`step_frame`).
        starts: Trace -> first replayed minute.
        spans: Trace -> replayed minutes.
        training: The profile's ``TrainingConfig``.
        progress: Called with a line per training day.

    Returns:
        ``offset`` (minutes into the period), ``family``, ``service``, ``ts`` and the quantile
        columns of every published forecast.
    """
    from models.base import services_by_model
    from pipelines.publish import HISTORY_DAYS_FOR_FORECAST
    from pipelines.training import champion_backtest_error, choose_families, promotes

    champions: dict[str, tuple[str, Any]] = {}
    parts: list[pd.DataFrame] = []
    for offset in range(0, max(spans.values(), default=0), PUBLISH_MINUTES):
        origins = {
            name: start + pd.Timedelta(minutes=offset)
            for name, start in starts.items()
            if offset < spans[name]
        }
        active = {name: frames[name] for name in origins}
        if offset % REFIT_MINUTES == 0:
            history = history_before(active, origins, training.history_days)
            choice = choose_families(history, training)
            for name in origins:
                if name in choice.cold:
                    continue
                family = str(choice.best_family[name])
                error = float(choice.errors.loc[name, family])
                current = champions.get(name)
                champion_error = None
                if current is not None:
                    try:
                        champion_error = champion_backtest_error(
                            current[1], history[history[SERVICE] == name], training
                        )
                    except ValueError:
                        champion_error = math.inf
                if promotes(error, champion_error):
                    champions[name] = (family, choice.fitted[family])
            if progress:
                progress(
                    f"  retrain {offset // REFIT_MINUTES + 1}: champions {_families(champions)}"
                )
        recent = history_before(active, origins, HISTORY_DAYS_FOR_FORECAST)
        serving = {  # cold starts (no champion) are served the reactive floor
            name: champions[name][1] for name in origins if name in champions
        }
        for model, names in services_by_model(serving):
            family = champions[names[0]][0]
            predicted = model.predict(
                SCHEDULE_LOOKAHEAD_STEPS,
                quantiles=training.quantiles,
                history=recent[recent[SERVICE].isin(names)],
            )
            parts.append(predicted.assign(offset=offset, family=family))
    if not parts:
        return pd.DataFrame(
            columns=[
                "offset",
                "family",
                SERVICE,
                TS,
                *(quantile_column(q) for q in training.quantiles),
            ]
        )
    return pd.concat(parts, ignore_index=True)


def _families(champions: Mapping[str, tuple[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for family, _ in champions.values():
        counts[family] = counts.get(family, 0) + 1
    return counts


def history_before(
    frames: Mapping[str, pd.DataFrame], origins: Mapping[str, pd.Timestamp], days: float
) -> pd.DataFrame:
    """The complete steps of each trace within ``days`` before its origin."""
    return pd.concat(
        [
            f[
                (f[TS] + FORECAST_STEP <= origins[n])
                & (f[TS] >= origins[n] - pd.Timedelta(days=days))
            ]
            for n, f in frames.items()
        ],
        ignore_index=True,
    )


def served_targets(
    forecasts: pd.DataFrame,
    start: pd.Timestamp,
    span: int,
    config: ServiceConfig,
    tail_days: float,
    actuals: pd.DataFrame | None,
    blend: bool = False,
) -> np.ndarray:
    """The value the API serves at every minute of one trace's replayed period.

    Each published forecast is planned (:func:`core.policy.plan_quantiles`, on the tail of the
    trace's error record when ``tail_days`` > 0) and served until the next publication with
    :func:`core.serving_rule.planned_max_at`; a minute no schedule covers gets
    :func:`core.serving_rule.fallback_replicas` (no floor is written in production).

    Args:
        forecasts: This trace's rows of :func:`rolling_forecasts`.
        start: The period's first minute.
        span: Its minutes.
        config: The service settings (the profile's, with the cluster model's capacity, bounds
            and start-up delay).
        tail_days: ``schedule.tail_days``.
        actuals: The trace's step frame (for the tail of its errors).
        blend: ``schedule.blend_with_persistence``: blend each plan with the last complete
            step's load (:class:`core.policy.Persistence`, weights from the same record as
            the tail).

    Returns:
        Replicas served per minute.
    """
    served = np.full(span, -1, dtype=np.int64)
    start_us = epoch_us(start)
    lead_us = int(config.startup_seconds * 1_000_000)
    step_us = int(FORECAST_STEP / pd.Timedelta(microseconds=1))
    tails = (
        _tail_factor_sources(forecasts, actuals) if tail_days > 0 and actuals is not None else {}
    )
    tail_source = next(iter(tails.values()), None)
    blends = (
        _persistence_sources(forecasts, actuals, start)
        if blend and tail_days > 0 and actuals is not None
        else {}
    )
    blend_source = next(iter(blends.values()), None)
    ordered = forecasts.sort_values(["offset", TS], kind="stable")
    offsets = ordered["offset"].to_numpy(dtype=np.int64)
    all_stamps = ordered[TS].to_numpy(dtype="datetime64[us]").astype(np.int64)
    all_quantiles = {
        q: ordered[c].to_numpy(dtype=float) for q, c in forecast_quantiles(ordered).items()
    }
    firsts = np.flatnonzero(np.r_[True, offsets[1:] != offsets[:-1]]) if len(offsets) else []
    bounds = np.r_[firsts, len(offsets)].astype(np.int64)
    for first, last in itertools.pairwise(bounds):
        offset = int(offsets[first])
        if offset >= span:
            continue
        stamps_us = all_stamps[first:last]
        quantiles = {q: values[first:last] for q, values in all_quantiles.items()}
        tail = None
        if tail_source is not None:
            refreshed = record_refresh_us(start_us + offset * 60_000_000)
            tail = tail_source(refreshed, tail_days, 1.0 - config.risk, len(stamps_us))
        persistence = None
        if blend_source is not None:
            persistence = blend_source(offset, tail_days, len(stamps_us))
        replicas = plan_quantiles(
            quantiles, FORECAST_STEP, config, tail=tail, persistence=persistence
        )
        minutes = np.arange(offset, min(offset + PUBLISH_MINUTES, span))
        instants = start_us + minutes.astype(np.int64) * 60_000_000
        served[minutes] = planned_max_at(stamps_us, replicas, step_us, instants, lead_us)
    fallback = fallback_replicas(None, config.min_replicas, config.max_replicas)
    served = np.where(served < 0, fallback, served)
    return np.array(
        [clamp_replicas(v, config.min_replicas, config.max_replicas) for v in served],
        dtype=np.int64,
    )


def _tail_factor_sources(
    forecasts: pd.DataFrame, actuals: pd.DataFrame
) -> dict[str, Callable[[int, float, float, int], np.ndarray | None]]:
    """Per trace, its tail factors as known at an instant.

    ``forecasts`` are :func:`rolling_forecasts` rows of one trace, ``actuals`` its step frame.
    Each is a function ``(instant in µs, days, level, steps) -> factors or None``
    (:func:`core.policy.tail_factors`) that uses only the errors of forecast steps that
    ended at or before the instant and within ``days`` of it, memoised per argument set.
    """
    rows = _numbered(forecasts)
    sources: dict[str, Callable[[int, float, float, int], np.ndarray | None]] = {}
    for name, own in rows.groupby(SERVICE, sort=False):
        stamps = own[TS].to_numpy(dtype="datetime64[us]").astype(np.int64)
        actual = actuals
        observed = pd.Series(
            actual[TARGET].to_numpy(float),
            index=actual[TS].to_numpy(dtype="datetime64[us]").astype(np.int64),
        )
        errors = standardized_errors(
            observed.reindex(stamps).to_numpy(), own["p50"].to_numpy(), own["p90"].to_numpy()
        )
        ends = stamps + int(FORECAST_STEP / pd.Timedelta(microseconds=1))
        sources[str(name)] = _memoised_tail(errors, own["horizon_step"].to_numpy(), ends)
    return sources


def _persistence_sources(
    forecasts: pd.DataFrame, actuals: pd.DataFrame, start: pd.Timestamp
) -> dict[str, Callable[[int, float, int], Persistence | None]]:
    """Per trace, :class:`core.policy.Persistence` as known at a publication.

    Each is a function ``(offset in minutes, days, steps) -> Persistence or None``: the load of
    the last step that ended by the publication, and :func:`core.policy.persistence_weights` of
    the record as the tail factors read it (steps that ended by the publication's
    :func:`core.policy.record_refresh_us`, within ``days``); ``None`` while no step or too short
    a record is known.
    """
    rows = _numbered(forecasts)
    step_us = int(FORECAST_STEP / pd.Timedelta(microseconds=1))
    observed = pd.Series(
        actuals[TARGET].to_numpy(float),
        index=actuals[TS].to_numpy(dtype="datetime64[us]").astype(np.int64),
    )
    step_ends = observed.index.to_numpy() + step_us
    start_us = epoch_us(start)

    def last_by(instant: int) -> float:
        """The load of the latest step that ended by ``instant`` (NaN if none within a day)."""
        position = int(np.searchsorted(step_ends, instant, side="right")) - 1
        if position < 0 or step_ends[position] <= instant - LAST_LOAD_MAX_AGE_US:
            return math.nan
        return float(observed.iloc[position])

    sources: dict[str, Callable[[int, float, int], Persistence | None]] = {}
    for name, own in rows.groupby(SERVICE, sort=False):
        stamps = own[TS].to_numpy(dtype="datetime64[us]").astype(np.int64)
        issued = start_us + own["offset"].to_numpy(dtype=np.int64) * 60_000_000
        actual = observed.reindex(stamps).to_numpy()
        instants = np.unique(issued)
        last_at_issue = np.array([last_by(int(i)) for i in instants])
        last = last_at_issue[np.searchsorted(instants, issued)]
        ends = stamps + step_us
        horizon = own["horizon_step"].to_numpy()
        p50 = own["p50"].to_numpy(float)
        memo: dict[tuple[int, float, int], np.ndarray | None] = {}

        def source(
            offset: int,
            days: float,
            steps: int,
            *,
            actual: np.ndarray = actual,
            p50: np.ndarray = p50,
            last: np.ndarray = last,
            ends: np.ndarray = ends,
            horizon: np.ndarray = horizon,
            memo: dict[tuple[int, float, int], np.ndarray | None] = memo,
        ) -> Persistence | None:
            instant = start_us + offset * 60_000_000
            refreshed = record_refresh_us(instant)
            key = (refreshed, days, steps)
            if key not in memo:
                usable = in_record_window(ends, refreshed, days)
                memo[key] = persistence_weights(
                    actual[usable], p50[usable], last[usable], horizon[usable], steps
                )
            weights, now = memo[key], last_by(instant)
            if weights is None or not math.isfinite(now):
                return None
            return Persistence(now, weights)

        sources[str(name)] = source
    return sources


def _numbered(forecasts: pd.DataFrame) -> pd.DataFrame:
    """The forecast rows that enter the error record (horizon steps up to
    :data:`core.policy.RECORD_HORIZON_STEPS`), by publication, trace and time, with their
    ``horizon_step``."""
    rows = forecasts.sort_values(["offset", SERVICE, TS], kind="stable")
    rows = rows.assign(horizon_step=rows.groupby(["offset", SERVICE]).cumcount() + 1)
    return rows[rows["horizon_step"] <= RECORD_HORIZON_STEPS]


def _memoised_tail(
    errors: np.ndarray, horizon: np.ndarray, ends: np.ndarray
) -> Callable[[int, float, float, int], np.ndarray | None]:
    """:func:`core.policy.tail_factors` of the errors whose steps ended by an instant."""
    memo: dict[tuple[int, float, float, int], np.ndarray | None] = {}

    def factors(instant: int, days: float, level: float, steps: int) -> np.ndarray | None:
        key = (instant, days, round(level, 9), steps)
        if key not in memo:
            usable = in_record_window(ends, instant, days)
            memo[key] = tail_factors(errors[usable], horizon[usable], level, steps)
        return memo[key]

    return factors
