"""Tiny notebooks and pipelines for the refresh tests: a real papermill chain in seconds.

The steps mimic the real stages' write patterns: one replaces a table, one replaces an as-of's score
rows in a transaction, one publishes a folder by atomic rename. Environment variables inject failures
(``REFRESH_TEST_FAIL=<step>``) and pauses inside a transaction (``REFRESH_TEST_PAUSE=<step>`` with
``REFRESH_TEST_MARKER=<file>`` touched when paused), so tests can fail or kill a run at a known point.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import nbformat
import yaml

HOOKS = """
import os, time
from pathlib import Path
def hook(step, where="start"):
    if os.environ.get("REFRESH_TEST_FAIL") == step:
        raise RuntimeError(f"injected failure in {step}")
    if os.environ.get("REFRESH_TEST_PAUSE") == f"{step}:{where}":
        Path(os.environ["REFRESH_TEST_MARKER"]).write_text(step)
        time.sleep(120)
"""

LOAD = """
hook("01_load")
from datetime import date, timedelta
import duckdb
from cdp_ml import Workspace
from cdp_ml.refresh import report_step
ws = Workspace.open(workspace)
day = date.fromisoformat(as_of)
with ws.connect() as con:
    con.execute("begin")
    con.execute(\"\"\"create or replace table events as
        select timestamp '2026-01-05' + to_days(cast(i % 77 as integer)) + to_hours(cast(i % 24 as integer)) as timestamp,
               ['page_view','product_view','add_to_cart','purchase'][1 + i % 4] as event_type,
               case when i % 5 = 0 then null else 'c' || (i % 40) end as customer_ref,
               'a' || (i % 60) as anonymous_id
        from range(3000) t(i)\"\"\")
    hook("01_load", "in_transaction")
    con.execute("commit")
    n = con.execute("select count(*) from events").fetchall()[0][0]
report_step(rows_in=3000, rows_out=n)
"""

SCORE = """
hook("02_score")
from datetime import date
from cdp_ml import Workspace
from cdp_ml.refresh import report_step
ws = Workspace.open(workspace)
with ws.connect() as con:
    con.execute("create table if not exists scores (as_of DATE, person VARCHAR, score DOUBLE, retrained BOOLEAN)")
    con.execute("begin")
    con.execute("delete from scores where as_of = ?", [as_of])
    con.execute(\"\"\"insert into scores select cast(? as date), customer_ref,
                   count(*) / 100.0 + dayofyear(cast(? as date)) / 1000.0, ?
                   from events where customer_ref is not null and timestamp < cast(? as date) group by customer_ref\"\"\",
                [as_of, as_of, retrain, as_of])
    hook("02_score", "in_transaction")
    con.execute("commit")
    n = con.execute("select count(*) from scores where as_of = ?", [as_of]).fetchall()[0][0]
print("scored", n)
report_step(rows_in=n, rows_out=n)
"""

PUBLISH = """
hook("03_publish")
import os, shutil
from pathlib import Path
from cdp_ml import Workspace
ws = Workspace.open(workspace)
target = ws.segments_dir / as_of
tmp = ws.segments_dir / f".{as_of}.tmp"
shutil.rmtree(tmp, ignore_errors=True)
tmp.mkdir(parents=True)
with ws.connect() as con:
    rows = con.execute("select person, score from scores where as_of = ? order by person", [as_of]).fetchall()
(tmp / "segment.csv").write_text("".join(f"{p},{s!r}\\n" for p, s in rows))
hook("03_publish", "in_transaction")
old = ws.segments_dir / f".{as_of}.old"
if target.exists():
    os.replace(target, old)
os.replace(tmp, target)
shutil.rmtree(old, ignore_errors=True)
"""

STEPS = {"01_load": LOAD, "02_score": SCORE, "03_publish": PUBLISH}


def write_notebook(path: Path, code: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "cdp-ml", "display_name": "cdp-ml", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell('workspace = "."\nas_of = None\nparent_run_id = None\nretrain = True')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), params,
                nbformat.v4.new_code_cell(HOOKS), nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, path)


_EMPTY_MLFLOW_DB: list[Path] = []


def seed_mlflow(root: Path) -> None:
    """Copy an initialised MLflow sqlite store (schema only) into the workspace: creating one costs seconds."""
    if not _EMPTY_MLFLOW_DB:
        from cdp_ml import Workspace, tracking

        template = Path(tempfile.mkdtemp(prefix="refresh-mlflow-template-"))
        (template / "cdp_ml.yaml").write_text("sources: []\n")
        tracking.setup(Workspace.open(template)).search_experiments()
        _EMPTY_MLFLOW_DB.append(template / "mlruns" / "mlflow.db")
    (root / "mlruns").mkdir(parents=True, exist_ok=True)
    shutil.copy(_EMPTY_MLFLOW_DB[0], root / "mlruns" / "mlflow.db")


def make_workspace(root: Path, extra_steps: dict[str, str] | None = None) -> Path:
    """A workspace without sources plus a 3-step test pipeline; returns the pipeline path."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cdp_ml.yaml").write_text("sources: []\n")
    seed_mlflow(root)
    nbdir = root.parent / f"{root.name}-notebooks"
    nbdir.mkdir(exist_ok=True)
    steps = []
    for name, code in {**STEPS, **(extra_steps or {})}.items():
        write_notebook(nbdir / f"{name}.ipynb", code)
        step = {"name": name, "notebook": f"{name}.ipynb"}
        if name == "02_score":
            step.update(retrain=True, models=["test-model"])
        steps.append(step)
    steps.append({"name": "04_later", "notebook": "04_later.ipynb", "optional": True})
    pipeline = nbdir / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"steps": steps}))
    return pipeline
