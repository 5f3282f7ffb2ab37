"""`forescale bench fleet`: a real run at a tiny size through the command, and its options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks.fleet import GROWTH_BASE, growth
from pipelines.cli import add_plugin_commands, app

FORESCALE = Path(sys.executable).parent / "forescale"
STAGE_FIELDS = ("retrain_s", "ingest_s", "publish_s", "peak_rss_mib")


def test_a_tiny_fleet_times_every_dag_stage(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    env = {**os.environ, "FORESCALE_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    result = subprocess.run(
        [str(FORESCALE), "bench", "fleet", "--services", "2", "--days", "5", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(out.read_text())
    assert set(document) >= {"sizes", "growth_ratio"}
    assert list(document["sizes"]) == ["2"]
    figures = document["sizes"]["2"]
    for field in STAGE_FIELDS:
        assert figures[field] > 0, field
    assert document["growth_ratio"] is None  # one size: nothing to compare
    assert figures["trained"] == 2 and figures["published"] == 2
    assert figures["rows"] == 2 * 5 * 288 and figures["ingest_rows"] == 2
    retrain = figures["phases"]["retrain"]["calls"]
    assert len(retrain["train_shard"]) == figures["shards"] == 1
    assert all(s > 0 for s in retrain["train_shard"])
    publish = figures["phases"]["publish"]["calls"]
    assert list(publish) == [
        "check_rollbacks",
        "plan_shards",
        "forecast_shard",
        "build_schedules",
        "publish_schedules",
        "prune_runs",
    ]
    steady = figures["phases"]["publish_steady"]
    assert list(steady["calls"]) == list(publish)
    assert steady["record_files"] == 3 * 24 * 12  # schedule.tail_days of 5-minute issues, 1 shard
    assert figures["publish_s"] == steady["seconds"] and figures["publish_first_s"] > 0
    assert list(figures["phases"]["ingest"]["calls"]) == [
        "extract_batch",
        "validate_batch",
        "store_batch",
        "update_offline_features",
        "apply_features",
        "materialize_features",
        "score_anomalies",
    ]
    assert "| 2 | 2,880 |" in result.stdout and "growth ratio: none" in result.stdout
    assert "Materializing" not in result.stdout  # library output goes to stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "home").exists()  # the fleet lives in its own temporary home


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--services", "0", "--days", "7"], "--services must be at least 1"),
        (["--services", "5", "--services", "-3", "--days", "7"], "--services must be at least 1"),
        (["--services", "5", "--days", "2"], "--days must be at least 4"),
        (["--services", "5", "--days", "7", "--step-minutes", "3"], "--step-minutes must divide"),
        (["--services", "5", "--days", "7", "--step-minutes", "0"], "--step-minutes must divide"),
    ],
)
def test_bad_options_are_one_error_and_exit_code_2(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORESCALE_HOME", str(tmp_path / "home"))
    add_plugin_commands(app)
    result = CliRunner().invoke(app, ["bench", "fleet", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


def test_days_and_services_are_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORESCALE_HOME", str(tmp_path / "home"))
    add_plugin_commands(app)
    for args in (["--days", "7"], ["--services", "5"]):
        result = CliRunner().invoke(app, ["bench", "fleet", *args])
        assert result.exit_code == 2, result.output


def _sizes(seconds: dict[int, float]) -> dict[str, dict[str, float]]:
    return {str(n): {"retrain_s": s} for n, s in seconds.items()}


def test_growth_is_per_service_retrain_time_at_the_largest_over_the_base() -> None:
    ratio, base, largest = growth(_sizes({GROWTH_BASE: 250.0, 500: 600.0, 2000: 4000.0}))
    assert (base, largest) == (GROWTH_BASE, 2000)
    assert ratio == pytest.approx((4000.0 / 2000) / (250.0 / 250))
    ratio, base, largest = growth(_sizes({10: 20.0, 25: 75.0}))  # no 250: the smallest
    assert (base, largest, ratio) == (10, 25, pytest.approx(1.5))
    assert growth(_sizes({25: 75.0})) == (None, 25, 25)


def test_a_size_that_fails_leaves_the_sizes_measured_before_it_in_the_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import fleet

    def run_size(n: int, *_: object) -> dict:
        if n == 3:
            raise fleet.FleetBenchError("size 3: the retrain process failed")
        return {"services": n, "retrain_s": 2.0 * n}

    monkeypatch.setattr(fleet, "_run_size", run_size)  # the fault: a size's process fails
    monkeypatch.setenv("FORESCALE_HOME", str(tmp_path / "home"))
    add_plugin_commands(app)
    out = tmp_path / "fleet.json"
    args = ["--services", "2", "--services", "3", "--days", "5", "--json", str(out)]
    result = CliRunner().invoke(app, ["bench", "fleet", *args])
    assert result.exit_code == 1
    assert "size 3" in result.output and f"measured before are in {out}" in result.output
    assert list(json.loads(out.read_text())["sizes"]) == ["2"]
