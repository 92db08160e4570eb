"""``moerules serve --broker`` as ingress and two ``moerules worker`` processes delivering,
as a user runs them: real nats-server, redis-server, and the MoEngage emulator over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from moerules.connectors.emulation import MoEngageEmulator, serve

from tests.distributed.servers import Server, nats_server
from tests.engine.runtime.conftest import KEY, WS, expected_ids
from tests.engine.service.conftest import (
    BUNDLE,
    ENV,
    ServiceProcess,
    accepted_ids,
    endpoint,
    payloads,
    script,
    wait_until,
)


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[Server]:
    server = nats_server(tmp_path / "js").start()
    try:
        yield server
    finally:
        server.kill()


def test_ingress_on_the_broker_and_two_workers_deliver_each_item_once(
    nats: Server, redis: Server, tmp_path: Path
) -> None:
    emu = MoEngageEmulator(WS, KEY)
    broker = f"nats://127.0.0.1:{nats.port}"
    with serve(emu) as url:
        ingress = ServiceProcess(
            [
                BUNDLE,
                "--port",
                "0",
                "--state-dir",
                str(tmp_path / "in"),
                "--broker",
                broker,
                "--set",
                endpoint(url),
            ],
            tmp_path,
            ENV,
        )
        workers: list[subprocess.Popen[bytes]] = []
        try:
            ingress.start()
            sent = payloads(1, 20)
            for payload in sent:
                assert ingress.post(payload).status_code == 202
            assert ingress.post(sent[0]).status_code == 202  # the partner's retry
            env = {k: v for k, v in os.environ.items() if not k.startswith("MOENGAGE_")}
            env.update(ENV)
            for n in range(2):
                workers.append(
                    subprocess.Popen(
                        [
                            script(),
                            "worker",
                            BUNDLE,
                            "--broker",
                            broker,
                            "--limits",
                            f"redis://127.0.0.1:{redis.port}",
                            "--set",
                            endpoint(url),
                            "--state-dir",
                            str(tmp_path / f"w{n}"),
                            "--log-format",
                            "json",
                        ],
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            want = expected_ids(1, 20, events=2)
            assert wait_until(lambda: want <= set(accepted_ids(emu)), timeout=60)
            counts = accepted_ids(emu)
            assert all(counts[i] == 1 for i in want), {i: counts[i] for i in want if counts[i] != 1}
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            assert [w.wait(timeout=40) for w in workers] == [0, 0]
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
            ingress.kill()


def test_worker_refuses_a_broker_that_is_not_nats(tmp_path: Path) -> None:
    done = subprocess.run(
        [script(), "worker", BUNDLE, "--broker", "http://x", "--limits", "redis://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "--broker takes a nats:// URL, not 'http://x'" in done.stderr
