"""The canonical source kinds: field names, types and which fields are required.

These names are the contract between a user's exports (mapped in ``cdp_ml.yaml``) and every later
stage; each kind lands in a warehouse staging table of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # varchar, timestamp, date, double, boolean
    required: bool = False
    doc: str = ""


def _f(name: str, type_: str = "varchar", required: bool = False, doc: str = "") -> Field:
    return Field(name, type_, required, doc)


KINDS: dict[str, tuple[Field, ...]] = {
    "customers": (
        _f("record_id", required=True, doc="unique id of the record within the source"),
        _f("customer_id", doc="account / customer number shared across systems"),
        _f("email", doc="e-mail address (trimmed, lower-cased)"),
        _f("phone", doc="phone number (normalised to E.164)"),
        _f("first_name"),
        _f("last_name"),
        _f("date_of_birth", "date"),
        _f("street"),
        _f("house_number"),
        _f("postcode", doc="postcode (upper-cased, spaces removed)"),
        _f("city"),
        _f("country", doc="ISO country code or name"),
        _f("gender"),
        _f("created_at", "timestamp"),
        _f("updated_at", "timestamp", doc="used by survivorship: most recent value wins"),
    ),
    "events": (
        _f("timestamp", "timestamp", True),
        _f("event_type", required=True, doc="mapped to the canonical vocabulary (EVENT_TYPES); others kept in snake_case"),
        _f("event_id", doc="unique id; exact duplicate events are quarantined"),
        _f("anonymous_id", doc="cookie or device id"),
        _f("customer_ref", doc="customer key when logged in"),
        _f("session_id"),
        _f("product_id"),
        _f("category"),
        _f("value", "double"),
        _f("channel", doc="web, app, ..."),
        _f("url"),
        _f("referrer"),
    ),
    "orders": (
        _f("order_id", doc="order number; when not mapped: customer_ref@ordered_at (one order per customer and time)"),
        _f("customer_ref", required=True),
        _f("ordered_at", "timestamp", True),
        _f("product_id"),
        _f("category"),
        _f("quantity", "double"),
        _f("amount", "double", doc="line total; when not mapped: quantity × unit_price"),
        _f("status", doc="completed, returned or cancelled (default completed)"),
        _f("unit_price", "double", doc="price of one unit (Online Retail's Price)"),
    ),
    "sessions": (
        _f("session_id", doc="when not mapped: file#row (a pre-aggregated table without a session key)"),
        _f("timestamp", "timestamp", True),
        _f("anonymous_id"),
        _f("customer_ref"),
        _f("converted", "boolean", doc="label: did the session (visitor) convert"),
    ),
    "interactions": (
        _f("timestamp", "timestamp", True),
        _f("interaction_id"),
        _f("customer_ref"),
        _f("email"),
        _f("phone"),
        _f("channel", doc="whatsapp, phone, email, store, ..."),
        _f("type", doc="question, complaint, complaint_resolved, ..."),
        _f("category"),
    ),
    "consents": (
        _f("timestamp", "timestamp", True),
        _f("purpose", required=True, doc="email_marketing, ad_targeting or profiling"),
        _f("granted", "boolean", True),
        _f("customer_ref"),
        _f("email"),
        _f("phone"),
    ),
}

CONSENT_PURPOSES = ("email_marketing", "ad_targeting", "profiling")
# The canonical event vocabulary vendor names are mapped to at ingest (normalise.EVENT_SYNONYMS). The first
# six are counted as session features, ``purchase`` (checkout complete) is the conversion label; the rest
# are common enough to deserve one spelling but are not (yet) features.
EVENT_TYPES = ("page_view", "product_view", "search", "add_to_cart", "checkout_start", "login", "purchase",
               "remove_from_cart", "add_to_wishlist", "sign_up", "logout", "refund")
ORDER_STATUSES = ("completed", "returned", "cancelled")

# Columns every staging table carries besides the canonical fields.
LINEAGE_COLUMNS = (
    ("source", "varchar"),  # source name from the workspace file
    ("_file", "varchar"),  # file the row came from (relative to the workspace)
    ("_row", "bigint"),  # 1-based data row number within the file
    ("_load_id", "varchar"),  # loads.load_id
    ("attributes", "json"),  # unmapped source columns, kept as a JSON object (sessions: wide columns instead)
)
# Kinds whose rows refer to a customer: the staging table records which source/key the reference means.
REFERENCING_KINDS = ("events", "orders", "sessions", "interactions", "consents")
# The canonical time field of each referencing kind (what `--as-of latest` reads and `timestamp_offset` moves).
TIME_FIELDS = {"events": "timestamp", "orders": "ordered_at", "sessions": "timestamp", "interactions": "timestamp",
               "consents": "timestamp"}


def fields(kind: str) -> tuple[Field, ...]:
    return KINDS[kind]


def required(kind: str) -> list[str]:
    return [f.name for f in KINDS[kind] if f.required]


def constant_column(field_name: str) -> str:
    """The raw column a reader adds for a source's constant field (no export has such a name)."""
    return f"={field_name}"
