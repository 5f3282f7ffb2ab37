"""The cluster simulator: the Kubernetes HPA, KEDA and pods that start up, minute by minute.

One engine for the product's shadow scorecard (:mod:`pipelines.scorecard`) and the replay
benchmark (``benchmarks/replay.py``): both replay a load under an autoscaling policy with
:func:`simulate` and score it with :func:`policy_figures`.

The HPA model cites the Kubernetes documentation, "Horizontal Pod Autoscaling"
(https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/), and the
``autoscaling/v2`` API reference of ``HorizontalPodAutoscalerBehavior`` / ``HPAScalingRules``
(https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/horizontal-pod-autoscaler-v2/):

* Sync period: the controller runs every 15 s (``--horizontal-pod-autoscaler-sync-period``,
  section "How does a HorizontalPodAutoscaler work?").
* Algorithm: ``desiredReplicas = ceil[currentReplicas * (currentMetricValue /
  desiredMetricValue)]``, computed over the pods that report a metric (section "Algorithm
  details").
* Tolerance: no scaling when the ratio is within 10 % of 1.0 (``--horizontal-pod-autoscaler-
  tolerance``, default 0.1; "Algorithm details").
* Not-yet-ready pods: when the ratio says "scale up", the ratio is recomputed assuming pods that
  are not yet ready use 0 % of the target; if the new ratio is within tolerance or reverses the
  direction, nothing changes ("Algorithm details").
* Stabilisation: scale-down uses the highest recommendation of the last 300 s; scale-up has no
  window ("Stabilization window"; ``HPAScalingRules.stabilizationWindowSeconds`` defaults 300 for
  scale down, 0 for scale up).
* Rate limits (``behavior`` defaults, section "Default Behavior"): scale up by at most
  ``max(100 %, 4 pods)`` per 15 s (``selectPolicy: Max``); scale down by up to 100 % per 15 s.
  Policies are applied against the replica count at the start of their ``periodSeconds``
  (section "Scaling Policies": the example of 80 -> 72 -> 64 replicas with 10 % per minute);
  ``selectPolicy: Min`` takes the policy allowing the smallest change, ``Disabled`` none.
* Bounds: ``minReplicas`` / ``maxReplicas`` clamp the result.

Simplifications: the metric is the pods' average utilisation of the replayed demand, seen with a
delay (metrics-server scrapes every 60 s by default); the ``cpu-initialization-period`` and
readiness probes are folded into the pods' start-up delay.

Cluster model (identical for every policy):

* time advances in 15 s ticks (the HPA sync period); the demand of a minute holds for its four
  ticks;
* a policy sets the desired replica count; new pods serve only after the start-up delay; removed
  pods go at once, pods still starting first;
* a minute is *under-provisioned* when its demand exceeds ``ready pods x capacity`` at any of its
  ticks;
* cost is pod-minutes of every pod that exists (starting or ready), reported as pod-hours;
* a *scaling action* is a tick at which the desired replica count changes.

Surge (for the lead figure): on the 10-minute trailing mean ``s`` of the demand, minute ``t`` is a
surge onset when ``s(t) >= 1.5 * b`` and ``s(t) - b >= 0.15 * peak``, with ``b`` the minimum of
``s`` over the 30 minutes before ``t`` and ``peak`` the window's peak demand; onsets are at least
60 minutes apart. The surge's level ``L`` is the maximum of ``s`` over ``[t, t + 10]``. A policy's
lead for a surge is how many minutes before ``t`` its ready capacity last reached ``L`` and stayed
there until ``t`` (positive: early), or minus the minutes after ``t`` until it reaches ``L``
(negative: late); both are capped at 60 minutes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pandas as pd

from core.settings import REPO_ROOT

if TYPE_CHECKING:
    from core.service_config import HpaSettings

SYNC_SECONDS = 15  # --horizontal-pod-autoscaler-sync-period default
TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance default
SCALE_DOWN_WINDOW_SECONDS = 300  # behavior.scaleDown.stabilizationWindowSeconds default
METRIC_DELAY_SECONDS = 60  # metrics-server --metric-resolution default (scrape interval)
TICKS_PER_MINUTE = 60 // SYNC_SECONDS
DEFAULT_MIN_REPLICAS = 1  # HorizontalPodAutoscalerSpec.minReplicas default
DEFAULT_MAX_REPLICAS = 100
SCALED_OBJECT = REPO_ROOT / "serving" / "deploy" / "scaledobject.yaml"

SURGE_SMOOTH_MINUTES = 10
SURGE_RATIO = 1.5
SURGE_MIN_RISE = 0.15
SURGE_BASELINE_MINUTES = 30
SURGE_GAP_MINUTES = 60
SURGE_LEVEL_MINUTES = 10
LEAD_CAP_MINUTES = 60

SelectPolicy = Literal["Max", "Min", "Disabled"]


@dataclass(frozen=True)
class ScalingPolicy:
    """One ``HPAScalingPolicy``: change allowed by ``type`` (``Pods``/``Percent``) per period."""

    type: str
    value: int
    period_seconds: int


@dataclass(frozen=True)
class HpaBehavior:
    """``spec.behavior`` of an HPA (defaults from the Kubernetes documentation)."""

    scale_up_policies: tuple[ScalingPolicy, ...] = (
        ScalingPolicy("Percent", 100, 15),
        ScalingPolicy("Pods", 4, 15),
    )
    scale_down_policies: tuple[ScalingPolicy, ...] = (ScalingPolicy("Percent", 100, 15),)
    scale_up_window_seconds: int = 0
    scale_down_window_seconds: int = SCALE_DOWN_WINDOW_SECONDS
    scale_up_select: SelectPolicy = "Max"
    scale_down_select: SelectPolicy = "Max"


def usage_ratio_replicas(
    ready_pods: int,
    unready_pods: int,
    current_value: float,
    target_value: float,
    tolerance: float = TOLERANCE,
) -> int:
    """Replicas the HPA algorithm recommends from one metric (before stabilisation/limits).

    Args:
        ready_pods: Pods reporting the metric.
        unready_pods: Pods that exist but are not ready yet.
        current_value: Average metric value over the ready pods (e.g. utilisation 0.9).
        target_value: Target metric value (e.g. 0.7).
        tolerance: Ratio band around 1.0 within which nothing changes.

    Returns:
        The recommended replica count; the current count (ready + unready) when unchanged.
    """
    current = ready_pods + unready_pods
    if ready_pods <= 0:
        return current
    ratio = current_value / target_value
    if abs(ratio - 1.0) <= tolerance:
        return current
    if ratio > 1.0 and unready_pods > 0:
        # Not-yet-ready pods are assumed to use 0 % of the target during a scale-up.
        ratio = current_value * ready_pods / (current * target_value)
        if ratio <= 1.0 or abs(ratio - 1.0) <= tolerance:
            return current
        return math.ceil(ratio * current - 1e-9)
    return math.ceil(ratio * ready_pods - 1e-9)


@dataclass
class HpaController:
    """A stateful HPA: call :meth:`sync` every ``SYNC_SECONDS`` with the observed state.

    Args:
        min_replicas: ``spec.minReplicas``.
        max_replicas: ``spec.maxReplicas``.
        target_utilization: ``averageUtilization`` target as a fraction (0.7 = 70 %).
        behavior: ``spec.behavior``.
        tolerance: The controller's tolerance.
    """

    min_replicas: int
    max_replicas: int
    target_utilization: float
    behavior: HpaBehavior = field(default_factory=HpaBehavior)
    tolerance: float = TOLERANCE
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque, init=False)
    _events: deque[tuple[float, int]] = field(default_factory=deque, init=False)

    def recommend(self, ready_pods: int, unready_pods: int, utilization: float) -> int:
        """The raw recommendation (algorithm + tolerance), before stabilisation and limits."""
        return usage_ratio_replicas(
            ready_pods, unready_pods, utilization, self.target_utilization, self.tolerance
        )

    def sync(self, now: float, current_replicas: int, recommendation: int) -> int:
        """Apply stabilisation, rate limits and bounds to a recommendation; record the change.

        Args:
            now: Seconds since the start of the replay.
            current_replicas: ``spec.replicas`` of the workload now.
            recommendation: The raw recommendation (:meth:`recommend`, or a predictive one).

        Returns:
            The new ``spec.replicas``.
        """
        desired = self._stabilize(now, current_replicas, recommendation)
        desired = self._rate_limit(now, current_replicas, desired)
        desired = max(self.min_replicas, min(self.max_replicas, desired))
        if desired != current_replicas:
            self._events.append((now, desired - current_replicas))
        return desired

    def _stabilize(self, now: float, current: int, recommendation: int) -> int:
        self._recommendations.append((now, recommendation))
        horizon = max(
            self.behavior.scale_down_window_seconds, self.behavior.scale_up_window_seconds
        )
        while self._recommendations and self._recommendations[0][0] < now - horizon:
            self._recommendations.popleft()
        up = down = recommendation
        for stamp, value in self._recommendations:
            if stamp >= now - self.behavior.scale_up_window_seconds:
                up = min(up, value)
            if stamp >= now - self.behavior.scale_down_window_seconds:
                down = max(down, value)
        result = current
        result = max(result, up)
        result = min(result, down)
        return result

    def _period_start(self, now: float, current: int, period: int, direction: int) -> int:
        changed = sum(
            delta for stamp, delta in self._events if stamp > now - period and delta * direction > 0
        )
        return current - changed

    def _rate_limit(self, now: float, current: int, desired: int) -> int:
        longest = max(
            [
                p.period_seconds
                for p in self.behavior.scale_up_policies + self.behavior.scale_down_policies
            ],
            default=0,
        )
        while self._events and self._events[0][0] <= now - longest:
            self._events.popleft()
        if desired > current:
            if self.behavior.scale_up_select == "Disabled":
                return current
            limits = []
            for policy in self.behavior.scale_up_policies:
                start = self._period_start(now, current, policy.period_seconds, +1)
                if policy.type == "Pods":
                    limits.append(start + policy.value)
                else:
                    limits.append(math.ceil(start * (1 + policy.value / 100) - 1e-9))
            if not limits:
                return desired
            allowed = max(limits) if self.behavior.scale_up_select == "Max" else min(limits)
            return min(desired, allowed)
        if desired < current:
            if self.behavior.scale_down_select == "Disabled":
                return current
            limits = []
            for policy in self.behavior.scale_down_policies:
                start = self._period_start(now, current, policy.period_seconds, -1)
                if policy.type == "Pods":
                    limits.append(start - policy.value)
                else:
                    limits.append(int(start * (1 - policy.value / 100) + 1e-9))
            if not limits:
                return desired
            allowed = min(limits) if self.behavior.scale_down_select == "Max" else max(limits)
            return max(desired, allowed)
        return desired


@dataclass
class ReplayResult:
    """Per-minute outcome of one policy on one trace."""

    desired: np.ndarray  # desired replicas at the end of each minute
    ready: np.ndarray  # fewest ready replicas during each minute
    pod_minutes: float
    actions: int
    pod_ticks: np.ndarray | None = None  # pods (starting or ready) summed over each minute's ticks
    minute_actions: np.ndarray | None = None  # scaling actions within each minute


Controller = Callable[[int, int, int, int], int]
"""``controller(tick, minute, ready, starting) -> desired replicas`` (called every tick)."""


def simulate(
    demand: np.ndarray,
    capacity: float,
    delay_minutes: float,
    initial: int,
    controller: Controller,
) -> ReplayResult:
    """Replay one policy on the cluster model.

    Args:
        demand: Load per minute of the window.
        capacity: Load one ready pod serves.
        delay_minutes: Pod start-up delay (rounded up to the 15 s tick).
        initial: Pods ready at the start.
        controller: The policy, called every 15 s tick.

    Returns:
        The per-minute desired and ready replicas, pod-minutes and scaling actions.
    """
    minutes = len(demand)
    delay_ticks = math.ceil(delay_minutes * TICKS_PER_MINUTE - 1e-9)
    ready = initial
    starting: deque[list[int]] = deque()  # [ready_tick, count], oldest first
    starting_count = 0
    desired_out = np.zeros(minutes, dtype=np.int64)
    ready_out = np.zeros(minutes, dtype=np.int64)
    ticks_out = np.zeros(minutes, dtype=np.int64)
    actions_out = np.zeros(minutes, dtype=np.int64)
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
                actions_out[minute] += 1
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
            ticks_out[minute] += ready + starting_count
            fewest = ready if fewest is None else min(fewest, ready)
        desired_out[minute] = desired
        ready_out[minute] = ready if fewest is None else fewest
    return ReplayResult(
        desired_out, ready_out, pod_ticks / TICKS_PER_MINUTE, actions, ticks_out, actions_out
    )


def observed_load(demand: np.ndarray, tick: int) -> float:
    """Load the metrics pipeline reports at ``tick`` (the minute ``METRIC_DELAY_SECONDS`` ago)."""
    minute = (tick * SYNC_SECONDS - METRIC_DELAY_SECONDS) // 60
    return float(demand[max(minute, 0)])


class ReplicaPredictor(Protocol):
    """A predictive add-on to the HPA (e.g. the Holt-Winters PHPA): fed the HPA's evaluation
    every minute, it predicts the next one."""

    def update(self, value: float) -> None:
        """Add one evaluation."""

    def predict(self) -> int:
        """Replicas predicted for the next evaluation."""


def hpa_controller(
    demand: np.ndarray,
    capacity: float,
    target: float,
    predictor: ReplicaPredictor | None = None,
    *,
    min_replicas: int = DEFAULT_MIN_REPLICAS,
    max_replicas: int = DEFAULT_MAX_REPLICAS,
    behavior: HpaBehavior | None = None,
    tolerance: float = TOLERANCE,
) -> Controller:
    """The Kubernetes HPA (optionally with a Holt-Winters replica prediction, as the PHPA does).

    Args:
        demand: Load per minute of the window.
        capacity: Load one pod serves at 100 % utilisation.
        target: The HPA's target utilisation.
        predictor: When given, every minute the HPA's recommendation is stored as an evaluation
            and the recommendation becomes ``max(hpa, predicted next-minute replicas)``.
        min_replicas: ``spec.minReplicas``.
        max_replicas: ``spec.maxReplicas``.
        behavior: ``spec.behavior`` (the Kubernetes defaults when ``None``).
        tolerance: The controller's tolerance.

    Returns:
        The controller.
    """
    hpa = HpaController(
        min_replicas, max_replicas, target, behavior or HpaBehavior(), tolerance=tolerance
    )
    state: dict[str, int | None] = {"replicas": None}

    def control(tick: int, minute: int, ready: int, starting: int) -> int:
        current = ready + starting if state["replicas"] is None else state["replicas"]
        utilization = observed_load(demand, tick) / (max(ready, 1) * capacity)
        recommendation = hpa.recommend(ready, starting, utilization)
        if predictor is not None:
            if tick % TICKS_PER_MINUTE == 0:
                predictor.update(recommendation)
            recommendation = max(recommendation, predictor.predict())
        replicas = hpa.sync(tick * SYNC_SECONDS, current, recommendation)
        state["replicas"] = replicas
        return replicas

    return control


def keda_behavior(manifest: Path = SCALED_OBJECT) -> HpaBehavior:
    """The ``behavior`` of the shipped KEDA ScaledObject, as the HPA model's.

    Args:
        manifest: The YAML with the ``ScaledObject``.

    Returns:
        Its scale-up/scale-down policies and stabilisation windows.

    Raises:
        ValueError: If the file holds no ScaledObject with a behavior.
    """
    import yaml

    for document in yaml.safe_load_all(Path(manifest).read_text()):
        if not isinstance(document, dict) or document.get("kind") != "ScaledObject":
            continue
        try:
            behavior = document["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
            up, down = behavior["scaleUp"], behavior["scaleDown"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"{manifest}: the ScaledObject has no behavior ({err})") from err

        def policies(rules: dict[str, Any]) -> tuple[ScalingPolicy, ...]:
            return tuple(
                ScalingPolicy(p["type"], int(p["value"]), int(p["periodSeconds"]))
                for p in rules["policies"]
            )

        return HpaBehavior(
            scale_up_policies=policies(up),
            scale_down_policies=policies(down),
            scale_up_window_seconds=int(up.get("stabilizationWindowSeconds", 0)),
            scale_down_window_seconds=int(down.get("stabilizationWindowSeconds", 300)),
            scale_up_select=up.get("selectPolicy", "Max"),
            scale_down_select=down.get("selectPolicy", "Max"),
        )
    raise ValueError(f"{manifest}: no ScaledObject found")


def keda_controller(
    served_per_minute: np.ndarray,
    demand: np.ndarray,
    capacity: float,
    cpu_target: float,
    behavior: HpaBehavior,
    *,
    min_replicas: int = DEFAULT_MIN_REPLICAS,
    max_replicas: int = DEFAULT_MAX_REPLICAS,
) -> Controller:
    """KEDA's HPA: the larger of the ``metrics-api`` and ``cpu`` triggers, then ``behavior``.

    ``autoscaling/v2`` ``HorizontalPodAutoscalerSpec.metrics``: "the maximum replica count
    across all metrics will be used"; the ``cpu`` trigger sees the load ``METRIC_DELAY_SECONDS``
    late.

    Args:
        served_per_minute: The value the ``metrics-api`` trigger reads, per minute.
        demand: Load per minute (for the ``cpu`` trigger).
        capacity: Load one pod serves at 100 % utilisation.
        cpu_target: The ``cpu`` trigger's target utilisation.
        behavior: The ScaledObject's ``behavior``.
        min_replicas: The ScaledObject's ``minReplicaCount``.
        max_replicas: Its ``maxReplicaCount``.

    Returns:
        The controller.
    """
    hpa = HpaController(min_replicas, max_replicas, cpu_target, behavior)
    state: dict[str, int | None] = {"replicas": None}

    def control(tick: int, minute: int, ready: int, starting: int) -> int:
        current = ready + starting if state["replicas"] is None else state["replicas"]
        utilization = observed_load(demand, tick) / (max(ready, 1) * capacity)
        proposal = max(int(served_per_minute[minute]), hpa.recommend(ready, starting, utilization))
        replicas = hpa.sync(tick * SYNC_SECONDS, current, proposal)
        state["replicas"] = replicas
        return replicas

    return control


def direct_controller(desired_per_minute: np.ndarray) -> Controller:
    """Apply a per-minute replica target as it is (static and oracle baselines)."""

    def control(tick: int, minute: int, ready: int, starting: int) -> int:
        return int(desired_per_minute[minute])

    return control


def hpa_behavior(settings: HpaSettings) -> HpaBehavior:
    """A service's HPA ``behavior`` (``hpa.scale_up`` / ``hpa.scale_down`` of its settings).

    Args:
        settings: The service's :class:`core.service_config.HpaSettings`.

    Returns:
        The behaviour the HPA model runs.
    """

    def policies(rules: Any) -> tuple[ScalingPolicy, ...]:
        return tuple(ScalingPolicy(p.type, p.value, p.period_seconds) for p in rules.policies)

    return HpaBehavior(
        scale_up_policies=policies(settings.scale_up),
        scale_down_policies=policies(settings.scale_down),
        scale_up_window_seconds=settings.scale_up.stabilization_window_seconds,
        scale_down_window_seconds=settings.scale_down.stabilization_window_seconds,
        scale_up_select=settings.scale_up.select_policy,
        scale_down_select=settings.scale_down.select_policy,
    )


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
) -> dict[str, Any]:
    """Under-provisioned minutes, pod-hours, scaling actions and surge leads (with their median)."""
    return window_figures(result, demand, capacity, onsets, 0, len(demand))


def window_figures(
    result: ReplayResult,
    demand: np.ndarray,
    capacity: float,
    onsets: list[tuple[int, float]],
    start: int,
    stop: int,
) -> dict[str, Any]:
    """:func:`policy_figures` of the minutes ``[start, stop)`` of a replay (e.g. one day).

    Args:
        result: The replay (from :func:`simulate`).
        demand: Load per minute of the whole replay.
        capacity: Load one ready pod serves.
        onsets: Surge onsets of the whole replay (:func:`surge_onsets`); those in the minutes
            count, their leads measured on the whole replay.
        start: First minute.
        stop: Minute after the last.

    Returns:
        ``short_minutes``, ``pod_hours``, ``scaling_actions``, ``median_lead_minutes`` (NaN
        without a surge), ``surges`` and ``leads_minutes``.

    Raises:
        ValueError: If the minutes are not within the replay.
    """
    if not 0 <= start <= stop <= len(demand):
        raise ValueError(f"minutes [{start}, {stop}) are not within the {len(demand)} replayed")
    ready_capacity = result.ready * capacity
    leads = [surge_lead(ready_capacity, t, level) for t, level in onsets if start <= t < stop]
    whole = start == 0 and stop == len(demand)
    if whole or result.pod_ticks is None or result.minute_actions is None:
        if not whole:
            raise ValueError("per-minute figures need a replay from simulate()")
        pod_minutes, actions = result.pod_minutes, int(result.actions)
    else:
        pod_minutes = float(result.pod_ticks[start:stop].sum()) / TICKS_PER_MINUTE
        actions = int(result.minute_actions[start:stop].sum())
    short = demand[start:stop] > ready_capacity[start:stop] * (1 + 1e-12)
    return {
        "short_minutes": int(np.sum(short)),
        "pod_hours": round(pod_minutes / 60.0, 2),
        "scaling_actions": actions,
        "median_lead_minutes": float(np.median(leads)) if leads else float("nan"),
        "surges": len(leads),
        "leads_minutes": leads,
    }
