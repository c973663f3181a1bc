"""Retention: delete staging rows older than the configured number of days per source kind.

``privacy.retention_days`` names kinds (``events: 395``) plus ``anonymous_events`` (events without a
customer reference, usually kept shorter) and ``quarantine``. Kinds without a setting are kept. The
latest consent decision per person-identifier and purpose is always kept: deleting it would silently
turn an old, still valid grant or objection into "no decision". Counts go to ``retention_log``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import duckdb

from cdp_ml.engine import columns, table_exists
from cdp_ml.workspace import Workspace

RETENTION_LOG = "retention_log"
_TIME_COLUMN = {"customers": "coalesce(updated_at, created_at)", "events": '"timestamp"',
                "anonymous_events": '"timestamp"', "orders": "ordered_at", "sessions": '"timestamp"',
                "interactions": '"timestamp"', "consents": '"timestamp"', "quarantine": "quarantined_at"}


@dataclass(frozen=True)
class RetentionResult:
    as_of: date
    deleted: tuple[tuple[str, str, int], ...]  # (kind, cutoff date, rows deleted)

    def __str__(self) -> str:
        if not self.deleted:
            return f"retention as of {self.as_of}: no privacy.retention_days configured; nothing deleted"
        lines = [f"retention as of {self.as_of}: {sum(n for *_, n in self.deleted):,} row(s) deleted"]
        lines += [f"  {kind:<18} before {cutoff}: {n:,}" for kind, cutoff, n in self.deleted]
        return "\n".join(lines)


def apply_retention(ws: Workspace, as_of: date | None = None) -> RetentionResult:
    """Delete rows older than ``as_of - retention_days[kind]``; returns and logs the counts."""
    as_of = as_of or date.today()
    done = []
    with ws.connect() as con:
        con.execute(f"""create table if not exists {RETENTION_LOG} (run_at TIMESTAMP, as_of DATE, kind VARCHAR,
                        cutoff DATE, rows_deleted BIGINT)""")
        for kind, days in sorted(ws.config.privacy.retention_days.items()):
            cutoff = as_of - timedelta(days=days)
            n = _delete_older(con, kind, cutoff, ws.config.conversion.purchase_event_types)
            done.append((kind, cutoff.isoformat(), n))
            con.execute(f"insert into {RETENTION_LOG} values (?, ?, ?, ?, ?)", [datetime.now(), as_of, kind, cutoff, n])
    return RetentionResult(as_of, tuple(done))


def _delete_older(con: duckdb.DuckDBPyConnection, kind: str, cutoff: date, purchase_types: tuple[str, ...]) -> int:
    table = "events" if kind == "anonymous_events" else kind
    if not table_exists(con, table):
        return 0
    where = f"{_TIME_COLUMN[kind]} < ?::date"
    if kind == "anonymous_events":
        where += " and customer_ref is null"
    if kind == "consents":
        who = ", ".join(c for c in ("customer_ref", "email", "phone") if c in columns(con, "consents"))
        where += f""" and rowid not in (select rowid from consents qualify row_number() over (
                      partition by source, {who}, purpose order by "timestamp" desc) = 1)"""
    con.execute("begin transaction")
    if table == "events":  # the stored session history drops them too: their devices only, not a rebuild
        from cdp_ml.features.sessions import expire_events

        expire_events(con, where, [cutoff], purchase_types)
    rows = con.execute(f'delete from "{table}" where {where}', [cutoff]).fetchall()
    con.execute("commit")
    return int(rows[0][0]) if rows else 0
