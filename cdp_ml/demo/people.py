"""Persons of the demo world and how each silo recorded them (with the noise real exports have).

A block of persons is generated at once with numpy/pandas vector operations so that a million persons
stay fast; only the small share of records that get a typo is touched one string at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cdp_ml.demo import vocabulary as voc

DAY = 86_400
WEEK = 7 * DAY


@dataclass
class PersonBlock:
    """Vectors describing the true persons of one block (one row per person)."""

    index: np.ndarray  # global person number, 0-based
    entity: pd.Series
    household: pd.Series
    partner_of: np.ndarray  # local row of the household head, -1 if none
    gender: np.ndarray
    formal_first: pd.Series
    nick_first: pd.Series  # the name the person goes by (roepnaam)
    last_name: pd.Series
    birth: np.ndarray  # datetime64[D]
    street: pd.Series
    house_number: pd.Series
    postcode: pd.Series
    city: pd.Series
    moved_at: np.ndarray  # epoch seconds of the move, 0 = never moved
    new_street: pd.Series
    new_house_number: pd.Series
    new_postcode: pd.Series
    new_city: pd.Series
    email: pd.Series
    alt_email: pd.Series  # a second, personal address (newsletter, service)
    new_email: pd.Series  # address used after an e-mail change / for a second account
    phone: np.ndarray  # 8 digits after 06
    new_phone: np.ndarray
    phone_changed_at: np.ndarray  # 0 = never
    intent: np.ndarray
    joined_at: np.ndarray  # first contact with the brand (epoch s)
    has_crm: np.ndarray
    crm_duplicate: np.ndarray  # opened a second webshop account later
    has_newsletter: np.ndarray
    has_loyalty: np.ndarray
    erased: np.ndarray  # asked for erasure (privacy test cases)

    def __len__(self) -> int:
        return len(self.index)


def _nick_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat table of name variants: offsets and counts per first-name index."""
    variants, offsets, counts = [], [], []
    for formal, _g, nicks in voc.FIRST_NAMES:
        offsets.append(len(variants))
        options = nicks or (formal,)
        variants.extend(options)
        counts.append(len(options))
    return np.array(variants, dtype=object), np.array(offsets), np.array(counts)


_VARIANTS, _VAR_OFFSET, _VAR_COUNT = _nick_table()
_FORMAL = np.array([f for f, _, _ in voc.FIRST_NAMES], dtype=object)
_GENDER = np.array([g for _, g, _ in voc.FIRST_NAMES])
_FEMALE = np.flatnonzero(_GENDER == "V")
_MALE = np.flatnonzero(_GENDER == "M")
_LAST = np.array(voc.LAST_NAMES, dtype=object)
_STREETS = np.array(voc.STREETS, dtype=object)
_CITY = np.array([c for c, _, _ in voc.CITIES], dtype=object)
_PC_LO = np.array([lo for _, lo, _ in voc.CITIES])
_PC_HI = np.array([hi for _, _, hi in voc.CITIES])
_DOMAINS = np.array(voc.EMAIL_DOMAINS, dtype=object)
_LETTERS = np.array(list(voc.POSTCODE_LETTERS), dtype=object)


def hex_text(values: np.ndarray, width: int) -> pd.Series:
    """Zero-padded lower-case hex text (a text Series even when empty)."""
    return pd.Series([format(int(v), f"0{width}x") for v in values.tolist()], dtype=object)


def slug(names: pd.Series) -> pd.Series:
    """Lower-case name without spaces, as people put it in an e-mail address."""
    return names.str.lower().str.replace(" ", "", regex=False).str.replace("'", "", regex=False)


def _addresses(rng: np.random.Generator, n: int) -> tuple[pd.Series, pd.Series, pd.Series, pd.Series]:
    city = rng.integers(0, len(_CITY), n)
    number = _PC_LO[city] + (rng.random(n) * (_PC_HI[city] - _PC_LO[city] + 1)).astype(int)
    letters = _LETTERS[rng.integers(0, len(_LETTERS), n)] + _LETTERS[rng.integers(0, len(_LETTERS), n)]
    postcode = pd.Series(number.astype(str)) + " " + pd.Series(letters)
    house = pd.Series(np.minimum(rng.geometric(0.04, n), 350).astype(str))
    suffix = rng.random(n)
    house = house.where(suffix > 0.06, house + "a").where((suffix < 0.06) | (suffix > 0.09), house + "-2")
    return (pd.Series(_STREETS[rng.integers(0, len(_STREETS), n)]), house, postcode,
            pd.Series(_CITY[city]))


def _unique_digits(index: np.ndarray, multiplier: int, offset: int, low: int) -> np.ndarray:
    """Distinct 8-digit numbers per person (a bijection of the person number), in [low, low+4e7)."""
    return low + (index.astype(np.int64) * multiplier + offset) % 40_000_000


def unique_addresses(candidates: pd.Series, fallback: pd.Series, taken: set[str]) -> pd.Series:
    """Keep each candidate address unless someone earlier has it; clashes take their (unique) fallback."""
    clash = (candidates.duplicated() | candidates.isin(taken)).to_numpy()
    out = pd.Series(np.where(clash, fallback.to_numpy(dtype=object), candidates.to_numpy(dtype=object)))
    taken.update(out.tolist())
    return out


def make_persons(rng: np.random.Generator, first: int, n: int, start: int, end: int, seed: int,
                 taken: set[str]) -> PersonBlock:
    """Persons ``first .. first+n-1``; pairs (even, odd) form a household with some probability.
    ``taken`` holds every e-mail address handed out so far (kept unique across blocks)."""
    index = np.arange(first, first + n, dtype=np.int64)
    entity = pd.Series(index + 1).map("P{:07d}".format)
    gender = np.where(rng.random(n) < 0.72, "V", "M")  # a cosmetics retailer: mostly women
    first_idx = np.where(gender == "V", _FEMALE[rng.integers(0, len(_FEMALE), n)],
                         _MALE[rng.integers(0, len(_MALE), n)])
    uses_nick = rng.random(n) < 0.65
    variant = _VAR_OFFSET[first_idx] + (rng.random(n) * _VAR_COUNT[first_idx]).astype(int)
    formal = pd.Series(_FORMAL[first_idx])
    nick = pd.Series(np.where(uses_nick, _VARIANTS[variant], _FORMAL[first_idx]))
    last = pd.Series(_LAST[rng.integers(0, len(_LAST), n)])
    age = rng.normal(41, 13, n)
    age = np.where(age < 17, 34 - age, age)  # reflected, not clipped: clipping piles ~3% on one birth date
    age_days = (np.minimum(age, 88) * 365.25).astype(np.int64)
    ref_day = np.datetime64(end // DAY, "D")
    birth = ref_day - age_days.astype("timedelta64[D]")
    street, house, postcode, city = _addresses(rng, n)

    # households: the odd member of a pair lives with the even one and shares a device
    pair = (index % 2 == 1) & (rng.random(n) < 0.16) & (np.arange(n) > 0)
    partner_of = np.where(pair, np.arange(n) - 1, -1)
    head = np.where(pair, np.arange(n) - 1, np.arange(n))
    street, house, postcode, city = (pd.Series(s.to_numpy()[head]) for s in (street, house, postcode, city))
    same_last = pair & (rng.random(n) < 0.55)
    last = pd.Series(np.where(same_last, last.to_numpy()[head], last.to_numpy()))
    household = entity.to_numpy()[head]
    household = pd.Series(np.where(pair | np.isin(np.arange(n), head[pair]), "H" + pd.Series(household).str[1:], None))

    moved = rng.random(n) < 0.12
    span = end - start
    moved_at = np.where(moved, start + (span * rng.uniform(0.08, 0.95, n)).astype(np.int64), 0)
    moved_at[pair] = moved_at[head[pair]]  # households move together
    new_street, new_house, new_postcode, new_city = _addresses(rng, n)
    new_street, new_house, new_postcode, new_city = (
        pd.Series(s.to_numpy()[head]) for s in (new_street, new_house, new_postcode, new_city))

    f_slug, l_slug, n_slug = slug(formal), slug(last), slug(nick)
    year = birth.astype("datetime64[Y]").astype(int) + 1970
    yy = pd.Series(year % 100).astype(str).str.zfill(2)
    yyyy = pd.Series(year).astype(str)

    def domains() -> pd.Series:
        return pd.Series(_DOMAINS[rng.integers(0, len(_DOMAINS), n)])

    def pick(options: list[pd.Series]) -> pd.Series:
        choice = rng.integers(0, len(options), n)
        out = options[0].to_numpy(dtype=object).copy()
        for k in range(1, len(options)):
            out = np.where(choice == k, options[k].to_numpy(dtype=object), out)
        return pd.Series(out)

    def fallback(mult: int, off: int) -> pd.Series:
        # 5+ digits, distinct per person: never equal to a name(+year) address of anyone else
        return pd.Series((10_000 + (index * mult + off * (seed + 1)) % (1 << 24)).astype(str))

    # addresses are built from the names and birth year like people do; a clash with an address taken
    # earlier (in this or a previous block) falls back to a form made unique by a per-person number
    webshop = pick([n_slug + "." + l_slug, f_slug + "." + l_slug, n_slug.str[0] + "." + l_slug, f_slug + l_slug,
                    n_slug + l_slug + yy, n_slug + "." + l_slug + yy])
    email = unique_addresses(webshop + "@" + domains(),
                             webshop.str.replace(r"\d+$", "", regex=True) + fallback(2_654_435, 17) + "@" + domains(),
                             taken)
    personal = pick([n_slug + yy, n_slug + "." + l_slug.str[:1] + yy, n_slug + "_" + l_slug, n_slug + yyyy,
                     n_slug + "." + l_slug])
    alt_email = unique_addresses(personal + "@" + domains(), n_slug + "_" + fallback(7_919_981, 91) + "@" + domains(),
                                 taken)
    later = pick([f_slug + "." + l_slug + yyyy, n_slug + "." + l_slug + "." + yy, f_slug.str[0] + l_slug + yy])
    new_email = unique_addresses(later + "@" + domains(),
                                 f_slug + "." + l_slug + "." + fallback(5_099_517, 3) + "@" + domains(), taken)

    phone = _unique_digits(index, 7_654_321, seed * 1_000_003 % 40_000_000, 10_000_000)
    new_phone = _unique_digits(index, 3_333_337, seed * 999_983 % 40_000_000, 50_000_000)
    changed = rng.random(n) < 0.10
    phone_changed_at = np.where(changed, start + (span * rng.uniform(0.04, 0.97, n)).astype(np.int64), 0)

    intent = rng.beta(1.3, 3.2, n)
    joined_at = rng.integers(start - 150 * WEEK, end - 6 * WEEK, n)
    has_crm = rng.random(n) < 0.62 + 0.2 * intent
    has_newsletter = rng.random(n) < 0.30 + 0.25 * has_crm
    has_loyalty = rng.random(n) < 0.42
    crm_duplicate = has_crm & (rng.random(n) < 0.04)
    erased = rng.random(n) < 0.004
    if first == 0:  # person 1 is the textbook case every demo shows: Sophia, known as Sofietje
        so = [i for i, (f, _, _) in enumerate(voc.FIRST_NAMES) if f == "Sophia"][0]
        gender[0], formal[0], nick[0], last[0] = "V", "Sophia", "Sofietje", "de Vries"
        email[0] = "sophia.devries@" + voc.EMAIL_DOMAINS[0]  # reserved in `taken` by generate
        alt_email[0] = "sofietje.dv@" + voc.EMAIL_DOMAINS[3]
        has_crm[0] = has_newsletter[0] = has_loyalty[0] = True
        crm_duplicate[0] = erased[0] = False
        intent[0] = max(intent[0], 0.6)
        joined_at[0] = min(joined_at[0], start - 20 * WEEK)
        first_idx[0] = so
    return PersonBlock(
        index=index, entity=entity, household=household, partner_of=partner_of, gender=gender,
        formal_first=formal, nick_first=nick, last_name=last, birth=birth, street=street, house_number=house,
        postcode=postcode, city=city, moved_at=moved_at, new_street=new_street, new_house_number=new_house,
        new_postcode=new_postcode, new_city=new_city, email=email, alt_email=alt_email, new_email=new_email,
        phone=phone, new_phone=new_phone, phone_changed_at=phone_changed_at, intent=intent, joined_at=joined_at,
        has_crm=has_crm, crm_duplicate=crm_duplicate, has_newsletter=has_newsletter, has_loyalty=has_loyalty,
        erased=erased,
    )


# --- how systems write things down ------------------------------------------------------------------

def format_phones(digits: np.ndarray, style: np.ndarray) -> pd.Series:
    """Dutch mobile numbers in the formats people and systems type: 06-…, +31 6 …, 0031…, 06…"""
    d = pd.Series(digits).astype(str).str.zfill(8)
    options = [
        "06" + d,
        "06-" + d,
        "+31 6 " + d.str[:4] + " " + d.str[4:],
        "00316" + d,
        "+316" + d,
        "06 " + d.str[:2] + " " + d.str[2:4] + " " + d.str[4:6] + " " + d.str[6:],
    ]
    out = options[0].to_numpy(dtype=object).copy()
    for k in range(1, len(options)):
        out = np.where(style == k, options[k].to_numpy(dtype=object), out)
    return pd.Series(out)


def typo(values: pd.Series, rng: np.random.Generator, share: float) -> pd.Series:
    """Introduce one keyboard slip (swap, drop or double a letter) in ``share`` of the values."""
    out = values.to_numpy(dtype=object).copy()
    hit = np.flatnonzero((rng.random(len(out)) < share) & pd.notna(values).to_numpy())
    kinds = rng.integers(0, 3, len(hit))
    where = rng.random(len(hit))
    for i, kind, w in zip(hit, kinds, where, strict=True):
        s = out[i]
        if len(s) < 4:
            continue
        p = 1 + int(w * (len(s) - 2))
        if kind == 0:
            s = s[:p] + s[p + 1] + s[p] + s[p + 2:]
        elif kind == 1:
            s = s[:p] + s[p + 1:]
        else:
            s = s[:p] + s[p] + s[p:]
        out[i] = s
    return pd.Series(out)


def messy_email(emails: pd.Series, rng: np.random.Generator) -> pd.Series:
    """Some exports keep the case and stray spaces a person typed."""
    r = rng.random(len(emails))
    upper = emails.str.split("@").str[0].str.title() + "@" + emails.str.split("@").str[1]
    out = np.where(r < 0.05, upper.to_numpy(dtype=object), emails.to_numpy(dtype=object))
    out = np.where((r >= 0.05) & (r < 0.07), " " + pd.Series(out) + " ", out)
    return pd.Series(out)


def local_time(seconds: np.ndarray, fmt: str, tz: str = "Europe/Amsterdam") -> pd.Series:
    """Epoch seconds (UTC) written as naive local wall-clock text, like most exports do."""
    ts = pd.to_datetime(pd.Series(seconds), unit="s", utc=True).dt.tz_convert(tz)
    return ts.dt.strftime(fmt)


def utc_time(seconds: np.ndarray, fmt: str) -> pd.Series:
    return pd.to_datetime(pd.Series(seconds), unit="s").dt.strftime(fmt)
