"""A pre-aggregated sessions source (UCI online-shoppers-like columns) trains the same model family."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import yaml

from cdp_ml import CdpError, Workspace
from cdp_ml.models import conversion
from cdp_ml.sources import ingest


def _shoppers(n: int, seed: int = 5) -> pd.DataFrame:
    """Session rows with numeric, boolean and text columns; Revenue depends on PageValues and visitor type."""
    rng = np.random.default_rng(seed)
    start = datetime(2026, 1, 1)
    page_values = np.where(rng.random(n) < 0.25, rng.gamma(2.0, 15.0, n), 0.0)
    visitor = rng.choice(["Returning_Visitor", "New_Visitor", "Other"], n, p=[0.8, 0.17, 0.03])
    logit = -3.0 + 0.08 * page_values + np.where(visitor == "New_Visitor", 0.8, 0.0)
    ts = [start + timedelta(minutes=int(m)) for m in np.sort(rng.integers(0, 300 * 24 * 60, n))]
    return pd.DataFrame({
        "session_key": [f"s{i}" for i in range(n)],
        "visit_start": [t.isoformat(sep=" ") for t in ts],
        "Administrative": rng.poisson(2, n),
        "ProductRelated_Duration": rng.gamma(2.0, 300.0, n).round(2),
        "BounceRates": rng.beta(1, 30, n).round(4),
        "PageValues": page_values.round(2),
        "Month": [t.strftime("%b") for t in ts],
        "VisitorType": visitor,
        "Weekend": rng.random(n) < 0.25,
        "Revenue": rng.random(n) < 1 / (1 + np.exp(-logit)),
    })


@pytest.fixture
def sessions_ws(tmp_path) -> Workspace:
    _shoppers(6000).to_csv(tmp_path / "shoppers.csv", index=False)
    config = {"sources": [{"name": "analytics", "kind": "sessions", "path": "shoppers.csv",
                           "columns": {"session_id": "session_key", "timestamp": "visit_start", "converted": "Revenue"}}],
              "conversion": {"training_weeks": 30, "backtest_weeks": 8, "n_estimators": 200, "learning_rate": 0.1}}
    (tmp_path / "cdp_ml.yaml").write_text(yaml.safe_dump(config))
    ws = Workspace.open(tmp_path)
    ingest(ws)
    return ws


def test_sessions_source_backtests_with_generic_features(sessions_ws, tmp_path):
    result = conversion.backtest(sessions_ws, date(2026, 8, 1), out=tmp_path / "p.csv")
    assert result.input == "sessions"
    assert set(result.model.categorical) >= {"Month", "VisitorType"}
    assert {"PageValues", "Weekend", "BounceRates"} <= set(result.model.numeric)
    assert "Revenue" not in result.model.features and "session_key" not in result.model.features
    assert result.heuristic == "PageValues"
    assert result.metrics["lightgbm"]["roc_auc"] > 0.75
    written = pd.read_csv(tmp_path / "p.csv")
    assert pd.to_datetime(written["scored_at"]).min() >= pd.Timestamp("2026-08-01")
    assert pd.to_datetime(written["scored_at"]).max() < pd.Timestamp("2026-09-26")


def test_sessions_source_train_and_score(sessions_ws):
    trained = conversion.train(sessions_ws, date(2026, 10, 26))
    assert trained.promoted and trained.input == "sessions"
    scored = conversion.score(sessions_ws, date(2026, 10, 26))
    with sessions_ws.connect() as con:
        n = con.execute("select count(*) from conversion_scores").fetchall()[0][0]
    assert scored.visitors == n > 0 and scored.known_persons == 0


def test_cutoff_too_late_for_the_window_is_a_clear_error(sessions_ws):
    with pytest.raises(CdpError, match="use an earlier cutoff"):
        conversion.backtest(sessions_ws, date(2026, 10, 20))
