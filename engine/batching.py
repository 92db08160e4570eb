"""Batching as data: a sink's ``BatchPolicy``, the ``SinkEncoder`` interface, and a generic
JSON-array encoder new sinks reuse.

A policy says how full a request may get and how long an item may wait (as Redpanda Connect's
batch policy: count, byte size, period). An encoder takes items one at a time, hands back the
requests that became full, and says through ``until_next`` how long until what it holds must
leave; the delivery loop flushes it then, so an input that never ends (a pipe, a service)
still sends on time. An item that could never fit in a request of the destination (larger
than ``max_item_bytes``, or than a request's room on its own) is refused when it is encoded
(``ItemTooLarge``), in a dry run exactly as in a real one, and dead-lettered.

>>> policy = BatchPolicy(max_items=2000, max_request_bytes=10 << 20, max_age=5.0)
>>> encoder = JsonArrayEncoder(policy, element=lambda item: {"event": item.name},
...                            request=lambda key, body, items: WireRequest(
...                                "POST", "https://api.example.com/import", {}, body, items))
>>> encoder.add(item)        # [] until a request is full         # doctest: +SKIP
>>> encoder.flush()          # whatever is held, as requests     # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import orjson
from moerules.engine.items import Item

__all__ = [
    "BatchPolicy",
    "ItemTooLarge",
    "JsonArrayEncoder",
    "Refused",
    "SinkEncoder",
    "Unencodable",
    "WireRequest",
]


@dataclass(slots=True)
class WireRequest:
    """An HTTP request a sink wants sent, with the items it carries (in the order a sink's
    verdicts index them) and which of the sink's rate limits apply (``limit_key``).

    ``content_encoding`` ("gzip" or None): ``body`` stays the readable body (what a dry run
    prints, what size limits and byte rate limits measure); the sender compresses it when it
    sends (``wire_body``) and adds the ``Content-Encoding`` header (``wire_headers``, shown by
    the dry run too).
    """

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    items: list[Item] = field(default_factory=list)
    limit_key: str = "default"
    content_encoding: Literal["gzip"] | None = None

    def wire_headers(self) -> dict[str, str]:
        """The headers as sent: ``headers`` and the ``Content-Encoding`` of the body."""
        if self.content_encoding is None:
            return self.headers
        return {**self.headers, "Content-Encoding": self.content_encoding}

    def wire_body(self) -> bytes:
        """The body as sent: compressed when ``content_encoding`` says so (mtime 0, so that
        the same body always compresses to the same bytes)."""
        if self.content_encoding == "gzip":
            return gzip.compress(self.body, mtime=0)
        return self.body

    def redacted_headers(self, secret_headers: frozenset[str]) -> dict[str, str]:
        return {
            k: ("***" if k.lower() in secret_headers else v) for k, v in self.wire_headers().items()
        }


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How full one request may get and how long an item may wait in it. None: no limit.

    ``max_items`` items per request; ``max_request_bytes`` per request body (envelope
    included); ``max_item_bytes`` per item as encoded; ``max_age`` seconds from the moment
    a request got its first item until it is sent even when not full.
    """

    max_items: int | None = None
    max_request_bytes: int | None = None
    max_item_bytes: int | None = None
    max_age: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_items", "max_request_bytes", "max_item_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"BatchPolicy.{name} must be >= 1, got {value}")
        if self.max_age is not None and self.max_age < 0:
            raise ValueError(f"BatchPolicy.max_age must be >= 0, got {self.max_age}")


class Unencodable(ValueError):
    """An item the sink cannot encode; it is dead-lettered with ``reason``."""

    reason = "cannot encode for the destination"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ItemTooLarge(Unencodable):
    """An item larger than any request the destination takes (per item or per request)."""

    reason = "too large for the destination"


class Refused(NamedTuple):
    """An item an encoder did not take: dead-lettered with ``reason`` and ``error``."""

    item: Item
    reason: str
    error: str


def refusal(item: Item, exc: Exception) -> Refused:
    return Refused(item, getattr(exc, "reason", Unencodable.reason), str(exc))


class SinkEncoder(ABC):
    """Packs items into requests by the sink's batch policy.

    ``add`` takes one item and returns the requests that became full; ``flush`` returns
    requests for everything held; ``until_next`` says how long until something held must be
    sent (``flush``) because it is ``max_age`` old.
    """

    @abstractmethod
    def add(self, item: Item) -> list[WireRequest]:
        """Take one item; return the requests that became full.

        Raises ``Unencodable`` (``ItemTooLarge``), TypeError or ValueError, holding nothing
        of the item, when it cannot be encoded.
        """

    @abstractmethod
    def flush(self) -> list[WireRequest]:
        """Return requests for everything still held."""

    def add_all(self, items: Sequence[Item]) -> tuple[list[WireRequest], list[Refused]]:
        """Take one input record's items, in order: the requests that became full, and the
        items refused (held nowhere; the caller dead-letters them).

        A sink may override this to encode a record's items at once; the result must be
        what ``add`` one by one gives.
        """
        out: list[WireRequest] = []
        refused: list[Refused] = []
        add = self.add
        for item in items:
            try:
                requests = add(item)
            except (TypeError, ValueError) as exc:  # orjson: an int beyond 64 bits...
                refused.append(refusal(item, exc))
                continue
            if requests:
                out += requests
        return out, refused

    def until_next(self, now: float | None = None) -> float | None:
        """Seconds until held items must be flushed (<= 0: now); None when none must."""
        return None


class _Batch:
    __slots__ = ("chunks", "items", "size", "started")

    def __init__(self, started: float, size: int) -> None:
        self.chunks: list[bytes] = []
        self.items: list[Item] = []
        self.size = size  # envelope included
        self.started = started


class JsonArrayEncoder(SinkEncoder):
    """Items as the elements of a JSON array: ``head + e1,e2,... + tail`` per request.

    ``element(item)`` gives the JSON value of one item (serialised with orjson);
    ``key(item)`` groups items that may share a request (an endpoint, a region, a route), one
    batch per key; ``envelope(key)`` the bytes around the elements (default ``[`` and ``]``:
    ``{"api_key":"...","events":[`` and ``]}`` for an Amplitude-like body);
    ``request(key, body, items)`` builds the request. Limits come from ``policy``.
    """

    def __init__(
        self,
        policy: BatchPolicy,
        *,
        element: Callable[[Item], Any],
        request: Callable[[Any, bytes, list[Item]], WireRequest],
        key: Callable[[Item], Hashable] | None = None,
        envelope: Callable[[Any], tuple[bytes, bytes]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.element = element
        self.request = request
        self.key = key
        self.envelope = envelope or (lambda _key: (b"[", b"]"))
        self.clock = clock
        self.batches: dict[Hashable, _Batch] = {}

    def add(self, item: Item) -> list[WireRequest]:
        policy = self.policy
        piece = orjson.dumps(self.element(item))
        key = self.key(item) if self.key is not None else None
        head, tail = self.envelope(key)
        if policy.max_item_bytes is not None and len(piece) > policy.max_item_bytes:
            raise ItemTooLarge(
                f"{len(piece)} bytes encoded; the destination takes at most "
                f"{policy.max_item_bytes} per item"
            )
        limit = policy.max_request_bytes
        if limit is not None and len(head) + len(piece) + len(tail) > limit:
            raise ItemTooLarge(f"{len(piece)} bytes encoded; a request holds at most {limit} bytes")
        out: list[WireRequest] = []
        batch = self.batches.get(key)
        if batch is not None and limit is not None and batch.size + 1 + len(piece) > limit:
            out.append(self._close(key, batch))
            batch = None
        if batch is None:
            batch = self.batches[key] = _Batch(self.clock(), len(head) + len(tail))
        if batch.chunks:
            batch.chunks.append(b",")
            batch.size += 1
        batch.chunks.append(piece)
        batch.items.append(item)
        batch.size += len(piece)
        if policy.max_items is not None and len(batch.items) >= policy.max_items:
            out.append(self._close(key, batch))
        return out

    def _close(self, key: Hashable, batch: _Batch) -> WireRequest:
        del self.batches[key]
        head, tail = self.envelope(key)
        return self.request(key, b"".join([head, *batch.chunks, tail]), batch.items)

    def flush(self) -> list[WireRequest]:
        return [self._close(key, batch) for key, batch in list(self.batches.items())]

    def until_next(self, now: float | None = None) -> float | None:
        if self.policy.max_age is None or not self.batches:
            return None
        oldest = min(batch.started for batch in self.batches.values())
        return oldest + self.policy.max_age - (self.clock() if now is None else now)
