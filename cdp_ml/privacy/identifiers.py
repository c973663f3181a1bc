"""Which identifiers a staging row carries, as salted hashes computed inside the engine.

Erasure and tombstone purging must agree exactly on "this row belongs to an erased person", so both
use the expressions here: a row belongs to a person when any of its identifiers (normalised email,
E.164 phone, source-qualified customer record / customer id, a bare customer key, an anonymous id) has
a salted hash in the set being erased. The kind is part of the hash input, so an email can never
collide with a record id of the same spelling.
"""

from __future__ import annotations

import hashlib
import re

import duckdb

from cdp_ml.engine import columns, table_exists

# Identifier kinds that appear in tombstones and in the erasure working set.
IDENTIFIER_KINDS = ("email", "phone", "record", "customer_id", "customer_ref", "anonymous_id")
STAGING_TABLES = ("customers", "events", "orders", "sessions", "interactions", "consents")
SEP = "\x1f"  # separates a source name from a key inside a hashed value
HASH_MACRO = "privacy_hash"

_HEX = re.compile(r"[0-9a-f]{32,128}")


def salted_hash(salt: str, kind: str, value: str) -> str:
    """The same hash as the SQL macro: sha256 of ``salt|kind|value`` as hex."""
    return hashlib.sha256(f"{salt}|{kind}|{value}".encode()).hexdigest()


def install_hash_macro(con: duckdb.DuckDBPyConnection, salt: str) -> None:
    """A connection-local macro ``privacy_hash(kind, value)``; temporary so the salt never lands in the warehouse."""
    if not _HEX.fullmatch(salt):
        raise ValueError("tombstone salt must be lower-case hex")
    con.execute(f"create or replace temp macro {HASH_MACRO}(k, v) as sha256('{salt}' || '|' || k || '|' || v)")


def row_identifiers(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    """(kind SQL, value SQL) pairs naming the identifiers each row of a staging table carries."""
    if not table_exists(con, table):
        return []
    cols = set(columns(con, table))
    out: list[tuple[str, str]] = []
    sep = "chr(31)"
    if table == "customers":
        out.append(("'record'", f"source || {sep} || record_id"))
        if "customer_id" in cols:
            out.append(("'customer_id'", f"source || {sep} || customer_id"))
    if "customer_ref" in cols:
        if {"ref_source", "ref_key"} <= cols:
            out.append(("(case when ref_source is null then 'customer_ref' "
                        "when ref_key = 'customer_id' then 'customer_id' else 'record' end)",
                        f"(case when ref_source is null then customer_ref else ref_source || {sep} || customer_ref end)"))
        else:
            out.append(("'customer_ref'", "customer_ref"))
    for kind in ("email", "phone", "anonymous_id"):
        if kind in cols:
            out.append((f"'{kind}'", kind))
    return out


def row_hashes_sql(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """SQL expressions, one per identifier of a row, each its salted hash (NULL when the value is NULL)."""
    return [f"{HASH_MACRO}({k}, {v})" for k, v in row_identifiers(con, table)]


def matches_sql(con: duckdb.DuckDBPyConnection, table: str, hash_table: str) -> str | None:
    """A predicate: the row carries an identifier whose hash is in ``hash_table(hash)``; None if it has none."""
    exprs = row_hashes_sql(con, table)
    if not exprs:
        return None
    return " or ".join(f"{e} in (select hash from {hash_table})" for e in exprs)


def quarantine_tokens_sql() -> str:
    """The pieces of a quarantined raw row (JSON text of its columns, or a raw line) between punctuation.

    Quarantined rows have no typed columns, so erasure looks for identifiers among these tokens.
    """
    return (r"list_filter(list_transform(regexp_split_to_array(raw, '[,;|\t\"{}\[\]]+'), "
            r"lambda t: trim(t, ' :')), lambda t: length(t) > 0)")
