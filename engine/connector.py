"""The connector boundary: a source decodes input into records, a sink takes items and reads
the partner's answers. A new connector author reads this module (and the ones it re-exports).

Adding a sink (a destination)
-----------------------------
A sink is a class with two methods to write and a few declarations::

    class ExampleSink(Sink):
        name = "example"                      # the entry-point name bundles use
        accepts = frozenset({EVENT, USER})    # item kinds it can deliver (engine/items.py)
        settings_model = ExampleSettings      # typed settings (engine/rules/settings.py)
        example_settings = {"api_key": "example-api-key-for-tests"}  # fake: for the tests

        @classmethod
        def from_settings(cls, settings: ExampleSettings) -> ExampleSink:  # checked settings
            sink = cls({})
            sink.batch_policy = BatchPolicy(max_items=2000, max_request_bytes=10 << 20,
                                            max_age=5.0)
            return sink

        def encoder(self) -> SinkEncoder:     # items -> requests, by the batch policy
            return JsonArrayEncoder(self.batch_policy, element=self.element,
                                    request=self.request, key=lambda item: item.kind)

        def classify(self, request: WireRequest, response: Response) -> Verdict:
            ...                               # one verdict per answer (engine/verdicts.py)

        def rate_limits(self) -> list[RateLimit]:   # what the partner counts, per window
            return [RateLimit(1000, 1.0), RateLimit(2 << 30, 60.0, counts=BYTES)]

1. **Items** (``Item``) carry a ``kind``: declare the kinds the partner can take in
   ``accepts``. ``moerules validate`` refuses a bundle that emits any other kind.
2. **Encoding**: ``encoder()`` returns a fresh ``SinkEncoder`` per run. ``JsonArrayEncoder``
   covers any API whose body is a JSON array of items (inside an envelope); write your own only
   for a wire format it cannot express (MoEngage's bulk ``transition`` elements). Raise
   ``ItemTooLarge`` / ``Unencodable`` for an item that can never be sent: it is dead-lettered
   with its reason, identically in dry and real runs.
3. **Batch policy** (``BatchPolicy``): most items, bytes per request, bytes per item and the
   longest an item may wait (``max_age``), from the partner's documented limits.
4. **Verdicts**: ``classify`` turns each answer into one of ``Delivered``, ``Retry``,
   ``Reject``, ``Partial``, ``Split``, ``Fatal``. The runtime knows no status codes: the
   partner's documented statuses go in ``documented_answers`` and the conformance suite
   (tests/connectors/test_conformance.py) checks ``classify`` against them.
5. **Rate limits**: ``RateLimit`` counts requests, items (optionally of one kind) or bytes
   per window, per ``limit_key`` (an endpoint); pacing honours every limit at once.
6. **Settings and secrets**: ``settings_model`` is a ``ConnectorSettings`` pydantic model;
   ``moerules validate`` checks a bundle's settings against it at their file positions, and
   the engine builds the connector with ``from_settings(parsed)``. ``SecretStr`` settings and
   headers in ``secret_headers`` are redacted from dry-run output, reports and dead letters
   (the runtime also scrubs what a partner echoes of those headers).
7. Register the class under the ``moerules.connectors`` entry-point group (the only registry:
   another package adds a connector with no change here; an emulator goes in
   ``moerules.emulators``) and give the conformance suite its ``example_settings``.

A source is a class with ``decode(line) -> record``; see ``Source``. Cohort sources and sinks
(partner cohort webhooks in, cohort membership changes out) add a little: engine/cohorts.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar

from moerules.engine.batching import (
    BatchPolicy,
    ItemTooLarge,
    JsonArrayEncoder,
    Refused,
    SinkEncoder,
    Unencodable,
    WireRequest,
)
from moerules.engine.items import COHORT_MEMBERSHIP, EVENT, KINDS, USER, Item
from moerules.engine.verdicts import (
    Delivered,
    Fatal,
    Hold,
    Partial,
    Reject,
    Response,
    Retry,
    Split,
    Verdict,
)

__all__ = [
    "BYTES",
    "COHORT_MEMBERSHIP",
    "CONNECTOR_GROUP",
    "EMULATOR_GROUP",
    "EVENT",
    "ITEMS",
    "KINDS",
    "REQUESTS",
    "USER",
    "BatchPolicy",
    "Delivered",
    "Fatal",
    "Hold",
    "Item",
    "ItemTooLarge",
    "JsonArrayEncoder",
    "Partial",
    "RateLimit",
    "Refused",
    "Reject",
    "Response",
    "Retry",
    "Sink",
    "SinkEncoder",
    "Source",
    "Split",
    "Unencodable",
    "Verdict",
    "WireRequest",
    "connector_names",
    "emulator_names",
    "kind_problem",
    "load_connector",
    "load_emulator",
    "packaged_schema",
]

REQUESTS, ITEMS, BYTES = "requests", "items", "bytes"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``amount`` units per ``per_seconds`` for requests whose limit_key matches.

    ``counts`` says what a unit is: ``requests``, ``items`` (only those of ``kind`` when it is
    set: MoEngage counts users and events separately) or ``bytes`` of request bodies.
    """

    amount: int
    per_seconds: float
    limit_key: str = "*"
    counts: str = REQUESTS
    kind: str | None = None

    def __post_init__(self) -> None:
        if self.counts not in (REQUESTS, ITEMS, BYTES):
            raise ValueError(f"RateLimit.counts is requests, items or bytes, not {self.counts!r}")

    def cost(self, request: WireRequest) -> int:
        """The units ``request`` takes from this limit."""
        if self.counts == REQUESTS:
            return 1
        if self.counts == BYTES:
            return len(request.body)
        if self.kind is None:
            return len(request.items)
        kind = self.kind
        return sum(1 for item in request.items if item.kind == kind)


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
    # The JSON Schema of the record ``decode`` returns (``packaged_schema`` loads one shipped
    # next to the source): ``moerules validate`` warns about a rule path that no record can
    # ever contain. None: the record's shape is unknown, and paths are not checked.
    record_schema: ClassVar[Mapping[str, Any] | None] = None

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    @abstractmethod
    def decode(self, line: bytes) -> dict[str, Any]:
        """One input line as a record; RecordError (dead-lettered) when it is not one."""

    def check_settings(self) -> list[tuple[str, str]]:
        """Problems with the settings as (setting name, message)."""
        unknown = [k for k in self.settings if k not in self.settings_doc]
        return [(k, f"unknown setting {k!r} for source {self.name!r}") for k in unknown]


class Sink(ABC):
    """A destination: which kinds it accepts, how it encodes and batches them, how it reads
    the partner's answers, and what the partner's rate limits count.

    Write ``encoder`` and ``classify``; declare ``accepts``, ``batch_policy`` and, when the
    partner has them, ``rate_limits``. ``documented_answers`` lists (status, body, verdict
    class) from the partner's docs, checked by the conformance suite.
    """

    name: ClassVar[str]
    accepts: ClassVar[frozenset[str]] = frozenset({EVENT})
    event_fields: ClassVar[Mapping[str, str]] = {}
    settings_doc: ClassVar[Mapping[str, str]] = {}
    required_settings: ClassVar[frozenset[str]] = frozenset()
    secret_settings: ClassVar[frozenset[str]] = frozenset()
    secret_headers: ClassVar[frozenset[str]] = frozenset({"authorization"})
    supports_routing: ClassVar[bool] = False
    # requests must reach the partner one at a time, in the order the encoder made them: a
    # later request may undo an earlier one (a user added, then removed). The run sends
    # such a sink's requests with a concurrency of 1.
    ordered: ClassVar[bool] = False
    # settings that make a working sink in tests (the conformance suite), secrets fake
    example_settings: ClassVar[Mapping[str, Any]] = {}
    # by item kind, the destination fields a valid item carries (the conformance suite's
    # items: e.g. an id the partner requires); none when items need none
    example_fields: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    documented_answers: ClassVar[tuple[tuple[int, bytes, type[Any]], ...]] = ()
    batch_policy: BatchPolicy = BatchPolicy()

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    def check_settings(self) -> list[tuple[str, str]]:
        problems = [
            (k, f"unknown setting {k!r} for destination {self.name!r}")
            for k in self.settings
            if k not in self.settings_doc
        ]
        problems += [
            (k, f"destination {self.name!r} needs setting {k!r}")
            for k in sorted(self.required_settings)
            if k not in self.settings
        ]
        return problems

    @abstractmethod
    def encoder(self) -> SinkEncoder:
        """A fresh encoder: items in, requests out, by ``batch_policy``."""

    @abstractmethod
    def classify(self, request: WireRequest, response: Response) -> Verdict:
        """What the partner's answer to ``request`` means, as one verdict."""

    def rate_limits(self) -> list[RateLimit]:
        return []


def kind_problem(sink: type[Sink] | Sink, kind: str) -> str | None:
    """Why ``sink`` cannot take items of ``kind`` (a validate error), or None when it can."""
    if kind in sink.accepts:
        return None
    what = KINDS.get(kind, kind)
    return (
        f"destination {sink.name!r} cannot take {kind!r} items ({what}); it accepts: "
        f"{', '.join(sorted(sink.accepts))}"
    )


CONNECTOR_GROUP = "moerules.connectors"
"""The entry-point group connectors are registered in: the one registry, so a package that
declares ``[project.entry-points."moerules.connectors"] name = "module:Class"`` adds a
connector without any change to moerules."""

EMULATOR_GROUP = "moerules.emulators"
"""The entry-point group of local partner emulators (``moerules emulate NAME``): a separate
group, since an emulator often comes before its connector (amplitude, segment, mixpanel) and a
test tool is no part of a connector's class. The value is a callable returning an ``Emulator``."""


def _registered(group: str) -> dict[str, EntryPoint]:
    """Name -> entry point; the first registration of a name wins (one per distribution)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep)
    return found


def packaged_schema(package: str, name: str) -> Mapping[str, Any]:
    """A JSON Schema file shipped in a connector's package, for ``Source.record_schema``."""
    import json
    from importlib import resources

    schema: Mapping[str, Any] = json.loads(
        resources.files(package).joinpath(name).read_text(encoding="utf-8")
    )
    return schema


def connector_names() -> list[str]:
    """The names of every installed connector, sources and sinks."""
    return sorted(_registered(CONNECTOR_GROUP))


def load_connector(name: str) -> type[Source] | type[Sink] | None:
    """The connector class registered as ``name``, or None when none is."""
    ep = _registered(CONNECTOR_GROUP).get(name)
    if ep is None:
        return None
    cls: type[Source] | type[Sink] = ep.load()
    return cls


def emulator_names() -> list[str]:
    """The names of every installed emulator."""
    return sorted(_registered(EMULATOR_GROUP))


def load_emulator(name: str) -> Callable[..., Any] | None:
    """The emulator factory registered as ``name``, or None when none is."""
    ep = _registered(EMULATOR_GROUP).get(name)
    if ep is None:
        return None
    factory: Callable[..., Any] = ep.load()
    return factory
