"""Right of access: one JSON document with everything held about a person.

It is assembled from the same working set erasure uses (so "what we would erase" and "what we show"
never disagree): records per staging table, identifiers, the profile, the consent state, scores,
segment memberships (warehouse tables and the week folders' files) and the erasure status.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from cdp_ml.engine import table_exists
from cdp_ml.errors import CdpError
from cdp_ml.privacy import subject, tombstone
from cdp_ml.privacy.identifiers import SEP, STAGING_TABLES, matches_sql, salted_hash
from cdp_ml.workspace import Workspace

_PERSON_TABLES_SKIP = {"person_map", "profiles", "person_redirects", "erasure_log", "tombstones"}


@dataclass(frozen=True)
class ExportResult:
    document: str  # the JSON text
    out: str | None  # file written, or None when the document is printed
    persons: int
    records: int
    erased: bool

    def __str__(self) -> str:
        if self.out is None:
            return self.document
        state = " (erased)" if self.erased else ""
        return f"export-person: {self.persons} person(s), {self.records:,} record(s){state} -> {self.out}"


def export_person(ws: Workspace, email: str | None = None, phone: str | None = None,
                  person_id: str | None = None, out: Path | None = None) -> ExportResult:
    """Everything held about the person behind one identifier, as JSON (to ``out`` or stdout)."""
    with ws.connect() as con:
        seeds = subject.parse_request(con, ws, email, phone, person_id)
        if tombstone.tombstone_count(con):
            salt = tombstone.salt(ws)
        else:
            salt = tombstone.salt(ws, create=True)
        unknown = {s.value for s in seeds if s.kind == "person_id"} - subject.known_person_ids(
            con, [s.value for s in seeds if s.kind == "person_id"])
        if unknown and not _erasure_status(con, seeds, None, salt)["erased"]:
            raise CdpError(f"person {sorted(unknown)[0]} is not known (no person_map, profiles or redirect row)")
        subj = subject.collect(con, ws, [s for s in seeds if s.value not in unknown], salt)
        records = {t: _rows(con, f'select * exclude (_load_id) from "{t}" where {p}')
                   for t in STAGING_TABLES if (p := matches_sql(con, t, subject.IDS))}
        records = {t: rows for t, rows in records.items() if rows}
        doc: dict[str, Any] = {
            "generated_at": datetime.now().isoformat(timespec="seconds"),
            "persons": list(subj.persons),
            "identifiers": _identifiers(subj),
            "records": records,
            "profile": _person_rows(con, "profiles"),
            "identity_links": _person_rows(con, "person_map"),
            "consents": _consents(con, ws),
            "scores": {t: rows for t in _person_tables(con) if (rows := _person_rows(con, t))},
            "segment_files": _segment_files(con, ws, subj),
            "erasure": _erasure_status(con, seeds, subj, salt),
        }
    text = json.dumps(doc, indent=2, default=_json_default, ensure_ascii=False)
    n_records = sum(len(v) for v in records.values())
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, out)
    return ExportResult(text, str(out) if out else None, len(subj.persons), n_records, doc["erasure"]["erased"])


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict[str, Any]]:
    rel = con.execute(sql, params or [])
    names = [d[0] for d in rel.description]
    out = []
    for row in rel.fetchall():
        item = {}
        for k, v in zip(names, row, strict=True):
            if isinstance(v, str) and k == "attributes":
                try:
                    v = json.loads(v)
                except ValueError:
                    pass
            item[k] = v
        out.append(item)
    return out


def _identifiers(subj: subject.Subject) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for kind, value in subj.identifiers:
        shown = value.replace(SEP, ":")  # source:key for source-scoped keys
        out.setdefault(kind, []).append(shown)
    return out


def _person_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Warehouse tables keyed by person (features, scores, segments), other than identity's own."""
    return [r[0] for r in con.execute(
        """select distinct table_name from duckdb_columns() where column_name = 'person_id'
           and schema_name = 'main' and database_name = current_database() and table_name in
           (select table_name from duckdb_tables() where not temporary) order by 1""").fetchall()
            if r[0] not in _PERSON_TABLES_SKIP]


def _person_rows(con: duckdb.DuckDBPyConnection, table: str) -> list[dict[str, Any]]:
    if not table_exists(con, table):
        return []
    return _rows(con, f'select * from "{table}" where person_id in (select person_id from {subject.PERSONS})')


def _consents(con: duckdb.DuckDBPyConnection, ws: Workspace) -> dict[str, Any]:
    """The consent state per purpose as of today, and every decision on record."""
    if not table_exists(con, "person_consents"):
        return {}
    from cdp_ml.privacy.consent import consent_state

    state = consent_state(con, date.today(), ws.config.privacy.consent_default_granted).filter(
        f"person_id in (select person_id from {subject.PERSONS})").order("purpose")
    return {"as_of": date.today().isoformat(),
            "state": [dict(zip(state.columns, row, strict=True)) for row in state.fetchall()],
            "decisions": _rows(con, f"""select * exclude (_load_id) from person_consents
                                        where person_id in (select person_id from {subject.PERSONS})
                                        order by "timestamp" """)}


def _segment_files(con: duckdb.DuckDBPyConnection, ws: Workspace, subj: subject.Subject) -> list[dict[str, Any]]:
    """Week folders' segment files with a row naming the person (by person id)."""
    root = ws.segments_dir
    if not subj.persons or not root.exists():
        return []
    out = []
    for path in sorted(root.rglob("*.parquet")):
        try:
            cols = [r[0] for r in con.execute("describe select * from read_parquet(?)", [str(path)]).fetchall()]
        except duckdb.Error:
            continue
        if "person_id" not in cols:
            continue
        rows = _rows(con, "select * from read_parquet(?) where person_id in (select unnest(?::varchar[]))",
                     [str(path), list(subj.persons)])
        if rows:
            out.append({"file": ws.relative(path), "rows": rows})
    return out


def _erasure_status(con: duckdb.DuckDBPyConnection, seeds: list[subject.Seed], subj: subject.Subject | None,
                    salt: str) -> dict[str, Any]:
    hashes = [salted_hash(salt, s.kind, s.value) for s in seeds]
    tomb = [salted_hash(salt, s.kind, s.value) for s in seeds if s.kind in ("email", "phone")]
    erased_at = None
    if table_exists(con, "erasure_log"):
        row = con.execute("select min(requested_at) from erasure_log where list_has_any(identifier_hashes, ?)",
                          [hashes]).fetchall()
        erased_at = row[0][0] if row else None
    tombstoned = bool(tomb) and table_exists(con, tombstone.TOMBSTONES) and con.execute(
        f"select count(*) from {tombstone.TOMBSTONES} where hash in (select unnest(?::varchar[]))",
        [tomb]).fetchall()[0][0] > 0
    erased = bool(erased_at) or tombstoned
    return {"erased": erased, "erased_at": erased_at,
            "note": "erased: only the salted-hash tombstone and the audit entry remain"
            if erased and not (subj and subj.persons)
            else None}
