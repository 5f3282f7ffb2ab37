"""`forescale bench replay`: the product walked forward on load traces, beside reactive baselines.

A benchmark, not a test. Each trace is replayed minute by minute over its last week; everything
before that week is history (training data for the forecasters, warm-up for Holt-Winters).

What Forescale does is read from **params profiles**: complete ``params.yaml`` files the product
runs as they are (``--params FILE``, repeatable; the repository's ``params.yaml`` is replayed as
``forescale`` by default). Everything about its behaviour comes from the profile: the training
section (target, families and their settings, backtest folds and horizon, history, shard size,
quantiles), the schedule section (``tail_days``, ``horizon_hours``) and the service defaults
(risk, utilisation, scale-down delay, surge limit, the service's own HPA target). Only the
cluster model below (capacity per trace, replica bounds, start-up delays, the 15 s tick) and the
baselines are benchmark code.

At every step of the window the replay does what production does:

* **training** (:func:`pipelines.training.choose_families`, the training stage's own
  decision): at the start of the window, as ``forecast_retrain``'s weekly schedule does (drift
  retrains are not replayed), per trace (traces from different years share no clock, so each
  is a shard of its own), every family of
  ``training.models`` is backtested on the ``training.history_days`` before that instant, the
  best per trace is fitted, and it replaces the trace's champion only if it beats the champion's
  error on the same folds (:func:`pipelines.training.promotes`);
* **publication** every 5 minutes (``schedule_publish``'s interval): the champion forecasts
  from the complete steps of the 8 days before the instant (``publish.recent_history``), the
  forecast is planned with :func:`core.policy.plan_quantiles` (the core of
  :func:`core.policy.plan_replicas`), on the empirical tail of the trace's forecast errors over
  ``schedule.tail_days``, the record the product keeps (the first hour of each forecast,
  refreshed every whole UTC hour: :func:`core.policy.record_refresh_us`,
  :func:`core.policy.tail_factors`);
* **serving**: at every minute, :mod:`core.serving_rule` (the API's rule) gives the replicas
  to serve from the latest schedule, with the fallback when none covers the minute;
* **scaling**: KEDA's HPA takes the larger of the served value (``metrics-api`` trigger) and
  the ``cpu`` trigger at the service's own HPA target (``service_defaults.hpa``), with the
  ``behavior`` read from ``serving/deploy/scaledobject.yaml``. Nothing in the product writes
  ``/live-floor``, so no floor beyond the ``cpu`` trigger is credited.

The replay forecasts the first hour of each schedule (:data:`SCHEDULE_LOOKAHEAD_STEPS`): the
value served until the next publication depends on no later step unless a rise exceeds the surge
limit times twelve steps (360 pods at the 30 of the cluster model). The anomaly stage's removal
of flagged points from the training set is not replayed.

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
  100 % utilisation, the same for every policy; replicas stay within 1..100.

Baselines, all in the same run on the same trace (``hpa_target`` is the service's own HPA target
of the first profile, the repository's ``params.yaml`` by default):

* ``hpa``: the Kubernetes HPA (:mod:`core.simulation`, default behaviour, metric one minute
  old) at ``hpa_target``;
* ``keda_cpu``: KEDA with only the ``cpu`` trigger at ``hpa_target`` and the ScaledObject's
  behaviour (Forescale's reactive part alone);
* ``last_week``: the pods the load needed at ``hpa_target`` one week earlier (the most over the
  next start-up delay), as a KEDA trigger on a query offset by a week does (Grafana Mimir's
  autoscaling), through KEDA with the ``cpu`` trigger;
* ``holt_winters``: the Holt-Winters predictive HPA of jthomperoo/predictive-horizontal-pod-
  autoscaler (the HPA's replica evaluations are stored every interval, Holt-Winters predicts the
  next one, the decision is ``max(hpa, prediction)``; interval 1 minute, season 1 day, warmed up
  on the 4 days before the window);
* ``static_peak``: 30 pods all the time (the window's peak at 100 %);
* ``oracle``: knows the future; requests exactly the pods the next start-up delay's minutes need
  at 100 % (the lower bound).

Blind development: ``shift_weeks`` (``--shift-weeks``) drops the last weeks of every trace before
anything else, so that with 1 the replayed window is the penultimate week; a trace then too short
is left out and listed. Settings are chosen on ``--shift-weeks 1`` by cross-validation
(:mod:`benchmarks.replay_cv`) and reported once on the last week.

Surges and the lead before them: as :mod:`core.simulation` defines them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.params import load_params, section
from core.schema import SERVICE, TARGET, TS, write_parquet_atomically
from core.service_config import ServiceConfig, default_service_config
from core.settings import REPO_ROOT
from core.simulation import (
    HpaBehavior,
    ReplayResult,
    direct_controller,
    hpa_controller,
    keda_behavior,
    keda_controller,
    policy_figures,
    simulate,
    surge_onsets,
)
from core.steps import aggregate_steps
from pipelines.walk_forward import (
    FORECAST_STEP,
    rolling_forecasts,
    served_targets,
)

WINDOW_MINUTES = 7 * 24 * 60
PEAK_REPLICAS = 30  # the window's peak minute needs this many pods at 100 % utilisation
STARTUP_DELAYS_MINUTES: tuple[int, ...] = (2, 5)
MIN_REPLICAS = 1
MAX_REPLICAS = 100
HOLT_WINTERS = {"alpha": 0.9, "beta": 0.01, "gamma": 0.3, "stored_seasons": 4}
BASELINES: tuple[str, ...] = (
    "hpa",
    "keda_cpu",
    "last_week",
    "holt_winters",
    "static_peak",
    "oracle",
)
DEFAULT_PROFILE = "forescale"
TARGETS = {
    "short_vs_hpa_max": 0.10,
    "pod_hours_vs_hpa_max": 1.05,
    "median_lead_min": 15.0,
    "trace_short_over_hpa_max": 5,
}


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


# --------------------------------------------------------------------------------------------
# Profiles and the deployed ScaledObject


@dataclass(frozen=True)
class Profile:
    """One params profile: a complete ``params.yaml`` the product runs as it is.

    Attributes:
        name: The policy name in the report (the file's stem; ``forescale`` for the
            repository's ``params.yaml``).
        path: The file.
        sha256: Its content's SHA-256.
        service: Its ``service_defaults`` (every replayed trace is a service without overrides).
        target: ``training.target``.
        tail_days: ``schedule.tail_days`` (0: plan on the forecast's quantiles).
        blend: ``schedule.blend_with_persistence`` (only with ``tail_days`` > 0, as in
            publishing).
        training: ``training`` as the training stage reads it.
    """

    name: str
    path: Path
    sha256: str
    service: ServiceConfig
    target: str
    tail_days: float
    blend: bool
    training: Any

    @property
    def forecast_key(self) -> str:
        """What the forecasts depend on: the training section, as a short hash."""
        from dataclasses import asdict

        text = json.dumps(
            {"training": asdict(self.training), "target": self.target}, sort_keys=True, default=str
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_profile(path: Path, name: str | None = None) -> Profile:
    """Read a params profile.

    Args:
        path: A ``params.yaml``.
        name: Its policy name (default: the file's stem).

    Returns:
        The profile.

    Raises:
        ValueError: If the file is missing or invalid, naming it.
    """
    from core.params import forecast_target
    from pipelines.training import TrainingConfig

    path = Path(path)
    load_params(path)
    schedule = section(path, "schedule")
    try:
        tail_days = float(schedule.get("tail_days", 0) or 0)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: schedule.tail_days must be a number") from err
    return Profile(
        name=name or path.stem,
        path=path.resolve(),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        service=default_service_config(path),
        target=forecast_target(path),
        tail_days=tail_days,
        blend=bool(schedule.get("blend_with_persistence", False)) and tail_days > 0,
        training=TrainingConfig.from_file(path, int(FORECAST_STEP / pd.Timedelta(minutes=1))),
    )


def default_profiles(params_files: Sequence[Path] = ()) -> list[Profile]:
    """The profiles of a run: the given files, or the repository's ``params.yaml``.

    Raises:
        ValueError: If two profiles would get the same name.
    """
    if not params_files:
        return [load_profile(REPO_ROOT / "params.yaml", DEFAULT_PROFILE)]
    profiles = [
        load_profile(p, DEFAULT_PROFILE if Path(p).resolve() == REPO_ROOT / "params.yaml" else None)
        for p in params_files
    ]
    names = [p.name for p in profiles]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"params profiles need distinct file names; repeated: {repeated}")
    clash = sorted(set(names) & set(BASELINES))
    if clash:
        raise ValueError(f"params profile names {clash} clash with baseline policies")
    return profiles


# --------------------------------------------------------------------------------------------
# Forescale: training, publication, serving


def step_frame(name: str, load: pd.Series, target: str) -> pd.DataFrame:
    """Long-format step values of one trace (:func:`core.steps.aggregate_steps`, complete
    steps only).

    Args:
        name: The trace (becomes ``service``).
        load: Load per minute.
        target: ``training.target``.

    Returns:
        ``service, ts, requests`` per complete 5-minute step.
    """
    frame = pd.DataFrame({SERVICE: name, TS: load.index, TARGET: load.to_numpy(dtype=float)})
    return aggregate_steps(
        frame, FORECAST_STEP, target, min_rows=int(FORECAST_STEP / pd.Timedelta(minutes=1))
    )


def replay_config(profile: Profile, capacity: float, delay: int) -> ServiceConfig:
    """The profile's service settings on the cluster model (capacity, bounds, start-up)."""
    return profile.service.model_copy(
        update={
            "capacity_per_replica": capacity,
            "min_replicas": MIN_REPLICAS,
            "max_replicas": MAX_REPLICAS,
            "startup_seconds": delay * 60,
        }
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


# --------------------------------------------------------------------------------------------
# Metrics


def forecast_cache_path(
    cache_dir: Path, profile: Profile, frames: Mapping[str, pd.DataFrame], starts: Mapping[str, Any]
) -> Path:
    """Where one shard's forecasts are cached: keyed by the profile's training section, the
    shard's traces, their replay starts and their step values."""
    digest = hashlib.sha256(profile.forecast_key.encode())
    for name in sorted(frames):
        digest.update(name.encode())
        digest.update(str(starts[name]).encode())
        digest.update(pd.util.hash_pandas_object(frames[name], index=False).to_numpy().tobytes())
    return Path(cache_dir) / f"forecasts-{digest.hexdigest()[:24]}.parquet"


def _cached_forecasts(
    path: Path | None,
    frames: Mapping[str, pd.DataFrame],
    starts: Mapping[str, pd.Timestamp],
    spans: Mapping[str, int],
    training: Any,
) -> pd.DataFrame:
    """:func:`rolling_forecasts`, read from ``path`` when it exists, written there otherwise."""
    if path is not None and path.is_file():
        return pd.read_parquet(path)
    forecasts = rolling_forecasts(frames, starts, spans, training)
    if path is not None:
        write_parquet_atomically(forecasts, path)
    return forecasts


def forescale_targets(
    traces: Sequence[PreparedTrace],
    profiles: Sequence[Profile],
    delays: Sequence[int],
    pool: Executor | None = None,
    cache_dir: Path | None = None,
) -> tuple[dict[tuple[str, str, int], np.ndarray], dict[str, dict[str, dict[str, int]]]]:
    """The replicas the API serves per minute for every profile, trace and start-up delay.

    Args:
        traces: The prepared traces.
        profiles: The params profiles.
        delays: Start-up delays in minutes.
        pool: Runs the shards' rolling forecasts (in this process when ``None``).
        cache_dir: Cache the rolling forecasts here (they depend on the training section only).

    Returns:
        ``(profile, trace, delay) -> served replicas per minute`` and, per profile and trace,
        how many publications each family made.
    """
    starts = {t.name: t.window.index[0] for t in traces}
    spans = {t.name: len(t.window) for t in traces}
    jobs: dict[str, list[Any]] = {}
    frames_by_key: dict[str, dict[str, pd.DataFrame]] = {}
    for profile in profiles:
        key = profile.forecast_key
        if key in jobs:
            continue
        frames = {
            t.name: step_frame(t.name, pd.concat([t.history, t.window]), profile.target)
            for t in traces
        }
        frames_by_key[key] = frames
        names = sorted(frames)
        # Each trace is its own shard: the traces come from different years, and a shard's
        # backtest folds are cut on its services' common clock (production's share one).
        size = 1
        jobs[key] = []
        for first in range(0, len(names), size):
            shard = {n: frames[n] for n in names[first : first + size]}
            shard_starts = {n: starts[n] for n in shard}
            path = (
                forecast_cache_path(cache_dir, profile, shard, shard_starts)
                if cache_dir is not None
                else None
            )
            jobs[key].append(
                _submit(
                    pool,
                    _cached_forecasts,
                    path,
                    shard,
                    shard_starts,
                    {n: spans[n] for n in shard},
                    profile.training,
                )
            )
    forecasts = {
        key: pd.concat([j.result() for j in shard_jobs]) for key, shard_jobs in jobs.items()
    }
    pending: dict[tuple[str, str, int], Any] = {}
    families: dict[str, dict[str, dict[str, int]]] = {}
    capacity = {t.name: t.capacity for t in traces}
    for profile in profiles:
        key = profile.forecast_key
        by_trace = dict(iter(forecasts[key].groupby(SERVICE, sort=False)))
        families[profile.name] = {}
        for name, start in starts.items():
            own = by_trace.get(name, forecasts[key].iloc[0:0])
            firsts = own.drop_duplicates("offset")
            families[profile.name][name] = {
                str(f): int(n) for f, n in firsts["family"].value_counts().items()
            }
            for delay in delays:
                pending[(profile.name, name, delay)] = _submit(
                    pool,
                    served_targets,
                    own,
                    start,
                    spans[name],
                    replay_config(profile, capacity[name], delay),
                    profile.tail_days,
                    frames_by_key[key][name],
                    profile.blend,
                )
    targets = {k: job.result() for k, job in pending.items()}
    return targets, families


# --------------------------------------------------------------------------------------------
# The benchmark


def last_week_need(trace: PreparedTrace, delay: int, target: float) -> np.ndarray:
    """Pods the load needed at ``target`` one week before each minute, the most over the next
    start-up delay (the ``last_week`` baseline's trigger)."""
    full = np.r_[trace.history.to_numpy(dtype=float), trace.window.to_numpy(dtype=float)]
    week = 7 * 24 * 60
    start = len(trace.history) - week
    earlier = full[max(start, 0) : max(start, 0) + len(trace.window) + delay]
    if start < 0:  # less than a week of history: the first minutes see the window's start
        earlier = np.r_[np.full(-start, full[0]), earlier][: len(trace.window) + delay]
    earlier = np.r_[earlier, np.full(len(trace.window) + delay - len(earlier), earlier[-1])]
    need = np.ceil(earlier / (trace.capacity * target) - 1e-9)
    ahead = pd.Series(need[::-1]).rolling(delay + 1, min_periods=1).max().to_numpy()[::-1]
    return ahead[: len(trace.window)].clip(MIN_REPLICAS, MAX_REPLICAS).astype(np.int64)


def replay_trace(
    trace: PreparedTrace,
    delay: int,
    forescale_served: Mapping[str, np.ndarray],
    cpu_targets: Mapping[str, float],
    hpa_target: float,
    behavior: HpaBehavior,
) -> tuple[dict[str, dict[str, Any]], dict[str, ReplayResult]]:
    """Replay every policy on one trace at one start-up delay.

    Args:
        trace: The trace.
        delay: Pod start-up delay in minutes.
        forescale_served: Profile -> the value the API served per minute.
        cpu_targets: Profile -> its ``cpu`` trigger target (``service_defaults.hpa``).
        hpa_target: The baselines' HPA target.
        behavior: The ScaledObject's behaviour (:func:`keda_behavior`).

    Returns:
        Figures per policy and the per-minute runs.
    """
    demand = trace.window.to_numpy(dtype=float)
    cap = trace.capacity
    need = np.ceil(demand / cap - 1e-9).astype(np.int64).clip(MIN_REPLICAS, MAX_REPLICAS)
    oracle = pd.Series(need[::-1]).rolling(delay + 1, min_periods=1).max().to_numpy()[::-1]
    history = trace.history.to_numpy(dtype=float)
    warm_minutes = HOLT_WINTERS["stored_seasons"] * 1440
    warm = np.ceil(history[-warm_minutes:] / (cap * hpa_target) - 1e-9).clip(
        MIN_REPLICAS, MAX_REPLICAS
    )
    predictor = HoltWintersReplicas(
        warm, 1440, HOLT_WINTERS["alpha"], HOLT_WINTERS["beta"], HOLT_WINTERS["gamma"]
    )
    start_hpa = math.ceil(demand[0] / (cap * hpa_target) - 1e-9)
    start_hpa = max(MIN_REPLICAS, min(MAX_REPLICAS, start_hpa))
    floor = np.full(len(demand), MIN_REPLICAS, dtype=np.int64)
    last_week = last_week_need(trace, delay, hpa_target)
    runs = {
        "hpa": simulate(demand, cap, delay, start_hpa, hpa_controller(demand, cap, hpa_target)),
        "keda_cpu": simulate(
            demand, cap, delay, start_hpa, keda_controller(floor, demand, cap, hpa_target, behavior)
        ),
        "last_week": simulate(
            demand,
            cap,
            delay,
            max(start_hpa, int(last_week[0])),
            keda_controller(last_week, demand, cap, hpa_target, behavior),
        ),
        "holt_winters": simulate(
            demand, cap, delay, start_hpa, hpa_controller(demand, cap, hpa_target, predictor)
        ),
        "static_peak": simulate(
            demand,
            cap,
            delay,
            PEAK_REPLICAS,
            direct_controller(np.full(len(demand), PEAK_REPLICAS)),
        ),
        "oracle": simulate(
            demand, cap, delay, int(oracle[0]), direct_controller(oracle.astype(np.int64))
        ),
    }
    for name, served in forescale_served.items():
        cpu_target = cpu_targets[name]
        start = max(int(served[0]), math.ceil(demand[0] / (cap * cpu_target) - 1e-9))
        runs[name] = simulate(
            demand,
            cap,
            delay,
            min(start, MAX_REPLICAS),
            keda_controller(served, demand, cap, cpu_target, behavior),
        )
    onsets = surge_onsets(demand)
    return {name: policy_figures(run, demand, cap, onsets) for name, run in runs.items()}, runs


def summarize(
    per_delay: Mapping[int, Mapping[str, Mapping[str, Mapping[str, Any]]]],
    profiles: Sequence[str],
) -> dict[str, Any]:
    """Totals over the traces per delay and policy, ratios to the HPA, and the targets' verdicts.

    The total median lead is the median over every surge of every trace (pooled). Per delay:
    ``totals[policy]``, ``per_trace[trace][policy]`` (the same as ``traces``), and per profile
    ``targets_met`` (the four targets, the last one: on every trace at most
    ``trace_short_over_hpa_max`` short minutes more than the HPA) and
    ``traces_short_over_hpa`` (trace -> its excess over that allowance).
    """
    policies = [*BASELINES, *profiles]
    summary: dict[str, Any] = {}
    for delay, traces in per_delay.items():
        totals: dict[str, dict[str, float]] = {}
        for policy in policies:
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
        verdicts = {}
        over = {}
        for name in profiles:
            fs = totals[name]
            over[name] = {
                trace: f[name]["short_minutes"] - f["hpa"]["short_minutes"]
                for trace, f in traces.items()
                if f[name]["short_minutes"]
                > f["hpa"]["short_minutes"] + TARGETS["trace_short_over_hpa_max"]
            }
            verdicts[name] = {
                "short_vs_hpa": bool(fs["short_vs_hpa"] <= TARGETS["short_vs_hpa_max"]),
                "pod_hours_vs_hpa": bool(fs["pod_hours_vs_hpa"] <= TARGETS["pod_hours_vs_hpa_max"]),
                "median_lead": bool(fs["median_lead_minutes"] >= TARGETS["median_lead_min"]),
                "every_trace_within_hpa": not over[name],
            }
        summary[str(delay)] = {
            "totals": totals,
            "per_trace": {trace: dict(figures) for trace, figures in traces.items()},
            "targets_met": verdicts,
            "traces_short_over_hpa": over,
        }
    return summary


def markdown_table(summary: Mapping[str, Any], profiles: Sequence[str]) -> str:
    """The benchmark's Markdown table (per delay: per trace and policy, then totals)."""
    policies = [*BASELINES, *profiles]
    lines: list[str] = []
    for delay, figures_of_delay in summary.items():
        lines += [
            f"### Pod start-up delay {delay} min",
            "",
            "| trace | policy | short min | pod-hours | actions | median lead (min) | surges |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for trace, figures in figures_of_delay["per_trace"].items():
            for policy in policies:
                f = figures[policy]
                lines.append(
                    f"| {trace} | {policy} | {f['short_minutes']} | {f['pod_hours']:.1f} | "
                    f"{f['scaling_actions']} | {f['median_lead_minutes']:.1f} | {f['surges']} |"
                )
        lines += ["", totals_table(figures_of_delay["totals"]), ""]
        for name, met in figures_of_delay["targets_met"].items():
            lines.append(f"{name} targets met at {delay} min: {met}")
        lines.append("")
    return "\n".join(lines)


def totals_table(totals: Mapping[str, Mapping[str, float]]) -> str:
    """One Markdown table of the totals per policy."""
    lines = [
        (
            "| policy | short min | % of HPA short | pod-hours | % of HPA pod-hours | actions "
            "| median lead (min) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for policy, f in totals.items():
        lines.append(
            f"| {policy} | {f['short_minutes']} | {100 * f['short_vs_hpa']:.1f} | "
            f"{f['pod_hours']:.1f} | {100 * f['pod_hours_vs_hpa']:.1f} | "
            f"{f['scaling_actions']} | {f['median_lead_minutes']:.1f} |"
        )
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
    hours = np.arange(len(trace.window)) / 60.0
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
    params_files: Sequence[Path] = (),
    delays: Sequence[int] = STARTUP_DELAYS_MINUTES,
    echo: Callable[[str], None] | None = None,
    shift_weeks: int = 0,
    only: Sequence[str] = (),
    n_jobs: int = 2,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the replay benchmark and report it as a Markdown table (and optional JSON/timeline/PNG).

    Args:
        data_dir: A folder laid out like ``shared/data`` (see :func:`discover_traces`).
        json_path: Write the figures here as JSON.
        timeline_path: Write the minute-by-minute replay here (``.parquet`` or ``.csv``): trace,
            startup_minutes, minute, demand and per policy ``<policy>_desired``/``<policy>_ready``.
        plots_dir: Write one PNG per trace here.
        params_files: The params profiles to replay (default: the repository's ``params.yaml``
            as ``forescale``).
        delays: Start-up delays in minutes to report.
        echo: Where to write the table; a rich console on standard output when ``None``.
        shift_weeks: Drop the last ``shift_weeks`` weeks of every trace first (see
            :func:`select_traces`).
        only: Replay only the traces whose name contains one of these strings (all when empty).
        n_jobs: Worker processes (the shards' forecasts, then the replays); 1 runs everything
            in this process.
        cache_dir: Cache the rolling forecasts here (keyed by training section and data).

    Returns:
        The figures: ``params_files`` (name, path, sha256 per profile), ``summary`` (per delay
        ``totals[policy]``, ``per_trace[trace][policy]``, ``targets_met[profile]``), ``traces``
        (per delay, trace and policy), ``families`` (publications per champion family),
        ``markdown``, ``shift_weeks``, ``skipped_traces``, ``seconds``.
    """
    started = time.perf_counter()
    profiles = default_profiles(params_files)
    names = [p.name for p in profiles]
    behavior = keda_behavior()
    hpa_target = profiles[0].service.hpa.target_utilization
    traces, skipped = select_traces(discover_traces(Path(data_dir)), shift_weeks, only)
    pool = ProcessPoolExecutor(max_workers=n_jobs) if n_jobs > 1 else None
    try:
        targets, families = forescale_targets(traces, profiles, delays, pool, cache_dir)
        cpu_targets = {p.name: p.service.hpa.target_utilization for p in profiles}
        replays = {
            (trace.name, delay): _submit(
                pool,
                replay_trace,
                trace,
                delay,
                {name: targets[(name, trace.name, delay)] for name in names},
                cpu_targets,
                hpa_target,
                behavior,
            )
            for trace in traces
            for delay in delays
        }
        replayed = {key: job.result() for key, job in replays.items()}
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    per_delay: dict[int, dict[str, dict[str, dict[str, Any]]]] = {d: {} for d in delays}
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
                        "minute": np.arange(len(trace.window)),
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
    summary = summarize(per_delay, names)
    table = markdown_table(summary, names)
    if skipped:
        table += "\n" + "\n".join(f"Left out {name}: {why}" for name, why in skipped.items())
    result: dict[str, Any] = {
        "params_files": [
            {"name": p.name, "path": str(p.path), "sha256": p.sha256} for p in profiles
        ],
        "profiles": {
            p.name: {
                "target": p.target,
                "tail_days": p.tail_days,
                "blend_with_persistence": p.blend,
                "families": list(p.training.families),
                "service_defaults": p.service.model_dump(),
            }
            for p in profiles
        },
        "families": families,
        "hpa_target": hpa_target,
        "traces": {str(d): v for d, v in per_delay.items()},
        "capacity_per_replica": {t.name: t.capacity for t in traces},
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
