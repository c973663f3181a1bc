"""Layouts of public datasets the README recipes rely on: each rule is tested on a few generated rows.

Taobao UserBehavior (header-less, pv/cart/fav/buy, epoch seconds), Ta Feng and Online Retail CSVs (month-first
dates), Coveo's browsing log (the event in one of two columns), Tmall's user_log (mmdd without a year), and a
refresh on a log too short for any model (segments and report not applicable instead of a failed week).
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import duckdb
import pytest
import yaml

from cdp_ml import Workspace
from cdp_ml.errors import CdpError
from cdp_ml.refresh import published, refresh
from cdp_ml.sources import ingest

sys.path.insert(0, str(Path(__file__).parent))
from refresh_fixtures import make_workspace  # noqa: E402
from warehouse_queries import rows as _rows  # noqa: E402


def _workspace(root: Path, files: dict[str, str], config: str) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / "cdp_ml.yaml").write_text(config, encoding="utf-8")
    return Workspace.open(root)


def test_taobao_user_behavior_names_map_to_the_canonical_vocabulary(tmp_path):
    """No header, pv/cart/fav/buy: a pv with an item is a product view, buy the purchase label, fav a wishlist add."""
    log = ("1,2268318,2520377,pv,1511544070\n1,2268318,2520377,cart,1511544090\n1,2268318,2520377,fav,1511544095\n"
           "1,2268318,2520377,buy,1511544200\n2,,2520377,pv,1511544300\n")
    ws = _workspace(tmp_path, {"UserBehavior.csv": log}, """
sources:
- {name: taobao, kind: events, path: UserBehavior.csv, format: csv, options: {header: false},
   columns: {customer_ref: column0, product_id: column1, category: column2, event_type: column3, timestamp: column4}}
""")
    result = ingest(ws)
    assert (result.rows_loaded, result.rows_quarantined) == (5, 0)
    assert "outside the built-in vocabulary" not in str(result)
    assert _rows(ws, "select raw_event_type, event_type from events order by _row") == [
        ("pv", "product_view"), ("cart", "add_to_cart"), ("fav", "add_to_wishlist"), ("buy", "purchase"),
        ("pv", "page_view")]
    assert _rows(ws, "select min(timestamp)::varchar from events") == [("2017-11-24 17:21:10",)]


def test_month_first_dates_are_read_month_first_when_the_column_says_so(tmp_path):
    """Ta Feng's 11/1/2000 is 1 November: a column with a day-position value above 12 (2/28/2001) and none in the
    month position is read m/d/y, so no row is quarantined and none has day and month swapped."""
    tafeng = ('"TRANSACTION_DT","CUSTOMER_ID","PRODUCT_ID","AMOUNT","SALES_PRICE"\n'
              '"11/1/2000","01104905","4710199010372","2","30"\n"12/5/2000","01104905","4710199010372","1","15"\n'
              '"2/28/2001","00446212","4710857472535","1","52"\n')
    european = "customer,day,amount\nc1,05/03/2021,10\nc2,25/03/2021,12\n"  # 25/03 exists: day-first
    ambiguous = "customer,day,amount\nc1,05/03/2021,10\nc2,06/04/2021,12\n"  # nothing tells: the default, day-first
    ws = _workspace(tmp_path, {"tafeng.csv": tafeng, "eu.csv": european, "amb.csv": ambiguous}, """
sources:
- {name: tafeng, kind: orders, path: tafeng.csv,
   columns: {customer_ref: CUSTOMER_ID, ordered_at: TRANSACTION_DT, product_id: PRODUCT_ID, quantity: AMOUNT,
             amount: SALES_PRICE}}
- {name: eu, kind: orders, path: eu.csv, columns: {customer_ref: customer, ordered_at: day, amount: amount}}
- {name: amb, kind: orders, path: amb.csv, columns: {customer_ref: customer, ordered_at: day, amount: amount}}
""")
    result = ingest(ws)
    assert result.rows_quarantined == 0
    assert "column TRANSACTION_DT read as month-first dates" in str(result)
    assert "column day read as month-first" not in str(result)
    days = _rows(ws, "select source, ordered_at::date::varchar from orders order by source, _row")
    assert days == [("amb", "2021-03-05"), ("amb", "2021-04-06"), ("eu", "2021-03-05"), ("eu", "2021-03-25"),
                    ("tafeng", "2000-11-01"), ("tafeng", "2000-12-05"), ("tafeng", "2001-02-28")]
    assert _rows(ws, "select customer_ref from orders where source = 'tafeng' order by _row limit 1") == [("01104905",)]


def test_a_field_mapped_to_a_list_reads_the_first_non_empty_column(tmp_path):
    """Coveo's browsing log names the event in product_action (detail/add/remove/purchase), else in event_type
    (pageview): a list mapping keeps the page views instead of quarantining them as missing an event type."""
    log = ("session_id_hash,event_type,product_action,product_sku_hash,server_timestamp_epoch_ms,hashed_url\n"
           "s1,pageview,,,1550885210881,u1\ns1,event_product,detail,p1,1550885213307,u2\n"
           "s1,event_product,add,p1,1550885220000,u2\ns1,event_product,purchase,p1,1550885290000,u3\n"
           "s1,event_product,remove,p2,1550885291000,u3\n")
    config = """
sources:
- {name: coveo, kind: events, path: browsing_train.csv,
   columns: {anonymous_id: session_id_hash, session_id: session_id_hash, event_type: [product_action, event_type],
             product_id: product_sku_hash, timestamp: server_timestamp_epoch_ms, url: hashed_url}}
"""
    ws = _workspace(tmp_path, {"browsing_train.csv": log}, config)
    result = ingest(ws)
    assert (result.rows_loaded, result.rows_quarantined) == (5, 0)
    assert [r[0] for r in _rows(ws, "select event_type from events order by _row")] == [
        "page_view", "product_view", "add_to_cart", "purchase", "remove_from_cart"]
    # the list's columns stay in the row's attributes, as any column the mapping does not name
    assert _rows(ws, "select attributes->>'event_type' from events where _row = 2") == [("event_product",)]

    (tmp_path / "cdp_ml.yaml").write_text(config.replace("[product_action, event_type]", "[product_action, action]"))
    with pytest.raises(CdpError, match=r"column 'action' \(of the list 'product_action\|action'\) is not in"):
        ingest(Workspace.open(tmp_path))
    (tmp_path / "cdp_ml.yaml").write_text(config.replace("[product_action, event_type]", "[]"))
    with pytest.raises(CdpError, match=r"sources\[0\]\.columns\.event_type: expected a column name or a list"):
        Workspace.open(tmp_path)


def test_a_refresh_without_any_model_scores_skips_segments_and_report(tmp_path):
    """A log too short for either model (Taobao's nine days) has nothing to segment: the steps that need scores
    are not applicable, the week does not fail, and the published pointer names no segments or report."""
    root = tmp_path / "ws"
    pipeline = make_workspace(root)
    raw = yaml.safe_load(pipeline.read_text())
    for step in raw["steps"]:
        if step["name"] == "03_publish":
            step["needs"] = ["conversion_scores", "repurchase_scores"]
    pipeline.write_text(yaml.safe_dump(raw))
    ws = Workspace.open(root)
    week = date(2026, 3, 16)
    result = refresh(ws, as_of=week, pipeline=pipeline)
    assert [s.status for s in result.steps] == ["succeeded", "succeeded", "skipped", "skipped"], str(result)
    assert f"not applicable: no model has scores on or before {week}" in str(result)
    assert result.exit_code == 0
    assert published(ws)["segments"] is None and published(ws)["report"] is None
    assert "segments:" not in str(result)

    con = duckdb.connect(str(ws.warehouse_path))  # scores of a later week do not count for this one
    con.execute("create table conversion_scores (as_of DATE, person_id VARCHAR, probability DOUBLE)")
    con.execute("insert into conversion_scores values (DATE '2026-03-23', 'p1', 0.5)")
    con.close()
    assert refresh(ws, as_of=week, pipeline=pipeline).steps[2].status == "skipped"
    assert refresh(ws, as_of=date(2026, 3, 23), pipeline=pipeline).steps[2].status == "succeeded"


def test_tmall_month_day_stamps_take_the_year_from_the_workspace_file(tmp_path):
    """Tmall's user_log keeps mmdd only (1111 = Double 11), numeric action codes; a copy saved by a tool that typed
    the column as a number has 511 for 0511. Only the day is stamped, so two clicks on one item that day are two
    equal rows: duplicate_rows: keep loads both."""
    log = ("user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type\n"
           "328862,323294,833,2882,2661,0829,0\n328862,844400,1271,2882,,511,1\n328862,575153,1271,2882,2661,1111,2\n"
           "328862,323294,833,2882,2661,0829,0\n")
    config = """
sources:
- {name: tmall, kind: events, path: user_log_format1.csv,
   options: {timestampformat: "%m%d", timestamp_year: 2014, duplicate_rows: keep,
             event_types: {"0": product_view, "1": add_to_cart, "2": purchase, "3": add_to_wishlist}},
   columns: {customer_ref: user_id, product_id: item_id, category: cat_id, timestamp: time_stamp, event_type: action_type}}
"""
    ws = _workspace(tmp_path, {"user_log_format1.csv": log}, config)
    assert ingest(ws).rows_quarantined == 0
    assert _rows(ws, "select timestamp::date::varchar, event_type from events order by _row") == [
        ("2014-08-29", "product_view"), ("2014-05-11", "add_to_cart"), ("2014-11-11", "purchase"),
        ("2014-08-29", "product_view")]
    (tmp_path / "cdp_ml.yaml").write_text(config.replace(" duplicate_rows: keep,", ""))
    result = ingest(Workspace.open(tmp_path))  # the default: an identical row is a re-export, loaded once
    assert (result.rows_loaded, result.rows_quarantined) == (3, 1)
    (tmp_path / "cdp_ml.yaml").write_text(config.replace("duplicate_rows: keep", "duplicate_rows: drop"))
    with pytest.raises(CdpError, match="duplicate_rows: 'drop' is not quarantine or keep"):
        ingest(Workspace.open(tmp_path))
    (tmp_path / "cdp_ml.yaml").write_text(config.replace('timestampformat: "%m%d", ', ""))
    with pytest.raises(CdpError, match="timestamp_year: needs a timestampformat without a year"):
        ingest(Workspace.open(tmp_path))
    (tmp_path / "cdp_ml.yaml").write_text(config.replace("2014", "'14'"))
    with pytest.raises(CdpError, match="timestamp_year: expected a year such as 2014"):
        ingest(Workspace.open(tmp_path))


def test_diginetica_views_keep_their_order_and_na_users_are_no_customer(tmp_path):
    """Diginetica: ';'-separated, userId NA for sessions without a login, the day plus milliseconds since the session
    began (timeframe). NA is no key (else every anonymous session would be one customer 'NA'); the offset keeps
    the views before the purchase instead of all at midnight."""
    views = ("sessionId;userId;itemId;timeframe;eventdate\n1;NA;81766;526309;2016-05-09\n"
             "1;NA;31331;1031018;2016-05-09\n2;;32118;243569;2016-05-09\n3;5;12036;0;2016-05-10\n")
    buys = "sessionId;userId;timeframe;eventdate;ordernumber;itemId\n1;NA;1200000;2016-05-09;8;31331\n"
    source = """
- {{name: {name}, kind: events, path: {path}, options: {{delim: ';', timestamp_offset: {{column: timeframe, unit: millisecond}}}},
   constants: {{event_type: {event}}},
   columns: {{session_id: sessionId, anonymous_id: sessionId, customer_ref: userId, product_id: itemId, timestamp: eventdate}}}}"""
    config = "sources:" + source.format(name="views", path="train-item-views.csv", event="product_view") + \
        source.format(name="buys", path="train-purchases.csv", event="purchase") + "\n"
    ws = _workspace(tmp_path, {"train-item-views.csv": views, "train-purchases.csv": buys}, config)
    assert ingest(ws).rows_quarantined == 0
    assert _rows(ws, "select session_id, customer_ref, event_type, timestamp::varchar from events order by timestamp") == [
        ("2", None, "product_view", "2016-05-09 00:04:03.569"), ("1", None, "product_view", "2016-05-09 00:08:46.309"),
        ("1", None, "product_view", "2016-05-09 00:17:11.018"), ("1", None, "purchase", "2016-05-09 00:20:00"),
        ("3", "5", "product_view", "2016-05-10 00:00:00")]
    (tmp_path / "cdp_ml.yaml").write_text(config.replace("unit: millisecond", "unit: ms"))
    with pytest.raises(CdpError, match=r"timestamp_offset\.unit: 'ms' is not one of day, hour"):
        ingest(Workspace.open(tmp_path))
    (tmp_path / "cdp_ml.yaml").write_text(config.replace("column: timeframe", "column: frame"))
    with pytest.raises(CdpError, match=r"timestamp_offset\.column: 'frame' is not in the file"):
        ingest(Workspace.open(tmp_path))


def test_repurchase_says_why_no_order_of_a_person_is_there(tmp_path):
    """An anonymous click log (Coveo) has purchases but no persons; a short log (Taobao) has them only later
    than training needs: each gets its own reason instead of 'check the orders source'."""
    from cdp_ml.errors import NotEnoughData
    from cdp_ml.identity import resolve
    from cdp_ml.models import repurchase

    lines = "".join(f"s{i % 40},{'purchase' if i % 3 == 0 else 'detail'},p{i % 7},{1546300800000 + i * 3_600_000}\n"
                    for i in range(400))
    ws = _workspace(tmp_path, {"browsing.csv": "session,action,sku,ms\n" + lines}, """
sources:
- {name: coveo, kind: events, path: browsing.csv,
   columns: {anonymous_id: session, session_id: session, event_type: action, product_id: sku, timestamp: ms}}
""")
    ingest(ws)
    resolve(ws)
    with pytest.raises(NotEnoughData, match="none of the 134 orders or purchases belongs to a person"):
        repurchase.train(ws)
    (tmp_path / "cdp_ml.yaml").write_text((tmp_path / "cdp_ml.yaml").read_text().replace(
        "anonymous_id: session,", "customer_ref: session,"))
    ws = Workspace.open(tmp_path)
    ingest(ws)
    resolve(ws)
    with pytest.raises(NotEnoughData, match=r"the first order of a person is on 2019-01-01, not before 2018-"):
        repurchase.train(ws)
    (tmp_path / "browsing.csv").write_text("session,action,sku,ms\n" + lines.replace("purchase", "detail"))
    ingest(ws)
    resolve(ws)
    with pytest.raises(CdpError, match="the warehouse has no orders and no purchase events; map an orders source"):
        repurchase.train(ws)


def test_a_latin1_export_says_which_option_reads_it(tmp_path):
    """Kaggle's 'E-Commerce Data' copy of Online Retail is ISO-8859-1 with m/d/yyyy h:mm times: read as UTF-8, its
    lines with a £ or an accent are quarantined and the ingest says to set the encoding; with it, all load."""
    text = ("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
            "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850,United Kingdom\n"
            "536366,22633,CRÈME BRÛLÉE £ SET,6,12/13/2010 18:28,1.85,17850,United Kingdom\n")
    root = tmp_path / "ws"
    root.mkdir()
    (root / "data.csv").write_bytes(text.encode("latin-1"))
    config = """
sources:
- {name: invoices, kind: orders, path: data.csv,
   columns: {order_id: InvoiceNo, customer_ref: CustomerID, ordered_at: InvoiceDate, product_id: StockCode,
             quantity: Quantity, unit_price: UnitPrice}}
"""
    (root / "cdp_ml.yaml").write_text(config)
    result = ingest(Workspace.open(root))
    assert (result.rows_loaded, result.rows_quarantined) == (1, 1)
    assert "1 lines are not UTF-8 and were quarantined" in str(result) and "options.encoding: latin-1" in str(result)
    (root / "cdp_ml.yaml").write_text(config.replace("path: data.csv,", "path: data.csv, options: {encoding: latin-1},"))
    ws = Workspace.open(root)
    result = ingest(ws)
    assert (result.rows_loaded, result.rows_quarantined) == (2, 0) and "not UTF-8" not in str(result)
    assert _rows(ws, "select ordered_at::varchar, attributes->>'Description' from orders order by _row") == [
        ("2010-12-01 08:26:00", "WHITE HANGING HEART T-LIGHT HOLDER"), ("2010-12-13 18:28:00", "CRÈME BRÛLÉE £ SET")]


def test_latest_segments_week_is_the_newest_scores_date(tmp_path):
    """On a historical export the models score as of the data's last Monday (2016-06-06), years before the
    calendar's week: `segments` and `report` (by default, or with --as-of latest) use the newest score date."""
    from cdp_ml.segments.build import default_as_of, latest_scores_date
    from cdp_ml.workspace import last_completed_week_end

    ws = _workspace(tmp_path, {}, "sources: []\n")
    with pytest.raises(CdpError, match="no conversion_scores or repurchase_scores yet"):
        latest_scores_date(ws)
    assert default_as_of(ws, None) == last_completed_week_end()  # nothing scored: the calendar's week
    ws.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(ws.warehouse_path))
    con.execute("create table conversion_scores (as_of DATE, person_id VARCHAR, probability DOUBLE)")
    con.execute("create table repurchase_scores (as_of DATE, person_id VARCHAR, p_week DOUBLE)")
    con.execute("insert into conversion_scores values (DATE '2016-06-06', 'p1', 0.5), (DATE '2016-05-30', 'p1', 0.4)")
    con.execute("insert into repurchase_scores values (DATE '2016-05-30', 'p1', 0.1)")
    con.close()
    assert latest_scores_date(ws) == default_as_of(ws, None) == default_as_of(ws, "latest") == date(2016, 6, 6)
    assert default_as_of(ws, "2016-05-30") == date(2016, 5, 30)


def test_ga_revenue_sessions_take_label_and_features_from_json_columns(tmp_path):
    """Kaggle's GA Customer Revenue train.csv: one row per visit, JSON text columns; totals.transactions is absent
    for a visit without a purchase (not converted) and a count otherwise (2 is converted). `features` keeps the
    named columns and paths only, so the totals JSON, which holds the revenue, is no feature."""
    def visit(vid: str, ts: int, totals: str) -> str:
        return (f'Organic Search,20160902,"{{""deviceCategory"": ""desktop""}}",{vid},{vid}_{ts},"{totals}",'
                f'{ts},1\n')
    text = ("channelGrouping,date,device,fullVisitorId,sessionId,totals,visitStartTime,visitNumber\n"
            + visit("1131660440785968503", 1472830385, '{""hits"": ""1"", ""pageviews"": ""1""}')
            + visit("377306020877927890", 1472880147, '{""hits"": ""9"", ""transactions"": ""2"", '
                                                       '""transactionRevenue"": ""37860000""}')
            + visit("3895546263509774583", 1472865386, '{""hits"": ""3"", ""transactions"": ""1""}'))
    config = """
sources:
- {name: ga, kind: sessions, path: train.csv,
   columns: {session_id: sessionId, anonymous_id: fullVisitorId, timestamp: visitStartTime, converted: totals.transactions},
   features: [channelGrouping, visitNumber, totals.hits, device.deviceCategory]}
"""
    ws = _workspace(tmp_path, {"train.csv": text}, config)
    assert ingest(ws).rows_quarantined == 0
    assert _rows(ws, 'select converted, "totals.hits", "device.deviceCategory", "channelGrouping" from sessions '
                     "order by _row") == [(False, 1.0, "desktop", "Organic Search"), (True, 9.0, "desktop", "Organic Search"),
                                          (True, 3.0, "desktop", "Organic Search")]
    kept = {r[0] for r in _rows(ws, "describe sessions")}
    assert {"totals", "device", "date"}.isdisjoint(kept) and "visitNumber" in kept
    (tmp_path / "cdp_ml.yaml").write_text(config.replace("[channelGrouping,", "[channel,"))
    with pytest.raises(CdpError, match="feature column 'channel' is not in train.csv"):
        ingest(Workspace.open(tmp_path))
    (tmp_path / "cdp_ml.yaml").write_text(config.replace("kind: sessions", "kind: events"))
    with pytest.raises(CdpError, match=r"sources\[0\]\.features: only sessions sources have feature columns"):
        Workspace.open(tmp_path)
