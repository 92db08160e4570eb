"""One record at a time through a compiled bundle: what happens to each of its items.

``moerules diff`` and the playground compare bundles record by record, which a run does not
show: the dry run batches many records into one request and counts outcomes in totals. A
``RecordRunner`` feeds each line through the same ``Pipeline`` the dry run uses and closes
the encoder's requests after every line, so what it reports for a line is exactly what the
dry run would send, drop or dead-letter for it, split by item:

>>> runner = RecordRunner(load_bundle("mparticle-to-moengage"))     # doctest: +SKIP
>>> record = runner.run(1, line)                                    # doctest: +SKIP
>>> [(o.slot, o.outcome, o.name) for o in record.items]             # doctest: +SKIP
[(-1, 'sent', ''), (0, 'dropped', ''), (1, 'sent', 'Viewed Product')]

Items are keyed by their *slot* in the record: the index of the event they came from, or
``USER_SLOT`` for the record's own user update (the bundle's ``user`` section), or
``LINE_SLOT`` for a line that could not be read at all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.runtime.deadletter import DeadLetterWriter
from moerules.engine.runtime.input import LongLine
from moerules.engine.runtime.pipeline import Pipeline
from moerules.engine.runtime.report import RunReport

__all__ = ["LINE_SLOT", "USER_SLOT", "ItemOutcome", "RecordOutcome", "RecordRunner"]

USER_SLOT = -1
"""The record's own user update (the bundle's ``user`` section)."""
LINE_SLOT = -2
"""The whole line, when it could not be read as a record (or failed as a whole)."""

FIRST_USER_CHANGE_SLOT = -3
"""The record's user changes that ``user.drop`` dropped: slots -3, -4, ..., in order."""

SENT, DROPPED, DEAD = "sent", "dropped", "dead-lettered"


@dataclass(slots=True)
class ItemOutcome:
    """What became of one item of a record."""

    slot: int
    outcome: str  # sent, dropped or dead-lettered
    kind: str = ""  # for sent items: event or user
    name: str = ""  # the event name
    identity: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    route: str | None = None  # the routing target (MoEngage: a project code); None: default
    url: str = ""  # the request that carries it
    reason: str = ""  # why it was dropped or dead-lettered
    error: str = ""
    rule: str | None = None

    def label(self) -> str:
        """``event 2`` / ``user update`` / ``line``: where the item sits in its record."""
        if self.slot == USER_SLOT:
            return "user update"
        if self.slot == LINE_SLOT:
            return "line"
        if self.slot <= FIRST_USER_CHANGE_SLOT:
            return f"user change {FIRST_USER_CHANGE_SLOT - self.slot + 1}"
        return f"event {self.slot}"


class RecordOutcome:
    """Every item of one input line, by slot, and the requests the line alone makes.

    Built cheaply (the requests and the drop and dead-letter logs as the pipeline left
    them); ``items`` is worked out on first use, so comparing two outcomes that are the same
    costs a comparison of request bodies and little else.
    """

    __slots__ = ("_items", "dead", "drops", "events", "line", "requests", "user_drops")

    def __init__(
        self,
        line: int,
        requests: list[Any],
        drops: list[str],
        dead: list[tuple[int, str, str, str | None]],
        events: int,
        user_drops: list[str] | None = None,
    ) -> None:
        self.line = line
        self.requests = requests  # WireRequests, each with the items it carries
        self.drops = drops  # drop reasons, in event order
        self.dead = dead  # (slot, reason, error, rule)
        self.events = events  # events in the record
        self.user_drops = user_drops or []  # user changes dropped (``user.drop``), in order
        self._items: list[ItemOutcome] | None = None

    def same_as(self, other: RecordOutcome) -> bool:
        """True when the two outcomes would look the same on the wire and in the report."""
        if (
            self.drops != other.drops
            or self.user_drops != other.user_drops
            or [d[:2] for d in self.dead] != [d[:2] for d in other.dead]
            or len(self.requests) != len(other.requests)
        ):
            return False
        return all(
            a.url == b.url and a.body == b.body
            for a, b in zip(self.requests, other.requests, strict=True)
        )

    @property
    def size(self) -> int:
        """How many items the line has (sent, dropped or dead-lettered)."""
        if self._items is not None:
            return len(self._items)
        sent = {item.ref[1] for request in self.requests for item in request.items}
        return len(sent) + len(self.dead) + min(len(self.drops), self.events) + len(self.user_drops)

    @property
    def items(self) -> list[ItemOutcome]:
        """Each item's outcome, in slot order."""
        if self._items is None:
            self._items = self._build()
        return self._items

    def _build(self) -> list[ItemOutcome]:
        items: dict[int, ItemOutcome] = {}
        for request in self.requests:
            for item in request.items:
                slot = item.ref[1]
                items[slot] = ItemOutcome(
                    slot,
                    SENT,
                    kind=_kind(item),
                    name=getattr(item, "name", "") or "",
                    identity=item.identity,
                    attributes=item.attributes,
                    fields=getattr(item, "fields", None) or {},
                    route=getattr(item, "route", getattr(item, "project", None)),
                    url=request.url,
                    rule=item.rule,
                )
        for slot, reason, error, rule in self.dead:
            items[slot] = ItemOutcome(slot, DEAD, reason=reason, error=error, rule=rule)
        open_slots = [i for i in range(self.events) if i not in items]
        for slot, reason in zip(open_slots, self.drops, strict=False):
            items[slot] = ItemOutcome(slot, DROPPED, reason=reason)
        for k, reason in enumerate(self.user_drops):
            slot = FIRST_USER_CHANGE_SLOT - k
            items[slot] = ItemOutcome(slot, DROPPED, kind="user", reason=reason)
        return [items[k] for k in sorted(items)]


class _DropLog(Counter[str]):
    """The ledger's drop counter, also remembering each drop's reason in order. The pipeline
    drops a record's user changes (``user.drop``) before it counts the record's events, then
    its events in event order: so a drop logged before the events are counted is a user
    change, and the n-th drop after is the n-th event that was neither sent nor
    dead-lettered."""

    def __init__(self, ledger: Any) -> None:
        super().__init__()
        self.ledger = ledger
        self.events_before = 0  # the ledger's events_in when the line started
        self.log: list[str] = []  # event drops
        self.user_log: list[str] = []  # user changes dropped

    def __setitem__(self, key: str, value: int) -> None:
        added = value - self.get(key, 0)
        if added > 0:
            log = self.log if self.ledger.events_in > self.events_before else self.user_log
            log.extend([key] * added)
        super().__setitem__(key, value)


class _DeadLetterLog(DeadLetterWriter):
    """Dead letters kept in memory, by slot, instead of written to a file."""

    def __init__(self, compiled: CompiledBundle) -> None:
        super().__init__(None, compiled.model.bundle, compiled.secrets)
        self.log: list[tuple[int, str, str, str | None]] = []

    def write(
        self,
        reason: str,
        *,
        record: Any = None,
        raw: bytes | None = None,
        error: str = "",
        line: int | None = None,
        rule: str | None = None,
        **extra: Any,
    ) -> None:
        super().write(reason, record=record, raw=raw, error=error, line=line, rule=rule)
        index = extra.get("event_index")
        slot = (
            index
            if isinstance(index, int)
            else (USER_SLOT if rule is not None and raw is None else LINE_SLOT)
        )
        self.log.append((slot, reason, error, rule))


class RecordRunner:
    """Runs lines one at a time through a compiled bundle, as its dry run would."""

    def __init__(self, compiled: CompiledBundle) -> None:
        self.compiled = compiled
        self.report = RunReport(bundle=compiled.model.bundle, dry_run=True)
        ledger = self.report.ledger
        self._drops = _DropLog(ledger)
        ledger.dropped = self._drops
        self._dead = _DeadLetterLog(compiled)
        self.pipeline = Pipeline(compiled, self.report, self._dead)
        self._names = {code: name for name, code in compiled.projects}

    def project_name(self, route: str | None) -> str | None:
        """The routing target's name (MoEngage: the project whose code it is)."""
        return None if route is None else self._names.get(route, route)

    def requests(self, line_no: int, line: bytes | LongLine) -> list[Any]:
        """The requests this line alone makes (the encoder is closed after it)."""
        pipeline = self.pipeline
        out = pipeline.feed(line_no, line)
        held = pipeline.encoder.flush()
        return out + held if out else held

    def run(self, line_no: int, line: bytes | LongLine) -> RecordOutcome:
        """Everything that becomes of one input line."""
        ledger = self.report.ledger
        log = self._drops
        log.events_before = ledger.events_in
        drops, user_drops, dead = log.log, log.user_log, self._dead.log
        requests = self.requests(line_no, line)
        log.log, log.user_log, self._dead.log = [], [], []
        return RecordOutcome(
            line_no, requests, drops, dead, ledger.events_in - log.events_before, user_drops
        )

    def finish(self) -> RunReport:
        """The totals of every line run, as the dry run's report would count them."""
        self.pipeline.warn_routing()
        return self.report


def _kind(item: Any) -> str:
    kind = getattr(item, "kind", None)
    if isinstance(kind, str):
        return kind
    return "user" if type(item).__name__ == "UserOut" else "event"
