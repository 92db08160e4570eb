"""Real delivery against the MoEngage emulator on 127.0.0.1: inputs, bundles, bookkeeping.

Every generated event carries a unique ``msg`` attribute and every batch a unique customer id,
so what the emulator accepted can be checked record by record against the input.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from moerules.connectors.emulation import MoEngageEmulator, serve
from moerules.engine.api import load_bundle
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.runtime.delivery import DeliveryOptions

WS = "WS_DELIVERY"
KEY = "delivery-test-data-api-key"  # long: dead-letter scrubbing replaces every occurrence
ENV = {"MOENGAGE_WORKSPACE_ID": WS, "MOENGAGE_DATA_API_KEY": KEY}
BUNDLE = "mparticle-to-moengage"
# small backoffs keep fault tests fast; generous timeouts keep slow answers from timing out
FAST = DeliveryOptions(
    concurrency=4,
    backoff_base=0.01,
    backoff_cap=0.05,
    request_timeout=10.0,
    drain_timeout=5.0,
    checkpoint_interval=0.05,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class TimedEmulator(MoEngageEmulator):
    """Also notes when each Data API request arrived, injected faults included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[float] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith("/v1/"):
            self.arrivals.append(time.monotonic())
        await super().__call__(scope, receive, send)


@pytest.fixture
def emulator() -> Iterator[tuple[TimedEmulator, str]]:
    emu = TimedEmulator(WS, KEY)
    with serve(emu) as url:
        yield emu, url


def batch(line: int, events: int) -> dict[str, Any]:
    return {
        "environment": "production",
        "mpid": 1000 + line,
        "user_identities": {"customer_id": f"c-{line}"},
        "user_attributes": {"$FirstName": f"N{line}"},
        "device_info": {"platform": "iOS"},
        "events": [
            {
                "event_type": "custom_event",
                "data": {
                    "event_name": "Tested",
                    "timestamp_unixtime_ms": 1700000000000,
                    "custom_attributes": {"msg": f"{line}-{i}"},
                },
            }
            for i in range(events)
        ],
    }


def write_input(path: Path, lines: int, events: int = 3) -> set[str]:
    """mParticle batches, one a line; returns the ids of every item they hold."""
    with path.open("wb") as f:
        for line in range(1, lines + 1):
            f.write(orjson.dumps(batch(line, events)) + b"\n")
    return expected_ids(1, lines, events)


def expected_ids(first: int, last: int, events: int = 3) -> set[str]:
    ids = {f"user:c-{line}" for line in range(first, last + 1)}
    ids.update(f"event:{line}-{i}" for line in range(first, last + 1) for i in range(events))
    return ids


def item_ids(body: Any) -> list[str]:
    """The ids of the items one accepted request body carried."""
    elements = body["elements"] if body.get("type") == "transition" else [body]
    ids: list[str] = []
    for element in elements:
        if element["type"] == "customer":
            ids.append(f"user:{element['customer_id']}")
        else:
            ids += [f"event:{a['attributes']['msg']}" for a in element["actions"]]
    return ids


def delivered(emu: MoEngageEmulator) -> Counter[str]:
    """How many times each item reached the emulator in an accepted request."""
    return Counter(i for r in emu.received if r.status == 200 for i in item_ids(r.body))


def dead_ids(path: Path) -> Counter[str]:
    """The items of the delivery dead letters in ``path``."""
    found: Counter[str] = Counter()
    if not path.exists():
        return found
    for raw in path.read_bytes().splitlines():
        letter = orjson.loads(raw)
        if letter.get("stage") != "delivery":
            continue
        record = letter["record"]
        if record["kind"] == "user":
            found[f"user:{record['identity']}"] += 1
        else:
            found[f"event:{record['attributes']['msg']}"] += 1
    return found


def compiled(url: str, *sets: str) -> CompiledBundle:
    return load_bundle(BUNDLE, [f"destination.endpoint={url}", *sets], env=ENV)


def run_args(url: str, input_path: Path, state_dir: Path, *extra: str) -> list[str]:
    return [
        "run",
        BUNDLE,
        "--input",
        str(input_path),
        "--set",
        f"destination.endpoint={url}",
        "--state-dir",
        str(state_dir),
        *extra,
    ]


def script() -> str:
    found = shutil.which("moerules", path=str(Path(sys.executable).parent))
    return found or "moerules"


def spawn(args: list[str], cwd: Path, *, stdin: bool = False) -> subprocess.Popen[str]:
    """The installed console script, as a runner would start it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOENGAGE_")}
    env.update(ENV)
    return subprocess.Popen(
        [script(), *args],
        cwd=cwd,
        env=env,
        text=True,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()
