"""Repurchase timing: in which of the next H weeks is each person back in market for each category.

A discrete-time hazard model: LightGBM estimates P(next purchase in week k | none in weeks 1..k-1) for
every person x category track (and the person-level any-category track) from features measured at an
origin (see :mod:`cdp_ml.features.repurchase`); the weekly hazards multiply into the probability of the
next purchase in each week, the cumulative probability and the expected week. It is fitted on rolling
training cutoffs and Platt-calibrated on the latest full window before the cutoff, and compared in every
backtest with BG/NBD and with the naive "last purchase + median own interval" rule.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cdp_ml.engine import bounded_memory
from cdp_ml.errors import CdpError, NotEnoughData
from cdp_ml.features import repurchase as fr
from cdp_ml.models import bgnbd
from cdp_ml.models import repurchase_metrics as rm
from cdp_ml.workspace import Workspace, last_completed_week_end

# LightGBM's OpenMP threads spin at every barrier by default: on a machine busier than its cores (a weekly
# refresh next to other jobs) two threads burnt 2.4x the CPU of a passive wait for the same trees (fit of
# 0.9M person-weeks: 60 CPU-s vs 25, load 3.5 on 2 cores). Read once when LightGBM's OpenMP runtime loads,
# so it only applies when this module is imported first; a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

log = logging.getLogger(__name__)
MODEL_NAME = "repurchase-timing"
EXPERIMENT = "repurchase-timing"
TAIL_WEEKS = 104  # expected week: geometric tail of the last weekly hazard, capped at two years


class _Clock:
    """Wall seconds per phase of a run: logged, kept on the result, reported by the benchmark."""

    def __init__(self, what: str):
        self.what = what
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self._last, 1)
        self._last = now
        log.info("repurchase %s: %s %.1f s", self.what, phase, self.seconds[phase])

try:  # the pyfunc base class only matters when MLflow saves the model; keep imports light otherwise
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency
    _PythonModel = object  # type: ignore[misc,assignment]


# BG/NBD posterior quantities as hazard features: a smooth summary of frequency and recency per track,
# with population parameters fitted on data before the earliest training origin (point-in-time).
BGNBD_FEATURES = ("bg_p_alive", "bg_hazard", "bg_within")


def bgnbd_feature_params(frame: pd.DataFrame) -> dict[str, bgnbd.BgNbdParams]:
    """Per-category BG/NBD parameters from the earliest origin's tracks (week-level purchase counts)."""
    first = frame[frame["origin"] == frame["origin"].min()]
    params: dict[str, bgnbd.BgNbdParams] = {}
    for category, group in [("", first), *first.groupby("category", sort=True, observed=True)]:
        if len(group) >= 50:
            params[str(category)] = bgnbd.fit(*_week_inputs(group))
    return params


def _week_inputs(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BG/NBD (x, t_x, T) in weeks from distinct purchase days, as the baseline uses them."""
    if "n_days" not in frame:  # person-periods of an older feature set: week-level counts
        T = frame["tenure_weeks"].to_numpy(dtype=float)
        return (frame["n_weeks_bought"].to_numpy(dtype=float) - 1,
                T - frame["weeks_since_origin"].to_numpy(dtype=float), T)
    return (frame["n_days"].to_numpy(dtype=float) - 1, frame["t_x_exact"].to_numpy(dtype=float),
            frame["age_exact"].to_numpy(dtype=float))


def _bgnbd_features(rows: pd.DataFrame, params: dict[str, bgnbd.BgNbdParams]) -> pd.DataFrame:
    out = pd.DataFrame(np.nan, index=rows.index, columns=list(BGNBD_FEATURES))
    x, t_x, T = _week_inputs(rows)
    step = rows["step"].to_numpy(dtype=float)
    for category, idx in rows.groupby(rows["category"].astype(str), sort=False).indices.items():
        p = params.get(category, params.get(""))
        if p is None:
            continue
        before = bgnbd.prob_no_purchase(p, x[idx], t_x[idx], T[idx], step[idx] - 1)
        after = bgnbd.prob_no_purchase(p, x[idx], t_x[idx], T[idx], step[idx])
        out.iloc[idx, 0] = bgnbd.p_alive(p, x[idx], t_x[idx], T[idx])
        out.iloc[idx, 1] = 1 - after / np.maximum(before, 1e-12)
        out.iloc[idx, 2] = 1 - after
    return out


def _bgnbd_grids(weeks: fr.TrackWeeks, params: dict[str, bgnbd.BgNbdParams]) -> dict[str, np.ndarray]:
    """:func:`_bgnbd_features` of every track x week 1..H from one survival curve per track.

    P(alive) once per track and P(no purchase by week k) once per k instead of twice per row; the same
    elementwise arithmetic, so the values equal the row-wise ones.
    """
    n, horizon = len(weeks.frame), weeks.horizon
    out = {name: np.full((n, horizon), np.nan) for name in BGNBD_FEATURES}
    x, t_x, T = _week_inputs(weeks.frame)
    t = np.arange(horizon + 1, dtype=float)[None, :]
    category = weeks.frame["category"].astype(str)
    for cat, idx in category.groupby(category, sort=False).indices.items():
        p = params.get(cat, params.get(""))
        if p is None:
            continue
        survival = bgnbd.prob_no_purchase(p, x[idx][:, None], t_x[idx][:, None], T[idx][:, None], t)
        out["bg_p_alive"][idx] = bgnbd.p_alive(p, x[idx], t_x[idx], T[idx])[:, None]
        out["bg_hazard"][idx] = 1 - survival[:, 1:] / np.maximum(survival[:, :-1], 1e-12)
        out["bg_within"][idx] = 1 - survival[:, 1:]
    return {name: grid.ravel() for name, grid in out.items()}


class HazardModel(_PythonModel):
    """Fitted weekly hazard: LightGBM + Platt calibration + the category vocabulary it was trained on."""

    def __init__(self, booster: Any, features: list[str], categories: list[str], platt: tuple[float, float],
                 horizon: int, max_weeks_at_risk: int, peaks: tuple[str, ...],
                 bg_params: dict[str, bgnbd.BgNbdParams] | None = None):
        self.booster = booster
        self.features = features
        self.categories = categories
        self.platt = platt
        self.horizon = horizon
        self.max_weeks_at_risk = max_weeks_at_risk
        self.peaks = peaks
        self.bg_params = bg_params or {}

    @property
    def inputs(self) -> list[str]:
        """Columns of person-period rows the model reads (its pyfunc input)."""
        extra = ["weeks_since_origin", "tenure_weeks", "n_weeks_bought", "n_days", "t_x_exact", "age_exact"]
        return list(dict.fromkeys([f for f in self.features if f not in BGNBD_FEATURES] + extra))

    def design(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The model's feature matrix for person-period rows."""
        x = rows[[f for f in self.features if f not in BGNBD_FEATURES]].copy()
        if any(f in BGNBD_FEATURES for f in self.features):
            x = pd.concat([x, _bgnbd_features(rows, self.bg_params)], axis=1)
        x = x[self.features]
        names = rows["category"].astype(str)  # a category unseen in training is missing (pandas 4 would raise)
        x["category"] = pd.Categorical(names.where(names.isin(self.categories)), categories=self.categories)
        return x

    def matrix(self, rows: pd.DataFrame | fr.TrackWeeks) -> np.ndarray:
        """The feature matrix as LightGBM sees ``design(rows)``: one float array, the category as its code.

        Filled column by column: scoring millions of person-weeks through a DataFrame costs several
        full copies (select, concat, reorder, LightGBM's own conversion) for the same numbers. ``rows`` may
        be the person-period rows or the :class:`~cdp_ml.features.repurchase.TrackWeeks` of a prediction.
        """
        weeks = rows if isinstance(rows, fr.TrackWeeks) else None
        bg: dict[str, np.ndarray] | None = None
        if any(f in BGNBD_FEATURES for f in self.features):
            if weeks is not None:
                bg = _bgnbd_grids(weeks, self.bg_params)
            else:
                bg = {k: v.to_numpy(dtype=float) for k, v in _bgnbd_features(rows, self.bg_params).items()}
        out = np.empty((len(rows), len(self.features)), dtype=np.float64, order="F")  # filled by column
        for j, name in enumerate(self.features):
            if name == "category":
                source = weeks.frame if weeks is not None else rows
                codes = pd.Index(self.categories).get_indexer(source["category"].astype(str))
                codes = np.where(codes < 0, np.nan, codes)  # unseen category: missing, as LightGBM does
                out[:, j] = weeks.repeat(codes) if weeks is not None else codes
            elif bg is not None and name in BGNBD_FEATURES:
                out[:, j] = bg[name]
            elif weeks is not None:
                out[:, j] = weeks.column(name)
            else:
                out[:, j] = rows[name].to_numpy(dtype=float, na_value=np.nan)
        return out

    def raw(self, rows: pd.DataFrame | fr.TrackWeeks) -> np.ndarray:
        """Uncalibrated hazard of the booster."""
        return self.booster.booster_.predict(self.matrix(rows), num_threads=max(1, int(self.booster.n_jobs or 1)))

    def hazard(self, rows: pd.DataFrame | fr.TrackWeeks) -> np.ndarray:
        """Calibrated P(purchase in the row's week | none since the origin)."""
        p = np.clip(self.raw(rows), 1e-6, 1 - 1e-6)
        a, b = self.platt
        return 1.0 / (1.0 + np.exp(-(a * np.log(p / (1 - p)) + b)))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        return self.hazard(model_input)


@dataclass(frozen=True)
class Forecast:
    """Per-track weekly forecast of one model: matrices of shape (tracks, H)."""

    p_week: np.ndarray
    p_cumulative: np.ndarray
    expected_week: np.ndarray


def forecast_from_hazard(h: np.ndarray) -> Forecast:
    survival = np.cumprod(1.0 - h, axis=1)
    before = np.hstack([np.ones((len(h), 1)), survival[:, :-1]])
    p_week = before * h
    horizon = h.shape[1]
    last = np.clip(h[:, -1], 1e-6, 1.0)
    q = 1.0 - last
    tail_len = TAIL_WEEKS - horizon - 1
    tail = survival[:, -1] * q * (1 - q ** tail_len) / np.maximum(1 - q, 1e-12)  # sum_{j>=1} S_H q^j
    expected = 1.0 + before[:, 1:].sum(axis=1) + survival[:, -1] + tail
    return Forecast(p_week, 1.0 - survival, expected)


def forecast_from_survival(s: np.ndarray) -> Forecast:
    """From survival at weeks 0..H (shape tracks x H+1), e.g. BG/NBD's P(no purchase by week k)."""
    p_week = s[:, :-1] - s[:, 1:]
    h = np.where(s[:, :-1] > 0, p_week / np.maximum(s[:, :-1], 1e-12), 0.0)
    return Forecast(p_week, 1.0 - s[:, 1:], forecast_from_hazard(np.clip(h, 0, 1)).expected_week)


def _platt(raw: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """Logistic recalibration of the logit (order-preserving, so ranking metrics are untouched)."""
    from sklearn.linear_model import LogisticRegression

    if label.sum() < 20 or label.sum() == len(label):
        return 1.0, 0.0
    p = np.clip(raw, 1e-6, 1 - 1e-6)
    lr = LogisticRegression(C=1e6).fit(np.log(p / (1 - p))[:, None], label)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


@dataclass(frozen=True)
class _Window:
    """Everything pulled from the warehouse for one fit (and optionally one evaluation window)."""

    inputs: fr.Inputs
    train: pd.DataFrame
    calibration: pd.DataFrame
    test: pd.DataFrame | None
    bgnbd: pd.DataFrame | None
    naive: pd.DataFrame | None
    sample: float
    season: pd.DataFrame  # buyers per category and week before the end (seasonal index)


def _origins(end: date, horizon: int, n: int, spacing: int) -> tuple[date, list[date]]:
    calibration = end - timedelta(weeks=horizon)
    return calibration, [calibration - timedelta(weeks=spacing * j) for j in range(1, n + 1)]


def _load(ws: Workspace, end: date, horizon: int, evaluate: bool) -> _Window:
    """Read training (and test) person-periods; the connection is closed before any model is fitted."""
    data_end = end + timedelta(weeks=horizon) if evaluate else end
    s = ws.config.repurchase
    with ws.connect() as con, bounded_memory(con):
        # a fit alone reads only its sample of persons: the preparation aggregates no one else
        inputs = fr.prepare(con, data_end, end, s.categories,
                            sample=None if evaluate else lambda tracks: _training_sample(s, horizon, tracks))
        return _read_window(ws, con, inputs, end, horizon, evaluate)


def _training_sample(s: Any, horizon: int, tracks: int) -> float:
    """Share of persons whose person-weeks are fitted: about ``max_training_rows`` of them."""
    expected_rows = tracks * s.training_cutoffs * horizon * 0.5  # about half the window at risk on average
    return min(1.0, s.max_training_rows / max(expected_rows, 1.0))


def _read_window(ws: Workspace, con: Any, inputs: fr.Inputs, end: date, horizon: int, evaluate: bool) -> _Window:
    """Person-periods of the training origins, the calibration origin and (evaluating) the cutoff itself."""
    s = ws.config.repurchase
    calibration, train_origins = _origins(end, horizon, s.training_cutoffs, s.cutoff_spacing_weeks)
    if evaluate and _last_day(con) < end + timedelta(weeks=horizon - 1):
        raise CdpError(f"repurchase backtest: the data ends {_last_day(con)}, before the last of the {horizon} "
                       f"weeks after cutoff {end}; choose an earlier --cutoff or a smaller --horizon-weeks")
    season = fr.season_table(con, end)
    sample = _training_sample(s, horizon, fr.tracks_before(con, inputs, end))
    train = fr.track_frame(con, inputs, train_origins, horizon, s.max_weeks_at_risk, sample)
    calib = fr.track_frame(con, inputs, [calibration], horizon, s.max_weeks_at_risk, sample)
    test = bg = naive = None
    if evaluate:
        test = fr.track_frame(con, inputs, [end], horizon, s.max_weeks_at_risk)
        bg = fr.bgnbd_frame(con, end)
        naive = fr.naive_frame(con, end)
    return _Window(inputs, train, calib, test, bg, naive, sample, season)


def _last_day(con) -> date:
    return con.execute("select max(day) from rp_orders").fetchall()[0][0]


def _fit(ws: Workspace, window: _Window, horizon: int, end: date) -> tuple[HazardModel, dict[str, Any]]:
    """Fit LightGBM on the training cutoffs and Platt-calibrate it on the latest full window."""
    import lightgbm as lgb

    s = ws.config.repurchase
    peaks = ws.config.features.holiday_peaks
    categories = [fr.ANY, *window.inputs.categories]
    rows = fr.expand(window.train, horizon, None, peaks, categories, stop_at_purchase=True, season=window.season)
    positives = int(rows["label"].sum()) if len(rows) else 0
    negatives = int(len(rows) - positives)
    if positives < s.min_positives or negatives < s.min_negatives:
        raise NotEnoughData(
            f"repurchase: not enough history before {end} to train: {positives} repurchases and {negatives} "
            f"waiting weeks in {s.training_cutoffs} training windows (need {s.min_positives} and {s.min_negatives}; "
            f"settings repurchase.min_positives / min_negatives, or use a later date)")
    features = [*fr.FEATURES, *BGNBD_FEATURES]
    model = lgb.LGBMClassifier(
        n_estimators=s.n_estimators, learning_rate=s.learning_rate, num_leaves=s.num_leaves,
        min_child_samples=s.min_child_samples, subsample=0.8, subsample_freq=1, colsample_bytree=0.8, reg_lambda=1.0,
        max_bin=63, random_state=7, deterministic=True, force_row_wise=True, n_jobs=max(1, s.threads), verbose=-1)
    hazard = HazardModel(model, features, categories, (1.0, 0.0), horizon, s.max_weeks_at_risk, tuple(peaks),
                         bgnbd_feature_params(window.train))
    model.fit(hazard.matrix(rows), rows["label"].to_numpy(), feature_name=features,
              categorical_feature=[features.index("category")])
    calib_rows = fr.expand(window.calibration, horizon, None, peaks, categories, stop_at_purchase=True,
                           season=window.season)
    if len(calib_rows):
        hazard.platt = _platt(hazard.raw(calib_rows), calib_rows["label"].to_numpy())
    info = {"training_rows": len(rows), "training_positives": positives,
            "calibration_rows": len(calib_rows), "training_sample": window.sample,
            "training_frame": rows}
    return hazard, info


def predict(model: HazardModel, frame: pd.DataFrame, peaks: tuple[str, ...], season: pd.DataFrame,
            chunk_tracks: int = 250_000) -> Forecast:
    """Forecast all H weeks of every (origin, track) row, a bounded number of tracks at a time."""
    h = np.empty((len(frame), model.horizon))
    for i in range(0, len(frame), chunk_tracks):
        weeks = fr.TrackWeeks(frame.iloc[i:i + chunk_tracks], model.horizon, peaks, season)
        h[i:i + chunk_tracks] = model.hazard(weeks).reshape(-1, model.horizon)
    return forecast_from_hazard(h)


def _bgnbd_forecast(bg: pd.DataFrame, test: pd.DataFrame, horizon: int) -> tuple[Forecast, dict[str, str]]:
    """BG/NBD fitted per category track set (any-category on its own), predicted for the test tracks."""
    params: dict[str, bgnbd.BgNbdParams] = {}
    pooled = None
    for category, group in bg.groupby("category", sort=True):
        if len(group) >= 50:
            params[str(category)] = bgnbd.fit(group["x"].to_numpy(), group["t_x"].to_numpy(), group["T"].to_numpy())
    if fr.ANY not in params:
        pooled = bgnbd.fit(bg["x"].to_numpy(), bg["t_x"].to_numpy(), bg["T"].to_numpy())
    merged = test[["person_id", "category"]].merge(bg, on=["person_id", "category"], how="left")
    survival = np.ones((len(merged), horizon + 1))
    weeks = np.arange(horizon + 1)[None, :]
    for category, idx in merged.groupby("category", sort=False).indices.items():
        p = params.get(str(category), params.get(fr.ANY, pooled))
        part = merged.iloc[idx]
        survival[idx] = bgnbd.prob_no_purchase(p, part["x"].to_numpy()[:, None], part["t_x"].to_numpy()[:, None],
                                               part["T"].to_numpy()[:, None], weeks)
    return forecast_from_survival(survival), {k: str(v) for k, v in params.items()}


def _naive_forecast(naive: pd.DataFrame, test: pd.DataFrame, cutoff: date, horizon: int) -> Forecast:
    """Next purchase expected at last purchase + median own interval (overdue tracks: week 1)."""
    merged = test[["person_id", "category"]].merge(naive, on=["person_id", "category"], how="left")
    due = pd.to_datetime(merged["last_week"]) + pd.to_timedelta(merged["interval_weeks"] * 7, unit="D")
    week = np.floor((due - pd.Timestamp(cutoff)).dt.days.to_numpy() / 7).astype(int) + 1
    week = np.maximum(week, 1)
    p_week = (week[:, None] == np.arange(1, horizon + 1)[None, :]).astype(float)
    return Forecast(p_week, np.cumsum(p_week, axis=1), week.astype(float))


def _bought(frame: pd.DataFrame, horizon: int) -> np.ndarray:
    mask = frame["mask"].to_numpy(dtype=np.int64)
    return ((mask[:, None] >> np.arange(horizon)[None, :]) & 1).astype(bool)


@dataclass(frozen=True)
class BacktestResult:
    """Model vs baselines on the H weeks after a cutoff (trained strictly before it)."""

    cutoff: date
    horizon_weeks: int
    tracks: int
    persons: int
    categories: tuple[str, ...]
    training_rows: int
    training_positives: int
    metrics: pd.DataFrame = field(repr=False)  # one row per model x track set, metric columns
    weekly: pd.DataFrame = field(repr=False)  # per week: predicted vs actual next purchases per model
    importance: pd.DataFrame = field(repr=False)
    weekly_by_category: pd.DataFrame = field(repr=False)  # category x week: actual vs predicted next purchases
    within_horizon: pd.DataFrame = field(repr=False)  # per track: bought within H (y) and each model's score
    bgnbd_params: dict[str, str] = field(default_factory=dict)
    out: Path | None = None
    run_id: str | None = None
    note: str = ""
    phase_seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per phase of this run
    # per track set and segment (purchase days, recency, age): model vs BG/NBD ranking, see segment_comparison
    segments: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    def comparison(self) -> pd.DataFrame:
        keys = [f"roc_auc_{k}w" for k in _weeks(self.horizon_weeks)] + \
               [f"pr_auc_{k}w" for k in _weeks(self.horizon_weeks)] + \
               ["precision_top10", "recall_top10", "concordance", "weekly_calibration_max_error"]
        return self.metrics.set_index(["tracks", "model"])[keys].round(3)

    def segment_comparison(self, tracks: str = "(any)") -> pd.DataFrame:
        """ROC-AUC of model and BG/NBD within segments of the tracks (k = 4 and H weeks): where the model
        wins or loses against BG/NBD, by how often, how recently and how long ago a track first bought."""
        if self.segments.empty or tracks not in set(self.segments["tracks"]):
            return pd.DataFrame()
        part = self.segments[self.segments["tracks"] == tracks]
        keys = [f"{c}_{k}w" for k in _segment_weeks(self.horizon_weeks)
                for c in ("bought", "model_roc_auc", "bgnbd_roc_auc")]
        return part.set_index(["segmentation", "segment"])[["tracks_in_segment", *keys]].round(3)

    def top_features(self, n: int = 15) -> pd.DataFrame:
        return self.importance.head(n)

    def charts(self) -> dict[str, Any]:
        """Figures for people: weekly calibration (all and per category), gains within H, feature importance."""
        from cdp_ml.models import metrics as shared

        y = self.within_horizon["y"].to_numpy()
        return {
            "weekly_calibration": rm.weekly_calibration_figure(self.weekly),
            "weekly_calibration_by_category": rm.category_calibration_figure(self.weekly_by_category),
            "gains": shared.gains_figure({m: (y, self.within_horizon[m].to_numpy()) for m in ("model", "bgnbd", "naive")},
                                         title=f"Gains: buys within {self.horizon_weeks} weeks"),
            "importance": shared.importance_figure(dict(zip(self.importance["feature"], self.importance["gain"],
                                                            strict=True))),
        }

    def __str__(self) -> str:
        lines = [f"repurchase backtest: cutoff {self.cutoff}, {self.horizon_weeks} weeks, {self.tracks} person x "
                 f"category tracks of {self.persons} persons, categories: {', '.join(self.categories) or '(any) only'}",
                 f"trained on {self.training_rows} person-weeks ({self.training_positives} repurchases)"]
        if self.note:
            lines.append(self.note)
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            lines += ["", self.comparison().to_string(), "", "next purchases per week (predicted vs actual):",
                      self.weekly[["week", "week_start", "actual_next_purchases"]
                                  + [c for c in self.weekly if c.startswith("predicted_")]].to_string(index=False)]
            segments = self.segment_comparison()
            if not segments.empty:
                lines += ["", "(any) tracks by segment (share that bought, ROC-AUC of model and BG/NBD):",
                          segments.to_string()]
        if self.out:
            lines.append(f"predictions: {self.out}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return (f"<p>{str(self).splitlines()[0]}</p>" + self.comparison().to_html()
                + self.weekly.to_html(index=False))


def _weeks(horizon: int) -> tuple[int, ...]:
    return tuple(sorted({1, min(4, horizon), horizon}))


def _segment_weeks(horizon: int) -> tuple[int, ...]:
    """The k of the segment comparison: the targets' 4 and H weeks."""
    return tuple(sorted({min(4, horizon), horizon}))


@dataclass(frozen=True)
class _Evaluation:
    """What a backtest leaves for train's gate: the result, and the test tracks to score the champion on."""

    result: BacktestResult
    season: pd.DataFrame
    test_tracks: Callable[[], pd.DataFrame]  # read lazily: only a champion comparison needs them
    final: _Window | None = None  # train's window H weeks later, when read from the same preparation


class _StoredBacktest:
    """The latest backtest of a workspace, kept so that `train` right after `backtest` on the same window
    reuses it instead of fitting and scoring it again.

    Keyed by the cutoff, horizon, repurchase settings, the code of the model and its features, and a
    content hash of its inputs (orders, events and contacts up to the window's end, profiling objections
    at the cutoff): any change to what the backtest saw is a miss, and a hit prepares nothing.
    One entry per workspace in the workspace cache: aggregates and the test tracks' feature rows, no person
    ids (an erasure changes the inputs' hash, so it is never reused, and clears the cache).
    """

    def __init__(self, ws: Workspace):
        self.dir = ws.cache_dir / "repurchase_backtest"  # an erasure clears the cache folder

    @staticmethod
    def key(ws: Workspace, con: Any, cutoff: date, horizon: int) -> str:
        digest = hashlib.sha256()
        for module in (fr, bgnbd, rm, sys.modules[__name__]):
            digest.update(Path(str(module.__file__)).read_bytes())
        digest.update(repr((str(cutoff), horizon, ws.config.repurchase, tuple(ws.config.features.holiday_peaks),
                            fr.fingerprint(con, cutoff + timedelta(weeks=horizon), cutoff))).encode())
        return digest.hexdigest()

    def load(self, key: str) -> _Evaluation | None:
        try:
            if (self.dir / "key").read_text() != key:
                return None
            with open(self.dir / "result.pkl", "rb") as f:
                result, season = pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, TypeError, ValueError):
            return None  # missing, half-written or from an older class layout: just recompute
        test_path = self.dir / "test.parquet"
        return _Evaluation(result, season, lambda: pd.read_parquet(test_path))

    def save(self, key: str, ev: _Evaluation) -> None:
        """Write to a fresh folder and swap it in, so a reader never sees a mixed entry."""
        tmp = self.dir.with_name(self.dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # without person ids: the champion comparison needs only features, categories and window masks
        ev.test_tracks().drop(columns=["person_id"]).to_parquet(tmp / "test.parquet", index=False)
        with open(tmp / "result.pkl", "wb") as f:
            pickle.dump((_replace(ev.result, out=None), ev.season), f)
        (tmp / "key").write_text(key)
        shutil.rmtree(self.dir, ignore_errors=True)
        tmp.rename(self.dir)


def _evaluate(ws: Workspace, cutoff: date, horizon: int, out: Path | None, reuse: bool = False,
              then_fit: bool = False) -> _Evaluation:
    """Fit before ``cutoff`` and compare with the baselines on the H weeks after it.

    ``reuse``: return the stored backtest when it was computed on exactly the same inputs (train's gate).
    ``then_fit``: also read the training window of a fit at ``cutoff`` + H (train's final model) from the
    same preparation when :func:`~cdp_ml.features.repurchase.prepared_for` says it is identical.
    """
    store = _StoredBacktest(ws)
    clock = _Clock(f"backtest {cutoff}")
    with ws.connect() as con, bounded_memory(con):
        key = _StoredBacktest.key(ws, con, cutoff, horizon)
        stored = store.load(key) if reuse and out is None else None
        clock.lap("fingerprint")
        if stored is not None:
            return _Evaluation(_replace(stored.result, phase_seconds=clock.seconds), stored.season,
                               stored.test_tracks)
        allowed = ws.config.repurchase.categories
        inputs = fr.prepare(con, cutoff + timedelta(weeks=horizon), cutoff, allowed)
        clock.lap("prepare")
        window = _read_window(ws, con, inputs, cutoff, horizon, evaluate=True)
        clock.lap("person-periods")
        final = None
        as_of = cutoff + timedelta(weeks=horizon)
        same = fr.prepared_for(con, inputs, as_of, allowed) if then_fit else None
        if same is not None:
            final = _read_window(ws, con, same, as_of, horizon, evaluate=False)
            clock.lap("final person-periods")
    assert window.test is not None and window.bgnbd is not None and window.naive is not None
    if not len(window.test):
        raise CdpError(f"repurchase backtest: no person has a purchase in the {ws.config.repurchase.max_weeks_at_risk} "
                       f"weeks before cutoff {cutoff}")
    model, info = _fit(ws, window, horizon, cutoff)
    clock.lap("fit")
    peaks = tuple(ws.config.features.holiday_peaks)
    test = window.test
    fc = predict(model, test, peaks, window.season)
    clock.lap("score")
    bg, bg_params = _bgnbd_forecast(window.bgnbd, test, horizon)
    naive = _naive_forecast(window.naive, test, cutoff, horizon)
    clock.lap("baselines")
    forecasts = {"model": fc, "bgnbd": bg, "naive": naive}
    bought = _bought(test, horizon)
    weeks = _weeks(horizon)
    rows = []
    is_any = (test["category"] == fr.ANY).to_numpy()
    sets = {"(any)": is_any, "categories": ~is_any, "all": np.ones(len(test), dtype=bool)}
    for set_name, sel in sets.items():
        if not sel.any():
            continue
        for name, f in forecasts.items():
            m = rm.summary("", f.p_week[sel], bought[sel], f.expected_week[sel], weeks)
            rows.append({"tracks": set_name, "model": name, "n": int(sel.sum()), **m})
    table = pd.DataFrame(rows)
    week_starts = [cutoff + timedelta(weeks=k) for k in range(horizon)]
    weekly = rm.weekly_table({k: f.p_week for k, f in forecasts.items()}, bought, week_starts)
    importance = pd.DataFrame({"feature": model.features,
                               "gain": model.booster.booster_.feature_importance("gain")}
                              ).sort_values("gain", ascending=False, ignore_index=True)
    if out is not None:
        _write_predictions(out, test, forecasts, bought, week_starts)
    note = _targets_note(table, horizon)
    category = test["category"].astype(str).to_numpy()
    by_category = rm.weekly_by_category(category, {k: f.p_week for k, f in forecasts.items() if k != "naive"}, bought)
    first = rm.next_purchase_week(bought)
    within_h = pd.DataFrame({"y": (first > 0).astype(int), "category": category,
                             **{k: f.p_cumulative[:, -1] for k, f in forecasts.items()}})
    segments = _segments(test, {"model": fc.p_week, "bgnbd": bg.p_week}, bought, sets,
                         _segment_weeks(horizon))
    result = BacktestResult(cutoff, horizon, len(test), int(test["person_id"].nunique()),
                            window.inputs.categories, info["training_rows"], info["training_positives"],
                            table, weekly, importance, by_category, within_h, bg_params, out, None, note,
                            segments=segments)
    clock.lap("metrics")
    ev = _Evaluation(result, window.season, lambda: test)
    try:
        store.save(key, ev)
    except OSError:  # a read-only or full disk only costs the reuse
        pass
    clock.lap("store")
    return _Evaluation(_replace(result, phase_seconds=clock.seconds), window.season, lambda: test, final)


def _segments(test: pd.DataFrame, models: dict[str, np.ndarray], bought: np.ndarray, sets: dict[str, np.ndarray],
              weeks: tuple[int, ...]) -> pd.DataFrame:
    """:func:`~cdp_ml.models.repurchase_metrics.segment_table` of the (any) and the category tracks, by
    BG/NBD's own inputs: distinct purchase days, weeks since the last and since the first purchase."""
    values = {"purchase days": test["n_days"], "weeks since last purchase": test["recency_exact"],
              "weeks since first purchase": test["age_exact"]}
    parts = []
    for set_name in ("(any)", "categories"):
        sel = sets[set_name]
        if not sel.any():
            continue
        labels = {name: rm.segment_labels(v.to_numpy(dtype=float)[sel], rm.SEGMENTS[name]) for name, v in values.items()}
        table = rm.segment_table(labels, {k: p[sel] for k, p in models.items()}, bought[sel], weeks)
        parts.append(table.rename(columns={"tracks": "tracks_in_segment"}).assign(tracks=set_name))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _targets_note(table: pd.DataFrame, horizon: int) -> str:
    """One line: does the model beat BG/NBD on the any-category track by the project's targets."""
    t = table.set_index(["tracks", "model"])
    if ("(any)", "model") not in t.index:
        return ""
    m, b = t.loc[("(any)", "model")], t.loc[("(any)", "bgnbd")]
    parts = []
    for k in sorted({min(4, horizon), horizon}):
        parts.append(f"{k}w ROC-AUC {m[f'roc_auc_{k}w'] - b[f'roc_auc_{k}w']:+.3f}, "
                     f"PR-AUC {100 * (m[f'pr_auc_{k}w'] / b[f'pr_auc_{k}w'] - 1):+.0f}%")
    return "vs BG/NBD on (any): " + "; ".join(parts)


def _write_predictions(out: Path, test: pd.DataFrame, forecasts: dict[str, Forecast], bought: np.ndarray,
                       week_starts: list[date]) -> None:
    horizon = len(week_starts)
    n = len(test)
    frame = pd.DataFrame({
        "person_id": np.repeat(test["person_id"].to_numpy(), horizon),
        "category": np.repeat(test["category"].astype(str).to_numpy(), horizon),
        "week": np.tile(np.arange(1, horizon + 1), n),
        "week_start": np.tile(np.array(week_starts, dtype="datetime64[D]"), n),
        "p_week": forecasts["model"].p_week.ravel(),
        "p_cumulative": forecasts["model"].p_cumulative.ravel(),
        "actual": bought.ravel().astype(np.int8),
        "bgnbd_p_week": forecasts["bgnbd"].p_week.ravel(),
        "bgnbd_p_cumulative": forecasts["bgnbd"].p_cumulative.ravel(),
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".parquet", ".pq"):
        frame.to_parquet(out, index=False)
    elif out.suffix.lower() == ".csv":
        frame.to_csv(out, index=False)
    else:
        raise CdpError(f"--out {out.name}: use a .parquet or .csv file name")


def _log_evaluation(r: BacktestResult, prefix: str = "") -> None:
    """Metrics and figures of a backtest into the active MLflow run."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import mlflow

    flat: dict[str, float] = {}
    for row in r.metrics.to_dict("records"):
        tag = row["tracks"].strip("()")
        for key, value in row.items():
            if key in ("tracks", "model", "n") or value is None or not np.isfinite(value):
                continue
            flat[f"{prefix}{row['model']}_{tag}_{key}"] = float(value)
    mlflow.log_metrics(flat)
    with tempfile.TemporaryDirectory() as tmp:
        r.weekly.to_csv(Path(tmp) / "weekly_calibration.csv", index=False)
        r.metrics.to_csv(Path(tmp) / "comparison.csv", index=False)
        r.importance.to_csv(Path(tmp) / "feature_importance.csv", index=False)
        r.segments.to_csv(Path(tmp) / "segments.csv", index=False)
        mlflow.log_artifacts(tmp, artifact_path=f"{prefix}backtest")
    for name, fig in r.charts().items():
        mlflow.log_figure(fig, f"{prefix}backtest/{name}.png")
        plt.close(fig)


def backtest(ws: Workspace, cutoff: date, horizon_weeks: int | None = None, out: Path | None = None,
             parent_run_id: str | None = None) -> BacktestResult:
    """Train strictly before ``cutoff`` and evaluate the next H weeks against BG/NBD and the naive rule."""
    from cdp_ml import tracking

    if cutoff is None:
        raise CdpError("repurchase backtest: give --cutoff YYYY-MM-DD")
    horizon = horizon_weeks or ws.config.repurchase.horizon_weeks
    if horizon < 1 or horizon > 26:
        raise CdpError(f"--horizon-weeks {horizon}: use 1..26 weeks")
    week = fr.monday(cutoff)
    ev = _evaluate(ws, week, horizon, out)
    note = ev.result.note
    if week != cutoff:
        note = f"cutoff {cutoff} is not a Monday: evaluated ISO weeks from {week}; " + note
    with tracking.run(ws, EXPERIMENT, f"backtest {week}", parent_run_id=parent_run_id) as run:
        import mlflow

        mlflow.log_params({"cutoff": str(week), "horizon_weeks": horizon, "tracks": ev.result.tracks,
                           "categories": ",".join(ev.result.categories) or "(any)"})
        _log_evaluation(ev.result)
        run_id = run.info.run_id
    return _replace(ev.result, run_id=run_id, note=note)


def _replace(result: BacktestResult, **changes: Any) -> BacktestResult:
    from dataclasses import replace

    return replace(result, **changes)


def default_as_of(ws: Workspace) -> date:
    """The Monday after the last complete week of orders (the data's 'now')."""
    with ws.connect() as con:
        from cdp_ml.engine import table_exists

        if not table_exists(con, "person_orders"):
            fr.prepare(con, date.max, date.max)  # raises the right 'run resolve / ingest' error
        last = con.execute("select max(ordered_at)::date from person_orders").fetchall()[0][0]
    if last is None:
        raise CdpError("repurchase: the warehouse has no orders and no purchase events; map an orders source (or "
                       "events with purchases) and run `cdp-ml ingest` and `cdp-ml resolve`")
    return last_completed_week_end(min(last + timedelta(days=1), date.today()))


@dataclass(frozen=True)
class TrainResult:
    as_of: date
    version: str
    promoted: bool
    gate_reason: str
    backtest: BacktestResult
    champion_backtest: dict[str, float] | None
    run_id: str
    phase_seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per phase (gate backtest first)

    def headline(self) -> dict[str, float]:
        """ROC-AUC of "buys within k weeks" for the person-level track, model vs BG/NBD (k = 4 and H)."""
        t = self.backtest.metrics.set_index(["tracks", "model"])
        out = {}
        for k in sorted({min(4, self.backtest.horizon_weeks), self.backtest.horizon_weeks}):
            for name in ("model", "bgnbd"):
                if ("(any)", name) in t.index and np.isfinite(t.loc[("(any)", name), f"roc_auc_{k}w"]):
                    out[f"roc_auc_{k}w_{name}"] = float(t.loc[("(any)", name), f"roc_auc_{k}w"])
        return out

    def __str__(self) -> str:
        state = "promoted to champion" if self.promoted else "not promoted"
        return (f"repurchase-timing v{self.version} trained on data before {self.as_of}: {state} ({self.gate_reason})\n"
                f"gate backtest:\n{self.backtest}")

    def _repr_html_(self) -> str:
        return f"<p>{str(self).splitlines()[0]}</p>" + self.backtest._repr_html_()


def train(ws: Workspace, as_of: date | None = None, parent_run_id: str | None = None) -> TrainResult:
    """Backtest on the last H weeks before ``as_of``, fit on everything before it, register, gate."""
    import lightgbm
    import mlflow
    import sklearn
    from mlflow.models import infer_signature

    from cdp_ml import tracking

    s = ws.config.repurchase
    horizon = s.horizon_weeks
    as_of = fr.monday(as_of or default_as_of(ws))
    cutoff = as_of - timedelta(weeks=horizon)
    ev = _evaluate(ws, cutoff, horizon, None, reuse=True, then_fit=True)
    clock = _Clock(f"train {as_of}")
    gate_metric = f"model_any_roc_auc_{horizon}w"
    new_value = float(ev.result.metrics.set_index(["tracks", "model"]).loc[("(any)", "model"), f"roc_auc_{horizon}w"])
    champion = tracking.champion_version(ws, MODEL_NAME)
    champion_value = None
    champion_metrics = None
    bgnbd_value = float(ev.result.metrics.set_index(["tracks", "model"]).loc[("(any)", "bgnbd"), f"roc_auc_{horizon}w"])
    champion_as_of = (champion.tags or {}).get("as_of") if champion is not None else None
    saw_window = champion_as_of is not None and date.fromisoformat(champion_as_of) > cutoff
    if saw_window:
        # the champion was fitted on part of the gate window: beating it there is not a fair test, so the
        # new model must instead not be worse than BG/NBD on that window
        gate_metric, champion_value = f"(any) roc_auc_{horizon}w vs BG/NBD (champion saw the window)", bgnbd_value
    elif champion is not None:
        try:
            old = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion").unwrap_python_model()
            test = ev.test_tracks()
            fc = predict(old, test, tuple(ws.config.features.holiday_peaks), ev.season)
            if fc.p_week.shape[1] == horizon:
                sel = (test["category"] == fr.ANY).to_numpy()
                bought = _bought(test, horizon)
                champion_metrics = rm.summary("", fc.p_week[sel], bought[sel], fc.expected_week[sel], _weeks(horizon))
                champion_value = champion_metrics[f"roc_auc_{horizon}w"]
        except Exception as exc:  # noqa: BLE001 - an unreadable champion must not block a new model
            champion_metrics = {"error": str(exc)[:200]}  # type: ignore[dict-item]
    clock.lap("champion comparison")
    window = ev.final or _load(ws, as_of, horizon, evaluate=False)  # prepared once with the gate backtest
    clock.lap("person-periods")
    model, info = _fit(ws, window, horizon, as_of)
    clock.lap("fit")
    frame = info["training_frame"]
    with tracking.run(ws, EXPERIMENT, f"train {as_of}", parent_run_id=parent_run_id) as run:
        mlflow.log_params({"as_of": str(as_of), "horizon_weeks": horizon, "training_cutoffs": s.training_cutoffs,
                           "cutoff_spacing_weeks": s.cutoff_spacing_weeks, "max_weeks_at_risk": s.max_weeks_at_risk,
                           "n_estimators": s.n_estimators, "learning_rate": s.learning_rate,
                           "num_leaves": s.num_leaves, "categories": ",".join(window.inputs.categories) or "(any)",
                           "training_sample": round(window.sample, 4), "gate_backtest_cutoff": str(cutoff),
                           "platt_a": round(model.platt[0], 4), "platt_b": round(model.platt[1], 4)})
        fp = tracking.fingerprint(frame[[*fr.FEATURES, "origin", "label"]], time_column="origin")
        mlflow.log_dict(fp, "dataset_fingerprint.json")
        mlflow.log_metrics({"training_rows": info["training_rows"], "training_positives": info["training_positives"]})
        _log_evaluation(ev.result, prefix="gate_")
        # integer counts typed as doubles: a scoring frame may hold missing values there (MLflow's hint);
        # no input example is stored (the signature says enough, and rows stay out of the tracking store)
        example = frame[model.inputs].head(50)
        example = example.astype({c: "float64" for c in example.columns if pd.api.types.is_integer_dtype(example[c])})
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        info_model = mlflow.pyfunc.log_model(
            name="model", python_model=model, registered_model_name=MODEL_NAME,
            signature=infer_signature(example, model.hazard(example)),
            pip_requirements=[f"lightgbm=={lightgbm.__version__}", f"scikit-learn=={sklearn.__version__}"])
        version = str(info_model.registered_model_version)
        tracking.setup(ws).set_model_version_tag(MODEL_NAME, version, "as_of", str(as_of))
        gate = tracking.promote_if_not_worse(ws, MODEL_NAME, version, gate_metric, new_value, champion_value,
                                             tolerance=s.gate_tolerance)
        mlflow.log_metric("gate_promoted", float(gate["promoted"]))
        if champion_value is not None:
            mlflow.log_metric("gate_champion_value", champion_value)
        run_id = run.info.run_id
    clock.lap("register")
    phases = {f"gate {k}": v for k, v in ev.result.phase_seconds.items()} | clock.seconds
    return TrainResult(as_of, version, bool(gate["promoted"]), gate["reason"], ev.result, champion_metrics, run_id,
                       phases)


@dataclass(frozen=True)
class ScoreResult:
    as_of: date
    model_version: str
    tracks: int
    persons: int
    rows: int
    expected_next_purchases: pd.DataFrame = field(repr=False)  # per category x week

    def __str__(self) -> str:
        pivot = self.expected_next_purchases.pivot(index="category", columns="week", values="expected").round(1)
        return (f"repurchase_scores as of {self.as_of}: {self.rows} rows for {self.tracks} tracks of {self.persons} "
                f"persons (model v{self.model_version})\nexpected next purchases per week:\n{pivot.to_string()}")

    def _repr_html_(self) -> str:
        pivot = self.expected_next_purchases.pivot(index="category", columns="week", values="expected").round(1)
        return f"<p>{str(self).splitlines()[0]}</p>" + pivot.to_html()


SCORES_DDL = """
create table if not exists repurchase_scores (
    as_of date, person_id varchar, category varchar, week integer, week_start date,
    p_week double, p_cumulative double, expected_week double, model_version varchar)
"""


def load_champion(ws: Workspace) -> tuple[HazardModel, str]:
    import mlflow

    from cdp_ml import tracking

    version = tracking.champion_version(ws, MODEL_NAME)
    if version is None:
        raise CdpError("repurchase: no champion model yet; run `cdp-ml train repurchase` first")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion").unwrap_python_model()
    return model, str(version.version)


def fit(ws: Workspace, as_of: date) -> HazardModel:
    """The hazard model fitted on data strictly before ``as_of`` (no evaluation, no MLflow)."""
    horizon = ws.config.repurchase.horizon_weeks
    model, _ = _fit(ws, _load(ws, as_of, horizon, evaluate=False), horizon, as_of)
    return model


def forecast_tracks(ws: Workspace, model: HazardModel, as_of: date) -> tuple[pd.DataFrame, Forecast]:
    """Every track at risk at ``as_of`` (features from data before it) and its weekly forecast."""
    with ws.connect() as con, bounded_memory(con):
        inputs = fr.prepare(con, as_of, as_of, ws.config.repurchase.categories, first_origin=as_of)
        frame = fr.track_frame(con, inputs, [as_of], model.horizon, model.max_weeks_at_risk)
        season = fr.season_table(con, as_of)
    fc = predict(model, frame, tuple(ws.config.features.holiday_peaks), season)
    return frame, fc


def score(ws: Workspace, as_of: date | None = None) -> ScoreResult:
    """Weekly next-purchase probabilities of every track at risk, into ``repurchase_scores`` (idempotent)."""
    model, version = load_champion(ws)
    as_of = fr.monday(as_of or default_as_of(ws))
    horizon = model.horizon
    frame, fc = forecast_tracks(ws, model, as_of)
    n = len(frame)
    category = frame["category"].astype(str).to_numpy()
    # one row per track with its H weekly values as columns; DuckDB unnests the weeks (no repeated strings)
    tracks = pd.DataFrame({"person_id": frame["person_id"].to_numpy(), "category": category,
                           "expected_week": fc.expected_week,
                           **{f"p{k}": fc.p_week[:, k - 1] for k in range(1, horizon + 1)},
                           **{f"c{k}": fc.p_cumulative[:, k - 1] for k in range(1, horizon + 1)}})
    p_week = ", ".join(f"p{k}" for k in range(1, horizon + 1))
    p_cumulative = ", ".join(f"c{k}" for k in range(1, horizon + 1))
    with ws.connect() as con:
        con.execute(SCORES_DDL)
        con.register("rp_scores", tracks)
        con.execute("begin transaction")
        con.execute("delete from repurchase_scores where as_of = ?", [as_of])
        con.execute(f"""
            insert into repurchase_scores
            select ?::date, person_id, category, week::integer, ?::date + (7 * (week - 1))::integer, p_week,
                   p_cumulative, expected_week, ?
            from (select person_id, category, expected_week, unnest(range(1, {horizon + 1})) as week,
                         unnest([{p_week}]) as p_week, unnest([{p_cumulative}]) as p_cumulative
                  from rp_scores)""", [as_of, as_of, version])
        con.execute("commit")
        con.unregister("rp_scores")
    weekly = pd.DataFrame(fc.p_week, columns=range(1, horizon + 1)).groupby(category).sum()
    expected = weekly.rename_axis(index="category", columns="week").stack().rename("expected").reset_index()
    return ScoreResult(as_of, version, n, int(frame["person_id"].nunique()), n * horizon, expected)
