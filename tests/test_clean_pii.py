"""PII scrubbing: every listed kind of personal data is replaced; ordinary numbers and text are not."""

from __future__ import annotations

import re

import pytest

from orchestr.arena.release.pii import luhn_ok, scrub_records, scrub_text
from orchestr.config.clean import PiiConfig

POSITIVE = [
    # (text, the secret that must not survive, kind)
    ("Write to john.doe+news@example.co.uk today", "john.doe+news@example.co.uk", "email"),
    ("my mail: A_B-9@mail-server.org.", "A_B-9@mail-server.org", "email"),
    ("Call +1 (555) 123-4567 after six", "123-4567", "phone"),
    ("office 555-123-4567", "555-123-4567", "phone"),
    ("home (555) 987 6543", "987 6543", "phone"),
    ("London +44 20 7946 0958", "7946 0958", "phone"),
    ("Berlin +49 30 12345678", "12345678", "phone"),
    ("mobile 555.867.5309", "867.5309", "phone"),
    ("the server at 192.168.1.20 is down", "192.168.1.20", "ip"),
    ("public dns 8.8.8.8, nothing else", "8.8.8.8", "ip"),
    ("v6 host 2001:db8::8a2e:370:7334 answered", "2001:db8::8a2e:370:7334", "ip"),
    ("link-local fe80::1 only", "fe80::1", "ip"),
    ("visa 4111 1111 1111 1111 exp 12/29", "4111 1111 1111 1111", "card"),
    ("card 4111-1111-1111-1111", "4111-1111-1111-1111", "card"),
    ("mastercard 5500005555555559", "5500005555555559", "card"),
    ("amex 378282246310005", "378282246310005", "card"),
    ("clone https://user:s3cr3t@github.com/org/repo.git please", "s3cr3t", "credential_url"),
    ("mirror ftp://admin:hunter2@10.0.0.9/pub", "hunter2", "credential_url"),
    ("token url https://ghp_abc123XYZ@github.com/x/y", "ghp_abc123XYZ", "credential_url"),
    ("dsn postgres://app:pa55w0rd@db.internal:5432/prod", "pa55w0rd", "credential_url"),
]

NEGATIVE = [
    "In 2023 we sold 1500 units for $12,499.99.",
    "Version 1.2.3 was released on 2024-01-15 at 10:30:45.",
    "pi is 3.14159265358979 and e is 2.718281828",
    "Order #1234567890123 has shipped.",  # 13 digits, fails the Luhn check
    "4111 1111 1111 1112 is not a valid card",  # Luhn fails
    "About 1,000,000 people live there; 42 is the answer.",
    "See https://example.com/path?q=a@b for details",  # an @ in a URL's query is not a credential
    "Aspect ratios 16:9 and 4:3; chapter 12:30-45.",
    "ISBN 978-3-16-148410-0",
    "Call me at 5 pm, room 101, extension 12345.",
    "coordinates 40.7128, -74.0060",
    "1.2.3.4.5 is a version, not an address; python 3.11.2",
    "The years 1999, 2000 and 2024 were good.",
    "Use the @decorator syntax and x@y is not an address.",
    "Return code 255.255.255.256 is out of range",
]


@pytest.mark.parametrize("text,secret,kind", POSITIVE)
def test_pii_is_replaced(text, secret, kind):
    cfg = PiiConfig()
    scrubbed, counts = scrub_text(text, list(cfg.kinds), dict(cfg.placeholders))
    assert secret not in scrubbed
    assert counts == {kind: 1}, (scrubbed, counts)
    assert cfg.placeholders[kind] in scrubbed
    # Text around the secret survives.
    assert text.split()[0] in scrubbed


@pytest.mark.parametrize("text", NEGATIVE)
def test_ordinary_text_and_numbers_survive(text):
    scrubbed, counts = scrub_text(text)
    assert scrubbed == text and counts == {}


def test_no_digit_run_of_a_secret_survives_in_mixed_text():
    text = " ".join(t for t, _, _ in POSITIVE)
    scrubbed, counts = scrub_text(text, placeholders=dict(PiiConfig().placeholders))
    for _, secret, _ in POSITIVE:
        assert secret not in scrubbed
    assert not re.search(r"\d{3}[-. ]\d{4}\b", scrubbed)
    assert not re.search(r"[\w.+-]+@[\w-]+\.[a-z]{2,}", scrubbed)
    assert sum(counts.values()) >= len(POSITIVE)


def test_kinds_can_be_chosen_and_unknown_kinds_are_refused():
    text = "mail a@b.io or call 555-123-4567"
    scrubbed, counts = scrub_text(text, ["email"])
    assert "a@b.io" not in scrubbed and "555-123-4567" in scrubbed and counts == {"email": 1}
    with pytest.raises(ValueError, match="unknown kinds"):
        scrub_text(text, ["ssn"])


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112") and not luhn_ok("79927398710")


def test_records_are_scrubbed_in_every_conversation():
    records = [
        {
            "conversation": [
                {"role": "user", "content": "I'm at 10.1.2.3"},
                {"role": "assistant", "content": "ok"},
            ]
        },
        {
            "conversation_a": [{"role": "user", "content": "mail x@y.com"}],
            "conversation_b": [{"role": "user", "content": "card 4111111111111111"}],
        },
        {"conversation": [{"role": "user", "content": "nothing here, 2024"}]},
    ]
    out, report = scrub_records(records, PiiConfig())
    assert out[0]["conversation"][0]["content"] == "I'm at [IP_ADDRESS]"
    assert out[1]["conversation_a"][0]["content"] == "mail [EMAIL]"
    assert out[1]["conversation_b"][0]["content"] == "card [CARD_NUMBER]"
    assert out[1]["pii_redacted"] == {"email": 1, "card": 1}
    assert "pii_redacted" not in out[2] and out[2]["conversation"][0]["content"] == "nothing here, 2024"
    assert report.kept == 3 and report.tagged == {
        "records_with_ip": 1,
        "records_with_email": 1,
        "records_with_card": 1,
    }
