"""Probabilistic matching of customer records with Splink 5 on DuckDB.

Comparisons are built from whatever match columns the workspace fills (missing fields are left out), so
the same code serves a rich CRM and a bare FEBRL-like file. u is trained by random sampling and m by EM
every run (or a saved model is reused). Blocking rules are pre-counted in SQL and a rule that would
produce more than ``max_rule_comparisons_per_record`` pairs per record keeps only its values shared by
few enough records to fit that budget (or is dropped), which keeps the comparison count far from
cartesian at millions of records.

Guardrail after scoring: a pair is only accepted when it has evidence about the *individual* (first
name, date of birth, email or an extra id field agrees) and the first names do not flatly disagree;
people sharing a surname, address or household phone are therefore never joined on that alone. Pairs
whose only individual evidence is the name are marked not ``corroborated``: clustering merges them
cautiously (``cdp_ml.identity.clustering.merge_weak_edges``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import splink.comparison_level_library as cll
import splink.comparison_library as cl
from splink import DuckDBAPI, Linker, SettingsCreator
from splink.internals.comparison_level import M_U_CLAMP_MIN, ComparisonLevel

from cdp_ml.errors import CdpError
from cdp_ml.identity.inputs import MatchColumn, dob_conflict_sql
from cdp_ml.identity.settings import IdentitySettings

MODEL_FILE = "identity_splink_model.json"
EM_MAX_PAIRS = 2e6
EM_MAX_ITERATIONS = 12  # unobserved levels decay towards m = 0, which Splink rejects after many iterations
M_FLOOR = 1e-3  # no single disagreeing field may veto a match with a near-infinite negative weight
# A pair is corroborated when a field about the individual other than the name (birth date, email, phone,
# extra id) agrees with at least this term-frequency-adjusted match weight (log2 odds). The email number
# needs more: a common one mostly repeats a birth year (anna1985@), evidence name and birth date already gave,
# while a rare one (anna_1458@) is personal.
CORROBORATION_BITS = 6.0
EMAIL_NUMBER_CORROBORATION_BITS = 10.0
MAX_CAPPED_BLOCK = 50  # a value on more records than this is no identifier: a capped rule never keeps it
MIN_RULE_BUDGET = 100_000  # small workspaces keep every blocking rule
# Blocking rules in order of preference; a rule is used when all its columns are compared.
PREDICTION_RULES: tuple[tuple[str, ...], ...] = (
    ("email",), ("phone",), ("first_canon", "last_name"), ("last_name", "dob"), ("first_canon", "dob"),
    ("postcode", "house_number"), ("last_name", "postcode"), ("dob", "city"), ("first_canon", "postcode"),
    ("first_canon", "email_number"), ("email_number",),
)
# EM sessions: each trains the comparisons not in its blocking columns; stop when all are trained.
EM_RULES: tuple[tuple[str, ...], ...] = (
    ("dob",), ("first_canon", "last_name"), ("postcode",), ("email",), ("phone",), ("last_name",), ("city",),
)
# Deterministic rules for the prior (probability two random records match).
PRIOR_RULES: tuple[tuple[str, ...], ...] = (
    ("email",), ("phone",), ("first_canon", "last_name", "dob"), ("first_canon", "last_name", "postcode"),
)
# Which match column a blocking column belongs to.
BLOCK_COLUMN_OWNER = {"first_canon": "first_name", "house_number": "address"}


@dataclass(frozen=True)
class MatchOutcome:
    comparisons: int
    pairs_scored: int
    accepted: int
    rules: tuple[str, ...]
    trained: bool
    comparison_names: tuple[str, ...]
    rule_columns: tuple[tuple[str, ...], ...] = ()  # columns each used blocking rule equates (on _id_records)
    notes: tuple[str, ...] = ()  # what matching said (blocking rules capped, model reused), for a run reusing its pairs

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> MatchOutcome:
        """Back from JSON (lists to tuples)."""
        return cls(**{**d, "rules": tuple(d["rules"]), "comparison_names": tuple(d["comparison_names"]),
                      "rule_columns": tuple(tuple(r) for r in d["rule_columns"]), "notes": tuple(d["notes"])})


def _comparison(col: MatchColumn):
    n = col.name
    if col.comparison == "first_name":
        return cl.CustomComparison(
            output_column_name="first_name",
            comparison_levels=[
                cll.NullLevel("first_name"),
                cll.ExactMatchLevel("first_name", term_frequency_adjustments=True),
                cll.ExactMatchLevel("first_canon").configure(label_for_charts="Nickname of the same name"),
                cll.JaroWinklerLevel("first_canon", 0.9).configure(label_for_charts="Nickname of a similar name"),
                cll.JaroWinklerLevel("first_name", 0.92),
                cll.JaroWinklerLevel("first_name", 0.8),
                cll.CustomLevel("first_key_l = last_name_r and last_name_l = first_key_r",
                                label_for_charts="First and last name swapped"),
                cll.CustomLevel("(length(first_name_l) = 1 or length(first_name_r) = 1) "
                                "and first_name_l[1] = first_name_r[1]", label_for_charts="Initial matches"),
                cll.ElseLevel(),
            ],
        ).configure(m_probabilities=[0.6, 0.15, 0.04, 0.05, 0.03, 0.02, 0.06, 0.05])  # starting values for EM
    if col.comparison == "last_name":
        return cl.NameComparison("last_name", jaro_winkler_thresholds=[0.92, 0.8])
    if col.comparison in ("dob", "date"):
        return cl.DateOfBirthComparison(n, input_is_string=False)
    if col.comparison == "address":
        return cl.CustomComparison(
            output_column_name="address",
            comparison_levels=[
                cll.NullLevel("address"),
                cll.ExactMatchLevel("address", term_frequency_adjustments=True),
                cll.And(cll.ExactMatchLevel("house_number"), cll.JaroWinklerLevel("street", 0.88)),
                cll.ExactMatchLevel("street"),
                cll.ElseLevel(),
            ],
        )
    if col.comparison == "postcode":
        return cl.LevenshteinAtThresholds("postcode", [1]).configure(term_frequency_adjustments=True)
    if col.comparison == "city":
        return cl.JaroWinklerAtThresholds("city", [0.9]).configure(term_frequency_adjustments=True)
    if col.comparison == "email":
        # exact only: a similar or equal local part at another domain mostly repeats the name (namesakes)
        return cl.CustomComparison(
            output_column_name="email",
            comparison_levels=[
                cll.NullLevel("email"),
                cll.ExactMatchLevel("email", term_frequency_adjustments=True),
                cll.ElseLevel(),
            ],
        )
    if col.comparison == "email_number":
        return cl.ExactMatch("email_number").configure(term_frequency_adjustments=True)
    if col.comparison == "phone":
        return cl.LevenshteinAtThresholds("phone", [1, 2])
    if col.comparison == "exact":
        return cl.ExactMatch(n)
    if col.comparison == "levenshtein":
        return cl.LevenshteinAtThresholds(n, [1, 2])
    if col.comparison == "jaro_winkler":
        return cl.JaroWinklerAtThresholds(n, [0.92, 0.8])
    raise CdpError(f"identity: unknown comparison {col.comparison!r} for {n}")


def _rule_columns(cols: list[MatchColumn]) -> set[str]:
    names = {c.name for c in cols}
    out = set(names)
    if "first_name" in names:
        out.add("first_canon")
    if "address" in names:
        out |= {"street", "house_number"}
    return out


def _count_rule(con: duckdb.DuckDBPyConnection, rule: tuple[str, ...], link_only: bool) -> int:
    """Pairs a blocking rule generates (link_only: minus the pairs within one source)."""
    keys = ", ".join(f'"{c}"' for c in rule)
    not_null = " and ".join(f'"{c}" is not null' for c in rule)
    total = con.execute(f"""select coalesce(sum(n * (n - 1) / 2), 0) from (
        select count(*) as n from _id_match where {not_null} group by {keys}) t""").fetchall()[0][0]
    if link_only:
        total -= con.execute(f"""select coalesce(sum(n * (n - 1) / 2), 0) from (
            select count(*) as n from _id_match where {not_null} group by {keys}, source_name) t""").fetchall()[0][0]
    return int(total)


def _capped_rule(con: duckdb.DuckDBPyConnection, rule: tuple[str, ...], budget: float) -> tuple[str, int, int] | None:
    """A rule over budget restricted to its values shared by at most ``cap`` records, the largest cap (at most
    ``MAX_CAPPED_BLOCK``) that fits the budget: ``(blocking column added to _id_match, cap, pairs)``, or None when not even pairs fit.

    The most common values (``jan de jong`` at a million records) are left out: they generate most of the
    pairs and carry the least evidence, while rarer names still find each other.
    """
    keys = ", ".join(f'"{c}"' for c in rule)
    not_null = " and ".join(f'"{c}" is not null' for c in rule)
    sizes = con.execute(f"""select n, count(*) from (select count(*) as n from _id_match where {not_null} group by {keys})
                            where n >= 2 group by n order by n""").fetchall()
    cap = pairs = 0
    for n, groups in sizes:
        more = groups * n * (n - 1) // 2
        if pairs + more > budget or n > MAX_CAPPED_BLOCK:
            break
        cap, pairs = n, pairs + more
    if cap < 2:
        return None
    column = "blk_" + "_".join(rule)
    con.execute(f"""create or replace table _id_match as
        select m.*, case when k.n <= {cap} then concat_ws(chr(31), {', '.join(f'cast(m."{c}" as varchar)' for c in rule)})
          end as "{column}"
        from _id_match m left join (select {keys}, count(*) as n from _id_match where {not_null} group by {keys}) k
          using ({keys})""")
    return column, cap, pairs


def _rule(rule: tuple[str, ...], link_only: bool) -> str:
    """Blocking rule SQL (equal, non-null columns; across sources only for link_only)."""
    cond = " and ".join(f'l."{c}" = r."{c}"' for c in rule)
    return cond + (" and l.source_name <> r.source_name" if link_only else "")


def _trained_by(rule: tuple[str, ...]) -> set[str]:
    return {BLOCK_COLUMN_OWNER.get(c, c) for c in rule}


def _saved_model(path: Path, cols: list[MatchColumn], settings: IdentitySettings, retrain: bool,
                 log: list[str]) -> dict | None:
    """The saved Splink model to predict with, or None to train: reused when the workspace says so or the
    refresh scores only, and only while it compares exactly this run's fields."""
    if not (settings.reuse_model or not retrain) or not path.is_file():
        return None
    model = json.loads(path.read_text(encoding="utf-8"))
    saved_cols = {c.get("output_column_name") for c in model.get("comparisons", [])}
    if saved_cols == {c.name for c in cols}:
        log.append(f"predicted with the saved model {MODEL_FILE} (not retrained this run)")
        return model
    if settings.reuse_model:
        raise CdpError(f"identity.reuse_model: the saved model {MODEL_FILE} compares other fields than this "
                       "workspace now has; set reuse_model: false to retrain")
    log.append(f"the saved model {MODEL_FILE} compares other fields than this run: retrained")
    return None


def match(con: duckdb.DuckDBPyConnection, cols: list[MatchColumn], settings: IdentitySettings,
          model_dir: Path, log: list[str], retrain: bool = True) -> MatchOutcome:
    """Score record pairs; writes temp table ``_id_pairs(node_l, node_r, match_probability, match_weight,
    field_weights, accepted, reason)`` and returns counts.

    ``retrain=False`` (a score-only week of the refresh) predicts with the saved model when it compares the
    same fields, so the weekly run skips u-sampling and EM; ``identity.reuse_model`` makes that permanent.
    """
    logging.getLogger("splink").setLevel(logging.ERROR)  # untrained-level chatter is expected on sparse fields
    link_only = settings.link_type == "link_only"
    extra = [c.name for c in cols if c.comparison not in
             ("first_name", "last_name", "dob", "address", "postcode", "city", "email", "phone", "email_number")]
    select = ["n.node as unique_id", "r.source as source_name"]
    for c in ("first_name", "first_canon", "first_key", "last_name", "dob", "street", "house_number", "address", "postcode",
              "city", "email", "phone", "email_number"):
        select.append(f"r.{c}")
    select += [f'r."{e}"' for e in extra]
    con.execute(f"""create or replace temp table _id_match as
        select {', '.join(select)} from _id_records r join _id_nodes n
          on n.id_type = 'record' and n.source = r.source and n.record_id = r.record_id""")
    # Splink writes dozens of intermediate tables: keep them in memory, off the warehouse file
    wh, con = con, duckdb.connect()
    con.register("_id_match_arrow", wh.sql("select * from _id_match").to_arrow_table())
    con.execute("create table _id_match as select * from _id_match_arrow")
    con.unregister("_id_match_arrow")
    try:
        return _match_in_memory(wh, con, cols, settings, model_dir, log, link_only, retrain)
    finally:
        con.close()


def _match_in_memory(wh: duckdb.DuckDBPyConnection, con: duckdb.DuckDBPyConnection, cols: list[MatchColumn],
                     settings: IdentitySettings, model_dir: Path, log: list[str], link_only: bool,
                     retrain: bool) -> MatchOutcome:
    n_records = con.execute("select count(*) from _id_match").fetchall()[0][0]
    usable = _rule_columns(cols)
    candidates = [r for r in PREDICTION_RULES if set(r) <= usable]
    candidates += [(c.name,) for c in cols if c.block]
    budget = max(settings.max_rule_comparisons_per_record * n_records, MIN_RULE_BUDGET)
    rules: list[tuple[str, ...]] = []
    shown: list[str] = []
    compared: list[tuple[str, ...]] = []
    comparisons = 0
    for rule in candidates:
        k = _count_rule(con, rule, link_only)
        block, label = rule, "+".join(rule)
        if k > budget:
            capped = _capped_rule(con, rule, budget)
            if capped is None:
                log.append(f"blocking rule {label} skipped: {k:,} pairs exceed the budget of {int(budget):,}")
                continue
            column, cap, k = capped
            log.append(f"blocking rule {label} kept for values on at most {cap} records ({k:,} pairs; "
                       f"all values: more than the budget of {int(budget):,})")
            block, label = (column,), f"{label}(<={cap})"
        elif k == 0:
            continue
        rules.append(block)
        shown.append(label)
        compared.append(rule)
        comparisons += k
    if not rules or n_records < 2:
        _empty_pairs(wh)
        return MatchOutcome(0, 0, 0, (), False, tuple(c.name for c in cols))

    db_api = DuckDBAPI(connection=con)
    sdf = db_api.register("_id_match")
    model_path = model_dir / MODEL_FILE
    trained = True
    model = _saved_model(model_path, cols, settings, retrain, log)
    if model is not None:
        trained = False
    else:
        creator = SettingsCreator(
            link_type="dedupe_only", unique_id_column_name="unique_id",
            comparisons=[_comparison(c) for c in cols],
            blocking_rules_to_generate_predictions=[_rule(r, link_only) for r in rules],
            retain_matching_columns=True, retain_intermediate_calculation_columns=True,
            max_iterations=EM_MAX_ITERATIONS,
        )
        linker = Linker(sdf, creator, log_level=logging.ERROR)
        _train(linker, con, cols, usable, settings, link_only, log)
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp_model = model_path.with_name(f".tmp-{model_path.name}")
        linker.misc.save_model_to_json(str(tmp_model), overwrite=True)
        os.replace(tmp_model, model_path)  # atomic: a killed refresh never leaves a torn model for the next run
        # predict from the file, as every score-only week will: a week after training with unchanged data then
        # gets exactly this week's pairs, so it can keep them (cdp_ml.identity.state)
        model = json.loads(model_path.read_text(encoding="utf-8"))
    linker = _predicting_linker(sdf, model, rules, link_only)

    threshold = min(settings.review_threshold, settings.match_threshold)
    pairs = linker.inference.predict(threshold_match_probability=threshold)
    rel = pairs.as_duckdbpyrelation()  # noqa: F841 - used by name in the SQL below
    gammas = {c.name: f'"gamma_{c.name}"' for c in cols}
    person_level = [c.name for c in cols if c.person_level]
    # first-name levels (gamma): 7 exact, 6 nickname, 5 similar nickname, 4 JW>=0.92, 3 JW>=0.8, 2 swapped,
    # 1 initial, 0 else; a merely similar name (Sophia ~ Joephina) is no evidence of the individual
    evidence = " or ".join(f"{gammas[n]} in (2, 4, 5, 6, 7)" if n == "first_name" else f"{gammas[n]} > 0"
                           for n in person_level) or "false"
    first_conflict = f"{gammas['first_name']} = 0" if "first_name" in gammas else "false"
    initial = f"{gammas['first_name']} = 1" if "first_name" in gammas else "false"
    # corroborated: an individual field other than the name agrees (and the birth dates do not conflict);
    # a pair resting on names (+ household fields) only is a weak edge that clustering attaches cautiously
    have = set(rel.columns)
    weight = {c.name: f'("mw_{c.name}" + coalesce("mw_tf_adj_{c.name}", 0))' if f"mw_tf_adj_{c.name}" in have
              else f'"mw_{c.name}"' for c in cols}  # term-frequency adjusted: a common birth year is little evidence
    beyond_name = " or ".join(
        f"{weight[n]} >= {EMAIL_NUMBER_CORROBORATION_BITS if n == 'email_number' else CORROBORATION_BITS}"
        for n in person_level if n != "first_name") or "false"
    dob_conflict = dob_conflict_sql("dob_l", "dob_r") if "dob" in gammas else "false"
    # the same first name (not a nickname: Lisa and Elisabeth share homes), surname and home is the individual too: a second webshop account
    # of one person differs in account number, e-mail and phone; a namesake at the same postcode (20 houses)
    # is rare (demo 20k: 8 of 4,724 such pairs), and differing birth dates still keep them apart
    homes = [f"{c}_l = {c}_r" for c in ("postcode", "address") if f"{c}_l" in have]
    name_and_home = (f"{gammas['first_name']} = 7 and lower(last_name_l) = lower(last_name_r) "
                     f"and ({' or '.join(homes)})") if homes and "first_name" in gammas and "last_name_l" in have \
        else "false"
    con.execute(f"""create or replace temp table _id_scored as
        select least(unique_id_l, unique_id_r) as node_l, greatest(unique_id_l, unique_id_r) as node_r,
          match_probability, match_weight, map([{', '.join(repr(c.name) for c in cols)}],
            [{', '.join(weight[c.name] for c in cols)}]) as field_weights,
          case when match_probability < ? then 'below threshold'
               when {first_conflict} then 'first names disagree'
               when not ({evidence}) and {initial} then 'initial only'
               when not ({evidence}) then 'no individual evidence (household fields only)'
          end as reason,
          coalesce(({beyond_name} or {name_and_home}) and not ({dob_conflict}), false) as corroborated
        from rel""", [settings.match_threshold])
    # an initial alone ("T.") is evidence only when it fits one first name among the record's candidates:
    # "T. van Vliet" next to both Tessa and Thom van Vliet at one address joins neither
    con.execute("""create or replace temp table _id_pairs as
        with initial_pairs as (
          select s.node_l, s.node_r, case when length(l.first_name) <= 1 then s.node_l else s.node_r end as short,
                 case when length(l.first_name) <= 1 then r.first_canon else l.first_canon end as other_name
          from _id_scored s join _id_match l on l.unique_id = s.node_l join _id_match r on r.unique_id = s.node_r
          where s.reason = 'initial only'),
        unambiguous as (select short from initial_pairs group by short having count(distinct other_name) = 1)
        select s.* replace (case when s.reason = 'initial only' and u.short is not null then null
                                 when s.reason = 'initial only' then 'initial fits several people'
                                 else s.reason end as reason)
        from _id_scored s
        left join initial_pairs i on i.node_l = s.node_l and i.node_r = s.node_r
        left join unambiguous u on u.short = i.short""")
    wh.register("_id_pairs_arrow", con.sql("select *, reason is null as accepted from _id_pairs").to_arrow_table())
    wh.execute("create or replace temp table _id_pairs as select * from _id_pairs_arrow")
    wh.unregister("_id_pairs_arrow")
    scored, accepted = wh.execute("select count(*), count(*) filter (where accepted) from _id_pairs").fetchall()[0]
    return MatchOutcome(comparisons, int(scored), int(accepted), tuple(shown), trained,
                        tuple(c.name for c in cols), tuple(compared))


def _predicting_linker(sdf, model: dict, rules: list[tuple[str, ...]], link_only: bool) -> Linker:  # noqa: ANN001
    """A linker predicting with a saved model over this run's blocking rules and term frequencies."""
    model["blocking_rules_to_generate_predictions"] = [
        {"blocking_rule": _rule(r, link_only), "sql_dialect": "duckdb"} for r in rules]
    linker = Linker(sdf, model, log_level=logging.ERROR)
    tf_columns = {level["tf_adjustment_column"] for comp in model.get("comparisons", [])
                  for level in comp.get("comparison_levels", []) if level.get("tf_adjustment_column")}
    for column in sorted(tf_columns):
        linker.table_management.compute_tf_table(column)
    return linker


@contextmanager
def _clamped_em_probabilities() -> Iterator[None]:
    """Splink 5.0 EM can drive an unobserved level's m below 1e-300 and then refuses to store it,
    aborting the session; clamp such values to Splink's own minimum while EM runs."""
    prop = ComparisonLevel.m_probability

    def setter(self, value):  # noqa: ANN001 - mirrors Splink's setter
        if isinstance(value, float) and value < M_U_CLAMP_MIN:
            value = M_U_CLAMP_MIN
        prop.fset(self, value)

    ComparisonLevel.m_probability = property(prop.fget, setter)
    try:
        yield
    finally:
        ComparisonLevel.m_probability = prop


def _train(linker: Linker, con: duckdb.DuckDBPyConnection, cols: list[MatchColumn], usable: set[str],
           settings: IdentitySettings, link_only: bool, log: list[str]) -> None:
    prior = [_rule(r, link_only) for r in PRIOR_RULES if set(r) <= usable]
    if prior:
        try:
            linker.training.estimate_probability_two_random_records_match(prior, recall=0.7)
        except Exception as exc:  # noqa: BLE001 - no deterministic matches: keep Splink's default prior
            log.append(f"prior left at default: {str(exc).splitlines()[0][:120]}")
    linker.training.estimate_u_using_random_sampling(max_pairs=settings.max_pairs_u, seed=settings.seed,
                                                     num_chunks=1, min_count_per_level=None)
    untrained = {c.name for c in cols}
    for rule in EM_RULES + tuple((c.name,) for c in cols if c.block):
        if not untrained:
            break
        if not set(rule) <= usable or not (untrained - _trained_by(rule)):
            continue
        if _count_rule(con, rule, link_only) == 0:
            continue
        saved = linker._settings_obj.core_model_settings.copy()  # a failed session leaves comparisons removed
        try:
            with _clamped_em_probabilities():
                linker.training.estimate_parameters_using_expectation_maximisation(
                    _rule(rule, link_only), max_pairs=EM_MAX_PAIRS)
        except Exception as exc:  # noqa: BLE001 - a session that cannot converge is skipped, u stays trained
            linker._settings_obj.core_model_settings = saved
            log.append(f"EM on {'+'.join(rule)} skipped: {str(exc).splitlines()[0][:120]}")
            continue
        untrained -= set(c.name for c in cols) - _trained_by(rule)
    if untrained:
        log.append(f"m not trained by EM for: {', '.join(sorted(untrained))} (defaults used)")
    for comparison in linker._settings_obj.core_model_settings.comparisons:
        for level in comparison.comparison_levels:
            if not level.is_null_level and level._m_probability is not None and level._m_probability < M_FLOOR:
                level.m_probability = M_FLOOR


def _empty_pairs(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""create or replace temp table _id_pairs(node_l bigint, node_r bigint, match_probability double,
        match_weight double, field_weights map(varchar, double), reason varchar, corroborated boolean,
        accepted boolean)""")
