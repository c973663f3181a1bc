"""The pipeline definition: an ordered list of notebook steps read from a small YAML file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import cdp_ml
from cdp_ml import settings
from cdp_ml.errors import CdpError
from cdp_ml.identity.tables import VIEW_KEYS
from cdp_ml.sources.kinds import KINDS

DEFAULT_PIPELINE = Path(cdp_ml.__file__).resolve().parent.parent / "pipelines" / "weekly.yaml"
# Score tables a step may need: segments and the report have nothing to publish when no model scored (a log too
# short for either model's eligibility check, e.g. Taobao's nine days)
SCORE_TABLES = ("conversion_scores", "repurchase_scores")


@dataclass(frozen=True)
class StepConfig:
    name: str  # e.g. 03_conversion: also the executed notebook's file name
    notebook: str  # path relative to the pipeline file
    retrain: bool = False  # the step trains models; it gets retrain=True when the cadence says so
    models: tuple[str, ...] = ()  # registered models whose champion age decides `auto` retraining
    optional: bool = False  # skipped (and logged) while its notebook does not exist yet
    parameters: dict[str, Any] = field(default_factory=dict)  # extra papermill parameters
    needs: tuple[str, ...] = ()  # staging tables, person views or score tables (scores on or before the run date)
    # of which at least one must have rows, else the step is skipped


@dataclass(frozen=True)
class PipelineConfig:
    steps: tuple[StepConfig, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Step:
    index: int
    name: str
    notebook: Path
    retrain: bool
    models: tuple[str, ...]
    optional: bool
    parameters: dict[str, Any]
    needs: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        return self.notebook.is_file()


@dataclass(frozen=True)
class Pipeline:
    path: Path
    steps: tuple[Step, ...]

    def index_of(self, name: str) -> int:
        """Find a step by full name (03_conversion), number (03, 3) or name without number (conversion)."""
        wanted = name.strip().lower()
        for step in self.steps:
            number, _, bare = step.name.partition("_")
            if wanted in (step.name.lower(), bare.lower()) or (wanted.isdigit() and number.isdigit()
                                                                and int(wanted) == int(number)):
                return step.index
        raise CdpError(f"--from: no step {name!r} in {self.path.name} (steps: {', '.join(s.name for s in self.steps)})")


def load_pipeline(path: Path | None = None, check_notebooks: bool = True) -> Pipeline:
    """Read and validate a pipeline YAML; notebook paths are relative to the YAML file."""
    path = Path(path or DEFAULT_PIPELINE).resolve()
    if not path.is_file():
        raise CdpError(f"refresh.pipeline: pipeline file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise CdpError(f"{path.name}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    config = settings.load(PipelineConfig, raw, path.name)
    if not config.steps:
        raise CdpError(f"{path.name}: steps: the pipeline has no steps")
    steps = []
    seen = set()
    reserved = {"workspace", "as_of", "parent_run_id", "retrain"}
    for i, sc in enumerate(config.steps):
        where = f"{path.name}: steps[{i}]"
        if sc.name in seen:
            raise CdpError(f"{where}.name: duplicate step {sc.name!r}")
        seen.add(sc.name)
        clash = reserved & set(sc.parameters)
        if clash:
            raise CdpError(f"{where}.parameters: {sorted(clash)[0]!r} is set by the runner")
        tables = [*KINDS, *VIEW_KEYS, *SCORE_TABLES]  # staging tables, identity's person views, model scores
        unknown = [n for n in sc.needs if n not in tables]
        if unknown:
            raise CdpError(f"{where}.needs: {unknown[0]!r} is not a staging table, person view or score table "
                           f"(one of {', '.join(tables)})")
        notebook = (path.parent / sc.notebook).resolve()
        if check_notebooks and not notebook.is_file() and not sc.optional:
            raise CdpError(f"{where}.notebook: {notebook} does not exist")
        steps.append(Step(index=i, name=sc.name, notebook=notebook, retrain=sc.retrain, models=sc.models,
                          optional=sc.optional, parameters=dict(sc.parameters), needs=tuple(sc.needs)))
    return Pipeline(path=path, steps=tuple(steps))
