"""Identity-resolution settings (the ``identity:`` section of ``cdp_ml.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_BLOCKLIST = (
    "test@test.com", "test@example.com", "noreply@", "no-reply@", "info@", "geen@", "none@",
    "0000000000", "+310000000000", "1234567890", "0612345678", "+31612345678", "onbekend", "unknown",
    "n/a", "na", "none", "null", "test", "xxx", "-", "1900-01-01",
)


@dataclass(frozen=True)
class MatchField:
    """An extra source column used as a probabilistic match field."""

    column: str  # canonical name or an unmapped source column (kept in attributes)
    comparison: Literal["exact", "levenshtein", "jaro_winkler", "date"] = "exact"
    block: bool | None = None  # also a blocking key (default: true for exact and levenshtein)


@dataclass(frozen=True)
class IdentitySettings:
    match_threshold: float = 0.7  # Splink match probability from which two records are one person (guardrails apply)
    blocklist: tuple[str, ...] = DEFAULT_BLOCKLIST  # placeholder values (a trailing '@' matches a local part)
    max_records_per_identifier: int = 10  # identifiers shared by more records never link deterministically
    source_priority: tuple[str, ...] = ()  # survivorship: most trusted source first (default: workspace order)
    extra_match_fields: tuple[MatchField, ...] = ()
    reuse_model: bool = False  # reuse the saved Splink model instead of training each run
    max_pairs_u: float = 2e6  # random pairs sampled to estimate u
    link_type: Literal["link_and_dedupe", "link_only"] = "link_and_dedupe"  # link_only: never pair two records of one source
    probabilistic: bool = True  # false: deterministic stitching only (no Splink)
    review_threshold: float = 0.3  # pairs above this (but below match_threshold) are kept in identity_edges for review
    min_field_coverage: float = 0.01  # a match field filled in fewer records than this share is left out
    max_rule_comparisons_per_record: float = 10.0  # a blocking rule yielding more pairs than this x records keeps only its rarer values
    seed: int = 42  # random sampling of u and of the prior
    nicknames: str | None = None  # extra nickname file (CSV: nickname,canonical), relative to the workspace
    surname_from_email: bool = False  # a record without last name takes it from its email (anna_jansen@): more recall, more namesake merges
