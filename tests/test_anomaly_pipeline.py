"""The anomaly stage with the real detector, MLflow registry and serving store."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core.schema import REQUESTS, SERVICE, TS
from models.anomaly import score_series
from models.registry import configure_mlflow, version_by_alias
from pipelines.anomalies import (
    ANOMALY_EXPERIMENT,
    ANOMALY_MODEL,
    AnomalyConfig,
    backtest_detector,
    backtest_sample,
    inject_anomalies,
    score_anomalies,
    train_anomaly_model,
)
from pipelines.features import apply_features, model_inputs, update_offline_features
from pipelines.telemetry import write_telemetry
from pipelines.training import _drop_anomalies, _split_anomalies, flagged_points
from serving.store import ScheduleStore

pytestmark = pytest.mark.slow


@pytest.fixture
def fleet_with_spike(settings, make_fleet):
    fleet = make_fleet(services=2, days=8, step_minutes=5)
    spike_at = fleet[TS].max() - pd.Timedelta(hours=3)
    hit = (
        (fleet[SERVICE] == "checkout")
        & (fleet[TS] >= spike_at)
        & (fleet[TS] < spike_at + pd.Timedelta(minutes=15))
    )
    fleet.loc[hit, REQUESTS] *= 6
    write_telemetry(settings, fleet)
    update_offline_features(settings)  # the detector reads the forecasters' inputs from Feast
    apply_features(settings)
    return fleet, spike_at


def test_injection_puts_three_separate_events_into_a_copy(make_fleet) -> None:
    rows = make_fleet(services=1, days=1, step_minutes=5)
    injected, onsets = inject_anomalies(rows)
    assert len(onsets) == 3 and onsets == sorted(onsets) and onsets[2] - onsets[0] > 40
    assert (injected[REQUESTS].to_numpy()[onsets[2] : onsets[2] + 12] == 0).all()
    assert rows[REQUESTS].iloc[onsets[0]] * 4 == pytest.approx(injected[REQUESTS].iloc[onsets[0]])
    with pytest.raises(ValueError, match="at least 60 rows"):
        inject_anomalies(rows.head(10))


def test_detector_is_trained_registered_and_scores_new_telemetry(
    settings, fleet_with_spike
) -> None:
    fleet, spike_at = fleet_with_spike
    summary = json.loads(
        train_anomaly_model(settings, as_of=spike_at - pd.Timedelta(hours=1)).read_text()
    )
    assert summary["promoted"] is True and summary["recall"] >= 1 / 2
    configure_mlflow(settings, ANOMALY_EXPERIMENT)
    assert version_by_alias(ANOMALY_MODEL).label == summary["version"]

    again = json.loads(
        train_anomaly_model(settings, as_of=spike_at - pd.Timedelta(hours=1)).read_text()
    )
    assert again["promoted"] is False  # same detector, same data: no better than the champion

    start, end = spike_at - pd.Timedelta(minutes=30), spike_at + pd.Timedelta(hours=1)
    scores = pd.read_parquet(score_anomalies(settings, start, end))
    # The first scoring after promotion catches up on the last day (anomaly.backfill_hours).
    assert scores.groupby(SERVICE)[TS].min().eq(end - pd.Timedelta(hours=24)).all()
    later = pd.read_parquet(score_anomalies(settings, end, end + pd.Timedelta(minutes=5)))
    assert later.groupby(SERVICE)[TS].agg(list).to_dict() == {  # nothing left to catch up on
        "checkout": [end],
        "search": [end],
    }
    flagged_anywhere = int(scores["is_anomaly"].sum()) + int(later["is_anomaly"].sum())
    scores = scores[scores[TS] >= start]
    flagged = scores[scores["is_anomaly"]]
    assert set(flagged[SERVICE]) == {"checkout"}
    assert flagged[TS].min() == spike_at
    stored = ScheduleStore(settings.schedule_db).anomalies("checkout", start, end)
    assert len(stored) == 18 and any(a.is_anomaly for a in stored)

    history = fleet[[SERVICE, TS, REQUESTS]]
    kept = _drop_anomalies(settings, history)
    assert len(kept) == len(history) - flagged_anywhere
    assert not kept[(kept[SERVICE] == "checkout") & (kept[TS] == spike_at)].shape[0]

    # The forecast plot marks the dropped points at the values they had (the spike).
    _, dropped = _split_anomalies(settings, history)
    last_fold = history[history[TS] >= spike_at - pd.Timedelta(hours=1)].assign(fold=2)
    backtest = pd.concat([history.assign(fold=1), last_fold]).rename(columns={REQUESTS: "y"})
    points = flagged_points(dropped, "checkout", backtest)
    at_spike = history[(history[SERVICE] == "checkout") & (history[TS] == spike_at)]
    assert spike_at in set(points[TS])
    assert points.loc[points[TS] == spike_at, "y"].item() == at_spike[REQUESTS].item()
    assert points[TS].min() >= last_fold[TS].min()  # only the plotted (last) fold


def test_interval_by_interval_scoring_keeps_each_context_and_matches_scoring_at_once(
    settings, fleet_with_spike
) -> None:
    fleet, spike_at = fleet_with_spike
    train_anomaly_model(settings, as_of=spike_at - pd.Timedelta(hours=1))
    step = pd.Timedelta(minutes=5)
    end = fleet[TS].max() + step
    first = end - pd.Timedelta(hours=2)
    score_anomalies(settings, first - step, first)  # catches up on the day before `first`
    for k in range(24):
        score_anomalies(settings, first + k * step, first + (k + 1) * step)
    state = settings.artifacts_dir / "anomaly" / "state"
    assert sorted(p.name for p in state.glob("v*/*.parquet")) == [
        "checkout.parquet",
        "search.parquet",
    ]
    inputs = model_inputs(settings, ["checkout"], fleet[TS].min(), end)
    at_once = pd.Series(score_series(inputs[REQUESTS].to_numpy()), index=inputs[TS])
    stored = ScheduleStore(settings.schedule_db).anomalies("checkout", first, end)
    assert len(stored) == 24
    np.testing.assert_allclose(
        [a.score for a in stored], at_once[[pd.Timestamp(a.ts) for a in stored]].to_numpy()
    )


def test_the_backtest_sample_is_bounded_and_stable_as_the_fleet_grows() -> None:
    fleet = [f"svc-{i:04d}" for i in range(400)]
    sample = backtest_sample(fleet, 50)
    assert len(sample) == 50 and set(sample) <= set(fleet) and sample == sorted(sample)
    assert backtest_sample(list(reversed(fleet)), 50) == sample
    grown = backtest_sample([*fleet, *(f"new-{i}" for i in range(40))], 50)
    assert len(set(grown) & set(sample)) >= 50 - sum(not s.startswith("svc") for s in grown)
    assert backtest_sample(fleet[:7], 50) == fleet[:7]


def test_backtest_counts_misses_and_false_alarms(settings, make_fleet) -> None:
    from models.anomaly import AnomalyDetector

    history = make_fleet(services=1, days=6, step_minutes=5)[[SERVICE, TS, REQUESTS]]
    config = AnomalyConfig.from_params(settings)
    blind = backtest_detector(AnomalyDetector(threshold=1.01), history, config)
    assert blind["recall"] == 0 and blind["false_alarms_per_day"] == 0 and blind["error"] == 1
    jumpy = backtest_detector(AnomalyDetector(threshold=0.0), history, config)
    assert jumpy["recall"] == 1 and jumpy["false_alarms_per_day"] > 100
    assert jumpy["error"] > blind["error"]
