"""Reading a test workspace's warehouse the way a second process would: read-only, closed at once."""

from __future__ import annotations

import duckdb

from cdp_ml.workspace import Workspace


def rows(ws: Workspace, sql: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(ws.warehouse_path), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()
