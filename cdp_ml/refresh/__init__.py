"""Weekly refresh: the notebooks chained by papermill, tracked in MLflow, safe to schedule.

Exports are loaded lazily: ``cdp_ml.workspace`` imports this package's settings while it is itself
being imported, so the runner (which needs the workspace) cannot load at package import time.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cdp_ml.refresh.runner import RefreshResult, StepOutcome, published, refresh
    from cdp_ml.refresh.step_report import report_step, score_or_skip, skip_step, train_when_due

__all__ = ["RefreshResult", "StepOutcome", "published", "refresh", "report_step", "score_or_skip", "skip_step",
           "train_when_due"]
_HOME = {name: "cdp_ml.refresh.step_report" for name in ("report_step", "score_or_skip", "skip_step", "train_when_due")}


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module(_HOME.get(name, "cdp_ml.refresh.runner")), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
