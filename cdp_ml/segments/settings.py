"""Segment definitions (the ``segments:`` section)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class SegmentDefinition:
    name: str
    template: Literal[
        "repurchase_next_week", "back_in_market_4w", "retargeting_high_intent", "retargeting_exclude", "lapsing"
    ]
    channel: Literal["email", "ads"] = "email"  # email -> email_marketing consent, ads -> ad_targeting
    threshold: float | None = None  # score threshold
    top_percent: float | None = None  # or the top k % by score
    keep_share: float = 0.99  # retargeting_exclude: share of expected conversions kept
    categories: tuple[str, ...] = ()  # restrict to categories (default all)
    filters: dict[str, str] = field(default_factory=dict)  # profile field -> required value
    suppress_complaint_days: int = 30
    suppress_return_days: int = 30


@dataclass(frozen=True)
class SegmentSettings:
    definitions: tuple[SegmentDefinition, ...] = ()
    output_dir: str = "data/segments"
