"""Tombstones: salted hashes of erased identifiers, so re-ingesting raw files cannot bring a person back.

The warehouse keeps only ``tombstones(kind, hash, request_id, created_at)``; the salt lives in a file in
the workspace (``privacy.tombstone_salt_file``, under the git-ignored ``data/``), so a copy of the
warehouse alone cannot be used to test guesses of erased e-mail addresses. Losing the salt makes the
tombstones useless, so a missing salt with existing tombstones is an error, never silently replaced.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import duckdb

from cdp_ml.engine import table_exists
from cdp_ml.errors import CdpError
from cdp_ml.privacy.identifiers import (
    HASH_MACRO,
    STAGING_TABLES,
    install_hash_macro,
    matches_sql,
    quarantine_tokens_sql,
)
from cdp_ml.sources import normalise as nz
from cdp_ml.workspace import WORKSPACE_FILE, Workspace

TOMBSTONES = "tombstones"


def ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"""create table if not exists {TOMBSTONES} (kind VARCHAR, hash VARCHAR, request_id VARCHAR,
                    created_at TIMESTAMP)""")


def salt(ws: Workspace, create: bool = False) -> str:
    """The workspace's tombstone salt (hex); created on first use when ``create``."""
    path = ws.path(ws.config.privacy.tombstone_salt_file)
    if path.is_file():
        value = path.read_text(encoding="ascii").strip()
        if value:
            return value
    if not create:
        raise CdpError(f"tombstone salt {ws.relative(path)} is missing but erasure tombstones exist: restore it "
                       f"from a backup (without it erased persons would come back on the next ingest)")
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(value + "\n")
    os.replace(tmp, path)
    return value


def workspace_of(con: duckdb.DuckDBPyConnection) -> Workspace:
    """The workspace whose warehouse this connection has open (found by walking up from the file)."""
    rows = con.execute("select path from duckdb_databases() where database_name = current_database()").fetchall()
    db = Path(rows[0][0]).resolve() if rows and rows[0][0] else None
    if db is None:
        raise CdpError("tombstones need the workspace: the warehouse is not a file")
    for parent in db.parents:
        if (parent / WORKSPACE_FILE).is_file():
            ws = Workspace.open(parent)
            if ws.warehouse_path.resolve() == db:
                return ws
    raise CdpError(f"no {WORKSPACE_FILE} found above {db} whose warehouse is this file")


def tombstone_count(con: duckdb.DuckDBPyConnection) -> int:
    if not table_exists(con, TOMBSTONES):
        return 0
    return con.execute(f"select count(*) from {TOMBSTONES}").fetchall()[0][0]


def purge_tombstoned(con: duckdb.DuckDBPyConnection, ws: Workspace | None = None) -> int:
    """Delete staging and quarantine rows carrying a tombstoned identifier; returns rows deleted.

    Called by ingestion at the end of every load. Cheap when nothing was ever erased.
    """
    if tombstone_count(con) == 0:
        return 0
    ws = ws or workspace_of(con)
    install_hash_macro(con, salt(ws))
    deleted = 0
    for table in STAGING_TABLES:
        predicate = matches_sql(con, table, TOMBSTONES)
        if predicate:
            deleted += _delete_count(con, f'delete from "{table}" where {predicate}')
    if table_exists(con, "quarantine"):
        quarantine_candidates(con, ws)
        deleted += _delete_count(con, f"""delete from quarantine where rowid in (
            select c.rid from _quarantine_candidates c join {TOMBSTONES} t on t.hash = c.hash)""")
        con.execute("drop table if exists _quarantine_candidates")
    return deleted


def _delete_count(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> int:
    rows = con.execute(sql, params or []).fetchall()
    return int(rows[0][0]) if rows else 0


def quarantine_candidates(con: duckdb.DuckDBPyConnection, ws: Workspace) -> None:
    """Temp table (rid, hash): every identifier reading of every token of every quarantined row.

    A token is tried as an email, a phone, an anonymous id, a bare customer key, and a record / customer
    id of the row's own source and of the customers source it refers to (from the workspace file).
    """
    refs = [(s.name, s.customer_source, "customer_id" if s.customer_key == "customer_id" else "record")
            for s in ws.config.sources]
    con.execute("create or replace temp table _source_refs (source VARCHAR, ref_source VARCHAR, ref_kind VARCHAR)")
    if refs:
        con.executemany("insert into _source_refs values (?, ?, ?)", refs)
    country = ws.config.default_country or "NL"
    con.execute(f"""
        create or replace temp table _quarantine_candidates as
        with tokens as (
            select q.rowid as rid, q.source, unnest({quarantine_tokens_sql()}) as tok
            from quarantine q where q.raw is not null
        ), readings as (
            select rid, 'email' as kind, {nz.email('tok')} as value from tokens
            union all select rid, 'phone', {nz.phone('tok', country)} from tokens
            union all select rid, 'anonymous_id', tok from tokens
            union all select rid, 'customer_ref', tok from tokens
            union all select rid, 'record', source || chr(31) || tok from tokens
            union all select rid, 'customer_id', source || chr(31) || tok from tokens
            union all select t.rid, r.ref_kind, r.ref_source || chr(31) || t.tok
                from tokens t join _source_refs r on r.source = t.source where r.ref_source is not null
        )
        select rid, {HASH_MACRO}(kind, value) as hash from readings where value is not null
    """)
