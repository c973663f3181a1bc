"""Orders with known per-category repurchase cycles, for the cycle-recovery test and the benchmark.

Each person buys a few categories; each person x category is a renewal process with gamma-distributed
intervals around the category's cycle (person-specific pace), a small dropout chance after each purchase,
and a December lift. Written straight into a warehouse as an orders-only workspace would look after
ingest + resolve (``orders`` table and a ``person_orders`` view), generated vectorised in numpy.
"""

from __future__ import annotations

from datetime import date, timedelta

import duckdb
import numpy as np
import pandas as pd

CYCLES = {"bath": 3.0, "skin": 5.0, "home": 7.0, "gift": 12.0}  # weeks


def orders(persons: int, start: date, weeks: int = 104, seed: int = 0,
           cycles: dict[str, float] = CYCLES, first_person: int = 0) -> pd.DataFrame:
    """One row per order line: order_id, customer_ref, ordered_at, category, quantity, amount, status."""
    rng = np.random.default_rng(seed)
    names = list(cycles)
    owns = rng.random((persons, len(names))) < np.linspace(0.7, 0.35, len(names))
    owns[np.arange(persons), rng.integers(0, len(names), persons)] = True
    person, cat = np.nonzero(owns)
    cycle = np.array([cycles[n] for n in names])[cat] * rng.lognormal(0.0, 0.15, len(cat))
    shape = 6.0
    n_max = int(weeks / min(cycles.values()) * 2.5) + 5
    gaps = rng.gamma(shape, cycle[:, None] / shape, (len(cat), n_max))
    gaps[:, 0] = rng.uniform(0, weeks * 0.8, len(cat))  # first purchase somewhere in the history
    times = np.cumsum(gaps, axis=1)
    alive = np.cumprod(rng.random((len(cat), n_max)) > 0.03, axis=1).astype(bool)
    alive[:, 0] = True
    keep = (times < weeks) & alive
    rows, cols = np.nonzero(keep)
    t = times[rows, cols]
    days = np.floor(t * 7).astype(int)
    when = pd.Timestamp(start) + pd.to_timedelta(days, unit="D") + pd.to_timedelta(rng.integers(8, 22, len(t)), unit="h")
    december = when.month == 12
    extra = december & (rng.random(len(t)) < 0.3)  # seasonal extra purchase a few days later
    frame = pd.DataFrame({
        "customer_ref": np.char.add("C", (person[rows] + first_person).astype(str)),
        "ordered_at": when,
        "category": np.array(names)[cat[rows]],
        "quantity": rng.integers(1, 3, len(t)).astype(float),
        "amount": np.round(rng.gamma(2.0, 12.0, len(t)), 2),
    })
    dup = frame[extra].copy()
    dup["ordered_at"] = dup["ordered_at"] + pd.to_timedelta(rng.integers(1, 5, len(dup)), unit="D")
    frame = pd.concat([frame, dup], ignore_index=True).sort_values("ordered_at", kind="stable")
    frame["order_id"] = np.char.add(f"O{first_person}-", np.arange(len(frame)).astype(str))
    frame["status"] = np.where(rng.random(len(frame)) < 0.03, "returned", "completed")
    return frame.reset_index(drop=True)[["order_id", "customer_ref", "ordered_at", "category", "quantity",
                                         "amount", "status"]]


def write_warehouse(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, append: bool = False) -> None:
    """Store orders and a person_orders view (person = customer key, as identity does for orders-only data)."""
    con.register("sim_orders", frame)
    if append:
        con.execute("insert into orders select *, 'shop' as source from sim_orders")
    else:
        con.execute("create or replace table orders as select *, 'shop' as source from sim_orders")
    con.unregister("sim_orders")
    con.execute("create or replace view person_orders as select *, 'P' || customer_ref as person_id from orders")


def default_start(weeks: int = 104, today: date | None = None) -> date:
    """A Monday ``weeks`` before the current week (history ends at the current week)."""
    today = today or date.today()
    monday = today - timedelta(days=today.weekday())
    return monday - timedelta(weeks=weeks)
