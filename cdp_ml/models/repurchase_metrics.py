"""Repurchase-specific evaluation: concordance, weekly segments and weekly calibration, with figures.

ROC/PR-AUC are computed here from one sort (equal to scikit-learn's); gains charts come from
:mod:`cdp_ml.models.metrics`. Every function here takes per-track matrices of shape (tracks, H): weekly
probabilities of the next purchase (``p_week``), and which weeks each track actually bought in (``bought``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


def next_purchase_week(bought: np.ndarray) -> np.ndarray:
    """First week (1..H) with a purchase per track; 0 when none in the horizon."""
    any_ = bought.any(axis=1)
    return np.where(any_, bought.argmax(axis=1) + 1, 0)


def concordance(time: np.ndarray, event: np.ndarray, predicted_time: np.ndarray) -> float:
    """Harrell's C for discrete times: share of comparable pairs ordered correctly by predicted time.

    A pair is comparable when the earlier time is an observed purchase; ties in prediction count half.
    Vectorised per distinct event time (H values), so it scales to millions of tracks.
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    pred = np.asarray(predicted_time, dtype=float)
    concordant = 0.0
    comparable = 0.0
    values = np.unique(time)
    by_time = {v: np.sort(pred[time == v]) for v in values}  # each track sorted once, not once per earlier time
    for t in np.unique(time[event]):
        early = np.sort(pred[event & (time == t)])
        for v in values[values > t]:
            later = by_time[v]
            right = np.searchsorted(later, early, side="right")
            left = np.searchsorted(later, early, side="left")
            concordant += (len(later) - right).sum() + 0.5 * (right - left).sum()
            comparable += len(early) * len(later)
    return float(concordant / comparable) if comparable else float("nan")


def ranking_aucs(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """ROC-AUC and average precision (PR-AUC) from one sort, as scikit-learn computes them.

    Millions of tracks, three horizons, three models and three track sets: scikit-learn sorts twice per
    call with a stable sort; here one quicksort serves both (ties are grouped into one threshold anyway).
    """
    y = np.asarray(y, dtype=bool)
    score = np.asarray(score, dtype=float)
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        return float("nan"), float("nan")
    order = np.argsort(-score)
    ranked = score[order]
    ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # last index of each distinct score
    tps = np.cumsum(y[order])[ends].astype(float)
    fps = (ends + 1) - tps
    tpr = np.r_[0.0, tps / positives]
    fpr = np.r_[0.0, fps / fps[-1]]
    roc = float(np.trapezoid(tpr, fpr))
    precision = tps / (tps + fps)
    pr = float(np.sum(np.diff(tpr) * precision))
    return roc, pr


def top_share(score: np.ndarray, actual: np.ndarray, share: float = 0.10) -> tuple[float, float]:
    """Precision and recall of the top ``share`` of tracks by score (a weekly predicted segment)."""
    n = max(1, int(round(len(score) * share)))
    n = min(n, len(score))
    # the first n of a stable descending sort, without sorting millions of tracks: everything above the
    # n-th largest score, then the earliest tracks tied with it
    threshold = np.partition(score, len(score) - n)[len(score) - n]
    above = score > threshold
    tied = np.flatnonzero(score == threshold)[:n - int(above.sum())]
    hits = actual[above].sum() + actual[tied].sum()
    total = actual.sum()
    return float(hits / n), float(hits / total) if total else float("nan")


def within(p_week: np.ndarray, k: int) -> np.ndarray:
    return p_week[:, :k].sum(axis=1)


def summary(name: str, p_week: np.ndarray, bought: np.ndarray, expected_week: np.ndarray,
            weeks: tuple[int, ...]) -> dict[str, float]:
    """Scalar metrics of one model on one backtest window, with MLflow-friendly keys."""
    first = next_purchase_week(bought)
    horizon = p_week.shape[1]
    out: dict[str, float] = {}
    for k in weeks:
        y = ((first > 0) & (first <= k)).astype(int)
        out[f"roc_auc_{k}w"], out[f"pr_auc_{k}w"] = ranking_aucs(y, within(p_week, k))
        out[f"base_rate_{k}w"] = float(y.mean())
    precision, recall = zip(*(top_share(p_week[:, k], bought[:, k]) for k in range(horizon)), strict=True)
    out["precision_top10"] = float(np.nanmean(precision))
    out["recall_top10"] = float(np.nanmean(recall))
    out["concordance"] = concordance(np.where(first > 0, first, horizon + 1), first > 0, expected_week)
    predicted = p_week.sum(axis=0)
    actual = np.bincount(first[first > 0], minlength=horizon + 1)[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        errors = np.abs(predicted - actual) / np.maximum(actual, 1)
    out["weekly_calibration_max_error"] = float(errors.max())
    out["weekly_calibration_mean_error"] = float(errors.mean())
    return {f"{name}_{k}" if name else k: v for k, v in out.items()}


def weekly_table(models: Mapping[str, np.ndarray], bought: np.ndarray, week_start: list) -> pd.DataFrame:
    """Per week: actual next purchases, each model's predicted count, and top-10% segment precision/recall."""
    first = next_purchase_week(bought)
    horizon = bought.shape[1]
    table = pd.DataFrame({"week": np.arange(1, horizon + 1), "week_start": week_start,
                          "actual_next_purchases": np.bincount(first[first > 0], minlength=horizon + 1)[1:],
                          "actual_buyers": bought.sum(axis=0)})
    for name, p_week in models.items():
        table[f"predicted_{name}"] = p_week.sum(axis=0).round(1)
        pr = [top_share(p_week[:, k], bought[:, k]) for k in range(horizon)]
        table[f"precision_top10_{name}"] = [round(p, 3) for p, _ in pr]
        table[f"recall_top10_{name}"] = [round(r, 3) for _, r in pr]
    return table


def weekly_calibration_figure(table: pd.DataFrame, title: str = "Next purchases per week: predicted vs actual"):
    """Bars of actual next purchases per week with each model's predicted count as a line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(table["week"], table["actual_next_purchases"], color="#cccccc", label="actual")
    for col in table.columns:
        if col.startswith("predicted_"):
            ax.plot(table["week"], table[col], marker="o", label=col.removeprefix("predicted_"))
    ax.set_xlabel("week after cutoff")
    ax.set_ylabel("persons x categories")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def weekly_by_category(category: np.ndarray, models: Mapping[str, np.ndarray], bought: np.ndarray) -> pd.DataFrame:
    """Long table: category, week, actual next purchases and each model's predicted count."""
    first = next_purchase_week(bought)
    horizon = bought.shape[1]
    actual = pd.crosstab(pd.Series(category, name="category"), pd.Series(first, name="week"))
    actual = actual.reindex(columns=range(1, horizon + 1), fill_value=0)
    parts = {"actual_next_purchases": actual.stack()}
    for name, p_week in models.items():
        wide = pd.DataFrame(p_week, columns=range(1, horizon + 1)).groupby(category).sum()
        wide.columns.name, wide.index.name = "week", "category"
        parts[f"predicted_{name}"] = wide.stack().round(1)
    return pd.DataFrame(parts).fillna(0).reset_index()


def category_calibration_figure(table: pd.DataFrame):
    """Small multiples of :func:`weekly_calibration_figure`, one panel per category."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cats = list(dict.fromkeys(table["category"]))
    cols = min(3, len(cats))
    rows = (len(cats) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, cat in zip(axes.ravel(), cats, strict=False):
        part = table[table["category"] == cat]
        ax.bar(part["week"], part["actual_next_purchases"], color="#cccccc", label="actual")
        for col in part.columns:
            if col.startswith("predicted_"):
                ax.plot(part["week"], part[col], marker="o", label=col.removeprefix("predicted_"))
        ax.set_title(cat)
    for ax in axes.ravel()[len(cats):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Next purchases per week and category: predicted vs actual")
    fig.tight_layout()
    return fig


# Where a model wins or loses against BG/NBD: its ranking within segments of what BG/NBD itself reads
# (frequency, recency, age of the track). Upper bounds of the segment (weeks / purchase days), inclusive.
SEGMENTS: dict[str, tuple[tuple[float, str], ...]] = {
    "purchase days": ((1, "1"), (3, "2-3"), (9, "4-9"), (np.inf, "10+")),
    "weeks since last purchase": ((2, "0-2"), (4, "2-4"), (8, "4-8"), (16, "8-16"), (np.inf, "16+")),
    "weeks since first purchase": ((13, "0-13"), (26, "13-26"), (52, "26-52"), (np.inf, "52+")),
}


def segment_labels(values: np.ndarray, bounds: tuple[tuple[float, str], ...]) -> pd.Categorical:
    """The label of the first segment whose upper bound is at least the value (categories in bound order)."""
    edges = np.array([b for b, _ in bounds])
    names = [n for _, n in bounds]
    codes = np.searchsorted(edges, np.asarray(values, dtype=float), side="left").clip(max=len(edges) - 1)
    return pd.Categorical.from_codes(codes, categories=names)


def segment_table(segments: Mapping[str, pd.Categorical], models: Mapping[str, np.ndarray], bought: np.ndarray,
                  weeks: tuple[int, ...]) -> pd.DataFrame:
    """Per segmentation and segment: tracks, share buying within k weeks, and per model the mean predicted
    share and the ROC-AUC of "buys within k" among the segment's tracks (NaN when all or none buy).

    ``segments``: per segmentation one label per track; ``models``: weekly probabilities (tracks x H).
    """
    first = next_purchase_week(bought)
    bought_by = {k: (first > 0) & (first <= k) for k in weeks}
    scores = {(name, k): within(p_week, k) for name, p_week in models.items() for k in weeks}  # once, not per segment
    rows = []
    for segmentation, labels in segments.items():
        codes = np.asarray(labels.codes)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(labels.categories) + 1))
        for code, label in enumerate(labels.categories):
            idx = order[bounds[code]:bounds[code + 1]]
            if not len(idx):
                continue
            row: dict[str, object] = {"segmentation": segmentation, "segment": label, "tracks": len(idx)}
            for k in weeks:
                y = bought_by[k][idx]
                row[f"bought_{k}w"] = float(y.mean())
                for name in models:
                    score = scores[(name, k)][idx]
                    row[f"{name}_predicted_{k}w"] = float(score.mean())
                    row[f"{name}_roc_auc_{k}w"] = ranking_aucs(y, score)[0]
            rows.append(row)
    return pd.DataFrame(rows)
