"""Benchmark: erasure (forget), tombstone purge on re-ingest, access export and retention on a demo workspace.

    python bench/bench_privacy.py --persons 100000 [--dir /tmp/cdp-bench-100000] [--requests 5]

Works on a private copy of the ingested warehouse (``<dir>/privacy-bench``), so other benchmarks' files
are untouched. Identity resolution is not run here (bench_identity covers it): the erasure widens over
staging, which is the heavier path (more SQL, no person_map shortcut).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from datetime import date
from pathlib import Path


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def _timed(label: str, fn, rows: int | None = None) -> dict:
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    out = {"step": label, "seconds": round(seconds, 2), "peak_mb": round(peak_rss_mb())}
    if rows:
        out["rows_per_s"] = round(rows / seconds)
    print("privacy  " + "  ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in out.items()))
    return {"result": result, **out}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--persons", type=int, default=100_000)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--requests", type=int, default=3, help="forget requests to time")
    args = ap.parse_args(argv)
    from cdp_ml import Workspace
    from cdp_ml.demo import generate
    from cdp_ml.privacy import apply_retention, export_person, forget
    from cdp_ml.sources import ingest

    source = Path(args.dir or f"/tmp/cdp-bench-{args.persons}")
    if not (source / "cdp_ml.yaml").exists():
        generate(source, persons=args.persons, seed=7)
    root = source / "privacy-bench"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    for item in ("cdp_ml.yaml", "raw"):
        (root / item).symlink_to(source / item)
    ws = Workspace.open(root)
    results = [_timed("ingest", lambda: ingest(ws))]
    with ws.connect() as con:
        staged = sum(con.execute(f"select count(*) from {t}").fetchall()[0][0]
                     for t in ("customers", "events", "orders", "interactions", "consents"))
        emails = [r[0] for r in con.execute("""select email from customers where email is not null and source = 'crm'
                                               order by hash(email) limit ?""", [args.requests + 1]).fetchall()]
    results.append(_timed("export-person", lambda: export_person(ws, email=emails[-1]), staged))
    for i, email in enumerate(emails[:-1]):
        results.append(_timed(f"forget #{i + 1}", lambda e=email: forget(ws, email=e), staged))
        assert results[-1]["result"].exit_code == 0
    results.append(_timed("forget --report-raw", lambda: forget(ws, email=emails[0], report_raw=True), staged))
    with ws.connect() as con:
        con.execute("delete from loads")  # force a full re-ingest: every erased person is in the raw files
    results.append(_timed("re-ingest + purge", lambda: ingest(ws)))
    ws_ret = Workspace(ws.root, ws.config.__class__(**{**ws.config.__dict__, "privacy": ws.config.privacy.__class__(
        retention_days={"anonymous_events": 395, "events": 730, "consents": 730, "quarantine": 90})}))
    results.append(_timed("retention", lambda: apply_retention(ws_ret, date.today()), staged))
    print(f"privacy  staged_rows={staged:,}  persons={args.persons:,}")
    return results


if __name__ == "__main__":
    main()
