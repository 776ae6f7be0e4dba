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
