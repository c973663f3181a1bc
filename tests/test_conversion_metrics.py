"""Shared evaluation metrics: the retargeting saving and gains on hand-checkable rankings."""

from __future__ import annotations

import numpy as np
import pytest

from cdp_ml.models import metrics


def test_audience_reduction_counts_the_dropped_bottom_of_the_ranking():
    y = [1, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    p = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    # all three positives are inside the top 4 of 10 -> 60 % of the audience can be dropped
    assert metrics.audience_reduction(y, p, keep=0.99) == pytest.approx(0.6)
    # two of three (>= 0.66) are inside the top 2
    assert metrics.audience_reduction(y, p, keep=0.66) == pytest.approx(0.8)


def test_ties_are_never_split_and_constant_scores_save_nothing():
    assert metrics.audience_reduction([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5], keep=0.5) == 0.0
    assert np.isnan(metrics.audience_reduction([0, 0], [0.1, 0.2]))


def test_summary_and_gains_agree_with_a_perfect_ranking():
    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.2).astype(int)
    p = y * 0.5 + rng.random(500) * 0.4
    s = metrics.summary(y, p)
    assert s["roc_auc"] == pytest.approx(1.0)
    assert s["audience_reduction_99"] == pytest.approx(1 - y.mean())
    gains = metrics.cumulative_gains(y, p, points=10)
    assert gains["positives_share"].iloc[-1] == pytest.approx(1.0)
    assert (gains["positives_share"].diff().dropna() >= -1e-12).all()
    table = metrics.calibration_table(y, p, bins=5)
    assert table["rows"].sum() == 500 and len(table) == 5


def test_audience_reduction_interval_brackets_the_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(11)

    def sample(n: int):
        y = (rng.random(n) < 0.15).astype(int)
        return y, y * 1.5 + rng.normal(0, 1, n)

    widths = []
    for n in (1_000, 40_000):
        y, p = sample(n)
        groups = np.arange(n) // 3  # visitors with three sessions each
        low, high = metrics.audience_reduction_interval(y, p, 0.99, groups=groups)
        point = metrics.audience_reduction(y, p, 0.99)
        assert low <= point <= high and low < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2
    assert all(np.isnan(v) for v in metrics.audience_reduction_interval([0, 0], [0.1, 0.2]))


def test_roc_auc_gain_interval_is_paired_and_agrees_with_a_visitor_bootstrap():
    rng = np.random.default_rng(5)
    n = 3_000
    groups = np.arange(n) // 3  # visitors with three correlated sessions each
    visitor = rng.normal(0, 1, n // 3)[groups]
    y = (rng.random(n) < 1 / (1 + np.exp(2 - visitor))).astype(int)
    signal = y * 1.0 + visitor * 0.5 + rng.normal(0, 1, n)
    better, worse = signal + rng.normal(0, 0.3, n), np.round(signal + rng.normal(0, 1.0, n), 1)  # ties too
    intervals = metrics.roc_auc_gain_interval(y, better, {"worse": worse, "same": better}, groups=groups)
    gain = metrics.roc_auc(y, better) - metrics.roc_auc(y, worse)
    low, high = intervals["worse"]
    assert low < gain < high and low > 0
    assert intervals["same"] == pytest.approx((0.0, 0.0), abs=1e-12)  # paired: a model against itself
    # the analytic half-width matches a percentile bootstrap that resamples whole visitors
    gains = []
    for _ in range(300):
        take = (rng.integers(0, n // 3, n // 3)[:, None] * 3 + np.arange(3)).ravel()
        gains.append(metrics.roc_auc(y[take], better[take]) - metrics.roc_auc(y[take], worse[take]))
    boot_low, boot_high = np.quantile(gains, [0.05, 0.95])
    assert (high - low) == pytest.approx(boot_high - boot_low, rel=0.25)
    assert all(np.isnan(v) for v in metrics.roc_auc_gain_interval([0, 0], [0.1, 0.2], {"b": [0.2, 0.1]})["b"])
