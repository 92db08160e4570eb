"""The per-record path: decode, identity, user attributes, event rules, routing, encode.

Everything here is bookkeeping around the compiled functions: it counts each item's outcome,
dead-letters what cannot be processed, and hands mapped items to the sink's encoder.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from engine.compiler import ROUTE_BLANK, ROUTE_MISSING, ROUTE_UNKNOWN, CompiledBundle
from engine.connector import EventOut, UserOut, WireRequest
from engine.deadletter import DeadLetterWriter
from engine.errors import RecordError
from engine.report import RunReport
from engine.validation import did_you_mean

__all__ = ["NO_IDENTITY", "NO_RULE", "Pipeline"]

NO_IDENTITY = "no usable identity"
NO_RULE = "no rule matched"
MAPPING_FAILED = "mapping failed on unexpected data"
CANNOT_ENCODE = "cannot encode for the destination"
_FALLBACK = {ROUTE_MISSING: "missing", ROUTE_BLANK: "blank", ROUTE_UNKNOWN: "unknown"}


class Pipeline:
    """Feeds input lines through a compiled bundle, producing the requests to send."""

    def __init__(self, compiled: CompiledBundle, report: RunReport,
                 dead_letters: DeadLetterWriter) -> None:
        self.c = compiled
        self.report = report
        self.dead = dead_letters
        self.encoder = compiled.sink.encoder()
        self.events_key = compiled.source.events_key
        self.project_codes = [code for _, code in compiled.projects]
        self.project_names = [name for name, _ in compiled.projects]
        # per rule, looked up once here rather than per event
        self._to_user = [emit == "user" for emit in compiled.emits]
        self._identity_per_event = compiled.identity is not None and not (
            compiled.identity_per_batch)
        ident = compiled.model.identity
        order = (ident.precedence or list(ident.candidates)) if ident else []
        self.identity_hint = ("none of the identity candidates had a usable value: "
                              + ", ".join(order))

    def feed(self, line_no: int, line: bytes) -> list[WireRequest]:
        """Process one input line; return the requests that filled up."""
        report = self.report
        report.lines_in += 1
        try:
            batch = self.c.source.decode(line)
        except RecordError as exc:
            report.unreadable_lines += 1
            report.dead_lettered[exc.reason] += 1
            self.dead.write(exc.reason, raw=line, error=exc.detail, line=line_no)
            return []
        try:
            return self._batch(line_no, batch)
        except RecordError as exc:  # a failure outside any one event: the whole line
            report.unreadable_lines += 1
            report.dead_lettered[exc.reason] += 1
            self.dead.write(exc.reason, record=batch, error=exc.detail, line=line_no)
            return []

    def _batch(self, line_no: int, batch: dict[str, Any]) -> list[WireRequest]:
        c, report = self.c, self.report
        events = batch.get(self.events_key) if self.events_key else None
        events = events or []
        ident = None
        if c.identity is not None and c.identity_per_batch:
            ident, _ = c.identity(batch, None)
        out: list[WireRequest] = []
        if c.user is not None:
            try:
                attrs = c.user(batch, None)
            except RecordError as exc:
                report.user_updates_in += 1
                self._dead(exc.reason, batch, exc.detail, line_no, "user")
                attrs = None
            except Exception as exc:  # as for events, below
                report.user_updates_in += 1
                self._dead(MAPPING_FAILED, batch, f"{type(exc).__name__}: {exc}", line_no, "user")
                attrs = None
            if attrs:
                report.user_updates_in += 1
                if ident is None:
                    self._dead(NO_IDENTITY, batch, self.identity_hint, line_no, "user")
                else:
                    try:
                        out += self.encoder.add(UserOut(ident, attrs, (line_no, -1), "user"))
                        report.delivered_user_updates += 1
                    except (TypeError, ValueError) as exc:
                        self._dead(CANNOT_ENCODE, batch, str(exc), line_no, "user")
        # the loop runs per event: everything it looks up is a local
        mapper, drops, rule_names, to_user = c.event, c.drop_reasons, c.rule_names, self._to_user
        identity_per_event = c.identity if self._identity_per_event else None
        add = self.encoder.add
        codes, dropped = self.project_codes, report.dropped
        # per-event counts stay in locals and reach the report once per batch
        routed = [0] * (len(codes) + 4)  # by route: projects, then the negative route codes
        delivered = 0
        report.events_in += len(events)
        for index, event in enumerate(events):
            if not isinstance(event, dict):
                self._dead("event is not a JSON object", event, "", line_no, None, index)
                continue
            try:
                rule, name, attrs, fields, route, route_value = mapper(batch, event)
            except RecordError as exc:
                self._dead(exc.reason, event, exc.detail, line_no, None, index)
                continue
            except Exception as exc:  # data no rule foresaw must not stop the run
                self._dead(MAPPING_FAILED, event, f"{type(exc).__name__}: {exc}", line_no, None,
                           index)
                continue
            if rule < 0:
                dropped[NO_RULE] += 1
                continue
            reason = drops[rule]
            if reason is not None:
                dropped[reason] += 1
                continue
            if identity_per_event is not None:
                ident, _ = identity_per_event(batch, event)
            rule_name = rule_names[rule]
            if ident is None:
                self._dead(NO_IDENTITY, event, self.identity_hint, line_no, rule_name, index)
                continue
            if to_user[rule]:
                if attrs:
                    try:
                        out += add(UserOut(ident, attrs, (line_no, index), rule_name))
                    except (TypeError, ValueError) as exc:
                        self._dead(CANNOT_ENCODE, event, str(exc), line_no, rule_name, index)
                        continue
                    report.delivered_user_updates += 1
                else:
                    dropped["user update with no attributes"] += 1
                continue
            if not name:
                self._dead("event name is empty", event, f"rule {rule_name!r}", line_no,
                           rule_name, index)
                continue
            project = codes[route] if route >= 0 else None
            try:
                requests = add(EventOut(ident, name, attrs, fields or {}, project,
                                        (line_no, index), rule_name))
            except (TypeError, ValueError) as exc:  # orjson: an int beyond 64 bits...
                self._dead(CANNOT_ENCODE, event, str(exc), line_no, rule_name, index)
                continue
            routed[route] += 1
            if route == ROUTE_UNKNOWN:
                report.unknown_projects[str(route_value)] += 1
            if requests:
                out += requests
            delivered += 1
        report.delivered_events += delivered
        if delivered:
            self._count_routes(routed)
        return out

    def _count_routes(self, routed: list[int]) -> None:
        """Add one batch's per-route counts (indexed by route code) to the report."""
        report = self.report
        for index, name in enumerate(self.project_names):
            if routed[index]:
                report.routing[name] += routed[index]
        for route, why in _FALLBACK.items():
            if routed[route]:
                report.routing["portfolio"] += routed[route]
                report.fallback[why] += routed[route]

    def _dead(self, reason: str, record: Any, error: str, line_no: int, rule: str | None,
              index: int | None = None) -> None:
        self.report.dead_lettered[reason] += 1
        self.dead.write(reason, record=record, error=error, line=line_no, rule=rule,
                        event_index=index)

    def finish(self) -> list[WireRequest]:
        """Requests for everything the encoder still holds, and the routing warnings."""
        self.warn_routing()
        return self.encoder.flush()

    def warn_routing(self) -> None:
        report = self.report
        for why in ("missing", "blank"):
            if report.fallback[why]:
                n = report.fallback[why]
                report.warnings.append(
                    f"{_events(n)} had a {why} project name and went to the portfolio level")
        for value, n in report.unknown_projects.most_common():
            hint = did_you_mean(value, self.project_names)
            report.warnings.append(
                f"{_events(n)} named unknown project {value!r}{hint}; "
                f"{'it' if n == 1 else 'they'} went to the portfolio level "
                "(matching is exact and case-sensitive)")

    def run(self, lines: Iterator[tuple[int, bytes]]) -> Iterator[WireRequest]:
        feed = self.feed
        for line_no, line in lines:
            requests = feed(line_no, line)
            if requests:  # most lines fill no request
                yield from requests
        yield from self.finish()


def _events(n: int) -> str:
    return f"{n} event" if n == 1 else f"{n} events"
