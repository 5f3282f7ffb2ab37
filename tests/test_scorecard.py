"""The shadow scorecard: one engine with `bench replay`, cold start, the CLI's JSON, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FIXED_END, settings_with_params
from typer.testing import CliRunner

from core.scorecard import FORESCALE, HPA, POLICIES, ScorecardDay
from core.settings import Settings

pytestmark = pytest.mark.slow

DELAY = 2  # minutes: the pods' start-up time in both engines
TRAINING = {"models": ["naive"], "backtest_folds": 1, "history_days": 3}


def _trace(tmp_path: Path) -> Path:
    """Ten days of a daily-seasonal load with evening surges, one row a minute, to FIXED_END."""
    rng = np.random.default_rng(3)
    minutes = pd.date_range(
        FIXED_END - pd.Timedelta(days=10), FIXED_END, freq="min", inclusive="left"
    )
    hour = np.asarray(minutes.hour + minutes.minute / 60, dtype=float)
    load = 200 + 150 * np.sin((hour - 6) / 24 * 2 * np.pi) + rng.normal(0, 12, len(minutes))
    load += np.where((hour >= 19) & (hour < 20.5), 250.0, 0.0)
    folder = tmp_path / "data" / "request_traces"
    folder.mkdir(parents=True)
    pd.DataFrame({"t": minutes.strftime("%Y-%m-%dT%H:%M:%SZ"), "n": load.clip(1)}).to_csv(
        folder / "synth.csv", index=False
    )
    return tmp_path / "data"


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The bench's replay of a trace and the scorecard of a home filled from the same trace."""
    from benchmarks.replay import (
        discover_traces,
        forescale_targets,
        load_profile,
        replay_trace,
        select_traces,
    )
    from core.simulation import keda_behavior
    from pipelines.run import store_and_featurize
    from pipelines.scorecard import run_scorecard

    tmp_path = tmp_path_factory.mktemp("scorecard")
    data = _trace(tmp_path)
    [trace], _ = select_traces(discover_traces(data))
    bounds = {"min_replicas": 1, "max_replicas": 100}
    service = {
        "capacity_per_replica": trace.capacity,
        "startup_seconds": DELAY * 60,
        **bounds,
        "hpa": {"target_utilization": 0.7, **bounds},
    }
    settings = settings_with_params(tmp_path / "home", training=TRAINING, service_defaults=service)
    profile = load_profile(settings.params_file, "forescale")
    targets, _ = forescale_targets([trace], [profile], [DELAY])
    figures, runs = replay_trace(
        trace,
        DELAY,
        {"forescale": targets[("forescale", trace.name, DELAY)]},
        {"forescale": 0.7},
        0.7,
        keda_behavior(),
    )
    load = pd.concat([trace.history, trace.window])
    frame = pd.DataFrame({"service": "synth", "ts": load.index, "requests": load.to_numpy()})
    fresh = frame[frame["ts"] >= FIXED_END - pd.Timedelta(hours=30)].assign(service="fresh")
    store_and_featurize(settings, pd.concat([frame, fresh]), pd.Timedelta(minutes=1))
    path = run_scorecard(settings, days=7, as_of=FIXED_END.to_pydatetime(), now=FIXED_END)
    return {"settings": settings, "bench": figures, "runs": runs, "path": path}


def test_the_scorecards_hpa_and_walked_forward_figures_equal_bench_replays(engines) -> None:
    document = json.loads(engines["path"].read_text())
    cards = [ScorecardDay(**c) for c in document["cards"] if c["service"] == "synth"]
    assert [c.day for c in cards] == [
        (FIXED_END - pd.Timedelta(days=d)).date() for d in range(7, 0, -1)
    ]
    assert all(c.status == "scored" and set(c.policies) == set(POLICIES) for c in cards)
    timeline = pd.read_parquet(engines["path"].parent / "timeline.parquet")
    timeline = timeline[timeline["service"] == "synth"]
    for policy in (HPA, FORESCALE):
        bench, run = engines["bench"][policy], engines["runs"][policy]
        np.testing.assert_array_equal(timeline[f"{policy}_ready"].to_numpy(), run.ready)
        np.testing.assert_array_equal(timeline[f"{policy}_desired"].to_numpy(), run.desired)
        ours = [c.policies[policy] for c in cards]
        assert sum(f.short_minutes for f in ours) == bench["short_minutes"]
        assert sum(f.scaling_actions for f in ours) == bench["scaling_actions"]
        assert sum(f.surges for f in ours) == bench["surges"] > 0
        assert sum(f.pod_hours for f in ours) == pytest.approx(bench["pod_hours"], abs=0.05)
    walked = [c.policies[FORESCALE] for c in cards]
    assert all(f.source == 0.0 for f in walked)  # nothing published: the profile walked forward
    assert all(f.p50_coverage is not None and 0 < f.p90_coverage <= 1 for f in walked)


def test_a_service_without_enough_history_says_so_per_day(engines) -> None:
    document = json.loads(engines["path"].read_text())
    fresh = [ScorecardDay(**c) for c in document["cards"] if c["service"] == "fresh"]
    assert len(fresh) == 7
    assert all(c.status == "not_enough_history" and not c.policies for c in fresh)
    assert fresh[-1].reason == "not enough history (0.2 of 2 days)"
    assert fresh[-1].history_days == pytest.approx(0.25) and fresh[-1].needed_days == 2
    [row] = [r for r in document["summary"] if r["service"] == "fresh"]
    assert row["scored_days"] == 0 and row["reason"].startswith("not enough history")


def test_the_mlflow_run_holds_the_scorecard_and_a_plot_per_service(engines) -> None:
    from mlflow.tracking import MlflowClient

    from models.registry import configure_mlflow

    settings: Settings = engines["settings"]
    document = json.loads(engines["path"].read_text())
    configure_mlflow(settings)
    client = MlflowClient()
    run = client.get_run(document["mlflow_run_id"])
    assert run.data.tags["event"] == "scorecard"
    assert (
        run.data.metrics["synth.hpa_short_minutes"] == document["summary"][1]["hpa_short_minutes"]
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/synth.png"}
    saved = client.download_artifacts(run.info.run_id, "scorecard/scorecard.json")
    assert json.loads(Path(saved).read_text())["cards"] == document["cards"]


def test_cli_scorecard_prints_the_fleet_table_and_writes_the_json(
    engines, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.cli import app

    settings: Settings = engines["settings"]
    monkeypatch.setenv("FORESCALE_HOME", str(settings.home))
    monkeypatch.setenv("FORESCALE_PARAMS_FILE", str(settings.params_file))
    out = tmp_path / "card.json"
    result = CliRunner().invoke(
        app,
        [
            "scorecard",
            "--days",
            "2",
            "--services",
            "synth,fresh",
            "--json",
            str(out),
            "--no-mlflow",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Shadow scorecard" in result.output and "synth" in result.output
    written = json.loads(out.read_text())
    assert set(written) >= {"as_of", "days", "generated_at", "seconds", "summary", "cards"}
    assert written["days"] == 2 and len(written["cards"]) == 4
    [synth] = [r for r in written["summary"] if r["service"] == "synth"]
    assert set(synth) >= {
        "hpa_short_minutes",
        "forescale_short_minutes",
        "hpa_pod_hours",
        "forescale_pod_hours",
        "pod_hours_vs_hpa",
        "hpa_median_lead_minutes",
        "forescale_median_lead_minutes",
        "published_share",
    }
    bad = CliRunner().invoke(app, ["scorecard", "--services", "Not_A_Name", "--no-mlflow"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_published_schedules_are_served_by_the_api_rule_with_staleness_fallback(
    settings: Settings,
) -> None:
    from core.service_config import ServiceConfig
    from pipelines.scorecard import (
        coverage,
        published_schedules,
        schedule_forecasts,
        schedule_served,
    )
    from serving.schemas import SchedulePublish, ScheduleStep
    from serving.store import ScheduleStore

    start = FIXED_END - pd.Timedelta(days=1)

    def body(published: pd.Timestamp, replicas: int, hours: float) -> SchedulePublish:
        steps = [
            ScheduleStep(
                ts=published + pd.Timedelta(minutes=5 * i),
                replicas=replicas,
                forecast_p50=100.0,
                forecast_p90=120.0,
            )
            for i in range(36)
        ]
        return SchedulePublish(
            model_version="m/1",
            generated_at=published,
            valid_until=published + pd.Timedelta(hours=hours),
            step_seconds=300,
            steps=steps,
        )

    settings.ensure_dirs()
    store = ScheduleStore(settings.schedule_db)
    store.publish("web", body(start - pd.Timedelta(hours=2), 9, 1))  # stale before the day
    store.publish("web", body(start + pd.Timedelta(hours=1), 5, 2))
    store.publish("web", body(start + pd.Timedelta(days=1), 7, 2))  # after the day: not used
    store.dispose()
    schedules = published_schedules(settings, "web", start, start + pd.Timedelta(days=1))
    assert [s.version for s in schedules] == [1, 2]
    config = ServiceConfig(min_replicas=2, max_replicas=50, startup_seconds=120)
    served = schedule_served(schedules, start, 1440, config)
    assert (served[:60] == 2).all()  # version 1 is stale: the fallback, min_replicas
    assert (served[60:180] == 5).all()  # version 2 while valid
    assert (served[181:] == 2).all()  # stale again after its 2 h
    actual = pd.DataFrame({"ts": pd.date_range(start, periods=288, freq="5min"), "requests": 110.0})
    rows = coverage(schedule_forecasts(schedules), actual)
    assert len(rows) == 36 + 12  # the steps of version 2, and the tail of version 1
    assert float((rows["requests"] <= rows["p90"]).mean()) == 1.0


def test_schedules_in_force_reads_what_walking_back_version_by_version_reads(
    tmp_path: Path,
) -> None:
    from serving.schemas import SchedulePublish, ScheduleStep
    from serving.store import ScheduleStore

    start = FIXED_END - pd.Timedelta(days=1)
    end = FIXED_END

    def body(published: pd.Timestamp) -> SchedulePublish:
        return SchedulePublish(
            model_version="m/1",
            generated_at=published,
            valid_until=published + pd.Timedelta(hours=2),
            step_seconds=300,
            steps=[
                ScheduleStep(ts=published + pd.Timedelta(minutes=5 * i), replicas=3 + i)
                for i in range(3)
            ],
        )

    def walked_back(store: ScheduleStore, service: str) -> list[tuple[int, object]]:
        """The scorecard's earlier read: one ``get`` per version, newest first."""
        found = []
        for version in range(store.latest_versions().get(service, 0), 0, -1):
            schedule = store.get(service, version)
            assert schedule is not None
            if schedule.generated_at >= end:
                continue
            found.append(schedule)
            if schedule.generated_at <= start:
                break
        return [
            (s.version, s.generated_at)
            for s in sorted(found, key=lambda s: (s.generated_at, s.version))
        ]

    hours = pd.Timedelta(hours=1)
    store = ScheduleStore(f"sqlite:///{tmp_path / 'store.db'}")
    published = {
        # versions published out of order, one at the start, one at the end, some after it
        "web": [
            start - 3 * hours,
            start - hours,
            start + hours,
            start,
            start + 5 * hours,
            end,
            end - hours,
            end + hours,
            start + 2 * hours,
        ],
        "late": [start + 4 * hours, start + 9 * hours, end + hours],  # nothing by the start
        "gone": [start - 5 * hours, start - 2 * hours],  # nothing inside the period
        "after": [end, end + hours],  # nothing before the end
    }
    for service, instants in published.items():
        for instant in instants:
            store.publish(service, body(instant))
    for service in [*published, "never"]:
        bulk = store.schedules_in_force(service, start.to_pydatetime(), end.to_pydatetime())
        assert [(s.version, s.generated_at) for s in bulk] == walked_back(store, service), service
        for one in bulk:
            assert one == store.get(service, one.version)
    assert [s.version for s in store.schedules_in_force("web", start, end)] == [4, 9, 5, 7]
    with pytest.raises(ValueError, match="timezone-aware"):
        store.schedules_in_force("web", start.tz_localize(None).to_pydatetime(), end)
    store.dispose()
