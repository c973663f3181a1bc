"""Sessionise raw events into browsing sessions and aggregate each session, all in SQL.

A session is a run of one device's events (``anonymous_id``; events without one use the person) with no
gap longer than ``session_gap_minutes``. A purchase (checkout-complete) event *closes* its session: the
session's scoring point is its last non-purchase event, and the purchase itself is kept only as
``purchased_at`` (label side, never a feature). Every session aggregate therefore uses only events at or
before the scoring point, so a session's features cannot change when later events arrive.

``session_id`` hashes the device and the first event time: stable when later data is added.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import duckdb

from cdp_ml.engine import columns, table_exists
from cdp_ml.errors import CdpError
from cdp_ml.sources.normalise import canonical_event_names

# Event types counted as separate features; any other type still counts in n_events / n_other_events.
COUNTED_TYPES = {
    "page_view": "n_page_views",
    "product_view": "n_product_views",
    "search": "n_searches",
    "add_to_cart": "n_cart_adds",
    "checkout_start": "n_checkout_starts",
    "login": "n_logins",
}


def event_relation(con: duckdb.DuckDBPyConnection) -> str:
    """The events to sessionise: ``person_events`` when identity ran, else staging events.

    Without identity resolution a person is a customer reference of its customers source, and an anonymous
    device belongs to the customer it last logged in as, from that login on.
    """
    if table_exists(con, "person_events"):
        return "person_events"
    if table_exists(con, "events"):
        # a device belongs to the customer it last logged in as, from that login on (point in time)
        return ("(with e as (select *, case when customer_ref is not null then "
                "'ref:' || coalesce(ref_source, source) || ':' || customer_ref end as ref_person from events) "
                "select * exclude (ref_person), coalesce(ref_person, last_value(ref_person ignore nulls) over "
                "(partition by anonymous_id order by \"timestamp\", ref_person nulls first rows unbounded preceding)) "
                "as person_id from e)")
    raise CdpError("no events in the warehouse: run `cdp-ml ingest` (and `cdp-ml resolve`) first")


def order_relation(con: duckdb.DuckDBPyConnection) -> str | None:
    """The orders to use for purchase history and labels (None when the workspace has none)."""
    if table_exists(con, "person_orders"):
        return "person_orders"
    if table_exists(con, "orders"):
        return ("(select *, 'ref:' || coalesce(ref_source, source) || ':' || customer_ref as person_id "
                "from orders)")
    return None


def _optional(con: duckdb.DuckDBPyConnection, relation: str, name: str, sql_type: str = "varchar") -> str:
    """A column of the events relation, or a typed NULL when the source did not map it."""
    if relation.startswith("("):
        present = name in columns(con, "events")
    else:
        present = name in columns(con, relation)
    return f'"{name}"' if present else f"null::{sql_type}"


def build_sessions(con: duckdb.DuckDBPyConnection, until: datetime, gap_minutes: int,
                   purchase_types: Sequence[str], table: str = "conv_sessions") -> int:
    """Create temp table ``table``: one row per session from events strictly before ``until``.

    Also leaves temp table ``conv_purchase_events(device_id, person_id, ts)`` for labelling. Returns the
    number of sessions.
    """
    rel = event_relation(con)
    opt = {name: _optional(con, rel, name, typ) for name, typ in (
        ("anonymous_id", "varchar"), ("customer_ref", "varchar"), ("product_id", "varchar"),
        ("category", "varchar"), ("value", "double"), ("channel", "varchar"), ("url", "varchar"),
        ("referrer", "varchar"), ("attributes", "json"))}
    utm = (f"json_extract_string({opt['attributes']}, '$.utm_source')" if opt["attributes"] != "null::json"
           else "null::varchar")
    con.execute(f"""
        create or replace temp table conv_events as
        with ev as (
            select "timestamp" as ts, lower(event_type) as event_type,
                   {opt['anonymous_id']}::varchar as anonymous_id, {opt['customer_ref']}::varchar as customer_ref,
                   person_id::varchar as person_id, {opt['product_id']}::varchar as product_id,
                   {opt['category']}::varchar as category, {opt['value']}::double as value,
                   {opt['channel']}::varchar as channel, {opt['url']}::varchar as url,
                   {opt['referrer']}::varchar as referrer, {utm}::varchar as utm_source
            from {rel}
            where "timestamp" < ? and "timestamp" is not null and event_type is not null
        ), keyed as (
            select *, coalesce('a:' || anonymous_id, 'p:' || person_id, 'c:' || customer_ref) as device_id,
                   list_contains(?::varchar[], event_type) as is_purchase
            from ev
        ), ordered as (
            select *, row_number() over (partition by device_id
                                         order by ts, is_purchase, event_type, product_id, url, referrer,
                                                  customer_ref, person_id, category, value, channel, utm_source) as seq
            from keyed where device_id is not null
        ), marked as (
            select *,
                   case when lag(ts) over w is null or lag(is_purchase) over w
                             or ts - lag(ts) over w > to_minutes(?::bigint) then 1 else 0 end as new_session,
                   max(case when customer_ref is not null then 1 else 0 end) over w as known
            from ordered window w as (partition by device_id order by seq)
        )
        select *, sum(new_session) over (partition by device_id order by seq rows unbounded preceding) as session_no
        from marked
    """, [until, canonical_event_names(con, purchase_types), int(gap_minutes)])  # as ingest spells them
    counts = ",\n".join(f"count(*) filter (where event_type = '{t}')::integer as {col}"
                        for t, col in COUNTED_TYPES.items())
    known_types = list(COUNTED_TYPES)
    con.execute(f"""
        create or replace temp table {table} as
        with agg as (
            select device_id, session_no,
                   min(anonymous_id) as anonymous_id,
                   max(person_id) as person_id,
                   max(known) filter (where not is_purchase)::integer as known,
                   min(ts) filter (where not is_purchase) as started_at,
                   max(ts) filter (where not is_purchase) as scored_at,
                   min(ts) filter (where is_purchase) as purchased_at,
                   count(*) filter (where not is_purchase)::integer as n_events,
                   {counts},
                   count(*) filter (where not is_purchase
                                    and not list_contains(?::varchar[], event_type))::integer as n_other_events,
                   count(distinct product_id) filter (where not is_purchase)::integer as n_products,
                   count(distinct category) filter (where not is_purchase)::integer as n_categories,
                   coalesce(sum(value) filter (where event_type = 'add_to_cart'), 0) as cart_value,
                   avg(value) filter (where event_type = 'product_view') as mean_viewed_value,
                   arg_min(channel, seq) filter (where not is_purchase and channel is not null) as channel,
                   arg_min(url, seq) filter (where not is_purchase) as entry_url,
                   arg_min(referrer, seq) filter (where not is_purchase) as entry_referrer,
                   arg_min(utm_source, seq) filter (where not is_purchase) as entry_utm,
                   arg_min(category, seq) filter (where not is_purchase and category is not null) as first_category,
                   arg_max(category, seq) filter (where not is_purchase and category is not null) as last_category,
                   arg_max(event_type, seq) filter (where not is_purchase) as exit_event_type
            from conv_events
            group by device_id, session_no
            having count(*) filter (where not is_purchase) > 0
        )
        select md5(device_id || '|' || strftime(started_at, '%Y-%m-%dT%H:%M:%S.%f')) as session_id,
               * exclude (entry_url, entry_referrer, entry_utm),
               (epoch(scored_at) - epoch(started_at))::double as duration_s,
               case when n_events > 1 then (epoch(scored_at) - epoch(started_at)) / (n_events - 1) end as mean_gap_s,
               (n_events = 1)::integer as bounce,
               hour(started_at)::integer as hour,
               isodow(started_at)::integer as weekday,
               coalesce(
                   nullif(entry_utm, ''),
                   nullif(regexp_extract(entry_url, '[?&]utm_source=([^&#]+)', 1), ''),
                   nullif(regexp_replace(regexp_extract(lower(entry_referrer), '^[a-z]+://([^/:?#]+)', 1),
                                         '^(www|l|m)\\.', ''), ''),
                   'direct') as traffic_source
        from agg
    """, [known_types])
    con.execute("""
        create or replace temp table conv_purchase_events as
        select device_id, person_id, ts from conv_events where is_purchase
    """)
    con.execute("drop table conv_events")
    return con.execute(f"select count(*) from {table}").fetchall()[0][0]
