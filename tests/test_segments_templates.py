"""Each template selects the persons its definition promises (all consented, so only selection is tested)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pandas as pd
from segments_fixtures import AS_OF, make_workspace

from cdp_ml.segments import activation, build_segments

DAY = datetime.combine(AS_OF, datetime.min.time())


def _consent_all(ws) -> None:
    with ws.connect() as con:
        con.execute("delete from person_consents")
        con.execute("insert into person_consents select person_id, u.purpose, true, '2026-01-01', 'crm' from profiles "
                    "cross join (values ('email_marketing'), ('ad_targeting')) u(purpose)")


def _run(ws) -> tuple[dict, dict[str, pd.DataFrame]]:
    result = build_segments(ws, AS_OF)
    manifest = json.loads(result.manifest.read_text())
    members = {s["name"]: pd.read_parquet(result.folder / s["name"] / "members.parquet") for s in manifest["segments"]}
    return {s["name"]: s for s in manifest["segments"]}, members


def test_thresholds_top_percent_and_cumulative_window(tmp_path):
    ws = make_workspace(tmp_path / "ws", persons=50, seed=8, config={"segments": [
        {"name": "coffee_top", "template": "repurchase_next_week", "categories": ["coffee"], "top_percent": 20},
        {"name": "coffee_hot", "template": "repurchase_next_week", "categories": ["coffee"], "threshold": 0.3},
        {"name": "bim", "template": "back_in_market_4w", "weeks": 3, "threshold": 0.5},
        {"name": "all_cats", "template": "repurchase_next_week", "top_percent": 10}]})
    _consent_all(ws)
    with ws.connect() as con:
        con.execute("delete from person_orders")  # nothing bought or returned: selection only
        scores = con.execute("select * from repurchase_scores").df()
    segs, members = _run(ws)
    week1 = scores[(scores.week == 1) & (scores.category == "coffee")].sort_values("p_week", ascending=False)
    assert list(members["coffee_top"].person_id) == list(week1.person_id[:10])  # 20 % of 50, best first
    assert list(members["coffee_top"]["rank"]) == list(range(1, 11))
    assert set(members["coffee_hot"].person_id) == set(week1[week1.p_week >= 0.3].person_id)
    cum3 = scores[(scores.week == 3) & (scores.category == "(any)")]
    assert set(members["bim"].person_id) == set(cum3[cum3.p_cumulative >= 0.5].person_id)
    assert segs["bim"]["categories"] == ["(any)"]
    assert members["all_cats"].groupby("category").size().to_dict() == {"coffee": 5, "tea": 5}


def test_retargeting_pool_exclusion_tail_and_anonymous_visitors(tmp_path):
    ws = make_workspace(tmp_path / "ws", persons=40, seed=9, config={
        "privacy": {"consent_default_granted": True},
        "segments": [{"name": "hi", "template": "retargeting_high_intent", "channel": "ads", "top_percent": 50},
                     {"name": "tail", "template": "retargeting_exclude", "channel": "ads", "keep_share": 0.9}]})
    with ws.connect() as con:
        con.execute("delete from person_consents")
        # p0001 bought within the recency window: not a retargeting candidate; p0002 was not seen recently
        con.execute("insert into person_events values ('p0001', 'a1', ?, 'purchase')", [DAY - timedelta(days=1)])
        con.execute("update person_events set \"timestamp\" = ? where person_id = 'p0002'", [DAY - timedelta(days=40)])
        visitors = con.execute("select person_id, anonymous_id, probability from conversion_scores").df()
    segs, members = _run(ws)
    pool = visitors[~visitors.person_id.isin(["p0001", "p0002"])]
    assert segs["hi"]["pool"]["visitors"] == len(pool) == 48
    assert set(members["hi"].anonymous_id) == set(pool.nlargest(24, "probability").anonymous_id)
    assert members["hi"].person_id.isna().any()  # anonymous visitors allowed by the workspace default
    tail = pool.sort_values("probability")
    kept = tail[tail.probability.cumsum() <= 0.1 * pool.probability.sum()]
    assert set(members["tail"].anonymous_id) == set(kept.anonymous_id)
    assert list(members["tail"]["rank"]) == list(range(1, len(kept) + 1))  # 1 = least likely converter
    uploads = pd.read_parquet(ws.segments_dir / "2026-W48" / "hi" / "activation.parquet")
    assert set(uploads.person_id) == set(members["hi"].person_id.dropna())  # anonymous: no contact upload
    google = pd.read_csv(ws.segments_dir / "2026-W48" / "hi" / activation.GOOGLE_FILE)
    assert list(google.columns) == ["Email", "Phone"] and len(google) == len(uploads)


def test_lapsing_compares_with_the_persons_own_rhythm(tmp_path):
    ws = make_workspace(tmp_path / "ws", persons=6, seed=10, config={"segments": [
        {"name": "lapsing", "template": "lapsing", "lapse_ratio": 0.5}]})
    _consent_all(ws)
    with ws.connect() as con:
        con.execute("delete from person_orders")
        # p0000, p0001: bought every 14 days until 60 days ago; p0002: same rhythm but bought 5 days ago;
        # p0003: one order only (no rhythm)
        for p, last in (("p0000", 60), ("p0001", 60), ("p0002", 5), ("p0003", 60)):
            for k in range(4 if p != "p0003" else 1):
                con.execute("insert into person_orders values (?, ?, ?, 'coffee', 'completed')",
                            [p, f"{p}-{k}", DAY - timedelta(days=last + 14 * k)])
        usual = 1 - 2.718281828 ** (-7 / 14)  # ~0.39
        con.execute("update repurchase_scores set p_week = 0.05 where week = 1 and category = '(any)'")
        con.execute("update repurchase_scores set p_week = ? where week = 1 and category = '(any)' and person_id = 'p0001'",
                    [usual * 0.8])
    segs, members = _run(ws)
    assert list(members["lapsing"].person_id) == ["p0000"]
    assert segs["lapsing"]["categories"] == ["(any)"]
    assert members["lapsing"].score.iloc[0] > 0.8  # 1 - 0.05 / 0.39
