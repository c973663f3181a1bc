"""Hand-checkable conversion features on a tiny warehouse: category rhythm and recency-weighted engagement
use only what happened before the session started."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest
import yaml

from cdp_ml import Workspace, engine
from cdp_ml.features import conversion as feats

DAY0 = datetime(2026, 3, 2, 10, 0)


@pytest.fixture
def tiny_ws(tmp_path) -> Workspace:
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump({"sources": []}))
    ws = Workspace.open(tmp_path)
    # one device: logs in on day 0, browses candles on day 2 and day 5; orders candles on days -30, -10, 3
    # and once more during the day-5 session (after it started: must not count for it)
    events = [  # (minutes after DAY0, event_type, customer_ref, category)
        (0, "page_view", None, None), (1, "login", "c1", None), (2, "product_view", "c1", "body_cream"),
        (2 * 1440, "page_view", None, None), (2 * 1440 + 1, "product_view", None, "candles"),
        (2 * 1440 + 2, "product_view", None, "candles"),
        (5 * 1440, "page_view", None, None), (5 * 1440 + 1, "product_view", None, "candles"),
    ]
    orders = [(-30 * 1440, "o1"), (-10 * 1440, "o2"), (3 * 1440, "o3"), (5 * 1440 + 1, "o4")]
    with ws.connect() as con:
        con.execute("""create table events (source varchar, ref_source varchar, event_id varchar, "timestamp" timestamp,
                       event_type varchar, anonymous_id varchar, customer_ref varchar, product_id varchar,
                       category varchar, value double)""")
        con.executemany("insert into events values ('web', 'crm', ?, ?, ?, 'dev1', ?, ?, ?, 10.0)",
                        [[f"e{i}", DAY0 + timedelta(minutes=m), t, ref, c and f"sku-{c}", c]
                         for i, (m, t, ref, c) in enumerate(events)])
        con.execute("""create table orders (source varchar, ref_source varchar, order_id varchar, customer_ref varchar,
                       ordered_at timestamp, category varchar, amount double, status varchar)""")
        con.executemany("insert into orders values ('webshop', 'crm', ?, 'c1', ?, 'candles', 20.0, 'completed')",
                        [[o, DAY0 + timedelta(minutes=m)] for m, o in orders])
    return ws


def _points(ws: Workspace, until: datetime):
    with ws.connect() as con:
        spec = feats.build_points(con, ws.config.conversion, ws.config.features, until)
        frame = con.execute(f"select * from {feats.POINTS_TABLE} order by scored_at").df()
    return spec, frame


def test_category_rhythm_and_decayed_engagement_use_only_the_past(tiny_ws):
    spec, points = _points(tiny_ws, DAY0 + timedelta(days=10))
    assert {"category_cycle_ratio", "visitor_decayed_product_views", "device_age_days"} <= set(spec.features)
    first, second, third = (points.iloc[i] for i in range(3))
    assert first["category_orders"] == 0 and math.isnan(first["days_since_category_purchase"])  # body_cream: never
    # day 2, candles: orders on days -30 and -10 -> 12 days since, mean gap 20 days
    assert second["category_orders"] == 2 and second["category_share"] == pytest.approx(1.0)
    assert second["days_since_category_purchase"] == pytest.approx(12.0, abs=1e-3)
    assert second["category_cycle_ratio"] == pytest.approx(12.0 / 20.0, rel=1e-3)
    # day 5: the day-3 order counts, the one placed during the session does not
    assert third["category_orders"] == 3
    assert third["days_since_category_purchase"] == pytest.approx(2.0, abs=1e-3)
    assert third["category_cycle_ratio"] == pytest.approx(2.0 / 16.5, rel=1e-3)
    # recency-weighted engagement of earlier visits (time constant 7 days), measured start to start
    tau = feats.DECAY_DAYS
    assert first["visitor_decayed_sessions"] == 0.0
    assert third["visitor_decayed_sessions"] == pytest.approx(math.exp(-5 / tau) + math.exp(-3 / tau), rel=1e-6)
    assert third["visitor_decayed_product_views"] == pytest.approx(math.exp(-5 / tau) + 2 * math.exp(-3 / tau),
                                                                   rel=1e-6)
    assert third["visitor_days_since_prev_session"] == pytest.approx(3.0, abs=1e-3)
    assert third["device_age_days"] == pytest.approx(5.0, abs=1e-3)
    assert third["prev_bounces"] == 0 and third["known"] == 1


def test_new_features_do_not_change_when_later_data_arrives(tiny_ws):
    spec, before = _points(tiny_ws, DAY0 + timedelta(days=10))
    with tiny_ws.connect() as con:  # a later visit and a later order of the same category
        con.execute("""insert into events values ('web', 'crm', 'late', ?, 'product_view', 'dev1', null, 'sku-candles',
                       'candles', 10.0)""", [DAY0 + timedelta(days=12)])
        con.execute("insert into orders values ('webshop', 'crm', 'o9', 'c1', ?, 'candles', 20.0, 'completed')",
                    [DAY0 + timedelta(days=11)])
    _, after = _points(tiny_ws, DAY0 + timedelta(days=20))
    assert len(after) == len(before) + 1
    merged = before.merge(after, on="session_id", suffixes=("", "_later"))
    assert len(merged) == len(before)
    for col in spec.features:
        assert merged[col].equals(merged[f"{col}_later"]) or \
            ((merged[col] - merged[f"{col}_later"]).abs().max() < 1e-9), col
    assert after.iloc[-1]["category_orders"] == 5  # o4 (during the day-5 visit) and the day-11 order now count


def test_feature_building_caps_duckdb_memory_and_restores_the_settings(tiny_ws):
    with tiny_ws.connect() as con:
        before = con.execute("select current_setting('memory_limit'), current_setting('preserve_insertion_order')"
                             ).fetchall()[0]
        with engine.bounded_memory(con):
            limit = engine._setting_bytes(con.execute("select current_setting('memory_limit')").fetchall()[0][0])
            assert limit <= engine._machine_memory() * engine.DUCKDB_MEMORY_SHARE * 1.01
            feats.build_points(con, tiny_ws.config.conversion, tiny_ws.config.features, DAY0 + timedelta(days=10))
        after = con.execute("select current_setting('memory_limit'), current_setting('preserve_insertion_order')"
                            ).fetchall()[0]
    assert after == before
