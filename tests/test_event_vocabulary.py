"""Public event-log shapes (RetailRocket, REES46, Segment) land in the canonical event vocabulary.

Vendor names are mapped at ingest (per-source overrides win), the source's spelling stays in
``raw_event_type``, ``... UTC`` timestamps are UTC, and a RetailRocket-shaped log trains the conversion
model with the default ``purchase_event_types``.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml
from warehouse_queries import rows as _rows

from cdp_ml import CdpError, Workspace
from cdp_ml.cli import main
from cdp_ml.features import sessions
from cdp_ml.models import conversion
from cdp_ml.sources import ingest
from cdp_ml.sources.normalise import canonical_event_names, timestamp

RR_COLUMNS = {"timestamp": "timestamp", "event_type": "event", "anonymous_id": "visitorid", "product_id": "itemid"}


def _ms(ts: str) -> int:
    return int(pd.Timestamp(ts, tz="UTC").value // 1_000_000)


def _write(root: Path, sources: list[dict], **settings) -> Workspace:
    (root / "cdp_ml.yaml").write_text(yaml.safe_dump({"sources": sources, **settings}), encoding="utf-8")
    return Workspace.open(root)


def _reconciles(ws: Workspace, source: str) -> None:
    """rows read = loaded + quarantined, and every loaded row is in the events table."""
    read, loaded, quarantined = _rows(ws, "select sum(rows_read), sum(rows_loaded), sum(rows_quarantined) from loads "
                                          "where source = ?", [source])[0]
    assert read == loaded + quarantined
    assert _rows(ws, "select count(*) from events where source = ?", [source]) == [(loaded,)]


def _retailrocket(root: Path) -> None:
    rows = [(_ms("2026-03-02 10:00:00"), "v1", "view", "i1", ""),
            (_ms("2026-03-02 10:01:00"), "v1", "addtocart", "i1", ""),
            (_ms("2026-03-02 10:05:00"), "v1", "transaction", "i1", "t1"),
            (_ms("2026-03-02 11:00:00"), "v2", "view", "", ""),  # no item: a page view
            (_ms("2026-03-02 11:00:00"), "v2", "", "i2", "")]  # no event name: quarantined
    pd.DataFrame(rows, columns=["timestamp", "visitorid", "event", "itemid", "transactionid"]).to_csv(
        root / "events.csv", index=False)


def test_retailrocket_log_maps_to_canonical_types_through_the_cli(tmp_path, capsys):
    _retailrocket(tmp_path)
    _write(tmp_path, [{"name": "rr", "kind": "events", "path": "events.csv", "columns": RR_COLUMNS}])
    assert main(["--workspace", str(tmp_path), "ingest"]) == 0
    out = capsys.readouterr().out
    assert "5 read = 4 loaded + 1 quarantined" in out and "outside the built-in vocabulary" not in out
    ws = Workspace.open(tmp_path)
    assert _rows(ws, "select anonymous_id, raw_event_type, event_type, timestamp, attributes->>'transactionid' "
                     "from events order by timestamp, anonymous_id") == [
        ("v1", "view", "product_view", datetime(2026, 3, 2, 10, 0), None),
        ("v1", "addtocart", "add_to_cart", datetime(2026, 3, 2, 10, 1), None),
        ("v1", "transaction", "purchase", datetime(2026, 3, 2, 10, 5), "t1"),
        ("v2", "view", "page_view", datetime(2026, 3, 2, 11, 0), None)]
    assert _rows(ws, "select reason from quarantine") == [("missing required field event_type (column event)",)]
    _reconciles(ws, "rr")


def test_rees46_log_with_utc_suffixed_times(tmp_path):
    frame = pd.DataFrame({
        "event_time": ["2019-10-01 00:00:00 UTC", "2019-10-01 00:00:30 UTC", "2019-10-01 00:01:00 UTC",
                       "2019-10-01 00:02:00 UTC", "2019-10-01 00:03:00 UTC"],
        "event_type": ["view", "cart", "remove_from_cart", "cart", "purchase"],
        "product_id": ["1003461", "1003461", "1003461", "5000088", "5000088"],
        "category_id": ["2053013555631882655"] * 5,
        "category_code": ["electronics.smartphone"] * 3 + ["appliances.sewing_machine"] * 2,
        "brand": ["xiaomi"] * 3 + ["janome"] * 2,
        "price": ["489.07", "489.07", "489.07", "293.65", "293.65"],
        "user_id": ["520088904"] * 5,
        "user_session": ["4d3b30da-a5e4-49df-b1a8-ba5943f1dd33"] * 5})
    frame.to_csv(tmp_path / "2019-Oct.csv", index=False)
    ws = _write(tmp_path, [{"name": "rees46", "kind": "events", "path": "2019-*.csv",
                            "columns": {"timestamp": "event_time", "event_type": "event_type",
                                        "product_id": "product_id", "category": "category_code", "value": "price",
                                        "anonymous_id": "user_id", "session_id": "user_session"}}],
                timezone="Europe/Amsterdam")  # the zone of times *without* an offset; these say UTC
    result = ingest(ws)
    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (5, 5, 0)
    assert _rows(ws, "select timestamp, event_type, value from events order by timestamp") == [
        (datetime(2019, 10, 1, 0, 0), "product_view", 489.07), (datetime(2019, 10, 1, 0, 0, 30), "add_to_cart", 489.07),
        (datetime(2019, 10, 1, 0, 1), "remove_from_cart", 489.07), (datetime(2019, 10, 1, 0, 2), "add_to_cart", 293.65),
        (datetime(2019, 10, 1, 0, 3), "purchase", 293.65)]
    _reconciles(ws, "rees46")


def test_utc_and_gmt_suffixes_and_epochs_are_utc_and_other_local_text_is_not():
    con = duckdb.connect()
    con.execute("create table t as select unnest(['2019-10-01 00:00:00 UTC', '2019-10-01 00:00:00 gmt', "
                "'01-10-2019 00:00 UTC', '1569888000000', '1569888000000000', '2019-10-01 00:00:00']) as x")
    got = [r[0] for r in con.execute(f"select {timestamp('x', 'Europe/Amsterdam')} from t").fetchall()]
    assert got == [datetime(2019, 10, 1)] * 5 + [datetime(2019, 9, 30, 22)]  # ms, µs (GA4 export); local time


def test_segment_jsonl_track_calls_and_spellings(tmp_path):
    calls = [("Loaded a Page", "a1", None), ("[Amplitude] Page Viewed", "a1", None), ("Products Searched", "a1", None),
             ("Product Viewed", "a1", None), ("product-viewed", "a1", None), ("productAdded", "a1", None),
             ("Checkout Started", "a1", None), ("Signed In", "a1", "u1"), ("Order Completed", "a1", "u1"),
             ("Coupon Applied", "a1", "u1")]
    lines = [json.dumps({"type": "track", "event": event, "anonymousId": anon, "userId": user, "messageId": f"m{i}",
                         "timestamp": f"2026-01-05T10:{i:02d}:00.000Z", "context": {"page": {"url": "/x"}}})
             for i, (event, anon, user) in enumerate(calls)]
    (tmp_path / "tracks.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ws = _write(tmp_path, [{"name": "segment", "kind": "events", "path": "tracks.jsonl",
                            "columns": {"timestamp": "timestamp", "event_type": "event", "event_id": "messageId",
                                        "anonymous_id": "anonymousId", "customer_ref": "userId"}}])
    result = ingest(ws)
    assert result.rows_loaded == len(calls)
    assert result.files[0].notes == ("1 event name(s) outside the built-in vocabulary kept as named (most frequent: "
                                     "coupon_applied x1); options.event_types maps them to page_view, product_view, "
                                     "search, add_to_cart, checkout_start, login or purchase",)
    assert [r[0] for r in _rows(ws, "select event_type from events order by timestamp")] == [
        "page_view", "page_view", "search", "product_view", "product_view", "add_to_cart", "checkout_start", "login",
        "purchase", "coupon_applied"]  # an unknown name keeps its snake_case spelling
    assert _rows(ws, "select raw_event_type from events where event_type = 'coupon_applied'") == [("Coupon Applied",)]
    _reconciles(ws, "segment")


def test_source_overrides_win_and_changing_them_reloads_the_file(tmp_path):
    _retailrocket(tmp_path)
    source = {"name": "rr", "kind": "events", "path": "events.csv", "columns": RR_COLUMNS}
    ws = _write(tmp_path, [source])
    ingest(ws)
    assert ingest(ws).files[0].status == "unchanged"
    overrides = {"view": "page_view", "addtocart": "checkout_start", "Transaction": "transaction"}
    ws = _write(tmp_path, [{**source, "options": {"event_types": overrides}}])
    assert ingest(ws).files[0].status == "loaded"  # the mapping changed: the unchanged file is read again
    assert _rows(ws, "select raw_event_type, event_type from events order by timestamp, anonymous_id") == [
        ("view", "page_view"), ("addtocart", "checkout_start"), ("transaction", "transaction"), ("view", "page_view")]
    assert ingest(ws).files[0].status == "unchanged"


def test_a_changed_builtin_vocabulary_reloads_event_files_once(tmp_path, monkeypatch):
    _retailrocket(tmp_path)
    ws = _write(tmp_path, [{"name": "rr", "kind": "events", "path": "events.csv", "columns": RR_COLUMNS}])
    ingest(ws)
    monkeypatch.setattr("cdp_ml.sources.load._EVENT_VOCABULARY", "a later release")
    assert [f.status for f in ingest(ws).files] == ["loaded"]  # no mix of old and new spellings
    assert [f.status for f in ingest(ws).files] == ["unchanged"]


@pytest.mark.parametrize("options, expected", [
    ({"event_types": {"addtocart": "add_to_card"}},
     "source 'rr': options.event_types.addtocart: 'add_to_card' is not a canonical event type"),
    ({"event_types": {"addtocart": 5}}, "source 'rr': options.event_types.addtocart: 5 is not a canonical event type"),
    ({"event_types": ["addtocart"]}, "source 'rr': options.event_types: expected a mapping"),
])
def test_invalid_override_is_one_line(tmp_path, capsys, options, expected):
    _retailrocket(tmp_path)
    _write(tmp_path, [{"name": "rr", "kind": "events", "path": "events.csv", "columns": RR_COLUMNS,
                       "options": options}])
    assert main(["--workspace", str(tmp_path), "ingest"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(CdpError, match="options.event_types"):
        ingest(Workspace.open(tmp_path))
    assert not (tmp_path / "data" / "warehouse.duckdb").exists() or \
        _rows(Workspace.open(tmp_path), "select count(*) from events") == [(0,)]


def test_configured_purchase_names_match_what_ingest_stored(tmp_path):
    names = canonical_event_names(duckdb.connect(), ["transaction", "Order Completed"])
    assert "purchase" in names and "transaction" in names
    _retailrocket(tmp_path)  # the pre-vocabulary workaround `purchase_event_types: [transaction]` still labels
    ws = _write(tmp_path, [{"name": "rr", "kind": "events", "path": "events.csv", "columns": RR_COLUMNS}],
                conversion={"purchase_event_types": ["transaction"]})
    ingest(ws)
    with ws.connect() as con:
        sessions.build_sessions(con, datetime(2026, 3, 3), 30, ws.config.conversion.purchase_event_types)
        assert con.execute("select count(*) from conv_purchase_events").fetchall() == [(1,)]


def _retailrocket_log(visitors: int, seed: int = 3) -> pd.DataFrame:
    """Synthetic RetailRocket export: sessions of item views; carting visitors buy far more often (later too)."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-03-02", tz="UTC").value // 1_000_000
    span_ms = 20 * 7 * 24 * 3600 * 1000
    rows: list[tuple[int, str, str, str, str]] = []
    for v in range(visitors):
        visitor = str(100000 + v)
        for t0 in np.sort(rng.integers(start, start + span_ms, rng.integers(1, 5))):
            t = int(t0)
            items = [str(i) for i in rng.integers(1, 400, rng.integers(1, 6))]
            for item in items:
                rows.append((t, visitor, "view", item, ""))
                t += int(rng.integers(20, 300)) * 1000
            carted = rng.random() < 0.3
            if carted:
                rows.append((t, visitor, "addtocart", items[-1], ""))
            if rng.random() < (0.45 if carted else 0.04):
                t += int(rng.integers(3_600, 3 * 86_400)) * 1000  # bought up to three days later
                rows.append((t, visitor, "transaction", items[-1], f"t{len(rows)}"))
    return pd.DataFrame(rows, columns=["timestamp", "visitorid", "event", "itemid", "transactionid"])


def test_retailrocket_shaped_log_trains_conversion_on_cart_adds(tmp_path):
    _retailrocket_log(2500).to_csv(tmp_path / "events.csv", index=False)
    ws = _write(tmp_path, [{"name": "rr", "kind": "events", "path": "events.csv", "columns": RR_COLUMNS}],
                conversion={"training_weeks": 14, "backtest_weeks": 4, "n_estimators": 150, "learning_rate": 0.1})
    assert ws.config.conversion.purchase_event_types == ("purchase",)  # left at the default
    ingest(ws)
    result = conversion.backtest(ws, date(2026, 6, 15))  # no identity step: devices are the visitors
    assert result.eval_positives > 100  # `transaction` rows label as purchases
    assert result.metrics["lightgbm"]["roc_auc"] > 0.75
    top = sorted(result.model.importance().items(), key=lambda kv: -kv[1])
    assert "n_cart_adds" in [name for name, _ in top[:2]], top[:5]  # `addtocart` counts as cart adds
