"""Secrets, and every form they travel in, kept out of everything moerules prints or writes.

A key reaches output in more shapes than its own: a Basic token is the base64 of ``user:key``,
a URL carries it percent-encoded, a JSON string escapes it (twice, when a partner's JSON error
is quoted inside a dead letter), and a partner or a proxy may echo any of these back in an
error body. :class:`Scrubber` is built once from the secret values and knows each derived form;
every output boundary passes its text through the same scrubber: dry-run requests, dead
letters, the run report and summary, error messages, ``explain``, and the partner's answers
as they arrive (so an excerpt cut short cannot keep half a key).

Base64 needs care: the characters that encode a secret depend on where it starts in the
encoded text (its offset modulo 3) and on its neighbours at both ends. For each of the three
alignments the characters that depend on the secret's bytes alone are fixed; finding any of
them finds the token, and the whole run of base64 characters around it (the token) goes.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import quote, quote_plus

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "Scrubber", "derived_forms", "scrubber"]

REDACTED = "***"
# Secrets are scrubbed as substrings; one too short to be a real key ("K" in a test) would
# corrupt every header and value it appears in (the compiler applies the same floor).
MIN_SECRET_LENGTH = 6
# A base64 fragment shorter than this could occur by chance in other base64 text.
_MIN_CORE = 6
_B64_RUN = "[A-Za-z0-9+/_-]*"
_PERCENT = re.compile(r"%[0-9A-F]{2}")


def _json_escaped(text: str) -> set[str]:
    """The secret inside a JSON string, and inside a JSON string quoted in another one."""
    once = {json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}
    twice = {json.dumps(form)[1:-1] for form in once}
    return once | twice


def _url_encoded(text: str) -> set[str]:
    forms = {quote(text, safe=""), quote(text), quote_plus(text)}
    # percent escapes may be written in lower case (%2f); both are the same byte
    return forms | {_PERCENT.sub(lambda m: m.group(0).lower(), f) for f in forms}


def _base64_cores(text: str) -> set[str]:
    """Per alignment, the base64 characters fixed by the secret's bytes alone."""
    data = text.encode()
    cores: set[str] = set()
    for lead in range(3):
        encoded = base64.b64encode(b"\0" * lead + data + b"\0\0").decode()
        first = -(-8 * lead // 6)  # the first character with no bit of the lead bytes
        last = 8 * (lead + len(data)) // 6  # the first character with bits of the trail
        core = encoded[first:last]
        if len(core) >= _MIN_CORE:
            cores.add(core)
            cores.add(core.replace("+", "-").replace("/", "_"))  # the URL-safe alphabet
    return cores


def derived_forms(secret: str) -> tuple[set[str], set[str]]:
    """(literal forms, base64 cores) of one secret; every one of them is a secret too."""
    # upper and lower case too: a setting that normalises its value (a data center, a
    # region) echoes it in its error message changed so
    literals = (
        {secret, secret.upper(), secret.lower()} | _url_encoded(secret) | _json_escaped(secret)
    )
    for form in list(literals):
        literals |= _json_escaped(form)  # a URL (with the key in it) quoted in JSON
    return literals, _base64_cores(secret)


class Scrubber:
    """Replaces every form of the given secrets with ``***``, in text or in bytes.

    Cheap when nothing matches: one substring search per form, no regular expression.
    """

    __slots__ = ("_cores", "_cores_b", "_literals", "_literals_b")

    def __init__(self, secrets: Iterable[str]) -> None:
        literals: set[str] = set()
        cores: set[str] = set()
        for secret in secrets:
            if len(secret) < MIN_SECRET_LENGTH:
                continue
            forms, b64 = derived_forms(secret)
            literals |= forms
            cores |= b64
        # longest first: a form that contains another is replaced whole
        ordered = sorted(literals, key=lambda f: (-len(f), f))
        self._literals = ordered
        self._literals_b = [f.encode() for f in ordered]
        # a token is the whole run of base64 characters around the core (and its padding)
        self._cores = [
            (c, re.compile(_B64_RUN + re.escape(c) + _B64_RUN + "=*")) for c in sorted(cores)
        ]
        self._cores_b = [
            (c.encode(), re.compile((_B64_RUN + re.escape(c) + _B64_RUN + "=*").encode()))
            for c in sorted(cores)
        ]

    def __bool__(self) -> bool:
        return bool(self._literals)

    def text(self, text: str) -> str:
        for core, pattern in self._cores:
            if core in text:
                text = pattern.sub(REDACTED, text)
        for form in self._literals:
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    def bytes(self, data: bytes) -> bytes:
        for core, pattern in self._cores_b:
            if core in data:
                data = pattern.sub(REDACTED.encode(), data)
        for form in self._literals_b:
            if form in data:
                data = data.replace(form, b"***")
        return data

    __call__ = text


@lru_cache(maxsize=32)
def _cached(secrets: frozenset[str]) -> Scrubber:
    return Scrubber(secrets)


def scrubber(secrets: Iterable[str] = ()) -> Scrubber:
    """The scrubber for these secrets, built once per set of secrets and shared."""
    return _cached(frozenset(secrets))
