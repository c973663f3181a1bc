"""Evaluation metrics shared by the models: ranking, probability quality and the retargeting saving.

Every function takes plain arrays of 0/1 labels ``y`` and predicted probabilities ``p`` (any model kind),
so the conversion and repurchase backtests report the same numbers the same way. Figures are standalone
matplotlib ``Figure`` objects (no pyplot state), ready for ``mlflow.log_figure`` or a notebook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score, roc_curve

KEEP_LEVELS = (0.95, 0.99)  # shares of conversions kept when reporting the audience reduction


def _arrays(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y, dtype=np.int8).ravel()
    p_arr = np.asarray(p, dtype=np.float64).ravel()
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"labels ({y_arr.size}) and probabilities ({p_arr.size}) differ in length")
    return y_arr, p_arr


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < y.size


def roc_auc(y: Any, p: Any) -> float:
    """Area under the ROC curve; NaN when only one class is present (undefined, not 0.5)."""
    y, p = _arrays(y, p)
    return float(roc_auc_score(y, p)) if _both_classes(y) else float("nan")


def pr_auc(y: Any, p: Any) -> float:
    """Average precision (area under the precision-recall curve): informative under class imbalance."""
    y, p = _arrays(y, p)
    return float(average_precision_score(y, p)) if _both_classes(y) else float("nan")


def logloss(y: Any, p: Any) -> float:
    y, p = _arrays(y, p)
    return float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])) if y.size else float("nan")


def brier(y: Any, p: Any) -> float:
    y, p = _arrays(y, p)
    return float(brier_score_loss(y, p)) if y.size else float("nan")


def _ranked(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative positives and audience sizes at the end of each block of tied scores (highest first).

    Ties are kept together: an audience cut-off cannot split people with the same score.
    """
    order = np.argsort(-p, kind="stable")
    p_sorted, y_sorted = p[order], y[order]
    cum_pos = np.cumsum(y_sorted)
    last_of_tie = np.r_[p_sorted[1:] != p_sorted[:-1], True]
    sizes = np.flatnonzero(last_of_tie) + 1
    return sizes, cum_pos[last_of_tie]


def audience_reduction(y: Any, p: Any, keep: float = 0.99) -> float:
    """Share of the audience that can be dropped while the top-scored rest still holds ``keep`` of positives.

    1 - (smallest top-scored share of the audience containing at least ``keep`` of all positives);
    the retargeting saving when only the top of the ranking is targeted. NaN without positives.
    """
    y, p = _arrays(y, p)
    total = int(y.sum())
    if total == 0 or y.size == 0:
        return float("nan")
    return _reduction(*_ranked(y, p), keep)


def _reduction(sizes: np.ndarray, cum_pos: np.ndarray, keep: float) -> float:
    """1 - the smallest tie-block cut-off holding ``keep`` of the positives (last entries are the totals)."""
    idx = int(np.argmax(cum_pos >= keep * cum_pos[-1] - 1e-9))
    return float(1.0 - sizes[idx] / sizes[-1])


def audience_reduction_interval(y: Any, p: Any, keep: float = 0.99, groups: Any = None, replicates: int = 200,
                                level: float = 0.9, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of ``audience_reduction``: how much the saving moves with the sample.

    The 99 % point is decided by the few lowest-scored positives (1 % of a few hundred is a handful), so a
    single figure says little. Resampling whole ``groups`` (e.g. visitors, whose sessions are correlated)
    with replacement gives the ``level`` interval; ties stay unsplit as in ``audience_reduction``.
    """
    y, p = _arrays(y, p)
    if int(y.sum()) == 0:
        return float("nan"), float("nan")
    codes = (np.arange(y.size) if groups is None
             else pd.factorize(pd.Series(np.asarray(groups, dtype=object)).fillna("(none)"))[0])
    n_groups = int(codes.max()) + 1
    order = np.argsort(-p, kind="stable")
    p_sorted, codes_sorted = p[order], codes[order]
    # a replicate needs only the positives' running weight (where the cut falls) and one partial sum (the
    # audience left out), not running sums over every row: half the time on a 2M-row window (7 s, was 16 s)
    tie_ends = np.flatnonzero(np.r_[p_sorted[1:] != p_sorted[:-1], True])
    positive_rows = np.flatnonzero(y[order])
    cut_of_positive = tie_ends[np.searchsorted(tie_ends, positive_rows)]  # last row of each positive's tie block
    positive_codes = codes_sorted[positive_rows]
    rows_per_group = np.bincount(codes, minlength=n_groups).astype(np.float64)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(replicates):
        weight = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups).astype(np.float64)
        cum_pos = np.cumsum(weight[positive_codes])
        if cum_pos.size and cum_pos[-1] > 0:
            first = int(np.argmax(cum_pos >= keep * cum_pos[-1] - 1e-9))
            cut = int(cut_of_positive[first])
            total = float((weight * rows_per_group).sum())  # not `@`: BLAS threads spin on a busy machine
            # the audience left out, summed over the shorter side of the cut
            dropped = (float(weight[codes_sorted[cut + 1:]].sum()) if 2 * (cut + 1) > codes_sorted.size
                       else total - float(weight[codes_sorted[:cut + 1]].sum()))
            values.append(dropped / total)
    if not values:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _auc_influence(y: np.ndarray, p: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[float, np.ndarray]:
    """ROC-AUC and each group's summed influence on it (DeLong's placement values, ties counted half)."""
    order = np.argsort(p, kind="stable")
    p_sorted, y_sorted = p[order], y[order]
    blocks = np.r_[0, np.cumsum(p_sorted[1:] != p_sorted[:-1])]
    n_blocks = int(blocks[-1]) + 1
    negatives = np.bincount(blocks, 1 - y_sorted, minlength=n_blocks)
    positives = np.bincount(blocks, y_sorted, minlength=n_blocks)
    n_pos, n_neg = float(positives.sum()), float(negatives.sum())
    # a positive's share of negatives scored below it; a negative's share of positives scored above it
    below = (np.cumsum(negatives) - negatives + 0.5 * negatives) / n_neg
    above = (n_pos - np.cumsum(positives) + 0.5 * positives) / n_pos
    auc = float((positives * below).sum() / n_pos)
    influence = np.where(y_sorted == 1, (below[blocks] - auc) / n_pos, (above[blocks] - auc) / n_neg)
    return auc, np.bincount(codes[order], influence, minlength=n_groups)


def roc_auc_gain_interval(y: Any, p: Any, baselines: Mapping[str, Any], groups: Any = None,
                          level: float = 0.9) -> dict[str, tuple[float, float]]:
    """Interval of the ROC-AUC gain of ``p`` over each baseline's scores on the same rows (paired).

    "Clearly above the baseline" needs more than two point estimates. Both models rank the same rows, so
    the gain's spread is far smaller than either AUC's: DeLong's variance of the paired difference, with
    placement values summed per group first (visitors, whose sessions are correlated; Obuchowski's
    clustered form). One sort per model, so it costs seconds on millions of rows where a bootstrap of
    re-ranked replicates would take minutes.
    """
    from scipy.stats import norm

    y, p = _arrays(y, p)
    if not _both_classes(y):
        return {name: (float("nan"), float("nan")) for name in baselines}
    codes = (np.arange(y.size) if groups is None
             else pd.factorize(pd.Series(np.asarray(groups, dtype=object)).fillna("(none)"))[0])
    n_groups = int(codes.max()) + 1
    y_float = y.astype(np.float64)
    auc, influence = _auc_influence(y_float, p, codes, n_groups)
    z = float(norm.ppf((1 + level) / 2))
    out = {}
    for name, values in baselines.items():
        base_auc, base_influence = _auc_influence(y_float, _arrays(y, values)[1], codes, n_groups)
        spread = z * float(np.sqrt(n_groups / max(n_groups - 1, 1) * np.square(influence - base_influence).sum()))
        out[name] = (auc - base_auc - spread, auc - base_auc + spread)
    return out


def cumulative_gains(y: Any, p: Any, points: int = 20) -> pd.DataFrame:
    """Share of positives captured by the top x% of the audience, at ``points`` evenly spaced shares."""
    y, p = _arrays(y, p)
    shares = np.linspace(0, 1, points + 1)
    if y.size == 0:
        return pd.DataFrame({"audience_share": shares, "positives_share": np.nan, "lift": np.nan})
    sizes, cum_pos = _ranked(y, p)
    total = max(int(y.sum()), 1)
    sizes_all = np.r_[0, sizes]
    pos_all = np.r_[0, cum_pos]
    captured = np.interp(shares * y.size, sizes_all, pos_all) / total
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(shares > 0, captured / shares, np.nan)
    return pd.DataFrame({"audience_share": shares, "positives_share": captured, "lift": lift})


def calibration_table(y: Any, p: Any, bins: int = 10) -> pd.DataFrame:
    """Mean predicted vs observed rate per probability decile (quantile bins, so each holds enough rows)."""
    y, p = _arrays(y, p)
    frame = pd.DataFrame({"y": y, "p": p})
    if frame.empty:
        return pd.DataFrame(columns=["bin", "rows", "mean_predicted", "observed_rate", "p_min", "p_max"])
    ranks = frame["p"].rank(method="first")
    frame["bin"] = np.minimum((ranks - 1) * bins // len(frame), bins - 1).astype(int) + 1
    out = frame.groupby("bin").agg(rows=("y", "size"), mean_predicted=("p", "mean"), observed_rate=("y", "mean"),
                                   p_min=("p", "min"), p_max=("p", "max")).reset_index()
    return out


def expected_calibration_error(y: Any, p: Any, bins: int = 10) -> float:
    table = calibration_table(y, p, bins)
    if table.empty:
        return float("nan")
    return float((table["rows"] * (table["mean_predicted"] - table["observed_rate"]).abs()).sum() / table["rows"].sum())


def summary(y: Any, p: Any, keep_levels: Sequence[float] = KEEP_LEVELS) -> dict[str, float]:
    """All scalar metrics of one model on one window, with MLflow-friendly keys."""
    y_arr, p_arr = _arrays(y, p)
    is_probability = bool(p_arr.size) and float(p_arr.min()) >= 0.0 and float(p_arr.max()) <= 1.0
    nan = float("nan")
    out = {
        "rows": float(y_arr.size),
        "positives": float(y_arr.sum()),
        "base_rate": float(y_arr.mean()) if y_arr.size else nan,
        "roc_auc": roc_auc(y_arr, p_arr),
        "pr_auc": pr_auc(y_arr, p_arr),
        # scores that are not probabilities (rankings, heuristics) get ranking metrics only
        "log_loss": logloss(y_arr, p_arr) if is_probability else nan,
        "brier": brier(y_arr, p_arr) if is_probability else nan,
        "ece": expected_calibration_error(y_arr, p_arr) if is_probability else nan,
    }
    for keep in keep_levels:
        out[f"audience_reduction_{round(keep * 100)}"] = audience_reduction(y_arr, p_arr, keep)
    return out


# --- figures ------------------------------------------------------------------------------------------

def _figure(width: float, height: float):
    """A standalone Figure (no pyplot state, any backend): safe in scripts, threads and notebooks."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def roc_figure(curves: Mapping[str, tuple[Any, Any]], title: str = "ROC"):
    """ROC curves of several models (name -> (y, p)) on the same window."""
    fig, ax = _figure(5, 5)
    for name, (y, p) in curves.items():
        y_arr, p_arr = _arrays(y, p)
        if not _both_classes(y_arr):
            continue
        fpr, tpr, _ = roc_curve(y_arr, p_arr)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(y_arr, p_arr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def gains_figure(curves: Mapping[str, tuple[Any, Any]], title: str = "Cumulative gains",
                 keep_levels: Sequence[float] = KEEP_LEVELS):
    """Cumulative gains of several models; horizontal lines mark the kept shares of positives."""
    fig, ax = _figure(5, 5)
    for name, (y, p) in curves.items():
        gains = cumulative_gains(y, p, points=100)
        ax.plot(gains["audience_share"], gains["positives_share"], label=name)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="random")
    for keep in keep_levels:
        ax.axhline(keep, color="grey", linewidth=0.6, linestyle="--")
    ax.set(xlabel="share of audience targeted (top scored)", ylabel="share of positives captured", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def calibration_figure(y: Any, p: Any, title: str = "Calibration", bins: int = 10):
    """Observed rate against mean predicted probability per decile."""
    table = calibration_table(y, p, bins)
    fig, ax = _figure(5, 5)
    top = float(max(table["mean_predicted"].max(), table["observed_rate"].max(), 0.01)) if len(table) else 1.0
    ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1)
    ax.plot(table["mean_predicted"], table["observed_rate"], marker="o")
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title=title)
    fig.tight_layout()
    return fig


def importance_figure(importance: Mapping[str, float], title: str = "Feature importance (gain)", top: int = 25):
    """Horizontal bar chart of the ``top`` most important features."""
    items = sorted(importance.items(), key=lambda kv: kv[1], reverse=True)[:top][::-1]
    fig, ax = _figure(6, max(2.5, 0.25 * len(items) + 1))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set(xlabel="importance", title=title)
    fig.tight_layout()
    return fig
