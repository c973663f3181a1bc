"""The workspace: one ``cdp_ml.yaml`` holding all configuration, validated once on open."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml

from cdp_ml import settings
from cdp_ml.engine import DuckDBEngine
from cdp_ml.errors import CdpError
from cdp_ml.features.settings import FeatureSettings
from cdp_ml.identity.settings import IdentitySettings
from cdp_ml.models.settings import ConversionSettings, RepurchaseSettings
from cdp_ml.privacy.settings import PrivacySettings
from cdp_ml.refresh.settings import RefreshSettings
from cdp_ml.segments.settings import SegmentSettings
from cdp_ml.sources.kinds import KINDS, REFERENCING_KINDS, constant_column

WORKSPACE_FILE = "cdp_ml.yaml"
FORMATS = ("csv", "parquet", "jsonl", "excel")
_EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet",
               ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".xlsx": "excel", ".xlsm": "excel",
               ".xls": "excel", ".xlsb": "excel", ".ods": "excel"}


@dataclass(frozen=True)
class LookupConfig:
    """A second file joined to each row of a source by a key.

    Public and warehouse exports are often normalised: the order date sits in an orders file, the price in
    its order-lines file, the category in a products file. A lookup adds such columns without a
    hand-made join; it never adds or drops rows.
    """

    path: str
    key: str | dict[str, str]  # a column of both files, or {source column: lookup column}
    format: Literal["csv", "parquet", "jsonl", "excel"] | None = None
    options: dict[str, Any] = field(default_factory=dict)  # reader options, as for a source

    def keys(self) -> tuple[str, str]:
        """(source column, lookup column) joined on."""
        if isinstance(self.key, str):
            return self.key, self.key
        (left, right), = self.key.items()
        return left, right


@dataclass(frozen=True)
class SourceConfig:
    """One export: a file or glob of one canonical kind, with its column mapping."""

    name: str
    kind: Literal["customers", "events", "orders", "sessions", "interactions", "consents"]
    path: str
    columns: dict[str, str] = field(default_factory=dict)  # canonical field -> source column
    format: Literal["csv", "parquet", "jsonl", "excel"] | None = None
    options: dict[str, Any] = field(default_factory=dict)  # DuckDB read_csv options
    customer_source: str | None = None  # customers source that customer_ref points at
    customer_key: Literal["record_id", "customer_id"] = "record_id"
    timezone: str | None = None  # zone of timestamps without offset (default: workspace timezone)
    trust: int | None = None  # survivorship rank override (lower = more trusted)
    lookups: tuple[LookupConfig, ...] = ()  # files joined by key before the column mapping, in order
    constants: dict[str, str | bool | float] = field(default_factory=dict)  # canonical field -> one value for all rows
    # reader-added column -> the source columns whose first non-empty value it holds: a field mapped to a list
    # (Coveo's product_action, else its event_type); filled from `columns`, see parse_config
    fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # sessions: the columns (or paths into JSON columns) kept as model features; default every unmapped column.
    # A pre-aggregated export may hold the label inside a JSON column (GA's totals.transactions)
    features: tuple[str, ...] = ()

    def file_format(self) -> str:
        if self.format:
            return self.format
        suffix = Path(self.path.replace("*", "x")).suffix.lower()
        if suffix == ".gz":
            suffix = Path(Path(self.path).stem).suffix.lower()
        if suffix not in _EXTENSIONS:
            raise CdpError(f"source '{self.name}': cannot infer the format of {self.path!r}; set format: csv|parquet|jsonl|excel")
        return _EXTENSIONS[suffix]


@dataclass(frozen=True)
class WorkspaceConfig:
    sources: tuple[SourceConfig, ...] = ()
    warehouse: str = "data/warehouse.duckdb"
    mlflow_dir: str = "mlruns"  # MLflow sqlite store and artifacts live here
    default_country: str = "NL"  # phones without country code get this country's calling code
    timezone: str = "UTC"  # zone of source timestamps without an offset
    features: FeatureSettings = field(default_factory=FeatureSettings)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    conversion: ConversionSettings = field(default_factory=ConversionSettings)
    repurchase: RepurchaseSettings = field(default_factory=RepurchaseSettings)
    segments: SegmentSettings = field(default_factory=SegmentSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    refresh: RefreshSettings = field(default_factory=RefreshSettings)


class Workspace:
    """A directory with ``cdp_ml.yaml``; paths in the file are relative to it."""

    def __init__(self, root: Path, config: WorkspaceConfig):
        self.root = root
        self.config = config

    @classmethod
    def open(cls, root: str | os.PathLike | None = ".", check_files: bool = False) -> Workspace:
        """Open and validate a workspace; ``"."`` or None means ``$CDP_ML_WORKSPACE`` when set (JupyterLab)."""
        if root is None or str(root) == ".":
            root = os.environ.get("CDP_ML_WORKSPACE") or "."
        root = Path(root).resolve()
        path = root / WORKSPACE_FILE
        if not path.is_file():
            raise CdpError(f"no {WORKSPACE_FILE} in {root} (create one with: cdp-ml init {root})")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise CdpError(f"{WORKSPACE_FILE}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        except UnicodeDecodeError:
            raise CdpError(f"{WORKSPACE_FILE}: not UTF-8 text") from None
        config = parse_config(raw)
        ws = cls(root, config)
        if check_files:
            for src in config.sources:
                ws.source_files(src)
        return ws

    # --- locations -------------------------------------------------------------------------
    def path(self, relative: str | os.PathLike) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    @property
    def warehouse_path(self) -> Path:
        return self.path(self.config.warehouse)

    @property
    def cache_dir(self) -> Path:
        """Derived results kept to save recomputation (e.g. a backtest train reuses); an erasure clears it."""
        return self.warehouse_path.parent / "cache"

    @property
    def mlflow_dir(self) -> Path:
        return self.path(self.config.mlflow_dir)

    @property
    def runs_dir(self) -> Path:
        return self.path(self.config.refresh.runs_dir)

    @property
    def segments_dir(self) -> Path:
        return self.path(self.config.segments.output_dir)

    @property
    def engine(self) -> DuckDBEngine:
        return DuckDBEngine(self.warehouse_path)

    def connect(self, wait_seconds: float = 30.0):
        """A short-lived warehouse connection (context manager)."""
        return self.engine.connect(wait_seconds)

    def source(self, name: str) -> SourceConfig:
        for src in self.config.sources:
            if src.name == name:
                return src
        raise CdpError(f"no source named {name!r} (sources: {', '.join(s.name for s in self.config.sources)})")

    def sources_of(self, kind: str) -> list[SourceConfig]:
        return [s for s in self.config.sources if s.kind == kind]

    def source_files(self, src: SourceConfig) -> list[Path]:
        """Files matched by a source's path or glob, sorted; a glob matching nothing is an error."""
        pattern = str(self.path(src.path))
        if glob.has_magic(pattern):
            files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not files:
                raise CdpError(f"source '{src.name}': path {src.path!r} matches no file in {self.root}")
            return files
        p = Path(pattern)
        if not p.exists():
            raise CdpError(f"source '{src.name}': file {src.path!r} does not exist in {self.root}")
        if p.is_dir():
            raise CdpError(f"source '{src.name}': path {src.path!r} is a directory; give a file or a glob")
        return [p]

    def lookup_files(self, src: SourceConfig) -> list[Path]:
        """The files of a source's lookups, in order; each must be one existing file."""
        files = []
        for i, lookup in enumerate(src.lookups):
            p = self.path(lookup.path)
            if glob.has_magic(str(p)) or not p.is_file():
                raise CdpError(f"source '{src.name}': lookups[{i}] file {lookup.path!r} does not exist in {self.root} "
                               f"(a lookup is one file, not a glob)")
            files.append(p)
        return files

    def relative(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.root))
        except ValueError:
            return str(path)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r}, sources={[s.name for s in self.config.sources]})"


def parse_config(raw: Any) -> WorkspaceConfig:
    """Validate the YAML mapping of a workspace file into a WorkspaceConfig."""
    if not isinstance(raw, dict):
        raise CdpError(f"{WORKSPACE_FILE}: expected a mapping at the top level")
    raw = dict(raw)
    if "mlflow" in raw:  # accept `mlflow: {dir: ...}` or `mlflow: DIR`
        value = raw.pop("mlflow")
        raw["mlflow_dir"] = value.get("dir", "mlruns") if isinstance(value, dict) else value
    if isinstance(raw.get("segments"), list):
        raw["segments"] = {"definitions": raw["segments"]}
    sources = raw.get("sources") or []
    if not isinstance(sources, list):
        raise CdpError("sources: expected a list of sources")
    for i, src in enumerate(sources):
        if not isinstance(src, dict):
            raise CdpError(f"sources[{i}]: expected a mapping with name, kind, path, columns")
        kind = src.get("kind")
        if kind is not None and kind not in KINDS:
            raise CdpError(f"sources[{i}].kind: unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
        for lookup in src.get("lookups") or []:
            if isinstance(lookup, dict) and True in lookup:  # YAML 1.1 reads a bare `on:` key as true
                lookup.setdefault("key", lookup.pop(True))
        if isinstance(src.get("columns"), dict):
            sources[i] = _fold_column_lists(src, f"sources[{i}]")
    config = settings.load(WorkspaceConfig, raw, "")
    _check_sources(config)
    return _fold_constants(config)


def _fold_column_lists(src: dict, where: str) -> dict:
    """A field mapped to a list of columns reads the first non-empty of them, through one reader-added column
    named ``a|b`` (a source keeping one value in two columns, e.g. the product action, else the page event)."""
    columns, fallbacks = {}, {}
    for canonical, column in src["columns"].items():
        if isinstance(column, list):
            if not column or not all(isinstance(c, str) and c for c in column):
                raise CdpError(f"{where}.columns.{canonical}: expected a column name or a list of column names")
            if len(column) > 1:
                fallbacks["|".join(column)] = column
            column = "|".join(column)
        columns[canonical] = column
    return {**src, "columns": columns, "fallbacks": fallbacks} if fallbacks else src


def _fold_constants(config: WorkspaceConfig) -> WorkspaceConfig:
    """Map each constant field to its reader-added column, so every stage sees an ordinary mapping."""
    return replace(config, sources=tuple(
        replace(src, columns={**src.columns, **{f: constant_column(f) for f in src.constants}})
        for src in config.sources))


def _check_sources(config: WorkspaceConfig) -> None:
    names = set()
    for i, src in enumerate(config.sources):
        where = f"sources[{i}]"
        if src.name in names:
            raise CdpError(f"{where}.name: duplicate source name {src.name!r}")
        names.add(src.name)
        if src.features and src.kind != "sessions":
            raise CdpError(f"{where}.features: only sessions sources have feature columns")
        known = {f.name for f in KINDS[src.kind]}
        for canonical in src.constants:
            if canonical not in known:
                raise CdpError(f"{where}.constants: {canonical!r} is not a field of kind {src.kind} "
                               f"(fields: {', '.join(sorted(known))})")
            if canonical in src.columns:
                raise CdpError(f"{where}.constants.{canonical}: also mapped in columns; give a column or a constant")
        for canonical in src.columns:
            if canonical not in known:
                raise CdpError(f"{where}.columns: {canonical!r} is not a field of kind {src.kind} "
                               f"(fields: {', '.join(sorted(known))})")
        for f in KINDS[src.kind]:
            if f.required and f.name not in src.columns and f.name not in src.constants:
                raise CdpError(f"{where}.columns.{f.name}: required field of kind {src.kind} is not mapped "
                               f"(map it to a column of {src.path}, or give it under constants)")
        for j, lookup in enumerate(src.lookups):
            if isinstance(lookup.key, dict) and len(lookup.key) != 1:
                raise CdpError(f"{where}.lookups[{j}].key: give one column, or one {{source column: lookup column}} pair")
        if src.customer_source is not None and src.kind not in REFERENCING_KINDS:
            raise CdpError(f"{where}.customer_source: only {', '.join(REFERENCING_KINDS)} sources refer to customers")
    for i, src in enumerate(config.sources):
        if src.customer_source is None:
            continue
        target = next((s for s in config.sources if s.name == src.customer_source), None)
        if target is None or target.kind != "customers":
            raise CdpError(f"sources[{i}].customer_source: {src.customer_source!r} is not a customers source")
        if src.customer_key == "customer_id" and "customer_id" not in target.columns:
            raise CdpError(f"sources[{i}].customer_key: source {target.name!r} maps no customer_id")
    if config.default_country and len(config.default_country) != 2:
        raise CdpError("default_country: expected a two-letter ISO country code such as NL")
    for i, src in enumerate(config.sources):
        try:
            src.file_format()
        except CdpError as exc:
            raise CdpError(f"sources[{i}]: {exc}") from None


def parse_date(value: str | date | datetime | None, what: str = "date") -> date | None:
    """Parse an ISO date (or ISO week like 2026-W47, meaning its Monday) given by a user."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    try:
        if "-W" in text:
            return datetime.strptime(text + "-1", "%G-W%V-%u").date()
        return date.fromisoformat(text[:10])
    except ValueError:
        raise CdpError(f"{what}: {text!r} is not a date (use YYYY-MM-DD or YYYY-Www)") from None


def last_completed_week_end(today: date | None = None) -> date:
    """The Monday starting the current ISO week: as-of of a refresh covers the last completed week."""
    today = today or date.today()
    return today - timedelta(days=today.weekday())
