"""``forescale bench fleet``: the three DAGs' stages timed on a synthetic fleet of N services.

Each fleet size gets a fresh temporary ``FORESCALE_HOME`` and five processes, one after the
other, so each peak resident set (``ru_maxrss``) belongs to one size and one phase:

1. **build** (timed, not a DAG run): ``generate_fleet`` of N services x D days ending at
   :data:`FLEET_END`, then the first half of ``forescale pipeline run``
   (:func:`pipelines.run.store_and_featurize`, :func:`pipelines.anomalies.train_anomaly_model`,
   :func:`pipelines.anomalies.score_anomalies` over the history), so the home holds what a
   running deployment holds: stored telemetry, the feature store, a champion anomaly detector
   and scored history.
2. **retrain** (``forecast_retrain``): ``resolve_retrain_trigger`` (a scheduled run),
   ``plan_shards``, ``train_anomaly_model``, ``train_shard`` for every shard,
   ``summarize_retrain``. The DAG maps the shards in parallel; here they run one after the other
   and each shard's time is reported.
3. **ingest** (``telemetry_ingest``), the next 5-minute interval of all N services:
   ``extract_batch`` (the params file's synthetic source), ``validate_batch``, ``store_batch``,
   ``update_offline_features(since=start)``, ``apply_features``, ``materialize_features``,
   ``score_anomalies``.
4. **publish** (``schedule_publish``) at the end of that interval: ``check_rollbacks``,
   ``plan_shards``, ``forecast_shard`` for every shard, then ``build_schedules`` for every
   forecast, ``publish_schedules`` for every schedule file, ``prune_runs``: the first
   publication, with no forecast record yet (``publish_first_s``).
5. **publish_steady** (``schedule_publish`` as it runs every 5 minutes): the same calls at the
   same instant after :func:`seed_forecast_record` gave the home the forecasts of the last
   ``schedule.tail_days`` and the error record the publications before kept of them
   (``publish_s``). The instant is the first publication after a whole hour, the one that
   extends each service's record by an hour (the other eleven of the hour only read it).

Every call is the DAG task's call with the DAG's arguments; the run's interval comes from the
pinned clock instead of Airflow's context, and ``publish_schedules`` also gets that instant as
``now`` (the DAG leaves it to the wall clock, which a pinned past instant would not match). A
phase's seconds are the sum of its calls' wall times (libraries a call imports on first use are
inside, as in a task's process). ``peak_rss_mib`` is the largest of the DAG phases'.

The params file is the installation's (``FORESCALE_PARAMS_FILE``) with only ``fleet`` (size,
days, resolution, seed) and ``ingest.source: synthetic`` set, written into the temporary home;
MLflow, the schedule store and the online store are the embedded defaults there.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from core.params import load_params

FLEET_END = pd.Timestamp("2026-11-16 00:00", tz="UTC")
"""End of the synthetic history (a Monday midnight): every run acts relative to it, never to the
hour the command runs in."""

INTERVAL_MINUTES = 5
"""The cadence of ``telemetry_ingest`` and ``schedule_publish`` (their ``INTERVAL_MINUTES``)."""

GROWTH_BASE = 250
"""The size the issue's growth target is relative to (used when it is among the sizes)."""

SEED = 42

# Settings that would point the benchmark at a shared deployment: the child runs embedded.
_DEPLOYMENT_VARIABLES = (
    "FORESCALE_MLFLOW_TRACKING_URI",
    "FORESCALE_SCHEDULE_DB_URL",
    "FORESCALE_ONLINE_STORE",
    "FORESCALE_REDIS_CONNECTION",
    "FORESCALE_PROMETHEUS_URL",
)

Progress = Callable[[str], None]


class FleetBenchError(RuntimeError):
    """A size's measuring process failed (its own output says why)."""


def validate_options(
    services: Sequence[int], days: int, step_minutes: int, params_file: Path, feature_step: int
) -> list[int]:
    """Check the command's options before anything runs.

    Args:
        services: Fleet sizes.
        days: Days of history.
        step_minutes: Telemetry resolution.
        params_file: The params file the fleet runs with.
        feature_step: The feature store's step in minutes (``settings.step_minutes``).

    Returns:
        The distinct sizes, ascending.

    Raises:
        ValueError: If a size is below 1, there is none, ``step_minutes`` does not divide the
            feature step, or ``days`` is shorter than training needs under the params file.
    """
    from pipelines.training import TrainingConfig

    if not services:
        raise ValueError("--services: give at least one fleet size")
    bad = sorted({n for n in services if n < 1})
    if bad:
        raise ValueError(f"--services must be at least 1, got {bad}")
    if step_minutes < 1 or feature_step % step_minutes:
        raise ValueError(
            f"--step-minutes must divide the feature step of {feature_step} minutes, "
            f"got {step_minutes}"
        )
    config = TrainingConfig.from_file(params_file, feature_step)
    need = math.ceil(config.min_history_steps / config.steps_per_day)
    if days < need:
        raise ValueError(
            f"--days must be at least {need}: training needs (training.backtest_folds + 1) x "
            f"training.backtest_horizon_hours of history ({params_file}), got {days}"
        )
    return sorted(set(services))


def fleet_params(base: Path, home: Path, services: int, days: int, step_minutes: int) -> Path:
    """The installation's params file with the synthetic fleet of this size, under ``home``.

    Args:
        base: The params file to start from (complete; validated).
        home: The temporary Forescale home.
        services: Fleet size.
        days: Days of history.
        step_minutes: Telemetry resolution.

    Returns:
        The written ``home/params.yaml``.
    """
    params = json.loads(json.dumps(load_params(base), default=str))
    params["fleet"] = {
        **(params.get("fleet") or {}),
        "services": services,
        "days": days,
        "step_minutes": step_minutes,
        "seed": SEED,
    }
    params["ingest"] = {**(params.get("ingest") or {}), "source": "synthetic"}
    home.mkdir(parents=True, exist_ok=True)
    path = home / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


PHASES = ("build", "retrain", "ingest", "publish", "publish_steady")
"""The processes of one size, in order; all but the first are DAG runs."""


class _Calls:
    """Seconds per call of one phase: ``{name: seconds}`` or ``{name: [seconds, ...]}``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float | list[float]] = {}

    def timed(self, name: str, action: Callable[[], Any], repeated: bool = False) -> Any:
        """Run ``action`` and record its wall time under ``name`` (a list when ``repeated``)."""
        started = time.perf_counter()
        result = action()
        seconds = round(time.perf_counter() - started, 3)
        if repeated:
            listed = self.seconds.setdefault(name, [])
            assert isinstance(listed, list)
            listed.append(seconds)
        else:
            self.seconds[name] = seconds
        return result

    def total(self) -> float:
        """The phase's seconds: the sum over its calls."""
        return round(
            sum(sum(v) if isinstance(v, list) else v for v in self.seconds.values()),
            3,
        )


def _build(services: int, days: int, step_minutes: int, calls: _Calls) -> dict[str, Any]:
    """The fleet's state: telemetry, features, a champion anomaly detector, scored history."""
    from pipelines.anomalies import score_anomalies, train_anomaly_model
    from pipelines.cli import cli_settings
    from pipelines.run import store_and_featurize
    from pipelines.telemetry import generate_fleet

    settings = cli_settings()
    settings.ensure_dirs()
    frame = calls.timed(
        "generate_fleet",
        lambda: generate_fleet(services, days, step_minutes, seed=SEED, end=FLEET_END),
    )
    rows, start = len(frame), frame["ts"].min()
    step = pd.Timedelta(minutes=step_minutes)
    end = calls.timed("store_and_featurize", lambda: store_and_featurize(settings, frame, step))
    if end != FLEET_END:
        raise ValueError(f"the fleet's history ends at {end}, not at {FLEET_END}")
    calls.timed("train_anomaly_model", lambda: train_anomaly_model(settings, as_of=end))
    calls.timed("score_anomalies", lambda: score_anomalies(settings, start, end))
    return {"rows": rows}


def _retrain(calls: _Calls) -> dict[str, Any]:
    """forecast_retrain's tasks in dependency order, the mapped shards one after the other."""
    from pipelines.anomalies import train_anomaly_model
    from pipelines.cli import cli_settings
    from pipelines.drift import resolve_retrain_trigger, summarize_retrain
    from pipelines.training import plan_shards, train_shard

    settings = cli_settings()
    as_of = FLEET_END.to_pydatetime()
    trigger = calls.timed("resolve_trigger", lambda: resolve_retrain_trigger([], None))
    shards = calls.timed("plan_shards", lambda: plan_shards(settings, trigger["services"]))
    calls.timed("train_anomaly_model", lambda: train_anomaly_model(settings, as_of=as_of))
    summaries = [
        str(
            calls.timed(
                "train_shard",
                partial(
                    train_shard,
                    settings,
                    shard,
                    reason=trigger["reason"],
                    as_of=as_of,
                    drift_report=trigger["report"],
                ),
                repeated=True,
            )
        )
        for shard in shards
    ]
    calls.timed("summarize", lambda: summarize_retrain(settings, "bench-fleet", summaries, trigger))
    trained = sum(len(json.loads(Path(p).read_text())["services"]) for p in summaries)
    return {"shards": len(shards), "trained": trained}


def _ingest(calls: _Calls) -> dict[str, Any]:
    """telemetry_ingest's tasks for the interval right after the history."""
    from pipelines.anomalies import score_anomalies
    from pipelines.cli import cli_settings
    from pipelines.features import apply_features, materialize_features, update_offline_features
    from pipelines.telemetry import extract_batch, store_batch
    from pipelines.validation import validate_batch

    settings = cli_settings()
    start = FLEET_END.to_pydatetime()
    end = (FLEET_END + pd.Timedelta(minutes=INTERVAL_MINUTES)).to_pydatetime()
    batch = calls.timed("extract_batch", lambda: extract_batch(settings, start, end))
    rows = len(pd.read_parquet(batch))
    batch = calls.timed("validate_batch", lambda: validate_batch(settings, batch, start, end))
    calls.timed("store_batch", lambda: store_batch(settings, Path(batch)))
    calls.timed("update_offline_features", lambda: update_offline_features(settings, since=start))
    calls.timed("apply_features", lambda: apply_features(settings))
    calls.timed("materialize_features", lambda: materialize_features(settings, end))
    calls.timed("score_anomalies", lambda: score_anomalies(settings, start, end))
    return {"ingest_rows": rows}


def _publish(calls: _Calls) -> dict[str, Any]:
    """schedule_publish's tasks at the end of the ingested interval, each mapped stage over
    every shard before the next."""
    from pipelines.cli import cli_settings
    from pipelines.publish import build_schedules, forecast_shard, prune_runs, publish_schedules
    from pipelines.rollback import check_rollbacks
    from pipelines.training import plan_shards

    settings = cli_settings()
    now = (FLEET_END + pd.Timedelta(minutes=INTERVAL_MINUTES)).to_pydatetime()
    calls.timed("check_rollbacks", lambda: check_rollbacks(settings, now=now))
    shards = calls.timed("plan_shards", lambda: plan_shards(settings))
    forecasts = [
        calls.timed(
            "forecast_shard",
            partial(forecast_shard, settings, shard, as_of=now),
            repeated=True,
        )
        for shard in shards
    ]
    schedules = [
        calls.timed("build_schedules", partial(build_schedules, settings, path), repeated=True)
        for path in forecasts
    ]
    published = [
        calls.timed(
            "publish_schedules",
            partial(publish_schedules, settings, path, as_of=now, now=now),
            repeated=True,
        )
        for path in schedules
    ]
    calls.timed("prune_runs", lambda: prune_runs(settings, now=now))
    return {"published": sum(len(json.loads(Path(p).read_text())) for p in published)}


def seed_forecast_record(settings: Any, now: pd.Timestamp) -> int:
    """Give the home the forecast record a running deployment has: a forecast every 5 minutes
    over the ``schedule.tail_days`` before ``now``, and each service's error record as the
    publications before ``now`` kept it (:func:`pipelines.forecast_record.service_records`,
    through the whole hour before ``now``'s).

    Each shard's forecast file issued at ``now`` is written again at every earlier issue time
    of the record, its steps moved by the same amount. The values are stand-ins: the
    benchmark times reading and extending the record, no figure comes from them.

    Args:
        settings: The home's settings.
        now: The issue time of the forecasts already written (the first publish's).

    Returns:
        How many forecast files were written.
    """
    from core.params import section
    from pipelines.forecast_record import RECORD_FOLDER, record_refresh, service_records
    from pipelines.publish import RUN_FOLDER_FORMAT

    days = float(section(settings.params_file, "schedule").get("tail_days", 0))
    issues = int(days * 24 * 60 // INTERVAL_MINUTES)
    current = settings.artifacts_dir / "forecasts" / f"{now:{RUN_FOLDER_FORMAT}}"
    written = 0
    for path in sorted(current.glob("*.parquet")):
        frame = pd.read_parquet(path)
        for k in range(1, issues + 1):
            shift = pd.Timedelta(minutes=INTERVAL_MINUTES * k)
            folder = current.parent / f"{now - shift:{RUN_FOLDER_FORMAT}}"
            folder.mkdir(exist_ok=True)
            frame.assign(ts=frame["ts"] - shift).to_parquet(folder / path.name, index=False)
            written += 1
    shutil.rmtree(settings.artifacts_dir / RECORD_FOLDER, ignore_errors=True)
    before = record_refresh(now) - pd.Timedelta(minutes=INTERVAL_MINUTES)
    for path in sorted(current.glob("*.parquet")):
        services = sorted({str(s) for s in pd.read_parquet(path, columns=["service"])["service"]})
        service_records(settings, services, before, days, shard_file=path.name)
    return written


def _publish_steady(calls: _Calls) -> dict[str, Any]:
    """schedule_publish again at the same instant, now with the forecast record of the last
    ``schedule.tail_days`` that publishing reads (:func:`seed_forecast_record`, not timed)."""
    from pipelines.cli import cli_settings

    now = FLEET_END + pd.Timedelta(minutes=INTERVAL_MINUTES)
    seeded = seed_forecast_record(cli_settings(), now)
    return {**_publish(calls), "record_files": seeded}


def measure_phase(phase: str, services: int, days: int, step_minutes: int) -> dict[str, Any]:
    """Run one phase in this process (its ``FORESCALE_HOME`` set by the parent) and time it.

    Args:
        phase: One of :data:`PHASES`; each after the first continues the previous one's home.
        services: Fleet size.
        days: Days of history.
        step_minutes: Telemetry resolution.

    Returns:
        ``seconds`` (sum over the calls), ``calls`` (seconds per call), ``peak_rss_mib`` (this
        process), ``helper_peak_rss_mib`` (its largest child process, e.g. Prophet's Stan) and
        the phase's counts.

    Raises:
        ValueError: If ``phase`` is unknown.
    """
    calls = _Calls()
    if phase == "build":
        counts = _build(services, days, step_minutes, calls)
    elif phase == "retrain":
        counts = _retrain(calls)
    elif phase == "ingest":
        counts = _ingest(calls)
    elif phase == "publish":
        counts = _publish(calls)
    elif phase == "publish_steady":
        counts = _publish_steady(calls)
    else:
        raise ValueError(f"unknown phase {phase!r}: one of {', '.join(PHASES)}")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    helpers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "seconds": calls.total(),
        "calls": calls.seconds,
        "peak_rss_mib": round(own / 1024, 1),
        "helper_peak_rss_mib": round(helpers / 1024, 1),
        **counts,
    }


def child_main(argv: Sequence[str]) -> None:
    """Entry point of a phase's process: ``[phase, services, days, step_minutes, result]``."""
    phase, services, days, step_minutes, result = argv
    figures = measure_phase(phase, int(services), int(days), int(step_minutes))
    Path(result).write_text(json.dumps(figures, indent=2))


def _stderr() -> int | None:
    """This process's stderr descriptor, for a child's stdout (libraries print progress there;
    the command's stdout keeps only the table); ``None`` (inherit) when there is none."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _run_size(
    services: int,
    days: int,
    step_minutes: int,
    base_params: Path,
    work: Path,
    progress: Progress,
) -> dict[str, Any]:
    """Every phase of one size, each in a fresh process, in one fresh home under ``work``."""
    home = work / "home"
    params = fleet_params(base_params, home, services, days, step_minutes)
    env = {k: v for k, v in os.environ.items() if k not in _DEPLOYMENT_VARIABLES}
    env |= {
        "FORESCALE_HOME": str(home),
        "FORESCALE_PARAMS_FILE": str(params),
        "AIRFLOW_HOME": str(home / "airflow"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
    }
    env.setdefault("PYTHONWARNINGS", "ignore")
    code = "import sys; from benchmarks.fleet import child_main; child_main(sys.argv[1:])"
    phases: dict[str, dict[str, Any]] = {}
    for phase in PHASES:
        progress(f"{services} services: {phase}")
        result = work / f"{phase}.json"
        args = [phase, str(services), str(days), str(step_minutes), str(result)]
        finished = subprocess.run(
            [sys.executable, "-c", code, *args], env=env, stdout=_stderr(), check=False
        )
        if finished.returncode != 0 or not result.is_file():
            raise FleetBenchError(
                f"the {phase} phase of {services} services failed (exit code "
                f"{finished.returncode}); its output is above"
            )
        phases[phase] = json.loads(result.read_text())
    dag_phases = PHASES[1:]
    return {
        "services": services,
        "days": days,
        "step_minutes": step_minutes,
        "rows": phases["build"]["rows"],
        "ingest_rows": phases["ingest"]["ingest_rows"],
        "shards": phases["retrain"]["shards"],
        "trained": phases["retrain"]["trained"],
        "published": phases["publish"]["published"],
        "retrain_s": phases["retrain"]["seconds"],
        "ingest_s": phases["ingest"]["seconds"],
        "publish_s": phases["publish_steady"]["seconds"],
        "publish_first_s": phases["publish"]["seconds"],
        "peak_rss_mib": max(phases[p]["peak_rss_mib"] for p in dag_phases),
        "build_s": phases["build"]["seconds"],
        "phases": phases,
    }


def growth(sizes: dict[str, dict[str, Any]]) -> tuple[float | None, int, int]:
    """Retrain seconds per service at the largest size over those at the base size.

    The base is :data:`GROWTH_BASE` when it was measured, else the smallest size.

    Returns:
        ``(ratio, base, largest)``; the ratio is ``None`` with a single size.
    """
    measured = sorted(int(n) for n in sizes)
    base = GROWTH_BASE if GROWTH_BASE in measured else measured[0]
    largest = measured[-1]
    if largest == base:
        return None, base, largest
    per_service = {n: sizes[str(n)]["retrain_s"] / n for n in (base, largest)}
    return round(per_service[largest] / per_service[base], 3), base, largest


def run_fleet_bench(
    services: Sequence[int],
    days: int,
    step_minutes: int,
    params_file: Path,
    feature_step: int,
    progress: Progress = lambda _: None,
    measured: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure every size, each in its own temporary home and process.

    Args:
        services: Fleet sizes.
        days: Days of history.
        step_minutes: Telemetry resolution.
        params_file: The installation's params file (the fleet's is derived from it).
        feature_step: The feature store's step in minutes.
        progress: Called with one line per size.
        measured: Called after each size with the figures of the sizes measured so far (the
            returned shape), so a run stopped later keeps them.

    Returns:
        ``{"sizes": {"<N>": {...}}, "growth_ratio", "growth_base", "growth_largest", ...}``.

    Raises:
        ValueError: As :func:`validate_options`.
        FleetBenchError: If a size's process fails.
    """
    sizes = validate_options(services, days, step_minutes, params_file, feature_step)
    results: dict[str, dict[str, Any]] = {}
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"forescale-bench-fleet-{n}-"))
        progress(f"{n} services in {work}")
        try:
            results[str(n)] = _run_size(n, days, step_minutes, params_file, work, progress)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if measured is not None:
            measured(_figures(results, days, step_minutes, params_file))
    return _figures(results, days, step_minutes, params_file)


def _figures(
    results: dict[str, dict[str, Any]], days: int, step_minutes: int, params_file: Path
) -> dict[str, Any]:
    """The benchmark's figures over the sizes measured so far."""
    ratio, base, largest = growth(results)
    return {
        "sizes": dict(results),
        "growth_ratio": ratio,
        "growth_base": base,
        "growth_largest": largest,
        "days": days,
        "step_minutes": step_minutes,
        "fleet_end": FLEET_END.isoformat(),
        "params_file": str(params_file),
    }


def _calls_line(calls: dict[str, Any]) -> str:
    parts = []
    for name, value in calls.items():
        if isinstance(value, list):
            parts.append(f"{name} {' + '.join(f'{v:.1f}' for v in value)}")
        else:
            parts.append(f"{name} {value:.1f}")
    return ", ".join(parts)


def table(result: dict[str, Any]) -> str:
    """The figures as Markdown: one row per size, the seconds per call, the growth ratio."""
    lines = [
        (
            "| services | rows | retrain s | retrain s/service | ingest s | publish s "
            "| first publish s | peak RSS MiB | build s |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ordered = sorted(result["sizes"].items(), key=lambda item: int(item[0]))
    for n, f in ordered:
        lines.append(
            f"| {n} | {f['rows']:,} | {f['retrain_s']:.1f} | {f['retrain_s'] / int(n):.2f} "
            f"| {f['ingest_s']:.2f} | {f['publish_s']:.2f} | {f['publish_first_s']:.2f} "
            f"| {f['peak_rss_mib']:.0f} "
            f"| {f['build_s']:.1f} |"
        )
    lines += ["", "| services | DAG | seconds per call | peak RSS MiB |", "|---:|---|---|---:|"]
    for n, f in ordered:
        for phase, dag in (
            ("retrain", "forecast_retrain"),
            ("ingest", "telemetry_ingest"),
            ("publish", "schedule_publish (first)"),
            ("publish_steady", "schedule_publish"),
        ):
            figures = f["phases"][phase]
            lines.append(
                f"| {n} | {dag} | {_calls_line(figures['calls'])} | {figures['peak_rss_mib']:.0f} |"
            )
    ratio, base, largest = result["growth_ratio"], result["growth_base"], result["growth_largest"]
    lines.append("")
    if ratio is None:
        lines.append(f"growth ratio: none (one size, {base} services)")
    else:
        note = "" if base == GROWTH_BASE else f"; {GROWTH_BASE} not measured: base is the smallest"
        lines.append(
            f"growth ratio: {ratio:.3f} (retrain s/service at {largest} / at {base}{note})"
        )
    return "\n".join(lines)
