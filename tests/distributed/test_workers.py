"""Two workers on one JetStream spool and one Redis limit deliver everything once to the
MoEngage emulator, together within its limit; a worker killed mid-run loses nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import anyio
import orjson
import pytest
from moerules.connectors.emulation import RateLimit as WindowLimit
from moerules.connectors.emulation import serve
from moerules.engine.distributed.jetstream import JetStreamSpool
from moerules.engine.distributed.worker import SharedLimits, Worker
from moerules.engine.runtime.loop import DeliveryOptions

from tests.distributed.servers import Server, nats_server
from tests.engine.runtime.conftest import (
    KEY,
    WS,
    TimedEmulator,
    batch,
    compiled,
    delivered,
    expected_ids,
)

OPTIONS = DeliveryOptions(
    handle_signals=False, backoff_base=0.05, backoff_cap=0.2, drain_timeout=5.0
)


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[Server]:
    server = nats_server(tmp_path / "js").start()
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.anyio
async def test_two_workers_deliver_everything_within_the_shared_limit(
    nats: Server, redis: Server, tmp_path: Path
) -> None:
    emu = TimedEmulator(WS, KEY)
    lines = 120
    limit = 20
    with serve(emu) as url:
        emu.faults.set_rate_limit(WindowLimit(per_second=limit))
        bundle = compiled(
            url, f"destination.requests_per_second={limit}", "destination.max_request_bytes=1024"
        )
        broker = f"nats://127.0.0.1:{nats.port}"
        async with JetStreamSpool(broker) as ingress:
            for line in range(1, lines + 1):
                await ingress.put(bundle.model.bundle, orjson.dumps(batch(line, 3)))
        limits = SharedLimits(f"redis://127.0.0.1:{redis.port}")
        want = expected_ids(1, lines)

        async def one(n: int, stop_after: float | None) -> None:
            async with JetStreamSpool(broker, ack_wait=2.0, refresh=0.2) as spool:
                worker = Worker(
                    [(bundle.model.bundle, bundle)], spool, OPTIONS, tmp_path / f"w{n}", limits
                )
                with anyio.move_on_after(stop_after if stop_after else 60):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(partial(worker.run, handle_signals=False))
                        while not want <= set(delivered(emu)):
                            await anyio.sleep(0.1)
                        worker.stop()

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 1, None)
            tg.start_soon(one, 2, 1.5)  # this one dies after 1.5 s, acks or not
        got = delivered(emu)
        assert want <= set(got), sorted(want - set(got))[:5]
        assert time.monotonic() - started < 60
        arrivals = sorted(emu.arrivals)
        assert max(sum(1 for b in arrivals if a - 1.0 < b <= a) for a in arrivals) <= limit
        assert emu.stats()["rate_limited"] == 0
        assert sum(lim.calls for lim in limits.made) >= len(arrivals)
