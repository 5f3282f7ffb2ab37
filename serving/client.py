"""Publishing schedules: over HTTP to a running API, or straight into the schedule store.

Both paths apply the same checks as ``PUT /v1/services/{service}/schedule``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from core.settings import Settings
from serving.recommend import publish_problems
from serving.schemas import SchedulePublish
from serving.store import ScheduleStore


def publish_schedule_http(
    api_url: str,
    token: str,
    service: str,
    schedule: SchedulePublish,
    timeout_seconds: float = 30.0,
) -> int:
    """Publish one schedule through the serving API.

    Args:
        api_url: Base URL of the API, e.g. ``http://127.0.0.1:8000``.
        token: The API bearer token.
        service: Service name.
        schedule: The schedule.
        timeout_seconds: HTTP timeout.

    Returns:
        The new version.

    Raises:
        ValueError: If the API refuses the schedule (401/404/422); the message carries its detail.
        httpx.HTTPError: If the API cannot be reached or fails (5xx).
    """
    response = httpx.put(
        f"{api_url.rstrip('/')}/v1/services/{service}/schedule",
        content=schedule.model_dump_json(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=timeout_seconds,
    )
    if 400 <= response.status_code < 500:
        raise ValueError(
            f"the API refused the schedule of {service!r} ({response.status_code}): {response.text}"
        )
    response.raise_for_status()
    return int(response.json()["version"])


def publish_schedules_to_store(
    settings: Settings,
    schedules: Mapping[str, SchedulePublish],
    explanations: Mapping[str, Mapping[str, Any]] | None = None,
    now: datetime | None = None,
) -> dict[str, int]:
    """Publish several services' schedules into the store in one transaction.

    Args:
        settings: Runtime settings (``schedule_db``).
        schedules: Service name -> schedule.
        explanations: Optional service name -> explanation, stored in the same transaction.
        now: The current instant; the clock when None.

    Returns:
        Service name -> new version.

    Raises:
        ValueError: If any schedule is in the past (names the service and the field); then
            nothing is published.
    """
    now = now or datetime.now(UTC)
    for service, schedule in schedules.items():
        problems = publish_problems(schedule, now)
        if problems:
            details = "; ".join(
                f"{'.'.join(str(part) for part in location)}: {message}"
                for location, message in problems
            )
            raise ValueError(f"schedule of service {service!r} refused: {details}")
    store = ScheduleStore(settings.schedule_db)
    try:
        return store.publish_many(schedules, explanations)
    finally:
        store.dispose()
