"""Ingestion contract: normalisation, mapping validation, quarantine with reasons, reconciling counts, idempotency."""

from __future__ import annotations

import json
import os
import textwrap
from datetime import date, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import yaml
from warehouse_queries import rows as _rows

from cdp_ml import CdpError, Workspace
from cdp_ml.cli import main
from cdp_ml.refresh.asof import latest_data_time
from cdp_ml.sources import ingest
from cdp_ml.sources.normalise import email, phone, timestamp
from cdp_ml.workspace import parse_config

CRM = textwrap.dedent("""\
    klantnummer;voornaam;achternaam;emailadres;telefoon;geboortedatum;postcode;klantsegment
    K1;Sophia ;de  Vries; Sofietje@Provider.NL ;06-12345678;01-02-1990;1234 ab;gold
    K2;Jan;Jansen;jan@x.nl;+31 6 1234 5679;31-02-1980;;silver
    K3;Mien;Bakker;geen-email;0031612345670;05-06-1970;1000AA;bronze
    ;Leeg;Record;;;;;
    K4;Kort
    """)
EVENTS = "\n".join([
    '{"ts":"2026-01-01T10:00:00Z","type":"page_view","cookie":"c1","utm":"mail"}',
    '{"ts":"2026-01-01T10:00:00Z","type":"page_view","cookie":"c1","utm":"mail"}',
    '{"ts":"not a time","type":"login","cookie":"c1","klant":"K1"}',
    '{"ts":"2026-01-02 10:00:00","type":"LOGIN","cookie":"c1","klant":"K1"}',
    '{broken json',
    '{"ts":"1900-01-01 00:00:00","type":"page_view","cookie":"c2"}',
]) + "\n"


def _workspace(root: Path, crm: str = CRM, events: str = EVENTS, extra_sources: list | None = None) -> Workspace:
    (root / "raw").mkdir(parents=True, exist_ok=True)
    (root / "raw" / "crm.csv").write_text(crm, encoding="utf-8")
    (root / "raw" / "web-1.jsonl").write_text(events, encoding="utf-8")
    config = {
        "timezone": "Europe/Amsterdam",
        "sources": [
            {"name": "crm", "kind": "customers", "path": "raw/crm.csv", "options": {"delim": ";"},
             "columns": {"record_id": "klantnummer", "first_name": "voornaam", "last_name": "achternaam",
                         "email": "emailadres", "phone": "telefoon", "date_of_birth": "geboortedatum",
                         "postcode": "postcode"}},
            {"name": "web", "kind": "events", "path": "raw/web-*.jsonl", "customer_source": "crm",
             "columns": {"timestamp": "ts", "event_type": "type", "anonymous_id": "cookie", "customer_ref": "klant"}},
            *(extra_sources or []),
        ],
    }
    (root / "cdp_ml.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return Workspace.open(root)


def test_normalisation_rules_in_sql():
    con = duckdb.connect()
    phones = ["06-12345678", "+31 6 1234 5678", "0031612345678", "0612345678", "612345678", "12", "0000000000"]
    got = [con.execute(f"select {phone('$1', 'NL')}", [p]).fetchall()[0][0] for p in phones]
    assert got[:5] == ["+31612345678"] * 4 + ["+31612345678"]
    assert got[5] is None  # too short to be a phone number
    emails = [" Sofietje@Provider.NL ", "mailto:a@b.nl", "geen-email", "a@b"]
    assert [con.execute(f"select {email('$1')}", [e]).fetchall()[0][0] for e in emails] == \
        ["sofietje@provider.nl", "a@b.nl", None, None]
    ts = timestamp("$1", "Europe/Amsterdam")
    assert str(con.execute(f"select {ts}", ["2026-07-01 12:00:00"]).fetchall()[0][0]) == "2026-07-01 10:00:00"
    assert str(con.execute(f"select {ts}", ["2026-07-01T12:00:00+02:00"]).fetchall()[0][0]) == "2026-07-01 10:00:00"
    assert str(con.execute(f"select {ts}", ["01-07-2026 12:00"]).fetchall()[0][0]) == "2026-07-01 10:00:00"
    assert str(con.execute(f"select {ts}", ["1782900000"]).fetchall()[0][0]).startswith("2026-07-01")


def test_ingest_quarantines_with_reasons_and_counts_reconcile(tmp_path):
    ws = _workspace(tmp_path)
    result = ingest(ws)
    by_source = {f.source: f for f in result.files}
    assert by_source["crm"].rows_read == 5  # 4 parsed rows + 1 malformed line
    assert by_source["crm"].rows_loaded == 3
    assert by_source["web"].rows_read == 6
    assert by_source["web"].rows_loaded == 2
    for f in result.files:
        assert f.rows_read == f.rows_loaded + f.rows_quarantined
    reasons = {r[0] for r in _rows(ws, "select reason from quarantine")}
    assert any(r.startswith("missing required field record_id") for r in reasons)
    assert any(r.startswith("malformed line") for r in reasons)
    assert "duplicate row" in reasons
    assert any(r.startswith("unparseable timestamp") for r in reasons)
    assert "malformed JSON line" in reasons
    assert any(r.startswith("timestamp out of range") for r in reasons)
    loads = _rows(ws, "select sum(rows_read), sum(rows_loaded) + sum(rows_quarantined) from loads")
    assert loads[0][0] == loads[0][1]
    assert _rows(ws, "select count(*) from quarantine")[0][0] == result.rows_quarantined


def test_ingest_normalises_and_keeps_unmapped_columns(tmp_path):
    ws = _workspace(tmp_path)
    ingest(ws)
    rows = dict((r[0], r[1:]) for r in _rows(
        ws, "select record_id, email, phone, first_name, last_name, postcode, date_of_birth, "
            "attributes->>'klantsegment' from customers"))
    assert rows["K1"][:5] == ("sofietje@provider.nl", "+31612345678", "Sophia", "de Vries", "1234AB")
    assert rows["K1"][6] == "gold"
    # bad optional fields are loaded empty and recorded, never lose the identity record
    assert rows["K2"][5] is None and rows["K3"][0] is None
    issues = {(r[0], r[1]) for r in _rows(ws, "select field, split_part(reason, ' ', 1) from load_issues")}
    assert ("date_of_birth", "not") in issues and ("email", "not") in issues
    events = _rows(ws, "select event_type, timestamp, ref_source, attributes->>'utm' from events order by timestamp")
    assert events[0] == ("page_view", pd.Timestamp("2026-01-01 10:00:00").to_pydatetime(), "crm", "mail")
    assert events[1][0] == "login"  # lower-cased
    assert str(events[1][1]) == "2026-01-02 09:00:00"  # Amsterdam local time -> UTC


def test_ingest_is_idempotent_and_updates_changed_files(tmp_path):
    ws = _workspace(tmp_path)
    ingest(ws)
    before = _rows(ws, "select count(*) from customers")[0][0], _rows(ws, "select count(*) from quarantine")[0][0]
    again = ingest(ws)
    assert all(f.status == "unchanged" for f in again.files)
    assert (_rows(ws, "select count(*) from customers")[0][0], _rows(ws, "select count(*) from quarantine")[0][0]) == before
    (tmp_path / "raw" / "crm.csv").write_text(CRM.replace("jan@x.nl", "jan.jansen@x.nl"), encoding="utf-8")
    changed = ingest(ws, source="crm")
    assert changed.files[0].status == "loaded"
    assert _rows(ws, "select email from customers where record_id = 'K2'") == [("jan.jansen@x.nl",)]
    assert _rows(ws, "select count(*) from customers")[0][0] == before[0]
    assert _rows(ws, "select count(*) from quarantine")[0][0] == before[1]
    (tmp_path / "raw" / "web-2.jsonl").write_text(EVENTS.splitlines()[3] + "\n", encoding="utf-8")
    (tmp_path / "raw" / "web-1.jsonl").unlink()
    res = ingest(ws, source="web")
    assert res.removed_files == ("web: raw/web-1.jsonl",)


def test_weekly_reingest_reads_no_unchanged_file(tmp_path, monkeypatch):
    """Same size, mtime and settings: skipped unread; touched with the same bytes: hashed once, then skipped unread."""
    from cdp_ml.sources import load

    ws = _workspace(tmp_path)
    ingest(ws)
    hashed: list[str] = []
    real_hash = load._file_hash
    monkeypatch.setattr(load, "_file_hash", lambda path, src: hashed.append(path.name) or real_hash(path, src))
    monkeypatch.setattr(load, "read_raw", lambda *a: pytest.fail("an unchanged file was read"))
    assert all(f.status == "unchanged" for f in ingest(ws).files) and hashed == []
    os.utime(tmp_path / "raw" / "crm.csv", ns=(1_700_000_000_000_000_000,) * 2)  # copied / touched, same bytes
    assert all(f.status == "unchanged" for f in ingest(ws).files) and hashed == ["crm.csv"]
    assert all(f.status == "unchanged" for f in ingest(ws).files) and hashed == ["crm.csv"]
    assert _rows(ws, "select count(*) from loads") == [(2,)]  # skipping records no load


def test_changed_workspace_defaults_reload_unchanged_files(tmp_path):
    ws = _workspace(tmp_path)
    ingest(ws)
    assert _rows(ws, "select min(timestamp) from events")[0][0] == pd.Timestamp("2026-01-01 10:00:00")
    config = yaml.safe_load((tmp_path / "cdp_ml.yaml").read_text())
    config["timezone"] = "UTC"  # the events source has no timezone of its own: its rows change
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = ingest(Workspace.open(tmp_path))
    assert {f.source: f.status for f in result.files} == {"crm": "loaded", "web": "loaded"}
    assert _rows(ws, "select timestamp from events where event_type = 'login'") == [(pd.Timestamp("2026-01-02 10:00:00"),)]
    assert all(f.status == "unchanged" for f in ingest(Workspace.open(tmp_path)).files)


def test_reingest_keeps_retention_and_erasure_and_counts_reconcile(tmp_path):
    from cdp_ml.privacy import apply_retention, forget
    from cdp_ml.sources.quality import data_quality

    ws = _workspace(tmp_path)
    with (tmp_path / "cdp_ml.yaml").open("a", encoding="utf-8") as fh:
        fh.write("privacy: {retention_days: {events: 1}}\n")
    ws = Workspace.open(tmp_path)
    ingest(ws)
    assert apply_retention(ws, date(2026, 1, 3)).deleted == (("events", "2026-01-02", 1),)
    assert forget(ws, email="jan@x.nl").exit_code == 0
    for path in (tmp_path / "raw").iterdir():  # a weekly export rewrites files with the same bytes
        path.write_bytes(path.read_bytes())
    again = ingest(ws)
    assert all(f.status == "unchanged" for f in again.files)
    assert _rows(ws, "select count(*) from events") == [(1,)]  # the expired event stays deleted
    assert _rows(ws, "select count(*) from customers where email = 'jan@x.nl'") == [(0,)]
    assert data_quality(ws).sources["reconciles"].all()
    (tmp_path / "raw" / "crm.csv").write_text(CRM.replace("Mien", "Mina"), encoding="utf-8")  # a real change
    changed = {f.source: f.status for f in ingest(ws).files}
    assert changed == {"crm": "loaded", "web": "unchanged"}
    assert _rows(ws, "select count(*) from customers where email = 'jan@x.nl'") == [(0,)]  # tombstoned
    assert _rows(ws, "select first_name from customers where record_id = 'K3'") == [("Mina",)]
    assert data_quality(ws).sources["reconciles"].all()


def test_loads_from_an_older_warehouse_are_trusted_by_content_hash(tmp_path):
    ws = _workspace(tmp_path)
    ingest(ws)
    with duckdb.connect(str(ws.warehouse_path)) as con:  # as written before files were fingerprinted
        for column in ("file_size", "file_mtime_ns", "settings_hash"):
            con.execute(f"alter table loads drop column {column}")
    assert all(f.status == "unchanged" for f in ingest(ws).files)
    assert _rows(ws, "select count(*) from loads where file_size is null or settings_hash is null") == [(0,)]


def test_jsonl_lines_are_objects_blank_or_malformed(tmp_path):
    lines = ['{"ts":"2026-01-01 10:00:00","type":"page_view","cookie":"c1","klant":"K1"}', "",
             ' \t{"ts":"2026-01-01 11:00:00","type":"page_view","cookie":"c2"}', "[1, 2]", '"just text"', "{broken", "   "]
    ws = _workspace(tmp_path, events="\n".join(lines) + "\n")
    web = next(f for f in ingest(ws).files if f.source == "web")
    assert (web.rows_read, web.rows_loaded, web.rows_quarantined) == (5, 2, 3)  # blank lines are not rows
    assert _rows(ws, "select line, reason from quarantine where source = 'web' order by line") == \
        [(4, "malformed JSON line"), (5, "malformed JSON line"), (6, "malformed JSON line")]


def test_mapping_validation_messages(tmp_path):
    base = {"name": "crm", "kind": "customers", "path": "x.csv", "columns": {"record_id": "id"}}
    with pytest.raises(CdpError, match=r"sources\[0\].kind: unknown kind 'klanten'"):
        parse_config({"sources": [{**base, "kind": "klanten"}]})
    with pytest.raises(CdpError, match=r"sources\[0\].columns.record_id: required field"):
        parse_config({"sources": [{**base, "columns": {"email": "mail"}}]})
    with pytest.raises(CdpError, match=r"'voornaam' is not a field of kind customers"):
        parse_config({"sources": [{**base, "columns": {"record_id": "id", "voornaam": "x"}}]})
    with pytest.raises(CdpError, match="customer_source: 'nope' is not a customers source"):
        parse_config({"sources": [base, {"name": "o", "kind": "orders", "path": "o.csv", "customer_source": "nope",
                                         "columns": {"order_id": "a", "customer_ref": "b", "ordered_at": "c"}}]})
    ws = _workspace(tmp_path)
    cfg = yaml.safe_load((tmp_path / "cdp_ml.yaml").read_text())
    cfg["sources"][0]["columns"]["city"] = "woonplaats"
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CdpError, match=r"column 'woonplaats' mapped to city is not in crm.csv \(columns: klantnummer"):
        ingest(Workspace.open(tmp_path))
    del ws


@pytest.mark.parametrize("case,expected", [
    ("missing", "does not exist"),
    ("empty", "is empty"),
    ("delimiter", "wrong delimiter?"),
    ("glob", "matches no file"),
])
def test_bad_files_give_one_line_errors_and_exit_2(tmp_path, capsys, case, expected):
    _workspace(tmp_path)
    cfg = yaml.safe_load((tmp_path / "cdp_ml.yaml").read_text())
    if case == "missing":
        (tmp_path / "raw" / "crm.csv").unlink()
    elif case == "empty":
        (tmp_path / "raw" / "crm.csv").write_text("")
    elif case == "delimiter":
        cfg["sources"][0]["options"] = {"delim": ","}
    elif case == "glob":
        cfg["sources"][1]["path"] = "raw/nothing-*.jsonl"
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump(cfg))
    code = main(["--workspace", str(tmp_path), "ingest"])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_orders_parquet_negative_quantity_is_a_return(tmp_path):
    (tmp_path / "raw").mkdir()
    pd.DataFrame({"invoice": ["1", "2", "2", "3"], "cust": ["A", "A", "A", None],
                  "date": ["2025-01-03 10:00", "2025-02-03 11:00", "2025-02-03 11:00", "2025-02-04 11:00"],
                  "qty": [2, -1, -1, 1], "price": ["3,50", "3.5", "3.5", "1"]}).to_parquet(tmp_path / "raw" / "o.parquet")
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump({"sources": [
        {"name": "orders", "kind": "orders", "path": "raw/o.parquet",
         "columns": {"order_id": "invoice", "customer_ref": "cust", "ordered_at": "date", "quantity": "qty",
                     "amount": "price"}}]}))
    ws = Workspace.open(tmp_path)
    res = ingest(ws)
    assert (res.rows_read, res.rows_loaded, res.rows_quarantined) == (4, 2, 2)
    assert _rows(ws, "select order_id, quantity, amount, status from orders order by order_id") == [
        ("1", 2.0, 3.5, "completed"), ("2", 1.0, 3.5, "returned")]
    assert any("negative quantity" in n for n in res.files[0].notes)


def test_transaction_log_without_order_numbers(tmp_path):
    """CDNOW-style logs (customer, yyyymmdd date, quantity, amount): one order per customer and time."""
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "log.csv").write_text("customer_id,date,quantity,amount\n1,19970101,1,11.77\n"
                                             "1,19970118,2,29.33\n2,19970101,1,9.5\n2,19970101,1,9.5\n"
                                             "3,1997013,1,2.0\n")
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump({"sources": [
        {"name": "cdnow", "kind": "orders", "path": "raw/log.csv",
         "columns": {"customer_ref": "customer_id", "ordered_at": "date", "quantity": "quantity", "amount": "amount"}}]}))
    ws = Workspace.open(tmp_path)
    res = ingest(ws)
    assert (res.rows_read, res.rows_loaded, res.rows_quarantined) == (5, 3, 2)  # a repeated line; a 7-digit date
    assert _rows(ws, "select order_id, customer_ref, ordered_at::date::varchar from orders order by 1") == [
        ("1@19970101", "1", "1997-01-01"), ("1@19970118", "1", "1997-01-18"), ("2@19970101", "2", "1997-01-01")]
    assert sorted(r[0] for r in _rows(ws, "select reason from quarantine")) == [
        "duplicate row", "unparseable timestamp in column date"]


def _normalised_shop(root: Path, orders: str) -> Workspace:
    """Olist-style export: order lines hold the price, the orders file the buyer and time, products the category."""
    (root / "raw").mkdir(parents=True, exist_ok=True)
    (root / "raw" / "items.csv").write_text("order_id,order_item_id,product_id,price\no1,1,p1,10.5\no1,2,p2,3\n"
                                            "o2,1,p1,10.5\no3,1,p9,1\nzz,1,p2,2\n")
    (root / "raw" / "orders.csv").write_text(orders)
    (root / "raw" / "products.csv").write_text("product_id,product_category_name\np1,perfumaria\np2,beleza_saude\n")
    # a bare `on:` is YAML 1.1's boolean true; it is read as the key
    (root / "cdp_ml.yaml").write_text(textwrap.dedent("""\
        sources:
        - name: items
          kind: orders
          path: raw/items.csv
          lookups:
          - {path: raw/orders.csv, on: order_id}
          - {path: raw/products.csv, key: {product_id: product_id}}
          columns: {order_id: order_id, customer_ref: customer_id, ordered_at: order_purchase_timestamp,
                    product_id: product_id, category: product_category_name, amount: price, status: order_status}
        """))
    return Workspace.open(root)


def test_lookups_join_normalised_exports_without_losing_rows(tmp_path):
    orders = ("order_id,customer_id,order_status,order_purchase_timestamp\n"
              "o1,c1,delivered,2017-10-02 10:56:33\no2,c2,wc-on-hold,2017-10-03 09:00:00\no3,c1,canceled,2017-10-04 08:00:00\n")
    ws = _normalised_shop(tmp_path, orders)
    res = ingest(ws)
    assert (res.rows_read, res.rows_loaded, res.rows_quarantined) == (5, 4, 1)  # 'zz' has no order: no buyer, no time
    assert _rows(ws, "select order_id, customer_ref, category, amount, status from orders order by order_id, amount") == [
        ("o1", "c1", "beleza_saude", 3.0, "completed"), ("o1", "c1", "perfumaria", 10.5, "completed"),
        ("o2", "c2", "perfumaria", 10.5, "completed"), ("o3", "c1", None, 1.0, "cancelled")]
    notes = res.files[0].notes
    assert "lookup orders.csv: 1 of 5 rows have no order_id match" in notes
    assert "lookup products.csv: 1 of 5 rows have no product_id match" in notes
    # a changed lookup file reloads the unchanged source file
    (tmp_path / "raw" / "orders.csv").write_text(orders.replace("o3,c1", "o3,c3"))
    assert ingest(ws).files[0].status == "loaded"
    assert _rows(ws, "select customer_ref from orders where order_id = 'o3'") == [("c3",)]
    assert ingest(ws).files[0].status == "unchanged"


def test_a_lookup_with_repeated_keys_is_refused(tmp_path):
    ws = _normalised_shop(tmp_path, "order_id,customer_id,order_status,order_purchase_timestamp\n"
                                    "o1,c1,delivered,2017-10-02\no1,c2,delivered,2017-10-02\n")
    with pytest.raises(CdpError, match="lookup orders.csv: 1 values of 'order_id' are on more than one row"):
        ingest(ws)
    (tmp_path / "raw" / "products.csv").unlink()
    with pytest.raises(CdpError, match=r"lookups\[1\] file 'raw/products.csv' does not exist"):
        ingest(ws)


def test_constants_fill_fields_a_file_implies(tmp_path):
    """A click log and a buys log without an event column (YOOCHOOSE-style, no header), an opt-in list."""
    (tmp_path / "clicks.dat").write_text("1,2014-04-07T10:51:09.277Z,214536502,0\n1,2014-04-07T10:54:09.868Z,214536500,0\n")
    (tmp_path / "buys.dat").write_text("1,2014-04-07T10:58:00.000Z,214536502,1046,1\n")
    (tmp_path / "optins.csv").write_text("email,signed_up\nAnna@Example.nl,2014-03-01\n")
    log = {"format": "csv", "options": {"header": False}}
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump({"sources": [
        {"name": "clicks", "kind": "events", "path": "clicks.dat", **log, "constants": {"event_type": "product_view"},
         "columns": {"anonymous_id": "column0", "timestamp": "column1", "product_id": "column2", "category": "column3"}},
        {"name": "buys", "kind": "events", "path": "buys.dat", **log, "constants": {"event_type": "purchase"},
         "columns": {"anonymous_id": "column0", "timestamp": "column1", "product_id": "column2", "value": "column3"}},
        {"name": "optins", "kind": "consents", "path": "optins.csv",
         "constants": {"purpose": "newsletter", "granted": True},
         "columns": {"email": "email", "timestamp": "signed_up"}}]}))
    ws = Workspace.open(tmp_path)
    res = ingest(ws)
    assert (res.rows_read, res.rows_loaded) == (4, 4)
    assert _rows(ws, "select source, event_type, value from events order by timestamp") == [
        ("clicks", "product_view", None), ("clicks", "product_view", None), ("buys", "purchase", 1046.0)]
    assert _rows(ws, "select email, purpose, granted from consents") == [("anna@example.nl", "email_marketing", True)]
    base = {"name": "c", "kind": "consents", "path": "x.csv", "columns": {"timestamp": "t", "purpose": "p"}}
    with pytest.raises(CdpError, match=r"constants.purpose: also mapped in columns"):
        parse_config({"sources": [{**base, "constants": {"purpose": "ads", "granted": True}}]})
    with pytest.raises(CdpError, match=r"constants: 'colour' is not a field of kind consents"):
        parse_config({"sources": [{**base, "constants": {"colour": "red"}}]})
    with pytest.raises(CdpError, match=r"columns.granted: required field .* or give it under constants"):
        parse_config({"sources": [base]})


def test_a_sessions_table_without_key_or_time_column_loads_by_row_and_lookup(tmp_path):
    """UCI Online Shoppers: one row per session, no session id, a month name for time, identical rows."""
    (tmp_path / "shoppers.csv").write_text("ProductRelated,PageValues,Month,VisitorType,Revenue\n"
                                           "3,0.0,Feb,New_Visitor,FALSE\n3,0.0,Feb,New_Visitor,FALSE\n"
                                           "40,12.5,Nov,Returning_Visitor,TRUE\n7,0.0,Jan,Other,FALSE\n")
    (tmp_path / "months.csv").write_text("Month,month_start\nFeb,2017-02-01\nNov,2017-11-01\n")
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump({"sources": [
        {"name": "shoppers", "kind": "sessions", "path": "shoppers.csv",
         "lookups": [{"path": "months.csv", "key": "Month"}],
         "columns": {"timestamp": "month_start", "converted": "Revenue"}}]}))
    ws = Workspace.open(tmp_path)
    res = ingest(ws)
    assert (res.rows_read, res.rows_loaded, res.rows_quarantined) == (4, 3, 1)  # 'Jan' is not in the lookup
    assert _rows(ws, 'select session_id, timestamp::date::varchar, converted, "PageValues" from sessions '
                     "order by session_id") == [
        ("shoppers.csv#1", "2017-02-01", False, 0.0), ("shoppers.csv#2", "2017-02-01", False, 0.0),
        ("shoppers.csv#3", "2017-11-01", True, 12.5)]
    assert _rows(ws, "select reason from quarantine") == [("missing required field timestamp (column month_start)",)]
    assert ingest(ws).files[0].status == "unchanged"


def test_day_numbers_count_from_a_timestamp_origin(tmp_path):
    """Dunnhumby's Complete Journey numbers days (DAY 1..711) and hides the calendar."""
    (tmp_path / "transaction_data.csv").write_text(
        "household_key,BASKET_ID,DAY,PRODUCT_ID,QUANTITY,SALES_VALUE\n"
        "2375,26984851472,1,1004906,1,1.39\n2375,26984851516,711,1033142,2,0.82\n7,1,1.5,9,1,1\n8,2,x,9,1,1\n")
    src = {"name": "tx", "kind": "orders", "path": "transaction_data.csv",
           "options": {"timestamp_origin": "2017-12-31"},
           "columns": {"order_id": "BASKET_ID", "customer_ref": "household_key", "ordered_at": "DAY",
                       "product_id": "PRODUCT_ID", "quantity": "QUANTITY", "amount": "SALES_VALUE"}}
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump({"timezone": "UTC", "sources": [src]}))
    ws = Workspace.open(tmp_path)
    assert latest_data_time(ws) == datetime(2019, 12, 12)  # `--as-of latest` reads the files the same way
    res = ingest(ws)
    assert (res.rows_read, res.rows_loaded, res.rows_quarantined) == (4, 3, 1)
    assert _rows(ws, "select ordered_at::varchar from orders order by ordered_at") == [
        ("2018-01-01 00:00:00",), ("2018-01-01 12:00:00",), ("2019-12-12 00:00:00",)]
    assert _rows(ws, "select reason from quarantine") == [("unparseable timestamp in column DAY",)]
    for options, message in (({"timestamp_origin": "day one"}, "timestamp_origin 'day one' is not a date"),
                             ({"timestamp_origin": "2018-01-01", "timestamp_unit": "week"}, "timestamp_unit 'week'"),
                             ({"timestamp_unit": "day"}, "timestamp_unit needs timestamp_origin")):
        (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump({"sources": [{**src, "options": options}]}))
        with pytest.raises(CdpError, match=message):
            ingest(Workspace.open(tmp_path))


def test_mapped_paths_reach_into_nested_columns(tmp_path):
    """A GA4 BigQuery export: device, traffic source and ecommerce are objects, items a list of objects."""
    lines = [
        {"event_timestamp": "1606780800000000", "event_name": "view_item", "user_pseudo_id": "111.1",
         "device": {"category": "mobile"}, "traffic_source": {"source": "google", "medium": "organic"},
         "ecommerce": {"purchase_revenue": None}, "items": [{"item_id": "GGOE1", "item_category": "Apparel"}]},
        {"event_timestamp": "1606780860000000", "event_name": "purchase", "user_pseudo_id": "111.1",
         "device": {"category": "mobile"}, "traffic_source": {"source": "google", "medium": "organic"},
         "ecommerce": {"purchase_revenue": 48.5}, "items": [{"item_id": "GGOE1", "item_category": "Apparel"},
                                                            {"item_id": "GGOE2", "item_category": "Bags"}]},
        {"event_timestamp": "1606780900000000", "event_name": "page_view", "user_pseudo_id": "222.2",
         "device": {"category": "desktop"}, "traffic_source": None, "ecommerce": None, "items": []}]
    (tmp_path / "ga4.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    duckdb.sql(f"copy (select * from read_json('{tmp_path / 'ga4.jsonl'}')) to '{tmp_path / 'ga4.parquet'}'")
    mapping = {"timestamp": "event_timestamp", "event_type": "event_name", "anonymous_id": "user_pseudo_id",
               "product_id": "items[0].item_id", "category": "items[0].item_category",
               "value": "ecommerce.purchase_revenue", "channel": "device.category", "referrer": "traffic_source.source"}
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump({"sources": [
        {"name": name, "kind": "events", "path": f"ga4.{ext}", "columns": mapping}
        for name, ext in (("jsonl", "jsonl"), ("parquet", "parquet"))]}))
    ws = Workspace.open(tmp_path)
    res = ingest(ws)
    assert (res.rows_read, res.rows_loaded) == (6, 6)
    expected = [("product_view", "GGOE1", "Apparel", None, "mobile", "google"),
                ("purchase", "GGOE1", "Apparel", 48.5, "mobile", "google"),
                ("page_view", None, None, None, "desktop", None)]
    for name in ("jsonl", "parquet"):
        assert _rows(ws, "select event_type, product_id, category, value, channel, referrer from events "
                         f"where source = '{name}' order by timestamp") == expected
    # a value that is not JSON reads as missing (a required field would quarantine the row), never fails the file
    (tmp_path / "bad.csv").write_text('ts,name,user\n2020-12-01,page_view,"{""id"": ""u1""}"\n'
                                      "2020-12-01,page_view,not json\n")
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump({"sources": [
        {"name": "bad", "kind": "events", "path": "bad.csv",
         "columns": {"timestamp": "ts", "event_type": "name", "anonymous_id": "user.id"}}]}))
    res = ingest(Workspace.open(tmp_path))
    assert (res.rows_loaded, res.rows_quarantined) == (2, 0)
    assert _rows(ws, "select anonymous_id from events where source = 'bad' order by _row") == [("u1",), (None,)]
    # the rest of a nested column is kept (as JSON) in the row's attributes
    kept = _rows(ws, "select attributes->>'$.traffic_source' from events where source = 'parquet' order by timestamp")
    assert json.loads(kept[0][0]) == {"source": "google", "medium": "organic"}


def test_unit_price_gives_the_line_total(tmp_path):
    """Online Retail II: a unit price and a quantity, 'C' invoices with negative quantities are returns."""
    (tmp_path / "retail.csv").write_text(
        "Invoice,StockCode,Quantity,InvoiceDate,Price,Customer ID\n"
        "489434,85048,12,12/1/2009 7:45,6.95,13085.0\nC489449,85048,-3,12/1/2009 10:33,6.95,13085.0\n"
        "489435,22350,4,12/1/2009 7:46,2.5x,13086.0\n")
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump({"sources": [
        {"name": "retail", "kind": "orders", "path": "retail.csv", "options": {"timestampformat": "%m/%d/%Y %H:%M"},
         "columns": {"order_id": "Invoice", "customer_ref": "Customer ID", "ordered_at": "InvoiceDate",
                     "product_id": "StockCode", "quantity": "Quantity", "unit_price": "Price"}}]}))
    ws = Workspace.open(tmp_path)
    res = ingest(ws)
    assert (res.rows_loaded, res.rows_quarantined) == (2, 1)
    assert _rows(ws, "select order_id, quantity, unit_price, amount, status from orders order by order_id") == [
        ("489434", 12.0, 6.95, 12 * 6.95, "completed"), ("C489449", 3.0, 6.95, 3 * 6.95, "returned")]
    assert _rows(ws, "select reason from quarantine") == [("not a number in column Price",)]


def test_excel_workbooks_read_one_or_all_sheets(tmp_path):
    """Online Retail II is published as one .xlsx with a sheet per year."""
    from datetime import datetime as dt

    years = {"Year 2009-2010": [("489434", "85048", 12, dt(2009, 12, 1, 7, 45), 6.95, 13085.0)],
             "Year 2010-2011": [("536365", "85123A", 6, dt(2010, 12, 1, 8, 26), 2.55, 17850.0),
                                ("C536379", "D", -1, dt(2010, 12, 1, 9, 41), 27.5, 14527.0),
                                (None, None, None, None, None, None)]}  # a trailing blank row
    header = ["Invoice", "StockCode", "Quantity", "InvoiceDate", "Price", "Customer ID"]
    with pd.ExcelWriter(tmp_path / "online_retail_II.xlsx") as book:
        for sheet, rows in years.items():
            pd.DataFrame(rows, columns=header).to_excel(book, sheet_name=sheet, index=False)
    src = {"name": "retail", "kind": "orders", "path": "online_retail_II.xlsx", "options": {"sheet": "all"},
           "columns": {"order_id": "Invoice", "customer_ref": "Customer ID", "ordered_at": "InvoiceDate",
                       "product_id": "StockCode", "quantity": "Quantity", "unit_price": "Price"}}
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump({"timezone": "UTC", "sources": [src]}))
    ws = Workspace.open(tmp_path)
    res = ingest(ws)
    assert (res.rows_read, res.rows_loaded) == (3, 3)
    assert _rows(ws, "select order_id, customer_ref, ordered_at::varchar, quantity, amount, status from orders "
                     "order by ordered_at") == [
        ("489434", "13085", "2009-12-01 07:45:00", 12.0, 12 * 6.95, "completed"),
        ("536365", "17850", "2010-12-01 08:26:00", 6.0, 6 * 2.55, "completed"),
        ("C536379", "14527", "2010-12-01 09:41:00", 1.0, 27.5, "returned")]
    for sheet, loaded in ((1, 2), ("Year 2009-2010", 1)):
        (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump({"sources": [{**src, "options": {"sheet": sheet}}]}))
        assert ingest(Workspace.open(tmp_path)).rows_loaded == loaded
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump({"sources": [{**src, "options": {"sheet": "2011"}}]}))
    with pytest.raises(CdpError, match=r"has no sheet '2011' \(sheets: Year 2009-2010, Year 2010-2011; or sheet: all\)"):
        ingest(Workspace.open(tmp_path))
    (tmp_path / "broken.xlsx").write_text("not a workbook")
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump({"sources": [{**src, "path": "broken.xlsx"}]}))
    with pytest.raises(CdpError, match="cannot read broken.xlsx as an Excel/ODS workbook"):
        ingest(Workspace.open(tmp_path))
