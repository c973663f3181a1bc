"""Model settings (the ``conversion:`` and ``repurchase:`` sections)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ConversionSettings:
    horizon_days: int = 7  # label: purchase within N days after the scoring point
    active_days: int = 30  # scoring: visitors active in the last D days
    min_positives: int = 200  # eligibility: training needs at least this many of each class
    min_negatives: int = 200
    backtest_weeks: int = 4  # evaluation window after the cutoff
    training_weeks: int = 26  # history used for training before the cutoff
    input: Literal["auto", "events", "sessions"] = "auto"  # auto: a sessions source when it has rows, else events
    purchase_event_types: tuple[str, ...] = ("purchase",)  # checkout-complete events: label side, never features
    # training/evaluation population: "retargeting" = sessions that ended without a purchase (the audience an
    # ad can still convert); "all" also scores sessions just before their own checkout completes (live intent)
    population: Literal["retargeting", "all"] = "all"
    n_estimators: int = 1000  # LightGBM boosting rounds at most (early stopping on a later time slice)
    learning_rate: float = 0.05
    num_leaves: int = 15  # small, well-filled leaves: finer, less tied scores in the low tail
    min_child_samples: int = 200
    early_stopping_metric: Literal["auc", "binary_logloss"] = "auc"  # on the validation slice
    early_stopping_rounds: int = 50  # rounds without improvement before boosting stops
    # an improvement smaller than this (in the metric's units) does not count: on large data the validation
    # AUC creeps up by 1e-5 per round for hundreds of rounds that do not help the next weeks
    early_stopping_min_delta: float = 0.0001
    # after early stopping, fit the same number of trees again on every training row (the validation and
    # calibration slices are the latest weeks); calibration stays the early-stopped model's, on unseen rows
    refit: bool = True
    threads: int = 0  # LightGBM/BLAS threads when fitting; 0: every core this process may use (threads wait passively)
    validation_share: float = 0.15  # latest training share before calibration: early stopping
    calibration_share: float = 0.15  # latest training share: Platt calibration of the probabilities
    # larger training slices are hash-sampled: positives fill at most half (all of them when fewer), negatives
    # the rest; the calibration undoes the sampling
    max_training_rows: int = 1_000_000
    rows_per_tree: int = 350_000  # LightGBM bagging: each tree fits a fresh sample of this many rows (when more)
    max_bin: int = 63  # LightGBM histogram bins per numeric feature
    gate_tolerance: float = 0.005  # champion moves unless backtest ROC-AUC is this much worse

    def __post_init__(self) -> None:
        if min(self.max_bin, self.max_training_rows, self.rows_per_tree) < 2:
            raise ValueError("conversion.max_bin, max_training_rows and rows_per_tree must be at least 2")
        if self.threads < 0:
            raise ValueError("conversion.threads must be 0 (every core) or more")
        if self.early_stopping_min_delta < 0:
            raise ValueError("conversion.early_stopping_min_delta must be 0 or more")


@dataclass(frozen=True)
class RepurchaseSettings:
    horizon_weeks: int = 8  # weeks ahead predicted per person x category
    min_positives: int = 200
    min_negatives: int = 200
    training_cutoffs: int = 24  # rolling training cutoffs (origins) before the calibration slice
    cutoff_spacing_weeks: int = 2  # weeks between training cutoffs
    max_weeks_at_risk: int = 52  # weeks after a purchase a person stays at risk
    categories: tuple[str, ...] = ()  # restrict to these categories (default: all seen in orders)
    max_training_rows: int = 2_000_000  # person-weeks; beyond this, persons are hash-sampled
    n_estimators: int = 200  # LightGBM boosting rounds
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_child_samples: int = 200  # LightGBM leaf size: larger is smoother on small workspaces
    threads: int = 2  # LightGBM threads (more than the free cores slows it down a lot)
    gate_tolerance: float = 0.005  # champion moves unless ROC-AUC (within H weeks) drops more than this
