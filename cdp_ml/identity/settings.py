"""Identity-resolution settings (the ``identity:`` section of ``cdp_ml.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_BLOCKLIST = (
    "test@test.com", "test@example.com", "noreply@", "no-reply@", "info@", "geen@", "none@",
    "0000000000", "+310000000000", "1234567890", "onbekend", "unknown", "n/a", "na", "none", "null",
    "test", "xxx", "-",
)


@dataclass(frozen=True)
class MatchField:
    """An extra source column used as a probabilistic match field."""

    column: str  # canonical name or an unmapped source column (kept in attributes)
    comparison: Literal["exact", "levenshtein", "jaro_winkler", "date"] = "exact"


@dataclass(frozen=True)
class IdentitySettings:
    match_threshold: float = 0.9  # Splink match probability above which two records are one person
    blocklist: tuple[str, ...] = DEFAULT_BLOCKLIST  # placeholder values (a trailing '@' matches a local part)
    max_records_per_identifier: int = 10  # identifiers shared by more records never link deterministically
    source_priority: tuple[str, ...] = ()  # survivorship: most trusted source first (default: workspace order)
    extra_match_fields: tuple[MatchField, ...] = ()
    reuse_model: bool = False  # reuse the saved Splink model instead of training each run
    max_pairs_u: float = 2e6  # random pairs sampled to estimate u
