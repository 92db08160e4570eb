"""Interim: items as the elements of a JSON array, batched by count and bytes.

The connector contract is getting a generic JSON-array encoder (items in, requests out, by a
batch policy); until it lands, the Amplitude, Segment and Mixpanel sinks use this one, which
has its shape (``element``, ``request``, ``envelope``, ``Unencodable`` for an item that can
never be sent), so moving to the engine's is an import change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from moerules.engine.connector import EventOut, SinkEncoder, UserOut, WireRequest

__all__ = ["BatchPolicy", "JsonArrayEncoder", "Unencodable"]

Item = EventOut | UserOut


class Unencodable(ValueError):
    """An item the destination can never take: dead-lettered with this message."""


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_items: int
    max_request_bytes: int
    max_item_bytes: int | None = None


class JsonArrayEncoder(SinkEncoder):
    """``head + e1,e2,... + tail`` per request, closed when the next element would not fit."""

    def __init__(self, policy: BatchPolicy, *, element: Callable[[Item], Any],
                 request: Callable[[bytes, list[Item]], WireRequest],
                 envelope: tuple[bytes, bytes] = (b"[", b"]")) -> None:
        self.policy = policy
        self.element = element
        self.request = request
        self.head, self.tail = envelope
        self.chunks: list[bytes] = []
        self.items: list[Item] = []
        self.size = len(self.head) + len(self.tail)

    def add(self, item: Item) -> list[WireRequest]:
        policy = self.policy
        piece = orjson.dumps(self.element(item))
        if policy.max_item_bytes is not None and len(piece) > policy.max_item_bytes:
            raise Unencodable(f"{len(piece)} bytes encoded; the destination takes at most "
                              f"{policy.max_item_bytes} per event")
        room = policy.max_request_bytes - len(self.head) - len(self.tail)
        if len(piece) > room:
            raise Unencodable(f"{len(piece)} bytes encoded; a request holds at most "
                              f"{policy.max_request_bytes} bytes")
        out: list[WireRequest] = []
        if self.items and self.size + 1 + len(piece) > policy.max_request_bytes:
            out.append(self._close())
        if self.chunks:
            self.chunks.append(b",")
            self.size += 1
        self.chunks.append(piece)
        self.items.append(item)
        self.size += len(piece)
        if len(self.items) >= policy.max_items:
            out.append(self._close())
        return out

    def _close(self) -> WireRequest:
        body = b"".join([self.head, *self.chunks, self.tail])
        request = self.request(body, self.items)
        self.chunks, self.items = [], []
        self.size = len(self.head) + len(self.tail)
        return request

    def flush(self) -> list[WireRequest]:
        return [self._close()] if self.items else []
