"""The refresh lock: one refresh per workspace at a time, and a dead run's lock never blocks the next.

``runs/.lock`` holds the owner's pid, host, run id and start time. It is created with ``os.link`` of a
fully written temporary file, so it either exists complete or not at all, even under SIGKILL. A lock
whose process is gone (same host, pid dead or reused) is stale and is taken over by the next run.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from cdp_ml.refresh.files import read_json, write_json_atomic

LOCK_FILE = ".lock"


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) the lock, as read from the lock file."""

    pid: int
    host: str
    run_id: str
    week: str
    started: str
    mlflow_run_id: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> LockHolder | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(pid=int(data["pid"]), host=str(data["host"]), run_id=str(data["run_id"]),
                       week=str(data.get("week", "")), started=str(data.get("started", "")),
                       mlflow_run_id=data.get("mlflow_run_id"))
        except (KeyError, TypeError, ValueError):
            return None

    def describe(self) -> str:
        return f"run {self.run_id} (week {self.week}, pid {self.pid} on {self.host}, started {self.started})"

    def is_alive(self) -> bool:
        """True unless this host can prove the owning process is gone."""
        if self.host != socket.gethostname():
            return True  # cannot check another machine: only a person can clear it
        try:
            proc = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return False
        try:
            started = datetime.fromisoformat(self.started).timestamp()
        except ValueError:
            return True
        # a reused pid belongs to a process created after the lock was taken
        return proc.create_time() <= started + 1.0


class LockHeld(Exception):
    """Another refresh is running."""

    def __init__(self, holder: LockHolder | None, path: Path):
        self.holder = holder
        self.path = path
        who = holder.describe() if holder else "an unknown run"
        super().__init__(f"another refresh is running: {who}; lock file {path}")


class RefreshLock:
    """Acquire with :meth:`acquire`; :meth:`release` removes the file only while it is still ours."""

    def __init__(self, runs_dir: Path):
        self.path = runs_dir / LOCK_FILE
        self.stale: LockHolder | None = None  # the dead run whose lock we took over, if any
        self._mine: dict[str, Any] | None = None

    def acquire(self, run_id: str, week: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id, "week": week,
                "started": datetime.now(UTC).isoformat(timespec="seconds"), "mlflow_run_id": None}
        for _ in range(3):
            if self._try_create(data):
                self._mine = data
                return
            raw = read_json(self.path)
            holder = LockHolder.from_json(raw)
            if holder is None:
                if raw is None and not self.path.exists():
                    continue  # released in between: try again
                # unreadable lock: only written by hand or an old tool; treat a minute-old one as dead
                if time.time() - self.path.stat().st_mtime < 60:
                    raise LockHeld(None, self.path)
            elif holder.is_alive():
                raise LockHeld(holder, self.path)
            self.stale = holder or self.stale
            self._set_aside()
        raise LockHeld(LockHolder.from_json(read_json(self.path)), self.path)

    def update(self, **fields: Any) -> None:
        """Record more about the running refresh (e.g. its MLflow run id) for whoever finds the lock."""
        if self._mine is None:
            return
        self._mine.update(fields)
        write_json_atomic(self.path, self._mine)

    def release(self) -> None:
        if self._mine is None:
            return
        current = read_json(self.path)
        if isinstance(current, dict) and current.get("run_id") == self._mine["run_id"] \
                and current.get("pid") == self._mine["pid"]:
            self.path.unlink(missing_ok=True)
        self._mine = None

    def _try_create(self, data: dict[str, Any]) -> bool:
        fd, tmp = tempfile.mkstemp(prefix=".lock.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, self.path)  # atomic and exclusive: fails when the lock exists
                return True
            except FileExistsError:
                return False
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _set_aside(self) -> None:
        """Move a stale lock out of the way (rename is atomic; a concurrent taker gets FileNotFoundError)."""
        try:
            os.replace(self.path, self.path.with_name(f"{LOCK_FILE}.stale"))
        except FileNotFoundError:
            pass
