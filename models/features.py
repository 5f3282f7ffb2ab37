"""History preparation and the lag / rolling / calendar feature builder shared by the models.

All models work on a per-service regular grid: :func:`prepare_history` validates a long frame and
returns ``service, ts, y`` on a gap-free grid (missing steps interpolated, flagged in ``filled``).
:func:`build_features` turns such a frame into the design matrix of the LightGBM model.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.schema import SERVICE, TS, quantile_column, require_columns, to_long

Y = "y"
FILLED = "filled"
DAY = pd.Timedelta(days=1)
WEEK = pd.Timedelta(days=7)
SMOOTH_SPANS = (3, 12, 48)


def season_steps_for(step: pd.Timedelta, period: pd.Timedelta = DAY) -> int:
    """Number of steps in one seasonal period (one day by default), at least 1.

    Args:
        step: Time between two rows.
        period: Length of the season.

    Returns:
        ``period // step`` (at least 1).
    """
    if step <= pd.Timedelta(0):
        raise ValueError(f"time step must be positive, got {step}")
    return max(1, int(period // step))


Steps = int | str | None
"""A length in steps (``int``) or as a duration (``"1h"``, ``"28D"``: any ``pd.Timedelta`` string),
turned into steps of the data's grid at fit time, so one setting serves any resolution."""


def check_steps(value: Steps, name: str) -> Steps:
    """Validate a :data:`Steps` setting (a positive step count or a positive duration).

    Args:
        value: The setting.
        name: Its name, for the error message.

    Returns:
        The value, unchanged.

    Raises:
        ValueError: For a count below 1 or a string that is not a positive duration.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(  # noqa: TRY004 - settings come from a params file: bad input
            f"{name} must be a step count or a duration such as '1h', got {value!r}"
        )
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{name} must be at least 1 step, got {value}")
        return value
    try:
        duration = pd.Timedelta(value)
    except ValueError as err:
        raise ValueError(f"{name}: {value!r} is not a duration such as '1h' or '28D'") from err
    if duration <= pd.Timedelta(0):
        raise ValueError(f"{name} must be a positive duration, got {value!r}")
    return value


def steps_of(value: Steps, step: pd.Timedelta) -> int | None:
    """A :data:`Steps` setting as a number of grid steps (at least 1; ``None`` stays ``None``).

    Args:
        value: A step count or a duration string.
        step: The grid step of the data.

    Returns:
        The number of steps.
    """
    if value is None:
        return None
    if isinstance(value, int):
        return value
    return max(1, int(pd.Timedelta(value) // step))


class _LastPrepared:
    """The last :func:`prepare_history` result, kept for the same frame asked again (an
    ensemble's members each prepare the history they are given)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entry: tuple[pd.DataFrame, str, pd.Timedelta, tuple[Any, ...], pd.DataFrame] | None
        self.entry = None

    @staticmethod
    def fingerprint(history: pd.DataFrame, target: str) -> tuple[Any, ...]:
        values = pd.to_numeric(history[target], errors="coerce").to_numpy(dtype=float)
        stamps = history[TS]
        return (
            len(history),
            tuple(history.columns),
            stamps.iloc[0] if len(stamps) else None,
            stamps.iloc[-1] if len(stamps) else None,
            float(np.nansum(values)),
            float(np.nansum(values * np.arange(len(values)))),
        )

    def get(self, history: pd.DataFrame, target: str, step: pd.Timedelta) -> pd.DataFrame | None:
        with self.lock:
            entry = self.entry
        if entry is None or entry[0] is not history or entry[1] != target or entry[2] != step:
            return None
        if entry[3] != self.fingerprint(history, target):
            return None
        return entry[4].copy()

    def put(
        self, history: pd.DataFrame, target: str, step: pd.Timedelta, prepared: pd.DataFrame
    ) -> None:
        fingerprint = self.fingerprint(history, target)
        with self.lock:
            self.entry = (history, target, step, fingerprint, prepared.copy())


_LAST_PREPARED = _LastPrepared()


def prepare_history(history: pd.DataFrame, target: str, step: pd.Timedelta) -> pd.DataFrame:
    """Validate long-format history and put every service on a regular ``step`` grid.

    Duplicated timestamps are averaged; missing steps are linearly interpolated (and flagged in
    the ``filled`` column) so gaps never shift lags. Negative values are clipped to zero. The
    same frame (unchanged) asked again returns a copy of the last result.

    Args:
        history: Rows of ``service``, ``ts`` and ``target``.
        target: Column to forecast.
        step: The grid step.

    Returns:
        A frame ``service, ts, y, filled`` sorted by service and time.

    Raises:
        ValueError: If columns are missing, the frame is empty, or a service has infinite values
            or no finite value at all.
    """
    require_columns(history, (SERVICE, TS, target), "history")
    if history.empty:
        raise ValueError("history has no rows")
    known = _LAST_PREPARED.get(history, target, step)
    if known is not None:
        return known
    out = _prepare_history(history, target, step)
    _LAST_PREPARED.put(history, target, step, out)
    return out


def _prepare_history(history: pd.DataFrame, target: str, step: pd.Timedelta) -> pd.DataFrame:
    """:func:`prepare_history` without the reuse of the last result."""
    frame = to_long(history, [target]).rename(columns={target: Y})
    frame[Y] = pd.to_numeric(frame[Y], errors="coerce").astype(float)
    parts: list[pd.DataFrame] = []
    for service, group in frame.groupby(SERVICE, sort=True):
        values = group[Y].to_numpy()
        if np.isinf(values).any():
            rows = np.flatnonzero(np.isinf(values))
            raise ValueError(
                f"service {service!r}: column {target!r} has infinite values "
                f"at rows {rows.min()}..{rows.max()} of that service"
            )
        if not np.isfinite(values).any():
            raise ValueError(f"service {service!r}: column {target!r} has no finite value")
        series = group.groupby(TS)[Y].mean()
        start, end = series.index.min(), series.index.max()
        grid = pd.date_range(start, end, freq=step)
        aligned = series.reindex(series.index.union(grid)).interpolate(method="time")
        aligned = aligned.reindex(grid).ffill().bfill()
        filled = ~grid.isin(series.dropna().index)
        parts.append(
            pd.DataFrame(
                {
                    SERVICE: service,
                    TS: grid,
                    Y: np.clip(aligned.to_numpy(dtype=float), 0.0, None),
                    FILLED: filled,
                }
            )
        )
    out = pd.concat(parts, ignore_index=True)
    out[TS] = out[TS].astype(frame[TS].dtype)
    return out


def future_timestamps(last_ts: pd.Timestamp, step: pd.Timedelta, horizon: int) -> pd.DatetimeIndex:
    """The ``horizon`` timestamps following ``last_ts``.

    Args:
        last_ts: Last observed timestamp.
        step: Grid step.
        horizon: Number of steps.

    Returns:
        A DatetimeIndex of length ``horizon``.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1, got {horizon}")
    return pd.date_range(last_ts + step, periods=horizon, freq=step)


def finalize_quantiles(frame: pd.DataFrame, quantiles: Sequence[float]) -> pd.DataFrame:
    """Make quantile columns non-negative and monotone in the quantile level (in place).

    Args:
        frame: Forecast frame with one ``p..`` column per quantile.
        quantiles: The quantile levels present.

    Returns:
        The same frame, with sorted, clipped quantile columns.
    """
    levels = sorted(float(q) for q in quantiles)
    columns = [quantile_column(q) for q in levels]
    values = np.clip(frame[columns].to_numpy(dtype=float), 0.0, None)
    values = np.nan_to_num(values, nan=0.0)
    frame[columns] = np.maximum.accumulate(values, axis=1)
    return frame


def check_quantiles(quantiles: Sequence[float]) -> tuple[float, ...]:
    """Validate quantile levels (each strictly between 0 and 1) and return them as a tuple.

    Args:
        quantiles: Requested quantile levels.

    Returns:
        The levels as floats.
    """
    levels = tuple(float(q) for q in quantiles)
    if not levels:
        raise ValueError("at least one quantile is required")
    for q in levels:
        quantile_column(q)
    return levels


def robust_clip(values: np.ndarray, season: int, threshold: float = 6.0) -> np.ndarray:
    """Replace anomalous spikes by the local median, so one outlier cannot wreck a fit.

    A Hampel filter: a point is an outlier when it deviates from the centred rolling median
    (window about 1/12 of a season, at least 5 points) by more than ``threshold`` robust
    standard deviations (1.4826 MAD of the first differences / sqrt 2, at least the mean
    absolute deviation). Level shifts last longer than half a
    window and are kept; the newest window is never changed (a surge at the end is news); a
    spike that recurs one season earlier or later (within a step) is the seasonal pattern (a
    daily job, a periodic burst), not an outlier, and is kept too.

    Args:
        values: History of one series, oldest first.
        season: Steps per season.
        threshold: Outlier cut-off in robust standard deviations.

    Returns:
        A cleaned copy.
    """
    x = np.asarray(values, dtype=float).copy()
    window = 2 * max(2, season // 24) + 1
    if x.size < 2 * window:
        return x
    reference = centred_median(x, window)
    deviation = x - reference
    steps = np.diff(x)
    # Noise level from step-to-step changes (the deviations themselves are mostly exact zeros).
    sigma = 1.4826 * np.median(np.abs(steps - np.median(steps))) / np.sqrt(2.0)
    sigma = max(sigma, float(np.mean(np.abs(deviation))))
    if not sigma > 0:
        return x
    outliers = np.abs(deviation) > threshold * sigma
    outliers &= ~_recurs(outliers, season)
    outliers[-window:] = False
    x[outliers] = reference[outliers]
    return x


def centred_median(values: np.ndarray, window: int) -> np.ndarray:
    """Centred rolling median over an odd ``window``, shorter at both ends.

    Equal to ``pd.Series(values).rolling(window, center=True, min_periods=1).median()``;
    the interior by SciPy's median filter (an order of magnitude faster), the ends and series
    with a missing or infinite value by pandas.

    Args:
        values: One series.
        window: Odd window length.

    Returns:
        The median per position.

    Raises:
        ValueError: If ``window`` is not an odd positive number.
    """
    from scipy.ndimage import median_filter

    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and positive, got {window}")
    x = np.asarray(values, dtype=float)

    def by_pandas(part: np.ndarray) -> np.ndarray:
        return pd.Series(part).rolling(window, center=True, min_periods=1).median().to_numpy()

    half = window // 2
    if half == 0 or x.size <= 2 * window or not np.isfinite(x).all():
        return by_pandas(x)
    out = median_filter(x, size=window, mode="nearest")
    out[:half] = by_pandas(x[:window])[:half]
    out[-half:] = by_pandas(x[-window:])[-half:]
    return out


def _recurs(flags: np.ndarray, season: int) -> np.ndarray:
    """Whether a flag is also set one season earlier or later, within one step."""
    near = flags.copy()
    near[1:] |= flags[:-1]
    near[:-1] |= flags[1:]
    out = np.zeros_like(flags)
    if season < flags.size:
        out[season:] |= near[:-season]
        out[:-season] |= near[season:]
    return out


def _take(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]`` with NaN where the index is negative."""
    safe = np.clip(index, 0, values.size - 1)
    out = values[safe]
    return np.where(index >= 0, out, np.nan)


def build_features(
    values: np.ndarray,
    origins: np.ndarray,
    horizons: np.ndarray,
    season: int,
    week: int | None,
    target_times: pd.DatetimeIndex | None = None,
    n_seasonal_lags: int = 4,
    n_recent_lags: int = 6,
    smooth_features: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Direct multi-horizon design matrix for forecasting ``values[origin + horizon]``.

    Every feature is computed from ``values[: origin + 1]`` only (no leakage) and divided by
    the series scale at the origin (mean of the last season), so big and small series share
    patterns. The model target is ``values[origin + horizon] / scale``.

    Features: horizon; same-phase lags (the last ``n_seasonal_lags`` observed values at the
    target's phase of the season) with their mean; the weekly same-phase lag; the last
    ``n_recent_lags`` values; recent means and volatility; the current deviation from one season
    and one week earlier; and, when ``target_times`` is given, hour-of-day and day-of-week of the
    target. With ``smooth_features``, also smoothed levels at the origin (exponentially weighted
    means of spans 3, 12 and 48 steps, the median of the last ``min(12, season / 4)`` steps) and
    the seasonal change to expect from the origin to the target (same-phase mean minus the
    origin's profile): trees average noisy lags badly, and short horizons on noisy series
    depend on the level more than on the last value.

    Args:
        values: One series on a regular grid, oldest first.
        origins: Index of the last observed point of each row.
        horizons: Steps ahead of each row (>= 1).
        season: Steps per season (one day).
        week: Steps per week, or ``None`` when the data has no weekly cycle to use.
        target_times: Timestamps of ``origin + horizon`` for calendar features.
        n_seasonal_lags: Same-phase lags to include.
        n_recent_lags: Recent lags to include.
        smooth_features: Add the smoothed levels and the expected seasonal change.

    Returns:
        ``(features, scale, names)``: the matrix, the per-row scale, the column names.
    """
    x = np.asarray(values, dtype=float)
    o = np.asarray(origins, dtype=np.int64)
    h = np.asarray(horizons, dtype=np.int64)
    cumsum = np.concatenate([[0.0], np.cumsum(x)])
    cumsq = np.concatenate([[0.0], np.cumsum(x * x)])

    def window_mean(length: int) -> np.ndarray:
        start = np.maximum(o + 1 - length, 0)
        return (cumsum[o + 1] - cumsum[start]) / (o + 1 - start)

    def window_std(length: int) -> np.ndarray:
        start = np.maximum(o + 1 - length, 0)
        n = o + 1 - start
        mean = (cumsum[o + 1] - cumsum[start]) / n
        return np.sqrt(np.maximum((cumsq[o + 1] - cumsq[start]) / n - mean**2, 0.0))

    scale = window_mean(season)
    fallback = np.abs(window_mean(o.max() + 1 if o.size else 1))
    scale = np.where(scale > 1e-9, scale, np.where(fallback > 1e-9, fallback, 1.0))

    columns: dict[str, np.ndarray] = {"horizon": h.astype(float)}
    first_k = np.ceil(h / season).astype(np.int64)
    seasonal = []
    for j in range(n_seasonal_lags):
        lag = _take(x, o + h - (first_k + j) * season) / scale
        columns[f"season_lag_{j}"] = lag
        seasonal.append(lag)
    stacked = np.vstack(seasonal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN rows stay NaN
        columns["season_lag_mean"] = np.nanmean(stacked, axis=0)
        columns["season_lag_median"] = np.nanmedian(stacked, axis=0)
    origin_profile = np.vstack(
        [_take(x, o - k * season) / scale for k in range(1, n_seasonal_lags + 1)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        columns["origin_profile"] = np.nanmean(origin_profile, axis=0)
        columns["origin_profile_median"] = np.nanmedian(origin_profile, axis=0)
    columns["deviation_now"] = _take(x, o) / scale - columns["origin_profile"]
    columns["deviation_now_median"] = _take(x, o) / scale - columns["origin_profile_median"]
    if week is not None:
        weeks_back = np.ceil(h / week).astype(np.int64)
        columns["week_lag"] = _take(x, o + h - weeks_back * week) / scale
        columns["week_lag_2"] = _take(x, o + h - (weeks_back + 1) * week) / scale
    for i in range(n_recent_lags):
        columns[f"lag_{i}"] = _take(x, o - i) / scale
    short = max(2, min(12, season // 4))
    columns["mean_short"] = window_mean(short) / scale
    columns["mean_week"] = window_mean(week if week else 7 * season) / scale
    columns["std_short"] = window_std(short) / scale
    columns["std_season"] = window_std(season) / scale
    columns["dev_season"] = (window_mean(short) - _mean_at(cumsum, o - season, short)) / scale
    if week is not None:
        columns["dev_week"] = (window_mean(short) - _mean_at(cumsum, o - week, short)) / scale
    if smooth_features:
        series = pd.Series(x)
        for span in SMOOTH_SPANS:
            ewm = series.ewm(span=span, adjust=True).mean().to_numpy()
            columns[f"ewm_{span}"] = _take(ewm, o) / scale
        rolling = series.rolling(short, min_periods=1).median().to_numpy()
        columns["median_short"] = _take(rolling, o) / scale
        columns["season_change"] = columns["season_lag_mean"] - columns["origin_profile"]
    columns["log_scale"] = np.log1p(scale)
    if target_times is not None:
        minutes = target_times.hour * 60 + target_times.minute
        columns["minute_of_day"] = np.asarray(minutes, dtype=float)
        columns["day_of_week"] = np.asarray(target_times.dayofweek, dtype=float)
    names = list(columns)
    return np.column_stack([columns[n] for n in names]), scale, names


def _mean_at(cumsum: np.ndarray, end: np.ndarray, length: int) -> np.ndarray:
    """Mean of the ``length`` values ending at index ``end`` (NaN when ``end`` < 0)."""
    end = np.asarray(end)
    valid = end >= 0
    e = np.clip(end, 0, None)
    start = np.maximum(e + 1 - length, 0)
    mean = (cumsum[e + 1] - cumsum[start]) / (e + 1 - start)
    return np.where(valid, mean, np.nan)
