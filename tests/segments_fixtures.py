"""Small hand-made warehouses for the segments tests, following docs/CONTRACT.md (scores, persons, consents)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import yaml

from cdp_ml.workspace import Workspace

AS_OF = date(2026, 11, 23)  # a Monday: ISO week 2026-W48
CATEGORIES = ("coffee", "tea")


def make_workspace(root: Path, persons: int = 60, seed: int = 0, config: dict | None = None,
                   as_of: date = AS_OF, consent_share: float = 0.7) -> Workspace:
    """A workspace with profiles, person_map, consents, interactions, orders, events and both score tables."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cdp_ml.yaml").write_text(yaml.safe_dump(config or {}), encoding="utf-8")
    ws = Workspace.open(root)
    rng = np.random.default_rng(seed)
    ids = [f"p{i:04d}" for i in range(persons)]
    with ws.connect() as con:
        con.execute("create table profiles(person_id varchar, email varchar, phone varchar, country varchar)")
        con.executemany("insert into profiles values (?, ?, ?, ?)",
                        [(p, f"First.Last{i}@Gmail.com" if i % 3 == 0 else f"user{i}@example.nl",
                          f"+3161234{i:04d}" if i % 2 == 0 else None, "NL" if i % 4 else "BE")
                         for i, p in enumerate(ids)])
        con.execute("create table person_map(source varchar, id_type varchar, record_id varchar, person_id varchar)")
        con.executemany("insert into person_map values ('crm', 'record', ?, ?)", [(p, p) for p in ids])
        con.execute("create table person_consents(person_id varchar, purpose varchar, granted boolean, "
                    "\"timestamp\" timestamp, source varchar)")
        rows = []
        for p in ids:
            for purpose in ("email_marketing", "ad_targeting"):
                if rng.random() < consent_share:
                    rows.append((p, purpose, True, datetime(2026, 1, 1)))
        con.executemany("insert into person_consents values (?, ?, ?, ?, 'crm')", rows)
        con.execute("create table person_interactions(person_id varchar, \"timestamp\" timestamp, type varchar, "
                    "category varchar)")
        con.execute("create table person_orders(person_id varchar, order_id varchar, ordered_at timestamp, "
                    "category varchar, status varchar)")
        orders = []
        for i, p in enumerate(ids):
            for k in range(int(rng.integers(0, 5))):
                orders.append((p, f"o{i}-{k}", datetime(2026, 1, 5) + timedelta(days=int(rng.integers(0, 300))),
                               CATEGORIES[int(rng.integers(0, 2))], "completed"))
        _insert(con, "person_orders", orders)
        con.execute("create table person_events(person_id varchar, anonymous_id varchar, \"timestamp\" timestamp, "
                    "event_type varchar)")
        events = [(p, f"a{i}", datetime.combine(as_of, datetime.min.time()) - timedelta(days=2), "page_view")
                  for i, p in enumerate(ids)]
        events += [(None, f"anon{i}", datetime.combine(as_of, datetime.min.time()) - timedelta(days=1), "page_view")
                   for i in range(10)]
        _insert(con, "person_events", events)
        write_scores(con, ids, as_of, rng)
    return ws


def write_scores(con: duckdb.DuckDBPyConnection, ids: list[str], as_of: date, rng: np.random.Generator) -> None:
    """Replace this as_of's rows of repurchase_scores and conversion_scores with random probabilities."""
    con.execute("create table if not exists repurchase_scores(as_of date, person_id varchar, category varchar, "
                "week int, week_start date, p_week double, p_cumulative double, expected_week double, "
                "model_version varchar)")
    con.execute("create table if not exists conversion_scores(as_of date, person_id varchar, anonymous_id varchar, "
                "probability double, model_version varchar)")
    con.execute("delete from repurchase_scores where as_of = ?", [as_of])
    con.execute("delete from conversion_scores where as_of = ?", [as_of])
    rows = []
    for p in ids:
        for cat in (*CATEGORIES, "(any)"):
            cum = 0.0
            for w in range(1, 5):
                pw = float(rng.uniform(0, 0.4))
                cum = 1 - (1 - cum) * (1 - pw)
                rows.append((as_of, p, cat, w, as_of + timedelta(weeks=w - 1), pw, cum, 0.0, "3"))
    _insert(con, "repurchase_scores", rows)
    conv = [(as_of, p, f"a{i}", float(rng.uniform(0, 1)), "2") for i, p in enumerate(ids)]
    conv += [(as_of, None, f"anon{i}", float(rng.uniform(0, 1)), "2") for i in range(10)]
    _insert(con, "conversion_scores", conv)


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[tuple]) -> None:
    """Bulk insert through a DataFrame (executemany is row by row)."""
    if not rows:
        return
    frame = pd.DataFrame(rows, columns=[f"c{i}" for i in range(len(rows[0]))])  # noqa: F841 - read by DuckDB
    con.execute(f"insert into {table} select * from frame")
