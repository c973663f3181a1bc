"""``cdp-ml init DIR``: a commented example workspace file to adapt to one's own exports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cdp_ml.errors import CdpError
from cdp_ml.workspace import WORKSPACE_FILE, parse_config

EXAMPLE = """\
# cdp_ml.yaml - the one configuration file of a cdp-ml workspace.
# Paths are relative to this file's directory. Every key below except `sources` is optional;
# the values shown are the defaults.

warehouse: data/warehouse.duckdb   # DuckDB file holding staging, identity, score and segment tables
mlflow: mlruns                     # MLflow store (sqlite mlruns/mlflow.db + artifacts) for runs and models
default_country: NL                # phones without an international prefix get this country's code
timezone: Europe/Amsterdam         # zone of source timestamps that carry no offset (stored as UTC)

sources:
  # customers: identity records (CRM, webshop accounts, newsletter, loyalty cards)
  - name: crm
    kind: customers
    path: raw/crm_export.csv       # a file or a glob such as raw/crm/*.csv
    options: {delim: ";", header: true, encoding: utf-8, dateformat: "%d-%m-%Y"}
    columns:                       # canonical field: column in your file (unmapped columns are kept)
      record_id: klantnummer
      customer_id: klantnummer
      email: emailadres
      phone: telefoon
      first_name: voornaam
      last_name: achternaam
      date_of_birth: geboortedatum
      street: straat
      house_number: huisnummer
      postcode: postcode
      city: woonplaats
      updated_at: gewijzigd_op

  # events: web/app behaviour; customer_ref points at the crm source's record_id
  - name: web
    kind: events
    path: raw/events/*.jsonl
    customer_source: crm
    customer_key: record_id        # or customer_id
    columns: {timestamp: ts, event_type: event, anonymous_id: cookie_id, customer_ref: user_id,
              session_id: session, product_id: sku, category: category, channel: platform}
    # vendor names (GA4, Segment, Shopify, RetailRocket, ...) map to page_view, product_view, search,
    # add_to_cart, checkout_start, login, purchase by themselves; name your own ones here:
    # options: {event_types: {basket_click: add_to_cart, betaald: purchase}}
    # a column may be a path into nested JSON/Parquet fields, e.g. GA4: {channel: device.category,
    # product_id: "items[0].item_id"}; numbered days: options: {timestamp_origin: "2018-01-01"}

  # orders: order lines and returns
  - name: orders
    kind: orders
    path: raw/orders.parquet
    customer_source: crm
    columns: {order_id: order_id, customer_ref: customer, ordered_at: created, product_id: sku,
              category: category, quantity: qty, amount: revenue, status: status}
    # an export kept in several files: join them by key (rows are never added or dropped)
    # lookups: [{path: raw/products.csv, key: {sku: product_id}}]

  # constants: a field with one value for the whole file, e.g. a newsletter opt-in list
  # - name: optins
  #   kind: consents
  #   path: raw/optins.csv
  #   constants: {purpose: email_marketing, granted: true}
  #   columns: {timestamp: signed_up, email: email}

  # interactions: service contacts and complaints, by customer_ref or by email/phone
  # - name: service
  #   kind: interactions
  #   path: raw/service.jsonl
  #   columns: {timestamp: created, phone: from, type: kind, category: topic}

  # consents: purpose is email_marketing, ad_targeting or profiling
  # - name: consents
  #   kind: consents
  #   path: raw/consents.csv
  #   customer_source: crm
  #   columns: {timestamp: changed_at, purpose: purpose, granted: opt_in, customer_ref: klantnummer}

  # sessions: pre-aggregated sessions from web analytics (every other column is a feature)
  # - name: ga_sessions
  #   kind: sessions
  #   path: raw/sessions.csv
  #   columns: {session_id: id, timestamp: start, converted: revenue_flag}   # no id column: file#row

identity:
  match_threshold: 0.9             # Splink match probability that joins two customer records
  max_records_per_identifier: 10   # identifiers shared by more records never link deterministically
  # source_priority: [crm, loyalty, newsletter]   # survivorship: most trusted first
  # extra_match_fields: [{column: loyalty_card, comparison: exact}]

conversion:
  horizon_days: 7                  # label: purchase within 7 days after the session
  active_days: 30                  # scoring: visitors active in the last 30 days

repurchase:
  horizon_weeks: 8                 # weeks ahead predicted per person and category

privacy:
  consent_default_granted: false   # no consent record = not granted
  retention_days: {events: 395}    # anonymous behaviour kept 13 months

refresh:
  retrain_after_weeks: 4           # the champion model is retrained when older than this
"""


@dataclass(frozen=True)
class InitResult:
    path: Path

    def __str__(self) -> str:
        return (f"wrote {self.path}\nnext: put your exports under {self.path.parent / 'raw'}, edit the mapping, "
                f"then run: cdp-ml --workspace {self.path.parent} ingest")


def write_example_workspace(root: Path) -> InitResult:
    """Write the commented example ``cdp_ml.yaml`` (never overwriting an existing one)."""
    import yaml

    parse_config(yaml.safe_load(EXAMPLE))  # the example itself must always be valid
    root.mkdir(parents=True, exist_ok=True)
    path = root / WORKSPACE_FILE
    if path.exists():
        raise CdpError(f"{path} already exists; not overwriting it")
    path.write_text(EXAMPLE, encoding="utf-8")
    for sub in ("raw", "data", "mlruns", "notebooks"):
        (root / sub).mkdir(exist_ok=True)
    return InitResult(path)
