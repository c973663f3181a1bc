"""``cdp-ml resolve``: every identifier the workspace knows, clustered into persons with stable ids."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime

import duckdb

from cdp_ml.engine import bounded_memory, table_exists
from cdp_ml.errors import CdpError
from cdp_ml.identity import inputs, matching, state, tables
from cdp_ml.identity.clustering import assign_person_ids, component_conflicts, connected_components, merge_weak_edges
from cdp_ml.identity.settings import IdentitySettings
from cdp_ml.workspace import Workspace

PARENT_RUN_ENV = "CDP_ML_PARENT_RUN_ID"  # = cdp_ml.tracking.PARENT_RUN_ENV, without importing MLflow
# When an identifier has several edges, the one reported as its method (lower wins).
_METHOD_RANK = {"probabilistic": 0, "customer_id": 1, "email": 2, "phone": 3, "customer_ref": 4,
                "customer_key": 5, "same_row": 6, "login": 7}


@dataclass(frozen=True)
class ResolveResult:
    as_of: date | None
    persons: int
    records: int
    identifiers: int
    unresolved: int
    largest_cluster: int
    comparisons: int
    deterministic_edges: int
    probabilistic_edges: int
    review_pairs: int
    ids_kept: int
    ids_new: int
    merges: int
    splits: int
    seconds: float
    blocking_rules: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        lines = [
            f"identity resolved{f' as of {self.as_of}' if self.as_of else ''} in {self.seconds:.1f}s",
            f"  persons              {self.persons:>10,}",
            f"  customer records     {self.records:>10,}",
            f"  identifiers          {self.identifiers:>10,}  ({self.unresolved:,} unresolved)",
            f"  largest cluster      {self.largest_cluster:>10,}  identifiers",
            f"  comparisons          {self.comparisons:>10,}  (blocking: {', '.join(self.blocking_rules) or 'none'})",
            f"  deterministic edges  {self.deterministic_edges:>10,}",
            f"  probabilistic edges  {self.probabilistic_edges:>10,}  (+{self.review_pairs:,} pairs to review)",
            f"  person ids           {self.ids_kept:,} kept, {self.ids_new:,} new, {self.merges:,} merged, "
            f"{self.splits:,} split",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in self.as_dict().items())
        return f"<table>{rows}</table>"

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def resolve(ws: Workspace, as_of: date | None = None, retrain: bool = True) -> ResolveResult:
    """Cluster every known identifier into persons; keeps person ids stable across runs.

    ``retrain=False`` (score-only refresh weeks) predicts with the saved Splink model instead of
    re-estimating u and m, and does only the work the data asks for: nothing when the records,
    identifiers, settings and model are those of the last run (its tables already are this run's), and
    no Splink prediction when the customer records are unchanged (the last run's scored pairs are exact).
    """
    started = time.monotonic()
    settings = ws.config.identity
    if not 0 < settings.match_threshold < 1:
        raise CdpError("identity.match_threshold: expected a probability between 0 and 1")
    if not any(s.kind in ("customers", *inputs.REFERENCE_COLUMNS) for s in ws.config.sources):
        raise CdpError("resolve: the workspace has no customers, events, orders, sessions, interactions or "
                       "consents source (add one under sources:)")
    notes: list[str] = []
    model_path = ws.warehouse_path.parent / matching.MODEL_FILE
    # capped (DuckDB spills beyond a quarter of the machine): at 1M persons the uncapped run peaked at 12.4 GB
    with ws.connect() as con, bounded_memory(con):
        if not any(table_exists(con, k) for k in ("customers", *inputs.REFERENCE_COLUMNS)):
            raise CdpError("resolve: the warehouse has no staging tables yet (run: cdp-ml ingest)")
        fingerprint = state.fingerprint(con, ws, settings, as_of, model_path)
        saved = state.load(con)
        if saved is not None and not retrain:
            changed = fingerprint.differences(saved.fingerprint)
            if not changed:
                result = _unchanged(saved, as_of, time.monotonic() - started)
                _log(ws, result, matching.MatchOutcome.from_dict(saved.outcome))
                return result
            notes.append(f"changed since the last resolution: {', '.join(changed)}")
        # DuckDB 2.0.0 can fail with "dict-surviving cache ... changed identity" when hash joins meet
        # dictionary-compressed temp tables (seen at 100k persons); this run writes them uncompressed
        con.execute("set disabled_compression_methods = 'dictionary,fsst,dict_fsst'")
        cols = inputs.prepare(con, ws, settings, as_of)
        reuse_pairs = (saved is not None and not retrain and settings.probabilistic and bool(cols)
                       and table_exists(con, state.PAIRS_TABLE)
                       and (fingerprint.config, fingerprint.model, fingerprint.records)
                       == (saved.fingerprint.config, saved.fingerprint.model, saved.fingerprint.records))
        if reuse_pairs:
            state.restore_pairs(con)
            outcome = replace(matching.MatchOutcome.from_dict(saved.outcome), trained=False)
            notes += [*outcome.notes, "customer records unchanged: the last run's scored pairs reused (no Splink)"]
        elif settings.probabilistic and cols:
            match_notes: list[str] = []
            outcome = matching.match(con, cols, settings, ws.warehouse_path.parent, match_notes, retrain=retrain)
            outcome = replace(outcome, notes=tuple(match_notes))
            notes += match_notes
            fingerprint = replace(fingerprint, model=state.model_digest(model_path))  # (re)trained: the new model
        else:
            matching._empty_pairs(con)
            outcome = matching.MatchOutcome(0, 0, 0, (), False, ())
        state.snapshot_pairs(con)
        _cluster(con, settings, outcome.rule_columns)
        # one transaction: a crash (e.g. a killed weekly refresh) leaves the previous persons intact
        con.execute("begin transaction")
        try:
            ids = assign_person_ids(con, "_id_clusters", datetime.now(UTC).replace(tzinfo=None))
            _write_tables(con, ws)
            counts = _counts(con)
            state.save_pairs(con)
            state.save(con, fingerprint, counts, outcome.as_dict())
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
    result = ResolveResult(
        as_of=as_of, **counts, comparisons=outcome.comparisons, ids_kept=ids["kept"], ids_new=ids["new"],
        merges=ids["merged"], splits=ids["split"], seconds=time.monotonic() - started,
        blocking_rules=outcome.rules, notes=tuple(notes))
    _log(ws, result, outcome)
    return result


def _counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """The sizes a result reports, read back from the tables just written."""
    names = ("persons", "records", "identifiers", "unresolved", "largest_cluster", "deterministic_edges",
             "probabilistic_edges", "review_pairs")
    values = con.execute("""select
        (select count(distinct person_id) from person_map where person_id is not null),
        (select count(*) from person_map where id_type = 'record'),
        (select count(*) from person_map), (select count(*) from person_map where person_id is null),
        (select coalesce(max(n), 0) from (select count(*) n from person_map where person_id is not null
                                           group by person_id)),
        (select count(*) from identity_edges where method <> 'probabilistic'),
        (select count(*) from identity_edges where method = 'probabilistic' and accepted),
        (select count(*) from identity_edges where method = 'probabilistic' and not accepted)""").fetchall()[0]
    return dict(zip(names, map(int, values), strict=True))


def _unchanged(saved: state.Saved, as_of: date | None, seconds: float) -> ResolveResult:
    """The last run's tables are this run's: report them as kept, without touching a table."""
    counts = {k: int(v) for k, v in saved.result.items()}  # type: ignore[call-overload]
    return ResolveResult(
        as_of=as_of, **counts, comparisons=0, ids_kept=counts["persons"], ids_new=0, merges=0, splits=0,
        seconds=seconds, blocking_rules=(),
        notes=("nothing changed since the last resolution (same customer records, identifiers, settings and "
               "Splink model): its persons and tables are kept as they are",))


def _cluster(con: duckdb.DuckDBPyConnection, settings: IdentitySettings,
             rules: tuple[tuple[str, ...], ...]) -> None:
    """``_id_clusters(source, id_type, record_id, cluster)`` and ``_id_members`` with each identifier's method."""
    con.execute("create or replace temp table _id_rank(method varchar, rank integer)")
    con.executemany("insert into _id_rank values (?, ?)", [[k, v] for k, v in _METHOD_RANK.items()])
    con.execute("""create or replace temp table _id_all_edges as
        select a, b, method, match_probability from _id_edges
        union all select node_l, node_r, 'probabilistic', match_probability from _id_pairs
        where accepted and corroborated""")
    con.execute("create or replace temp table _id_core as select node from _id_nodes where id_type <> 'anonymous_id'")
    connected_components(con, "_id_core", "_id_all_edges", "_id_comp")
    _attach_weak_pairs(con, settings, rules)
    # a component is a person when it holds a customer record, a customer key, or a linkable email/phone hub
    con.execute("""create or replace temp table _id_person_comp as
        select distinct c.component from _id_comp c join _id_nodes n using (node)
        where n.id_type in ('record', 'customer_ref') or n.id_type like 'hub\\_%' escape '\\'""")
    # anonymous ids: attached when every login on them points at one person; a shared device stays unresolved
    con.execute("""create or replace temp table _id_anon as
        with logins as (
          select distinct x.anonymous_id, c.component, r.node as ref_node from _id_refs x
          join _id_nodes r on r.id_type = 'customer_ref' and r.source = x.source and r.record_id = x.customer_ref
          join _id_comp c on c.node = r.node
          where x.anonymous_id is not null and x.customer_ref is not null),
        per_value as (
          select anonymous_id, count(distinct component) as persons, min(component) as component,
                 min(ref_node) as ref_node from logins group by anonymous_id)
        select n.node, case when p.persons = 1 then p.component end as component, p.ref_node,
          case when p.persons = 1 then 'login' when p.persons > 1 then 'shared_device' else 'anonymous' end as method
        from _id_nodes n left join per_value p on p.anonymous_id = n.record_id
        where n.id_type = 'anonymous_id'""")
    con.execute("""insert into _id_all_edges
        select node, ref_node, 'login', 1.0 from _id_anon where method = 'login'""")
    con.execute("""create or replace temp table _id_node_method as
        select node, arg_min(method, rank) as method, max(match_probability) filter (where method = 'probabilistic') as p
        from (select a as node, method, match_probability, r.rank from _id_all_edges join _id_rank r using (method)
              union all select b, method, match_probability, r.rank from _id_all_edges join _id_rank r using (method))
        group by node""")
    con.execute("""create or replace temp table _id_members as
        select n.node, n.source, n.id_type, n.record_id,
          case when pc.component is not null then c.component else a.component end as cluster,
          case when a.node is not null then a.method
               when pc.component is null then coalesce(v.status, 'unlinked')
               when n.id_type = 'record' then coalesce(m.method, 'record')
               when n.id_type = 'customer_ref' then coalesce(m.method, 'unmatched_ref')
               else m.method end as method,
          case when pc.component is null and a.component is null then null
               when m.method = 'probabilistic' then m.p else 1.0 end as match_probability
        from _id_nodes n
        left join _id_comp c on c.node = n.node
        left join _id_person_comp pc on pc.component = c.component
        left join _id_anon a on a.node = n.node
        left join _id_node_method m on m.node = n.node
        left join _id_values v on v.kind = n.id_type and v.value = n.record_id
        where n.id_type not like 'hub\\_%' escape '\\'""")
    con.execute("""create or replace temp table _id_clusters as
        select source, id_type, record_id, cluster from _id_members where cluster is not null""")


def _weight(p: float) -> float:
    """Splink's match weight (log2 odds) of a probability."""
    return math.log2(p / (1 - p))


def _attach_weak_pairs(con: duckdb.DuckDBPyConnection, settings: IdentitySettings,
                       rules: tuple[tuple[str, ...], ...]) -> None:
    """Merge components through name-only pairs without conflicts or ambiguity; mark the rest not accepted."""
    con.execute("""create or replace temp table _id_facts as
        select n.node, r.dob, r.source, r.customer_id as account from _id_records r
        join _id_nodes n on n.id_type = 'record' and n.source = r.source and n.record_id = r.record_id
        where r.dob is not null or r.customer_id is not null""")
    con.execute("""create or replace temp table _id_account_spaces as  -- sources whose account ids overlap
        select distinct a.source as source_a, b.source as source_b from _id_records a
        join _id_records b on b.customer_id = a.customer_id and b.source <> a.source""")
    con.execute("""create or replace temp table _id_weak as
        select node_l as a, node_r as b from _id_pairs where accepted and not corroborated""")
    con.execute("""create or replace temp table _id_scored_weights as
        select least(node_l, node_r) as a, greatest(node_l, node_r) as b, match_weight as weight from _id_pairs""")
    names = sorted({c for rule in rules for c in rule})
    con.execute(f"""create or replace temp table _id_link_records as
        select n.node, r.source{''.join(f', r."{c}"' for c in names)} from _id_records r
        join _id_nodes n on n.id_type = 'record' and n.source = r.source and n.record_id = r.record_id""")
    compared = " or ".join("(" + " and ".join(f'a."{c}" = b."{c}"' for c in rule)
                           + (" and a.source <> b.source" if settings.link_type == "link_only" else "") + ")"
                           for rule in rules) or "false"
    merge_weak_edges(con, "_id_comp", "_id_weak", "_id_scored_weights", "_id_link_records", compared,
                     _weight(min(settings.review_threshold, settings.match_threshold)), _weight(settings.match_threshold))
    con.execute("""create or replace temp table _id_weak_left as
        select least(ca.component, cb.component) as x, greatest(ca.component, cb.component) as y, w.a, w.b
        from _id_weak w join _id_comp ca on ca.node = w.a join _id_comp cb on cb.node = w.b
        where ca.component <> cb.component""")
    component_conflicts(con, "_id_comp", "(select distinct x, y from _id_weak_left)", "_id_weak_conflict")
    con.execute("""update _id_pairs set accepted = false,
          reason = case when k.x is not null then 'names only; the persons conflict (birth date or account)'
                        else 'names only; fits several persons' end
        from _id_weak_left w left join _id_weak_conflict k using (x, y)
        where _id_pairs.node_l = w.a and _id_pairs.node_r = w.b""")
    con.execute("""insert into _id_all_edges
        select node_l, node_r, 'probabilistic', match_probability from _id_pairs where accepted and not corroborated""")


def _write_tables(con: duckdb.DuckDBPyConnection, ws: Workspace) -> None:
    con.execute("""create or replace table person_map as
        select m.source, m.id_type, m.record_id, a.person_id, m.method, m.match_probability
        from _id_members m left join _id_assigned a using (cluster)
        order by m.id_type, m.source, m.record_id""")
    # edges through a value hub are shown as a star on the hub's first identifier (no raw value needed)
    con.execute("""create or replace table identity_edges as
        with hub as (
          select e.b as hub, min(e.a) as anchor from _id_all_edges e join _id_nodes h on h.node = e.b
          where h.id_type like 'hub\\_%' escape '\\' group by e.b),
        det as (
          select coalesce(ha.anchor, e.a) as a, coalesce(hb.anchor, e.b) as b, e.method
          from _id_all_edges e left join hub ha on ha.hub = e.a left join hub hb on hb.hub = e.b
          where e.method <> 'probabilistic'),
        rows as (
          select a, b, method, 1.0::double as match_probability, null::double as match_weight,
            null::map(varchar, double) as field_weights, true as accepted, null::varchar as reason
          from det where a <> b
          union all select node_l, node_r, 'probabilistic', match_probability, match_weight, field_weights,
            accepted, reason from _id_pairs)
        select l.source as source_l, l.id_type as id_type_l, l.record_id as record_id_l,
          r.source as source_r, r.id_type as id_type_r, r.record_id as record_id_r,
          x.method, x.match_probability, x.match_weight, x.field_weights, x.accepted, x.reason,
          pm.person_id
        from rows x join _id_nodes l on l.node = x.a join _id_nodes r on r.node = x.b
        left join person_map pm on pm.source = l.source and pm.id_type = l.id_type and pm.record_id = l.record_id""")
    tables.create_views(con, ws.config.conversion.purchase_event_types)
    tables.write_profiles(con, ws)


def _log(ws: Workspace, result: ResolveResult, outcome: matching.MatchOutcome) -> None:
    """Aggregates only (counts, timings, settings; never identifiers), inside a weekly refresh's parent run.

    A stand-alone ``cdp-ml resolve`` prints its result instead: creating the MLflow store costs more
    than a small workspace's whole resolution.
    """
    if not os.environ.get(PARENT_RUN_ENV):
        return
    from cdp_ml import tracking

    s = ws.config.identity
    with tracking.run(ws, "identity", "resolve"):
        import mlflow

        mlflow.log_params({"match_threshold": s.match_threshold, "max_records_per_identifier": s.max_records_per_identifier,
                           "link_type": s.link_type, "reuse_model": s.reuse_model, "as_of": str(result.as_of),
                           "comparisons_used": ",".join(outcome.comparison_names)[:500],
                           "blocking_rules": ";".join(outcome.rules)[:500], "model_trained": outcome.trained})
        mlflow.log_metrics({k: float(v) for k, v in result.as_dict().items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
