"""Benchmark the demo generator: wall time, rows per second and peak memory at --persons N.

    .venv/bin/python bench/bench_demo.py --persons 100000 [--root /tmp/demo-bench] [--keep]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from cdp_ml.demo import generate


def _watch_rss(stop: threading.Event, peak: list[int]) -> None:
    proc = psutil.Process()
    while not stop.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        stop.wait(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--root", default=None, help="output directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated workspace")
    args = parser.parse_args(argv)
    root = Path(args.root or tempfile.mkdtemp(prefix="demo-bench-"))
    peak = [0]
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_rss, args=(stop, peak), daemon=True)
    watcher.start()
    began = time.perf_counter()
    result = generate(root, persons=args.persons, seed=args.seed)
    wall = time.perf_counter() - began
    stop.set()
    watcher.join()
    rows = sum(n for path, n in result.files if path.startswith("raw/"))
    size = sum(p.stat().st_size for p in (root / "raw").rglob("*") if p.is_file())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    max_rss = max(peak[0], usage.ru_maxrss * 1024)
    cpu = usage.ru_utime + usage.ru_stime
    print(result)
    print(f"persons            {args.persons:,}")
    print(f"wall time          {wall:.1f} s (CPU {cpu:.1f} s; wall > CPU means the machine was busy)")
    print(f"raw rows written   {rows:,} ({rows / wall:,.0f} rows/s, {args.persons / wall:,.0f} persons/s)")
    print(f"raw size on disk   {size / 1e6:,.1f} MB")
    print(f"peak memory (RSS)  {max_rss / 1e6:,.0f} MB")
    if not args.keep and not args.root:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
