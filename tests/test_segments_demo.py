"""Segments on the demo workspace (ingested, resolved) with hand-made scores for its persons."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pandas as pd
from segments_fixtures import write_scores

from cdp_ml.privacy.consent import consent_state
from cdp_ml.segments import build_segments, write_report
from cdp_ml.segments.templates import slug


def test_demo_segments_respect_consent_and_count_exclusions(demo_ws):
    from cdp_ml.identity import resolve

    ws = demo_ws
    with ws.connect() as con:
        last = con.execute("select max(ordered_at) from orders").fetchall()[0][0].date()
    as_of = date.fromordinal(last.toordinal() + 7 - last.weekday())  # the Monday after the data ends
    resolve(ws, as_of=as_of)
    with ws.connect() as con:
        ids = [r[0] for r in con.execute("select person_id from profiles order by 1").fetchall()]
        write_scores(con, ids, as_of, np.random.default_rng(0))
        # the demo's own categories, so complaints and returns meet their segments
        cats = [r[0] for r in con.execute("select distinct category from person_orders where category is not null "
                                          "order by 1 limit 2").fetchall()]
        con.execute("update repurchase_scores set category = case category when 'coffee' then ? when 'tea' then ? "
                    "else category end", cats)
        allowed = {purpose: {p for p, pur, g, _ in consent_state(con, as_of).fetchall() if pur == purpose and g}
                   for purpose in ("email_marketing", "ad_targeting")}
        objected = {p for p, pur, g, _ in consent_state(con, as_of).fetchall() if pur == "profiling" and not g}
    result = build_segments(ws, as_of)
    manifest = json.loads(result.manifest.read_text())
    names = {s["name"] for s in manifest["segments"]}
    assert {f"repurchase_next_week_{slug(c)}" for c in cats} <= names
    total = {r: sum(s["excluded"][r] for s in manifest["segments"]) for r in manifest["segments"][0]["excluded"]}
    assert total["no_consent"] > 0 and total["opted_out"] > 0
    for s in manifest["segments"]:
        members = set(pd.read_parquet(result.folder / s["name"] / "members.parquet")["person_id"].dropna())
        assert members <= allowed[s["purpose"]] - objected
        assert s["candidates"] == s["members"] + sum(s["excluded"].values())
    report = write_report(ws, as_of)
    assert report.path.is_file()
