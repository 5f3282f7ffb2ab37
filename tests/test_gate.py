"""The go-live gate: its rule on synthetic scorecards, the store, ``apply_gate`` with MLflow, the
scorecard endpoint, shadow and cold-start recommendations (real store, real app, pinned clocks)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from core.gate import effective_mode, next_mode, streaks
from core.params import GateSection, load_config
from core.scorecard import FORESCALE, HPA, PolicyFigures, ScorecardDay
from core.service_config import ServiceConfig, load_service_configs
from core.settings import Settings
from pipelines.gate import GATE_EXPERIMENT, apply_gate
from serving.app import create_app
from serving.store import ScheduleStore
from tests.serving_fixtures import (
    READ_TOKEN,
    SERVICE_PARAMS,
    auth,
    schedule_body,
    serving_settings,
    write_params,
)

NOW = datetime(2026, 11, 16, 12, 0, tzinfo=UTC)
TODAY = NOW.date()
GATE = GateSection(auto=True, pass_days=3, fail_days=2, pod_hour_budget=0.1)


def card(
    day: date,
    passes: bool | None,
    service: str = "checkout",
    generated_at: datetime | None = None,
) -> ScorecardDay:
    """A scorecard day that passes (True), fails (False) or has no figures (None)."""
    if passes is None:
        return ScorecardDay(
            service=service,
            day=day,
            generated_at=generated_at or NOW,
            status="not_enough_history",
            reason="not enough history (2.0 of 4 days)",
            history_days=2.0,
            needed_days=4.0,
        )
    hpa = PolicyFigures(short_minutes=10, pod_hours=100.0, scaling_actions=40)
    ours = PolicyFigures(
        short_minutes=4 if passes else 25,
        pod_hours=105.0,
        scaling_actions=30,
        p50_coverage=0.5,
        p90_coverage=0.9,
        source=1.0,
    )
    return ScorecardDay(
        service=service,
        day=day,
        generated_at=generated_at or NOW,
        status="scored",
        history_days=28.0,
        needed_days=4.0,
        policies={HPA: hpa, FORESCALE: ours},
    )


def days_back(count: int, end: date = TODAY - timedelta(days=1)) -> list[date]:
    """``count`` consecutive days ending at ``end``, oldest first."""
    return [end - timedelta(days=offset) for offset in reversed(range(count))]


# ---- the rule ----------------------------------------------------------------------------------


def test_shadow_goes_active_after_k_consecutive_passing_days() -> None:
    passing = [card(day, True) for day in days_back(3)]
    assert next_mode("shadow", passing[1:], GATE) is None  # 2 of 3
    decision = next_mode("shadow", passing, GATE)
    assert decision is not None and decision.mode == "active"
    assert "3 consecutive passing days (2026-11-13 to 2026-11-15)" in decision.reason
    assert "4 short minutes vs the HPA's 10" in decision.reason
    # An active service with passing days stays.
    assert next_mode("active", passing, GATE) is None


def test_a_gap_or_a_day_without_figures_ends_the_run() -> None:
    days = days_back(4)
    with_gap = [card(days[0], True), card(days[1], True), card(days[3], True)]
    assert streaks(with_gap, GATE.pod_hour_budget) == (1, 0)
    assert next_mode("shadow", with_gap, GATE) is None
    cold = [card(days[0], True), card(days[1], True), card(days[2], None), card(days[3], True)]
    assert next_mode("shadow", cold, GATE) is None
    # A failing newest day ends the passing run.
    failing_last = [card(day, True) for day in days[:3]] + [card(days[3], False)]
    assert next_mode("shadow", failing_last, GATE) is None
    assert streaks(failing_last, GATE.pod_hour_budget) == (0, 1)


def test_active_goes_back_to_shadow_after_j_failing_days() -> None:
    days = days_back(3)
    history = [card(days[0], True), card(days[1], False), card(days[2], False)]
    decision = next_mode("active", history, GATE)
    assert decision is not None and decision.mode == "shadow"
    assert decision.reason.startswith("2 consecutive failing days (2026-11-14 to 2026-11-15)")
    assert next_mode("active", history[:2], GATE) is None
    # Days without figures neither pass nor fail.
    assert next_mode("active", [card(days[1], None), card(days[2], None)], GATE) is None


def test_the_latest_generated_card_of_a_day_counts() -> None:
    day = days_back(1)[0]
    rescored = [card(day, False), card(day, True, generated_at=NOW + timedelta(hours=1))]
    assert streaks(rescored, 0.1) == (1, 0)


def test_next_mode_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        next_mode("live", [], GATE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="several services"):
        next_mode("shadow", [card(TODAY, True), card(TODAY, True, service="cart")], GATE)


def test_effective_mode_follows_the_gate_only_when_it_is_on() -> None:
    assert effective_mode("shadow", "active", auto=True) == "active"
    assert effective_mode("shadow", "active", auto=False) == "shadow"
    assert effective_mode("active", None, auto=True) == "active"


# ---- configuration -----------------------------------------------------------------------------


def test_gate_section_defaults_and_unknown_keys(tmp_path: Path) -> None:
    shipped = load_config(Path(__file__).parent.parent / "params.yaml")
    assert shipped.gate == GateSection(auto=False, pass_days=7, fail_days=2, pod_hour_budget=0.05)
    assert ServiceConfig().mode == "shadow"
    bad = tmp_path / "bad.yaml"
    bad.write_text("gate:\n  auto: true\n  pass_dayz: 3\n")
    with pytest.raises(ValueError, match=r"gate\.pass_dayz: unknown key"):
        load_config(bad)
    negative = tmp_path / "negative.yaml"
    negative.write_text("gate:\n  fail_days: 0\n")
    with pytest.raises(ValueError, match=r"gate\.fail_days"):
        load_config(negative)


def test_dry_run_is_read_as_mode(tmp_path: Path) -> None:
    params = copy.deepcopy(SERVICE_PARAMS)
    params["service_defaults"].pop("mode")
    params["service_defaults"]["dry_run"] = False
    params["services"] = {"legacy": {"dry_run": True}, "new": {"mode": "shadow"}}
    configs = load_service_configs(write_params(tmp_path, params))
    assert (configs["legacy"].mode, configs["new"].mode) == ("shadow", "shadow")
    clash = copy.deepcopy(params)
    clash["services"] = {"cart": {"dry_run": True, "mode": "active"}}
    (tmp_path / "clash").mkdir()
    with pytest.raises(ValueError, match="dry_run true contradicts mode 'active'"):
        load_service_configs(write_params(tmp_path / "clash", clash))
    wrong = copy.deepcopy(params)
    wrong["services"] = {"cart": {"mode": "live"}}
    (tmp_path / "wrong").mkdir()
    with pytest.raises(ValueError, match="service 'cart'.*mode"):
        load_service_configs(write_params(tmp_path / "wrong", wrong))


# ---- the store ---------------------------------------------------------------------------------


def test_store_keeps_one_scorecard_per_service_and_day(tmp_path: Path) -> None:
    store = ScheduleStore(f"sqlite:///{tmp_path / 'store.db'}")
    days = days_back(3)
    assert store.save_scorecards([card(day, True) for day in days]) == 3
    assert store.save_scorecards([card(days[1], False, generated_at=NOW + timedelta(hours=1))]) == 1
    kept = store.scorecards("checkout")
    assert [c.day for c in kept] == list(reversed(days))
    assert kept[1].policies[FORESCALE].short_minutes == 25  # re-scored: replaced
    assert store.scorecards("checkout", days[0])[0].day == days[0]
    assert store.scorecards("checkout", since=days[1], until=days[1])[0].day == days[1]
    latest = store.latest_scorecard("checkout")
    assert latest is not None and latest.day == days[2]
    assert store.latest_scorecard("cart") is None and store.scorecards("cart") == []
    with pytest.raises(ValueError, match="invalid service name"):
        store.save_scorecards([card(days[0], True, service="../etc")])
    with pytest.raises(ValueError, match="not a ScorecardDay"):
        store.save_scorecards([{"service": "checkout"}])  # type: ignore[list-item]
    assert len(store.scorecards("checkout")) == 3  # a refused batch changed nothing
    store.dispose()


def test_store_records_mode_changes_and_raises_the_revision(tmp_path: Path) -> None:
    store = ScheduleStore(f"sqlite:///{tmp_path / 'store.db'}")
    assert store.current_mode("checkout") is None and store.mode_history("checkout") == []
    before = store.revision()
    store.record_mode_change("checkout", NOW, "shadow", "active", "3 passing days")
    store.record_mode_change("checkout", NOW + timedelta(days=2), "active", "shadow", "2 failing")
    assert store.revision() == before + 2
    assert store.current_mode("checkout") == "shadow"
    assert [m.to_mode for m in store.mode_history("checkout")] == ["shadow", "active"]
    assert store.current_modes()["checkout"].reason == "2 failing"
    for args in (("checkout", NOW, "shadow", "shadow"), ("checkout", NOW, "shadow", "live")):
        with pytest.raises(ValueError):
            store.record_mode_change(*args, "")
    with pytest.raises(ValueError, match="timezone-aware"):
        store.record_mode_change("checkout", NOW.replace(tzinfo=None), "shadow", "active", "")
    store.dispose()


# ---- apply_gate, the endpoint and the served mode ----------------------------------------------


def gated_settings(tmp_path: Path, auto: bool = True) -> Settings:
    """Serving settings whose params.yaml turns the gate on (or off), services in shadow."""
    folder = tmp_path / "gated-params"
    folder.mkdir(exist_ok=True)
    return serving_settings(tmp_path, params_file=write_params(folder, gate_params(auto)))


def gate_params(auto: bool = True) -> dict[str, Any]:
    params = copy.deepcopy(SERVICE_PARAMS)
    params["service_defaults"]["mode"] = "shadow"
    params["services"]["checkout"]["mode"] = "shadow"
    params["gate"] = {"auto": auto, "pass_days": 3, "fail_days": 2, "pod_hour_budget": 0.1}
    return params


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[Settings, FastAPI, TestClient, Clock]]:
    settings = gated_settings(tmp_path)
    clock = Clock(NOW)
    app = create_app(settings, clock=clock)
    with TestClient(app, headers=auth(READ_TOKEN)) as client:
        yield settings, app, client, clock
    app.state.plans.join_background_refresh()
    app.state.store.dispose()


def test_the_gate_moves_a_service_shadow_to_active_and_back(
    gated: tuple[Settings, FastAPI, TestClient, Clock],
) -> None:
    settings, app, client, clock = gated
    store: ScheduleStore = app.state.store
    assert (
        client.put(
            "/v1/services/checkout/schedule", json=schedule_body(NOW, [9] * 24), headers=auth()
        ).status_code
        == 201
    )
    shadow = client.get("/v1/services/checkout/recommendation").json()
    assert (shadow["replicas"], shadow["source"], shadow["mode"]) == (2, "shadow", "shadow")
    assert shadow["reason"].startswith("shadow mode (params.yaml)")
    assert "reactive floor" in shadow["reason"]

    # Two passing days: not yet; the third moves it.
    store.save_scorecards([card(day, True) for day in days_back(2)])
    outcomes = apply_gate(settings, store, NOW)
    assert [(o.service, o.moved_to, o.passing_days) for o in outcomes] == [("checkout", None, 2)]
    assert "stays shadow: 2 of 3 consecutive passing days" in outcomes[0].reason
    store.save_scorecards([card(day, True) for day in days_back(3, end=TODAY)])
    day_after = NOW + timedelta(days=1)
    (moved,) = apply_gate(settings, store, day_after)
    assert (moved.mode, moved.moved_to, moved.applied) == ("shadow", "active", True)
    assert store.current_mode("checkout") == "active"
    assert apply_gate(settings, store, day_after)[0].moved_to is None  # evaluated again: stays

    # The API serves the schedule from the next store check on (the kept answer is dropped).
    app.state.plans.refresh()
    active = client.get("/v1/services/checkout/recommendation").json()
    assert (active["replicas"], active["source"], active["mode"]) == (9, "schedule", "active")
    scorecard = client.get("/v1/services/checkout/scorecard").json()
    assert (scorecard["mode"], scorecard["mode_set_by"], scorecard["gate_auto"]) == (
        "active",
        "gate",
        True,
    )
    assert scorecard["scorecard"]["day"] == TODAY.isoformat()
    assert scorecard["scorecard"]["policies"]["hpa"]["short_minutes"] == 10
    assert [m["to_mode"] for m in scorecard["mode_history"]] == ["active"]

    # Two failing days: back to shadow.
    later = TODAY + timedelta(days=3)
    store.save_scorecards([card(day, False) for day in days_back(2, end=later - timedelta(days=1))])
    (back,) = apply_gate(settings, store, datetime.combine(later, NOW.time(), UTC))
    assert (back.mode, back.moved_to, back.failing_days) == ("active", "shadow", 2)
    app.state.plans.refresh()
    clock.now = NOW + timedelta(minutes=30)
    again = client.get("/v1/services/checkout/recommendation").json()
    assert (again["source"], again["mode"]) == ("shadow", "shadow")
    assert again["reason"].startswith("shadow mode (gate: moved ")
    assert "2 consecutive failing days" in again["reason"]
    history = client.get("/v1/services/checkout/scorecard").json()["mode_history"]
    assert [(m["from_mode"], m["to_mode"]) for m in history] == [
        ("active", "shadow"),
        ("shadow", "active"),
    ]
    assert "consecutive failing days" in history[0]["reason"]

    # One MLflow run per evaluation; the moves are tagged.
    client_ml = MlflowClient(settings.tracking_uri)
    experiment = client_ml.get_experiment_by_name(GATE_EXPERIMENT)
    assert experiment is not None
    runs = client_ml.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])
    assert len(runs) == 4
    tagged = [run for run in runs if "move.checkout" in run.data.tags]
    assert [run.data.tags["move.checkout"].split(":")[0] for run in tagged] == [
        "moved shadow -> active",
        "moved active -> shadow",
    ]
    assert [run.data.metrics["mode.checkout"] for run in tagged] == [1.0, 0.0]
    assert (settings.artifacts_dir / "gate").is_dir()


def test_with_auto_off_the_gate_only_proposes(tmp_path: Path) -> None:
    settings = gated_settings(tmp_path, auto=False)
    store = ScheduleStore(settings.schedule_db)
    store.save_scorecards([card(day, True) for day in days_back(3)])
    (outcome,) = apply_gate(settings, store, NOW)
    assert (outcome.moved_to, outcome.applied) == ("active", False)
    assert store.mode_history("checkout") == []
    store.dispose()


def test_scorecard_route_answers_and_refuses_hostile_input(
    gated: tuple[Settings, FastAPI, TestClient, Clock],
) -> None:
    _, app, client, _ = gated
    store: ScheduleStore = app.state.store
    days = days_back(2)
    store.save_scorecards([card(days[0], True), card(days[1], None)])
    latest = client.get("/v1/services/checkout/scorecard")
    assert latest.status_code == 200
    body = latest.json()
    assert body["scorecard"]["status"] == "not_enough_history"
    assert body["scorecard"]["reason"] == "not enough history (2.0 of 4 days)"
    assert (body["mode"], body["mode_set_by"], body["mode_history"]) == (
        "shadow",
        "params.yaml",
        [],
    )
    by_day = client.get("/v1/services/checkout/scorecard", params={"day": days[0].isoformat()})
    assert by_day.status_code == 200 and by_day.json()["scorecard"]["status"] == "scored"
    missing_day = client.get("/v1/services/checkout/scorecard", params={"day": "2020-01-01"})
    assert missing_day.status_code == 404 and "2020-01-01" in missing_day.json()["detail"]
    # A configured service without a scorecard, and an unknown one.
    none_yet = client.get("/v1/services/slowstart/scorecard")
    assert none_yet.status_code == 404 and "no scorecard yet" in none_yet.json()["detail"]
    unknown = client.get("/v1/services/nosuch/scorecard")
    assert unknown.status_code == 404 and "unknown service" in unknown.json()["detail"]
    for day in (
        "2026-02-30",
        "2026-1-1",
        "20261115",
        "2026-11-15T00:00:00Z",
        "0000-01-01",
        "",
        "x" * 5000,
        "１２３４-05-06",
    ):
        answer = client.get("/v1/services/checkout/scorecard", params={"day": day})
        assert answer.status_code == 422, (day, answer.text)
        assert answer.json()["detail"][0]["loc"] == ["query", "day"]
    for name in ("-bad", "a" * 200, "bad name", "%2e%2e"):
        answer = client.get(f"/v1/services/{name}/scorecard")
        assert answer.status_code in (404, 422), (name, answer.status_code)
        assert answer.status_code != 500
    assert (
        client.get("/v1/services/checkout/scorecard", headers={"Authorization": ""}).status_code
        == 401
    )


def test_cold_start_is_served_the_floor_with_the_reason(
    gated: tuple[Settings, FastAPI, TestClient, Clock], tmp_path: Path
) -> None:
    _, app, client, _ = gated
    # An active service (params.yaml) that training left out, not named in params.yaml.
    (tmp_path / "active").mkdir()
    active = serving_settings(tmp_path / "active")
    store = ScheduleStore(active.schedule_db)
    store.set_cold_starts({"newcomer": "not enough history (1.5 of 4 days)"}, trained=["checkout"])
    store.set_live_floor("newcomer", 3, NOW)
    store.dispose()
    app_active = create_app(active, clock=lambda: NOW)
    with TestClient(app_active, headers=auth(READ_TOKEN)) as client_active:
        answer = client_active.get("/v1/services/newcomer/recommendation")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["replicas"], body["source"], body["mode"], body["stale"]) == (
            3,
            "fallback",
            "active",
            True,
        )
        assert body["reason"].startswith(
            "cold start, not enough history (1.5 of 4 days): no schedule yet"
        )
        # Trained later: the record goes, and the plain fallback says so.
        other = ScheduleStore(active.schedule_db)
        other.set_cold_starts({}, trained=["newcomer"])
        other.dispose()
        app_active.state.plans.refresh()
        again = client_active.get("/v1/services/newcomer/recommendation").json()
        assert again["reason"].startswith("no schedule published")
    app_active.state.store.dispose()
    # In shadow (the gated app's default), the reason names both.
    app.state.store.set_cold_starts({"newcomer": "not enough history (1.5 of 4 days)"}, [])
    app.state.plans.refresh()
    shadow = client.get("/v1/services/newcomer/recommendation").json()
    assert shadow["source"] == "shadow"
    assert "cold start, not enough history (1.5 of 4 days)" in shadow["reason"]


# ---- the CLI -----------------------------------------------------------------------------------


def test_cli_gate_prints_the_table_and_writes_the_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from typer.testing import CliRunner

    from pipelines.cli import app

    def invoke(settings: Settings, *args: str) -> Any:
        monkeypatch.setenv("FORESCALE_HOME", str(settings.home))
        monkeypatch.setenv("FORESCALE_PARAMS_FILE", str(settings.params_file))
        return CliRunner().invoke(app, ["gate", *args], env={"COLUMNS": "200"})

    def rows(output: str) -> dict[str, list[str]]:
        """The table's body rows by service: the cells between the box characters."""
        found = {}
        for line in output.splitlines():
            cells = [cell.strip() for cell in line.strip().strip("│┃").split("│")]
            if cells and cells[0] in ("checkout", "cart"):
                found[cells[0]] = cells
        return found

    settings = gated_settings(tmp_path, auto=True)
    store = ScheduleStore(settings.schedule_db)
    store.save_scorecards([card(day, True) for day in days_back(3)])
    store.save_scorecards([card(day, False, service="cart") for day in days_back(1)])
    store.dispose()

    moved = invoke(settings, "--as-of", NOW.isoformat())
    assert moved.exit_code == 0, moved.output
    table = rows(moved.output)
    assert table["checkout"][:6] == ["checkout", "shadow", "active", "yes", "3", "0"]
    assert table["checkout"][6]  # the reason column wraps with the terminal: see the JSON
    assert table["cart"][:6] == ["cart", "shadow", "-", "no", "0", "1"]
    assert table["cart"][6]
    path = settings.artifacts_dir / "gate" / "20261116T1200.json"
    assert f"gate: {path}" in moved.output.replace("\n", "")
    written = json.loads(path.read_text())
    assert (written["as_of"], written["auto"]) == (NOW.isoformat(), True)
    assert written["mlflow_run_id"]
    by_service = {row["service"]: row for row in written["services"]}
    assert by_service["checkout"]["reason"].startswith("3 consecutive passing days")
    assert by_service["cart"]["reason"] == "stays shadow: 0 of 3 consecutive passing days"
    assert by_service["checkout"] | {"reason": ""} == {
        "service": "checkout",
        "mode": "shadow",
        "moved_to": "active",
        "reason": "",
        "applied": True,
        "passing_days": 3,
        "failing_days": 0,
        "newest_day": days_back(1)[0].isoformat(),
    }
    check = ScheduleStore(settings.schedule_db)
    assert check.current_mode("checkout") == "active" and check.current_mode("cart") is None
    check.dispose()

    # Evaluated again at the same instant: checkout stays active, nothing is recorded twice.
    again = invoke(settings, "--as-of", "2026-11-16T12:00")
    assert again.exit_code == 0, again.output
    assert rows(again.output)["checkout"][:4] == ["checkout", "active", "-", "no"]

    # With gate.auto off the same scorecards only propose the move.
    (tmp_path / "off").mkdir()
    proposing = gated_settings(tmp_path / "off", auto=False)
    store = ScheduleStore(proposing.schedule_db)
    store.save_scorecards([card(day, True) for day in days_back(3)])
    store.dispose()
    proposed = invoke(proposing, "--as-of", NOW.isoformat())
    assert proposed.exit_code == 0, proposed.output
    assert rows(proposed.output)["checkout"][:4] == ["checkout", "shadow", "active", "no"]
    store = ScheduleStore(proposing.schedule_db)
    assert store.mode_history("checkout") == []
    store.dispose()

    # A bad instant is an error naming it, not a traceback.
    bad = invoke(settings, "--as-of", "yesterday-ish")
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_a_day_walked_forward_rather_than_published_neither_passes_nor_fails() -> None:
    from core.gate import day_fails
    from core.scorecard import day_passes, is_evidence

    published = card(date(2026, 12, 1), passes=True)
    walked = published.model_copy(
        update={
            "policies": {
                **published.policies,
                FORESCALE: published.policies[FORESCALE].model_copy(update={"source": 0.2}),
            }
        }
    )
    assert is_evidence(published) and day_passes(published, 0.1)
    assert not is_evidence(walked)
    assert not day_passes(walked, 0.1) and not day_fails(walked, 0.1)
