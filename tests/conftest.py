"""Shared fixtures: a tiny demo workspace generated and ingested once per session, copied per test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def demo_source(tmp_path_factory) -> Path:
    """Raw demo files + cdp_ml.yaml + ground truth for 300 persons (generated once; do not modify)."""
    from cdp_ml.demo import generate

    root = tmp_path_factory.mktemp("demo-source")
    generate(root, persons=300, seed=11)
    return root


@pytest.fixture(scope="session")
def demo_ingested(demo_source, tmp_path_factory) -> Path:
    """The demo workspace after ingestion (do not modify; copy with ``demo_ws``)."""
    from cdp_ml import Workspace
    from cdp_ml.sources import ingest

    root = tmp_path_factory.mktemp("demo-ingested")
    shutil.copytree(demo_source, root, dirs_exist_ok=True)
    ingest(Workspace.open(root))
    return root


@pytest.fixture
def demo_ws(demo_ingested, tmp_path):
    """A private, ingested copy of the tiny demo workspace."""
    from cdp_ml import Workspace

    root = tmp_path / "ws"
    shutil.copytree(demo_ingested, root)
    return Workspace.open(root)
