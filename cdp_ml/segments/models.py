"""What the registry says about the models behind the segments: champion, newest version, quality gate.

Read once per run into the manifest (so a week's folder records which model versions made it) and
into the report (so a marketer learns when a model was not refreshed or failed its gate).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cdp_ml.workspace import Workspace

MODEL_NAMES = ("conversion-intent", "repurchase-timing")


def _describe(client: Any, mv: Any) -> dict[str, Any]:
    created = datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, tz=UTC)
    metrics: dict[str, float] = {}
    data_as_of = None
    if mv.run_id:
        try:
            run = client.get_run(mv.run_id)
            metrics = {k: float(v) for k, v in run.data.metrics.items()}
            data_as_of = run.data.params.get("as_of")
        except Exception:  # noqa: BLE001 - a deleted run leaves the version without metrics, not an error
            metrics = {}
    tags = dict(mv.tags or {})
    return {"version": str(mv.version), "run_id": mv.run_id, "created": created.isoformat(timespec="seconds"),
            "data_as_of": data_as_of, "gate": tags.get("gate"), "gate_reason": tags.get("gate_reason"),
            "metrics": metrics}


def model_status(ws: Workspace) -> dict[str, Any]:
    """Per registered model: the champion and the newest version (with gate tags and run metrics)."""
    out: dict[str, Any] = {}
    if not (ws.mlflow_dir / "mlflow.db").is_file():  # nothing registered yet (and no slow mlflow import)
        return {name: {"champion": None, "latest": None} for name in MODEL_NAMES}
    from cdp_ml import tracking

    client = tracking.setup(ws)
    for name in MODEL_NAMES:
        try:
            versions = client.search_model_versions(f"name = '{name}'")
        except Exception:  # noqa: BLE001 - an unregistered model simply has no versions
            versions = []
        champion = tracking.champion_version(ws, name)
        latest = max(versions, key=lambda v: int(v.version)) if versions else None
        out[name] = {"champion": _describe(client, champion) if champion else None,
                     "latest": _describe(client, latest) if latest else None}
    return out
