"""NAB (Numenta Anomaly Benchmark) scoring, written from NAB's documentation and scorer.

A detector emits an anomaly score in [0, 1] per row; a row is a *detection* when its score is at
or above a threshold. Each labelled anomaly window rewards only its first detection, with a scaled
sigmoid of the detection's position (the left edge earns the full ``tp_weight``, the right edge
about zero). A detection outside every window is a false positive, weighted by the same sigmoid of
its distance after the end of the previous window (``-fp_weight`` when no window precedes it).
A window without a detection costs ``-fn_weight``. The first ``min(floor(0.15 N), 750)`` rows of a
file are the probation period and are not scored at all (neither detections nor the windows'
rows there).

The corpus score sums the raw file scores; it is normalised as
``100 * (S - S_null) / (S_perfect - S_null)`` with ``S_null`` the score of a detector that never
fires and ``S_perfect = number of windows * tp_weight``.

This follows the row-level semantics of NAB's ``sweeper.py`` (the scorer behind NAB v1.1):
windows are entered at the row whose timestamp equals the window start and left at the first row
whose timestamp equals the window end; the position of row ``i`` inside a window with right index
``R`` and width ``W`` (rows) is ``-(R - i + 1) / W``; the position of a false positive after a
window is ``(i - R_prev) / (W_prev - 1)``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

PROBATION_PERCENT = 0.15
PROBATION_MAX_ROWS = 750  # NAB caps probation at probation_percent * 5000 rows
NO_WINDOW = -1
IN_PROBATION = -2


@dataclass(frozen=True)
class CostProfile:
    """Weights of one NAB application profile (``config/profiles.json``)."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


#: NAB's three profiles, as in ``config/profiles.json``; used when no profiles file is given.
NAB_PROFILES: dict[str, CostProfile] = {
    "standard": CostProfile("standard", 1.0, 0.11, 1.0),
    "reward_low_FP_rate": CostProfile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    "reward_low_FN_rate": CostProfile("reward_low_FN_rate", 1.0, 0.11, 2.0),
}


def load_profiles(path: Path) -> dict[str, CostProfile]:
    """Read NAB's ``profiles.json`` (``{name: {"CostMatrix": {"tpWeight": ..., ...}}}``).

    Args:
        path: The profiles file.

    Returns:
        Profiles by name, in file order.

    Raises:
        ValueError: If a profile lacks a weight.
    """
    raw = json.loads(Path(path).read_text())
    profiles: dict[str, CostProfile] = {}
    for name, body in raw.items():
        matrix = body.get("CostMatrix", {})
        missing = [k for k in ("tpWeight", "fpWeight", "fnWeight") if k not in matrix]
        if missing:
            raise ValueError(f"profile {name!r} in {path} lacks {missing} in its CostMatrix")
        profiles[name] = CostProfile(
            name, float(matrix["tpWeight"]), float(matrix["fpWeight"]), float(matrix["fnWeight"])
        )
    return profiles


def scaled_sigmoid(position: float | np.ndarray) -> np.ndarray:
    """NAB's reward curve: ``2 * sigmoid(-5 x) - 1``, and exactly -1 for ``x > 3``.

    Args:
        position: Relative position; -1 is a window's left edge, 0 its right edge, > 0 after it.

    Returns:
        Values in [-1, 1] (array, same shape as the input).
    """
    x = np.asarray(position, dtype=float)
    value = 2.0 / (1.0 + np.exp(5.0 * x)) - 1.0
    return np.where(x > 3.0, -1.0, value)


MAX_TP = float(scaled_sigmoid(-1.0))


def probation_length(n_rows: int, probation_percent: float = PROBATION_PERCENT) -> int:
    """Rows at the start of a file that are not scored: ``min(floor(p N), p * 5000)``.

    Args:
        n_rows: Rows in the file.
        probation_percent: NAB's probation share (0.15).

    Returns:
        The number of leading rows excluded from scoring.
    """
    return int(min(math.floor(probation_percent * n_rows), probation_percent * 5000))


@dataclass(frozen=True)
class FileSweep:
    """Per-row scoring material of one file, independent of the detector's scores.

    Attributes:
        name: The file's relative path (``category/file.csv``).
        window_id: Per row: index of the window it lies in, ``NO_WINDOW`` outside windows,
            ``IN_PROBATION`` for probation rows.
        tp_unit: Per row inside a window: ``scaled_sigmoid(position) / MAX_TP`` (0 elsewhere).
        fp_unit: Per row outside windows: the unweighted sigmoid of the distance after the
            previous window, or -1 when no window precedes (0 elsewhere).
        n_windows: Windows labelled for the file (counted for the perfect score).
        scored_windows: Ids of windows with at least one row after probation.
    """

    name: str
    window_id: np.ndarray
    tp_unit: np.ndarray
    fp_unit: np.ndarray
    n_windows: int
    scored_windows: tuple[int, ...]

    @property
    def n_rows(self) -> int:
        """Rows in the file."""
        return len(self.window_id)


def _window_bounds(
    timestamps: Sequence[pd.Timestamp],
    windows: Sequence[tuple[pd.Timestamp, pd.Timestamp]],
    name: str,
) -> list[tuple[int, int]]:
    """Row indices (left, right) of each window; both limits must be timestamps of the file."""
    first_row: dict[pd.Timestamp, int] = {}
    for i, ts in enumerate(timestamps):
        first_row.setdefault(ts, i)
    bounds = []
    for start, end in windows:
        missing = [str(t) for t in (start, end) if t not in first_row]
        if missing:
            raise ValueError(
                f"{name}: window limit(s) {missing} are not timestamps of the data file; "
                "NAB requires window limits to match rows exactly"
            )
        left, right = first_row[start], first_row[end]
        if right < left:
            raise ValueError(f"{name}: window [{start}, {end}] ends before it starts")
        bounds.append((left, right))
    for (_, right_a), (left_b, _) in itertools.pairwise(bounds):
        if left_b <= right_a:
            raise ValueError(f"{name}: windows overlap or are not in time order: {list(windows)}")
    return bounds


def sweep_file(
    name: str,
    timestamps: Sequence[pd.Timestamp] | pd.Series,
    windows: Sequence[tuple[pd.Timestamp, pd.Timestamp]],
    probation_percent: float = PROBATION_PERCENT,
) -> FileSweep:
    """Lay out one file's windows, probation and per-row reward/penalty units.

    Args:
        name: The file's relative path, used in messages.
        timestamps: The file's timestamps, row for row.
        windows: ``(start, end)`` timestamps of each labelled window, in time order.
        probation_percent: NAB's probation share.

    Returns:
        The file's :class:`FileSweep`.

    Raises:
        ValueError: If a window limit is not a timestamp of the file, or windows overlap.
    """
    stamps = [pd.Timestamp(t) for t in timestamps]
    bounds = _window_bounds(stamps, [(pd.Timestamp(a), pd.Timestamp(b)) for a, b in windows], name)
    n = len(stamps)
    window_id = np.full(n, NO_WINDOW, dtype=np.int64)
    tp_unit = np.zeros(n)
    fp_unit = np.full(n, -1.0)
    prev_right: int | None = None
    prev_width = 0
    cursor = 0
    for k, (left, right) in enumerate(bounds):
        gap = np.arange(cursor, left)
        if prev_right is not None and len(gap):
            fp_unit[gap] = scaled_sigmoid((gap - prev_right) / float(max(prev_width - 1, 1)))
        inside = np.arange(left, right + 1)
        width = float(right - left + 1)
        window_id[inside] = k
        fp_unit[inside] = 0.0
        tp_unit[inside] = scaled_sigmoid(-(right - inside + 1) / width) / MAX_TP
        prev_right, prev_width, cursor = right, right - left + 1, right + 1
    tail = np.arange(cursor, n)
    if prev_right is not None and len(tail):
        fp_unit[tail] = scaled_sigmoid((tail - prev_right) / float(max(prev_width - 1, 1)))
    probation = probation_length(n, probation_percent)
    window_id[:probation] = IN_PROBATION
    scored = tuple(sorted({int(k) for k in window_id if k >= 0}))
    return FileSweep(name, window_id, tp_unit, fp_unit, len(bounds), scored)


@dataclass(frozen=True)
class ThresholdCurve:
    """Raw NAB score of one file (or a corpus) at each candidate threshold.

    Attributes:
        thresholds: Candidate thresholds (a detection is ``score >= threshold``).
        scores: Raw score at each threshold.
        tp, fp, fn, tn: Row counts at each threshold (probation rows excluded).
    """

    thresholds: np.ndarray
    scores: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray


def _check_scores(sweep: FileSweep, anomaly_scores: np.ndarray) -> np.ndarray:
    values = np.asarray(anomaly_scores, dtype=float)
    if values.shape != (sweep.n_rows,):
        raise ValueError(
            f"{sweep.name}: {values.shape[0] if values.ndim else 0} anomaly scores for "
            f"{sweep.n_rows} rows"
        )
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values > 1))
    if len(bad):
        raise ValueError(
            f"{sweep.name}: column 'anomaly_score' must be finite and in [0, 1]; "
            f"rows {bad[0]}..{bad[-1]} ({len(bad)} rows) are not"
        )
    return values


def score_curve(
    sweep: FileSweep, anomaly_scores: np.ndarray, profile: CostProfile, thresholds: np.ndarray
) -> ThresholdCurve:
    """Raw NAB score of one file for every threshold in ``thresholds``.

    Args:
        sweep: The file's layout from :func:`sweep_file`.
        anomaly_scores: The detector's score per row, in [0, 1].
        profile: Cost weights.
        thresholds: Candidate thresholds; detections are rows with ``score >= threshold``.

    Returns:
        The file's :class:`ThresholdCurve` over ``thresholds``.

    Raises:
        ValueError: If the scores do not match the rows or leave [0, 1].
    """
    values = _check_scores(sweep, anomaly_scores)
    t = np.asarray(thresholds, dtype=float)

    def count_at_or_above(sorted_values: np.ndarray) -> np.ndarray:
        return len(sorted_values) - np.searchsorted(sorted_values, t, side="left")

    outside = sweep.window_id == NO_WINDOW
    fp_values = values[outside]
    order = np.argsort(fp_values, kind="stable")
    fp_sorted = fp_values[order]
    fp_weight_desc = np.concatenate(([0.0], np.cumsum((sweep.fp_unit[outside][order])[::-1])))
    n_fp = count_at_or_above(fp_sorted)
    fp_score = profile.fp_weight * fp_weight_desc[n_fp]
    total = fp_score.copy()
    tp_rows = np.zeros(len(t), dtype=np.int64)
    n_window_rows = 0
    for k in sweep.scored_windows:
        rows = sweep.window_id == k
        n_window_rows += int(rows.sum())
        w_values = values[rows]
        order = np.argsort(-w_values, kind="stable")
        best_so_far = np.maximum.accumulate(sweep.tp_unit[rows][order] * profile.tp_weight)
        n_hit = count_at_or_above(np.sort(w_values))
        tp_rows += n_hit
        window_score = np.where(
            n_hit > 0,
            np.maximum(-profile.fn_weight, best_so_far[np.maximum(n_hit - 1, 0)]),
            -profile.fn_weight,
        )
        total += window_score
    n_outside = int(outside.sum())
    return ThresholdCurve(
        thresholds=t,
        scores=total,
        tp=tp_rows,
        fp=n_fp,
        fn=n_window_rows - tp_rows,
        tn=n_outside - n_fp,
    )


def candidate_thresholds(
    score_arrays: Sequence[np.ndarray], sweeps: Sequence[FileSweep]
) -> np.ndarray:
    """NAB's sweep candidates: every distinct scored value, plus 1.1 (nothing detected).

    Args:
        score_arrays: Detector scores per file.
        sweeps: Matching file layouts (probation rows are left out).

    Returns:
        Distinct thresholds, highest first.
    """
    pooled = [
        np.asarray(s, dtype=float)[sw.window_id != IN_PROBATION]
        for s, sw in zip(score_arrays, sweeps, strict=True)
    ]
    values = np.unique(np.concatenate([*pooled, [1.1]]))
    return values[::-1]


def best_threshold(thresholds: np.ndarray, corpus_scores: np.ndarray) -> tuple[float, float]:
    """The threshold with the highest corpus score; ties go to the highest threshold (as NAB).

    Args:
        thresholds: Candidates, highest first.
        corpus_scores: Summed raw score at each candidate.

    Returns:
        ``(threshold, raw score)``.
    """
    best = int(np.argmax(corpus_scores))  # first maximum = highest threshold
    return float(thresholds[best]), float(corpus_scores[best])


def null_score(sweep: FileSweep, profile: CostProfile) -> float:
    """Raw score of the null detector (never fires) on one file."""
    return -profile.fn_weight * len(sweep.scored_windows)


def perfect_score(sweep: FileSweep, profile: CostProfile) -> float:
    """Raw score of the perfect detector on one file, as NAB counts it (windows * tp weight)."""
    return profile.tp_weight * sweep.n_windows


def normalised_score(raw: float, null: float, perfect: float) -> float:
    """``100 * (raw - null) / (perfect - null)``.

    Raises:
        ValueError: If perfect equals null (no windows to score).
    """
    if perfect == null:
        raise ValueError("cannot normalise: the perfect and null scores are equal (no windows)")
    return 100.0 * (raw - null) / (perfect - null)


def score_file(
    sweep: FileSweep, anomaly_scores: np.ndarray, profile: CostProfile, threshold: float
) -> ThresholdCurve:
    """Raw NAB score of one file at one threshold (a one-point :class:`ThresholdCurve`)."""
    return score_curve(sweep, anomaly_scores, profile, np.array([threshold]))


def read_windows(labels_path: Path) -> dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]]:
    """Read ``combined_windows.json`` into ``{relative path: [(start, end), ...]}``.

    Raises:
        ValueError: If a window is not a pair of timestamps.
    """
    raw = json.loads(Path(labels_path).read_text())
    windows: dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]] = {}
    for name, limits in raw.items():
        pairs = []
        for limit in limits:
            if len(limit) != 2:
                raise ValueError(f"{labels_path}: window {limit!r} of {name} is not [start, end]")
            pairs.append((pd.Timestamp(limit[0]), pd.Timestamp(limit[1])))
        windows[name] = sorted(pairs)
    return windows
