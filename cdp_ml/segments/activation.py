"""Activation files: identifiers normalised by each platform's published rules, then SHA-256 hashed.

Both rules are SQL expressions so a million-person audience is hashed inside DuckDB (``sha256`` gives
lower-case hex, as both platforms expect):

* Google Customer Match: trim and lower-case e-mails; for ``gmail.com`` / ``googlemail.com`` remove the
  dots of the local part; phones in E.164 *with* the leading ``+``.
* Meta custom audiences: trim and lower-case e-mails (no Gmail dot rule); phones as digits only with
  the country code, no ``+`` and no leading zeros.

Phones in ``profiles`` are already E.164 (ingestion normalises them); the expressions still strip
spaces, dashes and a ``00`` international prefix so hand-made data hashes the same way.
"""

from __future__ import annotations

import duckdb

GOOGLE_FILE = "google_customer_match.csv"
META_FILE = "meta_custom_audience.csv"
EMAIL_FILE = "email.csv"


def _email(col: str) -> str:
    return f"nullif(lower(trim({col})), '')"


def google_email_sql(col: str) -> str:
    """Google's normalised e-mail: trim, lower-case, Gmail local part without dots."""
    e = _email(col)
    return (f"case when regexp_matches({e}, '@(gmail|googlemail)\\.com$') "
            f"then replace(split_part({e}, '@', 1), '.', '') || '@' || split_part({e}, '@', 2) else {e} end")


def meta_email_sql(col: str) -> str:
    """Meta's normalised e-mail: trim, lower-case."""
    return _email(col)


def _phone_digits(col: str) -> str:
    # digits only, without a 00 international prefix; NULL when nothing (or too little) is left
    digits = f"regexp_replace(regexp_replace(coalesce({col}, ''), '[^0-9]', '', 'g'), '^00', '')"
    return f"case when length({digits}) >= 7 then {digits} end"


def google_phone_sql(col: str) -> str:
    """Google's normalised phone: E.164 with the leading '+'."""
    return f"'+' || {_phone_digits(col)}"


def meta_phone_sql(col: str) -> str:
    """Meta's normalised phone: digits with country code, no '+', no leading zeros."""
    return f"nullif(ltrim({_phone_digits(col)}, '0'), '')"


def hashed_sql(expr: str) -> str:
    return f"case when ({expr}) is not null then sha256({expr}) end"


def hash_identifiers(con: duckdb.DuckDBPyConnection, emails: list[str | None],
                     phones: list[str | None]) -> list[tuple[str | None, str | None, str | None, str | None]]:
    """(google_email, google_phone, meta_email, meta_phone) hashes for plain values, via the same SQL."""
    con.sql("select unnest(?::varchar[]) as email, unnest(?::varchar[]) as phone",
            params=[emails, phones]).create_view("_plain_identifiers", replace=True)
    q = (f"select {hashed_sql(google_email_sql('email'))}, {hashed_sql(google_phone_sql('phone'))}, "
         f"{hashed_sql(meta_email_sql('email'))}, {hashed_sql(meta_phone_sql('phone'))} from _plain_identifiers")
    return [tuple(r) for r in con.sql(q).fetchall()]  # type: ignore[misc]


def write_activation(con: duckdb.DuckDBPyConnection, members: str, folder: str, channel: str) -> dict[str, int]:
    """Write the upload files of one segment's ``members`` table into ``folder``; returns rows per file.

    Ads segments get a Google Customer Match and a Meta custom-audience CSV (hashed, one row per person
    with an e-mail or phone) plus ``activation.parquet`` (person_id and the hashes) from which next week's
    run derives the hashed removals. E-mail segments get ``email.csv`` with plain e-mails and person ids.
    Anonymous members (no person) cannot be uploaded as contacts and appear in no activation file.
    """
    base = f"""
        select m.person_id, any_value(p.email) as email, any_value(p.phone) as phone
        from "{members}" m join profiles p using (person_id)
        where m.person_id is not null
        group by m.person_id
    """
    counts: dict[str, int] = {}
    if channel == "email":
        con.execute(f"create or replace temp table _activation as select person_id, {_email('email')} as email "
                    f"from ({base}) where {_email('email')} is not null order by person_id")
        con.execute(f"copy (select email, person_id from _activation order by person_id) to '{folder}/{EMAIL_FILE}' (header)")
        counts["email"] = con.execute("select count(*) from _activation").fetchall()[0][0]
        return counts
    con.execute(f"""
        create or replace temp table _activation as
        select person_id,
               {hashed_sql(google_email_sql('email'))} as google_email, {hashed_sql(google_phone_sql('phone'))} as google_phone,
               {hashed_sql(meta_email_sql('email'))} as meta_email, {hashed_sql(meta_phone_sql('phone'))} as meta_phone
        from ({base})
        order by person_id
    """)
    con.execute(f"copy (from _activation order by person_id) to '{folder}/activation.parquet' (format parquet)")
    counts["google"] = _copy_upload(con, "_activation", "google", f"{folder}/{GOOGLE_FILE}")
    counts["meta"] = _copy_upload(con, "_activation", "meta", f"{folder}/{META_FILE}")
    return counts


def _copy_upload(con: duckdb.DuckDBPyConnection, table: str, platform: str, path: str) -> int:
    """Copy one platform's upload file from a table holding <platform>_email/<platform>_phone hashes."""
    headers = ("Email", "Phone") if platform == "google" else ("email", "phone")
    query = (f'select {platform}_email as "{headers[0]}", {platform}_phone as "{headers[1]}" from {table} '
             f"where {platform}_email is not null or {platform}_phone is not null")
    # ordered so a re-run of the same week writes byte-identical files (set operations are unordered)
    con.execute(f"copy ({query} order by person_id) to '{path}' (header)")
    return con.execute(f"select count(*) from ({query})").fetchall()[0][0]


def write_activation_diff(con: duckdb.DuckDBPyConnection, folder: str, previous: str | None,
                          channel: str) -> dict[str, int]:
    """Add/remove upload files versus the previous week's activation of the same segment.

    Removals come from the previous week's own files (so a person whose e-mail changed, or who is no
    longer allowed, is removed with exactly the identifiers that were uploaded).
    """
    counts: dict[str, int] = {}
    if channel == "email":
        prev = f"read_csv('{previous}/{EMAIL_FILE}', header=true, all_varchar=true)" if previous else None
        cur = f"read_csv('{folder}/{EMAIL_FILE}', header=true, all_varchar=true)"
        empty = "(select null::varchar as email, null::varchar as person_id where false)"
        prev = prev or empty
        for kind, a, b in (("add", cur, prev), ("remove", prev, cur)):
            q = f"select email, person_id from {a} except select email, person_id from {b}"
            con.execute(f"copy ({q} order by person_id) to '{folder}/email.{kind}.csv' (header)")
            counts[f"email_{kind}"] = con.execute(f"select count(*) from ({q})").fetchall()[0][0]
        return counts
    cols = "person_id, google_email, google_phone, meta_email, meta_phone"
    cur = f"read_parquet('{folder}/activation.parquet')"
    prev = (f"read_parquet('{previous}/activation.parquet')" if previous
            else f"(select {', '.join('null::varchar as ' + c.strip() for c in cols.split(','))} where false)")
    for kind, a, b in (("add", cur, prev), ("remove", prev, cur)):
        con.execute(f"create or replace temp table _diff as select {cols} from {a} except select {cols} from {b}")
        for platform, name in (("google", GOOGLE_FILE), ("meta", META_FILE)):
            path = f"{folder}/{name.removesuffix('.csv')}.{kind}.csv"
            counts[f"{platform}_{kind}"] = _copy_upload(con, "_diff", platform, path)
    return counts
