"""Normalisation rules as SQL expressions, so millions of rows are normalised inside the engine.

Each function takes a SQL expression over a VARCHAR and returns a SQL expression; none interpolates
data values, only configuration (formats, country codes) escaped as SQL literals.
"""

from __future__ import annotations

import phonenumbers

from cdp_ml.errors import CdpError

# Formats tried in order when a source gives none: ISO first, then European day-first.
TIMESTAMP_FORMATS = (
    "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d",
    "%d-%m-%Y %H:%M:%S", "%d-%m-%Y %H:%M", "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d-%m-%Y", "%d/%m/%Y",
    "%d.%m.%Y %H:%M:%S", "%d.%m.%Y", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d", "%Y%m%d",
)
DATE_FORMATS = ("%Y-%m-%d", "%d-%m-%Y", "%d/%m/%Y", "%d.%m.%Y", "%Y/%m/%d", "%Y%m%d")

TRUE_WORDS = ("true", "t", "1", "yes", "y", "ja", "j", "granted", "opt-in", "optin", "on")
FALSE_WORDS = ("false", "f", "0", "no", "n", "nee", "denied", "revoked", "opt-out", "optout", "off", "withdrawn")

PURPOSE_SYNONYMS = {
    "email_marketing": ("email_marketing", "email", "e-mail", "newsletter", "nieuwsbrief", "marketing_email",
                        "email marketing", "direct_marketing"),
    "ad_targeting": ("ad_targeting", "ads", "advertising", "remarketing", "retargeting", "ad targeting",
                     "marketing_cookies", "adverteren"),
    "profiling": ("profiling", "personalisation", "personalization", "profilering", "analytics_profiling"),
}
STATUS_SYNONYMS = {
    "completed": ("completed", "complete", "paid", "delivered", "shipped", "fulfilled", "closed", "ok", "voltooid"),
    "returned": ("returned", "return", "refund", "refunded", "retour", "geretourneerd"),
    "cancelled": ("cancelled", "canceled", "cancel", "void", "geannuleerd"),
}


def lit(value: str) -> str:
    """A SQL string literal for a configuration value."""
    return "'" + str(value).replace("'", "''") + "'"


def blank_to_null(expr: str) -> str:
    """Trim; empty strings and the usual null spellings become NULL."""
    return (f"nullif(nullif(nullif(nullif(trim({expr}), ''), 'NULL'), 'null'), 'NaN')")


def email(expr: str) -> str:
    """Trimmed, lower-cased, mailto: stripped; NULL when not shaped like an address."""
    e = f"lower(regexp_replace(trim({expr}), '^mailto:', ''))"
    return f"(case when regexp_full_match({e}, '[^@\\s]+@[^@\\s]+\\.[^@\\s]+') then {e} end)"


def calling_code(country: str) -> int:
    code = phonenumbers.country_code_for_region(country.upper())
    if not code:
        raise CdpError(f"default_country: unknown country code {country!r}")
    return code


def phone(expr: str, country: str, digits: str | None = None) -> str:
    """E.164 (+<country><number>) from the formats people type: 06-12345678, +31 6 1234 5678, 0031612345678.

    A number without an international prefix gets the default country's calling code (its trunk '0'
    dropped); results outside 8..15 digits are NULL. ``digits`` may name a column holding the number with
    everything but digits and '+' removed, so that work is done once per value.
    """
    cc = calling_code(country)
    digits = digits or f"regexp_replace(trim({expr}), '[^0-9+]', '', 'g')"
    e164 = (f"(case when {digits} like '+%' then '+' || replace({digits}, '+', '') "
            f"when {digits} like '00%' then '+' || substr({digits}, 3) "
            f"when {digits} like '0%' then '+{cc}' || substr({digits}, 2) "
            f"when length({digits}) > 0 then '+{cc}' || {digits} end)")
    return f"(case when regexp_full_match({e164}, '\\+[1-9][0-9]{{7,14}}') then {e164} end)"


def name(expr: str) -> str:
    """Unicode NFC, trimmed, inner whitespace collapsed; case kept (display), matching lower-cases later."""
    return f"nullif(regexp_replace(nfc_normalize(trim({expr})), '\\s+', ' ', 'g'), '')"


def postcode(expr: str) -> str:
    return f"nullif(upper(regexp_replace({expr}, '\\s+', '', 'g')), '')"


def lower_token(expr: str) -> str:
    return f"nullif(lower(trim({expr})), '')"


def number(expr: str) -> str:
    """A double from '12.5', '12,50' (decimal comma) or '1.234,50'."""
    s = f"trim({expr})"
    return (f"coalesce(try_cast({s} as double), "
            f"try_cast(replace(replace({s}, '.', ''), ',', '.') as double))")


def boolean(expr: str) -> str:
    s = f"lower(trim({expr}))"
    trues = ", ".join(lit(w) for w in TRUE_WORDS)
    falses = ", ".join(lit(w) for w in FALSE_WORDS)
    return f"(case when {s} in ({trues}) then true when {s} in ({falses}) then false end)"


def _synonyms(expr: str, table: dict[str, tuple[str, ...]]) -> str:
    s = f"lower(trim({expr}))"
    whens = " ".join(f"when {s} in ({', '.join(lit(w) for w in words)}) then {lit(key)}"
                     for key, words in table.items())
    return f"(case {whens} end)"


def purpose(expr: str) -> str:
    return _synonyms(expr, PURPOSE_SYNONYMS)


def status(expr: str) -> str:
    return _synonyms(expr, STATUS_SYNONYMS)


def _formats(fmt: str | list[str] | None, defaults: tuple[str, ...]) -> str:
    fmts = [fmt] if isinstance(fmt, str) else list(fmt or defaults)
    return "[" + ", ".join(lit(f) for f in fmts) + "]"


def timestamp(expr: str, timezone: str, fmt: str | list[str] | None = None) -> str:
    """A naive UTC timestamp from text: ISO with offset or Z, epoch seconds/milliseconds, or a format list.

    Text without an offset is read in ``timezone`` (the source's zone) and converted to UTC.
    """
    s = f"trim({expr})"
    has_offset = f"regexp_matches({s}, '(Z|[+-][0-9]{{2}}(:?[0-9]{{2}})?)$')"
    local = (f"try_strptime({s}, {_formats(fmt, TIMESTAMP_FORMATS)})" if fmt
             else f"coalesce(try_cast({s} as timestamp), try_strptime({s}, {_formats(None, TIMESTAMP_FORMATS)}))")
    return (f"(case when {has_offset} then timezone('UTC', try_cast({s} as timestamptz)) "
            f"when regexp_full_match({s}, '[0-9]{{13}}') then make_timestamp(try_cast({s} as bigint) * 1000) "
            f"when regexp_full_match({s}, '[0-9]{{9,10}}(\\.[0-9]+)?') then make_timestamp(cast(try_cast({s} as double) * 1000000 as bigint)) "
            f"else timezone('UTC', timezone({lit(timezone)}, {local})) end)")


def date_value(expr: str, fmt: str | list[str] | None = None) -> str:
    s = f"trim({expr})"
    if fmt:
        return f"cast(try_strptime({s}, {_formats(fmt, DATE_FORMATS)}) as date)"
    return f"coalesce(try_cast({s} as date), cast(try_strptime({s}, {_formats(None, DATE_FORMATS)}) as date))"
