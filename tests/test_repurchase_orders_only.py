"""An orders-only workspace (one invoice log with a customer key, no customers source, no category) runs
through ingest -> resolve -> repurchase backtest with the any-category track only."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd

from cdp_ml.models import repurchase, repurchase_simulation
from cdp_ml.workspace import Workspace

START = date(2024, 1, 1)
SMALL_MODEL = """
repurchase:
  n_estimators: 60
  threads: 1
  training_cutoffs: 8
  min_positives: 50
  min_negatives: 50
"""
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
""" + SMALL_MODEL


def test_orders_only_invoice_log(tmp_path, monkeypatch, capsys):
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
    repurchase.train(ws, START + timedelta(weeks=90))  # a champion that has not seen the weeks after 90
    out = tmp_path / "bt.csv"
    result = repurchase.backtest(ws, START + timedelta(weeks=90), out=out)
    assert result.categories == ()
    pred = pd.read_csv(out)
    assert set(pred["category"]) == {"(any)"} and len(pred) == result.tracks * 8
    assert result.persons > 300
    assert set(result.metrics["tracks"]) == {"(any)", "all"}
    assert (ws.cache_dir / "repurchase_backtest" / "key").exists()  # where an erasure clears it

    # train right after: its gate window is the backtest's, so the stored backtest is reused (one fit, not two)
    fits = _count_fits(monkeypatch)
    trained = repurchase.train(ws, START + timedelta(weeks=98))
    assert len(fits) == 1
    pd.testing.assert_frame_equal(trained.backtest.metrics, result.metrics)
    assert "roc_auc_8w" in trained.champion_backtest  # the champion was scored on the stored test tracks
    # any change to what the backtest saw is a miss: the gate is computed again
    with ws.connect() as con:
        con.execute("update orders set quantity = quantity + 1 where order_id = (select min(order_id) from orders)")
    repurchase.train(ws, START + timedelta(weeks=98))
    assert len(fits) == 3

    # the conversion model has nothing to learn from here, and says why (not "run ingest")
    from cdp_ml.cli import main

    capsys.readouterr()  # MLflow's registration messages above
    assert main(["--workspace", str(tmp_path), "train", "conversion"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs an events or sessions source and this workspace maps none" in err and "\n" not in err


def _count_fits(monkeypatch) -> list[int]:
    calls: list[int] = []
    fit = repurchase._fit

    def counted(*args, **kwargs):
        calls.append(1)
        return fit(*args, **kwargs)

    monkeypatch.setattr(repurchase, "_fit", counted)
    return calls


EVENTS_WORKSPACE = """
sources:
- name: shop
  kind: events
  path: events.csv
  columns: {timestamp: ts, event_type: event, customer_ref: user_id, product_id: item, category: category,
            value: price}
""" + SMALL_MODEL


def test_event_log_without_orders_uses_its_purchase_events(tmp_path):
    """REES46/RetailRocket-style: no orders source, purchases are events; they become person_orders."""
    from cdp_ml.identity import resolve
    from cdp_ml.sources import ingest

    sim = repurchase_simulation.orders(400, START, weeks=104, seed=5)
    buys = pd.DataFrame({"ts": sim["ordered_at"].dt.strftime("%Y-%m-%d %H:%M:%S"), "event": "transaction",
                         "user_id": sim["customer_ref"].str[1:], "item": "sku-1", "category": sim["category"],
                         "price": sim["amount"]})
    views = buys.assign(event="view", price=None)  # browsing before each purchase: not an order
    pd.concat([views, buys]).to_csv(tmp_path / "events.csv", index=False)
    (tmp_path / "cdp_ml.yaml").write_text(EVENTS_WORKSPACE)
    ws = Workspace.open(tmp_path)
    ingest(ws)
    resolve(ws)
    with ws.connect() as con:
        n, people, amount = con.execute("select count(*), count(distinct person_id), sum(amount) "
                                        "from person_orders").fetchall()[0]
    assert n == len(buys) and people == sim["customer_ref"].nunique()
    assert abs(amount - sim["amount"].sum()) < 1e-6 * max(1.0, sim["amount"].sum())
    result = repurchase.backtest(ws, START + timedelta(weeks=90))
    assert result.persons > 300 and len(result.categories) >= 2
