"""Segment templates: which scored persons are candidates for a segment, before the rules apply.

Each template is one SQL query over the score tables returning candidate rows
``(person_id, anonymous_id, category, score, reason)``; the consent and suppression rules
(``cdp_ml.segments.build``) are the same for every template. Named parameters: ``$as_of`` (run date),
``$rep_as_of`` / ``$conv_as_of`` (the score snapshot used).
"""

from __future__ import annotations

import re
from typing import Any

import duckdb

from cdp_ml.engine import table_exists
from cdp_ml.segments.settings import SegmentDefinition, SegmentSettings

ANY = "(any)"
# templates and the score table they read
SCORE_TABLE = {"repurchase_next_week": "repurchase_scores", "back_in_market_4w": "repurchase_scores",
               "lapsing": "repurchase_scores", "retargeting_high_intent": "conversion_scores",
               "retargeting_exclude": "conversion_scores"}
# rank 1 is the best prospect, except on the exclusion list where it is the least likely converter
ASCENDING = {"retargeting_exclude"}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "x"


def default_definitions(con: duckdb.DuckDBPyConnection, rep_as_of: Any, conv_as_of: Any) -> tuple[SegmentDefinition, ...]:
    """The out-of-the-box segments: next-week repurchasers per category found in the scores, then one of
    each other template whose score table has a snapshot."""
    out: list[SegmentDefinition] = []
    if rep_as_of is not None:
        cats = [r[0] for r in con.execute(
            "select distinct category from repurchase_scores where as_of = ? and category <> ? and category is not null "
            "order by 1", [rep_as_of, ANY]).fetchall()]
        seen: set[str] = set()
        for c in cats:
            name = f"repurchase_next_week_{slug(c)}"
            while name in seen:  # two spellings of a category slugging alike keep their own segments
                name += "_"
            seen.add(name)
            out.append(SegmentDefinition(name=name, template="repurchase_next_week", channel="email",
                                         categories=(c,), top_percent=10.0))
        out.append(SegmentDefinition(name="back_in_market_4w", template="back_in_market_4w", channel="email",
                                     top_percent=20.0))
        out.append(SegmentDefinition(name="lapsing", template="lapsing", channel="email"))
    if conv_as_of is not None:
        out.append(SegmentDefinition(name="retargeting_high_intent", template="retargeting_high_intent",
                                     channel="ads", top_percent=10.0))
        out.append(SegmentDefinition(name="retargeting_exclude", template="retargeting_exclude", channel="ads",
                                     keep_share=0.99))
    return tuple(out)


def _categories(con: duckdb.DuckDBPyConnection, d: SegmentDefinition, rep_as_of: Any, prefer_any: bool) -> list[str]:
    """The category tracks a repurchase template reads: the definition's, else '(any)' or all categories."""
    if d.categories:
        return list(d.categories)
    have_any = con.execute("select count(*) from repurchase_scores where as_of = ? and category = ?",
                           [rep_as_of, ANY]).fetchall()[0][0] > 0
    if prefer_any and have_any:
        return [ANY]
    return [r[0] for r in con.execute("select distinct category from repurchase_scores where as_of = ? "
                                      "and category <> ? and category is not null", [rep_as_of, ANY]).fetchall()]


def _select(scored: str, d: SegmentDefinition, settings: SegmentSettings, default_top: bool,
            params: dict[str, Any], what: str) -> tuple[str, str]:
    """Apply threshold and/or top-k % (within each category) to a scored query; returns (sql, reason)."""
    top = d.top_percent
    if top is None and d.threshold is None and default_top:
        top = settings.default_top_percent
    where, reason = [], []
    if d.threshold is not None:
        where.append("score >= $threshold")
        params["threshold"] = d.threshold
        reason.append(f"{what} >= {d.threshold:g}")
    if top is not None:
        where.append("_pos <= ceil(_n * $top_percent / 100.0)")
        params["top_percent"] = top
        reason.append(f"top {top:g}% by {what}")
    sql = f"""
        select person_id, anonymous_id, category, score from (
            select *, row_number() over (partition by category order by score desc, person_id, anonymous_id) as _pos,
                   count(*) over (partition by category) as _n
            from ({scored}))
        {'where ' + ' and '.join(where) if where else ''}
    """
    return sql, " and ".join(reason) or what


def visitor_pool_sql(con: duckdb.DuckDBPyConnection, d: SegmentDefinition, params: dict[str, Any]) -> str:
    """Scored visitors seen in the last ``recent_days`` who did not buy in them (known or anonymous)."""
    params["recent_days"] = d.recent_days
    since = "$as_of::date - to_days($recent_days::int)"
    if not table_exists(con, "person_events"):
        return "select person_id, anonymous_id, probability as score from conversion_scores where as_of = $conv_as_of"
    bought_orders = ""
    if table_exists(con, "person_orders"):
        bought_orders = f"""union all select person_id, null, true from person_orders
                            where person_id is not null and coalesce(status, 'completed') = 'completed'
                              and ordered_at >= {since} and ordered_at < $as_of::date"""
    return f"""
        with recent as (
            select person_id, anonymous_id, event_type = 'purchase' as bought from person_events
            where "timestamp" >= {since} and "timestamp" < $as_of::date
            {bought_orders}),
        by_person as (select person_id, bool_or(bought) as bought from recent where person_id is not null group by 1),
        by_anon as (select anonymous_id, bool_or(bought) as bought from recent where anonymous_id is not null group by 1)
        select c.person_id, c.anonymous_id, c.probability as score
        from conversion_scores c
        left join by_person p on p.person_id = c.person_id
        left join by_anon a on a.anonymous_id = c.anonymous_id
        where c.as_of = $conv_as_of and (p.person_id is not null or a.anonymous_id is not null)
          and not coalesce(p.bought, false) and not coalesce(a.bought, false)
    """


def candidates_sql(con: duckdb.DuckDBPyConnection, d: SegmentDefinition, settings: SegmentSettings,
                   rep_as_of: Any, params: dict[str, Any]) -> tuple[str, str]:
    """SQL of the candidate rows (person_id, anonymous_id, category, score) and the selection reason in
    words; fills ``params``."""
    t = d.template
    if t == "repurchase_next_week":
        params["cats"] = _categories(con, d, rep_as_of, prefer_any=False)
        scored = """select person_id, null::varchar as anonymous_id, category, p_week as score
                    from repurchase_scores
                    where as_of = $rep_as_of and week = 1 and list_contains($cats::varchar[], category)"""
        sql, reason = _select(scored, d, settings, True, params, "next-week probability")
    elif t == "back_in_market_4w":
        params["cats"] = _categories(con, d, rep_as_of, prefer_any=True)
        params["weeks"] = d.weeks
        scored = """select person_id, null::varchar as anonymous_id, category, p_cumulative as score
                    from repurchase_scores
                    where as_of = $rep_as_of and list_contains($cats::varchar[], category)
                      and week = (select least($weeks::int, max(week)) from repurchase_scores where as_of = $rep_as_of)"""
        sql, reason = _select(scored, d, settings, True, params, f"{d.weeks}-week probability")
    elif t == "retargeting_high_intent":
        scored = f"select person_id, anonymous_id, null::varchar as category, score from ({visitor_pool_sql(con, d, params)})"
        sql, reason = _select(scored, d, settings, True, params, "conversion probability")
    elif t == "retargeting_exclude":
        params["keep_share"] = d.keep_share
        sql = f"""
            select person_id, anonymous_id, null::varchar as category, score from (
                select *, sum(score) over (order by score, person_id, anonymous_id rows unbounded preceding) as _cum,
                       sum(score) over () as _total
                from ({visitor_pool_sql(con, d, params)}))
            where _cum <= (1 - $keep_share) * _total
        """
        reason = f"low-intent tail (exclusion keeps {d.keep_share:.0%} of expected conversions)"
    else:  # lapsing
        params.update(cats=_categories(con, d, rep_as_of, prefer_any=True), lapse_ratio=d.lapse_ratio,
                      min_orders=d.min_orders, any=ANY)
        scored = """
            with orders as (
                select person_id, category, ordered_at::date as day from person_orders
                where person_id is not null and coalesce(status, 'completed') = 'completed' and ordered_at < $as_of::date),
            history as (
                select person_id, $any as category, count(distinct day) as days, min(day) as first_day, max(day) as last_day
                from orders group by person_id
                union all
                select person_id, category, count(distinct day), min(day), max(day)
                from orders where category is not null group by person_id, category),
            rhythm as (
                select *, date_diff('day', first_day, last_day) / (days - 1) as interval_days
                from history where days >= $min_orders),
            expected as (
                select *, 1 - exp(-7.0 / greatest(interval_days, 1)) as usual_p from rhythm)
            select s.person_id, null::varchar as anonymous_id, s.category, 1 - s.p_week / e.usual_p as score
            from repurchase_scores s join expected e on e.person_id = s.person_id and e.category = s.category
            where s.as_of = $rep_as_of and s.week = 1 and list_contains($cats::varchar[], s.category)
              and date_diff('day', e.last_day, $as_of::date) > e.interval_days
              and s.p_week < $lapse_ratio * e.usual_p
        """
        sql, reason = _select(scored, d, settings, False, params, "drop below usual rhythm")
        reason = f"past buyer, next-week probability < {d.lapse_ratio:g} x usual rhythm" + (
            "" if reason == "drop below usual rhythm" else f"; {reason}")
    return sql, reason
