"""PII scrubbing: credentials in URLs, emails, card numbers (Luhn-checked), IP addresses and
phone numbers become placeholders; ordinary numbers (years, prices, versions, dates) stay.

Kinds run in a fixed order, most specific first, so one span is never claimed twice
(a `user:pass@host` URL is not also an email; a card number is not also a phone).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from orchestr.arena.records import StepReport, iter_messages

ORDER = ("credential_url", "email", "card", "ip", "phone")

_CRED_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/@:]+(?::[^\s/@]*)?@[^\s<>\"']*[^\s<>\"'.,;:!?)\]]")
_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
)
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
)
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){1,5}(?:[ .-]?\d{2,4})(?!\w)")
_PHONE_NANP = re.compile(r"(?<![\w(])(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\w|-\d)")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(m: re.Match[str]) -> bool:
    digits = re.sub(r"\D", "", m.group())
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _ipv6(m: re.Match[str]) -> bool:
    text = m.group()
    if text.count(":") < 2 or not re.search(r"[0-9A-Fa-f]", text):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _phone_intl(m: re.Match[str]) -> bool:
    return 8 <= len(re.sub(r"\D", "", m.group())) <= 15


# kind -> [(pattern, accept(match) or None)]
_RULES: dict[str, list[tuple[re.Pattern[str], Callable[[re.Match[str]], bool] | None]]] = {
    "credential_url": [(_CRED_URL, None)],
    "email": [(_EMAIL, None)],
    "card": [(_CARD, _card)],
    "ip": [(_IPV4, None), (_IPV6, _ipv6)],
    "phone": [(_PHONE_INTL, _phone_intl), (_PHONE_NANP, None)],
}


def scrub_text(
    text: str, kinds: list[str] | tuple[str, ...] = ORDER, placeholders: dict[str, str] | None = None
) -> tuple[str, dict[str, int]]:
    """(scrubbed text, replacements per kind)."""
    unknown = set(kinds) - set(ORDER)
    if unknown:
        raise ValueError(f"clean.pii.kinds: unknown kinds {sorted(unknown)}; known: {list(ORDER)}")
    placeholders = placeholders or {}
    counts: dict[str, int] = {}
    for kind in ORDER:
        if kind not in kinds:
            continue
        placeholder = placeholders.get(kind, f"[{kind.upper()}]")
        for pattern, accept in _RULES[kind]:

            def repl(
                m: re.Match[str], kind: str = kind, accept: Any = accept, placeholder: str = placeholder
            ) -> str:
                if accept is not None and not accept(m):
                    return m.group()
                counts[kind] = counts.get(kind, 0) + 1
                return placeholder

            text = pattern.sub(repl, text)
    return text, counts


def scrub_records(records: list[dict[str, Any]], cfg: Any) -> tuple[list[dict[str, Any]], StepReport]:
    report = StepReport("pii", read=len(records))
    kinds, placeholders = list(cfg.kinds), dict(cfg.placeholders)
    for rec in records:
        found: dict[str, int] = {}
        for msg in iter_messages(rec):
            msg["content"], counts = scrub_text(msg["content"], kinds, placeholders)
            for k, n in counts.items():
                found[k] = found.get(k, 0) + n
        if found:
            rec["pii_redacted"] = found
            for k in found:
                report.tag(f"records_with_{k}")
    report.kept = len(records)
    return records, report
