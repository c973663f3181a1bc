"""The data subject of a privacy request: the persons and every identifier resolved to them.

Erasure and access both start from what the requester gives (an e-mail, a phone, a person id, or a file
of them) and widen it in SQL to the persons identity resolution made of them and all identifiers those
persons carry (customer records, customer ids and keys, anonymous ids, e-mails, phones). Without
identity tables the same widening runs over the staging tables alone (records sharing the e-mail or
phone, their references, and the devices their login events tie to them). Placeholder e-mails/phones
(the identity blocklist, or values shared by more records than ``identity.max_records_per_identifier``)
never widen a request, so erasing one person cannot take a shared ``info@`` address's records with it.

The working set lives in connection-local temp tables: ``_subject_persons(person_id)``,
``_subject_ids(kind, value, hash)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from cdp_ml.engine import columns, table_exists
from cdp_ml.errors import CdpError
from cdp_ml.privacy.identifiers import HASH_MACRO, install_hash_macro
from cdp_ml.sources import normalise as nz
from cdp_ml.sources.kinds import REFERENCING_KINDS
from cdp_ml.workspace import Workspace

PERSONS = "_subject_persons"
IDS = "_subject_ids"


@dataclass(frozen=True)
class Seed:
    """One identifier as given in the request, normalised like ingestion does."""

    kind: str  # email, phone, person_id
    value: str


@dataclass(frozen=True)
class Subject:
    seeds: tuple[Seed, ...]
    persons: tuple[str, ...]
    identifiers: tuple[tuple[str, str], ...]  # (kind, value); values stay in memory, never printed

    def values(self, *kinds: str) -> list[str]:
        return sorted({v for k, v in self.identifiers if k in kinds})


def parse_request(con: duckdb.DuckDBPyConnection, ws: Workspace, email: str | None = None,
                  phone: str | None = None, person_id: str | None = None, file: Path | None = None) -> list[Seed]:
    """Seeds from the command line or a file of one e-mail, phone or person id per line."""
    given: list[tuple[str, str | None, str]] = []  # (where, kind or None = guess, text)
    if email:
        given.append(("--email", "email", email))
    if phone:
        given.append(("--phone", "phone", phone))
    if person_id:
        given.append(("--person-id", "person_id", person_id))
    if file is not None:
        if not file.is_file():
            raise CdpError(f"--file: {file} does not exist")
        try:
            lines = file.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError:
            raise CdpError(f"--file: {file} is not UTF-8 text") from None
        for i, line in enumerate(lines, 1):
            text = line.strip()
            if text and not text.startswith("#"):
                given.append((f"{file.name} line {i}", None, text))
        if not given:
            raise CdpError(f"--file: {file} holds no identifiers (one e-mail, phone or person id per line)")
    if not given:
        raise CdpError("give --email, --phone, --person-id or --file")
    known_persons = known_person_ids(con, [t for _, k, t in given if k in (None, "person_id")])
    seeds: list[Seed] = []
    country = ws.config.default_country or "NL"
    for where, kind, text in given:
        if kind is None:
            kind = ("person_id" if text in known_persons else "email" if "@" in text
                    else "phone" if len(re.sub(r"\D", "", text)) >= 6 else None)
            if kind is None:
                raise CdpError(f"{where}: not an e-mail address, a phone number or a known person id")
        if kind == "person_id":
            seeds.append(Seed("person_id", text))
            continue
        expr = nz.email("v") if kind == "email" else nz.phone("v", country)
        value = con.execute(f"select {expr} from (select ?::varchar as v)", [text]).fetchall()[0][0]
        if value is None:
            raise CdpError(f"{where}: not a valid {'e-mail address' if kind == 'email' else 'phone number'}")
        if _is_placeholder(ws, value):
            raise CdpError(f"{where}: the {kind} is a placeholder on the identity blocklist, shared by unrelated "
                           f"records; identify the person by --person-id instead")
        seeds.append(Seed(kind, value))
    return list(dict.fromkeys(seeds))


def known_person_ids(con: duckdb.DuckDBPyConnection, candidates: list[str]) -> set[str]:
    found: set[str] = set()
    for table, col in (("person_map", "person_id"), ("profiles", "person_id"), ("person_redirects", "old_person_id")):
        if candidates and table_exists(con, table):
            found |= {r[0] for r in con.execute(
                f'select distinct "{col}" from "{table}" where "{col}" in (select unnest(?::varchar[]))',
                [candidates]).fetchall()}
    return found


def _is_placeholder(ws: Workspace, value: str) -> bool:
    for entry in ws.config.identity.blocklist:
        entry = entry.lower()
        if value == entry or (entry.endswith("@") and value.startswith(entry)):
            return True
    return False


def collect(con: duckdb.DuckDBPyConnection, ws: Workspace, seeds: list[Seed], salt: str) -> Subject:
    """Widen the seeds to persons and identifiers; fills the temp tables and returns them in memory."""
    install_hash_macro(con, salt)
    con.execute(f"create or replace temp table {PERSONS} (person_id VARCHAR)")
    con.execute(f"create or replace temp table {IDS} (kind VARCHAR, value VARCHAR)")
    _placeholders(con, ws)
    for s in seeds:
        table = PERSONS if s.kind == "person_id" else IDS
        con.execute(f"insert into {table} values ({'?' if s.kind == 'person_id' else '?, ?'})",
                    [s.value] if s.kind == "person_id" else [s.kind, s.value])
    has_map = table_exists(con, "person_map")
    if has_map:
        _persons_from_identity(con)
    for _ in range(2):  # records -> their identifiers -> records sharing them (one more hop)
        _expand_staging(con, login_devices=not has_map)
        if has_map:
            _persons_from_identity(con)
    con.execute(f"""create or replace temp table {IDS} as
                    select distinct kind, value, {HASH_MACRO}(kind, value) as hash from {IDS} where value is not null""")
    con.execute(f"create or replace temp table {PERSONS} as select distinct person_id from {PERSONS} "
                f"where person_id is not null")
    persons = tuple(r[0] for r in con.execute(f"select person_id from {PERSONS} order by 1").fetchall())
    ids = tuple((r[0], r[1]) for r in con.execute(f"select kind, value from {IDS} order by 1, 2").fetchall())
    return Subject(tuple(seeds), persons, ids)


def _placeholders(con: duckdb.DuckDBPyConnection, ws: Workspace) -> None:
    """Temp table of e-mail/phone values that must not widen a request."""
    con.execute("create or replace temp table _subject_placeholders (value VARCHAR)")
    con.executemany("insert into _subject_placeholders values (?)", [[b.lower()] for b in ws.config.identity.blocklist])
    cap = ws.config.identity.max_records_per_identifier
    if table_exists(con, "customers"):
        for col in ("email", "phone"):
            con.execute(f"""insert into _subject_placeholders select "{col}" from customers where "{col}" is not null
                            group by 1 having count(*) > ?""", [cap])


_NOT_PLACEHOLDER = """not exists (select 1 from _subject_placeholders p
                       where p.value = {v} or (p.value like '%@' and starts_with({v}, p.value)))"""


def _add_ids(con: duckdb.DuckDBPyConnection, select_sql: str, params: list | None = None) -> None:
    """Insert (kind, value) rows not yet known; e-mails/phones that are placeholders are skipped."""
    guard = _NOT_PLACEHOLDER.format(v="n.value")
    con.execute(f"""insert into {IDS} select distinct n.kind, n.value from ({select_sql}) n(kind, value)
                    where n.value is not null and (n.kind not in ('email', 'phone') or {guard})
                    and not exists (select 1 from {IDS} i where i.kind = n.kind and i.value = n.value)""",
                params or [])


def _persons_from_identity(con: duckdb.DuckDBPyConnection) -> None:
    """Persons holding any known identifier (following redirects), then all identifiers of those persons."""
    con.execute(f"""insert into {PERSONS} select distinct pm.person_id from person_map pm join {IDS} i
                    on (pm.id_type in ('email', 'phone', 'anonymous_id') and i.kind = pm.id_type and i.value = pm.record_id)
                    or (pm.id_type = 'record' and i.kind = 'record' and i.value = pm.source || chr(31) || pm.record_id)
                    or (pm.id_type = 'customer_ref' and i.kind = 'customer_ref' and i.value = pm.record_id)
                    where pm.person_id not in (select person_id from {PERSONS})""")
    if table_exists(con, "person_redirects"):
        for _ in range(5):
            con.execute(f"""insert into {PERSONS} select distinct r.new_person_id from person_redirects r
                            where r.old_person_id in (select person_id from {PERSONS})
                            and r.new_person_id not in (select person_id from {PERSONS})""")
    _add_ids(con, f"""select case id_type when 'record' then 'record' else id_type end,
                             case id_type when 'record' then source || chr(31) || record_id else record_id end
                      from person_map where person_id in (select person_id from {PERSONS})
                      and id_type in ('record', 'customer_ref', 'anonymous_id', 'email', 'phone')""")
    for table in REFERENCING_KINDS:  # a person's customer_ref seen through the reference's own meaning
        if table_exists(con, table) and {"ref_source", "ref_key"} <= set(columns(con, table)):
            _add_ids(con, f"""select distinct case when t.ref_source is null then 'customer_ref'
                                   when t.ref_key = 'customer_id' then 'customer_id' else 'record' end,
                                   case when t.ref_source is null then t.customer_ref
                                   else t.ref_source || chr(31) || t.customer_ref end
                              from "{table}" t join person_map pm on pm.id_type = 'customer_ref'
                              and pm.source = t.source and pm.record_id = t.customer_ref
                              where pm.person_id in (select person_id from {PERSONS})""")


def _expand_staging(con: duckdb.DuckDBPyConnection, login_devices: bool) -> None:
    """Customer records carrying a known identifier add their other identifiers; references follow."""
    if table_exists(con, "customers"):
        cols = set(columns(con, "customers"))
        cid = "c.source || chr(31) || c.customer_id" if "customer_id" in cols else "null::varchar"
        con.execute(f"""create or replace temp table _subject_records as
            select c.source, c.record_id, {cid} as cid, c.email, c.phone from customers c
            where exists (select 1 from {IDS} i where
                (i.kind = 'record' and i.value = c.source || chr(31) || c.record_id)
                or (i.kind = 'customer_id' and i.value = {cid})
                or (i.kind = 'email' and i.value = c.email) or (i.kind = 'phone' and i.value = c.phone))""")
        _add_ids(con, """select 'record', source || chr(31) || record_id from _subject_records
                         union all select 'customer_id', cid from _subject_records
                         union all select 'email', email from _subject_records
                         union all select 'phone', phone from _subject_records""")
    for table in REFERENCING_KINDS:
        if not table_exists(con, table):
            continue
        cols = set(columns(con, table))
        if "customer_ref" not in cols:
            continue
        if {"ref_source", "ref_key"} <= cols:
            kind = ("case when t.ref_source is null then 'customer_ref' when t.ref_key = 'customer_id' "
                    "then 'customer_id' else 'record' end")
            value = "case when t.ref_source is null then t.customer_ref else t.ref_source || chr(31) || t.customer_ref end"
        else:
            kind, value = "'customer_ref'", "t.customer_ref"
        carried = [f"(i.kind = '{c}' and i.value = t.{c})" for c in ("email", "phone") if c in cols]
        if carried:  # interactions/consents given by e-mail or phone tie their customer reference to it
            _add_ids(con, f"""select {kind}, {value} from "{table}" t join {IDS} i on {' or '.join(carried)}
                              where t.customer_ref is not null""")
        if login_devices and table == "events" and "anonymous_id" in cols:
            _add_ids(con, f"""select 'anonymous_id', t.anonymous_id from events t join {IDS} i
                              on i.kind = {kind} and i.value = {value}
                              where t.event_type = 'login' and t.anonymous_id is not null""")
