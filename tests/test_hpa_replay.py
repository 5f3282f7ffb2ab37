"""The Kubernetes HPA model against the documentation's worked examples, and the replay parts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.replay import (
    WINDOW_MINUTES,
    HoltWintersReplicas,
    PreparedTrace,
    discover_traces,
    read_trace,
    replay_trace,
    select_traces,
    served_targets,
    step_frame,
)
from core.policy import plan_replicas
from core.service_config import ServiceConfig
from core.serving_rule import planned_max
from core.simulation import (
    HpaBehavior,
    HpaController,
    ScalingPolicy,
    direct_controller,
    keda_behavior,
    keda_controller,
    simulate,
    surge_lead,
    surge_onsets,
    usage_ratio_replicas,
)

START = pd.Timestamp("2026-11-16 00:00", tz="UTC")


# ---------------------------------------------------------------- HPA algorithm (docs examples)


def test_metric_twice_the_target_doubles_the_replicas() -> None:
    # "if the current metric value is 200m, and the desired value is 100m, the number of
    # replicas will be doubled, since 200.0 / 100.0 == 2.0"
    assert usage_ratio_replicas(4, 0, 0.200, 0.100) == 8


def test_metric_half_the_target_halves_the_replicas() -> None:
    # "If the current value is instead 50m, you'll halve the number of replicas"
    assert usage_ratio_replicas(4, 0, 0.050, 0.100) == 2


def test_fifty_replicas_at_90_percent_for_a_75_percent_target_become_sixty() -> None:
    # Kubernetes v1.33 blog, configurable tolerance: 50 x (90 / 75) = 60
    assert usage_ratio_replicas(50, 0, 0.90, 0.75) == 60


def test_ratio_within_the_tolerance_changes_nothing() -> None:
    # "the control plane skips any scaling action if the ratio is sufficiently close to 1.0
    # (within a globally-configurable tolerance, 0.1 by default)"
    assert usage_ratio_replicas(10, 0, 0.76, 0.70) == 10  # ratio 1.086
    assert usage_ratio_replicas(10, 0, 0.64, 0.70) == 10  # ratio 0.914
    assert usage_ratio_replicas(10, 0, 0.80, 0.70) == 12  # ratio 1.143 -> ceil(11.43)


def test_not_yet_ready_pods_count_as_zero_during_a_scale_up() -> None:
    # 2 ready pods at 100 % for a 50 % target want 4; with 2 pods still starting (at 0 %) the
    # recomputed ratio is 1.0: no change. With 1 starting pod it is 1.33 -> ceil(1.33 x 3) = 4.
    assert usage_ratio_replicas(2, 2, 1.0, 0.5) == 4
    assert usage_ratio_replicas(2, 1, 1.0, 0.5) == 4
    assert usage_ratio_replicas(2, 0, 1.0, 0.5) == 4


def test_scale_down_uses_the_highest_recommendation_of_the_last_300_seconds() -> None:
    hpa = HpaController(min_replicas=1, max_replicas=100, target_utilization=0.5)
    replicas = hpa.sync(0, 10, 10)
    seen = []
    for now in range(15, 400, 15):
        replicas = hpa.sync(now, replicas, 4)
        seen.append((now, replicas))
    assert all(r == 10 for now, r in seen if now < 300)
    assert dict(seen)[300] == 10  # the recommendation of t=0 is still inside the window
    assert dict(seen)[315] == 4


def test_default_scale_up_limit_is_double_or_four_pods_per_15_seconds() -> None:
    hpa = HpaController(min_replicas=1, max_replicas=100, target_utilization=0.5)
    replicas, path = 1, []
    for now in range(0, 75, 15):
        replicas = hpa.sync(now, replicas, 30)
        path.append(replicas)
    assert path == [5, 10, 20, 30, 30]  # max(+100 %, +4) each period


def test_scale_down_policy_example_from_the_documentation() -> None:
    # "Scaling Policies": 10 % per minute from 80 replicas: 8 pods go first; at 72 replicas
    # 10 % is 7.2, rounded up to 8 pods again.
    behavior = HpaBehavior(
        scale_down_policies=(ScalingPolicy("Percent", 10, 60),), scale_down_window_seconds=0
    )
    hpa = HpaController(min_replicas=1, max_replicas=100, target_utilization=0.5, behavior=behavior)
    replicas, path = 80, []
    for now in range(0, 135, 15):
        replicas = hpa.sync(now, replicas, 10)
        path.append(replicas)
    assert path == [72, 72, 72, 72, 64, 64, 64, 64, 57]


def test_bounds_clamp_the_result() -> None:
    hpa = HpaController(min_replicas=3, max_replicas=6, target_utilization=0.5)
    assert hpa.sync(0, 5, 50) == 6
    assert HpaController(3, 6, 0.5, HpaBehavior(scale_down_window_seconds=0)).sync(0, 5, 1) == 3


# ---------------------------------------------------------------- cluster model and metrics


def test_pods_serve_only_after_the_start_up_delay_and_cost_while_starting() -> None:
    demand = np.r_[np.full(5, 10.0), np.full(10, 50.0)]
    target = np.r_[np.full(5, 1), np.full(10, 5)]
    run = simulate(demand, 10.0, 2, 1, direct_controller(target))
    assert run.ready[5] == 1 and run.ready[6] == 1 and run.ready[7] == 5
    assert run.actions == 1
    assert run.pod_minutes == pytest.approx(5 * 1 + 10 * 5)  # starting pods are paid for
    assert int(np.sum(demand > run.ready * 10.0)) == 2


def test_oracle_target_one_delay_ahead_is_never_short() -> None:
    rng = np.random.default_rng(3)
    demand = rng.uniform(0, 300, 120)
    need = np.ceil(demand / 10.0).astype(np.int64).clip(1)
    delay = 5
    oracle = pd.Series(need[::-1]).rolling(delay + 1, min_periods=1).max().to_numpy()[::-1]
    run = simulate(demand, 10.0, delay, int(oracle[0]), direct_controller(oracle))
    assert (demand <= run.ready * 10.0 + 1e-9).all()


def test_scale_down_removes_starting_pods_first() -> None:
    target = np.array([2, 6, 3, 3, 3, 3])
    run = simulate(np.zeros(6), 1.0, 3, 2, direct_controller(target))
    assert list(run.ready) == [2, 2, 2, 2, 3, 3]


def test_keda_cpu_trigger_raises_a_low_schedule_and_scale_downs_are_paced() -> None:
    # The schedule asks for 2 pods while 30 pods' worth of load arrives: the cpu trigger (the
    # service's HPA target, 70 %) proposes more, the HPA takes the larger proposal and the
    # ScaledObject's scale-up limits pace it.
    behavior = keda_behavior()
    demand = np.r_[np.full(3, 10.0), np.full(12, 300.0)]
    target = np.full(15, 2)
    run = simulate(demand, 10.0, 1, 2, keda_controller(target, demand, 10.0, 0.7, behavior))
    assert run.desired[-1] >= math.ceil(300 / (10.0 * 0.7))
    assert run.desired[3] == 2  # the load of minute 3 is seen one minute late
    # A scale-down from 20 to 2 pods: held by the 300 s window, then 20 % a minute.
    steps_down = np.r_[20, np.full(9, 2)]
    down = simulate(
        np.zeros(10), 1.0, 1, 20, keda_controller(steps_down, np.zeros(10), 1.0, 0.7, behavior)
    )
    assert list(down.desired[:5]) == [20] * 5
    assert list(down.desired[5:]) == [20, 16, 12, 9, 7]


def test_the_reactive_lower_bound_holds_when_the_forecast_is_wrong() -> None:
    # Forescale serving a forecast at a tenth of the load still runs at least what the HPA at
    # the service's own target runs: short minutes never exceed the HPA's.
    rng = np.random.default_rng(11)
    minutes = pd.date_range(START, periods=2 * 1440, freq="min")
    hour = np.asarray(minutes.hour, dtype=float)
    base = 100 + 80 * np.sin(hour / 24 * 2 * np.pi) + rng.normal(0, 10, len(minutes))
    surges = np.zeros(len(minutes))
    for start in rng.integers(0, len(minutes) - 60, 12):
        surges[start : start + 40] += rng.uniform(100, 300)
    load = pd.Series((base + surges).clip(1), index=minutes)
    trace = PreparedTrace("t", load.iloc[:1440], load.iloc[1440:], float(load.max()) / 30)
    demand = trace.window.to_numpy()
    config = ServiceConfig(capacity_per_replica=trace.capacity, min_replicas=1, risk=0.1)
    for delay in (2, 5):
        step = pd.Timedelta(minutes=5)
        rows = []
        for offset in range(0, 1440, 5):
            ts = trace.window.index[0] + pd.Timedelta(minutes=offset) + step * np.arange(12)
            truth = np.resize(demand[offset : offset + 60 : 5], 12)
            rows.append(
                pd.DataFrame(
                    {
                        "service": "t",
                        "ts": ts,
                        "p50": 0.1 * truth,
                        "p90": 0.12 * truth,
                        "offset": offset,
                    }
                )
            )
        wrong = served_targets(
            pd.concat(rows, ignore_index=True),
            trace.window.index[0],
            1440,
            config.model_copy(update={"startup_seconds": delay * 60, "max_replicas": 100}),
            0.0,
            None,
        )
        figures, _ = replay_trace(
            trace, delay, {"wrong": wrong}, {"wrong": 0.7}, 0.7, keda_behavior()
        )
        assert figures["hpa"]["short_minutes"] > 0
        assert figures["wrong"]["short_minutes"] <= figures["hpa"]["short_minutes"]


def test_holt_winters_predicts_a_repeating_season() -> None:
    season = np.array([2, 2, 3, 5, 8, 8, 5, 3], dtype=float)
    model = HoltWintersReplicas(np.tile(season, 6), len(season), alpha=0.5, beta=0.01, gamma=0.5)
    assert model.predict() == 2
    for value in season[:3]:
        model.update(value)
    assert model.predict() == 5


def test_surge_onset_and_lead() -> None:
    demand = np.r_[np.full(120, 10.0), np.full(60, 100.0)]
    onsets = surge_onsets(demand)
    assert len(onsets) == 1
    onset, level = onsets[0]
    assert 120 <= onset <= 125 and level == pytest.approx(100.0)
    early = np.r_[np.full(100, 10.0), np.full(80, 100.0)]
    late = np.r_[np.full(onset + 4, 10.0), np.full(180 - onset - 4, 100.0)]
    assert surge_lead(early, onset, level) == onset - 100
    assert surge_lead(late, onset, level) == -4


def test_served_targets_plan_each_forecast_and_serve_it_with_the_api_rule() -> None:
    rng = np.random.default_rng(3)
    origin = START + pd.Timedelta(minutes=30)
    step = pd.Timedelta(minutes=5)
    forecasts = []
    for offset in (0, 5):
        steps = origin + pd.Timedelta(minutes=offset) + step * np.arange(12)
        p50 = rng.uniform(20, 200, 12)
        forecasts.append(
            pd.DataFrame(
                {
                    "service": "a",
                    "ts": steps,
                    "p50": p50,
                    "p90": p50 * rng.uniform(1, 2, 12),
                    "offset": offset,
                }
            )
        )
    for delay, risk in ((2, 0.05), (5, 0.1)):
        config = ServiceConfig(
            capacity_per_replica=10, risk=risk, startup_seconds=delay * 60, min_replicas=1
        )
        served = served_targets(pd.concat(forecasts), origin, 10, config, 0.0, None)
        for forecast in forecasts:
            offset = int(forecast["offset"].iloc[0])
            schedule = plan_replicas(forecast.drop(columns="offset"), config)
            steps = [
                (ts.to_pydatetime(), int(r))
                for ts, r in zip(schedule["ts"], schedule["replicas"], strict=True)
            ]
            for minute in range(offset, offset + 5):
                now = (origin + pd.Timedelta(minutes=minute)).to_pydatetime()
                expected = planned_max(steps, 300, now, now + pd.Timedelta(minutes=delay))
                assert served[minute] == expected, (delay, minute)


def test_tail_factors_of_the_replay_use_only_errors_of_steps_already_over() -> None:
    # A forecast (p50 100, p90 120) every 5 minutes for 8 hours; the actual load is 100 for 4
    # hours, then 10000. Until errors of the jump are known (the hourly refresh after they end),
    # the tail factor is 0 and the plan is p50's; a plan that saw the future would rise at once.
    origin = START
    step = pd.Timedelta(minutes=5)
    forecasts = pd.concat(
        [
            pd.DataFrame(
                {
                    "service": "a",
                    "ts": origin + pd.Timedelta(minutes=offset) + step * np.arange(12),
                    "p50": 100.0,
                    "p90": 120.0,
                    "offset": offset,
                }
            )
            for offset in range(0, 8 * 60, 5)
        ],
        ignore_index=True,
    )
    stamps = origin + step * np.arange(9 * 12)
    jump = np.where(stamps < origin + pd.Timedelta(hours=4), 100.0, 1e4)
    actual = pd.DataFrame({"service": "a", "ts": stamps, "requests": jump})
    config = ServiceConfig(capacity_per_replica=10, risk=0.1, min_replicas=1)
    plain = served_targets(forecasts, origin, 8 * 60, config, 0.0, actual)
    served = served_targets(forecasts, origin, 8 * 60, config, 1.0, actual)
    assert (plain == 18).all()  # the p90 (risk 0.1), 120 at 70 %: 18 pods
    # fewer than 288 known errors before the 3-hour refresh: the forecast's own p90
    assert (served[: 3 * 60] == 18).all()
    assert (served[3 * 60 : 5 * 60] == 15).all()  # factor 0 (p50: 100 at 70 %) until 5 hours
    assert (served[5 * 60 :] > 18).all()


def test_five_minute_frames_hold_the_mean_or_the_busiest_minute_of_complete_steps() -> None:
    load = pd.Series(np.arange(1.0, 13.0), index=START + pd.to_timedelta(np.arange(12), "min"))
    mean = step_frame("a", load, "mean")
    peak = step_frame("a", load, "peak")
    assert list(mean["requests"]) == [3.0, 8.0]  # the last, incomplete step is left out
    assert list(peak["requests"]) == [5.0, 10.0]
    with pytest.raises(ValueError, match="'p99'"):
        step_frame("a", load, "p99")


def test_traces_are_found_by_layout_not_by_file_name(tmp_path: Path) -> None:
    minutes = pd.date_range("2020-01-01", periods=30, freq="min")
    (tmp_path / "request_traces").mkdir()
    (tmp_path / "cpu_traces").mkdir()
    (tmp_path / "nab" / "data" / "x").mkdir(parents=True)
    pd.DataFrame({"when": minutes.strftime("%Y-%m-%d %H:%M:%S"), "hits": np.arange(30)}).to_csv(
        tmp_path / "request_traces" / "shop.csv", index=False
    )
    pd.DataFrame({"ts": minutes.astype("int64") // 10**9, "value": 1.5}).to_csv(
        tmp_path / "cpu_traces" / "batch.csv", index=False
    )
    five = pd.date_range("2020-01-01", periods=6, freq="5min")
    pd.DataFrame({"timestamp": five, "value": [5, 10, 5, 10, 5, 10]}).to_csv(
        tmp_path / "nab" / "data" / "x" / "lb_request_total_1.csv", index=False
    )
    pd.DataFrame({"timestamp": five, "value": 1}).to_csv(
        tmp_path / "nab" / "data" / "x" / "disk_bytes.csv", index=False
    )
    traces = discover_traces(tmp_path)
    assert sorted(traces) == ["cpu_traces/batch", "request_traces/shop", "x/lb_request_total_1"]
    assert len(traces["x/lb_request_total_1"]) == 26  # 5-minute values held for their step
    assert traces["x/lb_request_total_1"].iloc[5] == 10
    assert str(traces["cpu_traces/batch"].index.tz) == "UTC"


def test_unparsable_trace_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    pd.DataFrame({"when": ["not a time", "never"], "hits": [1, 2]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="broken.csv.*'when'"):
        read_trace(path)


def _small_profile(tmp_path: Path, name: str, **service: object) -> Path:
    """A complete params file (the repository's, trained cheaply for a 2-day trace)."""
    import yaml

    from core.settings import REPO_ROOT

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["training"].update(
        {"models": ["naive"], "backtest_folds": 1, "backtest_horizon_hours": 1, "history_days": 2}
    )
    params["service_defaults"].update(service)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_replay_bench_end_to_end_on_a_small_synthetic_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib
    import json

    from benchmarks import replay

    monkeypatch.setattr(replay, "WINDOW_MINUTES", 6 * 60)  # replay 6 hours after 2 days
    rng = np.random.default_rng(7)
    minutes = pd.date_range("2024-03-01", periods=(2 * 24 + 6) * 60, freq="min", tz="UTC")
    hour = np.asarray(minutes.hour + minutes.minute / 60, dtype=float)
    load = 200 + 150 * np.sin((hour - 6) / 24 * 2 * np.pi) + rng.normal(0, 10, len(minutes))
    (tmp_path / "data" / "request_traces").mkdir(parents=True)
    pd.DataFrame({"t": minutes.strftime("%Y-%m-%dT%H:%M:%SZ"), "n": load.clip(1)}).to_csv(
        tmp_path / "data" / "request_traces" / "synthetic.csv", index=False
    )
    cautious = _small_profile(tmp_path, "cautious", risk=0.05)
    lean = _small_profile(tmp_path, "lean", risk=0.3, target_utilization=0.9)
    echoed: list[str] = []
    result = replay.run_replay_bench(
        tmp_path / "data",
        json_path=tmp_path / "out" / "replay.json",
        timeline_path=tmp_path / "out" / "timeline.csv",
        plots_dir=tmp_path / "out" / "plots",
        params_files=(cautious, lean),
        echo=echoed.append,
        n_jobs=1,
        cache_dir=tmp_path / "cache",
    )
    written = json.loads((tmp_path / "out" / "replay.json").read_text())
    assert [(p["name"], p["sha256"]) for p in written["params_files"]] == [
        (p.stem, hashlib.sha256(p.read_bytes()).hexdigest()) for p in (cautious, lean)
    ]
    for delay in ("2", "5"):
        summary = written["summary"][delay]
        assert set(summary["totals"]) == {*replay.BASELINES, "cautious", "lean"}
        figures = summary["per_trace"]["request_traces/synthetic"]
        assert set(figures) == {*replay.BASELINES, "cautious", "lean"}
        assert figures["oracle"]["short_minutes"] == 0
        assert figures["static_peak"]["pod_hours"] == pytest.approx(30 * 6)
        assert figures["lean"]["pod_hours"] <= figures["cautious"]["pod_hours"]
        assert set(summary["targets_met"]) == {"cautious", "lean"}
    assert result["families"]["cautious"]["request_traces/synthetic"] == {"naive": 72}
    assert list((tmp_path / "cache").glob("forecasts-*.parquet"))  # one training section
    timeline = pd.read_csv(tmp_path / "out" / "timeline.csv")
    assert len(timeline) == 2 * 6 * 60
    assert {"trace", "minute", "demand", "hpa_desired", "lean_ready"} <= set(timeline.columns)
    assert (tmp_path / "out" / "plots" / "replay_request_traces_synthetic.png").is_file()
    assert "| hpa |" in echoed[0] and "Pod start-up delay 5 min" in echoed[0]
    from benchmarks.replay_cv import leave_one_source_out
    from benchmarks.replay_report import write_report

    cv = leave_one_source_out(written, ["cautious", "lean"])
    assert cv["chosen_on_all"] in {"cautious", "lean"}
    assert set(cv["folds"]) == {"synthetic"}
    page = write_report(written, tmp_path / "docs" / "replay.md", cv).read_text()
    assert "## Protocol" in page and written["params_files"][0]["sha256"][:12] in page
    assert "leave one source out" in page
    assert set(cv["development_totals"]) == {"cautious", "lean"}
    lean = cv["development_totals"]["lean"]["2"]
    synthetic = written["summary"]["2"]["per_trace"]["request_traces/synthetic"]
    assert lean["pod_hours"] == synthetic["lean"]["pod_hours"]
    assert f"| `lean` | {100 * lean['short_vs_hpa']:.1f} / " in page


def _minutes(days: float) -> pd.Series:
    index = pd.date_range(START, periods=int(days * 1440), freq="min")
    return pd.Series(np.arange(len(index), dtype=float) + 1.0, index=index)


def test_shifted_replay_window_is_the_week_before_the_last() -> None:
    traces, skipped = select_traces({"long": _minutes(16), "short": _minutes(10)}, shift_weeks=1)
    assert [t.name for t in traces] == ["long"] and set(skipped) == {"short"}
    assert traces[0].window.index[-1] == START + pd.Timedelta(
        minutes=16 * 1440 - 1 - WINDOW_MINUTES
    )
    assert len(traces[0].window) == WINDOW_MINUTES and len(traces[0].history) == 2 * 1440


def test_unshifted_replay_refuses_a_short_trace_and_can_take_a_subset() -> None:
    with pytest.raises(ValueError, match="trace 'short'"):
        select_traces({"long": _minutes(9), "short": _minutes(7)})
    traces, _ = select_traces({"long": _minutes(9), "short": _minutes(7)}, only=("lon",))
    assert [t.name for t in traces] == ["long"]
    with pytest.raises(ValueError, match="shift_weeks must be 0 or more"):
        select_traces({"long": _minutes(9)}, shift_weeks=-1)
    with pytest.raises(ValueError, match="no trace to replay"):
        select_traces({"long": _minutes(9)}, only=("nothing",))


def test_the_cv_choice_spends_the_pod_hour_budget_then_minimises_short_minutes() -> None:
    from benchmarks.replay_cv import choose

    def rows(short: int, pods: float) -> dict[str, float]:
        return {"short_minutes": short, "pod_hours": pods}

    per_trace = {
        "a/x_1": {
            "hpa": rows(100, 100.0),
            "lavish": rows(5, 150.0),  # few short minutes, far over budget
            "lean": rows(60, 104.0),  # within 105 %
            "leaner": rows(90, 101.0),  # within, but shorter more often
        }
    }
    result = {"summary": {"2": {"per_trace": per_trace}, "5": {"per_trace": per_trace}}}
    assert choose(result, ["a/x_1"], ["lavish", "lean", "leaner"]) == "lean"
    # none within the budget: the fewest pod-hours
    assert choose(result, ["a/x_1"], ["lavish"]) == "lavish"
    per_trace["a/x_1"]["costly"] = rows(0, 120.0)
    assert choose(result, ["a/x_1"], ["lavish", "costly"]) == "costly"


def test_every_cv_candidate_is_a_complete_params_file_the_product_loads(tmp_path: Path) -> None:
    from benchmarks.replay_cv import CANDIDATE_OVERRIDES, write_candidates
    from core.params import forecast_target, load_config
    from core.settings import REPO_ROOT

    paths = write_candidates(REPO_ROOT / "params.yaml", tmp_path)
    assert len(paths) == len(CANDIDATE_OVERRIDES)
    targets = set()
    for path in paths:
        config = load_config(path)
        changes = CANDIDATE_OVERRIDES[path.stem]
        assert config.training.target == changes["training"]["target"]
        assert config.service_defaults["risk"] == changes["service_defaults"]["risk"]
        assert config.service_defaults["prewarm_minutes"] in {0, 15}
        targets.add(forecast_target(path))
    assert targets == {"mean", "peak"}
