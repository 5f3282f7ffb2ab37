"""The ``forescale`` command line: every pipeline stage runs from a terminal without Airflow.

Heavy libraries are imported inside the commands, so ``forescale --help`` stays fast. More command
groups come from plugins: every Typer app of the ``forescale.commands`` entry-point group (e.g.
``forescale bench`` from ``benchmarks.cli``), found without importing their packages here.
"""

from __future__ import annotations

import logging
import os
import warnings
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.main import get_command_name

from core.settings import Settings, get_settings

app = typer.Typer(
    help="Forescale: predictive scaling schedules for Kubernetes services.",
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    add_completion=False,
)
telemetry_app = typer.Typer(help="Generate, import and ingest telemetry.", no_args_is_help=True)
features_app = typer.Typer(help="The Feast feature store.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Run the whole pipeline once.", no_args_is_help=True)
app.add_typer(telemetry_app, name="telemetry")
app.add_typer(features_app, name="features")
app.add_typer(pipeline_app, name="pipeline")

PLUGIN_GROUP = "forescale.commands"
"""Entry-point group whose Typer apps become command groups of ``forescale``, named by entry."""

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

Services = Annotated[
    list[str] | None, typer.Option("--service", "-s", help="Service to include (repeatable).")
]


QUIET_LOGGERS = (
    "mlflow",
    "feast",
    "great_expectations",
    "cmdstanpy",
    "prophet",
    "alembic",
    "py.warnings",
)


def cli_settings() -> Settings:
    """The runtime settings, with the environment and logging every command runs under.

    Returns:
        The settings of this ``FORESCALE_HOME``.
    """
    settings = get_settings()
    os.environ.setdefault("AIRFLOW_HOME", str(settings.airflow_home))  # never ~/airflow
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    return settings


def _progress(line: str) -> None:
    console.print(f"[bold cyan]>[/] {line}")


def _parse_time(value: str | None) -> datetime | None:
    import pandas as pd

    return None if value is None else pd.Timestamp(value, tz="UTC").to_pydatetime()


# --------------------------------------------------------------------------- telemetry


@telemetry_app.command("generate")
def telemetry_generate(
    services: Annotated[int, typer.Option(help="Number of services.")] = 5,
    days: Annotated[int, typer.Option(help="Days of history ending now.")] = 14,
    step_minutes: Annotated[int, typer.Option(help="Resolution in minutes.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
) -> None:
    """Generate a synthetic fleet, validate it and store it."""
    import pandas as pd

    from pipelines.run import ingest_frame
    from pipelines.telemetry import generate_fleet

    settings = cli_settings()
    frame = generate_fleet(services, days, step_minutes=step_minutes, seed=seed)
    start, end = frame["ts"].min(), frame["ts"].max() + pd.Timedelta(minutes=step_minutes)
    files = ingest_frame(settings, frame, start, end)
    out.print(
        f"stored {len(frame):,} rows for {services} services in {len(files)} day files "
        f"under {settings.telemetry_dir}"
    )


@telemetry_app.command("import")
def telemetry_import(
    path: Annotated[Path, typer.Argument(help="CSV/Parquet file or folder.")],
    service: Annotated[str | None, typer.Option(help="Service name of a single trace.")] = None,
    value_per: Annotated[str, typer.Option(help="second | minute | step")] = "second",
) -> None:
    """Import CSV/Parquet telemetry (long format, or one `time,value` trace) after validation.

    A refused import prints one line per problem (file, column, rows), stores nothing, copies the
    refused files to the quarantine folder with a report, and exits with code 2.
    """
    from pipelines.telemetry_files import import_telemetry

    settings = cli_settings()
    try:
        result = import_telemetry(settings, path, service=service, value_per=value_per)
    except ValueError as err:
        if os.environ.get("FORESCALE_DEBUG"):
            raise
        for line in str(err).splitlines():
            console.print(f"[bold red]error:[/] {escape(line)}", highlight=False)
        raise typer.Exit(2) from None
    for note in result.notes:
        prefix = "" if note.startswith("warning:") else "note: "
        console.print(prefix + note, markup=False, highlight=False)
    out.print(
        f"imported {result.rows:,} rows ({len(result.services)} services) "
        f"into {len(result.files_written)} day files",
        highlight=False,
    )


@telemetry_app.command("ingest")
def telemetry_ingest(
    start: Annotated[str, typer.Option(help="Interval start (UTC).")],
    end: Annotated[str, typer.Option(help="Interval end (UTC, exclusive).")],
    source: Annotated[str | None, typer.Option(help="synthetic | prometheus | files:<dir>")] = None,
) -> None:
    """Extract one interval, validate it, store it (the `telemetry_ingest` DAG's first tasks)."""
    from pipelines.telemetry import extract_batch, store_batch
    from pipelines.validation import validate_batch

    settings = cli_settings()
    begin, stop = _parse_time(start), _parse_time(end)
    assert begin is not None and stop is not None
    batch = extract_batch(settings, begin, stop, source)
    files = store_batch(settings, validate_batch(settings, batch, begin, stop))
    out.print(f"stored {len(files)} day files")


# --------------------------------------------------------------------------- features


@features_app.command("apply")
def features_apply() -> None:
    """Register the feature definitions (`feast apply`) for this FORESCALE_HOME."""
    from pipelines.features import apply_features

    apply_features(cli_settings())
    out.print("feature store applied")


@features_app.command("update")
def features_update(
    end: Annotated[str | None, typer.Option(help="Materialize up to.")] = None,
) -> None:
    """Rebuild the offline 5-minute aggregates and materialize them into the online store."""
    import pandas as pd

    from pipelines.features import apply_features, materialize_features, update_offline_features
    from pipelines.telemetry import telemetry_span

    settings = cli_settings()
    apply_features(settings)
    path = update_offline_features(settings)
    span = telemetry_span(settings)
    stop = _parse_time(end) or (span[1].to_pydatetime() if span else pd.Timestamp.now(tz="UTC"))
    materialize_features(settings, stop)
    out.print(f"offline features at {path}; materialized up to {stop}")


# --------------------------------------------------------------------------- anomalies


@app.command("anomalies")
def anomalies(
    start: Annotated[
        str | None, typer.Option(help="Score from (UTC; default: all history).")
    ] = None,
    end: Annotated[
        str | None, typer.Option(help="Score until (UTC; default: end of data).")
    ] = None,
    train: Annotated[bool, typer.Option(help="Backtest and register the detector first.")] = True,
) -> None:
    """Train/register the anomaly detector and score telemetry (flagged points skip training)."""
    import pandas as pd

    from pipelines.anomalies import score_anomalies, train_anomaly_model
    from pipelines.telemetry import telemetry_span

    settings = cli_settings()
    span = telemetry_span(settings)
    if span is None:
        raise typer.BadParameter(f"no telemetry under {settings.telemetry_dir}")
    if train:
        out.print(Path(train_anomaly_model(settings)).read_text())
    begin = _parse_time(start) or span[0].to_pydatetime()
    stop = _parse_time(end) or span[1].to_pydatetime()
    scores = pd.read_parquet(score_anomalies(settings, begin, stop))
    out.print(f"scored {len(scores):,} points, {int(scores['is_anomaly'].sum())} flagged")


# --------------------------------------------------------------------------- train and schedule


@app.command("train")
def train(
    service: Services = None,
    reason: Annotated[str, typer.Option(help="schedule | drift | manual")] = "manual",
    as_of: Annotated[str | None, typer.Option(help="End of the training window (UTC).")] = None,
) -> None:
    """Backtest, register and promote models for every shard of services."""
    from pipelines.training import plan_shards, train_shard

    settings = cli_settings()
    for shard in plan_shards(settings, service):
        _progress(f"training {', '.join(shard)}")
        path = train_shard(settings, shard, reason, _parse_time(as_of), progress=_progress)
        out.print(f"summary: {path}")


@app.command("schedule")
def schedule(
    service: Services = None,
    as_of: Annotated[str | None, typer.Option(help="Forecast origin (UTC).")] = None,
) -> None:
    """Forecast with each champion, build replica schedules and publish them."""
    import json

    from pipelines.publish import build_schedules, forecast_shard, publish_schedules
    from pipelines.training import plan_shards

    settings = cli_settings()
    for shard in plan_shards(settings, service):
        forecasts = forecast_shard(settings, shard, _parse_time(as_of))
        published = publish_schedules(settings, build_schedules(settings, forecasts))
        for name, row in json.loads(published.read_text()).items():
            out.print(
                f"{name}: schedule v{row['version']} from {row['model_version']}, "
                f"peak {row['peak_replicas']} replicas"
            )


@pipeline_app.command("run")
def pipeline_run(
    services: Annotated[int, typer.Option(help="Synthetic services.")] = 5,
    days: Annotated[int, typer.Option(help="Days of synthetic history.")] = 14,
    source: Annotated[Path | None, typer.Option(help="Folder of telemetry files instead.")] = None,
    step_minutes: Annotated[int, typer.Option(help="Synthetic resolution.")] = 1,
    seed: Annotated[int, typer.Option(help="Synthetic seed.")] = 42,
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help=(
                "Write per service: status (trained/not_trained) and reason, family, version, "
                "backtest error, promoted, peak replicas."
            ),
        ),
    ] = None,
) -> None:
    """Run ingest -> validate -> features -> train -> schedule -> publish once and summarise."""
    import json
    import time

    from pipelines.run import run_pipeline, summary_records

    settings = cli_settings()
    began = time.perf_counter()

    def progress(line: str) -> None:
        _progress(f"[{time.perf_counter() - began:6.0f} s] {line}")

    summaries = run_pipeline(settings, services, days, source, step_minutes, seed, progress)
    table = Table(
        title=f"Forescale pipeline ({time.perf_counter() - began:.0f} s, state in {settings.home})"
    )
    for column in (
        "service",
        "model",
        "version",
        "champion",
        "backtest rel. MAE",
        "peak replicas",
        "schedule",
    ):
        table.add_column(column)
    for s in summaries:
        if s.status != "trained":
            table.add_row(s.service, "not trained", "-", "-", "-", "-", s.reason)
            continue
        table.add_row(
            s.service,
            s.family,
            "v" + s.model_version.rpartition("/")[2],
            "new" if s.promoted else "kept",
            f"{s.backtest_error:.3f}",
            str(s.peak_replicas),
            f"v{s.schedule_version}" if s.schedule_version else "not published",
        )
    out.print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary_records(summaries), indent=2))
        out.print(f"summary: {json_path}")


@app.command("scorecard")
def scorecard(
    days: Annotated[int, typer.Option(help="Complete UTC days to score.")] = 7,
    services: Annotated[
        str | None, typer.Option(help="Comma-separated services (default: all stored).")
    ] = None,
    as_of: Annotated[
        str | None, typer.Option(help="Score up to this instant (UTC; default: end of data).")
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the scorecard (summary and cards) here.")
    ] = None,
    mlflow_run: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="Log the run and plots to MLflow.")
    ] = True,
) -> None:
    """Replay each service's telemetry under its own HPA and under Forescale, per day."""
    import json

    from pipelines.scorecard import run_scorecard

    settings = cli_settings()
    names = [s.strip() for s in services.split(",") if s.strip()] if services else None
    try:
        path = run_scorecard(
            settings,
            days=days,
            as_of=_parse_time(as_of),
            services=names,
            progress=_progress,
            log_to_mlflow=mlflow_run,
        )
    except ValueError as err:
        console.print(f"[bold red]error:[/] {err}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    document = json.loads(path.read_text())
    out.print(scorecard_table(document))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(document, indent=2))
        out.print(f"scorecard: {json_path}")


@app.command("gate")
def gate(
    as_of: Annotated[
        str | None, typer.Option(help="Evaluate at this instant (UTC; default: now).")
    ] = None,
) -> None:
    """Evaluate the go-live gate on the stored scorecards (moves services when gate.auto)."""
    import json

    from pipelines.gate import run_gate

    try:
        path = run_gate(cli_settings(), _parse_time(as_of))
    except ValueError as err:
        console.print(f"[bold red]error:[/] {err}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    document = json.loads(path.read_text()) if path.is_file() else {}
    table = Table(title="Go-live gate")
    for column in ("service", "mode", "moves to", "applied", "passing", "failing"):
        table.add_column(column, no_wrap=True)
    table.add_column("reason", overflow="fold")
    for row in document.get("services", []):
        table.add_row(
            str(row.get("service")),
            str(row.get("mode")),
            str(row.get("moved_to") or "-"),
            "yes" if row.get("applied") else "no",
            str(row.get("passing_days")),
            str(row.get("failing_days")),
            str(row.get("reason")),
        )
    out.print(table)
    out.print(f"gate: {path}")


def scorecard_table(document: dict) -> Table:
    """The fleet summary of a scorecard as a table (per service, HPA against Forescale)."""

    def number(value: object, text: str = "{:g}") -> str:
        return "-" if value is None else text.format(value)

    table = Table(
        title=(
            f"Shadow scorecard: {document['days']} day(s) to {document['as_of']} "
            f"({document['seconds']} s)"
        )
    )
    for column in (
        "service",
        "scored days",
        "HPA short min",
        "Forescale short min",
        "HPA pod-h",
        "Forescale pod-h",
        "pod-h % of HPA",
        "lead HPA / Forescale (min)",
        "published",
    ):
        table.add_column(column)
    for row in document["summary"]:
        if not row["scored_days"]:
            table.add_row(row["service"], "0", row["reason"], *[""] * 6)
            continue
        table.add_row(
            row["service"],
            f"{row['scored_days']}/{row['days']}",
            str(row["hpa_short_minutes"]),
            str(row["forescale_short_minutes"]),
            f"{row['hpa_pod_hours']:.1f}",
            f"{row['forescale_pod_hours']:.1f}",
            number(row["pod_hours_vs_hpa"] and 100 * row["pod_hours_vs_hpa"], "{:.1f}"),
            f"{number(row['hpa_median_lead_minutes'])} / "
            f"{number(row['forescale_median_lead_minutes'])}",
            number(row["published_share"] and 100 * row["published_share"], "{:.0f} %"),
        )
    return table


# --------------------------------------------------------------------------- serving and stack


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    dev: Annotated[
        bool,
        typer.Option(
            "--dev", help="Development server: accept the built-in default tokens (FORESCALE_DEV)."
        ),
    ] = False,
) -> None:
    """Start the schedule API alone."""
    from serving.app import run_server

    settings = cli_settings()
    if dev:
        settings = settings.model_copy(update={"dev": True})
    run_server(settings, host, port)


@app.command("up")
def up(
    services: Annotated[int, typer.Option(help="Synthetic services.")] = 5,
    days: Annotated[int, typer.Option(help="Days of synthetic history.")] = 14,
) -> None:
    """Start Airflow, MLflow and the API locally, run the DAGs once, wait for Ctrl-C."""
    from pipelines.local_stack import run_local_stack

    run_local_stack(cli_settings(), services, days)


@app.command("drift")
def drift(
    end: Annotated[str | None, typer.Option(help="End of the recent window.")] = None,
) -> None:
    """Run the Evidently drift monitor once and print what it found."""
    from pipelines.drift import run_drift_monitor

    path = run_drift_monitor(cli_settings(), end=_parse_time(end))
    out.print(Path(path).read_text())


def add_plugin_commands(target: typer.Typer) -> list[str]:
    """Add every Typer app of the ``forescale.commands`` entry-point group to ``target``.

    A plugin that fails to load (import error, not a ``typer.Typer``, a name already taken) is
    reported as one line on stderr and left out, silently when its whole package is absent
    from this install (the container image ships without ``benchmarks/``); the other commands keep working
    (``FORESCALE_DEBUG=1`` raises the load error instead). Calling this again does not add a
    plugin twice.

    Args:
        target: The command line to extend (``app``).

    Returns:
        The names of the command groups added by this call.
    """
    added: list[str] = []
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            plugin = entry.load()
            if not isinstance(plugin, typer.Typer):
                raise TypeError(f"{type(plugin).__name__} is not a typer.Typer")
        except Exception as err:  # a broken plugin must not stop the other commands
            if os.environ.get("FORESCALE_DEBUG"):
                raise
            if isinstance(err, ModuleNotFoundError) and err.name == entry.module.split(".")[0]:
                continue  # an install without that package (e.g. the image has no benchmarks/)
            _plugin_error(entry.name, entry.value, f"{type(err).__name__}: {err}")
            continue
        groups = {group.name: group.typer_instance for group in target.registered_groups}
        if groups.get(entry.name) is plugin:
            continue
        taken = set(groups)
        for command in target.registered_commands:
            callback = command.callback
            taken.add(command.name or (get_command_name(callback.__name__) if callback else ""))
        if entry.name in taken:
            _plugin_error(entry.name, entry.value, "a command of that name exists")
            continue
        target.add_typer(plugin, name=entry.name)
        added.append(entry.name)
    return added


def _plugin_error(name: str, value: str, reason: str) -> None:
    message = " ".join(f"command plugin {name!r} ({value}) not loaded: {reason}".split())
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)


def main() -> None:
    """Entry point of the ``forescale`` script.

    Bad input (a ``ValueError``, a missing file) is reported as one readable message and exit
    code 1; ``FORESCALE_DEBUG=1`` shows the full traceback instead.
    """
    add_plugin_commands(app)
    try:
        app()
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("FORESCALE_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] {err}")
        raise SystemExit(1) from err


if __name__ == "__main__":
    main()
