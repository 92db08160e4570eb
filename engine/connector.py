"""The connector boundary: a source decodes input into records, a sink encodes and classifies.

Connectors are found by name through the ``moerules.connectors`` entry-point group, so a third
party can ship one as a package; the ones in this distribution are also registered directly,
which keeps a source checkout usable without installing it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

__all__ = [
    "DeliveryOutcome",
    "EventOut",
    "RateLimit",
    "Sink",
    "SinkEncoder",
    "Source",
    "UserOut",
    "WireRequest",
    "connector_names",
    "load_connector",
]


@dataclass(slots=True)
class EventOut:
    """One mapped event on its way to a sink."""

    identity: str
    name: str
    attributes: dict[str, Any]
    fields: dict[str, Any]
    project: str | None  # the routed project's code; None = portfolio level
    ref: tuple[int, int]  # (input line, event index) for acknowledgement and dead letters
    rule: str


@dataclass(slots=True)
class UserOut:
    """One user-attribute update on its way to a sink."""

    identity: str
    attributes: dict[str, Any]
    ref: tuple[int, int]
    rule: str


@dataclass(slots=True)
class WireRequest:
    """An HTTP request a sink wants sent, with the items it carries."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    items: list[EventOut | UserOut] = field(default_factory=list)
    limit_key: str = "default"  # which rate limits apply (per endpoint)

    def redacted_headers(self, secret_headers: frozenset[str]) -> dict[str, str]:
        return {k: ("***" if k.lower() in secret_headers else v) for k, v in self.headers.items()}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``requests`` per ``per_seconds`` for requests whose limit_key matches."""

    requests: int
    per_seconds: float
    limit_key: str = "*"


@dataclass(slots=True)
class DeliveryOutcome:
    """What a partner's answer means: ok, retry (maybe after a delay), or permanent failure."""

    status: int | None
    ok: bool = False
    retry: bool = False
    retry_after: float | None = None
    error: str = ""
    excerpt: str = ""
    failed_items: dict[int, str] = field(default_factory=dict)  # item index -> error


class Source(ABC):
    """Decodes one input line into a record (``batch``) holding zero or more events."""

    __slots__ = ("settings",)
    name: ClassVar[str]
    events_key: ClassVar[str | None] = "events"
    settings_doc: ClassVar[Mapping[str, str]] = {}
    # True when ``decode`` is a JSON parse of one object per line plus checks that a
    # projected decode's types enforce too (an object; ``events_key`` a list of objects):
    # the engine may then decode only the fields the rules read (engine/projection.py)
    projectable: ClassVar[bool] = False

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    @abstractmethod
    def decode(self, line: bytes) -> dict[str, Any]:
        """One input line as a record; RecordError (dead-lettered) when it is not one."""

    def check_settings(self) -> list[tuple[str, str]]:
        """Problems with the settings as (setting name, message)."""
        unknown = [k for k in self.settings if k not in self.settings_doc]
        return [(k, f"unknown setting {k!r} for source {self.name!r}") for k in unknown]


class SinkEncoder(ABC):
    """Turns mapped events and user updates into requests, batching by count and bytes."""

    @abstractmethod
    def add(self, item: EventOut | UserOut) -> list[WireRequest]:
        """Take one item; return the requests that became full.

        Raises TypeError or ValueError, holding nothing of the item, when it cannot be encoded.
        """

    def add_events(self, items: list[EventOut]) -> tuple[list[WireRequest],
                                                          list[tuple[EventOut, str]]]:
        """Take one input record's events, in order: the requests that became full, and the
        items that cannot be encoded with why (held nowhere; the caller dead-letters them).

        A sink overrides this to encode a record's events at once (one serialisation per
        record rather than per event); the result must be what ``add`` one by one gives.
        """
        out: list[WireRequest] = []
        failed: list[tuple[EventOut, str]] = []
        add = self.add
        for item in items:
            try:
                requests = add(item)
            except (TypeError, ValueError) as exc:  # orjson: an int beyond 64 bits...
                failed.append((item, str(exc)))
                continue
            if requests:
                out += requests
        return out, failed

    @abstractmethod
    def flush(self) -> list[WireRequest]:
        """Return requests for everything still held."""


class Sink(ABC):
    """A destination: settings, an encoder, and how to read its answers."""

    name: ClassVar[str]
    event_fields: ClassVar[Mapping[str, str]] = {}
    settings_doc: ClassVar[Mapping[str, str]] = {}
    required_settings: ClassVar[frozenset[str]] = frozenset()
    secret_settings: ClassVar[frozenset[str]] = frozenset()
    secret_headers: ClassVar[frozenset[str]] = frozenset({"authorization"})
    supports_routing: ClassVar[bool] = False

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    def check_settings(self) -> list[tuple[str, str]]:
        problems = [
            (k, f"unknown setting {k!r} for destination {self.name!r}")
            for k in self.settings if k not in self.settings_doc
        ]
        problems += [
            (k, f"destination {self.name!r} needs setting {k!r}")
            for k in sorted(self.required_settings) if k not in self.settings
        ]
        return problems

    @abstractmethod
    def encoder(self) -> SinkEncoder: ...

    @abstractmethod
    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> DeliveryOutcome:
        ...

    def rate_limits(self) -> list[RateLimit]:
        return []


_BUILTIN = {
    "mparticle": "moerules.connectors.mparticle.source:MParticleSource",
    "moengage": "moerules.connectors.moengage.sink:MoEngageDataSink",
}


def _registry() -> dict[str, str]:
    found = dict(_BUILTIN)
    for ep in entry_points(group="moerules.connectors"):
        found.setdefault(ep.name, ep.value)
    return found


def connector_names() -> list[str]:
    return sorted(_registry())


def load_connector(name: str) -> type[Source] | type[Sink] | None:
    target = _registry().get(name)
    if target is None:
        return None
    module_name, _, attr = target.partition(":")
    cls: type[Source] | type[Sink] = getattr(importlib.import_module(module_name), attr)
    return cls
