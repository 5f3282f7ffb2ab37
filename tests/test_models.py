"""Each forecaster on small seeded synthetic series: shape, quantiles, fresh history, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.base import Forecaster
from models.features import build_features, prepare_history, robust_clip
from models.naive import SeasonalNaiveForecaster

STEP = pd.Timedelta(minutes=30)
SEASON = 48  # one day of 30-minute steps


def synthetic_fleet(days: int = 10, seed: int = 7) -> pd.DataFrame:
    """Two services with a daily cycle, weekly modulation and noise, 10x apart in level."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2026-03-02", periods=days * SEASON, freq=STEP, tz="UTC")
    phase = np.arange(ts.size) * 2 * np.pi / SEASON
    weekly = 1.0 + 0.2 * (ts.dayofweek < 5)
    frames = []
    for service, level in (("checkout", 100.0), ("search", 10.0)):
        values = level * weekly * (1.0 + 0.5 * np.sin(phase)) + rng.normal(0, 0.03 * level, ts.size)
        frames.append(pd.DataFrame({"service": service, "ts": ts, "requests": values}))
    return pd.concat(frames, ignore_index=True)


def assert_valid_forecast(forecast: pd.DataFrame, history: pd.DataFrame, horizon: int) -> None:
    """Every service gets ``horizon`` future rows with monotone, non-negative quantiles."""
    assert list(forecast.columns[:4]) == ["service", "ts", "p50", "p90"]
    assert str(forecast["ts"].dtype) == "datetime64[us, UTC]"
    for service, group in forecast.groupby("service"):
        last = history.loc[history["service"] == service, "ts"].max()
        expected = pd.date_range(last + STEP, periods=horizon, freq=STEP)
        assert list(group["ts"]) == list(expected)
    assert (forecast["p50"] >= 0).all()
    assert (forecast["p90"] >= forecast["p50"]).all()
    assert forecast[["p50", "p90"]].notna().all().all()


def mae_against_truth(forecast: pd.DataFrame, truth: pd.DataFrame) -> float:
    joined = forecast.merge(truth, on=["service", "ts"])
    return float((joined["p50"] - joined["requests"]).abs().mean())


def roundtrip(model: Forecaster, tmp_path: Path, horizon: int) -> None:
    model.save(tmp_path / "model")
    loaded = type(model).load(tmp_path / "model")
    pd.testing.assert_frame_equal(loaded.predict(horizon), model.predict(horizon))


def test_seasonal_naive_repeats_the_last_day(tmp_path: Path) -> None:
    history = synthetic_fleet(days=3)
    model = SeasonalNaiveForecaster().fit(history)
    assert model.season_ == SEASON
    forecast = model.predict(60)
    assert_valid_forecast(forecast, history, 60)
    last_day = history[history["service"] == "search"]["requests"].to_numpy()[-SEASON:]
    search = forecast[forecast["service"] == "search"]["p50"].to_numpy()
    np.testing.assert_allclose(search[:SEASON], last_day)
    np.testing.assert_allclose(search[SEASON:], last_day[:12])
    roundtrip(model, tmp_path, 10)


def test_seasonal_naive_uses_fresh_history_without_refit() -> None:
    history = synthetic_fleet(days=4)
    cutoff = history["ts"].max() - pd.Timedelta(days=1)
    model = SeasonalNaiveForecaster().fit(history[history["ts"] <= cutoff])
    fresh = model.predict(5, history=history)
    assert fresh["ts"].min() == history["ts"].max() + STEP


def test_seasonal_naive_handles_short_histories_and_gaps() -> None:
    history = synthetic_fleet(days=3)
    short = history[history["service"] == "search"].head(5)
    forecast = SeasonalNaiveForecaster().fit(short).predict(3)
    np.testing.assert_allclose(forecast["p50"], short["requests"].iloc[-1])
    gappy = history.drop(index=history.index[10:30])
    prepared = prepare_history(gappy, "requests", STEP)
    assert prepared.groupby("service").size().eq(3 * SEASON).all()
    assert prepared["filled"].sum() == 20


def test_bad_input_raises_a_clear_error() -> None:
    history = synthetic_fleet(days=2)
    with pytest.raises(ValueError, match="missing column"):
        SeasonalNaiveForecaster().fit(history.drop(columns="requests"))
    broken = history.copy()
    broken.loc[broken.index[5], "requests"] = np.inf
    with pytest.raises(ValueError, match="'checkout'.*'requests'.*infinite"):
        SeasonalNaiveForecaster().fit(broken)
    with pytest.raises(ValueError, match="before fit"):
        SeasonalNaiveForecaster().predict(3)


def test_robust_clip_removes_a_spike_but_keeps_a_recent_level_shift() -> None:
    rng = np.random.default_rng(0)
    values = 10 + np.sin(np.arange(10 * 24) * 2 * np.pi / 24) + rng.normal(0, 0.1, 240)
    values[100] = 500.0
    values[-24:] += 50.0  # new level in the last season
    cleaned = robust_clip(values, 24)
    assert cleaned[100] < 15
    np.testing.assert_allclose(cleaned[-24:], values[-24:])


def test_features_use_only_the_past() -> None:
    values = np.arange(100, dtype=float)
    origins, horizons = np.array([50, 50]), np.array([1, 10])
    features, _, names = build_features(values, origins, horizons, season=10, week=None)
    changed = values.copy()
    changed[51:] = -1.0  # the future must not matter
    features_changed, _, _ = build_features(changed, origins, horizons, season=10, week=None)
    np.testing.assert_array_equal(features, features_changed)
    assert "season_lag_0" in names and "lag_0" in names
