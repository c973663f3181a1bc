"""Identity resolution: the Sophia case, over-merging traps, stable ids, and a workspace with its own column names."""

from __future__ import annotations

import csv
import random
import re
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml

from cdp_ml import Workspace
from cdp_ml.identity import evaluate, resolve
from cdp_ml.sources import ingest


def _map(ws: Workspace) -> dict[tuple[str, str, str], str | None]:
    with ws.connect() as con:
        return {(s, t, r): p for s, t, r, p in con.execute(
            "select source, id_type, record_id, person_id from person_map").fetchall()}


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _workspace(root: Path, identity: dict | None = None) -> Workspace:
    """A small hand-made webshop: CRM accounts (a glob, so batches can be added), web events, service contacts."""
    config = {
        "default_country": "NL",
        "identity": identity or {},
        "sources": [
            {"name": "crm", "kind": "customers", "path": "raw/crm/*.csv",
             "columns": {c: c for c in ("record_id", "email", "phone", "first_name", "last_name", "date_of_birth",
                                        "street", "house_number", "postcode", "city", "created_at")}},
            {"name": "web", "kind": "events", "path": "raw/events.csv", "customer_source": "crm",
             "columns": {"timestamp": "ts", "event_type": "type", "anonymous_id": "cookie", "customer_ref": "user"}},
            {"name": "service", "kind": "interactions", "path": "raw/service.csv",
             "columns": {"timestamp": "ts", "email": "email", "phone": "phone", "channel": "channel"}},
        ],
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "cdp_ml.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return Workspace.open(root)


def _customer(rid: str, first: str, last: str, email: str = "", phone: str = "", dob: str = "",
              street: str = "", house: str = "", postcode: str = "", city: str = "") -> dict:
    return {"record_id": rid, "email": email, "phone": phone, "first_name": first, "last_name": last,
            "date_of_birth": dob, "street": street, "house_number": house, "postcode": postcode, "city": city,
            "created_at": "2025-01-01 10:00:00"}


@pytest.fixture
def traps(tmp_path) -> Workspace:
    """Placeholder values, a shared family email and a shared family laptop: none of them may merge people."""
    ws = _workspace(tmp_path / "ws", {"probabilistic": False})
    _write_csv(ws.root / "raw/crm/batch1.csv", [
        _customer("c1", "Anna", "Jansen", "test@test.com", "0612345678", street="Kerkstraat", house="1",
                  postcode="1011AA", city="Amsterdam"),
        _customer("c2", "Bram", "Visser", "test@test.com", "0612345678"),
        _customer("c3", "Kees", "Bakker", "fam.bakker@ziggo.nl", dob="1960-02-03"),
        _customer("c4", "Lotte", "Bakker", "fam.bakker@ziggo.nl", dob="1992-07-14"),
        _customer("c5", "Piet", "de Boer", "piet@boer.nl", "+31687654321"),
        _customer("c6", "Piet", "de Boer", "piet@boer.nl", dob="1970-01-01"),
        _customer("c11", "Anna", "Jansen", phone="+31698765432"),
    ])
    _write_csv(ws.root / "raw/events.csv", [
        {"ts": "2025-03-01 10:00:00", "type": "login", "cookie": "laptop", "user": "c3"},
        {"ts": "2025-03-02 10:00:00", "type": "login", "cookie": "laptop", "user": "c4"},
        {"ts": "2025-03-03 09:00:00", "type": "page_view", "cookie": "phone-c5", "user": ""},
        {"ts": "2025-03-03 10:00:00", "type": "login", "cookie": "phone-c5", "user": "c5"},
    ])
    _write_csv(ws.root / "raw/service.csv", [
        {"ts": "2025-03-05 10:00:00", "email": "test@test.com", "phone": "", "channel": "email"},
        {"ts": "2025-03-06 10:00:00", "email": "", "phone": "0687654321", "channel": "whatsapp"},
    ])
    ingest(ws)
    return ws


def test_placeholders_households_and_shared_devices_do_not_merge(traps):
    result = resolve(traps)
    m = _map(traps)
    rec = {r: m[("crm", "record", r)] for r in ("c1", "c2", "c3", "c4", "c5", "c6")}
    assert rec["c1"] != rec["c2"], "a placeholder email/phone must not link two people"
    assert rec["c3"] != rec["c4"], "a family email used by two different people must not merge them"
    assert rec["c5"] == rec["c6"], "the same email with compatible names is one person"
    assert m[("web", "anonymous_id", "laptop")] is None, "a device logged in by two persons stays unresolved"
    assert m[("web", "anonymous_id", "phone-c5")] == rec["c5"], "browsing before login belongs to the account"
    assert m[("service", "phone", "+31687654321")] == rec["c5"], "a WhatsApp number in local format finds its person"
    assert m[("service", "email", "test@test.com")] is None
    assert result.persons == 6 and result.records == 7
    with traps.connect() as con:
        views = {v: con.execute(f"select count(*) from {v}").fetchall()[0][0]
                 for v in ("person_events", "person_orders", "person_interactions", "person_consents", "person_sessions")}
        laptop = con.execute("select count(*) from person_events where anonymous_id = 'laptop' and person_id is null "
                             "and customer_ref is null").fetchall()[0][0]
        profile = con.execute("select n_records, n_events, list_sort(sources), len(emails) from profiles "
                              "where person_id = ?", [rec["c5"]]).fetchall()[0]
    assert views["person_events"] == 4 and views["person_interactions"] == 2 and views["person_orders"] == 0
    assert laptop == 0  # both laptop events are logged in: they map through the account, not the device
    assert profile == (2, 2, ["crm", "service", "web"], 1)


def test_ids_stay_stable_and_a_merge_leaves_a_redirect(traps):
    resolve(traps)
    before = _map(traps)
    again = resolve(traps)
    assert _map(traps) == before and again.ids_new == 0 and again.merges == 0, "a re-run changes no id"
    ids = {before[("crm", "record", r)] for r in ("c1", "c2")}
    assert all(re.fullmatch(r"P[0-9a-f]{12}", i) for i in ids)
    # a second batch: an account with Anna's (real) phone and Bram's (real) email ties them together
    _write_csv(traps.root / "raw/crm/batch2.csv", [
        _customer("c7", "Anna", "Jansen", "anna@jansen.nl", "+31623456781"),
        _customer("c8", "Anna", "Jansen", "anna@jansen.nl"),
        _customer("c9", "Anna", "Jansen", "", "+31623456781"),
    ])
    ingest(traps)
    first = resolve(traps)
    after = _map(traps)
    assert all(after[k] == v for k, v in before.items() if k[1] == "record"), "old records keep their persons"
    assert after[("crm", "record", "c7")] == after[("crm", "record", "c8")] == after[("crm", "record", "c9")]
    assert first.ids_new == 1
    # c10 has the new person's email and c11's phone: the two Anna persons merge, the older id survives
    _write_csv(traps.root / "raw/crm/batch3.csv", [
        _customer("c10", "Anna", "Jansen", "anna@jansen.nl", "+31698765432"),
    ])
    ingest(traps)
    merged = resolve(traps)
    final = _map(traps)
    older, newer = after[("crm", "record", "c11")], after[("crm", "record", "c7")]
    assert older != newer and merged.merges == 1
    assert final[("crm", "record", "c11")] == final[("crm", "record", "c7")] == final[("crm", "record", "c10")] == older
    assert final[("crm", "record", "c5")] == before[("crm", "record", "c5")]
    with traps.connect() as con:
        redirects = con.execute("select old_person_id, new_person_id, kind from person_redirects").fetchall()
        status = con.execute("select status from person_ids where person_id = ?", [newer]).fetchall()
    assert redirects == [(newer, older, "merge")] and status == [("merged",)]


def test_sophia_is_one_person(tmp_path):
    """Webshop account + newsletter with another email + WhatsApp phone in a local format + cookie before login."""
    ws = _workspace(tmp_path / "ws", {"probabilistic": False})
    config = yaml.safe_load((ws.root / "cdp_ml.yaml").read_text())
    config["sources"].append({"name": "newsletter", "kind": "customers", "path": "raw/newsletter.csv",
                              "columns": {"record_id": "subscriber", "email": "email", "first_name": "name"}})
    (ws.root / "cdp_ml.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    ws = Workspace.open(ws.root)
    _write_csv(ws.root / "raw/crm/batch1.csv", [
        _customer("10001", "Sophia", "de Vries", "sophia.devries@gmail.com", "+31612345670", dob="1989-11-07"),
        _customer("10002", "Sophie", "Jansen", "sophie.j@live.nl", "+31687650000"),
    ])
    _write_csv(ws.root / "raw/newsletter.csv", [{"subscriber": "n1", "email": " Sofietje.DV@ziggo.nl ", "name": "Sofietje"}])
    _write_csv(ws.root / "raw/service.csv", [  # WhatsApp: the local-format number, signed with the newsletter address
        {"ts": "2025-04-01 10:00:00", "email": "sofietje.dv@ziggo.nl", "phone": "06-12345670", "channel": "whatsapp"},
    ])
    _write_csv(ws.root / "raw/events.csv", [
        {"ts": "2025-03-01 09:00:00", "type": "product_view", "cookie": "cookie-s", "user": ""},
        {"ts": "2025-03-01 09:05:00", "type": "login", "cookie": "cookie-s", "user": "10001"},
        {"ts": "2025-03-02 09:00:00", "type": "page_view", "cookie": "cookie-j", "user": ""},
    ])
    ingest(ws)
    result = resolve(ws)
    m = _map(ws)
    sophia = {m[("crm", "record", "10001")], m[("newsletter", "record", "n1")], m[("web", "customer_ref", "10001")],
              m[("web", "anonymous_id", "cookie-s")], m[("service", "phone", "+31612345670")],
              m[("service", "email", "sofietje.dv@ziggo.nl")]}
    assert len(sophia) == 1 and None not in sophia
    assert m[("crm", "record", "10002")] not in sophia
    assert m[("web", "anonymous_id", "cookie-j")] is None, "a cookie that never logged in stays anonymous"
    assert result.persons == 2
    with ws.connect() as con:
        events = con.execute("select count(*) from person_events where person_id = ?", list(sophia)).fetchall()[0][0]
        profile = con.execute("select first_name, len(emails), len(phones), n_records from profiles "
                              "where person_id = ?", list(sophia)).fetchall()[0]
    assert events == 2  # the product view before the login is hers too
    assert profile == ("Sophia", 2, 1, 2)  # the webshop account outranks the newsletter (workspace order)


def test_demo_data_resolves_without_over_merging(demo_ws):
    result = resolve(demo_ws)
    assert result.persons > 0 and result.comparisons > 0 and result.probabilistic_edges > 0
    scores = evaluate(demo_ws, demo=True)
    assert scores.records.precision >= 0.95, str(scores)
    assert scores.records.over_merged <= max(2, scores.records.persons // 200), str(scores)
    assert scores.records.bcubed_f1 >= 0.8, str(scores)


def test_score_only_run_predicts_with_the_saved_model(demo_ws):
    """A score-only week reuses the saved Splink model: same persons, no retraining; a stale model retrains."""
    import json

    from cdp_ml.errors import CdpError
    from cdp_ml.identity.matching import MODEL_FILE

    trained = resolve(demo_ws)
    model_path = demo_ws.warehouse_path.parent / MODEL_FILE
    saved = model_path.read_text(encoding="utf-8")
    before = _map(demo_ws)
    unchanged = resolve(demo_ws, retrain=False)
    assert any(n.startswith("nothing changed") for n in unchanged.notes), unchanged.notes
    with demo_ws.connect() as con:  # as if resolved by a version without incremental state: all work is done
        con.execute("drop table _identity_state")
    reused = resolve(demo_ws, retrain=False)
    assert any("saved model" in n and "not retrained" in n for n in reused.notes), reused.notes
    assert not any("not retrained" in n for n in trained.notes)
    assert model_path.read_text(encoding="utf-8") == saved  # predicting does not rewrite the model
    assert _map(demo_ws) == before
    assert (reused.persons, reused.probabilistic_edges) == (trained.persons, trained.probabilistic_edges)

    # a model comparing other fields than the data now has: retrained with a note, or an error when pinned
    model = json.loads(saved)
    model["comparisons"] = model["comparisons"][1:]
    model_path.write_text(json.dumps(model), encoding="utf-8")
    stale = resolve(demo_ws, retrain=False)
    assert any("retrained" in n for n in stale.notes), stale.notes
    assert json.loads(model_path.read_text(encoding="utf-8"))["comparisons"] != model["comparisons"]
    model_path.write_text(json.dumps(model), encoding="utf-8")
    pinned = yaml.safe_load((demo_ws.root / "cdp_ml.yaml").read_text(encoding="utf-8"))
    pinned.setdefault("identity", {})["reuse_model"] = True
    (demo_ws.root / "cdp_ml.yaml").write_text(yaml.safe_dump(pinned), encoding="utf-8")
    with pytest.raises(CdpError, match="reuse_model"):
        resolve(Workspace.open(demo_ws.root))


def _febrl_like(root: Path, entities: int = 150, seed: int = 3) -> Path:
    """Records in the FEBRL layout (own column names), with typos, missing values and date formats."""
    rnd = random.Random(seed)
    given = ["james", "olivia", "william", "charlotte", "jack", "mia", "noah", "amelia", "thomas", "isla",
             "lachlan", "chloe", "ethan", "grace", "liam", "ruby", "oscar", "zoe", "henry", "emily"]
    surnames = ["smith", "jones", "williams", "brown", "wilson", "taylor", "johnson", "white", "martin", "anderson",
                "thompson", "nguyen", "thomas", "walker", "harris", "lee", "ryan", "robinson", "kelly", "king"]
    streets = ["kirkpatrick street", "mcmillan crescent", "burrows place", "dunbar circuit", "wattle avenue"]
    suburbs = ["canberra", "belconnen", "woden", "tuggeranong", "gungahlin", "queanbeyan"]

    def typo(s: str) -> str:
        if len(s) < 3:
            return s
        i = rnd.randrange(1, len(s) - 1)
        return s[:i] + rnd.choice("aeiourstn") + s[i + 1:]

    rows, truth = [], []
    for e in range(entities):
        base = {"given_name": rnd.choice(given), "surname": rnd.choice(surnames),
                "street_number": str(rnd.randrange(1, 200)), "address_1": rnd.choice(streets),
                "suburb": rnd.choice(suburbs), "postcode": str(rnd.randrange(2600, 2620)), "state": "act",
                "date_of_birth": (date(1940, 1, 1) + timedelta(days=rnd.randrange(25000))).strftime("%Y%m%d"),
                "soc_sec_id": str(rnd.randrange(1_000_000, 9_999_999))}
        for k in range(1 if rnd.random() < 0.5 else rnd.randrange(2, 4)):
            rec = dict(base)
            if k:
                field = rnd.choice(["given_name", "surname", "address_1", "suburb", "soc_sec_id", "date_of_birth"])
                rec[field] = "" if rnd.random() < 0.3 else (typo(rec[field]) if field != "date_of_birth" else rec[field])
                if rnd.random() < 0.3:
                    rec["postcode"] = ""
            rid = f"rec-{e}-{'org' if k == 0 else f'dup-{k}'}"
            rows.append({"rec_id": rid, **rec})
            truth.append({"source": "febrl", "record_id": rid, "entity": f"e{e}"})
    rnd.shuffle(rows)
    _write_csv(root / "raw/febrl.csv", rows)
    _write_csv(root / "truth.csv", truth)
    return root / "truth.csv"


# the FEBRL-like workspace file: own column names mapped, national id and state as extra match fields
FEBRL_CONFIG = {
    "identity": {"extra_match_fields": [{"column": "soc_sec_id", "comparison": "levenshtein"},
                                        {"column": "state", "comparison": "exact", "block": False}]},
    "sources": [{"name": "febrl", "kind": "customers", "path": "raw/febrl.csv", "columns": {
        "record_id": "rec_id", "first_name": "given_name", "last_name": "surname", "house_number": "street_number",
        "street": "address_1", "city": "suburb", "postcode": "postcode", "date_of_birth": "date_of_birth"}}],
}


def test_own_column_names_work_through_the_mapping_alone(tmp_path):
    root = tmp_path / "febrl"
    truth = _febrl_like(root)
    (root / "cdp_ml.yaml").write_text(yaml.safe_dump(FEBRL_CONFIG), encoding="utf-8")
    ws = Workspace.open(root)
    ingest(ws)
    result = resolve(ws)
    assert result.records == sum(1 for _ in truth.open()) - 1
    assert result.comparisons < result.records * (result.records - 1) / 2 / 5, "blocking is far from cartesian"
    scores = evaluate(ws, truth=truth)
    assert scores.records.f1 >= 0.9, str(scores)
    assert scores.records.precision >= 0.95, str(scores)
    with ws.connect() as con:
        weights = con.execute("select map_keys(field_weights) from identity_edges "
                              "where method = 'probabilistic' limit 1").fetchall()[0][0]
    assert "x_soc_sec_id" in weights and "email" not in weights, "absent fields are left out, extra fields used"
