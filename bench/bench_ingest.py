"""Benchmark: ingestion wall time, rows/s and peak memory on a generated demo workspace.

    python bench/bench_ingest.py --persons 100000 [--dir /tmp/cdp-bench-100000]

Reuses the demo files in --dir when present (generation is benchmarked by bench_demo.py).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children (MB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--persons", type=int, default=100_000)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args(argv)
    from cdp_ml import Workspace
    from cdp_ml.demo import generate
    from cdp_ml.sources import ingest

    root = Path(args.dir or f"/tmp/cdp-bench-{args.persons}")
    if not (root / "cdp_ml.yaml").exists():
        generate(root, persons=args.persons, seed=7)
    shutil.rmtree(root / "data", ignore_errors=True)
    ws = Workspace.open(root)
    t0 = time.perf_counter()
    result = ingest(ws)
    seconds = time.perf_counter() - t0
    out = {"persons": args.persons, "rows_read": result.rows_read, "rows_loaded": result.rows_loaded,
           "rows_quarantined": result.rows_quarantined, "seconds": round(seconds, 1),
           "rows_per_s": round(result.rows_read / seconds), "peak_mb": round(peak_rss_mb())}
    print("ingest  " + "  ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in out.items()))
    return out


if __name__ == "__main__":
    main()
