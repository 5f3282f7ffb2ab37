"""
### drift_monitor

Every hour: is the fleet still behaving like the data the champions learned from?

`check_drift` → `drift_found` (short-circuit) → `announce_drift`.

* `check_drift` runs Evidently's data-drift preset on the last day of telemetry against the same
  hours one and two weeks earlier, and compares recent forecast errors with the champions'
  backtest errors (`pipelines.drift.run_drift_monitor`). The HTML report is written under
  `artifacts/drift/<window end>/` and logged to MLflow (experiment `forescale-drift`).
* A service announced as drifted is not announced again within `drift.cooldown_hours`
  (params.yaml), so it gets at most one drift-triggered retrain per cool-down.
* Only when a service drifted does `announce_drift` run and emit a `forescale_drift` asset event
  with extra `{services, report, result, reason}`; that event triggers `forecast_retrain`. When
  nothing drifted, the short-circuit skips it and no event is emitted.
"""

from __future__ import annotations

from airflow.sdk import CronDataIntervalTimetable, dag, task

from dags._common import DEFAULT_ARGS, DRIFT_ASSET, START_DATE, current_interval, forescale_settings

INTERVAL_MINUTES = 60


@dag(
    dag_id="drift_monitor",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["forescale", "monitoring", "evidently"],
    doc_md=__doc__,
)
def drift_monitor() -> None:
    """Hourly Evidently drift check; emits the drift asset event only when a service drifted."""

    @task
    def check_drift() -> str:
        from pipelines.drift import run_drift_monitor

        _, end = current_interval(INTERVAL_MINUTES)
        return str(run_drift_monitor(forescale_settings(), end=end))

    @task.short_circuit
    def drift_found(result_path: str) -> bool:
        from pipelines.drift import drift_found

        return drift_found(result_path)

    @task(outlets=[DRIFT_ASSET])
    def announce_drift(result_path: str, outlet_events=None) -> None:
        from pipelines.drift import drift_event_extra

        outlet_events[DRIFT_ASSET].extra = drift_event_extra(result_path)

    result = check_drift()
    drift_found(result) >> announce_drift(result)


drift_monitor()
