"""The Kubernetes HPA model against the documentation's worked examples, and the replay parts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.hpa import HpaBehavior, HpaController, ScalingPolicy, usage_ratio_replicas
from benchmarks.replay import (
    KEDA_CPU_TARGET,
    WINDOW_MINUTES,
    HoltWintersReplicas,
    _planned_targets,
    cheapest_within,
    choose_fleet_settings,
    choose_quantile_risk,
    discover_traces,
    five_minute_frame,
    read_trace,
    schedule_controller,
    select_traces,
    served_per_minute,
    simulate,
    surge_lead,
    surge_onsets,
)
from core.policy import plan_replicas, served_value
from core.service_config import ServiceConfig

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
    run = simulate(demand, 10.0, 2, 1, schedule_controller(target, through_hpa=False))
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
    run = simulate(demand, 10.0, delay, int(oracle[0]), schedule_controller(oracle, False))
    assert (demand <= run.ready * 10.0 + 1e-9).all()


def test_scale_down_removes_starting_pods_first() -> None:
    target = np.array([2, 6, 3, 3, 3, 3])
    run = simulate(np.zeros(6), 1.0, 3, 2, schedule_controller(target, False))
    assert list(run.ready) == [2, 2, 2, 2, 3, 3]


def test_keda_cpu_trigger_raises_a_low_schedule_and_scale_downs_go_20_percent_a_minute() -> None:
    # The schedule asks for 2 pods while 30 pods' worth of load arrives: the cpu trigger (90 %)
    # proposes more, the HPA takes the larger proposal and the scale-up limits pace it.
    demand = np.r_[np.full(3, 10.0), np.full(12, 300.0)]
    target = np.full(15, 2)
    run = simulate(demand, 10.0, 1, 2, schedule_controller(target, True, demand, 10.0))
    assert run.desired[-1] >= math.ceil(300 / (10.0 * KEDA_CPU_TARGET))
    assert run.desired[3] == 2  # the load of minute 3 is seen one minute late
    assert run.desired[4] <= 24  # 2 -> 12 -> 24: at most max(+10 pods, +100 %) per 30 s
    # Without the cpu trigger the schedule alone rules.
    alone = simulate(demand, 10.0, 1, 2, schedule_controller(target, True))
    assert (alone.desired == 2).all()
    # A scale-down from 20 to 2 pods: 20 % a minute of the count at the period's start.
    steps_down = np.r_[20, np.full(4, 2)]
    down = simulate(np.zeros(5), 1.0, 1, 20, schedule_controller(steps_down, True))
    assert list(down.desired) == [20, 16, 12, 9, 7]


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


def test_served_per_minute_matches_served_value() -> None:
    schedule = pd.DataFrame(
        {
            "service": "a",
            "ts": START + pd.Timedelta(minutes=5) * np.arange(6),
            "replicas": [3, 7, 2, 2, 9, 1],
        }
    )
    stamps = START + pd.to_timedelta(np.arange(-2, 32), unit="min")
    fast = served_per_minute(schedule, stamps, pd.Timedelta(minutes=2))
    slow = [served_value(schedule, s, 120).get("a", 0) for s in stamps]
    assert list(fast) == slow


def test_planned_targets_equal_plan_replicas_then_served_value() -> None:
    rng = np.random.default_rng(3)
    origin = START + pd.Timedelta(minutes=30)
    steps = origin + pd.Timedelta(minutes=5) * np.arange(1, 37)
    p50 = {"a": rng.uniform(20, 200, 36), "b": rng.uniform(1, 30, 36)}
    forecast = pd.concat(
        [
            pd.DataFrame({"service": s, "ts": steps, "p50": v, "p90": v * rng.uniform(1, 2, 36)})
            for s, v in p50.items()
        ],
        ignore_index=True,
    )
    configs = {
        ("x", delay): {
            "a": ServiceConfig(capacity_per_replica=10, risk=risk, startup_seconds=delay * 60),
            "b": ServiceConfig(capacity_per_replica=2, risk=0.3, max_surge_per_step=2),
        }
        for delay, risk in ((2, 0.05), (5, 0.1))
    }
    starts = {"a": origin, "b": origin}
    spans = {"a": 60, "b": 45}
    targets = _planned_targets([(0, forecast), (15, forecast)], starts, spans, configs, 15)
    for (variant, delay), per_service in configs.items():
        for name, config in per_service.items():
            schedule = plan_replicas(forecast[forecast["service"] == name], config)
            for offset in (0, 15):
                stamps = origin + pd.to_timedelta(np.arange(offset, offset + 15), unit="min")
                expected = served_per_minute(schedule, stamps, pd.Timedelta(minutes=delay))
                got = targets[(variant, name, delay)][offset : offset + 15]
                assert list(got) == list(expected), (name, delay, offset)


def test_tail_factors_of_the_replay_use_only_errors_of_steps_already_over() -> None:
    # A forecast (p50 100, p90 120) every 5 minutes for 8 hours; the actual load is 100 for 4
    # hours, then 10000. Until errors of the jump are known (the hourly refresh after they end),
    # the tail factor is 0 and the plan is p50's; a plan that saw the future would rise at once.
    origin = START
    step = pd.Timedelta(minutes=5)
    forecasts = [
        (
            offset,
            pd.DataFrame(
                {
                    "service": "a",
                    "ts": origin + pd.Timedelta(minutes=offset) + step * np.arange(12),
                    "p50": 100.0,
                    "p90": 120.0,
                }
            ),
        )
        for offset in range(0, 8 * 60, 5)
    ]
    stamps = origin + step * np.arange(9 * 12)
    jump = np.where(stamps < origin + pd.Timedelta(hours=4), 100.0, 1e4)
    actual = pd.DataFrame({"service": "a", "ts": stamps, "requests": jump})
    configs = {("x", 2): {"a": ServiceConfig(capacity_per_replica=10, risk=0.1)}}
    plain = _planned_targets(forecasts, {"a": origin}, {"a": 8 * 60}, configs, 5)
    tailed = _planned_targets(
        forecasts, {"a": origin}, {"a": 8 * 60}, configs, 5, {"a": actual}, {("x", 2): 1.0}
    )
    assert (plain[("x", "a", 2)] == 18).all()  # the p90 (risk 0.1), 120 at 70 %: 18 pods
    served = tailed[("x", "a", 2)]
    # fewer than 288 known errors before the 3-hour refresh: the forecast's own p90
    assert (served[: 3 * 60] == 18).all()
    assert (served[3 * 60 : 5 * 60] == 15).all()  # factor 0 (p50: 100 at 70 %) until 5 hours
    assert (served[5 * 60 :] > 18).all()


def test_five_minute_frames_hold_the_mean_or_the_busiest_minute_of_complete_steps() -> None:
    load = pd.Series(np.arange(1.0, 13.0), index=START + pd.to_timedelta(np.arange(12), "min"))
    mean = five_minute_frame("a", load, "mean")
    peak = five_minute_frame("a", load, "peak")
    assert list(mean["requests"]) == [3.0, 8.0]  # the last, incomplete step is left out
    assert list(peak["requests"]) == [5.0, 10.0]
    with pytest.raises(ValueError, match="'p99'"):
        five_minute_frame("a", load, "p99")


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


def test_replay_bench_end_to_end_on_a_small_synthetic_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    echoed: list[str] = []
    result = replay.run_replay_bench(
        tmp_path / "data",
        json_path=tmp_path / "out" / "replay.json",
        timeline_path=tmp_path / "out" / "timeline.csv",
        plots_dir=tmp_path / "out" / "plots",
        model="naive",
        echo=echoed.append,
    )
    figures = result["traces"]["2"]["request_traces/synthetic"]
    assert set(figures) == set(replay.policy_names())
    assert figures["oracle"]["short_minutes"] == 0
    assert figures["static_peak"]["pod_hours"] == pytest.approx(30 * 6)
    assert figures["oracle"]["pod_hours"] <= figures["static_peak"]["pod_hours"]
    assert json.loads((tmp_path / "out" / "replay.json").read_text())["model"] == "naive"
    # 6 hours of the 2 days before the window calibrate the quantile of forescale_cal.
    chosen = result["forescale_quantile_risk"]["forescale_cal"]
    candidates = replay.FORESCALE_VARIANTS["forescale_cal"].quantile_risks
    assert {chosen[str(d)]["request_traces/synthetic"][0] for d in (2, 5)} <= set(candidates)
    timeline = pd.read_csv(tmp_path / "out" / "timeline.csv")
    assert len(timeline) == 2 * 6 * 60
    assert {"trace", "minute", "demand", "hpa_desired", "forescale_ready"} <= set(timeline.columns)
    assert (tmp_path / "out" / "plots" / "replay_request_traces_synthetic.png").is_file()
    assert "| hpa |" in echoed[0] and "Pod start-up delay 5 min" in echoed[0]


# ---------------------------------------------------------------- quantile calibration


def _step_demand() -> np.ndarray:
    """100 load units for 5 hours, then 200 (10 and 20 pods at capacity 10)."""
    return np.r_[np.full(300, 100.0), np.full(300, 200.0)]


def test_calibration_takes_the_cheapest_risk_that_stays_within_the_short_budget() -> None:
    demand = _step_demand()
    candidates = {
        0.05: np.full(600, 25),  # never short, the most pods
        0.1: np.full(600, 20),  # never short, fewer pods
        0.3: np.full(600, 15),  # short for the whole second half
    }
    assert choose_quantile_risk(demand, 10.0, 2, candidates) == 0.1


def test_calibration_budget_is_relative_to_the_hpa_short_minutes() -> None:
    demand = _step_demand()
    # Scales exactly at the step: 2 short minutes while the pods start (the HPA has 3 there).
    just_in_time = np.r_[np.full(300, 10), np.full(300, 20)]
    candidates = {0.05: np.full(600, 20), 0.3: just_in_time}
    assert choose_quantile_risk(demand, 10.0, 2, candidates, budget=0.05) == 0.05
    assert choose_quantile_risk(demand, 10.0, 2, candidates, budget=1.0) == 0.3


def test_calibration_without_a_qualifying_risk_takes_the_fewest_short_minutes() -> None:
    demand = np.full(600, 200.0)
    candidates = {0.1: np.full(600, 15), 0.3: np.full(600, 12), 0.5: np.full(600, 15)}
    assert choose_quantile_risk(demand, 10.0, 2, candidates) == 0.1


def test_calibration_refuses_a_target_of_another_length() -> None:
    with pytest.raises(ValueError, match="risk 0.2 has 5 minutes, the demand 600"):
        choose_quantile_risk(_step_demand(), 10.0, 2, {0.2: np.full(5, 20)})


def test_calibration_candidates_can_be_pairs_of_risks() -> None:
    demand = _step_demand()
    candidates = {(0.05, 0.05): np.full(600, 25), (0.05, 0.1): np.full(600, 20)}
    assert choose_quantile_risk(demand, 10.0, 2, candidates) == (0.05, 0.1)


def test_fleet_budget_goes_where_a_short_minute_saves_the_most_pods() -> None:
    # Trace "a" saves 1000 pod-minutes for 10 short minutes, "b" only 100 for 10.
    outcomes = {
        "a": {0.05: (0, 5000.0), 0.5: (10, 4000.0)},
        "b": {0.05: (0, 5000.0), 0.5: (10, 4900.0)},
    }
    hpa = {"a": 100, "b": 100}
    assert choose_fleet_settings(outcomes, hpa, budget=0.05) == {"a": 0.5, "b": 0.05}
    assert choose_fleet_settings(outcomes, hpa, budget=0.1) == {"a": 0.5, "b": 0.5}
    assert choose_fleet_settings(outcomes, hpa, budget=0.0) == {"a": 0.05, "b": 0.05}


def test_fleet_budget_out_of_reach_takes_the_fewest_short_minutes() -> None:
    outcomes = {"a": {(0.05, 0.05): (30, 5000.0), (0.5, 0.1): (40, 4000.0)}}
    assert choose_fleet_settings(outcomes, {"a": 100}, budget=0.1) == {"a": (0.05, 0.05)}


def test_fleet_budget_refuses_a_trace_without_candidates_or_hpa_figure() -> None:
    with pytest.raises(ValueError, match="'a' has no candidate"):
        choose_fleet_settings({"a": {}}, {"a": 10}, 0.05)
    with pytest.raises(ValueError, match="no HPA short minutes for trace 'b'"):
        choose_fleet_settings({"b": {0.1: (0, 1.0)}}, {}, 0.05)


def test_cheapest_within_the_allowance_else_fewest_short_minutes() -> None:
    outcomes = {0.05: (2, 900.0), 0.3: (5, 700.0), 0.5: (9, 600.0)}
    assert cheapest_within(outcomes, 5) == 0.3
    assert cheapest_within(outcomes, 1) == 0.05
    with pytest.raises(ValueError, match="no candidate"):
        cheapest_within({}, 1)


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
