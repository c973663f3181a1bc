"""Segments: consent holds for every activation file, suppressions, hashing vectors, diffs, atomic writes."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from segments_fixtures import AS_OF, make_workspace, write_scores

from cdp_ml.errors import CdpError
from cdp_ml.segments import activation, build_segments, write_report
from cdp_ml.segments.build import _recover_interrupted_swap, week_folders
from cdp_ml.segments.report import quality_in_words


def _members(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(folder / name / "members.parquet")


# --- hashing ------------------------------------------------------------------------------------------

def test_hashing_matches_published_vectors():
    con = duckdb.connect()
    rows = activation.hash_identifiers(
        con, [" Test@GMAIL.com ", "test.user@gmail.com", "Test.User@Example.com", "a.b@googlemail.com", None, ""],
        ["+31612345678", "+31 6 1234 5678", "0031612345678", None, "12", None])
    g_email, g_phone, m_email, m_phone = zip(*rows, strict=True)
    # sha256("test@gmail.com") is the example vector of Google's Customer Match docs
    assert g_email[0] == m_email[0] == "87924606b4131a8aceeeae8868531fbb9712aaa07a5d3a756b26ce0f5d6ca674"
    assert g_email[1] == "dae9c7c55697ba170d6b494c458649bd469af525520280d0dcfc98d74d13b17e"  # testuser@gmail.com
    assert m_email[1] == "fcb35d8f0a3b5a1772ed467aeea03b11efeb2f18edac1787398e8c7a97d775f1"  # Meta keeps the dots
    assert g_email[2] == m_email[2] == "a97d7a4513204a9cc7cb2f11d72d41a59b18d1ba633d22e58d53c625518f5203"
    assert g_email[3] == hashlib.sha256(b"ab@googlemail.com").hexdigest()
    assert g_email[4] is None and g_email[5] is None and m_email[5] is None
    # Google: E.164 with '+'; Meta: digits with country code, no '+', no leading zeros
    assert set(g_phone[:3]) == {"fab7be8a931d1088a82f6acf9e468aaf6a3accc07d5112ee5d6fca93281e1583"}
    assert set(m_phone[:3]) == {"e03d152bbe638d9fe7a04f9b88a67674bf15b73c0981755c16eb78d177721e03"}
    assert g_phone[3] is None and g_phone[4] is None and m_phone[4] is None


# --- consent property ----------------------------------------------------------------------------------

def _random_consents(con: duckdb.DuckDBPyConnection, ids: list[str], rng: np.random.Generator) -> list[tuple]:
    con.execute("delete from person_consents")
    rows = []
    for p in ids:
        for _ in range(int(rng.integers(0, 5))):
            purpose = ["email_marketing", "ad_targeting", "profiling"][int(rng.integers(0, 3))]
            at = datetime.combine(AS_OF, datetime.min.time()) + timedelta(days=int(rng.integers(-40, 3)),
                                                                          hours=int(rng.integers(0, 2)) * 12)
            rows.append((p, purpose, bool(rng.integers(0, 2)), at))
    con.executemany("insert into person_consents values (?, ?, ?, ?, 'crm')", rows)
    return rows


def _replay(rows: list[tuple], purpose: str) -> tuple[set[str], set[str]]:
    """Reference replay of the decisions before the run date: (granted, refused) for ``purpose``; an
    objection to profiling counts as refused."""
    cutoff = datetime.combine(AS_OF, datetime.min.time())
    latest: dict[tuple[str, str], tuple[datetime, bool]] = {}
    for p, pur, granted, at in rows:
        if at < cutoff and ((p, pur) not in latest or at > latest[(p, pur)][0]
                            or (at == latest[(p, pur)][0] and not granted)):
            latest[(p, pur)] = (at, granted)
    objected = {p for (p, pur), (_, g) in latest.items() if pur == "profiling" and not g}
    granted = {p for (p, pur), (_, g) in latest.items() if pur == purpose and g} - objected
    refused = {p for (p, pur), (_, g) in latest.items() if pur == purpose and not g} | objected
    return granted, refused


@pytest.mark.parametrize("default_granted", [False, True])
def test_nobody_without_consent_in_any_activation_file(tmp_path, default_granted):
    """Property over random consent histories: every uploaded or listed person is allowed for the channel."""
    ws = make_workspace(tmp_path / "ws", persons=40, seed=1,
                        config={"privacy": {"consent_default_granted": default_granted}})
    ids = [f"p{i:04d}" for i in range(40)]
    rng = np.random.default_rng(11)
    con_hashes = duckdb.connect()
    with ws.connect() as con:
        profiles = con.execute("select person_id, email, phone from profiles").fetchall()
    hashes = {p: set(activation.hash_identifiers(con_hashes, [e], [ph])[0]) - {None} for p, e, ph in profiles}
    for case in range(6):
        with ws.connect() as con:
            rows = _random_consents(con, ids, rng)
        result = build_segments(ws, AS_OF)
        for seg in json.loads(result.manifest.read_text())["segments"]:
            folder = result.folder / seg["name"]
            granted, refused = _replay(rows, seg["purpose"])
            members = set(_members(result.folder, seg["name"])["person_id"].dropna())
            if seg["channel"] == "email":
                listed = set(pd.read_csv(folder / "email.csv", dtype=str)["person_id"])
                uploaded: set[str] = set()
            else:
                listed = set(pd.read_parquet(folder / "activation.parquet")["person_id"])
                uploaded = set()
                for name in (activation.GOOGLE_FILE, activation.META_FILE):
                    uploaded |= set(pd.read_csv(folder / name, dtype=str).stack().dropna())
            assert listed <= members
            assert not members & refused, (case, seg["name"])
            assert not uploaded & set().union(set(), *(hashes[p] for p in refused))
            if not default_granted:  # no record = not granted
                assert members <= granted, (case, seg["name"], members - granted)
                assert uploaded <= set().union(set(), *(hashes[p] for p in granted))
            anonymous = _members(result.folder, seg["name"])["person_id"].isna().sum()
            assert default_granted or anonymous == 0  # an anonymous visitor has no consent record


# --- suppressions ---------------------------------------------------------------------------------------

def _top_person(ws, category: str) -> str:
    with ws.connect() as con:
        con.execute("delete from person_consents")
        con.execute("insert into person_consents select person_id, 'email_marketing', true, '2026-01-01', 'crm' "
                    "from profiles")
        return con.execute("select person_id from repurchase_scores where as_of = ? and category = ? and week = 1 "
                           "order by p_week desc limit 1", [AS_OF, category]).fetchall()[0][0]


def test_complaint_and_return_suppress_only_their_category(tmp_path):
    config = {"segments": [
        {"name": "coffee", "template": "repurchase_next_week", "categories": ["coffee"], "top_percent": 20,
         "suppress_bought_since_scoring": False},
        {"name": "tea", "template": "repurchase_next_week", "categories": ["tea"], "top_percent": 20,
         "suppress_bought_since_scoring": False}]}
    ws = make_workspace(tmp_path / "ws", persons=50, seed=2, config=config)
    person = _top_person(ws, "coffee")
    base = build_segments(ws, AS_OF)
    assert person in set(_members(base.folder, "coffee")["person_id"])
    day = datetime.combine(AS_OF, datetime.min.time())
    with ws.connect() as con:
        con.execute("insert into person_interactions values (?, ?, 'complaint', 'coffee')", [person, day - timedelta(days=3)])
    r = build_segments(ws, AS_OF)
    assert person not in set(_members(r.folder, "coffee")["person_id"])
    assert dict(r.segments[0].excluded).get("complaint") == 1
    assert r.segments[1].excluded.get("complaint") is None  # a coffee complaint does not suppress tea
    # an older complaint (outside the window) or a resolved one does not suppress
    with ws.connect() as con:
        con.execute("insert into person_interactions values (?, ?, 'complaint_resolved', 'coffee')",
                    [person, day - timedelta(days=1)])
    r = build_segments(ws, AS_OF)
    assert person in set(_members(r.folder, "coffee")["person_id"])
    # a return in tea within the window suppresses the person from tea only
    tea_person = _top_person(ws, "tea")
    with ws.connect() as con:
        con.execute("insert into person_orders values (?, 'ret1', ?, 'tea', 'returned')", [tea_person, day - timedelta(days=5)])
    r = build_segments(ws, AS_OF)
    assert tea_person not in set(_members(r.folder, "tea")["person_id"])
    assert r.segments[1].excluded.get("returned") == 1
    with ws.connect() as con:
        con.execute("update person_orders set ordered_at = ? where order_id = 'ret1'", [day - timedelta(days=45)])
    r = build_segments(ws, AS_OF)
    assert tea_person in set(_members(r.folder, "tea")["person_id"])
    # a return request at customer service counts as a return too
    with ws.connect() as con:
        con.execute("insert into person_interactions values (?, ?, 'return_request', 'tea')", [tea_person, day - timedelta(days=2)])
    r = build_segments(ws, AS_OF)
    assert tea_person not in set(_members(r.folder, "tea")["person_id"])
    assert r.segments[1].excluded.get("returned") == 1


def test_opt_out_erasure_bought_and_filters(tmp_path):
    config = {"segments": [{"name": "nl_coffee", "template": "repurchase_next_week", "categories": ["coffee"],
                            "threshold": 0.0, "filters": {"country": "nl"}}]}
    ws = make_workspace(tmp_path / "ws", persons=30, seed=3, config=config)
    _top_person(ws, "coffee")
    day = datetime.combine(AS_OF, datetime.min.time())
    with ws.connect() as con:
        con.execute("insert into person_consents values ('p0001', 'profiling', false, ?, 'crm')", [day - timedelta(days=1)])
        con.execute("insert into person_interactions values ('p0002', ?, 'unsubscribe', null)", [day - timedelta(days=9)])
        con.execute("delete from person_map where person_id = 'p0003'")
        # scores are a week old, and p0005 bought coffee after scoring
        con.execute("update repurchase_scores set as_of = ?", [AS_OF - timedelta(days=7)])
        con.execute("insert into person_orders values ('p0005', 'new', ?, 'coffee', 'completed')", [day - timedelta(days=2)])
    r = build_segments(ws, AS_OF)
    excluded = r.segments[0].excluded
    members = set(_members(r.folder, "nl_coffee")["person_id"])
    assert not members & {"p0000", "p0001", "p0002", "p0003", "p0004", "p0005"}  # p0000/p0004 live in BE
    assert excluded["opted_out"] == 2 and excluded["erased"] == 1 and excluded["bought_since_scoring"] == 1
    assert excluded["filtered"] == sum(i % 4 == 0 for i in range(30))  # the persons living in BE
    manifest = json.loads(r.manifest.read_text())
    assert manifest["segments"][0]["candidates"] == 30
    assert sum(manifest["segments"][0]["excluded"].values()) + len(members) == 30
    report = write_report(ws, AS_OF)
    assert any("not re-scored" in w for w in report.warnings)


# --- week over week ------------------------------------------------------------------------------------

def _keys(frame: pd.DataFrame) -> set[tuple[str, ...]]:
    return {tuple(r) for r in frame.astype(object).where(frame.notna(), "").astype(str).to_numpy()}


def test_week_over_week_diff_and_latest_view(tmp_path):
    ws = make_workspace(tmp_path / "ws", persons=80, seed=4)
    w1 = build_segments(ws, AS_OF)
    nxt = AS_OF + timedelta(days=7)
    with ws.connect() as con:
        ids = [r[0] for r in con.execute("select person_id from profiles order by 1").fetchall()]
        write_scores(con, ids, nxt, np.random.default_rng(5))
    w2 = build_segments(ws, nxt)
    assert (w1.week, w2.week, w2.previous_week) == ("2026-W48", "2026-W49", "2026-W48")
    manifest = json.loads(w2.manifest.read_text())
    key = ["person_id", "anonymous_id", "category"]
    for seg in manifest["segments"]:
        old = _keys(_members(w1.folder, seg["name"])[key])
        new = _keys(_members(w2.folder, seg["name"])[key])
        added = _keys(pd.read_csv(w2.folder / seg["name"] / "added.csv", dtype=str))
        removed = _keys(pd.read_csv(w2.folder / seg["name"] / "removed.csv", dtype=str))
        assert (added, removed) == (new - old, old - new)
        assert (seg["added"], seg["removed"]) == (len(new - old), len(old - new))
        if seg["channel"] == "email":
            e_old = set(pd.read_csv(w1.folder / seg["name"] / "email.csv", dtype=str)["email"])
            e_new = set(pd.read_csv(w2.folder / seg["name"] / "email.csv", dtype=str)["email"])
            assert set(pd.read_csv(w2.folder / seg["name"] / "email.add.csv", dtype=str)["email"]) == e_new - e_old
            assert set(pd.read_csv(w2.folder / seg["name"] / "email.remove.csv", dtype=str)["email"]) == e_old - e_new
        else:
            g_old = set(pd.read_csv(w1.folder / seg["name"] / activation.GOOGLE_FILE, dtype=str)["Email"].dropna())
            g_new = set(pd.read_csv(w2.folder / seg["name"] / activation.GOOGLE_FILE, dtype=str)["Email"].dropna())
            g_rem = pd.read_csv(w2.folder / seg["name"] / "google_customer_match.remove.csv", dtype=str)["Email"]
            assert set(g_rem.dropna()) >= g_old - g_new
    with ws.connect() as con:
        latest = con.execute("select week, count(*) from segment_members_latest group by 1").fetchall()
        counts = con.execute("select week, sum(members) from segment_counts group by 1 order by 1").fetchall()
    assert latest == [("2026-W49", sum(s["members"] for s in manifest["segments"]))]
    assert [c[0] for c in counts] == ["2026-W48", "2026-W49"]


def test_failed_run_leaves_previous_week_untouched(tmp_path, monkeypatch):
    ws = make_workspace(tmp_path / "ws", persons=40, seed=6)
    w1 = build_segments(ws, AS_OF)
    before = {p.relative_to(w1.folder): p.read_bytes() for p in w1.folder.rglob("*") if p.is_file()}
    calls = {"n": 0}
    real = activation.write_activation

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(activation, "write_activation", failing)
    for as_of in (AS_OF + timedelta(days=7), AS_OF):  # a new week, and a rebuild of the existing week
        calls["n"] = 0
        with pytest.raises(OSError, match="disk full"):
            build_segments(ws, as_of)
        after = {p.relative_to(w1.folder): p.read_bytes() for p in w1.folder.rglob("*") if p.is_file()}
        assert after == before
        assert [p.name for p in ws.segments_dir.iterdir()] == ["2026-W48"]  # no half week, no temp folder
    assert [p.name for p in week_folders(ws)] == ["2026-W48"]


def test_rebuild_after_a_crash_mid_swap_restores_the_week(tmp_path):
    """A kill between the swap's two renames leaves only the aside copy; the next build recovers it."""
    ws = make_workspace(tmp_path / "ws", persons=40, seed=6)
    w1 = build_segments(ws, AS_OF)
    before = {p.relative_to(w1.folder): p.read_bytes() for p in w1.folder.rglob("*") if p.is_file()}
    aside = w1.folder.with_name(f".{w1.folder.name}.old-deadbeef")
    w1.folder.rename(aside)  # the state a crash right after the first rename leaves behind
    _recover_interrupted_swap(w1.folder)
    assert {p.relative_to(w1.folder): p.read_bytes() for p in w1.folder.rglob("*") if p.is_file()} == before
    assert not aside.exists()
    w1.folder.with_name(f".{w1.folder.name}.old-cafebabe").mkdir()  # crash after the second rename
    again = build_segments(ws, AS_OF)
    assert [p.name for p in ws.segments_dir.iterdir()] == [again.folder.name]


# --- configuration and report --------------------------------------------------------------------------

def test_definition_errors_name_the_key(tmp_path):
    ws = make_workspace(tmp_path / "ws", persons=10, config={"segments": [
        {"name": "x", "template": "repurchase_next_week", "filters": {"shoe_size": "42"}}]})
    with pytest.raises(CdpError, match=r"segments.definitions\[0\] \(x\).filters: 'shoe_size'"):
        build_segments(ws, AS_OF)
    with pytest.raises(CdpError, match="no conversion_scores or repurchase_scores"):
        build_segments(ws, date(2020, 1, 6))
    (tmp_path / "ws" / "cdp_ml.yaml").write_text("segments:\n  - {name: 'a b', template: lapsing}\n")
    from cdp_ml.workspace import Workspace

    with pytest.raises(CdpError, match="segments.definitions\\[0\\]"):
        Workspace.open(tmp_path / "ws")


def test_report_is_self_contained_without_personal_data(tmp_path):
    ws = make_workspace(tmp_path / "ws", persons=40, seed=7)
    build_segments(ws, AS_OF)
    report = write_report(ws, AS_OF)
    page = report.path.read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "@" not in text and "p00" not in text and "+316" not in text and "anon" not in text
    assert "repurchase_next_week_coffee" in page and "Expected repurchasers" in page
    with pytest.raises(CdpError, match="run `cdp-ml segments"):
        write_report(ws, AS_OF + timedelta(days=7))


def test_report_says_a_model_without_its_data_is_not_applicable(tmp_path):
    """An orders-only workspace has no browsing: no conversion model is expected, so nothing to warn about."""
    ws = make_workspace(tmp_path / "ws", persons=40, seed=7)
    with ws.connect() as con:
        con.execute("drop table conversion_scores; delete from person_events")
    build_segments(ws, AS_OF)
    report = write_report(ws, AS_OF)
    assert not [w for w in report.warnings if "conversion" in w]
    assert "conversion-intent</h3><p>Not applicable: the warehouse has no events or sessions." in report.path.read_text()
    with ws.connect() as con:  # with browsing data, a missing model is a warning again
        con.execute("insert into person_events values ('p0001', 'a1', timestamp '2026-11-20', 'page_view')")
    warnings = write_report(ws, AS_OF).warnings
    assert "conversion-intent: no approved (champion) model in the registry" in warnings
    assert any(w.startswith("conversion_scores has no scores") for w in warnings)


def test_anonymous_purchases_do_not_make_repurchase_applicable(tmp_path):
    """A GA4 export without user ids: purchase events, but none of a known person."""
    ws = make_workspace(tmp_path / "ws", persons=40, seed=7)
    with ws.connect() as con:
        con.execute("drop table repurchase_scores; update person_orders set person_id = null")
    build_segments(ws, AS_OF)
    report = write_report(ws, AS_OF)
    assert not [w for w in report.warnings if "repurchase" in w]
    assert "Not applicable: the warehouse has no orders or purchase events of known persons." in report.path.read_text()


def test_quality_in_words_warns_on_stale_or_rejected_models():
    champion = {"version": "2", "created": "2026-09-01T00:00:00+00:00", "gate": "promoted",
                "metrics": {"backtest_roc_auc": 0.83, "train_roc_auc": 0.95, "backtest_logistic_roc_auc": 0.9,
                            "backtest_audience_reduction_99": 0.4}}
    latest = {"version": "3", "created": "2026-11-20T00:00:00+00:00", "gate": "rejected",
              "gate_reason": "roc_auc 0.7100 vs champion 0.8300", "metrics": {}}
    words, warnings = quality_in_words("conversion-intent", {"champion": champion, "latest": latest}, AS_OF, 4)
    text = " ".join(words)
    assert "83%" in text and "strong" in text and "40% fewer" in text
    assert any("not refreshed for 11 weeks" in w for w in warnings)
    assert any("failed its quality gate (roc_auc 0.7100 vs champion 0.8300)" in w for w in warnings)
    fresh = dict(champion, created="2026-11-20T00:00:00+00:00")
    assert quality_in_words("m", {"champion": fresh, "latest": fresh}, AS_OF, 4)[1] == []
    repurchase = dict(fresh, metrics={"gate_bgnbd_all_roc_auc_1w": 0.9, "gate_model_any_roc_auc_1w": 0.7,
                                      "gate_model_all_roc_auc_1w": 0.76}, data_as_of="2026-11-23")
    words = " ".join(quality_in_words("repurchase-timing", {"champion": repurchase, "latest": None}, AS_OF, 4)[0])
    assert "76%" in words and "useful" in words and "(this week)" in words
    assert "no approved (champion) model" in quality_in_words("m", {"champion": None, "latest": None}, AS_OF, 4)[1][0]
