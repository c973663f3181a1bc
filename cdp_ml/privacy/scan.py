"""Searching stores for a person's identifiers: warehouse tables, file trees, and the raw source files.

Used to prove an erasure (nothing left in any table, export or MLflow artifact), to tell the user which
raw lines still hold the identifiers (``forget --report-raw``), and by the pseudonymous-artifacts test.
Searches report places and counts only, never the values found.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import phonenumbers

from cdp_ml.errors import CdpError
from cdp_ml.privacy.identifiers import SEP
from cdp_ml.privacy.subject import Subject
from cdp_ml.workspace import Workspace

_TEXT_TYPES = ("VARCHAR", "JSON")
_PHONE_SEP = r"[\s\-.()/]*"
_PHONE_SEPARATORS = str.maketrans("", "", " \t-.()/")
_FIELD_START = r"(?:^|[,;\t|\"'=\s])"
_FIELD_END = r"(?=$|[,;\t|\"'\s\r\n])"


@dataclass(frozen=True)
class Hit:
    where: str  # table.column or file path (relative) -- never the value
    count: int

    def __str__(self) -> str:
        return f"{self.where} ({self.count})"


def phone_digits(e164: str) -> str:
    return e164.lstrip("+")


def platform_hashes(subject: Subject) -> list[str]:
    """SHA-256 forms an activation file may hold (Google Customer Match / Meta normalisation variants)."""
    forms: set[str] = set()
    for email in subject.values("email"):
        forms.add(email)
        local, _, domain = email.partition("@")
        if domain in ("gmail.com", "googlemail.com"):
            forms.add(local.split("+")[0].replace(".", "") + "@" + domain)
            forms.add(local.replace(".", "") + "@" + domain)
    for phone in subject.values("phone"):
        forms |= {phone, phone_digits(phone)}
    return sorted(hashlib.sha256(f.encode()).hexdigest() for f in forms)


def needles(subject: Subject, hashed: bool = False) -> list[str]:
    """Lower-case strings distinctive enough to search for as substrings anywhere."""
    out = set(subject.values("email")) | set(subject.persons)
    for phone in subject.values("phone"):
        out |= {phone, phone_digits(phone)}
    out |= {a for a in subject.values("anonymous_id") if len(a) >= 6}
    out |= {k for k in _bare_keys(subject) if len(k) >= 8}
    if hashed:
        out |= set(platform_hashes(subject))
    return sorted(n.lower() for n in out if n)


def _bare_keys(subject: Subject) -> set[str]:
    return {v.split(SEP, 1)[-1] for k, v in subject.identifiers if k in ("record", "customer_id", "customer_ref")}


def pattern(values: Iterable[str]) -> str:
    return "|".join(re.escape(v) for v in sorted(set(values), key=len, reverse=True))


def scan_warehouse(con: duckdb.DuckDBPyConnection, needle_list: list[str],
                   skip: Iterable[str] = ()) -> list[Hit]:
    """Every text, JSON and list column of every table and view (main schema) searched for the needles."""
    if not needle_list:
        return []
    rx = pattern(needle_list)
    skip = set(skip)
    rels = con.execute("""select table_name, list(column_name order by column_index),
                                 list(data_type order by column_index)
                          from duckdb_columns() where schema_name = 'main' and database_name = current_database()
                          group by table_name order by table_name""").fetchall()
    hits: list[Hit] = []
    for table, cols, types in rels:
        if table in skip:
            continue
        text_cols = [c for c, t in zip(cols, types, strict=True)
                     if t in _TEXT_TYPES or t.endswith("[]") or t.startswith(("STRUCT", "MAP"))]
        if not text_cols:
            continue
        counts = ", ".join(f"""count(*) filter (where regexp_matches(lower(cast("{c}" as varchar)), $rx))"""
                           for c in text_cols)
        try:
            row = con.execute(f'select {counts} from "{table}"', {"rx": rx}).fetchall()[0]
        except duckdb.Error as exc:  # a view over files that moved: say so rather than fail the proof
            hits.append(Hit(f"{table} (unreadable: {str(exc).splitlines()[0][:80]})", 0))
            continue
        hits += [Hit(f"{table}.{c}", n) for c, n in zip(text_cols, row, strict=True) if n]
    return hits


def scan_tree(root: Path, needle_list: list[str], base: Path | None = None,
              skip_suffixes: tuple[str, ...] = (".duckdb", ".duckdb.wal")) -> list[Hit]:
    """Every file under ``root`` searched byte-wise (case-insensitive ASCII) for the needles."""
    if not needle_list or not root.exists():
        return []
    rx = re.compile(pattern(needle_list).encode())
    longest = max(len(n.encode()) for n in needle_list)
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name.endswith(skip_suffixes):
            continue
        n = _count_in_file(path, rx, longest)
        if n:
            hits.append(Hit(str(path.relative_to(base)) if base else str(path), n))
    return hits


def _count_in_file(path: Path, rx: re.Pattern[bytes], overlap: int) -> int:
    n, tail = 0, b""
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            data = (tail + chunk).lower()
            found = [m for m in rx.finditer(data) if m.end() > len(tail)]
            n += len(found)
            tail = data[-overlap:] if overlap else b""
    return n


# --- raw source files -------------------------------------------------------------------------------
def raw_locations(ws: Workspace, subject: Subject) -> list[tuple[str, tuple[int, ...]]]:
    """Raw files of every source and the line (CSV/JSONL) or row (Parquet) numbers holding the identifiers."""
    out = []
    for src in ws.config.sources:
        try:
            files = ws.source_files(src)
        except CdpError:
            continue
        matcher = _raw_matcher(subject, src)
        if matcher is None:
            continue
        rx, anchors, phone_anchors = matcher
        for path in files:
            lines = tuple(_parquet_rows(path, rx) if src.file_format() == "parquet"
                          else _text_lines(path, rx, anchors, phone_anchors))
            if lines:
                out.append((ws.relative(path), lines))
    return out


def _raw_matcher(subject: Subject, src) -> tuple[re.Pattern[str], list[str], list[str]] | None:
    """The exact pattern, plus plain-text anchors that preselect candidate lines quickly.

    Anchors: the e-mails and keys themselves (lower-cased), and each phone's national number, looked for
    in the text with phone separators removed; the pattern then confirms the candidate lines.
    """
    anchors = [e.lower() for e in subject.values("email")]
    phone_anchors = []
    parts = [rf"(?<![A-Za-z0-9._%+-]){re.escape(e)}(?![A-Za-z0-9-]|\.[A-Za-z0-9])" for e in subject.values("email")]
    for phone in subject.values("phone"):
        try:
            num = phonenumbers.parse(phone)
        except phonenumbers.NumberParseException:
            continue
        phone_anchors.append(str(num.national_number))
        nsn = _PHONE_SEP.join(re.escape(d) for d in str(num.national_number))
        prefix = rf"(?:(?:\+|00)?\s*{num.country_code}{_PHONE_SEP}(?:\(0\){_PHONE_SEP})?|0{_PHONE_SEP})?"
        parts.append(rf"(?<![0-9]){prefix}{nsn}(?![0-9])")
    keys: set[str] = set()
    if src.kind == "customers":
        keys |= {v.split(SEP, 1)[1] for k, v in subject.identifiers
                 if k in ("record", "customer_id") and v.startswith(src.name + SEP)}
    elif src.customer_source:
        want = "customer_id" if src.customer_key == "customer_id" else "record"
        keys |= {v.split(SEP, 1)[1] for k, v in subject.identifiers
                 if k == want and v.startswith(src.customer_source + SEP)}
    else:
        keys |= set(subject.values("customer_ref"))
    if src.kind in ("events", "sessions"):
        keys |= set(subject.values("anonymous_id"))
    if keys:
        anchors += [k.lower() for k in keys]
        parts.append(rf"{_FIELD_START}\s*(?:{pattern(keys)})\s*{_FIELD_END}")
    if not parts:
        return None
    return re.compile("|".join(parts), re.IGNORECASE), anchors, phone_anchors


def _text_lines(path: Path, rx: re.Pattern[str], anchors: list[str], phone_anchors: list[str]) -> Iterator[int]:
    """Line numbers holding an identifier: anchors preselect lines (C-speed find), the pattern confirms."""
    opener = gzip.open if path.suffix == ".gz" else open
    first = 1
    with opener(path, "rb") as fh:
        while block := fh.readlines(1 << 25):
            text = b"".join(block).decode("utf-8", errors="replace")
            lower = text.lower()
            candidates: set[int] = set()
            _lines_containing(lower, anchors, candidates)
            if phone_anchors:
                _lines_containing(lower.translate(_PHONE_SEPARATORS), phone_anchors, candidates)
            lines = text.split("\n")
            for i in sorted(candidates):
                if rx.search(lines[i]):
                    yield first + i
            first += len(block)


def _lines_containing(text: str, needles: list[str], out: set[int]) -> None:
    newlines = [m.start() for m in re.finditer("\n", text)]
    for needle in needles:
        pos = text.find(needle)
        while pos >= 0:
            out.add(bisect.bisect_left(newlines, pos))
            pos = text.find(needle, pos + 1)


def _parquet_rows(path: Path, rx: re.Pattern[str]) -> Iterator[int]:
    con = duckdb.connect()
    try:
        cur = con.execute("select * from read_parquet(?)", [str(path)])
        i = 0
        while batch := cur.fetchmany(10000):
            for row in batch:
                i += 1
                if rx.search("\t".join("" if v is None else str(v) for v in row)):
                    yield i
    finally:
        con.close()
