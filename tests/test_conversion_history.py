"""The stored session history scoring extends each week: equal to a rebuild, rebuilt when old events change,
erased with the person."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pandas as pd
import pytest

from cdp_ml import Workspace
from cdp_ml.features import conversion as feats
from cdp_ml.features import sessions as sess
from cdp_ml.models import conversion

FAST = {"training_weeks": 16, "n_estimators": 150, "learning_rate": 0.1}


@pytest.fixture
def ws(demo_ws) -> Workspace:
    from cdp_ml.identity import resolve

    resolve(demo_ws)
    settings = replace(demo_ws.config.conversion, **FAST)
    return Workspace(demo_ws.root, replace(demo_ws.config, conversion=settings))


def _until(ws: Workspace) -> datetime:
    d = conversion.default_as_of(ws)
    return datetime(d.year, d.month, d.day)


def _history(ws: Workspace, until: datetime) -> tuple[sess.HistoryUpdate, pd.DataFrame]:
    """Bring the stored history to ``until``; (how, every stored row in a fixed order)."""
    s, f = ws.config.conversion, ws.config.features
    with ws.connect() as con:
        update = sess.session_history(con, until, f.session_gap_minutes, s.purchase_event_types,
                                      until - timedelta(days=s.active_days))
        rows = con.execute(f"select * from {sess.HISTORY_TABLE} order by device_id, session_no").df()
    return update, rows


def _forget_stored(ws: Workspace) -> None:
    with ws.connect() as con:
        con.execute(f"drop table if exists {sess.HISTORY_STATE}")


def _spanning_watermark(ws: Workspace, until: datetime) -> datetime:
    """An instant inside a session about ten days before ``until`` (events on both sides of it)."""
    _, rows = _history(ws, until)
    span = rows[(rows["started_at"] >= until - timedelta(days=12)) & (rows["started_at"] < until - timedelta(days=8))
                & (rows["scored_at"] - rows["started_at"] >= pd.Timedelta(minutes=2))].iloc[0]
    _forget_stored(ws)
    return (span["started_at"] + (span["scored_at"] - span["started_at"]) / 2).to_pydatetime()


def _purchase_across(ws: Workspace, watermark: datetime) -> str:
    """A device idle for a day buys alone a minute before the watermark and browses two minutes after it: a
    purchase-only session (no scoring point) ends the stored history, and a new session follows it."""
    with ws.connect() as con:
        event_id, anon = con.execute("""select arg_max(event_id, "timestamp"), anonymous_id from events
                                        where anonymous_id is not null group by anonymous_id
                                        having max("timestamp") < ? order by anonymous_id limit 1""",
                                     [watermark - timedelta(days=1)]).fetchall()[0]
        for suffix, event_type, at in (("-p", "purchase", watermark - timedelta(minutes=1)),
                                       ("-v", "page_view", watermark + timedelta(minutes=2))):
            con.execute("""insert into events select * replace (event_id || ? as event_id, ? as event_type,
                                                                 ?::timestamp as "timestamp")
                           from events where event_id = ?""", [suffix, event_type, at, event_id])
    return "a:" + anon


def test_a_week_of_new_events_extends_the_history_to_what_a_rebuild_gives(ws):
    until = _until(ws)
    watermark = _spanning_watermark(ws, until)
    device = _purchase_across(ws, watermark)
    first, _ = _history(ws, watermark)
    assert (first.mode, first.reason) == ("rebuilt", "no stored history")
    extended, rows = _history(ws, until)
    assert extended.mode == "extended" and 0 < extended.new_events and 0 < extended.sessions < len(rows) / 5
    # the session the watermark cut is one session again, continued by the new events
    assert ((rows["started_at"] < watermark) & (rows["scored_at"] >= watermark)).sum() >= 1
    again, same = _history(ws, until)  # the same week again: nothing to read
    assert again.mode == "current" and again.new_events == 0
    pd.testing.assert_frame_equal(rows, same)
    _forget_stored(ws)
    rebuilt, whole = _history(ws, until)
    assert rebuilt.mode == "rebuilt"
    pd.testing.assert_frame_equal(rows, whole)
    assert rows["known"].sum() > 0
    mine = rows[rows["device_id"] == device].tail(2)  # the purchase alone, then the new session numbered after it
    assert mine["started_at"].isna().tolist() == [True, False] and mine["session_no"].diff().iloc[-1] == 1


def test_audience_points_from_an_extended_history_equal_the_full_build(ws):
    s, f = ws.config.conversion, ws.config.features
    until = _until(ws)
    since = until - timedelta(days=s.active_days)
    _history(ws, _spanning_watermark(ws, until))
    with ws.connect() as con:
        full_spec = feats.build_points(con, s, f, until)
        latest = f"""select * from {feats.POINTS_TABLE} where scored_at >= ?
                     qualify row_number() over (partition by visitor_id order by scored_at desc, session_id desc) = 1
                     order by session_id"""
        full = con.execute(latest, [since]).df()
        spec = feats.build_audience_points(con, s, f, until, since)
        points = con.execute(latest, [since]).df()
        state = con.execute(f"select watermark from {sess.HISTORY_STATE}").fetchall()
    assert state == [(until,)] and spec.rows == len(points) < full_spec.rows / 3 and len(points) > 200
    assert points["prev_sessions"].gt(0).sum() > 0 and points["visitor_decayed_sessions"].gt(0).sum() > 0
    pd.testing.assert_frame_equal(full, points[full.columns], check_exact=False, rtol=1e-12, atol=0)


def test_devices_identity_gives_another_person_are_sessionised_again(ws):
    """A device that logs in to a known customer, and two persons merged: their old events name another person
    now; those devices' stored sessions are rebuilt whole, the rest only extended."""
    until = _until(ws)
    _history(ws, until - timedelta(days=7))
    with ws.connect() as con:
        source, anon_only = con.execute("""select source, anonymous_id from person_events
                                           where person_id is null and anonymous_id is not null and "timestamp" < ?
                                           order by anonymous_id limit 1""", [until - timedelta(days=30)]).fetchall()[0]
        known, merged = [r[0] for r in con.execute("""select person_id from person_map where id_type = 'customer_ref'
                                                       group by 1 order by count(*) desc, 1 limit 2""").fetchall()]
        con.execute("""insert into person_map by name select ? as source, 'anonymous_id' as id_type,
                       ? as record_id, ? as person_id""", [source, anon_only, known])
        con.execute("update person_map set person_id = ? where person_id = ?", [known, merged])
    update, rows = _history(ws, until)
    assert update.mode == "extended" and update.reidentified >= 2
    _forget_stored(ws)
    _, whole = _history(ws, until)
    pd.testing.assert_frame_equal(rows, whole)
    assert (rows["person_id"] == merged).sum() == 0 and (rows.loc[rows["device_id"] == "a:" + anon_only, "person_id"]
                                                         == known).all()


def test_changed_events_before_the_watermark_rebuild_the_history(ws):
    until = _until(ws)
    _, stored = _history(ws, until - timedelta(days=7))
    with ws.connect() as con:  # a re-ingested export: one old event now says something else
        con.execute("""update events set event_type = 'add_to_cart'
                       where event_id = (select min(event_id) from events
                                         where event_type = 'product_view' and "timestamp" < ?)""",
                    [until - timedelta(days=60)])
    update, rows = _history(ws, until)
    assert update.mode == "rebuilt" and "events before the watermark changed" in update.reason
    _forget_stored(ws)
    _, whole = _history(ws, until)
    pd.testing.assert_frame_equal(rows, whole)
    assert rows["n_cart_adds"].sum() > stored["n_cart_adds"].sum()
    # an earlier as-of than the stored watermark (a backtest) gets a history of its own; the stored one stays
    s, f, earlier_until = ws.config.conversion, ws.config.features, until - timedelta(days=14)
    with ws.connect() as con:
        earlier = sess.session_history(con, earlier_until, f.session_gap_minutes, s.purchase_event_types, earlier_until)
        apart = con.execute("select * exclude (slice) from conv_history_sessions order by device_id, session_no").df()
    assert earlier.mode == "apart" and "before the stored watermark" in earlier.reason
    assert 0 < len(apart) < len(rows) and apart["scored_at"].max() < earlier_until
    assert _history(ws, until)[0].mode == "current"  # the stored history was left as it was
    _forget_stored(ws)  # ... and it is the history a rebuild to that week stores
    _, stored_earlier = _history(ws, earlier_until)
    stored_earlier = stored_earlier[stored_earlier["started_at"].notna()].drop(columns=["anonymous_id", "known_through"])
    pd.testing.assert_frame_equal(apart, stored_earlier.reset_index(drop=True))


def test_erasure_removes_the_person_from_the_stored_history(ws):
    from cdp_ml.privacy import forget

    until = _until(ws)
    _, rows = _history(ws, until)
    with ws.connect() as con:
        pid, anon = con.execute("""select person_id, anonymous_id from person_events
                                   where person_id is not null and anonymous_id is not null
                                   order by person_id, anonymous_id limit 1""").fetchall()[0]
    assert ((rows["person_id"] == pid) | (rows["anonymous_id"] == anon)).sum() > 0
    result = forget(ws, person_id=pid)
    assert result.exit_code == 0, str(result)  # verification searched the stored history too
    with ws.connect() as con:
        left = con.execute(f"select count(*) from {sess.HISTORY_TABLE} where person_id = ? or device_id = ?",
                           [pid, "a:" + anon]).fetchall()[0][0]
    assert left == 0 and dict(result.deleted)[sess.HISTORY_TABLE] > 0
    update, after = _history(ws, until)  # the erased events changed the fingerprint: rebuilt without them
    assert update.mode == "rebuilt" and not ((after["person_id"] == pid) | (after["anonymous_id"] == anon)).any()


def test_retention_takes_old_events_out_of_the_history_without_a_rebuild(ws):
    """Weekly retention deletes old events: only their devices are sessionised again, from the events left (what
    a rebuild gives them); the fingerprint follows, so the stored history is extended instead of rebuilt."""
    from cdp_ml.privacy import apply_retention

    until = _until(ws)
    _, before = _history(ws, until - timedelta(days=7))
    privacy = replace(ws.config.privacy, retention_days={"anonymous_events": 90, "events": 150})
    kept = Workspace(ws.root, replace(ws.config, privacy=privacy))
    result = apply_retention(kept, as_of=(until - timedelta(days=7)).date())
    assert all(n > 0 for *_, n in result.deleted), str(result)
    update, rows = _history(ws, until)
    assert update.mode == "extended" and 0 < update.reidentified < before["device_id"].nunique()
    assert rows["started_at"].min() > before["started_at"].min()
    _forget_stored(ws)
    _, whole = _history(ws, until)
    pd.testing.assert_frame_equal(rows, whole)
    assert _history(ws, until)[0].mode == "current"
    # the marks name devices (cookie ids, persons) until the next update: an erasure finds them there too
    from cdp_ml.privacy import forget

    apply_retention(kept, as_of=until.date())
    with ws.connect() as con:
        pid, anon = con.execute(f"""select person_id, anonymous_id from {sess.HISTORY_EXPIRED}
                                    where person_id is not null and anonymous_id is not null
                                    order by 1, 2 limit 1""").fetchall()[0]
    assert forget(ws, person_id=pid).exit_code == 0
    with ws.connect() as con:
        left = con.execute(f"select count(*) from {sess.HISTORY_EXPIRED} where person_id = ? or anonymous_id = ?",
                           [pid, anon]).fetchall()[0][0]
    assert left == 0
