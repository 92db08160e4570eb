"""Mixpanel cohort sync payloads as a cohort source (reference §7; seed 003).

One input line is one payload Mixpanel posted::

    {"action": "members",
     "parameters": {"mixpanel_project_id": "1", "mixpanel_cohort_id": "1234",
                    "mixpanel_cohort_name": "Power Users", "mixpanel_cohort_description": "",
                    "mixpanel_session_id": "7c1e...", "page_info": {"total_pages": 3,
                    "page_count": 1},
                    "members": [{"email": "...", "mixpanel_distinct_id": "d1",
                                 "$moengage_user_id": "u1"}, ...]}}

``members`` is the whole cohort ("replace the users you have in the cohort with the copy
provided"): seed 003's one-time export and its dynamic sync every 15 minutes both overwrite
the last export. A large export comes in pages that share ``mixpanel_session_id``; it is
complete when ``total_pages`` distinct pages have arrived (``page_count`` numbers a page:
whether from 0 or 1 is not documented, and either works). ``add_members`` and
``remove_members`` are the users who entered or left since the last sync.

Mixpanel sends no time: its payloads are ordered by when their session was first seen. A
repeat (Mixpanel retries 5xx and 429) has the same session (and action, and page). A
payload without a session is identified by its content. The members are read by the bundle's
identity rules as ``event`` (``$moengage_user_id``, else ``mixpanel_distinct_id``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from moerules.connectors.amplitude.cohorts import content_key, json_object, text_id
from moerules.engine.cohorts import (
    ENTERED,
    FULL,
    LEFT,
    CohortMessage,
    CohortSource,
    CohortSourceSettings,
)
from moerules.engine.connector import packaged_schema
from moerules.engine.errors import RecordError
from pydantic import Field

__all__ = ["MixpanelCohortSettings", "MixpanelCohortSource"]

ACTIONS = {"members": FULL, "add_members": ENTERED, "remove_members": LEFT}


class MixpanelCohortSettings(CohortSourceSettings):
    """``source: {connector: mixpanel-cohorts, settings: {...}}``."""

    segment_name: str = Field(
        "{{ cohort_name }}",
        description="the segment name in MoEngage: a template of cohort_name and cohort_id "
        "(Mixpanel's: the cohort's name)",
    )


def _page_info(parameters: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(page, pages) of a paged payload, or (None, None)."""
    info = parameters.get("page_info")
    if info is None:
        return None, None
    if not isinstance(info, dict):
        raise RecordError(
            "page_info is not an object", "`page_info` holds total_pages and page_count"
        )
    total, page = info.get("total_pages"), info.get("page_count")
    for key, value in (("total_pages", total), ("page_count", page)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise RecordError(
                f"page_info.{key} is not a page number", f"got {orjson.dumps(value).decode()[:60]}"
            )
    if total is not None and total < 1:
        raise RecordError(
            "page_info.total_pages is not a page number",
            f"an export has at least one page; got {total}",
        )
    return page, total


class MixpanelCohortSource(CohortSource):
    """Decodes one Mixpanel cohort sync payload per line."""

    __slots__ = ()
    name: ClassVar[str] = "mixpanel-cohorts"
    partner: ClassVar[str] = "mixpanel"
    # the members sit under ``parameters``: the rules' ``event`` is one of them, which the
    # record schema's path checks cannot follow (``events_key`` names a top-level key)
    events_key: ClassVar[str | None] = None
    settings_model: ClassVar[type[MixpanelCohortSettings]] = MixpanelCohortSettings
    record_schema: ClassVar[Mapping[str, Any] | None] = packaged_schema(
        __package__ or "", "cohort-webhook.schema.json"
    )

    @classmethod
    def from_settings(cls, settings: MixpanelCohortSettings) -> MixpanelCohortSource:
        return cls(settings.model_dump())

    def decode(self, line: bytes) -> dict[str, Any]:
        """The payload; RecordError when it is not a cohort payload at all (checked here, so
        that ``moerules serve`` answers 400 to it before it is stored)."""
        record = json_object(line)
        self.message(record)
        return record

    def message(self, record: dict[str, Any]) -> CohortMessage:
        action = record.get("action")
        if action not in ACTIONS:
            raise RecordError(
                "unknown action",
                "`action` is members, add_members or "
                f"remove_members; got "
                f"{orjson.dumps(action).decode()[:60]}",
            )
        parameters = record.get("parameters")
        if not isinstance(parameters, dict):
            raise RecordError(
                "parameters is not an object", "`parameters` holds the cohort and its members"
            )
        cohort_id = text_id(parameters, "mixpanel_cohort_id", "mixpanel_cohort_id")
        name = parameters.get("mixpanel_cohort_name")
        if not isinstance(name, str):
            raise RecordError(
                "mixpanel_cohort_name is missing", "`mixpanel_cohort_name` must be a string"
            )
        description = parameters.get("mixpanel_cohort_description")
        if description is not None and not isinstance(description, str):
            raise RecordError(
                "mixpanel_cohort_description is not a string",
                f"got {orjson.dumps(description).decode()[:60]}",
            )
        members = parameters.get("members")
        if not isinstance(members, list):
            raise RecordError(
                "members is not a list", "`parameters.members` must be a list of objects"
            )
        session = parameters.get("mixpanel_session_id")
        if session is not None and (not isinstance(session, str) or not session):
            raise RecordError(
                "mixpanel_session_id is not a string",
                "`mixpanel_session_id` must be a non-empty string",
            )
        page, pages = _page_info(parameters)
        kind = ACTIONS[action]
        if kind == FULL and (pages or 1) > 1 and (session is None or page is None):
            raise RecordError(
                "paged export without its session",
                "an export of several pages needs mixpanel_session_id and "
                "page_info.page_count to be put together",
            )
        # the pages of an export share its session; a diff's key names its action too, so
        # that it is never taken for a repeat of the export of the same session
        key = session or content_key(record)
        if kind != FULL:
            key = f"{action} {key}"
        return CohortMessage(
            partner=self.partner,
            cohort_id=cohort_id,
            name=name,
            description=description or None,
            action=kind,
            members=members,
            key=key,
            segment=self.segment_name(name, cohort_id),
            page=page if kind == FULL else None,
            pages=pages if kind == FULL else None,
        )
