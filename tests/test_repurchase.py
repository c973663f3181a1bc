"""Repurchase timing: backtest contract, point-in-time correctness, cycle recovery, orders-only workspaces."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from cdp_ml.errors import CdpError
from cdp_ml.features import repurchase as fr
from cdp_ml.models import repurchase, repurchase_simulation
from cdp_ml.workspace import Workspace

START = date(2024, 1, 1)  # a Monday
CUTOFF = START + timedelta(weeks=90)
SMALL = """
repurchase:
  n_estimators: 80
  threads: 1
  training_cutoffs: 8
  min_positives: 50
  min_negatives: 50
"""


def _workspace(root, orders: pd.DataFrame, settings: str = SMALL) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cdp_ml.yaml").write_text("sources: []\n" + settings)
    ws = Workspace.open(root)
    with ws.connect() as con:
        repurchase_simulation.write_warehouse(con, orders)
    return ws


@pytest.fixture(scope="module")
def orders() -> pd.DataFrame:
    return repurchase_simulation.orders(700, START, weeks=104, seed=3)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, orders) -> Workspace:
    return _workspace(tmp_path_factory.mktemp("rep"), orders)


def test_backtest_writes_one_row_per_track_and_week(ws, tmp_path):
    out = tmp_path / "bt.parquet"
    result = repurchase.backtest(ws, CUTOFF + timedelta(days=2), horizon_weeks=6, out=out)
    assert result.cutoff == CUTOFF and "not a Monday" in result.note
    pred = pd.read_parquet(out)
    assert list(pred.columns[:7]) == ["person_id", "category", "week", "week_start", "p_week", "p_cumulative", "actual"]
    assert len(pred) == result.tracks * 6
    assert set(pred["category"]) == {"(any)", *repurchase_simulation.CYCLES}
    wide = pred.pivot_table(index=["person_id", "category"], columns="week", values="p_cumulative")
    assert (np.diff(wide.to_numpy(), axis=1) >= -1e-12).all() and (wide.to_numpy() <= 1).all()
    assert set(result.metrics["model"]) == {"model", "bgnbd", "naive"}
    assert {"roc_auc_1w", "roc_auc_4w", "roc_auc_6w", "pr_auc_6w", "concordance", "precision_top10"} <= set(result.metrics)
    assert "bgnbd" in str(result) and "actual_next_purchases" in str(result)
    # where the model wins or loses against BG/NBD: every (any) track once per segmentation
    seg = result.segments
    assert set(seg["tracks"]) == {"(any)", "categories"}
    n_any = int(result.metrics.set_index(["tracks", "model"]).loc[("(any)", "model"), "n"])
    assert (seg[seg["tracks"] == "(any)"].groupby("segmentation")["tracks_in_segment"].sum() == n_any).all()
    assert list(result.segment_comparison().columns) == [
        "tracks_in_segment", "bought_4w", "model_roc_auc_4w", "bgnbd_roc_auc_4w",
        "bought_6w", "model_roc_auc_6w", "bgnbd_roc_auc_6w"]
    assert "by segment" in str(result)
    # actuals match the orders in the window
    first_any = pred[(pred["category"] == "(any)") & (pred["actual"] == 1)]
    assert first_any["week_start"].min() >= pd.Timestamp(CUTOFF)


def test_backtest_refuses_a_window_past_the_data(ws):
    with pytest.raises(CdpError, match="earlier --cutoff"):
        repurchase.backtest(ws, START + timedelta(weeks=102), horizon_weeks=8)


def test_truncating_data_at_the_cutoff_gives_identical_predictions(ws, orders, tmp_path):
    truncated = _workspace(tmp_path / "cut", orders[orders["ordered_at"] < pd.Timestamp(CUTOFF)])
    forecasts = []
    for w in (ws, truncated):
        model = repurchase.fit(w, CUTOFF)
        frame, fc = repurchase.forecast_tracks(w, model, CUTOFF)
        forecasts.append((frame.drop(columns="mask"), fc.p_week))
    (fa, pa), (fb, pb) = forecasts
    pd.testing.assert_frame_equal(fa, fb)
    np.testing.assert_array_equal(pa, pb)


def test_model_recovers_each_category_cycle(ws):
    """Tracks that bought in the week before the cutoff peak near their category's cycle."""
    model = repurchase.fit(ws, CUTOFF)
    frame, fc = repurchase.forecast_tracks(ws, model, CUTOFF)
    for category, cycle in repurchase_simulation.CYCLES.items():
        if cycle > model.horizon:
            continue
        sel = ((frame["category"] == category) & (frame["weeks_since_origin"] == 1)).to_numpy()
        assert sel.sum() >= 10
        peak = fc.p_week[sel].mean(axis=0).argmax() + 1  # weeks after the cutoff
        assert abs(peak - cycle) <= 1.5, (category, peak, cycle)


def test_train_registers_gates_and_score_is_idempotent(ws):
    as_of = CUTOFF + timedelta(weeks=8)
    trained = repurchase.train(ws, as_of)
    assert trained.promoted and trained.version == "1"
    assert {"roc_auc_4w_model", "roc_auc_4w_bgnbd"} <= set(trained.headline())
    first = repurchase.score(ws, as_of)
    again = repurchase.score(ws, as_of)
    with ws.connect() as con:
        rows = con.execute("select count(*), count(distinct week), min(p_week), max(p_cumulative), "
                           "count(distinct model_version) from repurchase_scores where as_of = ?", [as_of]).fetchall()[0]
    assert rows[0] == first.rows == again.rows and rows[1] == 8 and rows[2] >= 0 and rows[3] <= 1 and rows[4] == 1
    with ws.connect() as con:
        tracks = con.execute("""select category, count(*) filter (where week_start <> as_of + 7 * (week - 1)),
                                       max(abs(p_cumulative - cumulative)), sum(p_week) filter (where week = 1)
                                from (select *, sum(p_week) over (partition by person_id, category order by week)
                                             as cumulative from repurchase_scores where as_of = ?)
                                group by 1 order by 1""", [as_of]).df()
    assert (tracks.iloc[:, 1] == 0).all() and (tracks.iloc[:, 2] < 1e-9).all()
    week_1 = first.expected_next_purchases.query("week == 1").set_index("category")["expected"]
    np.testing.assert_allclose(week_1.sort_index().to_numpy(), tracks.iloc[:, 3].to_numpy())
    assert "(any)" in str(first)
    # the champion has seen this gate window: the retrain is gated against BG/NBD on it instead
    retrained = repurchase.train(ws, as_of)
    assert retrained.version == "2" and "BG/NBD" in retrained.gate_reason


def test_persons_objecting_to_profiling_are_not_scored(ws):
    as_of = CUTOFF + timedelta(weeks=8)
    if repurchase.score(ws, as_of).rows == 0:
        pytest.skip("nothing scored")
    with ws.connect() as con:
        before = {r[0] for r in con.execute("select distinct person_id from repurchase_scores where as_of = ?",
                                            [as_of]).fetchall()}
        objecting = sorted(before)[:3]
        con.execute("""create or replace table person_consents as
                       select unnest(?::varchar[]) as person_id, 'profiling' as purpose, false as granted,
                              ?::timestamp - interval 1 day as "timestamp", 'test' as source""", [objecting, as_of])
    try:
        repurchase.score(ws, as_of)
        with ws.connect() as con:
            after = {r[0] for r in con.execute("select distinct person_id from repurchase_scores where as_of = ?",
                                               [as_of]).fetchall()}
    finally:
        with ws.connect() as con:
            con.execute("drop table person_consents")
    assert after == before - set(objecting)


def test_train_window_comes_from_the_gate_backtests_preparation(ws):
    """The final fit's window read from the gate backtest's preparation equals a fresh preparation's."""
    cutoff = CUTOFF - timedelta(weeks=8)
    with ws.connect() as con:
        inputs = fr.prepare(con, CUTOFF, cutoff)
        same = fr.prepared_for(con, inputs, CUTOFF)
        assert same is not None
        shared = repurchase._read_window(ws, con, same, CUTOFF, 8, evaluate=False)
    fresh = repurchase._load(ws, CUTOFF, 8, evaluate=False)
    assert same == replace(fresh.inputs, tracks=None) and shared.sample == fresh.sample  # a fit counts its tracks
    for a, b in ((shared.train, fresh.train), (shared.calibration, fresh.calibration)):
        pd.testing.assert_frame_equal(a, b)
    by = ["category", "week"]  # the season table's row order is the group-by's
    pd.testing.assert_frame_equal(shared.season.sort_values(by, ignore_index=True),
                                  fresh.season.sort_values(by, ignore_index=True))
    # a person objecting to profiling between the two dates changes what a fresh preparation keeps
    with ws.connect() as con:
        person = con.execute("select min(person_id) from person_orders").fetchall()[0][0]
        con.execute("""create or replace table person_consents as
                       select ?::varchar as person_id, 'profiling' as purpose, false as granted,
                              ?::timestamp as "timestamp", 'test' as source""", [person, cutoff + timedelta(days=3)])
        try:
            assert fr.prepared_for(con, fr.prepare(con, CUTOFF, cutoff), CUTOFF) is None
        finally:
            con.execute("drop table person_consents")


def test_a_fit_prepares_only_its_sample_of_persons(tmp_path, orders):
    """Beyond max_training_rows a fit aggregates only the persons it samples: the same training window."""
    ws = _workspace(tmp_path, orders, SMALL + "  max_training_rows: 20000\n")
    with ws.connect() as con:
        inputs = fr.prepare(con, CUTOFF, CUTOFF)
        full = repurchase._read_window(ws, con, inputs, CUTOFF, 8, evaluate=False)
        everybody = con.execute("select count(distinct person_id) from rp_pw").fetchall()[0][0]
    sampled = repurchase._load(ws, CUTOFF, 8, evaluate=False)
    assert 0.05 < sampled.inputs.persons == full.sample < 0.9
    with ws.connect() as con:
        fr.prepare(con, CUTOFF, CUTOFF, sample=lambda tracks: sampled.inputs.persons)
        assert con.execute("select count(distinct person_id) from rp_pw").fetchall()[0][0] < 0.9 * everybody
    for a, b in ((full.train, sampled.train), (full.calibration, sampled.calibration)):
        assert len(a) > 100
        pd.testing.assert_frame_equal(a, b)
    by = ["category", "week"]
    pd.testing.assert_frame_equal(full.season.sort_values(by, ignore_index=True),
                                  sampled.season.sort_values(by, ignore_index=True))


def test_a_prediction_aggregates_only_its_last_weeks_of_events(tmp_path, orders):
    """Scoring at one origin reads 12 weeks of browsing: older events are not aggregated, features equal."""
    ws = _workspace(tmp_path, orders)
    with ws.connect() as con:
        con.execute("""create table person_events as
                       select person_id, ordered_at - to_days(d) as "timestamp", e as event_type, category,
                              c as channel
                       from person_orders, (values (2, 'product_view', 'web'), (9, 'add_to_cart', 'app'),
                                                   (30, 'product_view', 'app')) v(d, e, c)""")
        full = fr.track_frame(con, fr.prepare(con, CUTOFF, CUTOFF), [CUTOFF], 8, 52)
        aggregated = con.execute("select count(*) from rp_ev").fetchall()[0][0]
        recent = fr.track_frame(con, fr.prepare(con, CUTOFF, CUTOFF, first_origin=CUTOFF), [CUTOFF], 8, 52)
        assert con.execute("select count(*) from rp_ev").fetchall()[0][0] < aggregated / 3
    assert full["views_12w"].sum() > 0 and full["carts_4w"].sum() > 0 and full["channels_12w"].max() == 2
    pd.testing.assert_frame_equal(full, recent)


def test_missing_identity_is_a_clear_error(tmp_path):
    (tmp_path / "cdp_ml.yaml").write_text("sources: []\n")
    ws = Workspace.open(tmp_path)
    with ws.connect() as con:
        con.execute("create table orders (order_id varchar, customer_ref varchar, ordered_at timestamp)")
    with pytest.raises(CdpError, match="cdp-ml resolve"):
        repurchase.backtest(ws, CUTOFF)


def test_not_enough_history_names_the_settings(tmp_path, orders):
    ws = _workspace(tmp_path, orders[orders["customer_ref"] == "C1"], "repurchase: {threads: 1}\n")
    with pytest.raises(CdpError, match="min_positives"):
        repurchase.fit(ws, CUTOFF)


def test_first_week_decodes_the_window_mask():
    assert list(fr.first_week(np.array([0, 1, 2, 6, 128]))) == [0, 1, 2, 2, 8]


def test_hazard_features_see_the_baseline_bgnbd_inputs(ws):
    """The stacked BG/NBD features use the baseline's day-level (x, t_x, T) of every track at the origin."""
    with ws.connect() as con:
        inputs = fr.prepare(con, CUTOFF, CUTOFF)
        frame = fr.track_frame(con, inputs, [CUTOFF], 8, 52)
        baseline = fr.bgnbd_frame(con, CUTOFF)
    both = frame.merge(baseline, on=["person_id", "category"], validate="one_to_one")
    assert len(both) == len(frame) > 100
    np.testing.assert_allclose(both["n_days"] - 1, both["x"])
    np.testing.assert_allclose(both["t_x_exact"], both["t_x"])
    np.testing.assert_allclose(both["age_exact"], both["T"])
    rows = fr.expand(frame, 8, None, ("12-24",), [fr.ANY, *inputs.categories], stop_at_purchase=False)
    assert (rows["weeks_since_exact"] >= rows["step"] - 1).all()
    assert ((rows["weeks_since_exact"] - rows["weeks_since"]).abs() < 1).all()
    assert rows["ly_window"].between(0, 8).all()


@pytest.fixture(scope="module")
def fitted(ws) -> repurchase.HazardModel:
    return repurchase.fit(ws, CUTOFF)


def test_prediction_weeks_equal_the_expanded_rows(ws, fitted):
    """Scoring from one row per track gives exactly the features and hazards of the expanded person-weeks."""
    with ws.connect() as con:
        inputs = fr.prepare(con, CUTOFF, CUTOFF)
        frame = fr.track_frame(con, inputs, [CUTOFF - timedelta(weeks=3), CUTOFF], 8, 52)
        season = fr.season_table(con, CUTOFF)
    weeks = fr.TrackWeeks(frame, fitted.horizon, fitted.peaks, season)
    rows = fr.expand(frame, fitted.horizon, None, fitted.peaks, fitted.categories, stop_at_purchase=False,
                     season=season)
    assert frame["origin"].nunique() == 2 and np.isfinite(rows["season_index"]).mean() > 0.5
    for name in fr.FEATURES[1:]:
        np.testing.assert_array_equal(weeks.column(name), rows[name].to_numpy(dtype=float), err_msg=name)
    np.testing.assert_array_equal(fitted.matrix(weeks), fitted.matrix(rows))
    np.testing.assert_array_equal(repurchase.predict(fitted, frame, fitted.peaks, season, chunk_tracks=97).p_week,
                                  repurchase.forecast_from_hazard(fitted.hazard(rows).reshape(-1, 8)).p_week)
    unseen = frame.assign(category=np.where(np.arange(len(frame)) < 5, "bought only after training",
                                            frame["category"]))
    codes = fitted.matrix(fr.TrackWeeks(unseen, fitted.horizon, fitted.peaks, season))[:, 0]
    assert fitted.features[0] == "category" and np.isnan(codes[:40]).all()
    np.testing.assert_array_equal(codes[40:], fitted.matrix(rows)[40:, 0])


def test_scoring_matrix_gives_lightgbms_own_predictions(ws, fitted):
    """The fast numpy scoring path equals LightGBM on the DataFrame design (unseen categories included)."""
    model = fitted
    frame, _ = repurchase.forecast_tracks(ws, model, CUTOFF)
    rows = fr.expand(frame, model.horizon, None, model.peaks, model.categories, stop_at_purchase=False)
    rows["category"] = rows["category"].astype(str)
    rows.loc[rows.index[:50], "category"] = "a category bought only after training"
    np.testing.assert_array_equal(model.raw(rows), model.booster.predict_proba(model.design(rows))[:, 1])


def test_weekly_segment_is_the_top_of_a_stable_sort():
    """top_share selects exactly the first 10 % of a stable descending sort, ties included (any input)."""
    from cdp_ml.models import repurchase_metrics as rm

    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(1, 60))
        score = rng.integers(0, 4, n).astype(float) if trial % 2 else rng.random(n)
        actual = rng.random(n) < 0.3
        top = np.argsort(-score, kind="stable")[:max(1, int(round(n * 0.1)))]
        hits = actual[top].sum()
        expected = (hits / len(top), hits / actual.sum() if actual.sum() else np.nan)
        np.testing.assert_allclose(rm.top_share(score, actual), expected)


def test_concordance_counts_every_comparable_pair():
    """Harrell's C against the pairwise definition (ties in prediction count half), on small random inputs."""
    from cdp_ml.models import repurchase_metrics as rm

    rng = np.random.default_rng(2)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        time = rng.integers(1, 10, n).astype(float)
        event = time < 9
        pred = np.round(rng.random(n) * 5)
        pairs = [(i, j) for i in range(n) for j in range(n) if event[i] and time[i] < time[j]]
        score = sum(1.0 if pred[i] < pred[j] else 0.5 if pred[i] == pred[j] else 0.0 for i, j in pairs)
        expected = score / len(pairs) if pairs else np.nan
        np.testing.assert_allclose(rm.concordance(time, event, pred), expected)


def test_ranking_aucs_equal_scikit_learns():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from cdp_ml.models import repurchase_metrics as rm

    rng = np.random.default_rng(3)
    for trial in range(100):
        n = int(rng.integers(2, 200))
        y = rng.random(n) < 0.4
        score = np.round(rng.random(n), trial % 3)  # coarse scores: many ties
        if y.all() or not y.any():
            assert np.isnan(rm.ranking_aucs(y, score)).all()
            continue
        np.testing.assert_allclose(rm.ranking_aucs(y, score), (roc_auc_score(y, score), average_precision_score(y, score)))


def test_segment_table_ranks_within_each_segment():
    """Segment labels follow the inclusive upper bounds; AUCs and shares are those of the segment's tracks."""
    from cdp_ml.models import repurchase_metrics as rm

    labels = rm.segment_labels(np.array([0.0, 2.0, 2.1, 4.0, 8.5, 16.0, 100.0]),
                               rm.SEGMENTS["weeks since last purchase"])
    assert list(labels) == ["0-2", "0-2", "2-4", "2-4", "8-16", "8-16", "16+"]
    rng = np.random.default_rng(4)
    n, horizon = 300, 6
    bought = rng.random((n, horizon)) < 0.15
    p_week = rng.random((n, horizon)) / horizon
    days = rng.integers(1, 15, n).astype(float)
    table = rm.segment_table({"purchase days": rm.segment_labels(days, rm.SEGMENTS["purchase days"])},
                             {"model": p_week}, bought, (1, 4))
    assert list(table["segment"]) == ["1", "2-3", "4-9", "10+"] and table["tracks"].sum() == n
    row = table[table["segment"] == "4-9"].iloc[0]
    sel = (days >= 4) & (days <= 9)
    y = bought[sel, :4].any(axis=1)
    assert row["tracks"] == sel.sum() and np.isclose(row["bought_4w"], y.mean())
    assert np.isclose(row["model_roc_auc_4w"], rm.ranking_aucs(y, p_week[sel, :4].sum(axis=1))[0])
    assert np.isclose(row["model_predicted_4w"], p_week[sel, :4].sum(axis=1).mean())
