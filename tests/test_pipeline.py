"""The one-shot pipeline end to end, champion promotion and live rollback (real MLflow, Feast)."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import FIXED_END, settings_with_params

from core.schema import SERVICE, TS
from core.settings import REPO_ROOT, Settings, get_settings
from models.registry import PREVIOUS, champion, configure_mlflow, load_version
from pipelines.run import run_pipeline
from serving.store import ScheduleStore

pytestmark = pytest.mark.slow


FAST_TRAINING = {"backtest_folds": 2, "history_days": 10, "models": ["prophet", "lightgbm"]}


def copy_of(settings: Settings, tmp_path, **sections: dict) -> Settings:
    """A private copy of a pipeline home (its params.yaml with ``sections`` merged)."""
    home = tmp_path / "home"
    shutil.copytree(settings.home, home)
    return settings_with_params(home, **sections)


@pytest.fixture(scope="module")
def pipeline_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list]:
    settings = settings_with_params(
        tmp_path_factory.mktemp("pipeline") / "home", training=FAST_TRAINING
    )
    lines: list[str] = []
    summaries = run_pipeline(
        settings,
        services=2,
        days=9,
        step_minutes=5,
        seed=11,
        progress=lines.append,
        run_end=FIXED_END,
    )
    assert any("training" in line for line in lines) and any("feature" in line for line in lines)
    return settings, summaries


def test_every_service_gets_a_champion_and_a_served_schedule(pipeline_home) -> None:
    settings, summaries = pipeline_home
    assert [s.service for s in summaries] == ["checkout", "search"]
    configure_mlflow(settings)
    store = ScheduleStore(settings.schedule_db)
    for summary in summaries:
        assert summary.family in {"prophet", "lightgbm"} and summary.promoted
        current = champion(summary.service)
        assert current is not None and current.label == summary.model_version
        schedule = store.latest(summary.service)
        assert schedule is not None and schedule.model_version == summary.model_version
        assert len(schedule.steps) == 24 * 12
        assert max(step.replicas for step in schedule.steps) == summary.peak_replicas
        assert summary.backtest_error > 0


def test_the_run_summary_records_what_pipeline_run_json_writes(pipeline_home) -> None:
    from pipelines.run import summary_records

    settings, summaries = pipeline_home
    records = json.loads(json.dumps(summary_records(summaries)))
    configure_mlflow(settings)
    for record, summary in zip(records, summaries, strict=True):
        assert set(record) == {
            "service",
            "status",
            "reason",
            "family",
            "version",
            "backtest_error",
            "promoted",
            "peak_replicas",
        }
        assert record["family"] == summary.family and record["promoted"] is True
        assert (record["status"], record["reason"]) == ("trained", "")
        assert f"{record['version']}" == champion(record["service"]).version
        assert record["backtest_error"] == pytest.approx(summary.backtest_error)
        assert record["peak_replicas"] == summary.peak_replicas >= 1


def test_the_published_schedule_comes_with_an_explanation_in_words(pipeline_home) -> None:
    settings, summaries = pipeline_home
    version, explanation = ScheduleStore(settings.schedule_db).get_explanation(summaries[0].service)
    assert version == summaries[0].schedule_version
    assert explanation["model_version"] == summaries[0].model_version
    assert len(explanation["peaks"]) == 3
    from core.service_config import service_config

    risk = service_config(settings.params_file, summaries[0].service).risk
    assert explanation["sizing"].startswith(
        f"risk {risk:.3g}: the forecast's own {100 * (1 - risk):.3g}% quantile"
    )
    for peak in explanation["peaks"]:
        assert peak["drivers"] and "peak" in peak["text"] and "%" in peak["text"]


def test_explanations_recorded_at_the_forecast_equal_those_found_again_at_publication(
    pipeline_home, tmp_path
) -> None:
    from pipelines.publish import explain_schedule, recorded_peak_drivers

    settings, summaries = pipeline_home
    configure_mlflow(settings)
    (path,) = sorted((settings.artifacts_dir / "schedules").glob("*/*.parquet"))
    schedules = pd.read_parquet(path)
    recorded = recorded_peak_drivers(path)
    (forecast_path,) = sorted((settings.artifacts_dir / "forecasts").glob("*/*.parquet"))
    assert recorded_peak_drivers(forecast_path) == recorded
    assert set(recorded) == {summary.service for summary in summaries}
    store = ScheduleStore(settings.schedule_db)
    for summary in summaries:
        rows = schedules[schedules[SERVICE] == summary.service]
        _, published = store.get_explanation(summary.service)
        found_again = explain_schedule(settings, rows)  # loads the model, reads the history
        assert published == json.loads(json.dumps(found_again))
        assert published == json.loads(
            json.dumps(explain_schedule(settings, rows, recorded[summary.service]))
        )
    store.dispose()
    schedules.to_parquet(tmp_path / "written-without-drivers.parquet")
    assert recorded_peak_drivers(tmp_path / "written-without-drivers.parquet") == {}


def test_the_champion_forecasts_from_fresh_history(pipeline_home) -> None:
    settings, summaries = pipeline_home
    from pipelines.publish import recent_history

    model = load_version(summaries[1].model_version)
    history = recent_history(settings, ["search"], FIXED_END)
    forecast = model.predict(12, (0.5, 0.9), history=history)
    assert forecast[TS].min() > history[TS].max()
    assert (forecast["p90"] >= forecast["p50"]).all() and (forecast["p50"] >= 0).all()


def test_a_retrain_that_does_not_beat_the_champion_is_registered_but_not_promoted(
    pipeline_home, tmp_path
) -> None:
    settings, _ = pipeline_home
    from models.registry import RegisteredVersion, promote
    from pipelines.training import train_shard

    naive = copy_of(settings, tmp_path, training={**FAST_TRAINING, "models": ["naive"]})
    # A seasonal-naive champion: the same family retrained on the same folds scores exactly
    # the same (relative MAE 1.0: the backtest's yardstick is that forecaster), and a tie is not
    # a win.
    first = json.loads(train_shard(naive, ["checkout"]).read_text())["services"][0]
    configure_mlflow(naive)
    name = champion("checkout").name
    promote(RegisteredVersion(name, first["version"], "naive", first["backtest_error"], None))
    result = json.loads(train_shard(naive, ["checkout"], reason="drift").read_text())
    row = result["services"][0]
    assert result["reason"] == "drift"
    assert row["family"] == "naive" and row["promoted"] is False, json.dumps(row)
    assert row["champion_error"] == row["backtest_error"] == 1.0
    assert champion("checkout").label == f"{name}/{first['version']}"
    assert int(row["version"]) == int(first["version"]) + 1


def test_champions_backtested_together_score_as_each_alone(pipeline_home) -> None:
    from models.catalog import forecaster_factory
    from pipelines.features import model_inputs
    from pipelines.training import (
        TrainingConfig,
        champion_backtest_error,
        champion_backtest_errors,
    )

    settings, summaries = pipeline_home
    config = TrainingConfig.from_params(settings)
    services = [summary.service for summary in summaries]
    history = model_inputs(settings, services, FIXED_END - pd.Timedelta(days=8), FIXED_END)
    model = forecaster_factory("lightgbm", {"n_estimators": 20}, (0.5, 0.9))().fit(history)
    own = {service: rows for service, rows in history.groupby(SERVICE)}
    together = champion_backtest_errors(model, own, config)
    assert together == {s: champion_backtest_error(model, own[s], config) for s in services}
    assert all(0 < error < float("inf") for error in together.values())


def test_a_shard_logs_each_fitted_model_once_and_registers_it_per_service(
    pipeline_home, tmp_path
) -> None:
    from mlflow import MlflowClient

    from pipelines.training import train_shard

    settings, _ = pipeline_home
    naive = copy_of(settings, tmp_path, training={**FAST_TRAINING, "models": ["naive"]})
    rows = json.loads(train_shard(naive, ["checkout", "search"]).read_text())["services"]
    configure_mlflow(naive)
    client = MlflowClient()
    versions = [client.get_model_version(f"forescale-{r['service']}", r["version"]) for r in rows]
    assert len({v.source for v in versions}) == 1  # one stored model for the shard's family
    assert [v.run_id for v in versions] == [r["run_id"] for r in rows]  # each service's run
    assert [v.tags["service_run"] for v in versions] == [r["run_id"] for r in rows]
    assert [v.tags["model_family"] for v in versions] == ["naive", "naive"]
    for row in rows:
        model = load_version(f"forescale-{row['service']}/{row['version']}")
        forecast = model.predict(12, (0.5,))  # the shard's model knows both services
        assert forecast.groupby(SERVICE).size().to_dict() == {"checkout": 12, "search": 12}


def _trained_alone(pipeline_home, tmp_path, family: str):
    """Train ``search`` with ``family`` as the only family; the registered model, loaded back."""
    from pipelines.training import train_shard

    settings, _ = pipeline_home
    alone = copy_of(settings, tmp_path, training={**FAST_TRAINING, "models": [family]})
    result = json.loads(train_shard(alone, ["search"], reason="drift").read_text())
    row = result["services"][0]
    assert row["family"] == family and row["backtest_error"] > 0
    configure_mlflow(alone)
    return load_version(f"forescale-search/{row['version']}")


def test_the_holt_winters_family_trains_registers_and_forecasts(pipeline_home, tmp_path) -> None:
    model = _trained_alone(pipeline_home, tmp_path, "holt_winters")
    forecast = model.predict(12, (0.5, 0.9))
    assert len(forecast) == 12 and (forecast["p90"] >= forecast["p50"]).all()


def test_the_params_ensemble_trains_registers_forecasts_and_explains(
    pipeline_home, tmp_path
) -> None:
    from models.explain import explain_peaks

    model = _trained_alone(pipeline_home, tmp_path, "ensemble")
    assert set(model.members) == {"short", "lightgbm", "lightgbm_log", "naive"}
    assert model.guard_windows == 1 and set(model.guard_ratios_) <= {"search"}
    forecast = model.predict(24, (0.5, 0.9))
    assert len(forecast) == 24 and (forecast["p90"] >= forecast["p50"]).all()
    schedule = forecast.assign(replicas=3, forecast_p90=forecast["p90"])
    explained = explain_peaks(model, model.history_, schedule, n_peaks=1)
    assert explained["family"] == "ensemble" and explained["peaks"][0]["drivers"]


def _served(
    settings: Settings, label: str, issued: pd.Timestamp, actual: pd.DataFrame, factor: float
) -> None:
    """Write a forecast file as forecast_shard would, with p50 = factor x what really came."""
    rows = actual[actual[TS] >= issued].assign(model_version=label)
    rows = rows.assign(p50=rows["requests"] * factor, p90=rows["requests"] * factor * 1.2)
    folder = settings.artifacts_dir / "forecasts" / f"{issued:%Y%m%dT%H%M}"
    folder.mkdir(parents=True, exist_ok=True)
    rows[[SERVICE, TS, "p50", "p90", "model_version"]].to_parquet(folder / "checkout.parquet")


def test_live_rollback_moves_the_champion_back(pipeline_home, tmp_path) -> None:
    settings, summaries = pipeline_home
    from models.registry import RegisteredVersion, promote
    from pipelines.publish import recent_history
    from pipelines.rollback import check_rollbacks
    from pipelines.telemetry import telemetry_span
    from pipelines.training import train_shard

    copy = copy_of(
        settings,
        tmp_path,
        training={**FAST_TRAINING, "models": ["naive"]},
        rollback={"window_hours": 6, "margin": 0.2, "min_points": 12},
    )
    first = summaries[0].model_version
    row = json.loads(train_shard(copy, ["checkout"]).read_text())["services"][0]
    name = first.split("/")[0]
    promote(RegisteredVersion(name, row["version"], "naive", row["backtest_error"], None))
    bad = f"{name}/{row['version']}"
    assert champion("checkout").label == bad

    now = telemetry_span(copy)[1]
    issued = now - pd.Timedelta(hours=6)
    actual = recent_history(copy, ["checkout"], now, days=1)
    _served(copy, bad, issued, actual, factor=3.0)
    decision = json.loads(check_rollbacks(copy, ["checkout"], now=now).read_text())[0]
    assert decision["rolled_back"] is True and decision["points"] == 72, decision
    assert decision["live_error"] > decision["previous_backtest_error"] * 1.2
    assert champion("checkout").label == first
    assert champion("checkout", PREVIOUS).label == bad
    events = (copy.artifacts_dir / "rollbacks.jsonl").read_text().splitlines()
    assert json.loads(events[-1])["previous"] == first


def test_no_rollback_while_the_live_error_is_within_the_margin(pipeline_home, tmp_path) -> None:
    settings, summaries = pipeline_home
    from models.registry import RegisteredVersion, promote
    from pipelines.publish import recent_history
    from pipelines.rollback import check_rollbacks
    from pipelines.telemetry import telemetry_span
    from pipelines.training import train_shard

    copy = copy_of(settings, tmp_path, training={**FAST_TRAINING, "models": ["naive"]})
    row = json.loads(train_shard(copy, ["checkout"]).read_text())["services"][0]
    name = summaries[0].model_version.split("/")[0]
    promote(RegisteredVersion(name, row["version"], "naive", row["backtest_error"], None))
    label = f"{name}/{row['version']}"
    now = telemetry_span(copy)[1]
    actual = recent_history(copy, ["checkout"], now, days=1)
    _served(copy, label, now - pd.Timedelta(hours=6), actual, factor=1.0)
    decision = json.loads(check_rollbacks(copy, ["checkout"], now=now).read_text())[0]
    assert decision["rolled_back"] is False and decision["live_error"] == 0.0
    assert champion("checkout").label == label


def test_pipeline_on_historical_files_builds_but_does_not_publish(tmp_path, make_fleet) -> None:
    trace = make_fleet(services=1, days=5, step_minutes=5, end=pd.Timestamp("2020-03-02", tz="UTC"))
    source = tmp_path / "traces"
    source.mkdir()
    trace[[TS, "requests"]].rename(columns={TS: "timestamp", "requests": "value"}).to_csv(
        source / "legacy-api.csv", index=False
    )
    settings = settings_with_params(
        tmp_path / "home", training={**FAST_TRAINING, "history_days": 5}
    )
    lines: list[str] = []
    [summary] = run_pipeline(settings, source_dir=source, step_minutes=5, progress=lines.append)
    assert summary.service == "legacy-api" and summary.schedule_version is None
    assert summary.peak_replicas >= 2 and summary.model_version.startswith("forescale-legacy-api/")
    assert any("not published" in line for line in lines)
    assert ScheduleStore(settings.schedule_db).latest("legacy-api") is None


def test_a_service_with_too_little_history_is_reported_and_served_the_floor(
    tmp_path, make_fleet
) -> None:
    """Cold start end to end: training leaves the newcomer out, the forecast skips it, the run
    reports it, and the API serves it the reactive floor saying why."""
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from pipelines.run import summary_records
    from serving.app import create_app
    from tests.serving_fixtures import READ_TOKEN, TOKEN, auth

    trace = make_fleet(services=2, days=5, step_minutes=5, end=FIXED_END)
    names = sorted(trace[SERVICE].unique())
    source = tmp_path / "traces"
    source.mkdir()
    for name, file_name, days in ((names[0], "steady", 5), (names[1], "newcomer", 1)):
        own = trace[(trace[SERVICE] == name) & (trace[TS] >= FIXED_END - pd.Timedelta(days=days))]
        own[[TS, "requests"]].rename(columns={TS: "timestamp", "requests": "value"}).to_csv(
            source / f"{file_name}.csv", index=False
        )
    settings = settings_with_params(
        tmp_path / "home",
        training={"backtest_folds": 2, "history_days": 5, "models": ["naive"]},
        service_defaults={"mode": "active"},
    )
    lines: list[str] = []
    summaries = run_pipeline(
        settings, source_dir=source, step_minutes=5, progress=lines.append, run_end=FIXED_END
    )
    by_name = {s.service: s for s in summaries}
    assert by_name["steady"].status == "trained" and by_name["steady"].schedule_version == 1
    assert by_name["newcomer"].status == "not_trained"
    assert by_name["newcomer"].reason == "not enough history (1.0 of 3 days)"
    assert any("not trained (cold start" in line for line in lines)
    records = {r["service"]: r for r in json.loads(json.dumps(summary_records(summaries)))}
    assert records["newcomer"]["status"] == "not_trained"
    assert records["newcomer"]["version"] is None and records["newcomer"]["backtest_error"] is None
    store = ScheduleStore(settings.schedule_db)
    assert store.latest("newcomer") is None
    assert store.cold_starts()["newcomer"].reason == "not enough history (1.0 of 3 days)"
    store.dispose()
    api = settings.model_copy(
        update={"api_token": SecretStr(TOKEN), "api_read_token": SecretStr(READ_TOKEN)}
    )
    app = create_app(api, clock=lambda: FIXED_END.to_pydatetime())
    with TestClient(app, headers=auth(READ_TOKEN)) as client:
        served = client.get("/v1/services/newcomer/recommendation").json()
    app.state.store.dispose()
    assert (served["source"], served["mode"]) == ("fallback", "active")
    assert served["reason"].startswith("cold start, not enough history (1.0 of 3 days)")


def test_a_forecast_whose_explanation_fails_is_still_written_and_published(
    pipeline_home, tmp_path, monkeypatch
) -> None:
    import pipelines.publish
    from pipelines.publish import (
        build_schedules,
        forecast_shard,
        publish_schedules,
        recorded_peak_drivers,
    )

    settings = copy_of(pipeline_home[0], tmp_path)
    services = [summary.service for summary in pipeline_home[1]]

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("SHAP failed")

    monkeypatch.setattr(pipelines.publish, "peak_drivers", broken)
    origin = (FIXED_END + pd.Timedelta(minutes=5)).to_pydatetime()
    forecast = forecast_shard(settings, services, as_of=origin)
    assert set(pd.read_parquet(forecast)[SERVICE]) == set(services)
    assert recorded_peak_drivers(forecast) == {}
    monkeypatch.undo()  # publication explains them from the model and a fresh read
    published = json.loads(
        publish_schedules(settings, build_schedules(settings, forecast), as_of=origin).read_text()
    )
    assert set(published) == set(services)
    assert all("peak" in entry["explanation"] for entry in published.values())


def test_a_shard_without_champions_forecasts_and_publishes_nothing(tmp_path) -> None:
    from pipelines.publish import build_schedules, forecast_shard, publish_schedules

    settings = settings_with_params(tmp_path / "home")
    settings.ensure_dirs()
    forecast = forecast_shard(settings, ["nobody-trained"], as_of=FIXED_END.to_pydatetime())
    frame = pd.read_parquet(forecast)
    assert frame.empty and list(frame.columns) == [SERVICE, TS, "p50", "p90", "model_version"]
    assert str(frame[TS].dtype) == "datetime64[ns, UTC]"
    schedules = build_schedules(settings, forecast)
    assert pd.read_parquet(schedules).empty
    published = publish_schedules(settings, schedules, as_of=FIXED_END.to_pydatetime())
    assert json.loads(published.read_text()) == {}


def test_mlflow_holds_overall_backtest_metrics_and_each_services_own(pipeline_home) -> None:
    import mlflow

    settings, summaries = pipeline_home
    configure_mlflow(settings)
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.reason = 'manual'")
    parent = runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]
    for family in FAST_TRAINING["models"]:
        assert parent[f"metrics.backtest_{family}.relative_mae"] > 0
    # Per-service figures live in each service's run, not as thousands of shard-run metrics.
    assert not [c for c in runs.columns if c.startswith("metrics.backtest_lightgbm.checkout")]
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]]
    assert sorted(children["tags.service"]) == [s.service for s in summaries]
    assert (children["metrics.backtest_relative_mae"] > 0).all()
    for family in FAST_TRAINING["models"]:
        assert (children[f"metrics.backtest_relative_mae_{family}"] > 0).all()
    # So the models logged in the shard's run carry only its overall metrics.
    client = mlflow.MlflowClient()
    models = client.search_logged_models(
        experiment_ids=[str(parent["experiment_id"])],
        filter_string=f"source_run_id = '{parent['run_id']}'",
    )
    assert models
    assert not [x.key for m in models for x in (m.metrics or []) if ".checkout." in x.key]


@pytest.mark.integration
def test_the_same_pipeline_runs_on_postgresql_and_redis(tmp_path) -> None:
    """Production wiring by configuration alone: MLflow and schedules in PostgreSQL, Redis online."""
    import uuid

    psycopg = pytest.importorskip("psycopg")
    redis = pytest.importorskip("redis")
    database = f"forescale_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True, connect_timeout=3
        ) as admin:
            admin.execute(f"CREATE DATABASE {database}")
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=3).ping()
    except (psycopg.OperationalError, redis.exceptions.ConnectionError) as error:
        pytest.skip(f"local PostgreSQL or Redis unreachable: {error}")
    url = f"postgresql://postgres@127.0.0.1:5432/{database}"
    try:
        base = settings_with_params(
            tmp_path / "home", training={**FAST_TRAINING, "models": ["lightgbm"]}
        )
        settings = get_settings(
            home=base.home,
            params_file=base.params_file,
            schedule_db_url=url,
            online_store="redis",
            mlflow_tracking_uri=url.replace("postgresql://", "postgresql+psycopg://"),
        )
        summaries = run_pipeline(
            settings, services=2, days=9, step_minutes=5, seed=3, run_end=FIXED_END
        )
        store = ScheduleStore(url)
        assert {s.service: store.latest(s.service).model_version for s in summaries} == {
            s.service: s.model_version for s in summaries
        }
        store.dispose()
        configure_mlflow(settings)
        assert champion(summaries[0].service).label == summaries[0].model_version
        assert (settings.mlflow_artifacts_dir / "forescale-forecasting").is_dir()
        assert not (REPO_ROOT / "mlruns").exists()
    finally:
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'detach.db'}")  # let the DB be dropped
        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True
        ) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def test_schedules_are_planned_on_the_tail_of_their_recent_forecast_errors(
    pipeline_home, tmp_path, caplog
) -> None:
    settings, _ = pipeline_home
    import numpy as np

    from core.policy import plan_replicas
    from core.service_config import service_config
    from pipelines.forecast_record import service_records
    from pipelines.publish import (
        build_schedules,
        forecast_shard,
        recent_history,
        sizing_in_words,
    )
    from pipelines.telemetry import telemetry_span

    tailed = copy_of(settings, tmp_path, schedule={"tail_days": 3, "blend_with_persistence": False})
    configure_mlflow(tailed)
    now = telemetry_span(tailed)[1].floor("5min")
    actual = recent_history(tailed, ["checkout"], now, days=1)
    # pods sized so that the day's peak needs 10 at 100 %
    sized = {"capacity_per_replica": float(actual["requests"].max()) / 10, "max_replicas": 1000}
    tailed = settings_with_params(
        tailed.home,
        schedule={"tail_days": 3, "blend_with_persistence": False},
        service_defaults=sized,
    )
    label = champion("checkout").label
    # the champion's forecasts of the last 3 hours were half of what came, p90 at 0.6x: every
    # standardized error is (1 - 0.5) / (0.6 - 0.5) = 5
    for minutes in range(5, 3 * 60 + 1, 5):
        issued = now - pd.Timedelta(minutes=minutes)
        rows = actual[actual[TS] >= issued].assign(model_version=label)
        rows = rows.assign(p50=rows["requests"] * 0.5, p90=rows["requests"] * 0.6)
        folder = tailed.artifacts_dir / "forecasts" / f"{issued:%Y%m%dT%H%M}"
        folder.mkdir(parents=True, exist_ok=True)
        rows[[SERVICE, TS, "p50", "p90", "model_version"]].to_parquet(folder / "checkout.parquet")
    # the record the pipeline's own publication kept is replaced by one of these forecasts
    shutil.rmtree(tailed.artifacts_dir / "forecast_record")
    errors = service_records(tailed, ["checkout"], now, 3)["checkout"]
    assert len(errors) >= 288 and np.allclose(errors["error"], 5.0)
    assert errors["horizon_step"].between(1, 12).all()
    assert (errors[TS] + pd.Timedelta(minutes=5) <= now.floor("60min")).all()

    forecast_path = forecast_shard(tailed, ["checkout"], as_of=now.to_pydatetime())
    schedule = pd.read_parquet(build_schedules(tailed, forecast_path))
    forecast = pd.read_parquet(forecast_path).drop(columns="model_version")
    config = service_config(tailed.params_file, "checkout")
    expected = plan_replicas(forecast, config, tail=np.full(len(forecast), 5.0))
    assert schedule["replicas"].tolist() == expected["replicas"].tolist()
    assert np.allclose(schedule["tail_factor"], 5.0)
    assert "p50 + 5.00 x (p90 - p50)" in sizing_in_words(schedule)
    plain = plan_replicas(forecast, config)
    assert (schedule["replicas"] >= plain["replicas"]).all()
    assert (schedule["replicas"] > plain["replicas"]).any()

    # a model without a p90 forecast: planned on its quantiles, and the log says why
    median_only = forecast_path.with_name("median-only.parquet")
    pd.read_parquet(forecast_path).drop(columns="p90").to_parquet(median_only)
    with caplog.at_level("WARNING", logger="pipelines.publish"):
        fallback = pd.read_parquet(build_schedules(tailed, median_only))
    assert fallback["tail_factor"].isna().all() and "no p50/p90" in caplog.text

    # blended with persistence: the weights come from the same record (p50 at half the load
    # against the load of the step before each issue time), the level from the last step
    from core.policy import Persistence, persistence_weights
    from pipelines.publish import last_complete_step

    blended = settings_with_params(
        tailed.home,
        schedule={"tail_days": 3, "blend_with_persistence": True},
        service_defaults=sized,
    )
    assert {"actual", "p50", "last"} <= set(errors.columns)
    assert errors["last"].notna().all()
    weights = persistence_weights(
        errors["actual"].to_numpy(float),
        errors["p50"].to_numpy(float),
        errors["last"].to_numpy(float),
        errors["horizon_step"].to_numpy(),
        len(forecast),
    )
    assert weights is not None and ((weights >= 0) & (weights <= 1)).all()
    last = last_complete_step(blended, ["checkout"], now)["checkout"]
    assert last == float(actual["requests"].iloc[-1])
    mixed = pd.read_parquet(build_schedules(blended, forecast_path))
    assert np.allclose(mixed["persistence_weight"].iloc[0], weights[0])
    assert mixed["last_load"].iloc[0] == last
    assert f"blended with the last load ({last:.1f} req/s) at weight" in sizing_in_words(mixed)
    expected = plan_replicas(
        forecast, config, tail=np.full(len(forecast), 5.0), persistence=Persistence(last, weights)
    )
    assert mixed["replicas"].tolist() == expected["replicas"].tolist()


def test_the_error_record_grows_hourly_and_equals_one_built_at_once(
    pipeline_home, tmp_path, caplog
) -> None:
    settings, _ = pipeline_home
    import numpy as np

    from pipelines.forecast_record import RECORD_FOLDER, service_records
    from pipelines.publish import recent_history
    from pipelines.telemetry import telemetry_span

    home = copy_of(settings, tmp_path, schedule={"tail_days": 1})
    now = telemetry_span(home)[1].floor("5min")
    actual = recent_history(home, ["checkout", "search"], now, days=1)
    # a forecast every 5 minutes over the last 6 hours, off by a different factor each time;
    # "search" sits in another file of each folder (as after a change of shards)
    for k, minutes in enumerate(range(5, 6 * 60 + 1, 5)):
        issued = now - pd.Timedelta(minutes=minutes)
        rows = actual[actual[TS] >= issued].assign(model_version="m")
        rows = rows.assign(p50=rows["requests"] * (0.6 + 0.01 * k))
        rows = rows.assign(p90=rows["p50"] * 1.2)
        folder = home.artifacts_dir / "forecasts" / f"{issued:%Y%m%dT%H%M}"
        folder.mkdir(parents=True, exist_ok=True)
        columns = [SERVICE, TS, "p50", "p90", "model_version"]
        for service, name in (("checkout", "checkout.parquet"), ("search", "other.parquet")):
            rows[rows[SERVICE] == service][columns].to_parquet(folder / name)

    shutil.rmtree(home.artifacts_dir / RECORD_FOLDER)  # the pipeline's own publication's
    services = ["checkout", "search"]
    # the record reads each forecast's first hour only, dropped file by file
    from pipelines.publish import issued_forecasts

    span = (now - pd.Timedelta(hours=6), now)
    every_step = issued_forecasts(home, *span, services, "checkout.parquet")
    first_hour = issued_forecasts(home, *span, services, "checkout.parquet", max_horizon_step=12)
    pd.testing.assert_frame_equal(
        first_hour.reset_index(drop=True),
        every_step[every_step["horizon_step"] <= 12].reset_index(drop=True),
    )
    assert first_hour["horizon_step"].max() == 12 < every_step["horizon_step"].max()
    # one forecast folder comes late: after the refresh its steps ended before
    late = home.artifacts_dir / "forecasts" / f"{now - pd.Timedelta(minutes=90):%Y%m%dT%H%M}"
    late.rename(late.with_name("held-back"))
    for hours_before in (4, 3, 1):  # refreshed now and then, as publications come
        service_records(
            home, services, now - pd.Timedelta(hours=hours_before), 1, "checkout.parquet"
        )
    late.with_name("held-back").rename(late)
    grown = service_records(home, services, now, 1, "checkout.parquet")
    late_issue = now - pd.Timedelta(minutes=90)
    assert (grown["checkout"]["issued"] == late_issue).sum() == 12  # all of it, also before 1 h
    kept = home.artifacts_dir / RECORD_FOLDER / "checkout.parquet"
    written = kept.stat().st_mtime_ns
    again = service_records(home, services, now + pd.Timedelta(minutes=55), 1, "checkout.parquet")
    assert kept.stat().st_mtime_ns == written  # within the hour: read, not rewritten
    for service in services:
        pd.testing.assert_frame_equal(again[service], grown[service])

    rebuilt_home = copy_of(settings, tmp_path / "rebuilt", schedule={"tail_days": 1})
    shutil.rmtree(rebuilt_home.artifacts_dir / "forecasts", ignore_errors=True)
    shutil.rmtree(rebuilt_home.artifacts_dir / RECORD_FOLDER)
    shutil.copytree(home.artifacts_dir / "forecasts", rebuilt_home.artifacts_dir / "forecasts")
    at_once = service_records(rebuilt_home, services, now, 1, "checkout.parquet")
    for service in services:
        assert len(grown[service]) >= 288
        pd.testing.assert_frame_equal(grown[service], at_once[service])
        ends = grown[service][TS] + pd.Timedelta(minutes=5)
        assert (ends <= now).all() and grown[service]["horizon_step"].between(1, 12).all()
        assert np.isfinite(grown[service]["error"]).all()

    # the replay (pipelines.walk_forward) plans on the same record: same factors and weights
    from core.policy import persistence_weights, tail_factors
    from pipelines.walk_forward import _persistence_sources, _tail_factor_sources

    start = now - pd.Timedelta(hours=6)
    folders = {
        pd.to_datetime(folder.name, format="%Y%m%dT%H%M", utc=True): folder
        for folder in (home.artifacts_dir / "forecasts").glob("*T*")
    }
    issues = [
        pd.read_parquet(folder / "checkout.parquet").assign(
            offset=int((issued - start) / pd.Timedelta(minutes=1))
        )
        for issued, folder in sorted(folders.items())
        if issued < now
    ]
    replayed = pd.concat(issues, ignore_index=True)
    own = actual[actual[SERVICE] == "checkout"]
    refresh_us = int(now.value) // 1000
    record = grown["checkout"]
    assert np.allclose(
        _tail_factor_sources(replayed, own)["checkout"](refresh_us, 1.0, 0.9, 288),
        tail_factors(record["error"], record["horizon_step"], 0.9, 288),
    )
    blend = _persistence_sources(replayed, own, start)["checkout"](6 * 60, 1.0, 288)
    assert blend is not None
    assert np.allclose(
        blend.weights,
        persistence_weights(
            record["actual"], record["p50"], record["last"], record["horizon_step"], 288
        ),
    )

    # a rerun of an earlier interval plans on the record of its own hour (rebuilt), and the
    # next publication brings the record back to its hour
    import pyarrow.parquet as pq

    earlier = service_records(
        home, services, now - pd.Timedelta(minutes=100), 1, "checkout.parquet"
    )
    assert (earlier["checkout"][TS] + pd.Timedelta(minutes=5) <= now - pd.Timedelta(hours=2)).all()
    refreshed = pq.read_schema(kept).metadata[b"forescale.record_refreshed"].decode()
    assert pd.Timestamp(refreshed) == now - pd.Timedelta(hours=2)
    pd.testing.assert_frame_equal(
        service_records(home, services, now, 1, "checkout.parquet")["checkout"], grown["checkout"]
    )
    # a longer tail_days than the record keeps: rebuilt over the longer window
    with caplog.at_level("INFO", logger="pipelines.forecast_record"):
        longer = service_records(home, services, now, 2, "checkout.parquet")
    assert "rebuilt" in caplog.text
    assert pq.read_schema(kept).metadata[b"forescale.record_days"] == b"2.0"
    pd.testing.assert_frame_equal(longer["checkout"], grown["checkout"])  # 6 h of forecasts
    with pytest.raises(ValueError, match="service name"):
        service_records(home, ["../escape"], now, 1)
    caplog.clear()

    kept.write_bytes(b"not parquet")  # a damaged record is rebuilt, and the log says so
    with caplog.at_level("WARNING", logger="pipelines.forecast_record"):
        repaired = service_records(home, services, now, 1, "checkout.parquet")
    assert "unreadable forecast error record" in caplog.text
    pd.testing.assert_frame_equal(repaired["checkout"], grown["checkout"])


def test_old_forecast_and_schedule_runs_are_pruned(tmp_path) -> None:
    from pipelines.publish import prune_runs

    settings = settings_with_params(tmp_path / "home", schedule={"keep_days": 4, "tail_days": 3})
    now = pd.Timestamp("2026-11-16 12:00", tz="UTC")
    made = {}
    for kind in ("forecasts", "schedules"):
        for age in (pd.Timedelta(days=5), pd.Timedelta(days=4, minutes=5), pd.Timedelta(days=3)):
            folder = settings.artifacts_dir / kind / f"{now - age:%Y%m%dT%H%M}"
            folder.mkdir(parents=True)
            made[(kind, age.days)] = folder
    (settings.artifacts_dir / "forecasts" / "notes").mkdir()
    deleted = prune_runs(settings, now=now)
    assert sorted(deleted) == sorted(f for (_, days), f in made.items() if days >= 4)
    assert all(f.exists() for (_, days), f in made.items() if days < 4)
    assert (settings.artifacts_dir / "forecasts" / "notes").exists()
    short = settings_with_params(tmp_path / "short", schedule={"keep_days": 2, "tail_days": 3})
    with pytest.raises(ValueError, match="keep_days is 2.0.*tail_days"):
        prune_runs(short, now=now)
