"""Conversion intent on the tiny demo workspace: point-in-time features, leakage, eligibility, gate, scores."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from cdp_ml import CdpError, Workspace
from cdp_ml.features import conversion as feats
from cdp_ml.features import sessions as sess
from cdp_ml.models import conversion
from cdp_ml.privacy.profiling import profiling_objections

FAST = {"training_weeks": 16, "n_estimators": 150, "learning_rate": 0.1}


def _fast(ws: Workspace, **changes) -> Workspace:
    """The workspace with quicker model settings (and any overrides), same data."""
    settings = replace(ws.config.conversion, **{**FAST, **changes})
    return Workspace(ws.root, replace(ws.config, conversion=settings))


def _midnight(d) -> datetime:
    return datetime(d.year, d.month, d.day)


@pytest.fixture
def ws(demo_ws) -> Workspace:
    return _fast(demo_ws)


def _points(ws: Workspace, until: datetime) -> tuple[feats.PointsSpec, pd.DataFrame]:
    with ws.connect() as con:
        spec = feats.build_points(con, ws.config.conversion, ws.config.features, until)
        frame = con.execute(f"select * from {feats.POINTS_TABLE} order by session_id").df()
    return spec, frame


def test_session_features_never_change_when_later_events_arrive(ws):
    as_of = conversion.default_as_of(ws)
    early = _midnight(as_of) - timedelta(weeks=8)
    spec, before = _points(ws, early)
    # more data: everything up to as-of, plus a purchase one day after a session that had none
    with ws.connect() as con:
        target = con.execute("""select anonymous_id, max("timestamp") from events where "timestamp" < ?
                                and anonymous_id is not null group by anonymous_id order by 1 limit 1""",
                             [early - timedelta(days=3)]).fetchall()[0]
        con.execute("""insert into events (source, "timestamp", event_type, anonymous_id, event_id)
                       values ('web', ?, 'purchase', ?, 'late-purchase')""", [target[1] + timedelta(days=1), target[0]])
    _, after = _points(ws, _midnight(as_of))
    closed = before[before["scored_at"] < early - timedelta(hours=1)]
    merged = closed.merge(after, on="session_id", suffixes=("", "_later"), how="left")
    assert len(closed) > 500 and merged["scored_at_later"].notna().all()
    for col in ("scored_at", "person_id", *spec.features):
        pd.testing.assert_series_equal(merged[col], merged[f"{col}_later"], check_names=False, check_dtype=False)
    # the late purchase reaches the label side only
    changed = merged[merged["next_purchase_at"].isna() & merged["next_purchase_at_later"].notna()]
    assert len(changed) > 0


def test_backtest_on_data_truncated_at_the_cutoff_predicts_exactly_the_same(ws, tmp_path):
    as_of = conversion.default_as_of(ws)
    cutoff = as_of - timedelta(weeks=6)
    full = conversion.backtest(ws, cutoff, out=tmp_path / "predictions.parquet")
    written = pd.read_parquet(tmp_path / "predictions.parquet")
    assert {"session_id", "person_id", "scored_at", "probability", "label"} <= set(written.columns)
    assert len(written) == full.eval_rows and written["scored_at"].min() >= pd.Timestamp(cutoff)
    assert full.metrics["lightgbm"]["roc_auc"] > 0.75
    for baseline in ("logistic", "heuristic"):  # the paired interval of the gain brackets the point gain
        gain = full.metrics["lightgbm"]["roc_auc"] - full.metrics[baseline]["roc_auc"]
        assert full.metrics["lightgbm"][f"roc_auc_gain_{baseline}_low"] <= gain + 1e-12
        assert gain - 1e-12 <= full.metrics["lightgbm"][f"roc_auc_gain_{baseline}_high"]
    assert "ROC-AUC gain over the baselines" in str(full)

    truncated_root = tmp_path / "truncated"
    shutil.copytree(ws.root, truncated_root)
    truncated = Workspace(truncated_root, ws.config)
    with truncated.connect() as con:
        con.execute('delete from events where "timestamp" >= ?', [_midnight(cutoff)])
        con.execute("delete from orders where ordered_at >= ?", [_midnight(cutoff)])
    lag = timedelta(days=ws.config.conversion.horizon_days)
    start = _midnight(cutoff) - timedelta(weeks=ws.config.conversion.training_weeks) - lag
    with truncated.connect() as con:
        spec = feats.build_points(con, truncated.config.conversion, truncated.config.features, _midnight(cutoff))
        train = feats.fetch(con, spec, start, _midnight(cutoff) - lag, ws.config.conversion.horizon_days)
    model = conversion.fit(train, spec, truncated.config.conversion)
    with ws.connect() as con:
        spec_full = feats.build_points(con, ws.config.conversion, ws.config.features, _midnight(full.window_end) + lag)
        evaluation = feats.fetch(con, spec_full, _midnight(cutoff), _midnight(full.window_end),
                                 ws.config.conversion.horizon_days)
    assert len(train) == full.train_rows
    np.testing.assert_array_equal(model.predict(evaluation), full.predictions["probability"].to_numpy())


def test_backtest_series_equals_one_backtest_per_cutoff(ws, tmp_path, capsys):
    """Several cutoffs share one feature build (a point's row does not depend on how late the build reaches):
    each window's predictions equal its own backtest's, and the out file keeps every window's rows."""
    as_of = conversion.default_as_of(ws)
    cutoffs = [as_of - timedelta(weeks=8), as_of - timedelta(weeks=6)]
    series = conversion.backtest_series(ws, cutoffs[::-1], out=tmp_path / "series.csv")
    written = pd.read_csv(tmp_path / "series.csv")
    assert list(written.columns[:2]) == ["cutoff", "session_id"]
    for cutoff, result in zip(cutoffs, series.results, strict=True):
        alone = conversion.backtest(ws, cutoff)
        assert result.cutoff == cutoff and result.train_rows == alone.train_rows
        np.testing.assert_array_equal(result.predictions["probability"], alone.predictions["probability"])
        assert (written["cutoff"] == str(cutoff)).sum() == alone.eval_rows
    summary = series.summary()
    assert list(summary.index) == cutoffs
    assert summary.loc[cutoffs[1], "saved_99"] == series.results[1].savings
    assert "mean over 2:" in str(series)
    # the CLI takes the cutoffs repeated or comma-separated; repurchase backtests one cutoff at a time
    from cdp_ml.cli import main

    argv = ["--workspace", str(ws.root), "backtest", "repurchase", "--cutoff", f"{cutoffs[0]},{cutoffs[1]}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one --cutoff" in err[0], err


def test_eligibility_check_names_the_counts(ws):
    strict = _fast(ws, min_positives=10**6)
    cutoff = conversion.default_as_of(ws) - timedelta(weeks=6)
    with pytest.raises(CdpError, match=r"\d+ converting and \d+ non-converting .*min_positives=1000000"):
        conversion.backtest(strict, cutoff)


def test_score_needs_a_champion(ws):
    with pytest.raises(CdpError, match="no champion"):
        conversion.score(ws)


def test_train_gates_the_champion_and_score_writes_the_audience(ws):
    as_of = conversion.default_as_of(ws)
    first = conversion.train(ws, as_of)
    assert first.promoted and first.version == "1"
    # a much weaker model (one stump) on the same window must not replace the champion
    weak = conversion.train(_fast(ws, n_estimators=1, num_leaves=2), as_of)
    assert not weak.promoted and "vs champion" in weak.gate_reason
    result = conversion.score(ws, as_of)
    with ws.connect() as con:
        built = con.execute("select * from conversion_scores order by anonymous_id, person_id").df()
    # the audience train fetched from its full feature build: the same visitors and probabilities, no rebuild
    assert len(first.audience) == result.visitors
    again = conversion.score(ws, as_of, audience=first.audience)  # also idempotent per as-of
    with ws.connect() as con:
        scores = con.execute("select * from conversion_scores").df()
        reused = con.execute("select * from conversion_scores order by anonymous_id, person_id").df()
        active = con.execute("""select count(distinct anonymous_id) from events
                                where "timestamp" >= ? and "timestamp" < ?""",
                             [_midnight(as_of) - timedelta(days=30), _midnight(as_of)]).fetchall()[0][0]
    pd.testing.assert_frame_equal(built, reused, check_exact=False, rtol=1e-12, atol=0)
    assert len(scores) == result.visitors == again.visitors > 0
    assert result.visitors <= active
    assert set(scores["model_version"]) == {"1"} and (scores["as_of"] == pd.Timestamp(as_of)).all()
    assert scores["probability"].between(0, 1).all()
    assert scores["anonymous_id"].notna().all()
    # persons who object to profiling (latest decision before as-of is a withdrawal) are never scored
    objecting = sorted(scores["person_id"].dropna().unique())[:5]
    assert objecting
    with ws.connect() as con:
        con.execute("""create or replace table person_consents as
                       select unnest(?::varchar[]) as person_id, 'profiling' as purpose, false as granted,
                              ?::timestamp - interval 1 day as "timestamp", 'test' as source""",
                    [objecting, _midnight(as_of)])
        assert {r[0] for r in con.execute(f"select person_id from {profiling_objections(con, as_of)}").fetchall()} \
            == set(objecting)
    conversion.score(ws, as_of)
    with ws.connect() as con:
        rescored = con.execute("select person_id from conversion_scores where as_of = ?", [as_of]).df()
    assert not set(objecting) & set(rescored["person_id"].dropna())
    # ... nor in the audience a retraining fetches (objections as of as-of, not as of its gate's earlier cutoff)
    assert not set(objecting) & set(conversion.train(ws, as_of).audience["person_id"].dropna())
    assert len(rescored) == len(scores) - int(scores["person_id"].isin(objecting).sum())


def test_training_slice_beyond_max_rows_is_sampled_in_sql_and_calibrated_back(ws):
    """A large slice is never fetched whole: all positives (a sample filling half the budget when they would
    exceed it) and a hash sample of negatives, and the Platt intercept undoes the sampling of both classes, so
    probabilities stay at the full slice's level."""
    cutoff = _midnight(conversion.default_as_of(ws) - timedelta(weeks=6))
    lag = timedelta(days=ws.config.conversion.horizon_days)
    with ws.connect() as con:
        spec = feats.build_points(con, ws.config.conversion, ws.config.features, cutoff)
        args = (con, spec, cutoff - timedelta(weeks=16) - lag, cutoff - lag, ws.config.conversion.horizon_days)
        full = feats.fetch(*args)
        sampled = feats.fetch(*args, max_rows=len(full) // 3)
        again = feats.fetch(*args, max_rows=len(full) // 3)
        # a budget the positives alone would exceed: half of it goes to a hash sample of positives, half to negatives
        positives = int(full["label"].sum())
        both = feats.fetch(*args, max_rows=positives * 3 // 2)
    share = sampled.attrs["negative_share"]
    assert full.attrs["negative_share"] == 1.0 and 0.1 < share < 0.5
    assert sampled["label"].sum() == full["label"].sum()  # every positive kept
    assert len(sampled) < len(full) / 2 and set(sampled["session_id"]) <= set(full["session_id"])
    pd.testing.assert_frame_equal(sampled, again)  # deterministic: the same rows on every run
    p_full = conversion.fit(full, spec, ws.config.conversion).predict(full).mean()
    p_sampled = conversion.fit(sampled, spec, ws.config.conversion).predict(full).mean()
    assert 0.7 < p_sampled / p_full < 1.4, (p_sampled, p_full)  # uncorrected, the ratio is about 1 / share
    assert 0.6 < both.attrs["positive_share"] < 0.9 and both.attrs["negative_share"] < share
    assert abs(int(both["label"].sum()) - positives * 0.75) < positives * 0.15
    assert abs(len(both) - positives * 1.5) < positives * 0.2
    p_both = conversion.fit(both, spec, ws.config.conversion).predict(full).mean()
    assert 0.85 < p_both / p_full < 1.2, (p_both, p_full)  # corrected for both classes' shares (else ~0.75)


def test_sessionising_in_device_slices_gives_the_same_points(ws, monkeypatch):
    until = _midnight(conversion.default_as_of(ws))
    _, whole = _points(ws, until)
    monkeypatch.setattr(sess, "EVENTS_PER_SLICE", 3_000)  # the tiny demo's events in several device slices
    _, sliced = _points(ws, until)
    assert len(whole) > 1000
    pd.testing.assert_frame_equal(whole, sliced)


def _audience_frames(ws: Workspace, until: datetime, build) -> tuple[feats.PointsSpec, pd.DataFrame, pd.DataFrame]:
    """(spec, each visitor's latest point since the audience window opened, the audience fetched from them)."""
    s = ws.config.conversion
    since = until - timedelta(days=s.active_days)
    with ws.connect() as con:
        spec = build(con, s, ws.config.features, until, since)
        points = con.execute(f"""select * from {feats.POINTS_TABLE} where scored_at >= ?
                                 qualify row_number() over (partition by visitor_id
                                                            order by scored_at desc, session_id desc) = 1
                                 order by session_id""", [since]).df()
        audience = feats.fetch_audience(con, spec, until, s.active_days)
    return spec, points, audience


def test_audience_build_gives_the_full_builds_rows_and_probabilities(ws, monkeypatch):
    """Scoring builds only each visitor's latest recent session (histories from narrow sessions): every row, and
    so every probability, is the one the full build gives the same scoring point; also in several device slices."""
    until = _midnight(conversion.default_as_of(ws))
    full_spec, full, full_audience = _audience_frames(
        ws, until, lambda con, s, f, u, since: feats.build_points(con, s, f, u))
    spec, points, audience = _audience_frames(ws, until, feats.build_audience_points)
    assert spec == replace(full_spec, rows=len(points), population=feats.CANDIDATES_TABLE) and spec.rows < full_spec.rows / 3  # only the audience's
    assert len(points) > 200 and points["known"].sum() > 0 and points["prev_sessions"].gt(0).sum() > 0
    assert points["visitor_decayed_sessions"].gt(0).sum() > 0 and points["person_orders"].gt(0).sum() > 0
    pd.testing.assert_frame_equal(full, points[full.columns], check_exact=False, rtol=1e-12, atol=0)
    pd.testing.assert_frame_equal(full_audience, audience, check_exact=False, rtol=1e-12, atol=0)
    # the champion's probabilities, from a model fitted on the full build's history
    with ws.connect() as con:
        feats.build_points(con, ws.config.conversion, ws.config.features, until)
        train = feats.fetch(con, full_spec, until - timedelta(weeks=16), until - timedelta(days=7), 7)
    model = conversion.fit(train, full_spec, ws.config.conversion)
    np.testing.assert_array_equal(model.predict(full_audience), model.predict(audience))
    # slices: the history build and the recent sessions in several device slices each
    monkeypatch.setattr(sess, "EVENTS_PER_SLICE", 3_000)
    monkeypatch.setattr(sess, "HISTORY_EVENTS_PER_SLICE", 5_000)
    with ws.connect() as con:  # the stored history is rebuilt in slices, not reused
        con.execute(f"drop table {sess.HISTORY_STATE}")
    _, sliced, _ = _audience_frames(ws, until, feats.build_audience_points)
    pd.testing.assert_frame_equal(full, sliced[full.columns], check_exact=False, rtol=1e-12, atol=0)


def test_selected_build_fetches_the_full_builds_training_and_evaluation_rows(ws):
    """Training builds wide rows only for the windows it fetches, deciding the samples on every point's narrow
    row: each fetched frame (rows, features, labels, kept shares) is the one the full build gives - sampled or
    not, with a keep predicate and without purchase sessions - and an earlier cutoff (a backtest) leaves the
    stored session history as it was."""
    s, f = ws.config.conversion, ws.config.features
    until = _midnight(conversion.default_as_of(ws))
    with ws.connect() as con:
        full_spec = feats.build_points(con, s, f, until)
        window = feats.Window(until - timedelta(weeks=16), until - timedelta(weeks=4), 7)
        rows = len(feats.fetch_window(con, full_spec, window))
        windows = [replace(window, max_rows=rows // 3),
                   replace(window, max_rows=rows // 4, keep="person_id is null or person_id > 'P'",
                           without_purchase_sessions=True),
                   feats.Window(until - timedelta(weeks=4), until - timedelta(days=7), 7)]
        full = [feats.fetch_window(con, full_spec, w) for w in windows]
    with ws.connect() as con:
        spec = feats.build_selected_points(con, s, f, until, windows)
        selected = [feats.fetch_window(con, spec, w) for w in windows]
    assert spec == replace(full_spec, rows=spec.rows, population=feats.CANDIDATES_TABLE)
    assert max(map(len, full)) <= spec.rows < full_spec.rows / 2
    assert 0 < full[0].attrs["negative_share"] < 1 and full[1]["person_id"].isna().sum() > 0
    for expected, got in zip(full, selected, strict=True):
        assert len(expected) > 100 and expected.attrs == got.attrs
        pd.testing.assert_frame_equal(expected, got, check_exact=False, rtol=1e-12, atol=0)
    # a backtest's earlier cutoff: its own history, the same rows as a build truncated there
    with ws.connect() as con:
        early = until - timedelta(weeks=5)
        feats.build_points(con, s, f, early)
        expected = feats.fetch_window(con, full_spec, replace(windows[2], start=early - timedelta(weeks=3),
                                                              end=early - timedelta(days=7)))
        stored = con.execute(f"select watermark from {sess.HISTORY_STATE}").fetchall()
        feats.build_selected_points(con, s, f, early, [replace(windows[2], start=early - timedelta(weeks=3),
                                                                end=early - timedelta(days=7))])
        got = feats.fetch_window(con, spec, replace(windows[2], start=early - timedelta(weeks=3),
                                                    end=early - timedelta(days=7)))
        assert con.execute(f"select watermark from {sess.HISTORY_STATE}").fetchall() == stored == [(until,)]
    pd.testing.assert_frame_equal(expected, got, check_exact=False, rtol=1e-12, atol=0)
