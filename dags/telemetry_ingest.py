"""
### telemetry_ingest

Every 5 minutes: pull the interval's telemetry, validate it, store it, and refresh the features.

`extract_batch` → `validate_batch` → `store_batch` → (`update_offline_features`,
`apply_features`) → `materialize_features`; and `store_batch` → `score_anomalies`.

* Each run works on its data interval (`data_interval_start`..`data_interval_end`): the staged
  batch is named after it and `store_batch` replaces exactly that interval, so a rerun gives the
  same result.
* A batch that fails Great Expectations is moved to `quarantine/` with its report and the run
  fails without retrying (the error names the expectation, service and rows).
* `apply_features` (`feast apply`) keeps a fresh deployment working without a manual setup
  step; it writes the registry only when the declarations or the Feast configuration changed.
* `score_anomalies` scores the interval's 5-minute points with the champion anomaly detector
  (an empty file until a detector has been promoted); training drops the flagged points.
* Only paths travel through XCom.
"""

from __future__ import annotations

from airflow.sdk import CronDataIntervalTimetable, dag, task
from airflow.sdk.exceptions import AirflowFailException

from dags._common import DEFAULT_ARGS, START_DATE, current_interval, forescale_settings

INTERVAL_MINUTES = 5


@dag(
    dag_id="telemetry_ingest",
    schedule=CronDataIntervalTimetable(f"*/{INTERVAL_MINUTES} * * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["forescale", "telemetry", "features"],
    doc_md=__doc__,
)
def telemetry_ingest() -> None:
    """Telemetry → validation → raw store → feature store, every 5 minutes."""

    @task
    def extract_batch() -> str:
        from pipelines.telemetry import extract_batch

        start, end = current_interval(INTERVAL_MINUTES)
        return str(extract_batch(forescale_settings(), start, end))

    @task(retries=0)
    def validate_batch(batch_path: str) -> str:
        from pathlib import Path

        from pipelines.validation import BatchValidationError, validate_batch

        start, end = current_interval(INTERVAL_MINUTES)
        try:
            return str(validate_batch(forescale_settings(), Path(batch_path), start, end))
        except BatchValidationError as error:  # quarantined: a retry would find nothing
            raise AirflowFailException(str(error)) from error

    @task
    def store_batch(batch_path: str) -> list[str]:
        from pathlib import Path

        from pipelines.telemetry import store_batch

        return [str(p) for p in store_batch(forescale_settings(), Path(batch_path))]

    @task
    def update_offline_features(stored_files: list[str]) -> str:
        from pipelines.features import update_offline_features

        start, _ = current_interval(INTERVAL_MINUTES)  # only the interval's rows are new
        return str(update_offline_features(forescale_settings(), since=start))

    @task
    def apply_features() -> None:
        from pipelines.features import apply_features

        apply_features(forescale_settings())

    @task
    def materialize_features(offline_path: str) -> None:
        from pipelines.features import materialize_features

        _, end = current_interval(INTERVAL_MINUTES)
        materialize_features(forescale_settings(), end)

    @task
    def score_anomalies(stored_files: list[str]) -> str:
        from pipelines.anomalies import score_anomalies

        start, end = current_interval(INTERVAL_MINUTES)
        return str(score_anomalies(forescale_settings(), start, end))

    stored = store_batch(validate_batch(extract_batch()))
    score_anomalies(stored)
    applied = apply_features()
    stored >> applied
    applied >> materialize_features(update_offline_features(stored))


telemetry_ingest()
