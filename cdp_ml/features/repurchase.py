"""Person-period data for the repurchase-timing model, built in SQL and point-in-time correct by construction.

A *track* is a person x category the person has bought, plus the person-level any-category track
(``category = '(any)'``). An *origin* is a Monday at which features are measured from data strictly
before it; each (origin, track) then contributes one row per week k = 1..H at risk after the origin
(until the first purchase in the window, or censored at H / at the end of the data). Every feature query
filters ``week < origin``, so a row can never see its own future.

Everything heavy happens in DuckDB on weekly aggregates (temp tables ``rp_*`` of the connection); pandas
only receives one row per (origin, track) and expands the H weekly steps with numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import duckdb
import numpy as np
import pandas as pd

from cdp_ml.engine import columns, table_exists
from cdp_ml.errors import CdpError, NotEnoughData
from cdp_ml.privacy.profiling import profiling_excluded_sql, profiling_objections

ANY = "(any)"
EVENT_DAYS = 84  # browsing features look 12 weeks back from the origin

# Features measured at the origin (one value per origin x track).
TRACK_FEATURES = (
    "n_weeks_bought", "n_orders", "qty_total", "amount_total", "amount_per_order", "returns",
    "int_mean", "int_median", "int_sd", "int_cv", "int_min", "int_last", "qty_last", "amount_last",
    "n_13w", "n_26w", "n_52w", "tenure_weeks", "weeks_bought_per_year", "n_days", "trend_13w",
    "int_last_ratio", "ly_window",
    "n_weeks_any", "n_13w_any", "other_13w", "n_categories", "tenure_weeks_any",
    "views_1w", "views_2w", "views_4w", "views_12w", "carts_1w", "carts_2w", "carts_4w", "carts_12w",
    "events_4w", "events_12w", "channels_12w",
    "complaints", "complaints_12w", "contacts_12w",
)
# Features of the target week k after the origin (derived without looking past the origin).
STEP_FEATURES = (
    "step", "weeks_since", "weeks_since_exact", "weeks_since_any", "ratio_median", "ratio_mean", "z_interval",
    "weeks_past_median", "weeks_to_peak", "bought_last_year", "season_index",
)  # season enters as weeks to the next peak: week of year overfits when history holds one or two years
FEATURES = ("category", *TRACK_FEATURES, *STEP_FEATURES)


@dataclass(frozen=True)
class Inputs:
    """What the warehouse offers this run (orders are required; events and interactions are optional)."""

    categories: tuple[str, ...]  # category tracks (empty: only the any-category track)
    has_events: bool
    has_interactions: bool
    first_order: date
    last_order: date
    decided_before: date  # categories and profiling objections as of this date (the prediction origin)
    persons: float = 1.0  # share of persons in the aggregates: a hash sample when only a fit reads them
    tracks: int | None = None  # tracks with a purchase before decided_before, counted before any sample


def _has_rows(con: duckdb.DuckDBPyConnection, view: str) -> bool:
    if not table_exists(con, view):
        return False
    return bool(con.execute(f'select count(*) from (select 1 from "{view}" limit 1)').fetchall()[0][0])


def _col(cols: list[str], name: str, default: str) -> str:
    return f'"{name}"' if name in cols else default


def _no_orders_before(con: duckdb.DuckDBPyConnection, day: date) -> str:
    """Why no order of a person lies before ``day``: none at all, none with a person (an anonymous log), or
    all later (a log shorter than the horizon plus some history)."""
    total, linked, first = con.execute("select count(*), count(person_id), min(ordered_at) filter "
                                       "(where person_id is not null)::date from person_orders").fetchall()[0]
    if not total:
        return ("repurchase: the warehouse has no orders and no purchase events; map an orders source (or events "
                "with purchases) and run `cdp-ml ingest` and `cdp-ml resolve`")
    if not linked:
        return (f"repurchase: none of the {total:,} orders or purchases belongs to a person (persons come "
                f"from customer keys; a log of anonymous sessions has none; else run `cdp-ml resolve`)")
    return (f"repurchase: the first order of a person is on {first}, not before {day} (training needs orders "
            f"before the as-of date minus the horizon); use a later date or a smaller repurchase.horizon_weeks")


def prepare(con: duckdb.DuckDBPyConnection, data_end: date, categories_before: date,
            allowed: Sequence[str] = (), sample: Callable[[int], float] | None = None,
            first_origin: date | None = None) -> Inputs:
    """Load weekly purchase, browsing and contact aggregates of every track into temp tables.

    ``data_end`` bounds everything read (exclusive); the category list is decided on data before
    ``categories_before`` only (the prediction origin), so truncating the data there changes nothing.
    ``sample`` (a fit that reads only the hash sample of persons :func:`track_frame` keeps): the share of
    persons given the number of tracks before ``categories_before``; below 1 the aggregates hold only those
    persons, and the track count and the season table are counted on everybody first. At a million
    persons a fit reads well under 1 % of them, and aggregating the rest was most of its preparation.
    ``first_origin``: no features will be measured before this origin, so older events are not aggregated
    (a prediction at one origin reads only its last 12 weeks of browsing).
    """
    if not table_exists(con, "person_orders"):
        if table_exists(con, "orders"):
            raise CdpError("repurchase: no person_orders view in the warehouse; run `cdp-ml resolve` first "
                           "(it links orders to persons, also in an orders-only workspace)")
        raise CdpError("repurchase: no orders in the warehouse; map an orders source and run `cdp-ml ingest` "
                       "and `cdp-ml resolve` first")
    cols = columns(con, "person_orders")
    # persons who objected to profiling (as of the prediction origin) are neither examples nor scored
    keep = profiling_excluded_sql(con, categories_before)
    category = _col(cols, "category", "null")
    qty = _col(cols, "quantity", "1")
    amount = _col(cols, "amount", "null")
    status = _col(cols, "status", "'completed'")
    con.execute(f"""
        create or replace temp table rp_orders as
        select person_id::varchar as person_id, nullif(trim({category}::varchar), '') as category,
               ordered_at::date as day, date_trunc('week', ordered_at)::date as week,
               order_id::varchar as order_id, coalesce({qty}::double, 1) as qty, {amount}::double as amount,
               coalesce(lower({status}::varchar), 'completed') as status
        from person_orders
        where person_id is not null and ordered_at is not null and ordered_at < ?
          and coalesce(lower({status}::varchar), 'completed') <> 'cancelled' and {keep}
    """, [data_end])
    span = con.execute("select min(day), max(day), count(*) from rp_orders where day < ?",
                       [categories_before]).fetchall()[0]
    if not span[2]:
        raise NotEnoughData(_no_orders_before(con, categories_before))
    cats = _categories(con, categories_before, allowed)
    con.execute("create or replace temp table rp_categories (category varchar)")
    if cats:
        con.executemany("insert into rp_categories values (?)", [[c] for c in cats])
    persons, tracks, orders, sampled = 1.0, None, "rp_orders", ""
    if sample is not None:
        tracks = con.execute("""
            select count(distinct person_id)
                   + count(distinct (person_id, category)) filter (where category in (select category from rp_categories))
            from rp_orders where day < ?""", [categories_before]).fetchall()[0][0]
        persons = min(1.0, sample(tracks))
    if persons < 1.0:
        # buyers per track and week of everybody (what rp_pw's rows per week count), then only the sample
        con.execute(f"""
            create or replace temp table rp_season as
            select '{ANY}' as category, week, count(distinct person_id) as buyers from rp_orders group by all
            union all
            select category, week, count(distinct person_id) from rp_orders
            where category in (select category from rp_categories) group by all
        """)
        sampled = f" and hash(person_id::varchar) % 1000000 < {int(persons * 1_000_000)}"
        orders = f"(select * from rp_orders where true{sampled})"
    # weekly aggregates per track in three plain group-bys (order-day, day, week) instead of distinct
    # counts over every line twice over: an order is counted once per day it has lines on
    con.execute(f"""
        create or replace temp table rp_pw as
        with lines as (
            select person_id, '{ANY}' as track, day, week, order_id, qty, amount, status from {orders}
            union all
            select person_id, category, day, week, order_id, qty, amount, status from {orders}
            where category in (select category from rp_categories)
        ), order_days as (
            select person_id, track, week, day, order_id, sum(qty) as qty, sum(amount) as amount,
                   count(*) filter (where status = 'returned') as returns
            from lines group by all
        ), days as (
            select person_id, track, week, day, count(*) as n_orders, sum(qty) as qty, sum(amount) as amount,
                   sum(returns) as returns
            from order_days group by all
        ), w as (
            select person_id, track, week, sum(n_orders) as n_orders, sum(qty) as qty, sum(amount) as amount,
                   sum(returns) as returns, count(*) as days, min(day) as first_day, max(day) as last_day
            from days group by all
        )
        select *, (week - lag(week) over (partition by person_id, track order by week)) // 7 as gap
        from w
    """)
    if persons == 1.0:
        con.execute("create or replace temp table rp_season as "
                    "select track as category, week, count(*) as buyers from rp_pw group by all")
    has_events = _has_rows(con, "person_events")
    if has_events:
        ecols = columns(con, "person_events")
        ecat = _col(ecols, "category", "null")
        channel = _col(ecols, "channel", "null")
        con.execute(f"""
            create or replace temp table rp_ev as
            with e as (
                select person_id::varchar as person_id, date_trunc('week', "timestamp")::date as week,
                       lower(event_type::varchar) as event_type, nullif(trim({ecat}::varchar), '') as category,
                       {channel}::varchar as channel
                from person_events
                where person_id is not null and "timestamp" < ? and "timestamp" >= ?{sampled}
            ), tracked as (
                select person_id, '{ANY}' as track, week, event_type, channel from e
                union all
                select person_id, category, week, event_type, channel from e
                where category in (select category from rp_categories)
            )
            select person_id, track, week, count(*) as events,
                   count(*) filter (where event_type = 'product_view') as views,
                   count(*) filter (where event_type = 'add_to_cart') as carts,
                   list(distinct channel) filter (where channel is not null) as channels
            from tracked group by all
        """, [data_end, first_origin - timedelta(days=EVENT_DAYS) if first_origin else date.min])
    has_interactions = _has_rows(con, "person_interactions")
    if has_interactions:
        icols = columns(con, "person_interactions")
        icat = _col(icols, "category", "null")
        itype = _col(icols, "type", "null")
        con.execute(f"""
            create or replace temp table rp_ix as
            with i as (
                select person_id::varchar as person_id, date_trunc('week', "timestamp")::date as week,
                       coalesce(lower({itype}::varchar), '') as type, nullif(trim({icat}::varchar), '') as category
                from person_interactions
                where person_id is not null and "timestamp" < ?{sampled}
            ), tracked as (
                select person_id, '{ANY}' as track, week, type from i
                union all
                select person_id, category, week, type from i where category in (select category from rp_categories)
            )
            select person_id, track, week, count(*) as contacts,
                   count(*) filter (where type like '%complaint%' and type not like '%resolved%') as complaints
            from tracked group by all
        """, [data_end])
    return Inputs(cats, has_events, has_interactions, span[0], span[1], categories_before, persons, tracks)


def _categories(con: duckdb.DuckDBPyConnection, before: date, allowed: Sequence[str]) -> tuple[str, ...]:
    """Category tracks decided on the loaded orders before ``before`` (one category is the any-category track)."""
    found = [r[0] for r in con.execute(
        "select category from rp_orders where day < ? and category is not null group by 1 order by 1",
        [before]).fetchall()]
    if allowed:
        found = [c for c in found if c in set(allowed)]
    return tuple(found) if len(found) >= 2 or allowed else ()


def prepared_for(con: duckdb.DuckDBPyConnection, inputs: Inputs, categories_before: date,
                 allowed: Sequence[str] = ()) -> Inputs | None:
    """The prepared tables as :func:`prepare` with the same ``data_end`` and ``categories_before`` would
    build them, or None when that would differ (other categories, or other persons objecting to profiling).

    A training run backtests at C and then fits at C + H on the same data: its second preparation is
    usually identical, and at a million persons it costs minutes.
    """
    if inputs.persons < 1.0 or _categories(con, categories_before, allowed) != inputs.categories:
        return None
    con.execute(f"create or replace temp table rp_objections as select person_id from "
                f"{profiling_objections(con, inputs.decided_before)}")
    later = profiling_objections(con, categories_before)
    changed = con.execute(f"""select count(*) from (
        (select person_id from rp_objections except select person_id from {later})
        union all (select person_id from {later} except select person_id from rp_objections))""").fetchall()[0][0]
    if changed:
        return None
    span = con.execute("select min(day), max(day) from rp_orders where day < ?", [categories_before]).fetchall()[0]
    return Inputs(inputs.categories, inputs.has_events, inputs.has_interactions, span[0], span[1], categories_before)


def fingerprint(con: duckdb.DuckDBPyConnection, data_end: date, categories_before: date) -> str:
    """Content hash of everything :func:`prepare` would read for these dates (counts and hashes only).

    Order-independent row hashes of orders, events and contacts before ``data_end`` and of the profiling
    objections as of ``categories_before``: equal fingerprints mean equal person-periods, baselines and
    labels, so a stored backtest can be reused without preparing anything.
    """
    parts = []
    for view, column in (("person_orders", "ordered_at"), ("person_events", '"timestamp"'),
                         ("person_interactions", '"timestamp"')):
        if table_exists(con, view):
            parts.append(con.execute(f"select count(*), coalesce(sum(hash(t)), 0)::varchar from {view} t "
                                     f"where {column} < ?", [data_end]).fetchall()[0])
        else:
            parts.append(None)
    objections = profiling_objections(con, categories_before)
    parts.append(con.execute(f"select count(*), coalesce(sum(hash(person_id)), 0)::varchar from {objections}"
                             ).fetchall()[0])
    return repr(parts)


def tracks_before(con: duckdb.DuckDBPyConnection, inputs: Inputs, end: date) -> int:
    """Number of tracks with a purchase before ``end`` (sizes the training sample)."""
    if inputs.tracks is not None and end == inputs.decided_before:
        return inputs.tracks  # counted by prepare before it sampled persons
    if inputs.persons < 1.0:
        raise ValueError("repurchase: the tracks of a sampled preparation are counted at its own date only")
    return con.execute("select count(*) from (select distinct person_id, track from rp_pw where week < ?)",
                       [end]).fetchall()[0][0]


def track_frame(con: duckdb.DuckDBPyConnection, inputs: Inputs, origins: Sequence[date], horizon: int,
                max_weeks_at_risk: int, sample: float = 1.0) -> pd.DataFrame:
    """One row per (origin, track at risk) with the origin's features and the window's purchase weeks.

    A track is at risk at an origin when it has a purchase before it, at most ``max_weeks_at_risk``
    weeks earlier. ``mask`` has bit k-1 set when the track bought in week k after the origin (k <= H).
    ``sample`` < 1 keeps a deterministic hash sample of persons (the same at every origin; training at scale).
    """
    con.execute("create or replace temp table rp_origins (origin date)")
    con.executemany("insert into rp_origins values (?)", [[o] for o in sorted(set(origins))])
    pw, ev, ix = "rp_pw", "rp_ev", "rp_ix"
    if sample < 1.0:  # the same persons at every origin; filtered before the range joins
        threshold = int(sample * 1_000_000)
        tables = ["rp_pw"] + ["rp_ev"] * inputs.has_events + ["rp_ix"] * inputs.has_interactions
        for table in tables:
            con.execute(f"create or replace temp table {table}_s as select * from {table} "
                        "where hash(person_id) % 1000000 < ?", [threshold])
        pw, ev, ix = "rp_pw_s", "rp_ev_s", "rp_ix_s"
    con.execute(f"""
        create or replace temp table rp_base as
        select o.origin, p.person_id, p.track,
               count(*) as n_weeks_bought, sum(p.n_orders) as n_orders, sum(p.qty) as qty_total,
               coalesce(sum(p.amount), 0) as amount_total, sum(p.returns) as returns,
               min(p.week) as first_week, max(p.week) as last_week, sum(p.days) as n_days,
               min(p.first_day) as first_day, max(p.last_day) as last_day,
               avg(p.gap) as int_mean, median(p.gap) as int_median, stddev_samp(p.gap) as int_sd,
               min(p.gap) as int_min, arg_max(p.gap, p.week) as int_last, arg_max(p.qty, p.week) as qty_last,
               arg_max(p.amount, p.week) as amount_last,
               count(*) filter (where p.week >= o.origin - 91) as n_13w,
               count(*) filter (where p.week >= o.origin - 182) as n_26w,
               count(*) filter (where p.week >= o.origin - 364) as n_52w
        from rp_origins o join {pw} p on p.week < o.origin
        group by all
        having max(p.week) >= o.origin - ?
    """, [max_weeks_at_risk * 7])
    events = f"""
        left join (
            select o.origin, e.person_id, e.track,
                   sum(e.views) filter (where e.week >= o.origin - 7) as views_1w,
                   sum(e.views) filter (where e.week >= o.origin - 14) as views_2w,
                   sum(e.views) filter (where e.week >= o.origin - 28) as views_4w,
                   sum(e.views) as views_12w,
                   sum(e.carts) filter (where e.week >= o.origin - 7) as carts_1w,
                   sum(e.carts) filter (where e.week >= o.origin - 14) as carts_2w,
                   sum(e.carts) filter (where e.week >= o.origin - 28) as carts_4w,
                   sum(e.carts) as carts_12w,
                   sum(e.events) filter (where e.week >= o.origin - 28) as events_4w,
                   sum(e.events) as events_12w,
                   length(list_distinct(flatten(list(e.channels)))) as channels_12w
            from rp_origins o join {ev} e on e.week < o.origin and e.week >= o.origin - {EVENT_DAYS}
            group by all
        ) ev on ev.origin = b.origin and ev.person_id = b.person_id and ev.track = b.track""" if inputs.has_events else ""
    contacts = f"""
        left join (
            select o.origin, i.person_id, i.track, sum(i.complaints) as complaints,
                   sum(i.complaints) filter (where i.week >= o.origin - 84) as complaints_12w,
                   sum(i.contacts) filter (where i.week >= o.origin - 84) as contacts_12w
            from rp_origins o join {ix} i on i.week < o.origin
            group by all
        ) ix on ix.origin = b.origin and ix.person_id = b.person_id and ix.track = b.track""" if inputs.has_interactions else ""
    ev_cols = ", ".join(f"coalesce(ev.{c}, 0)::double as {c}" if inputs.has_events else f"0::double as {c}"
                        for c in ("views_1w", "views_2w", "views_4w", "views_12w", "carts_1w", "carts_2w",
                                  "carts_4w", "carts_12w", "events_4w", "events_12w", "channels_12w"))
    ix_cols = ", ".join(f"coalesce(ix.{c}, 0)::double as {c}" if inputs.has_interactions else f"0::double as {c}"
                        for c in ("complaints", "complaints_12w", "contacts_12w"))
    query = f"""
        with anyt as (
            select origin, person_id, n_weeks_bought as n_weeks_any, n_13w as n_13w_any, last_week as last_week_any,
                   first_week as first_week_any
            from rp_base where track = '{ANY}'
        ), ncat as (
            select origin, person_id, count(*) filter (where track <> '{ANY}') as n_categories
            from rp_base group by all
        ), last_year as (
            select o.origin, p.person_id, p.track,
                   bit_or((1::bigint) << ((p.week - (o.origin - 371)) // 7)::int) as ly_mask
            from rp_origins o join {pw} p on p.week >= o.origin - 371 and p.week < o.origin - 371 + ?
            group by all
        ), window_weeks as (
            select o.origin, p.person_id, p.track, bit_or((1::bigint) << ((p.week - o.origin) // 7)::int) as mask
            from rp_origins o join {pw} p on p.week >= o.origin and p.week < o.origin + ?
            group by all
        )
        select b.origin, b.person_id, b.track as category,
               (b.origin - b.last_week) // 7 as weeks_since_origin, (b.origin - a.last_week_any) // 7 as weeks_since_any_origin,
               (b.origin - b.last_day) / 7.0 as recency_exact, (b.last_day - b.first_day) / 7.0 as t_x_exact,
               (b.origin - b.first_day) / 7.0 as age_exact, b.n_days::double as n_days,
               b.n_weeks_bought::double as n_weeks_bought, b.n_orders::double as n_orders, b.qty_total,
               b.amount_total, b.amount_total / nullif(b.n_orders, 0) as amount_per_order, b.returns::double as returns,
               b.int_mean, b.int_median::double as int_median, b.int_sd, b.int_sd / nullif(b.int_mean, 0) as int_cv,
               b.int_min::double as int_min, b.int_last::double as int_last, b.qty_last, b.amount_last,
               b.n_13w::double as n_13w, b.n_26w::double as n_26w, b.n_52w::double as n_52w,
               (2 * b.n_13w - b.n_26w)::double as trend_13w, b.int_last / nullif(b.int_median, 0) as int_last_ratio,
               ((b.origin - b.first_week) // 7)::double as tenure_weeks,
               52.0 * b.n_weeks_bought / greatest((b.origin - b.first_week) / 7.0, 4) as weeks_bought_per_year,
               a.n_weeks_any::double as n_weeks_any, a.n_13w_any::double as n_13w_any,
               (a.n_13w_any - case when b.track = '{ANY}' then 0 else b.n_13w end)::double as other_13w,
               n.n_categories::double as n_categories, ((b.origin - a.first_week_any) // 7)::double as tenure_weeks_any,
               {ev_cols}, {ix_cols},
               coalesce(ly.ly_mask, 0) as ly_mask, coalesce(w.mask, 0) as mask
        from rp_base b
        join anyt a using (origin, person_id)
        join ncat n using (origin, person_id)
        left join window_weeks w on w.origin = b.origin and w.person_id = b.person_id and w.track = b.track
        left join last_year ly on ly.origin = b.origin and ly.person_id = b.person_id and ly.track = b.track
        {events}
        {contacts}
        order by b.origin, b.person_id, b.track
    """
    frame = con.execute(query, [(horizon + 2) * 7, horizon * 7]).df()
    frame["origin"] = pd.to_datetime(frame["origin"])
    return frame


def first_week(mask: np.ndarray) -> np.ndarray:
    """Week (1-based) of the first purchase encoded in a window mask; 0 when none."""
    mask = np.asarray(mask, dtype=np.int64)
    low = mask & -mask
    out = np.zeros(len(mask), dtype=np.int64)
    hit = low > 0
    out[hit] = np.log2(low[hit]).round().astype(np.int64) + 1
    return out


def _weeks_to_peak(week_start: np.ndarray, peaks: Sequence[str]) -> np.ndarray:
    """Weeks from each target week's Monday to the next seasonal peak (MM-DD list from features settings)."""
    days = pd.to_datetime(pd.Series(week_start))
    best = np.full(len(days), 53.0)
    for peak in peaks:
        month, day = (int(x) for x in peak.split("-"))
        this_year = pd.to_datetime(dict(year=days.dt.year, month=month, day=day))
        nxt = this_year.where(this_year >= days, pd.to_datetime(dict(year=days.dt.year + 1, month=month, day=day)))
        best = np.minimum(best, ((nxt - days).dt.days // 7).to_numpy(dtype=float))
    return best


def season_table(con: duckdb.DuckDBPyConnection, before: date) -> pd.DataFrame:
    """Buyers per category track and week before ``before``: last year's seasonal pattern per category."""
    return con.execute("select category, week, buyers from rp_season where week < ?", [before]).df()


def _season_index(season: pd.DataFrame, category: np.ndarray, week_start: pd.Series) -> np.ndarray:
    """Buyers in the same week last year relative to the 17 weeks around it (1 = an ordinary week).

    Looks at weeks 44..60 before the target week only, so it is known at any origin up to 44 weeks earlier.
    """
    if not len(season):
        return np.full(len(category), np.nan)
    wide = season.assign(week=pd.to_datetime(season["week"])).pivot_table(
        index="week", columns="category", values="buyers", aggfunc="sum")
    wide = wide.reindex(pd.date_range(wide.index.min(), wide.index.max(), freq="7D")).fillna(0.0)
    around = wide.rolling(17, center=True, min_periods=9).mean()
    index = (wide / around.where(around > 0)).stack()
    index.index.names = ["week", "category"]
    key = pd.MultiIndex.from_arrays([pd.to_datetime(week_start) - pd.Timedelta(weeks=52), category],
                                    names=["week", "category"])
    return index.reindex(key).to_numpy(dtype=float)


def expand(frame: pd.DataFrame, horizon: int, observed_weeks: np.ndarray | None, peaks: Sequence[str],
           categories: Sequence[str], stop_at_purchase: bool, season: pd.DataFrame | None = None) -> pd.DataFrame:
    """Turn (origin, track) rows into (origin, track, week k) rows with step features and labels.

    Training (``stop_at_purchase``): steps run until the first purchase in the window (label 1) or until
    the last observed week (censored, labels 0). Prediction: all H steps.
    """
    n = len(frame)
    first = first_week(frame["mask"].to_numpy())
    if stop_at_purchase:
        obs = np.full(n, horizon) if observed_weeks is None else np.minimum(observed_weeks, horizon)
        length = np.where((first > 0) & (first <= obs), first, obs).astype(np.int64)
    else:
        length = np.full(n, horizon, dtype=np.int64)
    idx = np.repeat(np.arange(n), length)
    starts = np.repeat(np.cumsum(length) - length, length)
    step = np.arange(len(idx)) - starts + 1
    # purchase weeks of the track in the same H weeks one year earlier (bits 1..H of the last-year mask)
    ly = frame["ly_mask"].to_numpy(dtype=np.int64)
    ly_window = ((ly[:, None] >> np.arange(1, horizon + 1)[None, :]) & 1).sum(axis=1).astype(float)
    out = frame.drop(columns=["person_id"], errors="ignore").iloc[idx].reset_index(drop=True)
    out["ly_window"] = ly_window[idx]
    out["step"] = step.astype(float)
    out["label"] = (first[idx] == step).astype(np.int8)
    out["bought"] = ((out["mask"].to_numpy() >> (step - 1)) & 1).astype(np.int8)
    ws = out["weeks_since_origin"].to_numpy(dtype=float) + step - 1
    out["weeks_since"] = ws
    out["weeks_since_exact"] = out["recency_exact"].to_numpy(dtype=float) + step - 1  # day precision
    out["weeks_since_any"] = out["weeks_since_any_origin"].to_numpy(dtype=float) + step - 1
    median = out["int_median"].to_numpy(dtype=float)
    mean = out["int_mean"].to_numpy(dtype=float)
    sd = out["int_sd"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["ratio_median"] = np.where(median > 0, ws / median, np.nan)
        out["ratio_mean"] = np.where(mean > 0, ws / mean, np.nan)
        out["z_interval"] = np.where(sd > 0, (ws - mean) / sd, np.nan)
    out["weeks_past_median"] = ws - median
    week_start = pd.to_datetime(out["origin"]) + pd.to_timedelta((step - 1) * 7, unit="D")
    out["week_start"] = week_start.to_numpy()
    out["weeks_to_peak"] = _weeks_to_peak(week_start.to_numpy(), peaks)
    # the track bought in the same week of last year (+-1 week): bits k-1..k+1 of the mask starting 53 weeks back
    out["bought_last_year"] = ((out["ly_mask"].to_numpy(dtype=np.int64) >> (step - 1)) & 7 > 0).astype(float)
    out["season_index"] = _season_index(season, out["category"].astype(str).to_numpy(), week_start) \
        if season is not None else np.nan
    out["category"] = pd.Categorical(out["category"], categories=list(categories))
    return out


class TrackWeeks:
    """The prediction rows of :func:`expand` (every track x weeks 1..H, track-major) as columns, not a frame.

    Scoring millions of tracks through ``expand`` copies every track column H times and recomputes per row
    what only depends on the track (the season lookups, the category codes) or on the week (weeks to the
    peak). Here a track column is repeated only when asked for, and the week features are computed as a
    (tracks x H) grid from the track's row: the same arithmetic on the same values, so every column equals
    ``expand(..., stop_at_purchase=False)``'s value for value (a test checks).
    """

    def __init__(self, frame: pd.DataFrame, horizon: int, peaks: Sequence[str], season: pd.DataFrame | None):
        self.frame = frame
        self.horizon = horizon
        self.peaks = tuple(peaks)
        self.season = season
        self.steps = np.arange(1, horizon + 1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.frame) * self.horizon

    def track(self, name: str) -> np.ndarray:
        """One value per track (float, missing as NaN)."""
        return self.frame[name].to_numpy(dtype=float, na_value=np.nan)

    def repeat(self, values: np.ndarray) -> np.ndarray:
        """A per-track array as one value per prediction row."""
        return np.repeat(values, self.horizon)

    def _week_starts(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct origins' target-week Mondays (origins x H) and each track's origin index."""
        origins, where = np.unique(pd.to_datetime(self.frame["origin"]).to_numpy(dtype="datetime64[ns]"),
                                   return_inverse=True)
        weeks = origins[:, None] + ((self.steps - 1) * 7).astype("timedelta64[D]")[None, :]
        return weeks, where

    def grid(self, name: str) -> np.ndarray:
        """A week feature of :data:`STEP_FEATURES` as a (tracks x H) grid."""
        step = self.steps[None, :]
        if name == "step":
            return np.broadcast_to(step.astype(float), (len(self.frame), self.horizon))
        if name == "bought_last_year":
            ly = self.frame["ly_mask"].to_numpy(dtype=np.int64)[:, None]
            return ((ly >> (step - 1)) & 7 > 0).astype(float)
        if name in ("weeks_to_peak", "season_index"):
            weeks, where = self._week_starts()
            if name == "weeks_to_peak":
                return _weeks_to_peak(weeks.ravel(), self.peaks).reshape(weeks.shape)[where]
            if self.season is None:
                return np.full((len(self.frame), self.horizon), np.nan)
            # one lookup per distinct (origin, category): the index depends on nothing else
            codes, names = pd.factorize(self.frame["category"].astype(str))
            pairs, pair_of = np.unique(where * len(names) + codes, return_inverse=True)
            cats = np.repeat(names.to_numpy()[pairs % len(names)], self.horizon)
            starts = pd.Series(weeks[pairs // len(names)].ravel())
            return _season_index(self.season, cats, starts).reshape(len(pairs), self.horizon)[pair_of]
        if name == "weeks_since_exact":
            return self.track("recency_exact")[:, None] + step - 1
        if name == "weeks_since_any":
            return self.track("weeks_since_any_origin")[:, None] + step - 1
        ws = self.track("weeks_since_origin")[:, None] + step - 1
        if name == "weeks_since":
            return ws
        median = self.track("int_median")[:, None]
        mean = self.track("int_mean")[:, None]
        sd = self.track("int_sd")[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            if name == "ratio_median":
                return np.where(median > 0, ws / median, np.nan)
            if name == "ratio_mean":
                return np.where(mean > 0, ws / mean, np.nan)
            if name == "z_interval":
                return np.where(sd > 0, (ws - mean) / sd, np.nan)
        if name == "weeks_past_median":
            return ws - median
        raise KeyError(name)

    def column(self, name: str) -> np.ndarray:
        """Any feature column but the category, one float per prediction row."""
        if name in STEP_FEATURES:
            return np.ascontiguousarray(self.grid(name)).ravel()
        if name == "ly_window":  # purchase weeks in bits 1..H of last year's mask: one value per track
            ly = self.frame["ly_mask"].to_numpy(dtype=np.int64)
            return self.repeat(((ly[:, None] >> np.arange(1, self.horizon + 1)[None, :]) & 1).sum(axis=1).astype(float))
        return self.repeat(self.track(name))


def bgnbd_frame(con: duckdb.DuckDBPyConnection, cutoff: date) -> pd.DataFrame:
    """Per-track (x, t_x, T) in weeks from distinct purchase days before ``cutoff`` (BG/NBD inputs).

    From the weekly aggregates: ``cutoff`` is a Monday, so the weeks before it hold exactly its days.
    """
    return con.execute("""
        select person_id, track as category, sum(days) - 1 as x,
               (max(last_day) - min(first_day)) / 7.0 as t_x, (?::date - min(first_day)) / 7.0 as "T"
        from rp_pw where week < ? group by all
    """, [cutoff, monday(cutoff)]).df()


def naive_frame(con: duckdb.DuckDBPyConnection, cutoff: date) -> pd.DataFrame:
    """Last purchase week and median own interval per track; the track's category median when it has none."""
    return con.execute("""
        with own as (
            select person_id, track, max(week) as last_week, median(gap) as own_median
            from rp_pw where week < ? group by all
        ), pop as (
            select track, median(gap) as pop_median from rp_pw where week < ? and gap is not null group by all
        )
        select person_id, track as category, last_week,
               coalesce(own_median, pop_median, 52)::double as interval_weeks
        from own left join pop using (track)
    """, [cutoff, cutoff]).df()


def monday(d: date) -> date:
    return d - timedelta(days=d.weekday())
