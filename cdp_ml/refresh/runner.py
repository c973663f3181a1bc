"""The weekly refresh: run the pipeline's notebooks with papermill, tracked in MLflow, safe to schedule.

A run lives in ``runs/<ISO week of as-of>/<run id>/`` (executed notebooks, HTML copies, ``state.json``).
Only when every step succeeded is the week *published*: ``runs/<week>/published.json`` (and
``runs/published.json`` for the newest week) are atomically replaced to point at the run. A failed or
killed run never touches those pointers, and the stages keep their own outputs keyed by as-of (score
tables) or published by atomic folder swaps (segments), so the previous week's outputs stay intact.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psutil

from cdp_ml.engine import has_rows
from cdp_ml.errors import CdpError
from cdp_ml.refresh.asof import resolve_as_of
from cdp_ml.refresh.checks import RetrainDecision, decide_retrain
from cdp_ml.refresh.files import read_json, write_json_atomic
from cdp_ml.refresh.lock import LockHeld, RefreshLock
from cdp_ml.refresh.pipeline import SCORE_TABLES, Pipeline, Step, load_pipeline
from cdp_ml.refresh.step_report import SKIPPED_KEY, STEP_REPORT_ENV
from cdp_ml.workspace import Workspace

EXPERIMENT = "weekly-refresh"
STATE_FILE = "state.json"
PUBLISHED_FILE = "published.json"

# exit codes for a scheduler (documented in the README)
EXIT_OK = 0
EXIT_USER_ERROR = 2  # raised as CdpError; the CLI exits 2
EXIT_LOCKED = 3
EXIT_STEP_FAILED = 4
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class StepOutcome:
    name: str
    status: str  # succeeded / failed / skipped / killed / pending
    seconds: float | None = None
    peak_rss_mb: float | None = None
    counts: dict[str, float] = field(default_factory=dict)
    retrain: bool = False
    error: str = ""

    def line(self) -> str:
        took = f"{self.seconds:7.1f}s" if self.seconds is not None else " " * 8
        mem = f"{self.peak_rss_mb:7.0f} MB" if self.peak_rss_mb is not None else " " * 10
        counts = " ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v:.4g}" for k, v in self.counts.items())
        extra = f"  {self.error}" if self.error else ""
        trained = " retrain" if self.retrain and self.status == "succeeded" else ""
        return f"  {self.name:<16} {self.status:<10}{took} {mem}  {counts}{trained}{extra}".rstrip()


@dataclass(frozen=True)
class RefreshResult:
    """What a refresh did; ``exit_code`` is what a scheduler sees (0 ok, 3 locked, 4 a step failed, 130 stopped)."""

    status: str  # succeeded / failed / locked / interrupted / nothing-to-resume
    exit_code: int
    week: str
    as_of: date | None
    run_id: str | None = None
    run_dir: Path | None = None
    steps: tuple[StepOutcome, ...] = ()
    decision: str = ""
    mlflow_run_id: str | None = None
    mlflow_db: Path | None = None
    seconds: float | None = None
    message: str = ""
    warehouse: Path | None = None
    workspace: Path | None = None

    def __str__(self) -> str:
        head = f"refresh {self.week}"
        if self.as_of:
            head += f" (as of {self.as_of.isoformat()})"
        head += f": {self.status}"
        if self.seconds is not None:
            head += f" in {_duration(self.seconds)}"
        lines = [head]
        if self.message:
            lines.append(f"  {self.message}")
        lines += [s.line() for s in self.steps]
        if self.decision:
            lines.append(f"  models: {self.decision}")
        if self.run_dir:
            lines.append(f"  notebooks: {self.run_dir}/NN_step.ipynb (HTML without code: NN_step.html)")
        if self.status == "succeeded" and self.run_dir:
            lines.append(f"  published: {self.run_dir.parent / 'latest'} (pointer: {self.run_dir.parent / PUBLISHED_FILE})")
            if self.warehouse:
                lines.append(f"  warehouse: {self.warehouse}")
            lines += _output_lines(self.workspace, self.run_dir.parent / PUBLISHED_FILE)
        if self.mlflow_run_id:
            lines.append(f"  MLflow: experiment '{EXPERIMENT}', run {self.mlflow_run_id} "
                         f"(mlflow ui --backend-store-uri sqlite:///{self.mlflow_db})")
        return "\n".join(lines)


def _output_lines(root: Path | None, pointer: Path) -> list[str]:
    """Where a published week's outputs are: segment folder and manifest, marketer report."""
    if root is None:
        return []
    published = read_json(pointer) or {}
    lines = []
    if published.get("segments"):
        folder = root / published["segments"]
        lines.append(f"  segments: {folder} (manifest: {folder / 'manifest.json'})")
    if published.get("report"):
        lines.append(f"  report: {root / published['report']}")
    return lines


class _Interrupted(BaseException):
    """SIGTERM/SIGINT during a refresh: clean up (mark killed, release the lock), then stop."""


def refresh(ws: Workspace, as_of: date | str | None = None, retrain: str = "auto", from_step: str | None = None,
            resume: bool = False, pipeline: Path | str | None = None) -> RefreshResult:
    """Run the weekly pipeline for ``as_of`` (None: last completed week; 'latest': the week after the newest data).

    ``retrain``: auto (champion age or drift decides) / always / never. ``from_step`` starts a new run at
    that step; ``resume`` continues the week's last unfinished run at its failed step.
    """
    if retrain not in ("auto", "always", "never"):
        raise CdpError(f"--retrain: {retrain!r} is not one of auto, always, never")
    if resume and from_step:
        raise CdpError("give --from or --resume, not both")
    settings = ws.config.refresh
    pipe = load_pipeline(Path(pipeline) if pipeline else (ws.path(settings.pipeline) if settings.pipeline else None))
    day = None if isinstance(as_of, str) and as_of.strip().lower() == "latest" else resolve_as_of(ws, as_of)
    run_id = new_run_id()
    lock = RefreshLock(ws.runs_dir)
    try:  # before 'latest' reads the warehouse, which a running refresh holds
        lock.acquire(run_id, iso_week(day) if day else "")
    except LockHeld as exc:
        return RefreshResult("locked", EXIT_LOCKED, iso_week(day) if day else "?", day,
                             message=f"{exc} (exit code {EXIT_LOCKED})")
    try:
        if lock.stale is not None:
            _bury_dead_run(ws, lock.stale)
        if day is None:
            day = resolve_as_of(ws, as_of)
            lock.update(week=iso_week(day))
        return _Run(ws, pipe, day, iso_week(day), run_id, retrain, from_step, resume, lock).execute()
    finally:
        lock.release()


def iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def published(ws: Workspace, week: str | None = None) -> dict[str, Any] | None:
    """The published run of ``week`` (default: the newest published week), as recorded by the runner."""
    path = ws.runs_dir / week / PUBLISHED_FILE if week else ws.runs_dir / PUBLISHED_FILE
    data = read_json(path)
    return data if isinstance(data, dict) else None


class _Run:
    """One execution of the pipeline (a new run, or a resumed one reusing its folder and MLflow run)."""

    def __init__(self, ws: Workspace, pipe: Pipeline, as_of: date, week: str, run_id: str, mode: str,
                 from_step: str | None, resume: bool, lock: RefreshLock):
        self.ws, self.pipe, self.as_of, self.week, self.mode, self.lock = ws, pipe, as_of, week, mode, lock
        self.settings = ws.config.refresh
        self.started = time.monotonic()
        self.tty = sys.stdout.isatty()
        self.resume_of: dict[str, Any] | None = None
        start = pipe.index_of(from_step) if from_step else 0
        if resume:
            previous = _last_run_state(ws.runs_dir / week)
            if previous is None:
                raise CdpError(f"--resume: no earlier run of week {week} in {ws.runs_dir / week}; run without --resume")
            self.resume_of = previous
            run_id = previous["run_id"]
            self.as_of = date.fromisoformat(previous["as_of"])  # the week's run may have used a mid-week date
        self.run_id = run_id
        self.run_dir = ws.runs_dir / week / run_id
        self.state_path = self.run_dir / STATE_FILE
        if self.resume_of is not None:
            self.state = self.resume_of
            start = next((i for i, s in enumerate(self.state["steps"])
                          if s["status"] not in ("succeeded", "skipped")), len(pipe.steps))
            if [s["name"] for s in self.state["steps"]] != [s.name for s in pipe.steps]:
                raise CdpError(f"--resume: run {run_id} used other steps than {pipe.path.name} now lists; "
                               "run without --resume")
        else:
            self.state = {
                "run_id": run_id, "week": week, "as_of": as_of.isoformat(), "status": "running",
                "started": _now(), "finished": None, "pid": os.getpid(), "host": socket.gethostname(),
                "pipeline": str(pipe.path), "retrain_mode": mode, "from_step": from_step,
                "mlflow_run_id": None, "decision": None,
                "steps": [{"name": s.name, "status": "skipped" if i < start else "pending",
                           "note": "--from" if i < start else "", "attempts": 0} for i, s in enumerate(pipe.steps)],
            }
        self.start = start
        self.decision: RetrainDecision | None = (RetrainDecision.from_json(self.state["decision"])
                                                 if self.state.get("decision") else None)
        self.client: Any = None
        self.parent_run: str | None = self.state.get("mlflow_run_id")

    # --- the run -------------------------------------------------------------------------------
    def execute(self) -> RefreshResult:
        if self.resume_of is not None and self.state["status"] == "succeeded":
            return RefreshResult("nothing-to-resume", EXIT_OK, self.week, self.as_of, self.run_id, self.run_dir,
                                 self._outcomes(), message=f"week {self.week}'s last run {self.run_id} already succeeded")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state.update(status="running", pid=os.getpid(), host=socket.gethostname(), finished=None)
        self._save()
        self._start_mlflow()
        self.lock.update(mlflow_run_id=self.parent_run)
        self._log(f"refresh {self.week} (as of {self.as_of}) run {self.run_id}"
                  + (f", resuming at {self.pipe.steps[self.start].name}" if self.resume_of and
                     self.start < len(self.pipe.steps) else ""))
        status, code = "succeeded", EXIT_OK
        with _stop_signals():
            try:
                for step in self._progress(self.pipe.steps[self.start:]):
                    if not self._run_step(step):
                        status, code = "failed", EXIT_STEP_FAILED
                        break
            except _Interrupted:
                status, code = "interrupted", EXIT_INTERRUPTED
                for s in self.state["steps"]:
                    if s["status"] == "running":
                        s.update(status="killed", error="stopped by a signal")
            except BaseException as exc:  # the runner itself failed: record it, then let the CLI report it
                for s in self.state["steps"]:
                    if s["status"] == "running":
                        s.update(status="failed", error=f"runner: {_error_line(exc)}")
                self.state.update(status="failed", finished=_now())
                self._save()
                self._end_mlflow("failed")
                raise
        self.state["finished"] = _now()
        if status == "succeeded":  # publish first: a crash in between leaves a run that --resume re-publishes
            self._publish()
        self.state["status"] = status if status != "interrupted" else "killed"
        self._save()
        self._end_mlflow(status)
        seconds = time.monotonic() - self.started
        self._log(f"refresh {self.week}: {status} in {_duration(seconds)}")
        return RefreshResult(status, code, self.week, self.as_of, self.run_id, self.run_dir, self._outcomes(),
                             str(self.decision) if self.decision else "", self.parent_run,
                             self.ws.mlflow_dir / "mlflow.db", seconds, warehouse=self.ws.warehouse_path,
                             workspace=self.ws.root)

    def _applicable(self, step: Step) -> bool:
        """A step with ``needs`` runs only when one of those tables has rows (an orders-only workspace has
        nothing to train a conversion model on; a log too short for any model has no scores to segment):
        not a failure. Score tables count only scores on or before the run date, as segments read them."""
        if not step.needs:
            return True
        on_or_before = f"as_of <= DATE '{self.as_of.isoformat()}'"
        with self.ws.connect() as con:
            return any(has_rows(con, t, on_or_before if t in SCORE_TABLES else None) for t in step.needs)

    def _run_step(self, step: Step) -> bool:
        record = self.state["steps"][step.index]
        if not step.available:
            record.update(status="skipped", note="notebook not written yet")
            self._save()
            self._log(f"{step.name}: skipped (no {step.notebook.name} yet)")
            return True
        if not self._applicable(step):
            wanted = " or ".join(step.needs)
            if set(step.needs) <= set(SCORE_TABLES):
                note = f"not applicable: no model has scores on or before {self.as_of} (see the model steps)"
            else:
                note = f"not applicable: the warehouse has no {wanted}"
            record.update(status="skipped", note=note)
            self._save()
            self._log(f"{step.name}: skipped ({note})")
            return True
        retrain = False
        if step.retrain:
            if self.decision is None:
                self.decision = decide_retrain(self.ws, self.as_of, self.mode,
                                               [s for s in self.pipe.steps[self.start:]
                                                if s.retrain and self._applicable(s)])
                self.state["decision"] = self.decision.to_json()
                self._save()
                self._log_decision()
            retrain = self.decision.retrain
        out_nb = self.run_dir / f"{step.name}.ipynb"
        counts_path = self.run_dir / f"{step.name}.counts.json"
        if out_nb.exists():  # resumed: keep the failed attempt's notebook beside the new one
            out_nb.rename(self.run_dir / f"{step.name}.attempt{record['attempts']}.ipynb")
        counts_path.unlink(missing_ok=True)
        record.update(status="running", started=_now(), retrain=retrain, attempts=record["attempts"] + 1,
                      error="", notebook=out_nb.name)
        step_run = self._start_step_run(step, retrain)
        record["mlflow_run_id"] = step_run
        self._save()
        self._log(f"{step.name}: running{' (retrain)' if retrain else ''}")
        began = time.monotonic()
        error = ""
        with _peak_memory() as peak:
            try:
                self._papermill(step, out_nb, counts_path, retrain)
            except _Interrupted:
                self._finish_step(step, record, "killed", time.monotonic() - began, peak(), counts_path,
                                  "stopped by a signal")
                raise
            except CdpError as exc:
                error = str(exc)
            except Exception as exc:  # noqa: BLE001 - any failure of a notebook fails its step, with a reason
                error = _error_line(exc)
        status = "failed" if error else "succeeded"
        self._finish_step(step, record, status, time.monotonic() - began, peak(), counts_path, error)
        return not error

    def _papermill(self, step: Step, out_nb: Path, counts_path: Path, retrain: bool) -> None:
        import papermill as pm
        from jupyter_client.kernelspec import NoSuchKernel

        params = {"workspace": str(self.ws.root), "as_of": self.as_of.isoformat(),
                  "parent_run_id": self.parent_run, "retrain": retrain, **step.parameters}
        env = {"CDP_ML_PARENT_RUN_ID": self.parent_run or "", STEP_REPORT_ENV: str(counts_path),
               "CDP_ML_WORKSPACE": str(self.ws.root), "MLFLOW_DISABLE_TELEMETRY": "true"}
        with _environment(env):
            try:
                pm.execute_notebook(str(step.notebook), str(out_nb), parameters=params,
                                    kernel_name=self.settings.kernel, language="python",
                                    execution_timeout=self.settings.step_timeout_minutes * 60,
                                    progress_bar=self.tty, log_output=False, cwd=str(self.ws.root),
                                    # the kernel's own warnings (e.g. "running over TCP without encryption"
                                    # for a local kernel) are noise in the refresh log; errors still show
                                    extra_arguments=["--IPKernelApp.log_level=ERROR"])
            except NoSuchKernel:
                raise CdpError(f"Jupyter kernel {self.settings.kernel!r} is not installed "
                               "(run `make install` or: .venv/bin/python -m ipykernel install --sys-prefix "
                               f"--name {self.settings.kernel})") from None

    def _finish_step(self, step: Step, record: dict[str, Any], status: str, seconds: float, peak_mb: float,
                     counts_path: Path, error: str) -> None:
        counts = read_json(counts_path) or {}
        skipped = counts.pop(SKIPPED_KEY, None)
        if skipped and status == "succeeded":  # the notebook decided its step does not apply this week
            status = "skipped"
            record["note"] = str(skipped)
        html = self._html(self.run_dir / f"{step.name}.ipynb")
        record.update(status=status, finished=_now(), seconds=round(seconds, 2), peak_rss_mb=round(peak_mb, 1),
                      counts=counts, error=error, html=html.name if html else None)
        self._save()
        self._end_step_run(record, step, status, seconds, peak_mb, counts, error, html)
        shown = StepOutcome(step.name, status, seconds, peak_mb, counts, record.get("retrain", False),
                            error or (record.get("note", "") if status == "skipped" else ""))
        self._log(shown.line().strip())

    # --- outputs --------------------------------------------------------------------------------
    def _html(self, notebook: Path) -> Path | None:
        """An HTML copy without code cells, for readers who do not read code (the error stays visible)."""
        if not self.settings.html or not notebook.is_file():
            return None
        try:
            from nbconvert import HTMLExporter

            exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
            body, _ = exporter.from_filename(str(notebook))
        except Exception as exc:  # noqa: BLE001 - the notebook itself is kept; HTML is a convenience
            self._log(f"  (no HTML copy of {notebook.name}: {_error_line(exc)})")
            return None
        target = notebook.with_suffix(".html")
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(body, encoding="utf-8")
        os.replace(tmp, target)
        return target

    def _publish(self) -> None:
        """Point the week (and, when newest, the workspace) at this run: atomic renames only."""
        rel = self.ws.relative
        info = {"week": self.week, "as_of": self.as_of.isoformat(), "run_id": self.run_id,
                "run_dir": rel(self.run_dir), "finished": self.state["finished"], "mlflow_run_id": self.parent_run,
                "notebooks": [s.get("notebook") for s in self.state["steps"] if s.get("notebook")],
                "html": [s.get("html") for s in self.state["steps"] if s.get("html")],
                "segments": None, "report": None}
        segments = self.ws.segments_dir / self.week
        report = self.ws.path(self.ws.config.segments.report_dir) / f"report-{self.week}.html"
        if (segments / "manifest.json").is_file():  # not when no model had scores to segment (steps skipped)
            info["segments"] = rel(segments)
        if report.is_file():
            info["report"] = rel(report)
        write_json_atomic(self.run_dir.parent / PUBLISHED_FILE, info)
        latest = self.run_dir.parent / "latest"
        tmp = self.run_dir.parent / f".latest.{self.run_id}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.run_id)
        os.replace(tmp, latest)
        newest = published(self.ws)
        if newest is None or str(newest.get("as_of", "")) <= info["as_of"]:
            write_json_atomic(self.ws.runs_dir / PUBLISHED_FILE, info)

    # --- MLflow ------------------------------------------------------------------------------------
    def _start_mlflow(self) -> None:
        from cdp_ml import tracking

        self.client = tracking.setup(self.ws)
        exp_id = tracking.experiment(self.ws, EXPERIMENT)
        if self.parent_run:
            try:
                self.client.update_run(self.parent_run, status="RUNNING")
                self.client.set_tag(self.parent_run, "resumed", _now())
                return
            except Exception:  # noqa: BLE001 - the old run was deleted: start a fresh one
                self.parent_run = None
        run = self.client.create_run(exp_id, run_name=f"refresh {self.week}",
                                     tags={"week": self.week, "as_of": self.as_of.isoformat(),
                                           "refresh_run_id": self.run_id})
        self.parent_run = run.info.run_id
        for key, value in (("as_of", self.as_of.isoformat()), ("week", self.week), ("retrain_mode", self.mode),
                           ("run_id", self.run_id), ("pipeline", self.pipe.path.name),
                           ("from_step", self.state.get("from_step") or "")):
            self.client.log_param(self.parent_run, key, value)
        self.state["mlflow_run_id"] = self.parent_run
        self._save()

    def _start_step_run(self, step: Step, retrain: bool) -> str:
        exp_id = self.client.get_run(self.parent_run).info.experiment_id
        run = self.client.create_run(exp_id, run_name=step.name,
                                     tags={"mlflow.parentRunId": self.parent_run, "step": step.name,
                                           "week": self.week, "refresh_run_id": self.run_id})
        self.client.log_param(run.info.run_id, "retrain", str(retrain))
        return run.info.run_id

    def _end_step_run(self, record: dict[str, Any], step: Step, status: str, seconds: float, peak_mb: float,
                      counts: dict[str, float], error: str, html: Path | None) -> None:
        run_id = record["mlflow_run_id"]
        try:
            self.client.log_metric(run_id, "seconds", seconds)
            self.client.log_metric(run_id, "peak_rss_mb", peak_mb)
            for key, value in counts.items():
                self.client.log_metric(run_id, key, float(value))
            self.client.set_tag(run_id, "status", status)
            if error:
                self.client.set_tag(run_id, "error", error[:500])
            notebook = self.run_dir / f"{step.name}.ipynb"
            for artifact in (notebook, html):
                if artifact is not None and artifact.is_file():
                    self.client.log_artifact(run_id, str(artifact))
        finally:
            self.client.set_terminated(run_id, status={"succeeded": "FINISHED", "killed": "KILLED"}.get(status, "FAILED"))

    def _log_decision(self) -> None:
        assert self.decision is not None
        for check in self.decision.checks:
            if check.score is not None:
                self.client.log_metric(self.parent_run, f"check_{check.name}", check.score)
            if check.value is not None:
                self.client.log_metric(self.parent_run, f"check_{check.name}_value", check.value)
            self.client.set_tag(self.parent_run, f"check.{check.name}", str(check))
        self.client.set_tag(self.parent_run, "retrain", str(self.decision.retrain))
        self.client.set_tag(self.parent_run, "retrain_reasons", "; ".join(self.decision.reasons)[:5000] or "none")
        self._log(f"models: {self.decision}")
        for check in self.decision.checks:
            self._log(f"  check {check}")

    def _end_mlflow(self, status: str) -> None:
        if not self.parent_run or self.client is None:
            return
        self.client.log_metric(self.parent_run, "seconds", time.monotonic() - self.started)
        self.client.set_tag(self.parent_run, "status", status)
        self.client.log_artifact(self.parent_run, str(self.state_path))
        self.client.set_terminated(self.parent_run, status={"succeeded": "FINISHED", "interrupted": "KILLED"}
                                   .get(status, "FAILED"))

    # --- bookkeeping ----------------------------------------------------------------------------
    def _save(self) -> None:
        write_json_atomic(self.state_path, self.state)

    def _outcomes(self) -> tuple[StepOutcome, ...]:
        return tuple(StepOutcome(s["name"], s["status"], s.get("seconds"), s.get("peak_rss_mb"),
                                 s.get("counts") or {}, bool(s.get("retrain")), s.get("error") or s.get("note", ""))
                     for s in self.state["steps"])

    def _progress(self, steps: tuple[Step, ...]) -> Any:
        if not self.tty:
            return steps
        from tqdm import tqdm

        return tqdm(steps, desc=f"refresh {self.week}", unit="step", leave=False)

    def _log(self, message: str) -> None:
        line = f"[{datetime.now().strftime('%H:%M:%S')}] {message}"
        if self.tty:
            from tqdm import tqdm

            tqdm.write(line)
        else:
            print(line, flush=True)


def _last_run_state(week_dir: Path) -> dict[str, Any] | None:
    paths = [p for p in week_dir.glob(f"*/{STATE_FILE}") if not p.parent.is_symlink()]
    states = [s for s in map(read_json, paths) if isinstance(s, dict)]
    states = [s for s in states if "run_id" in s and "steps" in s]
    return max(states, key=lambda s: (s.get("started") or "", s["run_id"])) if states else None


def _bury_dead_run(ws: Workspace, holder: Any) -> None:
    """A refresh was killed (its lock was stale): mark its state and MLflow runs as killed."""
    state_path = ws.runs_dir / holder.week / holder.run_id / STATE_FILE
    state = read_json(state_path) if holder.week else None
    if isinstance(state, dict) and state.get("status") == "running":
        for s in state.get("steps", []):
            if s.get("status") == "running":
                s.update(status="killed", error="the refresh process died")
        state.update(status="killed", finished=_now())
        write_json_atomic(state_path, state)
    run_id = holder.mlflow_run_id or (state or {}).get("mlflow_run_id")
    if not run_id:
        return
    from cdp_ml import tracking

    client = tracking.setup(ws)
    try:
        run = client.get_run(run_id)
        children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
        for r in [run, *children]:
            if r.info.status == "RUNNING":
                client.set_terminated(r.info.run_id, status="KILLED")
    except Exception:  # noqa: BLE001 - bookkeeping of a dead run must not block the next one
        pass


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the kernel papermill starts (it inherits ours), then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _stop_signals() -> Iterator[None]:
    """Turn SIGTERM (systemd stop, kill) and SIGINT into a clean stop of the refresh."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        raise _Interrupted()

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextmanager
def _peak_memory(interval: float = 0.25) -> Iterator[Any]:
    """Peak resident memory (MB) of this process plus its children (the kernel), sampled in a thread."""
    me = psutil.Process()
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while True:
            total = 0
            try:
                procs = [me, *me.children(recursive=True)]
            except psutil.Error:
                procs = [me]
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total / 2**20)
            if done.wait(interval):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: peak[0]
    finally:
        done.set()
        thread.join()


def _error_line(exc: BaseException) -> str:
    """One line naming the failure: the notebook's exception name and first message line."""
    ename = getattr(exc, "ename", None)
    evalue = getattr(exc, "evalue", None)
    if ename:
        first = str(evalue or "").strip().splitlines()
        return f"{ename}: {first[0] if first else ''}"[:300]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"
