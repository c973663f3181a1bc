"""The consent ledger answers "may we use this person for this purpose on date D" with as-of semantics."""

from __future__ import annotations

from datetime import date, datetime

import duckdb
import numpy as np
import pytest

from cdp_ml.errors import CdpError
from cdp_ml.privacy.consent import consent_state, ensure_ledger, granted_persons, objected_to_profiling


@pytest.fixture()
def con():
    con = duckdb.connect()
    con.execute("create table person_consents(person_id varchar, purpose varchar, granted boolean, "
                "\"timestamp\" timestamp, source varchar, customer_ref varchar)")
    con.execute("create table profiles(person_id varchar)")
    yield con
    con.close()


def _add(con, rows):
    con.executemany("insert into person_consents values (?, ?, ?, ?, 'crm', null)", rows)


def test_latest_decision_before_as_of_wins(con):
    _add(con, [("p1", "email_marketing", True, datetime(2026, 1, 1)),
               ("p1", "email_marketing", False, datetime(2026, 2, 1)),
               ("p1", "email_marketing", True, datetime(2026, 3, 1, 0, 0))])
    state = dict((d, consent_state(con, d).fetchall()[0][2]) for d in
                 (date(2026, 1, 15), date(2026, 2, 15), date(2026, 3, 1), date(2026, 3, 2)))
    # 2026-03-01 00:00 is not before as-of 2026-03-01: the withdrawal still holds that day
    assert state == {date(2026, 1, 15): True, date(2026, 2, 15): False, date(2026, 3, 1): False,
                     date(2026, 3, 2): True}
    assert consent_state(con, date(2025, 12, 1)).fetchall() == []


def test_withdrawal_wins_a_tie(con):
    _add(con, [("p1", "ad_targeting", True, datetime(2026, 1, 1)), ("p1", "ad_targeting", False, datetime(2026, 1, 1))])
    assert consent_state(con, date(2026, 2, 1)).fetchall()[0][2] is False


def test_default_applies_only_without_a_decision(con):
    con.execute("insert into profiles values ('p1'), ('p2')")
    _add(con, [("p1", "email_marketing", False, datetime(2026, 1, 1))])
    for default in (False, True):
        rows = {(p, purpose): g for p, purpose, g, _ in
                consent_state(con, date(2026, 2, 1), default, "profiles").fetchall()}
        assert len(rows) == 6
        assert rows[("p1", "email_marketing")] is False
        assert rows[("p2", "email_marketing")] is default
        assert rows[("p1", "ad_targeting")] is default
    granted = {r[0] for r in granted_persons(con, "ad_targeting", date(2026, 2, 1), True).fetchall()}
    assert granted == {"p1", "p2"}
    assert granted_persons(con, "email_marketing", date(2026, 2, 1), True).fetchall() == [("p2",)]


def test_profiling_objection(con):
    _add(con, [("p1", "profiling", False, datetime(2026, 1, 1)), ("p2", "profiling", True, datetime(2026, 1, 1))])
    assert objected_to_profiling(con, date(2026, 2, 1)).fetchall() == [("p1",)]


def test_matches_a_reference_over_random_histories(con):
    """Property: for random histories the state equals a plain-Python replay of the decisions."""
    rng = np.random.default_rng(3)
    purposes = ["email_marketing", "ad_targeting", "profiling"]
    rows = []
    for i in range(300):
        for _ in range(int(rng.integers(0, 6))):
            day = datetime(2026, 1, 1 + int(rng.integers(0, 28)), int(rng.integers(0, 2)))
            rows.append((f"p{i}", purposes[int(rng.integers(0, 3))], bool(rng.integers(0, 2)), day))
    _add(con, rows)
    for as_of in (date(2026, 1, 5), date(2026, 1, 15), date(2026, 2, 1)):
        expected: dict[tuple[str, str], tuple[datetime, bool]] = {}
        for person, purpose, granted, at in rows:
            if at >= datetime.combine(as_of, datetime.min.time()):
                continue
            key = (person, purpose)
            best = expected.get(key)
            if best is None or at > best[0] or (at == best[0] and not granted):
                expected[key] = (at, granted)
        got = {(p, purpose): g for p, purpose, g, _ in consent_state(con, as_of).fetchall()}
        assert got == {k: v[1] for k, v in expected.items()}


def test_unknown_purpose_and_missing_table():
    con = duckdb.connect()
    with pytest.raises(CdpError, match="person_consents"):
        consent_state(con, date(2026, 1, 1))
    con.execute("create table person_consents(person_id varchar, purpose varchar, granted boolean, "
                "\"timestamp\" timestamp, source varchar)")
    with pytest.raises(CdpError, match="purpose"):
        granted_persons(con, "sms", date(2026, 1, 1))


def test_ledger_view_and_read_only_connections(tmp_path):
    path = tmp_path / "w.duckdb"
    con = duckdb.connect(str(path))
    con.execute("create table person_consents(person_id varchar, purpose varchar, granted boolean, "
                "\"timestamp\" timestamp, source varchar)")
    con.execute("insert into person_consents values ('p1', 'ad_targeting', true, '2026-01-01', 'crm'), "
                "(null, 'ad_targeting', true, '2026-01-01', 'crm')")
    ensure_ledger(con)
    assert con.execute("select person_id, decided_at from consent_ledger").fetchall() == [("p1", datetime(2026, 1, 1))]
    con.close()
    ro = duckdb.connect(str(path), read_only=True)
    assert consent_state(ro, date(2026, 2, 1)).fetchall() == [("p1", "ad_targeting", True, datetime(2026, 1, 1))]
