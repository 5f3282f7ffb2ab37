"""The online anomaly detector on seeded synthetic series with injected anomalies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.schema import SERVICE, TS, TS_DTYPE
from models.anomaly import (
    DEFAULT_THRESHOLD,
    IS_ANOMALY,
    SCORE,
    AnomalyDetector,
    DetectorSettings,
    score_series,
)

N_ROWS = 3000
SPIKE, SHIFT, DROPOUT = 1500, 2000, 2600


def seasonal_series(seed: int = 7, n: int = N_ROWS) -> np.ndarray:
    """Daily cycle at 5-minute steps plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 100 + 30 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 3, n)


def with_anomalies(values: np.ndarray) -> np.ndarray:
    out = values.copy()
    out[SPIKE] += 60  # one-point spike
    out[SHIFT:] += 40  # lasting level shift
    out[DROPOUT : DROPOUT + 12] = 0.0  # an hour of zeros
    return out


def timestamps(n: int = N_ROWS) -> pd.DatetimeIndex:
    return pd.date_range("2024-01-01", periods=n, freq="5min", tz="UTC")


@pytest.fixture(scope="module")
def anomalous_scores() -> np.ndarray:
    return score_series(with_anomalies(seasonal_series()))


@pytest.mark.parametrize("onset", [SPIKE, SHIFT, DROPOUT], ids=["spike", "level_shift", "dropout"])
def test_injected_anomaly_is_flagged_at_onset(anomalous_scores: np.ndarray, onset: int) -> None:
    assert anomalous_scores[onset : onset + 3].max() >= DEFAULT_THRESHOLD
    assert anomalous_scores[onset - 20 : onset].max() < DEFAULT_THRESHOLD


def test_lasting_event_is_reported_near_its_onset_only(anomalous_scores: np.ndarray) -> None:
    # Without refractory damping the shifted level is flagged at over a hundred rows.
    flagged = np.flatnonzero(anomalous_scores[SHIFT : SHIFT + 400] >= DEFAULT_THRESHOLD)
    assert flagged[0] == 0
    assert len(flagged) <= 6
    assert flagged.max() < 100


def test_normal_rows_are_not_flagged(anomalous_scores: np.ndarray) -> None:
    normal = np.ones(N_ROWS, dtype=bool)
    normal[:300] = False  # learning period
    for onset in (SPIKE, SHIFT, DROPOUT):
        normal[onset - 5 : onset + 300] = False
    assert (anomalous_scores[normal] >= DEFAULT_THRESHOLD).sum() == 0
    clean = score_series(seasonal_series(seed=11))
    assert (clean[300:] >= DEFAULT_THRESHOLD).mean() < 0.002


def trending_series(seed: int, days: int = 12) -> np.ndarray:
    """Traffic growing 0.4 % a day with a morning and an evening peak, 3 % noise, 5-minute steps."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * 288)
    hours = (t % 288) / 12
    shape = (
        0.3
        + np.exp(-0.5 * ((hours - 11.5) / 2.5) ** 2)
        + 0.6 * np.exp(-0.5 * ((hours - 19.5) / 2.0) ** 2)
    )
    return 100 * 1.004 ** (t / 288) * shape * rng.lognormal(0.0, 0.03, len(t))


@pytest.mark.parametrize("seed", [3, 4])
def test_slight_new_high_from_trend_growth_is_not_an_anomaly(seed: int) -> None:
    values = trending_series(seed)
    peak = len(values) - 288 + int(np.argmax(values[-288:]))  # the last day's peak
    highs = np.maximum.accumulate(values)
    natural = np.flatnonzero(values[1:] > highs[:-1]) + 1
    natural = natural[natural > 288]  # the running maximum grows with the trend
    assert len(natural) >= 3
    assert score_series(values)[natural].max() < DEFAULT_THRESHOLD

    slightly = values[: peak + 1].copy()
    slightly[peak] = 1.02 * values[:peak].max()  # 2 % above any earlier value
    assert score_series(slightly)[peak] < DEFAULT_THRESHOLD
    surge = values[: peak + 1].copy()
    surge[peak] = 1.5 * values[:peak].max()  # far outside the range: still an anomaly
    assert score_series(surge)[peak] >= DEFAULT_THRESHOLD


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_larger_event_soon_after_an_event_is_not_hidden(seed: int) -> None:
    values = seasonal_series(seed=seed)
    dip = 2000
    values[dip : dip + 12] *= 0.5  # an hour at half the traffic
    values[dip + 24 : dip + 27] *= 6  # a 6x spike an hour after the dip began
    scores = score_series(values)
    assert scores[dip : dip + 3].max() >= DEFAULT_THRESHOLD
    assert scores[dip + 3 : dip + 24].max() < DEFAULT_THRESHOLD  # the dip is reported once
    assert scores[dip + 24] >= DEFAULT_THRESHOLD


def test_scores_are_in_unit_interval_and_zero_during_warmup(anomalous_scores: np.ndarray) -> None:
    assert anomalous_scores.min() >= 0.0 and anomalous_scores.max() <= 1.0
    assert np.all(anomalous_scores[: DetectorSettings().warmup] == 0.0)


@pytest.mark.parametrize("cut", [SPIKE + 1, SHIFT + 3, DROPOUT + 5, N_ROWS - 1])
def test_scores_do_not_change_when_future_points_are_appended(
    anomalous_scores: np.ndarray, cut: int
) -> None:
    values = with_anomalies(seasonal_series())
    prefix = score_series(values[:cut])
    np.testing.assert_array_equal(prefix, anomalous_scores[:cut])


@pytest.mark.parametrize("first_row", [0, SPIKE, SHIFT + 3, N_ROWS - 1])
def test_scoring_from_a_row_on_gives_the_tail_of_the_whole_series_scores(
    anomalous_scores: np.ndarray, first_row: int
) -> None:
    values = with_anomalies(seasonal_series())
    tail = score_series(values, first_row=first_row)
    np.testing.assert_array_equal(tail, anomalous_scores[first_row:])


@pytest.mark.parametrize("first_row", [SPIKE, SHIFT + 3, N_ROWS - 1])
def test_a_tail_past_the_ranking_history_equals_the_whole_series_scores(first_row: int) -> None:
    from models.anomaly import DetectorSettings

    short = DetectorSettings(history=400, search_rows=600, refractory=50)
    values = with_anomalies(seasonal_series())
    whole = score_series(values, short)
    np.testing.assert_array_equal(score_series(values, short, first_row), whole[first_row:])


def test_a_kept_context_continues_only_the_history_it_was_built_from() -> None:
    values = seasonal_series(seed=3)[:600]
    rows = telemetry({"api": values})
    detector = AnomalyDetector().fit(rows.iloc[100:500])
    detector.score(rows.iloc[500:550])
    past = rows.head(550)[[TS, "requests"]]
    assert detector.context_continues("api", past.tail(100))
    assert not detector.context_continues("api", past.head(549).tail(100))  # ends elsewhere
    assert not detector.context_continues("api", past)  # reaches further back than it
    changed = past.tail(100).copy()
    changed.iloc[10, 1] += 1.0
    assert not detector.context_continues("api", changed)  # a stored value changed
    assert not detector.context_continues("web", past.tail(100))  # no context


def test_missing_values_are_carried_forward() -> None:
    values = with_anomalies(seasonal_series())
    values[1000:1005] = np.nan
    scores = score_series(values)
    assert np.all(np.isfinite(scores))
    assert scores[998:1010].max() < DEFAULT_THRESHOLD  # a gap repeating the last value is not news


def test_invalid_series_is_rejected() -> None:
    with pytest.raises(ValueError, match="no finite values"):
        score_series(np.full(50, np.nan))


def test_settings_from_a_mapping_name_the_source_and_unknown_keys() -> None:
    assert DetectorSettings.from_mapping({"refractory": 50}, "p.yaml").refractory == 50
    with pytest.raises(ValueError, match=r"p.yaml: unknown detector setting\(s\) \['bogus'\]"):
        DetectorSettings.from_mapping({"bogus": 1}, "p.yaml")
    with pytest.raises(ValueError, match="p.yaml: .*rank_normalisation"):
        DetectorSettings.from_mapping({"rank_normalisation": "global"}, "p.yaml")


def telemetry(values_by_service: dict[str, np.ndarray], start: int = 0) -> pd.DataFrame:
    frames = []
    for service, values in values_by_service.items():
        ts = timestamps(start + len(values))[start:]
        frames.append(pd.DataFrame({SERVICE: service, TS: ts, "requests": values}))
    return pd.concat(frames, ignore_index=True)


def test_detector_scores_new_batches_online_per_service(tmp_path) -> None:
    api = with_anomalies(seasonal_series(seed=1))
    web = seasonal_series(seed=2)
    split = 1800
    detector = AnomalyDetector().fit(telemetry({"api": api[:split], "web": web[:split]}))
    fresh = telemetry({"api": api[split:], "web": web[split:]}, start=split)

    detector.save(tmp_path / "model")
    restored = AnomalyDetector.load(tmp_path / "model")

    result = detector.score(fresh)
    assert list(result.columns) == [SERVICE, TS, SCORE, IS_ANOMALY]
    assert str(result[TS].dtype) == TS_DTYPE
    assert len(result) == len(fresh)
    api_scores = result.loc[result[SERVICE] == "api", SCORE].to_numpy()
    np.testing.assert_allclose(api_scores, score_series(api)[split:])
    flagged = result.loc[result[IS_ANOMALY] & (result[SERVICE] == "api"), TS]
    assert timestamps()[SHIFT] in set(flagged)
    assert not result.loc[result[SERVICE] == "web", IS_ANOMALY].any()

    assert restored.threshold == detector.threshold and restored.settings == detector.settings
    np.testing.assert_allclose(restored.score(fresh)[SCORE].to_numpy(), result[SCORE].to_numpy())


def test_detector_rejects_bad_frames() -> None:
    detector = AnomalyDetector()
    with pytest.raises(ValueError, match="missing column"):
        detector.fit(pd.DataFrame({SERVICE: ["a"], TS: [pd.Timestamp("2024-01-01", tz="UTC")]}))
    broken = telemetry({"api": seasonal_series(n=200), "db": np.full(200, np.nan)})
    with pytest.raises(ValueError, match="service 'db', column 'requests'"):
        detector.score(broken)
    twice = pd.concat([telemetry({"api": seasonal_series(n=20)})] * 2, ignore_index=True)
    with pytest.raises(ValueError, match="duplicate .* service 'api'"):
        detector.fit(twice)
