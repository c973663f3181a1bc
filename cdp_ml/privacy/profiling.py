"""The objection to profiling: persons who objected are left out of model training and scoring.

An objection is the person's latest ``profiling`` consent decision before the as-of date being a
withdrawal (``granted = false``), read from the consent ledger
(same tie rule as ``consent_state``: a withdrawal wins over a grant with the same timestamp). No decision is not an objection:
profiling for the models runs on legitimate interest until the person objects.
"""

from __future__ import annotations

from datetime import date

import duckdb

from cdp_ml.engine import table_exists
from cdp_ml.privacy.consent import LEDGER_VIEW, ensure_ledger

OBJECTIONS_VIEW = "profiling_objections"


def profiling_objections(con: duckdb.DuckDBPyConnection, as_of: date) -> str:
    """Create the temp view ``profiling_objections_<date>(person_id)`` as of ``as_of``; returns its name.

    One view per date: a predicate made for one as-of (a training window's) keeps meaning that date when a
    later call makes another date's (a gate cutoff's) in the same connection.

    Model stages exclude these persons from training examples and from scoring::

        excluded = profiling_objections(con, as_of)
        ... where person_id not in (select person_id from {excluded})

    Without identity tables (no ``person_consents``) the view is empty.
    """
    day = date.fromisoformat(str(as_of)[:10]).isoformat()  # a typed date, safe as a literal in a view
    view = f"{OBJECTIONS_VIEW}_{day.replace('-', '')}"
    if table_exists(con, "person_consents"):
        ensure_ledger(con)
        con.execute(f"""create or replace temp view {view} as
            select person_id from (
                select person_id, granted from {LEDGER_VIEW}
                where purpose = 'profiling' and decided_at < DATE '{day}'
                qualify row_number() over (partition by person_id order by decided_at desc, granted asc) = 1)
            where not granted""")
    else:
        con.execute(f"create or replace temp view {view} as select null::varchar as person_id where false")
    return view


def profiling_excluded_sql(con: duckdb.DuckDBPyConnection, as_of: date, column: str = "person_id") -> str:
    """A SQL predicate keeping rows whose ``column`` is not a person who objected to profiling as of ``as_of``."""
    view = profiling_objections(con, as_of)
    return f"({column} is null or {column} not in (select person_id from {view}))"
