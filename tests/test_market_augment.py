"""Input augmentation with attention control (assets/market/augment.py): demographics imputed from behaviour
(a planted relation on a toy warehouse), the shelf's trend, the season and holiday weeks by hand, field
influence and the token budget with a deterministic fake engine, the switch (off = today's prompts, byte for
byte), injected text with the augmentation on, and fit_llm_engines(augment=...) on the synthetic market with
the tiny random model of tests/llm_fixtures.py."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from datetime import date, timedelta

import duckdb as ddb
import numpy as np
import polars as pl
import pytest

from assets.market import augment as A
from assets.market.classic import load_market_frame
from assets.market.engine import check_decisions
from assets.market.llm import LLMChoiceEngine, MarketPromptContext, fit_llm_engines, prompt_episodes
from assets.market.metrics import OTHER
from assets.prompts import logic as P
from assets.prompts import templates as T
from assets.simulation.decide import utility_items
from tests.test_market_llm import MARKET, tiny_engine, warehouse  # noqa: F401 (fixtures)
from tests.test_prompts import INJECTIONS, _check_prompt

# --- a toy warehouse with a planted relation -------------------------------------------------------------


def _toy_purchases(n_customers: int = 90, seed: int = 0) -> tuple[pl.DataFrame, dict[str, str]]:
    """episode_purchases rows of customers who buy in two categories on weekly trips; a "high" income
    customer buys the dear product of each category 90% of the time, a "low" one the cheap product."""
    rng = np.random.default_rng(seed)
    income = {f"K{i:03d}": ("high" if i % 2 else "low") for i in range(n_customers)}
    rows = []
    for cid, inc in income.items():
        for week in range(12):
            basket = f"{cid}-{week}"
            for cat, (cheap, dear) in {"MILK": (1.0, 3.0), "BREAD": (0.8, 2.6)}.items():
                dear_pick = rng.random() < (0.9 if inc == "high" else 0.1)
                price = (dear if dear_pick else cheap) * rng.uniform(0.95, 1.05)
                units = int(rng.integers(1, 3))
                rows.append((basket, cid, f"{cat}-{'dear' if dear_pick else 'cheap'}", cat,
                             date(2025, 1, 6) + timedelta(days=7 * week + int(rng.integers(0, 6))),
                             units, units * price, price, price, True))  # fmt: skip
    schema = ["basket_id", "customer_id", "product_id", "category", "day", "units", "spend", "unit_price",
              "list_unit_price", "is_merchandise"]  # fmt: skip
    return pl.DataFrame(rows, schema=schema, orient="row"), income


@pytest.fixture(scope="module")
def toy():
    """The toy warehouse: a third of the customers lack income (pet is noise, known for all); truth apart."""
    purchases, income = _toy_purchases()
    rng = np.random.default_rng(1)
    pets = {cid: str(rng.choice(["cat", "dog"])) for cid in income}
    hidden = {cid for i, cid in enumerate(sorted(income)) if i % 3 == 0}
    attrs = [
        f'{{"pet": "{pets[c]}"}}' if c in hidden else f'{{"income": "{income[c]}", "pet": "{pets[c]}"}}'
        for c in sorted(income)
    ]
    customers = pl.DataFrame({"customer_id": [*sorted(income), "NOBUY"], "attributes": [*attrs, None]})
    conn = ddb.connect()
    conn.register("p", purchases.to_arrow())
    conn.register("c", customers.to_arrow())
    conn.execute("create table episode_purchases as select * from p")
    conn.execute("create table customers as select * from c")
    yield conn, income, hidden
    conn.close()


def test_imputation_recovers_a_planted_relation(toy):
    conn, income, hidden = toy
    feats = A.behaviour_features(conn, None)
    assert feats.height == len(income) and set(A.BEHAVIOUR_COLUMNS) <= set(feats.columns)
    assert {"mix_MILK", "mix_BREAD"} <= set(feats.columns)
    high = feats.join(
        pl.DataFrame({"customer_id": list(income), "inc": list(income.values())}), on="customer_id"
    )
    levels = high.group_by("inc").agg(pl.col("price_level").mean()).sort("inc")
    assert levels["price_level"][0] > 0.2 > -0.2 > levels["price_level"][1]  # high pays more, low less
    demo = A.known_demographics(conn.sql("select * from customers").pl())
    acc = A.imputation_accuracy(feats, demo, folds=5, seed=0)
    print("\n", acc)
    by = {r["field"]: r for r in acc.iter_rows(named=True)}
    assert by["income"]["n_known"] == len(income) - len(hidden) and by["income"]["n_classes"] == 2
    assert by["income"]["accuracy"] >= 0.85 and by["income"]["baseline"] <= 0.6  # chance is 1/2
    assert by["pet"]["accuracy"] < by["income"]["accuracy"] - 0.2  # noise is not learnt
    # fit_augmentation imputes the hidden customers' income from behaviour, and nothing they already have
    aug = A.fit_augmentation(conn, A.AugmentSettings(context=False, min_lift=0.1), log=lambda _: None)
    assert aug.accuracy.filter(pl.col("field") == "income")["imputed"][0]
    assert not aug.accuracy.filter(pl.col("field") == "pet")["imputed"][0]
    assert set(aug.demographics) == hidden and "NOBUY" not in aug.demographics  # no behaviour, no guess
    right = [dict(aug.demographics[c])["income"] == income[c] for c in hidden]
    assert all(list(dict(v)) == ["income"] for v in aug.demographics.values())
    assert np.mean(right) >= 0.85
    # the prompt marks the estimate; a customer's own values are shown as they are
    c = sorted(hidden)[0]
    ep = P.PromptEpisode(
        "test", T.CustomerContext(c, demographics=(("pet", "cat"),)), T.EpisodeContext("e", "MILK", None),
        [T.OptionContext("p", price=1.0)], "", 1,
    )  # fmt: skip
    text = T.customer_text(aug.apply([ep])[0].customer, ep.episode)
    assert text.startswith(f'You: income "{income[c]}" (estimated), pet "cat".\n')


# --- trend, season, holidays -----------------------------------------------------------------------------


def test_trend_and_season_by_hand():
    d0 = date(2025, 1, 1)
    units = pl.DataFrame(
        {
            "category": ["A"] * 4 + ["B"] * 2,
            "day": [
                d0,
                d0 + timedelta(days=20),
                d0 + timedelta(days=40),
                d0 + timedelta(days=59),
                d0 + timedelta(days=1),
                d0 + timedelta(days=50),
            ],  # fmt: skip
            "units": [3.0, 7.0, 4.0, 8.0, 5.0, 2.0],
        }
    )
    tr = A.CategoryTrends.from_frame(units)
    d = d0 + timedelta(days=60)  # windows [d-28, d) = days 32..59 and [d-56, d-28) = days 4..31
    assert tr.units("A", d.toordinal() - 28, d.toordinal()) == 12.0  # days 40 and 59
    assert tr.change("A", d) == pytest.approx(12 / 7 - 1)  # day 20 only in the window before
    assert tr.change("B", d) == math.inf  # 2 units after none
    assert tr.change("A", d0 + timedelta(days=55)) is None  # less than 56 days of history
    assert tr.change("Z", d) is None and tr.change(None, d) is None
    # "period": windows end at the start of d's period (day 58 here), so day 59 is not read
    cut = A.CategoryTrends.from_frame(units, [d0 + timedelta(days=58)])
    assert tr.change("A", d0 + timedelta(days=63)) == pytest.approx(12 / 7 - 1)  # [35, 63) vs [7, 35)
    assert cut.change("A", d0 + timedelta(days=63)) == pytest.approx(4 / 7 - 1)  # [30, 58) vs [2, 30)
    assert cut.change("A", d0 + timedelta(days=45)) is None  # before the cutoff: at d, too early
    assert (
        T.trend_text(12 / 7 - 1) == "4-week sales up 71%" and T.trend_text(-0.25) == "4-week sales down 25%"
    )
    assert T.trend_text(0.04) == "4-week sales flat" and T.trend_text(math.inf) == "4-week sales up from none"
    # seasons and the week before a holiday
    assert (T.season(date(2025, 12, 22)), A.holiday_week(date(2025, 12, 22))) == ("winter", "Christmas")
    assert A.holiday_week(date(2025, 11, 27)) == A.holiday_week(date(2025, 11, 21)) == "Thanksgiving"
    assert A.holiday_week(date(2025, 11, 20)) is None and A.holiday_week(date(2025, 11, 28)) is None
    assert A.holiday_week(date(2025, 12, 29)) == "New Year" and A.holiday_week(date(2025, 4, 14)) == "Easter"
    assert (
        A.holiday_week(date(2025, 5, 26)) == "Memorial Day"
        and A.holiday_week(date(2025, 9, 1)) == "Labor Day"
    )
    assert A.holiday_week(date(2025, 7, 4)) == "July 4" and A.holiday_week(date(2025, 3, 14)) is None
    assert T.season(date(2025, 3, 14)) == "spring" and T.season(date(2025, 8, 1)) == "summer"
    # the shelf line, then through Augmentation.apply: 5 units in [Oct 27, Nov 24), none in [Nov 24, Dec 22)
    dec = A.CategoryTrends.from_frame(
        pl.DataFrame(
            {"category": ["A", "A"], "day": [date(2025, 10, 1), date(2025, 11, 20)], "units": [10.0, 5.0]}
        )
    )
    ep = P.PromptEpisode(
        "test", T.CustomerContext("c"), T.EpisodeContext("e", "A", date(2025, 12, 22)),
        [T.OptionContext("p", price=1.0)], "", 1,
    )  # fmt: skip
    out = A.Augmentation(trends=dec, season=True).apply([ep])[0].episode
    assert (out.season, out.holiday, out.trend) == ("winter", "Christmas", -1.0)
    text = T.customer_text(T.CustomerContext("c"), out)
    assert 'Shelf "A", Monday in December, winter, Christmas week; 4-week sales down 100%.' in text


def test_sql_trends_match_the_purchases(toy):
    conn, _, _ = toy
    units = conn.sql(A.load_sql("market/select_category_day_units")).pl()
    tr = A.CategoryTrends.from_frame(units)
    d = date(2025, 3, 20)
    want = conn.execute(
        "select sum(units) filter (where day >= $d - 28), sum(units) filter (where day < $d - 28) "
        "from episode_purchases where category = 'MILK' and day >= $d - 56 and day < $d",
        {"d": d},
    ).fetchone()
    assert tr.change("MILK", d) == pytest.approx(want[0] / want[1] - 1)


# --- attention control with a fake engine ----------------------------------------------------------------

_SOLD = re.compile(r"(\d+) sold/28d")
_PRICE = re.compile(r"\$(\d*\.?\d+)")


class FakeEngine:
    """Reads the option's sales (strongly) and whether the customer has a high income (weakly, through the
    price) from the prompt text; ignores everything else."""

    def __init__(self) -> None:
        self.prompts = 0

    def score_many(self, items, progress=False):
        out = []
        for prefix, suffixes in items:
            rich = 'income "high"' in prefix
            us = []
            for s in suffixes:
                sold = _SOLD.search(s)
                price = float(_PRICE.search(s).group(1))
                us.append(
                    2.0 * math.log1p(int(sold.group(1)) if sold else 0)
                    + (1 if rich else -1) * math.log(price)
                )
            self.prompts += len(suffixes)
            out.append(np.array(us))
        return out


@pytest.fixture(scope="module")
def market(warehouse):  # noqa: F811
    """The synthetic test market of tests/test_market_llm.py, two of its customers without demographics."""
    ids = [
        r[0]
        for r in warehouse.execute("select distinct customer_id from market_occasions order by 1").fetchall()
    ]
    warehouse.execute("update customers set attributes = null where customer_id in (?, ?)", ids[:2])
    return warehouse, ids[:2]


@pytest.fixture(scope="module")
def context(market):
    return MarketPromptContext().add_market(market[0])


@pytest.fixture(scope="module")
def augmented(market, context):
    """Augmented contexts (trend, season; every field shown) of the market's occasions with >= 2 options."""
    conn, _ = market
    aug = A.fit_augmentation(conn, A.AugmentSettings(impute=False), log=lambda _: None)
    sample = A.influence_sample(load_market_frame(conn), 40)
    return aug, prompt_episodes(sample, context, aug)


def test_influence_ranking_and_the_budget(augmented):
    _, eps = augmented
    assert len(eps) >= 20 and any(e.customer.demographics for e in eps)
    fake = FakeEngine()
    full = A.attention_control(fake, eps, 1e6)
    assert full.counter == "whitespace" and full.keep == frozenset(A.FIELDS)  # a budget above all: all
    rank = full.ranking
    print("\n", rank)
    infl = dict(zip(rank["field"], rank["influence"], strict=True))
    assert rank["field"][0] == "popularity" and infl["popularity"] > 0.2
    assert rank["field"][1] == "demographics" and 0 < infl["demographics"] < infl["popularity"]
    ignored = ("description", "brand", "style", "history", "trend", "season", "date", "own_purchases")
    assert all(infl[f] == 0 for f in ignored) and set(rank["field"][2:]) >= set(ignored)
    assert full.ranking.filter(pl.col("field") == "trend")["tokens"][0] > 0  # the trend is there to drop
    n = fake.prompts  # each distinct prompt once; with a cache (LLMChoiceEngine.cache) a second pass is free
    cache: dict[bytes, float] = {}
    assert A.attention_control(fake, eps, 1e6, cache=cache).n_scored == n == len(cache)
    assert A.attention_control(fake, eps, 1e6, cache=cache).n_scored == 0 and fake.prompts == 2 * n
    # a budget that fits popularity and demographics but not the fields read before popularity
    s = {r["policy"]: r for r in full.summary.iter_rows(named=True)}
    base = s["none"]["tokens_per_prompt"]
    tok = dict(zip(rank["field"], rank["tokens"], strict=True))
    budget = base + tok["popularity"] + tok["demographics"] + 1.0
    res = A.attention_control(fake, eps, budget)
    print(res.summary)
    got = {r["policy"]: r for r in res.summary.iter_rows(named=True)}
    assert {"popularity", "demographics"} <= res.keep and "popularity" not in res.keep_blind
    for policy in ("influence", "blind"):
        assert got[policy]["tokens_per_prompt"] <= budget
    assert got["influence"]["tv_vs_full"] < 0.5 * got["blind"]["tv_vs_full"]  # control beats truncation
    assert got["full"]["tv_vs_full"] == 0 and got["none"]["tv_vs_full"] > 0
    kept = A.Augmentation(keep=res.keep).apply(eps)  # what the engine would be shown
    items = utility_items(kept, True, True)
    count, _ = A.token_counter(fake)
    n_tok = sum(count([p])[0] * len(ss) + sum(count(ss)) for p, ss in items) / sum(len(ss) for _, ss in items)
    assert n_tok == pytest.approx(got["influence"]["tokens_per_prompt"]) and n_tok <= budget
    assert any("sold/28d" in s for _, ss in items for s in ss)  # popularity kept
    assert not any("Style:" in p or "Shelf" not in p for p, _ in items)  # style dropped, the shelf stays
    with pytest.raises(ValueError, match="below"):
        A.attention_control(fake, eps, base - 1)
    # with the engine's tokenizer the counts are tokens
    fake.tokenizer = P.default_tokenizer()
    assert A.attention_control(fake, eps[:3], 1e6).counter == "tokenizer"


def test_drop_fields_leave_out_what_they_name(augmented):
    _, eps = augmented
    ep = next(
        e for e in eps
        if e.customer.n_category_episodes and e.episode.trend is not None and e.customer.demographics
        and any(o.pop_28d for o in e.options)
    )  # fmt: skip
    (p, ss), = utility_items([ep], True, True)  # fmt: skip
    assert "4-week sales" in p and "past trip" in p and 'You: age "' in p
    season = f", {T.season(ep.episode.day)}"
    for f, gone in (("trend", "4-week sales"), ("history", "past trip"), ("demographics", "You: age"),
                    ("style", "Style:"), ("season", season), ("popularity", "sold/28d")):  # fmt: skip
        (p2, ss2), = utility_items([A.drop_fields(ep, {f})], True, True)  # fmt: skip
        assert gone in p + "".join(ss) and gone not in p2 + "".join(ss2), f
    (p3, _), = utility_items([A.drop_fields(ep, {"demographics", "history"})], True, True)  # fmt: skip
    assert "You: no details." in p3 and "No past trips" not in p3


# --- the switch ------------------------------------------------------------------------------------------


def test_augment_off_gives_todays_prompts(market, context, tiny_engine):  # noqa: F811
    conn, hidden = market
    frame = load_market_frame(conn)
    off = LLMChoiceEngine(tiny_engine, context).prompts(frame)
    # today's prompts: the retail agent's templates over the same contexts, without augment.py
    eps = prompt_episodes(frame.filter(pl.col("product_id") != OTHER), context)
    want = [(p, s) for p, ss in utility_items(eps, True, True) for s in ss]
    assert sorted(zip(off["prefix"], off["suffix"], strict=True)) == sorted(want)
    assert not any("(estimated)" in p or "4-week sales" in p or ", autumn" in p for p, _ in want)
    neutral = LLMChoiceEngine(tiny_engine, context, augment=A.Augmentation()).prompts(frame)
    assert neutral.equals(off)  # an augmentation that adds nothing changes nothing
    settings = A.AugmentSettings(impute=False, context=False)
    assert (
        LLMChoiceEngine(tiny_engine, context, augment=A.fit_augmentation(conn, settings))
        .prompts(frame)
        .equals(off)
    )
    # on: the prefixes gain the season and trend, the suffixes are unchanged; hidden customers get estimates
    aug = A.fit_augmentation(conn, A.AugmentSettings(min_lift=-1.0), log=lambda _: None)
    on = LLMChoiceEngine(tiny_engine, context, augment=aug).prompts(frame)
    assert on["suffix"].to_list() == off["suffix"].to_list()
    assert any("4-week sales" in p for p in on["prefix"])
    assert any(", autumn" in p or ", winter" in p for p in on["prefix"])
    occ = conn.sql("select occasion_id, customer_id from market_occasions").pl()
    mine = on.join(occ, on="occasion_id").filter(pl.col("customer_id").is_in(hidden))
    assert mine.height and all(p.count("(estimated)") == 3 for p in mine["prefix"])
    assert not any("(estimated)" in p for p in on.join(occ, on="occasion_id").filter(
        ~pl.col("customer_id").is_in(hidden))["prefix"])  # fmt: skip


@pytest.mark.parametrize("text", INJECTIONS)
def test_injected_text_stays_in_its_field_with_augment_on(market, context, tiny_engine, text):  # noqa: F811
    conn, hidden = market
    frame = load_market_frame(conn)
    occ = conn.execute(
        "select occasion_id from market_occasions where customer_id = ? and n_options >= 3", [hidden[0]]
    ).fetchall()[0][0]
    rows = frame.filter((pl.col("occasion_id") == occ) & (pl.col("product_id") != OTHER))
    target = rows.filter(pl.col("set_rank") == 2)["product_id"][0]
    base = A.fit_augmentation(conn, A.AugmentSettings(min_lift=-1.0), log=lambda _: None)

    def prompts(value: str, keep=None) -> pl.DataFrame:
        products = context.products.with_columns(
            pl.when(pl.col("product_id") == target)
            .then(pl.lit(value))
            .otherwise("description")
            .alias("description")
        )
        ctx = MarketPromptContext(context.customers, products, context.cuts, context.top_brands)
        demo = {
            c: tuple((k, value if k == "income" else v) for k, v in kv) for c, kv in base.demographics.items()
        }
        aug = replace(base, demographics=demo, keep=keep)
        return LLMChoiceEngine(tiny_engine, ctx, augment=aug).prompts(rows)

    tok = P.default_tokenizer()
    for keep in (None, frozenset({"demographics", "description", "trend", "season"})):
        clean, dirty = prompts("fresh whole milk", keep), prompts(text, keep)
        i = dirty["product_id"].to_list().index(target)
        d, c = dirty["suffix"][i], clean["suffix"][i]
        cleaned = T.clean_text(text, T.MAX_DESCRIPTION)
        assert d.replace(f'"{cleaned}"', '"fresh whole milk"', 1) == c
        assert d.endswith("\nBuy it? Yes or No.<|im_end|>\n<|im_start|>assistant\n")
        pre, pre_clean = dirty["prefix"][i], clean["prefix"][i]
        assert f'income "{T.clean_text(text)}" (estimated)' in pre  # the imputed value stays quoted
        assert pre.count('"') == pre_clean.count('"') and pre.count("\n") == pre_clean.count("\n")
        assert d.count('"') == c.count('"') and d.count("\n") == c.count("\n")
        for j in range(dirty.height):
            _check_prompt(tok, dirty["prefix"][j] + dirty["suffix"][j], 3)


# --- in the market engines -------------------------------------------------------------------------------


def test_fit_llm_engines_with_augment(market, tiny_engine):  # noqa: F811
    conn, hidden = market
    logs: list[str] = []
    fields = ("demographics", "style", "trend", "history", "popularity")  # the rest is always kept
    settings = A.AugmentSettings(min_lift=-1.0, token_budget=150, influence_occasions=4, fields=fields)
    engines = fit_llm_engines(
        conn, tiny_engine, val_occasions_limit=10, log=logs.append, augment=settings, **MARKET
    )
    llm, hybrid = engines["llm"], engines["hybrid"]
    aug = llm.augment
    assert isinstance(aug, A.Augmentation) and aug.keep is not None and aug.counter == "tokenizer"
    assert aug.ranking.columns == [
        "field",
        "part",
        "influence",
        "kl",
        "tokens",
        "ratio",
        "kept",
        "kept_blind",
    ]
    assert sorted(aug.ranking["field"]) == sorted(fields)
    assert aug.keep == set(aug.ranking.filter("kept")["field"]) | (set(A.FIELDS) - set(fields))
    s = {r["policy"]: r for r in aug.summary.iter_rows(named=True)}
    print("\n", aug.ranking, "\n", aug.summary, "\n", aug.accuracy)
    assert s["influence"]["tokens_per_prompt"] <= 150 < s["full"]["tokens_per_prompt"]
    assert s["none"]["tokens_per_prompt"] <= s["blind"]["tokens_per_prompt"] <= 150
    assert llm.info["augment/kept"] and llm.info["augment/token_budget"] == 150
    assert set(aug.accuracy["field"]) == {"age", "income", "household_size"} and aug.accuracy["imputed"].all()
    assert set(hidden) <= set(aug.demographics)
    assert any(line.startswith("augment: influence") for line in logs)
    frame = load_market_frame(conn)
    frame = frame.filter(pl.col("occasion_id").is_in(frame["occasion_id"].unique(maintain_order=True)[:8]))
    check_decisions(frame, hybrid.decide(frame))
    pr = llm.prompts(frame)
    assert pr.height == frame.filter(pl.col("product_id") != OTHER).height
    assert ("style" in aug.keep) == any("Style:" in p for p in pr["prefix"])
    assert ("history" in aug.keep) == any("past trip" in p for p in pr["prefix"])
