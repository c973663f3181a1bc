"""Benchmark: the event-vocabulary mapping at ingest on a RetailRocket-shaped log.

    python bench/bench_event_vocabulary.py --rows 5000000 [--dir /tmp/vocab-bench]

Writes a CSV of N events (epoch-ms timestamps, RetailRocket and Segment-style names plus a tail of 200
custom names), ingests it through the workspace API (wall time, rows/s, peak memory), then times the
mapping expression alone three ways on the loaded names: the lookup per distinct name hash-joined to the
rows (what ingest does), the same CASE evaluated per row, and the former plain lower-casing.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

NAMES = ["view", "view", "view", "view", "addtocart", "transaction", "Product Viewed", "Product Added",
         "Order Completed", "page_view"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--dir", default="/tmp/vocab-bench")
    args = ap.parse_args(argv)
    import duckdb
    import yaml

    from cdp_ml import Workspace
    from cdp_ml.sources import ingest
    from cdp_ml.sources import normalise as nz

    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    with duckdb.connect() as con:
        con.execute(f"""copy (select 1772409600000 + i * 997 as "timestamp", (i * 7919) % {max(args.rows // 8, 1)} as visitorid,
                                     case when i % 50 = 0 then 'custom_event_' || (i // 50 % 200)
                                          else (?::varchar[])[1 + i % {len(NAMES)}] end as event,
                                     (i * 104729) % 50000 as itemid,
                                     case when i % {len(NAMES)} = 5 then 't' || i end as transactionid
                              from range({args.rows}) r(i)) to '{root / "events.csv"}' (header)""", [NAMES])
    (root / "cdp_ml.yaml").write_text(yaml.safe_dump({"sources": [{
        "name": "rr", "kind": "events", "path": "events.csv",
        "columns": {"timestamp": "timestamp", "event_type": "event", "anonymous_id": "visitorid",
                    "product_id": "itemid"}}]}))
    ws = Workspace.open(root)
    t0 = time.perf_counter()
    result = ingest(ws)
    seconds = time.perf_counter() - t0
    out = {"rows": args.rows, "ingest_s": round(seconds, 1), "rows_per_s": round(result.rows_read / seconds),
           "peak_rss_mb": round(peak_rss_mb()), "loaded": result.rows_loaded, "quarantined": result.rows_quarantined}
    with duckdb.connect(str(ws.warehouse_path), read_only=True) as con:
        out["distinct_names"] = con.execute("select count(distinct raw_event_type) from events").fetchall()[0][0]
        out["types"] = dict(con.execute("select event_type, count(*) from events where event_type in "
                                        "('product_view', 'page_view', 'add_to_cart', 'purchase') group by 1").fetchall())
        timings = {
            "vocab_join_s": f"""with v as materialized (select r, {nz.event_type('r')} as c
                                                        from (select distinct raw_event_type as r from events))
                                select count(c) from events left join v on raw_event_type = v.r""",
            "per_row_case_s": f"select count({nz.event_type('raw_event_type')}) from events",
            "lower_only_s": f"select count({nz.lower_token('raw_event_type')}) from events",
        }
        for name, sql in timings.items():
            t = time.perf_counter()
            con.execute(sql).fetchall()
            out[name] = round(time.perf_counter() - t, 2)
    print(out)
    return out


if __name__ == "__main__":
    main()
