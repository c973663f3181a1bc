"""Privacy: erasure (with tombstones), access, retention, the consent ledger and the profiling objection.

Exports are loaded lazily: ``cdp_ml.workspace`` imports ``cdp_ml.privacy.settings`` while the stage
modules here import the workspace, so an eager import would be circular.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ExportResult": "access", "export_person": "access",
    "ForgetResult": "erasure", "forget": "erasure",
    "profiling_excluded_sql": "profiling", "profiling_objections": "profiling",
    "RetentionResult": "retention", "apply_retention": "retention",
    "purge_tombstoned": "tombstone",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"cdp_ml.privacy.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'cdp_ml.privacy' has no attribute {name!r}")
