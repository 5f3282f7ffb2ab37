"""Invariants of the scaling policy: forecast quantiles -> replicas."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from core.policy import (
    SCALE_DOWN_FRACTION,
    TAIL_MAX_FACTOR,
    Persistence,
    empirical_quantile,
    persistence_weights,
    plan_quantiles,
    plan_replicas,
    quantile_at,
    reactive_floor,
    standardized_errors,
    tail_factors,
)
from core.service_config import ServiceConfig

START = pd.Timestamp("2026-11-16 00:00", tz="UTC")
STEP = pd.Timedelta(minutes=5)


def config(**overrides: object) -> ServiceConfig:
    base = {
        "capacity_per_replica": 10.0,
        "target_utilization": 0.5,
        "min_replicas": 2,
        "max_replicas": 40,
        "startup_seconds": 120,
        "scale_down_delay_minutes": 15,
        "max_surge_per_step": 5,
        "risk": 0.1,
    }
    base.update(overrides)
    return ServiceConfig(**base)


def forecast(p50: np.ndarray, p90: np.ndarray | None = None, service: str = "api") -> pd.DataFrame:
    p50 = np.asarray(p50, dtype=float)
    return pd.DataFrame(
        {
            "service": service,
            "ts": START + STEP * np.arange(len(p50)),
            "p50": p50,
            "p90": p50 if p90 is None else np.asarray(p90, dtype=float),
        }
    )


def random_forecast(rng: np.random.Generator, steps: int = 60) -> pd.DataFrame:
    p50 = np.abs(np.cumsum(rng.normal(0, 20, steps))) + rng.uniform(0, 50)
    return forecast(p50, p50 + rng.uniform(0, 40, steps))


@pytest.mark.parametrize("seed", range(8))
def test_more_forecast_load_never_yields_fewer_replicas(seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = random_forecast(rng)
    more = base.copy()
    extra = rng.uniform(0, 60, len(base)) * (rng.random(len(base)) < 0.3)
    more["p50"] += extra
    more["p90"] += extra + rng.uniform(0, 10, len(base))
    low = plan_replicas(base, config())["replicas"].to_numpy()
    high = plan_replicas(more, config())["replicas"].to_numpy()
    assert (high >= low).all()
    assert (high > low).any()


@pytest.mark.parametrize("seed", range(8))
def test_bounds_surge_and_step_down_limits_hold(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    cfg = config(max_replicas=25)
    replicas = plan_replicas(random_forecast(rng), cfg)["replicas"].to_numpy()
    assert replicas.min() >= cfg.min_replicas
    assert replicas.max() <= cfg.max_replicas
    steps = np.diff(replicas)
    assert steps.max() <= cfg.max_surge_per_step
    allowed_down = np.maximum(1, np.ceil(replicas[:-1] * SCALE_DOWN_FRACTION - 1e-9))
    assert (-steps <= allowed_down).all()


def test_replicas_are_ceil_of_quantile_over_capacity() -> None:
    # flat p90 of 101 req/s at 10 req/s x 0.5 -> ceil(20.2) = 21 pods everywhere
    plan = plan_replicas(forecast(np.full(12, 80.0), np.full(12, 101.0)), config())
    assert (plan["replicas"] == 21).all()
    assert np.allclose(plan["quantile_used"], 0.9)
    assert list(plan.columns) == [
        "service",
        "ts",
        "replicas",
        "forecast_p50",
        "forecast_p90",
        "quantile_used",
        "planned_load",
        "tail_factor",
        "persistence_weight",
        "last_load",
    ]
    assert np.allclose(plan["planned_load"], 101.0) and plan["tail_factor"].isna().all()
    assert plan["persistence_weight"].isna().all() and plan["last_load"].isna().all()


def test_rise_is_pre_warmed_at_the_median_and_reached_one_lead_earlier() -> None:
    # Low until step 20, then p50 = 100 and p90 = 150 req/s (20 and 30 pods at 5 req/s per pod).
    p50 = np.r_[np.full(20, 10.0), np.full(20, 100.0)]
    p90 = np.r_[np.full(20, 10.0), np.full(20, 150.0)]
    cfg = config(max_surge_per_step=100, prewarm_minutes=15)
    replicas = plan_replicas(forecast(p50, p90), cfg)["replicas"].to_numpy()
    lead_steps = math.ceil(cfg.startup_seconds / 300)  # 2 min -> 1 step
    prewarm_steps = math.ceil((cfg.startup_seconds + cfg.prewarm_minutes * 60) / 300)  # 17 min -> 4
    assert replicas[20 - lead_steps] == 30  # the p90 level is requested one start-up lead early
    assert replicas[20 - lead_steps - 1] == 20  # the median level is pre-warmed before that
    assert replicas[20 - prewarm_steps] == 20
    assert replicas[20 - prewarm_steps - 1] == 2  # nothing earlier than the pre-warm window


def test_without_pre_warm_a_rise_is_requested_one_start_up_lead_early_and_no_earlier() -> None:
    p50 = np.r_[np.full(20, 10.0), np.full(20, 100.0)]
    p90 = np.r_[np.full(20, 10.0), np.full(20, 150.0)]
    cfg = config(max_surge_per_step=100, prewarm_minutes=0)
    replicas = plan_replicas(forecast(p50, p90), cfg)["replicas"].to_numpy()
    lead_steps = math.ceil(cfg.startup_seconds / 300)
    assert replicas[20 - lead_steps] == 30
    assert (replicas[: 20 - lead_steps] == 2).all()


def test_surge_larger_than_the_limit_starts_earlier() -> None:
    p = np.r_[np.full(20, 10.0), np.full(10, 200.0)]  # 2 -> 40 pods at step 20
    cfg = config(max_surge_per_step=5)
    replicas = plan_replicas(forecast(p, p), cfg)["replicas"].to_numpy()
    ready_step = 20 - math.ceil(cfg.startup_seconds / 300)
    assert replicas[ready_step] == 40
    assert np.diff(replicas).max() <= 5


def test_scale_down_is_delayed_then_stepped() -> None:
    p = np.r_[np.full(10, 150.0), np.full(30, 10.0)]  # 30 pods, then 2 pods from step 10
    cfg = config()
    replicas = plan_replicas(forecast(p, p), cfg)["replicas"].to_numpy()
    hold = cfg.scale_down_delay_minutes // 5  # 3 steps
    assert (replicas[: 10 + hold] == 30).all()
    assert replicas[10 + hold] == 30 - math.ceil(30 * SCALE_DOWN_FRACTION)
    assert replicas[-1] == cfg.min_replicas


def test_live_floor_raises_the_plan_when_live_load_exceeds_the_forecast() -> None:
    cfg = config()
    plain = plan_replicas(forecast(np.full(12, 10.0)), cfg)
    floored = plan_replicas(forecast(np.full(12, 10.0)), cfg, live_floor={"api": 12})
    assert plain["replicas"].iloc[0] == 2
    assert floored["replicas"].iloc[0] == 12
    assert (floored["replicas"].to_numpy() >= plain["replicas"].to_numpy()).all()
    assert reactive_floor(57.0, cfg) == 12  # ceil(57 / 5)


def test_now_drops_finished_steps() -> None:
    plan = plan_replicas(
        forecast(np.full(12, 10.0)), config(), now=START + pd.Timedelta(minutes=12)
    )
    assert plan["ts"].iloc[0] == START + pd.Timedelta(minutes=10)  # the step holding now stays


def test_quantile_interpolation_and_extrapolation() -> None:
    frame = forecast(np.array([100.0]), np.array([200.0]))
    assert quantile_at(frame, 0.9)[0] == pytest.approx(200.0)
    assert quantile_at(frame, 0.8)[0] == pytest.approx(175.0)  # linear in probability
    z90, z95 = 1.2815515655446004, 1.6448536269514722
    assert quantile_at(frame, 0.95)[0] == pytest.approx(100.0 + 100.0 * z95 / z90)
    plan = plan_replicas(frame, config(risk=0.2))
    assert plan["quantile_used"].iloc[0] == pytest.approx(0.8)
    assert plan["replicas"].iloc[0] == 35  # ceil(175 / 5)


def test_configs_per_service() -> None:
    frame = pd.concat([forecast(np.full(4, 50.0)), forecast(np.full(4, 50.0), service="db")])
    plan = plan_replicas(frame, {"api": config(), "db": config(capacity_per_replica=5.0)})
    by_service = plan.groupby("service")["replicas"].max()
    assert by_service["api"] == 10 and by_service["db"] == 20
    with pytest.raises(ValueError, match="'db'"):
        plan_replicas(frame, {"api": config()})


def test_bad_forecast_is_refused_naming_service_column_and_rows() -> None:
    frame = forecast(np.array([10.0, 20.0, -1.0, 30.0]), service="checkout")
    with pytest.raises(ValueError, match=r"'checkout'.*'p50'.*rows 2\.\.2"):
        plan_replicas(frame, config())
    with pytest.raises(ValueError, match="quantile column"):
        plan_replicas(frame[["service", "ts"]], config())
    with pytest.raises(ValueError, match="missing column"):
        plan_replicas(frame.drop(columns="ts"), config())


def test_standardized_errors_are_in_units_of_the_forecast_spread() -> None:
    errors = standardized_errors(
        np.array([100.0, 150.0, 300.0, np.nan]),
        np.array([100.0, 100.0, 100.0, 100.0]),
        np.array([150.0, 150.0, 200.0, 150.0]),
    )
    assert errors[:3] == pytest.approx([0.0, 1.0, 2.0])
    assert np.isnan(errors[3])
    collapsed = standardized_errors(np.array([101.0]), np.array([100.0]), np.array([100.0]))
    assert np.isfinite(collapsed).all() and collapsed[0] > 1e3


def test_tail_factors_are_the_empirical_quantile_per_horizon_step() -> None:
    # step 1: errors 0, 0.05, ..., 4.95 (0.9 quantile 4.455); step 2: 60 errors of 0.25; step
    # 3: too few of its own, so the quantile over all steps
    errors = np.r_[np.arange(100.0) / 20, np.full(60, 0.25), np.full(10, 8.0)]
    horizon = np.r_[np.full(100, 1), np.full(60, 2), np.full(10, 3)]
    factors = tail_factors(errors, horizon, 0.9, 4, min_errors=50, min_total=100)
    pooled = np.quantile(errors, 0.9)
    assert factors == pytest.approx([4.455, 0.25, pooled, pooled])
    assert tail_factors(errors[:99], horizon[:99], 0.9, 4, min_errors=50, min_total=100) is None
    assert (tail_factors(np.full(300, -3.0), np.ones(300), 0.9, 2) == 0.0).all()
    # a collapsed interval (p90 == p50) makes huge errors; the factor stays at the guard
    collapsed = standardized_errors(np.full(300, 5.0), np.zeros(300), np.zeros(300))
    assert (tail_factors(collapsed, np.ones(300), 0.9, 1) == TAIL_MAX_FACTOR).all()
    with pytest.raises(ValueError, match="level"):
        tail_factors(errors, horizon, 1.0, 4)
    with pytest.raises(ValueError, match="length"):
        tail_factors(errors, horizon[:-1], 0.9, 4)


def test_a_tail_factor_of_the_past_record_makes_the_past_short_at_the_risk() -> None:
    rng = np.random.default_rng(4)
    p50, spread = np.full(2000, 100.0), np.full(2000, 20.0)
    actual = p50 + spread * rng.standard_t(3, 2000)  # heavier tail than the forecast assumes
    factors = tail_factors(standardized_errors(actual, p50, p50 + spread), np.ones(2000), 0.95, 1)
    planned = empirical_quantile(p50, p50 + spread, factors)
    assert np.mean(actual > planned) == pytest.approx(0.05, abs=0.002)
    normal_p95 = quantile_at(forecast(p50, p50 + spread), 0.95)
    assert np.mean(actual > normal_p95) > 0.06  # the normal tail would be short more often


def test_planning_on_tail_factors_uses_p50_plus_factor_times_spread() -> None:
    p50, p90 = np.array([40.0, 40.0, 40.0, 40.0]), np.array([60.0, 60.0, 60.0, 60.0])
    settings = config(startup_seconds=0, scale_down_delay_minutes=0)
    planned = plan_quantiles({0.5: p50, 0.9: p90}, STEP, settings, tail=np.array([0.5, 3.0]))
    # step 1: 40 + 0.5 * 20 = 50 -> 10 pods; later steps: 40 + 3 * 20 = 100 -> 20 pods, reached
    # by the surge limit (5 per step) from two steps before
    assert list(planned) == [15, 20, 20, 20]
    with pytest.raises(ValueError, match="p50 and p90"):
        plan_quantiles({0.5: p50}, STEP, settings, tail=np.array([1.0]))
    for bad in (np.array([1.0, np.nan]), np.array([-0.5]), np.array([])):
        with pytest.raises(ValueError, match="finite and at least 0"):
            plan_quantiles({0.5: p50, 0.9: p90}, STEP, settings, tail=bad)


def test_tail_factors_follow_the_steps_that_now_keeps() -> None:
    frame = forecast(np.full(6, 40.0), np.full(6, 60.0))
    settings = config(startup_seconds=0, scale_down_delay_minutes=0, max_surge_per_step=100)
    tail = np.array([0.0, 0.0, 0.0, 3.0])  # 40 req/s for three steps, then 100
    later = plan_replicas(
        frame, settings, now=START + 2 * STEP + pd.Timedelta(minutes=1), tail=tail
    )
    assert list(later["ts"]) == list(frame["ts"].iloc[2:])
    assert list(later["tail_factor"]) == [0.0, 3.0, 3.0, 3.0]
    assert list(later["planned_load"]) == [40.0, 100.0, 100.0, 100.0]


@pytest.mark.parametrize("seed", range(4))
def test_more_forecast_load_never_yields_fewer_replicas_on_tail_factors(seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = random_forecast(rng)
    extra = rng.uniform(0, 60, len(base)) * (rng.random(len(base)) < 0.3)
    tail = rng.uniform(0, 4, 12)
    low = plan_quantiles(
        {0.5: base["p50"].to_numpy(), 0.9: base["p90"].to_numpy()}, STEP, config(), tail=tail
    )
    high = plan_quantiles(
        {0.5: base["p50"].to_numpy() + extra, 0.9: base["p90"].to_numpy() + extra + 5.0},
        STEP,
        config(),
        tail=tail,
    )
    assert (high >= low).all() and (high > low).any()


def test_persistence_weight_is_the_least_squares_blend_per_horizon_step() -> None:
    rng = np.random.default_rng(3)
    n = 600
    actual = rng.uniform(50, 150, n)
    last = actual + rng.normal(0, 10, n)  # persistence: close at step 1
    useless = rng.uniform(50, 150, n)  # a forecast unrelated to the load
    steps = np.r_[np.ones(n // 2, dtype=int), np.full(n // 2, 2)]
    weights = persistence_weights(actual, useless, last, steps, 3)
    assert weights is not None and len(weights) == 3
    assert (weights < 0.1).all()  # persistence wins: the forecast gets (almost) no say
    exact = persistence_weights(actual, actual, last, steps, 3)
    assert exact is not None and np.allclose(exact, 1.0)  # a perfect forecast gets all of it
    # the weight minimises the squared error of the blend on the record
    half = 0.5 * actual + 0.5 * useless
    w = persistence_weights(actual, half, last, np.ones(n, dtype=int), 1)
    assert w is not None
    blend = lambda x: last + x * (half - last)
    best = np.mean((actual - blend(w[0])) ** 2)
    for other in (w[0] - 0.05, w[0] + 0.05):
        assert best <= np.mean((actual - blend(np.clip(other, 0, 1))) ** 2)
    assert persistence_weights(actual[:10], half[:10], last[:10], steps[:10], 3) is None
    with pytest.raises(ValueError, match="differ in length"):
        persistence_weights(actual, half[:-1], last, steps, 3)


def test_a_forecast_without_skill_plans_the_current_load() -> None:
    settings = config(startup_seconds=0, scale_down_delay_minutes=0, max_surge_per_step=100)
    p50, p90 = np.full(4, 200.0), np.full(4, 220.0)
    zero = Persistence(last=50.0, weights=np.zeros(1))
    full = Persistence(last=50.0, weights=np.ones(1))
    plain = plan_quantiles({0.5: p50, 0.9: p90}, STEP, settings)
    assert list(plan_quantiles({0.5: p50, 0.9: p90}, STEP, settings, persistence=full)) == list(
        plain
    )
    # w = 0: 50 req/s at 10 x 0.5 per pod -> 10 pods at every step
    assert list(plan_quantiles({0.5: p50, 0.9: p90}, STEP, settings, persistence=zero)) == [10] * 4
