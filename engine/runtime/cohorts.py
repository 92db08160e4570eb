"""Cohort flows: webhook payloads in, only the difference out.

The feed of a bundle whose source is a ``CohortSource`` (engine/cohorts.py), used by ``run``
(dry or real) and ``explain`` in place of the event ``Pipeline``::

    payload ──► source.message ──► identity rules ──► Reconciler ──► COHORT_MEMBERSHIP items
                (cohort, action,    (each member's      (state: what the   (only what the
                 key, page, time)    user id)            partner asked,     destination lacks)
                                                          what is synced)
                                     settled ◄── the destination's acknowledgements

What the reconciler decides, per word the partner says about a user (in or out):

- a word older than the one kept (by version: the partner's time, then the order its
  message was first seen) or a repeat of it changes nothing;
- a full export (``FULL``) is held, page by page, until every page of it has arrived; then
  its members are in and everyone else the state has in (with an older word) is out. An
  export that is not complete changes nothing and is reported; a complete one older than
  another already applied only repeats what it says;
- what then differs from what the destination holds (acknowledged, or in flight in this
  run) is sent; a change sent and not acknowledged stays different and goes again on the
  next run that touches the cohort (first, before the new words).

Every word is one unit of the run's ledger: delivered (its change acknowledged; in a dry run,
made), dropped with a reason (unchanged, repeat, superseded, unmatched) or dead-lettered. The
pages of an export that is not complete are not units yet: the report's cohort section shows
them held. A dry run reads the state and never writes it: the membership evolves in memory,
so its requests, applied in order, give the final membership.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from moerules.engine.cohorts import (
    ENTERED,
    FULL,
    CohortMessage,
    CohortSink,
    CohortSource,
    InvalidCohortName,
)
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.connector import (
    COHORT_MEMBERSHIP,
    Item,
    Refused,
    SinkEncoder,
    WireRequest,
)
from moerules.engine.errors import RecordError
from moerules.engine.runtime.deadletter import DeadLetterWriter
from moerules.engine.runtime.input import LINE_TOO_LONG, LongLine
from moerules.engine.runtime.membership import (
    Cohort,
    CohortKey,
    Export,
    Member,
    MembershipStore,
    Version,
)
from moerules.engine.runtime.report import RunReport

__all__ = [
    "INVALID_NAME",
    "REPEAT",
    "SUPERSEDED",
    "UNCHANGED",
    "UNITS",
    "UNMATCHED",
    "CohortFeed",
    "CohortReport",
    "Decision",
    "Reconciler",
    "feed_for",
]

UNITS = "cohort memberships"
UNMATCHED = "unmatched: no usable user id"
UNCHANGED = "unchanged: the destination has it so already"
REPEAT = "repeat of a word already received"
SUPERSEDED = "superseded by a later word"
INVALID_NAME = "invalid cohort name"
# what made a change (the item's ``rule``, shown in dead letters)
_ENTERED, _LEFT, _LISTED, _ABSENT, _CARRIED = (
    "entered",
    "left",
    "in the full export",
    "absent from the full export",
    "not acknowledged by an earlier run",
)


@dataclass(slots=True)
class Decision:
    """One word about one user and what came of it: a change to send (``member``), or none
    (``member`` None, ``reason`` the drop reason). ``index`` is the member's position in the
    payload, -1 for a word the payload implies (a removal, a change carried over)."""

    uid: str
    index: int
    member: bool | None
    reason: str
    why: str


@dataclass(slots=True)
class CohortStats:
    """One cohort's line of the run report."""

    partner: str
    cohort_id: str
    name: str = ""
    segment: str = ""
    added: int = 0
    removed: int = 0
    unchanged: int = 0
    unmatched: int = 0
    repeats: int = 0
    superseded: int = 0
    failed: int = 0
    refused: int = 0  # payloads dead-lettered whole: a name the destination refuses
    requests: int = 0
    held: list[tuple[str, int, int, int]] = field(default_factory=list)  # key, got, pages, uids
    superseded_exports: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "partner": self.partner,
            "cohort_id": self.cohort_id,
            "name": self.name,
            "segment": self.segment,
            "added": self.added,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "unmatched": self.unmatched,
            "repeats": self.repeats,
            "superseded": self.superseded,
            "failed": self.failed,
            "refused_payloads": self.refused,
            "requests": self.requests,
            "incomplete_exports": [
                {"key": k, "pages_arrived": g, "pages": p, "members_held": n}
                for k, g, p, n in self.held
            ],
            "superseded_exports": list(self.superseded_exports),
        }


class CohortReport:
    """The run report's ``cohorts`` part: per cohort, what was sent and why not."""

    def __init__(self, sent_verb: str) -> None:
        self.cohorts: dict[CohortKey, CohortStats] = {}
        self.sent_verb = sent_verb

    def of(self, key: CohortKey) -> CohortStats:
        found = self.cohorts.get(key)
        if found is None:
            found = self.cohorts[key] = CohortStats(key.partner, key.cohort_id)
        return found

    def to_dict(self) -> list[dict[str, Any]]:
        return [stats.to_dict() for stats in self.cohorts.values()]

    def summary_lines(self) -> list[str]:
        if not self.cohorts:
            return []
        lines = ["  cohorts"]
        for s in self.cohorts.values():
            counts = [
                f"{s.added} added",
                f"{s.removed} removed",
                f"{s.unchanged} unchanged",
                f"{s.unmatched} unmatched",
            ]
            counts += [
                f"{n} {what}"
                for n, what in (
                    (s.repeats, "repeated"),
                    (s.superseded, "superseded"),
                    (s.failed, "failed"),
                )
                if n
            ]
            if s.refused:
                counts.append(
                    f"{s.refused} payload{'s' if s.refused != 1 else ''} refused (invalid name)"
                )
            lines.append(
                f"    {s.partner} {s.cohort_id} {s.name!r} -> segment {s.segment!r}: "
                + ", ".join(counts)
                + f", {s.requests} request"
                f"{'s' if s.requests != 1 else ''} {self.sent_verb}"
            )
            for key, got, pages, uids in s.held:
                lines.append(
                    f"      export {key!r} incomplete: {got} of {pages} pages arrived "
                    f"({_n(uids, 'member')} held; nobody removed)"
                )
            for key in s.superseded_exports:
                lines.append(f"      export {key!r} superseded by a later full export: not applied")
        return lines


def _version_text(version: Version) -> str:
    return f"#{version[1]}" if not version[0] else f"#{version[1]} at {version[0]} ms"


class Reconciler:
    """Messages in, decisions out, against the membership state (see the module docstring).

    ``in_flight`` holds, per (cohort, user), the change sent last in this run and not yet
    settled: what the destination will hold once it is acknowledged.
    """

    def __init__(self, store: MembershipStore, scope: str, partner: str) -> None:
        self.store = store
        self.scope = scope
        self.partner = partner
        self.in_flight: dict[tuple[CohortKey, str], tuple[bool, int]] = {}
        self.touched: set[CohortKey] = set()
        self.superseded: list[tuple[CohortKey, str]] = []  # exports a later one made moot
        self._tokens = 0

    def key(self, cohort_id: str) -> CohortKey:
        return CohortKey(self.scope, self.partner, cohort_id)

    def holds(self, cohort: Cohort, uid: str, member: Member | None) -> bool | None:
        """What the destination holds for ``uid``, counting changes in flight; None when it
        is not known (a change whose answer never came: a crash, a failed request)."""
        sent = self.in_flight.get((cohort.key, uid))
        if sent is not None:
            return sent[0]
        if member is None:
            return False
        return None if member.pending else member.synced

    def check(self, message: CohortMessage) -> None:
        """RecordError, before anything is stored, when the message contradicts what came
        before it (another page count for the same export)."""
        if message.action != FULL:
            return
        cohort = self.store.cohort(self.key(message.cohort_id))
        export = cohort.exports.get(message.key)
        pages = message.pages or 1
        if export is not None and export.pages != pages:
            raise RecordError(
                "export pages disagree",
                f"this page says the export {message.key!r} has {pages} pages; "
                f"an earlier page said {export.pages}",
            )

    def receive(
        self,
        message: CohortMessage,
        segment: str,
        facts: Sequence[tuple[int, str]],
        first_index: int,
    ) -> tuple[list[Decision], Cohort]:
        """What the message's words (``facts``: (member index, user id)) decide. Derived words
        get indices from ``first_index`` on. The caller holds the store's transaction."""
        store = self.store
        cohort = store.cohort(self.key(message.cohort_id))
        decisions: list[Decision] = []
        if cohort.key not in self.touched:  # first, what an earlier run left different
            self.touched.add(cohort.key)
            for uid, member in cohort.members.items():
                if member.wanted != self.holds(cohort, uid, member):
                    decisions.append(
                        Decision(
                            uid,
                            -1,
                            member.wanted,
                            _CARRIED,
                            f"the partner's latest word says {_in(member.wanted)}; the destination "
                            "has not acknowledged that (an earlier run did not send it, or never "
                            "heard the answer)",
                        )
                    )
        store.name(cohort, message.name, segment, message.description)
        known = store.message(cohort, message.key)
        seq = known[0] if known is not None else store.new_message(cohort, message.key)
        version: Version = (message.at, seq)
        if message.action != FULL:
            entered = message.action == ENTERED
            label = _ENTERED if entered else _LEFT
            for index, uid in facts:
                decisions.append(
                    self.word(
                        cohort, uid, entered, version, index, label, f"message {message.key!r}"
                    )
                )
            return decisions, cohort
        complete = known is not None and known[1]
        if complete or version <= cohort.floor:  # applied before, or older than the latest
            for index, uid in facts:
                decisions.append(
                    self.word(
                        cohort, uid, True, version, index, _LISTED, f"full export {message.key!r}"
                    )
                )
            return decisions, cohort
        export = cohort.exports.get(message.key) or Export(message.key, message.pages or 1, version)
        page = message.page if message.page is not None else 0
        if page not in export.got:
            store.page(cohort, export, page, [uid for _, uid in facts])
        if not export.complete:
            return decisions, cohort
        decisions += self.apply_export(cohort, export, facts, first_index)
        return decisions, cohort

    def apply_export(
        self, cohort: Cohort, export: Export, facts: Sequence[tuple[int, str]], first_index: int
    ) -> list[Decision]:
        """Every page of ``export`` arrived: its members in, everyone else out."""
        store = self.store
        version = export.version
        where = f"full export {export.key!r}"
        index_of = {uid: index for index, uid in facts}
        listed: dict[str, None] = {}  # in page order, each once
        for page in sorted(export.got):
            for uid in export.got[page]:
                listed.setdefault(uid, None)
        decisions: list[Decision] = []
        next_index = first_index
        for uid in listed:
            index = index_of.get(uid)
            if index is None:
                index, next_index = next_index, next_index + 1
            decisions.append(self.word(cohort, uid, True, version, index, _LISTED, where))
        for uid, member in list(cohort.members.items()):
            if member.wanted and member.version < version and uid not in listed:
                decisions.append(self.word(cohort, uid, False, version, next_index, _ABSENT, where))
                next_index += 1
        # one transaction with the words above: once they are stored, the pages are not
        # needed again (what is not acknowledged yet is carried over by the next run)
        store.floor(cohort, version)
        store.complete_message(cohort, export.key)
        store.drop_export(cohort, export.key)
        for other in list(cohort.exports.values()):
            if other.version < version:
                store.drop_export(cohort, other.key)
                self.superseded.append((cohort.key, other.key))
        # rows the floor makes redundant: out, acknowledged out, nothing in flight
        store.forget(
            cohort,
            [
                uid
                for uid, m in cohort.members.items()
                if not m.wanted
                and not m.synced
                and not m.pending
                and m.version < version
                and (cohort.key, uid) not in self.in_flight
            ],
        )
        return decisions

    def word(
        self,
        cohort: Cohort,
        uid: str,
        member: bool,
        version: Version,
        index: int,
        label: str,
        where: str,
    ) -> Decision:
        """The partner's word ``member`` on ``uid`` at ``version``: what comes of it."""
        kept = cohort.members.get(uid)
        current = kept.version if kept is not None else cohort.floor
        says = _in(member)
        if version > current:
            kept = self.store.want(cohort, uid, member, version)
            why = f"{label} ({where})"
            if self.holds(cohort, uid, kept) == member:
                return Decision(
                    uid,
                    index,
                    None,
                    UNCHANGED,
                    f"{why}; the destination {'has it already' if member else 'does not have it'}",
                )
            return Decision(
                uid,
                index,
                member,
                label,
                f"{why}; the destination {'does not have it yet' if member else 'still has it'}",
            )
        wanted = kept.wanted if kept is not None else False
        if kept is not None and version == current and wanted == member:
            reason, why = REPEAT, f"{where} said {says} before: a repeat"
        else:
            reason = SUPERSEDED
            why = (
                f"{where} says {says}, but a later word ({_version_text(current)}) says "
                f"{_in(wanted)}"
            )
        if self.holds(cohort, uid, kept) == wanted:
            return Decision(uid, index, None, reason, why)
        # the destination still lacks the latest word (a change that failed in this run)
        return Decision(uid, index, wanted, label, why + "; the destination lacks that")

    def sent(self, cohort: Cohort, uid: str, member: bool) -> int:
        """A change is on its way: what the destination will hold. Marks the user pending in
        the state (before the request can leave). Returns the change's token."""
        self._tokens += 1
        self.in_flight[cohort.key, uid] = (member, self._tokens)
        self.store.pending(cohort, uid)
        return self._tokens

    def latest(self, key: CohortKey, uid: str, token: int) -> bool:
        """True when the change ``token`` is the last one sent for the user."""
        sent = self.in_flight.get((key, uid))
        return sent is not None and sent[1] == token

    def settled(self, key: CohortKey, uid: str, token: int) -> None:
        """A change reached its outcome; the state's ``synced`` says what the destination
        holds from now on (unless a later change is still in flight)."""
        if self.latest(key, uid, token):
            del self.in_flight[key, uid]


def _in(member: bool) -> str:
    return "in" if member else "out"


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


class _CountingEncoder(SinkEncoder):
    """The sink's encoder, counting the requests it makes per cohort for the report."""

    def __init__(self, inner: SinkEncoder, count: Callable[[list[WireRequest]], None]) -> None:
        self.inner = inner
        self.count = count

    def add(self, item: Item) -> list[WireRequest]:
        requests = self.inner.add(item)
        self.count(requests)
        return requests

    def add_all(self, items: Sequence[Item]) -> tuple[list[WireRequest], list[Refused]]:
        requests, refused = self.inner.add_all(items)
        self.count(requests)
        return requests, refused

    def flush(self) -> list[WireRequest]:
        requests = self.inner.flush()
        self.count(requests)
        return requests

    def until_next(self, now: float | None = None) -> float | None:
        return self.inner.until_next(now)


@dataclass(slots=True)
class _Sent:
    """What the feed remembers of an item on its way: its cohort and its change's token."""

    key: CohortKey
    token: int


Tracer = Callable[[int, str, Any], None]
"""``tracer(member index, step, data)``: what explain is told as the feed decides."""


class CohortFeed:
    """Webhook payload lines in, Cohort Sync requests out (the delivery loop's feed).

    ``dry_run``: nothing is sent and the state file is only read; what would be sent counts
    as acknowledged when it is made. ``reconciles``: the items are recomputed from the state
    on every read, so a rerun must not skip them by their input position.
    """

    reconciles = True

    def __init__(
        self,
        compiled: CompiledBundle,
        report: RunReport,
        dead: DeadLetterWriter,
        *,
        dry_run: bool,
        tracer: Tracer | None = None,
    ) -> None:
        source, sink = compiled.source, compiled.sink
        assert isinstance(source, CohortSource) and isinstance(sink, CohortSink)
        self.compiled = compiled
        self.source: CohortSource = source
        self.sink: CohortSink = sink
        self.report = report
        self.ledger = report.ledger
        self.dead = dead
        self.dry_run = dry_run
        self.tracer = tracer
        self.store = MembershipStore(sink.state, durable=not dry_run)
        self.reconciler = Reconciler(self.store, sink.membership_scope, source.partner)
        self.part = CohortReport("made" if dry_run else "acknowledged")
        report.units = UNITS
        report.parts["cohorts"] = self.part
        self.encoder: SinkEncoder = _CountingEncoder(sink.encoder(), self._count)
        self._sent: dict[int, _Sent] = {}  # id(item) -> what it carries
        self._named: set[CohortKey] = set()  # cohorts whose name problem was reported

    # -- the loop's side ---------------------------------------------------------------------
    def feed(self, line_no: int, line: bytes | LongLine) -> list[WireRequest]:
        ledger = self.ledger
        ledger.lines += 1
        if isinstance(line, LongLine):  # cut short by the reader: only its excerpt is here
            ledger.unreadable_line(LINE_TOO_LONG)
            self.dead.write(
                LINE_TOO_LONG,
                raw=line.excerpt,
                error=line.error,
                line=line_no,
                line_bytes=line.length,
            )
            return []
        try:
            record = self.source.decode(line)
            message = self.source.message(record)
        except RecordError as exc:
            return self._unreadable(exc.reason, exc.detail, line_no, raw=line)
        key = self.reconciler.key(message.cohort_id)
        stats = self.part.of(key)
        stats.name = message.name
        try:
            segment = self.sink.segment_name(message.segment)
        except InvalidCohortName as exc:
            stats.segment = message.segment
            stats.refused += 1
            if key not in self._named:
                self._named.add(key)
                self.report.warnings.append(
                    f"{message.partner} cohort {message.cohort_id} ({message.name!r}): {exc}"
                )
            return self._unreadable(INVALID_NAME, str(exc), line_no, record=record)
        stats.segment = segment
        self._trace(-1, "message", {"message": message, "segment": segment})
        facts = self._identities(record, message, line_no, stats)
        try:
            self.reconciler.check(message)
        except RecordError as exc:
            return self._unreadable(exc.reason, exc.detail, line_no, record=record)
        store = self.store
        store.begin()  # the line's words, and its changes marked pending: one transaction
        try:
            decisions, cohort = self.reconciler.receive(
                message, segment, facts, len(message.members)
            )
            items, notes = self._decided(decisions, cohort, message, line_no, stats)
            store.commit()
        except BaseException:
            store.rollback()
            raise
        export = cohort.exports.get(message.key) if message.action == FULL else None
        if export is not None and self.tracer is not None:
            for index, uid in facts:
                self._trace(
                    index,
                    "held",
                    f"{uid}: export {message.key!r} has "
                    f"{len(export.got)} of {export.pages} pages; nothing changes until "
                    "every page has arrived",
                )
        return self._send(items, notes, cohort, line_no, stats)

    def _identities(
        self, record: dict[str, Any], message: CohortMessage, line_no: int, stats: Any
    ) -> list[tuple[int, str]]:
        """(index, user id) of the members the identity rules find an id for; the others
        are units of their own: unmatched, or dead-lettered when the rules failed."""
        identity = self.compiled.identity
        assert identity is not None  # cohort_problems: a cohort bundle has one
        ledger = self.ledger
        facts: list[tuple[int, str]] = []
        traced = self.compiled.traced
        for index, member in enumerate(message.members):
            trace: list[tuple[Any, ...]] = []
            try:
                if not isinstance(member, dict):
                    raise RecordError(
                        "member is not a JSON object", f"got a JSON {type(member).__name__}"
                    )
                uid = (
                    identity(record, member, trace) if traced else identity(record, member)
                ).value
            except RecordError as exc:
                ledger.events_in += 1
                ledger.dead_letter(exc.reason)
                stats.failed += 1
                self.dead.write(
                    exc.reason, record=member, error=exc.detail, line=line_no, event_index=index
                )
                self._trace(index, "dead", exc.reason)
                continue
            self._trace(index, "identity", trace)
            if uid is None:
                ledger.events_in += 1
                ledger.drop(UNMATCHED)
                stats.unmatched += 1
                self._trace(
                    index,
                    "decision",
                    Decision(
                        "",
                        index,
                        None,
                        UNMATCHED,
                        "none of the identity candidates has a usable value; not sent",
                    ),
                )
                continue
            facts.append((index, uid))
        return facts

    def _decided(
        self,
        decisions: list[Decision],
        cohort: Cohort,
        message: CohortMessage,
        line_no: int,
        stats: CohortStats,
    ) -> tuple[list[Item], dict[int, _Sent]]:
        """Decisions into ledger units and the items of the changes to send."""
        ledger = self.ledger
        reconciler = self.reconciler
        items: list[Item] = []
        notes: dict[int, _Sent] = {}
        index = len(message.members) + len(decisions)  # past any index a decision has
        for decision in decisions:
            ledger.events_in += 1
            self._trace(decision.index, "decision", decision)
            if decision.member is None:
                ledger.drop(decision.reason)
                if decision.reason == UNCHANGED:
                    stats.unchanged += 1
                elif decision.reason == REPEAT:
                    stats.repeats += 1
                elif decision.reason == SUPERSEDED:
                    stats.superseded += 1
                continue
            ref_index = decision.index
            if ref_index < 0:
                ref_index, index = index, index + 1
            item = Item(
                COHORT_MEMBERSHIP,
                decision.uid,
                cohort.segment,
                {},
                {
                    "cohort_id": cohort.key.cohort_id,
                    "member": decision.member,
                    "description": cohort.description,
                },
                None,
                (line_no, ref_index),
                decision.reason,
            )
            items.append(item)
            notes[id(item)] = _Sent(
                cohort.key, reconciler.sent(cohort, decision.uid, decision.member)
            )
        for key, export in reconciler.superseded:
            self.part.of(key).superseded_exports.append(export)
        reconciler.superseded.clear()
        self._held(cohort, stats)
        return items, notes

    def _send(
        self,
        items: list[Item],
        notes: dict[int, _Sent],
        cohort: Cohort,
        line_no: int,
        stats: CohortStats,
    ) -> list[WireRequest]:
        """The items into the sink's encoder; one it refuses is dead-lettered (never sent)."""
        if not items:
            return []
        ledger, reconciler = self.ledger, self.reconciler
        requests, refused = self.encoder.add_all(items)
        for item, reason, error in refused:
            note = notes.pop(id(item))
            if reconciler.latest(note.key, item.identity, note.token):
                self.store.unsent(cohort, item.identity)
            reconciler.settled(note.key, item.identity, note.token)
            ledger.dead_letter(reason)
            stats.failed += 1
            self.dead.write(
                reason,
                record={"uid": item.identity, "segment": item.name, **item.fields},
                error=error,
                line=line_no,
                rule=item.rule,
                event_index=item.ref[1],
            )
        for item in items:
            kept = notes.get(id(item))
            if kept is None:
                continue
            self._sent[id(item)] = kept
            if self.dry_run:  # made is as good as acknowledged
                self._acknowledged(item, kept)
        ledger.take(COHORT_MEMBERSHIP, True, len(items) - len(refused))
        return requests

    def _held(self, cohort: Cohort, stats: CohortStats) -> None:
        """The exports of ``cohort`` still waiting for pages, as the report shows them."""
        stats.held = [
            (e.key, len(e.got), e.pages, sum(len(u) for u in e.got.values()))
            for e in cohort.exports.values()
        ]

    def _acknowledged(self, item: Item, note: _Sent) -> None:
        stats = self.part.of(note.key)
        if item.fields["member"]:
            stats.added += 1
        else:
            stats.removed += 1

    def settled(self, items: list[Item], delivered: int) -> None:
        """Items reached their outcome; the last ``delivered`` of them were delivered (the
        Sender lists rejected items first). The delivered ones are now what the destination
        holds: written to the state at once. A user whose change failed stays pending: the
        next run sends the partner's latest word for it again."""
        ok = items[len(items) - delivered :] if delivered else []
        groups: dict[tuple[CohortKey, bool], tuple[list[str], list[str]]] = {}
        for item in ok:
            note = self._sent.get(id(item))
            if note is not None:
                uids, done = groups.setdefault((note.key, bool(item.fields["member"])), ([], []))
                uids.append(item.identity)
                if self.reconciler.latest(note.key, item.identity, note.token):
                    done.append(item.identity)
        for (key, member), (uids, done) in groups.items():
            self.store.synced(self.store.cohort(key), uids, member, settled=done)
        delivered_ids = {id(item) for item in ok}
        for item in items:
            note = self._sent.pop(id(item), None)
            if note is None:
                continue
            self.reconciler.settled(note.key, item.identity, note.token)
            if id(item) in delivered_ids:
                if not self.dry_run:
                    self._acknowledged(item, note)
            else:
                self.part.of(note.key).failed += 1

    def _count(self, requests: list[WireRequest]) -> None:
        for request in requests:
            for cohort_id in {str(item.fields.get("cohort_id")) for item in request.items}:
                self.part.of(self.reconciler.key(cohort_id)).requests += 1

    def finish(self) -> list[WireRequest]:
        """What the encoder holds, and the report's account of exports still incomplete."""
        requests = self.encoder.flush()
        self._account()
        return requests

    def stopped(self) -> None:
        self._account()

    def close(self) -> None:
        self.store.close()

    def _account(self) -> None:
        for cohort in self.store.cohorts():
            stats = self.part.of(cohort.key)
            self._held(cohort, stats)
            for key, got, pages, uids in stats.held:
                self.report.warnings.append(
                    f"{cohort.key.partner} cohort {cohort.key.cohort_id} ({cohort.name!r}): "
                    f"export {key!r} is incomplete ({got} of {pages} pages arrived): "
                    f"{_n(uids, 'member')} held, and nobody is removed until every page "
                    "arrives"
                )

    def _unreadable(
        self,
        reason: str,
        detail: str,
        line_no: int,
        *,
        raw: bytes | None = None,
        record: Any = None,
    ) -> list[WireRequest]:
        self.ledger.unreadable_line(reason)
        if record is not None:
            self.dead.write(reason, record=record, error=detail, line=line_no)
        else:
            self.dead.write(reason, raw=raw, error=detail, line=line_no)
        self._trace(-1, "dead", f"{reason}: {detail}")
        return []

    def _trace(self, index: int, step: str, data: Any) -> None:
        if self.tracer is not None:
            self.tracer(index, step, data)

    def run(self, lines: Iterator[tuple[int, bytes | LongLine]]) -> Iterator[WireRequest]:
        """A dry run's loop: every line, then what is held."""
        for line_no, line in lines:
            yield from self.feed(line_no, line)
        yield from self.finish()


def feed_for(
    compiled: CompiledBundle, report: RunReport, dead: DeadLetterWriter, *, dry_run: bool
) -> Any:
    """The feed of a bundle: a ``CohortFeed`` for a cohort source, else the event
    ``Pipeline``."""
    if isinstance(compiled.source, CohortSource):
        return CohortFeed(compiled, report, dead, dry_run=dry_run)
    from moerules.engine.runtime.pipeline import Pipeline

    return Pipeline(compiled, report, dead)
