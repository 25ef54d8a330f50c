"""The market over time (issue: the market simulation): occasions of a period replayed as a population, each
deciding among a consideration set plus an outside option "other", scored at the market level
(docs/evaluation-protocol.md, "Market-level evaluation").

Modules (plain functions, no dagster import; the assets come with the simulation itself):
- occasions.py: the occasions of a period and their consideration sets with option features;
- metrics.py: the market-level metrics (share_jsd_cw, units_wape_pw, coverage, persistence, residuals,
  share_cv_cw, expected calibration error, elasticities and diversion ratios).
"""
