"""Data-quality summary of the warehouse for people: rows per source, quarantine reasons, identifier coverage.

Counts and shares only - no values - so the summary is safe to show in shared notebooks and reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from cdp_ml.engine import table_exists
from cdp_ml.sources.load import ensure_tables
from cdp_ml.workspace import Workspace

# Which identifier columns matter per kind (shares of rows that have them).
IDENTIFIERS = {
    "customers": ("customer_id", "email", "phone", "date_of_birth", "postcode"),
    "events": ("anonymous_id", "customer_ref", "session_id", "category"),
    "orders": ("customer_ref", "category", "amount"),
    "sessions": ("anonymous_id", "customer_ref", "converted"),
    "interactions": ("customer_ref", "email", "phone", "category"),
    "consents": ("customer_ref", "email", "phone"),
}


@dataclass(frozen=True)
class DataQuality:
    sources: pd.DataFrame  # source, kind, files, rows_read, rows_loaded, rows_quarantined, reconciles
    quarantine: pd.DataFrame  # source, reason, rows
    coverage: pd.DataFrame  # source, kind, rows, share_<identifier>...
    field_issues: pd.DataFrame  # source, field, rows (customer fields loaded empty)

    def __str__(self) -> str:
        return (f"{len(self.sources)} sources, {int(self.sources['rows_loaded'].sum()):,} rows loaded, "
                f"{int(self.sources['rows_quarantined'].sum()):,} quarantined")

    def _repr_html_(self) -> str:
        return "<h4>Rows per source</h4>" + self.sources.to_html(index=False)


def data_quality(ws: Workspace) -> DataQuality:
    """Summarise the latest load of every file, the quarantine and identifier coverage."""
    with ws.connect() as con:
        ensure_tables(con)
        sources = con.sql("""
            with latest as (select * from loads qualify row_number() over (partition by source, file
                                                                           order by finished_at desc) = 1)
            select source, kind, count(*) as files, sum(rows_read)::bigint as rows_read,
                   sum(rows_loaded)::bigint as rows_loaded, sum(rows_quarantined)::bigint as rows_quarantined,
                   bool_and(rows_read = rows_loaded + rows_quarantined) as reconciles
            from latest group by source, kind order by source""").df()
        quarantine = con.sql("""select source, regexp_replace(reason, ' in column .*$| \\(column .*$', '') as reason,
                                       count(*) as rows from quarantine group by all order by rows desc""").df()
        issues = con.sql("select source, field, count(*) as rows from load_issues group by all order by rows desc").df()
        parts = []
        for kind, idents in IDENTIFIERS.items():
            if not table_exists(con, kind):
                continue
            shares = ", ".join(f"avg(({c} is not null)::int) as share_{c}" for c in idents)
            parts.append(con.sql(f"select source, '{kind}' as kind, count(*) as rows, {shares} "
                                 f"from {kind} group by source").df())
        coverage = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) \
            else pd.DataFrame(columns=["source", "kind", "rows"])
    return DataQuality(sources, quarantine, coverage, issues)


def quality_chart(dq: DataQuality):
    """Bar chart of loaded vs quarantined rows per source (log scale: sources differ by orders of magnitude)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * max(len(dq.sources), 1)))
    df = dq.sources.set_index("source")[["rows_loaded", "rows_quarantined"]]
    if len(df):
        df.plot.barh(ax=ax, stacked=False, log=True, color=["#4c78a8", "#e45756"])
    ax.set_xlabel("rows (log scale)")
    ax.set_title("Rows loaded and quarantined per source")
    fig.tight_layout()
    return fig
