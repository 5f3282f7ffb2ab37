"""Feature-store timings: ``feast apply``, materialize and ``model_inputs`` on a synthetic fleet.

A benchmark, not a test. Builds a fresh Forescale home (default: a temporary folder) holding
``services`` synthetic services x ``days`` days of telemetry at ``step_minutes``, then times each
stage of :mod:`pipelines.features` in this process and prints a Markdown table and the same
figures as JSON. Peak memory is this process's resident set after each stage (``ru_maxrss``).

Run: ``.venv/bin/forescale bench features --services 100 --days 28 [--json PATH]``.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from core.settings import get_settings

FIXED_END = pd.Timestamp("2026-11-16 00:00", tz="UTC")


def run(
    home: Path,
    services: int = 100,
    days: int = 28,
    step_minutes: int = 5,
    online_store: str = "sqlite",
) -> list[dict[str, Any]]:
    """Time every feature-store stage on a fresh home.

    Args:
        home: An empty folder for the Forescale home.
        services: Number of synthetic services.
        days: Days of telemetry.
        step_minutes: Telemetry resolution.
        online_store: ``sqlite`` or ``redis``.

    Returns:
        One record per stage: ``stage``, ``seconds``, ``rows`` and ``peak_rss_mb``.
    """
    from pipelines import features
    from pipelines.telemetry import generate_fleet, write_telemetry

    settings = get_settings(home=home, online_store=online_store)
    records: list[dict[str, Any]] = []

    def timed(stage: str, action: Callable[[], Any], rows: Callable[[Any], int]) -> Any:
        started = time.perf_counter()
        result = action()
        records.append(
            {
                "stage": stage,
                "seconds": round(time.perf_counter() - started, 2),
                "rows": rows(result),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
        return result

    start = FIXED_END - pd.Timedelta(days=days)
    fleet = timed(
        "generate fleet",
        lambda: generate_fleet(services, days, step_minutes, seed=42, end=FIXED_END),
        len,
    )
    timed("store telemetry", lambda: write_telemetry(settings, fleet, start, FIXED_END), len)
    names = sorted(fleet[features.SERVICE].unique())
    timed(
        "update_offline_features",
        lambda: features.update_offline_features(settings),
        lambda path: len(pd.read_parquet(path, columns=[features.SERVICE])),
    )
    offline_rows = records[-1]["rows"]
    timed("import feast", lambda: __import__("feast"), lambda _: 0)
    timed("apply_features (first)", lambda: features.apply_features(settings), lambda _: 0)
    timed("apply_features (again)", lambda: features.apply_features(settings), lambda _: 0)
    timed(
        "materialize_features (first, full)",
        lambda: features.materialize_features(settings, FIXED_END - pd.Timedelta(hours=1)),
        lambda _: offline_rows,
    )
    timed(
        "materialize_features (incremental, 1 h)",
        lambda: features.materialize_features(settings, FIXED_END),
        lambda _: len(names) * 60 // 5,
    )
    timed(
        "model_inputs (all services, all days)",
        lambda: features.model_inputs(settings, names, start, FIXED_END),
        len,
    )
    timed(
        "model_inputs (25 services, all days)",
        lambda: features.model_inputs(settings, names[:25], start, FIXED_END),
        len,
    )
    timed(
        "model_inputs (1 service, 7 days)",
        lambda: features.model_inputs(
            settings, names[:1], FIXED_END - pd.Timedelta(days=7), FIXED_END
        ),
        len,
    )
    timed("online_features (all services)", lambda: features.online_features(settings, names), len)
    return records


def markdown(records: list[dict[str, Any]]) -> str:
    """The records of :func:`run` as a Markdown table."""
    lines = ["| stage | seconds | rows | peak RSS MB |", "|---|---:|---:|---:|"]
    lines += [
        f"| {r['stage']} | {r['seconds']} | {r['rows']} | {r['peak_rss_mb']} |" for r in records
    ]
    return "\n".join(lines)
