"""Ingestion: every source file -> typed, normalised canonical staging tables; nothing silently lost.

Per file: read as text (readers), type and normalise in SQL (normalise), split rows into loaded and
quarantined-with-a-reason, and commit staging rows, quarantine rows and the ``loads`` record in one
transaction. Re-ingesting an unchanged file (and unchanged mapping) is a no-op; a changed file replaces
its own rows and, for customers, earlier versions of the same record ids.

A weekly refresh re-reads nothing it has loaded: a file whose size, modification time and load settings
match its last load is skipped without being opened (the way make and rsync decide); when only the
modification time moved, the content hash decides and the new time is remembered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from cdp_ml.errors import CdpError
from cdp_ml.sources import normalise as nz
from cdp_ml.sources.kinds import EVENT_TYPES, KINDS, LINEAGE_COLUMNS, REFERENCING_KINDS, TIME_FIELDS
from cdp_ml.sources.readers import RAW, RawRead, read_raw

if TYPE_CHECKING:
    from cdp_ml.workspace import SourceConfig, Workspace

EARLIEST = "1990-01-01"  # behavioural timestamps before this are treated as broken (e.g. year 1900 defaults)
_SQL_TYPES = {"varchar": "VARCHAR", "timestamp": "TIMESTAMP", "date": "DATE", "double": "DOUBLE", "boolean": "BOOLEAN"}
# Fingerprint of the built-in event vocabulary and spelling rules: part of an events source's load settings,
# so a release that changes them reloads event files once instead of mixing old and new spellings.
_EVENT_VOCABULARY = hashlib.sha1(json.dumps([nz.EVENT_SYNONYMS, nz.CONTEXTUAL_VIEWS, nz.event_token("x")],
                                            sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class FileLoad:
    source: str
    kind: str
    file: str
    status: str  # loaded | unchanged
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class IngestResult:
    files: tuple[FileLoad, ...]
    removed_files: tuple[str, ...] = ()
    table_rows: dict[str, int] = field(default_factory=dict)
    warehouse: str = ""

    @property
    def rows_read(self) -> int:
        return sum(f.rows_read for f in self.files)

    @property
    def rows_loaded(self) -> int:
        return sum(f.rows_loaded for f in self.files)

    @property
    def rows_quarantined(self) -> int:
        return sum(f.rows_quarantined for f in self.files)

    def __str__(self) -> str:
        lines = [f"ingest -> {self.warehouse}"]
        for name in dict.fromkeys(f.source for f in self.files):
            files = [f for f in self.files if f.source == name]
            loaded = [f for f in files if f.status == "loaded"]
            what = files[0].file if len(files) == 1 else f"{len(files)} files"
            if not loaded:
                lines.append(f"  {name:<14} {what}: unchanged, skipped")
                continue
            if len(loaded) < len(files):
                what += f" ({len(files) - len(loaded)} unchanged)"
            read, ok, bad = (sum(getattr(f, a) for f in loaded) for a in ("rows_read", "rows_loaded", "rows_quarantined"))
            lines.append(f"  {name:<14} {what}: {read:,} read = {ok:,} loaded + {bad:,} quarantined")
            lines += [f"  {'':<14}   note ({f.file}): {n}" for f in loaded for n in f.notes]
        for r in self.removed_files:
            lines.append(f"  removed since last ingest (rows kept): {r}")
        lines.append(f"  total: {self.rows_read:,} read = {self.rows_loaded:,} loaded + "
                     f"{self.rows_quarantined:,} quarantined")
        if self.table_rows:
            lines.append("  staging tables: " + ", ".join(f"{k} {v:,}" for k, v in self.table_rows.items()))
        return "\n".join(lines)


def ingest(ws: Workspace, source: str | None = None) -> IngestResult:
    """Load every source (or one) into the warehouse; returns per-file counts that reconcile."""
    sources = [ws.source(source)] if source else list(ws.config.sources)
    if not sources:
        raise CdpError(f"{ws.root / 'cdp_ml.yaml'} lists no sources")
    for src in sources:
        event_overrides(src)
        timestamp_year(src)
        timestamp_offset(src)
        duplicate_rows(src)
    plan = []
    for src in sources:  # fail fast on missing files (exports and lookups) before loading anything
        plan.append((src, ws.source_files(src)))
        ws.lookup_files(src)
    loads: list[FileLoad] = []
    removed: list[str] = []
    with ws.connect() as con:
        ensure_tables(con)
        for src, files in plan:
            rel_files = [ws.relative(p) for p in files]
            for path, rel in zip(files, rel_files, strict=True):
                loads.append(_load_file(con, ws, src, path, rel))
            previous = {r[0] for r in con.execute(
                "select distinct file from loads where source = ? and status = 'loaded'", [src.name]).fetchall()}
            removed += [f"{src.name}: {f}" for f in sorted(previous - set(rel_files))]
        _purge_erased(con)
        table_rows = {k: con.execute(f'select count(*) from "{k}"').fetchall()[0][0] for k in KINDS}
    return IngestResult(tuple(loads), tuple(removed), table_rows, str(ws.warehouse_path))


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the staging, quarantine and bookkeeping tables if they do not exist."""
    for kind, fields in KINDS.items():
        cols = [f'"{f.name}" {_SQL_TYPES[f.type]}' for f in fields]
        lineage = [(n, t) for n, t in LINEAGE_COLUMNS if not (kind == "sessions" and n == "attributes")]
        cols = [f"{lineage[0][0]} VARCHAR"] + cols
        if kind in REFERENCING_KINDS:
            cols += ["ref_source VARCHAR", "ref_key VARCHAR"]
        cols += [f"{n} {t.upper()}" for n, t in lineage[1:]]
        con.execute(f'create table if not exists "{kind}" ({", ".join(cols)})')
    con.execute("""create table if not exists quarantine (source VARCHAR, kind VARCHAR, file VARCHAR, "row" BIGINT,
                   line BIGINT, raw VARCHAR, reason VARCHAR, load_id VARCHAR, quarantined_at TIMESTAMP)""")
    con.execute("""create table if not exists load_issues (source VARCHAR, file VARCHAR, "row" BIGINT,
                   field VARCHAR, reason VARCHAR, load_id VARCHAR)""")
    con.execute("""create table if not exists loads (load_id VARCHAR, source VARCHAR, kind VARCHAR, file VARCHAR,
                   file_hash VARCHAR, rows_read BIGINT, rows_loaded BIGINT, rows_quarantined BIGINT,
                   status VARCHAR, notes VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP)""")
    for column, type_ in (("file_size", "BIGINT"), ("file_mtime_ns", "BIGINT"), ("settings_hash", "VARCHAR")):
        con.execute(f"alter table loads add column if not exists {column} {type_}")  # warehouses from older versions
    # the event name as the source spelled it (trimmed), next to the canonical event_type, for auditing the mapping
    con.execute("alter table events add column if not exists raw_event_type VARCHAR")
    con.execute("alter table orders add column if not exists unit_price DOUBLE")  # warehouses from older versions


def event_overrides(src: SourceConfig) -> dict[str, str]:
    """The source's ``options.event_types`` (source name -> canonical type), checked; they win over built-ins.

    A target must be a canonical type, or the name itself (``cart: cart`` keeps a name the built-ins would map).
    """
    value = src.options.get("event_types")
    if value is None:
        return {}
    where = f"source '{src.name}': options.event_types"
    if src.kind != "events":
        raise CdpError(f"{where}: only events sources have event types")
    if not isinstance(value, dict):
        raise CdpError(f"{where}: expected a mapping of source event name -> canonical type, e.g. {{addtocart: add_to_cart}}")
    if not value:
        return {}
    overrides = {str(name): str(target) for name, target in value.items() if isinstance(target, str)}
    tokens: dict[str, tuple[str, str]] = {}
    if overrides:  # target and name spelled as ingest spells event names
        spelled = duckdb.sql("select " + ", ".join(f"{nz.event_token(nz.lit(t))}, {nz.event_token(nz.lit(n))}"
                                                   for n, t in overrides.items())).fetchall()[0]
        tokens = dict(zip(overrides, zip(spelled[::2], spelled[1::2], strict=True), strict=True))
    for name, target in value.items():
        if str(name) not in tokens or tokens[str(name)][0] not in (*EVENT_TYPES, tokens[str(name)][1]):
            raise CdpError(f"{where}.{name}: {target!r} is not a canonical event type "
                           f"(use one of {', '.join(EVENT_TYPES)}, or {name} itself to keep the name)")
    return overrides


def _mapping_json(src: SourceConfig) -> str:
    # lookups, constants and features only when set: sources without them keep the fingerprints of older loads
    return json.dumps([src.kind, src.columns, src.options, src.customer_source, src.customer_key, src.timezone,
                       *([[dataclasses.asdict(lu) for lu in src.lookups]] if src.lookups else []),
                       *([src.constants] if src.constants else []), *([list(src.features)] if src.features else [])],
                      sort_keys=True, default=str)


def _file_hash(path: Path, src: SourceConfig) -> str:
    """Content hash plus the source's mapping, so a changed mapping reloads an unchanged file."""
    digest = hashlib.sha1()
    digest.update(_mapping_json(src).encode())
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _settings_hash(ws: Workspace, src: SourceConfig) -> str:
    """Everything besides the bytes that shapes the loaded rows: the mapping and the workspace defaults it uses."""
    effective = [_mapping_json(src), src.timezone or ws.config.timezone, ws.config.default_country]
    for file in ws.lookup_files(src):  # a changed lookup file changes the loaded rows
        stat = file.stat()
        effective.append([stat.st_size, stat.st_mtime_ns])
    if src.kind == "events":
        effective.append(_EVENT_VOCABULARY)
    return hashlib.sha1(json.dumps(effective).encode()).hexdigest()


@dataclass(frozen=True)
class _Fingerprint:
    """What the last successful load of a file saw; a file that still matches it is not read again."""

    file_hash: str
    size: int | None
    mtime_ns: int | None
    settings: str | None  # NULL for loads recorded before settings were fingerprinted


def _last_load(con: duckdb.DuckDBPyConnection, source: str, rel: str) -> tuple[str, _Fingerprint] | None:
    rows = con.execute("select load_id, file_hash, file_size, file_mtime_ns, settings_hash from loads "
                       "where source = ? and file = ? and status = 'loaded' order by finished_at desc limit 1",
                       [source, rel]).fetchall()
    return (rows[0][0], _Fingerprint(*rows[0][1:])) if rows else None


def unchanged_since_load(con: duckdb.DuckDBPyConnection, ws: Workspace, src: SourceConfig, path: Path,
                         rel: str) -> bool:
    """True when ``path`` still has the size, modification time and settings of its last load (no read)."""
    last = _last_load(con, src.name, rel)
    if last is None:
        return False
    stat = path.stat()
    fp = last[1]
    return (fp.size, fp.mtime_ns, fp.settings) == (stat.st_size, stat.st_mtime_ns, _settings_hash(ws, src))


def _skip_unchanged(con: duckdb.DuckDBPyConnection, ws: Workspace, src: SourceConfig, path: Path,
                    rel: str) -> tuple[bool, str]:
    """(skip?, content hash or '' when not computed). Size+mtime+settings match: skip unread; else hash decides."""
    last = _last_load(con, src.name, rel)
    stat = path.stat()
    settings = _settings_hash(ws, src)
    if last is not None:
        load_id, fp = last
        if fp.settings is not None and fp.settings != settings:
            return False, ""
        if (fp.size, fp.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
            return True, fp.file_hash
    file_hash = _file_hash(path, src)
    if last is not None and last[1].file_hash == file_hash:  # touched or copied, same bytes: remember the new stat
        con.execute("update loads set file_size = ?, file_mtime_ns = ?, settings_hash = ? where load_id = ?",
                    [stat.st_size, stat.st_mtime_ns, settings, last[0]])
        return True, file_hash
    return False, file_hash


def _load_file(con: duckdb.DuckDBPyConnection, ws: Workspace, src: SourceConfig, path: Path, rel: str) -> FileLoad:
    stat = path.stat()  # before reading: a file growing during the load is seen as changed next time
    skip, file_hash = _skip_unchanged(con, ws, src, path, rel)
    if skip:
        return FileLoad(src.name, src.kind, rel, "unchanged")
    file_hash = file_hash or _file_hash(path, src)
    started = datetime.now()
    load_id = uuid.uuid4().hex[:12]
    raw = read_raw(con, src, path, ws.lookup_files(src))
    _check_mapping(src, raw, path)
    month_first = month_first_columns(con, src)
    typed_sql, notes_sql = _typed_select(ws, src, raw, rel, month_first)
    con.execute(f"create or replace temp table _typed as {typed_sql}")
    _mark_duplicates(con, src, rel)
    notes = raw.notes + [f"column {c} read as month-first dates (m/d/y: some values only fit that order); "
                         f"options.timestampformat / dateformat overrides" for c in sorted(month_first)]
    not_utf8 = sum(1 for _, _, reason in raw.rejects if "invalid encoding" in reason)
    if not_utf8 and "encoding" not in src.options:  # e.g. the ISO-8859-1 CSV copies of Online Retail
        notes.append(f"{not_utf8} lines are not UTF-8 and were quarantined: the file is probably in another "
                     f"encoding (set options.encoding: latin-1 or utf-16)")
    notes += [n for n in (con.execute(q).fetchall()[0][0] for q in notes_sql) if n]
    canonical = [f.name for f in KINDS[src.kind]]
    extra = _extra_columns(con, src, raw) if src.kind == "sessions" else []
    target_cols = ["source", *canonical, *(["raw_event_type"] if src.kind == "events" else []),
                   *(["ref_source", "ref_key"] if src.kind in REFERENCING_KINDS else []),
                   *extra, *(["attributes"] if src.kind != "sessions" else []), "_file", "_row", "_load_id"]
    select_cols = [("?" if c in ("source", "_file", "_load_id") else f'"{c}"') for c in target_cols]
    con.execute("begin transaction")
    try:
        con.execute(f'delete from "{src.kind}" where source = ? and _file = ?', [src.name, rel])
        con.execute("delete from quarantine where source = ? and file = ?", [src.name, rel])
        con.execute("delete from load_issues where source = ? and file = ?", [src.name, rel])
        if src.kind == "customers":  # a changed export updates records by id, wherever they came from
            con.execute("delete from customers where source = ? and record_id in "
                        "(select record_id from _typed where _reason is null)", [src.name])
        params = []
        for c in target_cols:
            if c == "source":
                params.append(src.name)
            elif c == "_file":
                params.append(rel)
            elif c == "_load_id":
                params.append(load_id)
        con.execute(f'insert into "{src.kind}" ({", ".join(chr(34) + c + chr(34) for c in target_cols)}) '
                    f"select {', '.join(select_cols)} from _typed where _reason is null", params)
        raw_json = "json_object(" + ", ".join(f"{nz.lit(c)}, r.{_q(c)}" for c in raw.columns) + ")"
        con.execute(f"""insert into quarantine select ?, ?, ?, t._row, null, cast({raw_json} as varchar), t._reason,
                        ?, now()::timestamp from _typed t join {RAW} r on r._row = t._row where t._reason is not null""",
                    [src.name, src.kind, rel, load_id])
        if raw.rejects:
            con.executemany("insert into quarantine values (?, ?, ?, null, ?, ?, ?, ?, now()::timestamp)",
                            [[src.name, src.kind, rel, line, text[:100000], reason, load_id]
                             for line, text, reason in raw.rejects])
        _record_field_issues(con, src, rel, load_id)
        loaded = con.execute("select count(*) from _typed where _reason is null").fetchall()[0][0]
        quarantined = con.execute("select count(*) from _typed where _reason is not null").fetchall()[0][0] \
            + len(raw.rejects)
        rows_read = raw.rows + len(raw.rejects)
        con.execute("insert into loads (load_id, source, kind, file, file_hash, rows_read, rows_loaded, "
                    "rows_quarantined, status, notes, started_at, finished_at, file_size, file_mtime_ns, settings_hash) "
                    "values (?, ?, ?, ?, ?, ?, ?, ?, 'loaded', ?, ?, now()::timestamp, ?, ?, ?)",
                    [load_id, src.name, src.kind, rel, file_hash, rows_read, loaded, quarantined,
                     "; ".join(notes) or None, started, stat.st_size, stat.st_mtime_ns, _settings_hash(ws, src)])
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise
    finally:
        con.execute(f"drop table if exists {RAW}; drop table if exists _typed")
    return FileLoad(src.name, src.kind, rel, "loaded", rows_read, loaded, quarantined, tuple(notes))


def _check_mapping(src: SourceConfig, raw: RawRead, path: Path) -> None:
    present = set(raw.columns)
    for column in src.features:
        if column not in present:
            raise CdpError(f"source '{src.name}': feature column {column!r} is not in {path.name} "
                           f"(columns: {', '.join(raw.columns[:12])}{', ...' if len(raw.columns) > 12 else ''})")
    for canonical, column in src.columns.items():
        if column not in present:
            shown = ", ".join(raw.columns[:12]) + (", ..." if len(raw.columns) > 12 else "")
            hint = ""
            if len(raw.columns) == 1 and any(ch in raw.columns[0] for ch in ";,\t|"):
                hint = " - wrong delimiter? set options: {delim: ';'} (or ',', '\\t', '|')"
            raise CdpError(f"source '{src.name}': column {column!r} mapped to {canonical} is not in {path.name} "
                           f"(columns: {shown}){hint}")


def _q(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def month_first_columns(con: duckdb.DuckDBPyConnection, src: SourceConfig) -> set[str]:
    """Mapped timestamp/date columns of the raw table whose values show month-first (US) dates, none day-first.

    Only without the source's own format for that type; decided per file from the data, so an m/d/y export is
    neither read with day and month swapped (11/1/2000 as 11 January) nor quarantined where the day is above 12.
    """
    columns = [src.columns[f.name] for f in KINDS[src.kind] if f.name in src.columns
               and not src.options.get("timestampformat" if f.type == "timestamp" else "dateformat")
               and f.type in ("timestamp", "date")]
    columns = list(dict.fromkeys(columns))
    if not columns:
        return set()
    counts = con.execute("select " + ", ".join(e for c in columns for e in nz.dmy_evidence(_q(c))) + f" from {RAW}"
                         ).fetchall()[0]
    return {c for i, c in enumerate(columns) if counts[2 * i] == 0 and counts[2 * i + 1] > 0}


def _typed_select(ws: Workspace, src: SourceConfig, raw: RawRead, rel: str,
                  month_first: set[str] = frozenset()) -> tuple[str, list[str]]:
    """SQL selecting typed canonical fields, a quarantine reason per row, and note queries.

    Three materialised steps (text cleaned once -> typed once -> reasons over typed columns) keep each
    regular expression to one evaluation per value.
    """
    tz = src.timezone or ws.config.timezone
    ts_fmt = (src.options.get("timestampformat"), _elapsed(src), timestamp_year(src))
    date_fmt = src.options.get("dateformat")
    country = ws.config.default_country
    latest = (datetime.now() + timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
    mapped = set(src.columns.values())
    unmapped = [c for c in raw.columns if c not in mapped and (not src.features or c in src.features)]
    clean = [f"{(nz.missing_identifier if field in nz.IDENTIFIER_FIELDS else nz.blank_to_null)(_q(col))} "
             f"as {_q('__t_' + field)}" for field, col in src.columns.items()]
    clean += [_q(c) for c in unmapped]
    if "phone" in src.columns:
        clean.append(f"regexp_replace(trim({_q(src.columns['phone'])}), '[^0-9+]', '', 'g') as __d_phone")
    offset = timestamp_offset(src, raw)
    if offset:
        clean.append(f"{nz.number(nz.blank_to_null(_q(offset[0])))} as __offset")
    typed: list[str] = []
    reasons: list[str] = []
    negative = "coalesce(" + nz.number('"__t_quantity"') + " < 0, false)" if "quantity" in src.columns else "false"
    for f in KINDS[src.kind]:
        column = src.columns.get(f.name)
        if column is None and (src.kind, f.name) == ("orders", "amount") and "unit_price" in src.columns:
            unit = nz.number('"__t_unit_price"')
            qty = f"abs({nz.number(_q('__t_quantity'))})" if "quantity" in src.columns else "1.0"
            typed.append(f"cast({qty} * {unit} as DOUBLE) as amount")  # a return's amount is positive, as its quantity
            continue
        if column is None:
            default = f"case when {negative} then 'returned' else 'completed' end" \
                if (src.kind, f.name) == ("orders", "status") else \
                "1.0" if (src.kind, f.name) == ("orders", "quantity") else \
                "\"__t_customer_ref\" || '@' || \"__t_ordered_at\"" if (src.kind, f.name) == ("orders", "order_id") \
                else f"{nz.lit(rel + '#')} || _row" if (src.kind, f.name) == ("sessions", "session_id") \
                else "null"  # logs without an order number (CDNOW) or a session key (UCI Online Shoppers)
            typed.append(f"cast({default} as {_SQL_TYPES[f.type]}) as \"{f.name}\"")
            continue
        r = _q("__t_" + f.name)
        if f.name == "phone":
            expr = nz.phone(r, country, digits="__d_phone")
        elif (src.kind, f.name) == ("events", "event_type"):  # looked up per distinct name in the vocab CTE
            named = '"__t_product_id" is not null' if "product_id" in src.columns else "false"
            expr = f"(case when {named} then __ev_product else __ev_page end)"
            typed.append(f"{r} as raw_event_type")
        else:
            expr = _typed_expr(src.kind, f.name, f.type, r, tz, ts_fmt, date_fmt, country, column in month_first)
            if offset and f.name == TIME_FIELDS.get(src.kind):  # a missing offset leaves the time as it is
                expr = (f"({expr} + to_microseconds(cast(round(coalesce(__offset, 0) * "
                        f"{nz.ELAPSED_UNITS[offset[1]]}) as bigint)))")
        if src.kind == "orders" and f.name == "quantity":
            expr = f"abs({expr})"
        if src.kind == "orders" and f.name == "status":
            typed.append(f"{expr} as __status_known")
            expr = f"(case when {negative} and coalesce({expr}, 'completed') = 'completed' then 'returned' else {expr} end)"
            reasons.append(f"case when {r} is not null and __status_known is null then 'unknown order status in column "
                           f"{_esc(column)} (use completed/returned/cancelled)' end")
        typed.append(f"{expr} as \"{f.name}\"")
        if f.required:
            reasons.append(f"case when {r} is null then 'missing required field {f.name} (column {_esc(column)})' end")
        if src.kind == "customers":
            continue  # optional customer fields never quarantine a record (see _record_field_issues)
        v = f'"{f.name}"'
        if f.type == "timestamp":
            reasons.append(f"case when {r} is not null and {v} is null then 'unparseable timestamp in column {_esc(column)}' "
                           f"when {v} < TIMESTAMP '{EARLIEST}' or {v} > TIMESTAMP '{latest}' then "
                           f"'timestamp out of range (before {EARLIEST} or in the future) in column {_esc(column)}' end")
        elif f.type in ("double", "boolean", "date") or f.name == "purpose":
            what = {"double": "not a number", "boolean": "not true/false", "date": "not a date"}.get(
                f.type, "unknown consent purpose")
            reasons.append(f"case when {r} is not null and {v} is null then '{what} in column {_esc(column)}' end")
    if src.kind in REFERENCING_KINDS:
        typed.append(f"cast({nz.lit(src.customer_source) if src.customer_source else 'null'} as varchar) as ref_source")
        typed.append(f"{nz.lit(src.customer_key)} as ref_key")
    if src.kind == "sessions":
        typed += [f"{_q(c)} as {_q('attr_' + c if c in _reserved(src) else c)}" for c in unmapped]
    elif unmapped:
        typed.append("json_object(" + ", ".join(f"{nz.lit(c)}, {_q(c)}" for c in unmapped) + ") as attributes")
    else:
        typed.append("cast(null as json) as attributes")
    typed += [_q("__t_" + field) for field in src.columns]
    reason = f"nullif(concat_ws('; ', {', '.join(reasons)}), '')" if reasons else "cast(null as varchar)"
    helpers = [_q("__t_" + field) for field in src.columns] + \
        (["__status_known"] if (src.kind == "orders" and "status" in src.columns) else [])
    if offset:
        typed.append("__offset")
        helpers.append("__offset")
    vocab, join = "", ""
    if src.kind == "events":  # the mapping runs once per distinct event name, then a hash join types every row
        overrides = event_overrides(src)
        names = nz.blank_to_null(_q(src.columns["event_type"]))  # as c1 cleans it; from the raw table, so c1 streams
        vocab = (f"vocab as materialized (select __ev_raw, {nz.event_type('__ev_raw', overrides, True)} as __ev_product, "
                 f"{nz.event_type('__ev_raw', overrides, False)} as __ev_page "
                 f"from (select distinct {names} as __ev_raw from {RAW})), ")
        join = ' left join vocab on c1."__t_event_type" = vocab.__ev_raw'
    sql = (f"with c1 as materialized (select {', '.join(clean)}, _row from {RAW}), {vocab}"
           f"c2 as materialized (select {', '.join(typed)}, _row from c1{join}) "
           f"select * exclude ({', '.join(helpers)}), {reason} as _reason from c2")
    notes = []
    if src.kind == "events":
        notes.append(_unmapped_event_note())
    if src.kind == "orders" and "quantity" in src.columns:
        qty = nz.number(nz.blank_to_null(_q(src.columns["quantity"])))
        notes.append(f"select case when count(*) > 0 then count(*) || ' order lines with negative quantity loaded as returns' end "
                     f"from {RAW} where {qty} < 0")
    return sql, notes


def _unmapped_event_note() -> str:
    """A note query naming the most frequent event names outside the vocabulary, so a user can map them.

    Names with an '@' are counted but not shown (a log may put an address in an event name).
    """
    known = ", ".join(nz.lit(t) for t in EVENT_TYPES)
    return (f"with u as (select event_type, count(*) as n, bool_or(raw_event_type like '%@%') as has_at from _typed "
            f"where _reason is null and event_type not in ({known}) group by 1), "
            "r as (select *, row_number() over (order by n desc, event_type) as rk from u) "
            "select case when count(*) > 0 then count(*) || ' event name(s) outside the built-in vocabulary kept as named ("
            "most frequent: ' || coalesce(string_agg(left(event_type, 40) || ' x' || n, ', ' order by rk) "
            "filter (where rk <= 5 and not has_at), '-') || "
            "'); options.event_types maps them to page_view, product_view, search, add_to_cart, checkout_start, "
            "login or purchase' end from r")


def _esc(text: str) -> str:
    return text.replace("'", "''")


def _reserved(src: SourceConfig) -> set[str]:
    return {f.name for f in KINDS[src.kind]} | {n for n, _ in LINEAGE_COLUMNS} | {"ref_source", "ref_key", "_reason"}


def source_timestamp(ws: Workspace, src: SourceConfig, text: str, month_first: bool = False) -> str:
    """SQL reading the text ``text`` as the source's timestamps (formats, zone, numeric origin) in naive UTC;
    ``month_first`` as ``month_first_columns`` decided for the file."""
    return nz.timestamp(text, src.timezone or ws.config.timezone, src.options.get("timestampformat"), _elapsed(src),
                        month_first, timestamp_year(src))


def timestamp_offset(src: SourceConfig, raw: RawRead | None = None) -> tuple[str, str] | None:
    """The source's ``timestamp_offset`` ``{column, unit}``, checked: a column counting units after the time
    field's value. Diginetica gives a view's day and its milliseconds since the session began (``timeframe``);
    without the offset a session's views and purchase share one instant and their order is lost."""
    value = src.options.get("timestamp_offset")
    if value is None:
        return None
    where = f"source '{src.name}': options.timestamp_offset"
    if not isinstance(value, dict) or not isinstance(value.get("column"), str) or set(value) - {"column", "unit"}:
        raise CdpError(f"{where}: expected {{column: COLUMN, unit: {'|'.join(nz.ELAPSED_UNITS)}}}")
    unit = str(value.get("unit", ""))
    if unit not in nz.ELAPSED_UNITS:
        raise CdpError(f"{where}.unit: {unit or 'missing'!r} is not one of {', '.join(nz.ELAPSED_UNITS)}")
    if src.kind not in TIME_FIELDS:
        raise CdpError(f"{where}: {src.kind} sources have no time field to offset")
    if raw is not None and value["column"] not in raw.columns:
        raise CdpError(f"{where}.column: {value['column']!r} is not in the file (columns: {', '.join(raw.columns[:12])})")
    return value["column"], unit


def duplicate_rows(src: SourceConfig) -> str:
    """The source's ``duplicate_rows``, checked: ``quarantine`` (default: a re-exported row is loaded once) or
    ``keep``, for logs with coarse times whose identical rows are real repeats (Tmall stamps only the day, so
    two clicks on one item that day are two equal rows). Record ids and event ids stay unique either way."""
    value = str(src.options.get("duplicate_rows", "quarantine"))
    if value not in ("quarantine", "keep"):
        raise CdpError(f"source '{src.name}': options.duplicate_rows: {value!r} is not quarantine or keep")
    return value


def timestamp_year(src: SourceConfig) -> int | None:
    """The source's ``timestamp_year``, checked: the year of timestamps whose ``timestampformat`` has none
    (Tmall's user_log keeps only month and day, ``%m%d``)."""
    year = src.options.get("timestamp_year")
    if year is None:
        return None
    where = f"source '{src.name}': options.timestamp_year"
    if isinstance(year, bool) or not isinstance(year, int) or not 1990 <= year <= 2100:
        raise CdpError(f"{where}: expected a year such as 2014, got {year!r}")
    fmts = src.options.get("timestampformat")
    fmts = [fmts] if isinstance(fmts, str) else list(fmts or [])
    if not fmts or any(d in f for f in fmts for d in ("%Y", "%y", "%G")):
        raise CdpError(f"{where}: needs a timestampformat without a year, e.g. '%m%d'")
    return year


def _elapsed(src: SourceConfig) -> tuple[str, str] | None:
    """The source's (origin, unit) for numeric timestamps, checked: ``timestamp_origin`` / ``timestamp_unit``."""
    origin, unit = src.options.get("timestamp_origin"), src.options.get("timestamp_unit")
    if origin is None:
        if unit is not None:
            raise CdpError(f"source '{src.name}': timestamp_unit needs timestamp_origin (the date numbers count from)")
        return None
    try:
        start = datetime.fromisoformat(str(origin))
    except ValueError:
        raise CdpError(f"source '{src.name}': timestamp_origin {str(origin)!r} is not a date (YYYY-MM-DD)") from None
    unit = str(unit or "day")
    if unit not in nz.ELAPSED_UNITS:
        raise CdpError(f"source '{src.name}': timestamp_unit {unit!r} is not one of {', '.join(nz.ELAPSED_UNITS)}")
    return start.strftime("%Y-%m-%d %H:%M:%S"), unit


def _typed_expr(kind: str, name: str, type_: str, r: str, tz: str, ts_fmt, date_fmt, country: str,
                month_first: bool = False) -> str:
    if type_ == "timestamp":
        return nz.timestamp(r, tz, ts_fmt[0], ts_fmt[1], month_first, ts_fmt[2])
    if type_ == "date":
        d = nz.date_value(r, date_fmt, month_first)
        return f"(case when {d} between DATE '1900-01-01' and current_date then {d} end)"
    if type_ == "double":
        return nz.number(r)
    if (kind, name) == ("sessions", "converted"):  # empty: did not convert; a count or revenue > 0: did
        return f"(case when {r} is null then false else coalesce({nz.boolean(r)}, {nz.number(r)} > 0) end)"
    if type_ == "boolean":
        return nz.boolean(r)
    if name == "email":
        return nz.email(r)
    if name == "phone":
        return nz.phone(r, country)
    if name in ("first_name", "last_name", "street", "city"):
        return nz.name(r)
    if name == "postcode":
        return nz.postcode(r)
    if name == "country":
        return f"upper({r})"
    if name in ("gender", "type", "channel"):
        return nz.lower_token(r)
    if name == "purpose":
        return nz.purpose(r)
    if name == "status" and kind == "orders":
        return nz.status(r)
    return r


def _mark_duplicates(con: duckdb.DuckDBPyConnection, src: SourceConfig, rel: str) -> None:
    """Exact duplicate rows (or repeated event ids / record ids) are quarantined, keeping the first.

    Two passes so the costly window runs only over rows that have a twin: a hash aggregate finds the
    candidate keys, then the exact comparison (partition by the columns themselves) ranks just those.
    """
    if src.kind == "customers":
        key_cols, order = ["record_id"], "updated_at desc nulls last, _row desc"
        reason = "'duplicate record_id in this file (a later version of the record was loaded)'"
    elif src.kind == "events" and "event_id" in src.columns:
        key_cols, order, reason = ["event_id"], "_row", "'duplicate event_id'"
    elif duplicate_rows(src) == "keep":  # a log whose repeats are real (same item clicked twice in a day)
        return
    else:
        key_cols = [c for c in _typed_columns(con) if c not in ("_row", "_reason")]
        order, reason = "_row", "'duplicate row'"
    keys = ", ".join(_q(c) for c in key_cols)
    eligible = "_reason is null" + (f" and {keys} is not null" if len(key_cols) == 1 else "")
    con.execute(f"""update _typed set _reason = {reason} where _row in (
        select _row from (select _row, row_number() over (partition by {keys} order by {order}) as n
                          from _typed where {eligible} and hash({keys}) in
                              (select hash({keys}) from _typed where {eligible} group by 1 having count(*) > 1))
        where n > 1)""")
    if src.kind == "events" and "event_id" in src.columns:  # an event already loaded from another file
        con.execute("""update _typed set _reason = 'duplicate event_id (already loaded from another file)'
                       where _reason is null and event_id in
                       (select event_id from events where source = ? and _file <> ?)""", [src.name, rel])


def _typed_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("describe _typed").fetchall()]


def _extra_columns(con: duckdb.DuckDBPyConnection, src: SourceConfig, raw: RawRead) -> list[str]:
    """Sessions keep every unmapped column as a typed feature column (double, boolean or text)."""
    mapped = set(src.columns.values())
    reserved = _reserved(src)
    extra = []
    for c in raw.columns:
        if c in mapped or (src.features and c not in src.features):
            continue
        name = "attr_" + c if c in reserved else c
        has_text = con.execute(f"select count(*) from _typed where {_q(name)} is not null and "
                               f"try_cast({_q(name)} as double) is null").fetchall()[0][0]
        has_non_bool = con.execute(f"select count(*) from _typed where {_q(name)} is not null and "
                                   f"{nz.boolean(_q(name))} is null").fetchall()[0][0]
        if not has_text:
            type_, expr = "DOUBLE", f"try_cast({_q(name)} as double)"
        elif not has_non_bool:
            type_, expr = "BOOLEAN", nz.boolean(_q(name))
        else:
            type_, expr = "VARCHAR", _q(name)
        existing = dict(con.execute("select column_name, data_type from duckdb_columns() "
                                    "where table_name = 'sessions'").fetchall())
        if name not in existing:
            con.execute(f"alter table sessions add column {_q(name)} {type_}")
        elif existing[name] != type_:
            expr = f"try_cast({_q(name)} as {existing[name]})"
        con.execute(f"create or replace temp table _typed as select * replace ({expr} as {_q(name)}) from _typed")
        extra.append(name)
    return extra


def _record_field_issues(con: duckdb.DuckDBPyConnection, src: SourceConfig, rel: str, load_id: str) -> None:
    """Customer fields that did not parse are loaded empty; the problem is recorded per row and field."""
    if src.kind != "customers":
        return
    checks = {"email": "not an e-mail address", "phone": "not a phone number", "date_of_birth": "not a plausible date",
              "created_at": "unparseable timestamp", "updated_at": "unparseable timestamp"}
    fields = [(f, src.columns[f], why) for f, why in checks.items() if src.columns.get(f)]
    if not fields:
        return
    # one join of typed and raw rows for all fields; each row yields the list of its fields loaded empty
    issues = ", ".join(f"case when t.\"{f}\" is null and {nz.blank_to_null('r.' + _q(col))} is not null "
                       f"then {nz.lit(f)} end" for f, col, _ in fields)
    reason = "case f " + " ".join(f"when {nz.lit(f)} then {nz.lit(f'{why} (column {col}); loaded empty')}"
                                  for f, col, why in fields) + " end"
    con.execute(f"""insert into load_issues select ?, ?, _row, f, {reason}, ? from (
                    select t._row, unnest(list_filter([{issues}], lambda x: x is not null)) as f
                    from _typed t join {RAW} r on r._row = t._row where t._reason is null)""",
                [src.name, rel, load_id])


def _purge_erased(con: duckdb.DuckDBPyConnection) -> None:
    """Re-ingesting raw files must not bring back erased persons (tombstones kept by the privacy stage)."""
    from cdp_ml.privacy.tombstone import purge_tombstoned

    purge_tombstoned(con)
