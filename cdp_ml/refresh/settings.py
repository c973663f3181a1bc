"""Weekly refresh settings (the ``refresh:`` section)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RefreshSettings:
    retrain_after_weeks: int = 4  # champion older than this retrains
    step_timeout_minutes: int = 60
    drift_missing_identifier_share: float = 0.10  # absolute change in share of rows without identifiers
    drift_volume_change: float = 0.5  # relative change in weekly volume
    drift_psi: float = 0.2  # population stability index of key features
    runs_dir: str = "runs"
