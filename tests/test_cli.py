"""The `forescale` command line and the DVC pipeline that drives it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pandas as pd
import pytest
import typer
import yaml
from typer.testing import CliRunner

from core.settings import REPO_ROOT
from pipelines.cli import PLUGIN_GROUP, add_plugin_commands, app
from pipelines.telemetry import read_telemetry

runner = CliRunner()
FORESCALE = Path(sys.executable).parent / "forescale"
BENCH_OPTIONS = {
    "forecast": [
        "--data",
        "--json",
        "--forecasts",
        "--quick",
        "--no-quick",
        "--training-part",
        "--no-training-part",
        "--params",
        "--m4-params",
        "--report",
        "--from-json",
    ],
    "guard-cv": ["--data", "--json", "--params", "--cache", "--origins"],
    "replay": [
        "--data",
        "--json",
        "--timeline",
        "--plots",
        "--params",
        "--shift-weeks",
        "--trace",
        "--jobs",
        "--cache",
        "--report",
    ],
    "replay-cv": ["--json", "--out", "--candidate"],
    "candidates": ["--out", "--base"],
    "report": ["--json", "--out", "--cv"],
    "nab": ["--data", "--json", "--scores", "--cv", "--doc"],
    "features": ["--services", "--days", "--step-minutes", "--online-store", "--json"],
    "serve": ["--services", "--steps", "--seconds", "--threads", "--connections", "--json"],
    "fleet": ["--services", "--days", "--step-minutes", "--json"],
    "scorecard": ["--day", "--json", "--mlflow", "--no-mlflow", "--publish", "--no-publish"],
}


def test_help_lists_every_stage() -> None:
    add_plugin_commands(app)
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in (
        "telemetry",
        "features",
        "anomalies",
        "train",
        "schedule",
        "pipeline",
        "serve",
        "up",
        "drift",
        "bench",
    ):
        assert command in result.output


def test_bench_is_a_plugin_of_the_installed_entry_point_group() -> None:
    plugins = {entry.name: entry.value for entry in entry_points(group=PLUGIN_GROUP)}
    assert plugins.get("bench") == "benchmarks.cli:bench_app"
    add_plugin_commands(app)
    assert add_plugin_commands(app) == []  # once only
    assert [group.name for group in app.registered_groups].count("bench") == 1


@pytest.mark.parametrize("command", sorted(BENCH_OPTIONS))
def test_every_bench_command_keeps_its_options(command: str) -> None:
    add_plugin_commands(app)
    result = runner.invoke(app, ["bench", command, "--help"])
    assert result.exit_code == 0, result.output
    group = typer.main.get_command(app).commands["bench"]  # type: ignore[attr-defined]
    params = group.commands[command].params
    options = {name for param in params for name in [*param.opts, *param.secondary_opts]}
    assert options == set(BENCH_OPTIONS[command])


def test_a_broken_plugin_is_one_line_on_stderr_and_the_other_commands_work(
    tmp_path: Path,
) -> None:
    info = tmp_path / "broken_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{PLUGIN_GROUP}]\n"
        "absent = no_such_forescale_plugin.cli:app\n"  # package not installed: silent
        "missing = benchmarks.no_such_module:app\n"
        "not-typer = os:sep\n"
        "train = benchmarks.cli:bench_app\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "COLUMNS": "200"}
    runs = {
        args: subprocess.run(
            [str(FORESCALE), *args], capture_output=True, text=True, env=env, check=False
        )
        for args in (("--help",), ("bench", "--help"))
    }
    for result in runs.values():
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        errors = result.stderr.strip().splitlines()
        assert len(errors) == 3, result.stderr
        assert (
            "'missing' (benchmarks.no_such_module:app) not loaded: ModuleNotFoundError"
            in (errors[0])
        )
        assert "'not-typer' (os:sep) not loaded: TypeError: str is not a typer.Typer" in errors[1]
        assert "'train' (benchmarks.cli:bench_app) not loaded: a command of that name" in errors[2]
    assert "train" in runs[("--help",)].stdout and "bench" in runs[("--help",)].stdout
    assert "replay-cv" in runs[("bench", "--help")].stdout


def test_every_dvc_stage_runs_a_real_cli_command_with_existing_inputs() -> None:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["telemetry", "features", "anomalies", "train", "schedule", "scorecard"]
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for name, stage in stages.items():
        words = shlex.split(stage["cmd"])
        assert words[0] == "forescale", name
        command = [w for w in words[1:] if not w.startswith("-") and "$" not in w]
        assert runner.invoke(app, [*command, "--help"]).exit_code == 0, name
        for dep in stage.get("deps", []):
            assert dep.startswith(".forescale/") or (REPO_ROOT / dep).exists(), dep
        for key in stage.get("params", []):  # a section, or a dotted key inside one
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, key
                node = node[part]
    dag = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "dag"],
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert dag.returncode == 0, dag.stderr


def test_generate_stores_validated_telemetry(settings) -> None:
    result = runner.invoke(
        app, ["telemetry", "generate", "--services", "2", "--days", "1", "--step-minutes", "5"]
    )
    assert result.exit_code == 0, result.output
    stored = read_telemetry(settings)
    assert sorted(stored["service"].unique()) == ["checkout", "search"]
    assert len(stored) == 2 * 288


def test_importing_a_bad_file_fails_and_stores_nothing(settings, tmp_path: Path) -> None:
    bad = pd.DataFrame(
        {
            "service": ["api", "api"],
            "ts": ["2026-01-01 00:00", "2026-01-01 00:01"],
            "requests": [5.0, -1.0],
        }
    )
    bad.to_csv(tmp_path / "bad.csv", index=False)
    result = runner.invoke(app, ["telemetry", "import", str(tmp_path / "bad.csv")])
    assert result.exit_code == 2
    assert (
        "column 'requests'" in result.output
        and f"{tmp_path / 'bad.csv'}: service 'api': row 2" in result.output
    )
    assert read_telemetry(settings).empty
    assert list(settings.quarantine_dir.glob("*.parquet"))


@pytest.mark.parametrize(
    "args", [["pipeline", "run", "--services", "0"], ["telemetry", "import", "/nonexistent/path"]]
)
def test_bad_arguments_give_a_clear_error(settings, args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert isinstance(result.exception, ValueError) or (
        result.exit_code == 2
        and "error: telemetry path /nonexistent/path does not exist" in result.output
    )
