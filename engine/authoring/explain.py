"""``moerules explain``: what a bundle does to one input record, step by step.

The trace comes from the same generated code the run uses, compiled with trace points, so
what it shows is what runs, not a second interpretation of the rules.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from moerules.engine.api import dry_run, iter_lines
from moerules.engine.cohorts import CohortSource
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.compile.mapped import (
    NO_RULE,
    ROUTE_BLANK,
    ROUTE_MISSING,
    ROUTE_NONE,
    ROUTE_UNKNOWN,
)
from moerules.engine.errors import InputError, RecordError
from moerules.engine.runtime.input import BOM, LongLine

__all__ = ["Explanation", "PickedRecord", "explain_record", "pick_record"]

_WHOLE_FILE = 1 << 20  # a file this small may be one pretty-printed JSON record

_FALLBACK = {ROUTE_MISSING: "missing", ROUTE_BLANK: "blank", ROUTE_UNKNOWN: "unknown"}


@dataclass
class Explanation:
    steps: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"steps": self.steps, "requests": self.requests, "report": self.report},
            option=orjson.OPT_INDENT_2,
            default=str,
        )

    def render(self) -> str:
        out: list[str] = []
        for step in self.steps:
            kind = step["step"]
            if kind == "section":
                out.append(step["title"])
            elif kind == "identity":
                mark = "chosen" if step["chosen"] else "not usable"
                out.append(f"  candidate {step['candidate']}: {_v(step['value'])}  -> {mark}")
            elif kind == "rule":
                verdict = "matched" if step["matched"] else "no match"
                when = step["when"] or "(always)"
                out.append(f"  rule {step['rule']}: when {when}  -> {verdict}")
            elif kind == "field":
                how = f" | {' | '.join(step['transforms'])}" if step["transforms"] else ""
                out.append(f"    {step['name']} <- {step['source']}{how} = {_v(step['value'])}")
            elif kind == "route":
                out.append(
                    f"    routing: {step['from']} = {_v(step['value'])} -> {step['decision']}"
                )
            elif kind == "outcome":
                out.append(f"  => {step['outcome']}")
        out.append("requests")
        if not self.requests:
            out.append("  (none)")
        for req in self.requests:
            out.append(f"  {req['method']} {req['url']}")
            for key, value in req["headers"].items():
                out.append(f"    {key}: {value}")
            body = orjson.dumps(req["body"], option=orjson.OPT_INDENT_2).decode()
            out += ["    " + line for line in body.splitlines()]
        return "\n".join(out)


def _v(value: Any) -> str:
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= 200 else text[:197] + "..."


def _fields(trace: list[tuple[Any, ...]], steps: list[dict[str, Any]]) -> None:
    for entry in trace:
        kind = entry[0]
        if kind == "field":
            _, name, source, transforms, value = entry
            steps.append(
                {
                    "step": "field",
                    "name": name,
                    "source": source,
                    "transforms": list(transforms),
                    "value": value,
                }
            )
        elif kind == "rule":
            _, rule, when, matched = entry
            steps.append({"step": "rule", "rule": rule, "when": when, "matched": matched})
        elif kind == "identity":
            _, candidate, value, ok = entry
            steps.append(
                {"step": "identity", "candidate": candidate, "value": value, "chosen": bool(ok)}
            )
        elif kind == "route":
            _, source, value, route = entry
            steps.append({"step": "route", "from": source, "value": value, "decision": route})


@dataclass(frozen=True, slots=True)
class PickedRecord:
    """The record ``explain`` traces, where it came from (`` , line 3`` or empty) and what
    the user should know about the rest of the file."""

    record: bytes
    where: str = ""
    note: str = ""


def pick_record(path: Path, line: int | None = None) -> PickedRecord:
    """The record to explain from ``path``: the whole file when it is one JSON object (pretty
    printed or not), else line ``line`` of it as JSON Lines (default: the first record, and
    the note says so when more follow). Lines are numbered as the run numbers them, so the
    ``line`` of a dead letter can be explained as is. InputError when there is no such record.
    """
    if line is None:
        with path.open("rb") as f:
            head = f.read(_WHOLE_FILE + 1)
        whole = head.removeprefix(BOM).strip()
        if len(head) <= _WHOLE_FILE and whole.startswith(b"{") and _is_object(whole):
            return PickedRecord(whole)
    found: tuple[int, bytes | LongLine] | None = None
    more = False
    last = 0
    for number, text in iter_lines(str(path)):
        last = number
        if found is not None:
            more = True
            break
        if line is None or number == line:
            found = (number, text)
            if line is not None:
                break
        elif number > line:
            break
    if found is None:
        if line is None:
            raise InputError(
                f"{path} holds no record; give a file with a JSON record, or a JSON Lines file"
            )
        if last >= line:
            raise InputError(f"line {line} of {path} is blank; pick a line with a record")
        raise InputError(
            f"{path} has no line {line}: its last record is on line {last}"
            if last
            else f"{path} holds no record"
        )
    number, text = found
    if isinstance(text, LongLine):
        raise InputError(f"line {number} of {path} is too long to explain: {text.error}")
    if line is None and not more:
        return PickedRecord(text)  # a one-record JSON Lines file: nothing to point out
    note = "the first of several records; --line N explains another" if line is None else ""
    return PickedRecord(text, f", line {number}", note)


def _is_object(data: bytes) -> bool:
    try:
        return isinstance(orjson.loads(data), dict)
    except orjson.JSONDecodeError:
        return False


def explain_record(traced: CompiledBundle, line: bytes) -> Explanation:
    """Trace one input line through a bundle compiled with ``trace=True``."""
    assert traced.traced, "compile the bundle with trace=True"
    if isinstance(traced.source, CohortSource):  # a cohort payload: the difference it sends
        from moerules.engine.authoring.cohort_explain import explain_cohort

        return explain_cohort(traced, line)
    ex = Explanation()
    steps = ex.steps
    try:
        batch = traced.source.decode(line)
    except RecordError as exc:
        steps.append({"step": "outcome", "outcome": f"dead-lettered: {exc}"})
        return ex
    if traced.identity is not None:
        steps.append({"step": "section", "title": "identity"})
        trace: list[tuple[Any, ...]] = []
        try:
            traced.identity(batch, None, trace)
        except RecordError as exc:  # the whole record is dead-lettered
            _fields([t for t in trace if t[0] == "identity"], steps)
            steps.append({"step": "outcome", "outcome": f"dead-lettered: {exc}"})
            return _with_requests(ex, traced, line)
        _fields([t for t in trace if t[0] == "identity"], steps)
        if not any(s.get("chosen") for s in steps if s["step"] == "identity"):
            steps.append(
                {
                    "step": "outcome",
                    "outcome": "no usable identity: the record would be dead-lettered",
                }
            )
    if traced.user is not None:
        steps.append({"step": "section", "title": "user attributes"})
        trace = []
        try:
            traced.user(batch, None, trace)
            _fields(trace, steps)
        except RecordError as exc:
            steps.append({"step": "outcome", "outcome": f"dead-lettered: {exc}"})
    events = batch.get(traced.source.events_key or "", []) if traced.source.events_key else []
    projects = traced.projects
    for index, event in enumerate(events if isinstance(events, list) else []):
        etype = event.get("event_type") if isinstance(event, dict) else None
        steps.append(
            {"step": "section", "title": f"event {index}" + (f" ({etype})" if etype else "")}
        )
        trace = []
        try:
            mapped = traced.event(batch, event, trace)
        except RecordError as exc:
            _fields(trace, steps)
            steps.append({"step": "outcome", "outcome": f"dead-lettered: {exc}"})
            continue
        _fields(trace, steps)
        for step in steps:
            if step["step"] == "route" and isinstance(step["decision"], int):
                step["decision"] = _route_text(step["decision"], projects)
        rule = mapped.rule
        if rule == NO_RULE:
            outcome = "dropped: no rule matched"
        elif traced.drop_reasons[rule] is not None:
            outcome = f"dropped by rule {traced.rule_names[rule]!r}: {traced.drop_reasons[rule]}"
        elif traced.emits[rule] == "user":
            outcome = f"user-attribute update (rule {traced.rule_names[rule]!r})"
        else:
            outcome = f"event {mapped.name!r} (rule {traced.rule_names[rule]!r})"
            if mapped.route != ROUTE_NONE:
                outcome += ", " + _route_text(mapped.route, projects)
        steps.append({"step": "outcome", "outcome": outcome})
    return _with_requests(ex, traced, line)


def _with_requests(ex: Explanation, traced: CompiledBundle, line: bytes) -> Explanation:
    """The requests and report the dry run makes of ``line``, with the trace."""
    out = io.BytesIO()
    report = dry_run(traced, [(1, line)], out)
    ex.requests = [orjson.loads(r) for r in out.getvalue().splitlines()]
    ex.report = report.to_dict()
    return ex


def _route_text(route: int, projects: list[tuple[str, str]]) -> str:
    if route >= 0:
        name, code = projects[route]
        return f"project {name!r} (project_code {code})"
    if route in _FALLBACK:
        return f"portfolio level ({_FALLBACK[route]} project name)"
    return "no routing"
