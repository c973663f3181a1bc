"""Feature-building settings shared by the models (the ``features:`` section)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureSettings:
    session_gap_minutes: int = 30  # inactivity gap that ends a session
    holiday_peaks: tuple[str, ...] = ("12-05", "12-24", "02-14", "11-27")  # MM-DD of seasonal peaks
