"""
### schedule_publish

Every 5 minutes (each new telemetry interval): forecast the next hours with each service's
champion, turn the forecast into a replica schedule and publish it to the serving API's store
(read by KEDA `metrics-api`). A fresh forecast every 5 minutes is what `forescale bench replay`
measures (an hourly one serves forecasts up to an hour old at the moment a surge starts).

`check_rollbacks` → `plan_shards` → `forecast_shard` → `build_schedules` → `publish_schedules`
→ `prune_runs`, the middle three mapped over the shards (one task instance per shard of
`training.shard_size` services).

* `build_schedules` plans each service's risk quantile on the tail of its recent forecasts'
  errors over the last `schedule.tail_days`, a record kept per service and extended by the
  first run after each whole hour (see `docs/configuration.md`).
* `prune_runs` finally deletes forecast and schedule run folders older than
  `schedule.keep_days`.
* `check_rollbacks` first compares each champion's live error (the forecasts it served over the
  last `rollback.window_hours`) with the previous champion's backtest error and moves the
  `champion` alias back when it is worse by more than `rollback.margin`; the event is logged to
  MLflow (experiment `forescale-rollbacks`).

* The forecast origin and the publication time are the run's `data_interval_end`, and outputs
  are partitioned by it, so a rerun writes the same files and schedules.
* Only service names and paths travel through XCom.
"""

from __future__ import annotations

from airflow.sdk import CronDataIntervalTimetable, dag, task

from dags._common import DEFAULT_ARGS, START_DATE, current_interval, forescale_settings

INTERVAL_MINUTES = 5


@dag(
    dag_id="schedule_publish",
    schedule=CronDataIntervalTimetable(f"*/{INTERVAL_MINUTES} * * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["forescale", "forecast", "serving"],
    doc_md=__doc__,
)
def schedule_publish() -> None:
    """5-minute champion forecast → replica schedule → publication, mapped over shards."""

    @task
    def check_rollbacks() -> str:
        from pipelines.rollback import check_rollbacks

        _, now = current_interval(INTERVAL_MINUTES)
        return str(check_rollbacks(forescale_settings(), now=now))

    @task
    def plan_shards() -> list[list[str]]:
        from pipelines.training import plan_shards

        return plan_shards(forescale_settings())

    @task
    def forecast_shard(services: list[str]) -> str:
        from pipelines.publish import forecast_shard

        _, origin = current_interval(INTERVAL_MINUTES)
        return str(forecast_shard(forescale_settings(), services, as_of=origin))

    @task
    def build_schedules(forecast_path: str) -> str:
        from pipelines.publish import build_schedules

        return str(build_schedules(forescale_settings(), forecast_path))

    @task
    def publish_schedules(schedules_path: str) -> str:
        from pipelines.publish import publish_schedules

        _, published_at = current_interval(INTERVAL_MINUTES)
        return str(publish_schedules(forescale_settings(), schedules_path, as_of=published_at))

    @task
    def prune_runs() -> int:
        from pipelines.publish import prune_runs

        _, now = current_interval(INTERVAL_MINUTES)
        return len(prune_runs(forescale_settings(), now=now))

    shards = plan_shards()
    check_rollbacks() >> shards
    forecasts = forecast_shard.expand(services=shards)
    schedules = build_schedules.expand(forecast_path=forecasts)
    publish_schedules.expand(schedules_path=schedules) >> prune_runs()


schedule_publish()
