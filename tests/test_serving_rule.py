"""The one serving rule (core.serving_rule): planned max over the start-up lead, fallback, bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from core.serving_rule import (
    clamp_replicas,
    fallback_replicas,
    is_stale,
    planned_max,
    planned_max_at,
)

NOW = datetime(2026, 11, 16, tzinfo=UTC)
STEPS = [(NOW + timedelta(minutes=5 * i), r) for i, r in enumerate([3, 9, 4, 20])]


def test_planned_max_covers_the_step_in_force_and_every_step_starting_within_the_lead() -> None:
    assert planned_max(STEPS, 300, NOW + timedelta(minutes=1), NOW + timedelta(minutes=3)) == 3
    assert planned_max(STEPS, 300, NOW + timedelta(minutes=3), NOW + timedelta(minutes=5)) == 9
    assert planned_max(STEPS, 300, NOW + timedelta(minutes=6), NOW + timedelta(minutes=16)) == 20


def test_planned_max_is_none_outside_the_schedule() -> None:
    assert planned_max(STEPS, 300, NOW - timedelta(hours=1), NOW - timedelta(seconds=1)) is None
    # the last step is in force for one step length, not forever
    assert planned_max(STEPS, 300, NOW + timedelta(minutes=19), NOW + timedelta(minutes=21)) == 20
    assert planned_max(STEPS, 300, NOW + timedelta(minutes=20), NOW + timedelta(hours=1)) is None
    assert planned_max([], 300, NOW, NOW) is None


def test_planned_max_at_many_instants_equals_one_at_a_time() -> None:
    rng = np.random.default_rng(5)
    replicas = rng.integers(1, 50, 30)
    steps = [(NOW + timedelta(minutes=5 * i), int(r)) for i, r in enumerate(replicas)]
    ts_us = np.arange(30, dtype=np.int64) * 300_000_000
    instants = np.arange(-10, 160, dtype=np.int64) * 60_000_000
    for lead_minutes in (0, 2, 5, 13):
        many = planned_max_at(ts_us, replicas, 300_000_000, instants, lead_minutes * 60_000_000)
        for instant, value in zip(instants, many, strict=True):
            start = NOW + timedelta(microseconds=int(instant))
            one = planned_max(steps, 300, start, start + timedelta(minutes=lead_minutes))
            assert value == (-1 if one is None else one)


def test_fallback_is_never_zero_and_never_below_min_replicas() -> None:
    assert fallback_replicas(None, 2, 10) == 2
    assert fallback_replicas(7, 2, 10) == 7
    assert fallback_replicas(70, 2, 10) == 10
    assert fallback_replicas(None, 0, 10) == 1  # min_replicas 0 is served as 1
    assert clamp_replicas(0, 0, 5) == 1
    assert clamp_replicas(9, 1, 5) == 5


def test_a_schedule_is_stale_only_after_its_validity() -> None:
    assert not is_stale(NOW, NOW)
    assert is_stale(NOW, NOW + timedelta(seconds=1))
