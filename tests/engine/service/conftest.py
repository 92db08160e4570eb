"""``moerules serve`` as a runner starts it: the installed console script in a subprocess on
127.0.0.1 (any free port), talking to partner emulators served by the test over real HTTP.

``ServiceProcess`` reads the service's JSON log lines as they come, so tests wait for events
(``listening``, ``reloaded``, ``delivery``...) instead of sleeping.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from moerules.connectors.emulation import MoEngageEmulator, serve

from tests.engine.runtime.conftest import KEY, WS, batch, item_ids

BUNDLE = "mparticle-to-moengage"
USER, PASSWORD = "mparticle", "ingest-password-0451"
AUTH = (USER, PASSWORD)
ENV = {
    "MOENGAGE_WORKSPACE_ID": WS,
    "MOENGAGE_DATA_API_KEY": KEY,
    "MOERULES_AUTH_MPARTICLE_TO_MOENGAGE_BASIC": f"{USER}:{PASSWORD}",
}
JSON = {"Content-Type": "application/json"}


def script() -> str:
    found = shutil.which("moerules", path=str(Path(sys.executable).parent))
    return found or "moerules"


class ServiceProcess:
    """One ``moerules serve`` process and its log."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        full = {
            k: v for k, v in os.environ.items() if not k.startswith(("MOENGAGE_", "MOERULES_AUTH"))
        }
        full.update(env)
        self.process = subprocess.Popen(
            [script(), "serve", *args],
            cwd=cwd,
            env=full,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            with self._new:
                self.lines.append(text)
                try:
                    entry = orjson.loads(text)
                except orjson.JSONDecodeError:
                    entry = None
                if isinstance(entry, dict):
                    self.events.append(entry)
                self._new.notify_all()
        with self._new:
            self._new.notify_all()

    def wait_event(
        self,
        event: str,
        timeout: float = 20.0,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
        after: int = 0,
    ) -> dict[str, Any]:
        """The first log entry ``event`` (from the ``after``-th entry on) matching ``where``."""
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                for entry in self.events[after:]:
                    if entry.get("event") == event and where(entry):
                        return entry
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no {event!r} log line; the log:\n" + "\n".join(self.lines[-40:])
                    )
                self._new.wait(min(left, 0.2))

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        self.url = str(self.wait_event("listening", timeout)["url"])
        return self

    def route(self, bundle: str = BUNDLE) -> str:
        return f"{self.url}/ingest/{bundle}"

    def post(
        self,
        payload: Any,
        *,
        bundle: str = BUNDLE,
        auth: Any = AUTH,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        body = content if content is not None else orjson.dumps(payload)
        return httpx.post(
            self.route(bundle),
            content=body,
            auth=auth,
            headers=JSON if headers is None else headers,
            timeout=30,
        )

    def metrics(self) -> dict[str, float]:
        """``name{labels}`` -> value, from GET /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        if self.process.stderr is not None and not self._reader.is_alive():
            self.process.stderr.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.wait()

    def log_text(self) -> str:
        with self._new:
            return "\n".join(self.lines)


@pytest.fixture
def emulator() -> Iterator[tuple[MoEngageEmulator, str]]:
    emu = MoEngageEmulator(WS, KEY)
    with serve(emu) as url:
        yield emu, url


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start ``moerules serve`` with ARGS (and extra environment); stopped at the end."""
    started: list[ServiceProcess] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        bundle: str = BUNDLE,
        state_dir: Path | None = None,
        wait: bool = True,
    ) -> ServiceProcess:
        full_env = dict(ENV)
        full_env.update(env or {})
        process = ServiceProcess(
            [bundle, "--port", "0", "--state-dir", str(state_dir or tmp_path / "state"), *args],
            tmp_path,
            full_env,
        )
        started.append(process)
        return process.start() if wait else process

    yield start
    for process in started:
        process.kill()


def endpoint(url: str) -> str:
    return f"destination.endpoint={url}"


def accepted_ids(emu: MoEngageEmulator) -> dict[str, int]:
    """How many times each item reached the emulator in an accepted request."""
    counts: dict[str, int] = {}
    for received in emu.received:
        if received.status == 200:
            for item in item_ids(received.body):
                counts[item] = counts.get(item, 0) + 1
    return counts


def payloads(first: int, last: int, events: int = 2) -> list[dict[str, Any]]:
    """mParticle batches whose items all carry ids (tests/engine/runtime/conftest.py)."""
    return [batch(line, events) for line in range(first, last + 1)]


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
