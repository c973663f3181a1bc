"""Benchmark the segments stage on a synthetic warehouse generated in SQL.

    .venv/bin/python bench/bench_segments.py --persons 100000 [--categories 10] [--weeks 8] [--dir /tmp/segments-bench]

Builds profiles, person_map, consents, interactions, orders, events and both score tables following
docs/CONTRACT.md (random values, no real data), then times ``build_segments`` (default templates) and
``write_report``; prints wall time, candidate rows per second and peak memory (RSS).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdp_ml.segments import build_segments, write_report  # noqa: E402
from cdp_ml.workspace import Workspace  # noqa: E402

AS_OF = date(2026, 11, 23)


def generate(ws: Workspace, persons: int, categories: int, weeks: int) -> dict[str, int]:
    """Synthetic person-level tables and score snapshots, all generated inside DuckDB."""
    with ws.connect() as con:
        con.execute("select setseed(0.42)")
        con.execute("""create or replace table profiles as
            select 'p' || i as person_id, 'user' || i || case when i % 3 = 0 then '@gmail.com' else '@example.nl' end as email,
                   case when i % 2 = 0 then '+316' || lpad((i % 100000000)::varchar, 8, '0') end as phone,
                   case when i % 4 = 0 then 'BE' else 'NL' end as country
            from range(?) t(i)""", [persons])
        con.execute("""create or replace table person_map as
            select 'crm' as source, 'record' as id_type, person_id as record_id, person_id, 'exact' as method,
                   1.0 as match_probability from profiles""")
        con.execute("""create or replace table person_consents as
            select p.person_id, u.purpose, random() < 0.6 as granted,
                   timestamp '2025-01-01' + to_days((random() * 600)::int) as "timestamp", 'crm' as source
            from profiles p cross join (values ('email_marketing'), ('ad_targeting'), ('profiling')) u(purpose)
            where random() < 0.8""")
        con.execute("""create or replace table person_interactions as
            select 'p' || (random() * ?)::bigint as person_id,
                   timestamp '2026-09-01' + to_minutes((random() * 120000)::int) as "timestamp",
                   ['complaint', 'complaint_resolved', 'question', 'return_request'][1 + (random() * 3.99)::int] as type,
                   'cat' || (random() * ?)::int as category
            from range(?)""", [persons - 1, categories - 1, persons // 5])
        con.execute("""create or replace table person_orders as
            select 'p' || (random() * ?)::bigint as person_id, 'o' || i as order_id,
                   timestamp '2025-01-01' + to_minutes((random() * 990000)::int) as ordered_at,
                   'cat' || (random() * ?)::int as category,
                   case when random() < 0.05 then 'returned' else 'completed' end as status
            from range(?) t(i)""", [persons - 1, categories - 1, persons * 5])
        con.execute("""create or replace table person_events as
            select case when random() < 0.7 then 'p' || (i % ?) end as person_id, 'a' || (i % (? * 2)) as anonymous_id,
                   timestamp '2026-10-01' + to_minutes((random() * 75000)::int) as "timestamp",
                   case when random() < 0.02 then 'purchase' else 'page_view' end as event_type
            from range(?) t(i)""", [persons, persons, persons * 10])
        con.execute(f"""create or replace table repurchase_scores as
            select ?::date as as_of, p.person_id, c.category, w.week, ?::date + to_weeks(w.week - 1) as week_start,
                   random() * 0.3 as p_week, 0.0 as p_cumulative, 0.0 as expected_week, '1' as model_version
            from profiles p
            cross join (select 'cat' || i as category from range({int(categories)}) t(i) union all select '(any)') c
            cross join (select i as week from range(1, {int(weeks) + 1}) t(i)) w""", [AS_OF, AS_OF])
        con.execute("""create or replace table repurchase_scores as
            select * replace (1 - exp(sum(ln(1 - p_week)) over (partition by person_id, category order by week)) as p_cumulative)
            from repurchase_scores""")
        con.execute("""create or replace table conversion_scores as
            select ?::date as as_of, any_value(person_id) as person_id, anonymous_id, random() as probability,
                   '1' as model_version
            from person_events group by anonymous_id""", [AS_OF])
        return {t: con.execute(f"select count(*) from {t}").fetchall()[0][0]
                for t in ("profiles", "person_consents", "person_orders", "person_events", "repurchase_scores",
                          "conversion_scores")}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=100_000)
    ap.add_argument("--categories", type=int, default=10)
    ap.add_argument("--weeks", type=int, default=8)
    ap.add_argument("--dir", default="/tmp/segments-bench")
    args = ap.parse_args()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / "cdp_ml.yaml").write_text("segments: {output_dir: data/segments}\n")
    ws = Workspace.open(root)
    t0 = time.perf_counter()
    sizes = generate(ws, args.persons, args.categories, args.weeks)
    t1 = time.perf_counter()
    print(f"generated in {t1 - t0:.1f}s: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
    result = build_segments(ws, AS_OF)
    t2 = time.perf_counter()
    report = write_report(ws, AS_OF)
    t3 = time.perf_counter()
    print(result)
    scored = sizes["repurchase_scores"] + sizes["conversion_scores"]
    print(f"build_segments: {t2 - t1:.1f}s ({scored / (t2 - t1):,.0f} score rows/s); "
          f"write_report: {t3 - t2:.1f}s -> {report.path}")
    print(f"peak RSS: {peak_mb():,.0f} MB (python process; DuckDB runs in-process)")


if __name__ == "__main__":
    main()
