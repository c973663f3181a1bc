"""``cdp-ml evaluate identity``: pairwise and B-cubed accuracy of person_map against labelled truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cdp_ml.engine import table_exists
from cdp_ml.errors import CdpError
from cdp_ml.sources.normalise import lit
from cdp_ml.sources.readers import json_key
from cdp_ml.workspace import Workspace


@dataclass(frozen=True)
class Scores:
    """Pairwise and B-cubed scores of one scope (customer records, or every identifier)."""

    rows: int
    entities: int
    found: int  # truth identifiers present in person_map with a person
    persons: int
    true_pairs: int
    predicted_pairs: int
    correct_pairs: int
    precision: float
    recall: float
    f1: float
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f1: float
    over_merged: int  # persons holding identifiers of more than one true entity
    split_entities: int  # true entities spread over more than one person

    def lines(self, title: str) -> list[str]:
        return [
            f"{title}: {self.rows:,} labelled ({self.entities:,} entities; {self.found:,} resolved into "
            f"{self.persons:,} persons)",
            f"  pairwise   precision {self.precision:.4f}  recall {self.recall:.4f}  F1 {self.f1:.4f}  "
            f"({self.correct_pairs:,} of {self.predicted_pairs:,} predicted pairs correct; {self.true_pairs:,} true pairs)",
            f"  B-cubed    precision {self.bcubed_precision:.4f}  recall {self.bcubed_recall:.4f}  F1 {self.bcubed_f1:.4f}",
            f"  over-merged persons {self.over_merged:,}; entities split over several persons {self.split_entities:,}",
        ]


@dataclass(frozen=True)
class EvaluationResult:
    records: Scores | None  # customer records (id_type record)
    identifiers: Scores  # every labelled identifier (records, customer refs, cookies, emails, phones)

    @property
    def f1(self) -> float:
        return (self.records or self.identifiers).f1

    def __str__(self) -> str:
        out = ["identity evaluation"]
        if self.records is not None:
            out += self.records.lines("customer records")
        if self.records is None or self.identifiers.rows != self.records.rows:
            out += self.identifiers.lines("all identifiers")
        return "\n".join(out)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for prefix, scores in (("records_", self.records), ("identifiers_", self.identifiers)):
            if scores is not None:
                out.update({prefix + k: float(getattr(scores, k)) for k in scores.__dataclass_fields__})
        return out


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def truth_files(ws: Workspace, truth: Path | None, demo: bool) -> list[Path]:
    if truth is not None:
        path = truth if truth.is_absolute() else Path.cwd() / truth
        if not path.is_file():
            raise CdpError(f"evaluate identity: truth file {truth} does not exist")
        return [path]
    if demo:
        base = ws.root / "ground_truth"
        files = [p for p in (base / "identity.csv", base / "identifiers.csv") if p.is_file()]
        if not (base / "identity.csv").is_file():
            raise CdpError(f"evaluate identity --demo: no ground_truth/identity.csv in {ws.root} "
                           "(this workspace was not made by cdp-ml demo)")
        return files
    raise CdpError("evaluate identity: give --truth FILE or --demo")


def _label_parts(ws: Workspace, column: str, pattern: str | None) -> list[str]:
    """Truth selects reading each customers source's own label column (mapped, or kept in attributes)."""
    parts = []
    for src in ws.config.sources:
        if src.kind != "customers":
            continue
        mapped = [field for field, col in src.columns.items() if col == column]
        value = f'"{mapped[0]}"' if mapped else f"json_extract_string(attributes, {lit('$.' + json_key(column))})"
        entity = f"nullif(regexp_extract({value}, {lit(pattern)}), '')" if pattern else value
        parts.append(f"select source, 'record' as id_type, record_id, {entity} as entity from customers "
                     f"where source = {lit(src.name)}")
    return parts


def evaluate(ws: Workspace, truth: Path | None = None, demo: bool = False, entity_column: str | None = None,
             entity_pattern: str | None = None) -> EvaluationResult:
    """Compare person_map with a truth CSV of (source, record_id, entity[, id_type]), or with a label column
    of the customer exports themselves (Splink's ``cluster``, FEBRL's ``rec_id`` with a pattern such as
    ``rec-[0-9]+``); logs aggregates to MLflow."""
    if entity_pattern is not None and entity_column is None:
        raise CdpError("evaluate identity: --entity-pattern needs --entity-column")
    files = [] if entity_column else truth_files(ws, truth, demo)
    with ws.connect() as con:
        if not table_exists(con, "person_map"):
            raise CdpError("evaluate identity: no person_map in the warehouse yet (run: cdp-ml resolve)")
        parts = _label_parts(ws, entity_column, entity_pattern) if entity_column else []
        if entity_column and not parts:
            raise CdpError("evaluate identity: --entity-column needs a customers source")
        if entity_pattern is not None:
            try:
                con.execute("select regexp_extract('', ?)", [entity_pattern])
            except Exception as exc:
                raise CdpError(f"evaluate identity: --entity-pattern is not a regular expression: "
                               f"{str(exc).splitlines()[0]}") from None
        for f in files:
            rel = con.read_csv(str(f), all_varchar=True, header=True)
            cols = {c.lower(): c for c in rel.columns}
            if "record_id" not in cols and "identifier" in cols:
                cols["record_id"] = cols["identifier"]
            missing = [c for c in ("source", "record_id", "entity") if c not in cols]
            if missing:
                raise CdpError(f"evaluate identity: {f.name} lacks column(s) {', '.join(missing)} "
                               f"(columns: {', '.join(rel.columns)})")
            id_type = f'"{cols["id_type"]}"' if "id_type" in cols else "'record'"
            con.register(f"_truth_{len(parts)}", rel)
            # identifiers marked shared (a household device) belong to several entities: not scored
            shared = f'where coalesce(lower("{cols["shared"]}"), \'false\') not in (\'true\', \'1\')' if "shared" in cols else ""
            parts.append(f'select "{cols["source"]}" as source, {id_type} as id_type, "{cols["record_id"]}" as record_id, '
                         f'"{cols["entity"]}" as entity from _truth_{len(parts)} {shared}')
        con.execute("create or replace temp table _truth as select distinct * from (" + " union all ".join(parts)
                    + ") where entity is not null and record_id is not null")
        records = _scores(con, "where id_type = 'record'")
        identifiers = _scores(con, "")
    if identifiers is None:
        if entity_column:
            raise CdpError(f"evaluate identity: column {entity_column!r} gives no entity for any customer record "
                           f"(is it in the customers exports{', and does the pattern match' if entity_pattern else ''}?)")
        raise CdpError("evaluate identity: the truth file has no rows with source, record_id and entity")
    result = EvaluationResult(records, identifiers)
    _log(ws, result)
    return result


def _scores(con, where: str) -> Scores | None:
    row = con.execute(f"""
        with t as (
          select t.entity, coalesce(m.person_id, '~' || t.source || '/' || t.id_type || '/' || t.record_id) as person,
                 m.person_id is not null as found
          from (select * from _truth {where}) t left join person_map m using (source, id_type, record_id)),
        cell as (select entity, person, count(*) as n from t group by all),
        ent as (select entity, count(*) as n from t group by entity),
        per as (select person, count(*) as n from t group by person),
        b3 as (select sum(c.n * c.n / p.n) as bp, sum(c.n * c.n / e.n) as br
               from cell c join per p using (person) join ent e using (entity))
        select (select count(*) from t), (select count(*) from ent), (select count(*) filter (where found) from t),
          (select count(distinct person) filter (where found) from t),
          (select sum(n * (n - 1) / 2) from ent), (select sum(n * (n - 1) / 2) from per),
          (select sum(n * (n - 1) / 2) from cell), (select bp from b3), (select br from b3),
          (select count(*) from (select person from cell group by person having count(*) > 1)),
          (select count(*) from (select entity from cell group by entity having count(*) > 1))""").fetchall()[0]
    n, entities, found, persons, true_pairs, predicted, correct, bp, br, over, split = row
    if not n:
        return None
    true_pairs, predicted, correct = int(true_pairs or 0), int(predicted or 0), int(correct or 0)
    precision = correct / predicted if predicted else 1.0
    recall = correct / true_pairs if true_pairs else 1.0
    bcp, bcr = bp / n, br / n
    return Scores(int(n), int(entities), int(found), int(persons), true_pairs, predicted, correct, precision, recall,
                  _f1(precision, recall), bcp, bcr, _f1(bcp, bcr), int(over), int(split))


def _log(ws: Workspace, result: EvaluationResult) -> None:
    from cdp_ml import tracking

    with tracking.run(ws, "identity", "evaluate"):
        import mlflow

        mlflow.log_metrics(result.metrics())
