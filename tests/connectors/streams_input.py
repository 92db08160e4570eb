"""MoEngage Streams input for the sink tests: every event has a unique event_uuid, so what a
partner's emulator accepted (and what was dead-lettered) can be checked event by event."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from moerules.engine.runtime.delivery import DeliveryOptions

# small backoffs keep fault tests fast; generous timeouts keep slow answers from timing out
FAST = DeliveryOptions(
    concurrency=4,
    backoff_base=0.01,
    backoff_cap=0.05,
    request_timeout=10.0,
    drain_timeout=5.0,
    checkpoint_interval=0.05,
    handle_signals=False,
)
CODES = (
    "NOTIFICATION_RECEIVED_MOE",
    "MOE_EMAIL_OPEN",
    "SMS_SENT",
    "USER_ENTERED_FLOW",
    "MOE_CARD_CAMPAIGN_CLICKED",
)


def event(line: int, index: int, **extra: Any) -> dict[str, Any]:
    return {
        "event_code": CODES[index % len(CODES)],
        "event_name": "ignored by the tables",
        "event_uuid": uuid(line, index),
        "event_time": 1732300000 + index,
        "event_type": "CAMPAIGN_EVENT",
        "event_source": "MOENGAGE",
        "uid": f"cust-{line:05d}",
        "event_attributes": {"campaign_id": f"c-{line}", "campaign_channel": "Push"},
        **extra,
    }


def uuid(line: int, index: int) -> str:
    return f"6f1d2c3b-0000-4000-{line:04d}-{index:012d}"


def payload(line: int, events: int) -> dict[str, Any]:
    return {
        "app_name": "App",
        "source": "MOENGAGE",
        "moe_request_id": f"req-{line}",
        "events": [event(line, i) for i in range(events)],
    }


def write_streams(path: Path, lines: int, events: int = 3) -> list[str]:
    """Streams payloads, one a line; returns every event's uuid, in input order."""
    with path.open("wb") as f:
        for line in range(1, lines + 1):
            f.write(orjson.dumps(payload(line, events)) + b"\n")
    return [uuid(line, i) for line in range(1, lines + 1) for i in range(events)]


def dead_letters(path: Path, id_field: str) -> dict[str, dict[str, Any]]:
    """The delivery dead letters in ``path``, by the event's uuid (``fields[id_field]``)."""
    found: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return found
    for raw in path.read_bytes().splitlines():
        letter = orjson.loads(raw)
        if letter.get("stage") == "delivery":
            key = str(letter["record"]["fields"][id_field])
            assert key not in found, f"{key} dead-lettered twice"
            found[key] = letter
    return found


def accepted(records: list[Any], key: Any) -> Counter[str]:
    """How many times each event reached the partner in an accepted request."""
    return Counter(str(key(record)) for record in records)
