"""Right to erasure: remove a person and everything resolved to them from every store, and prove it.

Order matters for crash safety: segment/export files are rewritten first (re-runnable, since the
warehouse still knows the person), then one warehouse transaction deletes the rows, adds tombstones and
the audit rows, so a crash leaves either the old state or the complete erasure. Afterwards every table,
the segment folders, the MLflow store and the runs folder are searched for the identifiers.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb

from cdp_ml.engine import table_exists
from cdp_ml.errors import CdpError
from cdp_ml.privacy import scan, subject, tombstone
from cdp_ml.privacy.identifiers import STAGING_TABLES, matches_sql, salted_hash
from cdp_ml.workspace import Workspace

ERASURE_LOG = "erasure_log"
# Bookkeeping tables that hold no personal data and must survive an erasure.
_KEEP = {"loads", tombstone.TOMBSTONES, ERASURE_LOG, "retention_log"}


@dataclass(frozen=True)
class ForgetResult:
    request_id: str
    persons: int
    identifiers: int
    deleted: tuple[tuple[str, int], ...]  # (table, rows)
    files_rewritten: tuple[tuple[str, int], ...]  # (file, rows removed)
    tombstones_added: int
    residual: tuple[str, ...]  # places where an identifier was still found after erasure
    raw: tuple[tuple[str, tuple[int, ...]], ...] | None = None  # (raw file, line numbers) with --report-raw
    audit_file: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def exit_code(self) -> int:
        return 1 if self.residual else 0

    def __str__(self) -> str:
        total = sum(n for _, n in self.deleted)
        lines = [f"forget request {self.request_id}: {self.persons} person(s), {self.identifiers} identifier(s), "
                 f"{total:,} row(s) deleted, {self.tombstones_added} tombstone(s) added"]
        for table, n in self.deleted:
            if n:
                lines.append(f"  {table:<28} {n:>8,} deleted")
        for f, n in self.files_rewritten:
            lines.append(f"  file {f}: {n:,} row(s) removed")
        lines += [f"  note: {n}" for n in self.notes]
        if self.residual:
            lines.append("verification FAILED: identifiers still found in: " + "; ".join(self.residual))
        else:
            lines.append("verification: searched every table and the segment, MLflow and runs folders; "
                         "no identifier found")
        if self.raw is not None:
            if not self.raw:
                lines.append("raw files: no line holds the identifiers")
            else:
                lines.append("raw files still holding the identifiers (clean them at the source):")
                for f, nums in self.raw:
                    shown = ", ".join(map(str, nums[:50])) + (f", ... ({len(nums)} lines)" if len(nums) > 50 else "")
                    unit = "rows" if f.endswith((".parquet", ".pq")) else "lines"
                    lines.append(f"  {f}: {unit} {shown}")
        lines.append(f"audit: {self.audit_file} and table {ERASURE_LOG} (hashed identifiers and counts only)")
        return "\n".join(lines)


def forget(ws: Workspace, email: str | None = None, phone: str | None = None, person_id: str | None = None,
           file: Path | None = None, report_raw: bool = False) -> ForgetResult:
    """Erase the person(s) behind the given identifiers everywhere; tombstone them; verify and audit."""
    request_id = uuid.uuid4().hex[:12]
    started = datetime.now()
    salt = tombstone.salt(ws, create=True)
    notes: list[str] = []
    with ws.connect() as con:
        seeds = subject.parse_request(con, ws, email, phone, person_id, file)
        _check_person_ids(con, seeds, salt)
        subj = subject.collect(con, ws, seeds, salt)
        if not subj.persons and len(subj.identifiers) == len([s for s in seeds if s.kind != "person_id"]):
            notes.append("nothing held about these identifiers; tombstoned so a later ingest cannot add them")
        files = _rewrite_files(con, ws, subj)
        con.execute("begin transaction")
        try:
            deleted = _delete_everywhere(con, ws, subj)
            added = _add_tombstones(con, request_id)
            _log_table(con, request_id, started, seeds, subj, deleted, salt)
            con.execute("commit")
        except Exception:
            con.execute("rollback")
            raise
        residual = [str(h) for h in scan.scan_warehouse(con, scan.needles(subj), skip=_KEEP)]
        residual += _hash_residual(con)
    if ws.cache_dir.exists():  # derived from the erased rows; recomputed when next needed, so dropped, not scanned
        shutil.rmtree(ws.cache_dir)
        notes.append(f"cleared derived caches in {ws.relative(ws.cache_dir)}")
    hashed_needles = scan.needles(subj, hashed=True)
    for folder in (ws.segments_dir, ws.mlflow_dir, ws.runs_dir):
        residual += [f"file {h}" for h in scan.scan_tree(folder, hashed_needles, base=ws.root)]
    raw = tuple(scan.raw_locations(ws, subj)) if report_raw else None
    audit = _log_file(ws, request_id, started, seeds, subj, deleted, files, added, residual, salt)
    return ForgetResult(request_id, len(subj.persons), len(subj.identifiers), tuple(deleted.items()), tuple(files),
                        added, tuple(residual), raw, audit, tuple(notes))


def _check_person_ids(con: duckdb.DuckDBPyConnection, seeds: list[subject.Seed], salt: str) -> None:
    ids = [s.value for s in seeds if s.kind == "person_id"]
    known = subject.known_person_ids(con, ids)
    for pid in ids:
        if pid in known:
            continue
        if table_exists(con, ERASURE_LOG) and con.execute(
                f"select count(*) from {ERASURE_LOG} where list_contains(identifier_hashes, ?)",
                [salted_hash(salt, "person_id", pid)]).fetchall()[0][0]:
            raise CdpError(f"person {pid} was already erased (see table {ERASURE_LOG})")
        raise CdpError(f"person {pid} is not known (no person_map, profiles or redirect row); check the id")


def _delete_everywhere(con: duckdb.DuckDBPyConnection, ws: Workspace, subj: subject.Subject) -> dict[str, int]:
    """Rows of the person in every table: staging by identifier hash, the rest by person id or identifier."""
    deleted: dict[str, int] = {}
    con.execute("create or replace temp table _erased_rows (source VARCHAR, file VARCHAR, \"row\" BIGINT)")
    for table in STAGING_TABLES:
        predicate = matches_sql(con, table, subject.IDS)
        if not predicate:
            continue
        con.execute(f'insert into _erased_rows select source, _file, _row from "{table}" where {predicate}')
        deleted[table] = _count(con, f'delete from "{table}" where {predicate}')
    if table_exists(con, "quarantine"):
        tombstone.quarantine_candidates(con, ws)
        deleted["quarantine"] = _count(con, f"""delete from quarantine where rowid in (
            select c.rid from _quarantine_candidates c join {subject.IDS} t on t.hash = c.hash)""")
    if table_exists(con, "load_issues"):
        deleted["load_issues"] = _count(con, """delete from load_issues l where exists (select 1 from _erased_rows e
            where e.source = l.source and e.file = l.file and e.row = l.row)""")
    distinct = f"(select kind, value from {subject.IDS} where kind in ('email', 'phone', 'anonymous_id'))"
    for table in _base_tables(con):
        if table in _KEEP or table in ("quarantine", "load_issues"):
            continue
        predicate = _generic_predicate(con, table, distinct)
        if predicate:
            n = _count(con, f'delete from "{table}" where {predicate}')
            deleted[table] = deleted.get(table, 0) + n
    return dict(sorted(deleted.items()))


def _base_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("""select table_name from duckdb_tables()
                                         where schema_name = 'main' and database_name = current_database()
                                         and not temporary order by 1""").fetchall()]


def _generic_predicate(con: duckdb.DuckDBPyConnection, table: str, distinct_ids: str) -> str | None:
    """A row is the person's when a person-id column names them, a record column pair names one of their
    records, or any text column equals (lists: contain; JSON: holds) an e-mail, phone or device id of theirs."""
    info = con.execute("""select column_name, data_type from duckdb_columns()
                          where table_name = ? and schema_name = 'main' and database_name = current_database()
                          order by column_index""", [table]).fetchall()
    names = {c for c, _ in info}
    parts = []
    for col, dtype in info:
        q = f'"{col}"'
        if col == "person_id" or col.endswith("_person_id") or col.startswith("person_id_"):
            parts.append(f"cast({q} as varchar) in (select person_id from {subject.PERSONS})")
        elif dtype == "VARCHAR":
            parts.append(f"{q} in (select value from {distinct_ids})")
            if col.startswith("record_id"):
                src = "source" + col[len("record_id"):]
                if src in names:
                    parts.append(f"""("{src}" || chr(31) || {q}) in (select value from {subject.IDS}
                                     where kind = 'record')""")
        elif dtype == "VARCHAR[]":
            parts.append(f"list_has_any({q}, (select list(value) from {distinct_ids}))")
        elif dtype == "JSON":
            parts.append(f"""exists (select 1 from {distinct_ids} i
                             where contains(cast({q} as varchar), to_json(i.value)::varchar))""")
    return " or ".join(f"coalesce({p}, false)" for p in parts) if parts else None


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    rows = con.execute(sql).fetchall()
    return int(rows[0][0]) if rows else 0


def _add_tombstones(con: duckdb.DuckDBPyConnection, request_id: str) -> int:
    tombstone.ensure_table(con)
    return _count(con, f"""insert into {tombstone.TOMBSTONES}
        select distinct i.kind, i.hash, '{request_id}', now()::timestamp from {subject.IDS} i
        where i.hash not in (select hash from {tombstone.TOMBSTONES})""")


def _hash_residual(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Source-scoped keys (record ids, customer ids and references) checked by hash in the staging tables."""
    out = []
    for table in STAGING_TABLES:
        predicate = matches_sql(con, table, subject.IDS)
        if predicate:
            n = con.execute(f'select count(*) from "{table}" where {predicate}').fetchall()[0][0]
            if n:
                out.append(f"{table} ({n} rows by identifier)")
    return out


def _rewrite_files(con: duckdb.DuckDBPyConnection, ws: Workspace, subj: subject.Subject) -> list[tuple[str, int]]:
    """Segment and activation files (CSV, Parquet) rewritten without rows naming the person, atomically."""
    root = ws.segments_dir
    if not root.exists():
        return []
    needle_list = scan.needles(subj, hashed=True)
    if not needle_list:
        return []
    con.execute("create or replace temp table _file_needles (value VARCHAR)")
    con.executemany("insert into _file_needles values (?)", [[n] for n in needle_list])
    out = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in (".csv", ".parquet") and p.is_file()):
        removed = _rewrite_file(con, path)
        if removed:
            out.append((ws.relative(path), removed))
    return out


def _rewrite_file(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    parquet = path.suffix.lower() == ".parquet"
    reader = "read_parquet(?)" if parquet else "read_csv(?, all_varchar = true, header = true)"
    try:
        cols = [r[0] for r in con.execute(f"describe select * from {reader}", [str(path)]).fetchall()]
    except duckdb.Error:
        return 0  # empty or header-only files cannot name anyone; the byte scan still checks them
    hit = " or ".join(f"""lower(trim(cast("{c}" as varchar))) in (select value from _file_needles)""" for c in cols)
    n = con.execute(f"select count(*) from {reader} where {hit}", [str(path)]).fetchall()[0][0]
    if not n:
        return 0
    tmp = path.with_name(f".{path.name}.erasing")
    fmt = "(format parquet)" if parquet else "(format csv, header true)"
    con.execute(f"copy (select * from {reader} where not coalesce({hit}, false)) to '{_sql_path(tmp)}' {fmt}",
                [str(path)])
    os.replace(tmp, path)
    return n


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def _seed_hashes(seeds: list[subject.Seed], salt: str) -> list[str]:
    return [salted_hash(salt, s.kind, s.value) for s in seeds]


def _log_table(con: duckdb.DuckDBPyConnection, request_id: str, started: datetime, seeds: list[subject.Seed],
               subj: subject.Subject, deleted: dict[str, int], salt: str) -> None:
    con.execute(f"""create table if not exists {ERASURE_LOG} (request_id VARCHAR, requested_at TIMESTAMP,
                    identifier_hashes VARCHAR[], persons INTEGER, identifiers INTEGER, table_name VARCHAR,
                    rows_deleted BIGINT)""")
    hashes = _seed_hashes(seeds, salt) + [salted_hash(salt, "person_id", p) for p in subj.persons]
    rows = [[request_id, started, hashes, len(subj.persons), len(subj.identifiers), t, n]
            for t, n in (deleted.items() or [("(none)", 0)])]
    con.executemany(f"insert into {ERASURE_LOG} values (?, ?, ?, ?, ?, ?, ?)", rows)


def _log_file(ws: Workspace, request_id: str, started: datetime, seeds: list[subject.Seed], subj: subject.Subject,
              deleted: dict[str, int], files: list[tuple[str, int]], added: int, residual: list[str],
              salt: str) -> str:
    path = ws.path(ws.config.privacy.audit_log_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"request_id": request_id, "requested_at": started.isoformat(timespec="seconds"),
             "finished_at": datetime.now().isoformat(timespec="seconds"),
             "identifier_hashes": _seed_hashes(seeds, salt), "persons": len(subj.persons),
             "identifiers": len(subj.identifiers), "rows_deleted": deleted, "files_rewritten": dict(files),
             "tombstones_added": added, "verified_clean": not residual, "residual_places": residual}
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
    return ws.relative(path)
