"""What the next weekly resolution needs to know about the last one, so unchanged work is not redone.

Stored in the warehouse table ``_identity_state`` (one row, written in the same transaction as the
identity tables, so it always describes them): a fingerprint of everything resolution reads - the
settings and code, the saved Splink model, and the as-of filtered customer records and identifier
columns of the referencing tables - and the last result's counts. ``_identity_pairs`` keeps the last
run's scored record pairs (before clustering), keyed by identifiers rather than node numbers, so a week
whose customer records did not change skips Splink and still gets exactly the same pairs.

Fingerprints are order-independent sums of DuckDB row hashes: one scan per table, no rows kept.
Erasure deletes from the staging tables, so it always changes a fingerprint and forces a full run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date
from importlib import metadata, resources
from pathlib import Path

import duckdb

from cdp_ml.engine import columns, table_exists
from cdp_ml.identity.inputs import REFERENCE_COLUMNS, load_nicknames
from cdp_ml.identity.settings import IdentitySettings
from cdp_ml.workspace import Workspace

STATE_TABLE = "_identity_state"
PAIRS_TABLE = "_identity_pairs"
_LINEAGE = ("_file", "_row", "_load_id")  # where a row came from, not what it says: a re-load of it is unchanged


@dataclass(frozen=True)
class Fingerprint:
    """What one resolution read; two runs reading equal fingerprints write equal identity tables."""

    config: str  # settings, sources, identity code and library versions
    model: str  # the saved Splink model pairs were predicted with ('' when none)
    records: str  # as-of filtered customer rows
    references: str  # as-of filtered identifier columns (and time) of events, orders, sessions, ...

    def differences(self, other: Fingerprint) -> list[str]:
        names = {"config": "identity settings or code", "model": "the saved Splink model",
                 "records": "customer records", "references": "identifiers on events, orders and contacts"}
        return [names[k] for k in names if getattr(self, k) != getattr(other, k)]


@dataclass(frozen=True)
class Saved:
    fingerprint: Fingerprint
    result: dict[str, object]  # the ResolveResult counts of the run that wrote the tables
    outcome: dict[str, object]  # its matching.MatchOutcome, for a run that reuses its pairs


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _code_digest() -> str:
    """The identity package's own source: a changed rule must not be skipped as 'nothing changed'."""
    package = resources.files("cdp_ml.identity")
    h = hashlib.sha256()
    for name in sorted(p.name for p in package.iterdir() if p.name.endswith((".py", ".txt"))):
        h.update(name.encode())
        h.update(package.joinpath(name).read_bytes())
    for dist in ("duckdb", "splink"):
        h.update(metadata.version(dist).encode())
    return h.hexdigest()


def config_digest(ws: Workspace, settings: IdentitySettings) -> str:
    sources = [(s.name, s.kind, s.trust) for s in ws.config.sources]
    nicknames = load_nicknames(ws, settings) if settings.nicknames else []
    return _digest([repr(settings), sources, list(ws.config.conversion.purchase_event_types), nicknames,
                    _code_digest()])


def model_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _table_digest(con: duckdb.DuckDBPyConnection, table: str, cols: list[str], where: str, params: list) -> str:
    hashed = ", ".join(f'"{c}"' for c in cols)
    n, total = con.execute(f"""select count(*), coalesce(sum(hash({hashed})::hugeint), 0)::varchar
                               from "{table}" {where}""", params).fetchall()[0]
    return f"{table}:{','.join(cols)}:{n}:{total}"


def records_digest(con: duckdb.DuckDBPyConnection, as_of: date | None) -> str:
    """Every column of the customer rows resolution reads (the same as-of filter as ``inputs._records``)."""
    if not table_exists(con, "customers"):
        return ""
    have = columns(con, "customers")
    when, params = "", []
    times = [c for c in ("created_at", "updated_at") if c in have]
    if as_of is not None and times:
        first = f"coalesce({', '.join(times)})" if len(times) > 1 else times[0]
        when, params = f"where {first} is null or {first} < ?", [as_of]
    return _table_digest(con, "customers", [c for c in have if c not in _LINEAGE], when, params)


def references_digest(con: duckdb.DuckDBPyConnection, as_of: date | None) -> str:
    """The identifier and time columns of the referencing rows (the same as-of filter as ``inputs._references``
    and the profiles' activity); other columns (product, value, url) do not change persons or profiles."""
    parts = []
    for kind in REFERENCE_COLUMNS:
        if not table_exists(con, kind):
            continue
        have = columns(con, kind)
        ts = "ordered_at" if kind == "orders" else "timestamp"
        # every identifier column inputs._references reads, and the event type the person_orders view reads
        wanted = ("source", ts, "ref_source", "ref_key", "customer_ref", "anonymous_id", "email", "phone",
                  *(("event_type",) if kind == "events" else ()))
        cols = [c for c in have if c in wanted]
        where, params = (f'where "{ts}" < ?', [as_of]) if as_of is not None and ts in have else ("", [])
        parts.append(_table_digest(con, kind, cols, where, params))
    return _digest(parts)


def fingerprint(con: duckdb.DuckDBPyConnection, ws: Workspace, settings: IdentitySettings, as_of: date | None,
                model_path: Path) -> Fingerprint:
    return Fingerprint(config_digest(ws, settings), model_digest(model_path) if settings.probabilistic else "",
                       records_digest(con, as_of), references_digest(con, as_of))


def load(con: duckdb.DuckDBPyConnection) -> Saved | None:
    """The last run's state, or None (first run, or tables written by a version without state)."""
    if not table_exists(con, STATE_TABLE) or not table_exists(con, "person_map"):
        return None
    rows = con.execute(f"select fingerprint, result, outcome from {STATE_TABLE}").fetchall()
    if len(rows) != 1:
        return None
    try:
        fp, result, outcome = (json.loads(v) for v in rows[0])
        return Saved(Fingerprint(**fp), result, outcome)
    except (TypeError, ValueError):  # written by a version storing other fields: that run is no reference
        return None


def save(con: duckdb.DuckDBPyConnection, fp: Fingerprint, result: dict[str, object],
         outcome: dict[str, object]) -> None:
    """Replace the state row; called inside the transaction that writes the identity tables."""
    con.execute(f"create or replace table {STATE_TABLE}(fingerprint varchar, result varchar, outcome varchar)")
    con.execute(f"insert into {STATE_TABLE} values (?, ?, ?)",
                [json.dumps(fp.__dict__), json.dumps(result, default=str), json.dumps(outcome)])


def snapshot_pairs(con: duckdb.DuckDBPyConnection) -> None:
    """``_id_pairs_scored``: this run's scored pairs by identifier, before clustering marks weak pairs."""
    con.execute("""create or replace temp table _id_pairs_scored as
        select l.source as source_l, l.record_id as record_id_l, r.source as source_r, r.record_id as record_id_r,
          p.match_probability, p.match_weight, p.field_weights, p.reason, p.corroborated, p.accepted
        from _id_pairs p join _id_nodes l on l.node = p.node_l join _id_nodes r on r.node = p.node_r""")


def save_pairs(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"create or replace table {PAIRS_TABLE} as select * from _id_pairs_scored")


def restore_pairs(con: duckdb.DuckDBPyConnection) -> int:
    """``_id_pairs`` of the last run mapped onto this run's node numbers; returns the number of pairs.

    Only exact when the customer records, settings and model are unchanged (then every record node of the
    last run exists again)."""
    con.execute(f"""create or replace temp table _id_pairs as
        select least(l.node, r.node) as node_l, greatest(l.node, r.node) as node_r, p.match_probability,
          p.match_weight, p.field_weights, p.reason, p.corroborated, p.accepted
        from {PAIRS_TABLE} p
        join _id_nodes l on l.id_type = 'record' and l.source = p.source_l and l.record_id = p.record_id_l
        join _id_nodes r on r.id_type = 'record' and r.source = p.source_r and r.record_id = p.record_id_r""")
    con.execute("create or replace temp table _id_pairs_scored as select * from " + PAIRS_TABLE)
    return con.execute("select count(*) from _id_pairs").fetchall()[0][0]
