"""Redaction: mask personal data at ingest, per vault policy, and say what was masked.

Detectors use maintained libraries where one fits: `phonenumbers` for phone numbers,
`python-stdnum` for IBANs and card numbers (checksums, not just digit runs); emails and
user-given patterns are regular expressions. The original values are never kept.

E-mail addresses may have Unicode local parts and domains (`josé@exämple.de`, IDN TLDs as
letters or `xn--` punycode); IBANs are found in any letter case, with or without the
four-character groups, and only where their ISO 7064 checksum holds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import ClassVar

from pydantic import BaseModel, Field, field_validator

from .errors import InvalidInput

Span = tuple[int, int]

# \w is Unicode-aware: local parts and domain labels in any script
_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]+@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+"
    r"(?:[^\W\d_]{2,}|xn--[a-z0-9-]{2,59})(?![\w-])",
    re.IGNORECASE,
)
_IBAN_START = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}")
_IBAN_BODY = re.compile(r"(?:[ ]?[A-Za-z0-9]){11,30}")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")


class Redaction(BaseModel):
    """What was masked in one cube: kind, count and policy, never the value."""

    kind: str
    count: int
    policy: str


class RedactionPolicy(BaseModel):
    """Which kinds of personal data a vault masks at ingest."""

    settings_kind: ClassVar[str] = "RedactionPolicy"  # its rows in the settings table

    name: str = "default"
    emails: bool = True
    phones: bool = True
    ibans: bool = True
    cards: bool = True
    phone_region: str | None = Field(default="US", description="region for national numbers")
    patterns: dict[str, str] = Field(default_factory=dict, description="kind -> regex")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, v: dict[str, str]) -> dict[str, str]:
        for kind, pattern in v.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern for {kind!r} is not a valid regex: {exc}") from exc
        return v


def _emails(text: str, _: RedactionPolicy) -> Iterator[Span]:
    for m in _EMAIL.finditer(text):
        yield m.span()


def _phones(text: str, policy: RedactionPolicy) -> Iterator[Span]:
    import phonenumbers

    for m in phonenumbers.PhoneNumberMatcher(text, policy.phone_region):
        yield m.start, m.end


def _ibans(text: str, _: RedactionPolicy) -> Iterator[Span]:
    """Country code and check digits, then 11..30 characters (single spaces allowed between
    them); the longest run whose checksum holds and that ends at a word edge wins, so an
    IBAN followed by a word is still found."""
    from stdnum import iban

    pos = 0
    while m := _IBAN_START.search(text, pos):
        body = _IBAN_BODY.match(text, m.end())
        end = _valid_iban_end(text, m.start(), body.end() if body else m.end(), iban.is_valid)
        if end is None:
            pos = m.start() + 1
            continue
        yield m.start(), end
        pos = end


def _valid_iban_end(
    text: str, start: int, stop: int, is_valid: Callable[[str], bool]
) -> int | None:
    for end in range(stop, start + 14, -1):
        if text[end - 1] == " " or (end < len(text) and text[end].isalnum()):
            continue
        if is_valid(text[start:end].upper()):
            return end
    return None


def _cards(text: str, _: RedactionPolicy) -> Iterator[Span]:
    from stdnum import luhn

    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and luhn.is_valid(digits):
            yield m.span()


_DETECTORS: dict[str, Callable[[str, RedactionPolicy], Iterator[Span]]] = {
    "iban": _ibans,
    "card": _cards,
    "email": _emails,
    "phone": _phones,
}


def redact(text: str, policy: RedactionPolicy) -> tuple[str, list[Redaction]]:
    """Mask every match as `[KIND]`; returns the new text and what was masked."""
    enabled = {
        "iban": policy.ibans,
        "card": policy.cards,
        "email": policy.emails,
        "phone": policy.phones,
    }
    found: list[tuple[int, int, str]] = []
    for kind, detect in _DETECTORS.items():
        if enabled[kind]:
            found += [(a, b, kind) for a, b in detect(text, policy)]
    for kind, pattern in policy.patterns.items():
        if not kind.isidentifier():
            raise InvalidInput(f"pattern kind {kind!r} must be a plain name")
        found += [(*m.span(), kind) for m in re.finditer(pattern, text) if m.end() > m.start()]
    # earlier and longer matches win over the ones they overlap
    found.sort(key=lambda f: (f[0], -(f[1] - f[0])))
    kept: list[tuple[int, int, str]] = []
    for a, b, kind in found:
        if not kept or a >= kept[-1][1]:
            kept.append((a, b, kind))
    counts: dict[str, int] = {}
    out = []
    pos = 0
    for a, b, kind in kept:
        out.append(text[pos:a])
        out.append(f"[{kind.upper()}]")
        pos = b
        counts[kind] = counts.get(kind, 0) + 1
    out.append(text[pos:])
    return "".join(out), [Redaction(kind=k, count=n, policy=policy.name) for k, n in counts.items()]
