"""The engine seam: every stage does its heavy work as SQL through here.

Today the engine is DuckDB on one file; a Spark engine would implement the same few verbs
(``connect``, ``replace_table``, ``table_exists``, ``columns``). Connections are short-lived because
DuckDB allows a single writing process per file.
"""

from __future__ import annotations

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


def has_rows(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether table or view ``name`` exists and holds a row (stops at the first: cheap on big views)."""
    return table_exists(con, name) and bool(con.execute(f'select exists (from "{name}")').fetchall()[0][0])


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
