"""The real weekly chain (papermill, the cdp-ml kernel, every notebook) on a tiny demo workspace.

One week is published; the next week fails in a middle step (a broken 03 notebook in a pipeline copy)
and leaves the published week intact; --resume with the real pipeline completes it; the lock refuses a
second run; re-running the week's scoring and publishing steps gives the same outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import nbformat
import pytest
import yaml

from cdp_ml import Workspace
from cdp_ml.refresh import published, refresh
from cdp_ml.refresh.pipeline import DEFAULT_PIPELINE, load_pipeline
from cdp_ml.refresh.runner import iso_week

pytestmark = pytest.mark.slow

# smaller models for a 300-person workspace: the test is about the chain, not model quality
SMALL_MODELS = {"conversion": {"n_estimators": 60, "min_positives": 20, "min_negatives": 20},
                "repurchase": {"training_cutoffs": 6, "n_estimators": 60, "min_positives": 20, "min_negatives": 20}}
SHIPPED = load_pipeline(check_notebooks=False)
MISSING = [s.notebook.name for s in SHIPPED.steps if not s.optional and not s.notebook.is_file()]


def _broken_pipeline(tmp: Path, step: str) -> Path:
    """A copy of the shipped pipeline whose ``step`` runs a notebook that fails in its first cell."""
    raw = yaml.safe_load(DEFAULT_PIPELINE.read_text())
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "cdp-ml", "display_name": "cdp-ml", "language": "python"}
    params = nbformat.v4.new_code_cell('workspace = "."\nas_of = None\nparent_run_id = None\nretrain = True')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell('raise RuntimeError("broken step for the test")')]
    nbformat.write(nb, tmp / "broken.ipynb")
    for s in raw["steps"]:
        s["notebook"] = str(tmp / "broken.ipynb") if s["name"] == step else str(DEFAULT_PIPELINE.parent / s["notebook"])
    path = tmp / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _outputs(ws: Workspace, as_of) -> dict[str, object]:
    """What a week published: its score rows and the bytes of its segment files and report."""
    con = duckdb.connect(str(ws.warehouse_path), read_only=True)
    try:
        out: dict[str, object] = {
            table: con.execute(f"select * exclude (as_of) from {table} where as_of = ? order by all", [as_of]).fetchall()
            for table in ("conversion_scores", "repurchase_scores")}
    finally:
        con.close()
    folder = ws.segments_dir / iso_week(as_of)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")  # manifest: run ids, times
    out["files"] = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    return out


@pytest.mark.skipif(bool(MISSING), reason=f"notebooks not written yet: {MISSING}")
def test_weekly_chain_failure_resume_lock_and_rerun_on_demo_data(tmp_path):
    from cdp_ml.demo import generate
    from cdp_ml.demo.generate import HISTORY_END

    root = tmp_path / "ws"
    generate(root, persons=300, seed=1)
    config = yaml.safe_load((root / "cdp_ml.yaml").read_text())
    config.update(SMALL_MODELS)
    (root / "cdp_ml.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    ws = Workspace.open(root)
    week1, week2 = HISTORY_END - timedelta(days=7), HISTORY_END

    first = refresh(ws, as_of=week1, retrain="always")
    assert first.exit_code == 0, str(first)
    assert {s.status for s in first.steps} <= {"succeeded", "skipped"}
    assert all(s.status == "succeeded" for s in first.steps if s.name in ("01_ingest", "02_identity",
                                                                          "03_conversion", "04_repurchase"))
    run_dir = ws.runs_dir / first.week / first.run_id
    assert (run_dir / "03_conversion.html").is_file() and (run_dir / "04_repurchase.ipynb").is_file()
    assert first.steps[0].counts.get("rows_out", 0) > 0  # notebooks report rows in/out
    before = _outputs(ws, week1)
    assert before["conversion_scores"] and before["repurchase_scores"] and before["files"]

    failed = refresh(ws, as_of=week2, retrain="never", pipeline=_broken_pipeline(tmp_path, "03_conversion"))
    assert failed.exit_code == 4 and [s.status for s in failed.steps][:3] == ["succeeded", "succeeded", "failed"]
    assert published(ws)["as_of"] == week1.isoformat()
    assert _outputs(ws, week1) == before

    ws.runs_dir.joinpath(".lock").write_text(json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "run_id": "someone-else", "week": failed.week,
         "started": datetime.now(UTC).isoformat(timespec="seconds")}))
    locked = refresh(ws, as_of=week2, resume=True)
    assert locked.exit_code == 3 and "someone-else" in str(locked)
    ws.runs_dir.joinpath(".lock").unlink()

    resumed = refresh(ws, as_of=week2, resume=True)
    assert resumed.exit_code == 0 and resumed.run_id == failed.run_id, str(resumed)
    assert published(ws)["as_of"] == week2.isoformat()
    assert _outputs(ws, week1) == before
    after = _outputs(ws, week2)
    assert after["conversion_scores"]

    again = refresh(ws, as_of=week2, retrain="never", from_step="03_conversion")
    assert again.exit_code == 0, str(again)
    assert _outputs(ws, week2) == after
    assert published(ws, again.week)["run_id"] == again.run_id
