"""The Spool interface as the SQLite spool implements it: durable put, claim in order,
per-message ack and nack, redelivery after the process is gone, one owner per directory."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import anyio
import pytest
from moerules.engine.service.spool import SpoolLocked, SqliteSpool


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_put_claim_ack_nack_depth_age(tmp_path: Path) -> None:
    now = [1000.0]
    async with SqliteSpool(tmp_path, clock=lambda: now[0]) as spool:
        ids = [await spool.put("a", b'{"n": %d}' % n) for n in range(5)]
        await spool.put("b", b'{"other": 1}')
        assert ids == sorted(ids)
        assert spool.depth("a") == 5 and spool.depth("b") == 1 and spool.depth("c") == 0
        assert spool.size_bytes("a") == 5 * len(b'{"n": 0}')
        now[0] += 7.5
        assert spool.oldest_age("a") == 7.5 and spool.oldest_age("c") is None

        first = await spool.claim("a", 3)
        assert [m.id for m in first] == ids[:3]
        assert [m.body for m in first] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
        assert not any(m.redelivered for m in first)
        assert spool.depth("a") == 5  # claimed is still in the spool, in flight

        spool.ack([ids[0], ids[2]])
        spool.nack([ids[1]])
        assert spool.depth("a") == 3
        again = await spool.claim("a", 10)
        assert [m.id for m in again] == [ids[1], ids[3], ids[4]]
        assert [m.redelivered for m in again] == [True, False, False]

        spool.nack([ids[3]], delay=0.2)
        started = time.monotonic()
        late = await spool.claim("a", 10)
        assert [m.id for m in late] == [ids[3]]
        assert time.monotonic() - started >= 0.15

        with anyio.move_on_after(0.1):  # nothing ready: claim waits, cancelled claims nothing
            await spool.claim("a", 10)
        spool.ack([ids[1], ids[3], ids[4]])
        assert spool.depth("a") == 0 and spool.size_bytes("a") == 0
        assert spool.oldest_age("a") is None


@pytest.mark.anyio
async def test_claim_wakes_on_put(tmp_path: Path) -> None:
    async with SqliteSpool(tmp_path) as spool:
        got = []

        async def consume() -> None:
            got.extend(await spool.claim("a", 10))

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.sleep(0.05)
            await spool.put("a", b"{}")
        assert [m.body for m in got] == [b"{}"]


def _put_then_die(path: str, ready: multiprocessing.synchronize.Event) -> None:
    async def main() -> None:
        spool = SqliteSpool(Path(path))
        spool.open()
        for n in range(3):
            await spool.put("a", b"%d" % n)
        claimed = await spool.claim("a", 2)
        spool.ack([claimed[0].id])
        await anyio.sleep(0.2)  # the ack reaches the file
        ready.set()
        await anyio.sleep(60)

    anyio.run(main)


@pytest.mark.anyio
async def test_what_was_not_acknowledged_is_redelivered_after_a_kill(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_put_then_die, args=(str(tmp_path), ready))
    child.start()
    assert ready.wait(30)
    with pytest.raises(SpoolLocked):  # the live process owns the spool
        SqliteSpool(tmp_path).open()
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    async with SqliteSpool(tmp_path) as spool:
        assert spool.redelivered_at_open == 2
        messages = await spool.claim("a", 10)
        assert [m.body for m in messages] == [b"1", b"2"]
        assert all(m.redelivered for m in messages)


@pytest.mark.anyio
async def test_a_stopping_service_is_not_ready_and_asks_partners_to_come_back(
    tmp_path: Path,
) -> None:
    import httpx
    from moerules.engine.service.app import IngestLimits, IngestRoute, build_app
    from moerules.engine.service.auth import RouteAuth
    from moerules.engine.service.metrics import ServiceMetrics
    from moerules.engine.service.reload import load_served

    from tests.engine.service.conftest import ENV, payloads

    served = load_served("mparticle-to-moengage", [], env=ENV)
    stopping = [False]
    async with SqliteSpool(tmp_path) as spool:
        metrics = ServiceMetrics({}, spool, lambda: not stopping[0])
        app = build_app(
            {served.name: IngestRoute(served, RouteAuth(open=True))},
            spool,
            metrics,
            IngestLimits(retry_after=7),
            ready=lambda: not stopping[0],
            stopping=lambda: stopping[0],
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = payloads(1, 1)[0]
            ok = await client.post(f"/ingest/{served.name}", json=body)
            assert ok.status_code == 202
            assert (await client.get("/readyz")).status_code == 200
            stopping[0] = True
            refused = await client.post(f"/ingest/{served.name}", json=body)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "7"
            assert refused.json()["error"] == "the service is stopping"
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"status": "not ready", "detail": "stopping"}
            assert (await client.get("/healthz")).status_code == 200
        assert spool.depth(served.name) == 1
