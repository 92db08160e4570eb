"""The rule language: what a bundle file may say, as pydantic models.

Values that are plain strings in YAML are the common case (``Total: event.data.total``); the
validators below widen them into the full form, so the compiler only ever sees one shape.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "Bundle",
    "ConnectorRef",
    "CountedDrop",
    "EventRule",
    "FieldSpec",
    "Identity",
    "Project",
    "Routing",
    "Spread",
    "Table",
    "TransformStep",
    "UserRule",
]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


TransformStep = str | dict[str, Any]
"""``lower`` or ``{default: unknown}``: a name from the transform vocabulary, with its argument."""


def _as_list(value: Any) -> Any:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _path_shorthand(value: Any) -> Any:
    return {"from": value} if isinstance(value, str) else value


# json_schema_input_type: the JSON Schema (for editors) shows the short forms a rule file may
# use, as the validators accept them, not only the widened model
Transforms = Annotated[
    list[TransformStep],
    BeforeValidator(_as_list, json_schema_input_type=TransformStep | list[TransformStep] | None),
]


class FieldSpec(_Rule):
    """How one output value is made: read a path (or a constant, or a template), then transform.

    ``Price: {from: event.data.price, as: float, default: 0}``
    """

    from_: str | None = Field(None, alias="from", description="JMESPath to read the value from")
    value: Any = Field(None, description="a constant value (instead of `from`)")
    template: str | None = Field(None, description="a Jinja2 template rendered to a string")
    as_: str | None = Field(
        None, alias="as", description="cast: string, int, float, bool, epoch_s, epoch_ms, iso8601"
    )
    transform: Transforms = Field(default_factory=list, description="transform steps, in order")
    default: Any = Field(None, description="used when the value is missing, null or empty")
    on_error: Literal["dead_letter", "omit"] = Field(
        "dead_letter",
        description="when a transform fails: dead-letter the record, or omit just this field",
    )
    each: str | None = Field(
        None, description="JMESPath to a list; `attributes` then maps every item"
    )
    attributes: dict[str, Field_] | None = Field(
        None, description="for `each` (or a nested object): the item's fields, paths relative to it"
    )
    spread: Spreads = Field(
        default_factory=list, description="with `attributes`: objects to copy into the item"
    )


Field_ = Annotated[
    FieldSpec, BeforeValidator(_path_shorthand, json_schema_input_type=str | FieldSpec)
]


class Spread(_Rule):
    """Copy many attributes at once: every entry of an object, renamed through a table.

    ``{from: batch.user_attributes, rename: reserved_attributes}``; or one attribute whose name
    is data too: ``{key: event.data.user_attribute_name, from: event.data.new}``.
    """

    from_: str = Field(alias="from", description="JMESPath to an object (or, with `key`, a value)")
    key: str | None = Field(None, description="JMESPath to the attribute name (one-pair form)")
    rename: str | dict[str, str] | None = Field(
        None, description="a table name or an inline mapping: source key -> output name"
    )
    ignore_case: bool = Field(False, description="match `rename` keys case-insensitively")
    only: list[str] | None = Field(None, description="copy only these source keys")
    exclude: list[str] = Field(default_factory=list, description="never copy these source keys")
    renamed_only: bool = Field(False, description="copy only keys that `rename` knows")
    prefix: str = ""
    suffix: str = ""
    value: str | None = Field(
        None, description="JMESPath applied to each entry's value (e.g. `consented`)"
    )
    transform: Transforms = Field(default_factory=list)


Spreads = Annotated[
    list[Spread], BeforeValidator(_as_list, json_schema_input_type=Spread | list[Spread] | None)
]

FieldSpec.model_rebuild()


class EventRule(_Rule):
    """One event rule: when it matches, the record becomes an event, a user update, or a drop."""

    name: str = Field(description="unique rule name; reports and traces use it")
    when: str | None = Field(None, description="JMESPath condition; no `when` matches everything")
    drop: str | None = Field(None, description="drop matching records with this reason")
    emit: Literal["event", "user"] = Field(
        "event", description="`event`, or `user` to turn the record into a user-attribute update"
    )
    event_name: Annotated[
        FieldSpec | None,
        BeforeValidator(
            lambda v: {"template": v} if isinstance(v, str) else v,
            json_schema_input_type=str | FieldSpec | None,
        ),
    ] = Field(None, description="the event name: a template, or {from/transform}")
    attributes: dict[str, Field_] = Field(default_factory=dict)
    spread: Spreads = Field(default_factory=list)
    fields: dict[str, Field_] = Field(
        default_factory=dict,
        description="destination-level fields of the event (time, platform, app version...)",
    )


class CountedDrop(_Rule):
    """User changes a record lists that the destination cannot take: each entry of the list
    counts as one user update, dropped with ``reason``, so the report shows them.

    ``{each: batch.deleted_user_attributes, reason: user attribute deletion not forwarded}``
    """

    each: str = Field(description="JMESPath to a list; every entry is one dropped user update")
    reason: str = Field(description="the drop reason the report counts the entries under")


class UserRule(_Rule):
    """User attributes taken from every record (reserved -> standard, the rest -> custom)."""

    when: str | None = None
    attributes: dict[str, Field_] = Field(default_factory=dict)
    spread: Spreads = Field(default_factory=list)
    drop: list[CountedDrop] = Field(
        default_factory=list,
        description="lists of user changes not sent: each entry counted as a dropped update",
    )


class Identity(_Rule):
    """Identity precedence: the first candidate (in `precedence` order) with a usable value."""

    candidates: dict[str, Field_] = Field(description="named candidates: name -> path")
    precedence: list[str] | None = Field(
        None, description="candidate names to try, in order (default: all, as declared)"
    )
    reject: list[str] = Field(
        default_factory=list,
        description="values that never count as an identity (compared trimmed, ignoring case)",
    )


class Project(_Rule):
    name: str = Field(description="the project name, exactly as `moe_project_name` must say it")
    code: str = Field(description="the project code the Data API takes (`project_code`)")


class Routing(_Rule):
    """Portfolio routing: a source field names the project; exact, case-sensitive match."""

    from_: str = Field(alias="from", description="JMESPath to the project name")
    projects: list[Project] = Field(default_factory=list)
    fallback: Literal["portfolio"] = "portfolio"
    attribute: str = Field(
        "moe_project_name", description="event attribute that carries the matched project name"
    )


class Table(_Rule):
    """A lookup table; written short as just its values, or long with `values:`."""

    shorthand_marker: ClassVar[str] = "values"
    values: dict[str, Any]
    default: Any = Field(None, description="value for keys not in the table (default: keep input)")
    ignore_case: bool = False


def _table_shorthand(value: Any) -> Any:
    if isinstance(value, dict) and "values" not in value:
        return {"values": value}
    return value


class ConnectorRef(_Rule):
    connector: str
    settings: dict[str, Any] = Field(default_factory=dict)


class Bundle(_Rule):
    """A rule bundle: source, destination, identity, user attributes, event rules, routing."""

    bundle: str = Field(description="the bundle's name")
    description: str = ""
    extends: str | None = Field(None, description="a shipped bundle's name or a path to overlay")
    source: ConnectorRef
    destination: ConnectorRef
    identity: Identity | None = None
    user: UserRule | None = None
    events: list[EventRule] = Field(default_factory=list)
    routing: Routing | None = None
    tables: dict[
        str,
        Annotated[
            Table, BeforeValidator(_table_shorthand, json_schema_input_type=Table | dict[str, Any])
        ],
    ] = Field(default_factory=dict)
