"""Verdicts: what a partner's answer means, decided by the sink, applied by the runtime.

A sink reads each answer (``Sink.classify(request, response)``) and returns exactly one
verdict. The runtime applies it and knows no status codes (as Vector's ``RetryLogic``: one
action per response)::

    Verdict
    ├── Delivered      every item of the request arrived
    ├── Retry          send the whole request again (after ``after`` seconds when the partner
    │                  said so: Retry-After); ``throttled`` when the partner's rate limit said no
    │   └── holds      what the wait holds back: "credential" (the default) pauses every
    │                  request of the limit key for ``after`` and slows its pace (MoEngage,
    │                  Segment, Mixpanel: their limits count the whole key); "items" holds
    │                  only these items: they wait ``after`` in a task of their own, and
    │                  other requests go on unpaced by it (Amplitude throttles per user and
    │                  per device, not per key)
    ├── Reject         no item can ever arrive: all are dead-lettered with ``reason``
    ├── Partial        by item index: ``rejected`` ones dead-lettered (each with its reason),
    │   │              ``retry`` ones re-encoded and sent again (after ``after``, held as
    │   │              ``holds`` says), the rest delivered
    │   └── resend     indices the answer did not ingest though it did not refuse them
    │                  (innocent bystanders of a throttled request): re-encoded and sent
    │                  again at once, without a wait; each counts as a try
    ├── Split          the request is too large: resend it in halves (one item alone that is
    │                  still too large is dead-lettered)
    └── Fatal          stop the run: nothing more can succeed (a wrong key, a closed account);
                       what is not delivered stays for the rerun

Item indices are positions in ``request.items``. Retries are bounded by the run's retry
policy; when they run out, the items are dead-lettered with ``"retries exhausted: " +
reason``. A failure with no answer at all (timeout, refused connection) is retried by the
runtime without asking the sink.

>>> def classify(request, response):
...     if response.status == 429:
...         return Retry("HTTP 429", after=retry_after_seconds(response.header("retry-after")),
...                      throttled=True)
...     if response.status == 400:  # the partner names the bad events by index
...         bad = response.json()["invalid"]
...         return Partial({i: "invalid event" for i in bad}, reason="HTTP 400")
...     return Delivered() if response.status == 200 else Reject(f"HTTP {response.status}")
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = [
    "Delivered",
    "Fatal",
    "Hold",
    "Partial",
    "Reject",
    "Response",
    "Retry",
    "Split",
    "Verdict",
]

Hold = Literal["credential", "items"]
"""What a verdict's wait holds back: every request of the credential, or only its items."""


@dataclass(frozen=True, slots=True)
class Response:
    """A partner's answer as a sink sees it: status, headers, body.

    Header names are matched case-insensitively by ``header``.
    """

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        if value is None:
            lower = name.lower()
            value = next((v for k, v in self.headers.items() if k.lower() == lower), None)
        return value

    def json(self) -> Any:
        """The body as JSON; None when it is empty or not JSON."""
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None

    @property
    def excerpt(self) -> str:
        """The start of the body, as dead letters and warnings show it."""
        return self.body[:300].decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Delivered:
    """Every item of the request arrived."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Send the request again; after ``after`` seconds when the partner said (Retry-After),
    else after the runtime's backoff. ``throttled``: the partner's rate limit refused it.
    ``holds``: "credential" pauses the whole limit key for ``after`` (and a throttled answer
    slows its pace); "items" makes only this request's items wait, in a task of their own."""

    reason: str
    after: float | None = None
    throttled: bool = False
    holds: Hold = "credential"


@dataclass(frozen=True, slots=True)
class Reject:
    """No item of the request can ever arrive; each is dead-lettered with ``reason``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Partial:
    """Some items failed: ``rejected`` (index -> why) are dead-lettered, ``retry`` (indices)
    are sent again (after ``after`` seconds when given; ``holds`` as for ``Retry``),
    ``resend`` (indices) are sent again at once, every other item arrived."""

    rejected: Mapping[int, str] = field(default_factory=dict)
    retry: frozenset[int] = frozenset()
    reason: str = ""
    after: float | None = None
    throttled: bool = False
    holds: Hold = "credential"
    resend: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Split:
    """The request is too large for the partner: send its items again in smaller requests."""

    reason: str


@dataclass(frozen=True, slots=True)
class Fatal:
    """Nothing more can succeed (refused credentials, a suspended account): stop the run."""

    reason: str


Verdict = Delivered | Retry | Reject | Partial | Split | Fatal
