"""Detectors and the redacted previews the audit stores."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.core.classify import luhn_valid, scan
from tether.core.redact import MAX_STRING, preview

KEY = b"k" * 32


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("token ghp_" + "a" * 36, "github_token"),
        ("key AKIAIOSFODNN7EXAMPLE here", "aws_access_key"),
        ("sk-ant-api03-" + "x" * 40, "anthropic_key"),
        ("sk-proj-" + "y" * 40, "openai_key"),
        ("sk_live_" + "z" * 24, "stripe_key"),
        ("xoxb-123456789012-abcdefghij", "slack_token"),
        ("AIza" + "B" * 35, "google_api_key"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlX2hlcmU", "jwt"),
        ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345", "bearer_token"),
        ("postgres://admin:s3cret@db.internal/prod", "url_password"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----", "private_key"),
        ("mail bob.smith+x@mail.example.co.uk now", "email"),
        ("card 4111-1111-1111-1111 exp", "payment_card"),
        ("IBAN DE89 3704 0044 0532 0130 00", "iban"),
        ("to GB82WEST12345698765432 now", "iban"),
        ("SSN 123-45-6789", "us_ssn"),
        ("DNI 12345678Z", "es_dni"),
        ("from 192.168.10.20 ok", "ipv4"),
        ("call +44 20 7946 0958", "phone"),
        ("call (415) 555-0100", "phone"),
        ("key=Xk9fQ2pLm7RtY3vB8nW1zA5cQ", "high_entropy"),
    ],
)
def test_detectors_find_each_kind(text: str, kind: str) -> None:
    assert kind in [f.kind for f in scan(text)]


def test_card_numbers_must_pass_luhn() -> None:
    assert not [f for f in scan("order 4111 1111 1111 1112") if f.kind == "payment_card"]


def luhn_complete(digits: list[int]) -> str:
    for check in range(10):
        number = "".join(map(str, digits)) + str(check)
        if luhn_valid(number):
            return number
    raise AssertionError("unreachable")


@given(st.lists(st.integers(0, 9), min_size=12, max_size=18).map(luhn_complete))
def test_every_luhn_valid_number_is_found(number: str) -> None:
    assert [f.kind for f in scan(f"pay with {number} today")] == ["payment_card"]


@given(st.lists(st.integers(0, 9), min_size=13, max_size=19).map(lambda d: "".join(map(str, d))))
def test_luhn_invalid_numbers_are_never_cards(number: str) -> None:
    if not luhn_valid(number):
        assert not [f for f in scan(number) if f.kind == "payment_card"]


def test_preview_masks_keeps_domains_and_fingerprints_consistently() -> None:
    first = preview({"to": "bob@acme.example", "api_key": "hunter2"}, KEY)
    second = preview({"to": "bob@acme.example", "api_key": "hunter2"}, KEY)
    assert first == second
    assert first.value["to"].endswith("]@acme.example") and "bob" not in str(first.value)
    assert str(first.value["api_key"]).startswith("[secret:") and first.labels == {"pii", "secret"}
    assert preview({"to": "bob@acme.example"}, b"other key" * 4).fingerprint != first.fingerprint


def test_a_secret_cut_by_the_preview_is_not_half_shown() -> None:
    token = "ghp_" + "Q" * 36
    text = "x" * (MAX_STRING - 10) + " " + token + " " + "y" * 50
    shown = preview(text, KEY).value
    assert isinstance(shown, str)
    assert "QQQQ" not in shown and "[github_token:" in shown and shown.endswith(f"…[{len(text)} chars]")


def test_previews_are_bounded() -> None:
    shown = preview({"items": list(range(1000)), "deep": [[[[[[[[[["x"]]]]]]]]]]}, KEY).value
    assert isinstance(shown, dict)
    assert len(shown["items"]) == 51 and shown["items"][-1] == "… 950 more items"
    assert "nested too deep" in str(shown["deep"])


@given(st.text(max_size=3000))
def test_scanning_arbitrary_text_never_fails(text: str) -> None:
    preview(text, KEY)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("alice\u200b@exam\u200dple.com", "email"),  # zero-width characters
        ("\u0430lice@ex\u0430mple.com", "email"),  # Cyrillic look-alike letters
        ("\uff14\uff11\uff11\uff11 1111 1111 1111", "payment_card"),  # full-width digits
        ("4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", "payment_card"),  # spaced out
        ("write to bob @ example.com", "email"),
        ("blob Ym9iQGV4YW1wbGUuY29tIHNlbnQgdGhpcw== end", "email_base64"),  # base64 of text
    ],
)
def test_the_usual_evasions_do_not_hide_a_value(text: str, kind: str) -> None:
    assert kind in [f.kind for f in scan(text)]


@pytest.mark.parametrize(
    "text",
    [
        "DE89 3704 0044 0532 0130 01",  # IBAN with a wrong check
        "SSN 000-12-3456",  # no such area
        "DNI 12345678A",  # wrong letter
        "version 1.2.300.4",  # not an address
        "commit 0123456789abcdef0123456789abcdef01234567",  # a hash is not a secret
        "ThisIsJustAnOrdinaryIdentifierName",  # nor is a long name
    ],
)
def test_look_alikes_that_fail_their_checks_are_not_labelled(text: str) -> None:
    assert [f.kind for f in scan(text)] == []


def iban_for(country: str, bban: str) -> str:
    check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
    return f"{country}{check:02d}{bban}"


@given(st.text("0123456789", min_size=18, max_size=18))
def test_every_valid_iban_is_found_and_a_changed_digit_is_not(bban: str) -> None:
    iban = iban_for("DE", bban)  # Germany: 18 digits after the check
    assert [f.kind for f in scan(f"pay to {iban} today")] == ["iban"]
    wrong = iban[:-1] + str((int(iban[-1]) + 1) % 10)
    assert "iban" not in [f.kind for f in scan(f"pay to {wrong} today")]


def test_input_built_to_make_regexes_backtrack_is_scanned() -> None:
    # A backtracking engine would not finish these within the test run; RE2 takes milliseconds.
    hostile = ["a" * 200_000 + "@", "1 " * 100_000, "-----BEGIN " * 20_000, "a." * 100_000 + "@x", "=" * 200_000]
    for text in hostile:
        assert isinstance(scan(text), list)


@given(st.lists(st.sampled_from(["role", "content", "a@b.co", "x@evil.example", "ok", "4111 1111 1111 1111", "café"])))
def test_classifying_again_finds_the_same(texts: list[str]) -> None:
    """Short strings found clean are remembered; what holds a finding is scanned every time."""
    from tether.core.classify import Classifier

    classifier, fresh = Classifier(), Classifier()
    for text in texts + texts:
        assert classifier.classify(text) == fresh.classify(text)
        fresh = Classifier()
    assert not any(scan(text) for text in classifier._clean)
