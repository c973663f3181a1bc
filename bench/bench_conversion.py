"""Benchmark conversion intent: backtest + train (with gate and registration) on a synthetic warehouse.

    .venv/bin/python bench/bench_conversion.py --persons 1000000 [--sessions-per-person 8] [--weeks 32]
                                               [--dir /tmp/conversion-bench]
    .venv/bin/python bench/bench_conversion.py --from-workspace /tmp/scale-1m --dir /tmp/conversion-1m

The second form copies an existing workspace's warehouse (e.g. the 1M-person demo after ingest and
identity) and its ``cdp_ml.yaml`` instead of generating data, so the timing covers real sessionisation.

    .venv/bin/python bench/bench_conversion.py --score-in /tmp/convscore-1m --as-of 2026-11-23 \
        [--history-from 2026-11-16] [--check-full]

    .venv/bin/python bench/bench_conversion.py --train-in /tmp/conv-1m --as-of 2026-11-23 [--history-from 2026-11-16]

The fourth form times ``conversion.train`` (gate backtest + final fit + registration: the 10-minute target)
in place on a copy you own; ``--history-from`` first scores that earlier as-of (timed apart, needs a
champion), so the timed training extends the stored session history by a week, as a weekly refresh does.

The third form times ``conversion.score`` in place on a workspace with a champion (use a copy you own: it
writes ``conversion_scores`` and the stored session history); ``--history-from`` first scores that earlier
as-of (timed apart), so the timed score extends the stored session history by the weeks between, as a weekly
refresh does; ``--check-full`` then also builds every session's points as before scoring was restricted to the
audience and compares the audience rows and the champion's probabilities.

Generates staging ``events`` and ``orders`` in DuckDB SQL (a browsing funnel whose purchase probability
rises with product views and cart adds; ~4 events per session; no real data), then times
``conversion.train`` (gate backtest + final fit + registration; ``--with-backtest`` also times a separate
``conversion.backtest``) and prints wall time, scoring points per second and
peak memory (RSS of this process). The target is training + backtest of 1M persons within 10 minutes on
2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import resource
import shutil
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from cdp_ml import engine  # noqa: E402
from cdp_ml.models import conversion  # noqa: E402
from cdp_ml.workspace import Workspace  # noqa: E402

AS_OF = date(2026, 11, 23)


def generate(ws: Workspace, persons: int, sessions_per_person: int, weeks: int) -> dict[str, int]:
    """Synthetic staging events/orders: sessions with a funnel, logins, purchases and matching orders."""
    start = AS_OF - timedelta(weeks=weeks)
    with ws.connect() as con:
        con.execute("select setseed(0.17)")
        con.execute("""
            create or replace temp table bench_sessions as
            with s as (
                select i as sid, (i % ?) as person, random() as intent,
                       ?::timestamp + to_seconds((random() * ? * 604800)::bigint) as started
                from range(?::bigint) t(i)
            )
            select *, 'd' || person || '-' || (sid % 2) as device,
                   1 + (random() * (1 + 4 * intent))::int as views,
                   random() < 0.05 + 0.5 * intent * intent as cart,
                   random() < 0.3 as login
            from s
        """, [persons, start, weeks, persons * sessions_per_person])
        con.execute("""
            create or replace table events as
            with s as (
                select *, cart and random() < 0.6 as checkout from bench_sessions
            ), s2 as (
                select *, checkout and random() < 0.7 as purchase,
                       list_concat(['page_view'], case when login or checkout then ['login'] else [] end,
                                   list_transform(range(views), lambda x: 'product_view'),
                                   case when cart then ['add_to_cart'] else [] end,
                                   case when checkout then ['checkout_start'] else [] end) as steps
                from s
            ), s3 as (
                select *, list_concat(steps, case when purchase then ['purchase'] else [] end) as all_steps from s2
            )
            select 'web' as source, 'crm' as ref_source, 'record_id' as ref_key,
                   sid || '-' || k as event_id, started + to_seconds(k * 37) as "timestamp", event_type,
                   device as anonymous_id,
                   case when (login or checkout) and k >= 2 then 'c' || person end as customer_ref,
                   sid::varchar as session_id,
                   case when event_type in ('product_view', 'add_to_cart') then 'sku' || (sid % 50) end as product_id,
                   case when event_type in ('product_view', 'add_to_cart') then 'cat' || (sid % 6) end as category,
                   case when event_type in ('product_view', 'add_to_cart') then 5 + (sid % 50) end::double as value,
                   'web' as channel, '/p' as url, null::varchar as referrer, '{}'::json as attributes
            from (select *, unnest(all_steps) as event_type, generate_subscripts(all_steps, 1) as k from s3)
        """)
        con.execute("""
            create or replace table orders as
            select 'webshop' as source, 'crm' as ref_source, 'record_id' as ref_key,
                   session_id as order_id, customer_ref, "timestamp" as ordered_at, 'cat1' as category,
                   1.0 as quantity, 20.0 as amount, 'completed' as status, '{}'::json as attributes
            from events where event_type = 'purchase'
        """)
        con.execute("drop table bench_sessions")
        return {t: con.execute(f"select count(*) from {t}").fetchall()[0][0] for t in ("events", "orders")}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def score_in_place(ws: Workspace, as_of: date | None, check_full: bool, history_from: date | None = None) -> None:
    """Time the audience-only scoring; optionally compare it with the audience of a full feature build."""
    import numpy as np

    from cdp_ml import tracking
    from cdp_ml.features import conversion as feats
    from cdp_ml.privacy.profiling import profiling_excluded_sql

    as_of = as_of or conversion.default_as_of(ws)
    _store_history(ws, history_from)
    _timed("score (audience build + fetch + predict + write)", lambda: conversion.score(ws, as_of),
           lambda r: r.visitors)
    if not check_full:
        return
    s = ws.config.conversion
    until = conversion._midnight(as_of)
    with ws.connect() as con:
        scored = con.execute("select person_id, anonymous_id, probability from conversion_scores where as_of = ?",
                             [as_of]).df()
    t0 = time.perf_counter()
    with ws.connect() as con, engine.bounded_memory(con):  # the build `score` ran before this change
        spec = feats.build_points(con, s, ws.config.features, until)
        full = feats.fetch_audience(con, spec, until, s.active_days, keep=profiling_excluded_sql(con, as_of))
    print("BENCH " + json.dumps({"step": "full build + fetch (the previous scoring path)",
                                 "seconds": round(time.perf_counter() - t0, 1), "rows": len(full),
                                 "peak_mb": round(peak_mb())}), flush=True)
    model = conversion._load(tracking.champion_version(ws, conversion.MODEL_NAME))
    model.threads = max(s.threads, 1)
    full["probability"] = model.predict(full)
    keys = ["person_id", "anonymous_id"]  # one row per visitor in both, ordered alike
    ours = scored.sort_values(keys, na_position="last", kind="stable").reset_index(drop=True)
    theirs = full[keys + ["probability"]].sort_values(keys, na_position="last", kind="stable").reset_index(drop=True)
    same_rows = len(ours) == len(theirs) and all(ours[k].equals(theirs[k]) for k in keys)
    diff = (ours["probability"] - theirs["probability"]).abs() if same_rows else None
    print(f"audience: {len(ours):,} scored, {len(theirs):,} from the full build, same visitors: {same_rows}"
          + (f"; probabilities equal: {int((diff == 0).sum()):,}, max |difference| {diff.max():.3g}" if same_rows else ""),
          flush=True)
    assert same_rows, "the audiences differ"
    assert np.allclose(ours["probability"], theirs["probability"], rtol=1e-12, atol=0), "probabilities differ"


def train_in_place(ws: Workspace, as_of: date | None, history_from: date | None = None) -> None:
    """Time ``train`` where the workspace is (after an optional earlier score that stores the history)."""
    as_of = as_of or conversion.default_as_of(ws)
    _store_history(ws, history_from)
    _timed("train (features + gate backtest + final fit + register)", lambda: conversion.train(ws, as_of),
           lambda r: r.train_rows)


def _store_history(ws: Workspace, history_from: date | None) -> None:
    """The previous week's run (timed apart): stores the session history up to ``history_from``."""
    if history_from is not None:
        _timed(f"score {history_from} (stores the session history)", lambda: conversion.score(ws, history_from),
               lambda r: r.visitors, show=False)


def _timed(step: str, run: Callable[[], Any], rows: Callable[[Any], int], show: bool = True) -> Any:
    """Run ``run()``, print its result (``show``) and a BENCH line with seconds, ``rows(result)`` and peak RSS."""
    t0 = time.perf_counter()
    result = run()
    if show:
        print(result, flush=True)
    print("BENCH " + json.dumps({"step": step, "seconds": round(time.perf_counter() - t0, 1), "rows": rows(result),
                                 "peak_mb": round(peak_mb())}), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=100_000)
    ap.add_argument("--sessions-per-person", type=int, default=8)
    ap.add_argument("--weeks", type=int, default=32)
    ap.add_argument("--dir", default="/tmp/conversion-bench")
    ap.add_argument("--with-backtest", action="store_true", help="also time a separate `backtest` call")
    ap.add_argument("--from-workspace", help="copy this workspace's warehouse and cdp_ml.yaml instead of generating")
    ap.add_argument("--backtest-only", action="store_true",
                    help="time one `backtest` (features + fit + baselines + evaluation) instead of `train`")
    ap.add_argument("--save-frames", help="--backtest-only: also pickle the training and evaluation frames here, "
                                          "so model settings can be compared offline without rebuilding features")
    ap.add_argument("--score-in", help="time `conversion.score` in place on this workspace (one with a champion)")
    ap.add_argument("--train-in", help="time `conversion.train` in place on this workspace")
    ap.add_argument("--as-of", help="--score-in/--train-in: the as-of date (default: the Monday after the latest event)")
    ap.add_argument("--history-from", help="--score-in/--train-in: first score this earlier as-of, so the timed run "
                                           "extends the stored session history from there")
    ap.add_argument("--check-full", action="store_true",
                    help="--score-in: also build the full points and compare the audience rows and probabilities")
    args = ap.parse_args()
    if args.score_in or args.train_in:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
        for name in ("cdp_ml.features.conversion", "cdp_ml.features.sessions", "cdp_ml.models.conversion"):
            logging.getLogger(name).setLevel(logging.INFO)
        as_of = date.fromisoformat(args.as_of) if args.as_of else None
        history_from = date.fromisoformat(args.history_from) if args.history_from else None
        if args.train_in:
            train_in_place(Workspace.open(args.train_in), as_of, history_from)
        else:
            score_in_place(Workspace.open(args.score_in), as_of, args.check_full, history_from)
        return
    # the stages log each phase's seconds (sessions, histories, fetch, fit, scoring, baseline)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("cdp_ml.features.conversion", "cdp_ml.models.conversion"):
        logging.getLogger(name).setLevel(logging.INFO)
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    if args.from_workspace:
        source = Workspace.open(args.from_workspace)
        (root / "cdp_ml.yaml").write_text(yaml.safe_dump({
            **yaml.safe_load((source.root / "cdp_ml.yaml").read_text()), "warehouse": "data/warehouse.duckdb",
            "mlflow_dir": "mlruns"}))
        ws = Workspace.open(root)
        ws.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source.warehouse_path, ws.warehouse_path)
        wal = source.warehouse_path.with_name(source.warehouse_path.name + ".wal")
        if wal.exists():
            shutil.copy(wal, ws.warehouse_path.with_name(ws.warehouse_path.name + ".wal"))
        with ws.connect() as con:
            counts = {t: con.execute(f"select count(*) from {t}").fetchall()[0][0] for t in ("events", "orders")}
        as_of = conversion.default_as_of(ws)
    else:
        (root / "cdp_ml.yaml").write_text(yaml.safe_dump({"sources": []}))
        ws = Workspace.open(root)
        counts = generate(ws, args.persons, args.sessions_per_person, args.weeks)
        as_of = AS_OF
    gen_s = time.perf_counter() - t0
    print(f"{'copied' if args.from_workspace else 'generated'} {counts['events']:,} events, {counts['orders']:,} "
          f"orders in {gen_s:.1f}s", flush=True)

    def report(step: str, seconds: float, rows: int) -> None:
        print("BENCH " + json.dumps({"step": step, "seconds": round(seconds, 1), "rows": rows,
                                     "rows_per_s": round(rows / max(seconds, 1e-9)), "peak_mb": round(peak_mb())}),
              flush=True)

    report("copy" if args.from_workspace else "generate", gen_s, counts["events"])
    if args.backtest_only:  # the backtest's two phases timed apart, so a run cut short still tells where time goes
        s = ws.config.conversion
        cutoff = as_of - timedelta(weeks=s.backtest_weeks + 1)
        window_end = cutoff + timedelta(weeks=s.backtest_weeks)
        t0 = time.perf_counter()
        with ws.connect() as con, engine.bounded_memory(con):  # as backtest() runs it
            spec, train, evaluation = conversion._frames(con, ws, cutoff, window_end + timedelta(days=s.horizon_days))
        feat_s = time.perf_counter() - t0
        report("features (sessionise + points + fetch)", feat_s, spec.rows)
        t1 = time.perf_counter()
        bt = conversion._evaluate(ws, spec, train, evaluation, cutoff, window_end)
        fit_s = time.perf_counter() - t1
        print(bt, flush=True)
        report("fit + baselines + evaluation", fit_s, bt.train_rows + bt.eval_rows)
        report("backtest total", feat_s + fit_s, bt.train_rows + bt.eval_rows)
        if args.save_frames:  # after the timings: pickling is not part of them
            with open(args.save_frames, "wb") as f:
                pickle.dump({"spec": spec, "train": train, "train_attrs": dict(train.attrs), "evaluation": evaluation},
                            f, protocol=5)
        return
    # train = gate backtest (fit before the window, score it, baselines) + final fit + register: the target
    t0 = time.perf_counter()
    tr = conversion.train(ws, as_of)
    tr_s = time.perf_counter() - t0
    print(tr, flush=True)
    report("train (backtest + fit + register)", tr_s, tr.train_rows + tr.backtest.train_rows + tr.backtest.eval_rows)
    if args.with_backtest:
        t0 = time.perf_counter()
        bt = conversion.backtest(ws, as_of - timedelta(weeks=ws.config.conversion.backtest_weeks + 1))
        report("backtest", time.perf_counter() - t0, bt.train_rows + bt.eval_rows)
    print(f"train with its backtest: {tr_s:.1f}s for {counts['events']:,} events; "
          f"peak RSS {peak_mb():,.0f} MB", flush=True)


if __name__ == "__main__":
    main()
