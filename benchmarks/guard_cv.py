"""`forescale bench guard-cv`: choose the ensemble guard's ratio by leave-one-source-out CV.

On the training part of every ops trace (the 80 % before the bench's test period; the test
period is never read), at the last ``n_origins`` daily origins of its own last 20 %, the
params file's ensemble (guard off) is fitted and its combination and members forecast the next
day and, from the fresher history, the day after. That is all the guard needs: at origin ``t``
the guard compares the ensemble fitted at ``t - 1 day`` with seasonal naive on the day before
``t`` and keeps the combination or hands the day after ``t`` to seasonal naive. Every candidate
ratio is scored per trace (relative MAE against seasonal naive over the origins), and the ratio
is chosen with one source of traces left out at a time (a source: the trace folder plus the
first word of the file name, e.g. ``cpu_traces/azure``), by the mean over the other sources'
traces (ties: the lower maximum); the held-out source's figures are reported for each choice.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.forecast import (
    OPS_HISTORY_CAP,
    OPS_PARAMS,
    OPS_STEP,
    bench_methods,
    find_traces,
    load_trace,
    trace_origins,
)
from core.schema import SERVICE, TS
from models.ensemble import NAIVE, EnsembleForecaster

DAY = pd.Timedelta(days=1)
COMBINATION = "ensemble"
DEFAULT_RATIOS = (1.0, 1.1, 1.2, 1.5, 2.0)


def trace_source(path: Path) -> str:
    """The source of a trace: its folder and the first word of its file name."""
    word = re.split(r"[_\-.]", path.stem, maxsplit=1)[0]
    return f"{path.parent.name}/{word}"


def trace_forecasts(path: Path, params_file: Path, n_origins: int) -> pd.DataFrame:
    """Forecasts of the ensemble (guard off) and its members on one trace's training part.

    Args:
        path: The trace.
        params_file: The params file whose ensemble is studied.
        n_origins: Daily origins (the last ones of the training part's own last 20 %).

    Returns:
        Rows ``service, ts, p50, member, origin, window, y`` (window 0: the day after the
        origin, window 1: the day after that, forecast from the fresher history).
    """
    series = load_trace(path)
    test_start, _ = trace_origins(series.index)
    series = series[series.index < test_start]
    step = pd.Timedelta(series.index.freq) if series.index.freq else OPS_STEP
    own_start, _ = trace_origins(series.index)
    origins = list(pd.date_range(own_start - DAY, series.index[-1] - DAY, freq=DAY))[-n_origins:]
    frame = pd.DataFrame({SERVICE: path.stem, TS: series.index, "requests": series.to_numpy()})
    frame = frame.dropna()
    frame[TS] = frame[TS].astype("datetime64[us, UTC]")
    steps_day = int(DAY / step)
    factory = bench_methods(params_file)[COMBINATION]
    rows = []
    for origin in origins:
        past = frame[(frame[TS] <= origin) & (frame[TS] > origin - OPS_HISTORY_CAP)]
        if len(past) < 2 * steps_day:
            continue
        model = factory()
        if not isinstance(model, EnsembleForecaster):
            raise ValueError(  # noqa: TRY004 - a params file is input
                f"{params_file}: the {COMBINATION} family is not an ensemble"
            )
        model.guard_windows = 0
        model.fit(past)
        for window in (0, 1):
            end = origin + window * DAY
            history = frame[(frame[TS] <= end) & (frame[TS] > end - OPS_HISTORY_CAP)]
            forecasts = {COMBINATION: model.predict(steps_day, (0.5,), history=history)}
            for name, member in model.fitted_.items():
                forecasts[name] = member.predict(steps_day, (0.5,), history=history)
            for name, forecast in forecasts.items():
                rows.append(forecast.assign(member=name, origin=origin, window=window))
    if not rows:  # too short for a daily origin with a day before it
        return pd.DataFrame(columns=[SERVICE, TS, "p50", "member", "origin", "window", "y"])
    out = pd.concat(rows, ignore_index=True)
    return out.merge(frame.rename(columns={"requests": "y"}), on=[SERVICE, TS], how="left")


def guarded_scores(forecasts: pd.DataFrame, ratios: tuple[float, ...]) -> dict[str, float]:
    """Relative MAE of the guarded ensemble per candidate ratio (and ``inf``: no guard).

    Args:
        forecasts: :func:`trace_forecasts` rows of one trace.
        ratios: Candidate ``guard_max_ratio`` values.

    Returns:
        ``{"<ratio>": relative MAE}`` over the origins that have a guard day before them.
    """
    scored = forecasts.dropna(subset=["y"])
    if scored.empty:
        return {}
    errors = (
        scored.assign(abs_error=(scored["y"] - scored["p50"]).abs())
        .groupby(["member", "origin", "window"])["abs_error"]
        .sum()
    )
    candidates = (*ratios, np.inf)
    total = dict.fromkeys(candidates, 0.0)
    naive_total = 0.0
    origins = sorted(scored["origin"].unique())
    for origin in origins:
        before = origin - DAY
        keys = [(COMBINATION, before, 0), (NAIVE, before, 0), (COMBINATION, origin, 0)]
        if any(key not in errors.index for key in keys) or (NAIVE, origin, 0) not in errors:
            continue
        check = errors[COMBINATION, before, 0] / max(errors[NAIVE, before, 0], 1e-12)
        naive = errors[NAIVE, origin, 0]
        for ratio in candidates:
            total[ratio] += naive if check > ratio else errors[COMBINATION, origin, 0]
        naive_total += naive
    if naive_total <= 0:
        return {}
    return {str(ratio): value / naive_total for ratio, value in total.items()}


def leave_one_source_out(table: pd.DataFrame, ratios: tuple[float, ...]) -> list[dict]:
    """The ratio chosen without each source, and its figures on that source.

    Args:
        table: One row per trace: ``trace, source`` and one column per ratio (``str(ratio)``).
        ratios: The candidates to choose from.

    Returns:
        One record per held-out source.
    """
    columns = [str(r) for r in ratios]
    out = []
    for source in sorted(table["source"].unique()):
        train, test = table[table["source"] != source], table[table["source"] == source]
        if train.empty:
            continue
        chosen = min(columns, key=lambda c: (train[c].mean(), train[c].max(), float(c)))
        out.append(
            {
                "held_out": source,
                "traces": len(test),
                "chosen_ratio": float(chosen),
                "held_out_mean": float(test[chosen].mean()),
                "held_out_max": float(test[chosen].max()),
                "no_guard_mean": float(test[str(np.inf)].mean()),
                "no_guard_max": float(test[str(np.inf)].max()),
            }
        )
    return out


def run_guard_cv(
    data_dir: Path,
    params_file: Path = OPS_PARAMS,
    cache_dir: Path | None = None,
    n_origins: int = 6,
    ratios: tuple[float, ...] = DEFAULT_RATIOS,
    json_path: Path | None = None,
) -> dict:
    """Score the candidate guard ratios on every trace's training part and choose by LOSO CV.

    Args:
        data_dir: Folder with the shared-data layout (ops traces are discovered).
        params_file: The params file whose ensemble is studied.
        cache_dir: Keep each trace's forecasts here (``<trace>.parquet``) and reuse them.
        n_origins: Daily origins per trace.
        ratios: Candidate ``guard_max_ratio`` values.
        json_path: Where to write the figures.

    Returns:
        ``{"per_trace": [...], "loso": [...], "chosen_on_all": ratio}``.

    Raises:
        ValueError: If the folder holds no ops trace.
    """
    traces = find_traces(Path(data_dir))
    if not traces:
        raise ValueError(f"{data_dir}: no ops trace CSVs")
    rows = []
    for path in traces:
        cached = Path(cache_dir) / f"{path.stem}.parquet" if cache_dir is not None else None
        if cached is not None and cached.exists():
            forecasts = pd.read_parquet(cached)
        else:
            forecasts = trace_forecasts(path, params_file, n_origins)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                forecasts.to_parquet(cached)
        scores = guarded_scores(forecasts, ratios)
        if scores:
            rows.append({"trace": path.stem, "source": trace_source(path), **scores})
    table = pd.DataFrame(rows)
    loso = leave_one_source_out(table, ratios)
    everyone = table.assign(source="all")
    chosen = min((str(r) for r in ratios), key=lambda c: (table[c].mean(), table[c].max()))
    report = {
        "per_trace": table.to_dict(orient="records"),
        "loso": loso,
        "chosen_on_all": float(chosen),
        "mean": {c: float(everyone[c].mean()) for c in table.columns[2:]},
        "max": {c: float(everyone[c].max()) for c in table.columns[2:]},
        "params_file": str(params_file),
        "n_origins": n_origins,
    }
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2, default=str))
    return report
