"""Cohorts: what a cohort source and a cohort sink add to the connector contract.

A partner pushes cohort membership as webhook payloads, one input line each. A
``CohortSource`` decodes a payload (``decode``) and says what it means (``message``): which
cohort, what the payload asserts, and what orders and identifies it::

    CohortMessage(partner="mixpanel", cohort_id="1234", name="Power Users",
                  action=FULL,                 # the whole membership (or ENTERED / LEFT)
                  members=[{...}, ...],        # as the payload lists them
                  key="session-77",            # the same on a repeat of the message
                  page=1, pages=3,             # a FULL export in pages
                  at=0,                        # the partner's computation time (ms), or 0
                  segment="Power Users")       # the name the source's convention gives

The bundle's ``identity`` rules pick each member's user id (``event`` is the member,
``batch`` the payload). The engine keeps what the partner asked and what the destination
acknowledged (engine/runtime/membership.py) and sends only the difference
(engine/runtime/cohorts.py): a repeat, a page out of order, a user entering and leaving many
times all end with the destination holding the partner's latest membership.

A ``CohortSink`` accepts ``COHORT_MEMBERSHIP`` items and says which cohort names the
destination takes (``segment_name``: the name as it will be sent, or ``InvalidCohortName``
naming what is wrong), where the membership state lives (``state``) and which destination
account it describes (``membership_scope``). Its items are made by the engine::

    Item(COHORT_MEMBERSHIP, identity=<user id>, name=<segment name>, attributes={},
         fields={"cohort_id": "1234", "member": True, "description": "..." or None}, ...)

``member`` true adds the user to the segment, false removes it. A cohort sink sends its
requests one at a time in order (``Sink.ordered``): a later request may undo an earlier one.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from moerules.engine.compile.template_checks import TemplateCheck, TemplateError
from moerules.engine.compile.templates import environment
from moerules.engine.connector import COHORT_MEMBERSHIP, Sink, Source
from moerules.engine.rules.settings import ConnectorSettings
from pydantic import Field, field_validator

if TYPE_CHECKING:
    from moerules.engine.rules.model import Bundle

__all__ = [
    "DEFAULT_STATE",
    "ENTERED",
    "FULL",
    "LEFT",
    "MEMORY",
    "CohortMessage",
    "CohortSink",
    "CohortSource",
    "CohortSourceSettings",
    "InvalidCohortName",
    "cohort_problems",
]

FULL = "full"
"""The message lists the whole membership (or one page of it): everyone else is out."""
ENTERED = "entered"
"""The members listed entered the cohort."""
LEFT = "left"
"""The members listed left the cohort."""

DEFAULT_STATE = ".moerules/cohorts.sqlite"
"""Where the membership state lives unless the destination's ``state`` setting says."""
MEMORY = ":memory:"
"""A ``state`` that keeps nothing between runs (YAML tests; a look at one input alone)."""

SEGMENT_NAME_VARIABLES = frozenset({"cohort_name", "cohort_id"})


@dataclass(frozen=True, slots=True)
class CohortMessage:
    """What one cohort webhook payload asserts (see the module docstring)."""

    partner: str
    cohort_id: str
    name: str
    description: str | None
    action: str  # FULL, ENTERED or LEFT
    members: list[Any]
    key: str
    segment: str
    page: int | None = None
    pages: int | None = None
    at: int = 0


class InvalidCohortName(ValueError):
    """A cohort name the destination does not take; ``str()`` names what is wrong."""


class CohortSourceSettings(ConnectorSettings):
    """Settings every cohort source has: how a partner's cohort becomes a segment name.

    A partner's source sets its own default (its documented naming convention).
    """

    segment_name: str = Field(
        "{{ cohort_name }}",
        description="the segment name in the destination: a template of cohort_name and cohort_id",
    )

    @field_validator("segment_name")
    @classmethod
    def _template(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the segment name template is blank")
        try:
            TemplateCheck(environment({})).compile(value, SEGMENT_NAME_VARIABLES)
        except TemplateError as exc:
            raise ValueError(str(exc)) from None
        return value


class CohortSource(Source):
    """A source whose records are cohort webhook payloads (see the module docstring)."""

    __slots__ = ("_segment",)
    partner: ClassVar[str]
    settings_model: ClassVar[type[CohortSourceSettings]] = CohortSourceSettings

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        template = str(self.settings.get("segment_name") or "{{ cohort_name }}")
        self._segment = TemplateCheck(environment({})).compile(template, SEGMENT_NAME_VARIABLES)

    def segment_name(self, cohort_name: str, cohort_id: str) -> str:
        """The segment name the source's naming convention gives a cohort."""
        return str(self._segment.render(cohort_name=cohort_name, cohort_id=cohort_id))

    @abstractmethod
    def message(self, record: dict[str, Any]) -> CohortMessage:
        """What a decoded payload asserts; RecordError (dead-lettered) when it is not a valid
        cohort payload."""


class CohortSink(Sink):
    """A destination of cohort membership changes (see the module docstring)."""

    accepts: ClassVar[frozenset[str]] = frozenset({COHORT_MEMBERSHIP})
    ordered: ClassVar[bool] = True
    state: str = DEFAULT_STATE

    @property
    @abstractmethod
    def membership_scope(self) -> str:
        """The destination account the stored membership describes (a workspace and host):
        another account's membership is kept apart."""

    @abstractmethod
    def segment_name(self, name: str) -> str:
        """``name`` as the destination takes it (cleaned, when the sink is set to clean
        names); InvalidCohortName saying what is wrong, naming the character."""


def cohort_problems(
    bundle: Bundle, source: Source | None, sink: Sink | None
) -> list[tuple[tuple[str | int, ...], str]]:
    """What a bundle with a cohort source (or a cohort sink) gets wrong, as (where in the
    bundle, message): the compiler reports them at their ``file:line:col``."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    cohort_source = isinstance(source, CohortSource)
    if (
        source is not None
        and cohort_source
        and sink is not None
        and COHORT_MEMBERSHIP not in sink.accepts
    ):
        problems.append(
            (
                ("destination", "connector"),
                f"source {source.name!r} gives cohort memberships; destination "
                f"{sink.name!r} cannot take them (it accepts: "
                f"{', '.join(sorted(sink.accepts))})",
            )
        )
    if cohort_source and bundle.events:
        problems.append(
            (
                ("events",),
                "a cohort bundle has no event rules: each member's user id comes from `identity`",
            )
        )
    if cohort_source and bundle.user is not None:
        problems.append(
            (
                ("user",),
                "a cohort bundle has no `user` section: each member's "
                "user id comes from `identity`",
            )
        )
    if cohort_source and bundle.identity is None:
        problems.append(
            (
                ("source",),
                "a cohort bundle needs `identity`: the candidates for "
                "each member's user id (paths start with `event.`)",
            )
        )
    if isinstance(source, CohortSource) and isinstance(sink, CohortSink):
        # the template's own text must pass the destination's rules whatever the cohort is
        sample = source.segment_name("Cohort", "1")
        try:
            sink.segment_name(sample)
        except InvalidCohortName as exc:
            problems.append(
                (
                    ("source", "settings", "segment_name"),
                    f"the segment name template gives names the destination refuses: {exc}",
                )
            )
    return problems
