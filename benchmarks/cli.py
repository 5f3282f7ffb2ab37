"""The ``forescale bench`` command group: benchmarks on public data (figures, not tests).

The ``forescale`` command adds this Typer app as a plugin of the ``forescale.commands``
entry-point group (pyproject.toml), so the product never imports ``benchmarks``. Heavy libraries
are imported inside the commands, so ``forescale --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.settings import REPO_ROOT
from pipelines.cli import cli_settings, out

bench_app = typer.Typer(
    help="Benchmarks on public data (print figures; not tests).", no_args_is_help=True
)

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
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

    cli_settings()
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

    cli_settings()
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

    cli_settings()
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


@bench_app.command("candidates")
def bench_candidates(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the candidate files.")],
    base: Annotated[
        Path, typer.Option(help="The params file the candidates start from.")
    ] = REPO_ROOT / "params.yaml",
) -> None:
    """Write the replay cross-validation's candidates: complete params files from --base."""
    from benchmarks.replay_cv import write_candidates

    for path in write_candidates(base, out_dir):
        out.print(str(path))


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

    settings = cli_settings()
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

    cli_settings()
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

    run_serve_bench(cli_settings(), services, steps, seconds, threads, connections, json_path)


@bench_app.command("fleet")
def bench_fleet(
    services: Annotated[
        list[int],
        typer.Option(
            "--services", help="Fleet size (repeatable; each in its own home and process)."
        ),
    ],
    days: Annotated[int, typer.Option(help="Days of synthetic history.")],
    step_minutes: Annotated[int, typer.Option(help="Telemetry resolution in minutes.")] = 5,
    json_path: JsonOut = None,
) -> None:
    """Time forecast_retrain, one telemetry_ingest and one schedule_publish per fleet size."""
    import json

    from benchmarks.fleet import FleetBenchError, run_fleet_bench, table
    from pipelines.cli import console

    settings = cli_settings()
    written: list[int] = []

    def write_json(figures: dict) -> None:
        """Write the figures measured so far (each size as soon as it is measured)."""
        if json_path is None:
            return
        written.append(len(figures["sizes"]))
        json_path.parent.mkdir(parents=True, exist_ok=True)
        partial = json_path.with_name(f".{json_path.name}.partial")
        partial.write_text(json.dumps(figures, indent=2))
        partial.replace(json_path)

    try:
        result = run_fleet_bench(
            services,
            days,
            step_minutes,
            settings.params_file,
            settings.step_minutes,
            progress=lambda line: console.print(f"> {line}", markup=False, highlight=False),
            measured=write_json,
        )
    except (ValueError, FleetBenchError) as err:
        console.print(f"error: {err}", markup=False, highlight=False)
        if written:
            console.print(f"the sizes measured before are in {json_path}", markup=False)
        raise typer.Exit(2 if isinstance(err, ValueError) else 1) from None
    out.print(table(result), markup=False, highlight=False)
    if json_path is not None:
        write_json(result)
        out.print(f"figures: {json_path}", markup=False, highlight=False)


@bench_app.command("scorecard")
def bench_scorecard(
    day: Annotated[
        str | None,
        typer.Option(
            help="The scored UTC day, YYYY-MM-DD (default: the day before the data's end)."
        ),
    ] = None,
    publish: Annotated[
        bool,
        typer.Option(
            "--publish/--no-publish",
            help="First publish a schedule per service every 5 minutes of the day.",
        ),
    ] = True,
    mlflow_run: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="Log the scorecard's MLflow run.")
    ] = True,
    json_path: JsonOut = None,
) -> None:
    """Time one daily scorecard of every stored service in steady state (no walk-forward)."""
    import json
    from datetime import date, timedelta

    from benchmarks.scorecard_fleet import publish_day, time_scorecard
    from pipelines.cli import _progress
    from pipelines.telemetry import list_services, resolve_as_of

    settings = cli_settings()
    try:
        scored = (
            date.fromisoformat(day)
            if day
            else resolve_as_of(settings, None).date() - timedelta(days=1)
        )
    except ValueError as err:
        raise typer.BadParameter(f"--day: {err}") from None
    services = list_services(settings)
    if publish:
        count = publish_day(settings, scored, services, _progress)
        out.print(f"published {count} schedules on {scored} for {len(services)} service(s)")
    result = time_scorecard(settings, scored, log_to_mlflow=mlflow_run)
    out.print(json.dumps(result, indent=2))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))
