"""Run the weekly refresh from a scheduler without the `cdp-ml` entry point on PATH.

    .venv/bin/python pipelines/run.py --workspace /srv/cdp [--as-of DATE|latest] [--retrain auto|always|never]
                                      [--from STEP] [--resume] [--pipeline pipelines/weekly.yaml]

Exit codes: 0 published, 2 configuration error, 3 another refresh is running, 4 a step failed,
130 stopped by a signal. Same behaviour as `cdp-ml refresh`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cdp_ml.errors import CdpError
from cdp_ml.refresh import refresh
from cdp_ml.workspace import Workspace, parse_date


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the weekly refresh pipeline of notebooks.")
    p.add_argument("--workspace", "-w", default=os.environ.get("CDP_ML_WORKSPACE", "."))
    p.add_argument("--as-of", default=None, help="date, ISO week or 'latest' (default: last completed week)")
    p.add_argument("--retrain", choices=["auto", "always", "never"], default="auto")
    p.add_argument("--from", dest="from_step", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--pipeline", default=None, help="pipeline YAML (default: refresh.pipeline or pipelines/weekly.yaml)")
    args = p.parse_args(argv)
    try:
        as_of = "latest" if args.as_of == "latest" else parse_date(args.as_of, "--as-of")
        result = refresh(Workspace.open(args.workspace), as_of=as_of, retrain=args.retrain,
                         from_step=args.from_step, resume=args.resume,
                         pipeline=Path(args.pipeline) if args.pipeline else None)
    except CdpError as exc:
        print(f"refresh: error: {exc}", file=sys.stderr)
        return 2
    print(result)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
