"""The three customer silos (webshop CRM, newsletter list, loyalty cards) as their exports show them.

Each function returns the export rows of one person block plus the truth rows (source, record_id, entity)
so the ground truth is built from exactly what was written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cdp_ml.demo import vocabulary as voc
from cdp_ml.demo.people import DAY, WEEK, PersonBlock, format_phones, hex_text, local_time, messy_email, typo

_SEGMENTS = np.array(["brons", "zilver", "goud", "platina"], dtype=object)
_STORES = np.array(["Amsterdam Kalverstraat", "Rotterdam Lijnbaan", "Utrecht Hoog Catharijne", "Den Haag Spuistraat",
                    "Eindhoven Demer", "Groningen Herestraat", "Schiphol Plaza", "Haarlem Grote Houtstraat"],
                   dtype=object)


@dataclass
class CustomerKeys:
    """Which record each person's activity refers to (per local person row)."""

    crm_id: np.ndarray  # object: klantnummer or None
    crm_dup_id: np.ndarray  # second account or None
    crm_dup_at: np.ndarray  # epoch s the second account was opened (0 = none)
    crm_created: np.ndarray
    card: np.ndarray  # loyalty card number or None
    card_at: np.ndarray
    newsletter_email: np.ndarray  # address the newsletter goes to, or None
    newsletter_at: np.ndarray


def phone_at(p: PersonBlock, rows: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The mobile number a person used at a moment (changed numbers switch at phone_changed_at)."""
    changed = (p.phone_changed_at[rows] > 0) & (at >= p.phone_changed_at[rows])
    return np.where(changed, p.new_phone[rows], p.phone[rows])


def _address_at(p: PersonBlock, rows: np.ndarray, at: np.ndarray) -> list[np.ndarray]:
    moved = (p.moved_at[rows] > 0) & (at >= p.moved_at[rows])
    return [np.where(moved, new.to_numpy(dtype=object)[rows], old.to_numpy(dtype=object)[rows])
            for old, new in ((p.street, p.new_street), (p.house_number, p.new_house_number),
                             (p.postcode, p.new_postcode), (p.city, p.new_city))]


def _first_names(p: PersonBlock, rows: np.ndarray, rng: np.random.Generator, formal_share: float) -> pd.Series:
    formal = p.formal_first.to_numpy(dtype=object)[rows]
    nick = p.nick_first.to_numpy(dtype=object)[rows]
    return pd.Series(np.where(rng.random(len(rows)) < formal_share, formal, nick))


def crm(p: PersonBlock, rng: np.random.Generator, next_id: int, end: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Webshop accounts: one per CRM person, a second account for a few (new e-mail, often after a move)."""
    main = np.flatnonzero(p.has_crm)
    dup = np.flatnonzero(p.crm_duplicate)
    rows = np.concatenate([main, dup])
    n = len(rows)
    is_dup = np.arange(n) >= len(main)
    created = np.maximum(p.joined_at[rows], 0)
    dup_at = rng.integers(np.minimum(created[is_dup] + 10 * WEEK, end - 3 * WEEK), end - 2 * WEEK)
    created[is_dup] = dup_at
    # updated: last edit; movers updated their address in 70% of accounts
    moved = p.moved_at[rows]
    edits_move = (moved > created) & (rng.random(n) < 0.7) & (moved < end)
    updated = np.where(edits_move, moved + rng.integers(0, 20 * DAY, n),
                       created + (rng.random(n) * np.maximum(end - DAY - created, 1) * 0.5).astype(np.int64))
    updated = np.minimum(updated, end - DAY)
    address = _address_at(p, rows, np.where(edits_move, updated, created))
    counter = next_id + np.arange(n, dtype=np.int64)
    ids = pd.Series(10_000_000 + (counter * 7919) % 90_000_000).astype(str)

    first = typo(_first_names(p, rows, rng, 0.45), rng, 0.03)
    last = typo(pd.Series(p.last_name.to_numpy(dtype=object)[rows]), rng, 0.02)
    swap = rng.random(n) < 0.015
    first, last = (pd.Series(np.where(swap, last, first)), pd.Series(np.where(swap, first, last)))
    changed_email = is_dup | (rng.random(n) < 0.05)  # second accounts, and customers who changed address
    changed_email[(rows == 0) & (p.index[0] == 0)] = False  # Sophia keeps her first address
    email = np.where(changed_email, p.new_email.to_numpy(dtype=object)[rows], p.email.to_numpy(dtype=object)[rows])
    email = messy_email(pd.Series(email), rng).to_numpy(dtype=object)
    r = rng.random(n)
    email = np.where(r < 0.012, rng.choice(np.array(voc.PLACEHOLDER_EMAILS, dtype=object), n), email)
    phone = format_phones(phone_at(p, rows, updated), rng.integers(0, 6, n)).to_numpy(dtype=object)
    r = rng.random(n)
    phone = np.where(r < 0.15, None, phone)
    phone = np.where((r >= 0.15) & (r < 0.17), rng.choice(np.array(voc.PLACEHOLDER_PHONES, dtype=object), n), phone)
    sophia = (rows == 0) & (p.index[0] == 0) & ~is_dup
    phone[sophia] = format_phones(phone_at(p, rows[sophia], updated[sophia]), np.array([2] * int(sophia.sum())))
    birth = pd.Series(p.birth[rows]).dt.strftime("%d-%m-%Y").to_numpy(dtype=object)
    birth = np.where(rng.random(n) < 0.3, None, birth)
    gender = np.where(rng.random(n) < 0.08, None, p.gender[rows].astype(object))
    country = np.where(rng.random(n) < 0.1, "Nederland", "NL")

    df = pd.DataFrame({
        "klantnummer": ids,
        "voornaam": first,
        "achternaam": last,
        "emailadres": email,
        "telefoon": phone,
        "geboortedatum": birth,
        "straat": address[0],
        "huisnummer": address[1],
        "postcode": address[2],
        "woonplaats": address[3],
        "land": country,
        "geslacht": gender,
        "aangemaakt_op": local_time(created, "%Y-%m-%d %H:%M:%S"),
        "gewijzigd_op": local_time(updated, "%Y-%m-%d %H:%M:%S"),
        "klantsegment": _SEGMENTS[np.minimum((p.intent[rows] * 5 + rng.random(n)).astype(int), 3)],
        "nieuwsbrief": np.where(p.has_newsletter[rows], "ja", "nee"),
    })
    truth = pd.DataFrame({"source": "crm", "record_id": ids, "entity": p.entity.to_numpy(dtype=object)[rows]})
    keys = {"crm_id": (main, ids.to_numpy(dtype=object)[: len(main)], created[: len(main)]),
            "crm_dup": (dup, ids.to_numpy(dtype=object)[len(main):], created[len(main):])}
    return df, truth, keys


def newsletter(p: PersonBlock, rng: np.random.Generator, next_id: int, end: int,
               crm_keys: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Newsletter subscribers as a Mailchimp/Klaviyo-style export.

    Most rows carry a last name, some a birthday (for birthday mails), postcode or phone; subscribing while
    logged in to the webshop stores the account e-mail and the klantnummer. A minority (footer and popup
    sign-ups) carries only an e-mail and at most a first name - genuinely hard to link.
    """
    rows = np.flatnonzero(p.has_newsletter)
    n = len(rows)
    signup = np.clip(p.joined_at[rows] + rng.integers(0, 30 * WEEK, n), 0, end - DAY)
    use_alt = (rng.random(n) < 0.55) | ~p.has_crm[rows]
    sophia = (rows == 0) & (p.index[0] == 0)
    use_alt[sophia] = True  # Sophia: sofietje.dv@...
    # the profile fields draw from a child stream so the sources generated after this one stay unchanged
    ex = rng.spawn(1)[0]
    hard = (ex.random(n) < 0.2) & ~sophia  # only e-mail + first name
    # logged in to the webshop at sign-up: the export carries the klantnummer and the account e-mail
    account = np.full(n, None, dtype=object)
    logged_in = np.zeros(n, dtype=bool)
    if crm_keys is not None:
        crm_rows, crm_ids, crm_created = crm_keys["crm_id"]
        at = np.full(len(p), -1, dtype=np.int64)
        at[crm_rows] = crm_created
        number = np.full(len(p), None, dtype=object)
        number[crm_rows] = crm_ids
        logged_in = (at[rows] >= 0) & (signup >= at[rows]) & ~hard & ~sophia & (ex.random(n) < 0.45)
        account = np.where(logged_in, number[rows], None)
        use_alt &= ~logged_in
    email = np.where(use_alt, p.alt_email.to_numpy(dtype=object)[rows], p.email.to_numpy(dtype=object)[rows])
    email = messy_email(pd.Series(email), rng).to_numpy(dtype=object)
    first = _first_names(p, rows, rng, 0.1).to_numpy(dtype=object)
    r = rng.random(n)
    first = np.where(r < 0.3, None, first)
    first = np.where((r >= 0.3) & (r < 0.32), "onbekend", first)
    counter = next_id + np.arange(n, dtype=np.int64)
    ids = hex_text((counter * 2_654_435_761 + 977) % (1 << 40), 10)
    source = rng.choice(np.array(["footer", "checkout", "popup", "store"], dtype=object), n)
    source = np.where(logged_in, "account", source)
    last = typo(pd.Series(p.last_name.to_numpy(dtype=object)[rows]), ex, 0.03)
    last = np.where(ex.random(n) < 0.1, last.str.lower(), last)  # typed in lower case in a popup
    last = np.where(hard | (ex.random(n) < 0.1), None, last)
    birth = pd.Series(p.birth[rows]).dt.strftime("%Y-%m-%d").to_numpy(dtype=object)
    birth = np.where(hard | (ex.random(n) >= 0.4), None, birth)
    postcode = np.where(hard | (ex.random(n) >= 0.25), None, _address_at(p, rows, signup)[2])
    phone = format_phones(phone_at(p, rows, signup), ex.integers(0, 6, n)).to_numpy(dtype=object)
    phone = np.where(hard | (ex.random(n) >= 0.1), None, phone)
    source = np.where(hard, np.where(ex.random(n) < 0.5, "footer", "popup"), source)
    df = pd.DataFrame({
        "subscriber_id": ids,
        "email": email,
        "first_name": first,
        "last_name": last,
        "birthday": birth,
        "postcode": postcode,
        "phone": phone,
        "customer_number": account,
        "signup_date": pd.Series(pd.to_datetime(signup, unit="s")).dt.strftime("%Y-%m-%d"),
        "signup_source": source,
    })
    truth = pd.DataFrame({"source": "newsletter", "record_id": ids, "entity": p.entity.to_numpy(dtype=object)[rows]})
    return df, truth, {"newsletter": (rows, email, signup)}


def loyalty(p: PersonBlock, rng: np.random.Generator, next_id: int, end: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Store loyalty cards: name, postcode + house number, a phone in whatever format the till accepted."""
    rows = np.flatnonzero(p.has_loyalty)
    n = len(rows)
    registered = np.clip(p.joined_at[rows] + rng.integers(-20 * WEEK, 40 * WEEK, n), 0, end - DAY)
    address = _address_at(p, rows, registered)  # cards are rarely updated after a move
    postcode = pd.Series(address[2])
    r = rng.random(n)
    postcode = np.where(r < 0.3, postcode.str.replace(" ", "", regex=False),
                        np.where(r < 0.4, postcode.str.lower(), postcode))
    first = _first_names(p, rows, rng, 0.2)
    initial = first.str[0] + "."
    first = typo(pd.Series(np.where(rng.random(n) < 0.15, initial, first)), rng, 0.03)
    phone = format_phones(phone_at(p, rows, registered), rng.integers(0, 6, n)).to_numpy(dtype=object)
    r = rng.random(n)
    phone = np.where(r < 0.2, None, phone)
    phone = np.where((r >= 0.2) & (r < 0.23), rng.choice(np.array(voc.PLACEHOLDER_PHONES, dtype=object), n), phone)
    # at the till people often give their personal address (the one the newsletter goes to)
    personal = rng.random(n) < 0.35
    sophia = (rows == 0) & (p.index[0] == 0)
    personal |= sophia
    email = np.where(personal, p.alt_email.to_numpy(dtype=object)[rows], p.email.to_numpy(dtype=object)[rows])
    email = messy_email(pd.Series(email), rng).to_numpy(dtype=object)
    r = rng.random(n)
    r[sophia] = 0.9
    email = np.where(r < 0.55, None, email)
    email = np.where((r >= 0.55) & (r < 0.59), rng.choice(np.array(voc.PLACEHOLDER_EMAILS, dtype=object), n), email)
    phone[sophia] = format_phones(phone_at(p, rows[sophia], registered[sophia]), np.array([1] * int(sophia.sum())))
    counter = next_id + np.arange(n, dtype=np.int64)
    ids = pd.Series(2_900_000_000_000 + (counter * 48_271 + 11) % 1_000_000_000).astype(str)
    df = pd.DataFrame({
        "card_number": ids,
        "first_name": first,
        "last_name": typo(pd.Series(p.last_name.to_numpy(dtype=object)[rows]), rng, 0.02),
        "postcode": postcode,
        "house_number": address[1],
        "phone": phone,
        "email": email,
        "registered_at": pd.to_datetime(registered, unit="s"),
        "home_store": _STORES[rng.integers(0, len(_STORES), n)],
    })
    truth = pd.DataFrame({"source": "loyalty", "record_id": ids, "entity": p.entity.to_numpy(dtype=object)[rows]})
    return df, truth, {"card": (rows, ids.to_numpy(dtype=object), registered)}


def customer_keys(n: int, keys: dict) -> CustomerKeys:
    """Per-person lookup of record keys, for the activity sources that reference customers."""
    def spread(name: str, dtype=object) -> tuple[np.ndarray, np.ndarray]:
        rows, values, at = keys[name]
        out = np.full(n, None, dtype=object)
        out[rows] = values
        when = np.zeros(n, dtype=np.int64)
        when[rows] = at
        return out, when

    crm_id, crm_created = spread("crm_id")
    dup_id, dup_at = spread("crm_dup")
    card, card_at = spread("card")
    nl, nl_at = spread("newsletter")
    return CustomerKeys(crm_id, dup_id, dup_at, crm_created, card, card_at, nl, nl_at)
