"""Model settings (the ``conversion:`` and ``repurchase:`` sections)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConversionSettings:
    horizon_days: int = 7  # label: purchase within N days after the scoring point
    active_days: int = 30  # scoring: visitors active in the last D days
    min_positives: int = 200  # eligibility: training needs at least this many of each class
    min_negatives: int = 200
    backtest_weeks: int = 4  # evaluation window after the cutoff
    training_weeks: int = 26  # history used for training before the cutoff


@dataclass(frozen=True)
class RepurchaseSettings:
    horizon_weeks: int = 8  # weeks ahead predicted per person x category
    min_positives: int = 200
    min_negatives: int = 200
    training_cutoffs: int = 4  # rolling training cutoffs before the test cutoff
    max_weeks_at_risk: int = 52  # weeks after a purchase a person stays at risk
    categories: tuple[str, ...] = ()  # restrict to these categories (default: all seen in orders)
