"""Tables and a chart of one week's segments for notebooks, and the MLflow run that records them.

Both read the week's ``manifest.json`` only: counts, thresholds and model versions, no identifiers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

import pandas as pd

from cdp_ml.errors import CdpError
from cdp_ml.segments.build import MANIFEST, REASONS, SegmentsResult, iso_week
from cdp_ml.workspace import Workspace, last_completed_week_end


@dataclass(frozen=True)
class Overview:
    week: str
    sizes: pd.DataFrame  # one row per segment: channel, members, last week, added, removed, expected
    exclusions: pd.DataFrame  # one row per segment, one column per exclusion reason
    manifest: dict[str, Any]

    def _repr_html_(self) -> str:
        return f"<h4>Segments {self.week}</h4>{self.sizes.to_html(index=False)}"


def overview(ws: Workspace, as_of: date | None = None) -> Overview:
    """The week's segment sizes (with last week's) and exclusions by reason, from the manifests."""
    week = iso_week(as_of or last_completed_week_end())
    path = ws.segments_dir / week / MANIFEST
    if not path.is_file():
        raise CdpError(f"no segments for {week}: run `cdp-ml segments` first")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    prev: dict[str, Any] = {}
    if manifest.get("previous_week"):
        prev_path = ws.segments_dir / manifest["previous_week"] / MANIFEST
        if prev_path.is_file():
            prev = {s["name"]: s for s in json.loads(prev_path.read_text(encoding="utf-8"))["segments"]}
    sizes = pd.DataFrame([{
        "segment": s["name"], "channel": s["channel"], "members": s["members"],
        "last_week": prev.get(s["name"], {}).get("members"), "added": s["added"], "removed": s["removed"],
        "expected": s["expected"], "selection": s["selection"]} for s in manifest["segments"]])
    exclusions = pd.DataFrame([{"segment": s["name"], "candidates": s["candidates"],
                                **{r: s["excluded"].get(r, 0) for r in REASONS}} for s in manifest["segments"]])
    return Overview(week, sizes, exclusions, manifest)


def sizes_figure(view: Overview) -> Any:
    """Horizontal bars: members this week, split into kept and excluded candidates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.4 * max(len(view.sizes), 1) + 1))
    if len(view.sizes):
        names = view.sizes["segment"][::-1]
        ax.barh(names, view.sizes["members"][::-1], label="members")
        excluded = view.exclusions[list(REASONS)].sum(axis=1)[::-1]
        ax.barh(names, excluded, left=view.sizes["members"][::-1], color="#bbbbbb", label="excluded by rules")
        ax.legend(fontsize=8)
    ax.set_xlabel("persons (x category)")
    ax.set_title(f"Segments {view.week}")
    return fig


def log_run(ws: Workspace, result: SegmentsResult, parent_run_id: str | None = None) -> str:
    """Record the week's segment counts and manifest in MLflow (experiment ``segments``); returns the run id."""
    import mlflow

    from cdp_ml import tracking

    with tracking.run(ws, "segments", f"segments {result.week}", parent_run_id) as active:
        mlflow.log_params({"week": result.week, "as_of": str(result.as_of), "segments": len(result.segments)})
        for s in result.segments:
            mlflow.log_metrics({f"{s.name}.members": s.members, f"{s.name}.added": s.added,
                                f"{s.name}.removed": s.removed,
                                **{f"{s.name}.excluded_{k}": v for k, v in s.excluded.items()}})
        mlflow.log_artifact(str(result.manifest))
        return active.info.run_id
