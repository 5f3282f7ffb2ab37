"""The in-memory view of what is served: each service's latest schedule and live floor, the
go-live gate's last move and the cold start record of each service.

``GET .../recommendation`` answers from this view without touching the store. The view changes:

* at once, when this process publishes a schedule or records a live floor (the route updates it
  after the store committed);
* within :data:`REFRESH_SECONDS`, when another process (the pipeline, another API replica) wrote
  to the store: a request that finds the last check older than that starts one check in a
  background thread (one tiny query of the store revision; the changed services are re-read only
  when it moved). The request itself never waits for the store.

Staleness needs no refresh: the recommendation rule compares ``valid_until`` with the clock on
every call.

A schedule is kept compactly (step starts in microseconds and replica counts in two arrays,
about 16 bytes a step), and the rule is handed only the steps around the instant it asks about
(:meth:`ServicePlan.schedule_around`), so a call costs the same for a 288-step schedule as for a
10,080-step one.
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeAlias, overload

from sqlalchemy.exc import SQLAlchemyError

from serving.schemas import Schedule, SchedulePublish, ScheduleStep
from serving.store import ColdStart, FloorReading, ModeChange, ScheduleStore

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0
STORE_ERRORS = (SQLAlchemyError, OSError)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def microseconds_since_epoch(instant: datetime) -> int:
    """An aware instant as whole microseconds since the Unix epoch."""
    return (instant - _EPOCH) // timedelta(microseconds=1)


def instant_of_microseconds(microseconds: int) -> datetime:
    """The UTC instant of whole microseconds since the Unix epoch."""
    return _EPOCH + timedelta(microseconds=microseconds)


@dataclass(frozen=True, eq=False)
class ServicePlan:
    """A published schedule, without its forecasts, kept for serving.

    Attributes:
        service: The service.
        version: Schedule version.
        created_at: When the store accepted it.
        model_version: The model behind it.
        generated_at: When it was computed.
        valid_until: End of its validity.
        step_seconds: Length of its last step.
        dry_run: Whether it is for display only.
        starts: Step starts, microseconds since the epoch, increasing.
        replicas: Planned replicas of each step.
    """

    service: str
    version: int
    created_at: datetime
    model_version: str
    generated_at: datetime
    valid_until: datetime
    step_seconds: int
    dry_run: bool
    starts: array
    replicas: array
    _window: tuple[tuple[int, ...], Schedule] | None = field(default=None, repr=False)

    @classmethod
    def of(
        cls, service: str, version: int, created_at: datetime, schedule: SchedulePublish
    ) -> ServicePlan:
        """The plan of a schedule (stored or just published)."""
        return cls(
            service=service,
            version=version,
            created_at=created_at,
            model_version=schedule.model_version,
            generated_at=schedule.generated_at,
            valid_until=schedule.valid_until,
            step_seconds=schedule.step_seconds,
            dry_run=schedule.dry_run,
            starts=array("q", (microseconds_since_epoch(step.ts) for step in schedule.steps)),
            replicas=array("q", (step.replicas for step in schedule.steps)),
        )

    def _schedule(self, indices: list[int]) -> Schedule:
        steps = [
            ScheduleStep.model_construct(
                ts=instant_of_microseconds(self.starts[index]),
                replicas=self.replicas[index],
                forecast_p50=None,
                forecast_p90=None,
            )
            for index in indices
        ]
        return Schedule.of_stored(self, steps)

    def schedule_around(self, start: datetime, end: datetime) -> Schedule:
        """The schedule as seen from the window ``[start, end]``.

        Step ``i`` is in force over ``[ts_i, ts_{i+1})`` (the last one for ``step_seconds``).
        When the window meets the steps, the result holds the steps in force in it plus the
        step after them, so every kept step keeps its end; otherwise the first and last steps,
        which keep the span the schedule covers. Either way a rule asking about the window gets
        the answer the whole schedule gives (``tests/test_serving_api.py`` checks it).

        Args:
            start: Window start (aware).
            end: Window end (aware), not before ``start``.

        Returns:
            A schedule (forecasts left out) with at most the steps the window needs.
        """
        count = len(self.starts)
        first = microseconds_since_epoch(start)
        last = microseconds_since_epoch(end)
        span_end = self.starts[-1] + self.step_seconds * 1_000_000
        if last < self.starts[0] or first >= span_end:
            indices: tuple[int, ...] = (0, count - 1) if count > 1 else (0,)
        else:
            begin = max(bisect_right(self.starts, first) - 1, 0)
            stop = min(bisect_right(self.starts, last) + 1, count)
            indices = tuple(range(begin, stop))
        # Consecutive calls mostly ask for the same steps: keep the last one built.
        cached = self._window
        if cached is not None and cached[0] == indices:
            return cached[1]
        schedule = self._schedule(list(indices))
        object.__setattr__(self, "_window", (indices, schedule))
        return schedule

    def full_schedule(self) -> Schedule:
        """Every step (forecasts left out)."""
        return self._schedule(list(range(len(self.starts))))


Answer: TypeAlias = tuple[bool, ServicePlan | None, FloorReading | None]
"""``(known, plan, floor)``: whether the service has a schedule or a live floor, its latest plan,
its live floor."""


class PlanView:
    """Each service's latest plan and live floor, answered from memory.

    Args:
        store: The schedule store behind the view.
        refresh_seconds: How old the last check of the store may be before a request starts the
            next one.
        monotonic: Clock of those checks (seconds); tests pass their own.
    """

    def __init__(
        self,
        store: ScheduleStore,
        refresh_seconds: float = REFRESH_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._loaded = False
        self._revision = -1
        self._generation = 0  # raised by every change this process makes itself
        self._versions: dict[str, int] = {}
        self._plans: dict[str, ServicePlan] = {}
        self._floors: dict[str, FloorReading] = {}
        self._moves: dict[str, ModeChange] = {}
        self._cold: dict[str, ColdStart] = {}
        self._checked_at = float("-inf")
        self._refreshing = False
        self._refresh_thread: threading.Thread | None = None

    # ---- reading ------------------------------------------------------------------------------

    def cached(self, service: str) -> Answer | None:
        """What the view holds for a service, if it can answer without reading the store.

        Args:
            service: Service name.

        Returns:
            ``(known, plan, floor)`` (``known``: the service has a schedule, a live floor, a
            gate move or a cold start record), or None when the view was never loaded or the
            service's latest plan is not in memory yet (then :meth:`lookup` reads it).
        """
        if not self._loaded:
            return None
        if self.monotonic() - self._checked_at >= self.refresh_seconds:
            self._refresh_in_background()
        return self._answer(service, load=False)

    def lookup(self, service: str) -> Answer:
        """What the view holds for a service, reading the store when it must.

        Args:
            service: Service name.

        Returns:
            ``(known, plan, floor)`` as :meth:`cached`.

        Raises:
            sqlalchemy.exc.SQLAlchemyError, OSError: If the store fails while the view was never
                loaded or the service's latest plan has to be read; once in memory, a failing
                store leaves the last view in place.
        """
        answer = self.cached(service)
        if answer is not None:
            return answer
        if not self._loaded:
            self.refresh()
        return self._answer(service, load=True)

    def _known_without_plan(self, service: str, floor: FloorReading | None) -> bool:
        return floor is not None or service in self._cold or service in self._moves

    def context(self, service: str) -> tuple[ModeChange | None, ColdStart | None]:
        """The gate's last move and the cold start record the view holds for a service.

        Args:
            service: Service name.

        Returns:
            ``(last_move, cold_start)``, each None when there is none (or the view was never
            loaded; :meth:`lookup` loads it).
        """
        return self._moves.get(service), self._cold.get(service)

    def versions(self) -> dict[str, int]:
        """Service -> latest schedule version, as the view holds it."""
        if not self._loaded:
            self.refresh()
        return dict(self._versions)

    @overload
    def _answer(self, service: str, load: Literal[True]) -> Answer: ...
    @overload
    def _answer(self, service: str, load: Literal[False]) -> Answer | None: ...

    def _answer(self, service: str, load: bool) -> Answer | None:
        """``(known, plan, floor)`` from the view's versions, plans and floors.

        Args:
            service: Service name.
            load: Read the service's latest plan from the store when it is not in memory
                (otherwise the answer is None then).

        Returns:
            ``(known, plan, floor)`` as :meth:`cached`, or None (``load`` false only).
        """
        version = self._versions.get(service)
        floor = self._floors.get(service)
        if version is None:
            return self._known_without_plan(service, floor), None, floor
        plan = self._plans.get(service)
        if plan is None or plan.version != version:
            if not load:
                return None
            plan = self._load_plan(service)
        return True, plan, floor

    def _load_plan(self, service: str) -> ServicePlan | None:
        """Read a service's latest schedule into the view (its first request after a change)."""
        schedule = self.store.latest(service)
        if schedule is None:
            return None
        plan = ServicePlan.of(service, schedule.version, schedule.created_at, schedule)
        with self._lock:
            current = self._plans.get(service)
            if current is None or current.version < plan.version:
                self._plans[service] = plan
            if self._versions.get(service, 0) < plan.version:
                self._versions[service] = plan.version
        return plan

    # ---- refreshing ---------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Check the store and take in what other processes changed.

        Returns:
            True when the store had changed since the last check.

        Raises:
            sqlalchemy.exc.SQLAlchemyError, OSError: If the store fails.
        """
        for attempt in range(3):
            with self._lock:
                generation = self._generation
            checked_at = self.monotonic()
            revision = self.store.revision()
            if self._loaded and revision == self._revision:
                self._checked_at = checked_at
                return False
            versions = self.store.latest_versions()
            floors = self.store.live_floors()
            moves = self.store.current_modes()
            cold = self.store.cold_starts()
            with self._lock:
                if generation != self._generation and attempt < 2:
                    continue  # this process changed the view meanwhile: read again
                # Even if a local change slipped in, the revision read above predates it, so
                # the next check reads the store again.
                self._versions = versions
                self._floors = floors
                self._moves = moves
                self._cold = cold
                self._plans = {
                    service: plan
                    for service, plan in self._plans.items()
                    if versions.get(service) == plan.version
                }
                self._revision = revision
                self._checked_at = checked_at
                self._loaded = True
            return True
        raise AssertionError("unreachable")

    def _refresh_in_background(self) -> None:
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True
            self._refresh_thread = threading.Thread(target=self._background_refresh, daemon=True)
            self._refresh_thread.start()

    def join_background_refresh(self, timeout: float | None = None) -> None:
        """Wait for the background check a request started, if one runs."""
        thread = self._refresh_thread
        if thread is not None:
            thread.join(timeout)

    def _background_refresh(self) -> None:
        try:
            self.refresh()
        except STORE_ERRORS:
            logger.exception("refreshing the served plans failed; serving the last known ones")
            self._checked_at = self.monotonic()
        finally:
            with self._lock:
                self._refreshing = False

    # ---- this process's own writes ------------------------------------------------------------

    def published(
        self, service: str, version: int, created_at: datetime, schedule: SchedulePublish
    ) -> None:
        """Serve a schedule this process has just stored (after its transaction committed)."""
        plan = ServicePlan.of(service, version, created_at, schedule)
        with self._lock:
            self._generation += 1
            if self._versions.get(service, 0) <= version:
                self._versions[service] = version
                self._plans[service] = plan

    def floor_recorded(self, service: str, floor: FloorReading) -> None:
        """Serve a live floor this process has just stored."""
        with self._lock:
            self._generation += 1
            self._floors[service] = floor
