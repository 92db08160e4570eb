"""The per-record path: decode, identity, user attributes, event rules, routing, encode.

Everything here is bookkeeping around the compiled functions: it records in the run's ledger
what it read and each outcome it decides (dropped, dead-lettered, taken by the sink),
dead-letters what cannot be processed, and hands mapped items to the sink's encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from moerules.engine.compile.compiler import (
    ROUTE_BLANK,
    ROUTE_MISSING,
    ROUTE_UNKNOWN,
    CompiledBundle,
)
from moerules.engine.compile.projection import decoder, full_decoder
from moerules.engine.connector import EVENT, USER, Item, Unencodable, WireRequest
from moerules.engine.errors import RecordError
from moerules.engine.rules.validation import did_you_mean
from moerules.engine.runtime.deadletter import DeadLetterWriter
from moerules.engine.runtime.input import LINE_TOO_LONG, LongLine
from moerules.engine.runtime.report import RunReport

__all__ = ["NO_IDENTITY", "NO_RULE", "Pipeline"]

NO_IDENTITY = "no usable identity"
NO_RULE = "no rule matched"
MAPPING_FAILED = "mapping failed on unexpected data"
CANNOT_ENCODE = Unencodable.reason
_EVENT, _USER = object(), object()  # kinds of rule (a drop rule's kind is its reason)
_FALLBACK = {ROUTE_MISSING: "missing", ROUTE_BLANK: "blank", ROUTE_UNKNOWN: "unknown"}


class Pipeline:
    """Feeds input lines through a compiled bundle, producing the requests to send."""

    def __init__(
        self, compiled: CompiledBundle, report: RunReport, dead_letters: DeadLetterWriter
    ) -> None:
        self.c = compiled
        self.report = report
        self.ledger = report.ledger
        self.dead = dead_letters
        self.encoder = compiled.sink.encoder()
        self.events_key = compiled.source.events_key
        self.project_codes = [code for _, code in compiled.projects]
        self.project_names = [name for name, _ in compiled.projects]
        # per rule, looked up once rather than per event: what the mapper's rule index means
        # (a drop reason, a user update or an event); index -1 (no rule matched) reads the last
        self._kinds: list[str | object] = [
            drop if drop is not None else _USER if emit == "user" else _EVENT
            for drop, emit in zip(compiled.drop_reasons, compiled.emits, strict=True)
        ] + [NO_RULE]
        # by route code: the projects' codes, then None for the negative (fallback) codes
        self._route_codes: list[str | None] = [*self.project_codes, None, None, None, None]
        self._routed = [0] * len(self._route_codes)  # events encoded, by route code
        self._identity_per_event = compiled.identity is not None and not (
            compiled.identity_per_batch
        )
        ident = compiled.model.identity
        order = (ident.precedence or list(ident.candidates)) if ident else []
        self.identity_hint = "none of the identity candidates had a usable value: " + ", ".join(
            order
        )
        # decode only what the rules read, when the source allows it (not when tracing)
        self._project = (
            decoder(compiled.reads, self.events_key)
            if compiled.projected and compiled.source.projectable and not compiled.traced
            else None
        )
        self._line: bytes | None = None  # the current line, when it was decoded projected
        self._whole: tuple[bytes, Any] | None = None  # (line, its full decode) for dead letters

    def feed(self, line_no: int, line: bytes | LongLine) -> list[WireRequest]:
        """Process one input line; return the requests that filled up."""
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
        batch = None
        if self._project is not None:
            try:
                batch = self._project(line)
            except Exception:  # any shape the projection does not describe: decode it all
                batch = None
            self._line = None if batch is None else line
        if batch is None:
            try:
                batch = self.c.source.decode(line)
            except RecordError as exc:
                ledger.unreadable_line(exc.reason)
                self.dead.write(exc.reason, raw=line, error=exc.detail, line=line_no)
                return []
        try:
            return self._batch(line_no, batch)
        except RecordError as exc:  # a failure outside any one event: the whole line
            ledger.unreadable_line(exc.reason)
            self.dead.write(
                exc.reason, record=self._whole_record(batch, None), error=exc.detail, line=line_no
            )
            return []

    def _batch(self, line_no: int, batch: dict[str, Any]) -> list[WireRequest]:
        c, report = self.c, self.report
        if c.user_drops is not None:  # first: should it fail, the line is dead-lettered whole
            for reason, n in zip(c.user_drop_reasons, c.user_drops(batch, None), strict=True):
                if n:
                    self.ledger.user_updates_in += n
                    self.ledger.drop(reason, n)
        events = batch.get(self.events_key) if self.events_key else None
        ident = None
        if c.identity is not None and c.identity_per_batch:
            ident = c.identity(batch, None).value
        out: list[WireRequest] = []
        if c.user is not None:
            self._user(c.user, line_no, batch, ident, out)
        if not events:
            return out
        # the loop runs per event: everything it looks up is a local
        mapper, kinds, rule_names = c.event, self._kinds, c.rule_names
        identity_per_event = c.identity if self._identity_per_event else None
        codes, dropped = self._route_codes, self.ledger.dropped
        routed = self._routed  # reaches the report once, at the end (warn_routing)
        items: list[Item] = []  # the line's events, handed to the encoder together
        self.ledger.events_in += len(events)
        for index, event in enumerate(events):
            if type(event) is not dict:
                self._dead("event is not a JSON object", event, "", line_no, None, index)
                continue
            try:
                mapped = mapper(batch, event)
            except RecordError as exc:
                self._dead(exc.reason, event, exc.detail, line_no, exc.rule, index)
                continue
            except Exception as exc:  # data no rule foresaw must not stop the run
                self._dead(
                    MAPPING_FAILED, event, f"{type(exc).__name__}: {exc}", line_no, None, index
                )
                continue
            rule = mapped.rule
            kind = kinds[rule]  # the mapper's -1 (no rule matched) reads NO_RULE, the last
            if kind is not _EVENT:
                if kind is _USER:
                    if identity_per_event is not None:
                        ident = identity_per_event(batch, event).value
                    if items:  # keep the line's order: its events so far go first
                        self._encode(line_no, batch, events, items, out)
                        items = []
                    if mapped.attributes:
                        self._add_user(
                            ident, mapped.attributes, line_no, index, event, rule_names[rule], out
                        )
                    elif ident is None:
                        self._dead(
                            NO_IDENTITY, event, self.identity_hint, line_no, rule_names[rule], index
                        )
                    else:
                        dropped["user update with no attributes"] += 1
                else:
                    dropped[kind] += 1  # type: ignore[index]  # (not _EVENT, _USER: a reason)
                continue
            if identity_per_event is not None:
                ident = identity_per_event(batch, event).value
            if ident is None:
                self._dead(NO_IDENTITY, event, self.identity_hint, line_no, rule_names[rule], index)
                continue
            name = mapped.name
            if not name:
                self._dead(
                    "event name is empty",
                    event,
                    f"rule {rule_names[rule]!r}",
                    line_no,
                    rule_names[rule],
                    index,
                )
                continue
            route = mapped.route
            items.append(
                Item(
                    EVENT,
                    ident,
                    name,
                    mapped.attributes,
                    mapped.fields or {},
                    codes[route],
                    (line_no, index),
                    rule_names[rule],
                )
            )
            routed[route] += 1
            if route == ROUTE_UNKNOWN:
                report.unknown_projects[str(mapped.route_value)] += 1
        if items:
            self._encode(line_no, batch, events, items, out)
        return out

    def _encode(
        self,
        line_no: int,
        batch: dict[str, Any],
        events: list[Any],
        items: list[Item],
        out: list[WireRequest],
    ) -> None:
        """Hand a line's mapped events to the encoder; count the routes of those it took."""
        requests, failed = self.encoder.add_all(items)
        if requests:
            out += requests
        for item, reason, error in failed:  # rare: map the event again for the route it had
            index = item.ref[1]
            event = events[index]
            mapped = self.c.event(batch, event)
            route, route_value = mapped.route, mapped.route_value
            self._routed[route] -= 1
            if route == ROUTE_UNKNOWN:
                self.report.unknown_projects[str(route_value)] -= 1
                if not self.report.unknown_projects[str(route_value)]:
                    del self.report.unknown_projects[str(route_value)]
            self._dead(reason, event, error, line_no, item.rule, index)
        self.ledger.take(EVENT, True, len(items) - len(failed))

    def _user(
        self,
        user: Callable[..., dict[str, Any] | None],
        line_no: int,
        batch: dict[str, Any],
        ident: str | None,
        out: list[WireRequest],
    ) -> None:
        """The record's own user update (the bundle's ``user`` section)."""
        ledger = self.ledger
        try:
            attrs = user(batch, None)
        except RecordError as exc:
            ledger.user_updates_in += 1
            self._dead(exc.reason, batch, exc.detail, line_no, "user")
            return
        except Exception as exc:  # as for events
            ledger.user_updates_in += 1
            self._dead(MAPPING_FAILED, batch, f"{type(exc).__name__}: {exc}", line_no, "user")
            return
        if attrs:
            ledger.user_updates_in += 1
            self._add_user(ident, attrs, line_no, None, batch, "user", out)

    def _add_user(
        self,
        ident: str | None,
        attrs: dict[str, Any],
        line_no: int,
        index: int | None,
        record: Any,
        rule: str,
        out: list[WireRequest],
    ) -> None:
        """A user update, from the ``user`` section (``index`` None) or an event rule."""
        if ident is None:
            self._dead(NO_IDENTITY, record, self.identity_hint, line_no, rule, index)
            return
        ref = (line_no, -1 if index is None else index)
        try:
            out += self.encoder.add(Item(USER, ident, "", attrs, {}, None, ref, rule))
        except (TypeError, ValueError) as exc:  # orjson: an int beyond 64 bits; too large...
            self._dead(
                getattr(exc, "reason", CANNOT_ENCODE), record, str(exc), line_no, rule, index
            )
            return
        self.ledger.take(USER, index is not None)

    def _count_routes(self) -> None:
        """Move the events counted per route (indexed by route code) to the report."""
        report, routed = self.report, self._routed
        for index, name in enumerate(self.project_names):
            if routed[index]:
                report.routing[name] += routed[index]
        for route, why in _FALLBACK.items():
            if routed[route]:
                report.routing["portfolio"] += routed[route]
                report.fallback[why] += routed[route]
        routed[:] = [0] * len(routed)  # in place: the loop holds this list

    def _dead(
        self,
        reason: str,
        record: Any,
        error: str,
        line_no: int,
        rule: str | None,
        index: int | None = None,
    ) -> None:
        self.ledger.dead_letter(reason)
        self.dead.write(
            reason,
            record=self._whole_record(record, index),
            error=error,
            line=line_no,
            rule=rule,
            event_index=index,
        )

    def _whole_record(self, projected: Any, index: int | None) -> Any:
        """What a dead letter shows: the record (or its event ``index``) whole, decoded again
        when the line was decoded projected and a dead-letter file is being written."""
        line = self._line
        if line is None or self.dead.path is None:
            return projected
        try:
            if self._whole is None or self._whole[0] is not line:  # once per line
                self._whole = (line, full_decoder()(line))
            batch = self._whole[1]
            return batch if index is None else batch[self.events_key or ""][index]
        except (ValueError, LookupError, TypeError):
            # only the fields no rule reads stopped the full decode (bad UTF-8 there)
            return projected

    def finish(self) -> list[WireRequest]:
        """Requests for everything the encoder still holds, and the routing warnings."""
        self.warn_routing()
        return self.encoder.flush()

    def stopped(self) -> None:
        """No more lines come and what is held is not sent (an aborted run)."""
        self.warn_routing()

    def warn_routing(self) -> None:
        """Routing counts and warnings into the report: once, when no more lines come."""
        self._count_routes()
        report = self.report
        for why in ("missing", "blank"):
            if report.fallback[why]:
                n = report.fallback[why]
                report.warnings.append(
                    f"{_events(n)} had a {why} project name and went to the portfolio level"
                )
        for value, n in report.unknown_projects.most_common():
            hint = did_you_mean(value, self.project_names)
            report.warnings.append(
                f"{_events(n)} named unknown project {value!r}{hint}; "
                f"{'it' if n == 1 else 'they'} went to the portfolio level "
                "(matching is exact and case-sensitive)"
            )

    def run(self, lines: Iterator[tuple[int, bytes | LongLine]]) -> Iterator[WireRequest]:
        feed = self.feed
        for line_no, line in lines:
            requests = feed(line_no, line)
            if requests:  # most lines fill no request
                yield from requests
        yield from self.finish()


def _events(n: int) -> str:
    return f"{n} event" if n == 1 else f"{n} events"
