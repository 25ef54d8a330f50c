"""The synthetic market's wholesale ordering rule and its simulation.

Plain logic (no dagster import). `wholesale_order_qty` is the buyers' order-up-to rule (written out in
truth/wholesale_rule.json); `_simulate_wholesale` draws each buyer's weekly demand from the retail sales,
orders by that rule and returns the decisions (wholesale_truth) and the order lines of the wholesale channel.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def wholesale_order_qty(
    forecast: np.ndarray,
    stock: np.ndarray,
    lead_time_weeks: np.ndarray,
    noise: np.ndarray,
    review_weeks: float,
    safety_factor: float,
) -> np.ndarray:
    """The wholesale ordering rule: max(0, round(forecast * (L + R) * (1 + safety) - stock + noise))."""
    target = (
        np.asarray(forecast, float)
        * (np.asarray(lead_time_weeks, float) + review_weeks)
        * (1 + safety_factor)
    )
    return np.maximum(0, np.round(target - np.asarray(stock, float) + np.asarray(noise, float))).astype(
        np.int64
    )


def _simulate_wholesale(cfg, cats, prods, purchases, reg, rng):
    n_weeks = (cfg.n_days + 6) // 7
    pids = prods["product_id"].to_list()
    pidx = {p: i for i, p in enumerate(pids)}
    weekly = np.zeros((n_weeks, len(pids)))
    wk = (purchases["day"].to_numpy() // 7).astype(int)
    np.add.at(
        weekly,
        (wk, np.array([pidx[p] for p in purchases["product_id"].to_list()], dtype=int)),
        purchases["quantity"].to_numpy(),
    )
    eligible = cats.filter(pl.col("density") != "sparse")["category"].to_list()
    lead = prods["lead_time_weeks"].to_numpy()
    launch_week = prods["launch_day"].to_numpy() // 7
    out_truth, out_lines = [], []
    F = cfg.forecast_weeks
    for b in range(cfg.n_wholesale_buyers):
        buyer = f"W{b + 1:02d}"
        n_pick = max(1, int(round(cfg.wholesale_category_share * len(eligible))))
        my_cats = set(rng.choice(eligible, n_pick, replace=False).tolist()) if eligible else set()
        scale = rng.uniform(cfg.wholesale_demand_scale_min, cfg.wholesale_demand_scale_max)
        js = np.array([i for i, c in enumerate(prods["category"].to_list()) if c in my_cats], dtype=int)
        if js.size == 0:
            continue
        demand = rng.poisson(scale * (weekly[:, js] + 0.5)).astype(float)
        demand[np.arange(n_weeks)[:, None] < launch_week[js][None, :]] = 0.0  # nothing sold before launch
        stock = None
        for w in range(F, n_weeks):
            fc = demand[w - F : w].mean(axis=0)
            L = lead[js]
            if stock is None:  # start at the order-up-to level
                stock = np.round(fc * (L + cfg.review_weeks) * (1 + cfg.safety_factor))
            noise = rng.normal(0.0, 1.0, js.size) * cfg.order_noise_rel * fc
            q = wholesale_order_qty(fc, stock, L, noise, cfg.review_weeks, cfg.safety_factor)
            live = launch_week[js] <= w
            basket = f"WO{b + 1:02d}-{w:03d}"
            day = min(w * 7, cfg.n_days - 1)
            out_truth.append(
                pl.DataFrame(
                    {
                        "customer_id": buyer,
                        "product_id": np.array(pids, dtype=object)[js][live].astype(str),
                        "week": np.full(int(live.sum()), w),
                        "demand": demand[w, live],
                        "forecast_demand": fc[live],
                        "stock": stock[live],
                        "lead_time_weeks": L[live],
                        "noise": noise[live],
                        "order_qty": q[live],
                        "basket_id": [basket if x > 0 else None for x in q[live]],
                    },
                    schema_overrides={"basket_id": pl.Utf8, "product_id": pl.Utf8},
                )
            )
            o = live & (q > 0)
            if o.any():
                list_p = np.round(cfg.wholesale_price_ratio * reg[day, js[o]], 2)
                unit_p = np.where(
                    q[o] >= cfg.volume_threshold, np.round(list_p * (1 - cfg.volume_discount), 2), list_p
                )
                out_lines.append(
                    pl.DataFrame(
                        {
                            "basket_id": basket,
                            "day": day,
                            "customer_id": buyer,
                            "product_id": np.array(pids, dtype=object)[js[o]].astype(str),
                            "quantity": q[o],
                            "unit_price": unit_p,
                            "list_price": list_p,
                            "buyer_i": b,
                        }
                    )
                )
            stock = stock + q - demand[w]
    truth = pl.concat(out_truth) if out_truth else None
    lines = pl.concat(out_lines) if out_lines else None
    return truth, lines
