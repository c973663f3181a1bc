"""Identity-resolution benchmark: records/s, comparisons, peak memory and F1 on demo data.

    python bench/bench_identity.py --persons 100000 [--dir /tmp/identity-bench-100k] [--keep]
    python bench/bench_identity.py --febrl-like 1500   # FEBRL-layout file, own column names, soc_sec_id extra field
    python bench/bench_identity.py --incremental --dir /tmp/copy-of-a-resolved-demo [--new 5000]

``--incremental`` times the weekly (score-only) cases on a copy of an ingested, resolved demo workspace: a
first score-only resolution, a week with nothing changed, a week of new identifiers only (new cookies,
most logging in to existing accounts) and a week that also brings new customer records (a new export,
half of them existing persons under a new email). It writes new files into the workspace: use a copy.

Generates the demo workspace (or reuses ``--dir`` when it already holds an ingested one), then times
``resolve`` and ``evaluate`` on it. Targets (issue 3): 1M customer records in <= 5 minutes and <= 8 GB
on 2 cores; demo pairwise F1 >= 0.98 with no over-merged household.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdp_ml import Workspace  # noqa: E402
from cdp_ml.engine import table_exists  # noqa: E402


class PeakMemory:
    """Samples this process's resident memory (DuckDB allocates outside Python's view)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(0.05)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mb(self) -> float:
        return self.peak / 2**20


def bench_line(step: str, seconds: float, rows: int, peak_mb: float, **extra: object) -> None:
    print("BENCH " + json.dumps({"step": step, "seconds": round(seconds, 2), "rows": rows,
                                 "rows_per_s": round(rows / seconds, 1) if seconds else None,
                                 "peak_mb": round(peak_mb, 1), **extra}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", default=None, help="workspace directory (reused when already ingested)")
    parser.add_argument("--keep", action="store_true", help="keep a temporary workspace")
    parser.add_argument("--customers-only", action="store_true",
                        help="only the demo's three customers sources (no events): the 1M-record resolution target")
    parser.add_argument("--febrl-like", type=int, default=0, metavar="ENTITIES",
                        help="instead of demo data: a FEBRL-layout file of this many entities (tests/test_identity.py)")
    parser.add_argument("--incremental", action="store_true",
                        help="weekly score-only cases on --dir (a copy of a resolved demo workspace; files are added)")
    parser.add_argument("--new", type=int, default=5000, help="--incremental: new cookies and new customer rows")
    args = parser.parse_args()
    if args.incremental:
        if not args.dir:
            parser.error("--incremental needs --dir (a copy of an ingested, resolved demo workspace)")
        return _incremental(Workspace.open(args.dir), args.new, args.seed)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="identity-bench-"))
    try:
        ws = _febrl(root, args.febrl_like) if args.febrl_like else _prepared(root, args.persons, args.seed,
                                                                              args.customers_only)
        from cdp_ml.identity import evaluate, resolve

        cpu0 = time.process_time()
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            result = resolve(ws)
            seconds = time.perf_counter() - t0
        print(result, flush=True)
        bench_line("resolve", seconds, result.records, mem.mb, persons=result.persons, identifiers=result.identifiers,
                   comparisons=result.comparisons, cpu_seconds=round(time.process_time() - cpu0, 1),
                   largest_cluster=result.largest_cluster)
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            scores = evaluate(ws, truth=root / "truth.csv") if args.febrl_like else evaluate(ws, demo=True)
            seconds = time.perf_counter() - t0
        print(scores, flush=True)
        rec = scores.records
        bench_line("evaluate", seconds, scores.identifiers.rows, mem.mb,
                   records_f1=round(rec.f1, 4) if rec else None,
                   records_precision=round(rec.precision, 4) if rec else None,
                   records_recall=round(rec.recall, 4) if rec else None,
                   identifiers_f1=round(scores.identifiers.f1, 4), over_merged=rec.over_merged if rec else None)
        print(f"max RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    finally:
        if not args.dir and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _time_phases(phases: dict[str, float]) -> None:
    """Seconds per resolution phase into ``phases``, by wrapping the phase functions resolution calls."""
    from cdp_ml.identity import inputs, matching, resolution, state, tables

    for module, name in ((state, "fingerprint"), (inputs, "prepare"), (matching, "match"), (state, "restore_pairs"),
                         (resolution, "_cluster"), (resolution, "connected_components"),
                         (resolution, "_attach_weak_pairs"), (resolution, "assign_person_ids"),
                         (tables, "write_profiles"), (resolution, "_write_tables"), (resolution, "_counts")):
        def timed(*a, _f=getattr(module, name), _n=name, **k):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                phases[_n] = phases.get(_n, 0.0) + time.perf_counter() - t0
        setattr(module, name, timed)


PHASES: dict[str, float] = {}


def _timed_resolve(ws: Workspace, step: str) -> None:
    from cdp_ml.identity import resolve

    PHASES.clear()
    cpu0 = time.process_time()
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        result = resolve(ws, retrain=False)
        seconds = time.perf_counter() - t0
    print(result, flush=True)
    path = "no-op" if any(n.startswith("nothing changed") for n in result.notes) else \
        "pairs reused" if any("pairs reused" in n for n in result.notes) else "full"
    bench_line(step, seconds, result.identifiers, mem.mb, path=path, persons=result.persons,
               cpu_seconds=round(time.process_time() - cpu0, 1), ids_new=result.ids_new, merges=result.merges,
               phases={k: round(v, 1) for k, v in PHASES.items()})


def _timed_ingest(ws: Workspace) -> None:
    from cdp_ml.sources import ingest

    t0 = time.perf_counter()
    ingest(ws)
    print(f"ingested in {time.perf_counter() - t0:.1f}s", flush=True)


def _incremental(ws: Workspace, n: int, seed: int) -> int:
    """Score-only weeks: first, unchanged, new identifiers only, new customer records (see the module doc)."""
    import yaml

    _time_phases(PHASES)
    rng = np.random.default_rng(seed)
    _timed_resolve(ws, "first score-only")
    _timed_resolve(ws, "nothing changed")
    with ws.connect() as con:
        accounts = [r[0] for r in con.execute(
            f"select record_id from customers where source = 'crm' using sample reservoir({int(n)} rows) repeatable (7)"
        ).fetchall()]
        last = con.execute("select max(timestamp) from events").fetchall()[0][0]
        people = con.sql(f"""select first_name, last_name, date_of_birth, postcode, phone from customers
            where source = 'crm' and first_name is not null using sample reservoir({int(n)} rows) repeatable (11)""").df()
    when = (last - pd.Timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    tag = f"bench{int(time.time())}"
    events = pd.DataFrame({
        "event_id": [f"{tag}-{i}" for i in range(2 * n)], "ts": when,
        "type": ["page_view", "login"] * n,
        "anonymous_id": [f"{tag}-cookie-{i // 2}" for i in range(2 * n)],
        "user_id": [None if i % 2 == 0 or (i // 2) % 10 == 0 else accounts[(i // 2) % len(accounts)]
                    for i in range(2 * n)],
        "session_id": [f"{tag}-s-{i // 2}" for i in range(2 * n)], "product_id": None, "category": None,
        "value": None, "channel": "web", "page_url": "/", "referrer": None})
    events.to_json(ws.root / "raw" / "events" / f"{tag}.jsonl", orient="records", lines=True)
    _timed_ingest(ws)
    _timed_resolve(ws, "new identifiers")
    # new sign-ups: half are existing persons under a new e-mail, half new people (recombined names)
    k = len(people)
    new = people.copy()
    half = np.arange(k) >= k // 2
    new.loc[half, "last_name"] = rng.permutation(new.loc[half, "last_name"].to_numpy())
    new.loc[half, ["date_of_birth", "phone"]] = None
    new.insert(0, "record_id", [f"{tag}-{i}" for i in range(k)])
    new["email"] = [f"{tag}.{i}@example.org" for i in range(k)]
    new["created_at"] = when
    new.to_csv(ws.root / "raw" / f"{tag}-signups.csv", index=False)
    config = yaml.safe_load((ws.root / "cdp_ml.yaml").read_text(encoding="utf-8"))
    config["sources"].append({"name": f"signups_{tag}", "kind": "customers", "path": f"raw/{tag}-signups.csv",
                                 "columns": {c: c for c in new.columns}})
    (ws.root / "cdp_ml.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    ws = Workspace.open(ws.root)
    _timed_ingest(ws)
    _timed_resolve(ws, "new customer records")
    print(f"max RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


def _customers_only(root: Path, persons: int, seed: int) -> None:
    """The demo's CRM, newsletter and loyalty exports with their ground truth, without any activity."""
    import importlib

    import yaml

    from cdp_ml.demo import people, records
    from cdp_ml.demo.sinks import CsvSink, ParquetSink

    demo = importlib.import_module("cdp_ml.demo.generate")  # the module; the package exports the function
    t0, t1 = demo._epoch(demo.HISTORY_END) - 104 * 7 * 86400, demo._epoch(demo.HISTORY_END)
    (root / "raw").mkdir(parents=True, exist_ok=True)
    (root / "ground_truth").mkdir(parents=True, exist_ok=True)
    crm = CsvSink(root / demo.FILES["crm"], delimiter=";")
    nl = CsvSink(root / demo.FILES["newsletter"])
    loyalty = ParquetSink(root / demo.FILES["loyalty"], demo.LOYALTY_SCHEMA)
    truth = CsvSink(root / "ground_truth" / "identity.csv")
    counters = {"crm": 0, "newsletter": 0, "loyalty": 0}
    taken: set[str] = set()
    for block_no, first in enumerate(range(0, persons, demo.BLOCK)):
        rng = np.random.default_rng([seed, block_no])
        p = people.make_persons(rng, first, min(demo.BLOCK, persons - first), t0, t1, seed, taken)
        frames = []
        for name, make in (("crm", records.crm), ("newsletter", records.newsletter), ("loyalty", records.loyalty)):
            df, tr, _ = make(p, rng, counters[name], t1)
            counters[name] += len(df)
            frames.append(tr)
            if name == "loyalty":
                df["registered_at"] = pd.to_datetime(df["registered_at"])
                loyalty.write(df)
            else:
                (crm if name == "crm" else nl).write(df)
        truth.write(pd.concat(frames, ignore_index=True))
    for sink in (crm, nl, loyalty, truth):
        sink.close()
    config = demo.workspace_yaml()
    config["sources"] = [s for s in config["sources"] if s["kind"] == "customers"]
    (root / "cdp_ml.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _febrl(root: Path, entities: int) -> Workspace:
    """The FEBRL-like workspace of the identity tests (typos, missing values, own column names), ingested."""
    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_identity import FEBRL_CONFIG, _febrl_like  # noqa: PLC0415 - the test's generator, one definition

    _febrl_like(root, entities=entities)
    (root / "cdp_ml.yaml").write_text(yaml.safe_dump(FEBRL_CONFIG), encoding="utf-8")
    ws = Workspace.open(root)
    from cdp_ml.sources import ingest

    ingest(ws)
    return ws


def _prepared(root: Path, persons: int, seed: int, customers_only: bool) -> Workspace:
    """Generate and ingest the demo workspace unless ``root`` already holds an ingested one."""
    if (root / "cdp_ml.yaml").is_file():
        ws = Workspace.open(root)
        with ws.connect() as con:
            if table_exists(con, "customers"):
                return ws
    elif customers_only:
        t0 = time.perf_counter()
        _customers_only(root, persons, seed)
        print(f"customer exports generated in {time.perf_counter() - t0:.0f}s", flush=True)
        ws = Workspace.open(root)
    else:
        from cdp_ml.demo import generate

        t0 = time.perf_counter()
        generate(root, persons=persons, seed=seed)
        print(f"demo generated in {time.perf_counter() - t0:.0f}s", flush=True)
        ws = Workspace.open(root)
    from cdp_ml.sources import ingest

    t0 = time.perf_counter()
    ingest(ws)
    print(f"ingested in {time.perf_counter() - t0:.0f}s", flush=True)
    return ws


if __name__ == "__main__":
    sys.exit(main())
