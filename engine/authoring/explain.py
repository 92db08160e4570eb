"""``moerules explain``: what a bundle does to one input record, step by step.

The trace comes from the same generated code the run uses, compiled with trace points, so
what it shows is what runs, not a second interpretation of the rules.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import orjson
from moerules.engine.api import dry_run
from moerules.engine.compile.compiler import (
    ROUTE_BLANK,
    ROUTE_MISSING,
    ROUTE_NONE,
    ROUTE_UNKNOWN,
    CompiledBundle,
)
from moerules.engine.errors import RecordError

__all__ = ["Explanation", "explain_record"]

_FALLBACK = {ROUTE_MISSING: "missing", ROUTE_BLANK: "blank", ROUTE_UNKNOWN: "unknown"}


@dataclass
class Explanation:
    steps: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps({"steps": self.steps, "requests": self.requests,
                             "report": self.report}, option=orjson.OPT_INDENT_2, default=str)

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
                out.append(f"    routing: {step['from']} = {_v(step['value'])} -> "
                           f"{step['decision']}")
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
            steps.append({"step": "field", "name": name, "source": source,
                          "transforms": list(transforms), "value": value})
        elif kind == "rule":
            _, rule, when, matched = entry
            steps.append({"step": "rule", "rule": rule, "when": when, "matched": matched})
        elif kind == "identity":
            _, candidate, value, ok = entry
            steps.append({"step": "identity", "candidate": candidate, "value": value,
                          "chosen": bool(ok)})
        elif kind == "route":
            _, source, value, route = entry
            steps.append({"step": "route", "from": source, "value": value,
                          "decision": route})


def explain_record(traced: CompiledBundle, line: bytes) -> Explanation:
    """Trace one input line through a bundle compiled with ``trace=True``."""
    assert traced.traced, "compile the bundle with trace=True"
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
            steps.append({"step": "outcome", "outcome": "no usable identity: the record would "
                                                        "be dead-lettered"})
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
        steps.append({"step": "section", "title": f"event {index}"
                      + (f" ({etype})" if etype else "")})
        trace = []
        try:
            rule, name, _attrs, _fields_out, route, _value = traced.event(batch, event, trace)
        except RecordError as exc:
            _fields(trace, steps)
            steps.append({"step": "outcome", "outcome": f"dead-lettered: {exc}"})
            continue
        _fields(trace, steps)
        for step in steps:
            if step["step"] == "route" and isinstance(step["decision"], int):
                step["decision"] = _route_text(step["decision"], projects)
        if rule < 0:
            outcome = "dropped: no rule matched"
        elif traced.drop_reasons[rule] is not None:
            outcome = f"dropped by rule {traced.rule_names[rule]!r}: {traced.drop_reasons[rule]}"
        elif traced.emits[rule] == "user":
            outcome = f"user-attribute update (rule {traced.rule_names[rule]!r})"
        else:
            outcome = f"event {name!r} (rule {traced.rule_names[rule]!r})"
            if route != ROUTE_NONE:
                outcome += ", " + _route_text(route, projects)
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
