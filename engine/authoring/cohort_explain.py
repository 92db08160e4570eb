"""``moerules explain`` on a cohort webhook payload: the difference it would send, and why.

The payload goes through the same feed a dry run uses (engine/runtime/cohorts.py), against the
membership state the bundle's ``state`` setting names, read and never written. The trace shows
what the payload says, each member's identity candidates, what comes of each word (added,
removed, unchanged, a repeat, superseded, unmatched, held until the export is complete) and
the requests.
"""

from __future__ import annotations

from typing import Any

import orjson
from moerules.engine.api import request_json
from moerules.engine.authoring.explain import Explanation, _fields
from moerules.engine.cohorts import ENTERED, FULL, CohortMessage
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.runtime.cohorts import CohortFeed, Decision
from moerules.engine.runtime.deadletter import DeadLetterWriter
from moerules.engine.runtime.report import RunReport

__all__ = ["explain_cohort"]

_ACTIONS = {FULL: "the whole membership", ENTERED: "users entering", "left": "users leaving"}


def explain_cohort(traced: CompiledBundle, line: bytes) -> Explanation:
    """Trace one cohort payload through a bundle compiled with ``trace=True``."""
    ex = Explanation()
    head: list[dict[str, Any]] = []
    members: dict[int, list[dict[str, Any]]] = {}
    implied: list[dict[str, Any]] = []
    count = 0

    def tracer(index: int, step: str, data: Any) -> None:
        nonlocal count
        if step == "message":
            message: CohortMessage = data["message"]
            count = len(message.members)
            head.extend(_message_steps(message, data["segment"]))
            return
        if step == "dead" and index < 0 and not head:  # the payload itself could not be read
            head.extend(
                [
                    {"step": "section", "title": "payload"},
                    {"step": "outcome", "outcome": f"dead-lettered: {data}"},
                ]
            )
            return
        steps = members.setdefault(index, []) if 0 <= index < count else implied
        if step == "identity":
            _fields([t for t in data if t[0] == "identity"], steps)
        elif step == "dead":
            steps.append({"step": "outcome", "outcome": f"dead-lettered: {data}"})
        elif step == "decision":
            steps.append({"step": "outcome", "outcome": _decision(data)})
        elif step == "held":
            steps.append({"step": "outcome", "outcome": f"held: {data}"})

    report = RunReport(bundle=traced.model.bundle, dry_run=True)
    dead = DeadLetterWriter(None, traced.model.bundle, traced.secrets)
    feed = CohortFeed(traced, report, dead, dry_run=True, tracer=tracer)
    try:
        requests = list(feed.run(iter([(1, line)])))
    finally:
        feed.close()
    ex.steps += head or [{"step": "section", "title": "payload"}]
    for index in sorted(members):
        ex.steps.append({"step": "section", "title": f"member {index}"})
        ex.steps += members[index]
    if implied:
        ex.steps.append({"step": "section", "title": "what the state implies besides"})
        ex.steps += implied
    if not head and not implied:
        ex.steps.append({"step": "outcome", "outcome": "nothing decided"})
    ex.requests = [
        orjson.loads(request_json(r, traced.sink.secret_headers, traced.secrets)) for r in requests
    ]
    report.requests = len(requests)
    report.request_bytes = sum(len(r.body) for r in requests)
    ex.report = report.to_dict()
    return ex


def _message_steps(message: CohortMessage, segment: str) -> list[dict[str, Any]]:
    what = _ACTIONS.get(message.action, message.action)
    page = ""
    if message.action == FULL and (message.pages or 1) > 1:
        page = f", page {message.page} of {message.pages}"
    lines = [
        f"{message.partner} cohort {message.cohort_id} ({message.name!r}): {what}, "
        f"{len(message.members)} members{page}",
        f"message {message.key!r}" + (f", computed at {message.at} ms" if message.at else ""),
        f"segment name: {segment!r}",
    ]
    return [{"step": "section", "title": "payload"}] + [
        {"step": "outcome", "outcome": text} for text in lines
    ]


def _decision(decision: Decision) -> str:
    if decision.member is None:
        who = f" {decision.uid}" if decision.uid else ""
        return f"nothing to send for{who or ' it'} ({decision.reason}): {decision.why}"
    verb = "add" if decision.member else "remove"
    return f"{verb} {decision.uid}: {decision.why}"
