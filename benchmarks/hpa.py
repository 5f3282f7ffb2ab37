"""The Kubernetes Horizontal Pod Autoscaler controller, modelled for the replay benchmark.

Every rule cites the Kubernetes documentation, "Horizontal Pod Autoscaling"
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
  (section "Scaling Policies": the example of 80 -> 72 -> 64 replicas with 10 % per minute).
* Bounds: ``minReplicas`` / ``maxReplicas`` clamp the result.

Simplifications (stated in the benchmark report): the metric is the pods' average utilisation of
the replayed demand, seen with a delay (metrics-server scrapes every 60 s by default); the
``cpu-initialization-period`` and readiness probes are folded into the replay's start-up delay.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

SYNC_SECONDS = 15  # --horizontal-pod-autoscaler-sync-period default
TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance default
SCALE_DOWN_WINDOW_SECONDS = 300  # behavior.scaleDown.stabilizationWindowSeconds default
METRIC_DELAY_SECONDS = 60  # metrics-server --metric-resolution default (scrape interval)


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
            limits = []
            for policy in self.behavior.scale_up_policies:
                start = self._period_start(now, current, policy.period_seconds, +1)
                if policy.type == "Pods":
                    limits.append(start + policy.value)
                else:
                    limits.append(math.ceil(start * (1 + policy.value / 100) - 1e-9))
            return min(desired, max(limits)) if limits else desired
        if desired < current:
            limits = []
            for policy in self.behavior.scale_down_policies:
                start = self._period_start(now, current, policy.period_seconds, -1)
                if policy.type == "Pods":
                    limits.append(start - policy.value)
                else:
                    limits.append(int(start * (1 - policy.value / 100) + 1e-9))
            return max(desired, min(limits)) if limits else desired
        return desired
