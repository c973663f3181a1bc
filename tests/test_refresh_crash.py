"""Crash safety: SIGKILL a refresh at several points; the warehouse stays consistent, the last published
week stays intact, and the next run (fresh or --resume) completes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest

from cdp_ml import Workspace
from cdp_ml.refresh import published, refresh

sys.path.insert(0, str(Path(__file__).parent))
from refresh_fixtures import make_workspace  # noqa: E402

RUNNER = Path(__file__).resolve().parent.parent / "pipelines" / "run.py"
WEEK1 = date(2026, 3, 16)


def _read(ws: Workspace, sql: str, params: list) -> list[tuple]:
    """Read the warehouse once the killed run's kernel has exited and released the file."""
    deadline = time.monotonic() + 30
    while True:
        try:
            con = duckdb.connect(str(ws.warehouse_path), read_only=True)
            break
        except duckdb.IOException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def _kill_at(ws: Workspace, pipeline: Path, as_of: date, point: str, tmp: Path) -> None:
    """Start a refresh in its own process, wait until it reaches ``point``, then SIGKILL it."""
    marker = tmp / f"marker-{point.replace(':', '-')}"
    env = {**os.environ, "REFRESH_TEST_PAUSE": point, "REFRESH_TEST_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, str(RUNNER), "--workspace", str(ws.root), "--as-of", as_of.isoformat(),
                             "--pipeline", str(pipeline)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, f"refresh ended (exit {proc.returncode}) before reaching {point}"
            assert time.monotonic() < deadline, f"refresh never reached {point}"
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _published_state(ws: Workspace, as_of: date) -> tuple:
    scores = _read(ws, "select person, score from scores where as_of = ? order by person", [as_of])
    segment = (ws.segments_dir / as_of.isoformat() / "segment.csv").read_text()
    return published(ws)["run_id"], scores, segment


@pytest.mark.slow
def test_sigkill_at_several_points_keeps_the_published_week_and_the_next_run_completes(tmp_path):
    root = tmp_path / "ws"
    pipeline = make_workspace(root)
    ws = Workspace.open(root)
    assert refresh(ws, as_of=WEEK1, pipeline=pipeline).exit_code == 0
    last = WEEK1
    points = ["01_load:in_transaction", "02_score:in_transaction", "03_publish:in_transaction"]
    for i, point in enumerate(points):
        as_of = last + timedelta(days=7)
        before = _published_state(ws, last)
        _kill_at(ws, pipeline, as_of, point, tmp_path)
        # the warehouse opens and is consistent: the last published week is intact, the new week not published
        assert _published_state(ws, last) == before, point
        assert published(ws)["as_of"] == last.isoformat()
        if point != "03_publish:in_transaction":  # 02_score had committed this week's scores before the kill
            assert _read(ws, "select count(*) from scores where as_of = ?", [as_of]) == [(0,)], point
        assert _read(ws, "select count(*) from events", []) == [(3000,)], point
        assert not (ws.segments_dir / as_of.isoformat()).exists()
        assert (ws.runs_dir / ".lock").exists()  # left behind by the dead run
        resume = i % 2 == 1
        result = refresh(ws, as_of=as_of, resume=resume, pipeline=pipeline)
        assert result.exit_code == 0, f"{point}: {result}"
        assert published(ws)["as_of"] == as_of.isoformat()
        week_dir = ws.runs_dir / result.week
        states = [json.loads(p.read_text()) for p in week_dir.glob("*/state.json") if not p.parent.is_symlink()]
        if resume:  # the killed run itself was continued at the killed step
            assert len(states) == 1 and states[0]["status"] == "succeeded"
            killed_step = point.split(":")[0]
            assert next(s for s in states[0]["steps"] if s["name"] == killed_step)["attempts"] == 2
        else:
            assert sorted(s["status"] for s in states) == ["killed", "succeeded"], (point, [
                (s["run_id"], s["status"], s["started"], s["pid"]) for s in states])
            dead = next(s for s in states if s["status"] == "killed")
            from cdp_ml import tracking

            assert tracking.setup(ws).get_run(dead["mlflow_run_id"]).info.status == "KILLED"
        leftovers = [p.name for p in ws.segments_dir.iterdir() if p.name.startswith(".")]
        assert leftovers == [], leftovers
        last = as_of
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slow
def test_sigterm_stops_cleanly_releases_the_lock_and_marks_the_run_killed(tmp_path):
    root = tmp_path / "ws"
    pipeline = make_workspace(root)
    ws = Workspace.open(root)
    marker = tmp_path / "marker"
    env = {**os.environ, "REFRESH_TEST_PAUSE": "02_score:in_transaction", "REFRESH_TEST_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, str(RUNNER), "--workspace", str(root), "--as-of", WEEK1.isoformat(),
                             "--pipeline", str(pipeline)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    assert not (ws.runs_dir / ".lock").exists()
    state = json.loads(next((ws.runs_dir / "2026-W12").glob("*/state.json")).read_text())
    assert state["status"] == "killed" and state["steps"][1]["status"] == "killed"
    from cdp_ml import tracking

    assert tracking.setup(ws).get_run(state["mlflow_run_id"]).info.status == "KILLED"
    assert _read(ws, "select count(*) from scores", []) == [(0,)]
    assert refresh(ws, as_of=WEEK1, resume=True, pipeline=pipeline).exit_code == 0
