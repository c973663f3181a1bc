"""Data checks and the retrain decision of a refresh.

Every check compares the week before as-of with the week before that, in SQL on the warehouse, so it
needs no state from earlier runs and gives the same answer when a week is re-run. Checks only report
aggregates (shares, counts, PSI); they never read personal fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb

from cdp_ml import engine
from cdp_ml.refresh.pipeline import Step
from cdp_ml.workspace import Workspace

DECILES = [i / 10 for i in range(1, 10)]
_EPS = 1e-4


@dataclass(frozen=True)
class Check:
    """One data check: ``value`` for the last week, ``previous`` for the week before, ``score`` vs ``threshold``."""

    name: str
    value: float | None
    previous: float | None
    score: float | None
    threshold: float
    note: str = ""

    @property
    def drift(self) -> bool:
        return self.score is not None and self.score > self.threshold

    def __str__(self) -> str:
        if self.score is None:
            return f"{self.name}: n/a ({self.note})"
        flag = "DRIFT" if self.drift else "ok"
        return f"{self.name}: {self.score:.3f} (threshold {self.threshold:g}) {flag}"


@dataclass(frozen=True)
class RetrainDecision:
    """Whether model steps retrain this run, and why (one reason per model or check)."""

    mode: str
    retrain: bool
    reasons: tuple[str, ...]
    checks: tuple[Check, ...] = ()

    def __str__(self) -> str:
        verdict = "retrain" if self.retrain else "score only"
        return f"{verdict} ({self.mode}): {'; '.join(self.reasons) or 'champions fresh, no drift'}"

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "retrain": self.retrain, "reasons": list(self.reasons),
                "checks": [{"name": c.name, "value": c.value, "previous": c.previous, "score": c.score,
                            "threshold": c.threshold, "drift": c.drift, "note": c.note} for c in self.checks]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetrainDecision:
        checks = tuple(Check(name=c["name"], value=c["value"], previous=c["previous"], score=c["score"],
                             threshold=c["threshold"], note=c.get("note", "")) for c in data.get("checks", []))
        return cls(mode=data["mode"], retrain=bool(data["retrain"]), reasons=tuple(data["reasons"]), checks=checks)


def psi(expected: list[float], actual: list[float]) -> float:
    """Population stability index of two distributions over the same bins (counts or shares)."""
    te, ta = sum(expected), sum(actual)
    if te <= 0 or ta <= 0:
        return 0.0
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe, pa = max(e / te, _EPS), max(a / ta, _EPS)
        total += (pa - pe) * math.log(pa / pe)
    return total


def data_checks(ws: Workspace, as_of: date) -> tuple[Check, ...]:
    """Missing-identifier share, weekly volume change and PSI of key distributions, last week vs the one before."""
    s = ws.config.refresh
    week = (as_of - timedelta(days=7), as_of)
    prev = (as_of - timedelta(days=14), as_of - timedelta(days=7))
    if not ws.warehouse_path.exists():
        return (Check("warehouse", None, None, None, 0.0, "no warehouse yet"),)
    # (name, threshold, check, the table whose cut-off last week would read as a fall in it, and which week
    # must hold refresh.drift_min_rows rows: max = the larger one (a source falling silent is real), min = both
    # (ten deciles of 60 orders differ by a PSI near 0.3 between two quiet weeks))
    runs = [
        ("missing_identifier_share", s.drift_missing_identifier_share,
         lambda con, t: _missing_identifiers(con, week, prev, t), None, None),
        ("events_volume_change", s.drift_volume_change,
         lambda con, t: _volume(con, "events", "timestamp", week, prev, t), "events", max),
        ("orders_volume_change", s.drift_volume_change,
         lambda con, t: _volume(con, "orders", "ordered_at", week, prev, t), "orders", max),
        ("psi_event_type", s.drift_psi, lambda con, t: _psi_categorical(con, "events", "timestamp", "event_type",
                                                                         week, prev, t), None, min),
        ("psi_order_amount", s.drift_psi, lambda con, t: _psi_numeric_orders(con, week, prev, t), None, min),
        ("psi_events_per_person", s.drift_psi, lambda con, t: _psi_events_per_person(con, week, prev, t),
         "events", min),
    ]
    checks = []
    with ws.connect() as con:
        partial = {table: _partial_week(con, table, ts, week) for table, ts in (("events", "timestamp"),
                                                                               ("orders", "ordered_at"))}
        for name, threshold, run, cut_by, rows_of in runs:
            if cut_by and partial[cut_by]:
                checks.append(Check(name, None, None, None, threshold, partial[cut_by]))
                continue
            try:
                checks.append(_too_small(run(con, threshold), s.drift_min_rows, rows_of))
            except duckdb.Error as exc:  # an unusual schema must not stop the refresh: report the check as n/a
                first = str(exc).strip().splitlines()[0][:120]
                checks.append(Check(name, None, None, None, threshold, f"not computed: {first}"))
    return tuple(checks)


PARTIAL_DAYS = 3  # data ending this many days before the week does is a cut-off export (not a closed weekend)


def _partial_week(con: duckdb.DuckDBPyConnection, table: str, ts: str, week) -> str:
    """A note when ``table``'s data ends inside the last week (a public dump, `--as-of latest`), else ''."""
    if not engine.table_exists(con, table):
        return ""
    end = con.execute(f'select max("{ts}") from "{table}" where "{ts}" < ?', [week[1]]).fetchall()[0][0]
    if end is None or end < datetime.combine(week[0], datetime.min.time()):
        return ""  # no data in the week at all: the volume check reports that itself
    if datetime.combine(week[1], datetime.min.time()) - end > timedelta(days=PARTIAL_DAYS):
        return f"last week incomplete: {table} end {end:%Y-%m-%d}"
    return ""


def _too_small(check: Check, min_rows: int, rows_of: Callable[[float, float], float] | None) -> Check:
    """n/a when ``rows_of`` (max or min) of the two weeks' rows is under ``min_rows``: noise would flag drift."""
    if rows_of is None or check.score is None or rows_of(check.value, check.previous) >= min_rows:
        return check
    return Check(check.name, check.value, check.previous, None, check.threshold, f"fewer than {min_rows} rows in a week")


def _missing_identifiers(con: duckdb.DuckDBPyConnection, week, prev, threshold: float) -> Check:
    """Share of incoming events carrying neither a customer key nor a device id.

    Read from staging, not person_events: the retrain decision is taken before this week's identity
    resolution, when every new device would still look unresolved.
    """
    name = "missing_identifier_share"
    if not engine.table_exists(con, "events"):
        return Check(name, None, None, None, threshold, "no events table")
    rows = con.execute(
        "select (timestamp >= ?) as this_week, "
        "avg(case when customer_ref is null and anonymous_id is null then 1.0 else 0.0 end), count(*) "
        "from events where timestamp >= ? and timestamp < ? group by 1",
        [week[0], prev[0], week[1]]).fetchall()
    shares = {bool(r[0]): float(r[1]) for r in rows if r[2]}
    value, previous = shares.get(True), shares.get(False)
    if value is None or previous is None:
        return Check(name, value, previous, None, threshold, "a week without events")
    return Check(name, value, previous, abs(value - previous), threshold)


def _volume(con: duckdb.DuckDBPyConnection, table: str, ts: str, week, prev, threshold: float) -> Check:
    name = f"{table}_volume_change"
    if not engine.table_exists(con, table):
        return Check(name, None, None, None, threshold, f"no {table} table")
    value, previous = con.execute(
        f'select count(*) filter (where "{ts}" >= ?), count(*) filter (where "{ts}" < ?) '
        f'from "{table}" where "{ts}" >= ? and "{ts}" < ?', [week[0], week[0], prev[0], week[1]]).fetchall()[0]
    if not previous:
        return Check(name, float(value), 0.0, None, threshold, "no rows the week before")
    return Check(name, float(value), float(previous), abs(value / previous - 1.0), threshold)


def _psi_categorical(con, table: str, ts: str, column: str, week, prev, threshold: float) -> Check:
    name = f"psi_{column}"
    if not engine.table_exists(con, table):
        return Check(name, None, None, None, threshold, f"no {table} table")
    rows = con.execute(
        f'select coalesce(cast("{column}" as varchar), \'(null)\'), count(*) filter (where "{ts}" >= ?), '
        f'count(*) filter (where "{ts}" < ?) from "{table}" where "{ts}" >= ? and "{ts}" < ? group by 1',
        [week[0], week[0], prev[0], week[1]]).fetchall()
    return _psi_check(name, [r[2] for r in rows], [r[1] for r in rows], threshold)


def _psi_numeric_orders(con, week, prev, threshold: float) -> Check:
    name = "psi_order_amount"
    if not engine.table_exists(con, "orders"):
        return Check(name, None, None, None, threshold, "no orders table")
    return _psi_binned(con, name, "select ordered_at as t, amount as x from orders where amount is not null",
                       week, prev, threshold)


def _psi_events_per_person(con, week, prev, threshold: float) -> Check:
    name = "psi_events_per_person"
    if engine.table_exists(con, "person_events"):
        # devices new this week are not in person_map until this week's identity step: each counts alone
        who = ("coalesce(cast(person_id as varchar), 'ref:' || cast(customer_ref as varchar), "
               "'anon:' || cast(anonymous_id as varchar))")
        table = "person_events"
    elif engine.table_exists(con, "events"):
        who = "coalesce(cast(customer_ref as varchar), cast(anonymous_id as varchar))"
        table = "events"
    else:
        return Check(name, None, None, None, threshold, "no events table")
    query = (f"select case when timestamp >= $week_start then $week_start else $prev_start end as t, "
             f"count(*)::double as x from {table} where timestamp >= $prev_start and timestamp < $week_end "
             f"and {who} is not null group by {who}, 1")
    return _psi_binned(con, name, query, week, prev, threshold)


def _psi_binned(con, name: str, query: str, week, prev, threshold: float) -> Check:
    """PSI over deciles of the previous week (edges from that week, counts per bin in both weeks)."""
    params = {"week_start": week[0], "week_end": week[1], "prev_start": prev[0]}
    rows = con.execute(
        f"""with d as (select t, x from ({query}) where t >= $prev_start and t < $week_end),
        edges as (select list_distinct(quantile_cont(x, {DECILES})) as q from d where t < $week_start)
        select len(list_filter(edges.q, lambda e: e < d.x)) as bin,
               count(*) filter (where t >= $week_start), count(*) filter (where t < $week_start)
        from d, edges group by 1 order by 1""",
        params).fetchall()
    return _psi_check(name, [r[2] for r in rows], [r[1] for r in rows], threshold)


def _psi_check(name: str, expected: list[int], actual: list[int], threshold: float) -> Check:
    if not sum(expected) or not sum(actual):
        return Check(name, float(sum(actual)), float(sum(expected)), None, threshold, "a week without rows")
    return Check(name, float(sum(actual)), float(sum(expected)), psi(expected, actual), threshold)


def champion_age_weeks(ws: Workspace, model: str, as_of: date) -> float | None:
    """Weeks between the champion's training as-of (or registration time) and this refresh; None: no champion."""
    from cdp_ml import tracking

    version = tracking.champion_version(ws, model)
    if version is None:
        return None
    trained = _trained_as_of(ws, version)
    if trained is None:
        trained = datetime.fromtimestamp(version.creation_timestamp / 1000, tz=UTC).date()
        return (date.today() - trained).days / 7
    return (as_of - trained).days / 7


def _trained_as_of(ws: Workspace, version: Any) -> date | None:
    from cdp_ml import tracking
    from cdp_ml.workspace import parse_date

    candidates = [version.tags.get("as_of")] if getattr(version, "tags", None) else []
    if version.run_id:
        try:
            run = tracking.setup(ws).get_run(version.run_id)
            candidates += [run.data.params.get("as_of"), run.data.tags.get("as_of")]
        except Exception:  # noqa: BLE001 - a deleted run only loses this hint
            pass
    for value in candidates:
        if value:
            try:
                return parse_date(value)
            except Exception:  # noqa: BLE001 - not a date: try the next hint
                continue
    return None


def decide_retrain(ws: Workspace, as_of: date, mode: str, steps: list[Step]) -> RetrainDecision:
    """always/never are taken as given; auto retrains on a missing or old champion, or on drift."""
    checks = data_checks(ws, as_of)
    if mode in ("always", "never"):
        return RetrainDecision(mode, mode == "always", (f"--retrain {mode}",), checks)
    reasons = []
    limit = ws.config.refresh.retrain_after_weeks
    for model in sorted({m for s in steps for m in s.models}):
        age = champion_age_weeks(ws, model, as_of)
        if age is None:
            reasons.append(f"{model}: no champion")
        elif age >= limit:
            reasons.append(f"{model}: champion {age:.1f} weeks old (>= {limit})")
    reasons += [f"drift: {c}" for c in checks if c.drift]
    return RetrainDecision(mode, bool(reasons), tuple(reasons), checks)
