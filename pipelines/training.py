"""Training stage: backtest every model family, register the best, promote it if it wins.

For a shard of services, :func:`train_shard` builds the training set from the feature store
(point-in-time correct), runs a rolling-origin backtest of every configured family (Prophet,
LightGBM, ...), picks per service the family with the lowest backtest error, fits it on the whole
window, logs everything to MLflow and registers the model. The new version becomes ``champion``
only if its error beats the current champion's error measured on the same backtest folds (the
champion forecasting each fold from the same history, as it would in service); the first model
of a service always does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from core.params import section
from core.schema import (
    SERVICE,
    TARGET,
    TS,
    by_service,
    path_under,
    quantile_column,
    utc_timestamp,
    validate_service_name,
)
from core.settings import Settings
from models.backtest import backtest_forecasts, rolling_origin_splits, score_forecasts
from models.base import Forecaster, infer_step, services_by_model
from models.catalog import family_factories, forecaster_factory
from models.metrics import relative_mae
from models.registry import (
    champion,
    configure_mlflow,
    forecasters_shared,
    load_forecaster,
    log_shared_forecaster,
    promote,
    register_forecaster,
)
from models.tracking import log_backtest
from pipelines.telemetry import resolve_as_of

log = logging.getLogger(__name__)

ERROR_METRIC = "relative_mae"  # MAE of p50 / MAE of seasonal naive, averaged over folds


@dataclass(frozen=True)
class TrainingConfig:
    """The ``training`` section of params.yaml."""

    horizon_steps: int
    backtest_folds: int
    history_days: int
    shard_size: int
    families: tuple[str, ...]
    quantiles: tuple[float, ...]
    model_params: dict[str, dict[str, Any]]
    steps_per_day: int = 288

    @classmethod
    def from_params(cls, settings: Settings) -> TrainingConfig:
        """Read and validate the training section of the settings' parameters file.

        Raises:
            ValueError: If a family is unknown or a number is out of range.
        """
        return cls.from_file(settings.params_file, settings.step_minutes)

    @classmethod
    def from_file(cls, params_file: Path, step_minutes: int = 5) -> TrainingConfig:
        """Read and validate the training section of a parameters file.

        Args:
            params_file: A ``params.yaml``.
            step_minutes: The forecast step in minutes.

        Raises:
            ValueError: If a family is unknown or a number is out of range.
        """
        params = section(Path(params_file), "training")
        steps_per_hour = 60 // step_minutes
        families = tuple(params.get("models", ["prophet", "lightgbm"]))
        family_factories({**params, "models": list(families)})  # checks families and settings
        config = cls(
            horizon_steps=int(params.get("backtest_horizon_hours", 24)) * steps_per_hour,
            backtest_folds=int(params.get("backtest_folds", 3)),
            history_days=int(params.get("history_days", 28)),
            shard_size=int(params["shard_size"]),
            families=families,
            quantiles=tuple(float(q) for q in params.get("quantiles", [0.5, 0.9])),
            model_params={
                family: dict((params.get("model_params") or {}).get(family) or {})
                for family in families
            },
            steps_per_day=24 * steps_per_hour,
        )
        if config.backtest_folds < 1 or config.history_days < 1 or config.shard_size < 1:
            raise ValueError(f"training parameters must be positive: {config}")
        return config

    @property
    def min_history_steps(self) -> int:
        """Fewest steps a service needs to be trained: one horizon of its own history before
        the first backtest fold, then the folds."""
        return (self.backtest_folds + 1) * self.horizon_steps


def history_shortfall(history: pd.DataFrame, config: TrainingConfig) -> dict[str, str]:
    """Services with less history than training needs, each with why (cold start).

    Args:
        history: Long frame ``service, ts, requests`` (a shard's training window).
        config: The training section.

    Returns:
        Service -> ``"not enough history (N of M days)"`` for every service whose distinct
        steps are fewer than :attr:`TrainingConfig.min_history_steps`.
    """
    if history.empty:
        return {}
    steps_per_day = config.steps_per_day
    counts = history.groupby(SERVICE)[TS].nunique()
    need = config.min_history_steps
    return {
        str(service): (
            f"not enough history ({n / steps_per_day:.1f} of {need / steps_per_day:.0f} days)"
        )
        for service, n in counts.items()
        if n < need
    }


@dataclass
class FamilyChoice:
    """The training decision for a shard before registration (:func:`choose_families`).

    Attributes:
        best_family: Service -> the family with the lowest backtest error.
        errors: Backtest error per service (rows) and family (columns).
        fitted: Family -> that family fitted on the whole window of the services it won.
        backtests: Family -> its backtest forecasts and per-fold scores.
    """

    best_family: pd.Series
    errors: pd.DataFrame
    fitted: dict[str, Forecaster]
    backtests: dict[str, tuple[pd.DataFrame, pd.DataFrame]]
    cold: dict[str, str]


def choose_families(
    history: pd.DataFrame, config: TrainingConfig, progress: Callable[[str], None] | None = None
) -> FamilyChoice:
    """Backtest every configured family, pick per service the best, fit it on the whole window.

    The training decision of :func:`train_shard` without the registry: the replay benchmark
    trains with this same function.

    Args:
        history: Long frame ``service, ts, requests`` (the training window of a shard).
        config: The training section.
        progress: Called with a line per backtested family.

    Returns:
        The choice (see :class:`FamilyChoice`); services with too little history
        (:func:`history_shortfall`) are left out of it and listed in ``cold``.
    """
    cold = history_shortfall(history, config)
    history = history[~history[SERVICE].isin(list(cold))]
    if history.empty:
        return FamilyChoice(pd.Series(dtype=object), pd.DataFrame(), {}, {}, cold)
    backtests = {}
    for family in config.families:
        backtests[family] = _backtest_family(family, history, config)
        if progress:
            progress(f"  backtested {family} on {history[SERVICE].nunique()} service(s)")
    errors = pd.DataFrame(
        {
            family: scores.groupby(SERVICE)[ERROR_METRIC].mean()
            for family, (_, scores) in backtests.items()
        }
    )
    best_family = errors.idxmin(axis=1)
    fitted = {
        family: _factory(family, config)().fit(history[history[SERVICE].isin(members)])
        for family, members in best_family.groupby(best_family).groups.items()
    }
    return FamilyChoice(best_family, errors, fitted, backtests, cold)


def promotes(candidate_error: float, champion_error: float | None) -> bool:
    """The champion rule: a new model replaces the champion only if its backtest error is lower
    than the champion's on the same folds; the first model of a service always does."""
    return champion_error is None or candidate_error < champion_error


@dataclass
class ServiceResult:
    """What training decided for one service."""

    service: str
    family: str
    version: str
    backtest_error: float
    champion_error: float | None
    promoted: bool
    errors_by_family: dict[str, float]
    run_id: str | None


def plan_shards(settings: Settings, services: Sequence[str] | None = None) -> list[list[str]]:
    """Split the services into shards of ``training.shard_size`` for mapped training tasks.

    Args:
        settings: Runtime settings.
        services: Services to plan for (default: every service with stored telemetry).

    Returns:
        Lists of service names; empty when there is no service.

    Raises:
        ValueError: If a given service name is invalid.
    """
    from pipelines.telemetry import list_services

    names = (
        sorted(validate_service_name(s) for s in services)
        if services is not None
        else list_services(settings)
    )
    size = TrainingConfig.from_params(settings).shard_size
    return [names[i : i + size] for i in range(0, len(names), size)]


def training_history(
    settings: Settings, services: Sequence[str], end: datetime, days: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training set: 5-minute target history from the feature store, anomalies removed.

    Args:
        settings: Runtime settings.
        services: Services to include.
        end: End of the window (exclusive).
        days: Window length in days.

    Returns:
        ``(history, flagged)``: long frames ``service, ts, requests`` of the rows kept for
        training and of the rows dropped because the anomaly stage flagged them.

    Raises:
        ValueError: If the feature store has no rows for a service.
    """
    from pipelines.features import model_inputs

    end_ts = pd.Timestamp(end)
    history = model_inputs(settings, list(services), end_ts - pd.Timedelta(days=days), end_ts)
    history, flagged = _split_anomalies(settings, history)
    missing = sorted(set(services) - set(history[SERVICE]))
    if missing:
        raise ValueError(
            f"no training rows in the feature store for service(s) {missing} "
            f"between {end_ts - pd.Timedelta(days=days)} and {end_ts}"
        )
    return history.sort_values([SERVICE, TS]).reset_index(drop=True), flagged


def _drop_anomalies(settings: Settings, history: pd.DataFrame) -> pd.DataFrame:
    """Remove points the anomaly stage flagged (they would teach the model incidents)."""
    return _split_anomalies(settings, history)[0]


def _split_anomalies(
    settings: Settings, history: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split history into ``(kept, flagged)`` by the points the anomaly stage flagged."""
    from serving.store import ScheduleStore

    store = ScheduleStore(settings.schedule_db)
    start, end = history[TS].min(), history[TS].max() + pd.Timedelta(seconds=1)
    flagged = [
        (a.service, pd.Timestamp(a.ts))
        for service in history[SERVICE].unique()
        for a in store.anomalies(str(service), start.to_pydatetime(), end.to_pydatetime())
        if a.is_anomaly
    ]
    if not flagged:
        return history, history.iloc[:0]
    marks = pd.DataFrame(flagged, columns=[SERVICE, TS])
    marks[TS] = marks[TS].dt.floor(f"{settings.step_minutes}min").astype(history[TS].dtype)
    merged = history.merge(marks.drop_duplicates().assign(_flag=True), on=[SERVICE, TS], how="left")
    is_flagged = merged["_flag"].notna()
    merged = merged.drop(columns="_flag")
    return merged[~is_flagged], merged[is_flagged]


def record_cold_starts(
    settings: Settings, cold: dict[str, str], trained: Sequence[str], as_of: pd.Timestamp
) -> None:
    """Tell the serving API which services training left out, and which it has now trained.

    The API serves a service without a schedule the reactive floor; with a cold start record
    its ``reason`` says why (e.g. ``"not enough history (2.0 of 4 days)"``).

    Args:
        settings: Runtime settings (``schedule_db``).
        cold: Service -> why it was not trained.
        trained: Services trained in this run (their records are removed).
        as_of: End of the training window.
    """
    from serving.store import ScheduleStore

    store = ScheduleStore(settings.schedule_db)
    try:
        store.set_cold_starts(cold, trained, utc_timestamp(as_of).to_pydatetime())
    finally:
        store.dispose()


def train_shard(
    settings: Settings,
    services: Sequence[str],
    reason: str = "schedule",
    as_of: datetime | None = None,
    drift_report: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Train, backtest, register and maybe promote a model for every service of a shard.

    Args:
        settings: Runtime settings.
        services: The shard's services.
        reason: Why training runs: ``schedule``, ``drift`` or ``manual``; recorded in MLflow.
        as_of: End of the training window (default: end of stored telemetry).
        drift_report: Path of the drift report that triggered the run, if any.
        progress: Called with a line per backtested family and per registered service.

    Returns:
        Path of a JSON summary (one entry per service) under the artifacts folder.

    Raises:
        ValueError: If ``services`` is empty, a name is invalid or there is no telemetry.
    """
    if not services:
        raise ValueError("train_shard needs at least one service")
    services = [validate_service_name(s) for s in services]
    config = TrainingConfig.from_params(settings)
    end = resolve_as_of(settings, as_of)
    history, flagged = training_history(settings, services, end, config.history_days)
    configure_mlflow(settings)

    results: list[ServiceResult] = []
    with mlflow.start_run(run_name=f"retrain {services[0]}..{services[-1]}") as parent:
        mlflow.set_tags(
            {"reason": reason, "services": ",".join(services), "window_end": end.isoformat()}
        )
        if drift_report:
            mlflow.set_tag("drift_report", drift_report)
        mlflow.log_params(
            {
                "families": ",".join(config.families),
                "folds": config.backtest_folds,
                "horizon_steps": config.horizon_steps,
                "history_days": config.history_days,
            }
        )
        choice = choose_families(history, config, progress)
        for family, (_, scores) in choice.backtests.items():
            log_backtest(scores, prefix=f"backtest_{family}")
        backtests, errors, best_family, fitted = (
            choice.backtests,
            choice.errors,
            choice.best_family,
            choice.fitted,
        )
        if choice.cold:
            mlflow.set_tag("not_trained", json.dumps(choice.cold, sort_keys=True))
        for service, why in choice.cold.items():
            log.info("%s: not trained, %s", service, why)
            if progress:
                progress(f"  {service}: not trained, {why}")
        model_uris = {
            family: log_shared_forecaster(model, f"model-{family}")
            for family, model in fitted.items()
        }
        own_history, own_flagged = by_service(history), by_service(flagged)
        own_forecasts = {family: by_service(frame) for family, (frame, _) in backtests.items()}
        with forecasters_shared():  # previous champions shared by several services load once
            trained = [service for service in services if service not in choice.cold]
            champion_errors = _champion_errors(trained, own_history, config)
            for service in trained:
                family = str(best_family[service])
                forecasts = own_forecasts[family].get(service, backtests[family][0].iloc[0:0])
                results.append(
                    _register_service(
                        settings,
                        service,
                        family,
                        fitted[family],
                        model_uris[family],
                        errors.loc[service].to_dict(),
                        forecasts,
                        own_history.get(service, history.iloc[0:0]),
                        config,
                        champion_errors.get(service),
                        reason,
                        parent.info.run_id,
                        flagged_points(
                            own_flagged.get(service, flagged.iloc[0:0]), service, forecasts
                        ),
                    )
                )
                if progress:
                    r = results[-1]
                    progress(
                        f"  {service}: {family} v{r.version}, backtest error "
                        f"{r.backtest_error:.3f}, {'promoted' if r.promoted else 'not promoted'}"
                    )
        mlflow.log_metric("services_promoted", sum(r.promoted for r in results))
    record_cold_starts(settings, choice.cold, [r.service for r in results], end)

    out = path_under(
        settings.artifacts_dir, "training", f"{end:%Y%m%dT%H%M}", f"{services[0]}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "reason": reason,
                "window_end": end.isoformat(),
                "services": [asdict(r) for r in results],
                "not_trained": choice.cold,
            },
            indent=2,
        )
    )
    return out


def _register_service(
    settings: Settings,
    service: str,
    family: str,
    model: Forecaster,
    model_uri: str,
    errors_by_family: dict[str, float],
    own: pd.DataFrame,
    own_history: pd.DataFrame,
    config: TrainingConfig,
    champion_error: float | None,
    reason: str,
    parent_run_id: str,
    anomalies: pd.DataFrame,
) -> ServiceResult:
    """Log, register and maybe promote one service's model; ``own`` and ``own_history`` are
    that service's backtest forecasts and training window, ``champion_error`` its champion's
    backtest error (``None`` without a champion)."""
    scores = score_forecasts(own, config.quantiles)
    error = float(scores[ERROR_METRIC].mean())
    with mlflow.start_run(run_name=service, nested=True, parent_run_id=parent_run_id) as run:
        mlflow.set_tags({"service": service, "reason": reason, "model_family": family})
        mlflow.log_params({"family": family, "service": service})
        mlflow.log_metrics(
            {
                f"backtest_{ERROR_METRIC}_{f}": v
                for f, v in errors_by_family.items()
                if np.isfinite(v)
            }
        )
        for column in scores.columns:
            if column not in ("fold", SERVICE, "train_end", "n"):
                mlflow.log_metric(f"backtest_{column}", float(scores[column].mean()))
        plot = _forecast_plot(own, service, family, anomalies)
        mlflow.log_figure(plot, "forecast_vs_actual.png")
        mlflow.log_text(own.to_csv(index=False), "backtest_forecasts.csv")
        _log_explanation(model, own_history)
        candidate = register_forecaster(model_uri, service, model.name, error)
        promoted = promotes(error, champion_error)
        if promoted:
            promote(candidate)
        mlflow.log_metric(
            "champion_backtest_error",
            champion_error if champion_error is not None else float("nan"),
        )
        mlflow.set_tag("promoted", str(promoted))
    log.info(
        "%s: %s v%s error %.3f (champion %s) promoted=%s",
        service,
        family,
        candidate.version,
        error,
        champion_error,
        promoted,
    )
    return ServiceResult(
        service,
        family,
        candidate.version,
        error,
        champion_error,
        promoted,
        errors_by_family,
        run.info.run_id,
    )


def _champion_errors(
    services: Sequence[str], own_history: dict[str, pd.DataFrame], config: TrainingConfig
) -> dict[str, float]:
    """The backtest errors of the services' champions (services without one are left out);
    services whose champions are one loaded model are backtested together."""
    models: dict[str, Forecaster] = {}
    for service in services:
        current = champion(service)
        if current is not None:
            models[service] = load_forecaster(current)
    errors: dict[str, float] = {}
    for model, group in services_by_model(models):
        histories = {service: own_history[service] for service in group}
        errors.update(champion_backtest_errors(model, histories, config))
    return errors


def champion_backtest_error(
    model: Forecaster, history: pd.DataFrame, config: TrainingConfig
) -> float:
    """Backtest error of the model in service on one service's folds (see
    :func:`champion_backtest_errors`).

    Args:
        model: The champion (fitted earlier, not refitted here).
        history: One service's training window.
        config: The training section (folds and horizon).

    Returns:
        Its mean relative MAE over the folds.

    Raises:
        ValueError: If the champion forecasts no step of a fold.
    """
    if history.empty:
        raise ValueError("champion_backtest_error needs the service's history: it has no rows")
    service = str(history[SERVICE].iloc[0])
    return champion_backtest_errors(model, {service: history}, config)[service]


def champion_backtest_errors(
    model: Forecaster, histories: dict[str, pd.DataFrame], config: TrainingConfig
) -> dict[str, float]:
    """Backtest error of the model in service on each service's folds, forecasting from each
    origin.

    Services with the same folds are forecast in one call per fold: a forecast depends on the
    service's own history only.

    Args:
        model: The champion (fitted earlier, not refitted here).
        histories: Service -> its training window.
        config: The training section (folds and horizon).

    Returns:
        Service -> the mean relative MAE over its folds.

    Raises:
        ValueError: If the champion forecasts no step of a service's fold (names it).
    """
    by_folds: dict[tuple, list[str]] = {}
    for service, history in histories.items():
        splits = rolling_origin_splits(history, config.backtest_folds, config.horizon_steps)
        by_folds.setdefault(tuple(splits), []).append(service)
    values: dict[str, list[float]] = {service: [] for service in histories}
    seasons = {  # steps in a day: seasonal naive's lag
        service: 24 * 60 // int(infer_step(history).total_seconds() // 60)
        for service, history in histories.items()
    }
    for splits, services in by_folds.items():
        for train_end, test_start, test_end in splits:
            pasts = {s: histories[s][histories[s][TS] <= train_end] for s in services}
            together = pd.concat(pasts.values(), ignore_index=True)
            forecasts = by_service(
                model.predict(config.horizon_steps, quantiles=(0.5,), history=together)
            )
            for service in services:
                history = histories[service]
                actual = history[(history[TS] >= test_start) & (history[TS] <= test_end)]
                forecast = forecasts.get(service)
                joined = (
                    forecast.merge(actual, on=[SERVICE, TS], how="inner")
                    if forecast is not None
                    else actual.iloc[0:0]
                )
                if joined.empty:
                    raise ValueError(
                        f"champion {type(model).__name__} forecast no step of {service!r}'s "
                        f"fold {test_start}..{test_end}"
                    )
                naive = np.resize(
                    pasts[service][TARGET].to_numpy(float)[-seasons[service] :], len(joined)
                )
                values[service].append(
                    relative_mae(
                        joined[TARGET].to_numpy(float),
                        joined[quantile_column(0.5)].to_numpy(float),
                        naive,
                    )
                )
    return {service: float(np.mean(errors)) for service, errors in values.items()}


def _backtest_family(
    family: str, history: pd.DataFrame, config: TrainingConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    forecasts = backtest_forecasts(
        _factory(family, config),
        history,
        config.backtest_folds,
        config.horizon_steps,
        quantiles=config.quantiles,
    )
    return forecasts, score_forecasts(forecasts, config.quantiles)


def _factory(family: str, config: TrainingConfig) -> Callable[[], Forecaster]:
    """A constructor of the family with the quantiles and settings from params.yaml."""
    return forecaster_factory(family, config.model_params.get(family, {}), config.quantiles)


def flagged_points(flagged: pd.DataFrame, service: str, forecasts: pd.DataFrame) -> pd.DataFrame:
    """The service's flagged points in the span of the last backtest fold (the plotted one).

    Args:
        flagged: Rows dropped from training as anomalies (``service, ts, requests``), with the
            values they had; the backtest frame has no row at those times.
        service: The plotted service.
        forecasts: Backtest forecasts (``fold, service, ts, y, ...``).

    Returns:
        Frame ``ts, y`` for the plot.
    """
    own = forecasts[forecasts[SERVICE] == service]
    last = own[own["fold"] == own["fold"].max()]
    points = flagged[
        (flagged[SERVICE] == service) & flagged[TS].between(last[TS].min(), last[TS].max())
    ]
    return points[[TS, TARGET]].rename(columns={TARGET: "y"})


def _forecast_plot(
    forecasts: pd.DataFrame, service: str, family: str, anomalies: pd.DataFrame | None = None
) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.5))
    last = forecasts[forecasts["fold"] == forecasts["fold"].max()]
    ax.plot(last[TS], last["y"], color="black", lw=1, label="actual")
    ax.plot(last[TS], last["p50"], color="tab:blue", lw=1.2, label=f"{family} p50")
    if "p90" in last:
        ax.fill_between(
            last[TS], last["p50"], last["p90"], color="tab:blue", alpha=0.2, label="p50–p90"
        )
    if anomalies is not None and not anomalies.empty:
        ax.scatter(
            anomalies[TS],
            anomalies["y"],
            color="tab:red",
            marker="x",
            zorder=3,
            label="flagged anomaly",
        )
    ax.set_title(f"{service}: last backtest fold")
    ax.set_ylabel("requests/s")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    plt.close(fig)
    return fig


def _log_explanation(model: Forecaster, history: pd.DataFrame) -> None:
    """Log the model's explanation plots (SHAP summary, Prophet components) if it has any."""
    from models.explain import log_model_explanations

    log_model_explanations(model, history)
