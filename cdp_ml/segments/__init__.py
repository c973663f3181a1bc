"""Segments stage: the week's consented, suppressed segments, activation files and the marketer report.

Imports are lazy because ``cdp_ml.workspace`` imports ``cdp_ml.segments.settings`` (this package).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cdp_ml.segments.build import SegmentsResult, build_segments
    from cdp_ml.segments.report import ReportResult, write_report

__all__ = ["ReportResult", "SegmentsResult", "build_segments", "write_report"]
_HOME = {"SegmentsResult": "build", "build_segments": "build", "ReportResult": "report", "write_report": "report"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(f"cdp_ml.segments.{_HOME[name]}"), name)
    raise AttributeError(f"module 'cdp_ml.segments' has no attribute {name!r}")
