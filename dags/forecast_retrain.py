"""
### forecast_retrain

Retrains the forecasters weekly (Monday 03:00 UTC) **or** as soon as `drift_monitor` emits a
`forescale_drift` asset event, whichever comes first (an asset-or-time schedule).

`resolve_trigger` → `plan_shards` → `train_shard` (one mapped task instance per shard of
`training.shard_size` services) → `summarize`; and `train_anomaly_model` (backtest the anomaly
detector on injected events, register `forescale-anomaly`, promote it if it beats the champion).

* The run records why it started: reason `drift` (asset-triggered: only the drifted services
  are retrained and the drift report path from the event's extra is recorded in MLflow) or
  `schedule` (the whole fleet). A manual run may pass the same keys in its conf:
  `{"reason": "drift", "services": ["checkout"], "report": "/path/report.html"}`.
* Each shard trains, backtests, registers and (if it beats the champion) promotes its models.
* Only service names and paths travel through XCom.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from dags._common import DEFAULT_ARGS, DRIFT_ASSET, START_DATE, forescale_settings

WEEKLY = CronTriggerTimetable("0 3 * * 1", timezone="UTC")


@dag(
    dag_id="forecast_retrain",
    schedule=AssetOrTimeSchedule(timetable=WEEKLY, assets=[DRIFT_ASSET]),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["forescale", "training", "mlflow"],
    doc_md=__doc__,
)
def forecast_retrain() -> None:
    """Weekly or drift-triggered retraining of every service's forecaster, mapped over shards."""

    @task(multiple_outputs=True)
    def resolve_trigger(triggering_asset_events=None, dag_run=None) -> dict:
        from pipelines.drift import resolve_retrain_trigger

        events = triggering_asset_events.get(DRIFT_ASSET, ()) if triggering_asset_events else ()
        return resolve_retrain_trigger(
            [dict(e.extra or {}) for e in events], dag_run.conf if dag_run else None
        )

    @task
    def plan_shards(services: list[str] | None) -> list[list[str]]:
        from pipelines.training import plan_shards

        return plan_shards(forescale_settings(), services)

    @task(retries=1, execution_timeout=timedelta(hours=2))
    def train_shard(
        services: list[str],
        retrain_reason: str,
        drift_report: str | None,
        data_interval_end: datetime | None = None,
    ) -> str:
        from pipelines.training import train_shard

        return str(
            train_shard(
                forescale_settings(),
                services,
                reason=retrain_reason,
                as_of=data_interval_end,
                drift_report=drift_report,
            )
        )

    @task(retries=1)
    def train_anomaly_model(data_interval_end: datetime | None = None) -> str:
        from pipelines.anomalies import train_anomaly_model

        return str(train_anomaly_model(forescale_settings(), as_of=data_interval_end))

    @task
    def summarize(shard_summaries: list[str], trigger: dict, run_id: str | None = None) -> str:
        from pipelines.drift import summarize_retrain

        return str(summarize_retrain(forescale_settings(), run_id, list(shard_summaries), trigger))

    trigger = resolve_trigger()
    shards = plan_shards(trigger["services"])
    summaries = train_shard.partial(
        retrain_reason=trigger["reason"], drift_report=trigger["report"]
    ).expand(services=shards)
    summarize(summaries, trigger)
    trigger >> train_anomaly_model()


forecast_retrain()
