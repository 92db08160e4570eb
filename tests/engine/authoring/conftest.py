"""A playground served on a free loopback port, in a thread, for the API and browser tests."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from moerules.engine.api import iter_lines
from moerules.engine.authoring.playground import Playground, create_app

from tests.conftest import EXAMPLES

CASES = """
cases:
  - name: a purchase goes to Brand A
    input: {user_identities: {customer_id: c1}, events: [{event_type: commerce_event, data: {
      custom_attributes: {moe_project_name: Brand A},
      product_action: {action: purchase, transaction_id: T1, products: []}}}]}
    expect:
      requests:
        - body: {elements: [{type: event, actions: [{action: purchase}]}]}
      report: {routing: {Brand A: 1}}
"""


@dataclass
class Served:
    url: str
    state: Playground
    bundle: Path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    import uvicorn

    folder = tmp_path / "acme"
    (folder / "tests").mkdir(parents=True)
    bundle = folder / "bundle.yaml"
    shutil.copy(EXAMPLES / "acme-overlay.yaml", bundle)
    (folder / "tests" / "routing.yaml").write_text(CASES)
    lines = iter_lines(str(EXAMPLES / "mparticle-batches.jsonl"))
    state = Playground(bundle, [(n, line) for n, line in lines if isinstance(line, bytes)])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(state),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            ws="none",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the playground did not start"
    try:
        yield Served(f"http://127.0.0.1:{port}/", state, bundle)
    finally:
        server.should_exit = True
        thread.join(10)
