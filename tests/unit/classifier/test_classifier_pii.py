"""Pattern-and-checksum PII recognisers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointsman_classifier import pii


def types(text: str) -> set[str]:
    return {f.entity_type for f in pii.find(text)}


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("mail me at jane.doe+x@example.co.uk please", {pii.EMAIL}),
        ("my card is 4111 1111 1111 1111, exp 12/29", {pii.CARD}),
        ("card 4111-1111-1111-1111", {pii.CARD}),
        ("card 4111 1111 1111 1112", set()),  # Luhn fails
        ("IBAN GB82 WEST 1234 5698 7654 32 for the transfer", {pii.IBAN}),
        ("IBAN GB82WEST12345698765432", {pii.IBAN}),
        ("IBAN GB83WEST12345698765432", set()),  # mod-97 fails
        ("my SSN is 123-45-6789", {pii.SSN}),
        ("code 000-12-3456 is not an SSN", set()),
        ("server at 192.168.10.20 is down", {pii.IP}),
        ("version 1.2.3.4000 is out", set()),
        ("ipv6 2001:db8:85a3::8a2e:370:7334 works", {pii.IP}),
        ("call me on +1 415-555-0132", {pii.PHONE}),
        ("phone: (555) 123-4567", {pii.PHONE}),
        ("I live at 221 Baker Street, London", {pii.ADDRESS}),
        ("ship to Via Pasquale Scura 127", {pii.ADDRESS}),
        ("see https://example.com/x for details", {pii.URL}),
        ("What is the derivative of x^2 + 3x over 1024 samples in 2019?", set()),
        ("The reaction releases 6.02 x 10^23 molecules at 300 K", set()),
    ],
)
def test_find(text: str, want: set[str]) -> None:
    assert types(text) == want


def test_offsets_survive_escaped_newlines() -> None:
    text = "Office\\n781-618-4959-Fax"
    [f] = pii.find(text)
    assert f.entity_type == pii.PHONE
    assert text[f.start : f.end] == "781-618-4959"


def test_only_requested_types() -> None:
    text = "mail a@b.io, card 4111111111111111"
    assert {f.entity_type for f in pii.find(text, [pii.CARD])} == {pii.CARD}


def test_merge_keeps_pattern_findings_on_overlap() -> None:
    a = [pii.Finding(0, 10, pii.CARD)]
    b = [pii.Finding(5, 12, "PERSON", 0.9, "model"), pii.Finding(20, 25, "PERSON", 0.9, "model")]
    assert [f.entity_type for f in pii.merge(a, b)] == [pii.CARD, "PERSON"]


def _luhn_digit(body: str) -> str:
    for d in "0123456789":
        if pii.luhn_ok(body + d):
            return d
    raise AssertionError("no check digit")


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="0123456789", min_size=12, max_size=18))
def test_luhn_check_digit_is_unique(body: str) -> None:
    good = _luhn_digit(body)
    assert sum(pii.luhn_ok(body + d) for d in "0123456789") == 1
    assert pii.luhn_ok(body + good)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300))
def test_find_never_crashes_and_spans_are_in_bounds(text: str) -> None:
    for f in pii.find(text):
        assert 0 <= f.start < f.end <= len(text)


def _spans(text: str, etype: str) -> list[str]:
    return [text[f.start : f.end] for f in pii.find(text) if f.entity_type == etype]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # A country code and one run of digits, with or without the national trunk "(0)".
        ("phone +39 0432679072.", ["+39 0432679072"]),
        ("+49(0)7197397419 office", ["+49(0)7197397419"]),
        ("+49(0) 158029002 mobile", ["+49(0) 158029002"]),
        ("(05795) 761703 fax", ["(05795) 761703"]),
        ("(017)-1186106", ["(017)-1186106"]),
        # A bare run of digits with a phone word before it or a label right after it.
        ("Update the record: phone 0254699008.", ["0254699008"]),
        ("You can call 3904283311", ["3904283311"]),
        ("01144960753-Office", ["01144960753"]),
        ("Mobile: 0604482681", ["0604482681"]),
        ("66 28 45 office", ["66 28 45"]),
        # Not phones: a bare digit run without context, a CEP postcode, numbers of an address.
        ("order 0254699008 shipped", []),
        ("Zip 67033-243.", []),
        ("Unit 930, Bælum 68744-375, phone +45 48600181", ["+45 48600181"]),
        ("Our office moved at 9040 3911 Fourth Avenue", []),
        ("Book a hotel at 915 1090 43rd Avenue", []),
        ("Nordlandsvej 39 5465 Højslev, phone 6675 9498.", ["6675 9498"]),
    ],
)
def test_phone_formats_and_context(text: str, want: list[str]) -> None:
    assert _spans(text, pii.PHONE) == want


def test_phone_with_plus_is_not_a_card() -> None:
    # 551667065645 passes Luhn; after "+" it is a phone number's digits, not a card.
    text = "phone +55 16 6706-5645."
    assert [f.entity_type for f in pii.find(text)] == [pii.PHONE]


@pytest.mark.parametrize(
    "text",
    [
        "12-" * 20_000,
        "1" * 50_000,
        "1." * 30_000,
        "a@" + "a." * 30_000,
        ("a." * 50 + "@") * 1_000,
        "phone " + "12 " * 20_000,
        "+1 " * 20_000,
        "(12)" * 20_000,
        "9 Aa " * 20_000,
    ],
)
def test_find_is_linear_on_adversarial_text(text: str) -> None:
    # Quadratic backtracking shows as a step count, not only as time: the same search over
    # twice the text may not take much more than twice the regex steps. Measured as the
    # recognisers' own work per character, against a short prefix of the same text.
    import time

    def cost(t: str) -> float:
        start = time.process_time()
        pii.find(t)
        return time.process_time() - start

    short = text[: len(text) // 8]
    small = min(cost(short) for _ in range(3))
    large = min(cost(text) for _ in range(2))  # the better of two: a stall once is not a trend
    assert large < 8 * 4 * max(small, 1e-3)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("When: 1998-09-02 03:32:32.683505\\nWhere: Oslo", ["1998-09-02 03:32:32.683505"]),
        ("due 2024-10-20, or 2024-10-20T07:30Z at the latest", ["2024-10-20", "2024-10-20T07:30Z"]),
        ("ticket 2024-13-45 and v1-2024-10-20 are not dates", []),
    ],
)
def test_iso_dates(text: str, want: list[str]) -> None:
    assert _spans(text, pii.DATE_TIME) == want
