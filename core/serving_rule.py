"""The serving rule: which replica count to serve now from a published schedule.

One rule for the API (``serving.recommend``) and for the replay benchmark (``benchmarks.replay``):

* A schedule is a list of steps ``(ts_i, replicas_i)``; step ``i`` is in force over
  ``[ts_i, ts_{i+1})``, the last one over ``[ts_last, ts_last + step)``.
* The planned value at ``now`` is the largest replica count in force at any instant of
  ``[now, now + lead]``, ``lead`` being the pod start-up time: a pod requested now is ready at
  the window's end (:func:`planned_max`, :func:`planned_max_at` for many instants at once).
* A schedule is stale once ``now > valid_until`` (:func:`is_stale`).
* The fallback, when no usable schedule exists, is ``max(reactive floor, min_replicas)``
  (:func:`fallback_replicas`); the reactive floor is what the live load is known to need, 0 when
  nothing is known.
* Every served value is clamped to ``[min_replicas, max_replicas]`` (:func:`clamp_replicas`),
  with ``min_replicas`` at least 1: an autoscaler reading it never scales to zero because of
  missing data.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np


def clamp_replicas(value: int, min_replicas: int, max_replicas: int) -> int:
    """A replica count within the service's bounds, never below 1.

    Args:
        value: The proposed count.
        min_replicas: The service's fewest pods (0 is taken as 1).
        max_replicas: The service's most pods.

    Returns:
        ``min(max(value, min_replicas, 1), max_replicas)`` (at least 1).
    """
    lowest = max(int(min_replicas), 1)
    return max(min(max(int(value), lowest), int(max_replicas)), 1)


def fallback_replicas(floor: int | None, min_replicas: int, max_replicas: int) -> int:
    """The safe value when no usable schedule exists: ``max(floor, min_replicas)``, clamped.

    Args:
        floor: The last known reactive floor (pods the live load needed), or ``None``.
        min_replicas: The service's fewest pods.
        max_replicas: The service's most pods.

    Returns:
        The replicas to serve (at least 1).
    """
    return clamp_replicas(floor if floor is not None else 0, min_replicas, max_replicas)


def is_stale(valid_until: datetime, now: datetime) -> bool:
    """Whether a schedule valid until ``valid_until`` is stale at ``now``."""
    return now > valid_until


def planned_max(
    steps: Sequence[tuple[datetime, int]], step_seconds: float, start: datetime, end: datetime
) -> int | None:
    """Largest replica count a schedule plans at any instant of ``[start, end]``.

    Args:
        steps: ``(ts, replicas)`` sorted by ``ts`` (aware datetimes).
        step_seconds: Length of the last step.
        start: Window start.
        end: Window end, not before ``start``.

    Returns:
        The maximum, or ``None`` if no step is in force anywhere in the window.
    """
    if not steps:
        return None
    epoch = steps[0][0]
    offsets = np.array([(ts - epoch) / timedelta(microseconds=1) for ts, _ in steps], np.int64)
    replicas = np.array([count for _, count in steps], dtype=np.int64)
    value = planned_max_at(
        offsets,
        replicas,
        int(step_seconds * 1_000_000),
        np.array([(start - epoch) / timedelta(microseconds=1)], dtype=np.int64),
        int((end - start) / timedelta(microseconds=1)),
    )[0]
    return None if value < 0 else int(value)


def planned_max_at(
    ts_us: np.ndarray, replicas: np.ndarray, step_us: int, instants_us: np.ndarray, lead_us: int
) -> np.ndarray:
    """:func:`planned_max` of one schedule over ``[instant, instant + lead]`` at many instants.

    Args:
        ts_us: Step starts in microseconds, sorted ascending.
        replicas: Replicas per step.
        step_us: Length of the last step in microseconds.
        instants_us: The instants (microseconds, same epoch as ``ts_us``).
        lead_us: The window length (the pod start-up time) in microseconds.

    Returns:
        One value per instant; -1 where no step is in force anywhere in its window.
    """
    ts_us = np.asarray(ts_us, dtype=np.int64)
    replicas = np.asarray(replicas, dtype=np.int64)
    instants_us = np.asarray(instants_us, dtype=np.int64)
    served = np.full(len(instants_us), -1, dtype=np.int64)
    if not len(ts_us):
        return served
    firsts = np.maximum(np.searchsorted(ts_us, instants_us, side="right") - 1, 0)
    stops = np.searchsorted(ts_us, instants_us + lead_us, side="right")
    last_end = ts_us[-1] + step_us
    for i, (first, stop) in enumerate(zip(firsts, stops, strict=True)):
        if stop > first and (first < len(ts_us) - 1 or last_end > instants_us[i]):
            served[i] = replicas[first:stop].max()
    return served


def next_window_change(
    ts_us: Sequence[int], step_us: int, instant_us: int, lead_us: int
) -> int | None:
    """The first instant after ``instant_us`` at which :func:`planned_max_at` may answer otherwise.

    The steps in force over ``[instant, instant + lead]`` change only when a step start enters
    the window (at ``start - lead``), when the step in force at ``instant`` ends (at the next
    start), or when the last step ends (at ``last start + step``). The earliest of these after
    ``instant`` is returned; until then every instant gets the same answer.

    Args:
        ts_us: Step starts in microseconds, sorted ascending.
        step_us: Length of the last step in microseconds.
        instant_us: The instant asked about (microseconds, same epoch as ``ts_us``).
        lead_us: The window length (the pod start-up time) in microseconds.

    Returns:
        That instant in microseconds, or None when the answer never changes again.
    """
    if not len(ts_us):
        return None
    changes = []
    entering = bisect_right(ts_us, instant_us + lead_us)
    if entering < len(ts_us):
        changes.append(ts_us[entering] - lead_us)
    leaving = bisect_right(ts_us, instant_us)
    if leaving < len(ts_us):
        changes.append(ts_us[leaving])
    last_end = ts_us[-1] + step_us
    if last_end > instant_us:
        changes.append(last_end)
    return min(changes) if changes else None
