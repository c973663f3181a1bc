"""MLflow tracking for the workspace: one sqlite store inside ``mlruns/`` shared by CLI and notebooks.

Only aggregates, parameters, figures and models go to MLflow; never personal data.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import mlflow  # noqa: E402

from cdp_ml.workspace import Workspace  # noqa: E402

PARENT_RUN_ENV = "CDP_ML_PARENT_RUN_ID"


def _quiet_mlflow() -> None:
    """Keep MLflow's advice for other set-ups out of the CLI's and notebooks' output: we log a pickled
    ``python_model`` on purpose, and the store is created once per workspace."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)


def setup(ws: Workspace) -> mlflow.MlflowClient:
    """Point MLflow at the workspace store (absolute sqlite URI, so any cwd works)."""
    _quiet_mlflow()
    root = ws.mlflow_dir
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment(ws: Workspace, name: str) -> str:
    """Create (artifacts inside mlruns/) or reuse an experiment; returns its id."""
    setup(ws)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        return mlflow.create_experiment(name, artifact_location=(ws.mlflow_dir / "artifacts" / name).as_uri())
    return exp.experiment_id


@contextmanager
def run(ws: Workspace, experiment_name: str, run_name: str, parent_run_id: str | None = None,
        tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start a run, nested under the refresh's parent run when one is given (or set in the environment)."""
    exp_id = experiment(ws, experiment_name)
    parent_run_id = parent_run_id or os.environ.get(PARENT_RUN_ENV) or None
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    while mlflow.active_run() is not None:  # a previous cell's failure may leave one open
        mlflow.end_run(status="FAILED")
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=all_tags) as active:
        yield active


def fingerprint(frame: Any, time_column: str | None = None, id_columns: tuple[str, ...] = ()) -> dict[str, Any]:
    """Row count, time range and a content hash of a training table: identifies data without exposing it.

    The hash covers column names, dtypes and a hash of every row computed by pandas (no values are
    kept); person ids are pseudonymous, but are dropped from the hash input anyway.
    """
    import pandas as pd

    cols = [c for c in frame.columns if c not in id_columns]
    row_hash = pd.util.hash_pandas_object(frame[cols], index=False).to_numpy()
    digest = hashlib.sha256()
    digest.update(",".join(f"{c}:{frame[c].dtype}" for c in cols).encode())
    digest.update(row_hash.tobytes())
    out: dict[str, Any] = {"rows": int(len(frame)), "columns": len(cols), "sha256": digest.hexdigest()[:16]}
    if time_column and len(frame):
        out["time_min"] = str(frame[time_column].min())
        out["time_max"] = str(frame[time_column].max())
    return out


def champion_version(ws: Workspace, model_name: str) -> Any | None:
    """The registered model version carrying the ``champion`` alias, or None."""
    client = setup(ws)
    try:
        return client.get_model_version_by_alias(model_name, "champion")
    except mlflow.exceptions.MlflowException:
        return None


def promote_if_not_worse(ws: Workspace, model_name: str, version: str, metric: str, new_value: float,
                         champion_value: float | None, higher_is_better: bool = True,
                         tolerance: float = 0.0) -> dict[str, Any]:
    """Quality gate: move ``champion`` to ``version`` only when it is not worse on the same window.

    ``champion_value`` is the current champion's metric re-computed on the same backtest window by the
    caller (None when there is no champion). The decision is returned and tagged on the version.
    """
    client = setup(ws)
    if champion_value is None:
        promote, why = True, "no champion yet"
    elif higher_is_better:
        promote = new_value >= champion_value - tolerance
        why = f"{metric} {new_value:.4f} vs champion {champion_value:.4f}"
    else:
        promote = new_value <= champion_value + tolerance
        why = f"{metric} {new_value:.4f} vs champion {champion_value:.4f}"
    if promote:
        client.set_registered_model_alias(model_name, "champion", str(version))
    client.set_model_version_tag(model_name, str(version), "gate", "promoted" if promote else "rejected")
    client.set_model_version_tag(model_name, str(version), "gate_reason", why)
    return {"promoted": promote, "reason": why, "version": str(version)}
