"""Privacy settings (the ``privacy:`` section)."""

from __future__ import annotations

from dataclasses import dataclass, field

# What privacy.retention_days may name: a staging kind, the events without a customer reference
# (anonymous browsing, usually kept shorter), or quarantined rows.
RETENTION_KINDS = ("customers", "events", "anonymous_events", "orders", "sessions", "interactions", "consents",
                   "quarantine")


@dataclass(frozen=True)
class PrivacySettings:
    consent_default_granted: bool = False  # no consent record means not granted unless set true
    retention_days: dict[str, int] = field(default_factory=dict)  # per source kind, e.g. {events: 395}
    tombstone_salt_file: str = "data/.tombstone_salt"  # salt of the erasure tombstones; keep, never commit
    audit_log_file: str = "data/privacy/erasure_log.jsonl"  # one line per erasure request, no personal data

    def __post_init__(self) -> None:
        for kind, days in self.retention_days.items():
            if kind not in RETENTION_KINDS:
                raise ValueError(f"retention_days: unknown kind {kind!r} (kinds: {', '.join(RETENTION_KINDS)})")
            if days <= 0:
                raise ValueError(f"retention_days.{kind}: expected a positive number of days, got {days}")
