"""The engine seam: every stage does its heavy work as SQL through here.

Today the engine is DuckDB on one file; a Spark engine would implement the same few verbs
(``connect``, ``replace_table``, ``table_exists``, ``columns``). Connections are short-lived because
DuckDB allows a single writing process per file.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from cdp_ml.errors import CdpError


class DuckDBEngine:
    name = "duckdb"

    def __init__(self, path: Path, memory_limit: str | None = None, threads: int | None = None):
        self.path = Path(path)
        self.memory_limit = memory_limit
        self.threads = threads

    @contextmanager
    def connect(self, wait_seconds: float = 30.0) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the warehouse, waiting a little while another process holds the file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                con = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise CdpError(f"warehouse {self.path} is in use by another process: {str(exc).splitlines()[0]}") from None
                time.sleep(0.5)
        try:
            if self.memory_limit:
                con.execute(f"set memory_limit='{self.memory_limit}'")
            if self.threads:
                con.execute(f"set threads={int(self.threads)}")
            con.execute("set preserve_insertion_order=true")
            yield con
        finally:
            con.close()


def table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(con.execute(
        "select count(*) from duckdb_tables() where table_name = ? and schema_name = 'main'", [name]
    ).fetchall()[0][0] or con.execute(
        "select count(*) from duckdb_views() where view_name = ? and schema_name = 'main'", [name]
    ).fetchall()[0][0])


def columns(con: duckdb.DuckDBPyConnection, name: str) -> list[str]:
    return [r[0] for r in con.execute(
        "select column_name from duckdb_columns() where table_name = ? and schema_name = 'main' order by column_index",
        [name]).fetchall()]


def replace_table(con: duckdb.DuckDBPyConnection, name: str, query: str, params: list | None = None) -> int:
    """Atomically replace table ``name`` with the result of ``query``; returns its row count."""
    con.execute(f'create or replace table "{name}" as {query}', params or [])
    return con.execute(f'select count(*) from "{name}"').fetchall()[0][0]


def has_rows(con: duckdb.DuckDBPyConnection, name: str, where: str | None = None) -> bool:
    """Whether table or view ``name`` exists and holds a row (matching ``where``; stops at the first: cheap
    on big views)."""
    condition = f" where {where}" if where else ""
    return table_exists(con, name) and bool(con.execute(f'select exists (from "{name}"{condition})').fetchall()[0][0])


def count(con: duckdb.DuckDBPyConnection, name: str) -> int:
    if not table_exists(con, name):
        return 0
    return con.execute(f'select count(*) from "{name}"').fetchall()[0][0]


def sliced_build(con: duckdb.DuckDBPyConnection, table: str, slices: int) -> Iterator[tuple[int, str]]:
    """(part, SQL head) for each slice of a build of temp table ``table``, dropped first: the first slice
    creates the table (its query defines the schema), later ones append. Slicing keeps each sort and join
    to a part of the data."""
    con.execute(f"drop table if exists {table}")
    for part in range(slices):
        yield part, (f"create temp table {table} as" if part == 0 else f"insert into {table}")


# DuckDB's share of the machine's memory inside ``bounded_memory`` (conversion features, repurchase inputs):
# beyond it sorts, windows and joins spill to disk. The rest is for the fetched frames and LightGBM in the same process; DuckDB's own
# default (80 %) let a 1M-person feature build reach 20 GB RSS on a 24 GB machine.
DUCKDB_MEMORY_SHARE = 0.25
_UNITS = {"": 1, "b": 1, "byte": 1, "bytes": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def _machine_memory() -> int | None:
    """Physical memory in bytes, or the container's limit when that is lower (None when unknown)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    try:
        cgroup = open("/sys/fs/cgroup/memory.max").read().strip()
        if cgroup.isdigit():
            total = min(total, int(cgroup))
    except OSError:
        pass
    return total


def _setting_bytes(text: str) -> int | None:
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text or "")
    if not match or match.group(2).lower() not in _UNITS:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@contextmanager
def duckdb_settings(con: duckdb.DuckDBPyConnection, **values: str) -> Iterator[None]:
    """DuckDB settings changed for a block and restored after it."""
    before = {name: con.execute(f"select current_setting('{name}')").fetchall()[0][0] for name in values}
    for name, value in values.items():
        con.execute(f"set {name}='{value}'")
    try:
        yield
    finally:
        for name, value in before.items():  # reset first: a default restores exactly (memory prints rounded)
            con.execute(f"reset {name}")
            if con.execute(f"select current_setting('{name}')").fetchall()[0][0] != value:
                con.execute(f"set {name}='{str(value).lower() if isinstance(value, bool) else value}'")


@contextmanager
def bounded_memory(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Cap DuckDB at ``DUCKDB_MEMORY_SHARE`` of the machine (a lower limit already set is kept), let it drop
    insertion order (queries inside order explicitly where order matters) and purge freed memory; all
    restored after. Used where a stage builds large intermediate tables next to its own frames and models.
    """
    current = _setting_bytes(str(con.execute("select current_setting('memory_limit')").fetchall()[0][0]))
    machine = _machine_memory()
    lower = int(machine * DUCKDB_MEMORY_SHARE) if machine else None
    limit = f"{lower // 2**20}MiB" if lower is not None and (current is None or lower < current) else None
    # jemalloc's background threads return freed pages to the OS between slices: without them a 1M-person
    # build's RSS grew by about a gigabyte per slice while DuckDB counted itself under its limit
    with duckdb_settings(con, preserve_insertion_order="false", allocator_background_threads="true",
                   **({"memory_limit": limit} if limit else {})):
        yield
