"""Readers: one export file -> a temporary all-text table with a row number, plus the lines the reader rejected.

Reading everything as text first means a bad value becomes a quarantined row with a reason, never a
failed load. CSV uses DuckDB's reader with ``store_rejects``; JSONL is read line by line (so a broken
line is one rejected row with its line number); Parquet is read and cast to text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from cdp_ml.errors import CdpError
from cdp_ml.sources.kinds import constant_column
from cdp_ml.sources.normalise import blank_to_null, lit

if TYPE_CHECKING:
    from cdp_ml.workspace import SourceConfig

RAW = "_raw_in"
# read_csv options a user may set (DuckDB names); date/time formats are applied by the normaliser instead.
CSV_OPTIONS = {"delim", "sep", "header", "quote", "escape", "encoding", "skip", "comment", "new_line",
               "null_padding", "strict_mode", "max_line_size", "nullstr", "auto_detect", "compression",
               "allow_quoted_nulls", "ignore_errors"}
FORMAT_OPTIONS = {"dateformat", "timestampformat", "timestamp_origin", "timestamp_unit", "timestamp_year",
                  "timestamp_offset", "duplicate_rows", "event_types", "sheet"}  # sheet: Excel only  # applied by the normaliser (load.py)
REJECTS = "store_rejects=true, rejects_table='_rejects', rejects_scan='_reject_scans'"


@dataclass
class RawRead:
    columns: list[str]  # source columns (text), in file order
    rows: int  # rows in the raw table
    rejects: list[tuple[int | None, str, str]] = field(default_factory=list)  # (line, raw text, reason)
    notes: list[str] = field(default_factory=list)  # what the lookups could not match


def _sql_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return lit(str(value))


def _check_options(src: SourceConfig) -> dict:
    opts = dict(src.options)
    unknown = sorted(set(opts) - CSV_OPTIONS - FORMAT_OPTIONS)
    if unknown:
        raise CdpError(f"source '{src.name}': unknown reader option {unknown[0]!r} "
                       f"(options: {', '.join(sorted(CSV_OPTIONS | FORMAT_OPTIONS))})")
    return {k: v for k, v in opts.items() if k in CSV_OPTIONS}


def read_raw(con: duckdb.DuckDBPyConnection, src: SourceConfig, path: Path,
             lookup_files: Sequence[Path] = ()) -> RawRead:
    """Read one file of ``src`` into the raw table, then join its lookups (``Workspace.lookup_files``)."""
    fmt = src.file_format()
    if path.stat().st_size == 0:
        raise CdpError(f"source '{src.name}': file {path.name} is empty")
    if fmt == "csv":
        raw = _read_csv(con, src, path)
    elif fmt == "jsonl":
        raw = _read_jsonl(con, src, path)
    elif fmt == "excel":
        raw = _read_excel(con, src, path)
    else:
        raw = _read_parquet(con, src, path)
    for i, file in enumerate(lookup_files):
        raw = _join_lookup(con, src, i, file, raw)
    for name, value in src.constants.items():  # typed by the normaliser like any text column
        text = str(value).lower() if isinstance(value, bool) else str(value)
        con.execute(f'alter table {RAW} add column "{_ident(constant_column(name))}" varchar default {lit(text)}')
        raw = replace(raw, columns=[*raw.columns, constant_column(name)])
    return _fallbacks(con, src, path, _extract_paths(con, src, raw))


def _fallbacks(con: duckdb.DuckDBPyConnection, src: SourceConfig, path: Path, raw: RawRead) -> RawRead:
    """Fields mapped to a list of columns: one column holding the first non-empty value of the list."""
    added = []
    for name, members in src.fallbacks.items():
        if name in raw.columns:  # a column really named so wins, as with dotted names
            continue
        for column in members:
            if column not in raw.columns:
                shown = ", ".join(raw.columns[:12]) + (", ..." if len(raw.columns) > 12 else "")
                raise CdpError(f"source '{src.name}': column {column!r} (of the list {name!r}) is not in {path.name} "
                               f"(columns: {shown})")
        first = "coalesce(" + ", ".join(blank_to_null(f'"{_ident(c)}"') for c in members) + ")"
        con.execute(f'alter table {RAW} add column "{_ident(name)}" varchar')
        con.execute(f'update {RAW} set "{_ident(name)}" = {first}')
        added.append(name)
    return replace(raw, columns=[*raw.columns, *added]) if added else raw


def _extract_paths(con: duckdb.DuckDBPyConnection, src: SourceConfig, raw: RawRead) -> RawRead:
    """Mapped columns that are paths into a nested column (``device.category``, ``items[0].item_id``) as text.

    GA4 exports and analytics JSON keep the fields a mapping needs inside objects and lists; a column whose
    name really contains the dot wins over the path.
    """
    paths = {}
    for column in [*src.columns.values(), *(c for members in src.fallbacks.values() for c in members), *src.features]:
        head = re.match(r"[^.\[]+", column)
        if column in raw.columns or head is None or head.group(0) not in raw.columns or column in paths:
            continue
        rest = column[head.end():]
        if not re.fullmatch(r"(\.[^.\[\]]+|\[[0-9]+\])+", rest):
            continue
        nested = f'"{_ident(head.group(0))}"'  # text that is not JSON reads as missing (a required field quarantines)
        paths[column] = f"case when json_valid({nested}) then json_extract_string({nested}, {lit('$' + rest)}) end"
    if not paths:
        return raw
    try:
        con.execute(f"create or replace temp table {RAW} as select *, "
                    + ", ".join(f'{expr} as "{_ident(c)}"' for c, expr in paths.items()) + f" from {RAW}")
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise CdpError(f"source '{src.name}': cannot read the nested columns {', '.join(paths)}: {first}") from None
    return replace(raw, columns=[*raw.columns, *paths])


def _join_lookup(con: duckdb.DuckDBPyConnection, src: SourceConfig, i: int, file: Path, raw: RawRead) -> RawRead:
    """Left-join lookup ``i`` on its key: adds the lookup's other columns, never a row (keys must be unique)."""
    lookup = src.lookups[i]
    left, right = lookup.keys()
    where = f"source '{src.name}': lookup {file.name}"
    if left not in raw.columns:
        raise CdpError(f"{where}: key column {left!r} is not in the source file (columns: {', '.join(raw.columns[:12])})")
    con.execute(f"alter table {RAW} rename to _raw_main")
    part = read_raw(con, replace(src, name=f"{src.name} lookup", path=lookup.path, format=lookup.format,
                                 options=lookup.options, lookups=(), constants={}, columns={}), file)
    con.execute(f"alter table {RAW} rename to _lookup")
    con.execute(f"alter table _raw_main rename to {RAW}")
    try:
        if right not in part.columns:
            raise CdpError(f"{where}: key column {right!r} is not in it (columns: {', '.join(part.columns[:12])})")
        key_l, key_r = f'trim(m."{_ident(left)}")', f'trim("{_ident(right)}")'
        repeated = con.execute(f"select count(*) from (select {key_r} as k from _lookup where {key_r} <> '' "
                               f"group by k having count(*) > 1)").fetchall()[0][0]
        if repeated:
            raise CdpError(f"{where}: {repeated} values of {right!r} are on more than one row "
                           f"(a lookup needs one row per key)")
        added = [c for c in part.columns if c not in raw.columns and c != right]
        picked = "".join(f', l."{_ident(c)}"' for c in added)
        con.execute(f"create or replace temp table _joined as select m.*{picked}, l._row is null as _unmatched "
                    f"from {RAW} m left join _lookup l on {key_l} = trim(l.\"{_ident(right)}\") and {key_l} <> ''")
        unmatched = con.execute("select count(*) from _joined where _unmatched").fetchall()[0][0]
        con.execute(f"drop table {RAW}")
        con.execute(f"create temp table {RAW} as select * exclude (_unmatched) from _joined order by _row")
    finally:
        con.execute("drop table if exists _lookup; drop table if exists _joined")
    notes = list(raw.notes)
    if unmatched:
        notes.append(f"lookup {file.name}: {unmatched} of {raw.rows} rows have no {right} match")
    if part.rejects:
        notes.append(f"lookup {file.name}: {len(part.rejects)} unreadable lines ignored")
    return replace(raw, columns=raw.columns + added, notes=notes)


def _read_csv(con: duckdb.DuckDBPyConnection, src: SourceConfig, path: Path) -> RawRead:
    opts = _check_options(src)
    opts.setdefault("header", True)
    encoding = str(opts.get("encoding", "utf-8")).lower().replace("_", "-")
    args = ", ".join(f"{k}={_sql_value(v)}" for k, v in opts.items() if k != "encoding")
    if encoding not in ("utf-8", "utf8"):
        if encoding not in ("utf-16", "latin-1", "latin1", "iso-8859-1"):
            raise CdpError(f"source '{src.name}': encoding {encoding!r} not supported (utf-8, utf-16, latin-1)")
        args += f", encoding={lit('latin-1' if encoding in ('latin1', 'iso-8859-1') else encoding)}"
    try:
        con.execute(
            f"create or replace temp table {RAW} as select *, row_number() over () as _row from read_csv("
            f"{lit(str(path))}, all_varchar=true, {REJECTS}, {args})"
        )
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise CdpError(f"source '{src.name}': cannot read {path.name} as CSV: {first}") from None
    cols = [c for c in _columns(con, RAW) if c != "_row"]
    if bool(opts.get("header", True)) and con.execute(f"select count(*) from {RAW}").fetchall()[0][0] == 0 \
            and not cols:
        raise CdpError(f"source '{src.name}': file {path.name} has no columns")
    rows = con.execute(f"select count(*) from {RAW}").fetchall()[0][0]
    return RawRead(cols, rows, _take_rejects(con))


def _read_jsonl(con: duckdb.DuckDBPyConnection, src: SourceConfig, path: Path) -> RawRead:
    _check_options(src)
    # One pass classifies every line (1 object, 0 blank, 2 malformed): JSON is validated once per line.
    try:
        con.execute(
            f"create or replace temp table _lines as select line, _row, case "
            f"when coalesce(json_valid(line) and starts_with(ltrim(line, ' \t\r'), '{{'), false) then 1 "
            f"when line is null or trim(line) = '' then 0 else 2 end as _kind "
            f"from (select line, row_number() over () as _row from read_csv("
            f"{lit(str(path))}, columns={{'line': 'VARCHAR'}}, delim='\\x01', quote='', escape='', "
            f"header=false, auto_detect=false, {REJECTS}, max_line_size=67108864))"
        )
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise CdpError(f"source '{src.name}': cannot read {path.name} as JSON lines: {first}") from None
    rejects = _take_rejects(con)
    bad = con.execute("select _row, line from _lines where _kind = 2 order by _row").fetchall()
    rejects += [(row, line[:10000], "malformed JSON line") for row, line in bad]
    keys = [k for (k,) in con.execute(
        "select k from (select unnest(json_keys(line)) as k, min(_row) as first from _lines where _kind = 1 "
        "group by k) order by first").fetchall()]
    if not keys and not bad and not rejects:
        raise CdpError(f"source '{src.name}': file {path.name} has no JSON objects")
    # One parse per line: extracting a list of paths at once, then indexing it.
    paths = "[" + ", ".join(lit("$." + json_key(k)) for k in keys) + "]"
    select = ", ".join(f"v[{i + 1}] as \"{_ident(k)}\"" for i, k in enumerate(keys))
    con.execute(f"create or replace temp table {RAW} as select {select + ', ' if select else ''}_row from "
                f"(select json_extract_string(line, {paths}) as v, _row from _lines where _kind = 1)" if keys else
                f"create or replace temp table {RAW} as select _row from _lines where _kind = 1")
    con.execute("drop table _lines")
    rows = con.execute(f"select count(*) from {RAW}").fetchall()[0][0]
    return RawRead(keys, rows, rejects)


def _read_excel(con: duckdb.DuckDBPyConnection, src: SourceConfig, path: Path) -> RawRead:
    """A workbook's sheet (option ``sheet``: name, 0-based index, or ``all`` for same-headed sheets stacked,
    as Online Retail II's two years) as text: whole numbers without '.0', dates in ISO."""
    import pyarrow as pa
    from python_calamine import CalamineWorkbook

    _check_options(src)
    try:
        book = CalamineWorkbook.from_path(str(path))
    except Exception as exc:  # the library raises its own error types per format
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CdpError(f"source '{src.name}': cannot read {path.name} as an Excel/ODS workbook: {first}") from None
    names = list(book.sheet_names)
    wanted = src.options.get("sheet", 0)
    if wanted == "all":
        chosen = names
    elif isinstance(wanted, int) and not isinstance(wanted, bool) and 0 <= wanted < len(names):
        chosen = [names[wanted]]
    elif str(wanted) in names:
        chosen = [str(wanted)]
    else:
        raise CdpError(f"source '{src.name}': {path.name} has no sheet {wanted!r} (sheets: {', '.join(names)}; "
                       f"or sheet: all)")
    header: list[str] | None = None
    rows: list[list] = []
    for name in chosen:
        data = book.get_sheet_by_name(name).to_python(skip_empty_area=False)
        if not data:
            continue
        head = _header([_cell_text(c) for c in data[0]])
        if header is None:
            header = head
        elif head != header:
            raise CdpError(f"source '{src.name}': sheet {name!r} of {path.name} has other columns than "
                           f"{chosen[0]!r} (sheet: all stacks sheets with one header)")
        rows.extend(data[1:])
    if header is None:
        raise CdpError(f"source '{src.name}': file {path.name} has no rows in sheet(s) {', '.join(chosen)}")
    rows = [r for r in rows if any(c not in (None, "") for c in r)]  # trailing blank rows of a sheet
    columns = {col: pa.array([_cell_text(r[i]) if i < len(r) else None for r in rows], pa.string())
               for i, col in enumerate(header)}
    columns["_row"] = pa.array(range(1, len(rows) + 1), pa.int64())
    con.register("_excel_in", pa.table(columns))
    try:
        con.execute(f"create or replace temp table {RAW} as select * from _excel_in")
    finally:
        con.unregister("_excel_in")
    return RawRead(header, len(rows), [])


def _cell_text(value: object) -> str | None:
    """A cell as the text a person sees in the sheet (Excel keeps every number as a float)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (date, time)):
        return value.isoformat()
    return str(value).strip() or None


def _header(cells: list[str | None]) -> list[str]:
    """Blank header cells named column<i>, repeated names suffixed _1, _2 (as DuckDB's CSV reader does)."""
    out: list[str] = []
    for i, cell in enumerate(cells):
        name = cell or f"column{i}"
        base, n = name, 0
        while name in out:
            n += 1
            name = f"{base}_{n}"
        out.append(name)
    return out


def _read_parquet(con: duckdb.DuckDBPyConnection, src: SourceConfig, path: Path) -> RawRead:
    _check_options(src)
    try:
        described = con.execute(f"describe select * from read_parquet({lit(str(path))})").fetchall()
        cols = [r[0] for r in described]
        # nested values as JSON text (as a JSON-lines reader gives them), so mapped paths can reach inside
        casts = ", ".join(f"cast({'to_json(' if _nested(t) else ''}\"{_ident(c)}\"{')' if _nested(t) else ''} as varchar) "
                          f"as \"{_ident(c)}\"" for c, t, *_ in described)
        con.execute(f"create or replace temp table {RAW} as select {casts}, row_number() over () as _row "
                    f"from read_parquet({lit(str(path))})")
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise CdpError(f"source '{src.name}': cannot read {path.name} as Parquet: {first}") from None
    rows = con.execute(f"select count(*) from {RAW}").fetchall()[0][0]
    return RawRead(cols, rows, [])


def _nested(duckdb_type: str) -> bool:
    return duckdb_type.startswith(("STRUCT", "MAP", "UNION")) or duckdb_type.endswith("]")


def _take_rejects(con: duckdb.DuckDBPyConnection) -> list[tuple[int | None, str, str]]:
    """Lines DuckDB's reader rejected (one entry per line, however many errors it had); clears the tables."""
    rows = con.execute("select line, any_value(csv_line), string_agg(distinct lower(error_type), ', '), "
                       "any_value(error_message) from _rejects group by line order by line").fetchall()
    con.execute("drop table if exists _rejects; drop table if exists _reject_scans")
    return [(line, raw or "", f"malformed line ({etype}): {msg}") for line, raw, etype, msg in rows]


def json_key(key: str) -> str:
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ident(name: str) -> str:
    return name.replace('"', '""')


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in con.execute(f"describe {table}").fetchall()]
