"""Log backtest results to the active MLflow run: overall metrics and the per-fold table.

The lead's :mod:`models.registry` owns experiments, runs and the model registry; this helper only
writes into whatever run is active (it starts none and configures nothing).
"""

from __future__ import annotations

import re

import mlflow
import numpy as np
import pandas as pd

from core.schema import SERVICE

WINDOW_COLUMNS = ("fold", "train_end")


def _metric_key(*parts: str) -> str:
    """An MLflow-safe metric key (letters, digits, ``_ - . /`` and spaces only)."""
    return re.sub(r"[^0-9A-Za-z_\-./ ]", "_", ".".join(p for p in parts if p))


def log_backtest(results: pd.DataFrame, prefix: str = "backtest") -> dict[str, float]:
    """Log a per-fold per-service backtest table (:func:`models.backtest.backtest`) to MLflow.

    Logs, in the active run: overall means of every numeric metric (``<prefix>.<metric>``) and
    the table itself, per fold and service with each fold's training end, as the artifact
    ``<prefix>_backtest.json``. Per-service means are not metrics of this run: a shard's run
    would hold thousands, MLflow links a run's metrics to every model logged in it, and
    registering each service's version would read them all again; each service's own run has
    its figures.

    Args:
        results: Rows ``fold, service, train_end, <metrics>...``.
        prefix: Metric key prefix, e.g. the model family.

    Returns:
        The overall metrics that were logged.

    Raises:
        ValueError: If the table is empty, lacks ``service``, or no MLflow run is active.
    """
    if results.empty or SERVICE not in results.columns:
        raise ValueError("backtest results must be a non-empty table with a 'service' column")
    if mlflow.active_run() is None:
        raise ValueError("log_backtest needs an active MLflow run (mlflow.start_run())")
    numeric = [
        c
        for c in results.select_dtypes(include=[np.number]).columns
        if c not in (*WINDOW_COLUMNS, "n")
    ]
    overall = {
        _metric_key(prefix, column): float(results[column].mean())
        for column in numeric
        if results[column].notna().any()
    }
    mlflow.log_metrics(overall)
    mlflow.log_param(_metric_key(prefix, "folds"), int(results["fold"].nunique()))
    table = results.copy()
    for column in table.columns:
        if pd.api.types.is_datetime64_any_dtype(table[column]):
            table[column] = table[column].astype(str)
    mlflow.log_table(table, artifact_file=f"{prefix}_backtest.json")
    return overall
