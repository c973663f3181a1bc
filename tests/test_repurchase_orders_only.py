"""An orders-only workspace (one invoice log with a customer key, no customers source, no category) runs
through ingest -> resolve -> repurchase backtest with the any-category track only."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd

from cdp_ml.models import repurchase, repurchase_simulation
from cdp_ml.workspace import Workspace

START = date(2024, 1, 1)
WORKSPACE = """
sources:
- name: invoices
  kind: orders
  path: invoices.csv
  columns:
    order_id: Invoice
    customer_ref: Customer ID
    ordered_at: InvoiceDate
    quantity: Quantity
    amount: Price
repurchase:
  n_estimators: 60
  threads: 1
  training_cutoffs: 8
  min_positives: 50
  min_negatives: 50
"""


def test_orders_only_invoice_log(tmp_path):
    from cdp_ml.identity import resolve
    from cdp_ml.sources import ingest

    sim = repurchase_simulation.orders(400, START, weeks=104, seed=5)
    pd.DataFrame({"Invoice": sim["order_id"], "StockCode": "X1", "Quantity": sim["quantity"].astype(int),
                  "InvoiceDate": sim["ordered_at"].dt.strftime("%Y-%m-%d %H:%M:%S"), "Price": sim["amount"],
                  "Customer ID": sim["customer_ref"].str[1:], "Country": "United Kingdom"}
                 ).to_csv(tmp_path / "invoices.csv", index=False)
    (tmp_path / "cdp_ml.yaml").write_text(WORKSPACE)
    ws = Workspace.open(tmp_path)
    ingest(ws)
    resolve(ws)
    out = tmp_path / "bt.csv"
    result = repurchase.backtest(ws, START + timedelta(weeks=90), out=out)
    assert result.categories == ()
    pred = pd.read_csv(out)
    assert set(pred["category"]) == {"(any)"} and len(pred) == result.tracks * 8
    assert result.persons > 300
    assert set(result.metrics["tracks"]) == {"(any)", "all"}
