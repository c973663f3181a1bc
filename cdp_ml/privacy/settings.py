"""Privacy settings (the ``privacy:`` section)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PrivacySettings:
    consent_default_granted: bool = False  # no consent record means not granted unless set true
    retention_days: dict[str, int] = field(default_factory=dict)  # per source kind, e.g. {events: 395}
    tombstone_salt_file: str = "data/.tombstone_salt"
