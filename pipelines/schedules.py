"""Scheduled retraining: the main job re-runs nightly on whatever new transactions have landed."""

import dagster as dg

from pipelines.jobs import main_job

main_job_schedule = dg.ScheduleDefinition(
    job=main_job,
    cron_schedule="0 3 * * *",  # nightly, after the day's transaction files have landed
    default_status=dg.DefaultScheduleStatus.STOPPED,  # switched on from the UI by whoever operates it
    description="Nightly: ingest new landing files, rebuild episodes and features, re-score every method.",
)

SCHEDULES = [main_job_schedule]
