"""PII recognisers by pattern and checksum: always on, no model, microseconds per prompt.

Each recogniser finds candidates with a regular expression and keeps only those that pass the
type's own check (Luhn for card numbers, ISO 13616 mod-97 for IBANs, the SSA's rules for US SSNs,
:mod:`ipaddress` for IPs), which keeps false positives on numbers in ordinary questions low.
Entity type names follow Microsoft Presidio's (``CREDIT_CARD``, ``IBAN_CODE``, ...), the names used
by the PII data in ../shared/data and by the vLLM Semantic Router's PII models, so per-model
policies can list the same names whichever detector found the entity.

Dates in ISO 8601 form have a recogniser of their own; names of people, places (street addresses
and their fragments too), organisations and other dates need a model: the token head on the
shared encoder finds :data:`MODEL_TYPES` (``piihead.py``), or a configured token-classification
model (``classifier.pii.model``) its own labels.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

EMAIL = "EMAIL_ADDRESS"
PHONE = "PHONE_NUMBER"
CARD = "CREDIT_CARD"
IBAN = "IBAN_CODE"
SSN = "US_SSN"
IP = "IP_ADDRESS"
ADDRESS = "STREET_ADDRESS"
URL = "DOMAIN_NAME"

#: What the shipped token head finds (pointsman_classifier.piihead). LOCATION covers cities,
#: regions, countries, street addresses and their fragments ("Apt. 595", a bare postcode); the
#: address recogniser below reports what it matches as STREET_ADDRESS.
PERSON = "PERSON"
LOCATION = "LOCATION"
ORGANIZATION = "ORGANIZATION"
DATE_TIME = "DATE_TIME"
MODEL_TYPES = (PERSON, LOCATION, ORGANIZATION, DATE_TIME)


@dataclass(frozen=True, order=True)
class Finding:
    """One entity found in the text: character offsets ``[start, end)``."""

    start: int
    end: int
    entity_type: str
    score: float = 1.0
    source: str = "pattern"


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    s = candidate.replace(" ", "").upper()
    if not (15 <= len(s) <= 34) or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    moved = s[4:] + s[:4]
    try:
        number = int("".join(str(int(c, 36)) for c in moved))
    except ValueError:
        return False
    return number % 97 == 1


def ssn_ok(candidate: str) -> bool:
    d = re.sub(r"\D", "", candidate)
    if len(d) != 9:
        return False
    area, group, serial = d[:3], d[3:5], d[5:]
    if area in {"000", "666"} or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return len(set(d)) > 1


def ip_ok(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


# A match starts only where a run of local-part characters starts: tried from inside a long run
# without "@" the search was quadratic (60,000 characters of "12-": 4.6 s).
_EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,24}\b"
)
# Not after "+": "+55 16 6706-5645" is a phone number whose digits may pass Luhn by chance.
_CARD_RE = re.compile(r"(?<![\d\-+])(?:\d[ \-]?){11,18}\d(?![\d\-])")
_IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_SSN_RE = re.compile(r"(?<![\d\-])\d{3}([\- ])\d{2}\1\d{4}(?![\d\-])")
_SSN_WORD_RE = re.compile(r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\D{0,20}(\d{9})\b")
_IPV4_RE = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6_RE = re.compile(
    r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{1,4}:){2,7}(?::|(?::[0-9A-Fa-f]{1,4}){1,6}|[0-9A-Fa-f]{1,4})"
    r"(?![0-9A-Fa-f:])|::(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{1,4}\b"
)
_PHONE_RE = re.compile(
    r"(?<![\w+\-])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{1,5}\)[ .\-]?)?\d{2,5}(?:[ .\-]\d{2,8}){1,4}"
    r"(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?![\d\-]\d)(?!\d)(?![^\W\d_])"
    # "+39 0432679072", "+49(0)7197397419": a country code, the national trunk "(0)", one run
    r"|(?<![\w+\-])\+\d{1,3}[ .\-]?(?:\(0\)[ .\-]?)?\d{6,12}(?!\w)"
    r"|(?<![\w+\-])\+\d{7,14}(?!\w)"
    # "(05795) 761703", "(017)-1186106"
    r"|(?<![\w+\-])\(\d{2,5}\)[ .\-]?\d{5,9}(?!\w)"
    # A bare run of digits: taken only with a phone word nearby (see _phones).
    r"|(?<![\w+\-.])\d{7,15}(?!\w)(?![.\-]\d)"
)
#: Words before a number that make it a phone number, a few words away at most (Presidio's
#: context words): "phone 0254699008", "Fax: +48 512 068 320", "call me on 92 34 70".
_PHONE_WORD_RE = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|cell|cellphone|call|fax|sms|text|whatsapp|dial)\b"
)
#: How many characters before a number a phone word counts.
_PHONE_BEFORE = 40
#: A label right after a number, as signature blocks write it: "0604482681 mobile",
#: "01144960753-Office".
_PHONE_LABEL_RE = re.compile(
    r"[ \t\-:(]{0,3}(?i:phone|tel|mobile|cell|fax|office|work|home|desk)\b"
)
#: After a number: an ordinal or a capitalised word ("30591 1719 Kamp St", "915 1090 43rd
#: Avenue", "39 5465 Højslev") make it a house number and a street or a postcode and a town.
_STREET_AFTER_RE = re.compile(r"\s+(?:\d{1,4}(?:st|nd|rd|th)\b|([^\W\d_])[^\W\d_])")
#: Brazil's CEP postcode ("31918-254"): a five-three split no phone numbering plan uses.
_CEP_RE = re.compile(r"\d{5}-\d{3}")
#: An ISO 8601 date, with a time of day when it has one ("1998-09-02 03:32:32.683505",
#: "2024-10-20T07:30Z"): the token head cut the microseconds' form into pieces.
_ISO_DATE_RE = re.compile(
    r"(?<![\w\-])\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
    r"(?:[ T](?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d{1,6})?)?(?:Z|[+\-]\d{2}:?\d{2})?)?"
    r"(?![\w\-])"
)
_URL_RE = re.compile(r"\bhttps?://[^\s/$.?#][^\s]*", re.IGNORECASE)

_SUFFIXES = (
    "street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|"
    "square|sq|terrace|parkway|pkwy|highway|hwy|circle|cir|crescent|close|alley|trail|row|"
    "plaza|heights|gardens|grove|hill|park|walk|mews|loop|pike|run|path|ridge|view|port|"
    "crossing|point|cove|estates|manor|green|glen|creek|valley|harbor|station|ville"
)
_PREFIXES = (
    "via|viale|piazza|corso|rue|avenue|boulevard|calle|avenida|rua|travessa|plaza|camino|"
    "ulica|ul\\.|strada|carrer|chemin|allee|allée|straße|strasse|pasaje|largo"
)
_CAP = r"[A-ZÀ-Ý][\w'\u2019.\-]*"
_ADDRESS_RES = (
    # 221B Baker Street / 3240 Meadow Drive, Apt. 5
    re.compile(
        rf"\b\d{{1,6}}[A-Za-z]?(?:\s+{_CAP}){{1,4}}\s+(?i:{_SUFFIXES})\b\.?"
        r"(?:,?\s+(?:Apt\.?|Suite|Unit|#)\s*\w+)?"
    ),
    # Via Pasquale Scura 127 / Rua Arapiraca 1943
    re.compile(
        rf"\b(?i:{_PREFIXES})(?:\s+(?:de|da|do|del|della|di|la|le|du|des|dos)?\s*{_CAP}){{1,4}}"
        r",?\s+\d{1,5}[A-Za-z]?\b"
    ),
    # Hauptstraße 5 / Strojírenská 1006 / Kerkweg 12
    re.compile(
        r"\b[A-ZÀ-Ý][\wÀ-ž]*(?:straße|strasse|gasse|weg|platz|allee|laan|gade|vej|"
        r"gatan|vägen|ská|ova|ego)\s+\d{1,5}[A-Za-z]?\b"
    ),
)


def _emails(text: str) -> Iterable[Finding]:
    for m in _EMAIL_RE.finditer(text):
        yield Finding(m.start(), m.end(), EMAIL)


def _cards(text: str) -> Iterable[Finding]:
    for m in _CARD_RE.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 12 <= len(digits) <= 19 and luhn_ok(digits) and len(set(digits)) > 1:
            yield Finding(m.start(), m.end(), CARD)


def _ibans(text: str) -> Iterable[Finding]:
    for m in _IBAN_RE.finditer(text):
        # Trim trailing characters until the checksum passes (the regex is greedy).
        s = m.group()
        while len(s.replace(" ", "")) >= 15:
            if iban_ok(s):
                yield Finding(m.start(), m.start() + len(s), IBAN)
                break
            s = s[:-1].rstrip()


def _ssns(text: str) -> Iterable[Finding]:
    for m in _SSN_RE.finditer(text):
        if ssn_ok(m.group()):
            yield Finding(m.start(), m.end(), SSN)
    for m in _SSN_WORD_RE.finditer(text):
        if ssn_ok(m.group(1)):
            yield Finding(m.start(1), m.end(1), SSN)


def _ips(text: str) -> Iterable[Finding]:
    for m in _IPV4_RE.finditer(text):
        if ip_ok(m.group()):
            yield Finding(m.start(), m.end(), IP)
    for m in _IPV6_RE.finditer(text):
        if ip_ok(m.group()):
            yield Finding(m.start(), m.end(), IP)


def _phone_context(text: str, start: int, end: int) -> bool:
    return (
        _PHONE_WORD_RE.search(text, max(0, start - _PHONE_BEFORE), start) is not None
        or _PHONE_LABEL_RE.match(text, end) is not None
    )


def _street_after(text: str, end: int) -> bool:
    m = _STREET_AFTER_RE.match(text, end)
    return m is not None and (m.group(1) is None or m.group(1).isupper())


def _phones(text: str) -> Iterable[Finding]:
    for m in _PHONE_RE.finditer(text):
        s = m.group()
        digits = re.sub(r"\D", "", s.split("x")[0].split("ext")[0])
        if not 6 <= len(digits) <= 15:
            continue
        # A phone word a few words away (not anywhere in the text: a signature block or a
        # form holds phone numbers, postcodes and house numbers side by side).
        context = _phone_context(text, m.start(), m.end())
        prefixed = s.startswith(("+", "("))
        if len(digits) < 7 and not context:
            continue  # six digits: "66 28 45 office" only with its label
        if digits == s and not context:
            continue  # a bare digit run: an order number, an amount, an id
        # Plain digit runs are ambiguous (years, amounts): take them only with a separator
        # structure typical of phone numbers, a '+' or '(' prefix, or a phone word nearby.
        structured = prefixed or bool(re.search(r"\d[ .\-]\d", s))
        if not structured and not context:
            continue
        if not context and not prefixed and re.fullmatch(r"[\d ]+", s) and len(digits) < 9:
            continue  # "7015 184": a house number and a postcode, not a phone
        if not context and not prefixed and _street_after(text, m.end()):
            continue  # "27102 3489 Granville St": numbers of an address
        if re.fullmatch(r"\d{3}-\d{2}-\d{4}", s) or _CEP_RE.fullmatch(s):
            continue  # SSN-shaped (the SSN recogniser's call), or a postcode
        groups = re.split(r"[ .\-]", s)
        if len(groups) == 2 and "." in s:
            continue  # a decimal number
        if len(groups) == 2 and not context and len(digits) < 8 and not prefixed:
            continue  # "6250-120": a postcode or a range
        if re.fullmatch(r"\d{1,2}[./\-]\d{1,2}[./\-]\d{2,4}", s) or re.match(
            r"\d{4}-\d{2}-\d{2}", s
        ):  # a date
            continue
        yield Finding(m.start(), m.end(), PHONE, score=0.8 if not context else 0.9)


def _addresses(text: str) -> Iterable[Finding]:
    for rx in _ADDRESS_RES:
        for m in rx.finditer(text):
            yield Finding(m.start(), m.end(), ADDRESS, score=0.6)


def _dates(text: str) -> Iterable[Finding]:
    for m in _ISO_DATE_RE.finditer(text):
        yield Finding(m.start(), m.end(), DATE_TIME, score=0.9)


def _urls(text: str) -> Iterable[Finding]:
    for m in _URL_RE.finditer(text):
        yield Finding(m.start(), m.end(), URL, score=0.9)


#: Recogniser per entity type, in priority order: when two findings overlap the earlier
#: type wins (a card number is not also a phone number).
RECOGNISERS: dict[str, Callable[[str], Iterable[Finding]]] = {
    EMAIL: _emails,
    URL: _urls,
    IBAN: _ibans,
    CARD: _cards,
    SSN: _ssns,
    IP: _ips,
    DATE_TIME: _dates,
    PHONE: _phones,
    ADDRESS: _addresses,
}

#: The entity types the pattern set can find.
PATTERN_TYPES = frozenset(RECOGNISERS)
#: Every type the shipped detectors report: the names ``pii_allowed`` lists may use.
KNOWN_TYPES = PATTERN_TYPES | frozenset(MODEL_TYPES)


def find(text: str, types: Iterable[str] | None = None) -> list[Finding]:
    """All non-overlapping findings in ``text`` (only ``types`` when given), by position."""
    wanted = PATTERN_TYPES if types is None else frozenset(types) & PATTERN_TYPES
    # Escaped newlines ("\\n" as two characters, common in JSON-ish prompts) would glue words
    # together; blank them out without moving any offset.
    text = text.replace("\\n", "  ").replace("\\t", "  ")
    taken: list[Finding] = []
    for etype, recognise in RECOGNISERS.items():
        if etype not in wanted:
            continue
        for f in recognise(text):
            if not any(f.start < t.end and t.start < f.end for t in taken):
                taken.append(f)
    return sorted(taken)


def merge(
    a: list[Finding], b: list[Finding], prefer: frozenset[str] = frozenset()
) -> list[Finding]:
    """Findings of two detectors; on overlap the first list (the patterns, checked) wins, except
    its findings of a type in ``prefer``, which give way to an overlapping finding of ``b``."""
    out = [
        f
        for f in a
        if f.entity_type not in prefer or not any(f.start < g.end and g.start < f.end for g in b)
    ]
    for f in b:
        if not any(f.start < t.end and t.start < f.end for t in out):
            out.append(f)
    return sorted(out)
