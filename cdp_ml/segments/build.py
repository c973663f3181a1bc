"""Build the week's segments: candidates per template, one set of consent and suppression rules, files.

Every candidate row gets at most one exclusion reason, checked in this order (so counts add up):
``erased`` (no longer a person in the warehouse), ``opted_out`` (objected to profiling, or an opt-out
interaction not followed by a new grant of the channel's purpose), ``no_consent`` (the channel's purpose
not granted as of the run date; no record = the workspace default), ``complaint`` (open complaint in the
segment's category within N days), ``returned`` (returned order or return request in the category within
N days),
``bought_since_scoring`` and ``filtered`` (profile filters). The week's folder is written into a temporary
folder next to it and renamed into place, so it appears complete or not at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb

from cdp_ml.engine import columns, table_exists
from cdp_ml.errors import CdpError
from cdp_ml.privacy.consent import consent_state, ensure_ledger
from cdp_ml.segments import activation
from cdp_ml.segments.settings import SegmentDefinition
from cdp_ml.segments.templates import ANY, ASCENDING, SCORE_TABLE, candidates_sql, default_definitions, visitor_pool_sql
from cdp_ml.workspace import Workspace, last_completed_week_end, parse_date

REASONS = ("erased", "opted_out", "no_consent", "complaint", "returned", "bought_since_scoring", "filtered")
MANIFEST = "manifest.json"
_WEEK = re.compile(r"^\d{4}-W\d{2}$")


def iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


@dataclass(frozen=True)
class SegmentSummary:
    name: str
    template: str
    channel: str
    members: int
    added: int
    removed: int
    excluded: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SegmentsResult:
    week: str
    as_of: date
    folder: Path
    previous_week: str | None
    segments: tuple[SegmentSummary, ...]
    skipped: tuple[str, ...] = ()

    @property
    def manifest(self) -> Path:
        return self.folder / MANIFEST

    def __str__(self) -> str:
        lines = [f"segments {self.week} (as of {self.as_of}) -> {self.folder}",
                 f"  vs {self.previous_week or 'no previous week'}",
                 f"  {'segment':<36} {'channel':<6} {'members':>8} {'added':>7} {'removed':>8}  excluded"]
        for s in self.segments:
            excl = ", ".join(f"{k} {v}" for k, v in s.excluded.items() if v) or "-"
            lines.append(f"  {s.name:<36} {s.channel:<6} {s.members:>8} {s.added:>7} {s.removed:>8}  {excl}")
        lines += [f"  skipped: {why}" for why in self.skipped]
        lines.append(f"  manifest: {self.manifest}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{s.name}</td><td>{s.channel}</td><td>{s.members}</td><td>{s.added}</td><td>{s.removed}</td>"
            f"<td>{', '.join(f'{k} {v}' for k, v in s.excluded.items() if v) or '-'}</td></tr>" for s in self.segments)
        return (f"<p>Segments {self.week} (as of {self.as_of}) in <code>{self.folder}</code></p><table>"
                "<tr><th>segment</th><th>channel</th><th>members</th><th>added</th><th>removed</th><th>excluded</th></tr>"
                f"{rows}</table>")


def _sql_path(path: Path | str) -> str:
    return str(path).replace("'", "''")


def week_folders(ws: Workspace) -> list[Path]:
    """Complete week folders (with a manifest), oldest first."""
    root = ws.segments_dir
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _WEEK.match(p.name) and (p / MANIFEST).is_file())


def _snapshot(con: duckdb.DuckDBPyConnection, table: str, as_of: date) -> date | None:
    if not table_exists(con, table):
        return None
    return con.execute(f'select max(as_of) from "{table}" where as_of <= ?', [as_of]).fetchall()[0][0]


def _prepare_rules(con: duckdb.DuckDBPyConnection, ws: Workspace, as_of: date, first_snapshot: date,
                   definitions: tuple[SegmentDefinition, ...]) -> None:
    """Temp tables the rules read: consent state, erased, objections, opt-outs, complaints, returns, purchases."""
    s = ws.config.segments
    if table_exists(con, "person_consents"):
        ensure_ledger(con)  # the consent_ledger view for BI and audits
        consent_state(con, as_of).create_view("_consent_state", replace=True)
        con.execute("create temp table _consent as select * from _consent_state")
    else:
        con.execute("create temp table _consent(person_id varchar, purpose varchar, granted boolean, decided_at timestamp)")
    con.execute("create temp table _erased(person_id varchar)")
    if table_exists(con, "person_map"):  # every live person has an identifier; one distinct scan per run
        con.execute("create temp table _persons as select distinct person_id from person_map where person_id is not null")
    if table_exists(con, "erasures") and "person_id" in columns(con, "erasures"):
        con.execute("insert into _erased select distinct person_id from erasures where person_id is not null")
    con.execute("create temp table _objected as select distinct person_id from _consent "
                "where purpose = 'profiling' and not granted")
    has_interactions = table_exists(con, "person_interactions")
    has_orders = table_exists(con, "person_orders")
    con.execute("create temp table _opt_outs(person_id varchar, at_ts timestamp)")
    con.execute("create temp table _complaints(person_id varchar, category varchar, opened_at timestamp)")
    if has_interactions:
        con.execute("""insert into _opt_outs select person_id, max("timestamp") from person_interactions
                       where person_id is not null and list_contains($types::varchar[], lower("type"))
                         and "timestamp" < $as_of::date group by 1""",
                    {"types": list(s.opt_out_types), "as_of": as_of})
        days = max((d.suppress_complaint_days for d in definitions), default=0)
        con.execute("""
            insert into _complaints
            select o.person_id, o.category, o."timestamp" from person_interactions o
            where o.person_id is not null and list_contains($open::varchar[], lower(o."type"))
              and o."timestamp" >= $as_of::date - to_days($days::int) and o."timestamp" < $as_of::date
              and not exists (
                  select 1 from person_interactions r
                  where r.person_id = o.person_id and list_contains($closed::varchar[], lower(r."type"))
                    and r."timestamp" > o."timestamp" and r."timestamp" < $as_of::date
                    and (r.category is null or o.category is null or r.category = o.category))
        """, {"open": list(s.complaint_types), "closed": list(s.resolved_types), "as_of": as_of, "days": days})
    con.execute("create temp table _returns(person_id varchar, category varchar, at_ts timestamp)")
    con.execute("create temp table _bought(person_id varchar, category varchar, at_ts timestamp)")
    days = max((d.suppress_return_days for d in definitions), default=0)
    if has_interactions:  # a return request at customer service counts as a return
        con.execute("""insert into _returns select person_id, category, "timestamp" from person_interactions
                       where person_id is not null and list_contains($types::varchar[], lower("type"))
                         and "timestamp" >= $as_of::date - to_days($days::int) and "timestamp" < $as_of::date""",
                    {"as_of": as_of, "days": days, "types": list(s.return_types)})
    if has_orders:
        con.execute("""insert into _returns select person_id, category, ordered_at from person_orders
                       where person_id is not null and status = 'returned'
                         and ordered_at >= $as_of::date - to_days($days::int) and ordered_at < $as_of::date""",
                    {"as_of": as_of, "days": days})
        con.execute("""insert into _bought select person_id, category, ordered_at from person_orders
                       where person_id is not null and coalesce(status, 'completed') = 'completed'
                         and ordered_at >= $since::date and ordered_at < $as_of::date""",
                    {"as_of": as_of, "since": first_snapshot})


def _category_match(alias: str) -> str:
    return f"(c.category is null or c.category = '{ANY}' or {alias}.category is null or {alias}.category = c.category)"


def _judge(con: duckdb.DuckDBPyConnection, d: SegmentDefinition, as_of: date, score_as_of: date,
           default_granted: bool, has_person_map: bool) -> None:
    """Give every candidate in ``_cand`` its first exclusion reason (NULL = member) into ``_judged``."""
    targeting = d.template != "retargeting_exclude"  # removing someone from an exclusion list would target them
    params: dict[str, Any] = {"as_of": as_of, "score_as_of": score_as_of, "purpose": d.purpose,
                              "default_granted": default_granted, "complaint_days": d.suppress_complaint_days,
                              "return_days": d.suppress_return_days}
    erased = "c.person_id in (select person_id from _erased)"
    if has_person_map:
        erased += " or c.person_id not in (select person_id from _persons)"
    whens = [
        (f"c.person_id is not null and ({erased})", "erased"),
        ("c.person_id in (select person_id from _objected)", "opted_out"),
        ("exists (select 1 from _opt_outs o where o.person_id = c.person_id "
         "and not coalesce(k.granted and k.decided_at > o.at_ts, false))", "opted_out"),
        ("not coalesce(k.granted, $default_granted::boolean)", "no_consent"),
    ]
    if targeting and d.suppress_complaint_days > 0:
        whens.append((f"exists (select 1 from _complaints x where x.person_id = c.person_id and {_category_match('x')} "
                      "and x.opened_at >= $as_of::date - to_days($complaint_days::int))", "complaint"))
    if targeting and d.suppress_return_days > 0:
        whens.append((f"exists (select 1 from _returns x where x.person_id = c.person_id and {_category_match('x')} "
                      "and x.at_ts >= $as_of::date - to_days($return_days::int))", "returned"))
    if targeting and d.suppress_bought_since_scoring:
        whens.append((f"exists (select 1 from _bought x where x.person_id = c.person_id and {_category_match('x')} "
                      "and x.at_ts >= $score_as_of::date)", "bought_since_scoring"))
    join_profiles = ""
    if d.filters:
        conds = []
        for i, (key, value) in enumerate(sorted(d.filters.items())):
            params[f"f{i}"] = value
            conds.append(f'lower(p."{key}"::varchar) is not distinct from lower($f{i})')
        whens.append((f"not ({' and '.join(conds)})", "filtered"))
        join_profiles = "left join profiles p on p.person_id = c.person_id"
    case = "case " + " ".join(f"when {cond} then '{reason}'" for cond, reason in whens) + " end"
    sql = f"""
        create or replace temp table _judged as
        select c.*, {case} as excluded
        from _cand c
        left join _consent k on k.person_id = c.person_id and k.purpose = $purpose
        {join_profiles}
    """
    con.execute(sql, {k: v for k, v in params.items() if f"${k}" in sql})


def _check_definitions(con: duckdb.DuckDBPyConnection, definitions: tuple[SegmentDefinition, ...],
                       snapshots: dict[str, date | None], explicit: bool) -> None:
    profile_cols = set(columns(con, "profiles")) if table_exists(con, "profiles") else set()
    for i, d in enumerate(definitions):
        where = f"segments.definitions[{i}] ({d.name})"
        table = SCORE_TABLE[d.template]
        if explicit and snapshots[table] is None:
            raise CdpError(f"{where}: template {d.template} needs {table}, which has no scores on or before the "
                           f"run date (run `cdp-ml score {table.split('_')[0]}` first)")
        for key in d.filters:
            if key not in profile_cols:
                raise CdpError(f"{where}.filters: {key!r} is not a profiles column "
                               f"(columns: {', '.join(sorted(profile_cols)) or 'no profiles table'})")
        if d.template == "lapsing" and not table_exists(con, "person_orders"):
            raise CdpError(f"{where}: template lapsing needs person_orders (run `cdp-ml resolve` first)")


def _previous(ws: Workspace, week: str) -> Path | None:
    older = [p for p in week_folders(ws) if p.name < week]
    return older[-1] if older else None


def _write_segment(con: duckdb.DuckDBPyConnection, ws: Workspace, d: SegmentDefinition, folder: Path,
                   previous: Path | None, as_of: date, snapshots: dict[str, date | None],
                   has_person_map: bool) -> dict[str, Any]:
    """Select, judge, rank and write one segment into ``folder``; returns its manifest entry."""
    table = SCORE_TABLE[d.template]
    score_as_of = snapshots[table]
    params: dict[str, Any] = {"as_of": as_of, "rep_as_of": snapshots["repurchase_scores"],
                              "conv_as_of": snapshots["conversion_scores"]}
    sql, reason = candidates_sql(con, d, ws.config.segments, snapshots["repurchase_scores"], params)
    used = {k: v for k, v in params.items() if f"${k}" in sql}
    con.execute(f"create or replace temp table _cand as {sql}", used)
    _judge(con, d, as_of, score_as_of, ws.config.privacy.consent_default_granted, has_person_map)
    order = "asc" if d.template in ASCENDING else "desc"
    con.execute(f"""
        create or replace temp table _members as
        select $segment as segment, person_id, anonymous_id, category, score, $reason as reason,
               row_number() over (partition by category order by score {order}, person_id, anonymous_id) as rank
        from _judged where excluded is null
        order by category nulls first, rank
    """, {"segment": d.name, "reason": reason})
    folder.mkdir()
    f = _sql_path(folder)
    con.execute(f"copy _members to '{f}/members.parquet' (format parquet)")
    con.execute(f"copy _members to '{f}/members.csv' (header)")
    key = "person_id, anonymous_id, category"
    cur = f"read_parquet('{f}/members.parquet')"
    prev = (f"read_parquet('{_sql_path(previous / d.name)}/members.parquet')"
            if previous and (previous / d.name / "members.parquet").is_file() else None)
    diff: dict[str, int] = {}
    for kind, a, b in (("added", cur, prev), ("removed", prev, cur)):
        if a is None:
            q = f"select {key} from _members where false"
        else:
            q = f"select {key} from {a}" + (f" except select {key} from {b}" if b else "")
        con.execute(f"copy ({q} order by all) to '{f}/{kind}.csv' (header)")
        diff[kind] = con.execute(f"select count(*) from ({q})").fetchall()[0][0]
    prev_folder = previous / d.name if previous and (previous / d.name).is_dir() else None
    files = activation.write_activation(con, "_members", f, d.channel)
    files.update(activation.write_activation_diff(con, f, _sql_path(prev_folder) if prev_folder else None, d.channel))
    members, persons, anonymous, expected = con.execute(
        "select count(*), count(distinct person_id), count(*) filter (where person_id is null), coalesce(sum(score), 0) "
        "from _members").fetchall()[0]
    candidates = con.execute("select count(*) from _cand").fetchall()[0][0]
    excluded = dict(con.execute("select excluded, count(*) from _judged where excluded is not null group by 1").fetchall())
    entry: dict[str, Any] = {
        "name": d.name, "template": d.template, "channel": d.channel, "purpose": d.purpose,
        "selection": reason, "categories": params.get("cats") or ([] if d.template.startswith("retarget") else [ANY]),
        "threshold": d.threshold, "top_percent": used.get("top_percent"), "keep_share": d.keep_share
        if d.template == "retargeting_exclude" else None,
        "filters": d.filters, "score_table": table, "score_as_of": str(score_as_of),
        "candidates": candidates, "members": members, "persons": persons, "anonymous_members": anonymous,
        "expected": round(float(expected), 3),
        "excluded": {r: int(excluded.get(r, 0)) for r in REASONS},
        "added": diff["added"], "removed": diff["removed"], "activation": files,
        "files": sorted(p.name for p in folder.iterdir()),
    }
    if d.template.startswith("retargeting"):
        pool_params: dict[str, Any] = {"as_of": as_of, "conv_as_of": snapshots["conversion_scores"]}
        pool = visitor_pool_sql(con, d, pool_params)
        n, total = con.execute(f"select count(*), coalesce(sum(score), 0) from ({pool})", pool_params).fetchall()[0]
        tail = con.execute("select count(*), coalesce(sum(score), 0) from _cand").fetchall()[0]
        entry["pool"] = {"visitors": n, "expected_conversions": round(float(total), 3),
                         "selected_visitors": tail[0], "selected_expected_conversions": round(float(tail[1]), 3)}
    return entry


def _score_versions(con: duckdb.DuckDBPyConnection, snapshots: dict[str, date | None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for table, snap in snapshots.items():
        if snap is None:
            continue
        versions = []
        if "model_version" in columns(con, table):
            versions = [r[0] for r in con.execute(
                f'select distinct model_version from "{table}" where as_of = ? order by 1', [snap]).fetchall()]
        out[table] = {"as_of": str(snap), "model_versions": versions}
    return out


def _recover_interrupted_swap(target: Path) -> None:
    """Undo what a crash in the middle of ``_swap_into_place`` left behind.

    The swap renames the old week aside before renaming the new one in; a crash between the two
    renames leaves only the aside copy, which is restored here; asides a crash left after the swap
    completed are removed.
    """
    asides = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if asides and not target.exists():
        os.rename(asides.pop(), target)
    for stale in asides:
        shutil.rmtree(stale, ignore_errors=True)


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished temp folder to the week's name, replacing a previous build of the same week."""
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, backup)
    try:
        os.rename(tmp, target)
    except OSError:
        if backup is not None:
            os.rename(backup, target)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _record(con: duckdb.DuckDBPyConnection, ws: Workspace, week: str, as_of: date, entries: list[dict[str, Any]]) -> None:
    """Counts tables for BI (no personal data) and the view over the latest week's members."""
    con.execute("""create table if not exists segment_counts(week varchar, as_of date, segment varchar, template varchar,
                   channel varchar, members bigint, persons bigint, added bigint, removed bigint, expected double)""")
    con.execute("create table if not exists segment_exclusions(week varchar, segment varchar, reason varchar, rows bigint)")
    con.execute("begin transaction")
    con.execute("delete from segment_counts where week = ?", [week])
    con.execute("delete from segment_exclusions where week = ?", [week])
    for e in entries:
        con.execute("insert into segment_counts values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [week, as_of, e["name"], e["template"], e["channel"], e["members"], e["persons"], e["added"],
                     e["removed"], e["expected"]])
        for reason, n in e["excluded"].items():
            con.execute("insert into segment_exclusions values (?, ?, ?, ?)", [week, e["name"], reason, n])
    con.execute("commit")
    refresh_views(con, ws)


def refresh_views(con: duckdb.DuckDBPyConnection, ws: Workspace) -> None:
    """(Re)point ``segment_members_latest`` at the newest complete week folder."""
    weeks = [w for w in week_folders(ws) if any(w.glob("*/members.parquet"))]
    if not weeks:
        con.execute("""create or replace view segment_members_latest as select null::varchar as week,
                       null::varchar as segment, null::varchar as person_id, null::varchar as anonymous_id,
                       null::varchar as category, null::double as score, null::varchar as reason,
                       null::bigint as rank where false""")
        return
    latest = weeks[-1]
    con.execute(f"""create or replace view segment_members_latest as
                    select '{latest.name}' as week, * from read_parquet('{_sql_path(latest)}/*/members.parquet')""")


def latest_scores_date(ws: Workspace) -> date:
    """The newest date any model scored as of: the week to segment for a historical export (``--as-of latest``),
    whose scores are years before the calendar's last completed week."""
    with ws.connect() as con:
        dates = [d for t in ("repurchase_scores", "conversion_scores") if (d := _snapshot(con, t, date.max))]
    if not dates:
        raise CdpError("no conversion_scores or repurchase_scores yet: run `cdp-ml score repurchase` and "
                       "`cdp-ml score conversion` first")
    return max(dates)


def default_as_of(ws: Workspace, as_of: date | str | None) -> date:
    """The run date of segments and report: given, ``"latest"`` (the newest scores' date), or by default the
    newest scores' date no later than the last completed week, else that week.

    So `cdp-ml segments` right after `cdp-ml score` builds the week the models scored, also for a historical
    export whose models score as of its own last Monday; the weekly refresh passes its date explicitly.
    """
    if as_of == "latest":
        return latest_scores_date(ws)
    if as_of is not None:
        return parse_date(as_of)
    calendar = last_completed_week_end()
    with ws.connect() as con:
        dates = [d for t in ("repurchase_scores", "conversion_scores") if (d := _snapshot(con, t, calendar))]
    return max(dates) if dates else calendar


def build_segments(ws: Workspace, as_of: date | str | None = None) -> SegmentsResult:
    """Build the week's consented segments and activation files into ``<output_dir>/<ISO week>/``.

    ``as_of``: see ``default_as_of`` (None: the week of the newest scores; ``"latest"``: even a later one).
    """
    from cdp_ml.segments.models import model_status

    as_of = default_as_of(ws, as_of)
    week = iso_week(as_of)
    root = ws.segments_dir
    root.mkdir(parents=True, exist_ok=True)
    target = root / week
    _recover_interrupted_swap(target)
    tmp = root / f".{week}.tmp-{uuid.uuid4().hex[:8]}"
    previous = _previous(ws, week)
    models = model_status(ws)
    with ws.connect() as con:
        snapshots = {t: _snapshot(con, t, as_of) for t in ("repurchase_scores", "conversion_scores")}
        if all(v is None for v in snapshots.values()):
            raise CdpError(f"no conversion_scores or repurchase_scores on or before {as_of}: "
                           f"run `cdp-ml score repurchase` and `cdp-ml score conversion` first")
        if not table_exists(con, "profiles"):
            raise CdpError("table profiles is missing: run `cdp-ml resolve` first")
        explicit = bool(ws.config.segments.definitions)
        definitions = ws.config.segments.definitions or default_definitions(
            con, snapshots["repurchase_scores"], snapshots["conversion_scores"])
        _check_definitions(con, definitions, snapshots, explicit)
        skipped = [f"{t} has no scores on or before {as_of}" for t, v in snapshots.items() if v is None]
        first_snapshot = min(v for v in snapshots.values() if v is not None)
        _prepare_rules(con, ws, as_of, first_snapshot, definitions)
        has_person_map = table_exists(con, "person_map")
        entries: list[dict[str, Any]] = []
        try:
            tmp.mkdir()
            for d in definitions:
                entries.append(_write_segment(con, ws, d, tmp / d.name, previous, as_of, snapshots, has_person_map))
            manifest = {
                "week": week, "as_of": str(as_of), "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "previous_week": previous.name if previous else None,
                "consent_default_granted": ws.config.privacy.consent_default_granted,
                "defaults_used": not explicit, "scores": _score_versions(con, snapshots), "models": models,
                "segments": entries, "skipped": skipped,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
            _swap_into_place(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _record(con, ws, week, as_of, entries)
    summaries = tuple(SegmentSummary(e["name"], e["template"], e["channel"], e["members"], e["added"], e["removed"],
                                     {k: v for k, v in e["excluded"].items() if v}) for e in entries)
    return SegmentsResult(week, as_of, target, previous.name if previous else None, summaries, tuple(skipped))
