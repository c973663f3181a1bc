"""The ``cdp-ml`` command: a thin layer that parses arguments and calls one stage function each.

Every command prints the stage's result object; user errors print one line and exit 2; unexpected
errors exit 1 (with a traceback only under ``--debug``).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from cdp_ml.errors import CdpError


def _ws(args):
    from cdp_ml.workspace import Workspace

    return Workspace.open(args.workspace)


def _date(value):
    from cdp_ml.workspace import parse_date

    return parse_date(value)


def _date_or_latest(value):
    return "latest" if (value or "").strip().lower() == "latest" else _date(value)


def cmd_init(args) -> object:
    from cdp_ml.sources.example import write_example_workspace

    return write_example_workspace(Path(args.dir))


def cmd_demo(args) -> object:
    from cdp_ml.demo import generate

    return generate(Path(args.workspace), persons=args.persons, seed=args.seed,
                    start=_date(args.start), weeks=args.weeks)


def cmd_ingest(args) -> object:
    from cdp_ml.sources import ingest

    return ingest(_ws(args), source=args.source)


def cmd_resolve(args) -> object:
    from cdp_ml.identity import resolve

    return resolve(_ws(args), as_of=_date(args.as_of), retrain=not args.score_only)


def cmd_evaluate(args) -> object:
    from cdp_ml.identity import evaluate

    if sum(map(bool, (args.truth, args.demo, args.entity_column))) != 1:
        raise CdpError("evaluate identity: give one of --truth FILE, --demo or --entity-column COLUMN")
    return evaluate(_ws(args), truth=Path(args.truth) if args.truth else None, demo=args.demo,
                    entity_column=args.entity_column, entity_pattern=args.entity_pattern)


def cmd_backtest(args) -> object:
    ws = _ws(args)
    out = Path(args.out) if args.out else None
    cutoffs = [_date(c.strip()) for given in args.cutoff for c in given.split(",") if c.strip()]
    if args.model == "conversion":
        from cdp_ml.models import conversion

        if len(cutoffs) > 1:
            return conversion.backtest_series(ws, cutoffs, out=out)
        return conversion.backtest(ws, cutoff=cutoffs[0] if cutoffs else None, out=out)
    from cdp_ml.models import repurchase

    if len(cutoffs) != 1:
        raise CdpError("backtest repurchase: give one --cutoff YYYY-MM-DD")
    return repurchase.backtest(ws, cutoff=cutoffs[0], horizon_weeks=args.horizon_weeks, out=out)


def cmd_train(args) -> object:
    ws = _ws(args)
    if args.model == "conversion":
        from cdp_ml.models import conversion

        return conversion.train(ws, as_of=_date(args.as_of))
    from cdp_ml.models import repurchase

    return repurchase.train(ws, as_of=_date(args.as_of))


def cmd_score(args) -> object:
    ws = _ws(args)
    if args.model == "conversion":
        from cdp_ml.models import conversion

        return conversion.score(ws, as_of=_date(args.as_of))
    from cdp_ml.models import repurchase

    return repurchase.score(ws, as_of=_date(args.as_of))


def cmd_segments(args) -> object:
    from cdp_ml.segments import build_segments

    return build_segments(_ws(args), as_of=_date_or_latest(args.as_of))


def cmd_report(args) -> object:
    from cdp_ml.segments import write_report

    return write_report(_ws(args), as_of=_date_or_latest(args.as_of))


def cmd_refresh(args) -> object:
    from cdp_ml.refresh import refresh

    as_of = _date_or_latest(args.as_of)
    return refresh(_ws(args), as_of=as_of, retrain=args.retrain, from_step=args.from_step, resume=args.resume)


def cmd_forget(args) -> object:
    from cdp_ml.privacy import forget

    return forget(_ws(args), email=args.email, phone=args.phone, person_id=args.person_id,
                  file=Path(args.file) if args.file else None, report_raw=args.report_raw)


def cmd_export_person(args) -> object:
    from cdp_ml.privacy import export_person

    return export_person(_ws(args), email=args.email, phone=args.phone, person_id=args.person_id,
                         out=Path(args.out) if args.out else None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cdp-ml", description="Predictive-audience workspace for a CDP.")
    p.add_argument("--workspace", "-w", default=os.environ.get("CDP_ML_WORKSPACE", "."),
                   help="workspace directory holding cdp_ml.yaml (default: current directory)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init", help="write a commented example workspace file into DIR")
    s.add_argument("dir")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("demo", help="generate the demo workspace (raw files, cdp_ml.yaml, ground truth)")
    s.add_argument("--persons", type=int, default=2000)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--start", default=None, help="first day of generated history (default: 2 years before the last week)")
    s.add_argument("--weeks", type=int, default=104)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("ingest", help="load the sources into the warehouse (validated, quarantined, idempotent)")
    s.add_argument("--source", default=None, help="only this source")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("resolve", help="resolve identifiers into persons (deterministic + Splink)")
    s.add_argument("--as-of", default=None)
    s.add_argument("--score-only", action="store_true",
                   help="as a score-only refresh week: the saved Splink model, and only the work changed data needs")
    s.set_defaults(func=cmd_resolve)

    s = sub.add_parser("evaluate", help="evaluate identity resolution against a truth file")
    s.add_argument("what", choices=["identity"])
    s.add_argument("--truth", default=None, help="CSV of source,record_id,entity")
    s.add_argument("--demo", action="store_true", help="use the demo ground truth")
    s.add_argument("--entity-column", default=None,
                   help="the true entity is this column of the customers exports (e.g. cluster)")
    s.add_argument("--entity-pattern", default=None,
                   help="with --entity-column: the entity is the part matching this regex (FEBRL: 'rec-[0-9]+')")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("backtest", help="train before a cutoff and evaluate after it")
    s.add_argument("model", choices=["conversion", "repurchase"])
    s.add_argument("--cutoff", required=True, action="append",
                   help="YYYY-MM-DD; conversion: several (repeated or comma-separated) for one backtest per window")
    s.add_argument("--horizon-weeks", type=int, default=None)
    s.add_argument("--out", default=None, help="per-row predictions (.parquet or .csv)")
    s.set_defaults(func=cmd_backtest)

    s = sub.add_parser("train", help="train, backtest, register and gate a model as of a date")
    s.add_argument("model", choices=["conversion", "repurchase"])
    s.add_argument("--as-of", default=None)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("score", help="score with the champion model into the warehouse")
    s.add_argument("model", choices=["conversion", "repurchase"])
    s.add_argument("--as-of", default=None)
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("segments", help="build the week's consented segments and activation files")
    s.add_argument("--as-of", default=None, help="date, ISO week or 'latest' (default: the newest scores' date, at most the last completed week)")
    s.set_defaults(func=cmd_segments)

    s = sub.add_parser("report", help="write the weekly marketer report (HTML)")
    s.add_argument("--as-of", default=None, help="date, ISO week or 'latest' (default: the newest scores' date, at most the last completed week)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("refresh", help="run the weekly pipeline of notebooks with papermill")
    s.add_argument("--as-of", default=None, help="date, ISO week or 'latest' (default: last completed week)")
    s.add_argument("--retrain", choices=["auto", "always", "never"], default="auto")
    s.add_argument("--from", dest="from_step", default=None, help="start at this step (e.g. 03_conversion)")
    s.add_argument("--resume", action="store_true", help="continue the week's last failed run at its failed step")
    s.set_defaults(func=cmd_refresh)

    for name, func, helptext in (("forget", cmd_forget, "erase a person everywhere (right to erasure)"),
                                 ("export-person", cmd_export_person, "everything held about a person (right of access)")):
        s = sub.add_parser(name, help=helptext)
        g = s.add_mutually_exclusive_group(required=True)
        g.add_argument("--email")
        g.add_argument("--phone")
        g.add_argument("--person-id")
        if name == "forget":
            g.add_argument("--file", help="file with one email, phone or person id per line")
            s.add_argument("--report-raw", action="store_true", help="list raw files/lines still holding the identifiers")
        else:
            s.add_argument("--out", default=None, help="write the JSON here (default: stdout)")
        s.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except CdpError as exc:
        print(f"cdp-ml: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cdp-ml: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line unless --debug
        if args.debug:
            traceback.print_exc()
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            print(f"cdp-ml: unexpected error: {type(exc).__name__}: {first} (rerun with --debug for details)",
                  file=sys.stderr)
        return 1
    if result is not None:
        try:
            print(result, flush=True)
        except BrokenPipeError:  # `cdp-ml ... | head`: the reader left; the work itself is done
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = getattr(result, "exit_code", 0)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
