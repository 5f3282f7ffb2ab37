"""The go-live gate: when a service moves between ``shadow`` and ``active``.

A ``shadow`` service has its schedules published and scored while the API serves it the
reactive floor; an ``active`` one is served its schedule. From the service's scorecard days
(:class:`core.scorecard.ScorecardDay`, newest first):

* ``shadow -> active`` after ``gate.pass_days`` consecutive passing days
  (:func:`core.scorecard.day_passes`: short minutes at most the HPA's, pod-hours at most the
  HPA's x (1 + ``gate.pod_hour_budget``));
* ``active -> shadow`` after ``gate.fail_days`` consecutive failing days (days that are
  evidence but do not pass).

Only days served mostly from published schedules are evidence
(:func:`core.scorecard.is_evidence`); a day walked forward by simulation ends a run.

Consecutive means consecutive UTC calendar days ending with the newest day given: a missing day,
or a day without figures (``not_enough_history``), ends both runs. Which mode is served is
:func:`effective_mode`: with ``gate.auto`` off, ``params.yaml``'s ``mode`` alone; with it on, the
gate's last recorded move, or ``params.yaml``'s ``mode`` before the first one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from core.params import GateSection
from core.scorecard import FORESCALE, HPA, ScorecardDay, day_passes, is_evidence
from core.service_config import ACTIVE, SHADOW, Mode


@dataclass(frozen=True)
class GateDecision:
    """A move the gate decided for one service.

    Attributes:
        mode: The mode the service moves to.
        reason: Why, in words (the days and the figures behind the move).
    """

    mode: Mode
    reason: str


def day_fails(card: ScorecardDay, pod_hour_budget: float) -> bool:
    """Whether a scorecard day counts toward going back to shadow: evidence, and not passing.

    Args:
        card: The day.
        pod_hour_budget: ``gate.pod_hour_budget``.

    Returns:
        True if the day fails (a day without figures, or mostly walked forward rather than
        published, neither passes nor fails: :func:`core.scorecard.is_evidence`).
    """
    return is_evidence(card) and not day_passes(card, pod_hour_budget)


def _newest_per_day(cards: Sequence[ScorecardDay]) -> list[ScorecardDay]:
    """One card per day (the latest generated), newest day first."""
    by_day: dict = {}
    for card in cards:
        kept = by_day.get(card.day)
        if kept is None or card.generated_at > kept.generated_at:
            by_day[card.day] = card
    return [by_day[day] for day in sorted(by_day, reverse=True)]


def run_of_days(
    cards: Sequence[ScorecardDay], counts: Callable[[ScorecardDay], bool]
) -> list[ScorecardDay]:
    """The newest consecutive calendar days for which ``counts`` holds, newest first.

    Args:
        cards: Scorecard days of one service, in any order.
        counts: The test a day must pass to extend the run.

    Returns:
        The run (empty when the newest day does not count).
    """
    run: list[ScorecardDay] = []
    for card in _newest_per_day(cards):
        if run and card.day != run[-1].day - timedelta(days=1):
            break
        if not counts(card):
            break
        run.append(card)
    return run


def streaks(cards: Sequence[ScorecardDay], pod_hour_budget: float) -> tuple[int, int]:
    """Consecutive passing and failing days ending with the newest day (:func:`run_of_days`).

    Args:
        cards: Scorecard days of one service.
        pod_hour_budget: ``gate.pod_hour_budget``.

    Returns:
        ``(passing_days, failing_days)``; at most one of them is above 0.
    """
    passing = run_of_days(cards, lambda card: day_passes(card, pod_hour_budget))
    failing = run_of_days(cards, lambda card: day_fails(card, pod_hour_budget))
    return len(passing), len(failing)


def _figures(card: ScorecardDay, pod_hour_budget: float) -> str:
    """One day's comparison with the HPA, in words."""
    if card.status != "scored" or HPA not in card.policies or FORESCALE not in card.policies:
        return f"{card.day}: no figures ({card.reason or card.status})"
    hpa, ours = card.policies[HPA], card.policies[FORESCALE]
    return (
        f"{card.day}: {ours.short_minutes} short minutes vs the HPA's {hpa.short_minutes}, "
        f"{ours.pod_hours:.1f} pod-hours vs the HPA's {hpa.pod_hours:.1f} "
        f"(budget x {1 + pod_hour_budget:.2f})"
    )


def next_mode(
    current: Mode, recent_cards: Sequence[ScorecardDay], gate: GateSection
) -> GateDecision | None:
    """The gate's move for one service, if any.

    Args:
        current: The mode the service is in.
        recent_cards: Its recent scorecard days (any order; one per day is used, the latest
            generated).
        gate: The gate settings (``pass_days``, ``fail_days``, ``pod_hour_budget``).

    Returns:
        The move, or None when the service stays where it is.

    Raises:
        ValueError: If ``current`` is not a mode, or the cards are of several services.
    """
    if current not in (SHADOW, ACTIVE):
        raise ValueError(f"unknown mode {current!r}: expected {SHADOW!r} or {ACTIVE!r}")
    services = {card.service for card in recent_cards}
    if len(services) > 1:
        raise ValueError(f"scorecards of several services given: {sorted(services)}")
    budget = gate.pod_hour_budget
    if current == SHADOW:
        run = run_of_days(recent_cards, lambda card: day_passes(card, budget))
        if len(run) < gate.pass_days:
            return None
        run = run[: gate.pass_days]
        return GateDecision(
            ACTIVE,
            f"{gate.pass_days} consecutive passing days ({run[-1].day} to {run[0].day}): "
            f"short minutes at most the HPA's and pod-hours at most the HPA's x "
            f"{1 + budget:.2f}; latest {_figures(run[0], budget)}",
        )
    run = run_of_days(recent_cards, lambda card: day_fails(card, budget))
    if len(run) < gate.fail_days:
        return None
    run = run[: gate.fail_days]
    return GateDecision(
        SHADOW,
        f"{gate.fail_days} consecutive failing days ({run[-1].day} to {run[0].day}); "
        f"latest {_figures(run[0], budget)}",
    )


def effective_mode(configured: Mode, recorded: Mode | None, auto: bool) -> Mode:
    """The mode a service is served in.

    Args:
        configured: Its ``mode`` in ``params.yaml``.
        recorded: The gate's last recorded move for it (None before the first).
        auto: ``gate.auto``.

    Returns:
        ``recorded`` when the gate is on and has moved the service, else ``configured``.
    """
    return recorded if auto and recorded is not None else configured
