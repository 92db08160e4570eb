"""The service's spool on NATS JetStream: the seam (engine/service/spool.py) with a shared
broker behind it, so any number of ingress replicas and workers share one durable log.

- ``put`` publishes to ``<prefix>.<bundle>.<partition>`` and returns once JetStream has
  acknowledged it (the message is in the stream's store). Its ``Nats-Msg-Id`` is a hash of the
  bundle and the payload, which carries the partner's own message id: a partner retrying a
  push inside the stream's duplicate window is not ingested twice.
- A full stream (``max_bytes`` / ``max_msgs`` reached, discard-new) raises ``SpoolFull``: the
  ingress answers 503 with Retry-After instead of dropping anything.
- ``claim`` fetches from a durable pull consumer per bundle (per destination): one slow partner
  never holds another's messages back, and a worker that dies leaves its messages to be
  redelivered after the ack wait (a live worker marks what it holds as in progress).
  ``ack`` / ``nack(delay)`` are JetStream's own ack and nak-with-delay.
- The partition is a hash of the record's user id (``user_of``), so one user's records share a
  subject; ``partitions`` subjects per bundle.

``depth``, ``size_bytes`` and ``oldest_age`` are read from the consumer's info by a background
refresh, since the interface asks for them without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from moerules.engine.service.spool import Message

__all__ = ["JetStreamSpool", "SpoolFull", "msg_id", "partition_of", "user_of"]

DEFAULT_STREAM = "MOERULES"
DEFAULT_PREFIX = "moerules.in"
USER_FIELDS = ("mpid", "user_id", "userId", "customer_id", "distinct_id", "uid")


class SpoolFull(OSError):
    """The stream holds all it may: answer 503 with ``retry_after`` seconds (an OSError: the
    ingest route answers every spool that could not store a payload so)."""

    def __init__(self, why: str, retry_after: float = 5.0) -> None:
        super().__init__(why)
        self.retry_after = retry_after


def msg_id(bundle: str, body: bytes) -> str:
    """The de-duplication key: the same push (the partner's id inside) gives the same key."""
    return hashlib.sha256(bundle.encode() + b"\0" + body).hexdigest()


def user_of(body: bytes) -> str | None:
    """The user a payload is about, when its top level names one."""
    try:
        record = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    for name in USER_FIELDS:
        value = record.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return None


def partition_of(body: bytes, partitions: int) -> int:
    """The partition of a payload: its user's, else its own hash's (no order to keep)."""
    key = user_of(body)
    digest = hashlib.blake2b(
        (key if key is not None else "").encode() if key is not None else body, digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") % partitions


@dataclass
class _Stats:
    depth: int = 0
    bytes: int = 0
    oldest: float | None = None  # wall-clock seconds of the oldest unacknowledged message


class JetStreamSpool:
    """``Spool`` on a JetStream stream (see the module docstring). ``async with`` connects."""

    def __init__(
        self,
        url: str,
        *,
        stream: str = DEFAULT_STREAM,
        prefix: str = DEFAULT_PREFIX,
        partitions: int = 16,
        max_bytes: int = 1 << 30,
        max_msgs: int = -1,
        duplicate_window: float = 120.0,
        ack_wait: float = 30.0,
        refresh: float = 1.0,
        partition: Callable[[bytes, int], int] = partition_of,
    ) -> None:
        self.url = url
        self.stream = stream
        self.prefix = prefix
        self.partitions = partitions
        self.max_bytes = max_bytes
        self.max_msgs = max_msgs
        self.duplicate_window = duplicate_window
        self.ack_wait = ack_wait
        self.refresh_every = refresh
        self.partition = partition
        self.duplicates = 0  # puts JetStream recognised as already ingested
        self.redelivered_at_open = 0
        self.connection_errors = 0  # the broker was away (the client reconnects)
        self._nc: Any = None
        self._js: Any = None
        self._subs: dict[str, Any] = {}
        self._inflight: dict[int, Any] = {}  # stream sequence -> the claimed message
        self._tasks: set[asyncio.Task[None]] = set()
        self._stats: dict[str, _Stats] = {}
        self._refresher: asyncio.Task[None] | None = None

    # -- opening ------------------------------------------------------------------------------
    async def __aenter__(self) -> JetStreamSpool:
        import nats
        from nats.js.api import DiscardPolicy, StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        async def quiet(error: Exception) -> None:
            # the client reconnects by itself; a broker away is counted, not printed
            self.connection_errors += 1

        self._nc = await nats.connect(
            self.url,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            allow_reconnect=True,
            error_cb=quiet,
        )
        self._js = self._nc.jetstream()
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}.>"],
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            max_bytes=self.max_bytes,
            max_msgs=self.max_msgs,
            duplicate_window=self.duplicate_window,
        )
        try:
            await self._js.stream_info(self.stream)
        except NotFoundError:
            await self._js.add_stream(config)
        self._refresher = asyncio.create_task(self._refresh_loop())
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in self._subs.values():
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._nc is not None:
            await self._nc.close()

    def subject(self, bundle: str, partition: int | str = ">") -> str:
        return f"{self.prefix}.{bundle}.{partition}"

    @staticmethod
    def durable(bundle: str) -> str:
        return f"moerules-{bundle}"

    # -- the Spool interface --------------------------------------------------------------
    async def put(self, bundle: str, body: bytes) -> int:
        from nats.js.errors import APIError

        part = self.partition(body, self.partitions)
        try:
            ack = await self._js.publish(
                self.subject(bundle, part),
                body,
                stream=self.stream,
                headers={"Nats-Msg-Id": msg_id(bundle, body)},
            )
        except APIError as exc:
            text = f"{exc.description or exc}"
            if "maximum" in text.lower() or exc.err_code in (10077, 10047, 10028):
                raise SpoolFull(f"the stream {self.stream} is full ({text})") from exc
            raise
        if ack.duplicate:
            self.duplicates += 1
        stats = self._stats.setdefault(bundle, _Stats())
        if not ack.duplicate:
            stats.depth += 1
            stats.bytes += len(body)
            if stats.oldest is None:
                stats.oldest = time.time()
        return int(ack.seq)

    async def _sub(self, bundle: str) -> Any:
        sub = self._subs.get(bundle)
        if sub is None:
            from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

            config = ConsumerConfig(
                durable_name=self.durable(bundle),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.ack_wait,
                max_ack_pending=-1,
                filter_subject=self.subject(bundle),
            )
            sub = await self._js.pull_subscribe(
                self.subject(bundle),
                durable=self.durable(bundle),
                stream=self.stream,
                config=config,
            )
            self._subs[bundle] = sub
        return sub

    async def claim(self, bundle: str, limit: int) -> list[Message]:
        import nats.errors

        sub = await self._sub(bundle)
        while True:
            try:
                msgs = await sub.fetch(limit, timeout=1.0)
            except TimeoutError:  # nats' own and asyncio's: nothing came within the wait
                continue
            except (
                nats.errors.ConnectionClosedError,
                nats.errors.NoRespondersError,
                nats.errors.ConnectionReconnectingError,
            ):
                await asyncio.sleep(0.2)  # the broker is away: wait for the reconnect
                continue
            claimed = []
            for msg in msgs:
                meta = msg.metadata
                seq = int(meta.sequence.stream)
                if seq in self._inflight:  # still ours: its ack wait ran out meanwhile
                    self._inflight[seq] = msg
                    continue
                self._inflight[seq] = msg
                claimed.append(
                    Message(
                        seq,
                        bundle,
                        msg.data,
                        meta.timestamp.timestamp(),
                        redelivered=meta.num_delivered > 1,
                    )
                )
            if claimed:
                return claimed

    def _later(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, msg: Any, delay: float | None) -> None:
        # a lost ack (the broker away) is not lost work: JetStream redelivers after ack_wait
        with contextlib.suppress(Exception):
            if delay is None:
                await msg.ack_sync(timeout=5.0)
            else:
                await msg.nak(delay=delay if delay > 0 else None)

    def ack(self, ids: Sequence[int]) -> None:
        for seq in ids:
            msg = self._inflight.pop(seq, None)
            if msg is not None:
                self._later(self._settle(msg, None))

    def nack(self, ids: Sequence[int], delay: float = 0.0) -> None:
        for seq in ids:
            msg = self._inflight.pop(seq, None)
            if msg is not None:
                self._later(self._settle(msg, delay))

    def depth(self, bundle: str) -> int:
        return self._stats.get(bundle, _Stats()).depth

    def size_bytes(self, bundle: str) -> int:
        return self._stats.get(bundle, _Stats()).bytes

    def oldest_age(self, bundle: str) -> float | None:
        oldest = self._stats.get(bundle, _Stats()).oldest
        return None if oldest is None else max(0.0, time.time() - oldest)

    # -- the figures, refreshed ------------------------------------------------------------
    async def refresh(self) -> None:
        """Depth of each bundle seen (its consumer's pending and in-flight messages)."""
        for bundle in list(self._stats):
            try:
                info = await self._js.consumer_info(self.stream, self.durable(bundle))
            except Exception:
                continue  # no consumer yet, or the broker away: keep the last figures
            stats = self._stats[bundle]
            stats.depth = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
            if stats.depth == 0:
                stats.bytes, stats.oldest = 0, None

    async def _refresh_loop(self) -> None:
        last_touch = time.monotonic()
        while True:
            await asyncio.sleep(self.refresh_every)
            with contextlib.suppress(Exception):
                await self.refresh()
            if time.monotonic() - last_touch >= self.ack_wait / 3:
                last_touch = time.monotonic()
                await self._touch()

    async def _touch(self) -> None:
        """Tell JetStream the messages this worker holds are still in progress (a slow
        partner, a long Retry-After): only a dead worker's messages go to another."""
        for msg in list(self._inflight.values()):
            with contextlib.suppress(Exception):
                await msg.in_progress()
