"""Binding: what a bundle's rules need from outside the rule file. Its connectors (found by name
in the ``moerules.connectors`` entry points), their settings (checked against each connector's
model, ``${VAR}`` read from the environment), the secrets to scrub from every output, and the
project codes routing sends.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moerules.engine.connector import Sink, Source, connector_names, load_connector
from moerules.engine.errors import Position, Problem
from moerules.engine.rules.loading import LDict, position_of
from moerules.engine.rules.model import Bundle
from moerules.engine.rules.overlay import resolve_env
from moerules.engine.rules.settings import bind_settings
from moerules.engine.rules.validation import did_you_mean

__all__ = ["Binding", "bind"]


@dataclass
class Binding:
    """A bundle's connectors, built from their settings, and what the environment lacks."""

    source: Source | None = None
    sink: Sink | None = None
    sink_class: type[Sink] | None = None  # known even when its settings are wrong
    projects: list[tuple[str, str]] = field(default_factory=list)  # (name, code)
    missing_env: list[str] = field(default_factory=list)
    secrets: frozenset[str] = frozenset()
    problems: list[Problem] = field(default_factory=list)

    @property
    def destination(self) -> Sink | type[Sink] | None:
        """What the rules are checked against: the sink, or its class (rules are checked by
        the class too when its settings are wrong)."""
        return self.sink if self.sink is not None else self.sink_class


def bind(raw: LDict, bundle: Bundle, env: Mapping[str, str]) -> Binding:
    """Bind ``bundle``'s connectors and project codes; problems at their positions."""
    out = Binding()
    source_cls = _connector(raw, out, bundle.source.connector, "source", Source)
    sink_cls = _connector(raw, out, bundle.destination.connector, "destination", Sink)
    missing: list[str] = []
    # settings are checked against each connector's model at their file positions
    if source_cls is not None:
        bound = bind_settings(raw, "source", source_cls, env)
        out.problems += bound.problems
        missing += bound.missing
        out.source = bound.connector
    if sink_cls is not None:
        bound = bind_settings(raw, "destination", sink_cls, env)
        out.problems += bound.problems
        missing += bound.missing
        out.secrets = frozenset(bound.secrets)
        out.sink, out.sink_class = bound.connector, sink_cls
    if bundle.routing is not None:
        for project in bundle.routing.projects:
            code, _ = resolve_env({"code": project.code}, env)
            out.projects.append((project.name, str(code["code"])))
            missing += [name for name in _env_names(project.code) if name not in env]
    out.missing_env = sorted(set(missing))
    return out


def _connector(raw: LDict, out: Binding, name: str, role: str, kind: type[Any]) -> Any:
    cls = load_connector(name)
    if cls is None or not issubclass(cls, kind):
        choices = [
            n
            for n in connector_names()
            if (c := load_connector(n)) is not None and issubclass(c, kind)
        ]
        pos = position_of(raw, (role, "connector")) or Position(raw.pos.path)
        out.problems.append(
            Problem(
                pos,
                f"unknown {role} connector {name!r}"
                f"{did_you_mean(name, choices)}; available: "
                f"{', '.join(choices)}",
            )
        )
        return None
    return cls


def _env_names(text: str) -> list[str]:
    return re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)
