"""Which as-of date a refresh runs for: a given date, the last completed week, or ``latest`` data."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb

from cdp_ml import engine
from cdp_ml.errors import CdpError
from cdp_ml.sources import normalise as nz
from cdp_ml.sources.kinds import TIME_FIELDS
from cdp_ml.workspace import SourceConfig, Workspace, last_completed_week_end, parse_date


def resolve_as_of(ws: Workspace, as_of: date | str | None) -> date:
    """None: the Monday starting the current ISO week; 'latest': the Monday after the newest data."""
    if as_of is None:
        return last_completed_week_end()
    if isinstance(as_of, str) and as_of.strip().lower() == "latest":
        newest = latest_data_time(ws)
        if newest is None:
            raise CdpError("--as-of latest: no timestamped data in the sources or the warehouse; give --as-of DATE")
        day = newest.date()
        return day + timedelta(days=7 - day.weekday())
    parsed = parse_date(as_of, "--as-of")
    assert parsed is not None
    return parsed


def latest_data_time(ws: Workspace) -> datetime | None:
    """Newest timestamp in the raw source files and the warehouse (whichever is later)."""
    found = [t for t in (_raw_latest(ws), _warehouse_latest(ws)) if t is not None]
    return max(found) if found else None


def _raw_latest(ws: Workspace) -> datetime | None:
    """Newest timestamp over the referencing sources' raw files, read by the ingestion's own readers.

    Files already loaded and unchanged since (size, mtime, settings) are not read: their newest row is in
    the warehouse, which ``latest_data_time`` also consults. Only new or changed exports are read.
    """
    from cdp_ml.sources.load import month_first_columns, source_timestamp
    from cdp_ml.sources.readers import RAW, read_raw

    todo = _unloaded_files(ws)
    newest: datetime | None = None
    con = duckdb.connect()
    try:
        con.execute("set TimeZone='UTC'")
        for src, paths in todo:
            column = src.columns.get(TIME_FIELDS.get(src.kind, ""))
            quoted = '"' + column.replace('"', '""') + '"'
            # the ingestion's own parser (epoch seconds/ms/us, offsets, formats, the source's zone): `latest`
            # must see the same instants that ingestion will load
            text = nz.blank_to_null(f"cast({quoted} as varchar)")
            for path in paths:
                try:
                    read_raw(con, src, path, ws.lookup_files(src))
                    parsed = source_timestamp(ws, src, text, column in month_first_columns(con, src))
                    value = con.execute(f"select max({parsed}) from {RAW}").fetchall()[0][0]
                except (CdpError, duckdb.Error):
                    continue  # unreadable file: ingestion reports it; the other files still count
                if isinstance(value, datetime) and (newest is None or value > newest):
                    newest = value
    finally:
        con.close()
    return newest


def _unloaded_files(ws: Workspace) -> list[tuple[SourceConfig, list[Path]]]:
    """Timestamped sources with the files ingestion would (re)load: new, changed, or never recorded."""
    from cdp_ml.sources.load import unchanged_since_load

    wanted = [(src, ws.source_files(src)) for src in ws.config.sources
              if src.columns.get(TIME_FIELDS.get(src.kind, ""))]
    if not ws.warehouse_path.exists():
        return wanted
    with ws.connect() as con:
        if not engine.table_exists(con, "loads") or "settings_hash" not in engine.columns(con, "loads"):
            return wanted
        return [(src, [p for p in paths if not unchanged_since_load(con, ws, src, p, ws.relative(p))])
                for src, paths in wanted]


def _warehouse_latest(ws: Workspace) -> datetime | None:
    if not ws.warehouse_path.exists():
        return None
    newest = None
    with ws.connect() as con:
        for table, column in TIME_FIELDS.items():
            if engine.table_exists(con, table) and column in engine.columns(con, table):
                value = con.execute(f'select max("{column}") from "{table}"').fetchall()[0][0]
                if isinstance(value, datetime) and (newest is None or value > newest):
                    newest = value
    return newest
