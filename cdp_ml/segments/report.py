"""The weekly marketer report: one self-contained HTML page built from the week's manifest and scores.

Everything in it is a count, a sum of probabilities or a model metric -- never an identifier -- and the
charts are embedded PNGs, so the file can be mailed around and opened without a network.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from cdp_ml.engine import has_rows, table_exists
from cdp_ml.errors import CdpError
from cdp_ml.segments.build import MANIFEST, iso_week, week_folders
from cdp_ml.segments.models import model_status
from cdp_ml.segments.templates import ANY
from cdp_ml.workspace import Workspace

REASON_WORDS = {
    "erased": "erased on request", "opted_out": "objected to profiling or opted out",
    "no_consent": "no consent for the channel", "complaint": "open complaint in the category",
    "returned": "recent return in the category", "bought_since_scoring": "already bought since scoring",
    "filtered": "outside the segment's profile filters",
}

# What each model learns from, with its score table: a workspace without any of these rows (an orders-only
# log has no browsing) has no such model by design, which the report says instead of warning about it.
# Inputs are (table, row condition): purchases only teach repurchase timing when they belong to persons (a
# GA4 export without user ids has anonymous purchase events only).
MODEL_INPUTS = {
    "conversion-intent": (tuple((t, None) for t in ("events", "sessions", "person_events", "person_sessions")),
                          "events or sessions", "conversion_scores"),
    "repurchase-timing": ((("orders", None), ("person_orders", "person_id is not null")),
                          "orders or purchase events of known persons", "repurchase_scores"),
}


@dataclass(frozen=True)
class ReportResult:
    path: Path
    week: str
    warnings: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [f"report {self.week}: {self.path}"]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        warn = "".join(f"<li>{html.escape(w)}</li>" for w in self.warnings)
        return f"<p>Report {self.week}: <code>{html.escape(str(self.path))}</code></p>" + (
            f"<ul>{warn}</ul>" if warn else "")


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


BASELINES = ("heuristic", "logistic", "bgnbd", "naive", "baseline")


def _metric(metrics: dict[str, float], *suffixes: str) -> float | None:
    """The champion's own metric by name suffix, whatever prefix the model stage used.

    Models log their metric next to baselines' (``backtest_roc_auc``, ``backtest_logistic_roc_auc``,
    ``gate_model_all_roc_auc_1w``): baseline keys are skipped, backtest/gate keys and the all-tracks
    aggregate are preferred, then the shortest name.
    """
    for suffix in suffixes:
        keys = [k for k in metrics if (k == suffix or k.endswith("_" + suffix))
                and not any(b in k for b in BASELINES)]
        if keys:
            keys.sort(key=lambda k: ("backtest" not in k and "gate" not in k, "_all_" not in k, len(k)))
            return metrics[keys[0]]
    return None


def quality_in_words(name: str, status: dict[str, Any], as_of: date, retrain_after_weeks: int) -> tuple[list[str], list[str]]:
    """Plain sentences about a model's quality, and warnings (not refreshed, failed gate, none at all)."""
    words, warnings = [], []
    champion, latest = status.get("champion"), status.get("latest")
    if champion is None:
        warnings.append(f"{name}: no approved (champion) model in the registry")
        return words, warnings
    trained = date.fromisoformat(str(champion.get("data_as_of") or champion["created"])[:10])
    age_weeks = max(0, (as_of - trained).days // 7)
    words.append(f"Version {champion['version']} is in use, trained on data up to {trained}"
                 + (f" ({age_weeks} weeks before this run)." if age_weeks else " (this week)."))
    m = champion.get("metrics") or {}
    auc = _metric(m, "roc_auc", "roc_auc_1w", "auc")
    if auc is not None:
        grade = "strong" if auc >= 0.8 else "useful" if auc >= 0.7 else "weak" if auc >= 0.6 else "barely better than chance"
        words.append(f"In the backtest it put a random buyer above a random non-buyer {auc:.0%} of the time ({grade}).")
    keep = _metric(m, "audience_reduction_99")
    if keep is not None:
        words.append(f"Targeting only its top scores reaches 99% of the expected buyers with {keep:.0%} fewer people.")
    ece = _metric(m, "ece")
    if ece is not None:
        words.append(f"Its probabilities are off by {ece:.1%} on average, so expected counts can be read as counts.")
    if age_weeks > retrain_after_weeks:
        warnings.append(f"{name}: the model in use was not refreshed for {age_weeks} weeks "
                        f"(refresh is due after {retrain_after_weeks})")
    if latest and latest["version"] != champion["version"] and latest.get("gate") == "rejected":
        warnings.append(f"{name}: the newest model (version {latest['version']}) failed its quality gate "
                        f"({latest.get('gate_reason') or 'no reason recorded'}); version {champion['version']} stays in use")
    return words, warnings


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _repurchase_outlook(ws: Workspace, snapshot: str | None) -> tuple[list[list[Any]], str]:
    """Expected repurchasers per category and week (sum of probabilities) as rows and a chart."""
    if snapshot is None:
        return [], ""
    with ws.connect() as con:
        if not table_exists(con, "repurchase_scores"):
            return [], ""
        rows = con.execute("""select category, week, min(week_start) as week_start, sum(p_week) as expected
                              from repurchase_scores where as_of = ?::date and category <> ?
                              group by 1, 2 order by 1, 2""", [snapshot, ANY]).fetchall()
    if not rows:
        return [], ""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for cat in sorted({r[0] for r in rows}):
        pts = [(r[1], r[3]) for r in rows if r[0] == cat]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=cat)
    ax.set_xlabel("week ahead")
    ax.set_ylabel("expected repurchasers")
    ax.set_title("Expected repurchasers per category")
    ax.legend(fontsize=8, ncol=2)
    weeks = sorted({(r[1], str(r[2])[:10]) for r in rows})
    table = [[cat] + [next((round(r[3], 1) for r in rows if r[0] == cat and r[1] == w), "-") for w, _ in weeks]
             for cat in sorted({r[0] for r in rows})]
    return [["category"] + [f"week {w} ({start})" for w, start in weeks]] + table, _png(fig)


def _not_applicable(ws: Workspace) -> dict[str, str]:
    """Models whose inputs the warehouse does not have -> the sentence saying so."""
    with ws.connect() as con:
        return {name: f"Not applicable: the warehouse has no {words}."
                for name, (inputs, words, _) in MODEL_INPUTS.items() if not any(has_rows(con, t, w) for t, w in inputs)}


def write_report(ws: Workspace, as_of: date | str | None = None) -> ReportResult:
    """Write ``<report_dir>/report-<ISO week>.html`` for the week's segments; returns its path and warnings.

    ``as_of`` as for ``build_segments`` (None: the week of the newest scores, see ``default_as_of``).
    """
    from cdp_ml.segments.build import default_as_of

    as_of = default_as_of(ws, as_of)
    week = iso_week(as_of)
    folder = ws.segments_dir / week
    if not (folder / MANIFEST).is_file():
        raise CdpError(f"no segments for {week} in {ws.relative(ws.segments_dir)}: run `cdp-ml segments --as-of {as_of}` first")
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    prev_name = manifest.get("previous_week")
    prev = {}
    if prev_name and (ws.segments_dir / prev_name / MANIFEST).is_file():
        prev_manifest = json.loads((ws.segments_dir / prev_name / MANIFEST).read_text(encoding="utf-8"))
        prev = {s["name"]: s for s in prev_manifest["segments"]}
    not_applicable = _not_applicable(ws)
    quiet = tuple(MODEL_INPUTS[name][2] for name in not_applicable)
    warnings: list[str] = [w for w in manifest.get("skipped", []) if not w.startswith(quiet)]
    for table, info in manifest.get("scores", {}).items():
        if info["as_of"] != manifest["as_of"]:
            warnings.append(f"{table} are from {info['as_of']}, not this run's date {manifest['as_of']}: "
                            f"the model was not re-scored this week")
    segments = manifest["segments"]
    plt = _pyplot()

    size_rows = []
    for s in segments:
        last = prev.get(s["name"], {}).get("members")
        change = "new" if last is None else f"{s['members'] - last:+d}"
        size_rows.append([s["name"], s["channel"], s["members"], "-" if last is None else last, change,
                          s["added"], s["removed"], s["selection"]])
    sizes_chart = ""
    if segments:
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(segments) + 1))
        names = [s["name"] for s in segments][::-1]
        ax.barh(names, [s["members"] for s in segments][::-1], color="#4472c4", label="this week")
        ax.barh(names, [prev.get(n, {}).get("members", 0) for n in names], color="none", edgecolor="#c00000",
                label="last week")
        ax.set_xlabel("members")
        ax.legend(fontsize=8)
        sizes_chart = _png(fig)

    reasons = [r for r in REASON_WORDS if any(s["excluded"].get(r) for s in segments)]
    excl_rows = [[s["name"], s["candidates"]] + [s["excluded"].get(r, 0) for r in reasons] for s in segments]

    outlook_rows, outlook_chart = _repurchase_outlook(ws, manifest.get("scores", {}).get("repurchase_scores", {}).get("as_of"))

    retarget = []
    for s in segments:
        pool = s.get("pool")
        if not pool:
            continue
        if s["template"] == "retargeting_exclude" and pool["visitors"]:
            share_v = pool["selected_visitors"] / pool["visitors"]
            share_c = pool["selected_expected_conversions"] / pool["expected_conversions"] if pool["expected_conversions"] else 0
            retarget.append(f"Leaving out the {pool['selected_visitors']} least likely visitors ({share_v:.0%} of "
                            f"{pool['visitors']} recent non-buying visitors) gives up {pool['selected_expected_conversions']:.1f} "
                            f"of {pool['expected_conversions']:.1f} expected conversions ({share_c:.1%}); "
                            f"{s['members']} of them can be uploaded as an exclusion list.")
        elif s["template"] == "retargeting_high_intent":
            retarget.append(f"{pool['visitors']} recent visitors who did not buy are expected to bring "
                            f"{pool['expected_conversions']:.1f} conversions next week; segment {s['name']} holds "
                            f"{s['members']} allowed high-intent visitors expected to bring {s['expected']:.1f}.")

    model_html = []
    for name, status in (manifest.get("models") or model_status(ws)).items():
        if name in not_applicable and status.get("champion") is None:
            words, warns = [not_applicable[name]], []
        else:
            words, warns = quality_in_words(name, status, as_of, ws.config.refresh.retrain_after_weeks)
        warnings += warns
        model_html.append(f"<h3>{html.escape(name)}</h3><p>{html.escape(' '.join(words) or 'No approved model.')}</p>")

    warn_html = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Weekly segments {week}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:14px;text-align:left}}
th{{background:#f0f0f0}}.warn{{background:#fff4e5;border-left:4px solid #f0a000;padding:.5em 1em}}</style></head>
<body><h1>Weekly segments {week}</h1>
<p>Run date {manifest['as_of']} (data up to the day before); compared with {prev_name or 'no earlier week'}.
Generated {generated}. Counts only: this page holds no personal data.</p>
{f'<div class="warn"><b>Warnings</b><ul>{warn_html}</ul></div>' if warnings else ''}
<h2>Segment sizes</h2>
{_table(['segment', 'channel', 'members', 'last week', 'change', 'added', 'removed', 'selection'], size_rows)}
{sizes_chart}
<h2>Who was left out, and why</h2>
<p>Each candidate is counted once, under the first rule that excludes them. Nobody without consent for the
segment's channel is in any file.</p>
{_table(['segment', 'candidates'] + [REASON_WORDS[r] for r in reasons], excl_rows)}
<h2>Expected repurchasers in the coming weeks</h2>
<p>Sum of the predicted probabilities per category and week: the number of people expected to buy again.</p>
{outlook_chart}
{_table(outlook_rows[0], outlook_rows[1:]) if outlook_rows else '<p>No repurchase scores.</p>'}
<h2>Retargeting: expected conversions and saving</h2>
{''.join(f'<p>{html.escape(t)}</p>' for t in retarget) or '<p>No retargeting segments this week.</p>'}
<h2>Model quality</h2>
{''.join(model_html)}
</body></html>
"""
    out_dir = ws.path(ws.config.segments.report_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"report-{week}.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return ReportResult(path, week, tuple(warnings))


def latest_report(ws: Workspace) -> Path | None:
    """The newest report file, for notebooks and the refresh summary."""
    weeks = week_folders(ws)
    for w in reversed(weeks):
        p = ws.path(ws.config.segments.report_dir) / f"report-{w.name}.html"
        if p.is_file():
            return p
    return None
