"""Dagster assets of MALLES, one subpackage per stage; the folder name is the group name."""
