"""Generate the demo workspace: raw exports of a Dutch cosmetics retailer, cdp_ml.yaml, ground truth.

Persons are generated in blocks (fixed size, each with its own seeded random stream) and every export is
appended block by block, so memory stays flat from a thousand to a million persons and the files are
byte-identical for a seed.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from cdp_ml.demo import activity, people, records
from cdp_ml.demo.sinks import CsvSink, JsonlSink, ParquetSink, json_dictionary, json_lines, text_bytes
from cdp_ml.errors import CdpError

BLOCK = 50_000
HISTORY_END = date(2026, 11, 23)  # fixed so demo runs do not depend on today's date
VISITORS_PER_PERSON = 2.0  # anonymous cookies that never log in, per known person

ORDER_SCHEMA = pa.schema([
    ("order_id", pa.string()), ("line_no", pa.int32()), ("customer_id", pa.string()),
    ("ordered_at", pa.timestamp("us", tz="UTC")), ("product_id", pa.string()), ("category", pa.string()),
    ("quantity", pa.int32()), ("amount", pa.float64()), ("status", pa.string()), ("currency", pa.string()),
    ("payment_method", pa.string()),
])
STORE_SCHEMA = pa.schema([
    ("receipt_id", pa.string()), ("card_number", pa.string()), ("purchased_at", pa.timestamp("us")),
    ("sku", pa.string()), ("category", pa.string()), ("qty", pa.int32()), ("amount_eur", pa.float64()),
    ("status", pa.string()),
])
LOYALTY_SCHEMA = pa.schema([
    ("card_number", pa.string()), ("first_name", pa.string()), ("last_name", pa.string()), ("postcode", pa.string()),
    ("house_number", pa.string()), ("phone", pa.string()), ("email", pa.string()),
    ("registered_at", pa.timestamp("us")), ("home_store", pa.string()),
])

FILES = {
    "crm": "raw/crm_klanten.csv",
    "newsletter": "raw/newsletter_subscribers.csv",
    "loyalty": "raw/loyalty_cards.parquet",
    "service": "raw/service_contacts.jsonl",
    "web": "raw/events/*.jsonl",
    "orders": "raw/orders.parquet",
    "store_orders": "raw/store_receipts.parquet",
    "consents": "raw/consents.csv",
}


@dataclass(frozen=True)
class DemoResult:
    """Files written by ``generate`` and their row counts."""

    root: Path
    persons: int
    start: date
    end: date
    files: tuple[tuple[str, int], ...]
    seconds: float

    def __str__(self) -> str:
        lines = [f"demo workspace {self.root}: {self.persons:,} persons, history {self.start} .. {self.end} "
                 f"(exclusive), {self.seconds:.1f}s"]
        lines += [f"  {path:<40} {rows:>12,} rows" for path, rows in self.files]
        return "\n".join(lines)


def workspace_yaml() -> dict:
    """The demo's cdp_ml.yaml: every export mapped to its canonical kind."""
    return {
        "default_country": "NL",
        "timezone": "Europe/Amsterdam",
        "sources": [
            {"name": "crm", "kind": "customers", "path": FILES["crm"], "format": "csv",
             "options": {"delim": ";", "dateformat": "%d-%m-%Y"},
             "columns": {"record_id": "klantnummer", "customer_id": "klantnummer", "first_name": "voornaam",
                         "last_name": "achternaam", "email": "emailadres", "phone": "telefoon",
                         "date_of_birth": "geboortedatum", "street": "straat", "house_number": "huisnummer",
                         "postcode": "postcode", "city": "woonplaats", "country": "land", "gender": "geslacht",
                         "created_at": "aangemaakt_op", "updated_at": "gewijzigd_op"}},
            {"name": "newsletter", "kind": "customers", "path": FILES["newsletter"],
             "columns": {"record_id": "subscriber_id", "customer_id": "customer_number", "email": "email",
                         "first_name": "first_name", "last_name": "last_name", "date_of_birth": "birthday",
                         "postcode": "postcode", "phone": "phone", "created_at": "signup_date"}},
            {"name": "loyalty", "kind": "customers", "path": FILES["loyalty"],
             "columns": {"record_id": "card_number", "first_name": "first_name", "last_name": "last_name",
                         "postcode": "postcode", "house_number": "house_number", "phone": "phone",
                         "email": "email", "created_at": "registered_at"}},
            {"name": "web", "kind": "events", "path": FILES["web"], "customer_source": "crm",
             "columns": {"event_id": "event_id", "timestamp": "ts", "event_type": "type",
                         "anonymous_id": "anonymous_id", "customer_ref": "user_id", "session_id": "session_id",
                         "product_id": "product_id", "category": "category", "value": "value",
                         "channel": "channel", "url": "page_url", "referrer": "referrer"}},
            {"name": "orders", "kind": "orders", "path": FILES["orders"], "customer_source": "crm",
             "columns": {"order_id": "order_id", "customer_ref": "customer_id", "ordered_at": "ordered_at",
                         "product_id": "product_id", "category": "category", "quantity": "quantity",
                         "amount": "amount", "status": "status"}},
            {"name": "store_orders", "kind": "orders", "path": FILES["store_orders"], "customer_source": "loyalty",
             "columns": {"order_id": "receipt_id", "customer_ref": "card_number", "ordered_at": "purchased_at",
                         "product_id": "sku", "category": "category", "quantity": "qty", "amount": "amount_eur",
                         "status": "status"}},
            {"name": "service", "kind": "interactions", "path": FILES["service"],
             "columns": {"interaction_id": "contact_id", "timestamp": "created", "channel": "channel",
                         "phone": "customer_phone", "email": "customer_email", "type": "contact_type",
                         "category": "product_category"}},
            {"name": "consents", "kind": "consents", "path": FILES["consents"], "customer_source": "crm",
             "columns": {"timestamp": "changed_at", "purpose": "purpose", "granted": "granted",
                         "customer_ref": "customer_id", "email": "email"}},
        ],
    }


def _epoch(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())


def _norm_email(values: pd.Series) -> pd.Series:
    return values.str.strip().str.lower()


def _e164(digits: np.ndarray) -> pd.Series:
    return "+316" + pd.Series(digits).astype(str).str.zfill(8)


def _with_duplicates(df: pd.DataFrame, rng: np.random.Generator, share: float) -> pd.DataFrame:
    """Repeat a few rows verbatim right after themselves, as double-fired tags and re-sent exports do."""
    times = 1 + (rng.random(len(df)) < share)
    return df.iloc[np.repeat(np.arange(len(df)), times)]


def generate(root: Path, persons: int = 2000, seed: int = 7, start: date | None = None,
             weeks: int = 104) -> DemoResult:
    """Write the demo exports, ``cdp_ml.yaml`` and ``ground_truth/`` into ``root`` (raw/ is replaced)."""
    if persons < 1:
        raise CdpError("demo: --persons must be at least 1")
    if weeks < 4:
        raise CdpError("demo: --weeks must be at least 4")
    if seed < 0:
        raise CdpError("demo: --seed must be a non-negative integer")
    began = time.perf_counter()
    root = Path(root)
    first_day = start or (HISTORY_END - timedelta(weeks=weeks))
    last_day = first_day + timedelta(weeks=weeks)
    t0, t1 = _epoch(first_day), _epoch(last_day)
    for sub in ("raw", "ground_truth"):
        shutil.rmtree(root / sub, ignore_errors=True)
    (root / "raw").mkdir(parents=True)
    (root / "ground_truth").mkdir(parents=True)

    crm_sink = CsvSink(root / FILES["crm"], delimiter=";")
    nl_sink = CsvSink(root / FILES["newsletter"])
    loyalty_sink = ParquetSink(root / FILES["loyalty"], LOYALTY_SCHEMA)
    orders_sink = ParquetSink(root / FILES["orders"], ORDER_SCHEMA)
    store_sink = ParquetSink(root / FILES["store_orders"], STORE_SCHEMA)
    consent_sink = CsvSink(root / FILES["consents"])
    service_sink = JsonlSink(root / "raw", "service_contacts")
    events_sink = JsonlSink(root / "raw" / "events")
    identity_sink = CsvSink(root / "ground_truth" / "identity.csv")
    ident_sink = CsvSink(root / "ground_truth" / "identifiers.csv")
    visitor_sink = CsvSink(root / "ground_truth" / "visitors.csv")
    counters = {k: 0 for k in ("crm", "newsletter", "loyalty", "web_order", "store_order", "device", "session",
                               "event", "interaction")}
    truth_frames = []
    taken: set[str] = {"sophia.devries@gmail.com", "sofietje.dv@ziggo.nl"}  # e-mail addresses handed out
    for block_no, first in enumerate(range(0, persons, BLOCK)):
        rng = np.random.default_rng([seed, block_no])
        n = min(BLOCK, persons - first)
        p = people.make_persons(rng, first, n, t0, t1, seed, taken)
        crm_df, crm_truth, k1 = records.crm(p, rng, counters["crm"], t1)
        counters["crm"] += len(crm_df)
        nl_df, nl_truth, k2 = records.newsletter(p, rng, counters["newsletter"], t1, k1)
        counters["newsletter"] += len(nl_df)
        loy_df, loy_truth, k3 = records.loyalty(p, rng, counters["loyalty"], t1)
        counters["loyalty"] += len(loy_df)
        keys = records.customer_keys(n, {**k1, **k2, **k3})
        # exports come sorted by their own key, so file order says nothing about who is who
        crm_sink.write(crm_df.sort_values("klantnummer", kind="stable"))
        nl_sink.write(nl_df.sort_values("subscriber_id", kind="stable"))
        loy_df["registered_at"] = (pd.to_datetime(loy_df["registered_at"], utc=True)
                                   .dt.tz_convert("Europe/Amsterdam").dt.tz_localize(None))
        loyalty_sink.write(loy_df.sort_values("card_number", kind="stable"))
        identity_sink.write(pd.concat([crm_truth, nl_truth, loy_truth], ignore_index=True))

        beh = activity.behaviour(p, rng, t1)
        occ = activity.purchases(p, beh, rng, t0, t1)
        occ, web_lines, store_lines = activity.orders(p, keys, occ, rng, counters)
        orders_sink.write(_with_duplicates(web_lines, rng, 0.004))
        store_sink.write(_with_duplicates(store_lines, rng, 0.004))

        dev = activity.devices(p, rng, counters)
        sess = activity.sessions(p, beh, keys, occ, rng, t0, t1, dev)
        cookie, anon, cookie_device = activity.cookies(sess, dev, t0, seed)
        ev = activity.events(sess, occ, keys, anon, cookie, rng, counters)
        vis = activity.visitors(int(round(n * VISITORS_PER_PERSON)), rng, t0, t1, counters)
        v_cookie, v_anon, v_device = activity.cookies(vis.sessions, vis.devices, t0, seed)
        v_ev = activity.events(vis.sessions, occ, keys, v_anon, v_cookie, rng, counters)
        block_events = pa.concat_tables([ev.table, v_ev.table]).unify_dictionaries()
        # a session begun just before the end spills over it: the history stops at the end for every source
        _write_events(events_sink, block_events.filter(pc.less(block_events["ts"], t1)), rng)
        # never-logged-in visitors belong to no person: listed apart, not in identifiers.csv (not scored)
        visitor_sink.write(pd.DataFrame({"source": "web", "id_type": "anonymous_id",
                                         "identifier": v_anon.to_numpy(dtype=object),
                                         "sessions": np.bincount(v_cookie, minlength=len(v_anon))}))

        it = activity.interactions(p, occ, keys, rng, t0, t1, counters)
        bad = rng.random(len(it)) < 0.002
        it_out = it.drop(columns=["_row", "_ts"])
        it_out.loc[bad, "created"] = "31-02-2025 12:00"
        service_sink.write(it_out)
        cons = activity.consents(p, keys, rng, t1)
        cons_out = cons[["changed_at", "purpose", "granted", "customer_id", "email", "channel"]].copy()
        cons_out.loc[rng.random(len(cons_out)) < 0.001, "changed_at"] = "2025-13-01 25:00:00"
        consent_sink.write(cons_out)

        ident_sink.write(_identifiers(p, dev.owner[cookie_device], anon, cookie, sess, ev.refs, occ, it, cons))
        truth_frames.append(_persons_truth(p, beh, occ, sess, t1))
    if not events_sink.files:  # a tiny world where nobody browsed: the export is an empty month
        events_sink.append_text(b"", key=first_day.strftime("%Y-%m"), rows=0)
    for sink in (crm_sink, nl_sink, loyalty_sink, orders_sink, store_sink, consent_sink, identity_sink, ident_sink,
                 visitor_sink):
        sink.close()
    truth = pd.concat(truth_frames, ignore_index=True)
    truth.to_parquet(root / "ground_truth" / "persons.parquet", index=False, compression="zstd")

    (root / "cdp_ml.yaml").write_text(yaml.safe_dump(workspace_yaml(), sort_keys=False, allow_unicode=True),
                                      encoding="utf-8")
    from cdp_ml.workspace import Workspace

    Workspace.open(root, check_files=True)
    files = (
        (FILES["crm"], crm_sink.rows), (FILES["newsletter"], nl_sink.rows), (FILES["loyalty"], loyalty_sink.rows),
        (FILES["web"] + f" ({len(events_sink.files)} files)", events_sink.rows), (FILES["orders"], orders_sink.rows),
        (FILES["store_orders"], store_sink.rows), (FILES["service"], service_sink.rows),
        (FILES["consents"], consent_sink.rows), ("ground_truth/identity.csv", identity_sink.rows),
        ("ground_truth/identifiers.csv", ident_sink.rows), ("ground_truth/visitors.csv", visitor_sink.rows),
        ("ground_truth/persons.parquet", len(truth)),
        ("cdp_ml.yaml", len(workspace_yaml()["sources"])),
    )
    return DemoResult(root, persons, first_day, last_day, files, time.perf_counter() - began)


def _timestamps(ts: np.ndarray) -> pa.Array:
    """ISO-8601 UTC text for epoch seconds, assembled from a per-day and a per-second-of-day dictionary
    (much faster than formatting every value)."""
    day = ts // people.DAY
    first = int(day.min()) if len(day) else 0
    days = pd.to_datetime(np.arange(first, int(day.max()) + 1 if len(day) else 1), unit="D").strftime("%Y-%m-%dT")
    sod = np.arange(people.DAY)
    clock = pd.Series(sod // 3600).astype(str).str.zfill(2) + ":" + pd.Series(sod // 60 % 60).astype(str).str.zfill(2) \
        + ":" + pd.Series(sod % 60).astype(str).str.zfill(2) + ".000Z"
    return pc.binary_join_element_wise(
        pc.take(pa.array(list(days), pa.string()), pa.array(day - first)),
        pc.take(pa.array(clock.tolist(), pa.string()), pa.array(ts % people.DAY)), "")


def _write_events(sink: JsonlSink, ev: pa.Table, rng: np.random.Generator) -> None:
    """Monthly event files in time order, with a few double-fired events and a few malformed lines
    (impossible timestamps, a record cut off mid-line) for quarantine to show."""
    n = ev.num_rows
    if n == 0:
        return
    take = np.repeat(np.arange(n), 1 + (rng.random(n) < 0.002))
    ts = ev["ts"].to_numpy()[take]
    month = ts.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)
    order = np.lexsort((ev["event_no"].to_numpy()[take], ts, month))
    take, ts, month = take[order], ts[order], month[order]
    ev = ev.take(pa.array(take))
    ts_text = pc.if_else(pa.array(rng.random(len(take)) < 0.0005), "2025-02-30T25:61:00Z", _timestamps(ts))
    columns = [
        ("event_id", pc.cast(ev["event_no"].combine_chunks(), pa.string())), ("ts", ts_text),
        *((name, json_dictionary(ev[name].combine_chunks())) for name in ("type", "anonymous_id", "user_id")),
        ("session_id", pc.cast(ev["session_no"].combine_chunks(), pa.string())),
        *((name, json_dictionary(ev[name].combine_chunks())) for name in ("product_id", "category")),
        ("value", ev["value"].combine_chunks()),
        *((name, json_dictionary(ev[name].combine_chunks())) for name in ("channel", "page_url", "referrer",
                                                                          "utm_source")),
    ]
    cuts = np.flatnonzero(np.diff(month)) + 1
    for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(month)]]), strict=True):
        lines = json_lines([(name, arr.slice(lo, hi - lo)) for name, arr in columns])
        key = str(np.datetime64(int(month[lo]), "M"))
        extra = []
        if rng.random() < 0.3:
            extra.append(lines[0].as_py()[:-20])  # a record cut off mid-line
        sink.append_text(text_bytes(lines), key=key, rows=len(lines), extra_lines=extra)


def _identifiers(p: people.PersonBlock, owner: np.ndarray, anon: pd.Series, cookie: np.ndarray, sess: pd.DataFrame,
                 refs: pd.DataFrame,
                 occ: pd.DataFrame, it: pd.DataFrame, cons: pd.DataFrame) -> pd.DataFrame:
    """Truth for every non-record identifier written: anonymous ids (owner = device owner), customer refs,
    e-mails and phones used by service and consents."""
    ent = p.entity.to_numpy(dtype=object)
    shared = np.zeros(len(anon), dtype=bool)  # an id a household partner also browsed with
    shared[np.unique(cookie[owner[cookie] != sess["row"].to_numpy()])] = True
    parts = [pd.DataFrame({"source": "web", "id_type": "anonymous_id", "identifier": anon.to_numpy(dtype=object),
                           "entity": ent[owner], "shared": shared})]
    parts.append(pd.DataFrame({"source": "web", "id_type": "customer_ref", "identifier": refs["customer_ref"].to_numpy(),
                               "entity": ent[refs["row"].to_numpy()], "shared": False}))
    for source, channel in (("orders", "web"), ("store_orders", "store")):
        o = occ[occ["channel"] == channel][["ref", "row"]].drop_duplicates()
        parts.append(pd.DataFrame({"source": source, "id_type": "customer_ref", "identifier": o["ref"].to_numpy(),
                                   "entity": ent[o["row"].to_numpy()], "shared": False}))
    c = cons[cons["customer_id"].notna()][["customer_id", "row"]].drop_duplicates()
    parts.append(pd.DataFrame({"source": "consents", "id_type": "customer_ref", "identifier": c["customer_id"].to_numpy(),
                               "entity": ent[c["row"].to_numpy()], "shared": False}))
    c = cons[cons["email"].notna()][["email", "row"]]
    parts.append(pd.DataFrame({"source": "consents", "id_type": "email",
                               "identifier": _norm_email(c["email"].astype(str)).to_numpy(),
                               "entity": ent[c["row"].to_numpy()], "shared": False}))
    e = it[it["customer_email"].notna()]
    parts.append(pd.DataFrame({"source": "service", "id_type": "email",
                               "identifier": _norm_email(e["customer_email"].astype(str)).to_numpy(),
                               "entity": ent[e["_row"].to_numpy()], "shared": False}))
    ph = it[it["customer_phone"].notna()]
    digits = records.phone_at(p, ph["_row"].to_numpy(), ph["_ts"].to_numpy())
    parts.append(pd.DataFrame({"source": "service", "id_type": "phone", "identifier": _e164(digits).to_numpy(),
                               "entity": ent[ph["_row"].to_numpy()], "shared": False}))
    out = pd.concat(parts, ignore_index=True).drop_duplicates(["source", "id_type", "identifier"])
    return out.assign(shared=np.where(out["shared"].to_numpy(dtype=bool), "true", "false"))


def _persons_truth(p: people.PersonBlock, beh: activity.Behaviour, occ: pd.DataFrame,
                   sess: pd.DataFrame, end: int) -> pd.DataFrame:
    n = len(p)
    df = pd.DataFrame({
        "entity": p.entity.to_numpy(dtype=object),
        "household_id": p.household.to_numpy(dtype=object),
        "gender": p.gender,
        "birth_date": p.birth,
        "intent": p.intent,
        "browse_rate_per_week": beh.browse_rate,
        "churned_at": pd.to_datetime(np.where(beh.churn_at <= end, beh.churn_at, 0), unit="s"),
        "moved_at": pd.to_datetime(p.moved_at, unit="s"),
        "phone_changed_at": pd.to_datetime(p.phone_changed_at, unit="s"),
        "has_crm": p.has_crm,
        "crm_duplicate": p.crm_duplicate,
        "has_newsletter": p.has_newsletter,
        "has_loyalty": p.has_loyalty,
        "erased": p.erased,
        "n_orders": np.bincount(occ["row"].to_numpy(), minlength=n),
        "n_sessions": np.bincount(sess["row"].to_numpy(), minlength=n),
    })
    for c, name in enumerate(activity.CAT_NAMES):
        df[f"cycle_weeks_{name}"] = beh.cycle_weeks[:, c]
    for col in ("churned_at", "moved_at", "phone_changed_at"):
        df.loc[df[col] == pd.Timestamp(0), col] = pd.NaT
    return df


