"""Identity-resolution benchmark: records/s, comparisons, peak memory and F1 on demo data.

    python bench/bench_identity.py --persons 100000 [--dir /tmp/identity-bench-100k] [--keep]

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
    args = parser.parse_args()
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="identity-bench-"))
    try:
        ws = _prepared(root, args.persons, args.seed)
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
            scores = evaluate(ws, demo=True)
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


def _prepared(root: Path, persons: int, seed: int) -> Workspace:
    """Generate and ingest the demo workspace unless ``root`` already holds an ingested one."""
    if (root / "cdp_ml.yaml").is_file():
        ws = Workspace.open(root)
        with ws.connect() as con:
            if table_exists(con, "customers"):
                return ws
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
