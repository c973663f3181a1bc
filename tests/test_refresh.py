"""Weekly refresh: the papermill chain on tiny notebooks, the lock, failures, resume, idempotency, cadence."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import nbformat
import pytest
import yaml

from cdp_ml import Workspace
from cdp_ml.errors import CdpError
from cdp_ml.refresh import published, refresh, report_step
from cdp_ml.refresh.asof import resolve_as_of
from cdp_ml.refresh.checks import data_checks, decide_retrain, psi
from cdp_ml.refresh.pipeline import load_pipeline

sys.path.insert(0, str(Path(__file__).parent))
from refresh_fixtures import make_workspace  # noqa: E402

WEEK1, WEEK2 = date(2026, 3, 16), date(2026, 3, 23)


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "ws"
    pipeline = make_workspace(root)
    return Workspace.open(root), pipeline


def _scores(ws: Workspace, as_of: date) -> list[tuple]:
    con = duckdb.connect(str(ws.warehouse_path), read_only=True)
    try:
        return con.execute("select person, score from scores where as_of = ? order by person", [as_of]).fetchall()
    finally:
        con.close()


def _mlflow_runs(ws: Workspace, parent: str) -> dict[str, object]:
    from cdp_ml import tracking

    client = tracking.setup(ws)
    run = client.get_run(parent)
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    return {"parent": run, **{c.info.run_name: c for c in children}}


def test_chain_runs_every_step_and_publishes_the_week(tiny):
    ws, pipeline = tiny
    result = refresh(ws, as_of=WEEK1, pipeline=pipeline)
    assert result.exit_code == 0 and result.status == "succeeded", str(result)
    run_dir = ws.runs_dir / "2026-W12" / result.run_id
    for name in ("01_load", "02_score", "03_publish"):
        executed = nbformat.read(run_dir / f"{name}.ipynb", as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
        html = (run_dir / f"{name}.html").read_text()
        assert "def hook" not in html  # code cells are left out of the HTML copy
    assert [s.status for s in result.steps] == ["succeeded", "succeeded", "succeeded", "skipped"]
    assert result.steps[0].counts == {"rows_in": 3000, "rows_out": 3000}
    assert published(ws)["run_id"] == result.run_id == published(ws, "2026-W12")["run_id"]
    assert (ws.runs_dir / "2026-W12" / "latest").resolve() == run_dir.resolve()
    runs = _mlflow_runs(ws, result.mlflow_run_id)
    assert runs["parent"].info.status == "FINISHED"
    assert runs["01_load"].data.metrics["rows_out"] == 3000 and runs["02_score"].info.status == "FINISHED"
    assert "check_psi_event_type" in runs["parent"].data.metrics
    assert "2026-W12" in str(result) and result.mlflow_run_id in str(result)
    assert not (ws.runs_dir / ".lock").exists()


def test_failed_step_keeps_previous_week_and_resume_completes(tiny, monkeypatch):
    ws, pipeline = tiny
    assert refresh(ws, as_of=WEEK1, pipeline=pipeline).exit_code == 0
    week1_scores = _scores(ws, WEEK1)
    week1_segment = (ws.segments_dir / WEEK1.isoformat() / "segment.csv").read_text()
    monkeypatch.setenv("REFRESH_TEST_FAIL", "03_publish")
    failed = refresh(ws, as_of=WEEK2, pipeline=pipeline)
    assert failed.exit_code == 4 and failed.status == "failed"
    assert [s.status for s in failed.steps] == ["succeeded", "succeeded", "failed", "pending"]
    assert "injected failure" in failed.steps[2].error
    kept = nbformat.read(ws.runs_dir / "2026-W13" / failed.run_id / "03_publish.ipynb", as_version=4)
    assert any(o.get("ename") == "RuntimeError" for c in kept.cells if c.cell_type == "code" for o in c.outputs)
    assert _mlflow_runs(ws, failed.mlflow_run_id)["parent"].info.status == "FAILED"
    assert _mlflow_runs(ws, failed.mlflow_run_id)["03_publish"].info.status == "FAILED"
    # the previously published week is untouched
    assert published(ws)["as_of"] == WEEK1.isoformat() and published(ws, "2026-W13") is None
    assert _scores(ws, WEEK1) == week1_scores
    assert (ws.segments_dir / WEEK1.isoformat() / "segment.csv").read_text() == week1_segment
    monkeypatch.delenv("REFRESH_TEST_FAIL")
    resumed = refresh(ws, as_of=WEEK2, resume=True, pipeline=pipeline)
    assert resumed.exit_code == 0 and resumed.run_id == failed.run_id, str(resumed)
    assert resumed.steps[2].status == "succeeded"
    state = json.loads((ws.runs_dir / "2026-W13" / failed.run_id / "state.json").read_text())
    assert [s["attempts"] for s in state["steps"][:3]] == [1, 1, 2]  # resume started at the failed step
    assert (ws.runs_dir / "2026-W13" / failed.run_id / "03_publish.attempt1.ipynb").exists()
    assert published(ws)["as_of"] == WEEK2.isoformat()
    again = refresh(ws, as_of=WEEK2, resume=True, pipeline=pipeline)
    assert again.status == "nothing-to-resume" and again.exit_code == 0


def test_lock_refuses_a_second_run_and_a_dead_runs_lock_is_taken_over(tiny):
    ws, pipeline = tiny
    ws.runs_dir.mkdir(parents=True)
    lock = ws.runs_dir / ".lock"
    started = datetime.now(UTC).isoformat(timespec="seconds")
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "run_id": "run-that-runs",
                                "week": "2026-W12", "started": started}))
    blocked = refresh(ws, as_of=WEEK1, pipeline=pipeline)
    assert blocked.exit_code == 3 and blocked.status == "locked"
    assert "run-that-runs" in str(blocked) and str(os.getpid()) in str(blocked)
    assert not (ws.runs_dir / "2026-W12").exists()
    assert refresh(ws, as_of="latest", pipeline=pipeline).exit_code == 3  # refused before reading any data
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "run_id": "dead-run",
                                "week": "2026-W12", "started": started}))
    assert refresh(ws, as_of=WEEK1, pipeline=pipeline).exit_code == 0
    assert not lock.exists()


def test_rerun_of_the_same_week_gives_the_same_outputs(tiny):
    ws, pipeline = tiny
    first = refresh(ws, as_of=WEEK1, pipeline=pipeline)
    scores = _scores(ws, WEEK1)
    segment = (ws.segments_dir / WEEK1.isoformat() / "segment.csv").read_text()
    second = refresh(ws, as_of=WEEK1, retrain="never", pipeline=pipeline)
    assert first.exit_code == second.exit_code == 0 and first.run_id != second.run_id
    assert _scores(ws, WEEK1) == scores and scores
    assert (ws.segments_dir / WEEK1.isoformat() / "segment.csv").read_text() == segment
    assert published(ws, "2026-W12")["run_id"] == second.run_id
    assert sorted(p.name for p in ws.segments_dir.iterdir()) == [WEEK1.isoformat()]  # no temp folders left


def test_from_step_starts_a_new_run_there(tiny):
    ws, pipeline = tiny
    refresh(ws, as_of=WEEK1, pipeline=pipeline)
    result = refresh(ws, as_of=WEEK1, from_step="score", retrain="never", pipeline=pipeline)
    assert [s.status for s in result.steps][:3] == ["skipped", "succeeded", "succeeded"]
    assert result.steps[1].retrain is False
    with pytest.raises(CdpError, match="no step 'nope'"):
        refresh(ws, as_of=WEEK1, from_step="nope", pipeline=pipeline)
    with pytest.raises(CdpError, match="not both"):
        refresh(ws, as_of=WEEK1, from_step="02", resume=True, pipeline=pipeline)
    with pytest.raises(CdpError, match="no earlier run"):
        refresh(ws, as_of=WEEK2, resume=True, pipeline=pipeline)


def test_pipeline_file_is_validated(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("steps:\n  - name: 01_x\n    notebook: missing.ipynb\n")
    with pytest.raises(CdpError, match=r"steps\[0\]\.notebook"):
        load_pipeline(bad)
    bad.write_text("steps:\n  - name: 01_x\n    notebook: x.ipynb\n    optional: true\n    parameters: {as_of: 1}\n")
    with pytest.raises(CdpError, match="set by the runner"):
        load_pipeline(bad)
    bad.write_text("steps:\n  - name: 01_x\n    notebok: x.ipynb\n")
    with pytest.raises(CdpError, match="unknown key 'notebok'"):
        load_pipeline(bad)
    bad.write_text("steps:\n  - name: 01_x\n    notebook: x.ipynb\n    optional: true\n    needs: [clicks]\n")
    with pytest.raises(CdpError, match=r"steps\[0\]\.needs: 'clicks' is not a staging table"):
        load_pipeline(bad)
    shipped = load_pipeline()  # every non-optional notebook of the shipped pipeline exists
    assert [s.name for s in shipped.steps][:4] == ["01_ingest", "02_identity", "03_conversion", "04_repurchase"]
    assert shipped.index_of("3") == shipped.index_of("conversion") == shipped.index_of("03_conversion") == 2


def test_step_whose_data_the_workspace_lacks_is_skipped_not_failed(tiny):
    """A step needing orders on a workspace without any (as conversion on an orders-only workspace) is skipped."""
    import yaml

    ws, pipeline = tiny
    raw = yaml.safe_load(pipeline.read_text())
    for step in raw["steps"]:
        if step["name"] in ("02_score", "03_publish"):
            step["needs"] = ["orders", "sessions"]
    pipeline.write_text(yaml.safe_dump(raw))
    result = refresh(ws, as_of=WEEK1, pipeline=pipeline)
    assert [s.status for s in result.steps] == ["succeeded", "skipped", "skipped", "skipped"], str(result)
    assert "not applicable: the warehouse has no orders or sessions" in str(result)
    assert result.exit_code == 0
    assert "test-model" not in str(result.decision)  # a skipped step's model does not drive retraining


def test_report_step_writes_numbers_only(tmp_path, monkeypatch):
    target = tmp_path / "counts.json"
    monkeypatch.setenv("CDP_ML_STEP_REPORT", str(target))
    report_step(rows_in=10)
    report_step(rows_out=9, share=0.5)
    assert json.loads(target.read_text()) == {"rows_in": 10, "rows_out": 9, "share": 0.5}
    with pytest.raises(CdpError, match="rows_in must be a finite number"):
        report_step(rows_in="jan@example.com")


def test_psi_is_zero_for_equal_and_large_for_shifted_distributions():
    assert psi([10, 20, 70], [1, 2, 7]) == pytest.approx(0.0)
    assert psi([50, 50, 0], [0, 50, 50]) > 1.0


def _events_workspace(tmp_path, this_week: int, last_week: int, missing_every: int = 0) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "cdp_ml.yaml").write_text("sources: []\n")
    ws = Workspace.open(root)
    with ws.connect() as con:
        # each week's events spread over the whole week (a week whose data stops early is incomplete)
        con.execute("""create table events as
            select timestamp '2026-03-09' + to_seconds(cast(i * 604000 // $this as bigint)) as timestamp,
                   'page_view' as event_type,
                   case when $every > 0 and i % greatest($every, 1) = 0 then null else 'c' || (i % 50) end
                       as customer_ref,
                   null::varchar as anonymous_id
            from range($this) t(i)
            union all
            select timestamp '2026-03-02' + to_seconds(cast(i * 604000 // $last as bigint)), 'page_view',
                   'c' || (i % 50), null
            from range($last) t(i)""", {"every": missing_every, "this": this_week, "last": last_week})
    return ws


def test_data_checks_flag_volume_and_missing_identifier_drift(tmp_path):
    ws = _events_workspace(tmp_path, this_week=3000, last_week=1000, missing_every=4)
    checks = {c.name: c for c in data_checks(ws, WEEK1)}
    assert checks["events_volume_change"].score == pytest.approx(2.0) and checks["events_volume_change"].drift
    assert checks["missing_identifier_share"].value == pytest.approx(0.25)
    assert checks["missing_identifier_share"].drift
    assert checks["orders_volume_change"].score is None  # no orders table: reported, not an error
    decision = decide_retrain(ws, WEEK1, "auto", [])
    assert decision.retrain and any("drift" in r for r in decision.reasons)
    assert not decide_retrain(ws, WEEK1, "never", []).retrain


def test_weeks_too_small_to_judge_are_not_drift(tmp_path):
    ws = _events_workspace(tmp_path, this_week=150, last_week=40)
    checks = {c.name: c for c in data_checks(ws, WEEK1)}
    assert checks["events_volume_change"].score is None and "fewer than 200 rows" in checks["events_volume_change"].note
    assert checks["psi_events_per_person"].score is None and not any(c.drift for c in checks.values())
    (ws.root / "cdp_ml.yaml").write_text("sources: []\nrefresh: {drift_min_rows: 10}\n")
    checks = {c.name: c for c in data_checks(Workspace.open(ws.root), WEEK1)}
    assert checks["events_volume_change"].score == pytest.approx(2.75) and checks["events_volume_change"].drift


def test_a_week_the_data_stops_in_is_incomplete_not_a_fall(tmp_path):
    ws = _events_workspace(tmp_path, this_week=1000, last_week=1000)
    with ws.connect() as con:  # an export cut on Wednesday: the volume seems to halve
        con.execute("delete from events where timestamp >= timestamp '2026-03-12'")
    checks = {c.name: c for c in data_checks(ws, WEEK1)}
    for name in ("events_volume_change", "psi_events_per_person"):
        assert checks[name].score is None and checks[name].note == "last week incomplete: events end 2026-03-11"
    assert checks["psi_event_type"].score is not None  # a mix is still comparable
    with ws.connect() as con:  # a shop closed at weekends is not a cut-off
        con.execute("delete from events where timestamp >= timestamp '2026-03-09'")
        con.execute("insert into events select timestamp '2026-03-09' + to_seconds(i * 400), 'page_view', "
                    "'c' || (i % 50), null from range(1000) t(i)")  # Mon .. Fri 15:00
    assert data_checks(ws, WEEK1)[1].name == "events_volume_change"
    assert data_checks(ws, WEEK1)[1].score == pytest.approx(0.0)


def test_stable_data_and_fresh_champion_do_not_retrain(tmp_path):
    ws = _events_workspace(tmp_path, this_week=1000, last_week=1000)
    assert not any(c.drift for c in data_checks(ws, WEEK1))
    assert decide_retrain(ws, WEEK1, "auto", []).retrain is False
    assert decide_retrain(ws, WEEK1, "always", []).retrain is True


def test_latest_means_the_monday_after_the_newest_raw_data(tmp_path):
    root = tmp_path / "ws"
    (root / "raw").mkdir(parents=True)
    (root / "raw" / "events.csv").write_text("id,ts,kind,who\n1,2026-11-18 10:00:00,page_view,a\n"
                                             "2,2026-11-22T23:30:00,page_view,b\n")
    (root / "cdp_ml.yaml").write_text(
        "sources:\n  - name: web\n    kind: events\n    path: raw/events.csv\n"
        "    columns: {event_id: id, timestamp: ts, event_type: kind, anonymous_id: who}\n")
    ws = Workspace.open(root)
    assert resolve_as_of(ws, "latest") == date(2026, 11, 23)
    assert resolve_as_of(ws, "2026-W48") == date(2026, 11, 23)
    assert resolve_as_of(ws, None).weekday() == 0


def test_latest_parses_raw_times_as_ingestion_does(tmp_path):
    """Epoch milliseconds (RetailRocket-style exports) and zone suffixes count, as ingestion will load them."""
    root = tmp_path / "ws"
    (root / "raw").mkdir(parents=True)
    newest_ms = int(datetime(2026, 7, 22, 12, tzinfo=UTC).timestamp() * 1000)
    (root / "raw" / "events.csv").write_text(f"timestamp,visitorid,event\n1772410278063,1,view\n{newest_ms},2,view\n")
    (root / "cdp_ml.yaml").write_text(
        "timezone: Europe/Amsterdam\nsources:\n"
        "  - {name: rr, kind: events, path: raw/events.csv,\n"
        "     columns: {timestamp: timestamp, event_type: event, anonymous_id: visitorid}}\n")
    ws = Workspace.open(root)
    assert resolve_as_of(ws, "latest") == date(2026, 7, 27)
    with (root / "cdp_ml.yaml").open("a") as f:
        f.write("  - {name: orders, kind: orders, path: raw/orders.csv,\n"
                "     columns: {order_id: id, ordered_at: at, customer_ref: who}}\n")
    # Monday 01:00 in Amsterdam is still Sunday in UTC; with an explicit UTC suffix it is Monday
    (root / "raw" / "orders.csv").write_text("id,at,who\no1,2026-07-27 01:00:00,1\n")
    assert resolve_as_of(Workspace.open(root), "latest") == date(2026, 7, 27)
    (root / "raw" / "orders.csv").write_text("id,at,who\no1,2026-07-27 01:00:00 UTC,1\n")
    assert resolve_as_of(Workspace.open(root), "latest") == date(2026, 8, 3)


def test_latest_reads_only_files_not_yet_loaded(tmp_path, monkeypatch):
    from cdp_ml.sources import ingest, readers

    root = tmp_path / "ws"
    (root / "raw").mkdir(parents=True)
    (root / "raw" / "events-w47.csv").write_text("id,ts,kind,who\n1,2026-11-18 10:00:00,page_view,a\n")
    (root / "cdp_ml.yaml").write_text(
        "sources:\n  - name: web\n    kind: events\n    path: raw/events-*.csv\n"
        "    columns: {event_id: id, timestamp: ts, event_type: kind, anonymous_id: who}\n")
    ws = Workspace.open(root)
    ingest(ws)
    read: list[str] = []
    real = readers.read_raw
    monkeypatch.setattr(readers, "read_raw",
                        lambda con, src, path, *rest: read.append(path.name) or real(con, src, path, *rest))
    assert resolve_as_of(ws, "latest") == date(2026, 11, 23) and read == []  # from the warehouse
    (root / "raw" / "events-w48.csv").write_text("id,ts,kind,who\n2,2026-11-24 08:00:00,page_view,b\n")
    assert resolve_as_of(ws, "latest") == date(2026, 11, 30) and read == ["events-w48.csv"]


def test_a_check_that_cannot_run_is_reported_not_fatal(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "cdp_ml.yaml").write_text("sources: []\n")
    ws = Workspace.open(root)
    with ws.connect() as con:  # an events table without event_type (another workspace's shape)
        con.execute("create table events as select timestamp '2026-03-10' as timestamp, 'c1' as customer_ref, "
                    "null::varchar as anonymous_id")
    checks = {c.name: c for c in data_checks(ws, WEEK1)}
    assert checks["psi_event_type"].score is None and "not computed" in checks["psi_event_type"].note
    assert not checks["psi_event_type"].drift


TOO_LITTLE = """
from cdp_ml.errors import CdpError, NotEnoughData
from cdp_ml.refresh import report_step, score_or_skip, train_when_due

def train():
    raise NotEnoughData("model: 12 buyers (need 200)")

def score():
    raise CdpError("model: no champion yet")

trained, too_little = train_when_due(train, retrain)
scored = score_or_skip(score, too_little)
if scored is not None:
    report_step(rows_out=1)
"""


def test_a_model_with_too_little_data_and_no_champion_skips_its_step(tmp_path):
    """Too little data for a model is a skipped step with its reason, not a failed refresh."""
    root = tmp_path / "ws"
    pipeline = make_workspace(root, extra_steps={"03b_model": TOO_LITTLE})
    spec = yaml.safe_load(pipeline.read_text())
    spec["steps"][3]["retrain"] = True  # a model step: it gets the cadence's retrain flag
    pipeline.write_text(yaml.safe_dump(spec))
    ws = Workspace.open(root)
    result = refresh(ws, as_of=WEEK1, retrain="always", pipeline=pipeline)
    step = next(s for s in result.steps if s.name == "03b_model")
    assert result.exit_code == 0 and step.status == "skipped", result
    assert "12 buyers" in step.error and "no champion" in step.error and step.counts == {}
    assert published(ws, "2026-W12")["run_id"] == result.run_id
    # without retraining the same missing champion is a real failure (nobody asked to skip training)
    failed = refresh(ws, as_of=WEEK1, retrain="never", pipeline=pipeline)
    assert failed.exit_code == 4 and next(s for s in failed.steps if s.name == "03b_model").status == "failed"
