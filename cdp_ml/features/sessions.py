"""Sessionise raw events into browsing sessions and aggregate each session, all in SQL.

A session is a run of one device's events (``anonymous_id``; events without one use the person) with no
gap longer than ``session_gap_minutes``. A purchase (checkout-complete) event *closes* its session: the
session's scoring point is its last non-purchase event, and the purchase itself is kept only as
``purchased_at`` (label side, never a feature). Every session aggregate therefore uses only events at or
before the scoring point, so a session's features cannot change when later events arrive.

``session_id`` hashes the device and the first event time: stable when later data is added.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import duckdb

from cdp_ml.engine import columns, sliced_build, table_exists
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


# Events per sessionising slice: devices are hash-partitioned so that each slice's sort and aggregation fit
# in memory (a single pass over 35M events spilled ~10 GB to disk and ran for minutes on 2 cores).
EVENTS_PER_SLICE = 4_000_000


_PURCHASE_NAMES: dict[tuple[str, ...], list[str]] = {}


def _purchase_names(con: duckdb.DuckDBPyConnection, purchase_types: Sequence[str]) -> list[str]:
    """The purchase event types as ingest spells them (a pure function of the setting, so computed once)."""
    key = tuple(purchase_types)
    if key not in _PURCHASE_NAMES:
        _PURCHASE_NAMES[key] = canonical_event_names(con, purchase_types)
    return list(_PURCHASE_NAMES[key])


def _projection(con: duckdb.DuckDBPyConnection) -> tuple[str, dict[str, str], str]:
    """The events relation, its typed optional columns and the ``utm_source`` expression (shared by the full
    and the history-only sessionising, so both hash and order events identically)."""
    rel = event_relation(con)
    opt = {name: _optional(con, rel, name, typ) for name, typ in (
        ("anonymous_id", "varchar"), ("customer_ref", "varchar"), ("product_id", "varchar"),
        ("category", "varchar"), ("value", "double"), ("channel", "varchar"), ("url", "varchar"),
        ("referrer", "varchar"), ("attributes", "json"))}
    utm = (f"json_extract_string({opt['attributes']}, '$.utm_source')" if opt["attributes"] != "null::json"
           else "null::varchar")
    return rel, opt, utm


# a session's id: its device and start (stable when later data is added)
SESSION_ID = "md5(device_id || '|' || strftime(started_at, '%Y-%m-%dT%H:%M:%S.%f'))"
# the order of a device's events with equal timestamps: deterministic and independent of later data
TIEBREAK = "hash(event_type, product_id, url, referrer, customer_ref, person_id, category, value, channel, utm_source)"


# A session's person, known flag and time span over its events (a purchase closes a session, so only its
# first instant counts as the purchase time); shared by the full and the history-only session builds.
SESSION_SPAN = """max(person_id) as person_id,
    max(known) filter (where not is_purchase)::integer as known,
    min(ts) filter (where not is_purchase) as started_at,
    max(ts) filter (where not is_purchase) as scored_at,
    min(ts) filter (where is_purchase) as purchased_at"""


def _event_columns(opt: dict[str, str], utm: str) -> str:
    """The select list of the events projection (optional columns as NULL when the source lacks them)."""
    return (f"""\"timestamp\" as ts, lower(event_type) as event_type,
                   {opt['anonymous_id']}::varchar as anonymous_id, {opt['customer_ref']}::varchar as customer_ref,
                   person_id::varchar as person_id, {opt['product_id']}::varchar as product_id,
                   {opt['category']}::varchar as category, {opt['value']}::double as value,
                   {opt['channel']}::varchar as channel, {opt['url']}::varchar as url,
                   {opt['referrer']}::varchar as referrer, {utm}::varchar as utm_source""")


# A device: the anonymous id, else the person, else the customer reference (events without one are not sessions).
DEVICE_ID = "coalesce('a:' || anonymous_id, 'p:' || person_id, 'c:' || customer_ref)"
# What the traffic source needs of the entry URL and referrer: the URL's utm_source ('' when it has none) and the
# referrer's host, computed before any sort so that none carries whole URLs.
_SOURCE_PARTS = """utm_source,
               case when url is null then null when contains(url, 'utm_source=')
                    then regexp_extract(url, '[?&]utm_source=([^&#]+)', 1) else '' end as url_utm,
               regexp_replace(regexp_extract(lower(referrer), '^[a-z]+://([^/:?#]+)', 1), '^(www|l|m)\\.', '')
                   as referrer_host"""
# A session's aggregates over its events in ``seq`` order (purchase events excluded; parameter ``types`` = the
# counted types): shared by the full build and the span build, so both compute every column alike.
_SESSION_AGGREGATES = "count(*) filter (where not is_purchase)::integer as n_events,\n" + ",\n".join(
    f"count(*) filter (where event_type = '{t}')::integer as {col}" for t, col in COUNTED_TYPES.items()) + """,
    count(*) filter (where not is_purchase and not list_contains($types::varchar[], event_type))::integer
        as n_other_events,
    list_unique(list(product_id) filter (where not is_purchase))::integer as n_products,
    list_unique(list(category) filter (where not is_purchase))::integer as n_categories,
    coalesce(sum(value) filter (where event_type = 'add_to_cart'), 0) as cart_value,
    avg(value) filter (where event_type = 'product_view') as mean_viewed_value,
    arg_min(channel, seq) filter (where not is_purchase and channel is not null) as channel,
    arg_min(url_utm, seq) filter (where not is_purchase) as entry_url_utm,
    arg_min(referrer_host, seq) filter (where not is_purchase) as entry_referrer_host,
    arg_min(utm_source, seq) filter (where not is_purchase) as entry_utm,
    arg_min(category, seq) filter (where not is_purchase and category is not null) as first_category,
    arg_max(category, seq) filter (where not is_purchase and category is not null) as last_category,
    arg_max(event_type, seq) filter (where not is_purchase) as exit_event_type"""
# The session row's columns from ``agg`` (keys, SESSION_SPAN, _SESSION_AGGREGATES).
_SESSION_COLUMNS = f"""{SESSION_ID} as session_id,
    device_id, session_no,
    case when device_id like 'a:%' then substr(device_id, 3) end as anonymous_id,
    * exclude (device_id, session_no, entry_url_utm, entry_referrer_host, entry_utm),
    (epoch(scored_at) - epoch(started_at))::double as duration_s,
    case when n_events > 1 then (epoch(scored_at) - epoch(started_at)) / (n_events - 1) end as mean_gap_s,
    (n_events = 1)::integer as bounce,
    hour(started_at)::integer as hour,
    isodow(started_at)::integer as weekday,
    coalesce(nullif(entry_utm, ''), nullif(entry_url_utm, ''), nullif(entry_referrer_host, ''), 'direct')
        as traffic_source"""


def _slices(con: duckdb.DuckDBPyConnection, until: datetime, since: datetime | None = None,
            events_per_slice: int = EVENTS_PER_SLICE) -> int:
    """Device-hash slices for the staging events in ``[since, until)`` (the person view has the same rows)."""
    if not table_exists(con, "events"):
        return 1
    n_events = con.execute('select count(*) from events where "timestamp" < ? and "timestamp" >= ?',
                           [until, since or datetime.min]).fetchall()[0][0]
    return max(1, -(-n_events // events_per_slice))


def build_sessions(con: duckdb.DuckDBPyConnection, until: datetime, gap_minutes: int,
                   purchase_types: Sequence[str], table: str = "conv_sessions") -> tuple[int, int]:
    """Create temp table ``table``: one row per session from events strictly before ``until``.

    Also leaves temp table ``conv_purchase_events(device_id, person_id, ts)`` for labelling. Returns the
    number of sessions and of device slices (column ``slice`` = ``hash(device_id) % slices``). Events are first
    projected to the narrow columns the aggregates need (the entry URL and referrer are reduced to their
    traffic-source parts here, so the sorts never carry them), then sessionised in device-hash slices of about
    ``EVENTS_PER_SLICE`` events: a session never spans devices, so slices are independent and the result does
    not depend on their number.
    """
    rel, opt, utm = _projection(con)
    # a slice number stored per event lets each slice's scan filter on one small column instead of reading every event
    slices = _slices(con, until)
    con.execute(f"""
        create or replace temp table conv_events as
        with ev as (
            select {_event_columns(opt, utm)}
            from {rel}
            where "timestamp" < ? and "timestamp" is not null and event_type is not null
        ), keyed as (
            select *, {DEVICE_ID} as device_id
            from ev
        )
        select keyed.device_id, ts, event_type, person_id, product_id, category, value, channel,
               list_contains(?::varchar[], event_type) as is_purchase,
               customer_ref is not null as logged_in,
               {_SOURCE_PARTS},
               {TIEBREAK} as tiebreak,
               hash(keyed.device_id) as device_hash,
               (hash(keyed.device_id) % {slices})::integer as slice
        from keyed where keyed.device_id is not null
    """, [until, _purchase_names(con, purchase_types)])  # as ingest spells them
    for part, head in sliced_build(con, table, slices):
        con.execute(f"""
            {head}
            with keys as (
                -- the two window sorts carry only the keys; the event's other columns join back by row id
                select rowid as event_row, device_hash, device_id, ts, is_purchase, tiebreak, logged_in
                from conv_events where slice = $part
            ), marked as (
                select event_row, device_hash, device_id,
                       row_number() over w as seq,
                       case when lag(ts) over w is null or lag(is_purchase) over w
                                 or ts - lag(ts) over w > to_minutes($gap::bigint) then 1 else 0 end as new_session,
                       max(logged_in::integer) over w as known
                -- partitioned on the device's hash first: integer keys sort far faster than long ids
                from keys window w as (partition by device_hash, device_id order by ts, is_purchase, tiebreak)
            ), session_keys as (
                select event_row, seq, known,
                       sum(new_session) over (partition by device_hash, device_id order by seq rows unbounded preceding)
                           as session_no
                from marked
            ), numbered as (
                select e.* exclude (slice), k.seq, k.known, k.session_no
                from conv_events e join session_keys k on e.rowid = k.event_row
                where e.slice = $part
            ), agg as (
                select device_id, session_no,
                       {SESSION_SPAN},
                       {_SESSION_AGGREGATES}
                from numbered
                group by device_id, session_no
                having count(*) filter (where not is_purchase) > 0
            )
            select {_SESSION_COLUMNS},
                   $part::integer as slice
            from agg
        """, {"part": part, "gap": int(gap_minutes), "types": list(COUNTED_TYPES)})
    con.execute("""
        create or replace temp table conv_purchase_events as
        select device_id, person_id, ts from conv_events where is_purchase
    """)
    con.execute("drop table conv_events")
    return con.execute(f"select count(*) from {table}").fetchall()[0][0], slices


# Sessions per slice of a span build (about two events each on web data): each slice's aggregation fits in memory.
SPAN_SESSIONS_PER_SLICE = 2_000_000


def build_span_sessions(con: duckdb.DuckDBPyConnection, until: datetime, spans: str, purchase_types: Sequence[str],
                        table: str) -> None:
    """Create temp table ``table``: the rows :func:`build_sessions` gives the sessions of temp table ``spans``
    (``device_id, session_no, session_id, person_id, known, started_at, scored_at, purchased_at`` of stored-history
    sessions before ``until``), aggregated from their own events only.

    A session's non-purchase events are exactly its device's non-purchase events in ``[started_at, scored_at]``:
    a gap or a purchase separates sessions, and equal-time events sort non-purchase first, so no other session
    of the device has one in that span. So a few sessions cost a join on their spans instead of sessionising
    every event; within a session, events are ordered by time and tiebreak as the full build orders them.
    """
    rel, opt, utm = _projection(con)
    n, since = con.execute(f"select count(*), min(started_at) from {spans}").fetchall()[0]
    slices = max(1, -(-n // SPAN_SESSIONS_PER_SLICE))
    con.execute(f"""
        create or replace temp table conv_span_events as
        with ev as (
            select {_event_columns(opt, utm)}
            from {rel}
            where "timestamp" < $until and "timestamp" >= $since and event_type is not null
              and not list_contains($purchase::varchar[], lower(event_type))
        ), keyed as (
            select *, {DEVICE_ID} as device_id from ev
        )
        select keyed.device_id, s.session_no, ts, event_type, product_id, category, value, channel,
               false as is_purchase, {_SOURCE_PARTS}, {TIEBREAK} as tiebreak,
               (hash(keyed.device_id) % {slices})::integer as slice
        from keyed join (select device_id as span_device, session_no, started_at as span_start,
                                scored_at as span_end from {spans}) s
          on s.span_device = keyed.device_id and keyed.ts >= s.span_start and keyed.ts <= s.span_end
    """, {"until": until, "since": since or datetime.min, "purchase": _purchase_names(con, purchase_types)})
    for part, head in sliced_build(con, table, slices):
        con.execute(f"""
            {head}
            with numbered as (
                select *, row_number() over (partition by device_id, session_no order by ts, tiebreak) as seq
                from conv_span_events where slice = $part
            ), agg as (
                select device_id, session_no, s.person_id, s.known, s.started_at, s.scored_at, s.purchased_at,
                       {_SESSION_AGGREGATES}
                from numbered join (from {spans} where (hash(device_id) % {slices})::integer = $part) s
                  using (device_id, session_no)
                group by device_id, session_no, s.person_id, s.known, s.started_at, s.scored_at, s.purchased_at
            )
            select {_SESSION_COLUMNS},
                   $part::integer as slice
            from agg
        """, {"part": part, "types": list(COUNTED_TYPES)})
    con.execute("drop table conv_span_events")


# Narrow events are about a quarter of the wide rows' width: larger slices still sort in memory.
HISTORY_EVENTS_PER_SLICE = 3 * EVENTS_PER_SLICE

# The persisted session history (warehouse tables): every device's sessions from the events before a watermark,
# and the fingerprint of the events it was built from. Derived data: rebuilt whenever that fingerprint changes.
HISTORY_TABLE = "conversion_session_history"
HISTORY_STATE = "_conversion_session_history_state"
HISTORY_IDENTITIES = "_conversion_session_history_identities"
# devices whose events before the watermark retention deleted since the history was last brought up to date
# (with the history's own identifying columns, so an erasure finds a person's rows here as in the history)
HISTORY_EXPIRED = "_conversion_session_history_expired"
APART_TABLE = "conv_history_apart"  # a history before the stored watermark: built for one run, never stored
# what a stored history's rows mean: bump when the columns or their rules change, so an old table is rebuilt
HISTORY_FORMAT = "2"
_FUNNEL = {"product_view": 1, "add_to_cart": 2, "checkout_start": 3}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HistoryUpdate:
    """How ``session_history`` brought the stored history to ``until``."""

    mode: Literal["current", "extended", "rebuilt", "apart"]
    reason: str  # why a rebuild (or '')
    new_events: int  # events since the watermark (all of them when rebuilt)
    sessions: int  # sessions (re)written
    reidentified: int  # devices sessionised again whole because identity gave their events another person
    slices: int


def _history_events(con: duckdb.DuckDBPyConnection, until: datetime, purchase_types: Sequence[str], slices: int,
                    since: datetime | None = None, reopened: str | None = None,
                    watermark: datetime | None = None) -> None:
    """Temp tables of the narrow events sessions are found from: ``conv_history_events`` (non-purchase events)
    and ``conv_history_tiebreak`` (purchase events with the order of equal-time events), ``since <= ts < until``.

    ``reopened`` (with ``watermark``): a temp table ``(device_id, since)``; events before the watermark are kept
    only for its devices from their ``since`` on."""
    rel, opt, utm = _projection(con)
    counted = " ".join(f"when '{t}' then {code}" for t, code in _FUNNEL.items())
    params = {"until": until, "since": since or datetime.min, "purchase": _purchase_names(con, purchase_types)}
    reopen_join = reopen_keep = ""
    if reopened:
        reopen_join = f"left join {reopened} o on o.device_id = keyed.device_id"
        reopen_keep = "and (keyed.ts >= $watermark or keyed.ts >= o.since)"
        params["watermark"] = watermark
    con.execute(f"""
        create or replace temp table conv_history_events as
        with ev as (
            select "timestamp" as ts, lower(event_type) as event_type,
                   {opt['anonymous_id']}::varchar as anonymous_id, {opt['customer_ref']}::varchar as customer_ref,
                   person_id::varchar as person_id
            from {rel}
            where "timestamp" < $until and "timestamp" >= $since and "timestamp" is not null and event_type is not null
        ), keyed as (
            select *, {DEVICE_ID} as device_id,
                   list_contains($purchase::varchar[], event_type) as is_purchase
            from ev
        )
        select keyed.device_id, ts, person_id, customer_ref is not null as logged_in,
               (case event_type {counted} else 0 end)::utinyint as funnel,
               hash(keyed.device_id) as device_hash, (hash(keyed.device_id) % {slices})::integer as slice
        from keyed {reopen_join} where keyed.device_id is not null and not is_purchase {reopen_keep}
    """, params)
    # the tiebreak of purchase events, from the full projection's columns (a few rows: joined back by row id)
    con.execute(f"""
        create or replace temp table conv_history_tiebreak as
        with ev as (
            select {_event_columns(opt, utm)}
            from {rel}
            where "timestamp" < $until and "timestamp" >= $since and "timestamp" is not null
              and list_contains($purchase::varchar[], lower(event_type))
        ), keyed as (
            select *, {DEVICE_ID} as device_id from ev
        )
        select keyed.device_id, ts, {TIEBREAK} as tiebreak, person_id, customer_ref is not null as logged_in,
               (case event_type {counted} else 0 end)::utinyint as funnel
        from keyed {reopen_join} where keyed.device_id is not null {reopen_keep}
    """, params)


def _sessionise_history(con: duckdb.DuckDBPyConnection, table: str, gap_minutes: int, slices: int,
                        base: str | None = None) -> None:
    """Temp table ``table``: the sessions of ``conv_history_events`` / ``conv_history_tiebreak`` with what
    histories need, one row per session - also the purchase-only ones (no scoring point: ``started_at`` is NULL),
    so that ``session_no`` and ``known_through`` (the device's logged-in flag after the session's last event)
    carry the whole count.

    ``base``: a temp table ``(device_id, session_base, known_base)`` for devices whose events start at one of
    their sessions: their sessions number on from ``session_base`` and their logged-in flag starts at ``known_base``.
    """
    base_join = f"left join {base} b on b.device_id = k.device_id" if base else ""
    session_base = "coalesce(b.session_base, 0)" if base else "0"
    known_base = "coalesce(b.known_base, 0)" if base else "0"
    for part, head in sliced_build(con, table, slices):
        con.execute(f"""
            {head}
            with keys as (
                select device_hash, device_id, ts, false as is_purchase, person_id, logged_in, funnel,
                       null::ubigint as tiebreak
                from conv_history_events where slice = $part
                union all
                select hash(device_id), device_id, ts, true, person_id, logged_in, funnel, tiebreak
                from conv_history_tiebreak where (hash(device_id) % {slices})::integer = $part
            ), based as (
                select k.*, {session_base} as session_base, {known_base} as known_base
                from keys k {base_join}
            ), marked as (
                select *, row_number() over w as seq,
                       case when lag(ts) over w is null or lag(is_purchase) over w
                                 or ts - lag(ts) over w > to_minutes($gap::bigint) then 1 else 0 end as new_session,
                       greatest(known_base, max(logged_in::integer) over w) as known
                from based window w as (partition by device_hash, device_id order by ts, is_purchase, tiebreak)
            ), numbered as (
                select *, session_base + sum(new_session) over (partition by device_hash, device_id order by seq
                                                                rows unbounded preceding) as session_no
                from marked
            )
            select device_id, session_no,
                   case when device_id like 'a:%' then substr(device_id, 3) end as anonymous_id,
                   {SESSION_SPAN},
                   -- the session id orders a visitor's equal-time sessions: hashed once here, not per score
                   {SESSION_ID.replace("started_at", "min(ts) filter (where not is_purchase)")} as session_id,
                   count(*) filter (where funnel = 1)::integer as n_product_views,
                   count(*) filter (where funnel = 2)::integer as n_cart_adds,
                   count(*) filter (where funnel = 3)::integer as n_checkout_starts,
                   (count(*) filter (where not is_purchase) = 1)::integer as bounce,
                   max(known)::integer as known_through
            from numbered
            group by device_id, session_no
        """, {"part": part, "gap": int(gap_minutes)})


def _events_digest(con: duckdb.DuckDBPyConnection, purchase_types: Sequence[str], since: datetime | None,
                   until: datetime, where: str = "true", params: Sequence[object] = ()) -> tuple[int, int]:
    """(rows, sum of row hashes) of what the history reads of the staging events in ``[since, until)``: time,
    type, source, device columns, and the columns ordering equal-time purchases. Persons come from identity and
    are checked apart (:func:`_changed_identifiers`). Sums add up, so the stored fingerprint is extended by the
    new week's without reading the old events again (and reduced by the rows retention deletes: ``where``,
    with positional ``params``)."""
    if not table_exists(con, "events"):
        return 0, 0
    have = set(columns(con, "events"))
    keys = [f'"{c}"' for c in ("timestamp", "event_type", "source", "ref_source", "anonymous_id", "customer_ref")
            if c in have]
    tiebreak = [f'"{c}"' for c in ("product_id", "category", "value", "channel", "url", "referrer", "attributes")
                if c in have]
    # positional parameters (``where`` brings its own): the purchase names bind first, when the hash uses them
    purchase = (f"case when list_contains(?::varchar[], lower(event_type)) then hash({', '.join(tiebreak)}) end"
                if tiebreak else "null")
    names = [_purchase_names(con, purchase_types)] if tiebreak else []
    n, total = con.execute(f"""
        select count(*), coalesce(sum(hash({', '.join(keys)}, {purchase})::hugeint), 0)::varchar
        from events
        where "timestamp" < ? and "timestamp" >= ? and "timestamp" is not null and event_type is not null
          and ({where})
    """, [*names, until, since or datetime.min, *params]).fetchall()[0]
    return int(n), int(total)


def expire_events(con: duckdb.DuckDBPyConnection, where: str, params: Sequence[object],
                  purchase_types: Sequence[str]) -> int:
    """Call before deleting the staging events matching ``where`` (retention): takes them out of the stored
    history's fingerprint and marks their devices, so the next update sessionises those devices again from the
    events left - what a rebuild gives them - instead of rebuilding every device's history each week. Returns
    the number of devices marked (0 when no history is stored or no deleted event is before its watermark)."""
    state = _stored_state(con)
    if state is None or not table_exists(con, "events"):
        return 0
    watermark, n, total, _ = state
    gone = _events_digest(con, purchase_types, None, watermark, where, params)
    if gone[0] == 0:
        return 0
    rel, opt, _ = _projection(con)
    con.execute(f"create table if not exists {HISTORY_EXPIRED} (device_id varchar, anonymous_id varchar, "
                f"person_id varchar)")
    con.execute(f"""
        insert into {HISTORY_EXPIRED}
        select distinct device_id, anonymous_id, person_id from (
            select {DEVICE_ID} as device_id, anonymous_id, person_id from (
                select {opt['anonymous_id']}::varchar as anonymous_id, person_id::varchar as person_id,
                       {opt['customer_ref']}::varchar as customer_ref
                from {rel}
                where "timestamp" < ? and "timestamp" is not null and event_type is not null and ({where})
            )
        ) where device_id is not null
    """, [watermark, *params])
    con.execute(f"update {HISTORY_STATE} set events = ?, digest = ?", [n - gone[0], str(total - gone[1])])
    return con.execute(f"select count(distinct device_id) from {HISTORY_EXPIRED}").fetchall()[0][0]


# the identifiers whose person the events relation looks up (identity's person_events view)
_EVENT_IDENTIFIERS = ("customer_ref", "anonymous_id")


def _identities_sql(con: duckdb.DuckDBPyConnection) -> str | None:
    """The person of each event identifier when events get their person from identity (else None: without
    identity a device's person follows from the events themselves, which the events fingerprint covers)."""
    if event_relation(con) != "person_events" or not table_exists(con, "person_map"):
        return None
    kinds = ", ".join(f"'{k}'" for k in _EVENT_IDENTIFIERS)
    return (f"select source::varchar as source, id_type::varchar as id_type, record_id::varchar as record_id, "
            f"person_id::varchar as person_id from person_map where id_type in ({kinds})")


def _changed_identifiers(con: duckdb.DuckDBPyConnection, watermark: datetime) -> int:
    """Temp table ``conv_history_affected(device_id)``: the devices whose stored sessions identity changed since
    they were built - an event identifier (customer reference, device id) of theirs before the watermark now
    names another person or none (a device that logged in for the first time, persons merged, an erasure) -
    with, for events without a device id, both the old and the new person's device. Returns their number."""
    current = _identities_sql(con)
    con.execute("create or replace temp table conv_history_affected (device_id varchar)")
    if current is None or not table_exists(con, HISTORY_IDENTITIES) or not table_exists(con, "events"):
        return 0
    con.execute(f"""
        create or replace temp table conv_history_changed as
        select coalesce(c.source, s.source) as source, coalesce(c.id_type, s.id_type) as id_type,
               coalesce(c.record_id, s.record_id) as record_id, s.person_id as old_person, c.person_id as new_person
        from ({current}) c full join {HISTORY_IDENTITIES} s
          on c.source = s.source and c.id_type = s.id_type and c.record_id = s.record_id
        where c.person_id is distinct from s.person_id
    """)
    have = set(columns(con, "events"))
    anon = "anonymous_id::varchar" if "anonymous_id" in have else "null::varchar"
    ref = "customer_ref::varchar" if "customer_ref" in have else "null::varchar"
    con.execute(f"""
        insert into conv_history_affected
        with ev as (
            select source::varchar as source, {anon} as anonymous_id, {ref} as customer_ref from events
            where "timestamp" < $watermark and "timestamp" is not null and event_type is not null
        ), hit as (
            select e.anonymous_id, e.customer_ref, x.old_person, x.new_person
            from ev e join conv_history_changed x
              on x.id_type = 'customer_ref' and x.source = e.source and x.record_id = e.customer_ref
            union all
            select e.anonymous_id, e.customer_ref, null, null
            from ev e join conv_history_changed x
              on x.id_type = 'anonymous_id' and x.source = e.source and x.record_id = e.anonymous_id
        )
        select distinct device_id from (
            select 'a:' || anonymous_id as device_id from hit where anonymous_id is not null
            union all select coalesce('p:' || old_person, 'c:' || customer_ref) from hit where anonymous_id is null
            union all select coalesce('p:' || new_person, 'c:' || customer_ref) from hit where anonymous_id is null
        ) where device_id is not null
    """, {"watermark": watermark})
    con.execute("drop table conv_history_changed")
    return con.execute("select count(*) from conv_history_affected").fetchall()[0][0]


def _history_settings(con: duckdb.DuckDBPyConnection, gap_minutes: int, purchase_types: Sequence[str]) -> str:
    """What else decides the stored rows: the rules' version, the gap, the purchase types and the events relation."""
    return json.dumps([HISTORY_FORMAT, int(gap_minutes), _purchase_names(con, purchase_types), event_relation(con)])


def _stored_state(con: duckdb.DuckDBPyConnection) -> tuple[datetime, int, int, str] | None:
    if not (table_exists(con, HISTORY_STATE) and table_exists(con, HISTORY_TABLE)):
        return None
    if _identities_sql(con) is not None and not table_exists(con, HISTORY_IDENTITIES):
        return None  # persons come from identity, but which ones the rows were built with is not known
    rows = con.execute(f"select watermark, events, digest, settings from {HISTORY_STATE}").fetchall()
    return (rows[0][0], int(rows[0][1]), int(rows[0][2]), rows[0][3]) if len(rows) == 1 else None


def _save_state(con: duckdb.DuckDBPyConnection, watermark: datetime, digest: tuple[int, int], settings: str) -> None:
    """The state row and the event identifiers' persons the stored rows were built with (inside the caller's
    transaction, so they always describe the stored rows)."""
    con.execute(f"create or replace table {HISTORY_STATE} (watermark timestamp, events bigint, digest varchar, "
                f"settings varchar)")
    con.execute(f"insert into {HISTORY_STATE} values (?, ?, ?, ?)", [watermark, digest[0], str(digest[1]), settings])
    identities = _identities_sql(con)
    if identities is None:
        con.execute(f"drop table if exists {HISTORY_IDENTITIES}")
    else:
        con.execute(f"create or replace table {HISTORY_IDENTITIES} as {identities}")


def session_history(con: duckdb.DuckDBPyConnection, until: datetime, gap_minutes: int,
                    purchase_types: Sequence[str], since: datetime) -> HistoryUpdate:
    """Bring the stored session history to ``until`` and expose it as temp view ``conv_history_sessions`` (every
    session before ``until`` with what histories need; column ``slice`` = ``hash(device_id) % slices``), with temp
    table ``conv_purchase_events`` (purchase events from ``since`` on: the labels of points scored since then).

    The rows are those :func:`build_sessions` gives (same boundaries, ``session_no``, ``known``, ``person_id``,
    funnel counts, ``purchased_at``), found from a narrow projection of the events: the order of equal-time
    events only decides which of several same-time purchases closes a session (non-purchase events sort before
    purchases at equal times and never split), so only the purchase events carry the tiebreak.

    The history is stored in the warehouse with the watermark it was built to, a fingerprint of the staging
    events before it and the person of every event identifier. When the fingerprint still holds (no event
    before the watermark was added, changed or erased) and ``until`` is not earlier, only the events since the
    watermark are sessionised: each device with new events continues from its last stored session -
    re-sessionised with its events when it may still be open (ended within the gap before the watermark
    without a purchase), else numbered on from it - and the devices whose identifiers identity has since given
    another person are sessionised again whole. An ``until`` before the watermark (a backtest) gets a history
    of its own, built for this connection and never stored. Anything else rebuilds the whole history.
    """
    slices = _slices(con, until, events_per_slice=HISTORY_EVENTS_PER_SLICE)
    settings = _history_settings(con, gap_minutes, purchase_types)
    state = _stored_state(con)
    source = HISTORY_TABLE
    if state is not None and until < state[0]:
        # a backtest (or a late re-score) of an earlier week: its own history, the stored one stays for next week
        update = _history_apart(con, until, gap_minutes, purchase_types, slices,
                                f"as of {until} is before the stored watermark {state[0]}")
        source = APART_TABLE
    else:
        reason = "no stored history" if state is None else "other settings or code" if state[3] != settings else ""
        if not reason:
            assert state is not None
            if _events_digest(con, purchase_types, None, state[0]) != (state[1], state[2]):
                reason = "events before the watermark changed (re-ingested, erased or expired)"
        if reason:
            update = _rebuild_history(con, until, gap_minutes, purchase_types, slices, settings, reason)
        else:
            assert state is not None
            update = _extend_history(con, state[0], until, gap_minutes, purchase_types, slices, settings,
                                     (state[1], state[2]))
    log.info("session history %s%s: %d new events, %d devices re-identified, %d sessions written", update.mode,
             f" ({update.reason})" if update.reason else "", update.new_events, update.reidentified, update.sessions)
    con.execute(f"""
        create or replace temp view conv_history_sessions as
        select * exclude (anonymous_id, known_through), (hash(device_id) % {slices})::integer as slice
        from {source} where started_at is not null
    """)
    _recent_purchases(con, until, since, purchase_types)
    return update


def _history_apart(con: duckdb.DuckDBPyConnection, until: datetime, gap_minutes: int,
                    purchase_types: Sequence[str], slices: int, reason: str) -> HistoryUpdate:
    """Temp table ``APART_TABLE``: the whole history before ``until``, built as a rebuild would, not stored."""
    _history_events(con, until, purchase_types, slices)
    events = con.execute("select (select count(*) from conv_history_events) + "
                         "(select count(*) from conv_history_tiebreak)").fetchall()[0][0]
    _sessionise_history(con, APART_TABLE, gap_minutes, slices)
    con.execute("drop table conv_history_events")
    con.execute("drop table conv_history_tiebreak")
    sessions = con.execute(f"select count(*) from {APART_TABLE}").fetchall()[0][0]
    return HistoryUpdate("apart", reason, events, sessions, 0, slices)


def _rebuild_history(con: duckdb.DuckDBPyConnection, until: datetime, gap_minutes: int,
                     purchase_types: Sequence[str], slices: int, settings: str, reason: str) -> HistoryUpdate:
    digest = _events_digest(con, purchase_types, None, until)
    _history_events(con, until, purchase_types, slices)
    _sessionise_history(con, "conv_history_new", gap_minutes, slices)
    con.execute("drop table conv_history_events")
    con.execute("drop table conv_history_tiebreak")
    con.execute("begin transaction")
    con.execute(f"create or replace table {HISTORY_TABLE} as from conv_history_new")
    con.execute(f"drop table if exists {HISTORY_EXPIRED}")  # the rebuild read only the events left
    _save_state(con, until, digest, settings)
    con.execute("commit")
    sessions = con.execute("select count(*) from conv_history_new").fetchall()[0][0]
    con.execute("drop table conv_history_new")
    return HistoryUpdate("rebuilt", reason, digest[0], sessions, 0, slices)


def _extend_history(con: duckdb.DuckDBPyConnection, watermark: datetime, until: datetime, gap_minutes: int,
                    purchase_types: Sequence[str], slices: int, settings: str,
                    digest: tuple[int, int]) -> HistoryUpdate:
    affected = _changed_identifiers(con, watermark)
    if table_exists(con, HISTORY_EXPIRED):  # devices that lost old events to retention: sessionised again whole
        con.execute(f"""insert into conv_history_affected select distinct device_id from {HISTORY_EXPIRED}
                        except select device_id from conv_history_affected""")
        affected = con.execute("select count(*) from conv_history_affected").fetchall()[0][0]
    if until == watermark and not affected:
        con.execute("drop table conv_history_affected")
        return HistoryUpdate("current", "", 0, 0, 0, slices)
    new = _events_digest(con, purchase_types, watermark, until)
    _history_events(con, until, purchase_types, 1, since=watermark)
    # each other device with new events: its last stored session (a purchase-only one included), open or closed
    con.execute(f"""
        create or replace temp table conv_history_last as
        with devices as (select distinct device_id from conv_history_events
                         union select distinct device_id from conv_history_tiebreak)
        select device_id, session_no, started_at, known_through,
               started_at is not null and purchased_at is null
                   and scored_at >= $watermark - to_minutes($gap::bigint) as open
        from {HISTORY_TABLE} semi join devices using (device_id) anti join conv_history_affected using (device_id)
        qualify row_number() over (partition by device_id order by session_no desc) = 1
    """, {"watermark": watermark, "gap": int(gap_minutes)})
    con.execute("""
        create or replace temp table conv_history_base as
        select device_id, session_no - open::integer as session_base, known_through as known_base
        from conv_history_last
    """)
    # events before the watermark sessionised again: the open sessions' and the affected devices' whole histories
    con.execute("""
        create or replace temp table conv_history_open as
        select device_id, started_at as since from conv_history_last where open
        union all select device_id, ?::timestamp from conv_history_affected
    """, [datetime.min])
    lower = con.execute("select min(since) from conv_history_open").fetchall()[0][0]
    if lower is not None:
        con.execute("create or replace temp table conv_history_new_events as from conv_history_events")
        con.execute("create or replace temp table conv_history_new_tiebreak as from conv_history_tiebreak")
        _history_events(con, watermark, purchase_types, 1, since=lower, reopened="conv_history_open",
                        watermark=watermark)
        con.execute("insert into conv_history_events from conv_history_new_events")
        con.execute("insert into conv_history_tiebreak from conv_history_new_tiebreak")
        con.execute("drop table conv_history_new_events")
        con.execute("drop table conv_history_new_tiebreak")
    _sessionise_history(con, "conv_history_new", gap_minutes, 1, base="conv_history_base")
    con.execute("begin transaction")
    con.execute(f"""delete from {HISTORY_TABLE} h using conv_history_last l
                    where l.open and h.device_id = l.device_id and h.session_no = l.session_no""")
    con.execute(f"delete from {HISTORY_TABLE} where device_id in (select device_id from conv_history_affected)")
    con.execute(f"insert into {HISTORY_TABLE} from conv_history_new")
    con.execute(f"drop table if exists {HISTORY_EXPIRED}")
    _save_state(con, until, (digest[0] + new[0], digest[1] + new[1]), settings)
    con.execute("commit")
    sessions = con.execute("select count(*) from conv_history_new").fetchall()[0][0]
    for t in ("conv_history_events", "conv_history_tiebreak", "conv_history_last", "conv_history_base",
              "conv_history_open", "conv_history_new", "conv_history_affected"):
        con.execute(f"drop table {t}")
    return HistoryUpdate("extended", "", new[0], sessions, affected, slices)


def _recent_purchases(con: duckdb.DuckDBPyConnection, until: datetime, since: datetime,
                      purchase_types: Sequence[str]) -> None:
    """Temp table ``conv_purchase_events(device_id, person_id, ts)``: the purchase events in ``[since, until)``
    (a point scored since then is labelled by the next purchase after it)."""
    rel, opt, _ = _projection(con)
    con.execute(f"""
        create or replace temp table conv_purchase_events as
        select coalesce('a:' || {opt['anonymous_id']}::varchar, 'p:' || person_id::varchar,
                        'c:' || {opt['customer_ref']}::varchar) as device_id,
               person_id::varchar as person_id, "timestamp" as ts
        from {rel}
        where "timestamp" < $until and "timestamp" >= $since
          and list_contains($purchase::varchar[], lower(event_type))
          and coalesce({opt['anonymous_id']}::varchar, person_id::varchar, {opt['customer_ref']}::varchar) is not null
    """, {"until": until, "since": since, "purchase": _purchase_names(con, purchase_types)})
