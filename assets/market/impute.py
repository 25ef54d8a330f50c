"""Demographics a customer lacks, imputed from behaviour (the first part of input augmentation, augment.py).
Plain functions, no dagster import.

Each field of customers.attributes (age, income, household size, ...) is imputed from behaviour on the train
period (select_customer_behaviour.sql: trips per week, spend, units and lines per trip, price level paid,
discount share, number of categories; select_customer_category_mix.sql: shares of the most bought
categories) by a classifier fitted on the customers who have the field (k nearest neighbours on standardised
features, or a multinomial logit). Only customers with train purchases are imputed. imputation_accuracy
reports k-fold accuracy on customers who have the field against the majority class; impute_demographics
imputes a field only where that accuracy beats the majority by min_lift (a guess no better than the
commonest value would only add noise).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from assets.prompts import templates as T
from resources.sql import load_sql
from resources.warehouse import table_exists

if TYPE_CHECKING:
    from assets.market.augment import AugmentSettings

BEHAVIOUR_COLUMNS = ("trips_per_week", "spend_per_trip", "units_per_trip", "lines_per_trip", "price_level",
                     "discount_share", "n_categories")  # fmt: skip


def period_starts(conn) -> dict[str, date]:
    """period -> its first day (episode_splits); {} without the features stage's tables."""
    if not (table_exists(conn, "episode_splits") and table_exists(conn, "decision_episodes")):
        return {}
    return dict(conn.execute(load_sql("market/select_period_starts")).fetchall())


def train_end(conn) -> date | None:
    """The first day after the train period (the first val or test day); None: no split."""
    later = [d for p, d in period_starts(conn).items() if p != "train"]
    return min(later) if later else None


def behaviour_features(conn, until: date | None, mix_categories: int = 12) -> pl.DataFrame:
    """customer_id and the behaviour features (BEHAVIOUR_COLUMNS, then mix_<category> shares) of every
    customer with merchandise purchases before `until` (None: all days)."""
    params = {"until": until}
    base = conn.sql(load_sql("market/select_customer_behaviour"), params=params).pl()
    mix = conn.sql(
        load_sql("market/select_customer_category_mix"), params={**params, "n_categories": mix_categories}
    ).pl()
    if mix.height:
        wide = mix.with_columns(("mix_" + pl.col("category")).alias("category")).pivot(
            "category", index="customer_id", values="share"
        )
        base = base.join(wide, on="customer_id", how="left").fill_null(0.0)
    return base.with_columns(pl.col("customer_id").cast(pl.Utf8)).sort("customer_id")


def known_demographics(customers: pl.DataFrame) -> pl.DataFrame:
    """customer_id, field, value (text) of every non-null demographic of customers.attributes (JSON)."""
    rows = [
        (str(cid), k, v)
        for cid, attrs in zip(
            customers["customer_id"].to_list(), customers["attributes"].to_list(), strict=True
        )
        for k, v in T.parse_attributes(attrs)
    ]
    return pl.DataFrame(
        rows, schema={"customer_id": pl.Utf8, "field": pl.Utf8, "value": pl.Utf8}, orient="row"
    )


def _classifier(method: str, neighbors: int, n_train: int):
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if method == "knn":
        model = KNeighborsClassifier(n_neighbors=max(1, min(neighbors, n_train)), weights="distance")
    else:
        model = LogisticRegression(max_iter=2000)
    return make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), model)


def _fields(features: pl.DataFrame, demographics: pl.DataFrame, min_known: int) -> dict[str, pl.DataFrame]:
    """field -> customer_id, value of the customers with behaviour who have it (>= min_known, >= 2 values)."""
    have = demographics.join(features.select("customer_id"), on="customer_id", how="semi")
    out = {}
    for (name,), part in have.group_by("field", maintain_order=True):
        part = part.unique("customer_id", keep="first").sort("customer_id")
        if part.height >= min_known and part["value"].n_unique() >= 2:
            out[name] = part.select("customer_id", "value")
    return dict(sorted(out.items()))


def _matrix(features: pl.DataFrame, ids: pl.DataFrame, columns: list[str]) -> np.ndarray:
    return ids.select("customer_id").join(features, on="customer_id", how="left").select(columns).to_numpy()


@dataclass
class DemographicImputer:
    """One classifier per demographic field, on the behaviour features' columns."""

    columns: list[str]
    models: dict[str, Any]
    method: str

    def predict(self, features: pl.DataFrame) -> pl.DataFrame:
        """customer_id, field, value: every field predicted for every customer of `features`."""
        x = features.select(self.columns).to_numpy()
        ids = features["customer_id"].to_list()
        frames = [
            pl.DataFrame({"customer_id": ids, "field": name, "value": [str(v) for v in model.predict(x)]})
            for name, model in self.models.items()
        ]
        schema = {"customer_id": pl.Utf8, "field": pl.Utf8, "value": pl.Utf8}
        return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def fit_imputer(
    features: pl.DataFrame, demographics: pl.DataFrame, method: str = "knn", neighbors: int = 15,
    min_known: int = 20, fields: Collection[str] | None = None,
) -> DemographicImputer:  # fmt: skip
    """A classifier per field known for at least min_known customers of `features` (behaviour_features)
    from `demographics` (known_demographics); `fields`: only those (None: every such field)."""
    columns = [c for c in features.columns if c != "customer_id"]
    models = {}
    for name, known in _fields(features, demographics, min_known).items():
        if fields is not None and name not in fields:
            continue
        model = _classifier(method, neighbors, known.height)
        models[name] = model.fit(_matrix(features, known, columns), known["value"].to_numpy())
    return DemographicImputer(columns, models, method)


def impute_missing(
    imputer: DemographicImputer, features: pl.DataFrame, demographics: pl.DataFrame
) -> pl.DataFrame:
    """customer_id, field, value of the imputed pairs: the fields of `imputer` that a customer with
    behaviour lacks."""
    pred = imputer.predict(features)
    return pred.join(demographics, on=["customer_id", "field"], how="anti").sort("customer_id", "field")


def imputation_accuracy(
    features: pl.DataFrame, demographics: pl.DataFrame, method: str = "knn", neighbors: int = 15,
    min_known: int = 20, folds: int = 5, seed: int = 0,
) -> pl.DataFrame:  # fmt: skip
    """Per field: field, n_known, n_classes, accuracy (k-fold: every customer who has the field predicted by
    a model fitted without them), baseline (each fold's majority class), lift = accuracy - baseline."""
    from sklearn.model_selection import KFold

    columns = [c for c in features.columns if c != "customer_id"]
    rows = []
    for name, known in _fields(features, demographics, min_known).items():
        x, y = _matrix(features, known, columns), known["value"].to_numpy()
        hit = base = 0
        for tr, te in KFold(min(folds, len(y)), shuffle=True, random_state=seed).split(x):
            model = _classifier(method, neighbors, len(tr)).fit(x[tr], y[tr])
            hit += int((model.predict(x[te]) == y[te]).sum())
            values, counts = np.unique(y[tr], return_counts=True)
            base += int((y[te] == values[np.argmax(counts)]).sum())
        n = len(y)
        rows.append((name, n, len(set(y)), hit / n, base / n, (hit - base) / n))
    schema = {"field": pl.Utf8, "n_known": pl.Int64, "n_classes": pl.Int64, "accuracy": pl.Float64,
              "baseline": pl.Float64, "lift": pl.Float64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema, orient="row")


def impute_demographics(
    conn, settings: AugmentSettings, until: date | None, log: Callable[[str], Any] = print
) -> tuple[dict[str, tuple[tuple[str, str], ...]], pl.DataFrame]:
    """customer_id -> imputed (field, value) pairs, and imputation_accuracy's table with `imputed` (the
    fields whose lift reaches settings.min_lift), from behaviour before `until` and customers.attributes."""
    feats = behaviour_features(conn, until, settings.mix_categories)
    cust = conn.sql("select * from customers").pl() if table_exists(conn, "customers") else pl.DataFrame()
    cust = cust.select(_col_text(cust, "customer_id"), _col_text(cust, "attributes"))
    demo = known_demographics(cust)
    kw = {"method": settings.method, "neighbors": settings.neighbors, "min_known": settings.min_known}
    acc = imputation_accuracy(feats, demo, folds=settings.folds, seed=settings.seed, **kw)
    acc = acc.with_columns(imputed=pl.col("lift") >= settings.min_lift)
    fields = acc.filter("imputed")["field"].to_list()
    imputed = impute_missing(fit_imputer(feats, demo, fields=fields, **kw), feats, demo)
    out = {
        cid: tuple(zip(part["field"].to_list(), part["value"].to_list(), strict=True))
        for (cid,), part in imputed.group_by("customer_id", maintain_order=True)
    }
    said = [
        f"{r['field']} {r['accuracy']:.2f} (majority {r['baseline']:.2f}"
        + ("" if r["imputed"] else ", not imputed")
        + ")"
        for r in acc.iter_rows(named=True)
    ]
    log(
        f"augment: {imputed.height} demographics imputed for {len(out)} customers from behaviour before "
        f"{until}; k-fold accuracy: {', '.join(said) or 'none (no field known often enough)'}"
    )
    return out, acc


def _col_text(frame: pl.DataFrame, name: str) -> pl.Expr:
    return (pl.col(name) if name in frame.columns else pl.lit(None)).cast(pl.Utf8).alias(name)


def _col_text(frame: pl.DataFrame, name: str) -> pl.Expr:
    return (pl.col(name) if name in frame.columns else pl.lit(None)).cast(pl.Utf8).alias(name)
