"""Identity inputs: match-ready customer records, the identifier graph's nodes and deterministic edges.

Everything here is SQL over the staging tables (temp tables on one connection), so it scales with the
engine rather than with Python. Identifier values are linked through *hub* nodes (one per distinct
email, phone or customer id) instead of record pairs: a value shared by n records costs n edges, not n².
A hub only links when its value is trustworthy: not a placeholder, used by at most
``max_records_per_identifier`` records, and not shared by records of clearly different people.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from importlib import resources

import duckdb

from cdp_ml.engine import columns, table_exists
from cdp_ml.errors import CdpError
from cdp_ml.identity.settings import IdentitySettings, MatchField
from cdp_ml.workspace import Workspace

# Kinds whose rows carry identifiers, with the identifier columns they may hold.
REFERENCE_COLUMNS = {
    "events": ("customer_ref", "anonymous_id"),
    "orders": ("customer_ref",),
    "sessions": ("customer_ref", "anonymous_id"),
    "interactions": ("customer_ref", "email", "phone"),
    "consents": ("customer_ref", "email", "phone"),
}
HUB_KINDS = ("email", "phone", "customer_id")
# A first name and date of birth this different mean two people, whatever they share.
NAME_CONFLICT_JW = 0.8
DOB_CONFLICT_DAYS = 366
ALIAS_MIN_SHARE = 0.05  # a learned first-name alias must cover this share of the rarer name's records


@dataclass(frozen=True)
class MatchColumn:
    """A column of the match table and how Splink compares it."""

    name: str
    comparison: str  # first_name, last_name, dob, address, postcode, city, email, phone, exact, levenshtein, jaro_winkler, date
    person_level: bool  # evidence about the individual (not shared by a household)
    block: bool = False


def dob_conflict_sql(a: str, b: str) -> str:
    """SQL: two known birth dates more than a year apart that are not one typo (1985 ~ 1958) of each other."""
    return (f"coalesce(abs(datediff('day', {a}, {b})) > {DOB_CONFLICT_DAYS} and damerau_levenshtein("
            f"strftime({a}, '%Y%m%d'), strftime({b}, '%Y%m%d')) > 1, false)")


def load_nicknames(ws: Workspace, settings: IdentitySettings) -> list[tuple[str, str]]:
    """Built-in Dutch/English nickname table plus the workspace's own file; first mapping of a name wins."""
    text = resources.files("cdp_ml.identity").joinpath("nicknames.txt").read_text(encoding="utf-8")
    if settings.nicknames:
        path = ws.path(settings.nicknames)
        if not path.is_file():
            raise CdpError(f"identity.nicknames: file {settings.nicknames!r} does not exist in {ws.root}")
        text = path.read_text(encoding="utf-8") + "\n" + text  # the workspace's own mappings win
    pairs: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "," not in line:
            continue
        nick, canonical = (p.strip().lower() for p in line.split(",", 1))
        if nick and canonical:
            pairs.setdefault(nick, canonical)
    return sorted(pairs.items())


def _col(available: set[str], name: str, sql_type: str = "varchar") -> str:
    return f'"{name}"' if name in available else f"cast(null as {sql_type})"


def _text(expr: str) -> str:
    """Lower-case ASCII letters and digits only: robust to accents, spaces and punctuation."""
    return f"nullif(regexp_replace(lower(strip_accents(trim(cast({expr} as varchar)))), '[^a-z0-9]', '', 'g'), '')"


def _not_blocked(expr: str) -> str:
    return f"case when lower(cast({expr} as varchar)) in (select value from _id_blocklist) then null else {expr} end"


def _extra_expr(field: MatchField, available: set[str]) -> str:
    if field.column in available:
        raw = f'cast("{field.column}" as varchar)'
    elif "attributes" in available:
        path = "$." + '"' + field.column.replace('"', '') + '"'
        raw = "json_extract_string(attributes, '" + path.replace("'", "''") + "')"
    else:
        raw = "cast(null as varchar)"
    raw = _not_blocked(f"nullif(trim({raw}), '')")
    if field.comparison == "date":
        return (f"coalesce(try_cast({raw} as date), try_strptime({raw}, '%Y%m%d')::date, "
                f"try_strptime({raw}, '%d-%m-%Y')::date, try_strptime({raw}, '%d/%m/%Y')::date)")
    if field.comparison == "exact":
        return f"regexp_replace(lower({raw}), '\\s', '', 'g')"
    return f"lower(strip_accents({raw}))"


def extra_column_name(field: MatchField) -> str:
    clean = "".join(ch if ch.isalnum() else "_" for ch in field.column.lower())
    return f"x_{clean}"


def prepare(con: duckdb.DuckDBPyConnection, ws: Workspace, settings: IdentitySettings,
            as_of: date | None) -> list[MatchColumn]:
    """Create the temp tables ``_id_records``, ``_id_nodes``, ``_id_edges`` and ``_id_values``.

    Returns the match columns present in enough records to compare (missing fields are left out).
    """
    con.execute("create or replace temp table _id_blocklist(value varchar)")
    con.executemany("insert into _id_blocklist values (?)", [[v.strip().lower()] for v in settings.blocklist])
    con.execute("create or replace temp table _id_nicknames(nick varchar, canonical varchar)")
    con.executemany("insert into _id_nicknames values (?, ?)", [list(p) for p in load_nicknames(ws, settings)])
    con.execute("""create or replace temp table _id_blocklist_digits as
        select distinct ltrim(regexp_replace(value, '[^0-9]', '', 'g'), '0') as digits from _id_blocklist
        where length(ltrim(regexp_replace(value, '[^0-9]', '', 'g'), '0')) >= 6""")
    _records(con, settings, as_of)
    learn_name_aliases(con, settings)
    _references(con, as_of)
    _values(con, settings)
    _nodes_and_edges(con)
    return _match_columns(con, settings)


def _records(con: duckdb.DuckDBPyConnection, settings: IdentitySettings, as_of: date | None) -> None:
    if not table_exists(con, "customers"):
        con.execute("""create or replace temp table _id_records(source varchar, record_id varchar,
            customer_id varchar, email varchar, phone varchar, email_number varchar, first_name varchar, first_key varchar, first_canon varchar,
            last_name varchar, dob date, street varchar, house_number varchar, address varchar,
            postcode varchar, city varchar, created_at timestamp, updated_at timestamp)""")
        return
    have = set(columns(con, "customers"))
    extras = ", ".join(f"{_extra_expr(f, have)} as {extra_column_name(f)}" for f in settings.extra_match_fields)
    when = ""
    params: list = []
    if as_of is not None and ({"created_at", "updated_at"} & have):
        when = (f"where coalesce({_col(have, 'created_at', 'timestamp')}, {_col(have, 'updated_at', 'timestamp')}) "
                "is null or coalesce(" + _col(have, "created_at", "timestamp") + ", "
                + _col(have, "updated_at", "timestamp") + ") < ?")
        params = [as_of]
    first = _not_blocked(f"nullif(trim(lower(strip_accents({_col(have, 'first_name')}))), '')")
    con.execute(f"""create or replace temp table _id_raw as
        select source, cast(record_id as varchar) as record_id,
          {_not_blocked(f"nullif(trim(cast({_col(have, 'customer_id')} as varchar)), '')")} as customer_id,
          {_not_blocked(f"nullif(lower(trim({_col(have, 'email')})), '')")} as email,
          {_not_blocked(f"nullif(trim({_col(have, 'phone')}), '')")} as phone,
          {first} as first_full,
          {_not_blocked(_text(_col(have, 'last_name')))} as last_name,
          {_not_blocked(_col(have, 'date_of_birth', 'date'))} as dob,
          {_text(_col(have, 'street'))} as street,
          {_text(_col(have, 'house_number'))} as house_number,
          {_not_blocked(_text(_col(have, 'postcode')))} as postcode,
          {_not_blocked(_text(_col(have, 'city')))} as city,
          {_col(have, 'created_at', 'timestamp')} as created_at,
          {_col(have, 'updated_at', 'timestamp')} as updated_at
          {', ' + extras if extras else ''}
        from customers {when}""", params)
    extra_cols = "".join(f", r.{extra_column_name(f)}" for f in settings.extra_match_fields)
    con.execute(f"""create or replace temp table _id_records as
        with tokens as (
          select *, nullif(regexp_replace(split_part(regexp_replace(first_full, '[-.]', ' ', 'g'), ' ', 1),
                 '[^a-z]', '', 'g'), '') as given_token,
            nullif(regexp_extract(lower(split_part(email, '@', 1)), '^([a-z]+)', 1), '') as email_word
          from _id_raw),
        known as (  -- first names this data set uses, plus the nickname table
          select given_token as word from tokens where length(given_token) >= 2 group by 1 having count(*) >= 2
          union select nick from _id_nicknames union select canonical from _id_nicknames),
        named as (  -- no first name given: the leading word of the email's local part, when it is a first name
          select t.*, coalesce(t.given_token, k.word) as first_token
          from tokens t left join known k on t.given_token is null and k.word = t.email_word),
        surnames as (select distinct last_name from tokens where length(last_name) >= 3),
        local_part as (
          select *, regexp_replace(lower(split_part(email, '@', 1)), '[^a-z]', '', 'g') as local_letters from named),
        surnamed as (  -- no last name given: what follows the first name in the email (anna_jansen@...), when
                       -- it is a last name of this data set
          select l.* replace (coalesce(l.last_name, s.last_name) as last_name)
          from local_part l left join surnames s on {'true' if settings.surname_from_email else 'false'}
            and l.last_name is null and l.first_token is not null
            and starts_with(l.local_letters, l.first_token) and s.last_name = substr(l.local_letters, length(l.first_token) + 1))
        select r.source, r.record_id, r.customer_id,
          case when r.email like '%@%' and split_part(r.email, '@', 1) || '@' not in (select value from _id_blocklist)
               then r.email end as email,
          case when r.phone is null then null
               when len(list_distinct(string_split(right(regexp_replace(r.phone, '[^0-9]', '', 'g'), 8), ''))) <= 1 then null
               when exists (select 1 from _id_blocklist_digits b
                            where ends_with(regexp_replace(r.phone, '[^0-9]', '', 'g'), b.digits)) then null
               else r.phone end as phone,
          nullif(regexp_extract(split_part(r.email, '@', 1), '([0-9]+)$', 1), '') as email_number,
          r.first_token as first_name,
          nullif(regexp_replace(r.first_full, '[^a-z]', '', 'g'), '') as first_key,
          coalesce(n.canonical, r.first_token) as first_canon,
          r.last_name, r.dob, r.street, r.house_number,
          case when r.street is not null and r.house_number is not null then r.street || ' ' || r.house_number end
            as address,
          r.postcode, r.city, r.created_at, r.updated_at {extra_cols}
        from surnamed r left join _id_nicknames n on n.nick = r.first_token
""")
    con.execute("drop table _id_raw")


def learn_name_aliases(con: duckdb.DuckDBPyConnection, settings: IdentitySettings) -> int:
    """Extend the nickname table with first-name aliases this data set itself proves; returns their number.

    Evidence: two records under one linkable email, phone or customer id, with the same last name, no
    conflicting birth dates, and different first names (``Jaantje`` next to ``Adriana``). A pair of
    names becomes an alias when families with at least two different last names show it and it covers
    at least ``ALIAS_MIN_SHARE`` of the rarer name's records - a family mailbox shared by a ``Kees`` and
    a ``Lotte`` does not make them one name. Initials and names already similar are not learned. An alias
    is a pair, never chained into a class (``Ria`` may be short for Maria in one family and for Adriana
    in another); it keeps a value holding both names from counting as shared by different people.
    """
    con.execute(f"""create or replace temp table _id_name_aliases as
        with v as (
          select 'email' as kind, email as value, source, record_id, first_canon, last_name, dob from _id_records
          where email is not null and first_canon is not null and last_name is not null
          union all select 'phone', phone, source, record_id, first_canon, last_name, dob from _id_records
          where phone is not null and first_canon is not null and last_name is not null
          union all select 'customer_id', customer_id, source, record_id, first_canon, last_name, dob from _id_records
          where customer_id is not null and first_canon is not null and last_name is not null),
        usable as (
          select v.* from v join (select kind, value from v group by all having count(*) between 2 and ?) k
          using (kind, value)),
        shown as (
          select least(a.first_canon, b.first_canon) as x, greatest(a.first_canon, b.first_canon) as y,
                 count(distinct a.last_name) as families
          from usable a join usable b on b.kind = a.kind and b.value = a.value and b.first_canon <> a.first_canon
            and b.last_name = a.last_name and b.source || chr(31) || b.record_id > a.source || chr(31) || a.record_id
          where not {dob_conflict_sql('a.dob', 'b.dob')} and least(length(a.first_canon), length(b.first_canon)) >= 2
            and jaro_winkler_similarity(a.first_canon, b.first_canon) < {NAME_CONFLICT_JW}
          group by all),
        freq as (select first_canon as name, count(*) as n from _id_records where first_canon is not null group by 1)
        select s.x, s.y from shown s join freq fx on fx.name = s.x join freq fy on fy.name = s.y
        where s.families >= 2 and s.families >= ? * least(fx.n, fy.n)""",
                [settings.max_records_per_identifier, ALIAS_MIN_SHARE])
    return con.execute("select count(*) from _id_name_aliases").fetchall()[0][0]


def _ref_tables(con: duckdb.DuckDBPyConnection) -> list[tuple[str, set[str]]]:
    return [(kind, set(columns(con, kind))) for kind in REFERENCE_COLUMNS if table_exists(con, kind)]


def _time_column(kind: str) -> str:
    return "ordered_at" if kind == "orders" else "timestamp"


def _references(con: duckdb.DuckDBPyConnection, as_of: date | None) -> None:
    """``_id_refs``: one row per distinct identifier combination seen on a referencing row.

    Also ``_id_activity``: per combination of the identifiers exactly as the ``person_*`` views join them,
    its rows' first and last time and count - the profiles' activity, so the events are scanned once.
    """
    parts = []
    params: list = []
    for kind, have in _ref_tables(con):
        ts = _time_column(kind)
        where = f'where "{ts}" < ?' if as_of is not None and ts in have else ""
        if where:
            params.append(as_of)
        parts.append(f"""select source, '{kind}' as kind,
            cast({_col(have, 'customer_ref')} as varchar) as customer_ref,
            {_col(have, 'ref_source')} as ref_source, {_col(have, 'ref_key')} as ref_key,
            cast({_col(have, 'anonymous_id')} as varchar) as anonymous_id,
            cast({_col(have, 'email')} as varchar) as email, cast({_col(have, 'phone')} as varchar) as phone,
            min({_col(have, ts, 'timestamp')}) as first_ts, max({_col(have, ts, 'timestamp')}) as last_ts,
            count(*) as n_rows
            from "{kind}" {where} group by all""")
    if not parts:
        con.execute("""create or replace temp table _id_activity(source varchar, kind varchar, customer_ref varchar,
            ref_source varchar, ref_key varchar, anonymous_id varchar, email varchar, phone varchar,
            first_ts timestamp, last_ts timestamp, n_rows bigint)""")
    else:
        con.execute("create or replace temp table _id_activity as " + " union all ".join(parts), params)
    con.execute("""create or replace temp table _id_refs as
        select distinct source, kind, nullif(trim(customer_ref), '') as customer_ref, ref_source,
          coalesce(ref_key, 'record_id') as ref_key, nullif(trim(anonymous_id), '') as anonymous_id,
          nullif(lower(trim(email)), '') as email, nullif(trim(phone), '') as phone
        from _id_activity""")


def _values(con: duckdb.DuckDBPyConnection, settings: IdentitySettings) -> None:
    """``_id_values(kind, value, n_records, status)``: may this email/phone/customer id link records?"""
    con.execute("""create or replace temp table _id_value_records as
        select 'email' as kind, email as value, source, record_id, first_canon, first_name, first_key, last_name, dob
        from _id_records where email is not null
        union all select 'phone', phone, source, record_id, first_canon, first_name, first_key, last_name, dob
        from _id_records where phone is not null
        union all select 'customer_id', customer_id, source, record_id, first_canon, first_name, first_key, last_name, dob
          from _id_records where customer_id is not null""")
    con.execute(f"""create or replace temp table _id_values as
        with counts as (
          select kind, value, count(*) as n_records from _id_value_records group by all),
        shared as (  -- two records under one value whose first names or birth dates say: different people
          select distinct a.kind, a.value from _id_value_records a
          join counts c on c.kind = a.kind and c.value = a.value and c.n_records between 2 and ?
          join _id_value_records b on b.kind = a.kind and b.value = a.value
            and b.source || chr(31) || b.record_id > a.source || chr(31) || a.record_id
          where (a.first_canon <> b.first_canon and jaro_winkler_similarity(a.first_name, b.first_name) < {NAME_CONFLICT_JW}
                 and not (least(length(a.first_name), length(b.first_name)) <= 1 and a.first_name[1] = b.first_name[1])
                 and not (a.first_key = b.last_name and a.last_name = b.first_key)  -- first and last name swapped
                 and not exists (select 1 from _id_name_aliases n where n.x = least(a.first_canon, b.first_canon)
                                 and n.y = greatest(a.first_canon, b.first_canon)))
             or {dob_conflict_sql('a.dob', 'b.dob')}),
        ref_values as (
          select 'email' as kind, email as value from _id_refs where email is not null
          union select 'phone', phone from _id_refs where phone is not null
          union select 'customer_id', customer_ref from _id_refs where customer_ref is not null and ref_key = 'customer_id'),
        all_values as (select kind, value from counts union select kind, value from ref_values)
        select v.kind, v.value, coalesce(c.n_records, 0) as n_records,
          case when lower(v.value) in (select value from _id_blocklist)
                 or (v.kind = 'email' and (v.value not like '%@%'
                     or split_part(v.value, '@', 1) || '@' in (select value from _id_blocklist)))
                 or (v.kind = 'phone' and (
                     len(list_distinct(string_split(right(regexp_replace(v.value, '[^0-9]', '', 'g'), 8), ''))) <= 1
                     or exists (select 1 from _id_blocklist_digits b
                                where ends_with(regexp_replace(v.value, '[^0-9]', '', 'g'), b.digits))))
                 then 'blocked'
               when coalesce(c.n_records, 0) > ? then 'over_cap'
               when s.value is not null then 'shared'
               else 'ok' end as status
        from all_values v
        left join counts c on c.kind = v.kind and c.value = v.value
        left join shared s on s.kind = v.kind and s.value = v.value""",
                [settings.max_records_per_identifier, settings.max_records_per_identifier])


def _nodes_and_edges(con: duckdb.DuckDBPyConnection) -> None:
    """Nodes: customer records, referencing identifiers, and hubs of linkable values; deterministic edges."""
    con.execute("""create or replace temp table _id_nodes as
        with ids as (
          select source, 'record' as id_type, record_id from _id_records
          union select source, 'customer_ref', customer_ref from _id_refs where customer_ref is not null
          union select source, 'anonymous_id', anonymous_id from _id_refs where anonymous_id is not null
          union select source, 'email', email from _id_refs where email is not null
          union select source, 'phone', phone from _id_refs where phone is not null
          union select '', 'hub_' || kind, value from _id_values where status = 'ok'
          union select '', 'hub_customer_key', customer_ref from _id_refs
            where customer_ref is not null and ref_source is null)
        select row_number() over (order by id_type, source, record_id) as node, source, id_type, record_id from ids""")
    # one plain INSERT per kind of edge: DuckDB 2.0.0 raised "dict-surviving cache ... changed identity"
    # on the single statement (a CTE reused by ten joins) at 100k persons
    con.execute("""create or replace temp table _id_edges(a bigint, b bigint, method varchar,
                   match_probability double)""")
    for kind, column in (("email", "email"), ("phone", "phone"), ("customer_id", "customer_id")):
        con.execute(f"""insert into _id_edges
            select r.node, h.node, '{kind}', 1.0 from _id_records x
            join _id_nodes r on r.id_type = 'record' and r.source = x.source and r.record_id = x.record_id
            join _id_nodes h on h.id_type = 'hub_{kind}' and h.record_id = x.{column}""")
    con.execute("""create or replace temp table _id_ref_rows as
        select distinct source, customer_ref, ref_source, ref_key from _id_refs where customer_ref is not null""")
    con.execute("""insert into _id_edges  -- customer_ref -> the record it names
        select r.node, t.node, 'customer_ref', 1.0 from _id_ref_rows x
        join _id_nodes r on r.id_type = 'customer_ref' and r.source = x.source and r.record_id = x.customer_ref
        join _id_nodes t on t.id_type = 'record' and t.source = x.ref_source and t.record_id = x.customer_ref
        where x.ref_key = 'record_id'""")
    con.execute("""insert into _id_edges  -- customer_ref by customer id -> that id's hub
        select r.node, h.node, 'customer_ref', 1.0 from _id_ref_rows x
        join _id_nodes r on r.id_type = 'customer_ref' and r.source = x.source and r.record_id = x.customer_ref
        join _id_nodes h on h.id_type = 'hub_customer_id' and h.record_id = x.customer_ref
        where x.ref_key = 'customer_id' and x.ref_source is not null""")
    con.execute("""insert into _id_edges  -- no customers source: the key itself is the customer
        select r.node, h.node, 'customer_key', 1.0 from _id_ref_rows x
        join _id_nodes r on r.id_type = 'customer_ref' and r.source = x.source and r.record_id = x.customer_ref
        join _id_nodes h on h.id_type = 'hub_customer_key' and h.record_id = x.customer_ref
        where x.ref_source is null""")
    for kind in ("email", "phone"):  # an email/phone on an interaction or consent -> its value's hub
        con.execute(f"""insert into _id_edges
            select e.node, h.node, '{kind}', 1.0 from _id_nodes e
            join _id_nodes h on h.id_type = 'hub_{kind}' and h.record_id = e.record_id
            where e.id_type = '{kind}'""")
        # a row naming both a customer and an email/phone ties them, unless the contact is blocked or
        # appears with several customers
        con.execute(f"""insert into _id_edges
            with same_row as (
              select source, {kind} as value, min(customer_ref) as customer_ref from _id_refs
              where customer_ref is not null and {kind} is not null
              group by all having count(distinct customer_ref) = 1)
            select r.node, c.node, 'same_row', 1.0 from same_row s
            join _id_values v on v.kind = '{kind}' and v.value = s.value and v.status <> 'blocked'
            join _id_nodes r on r.id_type = 'customer_ref' and r.source = s.source and r.record_id = s.customer_ref
            join _id_nodes c on c.id_type = '{kind}' and c.source = s.source and c.record_id = s.value""")
    con.execute("""insert into _id_edges  -- an email and a phone given together (a WhatsApp message signed with an email)
        with pairs as (
          select source, email, min(phone) as phone from _id_refs where email is not null and phone is not null
          group by source, email having count(distinct phone) = 1),
        phones as (
          select source, phone from _id_refs where email is not null and phone is not null
          group by source, phone having count(distinct email) = 1)
        select e.node, p.node, 'same_row', 1.0 from pairs x
        join phones y on y.source = x.source and y.phone = x.phone
        join _id_values ve on ve.kind = 'email' and ve.value = x.email and ve.status not in ('blocked', 'shared')
        join _id_values vp on vp.kind = 'phone' and vp.value = x.phone and vp.status not in ('blocked', 'shared')
        join _id_nodes e on e.id_type = 'email' and e.source = x.source and e.record_id = x.email
        join _id_nodes p on p.id_type = 'phone' and p.source = x.source and p.record_id = x.phone""")


def _match_columns(con: duckdb.DuckDBPyConnection, settings: IdentitySettings) -> list[MatchColumn]:
    """The comparisons this workspace's data supports: fields filled in enough records, others left out."""
    total = con.execute("select count(*) from _id_records").fetchall()[0][0]
    if total == 0:
        return []
    candidates = [
        MatchColumn("first_name", "first_name", True),
        MatchColumn("last_name", "last_name", False),
        MatchColumn("dob", "dob", True),
        MatchColumn("address", "address", False),
        MatchColumn("postcode", "postcode", False),
        MatchColumn("city", "city", False),
        MatchColumn("email", "email", True),
        MatchColumn("phone", "phone", True),  # mostly personal mobiles
        # people reuse a number (birth year, house number, a lucky number) across their addresses
        MatchColumn("email_number", "email_number", True),
    ]
    for f in settings.extra_match_fields:
        block = f.block if f.block is not None else f.comparison in ("exact", "levenshtein")
        candidates.append(MatchColumn(extra_column_name(f), f.comparison, True, block))
    names = [c.name for c in candidates]
    counts = con.execute("select " + ", ".join(f"count({n})" for n in names) + " from _id_records").fetchall()[0]
    return [c for c, k in zip(candidates, counts, strict=True) if k / total >= settings.min_field_coverage and k >= 2]
