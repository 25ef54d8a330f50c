"""Dagster resources of MALLES: warehouse, MLflow tracking, SQL files, paths."""
