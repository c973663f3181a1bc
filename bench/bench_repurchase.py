"""Benchmark repurchase timing: backtest + train (gate backtest, final fit, MLflow registration), then score.

Standalone: simulates an orders-only warehouse (``cdp_ml.models.repurchase_simulation``: 104 weeks,
known category cycles) for ``--persons`` persons in a scratch workspace, or with ``--copy-of WS`` copies
an already ingested and resolved workspace (e.g. the 1M-person demo: orders, events, contacts), then
times the stages and prints wall time, rows/s and peak memory. Target: training + backtest on 1M
persons within 10 minutes on 2 cores.

    .venv/bin/python bench/bench_repurchase.py --persons 1000000 [--set n_estimators=100 --set learning_rate=0.1]
    .venv/bin/python bench/bench_repurchase.py --copy-of /tmp/scale-1m --dir /tmp/repurchase-1m
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from datetime import date, timedelta
from pathlib import Path

import psutil

from cdp_ml.models import repurchase, repurchase_simulation
from cdp_ml.workspace import Workspace

START = date(2024, 1, 1)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time of this process: on a shared machine it shows what the wall time would be when idle."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_row(step: str, seconds: float, rows: int, cpu: float) -> None:
    """One row of the `make bench` table."""
    print("BENCH " + json.dumps({"step": step, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
                                 "rows": rows, "rows_per_s": round(rows / max(seconds, 1e-9)),
                                 "peak_mb": round(peak_mb())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--weeks", type=int, default=104)
    parser.add_argument("--block", type=int, default=200_000, help="persons simulated per block")
    parser.add_argument("--dir", default=None, help="scratch workspace (default /tmp/repurchase-bench-N)")
    parser.add_argument("--skip-train", action="store_true", help="only the backtest (no train, no score)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a repurchase: setting for the simulated workspace, e.g. --set n_estimators=100")
    parser.add_argument("--copy-of", default=None,
                        help="copy this ingested + resolved workspace (cdp_ml.yaml and warehouse) instead of simulating")
    args = parser.parse_args()
    root = Path(args.dir or (f"/tmp/repurchase-bench-copy-{Path(args.copy_of).name}" if args.copy_of
                             else f"/tmp/repurchase-bench-{args.persons}"))
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t, c = time.perf_counter(), cpu_seconds()
    if args.copy_of:
        source = Path(args.copy_of)
        if not (source / "data" / "warehouse.duckdb").exists():
            raise SystemExit(f"--copy-of: {source} has no data/warehouse.duckdb (ingest and resolve it first)")
        shutil.copy2(source / "cdp_ml.yaml", root / "cdp_ml.yaml")
        (root / "data").mkdir()
        shutil.copy2(source / "data" / "warehouse.duckdb", root / "data" / "warehouse.duckdb")
    else:
        settings = "".join(f"  {item.split('=', 1)[0]}: {item.split('=', 1)[1]}\n" for item in args.set)
        (root / "cdp_ml.yaml").write_text("sources: []\n" + (f"repurchase:\n{settings}" if settings else ""))
    ws = Workspace.open(root)
    print(f"cores {psutil.cpu_count()}, memory {psutil.virtual_memory().total / 2**30:.0f} GB, "
          f"threads {ws.config.repurchase.threads}")
    if args.copy_of:
        with ws.connect() as con:
            lines, persons = con.execute("select count(*), count(distinct person_id) from person_orders").fetchall()[0]
        end = repurchase.default_as_of(ws)
        print(f"copied     {time.perf_counter() - t:8.1f} s  {lines:,} order lines of {persons:,} persons, as-of {end}")
    else:
        lines, persons = 0, args.persons
        with ws.connect() as con:
            for i, first in enumerate(range(0, args.persons, args.block)):
                block = repurchase_simulation.orders(min(args.block, args.persons - first), START, args.weeks,
                                                     seed=i, first_person=first)
                repurchase_simulation.write_warehouse(con, block, append=i > 0)
                lines += len(block)
        print(f"simulate   {time.perf_counter() - t:8.1f} s  {lines:,} order lines")
        bench_row("simulate orders", time.perf_counter() - t, lines, cpu_seconds() - c)
        end = START + timedelta(weeks=args.weeks)

    cutoff = end - timedelta(weeks=2 * ws.config.repurchase.horizon_weeks)
    t, c = time.perf_counter(), cpu_seconds()
    bt = repurchase.backtest(ws, cutoff)
    wall = time.perf_counter() - t
    print(f"backtest   {wall:8.1f} s  {bt.training_rows / wall:,.0f} training rows/s, {bt.tracks:,} tracks scored, "
          f"peak {peak_mb():,.0f} MB")
    cpu = cpu_seconds() - c
    bench_row("backtest (fit + evaluate)", wall, bt.training_rows, cpu)
    print(f"           phases (wall s): {bt.phase_seconds}")
    print(bt.note)
    print(bt.comparison().loc["all"].to_string())
    total, total_cpu = wall, cpu
    if not args.skip_train:
        t, c = time.perf_counter(), cpu_seconds()
        tr = repurchase.train(ws, end - timedelta(weeks=ws.config.repurchase.horizon_weeks))
        wall = time.perf_counter() - t
        total += wall
        total_cpu += cpu_seconds() - c
        print(f"train      {wall:8.1f} s  (gate backtest + final fit + registration) v{tr.version}, "
              f"peak {peak_mb():,.0f} MB")
        print(f"           phases (wall s): {tr.phase_seconds}")
        bench_row("train (gate backtest + fit + register)", wall, tr.backtest.training_rows, cpu_seconds() - c)
        t, c = time.perf_counter(), cpu_seconds()
        sc = repurchase.score(ws, end - timedelta(weeks=ws.config.repurchase.horizon_weeks))
        wall = time.perf_counter() - t
        print(f"score      {wall:8.1f} s  {sc.rows:,} rows of {sc.tracks:,} tracks into repurchase_scores, "
              f"{cpu_seconds() - c:.0f} CPU-s, peak {peak_mb():,.0f} MB (not in the total)")
        bench_row("score (champion -> repurchase_scores)", wall, sc.rows, cpu_seconds() - c)
    bench_row("TOTAL backtest + train", total, lines, total_cpu)
    print(f"total      {total:8.1f} s  for {persons:,} persons with orders (target at 1M: 600 s), peak {peak_mb():,.0f} MB")


if __name__ == "__main__":
    main()
