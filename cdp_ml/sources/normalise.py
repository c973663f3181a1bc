"""Normalisation rules as SQL expressions, so millions of rows are normalised inside the engine.

Each function takes a SQL expression over a VARCHAR and returns a SQL expression; none interpolates
data values, only configuration (formats, country codes) escaped as SQL literals.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import duckdb
import phonenumbers

from cdp_ml.errors import CdpError

# Formats tried in order when a source gives none: ISO first, then European day-first (two-digit years last).
TIMESTAMP_FORMATS = (
    "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d",
    "%d-%m-%Y %H:%M:%S", "%d-%m-%Y %H:%M", "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d-%m-%Y", "%d/%m/%Y",
    "%d.%m.%Y %H:%M:%S", "%d.%m.%Y", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d", "%Y%m%d",
    "%d/%m/%y %H:%M:%S", "%d/%m/%y %H:%M", "%d/%m/%y", "%d-%m-%y", "%d.%m.%y",
)
DATE_FORMATS = ("%Y-%m-%d", "%d-%m-%Y", "%d/%m/%Y", "%d.%m.%Y", "%Y/%m/%d", "%Y%m%d", "%d/%m/%y", "%d-%m-%y",
                "%d.%m.%y")


def _month_first(formats: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f.replace("%d-%m", "%m-%d").replace("%d/%m", "%m/%d").replace("%d.%m", "%m.%d") for f in formats)


# The same formats for a column whose data shows month-first (US) dates: see ``dmy_evidence``.
TIMESTAMP_FORMATS_MONTH_FIRST = _month_first(TIMESTAMP_FORMATS)
DATE_FORMATS_MONTH_FIRST = _month_first(DATE_FORMATS)


def dmy_evidence(expr: str) -> tuple[str, str]:
    """SQL counting values that can only be day-first (13/1/2000) and only month-first (1/13/2000).

    Numeric dates are ambiguous per value but rarely per column: a column with month-first evidence and
    none day-first is read month-first (US exports: Online Retail, Ta Feng), so its other values are not
    silently read with day and month swapped.
    """
    # on the raw text, spaces allowed around it: no trim per value (5M ISO times: 0.8 s, with trim 2.4 s)
    tail = "[/.-][0-9]{2}([0-9]{2})?([ T].*)?\\s*"
    day_first = f"count(*) filter (where regexp_full_match({expr}, '\\s*0?(1[3-9]|2[0-9]|3[01])[/.-][0-9]{{1,2}}{tail}'))"
    month_first = f"count(*) filter (where regexp_full_match({expr}, '\\s*[0-9]{{1,2}}[/.-]0?(1[3-9]|2[0-9]|3[01]){tail}'))"
    return day_first, month_first


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
    # placed and not (yet) cancelled counts as bought: shop systems' in-flight states (Olist, WooCommerce,
    # Magento, Shopify) would otherwise quarantine real orders
    "completed": ("completed", "complete", "paid", "delivered", "shipped", "fulfilled", "closed", "ok", "voltooid",
                  "invoiced", "processing", "approved", "created", "placed", "pending", "authorized", "on_hold", "holded",
                  "partially_shipped", "partially_refunded", "betaald", "verzonden", "geleverd"),
    "returned": ("returned", "return", "refund", "refunded", "retour", "geretourneerd"),
    "cancelled": ("cancelled", "canceled", "cancel", "void", "voided", "unavailable", "failed", "declined",
                  "rejected", "geannuleerd"),
}

# Vendor event names -> the canonical vocabulary (kinds.EVENT_TYPES), matched after event_token() has made
# them snake_case, so "Product Added", "product-added" and "productAdded" are all `product_added`. Sources:
# GA4 / Universal Analytics / Firebase, Segment and RudderStack e-commerce spec, Snowplow, Adobe Analytics,
# Shopify web pixels, Magento (Adobe Commerce) storefront events, Klaviyo, Meta pixel, Mixpanel, PostHog,
# Amplitude, RetailRocket and REES46 logs, Universal Analytics product actions (detail/add/remove, Coveo's
# browsing log), Alibaba Tianchi logs (Taobao UserBehavior: pv/cart/fav/buy).
# Only names that mean the same thing everywhere; anything else keeps its snake_case name.
EVENT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "page_view": ("page_view", "pageview", "page", "page_viewed", "viewed_page", "loaded_a_page", "page_load",
                  "screen", "screen_view", "screen_viewed", "mp_page_view", "mp_web_page_view"),
    "product_view": ("product_view", "product_viewed", "viewed_product", "view_product", "view_item",
                     "item_view", "item_viewed", "viewed_item", "product_detail_view", "product_page_view",
                     "prod_view", "detail", "view_content", "productview"),
    "search": ("search", "searched", "site_search", "products_searched", "product_searched", "searched_products",
               "search_submitted", "view_search_results", "search_request_sent", "search_query"),
    "add_to_cart": ("add_to_cart", "added_to_cart", "addtocart", "cart", "cart_add", "add_cart", "product_added",
                    "product_added_to_cart", "add_to_basket", "added_to_basket", "basket_add", "add_to_bag",
                    "added_to_bag", "sc_add", "add"),
    "checkout_start": ("checkout_start", "checkout_started", "started_checkout", "start_checkout",
                       "begin_checkout", "initiate_checkout", "initiated_checkout", "checkout", "sc_checkout"),
    "login": ("login", "log_in", "logged_in", "sign_in", "signed_in", "signin", "user_login", "identify"),
    "purchase": ("purchase", "purchased", "transaction", "order", "order_completed", "order_complete",
                 "order_placed", "placed_order", "place_order", "completed_order", "checkout_completed",
                 "checkout_complete", "checkout_success", "purchase_completed", "completed_purchase",
                 "ecommerce_purchase", "in_app_purchase", "buy", "bought"),
    "remove_from_cart": ("remove_from_cart", "removed_from_cart", "product_removed", "product_removed_from_cart",
                         "cart_remove", "remove_from_basket", "sc_remove", "remove"),
    "add_to_wishlist": ("add_to_wishlist", "added_to_wishlist", "product_added_to_wishlist", "wishlist_add", "fav",
                        "favorite", "favourite", "add_to_favorites", "add_to_favourites", "added_to_favorites"),
    "sign_up": ("sign_up", "signup", "signed_up", "register", "registration", "complete_registration",
                "create_account", "account_created"),
    "logout": ("logout", "log_out", "logged_out", "sign_out", "signed_out", "signout"),
    "refund": ("refund", "refunded", "order_refunded"),
}
# A bare `view` (RetailRocket, REES46) or `pv` (Taobao) is a product view when the row names a product, else a
# page view.
CONTEXTUAL_VIEWS = ("view", "pv")


def lit(value: str) -> str:
    """A SQL string literal for a configuration value."""
    return "'" + str(value).replace("'", "''") + "'"


def blank_to_null(expr: str) -> str:
    """Trim; empty strings and the usual null spellings become NULL."""
    return (f"nullif(nullif(nullif(nullif(trim({expr}), ''), 'NULL'), 'null'), 'NaN')")


# Identifier fields, and the spellings of 'no value' that R (NA), pandas (nan), Python (None), Excel (#N/A) and
# JavaScript (undefined) write into them: such text is never a key, else Diginetica's ~70% of views without a
# user (userId NA) would all be one customer 'NA' and every anonymous session would merge into one person.
IDENTIFIER_FIELDS = ("record_id", "customer_id", "customer_ref", "anonymous_id", "session_id", "event_id", "order_id",
                     "interaction_id", "product_id")
MISSING_WORDS = ("na", "n/a", "nan", "none", "#n/a", "null", "nil", "undefined")


def missing_identifier(expr: str) -> str:
    """``blank_to_null`` for an identifier: also NULL for the usual spellings of a missing value."""
    words = ", ".join(lit(w) for w in MISSING_WORDS)
    return f"(case when lower(trim({expr})) in ({words}) then null else {blank_to_null(expr)} end)"


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


def event_token(expr: str) -> str:
    """snake_case of an event name: 'Product Viewed', 'product-viewed', 'productViewed' -> 'product_viewed'.

    Word boundaries are case changes and any run of non-alphanumerics; a leading ``[Tool]`` tag is dropped
    (Amplitude's ``[Amplitude] Page Viewed``); a name that has no letters or digits keeps its lower-cased
    text, so nothing becomes NULL.
    """
    s = f"regexp_replace(trim({expr}), '^\\[[^\\]]*\\]\\s*', '')"
    s = f"regexp_replace({s}, '(\\p{{Lu}}+)(\\p{{Lu}}\\p{{Ll}})', '\\1_\\2', 'g')"  # HTMLPage -> HTML_Page
    s = f"regexp_replace({s}, '([\\p{{Ll}}\\pN])(\\p{{Lu}})', '\\1_\\2', 'g')"  # productViewed -> product_Viewed
    snake = f"trim(regexp_replace(lower({s}), '[^\\pL\\pN]+', '_', 'g'), '_')"
    return f"coalesce(nullif({snake}, ''), nullif(lower(trim({expr})), ''))"


def event_type(expr: str, overrides: dict[str, str] | None = None, with_product: bool = False) -> str:
    """The canonical event type of a name: per-source ``overrides`` first, then EVENT_SYNONYMS, else the token.

    Meant for distinct names (a vocabulary lookup table), not per row: the regular expressions run once per
    spelling. ``with_product`` decides the bare `view`.
    """
    tok = event_token(expr)
    whens = [f"when {event_token(lit(k))} then {event_token(lit(v))}" for k, v in (overrides or {}).items()]
    whens += [f"when {lit(w)} then {lit(key)}" for key, words in EVENT_SYNONYMS.items() for w in words]
    whens += [f"when {lit(v)} then {lit('product_view' if with_product else 'page_view')}" for v in CONTEXTUAL_VIEWS]
    return f"(case {tok} {' '.join(whens)} else {tok} end)"


def canonical_event_names(con: duckdb.DuckDBPyConnection, names: Iterable[str]) -> list[str]:
    """Configured event names (e.g. ``conversion.purchase_event_types``) as ingest stores them, plus as given.

    So `transaction` or `Order Completed` in a setting matches the `purchase` rows they were loaded as.
    """
    given = [str(n) for n in names]
    if not given:
        return []
    rows = con.execute(f"select distinct unnest([{event_type('x')}, lower(trim(x))]) from unnest(?::varchar[]) t(x)",
                       [given]).fetchall()
    return sorted(r[0] for r in rows if r[0] is not None)


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
    """Order status; `On-Hold`, `on hold` and WooCommerce's `wc-on-hold` all read as on_hold."""
    token = f"regexp_replace(regexp_replace(lower(trim({expr})), '[\\s-]+', '_', 'g'), '^wc_', '')"
    return _synonyms(token, STATUS_SYNONYMS)


def _formats(fmt: str | list[str] | None, defaults: tuple[str, ...]) -> str:
    fmts = [fmt] if isinstance(fmt, str) else list(fmt or defaults)
    return "[" + ", ".join(lit(f) for f in fmts) + "]"


# Units of numeric timestamps counted from a source's ``timestamp_origin``, in microseconds.
ELAPSED_UNITS = {"day": 86_400_000_000, "hour": 3_600_000_000, "minute": 60_000_000, "second": 1_000_000,
                 "millisecond": 1_000}


def _with_year(s: str, fmt: str | list[str], year: int) -> tuple[str, list[str]]:
    """Text and formats with ``year`` put in front, for exports that leave the year out (Tmall's mmdd).

    A format of two-digit numbers only (``%m%d``) also reads digits one short of it: a tool that typed the
    column as a number dropped its leading zero (511 for 0511).
    """
    fmts = [fmt] if isinstance(fmt, str) else list(fmt)
    padded = s
    widths = {len(f) for f in fmts if re.fullmatch(r"(%[mdHMS])+", f)}  # two digits per two-character directive
    for width in sorted(widths):
        padded = f"(case when regexp_full_match({s}, '[0-9]{{{width - 1}}}') then '0' || {s} else {padded} end)"
    return f"({lit(str(year))} || '-' || {padded})", ["%Y-" + f for f in fmts]


def timestamp(expr: str, timezone: str, fmt: str | list[str] | None = None,
              elapsed: tuple[str, str] | None = None, month_first: bool = False, year: int | None = None) -> str:
    """A naive UTC timestamp from text: ISO with offset or Z, epoch seconds/milli-/microseconds, or a format list.

    Text without an offset is read in ``timezone`` (the source's zone) and converted to UTC; text ending in
    ``UTC`` or ``GMT`` (REES46, many Java and Go exports: ``2019-10-01 00:00:00 UTC``) is UTC already.
    ``elapsed`` = (origin, unit): a plain number counts units from that local origin instead (Dunnhumby's
    day numbers), because such exports hide the calendar and an epoch reading would put them in 1970.
    ``month_first`` reads numeric dates without a format as m/d/y (the column's data said so); ``year`` is
    the year of a ``fmt`` without one.
    """
    defaults = TIMESTAMP_FORMATS_MONTH_FIRST if month_first else TIMESTAMP_FORMATS
    raw = f"trim({expr})"
    utc = f"(upper(right({raw}, 3)) in ('UTC', 'GMT'))"
    s = f"(case when {utc} then rtrim(left({raw}, -3)) else {raw} end)"
    has_offset = f"regexp_matches({s}, '(Z|[+-][0-9]{{2}}(:?[0-9]{{2}})?)$')"
    dated, dated_fmt = _with_year(s, fmt, year) if fmt and year else (s, fmt)
    local = (f"try_strptime({dated}, {_formats(dated_fmt, TIMESTAMP_FORMATS)})" if fmt
             else f"coalesce(try_cast({s} as timestamp), try_strptime({s}, {_formats(None, defaults)}))")
    if elapsed:
        origin, unit = elapsed
        since = (f"(TIMESTAMP {lit(origin)} + to_microseconds(cast(round(try_cast({s} as double) * "
                 f"{ELAPSED_UNITS[unit]}) as bigint)))")
        local = f"(case when regexp_full_match({s}, '-?[0-9]+(\\.[0-9]+)?') then {since} else {local} end)"
        return f"(case when {utc} then {local} else timezone('UTC', timezone({lit(timezone)}, {local})) end)"
    return (f"(case when {has_offset} then timezone('UTC', try_cast({s} as timestamptz)) "
            f"when regexp_full_match({s}, '[0-9]{{13}}([0-9]{{3}})?') then "  # epoch ms, or µs (GA4 event_timestamp)
            f"make_timestamp(try_cast({s} as bigint) * (case when length({s}) = 13 then 1000 else 1 end)) "
            f"when regexp_full_match({s}, '[0-9]{{9,10}}(\\.[0-9]+)?') then make_timestamp(cast(try_cast({s} as double) * 1000000 as bigint)) "
            + ("" if fmt else f"when {_not_compact_date(s)} then null ")
            + f"when {utc} then {local} "
            f"else timezone('UTC', timezone({lit(timezone)}, {local})) end)")


def _not_compact_date(s: str) -> str:
    """Digits only but not yyyymmdd: strptime would read '1997013' as 1997-01-03, so such text is no date."""
    return f"(regexp_full_match({s}, '[0-9]+') and length({s}) <> 8)"


def date_value(expr: str, fmt: str | list[str] | None = None, month_first: bool = False) -> str:
    s = f"trim({expr})"
    if fmt:
        return f"cast(try_strptime({s}, {_formats(fmt, DATE_FORMATS)}) as date)"
    defaults = DATE_FORMATS_MONTH_FIRST if month_first else DATE_FORMATS
    return (f"(case when {_not_compact_date(s)} then null else coalesce(try_cast({s} as date), "
            f"cast(try_strptime({s}, {_formats(None, defaults)}) as date)) end)")
