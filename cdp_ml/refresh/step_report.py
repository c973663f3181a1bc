"""How a notebook tells the runner what it did: rows in/out (and any other counts) for MLflow.

The runner sets ``CDP_ML_STEP_REPORT`` in the kernel's environment to a JSON path next to the executed
notebook; :func:`report_step` writes there. Run by hand (no runner), it only returns the counts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from numbers import Real
from pathlib import Path
from typing import TypeVar

from cdp_ml.errors import CdpError, NotEnoughData
from cdp_ml.refresh.files import read_json, write_json_atomic

T = TypeVar("T")
STEP_REPORT_ENV = "CDP_ML_STEP_REPORT"
SKIPPED_KEY = "__skipped__"  # reason a notebook gives for skipping its step (never sent to MLflow as a count)


def report_step(**counts: float) -> dict[str, float]:
    """Record counts such as ``rows_in=..., rows_out=...`` for the refresh step running this notebook.

    Only numbers are accepted: the report goes to MLflow, which must never see personal data.
    Repeated calls merge (a later value for the same key wins).
    """
    clean: dict[str, float] = {}
    for key, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
            raise CdpError(f"report_step: {key} must be a finite number, got {type(value).__name__}")
        clean[key] = int(value) if float(value).is_integer() else float(value)
    _merge_into_report(clean)
    return clean


def _merge_into_report(values: dict[str, object]) -> None:
    """Merge into the runner's step report (nothing when the notebook runs by hand)."""
    target = os.environ.get(STEP_REPORT_ENV)
    if target:
        path = Path(target)
        merged = read_json(path) or {}
        merged.update(values)
        write_json_atomic(path, merged)


def skip_step(reason: str) -> str:
    """Mark the refresh step running this notebook as skipped (e.g. too little data and no champion yet).

    The refresh goes on and publishes the week; the reason is shown in the step line and ``state.json``.
    Run by hand, it only returns the reason.
    """
    _merge_into_report({SKIPPED_KEY: str(reason)[:500]})
    return reason


def train_when_due(train: Callable[[], T], retrain: bool) -> tuple[T | None, str | None]:
    """Train when the cadence says so; too little data is a note, not a failure (the champion keeps scoring).

    Returns (the training result or None, the too-little-data reason or None).
    """
    if not retrain:
        return None, None
    try:
        return train(), None
    except NotEnoughData as exc:
        return None, str(exc)


def score_or_skip(score: Callable[[], T], too_little: str | None) -> T | None:
    """Score with the champion; when there is none because training had too little data, skip the step."""
    try:
        return score()
    except CdpError as exc:
        if too_little is None:
            raise
        skip_step(f"{too_little} (and no model to score with: {exc})")
        return None
