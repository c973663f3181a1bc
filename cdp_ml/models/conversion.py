"""Conversion intent: will a visitor purchase within N days after a browsing session?

Three stage functions share one recipe: ``backtest`` (train strictly before a cutoff, evaluate the weeks
after it against two baselines), ``train`` (backtest on the last weeks before as-of as the quality gate,
fit on everything before as-of, register in MLflow, move ``champion`` only when not worse) and ``score``
(the champion scores the retargeting audience into ``conversion_scores``).

The model is LightGBM on time-ordered slices of the training window: the oldest part fits the trees, the
next slice early-stops them, the latest slice calibrates the probabilities (Platt scaling on the raw
score: monotone, so the ranking and ROC-AUC are untouched). Classes are balanced with
``scale_pos_weight``; categorical features go to LightGBM natively with levels fixed at training time.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep instead of spinning (before lightgbm loads)

import lightgbm as lgb  # noqa: E402
import mlflow.pyfunc
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from cdp_ml import tracking
from cdp_ml.engine import bounded_memory
from cdp_ml.errors import CdpError, NotEnoughData
from cdp_ml.features import conversion as feats
from cdp_ml.models import metrics
from cdp_ml.models.settings import ConversionSettings
from cdp_ml.privacy.profiling import profiling_excluded_sql
from cdp_ml.workspace import Workspace

MODEL_NAME = "conversion-intent"
EXPERIMENT = "conversion-intent"
ID_COLUMNS = ("session_id", "person_id", "anonymous_id")
MAX_LEVELS = 100  # categorical levels kept per feature (most frequent); rarer ones count as missing
BASELINE_ROWS = 300_000  # logistic-regression baseline fits on at most this many training rows
log = logging.getLogger(__name__)  # seconds per modelling phase (INFO)
ENGAGEMENT_TIERS = ("n_checkout_starts", "n_cart_adds", "n_product_views")  # heuristic: deepest funnel step first


# --- the model ------------------------------------------------------------------------------------------

class ConversionModel:
    """LightGBM booster + Platt calibration + the feature layout it was trained on (picklable)."""

    threads = 1  # prediction threads: set where it trains or scores (each row is scored alone: any count, same result)

    def __init__(self, booster: lgb.Booster, numeric: tuple[str, ...], categorical: tuple[str, ...],
                 levels: dict[str, list[str]], platt: tuple[float, float], kind: str, horizon_days: int):
        self.booster = booster
        self.numeric = tuple(numeric)
        self.categorical = tuple(categorical)
        self.levels = levels
        self.platt = platt
        self.kind = kind
        self.horizon_days = horizon_days

    @property
    def features(self) -> tuple[str, ...]:
        return self.numeric + self.categorical

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The feature matrix in training layout; unseen categorical levels become missing."""
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise CdpError(f"conversion model expects feature columns {', '.join(missing)} that the data lacks")
        out = pd.DataFrame(index=frame.index)
        for col in self.numeric:
            out[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        for col in self.categorical:
            values = frame[col].astype("object")
            values = values.where(values.isin(self.levels[col]), None)
            out[col] = pd.Categorical(values, categories=self.levels[col])
        return out

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        return self.booster.predict(self.matrix(frame), raw_score=True, num_threads=self.threads)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of a purchase within the horizon."""
        a, b = self.platt
        return 1.0 / (1.0 + np.exp(-(a * self.raw_score(frame) + b)))

    def importance(self) -> dict[str, float]:
        gains = self.booster.feature_importance(importance_type="gain")
        return {name: float(g) for name, g in zip(self.booster.feature_name(), gains, strict=True)}


class ConversionPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper: ``predict`` returns calibrated probabilities for a feature frame.

    ``model_input`` is typed as a DataFrame: MLflow then skips type-hint validation (the signature is given
    explicitly at logging) instead of warning about an untyped ``predict``, a warning our filters cannot catch
    because MLflow resets them around class creation.
    """

    def __init__(self, model: ConversionModel):
        self.model = model

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.Series:
        return pd.Series(self.model.predict(model_input), name="probability")


def _time_slices(n: int, s: ConversionSettings) -> tuple[slice, slice, slice]:
    n_cal = max(int(round(n * s.calibration_share)), 1)
    n_val = max(int(round(n * s.validation_share)), 1)
    n_fit = n - n_cal - n_val
    return slice(0, n_fit), slice(n_fit, n_fit + n_val), slice(n_fit + n_val, n)


def check_eligible(train: pd.DataFrame, s: ConversionSettings, what: str = "training data") -> None:
    """Stop with the counts instead of fitting a useless model on too little data."""
    pos = int(train["label"].sum())
    neg = int(len(train) - pos)
    if pos < s.min_positives or neg < s.min_negatives:
        raise NotEnoughData(f"conversion {what} is too small: {pos} converting and {neg} non-converting scoring points "
                            f"(need conversion.min_positives={s.min_positives} and min_negatives={s.min_negatives}); "
                            f"use more history (conversion.training_weeks) or an earlier cutoff")


def fit(train: pd.DataFrame, spec: feats.PointsSpec, s: ConversionSettings) -> ConversionModel:
    """Fit the calibrated LightGBM on a time-ordered training frame (rows sorted by ``scored_at``)."""
    check_eligible(train, s)
    positive_share = float(train.attrs.get("positive_share", 1.0))  # classes hash-sampled when fetched
    negative_share = float(train.attrs.get("negative_share", 1.0))
    fit_part, val_part, cal_part = (train.iloc[sl] for sl in _time_slices(len(train), s))
    for name, part in (("early-stopping", val_part), ("calibration", cal_part)):
        if part["label"].nunique() < 2:
            raise CdpError(f"conversion training: the {name} slice (latest {len(part)} scoring points) has a single "
                           f"class; use more history (conversion.training_weeks)")
    levels = {}
    for col in spec.categorical:
        counts = fit_part[col].dropna().astype(str).value_counts()
        counts = counts[counts >= 5]
        levels[col] = sorted(counts.index[:MAX_LEVELS].tolist())
    shell = ConversionModel(None, spec.numeric, spec.categorical, levels, (1.0, 0.0), spec.kind,  # type: ignore[arg-type]
                            spec.label_lag_days)
    shell.threads = _cores()  # prediction (Platt, evaluation): each row alone, any thread count gives the same scores
    dtrain = lgb.Dataset(shell.matrix(fit_part), label=fit_part["label"].to_numpy(),
                         categorical_feature=list(spec.categorical), free_raw_data=True)
    dvalid = lgb.Dataset(shell.matrix(val_part), label=val_part["label"].to_numpy(), reference=dtrain)
    started = time.perf_counter()
    stop = lgb.early_stopping(s.early_stopping_rounds, verbose=False, min_delta=s.early_stopping_min_delta)
    booster = lgb.train(_lgb_params(fit_part, s), dtrain, num_boost_round=s.n_estimators, valid_sets=[dvalid],
                        callbacks=[stop])
    shell.booster = _trimmed(booster)
    trees = shell.booster.current_iteration()
    log.info("conversion fit: %d rows, %d trees in %.1fs", len(fit_part), trees, time.perf_counter() - started)
    # Platt on scores the trees never saw: the early-stopped model's on the calibration slice
    a, b = _platt(shell.raw_score(cal_part), cal_part["label"].to_numpy())
    if s.refit:
        # the same number of trees on every training row: the latest 30 % (the weeks closest to what is scored)
        # would otherwise never shape the ranking. Same trees and learning rate give about the same score scale,
        # so the calibration above carries over (measured: log loss no worse)
        del dtrain, dvalid
        started = time.perf_counter()
        shell.booster = lgb.train(_lgb_params(train, s), lgb.Dataset(
            shell.matrix(train), label=train["label"].to_numpy(), categorical_feature=list(spec.categorical),
            free_raw_data=True), num_boost_round=trees)
        log.info("conversion refit: %d rows, %d trees in %.1fs", len(train), trees, time.perf_counter() - started)
    # keeping positives with probability qp and negatives with qn multiplies the odds by qp / qn: shifting the
    # intercept by log(qn / qp) undoes it
    shell.platt = (a, b + math.log(negative_share) - math.log(positive_share))
    return shell


def _lgb_params(rows: pd.DataFrame, s: ConversionSettings) -> dict[str, Any]:
    """LightGBM parameters for fitting on ``rows``: class weight and bagging follow its size."""
    pos = int(rows["label"].sum())
    params = {
        "objective": "binary", "metric": s.early_stopping_metric, "learning_rate": s.learning_rate, "num_leaves": s.num_leaves,
        "min_child_samples": s.min_child_samples, "feature_fraction": 0.9, "lambda_l2": 1.0,
        "scale_pos_weight": (len(rows) - pos) / max(pos, 1), "max_cat_to_onehot": 8, "cat_smooth": 20,
        "deterministic": True, "force_col_wise": True, "seed": 7, "verbose": -1,
        "num_threads": _threads(s), "max_bin": s.max_bin,
    }
    if len(rows) > s.rows_per_tree:  # a round costs in proportion to its rows: sample them on large slices
        params.update(bagging_fraction=s.rows_per_tree / len(rows), bagging_freq=1)
    return params


def _trimmed(booster: lgb.Booster) -> lgb.Booster:
    """A booster holding only the best iteration's trees (so predict needs no num_iteration)."""
    best = booster.best_iteration or booster.current_iteration()
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))


def _platt(raw: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e6, max_iter=1000).fit(raw.reshape(-1, 1), y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


# --- baselines ------------------------------------------------------------------------------------------

def _logistic_baseline(train: pd.DataFrame, spec: feats.PointsSpec):
    """Logistic regression on the same features (median-imputed, scaled; one-hot categoricals)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    if len(train) > BASELINE_ROWS:
        train = train.iloc[np.linspace(0, len(train) - 1, BASELINE_ROWS).astype(int)]
    signed_log = FunctionTransformer(lambda x: np.sign(x) * np.log1p(np.abs(x)))
    parts = [("num", make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), signed_log,
                                   StandardScaler()), list(spec.numeric))]
    if spec.categorical:
        parts.append(("cat", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=20, max_categories=30),
                      list(spec.categorical)))
    pipe = make_pipeline(ColumnTransformer(parts), LogisticRegression(max_iter=500, C=1.0))
    pipe.fit(_baseline_frame(train, spec), train["label"].to_numpy())
    return pipe


def _baseline_frame(frame: pd.DataFrame, spec: feats.PointsSpec) -> pd.DataFrame:
    out = pd.DataFrame(index=frame.index)
    for col in spec.numeric:
        out[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    for col in spec.categorical:
        out[col] = frame[col].astype("object").where(frame[col].notna(), "(missing)").astype(str)
    return out


def _heuristic(train: pd.DataFrame, spec: feats.PointsSpec):
    """Recency/engagement rule a marketer would use, returning a scoring function.

    Events: deepest funnel step reached in the session (checkout > cart > product views), then more recent
    visits in the last 30 days. A sessions source has no known funnel columns: the single numeric column
    that ranks the training data best (sign-adjusted) is the rule.
    """
    if spec.kind == "events":
        def score(frame: pd.DataFrame) -> np.ndarray:
            tiers = sum(1e6 * (3 - i) * (frame[c].fillna(0).to_numpy() > 0) for i, c in enumerate(ENGAGEMENT_TIERS))
            return tiers + np.minimum(frame["n_product_views"].fillna(0).to_numpy(), 99) * 1e3 \
                + np.minimum(frame["sessions_30d"].fillna(0).to_numpy(), 999)
        return score, "funnel depth, then product views and visits in 30 days"
    best, best_auc, sign = None, 0.5, 1.0
    for col in spec.numeric:
        values = pd.to_numeric(train[col], errors="coerce").fillna(0).to_numpy()
        auc = metrics.roc_auc(train["label"], values)
        if np.isnan(auc):
            continue
        if max(auc, 1 - auc) > best_auc:
            best, best_auc, sign = col, max(auc, 1 - auc), (1.0 if auc >= 0.5 else -1.0)
    if best is None:
        return (lambda frame: np.zeros(len(frame))), "constant (no informative numeric column)"
    return (lambda frame: sign * pd.to_numeric(frame[best], errors="coerce").fillna(0).to_numpy()), \
        f"{'' if sign > 0 else '-'}{best}"


# --- results --------------------------------------------------------------------------------------------

def _metrics_table(per_model: dict[str, dict[str, float]]) -> str:
    keys = ("roc_auc", "pr_auc", "log_loss", "brier", "audience_reduction_95", "audience_reduction_99")
    head = f"  {'model':<12}" + "".join(f"{k.replace('audience_reduction', 'reduction'):>15}" for k in keys)
    lines = [head]
    for name, m in per_model.items():
        lines.append(f"  {name:<12}" + "".join(f"{m.get(k, float('nan')):>15.4f}" for k in keys))
    return "\n".join(lines)


@dataclass(frozen=True)
class BacktestResult:
    cutoff: date
    window_end: date
    input: str
    train_rows: int
    eval_rows: int
    eval_positives: int
    metrics: dict[str, dict[str, float]]  # model name -> metric -> value (lightgbm, logistic, heuristic)
    heuristic: str
    calibration: pd.DataFrame = field(repr=False)
    gains: pd.DataFrame = field(repr=False)
    predictions: pd.DataFrame = field(repr=False)
    model: ConversionModel = field(repr=False)
    out: Path | None = None
    run_id: str | None = None

    @property
    def savings(self) -> float:
        """Share of the retargeting audience removed while keeping 99 % of conversions."""
        return self.metrics["lightgbm"]["audience_reduction_99"]

    def __str__(self) -> str:
        m = self.metrics
        lines = [
            f"conversion backtest ({self.input}): trained before {self.cutoff}, evaluated {self.cutoff} .. {self.window_end}",
            f"  training points {self.train_rows:,}; evaluation points {self.eval_rows:,} "
            f"({self.eval_positives:,} converting, {self.eval_positives / max(self.eval_rows, 1):.1%})",
            _metrics_table(m),
            f"  heuristic: {self.heuristic}",
            f"  retargeting saving: {self.savings:.1%} of the audience removed keeping 99% of conversions "
            f"(90% bootstrap over visitors {m['lightgbm']['audience_reduction_99_low']:.1%}"
            f"-{m['lightgbm']['audience_reduction_99_high']:.1%}; {m['lightgbm']['audience_reduction_95']:.1%} at 95%); "
            f"logistic {m['logistic']['audience_reduction_99']:.1%}, heuristic {m['heuristic']['audience_reduction_99']:.1%}",
            "  ROC-AUC gain over the baselines (90% interval, paired, sessions clustered by visitor): " + ", ".join(
                f"{name} {m['lightgbm']['roc_auc'] - m[name]['roc_auc']:+.4f} "
                f"({m['lightgbm'].get(f'roc_auc_gain_{name}_low', float('nan')):+.4f} .. "
                f"{m['lightgbm'].get(f'roc_auc_gain_{name}_high', float('nan')):+.4f})" for name in ("logistic", "heuristic")),
        ]
        if self.out:
            lines.append(f"  predictions: {self.out}")
        if self.run_id:
            lines.append(f"  mlflow run: {self.run_id}")
        return "\n".join(lines)

    def charts(self) -> dict[str, Any]:
        """ROC and gains of the model and both baselines, calibration and feature importance (matplotlib)."""
        y = self.predictions["label"].to_numpy()
        curves = {"lightgbm": (y, self.predictions["probability"]), "logistic": (y, self.predictions["p_logistic"]),
                  "heuristic": (y, self.predictions["p_heuristic"])}
        return {"roc": metrics.roc_figure(curves, "ROC (backtest)"),
                "gains": metrics.gains_figure(curves, "Cumulative gains (backtest)"),
                "calibration": metrics.calibration_figure(y, self.predictions["probability"]),
                "feature_importance": metrics.importance_figure(self.model.importance())}

    def top_features(self, n: int = 15) -> pd.DataFrame:
        """The ``n`` features with the highest total gain, as a share of all gain."""
        imp = pd.Series(self.model.importance(), name="gain").sort_values(ascending=False)
        return pd.DataFrame({"gain_share": (imp / max(imp.sum(), 1e-12)).head(n).round(4)})

    def comparison(self) -> pd.DataFrame:
        """Model vs baselines on the evaluation window, one row per model."""
        return pd.DataFrame(self.metrics).T[["roc_auc", "pr_auc", "log_loss", "brier", "audience_reduction_95",
                                             "audience_reduction_99", "audience_reduction_99_low",
                                             "audience_reduction_99_high"]]

    def _repr_html_(self) -> str:
        table = pd.DataFrame(self.metrics).T[["roc_auc", "pr_auc", "log_loss", "brier", "audience_reduction_95",
                                              "audience_reduction_99"]]
        return f"<pre>{str(self).splitlines()[0]}</pre>" + table.to_html(float_format="{:.4f}".format)


@dataclass(frozen=True)
class BacktestSeries:
    """Backtests at several cutoffs: one window's 99 % point rests on a handful of conversions, the spread
    over windows shows how much of it is noise."""

    results: tuple[BacktestResult, ...]
    out: Path | None = None

    def summary(self) -> pd.DataFrame:
        """One row per cutoff: ranking vs both baselines (with the paired gain interval) and the savings."""
        rows = []
        for r in self.results:
            m, g = r.metrics, r.metrics["lightgbm"]
            rows.append({
                "cutoff": r.cutoff, "eval_rows": r.eval_rows, "conversions": r.eval_positives,
                "roc_auc": g["roc_auc"], "roc_auc_logistic": m["logistic"]["roc_auc"],
                "roc_auc_heuristic": m["heuristic"]["roc_auc"],
                **{f"gain_{name}_{end}": g[f"roc_auc_gain_{name}_{end}"]
                   for name in ("logistic", "heuristic") for end in ("low", "high")},
                "saved_99": g["audience_reduction_99"], "saved_99_low": g["audience_reduction_99_low"],
                "saved_99_high": g["audience_reduction_99_high"], "saved_95": g["audience_reduction_95"],
                "saved_99_logistic": m["logistic"]["audience_reduction_99"], "log_loss": g["log_loss"],
            })
        return pd.DataFrame(rows).set_index("cutoff")

    def __str__(self) -> str:
        t = self.summary()
        n = len(t)
        head = (f"  {'cutoff':<11}{'conversions':>12}{'roc_auc':>9}{'logistic':>9}{'heuristic':>10}"
                f"{'gain over logistic (90%)':>27}{'saved@99%':>11}{'(90% interval)':>16}{'saved@95%':>11}")
        lines = [f"conversion backtests at {n} cutoffs (each: train before it, evaluate the "
                 f"{(self.results[0].window_end - self.results[0].cutoff).days // 7} weeks after it)", head]
        for cutoff, r in t.iterrows():
            lines.append(f"  {cutoff!s:<11}{int(r.conversions):>12,}{r.roc_auc:>9.4f}{r.roc_auc_logistic:>9.4f}"
                         f"{r.roc_auc_heuristic:>10.4f}{f'{r.gain_logistic_low:+.4f} .. {r.gain_logistic_high:+.4f}':>27}"
                         f"{r.saved_99:>11.1%}{f'{r.saved_99_low:.1%}-{r.saved_99_high:.1%}':>16}{r.saved_95:>11.1%}")
        lines.append(self._means(t))
        if self.out:
            lines.append(f"  predictions: {self.out}")
        return "\n".join(lines)

    @staticmethod
    def _means(t: pd.DataFrame) -> str:
        n = len(t)
        return (f"  mean over {n}: ROC-AUC {t.roc_auc.mean():.4f} (logistic {t.roc_auc_logistic.mean():.4f}, heuristic "
                f"{t.roc_auc_heuristic.mean():.4f}); saved {t.saved_99.mean():.1%} of the audience keeping 99% of "
                f"conversions (windows {t.saved_99.min():.1%}..{t.saved_99.max():.1%}; logistic "
                f"{t.saved_99_logistic.mean():.1%}), {t.saved_95.mean():.1%} keeping 95%; clearly above logistic in "
                f"{int((t.gain_logistic_low > 0).sum())} of {n} windows, above the heuristic in "
                f"{int((t.gain_heuristic_low > 0).sum())} of {n}")

    def _repr_html_(self) -> str:
        t = self.summary()
        return (f"<pre>conversion backtests at {len(t)} cutoffs</pre>" + t.to_html(float_format="{:.4f}".format)
                + f"<pre>{self._means(t)}</pre>")


@dataclass(frozen=True)
class TrainResult:
    as_of: date
    input: str
    train_rows: int
    version: str
    promoted: bool
    gate_reason: str
    backtest: BacktestResult = field(repr=False)
    run_id: str | None = None
    # the retargeting audience at as-of, fetched from the same feature build: `score` reuses it (same rows)
    audience: pd.DataFrame | None = field(default=None, repr=False)

    def headline(self) -> dict[str, float]:
        """The figures a marketer asks first: retargeting saving and ranking quality vs the baselines."""
        m = self.backtest.metrics
        return {"audience_saved_at_99pct": m["lightgbm"]["audience_reduction_99"],
                "audience_saved_at_95pct": m["lightgbm"]["audience_reduction_95"],
                "roc_auc": m["lightgbm"]["roc_auc"], "roc_auc_logistic": m["logistic"]["roc_auc"],
                "roc_auc_heuristic": m["heuristic"]["roc_auc"],
                "roc_auc_gain_logistic_low": m["lightgbm"]["roc_auc_gain_logistic_low"]}

    def __str__(self) -> str:
        decision = "promoted to champion" if self.promoted else "kept the current champion"
        return (f"conversion-intent v{self.version} trained as of {self.as_of} on {self.train_rows:,} scoring points "
                f"({self.input}); gate: {decision} ({self.gate_reason})\n{self.backtest}")


@dataclass(frozen=True)
class ScoreResult:
    as_of: date
    visitors: int
    known_persons: int
    anonymous: int
    mean_probability: float
    model_version: str

    def __str__(self) -> str:
        return (f"conversion_scores as of {self.as_of}: {self.visitors:,} visitors ({self.known_persons:,} known persons, "
                f"{self.anonymous:,} anonymous), mean probability {self.mean_probability:.3f}, "
                f"model conversion-intent v{self.model_version}")


# --- the stage functions ----------------------------------------------------------------------------------

def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day)


def _no_activity(ws: Workspace) -> CdpError:
    """Why there is nothing to learn from: no such source mapped (an orders-only shop), or nothing loaded yet."""
    if not ws.sources_of("events") and not ws.sources_of("sessions"):
        return CdpError("conversion intent needs an events or sessions source and this workspace maps none "
                        "(orders alone feed the repurchase model only)")
    return CdpError("the warehouse has no events or sessions yet: run `cdp-ml ingest` (and check its quarantine)")


def default_as_of(ws: Workspace) -> date:
    """The Monday after the latest event (or session): every event is strictly before it."""
    with ws.connect() as con:
        latest = feats.latest_activity(con, ws.config.conversion)
    if latest is None:
        raise _no_activity(ws)
    day = latest.date()
    return day + timedelta(days=7 - day.weekday())


def _gate_windows(con, ws: Workspace, cutoff: date, until: date) -> tuple[feats.Window, feats.Window]:
    """The training window (labels closing before the cutoff; sampled) and the evaluation window (scored in
    [cutoff, until - label lag)) of a backtest."""
    s = ws.config.conversion
    lag = timedelta(days=s.horizon_days if feats.input_kind(con, s) == "events" else 0)
    cut = _midnight(cutoff)
    keep = profiling_excluded_sql(con, cutoff)  # persons who objected to profiling are no examples
    retargeting = s.population == "retargeting"
    return (feats.Window(cut - timedelta(weeks=s.training_weeks) - lag, cut - lag, s.horizon_days, keep, retargeting,
                         s.max_training_rows),
            feats.Window(cut, _midnight(until) - lag, s.horizon_days, keep, retargeting))


def _frames(con, ws: Workspace, cutoff: date, until: date,
            also: tuple[feats.Window | feats.Audience, ...] = ()) -> tuple[feats.PointsSpec, pd.DataFrame, pd.DataFrame]:
    """Points from data before ``until``: the backtest's training and evaluation frames; the points of ``also``
    are built too (fetched by the caller)."""
    train_window, evaluation_window = _gate_windows(con, ws, cutoff, until)
    spec = feats.build_selected_points(con, ws.config.conversion, ws.config.features, _midnight(until),
                                       [train_window, evaluation_window, *also])
    return spec, feats.fetch_window(con, spec, train_window), feats.fetch_window(con, spec, evaluation_window)


def _evaluate(ws: Workspace, spec: feats.PointsSpec, train: pd.DataFrame, evaluation: pd.DataFrame,
              cutoff: date, window_end: date) -> BacktestResult:
    s = ws.config.conversion
    if evaluation.empty or evaluation["label"].nunique() < 2:
        raise CdpError(f"conversion backtest window {cutoff} .. {window_end} has {len(evaluation)} scoring points "
                       f"and {int(evaluation['label'].sum()) if len(evaluation) else 0} conversions: choose another cutoff")
    model = fit(train, spec, s)
    started = time.perf_counter()
    probability = model.predict(evaluation)
    log.info("conversion scoring: %d evaluation rows in %.1fs", len(evaluation), time.perf_counter() - started)
    started = time.perf_counter()
    with threadpool_limits(_threads(s)):
        logistic = _logistic_baseline(train, spec)
        p_logistic = logistic.predict_proba(_baseline_frame(evaluation, spec))[:, 1]
    log.info("conversion logistic baseline in %.1fs", time.perf_counter() - started)
    heuristic, heuristic_name = _heuristic(train, spec)
    p_heuristic = heuristic(evaluation)
    y = evaluation["label"].to_numpy()
    per_model = {name: metrics.summary(y, p) for name, p in
                 (("lightgbm", probability), ("logistic", p_logistic), ("heuristic", p_heuristic))}
    # the 99 % point rests on a handful of positives: report how far it moves when visitors are resampled
    visitors = evaluation["person_id"].fillna(evaluation["anonymous_id"]).fillna(evaluation["session_id"])
    for name, p in (("lightgbm", probability), ("logistic", p_logistic), ("heuristic", p_heuristic)):
        low, high = metrics.audience_reduction_interval(y, p, 0.99, groups=visitors.to_numpy())
        per_model[name].update(audience_reduction_99_low=low, audience_reduction_99_high=high)
    # "clearly above the baselines": the paired interval of the AUC gain, same visitors resampled
    gains = metrics.roc_auc_gain_interval(y, probability, {"logistic": p_logistic, "heuristic": p_heuristic},
                                          groups=visitors.to_numpy())
    for name, (low, high) in gains.items():
        per_model["lightgbm"].update({f"roc_auc_gain_{name}_low": low, f"roc_auc_gain_{name}_high": high})
    predictions = evaluation[["session_id", "person_id", "anonymous_id", "scored_at"]].copy()
    predictions["probability"] = probability
    predictions["label"] = y
    predictions["p_logistic"] = p_logistic
    predictions["p_heuristic"] = p_heuristic
    return BacktestResult(cutoff, window_end, spec.kind, len(train), len(evaluation), int(y.sum()), per_model,
                          heuristic_name, metrics.calibration_table(y, probability), metrics.cumulative_gains(y, probability),
                          predictions, model)


def _write_predictions(predictions: pd.DataFrame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix in (".parquet", ".pq"):
        predictions.to_parquet(out, index=False)
    elif suffix == ".csv":
        predictions.to_csv(out, index=False)
    else:
        raise CdpError(f"--out {out.name}: use a .parquet or .csv file name")


def _log_backtest(result: BacktestResult, prefix: str = "backtest") -> None:
    """Metrics of all three models, the calibration/gains tables and the four figures, into the active run."""
    import mlflow

    for model_name, values in result.metrics.items():
        for key, value in values.items():
            if value == value:  # skip NaN
                mlflow.log_metric(f"{prefix}_{model_name}_{key}", float(value))
    mlflow.log_metric(f"{prefix}_roc_auc", result.metrics["lightgbm"]["roc_auc"])
    mlflow.log_metric(f"{prefix}_audience_reduction_99", result.savings)
    mlflow.log_params({f"{prefix}_cutoff": str(result.cutoff), f"{prefix}_window_end": str(result.window_end),
                       f"{prefix}_heuristic": result.heuristic})
    mlflow.log_table(result.calibration, artifact_file=f"{prefix}/calibration.json")
    mlflow.log_table(result.gains, artifact_file=f"{prefix}/gains.json")
    for name, fig in result.charts().items():
        mlflow.log_figure(fig, f"{prefix}/{name}.png")


def _check_window(ws: Workspace, cutoff: date, until: date) -> None:
    with ws.connect() as con:
        latest = feats.latest_activity(con, ws.config.conversion)
    if latest is None:
        raise _no_activity(ws)
    if _midnight(until) > latest + timedelta(days=1):
        s = ws.config.conversion
        raise CdpError(f"cutoff {cutoff}: the {s.backtest_weeks}-week evaluation window plus its label horizon needs data "
                       f"until {until}, but the last activity is {latest.date()}; use an earlier cutoff")


def backtest(ws: Workspace, cutoff: date, out: Path | None = None) -> BacktestResult:
    """Train strictly before ``cutoff``; predict every scoring point of the ``backtest_weeks`` after it."""
    if cutoff is None:
        raise CdpError("backtest conversion: give --cutoff YYYY-MM-DD")
    return _backtests(ws, [cutoff], out)[0]


def backtest_series(ws: Workspace, cutoffs: Sequence[date], out: Path | None = None) -> BacktestSeries:
    """One backtest per cutoff, from one feature build; ``out`` holds every window's rows with its ``cutoff``."""
    if not cutoffs:
        raise CdpError("backtest conversion: give --cutoff YYYY-MM-DD (one or more)")
    return BacktestSeries(tuple(_backtests(ws, sorted(set(cutoffs)), out)), out)


def _backtests(ws: Workspace, cutoffs: Sequence[date], out: Path | None) -> list[BacktestResult]:
    """Build the scoring points of every cutoff's two windows at once (features are point-in-time, so a later
    ``until`` changes no row), then fetch, fit, evaluate and log each backtest in turn."""
    s = ws.config.conversion
    with ws.connect() as con:
        lag = timedelta(days=s.horizon_days if feats.input_kind(con, s) == "events" else 0)
    ends = {c: c + timedelta(weeks=s.backtest_weeks) for c in cutoffs}
    for c in cutoffs:
        _check_window(ws, c, ends[c] + lag)
    with ws.connect() as con, bounded_memory(con):
        windows = {c: _gate_windows(con, ws, c, ends[c] + lag) for c in cutoffs}
        spec = feats.build_selected_points(con, s, ws.config.features, _midnight(max(ends.values()) + lag),
                                           [w for pair in windows.values() for w in pair])
        if len(cutoffs) > 1:  # one frame pair in memory at a time: the connection stays open for the series
            results = [_logged_backtest(ws, spec, c, ends[c], *(feats.fetch_window(con, spec, w) for w in windows[c]))
                       for c in cutoffs]
        else:
            frames = [feats.fetch_window(con, spec, w) for w in windows[cutoffs[0]]]
    if len(cutoffs) == 1:  # one window: the warehouse is closed again before the fit, as in every stage
        results = [_logged_backtest(ws, spec, cutoffs[0], ends[cutoffs[0]], *frames)]
    if out is not None:
        _write_predictions(results[0].predictions if len(results) == 1 else pd.concat(
            [r.predictions.assign(cutoff=r.cutoff)[["cutoff", *r.predictions.columns]] for r in results],
            ignore_index=True), out)
    return [_replace(r, out=out) for r in results]


def _logged_backtest(ws: Workspace, spec: feats.PointsSpec, cutoff: date, window_end: date, train: pd.DataFrame,
                     evaluation: pd.DataFrame) -> BacktestResult:
    """One backtest's fit and evaluation, logged as its own MLflow run."""
    import mlflow

    result = _evaluate(ws, spec, train, evaluation, cutoff, window_end)
    with tracking.run(ws, EXPERIMENT, f"backtest {cutoff}") as run:
        mlflow.log_params(_params(ws.config.conversion, spec))
        mlflow.log_params({f"data_{k}": v for k, v in tracking.fingerprint(
            train, time_column="scored_at", id_columns=ID_COLUMNS).items()})
        _log_backtest(result)
    return _replace(result, run_id=run.info.run_id)


def _replace(result: BacktestResult, **changes: Any) -> BacktestResult:
    from dataclasses import replace

    return replace(result, **changes)


def _params(s: ConversionSettings, spec: feats.PointsSpec) -> dict[str, Any]:
    params = {k: (",".join(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()}
    params.update(input=spec.kind, n_features=len(spec.features))
    return params


def train(ws: Workspace, as_of: date | None = None, parent_run_id: str | None = None) -> TrainResult:
    """Backtest the last ``backtest_weeks`` before as-of (gate), fit on all data before as-of, register, gate."""
    import mlflow
    from mlflow.models import infer_signature

    s = ws.config.conversion
    as_of = as_of or default_as_of(ws)
    with ws.connect() as con:
        lag = s.horizon_days if feats.input_kind(con, s) == "events" else 0
    gate_window_end = as_of - timedelta(days=lag)
    gate_cutoff = gate_window_end - timedelta(weeks=s.backtest_weeks)
    with ws.connect() as con, bounded_memory(con):
        final_window = feats.Window(_midnight(as_of) - timedelta(weeks=s.training_weeks, days=lag),
                                    _midnight(as_of) - timedelta(days=lag), s.horizon_days,
                                    profiling_excluded_sql(con, as_of), s.population == "retargeting",
                                    s.max_training_rows)
        # scoring after training in the same step needs no second feature build: these are its rows
        scored = feats.Audience(_midnight(as_of), s.active_days, profiling_excluded_sql(con, as_of))
        spec, bt_train, evaluation = _frames(con, ws, gate_cutoff, as_of, (final_window, scored))
        final = feats.fetch_window(con, spec, final_window)
        audience = feats.fetch_audience(con, spec, scored.as_of, scored.active_days, keep=scored.keep)
        audience.attrs.update(as_of=as_of, kind=spec.kind)
    check_eligible(final, s)
    result = _evaluate(ws, spec, bt_train, evaluation, gate_cutoff, gate_window_end)
    del bt_train  # memory: the gate's training frame is not needed for the final fit
    model = fit(final, spec, s)
    champion = tracking.champion_version(ws, MODEL_NAME)
    champion_auc, champion_note = None, "no champion yet"
    if champion is not None:
        try:
            old = _load(champion)
            old.threads = _cores()
            champion_auc = metrics.roc_auc(evaluation["label"], old.predict(evaluation))
            champion_note = f"champion v{champion.version}"
        except CdpError as exc:  # a champion on other features (e.g. another input) cannot be compared
            champion_note = f"champion v{champion.version} cannot score this window ({exc})"
    del evaluation
    sample = model.matrix(final.head(200))
    for col in spec.categorical:
        sample[col] = sample[col].astype("object")
    with tracking.run(ws, EXPERIMENT, f"train {as_of}", parent_run_id=parent_run_id) as run:
        mlflow.log_params(_params(s, spec))
        mlflow.log_params({"as_of": str(as_of), "best_iteration": model.booster.current_iteration(),
                           "platt_a": round(model.platt[0], 6), "platt_b": round(model.platt[1], 6)})
        mlflow.log_params({f"data_{k}": v for k, v in tracking.fingerprint(
            final, time_column="scored_at", id_columns=ID_COLUMNS).items()})
        mlflow.log_metric("train_rows", len(final))
        mlflow.log_metric("train_positives", int(final["label"].sum()))
        _log_backtest(result)
        if champion_auc is not None:
            mlflow.log_metric("gate_previous_champion_auc", champion_auc)
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=ConversionPyfunc(model),
            signature=infer_signature(sample, model.predict(sample)),
            registered_model_name=MODEL_NAME,
            pip_requirements=[f"lightgbm=={lgb.__version__}", f"pandas=={pd.__version__}", f"numpy=={np.__version__}"])
        version = str(info.registered_model_version)
        decision = tracking.promote_if_not_worse(ws, MODEL_NAME, version, "backtest_roc_auc",
                                                 result.metrics["lightgbm"]["roc_auc"], champion_auc,
                                                 tolerance=s.gate_tolerance)
        reason = decision["reason"] if champion_auc is not None else champion_note
        mlflow.set_tags({"gate": "promoted" if decision["promoted"] else "rejected", "gate_reason": reason,
                         "model_version": version})
        client = tracking.setup(ws)
        client.set_model_version_tag(MODEL_NAME, version, "as_of", str(as_of))
        client.set_model_version_tag(MODEL_NAME, version, "input", spec.kind)
    return TrainResult(as_of, spec.kind, len(final), version, bool(decision["promoted"]), reason,
                       _replace(result, run_id=run.info.run_id), run.info.run_id, audience)


def _cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _threads(s: ConversionSettings) -> int:
    """Fitting threads: ``conversion.threads``, 0 for every core (OpenMP threads wait passively, see the top)."""
    return s.threads or _cores()


def _load(version: Any) -> ConversionModel:
    import mlflow

    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version.version}")
    return loaded.unwrap_python_model().model


def score(ws: Workspace, as_of: date | None = None, audience: pd.DataFrame | None = None) -> ScoreResult:
    """Score every visitor active in the last ``active_days`` who has not purchased since, with the champion.

    ``audience``: ``TrainResult.audience`` of a ``train`` for the same as-of (fetched from its full feature
    build: the rows this function would build), so a retraining step builds features once.
    """
    s = ws.config.conversion
    champion = tracking.champion_version(ws, MODEL_NAME)
    if champion is None:
        raise CdpError("no champion conversion-intent model in the registry: run `cdp-ml train conversion` first")
    model = _load(champion)
    model.threads = _cores()  # each row is scored on its own: the probabilities do not depend on the thread count
    as_of = as_of or default_as_of(ws)
    until = _midnight(as_of)
    if audience is not None and audience.attrs.get("as_of") != as_of:
        audience = None  # fetched for another as-of: build this one's
    with ws.connect() as con, bounded_memory(con):
        if audience is None:
            # only the audience's scoring points (the rows the full build gives them), not the whole history's
            spec = feats.build_audience_points(con, s, ws.config.features, until, until - timedelta(days=s.active_days))
            kind = spec.kind
        else:
            kind = audience.attrs["kind"]
        if kind != model.kind:
            raise CdpError(f"the champion conversion model was trained on {model.kind} but the workspace input is "
                           f"{kind}: run `cdp-ml train conversion`")
        if audience is None:
            started = time.perf_counter()
            audience = feats.fetch_audience(con, spec, until, s.active_days,
                                            keep=profiling_excluded_sql(con, as_of))  # objectors are never scored
            log.info("conversion scoring: audience of %d visitors fetched in %.1fs", len(audience),
                     time.perf_counter() - started)
        started = time.perf_counter()
        scores = pd.DataFrame({
            "as_of": pd.Series([as_of] * len(audience), dtype="object"),
            "person_id": audience["person_id"].astype("object"),
            "anonymous_id": audience["anonymous_id"].astype("object"),
            "probability": model.predict(audience) if len(audience) else np.zeros(0),
            "model_version": str(champion.version),
        })
        log.info("conversion scoring: %d visitors predicted in %.1fs", len(scores), time.perf_counter() - started)
        started = time.perf_counter()
        con.execute("""create table if not exists conversion_scores (as_of date, person_id varchar,
                       anonymous_id varchar, probability double, model_version varchar)""")
        con.register("conv_new_scores", scores)
        con.execute("begin transaction")
        con.execute("delete from conversion_scores where as_of = ?", [as_of])
        con.execute("""insert into conversion_scores select cast(as_of as date), person_id::varchar,
                       anonymous_id::varchar, probability::double, model_version::varchar from conv_new_scores""")
        con.execute("commit")
        con.unregister("conv_new_scores")
        log.info("conversion scoring: scores written in %.1fs", time.perf_counter() - started)
    known = int(scores["person_id"].notna().sum())
    return ScoreResult(as_of, len(scores), known, len(scores) - known,
                       float(scores["probability"].mean()) if len(scores) else float("nan"), str(champion.version))
