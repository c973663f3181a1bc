"""Segment definitions (the ``segments:`` section).

A workspace without definitions gets the default templates (see ``cdp_ml.segments.templates``): one
``repurchase_next_week`` segment per category found in ``repurchase_scores`` plus one of each other
template. Either form is accepted in ``cdp_ml.yaml``::

    segments:                       # a list of definitions ...
      - {name: coffee_next_week, template: repurchase_next_week, categories: [coffee], top_percent: 10}
    segments:                       # ... or a mapping with the other settings
      definitions: [...]
      output_dir: data/segments
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Template = Literal[
    "repurchase_next_week", "back_in_market_4w", "retargeting_high_intent", "retargeting_exclude", "lapsing"
]
TEMPLATES: tuple[str, ...] = ("repurchase_next_week", "back_in_market_4w", "retargeting_high_intent",
                              "retargeting_exclude", "lapsing")
# the consent purpose a channel needs (purposes of the consents source kind)
CHANNEL_PURPOSE = {"email": "email_marketing", "ads": "ad_targeting"}


@dataclass(frozen=True)
class SegmentDefinition:
    name: str
    template: Template
    channel: Literal["email", "ads"] = "email"  # email -> email_marketing consent, ads -> ad_targeting
    threshold: float | None = None  # keep scores >= threshold ...
    top_percent: float | None = None  # ... and/or the top k % by score (per category); neither: template default
    keep_share: float = 0.99  # retargeting_exclude: share of expected conversions the exclusion keeps
    categories: tuple[str, ...] = ()  # restrict to categories (default all; '(any)' is the person-level track)
    filters: dict[str, str] = field(default_factory=dict)  # profile field -> required value, e.g. {country: NL}
    suppress_complaint_days: int = 30  # open complaint in the category within N days suppresses
    suppress_return_days: int = 30  # a returned order in the category within N days suppresses
    suppress_bought_since_scoring: bool = True  # bought the category between scoring and the run date
    weeks: int = 4  # back_in_market_4w: cumulative probability over this many weeks
    recent_days: int = 14  # retargeting_*: visitors seen in the last N days who did not buy in them
    lapse_ratio: float = 0.5  # lapsing: next-week probability below this share of the person's usual rhythm
    min_orders: int = 2  # lapsing: past buyers with at least this many orders (a rhythm needs two)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise ValueError(f"segment name {self.name!r}: use letters, digits, _ and - only")
        if self.top_percent is not None and not 0 < self.top_percent <= 100:
            raise ValueError(f"segment {self.name}: top_percent must be in (0, 100]")
        if not 0 < self.keep_share <= 1:
            raise ValueError(f"segment {self.name}: keep_share must be in (0, 1]")
        if self.weeks < 1 or self.recent_days < 1 or self.min_orders < 2:
            raise ValueError(f"segment {self.name}: weeks and recent_days must be >= 1, min_orders >= 2")

    @property
    def purpose(self) -> str:
        return CHANNEL_PURPOSE[self.channel]


@dataclass(frozen=True)
class SegmentSettings:
    definitions: tuple[SegmentDefinition, ...] = ()  # empty: the default templates
    output_dir: str = "data/segments"  # one folder per ISO week below it
    report_dir: str = "data/reports"  # weekly HTML reports
    complaint_types: tuple[str, ...] = ("complaint",)  # interaction types that open a complaint
    resolved_types: tuple[str, ...] = ("complaint_resolved",)  # interaction types that close it
    opt_out_types: tuple[str, ...] = ("opt_out", "unsubscribe")  # interaction types meaning "leave me out"
    return_types: tuple[str, ...] = ("return_request", "return")  # interaction types counted as a return
    default_top_percent: float = 10.0  # templates without threshold/top_percent keep this top share

    def __post_init__(self) -> None:
        names = [d.name for d in self.definitions]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate segment name {dupes[0]!r}")
