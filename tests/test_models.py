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


@pytest.mark.parametrize("size", [3, 51, 52, 2016, 8064])
def test_centred_median_equals_pandas_rolling_median_at_every_position(size: int) -> None:
    from models.features import centred_median

    rng = np.random.default_rng(size)
    for window in (1, 5, 25):
        values = rng.normal(100, 10, size)
        values[rng.integers(0, size, 3)] = 1e6  # spikes
        for series in (values, np.round(values / 10)):  # and ties
            expected = pd.Series(series).rolling(window, center=True, min_periods=1).median()
            np.testing.assert_array_equal(centred_median(series, window), expected.to_numpy())
    for missing in (np.nan, np.inf):
        gappy = rng.normal(size=size)
        gappy[size // 2] = missing
        expected = pd.Series(gappy).rolling(5, center=True, min_periods=1).median().to_numpy()
        np.testing.assert_array_equal(centred_median(gappy, 5), expected)
    with pytest.raises(ValueError, match="odd"):
        centred_median(values, 4)


def test_features_use_only_the_past() -> None:
    values = np.arange(100, dtype=float)
    origins, horizons = np.array([50, 50]), np.array([1, 10])
    features, _, names = build_features(values, origins, horizons, season=10, week=None)
    changed = values.copy()
    changed[51:] = -1.0  # the future must not matter
    features_changed, _, _ = build_features(changed, origins, horizons, season=10, week=None)
    np.testing.assert_array_equal(features, features_changed)
    assert "season_lag_0" in names and "lag_0" in names


def test_smooth_features_use_only_the_past_and_follow_the_level() -> None:
    rng = np.random.default_rng(1)
    values = 20.0 + rng.normal(0, 2.0, 200)
    values[150:] += 10.0  # a level shift
    origins, horizons = np.array([120, 199, 199]), np.array([1, 1, 5])
    kwargs = {"season": 24, "week": None, "smooth_features": True}
    features, scale, names = build_features(values, origins, horizons, **kwargs)
    changed = values.copy()
    changed[121:] = 0.0
    before, _, _ = build_features(changed, origins[:1], horizons[:1], **kwargs)
    np.testing.assert_array_equal(features[:1], before)
    column = {name: features[:, i] * scale for i, name in enumerate(names)}
    _, _, plain_names = build_features(values, origins, horizons, season=24, week=None)
    assert set(names) - set(plain_names) == {
        "ewm_3",
        "ewm_12",
        "ewm_48",
        "median_short",
        "season_change",
    }
    assert column["ewm_12"][1] == pytest.approx(
        pd.Series(values).ewm(span=12).mean().iloc[199], rel=1e-9
    )
    assert column["median_short"][1] == pytest.approx(np.median(values[194:200]))
    assert 28 < column["ewm_3"][1] and column["ewm_48"][1] < column["ewm_12"][1]
    np.testing.assert_allclose(
        features[:, names.index("season_change")],
        features[:, names.index("season_lag_mean")] - features[:, names.index("origin_profile")],
    )


# --------------------------------------------------------------------------- LightGBM
def small_lightgbm(**overrides: object) -> Forecaster:
    from models.lgbm_model import LightGBMForecaster

    options: dict = {"n_estimators": 40, "samples_per_series": 600, "num_threads": 1, "seed": 3}
    options.update(overrides)
    return LightGBMForecaster(**options)


def test_lightgbm_global_model_beats_seasonal_naive_on_noisy_series(tmp_path: Path) -> None:
    fleet = synthetic_fleet(days=10)
    cutoff = fleet["ts"].max() - pd.Timedelta(days=1)
    history, truth = fleet[fleet["ts"] <= cutoff], fleet[fleet["ts"] > cutoff]
    model = small_lightgbm().fit(history)
    forecast = model.predict(SEASON)
    assert_valid_forecast(forecast, history, SEASON)
    naive = SeasonalNaiveForecaster().fit(history).predict(SEASON)
    assert mae_against_truth(forecast, truth) < mae_against_truth(naive, truth)
    # One global model: both services, 10x apart, are forecast at their own level.
    levels = forecast.groupby("service")["p50"].mean()
    assert 5 < levels["checkout"] / levels["search"] < 20
    assert model.offsets_[0.9] != 0.0  # conformal calibration ran
    roundtrip(model, tmp_path, 6)


def test_lightgbm_uses_fresh_history_and_survives_a_spike_and_gaps() -> None:
    fleet = synthetic_fleet(days=8)
    spiky = fleet.copy()
    spiky.loc[spiky.index[100], "requests"] = 1e6  # anomalous spike in the history
    spiky = spiky.drop(index=spiky.index[200:230])  # and a gap
    cutoff = spiky["ts"].max() - pd.Timedelta(days=1)
    model = small_lightgbm(calibrate=False).fit(spiky[spiky["ts"] <= cutoff])
    fresh = model.predict(4, history=spiky)
    assert fresh["ts"].min() == spiky["ts"].max() + STEP
    assert fresh["p90"].max() < 1000  # the spike did not leak into the forecast level
    with pytest.raises(ValueError, match="not trained"):
        model.predict(4, quantiles=(0.5, 0.99))


def test_lightgbm_log_target_forecasts_on_the_original_scale(tmp_path: Path) -> None:
    fleet = synthetic_fleet(days=10)
    cutoff = fleet["ts"].max() - pd.Timedelta(days=1)
    history, truth = fleet[fleet["ts"] <= cutoff], fleet[fleet["ts"] > cutoff]
    model = small_lightgbm(target_transform="log", n_seasonal_lags=5, n_recent_lags=12)
    forecast = model.fit(history).predict(SEASON)
    assert_valid_forecast(forecast, history, SEASON)
    assert model.history_["y"].max() < np.log1p(fleet["requests"].max()) + 1e-9  # modelled in log
    naive = SeasonalNaiveForecaster().fit(history).predict(SEASON)
    assert mae_against_truth(forecast, truth) < mae_against_truth(naive, truth)
    assert "season_lag_4" in model.feature_names_ and "lag_11" in model.feature_names_
    roundtrip(model, tmp_path, 6)


def test_lightgbm_max_growth_caps_forecasts_at_a_multiple_of_the_history_maximum() -> None:
    fleet = synthetic_fleet(days=6)
    free = small_lightgbm(target_transform="log").fit(fleet)
    capped = small_lightgbm(target_transform="log", max_growth=0.5).fit(fleet)
    uncapped_top = free.predict(SEASON)["p90"].max()
    assert uncapped_top > 0.5 * fleet["requests"].max()  # so the cap below has work to do
    forecast = capped.predict(SEASON)
    assert_valid_forecast(forecast, fleet, SEASON)
    top = forecast.groupby("service")["p90"].max()
    assert (top <= 0.5 * fleet.groupby("service")["requests"].max() + 1e-6).all()
    recent = fleet.groupby("service").tail(3 * SEASON)  # fresh history sets the cap
    top = capped.predict(SEASON, history=recent).groupby("service")["p90"].max()
    assert (top <= 0.5 * recent.groupby("service")["requests"].max() + 1e-6).all()
    with pytest.raises(ValueError, match="max_growth"):
        small_lightgbm(max_growth=0.0)


def test_lightgbm_recent_anchor_and_smooth_features_beat_seasonal_naive_on_noise() -> None:
    # A noisy level with a mild daily cycle: one day earlier carries twice the noise.
    rng = np.random.default_rng(5)
    ts = pd.date_range("2026-03-02", periods=10 * SEASON, freq=STEP, tz="UTC")
    level = 50.0 + 5.0 * np.sin(np.arange(ts.size) * 2 * np.pi / SEASON)
    values = level + rng.normal(0.0, 8.0, ts.size)
    fleet = pd.DataFrame({"service": "noisy", "ts": ts, "requests": values})
    truth_level = pd.DataFrame({"service": "noisy", "ts": ts, "requests": level})
    model = small_lightgbm(anchor="recent", smooth_features=True, max_horizon=6, n_estimators=80)
    errors, naive_errors = [], []
    for days in (3, 2, 1):
        cutoff = ts[-1] - pd.Timedelta(days=days)
        history = fleet[fleet["ts"] <= cutoff]
        forecast = model.fit(history).predict(6)
        assert_valid_forecast(forecast, history, 6)
        naive = SeasonalNaiveForecaster().fit(history).predict(6)
        errors.append(mae_against_truth(forecast, truth_level))
        naive_errors.append(mae_against_truth(naive, truth_level))
    assert "ewm_12" in model.feature_names_
    assert np.mean(errors) < 0.7 * np.mean(naive_errors)
    # The anchor is the mean of the last min(12, season / 4) = 12 scaled values.
    _, features, scale = model.forecast_design(1)
    recent = history["requests"].tail(12).mean()
    np.testing.assert_allclose(model._anchor(features) * scale, [recent])


def test_lightgbm_week_anchor_is_last_weeks_value_corrected_by_the_weekly_change() -> None:
    fleet = synthetic_fleet(days=10)
    model = small_lightgbm(anchor="week").fit(fleet)
    _, features, _ = model.forecast_design(SEASON)
    names = model.feature_names_
    expected = features[:, names.index("week_lag")] + features[:, names.index("dev_week")]
    np.testing.assert_allclose(model._anchor(features), expected)
    # Without weekly lags the anchor falls back to the same-phase mean plus the deviation.
    daily = small_lightgbm(anchor="week", weekly=False).fit(fleet)
    mean = small_lightgbm(anchor="mean", weekly=False).fit(fleet)
    _, daily_features, _ = daily.forecast_design(SEASON)
    np.testing.assert_allclose(daily._anchor(daily_features), mean._anchor(daily_features))


def test_lightgbm_calibrates_on_several_windows() -> None:
    fleet = synthetic_fleet(days=10)
    one = small_lightgbm(max_horizon=6).fit(fleet)
    several = small_lightgbm(max_horizon=6, calibration_windows=8, calibration_stride=6)
    several = several.fit(fleet)
    assert several.offsets_[0.9] != one.offsets_[0.9]
    # One window is the default: the same offsets as before the option existed.
    default = small_lightgbm(max_horizon=6, calibration_windows=1).fit(fleet)
    assert default.offsets_ == one.offsets_
    too_short = small_lightgbm(calibration_windows=30).fit(fleet)  # 30 days of windows
    assert too_short.offsets_[0.9] == 0.0


def test_lightgbm_row_budget_bounds_a_fit_and_changes_nothing_where_it_does_not_bind() -> None:
    fleet = synthetic_fleet(days=10)
    free = small_lightgbm().fit(fleet)
    loose = small_lightgbm(max_rows=2 * 600).fit(fleet)  # two services x 600: does not bind
    pd.testing.assert_frame_equal(loose.predict(12), free.predict(12))
    from models.lgbm_model import LightGBMForecaster

    rows_trained: list[int] = []

    class CountingRows(LightGBMForecaster):
        def _train(self, quantile: float, features: np.ndarray, targets: np.ndarray) -> object:
            rows_trained.append(len(targets))
            return super()._train(quantile, features, targets)

    tight = CountingRows(n_estimators=40, samples_per_series=600, num_threads=1, max_rows=500)
    assert tight.rows_per_series(2) == 250
    assert tight.rows_per_series(1000) == 1  # never no rows at all
    assert small_lightgbm().rows_per_series(1000) == 600  # no budget: every service its own
    tight.fit(fleet)
    assert rows_trained and max(rows_trained) <= 500
    assert_valid_forecast(tight.predict(12), fleet, 12)


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"calibration_windows": 0}, "calibration_windows"),
        ({"calibration_stride": 0}, "calibration_stride"),
        ({"target_transform": "sqrt"}, "target_transform"),
        ({"n_seasonal_lags": 0}, "n_seasonal_lags"),
        ({"anchor": "mode"}, "anchor"),
        ({"max_rows": 0}, "max_rows"),
        ({"max_rows": 1.25e5}, "max_rows"),
        ({"max_rows": True}, "max_rows"),
    ],
)
def test_lightgbm_rejects_unknown_settings(option: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        small_lightgbm(**option)


# --------------------------------------------------------------------------- Prophet
def test_prophet_fits_services_in_parallel_with_a_surge_calendar(tmp_path: Path) -> None:
    from models.prophet_model import ProphetForecaster

    fleet = synthetic_fleet(days=6)
    surge_day = fleet["ts"].dt.normalize().unique()[3]
    surge = (fleet["ts"] >= surge_day + pd.Timedelta(hours=12)) & (
        fleet["ts"] < surge_day + pd.Timedelta(hours=14)
    )
    fleet.loc[surge, "requests"] *= 3
    calendar = pd.DataFrame(
        {
            "holiday": ["launch"],
            "ds": [surge_day + pd.Timedelta(hours=12)],
            "lower_window": [0],
            "upper_window": [0],
        }
    )
    model = ProphetForecaster(surge_calendar=calendar, n_jobs=2, clip_outliers=False).fit(fleet)
    assert set(model.models_) == {"checkout", "search"}
    assert "launch" in set(model.models_["checkout"].holidays["holiday"])
    forecast = model.predict(12)
    assert_valid_forecast(forecast, fleet, 12)
    roundtrip(model, tmp_path, 4)
    with pytest.raises(ValueError, match="surge_calendar"):
        ProphetForecaster(surge_calendar=pd.DataFrame({"ds": []}))


# --------------------------------------------------------------------------- Ensemble
def test_ensemble_weights_members_per_service_and_falls_back_for_new_services(
    tmp_path: Path,
) -> None:
    from models.ensemble import EnsembleForecaster

    fleet = synthetic_fleet(days=6)
    newcomer = fleet[fleet["service"] == "search"].tail(SEASON).assign(service="newcomer")
    history = pd.concat([fleet, newcomer], ignore_index=True)
    model = EnsembleForecaster(
        members={"naive": SeasonalNaiveForecaster, "lightgbm": small_lightgbm}, refit=False
    ).fit(history)
    assert model.short_services_ == ["newcomer"]
    weights = model.weights_.groupby(["service", "bucket"])["weight"].sum()
    np.testing.assert_allclose(weights, 1.0)
    assert set(model.weights_["bucket"]) == {0, 1, 2}  # 1 h, 1-6 h, 6-24 h of a daily season
    assert set(model.backtest_["member"]) == {"naive", "lightgbm"}
    forecast = model.predict(10)
    assert_valid_forecast(forecast, history, 10)
    newcomer_forecast = forecast[forecast["service"] == "newcomer"]["p50"].to_numpy()
    np.testing.assert_allclose(newcomer_forecast, newcomer["requests"].to_numpy()[:10])
    roundtrip(model, tmp_path, 5)


def test_ensemble_with_only_short_histories_is_seasonal_naive() -> None:
    from models.ensemble import EnsembleForecaster

    short = synthetic_fleet(days=1)
    model = EnsembleForecaster(members={"lightgbm": small_lightgbm}).fit(short)
    expected = SeasonalNaiveForecaster().fit(short).predict(6)
    pd.testing.assert_frame_equal(model.predict(6), expected)


def test_weights_from_errors_drop_bad_members() -> None:
    from models.ensemble import weights_from_errors

    errors = pd.DataFrame(
        {"service": ["a", "a", "a"], "member": ["x", "y", "z"], "mae": [1.0, 1.2, 5.0]}
    )
    weights = weights_from_errors(errors, max_ratio=1.3).set_index("member")["weight"]
    assert weights["z"] == 0.0
    assert weights["x"] == pytest.approx(1 / (1 + 1 / 1.44))


def test_fleet_weights_count_every_service_the_same_whatever_its_size() -> None:
    from models.ensemble import fleet_weights

    errors = pd.DataFrame(
        {
            "service": ["big", "big", "small", "small"],
            "member": ["x", "y", "x", "y"],
            "mae": [100.0, 300.0, 2.0, 1.0],  # x best on the big service, y on the small one
        }
    )
    weights = fleet_weights(errors, max_ratio=3.0).set_index("member")["weight"]
    # relative errors: x (1 + 2) / 2 = 1.5, y (3 + 1) / 2 = 2 -> weights 1/1.5**2 : 1/2**2
    assert weights["x"] == pytest.approx((1 / 2.25) / (1 / 2.25 + 1 / 4))
    assert fleet_weights(errors, max_ratio=1.3).set_index("member")["weight"]["y"] == 0.0


def test_ensemble_shrinkage_blends_service_weights_with_the_fleet() -> None:
    from models.ensemble import EnsembleForecaster

    backtest = pd.DataFrame(
        {
            "service": ["a", "a", "b", "b", "c", "c"],
            "member": ["naive", "lightgbm"] * 3,
            "bucket": 0,
            "mae": [1.0, 2.0, 3.0, 1.0, 4.0, 1.0],  # naive best on a only
        }
    )
    model = EnsembleForecaster(shrinkage=1.0, bucket_edges=())
    model.backtest_ = backtest
    fleet = model.weights_from_backtest().pivot(index="service", columns="member", values="weight")
    assert (fleet["lightgbm"] == 1.0).all()  # naive is 2.33x worse than the best on average
    model.shrinkage = 0.0
    own = model.weights_from_backtest().pivot(index="service", columns="member", values="weight")
    assert own.loc["a", "naive"] == 1.0 and own.loc["b", "lightgbm"] == 1.0
    model.shrinkage = 0.5
    half = model.weights_from_backtest().pivot(index="service", columns="member", values="weight")
    assert half.loc["a", "naive"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shrinkage"):
        EnsembleForecaster(shrinkage=1.5)


def constant_member(level: float, on_fit=None) -> type[SeasonalNaiveForecaster]:
    """An ensemble member forecasting ``level`` at the median (``+10 x (q - 0.5)`` elsewhere);
    ``on_fit`` is called at every fit."""

    class Constant(SeasonalNaiveForecaster):
        def fit(self, frame: pd.DataFrame, target: str = "requests") -> Constant:
            if on_fit is not None:
                on_fit()
            return super().fit(frame, target)

        def predict(self, horizon, quantiles=(0.5, 0.9), history=None):
            out = super().predict(horizon, quantiles, history)
            for q in quantiles:
                out[f"p{round(q * 100)}"] = level + 10 * (q - 0.5)
            return out

    return Constant


def test_ensemble_fixed_weights_skip_the_backtest_and_switch_members_per_bucket() -> None:
    from models.ensemble import EnsembleForecaster

    history = synthetic_fleet(days=4)
    calls: list[str] = []

    def spy(name: str, level: float):
        return constant_member(level, on_fit=lambda: calls.append(name))

    model = EnsembleForecaster(
        members={"short": spy("short", 1.0), "long": spy("long", 3.0), "unused": spy("x", 9.0)},
        weights={"short": (1.0, 0.5), "long": (0.0, 0.5)},
        bucket_edges=(1 / 24,),  # 2 steps of a 48-step season
    ).fit(history)
    assert sorted(calls) == ["long", "short"]  # fitted once each, no backtest, unused skipped
    assert model.backtest_.empty
    forecast = model.predict(4)
    p50 = forecast.groupby("service")["p50"].apply(list)
    assert p50["checkout"] == pytest.approx([1.0, 1.0, 2.0, 2.0])
    assert (forecast["p90"] - forecast["p50"]).to_numpy() == pytest.approx(np.full(8, 4.0))


def test_ensemble_with_fixed_weights_needs_no_room_for_backtest_folds() -> None:
    from models.ensemble import EnsembleForecaster

    history = synthetic_fleet(days=2)  # min_seasons, but too short for a backtest fold
    members = {"lightgbm": lambda: small_lightgbm(calibrate=False)}
    fixed = EnsembleForecaster(members=members, weights={"lightgbm": 1.0}).fit(history)
    assert fixed.short_services_ == [] and set(fixed.fitted_) == {"lightgbm"}
    backtested = EnsembleForecaster(members=members).fit(history)
    assert backtested.short_services_ == ["checkout", "search"]  # the naive fallback


def test_ensemble_interval_members_lend_their_spread_to_point_only_members() -> None:
    from models.ensemble import EnsembleForecaster

    history = synthetic_fleet(days=4)
    median_only = lambda: small_lightgbm(quantiles=(0.5,), calibrate=False)
    model = EnsembleForecaster(
        members={"point": median_only, "naive": SeasonalNaiveForecaster},
        weights={"point": 0.5, "naive": 0.5},
        interval_members=["naive"],
    ).fit(history)
    forecast = model.predict(SEASON)
    assert_valid_forecast(forecast, history, SEASON)
    naive = SeasonalNaiveForecaster().fit(history).predict(SEASON)
    point = model.fitted_["point"].predict(SEASON, (0.5,))
    np.testing.assert_allclose(forecast["p50"], 0.5 * naive["p50"] + 0.5 * point["p50"])
    np.testing.assert_allclose(
        forecast["p90"] - forecast["p50"], naive["p90"] - naive["p50"], atol=1e-9
    )
    # A member with weight 0 that only lends its spread.
    lender = EnsembleForecaster(
        members={"point": median_only, "naive": SeasonalNaiveForecaster},
        weights={"point": 1.0, "naive": 0.0},
        interval_members=["naive"],
    ).fit(history)
    lent = lender.predict(SEASON)
    np.testing.assert_allclose(lent["p50"], point["p50"])
    np.testing.assert_allclose(lent["p90"] - lent["p50"], naive["p90"] - naive["p50"], atol=1e-9)
    only_upper = model.predict(3, quantiles=(0.9,))
    np.testing.assert_allclose(only_upper["p90"], forecast["p90"].to_numpy()[[0, 1, 2, 48, 49, 50]])


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"weights": {"prophet": 1.0}}, "unknown members"),
        ({"weights": {"naive": -1.0}}, ">= 0"),
        ({"weights": {"naive": (1.0, 1.0)}}, "one per horizon"),
        ({"weights": {"naive": (1.0, 0.0, 1.0)}}, "sum to 0"),
        ({"interval_members": ["prophet"]}, "unknown members"),
        ({"interval_members": []}, "at least one"),
        ({"weights": {"naive": 1.0}, "interval_members": ["x"]}, "not in the fixed weights"),
    ],
)
def test_ensemble_rejects_bad_fixed_weights(options: dict, match: str) -> None:
    from models.ensemble import EnsembleForecaster

    with pytest.raises(ValueError, match=match):
        EnsembleForecaster(members={"x": SeasonalNaiveForecaster}, **options)


def test_catalog_maps_every_family() -> None:
    from models.catalog import MODEL_FAMILIES

    assert set(MODEL_FAMILIES) == {"naive", "prophet", "lightgbm", "ensemble", "holt_winters"}
    for name, family in MODEL_FAMILIES.items():
        assert issubclass(family, Forecaster) and family.name == name


def test_holt_winters_repeats_an_exact_double_seasonal_pattern() -> None:
    from models.holt_winters import double_seasonal_components

    day, week = 4, 28
    pattern = np.log1p(np.arange(week, dtype=float) + 5.0)  # weekly, not daily-periodic
    values = np.tile(pattern, (2, 3))
    values[1] += 1.0  # a second series, one log unit higher
    level, daily, weekly, errors = double_seasonal_components(values, day, 10, 0.3, 0.2, 0.2)
    forecast = level[:, None] + daily + weekly
    np.testing.assert_allclose(errors, 0.0, atol=1e-12)
    np.testing.assert_allclose(forecast[0], pattern[:10], atol=1e-12)
    np.testing.assert_allclose(forecast[1], pattern[:10] + 1.0, atol=1e-12)


def test_holt_winters_follows_the_weekly_cycle(tmp_path: Path) -> None:
    from models.holt_winters import DoubleSeasonalHoltWintersForecaster

    fleet = synthetic_fleet(days=22)
    cutoff = pd.Timestamp("2026-03-21", tz="UTC")  # history ends on a Friday, forecast: Saturday
    history, truth = fleet[fleet["ts"] < cutoff], fleet[fleet["ts"] >= cutoff]
    model = DoubleSeasonalHoltWintersForecaster().fit(history)
    forecast = model.predict(SEASON)
    assert_valid_forecast(forecast, history, SEASON)
    naive = SeasonalNaiveForecaster().fit(history).predict(SEASON)
    # Seasonal naive repeats a weekday on the Saturday; the weekly component knows better.
    assert mae_against_truth(forecast, truth) < 0.5 * mae_against_truth(naive, truth)
    assert (forecast["p90"] > forecast["p50"]).mean() > 0.9
    fresh = model.predict(3, history=fleet)
    assert fresh["ts"].min() == fleet["ts"].max() + STEP
    roundtrip(model, tmp_path, 6)


def test_holt_winters_components_add_up_to_the_forecast_and_explain_its_peaks() -> None:
    from models.explain import explain_peaks
    from models.holt_winters import DoubleSeasonalHoltWintersForecaster

    fleet = synthetic_fleet(days=22)
    one = fleet[fleet["service"] == fleet["service"].iloc[0]]
    model = DoubleSeasonalHoltWintersForecaster().fit(one)
    forecast = model.predict(SEASON, quantiles=(0.5,))
    parts = model.components(SEASON)
    assert list(parts["ts"]) == list(forecast["ts"])
    np.testing.assert_allclose(
        np.expm1(parts["level"] + parts["daily"] + parts["weekly"]), forecast["p50"], rtol=1e-9
    )
    schedule = forecast.assign(replicas=1, forecast_p90=forecast["p50"])
    explained = explain_peaks(model, one, schedule, n_peaks=2)
    assert explained["family"] == "holt_winters" and len(explained["peaks"]) == 2
    for peak in explained["peaks"]:
        assert [d["input"] for d in peak["drivers"]] == ["daily pattern", "weekly pattern"]
    # The peaks are daytime steps: the daily pattern lifts them above the level.
    assert all(peak["drivers"][0]["effect_pct"] > 0 for peak in explained["peaks"])


def test_holt_winters_uses_seasonal_naive_below_two_weeks_and_caps_growth() -> None:
    from models.holt_winters import DoubleSeasonalHoltWintersForecaster

    short = synthetic_fleet(days=10)
    forecast = DoubleSeasonalHoltWintersForecaster().fit(short).predict(5, quantiles=(0.5,))
    naive = SeasonalNaiveForecaster().fit(short).predict(5, quantiles=(0.5,))
    np.testing.assert_allclose(forecast["p50"], naive["p50"])
    ts = pd.date_range("2026-03-02", periods=15 * SEASON, freq=STEP, tz="UTC")
    surge = pd.DataFrame({"service": "s", "ts": ts, "requests": np.exp(np.arange(ts.size) / 20)})
    capped = DoubleSeasonalHoltWintersForecaster(alpha=1.0, max_growth=2.0).fit(surge)
    assert capped.predict(SEASON)["p90"].max() <= 2.0 * surge["requests"].max() * (1 + 1e-9)


@pytest.mark.parametrize(
    ("options", "match"),
    [({"alpha": 1.5}, "alpha"), ({"gamma_week": -0.1}, "gamma_week"), ({"max_growth": 0}, "max")],
)
def test_holt_winters_rejects_bad_settings(options: dict, match: str) -> None:
    from models.holt_winters import DoubleSeasonalHoltWintersForecaster

    with pytest.raises(ValueError, match=match):
        DoubleSeasonalHoltWintersForecaster(**options)


def test_weighted_median_matches_the_median_and_splits_ties_at_the_midpoint() -> None:
    from models.ensemble import weighted_median

    rng = np.random.default_rng(5)
    values = rng.normal(size=(20, 5))
    ones = np.ones_like(values)
    np.testing.assert_allclose(weighted_median(values, ones), np.median(values, axis=1))
    np.testing.assert_allclose(
        weighted_median(values[:, :4], ones[:, :4]), np.median(values[:, :4], axis=1)
    )
    row = np.array([[1.0, 2.0, 10.0, np.nan]])
    assert weighted_median(row, np.array([[1.0, 1.0, 3.0, 5.0]]))[0] == 10.0  # NaN: no weight
    assert weighted_median(row, np.array([[1.0, 1.0, 2.0, 0.0]]))[0] == 6.0  # 2 and 10 tie
    assert weighted_median(row, np.array([[0.0, 1.0, 0.0, 1.0]]))[0] == 2.0  # 0-weight ignored


def test_ensemble_median_combination_keeps_an_outlying_member_from_dominating() -> None:
    from models.ensemble import EnsembleForecaster

    history = synthetic_fleet(days=4)
    members = {"a": constant_member(1.0), "b": constant_member(2.0), "far": constant_member(100.0)}
    options = {"members": members, "weights": dict.fromkeys(members, 1.0), "bucket_edges": ()}
    median = EnsembleForecaster(**options, combine="median").fit(history).predict(4)
    mean = EnsembleForecaster(**options).fit(history).predict(4)
    np.testing.assert_allclose(median["p50"], 2.0)
    np.testing.assert_allclose(median["p90"], 6.0)  # each quantile is a median of members'
    np.testing.assert_allclose(mean["p50"], 103.0 / 3)
    spread = EnsembleForecaster(**options, combine="median", interval_members=["far"])
    forecast = spread.fit(history).predict(4)
    np.testing.assert_allclose(forecast["p50"], 2.0)
    np.testing.assert_allclose(forecast["p90"], 6.0)  # the median plus far's spread (4)
    with pytest.raises(ValueError, match="combine"):
        EnsembleForecaster(**options, combine="mode")


def test_robust_clip_keeps_a_spike_that_recurs_every_season() -> None:
    rng = np.random.default_rng(3)
    values = 10.0 + rng.normal(0, 0.2, 6 * SEASON)
    daily_job = np.arange(6 * SEASON) % SEASON == 30
    values[daily_job] = 60.0  # a daily job: the pattern, not an outlier
    values[2 * SEASON + 10] = 80.0  # a one-off spike
    cleaned = robust_clip(values, SEASON)
    np.testing.assert_allclose(cleaned[daily_job], 60.0)
    assert cleaned[2 * SEASON + 10] < 12.0


@pytest.mark.parametrize("params_file", ["params.yaml", "benchmarks/profiles/m4.yaml"])
def test_catalog_builds_and_fits_every_family_a_params_file_configures(params_file: str) -> None:
    from core.params import section
    from core.settings import REPO_ROOT
    from models.catalog import family_factories

    history = synthetic_fleet(days=6)
    factories = family_factories(section(REPO_ROOT / params_file, "training"))
    assert {"lightgbm", "ensemble", "naive"} <= set(factories)
    for family, factory in factories.items():
        if family == "prophet":  # fitted in its own test; slow for a catalog check
            continue
        model = factory()
        assert model.name == family
        forecast = model.fit(history).predict(SEASON)
        assert_valid_forecast(forecast, history, SEASON)


def test_catalog_resolves_durations_to_steps_of_the_data() -> None:
    from models.catalog import forecaster_factory

    model = forecaster_factory("lightgbm", {"max_horizon": "2h", "n_estimators": 5})()
    model.fit(synthetic_fleet(days=3))
    assert model.horizon_ == 4  # two hours of 30-minute steps


@pytest.mark.parametrize(
    ("family", "params", "match"),
    [
        ("xgboost", {}, "unknown model family"),
        ("lightgbm", {"n_trees": 3}, "takes no setting"),
        ("lightgbm", {"max_history": "a fortnight"}, "not a duration"),
        ("ensemble", {"members": {"inner": "ensemble"}}, "cannot be a member"),
        ("ensemble", {"members": {"m": {"n_estimators": 3}}}, "need a family name"),
        ("ensemble", {"guard_max_ratio": 0}, "guard_max_ratio"),
    ],
)
def test_catalog_refuses_bad_settings_naming_them(family: str, params: dict, match: str) -> None:
    from models.catalog import forecaster_factory

    with pytest.raises(ValueError, match=match):
        forecaster_factory(family, params)


def test_ensemble_guard_falls_back_to_seasonal_naive_where_the_combination_is_worse() -> None:
    from models.ensemble import EnsembleForecaster

    history = synthetic_fleet(days=6)
    # A deliberately bad model: a constant at the level of the big service only, so it is far
    # off for the small one and close to the big one's level (still worse than naive there).
    bad = EnsembleForecaster(
        members={"constant": constant_member(100.0)},
        weights={"constant": 1.0},
        bucket_edges=(),
        guard_windows=1,
    ).fit(history)
    assert bad.guarded_services_ == ["checkout", "search"]
    assert bad.guard_ratios_["search"] > 10
    naive = SeasonalNaiveForecaster().fit(history).predict(SEASON)
    forecast = bad.predict(SEASON)
    pd.testing.assert_frame_equal(forecast, naive)
    fresh = history[history["ts"] < history["ts"].max() - pd.Timedelta(hours=5)]
    pd.testing.assert_frame_equal(
        bad.predict(SEASON, history=fresh),
        SeasonalNaiveForecaster().fit(history).predict(SEASON, history=fresh),
    )
    assert bad.leading_member("search") is None
    # Without the guard the same ensemble forecasts the constant.
    unguarded = EnsembleForecaster(
        members={"constant": constant_member(100.0)}, weights={"constant": 1.0}, bucket_edges=()
    ).fit(history)
    assert (unguarded.predict(SEASON)["p50"] == 100.0).all()


def test_ensemble_guard_keeps_a_combination_that_beats_seasonal_naive() -> None:
    from models.ensemble import EnsembleForecaster

    rng = np.random.default_rng(5)
    ts = pd.date_range("2026-03-02", periods=8 * SEASON, freq=STEP, tz="UTC")
    daily = 100.0 * (1.0 + 0.5 * np.sin(np.arange(ts.size) * 2 * np.pi / SEASON))
    history = pd.DataFrame(  # a daily cycle under noise: yesterday's noise is naive's error
        {"service": "checkout", "ts": ts, "requests": daily + rng.normal(0, 10.0, ts.size)}
    )
    good = EnsembleForecaster(
        members={"lightgbm": lambda: small_lightgbm(anchor="mean")},
        weights={"lightgbm": 1.0},
        bucket_edges=(),
        guard_windows=1,
    ).fit(history)
    assert good.guarded_services_ == []
    assert all(ratio < 1.0 for ratio in good.guard_ratios_.values())
    assert good.leading_member("checkout")[0] == "lightgbm"
    forecast = good.predict(SEASON)
    assert_valid_forecast(forecast, history, SEASON)

    from models.explain import explain_peaks

    schedule = forecast.assign(replicas=1, forecast_p90=forecast["p90"])
    explained = explain_peaks(good, history, schedule, n_peaks=2)
    assert explained["family"] == "ensemble" and "'lightgbm'" in explained["basis"]
    for peak in explained["peaks"]:  # the member's SHAP drivers, not "same time yesterday +0 %"
        assert len(peak["drivers"]) == 3
        assert any(abs(d["effect_pct"]) > 0 for d in peak["drivers"])


def test_prepare_history_asked_again_for_the_same_frame_gives_the_same_result() -> None:
    from models.features import _prepare_history, prepare_history

    step = pd.Timedelta(minutes=5)
    stamps = pd.date_range("2026-11-01", periods=50, freq="5min", tz="UTC")
    history = pd.DataFrame({"service": "api", "ts": stamps.delete([7, 8]), "requests": 1.0})
    history["requests"] = np.arange(len(history), dtype=float)
    first = prepare_history(history, "requests", step)
    again = prepare_history(history, "requests", step)
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(first, _prepare_history(history, "requests", step))
    again.loc[0, "y"] = -1.0  # the caller's copy: the kept result is untouched
    pd.testing.assert_frame_equal(first, prepare_history(history, "requests", step))
    history.loc[3, "requests"] = 1000.0  # changed in place: prepared anew
    changed = prepare_history(history, "requests", step)
    assert changed["y"].max() == 1000.0
    pd.testing.assert_frame_equal(changed, _prepare_history(history, "requests", step))


def test_an_ensemble_fitted_on_too_short_a_history_forecasts_seasonal_naive() -> None:
    from models.catalog import forecaster_factory
    from models.naive import SeasonalNaiveForecaster

    stamps = pd.date_range("2026-11-01", periods=288, freq="5min", tz="UTC")
    history = pd.DataFrame(
        {"service": "api", "ts": stamps, "requests": 100.0 + np.arange(288) % 12}
    )
    ensemble = forecaster_factory(
        "ensemble",
        {
            "members": {"naive": "naive", "lightgbm": {"family": "lightgbm"}},
            "guard_windows": 1,
            "guard_horizon": "1D",
        },
        (0.5, 0.9),
    )().fit(history)
    forecast = ensemble.predict(12, (0.5, 0.9))
    naive = SeasonalNaiveForecaster().fit(history).predict(12, (0.5, 0.9))
    assert len(forecast) == 12
    assert np.allclose(forecast["p50"], naive["p50"])


@pytest.mark.parametrize("family", ["lightgbm", "ensemble", "naive", "holt_winters"])
def test_a_services_forecast_depends_on_its_own_history_only(family: str) -> None:
    """What lets publication forecast a shard's services in one call per shared model."""
    from core.params import section
    from core.settings import REPO_ROOT
    from models.catalog import forecaster_factory

    shipped = section(REPO_ROOT / "params.yaml", "training")["model_params"].get(family, {})
    fleet = synthetic_fleet(days=16)
    model = forecaster_factory(family, shipped, (0.5, 0.9))().fit(fleet)
    fresh = synthetic_fleet(days=18, seed=3)
    together = model.predict(SEASON, (0.5, 0.9), history=fresh)
    for service, own in fresh.groupby("service"):
        alone = model.predict(SEASON, (0.5, 0.9), history=own)
        mine = together[together["service"] == service].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, alone.reset_index(drop=True))


@pytest.mark.parametrize("family", ["lightgbm", "ensemble", "holt_winters"])
def test_peak_drivers_of_many_services_equal_each_services_own(family: str) -> None:
    from core.params import section
    from core.settings import REPO_ROOT
    from models.catalog import forecaster_factory
    from models.explain import peak_drivers

    shipped = section(REPO_ROOT / "params.yaml", "training")["model_params"].get(family, {})
    model = forecaster_factory(family, shipped, (0.5, 0.9))().fit(synthetic_fleet(days=16))
    fresh = synthetic_fleet(days=18, seed=3)
    forecast = model.predict(SEASON, (0.5, 0.9), history=fresh)
    together = peak_drivers(model, fresh, forecast)
    assert set(together) == set(fresh["service"])
    for service, own in fresh.groupby("service"):
        alone = peak_drivers(model, own, forecast[forecast["service"] == service])
        assert together[service] == alone[service]
        assert len(alone[service]["peaks"]) == 3 and alone[service]["peaks"][0]["effects"]


def test_an_explained_peak_the_schedule_lacks_is_left_out_and_a_missing_history_named() -> None:
    from models.catalog import forecaster_factory
    from models.explain import explanation_in_words, peak_drivers

    fleet = synthetic_fleet(days=16)
    model = forecaster_factory("lightgbm", {"n_estimators": 10}, (0.5, 0.9))().fit(fleet)
    one = fleet[fleet["service"] == fleet["service"].iloc[0]]
    forecast = model.predict(SEASON, (0.5, 0.9), history=one)
    service = str(one["service"].iloc[0])
    drivers = peak_drivers(model, one, forecast)[service]
    schedule = forecast.assign(replicas=2, forecast_p90=forecast["p90"])
    kept = schedule[schedule["ts"] != pd.Timestamp(drivers["peaks"][0]["ts"])]
    words = explanation_in_words(drivers, kept)
    assert len(words["peaks"]) == len(drivers["peaks"]) - 1
    with pytest.raises(ValueError, match="no history to explain"):
        peak_drivers(model, one.iloc[0:0], forecast)
