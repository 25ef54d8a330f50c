"""Dagster definitions, jobs, schedules, sensors and the `malles` CLI."""
