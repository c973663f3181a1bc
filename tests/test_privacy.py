"""Erasure, access, retention and the profiling objection on small generated workspaces."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import date
from pathlib import Path

import duckdb
import pytest

from cdp_ml import CdpError, Workspace
from cdp_ml.cli import main
from cdp_ml.privacy import apply_retention, export_person, forget, profiling_excluded_sql, profiling_objections
from cdp_ml.sources import ingest


def _one(ws: Workspace, sql: str, params: list | None = None):
    with ws.connect() as con:
        return con.execute(sql, params or []).fetchall()


def _crm_person(ws: Workspace) -> tuple[str, str, str]:
    """A crm customer with e-mail and phone whose e-mail is not shared with another crm record."""
    return _one(ws, """select email, phone, record_id from customers where source = 'crm' and email is not null
                       and phone is not null and email in (select email from customers group by 1 having count(*) <= 3)
                       order by record_id limit 1""")[0]


def _rows_with(ws: Workspace, email: str, phone: str) -> int:
    total = 0
    for table in ("customers", "interactions", "consents"):
        total += _one(ws, f"select count(*) from {table} where email = ? or phone = ?", [email, phone])[0][0]
    return total


def test_forget_email_erases_and_survives_reingest(demo_ws: Workspace):
    email, phone, record_id = _crm_person(demo_ws)
    before = _one(demo_ws, "select count(*) from customers")[0][0]
    demo_ws.cache_dir.mkdir(parents=True, exist_ok=True)
    (demo_ws.cache_dir / "backtest.parquet").write_text(record_id)  # a derived cache naming persons
    result = forget(demo_ws, email=email.upper() + "  ")
    assert result.exit_code == 0, str(result)
    assert not demo_ws.cache_dir.exists() and "cleared derived caches in data/cache" in result.notes
    assert dict(result.deleted)["customers"] >= 1
    assert _rows_with(demo_ws, email, phone) == 0
    assert _one(demo_ws, "select count(*) from events where ref_source = 'crm' and customer_ref = ?", [record_id]) == [(0,)]
    after = _one(demo_ws, "select count(*) from customers")[0][0]
    assert after == before - dict(result.deleted)["customers"]
    # nothing personal in the audit trail or the printed result
    text = str(result) + (demo_ws.root / result.audit_file).read_text()
    text += json.dumps(_one(demo_ws, "select * from erasure_log"), default=str)
    assert email not in text.lower() and phone not in text and phone.lstrip("+") not in text
    # re-ingesting every raw file does not bring the person back, and brings everyone else back
    _one(demo_ws, "delete from loads")
    ingest(demo_ws)
    assert _rows_with(demo_ws, email, phone) == 0
    assert _one(demo_ws, "select count(*) from customers")[0][0] == after
    assert _one(demo_ws, "select count(*) from events where ref_source = 'crm' and customer_ref = ?", [record_id]) == [(0,)]
    status = json.loads(export_person(demo_ws, email=email).document)["erasure"]
    assert status["erased"] is True and not json.loads(export_person(demo_ws, email=email).document)["records"]


def test_report_raw_points_at_lines_holding_the_identifiers(demo_ws: Workspace):
    email, _, _ = _crm_person(demo_ws)
    result = forget(demo_ws, email=email, report_raw=True)
    assert result.raw, "the raw files still hold the person"
    checked = 0
    for rel, lines in result.raw:
        path = demo_ws.root / rel
        if path.suffix not in (".csv", ".jsonl"):
            continue
        text = path.read_bytes().decode("utf-8", errors="replace").split("\n")
        for n in lines:
            assert text[n - 1], (rel, n)
            checked += 1
        if "crm" in rel:
            assert any(email in text[n - 1].lower() for n in lines)
    assert checked
    assert "lines" in str(result) and email not in str(result)


@pytest.mark.slow  # runs identity resolution (Splink) on the tiny demo
def test_forget_person_everywhere_after_resolve(demo_ws: Workspace):
    from cdp_ml.identity import resolve

    resolve(demo_ws)
    pid, email = _one(demo_ws, """select p.person_id, p.email from profiles p where p.email is not null
                                  order by p.n_records desc, p.person_id limit 1""")[0]
    other = _one(demo_ws, "select person_id from profiles where person_id <> ? order by person_id limit 1", [pid])[0][0]
    _one(demo_ws, """create table conversion_scores as
                     select date '2026-01-05' as as_of, person_id, null::varchar as anonymous_id, 0.5 as probability,
                     '1' as model_version from profiles""")
    week = demo_ws.segments_dir / "2026-W02"
    week.mkdir(parents=True)
    con = duckdb.connect()
    con.execute(f"copy (select * from (values (?, 'candles', 0.9), (?, 'candles', 0.8)) t(person_id, category, score)) "
                f"to '{week / 'seg.parquet'}' (format parquet)", [pid, other])
    con.close()
    hashed = hashlib.sha256(email.encode()).hexdigest()
    (week / "google.csv").write_text(f"Email,Phone\n{hashed},\nabc,\n")
    n_profiles = _one(demo_ws, "select count(*) from profiles")[0][0]

    result = forget(demo_ws, person_id=pid)
    assert result.exit_code == 0, str(result)
    deleted = dict(result.deleted)
    assert deleted["profiles"] == 1 and deleted["person_map"] >= 1 and deleted["conversion_scores"] == 1
    for table in ("profiles", "person_map", "conversion_scores", "identity_edges"):
        assert _one(demo_ws, f"select count(*) from {table} where person_id = ?", [pid]) == [(0,)]
    assert _one(demo_ws, "select count(*) from profiles")[0][0] == n_profiles - 1
    assert _one(demo_ws, "select count(*) from customers where email = ?", [email]) == [(0,)]
    files = dict(result.files_rewritten)
    assert files == {"data/segments/2026-W02/seg.parquet": 1, "data/segments/2026-W02/google.csv": 1}
    assert duckdb.sql(f"select person_id from '{week / 'seg.parquet'}'").fetchall() == [(other,)]
    assert (week / "google.csv").read_text().split() == ["Email,Phone", "abc,"]
    with pytest.raises(CdpError, match="already erased"):
        forget(demo_ws, person_id=pid)


def test_export_person_holds_records_identifiers_and_consents(demo_ws: Workspace, tmp_path: Path):
    email, phone, record_id = _crm_person(demo_ws)
    out = tmp_path / "access.json"
    result = export_person(demo_ws, email=email, out=out)
    doc = json.loads(out.read_text())
    assert email in doc["identifiers"]["email"] and f"crm:{record_id}" in doc["identifiers"]["record"]
    assert any(r["record_id"] == record_id for r in doc["records"]["customers"])
    assert doc["erasure"]["erased"] is False
    assert str(out) in str(result) and email not in str(result)


def test_cli_user_errors_are_one_line(demo_ws: Workspace, capsys):
    cases = [(["forget", "--email", "not-an-address"], "not a valid e-mail"),
             (["forget", "--email", "test@test.com"], "placeholder"),
             (["forget", "--person-id", "Pnosuchperson"], "not known"),
             (["export-person", "--phone", "12"], "not a valid phone")]
    for argv, message in cases:
        assert main(["--workspace", str(demo_ws.root), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_forget_file_of_identifiers(demo_ws: Workspace, tmp_path: Path):
    people = _one(demo_ws, """select email, phone from customers where source = 'crm' and email is not null
                              and phone is not null order by record_id limit 3 offset 5""")
    listing = tmp_path / "erase.txt"
    listing.write_text("# erasure requests\n" + people[0][0] + "\n\n" + people[1][1] + "\n")
    result = forget(demo_ws, file=listing)
    assert result.exit_code == 0
    assert _rows_with(demo_ws, people[0][0], people[0][1]) == 0
    assert _rows_with(demo_ws, people[1][0], people[1][1]) == 0
    assert _rows_with(demo_ws, people[2][0], people[2][1]) > 0


def _tiny(tmp_path: Path, customers: list[tuple], events: list[tuple], consents: list[tuple] = (),
          privacy: str = "") -> Workspace:
    raw = tmp_path / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "customers.csv").write_text("id,email,phone\n" + "".join(f"{a},{b},{c}\n" for a, b, c in customers))
    (raw / "events.csv").write_text("ts,type,anon,cust\n" + "".join(",".join(e) + "\n" for e in events))
    (raw / "consents.csv").write_text("ts,purpose,granted,cust\n" + "".join(",".join(c) + "\n" for c in consents))
    (tmp_path / "cdp_ml.yaml").write_text(f"""
sources:
  - {{name: crm, kind: customers, path: raw/customers.csv, columns: {{record_id: id, email: email, phone: phone}}}}
  - name: web
    kind: events
    path: raw/events.csv
    customer_source: crm
    columns: {{timestamp: ts, event_type: type, anonymous_id: anon, customer_ref: cust}}
  - name: prefs
    kind: consents
    path: raw/consents.csv
    customer_source: crm
    columns: {{timestamp: ts, purpose: purpose, granted: granted, customer_ref: cust}}
{privacy}
""")
    ws = Workspace.open(tmp_path)
    ingest(ws)
    return ws


def test_erasure_property_random_workspaces(tmp_path: Path):
    """For random small workspaces and random requests: the erased are gone, everyone else is untouched."""
    for seed in range(3):
        rng = random.Random(seed)
        n = 12
        customers = [(f"C{i}", f"p{i}.{rng.randrange(10**6)}@example.nl", f"06{rng.randrange(10**7, 10**8)}")
                     for i in range(n)]
        events = []
        for i in range(n):
            for _ in range(rng.randrange(1, 5)):
                day = f"2025-0{rng.randrange(1, 10)}-1{rng.randrange(0, 10)} 10:00:00"
                events.append((day, rng.choice(["page_view", "login", "purchase"]), f"anon-{i:03d}-device",
                               f"C{i}" if rng.random() < 0.7 else ""))
        ws = _tiny(tmp_path / f"ws{seed}", customers, events)
        erased = rng.sample(range(n), 3)
        gone = {f"C{i}" for i in erased}
        tied = {e[2] for e in events if e[1] == "login" and e[3] in gone}  # devices a login ties to them
        kept_before = sum(1 for e in events if e[3] not in gone and e[2] not in tied)
        for i in erased:
            how = rng.choice(["email", "phone"])
            result = forget(ws, **{how: customers[i][1] if how == "email" else customers[i][2]})
            assert result.exit_code == 0
        for i in range(n):
            held = _one(ws, "select count(*) from customers where record_id = ?", [f"C{i}"])[0][0]
            assert held == (0 if i in erased else 1)
        assert _one(ws, "select count(*) from events")[0][0] == kept_before
        _one(ws, "delete from loads")
        ingest(ws)
        assert _one(ws, "select count(*) from customers")[0][0] == n - 3
        assert _one(ws, "select count(*) from events")[0][0] == kept_before


def test_retention_deletes_old_rows_and_keeps_latest_consent(tmp_path: Path):
    ws = _tiny(tmp_path, [("C1", "a@example.nl", "0687654321")],
               [("2024-01-01 10:00:00", "page_view", "d1", "C1"), ("2024-01-01 10:00:00", "page_view", "d2", ""),
                ("2025-06-01 10:00:00", "page_view", "d2", ""), ("2025-12-01 10:00:00", "page_view", "d1", "C1")],
               [("2023-01-01", "email_marketing", "yes", "C1"), ("2023-02-01", "profiling", "no", "C1"),
                ("2025-11-01", "email_marketing", "no", "C1")],
               privacy="privacy: {retention_days: {anonymous_events: 180, events: 700, consents: 365}}")
    result = apply_retention(ws, date(2026, 1, 5))
    counts = {k: n for k, _, n in result.deleted}
    assert counts == {"anonymous_events": 2, "consents": 1, "events": 1}
    assert _one(ws, "select count(*) from events") == [(1,)]
    # the 2023 profiling objection is the latest decision for its purpose: kept
    assert sorted(_one(ws, "select purpose, granted from consents")) == [("email_marketing", False), ("profiling", False)]
    assert _one(ws, "select sum(rows_deleted) from retention_log") == [(4,)]
    assert "anonymous_events" in str(result)


def test_retention_setting_is_validated(tmp_path: Path):
    (tmp_path / "cdp_ml.yaml").write_text("privacy: {retention_days: {clicks: 10}}\n")
    with pytest.raises(CdpError, match="privacy.*clicks"):
        Workspace.open(tmp_path)


def test_profiling_objection_as_of(tmp_path: Path):
    ws = Workspace.open(_write_yaml(tmp_path))
    with ws.connect() as con:
        con.execute("""create table person_consents as select * from (values
            ('P1', 'profiling', false, timestamp '2025-01-10 00:00:00', 'prefs'),
            ('P2', 'profiling', true,  timestamp '2025-01-01 00:00:00', 'prefs'),
            ('P2', 'profiling', false, timestamp '2025-01-01 00:00:00', 'prefs'),
            ('P3', 'profiling', false, timestamp '2024-12-01 00:00:00', 'prefs'),
            ('P3', 'profiling', true,  timestamp '2025-01-02 00:00:00', 'prefs'),
            ('P4', 'email_marketing', false, timestamp '2024-12-01 00:00:00', 'prefs'))
            t(person_id, purpose, granted, "timestamp", source)""")
        view = profiling_objections(con, date(2025, 1, 10))
        assert sorted(r[0] for r in con.execute(f"select person_id from {view}").fetchall()) == ["P2"]
        view = profiling_objections(con, date(2025, 1, 11))
        assert sorted(r[0] for r in con.execute(f"select person_id from {view}").fetchall()) == ["P1", "P2"]
        keep = profiling_excluded_sql(con, date(2025, 1, 11))
        earlier = profiling_excluded_sql(con, date(2025, 1, 10))  # made later, for an earlier date
        rows = con.execute(f"select person_id from (values ('P1'), ('P3'), (null)) t(person_id) where {keep}").fetchall()
        assert rows == [("P3",), (None,)]  # the first predicate still means its own date
        rows = con.execute(f"select person_id from (values ('P1'), ('P3')) t(person_id) where {earlier}").fetchall()
        assert rows == [("P1",), ("P3",)]


def _write_yaml(root: Path) -> Path:
    (root / "cdp_ml.yaml").write_text("sources: []\n")
    return root
