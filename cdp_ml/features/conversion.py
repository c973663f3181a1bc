"""Point-in-time conversion-intent features: one row per scoring point, built in SQL.

Two inputs train the same model family:

* ``events`` (default when the warehouse has events): scoring points are session ends (see
  :mod:`cdp_ml.features.sessions`); features are the session's aggregates plus the visitor's history
  *before the session started* (window frames ending at the previous session, ASOF joins on order
  history with a strict ``<``). The label is a purchase (purchase event or order, by the same device or
  person) in ``(scored_at, scored_at + horizon_days]``; it is only used when that window lies in the data.
* ``sessions``: a pre-aggregated sessions source (staging table ``sessions``): every column besides ids,
  timestamp and lineage is a feature (numbers and booleans numeric, text categorical); ``converted`` is
  the label and ``timestamp`` the scoring point.

Everything is computed from data strictly before ``until``; the rows of a window are fetched afterwards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

import duckdb
import pandas as pd

from cdp_ml.engine import columns, duckdb_settings, sliced_build, table_exists
from cdp_ml.errors import CdpError
from cdp_ml.features import sessions as sess
from cdp_ml.features.settings import FeatureSettings
from cdp_ml.models.settings import ConversionSettings

EVENT_NUMERIC = (
    "n_events", *sess.COUNTED_TYPES.values(), "n_other_events", "n_products", "n_categories", "duration_s",
    "mean_gap_s", "bounce", "cart_value", "mean_viewed_value", "hour", "weekday", "days_to_peak", "known",
    "prev_sessions", "sessions_30d", "days_since_prev_session", "prev_product_views", "prev_cart_adds",
    "prev_checkout_starts", "prev_purchases", "visitor_sessions_1d", "visitor_sessions_7d",
    "visitor_product_views_7d", "visitor_cart_adds_7d", "person_orders", "person_returns", "person_order_amount",
    "person_mean_order_gap_days", "days_since_last_purchase", "purchase_cycle_ratio",
    "device_age_days", "prev_bounces", "visitor_days_since_prev_session", "visitor_decayed_sessions",
    "visitor_decayed_product_views", "visitor_decayed_cart_adds", "category_orders", "category_share",
    "days_since_category_purchase", "category_cycle_ratio",
)
# Time constant (days) of the recency-weighted visitor engagement: a visit counts exp(-age / tau).
DECAY_DAYS = 7.0
EVENT_CATEGORICAL = ("channel", "traffic_source", "first_category", "last_category", "exit_event_type")

# Columns of a sessions source that are never features.
SESSION_NON_FEATURES = {"session_id", "timestamp", "anonymous_id", "customer_ref", "converted", "person_id",
                        "source", "_file", "_row", "_load_id", "ref_source", "ref_key", "attributes"}
_NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                  "UBIGINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL", "BOOLEAN")
_TEXT_TYPES = ("VARCHAR",)

POINTS_TABLE = "conv_points"
CANDIDATES_TABLE = "conv_candidates"
log = logging.getLogger(__name__)  # seconds per feature-building phase (INFO): where a large warehouse spends time

@dataclass(frozen=True)
class PointsSpec:
    """What ``build_points`` produced: the input kind and the feature columns of ``conv_points``."""

    kind: Literal["events", "sessions"]
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    label_lag_days: int  # days after a scoring point until its label is known
    rows: int
    # the relation holding every scoring point's keys and label (fetch's sampling counts there): conv_points
    # itself, or the narrow candidates when only selected points were built wide
    population: str = POINTS_TABLE

    @property
    def features(self) -> tuple[str, ...]:
        return self.numeric + self.categorical


def input_kind(con: duckdb.DuckDBPyConnection, settings: ConversionSettings) -> Literal["events", "sessions"]:
    """Which input trains the model: the configured one, else a sessions source when it has rows, else events."""
    has_sessions = table_exists(con, "sessions") and con.execute("select count(*) from sessions").fetchall()[0][0] > 0
    has_events = table_exists(con, "events") or table_exists(con, "person_events")
    if settings.input == "sessions" or (settings.input == "auto" and has_sessions):
        if not has_sessions:
            raise CdpError("conversion.input is 'sessions' but the warehouse has no sessions: add a sessions "
                           "source and run `cdp-ml ingest`")
        return "sessions"
    if not has_events:
        raise CdpError("conversion intent needs events or a sessions source in the warehouse: run `cdp-ml ingest`")
    return "events"


def build_points(con: duckdb.DuckDBPyConnection, conversion: ConversionSettings, features: FeatureSettings,
                 until: datetime) -> PointsSpec:
    """Create temp table ``conv_points`` from data strictly before ``until``."""
    kind = input_kind(con, conversion)
    if kind == "sessions":
        return _session_source_points(con, until)
    return _event_points(con, conversion, features, until)


def _event_points(con: duckdb.DuckDBPyConnection, conversion: ConversionSettings, features: FeatureSettings,
                  until: datetime) -> PointsSpec:
    # a slice's filter makes DuckDB underestimate the ASOF joins' left side and pick a nested-loop ASOF join,
    # quadratic in a visitor's sessions (7x slower on the demo); the sort-based one scales
    with duckdb_settings(con, asof_loop_join_threshold="0"):
        return _event_points_sliced(con, conversion, features, until)


# SQL shared by the full build and the audience build, so both compute every feature with the same expressions.
# Device history: windows over one device's sessions, ordered by start (wp: the sessions before this one).
# A visitor is the known person (once the device logged in) across devices, else the device.
KNOWN_PERSON = "case when known = 1 then person_id end"
HISTORY_KEY = "coalesce(case when known = 1 then 'p:' || person_id end, device_id)"
DEVICE_HISTORY = f"""
    (row_number() over wd - 1)::integer as prev_sessions,
    (count(*) over (partition by device_id order by started_at
                    range between interval 30 days preceding and current row) - 1)::integer as sessions_30d,
    (epoch(started_at) - epoch(lag(scored_at) over wd)) / 86400.0 as days_since_prev_session,
    coalesce(sum(n_product_views) over wp, 0)::integer as prev_product_views,
    coalesce(sum(n_cart_adds) over wp, 0)::integer as prev_cart_adds,
    coalesce(sum(n_checkout_starts) over wp, 0)::integer as prev_checkout_starts,
    coalesce(count(purchased_at) over wp, 0)::integer as prev_purchases,
    max(purchased_at) over wp as prev_purchase_at,
    (epoch(started_at) - epoch(first_value(started_at) over wd)) / 86400.0 as device_age_days,
    coalesce(sum(bounce) over wp, 0)::integer as prev_bounces,
    {KNOWN_PERSON} as known_person_id,
    {HISTORY_KEY} as history_key
"""
DEVICE_HISTORY_COLUMNS = ("prev_sessions", "sessions_30d", "days_since_prev_session", "prev_product_views",
                          "prev_cart_adds", "prev_checkout_starts", "prev_purchases", "prev_purchase_at",
                          "device_age_days", "prev_bounces", "known_person_id", "history_key")
DEVICE_WINDOWS = """
    window wd as (partition by device_id order by started_at, session_no),
           wp as (partition by device_id order by started_at, session_no
                  rows between unbounded preceding and 1 preceding)
"""
# Visitor history (known person across devices, else the device) in the days before this session.
VISITOR_HISTORY = f"""
    (count(*) over v7 - 1)::integer as visitor_sessions_7d,
    (count(*) over (partition by history_key order by started_at
                    range between interval 1 day preceding and current row) - 1)::integer as visitor_sessions_1d,
    (sum(n_product_views) over v7 - n_product_views)::integer as visitor_product_views_7d,
    (sum(n_cart_adds) over v7 - n_cart_adds)::integer as visitor_cart_adds_7d,
    (epoch(started_at) - epoch(lag(started_at) over vr)) / 86400.0 as visitor_days_since_prev_session,
    -- recency-weighted engagement: sum of exp(-(t - t_i) / tau) over earlier visits, as
    -- exp(-(t - t0) / tau) * sum(exp((t_i - t0) / tau)) with t0 the visitor's first visit
    -- (exponent capped: histories beyond ~13 years lose the oldest weights, not the recent ones)
    exp(-least((epoch(started_at) - epoch(first_value(started_at) over vr)) / {DECAY_DAYS * 86400},
               700)) as decay_now,
    exp(least((epoch(started_at) - epoch(first_value(started_at) over vr)) / {DECAY_DAYS * 86400},
              700)) as decay_weight
"""
VISITOR_WINDOWS = """
    window v7 as (partition by history_key order by started_at range between interval 7 days preceding and current row),
           vr as (partition by history_key order by started_at, session_id)
"""
DECAYED = """
    coalesce(decay_now * sum(decay_weight) over vp, 0) as visitor_decayed_sessions,
    coalesce(decay_now * sum(decay_weight * n_product_views) over vp, 0) as visitor_decayed_product_views,
    coalesce(decay_now * sum(decay_weight * n_cart_adds) over vp, 0) as visitor_decayed_cart_adds
"""
DECAYED_WINDOW = """
    window vp as (partition by history_key order by started_at, session_id rows between unbounded preceding and 1 preceding)
"""


def _points_sql(decayed: str, wide: str, category_history: str, order_history: str, purchases: str) -> str:
    """From visitor-history rows (``decayed``: keys, times, last category and the visitor windows) and the wide
    rows (``wide``: session aggregates and device history), the order/category ASOF joins, the person's next
    purchase and the final scoring-point columns."""
    return f"""
        with_category as (
            select d.*, c.category_orders, c.category_mean_gap_days, c.ordered_at as last_category_order_at
            from {decayed} d asof left join {category_history} c
              on d.known_person_id = c.person_id and d.last_category = c.category and d.started_at > c.ordered_at
        ), with_orders as (
            select s.*, h.person_orders, h.person_returns, h.person_order_amount, h.person_mean_order_gap_days,
                   h.ordered_at as last_order_at
            from with_category s asof left join {order_history} h
              on s.known_person_id = h.person_id and s.started_at > h.ordered_at
        ), history as (
            select w.* exclude (session_id, history_key, known_person_id, last_category, started_at, scored_at),
                   p.ts as next_person_purchase
            from with_orders w asof left join {purchases} p
              on 'p:' || w.known_person_id = p.k and w.scored_at < p.ts
        ), wide as (
            select d.*, h.* exclude (device_id, session_no)
            from {wide} d
            join history h on d.device_id = h.device_id and d.session_no = h.session_no
        )
        select w.session_id, w.device_id, w.person_id, w.anonymous_id, w.scored_at,
               coalesce('p:' || w.person_id, w.device_id) as visitor_id,
               least(w.next_device_purchase, w.next_person_purchase) as next_purchase_at,
               null::boolean as converted, w.purchased_at is not null as session_purchased,
               w.* exclude (session_id, device_id, person_id, anonymous_id, scored_at, session_no, known_person_id,
                            history_key, started_at, purchased_at, prev_purchase_at, last_order_at,
                            person_orders, person_returns, person_order_amount, category_orders,
                            category_mean_gap_days, last_category_order_at, next_device_purchase,
                            next_person_purchase, visitor_slice),
               coalesce(w.person_orders, 0)::integer as person_orders,
               coalesce(w.person_returns, 0)::integer as person_returns,
               coalesce(w.person_order_amount, 0)::double as person_order_amount,
               (epoch(w.started_at) - epoch(greatest(w.prev_purchase_at, w.last_order_at))) / 86400.0
                   as days_since_last_purchase,
               (epoch(w.started_at) - epoch(w.last_order_at)) / 86400.0 / w.person_mean_order_gap_days
                   as purchase_cycle_ratio,
               coalesce(w.category_orders, 0)::integer as category_orders,
               coalesce(w.category_orders, 0) / nullif(w.person_orders, 0) as category_share,
               (epoch(w.started_at) - epoch(w.last_category_order_at)) / 86400.0 as days_since_category_purchase,
               (epoch(w.started_at) - epoch(w.last_category_order_at)) / 86400.0 / w.category_mean_gap_days
                   as category_cycle_ratio,
               pk.days_to_peak
        from wide w
        left join conv_peaks pk on pk.d = cast(w.started_at as date)
    """


def _order_histories(con: duckdb.DuckDBPyConnection, features: FeatureSettings, until: datetime,
                     sessions: str) -> None:
    """Temp tables of the person's order history (``conv_orders``, ``conv_order_history``,
    ``conv_category_history``), purchases by person (``conv_purchases``, from orders and
    ``conv_purchase_events``) and days to the next holiday peak of each day a session in ``sessions`` started."""
    orders = sess.order_relation(con)
    if orders is not None:
        status = '"status"' if "status" in _relation_columns(con, orders) else "null::varchar"
        amount = '"amount"' if "amount" in _relation_columns(con, orders) else "null::double"
        con.execute(f"""
            create or replace temp table conv_orders as
            select person_id::varchar as person_id, order_id, min(ordered_at) as ordered_at,
                   sum(coalesce({amount}, 0)) as amount,
                   bool_or(coalesce({status}, 'completed') = 'returned') as returned,
                   bool_and(coalesce({status}, 'completed') = 'cancelled') as cancelled
            from {orders}
            where ordered_at < ? and person_id is not null
            group by all
        """, [until])
        category = '"category"' if "category" in _relation_columns(con, orders) else "null::varchar"
        # purchase occasions per category: the person's rhythm for what they browse now
        con.execute(f"""
            create or replace temp table conv_category_history as
            with occasions as (
                select person_id::varchar as person_id, {category}::varchar as category, ordered_at
                from {orders}
                where ordered_at < ? and person_id is not null and {category} is not null
                  and coalesce({status}, 'completed') <> 'cancelled'
                group by all
            )
            select person_id, category, ordered_at,
                   count(*) over w as category_orders,
                   case when count(*) over w > 1 then (epoch(ordered_at) - epoch(min(ordered_at) over w)) / 86400.0
                                                      / (count(*) over w - 1) end as category_mean_gap_days
            from occasions
            window w as (partition by person_id, category order by ordered_at rows unbounded preceding)
        """, [until])
    else:
        con.execute("create or replace temp table conv_orders (person_id varchar, order_id varchar, "
                    "ordered_at timestamp, amount double, returned boolean, cancelled boolean)")
        con.execute("create or replace temp table conv_category_history (person_id varchar, category varchar, "
                    "ordered_at timestamp, category_orders bigint, category_mean_gap_days double)")
    con.execute("""
        create or replace temp table conv_order_history as
        with per_time as (
            select person_id, ordered_at,
                   count(*) filter (where not cancelled) as n, count(*) filter (where returned) as r,
                   coalesce(sum(amount) filter (where not cancelled), 0) as amount
            from conv_orders group by person_id, ordered_at
        )
        select person_id, ordered_at,
               sum(n) over w as person_orders, sum(r) over w as person_returns, sum(amount) over w as person_order_amount,
               case when sum(n) over w > 1 then (epoch(ordered_at) - epoch(min(ordered_at) over w)) / 86400.0
                                                / (sum(n) over w - 1) end as person_mean_order_gap_days
        from per_time
        window w as (partition by person_id order by ordered_at rows unbounded preceding)
    """)
    con.execute("""
        create or replace temp table conv_purchases as
        select 'p:' || person_id as k, ts from conv_purchase_events where person_id is not null
        union all select 'p:' || person_id, ordered_at from conv_orders where not cancelled
    """)
    con.execute(f"""
        create or replace temp table conv_peaks as
        with dates as (select distinct cast(started_at as date) as d from {sessions}),
        peaks as (
            select cast(split_part(md, '-', 1) as integer) as m, cast(split_part(md, '-', 2) as integer) as dd
            from (select unnest(?::varchar[]) as md)
        ), dated as (
            select d, make_date(year(d), m, case when m = 2 then least(dd, 28) else dd end) as this_year,
                      make_date(year(d) + 1, m, case when m = 2 then least(dd, 28) else dd end) as next_year
            from dates, peaks
        )
        select d, min(case when this_year >= d then this_year - d else next_year - d end)::integer as days_to_peak
        from dated group by d
    """, [list(features.holiday_peaks) or ["12-24"]])


_HISTORY_TABLES = ("conv_device_history", "conv_purchase_events", "conv_orders", "conv_order_history",
                   "conv_purchases", "conv_peaks", "conv_category_history")


def _event_points_sliced(con: duckdb.DuckDBPyConnection, conversion: ConversionSettings,
                         features: FeatureSettings, until: datetime) -> PointsSpec:
    started, cpu = time.perf_counter(), time.process_time()  # CPU seconds too: wall time varies with machine load
    _, slices = sess.build_sessions(con, until, features.session_gap_minutes, conversion.purchase_event_types)
    log.info("conversion features: sessions in %.1fs (%.0f CPU-s)", time.perf_counter() - started,
             time.process_time() - cpu)
    _order_histories(con, features, until, "conv_sessions")
    # the sessions' device slices again; persons' histories get their visitor slice (a known visitor's key is
    # 'p:' || person_id), stored so each slice's scans filter on one small column
    for t, key in (("conv_category_history", "'p:' || person_id"), ("conv_order_history", "'p:' || person_id"),
                   ("conv_purchases", "k")):
        con.execute(f"create or replace temp table {t} as select *, (hash({key}) % {slices})::integer as slice "
                    f"from {t}")
    # device history: windows over each device's sessions, in device-hash slices (a device is never split);
    # sorted on a narrow projection, the wide session row joined back once (as in the visitor stage below)
    for part, head in sliced_build(con, "conv_device_history", slices):
        con.execute(f"""
            {head}
            with narrow as (
                select device_id, session_no, started_at, scored_at, person_id, known, n_product_views, n_cart_adds,
                       n_checkout_starts, purchased_at, bounce
                from conv_sessions
                where slice = $part
            ), s as (
                select device_id, session_no, scored_at, {DEVICE_HISTORY}
                from narrow
                {DEVICE_WINDOWS}
            ), history as (
                select s.* exclude (scored_at), p.ts as next_device_purchase,
                       (hash(s.history_key) % $slices)::integer as visitor_slice
                from s asof left join (select device_id, ts from conv_purchase_events
                                       where hash(device_id) % $slices = $part) p
                  on s.device_id = p.device_id and s.scored_at < p.ts
            )
            select c.* exclude (slice), h.* exclude (device_id, session_no)
            from (select * from conv_sessions where slice = $part) c
            join history h on c.device_id = h.device_id and c.session_no = h.session_no
        """, {"slices": slices, "part": part})
    con.execute("drop table conv_sessions")
    log.info("conversion features: order history and device history (%d slices) done at %.1fs (%.0f CPU-s)", slices,
             time.perf_counter() - started, time.process_time() - cpu)
    # visitor history, order history and labels, in history-key slices (a visitor is never split). The windows
    # and ASOF joins sort a narrow projection (keys, times and the two counts they sum); the wide session row
    # joins back once by its device and session number instead of being carried through six sorts
    for part, head in sliced_build(con, POINTS_TABLE, slices):
        con.execute(f"""
            {head}
            with narrow as (
                select device_id, session_no, session_id, history_key, known_person_id, last_category, started_at,
                       scored_at, n_product_views, n_cart_adds
                from conv_device_history
                where visitor_slice = $part
            ), visitor as (
                select *, {VISITOR_HISTORY}
                from narrow
                {VISITOR_WINDOWS}
            ), decayed as (
                select * exclude (decay_now, decay_weight, n_product_views, n_cart_adds), {DECAYED}
                from visitor
                {DECAYED_WINDOW}
            ), {_points_sql("decayed", "(select * from conv_device_history where visitor_slice = $part)",
                            "(select * from conv_category_history where slice = $part)",
                            "(select * from conv_order_history where slice = $part)",
                            "(select * from conv_purchases where slice = $part)")}
        """, {"part": part})
    for t in _HISTORY_TABLES:
        con.execute(f"drop table if exists {t}")
    rows = con.execute(f"select count(*) from {POINTS_TABLE}").fetchall()[0][0]
    log.info("conversion features: %d scoring points at %.1fs (%.0f CPU-s)", rows, time.perf_counter() - started,
             time.process_time() - cpu)
    return PointsSpec("events", EVENT_NUMERIC, EVENT_CATEGORICAL, conversion.horizon_days, rows)


@dataclass(frozen=True)
class Window:
    """Scoring points a caller fetches (the arguments of :func:`fetch`): ``start <= scored_at < end`` with a
    known label, ``keep`` a SQL predicate, optionally without purchase sessions and hash-sampled to ``max_rows``."""

    start: datetime | None
    end: datetime
    horizon_days: int
    keep: str = "true"
    without_purchase_sessions: bool = False
    max_rows: int | None = None


@dataclass(frozen=True)
class Audience:
    """The retargeting audience a caller fetches (the arguments of :func:`fetch_audience`)."""

    as_of: datetime
    active_days: int
    keep: str = "true"


def build_selected_points(con: duckdb.DuckDBPyConnection, conversion: ConversionSettings,
                          features: FeatureSettings, until: datetime,
                          wanted: Sequence[Window | Audience]) -> PointsSpec:
    """Create temp table ``conv_points`` with only the scoring points that :func:`fetch` and
    :func:`fetch_audience` return for ``wanted`` - each row identical to what :func:`build_points` gives it.

    Training fetches a sample and a window, scoring one session per visitor: neither needs the wide features of
    every session. Every session is still found (histories count sessions), but from a narrow projection of the
    events (:func:`sessions.session_history`: stored in the warehouse and extended each week); labels, device and
    visitor windows run on those narrow rows with the full build's expressions, and the wide session aggregates,
    ASOF joins and final columns are built only for the wanted sessions. Sampling decisions (:func:`fetch`'s
    hash buckets) are taken on the narrow rows of every point (``spec.population``), so a fetch returns exactly
    the rows it would from the full build.
    """
    kind = input_kind(con, conversion)
    if kind == "sessions":
        return _session_source_points(con, until)
    with duckdb_settings(con, asof_loop_join_threshold="0"):  # see _event_points
        return _selected_event_points(con, conversion, features, until, wanted)


def build_audience_points(con: duckdb.DuckDBPyConnection, conversion: ConversionSettings,
                          features: FeatureSettings, until: datetime, since: datetime) -> PointsSpec:
    """:func:`build_selected_points` for scoring: the audience of the ``since <= scored_at < until`` window."""
    days = (until - since).days
    return build_selected_points(con, conversion, features, until, [Audience(until, days)])


def _log_phase(what: str, started: float, cpu: float) -> None:
    log.info("conversion selected features: %s at %.1fs (%.0f CPU-s)", what, time.perf_counter() - started,
             time.process_time() - cpu)


def _selected_event_points(con: duckdb.DuckDBPyConnection, conversion: ConversionSettings,
                           features: FeatureSettings, until: datetime,
                           wanted: Sequence[Window | Audience]) -> PointsSpec:
    started, cpu = time.perf_counter(), time.process_time()
    starts = [w.start or datetime.min for w in wanted if isinstance(w, Window)]
    starts += [w.as_of - timedelta(days=w.active_days) for w in wanted if isinstance(w, Audience)]
    since = min(starts, default=until)
    history = sess.session_history(con, until, features.session_gap_minutes, conversion.purchase_event_types, since)
    slices = history.slices
    _log_phase(f"session history {history.mode} ({slices} slices)", started, cpu)
    _order_histories(con, features, until, "conv_history_sessions")
    # every scoring point's keys and label (the next purchase by its device or known person): what fetch's
    # window filters and sampling read
    for part, head in sliced_build(con, CANDIDATES_TABLE, slices):
        con.execute(f"""
            {head}
            with s as (
                select device_id, session_no, session_id, person_id, known, scored_at, purchased_at
                from conv_history_sessions where slice = $part and scored_at >= $since
            ), by_device as (
                select s.*, p.ts as next_device_purchase
                from s asof left join (select device_id, ts from conv_purchase_events
                                       where hash(device_id) % $slices = $part) p
                  on s.device_id = p.device_id and s.scored_at < p.ts
            ), by_person as (
                select d.*, q.ts as next_person_purchase
                from by_device d asof left join conv_purchases q
                  on 'p:' || {KNOWN_PERSON} = q.k and d.scored_at < q.ts
            )
            select device_id, session_no, session_id, person_id, scored_at,
                   coalesce('p:' || person_id, device_id) as visitor_id,
                   least(next_device_purchase, next_person_purchase) as next_purchase_at,
                   purchased_at is not null as session_purchased
            from by_person
        """, {"part": part, "slices": slices, "since": since})
    population = PointsSpec("events", EVENT_NUMERIC, EVENT_CATEGORICAL, conversion.horizon_days, 0, CANDIDATES_TABLE)
    selections = []
    for w in wanted:
        if isinstance(w, Window):
            where, params, _ = _window_filter(con, population, w.start, w.end, w.horizon_days, w.keep,
                                              w.without_purchase_sessions, w.max_rows)
            selections.append((f"select device_id, session_no from {CANDIDATES_TABLE} where {where}", params))
        else:
            selections.append((f"""select device_id, session_no from {CANDIDATES_TABLE}
                                   where scored_at >= ? and scored_at < ?
                                   qualify row_number() over (partition by visitor_id
                                                              order by scored_at desc, session_id desc) = 1""",
                               [w.as_of - timedelta(days=w.active_days), w.as_of]))
    con.execute("create or replace temp table conv_scored (device_id varchar, session_no bigint)")
    for sql, params in selections:
        con.execute(f"insert into conv_scored {sql}", params)
    con.execute("create or replace temp table conv_scored as select distinct device_id, session_no from conv_scored")
    con.execute("""
        create or replace temp table conv_spans as
        select h.device_id, h.session_no, h.session_id, h.person_id, h.known, h.started_at, h.scored_at, h.purchased_at
        from conv_history_sessions h semi join conv_scored using (device_id, session_no)
    """)
    _log_phase(f"{con.execute('select count(*) from conv_spans').fetchall()[0][0]} points chosen", started, cpu)
    # the wanted sessions' aggregates, from their own events
    sess.build_span_sessions(con, until, "conv_spans", conversion.purchase_event_types, "conv_span_sessions")
    _log_phase("wanted sessions' aggregates", started, cpu)
    # device histories of the devices with a wanted session (each with all its sessions), kept for the wanted ones
    con.execute("drop table if exists conv_wanted_devices")
    for part in range(slices):
        con.execute(f"""
            {"create temp table conv_wanted_devices as" if part == 0 else "insert into conv_wanted_devices"}
            with s as (
                select device_id, session_no, started_at, scored_at, known, {DEVICE_HISTORY}
                from (from conv_history_sessions semi join conv_spans using (device_id)) h
                where slice = $part
                {DEVICE_WINDOWS}
            )
            select h.device_id, h.session_no, h.started_at, h.known, {", ".join(f"h.{c}" for c in DEVICE_HISTORY_COLUMNS)},
                   p.ts as next_device_purchase
            from (from s semi join conv_scored using (device_id, session_no)) h
            asof left join (select device_id, ts from conv_purchase_events where hash(device_id) % $slices = $part) p
              on h.device_id = p.device_id and h.scored_at < p.ts
        """, {"slices": slices, "part": part})
    _log_phase("device histories", started, cpu)
    # every session of the visitors (history keys) of the wanted points: the visitor windows need them all
    con.execute(f"""
        create or replace temp table conv_visits as
        with keyed as (
            select device_id, session_no, session_id, started_at, scored_at, n_product_views, n_cart_adds,
                   {KNOWN_PERSON} as known_person_id, {HISTORY_KEY} as history_key
            from conv_history_sessions
        ), scored as (select *, true as recent from keyed semi join conv_scored using (device_id, session_no)),
        recent_keys as (select distinct history_key from scored)
        select device_id, session_no, session_id,
               history_key, known_person_id, started_at, scored_at, n_product_views, n_cart_adds,
               coalesce(s.recent, false) as recent, (hash(history_key) % $slices)::integer as visitor_slice
        from keyed k semi join recent_keys using (history_key)
        left join (select device_id, session_no, recent from scored) s using (device_id, session_no)
    """, {"slices": slices})
    con.execute("drop view conv_history_sessions")
    # visitor windows over every session of the visitor, kept for the wanted ones
    for part, head in sliced_build(con, "conv_wanted_visitors", slices):
        con.execute(f"""
            {head}
            with visitor as (
                select *, {VISITOR_HISTORY}
                from (select * from conv_visits where visitor_slice = $part)
                {VISITOR_WINDOWS}
            ), decayed as (
                select * exclude (decay_now, decay_weight, n_product_views, n_cart_adds, visitor_slice), {DECAYED}
                from visitor
                {DECAYED_WINDOW}
            )
            select * exclude (recent) from decayed where recent
        """, {"part": part})
    con.execute("drop table conv_visits")
    _log_phase("visitor histories", started, cpu)
    # the wanted sessions' wide rows: their aggregates and the whole history's counters
    con.execute(f"""
        create or replace temp table conv_wanted_wide as
        select t.* exclude (slice, known, session_no), d.session_no, d.known, {", ".join(f"d.{c}" for c in DEVICE_HISTORY_COLUMNS)},
               d.next_device_purchase, 0 as visitor_slice
        from conv_span_sessions t
        join conv_wanted_devices d on d.device_id = t.device_id and d.session_no = t.session_no
    """)
    con.execute(f"""
        create or replace temp table {POINTS_TABLE} as
        with recent as (
            select v.*, w.last_category
            from conv_wanted_visitors v
            join conv_wanted_wide w on w.device_id = v.device_id and w.session_no = v.session_no
        ), {_points_sql("recent", "conv_wanted_wide", "conv_category_history", "conv_order_history", "conv_purchases")}
    """)
    for t in ("conv_scored", "conv_spans", "conv_span_sessions", "conv_wanted_devices", "conv_wanted_visitors",
              "conv_wanted_wide", *_HISTORY_TABLES):
        con.execute(f"drop table if exists {t}")
    rows = con.execute(f"select count(*) from {POINTS_TABLE}").fetchall()[0][0]
    _log_phase(f"{rows} scoring points", started, cpu)
    return replace(population, rows=rows)


def _relation_columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    return [d[0] for d in con.execute(f"select * from {relation} limit 0").description]


def _session_source_points(con: duckdb.DuckDBPyConnection, until: datetime) -> PointsSpec:
    rel = "person_sessions" if table_exists(con, "person_sessions") else (
        "(select *, case when customer_ref is not null then "
        "'ref:' || coalesce(ref_source, source) || ':' || customer_ref end as person_id from sessions)")
    types = dict(con.execute("select column_name, data_type from duckdb_columns() "
                             "where table_name = 'sessions' and schema_name = 'main'").fetchall())
    numeric, categorical = [], []
    for col in columns(con, "sessions"):
        if col in SESSION_NON_FEATURES or col.startswith("_"):
            continue
        typ = types[col].upper()
        if typ.startswith(_NUMERIC_TYPES):
            numeric.append(col)
        elif typ.startswith(_TEXT_TYPES):
            categorical.append(col)
    if not numeric and not categorical:
        raise CdpError("sessions source has no feature columns besides ids, timestamp and converted")
    feats = ", ".join([f'"{c}"::double as "{c}"' for c in numeric] + [f'"{c}"::varchar as "{c}"' for c in categorical])
    con.execute(f"""
        create or replace temp table {POINTS_TABLE} as
        select session_id::varchar as session_id, coalesce('a:' || anonymous_id, 's:' || session_id) as device_id,
               person_id::varchar as person_id, anonymous_id::varchar as anonymous_id, "timestamp" as scored_at,
               coalesce('p:' || person_id, 'a:' || anonymous_id, 's:' || session_id) as visitor_id,
               null::timestamp as next_purchase_at, converted::boolean as converted, false as session_purchased,
               {feats}
        from {rel}
        where "timestamp" < ? and "timestamp" is not null
    """, [until])
    rows = con.execute(f"select count(*) from {POINTS_TABLE}").fetchall()[0][0]
    return PointsSpec("sessions", tuple(numeric), tuple(categorical), 0, rows)


def _label_sql(spec: PointsSpec, horizon_days: int) -> str:
    if spec.kind == "sessions":
        return "converted"
    return f"coalesce(next_purchase_at <= scored_at + interval {int(horizon_days)} day, false)"


def _window_filter(con: duckdb.DuckDBPyConnection, spec: PointsSpec, start: datetime | None, end: datetime,
                   horizon_days: int, keep: str, without_purchase_sessions: bool,
                   max_rows: int | None) -> tuple[str, list, tuple[float, float]]:
    """(SQL predicate, its parameters, kept shares of positives and negatives) of :func:`fetch`'s rows, with the
    sampling decided on ``spec.population`` (every scoring point, built wide or not)."""
    label = _label_sql(spec, horizon_days)
    where = f"({keep}) and scored_at < ?" + (" and scored_at >= ?" if start is not None else "")
    if without_purchase_sessions:
        where += " and not session_purchased"
    if spec.kind == "sessions":
        where += " and converted is not null"
    params = [end] + ([start] if start is not None else [])
    positive_share = negative_share = 1.0
    if max_rows is not None:
        rows, positives = con.execute(f"select count(*), coalesce(sum(({label})::integer), 0) "
                                      f"from {spec.population} where {where}", params).fetchall()[0]
        if rows > max_rows:
            kept_positives = min(positives, max_rows // 2)
            pos_buckets = 10_000 if kept_positives == positives else \
                max(int(kept_positives / positives * 10_000), 100)
            neg_buckets = max(int((max_rows - kept_positives) / max(rows - positives, 1) * 10_000), 100)
            positive_share, negative_share = pos_buckets / 10_000, min(neg_buckets, 10_000) / 10_000
            bucket = "hash(session_id::varchar) % 10000"
            where += f" and ((({label}) and {bucket} < {pos_buckets}) or (not ({label}) and {bucket} < {neg_buckets}))"
    return where, params, (positive_share, negative_share)


def fetch(con: duckdb.DuckDBPyConnection, spec: PointsSpec, start: datetime | None, end: datetime,
          horizon_days: int, keep: str = "true", without_purchase_sessions: bool = False,
          max_rows: int | None = None) -> pd.DataFrame:
    """Scoring points with ``start <= scored_at < end`` and a known label, ordered by time.

    A label is known when its whole window ends before ``end + horizon`` lies in the data, which the caller
    guarantees by choosing ``end`` (training: ``cutoff - horizon``). ``keep`` is an extra SQL predicate
    (the profiling objection: persons who objected are never training examples).
    ``without_purchase_sessions`` leaves out sessions that ended in a purchase: the retargeting audience is
    visitors who left without buying, and a checkout completed minutes later is not a conversion an ad can win.
    ``max_rows``: beyond it, a deterministic hash sample is fetched (in SQL, so a large warehouse never
    materialises the whole slice in memory): every positive while they fill at most half of ``max_rows``, else
    a sample of them filling half, and negatives fill the rest. A model learns from the rarer class, so the
    budget follows the positives; the kept shares are in ``frame.attrs["positive_share"]`` and
    ``["negative_share"]`` so calibration can undo the sampling.
    """
    cols = ", ".join(f'"{c}"' for c in spec.features)
    where, params, (positive_share, negative_share) = _window_filter(
        con, spec, start, end, horizon_days, keep, without_purchase_sessions, max_rows)
    label = _label_sql(spec, horizon_days)
    started = time.perf_counter()
    frame = con.execute(f"""
        select session_id, person_id, anonymous_id, scored_at, ({label})::integer as label, {cols}
        from {POINTS_TABLE} where {where}
        order by scored_at, session_id
    """, params).df()
    frame.attrs["positive_share"], frame.attrs["negative_share"] = positive_share, negative_share
    log.info("conversion fetch: %d rows (%d positives; kept %.3f of positives, %.3f of negatives) in %.1fs",
             len(frame), int(frame["label"].sum()), positive_share, negative_share, time.perf_counter() - started)
    return frame


def fetch_window(con: duckdb.DuckDBPyConnection, spec: PointsSpec, window: Window) -> pd.DataFrame:
    """:func:`fetch` of a :class:`Window` (as given to :func:`build_selected_points`)."""
    return fetch(con, spec, window.start, window.end, window.horizon_days, window.keep,
                 window.without_purchase_sessions, window.max_rows)


def fetch_audience(con: duckdb.DuckDBPyConnection, spec: PointsSpec, as_of: datetime, active_days: int,
                   keep: str = "true") -> pd.DataFrame:
    """The retargeting audience at ``as_of``: each visitor's latest scoring point in the last ``active_days``,
    for visitors who have not purchased since (events) or whose latest session did not convert (sessions);
    ``keep`` is an extra SQL predicate (the profiling objection)."""
    cols = ", ".join(f'"{c}"' for c in spec.features)
    not_purchased = ("next_purchase_at is null" if spec.kind == "events" else "coalesce(converted, false) = false")
    return con.execute(f"""
        with latest as (
            select * from {POINTS_TABLE}
            where scored_at >= ? and scored_at < ?
            qualify row_number() over (partition by visitor_id order by scored_at desc, session_id desc) = 1
        )
        select session_id, person_id, anonymous_id, scored_at, {cols}
        from latest where {not_purchased} and ({keep})
        order by visitor_id
    """, [as_of - timedelta(days=active_days), as_of]).df()


def latest_activity(con: duckdb.DuckDBPyConnection, settings: ConversionSettings) -> datetime | None:
    """Timestamp of the latest event (or session) in the warehouse; the default as-of follows it."""
    kind = input_kind(con, settings)
    if kind == "sessions":
        return con.execute('select max("timestamp") from sessions').fetchall()[0][0]
    rel = "person_events" if table_exists(con, "person_events") else "events"
    return con.execute(f'select max("timestamp") from {rel}').fetchall()[0][0]
