"""Weekly resolution does only the work new data asks for, and its result is that of a full resolution."""

from __future__ import annotations

import csv
import json
import shutil
from datetime import timedelta
from pathlib import Path

from cdp_ml import Workspace
from cdp_ml.identity import resolve
from cdp_ml.identity.state import PAIRS_TABLE, STATE_TABLE
from cdp_ml.sources import ingest

TABLES = ("person_map", "identity_edges", "profiles", "person_ids", "person_redirects", PAIRS_TABLE, STATE_TABLE)


def _digests(ws: Workspace) -> dict[str, tuple]:
    """Row count and order-independent content hash of every table resolution writes."""
    with ws.connect() as con:
        return {t: tuple(con.execute(f"select count(*), sum(hash(t))::varchar from {t} t").fetchall()[0])
                for t in TABLES}


def _canonical(ws: Workspace, known_ids: set[str]) -> tuple[dict, set]:
    """person_map and redirects with ids that are new this run (random) named by their smallest identifier."""
    with ws.connect() as con:
        rows = con.execute("select source, id_type, record_id, person_id, method from person_map").fetchall()
        redirects = con.execute("select old_person_id, new_person_id, kind from person_redirects").fetchall()
    first: dict[str, tuple] = {}
    for s, t, r, p, _ in rows:
        if p is not None and p not in known_ids:
            first[p] = min(first.get(p, (s, t, r)), (s, t, r))

    def name(p: str | None) -> object:
        return first.get(p, p) if p is not None else None

    return ({(s, t, r): (name(p), m) for s, t, r, p, m in rows},
            {(name(a), name(b), k) for a, b, k in redirects})


def _known_ids(ws: Workspace) -> set[str]:
    with ws.connect() as con:
        return {r[0] for r in con.execute("select person_id from person_ids").fetchall()}


def _full_copy(ws: Workspace, root: Path) -> Workspace:
    """The same workspace without the incremental state: its next resolution does all the work."""
    shutil.copytree(ws.root, root)
    copy = Workspace.open(root)
    with copy.connect() as con:
        con.execute(f"drop table {PAIRS_TABLE}")
        con.execute(f"drop table {STATE_TABLE}")
    return copy


def test_nothing_changed_is_a_no_op_that_equals_a_full_run(demo_ws, tmp_path):
    trained = resolve(demo_ws)
    before = _digests(demo_ws)
    again = resolve(demo_ws, retrain=False)
    assert any(n.startswith("nothing changed") for n in again.notes), again.notes
    assert _digests(demo_ws) == before, "a week without changes leaves every identity table as it was"
    assert (again.persons, again.records, again.probabilistic_edges) == \
        (trained.persons, trained.records, trained.probabilistic_edges)
    assert again.ids_kept == trained.persons and again.ids_new == 0
    full = resolve(_full_copy(demo_ws, tmp_path / "full"), retrain=False)
    assert not any(n.startswith("nothing changed") for n in full.notes)
    after = _digests(Workspace.open(tmp_path / "full"))
    assert {t: after[t] for t in TABLES[:-1]} == {t: before[t] for t in TABLES[:-1]}, \
        "the saved model predicts exactly the pairs of the training run"
    assert resolve(demo_ws, retrain=True).notes != again.notes, "retraining never skips the work"


def test_new_identifiers_reuse_the_pairs_and_equal_a_full_run(demo_ws, tmp_path):
    """A week of new events and consents: a new cookie logs in, a consent ties two persons together."""
    resolve(demo_ws)
    with demo_ws.connect() as con:
        a_id, b_id, b_email = con.execute("""
            with persons as (
              select m.record_id, m.person_id, c.email, count(*) over (partition by m.person_id) as n
              from person_map m join customers c on c.source = m.source and c.record_id = m.record_id
              where m.source = 'crm' and m.id_type = 'record')
            select a.record_id, b.record_id, b.email from persons a join persons b on a.person_id < b.person_id
            where a.n = 1 and b.n = 1 and b.email is not null
              and b.email not in (select email from consents where email is not null)
            order by a.record_id, b.record_id limit 1""").fetchall()[0]
        pa, pb = (con.execute("select person_id from person_map where source = 'crm' and id_type = 'record' "
                              "and record_id = ?", [r]).fetchall()[0][0] for r in (a_id, b_id))
        oldest = con.execute("select arg_min(person_id, seq) from person_ids where person_id in (?, ?)",
                             [pa, pb]).fetchall()[0][0]
        last = con.execute("select max(timestamp) from events").fetchall()[0][0] - timedelta(days=1)
    when = last.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    events = [{"event_id": f"9{i}", "ts": when, "type": t, "anonymous_id": "idinc-new-cookie", "user_id": u,
               "session_id": "9", "product_id": None, "category": None, "value": None, "channel": "web", "page_url": "/",
               "referrer": None} for i, (t, u) in enumerate([("page_view", None), ("login", a_id)])]
    (demo_ws.root / "raw/events/idinc-week.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    with (demo_ws.root / "raw/consents.csv").open("a", newline="", encoding="utf-8") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n").writerow(
            [last.strftime("%Y-%m-%d %H:%M:%S"), "email_marketing", "true", a_id, b_email, "webshop"])
    ingest(demo_ws)
    known = _known_ids(demo_ws)
    full_ws = _full_copy(demo_ws, tmp_path / "full")

    week = resolve(demo_ws, retrain=False)
    assert any("scored pairs reused" in n for n in week.notes), week.notes
    assert any("identifiers on events" in n for n in week.notes)
    full = resolve(full_ws, retrain=False)
    assert not any("reused" in n for n in full.notes)
    assert _canonical(demo_ws, known) == _canonical(full_ws, known), "the same persons and ids as a full run"
    assert (week.persons, week.probabilistic_edges, week.review_pairs, week.merges) == \
        (full.persons, full.probabilistic_edges, full.review_pairs, full.merges)

    people, redirects = _canonical(demo_ws, known)
    survivor = people[("crm", "record", a_id)][0]
    assert survivor == people[("crm", "record", b_id)][0] == oldest, "the merge keeps the oldest id"
    assert (pb if oldest == pa else pa, oldest, "merge") in redirects
    assert people[("web", "anonymous_id", "idinc-new-cookie")] == (oldest, "login")


def test_changed_or_new_customer_records_take_the_full_path(demo_ws):
    resolve(demo_ws)
    crm = demo_ws.root / "raw/crm_klanten.csv"
    lines = crm.read_text(encoding="utf-8").splitlines()
    fields = lines[1].split(";")
    fields[4] = '"+31611122233"'  # telefoon of the first account
    crm.write_text("\n".join([lines[0], ";".join(fields), *lines[2:]]) + "\n", encoding="utf-8")
    ingest(demo_ws)
    week = resolve(demo_ws, retrain=False)
    assert any(n.startswith("changed since the last resolution: customer records") for n in week.notes), week.notes
    assert not any("reused" in n or n.startswith("nothing changed") for n in week.notes)
    assert week.comparisons > 0, "changed records are scored again"


def test_an_erased_person_is_resolved_again_in_full(demo_ws):
    """Erasure deletes the person's staging rows and scored pairs: the next week cannot be a no-op."""
    from cdp_ml.privacy import forget

    resolve(demo_ws)
    with demo_ws.connect() as con:
        pid, n = con.execute("""select person_id, count(*) from person_map where id_type = 'record'
                                group by person_id order by count(*) desc, person_id limit 1""").fetchall()[0]
        pairs = con.execute(f"select count(*) from {PAIRS_TABLE}").fetchall()[0][0]
    assert n >= 2 and forget(demo_ws, person_id=pid).exit_code == 0
    with demo_ws.connect() as con:
        assert con.execute(f"select count(*) from {PAIRS_TABLE}").fetchall()[0][0] < pairs
    week = resolve(demo_ws, retrain=False)
    assert any(n.startswith("changed since the last resolution: customer records") for n in week.notes), week.notes
    with demo_ws.connect() as con:
        assert con.execute("select count(*) from person_map where person_id = ?", [pid]).fetchall() == [(0,)]
