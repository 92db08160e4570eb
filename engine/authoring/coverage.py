"""``moerules coverage``: which parts of a bundle a sample exercises, and what it leaves out.

Every record runs through the dry run's pipeline one at a time (``RecordRunner``), so the
counts are the dry run's. Beside them the record is decoded in full once more to see what the
rules do not: its fields, by path, that no rule reads (unmapped data), the identity candidate
precedence picked, and the table rows its values hit. The result says, per rule, how many
events it took and what became of them; which rules and table rows never fired; which
attributes a rule declares but never set; which project names came in undeclared.

>>> report = measure(load_bundle("mparticle-to-moengage"), iter_lines("sample.jsonl"))
...                                                              # doctest: +SKIP
>>> print(report.render())                                       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jmespath
from moerules.engine.authoring.records import DEAD, DROPPED, SENT, RecordRunner
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.compile.projection import WHOLE, ReadSet
from moerules.engine.compile.transforms import lookup_key
from moerules.engine.errors import RecordError
from moerules.engine.rules.model import FieldSpec, Spread
from moerules.engine.runtime.input import LongLine

__all__ = ["Coverage", "measure"]

_MAX_PATHS = 2000  # distinct unmapped paths kept (open maps with data for keys stay bounded)


@dataclass
class RuleCount:
    events: int = 0
    records: int = 0
    sent: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    set: Counter[str] = field(default_factory=Counter)  # attribute -> sent events holding it

    def to_dict(self, name: str) -> dict[str, Any]:
        return {
            "rule": name,
            "events": self.events,
            "records": self.records,
            "sent": self.sent,
            "dropped": self.dropped,
            "dead_lettered": self.dead_lettered,
        }


@dataclass
class Coverage:
    """What a sample exercised of a bundle."""

    bundle: str
    rule_names: list[str]
    declared: dict[str, list[str]]  # rule -> attributes and fields it declares
    tables: dict[str, list[str]]  # table -> its rows
    records: int = 0
    events: int = 0
    rules: dict[str, RuleCount] = field(default_factory=dict)
    unmatched: int = 0  # events no rule matched
    failed: int = 0  # events dead-lettered while being mapped (a cast failed...)
    table_hits: dict[str, Counter[str]] = field(default_factory=dict)
    tracked: set[str] = field(default_factory=set)  # tables whose rows are counted
    unmapped: Counter[str] = field(default_factory=Counter)  # path -> records holding it
    identities: Counter[str] = field(default_factory=Counter)  # candidate (or "") -> records
    precedence: list[str] = field(default_factory=list)
    undeclared_projects: Counter[str] = field(default_factory=Counter)
    routing_fallback: Counter[str] = field(default_factory=Counter)
    elapsed_seconds: float = 0.0

    def never_fired(self) -> list[str]:
        return [n for n in self.rule_names if not self.rules[n].events]

    def never_set(self) -> list[tuple[str, str, int]]:
        """(rule, attribute, sent events): declared attributes no sent event of the rule had."""
        out = []
        for rule, names in self.declared.items():
            count = self.rules[rule]
            if count.sent:
                out += [(rule, name, count.sent) for name in names if not count.set[name]]
        return out

    def never_sent(self) -> list[str]:
        """Rules that matched events yet sent none: all their attributes were always dropped
        (the events dead-lettered, or dropped as user updates without attributes)."""
        return [
            n
            for n in self.rule_names
            if n in self.declared and self.rules[n].events and not self.rules[n].sent
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "records": self.records,
            "events": self.events,
            "rules": [self.rules[n].to_dict(n) for n in self.rule_names],
            "no_rule_matched": self.unmatched,
            "failed_while_mapping": self.failed,
            "rules_never_fired": self.never_fired(),
            "rules_never_sent": self.never_sent(),
            "attributes_never_set": [
                {"rule": r, "attribute": a, "sent_events": n} for r, a, n in self.never_set()
            ],
            "tables": {
                name: {
                    "rows": len(rows),
                    "counted": name in self.tracked,
                    "used": dict(self.table_hits[name].most_common()),
                    "never_used": [r for r in rows if not self.table_hits[name][r]]
                    if name in self.tracked
                    else None,
                }
                for name, rows in self.tables.items()
            },
            "identities": {
                "precedence": self.precedence,
                "chosen": {k or "(none)": v for k, v in self.identities.most_common()},
            },
            "unmapped_fields": [
                {"path": p, "records": n}
                for p, n in sorted(self.unmapped.items(), key=lambda i: (-i[1], i[0]))
            ],
            "undeclared_projects": dict(self.undeclared_projects.most_common()),
            "routing_fallback": dict(self.routing_fallback.most_common()),
        }

    def render(self, limit: int = 20) -> str:
        out = [f"coverage {self.bundle}: {self.records:,} records, {self.events:,} events"]
        out.append("rules (events matched, in records; what became of them)")
        width = max((len(n) for n in self.rule_names), default=4) + 2
        for name in self.rule_names:
            c = self.rules[name]
            fate = ", ".join(
                f"{n:,} {what}"
                for n, what in (
                    (c.sent, "sent"),
                    (c.dropped, "dropped"),
                    (c.dead_lettered, "dead-lettered"),
                )
                if n
            )
            out.append(
                f"  {name:<{width}}{c.events:>8,} in {c.records:,} records"
                + (f"  ({fate})" if fate else "")
            )
        if self.unmatched:
            out.append(f"  {'(no rule matched)':<{width}}{self.unmatched:>8,}")
        if self.failed:
            out.append(
                f"  {'(failed while mapping)':<{width}}{self.failed:>8,}  "
                "(dead-lettered; `moerules explain` shows which rule)"
            )
        never = self.never_fired()
        out.append("never fired: " + (", ".join(never) if never else "none"))
        for name in self.never_sent():
            c = self.rules[name]
            out.append(
                f"never sent: {name} matched {c.events:,} events and sent none: its "
                "attributes were always dropped"
            )
        unset = self.never_set()
        if unset:
            out.append("attributes a rule declares but never set")
            out += [
                f"  {rule}: {name} (in {n:,} sent event{'s' if n != 1 else ''})"
                for rule, name, n in unset
            ]
        for name, rows in self.tables.items():
            if name not in self.tracked:
                out.append(
                    f"table {name}: not counted (used only in templates, or after "
                    "transforms that change the value)"
                )
                continue
            hits = self.table_hits[name]
            unused = [r for r in rows if not hits[r]]
            out.append(
                f"table {name}: {len(rows) - len(unused)} of {len(rows)} rows used"
                + (f"; never: {', '.join(unused[:limit])}" if unused else "")
            )
            if len(unused) > limit:
                out[-1] += f" and {len(unused) - limit} more"
        if self.precedence:
            out.append(f"identity (precedence: {', '.join(self.precedence)})")
            for name, n in self.identities.most_common():
                out.append(f"  {name or '(none usable)':<{width}}{n:>8,} records")
        if self.undeclared_projects or self.routing_fallback:
            out.append("routing")
            out += [
                f"  undeclared project {name!r}: {n:,} events"
                for name, n in self.undeclared_projects.most_common()
            ]
            out += [
                f"  portfolio level, {why} project name: {n:,} events"
                for why, n in self.routing_fallback.most_common()
                if why != "unknown"
            ]
        paths = sorted(self.unmapped.items(), key=lambda i: (-i[1], i[0]))
        out.append(f"unmapped input: {len(paths):,} fields no rule reads (by records holding them)")
        out += [f"  {path:<48}{n:>8,}" for path, n in paths[:limit]]
        if len(paths) > limit:
            out.append(f"  ... and {len(paths) - limit:,} more (--json lists them all)")
        return "\n".join(out)


def measure(compiled: CompiledBundle, lines: Iterable[tuple[int, bytes | LongLine]]) -> Coverage:
    """Run ``lines`` through the bundle and count what they exercise."""
    started = time.perf_counter()
    model = compiled.model
    coverage = Coverage(
        model.bundle,
        list(compiled.rule_names),
        {
            r.name: [*r.attributes, *r.fields]
            for r in model.events
            if r.drop is None and (r.attributes or r.fields)
        },
        {name: [str(k) for k in t.values] for name, t in model.tables.items()},
    )
    coverage.rules = {name: RuleCount() for name in compiled.rule_names}
    coverage.table_hits = {name: Counter() for name in model.tables}
    ident = model.identity
    coverage.precedence = list((ident.precedence or list(ident.candidates)) if ident else [])
    runner = RecordRunner(compiled)
    lookups = _table_uses(compiled)
    coverage.tracked = {use[0] for use in lookups}
    drop_rules = {
        reason: name
        for name, reason in zip(compiled.rule_names, compiled.drop_reasons, strict=True)
        if reason is not None
    }
    reads = compiled.reads
    events_key = compiled.source.events_key
    for line_no, line in lines:
        coverage.records += 1
        outcome = runner.run(line_no, line)
        coverage.events += outcome.events
        seen: set[str] = set()
        for item in outcome.items:
            if item.slot < 0:
                continue
            rule = item.rule if item.outcome != DROPPED else drop_rules.get(item.reason)
            count = coverage.rules.get(rule or "")
            if count is None:
                if item.outcome == DROPPED:
                    coverage.unmatched += 1
                else:  # failed while a rule was mapping it (the rule is not recorded)
                    coverage.failed += 1
                continue
            count.events += 1
            if rule not in seen:
                seen.add(rule or "")
                count.records += 1
            if item.outcome == SENT:
                count.sent += 1
                count.set.update(k for k in (*item.attributes, *item.fields))
            elif item.outcome == DEAD:
                count.dead_lettered += 1
            else:
                count.dropped += 1
        if isinstance(line, LongLine):  # too long to read: dead-lettered, nothing to measure
            continue
        try:
            record = compiled.source.decode(line)
        except RecordError:
            continue
        events = record.get(events_key) if events_key else None
        events = [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []
        _unmapped(coverage.unmapped, reads, record, events, events_key)
        _identity(coverage.identities, compiled, record, events)
        rows: set[tuple[str, str]] = set()  # a row counts once per record
        for table, expression, root, keys, fold in lookups:
            for scope in (
                [{"batch": record}]
                if root == "batch"
                else [{"batch": record, "event": e} for e in events]
            ):
                rows.update((table, row) for row in _rows(keys, fold, expression.search(scope)))
        for table, row in rows:
            coverage.table_hits[table][row] += 1
    report = runner.finish()
    coverage.undeclared_projects = Counter(report.unknown_projects)
    coverage.routing_fallback = Counter(report.fallback)
    coverage.elapsed_seconds = time.perf_counter() - started
    return coverage


def _rows(keys: dict[str, str], fold: bool, value: Any) -> Iterator[str]:
    """The table rows ``value`` hits: through an object's keys, or the value itself."""
    for key in value if isinstance(value, dict) else [value]:
        if key is None:
            continue
        text = key if isinstance(key, str) else lookup_key(key)
        if not isinstance(text, str):
            continue
        row = keys.get(text.casefold() if fold else text)
        if row is not None:
            yield row


def _table_uses(compiled: CompiledBundle) -> list[tuple[str, Any, str, dict[str, str], bool]]:
    """Where the bundle looks values up in its tables, by path: (table, compiled JMESPath,
    root, table key -> row, ignore case). Spreads renamed through a table (their keys, or
    the one key of a ``key:`` spread) and fields whose ``lookup`` comes first or after case
    changes only; a lookup inside a template is not counted."""
    model = compiled.model
    out: list[tuple[str, Any, str, dict[str, str], bool]] = []
    seen: set[tuple[str, str]] = set()

    def add(table: str, path: str, fold: bool) -> None:
        spec = model.tables.get(table)
        if spec is None or not path.startswith(("batch.", "event.")):
            return
        fold = fold or spec.ignore_case
        keys = {(str(k).casefold() if fold else str(k)): str(k) for k in spec.values}
        if (table, path) in seen:
            return
        seen.add((table, path))
        with contextlib.suppress(jmespath.exceptions.JMESPathError):
            out.append((table, jmespath.compile(path), path.split(".", 1)[0], keys, fold))

    def spreads(items: list[Spread]) -> None:
        for spread in items:
            if isinstance(spread.rename, str):
                add(spread.rename, spread.key or spread.from_, spread.ignore_case)

    def fields(specs: dict[str, FieldSpec]) -> None:
        for spec in specs.values():
            if spec.from_ is None:
                continue
            for step in spec.transform:
                if isinstance(step, dict) and "lookup" in step:
                    add(str(step["lookup"]), spec.from_, False)
                if step not in ("lower", "upper", "trim", "title"):
                    break

    if model.user is not None:
        spreads(model.user.spread)
        fields(model.user.attributes)
    for rule in model.events:
        spreads(rule.spread)
        fields(rule.attributes)
        fields(rule.fields)
    return out


def _identity(
    counts: Counter[str],
    compiled: CompiledBundle,
    record: dict[str, Any],
    events: list[dict[str, Any]],
) -> None:
    if compiled.identity is None:
        return
    try:
        if compiled.identity_per_batch:
            name = compiled.identity(record, None).candidate
            counts[name or ""] += 1
        else:
            for event in events:
                name = compiled.identity(record, event).candidate
                counts[name or ""] += 1
    except Exception:  # the pipeline dead-letters such a record; it is counted there
        counts[""] += 1


def _unmapped(
    counts: Counter[str],
    reads: ReadSet,
    record: dict[str, Any],
    events: list[dict[str, Any]],
    events_key: str | None,
) -> None:
    """Count, once per record, every leaf path of the record that no rule reads."""
    if reads.everything:
        return
    found: set[str] = set()
    _leaves(record, "batch", reads.root("batch"), found, skip=events_key)
    for event in events:
        _leaves(event, "event", reads.root("event"), found)
    for path in found:
        if path in counts or len(counts) < _MAX_PATHS:
            counts[path] += 1


def _leaves(
    value: Any, path: str, read: dict[str, Any] | None, out: set[str], skip: str | None = None
) -> None:
    """The leaf paths under ``value`` that ``read`` (the rules' reads there: WHOLE, a tree of
    the fields read, or None for nothing) does not cover."""
    if read is WHOLE:
        return
    if isinstance(value, dict) and value:
        for key, child in value.items():
            if key != skip:
                _leaves(child, f"{path}.{key}", None if read is None else read.get(key), out)
    elif isinstance(value, list) and value:
        for child in value:
            _leaves(child, f"{path}[]", read, out)
    else:
        out.add(path)
