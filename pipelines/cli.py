"""The ``forescale`` command line: every pipeline stage runs from a terminal without Airflow.

Heavy libraries are imported inside the commands, so ``forescale --help`` stays fast.
"""

from __future__ import annotations

import logging
import os
import warnings
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.settings import REPO_ROOT, Settings, get_settings

app = typer.Typer(
    help="Forescale: predictive scaling schedules for Kubernetes services.",
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    add_completion=False,
)
telemetry_app = typer.Typer(help="Generate, import and ingest telemetry.", no_args_is_help=True)
features_app = typer.Typer(help="The Feast feature store.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Run the whole pipeline once.", no_args_is_help=True)
bench_app = typer.Typer(
    help="Benchmarks on public data (print figures; not tests).", no_args_is_help=True
)
app.add_typer(telemetry_app, name="telemetry")
app.add_typer(features_app, name="features")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(bench_app, name="bench")

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"

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


def _settings() -> Settings:
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

    settings = _settings()
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
    from rich.markup import escape

    from pipelines.telemetry_files import import_telemetry

    settings = _settings()
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

    settings = _settings()
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

    apply_features(_settings())
    out.print("feature store applied")


@features_app.command("update")
def features_update(
    end: Annotated[str | None, typer.Option(help="Materialize up to.")] = None,
) -> None:
    """Rebuild the offline 5-minute aggregates and materialize them into the online store."""
    import pandas as pd

    from pipelines.features import apply_features, materialize_features, update_offline_features
    from pipelines.telemetry import telemetry_span

    settings = _settings()
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

    settings = _settings()
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

    settings = _settings()
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

    settings = _settings()
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
            help="Write per service: family, version, backtest error, promoted, peak replicas.",
        ),
    ] = None,
) -> None:
    """Run ingest -> validate -> features -> train -> schedule -> publish once and summarise."""
    import json
    import time

    from pipelines.run import run_pipeline, summary_records

    settings = _settings()
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

    settings = _settings()
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

    settings = _settings()
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

    run_local_stack(_settings(), services, days)


@app.command("drift")
def drift(
    end: Annotated[str | None, typer.Option(help="End of the recent window.")] = None,
) -> None:
    """Run the Evidently drift monitor once and print what it found."""
    from pipelines.drift import run_drift_monitor

    path = run_drift_monitor(_settings(), end=_parse_time(end))
    out.print(Path(path).read_text())


# --------------------------------------------------------------------------- benchmarks

DataDir = Annotated[Path, typer.Option("--data", help="Folder with the layout of shared/data.")]
JsonOut = Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON.")]


@bench_app.command("forecast")
def bench_forecast(
    data: DataDir = DEFAULT_DATA,
    json_path: JsonOut = None,
    forecasts: Annotated[Path | None, typer.Option(help="Write every scored forecast.")] = None,
    quick: Annotated[bool, typer.Option(help="A small subset, for a smoke run.")] = False,
    training_part: Annotated[
        bool,
        typer.Option(
            help="Score on the training data only (how settings are chosen); ignores the tests."
        ),
    ] = False,
    params: Annotated[
        Path | None,
        typer.Option(
            "--params",
            help="Params file whose forecasters the ops traces measure "
            "(default: the repo's params.yaml).",
        ),
    ] = None,
    m4_params: Annotated[
        Path | None,
        typer.Option(
            "--m4-params",
            help="Params file whose forecasters M4 measures "
            "(default: benchmarks/profiles/m4.yaml).",
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(help="Write the Markdown report (e.g. docs/benchmarks/forecast.md)."),
    ] = None,
    from_json: Annotated[
        list[Path] | None,
        typer.Option(
            help="Only write --report from the JSON of earlier runs (no benchmark); "
            "several: runs on parts of the data, merged."
        ),
    ] = None,
) -> None:
    """M4 Hourly and ops-trace forecasting benchmark of the forecasters a params file configures."""
    import json

    from benchmarks.forecast import (
        M4_PARAMS,
        OPS_PARAMS,
        merge_reports,
        report_document,
        run_forecast_bench,
    )

    _settings()
    if from_json:
        if report is None:
            raise typer.BadParameter("--from-json needs --report FILE")
        try:
            document = report_document(
                merge_reports([json.loads(path.read_text()) for path in from_json])
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise typer.BadParameter(
                f"{', '.join(map(str, from_json))}: not bench forecast JSON ({err})"
            ) from err
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(document)
        return
    run_forecast_bench(
        data,
        json_path,
        forecasts,
        quick=quick,
        training_part=training_part,
        params_file=params or OPS_PARAMS,
        m4_params_file=m4_params or M4_PARAMS,
        report_path=report,
    )


@bench_app.command("guard-cv")
def bench_guard_cv(
    data: DataDir = DEFAULT_DATA,
    json_path: JsonOut = None,
    params: Annotated[
        Path | None, typer.Option("--params", help="Params file whose ensemble is studied.")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="Keep (and reuse) each trace's forecasts in this folder.")
    ] = None,
    origins: Annotated[int, typer.Option(min=2, help="Daily origins per trace.")] = 6,
) -> None:
    """Choose the ensemble guard's ratio by leave-one-source-out CV on the training parts."""
    from benchmarks.forecast import OPS_PARAMS
    from benchmarks.guard_cv import run_guard_cv

    _settings()
    report = run_guard_cv(data, params or OPS_PARAMS, cache, origins, json_path=json_path)
    for row in report["loso"]:
        out.print(
            f"held out {row['held_out']} ({row['traces']} traces): ratio "
            f"{row['chosen_ratio']} -> mean {row['held_out_mean']:.3f}, max "
            f"{row['held_out_max']:.3f} (no guard: mean {row['no_guard_mean']:.3f}, max "
            f"{row['no_guard_max']:.3f})"
        )
    out.print(f"chosen on every source: {report['chosen_on_all']}")


@bench_app.command("replay")
def bench_replay(
    data: DataDir = DEFAULT_DATA,
    json_path: JsonOut = None,
    timeline: Annotated[
        Path | None, typer.Option(help="Write the minute-by-minute replay.")
    ] = None,
    plots: Annotated[Path | None, typer.Option(help="Folder for one PNG per trace.")] = None,
    params: Annotated[
        list[Path] | None,
        typer.Option(
            "--params",
            help="A params profile to replay (repeatable; named by its file stem). "
            "Default: the repository's params.yaml as 'forescale'.",
        ),
    ] = None,
    shift_weeks: Annotated[
        int, typer.Option(help="Drop the last N weeks of every trace first (blind development).")
    ] = 0,
    trace: Annotated[
        list[str] | None, typer.Option(help="Replay only traces whose name contains this.")
    ] = None,
    jobs: Annotated[int, typer.Option(help="Worker processes (1: all in this process).")] = 2,
    cache: Annotated[
        Path | None, typer.Option(help="Cache the rolling forecasts in this folder.")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Also write the Markdown report (docs/benchmarks).")
    ] = None,
) -> None:
    """Replay real traffic: params profiles walked forward beside HPA, KEDA and other baselines."""
    from benchmarks.replay import run_replay_bench

    _settings()
    result = run_replay_bench(
        data,
        json_path,
        timeline,
        plots,
        params_files=tuple(params or ()),
        shift_weeks=shift_weeks,
        only=tuple(trace or ()),
        n_jobs=jobs,
        cache_dir=cache,
    )
    if report is not None:
        from benchmarks.replay_report import write_report

        write_report(result, report)


@bench_app.command("replay-cv")
def bench_replay_cv(
    json_path: Annotated[
        Path, typer.Option("--json", help="A `bench replay --shift-weeks 1 --json` file.")
    ],
    out_path: Annotated[Path, typer.Option("--out", help="Write the cross-validation JSON.")],
    candidate: Annotated[
        list[str] | None,
        typer.Option(help="Candidate profile names (default: every profile of the run)."),
    ] = None,
) -> None:
    """Leave-one-source-out choice among the params profiles of a replay run."""
    import json

    from benchmarks.replay_cv import leave_one_source_out

    result = json.loads(json_path.read_text())
    names = list(candidate or [p["name"] for p in result["params_files"]])
    unknown = sorted(set(names) - {p["name"] for p in result["params_files"]})
    if unknown:
        raise ValueError(f"{json_path}: no profile named {unknown} in params_files")
    cv = leave_one_source_out(result, names)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(cv, indent=2, default=float))
    out.print(f"chosen on every source: {cv['chosen_on_all']}")


@bench_app.command("report")
def bench_report(
    json_path: Annotated[Path, typer.Option("--json", help="A `bench replay --json` file.")],
    out_path: Annotated[Path, typer.Option("--out", help="The Markdown file to write.")],
    cv: Annotated[
        Path | None, typer.Option(help="The cross-validation JSON (`bench replay-cv --json`).")
    ] = None,
) -> None:
    """Write docs/benchmarks/replay.md from the replay (and cross-validation) JSON."""
    import json

    from benchmarks.replay_report import write_report

    try:
        result = json.loads(json_path.read_text())
        cv_result = json.loads(cv.read_text()) if cv is not None else None
    except json.JSONDecodeError as err:
        raise ValueError(f"not a JSON file ({json_path} / {cv}): {err}") from err
    write_report(result, out_path, cv_result)


@bench_app.command("nab")
def bench_nab(
    data: DataDir = DEFAULT_DATA,
    json_path: JsonOut = None,
    scores: Annotated[Path | None, typer.Option(help="Write NAB-layout result files here.")] = None,
    cv: Annotated[
        bool, typer.Option("--cv", help="Also compare the structural candidates by family.")
    ] = False,
    doc: Annotated[Path | None, typer.Option(help="Write the Markdown report here.")] = None,
) -> None:
    """Numenta Anomaly Benchmark scores of the anomaly detector (any folder of NAB's layout)."""
    from benchmarks.nab import run_nab_bench

    settings = _settings()
    run_nab_bench(data, settings.params_file, json_path, scores, cross_validate=cv, doc_path=doc)


@bench_app.command("features")
def bench_features(
    services: Annotated[int, typer.Option(help="Synthetic services.")] = 100,
    days: Annotated[int, typer.Option(help="Days of telemetry.")] = 28,
    step_minutes: Annotated[int, typer.Option(help="Telemetry resolution.")] = 5,
    online_store: Annotated[str, typer.Option(help="sqlite | redis")] = "sqlite",
    json_path: JsonOut = None,
) -> None:
    """Feature-store timings: feast apply, materialize, model_inputs on a synthetic fleet."""
    import json
    import tempfile

    from benchmarks.features import markdown, run

    _settings()
    home = Path(tempfile.mkdtemp(prefix="forescale-bench-features-")) / "home"
    records = run(home, services, days, step_minutes, online_store)
    out.print(markdown(records))
    if json_path is not None:
        json_path.write_text(
            json.dumps(
                {
                    "services": services,
                    "days": days,
                    "step_minutes": step_minutes,
                    "online_store": online_store,
                    "stages": records,
                },
                indent=2,
            )
        )


@bench_app.command("serve")
def bench_serve(
    services: Annotated[int, typer.Option(help="Services with a published schedule.")] = 2000,
    steps: Annotated[int, typer.Option(help="Steps per schedule.")] = 288,
    seconds: Annotated[int, typer.Option(help="wrk duration of each measurement.")] = 15,
    threads: Annotated[int, typer.Option(help="wrk threads.")] = 2,
    connections: Annotated[int, typer.Option(help="wrk connections.")] = 50,
    json_path: JsonOut = None,
) -> None:
    """wrk against /recommendation (one service among many) beside a bare FastAPI route."""
    from benchmarks.serve import run_serve_bench

    run_serve_bench(_settings(), services, steps, seconds, threads, connections, json_path)


def main() -> None:
    """Entry point of the ``forescale`` script.

    Bad input (a ``ValueError``, a missing file) is reported as one readable message and exit
    code 1; ``FORESCALE_DEBUG=1`` shows the full traceback instead.
    """
    try:
        app()
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("FORESCALE_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] {err}")
        raise SystemExit(1) from err


if __name__ == "__main__":
    main()
