"""What-if scenarios of the market simulation: a YAML file of interventions, validated before any work starts,
applied to the market's options (docs/evaluation-protocol.md "Market-level evaluation"). No dagster import.
The format (scenarios/README.md comments every key and states the rules in full; examples: scenarios/*.yaml):

    name: synth_promotion                  # 1-64 letters, digits, '_', '.', '-' (it names the outputs)
    description: 20% off StoreBrand        # optional
    period: {first_week: 1, last_week: 2}  # optional default window; or days: {first_day: 1, last_day: 14}
    interventions:                         # at least one, applied in order; each may have its own period
      - {type: price, products: ["P00001"], change_pct: 10}   # or set_price: 2.49; keep_list_price: true
      - {type: discount, brands: [StoreBrand], depth: 0.2}    # target: products, or brands and/or categories
      - {type: new_product, product_id: "P90001", category: MILK, brand: Meadowbrook, department: DAIRY,
         description: "Meadowbrook milk, large pack", attributes: {size: large}, price: 3.49, list_price: 3.79}
      - {type: delist, products: ["P00005"]}
      - {type: stock_limit, product: "P00003", units_per_day: 40}   # or units: 500; the simulation enforces it

Days count from the simulated period's first day (1); weeks are market_occasions.week_index; ends inclusive.
Untrusted input: a yaml.SafeLoader refusing aliases and duplicate keys, at most MAX_BYTES, no field is a path or
URL, texts capped and without control characters; every error is one line (ScenarioError) naming the fix.
apply_scenario recomputes price, list_price, discount_depth, log_price, ref_price (only where it was the SQL's
fallback: no history), ref_price_gap, price_basis and rel_price (every option of a changed set) as
sql/features/create_feature_rows.sql does. A price change moves list_price with it unless keep_list_price; a
discount never raises a price (min(price, list_price x (1 - depth))); a delisted product's rows go and the set
is NOT refilled (OTHER already stands for every product outside the set; a refill's prices and history only the
SQL steps compute); a new product enters without history (pop 0, is_new), copying the occasion's customer
columns from its set. Stock limits are only recorded (Scenario.stock_limits).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from assets.market.metrics import OTHER
from resources.warehouse import table_exists

MAX_BYTES = 1_000_000  # a scenario file or text larger than this is refused
MAX_ID = 200  # characters of an id, brand or category
MAX_PROSE = 500  # characters of a description (the prompts cap product texts further)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
TOP_KEYS = ("name", "description", "period", "interventions")
TARGET = ("products", "brands", "categories")
COLUMN = dict(zip(TARGET, ("product_id", "brand", "category"), strict=True))  # their products column
PERIOD_KEYS = ("first_day", "last_day", "first_week", "last_week")
PRODUCT_KEYS = ("product_id", "category", "brand", "department", "description", "attributes", "price")
KEYS = {  # the keys of each intervention type
    "price": ("type", *TARGET, "change_pct", "set_price", "keep_list_price", "period"),
    "discount": ("type", *TARGET, "depth", "period"),
    "new_product": ("type", *PRODUCT_KEYS, "list_price", "period"),
    "delist": ("type", *TARGET, "period"),
    "stock_limit": ("type", "product", "units_per_day", "units", "period"),
}
PARSE = dict.fromkeys(TARGET, "ids") | dict.fromkeys(("product", *PRODUCT_KEYS[:4]), "id")
PARSE |= dict.fromkeys(("set_price", "price", "list_price", "units_per_day", "units"), "positive")
PARSE |= {"change_pct": "number", "depth": "number", "keep_list_price": "bool", "description": "prose"}
PARSE |= {"attributes": "attributes", "period": "period"}
REQUIRED = {"discount": ("depth",), "stock_limit": ("product",), "new_product": ("product_id", "category")}
REQUIRED["new_product"] += ("description", "price")
ONE_OF = {"price": ("change_pct", "set_price"), "stock_limit": ("units_per_day", "units")}
NEW_ROW = dict(source="scenario", in_set_actual=False, price_basis="scenario", pop_28d=0, pop_total=0)
NEW_ROW |= dict(is_new=True, cust_product_purchases=0, days_since_cust_purchase=None, prod_mean_qty_28d=None)


class ScenarioError(ValueError):
    """A scenario that cannot be used; the message is one line and names the fix."""


@dataclass(frozen=True)
class Period:
    unit: str  # 'day' or 'week'
    first: int  # 1-based, inclusive
    last: int | None = None  # inclusive; None: to the end of the simulated period

    def contains(self) -> pl.Expr:  # over apply_scenario's columns _d (day number) and _w (week_index)
        x = pl.col("_d" if self.unit == "day" else "_w")
        return (x >= self.first) if self.last is None else x.is_between(self.first, self.last)


@dataclass(frozen=True)
class Intervention:
    type: str  # one of KEYS
    period: Period | None = None  # its own window; None: the scenario's
    products: tuple[str, ...] = ()  # the target (stock_limit: its one product) ...
    brands: tuple[str, ...] = ()  # ... or brands and/or categories: their intersection
    categories: tuple[str, ...] = ()
    change_pct: float | None = None  # price
    set_price: float | None = None  # price
    keep_list_price: bool = False  # price
    depth: float | None = None  # discount
    units_per_day: float | None = None  # stock_limit
    units: float | None = None  # stock_limit, for the whole window
    product: dict[str, Any] = field(default_factory=dict)  # new_product: PRODUCT_KEYS and list_price

    def matches(self) -> pl.Expr:  # its target, over product_id, _brand and _category (the occasion's)
        if self.products:
            return pl.col("product_id").is_in(list(self.products))
        brand = pl.col("_brand").is_in(list(self.brands)) if self.brands else pl.lit(True)
        return brand & (pl.col("_category").is_in(list(self.categories)) if self.categories else True)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    period: Period | None  # the default window of the interventions
    interventions: tuple[Intervention, ...]

    @property
    def new_products(self) -> list[dict[str, Any]]:
        return [iv.product for iv in self.interventions if iv.type == "new_product"]

    @property
    def stock_limits(self) -> list[Intervention]:  # for the simulation to enforce (apply_scenario does not)
        return [iv for iv in self.interventions if iv.type == "stock_limit"]


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader (standard tags only, nothing is opened) refusing aliases and duplicate keys."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.MarkedYAMLError(problem="aliases (*name) are not allowed", problem_mark=mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
        for k, _ in reversed(node.value):  # the later one is the duplicate
            if isinstance(k, yaml.ScalarNode) and keys.count(k.value) > 1:
                raise yaml.MarkedYAMLError(problem=f"duplicate key {k.value!r}", problem_mark=k.start_mark)
        return super().construct_mapping(node, deep)


def _read(source: str | Path) -> tuple[str, str]:
    """(text, where): a Path, or a str naming a .yaml/.yml file (one line), is read; any other str is the text."""
    if not isinstance(source, Path) and ("\n" in source or not source.endswith((".yaml", ".yml"))):
        raw, where = source.encode("utf-8", "surrogatepass"), "scenario text"
    else:
        path, where = Path(source), f"scenario {CONTROL.sub('?', str(source))}"
        if not path.is_file():  # also refuses devices and FIFOs
            raise ScenarioError(f"{where}: no such file; give the path of a scenario YAML or its text")
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise ScenarioError(f"{where}: larger than {MAX_BYTES:,} bytes; split it into smaller scenarios")
    try:
        return raw.decode("utf-8"), where
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{where}: not UTF-8 text (byte {e.start}); save it as UTF-8") from e


def load_scenario(path_or_text: str | Path, conn=None) -> Scenario:
    """Read and validate a scenario (module docstring); given a DuckDB connection, also check its ids against
    the warehouse's products table. Raises ScenarioError (one line, naming the fix)."""
    text, where = _read(path_or_text)
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a yaml.SafeLoader
    except (yaml.YAMLError, RecursionError) as e:  # RecursionError: nested too deeply
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None) or str(e)
        problem = "nested too deeply" if isinstance(e, RecursionError) else problem
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ScenarioError(f"{where}: malformed YAML{at} ({' '.join(problem.split())}); fix it there") from e
    scenario = parse_scenario(data, where)
    if conn is not None:
        check_against_warehouse(scenario, conn, where)
    return scenario


def parse_scenario(data: Any, where: str = "scenario") -> Scenario:
    """A Scenario from the YAML's Python value; structure only (check_against_warehouse checks the ids)."""

    def fail(msg: str) -> ScenarioError:
        return ScenarioError(f"{where}: {msg}")

    if not isinstance(data, dict):
        raise fail("the top level must be a mapping with keys name and interventions (scenarios/README.md)")
    _no_unknown(data, TOP_KEYS, "the top level", fail)
    name = data.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise fail(f"name {name!r:.60}: give 1-64 letters, digits, '_', '.' or '-', e.g. name: price_rise")
    text = data.get("description")
    description = "" if text is None else _value("prose", text, "description", fail)
    items = data.get("interventions")
    if not isinstance(items, list) or not items:
        raise fail(f"interventions must be a non-empty list: add one, of type {', '.join(KEYS)}")
    interventions = tuple(_intervention(x, f"intervention {i}", fail) for i, x in enumerate(items, 1))
    new_ids = [p["product_id"] for iv in interventions if (p := iv.product)]
    if len(new_ids) != len(set(new_ids)):
        raise fail("two new_product interventions share a product_id: give each new product its own id")
    period = None if data.get("period") is None else _value("period", data["period"], "period", fail)
    return Scenario(name, description, period, interventions)


def _no_unknown(d: dict, allowed: tuple[str, ...], at: str, fail) -> None:
    for key in d:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise fail(f"{at}: unknown key {key!r:.60}; {hint}allowed: {', '.join(allowed)}")


def _value(kind: str, v: Any, at: str, fail) -> Any:
    """One field's value as PARSE's `kind` says, or a one-line error naming the fix."""
    if kind in ("id", "prose"):
        v = str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # an unquoted numeric id
        if not isinstance(v, str) or not v.strip():
            raise fail(f'{at}: give a non-empty text (quote ids: "1029743"), got {v!r:.60}')
        v, cap = (" ".join(v.split()), MAX_PROSE) if kind == "prose" else (v.strip(), MAX_ID)
        if len(v) > cap or CONTROL.search(v):
            raise fail(f"{at}: at most {cap} characters on one line, without control characters")
        return v
    if kind == "ids":
        if v == []:
            raise fail(f"{at}: the list is empty; name at least one or drop the key")
        return tuple(dict.fromkeys(_value("id", x, at, fail) for x in (v if isinstance(v, list) else [v])))
    if kind == "period":
        if not isinstance(v, dict) or not v:
            raise fail(f"{at}: give {{first_day: 1, last_day: 14}} or {{first_week: 1, last_week: 2}}")
        _no_unknown(v, PERIOD_KEYS, at, fail)
        units = {str(k).split("_")[1] for k in v}
        if len(units) != 1:
            raise fail(f"{at}: give days (first_day, last_day) or weeks (first_week, last_week), not both")
        unit = units.pop()
        first, last = v.get(f"first_{unit}", 1), v.get(f"last_{unit}")
        if any(
            x is not None and (isinstance(x, bool) or not isinstance(x, int) or x < 1) for x in (first, last)
        ):
            raise fail(f"{at}: {unit}s are whole numbers from 1, got {v!r:.60}")
        if last is not None and last < first:
            raise fail(f"{at}: last_{unit} {last} is before first_{unit} {first}; swap them")
        return Period(unit, first, last)
    if kind == "bool" and not isinstance(v, bool):
        raise fail(f"{at}: give true or false, got {v!r:.60}")
    if kind == "attributes":  # a flat mapping of texts and numbers, JSON text like products.attributes
        v = {str(k): x for k, x in v.items()} if isinstance(v, dict) else {"": None}
        plain = [math.isfinite(x) if isinstance(x, float) else isinstance(x, str | int) for x in v.values()]
        text = json.dumps(v, sort_keys=True, ensure_ascii=False) if all(plain) else ""
        if not text or len(text) > 2000 or CONTROL.search(" ".join(map(str, [*v, *v.values()]))):
            raise fail(f"{at}: a flat mapping of names to one-line texts or numbers, 2000 characters at most")
        return text if v else None
    if kind == "bool":
        return v
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise fail(f"{at}: give a finite number, got {v!r:.60}")
    if kind == "positive" and v <= 0:
        raise fail(f"{at}: must be greater than 0, got {v:g}")
    return float(v)


def _intervention(x: Any, at: str, fail) -> Intervention:
    if not isinstance(x, dict) or x.get("type") not in list(KEYS):  # a list: no hashing of the value
        got = f"{x.get('type')!r:.60}" if isinstance(x, dict) else "no mapping"
        raise fail(f"{at}: give a mapping with a type, one of {', '.join(KEYS)} (got {got})")
    kind, at = x["type"], f"{at} ({x['type']})"
    _no_unknown(x, KEYS[kind], at, fail)
    v = {k: _value(PARSE[k], y, f"{at}: {k}", fail) for k, y in x.items() if k != "type" and y is not None}
    missing = [k for k in REQUIRED.get(kind, ()) if k not in v]
    if missing:
        raise fail(f"{at}: {missing[0]} is required; add it (scenarios/README.md)")
    one = ONE_OF.get(kind, ())
    if one and sum(k in v for k in one) != 1:
        raise fail(f"{at}: give exactly one of {one[0]} or {one[1]}")
    if v.get("change_pct", 0) <= -100:
        raise fail(f"{at}: change_pct must be above -100 (a price stays above 0), got {v['change_pct']:g}")
    if not 0 < v.get("depth", 0.5) < 1:
        raise fail(f"{at}: depth is the share off list price in (0, 1) (0.2 = 20% off), got {v['depth']:g}")
    period = v.pop("period", None)
    if kind == "new_product":
        product = {k: v.get(k) for k in PRODUCT_KEYS} | {"list_price": v.get("list_price", v["price"])}
        if product["list_price"] < product["price"]:
            raise fail(f"{at}: list_price {product['list_price']:g} is below price {v['price']:g}; raise it")
        return Intervention(kind, period, product=product)
    if kind == "stock_limit":
        return Intervention(kind, period, products=(v.pop("product"),), **v)
    if not any(k in v for k in TARGET):
        raise fail(f"{at}: name a target: products: [...], or brands: [...] and/or categories: [...]")
    if "products" in v and ("brands" in v or "categories" in v):
        raise fail(f"{at}: give products alone, or brands and/or categories (their intersection)")
    return Intervention(kind, period, **v)


def check_against_warehouse(scenario: Scenario, conn, where: str = "scenario") -> None:
    """Every product, brand and category a scenario names exists in products (or is a new product of it); a new
    product's id does not, its category does; a brands + categories target holds some product."""
    if not table_exists(conn, "products"):
        raise ScenarioError(f"{where}: the warehouse has no products table; ingest the data first")
    new = scenario.new_products
    asked = {c: {x for iv in scenario.interventions for x in getattr(iv, c)} for c in TARGET}
    asked["products"] |= {p["product_id"] for p in new}
    asked["categories"] |= {p["category"] for p in new}
    sql = "select distinct {0} from products where list_contains($v::varchar[], {0})"  # {0}: a fixed name
    found = {c: conn.execute(sql.format(COLUMN[c]), {"v": sorted(asked[c])}).fetchall() for c in TARGET}
    found = {c: {r[0] for r in found[c]} for c in TARGET}
    known = {c: found[c] | {p[COLUMN[c]] for p in new} for c in TARGET}
    for i, iv in enumerate(scenario.interventions, 1):
        at = f"{where}: intervention {i} ({iv.type})"
        if iv.type == "new_product":
            pid, category = iv.product["product_id"], iv.product["category"]
            if pid in found["products"]:
                raise ScenarioError(f"{at}: product_id {pid!r:.60} is already in products; give an unused id")
            if category not in found["categories"]:
                raise ScenarioError(f"{at}: unknown category {category!r:.60}; use a category of products")
        for c in TARGET:
            bad = [x for x in getattr(iv, c) if x not in known[c]]
            if bad:
                fix = f"use values of products.{COLUMN[c]} (matched exactly, case included)"
                raise ScenarioError(f"{at}: unknown {COLUMN[c]} {bad[0]!r:.60} ({len(bad)} unknown); {fix}")
        b, c = list(iv.brands), list(iv.categories)
        both = "select count(*) from products where list_contains($b, brand) and list_contains($c, category)"
        if b and c and not conn.execute(both, {"b": b, "c": c}).fetchone()[0]:
            if not any(p["brand"] in b and p["category"] in c for p in new):
                raise ScenarioError(f"{at}: no product of brands {b} in categories {c}; check the pair")


def scenario_products_frame(scenario: Scenario) -> pl.DataFrame:
    """New products as occasions.stage_scenario_products takes them (no window; products rows: new_products_frame)."""
    schema = {"category": pl.Utf8, "product_id": pl.Utf8, "price": pl.Float64, "list_price": pl.Float64}
    return pl.DataFrame([{k: p[k] for k in schema} for p in scenario.new_products], schema=schema)


def new_products_frame(scenario: Scenario) -> pl.DataFrame:
    """The new products as rows of the products table (docs/tables.md), merchandise."""
    schema = dict.fromkeys(PRODUCT_KEYS[:6], pl.Utf8) | {"is_merchandise": pl.Boolean}
    rows = [{k: p[k] for k in PRODUCT_KEYS[:6]} | {"is_merchandise": True} for p in scenario.new_products]
    return pl.DataFrame(rows, schema=schema)


def _reprice(iv: Intervention, hit: pl.Expr) -> list[pl.Expr]:
    price, lst = pl.col("price").cast(pl.Float64), pl.col("list_price").cast(pl.Float64)
    if iv.type == "discount":  # at least depth off the list price; never a rise
        new_list = pl.coalesce(lst, price)
        new_price = pl.min_horizontal(price, new_list * (1.0 - iv.depth))
    elif iv.set_price is not None:  # list_price by the same factor (or the new price where none was)
        new_price = pl.lit(iv.set_price)
        scaled = pl.coalesce(pl.when(price > 0).then(lst * new_price / price), new_price)
        new_list = lst if iv.keep_list_price else scaled
    else:
        new_price = price * (1.0 + iv.change_pct / 100.0)
        new_list = lst if iv.keep_list_price else lst * (1.0 + iv.change_pct / 100.0)
    return [
        pl.when(hit).then(new_price).otherwise(price).alias("price"),
        pl.when(hit).then(new_list).otherwise(lst).alias("list_price"),
        (pl.col("_changed") | hit).alias("_changed"),
    ]


def _new_rows(rows: pl.DataFrame, clock: pl.DataFrame, iv: Intervention, k: int) -> pl.DataFrame:
    """The new product's rows: every occasion of its category in `clock` (the window) that lacks it."""
    p, cols = iv.product, rows.columns
    occ = clock.filter(pl.col("_category") == p["category"])
    occ = occ.join(rows.filter(pl.col("product_id") == p["product_id"]), on="occasion_id", how="anti")
    per_occ = [c for c in ("cust_category_purchases", "cust_mean_qty") if c in cols]  # one value per occasion
    if per_occ:
        firsts = rows.group_by("occasion_id").agg(pl.col(per_occ).first())
        occ = occ.join(firsts, on="occasion_id", how="left")
    if "cust_brand_purchases" in cols:
        same = rows.filter(pl.col("_brand") == p["brand"]).group_by("occasion_id")
        occ = occ.join(same.agg(pl.col("cust_brand_purchases").first()), on="occasion_id", how="left")
    zero = [pl.col(c).fill_null(0) for c in ("cust_category_purchases", "cust_brand_purchases") if c in cols]
    return occ.with_columns(
        *zero,
        *[pl.lit(v).alias(c) for c, v in NEW_ROW.items() if c in cols],
        product_id=pl.lit(p["product_id"]),
        set_rank=pl.lit(1_000_000 + k),  # after the set, in scenario order; renumbered by _recompute
        price=pl.lit(p["price"]),
        list_price=pl.lit(p["list_price"]),
        ref_price=pl.lit(p["price"]),
        _brand=pl.lit(p["brand"], pl.Utf8),
        _changed=pl.lit(True),
    )


def _recompute(rows: pl.DataFrame, removed_from: list[pl.Series], cols: set[str]) -> pl.DataFrame:
    """The price-derived columns of changed rows; rel_price and set_rank of touched occasions; `cols` only."""
    touched = pl.concat([rows.filter(pl.col("_changed"))["occasion_id"], *removed_from]).unique()
    rows = rows.with_columns(_touched=pl.col("occasion_id").is_in(touched.implode()))
    price, lst = pl.col("price"), pl.col("list_price")
    changed, touched = pl.col("_changed"), pl.col("_touched")
    history = [pl.col(c).fill_null(0) > 0 for c in ("cust_product_purchases", "pop_28d") if c in cols]
    no_history = ~pl.any_horizontal(history) if len(history) == 2 else pl.lit(False)
    cols = cols if "ref_price" in cols else cols - {"ref_price_gap"}
    ref = pl.when(no_history).then(price).otherwise(pl.col("ref_price"))
    mean = price.mean().over("occasion_id")
    new = {  # column: (rows to update, value)
        "discount_depth": (changed, pl.when(lst > 0).then(1.0 - price / lst).otherwise(0.0)),
        "log_price": (changed, (price + 0.01).log()),
        "ref_price": (changed, ref),
        "ref_price_gap": (changed, pl.when(ref > 0).then((price - ref) / ref).otherwise(0.0)),
        "rel_price": (touched, pl.when(mean > 0).then(price / mean).otherwise(1.0)),
        "price_basis": (changed, pl.lit("scenario")),
        "set_rank": (touched, pl.col("set_rank").rank("ordinal").over("occasion_id")),
    }
    new = {c: pl.when(w).then(value).otherwise(pl.col(c)) for c, (w, value) in new.items() if c in cols}
    return rows.with_columns(**new)


def apply_scenario(options, occasions, scenario: Scenario, products, period_start: date | None = None):
    """market_options (polars) with the interventions applied in order (module docstring): same columns and
    dtypes, by occasion and set_rank, OTHER rows unchanged. occasions: market_occasions (occasion_id, category,
    day[, week_index: else ISO weeks from period_start's]); products: product_id, brand; period_start: day 1
    of the windows (None: the first occasion day)."""
    need = {"occasion_id", "product_id", "price", "list_price"} - set(options.columns)
    need |= {"occasion_id", "category", "day"} - set(occasions.columns)
    if need:
        raise ValueError(f"apply_scenario needs columns {sorted(need)} (market_options, market_occasions)")
    start = period_start or occasions["day"].min()
    iso = (pl.col("day").dt.truncate("1w") - pl.lit(start).dt.truncate("1w")).dt.total_days() // 7 + 1
    week = pl.col("week_index") if "week_index" in occasions.columns else iso
    days = (pl.col("day") - pl.lit(start)).dt.total_days() + 1
    clock = occasions.select("occasion_id", _category="category", _d=days, _w=week)
    added = new_products_frame(scenario).select("product_id", _brand="brand")
    brands = pl.concat([products.select("product_id", _brand="brand"), added]).unique(
        "product_id", keep="first"
    )
    rows = options.join(clock, on="occasion_id", how="left", maintain_order="left")
    rows = rows.join(brands, on="product_id", how="left", maintain_order="left").with_columns(_changed=False)
    if rows["_d"].is_null().any():
        raise ValueError("every option's occasion must be in `occasions`")
    other, rows = rows.filter(pl.col("product_id") == OTHER), rows.filter(pl.col("product_id") != OTHER)
    removed_from: list[pl.Series] = []
    for k, iv in enumerate(scenario.interventions):
        period = iv.period or scenario.period
        window = period.contains() if period else pl.lit(True)
        if iv.type == "new_product":
            rows = pl.concat([rows, _new_rows(rows, clock.filter(window), iv, k)], how="diagonal_relaxed")
        elif iv.type != "stock_limit":
            hit = (iv.matches() & window).fill_null(False)
            if iv.type == "delist":
                removed_from.append(rows.filter(hit)["occasion_id"])
                rows = rows.filter(~hit)
            else:  # a price to change, except for set_price
                priced = pl.col("price").is_not_null() if iv.set_price is None else pl.lit(True)
                rows = rows.with_columns(_reprice(iv, hit & priced))
    rows = _recompute(rows, removed_from, set(options.columns))
    order = ["occasion_id", "set_rank"] if "set_rank" in options.columns else ["occasion_id"]
    out = pl.concat([rows, other], how="diagonal_relaxed").sort(order, nulls_last=True, maintain_order=True)
    return out.select(pl.col(c).cast(t) for c, t in options.schema.items())
