"""``moerules diff``: what changing a bundle does to the traffic, record by record.

Both bundles run over the same sample, one line at a time (``RecordRunner``: the dry run's
own pipeline, its requests closed after each line). Lines whose requests, drops and dead
letters are byte-for-byte the same in both are counted and skipped; for the others, each item
(an event, or a record's user update) is compared field by field and every difference is
filed under a *kind of change*: a routing move, an attribute lost, gained or changed, an event
renamed, an item newly dropped or dead-lettered, a different request URL. The result leads
with a summary of those kinds, largest first:

    142 of 1,000 items change (in 97 of 300 records): 120 events move from the portfolio
    level to 'Brand A'; 22 events lose `Tax Amount`

>>> result = diff_bundles(load_bundle("old.yaml"), load_bundle("new.yaml"),
...                       iter_lines("sample.jsonl"))                # doctest: +SKIP
>>> result.changed_items, result.summary()                          # doctest: +SKIP
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from moerules.engine.authoring.records import (
    DEAD,
    DROPPED,
    LINE_SLOT,
    SENT,
    USER_SLOT,
    ItemOutcome,
    RecordOutcome,
    RecordRunner,
)
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.runtime.input import LongLine
from moerules.engine.runtime.report import RunReport

__all__ = ["BundleDiff", "Change", "ChangeGroup", "diff_bundles", "diff_file", "diff_records"]

_PORTFOLIO = "the portfolio level"
_SINGULAR = {
    "are": "is",
    "go": "goes",
    "move": "moves",
    "lose": "loses",
    "gain": "gains",
    "change": "changes",
}


@dataclass(slots=True)
class Change:
    """One difference in one item: where it is, and the old and new value."""

    line: int
    item: str  # "event 2", "user update", "line"
    old: Any
    new: Any
    detail: str = ""  # e.g. the rule, or the event name, for context

    def to_dict(self) -> dict[str, Any]:
        out = {"line": self.line, "item": self.item, "old": self.old, "new": self.new}
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass
class ChangeGroup:
    """Every change of one kind (e.g. attribute `Tax Amount` removed), with the items."""

    kind: str  # routing, attribute_removed, attribute_added, attribute_changed, ...
    subject: str  # the attribute, the project move, the event-name pair...
    description: str  # what happened to them: "{count} {items} <description>"
    changes: list[Change] = field(default_factory=list)
    nouns: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "description": self.describe(),
            "count": len(self.changes),
            "changes": [c.to_dict() for c in self.changes],
        }

    def describe(self) -> str:
        n = len(self.changes)
        verb, _, rest = self.description.partition(" ")
        if n == 1:  # the predicates start with a plural verb of ours, never with data
            verb = _SINGULAR.get(verb, verb)
        return f"{_count(n)} {_noun(self.nouns, n)} {verb} {rest}"


@dataclass
class Totals:
    records: int = 0
    items: int = 0
    sent: int = 0
    dropped: int = 0
    dead_lettered: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "records": self.records,
            "items": self.items,
            "sent": self.sent,
            "dropped": self.dropped,
            "dead_lettered": self.dead_lettered,
        }


@dataclass
class BundleDiff:
    """What changes between two bundles over one sample."""

    old: str
    new: str
    records: int = 0
    changed_records: int = 0
    items: int = 0  # items of the sample, counted once (a slot either bundle fills)
    changed_items: int = 0
    old_totals: Totals = field(default_factory=Totals)
    new_totals: Totals = field(default_factory=Totals)
    groups: dict[tuple[str, str], ChangeGroup] = field(default_factory=dict)
    elapsed_seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return self.changed_records > 0

    def ordered(self) -> list[ChangeGroup]:
        return sorted(self.groups.values(), key=lambda g: (-len(g.changes), g.kind, g.subject))

    def summary(self, groups: int = 6) -> str:
        """One sentence: how much changes, and the largest kinds of change."""
        if not self.changed:
            return (
                f"no change: {_count(self.items)} items of {_count(self.records)} records "
                "come out the same"
            )
        head = (
            f"{_count(self.changed_items)} of {_count(self.items)} items change (in "
            f"{_count(self.changed_records)} of {_count(self.records)} records)"
        )
        ordered = self.ordered()
        parts = [g.describe() for g in ordered[:groups]]
        if len(ordered) > groups:
            parts.append(f"and {len(ordered) - groups} more kinds of change")
        return head + ": " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "changed": self.changed,
            "records": self.records,
            "changed_records": self.changed_records,
            "items": self.items,
            "changed_items": self.changed_items,
            "totals": {"old": self.old_totals.to_dict(), "new": self.new_totals.to_dict()},
            "summary": self.summary(),
            "groups": [g.to_dict() for g in self.ordered()],
        }

    def render(self, examples: int = 5) -> str:
        """The summary, the totals, then each kind of change with a few of its items."""
        out = [f"diff {self.old} -> {self.new}", self.summary()]
        o, n = self.old_totals, self.new_totals
        out.append(f"  {'':<14}{'old':>10}{'new':>10}")
        for label, a, b in (
            ("sent", o.sent, n.sent),
            ("dropped", o.dropped, n.dropped),
            ("dead-lettered", o.dead_lettered, n.dead_lettered),
        ):
            mark = "" if a == b else f"  ({b - a:+,})"
            out.append(f"  {label:<14}{a:>10,}{b:>10,}{mark}")
        for group in self.ordered():
            out.append("")
            out.append(group.describe())
            show = _show_outcome if group.kind == "outcome" else _show
            for change in group.changes[:examples]:
                where = f"line {change.line} {change.item}"
                if change.detail:
                    where += f" ({change.detail})"
                out.append(f"  {where}: {show(change.old)} -> {show(change.new)}")
            if len(group.changes) > examples:
                out.append(f"  ... and {len(group.changes) - examples:,} more")
        return "\n".join(out)


def diff_bundles(
    old: CompiledBundle,
    new: CompiledBundle,
    lines: Iterable[tuple[int, bytes | LongLine]],
    *,
    old_label: str | None = None,
    new_label: str | None = None,
) -> BundleDiff:
    """Run ``lines`` through both bundles and compare them record by record."""
    started = time.perf_counter()
    old_runner, new_runner = RecordRunner(old), RecordRunner(new)
    result = BundleDiff(old_label or old.model.bundle, new_label or new.model.bundle)
    routing_attrs = {a for a in (_routing_attribute(old), _routing_attribute(new)) if a}
    for line_no, line in lines:
        a, b = old_runner.run(line_no, line), new_runner.run(line_no, line)
        result.records += 1
        if a.same_as(b):
            result.items += a.size
            continue
        result.items += len({i.slot for i in a.items} | {i.slot for i in b.items})
        changed = diff_records(a, b, old_runner, new_runner, result.groups, routing_attrs)
        if changed:
            result.changed_records += 1
            result.changed_items += changed
    result.old_totals = _totals(old_runner.finish())
    result.new_totals = _totals(new_runner.finish())
    result.elapsed_seconds = time.perf_counter() - started
    return result


PARALLEL_MIN_BYTES = 4 << 20
"""Samples smaller than this are compared in one process: forking would cost more."""

_FORKED: tuple[CompiledBundle, CompiledBundle, str, str] | None = None  # what children inherit


def diff_file(
    old: CompiledBundle,
    new: CompiledBundle,
    path: str | Path,
    *,
    jobs: int = 1,
    old_label: str | None = None,
    new_label: str | None = None,
) -> BundleDiff:
    """``diff_bundles`` over a JSON Lines file, split into ``jobs`` parts compared in
    parallel (forked processes that inherit the compiled bundles), then merged in order."""
    global _FORKED
    import multiprocessing

    from moerules.engine.api import iter_lines

    path = Path(path)
    labels = (old_label or old.model.bundle, new_label or new.model.bundle)
    size = path.stat().st_size
    if (
        jobs <= 1
        or size < PARALLEL_MIN_BYTES
        or "fork" not in multiprocessing.get_all_start_methods()
    ):
        return diff_bundles(
            old, new, iter_lines(str(path)), old_label=labels[0], new_label=labels[1]
        )
    started = time.perf_counter()
    parts = _parts(path, jobs)
    context = multiprocessing.get_context("fork")
    _FORKED = (old, new, *labels)
    workers = []
    try:
        for start, end, first in parts:
            receive, send = context.Pipe(duplex=False)
            process = context.Process(
                target=_diff_part, args=(send, path, start, end, first), daemon=True
            )
            process.start()
            send.close()
            workers.append((process, receive))
        results = []
        for process, receive in workers:
            try:
                status, payload = receive.recv()
            except EOFError:
                status, payload = "error", "a worker process died"
            process.join()
            if status == "error":
                raise RuntimeError(f"diff worker failed: {payload}")
            results.append(payload)
    finally:
        _FORKED = None
        for process, _ in workers:
            if process.is_alive():
                process.kill()
    merged = _merge(results, *labels)
    merged.elapsed_seconds = time.perf_counter() - started
    return merged


def _parts(path: Path, jobs: int) -> list[tuple[int, int, int]]:
    """(start offset, end offset, number of its first line) of ``jobs`` parts of a file,
    each cut just after a newline."""
    size = path.stat().st_size
    cuts = [0]
    with path.open("rb") as f:
        for k in range(1, jobs):
            f.seek(max(size * k // jobs, cuts[-1]))
            f.readline()
            cuts.append(min(f.tell(), size))
        cuts.append(size)
        firsts, lines, position = [1], 0, 0
        f.seek(0)
        for cut in cuts[1:-1]:
            while position < cut:
                block = f.read(min(1 << 20, cut - position))
                lines += block.count(b"\n")
                position += len(block)
            firsts.append(lines + 1)
    return [
        (cuts[i], cuts[i + 1], firsts[i]) for i in range(len(cuts) - 1) if cuts[i] < cuts[i + 1]
    ]


def _lines_between(path: Path, start: int, end: int, first: int) -> Iterator[tuple[int, bytes]]:
    """Numbered non-blank lines of ``path`` from ``start`` to ``end``, as ``iter_lines``."""
    with path.open("rb") as f:
        f.seek(start)
        position, number = start, first - 1
        for line in f:
            if position >= end:
                break
            position += len(line)
            number += 1
            if not line.isspace():
                yield number, line


def _diff_part(send: Any, path: Path, start: int, end: int, first: int) -> None:
    """A forked worker: compare one part of the file, send the result back."""
    try:
        assert _FORKED is not None
        old, new, old_label, new_label = _FORKED
        result = diff_bundles(
            old,
            new,
            _lines_between(path, start, end, first),
            old_label=old_label,
            new_label=new_label,
        )
        send.send(("ok", result))
    except BaseException as exc:  # reported by the parent, which raises it
        send.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        send.close()


def _merge(parts: list[BundleDiff], old_label: str, new_label: str) -> BundleDiff:
    out = BundleDiff(old_label, new_label)
    for part in parts:  # in file order: every group's changes stay in line order
        out.records += part.records
        out.changed_records += part.changed_records
        out.items += part.items
        out.changed_items += part.changed_items
        for mine, theirs in ((out.old_totals, part.old_totals), (out.new_totals, part.new_totals)):
            mine.records += theirs.records
            mine.items += theirs.items
            mine.sent += theirs.sent
            mine.dropped += theirs.dropped
            mine.dead_lettered += theirs.dead_lettered
        for key, group in part.groups.items():
            into = out.groups.get(key)
            if into is None:
                into = out.groups[key] = ChangeGroup(group.kind, group.subject, group.description)
            into.changes += group.changes
            into.nouns |= group.nouns
    return out


def _totals(report: RunReport) -> Totals:
    dropped, dead = sum(report.dropped.values()), sum(report.dead_lettered.values())
    return Totals(
        report.lines_in, report.delivered + dropped + dead, report.delivered, dropped, dead
    )


def _routing_attribute(compiled: CompiledBundle) -> str | None:
    routing = compiled.model.routing
    return routing.attribute if routing is not None and compiled.projects else None


def diff_records(
    a: RecordOutcome,
    b: RecordOutcome,
    old: RecordRunner,
    new: RecordRunner,
    groups: dict[tuple[str, str], ChangeGroup],
    routing_attrs: frozenset[str] | set[str] = frozenset(),
) -> int:
    """File every difference between two outcomes of one line; return the items changed."""
    old_items = {i.slot: i for i in a.items}
    new_items = {i.slot: i for i in b.items}
    changed = 0
    for slot in sorted(old_items.keys() | new_items.keys()):
        x, y = old_items.get(slot), new_items.get(slot)
        if _diff_item(a.line, x, y, old, new, groups, routing_attrs):
            changed += 1
    return changed


def _add(
    groups: dict[tuple[str, str], ChangeGroup],
    kind: str,
    subject: str,
    description: str,
    change: Change,
    noun: str,
) -> bool:
    group = groups.get((kind, subject))
    if group is None:
        group = groups[(kind, subject)] = ChangeGroup(kind, subject, description)
    group.changes.append(change)
    group.nouns.add(noun)
    return True


def _state(item: ItemOutcome | None, kinds: bool) -> str:
    """The item's outcome in words; with ``kinds``, also what it was sent as."""
    if item is None:
        return "not made"
    if item.outcome == SENT:
        if not kinds:
            return "sent"
        return "sent as a user update" if item.kind == "user" else "sent as an event"
    return f"{item.outcome} ({item.reason})"


def _diff_item(
    line: int,
    x: ItemOutcome | None,
    y: ItemOutcome | None,
    old: RecordRunner,
    new: RecordRunner,
    groups: dict[tuple[str, str], ChangeGroup],
    routing_attrs: frozenset[str] | set[str],
) -> bool:
    """File the differences of one item; True when there were any."""
    item = (x or y).label()  # type: ignore[union-attr]
    noun = _item_noun(x, y)
    if (
        x is None
        or y is None
        or x.outcome != y.outcome
        or (x.outcome != SENT and x.reason != y.reason)
        or x.kind != y.kind
    ):
        # a different outcome (or kind): the item's other differences follow from it
        kinds = (
            x is not None and y is not None and x.outcome == y.outcome == SENT and x.kind != y.kind
        )
        was, now = _state(x, kinds), _state(y, kinds)
        detail = _context(y if y is not None and y.outcome == SENT else x)
        if y is not None and y.outcome in (DROPPED, DEAD) and (x is None or x.outcome == SENT):
            verb = "are now dropped" if y.outcome == DROPPED else "are now dead-lettered"
            description = f"{verb}: {y.reason}"
        elif (
            x is not None and x.outcome in (DROPPED, DEAD) and y is not None and (y.outcome == SENT)
        ):
            description = f"are now {now} instead of {x.outcome} ({x.reason})"
        else:
            description = f"go from {was} to {now}"
        return _add(
            groups,
            "outcome",
            f"{was} -> {now}",
            description,
            Change(line, item, _outcome_value(x), _outcome_value(y), detail),
            noun,
        )
    if x.outcome != SENT:
        return False  # dropped or dead-lettered the same way in both
    detail = _context(y)
    found = False
    if x.name != y.name:
        found = _add(
            groups,
            "event_name",
            f"{x.name} -> {y.name}",
            f"are renamed {x.name!r} -> {y.name!r}",
            Change(line, item, x.name, y.name, detail),
            noun,
        )
    old_target, new_target = old.project_name(x.route), new.project_name(y.route)
    moved = old_target != new_target
    if moved:
        was = f"project {old_target!r}" if old_target else _PORTFOLIO
        now = f"project {new_target!r}" if new_target else _PORTFOLIO
        found = _add(
            groups,
            "routing",
            f"{was} -> {now}",
            f"move from {was} to {now}",
            Change(line, item, old_target, new_target, detail),
            noun,
        )
    old_url, new_url = _without_route(x.url), _without_route(y.url)
    if old_url != new_url:
        was, now = _url_change(old_url, new_url)
        found = _add(
            groups,
            "request_url",
            f"{was} -> {now}",
            f"are sent to {now} instead of {was}",
            Change(line, item, x.url, y.url, detail),
            noun,
        )
    if x.identity != y.identity:
        found = _add(
            groups,
            "identity",
            "identity",
            "change identity",
            Change(line, item, x.identity, y.identity, detail),
            noun,
        )
    skip = routing_attrs if moved else set()
    found = (
        _diff_values(
            line, item, "attribute", x.attributes, y.attributes, groups, noun, detail, skip
        )
        or found
    )
    return (
        _diff_values(line, item, "field", x.fields, y.fields, groups, noun, detail, set()) or found
    )


def _diff_values(
    line: int,
    item: str,
    what: str,
    old: dict[str, Any],
    new: dict[str, Any],
    groups: dict[tuple[str, str], ChangeGroup],
    noun: str,
    detail: str,
    skip: frozenset[str] | set[str],
) -> bool:
    if old == new and _same(old, new):
        return False
    found = False
    for key in sorted(old.keys() | new.keys()):
        if key in skip:
            continue
        if key not in new:
            found = _add(
                groups,
                f"{what}_removed",
                key,
                f"lose {what} `{key}`",
                Change(line, item, old[key], None, detail),
                noun,
            )
        elif key not in old:
            found = _add(
                groups,
                f"{what}_added",
                key,
                f"gain {what} `{key}`",
                Change(line, item, None, new[key], detail),
                noun,
            )
        elif not _same(old[key], new[key]):
            for path, a, b in _leaf_changes(key, old[key], new[key]):
                where = detail if path == key else (f"{path}; {detail}" if detail else path)
                found = _add(
                    groups,
                    f"{what}_changed",
                    _generic(path),
                    f"change {what} `{_generic(path)}`",
                    Change(line, item, a, b, where),
                    noun,
                )
    return found


def _same(a: Any, b: Any) -> bool:
    """Equal as they would be sent: 1 and 1.0 and True are different JSON values."""
    return (
        type(a) is type(b) and a == b
        if not isinstance(a, dict | list)
        else (orjson.dumps(a) == orjson.dumps(b) if type(a) is type(b) else False)
    )


def _leaf_changes(path: str, a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """The innermost differences between two values, with their paths (``Products[0].Price``);
    a list that changed length, or values of different types, differ whole."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(a.keys() | b.keys()):
            if key not in a or key not in b or not _same(a[key], b[key]):
                out += _leaf_changes(f"{path}.{key}", a.get(key), b.get(key))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (p, q) in enumerate(zip(a, b, strict=True)):
            if not _same(p, q):
                out += _leaf_changes(f"{path}[{i}]", p, q)
        return out
    return [(path, a, b)]


def _generic(path: str) -> str:
    """``Products[0].Price`` -> ``Products[].Price``: one group for every element."""
    out, skip = [], False
    for ch in path:
        if ch == "[":
            skip = True
            out.append("[")
        elif ch == "]":
            skip = False
            out.append("]")
        elif not skip:
            out.append(ch)
    return "".join(out)


@functools.lru_cache(maxsize=256)
def _without_route(url: str) -> str:
    """The request URL without its routing parameter, so a routing move is not also
    reported as a URL change."""
    parts = urlsplit(url)
    query = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "project_code"
    ]
    return urlunsplit(parts._replace(query=urlencode(query, safe="${}")))


def _url_change(old: str, new: str) -> tuple[str, str]:
    """What differs between two URLs, in a few words: the hosts when they differ, else
    the paths, else the whole URLs."""
    a, b = urlsplit(old), urlsplit(new)
    if (a.scheme, a.netloc) != (b.scheme, b.netloc):
        return f"{a.scheme}://{a.netloc}", f"{b.scheme}://{b.netloc}"
    if a.path != b.path:
        return a.path, b.path
    return old, new


def _outcome_value(item: ItemOutcome | None) -> Any:
    if item is None:
        return None
    if item.outcome == SENT:
        out: dict[str, Any] = {"outcome": SENT, "kind": item.kind}
        if item.name:
            out["name"] = item.name
        return out
    return {
        "outcome": item.outcome,
        "reason": item.reason,
        **({"error": item.error} if item.error else {}),
    }


def _context(item: ItemOutcome | None) -> str:
    if item is None or item.slot == USER_SLOT:  # "user update" says it all
        return ""
    if item.outcome == SENT and item.kind != "user" and item.name:
        return repr(item.name)
    return f"rule {item.rule}" if item.rule else ""


def _item_noun(x: ItemOutcome | None, y: ItemOutcome | None) -> str:
    for item in (y, x):
        if item is not None and item.outcome == SENT:
            return "user update" if item.kind == "user" else "event"
    slot = (x or y).slot  # type: ignore[union-attr]
    return "event" if slot >= 0 else "line" if slot == LINE_SLOT else "user update"


def _noun(nouns: set[str], n: int) -> str:
    noun = next(iter(nouns)) if len(nouns) == 1 else "item"
    return noun if n == 1 else noun + "s"


def _count(n: int) -> str:
    return f"{n:,}"


def _show_outcome(value: Any) -> str:
    """An item's outcome (``_outcome_value``) in words: ``dropped: reason``."""
    if not isinstance(value, dict):
        return "not made"
    if value["outcome"] == SENT:
        kind = "a user update" if value.get("kind") == "user" else "an event"
        return f"sent as {kind}" + (f" {value['name']!r}" if value.get("name") else "")
    return f"{value['outcome']}: {value['reason']}"


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= 120 else text[:117] + "..."
