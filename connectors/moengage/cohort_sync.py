"""MoEngage Cohort Sync as a sink of cohort membership changes (reference §1.6).

``POST https://api-{dc}.moengage.com/v1/integrations/cohortsync`` with Basic auth (workspace
ID : Data API key) and ``MOE-APPKEY`` (required here: specs/moengage-cohort-sync-api.yaml).
One request adds or removes members of one custom segment::

    {"action": "add_members", "partner": "amplitude",
     "parameters": {"cohort_name": "[Amplitude][Power Users]", "cohort_id": "ab12",
                    "cohort_description": "...", "members": [{"uid": "u1"}, {"uid": "u2"}]}}

The API matches existing users by ``uid`` and never creates users; it creates the segment
when it does not exist. Limits: 300 requests a minute, 128 KB a payload (the spec's own
words: "The payload size cannot exceed 128KB"). Requests go one at a time, in order
(``ordered``): a request that removes a user must not overtake the one that added it.

Cohort names: the spec says a name "must not start with a period (.) and must not contain"
``| * ? \\ : < > = $ "``. A name that breaks the rule is refused with the character named
(``cohort_names: check``, the default) or cleaned (``cohort_names: clean``: leading periods
dropped, each character replaced by ``name_replacement``).

Answers (the spec's statuses) become verdicts: 200 delivered (unless its body says
``"status": "fail"``), 400 and 415 rejected, 401 and 403 fatal (a wrong key or a suspended
account), 413 split, 429 retried after its Retry-After (throttled), 408 and 5xx retried.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

import orjson
from moerules.connectors.moengage.settings import DATA_CENTERS, DataCenter, HttpUrl, Secret
from moerules.engine.cohorts import DEFAULT_STATE, CohortSink, InvalidCohortName
from moerules.engine.connector import (
    COHORT_MEMBERSHIP,
    BatchPolicy,
    Delivered,
    Fatal,
    Item,
    ItemTooLarge,
    RateLimit,
    Reject,
    Response,
    Retry,
    SinkEncoder,
    Split,
    Unencodable,
    Verdict,
    WireRequest,
)
from moerules.engine.rules.settings import ConnectorSettings
from moerules.engine.runtime.retry import retry_after_seconds
from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

__all__ = ["FORBIDDEN", "MAX_REQUEST_BYTES", "CohortSyncSettings", "CohortSyncSink"]

MAX_REQUEST_BYTES = 128 * 1024  # cohort-sync-api.yaml: "cannot exceed 128KB"
REQUESTS_PER_MINUTE = 300  # cohort-sync-api.yaml: "300 requests per minute"
FORBIDDEN = '|*?\\:<>=$"'  # cohort-sync-api.yaml, CohortParameters.cohort_name
DEFAULT_MAX_AGE = 5.0  # the longest a change waits in a request that is not full
PATH = "/v1/integrations/cohortsync"


def _replacement(value: str) -> str:
    bad = [c for c in value if c in FORBIDDEN]
    if bad or value.startswith("."):
        raise PydanticCustomError(
            "replacement",
            "the replacement must itself be allowed in a "
            "cohort name (not . at the start, none of "
            "{forbidden})",
            {"forbidden": _listed()},
        )
    return value


class CohortSyncSettings(ConnectorSettings):
    """``destination: {connector: moengage-cohort-sync, settings: {...}}``."""

    workspace_id: str = Field(
        min_length=1,
        description="Workspace ID (formerly App ID): the Basic-auth user and MOE-APPKEY",
    )
    data_api_key: Secret = Field(
        description="Data API key: the Basic-auth password (secret; use ${ENV_VAR})"
    )
    data_center: DataCenter = Field(
        "01",
        description="01-06 or 101, from dashboard-0X.moengage.com: picks "
        "https://api-{dc}.moengage.com",
    )
    endpoint: HttpUrl | None = Field(
        None,
        description="base URL that replaces the data center's host (proxies, the local emulator)",
    )
    partner: str = Field(
        min_length=1, description="the request's `partner`: whose cohorts these are"
    )
    cohort_names: Literal["check", "clean"] = Field(
        "check",
        description="check: a cohort name MoEngage refuses (a leading period, a "
        "restricted character) is an error naming the character; clean: "
        "leading periods are dropped and each restricted character is "
        "replaced by name_replacement",
    )
    name_replacement: Annotated[str, AfterValidator(_replacement)] = Field(
        "_",
        max_length=8,
        description="what replaces a refused character when cohort_names is clean (may be empty)",
    )
    state: str = Field(
        DEFAULT_STATE,
        min_length=1,
        description="the membership state file (SQLite): what each partner asked and what "
        "MoEngage acknowledged; :memory: keeps nothing between runs",
    )
    max_request_bytes: int = Field(
        MAX_REQUEST_BYTES,
        ge=1024,
        le=MAX_REQUEST_BYTES,
        description="largest request body, in bytes (the API refuses more than 128 KB)",
    )
    requests_per_minute: int = Field(
        REQUESTS_PER_MINUTE,
        ge=1,
        le=100_000,
        description="requests sent per minute at most (the API allows 300)",
    )


def _listed() -> str:
    return " ".join(FORBIDDEN)


class _Batch:
    """One request being filled: its envelope, the members' pieces, their user ids."""

    __slots__ = ("chunks", "head", "items", "label", "size", "started", "uids")

    def __init__(self, head: bytes, label: tuple[str, str | None]) -> None:
        self.head = head
        self.label = label  # (segment name, description): a change of either starts anew
        self.chunks: list[bytes] = []
        self.items: list[Item] = []
        self.uids: set[str] = set()
        self.size = len(head) + len(_TAIL)
        self.started = time.monotonic()


_TAIL = b"]}}"


class _Encoder(SinkEncoder):
    """Members of one cohort and one action per request, under the cohort's latest name. A
    user waiting in a request of the other action for the same cohort closes that request
    first, so requests leave in the order the changes were made."""

    def __init__(self, sink: CohortSyncSink) -> None:
        self.sink = sink
        self.batches: dict[tuple[str, bool], _Batch] = {}

    def add(self, item: Item) -> list[WireRequest]:
        sink = self.sink
        if item.kind != COHORT_MEMBERSHIP:
            raise Unencodable(f"destination {sink.name!r} does not take {item.kind!r} items")
        if item.attributes:  # never dropped silently: nothing in the request could carry them
            raise Unencodable(
                "a Cohort Sync member is a uid alone; this change carries "
                f"attributes ({', '.join(sorted(item.attributes))[:200]})"
            )
        fields = item.fields
        cohort_id = str(fields.get("cohort_id") or item.name)
        member = bool(fields.get("member", True))
        description = fields.get("description")
        label = (item.name, None if description is None else str(description))
        piece = orjson.dumps({"uid": item.identity})
        head = sink.head(member, item.name, cohort_id, label[1])
        limit = sink.max_bytes
        if len(head) + len(piece) + len(_TAIL) > limit:
            raise ItemTooLarge(
                f"{len(head) + len(piece) + len(_TAIL)} bytes encoded; a "
                f"request to Cohort Sync holds at most {limit} bytes"
            )
        out: list[WireRequest] = []
        other = self.batches.get((cohort_id, not member))
        if other is not None and item.identity in other.uids:
            out.append(self._close((cohort_id, not member)))
        key = (cohort_id, member)
        batch = self.batches.get(key)
        if batch is not None and batch.label != label:
            # the cohort was renamed (or described anew) since: the request takes the latest
            # name, the one MoEngage should show, unless the longer head leaves no room
            grown = batch.size - len(batch.head) + len(head)
            if grown + 1 + len(piece) <= limit:
                batch.head, batch.label, batch.size = head, label, grown
        if batch is not None and (batch.label != label or batch.size + 1 + len(piece) > limit):
            out.append(self._close(key))
            batch = None
        if batch is None:
            batch = self.batches[key] = _Batch(head, label)
        if batch.chunks:
            batch.chunks.append(b",")
            batch.size += 1
        batch.chunks.append(piece)
        batch.items.append(item)
        batch.uids.add(item.identity)
        batch.size += len(piece)
        return out

    def _close(self, key: tuple[str, bool]) -> WireRequest:
        batch = self.batches.pop(key)
        body = b"".join([batch.head, *batch.chunks, _TAIL])
        return self.sink.request(body, batch.items)

    def flush(self) -> list[WireRequest]:
        return [self._close(key) for key in list(self.batches)]

    def until_next(self, now: float | None = None) -> float | None:
        if not self.batches:
            return None
        oldest = min(batch.started for batch in self.batches.values())
        return oldest + DEFAULT_MAX_AGE - (time.monotonic() if now is None else now)


class CohortSyncSink(CohortSink):
    """Adds users to and removes them from MoEngage custom segments."""

    name: ClassVar[str] = "moengage-cohort-sync"
    settings_model: ClassVar[type[CohortSyncSettings]] = CohortSyncSettings
    example_settings: ClassVar[dict[str, Any]] = {
        "workspace_id": "WS_EXAMPLE",
        "data_api_key": "moengage-example-data-api-key",
        "partner": "example",
        "state": ":memory:",
    }
    # a change as engine/runtime/cohorts.py makes it: the cohort, and in (or out)
    example_fields: ClassVar[dict[str, dict[str, Any]]] = {
        COHORT_MEMBERSHIP: {"cohort_id": "c1", "member": True, "description": None}
    }
    documented_answers: ClassVar[tuple[tuple[int, bytes, type[Any]], ...]] = (
        (
            200,
            b'{"status":"success","message":"Your request has been accepted and will be '
            b'processed soon."}',
            Delivered,
        ),
        (200, b'{"status":"fail","error":{"type":"InvalidAttributeError"}}', Reject),
        (
            400,
            b'{"status":"fail","error":{"attribute":"action","message":"action is not found '
            b'in the payload","type":"MissingAttributeError","request_id":"sYsoPuzf"}}',
            Reject,
        ),
        (
            401,
            b'{"status":"fail","error":{"message":"App Secret key mismatch. Please login to '
            b'the dashboard to verify key","type":"Authentication required",'
            b'"request_id":"skSFWvtW"}}',
            Fatal,
        ),
        (
            403,
            b'{"status":"fail","error":{"message":"Your account is suspended. Please contact '
            b'MoEngage team.","type":"Account Suspended","request_id":"gqJvCNYu"}}',
            Fatal,
        ),
        (408, b"", Retry),
        (
            413,
            b'{"status":"fail","error":{"message":"Payload can not exceed 128KB","type":'
            b'"Payload too large","request_id":"VFzDwhwt"}}',
            Split,
        ),
        (
            415,
            b'{"status":"fail","error":{"message":"Content type is not supported","type":'
            b'"Unsupported media type","request_id":"SgBQfKJh"}}',
            Reject,
        ),
        (
            429,
            b'{"status":"fail","error":{"message":"Rate limits for customers exceeded. '
            b'Please Try After Some Time","type":"Rate Limits Exceeded","request_id":'
            b'"onqucLYL"}}',
            Retry,
        ),
        (
            500,
            b'{"status":"fail","error":{"message":"An unexpected error was encountered while '
            b'processing this request. Please contact MoEngage Team","type":"Server Error",'
            b'"request_id":"KovrwJiF"}}',
            Retry,
        ),
        (502, b"", Retry),
        (503, b"", Retry),
        (504, b"", Retry),
    )

    def __init__(self, settings: CohortSyncSettings | Mapping[str, Any]) -> None:
        config = (
            settings
            if isinstance(settings, CohortSyncSettings)
            else (CohortSyncSettings.model_validate(settings))
        )
        super().__init__(config.model_dump())
        self.config = config
        self.workspace_id = config.workspace_id
        self.host = (config.endpoint or DATA_CENTERS[config.data_center]).rstrip("/")
        self.url = self.host + PATH
        self.max_bytes = config.max_request_bytes
        self.state = config.state
        self.batch_policy = BatchPolicy(max_request_bytes=self.max_bytes, max_age=DEFAULT_MAX_AGE)
        token = base64.b64encode(
            f"{self.workspace_id}:{config.data_api_key.get_secret_value()}".encode()
        ).decode()
        self.headers = {
            "Authorization": f"Basic {token}",
            "Content-Type": "application/json",
            "MOE-APPKEY": self.workspace_id,
        }
        self._partner = orjson.dumps(config.partner)

    @classmethod
    def from_settings(cls, settings: CohortSyncSettings) -> CohortSyncSink:
        """The sink for settings already checked (how the engine builds it)."""
        return cls(settings)

    @property
    def membership_scope(self) -> str:
        return f"{self.workspace_id}@{self.host}"

    def segment_name(self, name: str) -> str:
        bad = list(dict.fromkeys(c for c in name if c in FORBIDDEN))
        leading = name.startswith(".")
        if not name.strip():
            raise InvalidCohortName("the cohort name is blank; MoEngage needs a name")
        if not bad and not leading:
            return name
        if self.config.cohort_names == "clean":
            cleaned = name.lstrip(".")
            for char in bad:
                cleaned = cleaned.replace(char, self.config.name_replacement)
            if not cleaned.strip() or cleaned.startswith("."):
                raise InvalidCohortName(
                    f"cohort name {name!r} leaves no usable name once cleaned (cohort_names: clean)"
                )
            return cleaned
        what = []
        if leading:
            what.append("starts with '.'")
        if bad:
            what.append("contains " + " and ".join(f"'{c}'" for c in bad))
        raise InvalidCohortName(
            f"cohort name {name!r} {' and '.join(what)}: MoEngage refuses a segment name that "
            f"starts with '.' or contains any of {_listed()}. Rename the cohort at the "
            "partner, or set the destination setting `cohort_names: clean` to replace such "
            f"characters with {self.config.name_replacement!r}"
        )

    def head(self, member: bool, name: str, cohort_id: str, description: str | None) -> bytes:
        """A request body up to its first member."""
        action = b'{"action":"add_members"' if member else b'{"action":"remove_members"'
        parts = [
            action,
            b',"partner":',
            self._partner,
            b',"parameters":{"cohort_name":',
            orjson.dumps(name),
            b',"cohort_id":',
            orjson.dumps(cohort_id),
        ]
        if description is not None:
            parts += [b',"cohort_description":', orjson.dumps(description)]
        parts.append(b',"members":[')
        return b"".join(parts)

    def request(self, body: bytes, items: list[Item]) -> WireRequest:
        return WireRequest(
            "POST", self.url, dict(self.headers), body, list(items), limit_key="cohortsync"
        )

    def encoder(self) -> SinkEncoder:
        return _Encoder(self)

    def rate_limits(self) -> list[RateLimit]:
        return [RateLimit(self.config.requests_per_minute, 60.0)]

    def classify(self, request: WireRequest, response: Response) -> Verdict:
        status = response.status
        if 200 <= status < 300:
            parsed = response.json()
            if isinstance(parsed, dict) and parsed.get("status") == "fail":
                return Reject("rejected in a 2xx answer")
            return Delivered()
        if status == 413:
            return Split("HTTP 413")
        if status in (401, 403):
            return Fatal(f"HTTP {status}")
        if status == 429 or status == 408 or status >= 500:
            return Retry(
                f"HTTP {status}",
                after=retry_after_seconds(response.header("retry-after")),
                throttled=status == 429,
            )
        return Reject(f"HTTP {status}")
