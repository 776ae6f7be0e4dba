"""Offline PII data: presidio-evaluator's templates and name lists filled by Faker, split by template.

``generate`` writes ``train.json`` and ``validation.json`` in Presidio's JSON format
(``full_text``, ``spans[{entity_type, entity_value, start_position, end_position}]``,
``template_id``). The validation file holds only templates the training file does not:

* the rows of ``../shared/data/pii/generated_3000.json`` whose presidio template id is a
  validation template (``template_id % 5 == 2``, 42 of the 210 templates), and
* sentences from :data:`pointsman_lab.pii_templates.VALIDATION`.

The training file holds the other rows of ``generated_3000.json``, more sentences from the other
presidio templates, and sentences from :data:`pointsman_lab.pii_templates.TRAIN`. The presidio
templates and name lists come from the presidio-evaluator wheel (MIT), read in place:
``pip download --no-deps presidio-evaluator==0.3.2`` fetches it; nothing of it is installed.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pointsman_lab import pii_templates

#: presidio-evaluator's placeholder -> entity type (its ENTITY_TYPE_MAPPING, plus ``time``).
PLACEHOLDER_TYPES = {
    "person": "PERSON",
    "name": "PERSON",
    "name_female": "PERSON",
    "name_male": "PERSON",
    "first_name": "PERSON",
    "first_name_male": "PERSON",
    "first_name_female": "PERSON",
    "first_name_nonbinary": "PERSON",
    "last_name": "PERSON",
    "last_name_male": "PERSON",
    "last_name_female": "PERSON",
    "ip_address": "IP_ADDRESS",
    "us_driver_license": "US_DRIVER_LICENSE",
    "organization": "ORGANIZATION",
    "address": "STREET_ADDRESS",
    "street_name": "STREET_ADDRESS",
    "building_number": "STREET_ADDRESS",
    "secondary_address": "STREET_ADDRESS",
    "postcode": "STREET_ADDRESS",
    "zipcode": "ZIP_CODE",
    "country": "GPE",
    "state": "GPE",
    "city": "GPE",
    "state_abbr": "GPE",
    "credit_card_number": "CREDIT_CARD",
    "iban": "IBAN_CODE",
    "phone_number": "PHONE_NUMBER",
    "url": "DOMAIN_NAME",
    "ssn": "US_SSN",
    "email": "EMAIL_ADDRESS",
    "date_time": "DATE_TIME",
    "date_of_birth": "DATE_TIME",
    "day_of_week": "DATE_TIME",
    "year": "DATE_TIME",
    "time": "DATE_TIME",
    "prefix_male": "TITLE",
    "prefix_female": "TITLE",
    "prefix": "TITLE",
    "job": "TITLE",
    "nationality": "NRP",
    "nation_woman": "NRP",
    "nation_man": "NRP",
    "nation_plural": "NRP",
    "age": "AGE",
}

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_LOCALES = (
    "en_US",
    "en_GB",
    "de_DE",
    "fr_FR",
    "it_IT",
    "es_ES",
    "nl_NL",
    "pt_BR",
    "pl_PL",
    "da_DK",
)


#: Template ids (presidio's, 0-based line numbers) kept for validation.
def is_validation_template(template_id: int) -> bool:
    return template_id % 5 == 2


@dataclass
class PresidioRaw:
    """What the presidio-evaluator wheel holds: templates and its fake-identity lists."""

    templates: list[str]
    people: list[dict[str, str]]
    companies: list[str]
    nationalities: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_wheel(cls, wheel: Path) -> PresidioRaw:
        base = "presidio_evaluator/data_generator/raw_data/"
        with zipfile.ZipFile(wheel) as z:

            def text(name: str) -> str:
                return z.read(base + name).decode("utf-8-sig")

            templates = text("templates.txt").splitlines()
            people = list(csv.DictReader(io.StringIO(text("FakeNameGenerator.com_3000.csv"))))
            companies = [
                r["organization"]
                for r in csv.DictReader(io.StringIO(text("companies_and_organizations.csv")))
            ]
            nats = list(csv.DictReader(io.StringIO(text("nationalities.csv"))))
        return cls(templates, people, companies, nats)


class Filler:
    """Values for each placeholder, from presidio's lists and Faker in several locales."""

    def __init__(self, raw: PresidioRaw, seed: int) -> None:
        from faker import Faker  # type: ignore[import-not-found, unused-ignore]

        self.rng = random.Random(seed)
        # Some Faker providers draw from the module-level generator: seed it too.
        random.seed(seed)
        self.raw = raw
        self.fakers = [Faker(loc) for loc in _LOCALES]
        self.us = Faker("en_US")
        for i, f in enumerate([*self.fakers, self.us]):
            f.seed_instance(seed + i)

    def _f(self) -> Any:
        return self.rng.choice(self.fakers)

    def _p(self) -> dict[str, str]:
        return self.rng.choice(self.raw.people)

    def _date(self) -> str:
        d = datetime(1950, 1, 1) + timedelta(seconds=self.rng.randrange(0, 80 * 365 * 86400))
        fmts = (
            "%Y-%m-%d",
            "%B %d, %Y",
            "%d %B %Y",
            "%m/%d/%Y",
            "%d.%m.%Y",
            "%b %d",
            "%d %b %Y",
            "%A, %B %d",
            "%Y-%m-%d %H:%M:%S",
            "%B %Y",
            "%d/%m/%y",
            "%A %d %B",
        )
        s = d.strftime(self.rng.choice(fmts))
        if self.rng.random() < 0.1:  # Faker's date_time(), as presidio's templates use it
            s = str(d.replace(microsecond=self.rng.randrange(0, 10**6)))
        elif self.rng.random() < 0.1:
            s = self.rng.choice(("next ", "last ", "this ")) + d.strftime("%A")
        return s

    def _time(self) -> str:
        h, m = self.rng.randrange(0, 24), self.rng.choice((0, 15, 30, 45, 5, 20))
        r = self.rng.random()
        if r < 0.4:
            return f"{h:02d}:{m:02d}"
        if r < 0.8:
            minutes = f":{m:02d}" if m else ""
            return f"{h % 12 or 12}{minutes} {'pm' if h >= 12 else 'am'}"
        return self.rng.choice(("noon", "midnight", f"{h % 12 or 12} o'clock"))

    def _secondary(self) -> str:
        n = self.rng.randrange(1, 999)
        return self.rng.choice(
            (
                f"Apt. {n}",
                f"Suite {n}",
                f"Unit {n}",
                f"Flat {n}",
                f"Apt {n}",
                f"#{n}",
                f"Floor {n % 30 + 1}",
            )
        )

    def _address(self) -> str:
        r = self.rng.random()
        if r < 0.5:
            p = self._p()
            parts = [
                p["StreetAddress"],
                p["City"],
                f"{p['State']} {p['ZipCode']}",
                p["CountryFull"],
            ]
            parts = parts[: self.rng.randrange(2, 5)]
            return self.rng.choice((", ", " ", "\\n")).join(parts)
        f = self._f()
        sep = self.rng.choice((", ", " ", "\\n"))
        return str(f.address()).replace("\n", sep)

    def value(self, key: str) -> str:
        rng, p = self.rng, self._p()
        gens: dict[str, Callable[[], str]] = {
            "person": lambda: rng.choice(
                (
                    f"{p['GivenName']} {p['Surname']}",
                    f"{p['GivenName']} {p['MiddleInitial']}. {p['Surname']}",
                    str(self._f().name()).split(" ", 1)[-1]
                    if rng.random() < 0.3
                    else f"{self._f().first_name()} {self._f().last_name()}",
                )
            ),
            "first_name": lambda: rng.choice((p["GivenName"], str(self._f().first_name()))),
            "last_name": lambda: rng.choice((p["Surname"], str(self._f().last_name()))),
            "prefix": lambda: rng.choice((p["Title"], "Dr.", "Mr.", "Ms.", "Mrs.", "Prof.")),
            "address": self._address,
            "street_name": lambda: rng.choice(
                (p["StreetAddress"], str(self._f().street_name()), str(self._f().street_address()))
            ),
            "building_number": lambda: str(rng.randrange(1, 10 ** rng.randrange(1, 5))),
            "secondary_address": self._secondary,
            "postcode": lambda: rng.choice((p["ZipCode"], str(self._f().postcode()))),
            "zipcode": lambda: rng.choice((p["ZipCode"], str(self.us.zipcode()))),
            "city": lambda: rng.choice((p["City"], str(self._f().city()))),
            "country": lambda: rng.choice((p["CountryFull"], str(self.us.country()))),
            "state": lambda: rng.choice((p["StateFull"], str(self.us.state()))),
            "state_abbr": lambda: rng.choice((p["State"], str(self.us.state_abbr()))),
            "organization": lambda: rng.choice(
                (rng.choice(self.raw.companies), p["Company"], str(self._f().company()))
            ),
            "date_time": self._date,
            "date_of_birth": lambda: rng.choice((p["Birthday"], self._date())),
            "day_of_week": lambda: datetime(2024, 1, rng.randrange(1, 8)).strftime("%A"),
            "year": lambda: str(rng.randrange(1900, 2030)),
            "time": self._time,
            "credit_card_number": lambda: str(self.us.credit_card_number()),
            "iban": lambda: str(self._f().iban()),
            "phone_number": lambda: str(self._f().phone_number()),
            "url": lambda: str(self.us.url()),
            "ssn": lambda: str(self.us.ssn()),
            "email": lambda: str(self._f().email()),
            "ip_address": lambda: str(self.us.ipv4()),
            "us_driver_license": lambda: f"{rng.choice('ABCDEFGH')}{rng.randrange(10**6, 10**7)}",
            "age": lambda: str(rng.randrange(1, 99)),
            "job": lambda: str(self.us.job()),
            "nationality": lambda: (
                rng.choice(self.raw.nationalities)["nationality"].title()
                if self.raw.nationalities
                else "French"
            ),
        }
        base = re.sub(r"_(male|female|nonbinary)$", "", key)
        if base in ("name",):
            base = "person"
        if base.startswith("nation"):
            base = "nationality"
        if base.startswith("prefix"):
            base = "prefix"
        return gens[base]() if base in gens else gens["person"]()


def fill(template: str, filler: Filler, template_id: int) -> dict[str, Any]:
    """One sentence from ``template``: each ``{{placeholder}}`` filled, with its gold span."""
    out: list[str] = []
    spans: list[dict[str, Any]] = []
    pos = 0
    length = 0
    for m in _PLACEHOLDER.finditer(template):
        lit = template[pos : m.start()]
        out.append(lit)
        length += len(lit)
        key = m.group(1)
        value = filler.value(key).strip()
        etype = PLACEHOLDER_TYPES.get(key, "PERSON")
        spans.append(
            {
                "entity_type": etype,
                "entity_value": value,
                "start_position": length,
                "end_position": length + len(value),
            }
        )
        out.append(value)
        length += len(value)
        pos = m.end()
    out.append(template[pos:])
    return {"full_text": "".join(out), "spans": spans, "template_id": template_id}


def generate(
    shared: Path,
    wheel: Path,
    out: Path,
    seed: int = 13,
    n_presidio: int = 6000,
    n_own: int = 3000,
    n_composed: int = 12000,
    n_refill: int = 0,
) -> dict[str, int]:
    """Write ``out/train.json`` and ``out/validation.json``; returns their sizes.

    With ``n_refill``, also ``out/refill.json``: that many new sentences of the validation
    templates (three in four from presidio's, the rest ours) filled with other values (seed
    ``seed + 2000``), a second held-out set that no figure was chosen on. The other two files do
    not depend on it."""
    raw = PresidioRaw.from_wheel(wheel)
    rows = json.loads(shared.read_text(encoding="utf-8"))
    train = [r for r in rows if not is_validation_template(int(r["template_id"]))]
    val = [r for r in rows if is_validation_template(int(r["template_id"]))]
    # Validation first: its sentences do not depend on how much training data is made.
    vfiller = Filler(raw, seed + 1000)
    for _ in range(20 * len(pii_templates.VALIDATION)):
        k = vfiller.rng.randrange(len(pii_templates.VALIDATION))
        val.append(fill(pii_templates.VALIDATION[k], vfiller, 2000 + k))
    filler = Filler(raw, seed)
    usable = [
        (i, t) for i, t in enumerate(raw.templates) if t.strip() and not is_validation_template(i)
    ]
    for _ in range(n_presidio):
        i, t = filler.rng.choice(usable)
        train.append(fill(t, filler, i))
    for _ in range(n_own):
        k = filler.rng.randrange(len(pii_templates.TRAIN))
        train.append(fill(pii_templates.TRAIN[k], filler, 1000 + k))
    for _ in range(n_composed):
        train.append(fill(pii_templates.compose(filler.rng), filler, 3000))
    out.mkdir(parents=True, exist_ok=True)
    files = [("train", train), ("validation", val)]
    if n_refill:
        rfiller = Filler(raw, seed + 2000)
        held = [
            (i, t) for i, t in enumerate(raw.templates) if t.strip() and is_validation_template(i)
        ]
        refill = []
        for n in range(n_refill):
            if n % 4 < 3:
                i, t = rfiller.rng.choice(held)
                refill.append(fill(t, rfiller, i))
            else:
                k = rfiller.rng.randrange(len(pii_templates.VALIDATION))
                refill.append(fill(pii_templates.VALIDATION[k], rfiller, 2000 + k))
        files.append(("refill", refill))
    for name, data in files:
        (out / f"{name}.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return {name: len(data) for name, data in files}
