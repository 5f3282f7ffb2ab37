"""
### scorecard

Every day at 04:00 UTC: the shadow scorecard of every service.

`score` replays each service's stored telemetry of the last 7 complete UTC days under its own HPA
(the `hpa` settings in params.yaml), under what Forescale served (its published schedules, or the
shipped profile walked forward before the first one) and under the `last_week` and
`static_peak` baselines (`pipelines.scorecard.run_scorecard`). The cards go to
`artifacts/scorecards/<run end>/scorecard.json` with the per-minute replays, to the serving
store for the API and the go-live gate, and to MLflow (experiment `forescale-scorecard`, one plot
per service). `gate` then evaluates the go-live gate on the stored cards
(`pipelines.gate.run_gate`: moves services between shadow and active when `gate.auto` is true,
proposes otherwise). See docs/scorecard.md and docs/configuration.md.
"""

from __future__ import annotations

from airflow.sdk import CronDataIntervalTimetable, dag, task

from dags._common import DEFAULT_ARGS, START_DATE, current_interval, forescale_settings

INTERVAL_MINUTES = 24 * 60
DAYS = 7


@dag(
    dag_id="scorecard",
    schedule=CronDataIntervalTimetable("0 4 * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["forescale", "monitoring", "scorecard"],
    doc_md=__doc__,
)
def scorecard() -> None:
    """Daily shadow scorecard: every service against its own HPA."""

    @task
    def score() -> str:
        from pipelines.scorecard import run_scorecard

        _, end = current_interval(INTERVAL_MINUTES)
        return str(run_scorecard(forescale_settings(), days=DAYS, as_of=end))

    @task
    def gate(scorecard_path: str) -> str:
        from pipelines.gate import run_gate

        _, end = current_interval(INTERVAL_MINUTES)
        return str(run_gate(forescale_settings(), as_of=end))

    gate(score())


scorecard()
