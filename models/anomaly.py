"""Online anomaly detection on telemetry: multi-scale nearest-neighbour novelty.

Each point gets a score in [0, 1] computed from that point and the past only: appending newer
points never changes older scores. The score combines:

1. **Subsequence novelty at several scales.** For each smoothing window ``w`` in ``scales``, the
   series is smoothed by a trailing mean over ``w`` rows and the last ``embedding`` smoothed
   values, ``w`` rows apart, form a subsequence (``w = 1``: the raw last ``embedding`` values).
   Its distance to the nearest earlier subsequence (within the last ``search_rows`` rows,
   excluding overlapping ones) measures how new the current shape is: recurring patterns
   (daily peaks, periodic spikes) find close neighbours, spikes, level shifts, dropouts and
   changes in burst patterns do not.
2. **Rank calibration.** Each distance is ranked among the previous ``history`` distances of the
   same scale: with ``p = (#{past >= d} + 1) / (n_past + 1)`` the scale's score is
   ``log p / log(1 / (history + 1))`` (1 = larger than everything in the history). A rank does not
   depend on the metric's units or distribution, so one threshold transfers between series.
   With ``rank_normalisation: available`` the denominator is the history actually available
   (``log p / log(1 / (n_past + 1))``), so a distance larger than every earlier one scores 1
   early in a series and in short series too, as it does after ``history`` rows.
   The scale scores are averaged.
3. **Range excursions, graded.** A value beyond the range seen so far (by more than
   ``range_tolerance`` of that range) scores ``range_score * min(1, excess / (range_full_steps *
   typical_step))``, where ``typical_step`` is the median absolute one-row change over the last
   ``history`` rows. A new high that is a step or two above the old one (trend growth, a slightly
   busier evening) scores little; a value many typical steps outside the range scores
   ``range_score``. A series that never moves (typical step 0) scores ``range_score`` for any
   excursion.
4. **Refractory damping, by comparable recent events only.** Each row has an event size, the
   absolute deviation of its value from the median of the previous ``embedding`` values. A score
   is multiplied by ``1 - max_k(raw[t-k] * min(1, size[t-k] / size[t]) * (1 - (k-1)/refractory))``
   over ``k = 1..refractory``: a lasting event (whose later rows deviate less than its onset) is
   reported once, at its onset; a clearly larger later event (a 6x spike after a small dip) is
   damped only by the ratio of the sizes, and the damping fades out linearly over the
   ``refractory`` rows, so an event long after another is judged nearly on its own.

The detector is fitted per service on history (it keeps each service's recent values as the past
for scoring newer batches) and flags a point when ``score >= threshold``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from core.schema import SERVICE, TARGET, TS, TS_DTYPE, require_columns, to_long

SCORE = "score"
IS_ANOMALY = "is_anomaly"
RAW_SCORE = "raw_score"
RANK_NORMALISATIONS = ("history", "available")


@dataclass(frozen=True)
class DetectorSettings:
    """Settings of the detector (all in rows of the series); the defaults are the documented ones.

    Attributes:
        embedding: Points per subsequence compared with earlier ones.
        scales: Trailing-mean windows; each gives one novelty score (1 = raw values).
        search_rows: How far back the nearest-neighbour search looks.
        history: Past distances a new distance is ranked against.
        warmup: Rows before any score is given (scores are 0 there).
        refractory: Rows after a high score during which later scores of comparable or smaller
            size are damped (fading out linearly over these rows).
        range_score: Score of a value far outside the range seen so far.
        range_tolerance: Margin, as a share of the seen range, before a value counts as outside.
        range_full_steps: Excess beyond the seen range, in typical one-row changes (median
            absolute change over the last ``history`` rows), at which a range excursion scores
            ``range_score``; smaller excesses score proportionally less.
        rank_normalisation: ``history``: a rank's log-p is divided by ``log(1 / (history + 1))``;
            ``available``: by ``log(1 / (n_past + 1))`` with ``n_past`` the past distances
            actually available (at most ``history``).
    """

    embedding: int = 6
    scales: tuple[int, ...] = (1, 12, 24)
    search_rows: int = 6000
    history: int = 4000
    warmup: int = 100
    refractory: int = 150
    range_score: float = 0.99
    range_tolerance: float = 0.01
    range_full_steps: float = 10.0
    rank_normalisation: str = "available"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(int(w) for w in self.scales))
        for name in ("embedding", "search_rows", "history", "warmup"):
            if getattr(self, name) < 1:
                raise ValueError(f"DetectorSettings.{name} must be >= 1, got {getattr(self, name)}")
        if not self.scales or min(self.scales) < 1:
            raise ValueError(f"DetectorSettings.scales must be windows >= 1, got {self.scales}")
        if self.refractory < 0:
            raise ValueError(f"DetectorSettings.refractory must be >= 0, got {self.refractory}")
        if not 0.0 <= self.range_score <= 1.0:
            raise ValueError(
                f"DetectorSettings.range_score must be in [0, 1], got {self.range_score}"
            )
        if self.range_tolerance < 0:
            raise ValueError(
                f"DetectorSettings.range_tolerance must be >= 0, got {self.range_tolerance}"
            )
        if self.rank_normalisation not in RANK_NORMALISATIONS:
            raise ValueError(
                f"DetectorSettings.rank_normalisation must be one of {RANK_NORMALISATIONS}, "
                f"got {self.rank_normalisation!r}"
            )
        if self.range_full_steps <= 0:
            raise ValueError(
                f"DetectorSettings.range_full_steps must be > 0, got {self.range_full_steps}"
            )

    @classmethod
    def from_mapping(cls, mapping: dict, source: str) -> DetectorSettings:
        """Settings from a mapping (the ``anomaly.detector`` section of the parameters file).

        Args:
            mapping: Setting names and values; absent ones keep their defaults.
            source: Where the mapping comes from, named in errors.

        Returns:
            The settings.

        Raises:
            ValueError: If a name is unknown or a value is invalid.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown detector setting(s) {unknown}; known: {sorted(known)}"
            )
        try:
            return cls(**mapping)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from err

    @property
    def context_rows(self) -> int:
        """Rows of past values kept per service as the context for scoring newer rows."""
        span = (self.embedding - 1) * max(self.scales) + max(self.scales)
        return self.search_rows + self.history + span + self.refractory + 1


#: Threshold when the parameters file sets none: the median of the leave-one-file-out NAB
#: Standard thresholds (``docs/benchmarks/nab.md``); ``anomaly.threshold`` in params.yaml.
DEFAULT_THRESHOLD = 0.32


def _clean_values(values: np.ndarray, what: str) -> np.ndarray:
    """Forward-fill missing values (past only); reject series with no finite value."""
    series = pd.Series(np.asarray(values, dtype=float))
    series[~np.isfinite(series)] = np.nan
    if series.notna().sum() == 0:
        raise ValueError(f"{what}: no finite values to score")
    first = int(series.notna().to_numpy().argmax())
    filled = series.ffill()
    filled.iloc[:first] = series.iloc[first]  # leading gap: repeat the first observation
    return filled.to_numpy()


def nearest_neighbour_distance(
    values: np.ndarray, embedding: int, search_rows: int, lag: int = 1, first_row: int = 0
) -> np.ndarray:
    """Distance of each subsequence to its nearest non-overlapping earlier subsequence.

    Args:
        values: The series (finite).
        embedding: Points per subsequence; the one ending at ``t`` is
            ``values[t - (embedding - 1) * lag], ..., values[t - lag], values[t]``.
        search_rows: How many earlier subsequences are searched.
        lag: Rows between the points of a subsequence.
        first_row: Rows before this one are not computed (left 0); a row's distance depends on
            the values up to it only, so later rows are the same as without it.

    Returns:
        Per row, the RMS distance (0 where no earlier subsequence exists yet).
    """
    span = (embedding - 1) * lag + 1
    n = len(values)
    distance = np.zeros(n)
    if n < span + 2:
        return distance
    windows = np.lib.stride_tricks.sliding_window_view(values, span)[:, ::lag]
    for k in range(max(span + 1, first_row - span + 1), len(windows)):
        gap = windows[max(0, k - search_rows) : k - span] - windows[k]
        distance[k + span - 1] = math.sqrt(
            float(np.min(np.einsum("ij,ij->i", gap, gap))) / embedding
        )
    return distance


def rank_score(
    values: np.ndarray, history: int, start: int, normalisation: str = "history"
) -> np.ndarray:
    """Score each value by its rank among the previous ``history`` values.

    Args:
        values: The statistic per row (larger = more unusual).
        history: How many previous values a value is ranked against.
        start: First row that gets a score (earlier rows score 0).
        normalisation: ``history`` divides by ``log(1 / (history + 1))``, ``available`` by
            ``log(1 / (n_past + 1))``.

    Returns:
        ``log p / log(1 / (m + 1))`` with ``p = (#{past >= value} + 1) / (n_past + 1)`` and
        ``m`` as set by ``normalisation``, in [0, 1].
    """
    score = np.zeros(len(values))
    top = math.log(1.0 / (history + 1))
    for t in range(max(start, 1), len(values)):
        past = values[max(0, t - history) : t]
        exceed = np.count_nonzero(past >= values[t])
        scale = top if normalisation == "history" else math.log(1.0 / (len(past) + 1))
        score[t] = math.log((exceed + 1) / (len(past) + 1)) / scale
    return np.clip(score, 0.0, 1.0)


def _range_score(values: np.ndarray, settings: DetectorSettings, first: int = 0) -> np.ndarray:
    """Graded score of values outside the range seen so far (see the module docstring), for
    the rows from ``first`` on (zero before it)."""
    n = len(values)
    low = np.minimum.accumulate(values)
    high = np.maximum.accumulate(values)
    excess = np.zeros(n)
    excess[1:] = np.maximum(values[1:] - high[:-1], low[:-1] - values[1:]).clip(min=0.0)
    spread = np.zeros(n)
    spread[1:] = high[:-1] - low[:-1]
    outside = excess > settings.range_tolerance * spread
    outside[: settings.warmup] = False
    steps = np.abs(np.diff(values, prepend=values[0]))
    typical_step = np.zeros(n)  # the median of the `history` steps before each row
    typical_step[first:] = np.nan_to_num(_previous_median(steps, settings.history, first))
    full = settings.range_full_steps * typical_step
    share = np.divide(excess, full, out=np.ones(n), where=full > 0).clip(max=1.0)
    score = np.where(outside, settings.range_score * share, 0.0)
    score[:first] = 0.0
    return score


def _event_size(values: np.ndarray, settings: DetectorSettings, first: int = 0) -> np.ndarray:
    """Absolute deviation of each value from the median of the previous ``embedding`` values,
    for the rows from ``first`` on (the array holds those rows only)."""
    baseline = _previous_median(values, settings.embedding, first)
    if first == 0:
        baseline[0] = values[0]
    return np.abs(values[first:] - baseline)


def _previous_median(values: np.ndarray, window: int, first: int) -> np.ndarray:
    """For each row from ``first`` on, the median of the (up to) ``window`` values before it
    (NaN for the first row), computed from row ``first - window`` on only."""
    past = max(0, first - window)
    medians = pd.Series(values[past:]).rolling(window, min_periods=1).median().shift(1)
    return medians.to_numpy()[first - past :]


def _damp_after_events(raw: np.ndarray, size: np.ndarray, refractory: int) -> np.ndarray:
    """Damp each raw score by the comparable earlier events of the last ``refractory`` rows.

    ``score[t] = raw[t] * (1 - max_k raw[t-k] * min(1, size[t-k] / size[t]) * fade[k])`` for
    ``k = 1..refractory``, with ``fade[k] = 1 - (k - 1) / refractory``.
    """
    n = len(raw)
    damping = np.zeros(n)
    for lag in range(1, min(refractory, n - 1) + 1):
        earlier_raw, earlier_size, now_size = raw[:-lag], size[:-lag], size[lag:]
        comparable = np.divide(
            earlier_size, now_size, out=np.ones(n - lag), where=now_size > 0
        ).clip(max=1.0)
        fade = 1.0 - (lag - 1) / refractory
        np.maximum(damping[lag:], earlier_raw * comparable * fade, out=damping[lag:])
    return raw * (1.0 - damping)


def distance_column(window: int) -> str:
    """The context column holding each row's nearest-neighbour distance at a smoothing window."""
    return f"distance_{window}"


@dataclass
class SeriesState:
    """What scoring a series computed, kept so that scoring its next rows needs no recomputation.

    Each array is aligned with the series' values; NaN where the value was not computed. A row's
    distances and raw score depend on that row and the past only, so they stay valid when rows are
    appended.

    Attributes:
        distances: Per smoothing window (``DetectorSettings.scales``), each row's
            nearest-neighbour distance.
        raw: Each row's score before refractory damping.
    """

    distances: dict[int, np.ndarray]
    raw: np.ndarray


def _first_unknown(known: np.ndarray, start: int) -> int:
    """First row at or after ``start`` whose value is NaN (``len(known)`` if none)."""
    missing = np.flatnonzero(np.isnan(known[start:]))
    return start + int(missing[0]) if len(missing) else len(known)


def _padded(values: np.ndarray | None, n: int) -> np.ndarray:
    """``values`` padded with NaN to ``n`` rows (all NaN when there are none)."""
    out = np.full(n, np.nan)
    if values is not None:
        out[: min(n, len(values))] = values[:n]
    return out


def score_rows(
    values: np.ndarray,
    settings: DetectorSettings,
    first_row: int = 0,
    known: SeriesState | None = None,
) -> tuple[np.ndarray, SeriesState]:
    """Scores of a series' rows from ``first_row`` on.

    A row's score needs the raw scores of the ``refractory`` rows before it, and each raw score
    the distances of the ``history`` rows before that: nearest-neighbour distances and ranks are
    computed for those rows only, and not at all where ``known`` holds them already (the
    smoothing is vectorised over the whole series, the range and event-size terms over the rows
    they are needed for).

    Args:
        values: The series, oldest first (see :func:`score_series`).
        settings: Detector settings.
        first_row: First row to score.
        known: Distances and raw scores computed for earlier rows of this same series (by an
            earlier call on a prefix of it), aligned with ``values``.

    Returns:
        The scores of rows ``first_row..`` and the state for the next call.

    Raises:
        ValueError: If there are no finite values.
    """
    clean = _clean_values(values, "series")
    n = len(clean)
    raw_from = max(0, first_row - settings.refractory)
    raw = _padded(known.raw if known else None, n)
    unknown_raw = _first_unknown(raw, raw_from)
    novelty = np.zeros(n)
    distances = {}
    for window in settings.scales:
        distance = _padded(known.distances.get(window) if known else None, n)
        compute_from = _first_unknown(distance, max(0, unknown_raw - settings.history))
        if compute_from < n:
            smooth = (
                clean
                if window == 1
                else pd.Series(clean).rolling(window, min_periods=1).mean().to_numpy()
            )
            computed = nearest_neighbour_distance(
                smooth, settings.embedding, settings.search_rows, window, compute_from
            )
            distance[compute_from:] = computed[compute_from:]
        lead = (settings.embedding - 1) * window + window
        if unknown_raw < n:
            novelty += rank_score(
                distance,
                settings.history,
                max(lead + settings.warmup, unknown_raw),
                settings.rank_normalisation,
            )
        distances[window] = distance
    if unknown_raw < n:
        novelty /= len(settings.scales)
        raw[unknown_raw:] = np.maximum(novelty, _range_score(clean, settings, unknown_raw))[
            unknown_raw:
        ]
    damped = _damp_after_events(
        raw[raw_from:], _event_size(clean, settings, raw_from), settings.refractory
    )
    scores = np.clip(damped, 0.0, 1.0)[first_row - raw_from :]
    return scores, SeriesState(distances, raw)


def score_series(
    values: np.ndarray, settings: DetectorSettings | None = None, first_row: int = 0
) -> np.ndarray:
    """Online anomaly score of one series: each point is scored from itself and the past.

    Rows are scored in the order given, whatever their timestamps say (a clock that steps back
    does not reorder them, as in NAB).

    Args:
        values: The series, oldest first; NaN/inf are forward-filled (a missing point is read
            as "no change").
        settings: Detector settings; defaults to :class:`DetectorSettings`.
        first_row: Score the rows from this one on: the earlier rows are the past only, and
            only what the later rows' scores depend on is computed for them (the scores are the
            same as the tail of the whole series' scores).

    Returns:
        Scores in [0, 1], one per row from ``first_row`` on.

    Raises:
        ValueError: If there are no finite values.
    """
    return score_rows(values, settings or DetectorSettings(), first_row)[0]


@dataclass
class AnomalyDetector:
    """Per-service online anomaly detector over long-format telemetry.

    Attributes:
        settings: The detector settings, shared by all services.
        threshold: A point is an anomaly when its score is at or above this.
        target: The metric column that is scored.
        context: Per service, the most recent fitted/scored rows (``ts``, value) used as the
            past when scoring newer rows; rows it has scored also carry what scoring computed
            for them (:func:`distance_column` per scale, ``raw_score``), so the next rows are
            scored without recomputing it.
    """

    settings: DetectorSettings = field(default_factory=DetectorSettings)
    threshold: float = DEFAULT_THRESHOLD
    target: str = TARGET
    context: dict[str, pd.DataFrame] = field(default_factory=dict)

    name: ClassVar[str] = "nn_novelty"

    def fit(self, history: pd.DataFrame, target: str | None = None) -> AnomalyDetector:
        """Remember each service's recent history as the past for later scoring.

        Args:
            history: Long-format rows (``service``, ``ts``, target column).
            target: The metric to score; keeps :attr:`target` when omitted.

        Returns:
            ``self``.

        Raises:
            ValueError: If columns are missing or the frame is empty.
        """
        if target is not None:
            self.target = target
        frame = self._prepare(history, "history")
        self.context = {}
        for service, rows in frame.groupby(SERVICE, sort=True):
            self.set_context(str(service), rows)
        return self

    def score(self, frame: pd.DataFrame, update_context: bool = True) -> pd.DataFrame:
        """Score new rows of each service online, after that service's fitted context.

        Rows at or before the last context timestamp of a service are scored without context
        (they are not "new"): pass only rows newer than what was fitted for exact online scores.

        Args:
            frame: Long-format rows (``service``, ``ts``, target column).
            update_context: Append the scored rows to the context for the next call.

        Returns:
            A frame with ``service``, ``ts``, ``score`` and ``is_anomaly`` per input row.

        Raises:
            ValueError: If columns are missing, the frame is empty, or a service has no finite
                value of the target.
        """
        data = self._prepare(frame, "frame")
        out = []
        for service, rows in data.groupby(SERVICE, sort=True):
            service = str(service)
            past = self.context.get(service)
            if past is not None and len(past) and rows[TS].iloc[0] > past[TS].iloc[-1]:
                joined = pd.concat([past, rows[[TS, self.target]]], ignore_index=True)
                n_past = len(past)
            else:
                joined = rows[[TS, self.target]].reset_index(drop=True)
                n_past = 0
            try:
                scores, state = score_rows(
                    joined[self.target].to_numpy(), self.settings, n_past, self._kept_state(joined)
                )
            except ValueError as err:
                raise ValueError(f"service {service!r}, column {self.target!r}: {err}") from err
            out.append(
                pd.DataFrame(
                    {
                        SERVICE: service,
                        TS: rows[TS].to_numpy(),
                        SCORE: scores,
                        IS_ANOMALY: scores >= self.threshold,
                    }
                )
            )
            if update_context:
                joined = joined.assign(
                    **{distance_column(w): d for w, d in state.distances.items()},
                    **{RAW_SCORE: state.raw},
                )
                self.context[service] = joined.tail(self.settings.context_rows).reset_index(
                    drop=True
                )
        result = pd.concat(out, ignore_index=True)
        result[TS] = result[TS].astype(TS_DTYPE)
        return result

    def _kept_state(self, rows: pd.DataFrame) -> SeriesState | None:
        """What earlier scoring left in a service's context rows (``None`` if it left nothing)."""
        columns = [distance_column(w) for w in self.settings.scales]
        if RAW_SCORE not in rows or any(c not in rows for c in columns):
            return None
        return SeriesState(
            {w: rows[distance_column(w)].to_numpy(float) for w in self.settings.scales},
            rows[RAW_SCORE].to_numpy(float),
        )

    def context_continues(self, service: str, past: pd.DataFrame) -> bool:
        """Whether the service's context is its past: the next rows can be scored after it.

        A context kept from earlier scoring (with what that scoring computed) is valid for the
        next rows only if the service's stored history has not changed under it: it must end
        at ``past``'s last row, hold at least as many rows, and agree with ``past`` in times
        and values on every row of ``past``.

        Args:
            service: The service.
            past: Its most recent rows (``ts``, target column) before the rows to score next,
                oldest first, as stored now.
        """
        context = self.context.get(service)
        if context is None or not len(past) or len(context) < len(past):
            return False
        mine = context.tail(len(past))
        same_times = np.array_equal(
            mine[TS].to_numpy(dtype="datetime64[ns]"), past[TS].to_numpy(dtype="datetime64[ns]")
        )
        return same_times and np.array_equal(
            mine[self.target].to_numpy(float), past[self.target].to_numpy(float), equal_nan=True
        )

    def set_context(self, service: str, past: pd.DataFrame) -> None:
        """Make the service's most recent ``context_rows`` of ``past`` its context (what
        :meth:`fit` does for every service of a frame).

        Args:
            service: The service.
            past: Its rows (``ts``, target column), oldest first.
        """
        self.context[service] = (
            past[[TS, self.target]].tail(self.settings.context_rows).reset_index(drop=True)
        )

    def save(self, path: Path) -> None:
        """Write settings, threshold and per-service context to a directory."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "name": self.name,
            "threshold": self.threshold,
            "target": self.target,
            "settings": asdict(self.settings),
        }
        (path / "detector.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        if self.context:
            frames = [rows.assign(**{SERVICE: service}) for service, rows in self.context.items()]
            pd.concat(frames, ignore_index=True).to_parquet(path / "context.parquet", index=False)

    @classmethod
    def load(cls, path: Path) -> AnomalyDetector:
        """Read a detector written by :meth:`save`.

        Raises:
            ValueError: If the directory holds no detector.
        """
        path = Path(path)
        meta_path = path / "detector.json"
        if not meta_path.exists():
            raise ValueError(f"no anomaly detector saved in {path} (missing detector.json)")
        meta = json.loads(meta_path.read_text())
        detector = cls(
            DetectorSettings(**meta["settings"]), float(meta["threshold"]), meta["target"]
        )
        context_path = path / "context.parquet"
        if context_path.exists():
            context = pd.read_parquet(context_path)
            context[TS] = context[TS].astype(TS_DTYPE)
            detector.context = {
                str(service): rows.drop(columns=SERVICE).reset_index(drop=True)
                for service, rows in context.groupby(SERVICE, sort=True)
            }
        return detector

    def _prepare(self, frame: pd.DataFrame, what: str) -> pd.DataFrame:
        require_columns(frame, (SERVICE, TS, self.target), what)
        if frame.empty:
            raise ValueError(f"{what} has no rows to use for anomaly detection")
        data = to_long(frame, [self.target])
        duplicated = data.duplicated([SERVICE, TS])
        if duplicated.any():
            rows = np.flatnonzero(duplicated.to_numpy())
            service = data[SERVICE].iloc[rows[0]]
            raise ValueError(
                f"{what}: duplicate (service, ts) rows for service {service!r}, "
                f"rows {rows[0]}..{rows[-1]} after sorting"
            )
        return data
