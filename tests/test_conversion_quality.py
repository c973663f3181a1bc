"""Conversion model fitting on generated frames: what the latest training weeks contribute, calibration."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from cdp_ml.features.conversion import PointsSpec
from cdp_ml.models import conversion, metrics
from cdp_ml.models.settings import ConversionSettings

SPEC = PointsSpec("events", ("signal_old", "signal_new", "noise"), ("source",), 7, 0)
SETTINGS = ConversionSettings(n_estimators=200, learning_rate=0.1, min_child_samples=50)


def _frame(n: int, seed: int, new_regime_from: float) -> pd.DataFrame:
    """Scoring points in time order; from ``new_regime_from`` (share of rows) on, the label follows
    ``signal_new`` instead of ``signal_old`` (behaviour drifts: the latest weeks matter most)."""
    rng = np.random.default_rng(seed)
    x_old, x_new, noise = rng.normal(size=(3, n))
    source = rng.choice(["direct", "email", "social"], n)
    late = np.arange(n) >= int(n * new_regime_from)
    logit = np.where(late, 2.5 * x_new, 2.5 * x_old) - 2.0 + (source == "email") * 0.5
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame({"scored_at": pd.date_range("2026-01-01", periods=n, freq="10min"), "signal_old": x_old,
                         "signal_new": x_new, "noise": noise, "source": source, "label": label})


def test_refit_lets_the_latest_weeks_shape_the_ranking():
    """Early stopping and calibration hold out the latest 30 %; the refit learns from them too. When behaviour
    changed in those weeks, only the refit model ranks the following weeks well."""
    train = _frame(8000, seed=1, new_regime_from=0.72)  # the change falls inside the held-out slices
    later = _frame(4000, seed=2, new_regime_from=0.0)
    refit = conversion.fit(train, SPEC, SETTINGS)
    held_out = conversion.fit(train, SPEC, replace(SETTINGS, refit=False))
    y = later["label"].to_numpy()
    auc_refit, auc_held_out = (metrics.roc_auc(y, m.predict(later)) for m in (refit, held_out))
    assert auc_refit > auc_held_out + 0.05, (auc_refit, auc_held_out)
    # the refit keeps the early-stopped tree count and its calibration (fitted on rows its trees never saw)
    assert refit.booster.current_iteration() == held_out.booster.current_iteration()
    assert refit.platt == held_out.platt


def test_refit_probabilities_stay_calibrated_without_drift():
    """Same trees and learning rate on more rows: the held-out calibration still fits the refit model's scores."""
    train = _frame(8000, seed=3, new_regime_from=1.0)
    later = _frame(6000, seed=4, new_regime_from=1.0)
    model = conversion.fit(train, SPEC, SETTINGS)
    p = model.predict(later)
    y = later["label"].to_numpy()
    assert abs(p.mean() - y.mean()) < 0.02, (p.mean(), y.mean())
    held_out = conversion.fit(train, SPEC, replace(SETTINGS, refit=False)).predict(later)
    assert metrics.logloss(y, p) < metrics.logloss(y, held_out) + 0.01


def test_early_stopping_ignores_improvements_below_min_delta():
    """On large data the validation AUC creeps up by tiny steps for hundreds of rounds: gains below
    ``early_stopping_min_delta`` do not extend boosting (and do not move the kept best iteration)."""
    train = _frame(8000, seed=5, new_regime_from=1.0)
    every_gain = conversion.fit(train, SPEC, replace(SETTINGS, early_stopping_min_delta=0.0, refit=False))
    coarse = conversion.fit(train, SPEC, replace(SETTINGS, early_stopping_min_delta=0.01, refit=False))
    assert coarse.booster.current_iteration() < every_gain.booster.current_iteration()
    with pytest.raises(ValueError, match="min_delta"):
        replace(SETTINGS, early_stopping_min_delta=-0.1)
