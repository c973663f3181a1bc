"""The demo generator: deterministic, self-consistent ground truth, a valid workspace, the Sophia case."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from cdp_ml.demo import generate
from cdp_ml.workspace import Workspace


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read(ws: Workspace, name: str) -> pd.DataFrame:
    """All rows of a source's files as text (malformed JSON lines skipped)."""
    src = ws.source(name)
    frames = []
    for path in ws.source_files(src):
        fmt = src.file_format()
        if fmt == "csv":
            frames.append(pd.read_csv(path, sep=src.options.get("delim", ","), dtype=str, keep_default_na=False,
                                      na_values=[""]))
        elif fmt == "parquet":
            frames.append(pd.read_parquet(path))
        else:
            rows = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
            frames.append(pd.DataFrame(rows))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate(root, persons=300, seed=1)
    return root


def test_same_seed_same_bytes_other_seed_differs(demo, tmp_path):
    again = tmp_path / "again"
    other = tmp_path / "other"
    generate(again, persons=300, seed=1)
    generate(other, persons=300, seed=2)
    assert _hashes(again) == _hashes(demo)
    differing = {k for k, v in _hashes(other).items() if _hashes(demo).get(k) != v}
    assert "raw/crm_klanten.csv" in differing and "ground_truth/identity.csv" in differing


def test_workspace_file_maps_existing_columns(demo):
    ws = Workspace.open(demo, check_files=True)
    assert ws.config.default_country == "NL" and ws.config.timezone == "Europe/Amsterdam"
    assert {s.kind for s in ws.config.sources} == {"customers", "events", "orders", "interactions", "consents"}
    for src in ws.config.sources:
        df = _read(ws, src.name)
        assert len(df) > 0, src.name
        missing = set(src.columns.values()) - set(df.columns)
        assert not missing, f"{src.name}: {missing}"
    crm = _read(ws, "crm")
    assert "klantsegment" in crm.columns and "klantsegment" not in ws.source("crm").columns.values()


def test_every_customer_record_maps_to_exactly_one_entity(demo):
    ws = Workspace.open(demo)
    identity = pd.read_csv(demo / "ground_truth" / "identity.csv", dtype=str)
    assert not identity.duplicated(["source", "record_id"]).any()
    for src in ws.sources_of("customers"):
        ids = _read(ws, src.name)[src.columns["record_id"]].astype(str)
        assert ids.is_unique, src.name
        assert set(ids) == set(identity.loc[identity["source"] == src.name, "record_id"]), src.name
    persons = pd.read_parquet(demo / "ground_truth" / "persons.parquet")
    assert persons["entity"].is_unique and len(persons) == 300
    assert set(identity["entity"]) <= set(persons["entity"])


def test_identifiers_and_references_are_consistent(demo):
    ws = Workspace.open(demo)
    identity = pd.read_csv(demo / "ground_truth" / "identity.csv", dtype=str)
    idents = pd.read_csv(demo / "ground_truth" / "identifiers.csv", dtype=str)
    assert not idents.duplicated(["source", "id_type", "identifier"]).any()
    # every order references a record of its customers source, owned by the same entity as the truth says
    for name in ("orders", "store_orders"):
        src = ws.source(name)
        refs = set(_read(ws, name)[src.columns["customer_ref"]].astype(str))
        records = identity[identity["source"] == src.customer_source].set_index("record_id")["entity"]
        assert refs <= set(records.index)
        truth = idents[(idents["source"] == name) & (idents["id_type"] == "customer_ref")]
        assert (records.loc[truth["identifier"]].to_numpy() == truth["entity"].to_numpy()).all()
    web = _read(ws, "web")
    visitors = set(pd.read_csv(demo / "ground_truth" / "visitors.csv", dtype=str)["identifier"])
    known = set(idents.loc[idents["id_type"] == "anonymous_id", "identifier"])
    assert set(web["anonymous_id"]) <= known | visitors and not known & visitors
    browsers = idents[(idents["id_type"] == "anonymous_id") & ~idents["identifier"].str.startswith("app-")]
    assert (browsers.groupby("entity").size() > 1).any(), "browser cookies should rotate"
    assert web.duplicated().any(), "exact duplicate events expected"


def test_households_are_distinct_people_sharing_a_device(demo):
    persons = pd.read_parquet(demo / "ground_truth" / "persons.parquet")
    households = persons.dropna(subset=["household_id"]).groupby("household_id")["entity"].nunique()
    assert (households == 2).all() and len(households) > 0
    idents = pd.read_csv(demo / "ground_truth" / "identifiers.csv", dtype=str)
    shared = idents[idents["shared"] == "true"]
    assert len(shared) > 0
    members = persons.set_index("entity")["household_id"]
    assert members.loc[shared["entity"]].notna().all()


def test_noise_placeholders_and_malformed_lines_exist(demo):
    ws = Workspace.open(demo)
    crm = _read(ws, "crm")
    nicks = crm["voornaam"].isin(["Sofietje", "Jan", "Hans", "Kees", "Mien", "Toos", "Karin", "Willemijn"])
    assert nicks.any()
    assert (crm["geboortedatum"].dropna().str.match(r"^\d\d-\d\d-\d{4}$")).all()
    bad_lines = 0
    for path in ws.source_files(ws.source("web")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad_lines += 1
                continue
            bad_lines += row["ts"].startswith("2025-02-30")
    assert bad_lines > 0
    orders = _read(ws, "orders")
    assert set(orders["status"]) == {"completed", "returned", "cancelled"}
    baskets = orders.drop_duplicates().groupby("order_id")["line_no"].nunique()
    assert (baskets > 1).any() and (baskets == 1).any()


def test_sophia_case_exists(demo):
    """A person with a CRM account, a newsletter record under another e-mail, a WhatsApp contact with a
    local-format phone, and cookie browsing before she logs in on the same cookie."""
    ws = Workspace.open(demo)
    identity = pd.read_csv(demo / "ground_truth" / "identity.csv", dtype=str)
    idents = pd.read_csv(demo / "ground_truth" / "identifiers.csv", dtype=str)
    crm = _read(ws, "crm").merge(identity, left_on="klantnummer", right_on="record_id")
    news = _read(ws, "newsletter").merge(identity, left_on="subscriber_id", right_on="record_id")
    both = crm.merge(news, on="entity", suffixes=("_crm", "_nl"))
    other_email = both[both["emailadres"].str.strip().str.lower() != both["email"].str.strip().str.lower()]
    service = _read(ws, "service")
    local = service[(service["channel"] == "whatsapp") & service["customer_phone"].fillna("").str.match(r"^06\d{8}$")]
    e164 = "+316" + local["customer_phone"].str[2:]
    phones = idents[(idents["source"] == "service") & (idents["id_type"] == "phone")].set_index("identifier")["entity"]
    whatsapp_entities = set(phones.loc[e164])
    web = _read(ws, "web").sort_values("ts")
    anon_owner = idents[idents["id_type"] == "anonymous_id"].set_index("identifier")["entity"]
    logins = web[web["type"] == "login"].groupby("anonymous_id")["ts"].min()
    anonymous = web[web["user_id"].isna() & web["anonymous_id"].isin(logins.index)]
    before = anonymous[anonymous["ts"] < anonymous["anonymous_id"].map(logins)]
    browsing_entities = set(anon_owner.loc[before["anonymous_id"].unique()])
    found = set(other_email["entity"]) & whatsapp_entities & browsing_entities
    assert found, "no Sophia-like person"
    assert re.match(r"^P\d{7}$", sorted(found)[0])


@pytest.mark.parametrize(("persons", "weeks"), [(1, 4), (2, 4), (40, 10)])
def test_tiny_worlds_still_make_a_valid_workspace(tmp_path, persons, weeks):
    result = generate(tmp_path, persons=persons, seed=5, weeks=weeks)
    ws = Workspace.open(tmp_path, check_files=True)
    assert dict(result.files)["raw/crm_klanten.csv"] >= 1
    assert len(_read(ws, "web")) > 0
    assert (result.end - result.start).days == 7 * weeks


def test_an_email_address_belongs_to_one_person(demo):
    """Addresses look like people's (names, birth years) yet never collide between two persons."""
    ws = Workspace.open(demo)
    identity = pd.read_csv(demo / "ground_truth" / "identity.csv", dtype=str)
    owners = []
    for src in ws.sources_of("customers"):
        df = _read(ws, src.name)[[src.columns["record_id"], src.columns["email"]]].dropna()
        df.columns = ["record_id", "email"]
        df = df.astype(str).merge(identity[identity["source"] == src.name], on="record_id")
        owners.append(df.assign(email=df["email"].str.strip().str.lower()))
    emails = pd.concat(owners)
    emails = emails[~emails["email"].isin(["test@test.com", "geen@email.nl", "noreply@rituals.com"])]
    assert emails.groupby("email")["entity"].nunique().max() == 1
    assert (~emails["email"].str.contains(r"\d{5,}@")).mean() > 0.9, "most addresses carry no long number"


def test_most_traffic_does_not_convert(demo):
    """Realistic retargeting audience: most sessions end without a purchase, and anonymous visitors who
    never log in (and never buy) outnumber the known persons."""
    web = _read(Workspace.open(demo), "web")
    sessions = web.groupby("session_id")["type"].agg(lambda t: (t == "purchase").any())
    assert 0.03 < sessions.mean() < 0.25
    visitors = pd.read_csv(demo / "ground_truth" / "visitors.csv", dtype=str)
    assert 300 <= len(visitors) <= 900
    anon = web[web["anonymous_id"].isin(set(visitors["identifier"]))]
    assert anon["user_id"].isna().all() and not (anon["type"] == "purchase").any()
    # idle visits are short: a visitor session averages under two events
    assert anon.groupby("session_id").size().mean() < 2.0
