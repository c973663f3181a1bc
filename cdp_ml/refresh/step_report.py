"""How a notebook tells the runner what it did: rows in/out (and any other counts) for MLflow.

The runner sets ``CDP_ML_STEP_REPORT`` in the kernel's environment to a JSON path next to the executed
notebook; :func:`report_step` writes there. Run by hand (no runner), it only returns the counts.
"""

from __future__ import annotations

import math
import os
from numbers import Real
from pathlib import Path

from cdp_ml.errors import CdpError
from cdp_ml.refresh.files import read_json, write_json_atomic

STEP_REPORT_ENV = "CDP_ML_STEP_REPORT"


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
    target = os.environ.get(STEP_REPORT_ENV)
    if target:
        path = Path(target)
        merged = read_json(path) or {}
        merged.update(clean)
        write_json_atomic(path, merged)
    return clean
