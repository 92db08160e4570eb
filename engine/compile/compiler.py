"""Compiles a validated bundle into Python functions, once, so per record only generated code runs.

Three parts, in order:

1. binding (``binding``): the connectors, built from their checked settings, the environment's
   ``${VAR}`` values, the secrets and the project codes;
2. checks (``checks``): one pass over the rules, every problem reported once at its position;
3. code emission (``sections``, ``fields``, ``spreads``), which meets only sound rules: one
   module whose functions (``identity``, ``user``, ``event``...) are straight-line subscripts,
   comparisons and dict building, much as a person would write them by hand.

A bundle with any problem raises RuleError listing them all; nothing is emitted for it.
``moerules compile BUNDLE`` prints the module (``listing``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from moerules.engine.cohorts import cohort_problems
from moerules.engine.compile.binding import bind
from moerules.engine.compile.checks import RuleChecks
from moerules.engine.compile.language import RuleLanguage
from moerules.engine.compile.mapped import (
    ROUTE_BLANK,
    ROUTE_MISSING,
    ROUTE_NONE,
    ROUTE_UNKNOWN,
    ChosenIdentity,
    MappedEvent,
)
from moerules.engine.compile.projection import ReadSet
from moerules.engine.compile.sections import emit_bundle
from moerules.engine.connector import Sink, Source
from moerules.engine.errors import RuleError
from moerules.engine.rules.loading import LDict
from moerules.engine.rules.model import Bundle
from moerules.engine.rules.validation import validate_document

__all__ = [
    "ROUTE_BLANK",
    "ROUTE_MISSING",
    "ROUTE_NONE",
    "ROUTE_UNKNOWN",
    "ChosenIdentity",
    "CompiledBundle",
    "MappedEvent",
    "compile_bundle",
]


@dataclass
class CompiledBundle:
    """A bundle ready to run: its model, connectors and generated functions."""

    model: Bundle
    source: Source
    sink: Sink
    identity: Callable[..., ChosenIdentity] | None
    identity_per_batch: bool
    user: Callable[..., dict[str, Any] | None] | None
    event: Callable[..., MappedEvent]
    rule_names: list[str]
    drop_reasons: list[str | None]
    emits: list[str]
    projects: list[tuple[str, str]]  # (name, code)
    source_code: str
    reads: ReadSet = field(default_factory=ReadSet)  # what the rules read of a record
    projected: bool = True  # decode only what the rules read, where the source allows it
    missing_env: list[str] = field(default_factory=list)
    secrets: frozenset[str] = frozenset()
    traced: bool = False
    # the user section's counted drops: entries per drop, and each drop's reason
    user_drops: Callable[..., tuple[int, ...]] | None = None
    user_drop_reasons: list[str] = field(default_factory=list)
    # the names the generated code refers to besides its own (tables, conversions...)
    constants: Mapping[str, Any] = field(default_factory=dict)


def compile_bundle(
    raw: LDict, *, trace: bool = False, env: Mapping[str, str] | None = None
) -> CompiledBundle:
    """Validate and compile a merged bundle document; raise RuleError with every problem.

    ``env`` supplies ``${VAR}`` values (default: the process environment). With ``trace``,
    the functions take a list to append trace points to (``explain``).
    """
    model, problems = validate_document(raw, Bundle, raw.pos.path)
    if model is None:
        raise RuleError(problems)
    try:
        binding = bind(raw, model, os.environ if env is None else env)
        language = RuleLanguage(model)
        checks = RuleChecks(raw, model, language, binding.destination).run()
        for loc, message in cohort_problems(model, binding.source, binding.sink):
            checks.error(loc, message, key=len(loc) == 1)  # engine/cohorts.py
    except Exception:
        if problems:  # a model built around reported problems may not check: report those
            raise RuleError(problems) from None
        raise
    problems += binding.problems + checks.problems
    if problems or binding.source is None or binding.sink is None:
        raise RuleError(problems)
    code = emit_bundle(model, language, trace=trace)
    constants = dict(code.namespace)
    namespace = code.build(f"<bundle {model.bundle}>")
    return CompiledBundle(
        model=model,
        source=binding.source,
        sink=binding.sink,
        identity=namespace.get("identity"),
        identity_per_batch=checks.identity_per_batch,
        user=namespace.get("user"),
        event=namespace["event"],
        rule_names=[r.name for r in model.events],
        drop_reasons=[r.drop for r in model.events],
        emits=[r.emit for r in model.events],
        projects=binding.projects,
        source_code=code.source(),
        reads=checks.reads,
        missing_env=binding.missing_env,
        secrets=binding.secrets,
        traced=trace,
        user_drops=namespace.get("user_drops"),
        user_drop_reasons=[d.reason for d in model.user.drop] if model.user else [],
        constants=constants,
    )
