"""Weekly refresh settings (the ``refresh:`` section)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RefreshSettings:
    retrain_after_weeks: int = 4  # a champion this many weeks old (or older) retrains
    step_timeout_minutes: int = 60  # per notebook cell, passed to papermill as execution_timeout
    drift_missing_identifier_share: float = 0.10  # absolute change in share of rows without identifiers
    drift_volume_change: float = 0.5  # relative change in weekly volume
    drift_psi: float = 0.2  # population stability index of key features
    drift_min_rows: int = 200  # weeks with fewer rows are too small to judge (PSI of 60 orders is noise)
    runs_dir: str = "runs"
    pipeline: str | None = None  # pipeline YAML (default: pipelines/weekly.yaml of the cdp-ml checkout)
    kernel: str = "cdp-ml"  # Jupyter kernel the notebooks run in
    html: bool = True  # write an HTML copy without code cells next to each executed notebook
