"""The shadow scorecard's record and the go-live gate's day verdict.

A scorecard day compares, for one service and one UTC day, what its own autoscaler (the HPA)
did on its stored telemetry with what Forescale served or would have served. The scorecard stage
(``pipelines/scorecard.py``) writes these records, the store keeps them, the API returns them and
the gate (:func:`day_passes`) reads them.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

HPA = "hpa"
FORESCALE = "forescale"
"""What Forescale served: its published schedules where there were any, the shipped profile
walked forward where nothing was published (see :attr:`PolicyFigures.source`)."""
LAST_WEEK = "last_week"
STATIC_PEAK = "static_peak"
POLICIES: tuple[str, ...] = (HPA, FORESCALE, LAST_WEEK, STATIC_PEAK)


class PolicyFigures(BaseModel):
    """One policy's figures for one service and day.

    Attributes:
        short_minutes: Minutes the ready pods could not carry the load.
        pod_hours: Ready-pod hours.
        scaling_actions: Changes of the desired replica count.
        median_lead_minutes: Median minutes capacity was in place before the day's surges
            (``None`` without a surge).
        surges: Surges detected in the day's load.
        p50_coverage: Share of the day's steps whose load was at or below the forecast p50
            (Forescale only, ``None`` otherwise).
        p90_coverage: Same for p90.
        source: For Forescale, the share of the day's minutes served from published schedules
            (the rest walked forward with the shipped profile); ``None`` for baselines.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    short_minutes: int = Field(ge=0)
    pod_hours: float = Field(ge=0)
    scaling_actions: int = Field(ge=0)
    median_lead_minutes: float | None = None
    surges: int = Field(default=0, ge=0)
    p50_coverage: float | None = Field(default=None, ge=0, le=1)
    p90_coverage: float | None = Field(default=None, ge=0, le=1)
    source: float | None = Field(default=None, ge=0, le=1)


class ScorecardDay(BaseModel):
    """The scorecard of one service for one UTC day.

    Attributes:
        service: The service.
        day: The UTC day scored.
        generated_at: When the scorecard stage wrote it (UTC).
        status: ``scored``, or ``not_enough_history`` (cold start: no figures).
        reason: Why the status, e.g. ``"not enough history (2.0 of 4 days)"``.
        history_days: Days of telemetry the service had.
        needed_days: Days the model needs before it is trained.
        policies: Policy name (:data:`POLICIES`) -> its figures; empty unless scored.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str
    day: date
    generated_at: datetime
    status: Literal["scored", "not_enough_history"]
    reason: str = ""
    history_days: float = Field(ge=0)
    needed_days: float = Field(ge=0)
    policies: dict[str, PolicyFigures] = Field(default_factory=dict)


MIN_PUBLISHED_SHARE = 0.9
"""A day is evidence for the gate only when at least this share of its minutes was served from
schedules Forescale really published (the rest walked forward is a simulation of them)."""


def is_evidence(card: ScorecardDay) -> bool:
    """Whether a scorecard day can move the gate: scored, with the HPA's and Forescale's figures,
    and Forescale's mostly from published schedules (:data:`MIN_PUBLISHED_SHARE`).

    Args:
        card: The day.

    Returns:
        True if the day counts, passing or failing.
    """
    if card.status != "scored" or HPA not in card.policies or FORESCALE not in card.policies:
        return False
    share = card.policies[FORESCALE].source
    return share is not None and share >= MIN_PUBLISHED_SHARE


def day_passes(card: ScorecardDay, pod_hour_budget: float) -> bool:
    """Whether a scorecard day counts toward going live.

    It passes when it is evidence (:func:`is_evidence`) and Forescale ran short no longer than
    the HPA and used at most the HPA's pod-hours × (1 + ``pod_hour_budget``).

    Args:
        card: The day.
        pod_hour_budget: Extra pod-hours allowed, as a share of the HPA's (``gate.pod_hour_budget``).

    Returns:
        True if the day passes.
    """
    if not is_evidence(card):
        return False
    hpa, ours = card.policies[HPA], card.policies[FORESCALE]
    return (
        ours.short_minutes <= hpa.short_minutes
        and ours.pod_hours <= hpa.pod_hours * (1.0 + pod_hour_budget) + 1e-9
    )
