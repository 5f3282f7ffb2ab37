"""`forescale bench forecast`: accuracy, coverage, time and memory of the product's forecasters.

A benchmark, not a test. The forecasters are the product's own, built by
:func:`models.catalog.family_factories` from a complete params file: every family of its
``training.models`` with its ``training.model_params`` (ops traces: the repo's ``params.yaml``,
what the product runs, or ``--params FILE``; M4: the ``benchmarks/profiles/m4.yaml`` profile, or
``--m4-params FILE``). Two protocols on public data found under ``data_dir`` (file names and
series ids are discovered, never assumed):

1. **M4 Hourly** (every ``m4_hourly/*train*.csv`` with its ``*test*.csv``; long ``unique_id, ds,
   y``): horizon 48, m = 24, sMAPE / MASE / OWA against Naive2 on the same series, computed the
   M4 way. Step indices become hourly timestamps aligned so that every series' training part
   ends at the same instant (M4 starting dates are not public, so no calendar features).
2. **Ops traces** (``nab/data/**/*.csv``, ``cpu_traces/*.csv``, ``request_traces/*.csv``: a time
   column and a value column): 1-minute data is averaged to 5 minutes, coarser data (nyc_taxi at
   30 minutes) is kept. The last 20 % of each trace is the test period; an origin every 12 hours
   inside it (24 h when the test period is longer than 7 days); at each origin every method is
   fitted on what came before (at most 28 days) and forecasts 24 h. Relative MAE is
   ``sum |error| / sum |error of seasonal naive (one day earlier)|`` over all origins and the
   steps of the first hour (1 h) or the whole day (24 h), per trace; MAPE skips actuals near zero
   (below 1 % of the trace's mean); p90 coverage is over the 24 h steps. A reference row that
   reads the future, the hourly level oracle (each hour forecast as its actual median), shows
   how much of the score is the level and how much the shape inside the hour.

Settings are chosen on training data only (``--training-part``; M4: the last 48 hours of each
training series; ops: the 80 % before each test period, compared across trace sources), never
on test windows. :func:`report_document` renders a run's JSON as the Markdown page
``docs/benchmarks/forecast.md`` (``--report``).

Wall time and peak memory (resident set of this process and its children, sampled every 20 ms,
above the level before the method started) are measured per method in the same run.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from core.params import section
from core.schema import SERVICE, TS
from core.settings import REPO_ROOT
from models.base import Forecaster
from models.catalog import family_factories
from models.metrics import coverage, mape, mase, relative_mae, smape
from models.naive import SeasonalNaiveForecaster, naive2_path, seasonal_naive_path

M4_HORIZON = 48
M4_SEASON = 24
OPS_STEP = pd.Timedelta(minutes=5)
OPS_HISTORY_CAP = pd.Timedelta(days=28)  # the protocol's history window (training.history_days)
OPS_PARAMS = REPO_ROOT / "params.yaml"
M4_PARAMS = REPO_ROOT / "benchmarks" / "profiles" / "m4.yaml"
OPS_TEST_SHARE = 0.2
FORECAST_COLUMNS = ["dataset", "series", "ds", "method", "horizon_step", "y", "p50", "p90"]
LEVEL_ORACLE = "Level oracle (knows each hour's median)"


# --------------------------------------------------------------------------- measurement
@dataclass
class Meter:
    """Wall seconds and peak resident memory (MiB above the start level) of a code block."""

    seconds: float = 0.0
    peak_mib: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)


def _rss_mib() -> float:
    process = psutil.Process()
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


@contextmanager
def measure() -> Iterator[Meter]:
    """Measure wall time and peak RSS (process + children) of the ``with`` block."""
    meter = Meter()
    start_rss = _rss_mib()
    peak = [start_rss]

    def sample() -> None:
        while not meter._stop.wait(0.02):
            peak[0] = max(peak[0], _rss_mib())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        yield meter
    finally:
        meter.seconds = time.perf_counter() - start
        meter._stop.set()
        thread.join()
        peak[0] = max(peak[0], _rss_mib())
        meter.peak_mib = max(0.0, peak[0] - start_rss)


# --------------------------------------------------------------------------- data loading
def find_m4_pairs(data_dir: Path) -> list[tuple[Path, Path]]:
    """Every ``m4_hourly/*train*.csv`` with the ``*test*.csv`` of the same name."""
    pairs = []
    for train in sorted((data_dir / "m4_hourly").glob("*train*.csv")):
        test = train.with_name(train.name.replace("train", "test"))
        if test.exists():
            pairs.append((train, test))
    return pairs


def load_m4(train_path: Path, test_path: Path | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """M4 long files as (history, test) frames with hourly timestamps aligned at the origin.

    With ``test_path`` ``None`` the test file is not read and the test frame is empty (the
    training-part protocol never opens it).

    Raises:
        ValueError: If a file lacks ``unique_id``, ``ds`` or ``y``.
    """
    train = pd.read_csv(train_path)
    test = (
        pd.read_csv(test_path)
        if test_path is not None
        else pd.DataFrame({"unique_id": [], "ds": [], "y": []})
    )
    for frame, path in ((train, train_path), (test, test_path)):
        missing = {"unique_id", "ds", "y"} - set(frame.columns)
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    last = train.groupby("unique_id")["ds"].max()
    origin = pd.Timestamp("2000-03-01", tz="UTC")

    def convert(frame: pd.DataFrame) -> pd.DataFrame:
        offset = frame["ds"] - frame["unique_id"].map(last)
        return pd.DataFrame(
            {
                SERVICE: frame["unique_id"].astype(str),
                TS: (origin + pd.to_timedelta(offset, unit="h")).astype("datetime64[us, UTC]"),
                "requests": frame["y"].astype(float),
            }
        )

    return convert(train), convert(test)


def find_traces(data_dir: Path) -> list[Path]:
    """Every ops trace CSV under the known folders."""
    patterns = ["nab/data/**/*.csv", "cpu_traces/*.csv", "request_traces/*.csv"]
    found: list[Path] = []
    for pattern in patterns:
        found.extend(sorted(data_dir.glob(pattern)))
    return found


def load_trace(path: Path) -> pd.Series:
    """A trace as a float Series on a regular grid (5 minutes, or its native coarser step).

    The first column is the time (date strings, or Unix seconds when numeric), the first other
    numeric column is the value. Duplicated timestamps are averaged; timestamps are floored to
    the grid; gaps stay missing (the models interpolate them, the scores skip them).

    Raises:
        ValueError: If the file has no time or no numeric value column.
    """
    raw = pd.read_csv(path)
    if raw.shape[1] < 2:
        raise ValueError(f"{path}: need a time column and a value column, got {list(raw.columns)}")
    time_column = raw.columns[0]
    values = raw.drop(columns=time_column).select_dtypes(include=[np.number])
    if values.empty:
        raise ValueError(f"{path}: no numeric value column besides {time_column!r}")
    if pd.api.types.is_numeric_dtype(raw[time_column]):
        stamps = pd.to_datetime(raw[time_column], unit="s", utc=True)
    else:
        stamps = pd.to_datetime(raw[time_column], utc=True)
    series = pd.Series(values.iloc[:, 0].astype(float).to_numpy(), index=stamps).sort_index()
    native = pd.Series(series.index).diff().dropna().mode()
    step = max(OPS_STEP, pd.Timedelta(native.iloc[0])) if not native.empty else OPS_STEP
    grid = series.groupby(series.index.floor(step)).mean()
    full = pd.date_range(grid.index[0], grid.index[-1], freq=step)
    return grid.reindex(full)


# --------------------------------------------------------------------------- methods
def bench_methods(params_file: Path) -> dict[str, Callable[[], Forecaster]]:
    """The product's forecasters as a params file configures them (``training.models``).

    Built by :func:`models.catalog.family_factories`, the way training builds them. The naive
    family is the seasonal-naive yardstick every protocol scores anyway, so it is left out.

    Args:
        params_file: A complete params file (the repo's ``params.yaml`` or a profile).

    Returns:
        ``{family: factory}``.

    Raises:
        ValueError: If the file has no valid training section.
    """
    factories = family_factories(section(Path(params_file), "training"), where=str(params_file))
    return {family: f for family, f in factories.items() if family != SeasonalNaiveForecaster.name}


# --------------------------------------------------------------------------- M4
def run_m4(
    train_path: Path,
    test_path: Path,
    quick: bool,
    training_part: bool = False,
    params_file: Path = M4_PARAMS,
) -> tuple[list[dict], pd.DataFrame]:
    """Score sNaive, Naive2 and every configured forecaster on one M4 pair the M4 way.

    With ``training_part`` the test file is not read: the last 48 hours of each training series
    are the test, the rest the history (how the settings were chosen).
    """
    history, test = load_m4(train_path, None if training_part else test_path)
    if training_part:
        test = history.groupby(SERVICE, sort=True).tail(M4_HORIZON)
        history = history.drop(index=test.index)
    if quick:
        keep = sorted(history[SERVICE].unique())[:40]
        history, test = history[history[SERVICE].isin(keep)], test[test[SERVICE].isin(keep)]
    dataset = train_path.parent.name
    series_values = {s: g["requests"].to_numpy() for s, g in history.groupby(SERVICE, sort=True)}
    actuals = {s: g["requests"].to_numpy() for s, g in test.groupby(SERVICE, sort=True)}
    forecasts: dict[str, tuple[pd.DataFrame, Meter]] = {}
    for name, builder in (("sNaive", seasonal_naive_path), ("Naive2", naive2_path)):
        with measure() as meter:
            rows = []
            for service, values in series_values.items():
                path = builder(values, M4_SEASON, M4_HORIZON)
                rows.append(
                    pd.DataFrame(
                        {SERVICE: service, "horizon_step": range(1, 49), "p50": path, "p90": np.nan}
                    )
                )
            frame = pd.concat(rows, ignore_index=True)
        forecasts[name] = (frame, meter)
    for name, factory in bench_methods(params_file).items():
        with measure() as meter:
            frame = factory().fit(history).predict(M4_HORIZON)
        frame["horizon_step"] = frame.groupby(SERVICE).cumcount() + 1
        forecasts[name] = (frame, meter)
    scores: dict[str, dict[str, float]] = {}
    long_rows = []
    for name, (frame, meter) in forecasts.items():
        s_values, m_values, covered = [], [], []
        for service, group in frame.groupby(SERVICE, sort=True):
            y = actuals[service]
            p50 = group["p50"].to_numpy()
            s_values.append(smape(y, p50))
            m_values.append(mase(y, p50, series_values[service], M4_SEASON))
            if group["p90"].notna().all():
                covered.append(coverage(y, group["p90"].to_numpy()))
            long_rows.append(
                pd.DataFrame(
                    {
                        "dataset": dataset,
                        "series": service,
                        "ds": test.loc[test[SERVICE] == service, TS].to_numpy(),
                        "method": name,
                        "horizon_step": group["horizon_step"].to_numpy(),
                        "y": y,
                        "p50": p50,
                        "p90": group["p90"].to_numpy(),
                    }
                )
            )
        n = len(s_values)
        scores[name] = {
            "smape": float(np.mean(s_values)),
            "mase": float(np.mean(m_values)),
            "smape_median": float(np.median(s_values)),
            "mase_median": float(np.median(m_values)),
            "coverage_p90": float(np.mean(covered)) if covered else float("nan"),
            "wall_seconds": meter.seconds,
            "wall_seconds_per_series_mean": meter.seconds / n,
            "peak_mib": meter.peak_mib,
            "series": n,
        }
    naive2 = scores["Naive2"]
    results = []
    for name, score in scores.items():
        score["owa"] = 0.5 * (score["smape"] / naive2["smape"] + score["mase"] / naive2["mase"])
        results.append({"dataset": dataset, "method": name, **score})
    return results, pd.concat(long_rows, ignore_index=True)


# --------------------------------------------------------------------------- ops traces
def hourly_level_oracle(
    future: pd.DataFrame, origin: pd.Timestamp, step: pd.Timedelta, steps_hour: int
) -> pd.DataFrame:
    """A reference that reads the future: each step forecast as the actual median of its hour.

    Not a forecaster: it bounds what any forecast of the level alone can score (hour ``k`` after
    the origin gets the median of the actuals observed in that hour), so a relative MAE near it
    leaves only the shape inside the hour to gain. No p90.

    Args:
        future: Actuals after ``origin`` (``service, ts, requests``), gaps allowed.
        origin: The forecast origin.
        step: The trace's step.
        steps_hour: Steps per hour.

    Returns:
        ``service, ts, p50, p90, horizon_step``, one row per actual.
    """
    steps = ((future[TS] - origin) / step).round().astype(int).to_numpy()
    hour = (steps - 1) // steps_hour
    medians = future["requests"].groupby(hour).transform("median")
    return pd.DataFrame(
        {
            SERVICE: future[SERVICE].to_numpy(),
            TS: future[TS].to_numpy(),
            "p50": medians.to_numpy(),
            "p90": np.nan,
            "horizon_step": steps,
        }
    )


def trace_origins(index: pd.DatetimeIndex) -> tuple[pd.Timestamp, list[pd.Timestamp]]:
    """Start of the test period (last 20 %) and the forecast origins inside it."""
    test_start = index[math.floor(len(index) * (1 - OPS_TEST_SHARE))]
    test_length = index[-1] - test_start
    every = pd.Timedelta(hours=24) if test_length > pd.Timedelta(days=7) else pd.Timedelta(hours=12)
    origins = []
    origin = test_start
    while origin + pd.Timedelta(hours=1) <= index[-1]:
        origins.append(origin)
        origin += every
    return test_start, origins


def run_trace(
    path: Path, quick: bool, training_part: bool = False, params_file: Path = OPS_PARAMS
) -> tuple[list[dict], pd.DataFrame]:
    """Run the ops protocol on one trace for every configured forecaster.

    With ``training_part`` the protocol runs on the first 80 % of the trace only (its own last
    20 % becoming the test period): the test period is never seen.
    """
    series = load_trace(path)
    if training_part:
        test_start, _ = trace_origins(series.index)
        series = series[series.index < test_start]
    step = pd.Timedelta(series.index.freq) if series.index.freq else OPS_STEP
    steps_day = int(pd.Timedelta(days=1) / step)
    steps_hour = max(1, int(pd.Timedelta(hours=1) / step))
    _, origins = trace_origins(series.index)
    if quick:
        origins = origins[:3]
    name = path.stem
    frame = pd.DataFrame({SERVICE: name, TS: series.index, "requests": series.to_numpy()})
    frame = frame.dropna(subset=["requests"])
    frame[TS] = frame[TS].astype("datetime64[us, UTC]")
    methods: dict[str, Callable[[], Forecaster]] = {"sNaive": SeasonalNaiveForecaster}
    methods.update(bench_methods(params_file))
    rows = []
    meters: dict[str, list[Meter]] = {m: [] for m in methods}
    meters[LEVEL_ORACLE] = []
    for origin in origins:
        past = frame[(frame[TS] <= origin) & (frame[TS] > origin - OPS_HISTORY_CAP)]
        future = frame[(frame[TS] > origin) & (frame[TS] <= origin + pd.Timedelta(days=1))]
        if len(past) < 2 or future.empty:
            continue
        for method, factory in methods.items():
            with measure() as meter:
                forecast = factory().fit(past).predict(steps_day)
            meters[method].append(meter)
            forecast["horizon_step"] = np.arange(1, len(forecast) + 1)
            joined = forecast.merge(future, on=[SERVICE, TS], how="inner")
            joined["method"] = method
            joined["origin"] = origin
            rows.append(joined)
        oracle = hourly_level_oracle(future, origin, step, steps_hour)  # a row per actual
        rows.append(
            oracle.assign(
                requests=future["requests"].to_numpy(), method=LEVEL_ORACLE, origin=origin
            )
        )
        meters[LEVEL_ORACLE].append(Meter())
    scored = pd.concat(rows, ignore_index=True).rename(columns={"requests": "y"})
    baseline = scored[scored["method"] == "sNaive"][["origin", TS, "p50"]].rename(
        columns={"p50": "naive"}
    )
    scored = scored.merge(baseline, on=["origin", TS], how="left")
    near_zero = 0.01 * float(np.nanmean(np.abs(series.to_numpy())))
    results = []
    for method, group in scored.groupby("method", sort=False):
        hour = group[group["horizon_step"] <= steps_hour]
        record: dict[str, Any] = {
            "dataset": "ops",
            "trace": name,
            "method": method,
            "origins": int(group["origin"].nunique()),
            "step": str(step),
        }
        for label, part in (("1h", hour), ("24h", group)):
            y, p50 = part["y"].to_numpy(), part["p50"].to_numpy()
            record[f"relative_mae_{label}"] = relative_mae(y, p50, part["naive"].to_numpy())
            record[f"mape_{label}"] = mape(y, p50, min_abs_actual=near_zero)
        has_p90 = group["p90"].notna().any()
        record["coverage_p90"] = coverage(group["y"], group["p90"]) if has_p90 else math.nan
        seconds = [m.seconds for m in meters[method]]
        peaks = [m.peak_mib for m in meters[method]]
        record.update(
            {
                "wall_seconds": float(np.sum(seconds)),
                "wall_seconds_per_fit_median": float(np.median(seconds)),
                "wall_seconds_per_fit_mean": float(np.mean(seconds)),
                "peak_mib": float(np.max(peaks)),
                "peak_mib_median": float(np.median(peaks)),
                "peak_mib_mean": float(np.mean(peaks)),
            }
        )
        results.append(record)
    long = pd.DataFrame(
        {
            "dataset": "ops",
            "series": name,
            "ds": scored[TS],
            "method": scored["method"],
            "horizon_step": scored["horizon_step"],
            "y": scored["y"],
            "p50": scored["p50"],
            "p90": scored["p90"],
            "origin": scored["origin"],
        }
    )
    return results, long


def summarize_ops(per_trace: pd.DataFrame) -> list[dict]:
    """Median relative MAE over traces, share beating seasonal naive, coverage, time, memory."""
    out = []
    for method, group in per_trace.groupby("method", sort=False):
        covered = group["coverage_p90"].dropna()  # empty for a method without a p90
        out.append(
            {
                "dataset": "ops",
                "method": method,
                "traces": len(group),
                "relative_mae_1h_median": float(group["relative_mae_1h"].median()),
                "relative_mae_24h_median": float(group["relative_mae_24h"].median()),
                "relative_mae_1h_mean": float(group["relative_mae_1h"].mean()),
                "relative_mae_24h_mean": float(group["relative_mae_24h"].mean()),
                "share_beating_snaive_1h": float((group["relative_mae_1h"] < 1).mean()),
                "share_beating_snaive_24h": float((group["relative_mae_24h"] < 1).mean()),
                "mape_1h_median": float(group["mape_1h"].median()),
                "mape_24h_median": float(group["mape_24h"].median()),
                "coverage_p90_median": float(covered.median()) if len(covered) else math.nan,
                "coverage_p90_mean": float(covered.mean()) if len(covered) else math.nan,
                "wall_seconds": float(group["wall_seconds"].sum()),
                "wall_seconds_per_trace_median": float(group["wall_seconds"].median()),
                "wall_seconds_per_trace_mean": float(group["wall_seconds"].mean()),
                "peak_mib": float(group["peak_mib"].max()),
                "peak_mib_per_trace_median": float(group["peak_mib"].median()),
                "peak_mib_per_trace_mean": float(group["peak_mib"].mean()),
            }
        )
    return out


# --------------------------------------------------------------------------- report
def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_report(m4: list[dict], ops: list[dict]) -> str:
    """The benchmark tables as Markdown."""
    lines = []
    if m4:
        lines += [
            "### M4 Hourly (horizon 48, m = 24; OWA vs Naive2 on the same series)",
            "",
            "sMAPE and MASE are means over series (the M4 way, OWA uses them) / medians.",
            "",
            (
                "| dataset | method | series | sMAPE mean / median | MASE mean / median | OWA"
                " | p90 coverage | wall s | s/series (mean) | peak MiB |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in m4:
            lines.append(
                f"| {r['dataset']} | {r['method']} | {r['series']} | {_fmt(r['smape'])} / "
                f"{_fmt(r['smape_median'])} | {_fmt(r['mase'])} / {_fmt(r['mase_median'])} | "
                f"{_fmt(r['owa'])} | {_fmt(r['coverage_p90'])} | "
                f"{_fmt(r['wall_seconds'], 1)} | {_fmt(r['wall_seconds_per_series_mean'], 3)} | "
                f"{_fmt(r['peak_mib'], 0)} |"
            )
        lines.append("")
    if ops:
        lines += [
            "### Ops traces (relative MAE vs seasonal naive one day earlier, per trace)",
            "",
            "Relative MAE: median / mean over traces; MAPE: median over traces.",
            "",
            (
                "| method | traces | relMAE 1h | relMAE 24h | beats sNaive 1h | beats sNaive 24h"
                " | MAPE 1h | MAPE 24h | p90 cov (median / mean) | wall s total"
                " | s/trace median / mean | peak MiB median / mean |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in ops:
            lines.append(
                f"| {r['method']} | {r['traces']} | {_fmt(r['relative_mae_1h_median'])} / "
                f"{_fmt(r['relative_mae_1h_mean'])} | {_fmt(r['relative_mae_24h_median'])} / "
                f"{_fmt(r['relative_mae_24h_mean'])} | {r['share_beating_snaive_1h']:.0%} | "
                f"{r['share_beating_snaive_24h']:.0%} | {_fmt(r['mape_1h_median'], 1)} | "
                f"{_fmt(r['mape_24h_median'], 1)} | {_fmt(r['coverage_p90_median'])} / "
                f"{_fmt(r['coverage_p90_mean'])} | {_fmt(r['wall_seconds'], 1)} | "
                f"{_fmt(r['wall_seconds_per_trace_median'], 1)} / "
                f"{_fmt(r['wall_seconds_per_trace_mean'], 1)} | "
                f"{_fmt(r['peak_mib_per_trace_median'], 0)} / "
                f"{_fmt(r['peak_mib_per_trace_mean'], 0)} |"
            )
    return "\n".join(lines)


def report_document(report: dict) -> str:
    """The benchmark's Markdown page from its JSON (what ``--json`` writes).

    The M4 table, the ops summary, and one row per trace with every method's 24 h relative MAE
    (the figure the issue's robustness target is on), its 1 h figure and the p90 coverage.

    Args:
        report: The dictionary :func:`run_forecast_bench` returns (or its JSON, read back).

    Returns:
        The page.
    """

    def number(value: Any, digits: int = 3) -> str:
        return _fmt(float("nan") if value is None else value, digits)

    per_trace = pd.DataFrame(report.get("ops_per_trace") or [])
    ops = [{k: (math.nan if v is None else v) for k, v in r.items()} for r in report["ops"]]
    m4 = [{k: (math.nan if v is None else v) for k, v in r.items()} for r in report["m4"]]
    lines = [
        "# Forecast benchmark",
        "",
        "Generated by `forescale bench forecast --report` from the run's JSON; do not edit.",
        "",
        (
            f"- data: {per_trace['trace'].nunique() if not per_trace.empty else 0} ops traces, "
            f"{max((r.get('series', 0) for r in m4), default=0)} M4 Hourly series"
            f"{' (quick subset)' if report.get('quick') else ''}"
            f"{' (training parts only)' if report.get('training_part') else ''}"
        ),
        (
            f"- ops forecasters: `{Path(str(report.get('params_file', 'params.yaml'))).name}`; "
            f"M4 forecasters: `{Path(str(report.get('m4_params_file', 'm4.yaml'))).name}`"
        ),
        f"- wall time: {number(report.get('wall_seconds'), 0)} s (summed over the runs)",
        "",
        markdown_report(m4, ops),
        "",
    ]
    if not per_trace.empty:
        methods = [m for m in per_trace["method"].unique() if m != "sNaive"]
        table = per_trace.pivot_table(
            index="trace", columns="method", values="relative_mae_24h", aggfunc="first"
        )
        lines += [
            "### Ops traces, one row per trace: relative MAE 24 h (1 h in brackets)",
            "",
            "Relative MAE against seasonal naive one day earlier over every origin of the trace.",
            "",
            "| trace | origins | " + " | ".join(methods) + " |",
            "|---|---|" + "---|" * len(methods),
        ]
        hour = per_trace.pivot_table(
            index="trace", columns="method", values="relative_mae_1h", aggfunc="first"
        )
        origins = per_trace.groupby("trace")["origins"].max()
        for trace in table.index:
            cells = [f"{number(table.at[trace, m])} ({number(hour.at[trace, m])})" for m in methods]
            lines.append(f"| {trace} | {origins[trace]} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def merge_reports(reports: list[dict]) -> dict:
    """One report from the JSON of runs on parts of the data (e.g. one folder each).

    M4 rows and per-trace rows are concatenated and the ops summary is recomputed over every
    trace; the wall time is the sum.

    Args:
        reports: Reports of :func:`run_forecast_bench`, all of the same params files.

    Returns:
        The merged report.

    Raises:
        ValueError: If there is no report or they measured different params files.
    """
    if not reports:
        raise ValueError("no report to merge")
    files = {(r.get("params_file"), r.get("m4_params_file")) for r in reports}
    if len(files) > 1:
        raise ValueError(f"the reports measured different params files: {sorted(map(str, files))}")
    per_trace = [row for r in reports for row in r.get("ops_per_trace") or []]
    clean = [{k: (math.nan if v is None else v) for k, v in row.items()} for row in per_trace]
    merged = dict(reports[0])
    merged.update(
        {
            "m4": [row for r in reports for row in r.get("m4") or []],
            "ops": _json_safe(summarize_ops(pd.DataFrame(clean))) if clean else [],
            "ops_per_trace": per_trace,
            "wall_seconds": float(sum(r.get("wall_seconds") or 0.0 for r in reports)),
            "data_dir": ", ".join(str(r.get("data_dir", "")) for r in reports),
            "quick": any(r.get("quick") for r in reports),
            "training_part": any(r.get("training_part") for r in reports),
        }
    )
    return merged


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def run_forecast_bench(
    data_dir: Path,
    json_path: Path | None = None,
    forecasts_path: Path | None = None,
    quick: bool = False,
    n_jobs: int = 2,
    training_part: bool = False,
    params_file: Path = OPS_PARAMS,
    m4_params_file: Path = M4_PARAMS,
    report_path: Path | None = None,
) -> dict:
    """Run both protocols, print the Markdown table, optionally write JSON and forecasts.

    Args:
        data_dir: Folder with the shared-data layout (``m4_hourly/``, ``nab/data/``,
            ``cpu_traces/``, ``request_traces/``); missing parts are skipped.
        json_path: Where to write the figures as JSON.
        forecasts_path: Where to write every scored forecast (``.parquet`` or ``.csv``).
        quick: Smaller run (40 M4 series, 3 origins per trace) for smoke tests.
        training_part: Run both protocols on the training data only (M4: the last 48 hours of
            each training series as the test; ops: the first 80 % of each trace), the way the
            settings were chosen; the test data is never used.
        n_jobs: Processes running the M4 pairs and ops traces in parallel (each method is
            timed inside them).
        params_file: The params file whose forecasters the ops protocol runs (default: the
            repo's ``params.yaml``, what the product runs).
        m4_params_file: The params file whose forecasters the M4 protocol runs (default: the
            ``benchmarks/profiles/m4.yaml`` profile).
        report_path: Where to write the Markdown report (:func:`report_document`).

    Returns:
        ``{"m4": [...], "ops": [...], "ops_per_trace": [...], "wall_seconds": ...}``.

    Raises:
        ValueError: If ``data_dir`` holds none of the expected data.
    """
    from rich.console import Console

    data_dir = Path(data_dir)
    started = time.perf_counter()
    pairs = find_m4_pairs(data_dir)
    traces = find_traces(data_dir)
    if not pairs and not traces:
        raise ValueError(f"{data_dir}: no m4_hourly/*train*.csv pairs and no ops trace CSVs")
    bench_methods(params_file)  # a bad params file fails here, not in a worker
    bench_methods(m4_params_file)
    m4_results: list[dict] = []
    per_trace: list[dict] = []
    long_frames: list[pd.DataFrame] = []
    with ProcessPoolExecutor(max_workers=max(1, n_jobs)) as pool:
        # M4 (one long task) first, so the traces fill the other worker meanwhile.
        m4_jobs = [
            pool.submit(run_m4, train, test, quick, training_part, m4_params_file)
            for train, test in pairs
        ]
        for results, long in pool.map(
            run_trace,
            traces,
            [quick] * len(traces),
            [training_part] * len(traces),
            [params_file] * len(traces),
        ):
            per_trace.extend(results)
            long_frames.append(long)
        for job in m4_jobs:
            results, long = job.result()
            m4_results.extend(results)
            long_frames.append(long)
    ops_summary = summarize_ops(pd.DataFrame(per_trace)) if per_trace else []
    report = {
        "m4": m4_results,
        "ops": ops_summary,
        "ops_per_trace": per_trace,
        "wall_seconds": time.perf_counter() - started,
        "data_dir": str(data_dir),
        "quick": quick,
        "training_part": training_part,
        "params_file": str(params_file),
        "m4_params_file": str(m4_params_file),
    }
    Console().print(
        markdown_report(m4_results, ops_summary), markup=False, highlight=False, soft_wrap=True
    )
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(_json_safe(report), indent=2, default=str))
    if report_path is not None:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(report_document(_json_safe(report)))
    if forecasts_path is not None and long_frames:
        forecasts = pd.concat(long_frames, ignore_index=True)
        forecasts["ds"] = forecasts["ds"].astype(str)
        if "origin" in forecasts.columns:  # ops rows only; M4 rows have no origin
            forecasts["origin"] = forecasts["origin"].astype(str)
        Path(forecasts_path).parent.mkdir(parents=True, exist_ok=True)
        if str(forecasts_path).endswith(".csv"):
            forecasts.to_csv(forecasts_path, index=False)
        else:
            forecasts.to_parquet(forecasts_path, index=False)
    return report
