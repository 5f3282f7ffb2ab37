"""`forescale bench replay`: replay load traces against scaling policies on a cluster model.

A benchmark, not a test. Each trace is replayed minute by minute over its last week; everything
before that week is history (training data for the forecasters, warm-up for Holt-Winters).

Cluster model (identical for every policy):

* time advances in 15 s ticks (the HPA sync period); the demand of a minute holds for its four
  ticks;
* a policy sets the desired replica count; new pods serve only after the start-up delay
  (reported at 2 and at 5 minutes); removed pods go at once, pods still starting first;
* a minute is *under-provisioned* when its demand exceeds ``ready pods x capacity`` at any of its
  ticks;
* cost is pod-minutes of every pod that exists (starting or ready), reported as pod-hours;
* a *scaling action* is a tick at which the desired replica count changes;
* capacity per replica is set per trace so that the window's peak minute needs exactly 30 pods at
  100 % utilisation, the same for every policy.

Policies, all in the same run on the same trace:

* ``hpa``: the Kubernetes HPA (:mod:`benchmarks.hpa`, 70 % target, metric one minute old);
* ``holt_winters``: the Holt-Winters predictive HPA of jthomperoo/predictive-horizontal-pod-
  autoscaler (the HPA's replica evaluations are stored every interval, Holt-Winters predicts the
  next one, the decision is ``max(hpa, prediction)``; interval 1 minute, season 1 day, warmed up
  on the 4 days before the window);
* ``static_peak``: 30 pods all the time (the window's peak at 100 %);
* ``oracle``: knows the future; requests exactly the pods the next start-up delay's minutes need
  at 100 % (the lower bound);
* ``forescale*``: the pipeline's forecaster (LightGBM by default) refitted every day of the window
  on the 28 days before it, re-forecasting every few minutes from the complete 5-minute bins
  before that instant (no later data; :class:`ForecastSpec`: the headline forecasts the busiest
  minute of each 5-minute step every 5 minutes); :func:`core.policy.plan_quantiles` (the
  core of :func:`core.policy.plan_replicas`) plans each forecast, the value served at each
  minute is the most planned over ``[now, now + start-up delay]`` (as
  :func:`core.policy.served_value`), raised to the reactive floor of the live load (seen one
  minute late, held 5 minutes), as the API serves it. KEDA drives the pods through an HPA with
  the ScaledObject's ``behavior`` and its ``cpu`` trigger (:data:`KEDA_BEHAVIOR`,
  :data:`KEDA_CPU_TARGET`, the same as ``serving/deploy/scaledobject.yaml``). See
  :data:`FORESCALE_VARIANTS` for the variants.

Blind development: ``shift_weeks`` (``--shift-weeks``) drops the last weeks of every trace before
anything else, so that with 1 the replayed window is the penultimate week and the calibration week
the one before it; a trace then too short (NAB ELB: 14 days, Crane input0: 8 days) is left out
and listed. Settings are developed on ``--shift-weeks 1`` and reported on the last week.

Surge (for the lead figure): on the 10-minute trailing mean ``s`` of the demand, minute ``t`` is a
surge onset when ``s(t) >= 1.5 * b`` and ``s(t) - b >= 0.15 * peak``, with ``b`` the minimum of
``s`` over the 30 minutes before ``t`` and ``peak`` the window's peak demand; onsets are at least
60 minutes apart. The surge's level ``L`` is the maximum of ``s`` over ``[t, t + 10]``. A policy's
lead for a surge is how many minutes before ``t`` its ready capacity last reached ``L`` and stayed
there until ``t`` (positive: early), or minus the minutes after ``t`` until it reaches ``L``
(negative: late); both are capped at 60 minutes.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.hpa import (
    METRIC_DELAY_SECONDS,
    SYNC_SECONDS,
    HpaBehavior,
    HpaController,
    ScalingPolicy,
)
from core.params import FORECAST_TARGETS
from core.policy import (
    calibrated_utilization,
    forecast_quantiles,
    plan_quantiles,
    replicas_for_load,
    standardized_errors,
    tail_factors,
)
from core.schema import REPLICAS, SERVICE, TARGET, TS

WINDOW_MINUTES = 7 * 24 * 60
PEAK_REPLICAS = 30  # the window's peak minute needs this many pods at 100 % utilisation
HPA_TARGET = 0.7
STARTUP_DELAYS_MINUTES: tuple[int, ...] = (2, 5)
TICKS_PER_MINUTE = 60 // SYNC_SECONDS
MIN_REPLICAS = 1
MAX_REPLICAS = 100
FORECAST_STEP = pd.Timedelta(minutes=5)
REFIT_MINUTES = 24 * 60
TRAIN_DAYS = 28
PREDICT_HISTORY_DAYS = 15
HOLT_WINTERS = {"alpha": 0.9, "beta": 0.01, "gamma": 0.3, "stored_seasons": 4}
BASELINES: tuple[str, ...] = ("hpa", "holt_winters", "static_peak", "oracle")


def policy_names() -> list[str]:
    """Every replayed policy: the baselines, then the Forescale variants."""
    return [*BASELINES, *FORESCALE_VARIANTS]


SURGE_SMOOTH_MINUTES = 10
SURGE_RATIO = 1.5
SURGE_MIN_RISE = 0.15
SURGE_BASELINE_MINUTES = 30
SURGE_GAP_MINUTES = 60
SURGE_LEVEL_MINUTES = 10
LEAD_CAP_MINUTES = 60
TARGETS = {"short_vs_hpa_max": 0.10, "pod_hours_vs_hpa_max": 1.05, "median_lead_min": 15.0}
CALIBRATION_SHORT_BUDGET = 0.05
"""Short minutes a calibrated variant may have on the week before the window, as a share of the
HPA's there: half the 10 % target, a margin for the window being a different week."""
CALIBRATION_FLEET_BUDGET = 0.05
"""Short minutes the fleet-budget variants may have on the calibration periods, as a share of the
HPA's summed over the traces (:func:`choose_fleet_settings`)."""
CALIBRATION_MIN_TRAIN_MINUTES = 24 * 60
"""History kept before the calibration period to train on; also its shortest length (unless the
window is shorter)."""


# --------------------------------------------------------------------------------------------
# Traces


def discover_traces(data_dir: Path) -> dict[str, pd.Series]:
    """Find the replay traces in a folder laid out like ``shared/data``.

    Every CSV under ``request_traces/`` and ``cpu_traces/`` is a trace, and every CSV under
    ``nab/`` whose name says it counts requests (``*request*``, e.g. NAB's ELB request count).
    The first column is the time (ISO text, or Unix seconds when numeric), the first numeric
    column after it is the load.

    Args:
        data_dir: The data folder.

    Returns:
        Trace name (``folder/stem``) -> load per minute (UTC index, gaps interpolated).

    Raises:
        ValueError: If the folder holds no trace or a file cannot be parsed.
    """
    files: list[Path] = []
    for folder in ("request_traces", "cpu_traces"):
        files += sorted((data_dir / folder).glob("*.csv"))
    files += sorted(p for p in (data_dir / "nab").rglob("*.csv") if "request" in p.stem.lower())
    if not files:
        raise ValueError(
            f"{data_dir}: no trace found (expected CSVs under request_traces/, cpu_traces/ or "
            "nab/**/ *request*.csv)"
        )
    return {f"{path.parent.name}/{path.stem}": read_trace(path) for path in files}


def read_trace(path: Path) -> pd.Series:
    """Read one trace CSV as load per minute.

    Args:
        path: CSV with a time column first and a numeric load column.

    Returns:
        Load per minute on a regular UTC grid; coarser traces are held constant over their step,
        gaps are linearly interpolated, negative values clipped to 0.

    Raises:
        ValueError: If the file has no parsable time or numeric column.
    """
    frame = pd.read_csv(path)
    if frame.shape[1] < 2 or frame.empty:
        raise ValueError(
            f"{path}: expected a time column and a load column, got {list(frame.columns)}"
        )
    time_column = frame.columns[0]
    raw_time = frame[time_column]
    try:
        if pd.api.types.is_numeric_dtype(raw_time):
            stamps = pd.to_datetime(raw_time, unit="s", utc=True)
        else:
            stamps = pd.to_datetime(raw_time, utc=True, format="mixed")
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: column {time_column!r} is not a time column: {err}") from err
    numeric = [c for c in frame.columns[1:] if pd.api.types.is_numeric_dtype(frame[c])]
    if not numeric:
        raise ValueError(f"{path}: no numeric load column in {list(frame.columns[1:])}")
    series = pd.Series(frame[numeric[0]].to_numpy(dtype=float), index=stamps.dt.floor("min"))
    series = series[np.isfinite(series.to_numpy())].groupby(level=0).mean().sort_index()
    if len(series) < 2:
        raise ValueError(f"{path}: fewer than two rows of load")
    grid = pd.date_range(series.index[0], series.index[-1], freq="min")
    step = series.index.to_series().diff().dropna().mode().iloc[0]
    if step > pd.Timedelta(minutes=1):
        per_minute = series.reindex(grid).ffill(limit=int(step / pd.Timedelta(minutes=1)) - 1)
    else:
        per_minute = series.reindex(grid)
    return per_minute.interpolate(limit_direction="both").clip(lower=0.0).rename(path.stem)


# --------------------------------------------------------------------------------------------
# Cluster model


@dataclass
class ReplayResult:
    """Per-minute outcome of one policy on one trace."""

    desired: np.ndarray  # desired replicas at the end of each minute
    ready: np.ndarray  # fewest ready replicas during each minute
    pod_minutes: float
    actions: int


Controller = Callable[[int, int, int, int], int]
"""``controller(tick, minute, ready, starting) -> desired replicas`` (called every tick)."""


def simulate(
    demand: np.ndarray, capacity: float, delay_minutes: int, initial: int, controller: Controller
) -> ReplayResult:
    """Replay one policy on the cluster model.

    Args:
        demand: Load per minute of the window.
        capacity: Load one ready pod serves.
        delay_minutes: Pod start-up delay.
        initial: Pods ready at the start.
        controller: The policy, called every 15 s tick.

    Returns:
        The per-minute desired and ready replicas, pod-minutes and scaling actions.
    """
    minutes = len(demand)
    delay_ticks = delay_minutes * TICKS_PER_MINUTE
    ready = initial
    starting: deque[list[int]] = deque()  # [ready_tick, count], oldest first
    starting_count = 0
    desired_out = np.zeros(minutes, dtype=np.int64)
    ready_out = np.zeros(minutes, dtype=np.int64)
    pod_ticks = 0
    actions = 0
    desired = initial
    for minute in range(minutes):
        fewest = None
        for sub in range(TICKS_PER_MINUTE):
            tick = minute * TICKS_PER_MINUTE + sub
            while starting and starting[0][0] <= tick:
                ready += starting[0][1]
                starting_count -= starting[0][1]
                starting.popleft()
            new_desired = controller(tick, minute, ready, starting_count)
            if new_desired != desired:
                actions += 1
                desired = new_desired
            total = ready + starting_count
            if desired > total:
                starting.append([tick + delay_ticks, desired - total])
                starting_count += desired - total
            elif desired < total:
                surplus = total - desired
                while surplus and starting:
                    take = min(surplus, starting[-1][1])
                    starting[-1][1] -= take
                    starting_count -= take
                    surplus -= take
                    if starting[-1][1] == 0:
                        starting.pop()
                ready -= surplus
            pod_ticks += ready + starting_count
            fewest = ready if fewest is None else min(fewest, ready)
        desired_out[minute] = desired
        ready_out[minute] = fewest
    return ReplayResult(desired_out, ready_out, pod_ticks / TICKS_PER_MINUTE, actions)


def observed_load(demand: np.ndarray, tick: int) -> float:
    """Load the metrics pipeline reports at ``tick`` (the minute ``METRIC_DELAY_SECONDS`` ago)."""
    minute = (tick * SYNC_SECONDS - METRIC_DELAY_SECONDS) // 60
    return float(demand[max(minute, 0)])


def hpa_controller(
    demand: np.ndarray, capacity: float, predictor: HoltWintersReplicas | None = None
) -> Controller:
    """The Kubernetes HPA (optionally with a Holt-Winters replica prediction, as the PHPA does).

    Args:
        demand: Load per minute of the window.
        capacity: Load one pod serves at 100 % utilisation.
        predictor: When given, every minute the HPA's recommendation is stored as an evaluation
            and the recommendation becomes ``max(hpa, predicted next-minute replicas)``.

    Returns:
        The controller.
    """
    hpa = HpaController(MIN_REPLICAS, MAX_REPLICAS, HPA_TARGET)
    state = {"replicas": None}

    def control(tick: int, minute: int, ready: int, starting: int) -> int:
        current = ready + starting if state["replicas"] is None else state["replicas"]
        utilization = observed_load(demand, tick) / (max(ready, 1) * capacity)
        recommendation = hpa.recommend(ready, starting, utilization)
        if predictor is not None:
            if tick % TICKS_PER_MINUTE == 0:
                predictor.update(recommendation)
            recommendation = max(recommendation, predictor.predict())
        state["replicas"] = hpa.sync(tick * SYNC_SECONDS, current, recommendation)
        return state["replicas"]

    return control


KEDA_BEHAVIOR = HpaBehavior(
    scale_up_policies=(ScalingPolicy("Percent", 100, 30), ScalingPolicy("Pods", 10, 30)),
    scale_down_policies=(ScalingPolicy("Percent", 20, 60),),
    scale_up_window_seconds=0,
    scale_down_window_seconds=0,
)
"""The ``behavior`` of Forescale's KEDA ScaledObject (``serving/deploy/scaledobject.yaml``;
``tests/test_keda_manifest.py`` checks they agree): up by 100 % or 10 pods per 30 s, down by
20 % per minute, no stabilisation window (the schedule delays and steps its own scale-downs)."""
KEDA_CPU_TARGET = 0.9
"""The ScaledObject's ``cpu`` trigger (the reactive safety net), as a utilisation: above the
schedule's own target, so it acts only when the pods run hot."""


def schedule_controller(
    desired_per_minute: np.ndarray,
    through_hpa: bool,
    demand: np.ndarray | None = None,
    capacity: float | None = None,
) -> Controller:
    """Apply a per-minute replica target, directly or through an HPA (as KEDA does).

    Through the HPA, the target is the ``metrics-api`` trigger's proposal; with ``demand`` and
    ``capacity`` the ``cpu`` trigger (:data:`KEDA_CPU_TARGET`, the load seen
    ``METRIC_DELAY_SECONDS`` late) proposes too, and the HPA takes the larger of the two
    (``autoscaling/v2`` ``HorizontalPodAutoscalerSpec.metrics``: "the maximum replica count
    across all metrics will be used"), then applies :data:`KEDA_BEHAVIOR`.

    Args:
        desired_per_minute: Target replicas per minute.
        through_hpa: Apply the HPA rules of :data:`KEDA_BEHAVIOR` to the target.
        demand: Load per minute (for the ``cpu`` trigger).
        capacity: Load one pod serves at 100 % utilisation (for the ``cpu`` trigger).

    Returns:
        The controller.
    """
    hpa = HpaController(MIN_REPLICAS, MAX_REPLICAS, KEDA_CPU_TARGET, KEDA_BEHAVIOR)
    state = {"replicas": int(desired_per_minute[0])}
    cpu_net = through_hpa and demand is not None and capacity is not None

    def control(tick: int, minute: int, ready: int, starting: int) -> int:
        target = int(desired_per_minute[minute])
        if cpu_net:
            utilization = observed_load(demand, tick) / (max(ready, 1) * capacity)
            target = max(target, hpa.recommend(ready, starting, utilization))
        if through_hpa:
            state["replicas"] = hpa.sync(tick * SYNC_SECONDS, state["replicas"], target)
        else:
            state["replicas"] = target
        return state["replicas"]

    return control


# --------------------------------------------------------------------------------------------
# Holt-Winters predictive HPA


class HoltWintersReplicas:
    """Additive Holt-Winters on the HPA's replica evaluations, one minute per evaluation.

    The PHPA stores the HPA's replica evaluations, fits Holt-Winters over its stored seasons and
    predicts the next interval; here the interval is one minute, the season one day, and the
    smoothing is updated online with fixed ``alpha``/``beta``/``gamma`` (the PHPA takes them from
    its configuration). It is warmed up on the history before the window (the evaluations an HPA
    at its target would have made), so it starts with ``stored_seasons`` days of knowledge.

    Args:
        warmup: Evaluations (replicas per minute) before the window, oldest first.
        season: Evaluations per season.
        alpha: Level smoothing.
        beta: Trend smoothing.
        gamma: Seasonal smoothing.
    """

    def __init__(
        self, warmup: np.ndarray, season: int, alpha: float, beta: float, gamma: float
    ) -> None:
        self.alpha, self.beta, self.gamma, self.season = alpha, beta, gamma, season
        values = np.asarray(warmup, dtype=float)
        if values.size >= 2 * season:
            first = values[:season]
            self.level = float(first.mean())
            self.trend = float((values[season : 2 * season].mean() - first.mean()) / season)
            self.seasonal = list(first - first.mean())
            rest = values[season:]
        else:
            self.level = float(values[-1]) if values.size else float(MIN_REPLICAS)
            self.trend = 0.0
            self.seasonal = [0.0] * season
            rest = np.empty(0)
        self.position = 0
        for value in rest:
            self.update(float(value))

    def update(self, value: float) -> None:
        """Add one evaluation."""
        seasonal = self.seasonal[self.position]
        level = self.alpha * (value - seasonal) + (1 - self.alpha) * (self.level + self.trend)
        self.trend = self.beta * (level - self.level) + (1 - self.beta) * self.trend
        self.seasonal[self.position] = self.gamma * (value - level) + (1 - self.gamma) * seasonal
        self.level = level
        self.position = (self.position + 1) % self.season

    def predict(self) -> int:
        """Replicas predicted for the next evaluation."""
        value = self.level + self.trend + self.seasonal[self.position]
        return int(min(MAX_REPLICAS, max(MIN_REPLICAS, math.ceil(value - 1e-9))))


# --------------------------------------------------------------------------------------------
# Forescale


def forecaster_factory(
    model: str | None = "lightgbm",
    horizon_steps: int = 12,
    options: Mapping[str, Any] | None = None,
) -> tuple[str, Callable[[], Any]]:
    """The forecaster family used for Forescale: ``model``, or the best one available.

    Args:
        model: A key of ``models.catalog.MODEL_FAMILIES``; ``None`` takes the first available of
            ensemble, lightgbm, naive. The benchmark defaults to lightgbm: the ensemble
            backtests and fits every member each day and does not fit the 10-minute budget.
        horizon_steps: The longest horizon the replay forecasts (LightGBM trains on these).
        options: Further constructor arguments of a LightGBM forecaster.

    Returns:
        The family's name and a constructor.

    Raises:
        ValueError: If the named family does not exist.
    """
    from models.catalog import MODEL_FAMILIES

    if model is None:
        model = next(m for m in ("ensemble", "lightgbm", "naive") if m in MODEL_FAMILIES)
    if model not in MODEL_FAMILIES:
        raise ValueError(f"unknown model family {model!r}; known: {sorted(MODEL_FAMILIES)}")
    family = MODEL_FAMILIES[model]
    if model == "lightgbm":
        # Re-forecast every few minutes: train on the horizons the replay uses.
        return model, functools.partial(
            family, max_horizon=horizon_steps, num_threads=1, **dict(options or {})
        )
    return model, family


def select_traces(
    loads: Mapping[str, pd.Series], shift_weeks: int = 0, only: Sequence[str] = ()
) -> tuple[list[PreparedTrace], dict[str, str]]:
    """Prepare the traces to replay, optionally a week or more before their end.

    Args:
        loads: Trace name -> load per minute (as from :func:`discover_traces`).
        shift_weeks: Drop the last ``shift_weeks`` weeks of every trace before preparing it.
            With a shift, a trace then too short to replay (:func:`prepare_trace`) is left out
            and reported; without one, it is an error.
        only: Keep only the traces whose name contains one of these strings (all when empty).

    Returns:
        The prepared traces and the left-out ones (name -> reason).

    Raises:
        ValueError: If ``shift_weeks`` is negative, if no trace is left, or (without a shift) if
            a trace is too short.
    """
    if shift_weeks < 0:
        raise ValueError(f"shift_weeks must be 0 or more, got {shift_weeks}")
    traces: list[PreparedTrace] = []
    skipped: dict[str, str] = {}
    for name, load in loads.items():
        if only and not any(part in name for part in only):
            continue
        kept = load.iloc[: len(load) - shift_weeks * WINDOW_MINUTES]
        try:
            traces.append(prepare_trace(name, kept))
        except ValueError as err:
            if not shift_weeks:
                raise
            skipped[name] = f"too short once {shift_weeks} week(s) are dropped ({err})"
    if not traces:
        raise ValueError(
            f"no trace to replay (shift_weeks={shift_weeks}, only={list(only)}, "
            f"left out: {sorted(skipped)})"
        )
    return traces, skipped


@dataclass
class PreparedTrace:
    """One trace split into history and replay window."""

    name: str
    history: pd.Series  # per minute, before the window
    window: pd.Series  # per minute, the replayed week
    capacity: float


def prepare_trace(name: str, load: pd.Series) -> PreparedTrace:
    """Split a trace into history and its last week; set capacity so the peak needs 30 pods.

    Raises:
        ValueError: If the trace is shorter than a week plus a day of history.
    """
    if len(load) < WINDOW_MINUTES + 24 * 60:
        raise ValueError(
            f"trace {name!r}: {len(load)} minutes; need at least {WINDOW_MINUTES + 1440} "
            "(one week to replay plus a day of history)"
        )
    window = load.iloc[-WINDOW_MINUTES:]
    peak = float(window.max())
    if peak <= 0:
        raise ValueError(f"trace {name!r}: the replay window has no load")
    return PreparedTrace(name, load.iloc[:-WINDOW_MINUTES], window, peak / PEAK_REPLICAS)


def five_minute_frame(name: str, load: pd.Series, target: str = "mean") -> pd.DataFrame:
    """Long-format 5-minute load of one trace (complete bins only).

    Args:
        name: The trace (becomes ``service``).
        load: Load per minute.
        target: ``"mean"`` (the step's mean load) or ``"peak"`` (its busiest minute).

    Returns:
        ``service, ts, requests`` per complete 5-minute step.

    Raises:
        ValueError: If ``target`` is neither.
    """
    if target not in FORECAST_TARGETS:
        raise ValueError(
            f"forecast target must be one of {sorted(FORECAST_TARGETS)}, got {target!r}"
        )
    bins = load.resample(FORECAST_STEP)
    values = bins.agg(FORECAST_TARGETS[target])  # the same aggregation as training.target's
    values = values[bins.count() == int(FORECAST_STEP / pd.Timedelta(minutes=1))]
    return pd.DataFrame({SERVICE: name, TS: values.index, TARGET: values.to_numpy()})


@dataclass(frozen=True)
class ForecastSpec:
    """What the Forescale forecaster predicts in the replay, and how often.

    Attributes:
        target: ``"mean"``: the 5-minute mean load (bursts inside a step are left to the
            utilisation headroom); ``"peak"``: the busiest minute of each 5-minute step, so the
            forecast quantile is directly the load a step's pods must absorb at the risk.
        cadence_minutes: Minutes between two forecasts (each from the complete 5-minute steps
            before its instant).
        horizon_steps: 5-minute steps forecast (and trained on).
        model_options: Constructor arguments of the LightGBM forecaster (its defaults, the
            pipeline's, otherwise).
    """

    target: str = "peak"
    cadence_minutes: int = 5
    horizon_steps: int = 12
    model_options: tuple[tuple[str, Any], ...] = ()


MEAN_FORECAST = ForecastSpec(target="mean", cadence_minutes=15, horizon_steps=36)
"""The earlier deployment: 5-minute means every 15 minutes, 3 hours ahead."""
PEAK_FORECAST = ForecastSpec(
    target="peak", cadence_minutes=5, horizon_steps=12, model_options=(("anchor", "recent"),)
)
"""Peak minute of each step, every 5 minutes, one hour ahead (what the served value uses:
the start-up lead plus the 15-minute pre-warm), by a LightGBM anchored on the recent level
(chosen on the development weeks, see the README)."""


@dataclass(frozen=True)
class ForescaleVariant:
    """How the benchmark deploys Forescale.

    Attributes:
        forecast: What is forecast and how often (:class:`ForecastSpec`).
        risk: Risk of the forecast quantile; ``params.yaml``'s risk x ``risk_share`` when
            ``None``.
        risk_share: Share of the ``params.yaml`` risk given to the forecast quantile; the rest
            goes to bursts inside a step through the calibrated utilisation.
        utilization: A fixed target utilisation (plan and reactive floor); overrides
            ``calibrate``.
        calibrate: Calibrate the target utilisation on the week before the window
            (:func:`core.policy.calibrated_utilization`); otherwise the ``params.yaml``
            target utilisation.
        overrides: Other ``ServiceConfig`` fields to change.
        quantile_risks: Candidate risks of the forecast quantile, the most cautious first; when
            given, one is chosen per trace and start-up delay by replaying the week before the
            window (:func:`choose_quantile_risk`), instead of ``risk``.
        burst_risks: With ``quantile_risks`` and no fixed ``utilization``: candidate risks for
            the utilisation calibration (bursts inside a step), chosen jointly with the
            quantile's; ``params.yaml``'s risk x ``risk_share`` when empty.
        fleet_budget: With ``quantile_risks``: spend the short-minute budget over all traces
            together (:func:`choose_fleet_settings`) instead of trace by trace
            (:func:`choose_quantile_risk`).
        tail_days: Plan ``p50 + k * (p90 - p50)`` with ``k`` the empirical ``1 - risk``
            quantile of the forecaster's own standardized errors per horizon step over the
            last ``tail_days`` of the replay (:func:`core.policy.tail_factors`, refreshed
            every :data:`TAIL_REFRESH_MINUTES`; the forecast's own quantiles until two hours of
            errors are known); 0 plans the forecast's quantiles.
    """

    forecast: ForecastSpec = MEAN_FORECAST
    risk: float | None = None
    risk_share: float = 1.0
    utilization: float | None = None
    calibrate: bool = False
    overrides: tuple[tuple[str, Any], ...] = ()
    quantile_risks: tuple[float, ...] = ()
    burst_risks: tuple[float, ...] = ()
    fleet_budget: bool = False
    tail_days: float = 0.0


HEADLINE_VARIANT = "forescale_tail"
"""The variant the README reports as Forescale's result (chosen on the development weeks)."""

TAIL_REFRESH_MINUTES = 60
"""How often the replay recomputes the empirical tail factors (the publishing pipeline does it at
every publication; hourly keeps the replay fast and uses no more information)."""

PEAK_UTILIZATION = 0.95
"""Target utilisation of the peak-forecast variants: the forecast already is the busiest minute,
so only a 5 % margin is kept (the calibrated utilisation of the smoothest traces)."""

FORESCALE_VARIANTS: dict[str, ForescaleVariant] = {
    "forescale": ForescaleVariant(forecast=PEAK_FORECAST, risk=0.05, utilization=PEAK_UTILIZATION),
    "forescale_cal": ForescaleVariant(
        forecast=PEAK_FORECAST,
        utilization=PEAK_UTILIZATION,
        quantile_risks=(0.02, 0.05, 0.1, 0.2),
    ),
    "forescale_tail": ForescaleVariant(
        forecast=PEAK_FORECAST, risk=0.04, utilization=PEAK_UTILIZATION, tail_days=3.0
    ),
    "forescale_mean": ForescaleVariant(risk_share=0.5, calibrate=True),
    "forescale_mean_qbcal": ForescaleVariant(
        risk_share=0.5,
        calibrate=True,
        quantile_risks=(0.05, 0.1, 0.3, 0.5),
        burst_risks=(0.05, 0.1),
    ),
}
"""Forescale as deployed in the benchmark (``params.yaml`` risk 0.1, target utilisation 0.7):

* ``forescale``: forecasts the busiest minute of every 5-minute step
  (:data:`PEAK_FORECAST`, every 5 minutes) and plans its ``1 - 0.05`` quantile (p95,
  extrapolated from p50/p90) at :data:`PEAK_UTILIZATION`; the risk is the largest of 0.02,
  0.03, 0.05 and 0.1 whose short minutes stayed within 10 % of the HPA's at both start-up delays
  on the weeks before the reported ones (``--shift-weeks 1``, see the README);
* ``forescale_cal``: as ``forescale``, with the quantile's risk chosen per trace and start-up
  delay among 0.02, 0.05, 0.1 and 0.2 by replaying the week *before* the window (the
  forecaster's own past) and taking the cheapest whose short minutes stay within
  :data:`CALIBRATION_SHORT_BUDGET` of the HPA's there;
* ``forescale_tail`` (the headline, :data:`HEADLINE_VARIANT`): as ``forescale``, planning
  ``p50 + k * (p90 - p50)`` with ``k`` the empirical 96 % quantile of the forecaster's own
  standardized errors per horizon step over the last 3 days
  (:attr:`ForescaleVariant.tail_days`); the risk is the largest of 0.02 ... 0.07 (in
  steps of 0.01) whose short minutes stayed within 10 % of the HPA's at both start-up delays on
  the development weeks, as for ``forescale``;
* ``forescale_mean`` (the earlier headline): forecasts 5-minute means every 15 minutes
  (:data:`MEAN_FORECAST`) and splits the risk evenly (union bound) between the forecast and the
  bursts inside a step: the ``1 - risk/2`` quantile (p95) at a target utilisation calibrated per
  trace on the week before the window at ``risk/2``;
* ``forescale_mean_qbcal``: as ``forescale_mean`` with the quantile's risk (0.05, 0.1, 0.3 or
  0.5) and the burst risk of the utilisation calibration (0.05 or 0.1) chosen jointly per trace
  and delay on the week before the window, as ``forescale_cal`` does.

Replayed once and left out of the default run (see the README): ``forescale_mean`` with the
whole risk on the forecast or with the ``params.yaml`` defaults as they are (p90 at 70 %), the
quantile calibration without the burst risk, a wider calibration grid, and a short-minute budget
spent over the traces together (``fleet_budget``, :func:`choose_fleet_settings`).
"""


def _variant_utilization(
    spec: ForescaleVariant, history: pd.Series, defaults: Any, burst: float | None = None
) -> float:
    """A variant's target utilisation on a trace: fixed, calibrated on ``history`` at the burst
    risk (a calibration candidate's, else the ``params.yaml`` risk x ``risk_share``), or the
    ``params.yaml`` default."""
    if spec.utilization is not None:
        return spec.utilization
    if burst is not None or spec.calibrate:
        risk = burst if burst is not None else defaults.risk * spec.risk_share
        return calibrated_utilization(history, FORECAST_STEP, risk)
    return defaults.target_utilization


def forescale_targets(
    traces: Sequence[PreparedTrace],
    delays: Sequence[int],
    model: str | None,
    params_file: Path | None,
    pool: Executor | None = None,
) -> tuple[
    str,
    dict[str, dict[str, float]],
    dict[str, dict[str, dict[str, float]]],
    dict[tuple[str, str, int], np.ndarray],
]:
    """Replica targets per minute of the Forescale variants for every trace and start-up delay.

    For every :class:`ForecastSpec` the variants use, the forecaster is refitted every day of
    the window on the ``TRAIN_DAYS`` before that day and re-forecasts every
    ``cadence_minutes`` from the complete 5-minute steps before the forecast instant (never
    later data). Each forecast is planned with :func:`core.policy.plan_quantiles` (as
    :func:`core.policy.plan_replicas` does); the value served at each minute is the maximum
    planned over ``[minute, minute + start-up delay]`` (:func:`core.policy.served_value`),
    raised to the reactive floor of the live load (held for 5 minutes, like an HPA's scale-down
    window).

    Args:
        traces: The prepared traces.
        delays: Start-up delays in minutes.
        model: Forecaster family (see :func:`forecaster_factory`).
        params_file: ``params.yaml`` for the service defaults; the repository's when ``None``.
        pool: Runs the window's forecasts beside the calibration, and the calibration replays
            (in this process when ``None``).

    Returns:
        The family used, the target utilisation per variant and trace, the forecast quantile's
        risk chosen for the calibrated variants (``variant -> str(delay) -> trace -> risk``, see
        :func:`_calibrate_quantile_risks`), and ``(variant, trace, delay) -> target replicas per
        minute``.
    """
    from core.service_config import default_service_config
    from core.settings import REPO_ROOT

    defaults = default_service_config(params_file or REPO_ROOT / "params.yaml")
    utilization = {
        variant: {
            t.name: _variant_utilization(spec, t.history.iloc[-WINDOW_MINUTES:], defaults)
            for t in traces
        }
        for variant, spec in FORESCALE_VARIANTS.items()
    }
    full = {t.name: pd.concat([t.history, t.window]) for t in traces}
    targets_used = {spec.forecast.target for spec in FORESCALE_VARIANTS.values()}
    frames = {
        target: {name: five_minute_frame(name, load, target) for name, load in full.items()}
        for target in targets_used
    }
    starts = {t.name: t.window.index[0] for t in traces}
    spans = {t.name: WINDOW_MINUTES for t in traces}
    configs = {
        (variant, delay): {
            t.name: defaults.model_copy(
                update={
                    "capacity_per_replica": t.capacity,
                    "target_utilization": utilization[variant][t.name],
                    "risk": spec.risk if spec.risk is not None else defaults.risk * spec.risk_share,
                    "min_replicas": MIN_REPLICAS,
                    "max_replicas": MAX_REPLICAS,
                    "startup_seconds": delay * 60,
                    **dict(spec.overrides),
                }
            )
            for t in traces
        }
        for variant, spec in FORESCALE_VARIANTS.items()
        for delay in delays
    }
    family_name = forecaster_factory(model)[0]
    window_jobs = {}
    for forecast in {spec.forecast for spec in FORESCALE_VARIANTS.values()}:
        _, family = forecaster_factory(model, forecast.horizon_steps, dict(forecast.model_options))
        window_jobs[forecast] = _submit(
            pool, _rolling_forecasts, frames[forecast.target], starts, spans, family, forecast
        )
    quantile_risk = _calibrate_quantile_risks(traces, frames, model, configs, pool)
    history = {t.name: t.history.iloc[-WINDOW_MINUTES:] for t in traces}
    for (variant, delay), per_trace in configs.items():
        spec = FORESCALE_VARIANTS[variant]
        for name, (risk, burst) in quantile_risk.get(variant, {}).get(str(delay), {}).items():
            per_trace[name] = per_trace[name].model_copy(
                update={
                    "risk": risk,
                    "target_utilization": _variant_utilization(
                        spec, history[name], defaults, burst
                    ),
                }
            )
    targets: dict[tuple[str, str, int], np.ndarray] = {}
    for forecast, job in window_jobs.items():
        planned = {
            key: config
            for key, config in configs.items()
            if FORESCALE_VARIANTS[key[0]].forecast == forecast
        }
        targets.update(
            _planned_targets(
                job.result(),
                starts,
                spans,
                planned,
                forecast.cadence_minutes,
                frames[forecast.target],
                {key: FORESCALE_VARIANTS[key[0]].tail_days for key in planned},
            )
        )
    for (variant, delay), config in configs.items():
        for trace in traces:
            key = (variant, trace.name, delay)
            targets[key] = _with_reactive_floor(
                targets[key], trace.history, trace.window, config[trace.name]
            )
    return family_name, utilization, quantile_risk, targets


def _rolling_forecasts(
    frames: dict[str, pd.DataFrame],
    starts: dict[str, pd.Timestamp],
    spans: dict[str, int],
    family: Callable[[], Any],
    forecast: ForecastSpec,
) -> list[tuple[int, pd.DataFrame]]:
    """The forecasts of a replayed period: ``(minute offset, forecast)`` every cadence.

    Each trace is replayed for ``spans[trace]`` minutes from ``starts[trace]``, and only while
    it is: the forecaster is refitted every ``REFIT_MINUTES`` on the ``TRAIN_DAYS`` before the
    instant of the traces still replayed and forecasts ``forecast.horizon_steps`` ahead from
    their complete 5-minute bins of the ``PREDICT_HISTORY_DAYS`` before it.
    """
    forecasts: list[tuple[int, pd.DataFrame]] = []
    model_obj = None
    for offset in range(0, max(spans.values(), default=0), forecast.cadence_minutes):
        origins = {
            name: start + pd.Timedelta(minutes=offset)
            for name, start in starts.items()
            if offset < spans[name]
        }
        active = {name: frames[name] for name in origins}
        if offset % REFIT_MINUTES == 0:
            model_obj = family().fit(_history_before(active, origins, TRAIN_DAYS), target=TARGET)
        recent = _history_before(active, origins, PREDICT_HISTORY_DAYS)
        predicted = model_obj.predict(forecast.horizon_steps, quantiles=(0.5, 0.9), history=recent)
        forecasts.append((offset, predicted))
    return forecasts


def _planned_targets(
    forecasts: list[tuple[int, pd.DataFrame]],
    starts: dict[str, pd.Timestamp],
    spans: dict[str, int],
    configs: dict[tuple[str, int], dict[str, Any]],
    cadence_minutes: int,
    actuals: Mapping[str, pd.DataFrame] | None = None,
    tail_days: Mapping[tuple[str, int], float] | None = None,
) -> dict[tuple[str, str, int], np.ndarray]:
    """Plan every forecast with every configuration; the served value per replayed minute.

    Each forecast is served from its instant until the next one (``cadence_minutes``). A
    configuration key with ``tail_days`` is planned on the empirical tail of the forecasts'
    own errors (:func:`_tail_factor_sources`), which needs ``actuals`` (trace -> its 5-minute
    frame of the forecast target).
    """
    targets = {
        (variant, name, delay): np.zeros(spans[name], dtype=np.int64)
        for (variant, delay), per_trace in configs.items()
        for name in per_trace
    }
    tail_days = {key: days for key, days in (tail_days or {}).items() if days > 0}
    tails = _tail_factor_sources(forecasts, actuals) if tail_days and actuals is not None else {}
    for offset, forecast in forecasts:
        # What plan_replicas does per service, on arrays extracted once per forecast (the
        # frame-level checks and sorting cost more than the planning when repeated for every
        # configuration); tests/test_hpa_replay.py checks both give the same schedules.
        levels = forecast_quantiles(forecast)
        per_service = {
            str(name): (
                rows[TS].to_numpy(dtype="datetime64[us]").astype(np.int64),
                {q: rows[c].to_numpy(dtype=float) for q, c in levels.items()},
            )
            for name, rows in forecast.groupby(SERVICE, sort=False)
        }
        for (variant, delay), config in configs.items():
            lead_us = delay * 60_000_000
            days = tail_days.get((variant, delay))
            for name, service_config in config.items():
                if name not in per_service:
                    continue
                stamps_us, quantiles = per_service[name]
                tail = None
                if days is not None and name in tails:
                    refreshed = _epoch_us(starts[name]) + (
                        offset // TAIL_REFRESH_MINUTES * TAIL_REFRESH_MINUTES * 60_000_000
                    )
                    tail = tails[name](refreshed, days, 1.0 - service_config.risk, len(stamps_us))
                replicas = plan_quantiles(quantiles, FORECAST_STEP, service_config, tail=tail)
                end = min(offset + cadence_minutes, spans[name])
                minutes = np.arange(offset, end)
                instants = _epoch_us(starts[name]) + minutes.astype(np.int64) * 60_000_000
                targets[(variant, name, delay)][minutes] = _served_at(
                    stamps_us, replicas, instants, lead_us
                )
    return targets


def _tail_factor_sources(
    forecasts: list[tuple[int, pd.DataFrame]], actuals: Mapping[str, pd.DataFrame]
) -> dict[str, Callable[[int, float, float, int], np.ndarray | None]]:
    """Per trace, its tail factors as known at an instant.

    Each is a function ``(instant in µs, days, level, steps) -> factors or None``
    (:func:`core.policy.tail_factors`) that uses only the errors of forecast steps that
    ended at or before the instant and within ``days`` of it, memoised per argument set.
    """
    rows = pd.concat([f.assign(origin=o) for o, f in forecasts], ignore_index=True)
    rows["horizon_step"] = rows.groupby(["origin", SERVICE]).cumcount() + 1
    sources: dict[str, Callable[[int, float, float, int], np.ndarray | None]] = {}
    for name, own in rows.groupby(SERVICE, sort=False):
        stamps = own[TS].to_numpy(dtype="datetime64[us]").astype(np.int64)
        actual = actuals[str(name)]
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


def _memoised_tail(
    errors: np.ndarray, horizon: np.ndarray, ends: np.ndarray
) -> Callable[[int, float, float, int], np.ndarray | None]:
    """:func:`core.policy.tail_factors` of the errors whose steps ended by an instant."""
    memo: dict[tuple[int, float, float, int], np.ndarray | None] = {}

    def factors(instant: int, days: float, level: float, steps: int) -> np.ndarray | None:
        key = (instant, days, round(level, 9), steps)
        if key not in memo:
            usable = (ends <= instant) & (ends > instant - int(days * 86_400_000_000))
            memo[key] = tail_factors(errors[usable], horizon[usable], level, steps)
        return memo[key]

    return factors


def _epoch_us(stamp: pd.Timestamp) -> int:
    """Microseconds since the epoch of a UTC timestamp."""
    return int(
        stamp.tz_convert("UTC")
        .tz_localize(None)
        .to_datetime64()
        .astype("datetime64[us]")
        .astype(np.int64)
    )


def _served_at(
    ts: np.ndarray, replicas: np.ndarray, instants: np.ndarray, lead_us: int
) -> np.ndarray:
    """:func:`core.policy.served_value` of one sorted schedule at many instants (in µs)."""
    served = np.zeros(len(instants), dtype=np.int64)
    firsts = np.maximum(np.searchsorted(ts, instants, side="right") - 1, 0)
    lasts = np.searchsorted(ts, instants + lead_us, side="right")
    for i, (first, last) in enumerate(zip(firsts, lasts, strict=True)):
        if last > first and ts[first] <= instants[i] + lead_us:
            served[i] = replicas[first:last].max()
    return served


def _with_reactive_floor(
    target: np.ndarray, before: pd.Series, week: pd.Series, config: Any
) -> np.ndarray:
    """Raise a target to the reactive floor of the live load (one minute late, held 5 minutes)."""
    demand = week.to_numpy()
    observed = np.r_[before.to_numpy()[-1:], demand[:-1]]  # one minute of delay
    floor = replicas_for_load(observed, config)
    held = pd.Series(floor).rolling(5, min_periods=1).max().to_numpy(dtype=np.int64)
    return np.maximum(target, held)


def _calibrate_quantile_risks(
    traces: Sequence[PreparedTrace],
    frames: dict[str, dict[str, pd.DataFrame]],
    model: str | None,
    configs: dict[tuple[str, int], dict[str, Any]],
    pool: Executor | None = None,
) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """Choose the risk settings of the calibrated variants before the window.

    The calibration period is the week before the window, or as much of it as leaves
    ``CALIBRATION_MIN_TRAIN_MINUTES`` of history before it to train on. It is replayed exactly
    as the window is (same forecaster and :class:`ForecastSpec`, planning, reactive floor and
    cluster model; forecasts only from data before each instant, no data from the window) for
    every candidate ``(quantile risk, burst risk)`` of :attr:`ForescaleVariant.quantile_risks`
    and :attr:`ForescaleVariant.burst_risks` (the utilisation calibrated at the burst risk on
    the calibration period itself, unless the variant fixes its utilisation), and
    :func:`choose_quantile_risk` (per trace) or :func:`choose_fleet_settings` (over the traces
    together) picks per start-up delay. A trace whose calibration period would be shorter than
    ``CALIBRATION_MIN_TRAIN_MINUTES`` (or the window, when that is shorter) keeps the first (most
    cautious) candidate and does not count in a fleet budget.

    Args:
        traces: The prepared traces.
        frames: Forecast target (``"mean"``/``"peak"``) -> trace -> its 5-minute frame.
        model: Forecaster family (see :func:`forecaster_factory`).
        configs: ``(variant, delay)`` -> trace -> the variant's service configuration.
        pool: Runs the calibration replays (in this process when ``None``).

    Returns:
        ``variant -> str(delay) -> trace -> (quantile risk, burst risk)`` for the calibrated
        variants.
    """
    calibrated = {v: s for v, s in FORESCALE_VARIANTS.items() if s.quantile_risks}
    if not calibrated:
        return {}
    delays = sorted({delay for (_, delay) in configs})
    spans = {
        t.name: min(WINDOW_MINUTES, len(t.history) - CALIBRATION_MIN_TRAIN_MINUTES) for t in traces
    }
    weeks = {
        t.name: (t.history.iloc[: -spans[t.name]], t.history.iloc[-spans[t.name] :])
        for t in traces
        if spans[t.name] >= min(WINDOW_MINUTES, CALIBRATION_MIN_TRAIN_MINUTES)
    }
    settings = {
        variant: _candidate_settings(spec, configs[(variant, delays[0])][traces[0].name])
        for variant, spec in calibrated.items()
    }
    chosen: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
        variant: {str(delay): {t.name: settings[variant][0] for t in traces} for delay in delays}
        for variant in calibrated
    }
    if not weeks:
        return chosen
    starts = {name: week.index[0] for name, (_, week) in weeks.items()}
    spans = {name: len(week) for name, (_, week) in weeks.items()}
    utilization = {
        (name, burst): calibrated_utilization(week, FORECAST_STEP, burst)
        for name, (_, week) in weeks.items()
        for variant, spec in calibrated.items()
        if spec.utilization is None
        for burst in {c[1] for c in settings[variant]}
    }
    floored: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for forecast in {spec.forecast for spec in calibrated.values()}:
        _, family = forecaster_factory(model, forecast.horizon_steps, dict(forecast.model_options))
        forecasts = _rolling_forecasts(
            {name: frames[forecast.target][name] for name in weeks}, starts, spans, family, forecast
        )
        candidates = {
            (_candidate_key(spec, setting), delay): {
                name: configs[(variant, delay)][name].model_copy(
                    update={
                        "risk": setting[0],
                        "target_utilization": spec.utilization
                        if spec.utilization is not None
                        else utilization[(name, setting[1])],
                    }
                )
                for name in weeks
            }
            for variant, spec in calibrated.items()
            if spec.forecast == forecast
            for setting in settings[variant]
            for delay in delays
        }
        tail_days = {
            (_candidate_key(spec, setting), delay): spec.tail_days
            for variant, spec in calibrated.items()
            if spec.forecast == forecast
            for setting in settings[variant]
            for delay in delays
        }
        targets = _planned_targets(
            forecasts,
            starts,
            spans,
            candidates,
            forecast.cadence_minutes,
            {name: frames[forecast.target][name] for name in weeks},
            tail_days,
        )
        for (key, delay), per_trace in candidates.items():
            for name, (before, week) in weeks.items():
                floored.setdefault((name, delay), {})[key] = _with_reactive_floor(
                    targets[(key, name, delay)], before, week, per_trace[name]
                )
    capacity = {t.name: t.capacity for t in traces}
    jobs = {
        (name, delay): _submit(
            pool,
            calibration_outcomes,
            weeks[name][1].to_numpy(dtype=float),
            capacity[name],
            delay,
            by_key,
        )
        for (name, delay), by_key in floored.items()
    }
    replayed = {key: job.result() for key, job in jobs.items()}
    for variant, spec in calibrated.items():
        for delay in delays:
            hpa_short = {name: replayed[(name, delay)][0] for name in weeks}
            outcomes = {
                name: {
                    setting: replayed[(name, delay)][1][_candidate_key(spec, setting)]
                    for setting in settings[variant]
                }
                for name in weeks
            }
            if spec.fleet_budget:
                picks = choose_fleet_settings(outcomes, hpa_short, CALIBRATION_FLEET_BUDGET)
            else:
                picks = {
                    name: cheapest_within(
                        outcomes[name], CALIBRATION_SHORT_BUDGET * hpa_short[name]
                    )
                    for name in weeks
                }
            chosen[variant][str(delay)].update(picks)
    return chosen


def _candidate_settings(spec: ForescaleVariant, base: Any) -> list[tuple[float, float]]:
    """A calibrated variant's candidates ``(quantile risk, burst risk)``, the most cautious first.

    The burst risk is that of the utilisation calibration; a variant with a fixed utilisation
    has one candidate per quantile risk (its burst risk is then only a label).
    """
    bursts = spec.burst_risks if spec.burst_risks and spec.utilization is None else (base.risk,)
    return [(risk, burst) for risk in spec.quantile_risks for burst in bursts]


def _candidate_key(spec: ForescaleVariant, setting: tuple[float, float]) -> str:
    """One key per distinct candidate configuration (variants that differ only in their
    candidate lists share the candidates they have in common)."""
    return repr((spec.forecast, spec.utilization, spec.overrides, spec.tail_days, setting))


def calibration_outcomes(
    demand: np.ndarray,
    capacity: float,
    delay: int,
    targets_by_risk: Mapping[Any, np.ndarray],
) -> tuple[int, dict[Any, tuple[int, float]]]:
    """Replay the HPA and every candidate's replica targets on the same (past) demand.

    Args:
        demand: Load per minute of the calibration period.
        capacity: Load one pod serves at 100 % utilisation.
        delay: Pod start-up delay in minutes.
        targets_by_risk: Candidate (a risk or a tuple of settings) -> replica target per minute.

    Returns:
        The HPA's under-provisioned minutes, and candidate -> (under-provisioned minutes,
        pod-minutes), with the cluster model of :func:`simulate`.

    Raises:
        ValueError: If there is no candidate or a target's length differs from the demand's.
    """
    if not targets_by_risk:
        raise ValueError("choose_quantile_risk: no candidate risk")
    for risk, target in targets_by_risk.items():
        if len(target) != len(demand):
            raise ValueError(
                f"choose_quantile_risk: target of risk {risk} has {len(target)} minutes, the "
                f"demand {len(demand)}"
            )
    start_hpa = max(
        MIN_REPLICAS, min(MAX_REPLICAS, math.ceil(demand[0] / (capacity * HPA_TARGET) - 1e-9))
    )
    hpa = simulate(demand, capacity, delay, start_hpa, hpa_controller(demand, capacity))
    outcomes = {}
    for risk, target in sorted(targets_by_risk.items()):
        run = simulate(
            demand,
            capacity,
            delay,
            int(target[0]),
            schedule_controller(target, True, demand, capacity),
        )
        outcomes[risk] = (_short_minutes(run, demand, capacity), run.pod_minutes)
    return _short_minutes(hpa, demand, capacity), outcomes


def cheapest_within(outcomes: Mapping[Any, tuple[int, float]], allowed: float) -> Any:
    """The candidate with the fewest pod-minutes among those with at most ``allowed`` short minutes.

    When none qualifies, the one with the fewest short minutes. Ties go to the lower candidate
    (the lower risk).

    Args:
        outcomes: Candidate -> (short minutes, pod-minutes).
        allowed: Most short minutes a candidate may have.

    Returns:
        The chosen candidate.

    Raises:
        ValueError: If there is no candidate.
    """
    if not outcomes:
        raise ValueError("cheapest_within: no candidate")
    within = [(pods, c) for c, (short, pods) in outcomes.items() if short <= allowed]
    if within:
        return min(within)[1]
    return min((short, c) for c, (short, _) in outcomes.items())[1]


def choose_fleet_settings(
    outcomes: Mapping[str, Mapping[Any, tuple[int, float]]],
    hpa_short: Mapping[str, int],
    budget: float,
) -> dict[str, Any]:
    """Per trace, the candidate that spends a fleet-wide short-minute budget where it saves most.

    Short minutes are priced in pod-minutes: at price ``p`` every trace takes the candidate
    minimising ``pod-minutes + p * short minutes`` (ties: fewer short minutes, then the lower
    candidate). The price is the lowest (from 0, through every price at which some trace would
    change candidate) at which the fleet's short minutes are at most ``budget`` times the HPA's
    summed over the traces. A trace where a cautious candidate buys few short minutes for many
    pods thus takes a cheaper one, and the budget goes to where it saves the most pods. When no
    price meets the budget, every trace takes its fewest short minutes.

    Args:
        outcomes: Trace -> candidate -> (short minutes, pod-minutes) on the calibration period.
        hpa_short: Trace -> the HPA's short minutes on the same period.
        budget: Allowed fleet short minutes as a share of the HPA's.

    Returns:
        Trace -> chosen candidate.

    Raises:
        ValueError: If a trace has no candidate or no HPA figure.
    """
    for name, candidates in outcomes.items():
        if not candidates:
            raise ValueError(f"choose_fleet_settings: trace {name!r} has no candidate")
        if name not in hpa_short:
            raise ValueError(f"choose_fleet_settings: no HPA short minutes for trace {name!r}")
    allowed = budget * sum(hpa_short[name] for name in outcomes)
    prices = {0.0}
    for candidates in outcomes.values():
        for (short_a, pods_a), (short_b, pods_b) in itertools.permutations(candidates.values(), 2):
            if short_a > short_b and pods_b > pods_a:
                prices.add((pods_b - pods_a) / (short_a - short_b))
    for price in sorted(prices):
        picks = {
            name: min(
                candidates,
                key=lambda c, o=candidates: (o[c][1] + price * o[c][0], o[c][0], c),
            )
            for name, candidates in outcomes.items()
        }
        if sum(outcomes[name][pick][0] for name, pick in picks.items()) <= allowed:
            return picks
    return {
        name: min(candidates, key=lambda c, o=candidates: (o[c][0], o[c][1], c))
        for name, candidates in outcomes.items()
    }


def choose_quantile_risk(
    demand: np.ndarray,
    capacity: float,
    delay: int,
    targets_by_risk: Mapping[Any, np.ndarray],
    budget: float = CALIBRATION_SHORT_BUDGET,
) -> Any:
    """The cheapest candidate whose short minutes stay within a budget relative to the HPA's.

    Each candidate's replica targets and the HPA are replayed on the same (past) demand with the
    cluster model of :func:`simulate` (:func:`calibration_outcomes`). A candidate qualifies when
    its under-provisioned minutes are at most ``budget`` times the HPA's; the one with the fewest
    pod-hours wins (ties: the lower risk). When none qualifies, the candidate with the fewest
    short minutes wins (ties: the lower risk) (:func:`cheapest_within`).

    Args:
        demand: Load per minute of the calibration period.
        capacity: Load one pod serves at 100 % utilisation.
        delay: Pod start-up delay in minutes.
        targets_by_risk: Candidate risk (a number or a tuple of risks; lower is more cautious)
            -> replica target per minute of the period.
        budget: Allowed short minutes as a share of the HPA's.

    Returns:
        The chosen risk.

    Raises:
        ValueError: If there is no candidate or a target's length differs from the demand's.
    """
    hpa_short, outcomes = calibration_outcomes(demand, capacity, delay, targets_by_risk)
    return cheapest_within(outcomes, budget * hpa_short)


def _short_minutes(result: ReplayResult, demand: np.ndarray, capacity: float) -> int:
    return int(np.sum(demand > result.ready * capacity * (1 + 1e-12)))


def _history_before(
    frames: dict[str, pd.DataFrame], origins: dict[str, pd.Timestamp], days: int
) -> pd.DataFrame:
    """The complete 5-minute bins of each trace within ``days`` before its origin."""
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


class _Done:
    """The result of a call made at once (:func:`_submit` without a pool)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


def _submit(pool: Executor | None, function: Callable[..., Any], *args: Any) -> Any:
    """``pool.submit(function, *args)``, or the call made now when there is no pool."""
    return pool.submit(function, *args) if pool is not None else _Done(function(*args))


def served_per_minute(
    schedule: pd.DataFrame, stamps: pd.DatetimeIndex, lead: pd.Timedelta
) -> np.ndarray:
    """:func:`core.policy.served_value` of one service's schedule at many instants.

    Args:
        schedule: One service's ``ts``/``replicas`` rows.
        stamps: The instants.
        lead: The start-up lead.

    Returns:
        Replicas served at each instant (0 where the schedule has nothing).
    """
    ts = schedule[TS].to_numpy(dtype="datetime64[us]").astype(np.int64)
    replicas = schedule[REPLICAS].to_numpy(dtype=np.int64)
    order = np.argsort(ts)
    instants = (
        stamps.tz_convert("UTC").tz_localize(None).to_numpy(dtype="datetime64[us]").astype(np.int64)
    )
    return _served_at(
        ts[order], replicas[order], instants, int(lead / pd.Timedelta(microseconds=1))
    )


# --------------------------------------------------------------------------------------------
# Metrics


def surge_onsets(demand: np.ndarray) -> list[tuple[int, float]]:
    """Surge onsets of a window (see the module docstring) as ``(minute, level)``."""
    smooth = pd.Series(demand).rolling(SURGE_SMOOTH_MINUTES, min_periods=1).mean().to_numpy()
    baseline = (
        pd.Series(smooth).shift(1).rolling(SURGE_BASELINE_MINUTES, min_periods=1).min().to_numpy()
    )
    peak = float(np.max(demand))
    onsets: list[tuple[int, float]] = []
    last = -SURGE_GAP_MINUTES
    for t in range(SURGE_BASELINE_MINUTES, len(demand)):
        b = baseline[t]
        if (
            t - last >= SURGE_GAP_MINUTES
            and smooth[t] >= SURGE_RATIO * b
            and smooth[t] - b >= SURGE_MIN_RISE * peak
        ):
            onsets.append((t, float(smooth[t : t + SURGE_LEVEL_MINUTES + 1].max())))
            last = t
    return onsets


def surge_lead(capacity: np.ndarray, onset: int, level: float) -> int:
    """Minutes a policy's ready capacity reached ``level`` before ``onset`` (negative: late)."""
    if capacity[onset] >= level:
        lead = 0
        while (
            lead < LEAD_CAP_MINUTES
            and onset - lead - 1 >= 0
            and capacity[onset - lead - 1] >= level
        ):
            lead += 1
        return lead
    for late in range(1, LEAD_CAP_MINUTES + 1):
        if onset + late < len(capacity) and capacity[onset + late] >= level:
            return -late
    return -LEAD_CAP_MINUTES


def policy_figures(
    result: ReplayResult, demand: np.ndarray, capacity: float, onsets: list[tuple[int, float]]
) -> dict[str, float]:
    """Under-provisioned minutes, pod-hours, scaling actions and surge leads (with their median)."""
    ready_capacity = result.ready * capacity
    leads = [surge_lead(ready_capacity, t, level) for t, level in onsets]
    return {
        "short_minutes": int(np.sum(demand > ready_capacity * (1 + 1e-12))),
        "pod_hours": round(result.pod_minutes / 60.0, 2),
        "scaling_actions": int(result.actions),
        "median_lead_minutes": float(np.median(leads)) if leads else float("nan"),
        "surges": len(onsets),
        "leads_minutes": leads,
    }


# --------------------------------------------------------------------------------------------
# The benchmark


def replay_trace(
    trace: PreparedTrace, delay: int, forescale_targets: dict[str, np.ndarray]
) -> tuple[dict[str, dict[str, float]], dict[str, ReplayResult]]:
    """Replay every policy on one trace at one start-up delay.

    Args:
        trace: The trace.
        delay: Pod start-up delay in minutes.
        forescale_targets: Variant -> Forescale's replica target per minute.

    Returns:
        Figures per policy and the per-minute runs.
    """
    demand = trace.window.to_numpy(dtype=float)
    cap = trace.capacity
    need = np.ceil(demand / cap - 1e-9).astype(np.int64).clip(MIN_REPLICAS, MAX_REPLICAS)
    oracle = pd.Series(need[::-1]).rolling(delay + 1, min_periods=1).max().to_numpy()[::-1]
    history = trace.history.to_numpy(dtype=float)
    warm_minutes = HOLT_WINTERS["stored_seasons"] * 1440
    warm = np.ceil(history[-warm_minutes:] / (cap * HPA_TARGET) - 1e-9).clip(
        MIN_REPLICAS, MAX_REPLICAS
    )
    predictor = HoltWintersReplicas(
        warm, 1440, HOLT_WINTERS["alpha"], HOLT_WINTERS["beta"], HOLT_WINTERS["gamma"]
    )
    start_hpa = math.ceil(demand[0] / (cap * HPA_TARGET) - 1e-9)
    start_hpa = max(MIN_REPLICAS, min(MAX_REPLICAS, start_hpa))
    runs = {
        "hpa": simulate(demand, cap, delay, start_hpa, hpa_controller(demand, cap)),
        "holt_winters": simulate(
            demand, cap, delay, start_hpa, hpa_controller(demand, cap, predictor)
        ),
        "static_peak": simulate(
            demand,
            cap,
            delay,
            PEAK_REPLICAS,
            schedule_controller(np.full(len(demand), PEAK_REPLICAS), through_hpa=False),
        ),
        "oracle": simulate(
            demand, cap, delay, int(oracle[0]), schedule_controller(oracle.astype(np.int64), False)
        ),
    }
    for variant, target in forescale_targets.items():
        runs[variant] = simulate(
            demand, cap, delay, int(target[0]), schedule_controller(target, True, demand, cap)
        )
    onsets = surge_onsets(demand)
    return {name: policy_figures(run, demand, cap, onsets) for name, run in runs.items()}, runs


def summarize(per_delay: dict[int, dict[str, dict[str, dict[str, float]]]]) -> dict[str, Any]:
    """Totals over the traces per delay and policy, ratios to HPA, and the targets' verdicts.

    The total median lead is the median over every surge of every trace (pooled). The verdicts
    are given for every Forescale variant (``targets_met_by_variant``) and, as
    ``targets_met``, for the headline :data:`HEADLINE_VARIANT`.
    """
    summary: dict[str, Any] = {}
    for delay, traces in per_delay.items():
        totals: dict[str, dict[str, float]] = {}
        for policy in policy_names():
            rows = [figures[policy] for figures in traces.values()]
            leads = [lead for r in rows for lead in r["leads_minutes"]]  # every surge pooled
            totals[policy] = {
                "short_minutes": int(sum(r["short_minutes"] for r in rows)),
                "pod_hours": round(sum(r["pod_hours"] for r in rows), 2),
                "scaling_actions": int(sum(r["scaling_actions"] for r in rows)),
                "median_lead_minutes": float(np.median(leads)) if leads else float("nan"),
            }
        hpa = totals["hpa"]
        for figures in totals.values():
            figures["short_vs_hpa"] = (
                round(figures["short_minutes"] / hpa["short_minutes"], 4)
                if hpa["short_minutes"]
                else float("nan")
            )
            figures["pod_hours_vs_hpa"] = round(figures["pod_hours"] / hpa["pod_hours"], 4)
        verdicts = {
            variant: {
                "short_vs_hpa": bool(fs["short_vs_hpa"] <= TARGETS["short_vs_hpa_max"]),
                "pod_hours_vs_hpa": bool(fs["pod_hours_vs_hpa"] <= TARGETS["pod_hours_vs_hpa_max"]),
                "median_lead": bool(fs["median_lead_minutes"] >= TARGETS["median_lead_min"]),
            }
            for variant, fs in totals.items()
            if variant in FORESCALE_VARIANTS
        }
        summary[str(delay)] = {
            "totals": totals,
            "targets_met": verdicts[HEADLINE_VARIANT],
            "targets_met_by_variant": verdicts,
        }
    return summary


def markdown_table(
    per_delay: dict[int, dict[str, dict[str, dict[str, float]]]], summary: dict[str, Any]
) -> str:
    """The benchmark's Markdown table (per delay: per trace and policy, then totals)."""
    lines: list[str] = []
    for delay, traces in per_delay.items():
        lines += [
            f"### Pod start-up delay {delay} min",
            "",
            "| trace | policy | short min | pod-hours | actions | median lead (min) | surges |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for trace, figures in traces.items():
            for policy in policy_names():
                f = figures[policy]
                lines.append(
                    f"| {trace} | {policy} | {f['short_minutes']} | {f['pod_hours']:.1f} | "
                    f"{f['scaling_actions']} | {f['median_lead_minutes']:.1f} | {f['surges']} |"
                )
        lines += [
            "",
            (
                "| total | short min | % of HPA short | pod-hours | % of HPA pod-hours | actions "
                "| median lead |"
            ),
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for policy, f in summary[str(delay)]["totals"].items():
            lines.append(
                f"| {policy} | {f['short_minutes']} | {100 * f['short_vs_hpa']:.1f} | "
                f"{f['pod_hours']:.1f} | {100 * f['pod_hours_vs_hpa']:.1f} | "
                f"{f['scaling_actions']} | {f['median_lead_minutes']:.1f} |"
            )
        lines.append("")
        for variant, met in summary[str(delay)]["targets_met_by_variant"].items():
            lines.append(f"{variant} targets met at {delay} min: {met}")
        lines.append("")
    return "\n".join(lines)


def plot_trace(
    path: Path, trace: PreparedTrace, runs_by_delay: dict[int, dict[str, ReplayResult]]
) -> None:
    """PNG of the load and each policy's ready capacity, one panel per start-up delay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(runs_by_delay), 1, figsize=(14, 4 * len(runs_by_delay)), sharex=True
    )
    axes = np.atleast_1d(axes)
    hours = np.arange(WINDOW_MINUTES) / 60.0
    for ax, (delay, runs) in zip(axes, runs_by_delay.items(), strict=True):
        ax.plot(hours, trace.window.to_numpy(), color="black", linewidth=0.6, label="load")
        for name, run in runs.items():
            ax.plot(hours, run.ready * trace.capacity, linewidth=0.8, label=f"{name} capacity")
        ax.set_title(f"{trace.name}: start-up delay {delay} min")
        ax.set_ylabel("load / ready capacity")
        ax.legend(loc="upper left", fontsize=7, ncol=3)
    axes[-1].set_xlabel("hours into the replayed week")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_replay_bench(
    data_dir: Path,
    json_path: Path | None = None,
    timeline_path: Path | None = None,
    plots_dir: Path | None = None,
    model: str | None = "lightgbm",
    params_file: Path | None = None,
    delays: Sequence[int] = STARTUP_DELAYS_MINUTES,
    echo: Callable[[str], None] | None = None,
    shift_weeks: int = 0,
    only: Sequence[str] = (),
    n_jobs: int = 2,
) -> dict[str, Any]:
    """Run the replay benchmark and report it as a Markdown table (and optional JSON/timeline/PNG).

    Args:
        data_dir: A folder laid out like ``shared/data`` (see :func:`discover_traces`).
        json_path: Write the figures here as JSON.
        timeline_path: Write the minute-by-minute replay here (``.parquet`` or ``.csv``): trace,
            startup_minutes, minute, demand and per policy ``<policy>_desired``/``<policy>_ready``.
        plots_dir: Write one PNG per trace here.
        model: Forecaster family for Forescale (a ``models.catalog`` key; default lightgbm).
        params_file: ``params.yaml`` for the Forescale service defaults.
        delays: Start-up delays in minutes to report.
        echo: Where to write the table; a rich console on standard output when ``None``.
        shift_weeks: Drop the last ``shift_weeks`` weeks of every trace first (see
            :func:`select_traces`): with 1 the replayed week is the penultimate one, for
            developing the policy without looking at the reported windows.
        only: Replay only the traces whose name contains one of these strings (all when empty).
        n_jobs: Worker processes (the window's forecasts beside the calibration, then the
            replays of the traces); 1 runs everything in this process.

    Returns:
        The figures: ``{"traces": {delay: {trace: {policy: figures}}}, "summary": ..., "markdown":
        ..., "model": ..., "shift_weeks": ..., "skipped_traces": {trace: reason}, "seconds":
        ...}``.
    """
    started = time.perf_counter()
    traces, skipped = select_traces(discover_traces(Path(data_dir)), shift_weeks, only)
    pool = ProcessPoolExecutor(max_workers=n_jobs) if n_jobs > 1 else None
    try:
        family, utilization, quantile_risk, targets = forescale_targets(
            traces, delays, model, params_file, pool
        )
        replays = {
            (trace.name, delay): _submit(
                pool,
                replay_trace,
                trace,
                delay,
                {v: targets[(v, trace.name, delay)] for v in FORESCALE_VARIANTS},
            )
            for trace in traces
            for delay in delays
        }
        replayed = {key: job.result() for key, job in replays.items()}
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    per_delay: dict[int, dict[str, dict[str, dict[str, float]]]] = {d: {} for d in delays}
    timeline_parts: list[pd.DataFrame] = []
    for trace in traces:
        runs_by_delay: dict[int, dict[str, ReplayResult]] = {}
        for delay in delays:
            figures, runs = replayed[(trace.name, delay)]
            per_delay[delay][trace.name] = figures
            runs_by_delay[delay] = runs
            if timeline_path is not None:
                part = pd.DataFrame(
                    {
                        "trace": trace.name,
                        "startup_minutes": delay,
                        "minute": np.arange(WINDOW_MINUTES),
                        "ts": trace.window.index,
                        "demand": trace.window.to_numpy(),
                    }
                )
                for name, run in runs.items():
                    part[f"{name}_desired"] = run.desired
                    part[f"{name}_ready"] = run.ready
                timeline_parts.append(part)
        if plots_dir is not None:
            Path(plots_dir).mkdir(parents=True, exist_ok=True)
            plot_trace(
                Path(plots_dir) / f"replay_{trace.name.replace('/', '_')}.png", trace, runs_by_delay
            )
    summary = summarize(per_delay)
    table = markdown_table(per_delay, summary)
    if skipped:
        table += "\n" + "\n".join(f"Left out {name}: {why}" for name, why in skipped.items())
    result: dict[str, Any] = {
        "model": family,
        "traces": {str(d): v for d, v in per_delay.items()},
        "capacity_per_replica": {t.name: t.capacity for t in traces},
        "forescale_target_utilization": utilization,
        "forescale_quantile_risk": quantile_risk,
        "shift_weeks": shift_weeks,
        "skipped_traces": skipped,
        "summary": summary,
        "markdown": table,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if timeline_path is not None:
        timeline = pd.concat(timeline_parts, ignore_index=True)
        Path(timeline_path).parent.mkdir(parents=True, exist_ok=True)
        if str(timeline_path).endswith(".csv"):
            timeline.to_csv(timeline_path, index=False)
        else:
            timeline.to_parquet(timeline_path, index=False)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2, default=float, allow_nan=True))
    if echo is None:
        from rich.console import Console

        Console().print(table, markup=False, highlight=False, soft_wrap=True)
    else:
        echo(table)
    return result
