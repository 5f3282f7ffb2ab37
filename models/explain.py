"""Explanations: SHAP for LightGBM, components for Prophet, in plots and in words.

Two uses:

* :func:`log_model_explanations` logs, for each registered model version, a SHAP summary plot
  (LightGBM, TreeExplainer) or the Prophet components plot (trend, daily, weekly, events) as MLflow
  artifacts of the active run.
* :func:`peak_drivers` finds, at the peak steps of a forecast, which inputs pushed it up or down, as
  a share of the model's baseline, when the forecast is issued; :func:`explanation_in_words` puts
  them in words with the schedule's replicas, e.g.
  ``"18:00 peak: same time last week +41 %, Tuesday +12 %"`` (:func:`explain_peaks`: both).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from core.schema import SERVICE, TS, by_service
from models.base import Forecaster

TOP_DRIVERS = 3
EXPLAINERS_KEPT = 8  # boosters whose SHAP explainer is kept: a shard's distinct quantile models
PEAK_SPACING = pd.Timedelta(hours=2)
SHAP_SAMPLE_ROWS = 2000
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

FEATURE_LABELS: dict[str, str] = {
    "horizon": "forecast horizon",
    "season_lag_mean": "same time, mean of recent days",
    "season_lag_median": "same time, median of recent days",
    "origin_profile": "usual level at this hour (recent days)",
    "origin_profile_median": "usual level at this hour (median of recent days)",
    "deviation_now": "today running above/below usual",
    "deviation_now_median": "today running above/below usual (median)",
    "week_lag": "same time last week",
    "week_lag_2": "same time two weeks ago",
    "mean_short": "current level",
    "mean_week": "weekly level",
    "std_short": "recent volatility",
    "std_season": "daily volatility",
    "dev_season": "change vs yesterday",
    "dev_week": "change vs last week",
    "log_scale": "service size",
    "season_change": "usual change from now to then (daily shape)",
    "median_short": "recent median level",
    "ewm_3": "smoothed level (span 3 steps)",
    "ewm_12": "smoothed level (span 12 steps)",
    "ewm_48": "smoothed level (span 48 steps)",
    "minute_of_day": "time of day",
    "day_of_week": "day of week",
}


def feature_label(name: str, value: float | None = None) -> str:
    """A readable name for a model input; calendar inputs name their value (``Tuesday``).

    Args:
        name: The feature column name.
        value: The feature's value for the row being explained.

    Returns:
        The label.
    """
    if name == "day_of_week" and value is not None and np.isfinite(value):
        return WEEKDAYS[int(value) % 7]
    if name == "minute_of_day" and value is not None and np.isfinite(value):
        return f"{int(value) // 60:02d}:{int(value) % 60:02d} time of day"
    if name.startswith("season_lag_") and name.removeprefix("season_lag_").isdigit():
        days = int(name.removeprefix("season_lag_")) + 1
        return "same time yesterday" if days == 1 else f"same time {days} days ago"
    if name.startswith("lag_"):
        lag = int(name.removeprefix("lag_"))
        return "latest value" if lag == 0 else f"value {lag} steps earlier"
    return FEATURE_LABELS.get(name, name.replace("_", " "))


# --------------------------------------------------------------------------- LightGBM


def lightgbm_forecast_features(
    model: Any, horizon: int, history: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """The design matrix a LightGBM forecaster uses for its next ``horizon`` steps.

    Args:
        model: A fitted :class:`models.lgbm_model.LightGBMForecaster`.
        horizon: Steps ahead.
        history: Newer history (default: the model's own).

    Returns:
        ``(keys, features)``: ``service, ts`` per row, and the matrix (columns
        ``model.feature_names_``).
    """
    keys, features, _ = model.forecast_design(horizon, history)
    return keys, features


def _lightgbm_booster(model: Any, quantile: float = 0.5) -> Any:
    levels = sorted(model.models_)
    chosen = min(levels, key=lambda q: abs(q - quantile))
    return model.models_[chosen]


@lru_cache(maxsize=EXPLAINERS_KEPT)
def _tree_explainer(booster: Any) -> Any:
    """The SHAP TreeExplainer of a fitted booster, built once per booster object.

    Services that share a loaded forecaster (:func:`models.registry.forecasters_shared`) share
    its boosters; a fitted booster never changes, so its explainer is reused. The cache keys on
    the booster object and holds it, so a key is never another booster's.
    """
    import shap

    return shap.TreeExplainer(booster)


def shap_values(
    model: Any, features: np.ndarray, quantile: float = 0.5
) -> tuple[np.ndarray, float]:
    """SHAP values (TreeExplainer) of one quantile model of a LightGBM forecaster.

    Args:
        model: A fitted LightGBM forecaster.
        features: Rows of its design matrix.
        quantile: Which quantile model to explain (the nearest trained one).

    Returns:
        ``(values, expected_value)``: one row of contributions per input row, and the baseline.
    """
    explainer = _tree_explainer(_lightgbm_booster(model, quantile))
    values = np.asarray(explainer.shap_values(features))
    expected = float(np.ravel(explainer.expected_value)[0])
    return values, expected


def _log_lightgbm_summary(model: Any, history: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import shap

    _, features = lightgbm_forecast_features(model, model.horizon_, history)
    if len(features) > SHAP_SAMPLE_ROWS:
        rows = np.random.default_rng(0).choice(len(features), SHAP_SAMPLE_ROWS, replace=False)
        features = features[rows]
    values, _ = shap_values(model, features)
    shap.summary_plot(
        values, features, feature_names=[feature_label(n) for n in model.feature_names_], show=False
    )
    figure = plt.gcf()
    figure.set_size_inches(9, 6)
    figure.tight_layout()
    mlflow.log_figure(figure, "shap_summary.png")
    plt.close(figure)
    importance = pd.DataFrame(
        {"feature": model.feature_names_, "mean_abs_shap": np.abs(values).mean(axis=0)}
    )
    mlflow.log_text(
        importance.sort_values("mean_abs_shap", ascending=False).to_csv(index=False),
        "shap_importance.csv",
    )


def _lightgbm_drivers(
    model: Any, history: pd.DataFrame, peaks: dict[str, pd.DataFrame], quantile: float
) -> dict[str, list[list[tuple[str, float]]]]:
    """Each service's top SHAP contributions at its peak steps, from one design matrix and one
    SHAP call for all the services (a row's features and contributions are its own)."""
    services = list(peaks)
    history = history[history[SERVICE].isin(services)]
    last = history.groupby(SERVICE, sort=False)[TS].max()
    horizon = max(
        int((peaks[service][TS].max() - last[service]) / model.step_) + 1 for service in services
    )
    keys, features = lightgbm_forecast_features(model, max(horizon, 1), history)
    wanted = pd.concat([peaks[service][[SERVICE, TS]] for service in services], ignore_index=True)
    located = wanted.merge(keys.reset_index(), on=[SERVICE, TS], how="left")["index"]
    if located.isna().any():
        raise ValueError("a peak step is not a step of the model's forecast")
    rows = features[located.to_numpy(dtype=int)]
    values, expected = shap_values(model, rows, quantile)
    # The model output (in units of the service's recent level) is expected + sum(values), plus
    # the model's anchor if it corrects one; contributions are shown as a share of that forecast.
    anchor = model._anchor(rows) if hasattr(model, "_anchor") else 0.0
    totals = np.abs(expected + values.sum(axis=1) + anchor)
    effects = []
    for row, contributions, total in zip(rows, values, totals, strict=True):
        order = np.argsort(-np.abs(contributions))[:TOP_DRIVERS]
        scale = total if total > 1e-9 else 1.0
        effects.append(
            [
                (feature_label(model.feature_names_[i], row[i]), 100.0 * contributions[i] / scale)
                for i in order
            ]
        )
    out, first = {}, 0
    for service in services:
        out[service] = effects[first : first + len(peaks[service])]
        first += len(peaks[service])
    return out


# --------------------------------------------------------------------------- Prophet

PROPHET_COMPONENTS = {
    "daily": "daily pattern",
    "weekly": "weekly pattern",
    "holidays": "planned events",
    "trend": "trend",
}


def _prophet_components(model: Any, service: str, timestamps: pd.Series) -> pd.DataFrame:
    prophet = model.models_[service]
    frame = pd.DataFrame({"ds": pd.to_datetime(timestamps).dt.tz_localize(None).to_numpy()})
    return prophet.predict(frame)


def _log_prophet_components(model: Any, history: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    for service in sorted(model.models_):
        own = history[history[SERVICE] == service]
        if own.empty:
            continue
        forecast = _prophet_components(model, service, own[TS])
        figure = model.models_[service].plot_components(forecast)
        mlflow.log_figure(figure, f"prophet_components_{service}.png")
        plt.close(figure)


def _prophet_drivers(model: Any, peaks: pd.DataFrame) -> list[list[tuple[str, float]]]:
    out = []
    for service, rows in peaks.groupby(SERVICE, sort=False):
        components = _prophet_components(model, str(service), rows[TS])
        for _, comp in components.iterrows():
            base = abs(comp["trend"]) if abs(comp["trend"]) > 1e-9 else 1.0
            effects = [
                (label, 100.0 * comp[name] / base)
                for name, label in PROPHET_COMPONENTS.items()
                if name in comp and name != "trend"
            ]
            effects.sort(key=lambda item: -abs(item[1]))
            out.append(effects[:TOP_DRIVERS])
    return out


def _holt_winters_drivers(
    model: Any, history: pd.DataFrame, peaks: pd.DataFrame
) -> list[list[tuple[str, float]]]:
    """Daily and weekly pattern of a Holt-Winters forecast at each peak, in % of the level."""
    step = model.step_
    last = history[TS].max()
    horizon = max(1, int(np.ceil((peaks[TS].max() - last) / step)))
    components = model.components(horizon, history).set_index(TS)
    out = []
    for ts in peaks[TS]:
        if ts not in components.index:  # seasonal-naive fallback: nothing to split
            out.append([("same time last week", 0.0)])
            continue
        row = components.loc[ts]
        out.append(
            [
                ("daily pattern", 100.0 * float(np.expm1(row["daily"]))),
                ("weekly pattern", 100.0 * float(np.expm1(row["weekly"]))),
            ]
        )
    return out


# --------------------------------------------------------------------------- public API


def log_model_explanations(model: Forecaster, history: pd.DataFrame) -> None:
    """Log the explanation plots of a fitted model in the active MLflow run.

    LightGBM: SHAP summary plot and mean |SHAP| per feature (an ensemble: of its leading
    LightGBM member). Prophet: components plot per service. Other families have nothing to
    explain beyond their backtest plot.

    Args:
        model: The fitted forecaster.
        history: The history it was fitted on (rows to explain).
    """
    if model.name == "ensemble":
        for service in sorted(history[SERVICE].astype(str).unique()):
            leading = model.leading_member(service)  # type: ignore[attr-defined]
            if leading is not None and leading[1].name == "lightgbm":
                _log_lightgbm_summary(leading[1], history)
                return
    elif model.name == "lightgbm":
        _log_lightgbm_summary(model, history)
    elif model.name == "prophet":
        _log_prophet_components(model, history)


def peak_drivers(
    model: Forecaster,
    history: pd.DataFrame,
    forecast: pd.DataFrame,
    n_peaks: int = 3,
    quantile: float = 0.9,
) -> dict[str, dict[str, Any]]:
    """What pushed each service's forecast up or down at its peak steps.

    Computed where the model and its history are at hand (the forecast's issue), and put in
    words with the replicas later (:func:`explanation_in_words`). Services forecast by one
    LightGBM model are explained from one design matrix and one SHAP call.

    Args:
        model: The forecaster that made the forecast.
        history: The history the forecast was made from (long format, the forecast's services).
        forecast: The forecast: ``service, ts`` and ``p90`` (each service's peaks are its
            highest steps; the earliest steps when there is no ``p90``).
        n_peaks: How many peak steps to explain per service (at least two hours apart).
        quantile: The forecast quantile the schedule is sized on.

    Returns:
        Service -> ``{"family", "basis", "peaks": [{"ts", "effects": [[input, percent], ...]}]}``
        in plain JSON types, peaks in time order.

    Raises:
        ValueError: If a service forecast by a LightGBM, Holt-Winters or ensemble model has no
            rows in ``history``.
    """
    peaks = {service: _peak_steps(rows, n_peaks) for service, rows in by_service(forecast).items()}
    if model.name in ("lightgbm", "holt_winters", "ensemble"):
        missing = sorted(set(peaks) - set(history[SERVICE].astype(str).unique()))
        if missing:
            raise ValueError(f"no history to explain the forecast of {missing} from")
    return _drivers(model, history, peaks, quantile)


def _peak_steps(forecast: pd.DataFrame, n_peaks: int) -> pd.DataFrame:
    """One service's highest ``p90`` steps, at least :data:`PEAK_SPACING` apart, in time order."""
    ranking = forecast.assign(_peak=forecast.get("p90", np.nan))
    ranked = ranking.sort_values(["_peak", TS], ascending=[False, True])
    chosen: list[int] = []
    for index, ts in ranked[TS].items():
        if all(abs(ts - ranked.at[other, TS]) >= PEAK_SPACING for other in chosen):
            chosen.append(index)
        if len(chosen) == n_peaks:
            break
    return ranked.loc[chosen].sort_values(TS)


def _drivers(
    model: Forecaster,
    history: pd.DataFrame,
    peaks: dict[str, pd.DataFrame],
    quantile: float,
) -> dict[str, dict[str, Any]]:
    """:func:`peak_drivers` of the chosen peak steps, per service (``history`` long format)."""
    if model.name == "ensemble":
        out: dict[str, dict[str, Any]] = {}
        by_member: dict[str, tuple[Forecaster, list[str]]] = {}
        for service, rows in peaks.items():
            leading = model.leading_member(service)  # type: ignore[attr-defined]
            if leading is not None and leading[1].name in ("lightgbm", "prophet", "holt_winters"):
                by_member.setdefault(leading[0], (leading[1], []))[1].append(service)
            else:
                out[service] = _document(
                    model.name,
                    "the ensemble forecasts this service by seasonal naive (its guard, or a short "
                    "history): it repeats the same time of the previous day",
                    rows,
                    [[("same time yesterday", 0.0)]] * len(rows),
                )
        for name, (member, services) in by_member.items():
            inner = _drivers(member, history, {s: peaks[s] for s in services}, quantile)
            for service, document in inner.items():
                basis = f"ensemble member {name!r}: {document['basis']}"
                out[service] = {**document, "family": model.name, "basis": basis}
        return out
    effects: dict[str, list[list[tuple[str, float]]]]
    if model.name == "lightgbm":
        effects = _lightgbm_drivers(model, history, peaks, quantile)
        basis = "SHAP contributions relative to the model's baseline"
    elif model.name == "prophet":
        effects = {service: _prophet_drivers(model, rows) for service, rows in peaks.items()}
        basis = "Prophet components relative to the trend"
    elif model.name == "holt_winters":
        own = by_service(history)
        effects = {
            service: _holt_winters_drivers(model, own[service], rows)
            for service, rows in peaks.items()
        }
        basis = "Holt-Winters seasonal components relative to the smoothed level"
    else:
        effects = {s: [[("same time yesterday", 0.0)]] * len(rows) for s, rows in peaks.items()}
        basis = f"{model.name} repeats the same time of the previous day"
    return {
        service: _document(model.name, basis, rows, effects[service])
        for service, rows in peaks.items()
    }


def _document(
    family: str, basis: str, peaks: pd.DataFrame, effects: list[list[tuple[str, float]]]
) -> dict[str, Any]:
    """One service's drivers document: its peak steps' effects in plain JSON types."""
    return {
        "family": family,
        "basis": basis,
        "peaks": [
            {
                "ts": ts.isoformat(),
                "effects": [[str(label), float(effect)] for label, effect in drivers],
            }
            for ts, drivers in zip(peaks[TS], effects, strict=True)
        ],
    }


def explanation_in_words(drivers: dict[str, Any], schedule: pd.DataFrame) -> dict[str, Any]:
    """A service's :func:`peak_drivers` with its schedule's replicas, in words.

    Args:
        drivers: What :func:`peak_drivers` returned for the forecast the schedule was planned on.
        schedule: The service's schedule: ``ts, replicas, forecast_p90, ...``.

    Returns:
        ``{"family", "basis", "summary", "peaks": [{"ts", "replicas", "forecast", "drivers",
        "text"}]}``; a peak whose step the schedule does not hold is left out.
    """
    steps = schedule.set_index(TS)
    peaks = []
    for peak in drivers["peaks"]:
        ts = pd.Timestamp(peak["ts"])
        if ts not in steps.index:
            continue
        step = steps.loc[ts]
        replicas = int(step["replicas"])
        words = ", ".join(f"{label} {effect:+.0f} %" for label, effect in peak["effects"])
        peaks.append(
            {
                "ts": peak["ts"],
                "replicas": replicas,
                "forecast": float(step.get("forecast_p90", np.nan)),
                "drivers": [
                    {"input": label, "effect_pct": round(effect, 1)}
                    for label, effect in peak["effects"]
                ],
                "text": f"{ts:%a %H:%M} peak ({replicas} replicas): {words}",
            }
        )
    return {
        "family": drivers["family"],
        "basis": drivers["basis"],
        "summary": "; ".join(p["text"] for p in peaks),
        "peaks": peaks,
    }


def explain_peaks(
    model: Forecaster,
    history: pd.DataFrame,
    schedule: pd.DataFrame,
    n_peaks: int = 3,
    quantile: float = 0.9,
) -> dict[str, Any]:
    """Explain the forecast at the peak steps of one service's schedule, in words.

    :func:`peak_drivers` of the forecast the schedule holds, then :func:`explanation_in_words`.

    Args:
        model: The forecaster that made the schedule's forecast.
        history: The history the forecast was made from (one service).
        schedule: The service's schedule: ``service, ts, replicas, forecast_p90, ...``.
        n_peaks: How many peak steps to explain (at least two hours apart, highest first).
        quantile: The forecast quantile the schedule was sized on.

    Returns:
        ``{"family", "basis", "summary", "peaks": [{"ts", "replicas", "forecast", "drivers",
        "text"}]}``.
    """
    forecast = schedule[[SERVICE, TS]].assign(p90=schedule.get("forecast_p90", np.nan))
    service = str(schedule[SERVICE].iloc[0])
    drivers = peak_drivers(model, history, forecast, n_peaks, quantile)[service]
    return explanation_in_words(drivers, schedule)
