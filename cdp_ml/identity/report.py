"""Pictures and review tables for the identity notebook; identifiers only, never names or contact values."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from cdp_ml.engine import table_exists
from cdp_ml.errors import CdpError
from cdp_ml.identity.matching import MODEL_FILE
from cdp_ml.workspace import Workspace


def match_weights(ws: Workspace) -> pd.DataFrame:
    """Match weight (log2 m/u) of every comparison level of the saved Splink model."""
    path = ws.warehouse_path.parent / MODEL_FILE
    if not path.is_file():
        raise CdpError(f"no Splink model at {path} yet (run: cdp-ml resolve with customer records)")
    model = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for comp in model.get("comparisons", []):
        for level in comp.get("comparison_levels", []):
            m, u = level.get("m_probability"), level.get("u_probability")
            if level.get("is_null_level") or not isinstance(m, float) or not isinstance(u, float) or u <= 0 or m <= 0:
                continue
            rows.append({"comparison": comp["output_column_name"], "level": level.get("label_for_charts", ""),
                         "m": m, "u": u, "match_weight": math.log2(m / u)})
    return pd.DataFrame(rows)


def match_weights_chart(ws: Workspace) -> Any:
    """Horizontal bars of each level's match weight, grouped by comparison (what evidence is worth)."""
    import matplotlib.pyplot as plt

    df = match_weights(ws)
    fig, ax = plt.subplots(figsize=(9, max(3, 0.28 * len(df))))
    labels = [f"{c}: {lv}"[:70] for c, lv in zip(df["comparison"], df["level"], strict=True)]
    colors = ["#2a9d8f" if w > 0 else "#e76f51" for w in df["match_weight"]]
    ax.barh(range(len(df)), df["match_weight"], color=colors)
    ax.set_yticks(range(len(df)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("match weight (log2 m/u)")
    ax.set_title("Splink match weights per comparison level")
    fig.tight_layout()
    return fig


def cluster_sizes(ws: Workspace, largest: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Distribution of identifiers and customer records per person, and the largest persons to check."""
    with ws.connect() as con:
        if not table_exists(con, "person_map"):
            raise CdpError("no person_map yet (run: cdp-ml resolve)")
        dist = con.sql("""
            with s as (select person_id, count(*) as identifiers, count(*) filter (where id_type = 'record') as records
                       from person_map where person_id is not null group by person_id)
            select records, count(*) as persons, max(identifiers) as max_identifiers from s
            group by records order by records""").df()
        top = con.execute("""
            select person_id, count(*) as identifiers, count(*) filter (where id_type = 'record') as records,
              count(*) filter (where id_type = 'anonymous_id') as devices,
              count(distinct source) as sources, min(match_probability) as weakest_link
            from person_map where person_id is not null group by person_id
            order by records desc, identifiers desc limit ?""", [largest]).df()
    top["flag"] = ["check: many records" if r > 4 else "" for r in top["records"]]
    return dist, top


def cluster_sizes_chart(ws: Workspace, dist: pd.DataFrame | None = None) -> Any:
    """Persons by customer records (log scale); ``dist``: the distribution :func:`cluster_sizes` already gave
    (its per-person counts read all of person_map: seconds at a million persons)."""
    import matplotlib.pyplot as plt

    if dist is None:
        dist, _ = cluster_sizes(ws)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(dist["records"].astype(str), dist["persons"], color="#264653")
    ax.set_yscale("log")
    ax.set_xlabel("customer records per person")
    ax.set_ylabel("persons (log scale)")
    ax.set_title("Cluster sizes")
    fig.tight_layout()
    return fig


def review_pairs(ws: Workspace, n: int = 25) -> pd.DataFrame:
    """Borderline probabilistic pairs (closest to the threshold, either side) with their per-field weights."""
    threshold = ws.config.identity.match_threshold
    with ws.connect() as con:
        if not table_exists(con, "identity_edges"):
            raise CdpError("no identity_edges yet (run: cdp-ml resolve)")
        df = con.execute("""
            select source_l, record_id_l, source_r, record_id_r, round(match_probability, 3) as probability,
              accepted, reason, field_weights
            from identity_edges where method = 'probabilistic'
            order by abs(match_probability - ?) limit ?""", [threshold, n]).df()
    weights = pd.DataFrame([{k: round(v, 1) for k, v in (fw or {}).items()} for fw in df.pop("field_weights")])
    return pd.concat([df, weights], axis=1)
