"""NAB scoring on hand-computed cases (values worked out from NAB's documented formulas)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import nab_scoring as nab

ONE_TO_ONE = nab.CostProfile("unit", tp_weight=1.0, fp_weight=1.0, fn_weight=1.0)
STANDARD = nab.NAB_PROFILES["standard"]


def stamps(n: int) -> pd.Series:
    return pd.Series(pd.date_range("2024-01-01", periods=n, freq="5min"))


def sweep_with_window(
    n: int, left: int, right: int, probation_percent: float = 0.0
) -> nab.FileSweep:
    ts = stamps(n)
    return nab.sweep_file("cat/file.csv", ts, [(ts[left], ts[right])], probation_percent)


def raw(
    sweep: nab.FileSweep, detections: list[int], profile: nab.CostProfile = ONE_TO_ONE
) -> float:
    scores = np.zeros(sweep.n_rows)
    scores[detections] = 1.0
    return float(nab.score_file(sweep, scores, profile, 0.5).scores[0])


def test_scaled_sigmoid_landmarks() -> None:
    # 2*sigmoid(5)-1 at the left edge, 0 at the right edge, -1 well after the window.
    assert float(nab.scaled_sigmoid(-1.0)) == pytest.approx(0.9866142981514303)
    assert float(nab.scaled_sigmoid(-0.5)) == pytest.approx(0.8482836399575129)
    assert float(nab.scaled_sigmoid(0.0)) == pytest.approx(0.0)
    assert float(nab.scaled_sigmoid(1.0)) == pytest.approx(-0.9866142981514303)
    assert float(nab.scaled_sigmoid(3.0)) == pytest.approx(2 / (1 + math.exp(15)) - 1)
    assert float(nab.scaled_sigmoid(3.0001)) == -1.0


@pytest.mark.parametrize(("rows", "expected"), [(4032, 604), (10320, 750), (1243, 186), (10, 1)])
def test_probation_length(rows: int, expected: int) -> None:
    assert nab.probation_length(rows) == expected


def test_detection_at_left_edge_earns_full_tp_weight() -> None:
    sweep = sweep_with_window(10, 4, 5)
    assert raw(sweep, [4]) == pytest.approx(1.0)


def test_later_detection_in_window_earns_less() -> None:
    # Window rows 4..5 (width 2): row 5 sits at -(5 - 5 + 1) / 2 = -0.5.
    sweep = sweep_with_window(10, 4, 5)
    assert raw(sweep, [5]) == pytest.approx(0.8482836399575129 / 0.9866142981514303)


def test_only_first_detection_in_window_counts_and_extra_ones_are_free() -> None:
    sweep = sweep_with_window(20, 5, 9)
    assert raw(sweep, [6, 7, 8, 9]) == pytest.approx(raw(sweep, [6]))
    # position of row 6: -(9 - 6 + 1) / 5 = -0.8
    assert raw(sweep, [6]) == pytest.approx(float(nab.scaled_sigmoid(-0.8)) / nab.MAX_TP)


def test_false_positive_before_any_window_costs_full_fp_weight() -> None:
    sweep = sweep_with_window(20, 10, 12)
    # FP at row 2 (no preceding window): -fp; the window is missed: -fn.
    assert raw(sweep, [2], STANDARD) == pytest.approx(-0.11 - 1.0)


def test_false_positive_after_window_is_weighted_by_distance() -> None:
    # Window rows 4..5 (width 2); FP at row 6 is (6 - 5) / (2 - 1) = 1 window past the end,
    # FP at row 7 is 2 past; the window itself is missed (-1).
    sweep = sweep_with_window(10, 4, 5)
    assert raw(sweep, [6]) == pytest.approx(-0.9866142981514303 - 1.0)
    assert raw(sweep, [7]) == pytest.approx((2 / (1 + math.exp(10)) - 1) - 1.0)
    fp_weighted = raw(sweep, [6], STANDARD) + 1.0
    assert fp_weighted == pytest.approx(-0.9866142981514303 * 0.11)


def test_missed_windows_cost_fn_weight_per_window() -> None:
    ts = stamps(30)
    sweep = nab.sweep_file("cat/f.csv", ts, [(ts[5], ts[7]), (ts[15], ts[17])], 0.0)
    low_fn = nab.NAB_PROFILES["reward_low_FN_rate"]
    assert raw(sweep, [], low_fn) == pytest.approx(-4.0)
    assert nab.null_score(sweep, low_fn) == -4.0
    assert nab.perfect_score(sweep, low_fn) == 2.0
    # one TP at the first window's left edge, second missed
    assert raw(sweep, [5], low_fn) == pytest.approx(1.0 - 2.0)


def test_probation_rows_are_not_scored() -> None:
    # 20 rows at 15% -> 3 probation rows; a detection at row 1 is ignored.
    sweep = sweep_with_window(20, 10, 12, probation_percent=0.15)
    assert raw(sweep, [1]) == pytest.approx(-1.0)
    # A window entirely inside probation is neither a miss nor a hit, yet counts as perfect.
    early = sweep_with_window(20, 0, 1, probation_percent=0.15)
    assert early.scored_windows == ()
    assert raw(early, [0]) == 0.0
    assert nab.null_score(early, STANDARD) == 0.0
    assert nab.perfect_score(early, STANDARD) == 1.0


def test_threshold_semantics_and_sweep_curve() -> None:
    sweep = sweep_with_window(10, 4, 5)
    scores = np.array([0, 0, 0.9, 0, 0.6, 0.3, 0, 0, 0, 0])
    curve = nab.score_curve(sweep, scores, ONE_TO_ONE, np.array([1.1, 0.9, 0.6, 0.3, 0.0]))
    # 1.1: nothing -> miss; 0.9: FP before window + miss; 0.6: adds TP at left edge;
    # 0.3: in-window extra is free; 0.0: every row detected -> 8 FPs weighted.
    fp_after = [float(nab.scaled_sigmoid(i - 5)) for i in range(6, 10)]
    expected = [-1.0, -2.0, -1.0 + 1.0, 0.0, 1.0 - 4 + sum(fp_after)]
    assert curve.scores == pytest.approx(expected)
    assert list(curve.tp) == [0, 0, 1, 2, 2]
    assert list(curve.fp) == [0, 1, 1, 1, 8]
    assert list(curve.fn) == [2, 2, 1, 0, 0]


def test_best_threshold_breaks_ties_towards_the_highest() -> None:
    thresholds = np.array([1.1, 0.8, 0.5, 0.2])
    assert nab.best_threshold(thresholds, np.array([-1.0, 0.5, 0.5, 0.1])) == (0.8, 0.5)


def test_corpus_normalisation_by_hand() -> None:
    # File A: 2 windows, one caught at its left edge, one FP before it (standard profile).
    # File B: 1 window, missed. Null = -3, perfect = 3.
    ts_a, ts_b = stamps(40), stamps(40)
    sweep_a = nab.sweep_file("c/a.csv", ts_a, [(ts_a[10], ts_a[13]), (ts_a[25], ts_a[28])], 0.0)
    sweep_b = nab.sweep_file("c/b.csv", ts_b, [(ts_b[20], ts_b[23])], 0.0)
    raw_total = raw(sweep_a, [3, 10], STANDARD) + raw(sweep_b, [], STANDARD)
    assert raw_total == pytest.approx(-0.11 + 1.0 - 1.0 - 1.0)
    null = nab.null_score(sweep_a, STANDARD) + nab.null_score(sweep_b, STANDARD)
    perfect = nab.perfect_score(sweep_a, STANDARD) + nab.perfect_score(sweep_b, STANDARD)
    assert nab.normalised_score(raw_total, null, perfect) == pytest.approx(100 * (-1.11 + 3) / 6)
    assert nab.normalised_score(null, null, perfect) == 0.0
    assert nab.normalised_score(perfect, null, perfect) == 100.0


def test_window_limits_must_be_timestamps_of_the_file() -> None:
    ts = stamps(10)
    with pytest.raises(ValueError, match="not timestamps of the data file"):
        nab.sweep_file("c/x.csv", ts, [(ts[2], ts[3] + pd.Timedelta("1min"))], 0.0)


def test_scores_outside_unit_interval_are_rejected() -> None:
    sweep = sweep_with_window(10, 4, 5)
    with pytest.raises(ValueError, match="rows 3..3"):
        nab.score_file(sweep, np.array([0, 0, 0, 1.5, 0, 0, 0, 0, 0, 0]), ONE_TO_ONE, 0.5)


def test_profiles_and_windows_files_are_read(tmp_path) -> None:
    profiles = {
        "standard": {
            "CostMatrix": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.11, "tnWeight": 1.0}
        }
    }
    (tmp_path / "profiles.json").write_text(json.dumps(profiles))
    assert nab.load_profiles(tmp_path / "profiles.json") == {"standard": STANDARD}
    windows = {
        "c/a.csv": [["2024-01-01 00:50:00.000000", "2024-01-01 01:05:00.000000"]],
        "c/b.csv": [],
    }
    (tmp_path / "w.json").write_text(json.dumps(windows))
    read = nab.read_windows(tmp_path / "w.json")
    assert read["c/a.csv"] == [(pd.Timestamp("2024-01-01 00:50"), pd.Timestamp("2024-01-01 01:05"))]
    assert read["c/b.csv"] == []


PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"


def write_nab_folder(
    root, seed: int = 3, clock_back_at: int | None = None
) -> dict[str, list[list[str]]]:
    """A tiny NAB layout: two labelled files with a level shift each, one unlabelled file.

    With ``clock_back_at``, file a's clock steps back one hour at that row (as a DST change).
    """
    rng = np.random.default_rng(seed)
    windows = {}
    for name, shift_at in (("synth/a.csv", 500), ("synth/b.csv", 450)):
        ts = pd.date_range("2024-01-01", periods=700, freq="5min")
        if clock_back_at is not None and name == "synth/a.csv":
            ts = ts.where(ts < ts[clock_back_at], ts - pd.Timedelta(hours=1))
        values = 10 + rng.normal(0, 1, 700)
        values[shift_at:] += 8
        path = root / "nab" / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"), "value": values}).to_csv(
            path, index=False
        )
        fmt = "%Y-%m-%d %H:%M:%S.%f"
        windows[name] = [[ts[shift_at - 20].strftime(fmt), ts[shift_at + 20].strftime(fmt)]]
    (root / "nab" / "data" / "synth" / "unlabelled.csv").write_text("timestamp,value\n")
    (root / "nab" / "labels").mkdir(parents=True)
    (root / "nab" / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    return windows


def test_run_nab_bench_on_a_synthetic_folder(tmp_path) -> None:
    from benchmarks.nab import run_nab_bench

    write_nab_folder(tmp_path)
    results = run_nab_bench(
        tmp_path, PARAMS_FILE, tmp_path / "out" / "nab.json", tmp_path / "scores"
    )

    assert results["files"] == ["synth/a.csv", "synth/b.csv"]
    assert results["unlabelled_files_skipped"] == ["synth/unlabelled.csv"]
    assert set(results["profiles"]) == set(nab.NAB_PROFILES)  # no profiles.json: NAB's own
    assert json.loads((tmp_path / "out" / "nab.json").read_text())["n_windows"] == 2
    written = pd.read_csv(tmp_path / "scores" / "forescale" / "synth" / "forescale_a.csv")
    assert list(written.columns) == ["timestamp", "value", "anomaly_score", "label"]
    assert len(written) == 700 and written["label"].sum() == 41
    standard = results["profiles"]["standard"]
    # Leave one file out: a's threshold is the best one for b alone, and vice versa.
    sweeps, scores = {}, {}
    for name in results["files"]:
        out = pd.read_csv(
            tmp_path / "scores" / "forescale" / name.replace("/", "/forescale_"),
            float_precision="round_trip",
        )
        windows = nab.read_windows(tmp_path / "nab" / "labels" / "combined_windows.json")[name]
        sweeps[name] = nab.sweep_file(name, pd.to_datetime(out["timestamp"]), windows)
        scores[name] = out["anomaly_score"].to_numpy()
    thresholds = nab.candidate_thresholds(list(scores.values()), list(sweeps.values()))
    for held_out, other in (("synth/a.csv", "synth/b.csv"), ("synth/b.csv", "synth/a.csv")):
        curve = nab.score_curve(sweeps[other], scores[other], STANDARD, thresholds)
        expected, _ = nab.best_threshold(thresholds, curve.scores)
        assert standard["files"][held_out]["threshold"] == expected
    # Both shifts are caught with one shared threshold (with two files, LOO is degenerate).
    assert standard["in_sample"]["score"] > 50.0


def test_bench_scores_a_file_whose_clock_steps_back_in_file_order(tmp_path) -> None:
    from benchmarks.nab import run_nab_bench
    from models.anomaly import score_series

    write_nab_folder(tmp_path, clock_back_at=300)
    results = run_nab_bench(tmp_path, PARAMS_FILE, scores_dir=tmp_path / "scores")

    assert results["files"] == ["synth/a.csv", "synth/b.csv"]
    out = pd.read_csv(tmp_path / "scores" / "forescale" / "synth" / "forescale_a.csv")
    data = pd.read_csv(tmp_path / "nab" / "data" / "synth" / "a.csv")
    assert list(out["timestamp"]) == list(data["timestamp"])  # every row, in file order
    assert pd.to_datetime(out["timestamp"]).diff().dt.total_seconds().min() < 0
    np.testing.assert_allclose(out["anomaly_score"], score_series(data["value"].to_numpy()))


def test_bench_takes_the_nab_folder_itself_and_prints_no_reference_for_a_subset(
    tmp_path, capsys
) -> None:
    from benchmarks.nab import NO_REFERENCE, run_nab_bench

    write_nab_folder(tmp_path)
    results = run_nab_bench(tmp_path / "nab", PARAMS_FILE, doc_path=tmp_path / "nab.md")

    assert results["references"] is None
    printed = capsys.readouterr().out
    assert NO_REFERENCE in printed and "NuPIC" not in printed
    doc = (tmp_path / "nab.md").read_text()
    assert NO_REFERENCE in doc and "| synth/a.csv | 700 | 1 |" in doc


def test_bench_errors_name_the_file(tmp_path) -> None:
    from benchmarks.nab import run_nab_bench

    write_nab_folder(tmp_path)
    broken = tmp_path / "nab" / "data" / "synth" / "b.csv"
    lines = broken.read_text().splitlines()
    lines[5] = lines[5].split(",")[0] + ",not-a-number"
    broken.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"synth/b.csv: column 'value' is not a finite number"):
        run_nab_bench(tmp_path, PARAMS_FILE)


def test_file_family_drops_the_last_name_part() -> None:
    from benchmarks.nab import file_family

    assert file_family("realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv") == (
        "realAWSCloudwatch/ec2_cpu_utilization"
    )
    assert file_family("realKnownCause/nyc_taxi.csv") == "realKnownCause/nyc"
    assert file_family("cat/single.csv") == "cat/single"
