"""`cdp-ml evaluate identity` reading the true entity from a label column of the customer exports."""

from __future__ import annotations

import pytest
import yaml

from cdp_ml import CdpError, Workspace
from cdp_ml.cli import main
from cdp_ml.identity import evaluate, resolve
from cdp_ml.sources import ingest

ROWS = [  # (unique_id, first_name, surname, dob, city, email, cluster), Splink's fake_1000 layout
    ("0", "Robert", "Alan", "1971-06-24", "", "robert255@smith.net", "0"),
    ("1", "Robert", "Allen", "1971-05-24", "", "roberta25@smith.net", "0"),
    ("2", "Rob", "Allen", "1971-06-24", "London", "roberta25@smith.net", "0"),
    ("3", "Grace", "", "1997-04-26", "Hull", "grace.kelly52@jones.com", "1"),
    ("4", "Grace", "Kelly", "1991-04-26", "", "grace.kelly52@jones.com", "1"),
    ("5", "Logan", "pMurphy", "1973-08-01", "", "", "2"),
]


@pytest.fixture
def fake(tmp_path) -> Workspace:
    lines = ["unique_id,first_name,surname,dob,city,email,cluster"] + [",".join(r) for r in ROWS]
    (tmp_path / "fake_1000.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump({"sources": [
        {"name": "fake", "kind": "customers", "path": "fake_1000.csv",
         "columns": {"record_id": "unique_id", "first_name": "first_name", "last_name": "surname",
                     "date_of_birth": "dob", "city": "city", "email": "email"}}],
        "identity": {"probabilistic": False}}))
    ws = Workspace.open(tmp_path)
    ingest(ws)
    resolve(ws)
    return ws


def test_the_entity_can_be_an_unmapped_column_of_the_export(fake):
    result = evaluate(fake, entity_column="cluster")
    # e-mail stitching joins 1+2 and 3+4; record 0 (another e-mail) stays apart from its entity
    assert (result.records.entities, result.records.true_pairs, result.records.correct_pairs) == (3, 4, 2)
    assert result.records.precision == 1.0 and result.records.recall == 0.5


def test_a_pattern_takes_the_entity_out_of_a_mapped_id(fake):
    """FEBRL: rec-12-org and rec-12-dup-0 are one entity; here unique_id's first digit plays that part."""
    result = evaluate(fake, entity_column="unique_id", entity_pattern="^[0-9]")
    assert result.records.entities == 6
    with pytest.raises(CdpError, match="column 'colour' gives no entity for any customer record"):
        evaluate(fake, entity_column="colour")
    with pytest.raises(CdpError, match="--entity-pattern needs --entity-column"):
        evaluate(fake, demo=True, entity_pattern="x")
    with pytest.raises(CdpError, match="not a regular expression"):
        evaluate(fake, entity_column="cluster", entity_pattern="(")


def test_cli_takes_one_truth(fake, capsys):
    assert main(["--workspace", str(fake.root), "evaluate", "identity", "--entity-column", "cluster"]) == 0
    assert "identity evaluation" in capsys.readouterr().out
    assert main(["--workspace", str(fake.root), "evaluate", "identity", "--demo", "--entity-column", "cluster"]) == 2
    assert "give one of --truth FILE, --demo or --entity-column" in capsys.readouterr().err
