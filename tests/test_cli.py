"""The `forescale` command line and the DVC pipeline that drives it."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from core.settings import REPO_ROOT
from pipelines.cli import app
from pipelines.telemetry import read_telemetry

runner = CliRunner()


def test_help_lists_every_stage() -> None:
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
