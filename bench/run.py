"""`make bench`: run every bench/bench_*.py at 100k persons (and 1M with BENCH_FULL=1), one table per area.

Contract for a bench script: standalone, accepts ``--persons N``, prints what it measured. Lines of the
form ``BENCH {"step": ..., "seconds": ..., "rows": ..., "peak_mb": ...}`` (one JSON object each) become
rows of the area's table; any other output is shown as-is. The harness adds the script's own wall time
and peak memory (of the script and everything it started), so every area has numbers even without
BENCH lines. Results are also written to ``bench/results/<area>-<persons>.json``.

    python bench/run.py [--persons 100000 ...] [--only refresh] [--timeout-minutes 120]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
PREFIX = "BENCH "


def run_script(script: Path, persons: int, timeout_s: float) -> dict:
    """Run one bench script; wall time, peak memory of its process tree, BENCH rows and other output."""
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(script), "--persons", str(persons)], cwd=HERE.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not done.is_set():
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total / 2**20)
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rows, other = [], []
    timer = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, 9))
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            print(f"    {line}", flush=True)
            if line.startswith(PREFIX):
                try:
                    rows.append(json.loads(line[len(PREFIX):]))
                    continue
                except json.JSONDecodeError:
                    pass
            other.append(line)
        code = proc.wait()
    finally:
        timer.cancel()
        done.set()
        sampler.join()
    return {"area": area_of(script), "persons": persons, "exit_code": code, "seconds": round(time.monotonic() - began, 1),
            "peak_mb": round(peak[0]), "rows": rows, "output": other[-40:],
            "finished": datetime.now(UTC).isoformat(timespec="seconds")}


def area_of(script: Path) -> str:
    return script.stem.removeprefix("bench_")


def table(result: dict) -> str:
    """A Markdown table: the script's BENCH rows, then a total row measured by the harness."""
    rows = result["rows"]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    columns = columns or ["step"]
    status = "ok" if result["exit_code"] == 0 else f"FAILED (exit {result['exit_code']})"
    lines = [f"### {result['area']} — {result['persons']:,} persons — {status}", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    total = {columns[0]: "**whole script (harness)**"}
    if "seconds" in columns:
        total["seconds"] = result["seconds"]
    if "peak_mb" in columns:
        total["peak_mb"] = result["peak_mb"]
    lines.append("| " + " | ".join(_cell(total.get(c, "")) for c in columns) + " |")
    lines.append(f"\nwall time {result['seconds']:,.1f} s, peak memory {result['peak_mb']:,} MB (script + children)")
    if not rows and result["output"]:
        lines += ["", "```", *result["output"][-15:], "```"]
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--persons", type=int, nargs="*", default=None, help="sizes (default 100000, plus 1000000 with BENCH_FULL=1)")
    p.add_argument("--only", nargs="*", default=None, help="areas to run (e.g. refresh identity)")
    p.add_argument("--timeout-minutes", type=float, default=120)
    args = p.parse_args(argv)
    sizes = args.persons or ([100_000, 1_000_000] if os.environ.get("BENCH_FULL") == "1" else [100_000])
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if area_of(s) in args.only]
    if not scripts:
        print("no bench/bench_*.py scripts found")
        return 1
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    results = []
    for persons in sizes:
        for script in scripts:
            print(f"== {area_of(script)} at {persons:,} persons", flush=True)
            result = run_script(script, persons, args.timeout_minutes * 60)
            (out_dir / f"{result['area']}-{persons}.json").write_text(json.dumps(result, indent=2) + "\n")
            results.append(result)
    print()
    for result in results:
        print(table(result))
        print()
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
