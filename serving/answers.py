"""Recommendations kept ready to send: the encoded answer of each service and until when it holds.

``GET .../recommendation`` is what KEDA polls. Its answer only changes when the schedule, the
live floor, the service's settings, its gate move or its cold start change, or at an instant
known in advance
(:func:`serving.recommend.recommendation_expires_at`): a step entering or leaving the start-up
window, the schedule turning stale, the live floor ageing out. So the answer is computed once by
:func:`serving.recommend.recommend`, encoded, and sent again as long as the view still holds the
very same plan, floor and settings and that instant has not come; only its ``ts`` is filled in
per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from core.service_config import ServiceConfig
from serving.plans import ServicePlan
from serving.schemas import Recommendation
from serving.store import ColdStart, FloorReading, ModeChange

_TS_KEY = b',"ts":"'


@dataclass(frozen=True, slots=True)
class ReadyAnswer:
    """One service's encoded recommendation and what it was computed from.

    Attributes:
        plan: The plan it was computed from (None without one).
        floor: The live floor it was computed from (None without one).
        config: The service's settings it was computed with.
        last_move: The go-live gate's last move it was computed with (None without one).
        cold_start: The cold start record it was computed with (None without one).
        expires_at: First instant it may no longer hold; None when only a change of the inputs
            ends it.
        head: The JSON up to the ``ts`` value.
        tail: The JSON after the ``ts`` value.
        generated_at: When the served schedule was computed (for the schedule-age gauge).
        age_gauge: The service's schedule-age gauge.
        fallback_counter: The service's fallback counter when the answer is a fallback.
    """

    plan: ServicePlan | None
    floor: FloorReading | None
    config: ServiceConfig
    last_move: ModeChange | None
    cold_start: ColdStart | None
    expires_at: datetime | None
    head: bytes
    tail: bytes
    generated_at: datetime | None
    age_gauge: Any
    fallback_counter: Any | None


class ReadyAnswers:
    """The ready answers of all services that were asked about."""

    def __init__(self) -> None:
        self._answers: dict[str, ReadyAnswer] = {}
        self._instant_json = TypeAdapter(datetime).dump_json

    def keep(
        self,
        result: Recommendation,
        plan: ServicePlan | None,
        floor: FloorReading | None,
        config: ServiceConfig,
        last_move: ModeChange | None,
        cold_start: ColdStart | None,
        expires_at: datetime | None,
        age_gauge: Any,
        fallback_counter: Any,
    ) -> bytes:
        """Keep the encoded ``result`` of a known service, replacing the one it had.

        Args:
            result: The recommendation just served.
            plan: The plan it was computed from.
            floor: The live floor it was computed from.
            config: The settings it was computed with.
            last_move: The gate's last move it was computed with.
            cold_start: The cold start record it was computed with.
            expires_at: First instant it may no longer hold
                (:func:`serving.recommend.recommendation_expires_at`).
            age_gauge: The service's schedule-age gauge.
            fallback_counter: The service's fallback counter.

        Returns:
            The encoded ``result``.
        """
        encoded = result.model_dump_json().encode()
        ts_start = encoded.index(_TS_KEY) + len(_TS_KEY)
        ts_end = encoded.index(b'"', ts_start)
        self._answers[result.service] = ReadyAnswer(
            plan=plan,
            floor=floor,
            config=config,
            last_move=last_move,
            cold_start=cold_start,
            expires_at=expires_at,
            head=encoded[: ts_start - 1],
            tail=encoded[ts_end + 1 :],
            generated_at=plan.generated_at if plan is not None else None,
            age_gauge=age_gauge,
            fallback_counter=fallback_counter if result.source == "fallback" else None,
        )
        return encoded

    def answer(
        self,
        service: str,
        plan: ServicePlan | None,
        floor: FloorReading | None,
        config: ServiceConfig,
        last_move: ModeChange | None,
        cold_start: ColdStart | None,
        now: datetime,
    ) -> bytes | None:
        """The encoded recommendation for ``now``, if the kept one still holds.

        Args:
            service: The service.
            plan: The plan the view holds for it now.
            floor: The live floor the view holds for it now.
            config: Its settings now (a changed ``params.yaml``, ``gate.auto`` included, gives
                new settings objects).
            last_move: The gate's last move the view holds for it now.
            cold_start: The cold start record the view holds for it now.
            now: The current instant.

        Returns:
            The JSON body, or None when it must be computed again.
        """
        ready = self._answers.get(service)
        if (
            ready is None
            or ready.plan is not plan
            or ready.floor is not floor
            or ready.config is not config
            or ready.last_move is not last_move
            or ready.cold_start is not cold_start
            or (ready.expires_at is not None and now >= ready.expires_at)
        ):
            return None
        if ready.generated_at is not None:
            ready.age_gauge.set((now - ready.generated_at).total_seconds())
        if ready.fallback_counter is not None:
            ready.fallback_counter.inc()
        return ready.head + self._instant_json(now) + ready.tail
