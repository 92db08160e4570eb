"""The service's spool on a real NATS JetStream server: durable puts, de-duplication of a
partner's retry, claim/ack/nack with delay, redelivery after a crash, a full stream refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import orjson
import pytest
from moerules.engine.distributed.jetstream import JetStreamSpool, SpoolFull, partition_of

from tests.distributed.servers import Server, nats_server


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[Server]:
    server = nats_server(tmp_path / "js").start()
    try:
        yield server
    finally:
        server.kill()


def body(n: int, user: str = "u1") -> bytes:
    return orjson.dumps({"mpid": user, "id": f"m{n}", "events": [{"n": n}]})


def url(server: Server) -> str:
    return f"nats://127.0.0.1:{server.port}"


def test_one_users_payloads_share_a_partition() -> None:
    parts = {partition_of(body(n, "alice"), 16) for n in range(20)}
    assert len(parts) == 1
    spread = {partition_of(body(1, f"user-{n}"), 16) for n in range(200)}
    assert len(spread) == 16


@pytest.mark.anyio
async def test_put_claim_ack_and_a_partners_retry_ingested_once(nats: Server) -> None:
    async with JetStreamSpool(url(nats), refresh=0.1) as spool:
        first = await spool.put("b", body(1))
        again = await spool.put("b", body(1))  # the partner retried the same push
        assert again == first and spool.duplicates == 1
        await spool.put("b", body(2))
        with anyio.fail_after(5):
            claimed = await spool.claim("b", 10)
        assert [orjson.loads(m.body)["id"] for m in claimed] == ["m1", "m2"]
        assert not any(m.redelivered for m in claimed)
        spool.ack([claimed[0].id])
        spool.nack([claimed[1].id], delay=0.5)  # a Retry-After: handed out again later
        started = time.monotonic()
        with anyio.fail_after(5):
            back = await spool.claim("b", 10)
        assert time.monotonic() - started >= 0.4
        assert [orjson.loads(m.body)["id"] for m in back] == ["m2"] and back[0].redelivered
        spool.ack([back[0].id])
        await anyio.sleep(0.3)
        await spool.refresh()
        assert spool.depth("b") == 0


@pytest.mark.anyio
async def test_claimed_and_never_acked_is_redelivered_to_another_worker(nats: Server) -> None:
    async with JetStreamSpool(url(nats), ack_wait=1.0) as ingress:
        await ingress.put("b", body(7))
    async with JetStreamSpool(url(nats), ack_wait=1.0) as dying:
        with anyio.fail_after(5):
            assert len(await dying.claim("b", 5)) == 1
        # the worker dies here: no ack
    async with JetStreamSpool(url(nats), ack_wait=1.0) as other:
        with anyio.fail_after(10):
            again = await other.claim("b", 5)
        assert orjson.loads(again[0].body)["id"] == "m7" and again[0].redelivered
        other.ack([again[0].id])


@pytest.mark.anyio
async def test_a_full_stream_is_refused_not_dropped(nats: Server) -> None:
    async with JetStreamSpool(url(nats), stream="SMALL", prefix="small", max_msgs=3) as spool:
        for n in range(3):
            await spool.put("b", body(n))
        with pytest.raises(SpoolFull) as refused:
            await spool.put("b", body(99))
        assert refused.value.retry_after > 0


@pytest.mark.anyio
async def test_the_stream_survives_a_broker_restart(nats: Server) -> None:
    async with JetStreamSpool(url(nats)) as spool:
        await spool.put("b", body(1))
    nats.kill()
    nats.start()  # the same store
    async with JetStreamSpool(url(nats)) as spool:
        with anyio.fail_after(10):
            claimed = await spool.claim("b", 5)
        assert orjson.loads(claimed[0].body)["id"] == "m1"
        spool.ack([claimed[0].id])
