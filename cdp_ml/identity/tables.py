"""The identity tables other stages read: person_map, identity_edges, profiles and the person_* views."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from cdp_ml.engine import columns, table_exists
from cdp_ml.sources.kinds import KINDS, LINEAGE_COLUMNS
from cdp_ml.sources.normalise import canonical_event_names, lit
from cdp_ml.workspace import Workspace

VIEW_KEYS = {  # view -> (staging table, identifiers tried in order)
    "person_events": ("events", ("customer_ref", "anonymous_id")),
    "person_orders": ("orders", ("customer_ref",)),
    "person_sessions": ("sessions", ("customer_ref", "anonymous_id")),
    "person_interactions": ("interactions", ("customer_ref", "email", "phone")),
    "person_consents": ("consents", ("customer_ref", "email", "phone")),
}
_SQL_TYPES = {"varchar": "varchar", "timestamp": "timestamp", "date": "date", "double": "double", "boolean": "boolean"}


def create_views(con: duckdb.DuckDBPyConnection, purchase_types: Sequence[str] = ("purchase",)) -> None:
    """Views joining each staging table to its person (NULL when the identifier is unresolved).

    A workspace without an orders source whose events record purchases (RetailRocket, REES46, GA4 exports)
    gets ``person_orders`` from those purchase events, so repurchase timing and the segments' purchase
    history work on an event log alone.
    """
    for view, (table, keys) in VIEW_KEYS.items():
        if table_exists(con, table):
            source = f'"{table}"'
            have = set(columns(con, table))
        else:  # an empty, typed stand-in so later stages can always query the view
            cols = [f"cast(null as {_SQL_TYPES[f.type]}) as \"{f.name}\"" for f in KINDS[table]]
            cols += [f"cast(null as {t}) as \"{n}\"" for n, t in LINEAGE_COLUMNS]
            cols += ["cast(null as varchar) as ref_source", "cast(null as varchar) as ref_key"]
            source = f"(select {', '.join(cols)} where false)"
            have = {f.name for f in KINDS[table]}
        joins, picks = [], []
        for i, key in enumerate(k for k in keys if k in have):
            joins.append(f"""left join person_map m{i} on m{i}.source = t.source and m{i}.id_type = '{key}'
                             and m{i}.record_id = cast(t."{key}" as varchar)""")
            picks.append(f"m{i}.person_id")
        person = f"coalesce({', '.join(picks)})" if len(picks) > 1 else (picks[0] if picks else "cast(null as varchar)")
        con.execute(f"create or replace view {view} as select t.*, {person} as person_id "
                    f"from {source} t {' '.join(joins)}")
    no_orders = not table_exists(con, "orders") or not con.execute("select exists (from orders)").fetchall()[0][0]
    if no_orders and table_exists(con, "events"):
        _orders_from_purchase_events(con, purchase_types)


def _orders_from_purchase_events(con: duckdb.DuckDBPyConnection, purchase_types: Sequence[str]) -> None:
    """``person_orders`` as order lines of the purchase events: the items one visitor bought at one instant
    are one order; amount is the event value, quantity 1."""
    names = canonical_event_names(con, purchase_types)
    purchase = f"event_type in ({', '.join(lit(n) for n in names)})"
    if not names or not con.execute(f"select exists (select 1 from events where {purchase})").fetchall()[0][0]:
        return
    buyer = "coalesce(person_id, 'ref:' || customer_ref, 'anon:' || anonymous_id)"
    lineage = ", ".join(f'"{n}"' for n, _ in LINEAGE_COLUMNS)
    con.execute(f"""create or replace view person_orders as
        select ({buyer}) || '@' || strftime("timestamp", '%Y-%m-%dT%H:%M:%S.%f') as order_id,
               customer_ref, "timestamp" as ordered_at, product_id, category, 1.0::double as quantity,
               "value" as amount, 'completed' as status, "value" as unit_price, {lineage}, ref_source, ref_key, person_id
        from person_events where {purchase}""")


def write_priority(con: duckdb.DuckDBPyConnection, ws: Workspace) -> None:
    """``_id_priority(source, rank)``: survivorship order (identity.source_priority, then trust, then file order)."""
    explicit = list(ws.config.identity.source_priority)
    ranked = []
    for i, src in enumerate(ws.config.sources):
        if src.name in explicit:
            rank = explicit.index(src.name)
        elif src.trust is not None:
            rank = 1000 + src.trust
        else:
            rank = 100000 + i
        ranked.append([src.name, rank])
    con.execute("create or replace temp table _id_priority(source varchar, rank bigint)")
    if ranked:
        con.executemany("insert into _id_priority values (?, ?)", ranked)


def write_profiles(con: duckdb.DuckDBPyConnection, ws: Workspace) -> int:
    """One golden record per person: most trusted source first, then the most recent value.

    Lists are sorted: the same persons always give the same profiles (a re-run can be compared, or skipped).
    Activity (first/last seen, events) comes from ``_id_activity``, already cut at the as-of date.
    """
    write_priority(con, ws)
    have = set(columns(con, "customers")) if table_exists(con, "customers") else set()

    def c(name: str, typ: str = "varchar") -> str:
        return f'c."{name}"' if name in have else f"cast(null as {typ})"

    fields = [("email", "varchar"), ("phone", "varchar"), ("first_name", "varchar"), ("last_name", "varchar"),
              ("date_of_birth", "date"), ("street", "varchar"), ("house_number", "varchar"), ("postcode", "varchar"),
              ("city", "varchar"), ("country", "varchar"), ("gender", "varchar")]
    if have:
        recent = f"coalesce({c('updated_at', 'timestamp')}, {c('created_at', 'timestamp')})"
        select = ", ".join(f"{c(f, t)} as {f}" for f, t in fields)
        records = f"""select m.person_id, c.source, coalesce(p.rank, 999999) as rank, {recent} as recent,
            {c('created_at', 'timestamp')} as created_at, {select}
            from customers c join person_map m on m.id_type = 'record' and m.source = c.source
              and m.record_id = cast(c.record_id as varchar)
            left join _id_priority p on p.source = c.source where m.person_id is not null"""
    else:
        nulls = ", ".join(f"cast(null as {t}) as {f}" for f, t in fields)
        records = (f"select null::varchar person_id, null::varchar source, 0 rank, null::timestamp recent, "
                   f"null::timestamp created_at, {nulls} where false")
    golden = ", ".join(f"first({f} order by rank, recent desc nulls last) filter (where {f} is not null) as {f}"
                       for f, _ in fields)
    con.execute(_profiles_sql(records, golden, fields))
    return con.execute("select count(*) from profiles").fetchall()[0][0]


def _profiles_sql(records: str, golden: str, fields: list[tuple[str, str]]) -> str:
    return f"""create or replace table profiles as
        with rec as ({records}),
        g as (
          select person_id, {golden}, count(*) as n_records, min(least(created_at, recent)) as rec_first,
            max(recent) as rec_last,
            list_sort(list(distinct case when street is not null or postcode is not null then
              concat_ws(' ', street, house_number) || ', ' || concat_ws(' ', postcode, city) end)) as addresses
          from rec group by person_id),
        contacts as (
          select person_id, list_sort(list(distinct email) filter (where email is not null)) as emails,
            list_sort(list(distinct phone) filter (where phone is not null)) as phones
          from (select person_id, email, phone from rec
                union all select person_id, case when id_type = 'email' then record_id end,
                  case when id_type = 'phone' then record_id end from person_map
                where id_type in ('email', 'phone') and person_id is not null)
          group by person_id),
        activity as (  -- the person_* views' rows, pre-aggregated per identifier combination (inputs._references)
          select person_id, min(first_ts) as first_seen, max(last_ts) as last_seen,
            coalesce(sum(n_rows) filter (where kind = 'events'), 0)::bigint as n_events
          from (select coalesce(m0.person_id, m1.person_id, m2.person_id, m3.person_id) as person_id, a.kind,
                  a.first_ts, a.last_ts, a.n_rows
                from _id_activity a
                left join person_map m0 on m0.source = a.source and m0.id_type = 'customer_ref'
                  and m0.record_id = a.customer_ref
                left join person_map m1 on a.kind = 'events' and m1.source = a.source and m1.id_type = 'anonymous_id'
                  and m1.record_id = a.anonymous_id
                left join person_map m2 on a.kind in ('interactions', 'consents') and m2.source = a.source
                  and m2.id_type = 'email' and m2.record_id = a.email
                left join person_map m3 on a.kind in ('interactions', 'consents') and m3.source = a.source
                  and m3.id_type = 'phone' and m3.record_id = a.phone
                where a.kind in ('events', 'orders', 'interactions', 'consents')) x
          where person_id is not null
          group by person_id),
        srcs as (
          select person_id, list(distinct source order by source) as sources from person_map
          where person_id is not null group by person_id)
        select s.person_id, {', '.join(f'g.{f}' for f, _ in fields)},
          coalesce(ct.emails, []) as emails, coalesce(ct.phones, []) as phones,
          coalesce(list_filter(g.addresses, lambda a: a is not null), []) as addresses,
          least(g.rec_first, a.first_seen) as first_seen, greatest(g.rec_last, a.last_seen) as last_seen,
          s.sources, coalesce(g.n_records, 0) as n_records, coalesce(a.n_events, 0) as n_events
        from srcs s left join g using (person_id) left join contacts ct using (person_id)
        left join activity a using (person_id)
        order by s.person_id"""
