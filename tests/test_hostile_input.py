"""Hostile and broken input: every corpus case ends in a clear message, never a traceback, and the
``loads`` table reconciles (rows read = loaded + quarantined), with every quarantined row given a reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

CORPUS = Path(__file__).parent / "corpus"

# case -> ("ok", rows read, minimum quarantined) or ("error", text the one-line message must contain)
EXPECTED: dict[str, tuple] = {
    "truncated_file": ("ok", 3, 1),
    "wrong_delimiter": ("ok", 1, 0),  # the delimiter is sniffed; a single-column misread names the option
    "non_utf8_bytes": ("ok", 2, 1),
    "bom": ("ok", 1, 0),
    "duplicated_rows": ("ok", 4, 2),
    "empty_file": ("error", "empty"),
    "header_only": ("ok", 0, 0),
    "mixed_types": ("ok", 4, 1),
    "timestamps_future_1900": ("ok", 3, 2),
    "negative_quantities": ("ok", 2, 0),
    "huge_field": ("ok", 2, 0),
    "embedded_newlines_quotes": ("ok", 2, 0),
    "sql_looking_strings": ("ok", 2, 0),
    "unknown_event_types": ("ok", 3, 1),  # an unknown type loads; an empty type is quarantined
    "glob_matching_nothing": ("error", "matches no file"),
    "ragged_rows": ("ok", 3, 1),
    "broken_jsonl": ("ok", 3, 1),
    "invalid_consent_values": ("ok", 3, 2),
    "missing_mapped_column": ("error", "'surname' mapped to last_name is not in customers.csv"),
}


def test_corpus_has_every_case():
    cases = {p.name for p in CORPUS.iterdir() if p.is_dir()}
    assert cases == set(EXPECTED)
    assert len(cases) >= 15


def _workspace(case: str, tmp_path: Path) -> Path:
    ws = tmp_path / case
    shutil.copytree(CORPUS / case, ws)
    if case == "huge_field":  # 1 MB in one field; generated so git stays small
        (ws / "raw" / "customers.csv").write_text(
            "id,email,phone,first_name,last_name\n"
            f"C1,a@example.nl,0687654321,{'x' * (1 << 20)},Jansen\nC2,b@example.nl,0611223344,Bob,Smit\n")
    return ws


def _ingest(ws: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    return subprocess.run([sys.executable, "-m", "cdp_ml.cli", "--workspace", str(ws), "ingest"],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_hostile_input(case: str, tmp_path: Path):
    ws = _workspace(case, tmp_path)
    proc = _ingest(ws)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "unexpected error" not in proc.stderr, proc.stderr
    expected = EXPECTED[case]
    if expected[0] == "error":
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cdp-ml: error: "), proc.stderr
        assert expected[1] in lines[0]
        return
    assert proc.returncode == 0, proc.stderr
    _, rows_read, min_quarantined = expected
    con = duckdb.connect(str(ws / "data" / "warehouse.duckdb"), read_only=True)
    try:
        loads = con.execute("select rows_read, rows_loaded, rows_quarantined from loads").fetchall()
        assert loads, "no loads row"
        for read, loaded, quarantined in loads:
            assert read == loaded + quarantined
        assert sum(r for r, _, _ in loads) == rows_read
        assert sum(q for _, _, q in loads) >= min_quarantined
        assert con.execute("select count(*) from quarantine").fetchall()[0][0] == sum(q for _, _, q in loads)
        assert con.execute("select count(*) from quarantine where coalesce(reason, '') = ''").fetchall()[0][0] == 0
        tables = {r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()}
        assert {"customers", "events", "orders", "loads", "quarantine"} <= tables
        _case_checks(case, con)
    finally:
        con.close()
    assert f"{rows_read} read" in proc.stdout


def _case_checks(case: str, con: duckdb.DuckDBPyConnection) -> None:
    """What each kind of bad input must look like in the warehouse, beyond reconciling counts."""
    one = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    if case == "bom":
        assert one("select record_id from customers") == [("C1",)]
    elif case == "sql_looking_strings":
        assert one("select first_name from customers order by record_id")[0] == ("Robert'); DROP TABLE customers;--",)
        assert one("select count(*) from loads")[0][0] == 1
    elif case == "embedded_newlines_quotes":
        names = one("select first_name, last_name from customers order by record_id")  # names: whitespace collapsed
        assert names[0] == ("Anna Maria", 'O"Brien') and names[1][0] == "Bob, Jr."
    elif case == "huge_field":
        assert one("select max(length(first_name)) from customers")[0][0] in (1 << 20, None) or \
            one("select count(*) from quarantine")[0][0] == 1
    elif case == "timestamps_future_1900":
        assert one("select count(*) from events where \"timestamp\" < '1990-01-01' or \"timestamp\" > now()")[0][0] == 0
    elif case == "unknown_event_types":
        assert sorted(r[0] for r in one("select event_type from events")) == ["page_view", "teleport"]
    elif case == "duplicated_rows":
        assert one("select count(*) from events")[0][0] == 2
    elif case == "negative_quantities":
        assert one("select count(*) from orders")[0][0] == 2
    elif case == "mixed_types":
        assert one("select count(*) from orders where amount is not null")[0][0] >= 1
