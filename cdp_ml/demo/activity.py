"""What persons do: repurchase cycles per category, browsing that foreshadows orders, service contacts,
consent changes. Every table of a block is built with vector operations (no loop per event or order).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from cdp_ml.demo import vocabulary as voc
from cdp_ml.demo.people import DAY, WEEK, PersonBlock, format_phones, hex_text, local_time, messy_email
from cdp_ml.demo.records import CustomerKeys, phone_at

CAT_NAMES = np.array([c for c, _, _, _ in voc.CATEGORIES], dtype=object)
CAT_CYCLE = np.array([w for _, w, _, _ in voc.CATEGORIES])
CAT_PRICE = np.array([p for _, _, p, _ in voc.CATEGORIES])
CAT_SHARE = np.array([s for _, _, _, s in voc.CATEGORIES])
GIFT = int(np.flatnonzero(CAT_NAMES == "gift_sets")[0])
CYCLED = np.array([i for i in range(len(CAT_NAMES)) if i != GIFT])
CAT_CODE = np.array(["SF", "HS", "BC", "CA", "FR", "GS"], dtype=object)


@dataclass
class Behaviour:
    """Per-person latent behaviour (truth): category cycles in weeks (NaN = does not buy), churn time."""

    cycle_weeks: np.ndarray  # persons x categories
    churn_at: np.ndarray  # epoch s after which the person stops buying (end = never)
    browse_rate: np.ndarray  # sessions per week
    idle_rate: np.ndarray  # low-intent visits per week (bounces, ad click-throughs, short looks)


def _season_windows(start: int, end: int, month: int, day_from: int, day_to: int) -> list[tuple[int, int, float]]:
    """(lo, hi, share) of each season window inside [start, end); share is the part of the window kept, so
    a season cut by the history's end keeps its daily rate instead of crowding into the days left."""
    out = []
    for year in range(datetime.fromtimestamp(start, UTC).year - 1, datetime.fromtimestamp(end, UTC).year + 1):
        lo = int(datetime(year, month, day_from, tzinfo=UTC).timestamp())
        hi = int(datetime(year, month, day_to, tzinfo=UTC).timestamp())
        if hi > start and lo < end:
            a, b = max(lo, start), min(hi, end)
            out.append((a, b, (b - a) / (hi - lo)))
    return out


def behaviour(p: PersonBlock, rng: np.random.Generator, end: int) -> Behaviour:
    n = len(p)
    buys = rng.random((n, len(CAT_NAMES))) < CAT_SHARE * (0.15 + 0.65 * p.intent[:, None])
    spread = np.exp(rng.normal(0, 0.3, (n, len(CAT_NAMES)))).clip(0.5, 2.0)
    cycle = np.where(buys, CAT_CYCLE * spread, np.nan)
    cycle[:, GIFT] = np.where(buys[:, GIFT], 52.0, np.nan)
    churn = rng.random(n) < 0.25 * (1 - p.intent)
    churn_at = np.where(churn, rng.integers(p.joined_at.clip(min=0), end + 1), end + 1)
    browse_rate = (0.01 + 0.07 * rng.gamma(1.5, 1.0, n) / 1.5 * (0.4 + p.intent)).clip(max=1.0)
    # most visits of real shops lead nowhere; persons who buy little visit aimlessly the most
    idle_rate = ((0.08 + 0.36 * (1 - p.intent)) * rng.gamma(2.0, 0.5, n)).clip(max=2.0)
    return Behaviour(cycle, churn_at, browse_rate, idle_rate)


def purchases(p: PersonBlock, b: Behaviour, rng: np.random.Generator, start: int, end: int) -> pd.DataFrame:
    """Purchase occasions (person row, time, category): a renewal process per (person, category) plus
    seasonal gifts in the run-up to Sinterklaas/Christmas and Mother's Day."""
    parts = []
    keep_p = 0.7 + 0.25 * p.intent  # the other occasions are bought elsewhere (drugstore, a gift received)
    for c in CYCLED:
        rows = np.flatnonzero(~np.isnan(b.cycle_weeks[:, c]))
        if len(rows) == 0:
            continue
        cyc = b.cycle_weeks[rows, c] * WEEK
        m = int(np.ceil((end - start) / (0.35 * CAT_CYCLE[c] * WEEK))) + 2
        gaps = cyc[:, None] * rng.gamma(8.0, 1 / 8.0, (len(rows), m))
        t0 = np.maximum(p.joined_at[rows], start - 2 * cyc)
        times = t0[:, None] + rng.random(len(rows))[:, None] * cyc[:, None] + np.cumsum(gaps, axis=1) - gaps[:, :1]
        times = times.astype(np.int64)
        keep = (times >= start) & (times < np.minimum(end, b.churn_at[rows])[:, None])
        keep &= rng.random(times.shape) < keep_p[rows, None]
        r, k = np.nonzero(keep)
        parts.append(pd.DataFrame({"row": rows[r], "ts": times[r, k], "cat": c}))
    for month, d0, d1, base, per_intent, cats in (
            (11, 20, 30, 0.15, 0.7, (GIFT, 3, 4)), (12, 1, 24, 0.25, 1.2, (GIFT, 3, 4, 2)),
            (5, 1, 12, 0.05, 0.3, (GIFT,))):
        for lo, hi, share in _season_windows(start, end, month, d0, d1):
            count = rng.poisson((base + per_intent * p.intent) * share)
            rows = np.repeat(np.arange(len(p)), count)
            ts = rng.integers(lo, hi, len(rows))
            ok = (ts >= p.joined_at[rows]) & (ts < b.churn_at[rows])
            cat = np.array(cats)[rng.integers(0, len(cats), len(rows))]
            parts.append(pd.DataFrame({"row": rows[ok], "ts": ts[ok], "cat": cat[ok]}))
    occ = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"row": [], "ts": [], "cat": []})
    # daytime: shift to a plausible hour (09:00-23:00 local-ish)
    occ["ts"] = (occ["ts"] // DAY) * DAY + rng.integers(7 * 3600, 22 * 3600, len(occ))
    occ = occ[(occ["ts"] >= start) & (occ["ts"] < end)]
    return occ.sort_values(["row", "ts"], kind="stable").reset_index(drop=True)


def orders(p: PersonBlock, keys: CustomerKeys, occ: pd.DataFrame, rng: np.random.Generator,
           counters: dict[str, int]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Route each occasion to the webshop (CRM account) or a store (loyalty card); unknown buyers vanish.
    Returns (occasions with channel/ref/amount, web order lines, store receipts)."""
    rows, ts, cat = occ["row"].to_numpy(), occ["ts"].to_numpy(), occ["cat"].to_numpy()
    n = len(rows)
    web_ok = (keys.crm_id[rows] != None) & (ts >= keys.crm_created[rows])  # noqa: E711
    store_ok = (keys.card[rows] != None) & (ts >= keys.card_at[rows])  # noqa: E711
    prefer_web = rng.random(n) < 0.6
    channel = np.where(web_ok & (prefer_web | ~store_ok), "web", np.where(store_ok, "store", ""))
    use_dup = (keys.crm_dup_id[rows] != None) & (ts >= keys.crm_dup_at[rows]) & (rng.random(n) < 0.6)  # noqa: E711
    ref = np.where(channel == "web", np.where(use_dup, keys.crm_dup_id[rows], keys.crm_id[rows]),
                   np.where(channel == "store", keys.card[rows], None))
    product = rng.integers(0, voc.PRODUCTS_PER_CATEGORY, n)
    qty = 1 + (rng.random(n) < 0.15) + (rng.random(n) < 0.03)
    price = np.round(CAT_PRICE[cat] * (0.7 + 0.6 * product / (voc.PRODUCTS_PER_CATEGORY - 1)), 1) - 0.05
    r = rng.random(n)
    status = np.where(r < 0.05, "returned", np.where(r < 0.07, "cancelled", "completed"))
    occ = pd.DataFrame({"row": rows, "ts": ts, "cat": cat, "channel": channel, "ref": ref, "product": product,
                        "qty": qty, "amount": np.round(price * qty, 2), "status": status})
    occ = occ[occ["channel"] != ""].reset_index(drop=True)
    occ["sku"] = CAT_CODE[occ["cat"].to_numpy()] + "-" + pd.Series(occ["product"] + 1).astype(str).str.zfill(3)

    for channel, prefix, base, counter in (("web", "W", 100_000, "web_order"), ("store", "R", 5_000_000, "store_order")):
        idx = np.flatnonzero(occ["channel"].to_numpy() == channel)
        k = counters[counter]
        occ.loc[idx, "order_id"] = (prefix + pd.Series(np.arange(k, k + len(idx)) + base).astype(str)).to_numpy()
        counters[counter] = k + len(idx)
    occ["line_no"] = 1
    # baskets: a fifth of the orders add a small item (soap, foam, a candle) on a second line
    extra = occ[rng.random(len(occ)) < 0.2].copy()
    extra["line_no"] = 2
    extra["cat"] = np.array([1, 0, 3])[rng.integers(0, 3, len(extra))]
    extra["product"] = rng.integers(0, voc.PRODUCTS_PER_CATEGORY, len(extra))
    extra["qty"] = 1
    extra["amount"] = np.round(CAT_PRICE[extra["cat"].to_numpy()] * (0.7 + 0.6 * extra["product"].to_numpy()
                                                                     / (voc.PRODUCTS_PER_CATEGORY - 1)), 1) - 0.05
    extra["sku"] = CAT_CODE[extra["cat"].to_numpy()] + "-" + pd.Series(extra["product"].to_numpy() + 1).astype(str).str.zfill(3)
    lines = pd.concat([occ, extra]).sort_index(kind="stable")
    occ["order_total"] = np.round(lines.groupby(level=0)["amount"].sum().to_numpy(), 2)
    web = lines[lines["channel"] == "web"]
    web_lines = pd.DataFrame({
        "order_id": web["order_id"].to_numpy(),
        "line_no": web["line_no"].to_numpy().astype(np.int32),
        "customer_id": web["ref"].to_numpy(),
        "ordered_at": pd.to_datetime(web["ts"].to_numpy(), unit="s"),  # UTC; the Parquet type says so
        "product_id": web["sku"].to_numpy(),
        "category": CAT_NAMES[web["cat"].to_numpy()],
        "quantity": web["qty"].to_numpy().astype(np.int32),
        "amount": web["amount"].to_numpy(),
        "status": web["status"].to_numpy(),
        "currency": "EUR",
        "payment_method": np.array(["ideal", "creditcard", "paypal", "klarna"], dtype=object)[
            rng.integers(0, 4, len(web))],
    })
    store = lines[lines["channel"] == "store"]
    store_lines = pd.DataFrame({
        "receipt_id": store["order_id"].to_numpy(),
        "card_number": store["ref"].to_numpy(),
        "purchased_at": pd.to_datetime(store["ts"].to_numpy(), unit="s", utc=True)
        .tz_convert("Europe/Amsterdam").tz_localize(None),
        "sku": store["sku"].to_numpy(),
        "category": CAT_NAMES[store["cat"].to_numpy()],
        "qty": store["qty"].to_numpy().astype(np.int32),
        "amount_eur": store["amount"].to_numpy(),
        "status": np.where(store["status"].to_numpy() == "cancelled", "completed", store["status"].to_numpy()),
    })
    return occ, web_lines, store_lines


def _mix(number: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 finaliser: distinct counters give distinct random-looking 64-bit ids."""
    x = number.astype(np.uint64) + np.uint64(seed * 0x9E3779B97F4A7C15 % (1 << 64))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass
class Devices:
    """Browsers and app installs of a block's persons (one row per device)."""

    owner: np.ndarray  # person row
    is_app: np.ndarray
    number: np.ndarray  # global device number (uint64), the seed of its ids
    lifetime: np.ndarray  # seconds a browser keeps its cookie (apps: forever)
    phase: np.ndarray
    count: np.ndarray  # devices per person
    offset: np.ndarray  # first device row per person


def devices(p: PersonBlock, rng: np.random.Generator, counters: dict[str, int]) -> Devices:
    """One to four devices per person; the first is always a browser."""
    count = 1 + np.minimum(rng.poisson(0.7, len(p)), 3)
    owner = np.repeat(np.arange(len(p)), count)
    offset = np.concatenate([[0], np.cumsum(count)[:-1]])
    k = counters["device"]
    counters["device"] = k + len(owner)
    is_app = (rng.random(len(owner)) < 0.25) & (np.arange(len(owner)) != offset[owner])
    # browsers lose their cookie every few months (tracking prevention, clearing); some keep it for years
    lifetime = np.where(rng.random(len(owner)) < 0.3, 1 << 40,
                        (np.exp(rng.normal(np.log(20), 0.5, len(owner))).clip(3, 200) * WEEK).astype(np.int64))
    phase = (rng.random(len(owner)) * np.minimum(lifetime, 400 * WEEK)).astype(np.int64)
    return Devices(owner, is_app, np.arange(k, k + len(owner), dtype=np.uint64), lifetime, phase, count, offset)


def cookies(s: pd.DataFrame, d: Devices, start: int, seed: int) -> tuple[np.ndarray, pd.Series, np.ndarray]:
    """The anonymous_id each session was seen with: (index per session, ids, device of each id)."""
    dev = s["device"].to_numpy()
    gen = np.where(d.is_app[dev], 0, (s["ts"].to_numpy() - start + d.phase[dev]) // d.lifetime[dev])
    key = (dev.astype(np.int64) << 20) | gen.clip(0, (1 << 20) - 1)
    uniq, index = np.unique(key, return_inverse=True)
    udev, ugen = uniq >> 20, (uniq & ((1 << 20) - 1)).astype(np.uint64)
    seedling = (d.number[udev] << np.uint64(20)) | ugen
    hi = hex_text(_mix(seedling, seed), 16)
    lo = hex_text(_mix(seedling, seed + 1_000_003), 16)
    ids = pd.Series(np.where(d.is_app[udev], "app-" + hi.str[:12],
                             hi.str[:8] + "-" + hi.str[8:12] + "-4" + hi.str[13:16] + "-" + lo.str[:4] + "-" + lo.str[4:16]))
    return index, ids, udev


def sessions(p: PersonBlock, b: Behaviour, keys: CustomerKeys, occ: pd.DataFrame, rng: np.random.Generator,
             start: int, end: int, d: Devices) -> pd.DataFrame:
    """Sessions: checkout sessions for web orders, research visits in the days before any order (the
    signal the intent model learns), plain browsing, and idle visits (bounces, ad click-throughs) that
    make most of a person's sessions end without a purchase."""
    n = len(p)
    # A. checkout sessions
    web = occ[occ["channel"] == "web"]
    a = pd.DataFrame({"row": web["row"].to_numpy(), "ts": web["ts"].to_numpy() - rng.integers(120, 1500, len(web)),
                      "cat": web["cat"].to_numpy(), "kind": 2, "order": web.index.to_numpy()})
    # B. research visits before orders (web and store)
    k = rng.poisson(0.15 + 0.9 * p.intent[occ["row"].to_numpy()])
    src = np.repeat(np.arange(len(occ)), k)
    lead = (rng.exponential(3.0, len(src)) * DAY).astype(np.int64) + 3600
    bb = pd.DataFrame({"row": occ["row"].to_numpy()[src], "ts": occ["ts"].to_numpy()[src] - lead,
                       "cat": occ["cat"].to_numpy()[src], "kind": 1, "order": -1})
    # C. browsing, thinned so late Nov-Dec gets twice the traffic
    active_from = np.maximum(p.joined_at - 8 * WEEK, start)
    weeks = np.maximum(end - active_from, 0) / WEEK
    parts = [a, bb]
    # C. browsing and D. idle visits, thinned so late Nov-Dec gets twice the traffic
    for kind, rate in ((0, b.browse_rate), (3, b.idle_rate)):
        count = rng.poisson(rate * weeks * 2.0)
        rows = np.repeat(np.arange(n), count)
        ts = active_from[rows] + (rng.random(len(rows)) * (end - active_from[rows])).astype(np.int64)
        keep = rng.random(len(rows)) < _season_accept(ts)
        rows, ts = rows[keep], ts[keep]
        liked = np.where(np.isnan(b.cycle_weeks[rows]), 0.2, 1.0)
        pick = (liked * rng.random(liked.shape)).argmax(axis=1)
        parts.append(pd.DataFrame({"row": rows, "ts": ts, "cat": pick, "kind": kind, "order": -1}))
    if p.index[0] == 0:  # Sophia always browses anonymously a few days before the end of history
        parts.append(pd.DataFrame({"row": [0], "ts": [max(start, end - 3 * DAY)], "cat": [0], "kind": [1], "order": [-1]}))
    s = pd.concat(parts, ignore_index=True)
    s = s[(s["ts"] >= start) & (s["ts"] < end)].reset_index(drop=True)
    rows = s["row"].to_numpy()
    # device: a random one of the person's; household partners sometimes use the head's first device
    dev = d.offset[rows] + (rng.random(len(s)) * d.count[rows]).astype(np.int64)
    partner = p.partner_of[rows]
    shared = (partner >= 0) & (rng.random(len(s)) < 0.3)
    dev = np.where(shared, d.offset[np.maximum(partner, 0)], dev)
    s["device"] = dev
    s["app"] = d.is_app[dev]
    # logged in: always for checkout, sometimes otherwise; needs a webshop account at that time
    has_acct = (keys.crm_id[rows] != None) & (s["ts"].to_numpy() >= keys.crm_created[rows])  # noqa: E711
    kind = s["kind"].to_numpy()
    s["logged_in"] = has_acct & ((kind == 2) | (rng.random(len(s)) < np.where(kind == 3, 0.04, 0.12)))
    return s.sort_values(["row", "ts"], kind="stable").reset_index(drop=True)


def _season_accept(ts: np.ndarray) -> np.ndarray:
    """Acceptance probability for thinning uniform visit times: late Nov-Dec twice the rest of the year."""
    doy = pd.to_datetime(ts, unit="s").day_of_year.to_numpy()
    return np.where((doy >= 324) & (doy <= 358), 1.0, 0.5)


@dataclass
class Visitors:
    """Cookies that never log in (ad click-throughs, search and social bounces): their sessions and devices."""

    sessions: pd.DataFrame  # row = -1 (no person), visitor = owning visitor number in the block
    devices: Devices


def visitors(count: int, rng: np.random.Generator, start: int, end: int, counters: dict[str, int]) -> Visitors:
    """Anonymous visitors: one cookie each, a first visit at a random time and a few return visits for the
    curious minority; mostly bounces, some multi-page browsing, never a purchase (checkout needs an account)."""
    k = counters["device"]
    counters["device"] = k + count
    is_app = rng.random(count) < 0.04
    dev = Devices(np.full(count, -1), is_app, np.arange(k, k + count, dtype=np.uint64),
                  np.full(count, 1 << 40, dtype=np.int64), np.zeros(count, dtype=np.int64),
                  np.ones(count, dtype=np.int64), np.arange(count))
    curious = rng.random(count) < 0.25
    visits = 1 + np.minimum(rng.poisson(np.where(curious, 1.5, 0.15)), 8)
    who = np.repeat(np.arange(count), visits)
    first = np.cumsum(visits) - visits
    gap = (rng.exponential(np.where(curious, 4.0, 10.0)[who]) * DAY).astype(np.int64)
    gap[first] = 0
    csum = np.cumsum(gap)
    t0 = rng.integers(start, end, count)
    ts = t0[who] + csum - csum[first][who]
    keep = (ts < end) & (rng.random(len(ts)) < _season_accept(ts) * 2 * 0.6)
    who, ts = who[keep], ts[keep]
    kind = np.where(rng.random(len(who)) < np.where(curious[who], 0.45, 0.8), 3, 0)
    cat = rng.choice(len(CAT_NAMES), len(who), p=CAT_SHARE / CAT_SHARE.sum())
    s = pd.DataFrame({"row": -1, "ts": ts, "cat": cat, "kind": kind, "order": -1, "device": who,
                      "app": is_app[who], "logged_in": False, "visitor": who})
    return Visitors(s.sort_values(["visitor", "ts"], kind="stable").reset_index(drop=True), dev)


_PAGES = ("/", "/nl-nl/home", "/nl-nl/nieuw", "/nl-nl/cadeaus", "/nl-nl/sale")
_SKUS = tuple(f"{code}-{k + 1:03d}" for code in CAT_CODE for k in range(voc.PRODUCTS_PER_CATEGORY))
# every URL the demo site has: landing pages, searches, product pages, login, checkout
_URLS = _PAGES + tuple(f"/nl-nl/zoeken?q={t}" for t in voc.SEARCH_TERMS) + tuple(f"/nl-nl/p/{s}" for s in _SKUS) \
    + ("/nl-nl/account/login", "/nl-nl/checkout")
_TYPES = ("page_view", "login", "search", "product_view", "add_to_cart", "checkout_start", "purchase")


# referrer (voc.REFERRERS order: google.com, google.nl, instagram, facebook, bing, direct, webmail) and
# utm source (google, facebook, instagram, newsletter, tiktok, pinterest) probabilities per session kind
_REFERRER_P = np.array([
    [0.20, 0.20, 0.15, 0.15, 0.05, 0.20, 0.05],  # browse
    [0.20, 0.20, 0.05, 0.05, 0.05, 0.30, 0.15],  # research
    [0.15, 0.15, 0.04, 0.04, 0.04, 0.40, 0.18],  # checkout
    [0.14, 0.14, 0.28, 0.28, 0.04, 0.10, 0.02],  # idle
])
_UTM_P = np.array([
    [0.30, 0.20, 0.20, 0.10, 0.10, 0.10],
    [0.30, 0.10, 0.10, 0.40, 0.05, 0.05],
    [0.25, 0.05, 0.05, 0.60, 0.025, 0.025],
    [0.20, 0.30, 0.25, 0.02, 0.15, 0.08],
])


def _draw(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a probability matrix (inverse CDF, vectorised)."""
    return (rng.random(len(probs))[:, None] > np.cumsum(probs, axis=1)[:, :-1]).sum(axis=1)


def _dict(indices: np.ndarray, values, valid: np.ndarray | None = None) -> pa.DictionaryArray:
    """A dictionary-encoded text column: cheap to build and to write for millions of events."""
    idx = pa.array(indices.astype(np.int32), mask=None if valid is None else ~valid)
    return pa.DictionaryArray.from_arrays(idx, pa.array(list(values), pa.string()))


def _of_order(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """values[order] where order >= 0; placeholders elsewhere (callers mask them)."""
    if len(values) == 0:
        return np.zeros(len(order), dtype=values.dtype)
    return values[np.maximum(order, 0)]


@dataclass
class EventBlock:
    """Events of a block as an Arrow table (text as dictionary codes) plus the logged-in references."""

    table: pa.Table
    refs: pd.DataFrame  # customer_ref, row: who each logged-in reference belongs to


def events(s: pd.DataFrame, occ: pd.DataFrame, keys: CustomerKeys, anon: pd.Series, cookie: np.ndarray,
           rng: np.random.Generator, counters: dict[str, int]) -> EventBlock:
    """Expand sessions into clickstream events: page_view, [login], [search], product_view*, [add_to_cart,
    checkout_start, purchase]; one vectorised pass over all sessions of the block."""
    m = len(s)
    kind = s["kind"].to_numpy()
    app = s["app"].to_numpy()
    logged = s["logged_in"].to_numpy()
    order_s = s["order"].to_numpy()
    login = logged & ~app
    # per kind (browse, research, checkout, idle): idle visits are one or two pages and rarely add to cart
    search = rng.random(m) < np.array([0.3, 0.15, 0.15, 0.03])[kind]
    views = np.where(kind == 1, 1 + rng.poisson(1.0, m), rng.poisson(np.array([1.0, 0.0, 0.6, 0.3])[kind]))
    cart = np.where(kind == 2, True, rng.random(m) < np.array([0.06, 0.35, 1.0, 0.01])[kind])
    checkout = (kind == 2) | (cart & (rng.random(m) < 0.1))
    purchase = kind == 2
    bounds = np.cumsum(np.stack([np.ones(m, dtype=np.int64), login, search, views, cart, checkout, purchase]), axis=0)
    total = bounds[-1]
    sess = np.repeat(np.arange(m), total)
    first = np.cumsum(total) - total
    pos = np.arange(len(sess)) - first[sess]
    etype = (pos[None, :] >= bounds[:, sess]).sum(axis=0)  # index into _TYPES
    gap = (rng.exponential(40.0, len(sess)) + 3).astype(np.int64)
    gap[first] = 0
    csum = np.cumsum(gap)
    ts = s["ts"].to_numpy()[sess] + csum - csum[first][sess]
    order = order_s[sess]
    # who: customer_ref from the login on (app sessions are logged in throughout)
    ref_session = np.where(order_s >= 0, _of_order(occ["ref"].to_numpy(), order_s),
                           keys.crm_id[np.maximum(s["row"].to_numpy(), 0)])  # row -1: a visitor, never logged
    ref_session = np.where(logged, ref_session, None)
    ref_code, ref_values = pd.factorize(ref_session)
    has_ref = logged[sess] & ((pos >= 1) | app[sess])
    cat = s["cat"].to_numpy()[sess]
    product_no = np.where(order >= 0, _of_order(occ["product"].to_numpy(), order),
                          rng.integers(0, voc.PRODUCTS_PER_CATEGORY, len(sess)))
    sku = cat * voc.PRODUCTS_PER_CATEGORY + product_no
    is_product = (etype == 3) | (etype == 4)
    with_product = is_product | (etype == 6)
    price = np.round(CAT_PRICE[cat] * (0.7 + 0.6 * product_no / (voc.PRODUCTS_PER_CATEGORY - 1)), 1) - 0.05
    value = np.where(etype == 6, _of_order(occ["order_total"].to_numpy(), order), price)
    n_pages, n_terms = len(_PAGES), len(voc.SEARCH_TERMS)
    url = np.select([etype == 0, etype == 2, is_product, etype == 1],
                    [rng.integers(0, n_pages, len(sess)), n_pages + rng.integers(0, n_terms, len(sess)),
                     n_pages + n_terms + sku, len(_URLS) - 2], len(_URLS) - 1)
    entry = pos == 0
    # where a visit comes from says something about intent: buyers come direct or from e-mail, idle
    # visits mostly from social media and ads (noisy: every kind draws from every referrer)
    kind_e = kind[sess]
    referrer = _draw(rng, _REFERRER_P[kind_e])
    has_referrer = entry & (np.array(voc.REFERRERS, dtype=object)[referrer] != "")
    utm = entry & (rng.random(len(sess)) < np.array([0.3, 0.3, 0.35, 0.6])[kind_e])
    utm_source = _draw(rng, _UTM_P[kind_e])
    k = counters["session"]
    counters["session"] = k + m
    k_event = counters["event"]
    counters["event"] = k_event + len(sess)
    table = pa.table({
        "event_no": np.arange(k_event, k_event + len(sess), dtype=np.int64) * 2_246_822_519 % (1 << 44) + (1 << 44),
        "ts": ts,
        "type": _dict(etype, _TYPES),
        "anonymous_id": _dict(cookie[sess], anon.tolist()),
        "user_id": _dict(np.maximum(ref_code[sess], 0), ref_values.tolist(), has_ref),
        "session_no": (np.arange(k, k + m, dtype=np.int64) * 40_503 % (1 << 36) + (1 << 36))[sess],
        "product_id": _dict(sku, _SKUS, with_product),
        "category": _dict(cat, CAT_NAMES.tolist(), with_product),
        "value": pa.array(value, mask=~(with_product)),
        "channel": _dict(app[sess].astype(np.int64), ("web", "app")),
        "page_url": _dict(url, _URLS),
        "referrer": _dict(referrer, voc.REFERRERS, has_referrer),
        "utm_source": _dict(utm_source, voc.UTM_SOURCES, utm),
    })
    refs = pd.DataFrame({"customer_ref": ref_session[logged], "row": s["row"].to_numpy()[logged]}).drop_duplicates()
    return EventBlock(table, refs)


def interactions(p: PersonBlock, occ: pd.DataFrame, keys: CustomerKeys, rng: np.random.Generator,
                 start: int, end: int, counters: dict[str, int]) -> pd.DataFrame:
    """Service contacts: return requests after returns, complaints (mostly resolved later), questions."""
    ret = occ[occ["status"] == "returned"]
    ret = ret[rng.random(len(ret)) < 0.5]
    comp = occ[(occ["status"] == "completed") & (rng.random(len(occ)) < 0.025)]
    resolved = comp[rng.random(len(comp)) < 0.75]
    asks = np.repeat(np.arange(len(p)), rng.poisson(0.12, len(p)))
    parts = [
        pd.DataFrame({"row": ret["row"].to_numpy(), "ts": ret["ts"].to_numpy() + rng.integers(DAY, 8 * DAY, len(ret)),
                      "type": "return_request", "cat": ret["cat"].to_numpy()}),
        pd.DataFrame({"row": comp["row"].to_numpy(), "ts": comp["ts"].to_numpy() + rng.integers(DAY, 14 * DAY, len(comp)),
                      "type": "complaint", "cat": comp["cat"].to_numpy()}),
        pd.DataFrame({"row": resolved["row"].to_numpy(),
                      "ts": resolved["ts"].to_numpy() + rng.integers(15 * DAY, 30 * DAY, len(resolved)),
                      "type": "complaint_resolved", "cat": resolved["cat"].to_numpy()}),
        pd.DataFrame({"row": asks, "ts": rng.integers(start, end, len(asks)), "type": "question",
                      "cat": rng.integers(0, len(CAT_NAMES), len(asks))}),
    ]
    it = pd.concat(parts, ignore_index=True)
    it = it[(it["ts"] >= start) & (it["ts"] < end)].reset_index(drop=True)
    if 0 in set(p.index.tolist()[:1]) and not (it["row"] == 0).any():  # Sophia always asks once on WhatsApp
        it = pd.concat([it, pd.DataFrame({"row": [0], "ts": [end - 20 * DAY], "type": ["question"], "cat": [0]})],
                       ignore_index=True)
    n = len(it)
    rows, ts = it["row"].to_numpy(), it["ts"].to_numpy()
    channel = np.array(voc.SERVICE_CHANNELS, dtype=object)[np.searchsorted([0.5, 0.75], rng.random(n), side="right")]
    channel[(rows == 0) & (p.index[0] == 0)] = "whatsapp"
    style = np.where(channel == "whatsapp", np.where(rng.random(n) < 0.5, 4, 0), rng.integers(0, 6, n))
    style[(rows == 0) & (p.index[0] == 0)] = 0  # 06xxxxxxxx, local format
    phone = format_phones(phone_at(p, rows, ts), style).to_numpy(dtype=object)
    use_alt = rng.random(n) < 0.4
    email = np.where(use_alt, p.alt_email.to_numpy(dtype=object)[rows], p.email.to_numpy(dtype=object)[rows])
    email = messy_email(pd.Series(email), rng).to_numpy(dtype=object)
    k = counters["interaction"]
    ids = "SC-" + pd.Series(np.arange(k, k + n) + 700_000).astype(str)
    counters["interaction"] = k + n
    return pd.DataFrame({
        "contact_id": ids.to_numpy(dtype=object),
        "created": local_time(ts, "%Y-%m-%dT%H:%M:%S%z").str.replace(r"(\d\d)(\d\d)$", r"\1:\2", regex=True),
        "channel": channel,
        "customer_phone": np.where(channel == "email", None, phone),
        "customer_email": np.where(channel == "email", email, None),
        "contact_type": it["type"].to_numpy(),
        "product_category": CAT_NAMES[it["cat"].to_numpy()],
        "team": np.where(channel == "email", "backoffice", "klantenservice"),
        "_row": rows,
        "_ts": ts,
    })


def consents(p: PersonBlock, keys: CustomerKeys, rng: np.random.Generator, end: int) -> pd.DataFrame:
    """Consent log: choices at account creation (by klantnummer), newsletter opt-ins and opt-outs (by
    e-mail), and later changes of mind."""
    parts = []
    crm_rows = np.flatnonzero(keys.crm_id != None)  # noqa: E711
    purposes = ("email_marketing", "ad_targeting", "profiling")
    base = {"email_marketing": 0.55, "ad_targeting": 0.35, "profiling": 0.45}
    for purpose in purposes:
        n = len(crm_rows)
        at = keys.crm_created[crm_rows]
        granted = rng.random(n) < base[purpose] + 0.3 * p.intent[crm_rows]
        parts.append(pd.DataFrame({"row": crm_rows, "ts": at, "purpose": purpose, "granted": granted,
                                   "customer_id": keys.crm_id[crm_rows], "email": None}))
        change = rng.random(n) < 0.15
        later = at[change] + (rng.random(change.sum()) * (end - DAY - at[change])).astype(np.int64)
        parts.append(pd.DataFrame({"row": crm_rows[change], "ts": later, "purpose": purpose,
                                   "granted": ~granted[change], "customer_id": keys.crm_id[crm_rows[change]],
                                   "email": None}))
    nl_rows = np.flatnonzero(keys.newsletter_email != None)  # noqa: E711
    at = keys.newsletter_at[nl_rows]
    parts.append(pd.DataFrame({"row": nl_rows, "ts": at, "purpose": "email_marketing", "granted": True,
                               "customer_id": None, "email": keys.newsletter_email[nl_rows]}))
    out = rng.random(len(nl_rows)) < 0.12
    later = at[out] + (rng.random(out.sum()) * (end - DAY - at[out])).astype(np.int64)
    parts.append(pd.DataFrame({"row": nl_rows[out], "ts": later, "purpose": "email_marketing", "granted": False,
                               "customer_id": None, "email": keys.newsletter_email[nl_rows[out]]}))
    c = pd.concat(parts, ignore_index=True)
    c = c[c["ts"] < end].sort_values(["ts", "row"], kind="stable").reset_index(drop=True)
    c["changed_at"] = local_time(c["ts"].to_numpy(), "%Y-%m-%d %H:%M:%S").to_numpy()
    c["granted"] = np.where(c["granted"].to_numpy(), "true", "false")
    c["channel"] = np.where(c["customer_id"].isna(), "newsletter", "webshop")
    return c
