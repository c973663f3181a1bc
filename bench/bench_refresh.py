"""Benchmark the weekly refresh on demo data: a full refresh with retraining, then a score-only refresh
of the same week; per-step wall time and peak memory (runner + notebook kernel).

    .venv/bin/python bench/bench_refresh.py --persons 100000 [--weeks 32] [--dir DIR] [--fresh]
    .venv/bin/python bench/bench_refresh.py --copy-of /tmp/scale-1m --dir /tmp/refresh-bench-1m

Without ``--copy-of`` every run starts from raw files and an empty warehouse (a first weekly run). With
``--copy-of WS`` the benchmark workspace is a copy of an already ingested (and resolved) workspace: raw
files hard-linked (same bytes, size and mtime, as in a real week where last week's exports did not
change), warehouse and MLflow store copied; that measures a steady-state weekly refresh.

Targets at 1M persons (~30M events) on 2 cores: full refresh <= 20 min, score-only <= 5 min, peak <= 12 GB.
The demo is generated with ``--weeks`` of history (default 32: ~30 events per person, the targets' volume;
the generator's 2-year default makes ~97 per person, 3x the target).
Prints ``BENCH {json}`` rows for bench/run.py. The demo data is generated once per --dir and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from cdp_ml import Workspace
from cdp_ml.demo import generate
from cdp_ml.demo.generate import HISTORY_END
from cdp_ml.refresh import refresh

TARGETS = {"full (retrain)": 20 * 60, "score only": 5 * 60}
PEAK_TARGET_MB = 12 * 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--persons", type=int, default=100_000)
    p.add_argument("--dir", default=None, help="workspace (default /tmp/refresh-bench-<persons>-<weeks>w)")
    p.add_argument("--weeks", type=int, default=32, help="history of generated demo data (default: target volume)")
    p.add_argument("--fresh", action="store_true", help="regenerate the demo data and start from an empty warehouse")
    p.add_argument("--copy-of", default=None, help="start from a copy of this ingested workspace (steady-state week)")
    p.add_argument("--ground-truth", action="store_true",
                   help="with --copy-of: also link ground_truth/ (the demo-only evaluation cells then run)")
    args = p.parse_args(argv)
    root = Path(args.dir or (f"/tmp/refresh-bench-copy-{Path(args.copy_of).name}" if args.copy_of
                             else f"/tmp/refresh-bench-{args.persons}-{args.weeks}w"))
    if args.copy_of:
        began = time.perf_counter()
        copy_workspace(Path(args.copy_of), root, args.ground_truth)
        print(f"copied {args.copy_of} -> {root} in {time.perf_counter() - began:.0f}s", flush=True)
    else:
        if args.fresh:
            shutil.rmtree(root, ignore_errors=True)
        if not (root / "cdp_ml.yaml").exists():
            began = time.perf_counter()
            generate(root, persons=args.persons, seed=7, weeks=args.weeks)
            print(f"demo data: {args.persons:,} persons, {args.weeks} weeks in {time.perf_counter() - began:.0f}s",
                  flush=True)
        for stale in ("data", "mlruns", "runs"):  # every benchmark starts from raw files: a first weekly run
            shutil.rmtree(root / stale, ignore_errors=True)
    ws = Workspace.open(root)
    as_of = HISTORY_END
    ok = True
    for label, mode in (("full (retrain)", "always"), ("score only", "never")):
        began = time.perf_counter()
        result = refresh(ws, as_of=as_of, retrain=mode)
        wall = time.perf_counter() - began
        print(result, flush=True)
        peak = 0.0
        for step in result.steps:
            if step.seconds is None:
                continue
            peak = max(peak, step.peak_rss_mb or 0.0)
            row = {"run": label, "step": step.name, "status": step.status, "seconds": round(step.seconds, 1),
                   "peak_mb": round(step.peak_rss_mb or 0), **{k: v for k, v in step.counts.items()
                                                               if k in ("rows_in", "rows_out")}}
            print("BENCH " + json.dumps(row), flush=True)
        steps_total = sum(step.seconds or 0.0 for step in result.steps)
        print("BENCH " + json.dumps({"run": label, "step": "(runner: lock, as-of, data checks, MLflow, HTML)",
                                     "status": result.status, "seconds": round(wall - steps_total, 1)}), flush=True)
        target = TARGETS[label]
        if result.exit_code != 0:
            verdict = f"not comparable: {result.status}"
        else:
            verdict = "ok" if wall <= target and peak <= PEAK_TARGET_MB else "over target"
        print("BENCH " + json.dumps({"run": label, "step": "TOTAL", "status": result.status, "seconds": round(wall, 1),
                                     "peak_mb": round(peak), "target": f"<= {target // 60} min, <= 12 GB: {verdict}"}),
              flush=True)
        ok = ok and result.exit_code == 0
    return 0 if ok else 1


def copy_workspace(source: Path, target: Path, ground_truth: bool) -> None:
    """Raw files hard-linked (unchanged exports), warehouse and MLflow store copied (the runs write to them)."""
    if not (source / "cdp_ml.yaml").is_file():
        sys.exit(f"--copy-of: {source} is not a workspace (no cdp_ml.yaml)")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copy2(source / "cdp_ml.yaml", target / "cdp_ml.yaml")
    for folder in ("raw", *(("ground_truth",) if ground_truth else ())):
        if (source / folder).is_dir():
            shutil.copytree(source / folder, target / folder, copy_function=os.link)
    for folder in ("data", "mlruns"):
        if (source / folder).is_dir():
            shutil.copytree(source / folder, target / folder)


if __name__ == "__main__":
    sys.exit(main())
