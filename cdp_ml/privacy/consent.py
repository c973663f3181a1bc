"""The consent ledger: every consent decision per person and purpose, and the state as of any date.

Segments, activation files and the profiling objection all ask the same question -- "may we use this
person for this purpose on date D?" -- so it is answered in one place. The ledger is a view over
``person_consents`` (consents attributed to persons by identity resolution), so erasing a person's
consent rows removes them from the ledger too. Decisions are read with the pipeline's as-of semantics:
only decisions with ``timestamp < D 00:00`` count; the latest one wins, and when a grant and a withdrawal
carry the same timestamp the withdrawal wins (the conservative reading).
"""

from __future__ import annotations

from datetime import date

import duckdb

from cdp_ml.engine import table_exists
from cdp_ml.errors import CdpError
from cdp_ml.sources.kinds import CONSENT_PURPOSES

LEDGER_VIEW = "consent_ledger"

_LEDGER_SELECT = """
select person_id, purpose, granted, "timestamp" as decided_at, source
from person_consents
where person_id is not null and purpose is not null and granted is not null and "timestamp" is not null
"""


def _require_consents(con: duckdb.DuckDBPyConnection) -> None:
    if not table_exists(con, "person_consents"):
        raise CdpError("table person_consents is missing: run `cdp-ml ingest` and `cdp-ml resolve` first")


def ensure_ledger(con: duckdb.DuckDBPyConnection) -> None:
    """Create (or refresh) the ``consent_ledger`` view: person_id, purpose, granted, decided_at, source."""
    _require_consents(con)
    con.execute(f"create or replace view {LEDGER_VIEW} as {_LEDGER_SELECT}")


def consent_state(con: duckdb.DuckDBPyConnection, as_of: date, default_granted: bool = False,
                  persons: str | None = None) -> duckdb.DuckDBPyRelation:
    """Latest consent decision per (person_id, purpose) made before ``as_of``.

    Returns a relation (person_id, purpose, granted, decided_at). Without ``persons`` it holds one row per
    person and purpose that has a decision; with ``persons`` (the name of a table or view with a
    ``person_id`` column) it holds a row for every such person and every purpose, where persons without
    a decision get ``granted = default_granted`` and ``decided_at = NULL``. Callers should treat a
    missing row as "not granted" unless the workspace says otherwise (privacy.consent_default_granted).
    """
    _require_consents(con)  # reads person_consents directly, so read-only connections work too
    latest = f"""
        select person_id, purpose, granted, decided_at
        from ({_LEDGER_SELECT})
        where decided_at < ?::date
        qualify row_number() over (partition by person_id, purpose
                                   order by decided_at desc, granted asc) = 1
    """
    if persons is None:
        return con.sql(latest, params=[as_of])
    if not table_exists(con, persons):
        raise CdpError(f"table {persons} is missing")
    purposes = ", ".join(f"('{p}')" for p in CONSENT_PURPOSES)  # constants, not data
    query = f"""
        with latest as ({latest}),
        purposes(purpose) as (values {purposes}),
        who as (select distinct person_id from "{persons}" where person_id is not null
                union select distinct person_id from latest)
        select w.person_id, p.purpose, coalesce(l.granted, ?::boolean) as granted, l.decided_at
        from who w cross join purposes p
        left join latest l on l.person_id = w.person_id and l.purpose = p.purpose
    """
    return con.sql(query, params=[as_of, default_granted])


def granted_persons(con: duckdb.DuckDBPyConnection, purpose: str, as_of: date,
                    default_granted: bool = False, persons: str = "profiles") -> duckdb.DuckDBPyRelation:
    """Person ids allowed to be used for ``purpose`` on ``as_of`` (a relation with one column, person_id)."""
    if purpose not in CONSENT_PURPOSES:
        raise CdpError(f"unknown consent purpose {purpose!r} (purposes: {', '.join(CONSENT_PURPOSES)})")
    state = consent_state(con, as_of, default_granted, persons if table_exists(con, persons) else None)
    return state.filter(duckdb.ColumnExpression("purpose") == duckdb.ConstantExpression(purpose)).filter(
        "granted").select("person_id")


def objected_to_profiling(con: duckdb.DuckDBPyConnection, as_of: date) -> duckdb.DuckDBPyRelation:
    """Persons whose latest profiling decision before ``as_of`` is an explicit withdrawal (an objection)."""
    return consent_state(con, as_of).filter("purpose = 'profiling' and not granted").select("person_id")
