"""Sources stage: read every export into typed canonical staging tables (validated, quarantined, idempotent)."""

from cdp_ml.sources.load import FileLoad, IngestResult, ingest

__all__ = ["FileLoad", "IngestResult", "ingest"]
