"""Connector settings: one typed model per connector, checked where the bundle says them.

A connector class declares its settings as a pydantic model, a subclass of
``ConnectorSettings``, and is built from a parsed instance of it::

    class ExampleSettings(ConnectorSettings):
        api_key: SecretStr = Field(min_length=1, description="the API key (secret)")
        region: Literal["us", "eu"] = Field("us", description="the data residency region")
        requests_per_second: int = Field(100, ge=1, le=1000, description="rate limit")

    class ExampleSink(Sink):
        settings_model = ExampleSettings

        @classmethod
        def from_settings(cls, settings: ExampleSettings) -> ExampleSink: ...

``moerules validate`` reports an unknown setting, a wrong type or a value out of range at the
``file:line:col`` of the setting (an overlay's line, or ``--set KEY`` for a command-line
override). ``SecretStr`` fields are secrets: their values are never part of a message and
are scrubbed from every output. ``moerules schema`` and the README's settings tables are
generated from the same models.

``${VAR}`` placeholders: before substitution, a value may hold only well-formed ``${NAME}``
placeholders besides its text. Variables that are set are substituted and the result is
checked like any value; an error names the setting and the variable. A setting whose
variable is not set keeps its placeholder where it is free text (dry runs show
``${MOENGAGE_WORKSPACE_ID}`` in URLs) and otherwise takes its default until the variable is
set; a real run refuses to start while any is missing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from moerules.engine.errors import Position, Problem
from moerules.engine.rules.loading import LDict
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

__all__ = [
    "MIN_SECRET_LENGTH",
    "BoundSettings",
    "ConnectorSettings",
    "NoSettings",
    "bind_settings",
    "secret_fields",
    "settings_model_of",
    "settings_schema",
    "settings_table",
]

MIN_SECRET_LENGTH = 6
"""Secrets are scrubbed from output as substrings; one shorter than this ("K" in a test)
would corrupt every header and value it appears in, so it is not scrubbed."""

Role = Literal["source", "destination"]
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PLACEHOLDER_SCHEMA = {
    "type": "string",
    "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*\}",
    "description": "a ${VAR} placeholder, read from the environment",
}


class ConnectorSettings(BaseModel):
    """Base of connector settings models: unknown keys are errors, values are immutable.

    Numbers are accepted where text is expected (``workspace_id: 12345``), and text where
    numbers are (a substituted ``${VAR}`` is always text), as pydantic's lax mode does.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, coerce_numbers_to_str=True, hide_input_in_errors=True
    )


class NoSettings(ConnectorSettings):
    """The settings of a connector that takes none."""


def settings_model_of(connector: type[Any]) -> type[ConnectorSettings]:
    """The connector class's ``settings_model``, or ``NoSettings`` when it declares none."""
    model = getattr(connector, "settings_model", None)
    if isinstance(model, type) and issubclass(model, ConnectorSettings):
        return model
    return NoSettings


def secret_fields(model: type[ConnectorSettings]) -> frozenset[str]:
    """Names of the model's secret settings (typed ``SecretStr``)."""
    return frozenset(
        name for name, info in model.model_fields.items() if _is_secret(info.annotation)
    )


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_is_secret(arg) for arg in getattr(annotation, "__args__", ()))


@dataclass
class BoundSettings:
    """A connector built from checked settings, or the problems that prevented it."""

    connector: Any = None  # the Source or Sink; None when the settings have problems
    settings: ConnectorSettings | None = None
    problems: list[Problem] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # ${VARS} not set
    secrets: set[str] = field(default_factory=set)  # values to scrub from every output


def bind_settings(
    raw: LDict, role: Role, connector: type[Any], env: Mapping[str, str]
) -> BoundSettings:
    """Check the settings of ``raw[role]`` against the connector's model and build it.

    Every problem is positioned at its setting in ``raw`` (the merged bundle document).
    """
    ref = raw.get(role)
    ref = ref if isinstance(ref, LDict) else LDict(raw.pos)
    node = ref.get("settings")
    given: LDict = node if isinstance(node, LDict) else LDict(ref.pos)
    where = ref.key_pos.get("settings") or raw.key_pos.get(role) or raw.pos
    model = settings_model_of(connector)
    name = getattr(connector, "name", "?")
    fields = model.model_fields
    secrets = secret_fields(model)
    out = BoundSettings()
    values: dict[str, Any] = {}
    sources: dict[str, list[str]] = {}  # setting -> the variables its value came from
    unset: dict[str, list[str]] = {}  # setting -> its variables that are not set
    for key, value in given.items():
        if key not in fields:
            out.problems.append(Problem(given.key_pos[key], _unknown(key, role, name, fields)))
            continue
        if isinstance(value, str) and "$" in value:
            if _malformed(value):
                out.problems.append(
                    Problem(
                        given.val_pos[key],
                        f"{role} setting {key!r}: "
                        "malformed placeholder; write ${NAME}, NAME made of "
                        "letters, digits and _ (not starting with a digit)",
                    )
                )
                continue
            names = _PLACEHOLDER.findall(value)
            if names:
                sources[key] = names
                missing = [n for n in names if n not in env]
                if missing:
                    unset[key] = missing
                value = _PLACEHOLDER.sub(lambda m: env.get(m.group(1), m.group(0)), value)
        values[key] = value
    out.missing = sorted({n for names in unset.values() for n in names})
    parsed = _validate(model, values, given, where, role, name, sources, unset, out.problems)
    if out.problems or parsed is None:
        return out
    out.settings = parsed
    for key in secrets:
        secret = getattr(parsed, key, None)
        text = secret.get_secret_value() if isinstance(secret, SecretStr) else None
        if text and len(text) >= MIN_SECRET_LENGTH and key not in unset:
            out.secrets.add(text)
    factory = getattr(connector, "from_settings", None)
    out.connector = factory(parsed) if callable(factory) else connector(parsed.model_dump())
    return out


def _validate(
    model: type[ConnectorSettings],
    values: dict[str, Any],
    given: LDict,
    where: Position,
    role: Role,
    name: str,
    sources: dict[str, list[str]],
    unset: dict[str, list[str]],
    problems: list[Problem],
) -> ConnectorSettings | None:
    """The parsed settings; a value whose variable is unset and that does not pass as it
    stands is left to its default (the second attempt), never reported."""
    for _attempt in range(2):
        try:
            return model.model_validate(values)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
        deferred = False
        for err in errors:
            key = str(err["loc"][0]) if err["loc"] else ""
            if key in unset and not model.model_fields[key].is_required():
                values.pop(key, None)  # checked once the variable is set
                deferred = True
                continue
            if err["type"] == "missing":
                problems.append(Problem(where, f"{role} {name!r} needs setting {key!r}"))
                continue
            origin = ""
            if key in sources:
                origin = " (from " + ", ".join(f"${{{n}}}" for n in sources[key]) + ")"
            if key in unset:
                origin += ", which is not set"
            pos = given.val_pos.get(key, where)
            problems.append(Problem(pos, f"{role} setting {key!r}{origin}: {err['msg']}"))
        if not deferred or problems:
            return None
    return None


def _malformed(value: str) -> bool:
    """True when a ``$`` starts something that looks meant as a placeholder but is not one."""
    rest = _PLACEHOLDER.sub("", value)
    return "${" in rest


def _unknown(key: str, role: Role, name: str, fields: Mapping[str, Any]) -> str:
    from moerules.engine.rules.validation import did_you_mean

    takes = ", ".join(fields) if fields else "no settings"
    return (
        f"unknown setting {key!r} for {role} {name!r}{did_you_mean(key, fields)}; it takes: {takes}"
    )


def settings_schema(model: type[ConnectorSettings]) -> dict[str, Any]:
    """The model's JSON Schema for editors, where any setting may also be a ``${VAR}``."""
    schema = model.model_json_schema(mode="validation")
    props = schema.get("properties", {})
    for name, prop in props.items():
        if not _takes_text(prop):
            meta = {k: prop.pop(k) for k in ("title", "description", "default") if k in prop}
            props[name] = {**meta, "anyOf": [prop, _PLACEHOLDER_SCHEMA]}
    return schema


def _takes_text(prop: dict[str, Any]) -> bool:
    if prop.get("type") == "string" and "pattern" not in prop and "enum" not in prop:
        return True
    return any(_takes_text(p) for p in prop.get("anyOf", ()))


def settings_table(model: type[ConnectorSettings]) -> str:
    """A Markdown table of the model's settings, as the README shows them."""
    rows = ["| setting | type | default | what it is |", "|---|---|---|---|"]
    secrets = secret_fields(model)
    schema = model.model_json_schema(mode="validation").get("properties", {})
    for name, info in model.model_fields.items():
        kind = _describe_type(schema.get(name, {}))
        if name in secrets:
            kind = "secret string"
        default = (
            "required"
            if info.is_required()
            else ("none" if info.default is None else f"`{info.default}`")
        )
        rows.append(f"| `{name}` | {kind} | {default} | {info.description or ''} |")
    return "\n".join(rows) + "\n"


def _describe_type(prop: dict[str, Any]) -> str:
    if "enum" in prop:  # text where the enum has text (data centers also take numbers)
        texts = [v for v in prop["enum"] if isinstance(v, str)] or prop["enum"]
        return " / ".join(f"`{v}`" for v in texts)
    if "anyOf" in prop:
        kinds = [_describe_type(p) for p in prop["anyOf"] if p.get("type") != "null"]
        return " or ".join(k for k in kinds if k)
    kind = str(prop.get("type", ""))
    bounds = []
    if "minimum" in prop:
        bounds.append(f"≥ {prop['minimum']}")
    if "exclusiveMinimum" in prop:
        bounds.append(f"> {prop['exclusiveMinimum']}")
    if "maximum" in prop:
        bounds.append(f"≤ {prop['maximum']}")
    if "pattern" in prop:
        bounds.append(f"matching `{prop['pattern']}`")
    return kind + (f" ({', '.join(bounds)})" if bounds else "")
