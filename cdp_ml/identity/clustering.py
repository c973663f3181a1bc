"""Connected components in SQL, constrained merging of weak (name-only) pairs, and stable, random person ids.

Components come from iterative min-label propagation with pointer jumping (a handful of passes even at
millions of nodes, because hubs keep the graph shallow). Name-only pairs are not trusted with transitive
closure: ``merge_weak_edges`` joins components pairwise, by average linkage, never across a conflict
(birth date, account id) and never when a record fits two persons. Person ids are random (``P`` + 12 hex digits),
never derived from personal data, and survive re-runs: a new cluster keeps the id of the previous
person whose identifiers it mostly holds; on a merge the oldest id survives and the others get a
``merge`` redirect; on a split the largest part keeps the id and the other parts get new ids with a
``split`` redirect.
"""

from __future__ import annotations

import secrets
from datetime import datetime

import duckdb
import pyarrow as pa

from cdp_ml.engine import table_exists
from cdp_ml.identity.inputs import dob_conflict_sql

MAX_PASSES = 200
MAX_WEAK_ROUNDS = 12  # rounds of pairwise weak merges; what is still apart afterwards stays apart
AMBIGUITY_BITS = 2.0  # a runner-up within this match weight (x4 odds) of the best makes a pick ambiguous


def connected_components(con: duckdb.DuckDBPyConnection, nodes: str, edges: str, out: str) -> int:
    """Write ``out(node, component)`` (component = smallest node in it); returns the number of passes.

    Leaves (a node with one neighbour: most hubs hold one record's e-mail, most references name one record)
    connect nothing, so labels propagate over the other nodes only - about a third of the graph - and the
    leaves join their neighbour's component afterwards, which still takes the smallest node of all.
    """
    con.execute(f"""create or replace temp table _cc_edges as
        select a, b from {edges} where a <> b union select b, a from {edges} where a <> b""")
    con.execute("""create or replace temp table _cc_leaf as  -- leaf -> its only neighbour
        select a as node, min(b) as nb from _cc_edges group by a having count(*) = 1""")
    con.execute("""create or replace temp table _cc_core_edges as
        select e.a, e.b from _cc_edges e anti join _cc_leaf l on l.node = e.a anti join _cc_leaf r on r.node = e.b""")
    con.execute("""create or replace temp table _cc_label as  -- every other node, also one holding leaves only
        select n.a as node, least(n.a, coalesce(min(e.b), n.a)) as label
        from (select distinct a from _cc_edges anti join _cc_leaf l on l.node = a) n
        left join _cc_core_edges e on e.a = n.a group by n.a""")
    passes = 1
    while passes < MAX_PASSES:
        passes += 1
        # pull the smallest label of any neighbour, then jump: label := label of label
        con.execute("""create or replace temp table _cc_next as
            with pulled as (
              select l.node, least(l.label, coalesce(min(nl.label), l.label)) as label
              from _cc_label l left join _cc_core_edges e on e.a = l.node left join _cc_label nl on nl.node = e.b
              group by l.node, l.label),
            jumped as (
              select p.node, least(p.label, coalesce(q.label, p.label)) as label
              from pulled p left join pulled q on q.node = p.label)
            select * from jumped""")
        changed = con.execute("""select count(*) from _cc_next n join _cc_label l using (node)
                                 where n.label <> l.label""").fetchall()[0][0]
        con.execute("drop table _cc_label")
        con.execute("alter table _cc_next rename to _cc_label")
        if changed == 0:
            break
    # a leaf on a core node takes its component (whose smallest node may be a leaf); two leaves on each other
    # are a component of two
    con.execute("""create or replace temp table _cc_leaf_label as
        select f.node, coalesce(c.label, least(f.node, f.nb)) as label
        from _cc_leaf f left join _cc_label c on c.node = f.nb""")
    con.execute("""create or replace temp table _cc_smallest as
        select label, least(label, min(node)) as component from _cc_leaf_label group by label""")
    con.execute(f"""create or replace temp table {out} as
        with labelled as (select node, label from _cc_label union all select node, label from _cc_leaf_label)
        select n.node, coalesce(s.component, l.label, n.node) as component
        from {nodes} n left join labelled l on l.node = n.node left join _cc_smallest s on s.label = l.label""")
    for t in ("_cc_label", "_cc_edges", "_cc_leaf", "_cc_core_edges", "_cc_leaf_label", "_cc_smallest"):
        con.execute(f"drop table {t}")
    return passes


def component_conflicts(con: duckdb.DuckDBPyConnection, comp: str, pairs: str, out: str) -> None:
    """``out(x, y)``: the component pairs of ``pairs(x, y)`` known to be different people.

    Two components conflict when one holds a record whose birth date conflicts with a record of the
    other, or when they hold different account ids (``customer_id``) of one account namespace: one
    source, or sources that share at least one account id (a newsletter export carrying the webshop's
    customer number). ``_id_facts(node, dob, source, account)`` holds the records' facts.
    """
    con.execute(f"""create or replace temp table {out} as
        with facts as (select c.component, f.* from {comp} c join _id_facts f using (node))
        select distinct p.x, p.y from {pairs} p
        join facts a on a.component = p.x join facts b on b.component = p.y
        where {dob_conflict_sql('a.dob', 'b.dob')}
           or (a.account <> b.account and (a.source = b.source or exists (
                 select 1 from _id_account_spaces s where s.source_a = a.source and s.source_b = b.source)))""")


def merge_weak_edges(con: duckdb.DuckDBPyConnection, comp: str, weak: str, scored: str, records: str,
                     compared: str, floor_weight: float, min_weight: float) -> int:
    """Attach components through weak edges (names only) by greedy, constrained merging; updates ``comp``.

    ``weak(a, b)`` are accepted record pairs whose only individual evidence is the name. Plain connected
    components let one such record bridge two namesakes. Here two components are linked by the *average*
    match weight of every record pair between them that was compared (``scored(a, b, weight)`` with
    ``a < b``; a pair of ``records`` meeting the ``compared`` predicate - a blocking rule - but not
    scored fell below the review threshold and counts as ``floor_weight``), and the link must reach
    ``min_weight``: the webshop record that disagrees outweighs the loyalty card that agrees. Each
    round, every component picks its best linked candidate that it does not conflict with
    (``component_conflicts``); two components merge only when they pick each other, and not when either
    has a runner-up nearly as good (within ``AMBIGUITY_BITS``) that is not linked to the best: a record
    fitting two separate persons joins neither. Returns the number of merges.
    """
    merges = 0
    for _ in range(MAX_WEAK_ROUNDS):
        con.execute(f"""create or replace temp table _wm_cand as
            with c as (
              select distinct least(ca.component, cb.component) as x, greatest(ca.component, cb.component) as y
              from {weak} w join {comp} ca on ca.node = w.a join {comp} cb on cb.node = w.b
              where ca.component <> cb.component),
            recs as (select k.component, r.* from {comp} k join {records} r using (node)),
            pairs as (
              select c.x, c.y, least(a.node, b.node) as na, greatest(a.node, b.node) as nb, ({compared}) as compared
              from c join recs a on a.component = c.x join recs b on b.component = c.y)
            select p.x, p.y, avg(coalesce(s.weight, case when p.compared then ? end)) as weight
            from pairs p left join {scored} s on s.a = p.na and s.b = p.nb
            group by p.x, p.y having avg(coalesce(s.weight, case when p.compared then ? end)) >= ?""",
                    [floor_weight, floor_weight, min_weight])
        if con.execute("select count(*) from _wm_cand").fetchall()[0][0] == 0:
            break
        component_conflicts(con, comp, "_wm_cand", "_wm_conflict")
        con.execute("""create or replace temp table _wm_ranked as
            with ok as (select c.* from _wm_cand c anti join _wm_conflict k using (x, y)),
            directed as (select x as u, y as v, weight from ok union all select y, x, weight from ok)
            select u, v, weight, row_number() over (partition by u order by weight desc, v) as rank
            from directed""")
        # a runner-up nearly as good as the best and not linked to it: the picker fits two separate persons
        # and joins neither (a runner-up linked to the best may be the same person: they can merge later)
        con.execute("""create or replace temp table _wm_merge as
            with ambiguous as (
              select distinct b.u from _wm_ranked b
              join _wm_ranked r on r.u = b.u and r.rank > 1 and r.weight > b.weight - ?
              where b.rank = 1 and not exists (select 1 from _wm_ranked l where l.u = b.v and l.v = r.v)),
            best as (select u, v from _wm_ranked where rank = 1 and u not in (select u from ambiguous))
            select a.u as x, a.v as y from best a join best b on b.u = a.v and b.v = a.u where a.u < a.v""",
                    [AMBIGUITY_BITS])
        n = con.execute("select count(*) from _wm_merge").fetchall()[0][0]
        if n == 0:
            break
        merges += n
        con.execute(f"""update {comp} set component = m.x from _wm_merge m where {comp}.component = m.y""")
    for t in ("_wm_cand", "_wm_conflict", "_wm_ranked", "_wm_merge"):
        con.execute(f"drop table if exists {t}")
    return merges


def new_ids(con: duckdb.DuckDBPyConnection, n: int) -> list[str]:
    """``n`` fresh random person ids not used before in this warehouse."""
    out: set[str] = set()
    while len(out) < n:
        out.update("P" + secrets.token_hex(6) for _ in range(n - len(out)))
        if table_exists(con, "person_ids"):
            tab = pa.table({"person_id": sorted(out)})  # noqa: F841 - referenced by the query below
            clash = {r[0] for r in con.execute(
                "select t.person_id from tab t join person_ids p using (person_id)").fetchall()}
            out -= clash
    return sorted(out)


def assign_person_ids(con: duckdb.DuckDBPyConnection, clusters: str, now: datetime) -> dict[str, int]:
    """Give each cluster a stable person id; writes ``_id_assigned(cluster, person_id)``.

    ``clusters(source, id_type, record_id, cluster)`` holds the identifiers of every person this run.
    Previous ids come from ``person_map``; ``person_ids`` (person_id, created_at, seq, status) is the
    id registry and ``person_redirects`` gets merge/split rows. Returns counts of kept/new/merged/split.
    """
    if not table_exists(con, "person_ids"):
        con.execute("""create table person_ids(person_id varchar primary key, created_at timestamp,
                       seq bigint, status varchar)""")
    if not table_exists(con, "person_redirects"):
        con.execute("""create table person_redirects(old_person_id varchar, new_person_id varchar,
                       kind varchar, "at" timestamp)""")
    has_map = table_exists(con, "person_map")
    old = ("select source, id_type, record_id, person_id from person_map where person_id is not null"
           if has_map else
           "select null::varchar source, null::varchar id_type, null::varchar record_id, null::varchar person_id where false")
    con.execute(f"""create or replace temp table _id_overlap as
        select c.cluster, o.person_id, count(*) as k
        from {clusters} c join ({old}) o using (source, id_type, record_id) group by all""")
    # each previous person is claimed by the new cluster holding most of its identifiers
    con.execute("""create or replace temp table _id_claim as
        select person_id, arg_max(cluster, k * 1e12 - cluster) as cluster, max(k) as k
        from _id_overlap group by person_id""")
    # a cluster claimed by several previous persons keeps the oldest id; the others merge into it
    con.execute("""create or replace temp table _id_keep as
        select c.cluster, arg_min(c.person_id, coalesce(p.seq, 9223372036854775807)) as person_id
        from _id_claim c left join person_ids p using (person_id) group by c.cluster""")
    con.execute("""create or replace temp table _id_merged as
        select c.person_id as old_person_id, k.person_id as new_person_id
        from _id_claim c join _id_keep k using (cluster) where c.person_id <> k.person_id""")
    # clusters without a claim: new ids; a split when they hold identifiers of a previous person
    con.execute(f"""create or replace temp table _id_fresh as
        select d.cluster, (select arg_max(o.person_id, o.k) from _id_overlap o where o.cluster = d.cluster) as split_from
        from (select distinct cluster from {clusters}) d
        where d.cluster not in (select cluster from _id_keep)
        order by d.cluster""")
    n_fresh = con.execute("select count(*) from _id_fresh").fetchall()[0][0]
    fresh_ids = pa.table({"rn": pa.array(range(n_fresh), pa.int64()), "person_id": new_ids(con, n_fresh)})  # noqa: F841
    con.execute("""create or replace temp table _id_fresh_ids as
        select f.cluster, i.person_id, f.split_from
        from (select *, row_number() over (order by cluster) - 1 as rn from _id_fresh) f
        join fresh_ids i using (rn)""")
    con.execute("""create or replace temp table _id_assigned as
        select cluster, person_id from _id_keep union all select cluster, person_id from _id_fresh_ids""")
    seq0 = con.execute("select coalesce(max(seq), 0) from person_ids").fetchall()[0][0]
    con.execute("""insert into person_ids
        select person_id, ?, ? + row_number() over (order by cluster), 'active' from _id_fresh_ids""", [now, seq0])
    con.execute("""insert into person_redirects
        select old_person_id, new_person_id, 'merge', ? from _id_merged
        union all select split_from, person_id, 'split', ? from _id_fresh_ids where split_from is not null""",
                [now, now])
    con.execute("update person_ids set status = 'merged' where person_id in (select old_person_id from _id_merged)")
    if has_map:  # previous persons whose identifiers all disappeared (erased or out of the as-of window)
        con.execute("""update person_ids set status = 'inactive' where status = 'active'
                       and person_id not in (select person_id from _id_assigned)""")
        con.execute("""update person_ids set status = 'active'
                       where person_id in (select person_id from _id_assigned)""")
    counts = con.execute("""select
        (select count(*) from _id_keep), (select count(*) from _id_fresh_ids where split_from is null),
        (select count(*) from _id_merged), (select count(*) from _id_fresh_ids where split_from is not null)""").fetchall()[0]
    return dict(zip(("kept", "new", "merged", "split"), map(int, counts), strict=True))
